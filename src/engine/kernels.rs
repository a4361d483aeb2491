//! Small element-wise kernels written so that the compiler vectorises them.
//!
//! The C library's `expf` and `tanhf` are scalar calls; in the softmaxes and the GELU they took over a
//! quarter of a training step. These versions are branch-free (clamps and bit arithmetic instead of
//! special cases) so that a loop over a slice becomes SIMD code. Reductions use eight independent
//! accumulators in a fixed order: vectorisable, and still the same result on every run.
//!
//! Each slice kernel is compiled three times on x86-64: for the baseline (SSE2, 4 lanes), AVX2 (8) and
//! AVX-512 (16), chosen at run time by `dispatch!` up to what [`super::simd::SIMD_VARIABLE`]
//! allows. None uses FMA and every reduction has the same eight-lane order, so all three give the
//! same bits.

use super::Scalar;

use super::simd::{simd, Simd};

/// Defines `fn $name` (with the given visibility), generic over one type parameter or not, that runs
/// `$body` compiled for AVX-512 or AVX2 when [`simd`] allows it, else for the baseline. `$body` must be
/// `#[inline(always)]` so that it is compiled inside each variant.
macro_rules! dispatch {
    ($(#[$doc:meta])* $vis:vis fn $name:ident $(<$g:ident: $bound:ident>)? ($($arg:ident: $ty:ty),*) -> $ret:ty
        = $body:ident;) => {
        $(#[$doc])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name $(<$g: $bound>)? ($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn widest $(<$g: $bound>)? ($($arg: $ty),*) -> $ret {
                    $body($($arg),*)
                }
                #[target_feature(enable = "avx2")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn wide $(<$g: $bound>)? ($($arg: $ty),*) -> $ret {
                    $body($($arg),*)
                }
                match simd() {
                    // SAFETY: `simd` is at most what the CPU supports, and AVX-512F is the only feature
                    // `widest` was compiled for.
                    Simd::Avx512 => return unsafe { widest($($arg),*) },
                    // SAFETY: as above, for AVX2 and `wide`.
                    Simd::Avx2 => return unsafe { wide($($arg),*) },
                    Simd::Baseline => {}
                }
            }
            $body($($arg),*)
        }
    };
}

/// Elements per block of the staged exponential and tanh: four AVX2 vectors, two AVX-512 ones.
///
/// Each formula is one chain of about 25 dependent operations. Evaluated an element (one vector) at a
/// time, the chains of successive vectors overlap only as far as the CPU's scheduler reaches, and it
/// fills with waiting operations long before the arithmetic units do. [`exp_f32_block`] and
/// [`tanh_f32_block`] run every stage for the whole block before the next stage: the same operations
/// in the same order per element (so the same bits), with several independent vectors per stage. On
/// a Zen 4 core that computes the exponential in 0.49 ns per element instead of 0.87 on the AVX2
/// path, 0.36 instead of 0.56 on the AVX-512 one.
pub const STAGED_BLOCK: usize = 32;

/// `eˣ` in `f32`, to within 2 ulp of the correctly rounded value over `[-87, 88]`.
///
/// Cody–Waite reduction `x = n·ln2 + r`, `|r| ≤ ln2/2`, then the degree-6 minimax polynomial for `eʳ`
/// of the Cephes library's `expf`, then scaling by `2ⁿ` through the exponent bits. Inputs are clamped
/// to the range where `2ⁿ` is a normal number, so very negative inputs give about `1e-38`, not 0: below
/// any probability the engine distinguishes.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    let mut one = [x];
    exp_f32_block(&mut one);
    one[0]
}

/// [`exp_f32`] of every element of a block, in place, stage by stage (see [`STAGED_BLOCK`]).
#[inline(always)]
pub fn exp_f32_block<const N: usize>(x: &mut [f32; N]) {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Round to nearest by adding 1.5·2²³: the sum's low mantissa bits then hold n as an integer, so
    // both n as a float and 2ⁿ come from bit arithmetic. (A `floor` call, or a saturating `as i32`,
    // would each turn the loop back into scalar code.)
    const ROUNDER: f32 = 12_582_912.0;
    const POLYNOMIAL: [f32; 5] = [1.398_2e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5];
    let (mut shifted, mut r, mut p) = ([0.0f32; N], [0.0f32; N], [1.987_569_1e-4_f32; N]);
    for i in 0..N {
        x[i] = x[i].clamp(-87.0, 88.0);
        shifted[i] = x[i] * LOG2E + ROUNDER;
    }
    for i in 0..N {
        let n = shifted[i] - ROUNDER;
        r[i] = x[i] - n * LN2_HI - n * LN2_LO;
    }
    // (Cephes's last coefficient, 5.0000001201e-1, rounds to 0.5 in f32)
    for c in POLYNOMIAL {
        for i in 0..N {
            p[i] = p[i] * r[i] + c;
        }
    }
    for i in 0..N {
        let y = p[i] * r[i] * r[i] + r[i] + 1.0;
        let n_bits = shifted[i].to_bits().wrapping_sub(ROUNDER.to_bits());
        x[i] = y * f32::from_bits(n_bits.wrapping_add(127) << 23);
    }
}

