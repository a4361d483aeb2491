//! Command-line definitions (flags as typed) and their resolution into work (what the program does).

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::bench::{self, BenchConfig, BenchResult};
use crate::checkpoint;
use crate::data::generator::{bundled_corpus, generate, DEFAULT_SEED, TRAIN_RECORDS};
use crate::data::TokenizerKind;
use crate::engine::attention::NoHook;
use crate::locality::metrics::{evaluate_at, DialEvaluation, LocalityMetrics};
use crate::locality::{DialSettings, RuleSet, RulesSource};
use crate::train::{self, CorpusSource, EvalResult, Progress, TrainConfig};
use crate::{Error, Result};

/// `ailla --version`: the version, the commit it was built from and the build profile. The numerical
/// environment (CPU, kernels, BLAS) is `ailla env`.
const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("AILLA_GIT_COMMIT"),
    ", ",
    env!("AILLA_BUILD_PROFILE"),
    " build)"
);

#[derive(Parser, Debug)]
#[command(name = "ailla", version, long_version = LONG_VERSION, about = "Train and audit localist language models")]
pub struct Cli {
    /// Worker threads for the engine (default: every core).
    #[arg(long, global = true)]
    pub threads: Option<usize>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a pipeline: train every sweep member, evaluate it across the dial, print a summary.
    Run(RunArgs),
    /// Check a pipeline file and list its sweep members, without running anything.
    Validate(ValidateArgs),
    /// Rebuild `report.json` and `report.md` of a pipeline run from what it stored.
    Report(ReportArgs),
    /// Train a model and write a run directory (model, optimizer state, metrics, summary).
    Train(TrainArgs),
    /// Score a text or a stream of token ids with a checkpoint.
    Eval(EvalArgs),
    /// Measure training and evaluation throughput against this machine's sgemm (and PyTorch).
    Bench(BenchArgs),
    /// Write the bundled generated corpus to a directory.
    Generate(GenerateArgs),
    /// Check a `.rules` file: parse it, compile it against a vocabulary, summarise what it says.
    Check(CheckArgs),
    /// Print a `.rules` file in its canonical layout.
    Fmt(FmtArgs),
    /// Score candidate anchors of each block by mutual information on a corpus (METHOD §2).
    Anchors(AnchorsArgs),
    /// Send a document to the pool model that codes its first tokens in the fewest bits (METHOD §8).
    Route(RouteArgs),
    /// Trial a block of your own on a run, as recruitment would, and say in bits whether it pays (METHOD §7).
    Trial(TrialArgs),
    /// Print the numerical environment: CPU, kernel instruction set, BLAS library, version, kernel and
    /// threads — what decides the last bits of every result (README, "Determinism").
    Env(EnvArgs),
}

#[derive(Args, Debug)]
pub struct EnvArgs {
    /// Print JSON (the `numerics` object of a report's provenance).
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("blocks").required(true).args(["block", "rules"])))]
pub struct TrialArgs {
    /// A run directory written by `ailla train` or a pipeline member (`train.json`, its checkpoint).
    pub run_dir: PathBuf,
    /// The block's words, separated by commas or spaces, as the run's tokenizer wrote them.
    #[arg(long)]
    pub block: Option<String>,
    /// A `.rules` file whose blocks (words and patterns) are trialled, each against the same controls.
    #[arg(long)]
    pub rules: Option<PathBuf>,
    /// With `--block`, the block's name; with `--rules`, the one block of the file to trial.
    #[arg(long)]
    pub name: Option<String>,
    /// Trial steps (default: the run's `recruitment.trial_steps`, else 100).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Tokens of the recruitment split, the end of the validation split (default: the run's, else 4096).
    #[arg(long)]
    pub split_tokens: Option<usize>,
    /// Bits the block must save beyond its cost (default: the run's `recruitment.margin_bits`, else 0).
    #[arg(long)]
    pub margin: Option<f64>,
    /// The layer whose head carries the block's own-block rule, from 0 (default: the run's
    /// `recruitment.rule_layer`, else the last).
    #[arg(long)]
    pub layer: Option<usize>,
    /// The head that carries the block's own-block rule, from 0 (default: the run's
    /// `recruitment.rule_head`, else 0).
    #[arg(long)]
    pub head: Option<usize>,
    /// How to trial: `frozen` (METHOD §7: the block's copy path on the run's model, only its gate
    /// trains) or `co-trained` (the earlier design, beside a control). Default: the run's, else frozen.
    #[arg(long, value_enum)]
    pub trial: Option<TrialFlag>,
    #[arg(long)]
    pub json: bool,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum TrialFlag {
    Frozen,
    CoTrained,
}

#[derive(Args, Debug)]
pub struct RouteArgs {
    /// A pool directory written by a `domains` pipeline (`runs/NAME/pool`).
    pub pool: PathBuf,
    /// The document to route.
    #[arg(long)]
    pub text: PathBuf,
    /// Tokens the router reads (default: the pool's own setting).
    #[arg(long)]
    pub tokens: Option<usize>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("vocabulary").args(["corpus", "checkpoint"])))]
pub struct CheckArgs {
    pub rules: PathBuf,
    /// Compile against the vocabulary of this corpus (`bundled`, a directory or a text file) and
    /// count the positions each rule covers in it.
    #[arg(long)]
    pub corpus: Option<String>,
    /// How `--corpus` is tokenized.
    #[arg(long, value_enum, default_value = "word")]
    pub tokenizer: TokenizerArg,
    /// Compile against the vocabulary of this checkpoint.
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct FmtArgs {
    pub rules: PathBuf,
    /// Rewrite the file in place instead of printing it.
    #[arg(long)]
    pub write: bool,
}

#[derive(Args, Debug)]
pub struct AnchorsArgs {
    pub rules: PathBuf,
    /// `bundled`, a corpus directory (its training split is used) or a text file.
    #[arg(long)]
    pub corpus: String,
    /// `w`: a position is near a block when a member stands within this many positions.
    #[arg(long, default_value_t = 10)]
    pub window: usize,
    /// Anchors chosen per block at most.
    #[arg(long, default_value_t = 3)]
    pub max: usize,
    /// Stop choosing when the best gain falls below this many bits.
    #[arg(long, default_value_t = 1e-4)]
    pub min_gain: f64,
    /// Also print the chosen anchors as a rules snippet to paste back.
    #[arg(long)]
    pub snippet: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["pipeline", "resume"])))]
pub struct RunArgs {
    /// The pipeline file (`pipelines/quickstart.yaml`).
    pub pipeline: Option<PathBuf>,
    /// Continue the pipeline run in this directory from its members' newest intact checkpoints.
    #[arg(long, conflicts_with = "force")]
    pub resume: Option<PathBuf>,
    /// Replace the pipeline run already in the output directory.
    #[arg(long)]
    pub force: bool,
    /// Sweep members to run at once (default: as many as there are cores); the cores are shared
    /// among them.
    #[arg(long)]
    pub jobs: Option<usize>,
    #[command(flatten)]
    pub changes: PlanChanges,
}

/// Command-line changes to a pipeline, shared by `run` and `validate`.
#[derive(Args, Debug, Clone, Default)]
pub struct PlanChanges {
    /// Run the pipeline's `quick` variant (its `quick` section), into `<output dir>-quick`.
    #[arg(long)]
    pub quick: bool,
    /// Corpus directory (train.txt, valid.txt, test.txt) in place of the pipeline's `data.corpus`.
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
}

