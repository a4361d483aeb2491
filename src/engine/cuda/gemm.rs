//! Row-major products as cuBLAS's column-major calls, without copying or transposing anything.
//!
//! The engine stores every matrix row-major (`x [N, d]`, weights `[in, out]`). cuBLAS reads the same
//! buffer column-major, i.e. as the transpose. Since `C = op(A)·op(B)` is `Cᵀ = op(B)ᵀ·op(A)ᵀ`, a
//! row-major product is the column-major product of the operands swapped, with the row-major shapes'
//! roles exchanged: `y = x·W` (`x [N, in]`, `W [in, out]`) is `gemm(N, N, m = out, n = N, k = in,
//! A = W, lda = out, B = x, ldb = in, ldc = out)`. The mapping is a pure function so that it is tested
//! on the CPU against a naive column-major GEMM; the GPU path only forwards its fields.

use crate::engine::Scalar;

/// Whether cuBLAS reads an operand as stored or transposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    N,
    T,
}

/// `C [m, n] = op(A) · op(B)` with every matrix row-major and contiguous: `A` stored `[m, k]`
/// (or `[k, m]` when `transpose_a`), `B` stored `[k, n]` (or `[n, k]` when `transpose_b`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowMajorProduct {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub transpose_a: bool,
    pub transpose_b: bool,
}

/// The arguments of `cublasSgemm` (column-major). `first` says which row-major operand goes in cuBLAS's
/// `A` slot: always the row-major `B`, and the row-major `A` goes in its `B` slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColumnMajorGemm {
    pub transa: Op,
    pub transb: Op,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// Leading dimension of cuBLAS's `A`, which is the row-major `B`.
    pub lda: usize,
    /// Leading dimension of cuBLAS's `B`, which is the row-major `A`.
    pub ldb: usize,
    pub ldc: usize,
}

/// Elements between the starts of consecutive rows of each row-major operand as stored: its width when
/// contiguous, more when it is a block of columns of a wider matrix (a head's `q` inside `[q | k | v]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowStrides {
    pub a: usize,
    pub b: usize,
    pub c: usize,
}

impl RowMajorProduct {
    /// The row strides of contiguous operands: each stored matrix's width.
    pub fn contiguous(&self) -> RowStrides {
        let RowMajorProduct { m, n, k, transpose_a, transpose_b } = *self;
        RowStrides { a: if transpose_a { m } else { k }, b: if transpose_b { k } else { n }, c: n }
    }
}

/// The column-major call computing `product` on contiguous operands; pass the row-major `B` as
/// cuBLAS's `A` and the row-major `A` as its `B`.
pub fn column_major(product: RowMajorProduct) -> ColumnMajorGemm {
    column_major_strided(product, product.contiguous())
}

/// [`column_major`] for operands stored with the row strides `strides`.
pub fn column_major_strided(product: RowMajorProduct, strides: RowStrides) -> ColumnMajorGemm {
    let RowMajorProduct { m, n, k, transpose_a, transpose_b } = product;
    // a row-major buffer with row stride r is a column-major one with leading dimension r
    let transa = if transpose_b { Op::T } else { Op::N };
    let transb = if transpose_a { Op::T } else { Op::N };
    ColumnMajorGemm { transa, transb, m: n, n: m, k, lda: strides.b, ldb: strides.a, ldc: strides.c }
}

/// What cuBLAS's `sgemm` computes for the call `g`, `C = alpha·op(A)·op(B) + beta·C` column-major, each
/// sum accumulated in f64: the host device's product ([`super::host`]) and the tests' reference.
#[allow(clippy::too_many_arguments)]
pub fn reference_gemm<F: Scalar>(g: &ColumnMajorGemm, alpha: F, a: &[F], b: &[F], beta: F, c: &mut [F]) {
    let at = |i: usize, l: usize| match g.transa {
        Op::N => a[i + l * g.lda],
        Op::T => a[l + i * g.lda],
    };
    let bt = |l: usize, j: usize| match g.transb {
        Op::N => b[l + j * g.ldb],
        Op::T => b[j + l * g.ldb],
    };
    for j in 0..g.n {
        for i in 0..g.m {
            let sum: f64 = (0..g.k).map(|l| at(i, l).as_f64() * bt(l, j).as_f64()).sum();
            let out = &mut c[i + j * g.ldc];
            // β = 0 ignores C, as BLAS does: it may hold anything, NaN included
            let base = if beta == F::zero() { 0.0 } else { beta.as_f64() * out.as_f64() };
            *out = F::lit(alpha.as_f64() * sum + base);
        }
    }
}

