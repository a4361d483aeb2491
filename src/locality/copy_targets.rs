//! Targets of copy rules (METHOD §3, §4 "Copy paths"): for each copy rule and each query row, the
//! positions whose tokens make up the rule's cache `κ_{c,i}`. Positions are flattened over the batch
//! (`b·seq_len + j`) and never cross from one sequence into another.

use std::collections::HashMap;

use super::rules::{Condition, Rule, RuleKind, RuleSet};

/// Whether position `j` lies in the copy window of query `i`: `i − j < within` (METHOD §4; no window
/// means the whole sequence so far).
fn in_window(rule: &Rule, i: usize, j: usize) -> bool {
    rule.within.is_none_or(|w| i - j < w)
}

/// The targets of one copy rule on one sequence, `[i]` → positions `j ≤ i` within the sequence.
pub fn copy_rule_targets(set: &RuleSet, rule: &Rule, tokens: &[u32]) -> Vec<Vec<usize>> {
    let in_block = |token: u32, block: usize| set.block_of_token(token) as usize == block;
    let condition = |token: u32, c: Condition| match c {
        Condition::Any => true,
        Condition::Block(b) => in_block(token, b),
    };
    let mut out = vec![Vec::new(); tokens.len()];
    match rule.kind {
        RuleKind::AnyToBlock { to } | RuleKind::BlockToBlock { to, .. } => {
            let query = match rule.kind {
                RuleKind::BlockToBlock { from, .. } => Condition::Block(from),
                _ => Condition::Any,
            };
            // the positions of the block so far; those that left the window are skipped from `start`
            let mut members: Vec<usize> = Vec::new();
            let mut start = 0;
            for (i, &token) in tokens.iter().enumerate() {
                if in_block(token, to) {
                    members.push(i);
                }
                while start < members.len() && !in_window(rule, i, members[start]) {
                    start += 1;
                }
                if condition(token, query) {
                    out[i] = members[start..].to_vec();
                }
            }
        }
        RuleKind::PreviousOccurrence { from } | RuleKind::Induction { from } => {
            let induction = matches!(rule.kind, RuleKind::Induction { .. });
            let mut last: HashMap<u32, usize> = HashMap::new();
            for (i, &token) in tokens.iter().enumerate() {
                if condition(token, from) {
                    if let Some(&j) = last.get(&token) {
                        // j < i, so the continuation j + 1 ≤ i
                        let target = if induction { j + 1 } else { j };
                        if in_window(rule, i, target) {
                            out[i].push(target);
                        }
                    }
                }
                last.insert(token, i);
            }
        }
        // not copy kinds: `RuleSet::with_copy_rules` refuses them
        RuleKind::BlockToAnchors { .. } | RuleKind::OwnBlock { .. } | RuleKind::MatchingPair { .. } => {}
    }
    out
}

