//! `f32` matrix products that pack (almost) nothing: the output layer's three products per logit
//! tile, a block task's products of its own rows, and each block of the weight gradients `xᵀ·∂y`.
//!
//! OpenBLAS copies both operands of every call into its own panel layout before multiplying. For the
//! output layer that is a poor trade: each logit tile (`[2048, 256]`) costs three calls in which one
//! dimension is only the model width `d`, so the copies are a large share of the arithmetic. Profiled
//! on word-wt2 (2-core AMD EPYC, OpenBLAS 0.3.21): packing 7 % and the zeroing of β = 0 outputs 1.8 %
//! of a training step's cycles. Here a register-blocked micro-kernel reads its operands where they lie:
//!
//! - `A` through any pair of strides, one scalar per row and step broadcast into a register, so rows
//!   of a row-major matrix and columns of one (a transposed view) are read alike;
//! - `B` by rows, each row's `NR` elements contiguous (unit column stride), except in products of
//!   thousands of rows (the output layer's tiles), whose `B` is copied into contiguous panels once
//!   per inner block: `K·N` elements against `2·M·K·N` flops ([`PACK_B_MIN_ROWS`]);
//! - `C` by rows with unit column stride, written once per block of the inner dimension (no zeroing).
//!
//! Each `MR × NR` block of `C` is a sum over the inner dimension in one fixed order (FMA per step,
//! from zero, then added to `C` when accumulating), in blocks of [`INNER_BLOCK`], so a result depends
//! on the shapes and the kernel, never on the thread count. Edges narrower than a register block run
//! the same kernel on zero-padded copies, so they give the bits the full kernel would.
//!
//! The kernel needs AVX-512 (`8 × 32` blocks: 16 accumulators of 16 lanes). Without it [`product`]
//! hands the call to OpenBLAS: an AVX2 `6 × 16` version of the same kernel was measured against
//! OpenBLAS's own AVX2 kernel on one CPU and did not pay (the forward tile 98.6 against 95.4 GFLOP/s,
//! `∂h` 103 against 105, and `∂Wᵀ`, whose `A` is read down its columns, 85 against 107; `5 × 16`,
//! `4 × 24` and `3 × 32` blocks did worse, `docs/performance.md`). What did pay on AVX2 is the same
//! `6 × 16` kernel for the output layer's tiles alone, over operands packed once per pass and tiles
//! laid out for it ([`super::tile_products`]). Two CPUs that take different paths round differently;
//! one machine always gives the same bits.

use std::sync::OnceLock;

use ndarray::{ArrayView2, ArrayViewMut2};

use super::linalg::local_gemm;

/// The inner dimension is summed in blocks of this many steps: a block of `B`'s register panel (16 KB
/// for `NR = 16`) stays in the L1 cache while the rows of `A` stream past it.
pub const INNER_BLOCK: usize = 256;

/// Rows of `A` (and `C`) per pass over one register panel of `B`: about 128–256 KB of `A` kept in L2.
const ROW_BLOCK_TARGET: usize = 256;

/// From this many rows of `A` up, `B` is copied into contiguous register panels once per inner block.
/// Read in place, a panel's rows lie `ldb` apart: at `N = 256` (a logit tile) its 128-byte rows, one
/// per inner step, fall in 8 of the L1 cache's 64 sets, 32 or more lines to a 12-way set, and the
/// panel is reread from L2 for every row block.
/// On one core of an Intel Xeon (AVX-512, two FMA ports) the copy took word-wt2's logit tile from
/// 0.86–0.89 of OpenBLAS's rate to 1.03–1.04, and `∂h`'s from 0.88–0.93 to 0.94–0.99. The blocks'
/// row products (128–256 rows) gain nothing: given as rows, their `B` already ran at the kernel's
/// L1 rate in place (152–164 GFLOP/s) and 0–9 % slower packed; given transposed, one shape gained
/// a fifth and an attention head's (inner dimension 32) lost a quarter. With transposed ones
/// packed from 32 rows deep enough (64), char-small's steps were no faster.
const PACK_B_MIN_ROWS: usize = 512;

