//! Rules: what they say (`RuleSpec`, serde, the form the DSL will produce and that runs record) and
//! what the engine uses (`RuleSet`, compiled against a vocabulary to token ids).

use serde::{Deserialize, Serialize};

use crate::data::Vocabulary;
use crate::{Error, Result};

/// A named set of vocabulary entries (METHOD §2), with hand-listed anchors.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BlockSpec {
    pub name: String,
    pub words: Vec<String>,
    /// Regular expressions; every vocabulary entry a pattern matches in full is a member.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub patterns: Vec<String>,
    #[serde(default)]
    pub anchors: Vec<String>,
    /// Words (not patterns) match vocabulary entries that differ only in case.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ignore_case: bool,
    /// Declared for recruitment with seed anchors only (its words are its anchors).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recruitable: bool,
    /// Recruited for its copy path alone (METHOD §7): the block feeds its copy rule and gets no
    /// own-block attention rule by default, so admitting it mid-run leaves every head's attention as it
    /// was.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub copy_only: bool,
}

/// The rule kinds of METHOD §3.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum RuleKindSpec {
    /// A query in block `from` attends to earlier positions in block `to`.
    BlockToBlock { from: String, to: String },
    /// A query in block `from` attends to the anchors of block `to`.
    BlockToAnchors { from: String, to: String },
    /// A query in `block` attends to earlier members of its own block.
    OwnBlock { block: String },
    /// A query (in `from`, or any) attends to the previous occurrence of its own token.
    PreviousOccurrence {
        #[serde(default)]
        from: Option<String>,
    },
    /// A query (in `from`, or any) attends to the token after the previous occurrence of its own token.
    Induction {
        #[serde(default)]
        from: Option<String>,
    },
    /// A closing token attends to its matching opener (nesting respected).
    MatchingPair { open: String, close: String },
    /// Any query attends to earlier positions in block `to` (METHOD §3 "block (any query)"; the source
    /// of a block's copy path).
    AnyToBlock { to: String },
}

fn one() -> f64 {
    1.0
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RuleEntrySpec {
    pub name: String,
    pub kind: RuleKindSpec,
    /// Layers the rule acts on (default: all).
    #[serde(default)]
    pub layers: Option<Vec<usize>>,
    /// Heads the rule acts on (default: all).
    #[serde(default)]
    pub heads: Option<Vec<usize>>,
    /// Only keys at most this many positions back.
    #[serde(default)]
    pub within: Option<usize>,
    #[serde(default = "one")]
    pub strength: f64,
    #[serde(default)]
    pub priority: i32,
    /// Injection: the rule acts from this training step on (default: from the start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_step: Option<usize>,
    /// Injection: the rule stops acting at this training step (default: never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_step: Option<usize>,
    /// A copy rule (METHOD §3, §4 "Copy paths"): its targets feed a copy path that predicts the next
    /// token; it does not bias attention, and has no layers, heads or priority.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub copy: bool,
}

fn yes() -> bool {
    true
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    #[serde(default)]
    pub blocks: Vec<BlockSpec>,
    #[serde(default)]
    pub rules: Vec<RuleEntrySpec>,
    /// Block tokens that no explicit rule covers attend to their own block (METHOD §3's default).
    #[serde(default = "yes")]
    pub own_block_default: bool,
}

/// Where a run's rules come from.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum RulesSource {
    /// The rules written for the bundled pharmacy corpus (`rules/default.rules`, compiled in).
    Bundled,
    /// A `.rules` file, or a rule spec in YAML or JSON (`.yaml`, `.yml`, `.json`); relative paths
    /// resolve against the file that names them.
    File(std::path::PathBuf),
}

/// The bundled corpus's rules, as shipped in `rules/default.rules`.
pub const BUNDLED_RULES: &str = include_str!("../../rules/default.rules");

impl RulesSource {
    /// `bundled`, or a path.
    pub fn parse(text: &str) -> Self {
        if text == "bundled" {
            RulesSource::Bundled
        } else {
            RulesSource::File(text.into())
        }
    }
}

impl RuleSpec {
    /// This spec followed by `extra`'s blocks and rules: rules injected at evaluation time.
    pub fn with(&self, extra: &RuleSpec) -> RuleSpec {
        let mut merged = self.clone();
        merged.blocks.extend(extra.blocks.iter().cloned());
        merged.rules.extend(extra.rules.iter().cloned());
        merged
    }

    pub fn load(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        serde_saphyr::from_str(&text).map_err(|e| Error::Config { path: path.to_path_buf(), message: e.to_string() })
    }
}

/// Which queries a copy-style rule applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Condition {
    Any,
    Block(usize),
}

