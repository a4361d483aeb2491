//! Causal multi-head self-attention on projected `q, k, v [N, d]`, `N = B·T`, with hooks for the
//! locality dial (METHOD §4): a transform of each head's score matrix before the softmax (margin bias,
//! temperature) and an extra loss on the attention weights (the group-sparsity penalty) whose hook also
//! sees `∂loss/∂α` — the quantity behind the group-sparsity threshold of METHOD §6.

use ndarray::linalg::general_mat_mul;
use ndarray::{s, Array2, ArrayView2, ArrayViewMut2, Axis};
use rayon::prelude::*;

use super::buffers::scratch;
use super::kernels;
use super::linalg::init_blas;
use super::Scalar;

/// Which score matrix a hook is looking at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionSite {
    pub layer: usize,
    pub head: usize,
    /// Index of the sequence within the batch.
    pub sequence: usize,
}

/// Extension points of the attention layer. Every method has a neutral default, so [`NoHook`] is the
/// plain transformer. Rows `i` of the `[T, T]` matrices are queries, columns `j` keys; entries `j > i`
/// are masked by causality and are ignored on input and zero on output.
pub trait AttentionHook<F: Scalar>: Sync {
    /// Rewrites the scaled scores `s_ij = q_i·k_j/√h` in place before the softmax.
    fn transform_scores(&self, _site: AttentionSite, _scores: ArrayViewMut2<F>) {}

    /// The chain rule through [`transform_scores`](Self::transform_scores): turns `∂J/∂s'` into `∂J/∂s`
    /// in place.
    fn transform_scores_backward(&self, _site: AttentionSite, _grad: ArrayViewMut2<F>) {}

    /// An additive loss term on the attention weights `α`. In the backward pass `grad` holds `∂CE/∂α`
    /// on entry and the hook adds the gradient of its own term. Returns the term's value.
    fn attention_penalty(&self, _site: AttentionSite, _weights: ArrayView2<F>, _grad: Option<ArrayViewMut2<F>>) -> F {
        F::zero()
    }
}

/// The plain transformer: no bias, no penalty.
pub struct NoHook;
impl<F: Scalar> AttentionHook<F> for NoHook {}

/// Attention weights of every (sequence, head), `B·H` of them at index `sequence·H + head`, each `[T, T]`
/// and zero above the diagonal.
pub struct AttentionCache<F> {
    pub weights: Vec<Array2<F>>,
}

/// Shape bookkeeping shared by forward and backward.
#[derive(Debug, Clone, Copy)]
pub struct AttentionShape {
    /// `B`.
    pub batch: usize,
    /// `T`.
    pub seq_len: usize,
    /// `H`; the head width `h = d / H` follows from the inputs' `d`.
    pub heads: usize,
    pub layer: usize,
}

impl AttentionShape {
    fn head_size(&self, d: usize) -> usize {
        d / self.heads
    }
    fn site(&self, task: usize) -> AttentionSite {
        AttentionSite { layer: self.layer, head: task % self.heads, sequence: task / self.heads }
    }
}

/// Rows of queries per causal block. A block of queries `[r₀, r₁)` sees only keys `[0, r₁)`, so each
/// product runs over that many keys and the blocks above the diagonal are never computed: with `T = 128`
/// and 32-row blocks that is 10 of 16 tiles, where one `[T, T]` product would compute all 16.
pub(crate) const CAUSAL_BLOCK: usize = 32;

/// The disjoint `[T, h]` column blocks of `out [N, parts·d]` that the `B·H` (sequence, head) tasks write,
/// in task order: task `sequence·H + head` gets, for each of the `parts` column groups, the head's
/// `h` columns of its sequence's `T` rows.
fn task_blocks<F: Scalar>(
    out: &mut Array2<F>,
    shape: AttentionShape,
    hs: usize,
    parts: usize,
) -> Vec<Vec<ArrayViewMut2<'_, F>>> {
    let heads = shape.heads;
    let mut tasks = Vec::with_capacity(shape.batch * heads);
    for sequence_rows in out.axis_chunks_iter_mut(Axis(0), shape.seq_len) {
        // split_at keeps the views' lifetime that of `out` (a chunk iterator would borrow the local)
        let mut columns: Vec<Option<ArrayViewMut2<F>>> = Vec::with_capacity(parts * heads);
        let mut rest = sequence_rows;
        while rest.ncols() > hs {
            let (column, tail) = rest.split_at(Axis(1), hs);
            columns.push(Some(column));
            rest = tail;
        }
        columns.push(Some(rest));
        for head in 0..heads {
            tasks.push((0..parts).filter_map(|part| columns[part * heads + head].take()).collect());
        }
    }
    tasks
}

