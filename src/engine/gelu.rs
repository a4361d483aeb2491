//! GELU in its tanh form (Hendrycks and Gimpel 2016), as GPT-2 and PyTorch's `approximate="tanh"` use it:
//! `g(x) = ½·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`.

use ndarray::{Array2, ArrayView2, Zip};

use super::Scalar;

const CUBIC: f64 = 0.044715;

fn sqrt_2_over_pi<F: Scalar>() -> F {
    F::lit((2.0 / std::f64::consts::PI).sqrt())
}

pub fn gelu_forward<F: Scalar>(x: ArrayView2<F>) -> Array2<F> {
    let (c, half) = (sqrt_2_over_pi::<F>(), F::lit(0.5));
    let cubic = F::lit(CUBIC);
    let mut y = Array2::zeros(x.raw_dim());
    Zip::from(&mut y).and(&x).par_for_each(|y, &x| {
        *y = half * x * (F::one() + (c * (x + cubic * x * x * x)).tanh());
    });
    y
}

/// Returns `dx` given `dy` and the forward input `x`.
pub fn gelu_backward<F: Scalar>(dy: ArrayView2<F>, x: ArrayView2<F>) -> Array2<F> {
    let (c, half) = (sqrt_2_over_pi::<F>(), F::lit(0.5));
    let cubic = F::lit(CUBIC);
    let three_cubic = F::lit(3.0 * CUBIC);
    let mut dx = Array2::zeros(x.raw_dim());
    Zip::from(&mut dx)
        .and(&dy)
        .and(&x)
        .par_for_each(|dx, &dy, &x| {
            // g = ½x(1 + tanh u), u = c(x + a x³):
            // g' = ½(1 + tanh u) + ½x(1 − tanh² u)·c(1 + 3a x²)
            let t = (c * (x + cubic * x * x * x)).tanh();
            let local = half * (F::one() + t)
                + half * x * (F::one() - t * t) * c * (F::one() + three_cubic * x * x);
            *dx = dy * local;
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
        let mut x = random(&[4, 6], 2.0, 1)
            .into_dimensionality::<Ix2>()
            .unwrap();
        let upstream = probe(&[4, 6], 2).into_dimensionality::<Ix2>().unwrap();
        let dx = gelu_backward(upstream.view(), x.view());
        assert_gradient("x", &mut x.view_mut().into_dyn(), &dx.into_dyn(), |x| {
            let x = x.view().into_dimensionality::<Ix2>().unwrap();
            (gelu_forward(x) * &upstream).sum()
        });
    }

    #[test]
    fn gelu_matches_reference_values() {
        // the tanh-form definition evaluated in double precision (what PyTorch computes with approximate="tanh")
        let x = ndarray::array![[-3.0f64, -1.0, 0.0, 0.5, 2.0]];
        let expected = [
            -0.0036373920817729943,
            -0.15880800939172324,
            0.0,
            0.34571400982514394,
            1.954597694087775,
        ];
        for (y, e) in gelu_forward(x.view()).iter().zip(expected) {
            assert!((y - e).abs() < 1e-9, "{y} vs {e}");
        }
    }
}
