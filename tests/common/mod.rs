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
pub mod numbers;
pub mod split_runs;