impl PlanChanges {
    fn options(&self) -> crate::pipeline::PlanOptions {
        crate::pipeline::PlanOptions { quick: self.quick, data_directory: self.data.clone() }
    }
}

#[derive(Args, Debug)]
pub struct ValidateArgs {
    pub pipeline: PathBuf,
    #[command(flatten)]
    pub changes: PlanChanges,
}

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// A run directory written by `ailla run`.
    pub run_dir: PathBuf,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum TokenizerArg {
    Char,
    Word,
}

impl From<TokenizerArg> for TokenizerKind {
    fn from(kind: TokenizerArg) -> Self {
        match kind {
            TokenizerArg::Char => TokenizerKind::Char,
            TokenizerArg::Word => TokenizerKind::Word,
        }
    }
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// A YAML training config; flags below override its fields.
    pub config: Option<PathBuf>,
    /// Corpus directory with train.txt, valid.txt, test.txt, or `bundled` for the generated corpus.
    #[arg(long)]
    pub corpus: Option<String>,
    #[arg(long, value_enum)]
    pub tokenizer: Option<TokenizerArg>,
    #[arg(long)]
    pub steps: Option<usize>,
    #[arg(long)]
    pub batch_size: Option<usize>,
    #[arg(long)]
    pub learning_rate: Option<f64>,
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(long)]
    pub ctx_len: Option<usize>,
    #[arg(long)]
    pub d_model: Option<usize>,
    #[arg(long)]
    pub layers: Option<usize>,
    #[arg(long)]
    pub heads: Option<usize>,
    /// Run directory to write.
    #[arg(long, default_value = "runs/train")]
    pub out: PathBuf,
    /// Continue the run in --out from its newest intact checkpoint, exactly as if it had not stopped,
    /// with the settings it started with (so no other setting may be given).
    #[arg(long, conflicts_with_all = [
        "config", "corpus", "tokenizer", "steps", "batch_size", "learning_rate", "seed", "ctx_len", "d_model",
        "layers", "heads", "force"
    ])]
    pub resume: bool,
    /// Replace the run already in --out (only ailla's files are removed; a directory holding other
    /// files is never written into).
    #[arg(long)]
    pub force: bool,
    /// Save and stop once this many steps are done in all (more when a recruitment check due then
    /// accepts a block, whose trial steps are adopted whole); continue later with --resume.
    #[arg(long)]
    pub stop_after: Option<usize>,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["text", "ids"])))]
pub struct EvalArgs {
    /// A checkpoint written by `ailla train`.
    pub checkpoint: PathBuf,
    /// A text file, tokenized with the checkpoint's vocabulary.
    #[arg(long)]
    pub text: Option<PathBuf>,
    /// Whitespace-separated token ids (for models compared across tokenizers).
    #[arg(long)]
    pub ids: Option<PathBuf>,
    /// Windows per forward pass.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Evaluate across the dial at these λ values (comma-separated), one row each.
    #[arg(long, value_delimiter = ',', value_name = "λ,λ,…")]
    pub lambda: Vec<f64>,
    /// Rules to evaluate with (`bundled` or a rule spec file); added to the checkpoint's own rules
    /// without retraining.
    #[arg(long)]
    pub rules: Option<String>,
    /// Margin μ in nats (default: the checkpoint's training value, else 12).
    #[arg(long)]
    pub margin: Option<f64>,
    /// Temperature τ₁ at λ = 1 (default: the checkpoint's, else 1).
    #[arg(long)]
    pub temperature: Option<f64>,
    /// Penalty strength ρ used for the group-sparsity threshold (default: the checkpoint's).
    #[arg(long)]
    pub penalty: Option<f64>,
    /// Fidelity target 1 − ε of the certificates.
    #[arg(long, default_value_t = 0.05)]
    pub epsilon: f64,
    /// Batches that also run a backward pass to measure the group-sparsity threshold.
    #[arg(long, default_value_t = 2)]
    pub certificate_batches: usize,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Configurations to measure (default: char-small and word-wt2).
    #[arg(long = "config", value_name = "NAME")]
    pub configs: Vec<String>,
    /// Timed steps per configuration.
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Also run benches/torch_reference.py with the same threads and print the ratio.
    #[arg(long)]
    pub compare_torch: bool,
    /// The Python that has torch installed.
    #[arg(long, default_value = "python3")]
    pub python: String,
    #[arg(long)]
    pub json: bool,
    /// Measure one configuration in this process (used internally to attribute peak memory).
    #[arg(long, hide = true)]
    pub single: bool,
    /// Also measure sweep scaling (1, 2, 4 and 6 concurrent members) and the cost of a recruitment
    /// check against the steps it trials.
    #[arg(long)]
    pub scaling: bool,
}

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Directory to write train.txt, valid.txt and test.txt into.
    #[arg(long, required_unless_present = "sample")]
    pub out: Option<PathBuf>,
    #[arg(long, default_value_t = DEFAULT_SEED)]
    pub seed: u64,
    /// Rewrite data/pharmacy-sample.txt, the excerpt committed for readers.
    #[arg(long)]
    pub sample: bool,
    /// Add allergy records whose allergens form a block no rules file names (for block recruitment).
    #[arg(long)]
    pub planted: bool,
}

/// More worker threads than this many per core only add synchronisation: results do not depend on
/// the thread count, so a larger number is a mistake (or a pipeline written for a bigger machine).
const MAX_THREADS_PER_CORE: usize = 4;

/// An error unless `threads` is between 1 and [`MAX_THREADS_PER_CORE`] times this machine's cores.
pub fn check_threads(field: &str, threads: usize) -> Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let most = MAX_THREADS_PER_CORE * cores;
    match threads {
        0 => Err(Error::invalid(field, "must be at least 1")),
        n if n > most => Err(Error::invalid(
            field,
            format!(
                "{n} threads on {cores} core{} would only add synchronisation (at most {most}: \
                 {MAX_THREADS_PER_CORE} per core); results are the same for any thread count",
                if cores == 1 { "" } else { "s" }
            ),
        )),
        _ => Ok(()),
    }
}

/// Runs a parsed command line; output goes to `out`.
pub fn run(cli: Cli, out: &mut dyn Write) -> Result<()> {
    if let Some(threads) = cli.threads {
        check_threads("--threads", threads)?;
        // fails only if a pool was already built, which main never does before this point
        let _ = rayon::ThreadPoolBuilder::new().num_threads(threads).build_global();
    }
    match cli.command {
        Command::Run(args) => run_pipeline(args, cli.threads, out),
        Command::Validate(args) => run_validate(args, out),
        Command::Report(args) => {
            crate::report::require_finished(&args.run_dir)?;
            let report = crate::report::build(&args.run_dir)?;
            crate::report::write(&args.run_dir, &report)?;
            write_out(out, &format!("wrote {0}/report.json and {0}/report.md\n", args.run_dir.display()))
        }
        Command::Train(args) => run_train(args, out),
        Command::Eval(args) => run_eval(args, out),
        Command::Bench(args) => run_bench(args, out),
        Command::Generate(args) => run_generate(args, out),
        Command::Check(args) => run_check(args, out),
        Command::Route(args) => run_route(args, out),
        Command::Trial(args) => run_trial(args, out),
        Command::Fmt(args) => run_fmt(args, out),
        Command::Anchors(args) => run_anchors(args, out),
        Command::Env(args) => run_env(args, out),
    }
}

