//! Recruitment trials on a frozen model (METHOD §7): a candidate block brings a copy path (METHOD §4,
//! `any token copies from B within w`), and only that path's `d + 1` gate parameters train; every other
//! weight stays as it is, so the saving `L(D | M) − L(D | M + B)` is the block's alone — no control
//! run, no trajectory noise.
//!
//! Because the model does not move, its final hidden states `h_i` and its own prediction of every target
//! do not depend on the trial: one forward pass over the trial batches and one over `D` serve every
//! candidate of a check. What the frozen model predicts is kept per row as two numbers. With the copy
//! paths the model already has (`c`), METHOD §4's mixture is
//!
//! ```text
//! p_M(y) = A / B,   A = q(y) + Σ_c λ s_c e^{z_c} κ_c(y),   B = 1 + Σ_c λ s_c e^{z_c}
//! ```
//!
//! and adding the candidate's path (`a = λ s e^{u·h + b}`, its cache `κ`) gives
//!
//! ```text
//! p(y) = (A + a κ(y)) / (B + a),   CE = ln(B + a) − ln(A + a κ(y)),   ∂CE/∂z = w − r
//! w = a / (B + a),   r = a κ(y) / (A + a κ(y))
//! ```
//!
//! which is METHOD §4's `∂CE/∂z_c = w_c − r_c` with every other path held fixed. Rows where the block
//! has no member in the window have no path: their loss does not depend on the gate.

use ndarray::{Array1, Array2, ArrayView1};
use rayon::prelude::*;

/// What the frozen model says about the targets of one batch.
#[derive(Clone)]
pub struct FrozenBatch {
    /// `[N, d]` final hidden states `h_i = LN_f(x^L_i)`, the gate's input.
    pub hidden: Array2<f32>,
    /// `[N]` `ln p_M(y_i)`; NaN at the rows a split scored for the saving alone does not need.
    pub ln_p: Vec<f64>,
    /// `[N]` `ln B_i = ln(1 + Σ_c λ s_c e^{z_c})` over the model's own copy paths (0 without any).
    pub ln_denominator: Vec<f64>,
    /// `[N]` inputs `t_i` and targets `y_i = t_{i+1}`, `windows` sequences of `seq_len`.
    pub inputs: Vec<u32>,
    pub targets: Vec<u32>,
    pub seq_len: usize,
}

/// A candidate's cache at the rows of one batch where the block has a member in the window:
/// `(row, ln κ(y))`, `ln κ = −∞` where the target is not among the cached tokens.
pub type CandidateRows = Vec<(u32, f32)>;

/// The rows of `batch` where `any token copies from` the block `is_member` `within` positions applies,
/// each with `ln κ_i(y_i)`: the share of the window's member positions `j ≤ i`, `i − j < within`, whose
/// token is the target.
pub fn candidate_rows(batch: &FrozenBatch, is_member: &[bool], within: usize) -> CandidateRows {
    rows_of(&batch.inputs, &batch.targets, batch.seq_len, is_member, within)
}

/// [`candidate_rows`] from a batch's tokens alone, before any forward pass: which rows a check must
/// score depends only on them.
pub fn rows_of(inputs: &[u32], targets: &[u32], seq_len: usize, is_member: &[bool], within: usize) -> CandidateRows {
    let member = |t: u32| is_member.get(t as usize).copied().unwrap_or(false);
    let mut rows = Vec::new();
    let mut window: std::collections::VecDeque<usize> = std::collections::VecDeque::new();
    for (n, &token) in inputs.iter().enumerate() {
        let i = n % seq_len;
        if i == 0 {
            window.clear();
        }
        if member(token) {
            window.push_back(n);
        }
        while window.front().is_some_and(|&j| n - j >= within) {
            window.pop_front();
        }
        if window.is_empty() {
            continue;
        }
        let y = targets[n];
        let hits = if member(y) { window.iter().filter(|&&j| inputs[j] == y).count() } else { 0 };
        let ln_kappa = if hits == 0 { f32::NEG_INFINITY } else { (hits as f32 / window.len() as f32).ln() };
        rows.push((n as u32, ln_kappa));
    }
    rows
}

fn log_add_exp(a: f64, b: f64) -> f64 {
    crate::engine::copy::log_sum_exp(&[a, b])
}

