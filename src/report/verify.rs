//! `ailla verify RUN_DIR`: replays a pipeline run from what it stored — its resolved plan, with the
//! thread count and seeds it recorded — into another directory, and compares every stored number
//! with the replay's (see [`super::compare`] for how, and which fields are left out).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::compare::{excluded_fields, Comparison, Difference, ExcludedField, Tolerance, Tree, ValueKind};
use super::provenance::Provenance;
use crate::{Error, Result};

/// How a verification ended; each has its exit status.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Every compared value is bit-identical (exit 0).
    Identical,
    /// In another numerical environment, every difference is within its tolerance (exit 4).
    WithinTolerance,
    /// A difference beyond tolerance — any difference at all on the recorded environment —, an input
    /// that is not what the run read, or a member that failed on replay (exit 1).
    Failed,
}

impl Verdict {
    pub fn exit_code(self) -> i32 {
        match self {
            Verdict::Identical => 0,
            Verdict::Failed => 1,
            Verdict::WithinTolerance => 4,
        }
    }
}

/// One fact of the numerical environment, as the run recorded it and as it is here.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
pub struct EnvironmentRow {
    pub field: String,
    pub recorded: String,
    pub here: String,
    /// Whether it decides the last bits (README "Determinism and threads"): the code, the platform,
    /// the BLAS build and the kernel it chose. The CPU's name, ailla's kernel path and the thread
    /// count do not.
    pub decides_bits: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
pub struct ToleranceRow {
    pub kind: ValueKind,
    pub applies_to: String,
    /// Null: exact.
    pub tolerance: Option<Tolerance>,
}

/// What `ailla verify` found; `--json` prints this.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Verification {
    pub run_dir: String,
    pub pipeline: String,
    pub members: Vec<String>,
    /// The worker threads of the replay: those the run recorded.
    pub threads: usize,
    pub seeds: Vec<u64>,
    /// Whether every field that decides the last bits is the recorded one; then every tolerance is
    /// zero.
    pub same_environment: bool,
    pub environment: Vec<EnvironmentRow>,
    /// The tolerances outside the recorded environment.
    pub tolerances: Vec<ToleranceRow>,
    pub excluded: Vec<ExcludedField>,
    /// Files that are not compared, and why.
    pub not_compared: Vec<String>,
    /// False when an input differed, so nothing was replayed.
    pub replayed: bool,
    /// Where the replay was written, when it was kept (`--replay-dir`).
    pub replay_dir: Option<String>,
    /// Members whose replay failed, with the error.
    pub replay_errors: Vec<String>,
    pub files_compared: usize,
    pub numbers_compared: usize,
    pub tensors_compared: usize,
    /// Every difference, in file and field order.
    pub differences: Vec<Difference>,
    pub verdict: Verdict,
}

impl Verification {
    pub fn beyond_tolerance(&self) -> usize {
        self.differences.iter().filter(|d| !d.within_tolerance).count()
    }
}

/// Files a run directory holds beside the compared ones.
const NOT_COMPARED: [&str; 2] = [
    "report.md, report.html, report-*.svg: rendered from report.json, which is compared",
    "pipeline.yaml: the pipeline as written; its SHA-256 in provenance.json is compared",
];

fn missing(path: &Path, what: &str) -> Error {
    Error::Config { path: path.to_path_buf(), message: format!("is missing; {what}") }
}

/// The environment rows and whether the environment is the recorded one.
fn environment(recorded: &Provenance, here: &Provenance) -> (Vec<EnvironmentRow>, bool) {
    let row = |field: &str, recorded: String, here: String, decides_bits: bool| EnvironmentRow {
        field: field.into(),
        recorded,
        here,
        decides_bits,
    };
    let version = |p: &Provenance| format!("{} (commit {})", p.ailla_version, p.git_commit);
    let mut rows = vec![
        row("ailla", version(recorded), version(here), true),
        row("platform", recorded.platform.clone(), here.platform.clone(), true),
    ];
    type Fact = fn(&crate::engine::environment::NumericalEnvironment) -> String;
    let fields: [(&str, bool, Fact); 8] = [
        ("cpu", false, |n| n.cpu.clone()),
        ("simd_path", false, |n| n.simd_path.clone()),
        ("blas", true, |n| n.blas.clone()),
        ("blas_version", true, |n| n.blas_version.clone()),
        ("blas_config", true, |n| n.blas_config.clone()),
        ("blas_core", true, |n| n.blas_core.clone()),
        // (a report from before the field was recorded reads as "not recorded", so the figures are
        // then compared within tolerance rather than bit for bit)
        ("products", true, |n| if n.products.is_empty() { "not recorded".into() } else { n.products.clone() }),
        ("blas_threads", false, |n| n.blas_threads.to_string()),
    ];
    for (field, decides, get) in fields {
        let show = |p: &Provenance| p.numerics.as_ref().map_or_else(|| "not recorded".to_string(), get);
        rows.push(row(field, show(recorded), show(here), decides));
    }
    rows.push(row("threads", recorded.threads.to_string(), here.threads.to_string(), false));
    let same = recorded.numerics.is_some() && rows.iter().all(|r| !r.decides_bits || r.recorded == r.here);
    (rows, same)
}