fn run_env(args: EnvArgs, out: &mut dyn Write) -> Result<()> {
    let environment = crate::engine::environment::current();
    if args.json {
        let text = serde_json::to_string_pretty(&environment).map_err(|e| Error::invalid("--json", e.to_string()))?;
        return write_out(out, &format!("{text}\n"));
    }
    let rows = [
        ("ailla", LONG_VERSION.to_string()),
        ("CPU", environment.cpu.clone()),
        ("kernels", format!("{} (ailla's element-wise kernels; the same bits on every path)", environment.simd_path)),
        ("BLAS", format!("{} {}, kernel {}", environment.blas, environment.blas_version, environment.blas_core)),
        ("BLAS build", environment.blas_config.clone()),
        ("BLAS threads", environment.blas_threads.to_string()),
        ("worker threads", format!("{} (of {} cores)", environment.worker_threads, environment.cores)),
    ];
    let text: String = rows.iter().map(|(k, v)| format!("{k:<15} {v}\n")).collect();
    write_out(out, &text)
}

fn write_out(out: &mut dyn Write, text: &str) -> Result<()> {
    out.write_all(text.as_bytes()).map_err(|e| Error::io("<stdout>", e))
}

/// Reads a YAML training config; relative corpus paths resolve against the config's directory.
pub fn load_train_config(path: &Path) -> Result<TrainConfig> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut config: TrainConfig = serde_saphyr::from_str(&text)
        .map_err(|e| Error::Config { path: path.to_path_buf(), message: e.to_string() })?;
    let base = path.parent().unwrap_or(Path::new("."));
    // the same resolution as pipelines use, so both name files alike
    if let CorpusSource::Directory(dir) = &mut config.corpus {
        if dir.is_relative() {
            *dir = crate::pipeline::normalize(&base.join(&*dir));
        }
    }
    if let Some(RulesSource::File(rules)) = config.locality.as_mut().map(|l| &mut l.rules) {
        if rules.is_relative() {
            *rules = crate::pipeline::normalize(&base.join(&*rules));
        }
    }
    Ok(config)
}

fn train_config(args: &TrainArgs) -> Result<TrainConfig> {
    let mut config = match &args.config {
        Some(path) => load_train_config(path)?,
        None => TrainConfig::default(),
    };
    if let Some(corpus) = &args.corpus {
        config.corpus = CorpusSource::parse(corpus);
    }
    if let Some(kind) = args.tokenizer {
        config.tokenizer = kind.into();
    }
    let overrides = [
        (args.steps, &mut config.steps),
        (args.batch_size, &mut config.batch_size),
        (args.ctx_len, &mut config.model.ctx_len),
        (args.d_model, &mut config.model.d_model),
        (args.layers, &mut config.model.n_layers),
        (args.heads, &mut config.model.n_heads),
    ];
    for (value, field) in overrides {
        if let Some(v) = value {
            *field = v;
        }
    }
    if let Some(lr) = args.learning_rate {
        config.optim.learning_rate = lr;
    }
    if let Some(seed) = args.seed {
        config.seed = seed;
    }
    Ok(config)
}

fn run_train(args: TrainArgs, out: &mut dyn Write) -> Result<()> {
    let config = if args.resume {
        let path = train::RunPaths::new(&args.out).config();
        let text = std::fs::read_to_string(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::Config {
                path: args.out.clone(),
                message: "is not a run directory (it has no train.json): nothing to resume; start a run with \
                          `ailla train … --out DIR`"
                    .into(),
            },
            _ => Error::io(&path, e),
        })?;
        serde_json::from_str(&text).map_err(|e| Error::Config { path: path.clone(), message: e.to_string() })?
    } else {
        train_config(&args)?
    };
    let progress = Progress::for_stderr(config.steps);
    let control = train::RunControl {
        resume: args.resume,
        stop_after: args.stop_after,
        interrupt: Some(train::interrupt_flag()),
        force: args.force,
        resume_command: None,
    };
    let summary = train::train(&config, &args.out, &control, &progress)?;
    let table = format!(
        "trained {}/{} steps on {} tokens ({} tokenizer, vocabulary {}, {} parameters) in {:.1} s\n\
         unigram entropy (valid)  {:.4} nats\n\
         valid  mean CE {:.4} nats  perplexity {:.3}  accuracy {:.4}\n\
         test   mean CE {:.4} nats  perplexity {:.3}  accuracy {:.4}\n\
         run directory: {}\n",
        summary.steps_done,
        summary.steps_planned,
        summary.train_tokens,
        summary.tokenizer.name(),
        summary.vocab_size,
        summary.parameters,
        summary.seconds,
        summary.unigram_entropy_nats,
        summary.valid.mean_ce_nats,
        summary.valid.perplexity,
        summary.valid.accuracy,
        summary.test.mean_ce_nats,
        summary.test.perplexity,
        summary.test.accuracy,
        args.out.display(),
    );
    write_out(out, &table)?;
    if summary.steps_done < summary.steps_planned {
        write_out(out, &format!("paused; continue with `ailla train --resume --out {}`\n", args.out.display()))?;
    }
    Ok(())
}

/// Parses whitespace-separated ids, naming the line and column of the first bad one.
pub fn parse_ids(path: &Path, text: &str, vocab_size: usize) -> Result<Vec<u32>> {
    let mut ids = Vec::new();
    for (line_index, line) in text.lines().enumerate() {
        let mut column = 1;
        for piece in line.split(' ') {
            for token in piece.split_whitespace() {
                let offset = piece.find(token).unwrap_or(0);
                let id: Option<u32> = token.parse().ok().filter(|&i: &u32| (i as usize) < vocab_size);
                match id {
                    Some(id) => ids.push(id),
                    None => {
                        return Err(Error::Corpus {
                            path: path.to_path_buf(),
                            message: format!(
                            "line {}, column {}: `{token}` is not a token id below the vocabulary size {vocab_size}",
                            line_index + 1,
                            column + offset
                        ),
                        })
                    }
                }
            }
            column += piece.len() + 1;
        }
    }
    if ids.len() < 2 {
        return Err(Error::Corpus {
            path: path.to_path_buf(),
            message: "needs at least two token ids (one to condition on, one to predict)".into(),
        });
    }
    Ok(ids)
}