/// One row of the trial mixture: `(CE, ∂CE/∂z)` for the gate logit `z`, where `ln_a = ln p_M(y) +
/// ln B` and `ln_strength = ln(λ s)`.
pub fn row_loss(ln_p: f64, ln_denominator: f64, ln_kappa: f64, z: f64, ln_strength: f64) -> (f64, f64) {
    let ln_numerator = ln_p + ln_denominator; // ln A
    let ln_weight = ln_strength + z; // ln a
    let ln_total = log_add_exp(ln_denominator, ln_weight); // ln(B + a)
    let ln_mixed = log_add_exp(ln_numerator, ln_weight + ln_kappa); // ln(A + a κ)
                                                                    // w = a / (B + a), r = a κ / (A + a κ)
    let w = (ln_weight - ln_total).exp();
    let r = if ln_kappa == f64::NEG_INFINITY { 0.0 } else { (ln_weight + ln_kappa - ln_mixed).exp() };
    (ln_total - ln_mixed, w - r)
}

/// A copy path's gate `z = u·h + b` (METHOD §4).
#[derive(Clone, Debug, PartialEq)]
pub struct Gate {
    /// `[d]`.
    pub weight: Array1<f32>,
    pub bias: f32,
}

impl Gate {
    pub fn shut(d_model: usize) -> Self {
        // METHOD §7: a trial's gate starts shut, `u = 0`, `b = b₀`, as every new copy path does
        Gate { weight: Array1::zeros(d_model), bias: crate::engine::copy::GATE_BIAS_INIT as f32 }
    }

    fn logit(&self, h: ArrayView1<f32>) -> f64 {
        match (self.weight.as_slice(), h.as_slice()) {
            (Some(u), Some(h)) => dot(u, h) + f64::from(self.bias),
            _ => f64::from(self.weight.dot(&h)) + f64::from(self.bias),
        }
    }
}

/// `u·h` in a fixed order, on contiguous rows: the trial's inner loop runs it once per row and step,
/// so it is the engine's vectorised eight-lane dot product rather than a sequential sum.
fn dot(u: &[f32], h: &[f32]) -> f64 {
    f64::from(crate::engine::kernels::dot(u, h))
}

/// The loss of one batch under `gate`, summed over its rows (rows without the path add their frozen
/// `−ln p_M`), and the gradient of the mean over the batch's rows with respect to `(u, b)`.
pub fn batch_loss(
    batch: &FrozenBatch,
    rows: &CandidateRows,
    gate: &Gate,
    ln_strength: f64,
    with_grad: bool,
) -> (f64, Option<(Array1<f64>, f64)>) {
    let mut loss: f64 = batch.ln_p.iter().map(|&lp| -lp).sum();
    let d = gate.weight.len();
    let mut grad_weight = Array1::<f64>::zeros(if with_grad { d } else { 0 });
    let mut grad_bias = 0.0;
    for &(n, ln_kappa) in rows {
        let n = n as usize;
        let h = batch.hidden.row(n);
        let (ce, dz) =
            row_loss(batch.ln_p[n], batch.ln_denominator[n], f64::from(ln_kappa), gate.logit(h), ln_strength);
        // the row's frozen loss was counted above; replace it by the mixture's
        loss += ce + batch.ln_p[n];
        if with_grad {
            // z = u·h + b  ⇒  ∂z/∂u = h, ∂z/∂b = 1
            match (grad_weight.as_slice_mut(), h.as_slice()) {
                (Some(g), Some(h)) => g.iter_mut().zip(h).for_each(|(g, &x)| *g += dz * f64::from(x)),
                _ => grad_weight.zip_mut_with(&h, |g, &x| *g += dz * f64::from(x)),
            }
            grad_bias += dz;
        }
    }
    let rows_total = batch.targets.len().max(1) as f64;
    let grad = with_grad.then(|| (grad_weight / rows_total, grad_bias / rows_total));
    (loss, grad)
}

/// The rows of one trial batch where the path applies, in the linear domain the gate's gradient needs,
/// fixed for the whole trial: their hidden states side by side, and per row `B`, `A = p_M(y)·B` and
/// `κ(y)`.
struct GradientRows {
    /// `[R, d]` the rows' `h`, gathered so that every step streams them in order.
    hidden: Vec<f32>,
    denominator: Vec<f64>,
    numerator: Vec<f64>,
    kappa: Vec<f64>,
}

