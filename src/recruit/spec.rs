//! How an admitted block enters the rules: the spec edits, recruited names and `recruited.rules`.

use super::*;

/// The name of the copy rule a recruited block brings, `"<block> is copied (recruited)"`; the gate of
/// the model's copy path carries the same name.
pub const RECRUITED_COPY_SUFFIX: &str = " is copied (recruited)";

pub fn recruited_copy_rule_name(block: &str) -> String {
    format!("{block}{RECRUITED_COPY_SUFFIX}")
}

/// `spec` with the block `name` of `members` (replacing a `recruitable` block of that name).
pub(super) fn with_block(
    spec: &RuleSpec,
    name: &str,
    members: &[u32],
    vocabulary: &Vocabulary,
    copy_only: bool,
) -> RuleSpec {
    let mut out = spec.clone();
    let words: Vec<String> = members.iter().filter_map(|&m| vocabulary.tokens.get(m as usize).cloned()).collect();
    let block = BlockSpec {
        name: name.to_string(),
        words,
        patterns: Vec::new(),
        anchors: Vec::new(),
        ignore_case: false,
        recruitable: false,
        copy_only,
    };
    match out.blocks.iter_mut().find(|b| b.name == name) {
        Some(existing) => *existing = block,
        None => out.blocks.push(block),
    }
    out
}

/// `spec` with a recruited block: a `recruitable` block of the same name is replaced by it. Its own-block
/// rule acts on one head (by default the last layer's first): a recruited block gains a pointer head
/// rather than taking every head of every layer away from what the model already does with them.
pub fn spec_with_block(
    spec: &RuleSpec,
    name: &str,
    members: &[u32],
    vocabulary: &Vocabulary,
    placement: RulePlacement,
) -> RuleSpec {
    let mut out = with_block(spec, name, members, vocabulary, false);
    out.rules.push(RuleEntrySpec {
        name: format!("{name} attends to its own block (recruited)"),
        kind: RuleKindSpec::OwnBlock { block: name.to_string() },
        layers: Some(vec![placement.layer]),
        heads: Some(vec![placement.head]),
        within: placement.within,
        strength: 1.0,
        priority: 0,
        from_step: None,
        until_step: None,
        copy: false,
    });
    out
}

/// `spec` with a block recruited for its copy path (METHOD §7): the block, and the copy rule
/// `any token copies from B within w` whose path the model gains under the same name.
pub fn spec_with_copy_block(
    spec: &RuleSpec,
    name: &str,
    members: &[u32],
    vocabulary: &Vocabulary,
    within: Option<usize>,
) -> RuleSpec {
    let mut out = with_block(spec, name, members, vocabulary, true);
    out.rules.push(RuleEntrySpec {
        name: recruited_copy_rule_name(name),
        kind: RuleKindSpec::AnyToBlock { to: name.to_string() },
        layers: None,
        heads: None,
        within,
        strength: 1.0,
        priority: 0,
        from_step: None,
        until_step: None,
        copy: true,
    });
    out
}

/// The blocks a run recruited for their copy paths: `(block, copy rule)` pairs of its spec.
pub fn recruited_copy_blocks(spec: &RuleSpec) -> Vec<(&BlockSpec, &RuleEntrySpec)> {
    spec.rules
        .iter()
        .filter(|rule| rule.copy && rule.name.ends_with(RECRUITED_COPY_SUFFIX))
        .filter_map(|rule| match &rule.kind {
            RuleKindSpec::AnyToBlock { to } => spec.blocks.iter().find(|b| &b.name == to).map(|b| (b, rule)),
            _ => None,
        })
        .collect()
}

/// Blocks a run has recruited, of either kind: what `max_blocks` bounds.
pub fn recruited_count(model: &Model<f32>, spec: &RuleSpec) -> usize {
    model.config.recruited_blocks.len() + recruited_copy_blocks(spec).len()
}

