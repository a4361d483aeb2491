//! The device step on the host device against the CPU engine: the same model, batch and optimizer give
//! the same loss, gradients and trajectory, to f32 rounding. This checks the step's orchestration
//! (layout, every product's shape and strides, the order of the kernels) on machines without a GPU.

use super::batch_rules::{AttentionRules, BatchRules, CopyRules};
use super::host::HostDevice;
use super::step::DeviceModel;
use crate::engine::attention::NoHook;
use crate::engine::model::tests::tiny_config;
use crate::engine::optim::{AdamW, OptimConfig};
use crate::engine::Model;
use crate::rng::Rng;

const BATCH: usize = 3;
/// Shorter than the context (6), so that a position embedding row is left without gradient.
const SEQ_LEN: usize = 5;

/// A tiny model with weights drawn ten times larger than the initialisation's, so that attention is
/// far from uniform and every path carries gradient (at 0.02 a wrong attention term could hide).
fn model(tied: bool) -> Model<f32> {
    let mut model = Model::<f32>::init(tiny_config(tied), 5).unwrap();
    let mut rng = Rng::new(31);
    for (_, mut tensor) in model.params.named_mut() {
        tensor.mapv_inplace(|w| w * 10.0 + 0.05 * rng.normal() as f32);
    }
    model
}

fn batch(seed: u64, vocab: usize) -> (Vec<u32>, Vec<u32>) {
    let mut rng = Rng::new(seed);
    let mut draw = || (0..BATCH * SEQ_LEN).map(|_| rng.below(vocab) as u32).collect::<Vec<u32>>();
    (draw(), draw())
}

/// f32 sums taken in another order differ by a few units in the last place per operation; through two
/// layers that stays below 1e-5 of a tensor's largest gradient, so 1e-4 leaves a margin and still
/// catches a missing or misplaced term, which moves gradients by their own size.
const RELATIVE: f64 = 1e-4;

fn close(got: f64, want: f64, scale: f64) -> bool {
    (got - want).abs() <= RELATIVE * scale.max(1e-6)
}

#[test]
fn the_device_step_gives_the_cpu_engine_s_loss_and_every_gradient() {
    for tied in [true, false] {
        let model = model(tied);
        let (tokens, targets) = batch(3, model.config.vocab_size);
        let (cpu_loss, _, cpu_grads) = model.loss_and_grads(&tokens, &targets, BATCH, SEQ_LEN, &NoHook, None);
        let mut device = DeviceModel::new(HostDevice::new(), &model, BATCH, SEQ_LEN).unwrap();
        let loss = device.loss_and_grads(&tokens, &targets, None).unwrap().cross_entropy;
        assert!(close(loss, cpu_loss as f64, cpu_loss as f64), "tied {tied}: loss {loss} vs {cpu_loss}");
        let grads = device.gradients().unwrap();
        let largest = |tensor: &ndarray::ArrayViewD<f32>| tensor.iter().fold(0.0f64, |m, &g| m.max(g.abs() as f64));
        let model_largest = cpu_grads.named().iter().map(|(_, t)| largest(t)).fold(0.0, f64::max);
        for ((name, want), (_, got)) in cpu_grads.named().into_iter().zip(grads.named()) {
            // rounding noise scales with what flows through a tensor, not with its own gradient: the key
            // bias's is zero but for noise (softmax ignores a shift common to a row)
            let scale = largest(&want).max(1e-3 * model_largest);
            if !name.ends_with("attn.wk.bias") && !name.starts_with("pos_emb") {
                assert!(largest(&want) > 1e-3 * model_largest, "tied {tied}: {name} has too little gradient to test");
            }
            for (g, w) in got.iter().zip(want.iter()) {
                assert!(close(*g as f64, *w as f64, scale), "tied {tied}: {name}: {g} vs {w} (largest {scale})");
            }
        }
        // evaluation computes the same loss without touching the gradients
        let again = device.loss(&tokens, &targets, None).unwrap().cross_entropy;
        assert!(close(again, loss, loss), "{again} vs {loss}");
    }
}