fn run_eval(args: EvalArgs, out: &mut dyn Write) -> Result<()> {
    // the flags first: a wrong one should not wait for a checkpoint and a corpus to load
    for (flag, value) in [("--margin", args.margin), ("--temperature", args.temperature), ("--penalty", args.penalty)] {
        if let Some(value) = value.filter(|v| !v.is_finite()) {
            return Err(Error::invalid(flag, format!("is {value}; it must be a finite number")));
        }
    }
    if args.batch_size == 0 {
        return Err(Error::invalid("--batch-size", "must be at least 1"));
    }
    let ckpt = checkpoint::load(&args.checkpoint)?;
    let ids = match (&args.text, &args.ids) {
        (Some(path), _) => {
            let text = crate::data::corpus::read_text(path)?;
            let ids = ckpt.vocabulary.encode(&text);
            if ids.len() < 2 {
                return Err(Error::Corpus { path: path.clone(), message: "encodes to fewer than two tokens".into() });
            }
            ids
        }
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
            parse_ids(path, &text, ckpt.model.config.vocab_size)?
        }
        (None, None) => return Err(Error::invalid("--text", "give --text FILE or --ids FILE")),
    };
    if !args.lambda.is_empty() || args.rules.is_some() {
        return run_dial_eval(&args, &ckpt, &ids, out);
    }
    let result = train::evaluate(&ckpt.model, &ids, args.batch_size, &NoHook);
    let hint =
        format!("the checkpoint {} holds weights that do not give finite probabilities", args.checkpoint.display());
    Error::require_finite("the mean cross-entropy", result.mean_ce_nats, &hint)?;
    let text = if args.json {
        serde_json::to_string_pretty(&result).map_err(|e| Error::Numeric(e.to_string()))? + "\n"
    } else {
        eval_table(&result, ckpt.vocabulary.kind)
    };
    write_out(out, &text)
}

fn run_dial_eval(args: &EvalArgs, ckpt: &checkpoint::Checkpoint, ids: &[u32], out: &mut dyn Write) -> Result<()> {
    let extra = args.rules.as_deref().map(|r| RulesSource::parse(r).load()).transpose()?;
    let spec = match (&ckpt.locality, extra) {
        (Some(stored), Some(extra)) => stored.rules.with(&extra),
        (Some(stored), None) => stored.rules.clone(),
        (None, Some(extra)) => extra,
        (None, None) => {
            return Err(Error::invalid("--rules", "this checkpoint was trained without rules; give --rules FILE"))
        }
    };
    let (set, warnings) = RuleSet::compile(&spec, &ckpt.vocabulary)?;
    for warning in &warnings {
        crate::eprintln_lossy!("warning: {}", warning.0);
    }
    let stored = ckpt.locality.as_ref();
    let base = stored.map_or_else(DialSettings::default, |s| s.dial);
    let settings = DialSettings {
        margin: args.margin.unwrap_or(base.margin),
        temperature: args.temperature.unwrap_or(base.temperature),
        penalty: args.penalty.unwrap_or(base.penalty),
    };
    // the flags, not the pipeline fields, are what the user gave here
    settings.validate().map_err(|e| match e {
        Error::Invalid { field, message } => {
            let flag = field.strip_prefix("locality.").map_or(field.clone(), |name| format!("--{name}"));
            Error::Invalid { field: flag, message }
        }
        other => other,
    })?;
    if !(args.epsilon > 0.0 && args.epsilon < 1.0) {
        return Err(Error::invalid("--epsilon", "must lie strictly between 0 and 1"));
    }
    let lambdas = if args.lambda.is_empty() { vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0] } else { args.lambda.clone() };
    if let Some(bad) = lambdas.iter().find(|l| !(0.0..=1.0).contains(*l)) {
        return Err(Error::invalid("--lambda", format!("λ = {bad} is outside [0, 1]")));
    }
    let evaluation = DialEvaluation {
        rules: &set,
        settings,
        progressive_beta: stored.and_then(|s| s.progressive_beta),
        epsilon: args.epsilon,
        certificate_batches: args.certificate_batches,
        batch_size: args.batch_size,
    };
    // a copy rule injected at evaluation gets a copy path of its own, shut (METHOD §7's b₀): it acts
    // only as far as an untrained gate lets it
    let mut model = ckpt.model.clone();
    for name in crate::locality::copy_paths::missing_paths(&set, &model.config.copy_paths) {
        model.add_copy_path(&name)?;
    }
    let rows: Vec<LocalityMetrics> = lambdas.iter().map(|&l| evaluate_at(&model, ids, l, &evaluation)).collect();
    for row in &rows {
        Error::require_finite(
            &format!("the mean cross-entropy at λ = {}", row.lambda),
            row.language_model.mean_ce_nats,
            &format!("the checkpoint {} does not give finite probabilities", args.checkpoint.display()),
        )?;
    }
    let text = if args.json {
        serde_json::to_string_pretty(&rows).map_err(|e| Error::Numeric(e.to_string()))? + "\n"
    } else {
        dial_table(&rows, ckpt.vocabulary.kind, &settings, args.epsilon)
    };
    write_out(out, &text)
}

fn dial_table(rows: &[LocalityMetrics], kind: TokenizerKind, settings: &DialSettings, epsilon: f64) -> String {
    let mut s = format!(
        "tokenizer {}; margin μ {} nats, temperature τ₁ {}, ρ {}; certificates at ε = {epsilon}\n\n",
        kind.name(),
        settings.margin,
        settings.temperature,
        settings.penalty
    );
    s += "     λ  mean_ce  perplexity  accuracy  entropy  covered_entropy  fidelity  hit_rate  concentration  λ*(p90)  certified  violations\n";
    for r in rows {
        let c = &r.certificates;
        s += &format!(
            "{:>6.2}  {:>7.4}  {:>10.3}  {:>8.4}  {:>7.3}  {:>15.3}  {:>8.4}  {:>8.4}  {:>13.4}  {:>7.3}  {:>9.3}  {:>10}\n",
            r.lambda,
            r.language_model.mean_ce_nats,
            r.language_model.perplexity,
            r.language_model.accuracy,
            r.entropy_bits,
            r.covered_entropy_bits,
            r.pointer_fidelity,
            r.pointer_hit_rate,
            r.block_concentration,
            c.lambda_star_quantiles[1],
            c.share_certified,
            c.violations.total()
        );
    }
    s += "\nentropies in bits per attention row; fidelity, hit rate and certificates over rows a rule covers\n";
    if rows.iter().any(|r| !r.copy_paths.is_empty()) {
        s += "\ncopy paths (METHOD §4): rows where the cache is not empty, mean copy weight there, share of those \
              rows whose cache holds the target, bits saved against the same model without the path\n";
        s += &format!(
            "{:>6}  {:<44} {:>9} {:>10} {:>9} {:>11}\n",
            "λ", "copy rule", "rows", "share", "hit_rate", "bits_saved"
        );
        for r in rows {
            for path in &r.copy_paths {
                s += &format!(
                    "{:>6.2}  {:<44} {:>9} {:>10.4} {:>9.4} {:>11.1}\n",
                    r.lambda, path.name, path.applied_rows, path.copy_share, path.copy_hit_rate, path.bits_saved
                );
            }
        }
    }
    s
}

fn eval_table(r: &EvalResult, kind: TokenizerKind) -> String {
    format!(
        "tokenizer       {}\ntokens          {}\nmean_ce_nats    {:.6}\nperplexity      {:.4}\nbits_per_token  {:.4}\naccuracy        {:.4}\n",
        kind.name(),
        r.tokens,
        r.mean_ce_nats,
        r.perplexity,
        r.bits_per_token,
        r.accuracy
    )
}

fn torch_script() -> PathBuf {
    let beside_manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/torch_reference.py");
    if beside_manifest.is_file() {
        beside_manifest
    } else {
        PathBuf::from("benches/torch_reference.py")
    }
}

