//! AdamW (Loshchilov and Hutter 2019) with global gradient-norm clipping and a warm-up + cosine schedule.

use ndarray::{ArrayD, Zip};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::{Params, Scalar};

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    pub learning_rate: f64,
    /// Floor of the cosine decay, as a fraction of `learning_rate`.
    pub min_lr_ratio: f64,
    pub warmup_steps: usize,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Largest global gradient norm; 0 disables clipping.
    pub grad_clip: f64,
    /// The copy gates' learning rate as a multiple of the model's, without weight decay. A gate starts
    /// shut (`b = −6`, METHOD §4) and has `d + 1` parameters; at the model's rate it needs thousands of
    /// steps to open, so a copy path would act only at the end of a run. 10 matches the frozen trial's
    /// rate (`recruitment.trial_learning_rate` 3·10⁻² against 3·10⁻³).
    pub copy_gate_lr_scale: f64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            learning_rate: 3e-3,
            min_lr_ratio: 0.1,
            warmup_steps: 50,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            grad_clip: 1.0,
            copy_gate_lr_scale: 10.0,
        }
    }
}

impl OptimConfig {
    /// Linear warm-up to `learning_rate`, then cosine decay to `min_lr_ratio · learning_rate` at `total`.
    pub fn learning_rate_at(&self, step: usize, total: usize) -> f64 {
        if step < self.warmup_steps {
            return self.learning_rate * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = total.saturating_sub(self.warmup_steps).max(1);
        let progress = ((step - self.warmup_steps) as f64 / span as f64).min(1.0);
        let floor = self.learning_rate * self.min_lr_ratio;
        floor + 0.5 * (self.learning_rate - floor) * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

/// First and second moments per tensor, in the order of [`Params::named`], and the step count.
#[derive(Clone, Debug, PartialEq)]
pub struct AdamW<F> {
    pub step: usize,
    pub m: Vec<ArrayD<F>>,
    pub v: Vec<ArrayD<F>>,
    /// The tensors' names, in the same order, so that [`grow_to`](Self::grow_to) follows a tensor that a
    /// new one was inserted before (a first block embedding lands before existing copy gates).
    names: Vec<String>,
}

/// The copy gates' tensors (`copy.weight`, `copy.bias`): see [`OptimConfig::copy_gate_lr_scale`].
const COPY_GATE_PREFIX: &str = "copy.";

/// Decay applies to matrices only (embeddings, projections), not to biases and LayerNorm gains,
/// following GPT-2 practice: shrinking a gain towards 0 is not regularisation but a change of scale.
pub fn decays(ndim: usize) -> bool {
    ndim >= 2
}

/// How AdamW treats tensor `name` (of `ndim` dimensions) at learning rate `lr`: its weight-decay factor
/// `1 − lr·wd` (1 where it does not decay) and its own learning rate (the copy gates' is scaled).
pub fn tensor_rates(name: &str, ndim: usize, config: &OptimConfig, lr: f64) -> (f64, f64) {
    let copy_gate = name.starts_with(COPY_GATE_PREFIX);
    let decay = if decays(ndim) && !copy_gate { 1.0 - lr * config.weight_decay } else { 1.0 };
    (decay, if copy_gate { lr * config.copy_gate_lr_scale } else { lr })
}

impl<F: Scalar> AdamW<F> {
    pub fn new(params: &Params<F>) -> Self {
        let named = params.named();
        let zeros: Vec<ArrayD<F>> = named.iter().map(|(_, t)| ArrayD::zeros(t.raw_dim())).collect();
        AdamW { step: 0, m: zeros.clone(), v: zeros, names: named.into_iter().map(|(n, _)| n).collect() }
    }

    /// Follows a model that gained a recruited block or a copy path: new tensors get zero moments, and a
    /// tensor that gained rows keeps the moments of its old rows. Tensors are matched by name.
    pub fn grow_to(&mut self, params: &Params<F>) {
        let mut old: std::collections::HashMap<String, (ArrayD<F>, ArrayD<F>)> = std::mem::take(&mut self.names)
            .into_iter()
            .zip(std::mem::take(&mut self.m).into_iter().zip(std::mem::take(&mut self.v)))
            .collect();
        for (name, tensor) in params.named() {
            let carried = old.remove(&name);
            for (k, moments) in [&mut self.m, &mut self.v].into_iter().enumerate() {
                let mut grown = ArrayD::zeros(tensor.raw_dim());
                if let Some(pair) = &carried {
                    let previous = if k == 0 { &pair.0 } else { &pair.1 };
                    let rows = previous.shape()[0].min(tensor.shape()[0]);
                    grown
                        .slice_axis_mut(ndarray::Axis(0), (0..rows).into())
                        .assign(&previous.slice_axis(ndarray::Axis(0), (0..rows).into()));
                }
                moments.push(grown);
            }
            self.names.push(name);
        }
    }

    /// Applies one update with learning rate `lr`; returns the gradient norm before clipping.
    pub fn update(&mut self, params: &mut Params<F>, grads: &Params<F>, config: &OptimConfig, lr: f64) -> f64 {
        let grad_tensors = grads.named();
        let norm = grad_tensors
            .iter()
            .map(|(_, g)| match g.as_slice_memory_order() {
                Some(values) => sum_of_squares(values),
                None => g.iter().map(|&x| x.as_f64() * x.as_f64()).sum::<f64>(),
            })
            .sum::<f64>()
            .sqrt();
        let clip = if config.grad_clip > 0.0 && norm > config.grad_clip { config.grad_clip / norm } else { 1.0 };
        self.step += 1;
        let t = self.step as i32;
        let bias1 = 1.0 - config.beta1.powi(t);
        let bias2 = 1.0 - config.beta2.powi(t);
        let (b1, b2) = (F::lit(config.beta1), F::lit(config.beta2));
        let (one_b1, one_b2) = (F::lit(1.0 - config.beta1), F::lit(1.0 - config.beta2));
        let clip = F::lit(clip);
        let inv_sqrt_bias2 = F::lit(1.0 / bias2.sqrt());
        let eps = F::lit(config.eps);
        for (index, ((name, mut p), (_, g))) in params.named_mut().into_iter().zip(grad_tensors).enumerate() {
            let (decay, tensor_lr) = tensor_rates(&name, p.ndim(), config, lr);
            let (decay, step_size) = (F::lit(decay), F::lit(tensor_lr / bias1));
            Zip::from(&mut p).and(&g).and(&mut self.m[index]).and(&mut self.v[index]).par_for_each(|p, &g, m, v| {
                let g = g * clip;
                *m = b1 * *m + one_b1 * g;
                *v = b2 * *v + one_b2 * g * g;
                *p = *p * decay - step_size * *m / ((*v).sqrt() * inv_sqrt_bias2 + eps);
            });
        }
        norm
    }
}

/// Elements per partial sum of the gradient norm.
const NORM_CHUNK: usize = 1 << 14;

/// `Σ x²` in `f64`: chunks of [`NORM_CHUNK`] elements in parallel, each over eight lanes, then the
/// chunks' sums in order. The chunks depend on the length alone, so the norm does not depend on the
/// thread count. One running sum was a chain of dependent additions on one core: 3.5 ms of a
/// word-wt2 step (4.3 M embedding gradients), 8 % of everything outside the output layer.
fn sum_of_squares<F: Scalar>(values: &[F]) -> f64 {
    let partials: Vec<f64> = values
        .par_chunks(NORM_CHUNK)
        .map(|chunk| {
            let mut lanes = [0f64; 8];
            let blocks = chunk.chunks_exact(8);
            let rest = blocks.remainder();
            for block in blocks {
                for (lane, &x) in lanes.iter_mut().zip(block) {
                    *lane += x.as_f64() * x.as_f64();
                }
            }
            let mut total = lanes.iter().sum::<f64>();
            for &x in rest {
                total += x.as_f64() * x.as_f64();
            }
            total
        })
        .collect();
    partials.iter().sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gradient_norm_is_exact_to_rounding_and_the_same_on_any_thread_count() {
        // several chunks and a remainder in the last one
        let values: Vec<f32> = (0..3 * NORM_CHUNK + 13).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
        let exact: f64 = values.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
        let on = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("a thread pool");
            pool.install(|| sum_of_squares(&values))
        };
        let one = on(1);
        // each of the n additions rounds by at most 2⁻⁵³ of the running total
        assert!((one - exact).abs() <= exact * values.len() as f64 * f64::EPSILON, "{one} against {exact}");
        for threads in [2, 3] {
            assert_eq!(on(threads).to_bits(), one.to_bits(), "{threads} threads");
        }
        assert_eq!(sum_of_squares::<f32>(&[]), 0.0);
    }

    #[test]
    fn schedule_warms_up_then_decays_to_the_floor() {
        let c = OptimConfig { learning_rate: 1.0, min_lr_ratio: 0.1, warmup_steps: 10, ..OptimConfig::default() };
        assert!((c.learning_rate_at(0, 100) - 0.1).abs() < 1e-12);
        assert!((c.learning_rate_at(9, 100) - 1.0).abs() < 1e-12);
        assert!((c.learning_rate_at(10, 100) - 1.0).abs() < 1e-12);
        assert!((c.learning_rate_at(55, 100) - 0.55).abs() < 1e-12);
        assert!((c.learning_rate_at(100, 100) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn first_adam_step_moves_each_weight_by_the_learning_rate() {
        // With bias correction the first step is lr·g/|g| per coordinate, whatever the gradient's scale.
        let config = crate::engine::model::Config {
            vocab_size: 3,
            ctx_len: 2,
            d_model: 2,
            n_heads: 1,
            n_layers: 1,
            d_ff: 2,
            ln_eps: 1e-5,
            tied: true,
            gelu: crate::engine::Gelu::Tanh,
            recruited_blocks: Vec::new(),
            copy_paths: Vec::new(),
        };
        let mut params = Params::<f64>::zeros(&config);
        let mut grads = Params::<f64>::zeros(&config);
        grads.ln_f_bias[0] = 1e-3;
        grads.ln_f_bias[1] = -5.0;
        let oc = OptimConfig { weight_decay: 0.0, grad_clip: 0.0, eps: 0.0, ..OptimConfig::default() };
        let mut adam = AdamW::new(&params);
        adam.update(&mut params, &grads, &oc, 0.01);
        assert!((params.ln_f_bias[0] + 0.01).abs() < 1e-12);
        assert!((params.ln_f_bias[1] - 0.01).abs() < 1e-12);
    }

    #[test]
    fn moments_follow_a_recruited_block_and_keep_the_old_rows() {
        let config =
            crate::train::ModelShape { ctx_len: 2, d_model: 2, n_heads: 1, n_layers: 1, d_ff: 2, tied: true }.config(4);
        let mut model = crate::engine::Model::<f64>::init(config, 1).unwrap();
        let mut adam = AdamW::new(&model.params);
        let count = adam.m.len();
        model.add_block("a", &[1]).unwrap();
        adam.grow_to(&model.params);
        assert_eq!(adam.m.len(), count + 1);
        adam.m[count].fill(7.0);
        model.add_block("b", &[2]).unwrap();
        adam.grow_to(&model.params);
        assert_eq!(adam.m[count].shape(), &[2, 2]);
        assert_eq!(adam.m[count].sum(), 14.0);
    }

    #[test]
    fn moments_follow_copy_gates_when_a_first_block_lands_before_them() {
        let config =
            crate::train::ModelShape { ctx_len: 2, d_model: 2, n_heads: 1, n_layers: 1, d_ff: 2, tied: true }.config(4);
        let mut model = crate::engine::Model::<f64>::init(config, 1).unwrap();
        model.add_copy_path("first").unwrap();
        let mut adam = AdamW::new(&model.params);
        let gate = adam.m.len() - 2;
        adam.m[gate].fill(3.0);
        adam.v[gate + 1].fill(5.0);
        model.add_block("a", &[1]).unwrap();
        model.add_copy_path("second").unwrap();
        adam.grow_to(&model.params);
        let names: Vec<String> = model.params.named().into_iter().map(|(n, _)| n).collect();
        let at = |name: &str| names.iter().position(|n| n == name).unwrap();
        assert_eq!(adam.m.len(), names.len());
        assert_eq!(adam.m[at("block_emb")].sum(), 0.0);
        // the first gate's moments moved with it; the second gate's row starts at zero
        assert_eq!(adam.m[at("copy.weight")].as_slice().unwrap(), &[3.0, 3.0, 0.0, 0.0]);
        assert_eq!(adam.v[at("copy.bias")].as_slice().unwrap(), &[5.0, 0.0]);
        // and the optimizer moves the gates
        let mut grads = crate::engine::Params::<f64>::zeros(&model.config);
        grads.copy_gate_bias[1] = 1.0;
        let before = model.params.copy_gate_bias[1];
        let config = OptimConfig::default();
        adam.update(&mut model.params, &grads, &config, 0.01);
        // at the gates' own rate: Adam's first step is the rate times the gradient's sign
        assert!((model.params.copy_gate_bias[1] - before + 0.01 * config.copy_gate_lr_scale).abs() < 1e-9);
    }
}
