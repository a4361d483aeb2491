//! What the device training step ([`super::step`]) asks of a device: buffers, products and the kernels
//! of [`super::kernels`], each named once as a [`Launch`].
//!
//! Two devices answer: the GPU ([`super::device::Gpu`]) and the host ([`super::host::HostDevice`]), which
//! runs the same launches as plain loops on the CPU. The host device is how the step's orchestration
//! (buffer layout, product shapes, the order of the kernels) is tested against the CPU engine on
//! machines without a GPU, and the reference each CUDA kernel is checked against where there is one:
//! the same `Launch` runs on both and their outputs are compared.

use super::gemm::{RowMajorProduct, RowStrides};

/// A run of `len` f32s at `offset` in buffer `buffer` of a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Floats {
    pub buffer: usize,
    pub offset: usize,
    pub len: usize,
}

/// A run of `len` token ids (u32) at `offset` in id buffer `buffer` of a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ids {
    pub buffer: usize,
    pub offset: usize,
    pub len: usize,
}

/// A run of `len` bytes (0 or 1 masks: covered rows, target keys, active copy rules) at `offset` in
/// byte buffer `buffer` of a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bytes {
    pub buffer: usize,
    pub offset: usize,
    pub len: usize,
}

/// Regions are cut by the step from shapes it checked when it allocated them; a cut outside its region
/// is a bug in the step, not bad input, so it panics.
fn cut(offset: usize, len: usize, within: usize) -> usize {
    assert!(offset.checked_add(len).is_some_and(|end| end <= within), "region [{offset}, +{len}) outside {within}");
    offset
}

impl Floats {
    /// `len` elements starting `offset` into this region.
    pub fn part(self, offset: usize, len: usize) -> Floats {
        Floats { buffer: self.buffer, offset: self.offset + cut(offset, len, self.len), len }
    }

    /// Everything from `offset` on.
    pub fn from(self, offset: usize) -> Floats {
        self.part(offset, self.len.saturating_sub(offset))
    }
}

impl Ids {
    pub fn part(self, offset: usize, len: usize) -> Ids {
        Ids { buffer: self.buffer, offset: self.offset + cut(offset, len, self.len), len }
    }
}

/// `c = alpha·op(a)·op(b) + beta·c` on row-major operands stored with row strides `strides`, or `batch`
/// such products whose operands start `batch_strides` elements apart (one per attention head).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gemm {
    pub product: RowMajorProduct,
    pub strides: RowStrides,
    pub batch: usize,
    /// Elements between consecutive matrices of `a`, `b` and `c`; unused when `batch` is 1.
    pub batch_strides: [usize; 3],
    pub alpha: f32,
    pub beta: f32,
    pub a: Floats,
    pub b: Floats,
    pub c: Floats,
}

impl Gemm {
    /// One product of contiguous operands.
    pub fn plain(product: RowMajorProduct, a: Floats, b: Floats, c: Floats, beta: f32) -> Gemm {
        Gemm { product, strides: product.contiguous(), batch: 1, batch_strides: [0; 3], alpha: 1.0, beta, a, b, c }
    }

    /// Elements each operand's region must hold: the last element read or written, plus one.
    pub fn extents(&self) -> [usize; 3] {
        let RowMajorProduct { m, n, k, transpose_a, transpose_b } = self.product;
        let extent = |rows: usize, cols: usize, stride: usize, batch_stride: usize| {
            if rows == 0 || cols == 0 {
                0
            } else {
                (self.batch - 1) * batch_stride + (rows - 1) * stride + cols
            }
        };
        let (a_rows, a_cols) = if transpose_a { (k, m) } else { (m, k) };
        let (b_rows, b_cols) = if transpose_b { (n, k) } else { (k, n) };
        [
            extent(a_rows, a_cols, self.strides.a, self.batch_strides[0]),
            extent(b_rows, b_cols, self.strides.b, self.batch_strides[1]),
            extent(m, n, self.strides.c, self.batch_strides[2]),
        ]
    }

