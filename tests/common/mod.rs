//! Helpers shared by the integration tests.
#![allow(dead_code)] // each test binary uses a different part of them

use std::path::Path;

/// The `train` records of a run's `metrics.jsonl`, as written.
pub fn train_losses(run: &Path) -> Vec<String> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| l.contains("\"kind\":\"train\""))
        .map(String::from)
        .collect()
}
/// Two runs trained to the same bits: the same `train` records and the same weights, byte for byte.
pub fn assert_same_training(a: &Path, b: &Path, context: &str) {
    assert_eq!(train_losses(a), train_losses(b), "{context}");
    let weights = |run: &Path| std::fs::read(run.join("model.safetensors")).unwrap();
    assert_eq!(weights(a), weights(b), "{context}");
}

/// Rows of `report.md` that differ between identical runs by design: the run's invocation (who, where,
/// when, how: `provenance.invocation`), the report's hash of itself (which covers them), and the wall
/// time and peak memory.
pub const VOLATILE_MARKDOWN_ROWS: [&str; 8] = [
    "| run id |",
    "| started (UTC) |",
    "| host |",
    "| operator |",
    "| command |",
    "| report SHA-256 |",
    "| wall time |",
    "| peak memory |",
];

/// Whether `line` of `report.md` is one of [`VOLATILE_MARKDOWN_ROWS`].
pub fn volatile_markdown_row(line: &str) -> bool {
    VOLATILE_MARKDOWN_ROWS.iter().any(|row| line.starts_with(row))
}

/// Blanks the fields of `report.json` that differ between identical runs by design (those of
/// [`VOLATILE_MARKDOWN_ROWS`]), asserting that each is there.
pub fn blank_volatile_json(report: &mut serde_json::Value) {
    assert!(report.get("report_sha256").is_some(), "the report has no report_sha256");
    report["report_sha256"] = serde_json::Value::Null;
    let provenance = report.get_mut("provenance").unwrap();
    for field in ["wall_time_seconds", "peak_memory_mib", "invocation"] {
        assert!(provenance.get(field).is_some(), "the report has no provenance.{field}");
        provenance[field] = serde_json::Value::Null;
    }
}

/// A small run with two seeds (about two seconds), so that intervals and Welch's test appear in its
/// report and in `diff`; `tests/report.rs` appends a card to it.
pub const TINY_PIPELINE: &str = "\
name: tiny
model: { ctx_len: 32, d_model: 32, n_heads: 4, n_layers: 2, d_ff: 64 }
train:
  steps: 40
  batch_size: 8
  seeds: [1, 2]
  eval_every: 0
locality:
  rules: default.rules
  lambda:
    schedule: { uniform: { low: 0.0, high: 1.0 } }
evaluation:
  lambdas: [0.0, 0.5, 1.0]
outputs:
  dir: run
  checkpoint_every: 40
";

pub mod numbers;
pub mod split_runs;
