//! What a report holds: the types behind `report.json` (and its JSON Schema).

use super::*;

/// One λ of a group of runs that differ only in their seed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
pub struct DialRow {
    pub lambda: f64,
    pub entropy_bits: Estimate,
    pub covered_entropy_bits: Estimate,
    pub pointer_fidelity: Estimate,
    pub pointer_hit_rate: Estimate,
    pub block_concentration: Estimate,
    pub perplexity: Estimate,
    pub bits_per_token: Estimate,
    pub accuracy: Estimate,
    /// Mean over layers of the participation ratio.
    pub participation_ratio: Estimate,
    /// Welch's t-test against λ = 0 (two-sided p), when each side has two seeds or more.
    pub entropy_p_vs_zero: Option<f64>,
    pub fidelity_p_vs_zero: Option<f64>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
pub struct RuleRow {
    pub name: String,
    /// `file:line` of the rule's declaration, when it came from a `.rules` file.
    pub source: Option<String>,
    /// What the rule says, as written there (whitespace collapsed).
    pub text: Option<String>,
    pub covered_rows: usize,
    /// `(λ, mean pointer fidelity)` over the group's runs.
    pub fidelity_by_lambda: Vec<(f64, f64)>,
    /// At the largest λ of the grid, for every (layer, head) in `layer·H + head` order; `None` where
    /// the rule does not act.
    pub fidelity_by_site_at_max_lambda: Vec<Option<f64>>,
    pub injected: Option<String>,
    /// At each λ of `fidelity_by_lambda`: whether the rule is met, its mean pointer fidelity at or
    /// above `1 − ε` (the certificates' target, METHOD §6). A rule with no covered rows is not met:
    /// there is no evidence that it holds.
    #[serde(default)]
    pub met_by_lambda: Vec<bool>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
pub struct CertificateRow {
    pub lambda: f64,
    pub lambda_star_p50: f64,
    pub lambda_star_p90: f64,
    pub lambda_star_max: f64,
    pub share_certified: f64,
    pub weight_only_lambda: f64,
    pub mean_entropy_bits: f64,
    pub mean_entropy_bound_bits: f64,
    pub violations: usize,
    pub share_past_group_sparsity_threshold: Option<f64>,
}

/// Runs that share everything but the seed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
pub struct Group {
    /// What sets the group apart from the others: the settings that differ between groups, as
    /// `field = value` (`recruitment.margin_bits = 16`); `all runs` when there is one group.
    #[serde(default)]
    pub label: String,
    /// The certificates' `ε` (fidelity target `1 − ε`); absent without rules.
    #[serde(default)]
    pub epsilon: Option<f64>,
    pub members: Vec<String>,
    pub dial: Vec<DialRow>,
    pub rules: Vec<RuleRow>,
    pub certificates: Vec<CertificateRow>,
    /// `(step, mean training loss)` at up to 20 evenly spaced steps.
    pub training_curve: Vec<(usize, f64)>,
    /// `(step, mean validation loss in nats)` wherever the runs evaluated it.
    #[serde(default)]
    pub validation_curve: Vec<(usize, f64)>,
    /// `(step, learning rate)` at the training curve's steps.
    #[serde(default)]
    pub learning_rate_curve: Vec<(usize, f64)>,
    /// Pointer fidelity of every (layer, head) where rules act, by λ (mean over the group's runs).
    pub site_fidelity: Vec<SiteFidelity>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
pub struct SiteFidelity {
    pub layer: usize,
    pub head: usize,
    pub fidelity_by_lambda: Vec<f64>,
}

/// The attention of one example sequence at λ = 0 and λ = 1, as the first member's run stored it.
pub use crate::train::stored::AttentionSample as AttentionExample;

/// The whole report; `report.json` is this, serialised.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
pub struct Report {
    pub schema_version: u32,
    /// SHA-256 of this report's own content: of the bytes of `report.json` as written, with this
    /// field's 64 hex digits removed (the line then reads `  "report_sha256": "",`). `ailla verify`
    /// (or `sed 's/^  "report_sha256": "[0-9a-f]*"/  "report_sha256": ""/' report.json | sha256sum`)
    /// checks it; `report.md` and `report.html` print the same value.
    #[serde(default)]
    pub report_sha256: String,
    pub name: String,
    /// What an auditor needs first: the model, its data, its rules and whether each is met, the
    /// checkpoints' hashes and the pipeline's statement of intended use.
    #[serde(default)]
    pub card: card::AuditCard,
    pub provenance: Provenance,
    pub resolved_pipeline: serde_json::Value,
    pub failed_members: Vec<String>,
    pub groups: Vec<Group>,
    pub attention_example: Option<AttentionExample>,
    /// The pipeline's published figures beside ours, when it names any.
    #[serde(default)]
    pub published: Option<published::PublishedComparison>,
    /// Every block-recruitment decision of every run (METHOD §7), in run order.
    #[serde(default)]
    pub block_recruitment: Vec<MemberDecision>,
    /// Hierarchical recruitment of specialised models (METHOD §8), for a `domains` pipeline.
    #[serde(default)]
    pub domain_recruitment: Option<crate::recruit::domains::DomainsSummary>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
pub struct MemberDecision {
    pub member: String,
    pub decision: crate::recruit::Decision,
}
