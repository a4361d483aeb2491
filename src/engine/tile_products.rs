//! The output layer's three products per logit tile ([`super::loss`]): `z = h·W`, `∂Wᵀ += ∂zᵀ·h` and
//! `∂h += ∂z·Wᵀ`. On CPUs whose kernels run AVX2 (no AVX-512, or `AILLA_SIMD=avx2`) with FMA, they
//! run ailla's `6 × 16` kernel over operands packed once per pass; elsewhere, through
//! [`Scalar::local_product`] (OpenBLAS, or the AVX-512 direct kernel).
//!
//! Why: OpenBLAS copies both operands of each call into its panel layout. A word model's tiles are
//! `[2048, 256]` with an inner dimension of `d = 128`, so each of WikiText-2's 130 vocabulary blocks
//! packed the whole hidden matrix again, twice per training step: on a 2-core AMD EPYC (Zen 3, AVX2
//! only) OpenBLAS's packing was 16.5 % of a word-wt2 training step and its zeroing of `β = 0`
//! outputs 3.4 % (`docs/performance.md`). Here:
//!
//! - `h` is packed once per call of the loss, per row tile, in the two layouts the kernel reads it in:
//!   6-row panels `[d, 6]` for the logits and 16-column panels `[rows, 16]` for `∂Wᵀ = ∂zᵀ·h`;
//! - a vocabulary block of `W` is packed once per tile into 16-column panels, `[d, 16]` for the logits
//!   and `[cols, 16]` for `∂h`;
//! - the tile itself is never packed whole. Its rows are padded to a multiple of 6, its row stride is
//!   whole 16-column panels plus one more (1088 bytes for 256 columns, not 1024, so that consecutive
//!   rows fall in different L1 sets), and it starts on a cache line, so that 16 columns fill one line;
//! - the logits are written directly (no zeroing); `∂h` reads the tile's rows in place; `∂Wᵀ` comes
//!   out in its own layout `[cols, d]`, its register blocks reading 6 columns of a chunk of the tile,
//!   copied first into one contiguous panel;
//! - both passes go through a tile a chunk of rows at a time: pass 1 hands each chunk of logits to
//!   the row statistics as soon as it is computed, and pass 2 turns a chunk into `∂z` just before
//!   both gradient products read it, so the tile is read from L2, not L3.
//!
//! On a 2-core AMD EPYC (Zen 4) capped at AVX2 this took word-wt2's output layer from 307–327 ms to
//! 291–295 ms, and its training from 78–80 % to 84–86 % of the 1024³ sgemm (`docs/performance.md`).
//! The loss leaves vocabularies of fewer than 8 blocks to OpenBLAS, which packs `h` once for them.
//!
//! Each output element is a sum over the inner dimension in one fixed order (in blocks of
//! [`INNER_BLOCK`]), so results depend on the shapes alone, never on the thread count. The padding
//! rows and columns of a tile hold products of zero padding; no result reads them.

use std::ops::Range;

use ndarray::{s, Array2, ArrayView1, ArrayView2, ArrayViewMut2, ShapeBuilder};
use rayon::prelude::*;

use super::buffers::scratch;
use super::direct_gemm::{avx2_kernel_on_this_cpu, avx2_tile_kernel, pack_panels, Kernel, INNER_BLOCK};
use super::Scalar;

/// Rows of the kernel's register block.
const MR: usize = 6;
/// Columns of the kernel's register block: two AVX2 vectors.
const NR: usize = 16;

/// Register rows of a tile per step of its pass 1: 43 (258 rows), whose 129 KB of packed `h` (at
/// `d = 128`) stay in L2 while each 8 KB panel of `W` stays in L1, and whose 280 KB of logits are
/// still in L2 when the row statistics read them.
const LOGIT_ROW_PANELS: usize = 43;

/// Rows of a tile per step of its pass 2: 42 register rows, whose 274 KB of a 256-column tile stay
/// in L2 (with `hᵀ`'s 130 KB of the same rows) from their preparation through both products.
pub const GRADIENT_CHUNK_ROWS: usize = 42 * MR;

/// Why a cast to `f32` cannot fail where `packed` is set: [`TileProducts::new`] packs only `f32`.
const PACKED_IS_F32: &str = "the packed products run only in f32";

/// Who computes the tile products of [`super::loss`]'s `f32` passes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TileKernel {
    /// The AVX2 kernel over packed operands where this process runs it ([`avx2_tile_kernel`]), else
    /// OpenBLAS.
    Auto,
    /// OpenBLAS (or the AVX-512 direct kernel) through [`Scalar::local_product`].
    OpenBlas,
    /// The AVX2 kernel wherever the CPU has AVX2 and FMA, whatever the cap (tests compare the two).
    Avx2,
}

