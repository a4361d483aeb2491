//! The device-resident training step (issue 24), llm.c's design: weights, gradients, AdamW's moments
//! and every activation live on the device; each product is one cuBLAS call ([`Gemm`]) and the rest are
//! the kernels of [`super::kernels`]; only the tokens go in and the per-row losses come out.
//!
//! The step computes what [`Model::loss_and_grads`] and [`AdamW::update`] compute, in the same order of
//! layers and with the same formulas, on any [`Device`]: the plain model, and with a batch's rules
//! ([`BatchRules`]) the locality dial, the copy paths and recruited blocks' embeddings ([`rules`]).
//!
//! Parameters, gradients and both moments are each one buffer holding the tensors of
//! [`Params::named`] back to back, so the gradient norm is one reduction and the host copy of a tensor
//! is one slice.

mod output;
mod rules;

pub use super::batch_rules::BatchRules;
use super::gemm::{RowMajorProduct, RowStrides};
use super::layout::{regions, Regions, Slot};
use super::ops::{Device, DeviceResult, Floats, Gemm, Ids, Launch};
pub use super::resident::ResidentStep;
use crate::engine::model::{Model, Params};
use crate::engine::optim::{tensor_rates, AdamW, OptimConfig};

/// Logit rows per output-loss chunk: at most this many logits `[rows, V]` exist at once (256 MiB).
const LOGIT_ELEMENTS: usize = 1 << 26;

/// What one block keeps for its backward pass.
#[derive(Debug, Clone, Copy)]
struct LayerActivations {
    ln1_normalized: Floats,
    ln1_rstd: Floats,
    z1: Floats,
    /// `[N, 3d]`, `[q | k | v]`.
    qkv: Floats,
    /// `[B·H, T, T]` attention weights.
    att: Floats,
    y_att: Floats,
    h: Floats,
    ln2_normalized: Floats,
    ln2_rstd: Floats,
    z2: Floats,
    a1: Floats,
    g: Floats,
    output: Floats,
}

/// Gradients flowing down the network, reused by every layer.
#[derive(Debug, Clone, Copy)]
struct Scratch {
    /// `∂J/∂x` of the block being differentiated, and of the one below it (swapped per layer).
    dx: [Floats; 2],
    dh: Floats,
    /// A LayerNorm backward's output before the residual add.
    d_norm: Floats,
    d_z: Floats,
    d_y_att: Floats,
    d_qkv: Floats,
    d_att: Floats,
    d_g: Floats,
    d_a1: Floats,
    d_hidden: Floats,
}

/// The loss of one batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchLoss {
    /// Mean cross-entropy of the batch, in nats (with the copy paths' mixture where they act).
    pub cross_entropy: f64,
    /// The dial's `λ·ρ·Ω`, 0 without rules.
    pub penalty: f64,
}

/// What one training step reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepOutcome {
    pub loss: BatchLoss,
    /// The gradient's global norm before clipping.
    pub grad_norm: f64,
}

/// A model resident on a device, with its optimizer state and the activations of one batch shape.
pub struct DeviceModel<D: Device> {
    device: D,
    model: Model<f32>,
    batch: usize,
    seq_len: usize,
    slots: Vec<Slot>,
    params: Floats,
    grads: Floats,
    moment1: Floats,
    moment2: Floats,
    p: Regions,
    g: Regions,
    step: usize,
    tokens: Ids,
    targets: Ids,
    embedded: Floats,
    layers: Vec<LayerActivations>,
    ln_f_normalized: Floats,
    ln_f_rstd: Floats,
    hidden: Floats,
    logits: Floats,
    logit_rows: usize,
    row_loss: Floats,
    row_probability: Floats,
    /// Without copy paths the mixture's `w₀` is 1 and the copy mass 0 on every row.
    ones: Floats,
    zeros: Floats,
    scratch: Scratch,
    rules: rules::RuleState,
}

