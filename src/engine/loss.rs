//! Output projection fused with softmax cross-entropy: `logits = h·W`, `loss = mean_n −log softmax(logits_n)[y_n]`.
//!
//! The `[N, V]` logits are never materialised: rows are processed in chunks whose logits are turned into
//! probabilities, losses and gradients at once. With WikiText-2's 33,278 words and `N = 2048` the full
//! matrix would be 272 MB of `f32`; a chunk is 8.5 MB and stays in cache-friendly reach. The gradient of `W`
//! is accumulated per group of chunks and the groups are summed in a fixed order, so the result does not
//! depend on the number of threads.

use ndarray::linalg::general_mat_mul;
use ndarray::{s, Array2, ArrayView2};
use rayon::prelude::*;

use super::kernels;
use super::linalg::init_blas;
use super::Scalar;

const CHUNK_ROWS: usize = 256;
/// Independent accumulators for `∂W`; fixed so that summation order never depends on the thread count.
const GROUPS: usize = 8;

pub struct OutputLoss<F> {
    /// Mean negative log-likelihood over the rows, in nats.
    pub mean_nll: F,
    /// Per-row negative log-likelihood, in nats.
    pub nll: Vec<F>,
    /// Rows whose most probable token is the target.
    pub correct: usize,
    /// `∂mean_nll/∂h`, `[N, d]`, when gradients were requested.
    pub d_hidden: Option<Array2<F>>,
    /// `∂mean_nll/∂W`, `[d, V]`, when gradients were requested.
    pub d_weight: Option<Array2<F>>,
}

struct GroupResult<F> {
    nll: Vec<F>,
    correct: usize,
    d_hidden: Option<Array2<F>>,
    d_weight: Option<Array2<F>>,
}

