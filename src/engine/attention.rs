//! Causal multi-head self-attention on projected `q, k, v [N, d]`, `N = B·T`, with hooks for the
//! locality dial (METHOD §4): a transform of each head's score matrix before the softmax (margin bias,
//! temperature) and an extra loss on the attention weights (the group-sparsity penalty) whose hook also
//! sees `∂loss/∂α` — the quantity behind the group-sparsity threshold of METHOD §6.

use ndarray::{s, Array2, ArrayView2, ArrayViewMut2};
use rayon::prelude::*;

use super::kernels;
use super::linalg::matmul;
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
    let (n, d) = q.dim();
    let (t_len, hs) = (shape.seq_len, shape.head_size(d));
    let scale = F::one() / F::lit(hs as f64).sqrt();
    let per_task: Vec<(Array2<F>, Array2<F>, F)> = (0..shape.batch * shape.heads)
        .into_par_iter()
        .map(|task| {
            let site = shape.site(task);
            let rows = s![site.sequence * t_len..(site.sequence + 1) * t_len, site.head * hs..(site.head + 1) * hs];
            let (qs, ks, vs) = (q.slice(rows), k.slice(rows), v.slice(rows));
            // s = q·kᵀ/√h                                          [T, T]
            let mut scores = matmul(qs, ks.t());
            scores *= scale;
            hook.transform_scores(site, scores.view_mut());
            causal_softmax_inplace(&mut scores);
            let penalty = hook.attention_penalty(site, scores.view(), None);
            // y = α·v                                              [T, h]
            let out = matmul(scores.view(), vs);
            (out, scores, penalty)
        })
        .collect();

    let mut y = Array2::zeros((n, d));
    let mut weights = Vec::with_capacity(per_task.len());
    let mut penalty = F::zero();
    for (task, (out, alpha, task_penalty)) in per_task.into_iter().enumerate() {
        let site = shape.site(task);
        y.slice_mut(s![site.sequence * t_len..(site.sequence + 1) * t_len, site.head * hs..(site.head + 1) * hs])
            .assign(&out);
        weights.push(alpha);
        penalty += task_penalty;
    }
    (y, AttentionCache { weights }, penalty)
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
    let (n, d) = q.dim();
    let (t_len, hs) = (shape.seq_len, shape.head_size(d));
    let scale = F::one() / F::lit(hs as f64).sqrt();
    let per_task: Vec<[Array2<F>; 3]> = (0..shape.batch * shape.heads)
        .into_par_iter()
        .map(|task| {
            let site = shape.site(task);
            let rows = s![site.sequence * t_len..(site.sequence + 1) * t_len, site.head * hs..(site.head + 1) * hs];
            let (qs, ks, vs, dys) = (q.slice(rows), k.slice(rows), v.slice(rows), dy.slice(rows));
            let alpha = &cache.weights[task];
            // y = α·v  →  dα = dy·vᵀ [T, T], dv = αᵀ·dy [T, h]
            let mut d_alpha = matmul(dys, vs.t());
            let dv = matmul(alpha.t(), dys);
            hook.attention_penalty(site, alpha.view(), Some(d_alpha.view_mut()));
            // α_i = softmax(s'_i) over j ≤ i  →  ds'_ij = α_ij·(dα_ij − Σ_l α_il·dα_il)
            let mut d_scores = d_alpha;
            for (i, (mut d_row, a_row)) in d_scores.rows_mut().into_iter().zip(alpha.rows()).enumerate() {
                let dot: F = (0..=i).map(|j| a_row[j] * d_row[j]).sum();
                for j in 0..d_row.len() {
                    d_row[j] = if j <= i { a_row[j] * (d_row[j] - dot) } else { F::zero() };
                }
            }
            hook.transform_scores_backward(site, d_scores.view_mut());
            // s = q·kᵀ·scale  →  dq = ds·k·scale, dk = dsᵀ·q·scale, both [T, h]
            d_scores *= scale;
            let dq = matmul(d_scores.view(), ks);
            let dk = matmul(d_scores.t(), qs);
            [dq, dk, dv]
        })
        .collect();

    let mut d_qkv = Array2::zeros((n, 3 * d));
    for (task, parts) in per_task.into_iter().enumerate() {
        let site = shape.site(task);
        let rows = site.sequence * t_len..(site.sequence + 1) * t_len;
        for (which, part) in parts.iter().enumerate() {
            let cols = which * d + site.head * hs..which * d + (site.head + 1) * hs;
            d_qkv.slice_mut(s![rows.clone(), cols]).assign(part);
        }
    }
    d_qkv
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

    fn check(hook: &dyn AttentionHook<f64>) {
        let shape = AttentionShape { batch: 2, seq_len: 4, heads: 2, layer: 1 };
        let (n, d) = (shape.batch * shape.seq_len, 6);
        let mut q = random(&[n, d], 1.0, 1).into_dimensionality::<Ix2>().unwrap();
        let mut k = random(&[n, d], 1.0, 2).into_dimensionality::<Ix2>().unwrap();
        let mut v = random(&[n, d], 1.0, 3).into_dimensionality::<Ix2>().unwrap();
        let upstream = probe(&[n, d], 4).into_dimensionality::<Ix2>().unwrap();
        let loss = |q: ArrayView2<f64>, k: ArrayView2<f64>, v: ArrayView2<f64>| {
            let (y, _, penalty) = attention_forward(q, k, v, shape, hook);
            (y * &upstream).sum() + penalty
        };
        let (_, cache, _) = attention_forward(q.view(), k.view(), v.view(), shape, hook);
        let d_qkv = attention_backward(upstream.view(), q.view(), k.view(), v.view(), &cache, shape, hook);
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
        check(&NoHook);
    }

    #[test]
    fn hooked_attention_gradient_matches_finite_differences() {
        check(&TestHook { temperature: 1.7 });
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