/// Why a model cannot take the device step, or `None` when it can.
pub fn unsupported(model: &Model<f32>) -> Option<String> {
    let c = &model.config;
    if c.n_heads == 0 || !c.d_model.is_multiple_of(c.n_heads) {
        return Some(format!("d_model {} is not a multiple of n_heads {}", c.d_model, c.n_heads));
    }
    None
}

impl<D: Device> DeviceModel<D> {
    /// Copies `model` to `device` with zero optimizer state and allocates the activations of batches of
    /// `batch` sequences of `seq_len` tokens.
    pub fn new(mut device: D, model: &Model<f32>, batch: usize, seq_len: usize) -> DeviceResult<Self> {
        if let Some(reason) = unsupported(model) {
            return Err(reason);
        }
        let c = &model.config;
        if batch == 0 || seq_len == 0 || seq_len > c.ctx_len {
            return Err(format!("a batch of {batch} × {seq_len} tokens (the context is {})", c.ctx_len));
        }
        let mut slots = Vec::new();
        let mut total = 0;
        let mut host = Vec::new();
        for (name, tensor) in model.params.named() {
            slots.push(Slot { name, shape: tensor.shape().to_vec(), offset: total, len: tensor.len() });
            total += tensor.len();
            host.extend(tensor.iter().copied());
        }
        let params = device.alloc(total)?;
        device.upload(params, &host)?;
        let (grads, moment1, moment2) = (device.alloc(total)?, device.alloc(total)?, device.alloc(total)?);
        let p = regions(&slots, params, model)?;
        let g = regions(&slots, grads, model)?;
        let (n, d, ff, heads, vocab) = (batch * seq_len, c.d_model, c.d_ff, c.n_heads, c.vocab_size);
        let mut layers = Vec::with_capacity(c.n_layers);
        for _ in 0..c.n_layers {
            layers.push(LayerActivations {
                ln1_normalized: device.alloc(n * d)?,
                ln1_rstd: device.alloc(n)?,
                z1: device.alloc(n * d)?,
                qkv: device.alloc(n * 3 * d)?,
                att: device.alloc(batch * heads * seq_len * seq_len)?,
                y_att: device.alloc(n * d)?,
                h: device.alloc(n * d)?,
                ln2_normalized: device.alloc(n * d)?,
                ln2_rstd: device.alloc(n)?,
                z2: device.alloc(n * d)?,
                a1: device.alloc(n * ff)?,
                g: device.alloc(n * ff)?,
                output: device.alloc(n * d)?,
            });
        }
        let logit_rows = (LOGIT_ELEMENTS / vocab.max(1)).clamp(1, n);
        let scratch = Scratch {
            dx: [device.alloc(n * d)?, device.alloc(n * d)?],
            dh: device.alloc(n * d)?,
            d_norm: device.alloc(n * d)?,
            d_z: device.alloc(n * d)?,
            d_y_att: device.alloc(n * d)?,
            d_qkv: device.alloc(n * 3 * d)?,
            d_att: device.alloc(batch * heads * seq_len * seq_len)?,
            d_g: device.alloc(n * ff)?,
            d_a1: device.alloc(n * ff)?,
            d_hidden: device.alloc(n * d)?,
        };
        let ones = device.alloc(n)?;
        device.upload(ones, &vec![1.0; n])?;
        let rules = rules::RuleState::new(&mut device, model, n)?;
        Ok(DeviceModel {
            rules,
            tokens: device.alloc_ids(n)?,
            targets: device.alloc_ids(n)?,
            embedded: device.alloc(n * d)?,
            ln_f_normalized: device.alloc(n * d)?,
            ln_f_rstd: device.alloc(n)?,
            hidden: device.alloc(n * d)?,
            logits: device.alloc(logit_rows * vocab)?,
            logit_rows,
            row_loss: device.alloc(n)?,
            row_probability: device.alloc(n)?,
            ones,
            zeros: device.alloc(n)?,
            scratch,
            layers,
            model: model.clone(),
            batch,
            seq_len,
            slots,
            params,
            grads,
            moment1,
            moment2,
            p,
            g,
            step: 0,
            device,
        })
    }

