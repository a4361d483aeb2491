//! `ailla submit`: a pipeline's members as cluster jobs, on a run directory shared with the nodes.

use super::*;
use crate::cluster::kubernetes::{self, KubernetesOptions};
use crate::cluster::slurm::{self, SlurmOptions};
use crate::cluster::{check_line, check_path, Job};

/// `threads` is the global `--threads`: the members' threads when `--cpus-per-task` is not given.
pub(super) fn run_submit(mut args: SubmitArgs, threads: Option<usize>, out: &mut dyn Write) -> Result<()> {
    let common = match &mut args.scheduler {
        Scheduler::Slurm(args) => &mut args.common,
        Scheduler::Kubernetes(args) => &mut args.common,
    };
    common.cpus_per_task = common.cpus_per_task.or(threads);
    match args.scheduler {
        Scheduler::Slurm(args) => submit_slurm(args, out),
        Scheduler::Kubernetes(args) => write_kubernetes(args, out),
    }
}

/// A resolved submission: the plan, its text, and what every task runs.
struct Submission {
    plan: crate::pipeline::Plan,
    text: String,
    /// Whether the run directory holds this plan already (a resubmission).
    held: bool,
    working_dir: PathBuf,
    run_dir: PathBuf,
    ailla: PathBuf,
    threads: usize,
    /// Members that have not finished, by index.
    pending: Vec<usize>,
}

impl Submission {
    fn job(&self, members: Vec<usize>) -> Job<'_> {
        Job {
            plan: &self.plan,
            run_dir: self.run_dir.clone(),
            working_dir: self.working_dir.clone(),
            ailla: self.ailla.clone(),
            threads: self.threads,
            members,
        }
    }

    /// Shares the run directory with the tasks (the plan, the pipeline and the inputs' provenance).
    fn share(&self, common: &ClusterArgs) -> Result<()> {
        share_run_dir(&self.plan, &self.text, &common.pipeline, self.threads, None).map(|_| ())
    }
}

/// Resolves and checks everything a submission writes, writing nothing.
fn prepare(common: &ClusterArgs, default_ailla: impl FnOnce() -> Result<PathBuf>) -> Result<Submission> {
    let (plan, text) = load_plan(&common.pipeline, &common.changes)?;
    if plan.domains.is_some() {
        return Err(Error::invalid(
            "pipeline",
            format!(
                "`{}` is a domains pipeline, one pool run rather than sweep members; run it with `ailla run`",
                plan.name
            ),
        ));
    }
    let threads = common.cpus_per_task.or(plan.threads).unwrap_or(1);
    if threads == 0 {
        return Err(Error::invalid("--cpus-per-task", "must be at least 1"));
    }
    if let Some(mem) = &common.mem {
        check_line("--mem", mem)?;
    }
    let working_dir = std::env::current_dir().map_err(|e| Error::io(".", e))?;
    check_path("the working directory", &working_dir)?;
    let run_dir = crate::pipeline::normalize(&working_dir.join(&plan.output_dir));
    check_path("outputs.dir", &run_dir)?;
    let ailla = match &common.ailla {
        Some(path) => path.clone(),
        None => default_ailla()?,
    };
    check_path("--ailla", &ailla)?;
    let held = check_shared_run_dir(&plan, &common.pipeline)?;
    let pending = plan
        .members
        .iter()
        .enumerate()
        .filter(|(_, m)| crate::pipeline::run::member_state(&run_dir, m) != crate::pipeline::run::MemberState::Finished)
        .map(|(index, _)| index)
        .collect();
    Ok(Submission { plan, text, held, working_dir, run_dir, ailla, threads, pending })
}

/// This program, by its absolute path: the nodes run the binary that submitted them.
fn this_program() -> Result<PathBuf> {
    std::env::current_exe().map_err(|e| Error::io("the running ailla", e))
}