fn run_bench(args: BenchArgs, out: &mut dyn Write) -> Result<()> {
    let all = bench::standard_configs();
    let selected: Vec<BenchConfig> = if args.configs.is_empty() {
        all.clone()
    } else {
        args.configs
            .iter()
            .map(|name| {
                all.iter().find(|c| &c.name == name).cloned().ok_or_else(|| {
                    let names: Vec<&str> = all.iter().map(|c| c.name.as_str()).collect();
                    Error::invalid("--config", format!("unknown configuration `{name}`; known: {}", names.join(", ")))
                })
            })
            .collect::<Result<_>>()?
    };
    if args.single {
        let config = selected.first().ok_or_else(|| Error::invalid("--config", "name one configuration"))?;
        let result = bench::run_config(config, args.steps)?;
        return write_out(out, &(serde_json::to_string(&result).map_err(|e| Error::Numeric(e.to_string()))? + "\n"));
    }
    let threads = rayon::current_num_threads();
    let sgemm = bench::sgemm_gflops(1024, 5);
    let mut rows = Vec::new();
    for config in &selected {
        // one process per configuration, so that its peak memory is its own
        let result =
            measure_in_child(config, args.steps, threads).or_else(|_| bench::run_config(config, args.steps))?;
        let torch = if args.compare_torch {
            bench::run_torch(&args.python, &torch_script(), config, args.steps, threads)?
        } else {
            None
        };
        rows.push((result, torch));
    }
    let overhead = bench::dial_overhead(args.steps)?;
    let (scaling, recruitment) = if args.scaling {
        let shape = all.first().cloned().ok_or_else(|| Error::invalid("bench", "no configuration"))?;
        let scaling: Vec<bench::Scaling> = [1, 2, 4, 6]
            .iter()
            .map(|&m| bench::sweep_scaling(&shape, args.steps, m, threads))
            .collect::<Result<_>>()?;
        (scaling, Some((bench::recruitment_cost(args.steps)?, bench::frozen_check_cost()?)))
    } else {
        (Vec::new(), None)
    };
    let text = if args.json {
        let json = serde_json::json!({
            "threads": threads,
            "sgemm_gflops": sgemm,
            "results": rows.iter().map(|(r, t)| serde_json::json!({"ailla": r, "torch": t})).collect::<Vec<_>>(),
            "dial_overhead": overhead,
            "sweep_scaling": scaling,
            "recruitment_cost": recruitment.as_ref().map(|(co_trained, _)| co_trained),
            "frozen_check_cost": recruitment.as_ref().map(|(_, frozen)| frozen),
        });
        serde_json::to_string_pretty(&json).map_err(|e| Error::Numeric(e.to_string()))? + "\n"
    } else {
        bench_table(threads, sgemm, &rows, args.compare_torch)
            + &format!(
                "\nlocality dial at evaluation (bundled corpus and rules, char-small shape, λ = 1):\n  \
                 without rules {:.0} tok/s, with rules {:.0} tok/s: {:.2}× the time (target ≤ 1.3×); \
                 with every metric and certificate {:.0} tok/s\n\
                 copy path at evaluation (one copy rule, `copy from drugs within 40`, λ = 1): {:.0} tok/s, \
                 {:.2}× the time without (target ≤ 1.15×)\n",
                overhead.plain_tokens_per_s,
                overhead.rules_tokens_per_s,
                overhead.cost_ratio,
                overhead.metrics_tokens_per_s,
                overhead.copy_tokens_per_s,
                overhead.copy_cost_ratio
            )
            + &scaling_text(&scaling, recruitment.as_ref().map(|(co_trained, _)| co_trained))
            + &recruitment.as_ref().map_or(String::new(), |(_, f)| {
                format!(
                    "frozen-model recruitment check (pipelines/recruit_planted.yaml): {} candidates in {:.2} s; \
                     the {} training steps between two checks take {:.2} s: {:.1} % (target ≤ 15 %)\n",
                    f.candidates,
                    f.check_seconds,
                    f.check_every,
                    f.steps_seconds,
                    100.0 * f.ratio
                )
            })
    };
    write_out(out, &text)
}

fn scaling_text(scaling: &[bench::Scaling], recruitment: Option<&bench::RecruitmentCost>) -> String {
    let mut s = String::new();
    if let Some(first) = scaling.first() {
        s += "\nsweep scaling (char-small training, members share the cores as `ailla run` shares them):\n";
        s += "members  at once  threads each  tokens/s  vs one member\n";
        for row in scaling {
            s += &format!(
                "{:>7}  {:>7}  {:>12}  {:>8.0}  {:>12.2}×\n",
                row.members,
                row.concurrent,
                row.threads_each,
                row.tokens_per_s,
                row.tokens_per_s / first.tokens_per_s
            );
        }
    }
    if let Some(r) = recruitment {
        s += &format!(
            "\nrecruitment check (bundled corpus, char-small shape): {} trials × {} steps in {:.2} s; the same {} training \
             steps alone {:.2} s: {:.2}× (target ≤ 1.1×)\n",
            r.trials,
            r.trial_steps,
            r.check_seconds,
            r.trials * r.trial_steps,
            r.steps_seconds,
            r.ratio
        );
    }
    s
}

fn measure_in_child(config: &BenchConfig, steps: usize, threads: usize) -> Result<BenchResult> {
    let exe = std::env::current_exe().map_err(|e| Error::io("<current executable>", e))?;
    let output = std::process::Command::new(&exe)
        .args(["--threads", &threads.to_string(), "bench", "--single", "--json", "--config", &config.name])
        .args(["--steps", &steps.to_string()])
        .output()
        .map_err(|e| Error::io(&exe, e))?;
    if !output.status.success() {
        return Err(Error::Numeric(String::from_utf8_lossy(&output.stderr).into_owned()));
    }
    serde_json::from_slice(&output.stdout).map_err(|e| Error::Numeric(e.to_string()))
}

fn bench_table(
    threads: usize,
    sgemm: f64,
    rows: &[(BenchResult, Option<bench::TorchResult>)],
    compared: bool,
) -> String {
    let mut s = format!("threads {threads}; sgemm {sgemm:.1} GFLOP/s (1024³, the reference peak)\n\n");
    s += "config       params     train tok/s  eval tok/s   GFLOP/s  of sgemm  peak MiB";
    if compared {
        s += "  torch train  torch eval  ratio train  ratio eval";
    }
    s += "\n";
    for (r, torch) in rows {
        s += &format!(
            "{:<12} {:>9}  {:>11.0}  {:>10.0}  {:>8.1}  {:>7.1}%  {:>8}",
            r.config.name,
            r.parameters,
            r.train_tokens_per_s,
            r.eval_tokens_per_s,
            r.train_gflops,
            100.0 * r.train_gflops / sgemm,
            r.peak_memory_mib.map_or("-".into(), |m| format!("{m:.0}")),
        );
        if compared {
            match torch {
                Some(t) => {
                    s += &format!(
                        "  {:>11.0}  {:>10.0}  {:>10.2}×  {:>9.2}×",
                        t.train_tokens_per_s,
                        t.eval_tokens_per_s,
                        r.train_tokens_per_s / t.train_tokens_per_s,
                        r.eval_tokens_per_s / t.eval_tokens_per_s
                    )
                }
                None => s += "  (no torch in this Python)",
            }
        }
        s += "\n";
    }
    s
}

