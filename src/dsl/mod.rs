//! The `.rules` language (grammar in `grammar/rules.pest`, documented in `rules/README.md`): loading
//! with includes, compilation to a [`RuleSpec`] and a [`RuleSet`] with rustc-style diagnostics, and the
//! canonical formatting of `ailla fmt`.

pub mod anchors;
pub mod format;
pub mod source;
pub mod syntax;

use std::path::{Path, PathBuf};

use codespan_reporting::diagnostic::{Diagnostic, Label, Severity};
use codespan_reporting::files::SimpleFiles;

use crate::data::Vocabulary;
use crate::locality::rules::{BlockSpec, MemberResolver, RuleEntrySpec, RuleKindSpec};
use crate::locality::{RuleSet, RuleSpec};
use crate::suggest::closest;
use syntax::{BlockDecl, Located, Member, Query, RuleBody, RuleDecl, Statement, Target};

/// Every file read (the root and its includes) and the statements in the order they take effect.
pub struct Loaded {
    pub files: SimpleFiles<String, String>,
    pub statements: Vec<(usize, Statement)>,
    pub diagnostics: Vec<Diagnostic<usize>>,
    /// File id of the root.
    pub root: usize,
}

impl Loaded {
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(|d| d.severity >= Severity::Error)
    }

    /// Diagnostics as text, in the style of rustc, without colour.
    pub fn render(&self, diagnostics: &[Diagnostic<usize>]) -> String {
        let config = codespan_reporting::term::Config::default();
        diagnostics
            .iter()
            .map(|d| {
                codespan_reporting::term::emit_into_string(&config, &self.files, d).unwrap_or_else(|e| e.to_string())
            })
            .collect()
    }
}

/// A rules file compiled as `ailla check` compiles it, with the diagnostics of loading and compiling
/// together: what `ailla check`, `ailla anchors` and `ailla trial --rules` report on a file.
pub struct Checked {
    pub loaded: Loaded,
    pub compiled: Compiled,
    pub diagnostics: Vec<Diagnostic<usize>>,
}

impl Checked {
    pub fn new(loaded: Loaded, vocabulary: Option<&Vocabulary>) -> Self {
        let compiled = compile(&loaded, vocabulary);
        let mut diagnostics = loaded.diagnostics.clone();
        diagnostics.extend(compiled.diagnostics.iter().cloned());
        Checked { loaded, compiled, diagnostics }
    }

    /// Every diagnostic, rendered as rustc renders its own.
    pub fn render(&self) -> String {
        self.loaded.render(&self.diagnostics)
    }

    /// `PATH: N errors found`, when the diagnostics hold errors.
    pub fn errors_found(&self, path: &Path) -> Option<String> {
        let errors = self.diagnostics.iter().filter(|d| d.severity >= Severity::Error).count();
        (errors > 0).then(|| format!("{}: {errors} error{} found", path.display(), if errors == 1 { "" } else { "s" }))
    }
}

fn display(path: &Path) -> String {
    path.display().to_string()
}

/// Reads a rules file and, recursively, the files it includes (relative to the including file).
/// An unreadable root is an error; everything else becomes a diagnostic.
pub fn load(path: &Path) -> crate::Result<Loaded> {
    let source = std::fs::read_to_string(path).map_err(|e| crate::Error::io(path, e))?;
    load_source(path, source)
}

/// As [`load`], for text already in memory (tests, the bundled rules).
pub fn load_source(path: &Path, source: String) -> crate::Result<Loaded> {
    let mut loaded = Loaded { files: SimpleFiles::new(), statements: Vec::new(), diagnostics: Vec::new(), root: 0 };
    let root = loaded.files.add(display(path), source);
    loaded.root = root;
    let canonical = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let mut seen = vec![canonical.clone()];
    read_statements(&mut loaded, root, path, &mut vec![canonical], &mut seen);
    Ok(loaded)
}

