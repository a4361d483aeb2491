//! Training and evaluation loops on top of the engine.

mod records;
pub mod stored;

pub use crate::config::*;
pub use crate::engine::eval::*;
pub use crate::progress::*;
pub use crate::step::*;
pub use records::*;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::checkpoint::{self, Checkpoint, StoredLocality};
use crate::data::tokenizer::unigram_entropy;
use crate::data::Vocabulary;
use crate::engine::cuda::step::ResidentStep;
use crate::engine::cuda::{open_step, StepDevice};
use crate::engine::optim::AdamW;
use crate::engine::Model;
use crate::locality::metrics::{evaluate_at, DialEvaluation};
use crate::locality::score::evaluate;
use crate::locality::{Conditions, RuleSet, RuleSpec};
use crate::run_dir::units::{self, Resumable, ResumePoint};
use crate::run_dir::{MetricsLog, RunLock};
use crate::{Error, Result};

pub use crate::run_dir::RunPaths;

/// How a call to [`train`] starts and when it stops early.
#[derive(Default)]
pub struct RunControl {
    /// Continue the run directory from its saved model and optimizer state.
    pub resume: bool,
    /// Save and stop after this many steps in all (a long run split across sittings).
    pub stop_after: Option<usize>,
    /// Set from outside (Ctrl-C) to save and stop at the next step boundary.
    pub interrupt: Option<Arc<AtomicBool>>,
    /// A fresh run may replace an earlier run in its directory (never files that are not a run's).
    pub force: bool,
    /// How the user continues this run, for messages (`ailla train --resume --out DIR`).
    pub resume_command: Option<String>,
    /// Where the steps run: the CPU engine, or the device step (issue 24) on a GPU.
    pub device: StepDevice,
}

/// SHA-256 of a run's settings in canonical JSON: what a resumed run checks its settings by.
pub fn settings_hash(config: &TrainConfig) -> String {
    crate::digest::json_sha256(config)
}

/// SHA-256 of a rule spec's canonical JSON: what a resumed run compares its stored rules by.
pub fn rules_hash(spec: &RuleSpec) -> String {
    crate::digest::json_sha256(spec)
}

