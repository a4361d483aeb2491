//! One transformer block, forward and backward, as one parallel task per group of whole sequences.
//!
//! Everything in a block is local to a row except attention, which is local to a sequence. A task that
//! owns whole sequences therefore runs both LayerNorms, the projections, attention, GELU and the
//! residual adds for its rows without meeting another task; splitting each product in turn had the
//! threads meet a dozen times per block, and on small models the waiting cost more than the products.
//! The groups are fixed by the shapes (never by the thread count), so results are the same with any
//! number of threads. Weight gradients need every row: each is one product over the whole batch
//! ([`backward_weights`]), split by [`crate::engine::linalg::product`] in a way fixed by the shapes.

use ndarray::{s, Array1, Array2, ArrayView1, ArrayView2, ArrayViewMut1, ArrayViewMut2, Axis};
use rayon::prelude::*;

use super::{fused_qkv, LayerCache, LayerParams};
use crate::engine::attention::{attend, attend_backward, AttentionCache, AttentionHook, AttentionSite, CAUSAL_BLOCK};
use crate::engine::buffers::{recycle, scratch};
use crate::engine::kernels;
use crate::engine::layernorm::{layernorm_rows, LayerNormCache};
use crate::engine::linalg::{init_blas, product};
use crate::engine::Scalar;

/// Rows a task aims for: enough that its products run near BLAS's full speed, few enough that a batch
/// gives every core work. A task holds at least one whole sequence.
const ROWS_PER_TASK: usize = 256;

/// How a pass splits `batch` sequences of `seq_len` positions into tasks.
#[derive(Debug, Clone, Copy)]
pub struct LayerSplit {
    pub batch: usize,
    pub seq_len: usize,
    pub heads: usize,
    pub layer: usize,
    /// Whole sequences per task (the last task may have fewer).
    pub sequences_per_task: usize,
}

impl LayerSplit {
    pub fn new(batch: usize, seq_len: usize, heads: usize, layer: usize) -> Self {
        let sequences_per_task = (ROWS_PER_TASK / seq_len.max(1)).max(1);
        LayerSplit { batch, seq_len, heads, layer, sequences_per_task }
    }

    fn rows_per_task(&self) -> usize {
        self.sequences_per_task * self.seq_len
    }
}

fn row_chunks<F>(a: &mut Array2<F>, rows: usize) -> std::vec::IntoIter<ArrayViewMut2<'_, F>> {
    a.axis_chunks_iter_mut(Axis(0), rows).collect::<Vec<_>>().into_iter()
}

fn next<T>(chunks: &mut impl Iterator<Item = T>) -> T {
    chunks.next().unwrap_or_else(|| unreachable!("every array has one chunk per task"))
}

fn as_slice<'a, F>(view: &'a ArrayView1<F>) -> &'a [F] {
    view.as_slice().unwrap_or_else(|| unreachable!("parameter vectors are contiguous"))
}

/// `rows ← broadcast(bias)` (and `+ base` when given): the `C` of a `C ← A·B + C` product.
fn fill_rows<F: Scalar>(mut out: ArrayViewMut2<F>, bias: &[F], base: Option<ArrayView2<F>>) {
    for (i, mut row) in out.rows_mut().into_iter().enumerate() {
        let row = row.as_slice_mut().unwrap_or_else(|| unreachable!("activation rows are contiguous"));
        match base.as_ref().and_then(|base| base.row(i).to_slice()) {
            Some(base) => row.iter_mut().zip(base.iter().zip(bias)).for_each(|(o, (&x, &b))| *o = x + b),
            None if base.is_some() => unreachable!("activation rows are contiguous"),
            None => row.copy_from_slice(bias),
        }
    }
}

/// The rows of one task in every activation the block keeps.
struct ForwardRows<'a, F> {
    ln1_normalized: ArrayViewMut2<'a, F>,
    ln1_rstd: ArrayViewMut1<'a, F>,
    z1: ArrayViewMut2<'a, F>,
    qkv: ArrayViewMut2<'a, F>,
    y_att: ArrayViewMut2<'a, F>,
    ln2_normalized: ArrayViewMut2<'a, F>,
    ln2_rstd: ArrayViewMut1<'a, F>,
    z2: ArrayViewMut2<'a, F>,
    a1: ArrayViewMut2<'a, F>,
    /// `tanh u` of the GELU, for the backward pass; `None` where no backward follows (evaluation),
    /// which then stores only `g`.
    gelu_tanh: Option<ArrayViewMut2<'a, F>>,
    g: ArrayViewMut2<'a, F>,
    output: ArrayViewMut2<'a, F>,
}

