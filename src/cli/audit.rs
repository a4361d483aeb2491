//! `ailla verify` and `ailla diff`: what an auditor reads.

use super::*;
use crate::report::compare::{Difference, Tolerance, ValueKind};
use crate::report::diff::RunDiff;
use crate::report::stats::Estimate;
use crate::report::verify::{Verdict, Verification};

fn to_json<T: serde::Serialize>(value: &T) -> Result<String> {
    Ok(serde_json::to_string_pretty(value).map_err(|e| Error::Numeric(e.to_string()))? + "\n")
}

pub(super) fn run_verify(args: VerifyArgs, out: &mut dyn Write) -> Result<()> {
    let verification = crate::report::verify::verify(&args.run_dir, args.replay_dir.as_deref())?;
    let text = if args.json { to_json(&verification)? } else { verify_text(&verification) };
    write_out(out, &text)?;
    let beyond = verification.beyond_tolerance();
    match verification.verdict {
        Verdict::Identical => Ok(()),
        Verdict::WithinTolerance => Err(Error::WithinTolerance(format!(
            "{}: reproduced within the stated tolerances in another numerical environment, not bit for bit \
             ({} difference{})",
            args.run_dir.display(),
            verification.differences.len(),
            plural(verification.differences.len())
        ))),
        Verdict::Failed => Err(Error::Failed(format!(
            "{}: verification failed: {}",
            args.run_dir.display(),
            failure_reason(&verification, beyond)
        ))),
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn failure_reason(v: &Verification, beyond: usize) -> String {
    if !v.replayed {
        "an input is not the one the run read, so nothing was replayed".into()
    } else if !v.replay_errors.is_empty() {
        format!("{} member{} failed on replay", v.replay_errors.len(), plural(v.replay_errors.len()))
    } else {
        format!("{beyond} difference{} beyond tolerance", plural(beyond))
    }
}

fn tolerance_text(tolerance: Option<&Tolerance>) -> String {
    match tolerance {
        Some(t) => format!("|Δ| ≤ {:e} + {:e}·|stored|", t.absolute, t.relative),
        None => "exact".into(),
    }
}

fn difference_line(d: &Difference, same_environment: bool) -> String {
    let judged = match (&d.tolerance, same_environment) {
        (_, true) => "exact: the recorded environment".to_string(),
        (Some(t), false) => tolerance_text(Some(t)),
        (None, false) => "exact".to_string(),
    };
    let field = if d.field.is_empty() { "(the file)".to_string() } else { d.field.clone() };
    format!("  {}  {field}\n      stored {}  replayed {}  ({judged})\n", d.file, d.stored, d.replayed)
}

fn verify_text(v: &Verification) -> String {
    let mut s = format!(
        "verify {}: pipeline `{}`, {} member{} ({}), seeds {}; replayed with {} thread{} as recorded\n",
        v.run_dir,
        v.pipeline,
        v.members.len(),
        plural(v.members.len()),
        v.members.join(", "),
        v.seeds.iter().map(u64::to_string).collect::<Vec<_>>().join(", "),
        v.threads,
        plural(v.threads)
    );
    s += "\nenvironment (* decides the last bits)\n";
    let width = v.environment.iter().map(|r| r.recorded.chars().count()).max().unwrap_or(8).max(8);
    s += &format!("  {:<15} {:<width$}  {}\n", "", "recorded", "here");
    for row in &v.environment {
        let mark = if row.decides_bits { "*" } else { " " };
        s += &format!("  {:<14}{mark} {:<width$}  {}\n", row.field, row.recorded, row.here);
    }
    if v.same_environment {
        s += "the recorded numerical environment: every compared value must be bit-identical\n";
    } else {
        s += "another numerical environment: values are compared within these tolerances\n";
        for row in &v.tolerances {
            s += &format!("  {:<78} {}\n", row.applies_to, tolerance_text(row.tolerance.as_ref()));
        }
    }
    s += "\nleft out by name\n";
    for field in &v.excluded {
        s += &format!("  {} ({}): {}\n", field.field, field.files, field.why);
    }
    s += "not compared\n";
    for line in &v.not_compared {
        s += &format!("  {line}\n");
    }
    if let Some(dir) = &v.replay_dir {
        s += &format!("the replay is kept in {dir}\n");
    }
    s += "\n";
    if !v.replayed {
        s += "an input differs from the one the run read; nothing was replayed\n";
    }
    for error in &v.replay_errors {
        s += &format!("failed on replay: {error}\n");
    }
    if v.replayed && v.replay_errors.is_empty() {
        s += &format!(
            "compared {} files: {} numbers, {} tensors\n",
            v.files_compared, v.numbers_compared, v.tensors_compared
        );
    }
    let beyond: Vec<&Difference> = v.differences.iter().filter(|d| !d.within_tolerance).collect();
    let within = v.differences.len() - beyond.len();
    s += &format!("differences: {} beyond tolerance, {within} within\n", beyond.len());
    for d in &beyond {
        s += &difference_line(d, v.same_environment);
    }
    if within > 0 {
        // every one is in --json; here, how many per file and kind
        let mut counts: std::collections::BTreeMap<(&str, ValueKind), usize> = Default::default();
        for d in v.differences.iter().filter(|d| d.within_tolerance) {
            *counts.entry((d.file.as_str(), d.kind)).or_default() += 1;
        }
        s += "within tolerance, by file (--json lists each):\n";
        for ((file, kind), count) in counts {
            s += &format!("  {file}: {count} {}\n", kind_words(kind));
        }
    }
    let verdict = match v.verdict {
        Verdict::Identical => "identical — every compared value bit for bit (exit 0)".to_string(),
        Verdict::WithinTolerance => "within tolerance — reproduced, not bit for bit (exit 4)".to_string(),
        Verdict::Failed => format!("FAILED — {} (exit 1)", failure_reason(v, beyond.len())),
    };
    s + &format!("\nverdict: {verdict}\n")
}

/// What `count` values of `kind` are called in the within-tolerance summary.
fn kind_words(kind: ValueKind) -> &'static str {
    match kind {
        ValueKind::TrainingLoss => "training losses",
        ValueKind::Interval => "interval half-widths or p-values",
        ValueKind::Figure => "figures",
        ValueKind::Weights => "tensors",
        ValueKind::WeightsHash => "weights hashes",
        ValueKind::Exact => "values",
    }
}

pub(super) fn run_diff(args: DiffArgs, out: &mut dyn Write) -> Result<()> {
    let diff = crate::report::diff::diff(&args.run_a, &args.run_b)?;
    let text = if args.json { to_json(&diff)? } else { diff_text(&diff) };
    write_out(out, &text)
}

/// A figure with enough digits to tell runs apart, fewer for large ones.
fn figure(x: f64) -> String {
    match x {
        x if !x.is_finite() => "n/a".into(),
        x if x.abs() >= 100.0 => format!("{x:.2}"),
        x => format!("{x:.4}"),
    }
}

fn estimate_text(e: &Estimate) -> String {
    match e.ci95 {
        Some(half) => format!("{} ± {}", figure(e.mean), figure(half)),
        None => figure(e.mean),
    }
}

fn diff_text(d: &RunDiff) -> String {
    let mut s =
        format!("diff A = {} (pipeline `{}`)\n     B = {} (pipeline `{}`)\n", d.a, d.pipeline_a, d.b, d.pipeline_b);
    s += "differences are B − A, with the 95 % interval of the difference and Welch's p where both runs have \
          two seeds or more\n";
    s += &format!(
        "\nconfiguration (pipeline.resolved.json): {}\n",
        count_text(d.configuration.len(), "field differs", "fields differ")
    );
    s += &changes_text(&d.configuration);
    s += "\ninputs (provenance, SHA-256)\n";
    for input in &d.inputs {
        let short = |h: &Option<String>| h.as_ref().map_or("absent".to_string(), |h| h.chars().take(12).collect());
        let state = if input.same {
            format!("same      {}", short(&input.sha256_a))
        } else {
            format!("differs   A {}  B {}", short(&input.sha256_a), short(&input.sha256_b))
        };
        s += &format!("  {:<9} {:<40} {state}\n", input.role, input.path);
    }
    s += &format!("\nenvironment: {}\n", count_text(d.environment.len(), "fact differs", "facts differ"));
    s += &changes_text(&d.environment);
    if !d.failed_members.is_empty() || !d.unmatched_groups.is_empty() {
        s += "\nmembers\n";
        s += &changes_text(&d.failed_members);
        s += &changes_text(&d.unmatched_groups);
    }
    for group in &d.groups {
        s += &format!(
            "\ngroup {} (A: {}; B: {})\n",
            group.index,
            group.members_a.join(", "),
            group.members_b.join(", ")
        );
        if group.metrics.is_empty() {
            s += "  no λ in common\n";
        } else {
            s += &format!(
                "  {:>5}  {:<21} {:>19} {:>19} {:>30} {:>8}\n",
                "λ", "metric", "A", "B", "B − A [95 % interval]", "Welch p"
            );
        }
        for row in &group.metrics {
            let c = &row.contrast;
            let difference = match c.ci95 {
                Some(half) => format!(
                    "{} [{}, {}]",
                    figure(c.difference),
                    figure(c.difference - half),
                    figure(c.difference + half)
                ),
                None => figure(c.difference),
            };
            let p = c.welch_p.map_or("-".to_string(), |p| format!("{p:.3}"));
            s += &format!(
                "  {:>5.2}  {:<21} {:>19} {:>19} {:>30} {:>8}\n",
                row.lambda,
                row.metric,
                estimate_text(&row.a),
                estimate_text(&row.b),
                difference,
                p
            );
        }
        for (side, lambdas) in [("A", &group.lambdas_only_in_a), ("B", &group.lambdas_only_in_b)] {
            if !lambdas.is_empty() {
                let list: Vec<String> = lambdas.iter().map(|l| format!("{l:.2}")).collect();
                s += &format!("  λ only in {side}: {}\n", list.join(", "));
            }
        }
        if !group.certificates.is_empty() {
            s += &format!("  {:>5}  {:<21} {:>19} {:>19}\n", "λ", "certificates", "A", "B");
            for c in &group.certificates {
                s += &format!(
                    "  {:>5.2}  {:<21} {:>19} {:>19}\n",
                    c.lambda,
                    "share certified",
                    figure(c.share_certified_a),
                    figure(c.share_certified_b)
                );
                s += &format!(
                    "  {:>5.2}  {:<21} {:>19} {:>19}\n",
                    c.lambda, "violations", c.violations_a, c.violations_b
                );
            }
        }
    }
    s += &format!("\nrecruitment decisions: {}\n", if d.recruitment.is_empty() { "none in either report" } else { "" });
    for row in &d.recruitment {
        let side = |v: &Option<String>, bits: Option<f64>| match (v, bits) {
            (Some(v), Some(bits)) => format!("{v} ({} bits net)", figure(bits)),
            _ => "not made".to_string(),
        };
        s += &format!(
            "  {} step {} `{}`: A {}, B {}\n",
            row.member,
            row.step,
            row.candidate,
            side(&row.a, row.saving_net_bits_a),
            side(&row.b, row.saving_net_bits_b)
        );
    }
    s
}

fn count_text(n: usize, one: &str, many: &str) -> String {
    match n {
        0 => "the same".into(),
        1 => format!("1 {one}"),
        n => format!("{n} {many}"),
    }
}

fn changes_text(changes: &[crate::report::diff::FieldChange]) -> String {
    let width = changes.iter().map(|c| c.field.chars().count()).max().unwrap_or(0);
    changes.iter().map(|c| format!("  {:<width$}  A {}  B {}\n", c.field, c.a, c.b)).collect()
}