#[derive(Clone, Debug, PartialEq)]
pub enum RuleKind {
    BlockToBlock { from: usize, to: usize },
    BlockToAnchors { from: usize, to: usize },
    OwnBlock { block: usize },
    PreviousOccurrence { from: Condition },
    Induction { from: Condition },
    MatchingPair { open: u32, close: u32 },
    AnyToBlock { to: usize },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    pub name: String,
    pub kind: RuleKind,
    pub layers: Option<Vec<usize>>,
    pub heads: Option<Vec<usize>>,
    pub within: Option<usize>,
    pub strength: f64,
    pub priority: i32,
    pub from_step: Option<usize>,
    pub until_step: Option<usize>,
}

impl Rule {
    /// Whether an injected rule is switched on at a training step.
    pub fn active_at(&self, step: usize) -> bool {
        self.from_step.is_none_or(|from| step >= from) && self.until_step.is_none_or(|until| step < until)
    }

    pub fn applies_to(&self, layer: usize, head: usize) -> bool {
        self.layers.as_ref().is_none_or(|l| l.contains(&layer)) && self.heads.as_ref().is_none_or(|h| h.contains(&head))
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Block {
    pub name: String,
    /// Sorted token ids.
    pub members: Vec<u32>,
    pub anchors: Vec<u32>,
    pub recruitable: bool,
}

/// Vocabulary lookups for block members: exact, case-insensitive and by pattern.
pub struct MemberResolver<'a> {
    vocabulary: &'a Vocabulary,
    lowercase: std::collections::HashMap<String, Vec<u32>>,
}

impl<'a> MemberResolver<'a> {
    pub fn new(vocabulary: &'a Vocabulary) -> Self {
        let mut lowercase: std::collections::HashMap<String, Vec<u32>> = std::collections::HashMap::new();
        for (id, token) in vocabulary.tokens.iter().enumerate() {
            lowercase.entry(token.to_lowercase()).or_default().push(id as u32);
        }
        MemberResolver { vocabulary, lowercase }
    }

    /// Vocabulary ids a word names (several when case is ignored).
    pub fn word(&self, word: &str, ignore_case: bool) -> Vec<u32> {
        if ignore_case {
            self.lowercase.get(&word.to_lowercase()).cloned().unwrap_or_default()
        } else {
            self.vocabulary.id(word).into_iter().collect()
        }
    }

    /// Every lowercased vocabulary entry, with the ids of its casings.
    pub fn lowercase_entries(&self) -> impl Iterator<Item = (&str, &[u32])> {
        self.lowercase.iter().map(|(key, ids)| (key.as_str(), ids.as_slice()))
    }