    /// Refuses a product whose operands would be read or written outside their regions, or whose
    /// stored rows are narrower than the matrices.
    pub fn validate(&self) -> Result<(), String> {
        let RowMajorProduct { m, n, k, transpose_a, transpose_b } = self.product;
        let widths = [if transpose_a { m } else { k }, if transpose_b { k } else { n }, n];
        let strides = [self.strides.a, self.strides.b, self.strides.c];
        if self.batch == 0 || widths.iter().zip(&strides).any(|(w, s)| s < w) {
            return Err(format!(
                "a [{m}, {k}]·[{k}, {n}] product with row strides {strides:?} and batch {}",
                self.batch
            ));
        }
        for (name, (extent, region)) in ["a", "b", "c"].iter().zip(self.extents().iter().zip([self.a, self.b, self.c]))
        {
            if *extent > region.len {
                return Err(format!(
                    "operand {name} of a [{m}, {k}]·[{k}, {n}] product needs {extent} elements, has {}",
                    region.len
                ));
            }
        }
        Ok(())
    }
}

/// One kernel of [`super::kernels::KERNELS`] with its arguments, in the shapes' letters of
/// `src/engine/mod.rs`. Lengths not given are the output region's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Launch {
    /// `x [N, d] = wte[tokens] + wpe[n mod T]`.
    EmbeddingForward {
        x: Floats,
        tokens: Ids,
        wte: Floats,
        wpe: Floats,
        rows: usize,
        seq_len: usize,
        width: usize,
    },
    /// `dwpe [T, d] += Σ_b dx[b·T + t]`.
    EmbeddingBackwardPositions {
        dwpe: Floats,
        dx: Floats,
        batch: usize,
        seq_len: usize,
        width: usize,
    },
    /// `dwte[tokens[n]] += dx[n]`.
    EmbeddingBackwardTokens {
        dwte: Floats,
        dx: Floats,
        tokens: Ids,
        rows: usize,
        width: usize,
    },
    /// `out = a + b`.
    ResidualAdd {
        out: Floats,
        a: Floats,
        b: Floats,
    },
    /// `out[n·ld + c] = bias[c] (+ base[n·d + c])`.
    BroadcastRows {
        out: Floats,
        base: Option<Floats>,
        bias: Floats,
        rows: usize,
        width: usize,
        row_stride: usize,
    },
    LayerNormForward {
        y: Floats,
        normalized: Floats,
        rstd: Floats,
        x: Floats,
        weight: Floats,
        bias: Floats,
        rows: usize,
        width: usize,
        eps: f32,
    },
    /// The input gradient only; the gain's and bias's are [`Launch::ColumnSumProduct`] and [`Launch::ColumnSum`].
    LayerNormBackward {
        dx: Floats,
        dy: Floats,
        normalized: Floats,
        rstd: Floats,
        weight: Floats,
        rows: usize,
        width: usize,
    },
    /// `out[c] += Σ_n a[n·ld + c]`.
    ColumnSum {
        out: Floats,
        a: Floats,
        rows: usize,
        width: usize,
        row_stride: usize,
    },
    /// `out[c] += Σ_n a[n, c]·b[n, c]`.
    ColumnSumProduct {
        out: Floats,
        a: Floats,
        b: Floats,
        rows: usize,
        width: usize,
    },
    GeluForward {
        y: Floats,
        x: Floats,
    },
    GeluBackward {
        dx: Floats,
        dy: Floats,
        x: Floats,
    },
    /// The causal softmax in place on `rows = B·H·T` rows of `T` scaled scores, with no locality bias.
    AttentionSoftmaxForward {
        att: Floats,
        rows: usize,
        seq_len: usize,
    },
    /// Through the softmax, in place on `datt`.
    AttentionSoftmaxBackward {
        datt: Floats,
        att: Floats,
        rows: usize,
        seq_len: usize,
    },
    /// The causal softmax with the locality bias (METHOD §3) on covered rows: `s/τ − bias_row` on keys
    /// outside the row's targets, `s/τ` on its targets; `covered [rows]`, `targets [rows, T]`,
    /// `bias [rows]`.
    AttentionSoftmaxLocal {
        att: Floats,
        covered: Bytes,
        targets: Bytes,
        bias: Floats,
        inv_tau: f32,
        rows: usize,
        seq_len: usize,
    },
    /// Through [`Launch::AttentionSoftmaxLocal`]: the softmax's backward, times `1/τ` on covered rows.
    AttentionSoftmaxLocalBackward {
        datt: Floats,
        att: Floats,
        covered: Bytes,
        inv_tau: f32,
        rows: usize,
        seq_len: usize,
    },
    /// The group-sparsity penalty (METHOD §4) per covered row into `penalty [rows]`, and its gradient
    /// added into `datt` when given; `blocks [B, T]` is each key's block, `block_count` of them.
    AttentionPenalty {
        datt: Option<Floats>,
        penalty: Floats,
        att: Floats,
        covered: Bytes,
        targets: Bytes,
        blocks: Ids,
        weight: f32,
        heads: usize,
        seq_len: usize,
        block_count: usize,
        rows: usize,
    },
    /// The copy paths' gates (METHOD §4): `w [N, C]` and `w₀ [N]` from the gate logits `z [N, C]`, the
    /// rules active at each row and their strengths `[C]`, at the dial `λ`.
    CopyGates {
        w: Floats,
        w0: Floats,
        z: Floats,
        active: Bytes,
        strength: Floats,
        lambda: f32,
        rows: usize,
        rules: usize,
    },
    /// `∂CE/∂z [N, C]` from the gates, each rule's `κ_c(y)` and the mixture's `p(y) [N]`.
    CopyGatesBackward {
        dz: Floats,
        w: Floats,
        kappa_y: Floats,
        p: Floats,
        grad_scale: f32,
        rows: usize,
        rules: usize,
    },
    /// The fused output loss on `rows` rows of logits `[rows, V]`, replaced by `grad_scale·∂CE/∂logits`.
    CrossEntropy {
        logits: Floats,
        loss: Floats,
        probability: Floats,
        targets: Ids,
        w0: Floats,
        copy_mass: Floats,
        grad_scale: f32,
        rows: usize,
        vocab: usize,
    },
    /// One AdamW update of a tensor (its gradient `g` scaled by `clip` first).
    AdamW {
        p: Floats,
        g: Floats,
        m: Floats,
        v: Floats,
        clip: f32,
        beta1: f32,
        beta2: f32,
        decay: f32,
        step_size: f32,
        inv_sqrt_bias2: f32,
        eps: f32,
    },
}