/// Copies `b [depth, n]` into `out` as `[⌈n/nr⌉, depth, nr]`, columns past `n` zero: every element
/// of the first `⌈n/nr⌉·depth·nr` is written.
pub(super) fn pack_panels(b: ArrayView2<f32>, nr: usize, out: &mut [f32]) {
    let (depth, n) = b.dim();
    let panels = n.div_ceil(nr);
    let out = &mut out[..panels * depth * nr];
    let (row_stride, column_stride) = (b.strides()[0], b.strides()[1]);
    if n > 1 && column_stride != 1 && (depth < 2 || row_stride == 1) {
        // a transposed view: each column of `b` is a contiguous row of the matrix behind it
        if n % nr != 0 {
            out[(panels - 1) * depth * nr..].fill(0.0);
        }
        for (j, column) in b.columns().into_iter().enumerate() {
            let column = column.to_slice().expect("a transposed view's columns are contiguous");
            let (panel, lane) = (j / nr, j % nr);
            let panel_out = &mut out[panel * depth * nr..][..depth * nr];
            for (k, &value) in column.iter().enumerate() {
                panel_out[k * nr + lane] = value;
            }
        }
        return;
    }
    for (k, row) in b.rows().into_iter().enumerate() {
        let row = match row.to_slice() {
            Some(row) => std::borrow::Cow::Borrowed(row),
            None => std::borrow::Cow::Owned(row.to_vec()),
        };
        for panel in 0..panels {
            let (j0, width) = (panel * nr, nr.min(n - panel * nr));
            let line = &mut out[(panel * depth + k) * nr..][..nr];
            line[..width].copy_from_slice(&row[j0..j0 + width]);
            line[width..].fill(0.0);
        }
    }
}

/// One register block: `C[MR, NR] (+)= Σ_k A[i, k]·B[k, j]` over `k < inner`, where `A[i, k]` is at
/// `a + i·a_row + k·a_step`, `B[k, ·]` at `b + k·ldb` and `C[i, ·]` at `c + i·ldc` (element offsets).
type BlockFn = unsafe fn(
    inner: usize,
    a: *const f32,
    a_row: isize,
    a_step: isize,
    b: *const f32,
    ldb: isize,
    c: *mut f32,
    ldc: isize,
    accumulate: bool,
);

/// A micro-kernel and its register block.
#[derive(Clone, Copy)]
pub struct Kernel {
    pub name: &'static str,
    pub rows: usize,
    pub cols: usize,
    /// Its register block; calling it is `unsafe`, under [`BlockFn`]'s contract and the kernel's
    /// instruction set.
    pub(super) block: BlockFn,
}

/// Defines an `unsafe fn` computing one `$mr × ($lanes·$vectors)` register block with the given SIMD
/// intrinsics, compiled for `$features`.
macro_rules! register_block {
    ($name:ident, $features:literal, $mr:literal, $vectors:literal, $lanes:literal,
     $zero:ident, $load:ident, $store:ident, $splat:ident, $fma:ident, $add:ident) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        #[allow(clippy::too_many_arguments)]
        unsafe fn $name(
            inner: usize,
            a: *const f32,
            a_row: isize,
            a_step: isize,
            b: *const f32,
            ldb: isize,
            c: *mut f32,
            ldc: isize,
            accumulate: bool,
        ) {
            use std::arch::x86_64::*;
            let mut acc = [[$zero(); $vectors]; $mr];
            // SAFETY (whole body): the caller guarantees that every address of A, B and C described by
            // the strides lies inside its operand for i < MR, k < inner, j < NR.
            unsafe {
                let rows: [*const f32; $mr] = std::array::from_fn(|i| a.offset(i as isize * a_row));
                let (mut b_row, mut a_offset) = (b, 0isize);
                for _ in 0..inner {
                    let b_vectors: [_; $vectors] = std::array::from_fn(|v| $load(b_row.add(v * $lanes)));
                    for i in 0..$mr {
                        let a_value = $splat(*rows[i].offset(a_offset));
                        for v in 0..$vectors {
                            acc[i][v] = $fma(a_value, b_vectors[v], acc[i][v]);
                        }
                    }
                    b_row = b_row.offset(ldb);
                    a_offset += a_step;
                }
                for i in 0..$mr {
                    let c_row = c.offset(i as isize * ldc);
                    for v in 0..$vectors {
                        let out = c_row.add(v * $lanes);
                        let value = if accumulate { $add($load(out), acc[i][v]) } else { acc[i][v] };
                        $store(out, value);
                    }
                }
            }
        }
    };
}

