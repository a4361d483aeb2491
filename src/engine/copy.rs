//! Copy paths (METHOD §4, "Copy paths: a pointer that predicts"): the pointer-sentinel mixture
//!
//! ```text
//! z_{c,i} = u_c·h_i + b_c
//! w_{c,i} = λ s_c e^{z_{c,i}} / (1 + λ Σ_{c'} s_{c'} e^{z_{c',i}}),   w_{0,i} = 1 / (1 + λ Σ_{c'} s_{c'} e^{z_{c',i}})
//! p_i(v)  = w_{0,i} q_i(v) + Σ_c w_{c,i} κ_{c,i}(v)
//! ```
//!
//! with sums over the rules whose targets at `i` are not empty. Shapes use the engine's letters
//! ([`super`]): `N` rows (`B·T`, flattened), `C` copy rules, `d` model width, `V` vocabulary.
//!
//! The mixture needs from the softmax only `ln q_i(y_i)` per row (target logit − log-partition), so it
//! runs between the two passes of the chunked output loss ([`super::loss`]) and hands pass 2 one scale
//! per row, `r_{0,i}`. Per-row scalars are computed in `f64` and in log space whatever the engine's
//! precision: a row whose `q(y)` underflows `f32` still gets a finite `−ln p(y)` when the copy path
//! holds the target. A row where no rule acts (no targets, `λ = 0` or `s_c = 0`) is left to the plain
//! softmax path untouched, so at `λ = 0` the model computes bit for bit what it computed without copy rules.

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, ArrayViewMut1, ArrayViewMut2, Axis};

use super::linalg::gemm;
use super::Scalar;

/// The gate bias `b₀` a new copy path starts at (METHOD §7), with `u = 0`: a copy weight of
/// `e^{b₀}/(1 + e^{b₀}) ≈ 0.25 %` at `λ = s = 1`, so adding a path changes the loss by a few bits per
/// thousand tokens.
pub const GATE_BIAS_INIT: f64 = -6.0;

/// One rule's caches `κ_{c,n}` over the `N` rows of a batch, as compressed sparse rows.
#[derive(Clone, Debug, PartialEq)]
pub struct RuleCache {
    /// `s_c`.
    pub strength: f64,
    /// `[N + 1]`: row `n`'s support is entries `offsets[n]..offsets[n + 1]`; an empty row is a row where
    /// the rule does not apply.
    pub offsets: Vec<usize>,
    /// `[nnz]` support tokens, ascending within a row.
    pub tokens: Vec<u32>,
    /// `[nnz]` `κ_{c,n}(token)`, summing to 1 over a non-empty row.
    pub kappa: Vec<f64>,
    /// `[nnz + 1]`: entry `e` was counted from `sources[source_offsets[e]..source_offsets[e + 1]]`.
    pub source_offsets: Vec<usize>,
    /// `[Σ_n |T_n|]` flattened row indices (positions in the batch's `tokens`), ascending per entry.
    pub sources: Vec<usize>,
}

impl RuleCache {
    fn entries(&self, row: usize) -> std::ops::Range<usize> {
        self.offsets[row]..self.offsets[row + 1]
    }

    /// Index of `token`'s entry in row `row`, if the token is in the row's support.
    fn entry(&self, row: usize, token: u32) -> Option<usize> {
        let range = self.entries(row);
        self.tokens[range.clone()].binary_search(&token).ok().map(|k| range.start + k)
    }
}

/// The caches of one batch for `C` copy rules over `N = B·T` rows.
#[derive(Clone, Debug, PartialEq)]
pub struct CopyCaches {
    rows: usize,
    rules: Vec<RuleCache>,
}