    /// Vocabulary ids a pattern matches in full; an invalid pattern is an error message.
    pub fn pattern(&self, pattern: &str) -> std::result::Result<Vec<u32>, String> {
        let regex = regex::Regex::new(&format!("^(?:{pattern})$")).map_err(|e| e.to_string())?;
        Ok((0..self.vocabulary.len() as u32)
            .filter(|&id| regex.is_match(&self.vocabulary.tokens[id as usize]))
            .collect())
    }
}

/// Priority of the implicit own-block rules: below any explicit rule, so that they act only where
/// nothing else does.
pub const DEFAULT_RULE_PRIORITY: i32 = i32::MIN;

/// Rules compiled to token ids. Blocks are numbered from 1; 0 is the general block.
#[derive(Clone, Debug, PartialEq)]
pub struct RuleSet {
    pub blocks: Vec<Block>,
    /// Attention rules: what the hook, [`super::BatchTargets`], metrics and bounds act on.
    pub rules: Vec<Rule>,
    /// Copy rules (METHOD §4 "Copy paths"), one copy path each; kept apart from `rules` because they
    /// predict through their path and do not bias attention. Their targets:
    /// [`super::copy_targets::copy_targets`].
    pub copy_rules: Vec<Rule>,
    /// Block number (0 = general) of every vocabulary id.
    pub block_of: Vec<u16>,
    /// Whether a vocabulary id is an anchor of its block.
    pub is_anchor: Vec<bool>,
}

/// A problem found while compiling, that does not stop compilation.
#[derive(Clone, Debug, PartialEq)]
pub struct Warning(pub String);

/// A rule's block numbers name declared blocks and its strength is positive.
fn check_rule(rule: &Rule, block_count: usize) -> Result<()> {
    let check = |b: usize| {
        if b == 0 || b > block_count {
            Err(Error::invalid(
                "rules.rules",
                format!("rule `{}` names block number {b}, not a declared block", rule.name),
            ))
        } else {
            Ok(())
        }
    };
    match &rule.kind {
        RuleKind::BlockToBlock { from, to } | RuleKind::BlockToAnchors { from, to } => {
            check(*from)?;
            check(*to)?;
        }
        RuleKind::OwnBlock { block } | RuleKind::AnyToBlock { to: block } => check(*block)?,
        RuleKind::PreviousOccurrence { from: Condition::Block(b) }
        | RuleKind::Induction { from: Condition::Block(b) } => check(*b)?,
        _ => {}
    }
    if !(rule.strength > 0.0 && rule.strength.is_finite()) {
        return Err(Error::invalid("rules.rules", format!("rule `{}` needs a positive strength", rule.name)));
    }
    Ok(())
}

impl RuleSet {
    /// Builds a rule set directly from token-id blocks and rules (what tests and the DSL compiler use).
    pub fn new(vocab_size: usize, blocks: Vec<Block>, rules: Vec<Rule>) -> Result<Self> {
        if blocks.len() >= u16::MAX as usize {
            return Err(Error::invalid("rules.blocks", "too many blocks"));
        }
        let mut block_of = vec![0u16; vocab_size];
        let mut is_anchor = vec![false; vocab_size];
        for (index, block) in blocks.iter().enumerate() {
            if block.members.is_empty() {
                return Err(Error::invalid(
                    "rules.blocks",
                    format!("block `{}` has no member in the vocabulary", block.name),
                ));
            }
            for &id in &block.members {
                let slot = block_of.get_mut(id as usize).ok_or_else(|| {
                    Error::invalid("rules.blocks", format!("token id {id} is outside the vocabulary"))
                })?;
                if *slot != 0 {
                    return Err(Error::invalid(
                        "rules.blocks",
                        format!("token id {id} is in both `{}` and `{}`", blocks[*slot as usize - 1].name, block.name),
                    ));
                }
                *slot = index as u16 + 1;
            }
            for &id in &block.anchors {
                if block_of.get(id as usize) != Some(&(index as u16 + 1)) {
                    return Err(Error::invalid(
                        "rules.blocks",
                        format!("anchor id {id} of `{}` is not a member of that block", block.name),
                    ));
                }
                is_anchor[id as usize] = true;
            }
        }
        for rule in &rules {
            check_rule(rule, blocks.len())?;
        }
        Ok(RuleSet { blocks, rules, copy_rules: Vec::new(), block_of, is_anchor })
    }

    /// This set with copy rules (METHOD §4): block copies (`AnyToBlock`, `BlockToBlock`), previous
    /// occurrences and inductions, without layers, heads or priority, and with a window of at least 1.
    pub fn with_copy_rules(mut self, copy_rules: Vec<Rule>) -> Result<Self> {
        for rule in &copy_rules {
            check_rule(rule, self.blocks.len())?;
            let problem = if !matches!(
                rule.kind,
                RuleKind::AnyToBlock { .. }
                    | RuleKind::BlockToBlock { .. }
                    | RuleKind::PreviousOccurrence { .. }
                    | RuleKind::Induction { .. }
            ) {
                Some("copies from a block, a previous occurrence or its continuation only")
            } else if rule.layers.is_some() || rule.heads.is_some() {
                Some("has no layers or heads")
            } else if rule.priority != 0 {
                Some("has no priority: each copy rule has its own copy path")
            } else if rule.within == Some(0) {
                Some("needs `within` of at least 1: its cache would always be empty")
            } else {
                None
            };
            if let Some(problem) = problem {
                return Err(Error::invalid("rules.rules", format!("copy rule `{}` {problem}", rule.name)));
            }
        }
        self.copy_rules = copy_rules;
        Ok(self)
    }

