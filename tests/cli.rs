//! End-to-end tests of the `ailla` binary in temporary directories.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn ailla(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ailla")).args(args).output().expect("the ailla binary runs")
}

/// `ailla FLAGS train` of a model small enough to train in a blink on the bundled corpus, then `extra`.
fn train_tiny(flags: &[&str], steps: &str, out: &Path, extra: &[&str]) -> Output {
    let mut args: Vec<&str> = flags.to_vec();
    args.extend_from_slice(&["train", "--corpus", "bundled", "--steps", steps, "--batch-size", "2", "--ctx-len", "8"]);
    args.extend_from_slice(&["--d-model", "8", "--layers", "1", "--heads", "2", "--out", out.to_str().unwrap()]);
    args.extend_from_slice(extra);
    ailla(&args)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// A small model on the bundled corpus: about a second of training on two cores.
const SMALL_CONFIG: &str = "\
corpus:
  bundled:
    seed: 2024
tokenizer: word
model:
  ctx_len: 32
  d_model: 48
  n_heads: 4
  n_layers: 2
  d_ff: 128
steps: 160
batch_size: 16
optim:
  learning_rate: 0.006
  min_lr_ratio: 0.1
  warmup_steps: 20
  beta1: 0.9
  beta2: 0.95
  eps: 1.0e-8
  weight_decay: 0.1
  grad_clip: 1.0
seed: 5
eval_every: 80
eval_tokens: 4096
checkpoint_every: 80
";

fn write_config(dir: &Path) -> PathBuf {
    let path = dir.join("small.yaml");
    std::fs::write(&path, SMALL_CONFIG).unwrap();
    path
}

fn train(config: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["--threads", "2", "train", config.to_str().unwrap(), "--out", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    let output = ailla(&args);
    assert!(output.status.success(), "train failed: {}", stderr(&output));
    output
}

#[test]
fn training_beats_the_unigram_entropy_and_repeats_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    train(&config, &a, &[]);
    train(&config, &b, &[]);

    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a.join("summary.json")).unwrap()).unwrap();
    let valid = summary["valid"]["mean_ce_nats"].as_f64().unwrap();
    let unigram = summary["unigram_entropy_nats"].as_f64().unwrap();
    assert!(valid < 0.5 * unigram, "validation CE {valid} is not well below the unigram entropy {unigram}");

    let losses = common::train_losses(&a);
    assert_eq!(losses.len(), 160);
    assert_eq!(losses, common::train_losses(&b), "same seed and threads must give identical losses");
    assert_eq!(
        std::fs::read(a.join("model.safetensors")).unwrap(),
        std::fs::read(b.join("model.safetensors")).unwrap()
    );
    assert!(a.join("checkpoints/step-0000080.safetensors").is_file());
}

/// The README's promise: products are split into blocks chosen from the shapes alone and reductions run
/// in fixed orders, so the thread count changes no bit (on one machine; `ailla env` says which).
#[test]
fn training_is_bit_identical_across_thread_counts() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("short.yaml");
    std::fs::write(&config, SMALL_CONFIG.replace("steps: 160", "steps: 40")).unwrap();
    let runs: Vec<PathBuf> = ["1", "2", "3"]
        .iter()
        .map(|threads| {
            let out = dir.path().join(format!("threads-{threads}"));
            let output =
                ailla(&["--threads", threads, "train", config.to_str().unwrap(), "--out", out.to_str().unwrap()]);
            assert!(output.status.success(), "{}", stderr(&output));
            out
        })
        .collect();
    for other in &runs[1..] {
        common::assert_same_training(&runs[0], other, &other.display().to_string());
    }
}

/// The README's other promise: ailla's element-wise kernels give the same bits on every instruction
/// set. `AILLA_SIMD` runs the narrower paths on this CPU; with OpenBLAS held to one kernel family and
/// every product through it, training gives the same losses and weights on each.
#[test]
fn every_instruction_set_trains_to_the_same_bits() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("short.yaml");
    std::fs::write(&config, SMALL_CONFIG.replace("steps: 160", "steps: 20")).unwrap();
    let run = |simd: Option<&str>| {
        let out = dir.path().join(format!("simd-{}", simd.unwrap_or("native")));
        let mut command = Command::new(env!("CARGO_BIN_EXE_ailla"));
        command
            .args(["--threads", "2", "train", config.to_str().unwrap(), "--out", out.to_str().unwrap()])
            .env("AILLA_PRODUCTS", "blas")
            .env("OPENBLAS_CORETYPE", "Prescott");
        if let Some(simd) = simd {
            command.env("AILLA_SIMD", simd);
        }
        let output = command.output().unwrap();
        assert!(output.status.success(), "{}", stderr(&output));
        out
    };
    let native = run(None);
    for simd in ["avx2", "baseline"] {
        common::assert_same_training(&native, &run(Some(simd)), &format!("AILLA_SIMD={simd}"));
    }
}

/// `ailla env` with one environment variable set.
fn env_with(variable: &str, value: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ailla")).args(["env"]).env(variable, value).output().unwrap()
}

/// A bad value of an environment variable is refused before any work (exit 2), naming both.
fn assert_refused_by_env(variable: &str, value: &str) {
    let refused = env_with(variable, value);
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    let message = stderr(&refused);
    assert!(message.contains(variable) && message.contains(&format!("{value:?}")), "{message}");
}

/// The line of `ailla env`'s output that starts with `start` (empty when none does).
fn env_line(output: &Output, start: &str) -> String {
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.lines().find(|line| line.starts_with(start)).map(str::to_owned).unwrap_or_default()
}

/// `AILLA_SIMD` is checked before any work, and `ailla env` says what it capped.
#[test]
fn the_instruction_set_cap_is_checked_and_shown() {
    let with = |value: &str| env_with("AILLA_SIMD", value);
    assert_refused_by_env("AILLA_SIMD", "avx1024");
    let baseline = with("baseline");
    assert!(baseline.status.success(), "{}", stderr(&baseline));
    assert!(env_line(&baseline, "kernels").contains("baseline"), "{}", env_line(&baseline, "kernels"));
    // no direct AVX-512 product under a cap below AVX-512
    assert!(env_line(&baseline, "products").contains("BLAS for every product"), "{}", env_line(&baseline, "products"));
    let detected = ailla::engine::simd::detected_simd();
    if detected > ailla::engine::simd::Simd::Baseline {
        assert!(
            env_line(&baseline, "kernels").contains("capped by AILLA_SIMD=baseline"),
            "{}",
            env_line(&baseline, "kernels")
        );
        // OpenBLAS is held below the cap too, unless the user named its kernel
        assert!(env_line(&baseline, "BLAS").contains("Prescott"), "{}", env_line(&baseline, "BLAS"));
    }
    let uncapped = with("avx512");
    assert!(!env_line(&uncapped, "kernels").contains("capped"), "{}", env_line(&uncapped, "kernels"));
}

