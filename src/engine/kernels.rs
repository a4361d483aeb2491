//! Small element-wise kernels written so that the compiler vectorises them.
//!
//! The C library's `expf` and `tanhf` are scalar calls; in the softmaxes and the GELU they took over a
//! quarter of a training step. These versions are branch-free (clamps and bit arithmetic instead of
//! special cases) so that a loop over a slice becomes SIMD code. Reductions use eight independent
//! accumulators in a fixed order: vectorisable, and still the same result on every run.
//!
//! Each slice kernel is compiled three times on x86-64: for the baseline (SSE2, 4 lanes), AVX2 (8) and
//! AVX-512 (16), chosen at run time by [`dispatch!`]. None uses FMA and every reduction has the same
//! eight-lane order, so all three give the same bits.

use super::Scalar;

/// The instruction sets ailla's own kernels are compiled for, narrowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Simd {
    /// x86-64's SSE2 (or any other architecture's baseline).
    Baseline,
    Avx2,
    Avx512,
}

impl Simd {
    /// The name `ailla env`, reports and [`SIMD_VARIABLE`] use.
    pub fn name(self) -> &'static str {
        match self {
            Simd::Baseline => "baseline",
            Simd::Avx2 => "avx2",
            Simd::Avx512 => "avx512",
        }
    }

    fn from_name(name: &str) -> Option<Simd> {
        [Simd::Baseline, Simd::Avx2, Simd::Avx512].into_iter().find(|simd| simd.name() == name)
    }
}

/// Caps the instruction set of ailla's own kernels: `avx512` (no cap), `avx2` or `baseline`.
///
/// `AILLA_SIMD=avx2` on an AVX-512 machine computes as an AVX2-only machine does: the element-wise
/// kernels run their AVX2 versions, products never take the direct AVX-512 kernel, and OpenBLAS runs
/// its Haswell sgemm instead of its AVX-512 one (see [`super::environment::select_blas_kernel`]). It
/// gives an AVX2 machine's bits here, and measures an AVX2 machine's code paths on this one's caches
/// and clock. A cap above what the CPU has changes nothing.
pub const SIMD_VARIABLE: &str = "AILLA_SIMD";

/// [`SIMD_VARIABLE`]'s cap, `None` when unset; an error names a value that is not an instruction set.
pub fn simd_cap() -> Result<Option<Simd>, String> {
    match std::env::var_os(SIMD_VARIABLE) {
        None => Ok(None),
        Some(value) => value
            .to_str()
            .and_then(Simd::from_name)
            .map(Some)
            .ok_or_else(|| format!("is {value:?}; it must be `avx512`, `avx2` or `baseline`")),
    }
}

/// The widest instruction set this CPU runs of those ailla's kernels are compiled for.
pub fn detected_simd() -> Simd {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            return Simd::Avx512;
        }
        if std::is_x86_feature_detected!("avx2") {
            return Simd::Avx2;
        }
    }
    Simd::Baseline
}

/// The instruction set ailla's kernels run on in this process: the CPU's widest, lowered to
/// [`SIMD_VARIABLE`]'s cap (read once; the command line rejects an unreadable value before any kernel
/// runs, and one met here means no cap).
pub fn simd() -> Simd {
    static CHOSEN: std::sync::OnceLock<Simd> = std::sync::OnceLock::new();
    *CHOSEN.get_or_init(|| {
        let detected = detected_simd();
        simd_cap().ok().flatten().map_or(detected, |cap| cap.min(detected))
    })
}

