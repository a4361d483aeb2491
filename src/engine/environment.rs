//! The numerical environment: what decides the last bits of every number the engine computes.
//!
//! ailla's own kernels give the same bits on every x86-64 CPU (see [`super::kernels`]: no FMA, one
//! reduction order for all three instruction sets), and every product and reduction has an order fixed
//! by the shapes, not by the thread count. What remains machine-dependent is OpenBLAS: a
//! `DYNAMIC_ARCH` build picks its sgemm kernel for the CPU family it finds (Haswell or Zen on AVX2
//! machines, SkylakeX or Cooperlake on AVX-512 ones), and those kernels sum the inner dimension in
//! different orders. Two runs are bit-identical when everything recorded here is equal.

use super::simd::Simd;
use serde::{Deserialize, Serialize};

extern "C" {
    fn openblas_get_config() -> *const std::os::raw::c_char;
    fn openblas_get_corename() -> *const std::os::raw::c_char;
    fn openblas_get_num_threads() -> std::os::raw::c_int;
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
pub struct NumericalEnvironment {
    /// The CPU's model name (`/proc/cpuinfo` on Linux).
    pub cpu: String,
    /// The instruction set ailla's element-wise kernels run on: `avx512`, `avx2` or `baseline` (the
    /// CPU's widest, or lower under `AILLA_SIMD`).
    pub simd_path: String,
    /// `OpenBLAS`.
    pub blas: String,
    /// The version from OpenBLAS's build configuration (e.g. `0.3.29`).
    pub blas_version: String,
    /// OpenBLAS's build configuration, as `openblas_get_config` says it.
    pub blas_config: String,
    /// The kernel family products run on (`openblas_get_corename`), which decides how they round.
    pub blas_core: String,
    /// The family OpenBLAS picked for this CPU on its own. It differs from `blas_core` where OpenBLAS
    /// did not recognise a CPU newer than itself and fell back to a generic SSE kernel, and ailla
    /// replaced that by the family the CPU's instruction set supports.
    #[serde(default)]
    pub blas_core_detected: String,
    /// Who computes the products ailla's own kernel can take: that kernel's name (`avx512 8x32`);
    /// `avx2 6x16 (logit tiles)` where only the output layer's tile products run ailla's kernel (AVX2
    /// with FMA, no AVX-512 or `AILLA_SIMD=avx2`); or `blas` where OpenBLAS computes them all (no
    /// AVX2, or `AILLA_PRODUCTS=blas`). It decides bits as `blas_core` does; empty in reports written
    /// before it was recorded.
    #[serde(default)]
    pub products: String,
    /// OpenBLAS's own threads (ailla keeps it at one and splits products itself).
    pub blas_threads: usize,
    /// ailla's worker threads.
    pub worker_threads: usize,
    /// Cores the process may use.
    pub cores: usize,
}

fn c_string(pointer: *const std::os::raw::c_char) -> String {
    if pointer.is_null() {
        return "unknown".into();
    }
    // SAFETY: OpenBLAS returns a pointer to a static NUL-terminated string, valid for the process.
    unsafe { std::ffi::CStr::from_ptr(pointer) }.to_string_lossy().trim().to_string()
}

/// The CPU's model name, or the architecture where the system does not say.
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, name)| name.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// The instruction set [`super::kernels`] dispatch to in this process (see [`super::simd::simd`]).
pub fn simd_path() -> &'static str {
    super::simd::simd().name()
}

/// `", capped by AILLA_SIMD=avx2 on a CPU with avx512"` where the cap lowers the instruction set, else
/// nothing: the words `ailla env` and `ailla bench` add after the kernels' instruction set.
pub fn simd_cap_note() -> String {
    let (simd, detected) = (super::simd::simd(), super::simd::detected_simd());
    if simd == detected {
        String::new()
    } else {
        format!(", capped by {}={} on a CPU with {}", super::simd::SIMD_VARIABLE, simd.name(), detected.name())
    }
}

/// Set on replacing OpenBLAS's own kernel choice, so that child processes (which inherit
/// `OPENBLAS_CORETYPE` and so load the chosen kernel directly) still know what OpenBLAS had picked.
const DETECTED_CORE_VARIABLE: &str = "AILLA_OPENBLAS_DETECTED_CORE";

static DETECTED_CORE: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The family OpenBLAS picked on its own, where ailla replaced it in this process or a parent.
fn detected_core() -> Option<String> {
    DETECTED_CORE.get().cloned().or_else(|| std::env::var(DETECTED_CORE_VARIABLE).ok())
}

