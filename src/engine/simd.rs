//! Which instruction set ailla's own kernels run on: the CPU's widest, or lower under
//! [`SIMD_VARIABLE`]. [`super::kernels`] dispatches on it, [`super::direct_gemm`] offers its AVX-512
//! kernel only under it, and [`super::environment`] holds OpenBLAS's kernel family to it.

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