impl Launch {
    /// The kernel's name in [`super::kernels::KERNELS`].
    pub fn kernel(&self) -> &'static str {
        match self {
            Launch::EmbeddingForward { .. } => "embedding_forward",
            Launch::EmbeddingBackwardPositions { .. } => "embedding_backward_positions",
            Launch::EmbeddingBackwardTokens { .. } => "embedding_backward_tokens",
            Launch::ResidualAdd { .. } => "residual_add",
            Launch::BroadcastRows { .. } => "broadcast_rows",
            Launch::LayerNormForward { .. } => "layernorm_forward",
            Launch::LayerNormBackward { .. } => "layernorm_backward",
            Launch::ColumnSum { .. } => "column_sum",
            Launch::ColumnSumProduct { .. } => "column_sum_product",
            Launch::GeluForward { .. } => "gelu_forward",
            Launch::GeluBackward { .. } => "gelu_backward",
            Launch::AttentionSoftmaxForward { .. } => "attention_softmax_forward",
            Launch::AttentionSoftmaxBackward { .. } | Launch::AttentionSoftmaxLocalBackward { .. } => {
                "attention_softmax_backward"
            }
            Launch::AttentionSoftmaxLocal { .. } => "attention_softmax_forward",
            Launch::AttentionPenalty { .. } => "attention_penalty",
            Launch::CopyGates { .. } => "copy_gates",
            Launch::CopyGatesBackward { .. } => "copy_gates_backward",
            Launch::CrossEntropy { .. } => "crossentropy_copy",
            Launch::AdamW { .. } => "adamw",
        }
    }

    /// Refuses a launch whose regions are too small for its sizes, before any device touches memory.
    pub fn validate(&self) -> Result<(), String> {
        let need = |what: &str, region_len: usize, elements: usize| {
            if region_len < elements {
                Err(format!("{}: {what} holds {region_len} elements, needs {elements}", self.kernel()))
            } else {
                Ok(())
            }
        };
        let strided =
            |rows: usize, width: usize, stride: usize| if rows == 0 { 0 } else { (rows - 1) * stride + width };
        match *self {
            Launch::EmbeddingForward { x, tokens, wte, wpe, rows, seq_len, width } => {
                need("x", x.len, rows * width)?;
                need("tokens", tokens.len, rows)?;
                need("wpe", wpe.len, seq_len.min(rows) * width)?;
                need("wte", wte.len, width)
            }
            Launch::EmbeddingBackwardPositions { dwpe, dx, batch, seq_len, width } => {
                need("dwpe", dwpe.len, seq_len * width)?;
                need("dx", dx.len, batch * seq_len * width)
            }
            Launch::EmbeddingBackwardTokens { dwte, dx, tokens, rows, width } => {
                need("dx", dx.len, rows * width)?;
                need("tokens", tokens.len, rows)?;
                need("dwte", dwte.len, width)
            }
            Launch::ResidualAdd { out, a, b } => {
                need("a", a.len, out.len)?;
                need("b", b.len, out.len)
            }
            Launch::BroadcastRows { out, base, bias, rows, width, row_stride } => {
                need("out", out.len, strided(rows, width, row_stride))?;
                need("bias", bias.len, width)?;
                base.map_or(Ok(()), |base| need("base", base.len, rows * width))
            }
            Launch::LayerNormForward { y, normalized, rstd, x, weight, bias, rows, width, .. } => {
                for (what, region) in [("y", y), ("normalized", normalized), ("x", x)] {
                    need(what, region.len, rows * width)?;
                }
                need("rstd", rstd.len, rows)?;
                need("weight", weight.len, width)?;
                need("bias", bias.len, width)
            }
            Launch::LayerNormBackward { dx, dy, normalized, rstd, weight, rows, width } => {
                for (what, region) in [("dx", dx), ("dy", dy), ("normalized", normalized)] {
                    need(what, region.len, rows * width)?;
                }
                need("rstd", rstd.len, rows)?;
                need("weight", weight.len, width)
            }
            Launch::ColumnSum { out, a, rows, width, row_stride } => {
                need("out", out.len, width)?;
                need("a", a.len, strided(rows, width, row_stride))
            }
            Launch::ColumnSumProduct { out, a, b, rows, width } => {
                need("out", out.len, width)?;
                need("a", a.len, rows * width)?;
                need("b", b.len, rows * width)
            }
            Launch::GeluForward { y, x } => need("x", x.len, y.len),
            Launch::GeluBackward { dx, dy, x } => {
                need("dy", dy.len, dx.len)?;
                need("x", x.len, dx.len)
            }
            Launch::AttentionSoftmaxForward { att, rows, seq_len } => need("att", att.len, rows * seq_len),
            Launch::AttentionSoftmaxBackward { datt, att, rows, seq_len } => {
                need("datt", datt.len, rows * seq_len)?;
                need("att", att.len, rows * seq_len)
            }
            Launch::AttentionSoftmaxLocal { att, covered, targets, bias, rows, seq_len, .. } => {
                need("att", att.len, rows * seq_len)?;
                need("covered", covered.len, rows)?;
                need("targets", targets.len, rows * seq_len)?;
                need("bias", bias.len, rows)
            }
            Launch::AttentionSoftmaxLocalBackward { datt, att, covered, rows, seq_len, .. } => {
                need("datt", datt.len, rows * seq_len)?;
                need("att", att.len, rows * seq_len)?;
                need("covered", covered.len, rows)
            }
            Launch::AttentionPenalty {
                datt,
                penalty,
                att,
                covered,
                targets,
                blocks,
                heads,
                seq_len,
                block_count,
                rows,
                ..
            } => {
                need("att", att.len, rows * seq_len)?;
                need("penalty", penalty.len, rows)?;
                need("covered", covered.len, rows)?;
                need("targets", targets.len, rows * seq_len)?;
                let sequences = rows.div_ceil((heads * seq_len).max(1));
                need("blocks", blocks.len, sequences * seq_len)?;
                if block_count == 0 {
                    return Err("attention_penalty: no block".into());
                }
                datt.map_or(Ok(()), |datt| need("datt", datt.len, rows * seq_len))
            }
            Launch::CopyGates { w, w0, z, active, strength, rows, rules, .. } => {
                need("w", w.len, rows * rules)?;
                need("w0", w0.len, rows)?;
                need("z", z.len, rows * rules)?;
                need("active", active.len, rows * rules)?;
                need("strength", strength.len, rules)
            }
            Launch::CopyGatesBackward { dz, w, kappa_y, p, rows, rules, .. } => {
                for (what, len) in [("dz", dz.len), ("w", w.len), ("kappa_y", kappa_y.len)] {
                    need(what, len, rows * rules)?;
                }
                need("p", p.len, rows)
            }
            Launch::CrossEntropy { logits, loss, probability, targets, w0, copy_mass, rows, vocab, .. } => {
                need("logits", logits.len, rows * vocab)?;
                for (what, len) in
                    [("loss", loss.len), ("probability", probability.len), ("w0", w0.len), ("copy_mass", copy_mass.len)]
                {
                    need(what, len, rows)?;
                }
                need("targets", targets.len, rows)
            }
            Launch::AdamW { p, g, m, v, .. } => {
                for (what, region) in [("g", g), ("m", m), ("v", v)] {
                    need(what, region.len, p.len)?;
                }
                Ok(())
            }
        }
    }
}