/// `eˣ` in `f64`, to within 2 ulp of glibc's `exp` over `[-708, 709]` (tested there), the inputs
/// clamped to that range (so `e^-800` gives about `3·10⁻³⁰⁸`, not 0).
///
/// The same scheme as [`exp_f32`]: `x = n·ln2 + r`, `|r| ≤ ln2/2`, with fdlibm's split of `ln 2`
/// (whose high part has 32 significant bits, so `n·LN2_HI` is exact), then the Taylor series of `eʳ`
/// to `r¹³/13!` (the first omitted term is below `5·10⁻¹⁸`), then `2ⁿ` through the exponent bits. The
/// library's `exp` is a scalar call; this loop vectorises, and needs no FMA, so every width rounds alike.
#[inline(always)]
pub fn exp_f64(x: f64) -> f64 {
    const LOG2E: f64 = std::f64::consts::LOG2_E;
    // fdlibm's `ln2HI` (6.93147180369123816490e-01) and `ln2LO` (1.90821492927058770002e-10), bit for bit
    const LN2_HI: f64 = f64::from_bits(0x3fe6_2e42_fee0_0000);
    const LN2_LO: f64 = f64::from_bits(0x3dea_39ef_3579_3c76);
    // 1.5·2⁵²: adding it leaves n, rounded to nearest, in the low mantissa bits
    const ROUNDER: f64 = 6_755_399_441_055_744.0;
    let x = x.clamp(-708.0, 709.0);
    let shifted = x * LOG2E + ROUNDER;
    let n = shifted - ROUNDER;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    // 1/k! for k = 13 down to 2
    const INVERSE_FACTORIALS: [f64; 12] = [
        1.0 / 6_227_020_800.0,
        1.0 / 479_001_600.0,
        1.0 / 39_916_800.0,
        1.0 / 3_628_800.0,
        1.0 / 362_880.0,
        1.0 / 40_320.0,
        1.0 / 5_040.0,
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
    ];
    let mut p = INVERSE_FACTORIALS[0];
    for &c in &INVERSE_FACTORIALS[1..] {
        p = p * r + c;
    }
    let y = p * r * r + r + 1.0;
    let n_bits = shifted.to_bits().wrapping_sub(ROUNDER.to_bits());
    let scale = f64::from_bits(n_bits.wrapping_add(1023) << 52);
    y * scale
}

/// `tanh x` as a rational function: an odd degree-13 numerator over an even degree-6 denominator in
/// `x`, with inputs clamped to `±7.905`, where the ratio reaches 1 in `f32`. The coefficients are
/// Eigen's (`generic_fast_tanh_float`, Eigen 3.4, `MathFunctionsImpl.h`). Absolute error below
/// `4.2·10⁻⁷` (7 ulp of values near ±1; measured over 2·10⁷ points of `[−8.5, 8.5]`), exact limits ±1. One division and no exponential: it
/// costs the GELU about half of what `1 − 2/(e²ˣ + 1)` did.
#[inline(always)]
pub fn tanh_f32(x: f32) -> f32 {
    let mut one = [x];
    tanh_f32_block(&mut one);
    one[0]
}

/// [`tanh_f32`] of every element of a block, in place, stage by stage (see [`STAGED_BLOCK`]).
#[inline(always)]
pub fn tanh_f32_block<const N: usize>(x: &mut [f32; N]) {
    const CLAMP: f32 = 7.905_311;
    const NUMERATOR: [f32; 6] =
        [2.000_188e-13, -8.604_672e-11, 5.122_297e-8, 1.485_722_4e-5, 6.372_619e-4, 4.893_524_6e-3];
    const DENOMINATOR: [f32; 3] = [1.185_347e-4, 2.268_434_6e-3, 4.893_525e-3];
    let (mut clamped, mut x2) = ([0.0f32; N], [0.0f32; N]);
    let (mut p, mut q) = ([-2.760_768_5e-16_f32; N], [1.198_258_4e-6_f32; N]);
    for i in 0..N {
        clamped[i] = x[i].clamp(-CLAMP, CLAMP);
        x2[i] = clamped[i] * clamped[i];
    }
    for c in NUMERATOR {
        for i in 0..N {
            p[i] = p[i] * x2[i] + c;
        }
    }
    for c in DENOMINATOR {
        for i in 0..N {
            q[i] = q[i] * x2[i] + c;
        }
    }
    for i in 0..N {
        let ratio = clamped[i] * p[i] / q[i];
        // the ratio at the clamp is 1 − 2⁻²⁴; beyond it the answer is ±1 exactly (a select, not a branch)
        x[i] = if x[i].abs() >= CLAMP { 1.0f32.copysign(x[i]) } else { ratio };
    }
}