fn gradient_rows(batch: &FrozenBatch, rows: &CandidateRows) -> GradientRows {
    let mut gathered = GradientRows {
        hidden: Vec::with_capacity(rows.len() * batch.hidden.ncols()),
        denominator: Vec::with_capacity(rows.len()),
        numerator: Vec::with_capacity(rows.len()),
        kappa: Vec::with_capacity(rows.len()),
    };
    for &(n, ln_kappa) in rows {
        let n = n as usize;
        gathered.hidden.extend(batch.hidden.row(n).iter());
        let ln_denominator = batch.ln_denominator[n];
        gathered.denominator.push(ln_denominator.exp());
        gathered.numerator.push((batch.ln_p[n] + ln_denominator).exp());
        gathered.kappa.push(f64::from(ln_kappa).exp());
    }
    gathered
}

/// Per-step work space of [`batch_gradient`], one value per row.
#[derive(Default)]
struct StepScratch {
    logits: Vec<f32>,
    d_logits: Vec<f64>,
}

/// The mean loss's gradient over one batch with respect to `(u, b)`, as [`batch_loss`] gives it (to
/// rounding: the exponential here is [`kernels::exp_f64`](crate::engine::kernels::exp_f64), not the
/// library's), from [`GradientRows`]: `∂CE/∂z = w − r`, `w = a/(B + a)`, `r = aκ/(A + aκ)`,
/// `a = λ s e^z`. One exponential per row instead of the four logarithms and exponentials of the
/// log-domain loss, and each of the three passes over the rows vectorised: a trial takes hundreds of
/// steps and needs only this.
fn batch_gradient(
    batch: &FrozenBatch,
    rows: &GradientRows,
    gate: &Gate,
    ln_strength: f64,
    grad_weight: &mut [f64],
    scratch: &mut StepScratch,
) -> f64 {
    use crate::engine::kernels;
    let count = rows.denominator.len();
    let (logits, d_logits) = (&mut scratch.logits, &mut scratch.d_logits);
    logits.resize(count, 0.0);
    d_logits.resize(count, 0.0);
    let u = gate.weight.as_slice().expect("a gate's weight is one contiguous row");
    // z = u·h + b per row, then ln a = ln(λ s) + z, within e^709, the largest finite exponential (a
    // gate that open has w = 1)
    kernels::row_dots(&rows.hidden, u, logits);
    let bias = f64::from(gate.bias);
    for (ln_a, &z) in d_logits.iter_mut().zip(logits.iter()) {
        *ln_a = (ln_strength + (f64::from(z) + bias)).min(709.0);
    }
    kernels::exp_f64_inplace(d_logits);
    let mut grad_bias = 0.0;
    for (k, dz) in d_logits.iter_mut().enumerate() {
        let a = *dz;
        let w = a / (rows.denominator[k] + a);
        let kappa = rows.kappa[k];
        let copied = a * kappa;
        let r = if kappa == 0.0 { 0.0 } else { copied / (rows.numerator[k] + copied) };
        *dz = w - r;
        grad_bias += *dz;
    }
    // z = u·h + b  ⇒  ∂z/∂u = h, ∂z/∂b = 1
    grad_weight.fill(0.0);
    kernels::add_weighted_rows(d_logits, &rows.hidden, grad_weight);
    let rows_total = batch.targets.len().max(1) as f64;
    grad_weight.iter_mut().for_each(|g| *g /= rows_total);
    grad_bias / rows_total
}

/// Adam on the gate's `d + 1` numbers, with no weight decay: a trial fits two numbers per dimension of a
/// convex-looking problem, not a network.
pub struct GateTraining {
    pub steps: usize,
    pub learning_rate: f64,
}

