//! GELU in its tanh form (Hendrycks and Gimpel 2016), as GPT-2 and PyTorch's `approximate="tanh"` use it:
//! `g(x) = ½·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`.

use ndarray::{Array2, ArrayView2, ArrayViewMut2, Axis};
use rayon::prelude::*;

use super::kernels::{gelu_backward_slice, gelu_slice};
use super::Scalar;

/// Rows per parallel task: enough elements that scheduling is noise.
const ROWS_PER_TASK: usize = 64;

fn row_blocks<F: Scalar>(out: &mut Array2<F>) -> Vec<ArrayViewMut2<'_, F>> {
    out.axis_chunks_iter_mut(Axis(0), ROWS_PER_TASK).collect()
}

/// Elementwise: `x [N, F]` (the MLP's pre-activation) → `[N, F]`. Any 2-D shape works.
pub fn gelu_forward<F: Scalar>(x: ArrayView2<F>) -> Array2<F> {
    let x = x.as_standard_layout();
    let mut y = Array2::zeros(x.raw_dim());
    row_blocks(&mut y).into_par_iter().zip(x.axis_chunks_iter(Axis(0), ROWS_PER_TASK).into_par_iter()).for_each(
        |(mut y_rows, x_rows)| {
            let (Some(y_rows), Some(x_rows)) = (y_rows.as_slice_mut(), x_rows.as_slice()) else {
                unreachable!("row blocks of standard-layout arrays are contiguous")
            };
            gelu_slice(x_rows, y_rows);
        },
    );
    y
}

/// `dy [N, F]` and the forward input `x [N, F]` → `dx [N, F]`. No parameters; recomputes `g'(x)` from
/// `x` rather than caching it.
pub fn gelu_backward<F: Scalar>(dy: ArrayView2<F>, x: ArrayView2<F>) -> Array2<F> {
    let (x, dy) = (x.as_standard_layout(), dy.as_standard_layout());
    let mut dx = Array2::zeros(x.raw_dim());
    row_blocks(&mut dx)
        .into_par_iter()
        .zip(x.axis_chunks_iter(Axis(0), ROWS_PER_TASK).into_par_iter())
        .zip(dy.axis_chunks_iter(Axis(0), ROWS_PER_TASK).into_par_iter())
        .for_each(|((mut dx_rows, x_rows), dy_rows)| {
            let (Some(dx_rows), Some(x_rows), Some(dy_rows)) =
                (dx_rows.as_slice_mut(), x_rows.as_slice(), dy_rows.as_slice())
            else {
                unreachable!("row blocks of standard-layout arrays are contiguous")
            };
            // g = ½x(1 + tanh u) → g' as in kernels::gelu_derivative_scalar
            gelu_backward_slice(dy_rows, x_rows, dx_rows);
        });
    dx
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::gradcheck::{assert_gradient, probe, random};
    use ndarray::Ix2;

    #[test]
    fn gelu_gradient_matches_finite_differences() {
        let mut x = random(&[4, 6], 2.0, 1).into_dimensionality::<Ix2>().unwrap();
        let upstream = probe(&[4, 6], 2).into_dimensionality::<Ix2>().unwrap();
        let dx = gelu_backward(upstream.view(), x.view());
        assert_gradient("x", &mut x.view_mut().into_dyn(), &dx.into_dyn(), |x| {
            let x = x.view().into_dimensionality::<Ix2>().unwrap();
            (gelu_forward(x) * &upstream).sum()
        });
    }

    /// The form the blocks run: the forward keeps `tanh u` and the backward reads it instead of
    /// recomputing it.
    #[test]
    fn gelu_from_its_kept_tanh_matches_finite_differences() {
        use crate::engine::kernels::{gelu_backward_from_tanh_slice, gelu_keeping_tanh_slice};
        let mut x = random(&[4, 6], 2.0, 3).into_dimensionality::<Ix2>().unwrap();
        let upstream = probe(&[4, 6], 5).into_dimensionality::<Ix2>().unwrap();
        let forward = |x: &[f64]| {
            let (mut y, mut t) = (vec![0.0; x.len()], vec![0.0; x.len()]);
            gelu_keeping_tanh_slice(x, &mut y, &mut t);
            (y, t)
        };
        let flat = x.as_slice().unwrap().to_vec();
        let (y, t) = forward(&flat);
        assert_eq!(y, gelu_forward(x.view()).into_raw_vec_and_offset().0, "the same GELU");
        let mut dx = vec![0.0; flat.len()];
        gelu_backward_from_tanh_slice(upstream.as_slice().unwrap(), &flat, &t, &mut dx);
        let dx = Array2::from_shape_vec(x.raw_dim(), dx).unwrap();
        assert_gradient("x", &mut x.view_mut().into_dyn(), &dx.into_dyn(), |x| {
            let (y, _) = forward(x.as_slice().unwrap());
            y.iter().zip(upstream.iter()).map(|(a, b)| a * b).sum()
        });
    }

    #[test]
    fn gelu_matches_reference_values() {
        // the tanh-form definition evaluated in double precision (what PyTorch computes with approximate="tanh")
        let x = ndarray::array![[-3.0f64, -1.0, 0.0, 0.5, 2.0]];
        let expected = [-0.0036373920817729943, -0.15880800939172324, 0.0, 0.34571400982514394, 1.954597694087775];
        for (y, e) in gelu_forward(x.view()).iter().zip(expected) {
            assert!((y - e).abs() < 1e-9, "{y} vs {e}");
        }
    }
}
