//! `ailla diff RUN_A RUN_B`: what differs between two pipeline runs — their resolved configuration
//! field by field, their inputs by SHA-256, their numerical environment — and every headline number
//! of their reports side by side, with the difference, its 95 % interval and Welch's p where both
//! runs have several seeds (METHOD §5; [`super::stats::contrast`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::stats::{contrast, Contrast, Estimate};
use super::{DialRow, Report};
use crate::{Error, Result};

/// A field whose value differs; `a` or `b` is `absent` where one run lacks it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
pub struct FieldChange {
    pub field: String,
    pub a: String,
    pub b: String,
}

/// One input file of either run.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
pub struct InputRow {
    /// `pipeline`, `rules` or `data`.
    pub role: String,
    pub path: String,
    pub sha256_a: Option<String>,
    pub sha256_b: Option<String>,
    pub same: bool,
}

/// One headline number at one λ in both runs.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
pub struct MetricRow {
    pub lambda: f64,
    pub metric: String,
    pub a: Estimate,
    pub b: Estimate,
    /// `b − a`, its interval and Welch's p.
    pub contrast: Contrast,
}

/// Certificates at one λ in both runs.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
pub struct CertificateChange {
    pub lambda: f64,
    pub share_certified_a: f64,
    pub share_certified_b: f64,
    pub violations_a: usize,
    pub violations_b: usize,
}

/// The `index`-th group of runs that differ only in their seed, in each report.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
pub struct GroupDiff {
    pub index: usize,
    pub members_a: Vec<String>,
    pub members_b: Vec<String>,
    pub metrics: Vec<MetricRow>,
    pub certificates: Vec<CertificateChange>,
    /// λ values only one report evaluates.
    pub lambdas_only_in_a: Vec<f64>,
    pub lambdas_only_in_b: Vec<f64>,
}

/// One block-recruitment decision (METHOD §7), by member, step and candidate.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
pub struct DecisionRow {
    pub member: String,
    pub step: usize,
    pub candidate: String,
    /// `accepted`, `rejected`, or null where that run made no such decision.
    pub a: Option<String>,
    pub b: Option<String>,
    pub saving_net_bits_a: Option<f64>,
    pub saving_net_bits_b: Option<f64>,
}

/// What `ailla diff` found; `--json` prints this.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunDiff {
    pub a: String,
    pub b: String,
    pub pipeline_a: String,
    pub pipeline_b: String,
    /// Every field of `pipeline.resolved.json` that differs (members by name).
    pub configuration: Vec<FieldChange>,
    pub inputs: Vec<InputRow>,
    /// Environment facts that differ (code, platform, CPU, BLAS, threads).
    pub environment: Vec<FieldChange>,
    pub groups: Vec<GroupDiff>,
    /// Groups only one report has, by their members.
    pub unmatched_groups: Vec<FieldChange>,
    pub failed_members: Vec<FieldChange>,
    pub recruitment: Vec<DecisionRow>,
}

/// Reads one headline figure of a dial row.
pub type MetricOf = fn(&DialRow) -> &Estimate;

/// The headline numbers of a dial row, in the order the report's table prints them.
pub const METRICS: [(&str, MetricOf); 9] = [
    ("perplexity", |r| &r.perplexity),
    ("bits_per_token", |r| &r.bits_per_token),
    ("accuracy", |r| &r.accuracy),
    ("entropy_bits", |r| &r.entropy_bits),
    ("covered_entropy_bits", |r| &r.covered_entropy_bits),
    ("pointer_fidelity", |r| &r.pointer_fidelity),
    ("pointer_hit_rate", |r| &r.pointer_hit_rate),
    ("block_concentration", |r| &r.block_concentration),
    ("participation_ratio", |r| &r.participation_ratio),
];

/// A run directory's report, or an error naming what is missing.
fn read_report(run_dir: &Path) -> Result<Report> {
    if !run_dir.is_dir() {
        return Err(Error::Config { path: run_dir.to_path_buf(), message: "is not a directory".into() });
    }
    let path = run_dir.join("report.json");
    if !path.is_file() {
        return Err(Error::Config {
            path,
            message: "is missing: diff compares the reports of two `ailla run` directories (`ailla report` rebuilds \
                      one)"
                .into(),
        });
    }
    super::build::read_json(&path)
}