#[test]
fn a_paused_and_resumed_run_equals_an_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let (straight, split) = (dir.path().join("straight"), dir.path().join("split"));
    train(&config, &straight, &[]);
    let paused = train(&config, &split, &["--stop-after", "70"]);
    assert!(stdout(&paused).contains("paused"), "{}", stdout(&paused));
    assert_eq!(common::train_losses(&split).len(), 70);
    let resumed = ailla(&["--threads", "2", "train", "--resume", "--out", split.to_str().unwrap()]);
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    assert_eq!(common::train_losses(&split), common::train_losses(&straight));
    assert_eq!(
        std::fs::read(split.join("model.safetensors")).unwrap(),
        std::fs::read(straight.join("model.safetensors")).unwrap()
    );
    // the whole log, evaluations included, is the uninterrupted run's; resuming a finished run (twice)
    // adds nothing to it
    let log = |run: &Path| std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert_eq!(log(&split), log(&straight));
    for _ in 0..2 {
        let again = ailla(&["--threads", "2", "train", "--resume", "--out", split.to_str().unwrap()]);
        assert!(again.status.success(), "{}", stderr(&again));
    }
    assert_eq!(log(&split), log(&straight));
    let summary = |run: &Path| {
        let mut value: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
        value.as_object_mut().unwrap().remove("seconds");
        value
    };
    assert_eq!(summary(&split), summary(&straight), "the summary of a resumed run is not the whole run's");
}

/// Ctrl-C, and the SIGTERM and SIGHUP that a scheduler or a closed terminal sends, save the finished
/// steps and stop; the run resumes from there.
#[test]
fn ctrl_c_saves_the_finished_steps_and_the_run_resumes() {
    for signal in ["-INT", "-TERM", "-HUP"] {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("long.yaml");
        std::fs::write(&config, SMALL_CONFIG.replace("steps: 160", "steps: 100000")).unwrap();
        let out = dir.path().join("run");
        let child = Command::new(env!("CARGO_BIN_EXE_ailla"))
            .args(["--threads", "2", "train", config.to_str().unwrap(), "--out", out.to_str().unwrap()])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // wait until training is under way, then interrupt as a terminal's Ctrl-C would
        let metrics = out.join("metrics.jsonl");
        let started = std::time::Instant::now();
        while std::fs::read_to_string(&metrics).map(|m| m.lines().count()).unwrap_or(0) < 5 {
            assert!(started.elapsed().as_secs() < 60, "training did not start");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let kill = Command::new("kill").args([signal, &child.id().to_string()]).status().unwrap();
        assert!(kill.success());
        let output = child.wait_with_output().unwrap();
        assert_eq!(output.status.code(), Some(1), "{signal}: {}", stderr(&output));
        assert!(stderr(&output).contains("--resume"), "{signal}: {}", stderr(&output));
        let saved = ailla::checkpoint::load(&out.join("model.safetensors")).unwrap();
        assert!(saved.step >= 5, "{signal}");
        assert_eq!(common::train_losses(&out).len(), saved.step, "{signal}");
    }
}

#[test]
fn eval_matches_the_pytorch_golden_value() {
    // char-tiny.torch.json was written by `benches/torch_reference.py eval` on the same checkpoint and ids
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("char-tiny.torch.json")).unwrap()).unwrap();
    let ckpt = fixture("char-tiny.safetensors");
    let ids = fixture("char-tiny.ids");
    let output = ailla(&["eval", ckpt.to_str().unwrap(), "--ids", ids.to_str().unwrap(), "--json"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let ours: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(ours["tokens"], expected["tokens"]);
    let (a, b) = (ours["language_model"]["mean_ce_nats"].as_f64().unwrap(), expected["mean_ce_nats"].as_f64().unwrap());
    // Two engines, two summation orders, f32 throughout: 1e-4 nats on a mean over 299 tokens is 100
    // times the 1e-6 measured on this fixture (README, "Checkpoints"), so it holds on any CPU.
    assert!((a - b).abs() < 1e-4, "ailla {a} vs PyTorch {b}");
}

#[test]
fn eval_of_a_text_equals_eval_of_its_token_ids() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt_path = fixture("char-tiny.safetensors");
    let ckpt = ailla::checkpoint::load(&ckpt_path).unwrap();
    let text_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/pharmacy-sample.txt");
    let text = std::fs::read_to_string(&text_path).unwrap();
    let ids: Vec<String> = ckpt.vocabulary.encode(&text).iter().map(u32::to_string).collect();
    let ids_path = dir.path().join("sample.ids");
    std::fs::write(&ids_path, ids.join(" ")).unwrap();
    let by_text = ailla(&["eval", ckpt_path.to_str().unwrap(), "--text", text_path.to_str().unwrap()]);
    let by_ids = ailla(&["eval", ckpt_path.to_str().unwrap(), "--ids", ids_path.to_str().unwrap()]);
    assert!(by_text.status.success() && by_ids.status.success());
    assert_eq!(stdout(&by_text), stdout(&by_ids));
    assert!(stdout(&by_text).contains("mean_ce_nats"));
}

fn assert_clean_failure(output: &Output, code: i32, needles: &[&str]) {
    let err = stderr(output);
    assert_eq!(output.status.code(), Some(code), "{err}");
    assert!(!err.contains("panicked"), "panic on user input: {err}");
    for needle in needles {
        assert!(err.contains(needle), "`{needle}` missing from: {err}");
    }
}

