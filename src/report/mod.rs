//! Audit reports (`report.json`, `report.md`) built from what a run stored: its resolved plan, its
//! provenance and every member's summary and metrics. `ailla report RUN_DIR` rebuilds them byte for
//! byte without retraining.

pub mod plots;
pub mod provenance;
pub mod published;
pub mod stats;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::pipeline::Plan;
use crate::train::{MetricsRecord, TrainSummary};
use crate::{Error, Result};
use provenance::Provenance;
use stats::{estimate, welch_p, Estimate};

pub const SCHEMA_VERSION: u32 = 1;
pub const PROVENANCE_FILE: &str = "provenance.json";

/// One λ of a group of runs that differ only in their seed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
pub struct DialRow {
    pub lambda: f64,
    pub entropy_bits: Estimate,
    pub covered_entropy_bits: Estimate,
    pub pointer_fidelity: Estimate,
    pub pointer_hit_rate: Estimate,
    pub block_concentration: Estimate,
    pub perplexity: Estimate,
    pub bits_per_token: Estimate,
    pub accuracy: Estimate,
    /// Mean over layers of the participation ratio.
    pub participation_ratio: Estimate,
    /// Welch's t-test against λ = 0 (two-sided p), when each side has two seeds or more.
    pub entropy_p_vs_zero: Option<f64>,
    pub fidelity_p_vs_zero: Option<f64>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
pub struct RuleRow {
    pub name: String,
    /// `file:line` of the rule's declaration, when it came from a `.rules` file.
    pub source: Option<String>,
    /// What the rule says, as written there (whitespace collapsed).
    pub text: Option<String>,
    pub covered_rows: usize,
    /// `(λ, mean pointer fidelity)` over the group's runs.
    pub fidelity_by_lambda: Vec<(f64, f64)>,
    /// At the largest λ of the grid, for every (layer, head) in `layer·H + head` order; `None` where
    /// the rule does not act.
    pub fidelity_by_site_at_max_lambda: Vec<Option<f64>>,
    pub injected: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
pub struct CertificateRow {
    pub lambda: f64,
    pub lambda_star_p50: f64,
    pub lambda_star_p90: f64,
    pub lambda_star_max: f64,
    pub share_certified: f64,
    pub weight_only_lambda: f64,
    pub mean_entropy_bits: f64,
    pub mean_entropy_bound_bits: f64,
    pub violations: usize,
    pub share_past_group_sparsity_threshold: Option<f64>,
}

/// Runs that share everything but the seed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
pub struct Group {
    pub members: Vec<String>,
    pub dial: Vec<DialRow>,
    pub rules: Vec<RuleRow>,
    pub certificates: Vec<CertificateRow>,
    /// `(step, mean training loss)` at up to 20 evenly spaced steps.
    pub training_curve: Vec<(usize, f64)>,
    /// Pointer fidelity of every (layer, head) where rules act, by λ (mean over the group's runs).
    pub site_fidelity: Vec<SiteFidelity>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
pub struct SiteFidelity {
    pub layer: usize,
    pub head: usize,
    pub fidelity_by_lambda: Vec<f64>,
}

/// The attention of one example sequence at λ = 0 and λ = 1, with the rule targets of each row.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
pub struct AttentionExample {
    pub member: String,
    pub layer: usize,
    pub head: usize,
    pub tokens: Vec<String>,
    /// `weights[i][j]`, rows are queries, at λ = 0 and at λ = 1.
    pub weights_lambda_0: Vec<Vec<f64>>,
    pub weights_lambda_1: Vec<Vec<f64>>,
    /// `T_i` of every row (empty where no rule covers it).
    pub targets: Vec<Vec<usize>>,
}

/// Positions of the attention example: short enough to read cell by cell.
const EXAMPLE_TOKENS: usize = 24;

/// Runs the first member's final model on the start of its test split, last layer, head 0.
fn attention_example(run_dir: &Path, member: &crate::pipeline::Member) -> Option<AttentionExample> {
    let locality = member.config.locality.as_ref()?;
    let checkpoint = crate::checkpoint::load(&run_dir.join(&member.name).join("model.safetensors")).ok()?;
    let splits = member.config.corpus.load().ok()?;
    let ids = checkpoint.vocabulary.encode(&splits.test);
    let model = &checkpoint.model;
    let seq_len = EXAMPLE_TOKENS.min(model.config.ctx_len).min(ids.len());
    let tokens = &ids[..seq_len];
    let spec = locality.load_rules().ok()?;
    let (set, _) = crate::locality::RuleSet::compile(&spec, &checkpoint.vocabulary).ok()?;
    let set = set.active_at(checkpoint.step);
    let (layers, heads) = (model.config.n_layers, model.config.n_heads);
    let (layer, head) = (layers - 1, 0);
    let targets = crate::locality::BatchTargets::new(&set, tokens, 1, seq_len, layers, heads);
    let weights_at = |lambda: f64| -> Vec<Vec<f64>> {
        let lambdas = crate::locality::schedule::per_layer(lambda, layers, locality.progressive_beta);
        let hook = crate::locality::LocalityHook::new(&targets, lambdas, locality.dial, false);
        let cache = model.forward(tokens, 1, seq_len, &hook);
        let alpha = &cache.layers[layer].attention.weights[head];
        alpha.rows().into_iter().map(|r| r.iter().map(|&a| f64::from(a)).collect()).collect()
    };
    let rows = targets.at(layer, head, 0);
    Some(AttentionExample {
        member: member.name.clone(),
        layer,
        head,
        tokens: tokens.iter().map(|&t| checkpoint.vocabulary.tokens[t as usize].clone()).collect(),
        weights_lambda_0: weights_at(0.0),
        weights_lambda_1: weights_at(1.0),
        targets: (0..seq_len).map(|i| rows.map_or(Vec::new(), |r| r.targets(i).collect())).collect(),
    })
}

/// The whole report; `report.json` is this, serialised.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
pub struct Report {
    pub schema_version: u32,
    pub name: String,
    pub provenance: Provenance,
    pub resolved_pipeline: serde_json::Value,
    pub failed_members: Vec<String>,
    pub groups: Vec<Group>,
    pub attention_example: Option<AttentionExample>,
    /// The pipeline's published figures beside ours, when it names any.
    #[serde(default)]
    pub published: Option<published::PublishedComparison>,
    /// Every block-recruitment decision of every run (METHOD §7), in run order.
    #[serde(default)]
    pub block_recruitment: Vec<MemberDecision>,
    /// Hierarchical recruitment of specialised models (METHOD §8), for a `domains` pipeline.
    #[serde(default)]
    pub domain_recruitment: Option<crate::recruit::domains::DomainsSummary>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
pub struct MemberDecision {
    pub member: String,
    pub decision: crate::recruit::Decision,
}

/// One member as the run left it: its plan entry, summary and metrics.
type StoredRun<'a> = (&'a crate::pipeline::Member, TrainSummary, Vec<MetricsRecord>);

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Config { path: path.to_path_buf(), message: e.to_string() })
}

/// Where each rule of a `.rules` file is declared, and its text.
fn rule_sources(member: &crate::pipeline::Member) -> BTreeMap<String, (String, String)> {
    let mut out = BTreeMap::new();
    let Some(locality) = &member.config.locality else { return out };
    let sources = std::iter::once(&locality.rules).chain(locality.injections.iter().map(|i| &i.rules));
    for source in sources {
        let loaded = match source {
            crate::locality::RulesSource::Bundled => crate::dsl::load_source(
                Path::new("rules/default.rules"),
                crate::locality::rules::BUNDLED_RULES.to_string(),
            ),
            crate::locality::RulesSource::File(path) => crate::dsl::load(path),
        };
        let Ok(loaded) = loaded else { continue };
        for (file, statement) in &loaded.statements {
            if let crate::dsl::syntax::Statement::Rule(rule) = statement {
                if let Ok(f) = loaded.files.get(*file) {
                    let line = f.source()[..rule.span.start].matches('\n').count() + 1;
                    let text = f.source()[rule.span.clone()].split_whitespace().collect::<Vec<_>>().join(" ");
                    out.entry(rule.name.value.clone()).or_insert_with(|| (format!("{}:{line}", f.name()), text));
                }
            }
        }
    }
    out
}

/// Runs whose configurations give the same key differ only in their seed.
fn seedless_key(mut config: crate::train::TrainConfig) -> String {
    config.seed = 0;
    serde_json::to_string(&config).unwrap_or_default()
}

/// Builds the report of a pipeline run directory.
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
    let attention_example = groups.first().and_then(|(_, runs)| attention_example(run_dir, runs[0].0));
    let configs: Vec<&crate::train::TrainConfig> = groups.iter().map(|(_, runs)| &runs[0].0.config).collect();
    let test_tokens: Vec<usize> = groups.iter().map(|(_, runs)| runs[0].1.test.tokens).collect();
    let groups: Vec<Group> = groups.iter().map(|(_, runs)| build_group(runs)).collect();
    let published =
        plan.published.as_ref().map(|p| published::compare(p, published::curves(&configs, &groups, &test_tokens)));
    Ok(Report {
        schema_version: SCHEMA_VERSION,
        name: plan.name.clone(),
        provenance,
        resolved_pipeline,
        failed_members,
        groups,
        attention_example,
        published,
        block_recruitment,
        domain_recruitment,
    })
}

