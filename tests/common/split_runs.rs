//! Comparing a pipeline run whose members ran as separate processes (`--member`, a job array) with
//! the same pipeline run whole.

use std::path::Path;

/// A two-member sweep small enough to run in a second or two per member, written to `dir/NAME.yaml`
/// with its output in `dir/runs/NAME` (absolute, so that every process resolves the same plan).
pub fn tiny_sweep(dir: &Path, name: &str) -> std::path::PathBuf {
    let path = dir.join(format!("{name}.yaml"));
    let text = format!(
        "name: {name}\nmodel: {{ ctx_len: 16, d_model: 16, n_heads: 2, n_layers: 1, d_ff: 32 }}\n\
         train:\n  steps: 30\n  batch_size: 4\n  eval_every: 0\n\
         locality:\n  rules: bundled\n  lambda:\n    schedule: {{ constant: {{ lambda: 0.5 }} }}\n\
         evaluation:\n  lambdas: [0.0, 1.0]\n\
         sweep:\n  train.seed: [1, 2]\n\
         outputs:\n  dir: {}\n  checkpoint_every: 10\n",
        dir.join("runs").join(name).display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Asserts that every member of `split` has the losses and the weights of the same member of
/// `whole`, bit for bit.
pub fn assert_members_identical(whole: &Path, split: &Path, members: &[&str]) {
    for member in members {
        let (a, b) = (whole.join(member), split.join(member));
        let losses = super::train_losses(&a);
        assert!(!losses.is_empty(), "{} logged no training steps", a.display());
        assert_eq!(super::train_losses(&b), losses, "member {member}: the losses differ");
        assert!(
            std::fs::read(b.join("model.safetensors")).unwrap() == std::fs::read(a.join("model.safetensors")).unwrap(),
            "member {member}: the weights differ"
        );
    }
}

/// `report.json` with the fields that differ between identical runs (wall time, peak memory: each
/// member of a split run measured in a process of its own; the invocation and the report's hash of
/// itself) blanked.
fn comparable_report(run_dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(run_dir.join("report.json")).unwrap();
    let mut report: serde_json::Value = serde_json::from_str(&text).unwrap();
    super::blank_volatile_json(&mut report);
    report
}

/// `report.md` without the rows of [`super::VOLATILE_MARKDOWN_ROWS`].
fn comparable_markdown(run_dir: &Path) -> String {
    std::fs::read_to_string(run_dir.join("report.md"))
        .unwrap()
        .lines()
        .filter(|l| !super::volatile_markdown_row(l))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// The lines where two texts differ, numbered, for a message short enough to read.
fn differing_lines(a: &str, b: &str) -> String {
    let (a, b): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    let mut out = String::new();
    for at in 0..a.len().max(b.len()) {
        let (x, y) = (a.get(at).copied().unwrap_or("<none>"), b.get(at).copied().unwrap_or("<none>"));
        if x != y {
            out += &format!("line {}:\n  whole: {x}\n  split: {y}\n", at + 1);
        }
    }
    out
}

/// Asserts that the reports of the two runs are the same apart from their volatile fields (wall time,
/// peak memory, invocation, the report's own hash).
pub fn assert_reports_equal(whole: &Path, split: &Path) {
    let json = |dir: &Path| serde_json::to_string_pretty(&comparable_report(dir)).unwrap();
    let (a, b) = (json(whole), json(split));
    assert!(a == b, "report.json differs:\n{}", differing_lines(&a, &b));
    let (a, b) = (comparable_markdown(whole), comparable_markdown(split));
    assert!(a == b, "report.md differs:\n{}", differing_lines(&a, &b));
}