fn read_statements(loaded: &mut Loaded, file: usize, path: &Path, stack: &mut Vec<PathBuf>, seen: &mut Vec<PathBuf>) {
    let source = match loaded.files.get(file) {
        Ok(f) => f.source().clone(),
        Err(_) => return,
    };
    let statements =
        match syntax::parse(&source) {
            Ok(statements) => statements,
            Err(failure) => {
                loaded.diagnostics.push(
                    Diagnostic::error()
                        .with_message("this rules file cannot be read")
                        .with_labels(vec![Label::primary(file, failure.span).with_message(failure.message)]),
                );
                return;
            }
        };
    for statement in statements {
        let Statement::Include(target) = &statement else {
            loaded.statements.push((file, statement));
            continue;
        };
        let included = path.parent().unwrap_or(Path::new(".")).join(&target.value);
        let canonical = included.canonicalize().unwrap_or_else(|_| included.clone());
        if let Some(start) = stack.iter().position(|p| *p == canonical) {
            let chain: Vec<String> =
                stack[start..].iter().chain(std::iter::once(&canonical)).map(|p| file_name(p)).collect();
            loaded.diagnostics.push(
                Diagnostic::error()
                    .with_message("these files include each other in a circle")
                    .with_labels(vec![Label::primary(file, target.span.clone())
                        .with_message(format!("the circle: {}", chain.join(" → ")))]),
            );
            continue;
        }
        if seen.contains(&canonical) {
            continue; // included twice along different paths: its blocks are already declared
        }
        match std::fs::read_to_string(&included) {
            Ok(text) => {
                let id = loaded.files.add(display(&included), text);
                stack.push(canonical.clone());
                seen.push(canonical);
                read_statements(loaded, id, &included, stack, seen);
                stack.pop();
            }
            Err(e) => loaded.diagnostics.push(
                Diagnostic::error()
                    .with_message(format!("cannot read the included file {}", display(&included)))
                    .with_labels(vec![Label::primary(file, target.span.clone()).with_message(e.to_string())]),
            ),
        }
    }
}

fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| display(path))
}

/// The outcome of compiling: the spec (always, as far as it could be built), the rule set when a
/// vocabulary was given and nothing was wrong, and every diagnostic.
pub struct Compiled {
    pub spec: RuleSpec,
    pub set: Option<RuleSet>,
    pub diagnostics: Vec<Diagnostic<usize>>,
}

