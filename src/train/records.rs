//! What a run writes about itself: the lines of `metrics.jsonl` and `summary.json`.

use serde::{Deserialize, Serialize};

use crate::data::TokenizerKind;
use crate::engine::eval::EvalResult;
use crate::locality::metrics::LocalityMetrics;
use crate::step::StepRecord;

/// One line of `metrics.jsonl`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MetricsRecord {
    /// One recruitment trial's verdict (METHOD §7).
    Recruitment(Box<crate::recruit::Decision>),
    Train {
        step: usize,
        /// Mean cross-entropy of the batch, in nats.
        loss: f64,
        /// The `λ·ρ·Ω` term added to it (0 without rules).
        penalty: f64,
        lambda: f64,
        learning_rate: f64,
        grad_norm: f64,
    },
    Eval {
        step: usize,
        split: String,
        #[serde(flatten)]
        result: EvalResult,
    },
    /// The trained model evaluated at one λ with its rules.
    Dial { step: usize, split: String, metrics: Box<LocalityMetrics> },
}

impl From<StepRecord> for MetricsRecord {
    fn from(record: StepRecord) -> Self {
        let StepRecord { step, loss, penalty, lambda, learning_rate, grad_norm } = record;
        MetricsRecord::Train { step, loss, penalty, lambda, learning_rate, grad_norm }
    }
}

/// What a finished (or interrupted) run reports.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct TrainSummary {
    pub steps_done: usize,
    pub steps_planned: usize,
    pub parameters: usize,
    pub vocab_size: usize,
    pub tokenizer: TokenizerKind,
    pub train_tokens: usize,
    pub unigram_entropy_nats: f64,
    pub valid: EvalResult,
    pub test: EvalResult,
    pub losses: Vec<f64>,
    /// The test split across the dial, when the run has rules.
    pub dial: Vec<LocalityMetrics>,
    /// Problems found compiling the rules against the vocabulary.
    pub rule_warnings: Vec<String>,
    pub seconds: f64,
}
