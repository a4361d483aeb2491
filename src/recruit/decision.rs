//! Candidates, their cost in bits (METHOD §7) and the decision a trial records.

use super::*;

/// `log2 C(n, k)`, through `ln Γ` so that vocabularies of any size stay exact to rounding.
pub fn log2_binomial(n: usize, k: usize) -> f64 {
    use statrs::function::gamma::ln_gamma;
    if k > n {
        return f64::INFINITY;
    }
    let (n, k) = (n as f64, k as f64);
    (ln_gamma(n + 1.0) - ln_gamma(k + 1.0) - ln_gamma(n - k + 1.0)) / std::f64::consts::LN_2
}

/// `cost(B)` of METHOD §7 in bits: which `members` of `vocab_size` entries, plus the `d` numbers of its
/// block embedding at `½ log2 N` bits each (or `bits_per_parameter`).
pub fn block_cost_bits(
    vocab_size: usize,
    members: usize,
    d_model: usize,
    split_tokens: usize,
    bits_per_parameter: Option<f64>,
) -> f64 {
    let per_parameter = bits_per_parameter.unwrap_or(0.5 * (split_tokens.max(2) as f64).log2());
    log2_binomial(vocab_size, members) + d_model as f64 * per_parameter
}

/// Where a candidate came from.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// A cluster of the model's token embeddings.
    Cluster,
    /// A `recruitable` block of the rules, grown from its seeds.
    Recruitable,
    /// Handed in by the caller (tests, and `ailla` users probing a block of their own).
    Given,
    /// General tokens that recur within the copy window far more often than their frequency predicts
    /// (METHOD §7 item 2), taken together or as one of their embedding clusters.
    Recurrent,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    pub name: String,
    pub origin: Origin,
    /// Sorted vocabulary ids.
    pub members: Vec<u32>,
}

/// One trial's verdict, as `metrics.jsonl` and the report keep it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
pub struct Decision {
    /// Training steps done when the check ran.
    pub step: usize,
    /// The block's name: the recruited name when accepted, a provisional label otherwise.
    pub candidate: String,
    pub origin: Origin,
    pub members: Vec<String>,
    /// `L(D | M)` (co-trained trials: `L(D | control)`, the split's code length after the trial steps
    /// without the block); absent when the check scored the saving alone (`split_scoring: saving_only`).
    pub bits_before: Option<f64>,
    /// `L(D | M + B)` (co-trained: with the block after the same steps); absent as `bits_before`.
    pub bits_after: Option<f64>,
    /// `bits_before − bits_after`, exact also where those two were not computed.
    pub saving_bits: f64,
    pub cost_bits: f64,
    pub margin_bits: f64,
    /// `|L(D | control) − L(D | control on the reversed batches)|`: how far two equally informed trainings
    /// land apart. A block must save more than cost, margin and this (0 when `noise_control` is off).
    #[serde(default)]
    pub noise_bits: f64,
    pub split_tokens: usize,
    pub accepted: bool,
    /// `DL(M, D)` of the model the run continues with, before and after this decision: data bits of the
    /// control plus the cost of every recruited block; absent where `bits_before` is. An admission
    /// changes it by `cost_bits − saving_bits` either way.
    pub description_length_before: Option<f64>,
    pub description_length_after: Option<f64>,
    /// How the candidate was trialled (decisions recorded before frozen trials were co-trained).
    #[serde(default = "co_trained")]
    pub trial: TrialKind,
    /// `log2 C(V, |B|)`: the membership part of `cost_bits` (frozen trials).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub membership_bits: Option<f64>,
    /// The parameters' part of `cost_bits` (frozen trials: the gate's `d + 1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameter_bits: Option<f64>,
    /// Positions of `D` where the copy path's cache held the target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copied_positions: Option<usize>,
    /// Bits saved at those positions (the rest of the saving, usually negative, is the gate's cost of
    /// opening where the cache does not hold the target).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saved_where_copied_bits: Option<f64>,
}

pub(super) fn co_trained() -> TrialKind {
    TrialKind::CoTrained
}

impl Decision {
    /// The verdict "not recruited", with the bits behind it; `description_length` is the run's before the
    /// check, which a rejection leaves as it was.
    pub(super) fn rejected(
        ctx: &CheckContext,
        candidate: &Candidate,
        (control_bits, noise_bits): (f64, f64),
        trial_bits: f64,
        cost_bits: f64,
        description_length: f64,
    ) -> Self {
        Decision {
            step: ctx.step,
            candidate: candidate.name.clone(),
            origin: candidate.origin,
            members: candidate.members.iter().map(|&m| ctx.vocabulary.tokens[m as usize].clone()).collect(),
            bits_before: Some(control_bits),
            bits_after: Some(trial_bits),
            saving_bits: control_bits - trial_bits,
            cost_bits,
            margin_bits: ctx.recruitment.margin_bits,
            noise_bits,
            split_tokens: ctx.split.len().saturating_sub(1),
            accepted: false,
            description_length_before: Some(description_length),
            description_length_after: Some(description_length),
            trial: TrialKind::CoTrained,
            membership_bits: None,
            parameter_bits: None,
            copied_positions: None,
            saved_where_copied_bits: None,
        }
    }

    pub fn saving_bits(&self) -> f64 {
        self.saving_bits
    }

    /// How this decision changed the description length: `cost − saving` for an admission, 0 else.
    pub fn description_length_change(&self) -> f64 {
        if self.accepted {
            self.cost_bits - self.saving_bits
        } else {
            0.0
        }
    }

    /// What the saving must exceed: cost, margin and the measured noise.
    pub fn required_bits(&self) -> f64 {
        self.cost_bits + self.margin_bits + self.noise_bits
    }

    /// Whether the block pays for itself: its saving exceeds cost, margin and noise.
    pub fn pays(&self) -> bool {
        self.saving_bits() > self.required_bits()
    }

    /// The verdict "recruited": the description length becomes the trial's code length plus the cost
    /// of every block, the already recruited ones (`recruited_cost`) and this one.
    pub(super) fn accept(&mut self, recruited_cost: f64) {
        self.accepted = true;
        self.description_length_after = self.bits_after.map(|bits| bits + recruited_cost + self.cost_bits);
    }
}