/// `q, k, v [N, d]` each (column slices of the fused `[N, 3d]` projection); one (sequence, head) pair
/// works on the `[T, h]` block of its sequence's `T` rows and its head's `h` columns. Returns the
/// concatenated head outputs `y [N, d]`, the `B·H` weight matrices `[T, T]`, and the hook penalty summed
/// over them (a scalar).
pub fn attention_forward<F: Scalar>(
    q: ArrayView2<F>,
    k: ArrayView2<F>,
    v: ArrayView2<F>,
    shape: AttentionShape,
    hook: &dyn AttentionHook<F>,
) -> (Array2<F>, AttentionCache<F>, F) {
    attention_forward_blocked(q, k, v, shape, hook, CAUSAL_BLOCK)
}

fn attention_forward_blocked<F: Scalar>(
    q: ArrayView2<F>,
    k: ArrayView2<F>,
    v: ArrayView2<F>,
    shape: AttentionShape,
    hook: &dyn AttentionHook<F>,
    block: usize,
) -> (Array2<F>, AttentionCache<F>, F) {
    init_blas();
    let (n, d) = q.dim();
    let (t_len, hs) = (shape.seq_len, shape.head_size(d));
    let mut y = Array2::zeros((n, d));
    let outputs = task_blocks(&mut y, shape, hs, 1);
    let per_task: Vec<(Array2<F>, F)> = outputs
        .into_par_iter()
        .enumerate()
        .map(|(task, mut out)| {
            let site = shape.site(task);
            let rows = s![site.sequence * t_len..(site.sequence + 1) * t_len, site.head * hs..(site.head + 1) * hs];
            attend(q.slice(rows), k.slice(rows), v.slice(rows), out[0].view_mut(), site, hook, block)
        })
        .collect();
    let mut weights = Vec::with_capacity(per_task.len());
    let mut penalty = F::zero();
    for (alpha, task_penalty) in per_task {
        weights.push(alpha);
        penalty += task_penalty;
    }
    (y, AttentionCache { weights }, penalty)
}

/// One (sequence, head): `qs, ks, vs [T, h]` → `out [T, h]` written in place; returns the weights `α
/// [T, T]` (zero above the diagonal) and the hook's penalty on them.
pub(crate) fn attend<F: Scalar>(
    qs: ArrayView2<F>,
    ks: ArrayView2<F>,
    vs: ArrayView2<F>,
    mut out: ArrayViewMut2<F>,
    site: AttentionSite,
    hook: &dyn AttentionHook<F>,
    block: usize,
) -> (Array2<F>, F) {
    let (t_len, hs) = qs.dim();
    let scale = F::one() / F::lit(hs as f64).sqrt();
    // s = q·kᵀ/√h over the causal blocks                      [T, T]; zeros to the right of them, so
    // a recycled buffer's stale contents reach neither the hook nor the softmax
    let mut scores = scratch::<F>(t_len, t_len);
    for (start, end) in causal_blocks(t_len, block) {
        scores.slice_mut(s![start..end, end..]).fill(F::zero());
        let mut tile = scores.slice_mut(s![start..end, ..end]);
        general_mat_mul(scale, &qs.slice(s![start..end, ..]), &ks.slice(s![..end, ..]).t(), F::zero(), &mut tile);
    }
    hook.transform_scores(site, scores.view_mut());
    causal_softmax_inplace(&mut scores);
    let penalty = hook.attention_penalty(site, scores.view(), None);
    // y = α·v                                                  [T, h]
    for (start, end) in causal_blocks(t_len, block) {
        let alpha = scores.slice(s![start..end, ..end]);
        general_mat_mul(F::one(), &alpha, &vs.slice(s![..end, ..]), F::zero(), &mut out.slice_mut(s![start..end, ..]));
    }
    (scores, penalty)
}

