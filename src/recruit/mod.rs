//! Recruitment of semantic blocks during training (METHOD §7), decided in bits.
//!
//! Every `check_every` steps candidates are proposed — clusters of the model's own embeddings of
//! frequent general-block tokens, and `recruitable` blocks of the rules grown from their seeds by
//! embedding similarity — and each is trialled: a copy of the model gains the block (a zero block
//! embedding and the block's own-block rule) and trains `trial_steps` on the batches the run would train
//! on next. A **control** copy trains the same steps without any new block, so that the comparison credits
//! the block and not the extra training. With `D` the recruitment split (the tail of the validation split):
//!
//! ```text
//! saving(B) = L(D | control) − L(D | with B)                        [bits]
//! accept  ⇔ saving(B) > cost(B) + margin_bits
//! cost(B) = log2 C(V, |B|) + (d/2)·log2 |D|   (or d · bits_per_parameter)
//! ```
//!
//! At most one block is accepted per check, the one with the largest net saving; the run then continues
//! from that trial's weights (its steps are the run's next steps). When nothing is accepted the run
//! continues from its exact pre-trial state: trials work on copies.

pub mod copy_check;
pub mod domains;
pub mod frozen;
pub mod kmeans;
pub mod probe;
pub mod recurrent;

use std::time::Instant;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::data::Vocabulary;
use crate::engine::optim::AdamW;
use crate::engine::Model;
use crate::locality::rules::{Block, BlockSpec, RuleEntrySpec, RuleKindSpec};
use crate::locality::schedule::per_layer;
use crate::locality::{BatchTargets, LambdaSchedule, LocalityHook, RuleSet, RuleSpec};
use crate::train::{eval_batches, step_gradients, LocalityConfig, TrainConfig};
use crate::{Error, Result};

fn default_candidates() -> usize {
    3
}
fn default_cluster_vocabulary() -> usize {
    200
}
fn default_cluster_size() -> usize {
    8
}
fn default_split_tokens() -> usize {
    4096
}
fn default_rule_within() -> Option<usize> {
    Some(32)
}
fn default_noise_control() -> bool {
    true
}
fn default_trial_learning_rate() -> f64 {
    3e-2
}
fn default_min_recurrence() -> f64 {
    3.0
}
fn default_min_count() -> usize {
    20
}
fn default_measure_lambda() -> f64 {
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

/// The name of the copy rule a recruited block brings, `"<block> is copied (recruited)"`; the gate of
/// the model's copy path carries the same name.
pub const RECRUITED_COPY_SUFFIX: &str = " is copied (recruited)";

pub fn recruited_copy_rule_name(block: &str) -> String {
    format!("{block}{RECRUITED_COPY_SUFFIX}")
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

/// `index` if the model has it among its `count` `what` (numbered from 0), else an error naming `field`.
pub(crate) fn require_index(field: &str, index: usize, count: usize, what: &str) -> Result<usize> {
    if index < count {
        Ok(index)
    } else {
        Err(Error::invalid(field, format!("the model has {count} {what}, numbered from 0: {index} is not one of them")))
    }
}

/// Where a recruited block's own-block rule acts: one head of one layer, within a window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RulePlacement {
    pub layer: usize,
    pub head: usize,
    pub within: Option<usize>,
}

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
    /// `L(D | control)`: the split's code length after the trial steps without the block.
    pub bits_before: f64,
    /// `L(D | with the block)` after the same steps.
    pub bits_after: f64,
    pub cost_bits: f64,
    pub margin_bits: f64,
    /// `|L(D | control) − L(D | control on the reversed batches)|`: how far two equally informed trainings
    /// land apart. A block must save more than cost, margin and this (0 when `noise_control` is off).
    #[serde(default)]
    pub noise_bits: f64,
    pub split_tokens: usize,
    pub accepted: bool,
    /// `DL(M, D)` of the model the run continues with, before and after this decision: data bits of the
    /// control plus the cost of every recruited block.
    pub description_length_before: f64,
    pub description_length_after: f64,
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

fn co_trained() -> TrialKind {
    TrialKind::CoTrained
}

impl Decision {
    /// The verdict "not recruited", with the bits behind it; `description_length` is the run's before the
    /// check, which a rejection leaves as it was.
    fn rejected(
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
            bits_before: control_bits,
            bits_after: trial_bits,
            cost_bits,
            margin_bits: ctx.recruitment.margin_bits,
            noise_bits,
            split_tokens: ctx.split.len().saturating_sub(1),
            accepted: false,
            description_length_before: description_length,
            description_length_after: description_length,
            trial: TrialKind::CoTrained,
            membership_bits: None,
            parameter_bits: None,
            copied_positions: None,
            saved_where_copied_bits: None,
        }
    }

    pub fn saving_bits(&self) -> f64 {
        self.bits_before - self.bits_after
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
    fn accept(&mut self, recruited_cost: f64) {
        self.accepted = true;
        self.description_length_after = self.bits_after + recruited_cost + self.cost_bits;
    }
}

/// What a check needs from the run.
pub struct CheckContext<'a> {
    pub config: &'a TrainConfig,
    pub recruitment: &'a RecruitmentConfig,
    pub locality: &'a LocalityConfig,
    /// The rules in force, recruited blocks included.
    pub spec: &'a RuleSpec,
    pub set: &'a RuleSet,
    pub vocabulary: &'a Vocabulary,
    pub train_ids: &'a [u32],
    /// The recruitment split `D`.
    pub split: &'a [u32],
    /// Training steps done.
    pub step: usize,
}

