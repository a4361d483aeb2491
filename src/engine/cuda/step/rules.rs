//! What the rules change in the device step, as [`crate::engine::Model::loss_and_grads`] computes it
//! with the locality hook and copy caches: the dial's attention bias, temperature and group-sparsity
//! penalty (METHOD §4), the copy paths' gates and mixture (METHOD §4, "Copy paths") and recruited
//! blocks' embeddings (METHOD §1, §7).
//!
//! A batch's rules arrive as a [`BatchRules`] built on the host and are uploaded with the batch; layers
//! the dial leaves alone take the plain softmax, so a batch at `λ = 0` runs the step without rules.

use super::DeviceModel;
use crate::engine::cuda::batch_rules::{BatchRules, RuleShape};
use crate::engine::cuda::gemm::{RowMajorProduct, RowStrides};
use crate::engine::cuda::ops::{Bytes, Device, DeviceResult, Floats, Gemm, Ids, Launch};
use crate::engine::Model;

/// One layer's dial on the device.
#[derive(Debug, Clone, Copy)]
struct LayerDial {
    /// `[B·H·T]`.
    covered: Bytes,
    /// `[B·H·T·T]`.
    targets: Bytes,
    /// `[B·H·T]`.
    bias: Floats,
}

/// The dial's buffers, allocated the first time a batch's rules act on attention.
#[derive(Debug, Clone)]
struct DialBuffers {
    layers: Vec<LayerDial>,
    /// `[B·T]` each position's block.
    blocks: Ids,
    /// `[L·B·H·T]` each layer's penalty per row.
    penalties: Floats,
}

/// The copy paths' buffers, `C` of them over `N` rows.
#[derive(Debug, Clone, Copy)]
struct CopyBuffers {
    /// `[N, C]` gate logits `z = h·uᵀ + b`, then `∂CE/∂z`.
    z: Floats,
    /// `[N, C]` copy weights `w_c`.
    w: Floats,
    /// `[N]` `w₀`.
    w0: Floats,
    /// `[N]` `Σ_c w_c κ_c(y)`.
    mass: Floats,
    /// `[N, C]` `κ_c(y)`.
    kappa_target: Floats,
    /// `[N, C]`.
    active: Bytes,
    /// `[C]`.
    strength: Floats,
}

/// The rules of the batch loaded last, as the passes read them.
#[derive(Debug, Clone, Default)]
struct Loaded {
    /// Per layer, `(1/τ, penalty weight)` where the dial acts.
    attention: Vec<Option<(f32, f32)>>,
    block_count: usize,
    /// The copy mixture's `λ` when the batch's copy rules act.
    copy_lambda: Option<f32>,
}

/// The device step's state for rules and recruited blocks.
#[derive(Debug, Clone)]
pub(super) struct RuleState {
    dial: Option<DialBuffers>,
    copy: Option<CopyBuffers>,
    copy_paths: usize,
    /// `[N, K]` which recruited block each row's token belongs to (one-hot), with the model's lookup
    /// `[V]` (`k + 1` for block `k`, 0 for none); `None` without recruited blocks.
    block_rows: Option<(Floats, Vec<u32>)>,
    loaded: Loaded,
}

impl RuleState {
    /// The buffers a model's copy paths and recruited blocks need for batches of `n` rows.
    pub(super) fn new<D: Device>(device: &mut D, model: &Model<f32>, n: usize) -> DeviceResult<Self> {
        let c = &model.config;
        let copy_paths = c.copy_paths.len();
        let copy = if copy_paths == 0 {
            None
        } else {
            Some(CopyBuffers {
                z: device.alloc(n * copy_paths)?,
                w: device.alloc(n * copy_paths)?,
                w0: device.alloc(n)?,
                mass: device.alloc(n)?,
                kappa_target: device.alloc(n * copy_paths)?,
                active: device.alloc_bytes(n * copy_paths)?,
                strength: device.alloc(copy_paths)?,
            })
        };
        let block_rows = if c.recruited_blocks.is_empty() {
            None
        } else {
            Some((device.alloc(n * c.recruited_blocks.len())?, c.block_lookup()))
        };
        Ok(RuleState { dial: None, copy, copy_paths, block_rows, loaded: Loaded::default() })
    }
}

