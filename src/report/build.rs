//! Building a report from what a run stored: plan, provenance, summaries and metrics logs.

use super::*;

/// What the member's run stored for its report (nothing for a run without rules); a damaged file is
/// an error naming it.
pub(super) fn report_inputs(
    run_dir: &Path,
    member: &crate::pipeline::Member,
) -> Result<crate::train::stored::ReportInputs> {
    let path = run_dir.join(&member.name).join(crate::train::stored::REPORT_INPUTS);
    if path.is_file() {
        read_json(&path)
    } else {
        Ok(Default::default())
    }
}

/// One member as the run left it: its plan entry, summary and metrics.
pub(super) type StoredRun<'a> = (&'a crate::pipeline::Member, TrainSummary, Vec<MetricsRecord>);

pub(super) fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Config { path: path.to_path_buf(), message: e.to_string() })
}

/// Runs whose configurations give the same key differ only in their seed.
pub(super) fn seedless_key(mut config: crate::train::TrainConfig) -> String {
    config.seed = 0;
    serde_json::to_string(&config).unwrap_or_default()
}

/// Checks, before `ailla report` rewrites anything, that `run_dir` is a pipeline run whose every
/// member finished: a report rebuilt from less would replace a good one with a degraded one.
pub fn require_finished(run_dir: &Path) -> Result<()> {
    if !run_dir.join(crate::pipeline::run::PLAN_FILE).is_file() {
        let hint = if run_dir.join("train.json").is_file() {
            "it is a `train` run directory, whose results are its summary.json and metrics.jsonl; reports are \
             built for pipeline runs (`ailla run PIPELINE.yaml`)"
        } else {
            "give the output directory of `ailla run`"
        };
        return Err(Error::Config {
            path: run_dir.to_path_buf(),
            message: format!("is not a pipeline run directory (no {}): {hint}", crate::pipeline::run::PLAN_FILE),
        });
    }
    let plan: Plan = crate::pipeline::run::read_plan(run_dir)?;
    for member in &plan.members {
        let path = run_dir.join(&member.name).join("summary.json");
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                serde_json::from_str::<TrainSummary>(&text)
                    .map_err(|e| Error::Config { path: path.clone(), message: e.to_string() })?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::Config {
                    path,
                    message: format!(
                        "is missing: member `{}` has not finished, so the report is left as it is; finish the run \
                         with `ailla run --resume {}`",
                        member.name,
                        run_dir.display()
                    ),
                })
            }
            Err(e) => return Err(Error::io(&path, e)),
        }
    }
    Ok(())
}

/// Builds the report of a pipeline run directory from what its runs stored.
pub fn build(run_dir: &Path) -> Result<Report> {
    let plan: Plan = crate::pipeline::run::read_plan(run_dir)?;
    let provenance: Provenance = read_json(&run_dir.join(PROVENANCE_FILE))?;
    let resolved_pipeline = serde_json::to_value(&plan).map_err(|e| Error::Numeric(e.to_string()))?;
    let mut failed_members = Vec::new();
    let mut block_recruitment = Vec::new();
    let mut groups: Vec<(String, Vec<StoredRun>)> = Vec::new();
    for member in &plan.members {
        let dir = run_dir.join(&member.name);
        let summary: TrainSummary = match read_json(&dir.join("summary.json")) {
            Ok(s) => s,
            Err(_) => {
                failed_members.push(member.name.clone());
                continue;
            }
        };
        let metrics_path = dir.join("metrics.jsonl");
        let text = std::fs::read_to_string(&metrics_path).map_err(|e| Error::io(&metrics_path, e))?;
        let records: Vec<MetricsRecord> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        for record in &records {
            if let MetricsRecord::Recruitment(decision) = record {
                block_recruitment.push(MemberDecision { member: member.name.clone(), decision: (**decision).clone() });
            }
        }
        let key = seedless_key(member.config.clone());
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, runs)) => runs.push((member, summary, records)),
            None => groups.push((key, vec![(member, summary, records)])),
        }
    }
    // a domain run writes its summary; a sweep has none, but a summary that is there must read
    let summary = run_dir.join(crate::recruit::domains::SUMMARY);
    let domain_recruitment = if summary.is_file() { Some(read_json(&summary)?) } else { None };
    // what each group's first run stored for its report, read once
    let inputs: Vec<crate::train::stored::ReportInputs> =
        groups.iter().map(|(_, runs)| report_inputs(run_dir, runs[0].0)).collect::<Result<_>>()?;
    let attention_example = inputs.first().and_then(|i| i.attention.clone());
    let configs: Vec<&crate::train::TrainConfig> = groups.iter().map(|(_, runs)| &runs[0].0.config).collect();
    let test_tokens: Vec<usize> = groups.iter().map(|(_, runs)| runs[0].1.test.tokens).collect();
    let blocks = inputs.first().map_or(Vec::new(), |i| card::block_cards(&i.blocks));
    let seedless: Vec<serde_json::Value> = configs
        .iter()
        .map(|c| {
            let mut c = (*c).clone();
            c.seed = 0;
            serde_json::to_value(c).unwrap_or_default()
        })
        .collect();
    let labels = card::group_labels(&seedless);
    let models: Vec<card::ModelCard> = groups
        .iter()
        .zip(&labels)
        .map(|((_, runs), label)| card::model_card(label, &runs[0].0.config, &runs[0].1))
        .collect();
    let groups: Vec<Group> = groups
        .iter()
        .zip(inputs)
        .zip(labels)
        .map(|(((_, runs), stored), label)| Group { label, ..build_group(runs, stored) })
        .collect();
    let published =
        plan.published.as_ref().map(|p| published::compare(p, published::curves(&configs, &groups, &test_tokens)));
    let card = card::AuditCard {
        statement: plan.card.clone().unwrap_or_default(),
        models,
        checkpoints: card::checkpoint_hashes(run_dir, &plan.members)?,
        blocks,
        rules_met: groups.first().map_or(Vec::new(), card::rules_met),
    };
    let mut report = Report {
        schema_version: SCHEMA_VERSION,
        report_sha256: String::new(),
        name: plan.name.clone(),
        card,
        provenance,
        resolved_pipeline,
        failed_members,
        groups,
        attention_example,
        published,
        block_recruitment,
        domain_recruitment,
    };
    report.report_sha256 = card::content_sha256(&report)?;
    Ok(report)
}