/// `x [N, d]` → the block's cache, whose `output` is `x'`; returns the hook's penalty beside it.
pub fn layer_forward<F: Scalar>(
    x: ArrayView2<F>,
    w: &LayerParams<F>,
    eps: F,
    split: LayerSplit,
    hook: &dyn AttentionHook<F>,
) -> (LayerCache<F>, F) {
    init_blas();
    let (n, d) = x.dim();
    let ff = w.w1.ncols();
    let x = x.as_standard_layout();
    let (w_qkv, b_qkv) = fused_qkv(w);
    let rows = split.rows_per_task();
    // every element of these is written by the tasks below before anything reads it
    let scratch = |width: usize| scratch::<F>(n, width);
    let (mut ln1_normalized, mut z1, mut qkv, mut y_att) = (scratch(d), scratch(d), scratch(3 * d), scratch(d));
    let (mut ln2_normalized, mut z2, mut output) = (scratch(d), scratch(d), scratch(d));
    let (mut a1, mut gelu_tanh, mut g) = (scratch(ff), scratch(ff), scratch(ff));
    let (mut ln1_rstd, mut ln2_rstd) = (Array1::<F>::zeros(n), Array1::<F>::zeros(n));
    let tasks: Vec<ForwardRows<F>> = {
        let mut chunks = [
            row_chunks(&mut ln1_normalized, rows),
            row_chunks(&mut z1, rows),
            row_chunks(&mut qkv, rows),
            row_chunks(&mut y_att, rows),
            row_chunks(&mut ln2_normalized, rows),
            row_chunks(&mut z2, rows),
            row_chunks(&mut a1, rows),
            row_chunks(&mut gelu_tanh, rows),
            row_chunks(&mut g, rows),
            row_chunks(&mut output, rows),
        ];
        let mut rstd1 = ln1_rstd.axis_chunks_iter_mut(Axis(0), rows);
        let mut rstd2 = ln2_rstd.axis_chunks_iter_mut(Axis(0), rows);
        (0..n.div_ceil(rows))
            .map(|_| {
                let [c0, c1, c2, c3, c4, c5, c6, c7, c8, c9] = &mut chunks;
                ForwardRows {
                    ln1_normalized: next(c0),
                    ln1_rstd: next(&mut rstd1),
                    z1: next(c1),
                    qkv: next(c2),
                    y_att: next(c3),
                    ln2_normalized: next(c4),
                    ln2_rstd: next(&mut rstd2),
                    z2: next(c5),
                    a1: next(c6),
                    gelu_tanh: Some(next(c7)),
                    g: next(c8),
                    output: next(c9),
                }
            })
            .collect()
    };
    let per_task: Vec<(Vec<Array2<F>>, F)> = tasks
        .into_par_iter()
        .enumerate()
        .map(|(task, out)| {
            let x = x.slice(s![task * rows..(task * rows + rows).min(n), ..]);
            forward_rows(x, w, w_qkv.view(), b_qkv.view(), eps, out, task * split.sequences_per_task, split, hook)
        })
        .collect();
    let mut weights = Vec::with_capacity(split.batch * split.heads);
    let mut penalty = F::zero();
    for (task_weights, task_penalty) in per_task {
        weights.extend(task_weights);
        penalty += task_penalty;
    }
    let cache = LayerCache {
        ln1: LayerNormCache { normalized: ln1_normalized, rstd: ln1_rstd },
        z1,
        qkv,
        w_qkv,
        attention: AttentionCache { weights },
        y_att,
        ln2: LayerNormCache { normalized: ln2_normalized, rstd: ln2_rstd },
        z2,
        a1,
        gelu_tanh,
        g,
        output,
    };
    (cache, penalty)
}

