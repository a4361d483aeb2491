//! Matrix products on multicore CPUs.
//!
//! OpenBLAS is pinned to one thread and the work is split here instead, by blocks of output rows that
//! rayon runs in parallel (or, for the weight gradients, by chunks of the inner dimension whose partials
//! are added in order). The split depends on the shapes alone, so each output element is computed the
//! same way whatever the number of threads: results are reproducible, and the cores are never
//! oversubscribed by two thread pools.

use ndarray::linalg::general_mat_mul;
use ndarray::{s, Array2, ArrayView2, ArrayViewMut2, Axis};
use rayon::prelude::*;
use std::ops::Range;
use std::sync::Once;

use super::buffers::{recycle, scratch};
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

/// Inner steps per task of [`product`]'s split of the inner dimension: 4 tasks for a batch of 2048 rows.
const INNER_PER_TASK: usize = 512;

/// At most this many partials of `c` in [`product`]'s split of the inner dimension.
const MAX_PARTIALS: usize = 16;

/// [`product`] splits the inner dimension only where its partials take at most this many elements
/// together (4 MB in `f32`): all four weight gradients of a block at `d = 256`, `d_ff = 1024` and a
/// batch of 2048 rows.
const PARTIAL_ELEMENTS: usize = 1 << 20;

/// Rows of `c` per task when the partials are added into it.
const SUM_ROWS: usize = 16;

/// `c = alpha · a · b + beta · c`, split into blocks of `c` that rayon computes in parallel.
///
/// The blocks depend only on the shapes (never on the thread count) and each element of `c` comes from
/// one BLAS call over the full inner dimension, so the result is the same with any number of threads.
pub fn gemm<F: Scalar>(alpha: F, a: ArrayView2<F>, b: ArrayView2<F>, beta: F, c: ArrayViewMut2<F>) {
    init_blas();
    for_each_block(a, b, c, |a, b, mut c| general_mat_mul(alpha, &a, &b, beta, &mut c));
}

/// `c = a·b`, or `c += a·b` when `accumulate`, each part computed by [`Scalar::local_product`] (so in
/// `f32` by the direct kernel where the CPU has one).
///
/// Where the products pack their operands (OpenBLAS), a long inner dimension with a small `c` (the
/// weight gradients `xᵀ·∂y`: `K` is the whole batch, `c` is `d × d`) is cut into [`inner_chunks`],
/// each a whole `[M, N]` product into a partial of its own, and the partials are added into `c` in
/// order. Split by columns of `c` instead, every task packed the whole `xᵀ` again: 8 times for `∂W₁`
/// at `d = 128`, `d_ff = 512`. On a 2-core AMD EPYC (Zen 4) capped at AVX2 the four weight gradients
/// of a char-small block took 3–13 % less time this way (medians of four runs, the splits
/// alternating); with the AVX-512 direct kernel, which packs nothing, the two splits were within 4 %
/// either way, so it keeps the blocks of `c` (`cargo bench -- weight_gradients`). Any other shape is
/// split into blocks of `c` exactly as [`gemm`] splits them. Both splits depend on the shapes and the
/// kernel alone, never on the thread count.
pub fn product<F: Scalar>(a: ArrayView2<F>, b: ArrayView2<F>, accumulate: bool, c: ArrayViewMut2<F>) {
    let chunks = inner_chunks(a.ncols()).len();
    if F::products_pack_operands() && chunks > 1 && chunks * c.len() <= PARTIAL_ELEMENTS {
        product_by_inner_chunks(a, b, accumulate, c)
    } else {
        product_by_blocks(a, b, accumulate, c)
    }
}

/// [`product`] split into blocks of `c`, as [`gemm`] splits them (public for the benchmark that
/// compares the two splits).
pub fn product_by_blocks<F: Scalar>(a: ArrayView2<F>, b: ArrayView2<F>, accumulate: bool, c: ArrayViewMut2<F>) {
    init_blas();
    for_each_block(a, b, c, |a, b, c| F::local_product(a, b, accumulate, c));
}

