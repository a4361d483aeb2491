//! Checkpoint units: model, optimizer state and a manifest, committed by writing the manifest last.
//!
//! `checkpoints/step-0000040.safetensors` (the model, loadable anywhere safetensors is),
//! `step-0000040.optim.safetensors` (AdamW's moments) and `step-0000040.manifest.json`: the step, the
//! size and SHA-256 of both files, the number of metrics lines written before the unit, and the hash of
//! the run's settings. Each file is written through a temporary file, an fsync and a rename, and the
//! manifest goes last, so a unit whose manifest verifies is whole: a kill before it leaves no manifest,
//! or an older one whose hashes no longer match. The run's `model.safetensors` and
//! `model.optim.safetensors` are hard links to its last unit, published with one rename each.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::RunPaths;
use crate::checkpoint::{self, Checkpoint};
use crate::digest::sha256_hex;
use crate::engine::optim::AdamW;
use crate::{Error, Result};

const FORMAT: &str = "ailla-checkpoint-unit";
const VERSION: u32 = 1;

/// One file of a unit, as the manifest records it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileRecord {
    /// The file's name, in the manifest's directory.
    pub file: String,
    pub bytes: u64,
    pub sha256: String,
}

/// What commits a unit.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UnitManifest {
    pub format: String,
    pub version: u32,
    pub step: usize,
    pub model: FileRecord,
    pub optimizer: FileRecord,
    /// Lines of `metrics.jsonl` written before this unit: a resume from it keeps exactly these.
    pub metrics_lines: usize,
    /// SHA-256 of the run's settings (`train.json` in canonical form) when the unit was written.
    pub settings_sha256: String,
}

/// `…/step-0000040.safetensors` → `…/step-0000040.manifest.json`.
pub fn manifest_path(model_path: &Path) -> PathBuf {
    let stem = model_path.file_stem().and_then(|s| s.to_str()).unwrap_or("model");
    model_path.with_file_name(format!("{stem}.manifest.json"))
}

fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Writes and commits the unit whose model file is `model_path`.
pub fn save_unit(
    model_path: &Path,
    checkpoint: &Checkpoint,
    optimizer: &AdamW<f32>,
    metrics_lines: usize,
    settings_sha256: &str,
) -> Result<UnitManifest> {
    let optimizer_path = checkpoint::optimizer_path(model_path);
    let model_bytes = checkpoint::to_bytes(checkpoint)?;
    let optimizer_bytes = checkpoint::optimizer_to_bytes(optimizer, &checkpoint.model.params)?;
    let record = |path: &Path, bytes: &[u8]| FileRecord {
        file: file_name(path),
        bytes: bytes.len() as u64,
        sha256: sha256_hex(bytes),
    };
    let manifest = UnitManifest {
        format: FORMAT.into(),
        version: VERSION,
        step: checkpoint.step,
        model: record(model_path, &model_bytes),
        optimizer: record(&optimizer_path, &optimizer_bytes),
        metrics_lines,
        settings_sha256: settings_sha256.into(),
    };
    checkpoint::atomic_write(model_path, &model_bytes)?;
    checkpoint::atomic_write(&optimizer_path, &optimizer_bytes)?;
    let json = serde_json::to_string_pretty(&manifest).map_err(|e| Error::Numeric(e.to_string()))?;
    checkpoint::atomic_write(&manifest_path(model_path), json.as_bytes())?;
    Ok(manifest)
}

/// Makes `target` (and its optimizer file) name the committed unit at `unit_model` by hard links, each
/// published by a rename (a copy where the filesystem has no hard links).
pub fn publish(unit_model: &Path, target: &Path) -> Result<()> {
    let pairs = [
        (unit_model.to_path_buf(), target.to_path_buf()),
        (checkpoint::optimizer_path(unit_model), checkpoint::optimizer_path(target)),
    ];
    for (source, destination) in pairs {
        let temporary = destination.with_file_name(format!(".tmp-link-{}", file_name(&destination)));
        let _ = std::fs::remove_file(&temporary);
        if std::fs::hard_link(&source, &temporary).is_err() {
            std::fs::copy(&source, &temporary).map_err(|e| Error::io(&temporary, e))?;
        }
        crate::faults::filesystem_step("link made");
        std::fs::rename(&temporary, &destination).map_err(|e| Error::io(&destination, e))?;
        crate::faults::filesystem_step("link renamed into place");
    }
    let dir = target.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    checkpoint::sync_directory(dir)
}

