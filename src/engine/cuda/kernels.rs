//! The CUDA C source of the training step's small kernels, compiled at run time by NVRTC.
//!
//! Run-time compilation keeps the build free of `nvcc`: a machine without CUDA builds the same binary,
//! and a machine with it compiles the source for its own GPU when a context is made.

/// Every kernel of the step: embeddings, residual, LayerNorm, GELU, attention softmax with the locality
/// bias and penalty, fused output loss with copy gates, reductions and AdamW.
pub const SOURCE: &str = include_str!("kernels/train.cu");

/// The `extern "C"` entry points [`SOURCE`] defines; the device step loads each by name.
pub const KERNELS: &[&str] = &[
    "embedding_forward",
    "embedding_backward_positions",
    "embedding_backward_tokens",
    "residual_add",
    "broadcast_rows",
    "layernorm_forward",
    "layernorm_backward",
    "column_sum",
    "column_sum_product",
    "gelu_forward",
    "gelu_backward",
    "attention_softmax_forward",
    "attention_penalty",
    "attention_softmax_backward",
    "copy_gates",
    "crossentropy_copy",
    "copy_gates_backward",
    "squared_norm_partial",
    "adamw",
];

/// Compiles [`SOURCE`] to PTX for `arch` (e.g. `sm_90`). FMA contraction is off so that each kernel
/// rounds as its CPU counterpart writes it, one operation at a time; precise division and square root
/// are NVRTC's defaults and stay on. Callers check [`super::probe`]'s `nvrtc` first: cudarc panics
/// when the library is absent.
#[cfg(feature = "cuda")]
pub fn compile(arch: &'static str) -> Result<cudarc::nvrtc::Ptx, String> {
    let options = cudarc::nvrtc::CompileOptions {
        fmad: Some(false),
        arch: Some(arch),
        name: Some("train.cu".into()),
        ..Default::default()
    };
    cudarc::nvrtc::compile_ptx_with_opts(SOURCE, options).map_err(|error| match error {
        cudarc::nvrtc::CompileError::CompileError { log, .. } => {
            format!("NVRTC could not compile the kernels:\n{}", log.to_string_lossy())
        }
        other => format!("NVRTC failed: {other:?}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_kernel_is_defined_once_in_the_source() {
        for name in KERNELS {
            let definition = format!("__global__ void {name}(");
            assert_eq!(SOURCE.matches(&definition).count(), 1, "{name}");
        }
        assert_eq!(SOURCE.matches("__global__").count(), KERNELS.len(), "a kernel is missing from KERNELS");
    }

    /// Compiles every kernel where NVRTC can be loaded (a CUDA toolkit, or the `nvidia-cuda-nvrtc`
    /// wheel's `libnvrtc.so.13` on `LD_LIBRARY_PATH`); skips with the reason elsewhere.
    #[cfg(feature = "cuda")]
    #[test]
    fn every_kernel_compiles_with_nvrtc() {
        let probe = super::super::probe();
        if !probe.nvrtc {
            assert!(!super::super::gpu_required(), "AILLA_REQUIRE_GPU=1 but libnvrtc was not found");
            eprintln!("NVRTC compile check skipped: libnvrtc not found on the library path");
            return;
        }
        // Hopper (the H200 the GPU check targets) and Ampere
        for arch in ["sm_90", "sm_80"] {
            let ptx = compile(arch).unwrap_or_else(|error| panic!("{arch}: {error}"));
            let text = ptx.to_src();
            for name in KERNELS {
                assert!(text.contains(&format!(".entry {name}(")), "{arch}: no entry point {name} in the PTX");
            }
        }
    }
}