fn quoted(words: &[&str]) -> String {
    words.iter().map(|w| format!("`{w}`")).collect::<Vec<_>>().join(", ")
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

/// Compiles what [`load`] read. Without a vocabulary, only what can be checked from the text is.
pub fn compile(loaded: &Loaded, vocabulary: Option<&Vocabulary>) -> Compiled {
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
    for &(file, block) in &blocks {
        if let Some((first_file, first)) = declared.iter().find(|(_, b)| b.name.value == block.name.value) {
            diagnostics.push(
                Diagnostic::error()
                    .with_message(format!("block `{}` is declared twice", block.name.value))
                    .with_labels(vec![
                        Label::primary(file, block.name.span.clone()).with_message("declared again here"),
                        Label::secondary(*first_file, first.name.span.clone()).with_message("first declared here"),
                    ]),
            );
        } else {
            declared.push((file, block));
        }
    }

    // members: a word may belong to one block only; anchors must be members
    let resolver = vocabulary.map(MemberResolver::new);
    let mut owner_of_word: Vec<(String, usize, &BlockDecl, Located<String>)> = Vec::new();
    let mut owner_of_id: std::collections::HashMap<u32, (usize, &BlockDecl, Located<String>)> = Default::default();
    let mut anchorless: Vec<&str> = Vec::new();
    for &(file, block) in &declared {
        let mut resolved_any = false;
        for member in &block.members {
            match member {
                Member::Word(word) => {
                    let key = if block.ignore_case { word.value.to_lowercase() } else { word.value.clone() };
                    if let Some((_, first_file, first_block, first)) = owner_of_word.iter().find(|(k, ..)| *k == key) {
                        // reported once below; the block is not also called empty for it
                        resolved_any = true;
                        if first_block.name.value != block.name.value {
                            diagnostics.push(
                                Diagnostic::error()
                                    .with_message(format!("`{}` is in two blocks", word.value))
                                    .with_labels(vec![
                                        Label::primary(file, word.span.clone())
                                            .with_message(format!("listed in `{}`", block.name.value)),
                                        Label::secondary(*first_file, first.span.clone())
                                            .with_message(format!("already listed in `{}`", first_block.name.value)),
                                    ])
                                    .with_notes(vec!["a word belongs to at most one block".into()]),
                            );
                        }
                        continue;
                    }
                    owner_of_word.push((key, file, block, word.clone()));
                    if let (Some(resolver), Some(vocabulary)) = (&resolver, vocabulary) {
                        let ids = resolver.word(&word.value, block.ignore_case);
                        if ids.is_empty() {
                            let suggestions = closest(&word.value, vocabulary.tokens.iter().map(String::as_str), 3);
                            let mut diagnostic = Diagnostic::warning()
                                .with_message(format!("`{}` is not in the vocabulary", word.value))
                                .with_labels(vec![Label::primary(file, word.span.clone())
                                    .with_message("this word never occurs, so it is left out of the block")]);
                            if !suggestions.is_empty() {
                                diagnostic =
                                    diagnostic.with_notes(vec![format!("closest entries: {}", quoted(&suggestions))]);
                            }
                            diagnostics.push(diagnostic);
                        }
                        for id in ids {
                            resolved_any = true;
                            if let Some((first_file, first_block, first)) = owner_of_id.get(&id) {
                                if first_block.name.value != block.name.value {
                                    diagnostics.push(
                                        Diagnostic::error()
                                            .with_message(format!(
                                                "`{}` is in two blocks",
                                                vocabulary.tokens[id as usize]
                                            ))
                                            .with_labels(vec![
                                                Label::primary(file, word.span.clone())
                                                    .with_message(format!("matches it in `{}`", block.name.value)),
                                                Label::secondary(*first_file, first.span.clone())
                                                    .with_message(format!("already in `{}`", first_block.name.value)),
                                            ]),
                                    );
                                }
                            } else {
                                owner_of_id.insert(id, (file, block, word.clone()));
                            }
                        }
                    }
                }
                Member::Pattern(pattern) => {
                    let matched = match &resolver {
                        Some(resolver) => resolver.pattern(&pattern.value),
                        None => regex::Regex::new(&pattern.value).map(|_| Vec::new()).map_err(|e| e.to_string()),
                    };
                    match matched {
                        Err(e) => {
                            resolved_any = true; // reported here, so not also an empty block
                            diagnostics.push(
                                Diagnostic::error()
                                    .with_message("this pattern is not a valid regular expression")
                                    .with_labels(vec![Label::primary(file, pattern.span.clone())
                                        .with_message(e.lines().last().unwrap_or("invalid").trim().to_string())]),
                            )
                        }
                        Ok(ids) if ids.is_empty() && resolver.is_some() => diagnostics.push(
                            Diagnostic::warning()
                                .with_message("this pattern matches no vocabulary entry")
                                .with_labels(vec![Label::primary(file, pattern.span.clone())]),
                        ),
                        Ok(ids) => {
                            resolved_any |= !ids.is_empty();
                            for id in ids {
                                if let Some((first_file, first_block, first)) = owner_of_id.get(&id) {
                                    if first_block.name.value != block.name.value {
                                        let token = vocabulary.map_or(String::new(), |v| v.tokens[id as usize].clone());
                                        diagnostics.push(
                                            Diagnostic::error()
                                                .with_message(format!("`{token}` is in two blocks"))
                                                .with_labels(vec![
                                                    Label::primary(file, pattern.span.clone())
                                                        .with_message(format!("matches it in `{}`", block.name.value)),
                                                    Label::secondary(*first_file, first.span.clone()).with_message(
                                                        format!("already in `{}`", first_block.name.value),
                                                    ),
                                                ]),
                                        );
                                    }
                                } else {
                                    owner_of_id.insert(id, (file, block, pattern.clone()));
                                }
                            }
                        }
                    }
                }
            }
        }
        if vocabulary.is_some() && !resolved_any {
            diagnostics.push(
                Diagnostic::error()
                    .with_message(format!("block `{}` is empty", block.name.value))
                    .with_labels(vec![Label::primary(file, block.name.span.clone())
                        .with_message("none of its words occurs in the vocabulary")]),
            );
        }
        let member_words: Vec<&str> = block
            .members
            .iter()
            .filter_map(|m| if let Member::Word(w) = m { Some(w.value.as_str()) } else { None })
            .collect();
        let has_patterns = block.members.iter().any(|m| matches!(m, Member::Pattern(_)));
        for anchor in &block.anchors {
            let is_member = if block.ignore_case {
                member_words.iter().any(|w| w.eq_ignore_ascii_case(&anchor.value))
            } else {
                member_words.contains(&anchor.value.as_str())
            };
            let by_pattern = has_patterns
                && resolver.as_ref().is_some_and(|r| {
                    let ids = r.word(&anchor.value, block.ignore_case);
                    !ids.is_empty()
                        && ids
                            .iter()
                            .all(|id| owner_of_id.get(id).is_some_and(|(_, b, _)| b.name.value == block.name.value))
                });
            if !is_member && !by_pattern {
                diagnostics.push(
                    Diagnostic::error()
                        .with_message(format!(
                            "anchor `{}` is not a member of block `{}`",
                            anchor.value, block.name.value
                        ))
                        .with_labels(vec![Label::primary(file, anchor.span.clone())])
                        .with_notes(vec!["an anchor is one of the block's own words".into()]),
                );
            }
        }
        if block.anchors.is_empty() {
            anchorless.push(&block.name.value);
        }
    }

    // rules: names resolve, targets can occur
    let block_names: Vec<&str> = declared.iter().map(|(_, b)| b.name.value.as_str()).collect();
    let unknown = |file: usize, name: &Located<String>, diagnostics: &mut Vec<Diagnostic<usize>>| -> bool {
        if block_names.contains(&name.value.as_str()) {
            return false;
        }
        let suggestions = closest(&name.value, block_names.iter().copied(), 1);
        let mut diagnostic = Diagnostic::error()
            .with_message(format!("`{}` is not a declared block", name.value))
            .with_labels(vec![Label::primary(file, name.span.clone()).with_message("no block has this name")]);
        if let Some(s) = suggestions.first() {
            diagnostic = diagnostic.with_notes(vec![format!("did you mean `{s}`?")]);
        }
        diagnostics.push(diagnostic);
        true
    };
    let mut spec_rules = Vec::new();
    let mut rule_names: Vec<(usize, &Located<String>)> = Vec::new();
    for &(file, rule) in &rules {
        if let Some((first_file, first)) = rule_names.iter().find(|(_, n)| n.value == rule.name.value) {
            diagnostics.push(
                Diagnostic::error().with_message(format!("two rules are called \"{}\"", rule.name.value)).with_labels(
                    vec![
                        Label::primary(file, rule.name.span.clone()).with_message("named again here"),
                        Label::secondary(*first_file, first.span.clone()).with_message("first used here"),
                    ],
                ),
            );
        }
        rule_names.push((file, &rule.name));
        let copy = matches!(rule.body, RuleBody::Copy { .. });
        let kind = match &rule.body {
            RuleBody::Copy { query, source } => {
                let from = match query {
                    Query::Any(_) => None,
                    Query::Block(name) => {
                        if unknown(file, name, &mut diagnostics) {
                            continue;
                        }
                        Some(name.value.clone())
                    }
                };
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
                let from = match query {
                    Query::Any(_) => None,
                    Query::Block(name) => {
                        if unknown(file, name, &mut diagnostics) {
                            continue;
                        }
                        Some(name.value.clone())
                    }
                };
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
                                if anchorless.contains(&name.value.as_str()) {
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
        let options = &rule.options;
        if copy {
            copy_rule_options(file, options, &mut diagnostics);
        }
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
