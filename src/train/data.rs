//! Token streams for training and scoring: the encoded splits, training batches and scoring windows.

use std::path::PathBuf;

use crate::data::{Splits, TokenizerKind, Vocabulary};
use crate::rng::Rng;
use crate::Result;

/// Encoded splits with their vocabulary.
pub struct Dataset {
    pub vocabulary: Vocabulary,
    pub train: Vec<u32>,
    pub valid: Vec<u32>,
    pub test: Vec<u32>,
    pub name: String,
    pub files: Vec<PathBuf>,
}

impl Dataset {
    pub fn build(splits: &Splits, kind: TokenizerKind, vocab_cap: usize) -> Result<Self> {
        let vocabulary = Vocabulary::build(kind, &splits.train, vocab_cap);
        Self::with_vocabulary(splits, vocabulary)
    }

    pub fn with_vocabulary(splits: &Splits, vocabulary: Vocabulary) -> Result<Self> {
        let dataset = Dataset {
            train: vocabulary.encode(&splits.train),
            valid: vocabulary.encode(&splits.valid),
            test: vocabulary.encode(&splits.test),
            vocabulary,
            name: splits.name.clone(),
            files: splits.files.clone(),
        };
        Ok(dataset)
    }
}

/// A batch of `batch` windows of `seq_len` tokens and their next-token targets, from random offsets.
/// The offsets come from a stream derived from `(seed, step)` alone, so step `k` of a resumed run draws
/// what step `k` of an uninterrupted run drew.
pub fn sample_batch(ids: &[u32], batch: usize, seq_len: usize, seed: u64, step: usize) -> (Vec<u32>, Vec<u32>) {
    let mut rng = Rng::derive(seed, 0xBA7C, step as u64);
    let span = ids.len() - seq_len;
    let mut inputs = Vec::with_capacity(batch * seq_len);
    let mut targets = Vec::with_capacity(batch * seq_len);
    for _ in 0..batch {
        let start = rng.below(span);
        inputs.extend_from_slice(&ids[start..start + seq_len]);
        targets.extend_from_slice(&ids[start + 1..start + seq_len + 1]);
    }
    (inputs, targets)
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
