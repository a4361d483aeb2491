//! The command line as typed: clap definitions only, no work.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::data::generator::DEFAULT_SEED;
use crate::data::TokenizerKind;

pub use super::bench_args::{BenchArgs, CudaCheckArgs};

/// `ailla --version`: the version, the commit it was built from and the build profile. The numerical
/// environment (CPU, kernels, BLAS) is `ailla env`.
pub(super) const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("AILLA_GIT_COMMIT"),
    ", ",
    env!("AILLA_BUILD_PROFILE"),
    " build)"
);

/// The end of every verb's help: what its exit status means (one policy, README "Exit status").
macro_rules! exit_status {
    () => {
        "\n\nExit status: 0 done; 1 the work failed or was interrupted (finished work is kept); 2 unusable \
         input (the message names the file, line and column, or the field or flag); 3 a result that is not \
         a finite number."
    };
}

#[derive(Parser, Debug)]
#[command(name = "ailla", version, long_version = LONG_VERSION, about = "Train and audit localist language models")]
pub struct Cli {
    /// Worker threads for the engine (default: every core).
    #[arg(long, global = true)]
    pub threads: Option<usize>,
    /// Print no progress and no notes on stderr; errors and results still print.
    #[arg(long, short, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Print a progress line for every training step, on a terminal too.
    #[arg(long, short, global = true)]
    pub verbose: bool,
    /// Where training runs: `cpu`, `cuda` (an error without a usable GPU), or `auto` (the GPU when the
    /// probe finds one). The device step takes rules, copy paths and recruited blocks; a pipeline's
    /// `train.device` is checked the same way; `ailla env` shows the probe. The CUDA path is unverified on hardware (README, "CUDA").
    #[arg(long, global = true, value_enum)]
    pub device: Option<crate::engine::cuda::DeviceChoice>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a pipeline: train every sweep member, evaluate it across the dial, print a summary.
    #[command(after_help = concat!("Examples:\n  ailla run pipelines/quickstart.yaml\n  ailla run pipelines/recruit_blocks.yaml --data ../shared/data/wikitext-2 --jobs 2\n  ailla run --resume runs/quickstart\n  ailla run pipelines/sweep-lambda.yaml --list-members\n  ailla --threads 4 run --resume runs/sweep-lambda --member 3\n  ailla run --resume runs/sweep-lambda --report-only", exit_status!()))]
    Run(RunArgs),
    /// Run a pipeline's members on a cluster: a Slurm job array and a report job after it, or a
    /// Kubernetes Indexed Job manifest.
    #[command(after_help = concat!("Examples:\n  ailla submit slurm pipelines/sweep-lambda.yaml --partition cpu --time 2:00:00 --cpus-per-task 4\n  ailla submit slurm pipelines/quickstart.yaml --dry-run\n  ailla submit kubernetes pipelines/sweep-lambda.yaml --image registry.example/ailla:0.1 --volume-claim runs", exit_status!()))]
    Submit(SubmitArgs),
    /// Check a pipeline file and list its sweep members, without running anything.
    #[command(after_help = concat!("Example:\n  ailla validate pipelines/recruit_planted.yaml --quick", exit_status!()))]
    Validate(ValidateArgs),
    /// Rebuild a pipeline run's report (`report.json`, `report.md`, `report.html` and its figures) from
    /// what the run stored, byte for byte.
    #[command(after_help = concat!("Example:\n  ailla report runs/quickstart", exit_status!()))]
    Report(ReportArgs),
    /// Replay a pipeline run from what it stored (its plan, seeds and thread count) and compare every
    /// stored number, log line and weight with the replay's: bit for bit on the recorded numerical
    /// environment, within stated tolerances elsewhere.
    #[command(after_help = "Examples:\n  ailla verify runs/quickstart\n  ailla verify runs/quickstart --json\n  \
        ailla verify runs/quickstart --replay-dir runs/quickstart-replay\n\n\
        Exit status: 0 identical: every compared number, hash and tensor bit for bit; 1 verification failed: a \
        difference beyond tolerance (any difference on the recorded environment), an input that is not the one \
        the run read, or a member that failed on replay; 2 unusable input (a missing or damaged run directory or \
        input file, named); 3 a result that is not a finite number; 4 reproduced within the stated tolerances \
        in another numerical environment, not bit for bit.")]
    Verify(VerifyArgs),
    /// Compare two pipeline runs: configuration field by field, inputs by SHA-256, environment, and
    /// every headline number of their reports with the difference, its 95 % interval and Welch's p.
    #[command(after_help = concat!("Examples:\n  ailla diff runs/quickstart runs/quickstart-lr\n  ailla diff runs/a runs/b --json", exit_status!()))]
    Diff(DiffArgs),
    /// Train a model and write a run directory (model, optimizer state, metrics, summary).
    #[command(after_help = concat!("Examples:\n  ailla train --corpus bundled --steps 200 --out runs/small\n  ailla train --resume --out runs/small", exit_status!()))]
    Train(TrainArgs),
    /// Score a text or a stream of token ids with a checkpoint.
    #[command(after_help = concat!("Examples:\n  ailla eval runs/small/model.safetensors --text notes.txt\n  ailla eval runs/small/model.safetensors --text notes.txt --lambda 0,0.5,1 --rules rules/default.rules", exit_status!()))]
    Eval(EvalArgs),
    /// Take one prediction apart: the top tokens, how much of the actual next token's probability came
    /// from the network and from each copy path (and from which positions), and where every head
    /// attended, under which rule, with its fidelity and certificate.
    #[command(after_help = concat!("Examples:\n  ailla explain runs/small/model.safetensors --text notes.txt --at 41\n  ailla explain runs/small/model.safetensors --text notes.txt --at 41 --lambda 0 --rules rules/copy-examples.rules\n  ailla explain runs/small/model.safetensors --text notes.txt --at 41 --html > why.html", exit_status!()))]
    Explain(ExplainArgs),
    /// Measure training and evaluation throughput against this machine's sgemm (and PyTorch).
    #[command(after_help = concat!("Examples:\n  ailla --threads 2 bench --config char-small --scaling\n  ailla bench --check-cost pipelines/recruit_planted.yaml", exit_status!()))]
    Bench(BenchArgs),
    /// Check the CUDA path on this machine's GPU: every kernel of the device step against the host
    /// reference, then a training run's losses on the GPU against the CPU engine's.
    #[command(after_help = concat!("Example:\n  ailla cuda-check --tolerance 1e-5 --steps 50", exit_status!()))]
    CudaCheck(CudaCheckArgs),
    /// Write the bundled generated corpus to a directory.
    #[command(after_help = concat!("Example:\n  ailla generate --out data/pharmacy --planted", exit_status!()))]
    Generate(GenerateArgs),
    /// Check a `.rules` file: parse it, compile it against a vocabulary, summarise what it says.
    #[command(after_help = concat!("Examples:\n  ailla check rules/default.rules\n  ailla check rules/default.rules --corpus bundled", exit_status!()))]
    Check(CheckArgs),
    /// Print a `.rules` file in its canonical layout.
    #[command(after_help = concat!("Example:\n  ailla fmt rules/default.rules --write", exit_status!()))]
    Fmt(FmtArgs),
    /// Score candidate anchors of each block by mutual information on a corpus (METHOD §2).
    #[command(after_help = concat!("Example:\n  ailla anchors rules/default.rules --corpus bundled --snippet", exit_status!()))]
    Anchors(AnchorsArgs),
    /// Send a document to the pool model that codes its first tokens in the fewest bits (METHOD §8).
    #[command(after_help = concat!("Example:\n  ailla route runs/recruit_domains/pool --text essay.txt", exit_status!()))]
    Route(RouteArgs),
    /// Trial a block of your own on a run, as recruitment would, and say in bits whether it pays (METHOD §7).
    #[command(after_help = concat!("Examples:\n  ailla trial runs/recruit_planted/seed-1 --block \"penicillin, latex, peanuts\"\n  ailla trial runs/recruit_planted/seed-1 --rules my-block.rules --json", exit_status!()))]
    Trial(TrialArgs),
    /// Print the numerical environment: CPU, kernel instruction set, BLAS library, version, kernel and
    /// threads — what decides the last bits of every result (README, "Determinism").
    #[command(after_help = concat!("Example:\n  ailla env --json", exit_status!()))]
    Env(EnvArgs),
    /// Write a checkpoint in another framework's format: `--format hf` gives a directory that Hugging
    /// Face transformers loads as `GPT2LMHeadModel` with its tokenizer (the model at λ = 0).
    #[command(after_help = concat!(
        "Example:\n  ailla export runs/quickstart/quickstart/model.safetensors --format hf --out hf-model\n\n\
Then, in Python:\n  from transformers import AutoTokenizer, GPT2LMHeadModel\n  \
model = GPT2LMHeadModel.from_pretrained(\"hf-model\")\n  tokenizer = AutoTokenizer.from_pretrained(\"hf-model\")",
        exit_status!()
    ))]
    Export(ExportArgs),
    /// Print a shell completion script, generated from these same definitions.
    #[command(after_help = concat!(
        "Examples:\n  ailla completions bash > ~/.local/share/bash-completion/completions/ailla\n  \
         ailla completions zsh > ~/.zfunc/_ailla",
        exit_status!()
    ))]
    Completions(CompletionsArgs),
    /// Print the manual page (roff), or write one page per verb into a directory.
    #[command(after_help = concat!(
        "Examples:\n  ailla man | man -l -\n  ailla man --out target/man",
        exit_status!()
    ))]
    Man(ManArgs),
}