/// The tile products of one call of the output loss: `hidden [N, d]`, `weight [d, V]`.
pub struct TileProducts<'a, F> {
    hidden: ArrayView2<'a, F>,
    weight: ArrayView2<'a, F>,
    packed: Option<PackedHidden>,
}

/// `hidden` packed per row tile for the AVX2 kernel.
struct PackedHidden {
    kernel: Kernel,
    /// Per row tile, its rows in panels of [`MR`]: `[⌈rows/6⌉, d, 6]`, zeros past the tile's last row.
    by_rows: Vec<Aligned>,
    /// Per row tile, its columns in panels of [`NR`]: `[⌈d/16⌉, rows, 16]`, zeros past column `d`;
    /// empty without gradients.
    by_columns: Vec<Aligned>,
}

impl<'a, F: Scalar> TileProducts<'a, F> {
    /// Packs `hidden` for the AVX2 kernel when `choice` gives one and the type is `f32`; otherwise
    /// every product runs [`Scalar::local_product`].
    pub fn new(
        hidden: ArrayView2<'a, F>,
        weight: ArrayView2<'a, F>,
        row_tiles: &[Range<usize>],
        with_grad: bool,
        choice: TileKernel,
    ) -> Self {
        let kernel = match choice {
            TileKernel::Auto => avx2_tile_kernel(),
            TileKernel::OpenBlas => None,
            TileKernel::Avx2 => avx2_kernel_on_this_cpu(),
        };
        let packed = kernel.and_then(|kernel| {
            let h = F::f32_view(hidden)?;
            let (by_rows, by_columns) = row_tiles
                .par_iter()
                .map(|rows| {
                    let tile = h.slice(s![rows.clone(), ..]);
                    (pack_row_panels(tile), if with_grad { pack_gradient_panels(tile.t()) } else { Aligned::zeros(0) })
                })
                .unzip();
            Some(PackedHidden { kernel, by_rows, by_columns })
        });
        TileProducts { hidden, weight, packed }
    }

    /// Whether the products run the packed AVX2 kernel.
    pub fn packed(&self) -> bool {
        self.packed.is_some()
    }

    /// A buffer for a `[rows, cols]` tile (stale contents): exactly that shape for OpenBLAS; for the
    /// kernel, padded as the module describes plus one spare row, so that the tile can start on a
    /// cache line wherever the buffer does. [`tile_view_mut`](Self::tile_view_mut) gives the tile.
    pub fn tile(&self, rows: usize, cols: usize) -> Array2<F> {
        let (buffer_rows, buffer_cols) = self.tile_shape(rows, cols);
        scratch(buffer_rows, buffer_cols)
    }

    /// The shape of [`tile`](Self::tile)'s buffer for a `[rows, cols]` tile: what a kept tile holds.
    pub fn tile_shape(&self, rows: usize, cols: usize) -> (usize, usize) {
        match self.packed {
            Some(_) => padded_tile_shape(rows, cols),
            None => (rows, cols),
        }
    }

