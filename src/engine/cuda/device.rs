//! One GPU ready for the training step: a context, its stream, a cuBLAS handle, and the kernels of
//! [`super::kernels`] compiled for the device's architecture. The step itself builds on these calls.

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::cublas::{result as cublas_result, sys as cublas_sys, CudaBlas};
use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, LaunchConfig, PushKernelArg};

use super::gemm::{column_major_strided, Op};
use super::kernels::{compile, KERNELS};
use super::ops::{Bytes, Device, DeviceResult, Floats, Gemm, Ids, Launch};

/// One GPU: its context and stream, a cuBLAS handle on that stream, the kernels compiled for its
/// architecture, and the buffers the step allocated. Everything runs in order on the one stream, so
/// regions are passed to kernels as raw device pointers into the buffers, without cudarc's per-slice
/// event tracking (turned off at creation).
pub struct Gpu {
    pub context: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    blas: CudaBlas,
    kernels: HashMap<&'static str, CudaFunction>,
    floats: Vec<CudaSlice<f32>>,
    ids: Vec<CudaSlice<u32>>,
    bytes: Vec<CudaSlice<u8>>,
    name: String,
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
    i32::try_from(value).map_err(|_| format!("a size of {value} exceeds the kernels' 32-bit sizes"))
}

fn long(value: usize) -> Result<i64, String> {
    i64::try_from(value).map_err(|_| format!("a length of {value} exceeds 64 bits"))
}

fn operation(op: Op) -> cublas_sys::cublasOperation_t {
    match op {
        Op::N => cublas_sys::cublasOperation_t::CUBLAS_OP_N,
        Op::T => cublas_sys::cublasOperation_t::CUBLAS_OP_T,
    }
}

/// Threads per block of the kernels that loop over their elements with a grid stride.
const THREADS: u32 = 256;
/// At most this many blocks for a grid-stride loop: enough to fill an H200's 132 SMs many times over.
const MAX_BLOCKS: usize = 8192;
/// `squared_norm_partial`'s grid: one partial sum per block, summed on the host.
const NORM_BLOCKS: usize = 1024;

fn grid_stride(len: usize) -> LaunchConfig {
    let blocks = len.div_ceil(THREADS as usize).clamp(1, MAX_BLOCKS) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 }
}

/// One thread per element of `len` (the column sums and the position embedding's gradient).
fn per_element(len: usize) -> Result<LaunchConfig, String> {
    let blocks = u32::try_from(len.div_ceil(THREADS as usize).max(1)).map_err(|_| format!("{len} threads"))?;
    Ok(LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 })
}

