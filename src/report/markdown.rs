//! `report.md`: the report as text an auditor reads and diffs.

use super::*;

/// A mean and its 95 % half-width at the precision the interval supports: the half-width to one
/// significant digit (two when that digit is 1, so that 0.013 does not become 0.01) and the mean to
/// the same decimal place, never more than `decimals` places nor fewer than one (`3.14 ± 0.05`, not
/// `3.141 ± 0.052`). A single seed has no interval, so it keeps `decimals`.
pub(super) fn est(e: &Estimate, decimals: usize) -> String {
    match e.ci95 {
        Some(ci) => {
            let places = interval_places(ci, decimals);
            format!("{:.*} ± {:.*}", places, e.mean, places, ci)
        }
        None => format!("{:.*}", decimals, e.mean),
    }
}

/// Decimal places that show `half_width` to one significant digit (two when it starts with 1),
/// within `[1, most]`.
pub(super) fn interval_places(half_width: f64, most: usize) -> usize {
    if !(half_width.is_finite() && half_width > 0.0) {
        return most;
    }
    let exponent = half_width.log10().floor();
    let leading = (half_width / 10f64.powf(exponent)).floor();
    let places = -exponent + if leading < 2.0 { 1.0 } else { 0.0 };
    (places.max(1.0) as usize).min(most.max(1))
}

/// Every group side by side at the smallest and the largest λ: the comparison a sweep is run for.
fn cross_group_table(s: &mut String, report: &Report) {
    fn at(g: &Group, last: bool) -> Option<&DialRow> {
        if last {
            g.dial.last()
        } else {
            g.dial.first()
        }
    }
    let Some((low, high)) = report.groups.first().and_then(|g| Some((at(g, false)?.lambda, at(g, true)?.lambda)))
    else {
        return;
    };
    let _ = writeln!(
        s,
        "Every group at λ = {low:.2} and λ = {high:.2} (means over seeds):\n\n\
         | group | runs | perplexity λ = {low:.2} | perplexity λ = {high:.2} | fidelity λ = {low:.2} | fidelity λ = {high:.2} | rules met λ = {low:.2} | rules met λ = {high:.2} |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|"
    );
    for g in &report.groups {
        let met = |last: bool| {
            let i = if last { g.dial.len().saturating_sub(1) } else { 0 };
            let met = g.rules.iter().filter(|r| r.met_by_lambda.get(i).copied().unwrap_or(false)).count();
            format!("{met} of {}", g.rules.len())
        };
        let value = |last: bool, f: &dyn Fn(&DialRow) -> String| at(g, last).map_or("–".to_string(), f);
        let _ = writeln!(
            s,
            "| [{}](#{}) | {} | {} | {} | {} | {} | {} | {} |",
            card::cell(&g.label),
            card::slug(&group_heading(g)),
            g.members.len(),
            value(false, &|r| est(&r.perplexity, 3)),
            value(true, &|r| est(&r.perplexity, 3)),
            value(false, &|r| est(&r.pointer_fidelity, 4)),
            value(true, &|r| est(&r.pointer_fidelity, 4)),
            met(false),
            met(true)
        );
    }
    let _ = writeln!(s);
}

/// One paragraph of links to every section (and, in a sweep, to every group's dial table).
fn contents(s: &mut String, report: &Report) {
    let links = ["Audit card", "1. Summary", "2. Provenance", "3. Locality across the dial"];
    let groups: Vec<String> =
        if report.groups.len() > 1 { report.groups.iter().map(group_heading).collect() } else { Vec::new() };
    let rest = ["4. Rules", "5. Certificates", "6. Recruitment", "7. Training curves"];
    let mut out: Vec<String> = links.iter().map(|l| format!("[{}](#{})", card::cell(l), card::slug(l))).collect();
    if !groups.is_empty() {
        let inner: Vec<String> = groups.iter().map(|g| format!("[{}](#{})", card::cell(g), card::slug(g))).collect();
        if let Some(last) = out.last_mut() {
            *last = format!("{last} ({})", inner.join(", "));
        }
    }
    out.extend(rest.iter().map(|l| format!("[{l}](#{})", card::slug(l))));
    if report.published.is_some() {
        let l = "8. Published figures beside ours";
        out.push(format!("[{l}](#{})", card::slug(l)));
    }
    let _ = writeln!(s, "Contents: {}\n", out.join(" · "));
}

