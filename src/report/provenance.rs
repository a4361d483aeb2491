//! What produced a run: code version, platform, threads, and SHA-256 of every input file.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

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
    pub pipeline: FileHash,
    /// Every rules file read, includes included.
    pub rules: Vec<FileHash>,
    pub data: Vec<FileHash>,
    pub seeds: Vec<u64>,
    /// The two fields that differ between identical runs.
    pub wall_time_seconds: f64,
    pub peak_memory_mib: Option<f64>,
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn hash_file(path: &std::path::Path) -> Result<FileHash> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    Ok(FileHash { path: path.display().to_string(), sha256: sha256_hex(&bytes) })
}

/// Hashes the inputs of a plan before it runs (wall time and memory are filled in after).
pub fn collect(plan: &Plan, pipeline_path: &std::path::Path, threads: usize) -> Result<Provenance> {
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
                    push(&mut data, hash_file(&file)?);
                }
            }
        }
    }
    for member in &plan.members {
        if !seeds.contains(&member.config.seed) {
            seeds.push(member.config.seed);
        }
        match &member.config.corpus {
            CorpusSource::Bundled { seed } => {
                let splits = crate::data::generator::bundled_corpus(*seed);
                let text = format!("{}{}{}", splits.train, splits.valid, splits.test);
                push(
                    &mut data,
                    FileHash {
                        path: format!("bundled corpus (generated, seed {seed})"),
                        sha256: sha256_hex(text.as_bytes()),
                    },
                );
            }
            CorpusSource::Directory(dir) => {
                for file in crate::data::load_splits(dir)?.files {
                    push(&mut data, hash_file(&file)?);
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
                            FileHash { path: file.name().clone(), sha256: sha256_hex(file.source().as_bytes()) },
                        );
                        id += 1;
                    }
                }
                RulesSource::File(path) => push(&mut rules, hash_file(path)?),
            }
        }
    }
    seeds.sort_unstable();
    Ok(Provenance {
        ailla_version: env!("CARGO_PKG_VERSION").into(),
        git_commit: env!("AILLA_GIT_COMMIT").into(),
        platform: format!("{}-{}", std::env::consts::OS, std::env::consts::ARCH),
        threads,
        pipeline: hash_file(pipeline_path)?,
        rules,
        data,
        seeds,
        wall_time_seconds: 0.0,
        peak_memory_mib: None,
    })
}
