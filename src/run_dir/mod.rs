//! A run directory: its layout, what it may hold, its lock, its checkpoints and its metrics log.
//!
//! The crash model (README, "What survives a kill"): a checkpoint is one unit — the model, the
//! optimizer state, and a manifest naming both files' hashes, the step, the length of the metrics log
//! and the hash of the settings — committed by writing the manifest last. A kill at any instant leaves
//! every committed unit intact; `--resume` continues from the newest one that verifies, says which, and
//! cuts the metrics log back to the length that unit recorded, so a resumed run ends bit-identical to
//! one that was never stopped.

pub mod lock;
pub mod metrics_log;
pub mod units;

use std::path::{Path, PathBuf};

use crate::{Error, Result};

pub use lock::RunLock;
pub use metrics_log::MetricsLog;

/// Run directory layout.
pub struct RunPaths {
    pub dir: PathBuf,
}

/// Files that belong to a training run; nothing else in its directory is ever removed.
const RUN_FILES: [&str; 7] = [
    "train.json",
    "metrics.jsonl",
    "summary.json",
    "model.safetensors",
    "model.optim.safetensors",
    "recruited.rules",
    "report_inputs.json",
];

impl RunPaths {
    pub fn new(dir: &Path) -> Self {
        RunPaths { dir: dir.to_path_buf() }
    }
    pub fn model(&self) -> PathBuf {
        self.dir.join("model.safetensors")
    }
    pub fn config(&self) -> PathBuf {
        self.dir.join("train.json")
    }
    pub fn metrics(&self) -> PathBuf {
        self.dir.join("metrics.jsonl")
    }
    pub fn summary(&self) -> PathBuf {
        self.dir.join("summary.json")
    }
    pub fn checkpoints(&self) -> PathBuf {
        self.dir.join("checkpoints")
    }
    pub fn step_checkpoint(&self, step: usize) -> PathBuf {
        self.checkpoints().join(format!("step-{step:07}.safetensors"))
    }

    fn holds_step_files(&self) -> bool {
        std::fs::read_dir(self.checkpoints()).is_ok_and(|entries| {
            entries.filter_map(|e| e.ok()).any(|e| e.file_name().to_string_lossy().starts_with("step-"))
        })
    }

    /// What the directory holds now, before a fresh run decides whether it may write there.
    pub fn contents(&self) -> Result<DirContents> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(DirContents::Missing),
            Err(_) if self.dir.is_file() => {
                return Err(Error::Config { path: self.dir.clone(), message: "is a file, not a directory".into() })
            }
            Err(e) => return Err(Error::io(&self.dir, e)),
        };
        let (mut run, mut other) = (Vec::new(), Vec::new());
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(&self.dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if is_leftover(&name) {
                continue;
            }
            let ours = RUN_FILES.contains(&name.as_str())
                || (name == "checkpoints" && self.holds_step_files())
                || name.starts_with("diverged-step-");
            if ours {
                run.push(name);
            } else {
                other.push(name);
            }
        }
        run.sort();
        other.sort();
        Ok(match (run.is_empty(), other.is_empty()) {
            (true, true) => DirContents::Empty,
            (false, _) => DirContents::Run { files: run, others: other },
            (true, false) => DirContents::Other(other),
        })
    }

    /// Checks that a fresh run may write here: an empty or missing directory, or (with `force`) one
    /// that holds an earlier run. Nothing is removed here; see [`RunPaths::clear_previous_run`].
    pub fn check_fresh_start(&self, force: bool, resume_command: &str) -> Result<()> {
        match self.contents()? {
            DirContents::Missing | DirContents::Empty => Ok(()),
            DirContents::Run { .. } if force => Ok(()),
            DirContents::Run { files, .. } => Err(Error::Config {
                path: self.dir.clone(),
                message: format!(
                    "holds a run already ({}); continue it with `{resume_command}`, or replace it with --force",
                    files.join(", ")
                ),
            }),
            DirContents::Other(names) => Err(Error::Config {
                path: self.dir.clone(),
                message: format!(
                    "is not empty and is not an ailla run directory (it holds {}); choose another output \
                     directory",
                    preview(&names)
                ),
            }),
        }
    }

    /// A fresh run in a directory that held another run removes that run's checkpoints and results
    /// first, so that a later `--resume` can never pick up a checkpoint of the old run. Only files
    /// ailla writes are removed; anything else (notes, scripts) stays.
    pub fn clear_previous_run(&self) -> Result<()> {
        let checkpoints = self.checkpoints();
        if checkpoints.is_dir() {
            let entries = std::fs::read_dir(&checkpoints).map_err(|e| Error::io(&checkpoints, e))?;
            for entry in entries {
                let entry = entry.map_err(|e| Error::io(&checkpoints, e))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if (name.starts_with("step-") || is_leftover(&name)) && entry.path().is_file() {
                    remove_file(&entry.path())?;
                }
            }
            // kept when something that is not ailla's is left in it
            let _ = std::fs::remove_dir(&checkpoints);
        }
        let entries = std::fs::read_dir(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(&self.dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let stale = RUN_FILES.contains(&name.as_str()) || name.starts_with("diverged-step-");
            if stale && entry.path().is_file() {
                remove_file(&entry.path())?;
            }
        }
        Ok(())
    }

    /// Removes temporary files a killed write left behind (they are never part of a committed unit).
    pub fn remove_leftovers(&self) -> Result<()> {
        for dir in [self.dir.clone(), self.checkpoints()] {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for entry in entries.filter_map(|e| e.ok()) {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with(".tmp") && entry.path().is_file() {
                    remove_file(&entry.path())?;
                }
            }
        }
        Ok(())
    }
}