fn build_group(runs: &[StoredRun]) -> Group {
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
    let sources = rule_sources(runs[0].0);
    let injected: BTreeMap<String, String> = runs[0]
        .0
        .config
        .locality
        .as_ref()
        .and_then(|l| l.load_rules().ok())
        .map(|spec| {
            spec.rules
                .iter()
                .filter(|r| r.from_step.is_some() || r.until_step.is_some())
                .map(|r| {
                    let from = r.from_step.map_or("the start".to_string(), |s| format!("step {s}"));
                    let until = r.until_step.map_or(String::new(), |s| format!(" until step {s}"));
                    (r.name.clone(), format!("from {from}{until}"))
                })
                .collect()
        })
        .unwrap_or_default();
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
    Group { members, dial, rules, certificates, training_curve, site_fidelity }
}

fn est(e: &Estimate, decimals: usize) -> String {
    match e.ci95 {
        Some(ci) => format!("{:.*} ± {:.*}", decimals, e.mean, decimals, ci),
        None => format!("{:.*}", decimals, e.mean),
    }
}

fn origin_text(origin: crate::recruit::Origin) -> &'static str {
    match origin {
        crate::recruit::Origin::Cluster => "embedding cluster",
        crate::recruit::Origin::Recruitable => "recruitable block",
        crate::recruit::Origin::Given => "given",
        crate::recruit::Origin::Recurrent => "recurrent tokens",
    }
}