pub(super) fn build_group(runs: &[StoredRun], stored: crate::train::stored::ReportInputs) -> Group {
    let members = runs.iter().map(|(m, ..)| m.name.clone()).collect();
    let lambdas: Vec<f64> = runs[0].1.dial.iter().map(|d| d.lambda).collect();
    let column = |i: usize, f: &dyn Fn(&crate::locality::metrics::LocalityMetrics) -> f64| -> Vec<f64> {
        runs.iter().filter_map(|(_, s, _)| s.dial.get(i).map(f)).collect()
    };
    let mut dial = Vec::new();
    for (i, &lambda) in lambdas.iter().enumerate() {
        let entropy = column(i, &|d| d.entropy_bits);
        let fidelity = column(i, &|d| d.pointer_fidelity);
        dial.push(DialRow {
            lambda,
            entropy_bits: estimate(&entropy),
            covered_entropy_bits: estimate(&column(i, &|d| d.covered_entropy_bits)),
            pointer_fidelity: estimate(&fidelity),
            pointer_hit_rate: estimate(&column(i, &|d| d.pointer_hit_rate)),
            block_concentration: estimate(&column(i, &|d| d.block_concentration)),
            perplexity: estimate(&column(i, &|d| d.language_model.perplexity)),
            bits_per_token: estimate(&column(i, &|d| d.language_model.bits_per_token)),
            accuracy: estimate(&column(i, &|d| d.language_model.accuracy)),
            participation_ratio: estimate(&column(i, &|d| {
                d.participation_ratio.iter().sum::<f64>() / d.participation_ratio.len().max(1) as f64
            })),
            entropy_p_vs_zero: if i == 0 { None } else { welch_p(&column(0, &|d| d.entropy_bits), &entropy) },
            fidelity_p_vs_zero: if i == 0 { None } else { welch_p(&column(0, &|d| d.pointer_fidelity), &fidelity) },
        });
    }
    let (sources, injected) = (stored.rule_sources, stored.schedules);
    let epsilon = runs[0].0.config.locality.as_ref().map(|l| l.epsilon);
    let target = 1.0 - epsilon.unwrap_or(0.0);
    let first = &runs[0].1;
    let rules = first
        .dial
        .first()
        .map(|d| {
            d.per_rule
                .iter()
                .enumerate()
                .map(|(r, rule)| RuleRow {
                    name: rule.name.clone(),
                    source: sources.get(&rule.name).map(|(at, _)| at.clone()),
                    text: sources.get(&rule.name).map(|(_, text)| text.clone()),
                    covered_rows: rule.covered_rows,
                    fidelity_by_lambda: lambdas
                        .iter()
                        .enumerate()
                        .map(|(i, &l)| {
                            let values = column(i, &|d| d.per_rule.get(r).map_or(f64::NAN, |x| x.pointer_fidelity));
                            (l, values.iter().sum::<f64>() / values.len().max(1) as f64)
                        })
                        .collect(),
                    fidelity_by_site_at_max_lambda: first
                        .dial
                        .last()
                        .and_then(|d| d.per_rule.get(r))
                        .map(|x| x.fidelity_by_site.iter().map(|&f| f.is_finite().then_some(f)).collect())
                        .unwrap_or_default(),
                    injected: injected.get(&rule.name).cloned(),
                    met_by_lambda: Vec::new(),
                })
                .map(|row| RuleRow {
                    // NaN (no covered rows) compares false: not met
                    met_by_lambda: row.fidelity_by_lambda.iter().map(|&(_, f)| f >= target).collect(),
                    ..row
                })
                .collect()
        })
        .unwrap_or_default();
    let certificates = first
        .dial
        .iter()
        .map(|d| {
            let c = &d.certificates;
            CertificateRow {
                lambda: d.lambda,
                lambda_star_p50: c.lambda_star_quantiles[0],
                lambda_star_p90: c.lambda_star_quantiles[1],
                lambda_star_max: c.lambda_star_quantiles[3],
                share_certified: c.share_certified,
                weight_only_lambda: c.weight_only_lambda,
                mean_entropy_bits: c.mean_entropy_bits,
                mean_entropy_bound_bits: c.mean_entropy_bound_bits,
                violations: runs
                    .iter()
                    .filter_map(|(_, s, _)| s.dial.iter().find(|x| x.lambda == d.lambda))
                    .map(|x| x.certificates.violations.total())
                    .sum(),
                share_past_group_sparsity_threshold: c.group_sparsity.as_ref().map(|g| g.share_above_threshold),
            }
        })
        .collect();
    let steps = first.steps_done.max(1);
    let marks: Vec<usize> = (1..=20).map(|k| (k * steps).div_ceil(20)).filter(|&s| s >= 1).collect();
    let mut training_curve = Vec::new();
    for &step in marks.iter().collect::<std::collections::BTreeSet<_>>() {
        let losses: Vec<f64> = runs
            .iter()
            .filter_map(|(_, _, records)| {
                records.iter().find_map(|r| match r {
                    MetricsRecord::Train { step: s, loss, .. } if *s == step => Some(*loss),
                    _ => None,
                })
            })
            .collect();
        if !losses.is_empty() {
            training_curve.push((step, losses.iter().sum::<f64>() / losses.len() as f64));
        }
    }
    // the schedule is the pipeline's, the same for every seed: the first run's steps at the same marks
    let learning_rate_curve: Vec<(usize, f64)> = runs
        .first()
        .map(|(_, _, records)| {
            records
                .iter()
                .filter_map(|r| match r {
                    MetricsRecord::Train { step, learning_rate, .. } if marks.contains(step) => {
                        Some((*step, *learning_rate))
                    }
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    // the validation loss wherever the runs evaluated it (`eval_every`, and at the end), mean over
    // the runs that did at that step
    let mut validation: std::collections::BTreeMap<usize, Vec<f64>> = std::collections::BTreeMap::new();
    for (_, _, records) in runs {
        for r in records.iter() {
            if let MetricsRecord::Eval { step, split, result } = r {
                if split == "valid" && result.mean_ce_nats.is_finite() {
                    validation.entry(*step).or_default().push(result.mean_ce_nats);
                }
            }
        }
    }
    let validation_curve: Vec<(usize, f64)> =
        validation.into_iter().map(|(step, v)| (step, v.iter().sum::<f64>() / v.len() as f64)).collect();
    let site_fidelity = first
        .dial
        .first()
        .map(|d| {
            d.per_site
                .iter()
                .enumerate()
                .filter(|(_, site)| site.covered_rows > 0)
                .map(|(k, site)| SiteFidelity {
                    layer: site.layer,
                    head: site.head,
                    fidelity_by_lambda: (0..lambdas.len())
                        .map(|i| {
                            let values = column(i, &|d| d.per_site.get(k).map_or(f64::NAN, |x| x.pointer_fidelity));
                            values.iter().sum::<f64>() / values.len().max(1) as f64
                        })
                        .collect(),
                })
                .collect()
        })
        .unwrap_or_default();
    Group {
        label: String::new(),
        epsilon,
        members,
        dial,
        rules,
        certificates,
        training_curve,
        validation_curve,
        learning_rate_curve,
        site_fidelity,
    }
}
