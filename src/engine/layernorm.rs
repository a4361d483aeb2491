//! Layer normalisation over the feature axis: `y = (x − mean) / √(var + eps) · w + b`.

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, ArrayViewMut1, Axis, Zip};

use super::Scalar;

/// What the backward needs: the normalised input and each row's reciprocal standard deviation.
pub struct LayerNormCache<F> {
    /// `[N, d]` `x̂ = (x − mean)·rstd`.
    pub normalized: Array2<F>,
    /// `[N]` `1/√(var + eps)`.
    pub rstd: Array1<F>,
}

/// `x [N, d]`, `weight [d]`, `bias [d]` → `(y [N, d], cache)`; statistics are per row.
pub fn layernorm_forward<F: Scalar>(
    x: ArrayView2<F>,
    weight: ArrayView1<F>,
    bias: ArrayView1<F>,
    eps: F,
) -> (Array2<F>, LayerNormCache<F>) {
    let (n, d) = x.dim();
    let d_f = F::lit(d as f64);
    let mut normalized = Array2::zeros((n, d));
    let mut rstd = Array1::zeros(n);
    Zip::from(normalized.rows_mut()).and(x.rows()).and(&mut rstd).par_for_each(|mut out, row, rstd_row| {
        let mean = row.sum() / d_f;
        let var = row.iter().map(|&v| (v - mean) * (v - mean)).sum::<F>() / d_f;
        let r = F::one() / (var + eps).sqrt();
        Zip::from(&mut out).and(&row).for_each(|o, &v| *o = (v - mean) * r);
        *rstd_row = r;
    });
    let mut y = normalized.clone();
    Zip::from(y.rows_mut()).par_for_each(|mut row| {
        Zip::from(&mut row).and(&weight).and(&bias).for_each(|o, &w, &b| *o = *o * w + b);
    });
    (y, LayerNormCache { normalized, rstd })
}

/// `dy [N, d]`, the forward's cache, `weight [d]`; returns `dx [N, d]` and accumulates
/// `dweight [d] += Σ_rows dy·x̂` and `dbias [d] += Σ_rows dy`.
pub fn layernorm_backward<F: Scalar>(
    dy: ArrayView2<F>,
    cache: &LayerNormCache<F>,
    weight: ArrayView1<F>,
    mut dweight: ArrayViewMut1<F>,
    mut dbias: ArrayViewMut1<F>,
) -> Array2<F> {
    let (n, d) = dy.dim();
    let d_f = F::lit(d as f64);
    let mut dx = Array2::zeros((n, d));
    Zip::from(dx.rows_mut()).and(dy.rows()).and(cache.normalized.rows()).and(&cache.rstd).par_for_each(
        |mut dx_row, dy_row, xhat, &rstd| {
            // y = xhat·w + b, so dxhat = dy·w; then through xhat = (x − mean)·rstd:
            // dx = rstd · (dxhat − mean(dxhat) − xhat · mean(dxhat · xhat))
            let mut mean_dxhat = F::zero();
            let mut mean_dxhat_xhat = F::zero();
            for k in 0..d {
                let g = dy_row[k] * weight[k];
                mean_dxhat += g;
                mean_dxhat_xhat += g * xhat[k];
            }
            mean_dxhat /= d_f;
            mean_dxhat_xhat /= d_f;
            for k in 0..d {
                let g = dy_row[k] * weight[k];
                dx_row[k] = rstd * (g - mean_dxhat - xhat[k] * mean_dxhat_xhat);
            }
        },
    );
    // column sums in a fixed row order keep the parameter gradients reproducible
    dweight += &(&dy * &cache.normalized).sum_axis(Axis(0));
    dbias += &dy.sum_axis(Axis(0));
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