#[test]
fn bad_input_gets_a_clear_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    let truncated = d.join("truncated.safetensors");
    let bytes = std::fs::read(fixture("char-tiny.safetensors")).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let ids = fixture("char-tiny.ids");
    let out = ailla(&["eval", truncated.to_str().unwrap(), "--ids", ids.to_str().unwrap()]);
    assert_clean_failure(&out, 2, &["truncated.safetensors", "not a usable ailla checkpoint"]);

    let bad_ids = d.join("bad.ids");
    std::fs::write(&bad_ids, "1 2 3\n4  x7 5\n").unwrap();
    let ckpt = fixture("char-tiny.safetensors");
    let out = ailla(&["eval", ckpt.to_str().unwrap(), "--ids", bad_ids.to_str().unwrap()]);
    assert_clean_failure(&out, 2, &["bad.ids", "line 2, column 4", "`x7`"]);

    let out =
        ailla(&["train", "--corpus", d.join("nowhere").to_str().unwrap(), "--out", d.join("r").to_str().unwrap()]);
    assert_clean_failure(&out, 2, &["nowhere", "not a directory"]);

    let corpus = d.join("corpus");
    std::fs::create_dir(&corpus).unwrap();
    for (name, text) in [("train.txt", "a b c\n"), ("valid.txt", ""), ("test.txt", "a\n")] {
        std::fs::write(corpus.join(name), text).unwrap();
    }
    let out = ailla(&["train", "--corpus", corpus.to_str().unwrap(), "--out", d.join("r").to_str().unwrap()]);
    assert_clean_failure(&out, 2, &["valid.txt", "empty"]);

    let yaml = d.join("typo.yaml");
    std::fs::write(&yaml, "steps: 10\nbatch_sise: 4\n").unwrap();
    let out = ailla(&["train", yaml.to_str().unwrap(), "--out", d.join("r").to_str().unwrap()]);
    assert_clean_failure(&out, 2, &["typo.yaml", "batch_sise", "2"]);

    let out = ailla(&["--threads", "0", "bench"]);
    assert_clean_failure(&out, 2, &["--threads"]);
}

