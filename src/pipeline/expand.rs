//! Sweeps and the quick variant: a pipeline expanded into its members, bounded before it grows.

use super::*;

/// The pipeline's `quick` section as fields, each checked to name a field of the pipeline.
pub(super) fn quick_fields(p: &Pipeline, text: &str, problems: &mut Vec<Problem>) -> Vec<QuickField> {
    let Ok(document) = serde_json::to_value(p) else { return Vec::new() };
    p.quick
        .iter()
        .filter(|(path, _)| !unknown_field(&document, path, "quick", text, problems))
        .map(|(path, value)| (path.split('.').map(str::to_string).collect(), value.clone()))
        .collect()
}

pub(super) fn apply_fields(document: &mut serde_json::Value, fields: &[QuickField]) {
    for (keys, value) in fields {
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        locate::set(document, &keys, value.clone());
    }
}

/// The most members one pipeline expands to; larger sweeps are several pipelines (or a cluster's).
pub const MAX_MEMBERS: usize = 1000;

/// The sweep's members: `(name, pipeline)` for every combination, in a fixed order. `quick` fields are
/// set again in every member, so that they win over sweep values too.
pub(super) fn expand(
    p: &Pipeline,
    text: &str,
    quick: &[QuickField],
    problems: &mut Vec<Problem>,
) -> Vec<(String, Pipeline)> {
    let base_value = match serde_json::to_value(p) {
        Ok(v) => v,
        Err(e) => {
            problems.push(problem(text, "(file)", e.to_string()));
            return Vec::new();
        }
    };
    let mut axes: Vec<(String, Vec<serde_json::Value>)> = p.sweep.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    if let Some(seeds) = &p.train.seeds {
        axes.push(("train.seed".into(), seeds.iter().map(|&s| serde_json::json!(s)).collect()));
    }
    // bounded before anything is expanded: each member is a whole configuration in memory
    let count = axes.iter().fold(1usize, |count, (_, values)| count.saturating_mul(values.len().max(1)));
    if count > MAX_MEMBERS {
        problems.push(problem(
            text,
            "sweep",
            format!(
                "expands to {} members, more than the {MAX_MEMBERS} one pipeline may have; split it into several \
                 pipelines",
                if count == usize::MAX { "too many".to_string() } else { count.to_string() }
            ),
        ));
        return Vec::new();
    }
    if axes.is_empty() && quick.is_empty() {
        // nothing to vary: the member is the pipeline as parsed, so its own checks name its fields
        return vec![(p.name.clone(), p.clone())];
    }
    let mut members = vec![(String::new(), base_value)];
    for (axis, values) in &axes {
        if values.is_empty() {
            problems.push(problem(text, &format!("sweep.{axis}"), "needs at least one value"));
            continue;
        }
        // `a, b: [[a1, b1], [a2, b2]]` moves several fields together (one axis, not a product)
        let paths: Vec<&str> = axis.split(',').map(str::trim).collect();
        if paths.iter().any(|path| unknown_field(&members[0].1, path, "sweep", text, problems)) {
            continue;
        }
        let rows: Vec<Vec<serde_json::Value>> = if paths.len() == 1 {
            values.iter().map(|v| vec![v.clone()]).collect()
        } else {
            let rows: Vec<Vec<serde_json::Value>> =
                values.iter().filter_map(|v| v.as_array().filter(|a| a.len() == paths.len()).cloned()).collect();
            if rows.len() != values.len() {
                problems.push(problem(
                    text,
                    "sweep",
                    format!("every value of `{axis}` must be a list of {} values, one per field", paths.len()),
                ));
                continue;
            }
            rows
        };
        let mut next = Vec::new();
        for (name, value) in &members {
            for (index, row) in rows.iter().enumerate() {
                let mut changed = value.clone();
                for (path, v) in paths.iter().zip(row) {
                    let keys: Vec<&str> = path.split('.').collect();
                    locate::set(&mut changed, &keys, v.clone());
                }
                let keys: Vec<&str> = paths[0].split('.').collect();
                let short = keys.last().copied().unwrap_or(paths[0]);
                let v = &row[0];
                let label = match v {
                    serde_json::Value::Number(n) => format!("{short}-{n}"),
                    serde_json::Value::String(s) if s.len() <= 24 => {
                        let stem = Path::new(s).file_stem().and_then(|f| f.to_str()).unwrap_or(s);
                        format!("{short}-{stem}")
                    }
                    serde_json::Value::Bool(b) => format!("{short}-{b}"),
                    other => match single_leaf(other) {
                        // `{ constant: { lambda: 0.2 } }` reads best as `lambda-0.2`
                        Some((key, leaf)) => format!("{key}-{leaf}"),
                        // `{ uniform: { low: 0, high: 1 } }` reads best as `schedule-uniform`
                        None => match other.as_object().filter(|o| o.len() == 1).and_then(|o| o.keys().next()) {
                            Some(key) => format!("{short}-{key}"),
                            None => format!("{short}-{}", index + 1),
                        },
                    },
                };
                let joined = if name.is_empty() { label } else { format!("{name}_{label}") };
                next.push((joined, changed));
            }
        }
        members = next;
    }
    let mut out = Vec::new();
    for (name, mut value) in members {
        apply_fields(&mut value, quick);
        let name = if name.is_empty() { p.name.clone() } else { name };
        match serde_json::from_value::<Pipeline>(value) {
            Ok(member) => out.push((name, member)),
            Err(e) => {
                // JSON has no infinity or NaN: such a value comes back as null
                let hint = if e.to_string().contains("null") {
                    " (a value that is not a finite number, such as .inf or .nan, cannot be swept)"
                } else {
                    ""
                };
                problems.push(problem(text, "sweep", format!("member `{name}`: {e}{hint}")))
            }
        }
    }
    out
}

/// Whether `path` names no field of `document`; if so a problem is recorded under `section`.
pub(super) fn unknown_field(
    document: &serde_json::Value,
    path: &str,
    section: &str,
    text: &str,
    problems: &mut Vec<Problem>,
) -> bool {
    let keys: Vec<&str> = path.split('.').collect();
    if locate::get(document, &keys).is_some() {
        return false;
    }
    let known = locate::field_paths(document);
    let hint = suggestion(path, known.iter().map(String::as_str))
        .map(|s| format!("; did you mean `{s}`?"))
        .unwrap_or_default();
    problems.push(problem(text, section, format!("`{path}` is not a field of the pipeline{hint}")));
    true
}

/// The one scalar inside nested single-entry objects, with its key.
pub(super) fn single_leaf(value: &serde_json::Value) -> Option<(String, String)> {
    let serde_json::Value::Object(map) = value else { return None };
    if map.len() != 1 {
        return None;
    }
    let (key, inner) = map.iter().next()?;
    match inner {
        serde_json::Value::Number(n) => Some((key.clone(), n.to_string())),
        serde_json::Value::String(s) => Some((key.clone(), s.clone())),
        serde_json::Value::Bool(b) => Some((key.clone(), b.to_string())),
        other => single_leaf(other),
    }
}