    /// The `[rows, cols]` tile in a buffer from [`tile`](Self::tile).
    pub fn tile_view_mut<'t>(&self, buffer: &'t mut Array2<F>, rows: usize, cols: usize) -> ArrayViewMut2<'t, F> {
        if self.packed.is_none() {
            return buffer.view_mut();
        }
        let (origin, stride) = (cache_line_origin(buffer.as_ptr()), buffer.ncols());
        let flat = buffer.as_slice_mut().expect("tile buffers are contiguous");
        ArrayViewMut2::from_shape((rows, cols).strides((stride, 1)), &mut flat[origin..])
            .expect("a tile buffer has a spare row for its origin")
    }

    /// `z = h[rows]·W[:, cols]` into a buffer from [`tile`](Self::tile) (`tile_index` is the row
    /// tile's), then `finish(first, rows)` on each chunk of the tile's rows (`first` the index of its
    /// first row in the tile). The kernel hands over a chunk of [`LOGIT_ROW_PANELS`] register rows as
    /// soon as it is computed, while it is still in L2; OpenBLAS the whole tile.
    pub fn logits(
        &self,
        tile_index: usize,
        rows: &Range<usize>,
        cols: &Range<usize>,
        z: &mut Array2<F>,
        mut finish: impl FnMut(usize, ArrayViewMut2<F>),
    ) {
        let weight = self.weight.slice(s![.., cols.clone()]);
        let (n_rows, n_cols) = (rows.len(), cols.len());
        if let Some(packed) = &self.packed {
            let w = F::f32_view(weight).expect(PACKED_IS_F32);
            let packed_w = pack_logit_panels(w);
            let chunk_rows = LOGIT_ROW_PANELS * MR;
            for first in (0..n_rows).step_by(chunk_rows) {
                let last = (first + chunk_rows).min(n_rows);
                let padded = self.tile_view_mut(z, n_rows.div_ceil(MR) * MR, n_cols.div_ceil(NR) * NR);
                packed.logits_part(
                    tile_index,
                    n_rows,
                    w.nrows(),
                    n_cols,
                    first / MR..last.div_ceil(MR),
                    packed_w.as_slice(),
                    &mut F::f32_view_mut(padded).expect(PACKED_IS_F32),
                );
                finish(first, self.tile_view_mut(z, last, n_cols).slice_move(s![first.., ..]));
            }
            return;
        }
        let h = self.hidden.slice(s![rows.clone(), ..]);
        F::local_product(h, weight, false, z.view_mut());
        finish(0, z.view_mut());
    }

    /// Pass 2 of a tile in a buffer from [`tile`](Self::tile): `prepare(first, rows)` turns each chunk
    /// of the tile's rows (`first` the index of its first row in the tile) into `∂z`, then
    /// `∂Wᵀ[cols] += ∂zᵀ·h[rows]` and `∂h[rows] += ∂z·W[:, cols]ᵀ`. The kernel takes a chunk of
    /// [`GRADIENT_CHUNK_ROWS`] at a time, so that both products read it while it is still in L2;
    /// OpenBLAS takes the whole tile after it is prepared.
    #[allow(clippy::too_many_arguments)]
    pub fn gradients(
        &self,
        tile_index: usize,
        rows: &Range<usize>,
        cols: &Range<usize>,
        z: &mut Array2<F>,
        mut prepare: impl FnMut(usize, ArrayViewMut2<F>),
        d_weight_t: ArrayViewMut2<F>,
        d_hidden: ArrayViewMut2<F>,
    ) {
        let weight = self.weight.slice(s![.., cols.clone()]);
        let (n_rows, n_cols) = (rows.len(), cols.len());
        if let Some(packed) = &self.packed {
            let w = F::f32_view(weight).expect(PACKED_IS_F32);
            let d = w.nrows();
            // every element is written by the first chunk's products (which do not accumulate)
            let width = d.div_ceil(NR) * NR;
            let mut d_weight_t_part = Aligned::stale(n_cols.div_ceil(MR) * MR * width);
            let packed_w = pack_gradient_panels(w);
            let mut column_panel = Aligned::stale(GRADIENT_CHUNK_ROWS * MR);
            let mut d_hidden = F::f32_view_mut(d_hidden).expect(PACKED_IS_F32);
            for first in (0..n_rows).step_by(GRADIENT_CHUNK_ROWS) {
                let last = (first + GRADIENT_CHUNK_ROWS).min(n_rows);
                prepare(first, self.tile_view_mut(z, last, n_cols).slice_move(s![first.., ..]));
                // ∂Wᵀ's last register block reads up to 5 columns past the tile's, which no product
                // wrote: zeros there, so that stale values (NaN, or subnormals, which slow some CPUs'
                // FMA units) enter no product, not even one whose rows are discarded
                let reach = n_cols.div_ceil(MR) * MR;
                self.tile_view_mut(z, last, reach).slice_mut(s![first.., n_cols..]).fill(F::zero());
                let tile = F::f32_view(padded_tile(z, n_rows)).expect(PACKED_IS_F32);
                let chunk = first..last;
                let panel = &mut column_panel.as_mut_slice()[..chunk.len() * MR];
                packed.weight_gradient_part(
                    tile_index,
                    n_rows,
                    n_cols,
                    d,
                    &chunk,
                    tile,
                    panel,
                    d_weight_t_part.as_mut_slice(),
                );
                packed.hidden_gradient_part(&chunk, packed_w.as_slice(), n_cols, tile, &mut d_hidden);
            }
            let part = d_weight_t_part.as_slice();
            for (col, mut row) in F::f32_view_mut(d_weight_t).expect(PACKED_IS_F32).rows_mut().into_iter().enumerate() {
                row += &ArrayView1::from(&part[col * width..col * width + d]);
            }
            return;
        }
        prepare(0, z.view_mut());
        let h = self.hidden.slice(s![rows.clone(), ..]);
        F::local_product(z.t(), h, true, d_weight_t);
        F::local_product(z.view(), weight.t(), true, d_hidden);
    }
}

