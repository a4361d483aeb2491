//! The numerical environment: what decides the last bits of every number the engine computes.
//!
//! ailla's own kernels give the same bits on every x86-64 CPU (see [`super::kernels`]: no FMA, one
//! reduction order for all three instruction sets), and every product and reduction has an order fixed
//! by the shapes, not by the thread count. What remains machine-dependent is OpenBLAS: a
//! `DYNAMIC_ARCH` build picks its sgemm kernel for the CPU family it finds (Haswell or Zen on AVX2
//! machines, SkylakeX or Cooperlake on AVX-512 ones), and those kernels sum the inner dimension in
//! different orders. Two runs are bit-identical when everything recorded here is equal.

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
    /// The instruction set ailla's element-wise kernels run on: `avx512`, `avx2` or `baseline`.
    pub simd_path: String,
    /// `OpenBLAS`.
    pub blas: String,
    /// The version from OpenBLAS's build configuration (e.g. `0.3.29`).
    pub blas_version: String,
    /// OpenBLAS's build configuration, as `openblas_get_config` says it.
    pub blas_config: String,
    /// The kernel family OpenBLAS chose for this CPU (`openblas_get_corename`), which decides how
    /// products round.
    pub blas_core: String,
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

/// The widest instruction set [`super::kernels`] dispatch to on this CPU.
pub fn simd_path() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            return "avx512";
        }
        if std::is_x86_feature_detected!("avx2") {
            return "avx2";
        }
    }
    "baseline"
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
        blas_core: core,
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
    }
}
