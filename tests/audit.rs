//! `ailla verify` and `ailla diff` end to end: a fresh run verifies bit for bit, an altered number is
//! named with its file and field, and two runs that differ in one setting are told apart by it.
//!
//! Snapshots hold the *form* of the outputs (numbers replaced by `{f}`, the machine's own facts and
//! hashes by placeholders); the numbers are compared with `tests/golden/` within the tolerances of
//! `tests/common/numbers.rs`.

use std::path::Path;
use std::process::{Command, Output};

mod common;
use common::numbers::{assert_numbers, split_json, split_text, Number, Tolerance};
use common::TINY_PIPELINE as PIPELINE;

/// ailla run in `dir`, so that the pipeline names its files by relative paths.
fn ailla(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ailla")).args(args).current_dir(dir).output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs `pipeline` (written as `NAME.yaml`) in `dir` with two threads.
fn run(dir: &Path, name: &str, pipeline: &str) {
    let rules = dir.join("default.rules");
    if !rules.exists() {
        std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/default.rules"), &rules).unwrap();
    }
    std::fs::write(dir.join(format!("{name}.yaml")), pipeline).unwrap();
    let output = ailla(dir, &["-q", "--threads", "2", "run", &format!("{name}.yaml")]);
    assert!(output.status.success(), "{}", stderr(&output));
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Lowercase hexadecimal runs of 12 characters or more (hashes and their prefixes) replaced by
/// `<sha256>`; a run next to a full stop is part of a decimal number and stays.
fn redact_hashes(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let is_hex = |c: char| c.is_ascii_digit() || ('a'..='f').contains(&c);
    let mut out = String::new();
    let mut at = 0;
    while at < chars.len() {
        if !is_hex(chars[at]) {
            out.push(chars[at]);
            at += 1;
            continue;
        }
        let end = (at..chars.len()).find(|&i| !is_hex(chars[i])).unwrap_or(chars.len());
        let run: String = chars[at..end].iter().collect();
        let in_number = (at > 0 && chars[at - 1] == '.') || chars.get(end) == Some(&'.');
        if run.len() >= 12 && !in_number {
            out.push_str("<sha256>");
        } else {
            out.push_str(&run);
        }
        at = end;
    }
    out
}

/// Runs of spaces collapsed to one: columns are padded to the widest value, which is this machine's
/// (its BLAS build string) or a number's, and padding is not the form.
fn collapse_spaces(text: &str) -> String {
    text.lines()
        .map(|line| {
            let indent = line.len() - line.trim_start().len();
            format!("{}{}", &line[..indent], line.split_whitespace().collect::<Vec<_>>().join(" "))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The environment table's values (this machine's CPU, BLAS, commit) replaced by placeholders.
fn redact_verify_text(text: &str) -> String {
    let fields =
        ["ailla", "platform", "cpu", "simd_path", "blas", "blas_version", "blas_config", "blas_core", "products"];
    let redacted = text
        .lines()
        .map(|line| {
            let field = line.split_whitespace().next().unwrap_or_default();
            if line.starts_with("  ") && fields.contains(&field) && !line.contains(':') {
                let mark = if line.contains(" * ") { "*" } else { " " };
                format!("  {field:<14}{mark} <recorded>  <here>")
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    // how many numbers and tensors were compared follows the report's layout, which other changes
    // grow: the form keeps that they were counted, the count itself is checked where it matters
    let redacted: String = redacted
        .lines()
        .map(|line| match line.strip_prefix("compared ") {
            Some(_) if line.contains(" numbers, ") => "compared {n} files: {n} numbers, {n} tensors".to_string(),
            _ => line.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    // SHA-256s of reports: their content holds the run's id and start time, new on every run
    let redacted = redacted
        .split(' ')
        .map(|word| if word.len() == 64 && word.bytes().all(|b| b.is_ascii_hexdigit()) { "<sha256>" } else { word })
        .collect::<Vec<_>>()
        .join(" ");
    collapse_spaces(&redacted)
}

fn redact_verify_json(text: &str) -> serde_json::Value {
    let mut value: serde_json::Value = serde_json::from_str(text).unwrap();
    for row in value["environment"].as_array_mut().unwrap() {
        if row["field"] != "threads" && row["field"] != "blas_threads" {
            row["recorded"] = serde_json::json!("<recorded>");
            row["here"] = serde_json::json!("<here>");
        }
    }
    value
}

/// The exit status of a verification, with its output for the message.
fn verify(dir: &Path, args: &[&str]) -> (i32, Output) {
    let mut all = vec!["-q", "verify"];
    all.extend_from_slice(args);
    let output = ailla(dir, &all);
    (output.status.code().unwrap_or(-1), output)
}

/// How far a printed figure may move between CPUs (`tests/report.rs`, `cross_cpu`, says what was
/// measured); differences, intervals and p-values move with the seeds' drift, so more.
fn cross_cpu(number: &Number) -> Tolerance {
    let derived = ["ci95", "welch_p", "difference", "±", "[", ", "].iter().any(|k| number.context.contains(k))
        || number.context.trim_end().ends_with(']');
    if derived {
        Tolerance { absolute: 1e-2, relative: 1e-2 }
    } else {
        Tolerance { absolute: 1e-3, relative: 1e-3 }
    }
}

#[test]
fn verify_replays_a_run_bit_for_bit_and_names_every_altered_number() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    run(dir, "tiny", PIPELINE);

    // a fresh run replays bit for bit: exit 0
    let (code, output) = verify(dir, &["run"]);
    assert_eq!(code, 0, "{}{}", stdout(&output), stderr(&output));
    let text = stdout(&output);
    assert!(text.contains("the recorded numerical environment: every compared value must be bit-identical"), "{text}");
    assert!(text.ends_with("verdict: identical — every compared value bit for bit (exit 0)\n"), "{text}");
    let (form, numbers) = split_text(&redact_verify_text(&text));
    assert!(numbers.is_empty(), "an identical verification prints no figure: {numbers:?}");
    insta::assert_snapshot!("verify_identical_text", form);

    let (code, output) = verify(dir, &["run", "--json", "--replay-dir", "replay"]);
    assert_eq!(code, 0, "{}", stderr(&output));
    let parsed: ailla::report::verify::Verification = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(parsed.verdict, ailla::report::verify::Verdict::Identical);
    assert!(parsed.files_compared > 10 && parsed.tensors_compared > 0 && parsed.differences.is_empty());
    assert!(dir.join("replay/report.json").is_file(), "--replay-dir keeps the replay");
    let (form, numbers) = split_json(&redact_verify_json(&stdout(&output)));
    insta::assert_snapshot!("verify_identical_json", serde_json::to_string_pretty(&form).unwrap());
    assert_numbers("verify_identical_json", &numbers, cross_cpu);
    // a replay directory that holds something is refused before anything runs
    let (code, output) = verify(dir, &["run", "--replay-dir", "replay"]);
    assert_eq!(code, 2, "{}", stderr(&output));

    // one loss of the log and one figure of the report altered: both named, exit 1
    copy_dir(&dir.join("run"), &dir.join("altered"));
    let log = dir.join("altered/seed-1/metrics.jsonl");
    let lines: Vec<String> = std::fs::read_to_string(&log).unwrap().lines().map(String::from).collect();
    let mut record: serde_json::Value = serde_json::from_str(&lines[16]).unwrap();
    record["loss"] = serde_json::json!(record["loss"].as_f64().unwrap() + 0.25);
    let mut edited = lines.clone();
    edited[16] = serde_json::to_string(&record).unwrap();
    std::fs::write(&log, edited.join("\n") + "\n").unwrap();
    let report_path = dir.join("altered/report.json");
    let mut report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report_path).unwrap()).unwrap();
    let perplexity = &mut report["groups"][0]["dial"][1]["perplexity"]["mean"];
    *perplexity = serde_json::json!(perplexity.as_f64().unwrap() * 1.01);
    std::fs::write(&report_path, serde_json::to_string_pretty(&report).unwrap()).unwrap();
    let (code, output) = verify(dir, &["altered"]);
    assert_eq!(code, 1, "{}{}", stdout(&output), stderr(&output));
    let text = stdout(&output);
    assert!(text.contains("seed-1/metrics.jsonl  line 17 (train, step 17): loss"), "{text}");
    assert!(text.contains("report.json  groups[0].dial[1].perplexity.mean"), "{text}");
    // and the report's hash of its own content no longer matches it
    assert!(text.contains("report.json  report_sha256"), "{text}");
    assert!(text.contains("differences: 3 beyond tolerance, 0 within"), "{text}");
    assert!(stderr(&output).contains("verification failed: 3 differences beyond tolerance"), "{}", stderr(&output));
    let (form, numbers) = split_text(&redact_verify_text(&text));
    insta::assert_snapshot!("verify_altered_text", form);
    assert_numbers("verify_altered_text", &numbers, cross_cpu);

    // in another numerical environment a loss that moved in its last digits is within tolerance:
    // exit 4, and the tolerances are printed
    copy_dir(&dir.join("run"), &dir.join("elsewhere"));
    let provenance_path = dir.join("elsewhere/provenance.json");
    let mut provenance: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&provenance_path).unwrap()).unwrap();
    // a kernel family other than this machine's (which may itself be SkylakeX)
    let here = provenance["numerics"]["blas_core"].as_str().unwrap_or_default().to_string();
    let other = if here == "SkylakeX" { "Haswell" } else { "SkylakeX" };
    provenance["numerics"]["blas_core"] = serde_json::json!(other);
    std::fs::write(&provenance_path, serde_json::to_string_pretty(&provenance).unwrap()).unwrap();
    let log = dir.join("elsewhere/seed-1/metrics.jsonl");
    let mut record: serde_json::Value = serde_json::from_str(&lines[16]).unwrap();
    record["loss"] = serde_json::json!(record["loss"].as_f64().unwrap() * (1.0 + 1e-7));
    let mut edited = lines;
    edited[16] = serde_json::to_string(&record).unwrap();
    std::fs::write(&log, edited.join("\n") + "\n").unwrap();
    let (code, output) = verify(dir, &["elsewhere"]);
    assert_eq!(code, 4, "{}{}", stdout(&output), stderr(&output));
    let text = stdout(&output);
    assert!(text.contains("another numerical environment: values are compared within these tolerances"), "{text}");
    assert!(text.contains("training losses, penalties, gradient norms"), "{text}");
    assert!(text.contains("|Δ| ≤ 1e-6 + 1e-4·|stored|"), "{text}");
    assert!(text.contains("differences: 0 beyond tolerance, 1 within"), "{text}");
    assert!(stderr(&output).starts_with("note: "), "{}", stderr(&output));
}

#[test]
fn verify_refuses_a_missing_or_damaged_run_directory_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let (code, output) = verify(dir, &["nowhere"]);
    assert_eq!(code, 2);
    assert!(stderr(&output).contains("nowhere: is not a directory"), "{}", stderr(&output));

    run(dir, "tiny", PIPELINE);
    copy_dir(&dir.join("run"), &dir.join("damaged"));
    let log = dir.join("damaged/seed-2/metrics.jsonl");
    let text = std::fs::read_to_string(&log).unwrap();
    std::fs::write(&log, text.replacen("\"loss\":", "\"loss\":,", 1)).unwrap();
    let (code, output) = verify(dir, &["damaged"]);
    assert_eq!(code, 2, "{}", stderr(&output));
    let message = stderr(&output);
    assert!(message.contains("damaged/seed-2/metrics.jsonl: cannot be read as the run wrote it: line 1:"), "{message}");
    assert!(!message.contains("panicked"), "{message}");

    std::fs::remove_file(dir.join("damaged/provenance.json")).unwrap();
    let (code, output) = verify(dir, &["damaged"]);
    assert_eq!(code, 2);
    assert!(stderr(&output).contains("damaged/provenance.json: is missing"), "{}", stderr(&output));

    // the rules the run read, edited since: not replayed, exit 1, the hash named
    let rules = dir.join("default.rules");
    let text = std::fs::read_to_string(&rules).unwrap();
    std::fs::write(&rules, format!("{text}\n# edited\n")).unwrap();
    let (code, output) = verify(dir, &["run"]);
    assert_eq!(code, 1, "{}", stderr(&output));
    assert!(stdout(&output).contains("provenance.json  rules[0].sha256"), "{}", stdout(&output));
    assert!(stdout(&output).contains("nothing was replayed"), "{}", stdout(&output));
}

#[test]
fn diff_names_the_setting_two_runs_differ_in_and_sets_their_figures_side_by_side() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    run(dir, "tiny", PIPELINE);
    let faster = PIPELINE.replace("  eval_every: 0\n", "  eval_every: 0\n  optim: { learning_rate: 0.006 }\n");
    run(dir, "tiny-lr", &faster.replace("dir: run", "dir: run-lr"));

    let output = ailla(dir, &["diff", "run", "run-lr"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(text.contains("configuration (pipeline.resolved.json): 3 fields differ"), "{text}");
    assert!(text.contains("members.seed-1.optim.learning_rate  A 0.003  B 0.006"), "{text}");
    assert!(text.contains("environment: the same"), "{text}");
    for metric in ["perplexity", "bits_per_token", "accuracy", "pointer_fidelity", "share certified"] {
        assert!(text.contains(metric), "{metric} missing:\n{text}");
    }
    let (form, numbers) = split_text(&redact_hashes(&text));
    insta::assert_snapshot!("diff_learning_rate_text", collapse_spaces(&form));
    assert_numbers("diff_learning_rate_text", &numbers, cross_cpu);

    let output = ailla(dir, &["diff", "run", "run-lr", "--json"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let parsed: ailla::report::diff::RunDiff = serde_json::from_slice(&output.stdout).unwrap();
    let perplexity = parsed.groups[0].metrics.iter().find(|m| m.metric == "perplexity").unwrap();
    assert!((perplexity.contrast.difference - (perplexity.b.mean - perplexity.a.mean)).abs() < 1e-9);
    assert!(perplexity.contrast.ci95.is_some() && perplexity.contrast.welch_p.is_some(), "two seeds a side");
    let value: serde_json::Value = serde_json::from_str(&redact_hashes(&stdout(&output))).unwrap();
    let (form, numbers) = split_json(&value);
    insta::assert_snapshot!("diff_learning_rate_json", serde_json::to_string_pretty(&form).unwrap());
    assert_numbers("diff_learning_rate_json", &numbers, cross_cpu);

    // a run against itself: nothing differs, every difference is 0
    let same = ailla(dir, &["diff", "run", "run"]);
    let text = stdout(&same);
    assert!(text.contains("configuration (pipeline.resolved.json): the same"), "{text}");
    let missing = ailla(dir, &["diff", "run", "nowhere"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(stderr(&missing).contains("nowhere: is not a directory"), "{}", stderr(&missing));
}
