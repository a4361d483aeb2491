//! The model's parameters, named as in the checkpoint layout.

use super::*;

/// Every tensor of a layer with its checkpoint name, in the checkpoint's order.
macro_rules! layer_fields {
    ($mac:ident) => {
        $mac!(
            ln1_weight: "ln1.weight",
            ln1_bias: "ln1.bias",
            wq: "attn.wq",
            bq: "attn.wq.bias",
            wk: "attn.wk",
            bk: "attn.wk.bias",
            wv: "attn.wv",
            bv: "attn.wv.bias",
            wo: "attn.wo",
            bo: "attn.wo.bias",
            ln2_weight: "ln2.weight",
            ln2_bias: "ln2.bias",
            w1: "mlp.w1",
            b1: "mlp.b1",
            w2: "mlp.w2",
            b2: "mlp.b2"
        )
    };
}

/// Weights of one transformer block. Matrices are `[in, out]`: `y = x·W + b`.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerParams<F> {
    pub ln1_weight: Array1<F>,
    pub ln1_bias: Array1<F>,
    pub wq: Array2<F>,
    pub bq: Array1<F>,
    pub wk: Array2<F>,
    pub bk: Array1<F>,
    pub wv: Array2<F>,
    pub bv: Array1<F>,
    pub wo: Array2<F>,
    pub bo: Array1<F>,
    pub ln2_weight: Array1<F>,
    pub ln2_bias: Array1<F>,
    pub w1: Array2<F>,
    pub b1: Array1<F>,
    pub w2: Array2<F>,
    pub b2: Array1<F>,
}

impl<F: Scalar> LayerParams<F> {
    fn zeros(c: &Config) -> Self {
        let (d, ff) = (c.d_model, c.d_ff);
        LayerParams {
            ln1_weight: Array1::zeros(d),
            ln1_bias: Array1::zeros(d),
            wq: Array2::zeros((d, d)),
            bq: Array1::zeros(d),
            wk: Array2::zeros((d, d)),
            bk: Array1::zeros(d),
            wv: Array2::zeros((d, d)),
            bv: Array1::zeros(d),
            wo: Array2::zeros((d, d)),
            bo: Array1::zeros(d),
            ln2_weight: Array1::zeros(d),
            ln2_bias: Array1::zeros(d),
            w1: Array2::zeros((d, ff)),
            b1: Array1::zeros(ff),
            w2: Array2::zeros((ff, d)),
            b2: Array1::zeros(d),
        }
    }

    fn push_named<'a>(&'a self, layer: usize, out: &mut Vec<(String, ArrayViewD<'a, F>)>) {
        macro_rules! push {
            ($($field:ident: $name:literal),*) => {
                $(out.push((format!("layers.{layer}.{}", $name), self.$field.view().into_dyn()));)*
            };
        }
        layer_fields!(push);
    }

    fn push_named_mut<'a>(&'a mut self, layer: usize, out: &mut Vec<(String, ArrayViewMutD<'a, F>)>) {
        macro_rules! push {
            ($($field:ident: $name:literal),*) => {
                $(out.push((format!("layers.{layer}.{}", $name), self.$field.view_mut().into_dyn()));)*
            };
        }
        layer_fields!(push);
    }
}

/// All weights (or, as [`Grads`], all gradients) of the model.
#[derive(Clone, Debug, PartialEq)]
pub struct Params<F> {
    pub tok_emb: Array2<F>,
    pub pos_emb: Array2<F>,
    pub layers: Vec<LayerParams<F>>,
    pub ln_f_weight: Array1<F>,
    pub ln_f_bias: Array1<F>,
    /// `[d, V]`, only when the output is untied from the token embedding.
    pub head: Option<Array2<F>>,
    /// `[K, d]`, one row per recruited block; named (and saved) only when `K > 0`, and last, so that
    /// recruiting a block appends a tensor instead of renumbering the optimizer's state.
    pub block_emb: Array2<F>,
    /// `[C, d]`, the copy gates' `u_c`, one row per copy path (METHOD §4); named `copy.weight` only when
    /// `C > 0`.
    pub copy_gate_weight: Array2<F>,
    /// `[C]`, the copy gates' `b_c`; named `copy.bias` only when `C > 0`.
    pub copy_gate_bias: Array1<F>,
}

impl<F: Scalar> Params<F> {
    pub fn zeros(c: &Config) -> Self {
        Self::zeros_with_tok_emb(c, Array2::zeros((c.vocab_size, c.d_model)))
    }

