//! Output projection fused with softmax cross-entropy: `logits = h·W`, `loss = mean_n −log softmax(logits_n)[y_n]`.
//!
//! Shapes: `h [N, d]`, `W [d, V]`, logits `[N, V]` (never formed whole). The logits are computed in tiles
//! of rows by vocabulary blocks, in two passes:
//!
//! 1. every tile is turned in place into `exp(z − m)` with its per-row maximum `m`, and reports per row
//!    `m`, where it is, `Σ exp(z − m)` and the target's logit if the target falls in the tile; the tiles
//!    of a row are then merged in a fixed order into its log-partition `lse`, loss and prediction;
//! 2. (training only) each tile becomes `∂/∂z = (softmax − onehot)/N` by one scaling,
//!    `exp(z − m)·e^(m − lse)/N`, and feeds `∂Wᵀ` of its vocabulary block directly (inner dimension
//!    `N`, an efficient product with no `[V, d]` partial sums) and a per-group partial of `∂h`.
//!
//! With copy paths (METHOD §4, [`super::copy`]) the rows' `lse` and target logits of pass 1 give
//! `ln q(y)`; the mixture turns them into each row's `−ln p(y)`, the gates' gradients and one scale
//! `r_0` per row, and pass 2 scales that row's `(softmax − onehot)/N` by it. No `[N, V]` array beyond
//! the tiles is ever formed; rows where no copy rule acts, and every row at `λ = 0`, take the plain path.
//!
//! The tiles' products run [`TileProducts`]: on CPUs capped at AVX2, the AVX2 kernel over operands
//! packed once per call, a chunk of a tile's rows at a time while it is in L2; elsewhere OpenBLAS or
//! the AVX-512 direct kernel.
//!
//! Pass 2 reuses pass 1's tiles while all of them fit in [`LOGIT_CACHE_BYTES`] (WikiText-2's 33,278
//! words at `N = 2048` take 272 MB, 290 MB as the AVX2 kernel pads them); beyond that it recomputes
//! each tile and its exponentials, so memory stays bounded whatever the vocabulary and batch. Every sum has an order fixed by the shapes alone,
//! so results do not depend on the number of threads.

use std::ops::Range;

use ndarray::{s, Array1, Array2, ArrayView1, ArrayView2, ArrayViewMut2, Axis};
use rayon::prelude::*;

use super::buffers::{recycle, scratch};
use super::copy::{gate_backward, gate_forward, mixture_argmax, mixture_backward, mixture_forward, CopyCaches};
use super::kernels;
use super::linalg::init_blas;
use super::tile_products::{TileKernel, TileProducts};
use super::Scalar;

/// Tile shape: rows by vocabulary columns.
#[derive(Clone, Copy, Debug)]
pub struct Tiling {
    pub rows: usize,
    pub vocab: usize,
    /// Vocabulary blocks are split into at most this many groups in pass 2, each with its own `∂h`
    /// (fewer where those would take more than `partial_bytes`).
    pub groups: usize,
    /// The most the groups' partials of `∂h` (`[N, d]` each) take together, in bytes.
    pub partial_bytes: usize,
    /// Keep pass 1's tiles for pass 2 while their buffers (`N·V` elements, padded for the AVX2 kernel)
    /// take at most this many bytes.
    pub cache_bytes: usize,
    /// Who computes the tiles' products ([`TileKernel::Auto`] outside tests).
    pub products: TileKernel,
}

pub const LOGIT_CACHE_BYTES: usize = 512 << 20;

/// Measured on two cores for WikiText-2's vocabulary: 2048 × 256 tiles (2 MB) ran fastest of the
/// shapes tried between 512 × 256 and 2048 × 1024. Pass 2's groups are its parallel tasks: with 8
/// (17 blocks each, the last 11) one of two cores idled for a tenth of pass 2; with 32 (26 of 5
/// blocks) they share it to within a task of 13 ms.
/// Their partials of `∂h` take at most 32 MB: all 32 groups at `N = 2048`, `d = 128`.
pub const DEFAULT_TILING: Tiling = Tiling {
    rows: 2048,
    vocab: 256,
    groups: 32,
    partial_bytes: 32 << 20,
    cache_bytes: LOGIT_CACHE_BYTES,
    products: TileKernel::Auto,
};

/// Below this many vocabulary blocks, pass 1 tiles rows by at most 256.
const SMALL_VOCABULARY_BLOCKS: usize = 8;

/// What [`output_loss`] returns. The layer has no separate backward: when gradients are requested it
/// returns `∂h` and `∂Wᵀ` itself, ready for [`Model::backward`](super::model::Model::backward).
pub struct OutputLoss<F> {
    /// Mean negative log-likelihood over the rows, in nats.
    pub mean_nll: F,
    /// `[N]` per-row negative log-likelihood, in nats: `−ln p(y)` of the mixture where a copy path acts,
    /// `−ln q(y)` of the softmax elsewhere.
    pub nll: Vec<F>,
    /// Number of rows (out of `N`) whose most probable token is the target (under the mixture `p` where a
    /// copy path acts).
    pub correct: usize,
    /// `∂mean_nll/∂h`, `[N, d]`, when gradients were requested.
    pub d_hidden: Option<Array2<F>>,
    /// `∂mean_nll/∂Wᵀ`, `[V, d]` (the token embedding's layout, so a tied model adds it without a
    /// strided transpose), when gradients were requested.
    pub d_weight_t: Option<Array2<F>>,
    /// The copy paths' part, when the loss was given copy paths.
    pub copy: Option<CopyLoss<F>>,
}

