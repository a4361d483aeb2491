//! `ailla run` and `ailla validate`.

use super::*;

pub(super) fn load_plan(path: &Path, changes: &PlanChanges) -> Result<(crate::pipeline::Plan, String)> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    match crate::pipeline::plan_with(&text, path, &changes.options()) {
        Ok(plan) => Ok((plan, text)),
        Err(problems) => {
            crate::eprint_lossy!("{}", crate::pipeline::diagnostics::render(path, &text, &problems));
            Err(Error::Config {
                path: path.to_path_buf(),
                message: format!(
                    "{} problem{} found; nothing was run",
                    problems.len(),
                    if problems.len() == 1 { "" } else { "s" }
                ),
            })
        }
    }
}

pub(super) fn run_validate(args: ValidateArgs, out: &mut dyn Write) -> Result<()> {
    let (plan, _) = load_plan(&args.pipeline, &args.changes)?;
    if args.json {
        let output = json::ValidateOutput {
            pipeline: args.pipeline.display().to_string(),
            output_dir: plan.output_dir.display().to_string(),
            members: plan
                .members
                .iter()
                .map(|m| json::PlannedMember { name: m.name.clone(), steps: m.config.steps })
                .collect(),
            domains: plan.domains.iter().flat_map(|d| d.domains.sources.iter().map(|s| s.name.clone())).collect(),
        };
        return write_out(
            out,
            &(serde_json::to_string_pretty(&output).map_err(|e| Error::Numeric(e.to_string()))? + "\n"),
        );
    }
    if let Some(domains) = &plan.domains {
        let names: Vec<&str> = domains.domains.sources.iter().map(|s| s.name.as_str()).collect();
        return write_out(
            out,
            &format!(
                "{}: valid; recruitment of specialised models over {} domains ({}) into {}\n",
                args.pipeline.display(),
                names.len(),
                names.join(", "),
                plan.output_dir.display()
            ),
        );
    }
    let mut s = format!(
        "{}: valid; {} member{} into {}\n",
        args.pipeline.display(),
        plan.members.len(),
        if plan.members.len() == 1 { "" } else { "s" },
        plan.output_dir.display()
    );
    for member in &plan.members {
        s += &format!("  {}  ({} steps)\n", member.name, member.config.steps);
    }
    write_out(out, &s)
}

pub(super) fn run_pipeline(
    args: RunArgs,
    threads: Option<usize>,
    device: Option<crate::engine::cuda::StepDevice>,
    out: &mut dyn Write,
) -> Result<()> {
    if args.jobs == Some(0) {
        return Err(Error::invalid("--jobs", "must be at least 1"));
    }
    check_operator(args.operator.as_deref())?;
    if args.list_members {
        return list_members(&args, out);
    }
    if let Some(key) = &args.member {
        return run_one_member(&args, key, threads, out);
    }
    let (mut plan, resume, pipeline_file, text) = match (&args.pipeline, &args.resume) {
        (_, Some(dir)) => (resumed_plan(dir)?, true, dir.join("pipeline.yaml"), None),
        (Some(path), None) => {
            let (plan, text) = load_plan(path, &args.changes)?;
            crate::pipeline::run::check_fresh_output(&plan.output_dir, args.force)?;
            (plan, false, path.clone(), Some(text))
        }
        (None, None) => return Err(Error::invalid("pipeline", "give a pipeline file or --resume RUN_DIR")),
    };
    std::fs::create_dir_all(&plan.output_dir).map_err(|e| Error::io(&plan.output_dir, e))?;
    let _lock = crate::run_dir::RunLock::acquire(&plan.output_dir, &mut |note| crate::eprintln_lossy!("{note}"))?;
    if let Some(text) = &text {
        crate::pipeline::run::write_plan(&plan, text)?;
    }
    let cores = settle_threads(&mut plan, threads)?;
    if args.report_only {
        return report_only(&plan, &pipeline_file, cores, args.json, args.operator.as_deref(), out);
    }
    let mut provenance = crate::report::provenance::collect(&plan, &pipeline_file, cores)?;
    provenance.invocation = Some(crate::report::provenance::invocation(&plan.name, args.operator.as_deref()));
    let started = std::time::Instant::now();
    // a domains pipeline is one pool run; any other pipeline, its sweep members
    let (outcomes, domains) = match &plan.domains {
        Some(domains) => {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(cores)
                .build()
                .map_err(|e| Error::Numeric(format!("cannot start {cores} worker threads: {e}")))?;
            let progress = crate::train::Progress::notes(&format!("[{}] ", plan.name));
            (Vec::new(), Some(pool.install(|| crate::recruit::domains::run(domains, &plan.output_dir, &progress))?))
        }
        None => {
            let device = crate::pipeline::run::plan_device(&plan, device)?;
            (crate::pipeline::run::execute(&plan, resume, args.force, args.jobs, device), None)
        }
    };
    provenance.wall_time_seconds = started.elapsed().as_secs_f64();
    provenance.peak_memory_mib = crate::bench::peak_memory_mib();
    close_run(&plan, &outcomes, domains.as_ref(), &provenance, args.json, out)?;
    let interrupted = outcomes.iter().any(|o| matches!(o.result, Err(Error::Interrupted(_))));
    if interrupted {
        return Err(Error::Interrupted(format!("continue with `ailla run --resume {}`", plan.output_dir.display())));
    }
    let failed = outcomes.iter().filter(|o| o.result.is_err()).count();
    if failed > 0 {
        return Err(Error::Failed(format!("{failed} of {} runs failed (see the table above)", outcomes.len())));
    }
    Ok(())
}

