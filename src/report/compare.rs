//! Comparing what a run stored with what its replay wrote: file by file, field by field, every number
//! within the tolerance of its kind (`ailla verify`, README "Verifying a run").
//!
//! On the numerical environment the run recorded every tolerance is zero: the README promises bit
//! identity there, so any difference is a failure. Elsewhere OpenBLAS's kernels sum in other orders
//! and training carries that into the last digits, so each kind of figure gets the tolerance below.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Error, Result};

/// `|replayed − stored| ≤ absolute + relative·|stored|` (for weights: `|stored|` is the tensor's
/// largest magnitude).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, schemars::JsonSchema)]
pub struct Tolerance {
    pub absolute: f64,
    pub relative: f64,
}

impl Tolerance {
    pub fn admits(&self, replayed: f64, stored: f64, scale: f64) -> bool {
        (replayed - stored).abs() <= self.absolute + self.relative * scale.abs()
    }
}

/// What a compared value is, which decides its tolerance outside the recorded environment.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ValueKind {
    /// Training losses, penalties and gradient norms (`metrics.jsonl`, `summary.json` `losses`, the
    /// report's training curve): step by step, so they drift least.
    TrainingLoss,
    /// Half-widths of 95 % intervals and Welch p-values: over few seeds they amplify a seed's drift
    /// (12.7× with two seeds).
    Interval,
    /// Every other decimal number: perplexity, bits, accuracy, entropy, fidelity, certificates, bits
    /// of recruitment decisions.
    Figure,
    /// The values of a tensor in a safetensors file, compared tensor by tensor.
    Weights,
    /// The SHA-256 of a weights file in a checkpoint manifest: it differs whenever one bit of the
    /// weights does, so outside the recorded environment the weights themselves are compared instead.
    WeightsHash,
    /// Integers (counts, steps, sizes), text, booleans, the shape of a document: exact everywhere.
    Exact,
}

impl ValueKind {
    /// The tolerance outside the recorded environment (`None`: exact). Measured on the test suite's
    /// runs: OpenBLAS's SandyBridge and Nehalem kernels moved figures by 3.4e-8 relative and interval
    /// half-widths by 1.7e-6 relative against Zen; AVX-512 against AVX2 moved one half-width by 2e-4
    /// (`tests/report.rs`). The bounds are 5–50 times those, far below a difference that means
    /// something.
    pub fn tolerance(self) -> Option<Tolerance> {
        match self {
            ValueKind::TrainingLoss => Some(Tolerance { absolute: 1e-6, relative: 1e-4 }),
            ValueKind::Interval => Some(Tolerance { absolute: 1e-2, relative: 1e-2 }),
            ValueKind::Figure => Some(Tolerance { absolute: 1e-3, relative: 1e-3 }),
            ValueKind::Weights => Some(Tolerance { absolute: 1e-6, relative: 1e-3 }),
            ValueKind::WeightsHash | ValueKind::Exact => None,
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            ValueKind::TrainingLoss => "training losses, penalties, gradient norms",
            ValueKind::Interval => "95 % interval half-widths, Welch p-values",
            ValueKind::Figure => "every other decimal figure",
            ValueKind::Weights => "weights and optimizer state, per tensor (relative to its largest |value|)",
            ValueKind::WeightsHash => "SHA-256 of weights files (the tensors are compared instead)",
            ValueKind::Exact => "integers, text, booleans, structure",
        }
    }

    pub const ALL: [ValueKind; 6] = [
        ValueKind::TrainingLoss,
        ValueKind::Interval,
        ValueKind::Figure,
        ValueKind::Weights,
        ValueKind::WeightsHash,
        ValueKind::Exact,
    ];
}

/// A field left out of the comparison, by name, and why.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
pub struct ExcludedField {
    pub field: String,
    pub files: String,
    pub why: String,
}