#[test]
fn device_training_follows_the_cpu_engine_step_by_step() {
    let mut cpu = model(false);
    let mut device = DeviceModel::new(HostDevice::new(), &cpu, BATCH, SEQ_LEN).unwrap();
    let config = OptimConfig::default();
    let mut adam = AdamW::new(&cpu.params);
    for step in 0..5 {
        let (tokens, targets) = batch(10 + step, cpu.config.vocab_size);
        let lr = config.learning_rate_at(step as usize, 5);
        let (cpu_loss, _, grads) = cpu.loss_and_grads(&tokens, &targets, BATCH, SEQ_LEN, &NoHook, None);
        let cpu_norm = adam.update(&mut cpu.params, &grads, &config, lr);
        let outcome = device.train_step(&tokens, &targets, None, &config, lr).unwrap();
        assert!(
            close(outcome.loss.cross_entropy, cpu_loss as f64, cpu_loss as f64),
            "step {step}: {outcome:?} vs {cpu_loss}"
        );
        assert!(close(outcome.grad_norm, cpu_norm, cpu_norm), "step {step}: {outcome:?} vs norm {cpu_norm}");
    }
    // Adam moves each weight by about the learning rate whatever its gradient's size, so weights whose
    // gradient is rounding noise (the key bias: softmax ignores a shift common to a row) may move apart
    // by 2·lr per step; every other weight agrees far more closely
    let trained = device.model().unwrap();
    for ((name, want), (_, got)) in cpu.params.named().into_iter().zip(trained.params.named()) {
        let bound = if name.ends_with("attn.wk.bias") { 10.0 * config.learning_rate } else { 1e-4 };
        for (g, w) in got.iter().zip(want.iter()) {
            assert!((g - w).abs() as f64 <= bound, "{name}: {g} vs {w}");
        }
    }
}

#[test]
fn models_the_step_does_not_cover_and_bad_batches_are_refused() {
    let mut odd = model(true);
    odd.config.n_heads = 3;
    let error = DeviceModel::new(HostDevice::new(), &odd, BATCH, SEQ_LEN).err().unwrap();
    assert!(error.contains("d_model 8 is not a multiple of n_heads 3"), "{error}");
    let plain = model(true);
    let error = DeviceModel::new(HostDevice::new(), &plain, BATCH, 7).err().unwrap();
    assert!(error.contains("context is 6"), "{error}");
    let mut device = DeviceModel::new(HostDevice::new(), &plain, BATCH, SEQ_LEN).unwrap();
    let (mut tokens, targets) = batch(4, plain.config.vocab_size);
    tokens[2] = 11;
    let error = device.loss(&tokens, &targets, None).unwrap_err();
    assert!(error.contains("token id 11 outside the vocabulary of 11"), "{error}");
    let error = device.loss(&tokens[1..], &targets, None).unwrap_err();
    assert!(error.contains("for a batch of 15"), "{error}");
    // rules built for another shape, or for copy paths the model lacks, are refused before any upload
    tokens[2] = 1;
    let one_layer = BatchRules { layers: vec![None], ..BatchRules::default() };
    let error = device.loss(&tokens, &targets, Some(&one_layer)).unwrap_err();
    assert!(error.contains("1 layers where the step has 2"), "{error}");
    let copy = CopyRules { lambda: 1.0, strength: vec![], active: vec![], kappa_target: vec![] };
    let with_copy = BatchRules { layers: vec![None, None], copy: Some(copy), ..BatchRules::default() };
    let error = device.loss(&tokens, &targets, Some(&with_copy)).unwrap_err();
    assert!(error.contains("model has no copy path"), "{error}");
    let short =
        AttentionRules { inv_tau: 1.0, penalty_weight: 0.0, covered: vec![0; 3], targets: vec![], bias: vec![] };
    let bad_layer = BatchRules { layers: vec![None, Some(short)], blocks: vec![0; 15], block_count: 1, copy: None };
    let error = device.loss(&tokens, &targets, Some(&bad_layer)).unwrap_err();
    assert!(error.contains("layer 1's covered rows"), "{error}");
}