dispatch! {
    /// Largest element (−∞ for an empty slice).
    pub fn max<F: Scalar>(values: &[F]) -> F = max_body;
}

#[inline(always)]
fn max_body<F: Scalar>(values: &[F]) -> F {
    let mut lanes = [F::neg_infinity(); 8];
    let chunks = values.chunks_exact(8);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane = if v > *lane { v } else { *lane };
        }
    }
    let mut m = lanes.iter().fold(F::neg_infinity(), |a, &b| if b > a { b } else { a });
    for &v in rest {
        m = if v > m { v } else { m };
    }
    m
}

/// The largest element and the index of its first occurrence, in one pass: a row's argmax without
/// a second scan of the row. `(−∞, 0)` when no element exceeds −∞ (an empty or all-NaN slice).
///
/// Two bodies, one result. On AVX-512 each lane keeps its largest element and the chunk it came from.
/// LLVM turns that `u32` select under an `f32` comparison into scalar code on AVX2, so there the
/// maximum comes first and its position second (`max_then_index`): on a Zen 4 core 0.14 ns per
/// element of a 256-wide row against 0.39, where on AVX-512 the two passes would cost twice the one.
pub fn max_with_index<F: Scalar>(values: &[F]) -> (F, usize) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f")]
        unsafe fn widest<F: Scalar>(values: &[F]) -> (F, usize) {
            max_with_index_body(values)
        }
        if simd() == Simd::Avx512 {
            // SAFETY: `simd` is at most what the CPU supports, and AVX-512F is the only feature `widest`
            // was compiled for.
            return unsafe { widest(values) };
        }
    }
    max_then_index(values)
}

#[inline(always)]
fn max_with_index_body<F: Scalar>(values: &[F]) -> (F, usize) {
    const LANES: usize = 16;
    // each lane keeps its largest element and the chunk it came from; a strictly larger element
    // replaces it, so a lane holds the first occurrence of its maximum
    let mut best = [F::neg_infinity(); LANES];
    let mut chunk_of_best = [0u32; LANES];
    let chunks = values.chunks_exact(LANES);
    let rest = chunks.remainder();
    for (c, chunk) in chunks.enumerate() {
        let c = c as u32;
        for lane in 0..LANES {
            let larger = chunk[lane] > best[lane];
            best[lane] = if larger { chunk[lane] } else { best[lane] };
            chunk_of_best[lane] = if larger { c } else { chunk_of_best[lane] };
        }
    }
    // of the lanes that hold the maximum, the earliest position
    let (mut max, mut index) = (F::neg_infinity(), 0usize);
    for lane in 0..LANES {
        let position = chunk_of_best[lane] as usize * LANES + lane;
        if best[lane] > max || (best[lane] == max && max > F::neg_infinity() && position < index) {
            (max, index) = (best[lane], position);
        }
    }
    let tail_start = values.len() - rest.len();
    for (i, &v) in rest.iter().enumerate() {
        if v > max {
            (max, index) = (v, tail_start + i);
        }
    }
    (max, index)
}

dispatch! {
    /// [`max_with_index`] in two passes, for AVX2 and the baseline: the maximum, then its first position.
    fn max_then_index<F: Scalar>(values: &[F]) -> (F, usize) = max_then_index_body;
}

#[inline(always)]
fn max_then_index_body<F: Scalar>(values: &[F]) -> (F, usize) {
    const CHUNK: usize = 16;
    let max = max_body(values);
    // (`max_body` never keeps a NaN, so this is the empty or all-NaN slice)
    if max == F::neg_infinity() {
        return (F::neg_infinity(), 0);
    }
    // whole chunks compared at once, the first chunk that holds the maximum searched element by element
    let (chunks, rest) = values.as_chunks::<CHUNK>();
    let position = |values: &[F]| values.iter().position(|&v| v == max).unwrap_or(0);
    for (c, chunk) in chunks.iter().enumerate() {
        let mut holds = false;
        for &v in chunk {
            holds |= v == max;
        }
        if holds {
            let index = c * CHUNK + position(chunk);
            // the element itself, as one pass would keep it (−0 where it comes before an equal +0)
            return (values[index], index);
        }
    }
    let index = chunks.len() * CHUNK + position(rest);
    (values[index], index)
}

/// The eight running lanes of a reduction, combined in the one fixed order every reduction uses.
#[inline(always)]
fn fold_lanes<F: Scalar>(lanes: [F; 8]) -> F {
    ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]))
}

dispatch! {
    /// Sum in a fixed order: eight running lanes, then the lanes, then the tail.
    pub fn sum<F: Scalar>(values: &[F]) -> F = sum_body;
}