impl CopyCaches {
    /// `tokens [N]` the batch's input ids; `strengths [C]` the rules' `s_c`; `targets[c][n]` the flattened
    /// positions (row indices into `tokens`, in row `n`'s own sequence, at or before `n`) whose tokens rule
    /// `c`'s cache at row `n` counts, an empty list where the rule does not apply. Repeated positions
    /// count once: `κ(v) = |{j ∈ T: t_j = v}| / |T|` over the set `T`.
    pub fn new(tokens: &[u32], strengths: Vec<f64>, targets: &[Vec<Vec<u32>>]) -> Self {
        let n_rows = tokens.len();
        assert_eq!(strengths.len(), targets.len(), "one strength per copy rule");
        let rules = strengths
            .into_iter()
            .zip(targets)
            .map(|(strength, rows)| {
                assert!(strength >= 0.0 && strength.is_finite(), "copy strength {strength} is not a finite s ≥ 0");
                assert_eq!(rows.len(), n_rows, "one target list per row");
                let mut cache = RuleCache {
                    strength,
                    offsets: Vec::with_capacity(n_rows + 1),
                    tokens: Vec::new(),
                    kappa: Vec::new(),
                    source_offsets: vec![0],
                    sources: Vec::new(),
                };
                cache.offsets.push(0);
                let mut pairs: Vec<(u32, usize)> = Vec::new();
                for (n, positions) in rows.iter().enumerate() {
                    pairs.clear();
                    for &j in positions {
                        let j = j as usize;
                        assert!(j <= n, "copy target {j} of row {n} lies after the row");
                        pairs.push((tokens[j], j));
                    }
                    // (token, position) ascending: groups by token, positions ascending within a group
                    pairs.sort_unstable();
                    pairs.dedup();
                    let total = pairs.len() as f64;
                    let mut k = 0;
                    while k < pairs.len() {
                        let token = pairs[k].0;
                        let start = k;
                        while k < pairs.len() && pairs[k].0 == token {
                            cache.sources.push(pairs[k].1);
                            k += 1;
                        }
                        cache.tokens.push(token);
                        cache.kappa.push((k - start) as f64 / total);
                        cache.source_offsets.push(cache.sources.len());
                    }
                    cache.offsets.push(cache.tokens.len());
                }
                cache
            })
            .collect();
        CopyCaches { rows: n_rows, rules }
    }

    /// `N`.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// `C`.
    pub fn n_rules(&self) -> usize {
        self.rules.len()
    }

    pub fn rule(&self, c: usize) -> &RuleCache {
        &self.rules[c]
    }

    /// Whether rule `c` has targets at row `n`.
    pub fn applies(&self, c: usize, n: usize) -> bool {
        !self.rules[c].entries(n).is_empty()
    }

    /// Rule `c`'s cache at row `n`: support tokens and their `κ`, both `[support]`.
    pub fn support(&self, c: usize, n: usize) -> (&[u32], &[f64]) {
        let rule = &self.rules[c];
        let range = rule.entries(n);
        (&rule.tokens[range.clone()], &rule.kappa[range])
    }

    /// `κ_{c,n}(v)`, 0 outside the support.
    pub fn kappa(&self, c: usize, n: usize, v: u32) -> f64 {
        let rule = &self.rules[c];
        rule.entry(n, v).map_or(0.0, |e| rule.kappa[e])
    }

    /// The positions (flattened row indices) rule `c` copied `v` from at row `n`: the localist
    /// explanation of the copy part of `p_n(v)`. Empty when `v` is not in the support.
    pub fn sources(&self, c: usize, n: usize, v: u32) -> &[usize] {
        let rule = &self.rules[c];
        match rule.entry(n, v) {
            Some(e) => &rule.sources[rule.source_offsets[e]..rule.source_offsets[e + 1]],
            None => &[],
        }
    }

    /// `ln(λ s_c)` of rule `c`, `−∞` when the rule cannot act at this `λ`.
    fn log_scale(&self, c: usize, lambda: f64) -> f64 {
        let scale = lambda * self.rules[c].strength;
        if scale > 0.0 {
            scale.ln()
        } else {
            f64::NEG_INFINITY
        }
    }
}

/// `ln Σ eˣ` over the terms, `−∞` when every term is `−∞` (or there is none).
pub(crate) fn log_sum_exp(terms: &[f64]) -> f64 {
    let max = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if max == f64::NEG_INFINITY {
        return max;
    }
    max + terms.iter().map(|&t| (t - max).exp()).sum::<f64>().ln()
}