/// A trial's result: its weights and optimizer, the split's code length, and its training records.
pub struct Trial {
    pub model: Model<f32>,
    pub optimizer: AdamW<f32>,
    pub bits: f64,
    /// The split's bits position by position (`bits` is their sum).
    pub bits_by_position: Vec<f64>,
    /// `(step, loss, penalty, λ, learning rate, gradient norm)` of every trial step.
    pub steps: Vec<(usize, f64, f64, f64, f64, f64)>,
}

pub struct CheckOutcome {
    pub decisions: Vec<Decision>,
    /// The accepted candidate's trial, with the spec that now includes its block.
    pub accepted: Option<(Trial, RuleSpec)>,
    /// Copies trained, controls included.
    pub trials: usize,
    pub seconds: f64,
}

/// The recruitment split: the last `tokens + 1` ids of the validation split.
pub fn split_of(valid: &[u32], tokens: usize) -> &[u32] {
    &valid[valid.len().saturating_sub(tokens + 1)..]
}

/// The λ at which code lengths are measured: the schedule's at this step, or the middle of a uniform
/// draw (dial training serves every λ; its centre is the one it is trained at on average).
pub fn measuring_lambda(schedule: &LambdaSchedule, step: usize, seed: u64) -> f64 {
    match schedule {
        LambdaSchedule::Uniform { low, high } => 0.5 * (low + high),
        other => other.at(step, seed),
    }
}

/// The bits of every predicted token of `ids` (`ids[p + 1]` given `ids[..=p]` within its window), in
/// order, at dial value `lambda` under `set`: their sum is `L(ids | model)`, and where a block's saving
/// comes from is read off them.
pub fn code_lengths(
    model: &Model<f32>,
    ids: &[u32],
    set: &RuleSet,
    locality: &LocalityConfig,
    lambda: f64,
    batch: usize,
) -> Vec<f64> {
    let (layers, heads) = (model.config.n_layers, model.config.n_heads);
    let mut bits = Vec::with_capacity(ids.len().saturating_sub(1));
    for b in eval_batches(ids, model.config.ctx_len, batch) {
        let targets = BatchTargets::new(set, &b.inputs, b.windows, b.seq_len, layers, heads);
        let hook =
            LocalityHook::new(&targets, per_layer(lambda, layers, locality.progressive_beta), locality.dial, false);
        let cache = model.forward(&b.inputs, b.windows, b.seq_len, &hook);
        let nll = model.output_loss(&cache, &b.targets, false, None).nll;
        bits.extend(nll.iter().map(|&v| f64::from(v) / std::f64::consts::LN_2));
    }
    bits
}

