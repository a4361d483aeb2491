//! One training step and what feeds it: the encoded splits, the batch and λ that the seed and the
//! step fix, and the loss, penalty and gradients of the model on them.

use std::borrow::Cow;
use std::path::PathBuf;

use crate::config::{LocalityConfig, TrainConfig};
use crate::data::{Splits, TokenizerKind, Vocabulary};
use crate::engine::attention::NoHook;
use crate::engine::cuda::step::ResidentStep;
use crate::engine::optim::{AdamW, OptimConfig};
use crate::engine::{Grads, Model};
use crate::locality::device_rules::device_rules;
use crate::locality::{RuleSet, RulesAt};
use crate::rng::Rng;
use crate::Result;

/// The batch stream of a training run: its size, and the seed that fixes every step's batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Batches {
    pub batch_size: usize,
    pub seed: u64,
}

impl Batches {
    pub fn of(config: &TrainConfig) -> Self {
        Batches { batch_size: config.batch_size, seed: config.seed }
    }
}

/// What the forward and backward pass of one step produced.
pub struct StepGradients {
    /// Mean cross-entropy of the batch, in nats.
    pub loss: f32,
    /// The `λ·ρ·Ω` term added to it (0 without rules).
    pub penalty: f32,
    pub grads: Grads<f32>,
    /// The dial value the step drew (0 without rules).
    pub lambda: f64,
}

/// Loss, penalty and gradients of training step `step` (its batch and λ are fixed by the seed and the
/// step), with the rules of `locality` in force at that step.
pub fn step_gradients(
    model: &Model<f32>,
    batches: Batches,
    locality: Option<(&LocalityConfig, &RuleSet)>,
    train_ids: &[u32],
    step: usize,
) -> StepGradients {
    let Batches { batch_size, seed } = batches;
    let seq_len = model.config.ctx_len;
    let (inputs, targets) = sample_batch(train_ids, batch_size, seq_len, seed, step);
    match locality {
        Some((settings, set)) => {
            let lambda = settings.schedule.at(step, seed);
            let active = rules_in_force(set, step);
            let rules = RulesAt::new(&active, lambda, model.config.n_layers, settings.progressive_beta, settings.dial);
            let batch_targets = rules.targets(model, &inputs, batch_size, seq_len);
            let hook = rules.hook(&batch_targets);
            let copy = rules.copy_caches(model, &inputs, batch_size, seq_len);
            let (loss, penalty, grads) =
                model.loss_and_grads(&inputs, &targets, batch_size, seq_len, &hook, copy.as_ref().map(|c| (c, lambda)));
            StepGradients { loss, penalty, grads, lambda }
        }
        None => {
            let (loss, penalty, grads) = model.loss_and_grads(&inputs, &targets, batch_size, seq_len, &NoHook, None);
            StepGradients { loss, penalty, grads, lambda: 0.0 }
        }
    }
}

/// The rules of `set` in force at `step`: injected rules switch on and off with the step.
fn rules_in_force(set: &RuleSet, step: usize) -> Cow<'_, RuleSet> {
    if set.has_schedule() {
        Cow::Owned(set.active_at(step))
    } else {
        Cow::Borrowed(set)
    }
}

/// Everything a training step needs besides the model and its optimizer.
#[derive(Clone, Copy)]
pub struct StepPlan<'a> {
    pub batches: Batches,
    pub optim: &'a OptimConfig,
    /// The run's length, which the learning-rate schedule spans.
    pub total_steps: usize,
    pub locality: Option<(&'a LocalityConfig, &'a RuleSet)>,
    pub train_ids: &'a [u32],
}

impl<'a> StepPlan<'a> {
    pub fn of(
        config: &'a TrainConfig,
        locality: Option<(&'a LocalityConfig, &'a RuleSet)>,
        train_ids: &'a [u32],
    ) -> Self {
        StepPlan { batches: Batches::of(config), optim: &config.optim, total_steps: config.steps, locality, train_ids }
    }
}