impl PackedHidden {
    /// The register rows `row_panels` of the logit product into the padded tile of `rows` rows,
    /// with `w [d, cols]` packed by [`pack_logit_panels`].
    #[allow(clippy::too_many_arguments)]
    fn logits_part(
        &self,
        tile_index: usize,
        rows: usize,
        d: usize,
        cols: usize,
        row_panels: Range<usize>,
        packed_w: &[f32],
        tile: &mut ArrayViewMut2<f32>,
    ) {
        let col_panels = cols.div_ceil(NR);
        let a = self.by_rows[tile_index].as_slice();
        let stride = tile.strides()[0];
        assert!(
            tile.nrows() >= rows.div_ceil(MR) * MR && row_panels.end <= rows.div_ceil(MR),
            "register rows of a padded tile from TileProducts::tile"
        );
        assert!(tile.ncols() >= col_panels * NR && tile.strides()[1] == 1, "a padded tile");
        assert_eq!(a.len(), rows.div_ceil(MR) * d * MR, "the row tile's packed rows");
        assert_eq!(packed_w.len(), col_panels * d * NR, "W's panels");
        let c = tile.as_mut_ptr();
        // each 16-column panel of W (8 KB at d = 128) stays in L1 across the chunk's rows
        for panel in 0..col_panels {
            for row_panel in row_panels.clone() {
                for k0 in (0..d).step_by(INNER_BLOCK) {
                    let depth = INNER_BLOCK.min(d - k0);
                    // SAFETY: A's panel holds d·6 elements from row_panel·d·6, B's d·16 from
                    // panel·d·16, and C's block (6 rows below row_panel·6, 16 columns from panel·16)
                    // lies inside the padded tile, as asserted above; the kernel was chosen for this
                    // CPU (AVX2 and FMA).
                    unsafe {
                        (self.kernel.block)(
                            depth,
                            a.as_ptr().add((row_panel * d + k0) * MR),
                            1,
                            MR as isize,
                            packed_w.as_ptr().add((panel * d + k0) * NR),
                            NR as isize,
                            c.offset((row_panel * MR) as isize * stride + (panel * NR) as isize),
                            stride,
                            k0 > 0,
                        )
                    }
                }
            }
        }
    }

    /// Adds the rows `chunk` of `∂Wᵀ = ∂zᵀ·h` into `product [⌈cols/6⌉·6, ⌈d/16⌉·16]` (set, not added,
    /// by the first chunk): `tile` is the padded tile of `rows` rows, zero in the columns from `cols`
    /// to the next multiple of 6; `panel` holds `[chunk.len(), 6]`.
    ///
    /// Each 6 columns of the chunk are first copied into `panel`, so that the kernel reads them from
    /// one contiguous 6 KB in L1, not from 252 rows 1088 bytes apart, while the 16-column panels of
    /// `h` stream past from L2. Measured on one Zen 4 core capped at AVX2, alternating with reading
    /// the tile in place: 5–10 % faster, the copy included.
    #[allow(clippy::too_many_arguments)]
    fn weight_gradient_part(
        &self,
        tile_index: usize,
        rows: usize,
        cols: usize,
        d: usize,
        chunk: &Range<usize>,
        tile: ArrayView2<f32>,
        panel: &mut [f32],
        product: &mut [f32],
    ) {
        let (col_panels, d_panels) = (cols.div_ceil(MR), d.div_ceil(NR));
        let b = self.by_columns[tile_index].as_slice();
        let width = d_panels * NR;
        assert_eq!(b.len(), d_panels * rows * NR, "the row tile's packed columns");
        assert!(tile.nrows() >= chunk.end && tile.ncols() >= col_panels * MR, "a padded tile");
        assert_eq!(panel.len(), chunk.len() * MR, "one panel of the chunk's columns");
        assert_eq!(product.len(), col_panels * MR * width, "∂Wᵀ's buffer");
        let (stride, flat) = (tile.ncols(), tile.as_slice().expect("a padded tile is whole rows"));
        for col_panel in 0..col_panels {
            let tile_rows = flat[chunk.start * stride + col_panel * MR..].chunks(stride);
            for (line, row) in panel.as_chunks_mut::<MR>().0.iter_mut().zip(tile_rows) {
                *line = *row.first_chunk::<MR>().expect("a padded tile row reaches 6 columns past the panel");
            }
            for k0 in (0..chunk.len()).step_by(INNER_BLOCK) {
                let depth = INNER_BLOCK.min(chunk.len() - k0);
                for d_panel in 0..d_panels {
                    // SAFETY: A reads `panel`'s rows k0..k0 + depth ≤ chunk.len(); B's panel holds
                    // rows·16 elements from d_panel·rows·16, of which it reads rows chunk.start + k0
                    // onwards, depth of them, below chunk.end ≤ rows; the block of `product` lies
                    // inside its [col_panels·6, width]; the kernel was chosen for this CPU.
                    unsafe {
                        (self.kernel.block)(
                            depth,
                            panel.as_ptr().add(k0 * MR),
                            1,
                            MR as isize,
                            b.as_ptr().add((d_panel * rows + chunk.start + k0) * NR),
                            NR as isize,
                            product.as_mut_ptr().add(col_panel * MR * width + d_panel * NR),
                            width as isize,
                            chunk.start + k0 > 0,
                        )
                    }
                }
            }
        }
    }

