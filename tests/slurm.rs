//! `ailla submit slurm` on a real Slurm: a one-node cluster started by `.ci/slurm` for this test (it
//! needs root and Slurm installed: `bash .ci/slurm install`). Where it cannot start, the test says so
//! and passes, unless `AILLA_REQUIRE_SLURM=1` (as CI sets it) makes that a failure.
//!
//! Outputs are checked, not exit codes: with cgroup plugins on a hybrid cgroup layout Slurm marks a
//! job COMPLETED while nothing ran.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn ailla() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ailla"))
}

/// The test's Slurm, stopped (by the PIDs it recorded) when dropped.
struct Slurm {
    state: PathBuf,
    conf: PathBuf,
}

impl Slurm {
    fn script() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/slurm")
    }

    /// Starts the one-node Slurm with its state in `state`, or says why it cannot.
    fn start(state: &Path) -> Result<Slurm, String> {
        let output = Command::new("bash")
            .arg(Self::script())
            .arg("start")
            .arg(state)
            .output()
            .map_err(|e| format!("cannot run bash: {e}"))?;
        let slurm = Slurm { state: state.to_path_buf(), conf: state.join("slurm.conf") };
        if !output.status.success() {
            drop(slurm);
            return Err(String::from_utf8_lossy(&output.stderr).trim().to_string());
        }
        Ok(slurm)
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command.env("SLURM_CONF", &self.conf);
        command
    }

    /// Waits until none of `jobs` is queued or running any more (a generous bound keeps a broken
    /// cluster from hanging the suite; it is not a measurement).
    fn wait(&self, jobs: &[String]) {
        for _ in 0..2400 {
            let output = self.command("squeue").args(["-h", "-j", &jobs.join(","), "-o", "%i %T"]).output().unwrap();
            let listed = String::from_utf8_lossy(&output.stdout).trim().to_string();
            if output.status.success() && listed.is_empty() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(250));
        }
        panic!("jobs {jobs:?} were still queued after 10 minutes; see {}", self.state.display());
    }

    /// `ailla submit slurm PIPELINE --cpus-per-task 1` from `dir`: its stdout and the two job ids.
    fn submit(&self, dir: &Path, pipeline: &Path) -> (String, Vec<String>) {
        let output = ailla()
            .args(["submit", "slurm", pipeline.to_str().unwrap(), "--cpus-per-task", "1"])
            .env("SLURM_CONF", &self.conf)
            .current_dir(dir)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
        let jobs = stdout
            .lines()
            .filter_map(|l| l.strip_prefix("members job: ").or_else(|| l.strip_prefix("report job: ")))
            .map(String::from)
            .collect();
        (stdout, jobs)
    }
}

impl Drop for Slurm {
    fn drop(&mut self) {
        let _ = Command::new("bash").arg(Self::script()).arg("stop").arg(&self.state).status();
    }
}

