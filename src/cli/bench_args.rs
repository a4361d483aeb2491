//! The arguments of `ailla bench` and `ailla cuda-check`.

use std::path::PathBuf;

use clap::Args;

#[derive(Args, Debug)]
pub struct CudaCheckArgs {
    /// Largest relative error a kernel's output may have against the host reference.
    #[arg(long, default_value_t = 1e-5)]
    pub tolerance: f64,
    /// Training steps of the loss comparison (char-small's shape, random batches).
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    /// Largest difference of the last step's loss, GPU against CPU, relative to the loss.
    #[arg(long, default_value_t = 1e-4)]
    pub loss_tolerance: f64,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Configurations to measure (default: char-small and word-wt2).
    #[arg(long = "config", value_name = "NAME")]
    pub configs: Vec<String>,
    /// Timed steps per configuration.
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Also run benches/torch_reference.py with the same threads and print the ratio.
    #[arg(long)]
    pub compare_torch: bool,
    /// Measure each configuration this many times (1 to 9), ailla and PyTorch alternating, and report
    /// the medians: on a machine whose speed drifts from minute to minute, both sides then see the
    /// same minutes.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub rounds: usize,
    /// The Python that has torch installed.
    #[arg(long, default_value = "python3")]
    pub python: String,
    /// Print JSON instead of a table (shape: `src/cli/schemas/bench.schema.json`; with `--check-cost`,
    /// `bench-check-cost.schema.json`).
    #[arg(long)]
    pub json: bool,
    /// Measure one configuration in this process (used internally to attribute peak memory).
    #[arg(long, hide = true)]
    pub single: bool,
    /// Also measure sweep scaling (1, 2, 4 and 6 concurrent members) and the cost of a recruitment
    /// check against the steps it trials.
    #[arg(long)]
    pub scaling: bool,
    /// Measure only the frozen-model recruitment check of this pipeline (8 candidates at its
    /// settings) against the training steps between two of its checks.
    #[arg(long, value_name = "PIPELINE", conflicts_with_all = ["configs", "compare_torch", "scaling", "single"])]
    pub check_cost: Option<PathBuf>,
    /// Measure instead what `ailla check` costs on a generated rules file of this many megabytes (a
    /// gazetteer whose words are mostly missing from the vocabulary); JSON shape:
    /// `src/cli/schemas/bench-rules-check.schema.json`.
    #[arg(long, value_name = "MEGABYTES", conflicts_with = "check_cost")]
    pub rules_check: Option<f64>,
    /// With `--check-cost`: the corpus directory in place of the pipeline's `data.corpus`.
    #[arg(long, value_name = "DIR", requires = "check_cost")]
    pub data: Option<PathBuf>,
}