impl<D: Device> DeviceModel<D> {
    /// Uploads a batch's rules (or none) for the passes that follow, after checking their shapes.
    pub(super) fn load_rules(&mut self, rules: Option<&BatchRules>) -> DeviceResult<()> {
        let c = &self.model.config;
        let layers = c.n_layers;
        let shape = RuleShape {
            batch: self.batch,
            seq_len: self.seq_len,
            heads: c.n_heads,
            layers,
            copy_paths: c.copy_paths.len(),
        };
        let Some(rules) = rules else {
            self.rules.loaded = Loaded { attention: vec![None; layers], ..Loaded::default() };
            return Ok(());
        };
        rules.validate(shape)?;
        if rules.copy.is_some() && self.rules.copy.is_none() {
            return Err("the batch has copy rules but the model has no copy path".into());
        }
        if rules.acts_on_attention() && self.rules.dial.is_none() {
            let rows = self.batch * shape.heads * self.seq_len;
            let mut dial_layers = Vec::with_capacity(layers);
            for _ in 0..layers {
                dial_layers.push(LayerDial {
                    covered: self.device.alloc_bytes(rows)?,
                    targets: self.device.alloc_bytes(rows * self.seq_len)?,
                    bias: self.device.alloc(rows)?,
                });
            }
            let blocks = self.device.alloc_ids(self.batch * self.seq_len)?;
            let penalties = self.device.alloc(layers * rows)?;
            self.rules.dial = Some(DialBuffers { layers: dial_layers, blocks, penalties });
        }
        let mut attention = Vec::with_capacity(layers);
        for (layer, layer_rules) in rules.layers.iter().enumerate() {
            let (Some(layer_rules), Some(dial)) = (layer_rules, &self.rules.dial) else {
                attention.push(None);
                continue;
            };
            let on_device = dial.layers[layer];
            self.device.upload_bytes(on_device.covered, &layer_rules.covered)?;
            self.device.upload_bytes(on_device.targets, &layer_rules.targets)?;
            self.device.upload(on_device.bias, &layer_rules.bias)?;
            attention.push(Some((layer_rules.inv_tau, layer_rules.penalty_weight)));
        }
        if let Some(dial) = self.rules.dial.as_ref().filter(|_| rules.acts_on_attention()) {
            self.device.upload_ids(dial.blocks, &rules.blocks)?;
        }
        let copy_lambda = match (&rules.copy, self.rules.copy) {
            (Some(copy), Some(buffers)) => {
                self.device.upload(buffers.strength, &copy.strength)?;
                self.device.upload_bytes(buffers.active, &copy.active)?;
                self.device.upload(buffers.kappa_target, &copy.kappa_target)?;
                Some(copy.lambda)
            }
            _ => None,
        };
        self.rules.loaded = Loaded { attention, block_count: rules.block_count, copy_lambda };
        Ok(())
    }

    /// The one-hot rows `[N, K]` of the batch's recruited-block members, from its tokens.
    pub(super) fn load_block_rows(&mut self, tokens: &[u32]) -> DeviceResult<()> {
        let Some((rows, lookup)) = &self.rules.block_rows else { return Ok(()) };
        let blocks = self.model.config.recruited_blocks.len();
        let mut one_hot = vec![0.0f32; tokens.len() * blocks];
        for (n, &token) in tokens.iter().enumerate() {
            // ids past the lookup's end are general, as in the CPU engine
            if let Some(&k) = lookup.get(token as usize).filter(|&&k| k > 0) {
                one_hot[n * blocks + k as usize - 1] = 1.0;
            }
        }
        let rows = *rows;
        self.device.upload(rows, &one_hot)
    }

    /// `x⁰ += onehot·B`: each member of a recruited block gets its block's embedding row.
    pub(super) fn block_embedding_forward(&mut self, x: Floats) -> DeviceResult<()> {
        self.block_product(self.p.block_emb, x, false)
    }

    /// `∂B += onehotᵀ·∂x⁰`.
    pub(super) fn block_embedding_backward(&mut self, dx: Floats) -> DeviceResult<()> {
        self.block_product(self.g.block_emb, dx, true)
    }

