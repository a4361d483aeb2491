//! Threshold conditions and bounds (METHOD §6), checked row by row on every evaluation.
//!
//! For a covered row with `m = |T_i|` targets, `n` other visible keys, learned log-odds `δ_i` (from the
//! unbiased logits), dial `λ`, margin `μ` and strength `s_r`:
//!
//! * exactly, `1 − F_i = σ(δ_i − λμs_r)`;
//! * `F_i ≥ 1 − ε ⇔ λ ≥ λ*_i(ε) = (δ_i + ln((1−ε)/ε)) / (μs_r)`;
//! * `H_i ≤ h₂(1 − F_i) + F_i·log₂ m + (1 − F_i)·log₂ n` bits;
//! * `1 − F_i ≤ e^{δ_i − λμs_r}`;
//! * with `R ≥ |s_ij/τ|` for the row, `δ_i ≤ 2R + ln(n/m)` (the weight-only certificate);
//! * the group-sparsity threshold: `λρ > 2U_i` leaves the row no stationary point with `0 < M < 1`.
//!
//! A row where an exact relation or a bound fails is counted as a violation: it would be a bug in the
//! engine, never a property of the model. Tolerances allow for `f32` arithmetic only.

use serde::{Deserialize, Serialize};

/// Absolute slack for probabilities computed in `f32` (a softmax over ≤ 2048 keys is good to ~1e-6).
pub const PROBABILITY_TOLERANCE: f64 = 1e-4;
/// Slack for entropies in bits.
pub const ENTROPY_TOLERANCE: f64 = 1e-3;

pub fn logistic(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// Binary entropy in bits.
pub fn binary_entropy(p: f64) -> f64 {
    let term = |q: f64| if q > 0.0 { -q * q.log2() } else { 0.0 };
    term(p) + term(1.0 - p)
}

/// One covered row as the bounds see it.
#[derive(Clone, Copy, Debug)]
pub struct RowObservation {
    pub fidelity: f64,
    pub entropy_bits: f64,
    pub targets: usize,
    pub others: usize,
    pub delta: f64,
    pub logit_range: f64,
    pub lambda: f64,
    pub margin: f64,
    pub strength: f64,
}

/// Which relations a row breaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RowViolations {
    pub identity: bool,
    pub threshold: bool,
    pub entropy: bool,
    pub exponential: bool,
    pub weight_only: bool,
}

impl RowViolations {
    pub fn any(&self) -> bool {
        self.identity || self.threshold || self.entropy || self.exponential || self.weight_only
    }
}

impl RowObservation {
    fn bias(&self) -> f64 {
        self.lambda * self.margin * self.strength
    }

    /// `λ*_i(ε)`; infinite when the margin is 0 (no λ reaches the fidelity).
    pub fn lambda_star(&self, epsilon: f64) -> f64 {
        let denominator = self.margin * self.strength;
        let numerator = self.delta + ((1.0 - epsilon) / epsilon).ln();
        if denominator > 0.0 {
            numerator / denominator
        } else if numerator <= 0.0 {
            0.0
        } else {
            f64::INFINITY
        }
    }

    /// `1 − F_i` predicted by the exact identity.
    pub fn predicted_off_target(&self) -> f64 {
        if self.others == 0 {
            0.0
        } else {
            logistic(self.delta - self.bias())
        }
    }

    pub fn entropy_bound(&self) -> f64 {
        let off = (1.0 - self.fidelity).clamp(0.0, 1.0);
        let log2 = |k: usize| if k > 0 { (k as f64).log2() } else { 0.0 };
        binary_entropy(off) + (1.0 - off) * log2(self.targets) + off * log2(self.others)
    }

    pub fn check(&self, epsilon: f64) -> RowViolations {
        let off = 1.0 - self.fidelity;
        let predicted = self.predicted_off_target();
        let slack = PROBABILITY_TOLERANCE + 1e-3 * predicted;
        let lambda_star = self.lambda_star(epsilon);
        let threshold = (self.lambda >= lambda_star + 1e-3 && self.fidelity < 1.0 - epsilon - slack)
            || (self.lambda <= lambda_star - 1e-3 && self.fidelity > 1.0 - epsilon + slack);
        let weight_only = self.others > 0
            && self.delta > 2.0 * self.logit_range + (self.others as f64 / self.targets as f64).ln() + 1e-6;
        RowViolations {
            identity: (off - predicted).abs() > slack,
            threshold,
            entropy: self.entropy_bits > self.entropy_bound() + ENTROPY_TOLERANCE,
            exponential: self.others > 0 && off > (self.delta - self.bias()).exp() + slack,
            weight_only,
        }
    }
}

/// Quantiles of a sample (nearest rank), for reports.
pub fn quantiles(values: &mut [f64], levels: &[f64]) -> Vec<f64> {
    values.sort_by(f64::total_cmp);
    levels
        .iter()
        .map(|&q| {
            if values.is_empty() {
                f64::NAN
            } else {
                values[((q * (values.len() - 1) as f64).round() as usize).min(values.len() - 1)]
            }
        })
        .collect()
}

