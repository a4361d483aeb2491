//! What `--json` prints: one shape per verb, each with a JSON Schema (`src/cli/schemas/`, checked
//! against these types by `tests/cli.rs`). A table's columns are its object's fields.

use serde::{Deserialize, Serialize};

use crate::engine::eval::EvalResult;
use crate::locality::metrics::LocalityMetrics;

/// `ailla eval --json`, with or without the dial.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EvalOutput {
    pub checkpoint: String,
    /// `char` or `word`.
    pub tokenizer: String,
    /// Predicted tokens (the input's length minus one).
    pub tokens: usize,
    /// The model alone: no rules, no copy paths (λ = 0). Null with `--lambda` or `--rules`, whose
    /// rows hold the λ = 0 figures when 0 is asked for.
    pub language_model: Option<EvalResult>,
    /// One row per λ of `--lambda` (or the default grid) when `--lambda` or `--rules` is given.
    pub dial: Vec<DialPoint>,
}

/// One λ of a dial evaluation: the dial table's columns.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DialPoint {
    pub lambda: f64,
    pub language_model: EvalResult,
    /// Mean attention entropy over every row, in bits (null when no row was measured).
    pub entropy_bits: Option<f64>,
    /// Mean attention mass on the rules' targets over the rows they cover (null when none is).
    pub pointer_fidelity: Option<f64>,
    pub covered_rows: usize,
    /// Share of covered rows whose λ* certificate holds at this λ (null when none is covered).
    pub share_certified: Option<f64>,
    /// Certified bounds that a measured row broke; 0 is what the mathematics promises.
    pub violations: usize,
}

impl DialPoint {
    pub fn of(metrics: &LocalityMetrics) -> Self {
        let finite = |v: f64| v.is_finite().then_some(v);
        DialPoint {
            lambda: metrics.lambda,
            language_model: metrics.language_model.clone(),
            entropy_bits: finite(metrics.entropy_bits),
            pointer_fidelity: finite(metrics.pointer_fidelity),
            covered_rows: metrics.covered_rows,
            share_certified: finite(metrics.certificates.share_certified),
            violations: metrics.certificates.violations.total(),
        }
    }
}

/// `ailla validate --json`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ValidateOutput {
    pub pipeline: String,
    pub output_dir: String,
    /// Sweep members in the order they run; empty for a `domains` pipeline.
    pub members: Vec<PlannedMember>,
    /// The domains of a `domains` pipeline, in arrival order; empty otherwise.
    pub domains: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlannedMember {
    pub name: String,
    pub steps: usize,
}

/// `ailla run --json`: the summary table, the run directory and whether the bounds held.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunOutput {
    pub run_dir: String,
    /// `report.html` in the run directory (`report.md` and `report.json` lie beside it).
    pub report: String,
    pub seconds: f64,
    /// Certificate rows checked (one per group and λ; 0 for a run without rules).
    pub certified: usize,
    /// Certified-bound violations over every member and λ; with `certified` > 0, 0 means every
    /// bound held.
    pub violations: usize,
    /// Sweep members, in order; empty for a `domains` pipeline (its pool is in the report).
    pub members: Vec<RunMember>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunMember {
    pub name: String,
    /// Why the member failed; null when it finished.
    pub error: Option<String>,
    /// Test figures of the model alone; null when it failed.
    pub test: Option<EvalResult>,
    /// Test figures across the dial, for a member with rules.
    pub dial: Vec<DialPoint>,
}