/// [`product`] split into [`inner_chunks`] whose partials are added into `c` in order, whatever the
/// shapes (public for the benchmark that compares the two splits).
pub fn product_by_inner_chunks<F: Scalar>(
    a: ArrayView2<F>,
    b: ArrayView2<F>,
    accumulate: bool,
    mut c: ArrayViewMut2<F>,
) {
    init_blas();
    let (m, n) = (a.nrows(), b.ncols());
    assert_eq!(a.ncols(), b.nrows(), "inner dimensions agree");
    assert_eq!(c.dim(), (m, n), "the output is [M, N]");
    let chunks = inner_chunks(a.ncols());
    let partials: Vec<Array2<F>> = chunks
        .into_par_iter()
        .map(|range| {
            // every element is written: the product does not accumulate
            let mut partial = scratch::<F>(m, n);
            F::local_product(a.slice(s![.., range.clone()]), b.slice(s![range, ..]), false, partial.view_mut());
            partial
        })
        .collect();
    c.axis_chunks_iter_mut(Axis(0), SUM_ROWS).into_par_iter().enumerate().for_each(|(index, mut rows)| {
        let these = index * SUM_ROWS..index * SUM_ROWS + rows.nrows();
        let mut parts = partials.iter().map(|partial| partial.slice(s![these.clone(), ..]));
        if !accumulate {
            match parts.next() {
                Some(part) => rows.assign(&part),
                None => rows.fill(F::zero()), // an empty inner dimension
            }
        }
        parts.for_each(|part| rows += &part);
    });
    partials.into_iter().for_each(recycle);
}

/// The inner dimension's chunks for [`product`]'s split: of [`INNER_PER_TASK`], or more where that
/// would make over [`MAX_PARTIALS`] partials (rounded up to a multiple of 64). A single chunk means no split.
fn inner_chunks(inner: usize) -> Vec<Range<usize>> {
    let size = INNER_PER_TASK.max(inner.div_ceil(MAX_PARTIALS).div_ceil(64) * 64);
    (0..inner.div_ceil(size)).map(|k| k * size..((k + 1) * size).min(inner)).collect()
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

    #[test]
    fn inner_chunks_cover_the_inner_dimension_in_order_and_stay_few() {
        for inner in [1, 511, 512, 1023, 1024, 1100, 2048, 8192, 100_000] {
            let chunks = inner_chunks(inner);
            assert!(chunks.len() <= MAX_PARTIALS, "{inner}: {} chunks", chunks.len());
            let covered: Vec<usize> = chunks.iter().flat_map(|range| range.clone()).collect();
            assert_eq!(covered, (0..inner).collect::<Vec<_>>(), "{inner}: every step once, in order");
        }
        assert_eq!(inner_chunks(2048).len(), 4, "a batch of 2048 rows makes four tasks");
        assert_eq!(inner_chunks(1023).len(), 2);
    }

    /// The weight gradients' product, whichever way it splits: exact on small integers (so every order
    /// of summation gives the same value), with and without accumulating, at inner lengths that make
    /// one chunk, an uneven last chunk, and several.
    #[test]
    fn product_over_a_long_inner_dimension_matches_the_naive_product() {
        use crate::engine::Scalar;
        let (m, n) = (130, 131); // partials large enough to come from the pool
        for inner in [300, 1100, 2048] {
            let x = Array2::from_shape_fn((inner, m), |(i, j)| ((i * 13 + j * 7) % 11) as f64 - 5.0);
            let dy = Array2::from_shape_fn((inner, n), |(i, j)| ((i * 3 + j * 5) % 9) as f64 - 4.0);
            let expected = naive(&x.t().to_owned(), &dy);
            for _ in 0..4 {
                // stale partials must be overwritten, never read
                f64::buffers().give(vec![f64::NAN; m * n]);
            }
            let mut c = Array2::from_elem((m, n), f64::NAN); // must be overwritten, never read
            product(x.t(), dy.view(), false, c.view_mut());
            assert_eq!(c, expected, "inner {inner}, assigned");
            let mut c = Array2::from_elem((m, n), 2.0);
            product(x.t(), dy.view(), true, c.view_mut());
            assert_eq!(c, &expected + 2.0, "inner {inner}, accumulated");
        }
        let mut c = Array2::from_elem((3, 4), f64::NAN);
        let (a, b) = (Array2::<f64>::zeros((3, 0)), Array2::<f64>::zeros((0, 4)));
        product_by_inner_chunks(a.view(), b.view(), false, c.view_mut());
        assert_eq!(c, Array2::<f64>::zeros((3, 4)), "an empty inner dimension gives zeros");
    }

    /// The split depends on the shapes, not on the threads: the same bits in `f32` with 1 and 3 threads.
    #[test]
    fn product_over_a_long_inner_dimension_has_the_same_bits_on_any_number_of_threads() {
        let x = Array2::from_shape_fn((2048, 40), |(i, j)| ((i * 31 + j * 17) % 97) as f32 / 97.0 - 0.5);
        let dy = Array2::from_shape_fn((2048, 72), |(i, j)| ((i * 7 + j * 29) % 89) as f32 / 89.0 - 0.5);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("a thread pool");
            pool.install(|| {
                let mut c = Array2::from_elem((40, 72), 0.25f32);
                product(x.t(), dy.view(), true, c.view_mut());
                c
            })
        };
        let (one, three) = (run(1), run(3));
        assert!(one.iter().zip(&three).all(|(a, b)| a.to_bits() == b.to_bits()), "bits differ between 1 and 3 threads");
    }
}
