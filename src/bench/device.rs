//! `ailla bench --device cuda`: the device step's throughput (issue 24), measured as
//! [`super::run_config`] measures the CPU engine's, with the device's own sgemm as the reference.

use std::time::Instant;

use super::{median, BenchConfig, BenchResult};
use crate::engine::cuda::gemm::RowMajorProduct;
use crate::engine::cuda::ops::{Device, Gemm};
use crate::engine::cuda::step::DeviceModel;
use crate::engine::linalg::gemm_flops;
use crate::engine::optim::OptimConfig;
use crate::engine::Model;
use crate::rng::Rng;
use crate::step::device_error;
use crate::{Error, Result};

/// Median time of `steps` training steps and of `steps` evaluation passes of `config` on `device`, each
/// timed to the device's completion, after one untimed warm-up of each, on random tokens; the
/// reference is a `reference_size`³ product on the same device, timed after every training step.
pub fn run_config_on<D: Device>(
    device: D,
    config: &BenchConfig,
    steps: usize,
    reference_size: usize,
) -> Result<BenchResult> {
    if steps == 0 {
        return Err(Error::invalid("steps", "must be at least 1"));
    }
    let model_config = config.model_config();
    let model = Model::<f32>::init(model_config.clone(), 1)?;
    let (batch, seq_len) = (config.batch_size, config.ctx_len);
    let mut resident = DeviceModel::new(device, &model, batch, seq_len).map_err(device_error)?;
    let n = batch * seq_len;
    let mut rng = Rng::new(7);
    let tokens: Vec<u32> = (0..n).map(|_| rng.below(config.vocab_size) as u32).collect();
    let targets: Vec<u32> = (0..n).map(|_| rng.below(config.vocab_size) as u32).collect();
    let optim = OptimConfig::default();
    let size = reference_size;
    let product = RowMajorProduct { m: size, n: size, k: size, transpose_a: false, transpose_b: false };
    let operands = {
        let device = resident.device_mut();
        let square: Vec<f32> = (0..size * size).map(|i| ((i * 7) % 13) as f32 * 0.01).collect();
        let (a, b, c) = (
            device.alloc(size * size).map_err(device_error)?,
            device.alloc(size * size).map_err(device_error)?,
            device.alloc(size * size).map_err(device_error)?,
        );
        device.upload(a, &square).map_err(device_error)?;
        device.upload(b, &square).map_err(device_error)?;
        Gemm::plain(product, a, b, c, 0.0)
    };
    let train_step = |resident: &mut DeviceModel<D>| -> Result<f64> {
        let start = Instant::now();
        resident.train_step(&tokens, &targets, None, &optim, 1e-4).map_err(device_error)?;
        resident.device_mut().synchronize().map_err(device_error)?;
        Ok(start.elapsed().as_secs_f64())
    };
    let reference = |resident: &mut DeviceModel<D>| -> Result<f64> {
        let device = resident.device_mut();
        let start = Instant::now();
        device.gemm(&operands).map_err(device_error)?;
        device.synchronize().map_err(device_error)?;
        Ok(start.elapsed().as_secs_f64())
    };
    train_step(&mut resident)?;
    reference(&mut resident)?;
    let (mut train, mut products) = (Vec::with_capacity(steps), Vec::with_capacity(steps));
    for _ in 0..steps {
        train.push(train_step(&mut resident)?);
        products.push(reference(&mut resident)?);
    }
    let mut eval = Vec::with_capacity(steps);
    resident.loss(&tokens, &targets, None).map_err(device_error)?;
    for _ in 0..steps {
        let start = Instant::now();
        resident.loss(&tokens, &targets, None).map_err(device_error)?;
        eval.push(start.elapsed().as_secs_f64());
    }
    let reference = gemm_flops(size, size, size) / median(products) / 1e9;
    Ok(BenchResult::of_steps(config, &model, median(train), median(eval), reference, None))
}

/// The same model trained `steps` steps on the CPU engine and on `device` from the same random batches
/// at the same learning rates: each step's loss, CPU first. The device's gradients differ from the
/// CPU's in the last bits (other summation orders), and AdamW carries that forward; the losses stay
/// within about 1e-5 over tens of steps when both are right.
pub fn loss_trajectories<D: Device>(device: D, config: &BenchConfig, steps: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    use crate::engine::attention::NoHook;
    use crate::engine::optim::AdamW;
    let mut model = Model::<f32>::init(config.model_config(), 1)?;
    let (batch, seq_len) = (config.batch_size, config.ctx_len);
    let mut resident = DeviceModel::new(device, &model, batch, seq_len).map_err(device_error)?;
    let mut optimizer = AdamW::new(&model.params);
    let optim = OptimConfig::default();
    let mut rng = Rng::new(11);
    let (mut on_cpu, mut on_device) = (Vec::with_capacity(steps), Vec::with_capacity(steps));
    for step in 0..steps {
        // the next id as the target: a rule the model learns within a few steps, so the losses fall
        let tokens: Vec<u32> = (0..batch * seq_len).map(|_| rng.below(config.vocab_size) as u32).collect();
        let targets: Vec<u32> = tokens.iter().map(|&t| (t + 1) % config.vocab_size as u32).collect();
        let lr = optim.learning_rate_at(step, steps);
        let (loss, _, grads) = model.loss_and_grads(&tokens, &targets, batch, seq_len, &NoHook, None);
        optimizer.update(&mut model.params, &grads, &optim, lr);
        on_cpu.push(f64::from(loss));
        on_device
            .push(resident.train_step(&tokens, &targets, None, &optim, lr).map_err(device_error)?.loss.cross_entropy);
    }
    Ok((on_cpu, on_device))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::cuda::host::HostDevice;

    #[test]
    fn the_device_bench_and_loss_check_run_on_the_host_device() {
        let config = BenchConfig {
            name: "tiny".into(),
            vocab_size: 50,
            d_model: 16,
            n_heads: 2,
            n_layers: 1,
            d_ff: 32,
            ctx_len: 8,
            batch_size: 2,
        };
        let result = run_config_on(HostDevice::new(), &config, 2, 16).unwrap();
        assert!(result.train_tokens_per_s > 0.0 && result.eval_tokens_per_s > 0.0 && result.sgemm_gflops > 0.0);
        assert!(result.train_gflops.is_finite());
        assert!(run_config_on(HostDevice::new(), &config, 0, 16).is_err());
        let (cpu, device) = loss_trajectories(HostDevice::new(), &config, 6).unwrap();
        assert_eq!((cpu.len(), device.len()), (6, 6));
        for (step, (c, d)) in cpu.iter().zip(&device).enumerate() {
            assert!((c - d).abs() <= 1e-5 * c.abs(), "step {step}: cpu {c} device {d}");
        }
    }
}