/// [`layer_forward`] keeping nothing but the block's output `x' [N, d]` (and the hook's penalty): for
/// evaluation. Each task's intermediate activations live in buffers of its own rows, taken from the
/// pool and returned to it as soon as the task ends, so the next task on the core writes to memory
/// still in its cache instead of to a fresh `[N, ·]` array per activation. The arithmetic is
/// [`forward_rows`]'s, so `x'` has the same bits as [`layer_forward`]'s.
pub fn layer_forward_output<F: Scalar>(
    x: ArrayView2<F>,
    w: &LayerParams<F>,
    eps: F,
    split: LayerSplit,
    hook: &dyn AttentionHook<F>,
) -> (Array2<F>, F) {
    init_blas();
    let (n, d) = x.dim();
    let ff = w.w1.ncols();
    let x = x.as_standard_layout();
    let (w_qkv, b_qkv) = fused_qkv(w);
    let rows = split.rows_per_task();
    let mut output = scratch::<F>(n, d);
    let chunks: Vec<ArrayViewMut2<F>> = output.axis_chunks_iter_mut(Axis(0), rows).collect();
    let penalties: Vec<F> = chunks
        .into_par_iter()
        .enumerate()
        .map(|(task, output)| {
            let task_rows = output.nrows();
            let local = |width: usize| scratch::<F>(task_rows, width);
            let (mut ln1_normalized, mut z1, mut qkv, mut y_att) = (local(d), local(d), local(3 * d), local(d));
            let (mut ln2_normalized, mut z2) = (local(d), local(d));
            let (mut a1, mut g) = (local(ff), local(ff));
            let (mut ln1_rstd, mut ln2_rstd) = (Array1::<F>::zeros(task_rows), Array1::<F>::zeros(task_rows));
            let out = ForwardRows {
                ln1_normalized: ln1_normalized.view_mut(),
                ln1_rstd: ln1_rstd.view_mut(),
                z1: z1.view_mut(),
                qkv: qkv.view_mut(),
                y_att: y_att.view_mut(),
                ln2_normalized: ln2_normalized.view_mut(),
                ln2_rstd: ln2_rstd.view_mut(),
                z2: z2.view_mut(),
                a1: a1.view_mut(),
                gelu_tanh: None,
                g: g.view_mut(),
                output,
            };
            let x = x.slice(s![task * rows..task * rows + task_rows, ..]);
            let first_sequence = task * split.sequences_per_task;
            let (weights, penalty) =
                forward_rows(x, w, w_qkv.view(), b_qkv.view(), eps, out, first_sequence, split, hook);
            for buffer in [ln1_normalized, z1, qkv, y_att, ln2_normalized, z2, a1, g].into_iter().chain(weights) {
                recycle(buffer);
            }
            penalty
        })
        .collect();
    // the penalties in task order, as layer_forward sums them
    let penalty = penalties.into_iter().fold(F::zero(), |total, p| total + p);
    (output, penalty)
}

/// The block on one task's rows, `first_sequence` being the batch index of its first sequence.
#[allow(clippy::too_many_arguments)]
fn forward_rows<F: Scalar>(
    x: ArrayView2<F>,
    w: &LayerParams<F>,
    w_qkv: ArrayView2<F>,
    b_qkv: ArrayView1<F>,
    eps: F,
    mut out: ForwardRows<F>,
    first_sequence: usize,
    split: LayerSplit,
    hook: &dyn AttentionHook<F>,
) -> (Vec<Array2<F>>, F) {
    let (rows, d) = x.dim();
    let (t_len, hs) = (split.seq_len, d / split.heads);
    // z₁ = LN₁(x); [q | k | v] = z₁·W_QKV + b_QKV
    let (ln1_w, ln1_b) = (w.ln1_weight.view(), w.ln1_bias.view());
    layernorm_rows(x, as_slice(&ln1_w), as_slice(&ln1_b), eps, out.ln1_normalized, out.ln1_rstd, out.z1.view_mut());
    fill_rows(out.qkv.view_mut(), as_slice(&b_qkv), None);
    F::local_product(out.z1.view(), w_qkv, true, out.qkv.view_mut());
    // attention, one (sequence, head) at a time
    let mut weights = Vec::with_capacity(rows / t_len * split.heads);
    let mut penalty = F::zero();
    for local in 0..rows / t_len {
        let sequence_rows = local * t_len..(local + 1) * t_len;
        for head in 0..split.heads {
            let site = AttentionSite { layer: split.layer, head, sequence: first_sequence + local };
            let columns = |part: usize| part * d + head * hs..part * d + (head + 1) * hs;
            let (q, k, v) = (
                out.qkv.slice(s![sequence_rows.clone(), columns(0)]),
                out.qkv.slice(s![sequence_rows.clone(), columns(1)]),
                out.qkv.slice(s![sequence_rows.clone(), columns(2)]),
            );
            let y = out.y_att.slice_mut(s![sequence_rows.clone(), head * hs..(head + 1) * hs]);
            let (alpha, head_penalty) = attend(q, k, v, y, site, hook, CAUSAL_BLOCK);
            weights.push(alpha);
            penalty += head_penalty;
        }
    }
    // h = x + y_att·W_O + b_O
    let mut h = scratch(rows, d);
    fill_rows(h.view_mut(), as_slice(&w.bo.view()), Some(x));
    F::local_product(out.y_att.view(), w.wo.view(), true, h.view_mut());
    // z₂ = LN₂(h); a₁ = z₂·W₁ + b₁; g = GELU(a₁); x' = h + g·W₂ + b₂
    let (ln2_w, ln2_b) = (w.ln2_weight.view(), w.ln2_bias.view());
    layernorm_rows(
        h.view(),
        as_slice(&ln2_w),
        as_slice(&ln2_b),
        eps,
        out.ln2_normalized,
        out.ln2_rstd,
        out.z2.view_mut(),
    );
    fill_rows(out.a1.view_mut(), as_slice(&w.b1.view()), None);
    F::local_product(out.z2.view(), w.w1.view(), true, out.a1.view_mut());
    let (Some(a1), Some(g)) = (out.a1.as_slice(), out.g.as_slice_mut()) else {
        unreachable!("a task's rows of standard-layout matrices are contiguous")
    };
    // evaluation (no tanh kept) stores only g: the same products, one [R, F] stream of stores fewer
    match out.gelu_tanh.as_mut().map(|t| t.as_slice_mut()) {
        Some(Some(t)) => kernels::gelu_keeping_tanh_slice(a1, g, t),
        Some(None) => unreachable!("a task's rows of standard-layout matrices are contiguous"),
        None => kernels::gelu_slice(a1, g),
    }
    fill_rows(out.output.view_mut(), as_slice(&w.b2.view()), Some(h.view()));
    F::local_product(out.g.view(), w.w2.view(), true, out.output.view_mut());
    recycle(h);
    (weights, penalty)
}