/// What the mixture's forward computed per row, and its backward needs.
#[derive(Clone, Debug, PartialEq)]
pub struct Mixture {
    /// `[N]` whether some rule acts at the row (has targets and `λ s_c > 0`); the others keep the plain
    /// softmax and every field below holds the plain values there (`w_0 = r_0 = 1`, `w_c = r_c = 0`).
    pub active: Vec<bool>,
    /// `[N]` `−ln p_n(y_n)` (`−ln q_n(y_n)` on inactive rows).
    pub nll: Vec<f64>,
    /// `[N]` `ln w_{0,n}`.
    pub log_w0: Vec<f64>,
    /// `[N, C]` `ln w_{c,n}`, `−∞` where rule `c` does not act.
    pub log_weights: Array2<f64>,
    /// `[N]` `r_{0,n} = w_{0,n} q_n(y)/p_n(y)`.
    pub resp0: Vec<f64>,
    /// `[N, C]` `r_{c,n} = w_{c,n} κ_{c,n}(y)/p_n(y)`.
    pub resp: Array2<f64>,
}

impl Mixture {
    /// `[N, C]` the copy weights `w_{c,n}`.
    pub fn weights(&self) -> Array2<f64> {
        self.log_weights.mapv(f64::exp)
    }
}

/// The mixture's forward. `log_q [N]` is `ln q_n(y_n)`, `gate_logits [N, C]` is `z`, `targets [N]` is `y`,
/// `caches` covers `N` rows and `C` rules. Returns the [`Mixture`]: per-row `[N]` and per-rule `[N, C]`
/// values, all `f64`.
pub fn mixture_forward(
    log_q: &[f64],
    gate_logits: ArrayView2<f64>,
    caches: &CopyCaches,
    targets: &[u32],
    lambda: f64,
) -> Mixture {
    let (n_rows, n_rules) = gate_logits.dim();
    assert_eq!(n_rows, caches.rows(), "copy caches cover the batch's rows");
    assert_eq!(n_rules, caches.n_rules(), "one gate per copy rule");
    assert_eq!(log_q.len(), n_rows);
    assert_eq!(targets.len(), n_rows);
    let log_scale: Vec<f64> = (0..n_rules).map(|c| caches.log_scale(c, lambda)).collect(); // [C]
    let mut mix = Mixture {
        active: vec![false; n_rows],
        nll: log_q.iter().map(|&l| -l).collect(),
        log_w0: vec![0.0; n_rows],
        log_weights: Array2::from_elem((n_rows, n_rules), f64::NEG_INFINITY),
        resp0: vec![1.0; n_rows],
        resp: Array2::zeros((n_rows, n_rules)),
    };
    let mut terms = Vec::with_capacity(n_rules + 1);
    let mut log_gate = vec![f64::NEG_INFINITY; n_rules]; // [C]
    for n in 0..n_rows {
        // a_c = ln(λ s_c) + z_c where rule c acts, −∞ elsewhere            [C]
        let mut acts = false;
        for c in 0..n_rules {
            log_gate[c] = if log_scale[c] > f64::NEG_INFINITY && caches.applies(c, n) {
                acts = true;
                log_scale[c] + gate_logits[[n, c]]
            } else {
                f64::NEG_INFINITY
            };
        }
        if !acts {
            continue;
        }
        mix.active[n] = true;
        // ln D = ln(1 + Σ_c λ s_c e^{z_c}) = lse(0, a_1..a_C);  ln w_0 = −ln D,  ln w_c = a_c − ln D
        terms.clear();
        terms.push(0.0);
        terms.extend_from_slice(&log_gate);
        let log_denominator = log_sum_exp(&terms);
        let log_w0 = -log_denominator;
        // ln p(y) = lse(ln w_0 + ln q(y), ln w_c + ln κ_c(y))
        terms.clear();
        terms.push(log_w0 + log_q[n]);
        for (c, &a) in log_gate.iter().enumerate() {
            let log_weight = a - log_denominator;
            mix.log_weights[[n, c]] = log_weight;
            let kappa = if a > f64::NEG_INFINITY { caches.kappa(c, n, targets[n]) } else { 0.0 };
            terms.push(if kappa > 0.0 { log_weight + kappa.ln() } else { f64::NEG_INFINITY });
        }
        let log_p = log_sum_exp(&terms);
        mix.log_w0[n] = log_w0;
        mix.nll[n] = -log_p;
        if log_p == f64::NEG_INFINITY {
            // p(y) = 0 exactly (q(y) = 0 and no cache holds y): keep the softmax's gradient
            continue;
        }
        // r_0 = w_0 q(y)/p,  r_c = w_c κ_c(y)/p
        mix.resp0[n] = (terms[0] - log_p).exp();
        for c in 0..n_rules {
            mix.resp[[n, c]] = (terms[c + 1] - log_p).exp();
        }
    }
    mix
}

