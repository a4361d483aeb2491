//! The one-way house, measured from the source: every module names only modules below it, and no file
//! is too long to hold one thing.
//!
//! The layers, lowest first. Data flows upwards only: rules text → compiled rules (`dsl` over
//! `locality`); settings (`config`); a run's files (`checkpoint`, `run_dir`); one training step
//! (`step`); recruitment, the training loop, pipelines, reports; the command line on top.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const LAYERS: &[&str] = &[
    "error",
    "rng",
    "json_float",
    "suggest",
    "faults",
    "digest",
    "engine",
    "data",
    "locality",
    "dsl",
    "config",
    "checkpoint",
    "explain",
    "export",
    "run_dir",
    "progress",
    "step",
    "recruit",
    "train",
    "pipeline",
    "report",
    "cluster",
    "bench",
    "cli",
];

/// Longest source file, its tests not counted.
const MAX_LINES: usize = 700;

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The file's text before its test module.
fn without_tests(text: &str) -> &str {
    text.find("#[cfg(test)]").map_or(text, |at| &text[..at])
}

/// The top-level modules that `text` names as `crate::name`.
fn named_modules(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (at, _) in text.match_indices("crate::") {
        let name: String = text[at + 7..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        if name.chars().next().is_some_and(|c| c.is_ascii_lowercase()) {
            out.insert(name);
        }
    }
    out
}

#[test]
fn modules_name_only_layers_below_them_and_files_stay_short() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &mut files);
    files.sort();
    let rank = |name: &str| LAYERS.iter().position(|l| *l == name);
    let mut upward = BTreeMap::new();
    let mut long = Vec::new();
    let mut downward = 0;
    for file in &files {
        let relative = file.strip_prefix(&root).unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(file).unwrap();
        let code = without_tests(&text);
        let lines = code.lines().count();
        if lines > MAX_LINES {
            long.push(format!("{relative}: {lines} lines"));
        }
        let top = relative.split('/').next().unwrap().trim_end_matches(".rs").to_string();
        if top == "lib" || top == "main" {
            continue;
        }
        let own = rank(&top).unwrap_or_else(|| panic!("src/{relative}: module `{top}` has no layer in LAYERS"));
        for name in named_modules(code) {
            let Some(theirs) = rank(&name) else { continue };
            if theirs > own {
                upward.entry(relative.clone()).or_insert_with(Vec::new).push(name);
            } else {
                downward += 1;
            }
        }
    }
    // a scan that found no imports at all would pass the check below without measuring anything
    assert!(downward > 100, "only {downward} imports between layers were found: the scan is broken");
    assert!(upward.is_empty(), "modules naming a layer above their own: {upward:#?}");
    assert!(long.is_empty(), "files over {MAX_LINES} lines (tests not counted): {long:#?}");
}