/// The copy paths of one batch as the output loss uses them (METHOD §4).
#[derive(Clone, Copy)]
pub struct CopyInput<'a, F> {
    /// `κ_{c,n}` and `s_c` for `C` rules over the `N` rows.
    pub caches: &'a CopyCaches,
    /// `[C, d]` the gates' `u_c`.
    pub gate_weight: ArrayView2<'a, F>,
    /// `[C]` the gates' `b_c`.
    pub gate_bias: ArrayView1<'a, F>,
    /// The dial `λ`; at 0 every copy weight is 0 and the loss is the plain softmax's, bit for bit.
    pub lambda: f64,
}

/// What the output loss reports of its copy paths.
pub struct CopyLoss<F> {
    /// `[N, C]` the copy weights `w_{c,n}` (0 where rule `c` does not act): copy share and hit rate per rule.
    pub weights: Array2<F>,
    /// `[N]` `−ln q_n(y_n)`, each row's NLL under the softmax alone (the code length without the paths).
    pub softmax_nll: Vec<F>,
    /// `[N]` `ln w_{0,n} = −ln(1 + λ Σ_c s_c e^{z_{c,n}})`, 0 where no rule acts: the mixture's
    /// normaliser, which a trial on a frozen model adds a path to.
    pub log_w0: Vec<f64>,
    /// `[C, d]` `∂mean_nll/∂u`, when gradients were requested.
    pub d_gate_weight: Option<Array2<F>>,
    /// `[C]` `∂mean_nll/∂b`, when gradients were requested.
    pub d_gate_bias: Option<Array1<F>>,
}

/// What pass 1 learns from one tile, per row of the tile: each `Vec` below is `[rows]`, the tile's row count.
struct TileStats<F> {
    /// The row's largest logit within the tile's columns.
    max: Vec<F>,
    /// Column (in the whole vocabulary) of the first maximum.
    argmax: Vec<u32>,
    /// `Σ_j exp(z_j − max)` over the tile's columns.
    sum_exp: Vec<F>,
    /// `(row within the tile, logit)` for rows whose target lies in this tile's columns.
    target_logits: Vec<(usize, F)>,
    /// The tile as `exp(z − max)`, `[rows, cols]`, kept for pass 2 when the cache allows.
    exp_tile: Option<Array2<F>>,
}

fn ranges(len: usize, step: usize) -> Vec<Range<usize>> {
    (0..len.div_ceil(step)).map(|i| i * step..((i + 1) * step).min(len)).collect()
}

/// The rows of each row tile, [`SMALL_VOCABULARY_BLOCKS`] deciding, for `blocks` vocabulary blocks.
fn rows_per_tile(tiling: &Tiling, blocks: usize) -> usize {
    // A small vocabulary gives pass 1 too few tiles to share between cores: cut the rows finer then.
    // (The split still depends on the shapes alone.)
    if blocks < SMALL_VOCABULARY_BLOCKS {
        tiling.rows.min(256)
    } else {
        tiling.rows
    }
}

/// Elements of one buffer per tile when `n` rows in tiles of `rows` meet `vocab` columns in blocks of
/// `cols` (as [`ranges`] cuts them), each tile's buffer `shape(rows, cols)`. Rows and columns are
/// padded independently, so the sum is a product of two sums, and both are in closed form: nothing is
/// allocated whatever the shape, and an absurd one saturates.
fn grid_elements(
    n: usize,
    rows: usize,
    vocab: usize,
    cols: usize,
    shape: impl Fn(usize, usize) -> (usize, usize),
) -> usize {
    let padded_sum = |len: usize, step: usize, padded: &dyn Fn(usize) -> usize| {
        let last = if len.is_multiple_of(step) { 0 } else { padded(len % step) };
        (len / step).saturating_mul(padded(step)).saturating_add(last)
    };
    let padded_rows = padded_sum(n, rows, &|rows| shape(rows, 1).0);
    let padded_cols = padded_sum(vocab, cols, &|cols| shape(1, cols).1);
    padded_rows.saturating_mul(padded_cols)
}

/// The most [`output_loss`] keeps of `n` rows' logits over `vocab` words between its passes, in
/// bytes: every tile, in buffers padded as the AVX2 kernel pads them (an upper bound where OpenBLAS
/// computes them), up to [`LOGIT_CACHE_BYTES`]. For the estimate that refuses absurd shapes before
/// anything is allocated.
pub fn kept_logit_bytes_at_most(n: usize, vocab: usize) -> usize {
    let tiling = DEFAULT_TILING;
    let rows = rows_per_tile(&tiling, vocab.div_ceil(tiling.vocab));
    let elements = grid_elements(n, rows, vocab, tiling.vocab, super::tile_products::padded_tile_shape);
    elements.saturating_mul(std::mem::size_of::<f32>()).min(tiling.cache_bytes)
}