#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Args, Debug)]
pub struct ManArgs {
    /// Write `ailla.1` and `ailla-VERB.1` for every verb into this directory instead of printing
    /// `ailla.1`.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportFormat {
    /// Hugging Face transformers: config.json, model.safetensors, tokenizer.json, tokenizer_config.json.
    Hf,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The checkpoint (`model.safetensors` of a run, or one of its `checkpoints/step-*.safetensors`).
    pub checkpoint: PathBuf,
    /// The format to write.
    #[arg(long, value_enum)]
    pub format: ExportFormat,
    /// The directory to write; it must not exist or be empty.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

#[derive(Args, Debug)]
pub struct EnvArgs {
    /// Print JSON (the `numerics` object of a report's provenance).
    /// Print JSON instead of a table (shape: `src/cli/schemas/env.schema.json`).
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
    /// Print JSON instead of a table (shape: `src/cli/schemas/trial.schema.json`).
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
    /// Print JSON instead of a table (shape: `src/cli/schemas/route.schema.json`).
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("vocabulary").args(["corpus", "checkpoint"])))]
pub struct CheckArgs {
    /// The `.rules` file to check.
    pub rules: PathBuf,
    /// Compile against the vocabulary of this corpus (`bundled`, a directory or a text file) and
    /// count the positions each rule covers in it.
    #[arg(long)]
    pub corpus: Option<String>,
    /// How `--corpus` is tokenized.
    #[arg(long, value_enum, default_value = "word")]
    pub tokenizer: TokenizerArg,
    /// Compile against the vocabulary of this checkpoint, and check `in layers` / `in heads`
    /// against its layers and heads.
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Print every warning in full (by default the first few of a kind, then a count).
    #[arg(long)]
    pub all: bool,
    /// Print JSON instead of the tables (shape: `src/cli/schemas/check.schema.json`).
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct FmtArgs {
    /// The `.rules` file to print in canonical layout.
    pub rules: PathBuf,
    /// Rewrite the file in place instead of printing it.
    #[arg(long)]
    pub write: bool,
}

#[derive(Args, Debug)]
pub struct AnchorsArgs {
    /// The `.rules` file whose blocks get anchors.
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
    /// Print JSON instead of a table (shape: `src/cli/schemas/anchors.schema.json`).
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
    #[arg(long, conflicts_with = "member")]
    pub jobs: Option<usize>,
    /// Run only this member of the plan, into its directory, exactly as the whole run would (the same
    /// code, so the same bits for the same thread count; `--threads` gives it all its threads). It is
    /// the member's index from 0, as `--list-members` prints it and job arrays number their tasks, or
    /// its name. Other processes, here or on other machines, may run other members of the same run
    /// directory at the same time; the report is written by `--report-only` once they are done. A new
    /// run directory gets the resolved plan; one that holds the same plan already is shared.
    #[arg(long, value_name = "INDEX|NAME", conflicts_with_all = ["json", "list_members", "report_only"])]
    pub member: Option<String>,
    /// Print the plan's members (index, name, and whether each finished) and run nothing.
    #[arg(long, conflicts_with_all = ["json", "report_only", "force"])]
    pub list_members: bool,
    /// With `--resume`: train nothing; write the provenance and the report from what the members
    /// stored, as the end of a whole run does. Members that have not finished are named, and the exit
    /// status is then 1. This is how a run whose members ran as separate processes (`--member`, a job
    /// array) is closed.
    #[arg(long, requires = "resume")]
    pub report_only: bool,
    /// Print the summary as JSON instead of a table (shape: `src/cli/schemas/run.schema.json`).
    #[arg(long)]
    pub json: bool,
    /// Who runs it, for the report's audit card (default: `$AILLA_OPERATOR`, else the OS user,
    /// `$USER`); the card says which of the three it came from.
    #[arg(long, value_name = "NAME")]
    pub operator: Option<String>,
    #[command(flatten)]
    pub changes: PlanChanges,
}

#[derive(Args, Debug)]
pub struct SubmitArgs {
    #[command(subcommand)]
    pub scheduler: Scheduler,
}

#[derive(Subcommand, Debug)]
pub enum Scheduler {
    /// Submit the members as a Slurm job array (one task per member, each `ailla run --resume RUN_DIR
    /// --member $SLURM_ARRAY_TASK_ID`), then the report as a job that waits for the array.
    ///
    /// The plan is resolved into the run directory first, which must be on a file system that the
    /// compute nodes share (as must the data, the rules and this binary): the tasks run in this working
    /// directory. The scripts are kept in RUN_DIR/slurm/, the logs in RUN_DIR/slurm/logs/ (one per
    /// member index, appended to on resubmission). Submitting the same pipeline again resumes the
    /// members that have not finished and leaves finished ones alone. The report job runs after the
    /// whole array, however its tasks ended (`afterany`: with `afterok` a failed member would leave it
    /// waiting forever), names any member that did not finish, and fails then.
    #[command(after_help = concat!(
        "Examples:\n  ailla submit slurm pipelines/sweep-lambda.yaml --partition cpu --time 2:00:00 --cpus-per-task 4 --mem 8G\n  \
         ailla submit slurm pipelines/quickstart.yaml --dry-run",
        exit_status!()
    ))]
    Slurm(SlurmArgs),
    /// Write a Kubernetes Indexed Job manifest for the members (one pod per member, each `ailla run
    /// --resume RUN_DIR --member $JOB_COMPLETION_INDEX`) into RUN_DIR/kubernetes/job.yaml; it is not
    /// applied. The run directory must be on the volume the pods mount, at the same path.
    #[command(after_help = concat!(
        "Example:\n  ailla submit kubernetes pipelines/sweep-lambda.yaml --image registry.example/ailla:0.1 --volume-claim runs --cpus-per-task 4\n\n\
Then:\n  kubectl apply -f runs/sweep-lambda/kubernetes/job.yaml\n  kubectl wait --for=condition=complete --timeout=24h job/ailla-sweep-lambda\n  \
ailla run --resume runs/sweep-lambda --report-only",
        exit_status!()
    ))]
    Kubernetes(KubernetesArgs),
}

