//! `report.md`: the report as text an auditor reads and diffs.

use super::*;

pub(super) fn est(e: &Estimate, decimals: usize) -> String {
    match e.ci95 {
        Some(ci) => format!("{:.*} ± {:.*}", decimals, e.mean, decimals, ci),
        None => format!("{:.*}", decimals, e.mean),
    }
}

pub(super) fn origin_text(origin: crate::recruit::Origin) -> &'static str {
    match origin {
        crate::recruit::Origin::Cluster => "embedding cluster",
        crate::recruit::Origin::Recruitable => "recruitable block",
        crate::recruit::Origin::Given => "given",
        crate::recruit::Origin::Recurrent => "recurrent tokens",
    }
}

pub(super) fn p_value(p: Option<f64>) -> String {
    p.map_or("–".into(), |p| if p < 1e-4 { "<0.0001".into() } else { format!("{p:.4}") })
}

/// The report as Markdown: readable on a code-hosting site and in a terminal.
pub fn markdown(report: &Report) -> String {
    let mut s = String::new();
    let p = &report.provenance;
    let _ = writeln!(s, "# ailla report: {}\n", report.name);
    let _ = writeln!(s, "## 1. Summary\n");
    let runs: usize = report.groups.iter().map(|g| g.members.len()).sum();
    let violations: usize = report.groups.iter().flat_map(|g| &g.certificates).map(|c| c.violations).sum();
    let _ = writeln!(
        s,
        "{runs} run{} in {} group{} (runs in a group differ only in their seed); {} failed.",
        if runs == 1 { "" } else { "s" },
        report.groups.len(),
        if report.groups.len() == 1 { "" } else { "s" },
        report.failed_members.len()
    );
    let _ = writeln!(
        s,
        "Certified bounds: {} (violations: {violations}, METHOD §6; any violation would be an engine bug).\n",
        if violations == 0 { "all held" } else { "VIOLATED" }
    );
    if let Some(group) = report.groups.first() {
        let _ = writeln!(
            s,
            "| λ | entropy (bits) | pointer fidelity | perplexity | accuracy |\n|---:|---:|---:|---:|---:|"
        );
        for row in &group.dial {
            let _ = writeln!(
                s,
                "| {:.2} | {} | {} | {} | {} |",
                row.lambda,
                est(&row.entropy_bits, 3),
                est(&row.pointer_fidelity, 4),
                est(&row.perplexity, 3),
                est(&row.accuracy, 4)
            );
        }
        let _ = writeln!(s);
    }
    if !report.failed_members.is_empty() {
        let _ = writeln!(s, "Failed runs (no summary): {}.\n", report.failed_members.join(", "));
    }

    let _ = writeln!(s, "## 2. Provenance\n");
    let _ = writeln!(s, "| | |\n|---|---|");
    let _ = writeln!(s, "| ailla | {} {} |", p.ailla_version, commit_cell(&p.git_commit));
    let _ = writeln!(s, "| platform | {} |", p.platform);
    let _ = writeln!(s, "| threads | {} |", p.threads);
    if let Some(n) = &p.numerics {
        let _ = writeln!(s, "| CPU | {} |", n.cpu);
        let _ = writeln!(s, "| kernels | {} (ailla's element-wise kernels) |", n.simd_path);
        let _ = writeln!(
            s,
            "| BLAS | {} {}, kernel {}, {} thread{} |",
            n.blas,
            n.blas_version,
            n.blas_core,
            n.blas_threads,
            if n.blas_threads == 1 { "" } else { "s" }
        );
    }
    let _ = writeln!(s, "| seeds | {} |", p.seeds.iter().map(u64::to_string).collect::<Vec<_>>().join(", "));
    let _ = writeln!(s, "| wall time | {:.1} s |", p.wall_time_seconds);
    let _ = writeln!(s, "| peak memory | {} |\n", p.peak_memory_mib.map_or("–".into(), |m| format!("{m:.0} MiB")));
    let _ = writeln!(s, "| file | SHA-256 |\n|---|---|");
    let _ = writeln!(s, "| {} (pipeline) | `{}` |", p.pipeline.path, p.pipeline.sha256);
    for h in p.rules.iter().chain(&p.data) {
        let _ = writeln!(s, "| {} | `{}` |", h.path, h.sha256);
    }
    let _ = writeln!(
        s,
        "\nThe resolved pipeline is in `report.json` (`resolved_pipeline`) and `pipeline.resolved.json`.\n"
    );

    let _ = writeln!(s, "## 3. Locality across the dial\n");
    for (index, group) in report.groups.iter().enumerate() {
        let _ = writeln!(s, "### Group {}: {}\n", index + 1, group.members.join(", "));
        let _ = writeln!(
            s,
            "| λ | entropy (bits) | covered entropy | fidelity | hit rate | block conc. | perplexity | bits/token | accuracy | PR | p(entropy) | p(fidelity) |"
        );
        let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for r in &group.dial {
            let _ = writeln!(
                s,
                "| {:.2} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.lambda,
                est(&r.entropy_bits, 3),
                est(&r.covered_entropy_bits, 3),
                est(&r.pointer_fidelity, 4),
                est(&r.pointer_hit_rate, 4),
                est(&r.block_concentration, 4),
                est(&r.perplexity, 3),
                est(&r.bits_per_token, 4),
                est(&r.accuracy, 4),
                est(&r.participation_ratio, 2),
                p_value(r.entropy_p_vs_zero),
                p_value(r.fidelity_p_vs_zero)
            );
        }
        let _ = writeln!(
            s,
            "\nMeans over seeds with 95 % intervals (Student t) where there are several; p: Welch's t-test against λ = 0; PR: participation ratio of hidden states, mean over layers.\n"
        );
        if !group.site_fidelity.is_empty() {
            let header: Vec<String> = group.dial.iter().map(|r| format!("F@{:.1}", r.lambda)).collect();
            let _ = writeln!(s, "Pointer fidelity by layer and head:\n\n| layer | head | {} |", header.join(" | "));
            let _ = writeln!(s, "|---:|---:|{}", "---:|".repeat(header.len()));
            for site in &group.site_fidelity {
                let values: Vec<String> = site.fidelity_by_lambda.iter().map(|f| format!("{f:.4}")).collect();
                let _ = writeln!(s, "| {} | {} | {} |", site.layer, site.head, values.join(" | "));
            }
            let _ = writeln!(s);
        }
    }

    let _ = writeln!(s, "## 4. Rules\n");
    if let Some(example) = &report.attention_example {
        let _ = writeln!(
            s,
            "Attention of one test sequence (`{}`, layer {}, head {}) at λ = 0 and λ = 1, rule targets marked: \
             `report-attention-0.svg`, `report-attention-1.svg`. Tokens: {}\n",
            example.member,
            example.layer,
            example.head,
            example.tokens.iter().map(|t| format!("`{t}`")).collect::<Vec<_>>().join(" ")
        );
    }
    for (index, group) in report.groups.iter().enumerate() {
        let _ = writeln!(s, "### Group {}\n", index + 1);
        let lambdas: Vec<String> = group
            .rules
            .first()
            .map_or(Vec::new(), |r| r.fidelity_by_lambda.iter().map(|(l, _)| format!("F@{l:.1}")).collect());
        let _ = writeln!(s, "| rule | source | covered rows | {} |", lambdas.join(" | "));
        let _ = writeln!(s, "|---|---|---:|{}", "---:|".repeat(lambdas.len()));
        for rule in &group.rules {
            let values: Vec<String> = rule.fidelity_by_lambda.iter().map(|(_, f)| format!("{f:.4}")).collect();
            let source = match (&rule.source, &rule.injected) {
                (Some(at), Some(when)) => format!("{at} (injected {when})"),
                (Some(at), None) => at.clone(),
                (None, _) => "(implicit own-block rule)".into(),
            };
            // the rule's name, and what it says as written
            let name = match &rule.text {
                Some(text) => format!("`{}`", text.replace('|', "\\|")),
                None => rule.name.clone(),
            };
            let _ = writeln!(s, "| {} | {} | {} | {} |", name, source, rule.covered_rows, values.join(" | "));
        }
        let _ = writeln!(s, "\nF@λ: pointer fidelity of the rule's own targets at λ; covered rows counted over every layer and head the rule acts on, on the test split.\n");
        if let (Some(last), Some(member)) = (group.dial.last(), group.members.first()) {
            let heads = report
                .resolved_pipeline
                .get("members")
                .and_then(|m| m.as_array())
                .and_then(|m| m.iter().find(|x| x["name"] == member.as_str()))
                .and_then(|m| m["config"]["model"]["n_heads"].as_u64())
                .unwrap_or(1)
                .max(1) as usize;
            let count = group.rules.first().map_or(0, |r| r.fidelity_by_site_at_max_lambda.len());
            let sites: Vec<String> = (0..count).map(|k| format!("L{}H{}", k / heads, k % heads)).collect();
            let _ = writeln!(
                s,
                "Fidelity of each rule by layer (L) and head (H) at λ = {:.1} (first run of the group):\n",
                last.lambda
            );
            let _ = writeln!(s, "| rule | {} |\n|---|{}", sites.join(" | "), "---:|".repeat(sites.len()));
            for rule in &group.rules {
                let values: Vec<String> = rule
                    .fidelity_by_site_at_max_lambda
                    .iter()
                    .map(|f| f.map_or("–".into(), |f| format!("{f:.4}")))
                    .collect();
                let _ = writeln!(s, "| {} | {} |", rule.name, values.join(" | "));
            }
            let _ = writeln!(s);
        }
    }

    let _ = writeln!(s, "## 5. Certificates\n");
    for (index, group) in report.groups.iter().enumerate() {
        let _ = writeln!(s, "### Group {}\n", index + 1);
        let _ = writeln!(s, "| λ | λ* p50 | λ* p90 | λ* max | certified | weight-only λ | entropy | entropy bound | violations | past ρ threshold |");
        let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for c in &group.certificates {
            let _ = writeln!(
                s,
                "| {:.2} | {:.3} | {:.3} | {:.3} | {:.4} | {:.3} | {:.3} | {:.3} | {} | {} |",
                c.lambda,
                c.lambda_star_p50,
                c.lambda_star_p90,
                c.lambda_star_max,
                c.share_certified,
                c.weight_only_lambda,
                c.mean_entropy_bits,
                c.mean_entropy_bound_bits,
                c.violations,
                c.share_past_group_sparsity_threshold.map_or("–".into(), |x| format!("{x:.4}"))
            );
        }
        let _ = writeln!(s, "\nλ*: the dial that gives each covered row fidelity 1 − ε; certified: share of rows at or above 1 − ε; entropies in bits over covered rows.\n");
    }

    let _ = writeln!(s, "## 6. Recruitment\n");
    if report.block_recruitment.is_empty() && report.domain_recruitment.is_none() {
        let _ = writeln!(s, "No recruitment ran in this pipeline.\n");
    }
    if !report.block_recruitment.is_empty() {
        let _ = writeln!(
            s,
            "Semantic blocks (METHOD §7), in bits on the recruitment split. A **frozen** trial adds the candidate's copy path to the model as it is and trains only the path's gate: bits without are `L(D | M)`, bits with are `L(D | M + B)`, and nothing else moves, so there is no noise term (a check with `split_scoring: saving_only` computes the saving alone, exactly, and shows – for the code lengths it did not compute). A **co-trained** trial (the earlier design) trains a copy of the model with the block beside a control without it, and the noise is how far a second control, trained on the same batches in reverse order, lands from the first. A block is accepted iff its saving exceeds its cost (membership `log2 C(V, |B|)` plus its parameters at `½ log2 N` bits each) plus the margin plus the noise; at most one per check.\n"
        );
        let _ = writeln!(s, "| run | step | source | candidate | members | trial | bits without | bits with | saving | saved where copied | cost (membership + parameters) | margin | noise | verdict | DL before | DL after | DL change |");
        let _ = writeln!(s, "|---|---:|---|---|---|---|---:|---:|---:|---:|---|---:|---:|---|---:|---:|---:|");
        for entry in &report.block_recruitment {
            let d = &entry.decision;
            let members: Vec<String> =
                d.members.iter().take(12).map(|m| format!("`{}`", m.replace('|', "\\|"))).collect();
            let more = if d.members.len() > 12 { format!(" … ({} in all)", d.members.len()) } else { String::new() };
            let split = match (d.membership_bits, d.parameter_bits) {
                (Some(m), Some(p)) => format!("{:.1} ({m:.1} + {p:.1})", d.cost_bits),
                _ => format!("{:.1}", d.cost_bits),
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {}{} | {} | {} | {} | {:.1} | {} | {} | {:.1} | {:.1} | {} | {} | {} | {:+.1} |",
                entry.member,
                d.step,
                origin_text(d.origin),
                d.candidate,
                members.join(" "),
                more,
                match d.trial {
                    crate::recruit::TrialKind::Frozen => "frozen",
                    crate::recruit::TrialKind::CoTrained => "co-trained",
                },
                optional_bits(d.bits_before),
                optional_bits(d.bits_after),
                d.saving_bits(),
                d.saved_where_copied_bits.map_or("–".to_string(), |b| format!("{b:.1}")),
                split,
                d.margin_bits,
                d.noise_bits,
                if d.accepted { "**accepted**" } else { "rejected" },
                optional_bits(d.description_length_before),
                optional_bits(d.description_length_after),
                d.description_length_change()
            );
        }
        let _ = writeln!(s);
    }
    if let Some(domains) = &report.domain_recruitment {
        s.push_str(&domains_markdown(domains));
        let _ = writeln!(s);
    }
    let _ = writeln!(s, "## 7. Training curves\n");
    for (index, group) in report.groups.iter().enumerate() {
        let points: Vec<String> =
            group.training_curve.iter().map(|(step, loss)| format!("{step}: {loss:.4}")).collect();
        let _ = writeln!(s, "Group {} (mean training loss in nats by step): {}\n", index + 1, points.join(", "));
    }
    if let Some(comparison) = &report.published {
        published_markdown(&mut s, comparison);
    }
    s
}