/// Trains `gate` from shut on the trial batches in order (cycling when there are fewer batches than
/// steps).
pub fn train_gate(
    batches: &[FrozenBatch],
    rows: &[CandidateRows],
    d_model: usize,
    ln_strength: f64,
    training: &GateTraining,
) -> Gate {
    let (beta1, beta2, eps) = (0.9f64, 0.999f64, 1e-8f64);
    let mut gate = Gate::shut(d_model);
    let (mut m_w, mut v_w) = (Array1::<f64>::zeros(d_model), Array1::<f64>::zeros(d_model));
    let (mut m_b, mut v_b) = (0.0f64, 0.0f64);
    if batches.is_empty() {
        return gate;
    }
    let linear_rows: Vec<GradientRows> = batches.iter().zip(rows).map(|(b, r)| gradient_rows(b, r)).collect();
    let mut g_w = vec![0.0f64; d_model];
    let mut scratch = StepScratch::default();
    for step in 0..training.steps {
        let k = step % batches.len();
        let g_b = batch_gradient(&batches[k], &linear_rows[k], &gate, ln_strength, &mut g_w, &mut scratch);
        let t = (step + 1) as i32;
        let (c1, c2) = (1.0 - beta1.powi(t), 1.0 - beta2.powi(t));
        for (((u, m), v), &g) in gate.weight.iter_mut().zip(m_w.iter_mut()).zip(v_w.iter_mut()).zip(&g_w) {
            *m = *m * beta1 + g * (1.0 - beta1);
            *v = *v * beta2 + g * g * (1.0 - beta2);
            *u -= (training.learning_rate * (*m / c1) / ((*v / c2).sqrt() + eps)) as f32;
        }
        m_b = m_b * beta1 + g_b * (1.0 - beta1);
        v_b = v_b * beta2 + g_b * g_b * (1.0 - beta2);
        gate.bias -= (training.learning_rate * (m_b / c1) / ((v_b / c2).sqrt() + eps)) as f32;
    }
    gate
}

/// The bits of every target of `batches` under the frozen model and with the candidate's path, position
/// by position, and whether the path had the target in its cache there.
pub struct Scored {
    pub bits_without: Vec<f64>,
    pub bits_with: Vec<f64>,
    /// Rows where the path's cache held the target (`κ(y) > 0`): where a copy can have saved bits.
    pub copied: Vec<bool>,
    /// Rows where the path applied at all (a member in the window).
    pub applied: Vec<bool>,
}

pub fn score(batches: &[FrozenBatch], rows: &[CandidateRows], gate: &Gate, ln_strength: f64) -> Scored {
    let total: usize = batches.iter().map(|b| b.targets.len()).sum();
    let mut scored = Scored {
        bits_without: Vec::with_capacity(total),
        bits_with: Vec::with_capacity(total),
        copied: vec![false; total],
        applied: vec![false; total],
    };
    let ln2 = std::f64::consts::LN_2;
    let mut offset = 0;
    for (batch, rows) in batches.iter().zip(rows) {
        let start = scored.bits_without.len();
        scored.bits_without.extend(batch.ln_p.iter().map(|&lp| -lp / ln2));
        scored.bits_with.extend(batch.ln_p.iter().map(|&lp| -lp / ln2));
        for &(n, ln_kappa) in rows {
            let n = n as usize;
            let z = gate.logit(batch.hidden.row(n));
            let (ce, _) = row_loss(batch.ln_p[n], batch.ln_denominator[n], f64::from(ln_kappa), z, ln_strength);
            scored.bits_with[start + n] = ce / ln2;
            scored.applied[offset + n] = true;
            scored.copied[offset + n] = ln_kappa > f32::NEG_INFINITY;
        }
        offset += batch.targets.len();
    }
    scored
}

/// What a candidate's path saves on `D`, in bits: all that a check's decision needs.
#[derive(Clone, Debug, PartialEq)]
pub struct Saving {
    /// `L(D | M) − L(D | M + B)`.
    pub bits: f64,
    /// The part saved at the positions where the path's cache held the target.
    pub where_copied_bits: f64,
    /// How many positions those are.
    pub copied_positions: usize,
}

impl Saving {
    /// The saving of a pass scored at every position.
    pub fn of_scored(scored: &Scored) -> Saving {
        let without: f64 = scored.bits_without.iter().sum();
        let with: f64 = scored.bits_with.iter().sum();
        let copied = (0..scored.copied.len()).filter(|&i| scored.copied[i]);
        Saving {
            bits: without - with,
            where_copied_bits: copied.clone().map(|i| scored.bits_without[i] - scored.bits_with[i]).sum(),
            copied_positions: copied.count(),
        }
    }
}