    /// [`zeros`](Self::zeros) with `tok_emb` given (`[V, d]`): a tied model's gradient starts as the
    /// output layer's `∂Wᵀ`, and a word vocabulary's 17 MB of zeros would only be thrown away.
    pub fn zeros_with_tok_emb(c: &Config, tok_emb: Array2<F>) -> Self {
        assert_eq!(tok_emb.dim(), (c.vocab_size, c.d_model), "the token embedding is [V, d]");
        Params {
            tok_emb,
            pos_emb: Array2::zeros((c.ctx_len, c.d_model)),
            layers: (0..c.n_layers).map(|_| LayerParams::zeros(c)).collect(),
            ln_f_weight: Array1::zeros(c.d_model),
            ln_f_bias: Array1::zeros(c.d_model),
            head: (!c.tied).then(|| Array2::zeros((c.d_model, c.vocab_size))),
            block_emb: Array2::zeros((c.recruited_blocks.len(), c.d_model)),
            copy_gate_weight: Array2::zeros((c.copy_paths.len(), c.d_model)),
            copy_gate_bias: Array1::zeros(c.copy_paths.len()),
        }
    }

    /// Every tensor with its checkpoint name, in a fixed order (the order the optimizer and the gradient
    /// norm use, so that their sums are reproducible).
    pub fn named(&self) -> Vec<(String, ArrayViewD<'_, F>)> {
        let mut out = vec![
            ("tok_emb".to_string(), self.tok_emb.view().into_dyn()),
            ("pos_emb".to_string(), self.pos_emb.view().into_dyn()),
        ];
        for (l, layer) in self.layers.iter().enumerate() {
            layer.push_named(l, &mut out);
        }
        out.push(("ln_f.weight".to_string(), self.ln_f_weight.view().into_dyn()));
        out.push(("ln_f.bias".to_string(), self.ln_f_bias.view().into_dyn()));
        if let Some(head) = &self.head {
            out.push(("head".to_string(), head.view().into_dyn()));
        }
        if self.block_emb.nrows() > 0 {
            out.push(("block_emb".to_string(), self.block_emb.view().into_dyn()));
        }
        if self.copy_gate_weight.nrows() > 0 {
            out.push(("copy.weight".to_string(), self.copy_gate_weight.view().into_dyn()));
            out.push(("copy.bias".to_string(), self.copy_gate_bias.view().into_dyn()));
        }
        out
    }

    pub fn named_mut(&mut self) -> Vec<(String, ArrayViewMutD<'_, F>)> {
        let mut out = vec![
            ("tok_emb".to_string(), self.tok_emb.view_mut().into_dyn()),
            ("pos_emb".to_string(), self.pos_emb.view_mut().into_dyn()),
        ];
        for (l, layer) in self.layers.iter_mut().enumerate() {
            layer.push_named_mut(l, &mut out);
        }
        out.push(("ln_f.weight".to_string(), self.ln_f_weight.view_mut().into_dyn()));
        out.push(("ln_f.bias".to_string(), self.ln_f_bias.view_mut().into_dyn()));
        if let Some(head) = &mut self.head {
            out.push(("head".to_string(), head.view_mut().into_dyn()));
        }
        if self.block_emb.nrows() > 0 {
            out.push(("block_emb".to_string(), self.block_emb.view_mut().into_dyn()));
        }
        if self.copy_gate_weight.nrows() > 0 {
            out.push(("copy.weight".to_string(), self.copy_gate_weight.view_mut().into_dyn()));
            out.push(("copy.bias".to_string(), self.copy_gate_bias.view_mut().into_dyn()));
        }
        out
    }

    pub fn parameter_count(&self) -> usize {
        self.named().iter().map(|(_, t)| t.len()).sum()
    }
}

/// `[W_Q | W_K | W_V]` and `[b_Q | b_K | b_V]`: the three projections as one product. Copying `3d²`
/// numbers per layer and step buys one large matrix product instead of three small ones.
pub(super) fn fused_qkv<F: Scalar>(w: &LayerParams<F>) -> (Array2<F>, Array1<F>) {
    let weights = ndarray::concatenate(Axis(1), &[w.wq.view(), w.wk.view(), w.wv.view()]);
    let biases = ndarray::concatenate(Axis(0), &[w.bq.view(), w.bk.view(), w.bv.view()]);
    match (weights, biases) {
        (Ok(weights), Ok(biases)) => (weights, biases),
        _ => unreachable!("the three projections share their shapes"),
    }
}