/// The fields that legitimately differ between identical runs, or that are compared on their own.
pub fn excluded_fields() -> Vec<ExcludedField> {
    let row = |field: &str, files: &str, why: &str| ExcludedField {
        field: field.into(),
        files: files.into(),
        why: why.into(),
    };
    vec![
        row("wall_time_seconds", "provenance.json, report.json", "wall time varies between identical runs"),
        row("peak_memory_mib", "provenance.json, report.json", "peak memory varies between identical runs"),
        row("seconds", "*/summary.json", "wall time varies between identical runs"),
        row(
            "ailla_version, git_commit, platform, numerics",
            "provenance.json, report.json",
            "the environment: compared on its own, it decides whether bit identity is promised",
        ),
        row(
            "invocation",
            "provenance.json, report.json",
            "run id, UTC start, host, operator and command line: who ran it and when, not what it computed",
        ),
        row(
            "report_sha256",
            "report.json",
            "covers the invocation; checked on its own against the stored report's content",
        ),
        row(
            "pipeline.path, rules[].path, data[].path",
            "provenance.json, report.json",
            "where an input was named from; its SHA-256 is compared",
        ),
    ]
}

/// Keys of a provenance object that describe the environment or the invocation, not the run.
const ENVIRONMENT_KEYS: [&str; 5] = ["ailla_version", "git_commit", "platform", "numerics", "invocation"];
/// Keys that hold wall time or memory wherever they appear.
const VARYING_KEYS: [&str; 3] = ["wall_time_seconds", "peak_memory_mib", "seconds"];

/// One value that differs.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
pub struct Difference {
    /// Relative to the run directory.
    pub file: String,
    /// Where in the file: a JSON path (`groups[0].dial[2].perplexity.mean`), `line N (kind, step S):
    /// path` in a metrics log, a tensor's name in a safetensors file, empty for the file itself.
    pub field: String,
    pub stored: String,
    pub replayed: String,
    pub kind: ValueKind,
    /// The tolerance it was judged by; null when it must be exact.
    pub tolerance: Option<Tolerance>,
    pub within_tolerance: bool,
}

/// A stored file, read and checked before anything is replayed.
enum Content {
    Json(Value),
    Lines(Vec<Value>),
    /// Checked when read, and read again when compared, so that at most two weights files are held
    /// at once.
    Tensors(PathBuf),
}

/// The comparable files of a run directory (JSON documents, metrics logs, safetensors), by path
/// relative to it, in path order.
pub struct Tree {
    files: BTreeMap<String, Content>,
}

/// The files a run directory holds that are compared.
fn comparable(name: &str) -> bool {
    !crate::run_dir::is_leftover(name)
        && (name.ends_with(".json") || name.ends_with(".jsonl") || name.ends_with(".safetensors"))
}

fn list(dir: &Path, prefix: &str, out: &mut Vec<(String, PathBuf)>) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut names: Vec<(String, PathBuf, bool)> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_dir = entry.file_type().map_err(|e| Error::io(entry.path(), e))?.is_dir();
        names.push((name, entry.path(), is_dir));
    }
    names.sort();
    for (name, path, is_dir) in names {
        let relative = format!("{prefix}{name}");
        if is_dir {
            list(&path, &format!("{relative}/"), out)?;
        } else if comparable(&name) {
            out.push((relative, path));
        }
    }
    Ok(())
}

fn corrupt(path: &Path, message: impl std::fmt::Display) -> Error {
    Error::Config { path: path.to_path_buf(), message: format!("cannot be read as the run wrote it: {message}") }
}

impl Tree {
    /// Reads every comparable file under `dir`; a file that does not parse is an error naming it (and
    /// the line, in a metrics log).
    pub fn read(dir: &Path) -> Result<Tree> {
        let mut paths = Vec::new();
        list(dir, "", &mut paths)?;
        let mut files = BTreeMap::new();
        for (relative, path) in paths {
            let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
            let content = if relative.ends_with(".safetensors") {
                safetensors::SafeTensors::deserialize(&bytes).map_err(|e| corrupt(&path, format!("{e:?}")))?;
                Content::Tensors(path)
            } else {
                let text = String::from_utf8(bytes).map_err(|e| corrupt(&path, e))?;
                if relative.ends_with(".jsonl") {
                    let mut lines = Vec::new();
                    for (at, line) in text.lines().enumerate() {
                        let value =
                            serde_json::from_str(line).map_err(|e| corrupt(&path, format!("line {}: {e}", at + 1)))?;
                        lines.push(value);
                    }
                    Content::Lines(lines)
                } else {
                    Content::Json(serde_json::from_str(&text).map_err(|e| corrupt(&path, e))?)
                }
            };
            files.insert(relative, content);
        }
        Ok(Tree { files })
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// The JSON document at `relative`, when the tree holds one.
    pub fn json(&self, relative: &str) -> Option<&Value> {
        match self.files.get(relative) {
            Some(Content::Json(value)) => Some(value),
            _ => None,
        }
    }
}

/// Where a JSON walk is: provenance objects have fields that are compared on their own.
#[derive(Clone, Copy, PartialEq)]
enum Scope {
    Plain,
    Provenance,
    /// A `{path, sha256}` entry of a provenance.
    InputFile,
}

/// The differences found so far, and how much was compared.
pub struct Comparison {
    pub same_environment: bool,
    pub differences: Vec<Difference>,
    pub numbers: usize,
    pub tensors: usize,
    pub files: usize,
}

impl Comparison {
    pub fn new(same_environment: bool) -> Self {
        Comparison { same_environment, differences: Vec::new(), numbers: 0, tensors: 0, files: 0 }
    }