/// The mixture's backward for the mean over `N` rows (`inv_n = 1/N`), from the forward's [`Mixture`]
/// alone. Returns `∂CE/∂z [N, C]` (already divided by `N`) and the softmax's row scale `[N]` (not
/// divided): `∂CE/∂logits_n = scale_n · (q_n − onehot(y_n))/N`, logits `[N, V]`.
pub fn mixture_backward(mix: &Mixture, inv_n: f64) -> (Array2<f64>, Vec<f64>) {
    // forward: p = w_0 q(y) + Σ_c w_c κ_c(y), w_c = λ s_c e^{z_c}/(1 + λ Σ s e^z), CE = −ln p
    // ∂CE/∂z_c = w_c − r_c (0 where rule c does not act: w_c = r_c = 0)                   [N, C]
    let mut d_gate_logits = mix.weights();
    d_gate_logits -= &mix.resp;
    d_gate_logits *= inv_n;
    // ∂CE/∂ln q(y) = −r_0, hence ∂CE/∂logits = r_0 (q − onehot(y))                         [N]
    (d_gate_logits, mix.resp0.clone())
}

/// `z = h·uᵀ + b`: `hidden [N, d]`, `weight [C, d]`, `bias [C]` → `[N, C]`.
pub fn gate_forward<F: Scalar>(hidden: ArrayView2<F>, weight: ArrayView2<F>, bias: ArrayView1<F>) -> Array2<F> {
    // z = b broadcast, then += h·uᵀ                                                   [N, C]
    let mut z = Array2::from_shape_fn((hidden.nrows(), weight.nrows()), |(_, c)| bias[c]);
    gemm(F::one(), hidden, weight.t(), F::one(), z.view_mut());
    z
}

/// Backward of [`gate_forward`]: `d_z [N, C]`, `hidden [N, d]`, `weight [C, d]`; accumulates
/// `d_hidden [N, d] += ∂z·u` when asked, `d_weight [C, d] += ∂zᵀ·h` and `d_bias [C] += Σ_n ∂z`.
/// Returns nothing: `∂h` is optional because a gate-only trial (METHOD §7) holds `h` fixed.
pub fn gate_backward<F: Scalar>(
    d_z: ArrayView2<F>,
    hidden: ArrayView2<F>,
    weight: ArrayView2<F>,
    d_hidden: Option<ArrayViewMut2<F>>,
    d_weight: ArrayViewMut2<F>,
    mut d_bias: ArrayViewMut1<F>,
) {
    // forward: z = h·uᵀ + b
    // ∂u += ∂zᵀ·h                                                                       [C, d]
    gemm(F::one(), d_z.t(), hidden, F::one(), d_weight);
    // ∂b += Σ_n ∂z                                                                      [C]
    d_bias += &d_z.sum_axis(Axis(0));
    // ∂h += ∂z·u                                                                        [N, d]
    if let Some(d_hidden) = d_hidden {
        gemm(F::one(), d_z, weight, F::one(), d_hidden);
    }
}

/// The most probable token of `p_n` on an active row. It is either the softmax's argmax (every token
/// outside the caches has `p(v) = w_0 q(v) ≤ w_0 q(argmax)`) or a support token; `log_q(v)` gives
/// `ln q_n(v)` for those candidates. Ties go to the smaller id.
pub fn mixture_argmax(
    mix: &Mixture,
    caches: &CopyCaches,
    n: usize,
    softmax_argmax: u32,
    log_q: impl Fn(u32) -> f64,
) -> u32 {
    let n_rules = caches.n_rules();
    let score = |v: u32| {
        // ln p(v) = lse(ln w_0 + ln q(v), ln w_c + ln κ_c(v))
        let mut terms = Vec::with_capacity(n_rules + 1);
        terms.push(mix.log_w0[n] + log_q(v));
        for c in 0..n_rules {
            let kappa = caches.kappa(c, n, v);
            if kappa > 0.0 {
                terms.push(mix.log_weights[[n, c]] + kappa.ln());
            }
        }
        log_sum_exp(&terms)
    };
    let (mut best, mut best_score) = (softmax_argmax, score(softmax_argmax));
    for c in 0..n_rules {
        if mix.log_weights[[n, c]] == f64::NEG_INFINITY {
            continue;
        }
        for &v in caches.support(c, n).0 {
            let s = score(v);
            if s > best_score || (s == best_score && v < best) {
                (best, best_score) = (v, s);
            }
        }
    }
    best
}

