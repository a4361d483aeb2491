//! ailla: train and audit localist language models.
//!
//! The library does the work; `src/main.rs` only parses flags and maps errors to exit codes.
//! Data flows one way: corpus → tokenizer → engine → metrics → checkpoint and report.

// Linked for their side effect: they make the system OpenBLAS provide ndarray's BLAS symbols.
extern crate blas_src;
extern crate openblas_src;

/// `eprintln!` that never panics: when stderr is closed or full (`ailla … 2>&1 | head -1`,
/// `2>/dev/full`) the message is lost, not the run.
#[macro_export]
macro_rules! eprintln_lossy {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// `eprint!` that never panics (see [`eprintln_lossy!`]).
#[macro_export]
macro_rules! eprint_lossy {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stderr(), $($arg)*);
    }};
}

pub mod bench;
pub mod checkpoint;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod data;
pub mod digest;
pub mod dsl;
pub mod engine;
pub mod error;
pub mod explain;
pub mod export;
pub mod faults;
pub mod json_float;
pub mod locality;
pub mod pipeline;
pub mod progress;
pub mod recruit;
pub mod report;
pub mod rng;
pub mod run_dir;
pub mod step;
pub mod suggest;
pub mod train;

pub use error::{Error, Result};