/// `spec` with the block `name` of `members` (replacing a `recruitable` block of that name).
fn with_block(spec: &RuleSpec, name: &str, members: &[u32], vocabulary: &Vocabulary, copy_only: bool) -> RuleSpec {
    let mut out = spec.clone();
    let words: Vec<String> = members.iter().filter_map(|&m| vocabulary.tokens.get(m as usize).cloned()).collect();
    let block = BlockSpec {
        name: name.to_string(),
        words,
        patterns: Vec::new(),
        anchors: Vec::new(),
        ignore_case: false,
        recruitable: false,
        copy_only,
    };
    match out.blocks.iter_mut().find(|b| b.name == name) {
        Some(existing) => *existing = block,
        None => out.blocks.push(block),
    }
    out
}

/// `spec` with a recruited block: a `recruitable` block of the same name is replaced by it. Its own-block
/// rule acts on one head (by default the last layer's first): a recruited block gains a pointer head
/// rather than taking every head of every layer away from what the model already does with them.
pub fn spec_with_block(
    spec: &RuleSpec,
    name: &str,
    members: &[u32],
    vocabulary: &Vocabulary,
    placement: RulePlacement,
) -> RuleSpec {
    let mut out = with_block(spec, name, members, vocabulary, false);
    out.rules.push(RuleEntrySpec {
        name: format!("{name} attends to its own block (recruited)"),
        kind: RuleKindSpec::OwnBlock { block: name.to_string() },
        layers: Some(vec![placement.layer]),
        heads: Some(vec![placement.head]),
        within: placement.within,
        strength: 1.0,
        priority: 0,
        from_step: None,
        until_step: None,
        copy: false,
    });
    out
}

/// `spec` with a block recruited for its copy path (METHOD §7): the block, and the copy rule
/// `any token copies from B within w` whose path the model gains under the same name.
pub fn spec_with_copy_block(
    spec: &RuleSpec,
    name: &str,
    members: &[u32],
    vocabulary: &Vocabulary,
    within: Option<usize>,
) -> RuleSpec {
    let mut out = with_block(spec, name, members, vocabulary, true);
    out.rules.push(RuleEntrySpec {
        name: recruited_copy_rule_name(name),
        kind: RuleKindSpec::AnyToBlock { to: name.to_string() },
        layers: None,
        heads: None,
        within,
        strength: 1.0,
        priority: 0,
        from_step: None,
        until_step: None,
        copy: true,
    });
    out
}

/// The blocks a run recruited for their copy paths: `(block, copy rule)` pairs of its spec.
pub fn recruited_copy_blocks(spec: &RuleSpec) -> Vec<(&BlockSpec, &RuleEntrySpec)> {
    spec.rules
        .iter()
        .filter(|rule| rule.copy && rule.name.ends_with(RECRUITED_COPY_SUFFIX))
        .filter_map(|rule| match &rule.kind {
            RuleKindSpec::AnyToBlock { to } => spec.blocks.iter().find(|b| &b.name == to).map(|b| (b, rule)),
            _ => None,
        })
        .collect()
}

/// Blocks a run has recruited, of either kind: what `max_blocks` bounds.
pub fn recruited_count(model: &Model<f32>, spec: &RuleSpec) -> usize {
    model.config.recruited_blocks.len() + recruited_copy_blocks(spec).len()
}

