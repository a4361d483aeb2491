//! Target sets `T_i` (METHOD §3), computed in one pass over each sequence and stored as one bit per
//! (query, key) pair: `T·⌈T/64⌉` words per sequence, 2 KB at `T = 128`.

use std::collections::HashMap;

use rayon::prelude::*;

use super::rules::{Condition, RuleKind, RuleSet};

/// For each query row of one sequence: its target positions as a bitset, and the strength of the rule
/// that set them (0 for a row no rule covers).
#[derive(Clone, Debug, PartialEq)]
pub struct RowSets {
    pub seq_len: usize,
    words: usize,
    bits: Vec<u64>,
    pub strength: Vec<f32>,
}

impl RowSets {
    pub fn new(seq_len: usize) -> Self {
        let words = seq_len.div_ceil(64).max(1);
        RowSets { seq_len, words, bits: vec![0; seq_len * words], strength: vec![0.0; seq_len] }
    }

    pub fn row(&self, i: usize) -> &[u64] {
        &self.bits[i * self.words..(i + 1) * self.words]
    }

    fn row_mut(&mut self, i: usize) -> &mut [u64] {
        &mut self.bits[i * self.words..(i + 1) * self.words]
    }

    pub fn contains(&self, i: usize, j: usize) -> bool {
        self.row(i)[j / 64] >> (j % 64) & 1 == 1
    }

    pub fn covered(&self, i: usize) -> bool {
        self.strength[i] > 0.0
    }

    /// `|T_i|`.
    pub fn count(&self, i: usize) -> usize {
        self.row(i).iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Positions in `T_i`, ascending.
    pub fn targets(&self, i: usize) -> impl Iterator<Item = usize> + '_ {
        self.row(i).iter().enumerate().flat_map(|(w, &word)| {
            let mut bits = word;
            std::iter::from_fn(move || {
                if bits == 0 {
                    return None;
                }
                let b = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                Some(w * 64 + b)
            })
        })
    }

    pub fn covered_rows(&self) -> usize {
        self.strength.iter().filter(|&&s| s > 0.0).count()
    }

    /// Puts key `j` in row `i`'s set with strength 1, for tests that build sets by hand.
    #[cfg(test)]
    pub(crate) fn insert_for_test(&mut self, i: usize, j: usize) {
        self.set(i, j, 1.0);
    }

    fn set(&mut self, i: usize, j: usize, strength: f32) {
        self.row_mut(i)[j / 64] |= 1 << (j % 64);
        self.strength[i] = strength;
    }

    /// `T_i = running ∩ [i − within, i]`.
    fn set_from(&mut self, i: usize, running: &[u64], within: Option<usize>, strength: f32) {
        let lowest = within.map_or(0, |w| i.saturating_sub(w));
        let row = self.row_mut(i);
        let mut any = false;
        for (w, (slot, &word)) in row.iter_mut().zip(running).enumerate() {
            let mut word = word;
            let (start, end) = (w * 64, w * 64 + 64);
            if lowest > start {
                word &= if lowest >= end { 0 } else { !0u64 << (lowest - start) };
            }
            if i + 1 < end {
                word &= if i < start { 0 } else { !0u64 >> (63 - (i - start)) };
            }
            *slot = word;
            any |= word != 0;
        }
        if any {
            self.strength[i] = strength;
        }
    }
}

/// Window length `ailla check` uses to count the positions a rule covers in a corpus.
pub const COVERAGE_WINDOW: usize = 128;

