//! Audit reports (`report.json`, `report.md`) built from what a run stored: its resolved plan, its
//! provenance and every member's summary and metrics. `ailla report RUN_DIR` rebuilds them byte for
//! byte without retraining.

pub mod compare;
pub mod diff;
pub mod plots;
pub mod provenance;
pub mod published;
pub mod stats;
pub mod verify;

use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::pipeline::Plan;
use crate::train::{MetricsRecord, TrainSummary};
use crate::{Error, Result};
use provenance::Provenance;
use stats::{estimate, welch_p, Estimate};

mod build;
pub mod card;
mod html;
mod markdown;
mod types;

pub use build::*;
pub use html::*;
pub use markdown::*;
pub use types::*;

pub const SCHEMA_VERSION: u32 = 1;

pub const PROVENANCE_FILE: &str = "provenance.json";
/// The machine-readable report in a run directory.
pub const REPORT_FILE: &str = "report.json";

/// The JSON Schema of `report.json`, generated from the types above; `src/report/report.schema.json`
/// is this text, kept in the repository for readers and other tools (a test checks they agree).
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(Report);
    serde_json::to_string_pretty(&schema).unwrap_or_default() + "\n"
}

/// Writes `report.json`, `report.md`, `report.html` and the figures into the run directory.
pub fn write(run_dir: &Path, report: &Report) -> Result<()> {
    let json = card::to_json(report)?;
    crate::checkpoint::atomic_write(&run_dir.join("report.json"), json.as_bytes())?;
    crate::checkpoint::atomic_write(&run_dir.join("report.md"), markdown(report).as_bytes())?;
    crate::checkpoint::atomic_write(&run_dir.join("report.html"), html(report).as_bytes())?;
    for (file, _, svg) in figures(report) {
        crate::checkpoint::atomic_write(&run_dir.join(file), svg.as_bytes())?;
    }
    Ok(())
}
