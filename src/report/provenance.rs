//! What produced a run: code version, platform, threads, and SHA-256 of every input file.

use serde::{Deserialize, Serialize};

use crate::locality::RulesSource;
use crate::pipeline::Plan;
use crate::train::CorpusSource;
use crate::{Error, Result};

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
pub struct FileHash {
    pub path: String,
    pub sha256: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
pub struct Provenance {
    pub ailla_version: String,
    pub git_commit: String,
    pub platform: String,
    pub threads: usize,
    /// CPU, kernel instruction set, BLAS library, version and kernel: what decides the last bits
    /// (absent in reports written before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub numerics: Option<crate::engine::environment::NumericalEnvironment>,
    pub pipeline: FileHash,
    /// Every rules file read, includes included.
    pub rules: Vec<FileHash>,
    pub data: Vec<FileHash>,
    pub seeds: Vec<u64>,
    /// The two fields that differ between identical runs.
    pub wall_time_seconds: f64,
    pub peak_memory_mib: Option<f64>,
}

pub use crate::digest::sha256_hex;

fn hash_file(path: &std::path::Path, base: &std::path::Path) -> Result<FileHash> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    Ok(FileHash { path: relative_to(path, base), sha256: sha256_hex(&bytes) })
}

/// `path` as seen from the directory `base` (the pipeline file's), so that a report names its inputs
/// the same way on every machine that has the same layout: relative paths are kept as written, and an
/// absolute one becomes `../..`-style when `base` can be resolved.
pub fn relative_to(path: &std::path::Path, base: &std::path::Path) -> String {
    use std::path::Component;
    if path.is_relative() {
        return path.display().to_string();
    }
    let (Ok(target), Ok(base)) = (path.canonicalize(), base.canonicalize()) else {
        return path.display().to_string();
    };
    let target: Vec<Component> = target.components().collect();
    let base: Vec<Component> = base.components().collect();
    let common = target.iter().zip(&base).take_while(|(a, b)| a == b).count();
    if common <= 1 {
        return path.display().to_string();
    }
    let mut relative = std::path::PathBuf::new();
    for _ in common..base.len() {
        relative.push("..");
    }
    for part in &target[common..] {
        relative.push(part);
    }
    relative.display().to_string()
}

/// Hashes the inputs of a plan before it runs (wall time and memory are filled in after).
pub fn collect(plan: &Plan, pipeline_path: &std::path::Path, threads: usize) -> Result<Provenance> {
    let base = match pipeline_path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let mut rules: Vec<FileHash> = Vec::new();
    let mut data: Vec<FileHash> = Vec::new();
    let mut seeds: Vec<u64> = Vec::new();
    let push = |list: &mut Vec<FileHash>, item: FileHash| {
        if !list.iter().any(|h| h.path == item.path) {
            list.push(item);
        }
    };
    if let Some(domains) = &plan.domains {
        seeds.push(domains.seed);
        for source in &domains.domains.sources {
            if let CorpusSource::Directory(dir) = &source.corpus {
                for file in crate::data::load_splits(dir)?.files {
                    push(&mut data, hash_file(&file, &base)?);
                }
            }
        }
    }
    for member in &plan.members {
        if !seeds.contains(&member.config.seed) {
            seeds.push(member.config.seed);
        }
        match &member.config.corpus {
            CorpusSource::Bundled { seed } | CorpusSource::Planted { seed } => {
                let splits = member.config.corpus.load()?;
                let text = format!("{}{}{}", splits.train, splits.valid, splits.test);
                let kind = if matches!(member.config.corpus, CorpusSource::Planted { .. }) {
                    "bundled corpus with planted allergens"
                } else {
                    "bundled corpus"
                };
                push(
                    &mut data,
                    FileHash { path: format!("{kind} (generated, seed {seed})"), sha256: sha256_hex(text.as_bytes()) },
                );
            }
            CorpusSource::Directory(dir) => {
                for file in crate::data::load_splits(dir)?.files {
                    push(&mut data, hash_file(&file, &base)?);
                }
            }
        }
        let Some(locality) = &member.config.locality else { continue };
        let sources = std::iter::once(&locality.rules).chain(locality.injections.iter().map(|i| &i.rules));
        for source in sources {
            match source {
                RulesSource::Bundled => push(
                    &mut rules,
                    FileHash {
                        path: "rules/default.rules (built in)".into(),
                        sha256: sha256_hex(crate::locality::rules::BUNDLED_RULES.as_bytes()),
                    },
                ),
                RulesSource::File(path) if path.extension().is_some_and(|e| e == "rules") => {
                    let loaded = crate::dsl::load(path)?;
                    let mut id = 0;
                    while let Ok(file) = loaded.files.get(id) {
                        push(
                            &mut rules,
                            FileHash {
                                path: relative_to(std::path::Path::new(file.name()), &base),
                                sha256: sha256_hex(file.source().as_bytes()),
                            },
                        );
                        id += 1;
                    }
                }
                RulesSource::File(path) => push(&mut rules, hash_file(path, &base)?),
            }
        }
    }
    seeds.sort_unstable();
    Ok(Provenance {
        ailla_version: env!("CARGO_PKG_VERSION").into(),
        git_commit: env!("AILLA_GIT_COMMIT").into(),
        platform: format!("{}-{}", std::env::consts::OS, std::env::consts::ARCH),
        threads,
        numerics: Some(crate::engine::environment::current()),
        pipeline: FileHash {
            path: pipeline_path.display().to_string(),
            sha256: sha256_hex(&std::fs::read(pipeline_path).map_err(|e| Error::io(pipeline_path, e))?),
        },
        rules,
        data,
        seeds,
        wall_time_seconds: 0.0,
        peak_memory_mib: None,
    })
}