    pub fn device(&self) -> &D {
        &self.device
    }

    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// One step of training on `tokens [N]` → `targets [N]` under the batch's rules, if any: forward,
    /// loss, backward, AdamW at `lr`.
    pub fn train_step(
        &mut self,
        tokens: &[u32],
        targets: &[u32],
        rules: Option<&BatchRules>,
        optim: &OptimConfig,
        lr: f64,
    ) -> DeviceResult<StepOutcome> {
        let loss = self.loss_and_grads(tokens, targets, rules)?;
        let grad_norm = self.update(optim, lr)?;
        Ok(StepOutcome { loss, grad_norm })
    }

    /// The loss of `targets` given `tokens` under the batch's rules, without gradients.
    pub fn loss(&mut self, tokens: &[u32], targets: &[u32], rules: Option<&BatchRules>) -> DeviceResult<BatchLoss> {
        self.load_batch(tokens, targets, rules)?;
        self.forward()?;
        let cross_entropy = self.output_loss(false)?;
        Ok(BatchLoss { cross_entropy, penalty: self.penalty()? })
    }

    /// The loss and, left in the device's gradient buffer, the gradients of its sum (cross-entropy plus
    /// penalty) for every parameter.
    pub fn loss_and_grads(
        &mut self,
        tokens: &[u32],
        targets: &[u32],
        rules: Option<&BatchRules>,
    ) -> DeviceResult<BatchLoss> {
        self.load_batch(tokens, targets, rules)?;
        self.forward()?;
        let penalty = self.penalty()?;
        self.device.zero(self.grads)?;
        let cross_entropy = self.output_loss(true)?;
        self.backward()?;
        Ok(BatchLoss { cross_entropy, penalty })
    }

    /// The model with the device's current parameters.
    pub fn model(&mut self) -> DeviceResult<Model<f32>> {
        let mut model = self.model.clone();
        self.copy_into(self.params, &mut model.params)?;
        Ok(model)
    }

    /// The gradients of the last [`loss_and_grads`](Self::loss_and_grads), shaped like [`Params`].
    pub fn gradients(&mut self) -> DeviceResult<Params<f32>> {
        let mut grads = Params::zeros(&self.model.config);
        self.copy_into(self.grads, &mut grads)?;
        Ok(grads)
    }

    /// Continues from `optimizer`'s moments and step count (a resumed run's).
    pub fn load_optimizer(&mut self, optimizer: &AdamW<f32>) -> DeviceResult<()> {
        for (moments, buffer) in [(&optimizer.m, self.moment1), (&optimizer.v, self.moment2)] {
            if moments.len() != self.slots.len() {
                return Err(format!("the optimizer has {} tensors, the model {}", moments.len(), self.slots.len()));
            }
            let mut host = Vec::with_capacity(buffer.len);
            for (moment, slot) in moments.iter().zip(&self.slots) {
                if moment.shape() != slot.shape.as_slice() {
                    return Err(format!(
                        "the optimizer's {} is {:?}, the tensor {:?}",
                        slot.name,
                        moment.shape(),
                        slot.shape
                    ));
                }
                host.extend(moment.iter().copied());
            }
            self.device.upload(buffer, &host)?;
        }
        self.step = optimizer.step;
        Ok(())
    }

    /// Copies the device's parameters into `model` and its moments and step count into `optimizer`,
    /// for what runs on the host: evaluation, checkpoints, the report.
    pub fn sync_to_host(&mut self, model: &mut Model<f32>, optimizer: &mut AdamW<f32>) -> DeviceResult<()> {
        self.copy_into(self.params, &mut model.params)?;
        for (moments, buffer) in [(&mut optimizer.m, self.moment1), (&mut optimizer.v, self.moment2)] {
            let host = self.device.download(buffer)?;
            for (moment, slot) in moments.iter_mut().zip(&self.slots) {
                moment.iter_mut().zip(&host[slot.offset..slot.offset + slot.len]).for_each(|(m, &h)| *m = h);
            }
        }
        optimizer.step = self.step;
        Ok(())
    }