/// The blocks recruited for their copy paths as a `.rules` snippet an expert can edit and pin, each
/// with its copy rule and the bits that admitted it.
pub fn copy_rules_snippet(spec: &RuleSpec, decisions: &[Decision]) -> String {
    let mut out = String::from(
        "# Blocks recruited by ailla during training (METHOD §7), each with the copy path that paid for it:\n\
         # it saved more bits on the recruitment split than it costs. Edit the members and include this\n\
         # file to pin them as ordinary blocks and copy rules.\n",
    );
    for (block, rule) in recruited_copy_blocks(spec) {
        let words: Vec<String> = block.words.iter().map(|w| crate::dsl::format::word(w)).collect();
        if let Some(d) = decisions.iter().find(|d| d.accepted && d.candidate == block.name) {
            out += &format!(
                "\n# step {}: saved {:.1} bits on {} tokens ({:.1} where the cache held the target); cost {:.1} bits \
                 (membership {:.1}, gate {:.1}), margin {:.1} bits\n",
                d.step,
                d.saving_bits(),
                d.split_tokens,
                d.saved_where_copied_bits.unwrap_or(f64::NAN),
                d.cost_bits,
                d.membership_bits.unwrap_or(f64::NAN),
                d.parameter_bits.unwrap_or(f64::NAN),
                d.margin_bits
            );
        } else {
            out.push('\n');
        }
        out += &crate::dsl::format::render_block(&block.name, false, false, &words, &[]);
        out.push('\n');
        let within = rule.within.map_or(String::new(), |w| format!("\n    within {w}"));
        out += &format!("\nrule {}:\n    copy from {}{within}\n", crate::dsl::format::quote(&rule.name), block.name);
    }
    out
}

/// `spec` with every block the model recruited (a resumed run rebuilds its rules this way).
pub fn spec_with_recruited(
    spec: &RuleSpec,
    model: &Model<f32>,
    vocabulary: &Vocabulary,
    placement: RulePlacement,
) -> RuleSpec {
    model
        .config
        .recruited_blocks
        .iter()
        .fold(spec.clone(), |s, block| spec_with_block(&s, &block.name, &block.members, vocabulary, placement))
}

/// Tokens that may join a new block: not special, in no block, not recruited.
pub(crate) fn free_tokens(set: &RuleSet, model: &Model<f32>, vocabulary: &Vocabulary) -> Vec<u32> {
    let lookup = model.config.block_lookup();
    (0..vocabulary.len() as u32)
        .filter(|&t| {
            let token = &vocabulary.tokens[t as usize];
            let special = token == crate::data::tokenizer::UNK || token == crate::data::tokenizer::EOS;
            !special && set.block_of_token(t) == 0 && lookup.get(t as usize).is_none_or(|&k| k == 0)
        })
        .collect()
}

/// The candidates of a check: every recruitable block not yet grown, then the most cohesive clusters.
pub fn propose(ctx: &CheckContext, model: &Model<f32>) -> Vec<Candidate> {
    let r = ctx.recruitment;
    // the vocabulary is ordered by frequency, so the first free ids are the most frequent
    let frequent: Vec<u32> =
        free_tokens(ctx.set, model, ctx.vocabulary).into_iter().take(r.cluster_vocabulary).collect();
    let rows: Vec<usize> = frequent.iter().map(|&t| t as usize).collect();
    let embeddings = model.params.tok_emb.select(ndarray::Axis(0), &rows);
    let unit = kmeans::normalized(embeddings.view());
    let mut candidates = Vec::new();
    let recruited: Vec<&str> = model.config.recruited_blocks.iter().map(|b| b.name.as_str()).collect();
    for block in ctx.set.blocks.iter().filter(|b| b.recruitable && !recruited.contains(&b.name.as_str())) {
        if block.members.is_empty() || frequent.is_empty() {
            continue;
        }
        // grow from the seeds' mean direction
        let seeds = model
            .params
            .tok_emb
            .select(ndarray::Axis(0), &block.members.iter().map(|&m| m as usize).collect::<Vec<_>>());
        let seed_unit = kmeans::normalized(seeds.view());
        let centre = seed_unit.sum_axis(ndarray::Axis(0));
        let similarity = unit.dot(&centre);
        let mut order: Vec<usize> = (0..frequent.len()).collect();
        order.sort_by(|&a, &b| similarity[b].total_cmp(&similarity[a]).then(a.cmp(&b)));
        let grow = r.cluster_size.saturating_sub(block.members.len());
        let mut members: Vec<u32> = block.members.clone();
        members.extend(order.iter().take(grow).map(|&i| frequent[i]));
        members.sort_unstable();
        candidates.push(Candidate { name: block.name.clone(), origin: Origin::Recruitable, members });
    }
    if frequent.len() >= 4 {
        let k = (frequent.len() / r.cluster_size).max(2);
        let assignment = kmeans::cluster(&unit, k, 25, ctx.config.seed ^ ctx.step as u64);
        // a cluster counts by how much tighter than the frequent tokens at large it is, and by its size
        // (√n: a big tight group says more than a pair)
        let background = kmeans::cohesion(&unit, &(0..frequent.len()).collect::<Vec<_>>());
        let mut clusters: Vec<(f64, Vec<usize>)> = (0..k)
            .map(|c| (0..frequent.len()).filter(|&i| assignment[i] == c).collect::<Vec<_>>())
            .filter(|members| members.len() >= 2)
            .map(|members| ((kmeans::cohesion(&unit, &members) - background) * (members.len() as f64).sqrt(), members))
            .collect();
        clusters.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        for (index, (_, members)) in clusters.into_iter().take(r.candidates_per_check).enumerate() {
            let mut ids: Vec<u32> = members.iter().map(|&i| frequent[i]).collect();
            ids.sort_unstable();
            candidates.push(Candidate {
                name: format!("cluster-{}-{}", ctx.step, index + 1),
                origin: Origin::Cluster,
                members: ids,
            });
        }
    }
    candidates
}