#[test]
fn a_closed_stdout_is_not_an_error() {
    // the reader goes away before ailla writes its result, as with `ailla eval … | head -0`
    let ckpt = fixture("char-tiny.safetensors");
    let ids = fixture("char-tiny.ids");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ailla"))
        .args(["eval", ckpt.to_str().unwrap(), "--ids", ids.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(stderr(&output).is_empty(), "{}", stderr(&output));
}

/// Runs the PyTorch reference live when a Python with torch is at hand (`AILLA_PYTHON`, else
/// `python3`); the committed golden value above covers machines without it.
#[test]
fn eval_matches_pytorch_live_when_available() {
    let python = std::env::var("AILLA_PYTHON").unwrap_or_else(|_| "python3".into());
    let has_torch = Command::new(&python).args(["-c", "import torch"]).output().is_ok_and(|o| o.status.success());
    if !has_torch {
        eprintln!("skipped: no PyTorch in `{python}` (set AILLA_PYTHON to a Python with torch to run this check)");
        return;
    }
    let ckpt = fixture("char-tiny.safetensors");
    let ids = fixture("char-tiny.ids");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/torch_reference.py");
    let torch = Command::new(&python)
        .args([script.to_str().unwrap(), "eval", ckpt.to_str().unwrap(), "--ids", ids.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(torch.status.success(), "{}", stderr(&torch));
    let theirs: serde_json::Value = serde_json::from_str(stdout(&torch).trim()).unwrap();
    let ours = ailla(&["eval", ckpt.to_str().unwrap(), "--ids", ids.to_str().unwrap(), "--json"]);
    let ours: serde_json::Value = serde_json::from_str(&stdout(&ours)).unwrap();
    let (a, b) = (ours["language_model"]["mean_ce_nats"].as_f64().unwrap(), theirs["mean_ce_nats"].as_f64().unwrap());
    assert!((a - b).abs() < 1e-4, "ailla {a} vs PyTorch {b}");
}

#[test]
fn a_fresh_run_in_an_old_run_directory_leaves_nothing_of_the_old_run_to_resume_from() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let out = dir.path().join("run");
    train(&config, &out, &[]);
    assert!(out.join("checkpoints/step-0000080.safetensors").is_file());
    // the same directory, a shorter run that stops before its first checkpoint
    let short = dir.path().join("short.yaml");
    std::fs::write(&short, SMALL_CONFIG.replace("steps: 160", "steps: 60")).unwrap();
    // a finished run is not replaced by accident
    let refused = ailla(&["train", short.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    assert!(stderr(&refused).contains("holds a run") && stderr(&refused).contains("--force"), "{}", stderr(&refused));
    train(&short, &out, &["--stop-after", "30", "--force"]);
    assert!(!out.join("checkpoints/step-0000080.safetensors").exists(), "the old run's checkpoints survived");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["steps_done"], 30, "the summary is not the paused run's");
    let resumed = ailla(&["--threads", "2", "train", "--resume", "--out", out.to_str().unwrap()]);
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    assert_eq!(common::train_losses(&out).len(), 60);
}

/// `ailla train … 2>/dev/full` and `2>&1 | head -1`: a failing stderr loses messages, not the run.
#[test]
fn a_failing_stderr_does_not_stop_training() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("short.yaml");
    std::fs::write(&config, SMALL_CONFIG.replace("steps: 160", "steps: 20")).unwrap();
    for (index, full) in [true, false].into_iter().enumerate() {
        let out = dir.path().join(format!("run-{index}"));
        let mut command = Command::new(env!("CARGO_BIN_EXE_ailla"));
        command.args(["--threads", "2", "train", config.to_str().unwrap(), "--out", out.to_str().unwrap()]);
        let status = if full {
            let Ok(dev_full) = std::fs::OpenOptions::new().write(true).open("/dev/full") else {
                eprintln!("skipped the /dev/full case: no /dev/full on this machine");
                continue;
            };
            command.stderr(dev_full).stdout(std::process::Stdio::null()).status().unwrap()
        } else {
            let mut child =
                command.stderr(std::process::Stdio::piped()).stdout(std::process::Stdio::null()).spawn().unwrap();
            drop(child.stderr.take());
            child.wait().unwrap()
        };
        assert_eq!(status.code(), Some(0), "stderr {}", if full { "full" } else { "closed" });
        assert!(out.join("model.safetensors").is_file());
        assert_eq!(common::train_losses(&out).len(), 20);
    }
}

/// A resumed run keeps the rules stored in its checkpoint: editing the rules file during a pause
/// changes nothing (and the resume says so, with both hashes).
#[test]
fn a_resumed_run_keeps_its_stored_rules_when_the_file_is_edited() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("run.rules");
    let original = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/default.rules")).unwrap();
    std::fs::write(&rules, &original).unwrap();
    let config = dir.path().join("dial.yaml");
    let text = SMALL_CONFIG.replace("steps: 160", "steps: 60")
        + "locality:\n  rules: { file: run.rules }\n  schedule: { constant: { lambda: 0.5 } }\n  certificate_batches: 0\n";
    std::fs::write(&config, text).unwrap();
    let (straight, split) = (dir.path().join("straight"), dir.path().join("split"));
    train(&config, &straight, &[]);
    train(&config, &split, &["--stop-after", "30"]);
    // the expert edits the file: a rule's window and a block's members change
    std::fs::write(&rules, original.replace("within 24", "within 3").replace("mg, units", "mg")).unwrap();
    let resumed = ailla(&["--threads", "2", "train", "--resume", "--out", split.to_str().unwrap()]);
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    assert!(
        stderr(&resumed).contains("rules have changed") && stderr(&resumed).contains("sha256"),
        "{}",
        stderr(&resumed)
    );
    assert_eq!(common::train_losses(&straight), common::train_losses(&split));
    assert_eq!(
        std::fs::read(straight.join("model.safetensors")).unwrap(),
        std::fs::read(split.join("model.safetensors")).unwrap()
    );
}

/// Inputs are checked before anything is removed or allocated: a fresh `train` with a missing corpus
/// leaves the finished run in its directory, and absurd shapes and optimizer settings are refused by
/// name before any allocation.
#[test]
fn bad_settings_are_refused_before_anything_is_removed_or_allocated() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let out = dir.path().join("run");
    train(&config, &out, &["--steps", "20"]);
    let model_before = std::fs::read(out.join("model.safetensors")).unwrap();
    // --force replaces a run, but only once every input has been checked
    let refused = ailla(&["train", "--corpus", "/nonexistent", "--out", out.to_str().unwrap(), "--force"]);
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    assert_eq!(std::fs::read(out.join("model.safetensors")).unwrap(), model_before, "the finished run was removed");
    assert!(out.join("summary.json").is_file());
    for (setting, field) in [
        ("model: { d_model: 1000000000, n_heads: 4 }", "model"),
        ("model: { ctx_len: 1000000000 }", "model"),
        ("batch_size: 1000000000", "model"),
        ("steps: 1000000000000", "steps"),
        ("optim: { eps: -1 }", "optim.eps"),
        ("optim: { weight_decay: -5 }", "optim.weight_decay"),
        ("optim: { min_lr_ratio: 5 }", "optim.min_lr_ratio"),
    ] {
        let path = dir.path().join("absurd.yaml");
        std::fs::write(&path, format!("corpus: {{ bundled: {{ seed: 2024 }} }}\n{setting}\n")).unwrap();
        let output = ailla(&["train", path.to_str().unwrap(), "--out", out.to_str().unwrap(), "--force"]);
        assert_eq!(output.status.code(), Some(2), "{setting}: {}", stderr(&output));
        assert!(stderr(&output).contains(&format!("`{field}`")), "{setting}: {}", stderr(&output));
        assert_eq!(std::fs::read(out.join("model.safetensors")).unwrap(), model_before, "{setting}");
    }
}

/// A NaN is not a result: `eval` of a checkpoint whose finite weights overflow (so the loss is NaN or
/// infinite) exits 3 and prints no figures.
#[test]
fn eval_of_a_model_that_gives_nan_is_an_error_not_a_result() {
    let dir = tempfile::tempdir().unwrap();
    let mut ckpt = ailla::checkpoint::load(&fixture("char-tiny.safetensors")).unwrap();
    ckpt.model.params.ln_f_weight.fill(f32::MAX);
    let path = dir.path().join("nan.safetensors");
    ailla::checkpoint::save(&path, &ckpt).unwrap();
    let ids = fixture("char-tiny.ids");
    let output = ailla(&["eval", path.to_str().unwrap(), "--ids", ids.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    assert!(stdout(&output).is_empty() && stderr(&output).contains("NaN"), "{}", stderr(&output));
}

/// A directory that is not a run is never written into, even with --force: a training pointed at a
/// project folder by mistake leaves its files alone.
#[test]
fn a_directory_that_is_not_a_run_is_never_written_into() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let project = dir.path().join("project");
    std::fs::create_dir_all(project.join("checkpoints")).unwrap();
    std::fs::write(project.join("model.py"), "print('mine')\n").unwrap();
    std::fs::write(project.join("checkpoints/notes.txt"), "mine\n").unwrap();
    for extra in [&[][..], &["--force"][..]] {
        let mut args = vec!["train", config.to_str().unwrap(), "--out", project.to_str().unwrap()];
        args.extend_from_slice(extra);
        let output = ailla(&args);
        assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
        assert!(stderr(&output).contains("not an ailla run directory"), "{}", stderr(&output));
    }
    assert_eq!(std::fs::read_to_string(project.join("model.py")).unwrap(), "print('mine')\n");
    assert!(project.join("checkpoints/notes.txt").is_file() && !project.join("train.json").exists());
}

/// Two trainings into one directory: the second is refused while the first holds the lock, and the
/// lock a killed run leaves behind does not block the resume.
#[test]
fn a_busy_run_directory_is_refused_and_a_dead_runs_lock_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("long.yaml");
    std::fs::write(&config, SMALL_CONFIG.replace("steps: 160", "steps: 100000")).unwrap();
    let out = dir.path().join("run");
    let mut first = Command::new(env!("CARGO_BIN_EXE_ailla"))
        .args(["--threads", "1", "train", config.to_str().unwrap(), "--out", out.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while !out.join("metrics.jsonl").is_file() {
        assert!(started.elapsed().as_secs() < 60, "the first training never started");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    for args in [
        vec!["train", "--resume", "--out", out.to_str().unwrap()],
        vec!["train", config.to_str().unwrap(), "--out", out.to_str().unwrap(), "--force"],
    ] {
        let second = ailla(&args);
        assert_eq!(second.status.code(), Some(2), "{}", stderr(&second));
        assert!(stderr(&second).contains(&format!("in use by process {}", first.id())), "{}", stderr(&second));
    }
    Command::new("kill").args(["-KILL", &first.id().to_string()]).status().unwrap();
    first.wait().unwrap();
    assert!(out.join(".ailla.lock").is_file(), "a killed run leaves its lock");
    let resumed = ailla(&["train", "--resume", "--out", out.to_str().unwrap(), "--stop-after", "1"]);
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    assert!(stderr(&resumed).contains("stale lock"), "{}", stderr(&resumed));
    assert!(!out.join(".ailla.lock").exists(), "the lock outlived its run");
}

/// A resume continues a run with the settings it started with: an edited train.json is an error naming
/// it, and the command line cannot change them either.
#[test]
fn a_resume_refuses_changed_settings() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let out = dir.path().join("run");
    train(&config, &out, &["--steps", "60", "--stop-after", "30"]);
    let flags = ailla(&["train", "--resume", "--out", out.to_str().unwrap(), "--steps", "90"]);
    assert_eq!(flags.status.code(), Some(2), "{}", stderr(&flags));
    assert!(stderr(&flags).contains("--steps"), "{}", stderr(&flags));
    let path = out.join("train.json");
    let original = std::fs::read_to_string(&path).unwrap();
    for (from, to) in [("\"batch_size\": 16", "\"batch_size\": 8"), ("\"d_model\": 48", "\"d_model\": 64")] {
        assert!(original.contains(from), "{from} not in train.json");
        std::fs::write(&path, original.replace(from, to)).unwrap();
        let edited = ailla(&["train", "--resume", "--out", out.to_str().unwrap()]);
        assert_eq!(edited.status.code(), Some(2), "{to}: {}", stderr(&edited));
        assert!(stderr(&edited).contains("train.json") && stderr(&edited).contains("settings"), "{}", stderr(&edited));
    }
    std::fs::write(&path, original).unwrap();
    let resumed = ailla(&["train", "--resume", "--out", out.to_str().unwrap()]);
    assert!(resumed.status.success(), "{}", stderr(&resumed));
}

/// The metrics log is kept exact: a damaged line before the resume point is an error naming the line,
/// not a silent truncation of everything before it.
#[test]
fn a_damaged_metrics_log_is_an_error_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let out = dir.path().join("run");
    train(&config, &out, &["--steps", "40", "--stop-after", "20"]);
    let path = out.join("metrics.jsonl");
    let mut bytes = std::fs::read(&path).unwrap();
    let third = bytes.iter().enumerate().filter(|(_, &b)| b == b'\n').nth(1).map(|(i, _)| i + 3).unwrap();
    bytes[third] = 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let resumed = ailla(&["train", "--resume", "--out", out.to_str().unwrap()]);
    assert_eq!(resumed.status.code(), Some(2), "{}", stderr(&resumed));
    assert!(stderr(&resumed).contains("metrics.jsonl") && stderr(&resumed).contains("line 3"), "{}", stderr(&resumed));
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "the damaged log was changed");
}

/// A checkpoint whose metadata declares a shape its file cannot hold is refused before anything is
/// allocated for it (it used to abort with an 8 TB allocation).
#[test]
fn a_checkpoint_declaring_an_absurd_shape_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixture("char-tiny.safetensors")).unwrap();
    let length = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + length]).unwrap();
    let mut metadata: serde_json::Value =
        serde_json::from_str(header["__metadata__"]["ailla"].as_str().unwrap()).unwrap();
    let ids = fixture("char-tiny.ids");
    for (field, value) in [("ctx_len", 1_000_000_000_000u64), ("d_model", 1 << 40), ("d_ff", 1 << 62)] {
        let original = metadata["config"][field].clone();
        metadata["config"][field] = value.into();
        if field == "d_model" {
            metadata["config"]["n_heads"] = 1.into();
        }
        header["__metadata__"]["ailla"] = metadata.to_string().into();
        let text = header.to_string();
        let mut crafted = (text.len() as u64).to_le_bytes().to_vec();
        crafted.extend_from_slice(text.as_bytes());
        crafted.extend_from_slice(&bytes[8 + length..]);
        let path = dir.path().join(format!("{field}.safetensors"));
        std::fs::write(&path, crafted).unwrap();
        let output = ailla(&["eval", path.to_str().unwrap(), "--ids", ids.to_str().unwrap()]);
        assert_eq!(output.status.code(), Some(2), "{field}: {}", stderr(&output));
        assert!(stderr(&output).contains("needs more weights"), "{field}: {}", stderr(&output));
        metadata["config"][field] = original;
    }
}

