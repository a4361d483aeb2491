//! The whole model (METHOD §1): embeddings, `L` pre-LN blocks, final LayerNorm, tied or untied output.
//!
//! `Params` holds weights and, with the same fields, their gradients (`Grads`), as llm.c mirrors its
//! structs. `backward` calls the layer backwards in exact reverse order of `forward`.

use ndarray::{s, Array1, Array2, ArrayView2, ArrayViewD, ArrayViewMutD, Axis, CowArray, Ix2};
use serde::{Deserialize, Serialize};

use super::attention::{AttentionCache, AttentionHook};
use super::block_embedding::{block_embedding_backward, block_embedding_forward};
use super::copy::{gate_loss_and_grads, CopyCaches, GateLoss, GATE_BIAS_INIT};
use super::embedding::{embedding_backward, embedding_forward};
use super::layernorm::{layernorm_backward, layernorm_forward, LayerNormCache};
use super::loss::{output_loss, CopyInput, OutputLoss};
use super::Scalar;
use crate::rng::Rng;

mod config;
mod layer;
mod params;

pub use config::*;
pub use layer::LayerSplit;
pub use params::*;

pub type Grads<F> = Params<F>;

/// One transformer block's saved activations, as the backward pass needs them.
pub struct LayerCache<F: Scalar> {
    ln1: LayerNormCache<F>,
    /// `[N, d]` `LN₁(x)`.
    z1: Array2<F>,
    /// `[q | k | v]`, `[N, 3d]`, from one fused projection.
    qkv: Array2<F>,
    /// `[W_Q | W_K | W_V]`, `[d, 3d]`, as the forward pass used it, so the backward does not concatenate again.
    w_qkv: Array2<F>,
    /// `B·H` attention weight matrices `[T, T]`.
    pub attention: AttentionCache<F>,
    /// `[N, d]` concatenated head outputs, before `W_O`.
    y_att: Array2<F>,
    ln2: LayerNormCache<F>,
    /// `[N, d]` `LN₂(h)`.
    z2: Array2<F>,
    /// `[N, F]` the MLP's pre-activation.
    a1: Array2<F>,
    /// `[N, F]` `tanh u` inside the GELU of `a₁`, kept so that the backward need not recompute it.
    gelu_tanh: Array2<F>,
    /// `[N, F]` `GELU(a₁)`.
    g: Array2<F>,
    /// `[N, d]` the block's output `x'`, the residual stream after this layer (for representation metrics).
    pub output: Array2<F>,
}

/// The large arrays go back to the buffer pool for the next pass.
impl<F: Scalar> Drop for LayerCache<F> {
    fn drop(&mut self) {
        use std::mem::take;
        for array in [
            take(&mut self.ln1.normalized),
            take(&mut self.z1),
            take(&mut self.qkv),
            take(&mut self.y_att),
            take(&mut self.ln2.normalized),
            take(&mut self.z2),
            take(&mut self.a1),
            take(&mut self.gelu_tanh),
            take(&mut self.g),
            take(&mut self.output),
        ] {
            super::buffers::recycle(array);
        }
    }
}

