//! Compilation of what [`super::load`] read: names resolved, members looked up in a vocabulary,
//! every rule checked (METHOD §2–§4), and a [`RuleSpec`] and [`RuleSet`] built, with rustc-style
//! diagnostics for everything wrong.

use codespan_reporting::diagnostic::{Diagnostic, Label, Severity};

use super::syntax::{self, BlockDecl, Located, Member, Query, RuleBody, RuleDecl, Statement, Target};
use super::Loaded;
use crate::data::Vocabulary;
use crate::locality::rules::{BlockSpec, RuleEntrySpec, RuleKindSpec};
use crate::locality::{RuleSet, RuleSpec};
use crate::suggest::closest;

/// The outcome of compiling: the spec (always, as far as it could be built), the rule set when a
/// vocabulary was given and nothing was wrong, and every diagnostic.
pub struct Compiled {
    pub spec: RuleSpec,
    pub set: Option<RuleSet>,
    pub diagnostics: Vec<Diagnostic<usize>>,
}

/// What a copy rule cannot have (METHOD §3, §4): layers, heads and priority, and a window of 0.
fn copy_rule_options(file: usize, options: &syntax::RuleOptions, diagnostics: &mut Vec<Diagnostic<usize>>) {
    let copy_path = "a copy rule predicts through its own copy path (METHOD §4), not through attention";
    let mut refuse = |span: &syntax::Span, message: &str, label: &str, note: String| {
        diagnostics.push(
            Diagnostic::error()
                .with_message(message)
                .with_labels(vec![Label::primary(file, span.clone()).with_message(label)])
                .with_notes(vec![note]),
        );
    };
    let attention_too = "to bias attention as well, write an attention rule beside it".to_string();
    if let Some(layers) = &options.layers {
        refuse(
            &layers.span,
            "a copy rule has no layers",
            "not allowed on a copy rule",
            format!("{copy_path}; {attention_too}"),
        );
    }
    if let Some(heads) = &options.heads {
        refuse(
            &heads.span,
            "a copy rule has no heads",
            "not allowed on a copy rule",
            format!("{copy_path}; {attention_too}"),
        );
    }
    if let Some(priority) = &options.priority {
        refuse(
            &priority.span,
            "a copy rule has no priority",
            "not allowed on a copy rule",
            "each copy rule has its own copy path, so copy rules never overlap; priority settles overlapping attention rules".into(),
        );
    }
    if let Some(within) = options.within.as_ref().filter(|w| w.value == 0) {
        refuse(
            &within.span,
            "a copy rule needs a window of at least 1",
            "its cache would always be empty",
            "`within N` holds the positions j with i − j < N: `within 1` is the query's own position".into(),
        );
    }
}

/// The shape of the model rules will act on, where it is known: layer and head indices must exist.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ModelLayout {
    pub layers: usize,
    pub heads: usize,
}

/// What a compilation checks beyond the text and vocabulary.
#[derive(Clone, Copy, Debug, Default)]
pub struct CompileOptions {
    /// Every diagnostic of a kind in full, not the first few and a count.
    pub all_warnings: bool,
    /// The model's layers and heads, to check `in layers` and `in heads` against.
    pub layout: Option<ModelLayout>,
}

/// Compiles what [`super::load`] read. Without a vocabulary, only what can be checked from the text is.
pub fn compile(loaded: &Loaded, vocabulary: Option<&Vocabulary>) -> Compiled {
    compile_with(loaded, vocabulary, CompileOptions::default())
}

/// `in layers` / `in heads` indices that the model does not have, one error per clause.
fn check_layout(
    file: usize,
    rule: &syntax::RuleOptions,
    layout: ModelLayout,
    diagnostics: &mut Vec<Diagnostic<usize>>,
) {
    let clauses = [(&rule.layers, layout.layers, "layer", "layers"), (&rule.heads, layout.heads, "head", "heads")];
    for (clause, available, one, many) in clauses {
        let Some(clause) = clause else { continue };
        let outside: Vec<String> = clause.value.iter().filter(|&&i| i >= available).map(usize::to_string).collect();
        if outside.is_empty() {
            continue;
        }
        let which =
            if outside.len() == 1 { format!("{one} {}", outside[0]) } else { format!("{many} {}", outside.join(", ")) };
        diagnostics.push(
            Diagnostic::error()
                .with_message(format!("the model has no {which}"))
                .with_labels(vec![Label::primary(file, clause.span.clone()).with_message(format!(
                    "the model has {available} {}, numbered 0 to {}",
                    if available == 1 { one } else { many },
                    available.saturating_sub(1)
                ))])
                .with_notes(vec![format!("{many} are counted from 0")]),
        );
    }
}