register_block!(
    block_avx512_8x32,
    "avx512f",
    8,
    2,
    16,
    _mm512_setzero_ps,
    _mm512_loadu_ps,
    _mm512_storeu_ps,
    _mm512_set1_ps,
    _mm512_fmadd_ps,
    _mm512_add_ps
);

register_block!(
    block_avx2_6x16,
    "avx2,fma",
    6,
    2,
    8,
    _mm256_setzero_ps,
    _mm256_loadu_ps,
    _mm256_storeu_ps,
    _mm256_set1_ps,
    _mm256_fmadd_ps,
    _mm256_add_ps
);

/// The AVX2 `6 × 16` kernel, where the instruction set is capped at AVX2 (no AVX-512 kernel runs)
/// and the CPU has FMA: the output layer's tile products over packed operands
/// ([`super::tile_products`]). Every other product on such a CPU stays with OpenBLAS (see above).
pub fn avx2_tile_kernel() -> Option<Kernel> {
    static CHOSEN: OnceLock<Option<Kernel>> = OnceLock::new();
    *CHOSEN.get_or_init(|| {
        let allowed = direct_products_allowed().unwrap_or(true);
        avx2_kernel_on_this_cpu().filter(|_| allowed && super::simd::simd() == super::simd::Simd::Avx2)
    })
}

/// The AVX2 `6 × 16` kernel wherever the CPU has AVX2 and FMA, whatever the cap (for tests).
pub fn avx2_kernel_on_this_cpu() -> Option<Kernel> {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            return Some(Kernel { name: "avx2 6x16", rows: 6, cols: 16, block: block_avx2_6x16 });
        }
    }
    None
}

/// Every kernel this CPU can run within [`super::simd::simd`]'s instruction set, the one
/// [`product`] uses first.
pub fn available_kernels() -> Vec<Kernel> {
    #[allow(unused_mut)]
    let mut kernels = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        // `simd` never exceeds what the CPU has, so AVX-512F is there when it allows AVX-512
        if super::simd::simd() >= super::simd::Simd::Avx512 {
            kernels.push(Kernel { name: "avx512 8x32", rows: 8, cols: 32, block: block_avx512_8x32 });
        }
    }
    kernels
}

/// Chooses who computes [`product`]: `direct` (the default: ailla's kernel where the CPU has one) or
/// `blas` (OpenBLAS for every product, so that an AVX-512 machine gives the bits of an AVX2 one that
/// runs the same OpenBLAS kernel).
pub const PRODUCTS_VARIABLE: &str = "AILLA_PRODUCTS";

/// Whether [`PRODUCTS_VARIABLE`] allows the direct kernel: an error names a value that is neither.
pub fn direct_products_allowed() -> Result<bool, String> {
    match std::env::var_os(PRODUCTS_VARIABLE) {
        None => Ok(true),
        Some(value) if value == "direct" => Ok(true),
        Some(value) if value == "blas" => Ok(false),
        Some(value) => Err(format!("is {value:?}; it must be `direct` or `blas`")),
    }
}

