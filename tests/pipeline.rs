//! `ailla run` and `ailla validate` end to end.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn ailla() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ailla"))
}

#[test]
fn malformed_pipelines_each_get_their_message() {
    let dir = Path::new("tests/pipelines/bad");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 20, "only {} malformed pipelines", files.len());
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        // a relative path keeps the messages the same on every machine
        let problems = match ailla::pipeline::plan(&text, &path) {
            Ok(_) => panic!("{} was accepted", path.display()),
            Err(problems) => problems,
        };
        let rendered = ailla::pipeline::diagnostics::render(&path, &text, &problems);
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        insta::assert_snapshot!(name, rendered);
    }
}

#[test]
fn the_shipped_pipelines_validate() {
    for entry in std::fs::read_dir("pipelines").unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        if text.contains("shared/data") && !Path::new("../shared/data").is_dir() {
            eprintln!("skipped {}: ../shared/data is absent", path.display());
            continue;
        }
        let plan = ailla::pipeline::plan(&text, &path).unwrap_or_else(|p| {
            panic!("{}: {}", path.display(), p.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n"))
        });
        assert!(!plan.members.is_empty() || plan.domains.is_some());
    }
}

#[test]
fn sweeps_expand_to_named_members() {
    let text = "name: s\nsweep:\n  train.seed: [1, 2]\n  model.d_model: [32, 64]\n";
    let plan = ailla::pipeline::plan(text, Path::new("s.yaml")).unwrap();
    let names: Vec<&str> = plan.members.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["d_model-32_seed-1", "d_model-32_seed-2", "d_model-64_seed-1", "d_model-64_seed-2"]);
    assert_eq!(plan.members[3].config.seed, 2);
    assert_eq!(plan.members[3].config.model.d_model, 64);
    assert_eq!(ailla::pipeline::run::thread_split(2, 6), (2, 1));
    assert_eq!(ailla::pipeline::run::thread_split(16, 6), (6, 2));
    assert_eq!(ailla::pipeline::run::thread_split(2, 1), (1, 2));
}

