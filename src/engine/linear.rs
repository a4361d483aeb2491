//! Affine map `y = x · W + b` with `W [in, out]`, the layout the checkpoints store.

use ndarray::{Array2, ArrayView1, ArrayView2, ArrayViewMut1, ArrayViewMut2, Axis};

use super::linalg::{gemm, matmul};
use super::Scalar;

/// `x [N, in]`, `weight [in, out]`, `bias [out]` → `y [N, out]`. In the model `in → out` is `d → 3d`
/// (fused q, k, v), `d → d` (attention output), `d → F` and `F → d` (MLP).
pub fn linear_forward<F: Scalar>(x: ArrayView2<F>, weight: ArrayView2<F>, bias: ArrayView1<F>) -> Array2<F> {
    // start from the broadcast bias and accumulate the product onto it: one pass over y, not two
    let mut y = Array2::from_shape_fn((x.nrows(), weight.ncols()), |(_, j)| bias[j]);
    gemm(F::one(), x, weight, F::one(), y.view_mut());
    y
}

/// `dy [N, out]`, the forward input `x [N, in]`, `weight [in, out]`; returns `dx = dy·Wᵀ [N, in]` and
/// accumulates `dweight [in, out] += xᵀ·dy` and `dbias [out] += Σ_rows dy`.
pub fn linear_backward<F: Scalar>(
    dy: ArrayView2<F>,
    x: ArrayView2<F>,
    weight: ArrayView2<F>,
    dweight: ArrayViewMut2<F>,
    mut dbias: ArrayViewMut1<F>,
) -> Array2<F> {
    gemm(F::one(), x.t(), dy, F::one(), dweight);
    dbias += &dy.sum_axis(Axis(0));
    matmul(dy, weight.t())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::gradcheck::{assert_gradient, probe, random};
    use ndarray::{Array1, Ix1, Ix2};

    #[test]
    fn linear_gradient_matches_finite_differences() {
        let (n, d_in, d_out) = (5, 4, 3);
        let mut x = random(&[n, d_in], 1.0, 1).into_dimensionality::<Ix2>().unwrap();
        let mut w = random(&[d_in, d_out], 1.0, 2).into_dimensionality::<Ix2>().unwrap();
        let mut b = random(&[d_out], 1.0, 3).into_dimensionality::<Ix1>().unwrap();
        let upstream = probe(&[n, d_out], 4).into_dimensionality::<Ix2>().unwrap();
        let mut dw = Array2::zeros((d_in, d_out));
        let mut db = Array1::zeros(d_out);
        let dx = linear_backward(upstream.view(), x.view(), w.view(), dw.view_mut(), db.view_mut());

        let (w0, b0, x0) = (w.clone(), b.clone(), x.clone());
        assert_gradient("x", &mut x.view_mut().into_dyn(), &dx.into_dyn(), |x| {
            let x = x.view().into_dimensionality::<Ix2>().unwrap();
            (linear_forward(x, w0.view(), b0.view()) * &upstream).sum()
        });
        assert_gradient("weight", &mut w.view_mut().into_dyn(), &dw.into_dyn(), |w| {
            let w = w.view().into_dimensionality::<Ix2>().unwrap();
            (linear_forward(x0.view(), w, b0.view()) * &upstream).sum()
        });
        let w0 = w.clone();
        assert_gradient("bias", &mut b.view_mut().into_dyn(), &db.into_dyn(), |b| {
            let b = b.view().into_dimensionality::<Ix1>().unwrap();
            (linear_forward(x0.view(), w0.view(), b) * &upstream).sum()
        });
    }
}