/// Where the replay goes: `dir` (which must be missing or empty, and is kept) or a temporary directory.
enum ReplayDir {
    Kept(PathBuf),
    Temporary(tempfile::TempDir),
}

impl ReplayDir {
    fn path(&self) -> &Path {
        match self {
            ReplayDir::Kept(path) => path,
            ReplayDir::Temporary(dir) => dir.path(),
        }
    }
}

/// Replays the run in `run_dir` and compares it with what it stored. Everything stored is read and
/// checked before anything is replayed or written; a missing or damaged file is an error naming it.
pub fn verify(run_dir: &Path, replay_dir: Option<&Path>) -> Result<Verification> {
    if !run_dir.is_dir() {
        return Err(Error::Config { path: run_dir.to_path_buf(), message: "is not a directory".into() });
    }
    super::require_finished(run_dir)?;
    for file in ["pipeline.yaml", super::PROVENANCE_FILE, "report.json"] {
        let path = run_dir.join(file);
        if !path.is_file() {
            return Err(missing(&path, "verify replays a finished `ailla run` directory, which holds it"));
        }
    }
    let plan = crate::pipeline::run::read_plan(run_dir)?;
    let recorded: Provenance = super::build::read_json(&run_dir.join(super::PROVENANCE_FILE))?;
    let stored = Tree::read(run_dir)?;
    let threads = recorded.threads.max(1);
    if let Some(dir) = replay_dir {
        let holds_something = std::fs::read_dir(dir).map(|mut entries| entries.next().is_some()).unwrap_or(false);
        if holds_something || dir.is_file() {
            return Err(Error::Config {
                path: dir.to_path_buf(),
                message: "is not empty: --replay-dir must be missing or empty, since the replay is written there"
                    .into(),
            });
        }
    }

    let replay = match replay_dir {
        Some(dir) => ReplayDir::Kept(dir.to_path_buf()),
        None => ReplayDir::Temporary(
            tempfile::Builder::new()
                .prefix("ailla-verify-")
                .tempdir()
                .map_err(|e| Error::io(std::env::temp_dir(), e))?,
        ),
    };
    let out = replay.path();
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    // the stored plan and pipeline, byte for byte, so that the replay's report names them as the run did
    for file in ["pipeline.yaml", crate::pipeline::run::PLAN_FILE] {
        let bytes = std::fs::read(run_dir.join(file)).map_err(|e| Error::io(run_dir.join(file), e))?;
        crate::checkpoint::atomic_write(&out.join(file), &bytes)?;
    }
    let mut replay_plan = plan.clone();
    replay_plan.output_dir = out.to_path_buf();
    replay_plan.threads = Some(threads);
    let mut provenance = super::provenance::collect(&replay_plan, &out.join("pipeline.yaml"), threads)?;
    let (environment, same_environment) = environment(&recorded, &provenance);
    let mut verification = Verification {
        run_dir: run_dir.display().to_string(),
        pipeline: plan.name.clone(),
        members: plan.members.iter().map(|m| m.name.clone()).collect(),
        threads,
        seeds: recorded.seeds.clone(),
        same_environment,
        environment,
        tolerances: ValueKind::ALL
            .iter()
            .map(|&kind| ToleranceRow { kind, applies_to: kind.describe().into(), tolerance: kind.tolerance() })
            .collect(),
        excluded: excluded_fields(),
        not_compared: NOT_COMPARED.iter().map(|s| s.to_string()).collect(),
        replayed: false,
        replay_dir: replay_dir.map(|d| d.display().to_string()),
        replay_errors: Vec::new(),
        files_compared: 0,
        numbers_compared: 0,
        tensors_compared: 0,
        differences: Vec::new(),
        verdict: Verdict::Failed,
    };

    // the inputs first: a replay from other inputs says nothing about the run
    let mut comparison = Comparison::new(same_environment);
    let recorded_value = serde_json::to_value(&recorded).map_err(|e| Error::Numeric(e.to_string()))?;
    let here_value = serde_json::to_value(&provenance).map_err(|e| Error::Numeric(e.to_string()))?;
    comparison.document(super::PROVENANCE_FILE, &recorded_value, &here_value);
    if !comparison.differences.is_empty() {
        verification.differences = comparison.differences;
        return Ok(verification);
    }

    let started = std::time::Instant::now();
    verification.replay_errors = replay_members(&replay_plan, threads)?;
    verification.replayed = true;
    if !verification.replay_errors.is_empty() {
        return Ok(verification);
    }
    provenance.wall_time_seconds = started.elapsed().as_secs_f64();
    // peak memory is left out of the comparison (and is the process's, verify's own included)
    provenance.peak_memory_mib = None;
    let json = serde_json::to_string_pretty(&provenance).map_err(|e| Error::Numeric(e.to_string()))?;
    crate::checkpoint::atomic_write(&out.join(super::PROVENANCE_FILE), json.as_bytes())?;
    let report = super::build(out)?;
    super::write(out, &report)?;

    let mut comparison = Comparison::new(same_environment);
    comparison.trees(&stored, &Tree::read(out)?);
    // the stored report's hash of its own content: an edit anywhere in report.json shows here, even
    // in a field the replay leaves out (the invocation)
    let report_path = run_dir.join(super::REPORT_FILE);
    if let Ok(text) = std::fs::read_to_string(&report_path) {
        let recorded = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("report_sha256")?.as_str().map(str::to_string))
            .filter(|h| !h.is_empty());
        if let (Some(recorded), Some(content)) = (recorded, super::card::content_sha256_of_text(&text)) {
            if recorded != content {
                comparison.contradiction(
                    super::REPORT_FILE,
                    "report_sha256",
                    recorded,
                    format!("content hashes to {content}"),
                );
            }
        }
    }
    verification.files_compared = comparison.files;
    verification.numbers_compared = comparison.numbers;
    verification.tensors_compared = comparison.tensors;
    verification.differences = comparison.differences;
    verification.verdict = match (verification.differences.is_empty(), verification.beyond_tolerance()) {
        (true, _) => Verdict::Identical,
        (false, 0) => Verdict::WithinTolerance,
        _ => Verdict::Failed,
    };
    Ok(verification)
}