/// The rows of one task in the gradients the block's backward produces.
struct BackwardRows<'a, F> {
    /// `[R, d]` `∂J/∂x`, the gradient passed to the block below.
    dx_in: ArrayViewMut2<'a, F>,
    /// `[R, F]` `∂J/∂a₁`.
    da1: ArrayViewMut2<'a, F>,
    /// `[R, d]` `∂J/∂h`.
    dh: ArrayViewMut2<'a, F>,
    /// `[R, 3d]` `[∂q | ∂k | ∂v]`.
    d_qkv: ArrayViewMut2<'a, F>,
}

/// A task's share of the small gradients that sum over rows: biases and LayerNorm gains.
struct RowSums<F> {
    b2: Vec<F>,
    b1: Vec<F>,
    bo: Vec<F>,
    b_qkv: Vec<F>,
    ln1_weight: Vec<F>,
    ln1_bias: Vec<F>,
    ln2_weight: Vec<F>,
    ln2_bias: Vec<F>,
}

fn add_into<F: Scalar>(mut total: ArrayViewMut1<F>, part: &[F]) {
    total.iter_mut().zip(part).for_each(|(t, &p)| *t += p);
}

/// `dx [N, d]` (`∂J/∂x'`) and the block's cache → `∂J/∂x [N, d]`, accumulating the block's gradients
/// into `grads`.
pub fn layer_backward<F: Scalar>(
    dx: ArrayView2<F>,
    cache: &LayerCache<F>,
    w: &LayerParams<F>,
    grads: &mut LayerParams<F>,
    split: LayerSplit,
    hook: &dyn AttentionHook<F>,
) -> Array2<F> {
    init_blas();
    let (n, d) = dx.dim();
    let ff = w.w1.ncols();
    let dx = dx.as_standard_layout();
    let rows = split.rows_per_task();
    // the tasks write every element of these (∂qkv accumulates: each task zeroes its rows first)
    let (mut dx_in, mut da1, mut dh, mut d_qkv) = (scratch(n, d), scratch(n, ff), scratch(n, d), scratch(n, 3 * d));
    let tasks: Vec<BackwardRows<F>> = {
        let (mut c_dx, mut c_da1) = (row_chunks(&mut dx_in, rows), row_chunks(&mut da1, rows));
        let (mut c_dh, mut c_qkv) = (row_chunks(&mut dh, rows), row_chunks(&mut d_qkv, rows));
        (0..n.div_ceil(rows))
            .map(|_| BackwardRows {
                dx_in: next(&mut c_dx),
                da1: next(&mut c_da1),
                dh: next(&mut c_dh),
                d_qkv: next(&mut c_qkv),
            })
            .collect()
    };
    let transposed = TransposedWeights::of(w, cache);
    let sums: Vec<RowSums<F>> = tasks
        .into_par_iter()
        .enumerate()
        .map(|(task, out)| {
            let range = task * rows..(task * rows + rows).min(n);
            backward_rows(
                dx.slice(s![range.clone(), ..]),
                cache,
                range,
                w,
                &transposed,
                out,
                task * split.sequences_per_task,
                split,
                hook,
            )
        })
        .collect();
    for part in sums {
        add_into(grads.b2.view_mut(), &part.b2);
        add_into(grads.b1.view_mut(), &part.b1);
        add_into(grads.bo.view_mut(), &part.bo);
        add_into(grads.bq.view_mut(), &part.b_qkv[..d]);
        add_into(grads.bk.view_mut(), &part.b_qkv[d..2 * d]);
        add_into(grads.bv.view_mut(), &part.b_qkv[2 * d..]);
        add_into(grads.ln1_weight.view_mut(), &part.ln1_weight);
        add_into(grads.ln1_bias.view_mut(), &part.ln1_bias);
        add_into(grads.ln2_weight.view_mut(), &part.ln2_weight);
        add_into(grads.ln2_bias.view_mut(), &part.ln2_bias);
    }
    backward_weights(dx.view(), da1.view(), dh.view(), d_qkv.view(), cache, grads);
    for array in [da1, dh, d_qkv] {
        recycle(array);
    }
    transposed.recycle();
    dx_in
}