fn p_value(p: Option<f64>) -> String {
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
    let _ = writeln!(s, "| ailla | {} (commit {}) |", p.ailla_version, p.git_commit);
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
            "Semantic blocks (METHOD §7), in bits on the recruitment split. A **frozen** trial adds the candidate's copy path to the model as it is and trains only the path's gate: bits without are `L(D | M)`, bits with are `L(D | M + B)`, and nothing else moves, so there is no noise term. A **co-trained** trial (the earlier design) trains a copy of the model with the block beside a control without it, and the noise is how far a second control, trained on the same batches in reverse order, lands from the first. A block is accepted iff its saving exceeds its cost (membership `log2 C(V, |B|)` plus its parameters at `½ log2 N` bits each) plus the margin plus the noise; at most one per check.\n"
        );
        let _ = writeln!(s, "| run | step | source | candidate | members | trial | bits without | bits with | saving | saved where copied | cost (membership + parameters) | margin | noise | verdict | DL before | DL after |");
        let _ = writeln!(s, "|---|---:|---|---|---|---|---:|---:|---:|---:|---|---:|---:|---|---:|---:|");
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
                "| {} | {} | {} | {} | {}{} | {} | {:.1} | {:.1} | {:.1} | {} | {} | {:.1} | {:.1} | {} | {:.1} | {:.1} |",
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
                d.bits_before,
                d.bits_after,
                d.saving_bits(),
                d.saved_where_copied_bits.map_or("–".to_string(), |b| format!("{b:.1}")),
                split,
                d.margin_bits,
                d.noise_bits,
                if d.accepted { "**accepted**" } else { "rejected" },
                d.description_length_before,
                d.description_length_after
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

fn published_markdown(s: &mut String, comparison: &published::PublishedComparison) {
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

/// The JSON Schema of `report.json`, generated from the types above; `src/report/report.schema.json`
/// is this text, kept in the repository for readers and other tools (a test checks they agree).
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(Report);
    serde_json::to_string_pretty(&schema).unwrap_or_default() + "\n"
}

