//! Throughput and memory measurements, shared by `ailla bench` and `benches/throughput.rs`.
//!
//! Figures are reported beside a reference measured in the same run: the machine's sgemm rate (so model
//! GFLOP/s reads as a fraction of the peak) and, when asked, PyTorch eager on the same model and threads.

pub mod device;
mod torch;

pub use torch::{median_torch_of_rounds, run_torch, TorchResult};

use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::engine::attention::NoHook;
use crate::engine::linalg::{gemm, gemm_flops};
use crate::engine::optim::{AdamW, OptimConfig};
use crate::engine::{Config, Model};
use crate::rng::Rng;
use crate::{Error, Result};

/// A named model and batch shape to measure.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
pub struct BenchConfig {
    pub name: String,
    pub vocab_size: usize,
    pub d_model: usize,
    pub n_heads: usize,
    pub n_layers: usize,
    pub d_ff: usize,
    pub ctx_len: usize,
    pub batch_size: usize,
}

impl BenchConfig {
    pub fn shape(&self) -> crate::train::ModelShape {
        crate::train::ModelShape {
            ctx_len: self.ctx_len,
            d_model: self.d_model,
            n_heads: self.n_heads,
            n_layers: self.n_layers,
            d_ff: self.d_ff,
            tied: true,
        }
    }

    pub fn model_config(&self) -> Config {
        self.shape().config(self.vocab_size)
    }
}

/// What the dial and recruitment measurements run on: the bundled corpus, its word vocabulary, the
/// bundled rules compiled against it, and the char-small shape with that vocabulary.
struct BundledSetup {
    corpus: crate::data::Splits,
    vocabulary: crate::data::Vocabulary,
    spec: crate::locality::RuleSpec,
    set: crate::locality::RuleSet,
    config: BenchConfig,
}

fn bundled_setup() -> Result<BundledSetup> {
    use crate::data::generator::{bundled_corpus, DEFAULT_SEED};
    use crate::data::{TokenizerKind, Vocabulary};
    use crate::locality::{RuleSet, RulesSource};

    let corpus = bundled_corpus(DEFAULT_SEED);
    let vocabulary = Vocabulary::build(TokenizerKind::Word, &corpus.train, 50_000);
    let spec = RulesSource::Bundled.load()?;
    let (set, _) = RuleSet::compile(&spec, &vocabulary)?;
    let shape = standard_configs().into_iter().next().ok_or_else(|| Error::invalid("bench", "no configuration"))?;
    let config = BenchConfig { vocab_size: vocabulary.len(), ..shape };
    Ok(BundledSetup { corpus, vocabulary, spec, set, config })
}

