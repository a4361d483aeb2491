//! Every setting of a run, once: the fields of `train.json` (and of the pipeline sections that
//! resolve to them), their defaults and their checks.

pub mod recruitment;

pub use recruitment::*;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::data::generator::{bundled_corpus, DEFAULT_SEED};
use crate::data::{load_splits, Splits, TokenizerKind};
use crate::engine::optim::OptimConfig;
use crate::engine::{Config, Gelu};
use crate::locality::{DialSettings, LambdaSchedule, RuleSpec, RulesSource};
use crate::{Error, Result};

/// Where training text comes from.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum CorpusSource {
    /// The generated pharmacy corpus of `data::generator`, by generator seed.
    Bundled { seed: u64 },
    /// The same corpus with a third of its records replaced by allergy records whose allergens no rules
    /// file names (`ailla generate --planted`): the ground truth of block recruitment (METHOD §7).
    Planted { seed: u64 },
    /// A directory with `train.txt`, `valid.txt`, `test.txt`.
    Directory(PathBuf),
}

impl Default for CorpusSource {
    fn default() -> Self {
        CorpusSource::Bundled { seed: DEFAULT_SEED }
    }
}

impl CorpusSource {
    /// `bundled` (the generated corpus with its default seed) or a directory, as the command line
    /// names them.
    pub fn parse(text: &str) -> Self {
        if text == "bundled" {
            CorpusSource::Bundled { seed: DEFAULT_SEED }
        } else {
            CorpusSource::Directory(PathBuf::from(text))
        }
    }

    pub fn load(&self) -> Result<Splits> {
        match self {
            CorpusSource::Bundled { seed } => Ok(bundled_corpus(*seed)),
            CorpusSource::Planted { seed } => Ok(crate::data::generator::planted_corpus(*seed)),
            CorpusSource::Directory(dir) => load_splits(dir),
        }
    }
}

/// Model sizes a user chooses; the vocabulary size comes from the data.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ModelShape {
    pub ctx_len: usize,
    pub d_model: usize,
    pub n_heads: usize,
    pub n_layers: usize,
    pub d_ff: usize,
    pub tied: bool,
}

impl Default for ModelShape {
    fn default() -> Self {
        ModelShape { ctx_len: 64, d_model: 64, n_heads: 4, n_layers: 2, d_ff: 256, tied: true }
    }
}

impl ModelShape {
    pub fn config(&self, vocab_size: usize) -> Config {
        Config {
            vocab_size,
            ctx_len: self.ctx_len,
            d_model: self.d_model,
            n_heads: self.n_heads,
            n_layers: self.n_layers,
            d_ff: self.d_ff,
            ln_eps: 1e-5,
            tied: self.tied,
            gelu: Gelu::Tanh,
            recruited_blocks: Vec::new(),
            copy_paths: Vec::new(),
        }
    }
}

/// Everything a training run depends on. Stored as `train.json` in the run directory so that a run can
/// be resumed and audited.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    pub corpus: CorpusSource,
    pub tokenizer: TokenizerKind,
    /// Largest vocabulary, specials included.
    pub vocab_cap: usize,
    pub model: ModelShape,
    pub steps: usize,
    pub batch_size: usize,
    pub optim: OptimConfig,
    pub seed: u64,
    /// Validation loss every this many steps (0: only at the end).
    pub eval_every: usize,
    /// Tokens of the validation split used for the periodic evaluation.
    pub eval_tokens: usize,
    /// Tokens of the validation and test splits (a prefix of each) used for the final evaluation and
    /// every λ of the dial; `None`, the default, scores the whole splits.
    pub final_eval_tokens: Option<usize>,
    /// Checkpoint every this many steps (0: only at the end).
    pub checkpoint_every: usize,
    /// Rules and the locality dial; absent for a plain transformer.
    pub locality: Option<LocalityConfig>,
    /// Block recruitment during training (METHOD §7); needs `locality`.
    pub recruitment: Option<RecruitmentConfig>,
}

fn default_epsilon() -> f64 {
    0.05
}

fn default_eval_lambdas() -> Vec<f64> {
    vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
}

fn default_certificate_batches() -> usize {
    2
}