/// Trains a copy of `model` for the trial's steps, with `candidate`'s block added when given, and
/// measures the recruitment split. The copy shares nothing with `model`.
pub fn trial(
    ctx: &CheckContext,
    model: &Model<f32>,
    optimizer: &AdamW<f32>,
    candidate: Option<&Candidate>,
) -> Result<Trial> {
    train_copy(ctx, model, optimizer, candidate, false)
}

/// A second control: the same model trained on the same batches (each with its own λ) in the reverse
/// order. Its code length differs from the control's only by the path training took, never by what it
/// saw, so their difference is a measured noise floor for the check's savings.
pub fn reversed_control(ctx: &CheckContext, model: &Model<f32>, optimizer: &AdamW<f32>) -> Result<Trial> {
    train_copy(ctx, model, optimizer, None, true)
}

fn train_copy(
    ctx: &CheckContext,
    model: &Model<f32>,
    optimizer: &AdamW<f32>,
    candidate: Option<&Candidate>,
    reversed: bool,
) -> Result<Trial> {
    let mut model = model.clone();
    let mut optimizer = optimizer.clone();
    let with_block;
    let set: &RuleSet = match candidate {
        Some(c) => {
            model.add_block(&c.name, &c.members)?;
            optimizer.grow_to(&model.params);
            let placement = ctx.recruitment.placement(model.config.n_layers, model.config.n_heads)?;
            let spec = spec_with_block(ctx.spec, &c.name, &c.members, ctx.vocabulary, placement);
            with_block = RuleSet::compile(&spec, ctx.vocabulary)?.0;
            &with_block
        }
        None => ctx.set,
    };
    let config = ctx.config;
    let last = (ctx.step + ctx.recruitment.trial_steps).min(config.steps);
    let mut steps = Vec::new();
    for step in ctx.step..last {
        // the batch (and its λ) of step `batch_step`; the learning rate stays the step's own
        let batch_step = if reversed { last - 1 - (step - ctx.step) } else { step };
        let (loss, penalty, grads, lambda) =
            step_gradients(&model, config, Some((ctx.locality, set)), ctx.train_ids, batch_step);
        let learning_rate = config.optim.learning_rate_at(step, config.steps);
        let grad_norm = optimizer.update(&mut model.params, &grads, &config.optim, learning_rate);
        steps.push((step + 1, f64::from(loss), f64::from(penalty), lambda, learning_rate, grad_norm));
    }
    let lambda = measuring_lambda(&ctx.locality.schedule, ctx.step, config.seed);
    let bits_by_position = code_lengths(&model, ctx.split, set, ctx.locality, lambda, config.batch_size);
    let bits = bits_by_position.iter().sum();
    Ok(Trial { model, optimizer, bits, bits_by_position, steps })
}

