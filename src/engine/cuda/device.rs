//! One GPU ready for the training step: a context, its stream, a cuBLAS handle, and the kernels of
//! [`super::kernels`] compiled for the device's architecture. The step itself builds on these calls.

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::cublas::{sys as cublas_sys, CudaBlas, Gemm, GemmConfig, StridedBatchedConfig};
use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream};

use super::gemm::{column_major, column_major_batched, Op, RowMajorProduct};
use super::kernels::{compile, KERNELS};

pub struct Gpu {
    pub context: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    blas: CudaBlas,
    kernels: HashMap<&'static str, CudaFunction>,
}

/// NVRTC's name for a compute capability; the architectures CUDA 13 compiles for.
fn arch_name(major: i32, minor: i32) -> Option<&'static str> {
    Some(match (major, minor) {
        (7, 5) => "sm_75",
        (8, 0) => "sm_80",
        (8, 6) => "sm_86",
        (8, 7) => "sm_87",
        (8, 9) => "sm_89",
        (9, 0) => "sm_90",
        (10, 0) => "sm_100",
        (12, 0) => "sm_120",
        _ => return None,
    })
}

fn int(value: usize) -> Result<i32, String> {
    i32::try_from(value).map_err(|_| format!("a product dimension of {value} exceeds cuBLAS's 32-bit sizes"))
}

fn operation(op: Op) -> cublas_sys::cublasOperation_t {
    match op {
        Op::N => cublas_sys::cublasOperation_t::CUBLAS_OP_N,
        Op::T => cublas_sys::cublasOperation_t::CUBLAS_OP_T,
    }
}

