//! Where each tensor of the model lives in the device step's flat buffers: parameters, gradients and
//! AdamW's two moments each hold the tensors of
//! [`Params::named`](crate::engine::Params::named) back to back, in that order.

use super::ops::{DeviceResult, Floats};
use crate::engine::model::Model;

/// One tensor of [`Params::named`](crate::engine::Params::named) in the flat buffers.
#[derive(Debug, Clone)]
pub struct Slot {
    pub name: String,
    pub shape: Vec<usize>,
    pub offset: usize,
    pub len: usize,
}

/// A layer's tensors as regions of one flat buffer (parameters or gradients).
#[derive(Debug, Clone, Copy)]
pub struct LayerRegions {
    pub ln1_weight: Floats,
    pub ln1_bias: Floats,
    /// `W_Q, W_K, W_V` and their biases.
    pub w: [Floats; 3],
    pub b: [Floats; 3],
    pub wo: Floats,
    pub bo: Floats,
    pub ln2_weight: Floats,
    pub ln2_bias: Floats,
    pub w1: Floats,
    pub b1: Floats,
    pub w2: Floats,
    pub b2: Floats,
}

/// The model's tensors as regions of one flat buffer.
#[derive(Debug, Clone)]
pub struct Regions {
    pub tok_emb: Floats,
    pub pos_emb: Floats,
    pub layers: Vec<LayerRegions>,
    pub ln_f_weight: Floats,
    pub ln_f_bias: Floats,
    /// `[d, V]` when untied.
    pub head: Option<Floats>,
    /// `[K, d]` with recruited blocks.
    pub block_emb: Option<Floats>,
    /// `[C, d]` and `[C]` with copy paths.
    pub copy_weight: Option<Floats>,
    pub copy_bias: Option<Floats>,
}

/// The regions of every tensor of `model` in a flat buffer laid out by `slots`.
pub fn regions(slots: &[Slot], buffer: Floats, model: &Model<f32>) -> DeviceResult<Regions> {
    let find = |name: &str| {
        slots
            .iter()
            .find(|slot| slot.name == name)
            .map(|slot| buffer.part(slot.offset, slot.len))
            .ok_or_else(|| format!("the model has no tensor {name}"))
    };
    let optional = |name: &str, present: bool| present.then(|| find(name)).transpose();
    let layers = (0..model.config.n_layers)
        .map(|l| {
            let at = |name: &str| find(&format!("layers.{l}.{name}"));
            Ok(LayerRegions {
                ln1_weight: at("ln1.weight")?,
                ln1_bias: at("ln1.bias")?,
                w: [at("attn.wq")?, at("attn.wk")?, at("attn.wv")?],
                b: [at("attn.wq.bias")?, at("attn.wk.bias")?, at("attn.wv.bias")?],
                wo: at("attn.wo")?,
                bo: at("attn.wo.bias")?,
                ln2_weight: at("ln2.weight")?,
                ln2_bias: at("ln2.bias")?,
                w1: at("mlp.w1")?,
                b1: at("mlp.b1")?,
                w2: at("mlp.w2")?,
                b2: at("mlp.b2")?,
            })
        })
        .collect::<DeviceResult<Vec<_>>>()?;
    Ok(Regions {
        tok_emb: find("tok_emb")?,
        pos_emb: find("pos_emb")?,
        layers,
        ln_f_weight: find("ln_f.weight")?,
        ln_f_bias: find("ln_f.bias")?,
        head: if model.config.tied { None } else { Some(find("head")?) },
        block_emb: optional("block_emb", !model.config.recruited_blocks.is_empty())?,
        copy_weight: optional("copy.weight", !model.config.copy_paths.is_empty())?,
        copy_bias: optional("copy.bias", !model.config.copy_paths.is_empty())?,
    })
}