fn run_route(args: RouteArgs, out: &mut dyn Write) -> Result<()> {
    Error::require_counts([("--tokens", args.tokens.unwrap_or(1))])?;
    let pool = crate::recruit::domains::load_pool(&args.pool)?;
    let text = crate::data::corpus::read_text(&args.text)?;
    let ids = pool.vocabulary.encode(&text);
    let k = args.tokens.unwrap_or(pool.manifest.router_tokens);
    if ids.len() < 2 {
        return Err(Error::Corpus { path: args.text.clone(), message: "has fewer than two tokens to score".into() });
    }
    let (best, bits) = crate::recruit::domains::route(&pool.models, &ids, k);
    // a model whose code length is not finite is never chosen; if every one is, nothing is
    Error::require_finite(
        &format!("the code length under the chosen model `{}`", pool.manifest.models[best].name),
        bits[best],
        "every model of the pool gives this document non-finite bits; check the pool's checkpoints",
    )?;
    let read = ids.len().min(k + 1) - 1;
    if args.json {
        let rows: Vec<serde_json::Value> = pool
            .manifest
            .models
            .iter()
            .zip(&bits)
            .map(|(m, b)| serde_json::json!({ "model": m.name, "trained_on": m.trained_on, "bits": b }))
            .collect();
        let json = serde_json::json!({ "tokens": read, "chosen": pool.manifest.models[best].name, "models": rows });
        return write_out(out, &format!("{json}\n"));
    }
    let mut s = format!(
        "{}: first {read} tokens\n\n{:<32} {:<20} {:>12} {:>12}\n",
        args.text.display(),
        "model",
        "trained on",
        "bits",
        "bits/token"
    );
    for (index, (model, b)) in pool.manifest.models.iter().zip(&bits).enumerate() {
        let mark = if index == best { "  ← chosen" } else { "" };
        s += &format!(
            "{:<32} {:<20} {:>12.1} {:>12.4}{mark}\n",
            model.name,
            model.trained_on,
            b,
            b / read.max(1) as f64
        );
    }
    write_out(out, &s)
}

/// A verdict's bits on every position of the split, on the positions `place` names (the verdict's
/// `member_queries`) and everywhere else, under the two `columns`, with what was saved.
fn position_rows(verdict: &crate::recruit::probe::BlockVerdict, columns: (&str, &str), place: &str) -> String {
    let d = &verdict.decision;
    let per_token = |bits: f64, n: usize| bits / n.max(1) as f64;
    let (first, second) = columns;
    let mut s = format!("{:<40} {first:>11} {second:>11} {:>9} {:>19}\n", "bits", "saved", "bits/token");
    let rows = [
        (format!("all {} positions", d.split_tokens), d.bits_before, d.bits_after, d.split_tokens),
        (
            format!("  {place} ({})", verdict.member_queries.positions),
            verdict.member_queries.bits_control,
            verdict.member_queries.bits_with_block,
            verdict.member_queries.positions,
        ),
        (
            format!("  everywhere else ({})", verdict.other_queries.positions),
            verdict.other_queries.bits_control,
            verdict.other_queries.bits_with_block,
            verdict.other_queries.positions,
        ),
    ];
    for (label, without, with, positions) in rows {
        s += &format!(
            "{label:<40} {without:>11.1} {with:>11.1} {:>9.1} {:>8.4} → {:.4}\n",
            without - with,
            per_token(without, positions),
            per_token(with, positions)
        );
    }
    s
}

/// `ailla trial` of frozen-model trials: per block, the bits of `D` without and with its copy path,
/// where the path's cache held the target and elsewhere, and the verdict.
fn frozen_trial_text(run_dir: &Path, probe: &crate::recruit::probe::Probe) -> String {
    let mut s = format!(
        "{} from step {}: each block's copy path (any token copies from the block within {} positions) on the \
         frozen model, its gate trained {} steps; split coded at λ = {}\n",
        run_dir.display(),
        probe.from_step,
        probe.rule_within.unwrap_or(0),
        probe.trial_steps,
        probe.lambda
    );
    for verdict in &probe.blocks {
        let d = &verdict.decision;
        s += &format!("\nblock `{}` ({} members)\n", d.candidate, d.members.len());
        s += &position_rows(verdict, ("without", "with path"), "the cache held the target");
        s += &format!(
            "cost {:.1} bits (membership {:.1}, gate {:.1}), margin {:.1}\nverdict: {}\n",
            d.cost_bits,
            d.membership_bits.unwrap_or(verdict.membership_bits),
            d.parameter_bits.unwrap_or(0.0),
            d.margin_bits,
            if d.accepted {
                format!("pays: saves {:.1} bits more than it needs", d.saving_bits() - d.required_bits())
            } else {
                format!("does not pay: {:.1} bits short", d.required_bits() - d.saving_bits())
            }
        );
    }
    s
}

fn run_trial(args: TrialArgs, out: &mut dyn Write) -> Result<()> {
    use crate::recruit::probe::BlockSource;
    let blocks = match (&args.block, &args.rules) {
        (Some(words), _) => BlockSource::Words {
            name: args.name.clone().unwrap_or_else(|| "proposed".into()),
            words: words.split([',', ' ', '\t', '\n']).filter(|w| !w.is_empty()).map(String::from).collect(),
        },
        (None, Some(path)) => BlockSource::Rules { path: path.clone(), only: args.name.clone() },
        (None, None) => return Err(Error::invalid("--block", "give --block or --rules")),
    };
    let request = crate::recruit::probe::ProbeRequest {
        blocks,
        trial_steps: args.steps,
        split_tokens: args.split_tokens,
        margin_bits: args.margin,
        rule_layer: args.layer,
        rule_head: args.head,
        trial: args.trial.map(|t| match t {
            TrialFlag::Frozen => crate::recruit::TrialKind::Frozen,
            TrialFlag::CoTrained => crate::recruit::TrialKind::CoTrained,
        }),
    };
    let probe = crate::recruit::probe::probe(&args.run_dir, &request)?;
    if !probe.rules_warnings.is_empty() {
        crate::eprint_lossy!("{}", probe.rules_warnings);
    }
    if args.json {
        let json = serde_json::to_string_pretty(&probe).map_err(|e| Error::Numeric(e.to_string()))?;
        return write_out(out, &format!("{json}\n"));
    }
    let Some(first) = probe.blocks.first() else {
        return write_out(out, "no block was trialled\n");
    };
    if probe.trial == crate::recruit::TrialKind::Frozen {
        return write_out(out, &frozen_trial_text(&args.run_dir, &probe));
    }
    let mut s = format!(
        "{} from step {}: {} trial steps, split of {} tokens coded at λ = {}\n\
         each block's own-block rule acts on layer {}, head {}, {}\n\
         control (the same steps, no new block): {:.1} bits; noise {:.1} bits (a second control on the reversed batches)\n",
        args.run_dir.display(),
        probe.from_step,
        probe.trial_steps,
        first.decision.split_tokens,
        probe.lambda,
        probe.rule_layer,
        probe.rule_head,
        match probe.rule_within {
            Some(within) => format!("within {within} positions"),
            None => "over the whole context".to_string(),
        },
        first.decision.bits_before,
        first.decision.noise_bits
    );
    for verdict in &probe.blocks {
        let d = &verdict.decision;
        s += &format!("\nblock `{}` ({} members)\n", d.candidate, d.members.len());
        s += &position_rows(verdict, ("control", "with block"), "a member is the input");
        s += &format!(
            "saving {:.1} bits; cost {:.1} bits ({:.1} for the membership, {:.1} for the block embedding); \
             margin {:.1} bits; noise {:.1} bits\n",
            d.saving_bits(),
            d.cost_bits,
            verdict.membership_bits,
            d.cost_bits - verdict.membership_bits,
            d.margin_bits,
            d.noise_bits
        );
        s += &if d.accepted {
            format!("verdict: recruited — it saves {:.1} bits more than it must\n", d.saving_bits() - d.required_bits())
        } else {
            format!("verdict: not recruited — {:.1} bits short\n", d.required_bits() - d.saving_bits())
        };
    }
    write_out(out, &s)
}