/// A readable block name from its members' most informative anchors (METHOD §2): `recruited_a_b`.
pub fn block_name(members: &[u32], vocabulary: &Vocabulary, ids: &[u32], taken: &[String]) -> String {
    let block = Block { name: "candidate".into(), members: members.to_vec(), anchors: Vec::new(), recruitable: false };
    let anchors = RuleSet::new(vocabulary.len(), vec![block], Vec::new())
        .ok()
        .and_then(|set| crate::dsl::anchors::score(&set, vocabulary, ids, 8, 2, 0.0).into_iter().next())
        .map(|b| b.chosen)
        .unwrap_or_default();
    let words: Vec<String> = anchors
        .iter()
        .map(|a| {
            a.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect::<String>()
        })
        .map(|w| w.trim_matches('_').to_string())
        .filter(|w| !w.is_empty())
        .collect();
    let stem = if words.is_empty() { "recruited".to_string() } else { format!("recruited_{}", words.join("_")) };
    let mut name = stem.clone();
    let mut n = 2;
    while taken.contains(&name) {
        name = format!("{stem}_{n}");
        n += 1;
    }
    name
}

/// The name an accepted candidate joins the rules under: a recruitable block keeps its own, any
/// other is named from its anchors.
pub fn recruited_name(ctx: &CheckContext, candidate: &Candidate) -> String {
    if candidate.origin == Origin::Recruitable {
        return candidate.name.clone();
    }
    let taken: Vec<String> = ctx.spec.blocks.iter().map(|b| b.name.clone()).collect();
    let sample = &ctx.train_ids[..ctx.train_ids.len().min(200_000)];
    block_name(&candidate.members, ctx.vocabulary, sample, &taken)
}

/// Runs one recruitment check on the run's current state. `extra` candidates (if any) are trialled
/// beside the proposed ones.
pub fn check(
    ctx: &CheckContext,
    model: &Model<f32>,
    optimizer: &AdamW<f32>,
    extra: &[Candidate],
) -> Result<CheckOutcome> {
    let started = Instant::now();
    let mut candidates = propose(ctx, model);
    candidates.extend(extra.iter().cloned());
    let trialled = trial_all(ctx, model, optimizer, &candidates)?;
    let mut outcome = decide(ctx, model, &candidates, trialled)?;
    outcome.seconds = started.elapsed().as_secs_f64();
    Ok(outcome)
}

/// The verdicts of a check on its trials (`trialled.candidates[i]` is `candidates[i]`'s). Of the blocks
/// that pay, the one with the largest saving net of its cost is accepted: it is named (from its anchors,
/// unless a recruitable block brought its name), and the rules gain it with its own-block rule.
pub fn decide(
    ctx: &CheckContext,
    model: &Model<f32>,
    candidates: &[Candidate],
    trialled: Trialled,
) -> Result<CheckOutcome> {
    let placement = ctx.recruitment.placement(model.config.n_layers, model.config.n_heads)?;
    let judged = judge(ctx, model, candidates, trialled);
    let recruited_cost = judged.recruited_cost;
    // decisions[k] is the verdict on kept[k] = (candidate index, its trial)
    let mut decisions = Vec::new();
    let mut kept = Vec::new();
    let mut best: Option<(usize, f64)> = None;
    for (index, verdict) in judged.verdicts.into_iter().enumerate() {
        // a candidate whose members were all taken by recruited blocks cannot be trialled: left out
        let Ok((decision, trial)) = verdict else { continue };
        let net = decision.saving_bits() - decision.cost_bits;
        if decision.pays() && best.is_none_or(|(_, best_net)| net > best_net) {
            best = Some((kept.len(), net));
        }
        decisions.push(decision);
        kept.push((index, trial));
    }
    let accepted = best.map(|(k, _)| {
        let (index, mut trial) = kept.swap_remove(k);
        let candidate = &candidates[index];
        let name = recruited_name(ctx, candidate);
        // the trial named its block provisionally; the run keeps the anchor-derived name
        if let Some(block) = trial.model.config.recruited_blocks.last_mut() {
            block.name = name.clone();
        }
        let spec = spec_with_block(ctx.spec, &name, &candidate.members, ctx.vocabulary, placement);
        let decision = &mut decisions[k];
        decision.candidate = name;
        decision.accept(recruited_cost);
        (trial, spec)
    });
    Ok(CheckOutcome { decisions, accepted, trials: judged.trials, seconds: 0.0 })
}