/// Targets of one rule on one sequence, in a single left-to-right pass.
pub fn rule_targets(set: &RuleSet, rule_index: usize, tokens: &[u32]) -> RowSets {
    let rule = &set.rules[rule_index];
    let strength = rule.strength as f32;
    let t_len = tokens.len();
    let mut out = RowSets::new(t_len);
    let in_block = |token: u32, block: usize| set.block_of_token(token) as usize == block;
    let within_reach = |i: usize, j: usize| rule.within.is_none_or(|w| i - j <= w);
    let condition = |token: u32, c: Condition| match c {
        Condition::Any => true,
        Condition::Block(b) => in_block(token, b),
    };
    match rule.kind {
        RuleKind::BlockToBlock { from, to }
        | RuleKind::BlockToAnchors { from, to }
        | RuleKind::OwnBlock { block: from @ to }
        | RuleKind::AnyToBlock { to: from @ to } => {
            let anchors_only = matches!(rule.kind, RuleKind::BlockToAnchors { .. });
            let any_query = matches!(rule.kind, RuleKind::AnyToBlock { .. });
            let mut running = vec![0u64; out.words];
            for (i, &token) in tokens.iter().enumerate() {
                let is_target =
                    in_block(token, to) && (!anchors_only || set.is_anchor.get(token as usize) == Some(&true));
                if is_target {
                    running[i / 64] |= 1 << (i % 64);
                }
                if any_query || in_block(token, from) {
                    out.set_from(i, &running, rule.within, strength);
                }
            }
        }
        RuleKind::PreviousOccurrence { from } | RuleKind::Induction { from } => {
            let induction = matches!(rule.kind, RuleKind::Induction { .. });
            let mut last: HashMap<u32, usize> = HashMap::new();
            for (i, &token) in tokens.iter().enumerate() {
                if condition(token, from) {
                    if let Some(&j) = last.get(&token) {
                        let target = if induction { j + 1 } else { j };
                        if within_reach(i, target) {
                            out.set(i, target, strength);
                        }
                    }
                }
                last.insert(token, i);
            }
        }
        RuleKind::MatchingPair { open, close } => {
            let mut openers: Vec<usize> = Vec::new();
            for (i, &token) in tokens.iter().enumerate() {
                // a symmetric pair (the same token opens and closes, like a quote) alternates
                let closes = token == close && (open != close || !openers.is_empty());
                if closes {
                    if let Some(j) = openers.pop() {
                        if within_reach(i, j) {
                            out.set(i, j, strength);
                        }
                    }
                } else if token == open {
                    openers.push(i);
                }
            }
        }
    }
    out
}

/// Rows covered by several rules take the rules of highest priority, unite their targets, and take
/// the largest strength among them (METHOD §3).
fn combine(per_rule: &[&RowSets], priorities: &[i32], seq_len: usize) -> RowSets {
    let mut out = RowSets::new(seq_len);
    for i in 0..seq_len {
        let top = per_rule.iter().zip(priorities).filter(|(r, _)| r.covered(i)).map(|(_, &p)| p).max();
        let Some(top) = top else { continue };
        for (rows, _) in per_rule.iter().zip(priorities).filter(|(r, &p)| r.covered(i) && p == top) {
            for (slot, &word) in out.row_mut(i).iter_mut().zip(rows.row(i)) {
                *slot |= word;
            }
            out.strength[i] = out.strength[i].max(rows.strength[i]);
        }
    }
    out
}

/// Target sets of a batch: per rule and per sequence, and combined per (layer, head).
pub struct BatchTargets {
    pub batch: usize,
    pub seq_len: usize,
    pub heads: usize,
    /// `[rule][sequence]`.
    pub per_rule: Vec<Vec<RowSets>>,
    /// Distinct combinations of applicable rules, each `[sequence]`.
    pub combined: Vec<Vec<RowSets>>,
    /// `layer·H + head` → index into `combined`, or `None` where no rule acts.
    pub site_group: Vec<Option<usize>>,
    /// Block number of every position, `[sequence][position]`.
    pub blocks: Vec<Vec<u16>>,
    /// Blocks including the general block 0.
    pub block_count: usize,
}