    /// The one product both directions of the block embedding take with the batch's one-hot rows
    /// `[N, K]`: `x [N, d] += onehot·table` forward, `table [K, d] += onehotᵀ·x` backward.
    fn block_product(&mut self, table: Option<Floats>, x: Floats, backward: bool) -> DeviceResult<()> {
        let (Some((rows, _)), Some(table)) = (&self.rules.block_rows, table) else { return Ok(()) };
        let rows = *rows;
        let (n, d, blocks) =
            (self.batch * self.seq_len, self.model.config.d_model, self.model.config.recruited_blocks.len());
        let (m, k) = if backward { (blocks, n) } else { (n, blocks) };
        let product = RowMajorProduct { m, n: d, k, transpose_a: backward, transpose_b: false };
        let (b, c) = if backward { (x, table) } else { (table, x) };
        self.device.gemm(&Gemm::plain(product, rows, b, c, 1.0))
    }

    fn dial_at(&self, layer: usize) -> Option<(LayerDial, f32, f32)> {
        let (inv_tau, weight) = self.rules.loaded.attention.get(layer).copied().flatten()?;
        Some((self.rules.dial.as_ref()?.layers[layer], inv_tau, weight))
    }

    fn penalty_launch(&self, layer: usize, att: Floats, datt: Option<Floats>) -> Option<Launch> {
        let (dial, _, weight) = self.dial_at(layer)?;
        let buffers = self.rules.dial.as_ref()?;
        let (heads, t) = (self.model.config.n_heads, self.seq_len);
        let rows = self.batch * heads * t;
        (weight != 0.0).then_some(Launch::AttentionPenalty {
            datt,
            penalty: buffers.penalties.part(layer * rows, rows),
            att,
            covered: dial.covered,
            targets: dial.targets,
            blocks: buffers.blocks,
            weight,
            heads,
            seq_len: t,
            block_count: self.rules.loaded.block_count,
            rows,
        })
    }

    /// The causal softmax of layer `layer`'s scores in place, under the dial where it acts, and the
    /// penalty on the weights it gives.
    pub(super) fn attention_softmax(&mut self, layer: usize, att: Floats) -> DeviceResult<()> {
        let rows = self.batch * self.model.config.n_heads * self.seq_len;
        let seq_len = self.seq_len;
        let Some((dial, inv_tau, _)) = self.dial_at(layer) else {
            return self.device.launch(&Launch::AttentionSoftmaxForward { att, rows, seq_len });
        };
        self.device.launch(&Launch::AttentionSoftmaxLocal {
            att,
            covered: dial.covered,
            targets: dial.targets,
            bias: dial.bias,
            inv_tau,
            rows,
            seq_len,
        })?;
        match self.penalty_launch(layer, att, None) {
            Some(launch) => self.device.launch(&launch),
            None => Ok(()),
        }
    }

    /// From `∂J/∂α` in `datt` to `∂J/∂s`: the penalty's gradient added where it acts, then the
    /// softmax's backward (times `1/τ` on covered rows).
    pub(super) fn attention_softmax_backward(&mut self, layer: usize, datt: Floats, att: Floats) -> DeviceResult<()> {
        let rows = self.batch * self.model.config.n_heads * self.seq_len;
        let seq_len = self.seq_len;
        let Some((dial, inv_tau, _)) = self.dial_at(layer) else {
            return self.device.launch(&Launch::AttentionSoftmaxBackward { datt, att, rows, seq_len });
        };
        if let Some(launch) = self.penalty_launch(layer, att, Some(datt)) {
            self.device.launch(&launch)?;
        }
        self.device.launch(&Launch::AttentionSoftmaxLocalBackward {
            datt,
            att,
            covered: dial.covered,
            inv_tau,
            rows,
            seq_len,
        })
    }

    /// `λ·ρ·Ω` of the last forward pass, summed over the layers where the penalty acts.
    pub(super) fn penalty(&mut self) -> DeviceResult<f64> {
        let Some(buffers) = self.rules.dial.as_ref() else { return Ok(0.0) };
        let acting: Vec<usize> = (0..self.model.config.n_layers)
            .filter(|&layer| self.dial_at(layer).is_some_and(|(_, _, weight)| weight != 0.0))
            .collect();
        if acting.is_empty() {
            return Ok(0.0);
        }
        let rows = self.batch * self.model.config.n_heads * self.seq_len;
        let penalties = self.device.download(buffers.penalties)?;
        Ok(acting
            .iter()
            .map(|&layer| penalties[layer * rows..(layer + 1) * rows].iter().map(|&p| f64::from(p)).sum::<f64>())
            .sum())
    }