fn run_generate(args: GenerateArgs, out: &mut dyn Write) -> Result<()> {
    if args.sample {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/pharmacy-sample.txt");
        let text = generate(DEFAULT_SEED, 0, TRAIN_RECORDS);
        let sample: String = text.lines().take(60).map(|l| format!("{l}\n")).collect();
        checkpoint::atomic_write(&path, sample.as_bytes())?;
        return write_out(out, &format!("wrote {}\n", path.display()));
    }
    let Some(dir) = args.out else {
        return Err(Error::invalid("--out", "give a directory"));
    };
    let splits =
        if args.planted { crate::data::generator::planted_corpus(args.seed) } else { bundled_corpus(args.seed) };
    for (name, text) in [("train.txt", &splits.train), ("valid.txt", &splits.valid), ("test.txt", &splits.test)] {
        checkpoint::atomic_write(&dir.join(name), text.as_bytes())?;
    }
    write_out(out, &format!("wrote {} ({})\n", dir.display(), splits.name))
}

/// The text of a corpus named on the command line: `bundled`, a directory's training split, or a file.
fn corpus_text(name: &str) -> Result<String> {
    match CorpusSource::parse(name) {
        CorpusSource::Directory(path) if path.is_file() => crate::data::corpus::read_text(&path),
        source => Ok(source.load()?.train),
    }
}

fn loaded_rules(path: &Path) -> Result<crate::dsl::Loaded> {
    crate::dsl::load(path)
}

fn run_check(args: CheckArgs, out: &mut dyn Write) -> Result<()> {
    let loaded = loaded_rules(&args.rules)?;
    let (vocabulary, corpus_ids) = match (&args.corpus, &args.checkpoint) {
        (Some(corpus), _) => {
            let text = corpus_text(corpus)?;
            let vocabulary = crate::data::Vocabulary::build(args.tokenizer.into(), &text, 1_000_000);
            let ids = vocabulary.encode(&text);
            (Some(vocabulary), Some(ids))
        }
        (None, Some(ckpt)) => (Some(checkpoint::load(ckpt)?.vocabulary), None),
        (None, None) => (None, None),
    };
    let checked = crate::dsl::Checked::new(loaded, vocabulary.as_ref());
    if !checked.diagnostics.is_empty() {
        crate::eprint_lossy!("{}", checked.render());
    }
    if let Some(summary) = checked.errors_found(&args.rules) {
        return Err(Error::Rejected(summary));
    }
    let compiled = &checked.compiled;
    let spec = &compiled.spec;
    let copy_count = spec.rules.iter().filter(|r| r.copy).count();
    let mut s = format!(
        "{}: {} blocks, {} rules{}\n",
        args.rules.display(),
        spec.blocks.len(),
        spec.rules.len() - copy_count,
        if copy_count > 0 { format!(", {copy_count} copy rules") } else { String::new() }
    );
    if vocabulary.is_none() {
        s += "(no vocabulary given: words were not looked up; add --corpus or --checkpoint)\n";
    }
    s += "\nblock                 members  anchors\n";
    for (index, block) in spec.blocks.iter().enumerate() {
        let members = compiled.set.as_ref().map_or(block.words.len(), |set| set.blocks[index].members.len());
        let kind = if block.recruitable { "  (recruitable)" } else { "" };
        s += &format!("{:<20}  {:>7}  {}{kind}\n", block.name, members, block.anchors.join(", "));
    }
    let coverage: Option<Vec<usize>> = match (&compiled.set, &corpus_ids) {
        (Some(set), Some(ids)) => Some(
            (0..set.rules.len())
                .map(|r| {
                    ids.chunks(crate::locality::targets::COVERAGE_WINDOW)
                        .map(|window| crate::locality::targets::rule_targets(set, r, window).covered_rows())
                        .sum()
                })
                .collect(),
        ),
        _ => None,
    };
    s += "\nrule                                         covers\n";
    let names: Vec<String> = match &compiled.set {
        Some(set) => set.rules.iter().map(|r| r.name.clone()).collect(),
        None => spec.rules.iter().filter(|r| !r.copy).map(|r| r.name.clone()).collect(),
    };
    for (index, name) in names.iter().enumerate() {
        let covered = coverage.as_ref().map_or("-".to_string(), |c| c[index].to_string());
        s += &format!("{name:<42}  {covered:>7}\n");
    }
    if copy_count > 0 {
        // copy rules (METHOD §4): the query positions whose cache is not empty
        s += "\ncopy rule                                    covers\n";
        let copy_rules: Vec<(String, String)> = match (&compiled.set, &corpus_ids) {
            (Some(set), Some(ids)) => set
                .copy_rules
                .iter()
                .map(|rule| {
                    let covered: usize = ids
                        .chunks(crate::locality::targets::COVERAGE_WINDOW)
                        .map(|window| {
                            crate::locality::copy_targets::copy_rule_targets(set, rule, window)
                                .iter()
                                .filter(|targets| !targets.is_empty())
                                .count()
                        })
                        .sum();
                    (rule.name.clone(), covered.to_string())
                })
                .collect(),
            _ => spec.rules.iter().filter(|r| r.copy).map(|r| (r.name.clone(), "-".to_string())).collect(),
        };
        for (name, covered) in copy_rules {
            s += &format!("{name:<42}  {covered:>7}\n");
        }
    }
    if let Some(ids) = &corpus_ids {
        s += &format!(
            "\ncoverage: query positions each rule covers in the corpus ({} {} tokens, windows of {}){}\n",
            ids.len(),
            TokenizerKind::from(args.tokenizer).name(),
            crate::locality::targets::COVERAGE_WINDOW,
            if copy_count > 0 { "; a copy rule covers a position whose copy cache is not empty" } else { "" }
        );
    }
    write_out(out, &s)
}

fn run_fmt(args: FmtArgs, out: &mut dyn Write) -> Result<()> {
    let source = std::fs::read_to_string(&args.rules).map_err(|e| Error::io(&args.rules, e))?;
    match crate::dsl::format::format(&source) {
        Ok(formatted) if args.write => checkpoint::atomic_write(&args.rules, formatted.as_bytes()),
        Ok(formatted) => write_out(out, &formatted),
        Err(_) => {
            let loaded = crate::dsl::load_source(&args.rules, source)?;
            crate::eprint_lossy!("{}", loaded.render(&loaded.diagnostics));
            Err(Error::Rejected(format!("{}: cannot be formatted until it parses", args.rules.display())))
        }
    }
}