fn pipeline(dir: &Path, name: &str, steps: usize) -> PathBuf {
    let path = dir.join(format!("{name}.yaml"));
    let text = format!(
        "name: {name}\nmodel: {{ ctx_len: 32, d_model: 32, n_heads: 4, n_layers: 2, d_ff: 64 }}\n\
         train:\n  steps: {steps}\n  batch_size: 8\n  eval_every: 0\n\
         locality:\n  rules: bundled\n  lambda:\n    schedule: {{ uniform: {{ low: 0.0, high: 1.0 }} }}\n\
         evaluation:\n  lambdas: [0.0, 1.0]\n\
         outputs:\n  dir: {}\n  checkpoint_every: 10\n",
        dir.join(name).display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_run_killed_without_warning_resumes_to_the_same_losses() {
    let dir = tempfile::tempdir().unwrap();
    let steps = 120;
    let straight = pipeline(dir.path(), "straight", steps);
    let output = ailla().args(["--threads", "2", "run", straight.to_str().unwrap()]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).contains("fidelity"));

    let killed = pipeline(dir.path(), "killed", steps);
    let mut child = ailla()
        .args(["--threads", "2", "run", killed.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let member = dir.path().join("killed").join("killed");
    let started = std::time::Instant::now();
    while !member.join("checkpoints/step-0000040.safetensors").is_file() {
        assert!(started.elapsed().as_secs() < 120, "no checkpoint appeared");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Command::new("kill").args(["-KILL", &child.id().to_string()]).status().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "the run finished before it could be killed");
    assert!(!member.join("summary.json").exists());

    let run_dir = dir.path().join("killed");
    let resumed = ailla().args(["--threads", "2", "run", "--resume", run_dir.to_str().unwrap()]).output().unwrap();
    assert!(resumed.status.success(), "{}", String::from_utf8_lossy(&resumed.stderr));
    let expected = common::train_losses(&dir.path().join("straight").join("straight"));
    assert_eq!(expected.len(), steps);
    assert_eq!(common::train_losses(&member), expected);
    assert_eq!(
        std::fs::read(member.join("model.safetensors")).unwrap(),
        std::fs::read(dir.path().join("straight/straight/model.safetensors")).unwrap()
    );
}

#[test]
fn a_diverging_member_fails_alone_and_an_unwritable_output_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nan.yaml");
    let optim =
        "{ min_lr_ratio: 1.0, warmup_steps: 1, beta1: 0.9, beta2: 0.95, eps: 1.0e-8, weight_decay: 0.0, grad_clip: 0.0";
    std::fs::write(
        &path,
        format!(
            "name: nan\nmodel: {{ ctx_len: 16, d_model: 16, n_heads: 2, n_layers: 1, d_ff: 32 }}\n\
             train:\n  steps: 40\n  batch_size: 4\n  eval_every: 0\n\
             sweep:\n  train.optim:\n    - {optim}, learning_rate: 0.003 }}\n    - {optim}, learning_rate: 1.0e+30 }}\n\
             outputs:\n  dir: {}\n",
            dir.path().join("run").display()
        ),
    )
    .unwrap();
    let output = ailla().args(["run", path.to_str().unwrap()]).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stdout.contains("optim-2  failed: training loss became NaN"), "{stdout}");
    assert!(stderr.contains("1 of 2 runs failed"), "{stderr}");
    assert!(dir.path().join("run/optim-1/summary.json").is_file(), "the healthy member did not finish");
    assert!(!stderr.contains("panicked"));

    let blocked = dir.path().join("blocked.yaml");
    let file_in_the_way = dir.path().join("a-file");
    std::fs::write(&file_in_the_way, "").unwrap();
    std::fs::write(&blocked, format!("name: blocked\noutputs: {{ dir: {} }}\n", file_in_the_way.join("run").display()))
        .unwrap();
    let output = ailla().args(["run", blocked.to_str().unwrap()]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("a-file") && !stderr.contains("panicked"), "{stderr}");
}

/// `run --resume DIR` continues in DIR from wherever it is given, from each member's newest intact
/// checkpoint (a damaged newest one is skipped, the good ones kept, never a restart from step 0); a
/// second plain `run` does not replace the run, and `report` does not rebuild from an unfinished one.
#[test]
fn a_resume_continues_in_its_own_directory_from_the_newest_intact_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relative.yaml");
    std::fs::write(
        &path,
        "name: relative\nmodel: { ctx_len: 16, d_model: 16, n_heads: 2, n_layers: 1, d_ff: 32 }\n\
         train:\n  steps: 40\n  batch_size: 4\n  eval_every: 0\n\
         locality:\n  rules: bundled\n  lambda:\n    schedule: { constant: { lambda: 0.5 } }\n\
         evaluation:\n  lambdas: [1.0]\n\
         outputs:\n  dir: runs/relative\n  checkpoint_every: 10\n",
    )
    .unwrap();
    let start = dir.path().join("start");
    std::fs::create_dir_all(&start).unwrap();
    let first = ailla().args(["--threads", "2", "run", "../relative.yaml"]).current_dir(&start).output().unwrap();
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let run_dir = start.join("runs/relative");
    let member = run_dir.join("relative");
    let model = std::fs::read(member.join("model.safetensors")).unwrap();

    let again = ailla().args(["run", "../relative.yaml"]).current_dir(&start).output().unwrap();
    assert_eq!(again.status.code(), Some(2));
    let message = String::from_utf8_lossy(&again.stderr);
    assert!(message.contains("holds a pipeline run") && message.contains("--force"), "{message}");

    // as after a crash during the member's last write: its newest unit damaged, no summary yet
    std::fs::write(member.join("checkpoints/step-0000040.safetensors"), b"damaged").unwrap();
    std::fs::remove_file(member.join("summary.json")).unwrap();
    let report_before = std::fs::read(run_dir.join("report.md")).unwrap();
    let report = ailla().args(["report", run_dir.to_str().unwrap()]).output().unwrap();
    assert_eq!(report.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&report.stderr).contains("has not finished"));
    assert_eq!(std::fs::read(run_dir.join("report.md")).unwrap(), report_before, "a degraded report replaced it");

    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let resumed = ailla()
        .args(["--threads", "2", "run", "--resume", run_dir.to_str().unwrap()])
        .current_dir(&elsewhere)
        .output()
        .unwrap();
    let message = String::from_utf8_lossy(&resumed.stderr);
    assert!(resumed.status.success(), "{message}");
    assert!(message.contains("skipped checkpoints/step-0000040"), "{message}");
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0, "the resume wrote under the current directory");
    assert_eq!(std::fs::read(member.join("model.safetensors")).unwrap(), model);
    assert!(member.join("checkpoints/step-0000030.safetensors").is_file(), "good checkpoints were removed");
}

/// A sweep is bounded before it is expanded: a few lines of YAML naming millions of members are one
/// error, at once, not gigabytes of plans.
#[test]
fn a_sweep_too_large_to_run_is_refused_before_it_is_expanded() {
    let values = |n: usize| format!("[{}]", (1..=n).map(|i| i.to_string()).collect::<Vec<_>>().join(", "));
    let text = format!(
        "name: huge\nsweep:\n  train.seed: {}\n  train.steps: {}\n  model.d_ff: {}\n  train.batch_size: {}\n",
        values(40),
        values(40),
        values(40),
        values(40)
    );
    let started = std::time::Instant::now();
    let Err(problems) = ailla::pipeline::plan(&text, Path::new("huge.yaml")) else {
        panic!("a huge sweep was accepted")
    };
    let rendered: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    assert!(rendered.iter().any(|p| p.contains("2560000 members") && p.contains("1000")), "{rendered:?}");
    // generous: expanding it would take minutes and gigabytes, refusing it takes microseconds
    assert!(started.elapsed().as_secs() < 5);
}