/// The standard configurations: a character model; WikiText-2's word vocabulary (33,278 entries with
/// `<eos>`, as counted in `shared/data/README.md`) where the output layer dominates; and the word-level
/// model of `pipelines/aila.yaml` (context 512, batch 4), where attention over long rows adds its share.
pub fn standard_configs() -> Vec<BenchConfig> {
    let base = |name: &str, vocab_size| BenchConfig {
        name: name.into(),
        vocab_size,
        d_model: 128,
        n_heads: 4,
        n_layers: 2,
        d_ff: 512,
        ctx_len: 128,
        batch_size: 16,
    };
    let aila = BenchConfig { ctx_len: 512, batch_size: 4, ..base("aila", 33_278) };
    vec![base("char-small", 128), base("word-wt2", 33_278), aila]
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
pub struct BenchResult {
    pub config: BenchConfig,
    pub threads: usize,
    pub parameters: usize,
    pub train_tokens_per_s: f64,
    pub eval_tokens_per_s: f64,
    /// Model arithmetic per second during training, by [`Config::training_flops_per_token`].
    pub train_gflops: f64,
    /// The reference rate this configuration's training is a share of: a 1024³ sgemm through the
    /// engine's product, timed after every training step, median over the steps. Measured between
    /// the steps, it sees the machine as they saw it (on a shared machine the rate moves by a
    /// quarter from minute to minute).
    #[serde(default)]
    pub sgemm_gflops: f64,
    /// Peak resident memory of the process in MiB (`VmHWM`); run one configuration per process to
    /// attribute it.
    pub peak_memory_mib: Option<f64>,
    /// Where a training step's time goes, on the CPU engine (absent from the device step and from
    /// results written before it was measured).
    #[serde(default)]
    pub train_step_parts: Option<StepParts>,
}

/// Median seconds of each part of a CPU training step, over the same steps as the whole step's
/// median (so the parts need not add up to it exactly).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
pub struct StepParts {
    /// Through the blocks up to the last LayerNorm (`Model::forward`).
    pub forward_seconds: f64,
    /// The output projection and its loss, forward and backward together (`Model::output_loss`).
    pub output_layer_seconds: f64,
    /// Back through the blocks and the embeddings (`Model::backward`).
    pub backward_seconds: f64,
    /// AdamW with its gradient norm (`AdamW::update`).
    pub optimizer_seconds: f64,
}

impl BenchResult {
    /// The figures of `config` from the median seconds of one training step and one evaluation pass of
    /// `model` on a batch, beside the reference rate measured with them.
    pub(crate) fn of_steps(
        config: &BenchConfig,
        model: &Model<f32>,
        train_seconds: f64,
        eval_seconds: f64,
        sgemm_gflops: f64,
        peak_memory_mib: Option<f64>,
    ) -> Self {
        let tokens = (config.batch_size * config.ctx_len) as f64;
        let train_tokens_per_s = tokens / train_seconds;
        BenchResult {
            config: config.clone(),
            threads: rayon::current_num_threads(),
            parameters: model.params.parameter_count(),
            train_tokens_per_s,
            eval_tokens_per_s: tokens / eval_seconds,
            train_gflops: train_tokens_per_s * model.config.training_flops_per_token(config.ctx_len) / 1e9,
            sgemm_gflops,
            peak_memory_mib,
            train_step_parts: None,
        }
    }
}

/// Peak resident set size of this process, from `/proc/self/status` (Linux only).
pub fn peak_memory_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Single-precision matrix-product rate of this machine through the engine's own product (OpenBLAS
/// split over the rayon pool): the ceiling that model GFLOP/s is compared against.
pub fn sgemm_gflops(size: usize, repeats: usize) -> f64 {
    let mut reference = ReferenceProduct::new(size);
    reference.seconds();
    let best = (0..repeats.max(1)).map(|_| reference.seconds()).fold(f64::INFINITY, f64::min);
    reference.gflops(best)
}

/// A square sgemm through the engine's own product, to time between other work.
struct ReferenceProduct {
    size: usize,
    a: ndarray::Array2<f32>,
    b: ndarray::Array2<f32>,
    c: ndarray::Array2<f32>,
}

impl ReferenceProduct {
    fn new(size: usize) -> Self {
        let a = ndarray::Array2::<f32>::from_shape_fn((size, size), |(i, j)| ((i * 7 + j) % 13) as f32 * 0.01);
        let b = a.t().to_owned();
        ReferenceProduct { size, a, b, c: ndarray::Array2::zeros((size, size)) }
    }

    fn seconds(&mut self) -> f64 {
        let start = Instant::now();
        gemm(1.0, self.a.view(), self.b.view(), 0.0, self.c.view_mut());
        start.elapsed().as_secs_f64()
    }

    fn gflops(&self, seconds: f64) -> f64 {
        gemm_flops(self.size, self.size, self.size) / seconds / 1e9
    }
}

pub(crate) fn median(mut times: Vec<f64>) -> f64 {
    times.sort_by(f64::total_cmp);
    times.get(times.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Forgets the process's peak resident memory so far (Linux 4.0 and later); false where it cannot.
fn reset_peak_memory() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Median wall time of `repeats` calls: robust to the occasional step slowed by another process, which
/// a mean over a shared two-core machine is not.
pub fn median_seconds(repeats: usize, mut work: impl FnMut()) -> f64 {
    median((0..repeats.max(1)).map(|_| seconds(&mut work)).collect())
}

/// Wall time of one call.
fn seconds(work: impl FnOnce()) -> f64 {
    let start = Instant::now();
    work();
    start.elapsed().as_secs_f64()
}

/// Median wall time of each piece of work over `repeats` rounds, each round running every piece once
/// after the other, after one untimed round. The ratios of their times are what is wanted, and on a
/// shared machine whose rate moves by a quarter within a minute, timing one piece's repeats after
/// another's would put that drift into the ratio.
pub fn interleaved_median_seconds<const K: usize>(repeats: usize, work: [&dyn Fn(); K]) -> [f64; K] {
    work.iter().for_each(|piece| piece());
    let mut times: [Vec<f64>; K] = std::array::from_fn(|_| Vec::with_capacity(repeats.max(1)));
    for _ in 0..repeats.max(1) {
        for (piece, times) in work.iter().zip(times.iter_mut()) {
            times.push(seconds(piece));
        }
    }
    times.map(median)
}

/// Median time of `steps` training steps (forward, backward, AdamW) and of `steps` evaluation passes,
/// after one untimed warm-up of each, on random tokens.
pub fn run_config(config: &BenchConfig, steps: usize) -> Result<BenchResult> {
    if steps == 0 {
        return Err(Error::invalid("steps", "must be at least 1"));
    }
    let model_config = config.model_config();
    let mut model = Model::<f32>::init(model_config.clone(), 1)?;
    let mut optimizer = AdamW::new(&model.params);
    let optim = OptimConfig::default();
    let n = config.batch_size * config.ctx_len;
    let mut rng = Rng::new(7);
    let tokens: Vec<u32> = (0..n).map(|_| rng.below(config.vocab_size) as u32).collect();
    let targets: Vec<u32> = (0..n).map(|_| rng.below(config.vocab_size) as u32).collect();

    // the gradients and the update, with the seconds of each part: forward, output layer, backward, AdamW
    let mut train_step = |model: &mut Model<f32>| -> [f64; 4] {
        let mut marks = Vec::with_capacity(5);
        marks.push(Instant::now());
        let (batch, seq_len) = (config.batch_size, config.ctx_len);
        let mut mark = || marks.push(Instant::now());
        let (_, _, grads) = model.loss_and_grads_marked(&tokens, &targets, batch, seq_len, &NoHook, None, &mut mark);
        mark();
        optimizer.update(&mut model.params, &grads, &optim, 1e-4);
        mark();
        std::array::from_fn(|part| marks.get(part + 1).map_or(0.0, |&end| (end - marks[part]).as_secs_f64()))
    };
    // Inside the pool, as `ailla run` trains: from outside it every parallel region would first hand
    // its work to a pool thread and wait for it.
    let (train_seconds, parts, sgemm_seconds, reference) = rayon::scope(|_| {
        let mut reference = ReferenceProduct::new(1024);
        train_step(&mut model);
        reference.seconds();
        let (mut train, mut product) = (Vec::with_capacity(steps), Vec::with_capacity(steps));
        let mut parts: [Vec<f64>; 4] = std::array::from_fn(|_| Vec::with_capacity(steps));
        for _ in 0..steps {
            let start = Instant::now();
            let step_parts = train_step(&mut model);
            train.push(start.elapsed().as_secs_f64());
            product.push(reference.seconds());
            parts.iter_mut().zip(step_parts).for_each(|(times, seconds)| times.push(seconds));
        }
        (median(train), parts.map(median), median(product), reference)
    });
    let [forward_seconds, output_layer_seconds, backward_seconds, optimizer_seconds] = parts;
    let parts = StepParts { forward_seconds, output_layer_seconds, backward_seconds, optimizer_seconds };
    let sgemm_gflops = reference.gflops(sgemm_seconds);
    // the reference's three matrices are not the model's memory
    drop(reference);
    let peak_reset = reset_peak_memory();
    if peak_reset {
        rayon::scope(|_| train_step(&mut model));
    }

    let eval_step = |model: &Model<f32>| {
        let cache = model.forward_inference(&tokens, config.batch_size, config.ctx_len, &NoHook);
        model.output_loss(&cache, &targets, false, None).mean_nll
    };
    let eval_seconds = rayon::scope(|_| {
        eval_step(&model);
        median_seconds(steps, || {
            std::hint::black_box(eval_step(&model));
        })
    });

    let result = BenchResult::of_steps(config, &model, train_seconds, eval_seconds, sgemm_gflops, peak_memory_mib());
    Ok(BenchResult { train_step_parts: Some(parts), ..result })
}

/// Cost of the locality dial at evaluation: the same forward pass and loss with and without the rules.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
pub struct DialOverhead {
    pub plain_tokens_per_s: f64,
    /// With target sets computed for the batch and the bias applied at λ = 1.
    pub rules_tokens_per_s: f64,
    /// With, in addition, every metric and certificate of the evaluation pass.
    pub metrics_tokens_per_s: f64,
    /// `rules / plain` time ratio; the target is at most 1.15 (issue 23).
    pub cost_ratio: f64,
    /// With one copy rule (`copy from drugs within 40`, METHOD §4) instead of the attention rules:
    /// its caches built for the batch and its path mixed in at λ = 1.
    pub copy_tokens_per_s: f64,
    /// `copy / plain` time ratio; the target is at most 1.15.
    pub copy_cost_ratio: f64,
}

/// Measures [`DialOverhead`] on the bundled corpus and rules with the char-small shape (ctx 128, d 128,
/// batch 16) and the bundled word vocabulary.
pub fn dial_overhead(steps: usize) -> Result<DialOverhead> {
    use crate::locality::metrics::{evaluate_at, DialEvaluation};
    use crate::locality::{BatchTargets, DialSettings, LocalityHook};

    let BundledSetup { corpus, vocabulary, set, config, spec } = bundled_setup()?;
    let model = Model::<f32>::init(config.model_config(), 1)?;
    let (batch, seq_len) = (config.batch_size, config.ctx_len);
    let ids = vocabulary.encode(&corpus.test);
    let n = batch * seq_len;
    let (inputs, targets) = (&ids[..n], &ids[1..n + 1]);
    let settings = DialSettings::default();
    let plain = || {
        let cache = model.forward(inputs, batch, seq_len, &NoHook);
        std::hint::black_box(model.output_loss(&cache, targets, false, None).mean_nll);
    };
    let with_rules = || {
        let batch_targets = BatchTargets::new(&set, inputs, batch, seq_len, config.n_layers, config.n_heads);
        let hook = LocalityHook::new(&batch_targets, vec![1.0; config.n_layers], settings, false);
        let cache = model.forward(inputs, batch, seq_len, &hook);
        std::hint::black_box(model.output_loss(&cache, targets, false, None).mean_nll);
    };
    let evaluation = DialEvaluation {
        rules: &set,
        settings,
        progressive_beta: None,
        epsilon: 0.05,
        certificate_batches: 0,
        batch_size: batch,
    };
    let with_metrics = || {
        std::hint::black_box(evaluate_at(&model, &ids[..n + 1], 1.0, &evaluation));
    };
    let copy_spec = crate::locality::RuleSpec {
        rules: vec![crate::locality::rules::RuleEntrySpec {
            name: "drug is copied".into(),
            kind: crate::locality::rules::RuleKindSpec::AnyToBlock { to: "drugs".into() },
            layers: None,
            heads: None,
            within: Some(40),
            strength: 1.0,
            priority: 0,
            from_step: None,
            until_step: None,
            copy: true,
        }],
        own_block_default: false,
        ..spec
    };
    let (copy_set, _) = crate::locality::RuleSet::compile(&copy_spec, &vocabulary)?;
    let mut copy_model = model.clone();
    copy_model.add_copy_path("drug is copied")?;
    let with_copy = || {
        let paths = &copy_model.config.copy_paths;
        let caches = crate::locality::copy_paths::batch_caches(&copy_set, paths, inputs, batch, seq_len);
        let cache = copy_model.forward(inputs, batch, seq_len, &NoHook);
        std::hint::black_box(
            copy_model.output_loss(&cache, targets, false, caches.as_ref().map(|c| (c, 1.0))).mean_nll,
        );
    };
    // The pass with every metric is in no ratio and is timed on its own: interleaved, it slowed
    // whichever piece came after it by about 40 % (measured on a Zen 4 EPYC), which read as a copy
    // path costing 1.42× when its own parts add 3 %.
    let [plain_s, rules_s, copy_s] = interleaved_median_seconds(steps, [&plain, &with_rules, &with_copy]);
    with_metrics();
    let metrics_s = median_seconds(steps, with_metrics);
    Ok(DialOverhead {
        plain_tokens_per_s: n as f64 / plain_s,
        rules_tokens_per_s: n as f64 / rules_s,
        metrics_tokens_per_s: n as f64 / metrics_s,
        cost_ratio: rules_s / plain_s,
        copy_tokens_per_s: n as f64 / copy_s,
        copy_cost_ratio: copy_s / plain_s,
    })
}

/// Aggregate training throughput of `members` concurrent sweep members, each training `config` for
/// `steps` steps on random tokens, under the pipeline's thread policy (`pipeline::run::thread_split`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
pub struct Scaling {
    pub members: usize,
    /// Members running at once, and engine threads each.
    pub concurrent: usize,
    pub threads_each: usize,
    pub tokens_per_s: f64,
}

pub fn sweep_scaling(config: &BenchConfig, steps: usize, members: usize, cores: usize) -> Result<Scaling> {
    let (concurrent, threads_each) = crate::pipeline::run::thread_split(cores, members);
    let model_config = config.model_config();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failed = std::sync::atomic::AtomicBool::new(false);
    let n = config.batch_size * config.ctx_len;
    let start = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..concurrent {
            scope.spawn(|| {
                let Ok(pool) = rayon::ThreadPoolBuilder::new().num_threads(threads_each).build() else {
                    failed.store(true, std::sync::atomic::Ordering::SeqCst);
                    return;
                };
                while next.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < members {
                    pool.install(|| {
                        let Ok(mut model) = Model::<f32>::init(model_config.clone(), 1) else { return };
                        let mut optimizer = AdamW::new(&model.params);
                        let mut rng = Rng::new(7);
                        let tokens: Vec<u32> = (0..n).map(|_| rng.below(config.vocab_size) as u32).collect();
                        for _ in 0..steps {
                            let (_, _, grads) = model.loss_and_grads(
                                &tokens,
                                &tokens,
                                config.batch_size,
                                config.ctx_len,
                                &NoHook,
                                None,
                            );
                            optimizer.update(&mut model.params, &grads, &OptimConfig::default(), 1e-4);
                        }
                    });
                }
            });
        }
    });
    if failed.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(Error::Numeric("cannot start the members' worker threads".into()));
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(Scaling { members, concurrent, threads_each, tokens_per_s: (members * steps * n) as f64 / seconds })
}

/// The price of one block-recruitment check against the training steps it trials.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
pub struct RecruitmentCost {
    /// Trials in the check: the control and every candidate.
    pub trials: usize,
    pub trial_steps: usize,
    pub check_seconds: f64,
    /// The same number of ordinary training steps (`trials × trial_steps`), one after another.
    pub steps_seconds: f64,
    /// `check / steps`; the target is at most 1.1.
    pub ratio: f64,
}

/// One recruitment check on the bundled corpus (char-small shape, word vocabulary, the bundled rules)
/// beside the training steps it runs.
pub fn recruitment_cost(trial_steps: usize) -> Result<RecruitmentCost> {
    use crate::locality::RulesSource;
    use crate::recruit::{check, split_of, CheckContext, RecruitmentConfig};
    use crate::train::{step_gradients, Batches, LocalityConfig, TrainConfig};

    let BundledSetup { corpus, vocabulary, spec, set, config: shape } = bundled_setup()?;
    let recruitment = RecruitmentConfig::new(1, trial_steps, 0.0, 1);
    let locality = LocalityConfig {
        rules: RulesSource::Bundled,
        dial: Default::default(),
        schedule: crate::locality::LambdaSchedule::Constant { lambda: 0.5 },
        progressive_beta: None,
        epsilon: 0.05,
        eval_lambdas: vec![0.0],
        certificate_batches: 0,
        injections: Vec::new(),
    };
    let config = TrainConfig {
        model: shape.shape(),
        batch_size: shape.batch_size,
        steps: 10 * trial_steps,
        locality: Some(locality.clone()),
        recruitment: Some(recruitment.clone()),
        ..TrainConfig::default()
    };
    let model = Model::<f32>::init(shape.model_config(), 1)?;
    let optimizer = AdamW::new(&model.params);
    let train_ids = vocabulary.encode(&corpus.train);
    let valid_ids = vocabulary.encode(&corpus.valid);
    let context = CheckContext {
        config: &config,
        recruitment: &recruitment,
        locality: &locality,
        spec: &spec,
        set: &set,
        vocabulary: &vocabulary,
        train_ids: &train_ids,
        split: split_of(&valid_ids, recruitment.split_tokens),
        step: 0,
    };
    let started = Instant::now();
    let outcome = check(&context, &model, &optimizer, &[])?;
    let check_seconds = started.elapsed().as_secs_f64();
    let trials = outcome.trials;
    let mut plain = model.clone();
    let mut plain_optimizer = optimizer.clone();
    let started = Instant::now();
    for step in 0..trials * trial_steps {
        let grads = step_gradients(&plain, Batches::of(&config), Some((&locality, &set)), &train_ids, step).grads;
        plain_optimizer.update(&mut plain.params, &grads, &config.optim, 1e-3);
    }
    let steps_seconds = started.elapsed().as_secs_f64();
    Ok(RecruitmentCost { trials, trial_steps, check_seconds, steps_seconds, ratio: check_seconds / steps_seconds })
}

/// The price of one frozen-model recruitment check (METHOD §7) against the training it interrupts.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
pub struct FrozenCheckCost {
    /// The pipeline whose settings were measured.
    pub pipeline: String,
    pub candidates: usize,
    /// Tokens of the recruitment split `D` the check scores.
    pub split_tokens: usize,
    /// Steps between two checks, as the pipeline sets them.
    pub check_every: usize,
    /// The check's time, median of five timings of the same check.
    pub check_seconds: f64,
    /// Training steps timed; their time is scaled to `check_every` steps, which all cost the same.
    pub timed_steps: usize,
    /// `check_every` ordinary training steps.
    pub steps_seconds: f64,
    /// `check / steps`; the target is at most 0.15.
    pub ratio: f64,
    /// What the pipeline's check scores on `D`; `check_seconds` is that check's time.
    pub split_scoring: crate::config::SplitScoring,
    /// The same check scoring every position of `D` (the default `split_scoring`).
    pub every_position_seconds: f64,
    /// The largest difference between the two checks' savings of one candidate, in bits: their
    /// decisions agree when it is far below the margin.
    pub largest_saving_difference_bits: f64,
}

/// Timings of the check whose median is its price.
const CHECK_REPEATS: usize = 5;

/// Candidates of the priced check, as the target names them.
const CHECK_CANDIDATES: usize = 8;

/// Training steps timed to price the steps between two checks: every step has the same shapes, so a
/// hundred of them give its cost to well under the check's own variation.
const TIMED_STEPS: usize = 100;

/// One frozen-model check of 8 candidates at a pipeline's settings (its first member's model, corpus,
/// rules, trial batches, gate steps and split `D`), beside the training steps between two of its
/// checks. `data` replaces the pipeline's corpus directory, as `ailla run --data` does.
pub fn frozen_check_cost(path: &std::path::Path, data: Option<std::path::PathBuf>) -> Result<FrozenCheckCost> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let options = crate::pipeline::PlanOptions { quick: false, data_directory: data };
    let plan = crate::pipeline::plan_with(&text, path, &options).map_err(|problems| Error::Config {
        path: path.to_path_buf(),
        message: format!(
            "the pipeline has problems:\n{}",
            crate::pipeline::diagnostics::render(path, &text, &problems)
        ),
    })?;
    let member = plan.members.first().ok_or_else(|| Error::invalid("--check-cost", "the pipeline has no member"))?;
    let config = &member.config;
    let (Some(locality), Some(recruitment)) = (config.locality.as_ref(), config.recruitment.as_ref()) else {
        return Err(Error::invalid("--check-cost", "the pipeline has no locality or recruitment section"));
    };
    let splits = config.corpus.load()?;
    let vocabulary = crate::data::Vocabulary::build(config.tokenizer, &splits.train, config.vocab_cap);
    let spec = locality.load_rules()?;
    let (set, _) = crate::locality::RuleSet::compile(&spec, &vocabulary)?;
    let model = Model::<f32>::init(config.model.config(vocabulary.len()), config.seed)?;
    let train_ids = vocabulary.encode(&splits.train);
    let valid_ids = vocabulary.encode(&splits.valid);
    let split = crate::recruit::split_of(&valid_ids, recruitment.split_tokens);
    let context = crate::recruit::CheckContext {
        config,
        recruitment,
        locality,
        spec: &spec,
        set: &set,
        vocabulary: &vocabulary,
        train_ids: &train_ids,
        split,
        step: 0,
    };
    // the candidates the run's first check proposes (its clusters, recurrent tokens and recruitable
    // blocks), topped up to 8 with blocks of 16 tokens drawn from the vocabulary past the special
    // entries: how often a candidate's cache holds the target is what a check's cost depends on
    let specials = match config.tokenizer {
        crate::data::TokenizerKind::Char => 1,
        crate::data::TokenizerKind::Word => 2,
    };
    if vocabulary.len() <= specials {
        return Err(Error::Corpus { path: path.to_path_buf(), message: "its corpus has no ordinary tokens".into() });
    }
    let mut rng = crate::rng::Rng::new(8);
    let mut candidates = crate::recruit::copy_check::propose(&context, &model);
    candidates.truncate(CHECK_CANDIDATES);
    for k in candidates.len()..CHECK_CANDIDATES {
        let mut members: Vec<u32> =
            (0..16).map(|_| (specials + rng.below(vocabulary.len() - specials)) as u32).collect();
        members.sort_unstable();
        members.dedup();
        candidates.push(crate::recruit::Candidate {
            name: format!("block-{k}"),
            origin: crate::recruit::Origin::Given,
            members,
        });
    }
    // a check takes a tenth of a second: one timing is at the mercy of the machine's neighbours, so
    // the check (deterministic, the same outcome every time) is timed several times
    let mut outcome = None;
    let mut times = Vec::with_capacity(CHECK_REPEATS);
    for _ in 0..CHECK_REPEATS {
        let started = Instant::now();
        outcome = Some(crate::recruit::copy_check::check(&context, &model, &candidates)?);
        times.push(started.elapsed().as_secs_f64());
    }
    let outcome = outcome.ok_or_else(|| Error::invalid("--check-cost", "the check was never run"))?;
    let check_seconds = median(times);
    let every_position = crate::config::RecruitmentConfig {
        split_scoring: crate::config::SplitScoring::EveryPosition,
        ..recruitment.clone()
    };
    let started = Instant::now();
    let reference = crate::recruit::copy_check::check(
        &crate::recruit::CheckContext { recruitment: &every_position, ..context },
        &model,
        &candidates,
    )?;
    let every_position_seconds = started.elapsed().as_secs_f64();
    let largest_saving_difference_bits = outcome
        .decisions
        .iter()
        .zip(&reference.decisions)
        .map(|(a, b)| (a.saving_bits() - b.saving_bits()).abs())
        .fold(0.0, f64::max);
    let mut plain = model.clone();
    let mut optimizer = AdamW::new(&plain.params);
    let step_plan = crate::step::StepPlan::of(config, Some((locality, &set)), &train_ids);
    let timed_steps = TIMED_STEPS.min(recruitment.check_every);
    let started = Instant::now();
    for step in 0..timed_steps {
        // a non-finite loss skips only the optimizer's update, a small part of a step; the weights
        // are not looked at
        let _ = crate::step::train_step(&mut plain, &mut optimizer, &step_plan, step, step);
    }
    let steps_seconds = started.elapsed().as_secs_f64() * recruitment.check_every as f64 / timed_steps.max(1) as f64;
    Ok(FrozenCheckCost {
        pipeline: path.display().to_string(),
        candidates: candidates.len(),
        split_tokens: split.len(),
        check_every: recruitment.check_every,
        check_seconds,
        timed_steps,
        steps_seconds,
        ratio: check_seconds / steps_seconds,
        split_scoring: recruitment.split_scoring,
        every_position_seconds,
        largest_saving_difference_bits,
    })
}

