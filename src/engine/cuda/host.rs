//! The host device: every [`Launch`] as the plain loop its CUDA kernel runs per thread, and every product
//! as the column-major call cuBLAS is given ([`reference_gemm`]), on buffers in host memory.
//!
//! It is a reference, not a fast path: it shows on any machine that the device step computes what the
//! CPU engine computes, and on a GPU machine each CUDA kernel is compared with it launch by launch.
//! Each loop follows its kernel's arithmetic (f32, the same operations in the same order per element;
//! block reductions are summed here in row order, so sums may differ from the GPU's in the last bits).

use super::gemm::{column_major_strided, reference_gemm};
use super::ops::{Bytes, Device, DeviceResult, Floats, Gemm, Ids, Launch};

#[derive(Debug, Default)]
pub struct HostDevice {
    floats: Vec<Vec<f32>>,
    ids: Vec<Vec<u32>>,
    bytes: Vec<Vec<u8>>,
}

/// `tanh`-form GELU and its derivative, as `gelu_forward` / `gelu_backward` write them.
const GELU_C: f32 = 0.797_884_6;
const GELU_A: f32 = 0.044715;

impl HostDevice {
    pub fn new() -> Self {
        HostDevice::default()
    }

    fn read(&self, r: Floats) -> &[f32] {
        &self.floats[r.buffer][r.offset..r.offset + r.len]
    }

    fn read_ids(&self, r: Ids) -> &[u32] {
        &self.ids[r.buffer][r.offset..r.offset + r.len]
    }

    fn read_bytes(&self, r: Bytes) -> Vec<u8> {
        self.bytes[r.buffer][r.offset..r.offset + r.len].to_vec()
    }

    fn write(&mut self, r: Floats) -> &mut [f32] {
        &mut self.floats[r.buffer][r.offset..r.offset + r.len]
    }

    fn copy(&self, r: Floats) -> Vec<f32> {
        self.read(r).to_vec()
    }
}

impl Device for HostDevice {
    fn describe(&self) -> String {
        "host (the device step's reference on the CPU)".into()
    }

    fn alloc(&mut self, len: usize) -> DeviceResult<Floats> {
        self.floats.push(vec![0.0; len]);
        Ok(Floats { buffer: self.floats.len() - 1, offset: 0, len })
    }

    fn alloc_ids(&mut self, len: usize) -> DeviceResult<Ids> {
        self.ids.push(vec![0; len]);
        Ok(Ids { buffer: self.ids.len() - 1, offset: 0, len })
    }

    fn upload(&mut self, dst: Floats, data: &[f32]) -> DeviceResult<()> {
        if data.len() != dst.len {
            return Err(format!("upload of {} values into a region of {}", data.len(), dst.len));
        }
        self.write(dst).copy_from_slice(data);
        Ok(())
    }

    fn upload_ids(&mut self, dst: Ids, data: &[u32]) -> DeviceResult<()> {
        if data.len() != dst.len {
            return Err(format!("upload of {} ids into a region of {}", data.len(), dst.len));
        }
        self.ids[dst.buffer][dst.offset..dst.offset + dst.len].copy_from_slice(data);
        Ok(())
    }

    fn alloc_bytes(&mut self, len: usize) -> DeviceResult<Bytes> {
        self.bytes.push(vec![0; len]);
        Ok(Bytes { buffer: self.bytes.len() - 1, offset: 0, len })
    }

    fn upload_bytes(&mut self, dst: Bytes, data: &[u8]) -> DeviceResult<()> {
        if data.len() != dst.len {
            return Err(format!("upload of {} bytes into a region of {}", data.len(), dst.len));
        }
        self.bytes[dst.buffer][dst.offset..dst.offset + dst.len].copy_from_slice(data);
        Ok(())
    }

    fn download(&mut self, src: Floats) -> DeviceResult<Vec<f32>> {
        Ok(self.copy(src))
    }

    fn zero(&mut self, dst: Floats) -> DeviceResult<()> {
        self.write(dst).fill(0.0);
        Ok(())
    }

    fn gemm(&mut self, gemm: &Gemm) -> DeviceResult<()> {
        gemm.validate()?;
        let call = column_major_strided(gemm.product, gemm.strides);
        let (a, b) = (self.copy(gemm.a), self.copy(gemm.b));
        let [stride_a, stride_b, stride_c] = gemm.batch_strides;
        let c = self.write(gemm.c);
        for index in 0..gemm.batch {
            // cuBLAS's A slot holds the row-major b, its B slot the row-major a
            let (slot_a, slot_b) = (&b[index * stride_b..], &a[index * stride_a..]);
            reference_gemm(&call, gemm.alpha, slot_a, slot_b, gemm.beta, &mut c[index * stride_c..]);
        }
        Ok(())
    }