/// Trains from scratch (or resumes) and writes the run directory. Returns `Error::Interrupted` after
/// saving when stopped early; the run then continues with `resume`.
pub fn train(config: &TrainConfig, out_dir: &Path, control: &RunControl, progress: &Progress) -> Result<TrainSummary> {
    let resume = control.resume;
    config.validate()?;
    let started = Instant::now();
    let paths = RunPaths::new(out_dir);
    let resume_command =
        control.resume_command.clone().unwrap_or_else(|| format!("ailla train --resume --out {}", out_dir.display()));
    let settings_sha256 = settings_hash(config);
    // A resume holds the directory from the start, so that the unit it reads is not being written;
    // a fresh run only looks until every input has been checked.
    let mut lock = None;
    let resume_from = if resume {
        std::fs::create_dir_all(&paths.dir).map_err(|e| Error::io(&paths.dir, e))?;
        lock = Some(RunLock::acquire(&paths.dir, &mut |note| progress.note(note))?);
        paths.remove_leftovers()?;
        match units::resume_point(&paths)? {
            ResumePoint::Start { ignored } => {
                for problem in &ignored {
                    progress.note(&format!("note: ignored {problem}; the run starts at step 0"));
                }
                None
            }
            ResumePoint::Unit { unit, skipped } => {
                for problem in &skipped {
                    progress.note(&format!("note: skipped {problem}"));
                }
                if !skipped.is_empty() {
                    progress.note(&format!(
                        "note: resuming from {} at step {}",
                        unit.path.strip_prefix(&paths.dir).unwrap_or(&unit.path).display(),
                        unit.manifest.step
                    ));
                }
                if unit.manifest.settings_sha256 != settings_sha256 {
                    return Err(Error::Config {
                        path: paths.config(),
                        message: format!(
                            "the run's settings have changed since its checkpoint at step {} (sha256 {} then, \
                             {settings_sha256} now): a resumed run continues with the settings it started with; \
                             restore them, or start a new run with --force",
                            unit.manifest.step, unit.manifest.settings_sha256
                        ),
                    });
                }
                Some(unit)
            }
        }
    } else {
        paths.check_fresh_start(control.force, &resume_command)?;
        None
    };
    // every input is read and checked before anything of an earlier run in the directory is removed
    let splits = config.corpus.load()?;

    let metrics_lines = resume_from.as_ref().map(|unit| (unit.manifest.metrics_lines, unit.manifest.step));
    let (mut model, vocabulary, mut optimizer, stored_rules) = match resume_from {
        Some(unit) => {
            let Resumable { checkpoint, optimizer, .. } = *unit;
            (checkpoint.model, checkpoint.vocabulary, optimizer, checkpoint.locality.map(|l| l.rules))
        }
        None => {
            let vocabulary = Vocabulary::build(config.tokenizer, &splits.train, config.vocab_cap);
            let model = Model::<f32>::init(config.model.config(vocabulary.len()), config.seed)?;
            let optimizer = AdamW::new(&model.params);
            (model, vocabulary, optimizer, None)
        }
    };
    let data = Dataset::with_vocabulary(&splits, vocabulary)?;
    let seq_len = model.config.ctx_len;
    for (split, ids) in [("train", &data.train), ("valid", &data.valid)] {
        if ids.len() <= seq_len + 1 {
            let file =
                data.files.iter().find(|f| f.file_name().is_some_and(|n| n.to_string_lossy().starts_with(split)));
            return Err(Error::Corpus {
                path: file.or(data.files.first()).cloned().unwrap_or_else(|| PathBuf::from(&data.name)),
                message: format!("the {split} split has {} tokens, fewer than one context of {seq_len}", ids.len()),
            });
        }
    }
    let mut rule_warnings = Vec::new();
    let mut locality = match &config.locality {
        Some(locality) => {
            // a resumed run's recruited blocks are part of its rules
            let (layers, heads) = (model.config.n_layers, model.config.n_heads);
            let placement =
                crate::recruit::RecruitmentConfig::of_run(config.recruitment.as_ref()).placement(layers, heads)?;
            let on_disk = locality
                .load_rules()
                .map(|rules| crate::recruit::spec_with_recruited(&rules, &model, &data.vocabulary, placement));
            // A resumed run keeps the rules it was trained with (its checkpoint stores them, recruited
            // blocks included): an edited rules file must not silently change the rest of the run.
            let spec = match (stored_rules.clone(), on_disk) {
                (Some(stored), on_disk) => {
                    match on_disk {
                        Ok(disk) if disk != stored => progress.note(&format!(
                            "note: the rules have changed since this run started (stored sha256 {}, on disk now \
                             {}); the run continues with the rules stored in its checkpoint",
                            rules_hash(&stored),
                            rules_hash(&disk)
                        )),
                        Err(e) => progress.note(&format!(
                            "note: the rules file cannot be read now ({e}); the run continues with the rules \
                             stored in its checkpoint (sha256 {})",
                            rules_hash(&stored)
                        )),
                        Ok(_) => {}
                    }
                    stored
                }
                (None, on_disk) => on_disk?,
            };
            let (set, warnings) = RuleSet::compile(&spec, &data.vocabulary)?;
            // every copy rule predicts through a copy path of its own (METHOD §4), created shut
            for name in crate::locality::copy_paths::missing_paths(&set, &model.config.copy_paths) {
                model.add_copy_path(&name)?;
            }
            optimizer.grow_to(&model.params);
            for warning in &warnings {
                progress.note(&format!("warning: {}", warning.0));
            }
            rule_warnings = warnings.into_iter().map(|w| w.0).collect();
            Some((locality, spec, set))
        }
        None => None,
    };
    // the device is opened (and a run it cannot take refused) before anything on disk changes
    let mut resident = open_resident(control.device, &model, &optimizer, config, progress)?;
    if lock.is_none() {
        std::fs::create_dir_all(&paths.dir).map_err(|e| Error::io(&paths.dir, e))?;
        lock = Some(RunLock::acquire(&paths.dir, &mut |note| progress.note(note))?);
        // looked at again under the lock: another process may have started a run here meanwhile
        paths.check_fresh_start(control.force, &resume_command)?;
        paths.remove_leftovers()?;
        paths.clear_previous_run()?;
    }
    let stored = |locality: &Option<(&LocalityConfig, RuleSpec, RuleSet)>| {
        locality.as_ref().map(|(l, spec, _)| StoredLocality {
            rules: spec.clone(),
            dial: l.dial,
            progressive_beta: l.progressive_beta,
        })
    };
    let mut stored_locality = stored(&locality);
    let config_json = serde_json::to_string_pretty(config).map_err(|e| Error::Numeric(e.to_string()))?;
    checkpoint::atomic_write(&paths.config(), config_json.as_bytes())?;
    let start_step = optimizer.step;
    let (mut metrics, kept) = match metrics_lines {
        Some((lines, step)) => {
            MetricsLog::resume::<MetricsRecord>(&paths.metrics(), lines, &format!("the checkpoint at step {step}"))?
        }
        None => (MetricsLog::create(&paths.metrics())?, Vec::new()),
    };
    // a unit already committed at the step it holds is not written again
    let mut saved_step = metrics_lines.map(|(_, step)| step);

    let checkpoint_of =
        |model: &Model<f32>, optimizer: &AdamW<f32>, stored_locality: &Option<StoredLocality>| Checkpoint {
            model: model.clone(),
            vocabulary: data.vocabulary.clone(),
            step: optimizer.step,
            locality: stored_locality.clone(),
        };
    let save_unit = |model: &Model<f32>,
                     optimizer: &AdamW<f32>,
                     stored_locality: &Option<StoredLocality>,
                     metrics: &MetricsLog|
     -> Result<()> {
        // the lines a unit counts are on disk before the unit is
        metrics.sync()?;
        let ckpt = checkpoint_of(model, optimizer, stored_locality);
        units::save_unit(&paths.step_checkpoint(optimizer.step), &ckpt, optimizer, metrics.lines(), &settings_sha256)
            .map(|_| ())
    };
    let recruitment_split =
        crate::recruit::split_of(&data.valid, config.recruitment.as_ref().map_or(0, |r| r.split_tokens));
    let mut decisions: Vec<crate::recruit::Decision> = Vec::new();

    let eval_slice = &data.valid[..data.valid.len().min(config.eval_tokens + 1)];
    let mut losses = Vec::with_capacity(config.steps.min(1 << 20));
    // the steps before the resume point are the run's too
    for record in &kept {
        if let MetricsRecord::Train { loss, .. } = record {
            losses.push(*loss);
        }
    }
    let mut interrupted = false;
    let mut step = start_step;
    let loop_started = Instant::now();
    while step < config.steps {
        if control.interrupt.as_ref().is_some_and(|f| f.load(Ordering::SeqCst)) {
            interrupted = true;
            break;
        }
        if control.stop_after.is_some_and(|n| step >= n) {
            break;
        }
        let plan = StepPlan::of(config, locality.as_ref().map(|(settings, _, set)| (*settings, set)), &data.train);
        let outcome = match resident.as_mut() {
            None => train_step(&mut model, &mut optimizer, &plan, step, step),
            Some(device) => resident_train_step(device.as_mut(), &model, &plan, step).map_err(device_error)?,
        };
        let record = match outcome {
            Ok(record) => record,
            Err(NonFinite { loss, .. }) => {
                sync_to_host(&mut resident, &mut model, &mut optimizer)?;
                // The weights that produced this loss came out of the previous update and are already
                // diverged: they go aside for inspection, and the last periodic checkpoint stays the last
                // good state.
                let diverged = paths.dir.join(format!("diverged-step-{step:07}.safetensors"));
                checkpoint::save(&diverged, &checkpoint_of(&model, &optimizer, &stored_locality))?;
                checkpoint::save_optimizer(&checkpoint::optimizer_path(&diverged), &optimizer, &model.params)?;
                let last_good = match units::resume_point(&paths) {
                    Ok(ResumePoint::Unit { unit, .. }) => format!("the last good state is {}", unit.path.display()),
                    _ => "no checkpoint was saved before it".into(),
                };
                return Err(Error::Numeric(format!(
                    "training loss became {loss} at step {step}; {last_good}; the diverged weights are in {} \
                     (lower optim.learning_rate or enable optim.grad_clip)",
                    diverged.display()
                )));
            }
        };
        losses.push(record.loss);
        metrics.write(&MetricsRecord::from(record))?;
        let tokens_done = (record.step - start_step) * config.batch_size * model.config.ctx_len;
        let tokens_per_s = tokens_done as f64 / loop_started.elapsed().as_secs_f64().max(1e-9);
        progress.step(record.step, config.steps, record.loss, tokens_per_s);
        let done = step + 1;
        let evaluating = config.eval_every > 0 && done % config.eval_every == 0 && done < config.steps;
        let saving = config.checkpoint_every > 0 && done % config.checkpoint_every == 0 && done < config.steps;
        if evaluating || saving {
            sync_to_host(&mut resident, &mut model, &mut optimizer)?;
        }
        if evaluating {
            let result = evaluate(&model, eval_slice, config.batch_size, &Conditions::Plain);
            progress
                .note(&format!("step {done:>6}  valid loss {:.4}  ppl {:.3}", result.mean_ce_nats, result.perplexity));
            metrics.write(&MetricsRecord::Eval { step: done, split: "valid".into(), result })?;
        }
        if saving {
            save_unit(&model, &optimizer, &stored_locality, &metrics)?;
            saved_step = Some(done);
        }
        step += 1;
        let recruiting = config.recruitment.as_ref().filter(|r| {
            let recruited = locality.as_ref().map_or(0, |(_, spec, _)| crate::recruit::recruited_count(&model, spec));
            done % r.check_every == 0 && done < config.steps && recruited < r.max_blocks
        });
        if let (Some(recruitment), Some((settings, spec, set))) = (recruiting, locality.as_ref()) {
            progress.status(&format!("recruitment check at step {done}…"));
            let context = crate::recruit::CheckContext {
                config,
                recruitment,
                locality: settings,
                spec,
                set,
                vocabulary: &data.vocabulary,
                train_ids: &data.train,
                split: recruitment_split,
                step: done,
            };
            let log = |decisions: &[crate::recruit::Decision], metrics: &mut MetricsLog| -> Result<()> {
                for decision in decisions {
                    progress.note(&format!(
                        "step {done:>6}  recruitment: {} ({} members) saves {:.1} bits, needs {:.1} (cost, margin{}): {}",
                        decision.candidate,
                        decision.members.len(),
                        decision.saving_bits(),
                        decision.required_bits(),
                        if decision.trial == crate::recruit::TrialKind::CoTrained { ", noise" } else { "" },
                        if decision.accepted { "accepted" } else { "rejected" }
                    ));
                    metrics.write(&MetricsRecord::Recruitment(Box::new(decision.clone())))?;
                }
                Ok(())
            };
            if recruitment.trial == crate::recruit::TrialKind::Frozen {
                let candidates = crate::recruit::copy_check::propose(&context, &model);
                let outcome = crate::recruit::copy_check::check(&context, &model, &candidates)?;
                log(&outcome.decisions, &mut metrics)?;
                progress.note(&format!(
                    "step {done:>6}  recruitment check: {} candidates in {:.2} s",
                    candidates.len(),
                    outcome.seconds
                ));
                decisions.extend(outcome.decisions);
                if let Some((candidate, name, gate)) = outcome.accepted {
                    // the block and its copy path join the model, the path shut (u = 0, b = b₀) unless
                    // the pipeline keeps the trial's gate: see RecruitmentConfig::keep_trial_gate
                    let spec = crate::recruit::spec_with_copy_block(
                        spec,
                        &name,
                        &candidate.members,
                        &data.vocabulary,
                        recruitment.copy_within,
                    );
                    let (set, _) = RuleSet::compile(&spec, &data.vocabulary)?;
                    let settings = *settings;
                    let path = crate::recruit::recruited_copy_rule_name(&name);
                    model.add_copy_path(&path)?;
                    let index = model.config.copy_paths.len() - 1;
                    if recruitment.keep_trial_gate {
                        model.params.copy_gate_weight.row_mut(index).assign(&gate.weight);
                        model.params.copy_gate_bias[index] = gate.bias;
                    }
                    optimizer.grow_to(&model.params);
                    checkpoint::atomic_write(
                        &paths.dir.join("recruited.rules"),
                        crate::recruit::copy_rules_snippet(&spec, &decisions).as_bytes(),
                    )?;
                    locality = Some((settings, spec, set));
                    stored_locality = stored(&locality);
                }
                continue;
            }
            let outcome = crate::recruit::check(&context, &model, &optimizer, &[])?;
            log(&outcome.decisions, &mut metrics)?;
            decisions.extend(outcome.decisions);
            if let Some((trial, spec)) = outcome.accepted {
                // the accepted trial's steps are the run's next steps
                for &record in &trial.steps {
                    losses.push(record.loss);
                    metrics.write(&MetricsRecord::from(record))?;
                }
                let (set, _) = RuleSet::compile(&spec, &data.vocabulary)?;
                let settings = *settings;
                model = trial.model;
                optimizer = trial.optimizer;
                step = optimizer.step;
                locality = Some((settings, spec, set));
                stored_locality = stored(&locality);
                checkpoint::atomic_write(
                    &paths.dir.join("recruited.rules"),
                    crate::recruit::rules_snippet(&model, &data.vocabulary, &decisions).as_bytes(),
                )?;
            }
        }
    }
    sync_to_host(&mut resident, &mut model, &mut optimizer)?;
    drop(resident);
    if saved_step != Some(optimizer.step) {
        save_unit(&model, &optimizer, &stored_locality, &metrics)?;
    }
    units::publish(&paths.step_checkpoint(optimizer.step), &paths.model())?;
    if interrupted {
        progress.finish();
        return Err(Error::Interrupted(format!(
            "stopped after step {}; continue with `{resume_command}`",
            optimizer.step
        )));
    }
    let final_slice = |ids: &'_ [u32]| -> std::ops::Range<usize> {
        0..config.final_eval_tokens.map_or(ids.len(), |n| ids.len().min(n.saturating_add(1)))
    };
    let (valid_ids, test_ids) = (&data.valid[final_slice(&data.valid)], &data.test[final_slice(&data.test)]);
    progress.working(&format!("evaluating {} valid and {} test tokens…", valid_ids.len(), test_ids.len()));
    let valid = evaluate(&model, valid_ids, config.batch_size, &Conditions::Plain);
    let test = evaluate(&model, test_ids, config.batch_size, &Conditions::Plain);
    for (split, result) in [("valid", &valid), ("test", &test)] {
        metrics.write(&MetricsRecord::Eval { step: optimizer.step, split: split.into(), result: result.clone() })?;
    }
    let mut dial = Vec::new();
    if let Some((settings, spec, set)) = &locality {
        // evaluate with the rules in force when training ended (injections may have switched off)
        let final_rules = set.active_at(optimizer.step);
        let member = paths.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let inputs = stored::collect(&member, &model, &data.vocabulary, settings, spec, &final_rules, &data.test);
        let json = serde_json::to_string_pretty(&inputs).map_err(|e| Error::Numeric(e.to_string()))?;
        checkpoint::atomic_write(&paths.dir.join(stored::REPORT_INPUTS), json.as_bytes())?;
        let evaluation = DialEvaluation {
            rules: &final_rules,
            settings: settings.dial,
            progressive_beta: settings.progressive_beta,
            epsilon: settings.epsilon,
            certificate_batches: settings.certificate_batches,
            batch_size: config.batch_size,
        };
        for &lambda in &settings.eval_lambdas {
            progress.working(&format!("evaluating the dial at λ = {lambda:.2}…"));
            let measured = evaluate_at(&model, test_ids, lambda, &evaluation);
            progress.note(&format!(
                "λ {lambda:.2}  test ppl {:.3}  entropy {:.3} bits  fidelity {:.4}",
                measured.language_model.perplexity, measured.entropy_bits, measured.pointer_fidelity
            ));
            metrics.write(&MetricsRecord::Dial {
                step: optimizer.step,
                split: "test".into(),
                metrics: Box::new(measured.clone()),
            })?;
            dial.push(measured);
        }
    }
    progress.finish();
    let summary = TrainSummary {
        steps_done: optimizer.step,
        steps_planned: config.steps,
        parameters: model.params.parameter_count(),
        vocab_size: data.vocabulary.len(),
        tokenizer: data.vocabulary.kind,
        train_tokens: data.train.len(),
        unigram_entropy_nats: unigram_entropy(&data.valid, data.vocabulary.len()),
        valid,
        test,
        losses,
        dial,
        rule_warnings,
        seconds: started.elapsed().as_secs_f64(),
    };
    let json = serde_json::to_string_pretty(&summary).map_err(|e| Error::Numeric(e.to_string()))?;
    checkpoint::atomic_write(&paths.summary(), json.as_bytes())?;
    drop(lock);
    Ok(summary)
}