/// A device's answer: the error in words (a driver or cuBLAS status, or a refused launch).
pub type DeviceResult<T> = Result<T, String>;

/// Buffers, products and kernels: everything the step runs, on whichever device.
pub trait Device {
    /// The device in words, for reports and errors.
    fn describe(&self) -> String;
    /// A new buffer of `len` zeros.
    fn alloc(&mut self, len: usize) -> DeviceResult<Floats>;
    /// A new id buffer of `len` zeros.
    fn alloc_ids(&mut self, len: usize) -> DeviceResult<Ids>;
    fn upload(&mut self, dst: Floats, data: &[f32]) -> DeviceResult<()>;
    fn upload_ids(&mut self, dst: Ids, data: &[u32]) -> DeviceResult<()>;
    /// A new byte buffer of `len` zeros.
    fn alloc_bytes(&mut self, len: usize) -> DeviceResult<Bytes>;
    fn upload_bytes(&mut self, dst: Bytes, data: &[u8]) -> DeviceResult<()>;
    /// Waits for the work queued so far, then copies `src` to the host.
    fn download(&mut self, src: Floats) -> DeviceResult<Vec<f32>>;
    fn zero(&mut self, dst: Floats) -> DeviceResult<()>;
    fn gemm(&mut self, gemm: &Gemm) -> DeviceResult<()>;
    fn launch(&mut self, launch: &Launch) -> DeviceResult<()>;
    /// `Σ g²` over the region, summed in f64 on the host from per-block partial sums.
    fn squared_norm(&mut self, g: Floats) -> DeviceResult<f64>;
    /// Waits until everything queued has run (for timing; downloads wait by themselves).
    fn synchronize(&mut self) -> DeviceResult<()>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(len: usize) -> Floats {
        Floats { buffer: 0, offset: 0, len }
    }

