//! Recurrent tokens (METHOD §7, candidate source 2): general-block tokens that come back within the
//! window far more often than their frequency predicts, the tokens a copy path can predict.
//!
//! For a token `v` of frequency `f_v`, a window `w`, and the positions `i` where `t_i = v`:
//!
//! ```text
//! ρ_v = P(v among t_{i−w..i−1} | t_i = v) / (1 − (1 − f_v)^w)
//! ```
//!
//! The denominator is the chance that `v` falls in a window of `w` independent draws, so `ρ_v ≈ 1` for a
//! token that lands where it likes and `ρ_v ≫ 1` for one that repeats itself.

/// `ρ_v` of every token of the vocabulary on `ids` (0 for tokens that never occur), and each token's
/// count.
pub fn recurrence(ids: &[u32], vocab_size: usize, window: usize) -> (Vec<f64>, Vec<usize>) {
    let mut count = vec![0usize; vocab_size];
    let mut recurred = vec![0usize; vocab_size];
    // the last position each token was seen at, +1 (0: not yet)
    let mut last_seen = vec![0usize; vocab_size];
    for (i, &t) in ids.iter().enumerate() {
        let Some(slot) = last_seen.get_mut(t as usize) else { continue };
        count[t as usize] += 1;
        if *slot > 0 && i + 1 - *slot <= window {
            recurred[t as usize] += 1;
        }
        *slot = i + 1;
    }
    let total = ids.len().max(1) as f64;
    let rho = (0..vocab_size)
        .map(|v| {
            if count[v] == 0 {
                return 0.0;
            }
            let frequency = count[v] as f64 / total;
            let chance = 1.0 - (1.0 - frequency).powi(window.min(i32::MAX as usize) as i32);
            (recurred[v] as f64 / count[v] as f64) / chance.max(f64::MIN_POSITIVE)
        })
        .collect();
    (rho, count)
}

/// The tokens among `allowed` whose `ρ_v ≥ min_recurrence`, seen at least `min_count` times, most
/// recurrent first (ties by id).
pub fn recurrent_tokens(
    ids: &[u32],
    vocab_size: usize,
    window: usize,
    allowed: &[u32],
    min_recurrence: f64,
    min_count: usize,
) -> Vec<u32> {
    let (rho, count) = recurrence(ids, vocab_size, window);
    let mut kept: Vec<u32> = allowed
        .iter()
        .copied()
        .filter(|&t| count[t as usize] >= min_count && rho[t as usize] >= min_recurrence)
        .collect();
    kept.sort_by(|&a, &b| rho[b as usize].total_cmp(&rho[a as usize]).then(a.cmp(&b)));
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_that_repeats_itself_is_recurrent_and_a_scattered_one_is_not() {
        // token 1 comes in pairs `1 x 1` far apart (frequency ≈ 2 %, ρ ≈ ½ / (1 − 0.98⁴) ≈ 6.6);
        // tokens 2..10 cycle in between
        let mut ids = Vec::new();
        for round in 0..200u32 {
            ids.extend([1, 2 + round % 9, 1]);
            ids.extend((0..100).map(|k| 2 + (round + k) % 9));
        }
        let (rho, count) = recurrence(&ids, 12, 4);
        assert_eq!(count[1], 400);
        assert!(rho[1] > 5.0, "ρ of the pair token is {}", rho[1]);
        // a cycle of 9 never comes back within 4 positions
        assert!(rho[3] < 1.0, "ρ of a cycling token is {}", rho[3]);
        assert_eq!(rho[11], 0.0);
        let kept = recurrent_tokens(&ids, 12, 4, &(0..12).collect::<Vec<_>>(), 3.0, 20);
        assert_eq!(kept, [1]);
        // a token that is not allowed (in a block already) is never proposed
        assert!(recurrent_tokens(&ids, 12, 4, &[2, 3], 3.0, 20).is_empty());
    }
}