    /// Compiles a spec against a vocabulary. Words missing from the vocabulary are warnings (and
    /// skipped); a block left empty, an unknown block name or a word in two blocks is an error.
    pub fn compile(spec: &RuleSpec, vocabulary: &Vocabulary) -> Result<(Self, Vec<Warning>)> {
        let mut warnings = Vec::new();
        let mut blocks = Vec::new();
        let resolver = MemberResolver::new(vocabulary);
        let mut names = std::collections::HashSet::new();
        for block in &spec.blocks {
            if !names.insert(block.name.as_str()) {
                return Err(Error::invalid("rules.blocks", format!("block `{}` is declared twice", block.name)));
            }
            let mut ids = |words: &[String], what: &str| -> Vec<u32> {
                let mut ids = Vec::new();
                for w in words {
                    let found = resolver.word(w, block.ignore_case);
                    if found.is_empty() {
                        warnings
                            .push(Warning(format!("block `{}`: {what} `{w}` is not in the vocabulary", block.name)));
                    }
                    ids.extend(found);
                }
                ids
            };
            let mut members = ids(&block.words, "word");
            let mut anchors = ids(&block.anchors, "anchor");
            for pattern in &block.patterns {
                let matched = resolver.pattern(pattern).map_err(|e| {
                    Error::invalid(
                        "rules.blocks",
                        format!("block `{}`: pattern `{pattern}` is not valid: {e}", block.name),
                    )
                })?;
                members.extend(matched);
            }
            members.sort_unstable();
            members.dedup();
            anchors.sort_unstable();
            anchors.dedup();
            blocks.push(Block { name: block.name.clone(), members, anchors, recruitable: block.recruitable });
        }
        let numbers: std::collections::HashMap<&str, usize> =
            blocks.iter().enumerate().map(|(i, b)| (b.name.as_str(), i + 1)).collect();
        let block_number = |name: &str| -> Result<usize> {
            numbers
                .get(name)
                .copied()
                .ok_or_else(|| Error::invalid("rules.rules", format!("`{name}` is not a declared block")))
        };
        let condition = |from: &Option<String>| -> Result<Condition> {
            from.as_deref().map_or(Ok(Condition::Any), |name| block_number(name).map(Condition::Block))
        };
        let token = |word: &str| -> Result<u32> {
            vocabulary
                .id(word)
                .ok_or_else(|| Error::invalid("rules.rules", format!("token `{word}` is not in the vocabulary")))
        };
        let mut rules = Vec::new();
        let mut copy_rules = Vec::new();
        for entry in &spec.rules {
            let kind = match &entry.kind {
                RuleKindSpec::BlockToBlock { from, to } => {
                    RuleKind::BlockToBlock { from: block_number(from)?, to: block_number(to)? }
                }
                RuleKindSpec::BlockToAnchors { from, to } => {
                    RuleKind::BlockToAnchors { from: block_number(from)?, to: block_number(to)? }
                }
                RuleKindSpec::OwnBlock { block } => RuleKind::OwnBlock { block: block_number(block)? },
                RuleKindSpec::PreviousOccurrence { from } => RuleKind::PreviousOccurrence { from: condition(from)? },
                RuleKindSpec::Induction { from } => RuleKind::Induction { from: condition(from)? },
                RuleKindSpec::MatchingPair { open, close } => {
                    RuleKind::MatchingPair { open: token(open)?, close: token(close)? }
                }
                RuleKindSpec::AnyToBlock { to } => RuleKind::AnyToBlock { to: block_number(to)? },
            };
            let compiled = if entry.copy { &mut copy_rules } else { &mut rules };
            compiled.push(Rule {
                name: entry.name.clone(),
                kind,
                layers: entry.layers.clone(),
                heads: entry.heads.clone(),
                within: entry.within,
                strength: entry.strength,
                priority: entry.priority,
                from_step: entry.from_step,
                until_step: entry.until_step,
            });
        }
        if spec.own_block_default {
            // a block with an own-block rule of its own keeps that rule's layers and heads
            let explicit: Vec<usize> = rules
                .iter()
                .filter_map(|r| match r.kind {
                    RuleKind::OwnBlock { block } => Some(block),
                    _ => None,
                })
                .collect();
            // `blocks[i]` was compiled from `spec.blocks[i]`
            for (index, block) in blocks
                .iter()
                .enumerate()
                .filter(|(index, _)| !explicit.contains(&(index + 1)) && !spec.blocks[*index].copy_only)
            {
                rules.push(Rule {
                    name: format!("{} (own block, default)", block.name),
                    kind: RuleKind::OwnBlock { block: index + 1 },
                    layers: None,
                    heads: None,
                    within: None,
                    strength: 1.0,
                    priority: DEFAULT_RULE_PRIORITY,
                    from_step: None,
                    until_step: None,
                });
            }
        }
        let set = RuleSet::new(vocabulary.len(), blocks, rules)?.with_copy_rules(copy_rules)?;
        Ok((set, warnings))
    }

    /// The rules, attention and copy, switched on at a training step (injection schedules), with the
    /// same blocks.
    pub fn active_at(&self, step: usize) -> RuleSet {
        let active = |rules: &[Rule]| rules.iter().filter(|r| r.active_at(step)).cloned().collect();
        RuleSet { rules: active(&self.rules), copy_rules: active(&self.copy_rules), ..self.clone() }
    }

    /// Whether any rule, attention or copy, has an injection schedule.
    pub fn has_schedule(&self) -> bool {
        self.rules.iter().chain(&self.copy_rules).any(|r| r.from_step.is_some() || r.until_step.is_some())
    }

    /// Rules that act on a (layer, head), by index.
    pub fn rules_at(&self, layer: usize, head: usize) -> Vec<usize> {
        (0..self.rules.len()).filter(|&r| self.rules[r].applies_to(layer, head)).collect()
    }

    pub fn block_of_token(&self, token: u32) -> u16 {
        self.block_of.get(token as usize).copied().unwrap_or(0)
    }
}