/// The copy paths' part of the loss alone, for trials on a frozen model (METHOD §7).
pub struct GateLoss<F> {
    /// Mean of `nll`, in nats.
    pub mean_nll: F,
    /// `[N]` `−ln p_n(y_n)`.
    pub nll: Vec<F>,
    /// `[N, C]` `w_{c,n}`.
    pub weights: Array2<F>,
    /// `[C, d]` `∂mean_nll/∂u`.
    pub d_weight: Array2<F>,
    /// `[C]` `∂mean_nll/∂b`.
    pub d_bias: Array1<F>,
}

/// The loss and the gates' gradients given what does not depend on the gates: the final hidden states
/// `hidden [N, d]` and `log_q [N] = ln q_n(y_n)` of the softmax. A trial that trains only gates computes
/// those once per batch and calls this at every step. `weight [C, d]`, `bias [C]`, `targets [N]`; returns
/// a [`GateLoss`] with `nll [N]`, `weights [N, C]`, `d_weight [C, d]`, `d_bias [C]` (no `∂h`).
pub fn gate_loss_and_grads<F: Scalar>(
    hidden: ArrayView2<F>,
    log_q: &[F],
    targets: &[u32],
    caches: &CopyCaches,
    weight: ArrayView2<F>,
    bias: ArrayView1<F>,
    lambda: f64,
) -> GateLoss<F> {
    let (n_rows, d) = hidden.dim();
    let n_rules = weight.nrows();
    let inv_n = 1.0 / n_rows.max(1) as f64;
    let log_q64: Vec<f64> = log_q.iter().map(|v| v.as_f64()).collect(); // [N]
    let z = gate_forward(hidden, weight, bias).mapv(F::as_f64); // [N, C]
    let mix = mixture_forward(&log_q64, z.view(), caches, targets, lambda);
    // inactive rows keep −ln q(y) in the engine's precision, as the output loss does
    let nll: Vec<F> =
        (0..n_rows).map(|n| if mix.active[n] { F::lit(mix.nll[n]) } else { F::zero() - log_q[n] }).collect();
    let mean_nll = nll.iter().copied().sum::<F>() * (F::one() / F::lit(n_rows.max(1) as f64));
    let (d_z, _) = mixture_backward(&mix, inv_n);
    let mut d_weight = Array2::zeros((n_rules, d));
    let mut d_bias = Array1::zeros(n_rules);
    gate_backward(d_z.mapv(F::lit).view(), hidden, weight, None, d_weight.view_mut(), d_bias.view_mut());
    GateLoss { mean_nll, nll, weights: mix.weights().mapv(F::lit), d_weight, d_bias }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::engine::gradcheck::{assert_gradient, random, worst_discrepancy, TOLERANCE};
    use ndarray::{Array1, Ix1, Ix2};

    /// Two rules over `N = 8` rows of two sequences of four: rule 0 copies every earlier position of the
    /// row's sequence (including itself), rule 1 only the previous position, and neither applies at a
    /// sequence's first row.
    pub(crate) fn two_rules(tokens: &[u32], seq_len: usize) -> CopyCaches {
        let n = tokens.len();
        let mut all = vec![Vec::new(); n];
        let mut previous = vec![Vec::new(); n];
        for i in 0..n {
            let (start, t) = (i - i % seq_len, i % seq_len);
            if t == 0 {
                continue;
            }
            all[i] = (start as u32..=i as u32).collect();
            previous[i] = vec![i as u32 - 1];
        }
        CopyCaches::new(tokens, vec![1.0, 0.5], &[all, previous])
    }

    fn tokens() -> Vec<u32> {
        vec![1, 2, 1, 3, 4, 4, 2, 5]
    }

    /// Targets chosen so that rows hit and miss: row 1 (y = 1, in both caches), row 2 (y = 6, in no
    /// cache: κ(y) = 0), row 4 (first of its sequence: no targets), row 6 (y = 2, only in rule 0's cache).
    fn targets() -> Vec<u32> {
        vec![2, 1, 6, 1, 4, 4, 2, 2]
    }

    #[test]
    fn caches_count_tokens_and_remember_their_positions() {
        let caches = two_rules(&tokens(), 4);
        assert!(!caches.applies(0, 0) && !caches.applies(1, 4));
        // row 2 of sequence 0 sees tokens 1, 2, 1 at positions 0, 1, 2
        assert_eq!(caches.support(0, 2), (&[1u32, 2][..], &[2.0 / 3.0, 1.0 / 3.0][..]));
        assert_eq!(caches.sources(0, 2, 1), &[0, 2]);
        assert_eq!(caches.sources(0, 2, 5), &[] as &[usize]);
        assert_eq!(caches.kappa(1, 3, 1), 1.0);
        assert_eq!(caches.kappa(1, 3, 3), 0.0);
        // repeated positions count once
        let once = CopyCaches::new(&[7, 8], vec![1.0], &[vec![vec![], vec![0, 0, 1]]]);
        assert_eq!(once.support(0, 1).1, &[0.5, 0.5]);
    }

    /// `mean_n −ln p_n(y_n)` as a function of `ln q(y) [N]` and `z [N, C]`.
    fn mean_nll(log_q: &Array1<f64>, z: &Array2<f64>, caches: &CopyCaches, lambda: f64) -> f64 {
        let mix = mixture_forward(log_q.as_slice().unwrap(), z.view(), caches, &targets(), lambda);
        mix.nll.iter().sum::<f64>() / log_q.len() as f64
    }

    #[test]
    fn mixture_gradient_matches_finite_differences() {
        let caches = two_rules(&tokens(), 4);
        let n = tokens().len();
        let mut log_q = random(&[n], 1.0, 1).into_dimensionality::<Ix1>().unwrap().mapv(|v| -1.0 - v.abs());
        let mut z = random(&[n, 2], 1.0, 2).into_dimensionality::<Ix2>().unwrap();
        for lambda in [1.0, 0.3] {
            let mix = mixture_forward(log_q.as_slice().unwrap(), z.view(), &caches, &targets(), lambda);
            // the cases the test is for
            assert!(mix.active[2] && caches.kappa(0, 2, 6) == 0.0 && caches.kappa(1, 2, 6) == 0.0);
            assert!(!mix.active[4] && mix.resp0[4] == 1.0);
            let (d_z, scale) = mixture_backward(&mix, 1.0 / n as f64);
            // ∂CE/∂ln q(y) = −r_0/N
            let d_log_q = Array1::from_iter(scale.iter().map(|r| -r / n as f64));
            let z0 = z.clone();
            assert_gradient("ln q", &mut log_q.view_mut().into_dyn(), &d_log_q.into_dyn(), |l| {
                let l = l.view().into_dimensionality::<Ix1>().unwrap().to_owned();
                mean_nll(&l, &z0, &caches, lambda)
            });
            let log_q0 = log_q.clone();
            assert_gradient("gate logits", &mut z.view_mut().into_dyn(), &d_z.into_dyn(), |z| {
                let z = z.view().into_dimensionality::<Ix2>().unwrap().to_owned();
                mean_nll(&log_q0, &z, &caches, lambda)
            });
        }
    }

    #[test]
    fn a_gate_gradient_without_its_responsibility_is_rejected() {
        let caches = two_rules(&tokens(), 4);
        let n = tokens().len();
        let log_q = random(&[n], 1.0, 1).into_dimensionality::<Ix1>().unwrap().mapv(|v| -1.0 - v.abs());
        let mut z = random(&[n, 2], 1.0, 2).into_dimensionality::<Ix2>().unwrap();
        let mix = mixture_forward(log_q.as_slice().unwrap(), z.view(), &caches, &targets(), 1.0);
        let (good, _) = mixture_backward(&mix, 1.0 / n as f64);
        // the mistake of differentiating the gate's softmax but forgetting that p depends on it: w_c alone
        let broken = mix.weights() / n as f64;
        let loss = |z: &ndarray::ArrayViewMutD<f64>| {
            let z = z.view().into_dimensionality::<Ix2>().unwrap().to_owned();
            mean_nll(&log_q, &z, &caches, 1.0)
        };
        let good = worst_discrepancy(&mut z.view_mut().into_dyn(), &good.into_dyn(), 1, loss);
        let bad = worst_discrepancy(&mut z.view_mut().into_dyn(), &broken.into_dyn(), 1, loss);
        assert!(good.relative_error < TOLERANCE, "correct gradient rejected: {good:?}");
        assert!(bad.relative_error > 100.0 * TOLERANCE, "broken gradient accepted: {bad:?}");
    }

    #[test]
    fn mixture_matches_its_definition_and_survives_underflow() {
        let caches = two_rules(&tokens(), 4);
        let n = tokens().len();
        let z = random(&[n, 2], 1.0, 2).into_dimensionality::<Ix2>().unwrap();
        let lambda = 0.7;
        // q(y) far below f64's smallest number: the copy part carries p(y)
        let mut log_q = vec![-1.5; n];
        log_q[1] = -2000.0;
        let mix = mixture_forward(&log_q, z.view(), &caches, &targets(), lambda);
        for i in [1usize, 3, 7] {
            let e: Vec<f64> = (0..2)
                .map(|c| if caches.applies(c, i) { lambda * caches.rule(c).strength * z[[i, c]].exp() } else { 0.0 })
                .collect();
            let denominator = 1.0 + e.iter().sum::<f64>();
            let p = log_q[i].exp() / denominator
                + (0..2).map(|c| e[c] / denominator * caches.kappa(c, i, targets()[i])).sum::<f64>();
            assert!((mix.nll[i] + p.ln()).abs() < 1e-12, "row {i}: {} vs {}", mix.nll[i], -p.ln());
            assert!((mix.weights()[[i, 0]] - e[0] / denominator).abs() < 1e-15);
        }
        assert!(mix.nll[1].is_finite() && mix.resp0[1] == 0.0);
        // inactive rows keep −ln q(y); at λ = 0 no row is active
        assert_eq!(mix.nll[4], 1.5);
        let off = mixture_forward(&log_q, z.view(), &caches, &targets(), 0.0);
        assert!(off.active.iter().all(|a| !a) && off.nll.iter().zip(&log_q).all(|(a, b)| *a == -b));
    }

    #[test]
    fn gate_only_gradients_match_finite_differences() {
        let caches = two_rules(&tokens(), 4);
        let (n, d) = (tokens().len(), 3);
        let mut h = random(&[n, d], 1.0, 4).into_dimensionality::<Ix2>().unwrap();
        let mut u = random(&[2, d], 1.0, 5).into_dimensionality::<Ix2>().unwrap();
        let mut b = random(&[2], 1.0, 6).into_dimensionality::<Ix1>().unwrap();
        let log_q: Vec<f64> = (0..n).map(|i| -0.5 - 0.3 * i as f64).collect();
        let out = gate_loss_and_grads(h.view(), &log_q, &targets(), &caches, u.view(), b.view(), 1.0);
        let (b0, h0) = (b.clone(), h.clone());
        assert_gradient("u", &mut u.view_mut().into_dyn(), &out.d_weight.clone().into_dyn(), |u| {
            let u = u.view().into_dimensionality::<Ix2>().unwrap();
            gate_loss_and_grads(h0.view(), &log_q, &targets(), &caches, u, b0.view(), 1.0).mean_nll
        });
        let u0 = u.clone();
        assert_gradient("b", &mut b.view_mut().into_dyn(), &out.d_bias.clone().into_dyn(), |b| {
            let b = b.view().into_dimensionality::<Ix1>().unwrap();
            gate_loss_and_grads(h0.view(), &log_q, &targets(), &caches, u0.view(), b, 1.0).mean_nll
        });
        // ∂h through the gates alone (ln q held fixed)
        let mix_z = gate_forward(h.view(), u.view(), b.view());
        let mix = mixture_forward(&log_q, mix_z.view(), &caches, &targets(), 1.0);
        let (d_z, _) = mixture_backward(&mix, 1.0 / n as f64);
        let (mut dh, mut du, mut db) = (Array2::zeros((n, d)), Array2::zeros((2, d)), Array1::zeros(2));
        gate_backward(d_z.view(), h.view(), u.view(), Some(dh.view_mut()), du.view_mut(), db.view_mut());
        assert_eq!(du, out.d_weight);
        assert_gradient("h", &mut h.view_mut().into_dyn(), &dh.into_dyn(), |h| {
            let h = h.view().into_dimensionality::<Ix2>().unwrap();
            gate_loss_and_grads(h, &log_q, &targets(), &caches, u0.view(), b0.view(), 1.0).mean_nll
        });
    }
}