#[test]
fn threads_beyond_a_sane_multiple_of_the_cores_are_refused() {
    let output = ailla(&["--threads", "2000", "env"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(stderr(&output).contains("`--threads`") && stderr(&output).contains("per core"), "{}", stderr(&output));
}

/// `AILLA_PRODUCTS` chooses who computes the products: `blas` turns ailla's own kernel off (and `ailla
/// env` says so), and any other value than `direct` or `blas` is refused before any work, naming it.
#[test]
fn the_products_switch_is_checked_and_shown() {
    let with = |value: &str| env_with("AILLA_PRODUCTS", value);
    assert_refused_by_env("AILLA_PRODUCTS", "fast");
    let blas = with("blas");
    assert!(blas.status.success(), "{}", stderr(&blas));
    let products = |output: &Output| env_line(output, "products");
    assert!(products(&blas).contains("BLAS for every product"), "{}", products(&blas));
    let direct = with("direct");
    assert!(direct.status.success(), "{}", stderr(&direct));
    // the default names the kernel where this CPU has one: AVX-512's for every row product, AVX2's
    // for the logit tiles only
    let kernel = ailla::engine::direct_gemm::available_kernels().into_iter().next();
    match kernel.or_else(ailla::engine::direct_gemm::avx2_kernel_on_this_cpu) {
        Some(kernel) => assert!(products(&direct).contains(kernel.name), "{}", products(&direct)),
        None => assert!(products(&direct).contains("needs AVX-512"), "{}", products(&direct)),
    }
    // capped at AVX2, only the logit tiles run ailla's kernel
    if ailla::engine::direct_gemm::avx2_kernel_on_this_cpu().is_some() {
        let capped = env_with("AILLA_SIMD", "avx2");
        assert!(products(&capped).contains("avx2 6x16 kernel for the output layer"), "{}", products(&capped));
    }
}

/// Messages name what the user gave and what to do: the flag rather than the field behind it, the
/// field rather than a sweep that is not there, and what a directory is when it is not what a verb reads.
#[test]
fn messages_name_what_is_wrong_where_the_user_gave_it() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = fixture("char-tiny.safetensors");
    let ids = fixture("char-tiny.ids");
    let margin = ailla(&[
        "eval",
        checkpoint.to_str().unwrap(),
        "--ids",
        ids.to_str().unwrap(),
        "--lambda",
        "1",
        "--rules",
        "bundled",
        "--margin",
        "nan",
    ]);
    assert!(stderr(&margin).contains("`--margin`"), "{}", stderr(&margin));

    let pipeline = dir.path().join("inf.yaml");
    std::fs::write(&pipeline, "name: inf\ntrain:\n  learning_rate: .inf\n").unwrap();
    let validated = ailla(&["validate", pipeline.to_str().unwrap()]);
    assert_eq!(validated.status.code(), Some(2), "{}", stderr(&validated));
    assert!(stderr(&validated).contains("learning_rate"), "{}", stderr(&validated));
    assert!(!stderr(&validated).contains("sweep"), "{}", stderr(&validated));

    // a validation split shorter than one context is blamed on its own file
    let corpus = dir.path().join("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    let long: String = (0..400).map(|i| format!("w{} ", i % 17)).collect();
    for (name, text) in [("train.txt", long.as_str()), ("valid.txt", "w1 w2 w3\n"), ("test.txt", long.as_str())] {
        std::fs::write(corpus.join(name), text).unwrap();
    }
    let short =
        ailla(&["train", "--corpus", corpus.to_str().unwrap(), "--out", dir.path().join("short").to_str().unwrap()]);
    assert_eq!(short.status.code(), Some(2), "{}", stderr(&short));
    assert!(stderr(&short).contains("valid.txt") && !stderr(&short).contains("train.txt"), "{}", stderr(&short));

    let config = write_config(dir.path());
    let out = dir.path().join("plain");
    train(&config, &out, &["--steps", "10"]);
    let report = ailla(&["report", out.to_str().unwrap()]);
    assert_eq!(report.status.code(), Some(2), "{}", stderr(&report));
    assert!(stderr(&report).contains("not a pipeline run directory") && stderr(&report).contains("train"));
}

/// Every verb's flags and arguments, and what its `--help` lacks: a description for each, and an
/// example and the exit codes at its end.
fn undocumented() -> Vec<String> {
    use clap::CommandFactory;
    let mut missing = Vec::new();
    let root = ailla::cli::Cli::command();
    for verb in root.get_subcommands() {
        for arg in verb.get_arguments() {
            let id = arg.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            if arg.get_help().is_none_or(|h| h.to_string().trim().is_empty()) {
                missing.push(format!("ailla {} {id}: no description", verb.get_name()));
            }
        }
        let after = verb.get_after_help().map(|h| h.to_string()).unwrap_or_default();
        if !after.contains("Example") {
            missing.push(format!("ailla {}: no example at the end of its help", verb.get_name()));
        }
        if !after.contains("Exit status") {
            missing.push(format!("ailla {}: no exit status at the end of its help", verb.get_name()));
        }
    }
    missing
}

#[test]
fn every_verbs_help_documents_every_flag_with_an_example_and_the_exit_status() {
    let missing = undocumented();
    assert!(missing.is_empty(), "{} gaps:\n{}", missing.len(), missing.join("\n"));
}

#[test]
fn the_files_that_help_examples_name_are_shipped() {
    use clap::CommandFactory;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut missing = Vec::new();
    for verb in ailla::cli::Cli::command().get_subcommands() {
        let after = verb.get_after_help().map(|h| h.to_string()).unwrap_or_default();
        for word in after.split_whitespace() {
            let word = word.trim_matches(|c: char| c == '"' || c == ',');
            let shipped = ["rules/", "pipelines/"].iter().any(|dir| word.starts_with(dir));
            if shipped && !root.join(word).exists() {
                missing.push(format!("ailla {}: {word}", verb.get_name()));
            }
        }
    }
    assert!(missing.is_empty(), "help examples name files that are not shipped: {missing:?}");
}

#[test]
fn completions_and_the_manual_name_every_verb_and_flag() {
    use clap::CommandFactory;
    let bash = ailla(&["completions", "bash"]);
    assert!(bash.status.success(), "{}", String::from_utf8_lossy(&bash.stderr));
    let bash = String::from_utf8_lossy(&bash.stdout).to_string();
    let dir = tempfile::tempdir().unwrap();
    let man = ailla(&["man", "--out", dir.path().to_str().unwrap()]);
    assert!(man.status.success(), "{}", String::from_utf8_lossy(&man.stderr));
    let top = String::from_utf8_lossy(&ailla(&["man"]).stdout).to_string();
    assert!(top.starts_with(".ie") || top.contains(".TH"), "a roff page: {}", &top[..top.len().min(200)]);
    // both are generated from the clap definitions at run time, so a verb or flag added there is in
    // them; this checks that nothing is filtered on the way
    for verb in ailla::cli::Cli::command().get_subcommands() {
        let name = verb.get_name();
        assert!(bash.contains(name), "bash completion lacks `{name}`");
        let page = std::fs::read_to_string(dir.path().join(format!("ailla-{name}.1"))).unwrap();
        for arg in verb.get_arguments().filter(|a| !a.is_hide_set()).filter_map(|a| a.get_long()) {
            assert!(bash.contains(&format!("--{arg}")), "bash completion lacks `{name} --{arg}`");
            // roff escapes the hyphens of a flag
            assert!(page.contains(&format!("\\-\\-{}", arg.replace('-', "\\-"))), "ailla-{name}.1 lacks --{arg}");
        }
    }
}

#[test]
fn quiet_prints_no_progress_and_verbose_a_line_for_every_step() {
    let dir = tempfile::tempdir().unwrap();
    let train = |flag: &str, out: &str| train_tiny(&[flag], "6", &dir.path().join(out), &[]);
    let quiet = train("--quiet", "quiet");
    assert!(quiet.status.success());
    assert_eq!(String::from_utf8_lossy(&quiet.stderr), "", "--quiet leaves stderr empty");
    assert!(!quiet.stdout.is_empty(), "the result still prints");
    let verbose = train("--verbose", "verbose");
    assert!(verbose.status.success());
    let stderr = String::from_utf8_lossy(&verbose.stderr);
    for step in 1..=6 {
        let line = stderr
            .lines()
            .find(|l| l.starts_with(&format!("step {step:>6}/6")))
            .unwrap_or_else(|| panic!("--verbose has no line for step {step}:\n{stderr}"));
        assert!(line.ends_with("tok/s"), "each line shows the throughput: {line}");
    }
}

#[test]
fn the_committed_json_schemas_are_the_ones_the_output_types_generate() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/cli/schemas");
    for (name, generated) in ailla::cli::json::schemas() {
        let path = dir.join(name);
        if std::env::var_os("AILLA_WRITE_SCHEMA").is_some() {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &generated).unwrap();
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert_eq!(committed, generated, "{name}: regenerate with AILLA_WRITE_SCHEMA=1 cargo test --test cli");
    }
}

/// Parses `output`'s stdout as exactly `T`: an unknown or missing field fails.
fn strict<T: serde::de::DeserializeOwned>(output: &Output) -> T {
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("not the documented shape: {e}\n{}", String::from_utf8_lossy(&output.stdout)))
}

