//! Layer normalisation over the feature axis: `y = (x − mean) / √(var + eps) · w + b`.

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, ArrayViewMut1, ArrayViewMut2, Axis};
use rayon::prelude::*;

use super::{kernels, Scalar};

/// What the backward needs: the normalised input and each row's reciprocal standard deviation.
pub struct LayerNormCache<F> {
    /// `[N, d]` `x̂ = (x − mean)·rstd`.
    pub normalized: Array2<F>,
    /// `[N]` `1/√(var + eps)`.
    pub rstd: Array1<F>,
}

/// Rows per parallel task of the whole-batch passes; the tasks' partial weight gradients are added in
/// task order, so the split (fixed by the shape) fixes the result.
const ROWS_PER_TASK: usize = 64;

fn contiguous<'a, F>(view: &'a ArrayView1<F>) -> std::borrow::Cow<'a, [F]>
where
    F: Clone,
{
    match view.as_slice() {
        Some(slice) => std::borrow::Cow::Borrowed(slice),
        None => std::borrow::Cow::Owned(view.to_vec()),
    }
}

/// `x [N, d]`, `weight [d]`, `bias [d]` → `(y [N, d], cache)`; statistics are per row.
pub fn layernorm_forward<F: Scalar>(
    x: ArrayView2<F>,
    weight: ArrayView1<F>,
    bias: ArrayView1<F>,
    eps: F,
) -> (Array2<F>, LayerNormCache<F>) {
    let (n, d) = x.dim();
    let x = x.as_standard_layout();
    let (weight, bias) = (contiguous(&weight), contiguous(&bias));
    let mut y = Array2::zeros((n, d));
    let mut normalized = Array2::zeros((n, d));
    let mut rstd = Array1::zeros(n);
    y.axis_chunks_iter_mut(Axis(0), ROWS_PER_TASK)
        .into_par_iter()
        .zip(normalized.axis_chunks_iter_mut(Axis(0), ROWS_PER_TASK))
        .zip(rstd.axis_chunks_iter_mut(Axis(0), ROWS_PER_TASK))
        .zip(x.axis_chunks_iter(Axis(0), ROWS_PER_TASK))
        .for_each(|(((mut y, mut normalized), mut rstd), x)| {
            layernorm_rows(x, &weight, &bias, eps, normalized.view_mut(), rstd.view_mut(), y.view_mut())
        });
    (y, LayerNormCache { normalized, rstd })
}

/// [`layernorm_forward`] on a block of rows, in one thread: `y` and the cache's rows are written in place.
pub(crate) fn layernorm_rows<F: Scalar>(
    x: ArrayView2<F>,
    weight: &[F],
    bias: &[F],
    eps: F,
    mut normalized: ArrayViewMut2<F>,
    mut rstd: ArrayViewMut1<F>,
    mut y: ArrayViewMut2<F>,
) {
    for (((x, mut normalized), r), mut y) in
        x.rows().into_iter().zip(normalized.rows_mut()).zip(rstd.iter_mut()).zip(y.rows_mut())
    {
        let (Some(x), Some(normalized), Some(y)) = (x.as_slice(), normalized.as_slice_mut(), y.as_slice_mut()) else {
            unreachable!("rows of standard-layout matrices are contiguous")
        };
        *r = kernels::layernorm_row(x, weight, bias, eps, normalized, y);
    }
}