/// A verified unit to continue from.
pub struct Resumable {
    pub path: PathBuf,
    pub checkpoint: Checkpoint,
    pub optimizer: AdamW<f32>,
    pub manifest: UnitManifest,
}

/// Where a resume starts.
pub enum ResumePoint {
    /// Nothing was committed yet: the run starts at step 0, and loses nothing doing so. `ignored`
    /// names the units whose writes a kill cut short.
    Start { ignored: Vec<String> },
    /// The newest unit that verified; `skipped` says why each newer one did not.
    Unit { unit: Box<Resumable>, skipped: Vec<String> },
}

fn read_verified(dir: &Path, record: &FileRecord) -> std::result::Result<Vec<u8>, String> {
    let path = dir.join(&record.file);
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", record.file))?;
    if bytes.len() as u64 != record.bytes || sha256_hex(&bytes) != record.sha256 {
        return Err(format!(
            "{} is not the file the manifest committed ({} bytes, expected {}; the hash differs)",
            record.file,
            bytes.len(),
            record.bytes
        ));
    }
    Ok(bytes)
}

/// Reads and checks the unit committed by `manifest_file`.
fn verify(manifest_file: &Path) -> std::result::Result<Resumable, String> {
    let dir = manifest_file.parent().unwrap_or(Path::new("."));
    let text = std::fs::read_to_string(manifest_file).map_err(|e| format!("manifest: {e}"))?;
    let manifest: UnitManifest = serde_json::from_str(&text).map_err(|e| format!("manifest: {e}"))?;
    if manifest.format != FORMAT || manifest.version != VERSION {
        return Err(format!("manifest of format {} version {}", manifest.format, manifest.version));
    }
    let path = dir.join(&manifest.model.file);
    let model_bytes = read_verified(dir, &manifest.model)?;
    let optimizer_bytes = read_verified(dir, &manifest.optimizer)?;
    let checkpoint = checkpoint::load_bytes(&path, &model_bytes).map_err(|e| e.to_string())?;
    let optimizer_path = dir.join(&manifest.optimizer.file);
    let optimizer = checkpoint::load_optimizer_bytes(&optimizer_path, &optimizer_bytes, &checkpoint.model.params)
        .map_err(|e| e.to_string())?;
    if checkpoint.step != manifest.step || optimizer.step != manifest.step {
        return Err(format!(
            "the model is at step {}, the optimizer at step {}, the manifest says {}",
            checkpoint.step, optimizer.step, manifest.step
        ));
    }
    Ok(Resumable { path, checkpoint, optimizer, manifest })
}

/// The step in a unit's file name, `step-0000040.…` → 40.
fn step_in_name(name: &str) -> Option<usize> {
    name.strip_prefix("step-")?.split('.').next()?.parse().ok()
}