#[test]
fn json_output_has_one_documented_shape_per_verb() {
    use ailla::cli::json::{CheckOutput, EvalOutput, RunOutput, TrainOutput, ValidateOutput};
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::copy(root.join("rules/default.rules"), dir.path().join("default.rules")).unwrap();
    let pipeline = "name: tiny\nmodel: { ctx_len: 16, d_model: 16, n_heads: 2, n_layers: 1, d_ff: 32 }\n\
                    train: { steps: 6, batch_size: 4, seeds: [1, 2], eval_every: 0 }\n\
                    locality: { rules: default.rules }\nevaluation: { lambdas: [0.0, 1.0] }\n\
                    outputs: { dir: RUN }\n";
    // the output directory is relative to the working directory: give it whole, inside the temporary one
    let pipeline = pipeline.replace("RUN", dir.path().join("run").to_str().unwrap());
    let path = dir.path().join("tiny.yaml");
    std::fs::write(&path, pipeline).unwrap();
    let path = path.to_str().unwrap();

    let validated: ValidateOutput = strict(&ailla(&["validate", path, "--json"]));
    assert_eq!(validated.members.iter().map(|m| m.steps).collect::<Vec<_>>(), vec![6, 6]);

    let ran: RunOutput = strict(&ailla(&["-q", "run", path, "--json"]));
    assert_eq!(ran.members.len(), 2);
    assert!(ran.members.iter().all(|m| m.error.is_none() && m.dial.len() == 2), "{ran:?}");
    assert!(ran.report.ends_with("report.html"));

    let model = Path::new(&ran.run_dir).join(&ran.members[0].name).join("model.safetensors");
    let text = dir.path().join("text.txt");
    std::fs::write(&text, ailla::data::generator::bundled_corpus(7).test).unwrap();
    let eval = |extra: &[&str]| {
        let mut args = vec!["eval", model.to_str().unwrap(), "--text", text.to_str().unwrap(), "--json"];
        args.extend_from_slice(extra);
        ailla(&args)
    };
    let plain: EvalOutput = strict(&eval(&[]));
    assert!(plain.language_model.is_some() && plain.dial.is_empty());
    let dial: EvalOutput = strict(&eval(&["--lambda", "0,0.5,1"]));
    assert_eq!((dial.tokens, dial.dial.len()), (plain.tokens, 3));
    assert!(dial.language_model.is_none());

    let out = dir.path().join("trained");
    let trained: TrainOutput = strict(&train_tiny(&["-q"], "3", &out, &["--json"]));
    assert_eq!((trained.steps_done, trained.tokenizer.as_str()), (3, "word"));

    let rules = root.join("rules/copy-examples.rules");
    let checked: CheckOutput = strict(&ailla(&["check", rules.to_str().unwrap(), "--corpus", "bundled", "--json"]));
    assert!(checked.vocabulary_given && checked.corpus_tokens.is_some_and(|n| n > 0));
    assert!(!checked.copy_rules.is_empty() && checked.copy_rules.iter().all(|r| r.covers.is_some()));
    assert!(checked.rules.len() >= checked.written_rules);

    let environment: ailla::engine::environment::NumericalEnvironment = strict(&ailla(&["env", "--json"]));
    assert!(environment.worker_threads >= 1);
}

