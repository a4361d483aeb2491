//! Recycled activation buffers.
//!
//! A training step allocates a few dozen activation arrays and frees them at its end; zeroing them
//! afresh took a tenth of an evaluation pass on small models. Arrays that a pass overwrites entirely
//! are taken from here instead ([`scratch`]): a buffer freed by an earlier pass, whose stale (but
//! initialised) contents are never read, or zeros when none of that size is free. The pool is bounded,
//! so it never holds more than [`MAX_POOLED_BYTES`] beyond what the passes themselves use.

use std::collections::HashMap;
use std::sync::Mutex;

use ndarray::Array2;

use super::Scalar;

/// Buffers smaller than this are left to the allocator: zeroing them costs little.
const MIN_POOLED_ELEMENTS: usize = 16 << 10;

/// The most the pool keeps, in bytes.
pub const MAX_POOLED_BYTES: usize = 512 << 20;

/// Free buffers of one element type, by length: a pass asks for a few dozen sizes, and thousands of
/// buffers of one size (a head's attention weights) may be free at once.
pub struct BufferPool<F> {
    free: Mutex<FreeBuffers<F>>,
}

struct FreeBuffers<F> {
    by_len: Option<HashMap<usize, Vec<Vec<F>>>>,
    /// Elements held, summed over every free buffer.
    held: usize,
}

impl<F: Scalar> BufferPool<F> {
    pub const fn new() -> Self {
        BufferPool { free: Mutex::new(FreeBuffers { by_len: None, held: 0 }) }
    }

    fn take(&self, len: usize) -> Option<Vec<F>> {
        let mut free = self.free.lock().ok()?;
        // the most recently freed buffer of the size: the likeliest to be still in a cache
        let buffer = free.by_len.as_mut()?.get_mut(&len)?.pop()?;
        free.held -= buffer.len();
        Some(buffer)
    }

    pub(crate) fn give(&self, buffer: Vec<F>) {
        if buffer.len() < MIN_POOLED_ELEMENTS {
            return;
        }
        let Ok(mut free) = self.free.lock() else { return };
        if (free.held + buffer.len()) * std::mem::size_of::<F>() <= MAX_POOLED_BYTES {
            free.held += buffer.len();
            free.by_len.get_or_insert_with(HashMap::new).entry(buffer.len()).or_default().push(buffer);
        }
    }

    /// `(length, count)` of the free buffers, by length, for diagnostics.
    pub fn census(&self) -> Vec<(usize, usize)> {
        let Ok(free) = self.free.lock() else { return Vec::new() };
        let mut census: Vec<(usize, usize)> = free
            .by_len
            .iter()
            .flatten()
            .filter(|(_, buffers)| !buffers.is_empty())
            .map(|(&len, buffers)| (len, buffers.len()))
            .collect();
        census.sort_unstable();
        census
    }

    /// Drops every free buffer.
    pub fn clear(&self) {
        if let Ok(mut free) = self.free.lock() {
            free.by_len = None;
            free.held = 0;
        }
    }
}

impl<F: Scalar> Default for BufferPool<F> {
    fn default() -> Self {
        Self::new()
    }
}

/// An `[rows, cols]` array for the caller to overwrite entirely before reading any element.
pub fn scratch<F: Scalar>(rows: usize, cols: usize) -> Array2<F> {
    let len = rows * cols;
    match F::buffers().take(len) {
        Some(buffer) => Array2::from_shape_vec((rows, cols), buffer)
            .unwrap_or_else(|_| unreachable!("a buffer of rows·cols elements has that shape")),
        None => Array2::zeros((rows, cols)),
    }
}

/// Returns an array's buffer to the pool.
pub fn recycle<F: Scalar>(array: Array2<F>) {
    let (buffer, offset) = array.into_raw_vec_and_offset();
    if offset.unwrap_or(0) == 0 {
        F::buffers().give(buffer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_by_size_and_the_pool_is_bounded() {
        let pool = BufferPool::<f32>::new();
        pool.give(vec![1.0; MIN_POOLED_ELEMENTS]);
        pool.give(vec![2.0; 10]); // too small to keep
        assert!(pool.take(10).is_none());
        assert_eq!(pool.census(), vec![(MIN_POOLED_ELEMENTS, 1)]);
        assert_eq!(pool.take(MIN_POOLED_ELEMENTS).map(|b| b[0]), Some(1.0));
        assert!(pool.take(MIN_POOLED_ELEMENTS).is_none());
        let large = MAX_POOLED_BYTES / 4 / 2 + 1;
        pool.give(vec![0.0; large]);
        pool.give(vec![0.0; large]); // would pass the bound
        assert!(pool.take(large).is_some() && pool.take(large).is_none());
    }
}