/// Pass 1's forward on one tile: row tile `tile_index` (`rows`) by the vocabulary block `cols`, with
/// `targets [N]` → `exp(z − m)` of the tile, in a buffer from [`TileProducts::tile`] (its first
/// `rows.len()` rows and `cols.len()` columns), with its statistics.
fn exp_tile<F: Scalar>(
    products: &TileProducts<F>,
    targets: &[u32],
    tile_index: usize,
    rows: &Range<usize>,
    cols: &Range<usize>,
) -> (Array2<F>, TileStats<F>) {
    let mut stats = TileStats {
        max: Vec::with_capacity(rows.len()),
        argmax: Vec::with_capacity(rows.len()),
        sum_exp: Vec::with_capacity(rows.len()),
        target_logits: Vec::new(),
        exp_tile: None,
    };
    // every element of the tile is written by the product (it reads no `C` when not accumulating)
    let mut z = products.tile(rows.len(), cols.len());
    // z = h·W on the tile [rows, cols], then each row's statistics and exp(z − m), chunk by chunk
    let finish = |first: usize, mut chunk: ArrayViewMut2<F>| {
        for (offset, row) in chunk.rows_mut().into_iter().enumerate() {
            let (i, row) = (first + offset, row.into_slice().expect("tile rows are contiguous"));
            let target = targets[rows.start + i] as usize;
            if cols.contains(&target) {
                stats.target_logits.push((i, row[target - cols.start]));
            }
            // a row of NaN has no maximum above −∞: its prediction is then the first column
            let (max, position) = kernels::max_with_index(row);
            stats.max.push(max);
            stats.argmax.push((cols.start + position) as u32);
            stats.sum_exp.push(kernels::exp_shifted_inplace(row, max));
        }
    };
    products.logits(tile_index, rows, cols, &mut z, finish);
    (z, stats)
}

/// Forward and (with `with_grad`) backward of the output layer and its loss in one call: `hidden [N, d]`,
/// `weight [d, V]` (a transposed view of the token embedding when tied), `targets [N]`, and the copy paths
/// mixed into the prediction, if any (gates `[C, d]`, `[C]`). Returns `nll [N]`, and with gradients
/// `d_hidden [N, d]`, `d_weight_t [V, d]` and the gates' `[C, d]`, `[C]`; see [`OutputLoss`].
pub fn output_loss<F: Scalar>(
    hidden: ArrayView2<F>,
    weight: ArrayView2<F>,
    targets: &[u32],
    with_grad: bool,
    copy: Option<CopyInput<F>>,
) -> OutputLoss<F> {
    output_loss_tiled(hidden, weight, targets, with_grad, DEFAULT_TILING, copy)
}