    /// `out[chunk] += tile[chunk, ..cols]·wᵀ` for `∂h`'s rows `out [rows, d]`, with `wᵀ` packed by
    /// [`pack_gradient_panels`]; `chunk` starts on a register row.
    fn hidden_gradient_part(
        &self,
        chunk: &Range<usize>,
        packed_w: &[f32],
        cols: usize,
        tile: ArrayView2<f32>,
        out: &mut ArrayViewMut2<f32>,
    ) {
        let (rows, d) = out.dim();
        let d_panels = d.div_ceil(NR);
        assert!(chunk.start.is_multiple_of(MR) && chunk.end <= rows, "a chunk of register rows");
        assert_eq!(packed_w.len(), d_panels * cols * NR, "wᵀ's panels");
        assert!(
            tile.nrows() >= chunk.end.div_ceil(MR) * MR && tile.ncols() >= cols && tile.strides()[1] == 1,
            "a padded tile"
        );
        assert!(d < 2 || out.strides()[1] == 1, "∂h's rows");
        let (stride, ldc) = (tile.strides()[0], out.strides()[0]);
        let c = out.as_mut_ptr();
        let mut edge = [0f32; MR * NR];
        // Each register row's 6 rows of the tile (6 KB at 256 columns) stay in L1 while the panels of
        // wᵀ stream past from L2: on one Zen 4 core capped at AVX2, 5–8 % faster than keeping a
        // 16 KB panel of wᵀ in L1 while 6 rows of the tile stream past (the same sums, the same bits).
        for i0 in (chunk.start..chunk.end).step_by(MR) {
            for d_panel in 0..d_panels {
                let j0 = d_panel * NR;
                let full = i0 + MR <= rows && j0 + NR <= d;
                for k0 in (0..cols).step_by(INNER_BLOCK) {
                    let depth = INNER_BLOCK.min(cols - k0);
                    let (target, ld, accumulate) = if full {
                        // SAFETY: rows i0..i0 + 6 ≤ rows and columns j0..j0 + 16 ≤ d of `out`.
                        (unsafe { c.offset(i0 as isize * ldc + j0 as isize) }, ldc, true)
                    } else {
                        (edge.as_mut_ptr(), NR as isize, k0 > 0)
                    };
                    // SAFETY: A reads rows i0..i0 + 6 within the tile's padded rows and columns below
                    // cols; B's panel holds cols·16 elements from d_panel·cols·16; the target is a
                    // full block of `out` or the 6 × 16 `edge`; the kernel was chosen for this CPU.
                    unsafe {
                        (self.kernel.block)(
                            depth,
                            tile.as_ptr().offset(i0 as isize * stride + k0 as isize),
                            stride,
                            1,
                            packed_w.as_ptr().add((d_panel * cols + k0) * NR),
                            NR as isize,
                            target,
                            ld,
                            accumulate,
                        )
                    }
                }
                if !full {
                    for i in 0..MR.min(rows - i0) {
                        for j in 0..NR.min(d - j0) {
                            out[[i0 + i, j0 + j]] += edge[i * NR + j];
                        }
                    }
                }
            }
        }
    }
}

/// The buffer of a `[rows, cols]` tile for the kernel: rows padded to whole register rows plus a
/// spare one (for the cache-line origin), columns to [`padded_stride`]. The largest shape a tile takes.
pub fn padded_tile_shape(rows: usize, cols: usize) -> (usize, usize) {
    (rows.div_ceil(MR) * MR + 1, padded_stride(cols))
}