#[inline(always)]
fn sum_body<F: Scalar>(values: &[F]) -> F {
    let mut lanes = [F::zero(); 8];
    let chunks = values.chunks_exact(8);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane += v;
        }
    }
    let mut total = fold_lanes(lanes);
    for &v in rest {
        total += v;
    }
    total
}

dispatch! {
    /// `v ← e^(v − shift)` for every element; returns the sum of the results.
    pub fn exp_shifted_inplace<F: Scalar>(values: &mut [F], shift: F) -> F = exp_shifted_body;
}

#[inline(always)]
fn exp_shifted_body<F: Scalar>(values: &mut [F], shift: F) -> F {
    let (blocks, rest) = values.as_chunks_mut::<STAGED_BLOCK>();
    for block in blocks {
        block.iter_mut().for_each(|v| *v -= shift);
        F::exp_block(block);
    }
    rest.iter_mut().for_each(|v| *v = (*v - shift).exp_kernel());
    // a pass of its own: summed inside the blocks, the adds' chain held the stages back
    sum_body(values)
}

dispatch! {
    /// `v ← v · factor` for every element.
    pub fn scale_inplace<F: Scalar>(values: &mut [F], factor: F) -> () = scale_body;
}

#[inline(always)]
fn scale_body<F: Scalar>(values: &mut [F], factor: F) {
    values.iter_mut().for_each(|v| *v *= factor);
}

/// `½x(1 + tanh(√(2/π)(x + 0.044715x³)))`, GELU in its tanh form (see `gelu.rs`).
#[inline(always)]
pub fn gelu_scalar<F: Scalar>(x: F) -> F {
    F::lit(0.5) * x * (F::one() + gelu_tanh(x))
}

/// `u = c(x + a x³)`, `c = √(2/π)`, `a = 0.044715`: the one place the GELU's inner argument is
/// written.
#[inline(always)]
fn gelu_inner<F: Scalar>(x: F) -> F {
    let (c, a) = (F::lit(0.797_884_560_802_865_4), F::lit(0.044_715));
    c * (x + a * x * x * x)
}

/// `tanh u` for the GELU's inner argument `u` ([`gelu_inner`]).
#[inline(always)]
fn gelu_tanh<F: Scalar>(x: F) -> F {
    gelu_inner(x).tanh_kernel()
}

/// [`gelu_tanh`] of a block, stage by stage ([`STAGED_BLOCK`]).
#[inline(always)]
fn gelu_tanh_block<F: Scalar>(x: &[F; STAGED_BLOCK]) -> [F; STAGED_BLOCK] {
    let mut t = [F::zero(); STAGED_BLOCK];
    for i in 0..STAGED_BLOCK {
        t[i] = gelu_inner(x[i]);
    }
    F::tanh_block(&mut t);
    t
}

/// `dGELU/dx`: `½(1 + tanh u) + ½x(1 − tanh² u)·c(1 + 3a x²)` with `u = c(x + a x³)`.
#[inline(always)]
pub fn gelu_derivative_scalar<F: Scalar>(x: F) -> F {
    gelu_derivative_from_tanh(x, gelu_tanh(x))
}

/// [`gelu_derivative_scalar`] given `t = tanh u`.
#[inline(always)]
fn gelu_derivative_from_tanh<F: Scalar>(x: F, t: F) -> F {
    let (c, a, half) = (F::lit(0.797_884_560_802_865_4), F::lit(0.044_715), F::lit(0.5));
    half * (F::one() + t) + half * x * (F::one() - t * t) * c * (F::one() + F::lit(3.0) * a * x * x)
}

dispatch! {
    /// `out_i = GELU(x_i)`.
    pub fn gelu_slice<F: Scalar>(x: &[F], out: &mut [F]) -> () = gelu_body;
}

#[inline(always)]
fn gelu_body<F: Scalar>(x: &[F], out: &mut [F]) {
    let n = x.len().min(out.len());
    let ((x_blocks, x_rest), (out_blocks, out_rest)) =
        (x[..n].as_chunks::<STAGED_BLOCK>(), out[..n].as_chunks_mut::<STAGED_BLOCK>());
    for (x, out) in x_blocks.iter().zip(out_blocks) {
        let t = gelu_tanh_block(x);
        for i in 0..STAGED_BLOCK {
            out[i] = F::lit(0.5) * x[i] * (F::one() + t[i]);
        }
    }
    out_rest.iter_mut().zip(x_rest).for_each(|(o, &x)| *o = gelu_scalar(x));
}

dispatch! {
    /// `dx_i = dy_i · GELU'(x_i)`.
    pub fn gelu_backward_slice<F: Scalar>(dy: &[F], x: &[F], dx: &mut [F]) -> () = gelu_backward_body;
}