    #[test]
    fn a_product_is_refused_when_an_operand_region_is_short_or_its_rows_too_narrow() {
        let product = RowMajorProduct { m: 4, n: 3, k: 2, transpose_a: false, transpose_b: true };
        let fine = Gemm::plain(product, region(8), region(6), region(12), 0.0);
        assert_eq!(fine.extents(), [8, 6, 12]);
        assert!(fine.validate().is_ok());
        let short = Gemm { b: region(5), ..fine };
        assert!(short.validate().unwrap_err().contains("operand b"), "{:?}", short.validate());
        let narrow = Gemm { strides: RowStrides { a: 1, ..fine.strides }, ..fine };
        assert!(narrow.validate().is_err());
        // a head's q inside [q | k | v]: rows 3·width apart, heads `width` apart
        let head = Gemm {
            strides: RowStrides { a: 6, b: 6, c: 4 },
            batch: 3,
            batch_strides: [2, 2, 12],
            product: RowMajorProduct { m: 4, n: 4, k: 2, transpose_a: false, transpose_b: true },
            ..fine
        };
        assert_eq!(head.extents(), [2 * 2 + 3 * 6 + 2, 2 * 2 + 3 * 6 + 2, 2 * 12 + 3 * 4 + 4]);
    }

    #[test]
    fn a_launch_is_refused_when_a_region_is_too_small() {
        let launch = Launch::ColumnSum { out: region(3), a: region(10), rows: 4, width: 3, row_stride: 3 };
        assert!(launch.validate().unwrap_err().contains("column_sum: a holds 10 elements, needs 12"));
        let launch = Launch::ColumnSum { out: region(3), a: region(12), rows: 4, width: 3, row_stride: 3 };
        assert!(launch.validate().is_ok());
    }

    #[test]
    fn cut_regions_stay_inside_their_parent() {
        let parent = Floats { buffer: 2, offset: 10, len: 8 };
        assert_eq!(parent.part(3, 5), Floats { buffer: 2, offset: 13, len: 5 });
        assert_eq!(parent.from(6), Floats { buffer: 2, offset: 16, len: 2 });
        assert!(std::panic::catch_unwind(|| parent.part(4, 5)).is_err());
    }
}
