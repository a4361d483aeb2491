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
    /// The file's size in bytes (absent in reports written before sizes were recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
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
    /// Who started the run, where, when and how: the facts that differ between identical runs by
    /// design (absent in reports written before they were recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invocation: Option<Invocation>,
}

/// The run's invocation, recorded when the run starts (for a run split across processes, when the
/// first of them prepared the run directory).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
pub struct Invocation {
    /// `<pipeline name>-<start, UTC, YYYYMMDDThhmmssZ>-<8 hex digits>`; the digits are the start of
    /// the SHA-256 of host, process id and start time in nanoseconds, so two runs started in the same
    /// second on different machines still differ.
    pub run_id: String,
    /// ISO 8601, UTC, to the second.
    pub started_utc: String,
    pub host: String,
    pub operator: String,
    /// Where the operator's name came from: `--operator`, `AILLA_OPERATOR`, or `OS user` (`$USER`).
    pub operator_source: String,
    /// The command as typed, each argument quoted for a POSIX shell where it needs it.
    pub command_line: String,
}

/// The invocation of this process: `operator` is `--operator`'s value when given.
pub fn invocation(pipeline_name: &str, operator: Option<&str>) -> Invocation {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let host = crate::run_dir::lock::host_name();
    let started_utc = utc_timestamp(now.as_secs());
    let compact: String = started_utc.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
    let salt = sha256_hex(format!("{host}\n{}\n{}", std::process::id(), now.as_nanos()).as_bytes());
    let (operator, operator_source) = match operator {
        Some(name) => (name.to_string(), "--operator"),
        None => match std::env::var("AILLA_OPERATOR").ok().filter(|v| !v.trim().is_empty()) {
            Some(name) => (name, "AILLA_OPERATOR"),
            None => {
                let user = ["USER", "LOGNAME", "USERNAME"].iter().find_map(|k| std::env::var(k).ok());
                (user.filter(|u| !u.is_empty()).unwrap_or_else(|| "unknown".into()), "OS user")
            }
        },
    };
    Invocation {
        run_id: format!("{pipeline_name}-{compact}-{}", &salt[..8]),
        started_utc,
        host,
        operator: operator.trim().to_string(),
        operator_source: operator_source.into(),
        command_line: std::env::args_os().map(|a| shell_quoted(&a.to_string_lossy())).collect::<Vec<_>>().join(" "),
    }
}

/// `seconds` since the Unix epoch as `YYYY-MM-DDThh:mm:ssZ` (the proleptic Gregorian calendar, by
/// Howard Hinnant's days-to-civil algorithm; no time-zone database needed for UTC).
pub fn utc_timestamp(seconds: u64) -> String {
    let days = (seconds / 86_400) as i64;
    let of_day = seconds % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", of_day / 3600, of_day % 3600 / 60, of_day % 60)
}

/// `arg` as a POSIX shell reads it back: bare when it holds only safe characters, else single-quoted.
fn shell_quoted(arg: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c);
    if !arg.is_empty() && arg.chars().all(safe) {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', "'\\''"))
    }
}

pub use crate::digest::sha256_hex;

fn hash_file(path: &std::path::Path, base: &std::path::Path) -> Result<FileHash> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    Ok(FileHash { path: relative_to(path, base), sha256: sha256_hex(&bytes), bytes: Some(bytes.len() as u64) })
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
                    FileHash {
                        path: format!("{kind} (generated, seed {seed})"),
                        sha256: sha256_hex(text.as_bytes()),
                        bytes: Some(text.len() as u64),
                    },
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
                        bytes: Some(crate::locality::rules::BUNDLED_RULES.len() as u64),
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
                                bytes: Some(file.source().len() as u64),
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
    let pipeline_bytes = std::fs::read(pipeline_path).map_err(|e| Error::io(pipeline_path, e))?;
    Ok(Provenance {
        ailla_version: env!("CARGO_PKG_VERSION").into(),
        git_commit: env!("AILLA_GIT_COMMIT").into(),
        platform: format!("{}-{}", std::env::consts::OS, std::env::consts::ARCH),
        threads,
        numerics: Some(crate::engine::environment::current()),
        pipeline: FileHash {
            path: pipeline_path.display().to_string(),
            sha256: sha256_hex(&pipeline_bytes),
            bytes: Some(pipeline_bytes.len() as u64),
        },
        rules,
        data,
        seeds,
        wall_time_seconds: 0.0,
        peak_memory_mib: None,
        invocation: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_timestamps_match_known_dates() {
        assert_eq!(utc_timestamp(0), "1970-01-01T00:00:00Z");
        // 2000-02-29 (a leap day of a century leap year) 12:34:56
        assert_eq!(utc_timestamp(951_827_696), "2000-02-29T12:34:56Z");
        assert_eq!(utc_timestamp(4_102_444_799), "2099-12-31T23:59:59Z");
    }

    #[test]
    fn command_lines_quote_what_a_shell_would_split() {
        assert_eq!(shell_quoted("run"), "run");
        assert_eq!(shell_quoted("my file.yaml"), "'my file.yaml'");
        assert_eq!(shell_quoted("it's"), "'it'\\''s'");
    }
}