    fn copy_into(&mut self, buffer: Floats, into: &mut Params<f32>) -> DeviceResult<()> {
        let host = self.device.download(buffer)?;
        for ((name, mut tensor), slot) in into.named_mut().into_iter().zip(&self.slots) {
            if name != slot.name || tensor.shape() != slot.shape.as_slice() {
                return Err(format!("the device holds {} {:?} where the model has {name}", slot.name, slot.shape));
            }
            tensor.iter_mut().zip(&host[slot.offset..slot.offset + slot.len]).for_each(|(t, &h)| *t = h);
        }
        Ok(())
    }

    fn load_batch(&mut self, tokens: &[u32], targets: &[u32], rules: Option<&BatchRules>) -> DeviceResult<()> {
        let n = self.batch * self.seq_len;
        let vocab = self.model.config.vocab_size;
        if tokens.len() != n || targets.len() != n {
            return Err(format!("{} tokens and {} targets for a batch of {n}", tokens.len(), targets.len()));
        }
        if let Some(bad) = tokens.iter().chain(targets).find(|&&t| t as usize >= vocab) {
            return Err(format!("token id {bad} outside the vocabulary of {vocab}"));
        }
        self.load_rules(rules)?;
        self.load_block_rows(tokens)?;
        self.device.upload_ids(self.tokens, tokens)?;
        self.device.upload_ids(self.targets, targets)
    }

    fn shape(&self) -> (usize, usize, usize, usize, usize) {
        let c = &self.model.config;
        (self.batch * self.seq_len, c.d_model, c.d_ff, c.n_heads, c.d_model / c.n_heads)
    }

    fn gemm(&mut self, product: RowMajorProduct, a: Floats, b: Floats, c: Floats, beta: f32) -> DeviceResult<()> {
        self.device.gemm(&Gemm::plain(product, a, b, c, beta))
    }

    /// `c = a·w (+ c)` for `a [rows, k]` contiguous, `w [k, n]`, into `c` with row stride `c_stride`.
    #[allow(clippy::too_many_arguments)]
    fn project(
        &mut self,
        a: Floats,
        w: Floats,
        c: Floats,
        rows: usize,
        k: usize,
        n: usize,
        c_stride: usize,
    ) -> DeviceResult<()> {
        let product = RowMajorProduct { m: rows, n, k, transpose_a: false, transpose_b: false };
        let strides = RowStrides { a: k, b: n, c: c_stride };
        self.device.gemm(&Gemm { strides, ..Gemm::plain(product, a, w, c, 1.0) })
    }

    /// Every sequence's `H` heads as one strided batch of products: operands start at `a`, `b`, `c` plus
    /// `sequence ·` the given per-sequence strides, heads `head_strides` apart.
    #[allow(clippy::too_many_arguments)]
    fn per_head(
        &mut self,
        product: RowMajorProduct,
        strides: RowStrides,
        (a, b, c): (Floats, Floats, Floats),
        sequence_strides: [usize; 3],
        head_strides: [usize; 3],
        alpha: f32,
        beta: f32,
    ) -> DeviceResult<()> {
        let heads = self.model.config.n_heads;
        for sequence in 0..self.batch {
            let at = |region: Floats, index: usize| region.from(sequence * sequence_strides[index]);
            self.device.gemm(&Gemm {
                product,
                strides,
                batch: heads,
                batch_strides: head_strides,
                alpha,
                beta,
                a: at(a, 0),
                b: at(b, 1),
                c: at(c, 2),
            })?;
        }
        Ok(())
    }

