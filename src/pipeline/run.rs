//! Running a plan: sweep members in parallel, each in its own directory, with a shared Ctrl-C.
//!
//! Thread policy: with `C` cores (all of the machine's, or `train.threads`) and `M` members, `K =
//! min(M, C)` members run at once and each gets `⌊C/K⌋` engine threads; OpenBLAS always runs on one
//! thread inside them (see `engine::linalg`). Results do not depend on this split: the engine's blocks
//! of work are fixed by the shapes, not by the thread count.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use super::Plan;
use crate::engine::cuda::StepDevice;
use crate::train::{self, Progress, RunControl, TrainSummary};
use crate::{Error, Result};

/// How one member ended.
pub struct MemberOutcome {
    pub name: String,
    pub dir: PathBuf,
    pub result: Result<TrainSummary>,
}

pub const PLAN_FILE: &str = "pipeline.resolved.json";

/// Writes the resolved plan beside the members so that `--resume` needs nothing else.
pub fn write_plan(plan: &Plan, pipeline_text: &str) -> Result<()> {
    let json = serde_json::to_string_pretty(plan).map_err(|e| Error::Numeric(e.to_string()))?;
    crate::checkpoint::atomic_write(&plan.output_dir.join(PLAN_FILE), json.as_bytes())?;
    crate::checkpoint::atomic_write(&plan.output_dir.join("pipeline.yaml"), pipeline_text.as_bytes())
}

pub fn read_plan(run_dir: &Path) -> Result<Plan> {
    let path = run_dir.join(PLAN_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Config { path, message: e.to_string() })
}

/// Members run `K` at a time and each gets its share of the cores.
pub fn thread_split(cores: usize, members: usize) -> (usize, usize) {
    let concurrent = members.clamp(1, cores.max(1));
    (concurrent, (cores / concurrent).max(1))
}

/// Checks that a fresh pipeline run may write into `dir`: missing or empty, or (with `force`) holding
/// an earlier pipeline run. Files that are not a run's are never replaced.
pub fn check_fresh_output(dir: &Path, force: bool) -> Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(dir, e)),
    };
    let names: Vec<String> = entries
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|name| !crate::run_dir::is_leftover(name))
        .collect();
    if names.is_empty() {
        return Ok(());
    }
    let holds_run = names.iter().any(|n| n == PLAN_FILE);
    match (holds_run, force) {
        (true, true) => Ok(()),
        (true, false) => Err(Error::Config {
            path: dir.to_path_buf(),
            message: format!(
                "holds a pipeline run already; continue it with `ailla run --resume {}`, or replace it with --force",
                dir.display()
            ),
        }),
        (false, _) => Err(Error::Config {
            path: dir.to_path_buf(),
            message: format!(
                "is not empty and is not an ailla run directory (it holds `{}`{}); set the pipeline's \
                 output_dir to another directory",
                names[0],
                if names.len() > 1 { format!(" and {} more", names.len() - 1) } else { String::new() }
            ),
        }),
    }
}

/// Runs every member of `plan` (continuing finished or interrupted ones when `resume`; replacing an
/// earlier run's member directories when `force`). `jobs` overrides how many members run at once (1
/// runs them one after another with every core).
/// Where a plan's members train: `overridden` (a global `--device`), or the plan's `train.device`
/// checked against the probe.
pub fn plan_device(plan: &Plan, overridden: Option<StepDevice>) -> Result<StepDevice> {
    match overridden {
        Some(device) => Ok(device),
        None => {
            let gpu = crate::engine::cuda::select(plan.device).map_err(|m| Error::invalid("train.device", m))?;
            Ok(StepDevice::of(plan.device, gpu))
        }
    }
}

pub fn execute(plan: &Plan, resume: bool, force: bool, jobs: Option<usize>, device: StepDevice) -> Vec<MemberOutcome> {
    let cores = plan.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let (concurrent, threads_each) = thread_split(cores, jobs.unwrap_or(plan.members.len()).min(plan.members.len()));
    let quiet = crate::progress::verbosity() == crate::progress::Verbosity::Quiet;
    let bars = (std::io::stderr().is_terminal() && !quiet).then(indicatif::MultiProgress::new);
    let interrupt = train::interrupt_flag();
    let next = AtomicUsize::new(0);
    let outcomes: Mutex<Vec<Option<MemberOutcome>>> = Mutex::new((0..plan.members.len()).map(|_| None).collect());
    if bars.is_none() && !quiet {
        crate::eprintln_lossy!(
            "{}: {} member{}, {concurrent} at a time with {threads_each} thread{} each",
            plan.name,
            plan.members.len(),
            if plan.members.len() == 1 { "" } else { "s" },
            if threads_each == 1 { "" } else { "s" }
        );
    }
    std::thread::scope(|scope| {
        for _ in 0..concurrent {
            scope.spawn(|| loop {
                let index = next.fetch_add(1, Ordering::SeqCst);
                let Some(member) = plan.members.get(index) else { break };
                let dir = plan.output_dir.join(&member.name);
                let start = Start { resume, force, run_dir: &plan.output_dir, device };
                let result = run_member(member, &dir, &start, threads_each, bars.as_ref(), &interrupt);
                let outcome = MemberOutcome { name: member.name.clone(), dir, result };
                if let Ok(mut slots) = outcomes.lock() {
                    slots[index] = Some(outcome);
                }
            });
        }
    });
    outcomes.into_inner().unwrap_or_default().into_iter().flatten().collect()
}