/// The order record of `data/pharmacy-sample.txt`: `pedro` at position 36 repeats the patient's name,
/// so the induction copy path copies `chen` from position 6 and the rule "first name repeats" covers
/// the row.
const EXPLAIN_TEXT: &str =
    "<order> id 879\npatient pedro chen ward surgical\ngive amoxicillin 500 mg oral every 12 hours\n\
note ( allergy to penicillin recorded )\nmaximum single dose 500 mg\nsigned dr for pedro chen\n</order>\n";

/// A one-layer model trained for a few steps with the copy rules of `rules/copy-examples.rules`, and
/// the text above; returns (checkpoint, text file).
fn explain_fixture(dir: &Path) -> (PathBuf, PathBuf) {
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/copy-examples.rules");
    let config = format!(
        "corpus: {{ bundled: {{ seed: 2024 }} }}\ntokenizer: word\n\
         model: {{ ctx_len: 64, d_model: 16, n_heads: 2, n_layers: 1, d_ff: 32 }}\n\
         steps: 8\nbatch_size: 2\nseed: 3\neval_every: 0\ncheckpoint_every: 0\n\
         locality:\n  rules: {{ file: {} }}\n  schedule: {{ constant: {{ lambda: 1.0 }} }}\n  eval_lambdas: []\n  \
         certificate_batches: 0\n",
        rules.display()
    );
    let config_path = dir.join("explain.yaml");
    std::fs::write(&config_path, config).unwrap();
    let run = dir.join("run");
    train(&config_path, &run, &["-q"]);
    let text = dir.join("order.txt");
    std::fs::write(&text, EXPLAIN_TEXT).unwrap();
    (run.join("model.safetensors"), text)
}