    fn forward(&mut self) -> DeviceResult<()> {
        let (n, d, ff, heads, hs) = self.shape();
        let (t, eps) = (self.seq_len, self.model.config.ln_eps as f32);
        let p = self.p.clone();
        self.device.launch(&Launch::EmbeddingForward {
            x: self.embedded,
            tokens: self.tokens,
            wte: p.tok_emb,
            wpe: p.pos_emb,
            rows: n,
            seq_len: t,
            width: d,
        })?;
        self.block_embedding_forward(self.embedded)?;
        let scale = 1.0 / (hs as f32).sqrt();
        for layer in 0..self.layers.len() {
            let (w, a) = (p.layers[layer], self.layers[layer]);
            let x = if layer == 0 { self.embedded } else { self.layers[layer - 1].output };
            self.layernorm(x, w.ln1_weight, w.ln1_bias, a.z1, a.ln1_normalized, a.ln1_rstd, eps)?;
            for part in 0..3 {
                let out = a.qkv.from(part * d);
                self.device.launch(&Launch::BroadcastRows {
                    out,
                    base: None,
                    bias: w.b[part],
                    rows: n,
                    width: d,
                    row_stride: 3 * d,
                })?;
                self.project(a.z1, w.w[part], out, n, d, d, 3 * d)?;
            }
            // s = q·kᵀ/√h per (sequence, head), then the causal softmax in place
            let scores = RowMajorProduct { m: t, n: t, k: hs, transpose_a: false, transpose_b: true };
            self.per_head(
                scores,
                RowStrides { a: 3 * d, b: 3 * d, c: t },
                (a.qkv, a.qkv.from(d), a.att),
                [t * 3 * d, t * 3 * d, heads * t * t],
                [hs, hs, t * t],
                scale,
                0.0,
            )?;
            self.attention_softmax(layer, a.att)?;
            let mix = RowMajorProduct { m: t, n: hs, k: t, transpose_a: false, transpose_b: false };
            self.per_head(
                mix,
                RowStrides { a: t, b: 3 * d, c: d },
                (a.att, a.qkv.from(2 * d), a.y_att),
                [heads * t * t, t * 3 * d, t * d],
                [t * t, hs, hs],
                1.0,
                0.0,
            )?;
            // h = x + y_att·W_O + b_O; z₂ = LN₂(h); x' = h + GELU(z₂·W₁ + b₁)·W₂ + b₂
            self.broadcast(a.h, Some(x), w.bo, n, d)?;
            self.project(a.y_att, w.wo, a.h, n, d, d, d)?;
            self.layernorm(a.h, w.ln2_weight, w.ln2_bias, a.z2, a.ln2_normalized, a.ln2_rstd, eps)?;
            self.broadcast(a.a1, None, w.b1, n, ff)?;
            self.project(a.z2, w.w1, a.a1, n, d, ff, ff)?;
            self.device.launch(&Launch::GeluForward { y: a.g, x: a.a1 })?;
            self.broadcast(a.output, Some(a.h), w.b2, n, d)?;
            self.project(a.g, w.w2, a.output, n, ff, d, d)?;
        }
        let last = self.layers.last().map_or(self.embedded, |a| a.output);
        let (hidden, normalized, rstd) = (self.hidden, self.ln_f_normalized, self.ln_f_rstd);
        self.layernorm(last, p.ln_f_weight, p.ln_f_bias, hidden, normalized, rstd, eps)
    }

    #[allow(clippy::too_many_arguments)]
    fn layernorm(
        &mut self,
        x: Floats,
        weight: Floats,
        bias: Floats,
        y: Floats,
        normalized: Floats,
        rstd: Floats,
        eps: f32,
    ) -> DeviceResult<()> {
        let (rows, width, ..) = self.shape();
        self.device.launch(&Launch::LayerNormForward { y, normalized, rstd, x, weight, bias, rows, width, eps })
    }

    fn broadcast(
        &mut self,
        out: Floats,
        base: Option<Floats>,
        bias: Floats,
        rows: usize,
        width: usize,
    ) -> DeviceResult<()> {
        self.device.launch(&Launch::BroadcastRows { out, base, bias, rows, width, row_stride: width })
    }

    fn column_sum(&mut self, out: Floats, a: Floats, width: usize, row_stride: usize) -> DeviceResult<()> {
        let (rows, ..) = self.shape();
        self.device.launch(&Launch::ColumnSum { out, a, rows, width, row_stride })
    }