    /// A stored value that contradicts what its own file says (a report's hash of its own content):
    /// never within any tolerance.
    pub fn contradiction(&mut self, file: &str, field: &str, stored: String, found: String) {
        self.record(file, field, stored, found, ValueKind::Exact, false);
    }

    fn record(&mut self, file: &str, field: &str, stored: String, replayed: String, kind: ValueKind, within: bool) {
        let tolerance = if self.same_environment { None } else { kind.tolerance() };
        let within_tolerance = !self.same_environment && within;
        self.differences.push(Difference {
            file: file.into(),
            field: field.into(),
            stored,
            replayed,
            kind,
            tolerance,
            within_tolerance,
        });
    }

    /// Compares every file of `stored` with the same file of `replayed`, in path order.
    pub fn trees(&mut self, stored: &Tree, replayed: &Tree) {
        let names: BTreeSet<&String> = stored.files.keys().chain(replayed.files.keys()).collect();
        for name in names {
            match (stored.files.get(name), replayed.files.get(name)) {
                (Some(a), Some(b)) => {
                    self.files += 1;
                    self.content(name, a, b);
                }
                (Some(_), None) => {
                    self.record(name, "", "present".into(), "not written".into(), ValueKind::Exact, false)
                }
                (None, Some(_)) => {
                    self.record(name, "", "not stored".into(), "written".into(), ValueKind::Exact, false)
                }
                (None, None) => {}
            }
        }
    }

    fn content(&mut self, file: &str, stored: &Content, replayed: &Content) {
        let root_scope = if file == super::PROVENANCE_FILE { Scope::Provenance } else { Scope::Plain };
        match (stored, replayed) {
            (Content::Json(a), Content::Json(b)) => self.json(file, "", "", a, b, root_scope),
            (Content::Lines(a), Content::Lines(b)) => {
                if a.len() != b.len() {
                    self.record(file, "lines", a.len().to_string(), b.len().to_string(), ValueKind::Exact, false);
                }
                for (at, (x, y)) in a.iter().zip(b).enumerate() {
                    let label = line_label(at + 1, x);
                    self.json(file, &label, "", x, y, Scope::Plain);
                }
            }
            (Content::Tensors(a), Content::Tensors(b)) => match (std::fs::read(a), std::fs::read(b)) {
                (Ok(a), Ok(b)) => self.tensors(file, &a, &b),
                (a, b) => {
                    let show =
                        |r: std::io::Result<Vec<u8>>| r.map_or_else(|e| format!("unreadable: {e}"), |_| "read".into());
                    self.record(file, "", show(a), show(b), ValueKind::Exact, false)
                }
            },
            _ => self.record(file, "", "one kind of file".into(), "another".into(), ValueKind::Exact, false),
        }
    }

    /// Compares the whole JSON document `file` as stored and as replayed.
    pub fn document(&mut self, file: &str, stored: &Value, replayed: &Value) {
        self.content(file, &Content::Json(stored.clone()), &Content::Json(replayed.clone()));
    }