/// The block's weights transposed into rows, once per backward pass: every task multiplies by them, and
/// a transposed view would be gathered into rows again inside each task's products (4 % of a
/// char-small training step).
struct TransposedWeights<F: Scalar> {
    w2: Array2<F>,
    w1: Array2<F>,
    wo: Array2<F>,
    w_qkv: Array2<F>,
}

impl<F: Scalar> TransposedWeights<F> {
    fn of(w: &LayerParams<F>, cache: &LayerCache<F>) -> Self {
        let transpose = |weight: &Array2<F>| {
            let mut rows = scratch(weight.ncols(), weight.nrows());
            rows.assign(&weight.t());
            rows
        };
        TransposedWeights {
            w2: transpose(&w.w2),
            w1: transpose(&w.w1),
            wo: transpose(&w.wo),
            w_qkv: transpose(&cache.w_qkv),
        }
    }

    fn recycle(self) {
        for array in [self.w2, self.w1, self.wo, self.w_qkv] {
            recycle(array);
        }
    }
}

/// Column sums of a block of rows, in row order.
fn column_sums<F: Scalar>(rows: ArrayView2<F>) -> Vec<F> {
    let mut total = vec![F::zero(); rows.ncols()];
    match rows.as_slice() {
        Some(flat) => kernels::add_column_sums(flat, &mut total),
        None => rows.rows().into_iter().for_each(|row| total.iter_mut().zip(row).for_each(|(t, &v)| *t += v)),
    }
    total
}

fn rows_of<'a, F>(a: &'a Array2<F>, range: &std::ops::Range<usize>) -> ArrayView2<'a, F> {
    a.slice(s![range.clone(), ..])
}

