//! Matrix products on multicore CPUs.
//!
//! OpenBLAS is pinned to one thread and the work is split here instead, by blocks of output rows that
//! rayon runs in parallel. Each output element is then computed by exactly one BLAS call over the full
//! inner dimension, whatever the number of threads, so results are reproducible and the cores are never
//! oversubscribed by two thread pools.

use ndarray::linalg::general_mat_mul;
use ndarray::{Array2, ArrayView2, ArrayViewMut2, Axis};
use rayon::prelude::*;
use std::sync::Once;

use super::Scalar;

/// Rows per parallel task: large enough that each BLAS call runs at full speed, small enough to balance.
const ROWS_PER_TASK: usize = 256;

extern "C" {
    fn openblas_set_num_threads(num_threads: std::os::raw::c_int);
}

static SINGLE_THREADED_BLAS: Once = Once::new();

/// Keeps OpenBLAS on one thread, and keeps freed activation buffers in the process; called before the
/// first product.
pub fn init_blas() {
    SINGLE_THREADED_BLAS.call_once(|| {
        // SAFETY: a plain setter in the OpenBLAS C API with no preconditions.
        unsafe { openblas_set_num_threads(1) }
        // glibc hands every block above 128 KiB back to the kernel on free, so each training step
        // paid page faults to zero its activations afresh (a tenth of a step on small models). Raising
        // the thresholds lets freed blocks be reused; peak memory is unchanged.
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: mallopt only tunes the allocator; both parameters are documented and valid.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 512 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        }
    });
}

/// Columns per parallel task when `c` has a single block of rows (the weight gradients `xᵀ·dy`, whose
/// output is only `d × d` but whose inner dimension is the whole batch).
const COLS_PER_TASK: usize = 64;

/// `c = alpha · a · b + beta · c`, split into blocks of `c` that rayon computes in parallel.
///
/// The blocks depend only on the shapes (never on the thread count) and each element of `c` comes from
/// one BLAS call over the full inner dimension, so the result is the same with any number of threads.
pub fn gemm<F: Scalar>(alpha: F, a: ArrayView2<F>, b: ArrayView2<F>, beta: F, c: ArrayViewMut2<F>) {
    init_blas();
    for_each_block(a, b, c, |a, b, mut c| general_mat_mul(alpha, &a, &b, beta, &mut c));
}

/// `c = a·b`, or `c += a·b` when `accumulate`, split into blocks of `c` exactly as [`gemm`] splits
/// them, each block computed by [`Scalar::local_product`] (so in `f32` by the direct kernel where the
/// CPU has one): the weight gradients `xᵀ·∂y`, whose `xᵀ` OpenBLAS would pack afresh for every block.
pub fn product<F: Scalar>(a: ArrayView2<F>, b: ArrayView2<F>, accumulate: bool, c: ArrayViewMut2<F>) {
    init_blas();
    for_each_block(a, b, c, |a, b, c| F::local_product(a, b, accumulate, c));
}

/// Runs `block(a_part, b_part, c_part)` on the blocks of `c` that rayon computes in parallel: rows of
/// [`ROWS_PER_TASK`], else (a tall inner dimension and a short `c`) columns of [`COLS_PER_TASK`], else
/// the whole product. The split depends on the shapes alone.
fn for_each_block<F: Scalar>(
    a: ArrayView2<F>,
    b: ArrayView2<F>,
    mut c: ArrayViewMut2<F>,
    block: impl Fn(ArrayView2<F>, ArrayView2<F>, ArrayViewMut2<F>) + Sync,
) {
    debug_assert_eq!(a.ncols(), b.nrows());
    debug_assert_eq!((a.nrows(), b.ncols()), c.dim());
    if c.nrows() > ROWS_PER_TASK {
        c.axis_chunks_iter_mut(Axis(0), ROWS_PER_TASK)
            .into_par_iter()
            .zip(a.axis_chunks_iter(Axis(0), ROWS_PER_TASK).into_par_iter())
            .for_each(|(c_rows, a_rows)| block(a_rows, b, c_rows));
    } else if c.ncols() >= 2 * COLS_PER_TASK && a.ncols() >= ROWS_PER_TASK {
        c.axis_chunks_iter_mut(Axis(1), COLS_PER_TASK)
            .into_par_iter()
            .zip(b.axis_chunks_iter(Axis(1), COLS_PER_TASK).into_par_iter())
            .for_each(|(c_cols, b_cols)| block(a, b_cols, c_cols));
    } else {
        block(a, b, c.view_mut());
    }
}

/// `c = a·b`, or `c += a·b` when `accumulate`, as one BLAS call on the calling thread: for work that is
/// already one task of a parallel split (a logit tile, a block task's rows).
pub fn local_gemm<F: Scalar>(a: ArrayView2<F>, b: ArrayView2<F>, accumulate: bool, mut c: ArrayViewMut2<F>) {
    init_blas();
    general_mat_mul(F::one(), &a, &b, if accumulate { F::one() } else { F::zero() }, &mut c);
}

/// `a · b` as a new array.
pub fn matmul<F: Scalar>(a: ArrayView2<F>, b: ArrayView2<F>) -> Array2<F> {
    let mut c = Array2::zeros((a.nrows(), b.ncols()));
    gemm(F::one(), a, b, F::zero(), c.view_mut());
    c
}

/// Floating-point operations of one `[m,k]·[k,n]` product, for throughput figures.
pub fn gemm_flops(m: usize, k: usize, n: usize) -> f64 {
    2.0 * m as f64 * k as f64 * n as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    fn naive(a: &Array2<f64>, b: &Array2<f64>) -> Array2<f64> {
        let mut c = Array2::zeros((a.nrows(), b.ncols()));
        for i in 0..a.nrows() {
            for j in 0..b.ncols() {
                c[[i, j]] = (0..a.ncols()).map(|k| a[[i, k]] * b[[k, j]]).sum();
            }
        }
        c
    }

    #[test]
    fn split_product_matches_naive_product_including_transposed_views() {
        let a = Array2::from_shape_fn((300, 17), |(i, j)| ((i * 31 + j * 7) % 13) as f64 - 6.0);
        let b = Array2::from_shape_fn((17, 9), |(i, j)| ((i * 5 + j * 11) % 7) as f64 - 3.0);
        assert_eq!(matmul(a.view(), b.view()), naive(&a, &b));
        let at = a.t().to_owned();
        // a^T · a through a transposed view, as the weight gradients use it
        let expected = naive(&at, &a);
        assert_eq!(matmul(a.t(), a.view()), expected);
        // a single block of rows with many columns is split by columns
        let wide = Array2::from_shape_fn((300, 200), |(i, j)| ((i + 3 * j) % 5) as f64);
        assert_eq!(matmul(a.t(), wide.view()), naive(&at, &wide));
        let mut c = Array2::from_elem((300, 9), 1.0);
        gemm(2.0, a.view(), b.view(), 1.0, c.view_mut());
        assert_eq!(c, naive(&a, &b) * 2.0 + 1.0);
    }
}
