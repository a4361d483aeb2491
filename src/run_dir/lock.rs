//! One writer per run directory: a lock file holding the writer's process id and host.
//!
//! Two trainings into one directory would interleave their checkpoints and logs, and both would
//! report success. The lock is taken with an exclusive create, so exactly one process wins; a lock
//! whose process is gone (a kill leaves it behind) is stale and is taken over with a note. On another
//! host the process cannot be checked, so such a lock is refused with what to do if it is stale.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

pub const LOCK_FILE: &str = ".ailla.lock";

/// Held while a run writes its directory; released (the file removed) when dropped.
#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
}

/// This machine's host name, as the kernel reports it.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "unknown-host".into())
}

/// Whether process `pid` exists on this host.
fn process_alive(pid: u32) -> bool {
    #[cfg(unix)]
    {
        let Ok(pid) = libc::pid_t::try_from(pid) else { return false };
        // signal 0 checks existence and permission without sending anything; EPERM means it exists
        // SAFETY: kill with signal 0 has no side effect on any process.
        let result = unsafe { libc::kill(pid, 0) };
        result == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        true
    }
}

impl RunLock {
    /// Takes the lock of `dir` (which must exist). `notes` receives a line when a stale lock is
    /// taken over.
    pub fn acquire(dir: &Path, notes: &mut dyn FnMut(&str)) -> Result<RunLock> {
        let path = dir.join(LOCK_FILE);
        let (pid, host) = (std::process::id(), host_name());
        for _ in 0..2 {
            match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut file) => {
                    file.write_all(format!("{pid} {host}\n").as_bytes()).map_err(|e| Error::io(&path, e))?;
                    crate::faults::filesystem_step("lock taken");
                    return Ok(RunLock { path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let text = std::fs::read_to_string(&path).unwrap_or_default();
                    let mut words = text.split_whitespace();
                    let holder: Option<u32> = words.next().and_then(|p| p.parse().ok());
                    let holder_host = words.next().unwrap_or("").to_string();
                    match holder {
                        Some(other) if holder_host == host && other != pid && !process_alive(other) => {
                            notes(&format!(
                                "note: removed a stale lock of process {other}, which is no longer running ({})",
                                path.display()
                            ));
                            let _ = std::fs::remove_file(&path);
                        }
                        Some(other) if holder_host == host => {
                            return Err(Error::Config {
                                path: dir.to_path_buf(),
                                message: format!(
                                    "is in use by process {other} on this machine (lock file {LOCK_FILE}); wait \
                                     for it to finish, or stop it"
                                ),
                            })
                        }
                        _ => {
                            return Err(Error::Config {
                                path: dir.to_path_buf(),
                                message: format!(
                                    "is locked by `{}` (lock file {LOCK_FILE}), which this machine cannot \
                                     check; if no process uses the directory any more, remove the lock file",
                                    text.trim()
                                ),
                            })
                        }
                    }
                }
                Err(e) => return Err(Error::io(&path, e)),
            }
        }
        Err(Error::Config {
            path: dir.to_path_buf(),
            message: format!("another process took the lock ({LOCK_FILE}) as a stale one was removed"),
        })
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // only a lock that is still ours: one taken over as stale belongs to its new holder
        let ours = std::fs::read_to_string(&self.path)
            .is_ok_and(|text| text.split_whitespace().next() == Some(&std::process::id().to_string()));
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_writer_is_refused_and_a_dead_writers_lock_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let mut notes = Vec::new();
        let held = RunLock::acquire(dir.path(), &mut |n| notes.push(n.to_string())).unwrap();
        // the same process holding it twice is a bug of ours, but a live holder is refused either way;
        // pretend another live process (our parent) holds it
        let parent = std::os::unix::process::parent_id();
        std::fs::write(dir.path().join(LOCK_FILE), format!("{parent} {}\n", host_name())).unwrap();
        let refused = RunLock::acquire(dir.path(), &mut |_| {}).unwrap_err().to_string();
        assert!(refused.contains(&format!("in use by process {parent}")), "{refused}");
        // a process id that cannot be running: above the kernel's pid_max
        std::fs::write(dir.path().join(LOCK_FILE), format!("{} {}\n", i32::MAX as u32 - 1, host_name())).unwrap();
        let taken = RunLock::acquire(dir.path(), &mut |n| notes.push(n.to_string())).unwrap();
        assert!(notes.iter().any(|n| n.contains("stale lock")), "{notes:?}");
        drop(held);
        drop(taken);
        assert!(!dir.path().join(LOCK_FILE).exists());
        std::fs::write(dir.path().join(LOCK_FILE), "77 elsewhere\n").unwrap();
        let refused = RunLock::acquire(dir.path(), &mut |_| {}).unwrap_err().to_string();
        assert!(refused.contains("cannot") && refused.contains("remove the lock file"), "{refused}");
    }
}
