//! Training and evaluation loops on top of the engine.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, Checkpoint, StoredLocality};
use crate::data::generator::{bundled_corpus, DEFAULT_SEED};
use crate::data::tokenizer::unigram_entropy;
use crate::data::{load_splits, Splits, TokenizerKind, Vocabulary};
use crate::engine::attention::{AttentionHook, NoHook};
use crate::engine::optim::{AdamW, OptimConfig};
use crate::engine::{Config, Gelu, Model};
use crate::locality::metrics::{evaluate_at, DialEvaluation, LocalityMetrics};
use crate::locality::schedule::per_layer;
use crate::locality::{BatchTargets, DialSettings, LambdaSchedule, LocalityHook, RuleSet, RuleSpec, RulesSource};
use crate::rng::Rng;
use crate::run_dir::units::{self, Resumable, ResumePoint};
use crate::run_dir::{MetricsLog, RunLock};
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
    pub recruitment: Option<crate::recruit::RecruitmentConfig>,
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
        // the output loss keeps at most LOGIT_CACHE_BYTES of logits, or one tile per group
        let logits = (rows * vocab * 4.0).min(crate::engine::loss::LOGIT_CACHE_BYTES as f64);
        4.0 * (4.0 * parameters + activations) + logits
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

/// Encoded splits with their vocabulary.
pub struct Dataset {
    pub vocabulary: Vocabulary,
    pub train: Vec<u32>,
    pub valid: Vec<u32>,
    pub test: Vec<u32>,
    pub name: String,
    pub files: Vec<PathBuf>,
}

impl Dataset {
    pub fn build(splits: &Splits, kind: TokenizerKind, vocab_cap: usize) -> Result<Self> {
        let vocabulary = Vocabulary::build(kind, &splits.train, vocab_cap);
        Self::with_vocabulary(splits, vocabulary)
    }

    pub fn with_vocabulary(splits: &Splits, vocabulary: Vocabulary) -> Result<Self> {
        let dataset = Dataset {
            train: vocabulary.encode(&splits.train),
            valid: vocabulary.encode(&splits.valid),
            test: vocabulary.encode(&splits.test),
            vocabulary,
            name: splits.name.clone(),
            files: splits.files.clone(),
        };
        Ok(dataset)
    }
}

/// A batch of `batch` windows of `seq_len` tokens and their next-token targets, from random offsets.
/// The offsets come from a stream derived from `(seed, step)` alone, so step `k` of a resumed run draws
/// what step `k` of an uninterrupted run drew.
pub fn sample_batch(ids: &[u32], batch: usize, seq_len: usize, seed: u64, step: usize) -> (Vec<u32>, Vec<u32>) {
    let mut rng = Rng::derive(seed, 0xBA7C, step as u64);
    let span = ids.len() - seq_len;
    let mut inputs = Vec::with_capacity(batch * seq_len);
    let mut targets = Vec::with_capacity(batch * seq_len);
    for _ in 0..batch {
        let start = rng.below(span);
        inputs.extend_from_slice(&ids[start..start + seq_len]);
        targets.extend_from_slice(&ids[start + 1..start + seq_len + 1]);
    }
    (inputs, targets)
}

/// Language-modelling metrics of one pass over a token stream.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct EvalResult {
    /// Predicted tokens (the stream length minus one).
    pub tokens: usize,
    #[serde(deserialize_with = "crate::json_float::f64_or_nan")]
    pub mean_ce_nats: f64,
    #[serde(deserialize_with = "crate::json_float::f64_or_nan")]
    pub perplexity: f64,
    #[serde(deserialize_with = "crate::json_float::f64_or_nan")]
    pub bits_per_token: f64,
    #[serde(deserialize_with = "crate::json_float::f64_or_nan")]
    pub accuracy: f64,
}

impl EvalResult {
    pub fn from_sums(tokens: usize, nll_sum: f64, correct: usize) -> Self {
        let mean = nll_sum / tokens.max(1) as f64;
        EvalResult {
            tokens,
            mean_ce_nats: mean,
            perplexity: mean.exp(),
            bits_per_token: mean / std::f64::consts::LN_2,
            accuracy: correct as f64 / tokens.max(1) as f64,
        }
    }
}