/// How a member starts, and the pipeline run it belongs to.
struct Start<'a> {
    resume: bool,
    force: bool,
    run_dir: &'a Path,
    device: StepDevice,
}

fn run_member(
    member: &super::Member,
    dir: &Path,
    start: &Start,
    threads: usize,
    bars: Option<&indicatif::MultiProgress>,
    interrupt: &std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Result<TrainSummary> {
    let paths = train::RunPaths::new(dir);
    if start.resume {
        // a member that finished keeps its results
        if let Ok(text) = std::fs::read_to_string(paths.summary()) {
            if let Ok(summary) = serde_json::from_str::<TrainSummary>(&text) {
                if summary.steps_done >= summary.steps_planned {
                    return Ok(summary);
                }
            }
        }
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| Error::Numeric(format!("cannot start {threads} worker threads: {e}")))?;
    let progress = Progress::for_run(bars, &member.name, member.config.steps);
    // a member that never saved a checkpoint starts at step 0; one whose checkpoints are all damaged
    // is an error, not a fresh start over them
    let control = RunControl {
        resume: start.resume,
        stop_after: None,
        interrupt: Some(interrupt.clone()),
        force: start.force,
        resume_command: Some(format!("ailla run --resume {}", start.run_dir.display())),
        device: start.device,
    };
    pool.install(|| train::train(&member.config, dir, &control, &progress))
}

/// The table printed when a pipeline finishes: one row per member and λ.
pub fn summary_table(outcomes: &[MemberOutcome]) -> String {
    let width = outcomes.iter().map(|o| o.name.len()).max().unwrap_or(6).max(6);
    let mut s = format!(
        "\n{:<width$}  {:>5}  {:>12}  {:>8}  {:>10}  {:>8}\n",
        "run", "λ", "entropy bits", "fidelity", "perplexity", "accuracy"
    );
    for outcome in outcomes {
        match &outcome.result {
            Ok(summary) if summary.dial.is_empty() => {
                s += &format!(
                    "{:<width$}  {:>5}  {:>12}  {:>8}  {:>10.3}  {:>8.4}\n",
                    outcome.name, "-", "-", "-", summary.test.perplexity, summary.test.accuracy
                );
            }
            Ok(summary) => {
                for row in &summary.dial {
                    s += &format!(
                        "{:<width$}  {:>5.2}  {:>12.3}  {:>8.4}  {:>10.3}  {:>8.4}\n",
                        outcome.name,
                        row.lambda,
                        row.entropy_bits,
                        row.pointer_fidelity,
                        row.language_model.perplexity,
                        row.language_model.accuracy
                    );
                }
            }
            Err(e) => s += &format!("{:<width$}  failed: {e}\n", outcome.name),
        }
    }
    s
}

/// Where a member of a plan stands, from what its directory holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberState {
    /// Its `summary.json` says every planned step is done.
    Finished,
    /// Its directory exists but holds no finished summary: running, stopped, or failed.
    Unfinished,
    /// Nothing of it is there yet.
    NotStarted,
}

impl MemberState {
    pub fn describe(self) -> &'static str {
        match self {
            MemberState::Finished => "finished",
            MemberState::Unfinished => "not finished (running, stopped or failed)",
            MemberState::NotStarted => "not started",
        }
    }
}

/// The state of `member` of the run in `run_dir`.
pub fn member_state(run_dir: &Path, member: &super::Member) -> MemberState {
    let dir = run_dir.join(&member.name);
    let summary = std::fs::read_to_string(train::RunPaths::new(&dir).summary())
        .ok()
        .and_then(|text| serde_json::from_str::<TrainSummary>(&text).ok());
    match summary {
        Some(summary) if summary.steps_done >= summary.steps_planned => MemberState::Finished,
        _ if dir.exists() => MemberState::Unfinished,
        _ => MemberState::NotStarted,
    }
}

/// The index in `plan` of the member that `key` names: a member's name, or its index from 0 (as a
/// job array numbers its tasks). A name is looked up first, so a member named `3` is that member.
pub fn member_index(plan: &Plan, key: &str) -> Result<usize> {
    if let Some(index) = plan.members.iter().position(|m| m.name == key) {
        return Ok(index);
    }
    let count = plan.members.len();
    match key.parse::<usize>() {
        Ok(index) if index < count => Ok(index),
        Ok(index) => Err(Error::invalid(
            "--member",
            format!(
                "index {index} is past the plan's last member ({count} member{}, numbered 0 to {})",
                if count == 1 { "" } else { "s" },
                count.saturating_sub(1)
            ),
        )),
        Err(_) => {
            let hint = crate::suggest::closest(key, plan.members.iter().map(|m| m.name.as_str()), 1)
                .into_iter()
                .next()
                .map_or(String::new(), |best| format!("; did you mean `{best}`?"));
            Err(Error::invalid(
                "--member",
                format!(
                    "`{key}` is neither a member of `{}` nor an index{hint} (list them with --list-members)",
                    plan.name
                ),
            ))
        }
    }
}