/// How well an OpenBLAS kernel family uses the CPU: 3 for the AVX-512 families, 2 for the AVX2 ones,
/// 0 for everything older (OpenBLAS's fallback for a CPU it does not recognise is `Prescott`, SSE3).
fn kernel_rank(core: &str) -> u8 {
    let core = core.to_ascii_lowercase();
    match core.as_str() {
        "skylakex" | "cooperlake" | "sapphirerapids" => 3,
        "haswell" | "zen" | "excavator" => 2,
        _ => 0,
    }
}

/// The best kernel family of OpenBLAS's `DYNAMIC_ARCH` list this CPU can run within `cap`, and its
/// rank. Under a cap below the CPU's own instruction set it is the cap's family, so that the products
/// round as on a CPU that has no more than the cap; `Prescott` (SSE3) stands for the baseline.
fn supported_kernel(cap: Option<Simd>) -> Option<(&'static str, u8)> {
    let allows = |simd: Simd| cap.is_none_or(|cap| simd <= cap);
    #[cfg(target_arch = "x86_64")]
    {
        let avx512 = std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512cd")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512dq")
            && std::is_x86_feature_detected!("avx512vl");
        if avx512 && allows(Simd::Avx512) {
            // Cooperlake and SapphireRapids run SkylakeX's sgemm and add bf16 products ailla never calls
            return Some(("SkylakeX", 3));
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") && allows(Simd::Avx2) {
            return Some(("Haswell", 2));
        }
        if cap.is_some_and(|cap| cap < super::simd::detected_simd()) {
            return Some(("Prescott", 0));
        }
    }
    None
}

fn current_core() -> String {
    // SAFETY: a plain getter of the OpenBLAS C API with no preconditions.
    c_string(unsafe { openblas_get_corename() })
}

/// Looks up an OpenBLAS function that only `DYNAMIC_ARCH` builds export.
fn dynamic_arch_function(name: &std::ffi::CStr) -> Option<unsafe extern "C" fn()> {
    // SAFETY: dlsym with RTLD_DEFAULT searches the loaded objects for a symbol; it has no other effect.
    let symbol = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
    // SAFETY: both looked-up functions are `void f(void)` in OpenBLAS's driver/others/dynamic.c.
    (!symbol.is_null()).then(|| unsafe { std::mem::transmute::<*mut libc::c_void, unsafe extern "C" fn()>(symbol) })
}

/// Replaces OpenBLAS's kernel when it fell back to a generic one on a CPU it did not recognise, or
/// when [`super::simd::SIMD_VARIABLE`] caps the instruction set below the kernel OpenBLAS picked.
///
/// A `DYNAMIC_ARCH` OpenBLAS picks its kernels by CPU model number, so a release older than the CPU
/// takes it for an SSE3 machine: Debian 12's OpenBLAS 0.3.21 runs `Prescott` kernels on Emerald
/// Rapids Xeons, at a third of the sgemm rate of the `SkylakeX` ones the CPU runs. Where the CPU's
/// instruction set supports a better family of OpenBLAS's own list, this selects it, as
/// `OPENBLAS_CORETYPE` would have at load, and exports that variable so that child processes load it
/// directly. Under a cap it selects the cap's family the same way. A user's own `OPENBLAS_CORETYPE`
/// is never overridden. Returns the family chosen, if any.
///
/// # Safety
///
/// Call it first thing in `main`, before any other thread exists and before any BLAS call: it sets an
/// environment variable and swaps OpenBLAS's kernel table, neither of which may race with anything.
pub unsafe fn select_blas_kernel() -> Option<&'static str> {
    if std::env::var_os("OPENBLAS_CORETYPE").is_some() {
        return None;
    }
    let detected = current_core();
    // an unreadable cap is no cap here; the command line reports it before any work
    let cap = super::simd::simd_cap().ok().flatten();
    let (name, rank) = supported_kernel(cap)?;
    let capped_below = cap.is_some() && kernel_rank(&detected) > rank;
    if kernel_rank(&detected) >= rank && !capped_below {
        return None;
    }
    let (Some(quit), Some(init)) =
        (dynamic_arch_function(c"gotoblas_dynamic_quit"), dynamic_arch_function(c"gotoblas_dynamic_init"))
    else {
        return None;
    };
    std::env::set_var("OPENBLAS_CORETYPE", name);
    std::env::set_var(DETECTED_CORE_VARIABLE, &detected);
    // SAFETY: the caller guarantees no BLAS call runs meanwhile; quit forgets the kernel table and
    // init selects one again, reading OPENBLAS_CORETYPE as it does at load.
    unsafe {
        quit();
        init();
    }
    let _ = DETECTED_CORE.set(detected);
    (kernel_rank(&current_core()) == rank).then_some(name)
}