/// The report's figures, by file name: entropy, fidelity and perplexity against λ, and the training
/// curve, for the first group (the headline runs).
pub fn figures(report: &Report) -> Vec<(&'static str, &'static str, String)> {
    use plots::{line_chart, Series};
    let mut out = Vec::new();
    if let Some(example) = &report.attention_example {
        for (file, lambda, weights) in [
            ("report-attention-0.svg", 0.0, &example.weights_lambda_0),
            ("report-attention-1.svg", 1.0, &example.weights_lambda_1),
        ] {
            let caption = format!("{}: layer {} head {}, λ = {lambda}", example.member, example.layer, example.head);
            if let Some(svg) = plots::heatmap(&caption, weights, &example.targets) {
                out.push((file, "4", svg));
            }
        }
    }
    if let Some(comparison) = &report.published {
        let names: Vec<String> = (1..=comparison.curves.len()).map(|i| format!("C{i}")).collect();
        let mut series: Vec<Series> = comparison
            .curves
            .iter()
            .zip(&names)
            .map(|(c, name)| Series {
                name,
                points: c.points.iter().map(|p| (p.lambda, p.row.entropy_bits.mean)).collect(),
            })
            .collect();
        let published: Vec<(f64, f64)> = comparison
            .figures
            .iter()
            .filter(|f| f.metric == crate::pipeline::PublishedMetric::EntropyBits)
            .map(|f| (f.lambda, f.published))
            .collect();
        if !published.is_empty() {
            series.push(Series { name: "published", points: published });
        }
        if let Some(svg) =
            line_chart("Attention entropy: ours and published", "locality dial λ", "entropy (bits per row)", &series)
        {
            out.push(("report-published.svg", "8", svg));
        }
    }
    let Some(group) = report.groups.first() else { return out };
    let along = |f: &dyn Fn(&DialRow) -> f64| group.dial.iter().map(|r| (r.lambda, f(r))).collect::<Vec<_>>();
    let mut add = |file: &'static str, section: &'static str, svg: Option<String>| {
        if let Some(svg) = svg {
            out.push((file, section, svg));
        }
    };
    add(
        "report-entropy.svg",
        "3",
        line_chart(
            "Attention entropy across the dial",
            "locality dial λ",
            "entropy (bits per row)",
            &[
                Series { name: "all rows", points: along(&|r| r.entropy_bits.mean) },
                Series { name: "covered rows", points: along(&|r| r.covered_entropy_bits.mean) },
            ],
        ),
    );
    add(
        "report-fidelity.svg",
        "3",
        line_chart(
            "Pointer fidelity across the dial",
            "locality dial λ",
            "mass on rule targets (share)",
            &[Series { name: "pointer fidelity", points: along(&|r| r.pointer_fidelity.mean) }],
        ),
    );
    add(
        "report-perplexity.svg",
        "3",
        line_chart(
            "Test perplexity across the dial",
            "locality dial λ",
            "perplexity (per token)",
            &[Series { name: "perplexity", points: along(&|r| r.perplexity.mean) }],
        ),
    );
    add(
        "report-training.svg",
        "7",
        line_chart(
            "Training loss",
            "training step",
            "cross-entropy (nats per token)",
            &[Series {
                name: "mean over seeds",
                points: group.training_curve.iter().map(|&(s, l)| (s as f64, l)).collect(),
            }],
        ),
    );
    out
}

const STYLE: &str =
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}\
table{border-collapse:collapse;margin:1em 0;font-size:.9em}th,td{border:1px solid #ccc;padding:.25em .6em}\
td{text-align:right}td:first-child{text-align:left}th{background:#f3f3f3}code{font-size:.85em}\
figure{display:inline-block;margin:.5em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em}";

/// One self-contained HTML file: the Markdown report as HTML, inline CSS, and the figures inline as
/// SVG under the sections they belong to. Nothing is fetched from anywhere.
pub fn html(report: &Report) -> String {
    let markdown = markdown(report);
    let mut body = String::new();
    let parser = pulldown_cmark::Parser::new_ext(&markdown, pulldown_cmark::Options::ENABLE_TABLES);
    pulldown_cmark::html::push_html(&mut body, parser);
    for (_, section, svg) in figures(report).iter().rev() {
        let marker = format!("<h2>{section}.");
        if let Some(start) = body.find(&marker) {
            if let Some(end) = body[start..].find("</h2>") {
                let at = start + end + "</h2>".len();
                body.insert_str(at, &format!("\n<figure>{svg}</figure>\n"));
            }
        }
    }
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>ailla report: {}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n{body}</body>\n</html>\n",
        report.name
    )
}

/// Writes `report.json`, `report.md`, `report.html` and the figures into the run directory.
pub fn write(run_dir: &Path, report: &Report) -> Result<()> {
    let json = serde_json::to_string_pretty(report).map_err(|e| Error::Numeric(e.to_string()))? + "\n";
    crate::checkpoint::atomic_write(&run_dir.join("report.json"), json.as_bytes())?;
    crate::checkpoint::atomic_write(&run_dir.join("report.md"), markdown(report).as_bytes())?;
    crate::checkpoint::atomic_write(&run_dir.join("report.html"), html(report).as_bytes())?;
    for (file, _, svg) in figures(report) {
        crate::checkpoint::atomic_write(&run_dir.join(file), svg.as_bytes())?;
    }
    Ok(())
}