fn remove_file(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// Temporary files of an interrupted write, and a lock: ailla's, but not a run's content.
pub fn is_leftover(name: &str) -> bool {
    name.starts_with(".tmp") || name == lock::LOCK_FILE
}

fn preview(names: &[String]) -> String {
    let shown: Vec<String> = names.iter().take(3).map(|n| format!("`{n}`")).collect();
    match names.len() {
        n if n > 3 => format!("{} and {} more", shown.join(", "), n - 3),
        _ => shown.join(", "),
    }
}

/// What a directory holds, as far as a fresh run is concerned.
#[derive(Debug, PartialEq)]
pub enum DirContents {
    Missing,
    /// Nothing, or only what a killed run leaves behind (temporary files, a lock).
    Empty,
    /// A run's files, and whatever else is beside them.
    Run {
        files: Vec<String>,
        others: Vec<String>,
    },
    /// Files that are not a run's.
    Other(Vec<String>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_start_is_refused_on_a_run_without_force_and_on_foreign_files_always() {
        let dir = tempfile::tempdir().unwrap();
        let paths = RunPaths::new(&dir.path().join("run"));
        assert_eq!(paths.contents().unwrap(), DirContents::Missing);
        assert!(paths.check_fresh_start(false, "resume").is_ok());
        std::fs::create_dir_all(&paths.dir).unwrap();
        std::fs::write(paths.dir.join(".tmpX1"), b"half").unwrap();
        assert_eq!(paths.contents().unwrap(), DirContents::Empty);
        std::fs::write(paths.config(), b"{}").unwrap();
        let refused = paths.check_fresh_start(false, "ailla train --resume").unwrap_err().to_string();
        assert!(refused.contains("holds a run") && refused.contains("--force"), "{refused}");
        assert!(paths.check_fresh_start(true, "resume").is_ok());

        // an ordinary folder, whatever its files are called, is never a run to replace
        let other = RunPaths::new(&dir.path().join("project"));
        std::fs::create_dir_all(other.dir.join("checkpoints")).unwrap();
        std::fs::write(other.dir.join("model.py"), b"print()").unwrap();
        std::fs::write(other.dir.join("checkpoints/notes.txt"), b"mine").unwrap();
        let refused = other.check_fresh_start(true, "resume").unwrap_err().to_string();
        assert!(refused.contains("not an ailla run directory") && refused.contains("model.py"), "{refused}");
        // and clearing a run beside such files removes only ailla's
        std::fs::write(other.config(), b"{}").unwrap();
        std::fs::write(other.dir.join("checkpoints/step-0000010.safetensors"), b"x").unwrap();
        other.clear_previous_run().unwrap();
        assert!(other.dir.join("model.py").is_file() && other.dir.join("checkpoints/notes.txt").is_file());
        assert!(!other.config().exists() && !other.dir.join("checkpoints/step-0000010.safetensors").exists());
    }
}