    /// The copy mixture's `w₀ [N]` and copy mass `[N]` for the output loss: the gates on the final hidden
    /// state where the batch's copy rules act, else `w₀ = 1` and no mass (the plain softmax).
    pub(super) fn copy_mixture(&mut self) -> DeviceResult<(Floats, Floats)> {
        let (Some(buffers), Some(lambda)) = (self.rules.copy, self.rules.loaded.copy_lambda) else {
            return Ok((self.ones, self.zeros));
        };
        let (Some(weight), Some(bias)) = (self.p.copy_weight, self.p.copy_bias) else {
            return Err("the model's copy gates are not on the device".into());
        };
        let (n, d, rules) = (self.batch * self.seq_len, self.model.config.d_model, self.rules.copy_paths);
        // z = b broadcast, then += h·uᵀ                                                  [N, C]
        self.device.launch(&Launch::BroadcastRows {
            out: buffers.z,
            base: None,
            bias,
            rows: n,
            width: rules,
            row_stride: rules,
        })?;
        let product = RowMajorProduct { m: n, n: rules, k: d, transpose_a: false, transpose_b: true };
        self.device.gemm(&Gemm::plain(product, self.hidden, weight, buffers.z, 1.0))?;
        self.device.launch(&Launch::CopyGates {
            w: buffers.w,
            w0: buffers.w0,
            z: buffers.z,
            active: buffers.active,
            strength: buffers.strength,
            lambda,
            rows: n,
            rules,
        })?;
        // Σ_c w_c κ_c(y) per row: N products of a [1, C] row by a [C, 1] column
        let row_dot = RowMajorProduct { m: 1, n: 1, k: rules, transpose_a: false, transpose_b: false };
        self.device.gemm(&Gemm {
            product: row_dot,
            strides: RowStrides { a: rules, b: 1, c: 1 },
            batch: n,
            batch_strides: [rules, rules, 1],
            alpha: 1.0,
            beta: 0.0,
            a: buffers.w,
            b: buffers.kappa_target,
            c: buffers.mass,
        })?;
        Ok((buffers.w0, buffers.mass))
    }

    /// The gates' backward after the output loss: `∂z = (w − w·κ(y)/p)/N`, then `∂u += ∂zᵀ·h`,
    /// `∂b += Σ_n ∂z` and `∂h += ∂z·u` (into the output loss's `∂J/∂h`).
    pub(super) fn copy_backward(&mut self) -> DeviceResult<()> {
        let (Some(buffers), Some(_)) = (self.rules.copy, self.rules.loaded.copy_lambda) else { return Ok(()) };
        let (Some(weight), Some(d_weight), Some(d_bias)) = (self.p.copy_weight, self.g.copy_weight, self.g.copy_bias)
        else {
            return Err("the model's copy gates are not on the device".into());
        };
        let (n, d, rules) = (self.batch * self.seq_len, self.model.config.d_model, self.rules.copy_paths);
        let dz = buffers.z;
        self.device.launch(&Launch::CopyGatesBackward {
            dz,
            w: buffers.w,
            kappa_y: buffers.kappa_target,
            p: self.row_probability,
            grad_scale: 1.0 / n as f32,
            rows: n,
            rules,
        })?;
        let to_weight = RowMajorProduct { m: rules, n: d, k: n, transpose_a: true, transpose_b: false };
        self.device.gemm(&Gemm::plain(to_weight, dz, self.hidden, d_weight, 1.0))?;
        self.device.launch(&Launch::ColumnSum { out: d_bias, a: dz, rows: n, width: rules, row_stride: rules })?;
        let to_hidden = RowMajorProduct { m: n, n: d, k: rules, transpose_a: false, transpose_b: false };
        self.device.gemm(&Gemm::plain(to_hidden, dz, weight, self.scratch.d_hidden, 1.0))
    }
}