/// What a section without sweep groups says in a domains run, in place of an empty table.
const DOMAINS_ONLY: &str =
    "This is a domains run (METHOD §8): its models are trained without the locality dial, so it has \
     no dial table, rules, certificates or sweep training curves; its results are section 6's.";

/// A group's heading in section 3, which the contents and the cross-group table link to.
pub(super) fn group_heading(group: &Group) -> String {
    format!("Group {}", group.label)
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
    with_figure_links(&markdown_text(report), report)
}

/// `text` with a relative link to each figure the run wrote, under its section's heading: the SVG
/// files beside `report.md`, so a code-hosting site or a Markdown viewer shows them in place.
fn with_figure_links(text: &str, report: &Report) -> String {
    let mut out = text.to_string();
    for (file, section, _) in figures(report).iter().rev() {
        let heading = format!("\n## {section}. ");
        let Some(start) = out.find(&heading) else { continue };
        let Some(end) = out[start + 1..].find('\n') else { continue };
        let at = start + 1 + end + 1;
        out.insert_str(at, &format!("\n![figure {file}]({file})\n"));
    }
    out
}

/// The report as Markdown without the figure links (`report.html` puts the figures inline instead).
pub(super) fn markdown_text(report: &Report) -> String {
    let mut s = String::new();
    let p = &report.provenance;
    let _ = writeln!(s, "# ailla report: {}\n", card::cell(&report.name));
    contents(&mut s, report);
    s.push_str(&card::card_markdown(report));
    let _ = writeln!(s, "## 1. Summary\n");
    let runs: usize = report.groups.iter().map(|g| g.members.len()).sum();
    let violations: usize = report.groups.iter().flat_map(|g| &g.certificates).map(|c| c.violations).sum();
    let checked: usize = report.groups.iter().map(|g| g.certificates.len()).sum();
    // a domains run has no sweep groups: its summary is the domains' alone
    if !(report.groups.is_empty() && report.domain_recruitment.is_some()) {
        let _ = writeln!(
            s,
            "{runs} run{} in {} group{} (runs in a group differ only in their seed); {} failed.\n",
            if runs == 1 { "" } else { "s" },
            report.groups.len(),
            if report.groups.len() == 1 { "" } else { "s" },
            report.failed_members.len()
        );
    }
    if let Some(domains) = &report.domain_recruitment {
        let recruited = domains.decisions.iter().filter(|d| d.recruited).count();
        let _ = writeln!(
            s,
            "Recruitment of specialised models (METHOD §8) over {} domain{} ({}): {recruited} specialist{} recruited of {} tried; the pool holds {} model{} ({}). The decisions, bits and routing are in section 6.\n",
            domains.domains.len(),
            if domains.domains.len() == 1 { "" } else { "s" },
            card::cell(&domains.domains.join(", ")),
            if recruited == 1 { "" } else { "s" },
            domains.decisions.len(),
            domains.pool.len(),
            if domains.pool.len() == 1 { "" } else { "s" },
            card::cell(&domains.pool.join(", "))
        );
    }
    let _ = writeln!(s, "{}\n", card::verdict_line(report));
    if checked > 0 {
        let _ = writeln!(
            s,
            "Certificate checks (METHOD §6): the exact relations and bounds were checked on every covered row at every λ \
             ({violations} violation{}{}). A bound that holds says the certificate's arithmetic is sound, not that a rule is \
             met: that is the rules' verdict above, against 1 − ε.\n",
            if violations == 1 { "" } else { "s" },
            if violations == 0 { "" } else { ": **VIOLATED**, an engine bug" }
        );
    }
    if let Some(group) = report.groups.first() {
        if report.groups.len() > 1 {
            let _ = writeln!(
                s,
                "The table shows group `{}`, the first of {}; section 3 has every group, and the table after this one sets them side by side.\n",
                card::cell(&group.label),
                report.groups.len()
            );
        }
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
    if report.groups.len() > 1 {
        cross_group_table(&mut s, report);
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
        if !n.products.is_empty() {
            let _ = writeln!(s, "| products | {} |", n.products);
        }
        let _ = writeln!(
            s,
            "| BLAS | {} {}, kernel {}{}, {} thread{} |",
            n.blas,
            n.blas_version,
            n.blas_core,
            crate::engine::environment::replaced_kernel_note(n),
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
    let domains_only = report.groups.is_empty() && report.domain_recruitment.is_some();
    if domains_only {
        let _ = writeln!(s, "{DOMAINS_ONLY}\n");
    }
    for group in &report.groups {
        let _ = writeln!(
            s,
            "### {}\n\nRuns: {}.\n",
            card::cell(&group_heading(group)),
            card::cell(&group.members.join(", "))
        );
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
    if domains_only {
        let _ = writeln!(s, "{DOMAINS_ONLY}\n");
    }
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
    for group in &report.groups {
        let _ = writeln!(s, "### Rules of group {}\n", card::cell(&group.label));
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
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} |",
                name,
                source,
                card::thousands(rule.covered_rows),
                values.join(" | ")
            );
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
    if domains_only {
        let _ = writeln!(s, "{DOMAINS_ONLY}\n");
    }
    for group in &report.groups {
        let _ = writeln!(s, "### Certificates of group {}\n", card::cell(&group.label));
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
    if domains_only {
        let _ = writeln!(s, "{DOMAINS_ONLY}\n");
    }
    for group in &report.groups {
        let points: Vec<String> =
            group.training_curve.iter().map(|(step, loss)| format!("{step}: {loss:.4}")).collect();
        let _ = writeln!(
            s,
            "Group `{}` (mean training loss in nats by step): {}\n",
            card::cell(&group.label),
            points.join(", ")
        );
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
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            d.domain,
            d.best_model,
            card::thousands(d.domain_tokens),
            whole(d.bits_before),
            whole(d.bits_after),
            whole(d.bits_before - d.bits_after),
            whole(d.cost_bits),
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
        let _ = writeln!(
            s,
            "| {} | {} | {} |",
            dl.after_domain,
            whole(dl.total_bits),
            whole(dl.without_this_recruitment_bits)
        );
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

/// `x` rounded to a whole number, with thousands separators: `-1,234`.
fn whole(x: f64) -> String {
    if !x.is_finite() {
        return format!("{x}");
    }
    let sign = if x.round() < 0.0 { "-" } else { "" };
    format!("{sign}{}", card::thousands(x.round().abs() as usize))
}

/// The commit the binary was built from, with a warning an auditor cannot miss when the code was not
/// exactly that commit (uncommitted changes) or is not known at all.
pub(super) fn commit_cell(commit: &str) -> String {
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
    fn intervals_print_at_the_precision_they_support() {
        let e = |mean, ci| Estimate { mean, ci95: Some(ci), n: 2 };
        assert_eq!(est(&e(3.24159, 0.052), 3), "3.24 ± 0.05");
        assert_eq!(est(&e(3.24159, 0.013), 3), "3.242 ± 0.013");
        assert_eq!(est(&e(157.7, 12.0), 3), "157.7 ± 12.0");
        assert_eq!(est(&e(0.99731, 0.00002), 4), "0.9973 ± 0.0000");
        assert_eq!(est(&Estimate { mean: 2.5, ci95: None, n: 1 }, 3), "2.500");
    }

    #[test]
    fn a_modified_or_unknown_commit_is_flagged() {
        assert_eq!(commit_cell("abc123"), "(commit abc123)");
        assert!(commit_cell("abc123+modified").contains("**modified: built with uncommitted changes"));
        assert!(commit_cell("unknown").contains("**commit unknown"));
    }
}