/// `ailla check --json`: what the rules file declares, and what each rule covers in a corpus.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckOutput {
    pub rules_file: String,
    /// Whether words were looked up in a vocabulary (`--corpus` or `--checkpoint`).
    pub vocabulary_given: bool,
    /// Tokens of `--corpus`, where coverage was counted.
    pub corpus_tokens: Option<usize>,
    pub blocks: Vec<CheckedBlock>,
    /// Attention rules the file writes; with a vocabulary, `rules` also lists the own-block defaults its
    /// blocks compile to.
    pub written_rules: usize,
    pub rules: Vec<CheckedRule>,
    pub copy_rules: Vec<CheckedRule>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckedBlock {
    pub name: String,
    /// Vocabulary entries in the block (its written words when no vocabulary was given).
    pub members: usize,
    pub anchors: Vec<String>,
    pub recruitable: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckedRule {
    pub name: String,
    /// Query positions the rule covers in `--corpus` (windows of 128 tokens); null without one.
    pub covers: Option<usize>,
}

/// `ailla train --json`: the summary's figures.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TrainOutput {
    pub run_dir: String,
    pub steps_done: usize,
    pub steps_planned: usize,
    pub train_tokens: usize,
    /// `char` or `word`.
    pub tokenizer: String,
    pub vocab_size: usize,
    pub parameters: usize,
    pub seconds: f64,
    /// Entropy of the validation split's unigram distribution, in nats: what a model must beat.
    pub unigram_entropy_nats: f64,
    pub valid: EvalResult,
    pub test: EvalResult,
    /// Test figures across the dial, for a run with rules.
    pub dial: Vec<DialPoint>,
}

/// `ailla route --json`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteOutput {
    /// Tokens the router read.
    pub tokens: usize,
    /// The pool model with the fewest bits on them.
    pub chosen: String,
    pub models: Vec<RoutedModel>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RoutedModel {
    pub model: String,
    pub trained_on: String,
    /// Code length of the read tokens under this model (null where it is not finite).
    pub bits: Option<f64>,
}

/// `ailla bench --json` (without `--check-cost`, whose document is [`crate::bench::FrozenCheckCost`]).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BenchOutput {
    pub threads: usize,
    /// This machine's single-precision matrix product, the reference every figure is a ratio of.
    pub sgemm_gflops: f64,
    pub results: Vec<BenchRow>,
    /// The CPU engine's; absent from a `--device cuda` run, which measures the device step alone.
    pub dial_overhead: Option<crate::bench::DialOverhead>,
    /// The GPU the figures are from, with `--device cuda`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// With `--scaling`.
    pub sweep_scaling: Vec<crate::bench::Scaling>,
    pub recruitment_cost: Option<crate::bench::RecruitmentCost>,
    pub frozen_check_cost: Option<crate::bench::FrozenCheckCost>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BenchRow {
    pub ailla: crate::bench::BenchResult,
    /// PyTorch's figures in the same run, with `--compare-torch`.
    pub torch: Option<crate::bench::TorchResult>,
}

/// The schema of each verb's `--json`, by file name under `src/cli/schemas/`.
pub fn schemas() -> Vec<(&'static str, String)> {
    let pretty = |schema: schemars::Schema| serde_json::to_string_pretty(&schema).unwrap_or_default() + "\n";
    vec![
        ("anchors.schema.json", pretty(schemars::schema_for!(Vec<crate::dsl::anchors::BlockAnchors>))),
        ("bench.schema.json", pretty(schemars::schema_for!(BenchOutput))),
        ("bench-check-cost.schema.json", pretty(schemars::schema_for!(crate::bench::FrozenCheckCost))),
        ("bench-rules-check.schema.json", pretty(schemars::schema_for!(crate::dsl::cost::RulesCheckCost))),
        ("check.schema.json", pretty(schemars::schema_for!(CheckOutput))),
        ("diff.schema.json", pretty(schemars::schema_for!(crate::report::diff::RunDiff))),
        ("env.schema.json", pretty(schemars::schema_for!(crate::engine::environment::NumericalEnvironment))),
        ("eval.schema.json", pretty(schemars::schema_for!(EvalOutput))),
        ("explain.schema.json", pretty(schemars::schema_for!(crate::explain::Explanation))),
        ("route.schema.json", pretty(schemars::schema_for!(RouteOutput))),
        ("run.schema.json", pretty(schemars::schema_for!(RunOutput))),
        ("train.schema.json", pretty(schemars::schema_for!(TrainOutput))),
        ("trial.schema.json", pretty(schemars::schema_for!(crate::recruit::probe::Probe))),
        ("validate.schema.json", pretty(schemars::schema_for!(ValidateOutput))),
        ("verify.schema.json", pretty(schemars::schema_for!(crate::report::verify::Verification))),
    ]
}
