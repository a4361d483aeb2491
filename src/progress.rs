//! Progress on stderr, and the Ctrl-C / SIGTERM / SIGHUP flag the loop checks.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

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

    pub(super) fn step(&self, step: usize, total: usize, loss: f64) {
        match self {
            Progress::Bar(bar) => {
                bar.set_position(step as u64);
                bar.set_message(format!("loss {loss:.4}"));
            }
            Progress::Lines { every, prefix } if step % every == 0 || step == total => {
                crate::eprintln_lossy!("{prefix}step {step:>6}/{total}  loss {loss:.4}");
            }
            _ => {}
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