/// A check's trials with every candidate judged on its own against the control.
pub(crate) struct Judged {
    pub control: Trial,
    /// The cost of the blocks the model already has, part of every description length.
    pub recruited_cost: f64,
    /// Copies trained, controls included.
    pub trials: usize,
    /// `candidates[i]`'s verdict, "not recruited" until [`Decision::accept`], with its trial; an error
    /// where it could not be trialled.
    pub verdicts: Vec<Result<(Decision, Trial)>>,
}

pub(crate) fn judge(ctx: &CheckContext, model: &Model<f32>, candidates: &[Candidate], trialled: Trialled) -> Judged {
    let Trialled { control, noise_bits, candidates: trials_of, trials } = trialled;
    let recruited_cost: f64 = model.config.recruited_blocks.iter().map(|b| cost_of(ctx, model, b.members.len())).sum();
    let before = control.bits + recruited_cost;
    let verdicts = candidates
        .iter()
        .zip(trials_of)
        .map(|(candidate, result)| {
            let trial = result?;
            let cost = cost_of(ctx, model, candidate.members.len());
            Ok((Decision::rejected(ctx, candidate, (control.bits, noise_bits), trial.bits, cost, before), trial))
        })
        .collect();
    Judged { control, recruited_cost, trials, verdicts }
}

/// The trials of one check: the control, the noise floor, and each candidate's trial (an error for a
/// candidate that cannot be trialled).
pub struct Trialled {
    pub control: Trial,
    /// `|L(control) − L(reversed control)|`, or 0 when `noise_control` is off.
    pub noise_bits: f64,
    pub candidates: Vec<Result<Trial>>,
    /// Copies trained, controls included.
    pub trials: usize,
}

/// Trains the control, the reversed control (when asked for) and every candidate's copy side by side:
/// they are independent copies of the same state.
pub fn trial_all(
    ctx: &CheckContext,
    model: &Model<f32>,
    optimizer: &AdamW<f32>,
    candidates: &[Candidate],
) -> Result<Trialled> {
    enum Run<'a> {
        Control,
        Reversed,
        Block(&'a Candidate),
    }
    let noise = ctx.recruitment.noise_control;
    let runs: Vec<Run> = std::iter::once(Run::Control)
        .chain(noise.then_some(Run::Reversed))
        .chain(candidates.iter().map(Run::Block))
        .collect();
    let trials = runs.len();
    let mut results = runs
        .par_iter()
        .map(|run| match run {
            Run::Control => trial(ctx, model, optimizer, None),
            Run::Reversed => reversed_control(ctx, model, optimizer),
            Run::Block(c) => trial(ctx, model, optimizer, Some(c)),
        })
        .collect::<Vec<_>>()
        .into_iter();
    let control = results.next().ok_or_else(|| Error::invalid("recruitment", "no control trial"))??;
    let noise_bits = if noise {
        let reversed = results.next().ok_or_else(|| Error::invalid("recruitment", "no reversed control"))??;
        (control.bits - reversed.bits).abs()
    } else {
        0.0
    };
    Ok(Trialled { control, noise_bits, candidates: results.collect(), trials })
}

