//! One training step: the batch and λ fixed by the seed and the step, loss, penalty and gradients.

use super::config::{LocalityConfig, TrainConfig};
use super::data::sample_batch;
use crate::engine::attention::NoHook;
use crate::engine::Model;
use crate::locality::schedule::per_layer;
use crate::locality::{BatchTargets, LocalityHook, RuleSet};

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