/// The saving of the candidate's path alone, from batches whose `ln p_M(y)` is known only where some
/// cache holds the target (NaN elsewhere). Where the path applies but its cache does not hold the
/// target, `A` cancels from the difference of the two code lengths:
///
/// ```text
/// CE_without − CE_with = (ln B − ln A) − (ln(B + a) − ln A) = ln B − ln(B + a)
/// ```
///
/// so those rows need the gate and `B` but not the softmax.
pub fn saving(batches: &[FrozenBatch], rows: &[CandidateRows], gate: &Gate, ln_strength: f64) -> Saving {
    let ln2 = std::f64::consts::LN_2;
    let mut saving = Saving { bits: 0.0, where_copied_bits: 0.0, copied_positions: 0 };
    for (batch, rows) in batches.iter().zip(rows) {
        for &(n, ln_kappa) in rows {
            let n = n as usize;
            let z = gate.logit(batch.hidden.row(n));
            let ln_denominator = batch.ln_denominator[n];
            if ln_kappa == f32::NEG_INFINITY {
                saving.bits += (ln_denominator - log_add_exp(ln_denominator, ln_strength + z)) / ln2;
            } else {
                let (ce, _) = row_loss(batch.ln_p[n], ln_denominator, f64::from(ln_kappa), z, ln_strength);
                let saved = (-batch.ln_p[n] - ce) / ln2;
                saving.bits += saved;
                saving.where_copied_bits += saved;
                saving.copied_positions += 1;
            }
        }
    }
    saving
}

/// One candidate's trial on shared frozen passes: its trained gate, its saving on `D`, and its bits
/// position by position where `D` was scored at every position.
pub struct CopyTrial {
    pub gate: Gate,
    pub saving: Saving,
    pub scored: Option<Scored>,
}

/// The split `D` as a check scores it: the frozen batches, and each candidate's rows of each batch.
pub struct SplitRows<'a> {
    pub batches: &'a [FrozenBatch],
    /// `rows[k][b]`: candidate `k`'s rows of batch `b`.
    pub rows: &'a [Vec<CandidateRows>],
    /// Whether every position of `D` was scored (else only where some cache holds the target).
    pub every_position: bool,
}