fn submit_slurm(args: SlurmArgs, out: &mut dyn Write) -> Result<()> {
    for (field, value) in [("--partition", &args.partition), ("--time", &args.time), ("--account", &args.account)] {
        if let Some(value) = value {
            check_line(field, value)?;
        }
    }
    for option in &args.sbatch_options {
        check_line("--sbatch", option)?;
    }
    let submission = prepare(&args.common, this_program)?;
    let options = SlurmOptions {
        partition: args.partition.clone(),
        time: args.time.clone(),
        mem: args.common.mem.clone(),
        account: args.account.clone(),
        extra: args.sbatch_options.clone(),
    };
    let plan = &submission.plan;
    if submission.pending.is_empty() {
        return write_out(
            out,
            &format!(
                "every member of `{}` has finished in {}; nothing was submitted (rebuild its report with `ailla run \
                 --resume {} --report-only`)\n",
                plan.name,
                submission.run_dir.display(),
                submission.run_dir.display()
            ),
        );
    }
    let job = submission.job(submission.pending.clone());
    let members_script = slurm::members_script(&job, &options);
    let report_script = slurm::report_script(&job, &options);
    let (members_path, report_path) =
        (slurm::members_script_path(&submission.run_dir), slurm::report_script_path(&submission.run_dir));
    if args.common.dry_run {
        return write_out(
            out,
            &format!(
                "# dry run: nothing written or submitted. `ailla submit slurm` would write {}:\n{members_script}\n\
                 # and {}:\n{report_script}\n# then run: sbatch --parsable {}; sbatch --parsable \
                 --dependency=afterany:<the array's job id> {}\n",
                members_path.display(),
                report_path.display(),
                members_path.display(),
                report_path.display()
            ),
        );
    }
    // Slurm judges the array (its controller, partition, time, account) before anything is written
    check_with_slurm(&members_script)?;
    submission.share(&args.common)?;
    std::fs::create_dir_all(slurm::logs_dir(&submission.run_dir))
        .map_err(|e| Error::io(slurm::logs_dir(&submission.run_dir), e))?;
    checkpoint::atomic_write(&members_path, members_script.as_bytes())?;
    checkpoint::atomic_write(&report_path, report_script.as_bytes())?;
    let members_job = sbatch(&[], &members_path)?;
    let report_job = sbatch(&[format!("--dependency=afterany:{members_job}")], &report_path).map_err(|e| {
        Error::Failed(format!(
            "{e}; the members are queued as job {members_job}: submit the report after them with `sbatch \
             --dependency=afterany:{members_job} {}`",
            report_path.display()
        ))
    })?;
    let count = submission.pending.len();
    let again = if submission.held { " again (the finished ones are left as they are)" } else { "" };
    write_out(
        out,
        &format!(
            "submitted {count} of {} member{} of `{}`{again} as Slurm job array {members_job} (tasks {}), {} thread{} \
             each, and the report as job {report_job} after them\n  follow: squeue -j {members_job},{report_job}\n  \
             logs: {}\n  report: {} once job {report_job} has run; it fails naming any member that did not finish\n\
             members job: {members_job}\nreport job: {report_job}\n",
            plan.members.len(),
            if plan.members.len() == 1 { "" } else { "s" },
            plan.name,
            crate::cluster::index_ranges(&submission.pending),
            submission.threads,
            if submission.threads == 1 { "" } else { "s" },
            slurm::logs_dir(&submission.run_dir).display(),
            submission.run_dir.join("report.html").display(),
        ),
    )
}

/// `sbatch --test-only` on the script: whether Slurm would accept it, submitting nothing.
fn check_with_slurm(script: &str) -> Result<()> {
    use std::io::Write as _;
    let mut child = std::process::Command::new("sbatch")
        .arg("--test-only")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| {
            Error::invalid(
                "sbatch",
                format!("cannot run sbatch ({e}): submit from a machine with Slurm's client, or see the scripts with --dry-run"),
            )
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes()).map_err(|e| Error::io("sbatch --test-only", e))?;
    }
    let output = child.wait_with_output().map_err(|e| Error::io("sbatch --test-only", e))?;
    if output.status.success() {
        return Ok(());
    }
    Err(Error::invalid(
        "sbatch",
        format!(
            "Slurm would refuse the job array (sbatch --test-only said: {}); nothing was written or submitted",
            String::from_utf8_lossy(&output.stderr).trim()
        ),
    ))
}

/// Runs `sbatch --parsable EXTRA SCRIPT` and returns the job id.
fn sbatch(extra: &[String], script: &Path) -> Result<String> {
    let output = std::process::Command::new("sbatch")
        .arg("--parsable")
        .args(extra)
        .arg(script)
        .output()
        .map_err(|e| Error::io("sbatch", e))?;
    if !output.status.success() {
        return Err(Error::Failed(format!(
            "sbatch {} was refused: {}",
            script.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    crate::cluster::slurm::parse_job_id(&String::from_utf8_lossy(&output.stdout))
}

fn write_kubernetes(args: KubernetesArgs, out: &mut dyn Write) -> Result<()> {
    check_line("--image", &args.image)?;
    check_line("--volume-claim", &args.volume_claim)?;
    if let Some(namespace) = &args.namespace {
        check_line("--namespace", namespace)?;
    }
    // the image's ailla, found on its PATH, unless told otherwise
    let submission = prepare(&args.common, || Ok(PathBuf::from("ailla")))?;
    let options = KubernetesOptions {
        image: args.image.clone(),
        volume_claim: args.volume_claim.clone(),
        namespace: args.namespace.clone(),
        mem: args.common.mem.clone(),
    };
    let all = (0..submission.plan.members.len()).collect();
    let manifest = kubernetes::manifest(&submission.job(all), &options)?;
    let path = kubernetes::manifest_path(&submission.run_dir);
    if args.common.dry_run {
        return write_out(out, &format!("# dry run: nothing written. {} would hold:\n{manifest}", path.display()));
    }
    submission.share(&args.common)?;
    checkpoint::atomic_write(&path, manifest.as_bytes())?;
    write_out(
        out,
        &format!(
            "wrote {} ({} pods, one per member); apply it with `kubectl apply -f {}`, and once the Job is complete \
             write the report with `ailla run --resume {} --report-only`\n",
            path.display(),
            submission.plan.members.len(),
            path.display(),
            submission.run_dir.display()
        ),
    )
}