/// One block per row of `width` elements, its threads a multiple of the warp (the block reductions need
/// it) and at most 1024.
fn per_row(rows: usize, width: usize) -> Result<LaunchConfig, String> {
    let threads = (width.div_ceil(32) * 32).clamp(32, 1024) as u32;
    let blocks = u32::try_from(rows.max(1)).map_err(|_| format!("{rows} rows in one launch"))?;
    Ok(LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 })
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
        // SAFETY: every buffer is used on the one stream made below, in order, and freed only when the
        // Gpu is dropped, after the stream's work (dropping a CudaSlice synchronises its stream).
        unsafe { context.disable_event_tracking() };
        let (major, minor) = context.compute_capability().map_err(|e| format!("compute capability: {e:?}"))?;
        let arch = arch_name(major, minor)
            .ok_or_else(|| format!("compute capability {major}.{minor} is not one ailla compiles for"))?;
        let module = context.load_module(compile(arch)?).map_err(|e| format!("loading the kernels: {e:?}"))?;
        let mut kernels = HashMap::new();
        for &name in KERNELS {
            let function = module.load_function(name).map_err(|e| format!("kernel {name}: {e:?}"))?;
            kernels.insert(name, function);
        }
        // a stream of its own, so that sweep members sharing the GPU run side by side
        let stream = context.new_stream().map_err(|e| format!("creating a CUDA stream: {e:?}"))?;
        let blas = CudaBlas::new(stream.clone()).map_err(|e| format!("creating a cuBLAS handle: {e:?}"))?;
        // FP32 products in FP32: no TF32 tensor-core rounding, so products agree with the CPU's sgemm
        // to f32 accuracy (CUBLAS_COMPUTE_32F as the pedantic math mode guarantees)
        // SAFETY: a valid handle made just above and a mode of the enum.
        let status =
            unsafe { cublas_sys::cublasSetMathMode(*blas.handle(), cublas_sys::cublasMath_t::CUBLAS_PEDANTIC_MATH) };
        if status != cublas_sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
            return Err(format!("setting cuBLAS's math mode: {status:?}"));
        }
        let name = context.name().unwrap_or_else(|_| "an NVIDIA GPU".into());
        let name = format!("{name} (device {ordinal}, sm_{major}{minor})");
        Ok(Gpu { context, stream, blas, kernels, floats: Vec::new(), ids: Vec::new(), bytes: Vec::new(), name })
    }

    /// A kernel of [`KERNELS`] by name.
    fn kernel(&self, name: &str) -> Result<&CudaFunction, String> {
        self.kernels.get(name).ok_or_else(|| format!("no kernel named {name}"))
    }

    /// The device address of a region's first element.
    fn address(&self, region: Floats) -> u64 {
        let (base, _) = self.floats[region.buffer].device_ptr(&self.stream);
        base + (region.offset * std::mem::size_of::<f32>()) as u64
    }

    fn byte_address(&self, region: Bytes) -> u64 {
        let (base, _) = self.bytes[region.buffer].device_ptr(&self.stream);
        base + region.offset as u64
    }

    fn id_address(&self, region: Ids) -> u64 {
        let (base, _) = self.ids[region.buffer].device_ptr(&self.stream);
        base + (region.offset * std::mem::size_of::<u32>()) as u64
    }

    /// Launches `name` with `args`, each a value the kernel's parameter has the size of (pointers as
    /// u64, `int` as i32, `long` as i64, `float` as f32).
    fn run(&self, name: &str, config: LaunchConfig, args: &[Arg]) -> DeviceResult<()> {
        let function = self.kernel(name)?;
        let mut builder = self.stream.launch_builder(function);
        for arg in args {
            match arg {
                Arg::Pointer(p) => builder.arg(p),
                Arg::Int(v) => builder.arg(v),
                Arg::Long(v) => builder.arg(v),
                Arg::Float(v) => builder.arg(v),
            };
        }
        // SAFETY: the launch was validated against its regions' lengths (Launch::validate) and the
        // arguments follow the kernel's parameter list in kernels/train.cu, type by type.
        unsafe { builder.launch(config) }.map(|_| ()).map_err(|e| format!("launching {name}: {e:?}"))
    }
}

/// A kernel argument by value.
enum Arg {
    Pointer(u64),
    Int(i32),
    Long(i64),
    Float(f32),
}

impl Device for Gpu {
    fn describe(&self) -> String {
        self.name.clone()
    }

    fn alloc(&mut self, len: usize) -> DeviceResult<Floats> {
        // a zero-length allocation is refused by the driver; one element stands in for it
        let buffer =
            self.stream.alloc_zeros::<f32>(len.max(1)).map_err(|e| format!("allocating {len} floats: {e:?}"))?;
        self.floats.push(buffer);
        Ok(Floats { buffer: self.floats.len() - 1, offset: 0, len })
    }

    fn alloc_ids(&mut self, len: usize) -> DeviceResult<Ids> {
        let buffer = self.stream.alloc_zeros::<u32>(len.max(1)).map_err(|e| format!("allocating {len} ids: {e:?}"))?;
        self.ids.push(buffer);
        Ok(Ids { buffer: self.ids.len() - 1, offset: 0, len })
    }

    fn upload(&mut self, dst: Floats, data: &[f32]) -> DeviceResult<()> {
        if data.len() != dst.len {
            return Err(format!("upload of {} values into a region of {}", data.len(), dst.len));
        }
        let mut view = self.floats[dst.buffer].slice_mut(dst.offset..dst.offset + dst.len);
        self.stream.memcpy_htod(data, &mut view).map_err(|e| format!("copying to the GPU: {e:?}"))
    }

    fn upload_ids(&mut self, dst: Ids, data: &[u32]) -> DeviceResult<()> {
        if data.len() != dst.len {
            return Err(format!("upload of {} ids into a region of {}", data.len(), dst.len));
        }
        let mut view = self.ids[dst.buffer].slice_mut(dst.offset..dst.offset + dst.len);
        self.stream.memcpy_htod(data, &mut view).map_err(|e| format!("copying to the GPU: {e:?}"))
    }