    fn launch(&mut self, launch: &Launch) -> DeviceResult<()> {
        launch.validate()?;
        match *launch {
            Launch::EmbeddingForward { x, tokens, wte, wpe, rows, seq_len, width } => {
                let (tokens, wte, wpe) = (self.read_ids(tokens).to_vec(), self.copy(wte), self.copy(wpe));
                if let Some(&bad) = tokens.iter().find(|&&t| (t as usize + 1) * width > wte.len()) {
                    return Err(format!("embedding_forward: token {bad} outside the embedding"));
                }
                let out = self.write(x);
                for n in 0..rows {
                    for c in 0..width {
                        out[n * width + c] = wte[tokens[n] as usize * width + c] + wpe[(n % seq_len) * width + c];
                    }
                }
            }
            Launch::EmbeddingBackwardPositions { dwpe, dx, batch, seq_len, width } => {
                let dx = self.copy(dx);
                let out = self.write(dwpe);
                for t in 0..seq_len {
                    for c in 0..width {
                        let sum = (0..batch).fold(0.0f32, |s, b| s + dx[(b * seq_len + t) * width + c]);
                        out[t * width + c] += sum;
                    }
                }
            }
            Launch::EmbeddingBackwardTokens { dwte, dx, tokens, rows, width } => {
                let (dx, tokens) = (self.copy(dx), self.read_ids(tokens).to_vec());
                let out = self.write(dwte);
                for n in 0..rows {
                    let row = tokens[n] as usize * width;
                    if row + width > out.len() {
                        return Err(format!("embedding_backward_tokens: token {} outside the embedding", tokens[n]));
                    }
                    for c in 0..width {
                        out[row + c] += dx[n * width + c];
                    }
                }
            }
            Launch::ResidualAdd { out, a, b } => {
                let (a, b) = (self.copy(a), self.copy(b));
                self.write(out).iter_mut().zip(a.iter().zip(&b)).for_each(|(o, (a, b))| *o = a + b);
            }
            Launch::BroadcastRows { out, base, bias, rows, width, row_stride } => {
                let (bias, base) = (self.copy(bias), base.map(|b| self.copy(b)));
                let out = self.write(out);
                for n in 0..rows {
                    for c in 0..width {
                        out[n * row_stride + c] = match &base {
                            Some(base) => base[n * width + c] + bias[c],
                            None => bias[c],
                        };
                    }
                }
            }
            Launch::LayerNormForward { y, normalized, rstd, x, weight, bias, rows, width, eps } => {
                let (x, weight, bias) = (self.copy(x), self.copy(weight), self.copy(bias));
                let (mut ys, mut hats, mut rs) = (vec![0.0; rows * width], vec![0.0; rows * width], vec![0.0; rows]);
                for n in 0..rows {
                    let row = &x[n * width..(n + 1) * width];
                    let mean = row.iter().sum::<f32>() / width as f32;
                    let variance = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / width as f32;
                    let r = 1.0 / (variance + eps).sqrt();
                    for c in 0..width {
                        let h = (row[c] - mean) * r;
                        hats[n * width + c] = h;
                        ys[n * width + c] = h * weight[c] + bias[c];
                    }
                    rs[n] = r;
                }
                self.write(y.part(0, rows * width)).copy_from_slice(&ys);
                self.write(normalized.part(0, rows * width)).copy_from_slice(&hats);
                self.write(rstd.part(0, rows)).copy_from_slice(&rs);
            }
            Launch::LayerNormBackward { dx, dy, normalized, rstd, weight, rows, width } => {
                let (dy, h, r, w) = (self.copy(dy), self.copy(normalized), self.copy(rstd), self.copy(weight));
                let out = self.write(dx);
                for n in 0..rows {
                    let (g, hat) = (&dy[n * width..(n + 1) * width], &h[n * width..(n + 1) * width]);
                    let mean_g = (0..width).map(|c| g[c] * w[c]).sum::<f32>() / width as f32;
                    let mean_gh = (0..width).map(|c| g[c] * w[c] * hat[c]).sum::<f32>() / width as f32;
                    for c in 0..width {
                        out[n * width + c] = r[n] * (g[c] * w[c] - mean_g - hat[c] * mean_gh);
                    }
                }
            }
            Launch::ColumnSum { out, a, rows, width, row_stride } => {
                let a = self.copy(a);
                let out = self.write(out);
                for (c, o) in out.iter_mut().enumerate().take(width) {
                    *o += (0..rows).fold(0.0f32, |s, n| s + a[n * row_stride + c]);
                }
            }
            Launch::ColumnSumProduct { out, a, b, rows, width } => {
                let (a, b) = (self.copy(a), self.copy(b));
                let out = self.write(out);
                for (c, o) in out.iter_mut().enumerate().take(width) {
                    *o += (0..rows).fold(0.0f32, |s, n| s + a[n * width + c] * b[n * width + c]);
                }
            }
            Launch::GeluForward { y, x } => {
                let x = self.copy(x);
                for (y, &v) in self.write(y).iter_mut().zip(&x) {
                    *y = 0.5 * v * (1.0 + (GELU_C * (v + GELU_A * v * v * v)).tanh());
                }
            }
            Launch::GeluBackward { dx, dy, x } => {
                let (dy, x) = (self.copy(dy), self.copy(x));
                for ((out, &g), &v) in self.write(dx).iter_mut().zip(&dy).zip(&x) {
                    let t = (GELU_C * (v + GELU_A * v * v * v)).tanh();
                    *out = g * (0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * GELU_C * (1.0 + 3.0 * GELU_A * v * v));
                }
            }
            Launch::AttentionSoftmaxForward { att, rows, seq_len } => {
                let scores = self.write(att.part(0, rows * seq_len));
                for (row_index, row) in scores.chunks_mut(seq_len).enumerate() {
                    softmax_causal_row(row, row_index % seq_len);
                }
            }
            Launch::AttentionSoftmaxBackward { datt, att, rows, seq_len } => {
                let a = self.copy(att.part(0, rows * seq_len));
                let g = self.write(datt.part(0, rows * seq_len));
                for (row_index, (g, a)) in g.chunks_mut(seq_len).zip(a.chunks(seq_len)).enumerate() {
                    softmax_backward_row(g, a, row_index % seq_len, 1.0);
                }
            }
            Launch::AttentionSoftmaxLocal { att, covered, targets, bias, inv_tau, rows, seq_len } => {
                let (covered, targets, bias) = (self.read_bytes(covered), self.read_bytes(targets), self.copy(bias));
                let scores = self.write(att.part(0, rows * seq_len));
                for (row_index, row) in scores.chunks_mut(seq_len).enumerate() {
                    let i = row_index % seq_len;
                    if covered[row_index] != 0 {
                        for (j, v) in row[..=i].iter_mut().enumerate() {
                            *v *= inv_tau;
                            if targets[row_index * seq_len + j] == 0 {
                                *v -= bias[row_index];
                            }
                        }
                    }
                    softmax_causal_row(row, i);
                }
            }
            Launch::AttentionSoftmaxLocalBackward { datt, att, covered, inv_tau, rows, seq_len } => {
                let (a, covered) = (self.copy(att.part(0, rows * seq_len)), self.read_bytes(covered));
                let g = self.write(datt.part(0, rows * seq_len));
                for (row_index, (g, a)) in g.chunks_mut(seq_len).zip(a.chunks(seq_len)).enumerate() {
                    let scale = if covered[row_index] != 0 { inv_tau } else { 1.0 };
                    softmax_backward_row(g, a, row_index % seq_len, scale);
                }
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
                let (a, covered, targets) = (self.copy(att), self.read_bytes(covered), self.read_bytes(targets));
                let blocks = self.read_ids(blocks).to_vec();
                let mut gradient = datt.map(|d| self.copy(d));
                let mut penalties = vec![0.0f32; rows];
                for row in 0..rows {
                    if covered[row] == 0 || weight == 0.0 {
                        continue;
                    }
                    let (i, sequence) = (row % seq_len, row / seq_len / heads);
                    let alpha = &a[row * seq_len..(row + 1) * seq_len];
                    let block = &blocks[sequence * seq_len..(sequence + 1) * seq_len];
                    let off_target = |j: &usize| targets[row * seq_len + j] == 0;
                    let (mut sizes, mut squares) = (vec![0.0f32; block_count], vec![0.0f32; block_count]);
                    for j in (0..=i).filter(off_target) {
                        let k = block[j] as usize;
                        if k >= block_count {
                            return Err(format!("attention_penalty: block {k} of {block_count}"));
                        }
                        sizes[k] += 1.0;
                        squares[k] += alpha[j] * alpha[j];
                    }
                    let total = sizes.iter().zip(&squares).fold(0.0f32, |t, (n, sq)| t + n.sqrt() * sq.sqrt());
                    penalties[row] = weight * total;
                    if let Some(gradient) = gradient.as_mut() {
                        for j in (0..=i).filter(off_target) {
                            let k = block[j] as usize;
                            gradient[row * seq_len + j] +=
                                weight * sizes[k].sqrt() / squares[k].sqrt().max(1e-12) * alpha[j];
                        }
                    }
                }
                self.write(penalty.part(0, rows)).copy_from_slice(&penalties);
                if let (Some(datt), Some(gradient)) = (datt, gradient) {
                    self.write(datt).copy_from_slice(&gradient);
                }
            }
            Launch::CopyGates { w, w0, z, active, strength, lambda, rows, rules } => {
                let (z, active, strength) = (self.copy(z), self.read_bytes(active), self.copy(strength));
                let (mut ws, mut w0s) = (vec![0.0f32; rows * rules], vec![0.0f32; rows]);
                for n in 0..rows {
                    let term = |c: usize| lambda * strength[c] * z[n * rules + c].exp();
                    let on = |c: usize| active[n * rules + c] != 0;
                    let denominator = (0..rules).filter(|&c| on(c)).fold(1.0f32, |d, c| d + term(c));
                    for c in 0..rules {
                        ws[n * rules + c] = if on(c) { term(c) / denominator } else { 0.0 };
                    }
                    w0s[n] = 1.0 / denominator;
                }
                self.write(w.part(0, rows * rules)).copy_from_slice(&ws);
                self.write(w0.part(0, rows)).copy_from_slice(&w0s);
            }
            Launch::CopyGatesBackward { dz, w, kappa_y, p, grad_scale, rows, rules } => {
                let (w, kappa_y, p) = (self.copy(w), self.copy(kappa_y), self.copy(p));
                let out = self.write(dz.part(0, rows * rules));
                for (i, o) in out.iter_mut().enumerate() {
                    *o = grad_scale * (w[i] - w[i] * kappa_y[i] / p[i / rules]);
                }
            }
            Launch::CrossEntropy { logits, loss, probability, targets, w0, copy_mass, grad_scale, rows, vocab } => {
                let (targets, w0, copy_mass) = (self.read_ids(targets).to_vec(), self.copy(w0), self.copy(copy_mass));
                let (mut losses, mut ps) = (vec![0.0; rows], vec![0.0; rows]);
                let x = self.write(logits.part(0, rows * vocab));
                for (n, x) in x.chunks_mut(vocab).enumerate() {
                    let y = targets[n] as usize;
                    if y >= vocab {
                        return Err(format!("crossentropy_copy: target {y} outside the vocabulary of {vocab}"));
                    }
                    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                    let z = x.iter().fold(0.0f32, |s, &v| s + (v - max).exp());
                    let qy = (x[y] - max).exp() / z;
                    let p = w0[n] * qy + copy_mass[n];
                    let r0 = w0[n] * qy / p;
                    for (v, logit) in x.iter_mut().enumerate() {
                        let q = (*logit - max).exp() / z;
                        *logit = grad_scale * r0 * (q - if v == y { 1.0 } else { 0.0 });
                    }
                    losses[n] = -p.ln();
                    ps[n] = p;
                }
                self.write(loss.part(0, rows)).copy_from_slice(&losses);
                self.write(probability.part(0, rows)).copy_from_slice(&ps);
            }
            Launch::AdamW { p, g, m, v, clip, beta1, beta2, decay, step_size, inv_sqrt_bias2, eps } => {
                let g = self.copy(g);
                let (mut ms, mut vs) = (self.copy(m), self.copy(v));
                let params = self.write(p);
                for i in 0..params.len() {
                    let grad = g[i] * clip;
                    ms[i] = beta1 * ms[i] + (1.0 - beta1) * grad;
                    vs[i] = beta2 * vs[i] + (1.0 - beta2) * grad * grad;
                    params[i] = params[i] * decay - step_size * ms[i] / (vs[i].sqrt() * inv_sqrt_bias2 + eps);
                }
                self.write(m.part(0, ms.len())).copy_from_slice(&ms);
                self.write(v.part(0, vs.len())).copy_from_slice(&vs);
            }
        }
        Ok(())
    }

    fn squared_norm(&mut self, g: Floats) -> DeviceResult<f64> {
        Ok(self.read(g).iter().map(|&x| x as f64 * x as f64).sum())
    }

    fn synchronize(&mut self) -> DeviceResult<()> {
        Ok(())
    }
}

/// The causal softmax of query row `i` in place: keys `j ≤ i` normalised, the rest 0.
fn softmax_causal_row(row: &mut [f32], i: usize) {
    let max = row[..=i].iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut z = 0.0f32;
    for v in &mut row[..=i] {
        *v = (*v - max).exp();
        z += *v;
    }
    row[..=i].iter_mut().for_each(|v| *v /= z);
    row[i + 1..].fill(0.0);
}

/// Through [`softmax_causal_row`]: `g ← α(g − α·g)·scale` on keys `j ≤ i`, 0 beyond.
fn softmax_backward_row(g: &mut [f32], a: &[f32], i: usize, scale: f32) {
    let dot = (0..=i).fold(0.0f32, |s, j| s + a[j] * g[j]);
    for j in 0..g.len() {
        g[j] = if j <= i { a[j] * (g[j] - dot) * scale } else { 0.0 };
    }
}