/// The chain rule through one task's rows; `range` locates them in the cache.
#[allow(clippy::too_many_arguments)]
fn backward_rows<'c, F: Scalar>(
    dx: ArrayView2<F>,
    cache: &'c LayerCache<F>,
    range: std::ops::Range<usize>,
    w: &LayerParams<F>,
    transposed: &TransposedWeights<F>,
    mut out: BackwardRows<F>,
    first_sequence: usize,
    split: LayerSplit,
    hook: &dyn AttentionHook<F>,
) -> RowSums<F> {
    let (rows, d) = dx.dim();
    let ff = w.w1.ncols();
    let (t_len, hs) = (split.seq_len, d / split.heads);
    let at = |a: &'c Array2<F>| rows_of(a, &range);
    let zero_d = vec![F::zero(); d];
    let (mut ln1_weight, mut ln1_bias, mut ln2_weight, mut ln2_bias) =
        (zero_d.clone(), zero_d.clone(), zero_d.clone(), zero_d.clone());
    // x' = h + g·W₂ + b₂  →  ∂g = ∂x'·W₂ᵀ; g = GELU(a₁)
    let mut dg = scratch(rows, ff);
    F::local_product(dx.view(), transposed.w2.view(), false, dg.view_mut());
    let (a1, gelu_tanh) = (at(&cache.a1), at(&cache.gelu_tanh));
    for (((dg, a1), t), mut da1) in dg.rows().into_iter().zip(a1.rows()).zip(gelu_tanh.rows()).zip(out.da1.rows_mut()) {
        let (Some(dg), Some(a1), Some(t), Some(da1)) = (dg.as_slice(), a1.as_slice(), t.as_slice(), da1.as_slice_mut())
        else {
            unreachable!("rows of standard-layout matrices are contiguous")
        };
        kernels::gelu_backward_from_tanh_slice(dg, a1, t, da1);
    }
    // a₁ = z₂·W₁ + b₁  →  ∂z₂ = ∂a₁·W₁ᵀ; z₂ = LN₂(h), and h flows straight to x'
    let mut dz2 = scratch(rows, d);
    F::local_product(out.da1.view(), transposed.w1.view(), false, dz2.view_mut());
    let (weight2, normalized2, rstd2) = (w.ln2_weight.view(), at(&cache.ln2.normalized), &cache.ln2.rstd);
    for (i, mut dh) in out.dh.rows_mut().into_iter().enumerate() {
        let (Some(dz2), Some(xhat), Some(residual), Some(dh)) =
            (dz2.row(i).to_slice(), normalized2.row(i).to_slice(), dx.row(i).to_slice(), dh.as_slice_mut())
        else {
            unreachable!("rows of standard-layout matrices are contiguous")
        };
        let r = rstd2[range.start + i];
        kernels::layernorm_backward_row(dz2, xhat, as_slice(&weight2), r, residual, dh, &mut ln2_weight, &mut ln2_bias);
    }
    // h = x + y_att·W_O + b_O  →  ∂y_att = ∂h·W_Oᵀ
    let mut dy_att = scratch(rows, d);
    F::local_product(out.dh.view(), transposed.wo.view(), false, dy_att.view_mut());
    // attention, one (sequence, head) at a time, into [∂q | ∂k | ∂v]
    out.d_qkv.fill(F::zero());
    let qkv = at(&cache.qkv);
    for local in 0..rows / t_len {
        let sequence_rows = local * t_len..(local + 1) * t_len;
        let sequence = first_sequence + local;
        for head in 0..split.heads {
            let site = AttentionSite { layer: split.layer, head, sequence };
            let columns = |part: usize| part * d + head * hs..part * d + (head + 1) * hs;
            let part = |p: usize| qkv.slice(s![sequence_rows.clone(), columns(p)]);
            let dys = dy_att.slice(s![sequence_rows.clone(), head * hs..(head + 1) * hs]);
            let (dq, rest) = out.d_qkv.view_mut().split_at(Axis(1), d);
            let (dk, dv) = rest.split_at(Axis(1), d);
            let block = s![sequence_rows.clone(), head * hs..(head + 1) * hs];
            let grads = [dq.slice_move(block), dk.slice_move(block), dv.slice_move(block)];
            let alpha = &cache.attention.weights[sequence * split.heads + head];
            attend_backward(dys, part(0), part(1), part(2), alpha, grads, site, hook, CAUSAL_BLOCK);
        }
    }
    // [q | k | v] = z₁·W_QKV + b_QKV  →  ∂z₁ = ∂qkv·W_QKVᵀ; z₁ = LN₁(x), and x flows straight to h
    let mut dz1 = scratch(rows, d);
    F::local_product(out.d_qkv.view(), transposed.w_qkv.view(), false, dz1.view_mut());
    let (weight1, normalized1, rstd1) = (w.ln1_weight.view(), at(&cache.ln1.normalized), &cache.ln1.rstd);
    for (i, mut dx_in) in out.dx_in.rows_mut().into_iter().enumerate() {
        let (Some(dz1), Some(xhat), Some(residual), Some(dx_in)) =
            (dz1.row(i).to_slice(), normalized1.row(i).to_slice(), out.dh.row(i).to_slice(), dx_in.as_slice_mut())
        else {
            unreachable!("rows of standard-layout matrices are contiguous")
        };
        let r = rstd1[range.start + i];
        kernels::layernorm_backward_row(
            dz1,
            xhat,
            as_slice(&weight1),
            r,
            residual,
            dx_in,
            &mut ln1_weight,
            &mut ln1_bias,
        );
    }
    for array in [dg, dz2, dy_att, dz1] {
        recycle(array);
    }
    RowSums {
        b2: column_sums(dx),
        b1: column_sums(out.da1.view()),
        bo: column_sums(out.dh.view()),
        b_qkv: column_sums(out.d_qkv.view()),
        ln1_weight,
        ln1_bias,
        ln2_weight,
        ln2_bias,
    }
}

