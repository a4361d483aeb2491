//! The output loss of the device step: the output projection and the fused cross-entropy in chunks of
//! rows, so that at most [`LOGIT_ELEMENTS`](super::LOGIT_ELEMENTS) logits exist at once, with the copy paths' mixture.

use super::DeviceModel;
use crate::engine::cuda::gemm::RowMajorProduct;
use crate::engine::cuda::ops::{Device, DeviceResult, Launch};

impl<D: Device> DeviceModel<D> {
    /// The output projection and the cross-entropy chunk by chunk of rows, the copy paths mixed in where
    /// the batch's rules make them act; with gradients, `∂J/∂hidden` into the scratch and the output
    /// weight's and gates' gradients into the gradient buffer. Returns the mean loss.
    pub(super) fn output_loss(&mut self, with_grad: bool) -> DeviceResult<f64> {
        let (n, d, ..) = self.shape();
        let vocab = self.model.config.vocab_size;
        let tied = self.p.head.is_none();
        let weight = self.p.head.unwrap_or(self.p.tok_emb);
        let d_weight = self.g.head.unwrap_or(self.g.tok_emb);
        let (w0, copy_mass) = self.copy_mixture()?;
        let mut start = 0;
        while start < n {
            let rows = self.logit_rows.min(n - start);
            let (logits, hidden) = (self.logits.part(0, rows * vocab), self.hidden.part(start * d, rows * d));
            let forward = RowMajorProduct { m: rows, n: vocab, k: d, transpose_a: false, transpose_b: tied };
            self.gemm(forward, hidden, weight, logits, 0.0)?;
            self.device.launch(&Launch::CrossEntropy {
                logits,
                loss: self.row_loss.part(start, rows),
                probability: self.row_probability.part(start, rows),
                targets: self.targets.part(start, rows),
                w0: w0.part(start, rows),
                copy_mass: copy_mass.part(start, rows),
                grad_scale: 1.0 / n as f32,
                rows,
                vocab,
            })?;
            if with_grad {
                // ∂J/∂h = ∂J/∂logits·Wᵀ (W is tok_embᵀ when tied)
                let d_hidden = self.scratch.d_hidden.part(start * d, rows * d);
                let back = RowMajorProduct { m: rows, n: d, k: vocab, transpose_a: false, transpose_b: !tied };
                self.gemm(back, logits, weight, d_hidden, 0.0)?;
                if tied {
                    // ∂J/∂tok_emb [V, d] += ∂J/∂logitsᵀ·h
                    let product = RowMajorProduct { m: vocab, n: d, k: rows, transpose_a: true, transpose_b: false };
                    self.gemm(product, logits, hidden, d_weight, 1.0)?;
                } else {
                    // ∂J/∂head [d, V] += hᵀ·∂J/∂logits
                    let product = RowMajorProduct { m: d, n: vocab, k: rows, transpose_a: true, transpose_b: false };
                    self.gemm(product, hidden, logits, d_weight, 1.0)?;
                }
            }
            start += rows;
        }
        if with_grad {
            self.copy_backward()?;
        }
        let losses = self.device.download(self.row_loss)?;
        Ok(losses.iter().map(|&l| l as f64).sum::<f64>() / n as f64)
    }
}
