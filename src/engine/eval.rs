//! How a token stream is scored: windowed so that every token after the first is predicted once,
//! and the language-model figures of a pass. The scoring loop itself lives with the rules a pass may
//! run under, in `locality/score.rs`.

use serde::{Deserialize, Serialize};

/// Language-modelling metrics of one pass over a token stream.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
pub struct EvalResult {
    /// Predicted tokens (the stream length minus one).
    pub tokens: usize,
    #[serde(deserialize_with = "crate::json_float::f64_or_nan")]
    pub mean_ce_nats: f64,
    #[serde(deserialize_with = "crate::json_float::f64_or_nan")]
    pub perplexity: f64,
    #[serde(deserialize_with = "crate::json_float::f64_or_nan")]
    pub bits_per_token: f64,
    #[serde(deserialize_with = "crate::json_float::f64_or_nan")]
    pub accuracy: f64,
}

impl EvalResult {
    pub fn from_sums(tokens: usize, nll_sum: f64, correct: usize) -> Self {
        let mean = nll_sum / tokens.max(1) as f64;
        EvalResult {
            tokens,
            mean_ce_nats: mean,
            perplexity: mean.exp(),
            bits_per_token: mean / std::f64::consts::LN_2,
            accuracy: correct as f64 / tokens.max(1) as f64,
        }
    }
}

/// One forward pass of an evaluation: `windows` consecutive windows of `seq_len` inputs and their
/// next-token targets.
pub struct EvalBatch {
    pub inputs: Vec<u32>,
    pub targets: Vec<u32>,
    pub windows: usize,
    pub seq_len: usize,
}

/// Splits `ids` for scoring every token after the first: consecutive non-overlapping windows of the
/// context `ctx`, `batch` windows at a time, the shorter last window on its own. Every prediction
/// conditions on the tokens before it within its window, as in PyTorch's `word_language_model`.
pub fn eval_batches(ids: &[u32], ctx: usize, batch: usize) -> impl Iterator<Item = EvalBatch> + '_ {
    let predicted = ids.len().saturating_sub(1);
    let full_windows = predicted / ctx;
    let mut groups = Vec::new();
    let mut window = 0;
    while window < full_windows {
        let windows = batch.max(1).min(full_windows - window);
        groups.push((window, windows, ctx));
        window += windows;
    }
    if predicted > full_windows * ctx {
        groups.push((full_windows, 1, predicted - full_windows * ctx));
    }
    groups.into_iter().map(move |(first, windows, seq_len)| {
        let mut inputs = Vec::with_capacity(windows * seq_len);
        let mut targets = Vec::with_capacity(windows * seq_len);
        for w in first..first + windows {
            let start = w * ctx;
            inputs.extend_from_slice(&ids[start..start + seq_len]);
            targets.extend_from_slice(&ids[start + 1..start + seq_len + 1]);
        }
        EvalBatch { inputs, targets, windows, seq_len }
    })
}
