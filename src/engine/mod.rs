//! The hand-differentiated transformer engine (METHOD §1).
//!
//! Each layer kind lives in its own file with `*_forward` and `*_backward` side by side. Activations are
//! batched and flattened to `[N, d]` with `N = B·T` rows so that every projection is one BLAS call.
//! The engine is generic over [`Scalar`] so that gradient checks run in `f64` while training runs in `f32`.
//!
//! Every shape in the engine's docs uses one set of letters:
//!
//! ```text
//! B          sequences in a batch
//! T          positions per sequence
//! N = B·T    flattened rows, batch-major (row n is position n mod T of sequence n div T)
//! d          model width (d_model)
//! H          heads
//! h = d / H  head width
//! F          feed-forward width (d_ff); not to be confused with the scalar type parameter F
//! V          vocabulary size
//! K          semantic (recruited) blocks
//! C          copy rules (copy paths)
//! ```
//!
//! Shapes are written rows first, `[N, d]`; a vector is `[N]`. Backward functions take the upstream
//! gradient `dy` in the shape of the forward output, return the input gradient in the shape of the
//! input, and accumulate (`+=`) parameter gradients into views shaped like the parameters (the caller
//! zeroes them once per backward pass).

pub mod attention;
pub mod block_embedding;
pub mod buffers;
pub mod copy;
pub mod cuda;
pub mod direct_gemm;
pub mod embedding;
pub mod environment;
pub mod eval;
pub mod gelu;
pub mod gradcheck;
pub mod kernels;
pub mod layernorm;
pub mod linalg;
pub mod linear;
pub mod loss;
pub mod model;
pub mod optim;
pub mod simd;
pub mod tile_products;

use std::fmt::{Debug, Display};
use std::iter::Sum;
use std::ops::{AddAssign, DivAssign, MulAssign, SubAssign};

/// The floating-point types the engine runs in.
pub trait Scalar:
    ndarray::LinalgScalar
    + ndarray::ScalarOperand
    + num_traits::Float
    + AddAssign
    + SubAssign
    + MulAssign
    + DivAssign
    + Sum
    + Send
    + Sync
    + Debug
    + Display
    + Default
    + 'static
{
    fn lit(value: f64) -> Self;
    fn as_f64(self) -> f64;
    /// `eˣ` as the hot loops use it: a vectorisable polynomial in `f32` (see [`kernels::exp_f32`]),
    /// the exact library function in `f64`, where gradient checks need every digit.
    fn exp_kernel(self) -> Self;
    /// `tanh x`, with the same split as [`exp_kernel`](Self::exp_kernel).
    fn tanh_kernel(self) -> Self;
    /// [`exp_kernel`](Self::exp_kernel) of every element of a block, in place: the same bits as
    /// element by element, computed stage by stage in `f32` ([`kernels::STAGED_BLOCK`]).
    fn exp_block<const N: usize>(block: &mut [Self; N]);
    /// [`tanh_kernel`](Self::tanh_kernel) of every element of a block, as [`exp_block`](Self::exp_block).
    fn tanh_block<const N: usize>(block: &mut [Self; N]);
    /// The free activation buffers of this type ([`buffers`]).
    fn buffers() -> &'static buffers::BufferPool<Self>;
    /// `c = a·b`, or `c += a·b` when `accumulate`, on the calling thread: the output layer's tile
    /// products, a block task's own rows, and each block of the weight gradients. `f32` runs
    /// [`direct_gemm`] (which packs only the output layer's tiles' `B`) where the CPU allows; `f64`
    /// runs OpenBLAS.
    fn local_product(
        a: ndarray::ArrayView2<Self>,
        b: ndarray::ArrayView2<Self>,
        accumulate: bool,
        c: ndarray::ArrayViewMut2<Self>,
    );
    /// Whether [`local_product`](Self::local_product) copies its operands into panels before
    /// multiplying (OpenBLAS), so that a split which repeats an operand across tasks repeats its copy.
    fn products_pack_operands() -> bool;
    /// The view as `f32`, `None` in `f64`: the output layer's packed tile products run in `f32` only.
    fn f32_view(view: ndarray::ArrayView2<'_, Self>) -> Option<ndarray::ArrayView2<'_, f32>>;
    /// [`f32_view`](Self::f32_view) of a mutable view.
    fn f32_view_mut(view: ndarray::ArrayViewMut2<'_, Self>) -> Option<ndarray::ArrayViewMut2<'_, f32>>;
}

static F32_BUFFERS: buffers::BufferPool<f32> = buffers::BufferPool::new();
static F64_BUFFERS: buffers::BufferPool<f64> = buffers::BufferPool::new();

impl Scalar for f32 {
    fn lit(value: f64) -> Self {
        value as f32
    }
    fn as_f64(self) -> f64 {
        self as f64
    }
    #[inline(always)]
    fn exp_kernel(self) -> Self {
        kernels::exp_f32(self)
    }
    #[inline(always)]
    fn tanh_kernel(self) -> Self {
        kernels::tanh_f32(self)
    }
    #[inline(always)]
    fn exp_block<const N: usize>(block: &mut [Self; N]) {
        kernels::exp_f32_block(block)
    }
    #[inline(always)]
    fn tanh_block<const N: usize>(block: &mut [Self; N]) {
        kernels::tanh_f32_block(block)
    }
    fn buffers() -> &'static buffers::BufferPool<Self> {
        &F32_BUFFERS
    }
    fn local_product(
        a: ndarray::ArrayView2<Self>,
        b: ndarray::ArrayView2<Self>,
        accumulate: bool,
        c: ndarray::ArrayViewMut2<Self>,
    ) {
        direct_gemm::product(a, b, accumulate, c)
    }
    fn products_pack_operands() -> bool {
        direct_gemm::kernel().is_none()
    }
    fn f32_view(view: ndarray::ArrayView2<'_, Self>) -> Option<ndarray::ArrayView2<'_, f32>> {
        Some(view)
    }
    fn f32_view_mut(view: ndarray::ArrayViewMut2<'_, Self>) -> Option<ndarray::ArrayViewMut2<'_, f32>> {
        Some(view)
    }
}

impl Scalar for f64 {
    fn lit(value: f64) -> Self {
        value
    }
    fn as_f64(self) -> f64 {
        self
    }
    #[inline(always)]
    fn exp_kernel(self) -> Self {
        self.exp()
    }
    #[inline(always)]
    fn tanh_kernel(self) -> Self {
        self.tanh()
    }
    #[inline(always)]
    fn exp_block<const N: usize>(block: &mut [Self; N]) {
        block.iter_mut().for_each(|v| *v = v.exp());
    }
    #[inline(always)]
    fn tanh_block<const N: usize>(block: &mut [Self; N]) {
        block.iter_mut().for_each(|v| *v = v.tanh());
    }
    fn buffers() -> &'static buffers::BufferPool<Self> {
        &F64_BUFFERS
    }
    fn local_product(
        a: ndarray::ArrayView2<Self>,
        b: ndarray::ArrayView2<Self>,
        accumulate: bool,
        c: ndarray::ArrayViewMut2<Self>,
    ) {
        linalg::local_gemm(a, b, accumulate, c)
    }
    fn products_pack_operands() -> bool {
        true
    }
    fn f32_view(_: ndarray::ArrayView2<'_, Self>) -> Option<ndarray::ArrayView2<'_, f32>> {
        None
    }
    fn f32_view_mut(_: ndarray::ArrayViewMut2<'_, Self>) -> Option<ndarray::ArrayViewMut2<'_, f32>> {
        None
    }
}

pub use model::{Config, Gelu, Grads, Model, Params};