/// [`output_loss`] with an explicit [`Tiling`], same shapes; the tiling changes only rounding.
pub fn output_loss_tiled<F: Scalar>(
    hidden: ArrayView2<F>,
    weight: ArrayView2<F>,
    targets: &[u32],
    with_grad: bool,
    tiling: Tiling,
    copy: Option<CopyInput<F>>,
) -> OutputLoss<F> {
    init_blas();
    let (n, d) = hidden.dim();
    let vocab = weight.ncols();
    assert_eq!(targets.len(), n, "one target per row");
    let inv_n = F::one() / F::lit(n.max(1) as f64);
    let blocks = ranges(vocab, tiling.vocab);
    let tile_rows = rows_per_tile(&tiling, blocks.len());
    let row_tiles = ranges(n, tile_rows);

    // The packed products save OpenBLAS's packing of `h` for every vocabulary block: with few blocks
    // there is little to save, and packing `h` twice cost char-small's output layer 0.4 of its 2.4 ms.
    let products = match tiling.products {
        TileKernel::Auto if blocks.len() < SMALL_VOCABULARY_BLOCKS => TileKernel::OpenBlas,
        choice => choice,
    };
    let products = TileProducts::new(hidden, weight, &row_tiles, with_grad, products);
    // the budget counts the buffers as allocated: the kernel's tiles are padded (6 % more at 256 columns)
    let kept_elements = grid_elements(n, tile_rows, vocab, tiling.vocab, |rows, cols| products.tile_shape(rows, cols));
    let keep_tiles = with_grad && kept_elements * std::mem::size_of::<F>() <= tiling.cache_bytes;

    // pass 1, tiles in (vocabulary block, row tile) order
    let tasks: Vec<(usize, usize)> =
        (0..blocks.len()).flat_map(|b| (0..row_tiles.len()).map(move |r| (b, r))).collect();
    let mut stats: Vec<TileStats<F>> = tasks
        .par_iter()
        .map(|&(b, r)| {
            let (tile, mut stats) = exp_tile(&products, targets, r, &row_tiles[r], &blocks[b]);
            if keep_tiles {
                stats.exp_tile = Some(tile);
            } else {
                recycle(tile);
            }
            stats
        })
        .collect();
    let stat = |b: usize, r: usize| b * row_tiles.len() + r;

    // merge each row's blocks in block order: lse = M + ln Σ_b s_b·e^(m_b − M)
    let mut lse = Array1::<F>::zeros(n);
    let mut nll = vec![F::zero(); n];
    let mut row_max = vec![F::zero(); n]; // [N] largest logit
    let mut row_argmax = vec![0u32; n]; // [N] the softmax's prediction
    for (r, rows) in row_tiles.iter().enumerate() {
        let mut target_logit = vec![F::zero(); rows.len()];
        for b in 0..blocks.len() {
            for &(i, logit) in &stats[stat(b, r)].target_logits {
                target_logit[i] = logit;
            }
        }
        // rows in parallel (each row's sum in block order): serial, this took 2.4 ms of WikiText-2's loss
        let merged: Vec<(F, F, u32)> = (0..rows.len())
            .into_par_iter()
            .with_min_len(64)
            .map(|i| {
                let (mut best, mut argmax) = (F::neg_infinity(), 0u32);
                for b in 0..blocks.len() {
                    let tile = &stats[stat(b, r)];
                    if tile.max[i] > best {
                        best = tile.max[i];
                        argmax = tile.argmax[i];
                    }
                }
                let total: F = (0..blocks.len())
                    .map(|b| {
                        let tile = &stats[stat(b, r)];
                        tile.sum_exp[i] * (tile.max[i] - best).exp_kernel()
                    })
                    .sum();
                (best + total.ln(), best, argmax)
            })
            .collect();
        for (i, (row_lse, best, argmax)) in merged.into_iter().enumerate() {
            lse[rows.start + i] = row_lse;
            nll[rows.start + i] = row_lse - target_logit[i];
            row_max[rows.start + i] = best;
            row_argmax[rows.start + i] = argmax;
        }
    }

    // the copy paths' mixture on ln q(y) = target logit − lse, where a rule acts at λ > 0
    let copy = copy.map(|input| CopyPass::new(input, hidden, targets, &nll));
    let mut correct = 0;
    for row in 0..n {
        let predicted = match &copy {
            Some(CopyPass { mix: Some(mix), input, .. }) if mix.active[row] => {
                // ln q(v) = h·W[:, v] − lse for the support tokens; the softmax's argmax has the row's max logit
                let log_q = |v: u32| {
                    let logit = if v == row_argmax[row] {
                        row_max[row]
                    } else {
                        hidden.row(row).dot(&weight.column(v as usize))
                    };
                    (logit - lse[row]).as_f64()
                };
                mixture_argmax(mix, input.caches, row, row_argmax[row], log_q)
            }
            _ => row_argmax[row],
        };
        correct += usize::from(predicted == targets[row]);
    }
    let softmax_nll = copy.as_ref().map(|_| nll.clone());
    if let Some(mix) = copy.as_ref().and_then(|c| c.mix.as_ref()) {
        for (row, value) in nll.iter_mut().enumerate() {
            if mix.active[row] {
                *value = F::lit(mix.nll[row]);
            }
        }
    }
    let mean_nll = nll.iter().copied().sum::<F>() * inv_n;
    if !with_grad {
        let copy = copy.map(|c| c.finish(softmax_nll.unwrap_or_default(), None));
        return OutputLoss { mean_nll, nll, correct, d_hidden: None, d_weight_t: None, copy };
    }
    // ∂CE/∂z_c = (w_c − r_c)/N and the softmax's row scale r_0
    let (d_gate_logits, row_scale) = match copy.as_ref().and_then(|c| c.mix.as_ref()) {
        Some(mix) => {
            let (d_z, scale) = mixture_backward(mix, inv_n.as_f64());
            (Some(d_z.mapv(F::lit)), Some(scale.into_iter().map(F::lit).collect::<Vec<F>>()))
        }
        None => (None, None),
    };

    // pass 2: ∂z = (softmax − onehot)/N per tile → ∂Wᵀ of its block, and a partial ∂h per group.
    // Each group owns its blocks' statistics (and cached tiles), moved out of `stats`.
    let partial_bytes = (n * d * std::mem::size_of::<F>()).max(1);
    let groups = tiling.groups.min(tiling.partial_bytes / partial_bytes).max(1);
    let blocks_per_group = blocks.len().div_ceil(groups).max(1);
    let mut owned: Vec<Vec<TileStats<F>>> = Vec::new();
    for (index, tile) in stats.drain(..).enumerate() {
        let group = index / row_tiles.len() / blocks_per_group;
        if owned.len() <= group {
            owned.push(Vec::new());
        }
        owned[group].push(tile);
    }
    let mut d_weight_t = Array2::<F>::zeros((vocab, d));
    let partials: Vec<Array2<F>> = d_weight_t
        .axis_chunks_iter_mut(Axis(0), blocks_per_group * tiling.vocab)
        .into_par_iter()
        .zip(owned.into_par_iter())
        .enumerate()
        .map(|(group, (mut dw_group, mut group_stats))| {
            // from the pool: fresh zeroed pages for every group's partial cost page faults each call
            let mut dh = scratch::<F>(n, d);
            dh.fill(F::zero());
            let first_block = group * blocks_per_group;
            let group_start = blocks[first_block].start;
            for (k, tile_stats) in group_stats.iter_mut().enumerate() {
                let tile_index = k % row_tiles.len();
                let (cols, rows) = (&blocks[first_block + k / row_tiles.len()], &row_tiles[tile_index]);
                let mut z = match tile_stats.exp_tile.take() {
                    Some(tile) => tile,
                    None => exp_tile(&products, targets, tile_index, rows, cols).0,
                };
                // ∂z = (softmax − onehot)/N a chunk of rows at a time, then ∂Wᵀ[cols] += ∂zᵀ·h [cols, d]
                // (row tiles accumulate in order) and ∂h[rows] += ∂z·W[:, cols]ᵀ [rows, d]
                let prepare = |first: usize, mut chunk: ArrayViewMut2<F>| {
                    for (offset, row) in chunk.rows_mut().into_iter().enumerate() {
                        let (i, row) = (first + offset, row.into_slice().expect("tile rows are contiguous"));
                        // r_0/N, or 1/N without copy paths (r_0 = 1 exactly where no rule acts)
                        let scale = row_scale.as_ref().map_or(inv_n, |r| inv_n * r[rows.start + i]);
                        // exp(z − m)·e^(m − lse)·r_0/N = r_0·softmax/N; then −r_0/N at the target
                        kernels::scale_inplace(row, (tile_stats.max[i] - lse[rows.start + i]).exp_kernel() * scale);
                        let target = targets[rows.start + i] as usize;
                        if cols.contains(&target) {
                            row[target - cols.start] -= scale;
                        }
                    }
                };
                let dw = dw_group.slice_mut(s![cols.start - group_start..cols.end - group_start, ..]);
                products.gradients(tile_index, rows, cols, &mut z, prepare, dw, dh.slice_mut(s![rows.clone(), ..]));
                recycle(z);
            }
            dh
        })
        .collect();
    // ∂h = Σ_g partial_g in group order, rows in parallel
    let mut partials = partials.into_iter();
    let mut d_hidden = partials.next().unwrap_or_else(|| Array2::zeros((n, d)));
    let rest: Vec<Array2<F>> = partials.collect();
    d_hidden.axis_chunks_iter_mut(Axis(0), 64).into_par_iter().enumerate().for_each(|(chunk, mut sum)| {
        for partial in &rest {
            sum += &partial.slice(s![chunk * 64..chunk * 64 + sum.nrows(), ..]);
        }
    });
    rest.into_iter().for_each(recycle);
    let copy = copy.map(|pass| {
        let c = pass.input.gate_weight.nrows();
        let (mut d_gate_weight, mut d_gate_bias) = (Array2::zeros((c, d)), Array1::zeros(c)); // [C, d], [C]
        if let Some(d_z) = &d_gate_logits {
            // z = h·uᵀ + b: ∂h += ∂z·u [N, d], ∂u = ∂zᵀ·h [C, d], ∂b = Σ_n ∂z [C]
            let u = pass.input.gate_weight;
            gate_backward(
                d_z.view(),
                hidden,
                u,
                Some(d_hidden.view_mut()),
                d_gate_weight.view_mut(),
                d_gate_bias.view_mut(),
            );
        }
        pass.finish(softmax_nll.unwrap_or_default(), Some((d_gate_weight, d_gate_bias)))
    });
    OutputLoss { mean_nll, nll, correct, d_hidden: Some(d_hidden), d_weight_t: Some(d_weight_t), copy }
}