/// Element strides between consecutive matrices of a strided batch, in cuBLAS's slot order: the row-major
/// `B`'s stride is cuBLAS's `strideA`, the row-major `A`'s is its `strideB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchStrides {
    pub stride_a: usize,
    pub stride_b: usize,
    pub stride_c: usize,
}

/// `gemm_strided_batched` arguments for `batch` row-major products whose operands lie `stride_*` elements
/// apart (row-major slots: `a`, `b`, `c`).
pub fn column_major_batched(
    product: RowMajorProduct,
    row_major_stride_a: usize,
    row_major_stride_b: usize,
    stride_c: usize,
) -> (ColumnMajorGemm, BatchStrides) {
    (column_major(product), BatchStrides { stride_a: row_major_stride_b, stride_b: row_major_stride_a, stride_c })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// `C = op(A)·op(B)` row-major, the naive way.
    fn row_major_product(p: RowMajorProduct, a: &[f64], b: &[f64]) -> Vec<f64> {
        let a_at = |i: usize, l: usize| if p.transpose_a { a[l * p.m + i] } else { a[i * p.k + l] };
        let b_at = |l: usize, j: usize| if p.transpose_b { b[j * p.k + l] } else { b[l * p.n + j] };
        let mut c = vec![0.0; p.m * p.n];
        for i in 0..p.m {
            for j in 0..p.n {
                c[i * p.n + j] = (0..p.k).map(|l| a_at(i, l) * b_at(l, j)).sum();
            }
        }
        c
    }

    fn random(rng: &mut Rng, len: usize) -> Vec<f64> {
        (0..len).map(|_| rng.next_f64() * 2.0 - 1.0).collect()
    }

    fn shapes() -> Vec<RowMajorProduct> {
        let mut shapes = Vec::new();
        for (m, n, k) in [(1, 1, 1), (3, 5, 7), (7, 2, 4), (6, 6, 1), (2, 9, 5)] {
            for transpose_a in [false, true] {
                for transpose_b in [false, true] {
                    shapes.push(RowMajorProduct { m, n, k, transpose_a, transpose_b });
                }
            }
        }
        shapes
    }

    #[test]
    fn forward_projection_is_the_documented_call() {
        // y = x·W, x [N=8, in=3], W [in=3, out=5]
        let g = column_major(RowMajorProduct { m: 8, n: 5, k: 3, transpose_a: false, transpose_b: false });
        assert_eq!(g, ColumnMajorGemm { transa: Op::N, transb: Op::N, m: 5, n: 8, k: 3, lda: 5, ldb: 3, ldc: 5 });
    }

    #[test]
    fn the_mapping_matches_a_naive_column_major_gemm() {
        let mut rng = Rng::new(24);
        for p in shapes() {
            let (a, b) = (random(&mut rng, p.m * p.k), random(&mut rng, p.k * p.n));
            let expected = row_major_product(p, &a, &b);
            let g = column_major(p);
            // beta = 1 on a non-zero C checks that the output layout is row-major too
            let start = random(&mut rng, p.m * p.n);
            let mut c = start.clone();
            reference_gemm(&g, 2.0, &b, &a, 1.0, &mut c);
            for ((got, want), c0) in c.iter().zip(&expected).zip(&start) {
                assert!((got - (2.0 * want + c0)).abs() < 1e-12, "{p:?}: {got} vs {}", 2.0 * want + c0);
            }
        }
    }

    #[test]
    fn the_batched_mapping_matches_a_naive_column_major_gemm_per_matrix() {
        let mut rng = Rng::new(25);
        let batch = 3;
        for p in shapes() {
            // padded strides: operands need not be packed back to back (attention's heads are not)
            let (sa, sb, sc) = (p.m * p.k + 2, p.k * p.n + 1, p.m * p.n + 3);
            let (a, b) = (random(&mut rng, sa * batch), random(&mut rng, sb * batch));
            let (g, strides) = column_major_batched(p, sa, sb, sc);
            let mut c = vec![0.0; sc * batch];
            for index in 0..batch {
                // what gemm_strided_batched does for matrix `index`, slot by slot
                let slot_a = &b[index * strides.stride_a..];
                let slot_b = &a[index * strides.stride_b..];
                reference_gemm(&g, 1.0, slot_a, slot_b, 0.0, &mut c[index * strides.stride_c..]);
            }
            for index in 0..batch {
                let expected = row_major_product(p, &a[index * sa..], &b[index * sb..]);
                let got = &c[index * sc..index * sc + p.m * p.n];
                for (got, want) in got.iter().zip(&expected) {
                    assert!((got - want).abs() < 1e-12, "{p:?} matrix {index}: {got} vs {want}");
                }
            }
        }
    }
}