fn cost_of(ctx: &CheckContext, model: &Model<f32>, members: usize) -> f64 {
    block_cost_bits(
        ctx.vocabulary.len(),
        members,
        model.config.d_model,
        ctx.split.len().saturating_sub(1),
        ctx.recruitment.bits_per_parameter,
    )
}

/// The recruited blocks as a `.rules` snippet an expert can edit and pin (include it, or paste it),
/// each with the bits that admitted it.
pub fn rules_snippet(model: &Model<f32>, vocabulary: &Vocabulary, decisions: &[Decision]) -> String {
    let mut out = String::from(
        "# Blocks recruited by ailla during training (METHOD §7). Each saved more bits on the recruitment\n\
         # split than it costs; edit the members and include this file to pin them as ordinary blocks.\n",
    );
    for block in &model.config.recruited_blocks {
        let words: Vec<String> = block
            .members
            .iter()
            .filter_map(|&m| vocabulary.tokens.get(m as usize))
            .map(|w| crate::dsl::format::word(w))
            .collect();
        if let Some(d) = decisions.iter().find(|d| d.accepted && d.candidate == block.name) {
            out += &format!(
                "\n# step {}: saved {:.1} bits on {} tokens; cost {:.1} bits, margin {:.1} bits, noise {:.1} bits\n",
                d.step,
                d.saving_bits(),
                d.split_tokens,
                d.cost_bits,
                d.margin_bits,
                d.noise_bits
            );
        } else {
            out.push('\n');
        }
        out += &crate::dsl::format::render_block(&block.name, false, false, &words, &[]);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binomial_code_lengths_match_small_cases_and_symmetry() {
        assert!((log2_binomial(10, 3) - 120f64.log2()).abs() < 1e-9);
        assert!((log2_binomial(50_000, 7) - log2_binomial(50_000, 49_993)).abs() < 1e-6);
        assert!(log2_binomial(5, 0).abs() < 1e-9);
        // the membership code plus d/2·log2 N
        let cost = block_cost_bits(10, 3, 4, 1024, None);
        assert!((cost - (120f64.log2() + 4.0 * 5.0)).abs() < 1e-9);
        assert!((block_cost_bits(10, 3, 4, 1024, Some(1.0)) - (120f64.log2() + 4.0)).abs() < 1e-9);
    }

    #[test]
    fn a_recruited_rule_acts_on_the_head_the_priors_name_and_a_missing_head_is_refused() {
        let mut priors = RecruitmentConfig::new(10, 5, 0.0, 1);
        let default = priors.placement(3, 4).unwrap();
        assert_eq!((default.layer, default.head, default.within), (2, 0, Some(32)));
        assert_eq!(default, RecruitmentConfig::of_run(None).placement(3, 4).unwrap());
        priors.rule_layer = Some(0);
        priors.rule_head = 3;
        let placement = priors.placement(3, 4).unwrap();
        assert_eq!((placement.layer, placement.head), (0, 3));

        let vocabulary = Vocabulary::from_tokens(
            crate::data::TokenizerKind::Word,
            ["<unk>", "<eos>", "latex", "soy"].map(String::from).to_vec(),
        );
        let spec = RuleSpec { blocks: Vec::new(), rules: Vec::new(), own_block_default: true };
        let with = spec_with_block(&spec, "allergens", &[2, 3], &vocabulary, placement);
        assert_eq!(with.blocks[0].words, ["latex", "soy"]);
        let rule = &with.rules[0];
        assert_eq!(
            (rule.layers.as_deref(), rule.heads.as_deref(), rule.within),
            (Some(&[0][..]), Some(&[3][..]), Some(32))
        );

        priors.rule_head = 4;
        let refused = priors.placement(3, 4).unwrap_err().to_string();
        assert!(refused.contains("recruitment.rule_head") && refused.contains("4 heads per layer"), "{refused}");
        priors.rule_head = 0;
        priors.rule_layer = Some(3);
        let refused = priors.placement(3, 4).unwrap_err().to_string();
        assert!(refused.contains("recruitment.rule_layer") && refused.contains("3 layers"), "{refused}");
    }
}