/// The copy paths between the two passes: the mixture where some rule acts at `λ > 0`, none at `λ = 0`.
struct CopyPass<'a, F> {
    input: CopyInput<'a, F>,
    mix: Option<super::copy::Mixture>,
}

impl<'a, F: Scalar> CopyPass<'a, F> {
    /// `softmax_nll [N]` is `lse − z_y = −ln q(y)` from pass 1, `targets [N]` is `y`.
    fn new(input: CopyInput<'a, F>, hidden: ArrayView2<F>, targets: &[u32], softmax_nll: &[F]) -> Self {
        let (n, d) = hidden.dim();
        let c = input.caches.n_rules();
        assert_eq!(input.caches.rows(), n, "copy caches cover the loss's rows");
        assert_eq!(input.gate_weight.dim(), (c, d), "one gate of width d per copy rule");
        assert_eq!(input.gate_bias.len(), c, "one gate bias per copy rule");
        if input.lambda == 0.0 || c == 0 {
            return CopyPass { input, mix: None };
        }
        // ln q(y) = −(lse − z_y)                                                     [N]
        let log_q: Vec<f64> = softmax_nll.iter().map(|&v| -v.as_f64()).collect();
        // z = h·uᵀ + b                                                               [N, C]
        let z = gate_forward(hidden, input.gate_weight, input.gate_bias).mapv(F::as_f64);
        // w_0, w_c, −ln p(y), r_0, r_c per row                                       [N], [N, C]
        let mix = mixture_forward(&log_q, z.view(), input.caches, targets, input.lambda);
        CopyPass { input, mix: Some(mix) }
    }

