//! The crash model (README, "What survives a kill"), proved by killing a run at every filesystem step.
//!
//! `AILLA_KILL_AFTER_FS_STEP=N` aborts the process right after its N-th filesystem step (see
//! `src/faults.rs`): a file written, synced or renamed, a directory synced, a link published, a log
//! line appended or cut, the lock taken. After each kill the run is continued the way a user would —
//! `train --resume` once it has a `train.json`, the same command again before that — and must end
//! bit-identical to a run that was never killed: the same model bytes, the same metrics log, the same
//! summary (less its wall time).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A model small enough that a run takes a fraction of a second, with two periodic checkpoints and
/// evaluations between them, so that every kind of write happens.
const CONFIG: &str = "\
corpus: { bundled: { seed: 7 } }
tokenizer: word
model: { ctx_len: 16, d_model: 16, n_heads: 2, n_layers: 1, d_ff: 32 }
steps: 10
batch_size: 4
optim: { learning_rate: 0.01, warmup_steps: 2 }
seed: 3
eval_every: 4
eval_tokens: 256
final_eval_tokens: 256
checkpoint_every: 4
";

const KILL: &str = "AILLA_KILL_AFTER_FS_STEP";

fn ailla(args: &[&str], kill_after: Option<usize>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ailla"));
    command.args(["--threads", "1"]).args(args).env_remove(KILL);
    if let Some(step) = kill_after {
        command.env(KILL, step.to_string());
    }
    command.output().expect("the ailla binary runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn fresh(config: &Path, out: &Path, kill_after: Option<usize>) -> Output {
    ailla(&["train", config.to_str().unwrap(), "--out", out.to_str().unwrap()], kill_after)
}

fn resume(out: &Path, kill_after: Option<usize>) -> Output {
    ailla(&["train", "--resume", "--out", out.to_str().unwrap()], kill_after)
}

/// Continues a killed run as a user would, and checks that it finishes.
fn finish(config: &Path, out: &Path, what: &str) {
    let output = if out.join("train.json").is_file() { resume(out, None) } else { fresh(config, out, None) };
    assert!(output.status.success(), "{what}: continuing failed: {}", stderr(&output));
}

/// What must be identical between two runs: the model, the log, and the summary less its wall time.
fn outcome(run: &Path) -> (Vec<u8>, String, serde_json::Value) {
    let mut summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    summary.as_object_mut().unwrap().remove("seconds");
    (
        std::fs::read(run.join("model.safetensors")).unwrap(),
        std::fs::read_to_string(run.join("metrics.jsonl")).unwrap(),
        summary,
    )
}

fn assert_killed(output: &Output, step: usize, what: &str) {
    assert!(output.status.code().is_none(), "{what}: not killed: {:?} {}", output.status, stderr(output));
    assert!(stderr(output).contains(&format!("killed after filesystem step {step} ")), "{what}: {}", stderr(output));
}

fn setup() -> (tempfile::TempDir, PathBuf, (Vec<u8>, String, serde_json::Value)) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tiny.yaml");
    std::fs::write(&config, CONFIG).unwrap();
    let reference = dir.path().join("reference");
    let output = fresh(&config, &reference, None);
    assert!(output.status.success(), "{}", stderr(&output));
    let expected = outcome(&reference);
    assert_eq!(expected.1.lines().filter(|l| l.contains("\"kind\":\"train\"")).count(), 10);
    (dir, config, expected)
}

/// Runs `start(dir, N)` in a fresh directory for N = 1, 2, … until a run is not killed. Each killed run
/// is continued as a user would and must end as the uninterrupted run did. Returns how many filesystem
/// steps the runs had.
fn kill_at_every_step(
    dir: &Path,
    config: &Path,
    expected: &(Vec<u8>, String, serde_json::Value),
    name: &str,
    start: impl Fn(&Path, usize) -> Output,
) -> usize {
    let mut step = 1;
    loop {
        let out = dir.join(format!("{name}-{step}"));
        let output = start(&out, step);
        if output.status.success() {
            return step - 1;
        }
        let what = format!("{name} after step {step}");
        assert_killed(&output, step, &what);
        finish(config, &out, &what);
        assert!(outcome(&out) == *expected, "{what}: the resumed run differs from the uninterrupted one");
        std::fs::remove_dir_all(&out).unwrap();
        step += 1;
    }
}

#[test]
fn a_run_killed_at_any_filesystem_step_resumes_to_the_uninterrupted_result() {
    let (dir, config, expected) = setup();
    let steps =
        kill_at_every_step(dir.path(), &config, &expected, "killed", |out, step| fresh(&config, out, Some(step)));
    // a run this size writes dozens of times; far fewer would mean the hook missed most writes
    assert!(steps >= 60, "only {steps} filesystem steps were seen");
}

#[test]
fn a_resume_killed_at_any_filesystem_step_resumes_again_to_the_same_result() {
    let (dir, config, expected) = setup();
    let paused = dir.path().join("paused");
    let output =
        ailla(&["train", config.to_str().unwrap(), "--out", paused.to_str().unwrap(), "--stop-after", "6"], None);
    assert!(output.status.success(), "{}", stderr(&output));
    let steps = kill_at_every_step(dir.path(), &config, &expected, "resume-killed", |out, step| {
        copy_dir(&paused, out);
        resume(out, Some(step))
    });
    assert!(steps >= 20, "only {steps} filesystem steps were seen");
}

/// Copies a run directory, hard links included as plain copies (what a backup would do).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