/// What every scheduler needs: the pipeline, its changes, and each member's threads.
#[derive(Args, Debug)]
pub struct ClusterArgs {
    /// The pipeline file.
    pub pipeline: PathBuf,
    /// CPUs per member, and so each member's worker threads (passed to it as `--threads`) [default:
    /// `ailla --threads N`, else the pipeline's `train.threads`, else 1]. Results are bit-identical to a local run whose members
    /// get the same thread count.
    #[arg(long, value_name = "C")]
    pub cpus_per_task: Option<usize>,
    /// Memory per member, as the scheduler writes it (`8G`, `4000M`; Kubernetes `8Gi`).
    #[arg(long, value_name = "M")]
    pub mem: Option<String>,
    /// The ailla that the members run [default: this program, by its absolute path].
    #[arg(long, value_name = "PATH")]
    pub ailla: Option<PathBuf>,
    /// Print what would be written and submitted, and write or submit nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub changes: PlanChanges,
}

#[derive(Args, Debug)]
pub struct SlurmArgs {
    #[command(flatten)]
    pub common: ClusterArgs,
    /// The partition to run in [default: the cluster's].
    #[arg(long, value_name = "P")]
    pub partition: Option<String>,
    /// Time limit per member, as sbatch reads it (`30`, `2:00:00`, `1-00:00:00`) [default: the
    /// partition's].
    #[arg(long, value_name = "T")]
    pub time: Option<String>,
    /// The account to charge.
    #[arg(long, value_name = "A")]
    pub account: Option<String>,
    /// Another sbatch option for both jobs, as written after `#SBATCH` (`--qos=long`); may be repeated.
    #[arg(long = "sbatch", value_name = "OPTION")]
    pub sbatch_options: Vec<String>,
}

