//! The language-model score of a token stream.

use serde::{Deserialize, Serialize};

use super::data::eval_batches;
use crate::engine::attention::AttentionHook;
use crate::engine::Model;

/// Language-modelling metrics of one pass over a token stream.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
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

/// Scores every token of `ids` after the first, windowed by [`eval_batches`].
pub fn evaluate(model: &Model<f32>, ids: &[u32], batch: usize, hook: &dyn AttentionHook<f32>) -> EvalResult {
    let mut nll_sum = 0.0f64;
    let mut correct = 0usize;
    for b in eval_batches(ids, model.config.ctx_len, batch) {
        let cache = model.forward(&b.inputs, b.windows, b.seq_len, hook);
        let loss = model.output_loss(&cache, &b.targets, false, None);
        nll_sum += loss.nll.iter().map(|&v| v as f64).sum::<f64>();
        correct += loss.correct;
    }
    EvalResult::from_sums(ids.len().saturating_sub(1), nll_sum, correct)
}