/// The newest unit of the run that verifies. An error when units were written but none verifies, or
/// when the directory has a model but no unit (written by an older ailla): continuing would not be the
/// run that was stopped.
pub fn resume_point(paths: &RunPaths) -> Result<ResumePoint> {
    let checkpoints = paths.checkpoints();
    let mut steps: Vec<usize> = match std::fs::read_dir(&checkpoints) {
        Ok(entries) => {
            entries.filter_map(|e| e.ok()).filter_map(|e| step_in_name(&e.file_name().to_string_lossy())).collect()
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(Error::io(&checkpoints, e)),
    };
    steps.sort_unstable_by(|a, b| b.cmp(a));
    steps.dedup();
    let mut skipped = Vec::new();
    let mut committed = 0;
    for step in steps {
        let model_path = paths.step_checkpoint(step);
        let shown = format!("checkpoints/{}", file_name(&model_path));
        let manifest = manifest_path(&model_path);
        if !manifest.is_file() {
            skipped.push(format!("{shown}: incomplete, no manifest (the write was interrupted)"));
            continue;
        }
        committed += 1;
        match verify(&manifest) {
            Ok(unit) => return Ok(ResumePoint::Unit { unit: Box::new(unit), skipped }),
            Err(problem) => skipped.push(format!("{shown}: {problem}")),
        }
    }
    if committed > 0 {
        return Err(Error::Checkpoint {
            path: checkpoints,
            message: format!(
                "no checkpoint can be resumed from: {}; start the run again with --force",
                skipped.join("; ")
            ),
        });
    }
    if paths.model().is_file() {
        return Err(Error::Checkpoint {
            path: paths.dir.clone(),
            message: "has a model.safetensors but no checkpoint unit to resume from (an older ailla wrote it?); \
                      start the run again with --force"
                .into(),
        });
    }
    // units whose writes never finished were never committed: starting over loses nothing
    Ok(ResumePoint::Start { ignored: skipped })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny(step: usize) -> (Checkpoint, AdamW<f32>) {
        let mut checkpoint = crate::checkpoint::tests::tiny();
        checkpoint.step = step;
        let mut optimizer = AdamW::new(&checkpoint.model.params);
        optimizer.step = step;
        (checkpoint, optimizer)
    }

    #[test]
    fn resume_takes_the_newest_unit_that_verifies_and_says_why_newer_ones_did_not() {
        let dir = tempfile::tempdir().unwrap();
        let paths = RunPaths::new(dir.path());
        assert!(matches!(resume_point(&paths).unwrap(), ResumePoint::Start { .. }));
        // a first unit cut short was never committed: nothing to lose by starting over
        let (checkpoint, _) = tiny(5);
        checkpoint::save(&paths.step_checkpoint(5), &checkpoint).unwrap();
        let ResumePoint::Start { ignored } = resume_point(&paths).unwrap() else { panic!("not a start") };
        assert!(ignored[0].contains("step-0000005"), "{ignored:?}");
        std::fs::remove_file(paths.step_checkpoint(5)).unwrap();
        for step in [10, 20, 30] {
            let (checkpoint, optimizer) = tiny(step);
            save_unit(&paths.step_checkpoint(step), &checkpoint, &optimizer, step, "settings").unwrap();
        }
        // step 30: the optimizer file of another step put in its place (a mismatched pair)
        let other = checkpoint::optimizer_path(&paths.step_checkpoint(10));
        std::fs::copy(other, checkpoint::optimizer_path(&paths.step_checkpoint(30))).unwrap();
        // step 40: a model written, the rest of the unit never was
        let (checkpoint, _) = tiny(40);
        checkpoint::save(&paths.step_checkpoint(40), &checkpoint).unwrap();
        let ResumePoint::Unit { unit, skipped } = resume_point(&paths).unwrap() else { panic!("no unit") };
        assert_eq!((unit.manifest.step, unit.checkpoint.step, unit.optimizer.step), (20, 20, 20));
        assert_eq!(unit.manifest.metrics_lines, 20);
        assert_eq!(skipped.len(), 2, "{skipped:?}");
        assert!(skipped[0].contains("step-0000040") && skipped[0].contains("no manifest"), "{skipped:?}");
        assert!(skipped[1].contains("step-0000030") && skipped[1].contains("not the file"), "{skipped:?}");
        // with every unit broken, resuming is an error naming each, never a silent restart
        std::fs::write(paths.step_checkpoint(20), b"garbage").unwrap();
        std::fs::remove_file(manifest_path(&paths.step_checkpoint(10))).unwrap();
        let error = resume_point(&paths).err().unwrap().to_string();
        assert!(error.contains("no checkpoint can be resumed") && error.contains("step-0000010"), "{error}");
    }

    #[test]
    fn a_published_model_is_the_units_file() {
        let dir = tempfile::tempdir().unwrap();
        let paths = RunPaths::new(dir.path());
        let (checkpoint, optimizer) = tiny(5);
        save_unit(&paths.step_checkpoint(5), &checkpoint, &optimizer, 0, "settings").unwrap();
        publish(&paths.step_checkpoint(5), &paths.model()).unwrap();
        assert_eq!(std::fs::read(paths.model()).unwrap(), std::fs::read(paths.step_checkpoint(5)).unwrap());
        assert_eq!(checkpoint::load(&paths.model()).unwrap().model, checkpoint.model);
        assert!(checkpoint::optimizer_path(&paths.model()).is_file());
    }
}