    /// Through a LayerNorm: `∂J/∂x` into `dx`, its gain's and bias's gradients added.
    #[allow(clippy::too_many_arguments)]
    fn layernorm_backward(
        &mut self,
        dx: Floats,
        dy: Floats,
        normalized: Floats,
        rstd: Floats,
        weight: Floats,
        d_weight: Floats,
        d_bias: Floats,
    ) -> DeviceResult<()> {
        let (rows, width, ..) = self.shape();
        self.device.launch(&Launch::LayerNormBackward { dx, dy, normalized, rstd, weight, rows, width })?;
        self.device.launch(&Launch::ColumnSumProduct { out: d_weight, a: dy, b: normalized, rows, width })?;
        self.column_sum(d_bias, dy, width, width)
    }

    fn backward(&mut self) -> DeviceResult<()> {
        let (n, d, ff, heads, hs) = self.shape();
        let t = self.seq_len;
        let (p, g, s) = (self.p.clone(), self.g.clone(), self.scratch);
        self.layernorm_backward(
            s.dx[0],
            s.d_hidden,
            self.ln_f_normalized,
            self.ln_f_rstd,
            p.ln_f_weight,
            g.ln_f_weight,
            g.ln_f_bias,
        )?;
        let scale = 1.0 / (hs as f32).sqrt();
        let transposed_a = |m, n, k| RowMajorProduct { m, n, k, transpose_a: true, transpose_b: false };
        let transposed_b = |m, n, k| RowMajorProduct { m, n, k, transpose_a: false, transpose_b: true };
        let mut current = 0;
        for layer in (0..self.layers.len()).rev() {
            let (w, dw, a) = (p.layers[layer], g.layers[layer], self.layers[layer]);
            let (d_out, d_below) = (s.dx[current], s.dx[1 - current]);
            // x' = h + g·W₂ + b₂
            self.column_sum(dw.b2, d_out, d, d)?;
            self.gemm(transposed_a(ff, d, n), a.g, d_out, dw.w2, 1.0)?;
            self.gemm(transposed_b(n, ff, d), d_out, w.w2, s.d_g, 0.0)?;
            self.device.launch(&Launch::GeluBackward { dx: s.d_a1, dy: s.d_g, x: a.a1 })?;
            self.column_sum(dw.b1, s.d_a1, ff, ff)?;
            self.gemm(transposed_a(d, ff, n), a.z2, s.d_a1, dw.w1, 1.0)?;
            self.gemm(transposed_b(n, d, ff), s.d_a1, w.w1, s.d_z, 0.0)?;
            self.layernorm_backward(
                s.d_norm,
                s.d_z,
                a.ln2_normalized,
                a.ln2_rstd,
                w.ln2_weight,
                dw.ln2_weight,
                dw.ln2_bias,
            )?;
            self.device.launch(&Launch::ResidualAdd { out: s.dh, a: d_out, b: s.d_norm })?;
            // h = x + y_att·W_O + b_O
            self.column_sum(dw.bo, s.dh, d, d)?;
            self.gemm(transposed_a(d, d, n), a.y_att, s.dh, dw.wo, 1.0)?;
            self.gemm(transposed_b(n, d, d), s.dh, w.wo, s.d_y_att, 0.0)?;
            // attention: ∂α = ∂y·vᵀ and ∂v = αᵀ·∂y per head, through the softmax, then ∂q = ∂s·k/√h and
            // ∂k = ∂sᵀ·q/√h
            let head_rows = [t * d, t * 3 * d, heads * t * t];
            self.per_head(
                transposed_b(t, t, hs),
                RowStrides { a: d, b: 3 * d, c: t },
                (s.d_y_att, a.qkv.from(2 * d), s.d_att),
                head_rows,
                [hs, hs, t * t],
                1.0,
                0.0,
            )?;
            self.per_head(
                transposed_a(t, hs, t),
                RowStrides { a: t, b: d, c: 3 * d },
                (a.att, s.d_y_att, s.d_qkv.from(2 * d)),
                [heads * t * t, t * d, t * 3 * d],
                [t * t, hs, hs],
                1.0,
                0.0,
            )?;
            self.attention_softmax_backward(layer, s.d_att, a.att)?;
            let plain = RowMajorProduct { m: t, n: hs, k: t, transpose_a: false, transpose_b: false };
            self.per_head(
                plain,
                RowStrides { a: t, b: 3 * d, c: 3 * d },
                (s.d_att, a.qkv.from(d), s.d_qkv),
                [heads * t * t, t * 3 * d, t * 3 * d],
                [t * t, hs, hs],
                scale,
                0.0,
            )?;
            self.per_head(
                transposed_a(t, hs, t),
                RowStrides { a: t, b: 3 * d, c: 3 * d },
                (s.d_att, a.qkv, s.d_qkv.from(d)),
                [heads * t * t, t * 3 * d, t * 3 * d],
                [t * t, hs, hs],
                scale,
                0.0,
            )?;
            // [q | k | v] = z₁·W + b: each part's weight and bias gradients, and ∂z₁ = Σ ∂part·Wᵀ
            for part in 0..3 {
                let d_part = s.d_qkv.from(part * d);
                self.column_sum(dw.b[part], d_part, d, 3 * d)?;
                let product = transposed_a(d, d, n);
                let strides = RowStrides { a: d, b: 3 * d, c: d };
                self.device.gemm(&Gemm { strides, ..Gemm::plain(product, a.z1, d_part, dw.w[part], 1.0) })?;
                let product = transposed_b(n, d, d);
                let strides = RowStrides { a: 3 * d, b: d, c: d };
                let beta = if part == 0 { 0.0 } else { 1.0 };
                self.device.gemm(&Gemm { strides, ..Gemm::plain(product, d_part, w.w[part], s.d_z, beta) })?;
            }
            self.layernorm_backward(
                s.d_norm,
                s.d_z,
                a.ln1_normalized,
                a.ln1_rstd,
                w.ln1_weight,
                dw.ln1_weight,
                dw.ln1_bias,
            )?;
            self.device.launch(&Launch::ResidualAdd { out: d_below, a: s.dh, b: s.d_norm })?;
            current = 1 - current;
        }
        let dx = s.dx[current];
        self.block_embedding_backward(dx)?;
        self.device.launch(&Launch::EmbeddingBackwardPositions {
            dwpe: g.pos_emb,
            dx,
            batch: self.batch,
            seq_len: t,
            width: d,
        })?;
        self.device.launch(&Launch::EmbeddingBackwardTokens {
            dwte: g.tok_emb,
            dx,
            tokens: self.tokens,
            rows: n,
            width: d,
        })
    }