    fn alloc_bytes(&mut self, len: usize) -> DeviceResult<Bytes> {
        let buffer = self.stream.alloc_zeros::<u8>(len.max(1)).map_err(|e| format!("allocating {len} bytes: {e:?}"))?;
        self.bytes.push(buffer);
        Ok(Bytes { buffer: self.bytes.len() - 1, offset: 0, len })
    }

    fn upload_bytes(&mut self, dst: Bytes, data: &[u8]) -> DeviceResult<()> {
        if data.len() != dst.len {
            return Err(format!("upload of {} bytes into a region of {}", data.len(), dst.len));
        }
        let mut view = self.bytes[dst.buffer].slice_mut(dst.offset..dst.offset + dst.len);
        self.stream.memcpy_htod(data, &mut view).map_err(|e| format!("copying to the GPU: {e:?}"))
    }

    fn download(&mut self, src: Floats) -> DeviceResult<Vec<f32>> {
        let view = self.floats[src.buffer].slice(src.offset..src.offset + src.len);
        self.stream.clone_dtoh(&view).map_err(|e| format!("copying from the GPU: {e:?}"))
    }

    fn zero(&mut self, dst: Floats) -> DeviceResult<()> {
        let mut view = self.floats[dst.buffer].slice_mut(dst.offset..dst.offset + dst.len);
        self.stream.memset_zeros(&mut view).map_err(|e| format!("zeroing on the GPU: {e:?}"))
    }

    fn gemm(&mut self, gemm: &Gemm) -> DeviceResult<()> {
        gemm.validate()?;
        let g = column_major_strided(gemm.product, gemm.strides);
        let (m, n, k) = (int(g.m)?, int(g.n)?, int(g.k)?);
        let (lda, ldb, ldc) = (int(g.lda)?, int(g.ldb)?, int(g.ldc)?);
        // cuBLAS's A slot takes the row-major b, its B slot the row-major a
        let (slot_a, slot_b, c) = (self.address(gemm.b), self.address(gemm.a), self.address(gemm.c));
        let (transa, transb) = (operation(g.transa), operation(g.transb));
        let handle = *self.blas.handle();
        let (alpha, beta) = (gemm.alpha, gemm.beta);
        // SAFETY: Gemm::validate checked every element the call reads or writes against its region.
        let status = unsafe {
            if gemm.batch == 1 {
                cublas_result::sgemm(
                    handle,
                    transa,
                    transb,
                    m,
                    n,
                    k,
                    &alpha,
                    slot_a as *const f32,
                    lda,
                    slot_b as *const f32,
                    ldb,
                    &beta,
                    c as *mut f32,
                    ldc,
                )
            } else {
                let [stride_a, stride_b, stride_c] = gemm.batch_strides;
                cublas_result::sgemm_strided_batched(
                    handle,
                    transa,
                    transb,
                    m,
                    n,
                    k,
                    &alpha,
                    slot_a as *const f32,
                    lda,
                    long(stride_b)?,
                    slot_b as *const f32,
                    ldb,
                    long(stride_a)?,
                    &beta,
                    c as *mut f32,
                    ldc,
                    long(stride_c)?,
                    int(gemm.batch)?,
                )
            }
        };
        status.map_err(|e| format!("cuBLAS sgemm ({:?}): {e:?}", gemm.product))
    }