/// Certificate figures of one evaluation.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Certificates {
    #[serde(deserialize_with = "crate::json_float::f64_or_nan")]
    pub epsilon: f64,
    pub rows: usize,
    /// `λ*_i(ε)` at the 50th, 90th, 99th percentiles and the maximum over rows.
    #[serde(deserialize_with = "crate::json_float::array4_or_nan")]
    pub lambda_star_quantiles: [f64; 4],
    /// Share of rows with `F_i ≥ 1 − ε`.
    #[serde(deserialize_with = "crate::json_float::f64_or_nan")]
    pub share_certified: f64,
    /// Largest `|s_ij/τ|` over covered rows: the `R` of the weight-only certificate.
    #[serde(deserialize_with = "crate::json_float::f64_or_nan")]
    pub logit_bound: f64,
    /// `max_i (2R + ln(n_i/m_i) + ln((1−ε)/ε)) / (μ s_r)`: a λ that guarantees `F_i ≥ 1 − ε` on every
    /// covered row from the weights' logit range alone.
    #[serde(deserialize_with = "crate::json_float::f64_or_nan")]
    pub weight_only_lambda: f64,
    /// Mean over rows of the entropy bound beside the observed mean entropy, in bits.
    #[serde(deserialize_with = "crate::json_float::f64_or_nan")]
    pub mean_entropy_bound_bits: f64,
    #[serde(deserialize_with = "crate::json_float::f64_or_nan")]
    pub mean_entropy_bits: f64,
    pub violations: ViolationCounts,
    /// Group-sparsity threshold (present when a backward pass ran): `U_i` quantiles (50, 90, 99, max),
    /// the λ above which every measured row is past its threshold (`2·max U_i/ρ`), and the share of
    /// rows with `λρ > 2U_i`.
    pub group_sparsity: Option<GroupSparsity>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct ViolationCounts {
    pub identity: usize,
    pub threshold: usize,
    pub entropy: usize,
    pub exponential: usize,
    pub weight_only: usize,
}

impl ViolationCounts {
    pub fn total(&self) -> usize {
        self.identity + self.threshold + self.entropy + self.exponential + self.weight_only
    }

    pub fn add(&mut self, v: RowViolations) {
        self.identity += usize::from(v.identity);
        self.threshold += usize::from(v.threshold);
        self.entropy += usize::from(v.entropy);
        self.exponential += usize::from(v.exponential);
        self.weight_only += usize::from(v.weight_only);
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct GroupSparsity {
    pub rows: usize,
    #[serde(deserialize_with = "crate::json_float::array4_or_nan")]
    pub u_quantiles: [f64; 4],
    #[serde(deserialize_with = "crate::json_float::f64_or_nan")]
    pub lambda_threshold: f64,
    #[serde(deserialize_with = "crate::json_float::f64_or_nan")]
    pub share_above_threshold: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(delta: f64, lambda: f64, targets: usize, others: usize) -> RowObservation {
        let mut r = RowObservation {
            fidelity: 0.0,
            entropy_bits: 0.0,
            targets,
            others,
            delta,
            logit_range: 10.0,
            lambda,
            margin: 4.0,
            strength: 1.0,
        };
        r.fidelity = 1.0 - r.predicted_off_target();
        r
    }

    #[test]
    fn threshold_lambda_gives_exactly_the_target_fidelity() {
        let epsilon = 0.05;
        let probe = row(1.3, 0.0, 2, 5);
        let star = probe.lambda_star(epsilon);
        let at_star = row(1.3, star, 2, 5);
        assert!((at_star.fidelity - (1.0 - epsilon)).abs() < 1e-12);
        assert!(!at_star.check(epsilon).any());
    }

    #[test]
    fn entropy_bound_is_attained_by_uniform_rows() {
        // uniform within targets and within non-targets attains the bound with equality
        let (m, n, off) = (3usize, 5usize, 0.2f64);
        let entropy = -(m as f64) * ((1.0 - off) / m as f64) * ((1.0 - off) / m as f64).log2()
            - (n as f64) * (off / n as f64) * (off / n as f64).log2();
        let mut r = row(0.0, 0.0, m, n);
        r.fidelity = 1.0 - off;
        assert!((r.entropy_bound() - entropy).abs() < 1e-12);
        r.entropy_bits = entropy;
        assert!(!r.check(0.1).entropy);
        r.entropy_bits = entropy + 0.01;
        assert!(r.check(0.1).entropy, "an entropy above the bound must be flagged");
    }

    #[test]
    fn exponential_bound_is_tight_for_large_margins_and_identity_catches_errors() {
        let r = row(0.5, 1.0, 1, 4);
        let bound = (r.delta - r.bias()).exp();
        let off = 1.0 - r.fidelity;
        assert!(off <= bound && (bound - off) / bound < 0.05);
        let mut wrong = r;
        wrong.fidelity -= 0.01;
        assert!(wrong.check(0.05).identity);
    }

    #[test]
    fn weight_only_certificate_bounds_delta() {
        // all logits in [−R, R] ⇒ δ ≤ 2R + ln(n/m): the extreme case meets it with equality
        let (r_bound, m, n) = (1.5f64, 2usize, 6usize);
        let delta = ((n as f64) * r_bound.exp() / ((m as f64) * (-r_bound).exp())).ln();
        let mut obs = row(delta, 0.0, m, n);
        obs.logit_range = r_bound;
        assert!(!obs.check(0.1).weight_only);
        obs.delta += 1e-3;
        assert!(obs.check(0.1).weight_only);
    }

    #[test]
    fn quantiles_pick_nearest_ranks() {
        let mut v: Vec<f64> = (0..101).map(|x| x as f64).rev().collect();
        assert_eq!(quantiles(&mut v, &[0.5, 0.9, 1.0]), vec![50.0, 90.0, 100.0]);
    }
}