/// The members run as a Slurm job array, one task each with one thread, and the report job after
/// them: every member's losses and weights are those of the same pipeline run whole here with one
/// thread per member, and the report is the same apart from its volatile fields (wall time, peak memory,
/// invocation, its own hash: `tests/common/mod.rs`). A resubmission
/// runs only the member that is missing and leaves the finished one as it is.
#[test]
fn a_sweep_submitted_to_slurm_matches_the_local_run_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let slurm = match Slurm::start(&dir.path().join("slurm")) {
        Ok(slurm) => slurm,
        Err(why) if std::env::var("AILLA_REQUIRE_SLURM").is_ok_and(|v| v == "1") => {
            panic!("AILLA_REQUIRE_SLURM=1 but the test Slurm did not start: {why}")
        }
        Err(why) => {
            eprintln!("skipped the Slurm test: the test Slurm did not start ({why}); `bash .ci/slurm install` as root installs it");
            return;
        }
    };
    let pipeline = common::split_runs::tiny_sweep(dir.path(), "sweep");
    let runs = dir.path().join("runs");
    // the same plan, output directory included: run whole, then moved aside
    let whole =
        ailla().args(["--threads", "1", "run", pipeline.to_str().unwrap()]).current_dir(dir.path()).output().unwrap();
    assert!(whole.status.success(), "{}", String::from_utf8_lossy(&whole.stderr));
    std::fs::rename(runs.join("sweep"), runs.join("whole")).unwrap();

    let (stdout, jobs) = slurm.submit(dir.path(), &pipeline);
    assert_eq!(jobs.len(), 2, "no job ids in {stdout}");
    assert!(stdout.contains("tasks 0-1"), "{stdout}");
    slurm.wait(&jobs);
    let run = runs.join("sweep");
    let logs = run.join("slurm/logs");
    let report_log = std::fs::read_to_string(logs.join("report.log")).unwrap_or_default();
    assert!(
        run.join("report.json").is_file(),
        "the report job wrote no report; its log:\n{report_log}\nmember 1's log:\n{}",
        std::fs::read_to_string(logs.join("member-1.log")).unwrap_or_default()
    );
    common::split_runs::assert_members_identical(&runs.join("whole"), &run, &["seed-1", "seed-2"]);
    common::split_runs::assert_reports_equal(&runs.join("whole"), &run);

    // a member lost (as if its node's disk went): the resubmission runs it alone
    let kept = std::fs::read(run.join("seed-1/metrics.jsonl")).unwrap();
    let kept_modified = std::fs::metadata(run.join("seed-1/model.safetensors")).unwrap().modified().unwrap();
    std::fs::remove_dir_all(run.join("seed-2")).unwrap();
    let (stdout, jobs) = slurm.submit(dir.path(), &pipeline);
    assert!(stdout.contains("submitted 1 of 2 members") && stdout.contains("tasks 1)"), "{stdout}");
    slurm.wait(&jobs);
    common::split_runs::assert_members_identical(&runs.join("whole"), &run, &["seed-1", "seed-2"]);
    assert_eq!(std::fs::read(run.join("seed-1/metrics.jsonl")).unwrap(), kept);
    assert_eq!(std::fs::metadata(run.join("seed-1/model.safetensors")).unwrap().modified().unwrap(), kept_modified);
    common::split_runs::assert_reports_equal(&runs.join("whole"), &run);

    let (stdout, jobs) = slurm.submit(dir.path(), &pipeline);
    assert!(jobs.is_empty() && stdout.contains("nothing was submitted"), "{stdout}");

    // a member that diverges: the report job still runs, lists it as failed and names it
    let diverging = dir.path().join("diverging.yaml");
    let optim = "{ min_lr_ratio: 1.0, warmup_steps: 1, beta1: 0.9, beta2: 0.95, eps: 1.0e-8, weight_decay: 0.0, \
                 grad_clip: 0.0";
    std::fs::write(
        &diverging,
        format!(
            "name: diverging\nmodel: {{ ctx_len: 16, d_model: 16, n_heads: 2, n_layers: 1, d_ff: 32 }}\n\
             train:\n  steps: 20\n  batch_size: 4\n  eval_every: 0\n\
             sweep:\n  train.optim:\n    - {optim}, learning_rate: 0.003 }}\n    - {optim}, learning_rate: 1.0e+30 }}\n\
             outputs:\n  dir: {}\n",
            runs.join("diverging").display()
        ),
    )
    .unwrap();
    let (_, jobs) = slurm.submit(dir.path(), &diverging);
    slurm.wait(&jobs);
    let logs = runs.join("diverging/slurm/logs");
    let report_log = std::fs::read_to_string(logs.join("report.log")).unwrap_or_default();
    assert!(report_log.contains("1 of 2 members did not finish: `optim-2` (index 1"), "{report_log}");
    let member_log = std::fs::read_to_string(logs.join("member-1.log")).unwrap_or_default();
    assert!(member_log.contains("training loss became NaN"), "{member_log}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(runs.join("diverging/report.json")).unwrap()).unwrap();
    assert_eq!(report["failed_members"], serde_json::json!(["optim-2"]));
}