/// `" (OpenBLAS took this CPU for Prescott)"` where ailla replaced OpenBLAS's own kernel choice, else
/// nothing: the words a report and `ailla env` add after the kernel's name.
pub fn replaced_kernel_note(environment: &NumericalEnvironment) -> String {
    let detected = &environment.blas_core_detected;
    if detected.is_empty() || *detected == environment.blas_core {
        String::new()
    } else {
        format!(" (OpenBLAS took this CPU for {detected})")
    }
}

/// What this process computes with, now.
pub fn current() -> NumericalEnvironment {
    super::linalg::init_blas();
    // SAFETY: plain getters of the OpenBLAS C API with no preconditions.
    let (config, core, blas_threads) =
        unsafe { (c_string(openblas_get_config()), c_string(openblas_get_corename()), openblas_get_num_threads()) };
    let blas_version = config
        .split_whitespace()
        .find(|word| word.chars().next().is_some_and(|c| c.is_ascii_digit()) && word.contains('.'))
        .unwrap_or("unknown")
        .to_string();
    NumericalEnvironment {
        cpu: cpu_model(),
        simd_path: simd_path().into(),
        blas: "OpenBLAS".into(),
        blas_version,
        blas_config: config,
        blas_core_detected: detected_core().unwrap_or_else(|| core.clone()),
        blas_core: core,
        products: match (super::direct_gemm::kernel(), super::direct_gemm::avx2_tile_kernel()) {
            (Some(kernel), _) => kernel.name.to_string(),
            (None, Some(kernel)) => format!("{} (logit tiles)", kernel.name),
            (None, None) => "blas".to_string(),
        },
        blas_threads: usize::try_from(blas_threads).unwrap_or(0),
        worker_threads: rayon::current_num_threads(),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_names_openblas_and_its_kernel() {
        let environment = current();
        assert_eq!(environment.blas, "OpenBLAS");
        assert!(environment.blas_config.contains("OpenBLAS"), "{environment:?}");
        assert!(!environment.blas_core.is_empty() && environment.blas_core != "unknown", "{environment:?}");
        assert_eq!(environment.blas_threads, 1, "ailla pins OpenBLAS to one thread");
        assert!(["avx512", "avx2", "baseline"].contains(&environment.simd_path.as_str()));
        assert!(environment.blas_version.contains('.'), "{environment:?}");
        assert!(!environment.blas_core_detected.is_empty(), "{environment:?}");
    }

    #[test]
    fn only_generic_kernels_rank_below_the_cpus_own() {
        assert_eq!(kernel_rank("Prescott"), 0);
        assert_eq!(kernel_rank("Sandybridge"), 0);
        assert_eq!(kernel_rank("HASWELL"), 2);
        assert_eq!(kernel_rank("Zen"), 2);
        assert_eq!(kernel_rank("SkylakeX"), 3);
        assert_eq!(kernel_rank("Cooperlake"), 3);
        // whatever this CPU supports, OpenBLAS's own choice is only replaced by a better family
        if let Some((name, rank)) = supported_kernel(None) {
            assert_eq!(kernel_rank(name), rank);
        }
    }

    #[test]
    fn a_cap_never_selects_a_family_above_it() {
        let detected = crate::engine::simd::detected_simd();
        let rank_of = |simd: Simd| match simd {
            Simd::Baseline => 0,
            Simd::Avx2 => 2,
            Simd::Avx512 => 3,
        };
        for cap in [Simd::Baseline, Simd::Avx2, Simd::Avx512] {
            match supported_kernel(Some(cap)) {
                Some((name, rank)) => {
                    assert_eq!(kernel_rank(name), rank);
                    assert!(rank <= rank_of(cap), "{name} under a cap of {cap:?}");
                }
                // nothing to select only where the cap is no lower than what the CPU runs
                None => assert!(cap >= detected, "no family under a cap of {cap:?} on a {detected:?} CPU"),
            }
        }
        // a cap below the CPU's own instruction set always names the family to run instead
        if detected > Simd::Baseline {
            assert!(supported_kernel(Some(Simd::Baseline)).is_some());
        }
    }
}