#[inline(always)]
fn gelu_backward_body<F: Scalar>(dy: &[F], x: &[F], dx: &mut [F]) {
    let n = dy.len().min(x.len()).min(dx.len());
    let (dy_blocks, dy_rest) = dy[..n].as_chunks::<STAGED_BLOCK>();
    let ((x_blocks, x_rest), (dx_blocks, dx_rest)) =
        (x[..n].as_chunks::<STAGED_BLOCK>(), dx[..n].as_chunks_mut::<STAGED_BLOCK>());
    for ((dy, x), dx) in dy_blocks.iter().zip(x_blocks).zip(dx_blocks) {
        let t = gelu_tanh_block(x);
        for i in 0..STAGED_BLOCK {
            dx[i] = dy[i] * gelu_derivative_from_tanh(x[i], t[i]);
        }
    }
    dx_rest.iter_mut().zip(dy_rest.iter().zip(x_rest)).for_each(|(d, (&g, &x))| *d = g * gelu_derivative_scalar(x));
}

dispatch! {
    /// `Σ a_i·b_i` in a fixed order.
    pub fn dot<F: Scalar>(a: &[F], b: &[F]) -> F = dot_body;
}

#[inline(always)]
fn dot_body<F: Scalar>(a: &[F], b: &[F]) -> F {
    let mut lanes = [F::zero(); 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            lanes[k] += x[k] * y[k];
        }
    }
    let mut total = fold_lanes(lanes);
    for (&x, &y) in ra.iter().zip(rb) {
        total += x * y;
    }
    total
}

dispatch! {
    /// The softmax's chain rule on one row: `g_j ← α_j·(g_j − Σ_l α_l·g_l)`, where `α` is the row of
    /// weights and `g` holds `∂J/∂α` on entry and `∂J/∂s` on return.
    pub fn softmax_backward_row<F: Scalar>(alpha: &[F], grad: &mut [F]) -> () = softmax_backward_body;
}

#[inline(always)]
fn softmax_backward_body<F: Scalar>(alpha: &[F], grad: &mut [F]) {
    let weighted = dot_body(alpha, grad);
    grad.iter_mut().zip(alpha).for_each(|(g, &a)| *g = a * (*g - weighted));
}

dispatch! {
    /// GELU of a slice that also keeps `tanh u`, `u = √(2/π)(x + 0.044715x³)`, for the backward pass:
    /// `out_i = ½x_i(1 + t_i)`, `tanh_out_i = t_i`.
    pub fn gelu_keeping_tanh_slice<F: Scalar>(x: &[F], out: &mut [F], tanh_out: &mut [F]) -> () = gelu_keeping_tanh_body;
}

#[inline(always)]
fn gelu_keeping_tanh_body<F: Scalar>(x: &[F], out: &mut [F], tanh_out: &mut [F]) {
    let n = x.len().min(out.len()).min(tanh_out.len());
    let (x_blocks, x_rest) = x[..n].as_chunks::<STAGED_BLOCK>();
    let ((out_blocks, out_rest), (t_blocks, t_rest)) =
        (out[..n].as_chunks_mut::<STAGED_BLOCK>(), tanh_out[..n].as_chunks_mut::<STAGED_BLOCK>());
    for ((x, out), tanh_out) in x_blocks.iter().zip(out_blocks).zip(t_blocks) {
        *tanh_out = gelu_tanh_block(x);
        for i in 0..STAGED_BLOCK {
            out[i] = F::lit(0.5) * x[i] * (F::one() + tanh_out[i]);
        }
    }
    for ((o, t), &x) in out_rest.iter_mut().zip(t_rest.iter_mut()).zip(x_rest) {
        *t = gelu_tanh(x);
        *o = F::lit(0.5) * x * (F::one() + *t);
    }
}

dispatch! {
    /// `dx_i = dy_i · GELU'(x_i)` from the forward pass's `t_i = tanh u_i`: no exponential to recompute.
    pub fn gelu_backward_from_tanh_slice<F: Scalar>(dy: &[F], x: &[F], tanh: &[F], dx: &mut [F]) -> () = gelu_backward_from_tanh_body;
}

#[inline(always)]
fn gelu_backward_from_tanh_body<F: Scalar>(dy: &[F], x: &[F], tanh: &[F], dx: &mut [F]) {
    for ((d, &g), (&x, &t)) in dx.iter_mut().zip(dy).zip(x.iter().zip(tanh)) {
        *d = g * gelu_derivative_from_tanh(x, t);
    }
}

dispatch! {
    /// LayerNorm of one row: `normalized = (x − mean)/σ` with `σ = √(var + eps)` and
    /// `y = normalized·weight + bias`. Returns `1/σ`.
    pub fn layernorm_row<F: Scalar>(x: &[F], weight: &[F], bias: &[F], eps: F, normalized: &mut [F], y: &mut [F]) -> F = layernorm_row_body;
}