#[derive(Args, Debug)]
pub struct KubernetesArgs {
    #[command(flatten)]
    pub common: ClusterArgs,
    /// The container image that holds ailla.
    #[arg(long)]
    pub image: String,
    /// The PersistentVolumeClaim that holds the working directory, mounted at its path in every pod.
    #[arg(long, value_name = "NAME")]
    pub volume_claim: String,
    /// The namespace of the Job [default: kubectl's].
    #[arg(long)]
    pub namespace: Option<String>,
}

/// Command-line changes to a pipeline, shared by `run` and `validate`.
#[derive(Args, Debug, Clone, Default)]
pub struct PlanChanges {
    /// Use the pipeline's `quick` variant (its `quick` section), whose output is `<output dir>-quick`.
    #[arg(long)]
    pub quick: bool,
    /// Corpus directory (train.txt, valid.txt, test.txt) in place of the pipeline's `data.corpus`.
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
}

impl PlanChanges {
    pub(super) fn options(&self) -> crate::pipeline::PlanOptions {
        crate::pipeline::PlanOptions { quick: self.quick, data_directory: self.data.clone() }
    }
}

#[derive(Args, Debug)]
pub struct ValidateArgs {
    /// The pipeline file to check.
    pub pipeline: PathBuf,
    /// Print JSON instead of a table (shape: `src/cli/schemas/validate.schema.json`).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub changes: PlanChanges,
}

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// A run directory written by `ailla run`.
    pub run_dir: PathBuf,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// A finished run directory written by `ailla run`; run verify from the directory the run was
    /// started in, so that its rules and data paths resolve as they did.
    pub run_dir: PathBuf,
    /// Replay into this directory (missing or empty) and keep it; default: a temporary directory,
    /// removed afterwards.
    #[arg(long, value_name = "DIR")]
    pub replay_dir: Option<PathBuf>,
    /// Print JSON instead of text (shape: `src/cli/schemas/verify.schema.json`).
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct DiffArgs {
    /// The first run directory (A).
    pub run_a: PathBuf,
    /// The second run directory (B); differences are B − A.
    pub run_b: PathBuf,
    /// Print JSON instead of text (shape: `src/cli/schemas/diff.schema.json`).
    #[arg(long)]
    pub json: bool,
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
    /// How text becomes tokens: `word` (whitespace-separated words, each line ended by `<eos>`) or
    /// `char` (every character) [default: the config's, else word].
    #[arg(long, value_enum)]
    pub tokenizer: Option<TokenizerArg>,
    /// Training steps, one batch each [default: the config's, else 400].
    #[arg(long)]
    pub steps: Option<usize>,
    /// Windows of `--ctx-len` tokens per step [default: the config's, else 16].
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Peak AdamW learning rate, after warm-up and before the cosine decay [default: the config's,
    /// else 0.003].
    #[arg(long)]
    pub learning_rate: Option<f64>,
    /// Seed of the initial weights and of every step's batch [default: the config's, else 1].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Context length in tokens, the longest window the model reads [default: the config's, else 64].
    #[arg(long)]
    pub ctx_len: Option<usize>,
    /// Model width d [default: the config's, else 64].
    #[arg(long)]
    pub d_model: Option<usize>,
    /// Transformer blocks [default: the config's, else 2].
    #[arg(long)]
    pub layers: Option<usize>,
    /// Attention heads per block; they must divide `--d-model` [default: the config's, else 4].
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
    /// Print the summary as JSON (shape: `src/cli/schemas/train.schema.json`).
    #[arg(long)]
    pub json: bool,
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
    /// Print JSON instead of a table (shape: `src/cli/schemas/eval.schema.json`, with or without the dial).
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ExplainArgs {
    /// A checkpoint written by `ailla train`.
    pub checkpoint: PathBuf,
    /// A text file, tokenized with the checkpoint's vocabulary (words it lacks are read as `<unk>`,
    /// and the explanation says which).
    #[arg(long)]
    pub text: PathBuf,
    /// The token position N (0-based, in the tokenized text) whose next token, at N + 1, is
    /// predicted: the model reads up to N within its evaluation window, as `ailla eval` scores it.
    #[arg(long, value_name = "N")]
    pub at: usize,
    /// The dial value λ in [0, 1] of the attention bias and the copy paths.
    #[arg(long, default_value_t = 1.0, value_name = "λ")]
    pub lambda: f64,
    /// Rules to explain with (`bundled` or a rule spec file); added to the checkpoint's own rules
    /// without retraining, as `ailla eval --rules`.
    #[arg(long)]
    pub rules: Option<String>,
    /// Fidelity target 1 − ε of the certificates.
    #[arg(long, default_value_t = 0.05)]
    pub epsilon: f64,
    /// Print JSON instead of sentences (shape: `src/cli/schemas/explain.schema.json`).
    #[arg(long, conflicts_with = "html")]
    pub json: bool,
    /// Print a self-contained HTML page instead of sentences.
    #[arg(long)]
    pub html: bool,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["out", "sample"])))]
pub struct GenerateArgs {
    /// Directory to write train.txt, valid.txt and test.txt into.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Seed of the generator; the bundled corpus is the default seed's.
    #[arg(long, default_value_t = DEFAULT_SEED)]
    pub seed: u64,
    /// Rewrite data/pharmacy-sample.txt, the excerpt committed for readers.
    #[arg(long)]
    pub sample: bool,
    /// Add allergy records whose allergens form a block no rules file names (for block recruitment).
    #[arg(long)]
    pub planted: bool,
}