/// One forward pass of an evaluation: `windows` consecutive windows of `seq_len` inputs and their
/// next-token targets.
pub struct EvalBatch {
    pub inputs: Vec<u32>,
    pub targets: Vec<u32>,
    pub windows: usize,
    pub seq_len: usize,
}

/// Splits `ids` for scoring every token after the first: consecutive non-overlapping windows of the
/// context `ctx`, `batch` windows at a time, the shorter last window on its own. Every prediction
/// conditions on the tokens before it within its window, as in PyTorch's `word_language_model`.
pub fn eval_batches(ids: &[u32], ctx: usize, batch: usize) -> impl Iterator<Item = EvalBatch> + '_ {
    let predicted = ids.len().saturating_sub(1);
    let full_windows = predicted / ctx;
    let mut groups = Vec::new();
    let mut window = 0;
    while window < full_windows {
        let windows = batch.max(1).min(full_windows - window);
        groups.push((window, windows, ctx));
        window += windows;
    }
    if predicted > full_windows * ctx {
        groups.push((full_windows, 1, predicted - full_windows * ctx));
    }
    groups.into_iter().map(move |(first, windows, seq_len)| {
        let mut inputs = Vec::with_capacity(windows * seq_len);
        let mut targets = Vec::with_capacity(windows * seq_len);
        for w in first..first + windows {
            let start = w * ctx;
            inputs.extend_from_slice(&ids[start..start + seq_len]);
            targets.extend_from_slice(&ids[start + 1..start + seq_len + 1]);
        }
        EvalBatch { inputs, targets, windows, seq_len }
    })
}

/// Scores every token of `ids` after the first, windowed by [`eval_batches`].
pub fn evaluate(model: &Model<f32>, ids: &[u32], batch: usize, hook: &dyn AttentionHook<f32>) -> EvalResult {
    let mut nll_sum = 0.0f64;
    let mut correct = 0usize;
    for b in eval_batches(ids, model.config.ctx_len, batch) {
        let cache = model.forward(&b.inputs, b.windows, b.seq_len, hook);
        let loss = model.output_loss(&cache, &b.targets, false, None);
        nll_sum += loss.nll.iter().map(|&v| v as f64).sum::<f64>();
        correct += loss.correct;
    }
    EvalResult::from_sums(ids.len().saturating_sub(1), nll_sum, correct)
}

/// One line of `metrics.jsonl`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MetricsRecord {
    /// One recruitment trial's verdict (METHOD §7).
    Recruitment(Box<crate::recruit::Decision>),
    Train {
        step: usize,
        /// Mean cross-entropy of the batch, in nats.
        loss: f64,
        /// The `λ·ρ·Ω` term added to it (0 without rules).
        penalty: f64,
        lambda: f64,
        learning_rate: f64,
        grad_norm: f64,
    },
    Eval {
        step: usize,
        split: String,
        #[serde(flatten)]
        result: EvalResult,
    },
    /// The trained model evaluated at one λ with its rules.
    Dial { step: usize, split: String, metrics: Box<LocalityMetrics> },
}

/// What a finished (or interrupted) run reports.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct TrainSummary {
    pub steps_done: usize,
    pub steps_planned: usize,
    pub parameters: usize,
    pub vocab_size: usize,
    pub tokenizer: TokenizerKind,
    pub train_tokens: usize,
    pub unigram_entropy_nats: f64,
    pub valid: EvalResult,
    pub test: EvalResult,
    pub losses: Vec<f64>,
    /// The test split across the dial, when the run has rules.
    pub dial: Vec<LocalityMetrics>,
    /// Problems found compiling the rules against the vocabulary.
    pub rule_warnings: Vec<String>,
    pub seconds: f64,
}

pub use crate::run_dir::RunPaths;

/// Progress output: a bar on a terminal, periodic plain lines otherwise (CI logs, pipes).
pub enum Progress {
    Bar(indicatif::ProgressBar),
    /// Plain lines every `every` steps, each starting with `prefix` (the run's name in a sweep).
    Lines {
        every: usize,
        prefix: String,
    },
    Silent,
}

