//! Progress on stderr, and the Ctrl-C / SIGTERM / SIGHUP flag the loop checks.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;

/// How much progress goes to stderr, for the whole process (`--quiet`, `--verbose`). Errors and
/// results are printed whatever it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verbosity {
    /// No progress and no notes.
    Quiet,
    /// A bar on a terminal, a line every twentieth of the run otherwise.
    Normal,
    /// A plain line for every step, terminal or not.
    Verbose,
}

static VERBOSITY: AtomicU8 = AtomicU8::new(1);

pub fn set_verbosity(verbosity: Verbosity) {
    VERBOSITY.store(verbosity as u8, Ordering::Relaxed);
}

pub fn verbosity() -> Verbosity {
    match VERBOSITY.load(Ordering::Relaxed) {
        0 => Verbosity::Quiet,
        2 => Verbosity::Verbose,
        _ => Verbosity::Normal,
    }
}

/// Progress output: a bar on a terminal, periodic plain lines otherwise (CI logs, pipes).
pub enum Progress {
    Bar(indicatif::ProgressBar),
    /// Plain lines every `every` steps, each starting with `prefix` (the run's name in a sweep).
    Lines {
        every: usize,
        prefix: String,
    },
    Silent,
}

impl Progress {
    pub fn for_stderr(total: usize) -> Self {
        match verbosity() {
            Verbosity::Quiet => return Progress::Silent,
            Verbosity::Verbose => return Progress::Lines { every: 1, prefix: String::new() },
            Verbosity::Normal => {}
        }
        if std::io::stderr().is_terminal() {
            let bar = indicatif::ProgressBar::new(total as u64);
            if let Ok(style) =
                indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} steps  {msg}  [{elapsed} < {eta}]")
            {
                bar.set_style(style);
            }
            Progress::Bar(bar)
        } else {
            Progress::Lines { every: (total / 20).max(1), prefix: String::new() }
        }
    }

    /// One of several concurrent runs: a bar of its own under `bars` on a terminal, prefixed lines
    /// otherwise.
    pub fn for_run(bars: Option<&indicatif::MultiProgress>, name: &str, total: usize) -> Self {
        match verbosity() {
            Verbosity::Quiet => return Progress::Silent,
            Verbosity::Verbose => return Progress::Lines { every: 1, prefix: format!("[{name}] ") },
            Verbosity::Normal => {}
        }
        match bars {
            Some(bars) => {
                let bar = bars.add(indicatif::ProgressBar::new(total as u64));
                if let Ok(style) = indicatif::ProgressStyle::with_template(&format!(
                    "{name:<24} {{bar:30}} {{pos}}/{{len}}  {{msg}}  [{{elapsed}} < {{eta}}]"
                )) {
                    bar.set_style(style);
                }
                Progress::Bar(bar)
            }
            None => Progress::Lines { every: (total / 10).max(1), prefix: format!("[{name}] ") },
        }
    }

    /// Notes only, prefixed (a run without steps to count); nothing under `--quiet`.
    pub fn notes(prefix: &str) -> Self {
        match verbosity() {
            Verbosity::Quiet => Progress::Silent,
            _ => Progress::Lines { every: usize::MAX, prefix: prefix.to_string() },
        }
    }

    /// Step `step` of `total` is done with training loss `loss`, at `tokens_per_s` since the run (or
    /// its resume) started.
    pub(super) fn step(&self, step: usize, total: usize, loss: f64, tokens_per_s: f64) {
        match self {
            Progress::Bar(bar) => {
                bar.set_position(step as u64);
                bar.set_message(format!("loss {loss:.4}  {tokens_per_s:.0} tok/s"));
            }
            Progress::Lines { every, prefix } if step.is_multiple_of(*every) || step == total => {
                crate::eprintln_lossy!("{prefix}step {step:>6}/{total}  loss {loss:.4}  {tokens_per_s:.0} tok/s");
            }
            _ => {}
        }
    }

    /// What the run is doing between two steps (a recruitment check), on the bar; plain lines wait for
    /// its result.
    pub(super) fn status(&self, what: &str) {
        if let Progress::Bar(bar) = self {
            bar.set_message(what.to_string());
        }
    }

    /// Work without steps to count has begun (an evaluation, a recruitment check): a spinner with
    /// `what` on a terminal, a line otherwise.
    pub(super) fn working(&self, what: &str) {
        match self {
            Progress::Bar(bar) => {
                if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {msg}  [{elapsed}]") {
                    bar.set_style(style);
                }
                bar.set_message(what.to_string());
                bar.enable_steady_tick(std::time::Duration::from_millis(120));
            }
            Progress::Lines { prefix, .. } => crate::eprintln_lossy!("{prefix}{what}"),
            Progress::Silent => {}
        }
    }

    pub fn note(&self, message: &str) {
        match self {
            Progress::Bar(bar) => bar.println(message),
            Progress::Lines { prefix, .. } => crate::eprintln_lossy!("{prefix}{message}"),
            Progress::Silent => {}
        }
    }

    pub(super) fn finish(&self) {
        if let Progress::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

/// Set by Ctrl-C; the loop checkpoints and stops at the next step boundary.
pub fn interrupt_flag() -> Arc<AtomicBool> {
    static FLAG: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();
    FLAG.get_or_init(|| {
        let flag = Arc::new(AtomicBool::new(false));
        let handler_flag = flag.clone();
        // a second Ctrl-C while the first is being handled exits at once
        let _ = ctrlc::set_handler(move || {
            if handler_flag.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
        });
        flag
    })
    .clone()
}