/// The kernel [`product`] uses in this process, if any (read once; the command line checks
/// [`PRODUCTS_VARIABLE`] before any product runs, and an unreadable value means the default).
pub fn kernel() -> Option<Kernel> {
    static CHOSEN: OnceLock<Option<Kernel>> = OnceLock::new();
    *CHOSEN.get_or_init(|| {
        let allowed = direct_products_allowed().unwrap_or(true);
        available_kernels().into_iter().next().filter(|_| allowed)
    })
}

/// `c = a·b` (or `c += a·b` when `accumulate`), single-threaded: `a [M, K]`, `b [K, N]`, `c [M, N]`.
///
/// Runs the direct kernel when this CPU has one, `c` has a unit column stride (a `b` without one is
/// copied into rows first) and few of `c`'s columns fall in edge blocks (`edge_heavy`); otherwise
/// OpenBLAS computes the same product.
pub fn product(a: ArrayView2<f32>, b: ArrayView2<f32>, accumulate: bool, c: ArrayViewMut2<f32>) {
    match kernel() {
        Some(kernel) if !edge_heavy(kernel, c.ncols()) => product_with(kernel, a, b, accumulate, c),
        _ => local_gemm(a, b, accumulate, c),
    }
}

/// Whether more than a quarter of `columns` would fall in a partial register block, whose zero-padded
/// copies cost more than OpenBLAS's packing saves: a model width of 48 against 32-column blocks.
fn edge_heavy(kernel: Kernel, columns: usize) -> bool {
    4 * (columns % kernel.cols) > columns
}