    /// AdamW on every tensor from the gradient buffer, as [`crate::engine::optim::AdamW::update`]
    /// computes it; returns the gradient norm before clipping.
    pub fn update(&mut self, config: &OptimConfig, lr: f64) -> DeviceResult<f64> {
        let norm = self.device.squared_norm(self.grads)?.sqrt();
        let clip = if config.grad_clip > 0.0 && norm > config.grad_clip { config.grad_clip / norm } else { 1.0 };
        self.step += 1;
        let t = i32::try_from(self.step).unwrap_or(i32::MAX);
        let bias1 = 1.0 - config.beta1.powi(t);
        let bias2 = 1.0 - config.beta2.powi(t);
        for slot in self.slots.clone() {
            let (decay, tensor_lr) = tensor_rates(&slot.name, slot.shape.len(), config, lr);
            let part = |region: Floats| region.part(slot.offset, slot.len);
            self.device.launch(&Launch::AdamW {
                p: part(self.params),
                g: part(self.grads),
                m: part(self.moment1),
                v: part(self.moment2),
                clip: clip as f32,
                beta1: config.beta1 as f32,
                beta2: config.beta2 as f32,
                decay: decay as f32,
                step_size: (tensor_lr / bias1) as f32,
                inv_sqrt_bias2: (1.0 / bias2.sqrt()) as f32,
                eps: config.eps as f32,
            })?;
        }
        Ok(norm)
    }
}