/// A code length a check may not have computed (`split_scoring: saving_only`), to one decimal.
fn optional_bits(bits: Option<f64>) -> String {
    bits.map_or_else(|| "–".to_string(), |b| format!("{b:.1}"))
}

pub(super) fn published_markdown(s: &mut String, comparison: &published::PublishedComparison) {
    use published::{claim_text, metric_name, verdict_text, Comparability};
    let _ = writeln!(s, "## 8. Published figures beside ours\n");
    let _ = writeln!(s, "Source: {}.\n", comparison.source);
    let _ = writeln!(s, "Our curves (means over seeds):\n");
    for (index, curve) in comparison.curves.iter().enumerate() {
        let _ = writeln!(
            s,
            "- C{}: {}; context {} tokens; {} test tokens scored at every λ",
            index + 1,
            curve.label,
            curve.ctx_len,
            curve.test_tokens
        );
    }
    let names: Vec<String> = (1..=comparison.curves.len()).map(|i| format!("C{i}")).collect();
    let _ = writeln!(s, "\n| figure | λ | published | {} |", names.join(" | "));
    let _ = writeln!(s, "|---|---:|---:|{}", "---:|".repeat(names.len()));
    for figure in &comparison.figures {
        let ours: Vec<String> = figure
            .ours
            .iter()
            .zip(&figure.comparability)
            .map(|(value, comparable)| {
                let mark = match comparable {
                    Comparability::Comparable => "",
                    Comparability::DefinitionOnly => " ¹",
                    Comparability::NotComparable => " ²",
                };
                value.map_or("–".into(), |v| format!("{v:.4}{mark}"))
            })
            .collect();
        let _ = writeln!(
            s,
            "| {} | {:.1} | {} | {} |",
            metric_name(figure.metric),
            figure.lambda,
            figure.published,
            ours.join(" | ")
        );
    }
    let _ = writeln!(
        s,
        "\n¹ same definition, not the same setting; ² cannot be the same quantity. Why, figure by figure:\n"
    );
    for figure in &comparison.figures {
        let mut reasons: Vec<&String> = figure.reasons.iter().collect();
        reasons.dedup();
        for reason in reasons {
            let _ = writeln!(s, "- {} at λ = {:.1}: {reason}", metric_name(figure.metric), figure.lambda);
        }
    }
    let _ = writeln!(s, "\nThe published qualitative claims, checked on each curve:\n");
    let _ = writeln!(s, "| claim | {} |\n|---|{}", names.join(" | "), "---|".repeat(names.len()));
    for claim in &comparison.claims {
        let verdicts: Vec<&str> = claim.verdicts.iter().map(|&v| verdict_text(v)).collect();
        let _ = writeln!(s, "| {} | {} |", claim_text(claim.claim), verdicts.join(" | "));
    }
    let _ = writeln!(s);
    for claim in &comparison.claims {
        for (index, evidence) in claim.evidence.iter().enumerate() {
            let _ = writeln!(s, "- {} — C{}: {evidence}", claim_text(claim.claim), index + 1);
        }
    }
    let _ = writeln!(
        s,
        "\nTrade-off score of a λ: F − (ppl − ppl_min)/ppl_min over the curve, the pointer fidelity gained minus \
         the relative perplexity paid (one percent of perplexity weighs as much as one point of fidelity); the \
         claim holds when the best score lies strictly between the smallest and the largest λ.\n"
    );
}