/// The blocks recruited for their copy paths as a `.rules` snippet an expert can edit and pin, each
/// with its copy rule and the bits that admitted it.
pub fn copy_rules_snippet(spec: &RuleSpec, decisions: &[Decision]) -> String {
    let mut out = String::from(
        "# Blocks recruited by ailla during training (METHOD §7), each with the copy path that paid for it:\n\
         # it saved more bits on the recruitment split than it costs. Edit the members and include this\n\
         # file to pin them as ordinary blocks and copy rules.\n",
    );
    for (block, rule) in recruited_copy_blocks(spec) {
        let words: Vec<String> = block.words.iter().map(|w| crate::dsl::format::word(w)).collect();
        if let Some(d) = decisions.iter().find(|d| d.accepted && d.candidate == block.name) {
            out += &format!(
                "\n# step {}: saved {:.1} bits on {} tokens ({:.1} where the cache held the target); cost {:.1} bits \
                 (membership {:.1}, gate {:.1}), margin {:.1} bits\n",
                d.step,
                d.saving_bits(),
                d.split_tokens,
                d.saved_where_copied_bits.unwrap_or(f64::NAN),
                d.cost_bits,
                d.membership_bits.unwrap_or(f64::NAN),
                d.parameter_bits.unwrap_or(f64::NAN),
                d.margin_bits
            );
        } else {
            out.push('\n');
        }
        out += &crate::dsl::format::render_block(&block.name, false, false, &words, &[]);
        out.push('\n');
        let within = rule.within.map_or(String::new(), |w| format!("\n    within {w}"));
        out += &format!("\nrule {}:\n    copy from {}{within}\n", crate::dsl::format::quote(&rule.name), block.name);
    }
    out
}

/// `spec` with every block the model recruited (a resumed run rebuilds its rules this way).
pub fn spec_with_recruited(
    spec: &RuleSpec,
    model: &Model<f32>,
    vocabulary: &Vocabulary,
    placement: RulePlacement,
) -> RuleSpec {
    model
        .config
        .recruited_blocks
        .iter()
        .fold(spec.clone(), |s, block| spec_with_block(&s, &block.name, &block.members, vocabulary, placement))
}

/// A readable block name from its members' most informative anchors (METHOD §2): `recruited_a_b`.
pub fn block_name(members: &[u32], vocabulary: &Vocabulary, ids: &[u32], taken: &[String]) -> String {
    let block = Block { name: "candidate".into(), members: members.to_vec(), anchors: Vec::new(), recruitable: false };
    let anchors = RuleSet::new(vocabulary.len(), vec![block], Vec::new())
        .ok()
        .and_then(|set| crate::dsl::anchors::score(&set, vocabulary, ids, 8, 2, 0.0).into_iter().next())
        .map(|b| b.chosen)
        .unwrap_or_default();
    let words: Vec<String> = anchors
        .iter()
        .map(|a| {
            a.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect::<String>()
        })
        .map(|w| w.trim_matches('_').to_string())
        .filter(|w| !w.is_empty())
        .collect();
    let stem = if words.is_empty() { "recruited".to_string() } else { format!("recruited_{}", words.join("_")) };
    let mut name = stem.clone();
    let mut n = 2;
    while taken.contains(&name) {
        name = format!("{stem}_{n}");
        n += 1;
    }
    name
}

/// The name an accepted candidate joins the rules under: a recruitable block keeps its own, any
/// other is named from its anchors.
pub fn recruited_name(ctx: &CheckContext, candidate: &Candidate) -> String {
    if candidate.origin == Origin::Recruitable {
        return candidate.name.clone();
    }
    let taken: Vec<String> = ctx.spec.blocks.iter().map(|b| b.name.clone()).collect();
    let sample = &ctx.train_ids[..ctx.train_ids.len().min(200_000)];
    block_name(&candidate.members, ctx.vocabulary, sample, &taken)
}

/// The recruited blocks as a `.rules` snippet an expert can edit and pin (include it, or paste it),
/// each with the bits that admitted it.
pub fn rules_snippet(model: &Model<f32>, vocabulary: &Vocabulary, decisions: &[Decision]) -> String {
    let mut out = String::from(
        "# Blocks recruited by ailla during training (METHOD §7). Each saved more bits on the recruitment\n\
         # split than it costs; edit the members and include this file to pin them as ordinary blocks.\n",
    );
    for block in &model.config.recruited_blocks {
        let words: Vec<String> = block
            .members
            .iter()
            .filter_map(|&m| vocabulary.tokens.get(m as usize))
            .map(|w| crate::dsl::format::word(w))
            .collect();
        if let Some(d) = decisions.iter().find(|d| d.accepted && d.candidate == block.name) {
            out += &format!(
                "\n# step {}: saved {:.1} bits on {} tokens; cost {:.1} bits, margin {:.1} bits, noise {:.1} bits\n",
                d.step,
                d.saving_bits(),
                d.split_tokens,
                d.cost_bits,
                d.margin_bits,
                d.noise_bits
            );
        } else {
            out.push('\n');
        }
        out += &crate::dsl::format::render_block(&block.name, false, false, &words, &[]);
        out.push('\n');
    }
    out
}