impl Gpu {
    /// Opens device `ordinal`. Refuses, rather than letting cudarc panic, when the probe finds a library
    /// or the device missing.
    pub fn new(ordinal: usize) -> Result<Self, String> {
        let probe = super::probe();
        if !probe.usable() {
            return Err(format!("no usable CUDA GPU: {}", probe.missing().join("; ")));
        }
        if ordinal >= probe.devices {
            return Err(format!("device {ordinal} asked for, the driver reports {}", probe.devices));
        }
        let context = CudaContext::new(ordinal).map_err(|e| format!("creating a CUDA context: {e:?}"))?;
        let (major, minor) = context.compute_capability().map_err(|e| format!("compute capability: {e:?}"))?;
        let arch = arch_name(major, minor)
            .ok_or_else(|| format!("compute capability {major}.{minor} is not one ailla compiles for"))?;
        let module = context.load_module(compile(arch)?).map_err(|e| format!("loading the kernels: {e:?}"))?;
        let mut kernels = HashMap::new();
        for &name in KERNELS {
            let function = module.load_function(name).map_err(|e| format!("kernel {name}: {e:?}"))?;
            kernels.insert(name, function);
        }
        let stream = context.default_stream();
        let blas = CudaBlas::new(stream.clone()).map_err(|e| format!("creating a cuBLAS handle: {e:?}"))?;
        // FP32 products in FP32: no TF32 tensor-core rounding, so products agree with the CPU's sgemm
        // to f32 accuracy (CUBLAS_COMPUTE_32F as the pedantic math mode guarantees)
        // SAFETY: a valid handle made just above and a mode of the enum.
        let status =
            unsafe { cublas_sys::cublasSetMathMode(*blas.handle(), cublas_sys::cublasMath_t::CUBLAS_PEDANTIC_MATH) };
        if status != cublas_sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
            return Err(format!("setting cuBLAS's math mode: {status:?}"));
        }
        Ok(Gpu { context, stream, blas, kernels })
    }

    /// A kernel of [`KERNELS`] by name.
    pub fn kernel(&self, name: &str) -> Result<&CudaFunction, String> {
        self.kernels.get(name).ok_or_else(|| format!("no kernel named {name}"))
    }

    /// `c = alpha·op(a)·op(b) + beta·c` on row-major device buffers (see [`super::gemm`]).
    pub fn gemm(
        &self,
        product: RowMajorProduct,
        alpha: f32,
        a: &CudaSlice<f32>,
        b: &CudaSlice<f32>,
        beta: f32,
        c: &mut CudaSlice<f32>,
    ) -> Result<(), String> {
        let RowMajorProduct { m, n, k, .. } = product;
        if a.len() < m * k || b.len() < k * n || c.len() < m * n {
            return Err(format!("buffers too small for a [{m}, {k}]·[{k}, {n}] product"));
        }
        let cfg = self.config(product, alpha, beta)?;
        // SAFETY: the lengths checked above cover every element cuBLAS reads or writes for these shapes.
        unsafe { self.blas.gemm(cfg, b, a, c) }.map_err(|e| format!("cuBLAS sgemm: {e:?}"))
    }

    /// `batch` products whose operands lie `stride_*` elements apart (attention's per-head products).
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_strided_batched(
        &self,
        product: RowMajorProduct,
        batch: usize,
        alpha: f32,
        (a, stride_a): (&CudaSlice<f32>, usize),
        (b, stride_b): (&CudaSlice<f32>, usize),
        beta: f32,
        (c, stride_c): (&mut CudaSlice<f32>, usize),
    ) -> Result<(), String> {
        let RowMajorProduct { m, n, k, .. } = product;
        let last = batch.saturating_sub(1);
        if batch == 0
            || a.len() < last * stride_a + m * k
            || b.len() < last * stride_b + k * n
            || c.len() < last * stride_c + m * n
        {
            return Err(format!("buffers too small for {batch} [{m}, {k}]·[{k}, {n}] products"));
        }
        let (_, strides) = column_major_batched(product, stride_a, stride_b, stride_c);
        let long = |v: usize| i64::try_from(v).map_err(|_| format!("a stride of {v} exceeds 64 bits"));
        let cfg = StridedBatchedConfig {
            gemm: self.config(product, alpha, beta)?,
            batch_size: int(batch)?,
            stride_a: long(strides.stride_a)?,
            stride_b: long(strides.stride_b)?,
            stride_c: long(strides.stride_c)?,
        };
        // SAFETY: the lengths checked above cover the last matrix of the batch at its stride.
        unsafe { self.blas.gemm_strided_batched(cfg, b, a, c) }.map_err(|e| format!("cuBLAS sgemm batched: {e:?}"))
    }

    fn config(&self, product: RowMajorProduct, alpha: f32, beta: f32) -> Result<GemmConfig<f32>, String> {
        let g = column_major(product);
        Ok(GemmConfig {
            transa: operation(g.transa),
            transb: operation(g.transb),
            m: int(g.m)?,
            n: int(g.n)?,
            k: int(g.k)?,
            alpha,
            lda: int(g.lda)?,
            ldb: int(g.ldb)?,
            beta,
            ldc: int(g.ldc)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// The cuBLAS product against the CPU engine's on random matrices, every transpose combination;
    /// skipped (with the reason) where no GPU is usable.
    #[test]
    fn gpu_products_match_the_cpu_engine() {
        let probe = super::super::probe();
        if !probe.usable() {
            assert!(!super::super::gpu_required(), "AILLA_REQUIRE_GPU=1 but the probe found: {}", probe.summary());
            eprintln!("GPU product test skipped: {}", probe.summary());
            return;
        }
        let gpu = Gpu::new(0).unwrap_or_else(|e| panic!("{e}"));
        let mut rng = Rng::new(26);
        let (m, n, k) = (37, 19, 53);
        for (transpose_a, transpose_b) in [(false, false), (true, false), (false, true), (true, true)] {
            let a: Vec<f32> = (0..m * k).map(|_| rng.normal() as f32).collect();
            let b: Vec<f32> = (0..k * n).map(|_| rng.normal() as f32).collect();
            let shape_a = if transpose_a { (k, m) } else { (m, k) };
            let shape_b = if transpose_b { (n, k) } else { (k, n) };
            let host_a = ndarray::Array2::from_shape_vec(shape_a, a.clone()).unwrap();
            let host_b = ndarray::Array2::from_shape_vec(shape_b, b.clone()).unwrap();
            let view_a = if transpose_a { host_a.t() } else { host_a.view() };
            let view_b = if transpose_b { host_b.t() } else { host_b.view() };
            let expected = crate::engine::linalg::matmul(view_a, view_b);
            let device_a = gpu.stream.clone_htod(&a).unwrap();
            let device_b = gpu.stream.clone_htod(&b).unwrap();
            let mut device_c = gpu.stream.alloc_zeros::<f32>(m * n).unwrap();
            let product = RowMajorProduct { m, n, k, transpose_a, transpose_b };
            gpu.gemm(product, 1.0, &device_a, &device_b, 0.0, &mut device_c).unwrap();
            let got = gpu.stream.clone_dtoh(&device_c).unwrap();
            for (got, want) in got.iter().zip(expected.iter()) {
                assert!(
                    (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                    "{transpose_a} {transpose_b}: {got} vs {want}"
                );
            }
        }
    }
}