/// Runs every member of `plan` (or its domain pool) afresh; the errors of those that failed.
fn replay_members(plan: &crate::pipeline::Plan, threads: usize) -> Result<Vec<String>> {
    if let Some(domains) = &plan.domains {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .map_err(|e| Error::Numeric(format!("cannot start {threads} worker threads: {e}")))?;
        let progress = crate::train::Progress::notes(&format!("[{} replay] ", plan.name));
        return Ok(match pool.install(|| crate::recruit::domains::run(domains, &plan.output_dir, &progress)) {
            Ok(_) => Vec::new(),
            Err(Error::Interrupted(_)) => return Err(interrupted()),
            Err(e) => vec![format!("the domain pool: {e}")],
        });
    }
    let outcomes = crate::pipeline::run::execute(plan, false, false, None, crate::engine::cuda::StepDevice::Cpu);
    if outcomes.iter().any(|o| matches!(o.result, Err(Error::Interrupted(_)))) {
        return Err(interrupted());
    }
    Ok(outcomes.iter().filter_map(|o| o.result.as_ref().err().map(|e| format!("member `{}`: {e}", o.name))).collect())
}

fn interrupted() -> Error {
    Error::Interrupted("the replay was stopped; nothing was verified, and the run directory is unchanged".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provenance(products: &str) -> Provenance {
        let file = || crate::report::provenance::FileHash { path: "p".into(), sha256: "0".into(), bytes: None };
        let mut numerics = crate::engine::environment::current();
        numerics.products = products.into();
        Provenance {
            ailla_version: "0".into(),
            git_commit: "c".into(),
            platform: "x".into(),
            threads: 2,
            numerics: Some(numerics),
            pipeline: file(),
            rules: Vec::new(),
            data: Vec::new(),
            seeds: vec![1],
            wall_time_seconds: 1.0,
            peak_memory_mib: None,
            invocation: None,
        }
    }

    /// ailla's own kernel and OpenBLAS sum in different orders: a run recorded with one and verified
    /// with the other is in another numerical environment, as is one recorded before the field was.
    #[test]
    fn who_computed_the_products_decides_the_environment() {
        let (_, same) = environment(&provenance("avx512 8x32"), &provenance("avx512 8x32"));
        assert!(same);
        let (rows, same) = environment(&provenance("blas"), &provenance("avx512 8x32"));
        assert!(!same);
        assert!(rows.iter().any(|row| row.field == "products" && row.decides_bits && row.recorded == "blas"));
        let (rows, same) = environment(&provenance(""), &provenance("blas"));
        assert!(!same);
        assert!(rows.iter().any(|row| row.field == "products" && row.recorded == "not recorded"));
    }
}