/// Compares the runs in `a` and `b` from their reports alone.
pub fn diff(a: &Path, b: &Path) -> Result<RunDiff> {
    let (ra, rb) = (read_report(a)?, read_report(b)?);
    let mut groups = Vec::new();
    let mut unmatched_groups = Vec::new();
    for index in 0..ra.groups.len().max(rb.groups.len()) {
        match (ra.groups.get(index), rb.groups.get(index)) {
            (Some(ga), Some(gb)) => groups.push(group_diff(index, ga, gb)),
            (ga, gb) => {
                let members = |g: Option<&super::Group>| g.map_or("absent".into(), |g| g.members.join(", "));
                unmatched_groups.push(FieldChange {
                    field: format!("group {}", index + 1),
                    a: members(ga),
                    b: members(gb),
                });
            }
        }
    }
    let failed =
        |r: &Report| if r.failed_members.is_empty() { "none".to_string() } else { r.failed_members.join(", ") };
    let failed_members = if ra.failed_members == rb.failed_members {
        Vec::new()
    } else {
        vec![FieldChange { field: "failed members".into(), a: failed(&ra), b: failed(&rb) }]
    };
    Ok(RunDiff {
        a: a.display().to_string(),
        b: b.display().to_string(),
        pipeline_a: ra.name.clone(),
        pipeline_b: rb.name.clone(),
        configuration: changed_fields(&by_member_name(&ra.resolved_pipeline), &by_member_name(&rb.resolved_pipeline)),
        inputs: inputs(&ra.provenance, &rb.provenance),
        environment: environment(&ra.provenance, &rb.provenance),
        groups,
        unmatched_groups,
        failed_members,
        recruitment: decisions(&ra, &rb),
    })
}

/// The plan with its members keyed by name instead of position, so that a sweep with a member more
/// or less lines the others up.
fn by_member_name(plan: &Value) -> Value {
    let mut plan = plan.clone();
    if let Some(members) = plan.get_mut("members").and_then(Value::as_array_mut) {
        let keyed: serde_json::Map<String, Value> = members
            .iter()
            .map(|m| {
                let name = m.get("name").and_then(Value::as_str).unwrap_or("?").to_string();
                (name, m.get("config").cloned().unwrap_or(Value::Null))
            })
            .collect();
        plan["members"] = Value::Object(keyed);
    }
    plan
}

/// Every leaf of `value` by its dotted path; arrays of plain values are one leaf (`[0.0, 0.5, 1.0]`).
fn leaves(value: &Value, path: &str, out: &mut BTreeMap<String, String>) {
    let at = |key: &str| if path.is_empty() { key.to_string() } else { format!("{path}.{key}") };
    match value {
        Value::Object(map) if !map.is_empty() => map.iter().for_each(|(k, v)| leaves(v, &at(k), out)),
        Value::Array(items) if items.iter().any(|v| v.is_object() || v.is_array()) => {
            items.iter().enumerate().for_each(|(i, v)| leaves(v, &format!("{path}[{i}]"), out))
        }
        other => {
            out.insert(path.to_string(), other.to_string());
        }
    }
}

fn changed_fields(a: &Value, b: &Value) -> Vec<FieldChange> {
    let (mut la, mut lb) = (BTreeMap::new(), BTreeMap::new());
    leaves(a, "", &mut la);
    leaves(b, "", &mut lb);
    let keys: BTreeSet<&String> = la.keys().chain(lb.keys()).collect();
    let absent = || "absent".to_string();
    keys.into_iter()
        .filter(|k| la.get(*k) != lb.get(*k))
        .map(|k| FieldChange {
            field: k.clone(),
            a: la.get(k).cloned().unwrap_or_else(absent),
            b: lb.get(k).cloned().unwrap_or_else(absent),
        })
        .collect()
}