/// As [`compile`], with the checks `options` asks for.
pub fn compile_with(loaded: &Loaded, vocabulary: Option<&Vocabulary>, options: CompileOptions) -> Compiled {
    let mut diagnostics = Vec::new();
    let blocks: Vec<(usize, &BlockDecl)> = loaded
        .statements
        .iter()
        .filter_map(|(f, s)| if let Statement::Block(b) = s { Some((*f, b)) } else { None })
        .collect();
    let rules: Vec<(usize, &RuleDecl)> = loaded
        .statements
        .iter()
        .filter_map(|(f, s)| if let Statement::Rule(r) = s { Some((*f, r.as_ref())) } else { None })
        .collect();

    // block names: unique
    let mut declared: Vec<(usize, &BlockDecl)> = Vec::new();
    let mut first_declared: std::collections::HashMap<&str, (usize, &BlockDecl)> = Default::default();
    for &(file, block) in &blocks {
        if let Some((first_file, first)) = first_declared.get(block.name.value.as_str()) {
            diagnostics.push(
                Diagnostic::error()
                    .with_message(format!("block `{}` is declared twice", block.name.value))
                    .with_labels(vec![
                        Label::primary(file, block.name.span.clone()).with_message("declared again here"),
                        Label::secondary(*first_file, first.name.span.clone()).with_message("first declared here"),
                    ]),
            );
        } else {
            first_declared.insert(&block.name.value, (file, block));
            declared.push((file, block));
        }
    }

    // members: a token belongs to one block only; anchors are members
    let anchorless = super::members::check_members(&declared, vocabulary, options.all_warnings, &mut diagnostics);

    // rules: names resolve, targets can occur
    let block_names: Vec<&str> = declared.iter().map(|(_, b)| b.name.value.as_str()).collect();
    let block_name_set: std::collections::HashSet<&str> = block_names.iter().copied().collect();
    let anchorless: std::collections::HashSet<&str> = anchorless.into_iter().collect();
    let unknown = |file: usize, name: &Located<String>, diagnostics: &mut Vec<Diagnostic<usize>>| -> bool {
        if block_name_set.contains(name.value.as_str()) {
            return false;
        }
        if loaded.unreadable_blocks.contains(&name.value) {
            return true; // its declaration has a syntax error, reported already
        }
        let candidates = block_names.iter().copied().chain(loaded.unreadable_blocks.iter().map(String::as_str));
        let suggestions = closest(&name.value, candidates, 1);
        let mut diagnostic = Diagnostic::error()
            .with_message(format!("`{}` is not a declared block", name.value))
            .with_labels(vec![Label::primary(file, name.span.clone()).with_message("no block has this name")]);
        if let Some(s) = suggestions.first() {
            diagnostic = diagnostic.with_notes(vec![format!("did you mean `{s}`?")]);
        }
        diagnostics.push(diagnostic);
        true
    };
    let query_block =
        |file: usize, query: &Query, diagnostics: &mut Vec<Diagnostic<usize>>| -> Option<Option<String>> {
            match query {
                Query::Any(_) => Some(None),
                Query::Block(name) => (!unknown(file, name, diagnostics)).then(|| Some(name.value.clone())),
            }
        };
    let mut spec_rules = Vec::new();
    let mut empty_windows: super::members::Bounded<(usize, syntax::Span)> = super::members::Bounded::new();
    let mut rule_names: std::collections::HashMap<&str, (usize, &Located<String>)> = Default::default();
    for &(file, rule) in &rules {
        if let Some((first_file, first)) = rule_names.get(rule.name.value.as_str()) {
            diagnostics.push(
                Diagnostic::error().with_message(format!("two rules are called \"{}\"", rule.name.value)).with_labels(
                    vec![
                        Label::primary(file, rule.name.span.clone()).with_message("named again here"),
                        Label::secondary(*first_file, first.span.clone()).with_message("first used here"),
                    ],
                ),
            );
        }
        rule_names.entry(&rule.name.value).or_insert((file, &rule.name));
        let copy = matches!(rule.body, RuleBody::Copy { .. });
        let kind = match &rule.body {
            RuleBody::Copy { query, source } => {
                // the query's block, or None for `any token`; an unknown block skips the rule
                let Some(from) = query_block(file, query, &mut diagnostics) else { continue };
                match source {
                    Target::Block(name) | Target::AnchorsOf(name) => {
                        if unknown(file, name, &mut diagnostics) {
                            continue;
                        }
                        let to = name.value.clone();
                        Some(match from {
                            Some(from) => RuleKindSpec::BlockToBlock { from, to },
                            None => RuleKindSpec::AnyToBlock { to },
                        })
                    }
                    Target::Continuation(_) => Some(RuleKindSpec::Induction { from }),
                    Target::Previous(_) | Target::OwnBlock(_) => Some(RuleKindSpec::PreviousOccurrence { from }),
                }
            }
            RuleBody::Pair { open, close } => {
                for token in [open, close] {
                    if vocabulary.is_some_and(|v| v.id(&token.value).is_none()) {
                        diagnostics.push(
                            Diagnostic::error()
                                .with_message(format!("`{}` never occurs, so this pair can never match", token.value))
                                .with_labels(vec![
                                    Label::primary(file, token.span.clone()).with_message("not in the vocabulary")
                                ]),
                        );
                    }
                }
                Some(RuleKindSpec::MatchingPair { open: open.value.clone(), close: close.value.clone() })
            }
            RuleBody::Attend { query, target } => {
                let query_span = match query {
                    Query::Any(span) => span.clone(),
                    Query::Block(name) => name.span.clone(),
                };
                // the query's block, or None for `any token`; an unknown block skips the rule
                let Some(from) = query_block(file, query, &mut diagnostics) else { continue };
                match target {
                    Target::Block(name) | Target::AnchorsOf(name) => {
                        if unknown(file, name, &mut diagnostics) {
                            continue;
                        }
                        match (from, target) {
                            // METHOD §3 "block (any query)"
                            (None, Target::Block(_)) => Some(RuleKindSpec::AnyToBlock { to: name.value.clone() }),
                            (None, _) => {
                                diagnostics.push(
                                        Diagnostic::error()
                                            .with_message("`any token` cannot attend to the anchors of a block")
                                            .with_labels(vec![Label::primary(file, query_span.clone())
                                                .with_message(format!("cannot attend to the anchors of `{}`", name.value))])
                                            .with_notes(vec![format!(
                                                "name the block whose tokens should attend, or write `any token attends to {}`",
                                                name.value
                                            )]),
                                    );
                                continue;
                            }
                            (Some(from), Target::AnchorsOf(_)) => {
                                if anchorless.contains(name.value.as_str()) {
                                    diagnostics.push(
                                            Diagnostic::error()
                                                .with_message(format!("block `{}` has no anchors, so this rule can never point anywhere", name.value))
                                                .with_labels(vec![Label::primary(file, name.span.clone())])
                                                .with_notes(vec![format!("list them with `anchors …` after the block's words, or run `ailla anchors`")]),
                                        );
                                }
                                Some(RuleKindSpec::BlockToAnchors { from, to: name.value.clone() })
                            }
                            (Some(from), _) => Some(RuleKindSpec::BlockToBlock { from, to: name.value.clone() }),
                        }
                    }
                    Target::OwnBlock(span) => match from {
                        Some(block) => Some(RuleKindSpec::OwnBlock { block }),
                        None => {
                            diagnostics.push(
                                Diagnostic::error()
                                    .with_message("`any token` has no own block")
                                    .with_labels(vec![Label::primary(file, span.clone())]),
                            );
                            continue;
                        }
                    },
                    Target::Previous(_) => Some(RuleKindSpec::PreviousOccurrence { from }),
                    Target::Continuation(_) => Some(RuleKindSpec::Induction { from }),
                }
            }
        };
        let rule_options = &rule.options;
        if copy {
            copy_rule_options(file, rule_options, &mut diagnostics);
        } else if let Some(within) = rule_options.within.as_ref().filter(|w| w.value == 0) {
            empty_windows.entries.push((file, within.span.clone()));
        }
        if let Some(layout) = options.layout {
            check_layout(file, rule_options, layout, &mut diagnostics);
        }
        let options = rule_options;
        if let (Some(from), Some(until)) = (&options.from_step, &options.until_step) {
            if from.value >= until.value {
                diagnostics.push(
                    Diagnostic::error().with_message("this rule switches off before it switches on").with_labels(vec![
                        Label::primary(file, until.span.clone()).with_message(format!("off at step {}", until.value)),
                        Label::secondary(file, from.span.clone()).with_message(format!("on at step {}", from.value)),
                    ]),
                );
            }
        }
        if let Some(strength) = options.strength.as_ref().filter(|s| s.value <= 0.0 || s.value.is_nan()) {
            diagnostics.push(
                Diagnostic::error()
                    .with_message("a rule's strength must be above 0")
                    .with_labels(vec![Label::primary(file, strength.span.clone())]),
            );
        }
        if let Some(kind) = kind {
            spec_rules.push(RuleEntrySpec {
                name: rule.name.value.clone(),
                kind,
                layers: options.layers.as_ref().map(|l| l.value.clone()),
                heads: options.heads.as_ref().map(|h| h.value.clone()),
                within: options.within.as_ref().map(|w| w.value),
                strength: options.strength.as_ref().map_or(1.0, |s| s.value),
                priority: options.priority.as_ref().map_or(0, |p| p.value),
                from_step: options.from_step.as_ref().map(|s| s.value),
                until_step: options.until_step.as_ref().map(|s| s.value),
                copy,
            });
        }
    }

    let spec = RuleSpec {
        blocks: declared
            .iter()
            .map(|(_, b)| BlockSpec {
                name: b.name.value.clone(),
                words: b
                    .members
                    .iter()
                    .filter_map(|m| if let Member::Word(w) = m { Some(w.value.clone()) } else { None })
                    .collect(),
                patterns: b
                    .members
                    .iter()
                    .filter_map(|m| if let Member::Pattern(p) = m { Some(p.value.clone()) } else { None })
                    .collect(),
                anchors: b.anchors.iter().map(|a| a.value.clone()).collect(),
                ignore_case: b.ignore_case,
                recruitable: b.recruitable,
                copy_only: false,
            })
            .collect(),
        rules: spec_rules,
        own_block_default: true,
    };
    empty_windows.emit(
        options.all_warnings,
        &mut diagnostics,
        |(file, span)| {
            Diagnostic::warning()
                .with_message("a window of 0 holds no position, so this rule never acts")
                .with_labels(vec![Label::primary(*file, span.clone()).with_message("covers nothing")])
                .with_notes(vec!["`within N` holds the positions j with i − j < N: write `within 1` or more".into()])
        },
        |hidden| {
            let rules = super::members::count(hidden, "more rule", "more rules");
            format!("and {rules} with `within 0`; `ailla check --all` lists them")
        },
    );
    if loaded.statements.is_empty() && !loaded.has_errors() {
        diagnostics.push(
            Diagnostic::warning()
                .with_message("this rules file declares no block and no rule")
                .with_labels(vec![Label::primary(loaded.root, 0..0).with_message("nothing to compile")])
                .with_notes(vec!["`rules/README.md` shows one example of every statement".into()]),
        );
    }
    let has_errors = loaded.has_errors() || diagnostics.iter().any(|d| d.severity >= Severity::Error);
    let set = match vocabulary {
        Some(vocabulary) if !has_errors => match RuleSet::compile(&spec, vocabulary) {
            Ok((set, _)) => Some(set),
            Err(e) => {
                diagnostics.push(Diagnostic::error().with_message(e.to_string()));
                None
            }
        },
        _ => None,
    };
    Compiled { spec, set, diagnostics }
}
