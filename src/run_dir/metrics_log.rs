//! `metrics.jsonl`: one JSON record per line, append-only, and exact across pauses, kills and resumes.
//!
//! Every checkpoint unit records how many lines the log had when it was committed. A resume cuts the
//! log back to exactly that many lines — the records of the steps it is about to redo go, nothing
//! else — after checking that each kept line is a record; a damaged or shortened log is an error that
//! names the line, never a silent truncation.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{Error, Result};

/// Appends records, one line each, flushed as written so that a crash loses nothing already measured.
pub struct MetricsLog {
    file: std::fs::File,
    path: PathBuf,
    lines: usize,
}

impl MetricsLog {
    /// An empty log at `path`.
    pub fn create(path: &Path) -> Result<Self> {
        let file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
        crate::faults::filesystem_step("metrics log created");
        Ok(MetricsLog { file, path: path.to_path_buf(), lines: 0 })
    }

    /// The log at `path` cut back to its first `lines` lines, which must each be a record `R`; returns
    /// them too. `checkpoint` names the unit that recorded the length, for the error messages.
    pub fn resume<R: DeserializeOwned>(path: &Path, lines: usize, checkpoint: &str) -> Result<(Self, Vec<R>)> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && lines == 0 => Vec::new(),
            Err(e) => return Err(Error::io(path, e)),
        };
        let mut records = Vec::with_capacity(lines.min(1 << 20));
        let mut offset = 0usize;
        for number in 1..=lines {
            let Some(length) = bytes[offset..].iter().position(|&b| b == b'\n') else {
                return Err(Error::Config {
                    path: path.to_path_buf(),
                    message: format!(
                        "has {} complete lines, but {checkpoint} was saved when it had {lines}: the log was cut \
                         or replaced, so the run cannot be resumed faithfully; start it again with --force",
                        number - 1
                    ),
                });
            };
            let line = &bytes[offset..offset + length];
            let record = std::str::from_utf8(line)
                .map_err(|e| e.to_string())
                .and_then(|text| serde_json::from_str::<R>(text).map_err(|e| e.to_string()))
                .map_err(|e| Error::Config {
                    path: path.to_path_buf(),
                    message: format!(
                        "line {number} is not a metrics record ({e}); the log was damaged, so the run cannot be \
                         resumed faithfully: restore the file, or start the run again with --force"
                    ),
                })?;
            records.push(record);
            offset += length + 1;
        }
        // appends go to the end whatever the cut, so one handle serves both
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|e| Error::io(path, e))?;
        file.set_len(offset as u64).map_err(|e| Error::io(path, e))?;
        crate::faults::filesystem_step("metrics log cut back");
        Ok((MetricsLog { file, path: path.to_path_buf(), lines }, records))
    }

    pub fn write<R: Serialize>(&mut self, record: &R) -> Result<()> {
        let line = serde_json::to_string(record).map_err(|e| Error::Numeric(e.to_string()))?;
        // one write of the whole line: a kill leaves a line whole or a partial last line that no
        // checkpoint counts
        self.file.write_all(format!("{line}\n").as_bytes()).map_err(|e| Error::io(&self.path, e))?;
        self.lines += 1;
        crate::faults::filesystem_step("metrics line appended");
        Ok(())
    }

    /// Lines written so far: what a checkpoint committed now records.
    pub fn lines(&self) -> usize {
        self.lines
    }

    /// Makes the lines so far durable, before a checkpoint that counts them is committed.
    pub fn sync(&self) -> Result<()> {
        self.file.sync_data().map_err(|e| Error::io(&self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resume_keeps_exactly_the_counted_lines_and_names_a_damaged_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let mut log = MetricsLog::create(&path).unwrap();
        for step in 1..=4u32 {
            log.write(&serde_json::json!({ "step": step })).unwrap();
        }
        drop(log);
        let (mut log, kept) = MetricsLog::resume::<serde_json::Value>(&path, 2, "step 2").unwrap();
        assert_eq!(kept.len(), 2);
        log.write(&serde_json::json!({ "step": 3 })).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"step\":1}\n{\"step\":2}\n{\"step\":3}\n");
        // too short for the checkpoint, and a damaged line: errors that say which
        let short = MetricsLog::resume::<serde_json::Value>(&path, 5, "step 9").err().unwrap().to_string();
        assert!(short.contains("3 complete lines") && short.contains("step 9"), "{short}");
        std::fs::write(&path, b"{\"step\":1}\n{\"st\xffep\":2}\n").unwrap();
        let damaged = MetricsLog::resume::<serde_json::Value>(&path, 2, "step 2").err().unwrap().to_string();
        assert!(damaged.contains("line 2"), "{damaged}");
    }
}