/// Everything `forward` saved for `backward`.
pub struct ForwardCache<F: Scalar> {
    /// `[N]` the input ids.
    pub tokens: Vec<u32>,
    /// `[V]` [`Config::block_lookup`], empty without recruited blocks.
    block_lookup: Vec<u32>,
    /// `B`.
    pub batch: usize,
    /// `T`.
    pub seq_len: usize,
    /// One per layer, in forward order.
    pub layers: Vec<LayerCache<F>>,
    ln_f: LayerNormCache<F>,
    /// Final hidden states `LN_f(x^L)`, `[N, d]`.
    pub hidden: Array2<F>,
    /// Sum of the attention hooks' penalty terms.
    pub penalty: F,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Model<F> {
    pub config: Config,
    pub params: Params<F>,
}

impl<F: Scalar> Model<F> {
    /// GPT-2 initialisation: weights `N(0, 0.02)`, the residual output projections (`attn.wo`,
    /// `mlp.w2`) scaled by `1/√(2L)` so the residual stream's variance does not grow with depth; biases 0;
    /// LayerNorm gains 1. Copy gates start shut, `u = 0`, `b = b₀` ([`GATE_BIAS_INIT`]).
    pub fn init(config: Config, seed: u64) -> crate::Result<Self> {
        config.validate()?;
        let mut params = Params::<F>::zeros(&config);
        let residual_scale = 1.0 / (2.0 * config.n_layers as f64).sqrt();
        for (index, (name, mut tensor)) in params.named_mut().into_iter().enumerate() {
            let mut rng = Rng::derive(seed, 0x1417, index as u64);
            let is_gain = name.ends_with("ln1.weight") || name.ends_with("ln2.weight") || name == "ln_f.weight";
            let is_matrix = tensor.ndim() == 2;
            if name == "copy.weight" {
                tensor.fill(F::zero());
            } else if name == "copy.bias" {
                tensor.fill(F::lit(GATE_BIAS_INIT));
            } else if is_gain {
                tensor.fill(F::one());
            } else if is_matrix {
                let std =
                    if name.ends_with("attn.wo") || name.ends_with("mlp.w2") { 0.02 * residual_scale } else { 0.02 };
                tensor.mapv_inplace(|_| F::lit(std * rng.normal()));
            }
        }
        Ok(Model { config, params })
    }

    /// The output projection as `[d, V]`: the token embedding transposed when tied.
    pub fn output_weight(&self) -> ArrayView2<'_, F> {
        match &self.params.head {
            Some(head) => head.view(),
            None => self.params.tok_emb.t(),
        }
    }

    /// Runs the network up to the final LayerNorm. `tokens [N]` holds `batch = B` sequences of
    /// `seq_len = T ≤ ctx_len` ids, batch-major. Returns the [`ForwardCache`]: `hidden [N, d]`, every
    /// layer's activations for [`backward`](Self::backward), and the hooks' penalty (a scalar). The output
    /// projection is left to [`output_loss`](Self::output_loss), which never forms `[N, V]` logits whole.
    pub fn forward(
        &self,
        tokens: &[u32],
        batch: usize,
        seq_len: usize,
        hook: &dyn AttentionHook<F>,
    ) -> ForwardCache<F> {
        self.forward_keeping(tokens, batch, seq_len, hook, true)
    }

    /// [`forward`](Self::forward) for evaluation: the same `hidden` and penalty, bit for bit, but no
    /// layer's activations are kept (their buffers are reused while the pass runs), so the cache
    /// serves [`output_loss`](Self::output_loss) and not [`backward`](Self::backward).
    pub fn forward_inference(
        &self,
        tokens: &[u32],
        batch: usize,
        seq_len: usize,
        hook: &dyn AttentionHook<F>,
    ) -> ForwardCache<F> {
        self.forward_keeping(tokens, batch, seq_len, hook, false)
    }

    fn forward_keeping(
        &self,
        tokens: &[u32],
        batch: usize,
        seq_len: usize,
        hook: &dyn AttentionHook<F>,
        keep_layers: bool,
    ) -> ForwardCache<F> {
        debug_assert_eq!(tokens.len(), batch * seq_len);
        debug_assert!(seq_len <= self.config.ctx_len);
        let c = &self.config;
        let p = &self.params;
        let eps = F::lit(c.ln_eps);
        // [N, d]; the block lookup is built once per pass and kept for the backward
        let mut embedded = embedding_forward(p.tok_emb.view(), p.pos_emb.view(), tokens, seq_len);
        let block_lookup = if c.recruited_blocks.is_empty() { Vec::new() } else { c.block_lookup() };
        if !block_lookup.is_empty() {
            block_embedding_forward(embedded.view_mut(), p.block_emb.view(), tokens, &block_lookup);
        }
        let mut layers: Vec<LayerCache<F>> = Vec::with_capacity(c.n_layers);
        let mut penalty = F::zero();
        // without kept layers, the residual stream [N, d] between blocks
        let mut stream: Option<Array2<F>> = None;
        for (layer, w) in p.layers.iter().enumerate() {
            // the residual stream [N, d]: the previous block's output, kept in its cache rather than copied
            let x = match &stream {
                Some(x) => x,
                None => layers.last().map_or(&embedded, |previous| &previous.output),
            };
            let split = LayerSplit::new(batch, seq_len, c.n_heads, layer);
            if keep_layers {
                let (cache, layer_penalty) = layer::layer_forward(x.view(), w, eps, split, hook);
                penalty += layer_penalty;
                layers.push(cache);
            } else {
                let (output, layer_penalty) = layer::layer_forward_output(x.view(), w, eps, split, hook);
                penalty += layer_penalty;
                if let Some(previous) = stream.replace(output) {
                    super::buffers::recycle(previous);
                }
            }
        }
        let x = match &stream {
            Some(x) => x,
            None => layers.last().map_or(&embedded, |last| &last.output),
        };
        let (hidden, ln_f) = layernorm_forward(x.view(), p.ln_f_weight.view(), p.ln_f_bias.view(), eps);
        if let Some(x) = stream {
            super::buffers::recycle(x);
        }
        ForwardCache { tokens: tokens.to_vec(), block_lookup, batch, seq_len, layers, ln_f, hidden, penalty }
    }

