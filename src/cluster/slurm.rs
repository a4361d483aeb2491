//! Slurm: the members as one job array (task `I` runs member `I`), and the report as a job that
//! waits for the whole array.

use std::path::{Path, PathBuf};

use super::{index_ranges, member_command, safe_name, shell_quote, Job};
use crate::{Error, Result};

/// Options written on the `#SBATCH` lines of both jobs, already checked to be one line each.
#[derive(Clone, Debug, Default)]
pub struct SlurmOptions {
    pub partition: Option<String>,
    pub time: Option<String>,
    pub mem: Option<String>,
    pub account: Option<String>,
    /// Further options as written after `#SBATCH`.
    pub extra: Vec<String>,
}

/// Where a submission keeps its scripts.
pub fn scripts_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("slurm")
}

/// Where the jobs' logs go.
pub fn logs_dir(run_dir: &Path) -> PathBuf {
    scripts_dir(run_dir).join("logs")
}

pub fn members_script_path(run_dir: &Path) -> PathBuf {
    scripts_dir(run_dir).join("members.sbatch")
}

pub fn report_script_path(run_dir: &Path) -> PathBuf {
    scripts_dir(run_dir).join("report.sbatch")
}

/// The `#SBATCH` lines both jobs share: each gets the members' CPUs.
fn shared_lines(job: &Job, options: &SlurmOptions, name: &str) -> String {
    let mut s = format!(
        "#SBATCH --job-name={name}\n#SBATCH --chdir={}\n#SBATCH --cpus-per-task={}\n#SBATCH --ntasks=1\n",
        job.working_dir.display(),
        job.threads
    );
    let optional = [
        ("partition", &options.partition),
        ("time", &options.time),
        ("mem", &options.mem),
        ("account", &options.account),
    ];
    for (flag, value) in optional {
        if let Some(value) = value {
            s += &format!("#SBATCH --{flag}={value}\n");
        }
    }
    for extra in &options.extra {
        s += &format!("#SBATCH {extra}\n");
    }
    s
}

/// The array job: one task per member still to run, each `ailla run --resume RUN_DIR --member I`
/// with the member's CPUs as its threads.
pub fn members_script(job: &Job, options: &SlurmOptions) -> String {
    let name = format!("ailla-{}", safe_name(&job.plan.name));
    let mut s = format!(
        "#!/bin/bash\n# Written by `ailla submit slurm`: one task per member of `{}` still to run; task I runs member I\n\
         # (`ailla run --resume RUN_DIR --list-members` numbers them), with {} thread{} as on --cpus-per-task.\n",
        safe_name(&job.plan.name),
        job.threads,
        if job.threads == 1 { "" } else { "s" }
    );
    s += &format!("#SBATCH --array={}\n", index_ranges(&job.members));
    s += &shared_lines(job, options, &name);
    s += &format!("#SBATCH --output={}/member-%a.log\n#SBATCH --open-mode=append\n", logs_dir(&job.run_dir).display());
    s += "set -euo pipefail\n";
    s += "echo \"member $SLURM_ARRAY_TASK_ID, job ${SLURM_ARRAY_JOB_ID}_$SLURM_ARRAY_TASK_ID on $(hostname)\"\n";
    s += &format!("exec {}\n", member_command(job, "\"$SLURM_ARRAY_TASK_ID\""));
    s
}

/// The report job: `ailla run --resume RUN_DIR --report-only`, which names the members that did not
/// finish and fails then.
pub fn report_script(job: &Job, options: &SlurmOptions) -> String {
    let name = format!("ailla-{}-report", safe_name(&job.plan.name));
    let mut s = format!(
        "#!/bin/bash\n# Written by `ailla submit slurm`: the report of `{}`, once every member task has ended.\n",
        safe_name(&job.plan.name)
    );
    // the members' CPUs: it runs with their thread count (recorded in the provenance), which a node
    // that confines it to fewer cores could refuse
    s += &shared_lines(job, options, &name);
    s += &format!("#SBATCH --output={}/report.log\n#SBATCH --open-mode=append\n", logs_dir(&job.run_dir).display());
    s += "set -euo pipefail\n";
    s += &format!(
        "exec {} --threads {} run --resume {} --report-only\n",
        shell_quote(&job.ailla.display().to_string()),
        job.threads,
        shell_quote(&job.run_dir.display().to_string())
    );
    s
}

/// The job id in what `sbatch --parsable` printed: `ID` or `ID;CLUSTER`.
pub fn parse_job_id(stdout: &str) -> Result<String> {
    let line = stdout.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("");
    let id = line.split(';').next().unwrap_or("");
    if !id.is_empty() && id.chars().all(|c| c.is_ascii_digit()) {
        Ok(id.to_string())
    } else {
        Err(Error::Failed(format!("sbatch printed no job id (it printed {stdout:?})")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_are_read_from_parsable_output() {
        assert_eq!(parse_job_id("1234\n").ok().as_deref(), Some("1234"));
        assert_eq!(parse_job_id("77;cluster-a\n").ok().as_deref(), Some("77"));
        assert!(parse_job_id("Submitted batch job 5\n").is_err());
        assert!(parse_job_id("").is_err());
    }
}