/// `[start, end)` of each block of `block` query rows.
fn causal_blocks(t_len: usize, block: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..t_len).step_by(block.max(1)).map(move |start| (start, (start + block.max(1)).min(t_len)))
}

/// Row-wise softmax over `j ≤ i`; entries above the diagonal become exactly zero.
fn causal_softmax_inplace<F: Scalar>(scores: &mut Array2<F>) {
    for (i, mut row) in scores.rows_mut().into_iter().enumerate() {
        let row = row.as_slice_mut().expect("score rows are contiguous");
        let (visible, future) = row.split_at_mut(i + 1);
        let max = kernels::max(visible);
        let inv = F::one() / kernels::exp_shifted_inplace(visible, max);
        kernels::scale_inplace(visible, inv);
        future.fill(F::zero());
    }
}

/// `dy [N, d]` (gradient of the forward's `y`), the forward's `q, k, v [N, d]` and cache; returns
/// `[dq | dk | dv]` side by side, `[N, 3d]`: the layout of the fused `q, k, v` projection, so it feeds
/// [`linear_backward`](super::linear::linear_backward) directly. No parameters of its own; the hook's
/// penalty gradient is folded into `dα` per `[T, T]` matrix.
pub fn attention_backward<F: Scalar>(
    dy: ArrayView2<F>,
    q: ArrayView2<F>,
    k: ArrayView2<F>,
    v: ArrayView2<F>,
    cache: &AttentionCache<F>,
    shape: AttentionShape,
    hook: &dyn AttentionHook<F>,
) -> Array2<F> {
    attention_backward_blocked(dy, q, k, v, cache, shape, hook, CAUSAL_BLOCK)
}

#[allow(clippy::too_many_arguments)]
fn attention_backward_blocked<F: Scalar>(
    dy: ArrayView2<F>,
    q: ArrayView2<F>,
    k: ArrayView2<F>,
    v: ArrayView2<F>,
    cache: &AttentionCache<F>,
    shape: AttentionShape,
    hook: &dyn AttentionHook<F>,
    block: usize,
) -> Array2<F> {
    init_blas();
    let (n, d) = q.dim();
    let (t_len, hs) = (shape.seq_len, shape.head_size(d));
    let mut d_qkv = Array2::zeros((n, 3 * d));
    let outputs = task_blocks(&mut d_qkv, shape, hs, 3);
    outputs.into_par_iter().enumerate().for_each(|(task, mut parts)| {
        let site = shape.site(task);
        let rows = s![site.sequence * t_len..(site.sequence + 1) * t_len, site.head * hs..(site.head + 1) * hs];
        let (qs, ks, vs, dys) = (q.slice(rows), k.slice(rows), v.slice(rows), dy.slice(rows));
        let [dq, dk, dv] = &mut parts[..] else { unreachable!("three parts per task") };
        let grads = [dq.view_mut(), dk.view_mut(), dv.view_mut()];
        attend_backward(dys, qs, ks, vs, &cache.weights[task], grads, site, hook, block);
    });
    d_qkv
}