/// `∂W = inputᵀ·∂output` for the block's four products, each over the whole batch.
fn backward_weights<F: Scalar>(
    dx: ArrayView2<F>,
    da1: ArrayView2<F>,
    dh: ArrayView2<F>,
    d_qkv: ArrayView2<F>,
    cache: &LayerCache<F>,
    grads: &mut LayerParams<F>,
) {
    let d = dx.ncols();
    product(cache.g.t(), dx, true, grads.w2.view_mut());
    product(cache.z2.t(), da1, true, grads.w1.view_mut());
    product(cache.y_att.t(), dh, true, grads.wo.view_mut());
    let mut dw_qkv = Array2::zeros((d, 3 * d));
    product(cache.z1.t(), d_qkv, false, dw_qkv.view_mut());
    for (index, dw) in [&mut grads.wq, &mut grads.wk, &mut grads.wv].into_iter().enumerate() {
        *dw += &dw_qkv.slice(s![.., index * d..(index + 1) * d]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::attention::tests::TestHook;
    use crate::engine::model::tests::tiny_config;
    use crate::engine::{Model, Params};
    use crate::rng::Rng;

    /// One task per sequence and one task for the whole batch give the same block to rounding, forward
    /// and backward, with a hook whose bias depends on the sequence: a task that mislabelled its
    /// sequences, or wrote another task's rows, would differ.
    #[test]
    fn any_split_into_whole_sequences_gives_the_same_block() {
        let mut model = Model::<f64>::init(tiny_config(true), 5).unwrap();
        let mut rng = Rng::new(3);
        for (_, mut t) in model.params.named_mut() {
            t.mapv_inplace(|v| v + 0.4 * rng.normal());
        }
        let (batch, seq_len, d) = (3, 5, 8);
        let x = Array2::from_shape_fn((batch * seq_len, d), |_| rng.normal());
        let dx = Array2::from_shape_fn((batch * seq_len, d), |_| rng.normal());
        let hook = TestHook { temperature: 0.7 };
        let w = &model.params.layers[1];
        let run = |sequences_per_task: usize| {
            let split = LayerSplit { sequences_per_task, ..LayerSplit::new(batch, seq_len, 2, 1) };
            let (cache, penalty) = layer_forward(x.view(), w, 1e-5, split, &hook);
            let mut grads = Params::<f64>::zeros(&model.config).layers.remove(0);
            let d_in = layer_backward(dx.view(), &cache, w, &mut grads, split, &hook);
            (cache.output.clone(), penalty, d_in, grads)
        };
        let (one, two) = (run(batch), run(1));
        let close = |a: &Array2<f64>, b: &Array2<f64>| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-12);
        assert!(close(&one.0, &two.0), "outputs differ");
        assert!((one.1 - two.1).abs() < 1e-12 && one.1 != 0.0, "penalties {} {}", one.1, two.1);
        assert!(close(&one.2, &two.2), "input gradients differ");
        let tensors = |g: &LayerParams<f64>| -> Vec<Vec<f64>> {
            let vectors =
                [&g.ln1_weight, &g.ln1_bias, &g.ln2_weight, &g.ln2_bias, &g.bq, &g.bk, &g.bv, &g.bo, &g.b1, &g.b2];
            let matrices = [&g.wq, &g.wk, &g.wv, &g.wo, &g.w1, &g.w2];
            vectors.iter().map(|v| v.to_vec()).chain(matrices.iter().map(|m| m.iter().copied().collect())).collect()
        };
        for (a, b) in tensors(&one.3).into_iter().zip(tensors(&two.3)) {
            assert!(a.iter().zip(b.iter()).all(|(x, y)| (x - y).abs() < 1e-12), "weight gradients differ");
            assert!(a.iter().any(|&v| v != 0.0), "a gradient is all zeros");
        }
        // two sequences per task leave a short last task
        let three = run(2);
        assert!(close(&one.0, &three.0) && close(&one.2, &three.2));
    }

    /// Recycled buffers hold stale numbers; a pass must overwrite every element it reads. Poison the pool
    /// with NaN buffers of every size a block takes and check that nothing changes, bit for bit.
    #[test]
    fn the_output_only_block_has_the_kept_blocks_bits() {
        let mut config = tiny_config(true);
        (config.d_model, config.n_heads, config.d_ff, config.ctx_len) = (32, 4, 64, 16);
        let mut model = Model::<f64>::init(config, 3).unwrap();
        let mut rng = Rng::new(9);
        for (_, mut t) in model.params.named_mut() {
            t.mapv_inplace(|v| v + 0.2 * rng.normal());
        }
        let (batch, seq_len, d) = (5, 16, 32);
        let x = Array2::from_shape_fn((batch * seq_len, d), |_| rng.normal());
        let hook = TestHook { temperature: 0.7 };
        let w = &model.params.layers[0];
        // two sequences per task: three tasks, the last one short
        let split = LayerSplit { sequences_per_task: 2, ..LayerSplit::new(batch, seq_len, 4, 0) };
        let (cache, penalty) = layer_forward(x.view(), w, 1e-5, split, &hook);
        // stale NaN buffers of a task's sizes in the pool must not reach the output
        for len in [2 * seq_len * d, 2 * seq_len * 3 * d, 2 * seq_len * 64] {
            for _ in 0..12 {
                f64::buffers().give(vec![f64::NAN; len.max(16 << 10)]);
            }
        }
        let (output, output_penalty) = layer_forward_output(x.view(), w, 1e-5, split, &hook);
        let bits = |a: &Array2<f64>| a.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert!(penalty != 0.0 && output.iter().all(|v| v.is_finite()));
        assert_eq!(bits(&cache.output), bits(&output));
        assert_eq!(penalty.to_bits(), output_penalty.to_bits());
        // and through the model: the same hidden states, penalty and loss as the kept pass
        let tokens: Vec<u32> = (0..batch * seq_len).map(|i| (i * 7 % 11) as u32).collect();
        let kept = model.forward(&tokens, batch, seq_len, &hook);
        let inference = model.forward_inference(&tokens, batch, seq_len, &hook);
        assert!(inference.layers.is_empty());
        assert_eq!(bits(&kept.hidden), bits(&inference.hidden));
        assert_eq!(kept.penalty.to_bits(), inference.penalty.to_bits());
        f64::buffers().clear();
    }

    #[test]
    fn recycled_buffers_never_leak_into_a_block() {
        let mut config = tiny_config(true);
        (config.d_model, config.n_heads, config.d_ff, config.ctx_len) = (64, 4, 128, 128);
        let mut model = Model::<f64>::init(config, 2).unwrap();
        let mut rng = Rng::new(4);
        for (_, mut t) in model.params.named_mut() {
            t.mapv_inplace(|v| v + 0.2 * rng.normal());
        }
        // T = 128: a head's [T, T] attention weights are large enough to come from the pool
        let (batch, seq_len, d) = (2, 128, 64);
        let x = Array2::from_shape_fn((batch * seq_len, d), |_| rng.normal());
        let dx = Array2::from_shape_fn((batch * seq_len, d), |_| rng.normal());
        let hook = TestHook { temperature: 0.8 };
        let w = &model.params.layers[0];
        let split = LayerSplit { sequences_per_task: 1, ..LayerSplit::new(batch, seq_len, 4, 0) };
        let run = || {
            let (cache, _) = layer_forward(x.view(), w, 1e-5, split, &hook);
            let mut grads = Params::<f64>::zeros(&model.config).layers.remove(0);
            let d_in = layer_backward(dx.view(), &cache, w, &mut grads, split, &hook);
            let weights: Vec<u64> =
                cache.attention.weights.iter().flat_map(|a| a.iter().map(|v| v.to_bits())).collect();
            (cache.output.clone(), d_in, grads.w1, grads.b1, weights)
        };
        let clean = run();
        let n = batch * seq_len;
        for len in [n * d, n * 3 * d, n * 128, seq_len * seq_len] {
            for _ in 0..12 {
                f64::buffers().give(vec![f64::NAN; len]);
            }
        }
        let poisoned = run();
        let bits = |a: &Array2<f64>| a.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert!(clean.0.iter().all(|v| v.is_finite()));
        assert_eq!(bits(&clean.0), bits(&poisoned.0), "block output");
        assert_eq!(bits(&clean.1), bits(&poisoned.1), "input gradient");
        assert_eq!(bits(&clean.2), bits(&poisoned.2), "weight gradient");
        assert_eq!(clean.3.to_vec(), poisoned.3.to_vec(), "bias gradient");
        // the whole [T, T] weights, zeros above the diagonal included, as the metrics read them
        assert!(clean.4 == poisoned.4, "attention weights");
        f64::buffers().clear();
    }
}