/// The row stride of a padded tile of `cols` columns: whole 16-column panels and one more.
fn padded_stride(cols: usize) -> usize {
    cols.div_ceil(NR) * NR + NR
}

/// The first element of a buffer at `pointer` that starts a 64-byte cache line (elements are 4 or 8
/// bytes, and allocations at least 16-byte aligned).
fn cache_line_origin<F>(pointer: *const F) -> usize {
    let size = std::mem::size_of::<F>();
    (64 - pointer as usize % 64) % 64 / size
}

/// The padded tile in a buffer from [`TileProducts::tile`] for the kernel: `⌈rows/6⌉·6` rows, each
/// its whole stride wide ([`padded_stride`]).
fn padded_tile<F>(buffer: &Array2<F>, rows: usize) -> ArrayView2<'_, F> {
    let (origin, stride) = (cache_line_origin(buffer.as_ptr()), buffer.ncols());
    let flat = buffer.as_slice().expect("tile buffers are contiguous");
    ArrayView2::from_shape((rows.div_ceil(MR) * MR, stride).strides((stride, 1)), &flat[origin..])
        .expect("a tile buffer has a spare row for its origin")
}

/// `f32`s that start on a 64-byte cache line, as OpenBLAS's packing buffers do: a 16-float panel row
/// then fills one line, not parts of two. Their buffers come from the pool and go back to it: a
/// word-wt2 training step packs and multiplies 130 vocabulary blocks, and zeroing three fresh 128 KB
/// buffers for each, all but a few padding elements of which were then overwritten, wrote 50 MB.
struct Aligned {
    buffer: Vec<f32>,
    origin: usize,
    len: usize,
}

impl Aligned {
    /// `len` elements of stale contents, for a buffer whose every element is written before it is read.
    fn stale(len: usize) -> Self {
        let (buffer, _) = scratch::<f32>(1, len + 15).into_raw_vec_and_offset();
        let origin = cache_line_origin(buffer.as_ptr());
        Aligned { buffer, origin, len }
    }

    fn zeros(len: usize) -> Self {
        let mut aligned = Self::stale(len);
        aligned.as_mut_slice().fill(0.0);
        aligned
    }

    fn as_slice(&self) -> &[f32] {
        &self.buffer[self.origin..self.origin + self.len]
    }

    fn as_mut_slice(&mut self) -> &mut [f32] {
        &mut self.buffer[self.origin..self.origin + self.len]
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        <f32 as Scalar>::buffers().give(std::mem::take(&mut self.buffer));
    }
}

/// `b [depth, n]` in `[⌈n/width⌉, depth, width]` panels ([`pack_panels`], which writes every element,
/// the padding as zeros: padding only ever meets padding in a product, but stale values there could
/// be subnormals, which slow some CPUs' FMA units).
fn packed_panels(b: ArrayView2<f32>, width: usize) -> Aligned {
    let (depth, n) = b.dim();
    let mut aligned = Aligned::stale(n.div_ceil(width) * depth * width);
    pack_panels(b, width, aligned.as_mut_slice());
    aligned
}

/// `h [rows, d]` as `[⌈rows/6⌉, d, 6]`: element `(i, k)` at `(i/6·d + k)·6 + i mod 6`, zeros past `rows`.
fn pack_row_panels(h: ArrayView2<f32>) -> Aligned {
    packed_panels(h.t(), MR)
}

/// `w [d, cols]` as `[⌈cols/16⌉, d, 16]`, zeros past `cols`: `B` of the logit product.
fn pack_logit_panels(w: ArrayView2<f32>) -> Aligned {
    packed_panels(w, NR)
}