    /// The report, with the gates' gradients `([C, d], [C])` when computed.
    fn finish(self, softmax_nll: Vec<F>, grads: Option<(Array2<F>, Array1<F>)>) -> CopyLoss<F> {
        let (n, c) = (softmax_nll.len(), self.input.caches.n_rules());
        let weights = self.mix.as_ref().map_or_else(|| Array2::zeros((n, c)), |mix| mix.weights().mapv(F::lit));
        let (d_gate_weight, d_gate_bias) = grads.map_or((None, None), |(w, b)| (Some(w), Some(b)));
        let log_w0 = self.mix.as_ref().map_or_else(|| vec![0.0; n], |mix| mix.log_w0.clone());
        CopyLoss { weights, softmax_nll, log_w0, d_gate_weight, d_gate_bias }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::gradcheck::{assert_gradient, random};
    use ndarray::{Array1, Ix2};

    /// Small tiles so that a small problem spans several row tiles, vocabulary blocks and groups.
    const SMALL: Tiling = Tiling { rows: 4, vocab: 3, groups: 2, ..DEFAULT_TILING };
    const SMALL_RECOMPUTED: Tiling = Tiling { cache_bytes: 0, ..SMALL };

    fn problem() -> (Array2<f64>, Array2<f64>, Vec<u32>) {
        let (n, d, vocab) = (10, 4, 11);
        let targets: Vec<u32> = (0..n).map(|i| ((i * 7 + 3) % vocab) as u32).collect();
        let h = random(&[n, d], 1.0, 1).into_dimensionality::<Ix2>().unwrap();
        let w = random(&[d, vocab], 1.0, 2).into_dimensionality::<Ix2>().unwrap();
        (h, w, targets)
    }

    /// WikiText-2's 33,278 words at a batch of 16 × 128 rows: the loss keeps 130 tiles of 2053 × 272
    /// floats (rows padded to 6 plus one, 256 columns plus a panel), 290.4 MB, which the memory
    /// estimate counts; a vocabulary ten times larger is held to the cache's budget, and an absurd
    /// shape saturates instead of overflowing.
    #[test]
    fn kept_logits_are_counted_as_allocated_and_within_the_budget() {
        assert_eq!(kept_logit_bytes_at_most(2048, 33_278), 130 * 2053 * 272 * 4);
        assert_eq!(kept_logit_bytes_at_most(2048, 332_780), LOGIT_CACHE_BYTES);
        assert_eq!(kept_logit_bytes_at_most(usize::MAX / 2, usize::MAX / 2), LOGIT_CACHE_BYTES);
        // a small vocabulary's row tiles of 256 rows: 8 of 258 + 1 rows, one block of 128 + 16 columns
        assert_eq!(kept_logit_bytes_at_most(2048, 128), 8 * 259 * 144 * 4);
    }

    #[test]
    fn recycled_tiles_never_leak_into_the_loss() {
        // tiles of 128 × 128 are large enough to come from the pool; fill it with NaN tiles first
        let tiling = Tiling { rows: 128, vocab: 128, groups: 2, ..DEFAULT_TILING };
        let (n, d, vocab) = (256, 8, 256);
        let h = random(&[n, d], 1.0, 5).into_dimensionality::<Ix2>().unwrap();
        let w = random(&[d, vocab], 1.0, 6).into_dimensionality::<Ix2>().unwrap();
        let targets: Vec<u32> = (0..n).map(|i| ((i * 31 + 7) % vocab) as u32).collect();
        let run = || {
            let out = output_loss_tiled(h.view(), w.view(), &targets, true, tiling, None);
            (out.nll, out.d_hidden.unwrap(), out.d_weight_t.unwrap())
        };
        let clean = run();
        for _ in 0..12 {
            f64::buffers().give(vec![f64::NAN; 128 * 128]);
        }
        let poisoned = run();
        let bits = |a: &Array2<f64>| a.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert!(clean.0.iter().all(|v| v.is_finite()));
        assert_eq!(
            clean.0.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            poisoned.0.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        assert_eq!(bits(&clean.1), bits(&poisoned.1), "∂h");
        assert_eq!(bits(&clean.2), bits(&poisoned.2), "∂Wᵀ");
        f64::buffers().clear();
    }

    #[test]
    fn fused_cross_entropy_gradient_matches_finite_differences() {
        for tiling in [SMALL, SMALL_RECOMPUTED] {
            let (mut h, mut w, targets) = problem();
            let out = output_loss_tiled(h.view(), w.view(), &targets, true, tiling, None);
            let (dh, dw) = (out.d_hidden.unwrap(), out.d_weight_t.unwrap().reversed_axes());
            let w0 = w.clone();
            assert_gradient("hidden", &mut h.view_mut().into_dyn(), &dh.into_dyn(), |h| {
                let h = h.view().into_dimensionality::<Ix2>().unwrap();
                output_loss_tiled(h, w0.view(), &targets, false, tiling, None).mean_nll
            });
            let h0 = h.clone();
            assert_gradient("weight", &mut w.view_mut().into_dyn(), &dw.into_dyn(), |w| {
                let w = w.view().into_dimensionality::<Ix2>().unwrap();
                output_loss_tiled(h0.view(), w, &targets, false, tiling, None).mean_nll
            });
        }
    }

    /// The training engine runs in `f32`, where the tile products run [`Scalar::local_product`]'s `f32`
    /// path (the direct kernel on CPUs that have it): its loss and both gradients agree with the `f64`
    /// loss, whose gradients the finite-difference tests check, for a tied weight (a transposed view of
    /// the embedding) and an untied one, over edge tiles, with cached and recomputed tiles.
    #[test]
    fn f32_loss_and_gradients_agree_with_the_f64_loss() {
        let (n, d, vocab) = (300, 40, 600);
        let embedding = random(&[vocab, d], 0.5, 11).into_dimensionality::<Ix2>().unwrap(); // [V, d]
        let hidden = random(&[n, d], 1.0, 12).into_dimensionality::<Ix2>().unwrap();
        let targets: Vec<u32> = (0..n).map(|i| ((i * 37 + 11) % vocab) as u32).collect();
        let untied = embedding.t().as_standard_layout().into_owned(); // [d, V]
        let (hidden32, embedding32, untied32) =
            (hidden.mapv(|v| v as f32), embedding.mapv(|v| v as f32), untied.mapv(|v| v as f32));
        // both ways of computing the tile products: the AVX2 kernel over packed operands (where the
        // CPU has AVX2 and FMA; OpenBLAS again where it has not) and OpenBLAS
        let tiling = Tiling { rows: 128, vocab: 256, groups: 2, ..DEFAULT_TILING };
        let kept_and_recomputed = [tiling, Tiling { cache_bytes: 0, ..tiling }];
        let products = [TileKernel::Avx2, TileKernel::OpenBlas];
        for tiling in products.iter().flat_map(|&products| kept_and_recomputed.map(|t| Tiling { products, ..t })) {
            for tied in [true, false] {
                let (weight64, weight32) =
                    if tied { (embedding.t(), embedding32.t()) } else { (untied.view(), untied32.view()) };
                let exact = output_loss_tiled(hidden.view(), weight64, &targets, true, tiling, None);
                let single = output_loss_tiled(hidden32.view(), weight32, &targets, true, tiling, None);
                // each compared value is a sum of at most max(d, N, V) = 600 f32 terms, so it lies within
                // 600·2⁻²³ ≈ 7·10⁻⁵ of the f64 value, relative to the largest value of its kind
                let bound = 600.0 * f64::from(f32::EPSILON);
                let check = |name: &str, got: &Array2<f32>, expected: &Array2<f64>| {
                    let scale = expected.iter().fold(0f64, |m, v| m.max(v.abs()));
                    let gap = got.iter().zip(expected).fold(0f64, |m, (&g, &e)| m.max((f64::from(g) - e).abs()));
                    assert!(
                        gap <= bound * scale,
                        "{name} (tied {tied}, {tiling:?}): gap {gap:e} > {:e}",
                        bound * scale
                    );
                };
                let nll_scale = exact.nll.iter().fold(0f64, |m, v| m.max(v.abs()));
                for (&got, &expected) in single.nll.iter().zip(&exact.nll) {
                    assert!((f64::from(got) - expected).abs() <= bound * nll_scale, "nll {got} against {expected}");
                }
                check("∂h", single.d_hidden.as_ref().unwrap(), exact.d_hidden.as_ref().unwrap());
                check("∂Wᵀ", single.d_weight_t.as_ref().unwrap(), exact.d_weight_t.as_ref().unwrap());
            }
        }
    }

    #[test]
    fn tiling_changes_nothing_but_rounding() {
        let (h, w, targets) = problem();
        let whole = output_loss_tiled(h.view(), w.view(), &targets, true, DEFAULT_TILING, None);
        let tiled = output_loss_tiled(h.view(), w.view(), &targets, true, SMALL_RECOMPUTED, None);
        assert!((whole.mean_nll - tiled.mean_nll).abs() < 1e-12);
        assert_eq!(whole.correct, tiled.correct);
        let gap =
            (whole.d_weight_t.unwrap() - tiled.d_weight_t.unwrap()).mapv(f64::abs).fold(0.0, |a: f64, &b| a.max(b));
        assert!(gap < 1e-14, "{gap}");
    }

    #[test]
    fn the_partials_budget_caps_the_groups_of_pass_2() {
        let (h, w, targets) = problem();
        let grouped = |groups: usize, partial_bytes: usize| {
            let tiling = Tiling { groups, partial_bytes, ..SMALL };
            output_loss_tiled(h.view(), w.view(), &targets, true, tiling, None).d_hidden.unwrap()
        };
        let one = grouped(1, usize::MAX);
        // two groups of two blocks sum ∂h as (b₀ + b₁) + (b₂ + b₃), one as ((b₀ + b₁) + b₂) + b₃: their
        // bits differ (else this test could not fail)
        assert_ne!(grouped(2, usize::MAX), one, "two groups round like one");
        // a budget below two partials of [10, 4] f64 leaves one group
        assert_eq!(grouped(2, 2 * 10 * 4 * 8 - 1), one);
    }

    /// `(h [N, d], W [d, V], y [N], caches, u [C, d], b [C])`.
    type CopyProblem = (Array2<f64>, Array2<f64>, Vec<u32>, CopyCaches, Array2<f64>, Array1<f64>);

    /// `N = 10` rows in two sequences of five over `V = 11`, with two copy rules (every earlier position
    /// of the sequence; the previous position) whose caches hold the target at some rows, miss it at others
    /// (κ(y) = 0) and are empty at each sequence's first row.
    fn copy_problem() -> CopyProblem {
        let (h, w, _) = problem();
        let ids: [u32; 11] = [3, 5, 3, 5, 7, 2, 9, 2, 9, 4, 1];
        let (tokens, targets) = (&ids[..10], ids[1..].to_vec());
        let mut all = vec![Vec::new(); 10];
        let mut previous = vec![Vec::new(); 10];
        for i in (0..10).filter(|i| i % 5 != 0) {
            all[i] = (i as u32 - i as u32 % 5..=i as u32).collect();
            previous[i] = vec![i as u32 - 1];
        }
        let caches = CopyCaches::new(tokens, vec![1.0, 0.7], &[all, previous]);
        assert!(caches.kappa(0, 3, targets[3]) == 0.0 && caches.kappa(0, 1, targets[1]) > 0.0);
        let u = random(&[2, 4], 0.7, 3).into_dimensionality::<Ix2>().unwrap();
        let b = ndarray::array![0.3, -0.5];
        (h, w, targets, caches, u, b)
    }

    fn with_copy<'a>(caches: &'a CopyCaches, u: &'a Array2<f64>, b: &'a Array1<f64>) -> Option<CopyInput<'a, f64>> {
        Some(CopyInput { caches, gate_weight: u.view(), gate_bias: b.view(), lambda: 0.8 })
    }