/// Trials every candidate (`members[k]` as a membership mask) on the same frozen passes, in parallel;
/// each trial is sequential, so results do not depend on the thread count.
pub fn trial_candidates(
    trial_batches: &[FrozenBatch],
    split: &SplitRows,
    members: &[Vec<bool>],
    within: usize,
    ln_strength: f64,
    training: &GateTraining,
) -> Vec<CopyTrial> {
    members
        .par_iter()
        .zip(split.rows)
        .map(|(is_member, split_rows)| {
            let d = trial_batches.first().or(split.batches.first()).map_or(0, |b| b.hidden.ncols());
            let trial_rows: Vec<CandidateRows> =
                trial_batches.iter().map(|b| candidate_rows(b, is_member, within)).collect();
            let gate = train_gate(trial_batches, &trial_rows, d, ln_strength, training);
            if split.every_position {
                let scored = score(split.batches, split_rows, &gate, ln_strength);
                CopyTrial { gate, saving: Saving::of_scored(&scored), scored: Some(scored) }
            } else {
                let saving = saving(split.batches, split_rows, &gate, ln_strength);
                CopyTrial { gate, saving, scored: None }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch of one sequence `0 1 2 0 1 2 0 …` over a vocabulary of 4, with a frozen model that gives
    /// every target probability 1/4.
    fn repeating_batch(seq_len: usize, d: usize) -> FrozenBatch {
        let ids: Vec<u32> = (0..=seq_len as u32).map(|i| i % 3).collect();
        let hidden = Array2::from_shape_fn((seq_len, d), |(n, k)| ((n * 7 + k * 3) % 5) as f32 * 0.1 - 0.2);
        FrozenBatch {
            hidden,
            ln_p: vec![(0.25f64).ln(); seq_len],
            ln_denominator: vec![0.0; seq_len],
            inputs: ids[..seq_len].to_vec(),
            targets: ids[1..].to_vec(),
            seq_len,
        }
    }

    #[test]
    fn the_trial_gradient_matches_finite_differences() {
        // METHOD §4: ∂CE/∂z = w − r, here with a frozen path already present (B > 1)
        for &(ln_p, ln_b, ln_kappa) in &[(-2.0, 0.3, (0.5f64).ln()), (-0.1, 0.0, f64::NEG_INFINITY), (-9.0, 1.2, 0.0)] {
            for &z in &[-6.0, 0.0, 2.5] {
                let (_, analytic) = row_loss(ln_p, ln_b, ln_kappa, z, (0.7f64).ln());
                let h = 1e-6;
                let plus = row_loss(ln_p, ln_b, ln_kappa, z + h, (0.7f64).ln()).0;
                let minus = row_loss(ln_p, ln_b, ln_kappa, z - h, (0.7f64).ln()).0;
                let numeric = (plus - minus) / (2.0 * h);
                assert!((analytic - numeric).abs() < 1e-7, "z {z}: analytic {analytic}, numeric {numeric}");
            }
        }
        // and through the batch: ∂/∂u and ∂/∂b of the mean loss
        let batch = repeating_batch(12, 3);
        let members = vec![true, true, true, false];
        let rows = candidate_rows(&batch, &members, 4);
        let gate = Gate { weight: Array1::from(vec![0.3, -0.2, 0.5]), bias: -1.0 };
        let (_, grad) = batch_loss(&batch, &rows, &gate, 0.0, true);
        let (grad_weight, grad_bias) = grad.unwrap();
        let mean = |g: &Gate| batch_loss(&batch, &rows, g, 0.0, false).0 / 12.0;
        let h = 1e-3f32;
        for k in 0..3 {
            let (mut plus, mut minus) = (gate.clone(), gate.clone());
            plus.weight[k] += h;
            minus.weight[k] -= h;
            let numeric = (mean(&plus) - mean(&minus)) / (2.0 * f64::from(h));
            assert!((grad_weight[k] - numeric).abs() < 1e-4, "u[{k}]: {} vs {numeric}", grad_weight[k]);
        }
        let (mut plus, mut minus) = (gate.clone(), gate.clone());
        plus.bias += h;
        minus.bias -= h;
        let numeric = (mean(&plus) - mean(&minus)) / (2.0 * f64::from(h));
        assert!((grad_bias - numeric).abs() < 1e-4, "b: {grad_bias} vs {numeric}");
        // a wrong gradient is caught by the same comparison
        assert!((grad_bias * 1.1 - numeric).abs() > 1e-4);
        // the trials' linear-domain gradient is the same one, to rounding, with a frozen path present
        let mut with_path = batch.clone();
        with_path.ln_denominator = (0..12).map(|n| 0.1 * (n % 3) as f64).collect();
        for ln_strength in [0.0, (0.3f64).ln()] {
            let (_, grad) = batch_loss(&with_path, &rows, &gate, ln_strength, true);
            let (log_weight, log_bias) = grad.unwrap();
            let mut linear_weight = vec![0.0; 3];
            let linear_rows = gradient_rows(&with_path, &rows);
            let mut scratch = StepScratch::default();
            let linear_bias =
                batch_gradient(&with_path, &linear_rows, &gate, ln_strength, &mut linear_weight, &mut scratch);
            assert!((linear_bias - log_bias).abs() <= 1e-12 * log_bias.abs().max(1e-3), "{linear_bias} vs {log_bias}");
            for k in 0..3 {
                let (a, b) = (linear_weight[k], log_weight[k]);
                assert!((a - b).abs() <= 1e-12 * b.abs().max(1e-3), "u[{k}]: {a} vs {b}");
            }
        }
    }

    #[test]
    fn the_cache_counts_members_in_the_window_and_never_crosses_sequences() {
        // two sequences of 4: 0 1 0 2 | 1 1 3 0, members {0, 1}
        let batch = FrozenBatch {
            hidden: Array2::zeros((8, 1)),
            ln_p: vec![0.0; 8],
            ln_denominator: vec![0.0; 8],
            inputs: vec![0, 1, 0, 2, 1, 1, 3, 0],
            targets: vec![1, 0, 2, 1, 1, 3, 0, 1],
            seq_len: 4,
        };
        let rows = candidate_rows(&batch, &[true, true, false, false], 2);
        let as_kappa: Vec<(u32, f32)> = rows.iter().map(|&(n, l)| (n, l.exp())).collect();
        // row 0: window {0} holds token 0, target 1 → κ 0; row 1: {0, 1} → target 0 has κ ½;
        // row 2: {1, 2} (tokens 1, 0), target 2 is no member → 0; row 3: {2} (token 0), target 1 → 0;
        // row 4 starts a new sequence: {4} (token 1), target 1 → 1; row 5: {4, 5} → target 3: 0;
        // row 6: {5} (token 1), target 0 → 0; row 7: {7} (token 0), target 1 → 0
        assert_eq!(as_kappa, [(0, 0.0), (1, 0.5), (2, 0.0), (3, 0.0), (4, 1.0), (5, 0.0), (6, 0.0), (7, 0.0)]);
    }

    /// Trials on `batches` as both trial batches and a split scored at every position.
    fn trial_on_every_position(
        batches: &[FrozenBatch],
        members: &[Vec<bool>],
        within: usize,
        training: &GateTraining,
    ) -> Vec<CopyTrial> {
        let rows: Vec<Vec<CandidateRows>> =
            members.iter().map(|m| batches.iter().map(|b| candidate_rows(b, m, within)).collect()).collect();
        let split = SplitRows { batches, rows: &rows, every_position: true };
        trial_candidates(batches, &split, members, within, 0.0, training)
    }

    #[test]
    fn the_saving_alone_equals_the_difference_of_the_code_lengths() {
        // a frozen path already present (B > 1 on some rows) and a window that sometimes misses
        let mut batch = repeating_batch(30, 3);
        batch.ln_denominator = (0..30).map(|n| if n % 4 == 0 { 0.7 } else { 0.0 }).collect();
        batch.ln_p = (0..30).map(|n| -1.0 - 0.1 * (n % 5) as f64).collect();
        let members = vec![true, true, false, false];
        let rows = vec![candidate_rows(&batch, &members, 2)];
        let gate = Gate { weight: Array1::from(vec![0.4, -0.3, 0.8]), bias: -0.5 };
        let scored = score(std::slice::from_ref(&batch), &rows, &gate, (0.6f64).ln());
        let full = Saving::of_scored(&scored);
        // the rows where no cache holds the target must not need ln p: hide it there
        let mut hidden_p = batch.clone();
        for &(n, ln_kappa) in &rows[0] {
            if ln_kappa == f32::NEG_INFINITY {
                hidden_p.ln_p[n as usize] = f64::NAN;
            }
        }
        let alone = saving(std::slice::from_ref(&hidden_p), &rows, &gate, (0.6f64).ln());
        assert!(full.bits.abs() > 0.1 && full.where_copied_bits != full.bits, "{full:?}");
        assert_eq!(alone.copied_positions, full.copied_positions);
        // the same terms, summed in another order and with A cancelled in closed form
        assert!((alone.bits - full.bits).abs() < 1e-9 * full.bits.abs().max(1.0), "{alone:?} vs {full:?}");
        assert!((alone.where_copied_bits - full.where_copied_bits).abs() < 1e-9 * full.bits.abs().max(1.0));
    }

    #[test]
    fn a_path_that_can_copy_learns_to_open_and_one_that_cannot_stays_shut() {
        let batches: Vec<FrozenBatch> = (0..4).map(|_| repeating_batch(24, 3)).collect();
        let training = GateTraining { steps: 200, learning_rate: 3e-2 };
        // tokens 0, 1, 2 repeat with period 3: a window of 3 always holds the target, κ = 1/3
        let copying = trial_on_every_position(&batches, &[vec![true, true, true, false]], 3, &training);
        let scored = copying[0].scored.as_ref().unwrap();
        let saved: f64 = scored.bits_without.iter().sum::<f64>() - scored.bits_with.iter().sum::<f64>();
        assert!(saved > 5.0, "the path saved only {saved} bits");
        assert!(
            copying[0].gate.bias > crate::engine::copy::GATE_BIAS_INIT as f32,
            "the gate did not open: {:?}",
            copying[0].gate
        );
        // token 3 never occurs: the path never applies and nothing changes
        let never = trial_on_every_position(&batches, &[vec![false, false, false, true]], 3, &training);
        let scored = never[0].scored.as_ref().unwrap();
        assert_eq!(scored.bits_with, scored.bits_without);
        assert_eq!(never[0].gate, Gate::shut(3));
    }
}