    /// Compares two JSON values at `path` (`key` is the nearest object key, which names the figure).
    fn json(&mut self, file: &str, path: &str, key: &str, stored: &Value, replayed: &Value, scope: Scope) {
        match (stored, replayed) {
            (Value::Object(a), Value::Object(b)) => {
                let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
                for name in keys {
                    if VARYING_KEYS.contains(&name.as_str())
                        || (path.is_empty() && name == "report_sha256" && file == super::REPORT_FILE)
                        || (scope == Scope::Provenance && ENVIRONMENT_KEYS.contains(&name.as_str()))
                        || (scope == Scope::InputFile && name == "path")
                    {
                        continue;
                    }
                    let inner = match (scope, name.as_str()) {
                        (Scope::Plain, "provenance") if path.is_empty() => Scope::Provenance,
                        (Scope::Provenance, "pipeline" | "rules" | "data") => Scope::InputFile,
                        _ => Scope::Plain,
                    };
                    let at = join(path, name);
                    match (a.get(name), b.get(name)) {
                        (Some(x), Some(y)) => self.json(file, &at, name, x, y, inner),
                        (x, y) => self.record(file, &at, shown(x), shown(y), ValueKind::Exact, false),
                    }
                }
            }
            (Value::Array(a), Value::Array(b)) => {
                if a.len() != b.len() {
                    let at = format!("{path} (length)");
                    self.record(file, &at, a.len().to_string(), b.len().to_string(), ValueKind::Exact, false);
                }
                for (index, (x, y)) in a.iter().zip(b).enumerate() {
                    self.json(file, &format!("{path}[{index}]"), key, x, y, scope);
                }
            }
            (Value::Number(a), Value::Number(b)) => {
                self.numbers += 1;
                if a == b {
                    return;
                }
                let decimal = a.is_f64() && b.is_f64();
                let (x, y) = (a.as_f64().unwrap_or(f64::NAN), b.as_f64().unwrap_or(f64::NAN));
                let kind = if decimal { number_kind(file, key) } else { ValueKind::Exact };
                let within = kind.tolerance().is_some_and(|t| t.admits(y, x, x));
                self.record(file, path, a.to_string(), b.to_string(), kind, within);
            }
            (a, b) if a == b => {}
            (Value::String(a), Value::String(b)) if key == "sha256" && is_weights_hash(file, path) => {
                // the tensors of the file it hashes are compared on their own
                self.record(file, path, a.clone(), b.clone(), ValueKind::WeightsHash, true);
            }
            (a, b) => self.record(file, path, a.to_string(), b.to_string(), ValueKind::Exact, false),
        }
    }

    fn tensors(&mut self, file: &str, stored: &[u8], replayed: &[u8]) {
        if stored == replayed {
            self.tensors += safetensors::SafeTensors::deserialize(stored).map_or(0, |t| t.len());
            return;
        }
        let (Ok(a), Ok(b)) =
            (safetensors::SafeTensors::deserialize(stored), safetensors::SafeTensors::deserialize(replayed))
        else {
            let (x, y) = (crate::digest::sha256_hex(stored), crate::digest::sha256_hex(replayed));
            return self.record(file, "", x, y, ValueKind::Exact, false);
        };
        let metadata = |bytes: &[u8]| {
            safetensors::SafeTensors::read_metadata(bytes).ok().and_then(|(_, m)| m.metadata().clone()).map(|m| {
                let sorted: BTreeMap<String, String> = m.into_iter().collect();
                serde_json::to_string(&sorted).unwrap_or_default()
            })
        };
        let (ma, mb) = (metadata(stored), metadata(replayed));
        let same_metadata = ma == mb;
        if !same_metadata {
            let show = |m: Option<String>| m.unwrap_or_else(|| "none".into());
            self.record(file, "metadata", show(ma), show(mb), ValueKind::Exact, false);
        }
        let names: BTreeSet<String> = a.names().into_iter().chain(b.names()).map(str::to_string).collect();
        let mut differed = false;
        for name in &names {
            self.tensors += 1;
            match (a.tensor(name), b.tensor(name)) {
                (Ok(x), Ok(y)) if x.dtype() != y.dtype() || x.shape() != y.shape() => {
                    let describe = |t: &safetensors::tensor::TensorView| format!("{:?} {:?}", t.dtype(), t.shape());
                    self.record(file, name, describe(&x), describe(&y), ValueKind::Exact, false);
                    differed = true;
                }
                (Ok(x), Ok(y)) if x.data() == y.data() => {}
                (Ok(x), Ok(y)) if x.dtype() == safetensors::Dtype::F32 => {
                    let (largest, delta) = f32_difference(x.data(), y.data());
                    let within = ValueKind::Weights.tolerance().is_some_and(|t| t.admits(delta, 0.0, largest));
                    let stored = format!("max |value| {largest:e}");
                    let replayed = format!("max |difference| {delta:e}");
                    self.record(file, name, stored, replayed, ValueKind::Weights, within);
                    differed = true;
                }
                (Ok(_), Ok(_)) => {
                    self.record(file, name, "bytes".into(), "other bytes".into(), ValueKind::Exact, false);
                    differed = true;
                }
                (x, y) => {
                    let show = |ok: bool| if ok { "present" } else { "absent" }.to_string();
                    self.record(file, name, show(x.is_ok()), show(y.is_ok()), ValueKind::Exact, false);
                    differed = true;
                }
            }
        }
        if !differed && same_metadata {
            // same tensors and metadata in another layout
            let (x, y) = (crate::digest::sha256_hex(stored), crate::digest::sha256_hex(replayed));
            self.record(file, "", x, y, ValueKind::WeightsHash, true);
        }
    }
}

/// The largest magnitude of `stored` and the largest elementwise difference, over little-endian f32s.
fn f32_difference(stored: &[u8], replayed: &[u8]) -> (f64, f64) {
    let values = |bytes: &[u8]| -> Vec<f64> {
        bytes.chunks_exact(4).map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]]))).collect()
    };
    let (a, b) = (values(stored), values(replayed));
    let largest = a.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let delta =
        a.iter().zip(&b).fold(0.0f64, |m, (x, y)| if (x - y).is_nan() { f64::INFINITY } else { m.max((x - y).abs()) });
    (largest, delta)
}

