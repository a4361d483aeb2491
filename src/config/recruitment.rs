//! The `recruitment` section of a run (METHOD §7): every setting, its default and its checks.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

pub(super) fn default_candidates() -> usize {
    3
}

pub(super) fn default_cluster_vocabulary() -> usize {
    200
}

pub(super) fn default_cluster_size() -> usize {
    8
}

pub(super) fn default_split_tokens() -> usize {
    4096
}

pub(super) fn default_rule_within() -> Option<usize> {
    Some(32)
}

pub(super) fn default_noise_control() -> bool {
    true
}

pub(super) fn default_trial_learning_rate() -> f64 {
    3e-2
}

pub(super) fn default_min_recurrence() -> f64 {
    3.0
}

pub(super) fn default_min_count() -> usize {
    20
}

pub(super) fn default_measure_lambda() -> f64 {
    1.0
}

/// How a candidate is trialled (METHOD §7).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TrialKind {
    /// The block's copy path is added to the frozen model and only its gate trains; the saving is
    /// `L(D | M) − L(D | M + B)` with `M` unchanged.
    #[default]
    Frozen,
    /// The earlier design, kept for comparison: a copy of the whole model trains with the block's
    /// embedding and own-block rule beside a control (and a reversed control for the noise floor).
    CoTrained,
}

/// What a frozen check computes on the recruitment split `D` (METHOD §7).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SplitScoring {
    /// The model's prediction at every position of `D`: `L(D | M)` and `L(D | M + B)` themselves, for
    /// the decision log and the description length over time.
    #[default]
    EveryPosition,
    /// Only what the decision needs, `ΔL = L(D | M) − L(D | M + B)`, exactly: the output layer runs
    /// only at the positions where some candidate's cache holds the target, because everywhere else a
    /// path changes the code length by `ln B − ln(B + a)`, which needs no softmax. The same decisions
    /// at a fraction of the cost where the output layer dominates (a word vocabulary); the absolute
    /// code lengths are not known, so the decision log shows savings and costs only.
    SavingOnly,
}

/// The recruitment priors of a pipeline (`recruitment:`), METHOD §7–§8.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RecruitmentConfig {
    /// Steps between recruitment checks.
    pub check_every: usize,
    /// Training steps of every trial (the control's and each candidate's).
    pub trial_steps: usize,
    /// Bits a block must save beyond its cost.
    pub margin_bits: f64,
    /// Most blocks recruited in a run.
    pub max_blocks: usize,
    /// Candidates trialled per check (the most cohesive clusters, after every recruitable block).
    #[serde(default = "default_candidates")]
    pub candidates_per_check: usize,
    /// How many of the most frequent general-block tokens are clustered.
    #[serde(default = "default_cluster_vocabulary")]
    pub cluster_vocabulary: usize,
    /// Mean members per cluster (sets k), and the size a recruitable block grows to.
    #[serde(default = "default_cluster_size")]
    pub cluster_size: usize,
    /// Tokens of the recruitment split `D`, the end of the validation split.
    #[serde(default = "default_split_tokens")]
    pub split_tokens: usize,
    /// Bits per parameter in place of the BIC's `½ log2 N`.
    #[serde(default)]
    pub bits_per_parameter: Option<f64>,
    /// The window of a recruited block's own-block rule: members attend to members at most this many
    /// positions back (`null`: the whole context), so that a block's earlier use in another passage
    /// does not dilute its pointer.
    #[serde(default = "default_rule_within")]
    pub rule_within: Option<usize>,
    /// The layer whose head carries a recruited block's own-block rule (`null`: the last). Which head
    /// a pointer should take is an empirical question (`ailla trial --layer --head` measures it); the
    /// default leaves every other head to what the model already does with it.
    #[serde(default)]
    pub rule_layer: Option<usize>,
    /// The head, within `rule_layer`, that carries a recruited block's own-block rule.
    #[serde(default)]
    pub rule_head: usize,
    /// Train a second control on the same batches in reverse order, and require a block to save more
    /// than the two controls differ by: a saving inside the noise of training is no evidence.
    #[serde(default = "default_noise_control")]
    pub noise_control: bool,
    /// `frozen` (METHOD §7, the default) or `co_trained` (the earlier design, for comparison).
    #[serde(default)]
    pub trial: TrialKind,
    /// The window `w` of a recruited block's copy path, `any token copies from B within w` (`null`:
    /// the whole context).
    #[serde(default)]
    pub copy_within: Option<usize>,
    /// Distinct training batches a frozen trial's gate steps cycle over (`null`: one per step). Each
    /// costs one forward pass of the model per check, shared by every candidate.
    #[serde(default)]
    pub trial_batches: Option<usize>,
    /// Adam's step size for a frozen trial's gate.
    #[serde(default = "default_trial_learning_rate")]
    pub trial_learning_rate: f64,
    /// `λ_R`, the dial value at which a frozen trial trains its gate and measures `D` (METHOD §7).
    #[serde(default = "default_measure_lambda")]
    pub lambda: f64,
    /// Recurrent-token candidates (METHOD §7 item 2): keep general tokens with `ρ_v` at least this.
    #[serde(default = "default_min_recurrence")]
    pub min_recurrence: f64,
    /// … seen at least this many times in the training sample.
    #[serde(default = "default_min_count")]
    pub min_count: usize,
    /// Whether an admitted block's copy path keeps the gate its trial fitted to the frozen model, or
    /// joins the model shut (`u = 0`, `b = b₀`, the default) and trains with it from then on. On the
    /// planted corpus a path that starts open keeps the network from learning what the cache cannot
    /// say (which listed allergen is already confirmed): the run ends worse at every λ than one
    /// without recruitment, where a path that joins shut ends better (docs/recruitment.md §8).
    #[serde(default)]
    pub keep_trial_gate: bool,
    /// What a frozen check scores on `D`: `every_position` (the default) or `saving_only`.
    #[serde(default)]
    pub split_scoring: SplitScoring,
}

