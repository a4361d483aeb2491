//! One training step and what feeds it: the encoded splits, the batch and λ that the seed and the
//! step fix, and the loss, penalty and gradients of the model on them.

use std::path::PathBuf;

use crate::config::{LocalityConfig, TrainConfig};
use crate::data::{Splits, TokenizerKind, Vocabulary};
use crate::engine::attention::NoHook;
use crate::engine::Model;
use crate::locality::schedule::per_layer;
use crate::locality::{BatchTargets, LocalityHook, RuleSet};
use crate::rng::Rng;
use crate::Result;

/// Loss, penalty and gradients of training step `step` (its batch and λ are fixed by the seed and the
/// step), with the rules of `locality` in force at that step.
pub fn step_gradients(
    model: &Model<f32>,
    config: &TrainConfig,
    locality: Option<(&LocalityConfig, &RuleSet)>,
    train_ids: &[u32],
    step: usize,
) -> (f32, f32, crate::engine::Grads<f32>, f64) {
    let seq_len = model.config.ctx_len;
    let (layers, heads) = (model.config.n_layers, model.config.n_heads);
    let (inputs, targets) = sample_batch(train_ids, config.batch_size, seq_len, config.seed, step);
    match locality {
        Some((settings, set)) => {
            let lambda = settings.schedule.at(step, config.seed);
            // injected rules switch on and off with the step
            let scheduled;
            let active = if set.has_schedule() {
                scheduled = set.active_at(step);
                &scheduled
            } else {
                set
            };
            let targets_of_batch = BatchTargets::new(active, &inputs, config.batch_size, seq_len, layers, heads);
            let lambdas = per_layer(lambda, layers, settings.progressive_beta);
            let hook = LocalityHook::new(&targets_of_batch, lambdas, settings.dial, false);
            // copy paths (METHOD §4) act at the batch's λ, whatever the per-layer attention schedule
            let copy = crate::locality::copy_paths::batch_caches(
                active,
                &model.config.copy_paths,
                &inputs,
                config.batch_size,
                seq_len,
            );
            let (loss, penalty, grads) = model.loss_and_grads(
                &inputs,
                &targets,
                config.batch_size,
                seq_len,
                &hook,
                copy.as_ref().map(|c| (c, lambda)),
            );
            (loss, penalty, grads, lambda)
        }
        None => {
            let (loss, penalty, grads) =
                model.loss_and_grads(&inputs, &targets, config.batch_size, seq_len, &NoHook, None);
            (loss, penalty, grads, 0.0)
        }
    }
}

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