impl BatchTargets {
    pub fn new(set: &RuleSet, tokens: &[u32], batch: usize, seq_len: usize, layers: usize, heads: usize) -> Self {
        let sequences: Vec<&[u32]> = tokens.chunks(seq_len).take(batch).collect();
        // each (rule, sequence) is independent of the others; collected in order, so the sets do not
        // depend on the thread count
        let per_rule: Vec<Vec<RowSets>> =
            (0..set.rules.len()).map(|r| sequences.par_iter().map(|seq| rule_targets(set, r, seq)).collect()).collect();
        let mut keys: Vec<Vec<usize>> = Vec::new();
        let mut site_group = Vec::with_capacity(layers * heads);
        for layer in 0..layers {
            for head in 0..heads {
                let applicable = set.rules_at(layer, head);
                if applicable.is_empty() {
                    site_group.push(None);
                    continue;
                }
                let index = keys.iter().position(|k| *k == applicable).unwrap_or_else(|| {
                    keys.push(applicable);
                    keys.len() - 1
                });
                site_group.push(Some(index));
            }
        }
        let combined = keys
            .iter()
            .map(|key| {
                let priorities: Vec<i32> = key.iter().map(|&r| set.rules[r].priority).collect();
                (0..sequences.len())
                    .into_par_iter()
                    .map(|b| {
                        let rows: Vec<&RowSets> = key.iter().map(|&r| &per_rule[r][b]).collect();
                        combine(&rows, &priorities, seq_len)
                    })
                    .collect()
            })
            .collect();
        let blocks = sequences.iter().map(|seq| seq.iter().map(|&t| set.block_of_token(t)).collect()).collect();
        BatchTargets {
            batch,
            seq_len,
            heads,
            per_rule,
            combined,
            site_group,
            blocks,
            block_count: set.blocks.len() + 1,
        }
    }

