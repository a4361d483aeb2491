//! A plan's members on a cluster scheduler: the scripts and manifests that run each member as a task
//! of its own (`ailla run --resume RUN_DIR --member I`), on machines that share the run directory.
//! The scheduler does the scheduling; ailla only says what each task runs, with how many threads.

pub mod kubernetes;
pub mod slurm;

use std::path::{Path, PathBuf};

use crate::pipeline::Plan;
use crate::{Error, Result};

/// What every task of a submission runs, whatever the scheduler.
pub struct Job<'a> {
    pub plan: &'a Plan,
    /// The run directory, absolute: tasks start elsewhere.
    pub run_dir: PathBuf,
    /// The directory the plan was resolved from, absolute: relative data and rules paths in the plan
    /// are relative to it, so every task runs in it.
    pub working_dir: PathBuf,
    /// The ailla that the tasks run.
    pub ailla: PathBuf,
    /// Each member's worker threads (its CPUs).
    pub threads: usize,
    /// The indices of the members to run: all of a new run, the unfinished ones of a resubmission.
    pub members: Vec<usize>,
}

/// The Slurm log of member `index` of the run in `run_dir` (appended to by every submission).
pub fn member_log(run_dir: &Path, index: usize) -> PathBuf {
    slurm::logs_dir(run_dir).join(format!("member-{index}.log"))
}

/// `name` as a scheduler's job name and a script's comment can carry it: letters, digits, `-`, `_`
/// and `.` kept, anything else (spaces, newlines) a `-`, so that a pipeline's name cannot end a line.
pub fn safe_name(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '-' }).collect()
}

/// `s` quoted for a POSIX shell: in single quotes, each `'` closed, escaped and reopened.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// An error unless `value` (given for `field`) is one line of printable characters, so that it
/// cannot end the line of a script it is written into and start another.
pub fn check_line(field: &str, value: &str) -> Result<()> {
    if value.trim().is_empty() {
        return Err(Error::invalid(field, "is empty"));
    }
    if value.chars().any(char::is_control) {
        return Err(Error::invalid(field, "must be one line, without control characters"));
    }
    Ok(())
}

/// An error unless `path` can be written on an `#SBATCH` line and in a manifest as it is: UTF-8,
/// without whitespace, quotes, `%` (sbatch's file-name patterns) or control characters.
pub fn check_path(field: &str, path: &Path) -> Result<String> {
    let Some(text) = path.to_str() else {
        return Err(Error::invalid(field, format!("{} is not UTF-8", path.display())));
    };
    if let Some(bad) = text.chars().find(|c| c.is_whitespace() || c.is_control() || "'\"%\\".contains(*c)) {
        return Err(Error::invalid(
            field,
            format!("{text} holds {bad:?}, which job scripts cannot carry safely; use a path without it"),
        ));
    }
    Ok(text.to_string())
}

/// The indices as a job array writes them: `0-3,5,7-8`.
pub fn index_ranges(indices: &[usize]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut at = 0;
    while at < indices.len() {
        let first = indices[at];
        let mut last = first;
        while at + 1 < indices.len() && indices[at + 1] == last + 1 {
            at += 1;
            last = indices[at];
        }
        parts.push(if first == last { first.to_string() } else { format!("{first}-{last}") });
        at += 1;
    }
    parts.join(",")
}

/// The command a task runs, for a shell: `INDEX` is the shell expression of the member's index.
fn member_command(job: &Job, index: &str) -> String {
    format!(
        "{} --threads {} run --resume {} --member {index}",
        shell_quote(&job.ailla.display().to_string()),
        job.threads,
        shell_quote(&job.run_dir.display().to_string())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_are_written_as_ranges_and_strings_are_quoted_for_the_shell() {
        assert_eq!(index_ranges(&[0, 1, 2, 3, 5, 7, 8]), "0-3,5,7-8");
        assert_eq!(safe_name("my sweep\n#SBATCH x"), "my-sweep--SBATCH-x");
        assert_eq!(index_ranges(&[4]), "4");
        assert_eq!(index_ranges(&[]), "");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert!(check_line("--partition", "cpu\n#SBATCH --x").is_err());
        assert!(check_line("--partition", " ").is_err());
        assert!(check_path("outputs.dir", Path::new("/runs/a b")).is_err());
        assert!(check_path("outputs.dir", Path::new("/runs/50%")).is_err());
        assert_eq!(check_path("outputs.dir", Path::new("/runs/a-b")).ok().as_deref(), Some("/runs/a-b"));
    }
}
