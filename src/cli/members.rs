//! A pipeline run split across processes: `ailla run --list-members`, `--member`, `--report-only`,
//! and the shared run directory that `ailla submit` prepares for them.

use super::*;
use crate::pipeline::run::{MemberOutcome, MemberState};
use crate::pipeline::Plan;

/// A domains pipeline is one pool run, not members that could be split.
fn require_members(plan: &Plan, flag: &str) -> Result<()> {
    if plan.domains.is_some() {
        return Err(Error::invalid(
            flag,
            format!("`{}` is a domains pipeline, one pool run rather than sweep members; run it whole", plan.name),
        ));
    }
    Ok(())
}

/// The plan that `run` names: the pipeline file's, or the one stored in `--resume`'s directory.
fn named_plan(args: &RunArgs) -> Result<(Plan, Option<String>)> {
    match (&args.pipeline, &args.resume) {
        (_, Some(dir)) => Ok((resumed_plan(dir)?, None)),
        (Some(path), None) => {
            let (plan, text) = load_plan(path, &args.changes)?;
            Ok((plan, Some(text)))
        }
        (None, None) => Err(Error::invalid("pipeline", "give a pipeline file or --resume RUN_DIR")),
    }
}

pub(super) fn list_members(args: &RunArgs, out: &mut dyn Write) -> Result<()> {
    let (plan, _) = named_plan(args)?;
    require_members(&plan, "--list-members")?;
    let width = plan.members.iter().map(|m| m.name.len()).max().unwrap_or(6).max(6);
    let mut s = format!("{:>5}  {:<width$}  state in {}\n", "index", "member", plan.output_dir.display());
    for (index, member) in plan.members.iter().enumerate() {
        let state = crate::pipeline::run::member_state(&plan.output_dir, member);
        s += &format!("{index:>5}  {:<width$}  {}\n", member.name, state.describe());
    }
    write_out(out, &s)
}

/// Checks that `plan.output_dir` can be shared by processes that each run some of its members, and
/// returns whether it holds this plan already (from an earlier start or submission). A directory
/// holding a different plan, or files that are not a run's, is refused.
pub(super) fn check_shared_run_dir(plan: &Plan, pipeline_file: &Path) -> Result<bool> {
    let dir = &plan.output_dir;
    if !dir.join(crate::pipeline::run::PLAN_FILE).is_file() {
        crate::pipeline::run::check_fresh_output(dir, false)?;
        return Ok(false);
    }
    let mut stored = crate::pipeline::run::read_plan(dir)?;
    stored.output_dir = plan.output_dir.clone();
    if stored != *plan {
        return Err(Error::Config {
            path: dir.clone(),
            message: format!(
                "holds a run of a different plan ({} differs from what {} resolves to now); set the pipeline's \
                 output_dir to another directory, or continue the stored plan with `ailla run --resume {}`",
                crate::pipeline::run::PLAN_FILE,
                pipeline_file.display(),
                dir.display()
            ),
        });
    }
    Ok(true)
}

/// Prepares `plan.output_dir` to be shared (see [`check_shared_run_dir`]): a directory that does not
/// hold the plan yet gets it, the pipeline text and the provenance of the inputs (with `cores` as each
/// member's threads). Returns whether it held the plan already.
pub(super) fn share_run_dir(
    plan: &Plan,
    text: &str,
    pipeline_file: &Path,
    cores: usize,
    operator: Option<&str>,
) -> Result<bool> {
    if check_shared_run_dir(plan, pipeline_file)? {
        return Ok(true);
    }
    let dir = &plan.output_dir;
    // hashed before anything is written, so that unreadable inputs leave no half-made directory
    let mut provenance = crate::report::provenance::collect(plan, pipeline_file, cores)?;
    provenance.invocation = Some(crate::report::provenance::invocation(&plan.name, operator));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    crate::pipeline::run::write_plan(plan, text)?;
    let json = serde_json::to_string_pretty(&provenance).map_err(|e| Error::Numeric(e.to_string()))?;
    checkpoint::atomic_write(&dir.join(crate::report::PROVENANCE_FILE), json.as_bytes())?;
    Ok(false)
}