/// Numbers out, so a snapshot holds the form; and the tokens of ranked lists, whose order near-ties
/// may change on another machine's kernels.
fn redact_numbers(text: &str) -> String {
    let number = regex::Regex::new(r"-?[0-9]+(\.[0-9]+)?(e-?[0-9]+)?").unwrap();
    let ranked = regex::Regex::new(r"'[^']*'").unwrap();
    text.lines()
        .map(|line| {
            let trimmed = line.trim_start();
            let is_ranked =
                trimmed.starts_with("Layer ") || trimmed.split('.').next().is_some_and(|n| n.parse::<u32>().is_ok());
            let line = if is_ranked { ranked.replace_all(line, "'…'").into_owned() } else { line.to_string() };
            // padding follows the widths of the redacted tokens and numbers: one space stands for any run
            let line = number.replace_all(&line, "#");
            let indent = line.len() - line.trim_start().len();
            format!("{}{}", &line[..indent], line.split_whitespace().collect::<Vec<_>>().join(" "))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every number of a JSON value replaced by 0, the tokens of ranked lists (`top`, `attended`) by `…`
/// and the temporary checkpoint path by a placeholder: the shape, the keys, the lengths and the words of the explanation remain.
fn redact_json(value: &mut serde_json::Value, ranked: bool) {
    use serde_json::Value;
    match value {
        Value::Number(_) => *value = Value::from(0),
        Value::String(s) if ranked => *s = "…".into(),
        Value::Array(items) => items.iter_mut().for_each(|v| redact_json(v, ranked)),
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                if key == "checkpoint" {
                    *v = Value::from("<a temporary directory>");
                } else {
                    redact_json(v, ranked || key == "top" || key == "attended");
                }
            }
        }
        _ => {}
    }
}

#[test]
fn explain_decomposes_the_prediction_in_sentences_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let (model, text) = explain_fixture(dir.path());
    let (model, text) = (model.to_str().unwrap(), text.to_str().unwrap());
    let json: ailla::explain::Explanation = strict(&ailla(&["explain", model, "--text", text, "--at", "36", "--json"]));
    let a = &json.actual;
    assert_eq!((json.position, a.token.as_str()), (36, "chen"));
    let shares = a.network.share + a.copy_paths.iter().map(|c| c.share).sum::<f64>();
    assert!((shares - a.probability).abs() <= 1e-6 && (json.probability_sum - 1.0).abs() <= 1e-6);
    let induction = a.copy_paths.iter().find(|c| c.name == "induction").expect("the induction path");
    assert!(induction.share > 0.0 && induction.sources.iter().map(|s| s.position).collect::<Vec<_>>() == [6]);
    assert!(json.attention.iter().any(|row| row
        .coverage
        .as_ref()
        .is_some_and(|c| c.rules.iter().any(|r| r.name == "first name repeats" && r.targets == [5]))));
    // the explained probability is the evaluation's, to the f32 softmax's rounding
    let ckpt = ailla::checkpoint::load(Path::new(model)).unwrap();
    let prepared = ailla::explain::Prepared::new(&ckpt, None).unwrap();
    let ids = ckpt.vocabulary.encode(EXPLAIN_TEXT);
    let dial = ailla::locality::DialSettings { penalty: 0.0, ..prepared.dial };
    let rules = ailla::locality::RulesAt::new(&prepared.rules, 1.0, 1, None, dial);
    let bits =
        ailla::locality::score::code_lengths(&prepared.model, &ids, 16, &ailla::locality::Conditions::Rules(rules));
    assert!((a.bits - bits[36]).abs() < 1e-4, "explained {} bits, scored {}", a.bits, bits[36]);
    // the snapshot keeps each certificate's verdict as words; none may sit within rounding of 1 − ε
    for coverage in json.attention.iter().filter_map(|row| row.coverage.as_ref()) {
        assert!(coverage.lambda_star.is_some(), "a finite λ* on every covered row");
        let margin = coverage.fidelity - (1.0 - json.epsilon);
        assert!(margin.abs() > 1e-3 && coverage.certified == (margin > 0.0), "fidelity {}", coverage.fidelity);
    }

    let sentences = ailla(&["explain", model, "--text", text, "--at", "36"]);
    assert!(sentences.status.success(), "{}", stderr(&sentences));
    let sentences = stdout(&sentences);
    // the sentences carry the JSON's numbers, rounded
    assert!(sentences.contains(&format!("with probability {}", ailla::explain::render::probability(a.probability))));
    insta::assert_snapshot!("explain_text", redact_numbers(&sentences));
    let mut value = serde_json::to_value(&json).unwrap();
    redact_json(&mut value, false);
    insta::assert_snapshot!("explain_json", serde_json::to_string_pretty(&value).unwrap());

    let page = stdout(&ailla(&["explain", model, "--text", text, "--at", "36", "--html"]));
    assert!(page.starts_with("<!DOCTYPE html>") && page.contains("<table>") && page.contains("first name repeats"));
    // position 0 reads `<order>`: a token is shown as written, never taken for a tag
    let page = stdout(&ailla(&["explain", model, "--text", text, "--at", "0", "--html"]));
    assert!(page.contains("&lt;order&gt;") && !page.contains("<order>"), "{page}");

    // λ = 0: the copy paths are shut and the network holds the whole probability
    let shut: ailla::explain::Explanation =
        strict(&ailla(&["explain", model, "--text", text, "--at", "36", "--lambda", "0", "--json"]));
    assert!(shut.actual.copy_paths.iter().all(|c| c.share == 0.0));
    assert!((shut.actual.network.share - shut.actual.probability).abs() <= 1e-12);
}

#[test]
fn explain_refuses_bad_input_clearly_and_reads_unknown_words_as_unk() {
    let dir = tempfile::tempdir().unwrap();
    let (model, text) = explain_fixture(dir.path());
    let (model, text) = (model.to_str().unwrap(), text.to_str().unwrap());
    let missing = dir.path().join("nothing.safetensors");
    let out = ailla(&["explain", missing.to_str().unwrap(), "--text", text, "--at", "3"]);
    assert_clean_failure(&out, 2, &["nothing.safetensors"]);
    let out = ailla(&["explain", model, "--text", text, "--at", "41"]);
    assert_clean_failure(&out, 2, &["--at", "41 tokens long", "at most 39"]);
    for lambda in ["--lambda=1.5", "--lambda=-0.1", "--lambda=NaN"] {
        let out = ailla(&["explain", model, "--text", text, "--at", "3", lambda]);
        assert_clean_failure(&out, 2, &["--lambda", "outside [0, 1]"]);
    }
    let odd = dir.path().join("odd.txt");
    std::fs::write(&odd, "patient zyxwv chen\n").unwrap();
    let out = ailla(&["explain", model, "--text", odd.to_str().unwrap(), "--at", "1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("'zyxwv' (position 1)") && stdout(&out).contains("read as '<unk>'"),
        "{}",
        stdout(&out)
    );
    assert!(stderr(&out).contains("read as <unk>"), "{}", stderr(&out));
    // a checkpoint trained without rules is explained with none: every row uncovered, no copy path
    let plain = dir.path().join("plain");
    assert!(train_tiny(&["-q"], "2", &plain, &[]).status.success());
    let plain = plain.join("model.safetensors");
    let out = ailla(&["explain", plain.to_str().unwrap(), "--text", text, "--at", "12"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("No rule covers this row")
            && stdout(&out).contains("100.0 % of that came from the network")
    );
}