    #[test]
    fn cross_entropy_with_copy_paths_matches_finite_differences() {
        for tiling in [SMALL, SMALL_RECOMPUTED, DEFAULT_TILING] {
            let (mut h, mut w, targets, caches, mut u, mut b) = copy_problem();
            let out = output_loss_tiled(h.view(), w.view(), &targets, true, tiling, with_copy(&caches, &u, &b));
            let copy = out.copy.unwrap();
            let (dh, dw) = (out.d_hidden.unwrap(), out.d_weight_t.unwrap().reversed_axes());
            let (du, db) = (copy.d_gate_weight.unwrap(), copy.d_gate_bias.unwrap());
            let loss = |h: ArrayView2<f64>, w: ArrayView2<f64>, u: &Array2<f64>, b: &Array1<f64>| {
                output_loss_tiled(h, w, &targets, false, tiling, with_copy(&caches, u, b)).mean_nll
            };
            let (h0, w0, u0, b0) = (h.clone(), w.clone(), u.clone(), b.clone());
            assert_gradient("hidden", &mut h.view_mut().into_dyn(), &dh.into_dyn(), |h| {
                loss(h.view().into_dimensionality::<Ix2>().unwrap(), w0.view(), &u0, &b0)
            });
            assert_gradient("weight", &mut w.view_mut().into_dyn(), &dw.into_dyn(), |w| {
                loss(h0.view(), w.view().into_dimensionality::<Ix2>().unwrap(), &u0, &b0)
            });
            assert_gradient("gate weight", &mut u.view_mut().into_dyn(), &du.into_dyn(), |u| {
                loss(h0.view(), w0.view(), &u.to_owned().into_dimensionality::<Ix2>().unwrap(), &b0)
            });
            assert_gradient("gate bias", &mut b.view_mut().into_dyn(), &db.into_dyn(), |b| {
                loss(h0.view(), w0.view(), &u0, &b.to_owned().into_dimensionality::<ndarray::Ix1>().unwrap())
            });
        }
    }