/// The device step for this run, or `None` for the CPU engine: also `None` (with a note) when the step
/// does not cover the run and the device was not required, an error when it was.
fn open_resident(
    device: StepDevice,
    model: &Model<f32>,
    optimizer: &AdamW<f32>,
    config: &TrainConfig,
    progress: &Progress,
) -> Result<Option<Box<dyn ResidentStep>>> {
    if device == StepDevice::Cpu {
        return Ok(None);
    }
    if let Some(reason) = crate::engine::cuda::step::unsupported(model) {
        if device.required() {
            return Err(Error::invalid("device", format!("{reason}; train this run with --device cpu")));
        }
        progress.note(&format!("note: training on the CPU: {reason}"));
        return Ok(None);
    }
    let mut step = open_step(device, model, config.batch_size, model.config.ctx_len)
        .map_err(|message| Error::invalid("device", message))?
        .ok_or_else(|| Error::invalid("device", "no device step"))?;
    step.load_optimizer(optimizer).map_err(device_error)?;
    progress.note(&format!("training on {}", step.describe()));
    Ok(Some(step))
}

/// Brings the device's weights and optimizer state to the host copies, which evaluation, checkpoints
/// and the report read.
fn sync_to_host(
    resident: &mut Option<Box<dyn ResidentStep>>,
    model: &mut Model<f32>,
    optimizer: &mut AdamW<f32>,
) -> Result<()> {
    match resident {
        Some(device) => device.sync_to_host(model, optimizer).map_err(device_error),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small_run() -> TrainConfig {
        TrainConfig {
            tokenizer: crate::data::TokenizerKind::Char,
            model: crate::config::ModelShape {
                ctx_len: 16,
                d_model: 16,
                n_heads: 2,
                n_layers: 2,
                d_ff: 32,
                tied: false,
            },
            steps: 12,
            batch_size: 4,
            eval_every: 5,
            eval_tokens: 512,
            final_eval_tokens: Some(512),
            checkpoint_every: 4,
            ..TrainConfig::default()
        }
    }

    fn run(config: &TrainConfig, dir: &Path, control: RunControl) -> TrainSummary {
        train(config, dir, &control, &Progress::Silent).unwrap()
    }

    /// The device step in the training loop, on the host device: the CPU engine's losses to f32
    /// rounding (AdamW carries the last bits forward), the run's evaluations and checkpoints from the
    /// device's weights, and a resumed run that continues the device's optimizer state exactly.
    #[test]
    fn a_run_on_the_device_step_trains_checkpoints_and_resumes_as_on_the_cpu() {
        let config = small_run();
        let dir = tempfile::tempdir().unwrap();
        let cpu = run(&config, &dir.path().join("cpu"), RunControl::default());
        let on_device = RunControl { device: StepDevice::Host, ..RunControl::default() };
        let device = run(&config, &dir.path().join("device"), on_device);
        assert_eq!(cpu.losses.len(), device.losses.len());
        for (step, (c, d)) in cpu.losses.iter().zip(&device.losses).enumerate() {
            assert!((c - d).abs() <= 1e-4 * c.abs(), "step {step}: cpu {c}, device {d}");
        }
        let (c, d) = (cpu.valid.mean_ce_nats, device.valid.mean_ce_nats);
        assert!((c - d).abs() <= 1e-4 * c.abs(), "final validation: cpu {c}, device {d}");
        // stopped at step 6 (between checkpoints 4 and 8) and resumed: the same run, bit for bit
        let split = dir.path().join("split");
        let first = RunControl { device: StepDevice::Host, stop_after: Some(6), ..RunControl::default() };
        assert_eq!(run(&config, &split, first).steps_done, 6);
        let resumed =
            run(&config, &split, RunControl { device: StepDevice::Host, resume: true, ..RunControl::default() });
        // the losses before the stop come back from the log, which keeps 16 significant digits
        for (r, d) in resumed.losses.iter().zip(&device.losses) {
            assert!((r - d).abs() <= 1e-14 * d.abs(), "{r} vs {d}");
        }
        let straight = crate::checkpoint::load(&dir.path().join("device").join("model.safetensors")).unwrap();
        let again = crate::checkpoint::load(&split.join("model.safetensors")).unwrap();
        assert_eq!(straight.model, again.model);
    }

    /// Each training step's `(loss, penalty, λ)` as the run's log holds them.
    fn logged_steps(dir: &Path) -> Vec<(f64, f64, f64)> {
        let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
        text.lines()
            .filter_map(|line| match serde_json::from_str::<MetricsRecord>(line) {
                Ok(MetricsRecord::Train { loss, penalty, lambda, .. }) => Some((loss, penalty, lambda)),
                _ => None,
            })
            .collect()
    }

    /// The device step under rules in the training loop: the bundled rules' attention dial and the copy
    /// examples' copy paths (with injected rules, so the rules in force are taken per step), λ drawn
    /// per batch; the CPU engine's losses, penalties and λ step by step.
    #[test]
    fn a_run_with_rules_and_copy_paths_on_the_device_step_follows_the_cpu_run() {
        let copy_examples = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("rules/copy-examples.rules");
        let spec = format!(
            r#"{{"rules": {{"file": {:?}}}, "schedule": {{"uniform": {{"low": 0.2, "high": 1.0}}}}}}"#,
            copy_examples
        );
        let config = TrainConfig {
            locality: Some(serde_json::from_str(&spec).unwrap()),
            tokenizer: crate::data::TokenizerKind::Word,
            model: crate::config::ModelShape { ctx_len: 48, ..small_run().model },
            ..small_run()
        };
        let dir = tempfile::tempdir().unwrap();
        let cpu = run(&config, &dir.path().join("cpu"), RunControl::default());
        let on_device = RunControl { device: StepDevice::Host, ..RunControl::default() };
        let device = run(&config, &dir.path().join("device"), on_device);
        let (cpu_steps, device_steps) =
            (logged_steps(&dir.path().join("cpu")), logged_steps(&dir.path().join("device")));
        assert_eq!(cpu_steps.len(), config.steps);
        assert!(cpu_steps.iter().all(|&(_, penalty, _)| penalty > 0.0), "the penalty acts at every step");
        for (step, (c, d)) in cpu_steps.iter().zip(&device_steps).enumerate() {
            assert_eq!(c.2, d.2, "step {step}: the same λ");
            assert!((c.0 - d.0).abs() <= 1e-4 * c.0.abs(), "step {step}: loss cpu {}, device {}", c.0, d.0);
            assert!((c.1 - d.1).abs() <= 1e-4 * c.1.abs(), "step {step}: penalty cpu {}, device {}", c.1, d.1);
        }
        let (c, d) = (cpu.valid.mean_ce_nats, device.valid.mean_ce_nats);
        assert!((c - d).abs() <= 1e-4 * c.abs(), "final validation: cpu {c}, device {d}");
        let model = crate::checkpoint::load(&dir.path().join("device").join("model.safetensors")).unwrap().model;
        assert!(
            model.config.copy_paths.len() >= 4,
            "the copy examples' paths were trained: {:?}",
            model.config.copy_paths
        );
    }

    #[test]
    fn batches_depend_only_on_seed_and_step() {
        let ids: Vec<u32> = (0..1000).collect();
        let a = sample_batch(&ids, 3, 8, 9, 17);
        assert_eq!(a, sample_batch(&ids, 3, 8, 9, 17));
        assert_ne!(a, sample_batch(&ids, 3, 8, 9, 18));
        let (inputs, targets) = a;
        assert_eq!(&inputs[1..8], &targets[..7]);
    }
}