impl RecruitmentConfig {
    /// A run's priors, or for a run that set none (it may still carry recruited blocks, and
    /// `ailla trial` may still ask) every field at its default and trials of 100 steps.
    pub fn of_run(recruitment: Option<&RecruitmentConfig>) -> RecruitmentConfig {
        recruitment.cloned().unwrap_or_else(|| RecruitmentConfig::new(1, 100, 0.0, 1))
    }

    /// The four fields a pipeline must give; every other one at its default.
    pub fn new(check_every: usize, trial_steps: usize, margin_bits: f64, max_blocks: usize) -> Self {
        RecruitmentConfig {
            check_every,
            trial_steps,
            margin_bits,
            max_blocks,
            candidates_per_check: default_candidates(),
            cluster_vocabulary: default_cluster_vocabulary(),
            cluster_size: default_cluster_size(),
            split_tokens: default_split_tokens(),
            bits_per_parameter: None,
            rule_within: default_rule_within(),
            rule_layer: None,
            rule_head: 0,
            noise_control: default_noise_control(),
            trial: TrialKind::default(),
            copy_within: None,
            trial_batches: None,
            trial_learning_rate: default_trial_learning_rate(),
            lambda: default_measure_lambda(),
            min_recurrence: default_min_recurrence(),
            min_count: default_min_count(),
            keep_trial_gate: false,
            split_scoring: SplitScoring::default(),
        }
    }

    /// The distinct batches a frozen trial runs the model on.
    pub fn trial_batches(&self) -> usize {
        self.trial_batches.unwrap_or(self.trial_steps).clamp(1, self.trial_steps.max(1))
    }

    pub fn validate(&self) -> Result<()> {
        Error::require_counts([
            ("recruitment.check_every", self.check_every),
            ("recruitment.trial_steps", self.trial_steps),
            ("recruitment.max_blocks", self.max_blocks),
            ("recruitment.candidates_per_check", self.candidates_per_check),
            ("recruitment.cluster_size", self.cluster_size),
            ("recruitment.split_tokens", self.split_tokens),
        ])?;
        if self.cluster_vocabulary < 2 {
            return Err(Error::invalid("recruitment.cluster_vocabulary", "must be at least 2"));
        }
        Error::require_bits("recruitment.margin_bits", self.margin_bits, true)?;
        if !(self.lambda > 0.0 && self.lambda <= 1.0) {
            return Err(Error::invalid("recruitment.lambda", format!("λ_R = {} must lie in (0, 1]", self.lambda)));
        }
        if !(self.trial_learning_rate > 0.0 && self.trial_learning_rate.is_finite()) {
            return Err(Error::invalid("recruitment.trial_learning_rate", "must be a positive number"));
        }
        if !(self.min_recurrence > 0.0 && self.min_recurrence.is_finite()) {
            return Err(Error::invalid("recruitment.min_recurrence", "must be a positive number"));
        }
        if self.copy_within == Some(0) {
            return Err(Error::invalid("recruitment.copy_within", "must be at least 1 (a window of 0 copies nothing)"));
        }
        if self.trial_batches == Some(0) {
            return Err(Error::invalid("recruitment.trial_batches", "must be at least 1"));
        }
        match self.bits_per_parameter {
            Some(bits) => Error::require_bits("recruitment.bits_per_parameter", bits, false),
            None => Ok(()),
        }
    }

    /// Where a recruited block's own-block rule acts in a model of `layers` × `heads`, or which field
    /// names a layer or head the model does not have.
    pub fn placement(&self, layers: usize, heads: usize) -> Result<RulePlacement> {
        let layer = match self.rule_layer {
            Some(layer) => require_index("recruitment.rule_layer", layer, layers, "layers")?,
            None => layers.saturating_sub(1),
        };
        let head = require_index("recruitment.rule_head", self.rule_head, heads, "heads per layer")?;
        Ok(RulePlacement { layer, head, within: self.rule_within })
    }
}

/// Where a recruited block's own-block rule acts: one head of one layer, within a window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RulePlacement {
    pub layer: usize,
    pub head: usize,
    pub within: Option<usize>,
}

/// `index` if the model has it among its `count` `what` (numbered from 0), else an error naming `field`.
pub(crate) fn require_index(field: &str, index: usize, count: usize, what: &str) -> Result<usize> {
    if index < count {
        Ok(index)
    } else {
        Err(Error::invalid(field, format!("the model has {count} {what}, numbered from 0: {index} is not one of them")))
    }
}