/// `dy [N, d]` and the forward's cache → `dx [N, d]`; accumulates `∂weight [d]` and `∂bias [d]`.
pub fn layernorm_backward<F: Scalar>(
    dy: ArrayView2<F>,
    cache: &LayerNormCache<F>,
    weight: ArrayView1<F>,
    mut dweight: ArrayViewMut1<F>,
    mut dbias: ArrayViewMut1<F>,
) -> Array2<F> {
    let (n, d) = dy.dim();
    let dy = dy.as_standard_layout();
    let weight = contiguous(&weight);
    let mut dx = Array2::zeros((n, d));
    let zeros = vec![F::zero(); d];
    let partials: Vec<(Vec<F>, Vec<F>)> = dx
        .axis_chunks_iter_mut(Axis(0), ROWS_PER_TASK)
        .into_par_iter()
        .zip(dy.axis_chunks_iter(Axis(0), ROWS_PER_TASK))
        .zip(cache.normalized.axis_chunks_iter(Axis(0), ROWS_PER_TASK))
        .zip(cache.rstd.axis_chunks_iter(Axis(0), ROWS_PER_TASK))
        .map(|(((mut dx, dy), normalized), rstd)| {
            let (mut dw, mut db) = (vec![F::zero(); d], vec![F::zero(); d]);
            for (((mut dx, dy), normalized), &r) in
                dx.rows_mut().into_iter().zip(dy.rows()).zip(normalized.rows()).zip(rstd.iter())
            {
                let (Some(dx), Some(dy), Some(normalized)) = (dx.as_slice_mut(), dy.as_slice(), normalized.as_slice())
                else {
                    unreachable!("rows of standard-layout matrices are contiguous")
                };
                kernels::layernorm_backward_row(dy, normalized, &weight, r, &zeros, dx, &mut dw, &mut db);
            }
            (dw, db)
        })
        .collect();
    for (dw, db) in partials {
        dweight.iter_mut().zip(&dw).for_each(|(total, &v)| *total += v);
        dbias.iter_mut().zip(&db).for_each(|(total, &v)| *total += v);
    }
    dx
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::gradcheck::{assert_gradient, probe, random};
    use ndarray::{Ix1, Ix2};

    #[test]
    fn layernorm_gradient_matches_finite_differences() {
        let (n, d, eps) = (6, 5, 1e-5);
        let mut x = random(&[n, d], 2.0, 1).into_dimensionality::<Ix2>().unwrap();
        x.row_mut(0).mapv_inplace(|v| v + 3.0); // an offset row exercises the mean term
        let mut w = random(&[d], 1.0, 2).into_dimensionality::<Ix1>().unwrap();
        let mut b = random(&[d], 1.0, 3).into_dimensionality::<Ix1>().unwrap();
        let upstream = probe(&[n, d], 4).into_dimensionality::<Ix2>().unwrap();

        let (_, cache) = layernorm_forward(x.view(), w.view(), b.view(), eps);
        let mut dw = Array1::zeros(d);
        let mut db = Array1::zeros(d);
        let dx = layernorm_backward(upstream.view(), &cache, w.view(), dw.view_mut(), db.view_mut());

        let (w0, b0, x0) = (w.clone(), b.clone(), x.clone());
        assert_gradient("x", &mut x.view_mut().into_dyn(), &dx.into_dyn(), |x| {
            let x = x.view().into_dimensionality::<Ix2>().unwrap();
            (layernorm_forward(x, w0.view(), b0.view(), eps).0 * &upstream).sum()
        });
        assert_gradient("weight", &mut w.view_mut().into_dyn(), &dw.into_dyn(), |w| {
            let w = w.view().into_dimensionality::<Ix1>().unwrap();
            (layernorm_forward(x0.view(), w, b0.view(), eps).0 * &upstream).sum()
        });
        let w0 = w.clone();
        assert_gradient("bias", &mut b.view_mut().into_dyn(), &db.into_dyn(), |b| {
            let b = b.view().into_dimensionality::<Ix1>().unwrap();
            (layernorm_forward(x0.view(), w0.view(), b, eps).0 * &upstream).sum()
        });
    }

    #[test]
    fn layernorm_output_is_standardised() {
        let x = random(&[3, 64], 5.0, 9).into_dimensionality::<Ix2>().unwrap();
        let ones = Array1::ones(64);
        let zeros = Array1::zeros(64);
        let (y, _) = layernorm_forward(x.view(), ones.view(), zeros.view(), 1e-5);
        for row in y.rows() {
            assert!(row.mean().unwrap().abs() < 1e-12);
            assert!((row.mapv(|v| v * v).mean().unwrap() - 1.0).abs() < 1e-5);
        }
    }
}