    /// Cross-entropy of `targets [N]` given the cached forward pass, with or without its gradients, and with
    /// the model's copy paths mixed in when given their caches for this batch (`C` rules over `N` rows)
    /// and the dial `λ`. Returns `nll [N]`, and with gradients `d_hidden [N, d]` and `d_weight_t [V, d]`
    /// (the inputs of [`backward`](Self::backward)) plus the gates' `[C, d]`, `[C]`.
    pub fn output_loss(
        &self,
        cache: &ForwardCache<F>,
        targets: &[u32],
        with_grad: bool,
        copy: Option<(&CopyCaches, f64)>,
    ) -> OutputLoss<F> {
        output_loss(cache.hidden.view(), self.output_weight(), targets, with_grad, copy.map(|c| self.copy_input(c)))
    }

    fn copy_input<'a>(&'a self, (caches, lambda): (&'a CopyCaches, f64)) -> CopyInput<'a, F> {
        assert_eq!(caches.n_rules(), self.config.copy_paths.len(), "one copy cache per copy path of the model");
        CopyInput {
            caches,
            gate_weight: self.params.copy_gate_weight.view(),
            gate_bias: self.params.copy_gate_bias.view(),
            lambda,
        }
    }

    /// The copy paths' loss and their gates' gradients alone, for trials that train only gates on a frozen
    /// model (METHOD §7): `hidden [N, d]` is [`ForwardCache::hidden`] and `log_q [N]` is `ln q(y)`, minus
    /// the softmax's NLL ([`OutputLoss::nll`] without copy paths, or [`super::loss::CopyLoss::softmax_nll`]).
    /// Neither depends on the gates, so a trial computes them once per batch.
    pub fn copy_gate_loss_and_grads(
        &self,
        hidden: ArrayView2<F>,
        log_q: &[F],
        targets: &[u32],
        caches: &CopyCaches,
        lambda: f64,
    ) -> GateLoss<F> {
        let input = self.copy_input((caches, lambda));
        gate_loss_and_grads(hidden, log_q, targets, caches, input.gate_weight, input.gate_bias, lambda)
    }

    /// Appends a copy path with a shut gate (`u = 0`, `b = b₀`), after the existing ones.
    pub fn add_copy_path(&mut self, name: &str) -> crate::Result<()> {
        if name.is_empty() || self.config.copy_paths.iter().any(|n| n == name) {
            return Err(crate::Error::invalid("recruitment", format!("copy path `{name}` is empty or exists")));
        }
        self.config.copy_paths.push(name.to_string());
        let (c, d) = (self.config.copy_paths.len(), self.config.d_model);
        let mut weight = Array2::zeros((c, d));
        weight.slice_mut(s![..c - 1, ..]).assign(&self.params.copy_gate_weight);
        let mut bias = Array1::from_elem(c, F::lit(GATE_BIAS_INIT));
        bias.slice_mut(s![..c - 1]).assign(&self.params.copy_gate_bias);
        self.params.copy_gate_weight = weight;
        self.params.copy_gate_bias = bias;
        Ok(())
    }

    /// Gradients of `mean CE + penalty` given the loss gradients at the output: `d_hidden [N, d]` and
    /// `d_output_weight_t [V, d]` from [`output_loss`](Self::output_loss), the cache of the same
    /// [`forward`](Self::forward) and the same hook. Returns fresh [`Grads`], shaped like [`Params`]:
    /// `head [d, V]` when untied (`d_output_weight_t` transposed), otherwise `tok_emb [V, d]` starts as
    /// `d_output_weight_t` itself (owned, it is taken, not copied: a word model's is 17 MB);
    /// every layer's weights; `block_emb [K, d]`. The copy gates' `[C, d]`, `[C]` are left zero, since
    /// [`output_loss`](Self::output_loss) already returns them.
    pub fn backward(
        &self,
        cache: &ForwardCache<F>,
        d_hidden: ArrayView2<F>,
        d_output_weight_t: CowArray<F, Ix2>,
        hook: &dyn AttentionHook<F>,
    ) -> Grads<F> {
        let c = &self.config;
        let p = &self.params;
        assert_eq!(cache.layers.len(), c.n_layers, "backward needs a forward pass that kept its layers");
        let mut grads = if c.tied {
            // (which checks that ∂Wᵀ is [V, d])
            Params::<F>::zeros_with_tok_emb(c, d_output_weight_t.into_owned())
        } else {
            let mut grads = Params::<F>::zeros(c);
            if let Some(d_head) = grads.head.as_mut() {
                d_head.assign(&d_output_weight_t.t());
            }
            grads
        };
        let mut dx = layernorm_backward(
            d_hidden,
            &cache.ln_f,
            p.ln_f_weight.view(),
            grads.ln_f_weight.view_mut(),
            grads.ln_f_bias.view_mut(),
        );
        for (layer, (w, lc)) in p.layers.iter().zip(&cache.layers).enumerate().rev() {
            let split = LayerSplit::new(cache.batch, cache.seq_len, c.n_heads, layer);
            let below = layer::layer_backward(dx.view(), lc, w, &mut grads.layers[layer], split, hook);
            super::buffers::recycle(std::mem::replace(&mut dx, below));
        }
        embedding_backward(dx.view(), &cache.tokens, cache.seq_len, grads.tok_emb.view_mut(), grads.pos_emb.view_mut());
        if !cache.block_lookup.is_empty() {
            block_embedding_backward(dx.view(), &cache.tokens, &cache.block_lookup, grads.block_emb.view_mut());
        }
        grads
    }

    /// Adds a recruited block with a zero embedding: the model computes exactly what it computed before
    /// until training moves the new row. Members already in a recruited block are not taken twice.
    pub fn add_block(&mut self, name: &str, members: &[u32]) -> crate::Result<()> {
        let lookup = self.config.block_lookup();
        let mut members: Vec<u32> =
            members.iter().copied().filter(|&m| lookup.get(m as usize).is_some_and(|&k| k == 0)).collect();
        members.sort_unstable();
        members.dedup();
        if members.is_empty() {
            return Err(crate::Error::invalid("recruitment", format!("block `{name}` has no free member")));
        }
        self.config.recruited_blocks.push(RecruitedBlock { name: name.to_string(), members });
        let mut grown = Array2::zeros((self.config.recruited_blocks.len(), self.config.d_model));
        grown.slice_mut(s![..self.params.block_emb.nrows(), ..]).assign(&self.params.block_emb);
        self.params.block_emb = grown;
        Ok(())
    }

    /// One training evaluation on `tokens [N]` and `targets [N]` (`batch = B`, `seq_len = T`): returns
    /// `(mean CE, penalty, gradients of their sum)`, the CE with the copy paths mixed in when given the
    /// batch's caches and `λ`; the gradients are shaped like [`Params`], copy gates included.
    pub fn loss_and_grads(
        &self,
        tokens: &[u32],
        targets: &[u32],
        batch: usize,
        seq_len: usize,
        hook: &dyn AttentionHook<F>,
        copy: Option<(&CopyCaches, f64)>,
    ) -> (F, F, Grads<F>) {
        self.loss_and_grads_marked(tokens, targets, batch, seq_len, hook, copy, &mut || {})
    }

    /// [`loss_and_grads`](Self::loss_and_grads), calling `mark` after the forward pass and again after
    /// the output layer's loss and gradients: `ailla bench` times the three parts of the same work.
    #[allow(clippy::too_many_arguments)]
    pub fn loss_and_grads_marked(
        &self,
        tokens: &[u32],
        targets: &[u32],
        batch: usize,
        seq_len: usize,
        hook: &dyn AttentionHook<F>,
        copy: Option<(&CopyCaches, f64)>,
        mark: &mut dyn FnMut(),
    ) -> (F, F, Grads<F>) {
        let cache = self.forward(tokens, batch, seq_len, hook);
        mark();
        let loss = self.output_loss(&cache, targets, true, copy);
        let (d_hidden, d_weight) = match (loss.d_hidden, loss.d_weight_t) {
            (Some(dh), Some(dw)) => (dh, dw),
            _ => unreachable!("output_loss returns gradients when asked"),
        };
        mark();
        let mut grads = self.backward(&cache, d_hidden.view(), d_weight.into(), hook);
        if let Some((Some(d_u), Some(d_b))) = loss.copy.map(|c| (c.d_gate_weight, c.d_gate_bias)) {
            grads.copy_gate_weight = d_u;
            grads.copy_gate_bias = d_b;
        }
        (loss.mean_nll, cache.penalty, grads)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::engine::attention::tests::TestHook;
    use crate::engine::attention::NoHook;
    use crate::engine::gradcheck::{worst_discrepancy, TOLERANCE};

    pub(crate) fn tiny_config(tied: bool) -> Config {
        Config {
            vocab_size: 11,
            ctx_len: 6,
            d_model: 8,
            n_heads: 2,
            n_layers: 2,
            d_ff: 12,
            ln_eps: 1e-5,
            tied,
            gelu: Gelu::Tanh,
            recruited_blocks: Vec::new(),
            copy_paths: Vec::new(),
        }
    }

    /// Perturbs every parameter tensor of a small model and compares with the analytic gradient.
    /// Weights are redrawn larger than the 0.02 initialisation so that every path carries signal (at 0.02
    /// the attention is nearly uniform and a missing attention term would hide under the tolerance), but
    /// not so large that softmaxes saturate and gradients vanish to rounding noise.
    fn model_gradient_errors(tied: bool, hook: &dyn AttentionHook<f64>, copy: Option<f64>) -> Vec<(String, f64)> {
        let mut config = tiny_config(tied);
        // two recruited blocks, so that the block embedding is checked with the rest
        config.recruited_blocks = vec![
            RecruitedBlock { name: "a".into(), members: vec![2, 9] },
            RecruitedBlock { name: "b".into(), members: vec![5] },
        ];
        if copy.is_some() {
            config.copy_paths = vec!["all".into(), "previous".into()];
        }
        let mut model = Model::<f64>::init(config, 3).unwrap();
        let mut rng = Rng::new(11);
        for (name, mut t) in model.params.named_mut() {
            let is_gain = name.ends_with("weight") && t.ndim() == 1;
            let (offset, std) = match (t.ndim(), is_gain) {
                (2, _) => (0.0, 0.5),
                (_, true) => (1.0, 0.2),
                _ => (0.0, 0.2),
            };
            t.mapv_inplace(|_| offset + std * rng.normal());
        }
        let (batch, seq_len) = (2, 5);
        let tokens: Vec<u32> = (0..batch * seq_len).map(|i| ((i * 7 + 2) % 11) as u32).collect();
        let mut targets: Vec<u32> = (0..batch * seq_len).map(|i| ((i * 5 + 1) % 11) as u32).collect();
        let caches = copy_caches(&tokens, seq_len);
        if copy.is_some() {
            // targets that the caches hold at some rows and miss at others (row 4, 8)
            targets = vec![1, 2, 9, 5, 10, 4, 4, 0, 8, 7];
        }
        let copy = copy.map(|lambda| (&caches, lambda));
        let (_, _, grads) = model.loss_and_grads(&tokens, &targets, batch, seq_len, hook, copy);
        let analytic: Vec<(String, ndarray::ArrayD<f64>)> =
            grads.named().into_iter().map(|(n, g)| (n, g.to_owned())).collect();
        let mut errors = Vec::new();
        for (index, (name, grad)) in analytic.iter().enumerate() {
            let mut probe_model = model.clone();
            let loss_of = |m: &Model<f64>| {
                let cache = m.forward(&tokens, batch, seq_len, hook);
                m.output_loss(&cache, &targets, false, copy).mean_nll + cache.penalty
            };
            // the closure gets the perturbed tensor; write it into a copy of the model and evaluate
            let mut tensor = model.params.named()[index].1.to_owned();
            let worst = worst_discrepancy(&mut tensor.view_mut(), grad, 1, |perturbed| {
                probe_model.params.named_mut()[index].1.assign(perturbed);
                loss_of(&probe_model)
            });
            errors.push((name.clone(), worst.relative_error));
        }
        errors
    }

    /// Two copy rules over sequences of `seq_len`: every position of the sequence up to the row, and the
    /// previous position; neither applies at a sequence's first row.
    fn copy_caches(tokens: &[u32], seq_len: usize) -> CopyCaches {
        let n = tokens.len();
        let (mut all, mut previous) = (vec![Vec::new(); n], vec![Vec::new(); n]);
        for i in (0..n).filter(|i| i % seq_len != 0) {
            all[i] = ((i - i % seq_len) as u32..=i as u32).collect();
            previous[i] = vec![i as u32 - 1];
        }
        CopyCaches::new(tokens, vec![1.0, 0.6], &[all, previous])
    }

    #[test]
    fn whole_model_gradient_matches_finite_differences_tied() {
        for (name, error) in model_gradient_errors(true, &NoHook, None) {
            assert!(error < TOLERANCE, "{name}: relative error {error:.3e}");
        }
    }

    #[test]
    fn whole_model_gradient_matches_finite_differences_untied_with_hook() {
        for (name, error) in model_gradient_errors(false, &TestHook { temperature: 0.8 }, None) {
            assert!(error < TOLERANCE, "{name}: relative error {error:.3e}");
        }
    }

    #[test]
    fn whole_model_gradient_matches_finite_differences_with_two_copy_paths() {
        let errors = model_gradient_errors(true, &TestHook { temperature: 0.8 }, Some(0.7));
        assert!(errors.iter().any(|(name, _)| name == "copy.weight") && errors.iter().any(|(n, _)| n == "copy.bias"));
        for (name, error) in errors {
            assert!(error < TOLERANCE, "{name}: relative error {error:.3e}");
        }
    }

    /// Random weights everywhere, the copy gates open, in `f32` as training runs.
    fn model_with_copy_paths(copy_paths: Vec<String>) -> Model<f32> {
        let mut config = tiny_config(false);
        config.copy_paths = copy_paths;
        let mut model = Model::<f32>::init(config, 4).unwrap();
        let mut rng = Rng::new(12);
        for (_, mut t) in model.params.named_mut() {
            t.mapv_inplace(|v| v + 0.3 * rng.normal() as f32);
        }
        model
    }

    #[test]
    fn dial_at_zero_is_bit_identical_to_the_model_without_copy_paths() {
        let with = model_with_copy_paths(vec!["all".into(), "previous".into()]);
        let mut without = Model::<f32>::init(tiny_config(false), 4).unwrap();
        for ((name, mut dst), (other, src)) in without.params.named_mut().into_iter().zip(with.params.named()) {
            assert_eq!(name, other);
            dst.assign(&src);
        }
        let (batch, seq_len) = (2, 5);
        let tokens: Vec<u32> = (0..batch * seq_len).map(|i| ((i * 7 + 2) % 11) as u32).collect();
        let targets = vec![1, 2, 9, 5, 10, 4, 4, 0, 8, 7];
        let caches = copy_caches(&tokens, seq_len);
        let hook = NoHook;
        let (loss, penalty, grads) =
            with.loss_and_grads(&tokens, &targets, batch, seq_len, &hook, Some((&caches, 0.0)));
        let (plain_loss, plain_penalty, plain) = without.loss_and_grads(&tokens, &targets, batch, seq_len, &hook, None);
        assert_eq!((loss.to_bits(), penalty.to_bits()), (plain_loss.to_bits(), plain_penalty.to_bits()));
        let plain: Vec<_> = plain.named().into_iter().collect();
        let grads = grads.named();
        assert_eq!(grads.len(), plain.len() + 2);
        for ((name, g), (_, p)) in grads.iter().zip(&plain) {
            let same = g.iter().zip(p.iter()).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{name} differs at λ = 0");
        }
        for (name, g) in &grads[plain.len()..] {
            assert!(g.iter().all(|&v| v == 0.0), "{name} moves at λ = 0");
        }
        // per-row losses and the accuracy too
        let cache = with.forward(&tokens, batch, seq_len, &hook);
        let at_zero = with.output_loss(&cache, &targets, false, Some((&caches, 0.0)));
        let reference = without.output_loss(&without.forward(&tokens, batch, seq_len, &hook), &targets, false, None);
        assert_eq!(
            at_zero.nll.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            reference.nll.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        assert_eq!(at_zero.correct, reference.correct);
        // and at λ > 0 the paths act
        let on = with.output_loss(&cache, &targets, false, Some((&caches, 1.0)));
        assert!(on.mean_nll != reference.mean_nll);
    }

    #[test]
    fn copy_paths_start_shut_and_are_named_after_everything_else() {
        let mut model = Model::<f64>::init(tiny_config(true), 1).unwrap();
        let tokens: Vec<u32> = (0..6).map(|i| (i * 3 % 11) as u32).collect();
        let targets: Vec<u32> = (0..6).map(|i| (i * 5 % 11) as u32).collect();
        let count = model.params.named().len();
        let cache = model.forward(&tokens, 1, 6, &NoHook);
        let plain = model.output_loss(&cache, &targets, false, None).mean_nll;
        model.add_copy_path("first").unwrap();
        assert!(model.add_copy_path("first").is_err());
        let named = model.params.named();
        assert_eq!(named.len(), count + 2);
        assert_eq!(named[count].0, "copy.weight");
        assert_eq!(named[count + 1].0, "copy.bias");
        assert_eq!(named[count].1.shape(), &[1, 8]);
        assert!(model.params.copy_gate_weight.iter().all(|&v| v == 0.0));
        assert_eq!(model.params.copy_gate_bias[0], GATE_BIAS_INIT);
        // a shut gate changes the loss by a few thousandths of a nat: −ln(1 − w) ≈ w ≈ 0.25 % where the
        // cache misses, ln(1 + w(κ/q − 1)) where it hits
        let all: Vec<Vec<u32>> = (0..6u32).map(|i| (0..=i).collect()).collect();
        let caches = CopyCaches::new(&tokens, vec![1.0], &[all]);
        let shut = model.output_loss(&cache, &targets, false, Some((&caches, 1.0))).mean_nll;
        assert!(shut != plain && (shut - plain).abs() < 1e-2, "{shut} {plain}");
        // a second path keeps the first gate and appends a row
        model.params.copy_gate_weight.fill(0.5);
        model.add_copy_path("second").unwrap();
        assert_eq!(model.config.copy_paths, vec!["first".to_string(), "second".to_string()]);
        assert_eq!(model.params.copy_gate_weight.row(0).to_vec(), vec![0.5; 8]);
        assert_eq!(model.params.copy_gate_weight.row(1).to_vec(), vec![0.0; 8]);
        assert_eq!(model.params.copy_gate_bias.to_vec(), vec![GATE_BIAS_INIT; 2]);
        // init gives the same shut gates
        let mut config = tiny_config(true);
        config.copy_paths = vec!["x".into()];
        let fresh = Model::<f64>::init(config, 1).unwrap();
        assert!(fresh.params.copy_gate_weight.iter().all(|&v| v == 0.0));
        assert_eq!(fresh.params.copy_gate_bias[0], GATE_BIAS_INIT);
        assert_eq!(fresh.params.tok_emb, Model::<f64>::init(tiny_config(true), 1).unwrap().params.tok_emb);
    }

    #[test]
    fn gate_only_gradients_equal_the_whole_model_s() {
        let model = model_with_copy_paths(vec!["all".into(), "previous".into()]);
        let (batch, seq_len) = (2, 5);
        let tokens: Vec<u32> = (0..batch * seq_len).map(|i| ((i * 7 + 2) % 11) as u32).collect();
        let targets = vec![1, 2, 9, 5, 10, 4, 4, 0, 8, 7];
        let caches = copy_caches(&tokens, seq_len);
        let (loss, _, grads) = model.loss_and_grads(&tokens, &targets, batch, seq_len, &NoHook, Some((&caches, 0.9)));
        // what a trial computes once per batch: the hidden states and ln q(y), neither depending on the gates
        let cache = model.forward(&tokens, batch, seq_len, &NoHook);
        let log_q: Vec<f32> = model.output_loss(&cache, &targets, false, None).nll.iter().map(|v| -v).collect();
        let gates = model.copy_gate_loss_and_grads(cache.hidden.view(), &log_q, &targets, &caches, 0.9);
        assert!((gates.mean_nll - loss).abs() < 1e-6, "{} {loss}", gates.mean_nll);
        let close = |a: &ndarray::ArrayViewD<f32>, b: &ndarray::ArrayViewD<f32>| {
            a.iter().zip(b.iter()).all(|(x, y)| (x - y).abs() <= 1e-6 * (1.0 + x.abs()))
        };
        assert!(close(&gates.d_weight.view().into_dyn(), &grads.copy_gate_weight.view().into_dyn()));
        assert!(close(&gates.d_bias.view().into_dyn(), &grads.copy_gate_bias.view().into_dyn()));
        assert!(grads.copy_gate_bias.iter().any(|&v| v != 0.0));
    }

    #[test]
    fn named_tensors_follow_the_checkpoint_layout() {
        let model = Model::<f32>::init(tiny_config(false), 1).unwrap();
        let named = model.params.named();
        let shape_of = |n: &str| named.iter().find(|(name, _)| name == n).map(|(_, t)| t.shape().to_vec());
        assert_eq!(shape_of("tok_emb"), Some(vec![11, 8]));
        assert_eq!(shape_of("pos_emb"), Some(vec![6, 8]));
        assert_eq!(shape_of("layers.1.attn.wq"), Some(vec![8, 8]));
        assert_eq!(shape_of("layers.0.attn.wo.bias"), Some(vec![8]));
        assert_eq!(shape_of("layers.0.mlp.w1"), Some(vec![8, 12]));
        assert_eq!(shape_of("layers.0.mlp.w2"), Some(vec![12, 8]));
        assert_eq!(shape_of("head"), Some(vec![8, 11]));
        assert_eq!(named.len(), 2 + 2 * 16 + 2 + 1);
        // no copy paths, no copy tensors (and no `copy_paths` key in the config's JSON)
        assert!(named.iter().all(|(name, _)| !name.starts_with("copy")));
        assert!(!serde_json::to_string(&model.config).unwrap().contains("copy_paths"));
    }

    #[test]
    fn adding_a_block_appends_a_zero_row_and_changes_nothing_computed() {
        let mut model = Model::<f64>::init(tiny_config(true), 1).unwrap();
        let tokens: Vec<u32> = (0..6).map(|i| (i * 3 % 11) as u32).collect();
        let before = model.forward(&tokens, 1, 6, &NoHook).hidden;
        model.add_block("first", &[3, 6, 3]).unwrap();
        assert_eq!(
            model.params.named().last().map(|(n, t)| (n.clone(), t.shape().to_vec())),
            Some(("block_emb".into(), vec![1, 8]))
        );
        assert_eq!(model.config.recruited_blocks[0].members, vec![3, 6]);
        assert_eq!(model.forward(&tokens, 1, 6, &NoHook).hidden, before);
        // a second block cannot take members of the first
        model.add_block("second", &[6, 7]).unwrap();
        assert_eq!(model.config.recruited_blocks[1].members, vec![7]);
        assert!(model.add_block("third", &[3]).is_err());
    }
}