fn inputs(a: &super::provenance::Provenance, b: &super::provenance::Provenance) -> Vec<InputRow> {
    let files = |p: &super::provenance::Provenance| {
        let mut out: BTreeMap<(String, String), String> = BTreeMap::new();
        out.insert(("pipeline".into(), p.pipeline.path.clone()), p.pipeline.sha256.clone());
        for (role, list) in [("rules", &p.rules), ("data", &p.data)] {
            for file in list {
                out.insert((role.into(), file.path.clone()), file.sha256.clone());
            }
        }
        out
    };
    let (fa, fb) = (files(a), files(b));
    // one pipeline file each: its two names are one row
    let mut rows = vec![InputRow {
        role: "pipeline".into(),
        path: if a.pipeline.path == b.pipeline.path {
            a.pipeline.path.clone()
        } else {
            format!("{} | {}", a.pipeline.path, b.pipeline.path)
        },
        sha256_a: Some(a.pipeline.sha256.clone()),
        sha256_b: Some(b.pipeline.sha256.clone()),
        same: a.pipeline.sha256 == b.pipeline.sha256,
    }];
    let keys: BTreeSet<&(String, String)> = fa.keys().chain(fb.keys()).filter(|(role, _)| role != "pipeline").collect();
    for key in keys {
        let (x, y) = (fa.get(key).cloned(), fb.get(key).cloned());
        rows.push(InputRow { role: key.0.clone(), path: key.1.clone(), same: x == y, sha256_a: x, sha256_b: y });
    }
    rows
}

fn environment(a: &super::provenance::Provenance, b: &super::provenance::Provenance) -> Vec<FieldChange> {
    let facts = |p: &super::provenance::Provenance| {
        let mut value = serde_json::json!({
            "ailla_version": p.ailla_version, "git_commit": p.git_commit, "platform": p.platform,
            "threads": p.threads, "seeds": p.seeds,
        });
        value["numerics"] = serde_json::to_value(&p.numerics).unwrap_or(Value::Null);
        value
    };
    changed_fields(&facts(a), &facts(b))
}

fn same_lambda(x: f64, y: f64) -> bool {
    (x - y).abs() < 1e-9
}

fn group_diff(index: usize, a: &super::Group, b: &super::Group) -> GroupDiff {
    let mut metrics = Vec::new();
    for row_a in &a.dial {
        let Some(row_b) = b.dial.iter().find(|r| same_lambda(r.lambda, row_a.lambda)) else { continue };
        for (metric, get) in METRICS {
            let (x, y) = (get(row_a), get(row_b));
            metrics.push(MetricRow {
                lambda: row_a.lambda,
                metric: metric.into(),
                a: *x,
                b: *y,
                contrast: contrast(x, y),
            });
        }
    }
    let certificates = a
        .certificates
        .iter()
        .filter_map(|ca| {
            let cb = b.certificates.iter().find(|c| same_lambda(c.lambda, ca.lambda))?;
            Some(CertificateChange {
                lambda: ca.lambda,
                share_certified_a: ca.share_certified,
                share_certified_b: cb.share_certified,
                violations_a: ca.violations,
                violations_b: cb.violations,
            })
        })
        .collect();
    let only = |x: &super::Group, y: &super::Group| -> Vec<f64> {
        x.dial.iter().map(|r| r.lambda).filter(|l| !y.dial.iter().any(|r| same_lambda(r.lambda, *l))).collect()
    };
    GroupDiff {
        index: index + 1,
        members_a: a.members.clone(),
        members_b: b.members.clone(),
        metrics,
        certificates,
        lambdas_only_in_a: only(a, b),
        lambdas_only_in_b: only(b, a),
    }
}

fn decisions(a: &Report, b: &Report) -> Vec<DecisionRow> {
    type Key = (String, usize, String);
    let index = |r: &Report| -> BTreeMap<Key, (bool, f64)> {
        r.block_recruitment
            .iter()
            .map(|d| {
                let saving = d.decision.saving_bits() - d.decision.cost_bits;
                ((d.member.clone(), d.decision.step, d.decision.candidate.clone()), (d.decision.accepted, saving))
            })
            .collect()
    };
    let (ia, ib) = (index(a), index(b));
    let keys: BTreeSet<&Key> = ia.keys().chain(ib.keys()).collect();
    let verdict =
        |v: Option<&(bool, f64)>| v.map(|(accepted, _)| if *accepted { "accepted" } else { "rejected" }.to_string());
    keys.into_iter()
        .map(|key| DecisionRow {
            member: key.0.clone(),
            step: key.1,
            candidate: key.2.clone(),
            a: verdict(ia.get(key)),
            b: verdict(ib.get(key)),
            saving_net_bits_a: ia.get(key).map(|v| v.1),
            saving_net_bits_b: ib.get(key).map(|v| v.1),
        })
        .collect()
}