/// `run --member`: one member, through the same [`crate::pipeline::run::execute`] as a whole run, with
/// every thread given to it. No run-directory lock is taken (other members run beside it); the member's
/// own directory is locked by its training.
pub(super) fn run_one_member(args: &RunArgs, key: &str, threads: Option<usize>, out: &mut dyn Write) -> Result<()> {
    let (mut plan, text) = named_plan(args)?;
    require_members(&plan, "--member")?;
    let index = crate::pipeline::run::member_index(&plan, key)?;
    if let (Some(text), Some(path)) = (&text, &args.pipeline) {
        // the plan as resolved, not as this process runs it: the threads are the command line's
        let cores = settle_threads(&mut plan.clone(), threads)?;
        share_run_dir(&plan, text, path, cores, args.operator.as_deref())?;
    }
    settle_threads(&mut plan, threads)?;
    let total = plan.members.len();
    let member = plan.members[index].clone();
    plan.members = vec![member];
    let resume = args.resume.is_some();
    let device = crate::pipeline::run::plan_device(&plan, None)?;
    let outcomes = crate::pipeline::run::execute(&plan, resume, args.force, None, device);
    let mut s = crate::pipeline::run::summary_table(&outcomes);
    s += &format!(
        "\nmember {index} of {total} ({}) in {}; the report: `ailla run --resume {} --report-only` once every member \
         is done\n",
        plan.members[0].name,
        plan.output_dir.display(),
        plan.output_dir.display()
    );
    write_out(out, &s)?;
    match outcomes.into_iter().next().map(|o| o.result) {
        Some(Err(Error::Interrupted(_))) => Err(Error::Interrupted(format!(
            "continue with `ailla run --resume {} --member {index}`",
            plan.output_dir.display()
        ))),
        Some(Err(e)) => Err(Error::Failed(format!("member `{}` failed: {e}", plan.members[0].name))),
        Some(Ok(_)) => Ok(()),
        None => Err(Error::Failed(format!("member `{}` did not run", plan.members[0].name))),
    }
}

/// Where a cluster job's log of member `index` is, when `ailla submit` wrote one.
fn member_log(run_dir: &Path, index: usize) -> Option<PathBuf> {
    let log = crate::cluster::member_log(run_dir, index);
    log.is_file().then_some(log)
}

/// `run --resume DIR --report-only`: the end of a whole run (provenance, report, table), from what the
/// members stored, training nothing. The inputs' provenance is the one stored when the run directory
/// was shared (else collected now); the numerical environment is this machine's, the wall time the
/// longest member's.
pub(super) fn report_only(
    plan: &Plan,
    pipeline_file: &Path,
    cores: usize,
    json_output: bool,
    operator: Option<&str>,
    out: &mut dyn Write,
) -> Result<()> {
    require_members(plan, "--report-only")?;
    let mut outcomes = Vec::new();
    let mut unfinished = Vec::new();
    for (index, member) in plan.members.iter().enumerate() {
        let dir = plan.output_dir.join(&member.name);
        let state = crate::pipeline::run::member_state(&plan.output_dir, member);
        let summary_path = crate::train::RunPaths::new(&dir).summary();
        let result = match state {
            MemberState::Finished => {
                let text = std::fs::read_to_string(&summary_path).map_err(|e| Error::io(&summary_path, e))?;
                serde_json::from_str::<crate::train::TrainSummary>(&text)
                    .map_err(|e| Error::Config { path: summary_path.clone(), message: e.to_string() })
            }
            MemberState::Unfinished | MemberState::NotStarted => {
                let log = member_log(&plan.output_dir, index)
                    .map_or(String::new(), |log| format!("; its log: {}", log.display()));
                unfinished.push(format!("`{}` (index {index}, {})", member.name, state.describe()));
                Err(Error::Failed(format!("{}{log}", state.describe())))
            }
        };
        outcomes.push(MemberOutcome { name: member.name.clone(), dir, result });
    }
    let stored = plan.output_dir.join(crate::report::PROVENANCE_FILE);
    let mut provenance: crate::report::provenance::Provenance = match std::fs::read_to_string(&stored) {
        Ok(text) => {
            serde_json::from_str(&text).map_err(|e| Error::Config { path: stored.clone(), message: e.to_string() })?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            crate::report::provenance::collect(plan, pipeline_file, cores)?
        }
        Err(e) => return Err(Error::io(&stored, e)),
    };
    if provenance.invocation.is_none() {
        provenance.invocation = Some(crate::report::provenance::invocation(&plan.name, operator));
    }
    provenance.threads = cores;
    provenance.numerics = Some(crate::engine::environment::current());
    provenance.wall_time_seconds =
        outcomes.iter().filter_map(|o| o.result.as_ref().ok()).map(|s| s.seconds).fold(0.0, f64::max);
    // each member ran in a process of its own; this one's peak says nothing about them
    provenance.peak_memory_mib = None;
    close_run(plan, &outcomes, None, &provenance, json_output, out)?;
    if unfinished.is_empty() {
        return Ok(());
    }
    Err(Error::Failed(format!(
        "{} of {} members did not finish: {}; the report lists them as failed. Run them again (`ailla submit` \
         resubmits only these, or `ailla run --resume {}`), then report again",
        unfinished.len(),
        plan.members.len(),
        unfinished.join(", "),
        plan.output_dir.display()
    )))
}