/// `wᵀ [cols, d]` as `[⌈d/16⌉, cols, 16]`, zeros past `d`: `B` of the `∂h` product; and, given
/// `hᵀ [d, rows]`, `B` of the `∂Wᵀ` product.
fn pack_gradient_panels(w: ArrayView2<f32>) -> Aligned {
    packed_panels(w.t(), NR)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix(rows: usize, cols: usize, seed: u64) -> Array2<f32> {
        let mut rng = crate::rng::Rng::new(seed);
        Array2::from_shape_fn((rows, cols), |_| rng.next_f64() as f32 * 2.0 - 1.0)
    }

    fn wide(a: ArrayView2<f32>) -> Array2<f64> {
        a.mapv(f64::from)
    }

    /// An f32 sum of `terms` terms of magnitude at most `size` lies within `terms·size·2⁻²³` of the
    /// exact sum for these random inputs (the rounding errors are independent and partly cancel).
    fn assert_close(got: ArrayView2<f32>, expected: &Array2<f64>, terms: usize, size: f64, what: &str) {
        assert_eq!(got.dim(), expected.dim(), "{what}: shape");
        let tolerance = terms as f64 * size * f64::from(f32::EPSILON);
        for ((i, j), &value) in got.indexed_iter() {
            let gap = (f64::from(value) - expected[[i, j]]).abs();
            assert!(gap <= tolerance, "{what} [{i}, {j}]: {value} against {} (gap {gap:e})", expected[[i, j]]);
        }
    }

    #[test]
    fn packed_products_match_the_exact_ones_with_edges_in_every_dimension() {
        if avx2_kernel_on_this_cpu().is_none() {
            eprintln!("skipped packed_products_match_the_exact_ones_with_edges_in_every_dimension: no AVX2 with FMA");
            return;
        }
        // (N, d, V, rows per tile, columns per block): rows, d and columns off the multiples of 6 and
        // 16, several row tiles, pass 2 in several chunks, a partial last block, and 256-column blocks
        let shapes = [(13, 5, 40, 13, 17), (50, 20, 300, 24, 256), (600, 128, 530, 600, 256), (7, 16, 16, 7, 16)];
        for (index, &(n, d, vocab, tile_rows, block)) in shapes.iter().enumerate() {
            let seed = index as u64 * 10;
            let (hidden, embedding) = (matrix(n, d, seed), matrix(vocab, d, seed + 1));
            let weight = embedding.t();
            let row_tiles: Vec<Range<usize>> =
                (0..n.div_ceil(tile_rows)).map(|t| t * tile_rows..((t + 1) * tile_rows).min(n)).collect();
            let products = TileProducts::new(hidden.view(), weight, &row_tiles, true, TileKernel::Avx2);
            assert!(products.packed());
            let exact_logits = wide(hidden.view()).dot(&wide(weight));
            let (mut d_weight_t, mut d_hidden) = (matrix(vocab, d, seed + 2), matrix(n, d, seed + 3));
            let (mut expected_dw, mut expected_dh) = (wide(d_weight_t.view()), wide(d_hidden.view()));
            for (tile_index, rows) in row_tiles.iter().enumerate() {
                for start in (0..vocab).step_by(block) {
                    let cols = start..(start + block).min(vocab);
                    let mut buffer = products.tile(rows.len(), cols.len());
                    buffer.fill(f32::NAN); // stale contents must never reach a result
                    let mut finished = Vec::new();
                    products.logits(tile_index, rows, &cols, &mut buffer, |first, chunk| {
                        finished.push((first, chunk.nrows()))
                    });
                    let covered: Vec<usize> = finished.iter().flat_map(|&(first, len)| first..first + len).collect();
                    assert_eq!(covered, (0..rows.len()).collect::<Vec<_>>(), "every row finished once, in order");
                    let logits = products.tile_view_mut(&mut buffer, rows.len(), cols.len()).to_owned();
                    let exact = exact_logits.slice(s![rows.clone(), cols.clone()]).to_owned();
                    assert_close(logits.view(), &exact, d, 1.0, "logits");
                    // ∂z: each row of the tile scaled by its own factor, prepared chunk by chunk
                    let factor = |row: usize| (row % 7) as f32 * 0.25 - 0.5;
                    let mut prepared = vec![false; rows.len()];
                    let prepare = |first: usize, mut chunk: ArrayViewMut2<f32>| {
                        for (offset, mut row) in chunk.rows_mut().into_iter().enumerate() {
                            prepared[first + offset] = true;
                            row.mapv_inplace(|v| v * factor(first + offset));
                        }
                    };
                    let dw = d_weight_t.slice_mut(s![cols.clone(), ..]);
                    let dh = d_hidden.slice_mut(s![rows.clone(), ..]);
                    products.gradients(tile_index, rows, &cols, &mut buffer, prepare, dw, dh);
                    assert!(prepared.iter().all(|&p| p), "every row prepared once");
                    let mut dz = wide(logits.view());
                    for (i, mut row) in dz.rows_mut().into_iter().enumerate() {
                        row *= f64::from(factor(i));
                    }
                    let mut dw_expected = expected_dw.slice_mut(s![cols.clone(), ..]);
                    dw_expected += &dz.t().dot(&wide(hidden.slice(s![rows.clone(), ..])));
                    let mut dh_expected = expected_dh.slice_mut(s![rows.clone(), ..]);
                    dh_expected += &dz.dot(&wide(weight.slice(s![.., cols.clone()])).t());
                }
            }
            // ∂z is at most d in size (a logit), times at most 1 (h or W); the start adds one term
            assert_close(d_weight_t.view(), &expected_dw, n + 1, d as f64, "∂Wᵀ");
            assert_close(d_hidden.view(), &expected_dh, vocab + 1, d as f64, "∂h");
        }
    }

    #[test]
    fn openblas_products_take_exact_tiles_and_prepare_them_whole() {
        let (hidden, embedding) = (matrix(9, 7, 1), matrix(20, 7, 2));
        let row_tiles = [Range { start: 0, end: 9 }]; // one row tile of all 9 rows
        let products = TileProducts::new(hidden.view(), embedding.t(), &row_tiles, true, TileKernel::OpenBlas);
        assert!(!products.packed());
        let mut buffer = products.tile(9, 20);
        assert_eq!(buffer.dim(), (9, 20));
        let mut finished = Vec::new();
        products.logits(0, &(0..9), &(0..20), &mut buffer, |first, chunk| finished.push((first, chunk.dim())));
        assert_eq!(finished, vec![(0, (9, 20))]);
        let logits = wide(hidden.view()).dot(&wide(embedding.t()));
        assert_close(buffer.view(), &logits, 7, 1.0, "logits");
        let (mut d_weight_t, mut d_hidden) = (Array2::<f32>::zeros((20, 7)), Array2::<f32>::zeros((9, 7)));
        let mut chunks = Vec::new();
        let prepare = |first: usize, chunk: ArrayViewMut2<f32>| chunks.push((first, chunk.dim()));
        products.gradients(0, &(0..9), &(0..20), &mut buffer, prepare, d_weight_t.view_mut(), d_hidden.view_mut());
        assert_eq!(chunks, vec![(0, (9, 20))]);
        assert_close(d_weight_t.view(), &logits.t().dot(&wide(hidden.view())), 9, 7.0, "∂Wᵀ");
        assert_close(d_hidden.view(), &logits.dot(&wide(embedding.view())), 20, 7.0, "∂h");
    }

    /// The packing buffers, `∂Wᵀ`'s and the column panel come from the pool with stale contents: NaN
    /// buffers of every size they ask for change no bit of any product, with padding in every
    /// dimension and with none. (It fails if the first chunk of `∂Wᵀ` accumulates into its stale
    /// buffer.)
    #[test]
    fn stale_pool_buffers_never_reach_a_product() {
        if avx2_kernel_on_this_cpu().is_none() {
            eprintln!("skipped stale_pool_buffers_never_reach_a_product: no AVX2 with FMA");
            return;
        }
        for (n, d, vocab) in [(96, 192, 256), (100, 130, 250)] {
            let (hidden, embedding) = (matrix(n, d, 40), matrix(vocab, d, 41));
            let rows: Vec<Range<usize>> = std::iter::once(0..n).collect(); // one row tile
            let run = || {
                let products = TileProducts::new(hidden.view(), embedding.t(), &rows, true, TileKernel::Avx2);
                let mut buffer = products.tile(n, vocab);
                products.logits(0, &rows[0], &(0..vocab), &mut buffer, |_, _| {});
                let logits = products.tile_view_mut(&mut buffer, n, vocab).to_owned();
                let (mut d_weight_t, mut d_hidden) = (Array2::zeros((vocab, d)), Array2::zeros((n, d)));
                let (dw, dh) = (d_weight_t.view_mut(), d_hidden.view_mut());
                products.gradients(0, &rows[0], &(0..vocab), &mut buffer, |_, _| {}, dw, dh);
                [logits, d_weight_t, d_hidden]
            };
            let clean = run();
            let padded = |count: usize, unit: usize| count.div_ceil(unit) * unit;
            let lengths = [
                padded(n, MR) * d,
                padded(d, NR) * n,
                padded(vocab, NR) * d,
                padded(d, NR) * vocab,
                padded(vocab, MR) * padded(d, NR),
                GRADIENT_CHUNK_ROWS * MR,
            ];
            for len in lengths {
                for _ in 0..3 {
                    <f32 as Scalar>::buffers().give(vec![f32::NAN; len + 15]);
                }
            }
            let poisoned = run();
            for (what, (clean, poisoned)) in ["logits", "∂Wᵀ", "∂h"].iter().zip(clean.iter().zip(&poisoned)) {
                assert!(clean.iter().all(|v| v.is_finite()), "{what} at {n} × {d} × {vocab}");
                let bits = |a: &Array2<f32>| a.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(clean), bits(poisoned), "{what} at {n} × {d} × {vocab}");
            }
        }
    }
}