/// `--operator` names a person or team on the audit card: refused empty, over 200 characters, or with
/// a control character (which would break the card's table).
pub(super) fn check_operator(operator: Option<&str>) -> Result<()> {
    match operator {
        Some(name) if name.trim().is_empty() => Err(Error::invalid("--operator", "is empty: give a name")),
        Some(name) if name.chars().count() > 200 => Err(Error::invalid("--operator", "is longer than 200 characters")),
        Some(name) if name.chars().any(char::is_control) => {
            Err(Error::invalid("--operator", "holds a control character"))
        }
        _ => Ok(()),
    }
}

/// The plan stored in a run directory, continued where it is whatever directory the command is given
/// from.
pub(super) fn resumed_plan(dir: &Path) -> Result<crate::pipeline::Plan> {
    let mut plan = crate::pipeline::run::read_plan(dir)?;
    plan.output_dir = dir.to_path_buf();
    Ok(plan)
}

/// Sets the plan's cores from `--threads` (checking the pipeline's `train.threads` when it is used
/// instead) and returns them: every core when neither says.
pub(super) fn settle_threads(plan: &mut crate::pipeline::Plan, threads: Option<usize>) -> Result<usize> {
    if threads.is_some() {
        plan.threads = threads;
    } else if let Some(threads) = plan.threads {
        check_threads("train.threads", threads)?;
    }
    Ok(plan.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())))
}

/// Writes the provenance and the report of a run, and prints its table (or JSON) and closing line.
pub(super) fn close_run(
    plan: &crate::pipeline::Plan,
    outcomes: &[crate::pipeline::run::MemberOutcome],
    domains: Option<&crate::recruit::domains::DomainsSummary>,
    provenance: &crate::report::provenance::Provenance,
    json_output: bool,
    out: &mut dyn Write,
) -> Result<()> {
    let json = serde_json::to_string_pretty(provenance).map_err(|e| Error::Numeric(e.to_string()))?;
    checkpoint::atomic_write(&plan.output_dir.join(crate::report::PROVENANCE_FILE), json.as_bytes())?;
    let report = crate::report::build(&plan.output_dir)?;
    crate::report::write(&plan.output_dir, &report)?;
    let checked: usize = report.groups.iter().map(|g| g.certificates.len()).sum();
    let violations: usize = report.groups.iter().flat_map(|g| &g.certificates).map(|c| c.violations).sum();
    let (mut s, pool) = match domains {
        _ if json_output => {
            let output = json::RunOutput {
                run_dir: plan.output_dir.display().to_string(),
                report: plan.output_dir.join("report.html").display().to_string(),
                seconds: provenance.wall_time_seconds,
                certified: checked,
                violations,
                members: outcomes
                    .iter()
                    .map(|o| json::RunMember {
                        name: o.name.clone(),
                        error: o.result.as_ref().err().map(|e| e.to_string()),
                        test: o.result.as_ref().ok().map(|s| s.test.clone()),
                        dial: o
                            .result
                            .as_ref()
                            .map_or(Vec::new(), |s| s.dial.iter().map(json::DialPoint::of).collect()),
                    })
                    .collect(),
            };
            (serde_json::to_string_pretty(&output).map_err(|e| Error::Numeric(e.to_string()))? + "\n", None)
        }
        Some(summary) => (
            crate::report::domains_markdown(summary),
            Some(format!("; pool: {}", plan.output_dir.join("pool").display())),
        ),
        None => (crate::pipeline::run::summary_table(outcomes), Some(String::new())),
    };
    // the closing line is the table's; JSON carries the same facts as fields
    if let Some(pool) = pool {
        // the rules' verdict first: a bound that holds is the engine's arithmetic, not a rule met
        let met = report
            .card
            .rules_met
            .last()
            .map_or(String::new(), |m| format!("rules met at λ = {}: {} of {}; ", m.lambda, m.met, m.rules));
        let bounds = match (checked, violations) {
            (0, _) => String::new(),
            (_, 0) => format!("{met}certificate checks: 0 violations; "),
            (_, v) => format!("{met}{v} certified-bound violations (see the report's certificates); "),
        };
        s += &format!(
            "\nrun directory: {}  ({:.1} s){pool}; {bounds}report: {} (also report.md, report.json)\n",
            plan.output_dir.display(),
            provenance.wall_time_seconds,
            plan.output_dir.join("report.html").display()
        );
    }
    write_out(out, &s)
}