/// [`product`] with a given kernel (for tests and benchmarks that compare kernels).
pub fn product_with(
    kernel: Kernel,
    a: ArrayView2<f32>,
    b: ArrayView2<f32>,
    accumulate: bool,
    mut c: ArrayViewMut2<f32>,
) {
    let ((m, inner), n) = (a.dim(), b.ncols());
    assert_eq!(b.nrows(), inner, "inner dimensions agree");
    assert_eq!(c.dim(), (m, n), "the output is [M, N]");
    if m == 0 || n == 0 {
        return;
    }
    if inner == 0 {
        if !accumulate {
            c.fill(0.0);
        }
        return;
    }
    // (a column stride means nothing for one column, and empty arrays have strides of 0)
    if n > 1 && c.strides()[1] != 1 {
        return local_gemm(a, b, accumulate, c);
    }
    let (mr, nr) = (kernel.rows, kernel.cols);
    // (A read down its columns, as in `∂zᵀ·h`, ran 20 % slower with B packed: not done there)
    let a_along_rows = inner < 2 || a.strides()[1] == 1;
    let b_transposed = n > 1 && b.strides()[1] != 1;
    let pack_b = a_along_rows && m >= PACK_B_MIN_ROWS;
    if !pack_b && b_transposed {
        // B seen through a transpose (the tied output weight as Eᵀ): one copy into rows, K·N elements
        // against the M·K·N of the product
        let mut rows = super::buffers::scratch::<f32>(b.nrows(), b.ncols());
        rows.assign(&b);
        product_with(kernel, a, rows.view(), accumulate, c);
        super::buffers::recycle(rows);
        return;
    }
    let row_block = mr * (ROW_BLOCK_TARGET / mr).max(1);
    let [a_row, a_step] = [a.strides()[0], a.strides()[1]];
    let (ldb, ldc) = (b.strides()[0], c.strides()[0]);
    let (a_ptr, b_ptr, c_ptr) = (a.as_ptr(), b.as_ptr(), c.as_mut_ptr());
    // zero-padded copies for edge blocks, made only where the shapes have edges: A's last partial
    // panel as [inner block, MR] (it starts at row `m_full`), B as [inner block, NR], C as [MR, NR]
    let m_full = m - m % mr;
    let edge_buffer = |len: usize, needed: bool| if needed { vec![0f32; len] } else { Vec::new() };
    let mut a_edge = edge_buffer(INNER_BLOCK * mr, m_full < m);
    let mut b_edge = edge_buffer(INNER_BLOCK * nr, n % nr != 0 && !pack_b);
    let mut c_edge = edge_buffer(mr * nr, m_full < m || n % nr != 0);
    // B's register panels of one inner block, [panels, depth, NR] with zeros past column n
    let panels = n.div_ceil(nr);
    let mut packed_b = pack_b.then(|| super::buffers::scratch::<f32>(panels * INNER_BLOCK.min(inner), nr));
    for k0 in (0..inner).step_by(INNER_BLOCK) {
        let depth = INNER_BLOCK.min(inner - k0);
        let add = accumulate || k0 > 0;
        if let Some(packed) = packed_b.as_mut() {
            pack_panels(
                b.slice(ndarray::s![k0..k0 + depth, ..]),
                nr,
                packed.as_slice_mut().expect("a pool buffer is whole"),
            );
        }
        for i_block in (0..m).step_by(row_block) {
            let i_end = (i_block + row_block).min(m);
            if (i_block..i_end).contains(&m_full) {
                // the partial panel's rows, the same for every column panel of B
                for k in 0..depth {
                    for i in 0..mr {
                        a_edge[k * mr + i] = if m_full + i < m { a[[m_full + i, k0 + k]] } else { 0.0 };
                    }
                }
            }
            for j0 in (0..n).step_by(nr) {
                let width = nr.min(n - j0);
                let (b_use, ldb_use) = if let Some(packed) = &packed_b {
                    // SAFETY: panel j0/nr of the packed block, depth·nr elements from its start
                    (unsafe { packed.as_ptr().add(j0 / nr * depth * nr) }, nr as isize)
                } else if width == nr {
                    // SAFETY: offsets of in-bounds elements (k0 < inner, j0 < n) of `b`.
                    let b_panel = unsafe { b_ptr.offset(k0 as isize * ldb + j0 as isize) };
                    (b_panel, ldb)
                } else {
                    for k in 0..depth {
                        for j in 0..nr {
                            b_edge[k * nr + j] = if j < width { b[[k0 + k, j0 + j]] } else { 0.0 };
                        }
                    }
                    (b_edge.as_ptr(), nr as isize)
                };
                for i0 in (i_block..i_end).step_by(mr) {
                    let height = mr.min(m - i0);
                    // SAFETY: offsets of in-bounds elements (i0 < m, k0 < inner) of `a` and of `c`.
                    let a_panel = unsafe { a_ptr.offset(i0 as isize * a_row + k0 as isize * a_step) };
                    let c_block = unsafe { c_ptr.offset(i0 as isize * ldc + j0 as isize) };
                    if height == mr && width == nr {
                        // SAFETY: a full register block: rows i0..i0+MR < m, columns j0..j0+NR ≤ n and
                        // steps k0..k0+depth ≤ inner all lie inside a, b (or its packed panel) and c.
                        unsafe { (kernel.block)(depth, a_panel, a_row, a_step, b_use, ldb_use, c_block, ldc, add) };
                        continue;
                    }
                    let (a_use, a_row_use, a_step_use) =
                        if height == mr { (a_panel, a_row, a_step) } else { (a_edge.as_ptr(), 1, mr as isize) };
                    // SAFETY: rows of `a_use` past `height` are the zero padding of `a_edge` (MR rows);
                    // `b_use` has NR readable columns; `c_edge` is MR × NR.
                    unsafe {
                        (kernel.block)(
                            depth,
                            a_use,
                            a_row_use,
                            a_step_use,
                            b_use,
                            ldb_use,
                            c_edge.as_mut_ptr(),
                            nr as isize,
                            false,
                        )
                    };
                    for i in 0..height {
                        for j in 0..width {
                            let value = c_edge[i * nr + j];
                            let out = &mut c[[i0 + i, j0 + j]];
                            *out = if add { *out + value } else { value };
                        }
                    }
                }
            }
        }
    }
    packed_b.into_iter().for_each(super::buffers::recycle);
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{s, Array2};

    fn matrix(rows: usize, cols: usize, seed: u64) -> Array2<f32> {
        let mut rng = crate::rng::Rng::new(seed);
        Array2::from_shape_fn((rows, cols), |_| rng.next_f64() as f32 * 2.0 - 1.0)
    }

    /// The product in f64 from the same f32 inputs.
    fn exact(a: ArrayView2<f32>, b: ArrayView2<f32>) -> Array2<f64> {
        a.mapv(f64::from).dot(&b.mapv(f64::from))
    }

    /// f32 sums of `K` products of magnitude ≤ 1 are within `K·2⁻²³` of the exact sum, whatever the order.
    fn assert_close(got: &Array2<f32>, expected: &Array2<f64>, inner: usize) {
        let tolerance = inner as f64 * f64::from(f32::EPSILON);
        for ((i, j), &value) in got.indexed_iter() {
            let gap = (f64::from(value) - expected[[i, j]]).abs();
            assert!(gap <= tolerance, "[{i}, {j}]: {value} against {} (gap {gap:e} > {tolerance:e})", expected[[i, j]]);
        }
    }

    /// Shapes that cover full blocks, edges in both directions, several inner blocks, and the
    /// output layer's own (`[rows, d]·[d, cols]`, `[rows, cols]·[cols, d]`, `[cols, rows]·[rows, d]`).
    const SHAPES: [(usize, usize, usize); 7] =
        [(1, 1, 1), (7, 3, 17), (8, 32, 32), (13, 300, 45), (64, 128, 256), (256, 700, 128), (37, 513, 70)];

    /// The kernels to test, saying so when this CPU has none (products then run OpenBLAS, which the
    /// output loss's `f32` test still checks).
    fn kernels_to_test(test: &str) -> Vec<Kernel> {
        let kernels = available_kernels();
        if kernels.is_empty() {
            eprintln!("skipped {test}: this CPU has no direct kernel (it needs AVX-512)");
        }
        kernels
    }

    #[test]
    fn every_kernel_matches_the_exact_product_in_every_layout() {
        for kernel in kernels_to_test("every_kernel_matches_the_exact_product_in_every_layout") {
            for (index, &(m, k, n)) in SHAPES.iter().enumerate() {
                let seed = index as u64 * 10;
                let (a, b) = (matrix(m, k, seed), matrix(k, n, seed + 1));
                // A row-major, and A as the transposed view of a row-major [K, M] (the ∂Wᵀ product)
                let a_t = matrix(k, m, seed + 2);
                for a_view in [a.view(), a_t.t()] {
                    let mut c = Array2::from_elem((m, n), f32::NAN);
                    product_with(kernel, a_view, b.view(), false, c.view_mut());
                    assert_close(&c, &exact(a_view, b.view()), k);
                    // accumulating adds the product to what is there
                    let start = matrix(m, n, seed + 3);
                    let mut c = start.clone();
                    product_with(kernel, a_view, b.view(), true, c.view_mut());
                    assert_close(&c, &(exact(a_view, b.view()) + start.mapv(f64::from)), k + 1);
                }
                // a column block of a wider C and B (a tile of the vocabulary)
                let wide_b = matrix(k, n + 9, seed + 4);
                let mut wide_c = Array2::from_elem((m, n + 9), 7.0f32);
                product_with(
                    kernel,
                    a.view(),
                    wide_b.slice(s![.., 3..3 + n]),
                    false,
                    wide_c.slice_mut(s![.., 3..3 + n]),
                );
                assert_close(
                    &wide_c.slice(s![.., 3..3 + n]).to_owned(),
                    &exact(a.view(), wide_b.slice(s![.., 3..3 + n])),
                    k,
                );
                assert!(wide_c.slice(s![.., ..3]).iter().all(|&v| v == 7.0), "{}: wrote left of C", kernel.name);
                assert!(wide_c.slice(s![.., 3 + n..]).iter().all(|&v| v == 7.0), "{}: wrote right of C", kernel.name);
            }
        }
    }

    #[test]
    fn an_edge_block_gives_the_bits_of_a_full_block() {
        // the first rows and columns of a product equal, bit for bit, the same rows and columns of a
        // wider one, where they were computed by the full kernel
        for kernel in kernels_to_test("an_edge_block_gives_the_bits_of_a_full_block") {
            let (m, k, n) = (2 * kernel.rows, 300, 2 * kernel.cols);
            let (a, b) = (matrix(m, k, 1), matrix(k, n, 2));
            let mut whole = Array2::zeros((m, n));
            product_with(kernel, a.view(), b.view(), false, whole.view_mut());
            let (m_edge, n_edge) = (kernel.rows + 3, kernel.cols + 5);
            let mut part = Array2::zeros((m_edge, n_edge));
            product_with(kernel, a.slice(s![..m_edge, ..]), b.slice(s![.., ..n_edge]), false, part.view_mut());
            assert_eq!(part, whole.slice(s![..m_edge, ..n_edge]), "{}", kernel.name);
        }
    }

    #[test]
    fn outputs_with_many_edge_columns_are_left_to_openblas() {
        let kernel = Kernel { name: "test 8x32", rows: 8, cols: 32, block: |_, _, _, _, _, _, _, _, _| {} };
        // a model width of 48 puts 16 of its 48 columns in an edge block; 20 columns are all edge
        assert!(edge_heavy(kernel, 48) && edge_heavy(kernel, 20));
        // whole blocks, and the last vocabulary tile (254 columns, 30 of them in an edge block)
        for columns in [32, 64, 128, 256, 254] {
            assert!(!edge_heavy(kernel, columns), "{columns} columns");
        }
    }

    #[test]
    fn a_transposed_b_and_an_empty_inner_dimension() {
        // B with a column stride (the tied output weight seen as Eᵀ) is copied into rows first
        let (a, e) = (matrix(20, 16, 5), matrix(40, 16, 6));
        let mut c = Array2::zeros((20, 40));
        product(a.view(), e.t(), false, c.view_mut());
        assert_close(&c, &exact(a.view(), e.t()), 16);
        // a transposed B copied into rows (37 rows) or packed into panels (from PACK_B_MIN_ROWS rows)
        // gives the bits of B given as rows, with partial row and column panels and two inner
        // blocks, over stale pool buffers
        let kernels = kernels_to_test("a_transposed_b_and_an_empty_inner_dimension");
        for (kernel, m) in kernels.iter().flat_map(|&k| [(k, 37), (k, PACK_B_MIN_ROWS + 3)]) {
            let (a, e) = (matrix(m, 300, 7), matrix(45, 300, 8));
            let rows = e.t().to_owned();
            let mut from_view = Array2::from_elem((m, 45), f32::NAN);
            let mut from_rows = from_view.clone();
            let packed_len = 45usize.div_ceil(kernel.cols) * INNER_BLOCK * kernel.cols;
            <f32 as super::super::Scalar>::buffers().give(vec![f32::NAN; packed_len]);
            product_with(kernel, a.view(), e.t(), false, from_view.view_mut());
            product_with(kernel, a.view(), rows.view(), false, from_rows.view_mut());
            assert_close(&from_view, &exact(a.view(), e.t()), 300);
            let bits = |c: &Array2<f32>| c.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&from_view), bits(&from_rows), "{}", kernel.name);
        }
        // an empty inner dimension gives zeros, or leaves C when accumulating
        let mut c = Array2::from_elem((3, 4), 2.0f32);
        product(Array2::zeros((3, 0)).view(), Array2::zeros((0, 4)).view(), true, c.view_mut());
        assert!(c.iter().all(|&v| v == 2.0));
        product(Array2::zeros((3, 0)).view(), Array2::zeros((0, 4)).view(), false, c.view_mut());
        assert!(c.iter().all(|&v| v == 0.0));
    }
}
