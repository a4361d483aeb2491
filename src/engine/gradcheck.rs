//! Finite-difference gradient checks, shared by the unit tests of every layer and the whole model.
//!
//! Checks run in `f64` with central differences, whose error is `O(h²)` from truncation plus `O(ε/h)`
//! from rounding; with `h = 1e-5` both are below `1e-9` relative for the smooth functions here. The
//! tolerance [`TOLERANCE`] is four orders above that and four below the size of a typical missing term
//! (which changes a gradient entry by tens of percent), so a check passes only for a correct backward.

use ndarray::{ArrayD, ArrayViewMutD};

/// Central-difference step.
pub const STEP: f64 = 1e-5;
/// Largest accepted error, relative to `max(|analytic|, |numeric|, FLOOR)`.
pub const TOLERANCE: f64 = 1e-5;
/// Below this magnitude errors are judged absolutely, at `TOLERANCE · FLOOR = 1e-9`: a central difference
/// of a loss of order 1 carries rounding noise of about `1e-16/h ≈ 1e-11` per evaluation, summed over
/// hundreds of terms, and entries that are exactly zero in theory (a key bias, which shifts every score of
/// a row equally) show only that noise.
pub const FLOOR: f64 = 1e-4;

#[derive(Debug, Clone, Copy)]
pub struct Discrepancy {
    pub index: usize,
    pub analytic: f64,
    pub numeric: f64,
    pub relative_error: f64,
}

/// Compares `analytic` with central differences of `loss` at every entry of `param` (or every `stride`-th,
/// for large tensors). `loss` reads `param` through the pointer it is given. Returns the worst entry.
pub fn worst_discrepancy(
    param: &mut ArrayViewMutD<f64>,
    analytic: &ArrayD<f64>,
    stride: usize,
    mut loss: impl FnMut(&ArrayViewMutD<f64>) -> f64,
) -> Discrepancy {
    assert_eq!(param.shape(), analytic.shape(), "gradient shape differs from parameter shape");
    let analytic_flat: Vec<f64> = analytic.iter().copied().collect();
    let mut worst = Discrepancy { index: 0, analytic: 0.0, numeric: 0.0, relative_error: 0.0 };
    let len = analytic_flat.len();
    let mut index = 0;
    while index < len {
        let original = *param.iter().nth(index).expect("index in range");
        set_nth(param, index, original + STEP);
        let plus = loss(param);
        set_nth(param, index, original - STEP);
        let minus = loss(param);
        set_nth(param, index, original);
        let numeric = (plus - minus) / (2.0 * STEP);
        let a = analytic_flat[index];
        let relative_error = (a - numeric).abs() / a.abs().max(numeric.abs()).max(FLOOR);
        if relative_error > worst.relative_error {
            worst = Discrepancy { index, analytic: a, numeric, relative_error };
        }
        index += stride.max(1);
    }
    worst
}

fn set_nth(param: &mut ArrayViewMutD<f64>, index: usize, value: f64) {
    if let Some(slot) = param.iter_mut().nth(index) {
        *slot = value;
    }
}

/// Panics with a readable message when the check fails; used by tests.
pub fn assert_gradient(
    name: &str,
    param: &mut ArrayViewMutD<f64>,
    analytic: &ArrayD<f64>,
    loss: impl FnMut(&ArrayViewMutD<f64>) -> f64,
) {
    let worst = worst_discrepancy(param, analytic, 1, loss);
    assert!(
        worst.relative_error < TOLERANCE,
        "gradient of {name} is wrong at flat index {}: analytic {:.9e}, numeric {:.9e}, relative error {:.3e}",
        worst.index,
        worst.analytic,
        worst.numeric,
        worst.relative_error
    );
}

/// A fixed, deterministic projection vector used to turn a tensor output into a scalar loss, so that
/// every output entry gets a distinct upstream gradient (a plain sum would hide transposition bugs).
pub fn probe(shape: &[usize], salt: u64) -> ArrayD<f64> {
    let mut rng = crate::rng::Rng::new(0xC0FFEE ^ salt);
    ArrayD::from_shape_fn(ndarray::IxDyn(shape), |_| rng.normal())
}

/// Fills a tensor with deterministic normal values of the given scale.
pub fn random(shape: &[usize], scale: f64, salt: u64) -> ArrayD<f64> {
    probe(shape, salt ^ 0xA11A) * scale
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::layernorm::{layernorm_backward, layernorm_forward};
    use ndarray::{Array1, Array2, Ix1, Ix2, Zip};

    /// LayerNorm's backward with the `xhat · mean(dxhat · xhat)` term left out: the classic mistake of
    /// differentiating the mean but not the variance. The check must reject it.
    fn layernorm_backward_missing_variance_term(
        dy: &Array2<f64>,
        normalized: &Array2<f64>,
        rstd: &Array1<f64>,
        weight: &Array1<f64>,
    ) -> Array2<f64> {
        let mut dx = Array2::zeros(dy.raw_dim());
        Zip::from(dx.rows_mut()).and(dy.rows()).and(normalized.rows()).and(rstd).for_each(
            |mut dx_row, dy_row, _xhat, &r| {
                let dxhat = &dy_row * weight;
                let mean = dxhat.mean().unwrap_or(0.0);
                dx_row.assign(&((dxhat - mean) * r));
            },
        );
        dx
    }

    #[test]
    fn a_gradient_missing_one_term_is_rejected() {
        let (n, d) = (4, 6);
        let mut x = random(&[n, d], 2.0, 1).into_dimensionality::<Ix2>().unwrap();
        let w = random(&[d], 1.0, 2).into_dimensionality::<Ix1>().unwrap();
        let b = Array1::zeros(d);
        let upstream = probe(&[n, d], 3).into_dimensionality::<Ix2>().unwrap();
        let (_, cache) = layernorm_forward(x.view(), w.view(), b.view(), 1e-5);
        let broken = layernorm_backward_missing_variance_term(&upstream, &cache.normalized, &cache.rstd, &w);
        let mut dw = Array1::zeros(d);
        let mut db = Array1::zeros(d);
        let correct = layernorm_backward(upstream.view(), &cache, w.view(), dw.view_mut(), db.view_mut());
        let loss = |x: &ArrayViewMutD<f64>| {
            let x = x.view().into_dimensionality::<Ix2>().unwrap();
            (layernorm_forward(x, w.view(), b.view(), 1e-5).0 * &upstream).sum()
        };
        let good = worst_discrepancy(&mut x.view_mut().into_dyn(), &correct.into_dyn(), 1, loss);
        let bad = worst_discrepancy(&mut x.view_mut().into_dyn(), &broken.into_dyn(), 1, loss);
        assert!(good.relative_error < TOLERANCE, "correct gradient rejected: {good:?}");
        assert!(bad.relative_error > 100.0 * TOLERANCE, "broken gradient accepted: {bad:?}");
    }

    #[test]
    fn a_gradient_off_by_a_tenth_of_a_percent_is_rejected() {
        let mut x = random(&[3, 3], 1.0, 5);
        let loss = |x: &ArrayViewMutD<f64>| x.iter().map(|v| v.sin() * v).sum::<f64>();
        let mut gradient = x.mapv(|v| v.cos() * v + v.sin());
        assert!(worst_discrepancy(&mut x.view_mut(), &gradient, 1, loss).relative_error < TOLERANCE);
        gradient[[1, 2]] *= 1.001;
        let worst = worst_discrepancy(&mut x.view_mut(), &gradient, 1, loss);
        assert!(worst.relative_error > TOLERANCE, "{worst:?}");
        assert_eq!(worst.index, 5);
    }
}