fn run_anchors(args: AnchorsArgs, out: &mut dyn Write) -> Result<()> {
    let loaded = loaded_rules(&args.rules)?;
    let text = corpus_text(&args.corpus)?;
    let vocabulary = crate::data::Vocabulary::build(TokenizerKind::Word, &text, 1_000_000);
    let ids = vocabulary.encode(&text);
    let checked = crate::dsl::Checked::new(loaded, Some(&vocabulary));
    let Some(set) = &checked.compiled.set else {
        crate::eprint_lossy!("{}", checked.render());
        return Err(Error::Rejected(format!("{}: fix the errors above first", args.rules.display())));
    };
    let scored = crate::dsl::anchors::score(set, &vocabulary, &ids, args.window, args.max, args.min_gain);
    if args.json {
        return write_out(
            out,
            &(serde_json::to_string_pretty(&scored).map_err(|e| Error::Numeric(e.to_string()))? + "\n"),
        );
    }
    let mut s = format!(
        "anchor scores on {} words: I(X;Y) in bits, X = the token at i, Y = a block member within {} positions\n",
        ids.len(),
        args.window
    );
    for block in &scored {
        s += &format!("\nblock {}  (P(Y) = {:.4})\n", block.block, block.share_near_block);
        s += "  token                 occurrences   I(X;Y) bits   greedy gain bits\n";
        for score in &block.scores {
            let mark = if score.chosen { "  chosen" } else { "" };
            s += &format!(
                "  {:<20}  {:>11}   {:>11.6}   {:>16.6}{mark}\n",
                score.token, score.occurrences, score.mutual_information_bits, score.greedy_gain_bits
            );
        }
    }
    if args.snippet {
        // the blocks as written, with the chosen anchors in place of the old ones: ready to paste back
        s += &format!(
            "\n# anchors chosen by `ailla anchors` (window {}, at most {} per block)\n",
            args.window, args.max
        );
        for (block, scores) in checked.compiled.spec.blocks.iter().zip(&scored) {
            let mut chosen = block.clone();
            chosen.anchors = scores.chosen.clone();
            s += &format!("\n{}\n", crate::dsl::format::block_spec(&chosen));
        }
    }
    write_out(out, &s)
}

fn load_plan(path: &Path, changes: &PlanChanges) -> Result<(crate::pipeline::Plan, String)> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    match crate::pipeline::plan_with(&text, path, &changes.options()) {
        Ok(plan) => Ok((plan, text)),
        Err(problems) => {
            for problem in &problems {
                crate::eprintln_lossy!("{}:{problem}", path.display());
            }
            Err(Error::Config {
                path: path.to_path_buf(),
                message: format!(
                    "{} problem{} found; nothing was run",
                    problems.len(),
                    if problems.len() == 1 { "" } else { "s" }
                ),
            })
        }
    }
}

fn run_validate(args: ValidateArgs, out: &mut dyn Write) -> Result<()> {
    let (plan, _) = load_plan(&args.pipeline, &args.changes)?;
    if let Some(domains) = &plan.domains {
        let names: Vec<&str> = domains.domains.sources.iter().map(|s| s.name.as_str()).collect();
        return write_out(
            out,
            &format!(
                "{}: valid; recruitment of specialised models over {} domains ({}) into {}\n",
                args.pipeline.display(),
                names.len(),
                names.join(", "),
                plan.output_dir.display()
            ),
        );
    }
    let mut s = format!(
        "{}: valid; {} member{} into {}\n",
        args.pipeline.display(),
        plan.members.len(),
        if plan.members.len() == 1 { "" } else { "s" },
        plan.output_dir.display()
    );
    for member in &plan.members {
        s += &format!("  {}  ({} steps)\n", member.name, member.config.steps);
    }
    write_out(out, &s)
}

fn run_pipeline(args: RunArgs, threads: Option<usize>, out: &mut dyn Write) -> Result<()> {
    let (mut plan, resume, pipeline_file, text) = match (&args.pipeline, &args.resume) {
        (_, Some(dir)) => {
            let mut plan = crate::pipeline::run::read_plan(dir)?;
            // the run continues where it is, whatever directory the command is given from
            plan.output_dir = dir.clone();
            (plan, true, dir.join("pipeline.yaml"), None)
        }
        (Some(path), None) => {
            let (plan, text) = load_plan(path, &args.changes)?;
            crate::pipeline::run::check_fresh_output(&plan.output_dir, args.force)?;
            (plan, false, path.clone(), Some(text))
        }
        (None, None) => return Err(Error::invalid("pipeline", "give a pipeline file or --resume RUN_DIR")),
    };
    if args.jobs == Some(0) {
        return Err(Error::invalid("--jobs", "must be at least 1"));
    }
    std::fs::create_dir_all(&plan.output_dir).map_err(|e| Error::io(&plan.output_dir, e))?;
    let _lock = crate::run_dir::RunLock::acquire(&plan.output_dir, &mut |note| crate::eprintln_lossy!("{note}"))?;
    if let Some(text) = &text {
        crate::pipeline::run::write_plan(&plan, text)?;
    }
    if threads.is_some() {
        plan.threads = threads;
    } else if let Some(threads) = plan.threads {
        check_threads("train.threads", threads)?;
    }
    let cores = plan.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let mut provenance = crate::report::provenance::collect(&plan, &pipeline_file, cores)?;
    let started = std::time::Instant::now();
    // a domains pipeline is one pool run; any other pipeline, its sweep members
    let (outcomes, domains) = match &plan.domains {
        Some(domains) => {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(cores)
                .build()
                .map_err(|e| Error::Numeric(format!("cannot start {cores} worker threads: {e}")))?;
            let progress = crate::train::Progress::Lines { every: usize::MAX, prefix: format!("[{}] ", plan.name) };
            (Vec::new(), Some(pool.install(|| crate::recruit::domains::run(domains, &plan.output_dir, &progress))?))
        }
        None => (crate::pipeline::run::execute(&plan, resume, args.force, args.jobs), None),
    };
    provenance.wall_time_seconds = started.elapsed().as_secs_f64();
    provenance.peak_memory_mib = crate::bench::peak_memory_mib();
    let json = serde_json::to_string_pretty(&provenance).map_err(|e| Error::Numeric(e.to_string()))?;
    checkpoint::atomic_write(&plan.output_dir.join(crate::report::PROVENANCE_FILE), json.as_bytes())?;
    let report = crate::report::build(&plan.output_dir)?;
    crate::report::write(&plan.output_dir, &report)?;
    let (mut s, pool) = match &domains {
        Some(summary) => {
            (crate::report::domains_markdown(summary), format!("; pool: {}", plan.output_dir.join("pool").display()))
        }
        None => (crate::pipeline::run::summary_table(&outcomes), String::new()),
    };
    s += &format!(
        "\nrun directory: {}  ({:.1} s){pool}; report: {}\n",
        plan.output_dir.display(),
        provenance.wall_time_seconds,
        plan.output_dir.join("report.md").display()
    );
    write_out(out, &s)?;
    let interrupted = outcomes.iter().any(|o| matches!(o.result, Err(Error::Interrupted(_))));
    if interrupted {
        return Err(Error::Interrupted(format!("continue with `ailla run --resume {}`", plan.output_dir.display())));
    }
    let failed = outcomes.iter().filter(|o| o.result.is_err()).count();
    if failed > 0 {
        return Err(Error::Rejected(format!("{failed} of {} runs failed (see the table above)", outcomes.len())));
    }
    Ok(())
}