/// One configuration's figures from several rounds: the round of the median training rate (its
/// sgemm reference and model rate with it, so that the share stays that round's), with the median
/// evaluation rate and the largest peak memory of all rounds. `None` for no rounds.
pub fn median_of_rounds(mut rounds: Vec<BenchResult>) -> Option<BenchResult> {
    let eval = median(rounds.iter().map(|r| r.eval_tokens_per_s).collect());
    let peak = rounds.iter().filter_map(|r| r.peak_memory_mib).reduce(f64::max);
    rounds.sort_by(|a, b| a.train_tokens_per_s.total_cmp(&b.train_tokens_per_s));
    let middle = rounds.len() / 2;
    let mut result = rounds.into_iter().nth(middle)?;
    result.eval_tokens_per_s = eval;
    result.peak_memory_mib = peak;
    Some(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> BenchConfig {
        BenchConfig {
            name: "tiny".into(),
            vocab_size: 50,
            d_model: 16,
            n_heads: 2,
            n_layers: 1,
            d_ff: 32,
            ctx_len: 8,
            batch_size: 2,
        }
    }

    #[test]
    fn rounds_report_their_medians() {
        let config = tiny();
        let round = |train: f64, eval: f64, sgemm: f64, peak: f64| BenchResult {
            config: config.clone(),
            threads: 2,
            parameters: 10,
            train_tokens_per_s: train,
            eval_tokens_per_s: eval,
            train_gflops: train / 100.0,
            sgemm_gflops: sgemm,
            peak_memory_mib: Some(peak),
            train_step_parts: None,
        };
        let median = median_of_rounds(vec![
            round(300.0, 900.0, 30.0, 5.0),
            round(100.0, 700.0, 10.0, 7.0),
            round(200.0, 800.0, 20.0, 6.0),
        ])
        .unwrap();
        // the median training round keeps its own reference; evaluation is its own median
        assert_eq!((median.train_tokens_per_s, median.sgemm_gflops, median.train_gflops), (200.0, 20.0, 2.0));
        assert_eq!(median.eval_tokens_per_s, 800.0);
        assert_eq!(median.peak_memory_mib, Some(7.0));
        assert!(median_of_rounds(Vec::new()).is_none());

        let torch = |train: f64, eval: f64| TorchResult {
            name: "tiny".into(),
            threads: 2,
            train_tokens_per_s: train,
            eval_tokens_per_s: eval,
            torch_version: "2".into(),
        };
        let median = median_torch_of_rounds(vec![torch(1.0, 30.0), torch(3.0, 10.0), torch(2.0, 20.0)]).unwrap();
        assert_eq!((median.train_tokens_per_s, median.eval_tokens_per_s), (2.0, 20.0));
        assert!(median_torch_of_rounds(Vec::new()).is_none());
    }

    #[test]
    fn a_tiny_configuration_runs_and_reports_positive_rates() {
        let config = tiny();
        let result = run_config(&config, 2).unwrap();
        assert!(result.train_tokens_per_s > 0.0 && result.eval_tokens_per_s > 0.0);
        let parts = result.train_step_parts.expect("the CPU engine times the parts of its steps");
        for seconds in
            [parts.forward_seconds, parts.output_layer_seconds, parts.backward_seconds, parts.optimizer_seconds]
        {
            assert!(seconds.is_finite() && seconds > 0.0, "{parts:?}");
        }
        assert_eq!(result.parameters, Model::<f32>::init(config.model_config(), 1).unwrap().params.parameter_count());
        assert!(sgemm_gflops(64, 1) > 0.0);
    }

    #[test]
    fn scaling_and_recruitment_cost_are_measured() {
        let scaling = sweep_scaling(&tiny(), 2, 3, 2).unwrap();
        assert_eq!((scaling.members, scaling.concurrent, scaling.threads_each), (3, 2, 1));
        assert!(scaling.tokens_per_s > 0.0);
        let cost = recruitment_cost(1).unwrap();
        assert!(cost.trials >= 2 && cost.ratio > 0.0);
    }

    #[test]
    fn a_pipelines_frozen_check_is_priced_at_its_own_settings() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let cost = frozen_check_cost(&root.join("pipelines/recruit_planted.yaml"), None).unwrap();
        assert_eq!((cost.candidates, cost.check_every, cost.timed_steps), (8, 50, 50));
        assert!(cost.split_tokens > 0 && cost.check_seconds > 0.0 && cost.ratio > 0.0);
        // a pipeline without recruitment has no check to price, and says which section is missing
        let error = frozen_check_cost(&root.join("pipelines/quickstart.yaml"), None).unwrap_err();
        assert!(error.to_string().contains("no locality or recruitment section"), "{error}");
    }

    #[test]
    fn dial_overhead_is_measured() {
        let overhead = dial_overhead(1).unwrap();
        assert!(overhead.cost_ratio > 0.0 && overhead.metrics_tokens_per_s > 0.0);
    }
}
