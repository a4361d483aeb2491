//! A test hook that kills the process at a chosen filesystem step, to prove the crash model.
//!
//! With `AILLA_KILL_AFTER_FS_STEP=N` in the environment, the process aborts (SIGABRT: no destructor
//! runs, no buffer is flushed, as with `kill -9`) right after its N-th filesystem step: a file written,
//! synced, renamed or linked, a directory synced, a log line appended or cut. The test in
//! `tests/crash.rs` kills a run at every step in turn and checks that the next `--resume` ends
//! bit-identical to a run that was never killed. Unset, the hook costs one relaxed load.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// The variable that arms the hook.
pub const KILL_AFTER_VARIABLE: &str = "AILLA_KILL_AFTER_FS_STEP";

fn armed_at() -> Option<usize> {
    static AT: OnceLock<Option<usize>> = OnceLock::new();
    *AT.get_or_init(|| std::env::var(KILL_AFTER_VARIABLE).ok().and_then(|v| v.trim().parse().ok()))
}

/// Marks one filesystem step done; aborts the process when it is the armed one.
pub fn filesystem_step(what: &str) {
    static DONE: AtomicUsize = AtomicUsize::new(0);
    let Some(at) = armed_at() else { return };
    let done = DONE.fetch_add(1, Ordering::SeqCst) + 1;
    if done == at {
        crate::eprintln_lossy!("{KILL_AFTER_VARIABLE}: killed after filesystem step {done} ({what})");
        std::process::abort();
    }
}