/// `[copy rule c][row n = b·seq_len + i]` → the flattened positions `b·seq_len + j` whose tokens the
/// cache of rule `c` at row `n` counts (empty where the rule does not apply or has no target yet).
/// `tokens` holds `batch` sequences of `seq_len`; rows past the end of `tokens` are empty.
pub fn copy_targets(set: &RuleSet, tokens: &[u32], batch: usize, seq_len: usize) -> Vec<Vec<Vec<u32>>> {
    set.copy_rules
        .iter()
        .map(|rule| {
            let mut rows = Vec::with_capacity(batch * seq_len);
            for b in 0..batch {
                let offset = b * seq_len;
                let sequence = &tokens[offset.min(tokens.len())..(offset + seq_len).min(tokens.len())];
                let per_row = copy_rule_targets(set, rule, sequence);
                rows.extend(per_row.into_iter().map(|js| js.into_iter().map(|j| (offset + j) as u32).collect()));
                rows.resize(offset + seq_len, Vec::new());
            }
            rows
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::locality::rules::Block;

    fn rule(kind: RuleKind, within: Option<usize>) -> Rule {
        Rule {
            name: "copy".into(),
            kind,
            layers: None,
            heads: None,
            within,
            strength: 1.0,
            priority: 0,
            from_step: None,
            until_step: None,
        }
    }

    /// Vocabulary 0..10: block 1 = {1, 2}, block 2 = {3, 4}.
    fn set(copy_rules: Vec<Rule>) -> RuleSet {
        let blocks = vec![
            Block { name: "a".into(), members: vec![1, 2], anchors: vec![], recruitable: false },
            Block { name: "b".into(), members: vec![3, 4], anchors: vec![], recruitable: false },
        ];
        RuleSet::new(10, blocks, Vec::new()).unwrap().with_copy_rules(copy_rules).unwrap()
    }

    fn rows(set: &RuleSet, tokens: &[u32], batch: usize, seq_len: usize) -> Vec<Vec<Vec<u32>>> {
        copy_targets(set, tokens, batch, seq_len)
    }

    /// The definition of METHOD §3/§4 as a scan over all earlier positions.
    fn brute_force(set: &RuleSet, rule: &Rule, tokens: &[u32]) -> Vec<Vec<usize>> {
        let block = |t: u32| set.block_of_token(t) as usize;
        let window = |i: usize, j: usize| rule.within.is_none_or(|w| i - j < w);
        let query = |t: u32, c: Condition| match c {
            Condition::Any => true,
            Condition::Block(b) => block(t) == b,
        };
        (0..tokens.len())
            .map(|i| match rule.kind {
                RuleKind::AnyToBlock { to } => (0..=i).filter(|&j| block(tokens[j]) == to && window(i, j)).collect(),
                RuleKind::BlockToBlock { from, to } if block(tokens[i]) == from => {
                    (0..=i).filter(|&j| block(tokens[j]) == to && window(i, j)).collect()
                }
                RuleKind::PreviousOccurrence { from } if query(tokens[i], from) => {
                    (0..i).rev().find(|&j| tokens[j] == tokens[i]).filter(|&j| window(i, j)).into_iter().collect()
                }
                RuleKind::Induction { from } if query(tokens[i], from) => (0..i)
                    .rev()
                    .find(|&j| tokens[j] == tokens[i])
                    .map(|j| j + 1)
                    .filter(|&j| window(i, j))
                    .into_iter()
                    .collect(),
                _ => Vec::new(),
            })
            .collect()
    }

    #[test]
    fn block_copy_counts_the_block_in_its_window() {
        // positions: 0:1 1:0 2:2 3:3 4:1 5:0
        let tokens = [1, 0, 2, 3, 1, 0];
        let whole = set(vec![rule(RuleKind::AnyToBlock { to: 1 }, None)]);
        let expected: Vec<Vec<u32>> = vec![vec![0], vec![0], vec![0, 2], vec![0, 2], vec![0, 2, 4], vec![0, 2, 4]];
        assert_eq!(rows(&whole, &tokens, 1, 6), vec![expected]);
        // within 2: i − j < 2, so j ∈ {i − 1, i}
        let near = set(vec![rule(RuleKind::AnyToBlock { to: 1 }, Some(2))]);
        let expected: Vec<Vec<u32>> = vec![vec![0], vec![0], vec![2], vec![2], vec![4], vec![4]];
        assert_eq!(rows(&near, &tokens, 1, 6), vec![expected]);
        // within 1: the query's own position only
        let own = set(vec![rule(RuleKind::AnyToBlock { to: 1 }, Some(1))]);
        let expected: Vec<Vec<u32>> = vec![vec![0], vec![], vec![2], vec![], vec![4], vec![]];
        assert_eq!(rows(&own, &tokens, 1, 6), vec![expected]);
    }

    #[test]
    fn a_query_condition_restricts_the_rows() {
        // block b (3, 4) queries copy from block a (1, 2)
        let tokens = [1, 3, 2, 0, 4, 3];
        let set = set(vec![rule(RuleKind::BlockToBlock { from: 2, to: 1 }, None)]);
        let expected: Vec<Vec<u32>> = vec![vec![], vec![0], vec![], vec![], vec![0, 2], vec![0, 2]];
        assert_eq!(rows(&set, &tokens, 1, 6), vec![expected]);
    }

    #[test]
    fn previous_occurrence_and_induction() {
        // positions: 0:5 1:6 2:5 3:7 4:5 5:6
        let tokens = [5, 6, 5, 7, 5, 6];
        let set = set(vec![
            rule(RuleKind::PreviousOccurrence { from: Condition::Any }, None),
            rule(RuleKind::Induction { from: Condition::Any }, None),
            rule(RuleKind::Induction { from: Condition::Any }, Some(2)),
        ]);
        let got = rows(&set, &tokens, 1, 6);
        let previous: Vec<Vec<u32>> = vec![vec![], vec![], vec![0], vec![], vec![2], vec![1]];
        let induction: Vec<Vec<u32>> = vec![vec![], vec![], vec![1], vec![], vec![3], vec![2]];
        // within 2: the continuation j + 1 must satisfy i − (j + 1) < 2; at 5, 5 − 2 = 3 is too far
        let near: Vec<Vec<u32>> = vec![vec![], vec![], vec![1], vec![], vec![3], vec![]];
        assert_eq!(got, vec![previous, induction, near]);
        // the continuation of the immediately preceding occurrence is the query itself
        let repeat = rows(&set, &[5, 5], 1, 2);
        assert_eq!(repeat[1][1], vec![1]);
        assert_eq!(repeat[0][1], vec![0]);
    }

    #[test]
    fn induction_restricted_to_a_block() {
        // only block a's tokens (1, 2) query
        let tokens = [1, 5, 1, 5, 2];
        let set = set(vec![rule(RuleKind::Induction { from: Condition::Block(1) }, None)]);
        let expected: Vec<Vec<u32>> = vec![vec![], vec![], vec![1], vec![], vec![]];
        assert_eq!(rows(&set, &tokens, 1, 5), vec![expected]);
    }

    #[test]
    fn targets_never_cross_sequences() {
        // two sequences of 4: [1, 5, 1, 5] [5, 1, 0, 5]
        let tokens = [1, 5, 1, 5, 5, 1, 0, 5];
        let set = set(vec![
            rule(RuleKind::AnyToBlock { to: 1 }, None),
            rule(RuleKind::PreviousOccurrence { from: Condition::Any }, None),
            rule(RuleKind::Induction { from: Condition::Any }, None),
        ]);
        let got = rows(&set, &tokens, 2, 4);
        let block: Vec<Vec<u32>> = vec![vec![0], vec![0], vec![0, 2], vec![0, 2], vec![], vec![5], vec![5], vec![5]];
        let previous: Vec<Vec<u32>> = vec![vec![], vec![], vec![0], vec![1], vec![], vec![], vec![], vec![4]];
        let induction: Vec<Vec<u32>> = vec![vec![], vec![], vec![1], vec![2], vec![], vec![], vec![], vec![5]];
        assert_eq!(got, vec![block, previous, induction]);
        for (c, per_rule) in got.iter().enumerate() {
            for (n, targets) in per_rule.iter().enumerate() {
                let b = n / 4;
                assert!(targets.iter().all(|&j| j as usize / 4 == b && j as usize <= n), "rule {c} row {n}");
            }
        }
    }

    #[test]
    fn rows_past_the_tokens_are_empty() {
        let set = set(vec![rule(RuleKind::AnyToBlock { to: 1 }, None)]);
        let got = rows(&set, &[1, 1, 1], 2, 2);
        assert_eq!(got[0], vec![vec![0], vec![0, 1], vec![2], vec![]]);
    }

    #[test]
    fn one_pass_targets_equal_the_definition() {
        let tokens: Vec<u32> = (0..150).map(|i| ((i * 7 + i / 5) % 10) as u32).collect();
        for within in [None, Some(1), Some(3), Some(70)] {
            let rules = vec![
                rule(RuleKind::AnyToBlock { to: 1 }, within),
                rule(RuleKind::BlockToBlock { from: 2, to: 1 }, within),
                rule(RuleKind::PreviousOccurrence { from: Condition::Any }, within),
                rule(RuleKind::PreviousOccurrence { from: Condition::Block(2) }, within),
                rule(RuleKind::Induction { from: Condition::Any }, within),
                rule(RuleKind::Induction { from: Condition::Block(1) }, within),
            ];
            let set = set(rules);
            let got = copy_targets(&set, &tokens, 3, 50);
            for (c, rule) in set.copy_rules.iter().enumerate() {
                for b in 0..3 {
                    let expected = brute_force(&set, rule, &tokens[b * 50..(b + 1) * 50]);
                    let expected: Vec<Vec<u32>> =
                        expected.into_iter().map(|js| js.into_iter().map(|j| (b * 50 + j) as u32).collect()).collect();
                    assert_eq!(got[c][b * 50..(b + 1) * 50], expected[..], "rule {c} within {within:?} sequence {b}");
                }
            }
        }
    }

    #[test]
    fn copy_rules_are_checked_and_kept_out_of_attention() {
        let blocks = || vec![Block { name: "a".into(), members: vec![1], anchors: vec![], recruitable: false }];
        let base = || RuleSet::new(4, blocks(), Vec::new()).unwrap();
        let mut layered = rule(RuleKind::AnyToBlock { to: 1 }, None);
        layered.layers = Some(vec![0]);
        assert!(base().with_copy_rules(vec![layered]).is_err());
        let mut ranked = rule(RuleKind::AnyToBlock { to: 1 }, None);
        ranked.priority = 1;
        assert!(base().with_copy_rules(vec![ranked]).is_err());
        assert!(base().with_copy_rules(vec![rule(RuleKind::AnyToBlock { to: 1 }, Some(0))]).is_err());
        assert!(base().with_copy_rules(vec![rule(RuleKind::AnyToBlock { to: 2 }, None)]).is_err());
        assert!(base().with_copy_rules(vec![rule(RuleKind::OwnBlock { block: 1 }, None)]).is_err());
        let mut late = rule(RuleKind::AnyToBlock { to: 1 }, None);
        late.from_step = Some(10);
        let set = base().with_copy_rules(vec![late]).unwrap();
        assert!(set.rules.is_empty() && set.has_schedule());
        assert!(set.active_at(9).copy_rules.is_empty());
        assert_eq!(set.active_at(10).copy_rules.len(), 1);
    }
}