    /// Combined targets at a (layer, head, sequence), if any rule acts there.
    pub fn at(&self, layer: usize, head: usize, sequence: usize) -> Option<&RowSets> {
        self.site_group.get(layer * self.heads + head).copied().flatten().map(|g| &self.combined[g][sequence])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::locality::rules::{Block, Rule};

    fn rule(name: &str, kind: RuleKind) -> Rule {
        Rule {
            name: name.into(),
            kind,
            layers: None,
            heads: None,
            within: None,
            strength: 1.0,
            priority: 0,
            from_step: None,
            until_step: None,
        }
    }

    /// Vocabulary 0..10: block 1 = {1, 2} (anchor 2), block 2 = {3, 4}; 8 opens, 9 closes.
    fn set(rules: Vec<Rule>) -> RuleSet {
        let blocks = vec![
            Block { name: "a".into(), members: vec![1, 2], anchors: vec![2], recruitable: false },
            Block { name: "b".into(), members: vec![3, 4], anchors: vec![], recruitable: false },
        ];
        RuleSet::new(10, blocks, rules).unwrap()
    }

    fn targets_of(rows: &RowSets) -> Vec<Vec<usize>> {
        (0..rows.seq_len).map(|i| rows.targets(i).collect()).collect()
    }

    /// The definition of METHOD §3 as an O(T²) scan, to check the one-pass computation against.
    fn brute_force(set: &RuleSet, r: usize, tokens: &[u32]) -> Vec<Vec<usize>> {
        let rule = &set.rules[r];
        let block = |t: u32| set.block_of_token(t) as usize;
        let reach = |i: usize, j: usize| rule.within.is_none_or(|w| i - j <= w);
        (0..tokens.len())
            .map(|i| match rule.kind {
                RuleKind::BlockToBlock { from, to } if block(tokens[i]) == from => {
                    (0..=i).filter(|&j| block(tokens[j]) == to && reach(i, j)).collect()
                }
                RuleKind::BlockToAnchors { from, to } if block(tokens[i]) == from => (0..=i)
                    .filter(|&j| block(tokens[j]) == to && set.is_anchor[tokens[j] as usize] && reach(i, j))
                    .collect(),
                RuleKind::OwnBlock { block: b } if block(tokens[i]) == b => {
                    (0..=i).filter(|&j| block(tokens[j]) == b && reach(i, j)).collect()
                }
                RuleKind::AnyToBlock { to } => (0..=i).filter(|&j| block(tokens[j]) == to && reach(i, j)).collect(),
                RuleKind::PreviousOccurrence { from: Condition::Any } => {
                    (0..i).rev().find(|&j| tokens[j] == tokens[i]).filter(|&j| reach(i, j)).into_iter().collect()
                }
                RuleKind::Induction { from: Condition::Any } => (0..i)
                    .rev()
                    .find(|&j| tokens[j] == tokens[i])
                    .map(|j| j + 1)
                    .filter(|&j| reach(i, j))
                    .into_iter()
                    .collect(),
                _ => Vec::new(),
            })
            .collect()
    }

    #[test]
    fn one_pass_targets_equal_the_definition() {
        let tokens: Vec<u32> = (0..150).map(|i| ((i * 7 + i / 5) % 10) as u32).collect();
        for within in [None, Some(3), Some(70)] {
            let mut rules = vec![
                rule("b to a", RuleKind::BlockToBlock { from: 2, to: 1 }),
                rule("b to a anchors", RuleKind::BlockToAnchors { from: 2, to: 1 }),
                rule("own a", RuleKind::OwnBlock { block: 1 }),
                rule("any to b", RuleKind::AnyToBlock { to: 2 }),
                rule("copy", RuleKind::PreviousOccurrence { from: Condition::Any }),
                rule("induction", RuleKind::Induction { from: Condition::Any }),
            ];
            for r in &mut rules {
                r.within = within;
            }
            let set = set(rules);
            for r in 0..set.rules.len() {
                assert_eq!(
                    targets_of(&rule_targets(&set, r, &tokens)),
                    brute_force(&set, r, &tokens),
                    "rule {r} within {within:?}"
                );
            }
        }
    }

    #[test]
    fn matching_pairs_respect_nesting() {
        let set = set(vec![rule("pair", RuleKind::MatchingPair { open: 8, close: 9 })]);
        // 8 8 9 0 9 9: the second 9 closes the first 8; the last 9 has no opener
        let rows = rule_targets(&set, 0, &[8, 8, 9, 0, 9, 9]);
        assert_eq!(targets_of(&rows), vec![vec![], vec![], vec![1], vec![], vec![0], vec![]]);
        let quotes = set_with_quotes();
        let rows = rule_targets(&quotes, 0, &[7, 0, 7, 7, 1, 7]);
        assert_eq!(targets_of(&rows), vec![vec![], vec![], vec![0], vec![], vec![], vec![3]]);
    }

    fn set_with_quotes() -> RuleSet {
        set(vec![rule("quote", RuleKind::MatchingPair { open: 7, close: 7 })])
    }

    #[test]
    fn higher_priority_wins_and_equal_priorities_unite() {
        let mut strong = rule("copy", RuleKind::PreviousOccurrence { from: Condition::Any });
        strong.strength = 2.0;
        let mut low = rule("own a", RuleKind::OwnBlock { block: 1 });
        low.priority = -1;
        let same = rule("b to a", RuleKind::BlockToBlock { from: 2, to: 1 });
        let set = set(vec![strong, low, same]);
        let tokens = [1, 3, 2, 1, 3, 0];
        let batch = BatchTargets::new(&set, &tokens, 1, 6, 1, 1);
        let rows = batch.at(0, 0, 0).unwrap();
        // position 3 (token 1): copy (priority 0) beats own block (−1): only position 0
        assert_eq!(rows.targets(3).collect::<Vec<_>>(), vec![0]);
        assert_eq!(rows.strength[3], 2.0);
        // position 4 (token 3): copy → 1 and b→a → {0, 2, 3} share priority 0: united, strongest strength
        assert_eq!(rows.targets(4).collect::<Vec<_>>(), vec![0, 1, 2, 3]);
        assert_eq!(rows.strength[4], 2.0);
        // position 2 (token 2): only own block applies
        assert_eq!(rows.targets(2).collect::<Vec<_>>(), vec![0, 2]);
        // position 1 (token 3): b→a reaches back to position 0
        assert_eq!(rows.targets(1).collect::<Vec<_>>(), vec![0]);
        // position 5 (token 0): general block, first occurrence: no rule covers it
        assert!(!rows.covered(5) && rows.count(5) == 0);
    }

    #[test]
    fn rules_restricted_to_layers_and_heads_leave_other_sites_alone() {
        let mut r = rule("copy", RuleKind::PreviousOccurrence { from: Condition::Any });
        r.layers = Some(vec![1]);
        r.heads = Some(vec![0, 2]);
        let set = set(vec![r]);
        let batch = BatchTargets::new(&set, &[1, 1], 1, 2, 2, 3);
        assert!(batch.at(0, 0, 0).is_none());
        assert!(batch.at(1, 1, 0).is_none());
        assert!(batch.at(1, 2, 0).is_some_and(|rows| rows.covered(1)));
    }
}
