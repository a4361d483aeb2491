//! Information-theoretic anchor design (METHOD §2): for a block `B` and window `w`, `Y_i` says whether
//! some other position within `w` of `i` holds a member of `B`; a candidate `a` is scored by the mutual
//! information between `X_i = 1[t_i = a]` and `Y_i`, in bits. Anchors are then chosen greedily by the
//! gain in `I(X_A; Y)`, where `X_A` says which chosen anchor (or none) stands at `i`, so a second anchor
//! that says nothing new gains about nothing.

use serde::Serialize;

use crate::data::Vocabulary;
use crate::locality::RuleSet;

#[derive(Serialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
pub struct AnchorScore {
    pub token: String,
    pub occurrences: usize,
    /// `I(X_a; Y)` alone, in bits.
    pub mutual_information_bits: f64,
    /// Gain in `I(X_A; Y)` when it was chosen (0 for tokens not chosen).
    pub greedy_gain_bits: f64,
    pub chosen: bool,
}

#[derive(Serialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
pub struct BlockAnchors {
    pub block: String,
    /// Positions near a member of the block, as a share of the corpus: `P(Y = 1)`.
    pub share_near_block: f64,
    /// Candidates by decreasing single-token information.
    pub scores: Vec<AnchorScore>,
    /// The chosen anchors in the order the greedy selection took them.
    pub chosen: Vec<String>,
}

fn entropy(p: f64) -> f64 {
    let term = |q: f64| if q > 0.0 { -q * q.log2() } else { 0.0 };
    term(p) + term(1.0 - p)
}

/// `I(X; Y)` in bits for a categorical `X` given per-category (count, count with `Y = 1`).
fn mutual_information(categories: &[(usize, usize)], total: usize, total_y: usize) -> f64 {
    let n = total as f64;
    let conditional: f64 = categories
        .iter()
        .filter(|(count, _)| *count > 0)
        .map(|&(count, y)| count as f64 / n * entropy(y as f64 / count as f64))
        .sum();
    (entropy(total_y as f64 / n) - conditional).max(0.0)
}

/// Scores every member of every block on `ids` and selects up to `max_anchors` per block, stopping
/// when the best remaining gain is below `min_gain_bits`.
pub fn score(
    set: &RuleSet,
    vocabulary: &Vocabulary,
    ids: &[u32],
    window: usize,
    max_anchors: usize,
    min_gain_bits: f64,
) -> Vec<BlockAnchors> {
    let n = ids.len();
    set.blocks
        .iter()
        .enumerate()
        .map(|(index, block)| {
            let number = index as u16 + 1;
            let member: Vec<bool> = ids.iter().map(|&t| set.block_of_token(t) == number).collect();
            let mut prefix = vec![0usize; n + 1];
            for i in 0..n {
                prefix[i + 1] = prefix[i] + usize::from(member[i]);
            }
            // Y_i: another member within the window, on either side
            let near: Vec<bool> = (0..n)
                .map(|i| {
                    let (lo, hi) = (i.saturating_sub(window), (i + window + 1).min(n));
                    prefix[hi] - prefix[lo] - usize::from(member[i]) > 0
                })
                .collect();
            let total_y = near.iter().filter(|&&y| y).count();
            let mut counts: std::collections::HashMap<u32, (usize, usize)> = Default::default();
            for (i, &t) in ids.iter().enumerate() {
                if member[i] {
                    let entry = counts.entry(t).or_default();
                    entry.0 += 1;
                    entry.1 += usize::from(near[i]);
                }
            }
            let mut candidates: Vec<(u32, usize, usize)> = block
                .members
                .iter()
                .map(|&id| {
                    let (c, y) = counts.get(&id).copied().unwrap_or_default();
                    (id, c, y)
                })
                .collect();
            candidates.sort_by_key(|&(id, ..)| id);
            let single = |c: usize, y: usize| mutual_information(&[(c, y), (n - c, total_y - y)], n, total_y);
            // greedy: chosen anchors are categories of their own, everything else one "rest" category
            let mut chosen: Vec<(u32, f64)> = Vec::new();
            let (mut rest_count, mut rest_y) = (n, total_y);
            let mut current = 0.0;
            while chosen.len() < max_anchors {
                let mut best: Option<(u32, f64, usize, usize)> = None;
                for &(id, c, y) in candidates.iter().filter(|(id, c, _)| *c > 0 && !chosen.iter().any(|(k, _)| k == id))
                {
                    let mut categories: Vec<(usize, usize)> = chosen
                        .iter()
                        .map(|(k, _)| candidates.iter().find(|(i, ..)| i == k).map_or((0, 0), |&(_, c, y)| (c, y)))
                        .collect();
                    categories.push((c, y));
                    categories.push((rest_count - c, rest_y - y));
                    let information = mutual_information(&categories, n, total_y);
                    if best.is_none_or(|(_, b, ..)| information > b) {
                        best = Some((id, information, c, y));
                    }
                }
                let Some((id, information, c, y)) = best else { break };
                let gain = information - current;
                if gain < min_gain_bits {
                    break;
                }
                chosen.push((id, gain));
                current = information;
                rest_count -= c;
                rest_y -= y;
            }
            let mut scores: Vec<AnchorScore> = candidates
                .iter()
                .map(|&(id, c, y)| {
                    let gain = chosen.iter().find(|(k, _)| *k == id).map(|(_, g)| *g);
                    AnchorScore {
                        token: vocabulary.tokens[id as usize].clone(),
                        occurrences: c,
                        mutual_information_bits: if c > 0 { single(c, y) } else { 0.0 },
                        greedy_gain_bits: gain.unwrap_or(0.0),
                        chosen: gain.is_some(),
                    }
                })
                .collect();
            scores.sort_by(|a, b| {
                b.mutual_information_bits.total_cmp(&a.mutual_information_bits).then(a.token.cmp(&b.token))
            });
            BlockAnchors {
                block: block.name.clone(),
                share_near_block: total_y as f64 / n.max(1) as f64,
                scores,
                chosen: chosen.iter().map(|(id, _)| vocabulary.tokens[*id as usize].clone()).collect(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutual_information_of_independent_and_determined_variables() {
        // X independent of Y: 0 bits
        assert!(mutual_information(&[(50, 25), (50, 25)], 100, 50).abs() < 1e-12);
        // X determines Y exactly with P(Y) = 1/2: 1 bit
        assert!((mutual_information(&[(50, 50), (50, 0)], 100, 50) - 1.0).abs() < 1e-12);
    }
}