    fn launch(&mut self, launch: &Launch) -> DeviceResult<()> {
        launch.validate()?;
        let p = |r: Floats| Arg::Pointer(self.address(r));
        let name = launch.kernel();
        match *launch {
            Launch::EmbeddingForward { x, tokens, wte, wpe, rows, seq_len, width } => {
                let args = [
                    p(x),
                    Arg::Pointer(self.id_address(tokens)),
                    p(wte),
                    p(wpe),
                    Arg::Int(int(rows)?),
                    Arg::Int(int(seq_len)?),
                    Arg::Int(int(width)?),
                ];
                self.run(name, grid_stride(rows * width), &args)
            }
            Launch::EmbeddingBackwardPositions { dwpe, dx, batch, seq_len, width } => {
                let args = [p(dwpe), p(dx), Arg::Int(int(batch)?), Arg::Int(int(seq_len)?), Arg::Int(int(width)?)];
                self.run(name, per_element(seq_len * width)?, &args)
            }
            Launch::EmbeddingBackwardTokens { dwte, dx, tokens, rows, width } => {
                let args = [
                    p(dwte),
                    p(dx),
                    Arg::Pointer(self.id_address(tokens)),
                    Arg::Int(int(rows)?),
                    Arg::Int(int(width)?),
                ];
                self.run(name, grid_stride(rows * width), &args)
            }
            Launch::ResidualAdd { out, a, b } => {
                self.run(name, grid_stride(out.len), &[p(out), p(a), p(b), Arg::Long(long(out.len)?)])
            }
            Launch::BroadcastRows { out, base, bias, rows, width, row_stride } => {
                let base_pointer = base.map_or(Arg::Pointer(0), p);
                let args = [
                    p(out),
                    base_pointer,
                    p(bias),
                    Arg::Int(i32::from(base.is_some())),
                    Arg::Int(int(rows)?),
                    Arg::Int(int(width)?),
                    Arg::Int(int(row_stride)?),
                ];
                self.run(name, grid_stride(rows * width), &args)
            }
            Launch::LayerNormForward { y, normalized, rstd, x, weight, bias, rows, width, eps } => {
                let args = [
                    p(y),
                    p(normalized),
                    p(rstd),
                    p(x),
                    p(weight),
                    p(bias),
                    Arg::Int(int(rows)?),
                    Arg::Int(int(width)?),
                    Arg::Float(eps),
                ];
                self.run(name, per_row(rows, width)?, &args)
            }
            Launch::LayerNormBackward { dx, dy, normalized, rstd, weight, rows, width } => {
                let args =
                    [p(dx), p(dy), p(normalized), p(rstd), p(weight), Arg::Int(int(rows)?), Arg::Int(int(width)?)];
                self.run(name, per_row(rows, width)?, &args)
            }
            Launch::ColumnSum { out, a, rows, width, row_stride } => {
                let args = [p(out), p(a), Arg::Int(int(rows)?), Arg::Int(int(width)?), Arg::Int(int(row_stride)?)];
                self.run(name, per_element(width)?, &args)
            }
            Launch::ColumnSumProduct { out, a, b, rows, width } => {
                let args = [p(out), p(a), p(b), Arg::Int(int(rows)?), Arg::Int(int(width)?)];
                self.run(name, per_element(width)?, &args)
            }
            Launch::GeluForward { y, x } => self.run(name, grid_stride(y.len), &[p(y), p(x), Arg::Long(long(y.len)?)]),
            Launch::GeluBackward { dx, dy, x } => {
                self.run(name, grid_stride(dx.len), &[p(dx), p(dy), p(x), Arg::Long(long(dx.len)?)])
            }
            Launch::AttentionSoftmaxForward { att, rows, seq_len } => {
                // no locality: the masks and biases are never read when `apply` is 0
                let args = [
                    p(att),
                    Arg::Pointer(0),
                    Arg::Pointer(0),
                    Arg::Pointer(0),
                    Arg::Float(1.0),
                    Arg::Int(0),
                    Arg::Int(int(seq_len)?),
                ];
                self.run(name, per_row(rows, seq_len)?, &args)
            }
            Launch::AttentionSoftmaxBackward { datt, att, rows, seq_len } => {
                let args = [p(datt), p(att), Arg::Pointer(0), Arg::Float(1.0), Arg::Int(0), Arg::Int(int(seq_len)?)];
                self.run(name, per_row(rows, seq_len)?, &args)
            }
            Launch::AttentionSoftmaxLocal { att, covered, targets, bias, inv_tau, rows, seq_len } => {
                let args = [
                    p(att),
                    Arg::Pointer(self.byte_address(covered)),
                    Arg::Pointer(self.byte_address(targets)),
                    p(bias),
                    Arg::Float(inv_tau),
                    Arg::Int(1),
                    Arg::Int(int(seq_len)?),
                ];
                self.run(name, per_row(rows, seq_len)?, &args)
            }
            Launch::AttentionSoftmaxLocalBackward { datt, att, covered, inv_tau, rows, seq_len } => {
                let args = [
                    p(datt),
                    p(att),
                    Arg::Pointer(self.byte_address(covered)),
                    Arg::Float(inv_tau),
                    Arg::Int(1),
                    Arg::Int(int(seq_len)?),
                ];
                self.run(name, per_row(rows, seq_len)?, &args)
            }
            Launch::AttentionPenalty {
                datt,
                penalty,
                att,
                covered,
                targets,
                blocks,
                weight,
                heads,
                seq_len,
                block_count,
                rows,
            } => {
                let args = [
                    datt.map_or(Arg::Pointer(0), p),
                    p(penalty),
                    p(att),
                    Arg::Pointer(self.byte_address(covered)),
                    Arg::Pointer(self.byte_address(targets)),
                    Arg::Pointer(self.id_address(blocks)),
                    Arg::Float(weight),
                    Arg::Int(int(heads)?),
                    Arg::Int(int(seq_len)?),
                    Arg::Int(int(block_count)?),
                ];
                // the group sizes and sums of squares, K floats each, in dynamic shared memory
                let shared = u32::try_from(2 * block_count * std::mem::size_of::<f32>())
                    .map_err(|_| format!("{block_count} blocks"))?;
                let config = LaunchConfig { shared_mem_bytes: shared, ..per_row(rows, seq_len)? };
                self.run(name, config, &args)
            }
            Launch::CopyGates { w, w0, z, active, strength, lambda, rows, rules } => {
                let args = [
                    p(w),
                    p(w0),
                    p(z),
                    Arg::Pointer(self.byte_address(active)),
                    p(strength),
                    Arg::Float(lambda),
                    Arg::Int(int(rows)?),
                    Arg::Int(int(rules)?),
                ];
                self.run(name, per_element(rows)?, &args)
            }
            Launch::CopyGatesBackward { dz, w, kappa_y, p: probability, grad_scale, rows, rules } => {
                let args = [
                    p(dz),
                    p(w),
                    p(kappa_y),
                    p(probability),
                    Arg::Float(grad_scale),
                    Arg::Int(int(rows)?),
                    Arg::Int(int(rules)?),
                ];
                self.run(name, per_element(rows * rules)?, &args)
            }
            Launch::CrossEntropy { logits, loss, probability, targets, w0, copy_mass, grad_scale, rows, vocab } => {
                let args = [
                    p(logits),
                    p(loss),
                    p(probability),
                    Arg::Pointer(self.id_address(targets)),
                    p(w0),
                    p(copy_mass),
                    Arg::Float(grad_scale),
                    Arg::Int(int(vocab)?),
                ];
                self.run(name, per_row(rows, vocab)?, &args)
            }
            Launch::AdamW { p: params, g, m, v, clip, beta1, beta2, decay, step_size, inv_sqrt_bias2, eps } => {
                let args = [
                    p(params),
                    p(g),
                    p(m),
                    p(v),
                    Arg::Long(long(params.len)?),
                    Arg::Float(clip),
                    Arg::Float(beta1),
                    Arg::Float(beta2),
                    Arg::Float(decay),
                    Arg::Float(step_size),
                    Arg::Float(inv_sqrt_bias2),
                    Arg::Float(eps),
                ];
                self.run(name, grid_stride(params.len), &args)
            }
        }
    }