/// The locality dial during training and the evaluation across it afterwards (METHOD §3–§6).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LocalityConfig {
    /// `bundled`, or `{ file: PATH }` (relative to the config file).
    pub rules: RulesSource,
    #[serde(default)]
    pub dial: DialSettings,
    /// λ per training step.
    #[serde(default)]
    pub schedule: LambdaSchedule,
    /// `β` of the progressive per-layer dial `λ_l = λ·(l/(L−1))^β`; absent: the same λ in every layer.
    #[serde(default)]
    pub progressive_beta: Option<f64>,
    /// The `ε` of the certificates: fidelity target `1 − ε`.
    #[serde(default = "default_epsilon")]
    pub epsilon: f64,
    /// λ values at which the trained model is evaluated on the test split.
    #[serde(default = "default_eval_lambdas")]
    pub eval_lambdas: Vec<f64>,
    /// Evaluation batches that also run a backward pass for the group-sparsity threshold.
    #[serde(default = "default_certificate_batches")]
    pub certificate_batches: usize,
    /// Further rules switched on (and optionally off) at given training steps.
    #[serde(default)]
    pub injections: Vec<Injection>,
}

/// Rules injected during training: every rule of `rules` acts from `at_step` (until `until_step`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Injection {
    pub rules: RulesSource,
    pub at_step: usize,
    #[serde(default)]
    pub until_step: Option<usize>,
}

impl LocalityConfig {
    /// The run's rules: the main file followed by every injection, each rule carrying its schedule.
    pub fn load_rules(&self) -> Result<RuleSpec> {
        let mut spec = self.rules.load()?;
        for injection in &self.injections {
            let mut extra = injection.rules.load()?;
            for rule in &mut extra.rules {
                rule.from_step = Some(rule.from_step.map_or(injection.at_step, |s| s.max(injection.at_step)));
                rule.until_step = match (rule.until_step, injection.until_step) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
            // an injected file may repeat the main file's blocks; keep one declaration of each
            extra.blocks.retain(|b| !spec.blocks.iter().any(|existing| existing.name == b.name));
            spec = spec.with(&extra);
        }
        Ok(spec)
    }
}

impl LocalityConfig {
    pub fn validate(&self) -> Result<()> {
        self.dial.validate()?;
        self.schedule.validate()?;
        if !(self.epsilon > 0.0 && self.epsilon < 1.0) {
            return Err(Error::invalid("locality.epsilon", "must lie strictly between 0 and 1"));
        }
        if let Some(beta) = self.progressive_beta {
            if !(beta >= 0.0 && beta.is_finite()) {
                return Err(Error::invalid("locality.progressive_beta", "must be a non-negative number"));
            }
        }
        for &lambda in &self.eval_lambdas {
            if !(0.0..=1.0).contains(&lambda) {
                return Err(Error::invalid("locality.eval_lambdas", format!("λ = {lambda} is outside [0, 1]")));
            }
        }
        Ok(())
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            corpus: CorpusSource::default(),
            tokenizer: TokenizerKind::Word,
            vocab_cap: 50_000,
            model: ModelShape::default(),
            steps: 400,
            batch_size: 16,
            optim: OptimConfig::default(),
            seed: 1,
            eval_every: 100,
            eval_tokens: 16_384,
            final_eval_tokens: None,
            checkpoint_every: 200,
            locality: None,
            recruitment: None,
        }
    }
}