/// A run split across processes (`--member`, as a job array runs it) trains each member exactly as
/// the whole run does: the same losses and weights for the same thread count, and, closed with
/// `--report-only`, the same report apart from its volatile fields (wall time, peak memory, invocation,
/// its own hash: `tests/common/mod.rs`). Before every member is
/// done, `--report-only` names the missing one and fails; `--list-members` says which finished.
#[test]
fn members_run_as_separate_processes_match_the_whole_run() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = common::split_runs::tiny_sweep(dir.path(), "split");
    let path = pipeline.to_str().unwrap();
    let runs = dir.path().join("runs");
    let whole = ailla().args(["--threads", "1", "run", path]).output().unwrap();
    assert!(whole.status.success(), "{}", String::from_utf8_lossy(&whole.stderr));
    std::fs::rename(runs.join("split"), runs.join("whole")).unwrap();
    let run = runs.join("split");
    let run_dir = run.to_str().unwrap();

    let unknown = ailla().args(["run", path, "--member", "seed-3"]).output().unwrap();
    assert_eq!(unknown.status.code(), Some(2));
    let message = String::from_utf8_lossy(&unknown.stderr);
    assert!(message.contains("`seed-3` is neither") && message.contains("did you mean `seed-1`"), "{message}");
    let past = ailla().args(["run", path, "--member", "2"]).output().unwrap();
    assert!(String::from_utf8_lossy(&past.stderr).contains("numbered 0 to 1"));
    assert!(!run.exists(), "a refused --member wrote the run directory");

    // the first member from the pipeline file (which shares the run directory), the second by index
    let first = ailla().args(["--threads", "1", "run", path, "--member", "seed-1"]).output().unwrap();
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let listed = ailla().args(["run", "--resume", run_dir, "--list-members"]).output().unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(listed.contains("0  seed-1  finished") && listed.contains("1  seed-2  not started"), "{listed}");
    let early = ailla().args(["run", "--resume", run_dir, "--report-only"]).output().unwrap();
    assert_eq!(early.status.code(), Some(1));
    let message = String::from_utf8_lossy(&early.stderr);
    assert!(message.contains("1 of 2 members did not finish: `seed-2` (index 1, not started)"), "{message}");
    assert!(String::from_utf8_lossy(&early.stdout).contains("seed-2  failed: not started"));

    let second = ailla().args(["--threads", "1", "run", "--resume", run_dir, "--member", "1"]).output().unwrap();
    assert!(second.status.success(), "{}", String::from_utf8_lossy(&second.stderr));
    let closed = ailla().args(["--threads", "1", "run", "--resume", run_dir, "--report-only"]).output().unwrap();
    assert!(closed.status.success(), "{}", String::from_utf8_lossy(&closed.stderr));
    common::split_runs::assert_members_identical(&runs.join("whole"), &run, &["seed-1", "seed-2"]);
    common::split_runs::assert_reports_equal(&runs.join("whole"), &run);

    // another plan into the same directory is refused, not mixed in
    let other = std::fs::read_to_string(&pipeline).unwrap().replace("steps: 30", "steps: 20");
    std::fs::write(&pipeline, other).unwrap();
    let mixed = ailla().args(["run", path, "--member", "0"]).output().unwrap();
    assert_eq!(mixed.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&mixed.stderr).contains("holds a run of a different plan"));
}

/// `submit --dry-run` prints what would be submitted (one array task per member, each given its
/// threads; an Indexed Job for Kubernetes) and writes nothing.
#[test]
fn a_dry_run_submission_prints_the_scripts_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = common::split_runs::tiny_sweep(dir.path(), "dry");
    let path = pipeline.to_str().unwrap();
    let slurm = ailla()
        .args(["submit", "slurm", path, "--dry-run", "--cpus-per-task", "3", "--partition", "cpu", "--time", "10"])
        .output()
        .unwrap();
    let script = String::from_utf8_lossy(&slurm.stdout).into_owned();
    assert!(slurm.status.success(), "{}", String::from_utf8_lossy(&slurm.stderr));
    for line in [
        "#SBATCH --array=0-1",
        "#SBATCH --cpus-per-task=3",
        "#SBATCH --partition=cpu",
        "#SBATCH --time=10",
        "--threads 3 run --resume",
        "--member \"$SLURM_ARRAY_TASK_ID\"",
        "--report-only",
        "--dependency=afterany:",
    ] {
        assert!(script.contains(line), "no `{line}` in\n{script}");
    }
    let injected =
        ailla().args(["submit", "slurm", path, "--dry-run", "--partition", "cpu\n#SBATCH --x"]).output().unwrap();
    assert_eq!(injected.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&injected.stderr).contains("--partition"));

    let kubernetes = ailla()
        .args(["submit", "kubernetes", path, "--dry-run", "--image", "ailla:test", "--volume-claim", "work"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let manifest = String::from_utf8_lossy(&kubernetes.stdout).into_owned();
    assert!(kubernetes.status.success(), "{}", String::from_utf8_lossy(&kubernetes.stderr));
    for line in ["completionMode: Indexed", "completions: 2", "$JOB_COMPLETION_INDEX", "claimName: \"work\""] {
        assert!(manifest.contains(line), "no `{line}` in\n{manifest}");
    }
    assert!(!dir.path().join("runs").exists(), "a dry run wrote the run directory");
}