    fn squared_norm(&mut self, g: Floats) -> DeviceResult<f64> {
        let blocks = g.len.div_ceil(THREADS as usize).clamp(1, NORM_BLOCKS);
        let partial = self.alloc(blocks)?;
        let config = LaunchConfig { grid_dim: (blocks as u32, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
        self.run(
            "squared_norm_partial",
            config,
            &[Arg::Pointer(self.address(partial)), Arg::Pointer(self.address(g)), Arg::Long(long(g.len)?)],
        )?;
        let sums = self.download(partial)?;
        // the scratch buffer is the last one allocated: freeing it keeps the arena from growing per step
        self.floats.pop();
        Ok(sums.iter().map(|&s| s as f64).sum())
    }

    fn synchronize(&mut self) -> DeviceResult<()> {
        self.stream.synchronize().map_err(|e| format!("waiting for the GPU: {e:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::cuda::gemm::RowMajorProduct;
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
        let mut gpu = Gpu::new(0).unwrap_or_else(|e| panic!("{e}"));
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
            let (device_a, device_b, device_c) =
                (gpu.alloc(m * k).unwrap(), gpu.alloc(k * n).unwrap(), gpu.alloc(m * n).unwrap());
            gpu.upload(device_a, &a).unwrap();
            gpu.upload(device_b, &b).unwrap();
            let product = RowMajorProduct { m, n, k, transpose_a, transpose_b };
            gpu.gemm(&Gemm::plain(product, device_a, device_b, device_c, 0.0)).unwrap();
            let got = gpu.download(device_c).unwrap();
            for (got, want) in got.iter().zip(expected.iter()) {
                assert!(
                    (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                    "{transpose_a} {transpose_b}: {got} vs {want}"
                );
            }
        }
    }
}