    #[test]
    fn tiling_changes_nothing_but_rounding_with_copy_paths() {
        let (h, w, targets, caches, u, b) = copy_problem();
        let whole = output_loss_tiled(h.view(), w.view(), &targets, true, DEFAULT_TILING, with_copy(&caches, &u, &b));
        for tiling in [SMALL, SMALL_RECOMPUTED] {
            let tiled = output_loss_tiled(h.view(), w.view(), &targets, true, tiling, with_copy(&caches, &u, &b));
            assert!((whole.mean_nll - tiled.mean_nll).abs() < 1e-12);
            assert_eq!(whole.correct, tiled.correct);
            let gap = |a: &Array2<f64>, b: &Array2<f64>| (a - b).mapv(f64::abs).fold(0.0, |m: f64, &v| m.max(v));
            assert!(gap(whole.d_weight_t.as_ref().unwrap(), tiled.d_weight_t.as_ref().unwrap()) < 1e-14);
            assert!(gap(whole.d_hidden.as_ref().unwrap(), tiled.d_hidden.as_ref().unwrap()) < 1e-14);
            let (a, c) = (whole.copy.as_ref().unwrap(), tiled.copy.as_ref().unwrap());
            assert!(gap(a.d_gate_weight.as_ref().unwrap(), c.d_gate_weight.as_ref().unwrap()) < 1e-14);
            assert!(gap(&a.weights, &c.weights) < 1e-14);
        }
        // the copy paths lower the loss here, and the report keeps the softmax's own NLL
        let plain = output_loss_tiled(h.view(), w.view(), &targets, false, DEFAULT_TILING, None);
        assert_eq!(whole.copy.as_ref().unwrap().softmax_nll, plain.nll);
        assert!(whole.mean_nll < plain.mean_nll);
    }

    #[test]
    fn accuracy_is_the_argmax_of_the_mixture() {
        // logits (2, 0, 0) on both rows: the softmax predicts token 0; both rows copy token 2 from
        // position 0 and are to predict it
        let h = ndarray::array![[1.0f64, 0.0], [1.0, 0.0]];
        let w = ndarray::array![[2.0f64, 0.0, 0.0], [0.0, 0.0, 0.0]];
        let targets = [2u32, 2];
        let caches = CopyCaches::new(&[2, 1], vec![1.0], &[vec![vec![0], vec![0]]]);
        let u = Array2::zeros((1, 2));
        let correct = |bias: f64, lambda: f64| {
            let b = ndarray::array![bias];
            let copy = CopyInput { caches: &caches, gate_weight: u.view(), gate_bias: b.view(), lambda };
            output_loss(h.view(), w.view(), &targets, false, Some(copy)).correct
        };
        // p(2) = (q(2) + λe^b)/(1 + λe^b) against p(0) = q(0)/(1 + λe^b), by the definition
        let q = [2f64.exp(), 1.0, 1.0].map(|v| v / (2f64.exp() + 2.0));
        let copy_wins = |bias: f64, lambda: f64| q[2] + lambda * f64::exp(bias) > q[0];
        assert!(copy_wins(3.0, 1.0) && !copy_wins(-6.0, 1.0));
        // an open gate: the copied token is the prediction
        assert_eq!(correct(3.0, 1.0), 2);
        // a shut gate, λ = 0 or no copy path: the softmax's argmax
        assert_eq!(correct(-6.0, 1.0), 0);
        assert_eq!(correct(3.0, 0.0), 0);
        assert_eq!(output_loss(h.view(), w.view(), &targets, false, None).correct, 0);
        // when the copied token is the softmax's own argmax, the prediction does not move
        assert_eq!(output_loss(h.view(), w.view(), &[0, 0], false, None).correct, 2);
        let own = CopyCaches::new(&[0, 1], vec![1.0], &[vec![vec![0], vec![0]]]);
        let b = ndarray::array![3.0];
        let copy = CopyInput { caches: &own, gate_weight: u.view(), gate_bias: b.view(), lambda: 1.0 };
        assert_eq!(output_loss(h.view(), w.view(), &[0, 0], false, Some(copy)).correct, 2);
    }

    #[test]
    fn cross_entropy_matches_direct_computation() {
        let h = ndarray::array![[1.0f64, 0.0], [0.0, 2.0]];
        let w = ndarray::array![[1.0f64, 0.0, -1.0], [0.0, 1.0, 0.5]];
        let out = output_loss(h.view(), w.view(), &[0, 2], false, None);
        // row 0 logits (1, 0, −1), target 0; row 1 logits (0, 2, 1), target 2
        let nll0 = (1f64.exp() + 1.0 + (-1f64).exp()).ln() - 1.0;
        let nll1 = (1.0 + 2f64.exp() + 1f64.exp()).ln() - 1.0;
        assert!((out.nll[0] - nll0).abs() < 1e-12 && (out.nll[1] - nll1).abs() < 1e-12);
        assert_eq!(out.correct, 1);
    }
}