/// The chain rule of [`attend`] for one (sequence, head): `dys [T, h]` and the forward's inputs and
/// weights → `[dq, dk, dv]`, each `[T, h]`, which must hold zeros on entry (`dk`, `dv` accumulate).
#[allow(clippy::too_many_arguments)]
pub(crate) fn attend_backward<F: Scalar>(
    dys: ArrayView2<F>,
    qs: ArrayView2<F>,
    ks: ArrayView2<F>,
    vs: ArrayView2<F>,
    alpha: &Array2<F>,
    [mut dq, mut dk, mut dv]: [ArrayViewMut2<F>; 3],
    site: AttentionSite,
    hook: &dyn AttentionHook<F>,
    block: usize,
) {
    let (t_len, hs) = qs.dim();
    let scale = F::one() / F::lit(hs as f64).sqrt();
    // y = α·v  →  dα = dy·vᵀ [T, T], dv = αᵀ·dy [T, h]; a block of queries reaches keys [0, end) only
    let mut d_alpha = Array2::zeros((t_len, t_len));
    for (start, end) in causal_blocks(t_len, block) {
        let dy_rows = dys.slice(s![start..end, ..]);
        let mut tile = d_alpha.slice_mut(s![start..end, ..end]);
        general_mat_mul(F::one(), &dy_rows, &vs.slice(s![..end, ..]).t(), F::zero(), &mut tile);
        let alpha_rows = alpha.slice(s![start..end, ..end]);
        general_mat_mul(F::one(), &alpha_rows.t(), &dy_rows, F::one(), &mut dv.slice_mut(s![..end, ..]));
    }
    hook.attention_penalty(site, alpha.view(), Some(d_alpha.view_mut()));
    // α_i = softmax(s'_i) over j ≤ i  →  ds'_ij = α_ij·(dα_ij − Σ_l α_il·dα_il)
    let mut d_scores = d_alpha;
    for (i, (mut d_row, a_row)) in d_scores.rows_mut().into_iter().zip(alpha.rows()).enumerate() {
        let (Some(d_row), Some(a_row)) = (d_row.as_slice_mut(), a_row.as_slice()) else {
            unreachable!("rows of standard-layout matrices are contiguous")
        };
        kernels::softmax_backward_row(&a_row[..=i], &mut d_row[..=i]);
        d_row[i + 1..].fill(F::zero());
    }
    hook.transform_scores_backward(site, d_scores.view_mut());
    // s = q·kᵀ·scale  →  dq = ds·k·scale, dk = dsᵀ·q·scale, both [T, h]
    for (start, end) in causal_blocks(t_len, block) {
        let ds = d_scores.slice(s![start..end, ..end]);
        general_mat_mul(scale, &ds, &ks.slice(s![..end, ..]), F::zero(), &mut dq.slice_mut(s![start..end, ..]));
        general_mat_mul(scale, &ds.t(), &qs.slice(s![start..end, ..]), F::one(), &mut dk.slice_mut(s![..end, ..]));
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::engine::gradcheck::{assert_gradient, probe, random};
    use ndarray::Ix2;

    /// A hook with a non-trivial bias, temperature and penalty, standing in for the locality dial so that
    /// the gradient check covers every hook path: scores are divided by a temperature and shifted by a
    /// per-entry bias, and the penalty is `Σ c_ij α_ij²`.
    pub(crate) struct TestHook {
        pub temperature: f64,
    }

    fn bias(site: AttentionSite, i: usize, j: usize) -> f64 {
        ((i * 3 + j * 5 + site.head + 2 * site.sequence + site.layer) % 4) as f64 * -0.7
    }

    impl AttentionHook<f64> for TestHook {
        fn transform_scores(&self, site: AttentionSite, mut scores: ArrayViewMut2<f64>) {
            for ((i, j), s) in scores.indexed_iter_mut() {
                *s = *s / self.temperature + bias(site, i, j);
            }
        }
        fn transform_scores_backward(&self, _site: AttentionSite, mut grad: ArrayViewMut2<f64>) {
            grad /= self.temperature;
        }
        fn attention_penalty(
            &self,
            site: AttentionSite,
            weights: ArrayView2<f64>,
            grad: Option<ArrayViewMut2<f64>>,
        ) -> f64 {
            let coefficient = |i: usize, j: usize| 0.3 + 0.1 * ((i + j + site.head) % 3) as f64;
            if let Some(mut grad) = grad {
                for ((i, j), g) in grad.indexed_iter_mut() {
                    *g += 2.0 * coefficient(i, j) * weights[[i, j]];
                }
            }
            weights.indexed_iter().map(|((i, j), &a)| coefficient(i, j) * a * a).sum()
        }
    }

    /// Gradient check over two sequences of five positions, in causal blocks of `block` rows (5 = one
    /// block; 2 = three blocks, the last one short, so that the skipped tiles are exercised).
    fn check(hook: &dyn AttentionHook<f64>, block: usize) {
        let shape = AttentionShape { batch: 2, seq_len: 5, heads: 2, layer: 1 };
        let (n, d) = (shape.batch * shape.seq_len, 6);
        let mut q = random(&[n, d], 1.0, 1).into_dimensionality::<Ix2>().unwrap();
        let mut k = random(&[n, d], 1.0, 2).into_dimensionality::<Ix2>().unwrap();
        let mut v = random(&[n, d], 1.0, 3).into_dimensionality::<Ix2>().unwrap();
        let upstream = probe(&[n, d], 4).into_dimensionality::<Ix2>().unwrap();
        let loss = |q: ArrayView2<f64>, k: ArrayView2<f64>, v: ArrayView2<f64>| {
            let (y, _, penalty) = attention_forward_blocked(q, k, v, shape, hook, block);
            (y * &upstream).sum() + penalty
        };
        let (_, cache, _) = attention_forward_blocked(q.view(), k.view(), v.view(), shape, hook, block);
        let d_qkv =
            attention_backward_blocked(upstream.view(), q.view(), k.view(), v.view(), &cache, shape, hook, block);
        let dq = d_qkv.slice(s![.., 0..d]).to_owned();
        let dk = d_qkv.slice(s![.., d..2 * d]).to_owned();
        let dv = d_qkv.slice(s![.., 2 * d..]).to_owned();
        let (k0, v0) = (k.clone(), v.clone());
        assert_gradient("q", &mut q.view_mut().into_dyn(), &dq.into_dyn(), |q| {
            loss(q.view().into_dimensionality().unwrap(), k0.view(), v0.view())
        });
        let q0 = q.clone();
        assert_gradient("k", &mut k.view_mut().into_dyn(), &dk.into_dyn(), |k| {
            loss(q0.view(), k.view().into_dimensionality().unwrap(), v0.view())
        });
        let k0 = k.clone();
        assert_gradient("v", &mut v.view_mut().into_dyn(), &dv.into_dyn(), |v| {
            loss(q0.view(), k0.view(), v.view().into_dimensionality().unwrap())
        });
    }

    #[test]
    fn causal_attention_gradient_matches_finite_differences() {
        check(&NoHook, 5);
        check(&NoHook, 2);
    }

    #[test]
    fn hooked_attention_gradient_matches_finite_differences() {
        check(&TestHook { temperature: 1.7 }, 5);
        check(&TestHook { temperature: 1.7 }, 2);
    }

    #[test]
    fn causal_blocks_give_the_single_product_s_result() {
        let shape = AttentionShape { batch: 2, seq_len: 7, heads: 2, layer: 0 };
        let q = random(&[14, 6], 1.0, 5).into_dimensionality::<Ix2>().unwrap();
        let (k, v) = (q.mapv(|x| 0.5 - x), q.mapv(|x| x * x));
        let (y_one, cache_one, _) = attention_forward_blocked(q.view(), k.view(), v.view(), shape, &NoHook, 7);
        let (y_three, cache_three, _) = attention_forward_blocked(q.view(), k.view(), v.view(), shape, &NoHook, 3);
        let close = |a: &Array2<f64>, b: &Array2<f64>| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-14);
        assert!(close(&y_one, &y_three));
        assert!(cache_one.weights.iter().zip(&cache_three.weights).all(|(a, b)| close(a, b)));
        let dy = probe(&[14, 6], 6).into_dimensionality::<Ix2>().unwrap();
        let hook = TestHook { temperature: 0.9 };
        let one = attention_backward_blocked(dy.view(), q.view(), k.view(), v.view(), &cache_one, shape, &hook, 7);
        let three = attention_backward_blocked(dy.view(), q.view(), k.view(), v.view(), &cache_three, shape, &hook, 3);
        assert!(close(&one, &three));
    }

    #[test]
    fn weights_are_causal_and_normalised() {
        let shape = AttentionShape { batch: 1, seq_len: 5, heads: 1, layer: 0 };
        let q = random(&[5, 4], 1.0, 1).into_dimensionality::<Ix2>().unwrap();
        let (_, cache, _) = attention_forward(q.view(), q.view(), q.view(), shape, &NoHook);
        let alpha = &cache.weights[0];
        for i in 0..5 {
            assert!((alpha.row(i).sum() - 1.0).abs() < 1e-12);
            for j in i + 1..5 {
                assert_eq!(alpha[[i, j]], 0.0, "future position {j} visible from {i}");
            }
        }
        // the first query can only see itself
        assert_eq!(alpha[[0, 0]], 1.0);
    }
}