/// One step as the training log records it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepRecord {
    /// Steps done after this one (1 for the first).
    pub step: usize,
    pub loss: f64,
    pub penalty: f64,
    pub lambda: f64,
    pub learning_rate: f64,
    pub grad_norm: f64,
}

/// A step whose loss was not finite; nothing was updated.
#[derive(Clone, Copy, Debug)]
pub struct NonFinite {
    pub loss: f64,
    pub penalty: f64,
}

/// One training step: the gradients on the batch of step `batch_step`, then the optimizer's update at
/// step `step`'s learning rate (the two differ only in recruitment's reversed control). A loss that is
/// not finite leaves the model and the optimizer as they were.
pub fn train_step(
    model: &mut Model<f32>,
    optimizer: &mut AdamW<f32>,
    plan: &StepPlan,
    step: usize,
    batch_step: usize,
) -> std::result::Result<StepRecord, NonFinite> {
    let StepGradients { loss, penalty, grads, lambda } =
        step_gradients(model, plan.batches, plan.locality, plan.train_ids, batch_step);
    let (loss, penalty) = (f64::from(loss), f64::from(penalty));
    if !(loss + penalty).is_finite() {
        return Err(NonFinite { loss, penalty });
    }
    let learning_rate = plan.optim.learning_rate_at(step, plan.total_steps);
    let grad_norm = optimizer.update(&mut model.params, &grads, plan.optim, learning_rate);
    Ok(StepRecord { step: step + 1, loss, penalty, lambda, learning_rate, grad_norm })
}

/// [`train_step`] on the device step: the same batch, λ, rules in force and learning rate, the update
/// made on the device. `model` gives the shapes and copy paths (its weights may be older than the
/// device's). `Err` is the device's failure; a loss that is not finite updates nothing, as on the CPU.
pub fn resident_train_step(
    device: &mut dyn ResidentStep,
    model: &Model<f32>,
    plan: &StepPlan,
    step: usize,
) -> std::result::Result<std::result::Result<StepRecord, NonFinite>, String> {
    let Batches { batch_size, seed } = plan.batches;
    let seq_len = model.config.ctx_len;
    let (inputs, targets) = sample_batch(plan.train_ids, batch_size, seq_len, seed, step);
    let (loss, lambda) = match plan.locality {
        Some((settings, set)) => {
            let lambda = settings.schedule.at(step, seed);
            let active = rules_in_force(set, step);
            let layers = model.config.n_layers;
            let rules = RulesAt::new(&active, lambda, layers, settings.progressive_beta, settings.dial);
            let batch_targets = rules.targets(model, &inputs, batch_size, seq_len);
            let copy = rules.copy_caches(model, &inputs, batch_size, seq_len);
            let hook = rules.hook(&batch_targets);
            let on_device = device_rules(&hook, copy.as_ref().map(|c| (c, lambda)), &targets, layers);
            (device.loss_and_grads(&inputs, &targets, Some(&on_device))?, lambda)
        }
        None => (device.loss_and_grads(&inputs, &targets, None)?, 0.0),
    };
    // at the CPU engine's precision, f32, so that a run's log reads alike from either engine (and a
    // resumed run's logged losses are the ones it computed)
    let (loss, penalty) = (f64::from(loss.cross_entropy as f32), f64::from(loss.penalty as f32));
    if !(loss + penalty).is_finite() {
        return Ok(Err(NonFinite { loss, penalty }));
    }
    let learning_rate = plan.optim.learning_rate_at(step, plan.total_steps);
    let grad_norm = device.update(plan.optim, learning_rate)?;
    Ok(Ok(StepRecord { step: step + 1, loss, penalty, lambda, learning_rate, grad_norm }))
}

/// A device step's failure as the run reports it.
pub fn device_error(message: String) -> crate::Error {
    crate::Error::Numeric(format!("the device step failed: {message}"))
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