#[inline(always)]
fn layernorm_row_body<F: Scalar>(x: &[F], weight: &[F], bias: &[F], eps: F, normalized: &mut [F], y: &mut [F]) -> F {
    let width = F::lit(x.len() as f64);
    let mean = sum_body(x) / width;
    normalized.iter_mut().zip(x).for_each(|(n, &v)| *n = v - mean);
    let variance = dot_body(normalized, normalized) / width;
    let rstd = F::one() / (variance + eps).sqrt();
    for ((out, n), (&w, &b)) in y.iter_mut().zip(normalized.iter_mut()).zip(weight.iter().zip(bias)) {
        *n *= rstd;
        *out = *n * w + b;
    }
    rstd
}

dispatch! {
    /// LayerNorm's chain rule on one row, plus a residual gradient that joins it:
    /// `dx = rstd·(g − mean g − x̂·mean(g·x̂)) + residual` with `g = dy·weight`; accumulates
    /// `dweight += dy·x̂` and `dbias += dy`.
    pub fn layernorm_backward_row<F: Scalar>(dy: &[F], normalized: &[F], weight: &[F], rstd: F, residual: &[F], dx: &mut [F], dweight: &mut [F], dbias: &mut [F]) -> () = layernorm_backward_row_body;
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn layernorm_backward_row_body<F: Scalar>(
    dy: &[F],
    normalized: &[F],
    weight: &[F],
    rstd: F,
    residual: &[F],
    dx: &mut [F],
    dweight: &mut [F],
    dbias: &mut [F],
) {
    let width = F::lit(dy.len() as f64);
    // g = dy·weight, kept in dx until the means are known
    dx.iter_mut().zip(dy.iter().zip(weight)).for_each(|(g, (&d, &w))| *g = d * w);
    let mean_g = sum_body(dx) / width;
    let mean_g_xhat = dot_body(dx, normalized) / width;
    for (g, (&xhat, &r)) in dx.iter_mut().zip(normalized.iter().zip(residual)) {
        *g = rstd * (*g - mean_g - xhat * mean_g_xhat) + r;
    }
    for ((dw, db), (&d, &xhat)) in dweight.iter_mut().zip(dbias.iter_mut()).zip(dy.iter().zip(normalized)) {
        *dw += d * xhat;
        *db += d;
    }
}

dispatch! {
    /// `total_j += Σ_i rows[i·width + j]`, the rows in order: a bias gradient's column sums.
    pub fn add_column_sums<F: Scalar>(rows: &[F], total: &mut [F]) -> () = add_column_sums_body;
}

#[inline(always)]
fn add_column_sums_body<F: Scalar>(rows: &[F], total: &mut [F]) {
    for row in rows.chunks_exact(total.len()) {
        total.iter_mut().zip(row).for_each(|(t, &v)| *t += v);
    }
}

dispatch! {
    /// `v ← eᵛ` for every element, by [`exp_f64`].
    pub fn exp_f64_inplace(values: &mut [f64]) -> () = exp_f64_body;
}

#[inline(always)]
fn exp_f64_body(values: &mut [f64]) {
    values.iter_mut().for_each(|v| *v = exp_f64(*v));
}

dispatch! {
    /// `out_i = dot(rows[i·d..(i + 1)·d], vector)` for every row, `d = vector.len()`: each the same bits
    /// as [`dot`] of that row.
    pub fn row_dots<F: Scalar>(rows: &[F], vector: &[F], out: &mut [F]) -> () = row_dots_body;
}

#[inline(always)]
fn row_dots_body<F: Scalar>(rows: &[F], vector: &[F], out: &mut [F]) {
    for (row, out) in rows.chunks_exact(vector.len().max(1)).zip(out) {
        *out = dot_body(row, vector);
    }
}

dispatch! {
    /// `total_j += Σ_i weights_i · rows[i·width + j]` in `f64`, the rows in order: `Xᵀw` for `f32` rows.
    pub fn add_weighted_rows(weights: &[f64], rows: &[f32], total: &mut [f64]) -> () = add_weighted_rows_body;
}

#[inline(always)]
fn add_weighted_rows_body(weights: &[f64], rows: &[f32], total: &mut [f64]) {
    // Columns in blocks down every row, their sums held in registers rather than stored and reloaded
    // once per row, several independent vectors per block so that the adds' latency overlaps. Each
    // column's sum still runs over the rows in order, so the blocking changes no bit.
    let width = total.len();
    let count = weights.len().min(rows.len() / width.max(1));
    let weights = &weights[..count];
    let mut first = 0;
    while width - first >= 32 {
        weighted_column_block::<32>(weights, rows, width, first, &mut total[first..first + 32]);
        first += 32;
    }
    while width - first >= 8 {
        weighted_column_block::<8>(weights, rows, width, first, &mut total[first..first + 8]);
        first += 8;
    }
    for (column, sum) in total.iter_mut().enumerate().skip(first) {
        for (i, &weight) in weights.iter().enumerate() {
            *sum += weight * f64::from(rows[i * width + column]);
        }
    }
}

#[inline(always)]
fn weighted_column_block<const N: usize>(weights: &[f64], rows: &[f32], width: usize, first: usize, total: &mut [f64]) {
    let mut sums = [0.0f64; N];
    sums.copy_from_slice(total);
    for (i, &weight) in weights.iter().enumerate() {
        let row = &rows[i * width + first..i * width + first + N];
        for (sum, &x) in sums.iter_mut().zip(row) {
            *sum += weight * f64::from(x);
        }
    }
    total.copy_from_slice(&sums);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulp_distance(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    #[test]
    fn max_with_index_is_the_first_position_of_the_maximum() {
        let plain = |values: &[f32]| {
            let max = values.iter().fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
            (max, values.iter().position(|&v| v == max).unwrap_or(0))
        };
        // the dispatched kernel, and both of its bodies whatever this CPU runs
        type Body = fn(&[f32]) -> (f32, usize);
        let bodies: [(&str, Body); 3] =
            [("dispatched", max_with_index), ("one pass", max_with_index_body), ("two passes", max_then_index_body)];
        for (name, max_with_index) in bodies {
            for len in [0usize, 1, 15, 16, 17, 40, 257] {
                // repeated maxima in several lanes and chunks, the first of them in every position
                for shift in 0..len.min(40) {
                    let values: Vec<f32> = (0..len).map(|i| ((i + len - shift) % 7) as f32).collect();
                    assert_eq!(max_with_index(&values), plain(&values), "{name}: len {len}, shift {shift}");
                }
                // the maximum in the tail after full chunks, and at the very end
                let mut late = vec![0.0f32; len];
                if let Some(last) = late.last_mut() {
                    *last = 5.0;
                    assert_eq!(max_with_index(&late), (5.0, len - 1), "{name}");
                }
            }
            let mut with_nan = vec![1.0f32; 20];
            with_nan[3] = f32::NAN;
            with_nan[17] = 2.0;
            assert_eq!(max_with_index(&with_nan), (2.0, 17), "{name}");
            assert_eq!(max_with_index(&[f32::NAN; 20]), (f32::NEG_INFINITY, 0), "{name}");
            assert_eq!(max_with_index(&[]), (f32::NEG_INFINITY, 0), "{name}");
            // of equal zeros the first is kept, sign and all
            let (zero, index) = max_with_index(&[-1.0, -0.0, 0.0, -0.0]);
            assert_eq!((zero.to_bits(), index), ((-0.0f32).to_bits(), 1), "{name}");
        }
        assert_eq!(max_with_index::<f64>(&[]), (f64::NEG_INFINITY, 0));
    }

    /// The staged kernels ([`STAGED_BLOCK`]) give the bits of their formulas applied one element at a
    /// time, in whole blocks and in the remainder after them.
    #[test]
    fn staged_kernels_give_the_bits_of_one_element_at_a_time() {
        let bits = |values: &[f32]| values.iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
        for len in [0, 1, 31, 32, 33, 64, 100] {
            // beyond both clamps, through 0 and the saturation of tanh, and a NaN
            let x: Vec<f32> = (0..len).map(|i| if i == 7 { f32::NAN } else { (i as f32 - 50.0) * 2.3 }).collect();
            let mut exps = x.clone();
            let total = exp_shifted_inplace(&mut exps, 1.5);
            let one_by_one: Vec<f32> = x.iter().map(|&v| exp_f32(v - 1.5)).collect();
            assert_eq!(bits(&exps), bits(&one_by_one), "exp, length {len}");
            assert_eq!(total.to_bits(), sum(&one_by_one).to_bits(), "exp's sum, length {len}");

            let (mut gelu, mut kept, mut tanh) = (vec![0.0; len], vec![0.0; len], vec![0.0; len]);
            gelu_slice(&x, &mut gelu);
            gelu_keeping_tanh_slice(&x, &mut kept, &mut tanh);
            let expected: Vec<f32> = x.iter().map(|&v| gelu_scalar(v)).collect();
            assert_eq!(bits(&gelu), bits(&expected), "GELU, length {len}");
            assert_eq!(bits(&kept), bits(&expected), "GELU keeping tanh, length {len}");
            assert_eq!(bits(&tanh), bits(&x.iter().map(|&v| gelu_tanh(v)).collect::<Vec<_>>()), "tanh, length {len}");

            let dy: Vec<f32> = (0..len).map(|i| i as f32 * 0.25 - 3.0).collect();
            let mut dx = vec![0.0; len];
            gelu_backward_slice(&dy, &x, &mut dx);
            let expected: Vec<f32> = dy.iter().zip(&x).map(|(&g, &v)| g * gelu_derivative_scalar(v)).collect();
            assert_eq!(bits(&dx), bits(&expected), "GELU backward, length {len}");
        }
        // and the block functions themselves against their single-element forms
        let mut block: [f32; STAGED_BLOCK] = std::array::from_fn(|i| i as f32 * 0.7 - 11.0);
        let original = block;
        tanh_f32_block(&mut block);
        assert_eq!(bits(&block), bits(&original.map(tanh_f32)));
    }

    #[test]
    fn exp_is_within_two_ulp_across_its_range() {
        let mut worst = 0;
        let mut x = -87.0f32;
        while x < 88.0 {
            let exact = (x as f64).exp() as f32;
            worst = worst.max(ulp_distance(exp_f32(x), exact));
            x += 0.001_3;
        }
        assert!(worst <= 2, "worst error {worst} ulp");
        assert_eq!(exp_f32(0.0), 1.0);
        assert!(exp_f32(-1000.0) < 1e-37 && exp_f32(-1000.0) >= 0.0);
    }

    #[test]
    fn exp_f64_is_within_two_ulp_of_the_library_across_its_range() {
        // glibc's `exp` is correctly rounded in all but rare cases, so 2 ulp from it bounds ours by 3
        let ulp = |a: f64, b: f64| (a.to_bits() as i128 - b.to_bits() as i128).unsigned_abs();
        let (mut worst, mut x) = (0, -708.0f64);
        while x < 709.0 {
            worst = worst.max(ulp(exp_f64(x), x.exp()));
            x += 0.000_97;
        }
        // and finely near 0, where a sloppy reduction shows most
        for k in -20_000..20_000 {
            let x = f64::from(k) * 1e-5;
            worst = worst.max(ulp(exp_f64(x), x.exp()));
        }
        assert!(worst <= 2, "worst error {worst} ulp");
        assert_eq!(exp_f64(0.0), 1.0);
        assert!(exp_f64(-1000.0) < 1e-306 && exp_f64(-1000.0) > 0.0);
        assert!(exp_f64(1000.0).is_finite());
        // the vectorised slice gives the scalar function's bits
        let mut values: Vec<f64> = (0..37).map(|i| f64::from(i) * 3.7 - 60.0).collect();
        let expected: Vec<f64> = values.iter().map(|&v| exp_f64(v)).collect();
        exp_f64_inplace(&mut values);
        assert_eq!(values, expected);
    }

    #[test]
    fn row_products_agree_with_their_plain_loops() {
        let (rows, d) = (11, 45);
        let matrix: Vec<f32> = (0..rows * d).map(|i| ((i * 29) % 17) as f32 * 0.25 - 2.0).collect();
        let vector: Vec<f32> = (0..d).map(|i| i as f32 * 0.5 - 3.0).collect();
        let mut dots = vec![0.0f32; rows];
        row_dots(&matrix, &vector, &mut dots);
        for (i, &got) in dots.iter().enumerate() {
            assert_eq!(got, dot(&matrix[i * d..(i + 1) * d], &vector), "row {i}");
        }
        let weights: Vec<f64> = (0..rows).map(|i| i as f64 * 0.3 - 1.0).collect();
        let mut total = vec![1.0f64; d];
        add_weighted_rows(&weights, &matrix, &mut total);
        for (j, &got) in total.iter().enumerate() {
            let mut expected = 1.0f64;
            for i in 0..rows {
                expected += weights[i] * f64::from(matrix[i * d + j]);
            }
            assert_eq!(got, expected, "column {j}");
        }
    }

    #[test]
    fn tanh_is_accurate_and_saturates() {
        let mut x = -12.0f32;
        while x < 12.0 {
            let exact = (x as f64).tanh();
            assert!((tanh_f32(x) as f64 - exact).abs() < 4.5e-7, "tanh({x}): {}", tanh_f32(x) as f64 - exact);
            x += 0.000_7;
        }
        assert_eq!(tanh_f32(30.0), 1.0);
        assert_eq!(tanh_f32(-30.0), -1.0);
    }

    #[test]
    fn reductions_agree_with_plain_loops() {
        let v: Vec<f64> = (0..37).map(|i| ((i * 13) % 11) as f64 - 4.5).collect();
        assert_eq!(sum(&v), v.iter().sum::<f64>());
        assert_eq!(max(&v), 5.5);
        assert_eq!(dot(&v, &v), v.iter().map(|x| x * x).sum::<f64>());
        let mut e = vec![0.0f64, 1.0, 2.0];
        let total = exp_shifted_inplace(&mut e, 2.0);
        assert!((total - (1.0 + (-1f64).exp() + (-2f64).exp())).abs() < 1e-15);
    }
}