/// Defines `pub fn $name`, generic over one type parameter or not, that runs `$body` compiled for
/// AVX-512 or AVX2 when [`simd`] allows it, else for the baseline. `$body` must be `#[inline(always)]`
/// so that it is compiled inside each variant.
macro_rules! dispatch {
    ($(#[$doc:meta])* pub fn $name:ident $(<$g:ident: $bound:ident>)? ($($arg:ident: $ty:ty),*) -> $ret:ty
        = $body:ident;) => {
        $(#[$doc])*
        #[allow(clippy::too_many_arguments)]
        pub fn $name $(<$g: $bound>)? ($($arg: $ty),*) -> $ret {
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

/// `eˣ` in `f32`, to within 2 ulp of the correctly rounded value over `[-87, 88]`.
///
/// Cody–Waite reduction `x = n·ln2 + r`, `|r| ≤ ln2/2`, then the degree-6 minimax polynomial for `eʳ`
/// of the Cephes library's `expf`, then scaling by `2ⁿ` through the exponent bits. Inputs are clamped
/// to the range where `2ⁿ` is a normal number, so very negative inputs give about `1e-38`, not 0: below
/// any probability the engine distinguishes.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.0, 88.0);
    // Round to nearest by adding 1.5·2²³: the sum's low mantissa bits then hold n as an integer, so
    // both n as a float and 2ⁿ come from bit arithmetic. (A `floor` call, or a saturating `as i32`,
    // would each turn the loop back into scalar code.)
    const ROUNDER: f32 = 12_582_912.0;
    let shifted = x * LOG2E + ROUNDER;
    let n = shifted - ROUNDER;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_2e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5; // Cephes gives 5.0000001201e-1, which rounds to 0.5 in f32
    let y = p * r * r + r + 1.0;
    let n_bits = shifted.to_bits().wrapping_sub(ROUNDER.to_bits());
    let scale = f32::from_bits(n_bits.wrapping_add(127) << 23);
    y * scale
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
    const CLAMP: f32 = 7.905_311;
    // the ratio at the clamp is 1 − 2⁻²⁴; beyond it the answer is ±1 exactly (a select, not a branch)
    let saturated = x.abs() >= CLAMP;
    let limit = 1.0f32.copysign(x);
    let x = x.clamp(-CLAMP, CLAMP);
    let x2 = x * x;
    let mut p = -2.760_768_5e-16_f32;
    p = p * x2 + 2.000_188e-13;
    p = p * x2 + -8.604_672e-11;
    p = p * x2 + 5.122_297e-8;
    p = p * x2 + 1.485_722_4e-5;
    p = p * x2 + 6.372_619e-4;
    p = p * x2 + 4.893_524_6e-3;
    let mut q = 1.198_258_4e-6_f32;
    q = q * x2 + 1.185_347e-4;
    q = q * x2 + 2.268_434_6e-3;
    q = q * x2 + 4.893_525e-3;
    let ratio = x * p / q;
    if saturated {
        limit
    } else {
        ratio
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

dispatch! {
    /// The largest element and the index of its first occurrence, in one pass: a row's argmax without
    /// a second scan of the row. `(−∞, 0)` when no element exceeds −∞ (an empty or all-NaN slice).
    pub fn max_with_index<F: Scalar>(values: &[F]) -> (F, usize) = max_with_index_body;
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
    for v in values.iter_mut() {
        *v = (*v - shift).exp_kernel();
    }
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

/// `tanh u` with `u = c(x + a x³)`, `c = √(2/π)`, `a = 0.044715`: the one place the GELU's inner
/// argument is written.
#[inline(always)]
fn gelu_tanh<F: Scalar>(x: F) -> F {
    let (c, a) = (F::lit(0.797_884_560_802_865_4), F::lit(0.044_715));
    (c * (x + a * x * x * x)).tanh_kernel()
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
    out.iter_mut().zip(x).for_each(|(o, &x)| *o = gelu_scalar(x));
}

dispatch! {
    /// `dx_i = dy_i · GELU'(x_i)`.
    pub fn gelu_backward_slice<F: Scalar>(dy: &[F], x: &[F], dx: &mut [F]) -> () = gelu_backward_body;
}

#[inline(always)]
fn gelu_backward_body<F: Scalar>(dy: &[F], x: &[F], dx: &mut [F]) {
    dx.iter_mut().zip(dy.iter().zip(x)).for_each(|(d, (&g, &x))| *d = g * gelu_derivative_scalar(x));
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
    for ((o, t), &x) in out.iter_mut().zip(tanh_out.iter_mut()).zip(x) {
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
        for len in [0usize, 1, 15, 16, 17, 40, 257] {
            // repeated maxima in several lanes and chunks, the first of them in every position
            for shift in 0..len.min(40) {
                let values: Vec<f32> = (0..len).map(|i| ((i + len - shift) % 7) as f32).collect();
                assert_eq!(max_with_index(&values), plain(&values), "len {len}, shift {shift}");
            }
            // the maximum in the tail after full chunks, and at the very end
            let mut late = vec![0.0f32; len];
            if let Some(last) = late.last_mut() {
                *last = 5.0;
                assert_eq!(max_with_index(&late), (5.0, len - 1));
            }
        }
        let mut with_nan = vec![1.0f32; 20];
        with_nan[3] = f32::NAN;
        with_nan[17] = 2.0;
        assert_eq!(max_with_index(&with_nan), (2.0, 17));
        assert_eq!(max_with_index(&[f32::NAN; 20]), (f32::NEG_INFINITY, 0));
        assert_eq!(max_with_index::<f64>(&[]), (f64::NEG_INFINITY, 0));
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