impl TrainConfig {
    pub fn validate(&self) -> Result<()> {
        if let Some(recruitment) = &self.recruitment {
            recruitment.validate()?;
            recruitment.placement(self.model.n_layers, self.model.n_heads)?;
            if self.locality.is_none() {
                return Err(Error::invalid(
                    "recruitment",
                    "recruits blocks into rules: it needs a `locality` section (rules may be empty)",
                ));
            }
        }
        Error::require_counts([
            ("steps", self.steps),
            ("batch_size", self.batch_size),
            ("vocab_cap", self.vocab_cap),
            ("eval_tokens", self.eval_tokens),
            ("final_eval_tokens", self.final_eval_tokens.unwrap_or(1)),
        ])?;
        if !(self.optim.learning_rate > 0.0 && self.optim.learning_rate.is_finite()) {
            return Err(Error::invalid("optim.learning_rate", "must be a positive number"));
        }
        if !(0.0..1.0).contains(&self.optim.beta1) || !(0.0..1.0).contains(&self.optim.beta2) {
            return Err(Error::invalid("optim.beta1", "betas must lie in [0, 1)"));
        }
        let optim = &self.optim;
        for (field, value, fine, range) in [
            ("optim.eps", optim.eps, optim.eps > 0.0, "a positive number (1e-8 is usual)"),
            ("optim.weight_decay", optim.weight_decay, optim.weight_decay >= 0.0, "a non-negative number"),
            ("optim.min_lr_ratio", optim.min_lr_ratio, (0.0..=1.0).contains(&optim.min_lr_ratio), "in [0, 1]"),
            ("optim.grad_clip", optim.grad_clip, optim.grad_clip >= 0.0, "a non-negative number (0: no clipping)"),
            ("optim.copy_gate_lr_scale", optim.copy_gate_lr_scale, optim.copy_gate_lr_scale > 0.0, "a positive number"),
        ] {
            if !(fine && value.is_finite()) {
                return Err(Error::invalid(field, format!("is {value}; it must be {range}")));
            }
        }
        const MAX_STEPS: usize = 1_000_000_000;
        if self.steps > MAX_STEPS {
            return Err(Error::invalid("steps", format!("{} is more than {MAX_STEPS} steps", self.steps)));
        }
        self.check_memory()?;
        if let Some(locality) = &self.locality {
            locality.validate()?;
        }
        self.model.config(self.vocab_cap.max(2)).validate()
    }
}

impl TrainConfig {
    /// Bytes a run of this configuration holds at once, roughly: four copies of the parameters
    /// (weights, gradients, Adam's two moments) and one batch's activations, with the vocabulary at
    /// its cap. An upper estimate, so that an absurd shape is refused before anything is allocated.
    pub fn memory_estimate_bytes(&self) -> f64 {
        let m = &self.model;
        let (d, ff, ctx, layers, heads) =
            (m.d_model as f64, m.d_ff as f64, m.ctx_len as f64, m.n_layers as f64, m.n_heads as f64);
        let vocab = self.vocab_cap as f64;
        let per_layer = 4.0 * d * d + 2.0 * d * ff + 9.0 * d + ff;
        let parameters = vocab * d * if m.tied { 1.0 } else { 2.0 } + ctx * d + layers * per_layer + 2.0 * d;
        let rows = self.batch_size as f64 * ctx;
        // per layer: LayerNorm inputs and outputs, q k v, attention weights, MLP activations
        let activations = layers * rows * (12.0 * d + 3.0 * ff + heads * ctx);
        // the output loss keeps at most LOGIT_CACHE_BYTES of logits, in padded tiles
        let logits = crate::engine::loss::kept_logit_bytes_at_most(rows as usize, self.vocab_cap) as f64;
        // and pass 2's partials of ∂h, within their budget
        let tiling = crate::engine::loss::DEFAULT_TILING;
        let partials = (rows * d * 4.0 * tiling.groups as f64).min(tiling.partial_bytes as f64);
        4.0 * (4.0 * parameters + activations) + logits + partials
    }

    /// An error when the estimate exceeds the memory this machine has available.
    fn check_memory(&self) -> Result<()> {
        let needed = self.memory_estimate_bytes();
        let gib = |bytes: f64| bytes / f64::from(1u32 << 30);
        let available = available_memory_bytes();
        if needed.is_finite() && available.is_none_or(|a| needed <= a) {
            return Ok(());
        }
        Err(Error::invalid(
            "model",
            format!(
                "this shape (ctx_len {}, d_model {}, d_ff {}, {} layers, batch_size {}, vocabulary up to {}) needs \
                 about {:.1} GiB for weights, optimizer state and activations; this machine has {:.1} GiB \
                 available: make the model or the batch smaller",
                self.model.ctx_len,
                self.model.d_model,
                self.model.d_ff,
                self.model.n_layers,
                self.batch_size,
                self.vocab_cap,
                gib(needed),
                available.map_or(0.0, gib)
            ),
        ))
    }
}

/// `MemAvailable` of `/proc/meminfo`, where the system says.
pub fn available_memory_bytes() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024.0)
}