/// `hidden [N, d]`, `weight [d, V]` (a transposed view of the token embedding when tied), `targets [N]`.
pub fn output_loss<F: Scalar>(
    hidden: ArrayView2<F>,
    weight: ArrayView2<F>,
    targets: &[u32],
    with_grad: bool,
) -> OutputLoss<F> {
    init_blas();
    let (n, d) = hidden.dim();
    let vocab = weight.ncols();
    assert_eq!(targets.len(), n, "one target per row");
    let inv_n = F::one() / F::lit(n.max(1) as f64);
    let chunks = n.div_ceil(CHUNK_ROWS);
    let chunks_per_group = chunks.div_ceil(GROUPS).max(1);

    let groups: Vec<GroupResult<F>> = (0..chunks.div_ceil(chunks_per_group))
        .into_par_iter()
        .map(|group| {
            let row_start = group * chunks_per_group * CHUNK_ROWS;
            let row_end = ((group + 1) * chunks_per_group * CHUNK_ROWS).min(n);
            let mut result = GroupResult {
                nll: Vec::with_capacity(row_end - row_start),
                correct: 0,
                d_hidden: with_grad.then(|| Array2::zeros((row_end - row_start, d))),
                d_weight: with_grad.then(|| Array2::zeros((d, vocab))),
            };
            let mut logits = Array2::<F>::zeros((CHUNK_ROWS, vocab));
            let mut start = row_start;
            while start < row_end {
                let end = (start + CHUNK_ROWS).min(row_end);
                let h = hidden.slice(s![start..end, ..]);
                let mut z = logits.slice_mut(s![..end - start, ..]);
                // logits = h·W                                       (c, V)
                general_mat_mul(F::one(), &h, &weight, F::zero(), &mut z);
                for (r, mut row) in z.rows_mut().into_iter().enumerate() {
                    let row = row.as_slice_mut().expect("logit rows are contiguous");
                    let target = targets[start + r] as usize;
                    let max = kernels::max(row);
                    let argmax = row.iter().position(|&v| v == max).unwrap_or(0);
                    let target_logit = row[target];
                    let sum = kernels::exp_shifted_inplace(row, max);
                    result.nll.push(sum.ln() + max - target_logit);
                    result.correct += usize::from(argmax == target);
                    if with_grad {
                        // ∂(mean nll)/∂logits = (softmax − onehot)/N
                        kernels::scale_inplace(row, inv_n / sum);
                        row[target] -= inv_n;
                    }
                }
                if let (Some(dh), Some(dw)) = (result.d_hidden.as_mut(), result.d_weight.as_mut()) {
                    // dh = dlogits·Wᵀ, dW += hᵀ·dlogits
                    let mut dh_rows = dh.slice_mut(s![start - row_start..end - row_start, ..]);
                    general_mat_mul(F::one(), &z.view(), &weight.t(), F::zero(), &mut dh_rows);
                    general_mat_mul(F::one(), &h.t(), &z.view(), F::one(), dw);
                }
                start = end;
            }
            result
        })
        .collect();

    let mut nll = Vec::with_capacity(n);
    let mut correct = 0;
    let mut d_hidden = with_grad.then(|| Array2::zeros((n, d)));
    let mut d_weight: Option<Array2<F>> = None;
    let mut row = 0;
    for group in groups {
        let rows = group.nll.len();
        nll.extend_from_slice(&group.nll);
        correct += group.correct;
        if let (Some(dh), Some(part)) = (d_hidden.as_mut(), group.d_hidden) {
            dh.slice_mut(s![row..row + rows, ..]).assign(&part);
        }
        if let Some(part) = group.d_weight {
            match d_weight.as_mut() {
                Some(total) => *total += &part,
                None => d_weight = Some(part),
            }
        }
        row += rows;
    }
    if with_grad && d_weight.is_none() {
        d_weight = Some(Array2::zeros((d, vocab)));
    }
    let mean_nll = nll.iter().copied().sum::<F>() * inv_n;
    OutputLoss {
        mean_nll,
        nll,
        correct,
        d_hidden,
        d_weight,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::gradcheck::{assert_gradient, random};
    use ndarray::Ix2;

    #[test]
    fn fused_cross_entropy_gradient_matches_finite_differences() {
        // 150 rows span three chunks and several accumulation groups
        let (n, d, vocab) = (150, 4, 11);
        let targets: Vec<u32> = (0..n).map(|i| ((i * 7 + 3) % vocab) as u32).collect();
        let mut h = random(&[n, d], 1.0, 1)
            .into_dimensionality::<Ix2>()
            .unwrap();
        let mut w = random(&[d, vocab], 1.0, 2)
            .into_dimensionality::<Ix2>()
            .unwrap();
        let out = output_loss(h.view(), w.view(), &targets, true);
        let (dh, dw) = (out.d_hidden.unwrap(), out.d_weight.unwrap());
        let w0 = w.clone();
        assert_gradient(
            "hidden",
            &mut h.view_mut().into_dyn(),
            &dh.into_dyn(),
            |h| {
                output_loss(
                    h.view().into_dimensionality::<Ix2>().unwrap(),
                    w0.view(),
                    &targets,
                    false,
                )
                .mean_nll
            },
        );
        let h0 = h.clone();
        assert_gradient(
            "weight",
            &mut w.view_mut().into_dyn(),
            &dw.into_dyn(),
            |w| {
                output_loss(
                    h0.view(),
                    w.view().into_dimensionality::<Ix2>().unwrap(),
                    &targets,
                    false,
                )
                .mean_nll
            },
        );
    }

    #[test]
    fn cross_entropy_matches_direct_computation() {
        let h = ndarray::array![[1.0f64, 0.0], [0.0, 2.0]];
        let w = ndarray::array![[1.0f64, 0.0, -1.0], [0.0, 1.0, 0.5]];
        let out = output_loss(h.view(), w.view(), &[0, 2], false);
        // row 0 logits (1, 0, −1), target 0; row 1 logits (0, 2, 1), target 2
        let nll0 = (1f64.exp() + 1.0 + (-1f64).exp()).ln() - 1.0;
        let nll1 = (1.0 + 2f64.exp() + 1f64.exp()).ln() - 1.0;
        assert!((out.nll[0] - nll0).abs() < 1e-12 && (out.nll[1] - nll1).abs() < 1e-12);
        assert_eq!(out.correct, 1);
    }
}
