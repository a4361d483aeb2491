//! The pipeline file's schema: every section, field and default, as YAML spells them.

use super::*;
use crate::engine::cuda::DeviceChoice;

pub(super) fn default_vocab_cap() -> usize {
    50_000
}

pub(super) fn default_word() -> TokenizerKind {
    TokenizerKind::Word
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// `bundled: { seed: N }` for the generated corpus, or `directory: PATH` with train/valid/test files.
    #[serde(default)]
    pub corpus: CorpusSource,
    #[serde(default = "default_word")]
    pub tokenizer: TokenizerKind,
    #[serde(default = "default_vocab_cap")]
    pub vocab_cap: usize,
}

impl Default for DataSection {
    fn default() -> Self {
        DataSection { corpus: CorpusSource::default(), tokenizer: TokenizerKind::Word, vocab_cap: default_vocab_cap() }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSection {
    pub steps: usize,
    pub batch_size: usize,
    pub optim: OptimConfig,
    pub seed: u64,
    /// Shorthand for a sweep over `train.seed`.
    pub seeds: Option<Vec<u64>>,
    /// Cores for the whole pipeline (default: every core).
    pub threads: Option<usize>,
    pub eval_every: usize,
    pub eval_tokens: usize,
    /// `cpu`, `cuda` or `auto`, checked as `--device` is.
    #[serde(skip_serializing_if = "is_cpu")]
    pub device: DeviceChoice,
}

fn is_cpu(device: &DeviceChoice) -> bool {
    *device == DeviceChoice::Cpu
}

impl Default for TrainSection {
    fn default() -> Self {
        let base = TrainConfig::default();
        TrainSection {
            steps: base.steps,
            batch_size: base.batch_size,
            optim: base.optim,
            seed: base.seed,
            seeds: None,
            threads: None,
            eval_every: base.eval_every,
            eval_tokens: base.eval_tokens,
            device: DeviceChoice::Cpu,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct LambdaSection {
    #[serde(default)]
    pub schedule: LambdaSchedule,
    /// `β` of the per-layer dial `λ_l = λ·(l/(L−1))^β`.
    #[serde(default)]
    pub progressive_beta: Option<f64>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InjectionSection {
    /// A `.rules` file (or `bundled`) whose rules switch on at `at_step`.
    pub rules: String,
    pub at_step: usize,
    #[serde(default)]
    pub until_step: Option<usize>,
}

pub(super) fn default_epsilon() -> f64 {
    0.05
}

pub(super) fn default_certificate_batches() -> usize {
    2
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LocalitySection {
    /// A `.rules` file, relative to the pipeline, or `bundled`.
    pub rules: String,
    #[serde(default)]
    pub dial: DialSettings,
    #[serde(default)]
    pub lambda: LambdaSection,
    #[serde(default = "default_epsilon")]
    pub epsilon: f64,
    #[serde(default)]
    pub injections: Vec<InjectionSection>,
    #[serde(default = "default_certificate_batches")]
    pub certificate_batches: usize,
}

pub(super) fn default_lambdas() -> Vec<f64> {
    vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EvaluationSection {
    /// λ values every trained model is evaluated at (on the test split).
    #[serde(default = "default_lambdas")]
    pub lambdas: Vec<f64>,
    /// Score only this many tokens (a prefix) of the validation and test splits at the end of training
    /// and at every λ; absent: the whole splits.
    #[serde(default)]
    pub max_tokens: Option<usize>,
}

impl Default for EvaluationSection {
    fn default() -> Self {
        EvaluationSection { lambdas: default_lambdas(), max_tokens: None }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ReportFormat {
    Json,
    Markdown,
    Html,
}

pub(super) fn default_checkpoint_every() -> usize {
    200
}

pub(super) fn default_formats() -> Vec<ReportFormat> {
    vec![ReportFormat::Json]
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OutputsSection {
    /// Where the run directory goes (default `runs/<name>`), relative to the working directory.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: usize,
    #[serde(default = "default_formats")]
    pub formats: Vec<ReportFormat>,
}

impl Default for OutputsSection {
    fn default() -> Self {
        OutputsSection { dir: None, checkpoint_every: default_checkpoint_every(), formats: default_formats() }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Pipeline {
    pub name: String,
    #[serde(default)]
    pub data: DataSection,
    #[serde(default)]
    pub model: ModelShape,
    #[serde(default)]
    pub train: TrainSection,
    #[serde(default)]
    pub locality: Option<LocalitySection>,
    #[serde(default)]
    pub recruitment: Option<crate::recruit::RecruitmentConfig>,
    #[serde(default)]
    pub evaluation: EvaluationSection,
    /// Dotted field paths to lists of values; members are their cartesian product.
    #[serde(default)]
    pub sweep: BTreeMap<String, Vec<serde_json::Value>>,
    #[serde(default)]
    pub outputs: OutputsSection,
    /// Published figures the report prints beside this run's, with the claims to test.
    #[serde(default)]
    pub published: Option<PublishedSection>,
    /// Hierarchical recruitment of specialised models over several corpora (METHOD §8), in place of a
    /// sweep: `model` and `train` give the shape and the optimizer of every model in the pool.
    #[serde(default)]
    pub domains: Option<crate::recruit::domains::DomainsConfig>,
    /// Field values (dotted paths, as in `sweep`) that `ailla run --quick` puts in place of the file's
    /// own, in the base and in every sweep member: a smoke-test variant of the same pipeline.
    #[serde(default)]
    pub quick: BTreeMap<String, serde_json::Value>,
    /// What the report's audit card states about the model beyond what the run measures.
    #[serde(default)]
    pub card: Option<CardSection>,
}

/// The pipeline's own statement for the report's audit card: each field optional, and the card
/// says "not stated" for a missing one rather than inventing a default.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CardSection {
    /// What the model is for (and so what its figures were meant to support).
    #[serde(default)]
    pub intended_use: Option<String>,
    /// What the model must not be relied on for, and known weaknesses.
    #[serde(default)]
    pub limitations: Option<String>,
    /// Who answers for the model (a person, a team, a contact address).
    #[serde(default)]
    pub owner: Option<String>,
}

impl CardSection {
    /// `(field, value)` of every stated field, for validation.
    pub fn fields(&self) -> [(&'static str, Option<&str>); 3] {
        [
            ("card.intended_use", self.intended_use.as_deref()),
            ("card.limitations", self.limitations.as_deref()),
            ("card.owner", self.owner.as_deref()),
        ]
    }
}

/// A metric the report can set beside a published figure.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PublishedMetric {
    /// Mean attention entropy over every query position and head, bits.
    EntropyBits,
    PointerFidelity,
    Perplexity,
    /// Top-1 accuracy as a fraction (84.7 % is 0.847).
    Accuracy,
}

/// A published qualitative claim that the report checks on this run.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PublishedClaim {
    /// Mean attention entropy falls as λ rises.
    EntropyFalls,
    /// Pointer fidelity rises as λ rises.
    FidelityRises,
    /// The best perplexity/interpretability trade-off lies strictly between λ = 0 and λ = 1.
    IntermediateTradeoff,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishedFigure {
    pub metric: PublishedMetric,
    pub lambda: f64,
    pub value: f64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishedSection {
    /// Where the figures come from, as a reader would cite it.
    pub source: String,
    #[serde(default)]
    pub figures: Vec<PublishedFigure>,
    #[serde(default)]
    pub claims: Vec<PublishedClaim>,
}