/// The tolerance class of a decimal number, from its file and the key that names it.
fn number_kind(file: &str, key: &str) -> ValueKind {
    let in_log = file.ends_with("metrics.jsonl");
    match key {
        "loss" | "penalty" | "grad_norm" if in_log => ValueKind::TrainingLoss,
        "losses" | "training_curve" => ValueKind::TrainingLoss,
        "ci95" => ValueKind::Interval,
        k if k.ends_with("_p_vs_zero") || k.contains("p_value") => ValueKind::Interval,
        _ => ValueKind::Figure,
    }
}

/// Whether `path` in `file` is the hash of a weights file in a checkpoint manifest.
fn is_weights_hash(file: &str, path: &str) -> bool {
    (file.ends_with(".manifest.json") && (path == "model.sha256" || path == "optimizer.sha256"))
        || (file == super::REPORT_FILE && path.starts_with("card.checkpoints["))
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() || path.ends_with(": ") {
        format!("{path}{key}")
    } else {
        format!("{path}.{key}")
    }
}

/// `line N (kind, step S): ` for a metrics log line, so a difference says which record it is in.
fn line_label(number: usize, record: &Value) -> String {
    let kind = record.get("kind").and_then(Value::as_str);
    let step = record.get("step").and_then(Value::as_u64);
    match (kind, step) {
        (Some(kind), Some(step)) => format!("line {number} ({kind}, step {step}): "),
        (Some(kind), None) => format!("line {number} ({kind}): "),
        _ => format!("line {number}: "),
    }
}

fn shown(value: Option<&Value>) -> String {
    value.map_or_else(|| "absent".to_string(), Value::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compare(same: bool, a: Value, b: Value) -> Vec<Difference> {
        let mut comparison = Comparison::new(same);
        comparison.json("x/metrics.jsonl", "line 1 (train, step 1): ", "", &a, &b, Scope::Plain);
        comparison.differences
    }

    #[test]
    fn a_loss_is_exact_on_the_recorded_environment_and_within_its_tolerance_elsewhere() {
        let (a, b) = (serde_json::json!({"loss": 5.0, "step": 1}), serde_json::json!({"loss": 5.0001, "step": 1}));
        let same = compare(true, a.clone(), b.clone());
        assert_eq!(same.len(), 1);
        assert_eq!(same[0].field, "line 1 (train, step 1): loss");
        assert!(!same[0].within_tolerance && same[0].tolerance.is_none());
        let other = compare(false, a, b);
        assert!(other[0].within_tolerance, "{other:?}");
        assert_eq!(other[0].kind, ValueKind::TrainingLoss);
        let far = compare(false, serde_json::json!({"loss": 5.0}), serde_json::json!({"loss": 5.01}));
        assert!(!far[0].within_tolerance);
    }

    #[test]
    fn integers_and_text_are_exact_and_wall_time_is_left_out() {
        let a = serde_json::json!({"step": 1, "name": "a", "seconds": 1.5});
        let b = serde_json::json!({"step": 2, "name": "b", "seconds": 9.5});
        let found = compare(false, a, b);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found.iter().all(|d| d.kind == ValueKind::Exact && !d.within_tolerance));
    }
}