impl Progress {
    pub fn for_stderr(total: usize) -> Self {
        if std::io::stderr().is_terminal() {
            let bar = indicatif::ProgressBar::new(total as u64);
            if let Ok(style) =
                indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} steps  {msg}  [{elapsed} < {eta}]")
            {
                bar.set_style(style);
            }
            Progress::Bar(bar)
        } else {
            Progress::Lines { every: (total / 20).max(1), prefix: String::new() }
        }
    }

    /// One of several concurrent runs: a bar of its own under `bars` on a terminal, prefixed lines
    /// otherwise.
    pub fn for_run(bars: Option<&indicatif::MultiProgress>, name: &str, total: usize) -> Self {
        match bars {
            Some(bars) => {
                let bar = bars.add(indicatif::ProgressBar::new(total as u64));
                if let Ok(style) = indicatif::ProgressStyle::with_template(&format!(
                    "{name:<24} {{bar:30}} {{pos}}/{{len}}  {{msg}}  [{{elapsed}} < {{eta}}]"
                )) {
                    bar.set_style(style);
                }
                Progress::Bar(bar)
            }
            None => Progress::Lines { every: (total / 10).max(1), prefix: format!("[{name}] ") },
        }
    }

    fn step(&self, step: usize, total: usize, loss: f64) {
        match self {
            Progress::Bar(bar) => {
                bar.set_position(step as u64);
                bar.set_message(format!("loss {loss:.4}"));
            }
            Progress::Lines { every, prefix } if step % every == 0 || step == total => {
                crate::eprintln_lossy!("{prefix}step {step:>6}/{total}  loss {loss:.4}");
            }
            _ => {}
        }
    }

    pub fn note(&self, message: &str) {
        match self {
            Progress::Bar(bar) => bar.println(message),
            Progress::Lines { prefix, .. } => crate::eprintln_lossy!("{prefix}{message}"),
            Progress::Silent => {}
        }
    }

    fn finish(&self) {
        if let Progress::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

/// Set by Ctrl-C; the loop checkpoints and stops at the next step boundary.
pub fn interrupt_flag() -> Arc<AtomicBool> {
    static FLAG: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();
    FLAG.get_or_init(|| {
        let flag = Arc::new(AtomicBool::new(false));
        let handler_flag = flag.clone();
        // a second Ctrl-C while the first is being handled exits at once
        let _ = ctrlc::set_handler(move || {
            if handler_flag.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
        });
        flag
    })
    .clone()
}

/// How a call to [`train`] starts and when it stops early.
#[derive(Default)]
pub struct RunControl {
    /// Continue the run directory from its saved model and optimizer state.
    pub resume: bool,
    /// Save and stop after this many steps in all (a long run split across sittings).
    pub stop_after: Option<usize>,
    /// Set from outside (Ctrl-C) to save and stop at the next step boundary.
    pub interrupt: Option<Arc<AtomicBool>>,
    /// A fresh run may replace an earlier run in its directory (never files that are not a run's).
    pub force: bool,
    /// How the user continues this run, for messages (`ailla train --resume --out DIR`).
    pub resume_command: Option<String>,
}

/// Loss, penalty and gradients of training step `step` (its batch and λ are fixed by the seed and the
/// step), with the rules of `locality` in force at that step.
pub fn step_gradients(
    model: &Model<f32>,
    config: &TrainConfig,
    locality: Option<(&LocalityConfig, &RuleSet)>,
    train_ids: &[u32],
    step: usize,
) -> (f32, f32, crate::engine::Grads<f32>, f64) {
    let seq_len = model.config.ctx_len;
    let (layers, heads) = (model.config.n_layers, model.config.n_heads);
    let (inputs, targets) = sample_batch(train_ids, config.batch_size, seq_len, config.seed, step);
    match locality {
        Some((settings, set)) => {
            let lambda = settings.schedule.at(step, config.seed);
            // injected rules switch on and off with the step
            let scheduled;
            let active = if set.has_schedule() {
                scheduled = set.active_at(step);
                &scheduled
            } else {
                set
            };
            let targets_of_batch = BatchTargets::new(active, &inputs, config.batch_size, seq_len, layers, heads);
            let lambdas = per_layer(lambda, layers, settings.progressive_beta);
            let hook = LocalityHook::new(&targets_of_batch, lambdas, settings.dial, false);
            // copy paths (METHOD §4) act at the batch's λ, whatever the per-layer attention schedule
            let copy = crate::locality::copy_paths::batch_caches(
                active,
                &model.config.copy_paths,
                &inputs,
                config.batch_size,
                seq_len,
            );
            let (loss, penalty, grads) = model.loss_and_grads(
                &inputs,
                &targets,
                config.batch_size,
                seq_len,
                &hook,
                copy.as_ref().map(|c| (c, lambda)),
            );
            (loss, penalty, grads, lambda)
        }
        None => {
            let (loss, penalty, grads) =
                model.loss_and_grads(&inputs, &targets, config.batch_size, seq_len, &NoHook, None);
            (loss, penalty, grads, 0.0)
        }
    }
}

/// SHA-256 of a run's settings in canonical JSON: what a resumed run checks its settings by.
pub fn settings_hash(config: &TrainConfig) -> String {
    crate::report::provenance::sha256_hex(serde_json::to_string(config).unwrap_or_default().as_bytes())
}

/// SHA-256 of a rule spec's canonical JSON: what a resumed run compares its stored rules by.
pub fn rules_hash(spec: &RuleSpec) -> String {
    crate::report::provenance::sha256_hex(serde_json::to_string(spec).unwrap_or_default().as_bytes())
}

/// Trains from scratch (or resumes) and writes the run directory. Returns `Error::Interrupted` after
/// saving when stopped early; the run then continues with `resume`.
pub fn train(config: &TrainConfig, out_dir: &Path, control: &RunControl, progress: &Progress) -> Result<TrainSummary> {
    let resume = control.resume;
    config.validate()?;
    let started = Instant::now();
    let paths = RunPaths::new(out_dir);
    let resume_command =
        control.resume_command.clone().unwrap_or_else(|| format!("ailla train --resume --out {}", out_dir.display()));
    let settings_sha256 = settings_hash(config);
    // A resume holds the directory from the start, so that the unit it reads is not being written;
    // a fresh run only looks until every input has been checked.
    let mut lock = None;
    let resume_from = if resume {
        std::fs::create_dir_all(&paths.dir).map_err(|e| Error::io(&paths.dir, e))?;
        lock = Some(RunLock::acquire(&paths.dir, &mut |note| progress.note(note))?);
        paths.remove_leftovers()?;
        match units::resume_point(&paths)? {
            ResumePoint::Start { ignored } => {
                for problem in &ignored {
                    progress.note(&format!("note: ignored {problem}; the run starts at step 0"));
                }
                None
            }
            ResumePoint::Unit { unit, skipped } => {
                for problem in &skipped {
                    progress.note(&format!("note: skipped {problem}"));
                }
                if !skipped.is_empty() {
                    progress.note(&format!(
                        "note: resuming from {} at step {}",
                        crate::report::provenance::relative_to(&unit.path, &paths.dir),
                        unit.manifest.step
                    ));
                }
                if unit.manifest.settings_sha256 != settings_sha256 {
                    return Err(Error::Config {
                        path: paths.config(),
                        message: format!(
                            "the run's settings have changed since its checkpoint at step {} (sha256 {} then,                              {settings_sha256} now): a resumed run continues with the settings it started with;                              restore them, or start a new run with --force",
                            unit.manifest.step, unit.manifest.settings_sha256
                        ),
                    });
                }
                Some(unit)
            }
        }
    } else {
        paths.check_fresh_start(control.force, &resume_command)?;
        None
    };
    // every input is read and checked before anything of an earlier run in the directory is removed
    let splits = config.corpus.load()?;

    let metrics_lines = resume_from.as_ref().map(|unit| (unit.manifest.metrics_lines, unit.manifest.step));
    let (mut model, vocabulary, mut optimizer, stored_rules) = match resume_from {
        Some(unit) => {
            let Resumable { checkpoint, optimizer, .. } = *unit;
            (checkpoint.model, checkpoint.vocabulary, optimizer, checkpoint.locality.map(|l| l.rules))
        }
        None => {
            let vocabulary = Vocabulary::build(config.tokenizer, &splits.train, config.vocab_cap);
            let model = Model::<f32>::init(config.model.config(vocabulary.len()), config.seed)?;
            let optimizer = AdamW::new(&model.params);
            (model, vocabulary, optimizer, None)
        }
    };
    let data = Dataset::with_vocabulary(&splits, vocabulary)?;
    let seq_len = model.config.ctx_len;
    for (split, ids) in [("train", &data.train), ("valid", &data.valid)] {
        if ids.len() <= seq_len + 1 {
            let file =
                data.files.iter().find(|f| f.file_name().is_some_and(|n| n.to_string_lossy().starts_with(split)));
            return Err(Error::Corpus {
                path: file.or(data.files.first()).cloned().unwrap_or_else(|| PathBuf::from(&data.name)),
                message: format!("the {split} split has {} tokens, fewer than one context of {seq_len}", ids.len()),
            });
        }
    }
    let mut rule_warnings = Vec::new();
    let mut locality = match &config.locality {
        Some(locality) => {
            // a resumed run's recruited blocks are part of its rules
            let (layers, heads) = (model.config.n_layers, model.config.n_heads);
            let placement =
                crate::recruit::RecruitmentConfig::of_run(config.recruitment.as_ref()).placement(layers, heads)?;
            let on_disk = locality
                .load_rules()
                .map(|rules| crate::recruit::spec_with_recruited(&rules, &model, &data.vocabulary, placement));
            // A resumed run keeps the rules it was trained with (its checkpoint stores them, recruited
            // blocks included): an edited rules file must not silently change the rest of the run.
            let spec = match (stored_rules.clone(), on_disk) {
                (Some(stored), on_disk) => {
                    match on_disk {
                        Ok(disk) if disk != stored => progress.note(&format!(
                            "note: the rules have changed since this run started (stored sha256 {}, on disk now \
                             {}); the run continues with the rules stored in its checkpoint",
                            rules_hash(&stored),
                            rules_hash(&disk)
                        )),
                        Err(e) => progress.note(&format!(
                            "note: the rules file cannot be read now ({e}); the run continues with the rules \
                             stored in its checkpoint (sha256 {})",
                            rules_hash(&stored)
                        )),
                        Ok(_) => {}
                    }
                    stored
                }
                (None, on_disk) => on_disk?,
            };
            let (set, warnings) = RuleSet::compile(&spec, &data.vocabulary)?;
            // every copy rule predicts through a copy path of its own (METHOD §4), created shut
            for name in crate::locality::copy_paths::missing_paths(&set, &model.config.copy_paths) {
                model.add_copy_path(&name)?;
            }
            optimizer.grow_to(&model.params);
            for warning in &warnings {
                progress.note(&format!("warning: {}", warning.0));
            }
            rule_warnings = warnings.into_iter().map(|w| w.0).collect();
            Some((locality, spec, set))
        }
        None => None,
    };
    if lock.is_none() {
        std::fs::create_dir_all(&paths.dir).map_err(|e| Error::io(&paths.dir, e))?;
        lock = Some(RunLock::acquire(&paths.dir, &mut |note| progress.note(note))?);
        // looked at again under the lock: another process may have started a run here meanwhile
        paths.check_fresh_start(control.force, &resume_command)?;
        paths.remove_leftovers()?;
        paths.clear_previous_run()?;
    }
    let stored = |locality: &Option<(&LocalityConfig, RuleSpec, RuleSet)>| {
        locality.as_ref().map(|(l, spec, _)| StoredLocality {
            rules: spec.clone(),
            dial: l.dial,
            progressive_beta: l.progressive_beta,
        })
    };
    let mut stored_locality = stored(&locality);
    let config_json = serde_json::to_string_pretty(config).map_err(|e| Error::Numeric(e.to_string()))?;
    checkpoint::atomic_write(&paths.config(), config_json.as_bytes())?;
    let start_step = optimizer.step;
    let (mut metrics, kept) = match metrics_lines {
        Some((lines, step)) => {
            MetricsLog::resume::<MetricsRecord>(&paths.metrics(), lines, &format!("the checkpoint at step {step}"))?
        }
        None => (MetricsLog::create(&paths.metrics())?, Vec::new()),
    };
    // a unit already committed at the step it holds is not written again
    let mut saved_step = metrics_lines.map(|(_, step)| step);

    let checkpoint_of =
        |model: &Model<f32>, optimizer: &AdamW<f32>, stored_locality: &Option<StoredLocality>| Checkpoint {
            model: model.clone(),
            vocabulary: data.vocabulary.clone(),
            step: optimizer.step,
            locality: stored_locality.clone(),
        };
    let save_unit = |model: &Model<f32>,
                     optimizer: &AdamW<f32>,
                     stored_locality: &Option<StoredLocality>,
                     metrics: &MetricsLog|
     -> Result<()> {
        // the lines a unit counts are on disk before the unit is
        metrics.sync()?;
        let ckpt = checkpoint_of(model, optimizer, stored_locality);
        units::save_unit(&paths.step_checkpoint(optimizer.step), &ckpt, optimizer, metrics.lines(), &settings_sha256)
            .map(|_| ())
    };
    let recruitment_split =
        crate::recruit::split_of(&data.valid, config.recruitment.as_ref().map_or(0, |r| r.split_tokens));
    let mut decisions: Vec<crate::recruit::Decision> = Vec::new();

    let eval_slice = &data.valid[..data.valid.len().min(config.eval_tokens + 1)];
    let mut losses = Vec::with_capacity(config.steps.min(1 << 20));
    // the steps before the resume point are the run's too
    for record in &kept {
        if let MetricsRecord::Train { loss, .. } = record {
            losses.push(*loss);
        }
    }
    let mut interrupted = false;
    let mut step = start_step;
    while step < config.steps {
        if control.interrupt.as_ref().is_some_and(|f| f.load(Ordering::SeqCst)) {
            interrupted = true;
            break;
        }
        if control.stop_after.is_some_and(|n| step >= n) {
            break;
        }
        let (loss, penalty, grads, lambda) = step_gradients(
            &model,
            config,
            locality.as_ref().map(|(settings, _, set)| (*settings, set)),
            &data.train,
            step,
        );
        let (loss, penalty) = (loss as f64, penalty as f64);
        if !(loss + penalty).is_finite() {
            // The weights that produced this loss came out of the previous update and are already
            // diverged: they go aside for inspection, and the last periodic checkpoint stays the last
            // good state.
            let diverged = paths.dir.join(format!("diverged-step-{step:07}.safetensors"));
            checkpoint::save(&diverged, &checkpoint_of(&model, &optimizer, &stored_locality))?;
            checkpoint::save_optimizer(&checkpoint::optimizer_path(&diverged), &optimizer, &model.params)?;
            let last_good = match units::resume_point(&paths) {
                Ok(ResumePoint::Unit { unit, .. }) => format!("the last good state is {}", unit.path.display()),
                _ => "no checkpoint was saved before it".into(),
            };
            return Err(Error::Numeric(format!(
                "training loss became {loss} at step {step}; {last_good}; the diverged weights are in {} \
                 (lower optim.learning_rate or enable optim.grad_clip)",
                diverged.display()
            )));
        }
        let learning_rate = config.optim.learning_rate_at(step, config.steps);
        let grad_norm = optimizer.update(&mut model.params, &grads, &config.optim, learning_rate);
        losses.push(loss);
        metrics.write(&MetricsRecord::Train { step: step + 1, loss, penalty, lambda, learning_rate, grad_norm })?;
        progress.step(step + 1, config.steps, loss);
        let done = step + 1;
        if config.eval_every > 0 && done % config.eval_every == 0 && done < config.steps {
            let result = evaluate(&model, eval_slice, config.batch_size, &NoHook);
            progress
                .note(&format!("step {done:>6}  valid loss {:.4}  ppl {:.3}", result.mean_ce_nats, result.perplexity));
            metrics.write(&MetricsRecord::Eval { step: done, split: "valid".into(), result })?;
        }
        if config.checkpoint_every > 0 && done % config.checkpoint_every == 0 && done < config.steps {
            save_unit(&model, &optimizer, &stored_locality, &metrics)?;
            saved_step = Some(done);
        }
        step += 1;
        let recruiting = config.recruitment.as_ref().filter(|r| {
            let recruited = locality.as_ref().map_or(0, |(_, spec, _)| crate::recruit::recruited_count(&model, spec));
            done % r.check_every == 0 && done < config.steps && recruited < r.max_blocks
        });
        if let (Some(recruitment), Some((settings, spec, set))) = (recruiting, locality.as_ref()) {
            let context = crate::recruit::CheckContext {
                config,
                recruitment,
                locality: settings,
                spec,
                set,
                vocabulary: &data.vocabulary,
                train_ids: &data.train,
                split: recruitment_split,
                step: done,
            };
            let log = |decisions: &[crate::recruit::Decision], metrics: &mut MetricsLog| -> Result<()> {
                for decision in decisions {
                    progress.note(&format!(
                        "step {done:>6}  recruitment: {} ({} members) saves {:.1} bits, needs {:.1} (cost, margin{}): {}",
                        decision.candidate,
                        decision.members.len(),
                        decision.saving_bits(),
                        decision.required_bits(),
                        if decision.trial == crate::recruit::TrialKind::CoTrained { ", noise" } else { "" },
                        if decision.accepted { "accepted" } else { "rejected" }
                    ));
                    metrics.write(&MetricsRecord::Recruitment(Box::new(decision.clone())))?;
                }
                Ok(())
            };
            if recruitment.trial == crate::recruit::TrialKind::Frozen {
                let candidates = crate::recruit::copy_check::propose(&context, &model);
                let outcome = crate::recruit::copy_check::check(&context, &model, &candidates)?;
                log(&outcome.decisions, &mut metrics)?;
                progress.note(&format!(
                    "step {done:>6}  recruitment check: {} candidates in {:.2} s",
                    candidates.len(),
                    outcome.seconds
                ));
                decisions.extend(outcome.decisions);
                if let Some((candidate, name, gate)) = outcome.accepted {
                    // the block and its copy path join the model, the path shut (u = 0, b = b₀) unless
                    // the pipeline keeps the trial's gate: see RecruitmentConfig::keep_trial_gate
                    let spec = crate::recruit::spec_with_copy_block(
                        spec,
                        &name,
                        &candidate.members,
                        &data.vocabulary,
                        recruitment.copy_within,
                    );
                    let (set, _) = RuleSet::compile(&spec, &data.vocabulary)?;
                    let settings = *settings;
                    let path = crate::recruit::recruited_copy_rule_name(&name);
                    model.add_copy_path(&path)?;
                    let index = model.config.copy_paths.len() - 1;
                    if recruitment.keep_trial_gate {
                        model.params.copy_gate_weight.row_mut(index).assign(&gate.weight);
                        model.params.copy_gate_bias[index] = gate.bias;
                    }
                    optimizer.grow_to(&model.params);
                    checkpoint::atomic_write(
                        &paths.dir.join("recruited.rules"),
                        crate::recruit::copy_rules_snippet(&spec, &decisions).as_bytes(),
                    )?;
                    locality = Some((settings, spec, set));
                    stored_locality = stored(&locality);
                }
                continue;
            }
            let outcome = crate::recruit::check(&context, &model, &optimizer, &[])?;
            log(&outcome.decisions, &mut metrics)?;
            decisions.extend(outcome.decisions);
            if let Some((trial, spec)) = outcome.accepted {
                // the accepted trial's steps are the run's next steps
                for &(s, loss, penalty, lambda, learning_rate, grad_norm) in &trial.steps {
                    losses.push(loss);
                    metrics.write(&MetricsRecord::Train {
                        step: s,
                        loss,
                        penalty,
                        lambda,
                        learning_rate,
                        grad_norm,
                    })?;
                }
                let (set, _) = RuleSet::compile(&spec, &data.vocabulary)?;
                let settings = *settings;
                model = trial.model;
                optimizer = trial.optimizer;
                step = optimizer.step;
                locality = Some((settings, spec, set));
                stored_locality = stored(&locality);
                checkpoint::atomic_write(
                    &paths.dir.join("recruited.rules"),
                    crate::recruit::rules_snippet(&model, &data.vocabulary, &decisions).as_bytes(),
                )?;
            }
        }
    }
    progress.finish();
    if saved_step != Some(optimizer.step) {
        save_unit(&model, &optimizer, &stored_locality, &metrics)?;
    }
    units::publish(&paths.step_checkpoint(optimizer.step), &paths.model())?;
    if interrupted {
        return Err(Error::Interrupted(format!(
            "stopped after step {}; continue with `{resume_command}`",
            optimizer.step
        )));
    }
    let final_slice = |ids: &'_ [u32]| -> std::ops::Range<usize> {
        0..config.final_eval_tokens.map_or(ids.len(), |n| ids.len().min(n.saturating_add(1)))
    };
    let (valid_ids, test_ids) = (&data.valid[final_slice(&data.valid)], &data.test[final_slice(&data.test)]);
    let valid = evaluate(&model, valid_ids, config.batch_size, &NoHook);
    let test = evaluate(&model, test_ids, config.batch_size, &NoHook);
    for (split, result) in [("valid", &valid), ("test", &test)] {
        metrics.write(&MetricsRecord::Eval { step: optimizer.step, split: split.into(), result: result.clone() })?;
    }
    let mut dial = Vec::new();
    if let Some((settings, _, set)) = &locality {
        // evaluate with the rules in force when training ended (injections may have switched off)
        let final_rules = set.active_at(optimizer.step);
        let evaluation = DialEvaluation {
            rules: &final_rules,
            settings: settings.dial,
            progressive_beta: settings.progressive_beta,
            epsilon: settings.epsilon,
            certificate_batches: settings.certificate_batches,
            batch_size: config.batch_size,
        };
        for &lambda in &settings.eval_lambdas {
            let measured = evaluate_at(&model, test_ids, lambda, &evaluation);
            progress.note(&format!(
                "λ {lambda:.2}  test ppl {:.3}  entropy {:.3} bits  fidelity {:.4}",
                measured.language_model.perplexity, measured.entropy_bits, measured.pointer_fidelity
            ));
            metrics.write(&MetricsRecord::Dial {
                step: optimizer.step,
                split: "test".into(),
                metrics: Box::new(measured.clone()),
            })?;
            dial.push(measured);
        }
    }
    let summary = TrainSummary {
        steps_done: optimizer.step,
        steps_planned: config.steps,
        parameters: model.params.parameter_count(),
        vocab_size: data.vocabulary.len(),
        tokenizer: data.vocabulary.kind,
        train_tokens: data.train.len(),
        unigram_entropy_nats: unigram_entropy(&data.valid, data.vocabulary.len()),
        valid,
        test,
        losses,
        dial,
        rule_warnings,
        seconds: started.elapsed().as_secs_f64(),
    };
    let json = serde_json::to_string_pretty(&summary).map_err(|e| Error::Numeric(e.to_string()))?;
    checkpoint::atomic_write(&paths.summary(), json.as_bytes())?;
    drop(lock);
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evaluation_scores_every_token_once_including_a_short_last_window() {
        let config = ModelShape { ctx_len: 4, d_model: 8, n_heads: 2, n_layers: 1, d_ff: 8, tied: true }.config(5);
        let model = Model::<f32>::init(config, 1).unwrap();
        let ids: Vec<u32> = (0..11).map(|i| i % 5).collect();
        let all = evaluate(&model, &ids, 2, &NoHook);
        assert_eq!(all.tokens, 10);
        // batch size does not change what is scored, only how it is grouped
        let one_by_one = evaluate(&model, &ids, 1, &NoHook);
        assert!((all.mean_ce_nats - one_by_one.mean_ce_nats).abs() < 1e-6);
    }

    #[test]
    fn batches_depend_only_on_seed_and_step() {
        let ids: Vec<u32> = (0..1000).collect();
        let a = sample_batch(&ids, 3, 8, 9, 17);
        assert_eq!(a, sample_batch(&ids, 3, 8, 9, 17));
        assert_ne!(a, sample_batch(&ids, 3, 8, 9, 18));
        let (inputs, targets) = a;
        assert_eq!(&inputs[1..8], &targets[..7]);
    }
}