/// Hierarchical recruitment in Markdown: the decisions, every model's bits on every domain, the
/// description length and the routing of held-out documents.
pub fn domains_markdown(summary: &crate::recruit::domains::DomainsSummary) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Specialised models (METHOD §8). Bits over a whole domain are its N_S training tokens times the bits per token on held-out text; the control is the best model trained as many more steps on its own data.\n"
    );
    let _ = writeln!(
        s,
        "| domain | best model | N_S | control bits | specialist bits | saving | cost | verdict | serves it |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---|---|");
    for d in &summary.decisions {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {} |",
            d.domain,
            d.best_model,
            d.domain_tokens,
            d.bits_before,
            d.bits_after,
            d.bits_before - d.bits_after,
            d.cost_bits,
            if d.recruited { "**recruited**" } else { "not recruited" },
            d.assigned_model
        );
    }
    let _ = writeln!(s, "\nBits per token of every pool model on every domain's held-out text:\n");
    let _ = writeln!(s, "| model | {} |\n|---|{}", summary.domains.join(" | "), "---:|".repeat(summary.domains.len()));
    for (model, row) in summary.pool.iter().zip(&summary.bits_per_token) {
        let values: Vec<String> = row.iter().map(|b| format!("{b:.3}")).collect();
        let _ = writeln!(s, "| {model} | {} |", values.join(" | "));
    }
    let _ = writeln!(s, "\nDescription length of the pool (bits) as domains arrive:\n");
    let _ = writeln!(s, "| after | total | without that recruitment |\n|---|---:|---:|");
    for dl in &summary.description_length {
        let _ = writeln!(s, "| {} | {:.0} | {:.0} |", dl.after_domain, dl.total_bits, dl.without_this_recruitment_bits);
    }
    let _ = writeln!(
        s,
        "\nRouting of held-out documents by the code length of their first {} tokens:\n",
        summary.router_tokens
    );
    let _ = writeln!(s, "| domain | documents | to its model | {} |", summary.pool.join(" | "));
    let _ = writeln!(s, "|---|---:|---:|{}", "---:|".repeat(summary.pool.len()));
    for r in &summary.routing {
        let counts: Vec<String> = r.sent_to.iter().map(usize::to_string).collect();
        let _ =
            writeln!(s, "| {} | {} | {:.1} % | {} |", r.domain, r.documents, 100.0 * r.accuracy, counts.join(" | "));
    }
    s
}

/// The commit the binary was built from, with a warning an auditor cannot miss when the code was not
/// exactly that commit (uncommitted changes) or is not known at all.
fn commit_cell(commit: &str) -> String {
    if let Some(base) = commit.strip_suffix("+modified") {
        format!(
            "(commit {base}, **modified: built with uncommitted changes, so the code that produced these \
             numbers is not exactly this commit**)"
        )
    } else if commit == "unknown" {
        "(**commit unknown: built outside a git checkout**)".to_string()
    } else {
        format!("(commit {commit})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_modified_or_unknown_commit_is_flagged() {
        assert_eq!(commit_cell("abc123"), "(commit abc123)");
        assert!(commit_cell("abc123+modified").contains("**modified: built with uncommitted changes"));
        assert!(commit_cell("unknown").contains("**commit unknown"));
    }
}
