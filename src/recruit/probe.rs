//! `ailla trial`: the recruitment trial of METHOD §7 run on demand, for a block an expert proposes, on a
//! finished (or interrupted) run. It answers "would this block pay for itself here, and where do its bits
//! come from?" without changing the run: the trial and its control work on copies.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{
    log2_binomial, measuring_lambda, split_of, trial_all, Candidate, CheckContext, Decision, Origin, RecruitmentConfig,
};

use crate::config::TrainConfig;
use crate::data::Vocabulary;
use crate::locality::RuleSet;
use crate::run_dir::RunPaths;
use crate::step::Dataset;
use crate::{Error, Result};

/// Which blocks to trial.
#[derive(Clone, Debug)]
pub enum BlockSource {
    /// One block of vocabulary entries, exactly as the run's tokenizer wrote them.
    Words { name: String, words: Vec<String> },
    /// The blocks a `.rules` file declares (words and patterns), or only the one named `only`.
    Rules { path: PathBuf, only: Option<String> },
}

/// What to trial, and how long.
#[derive(Clone, Debug)]
pub struct ProbeRequest {
    pub blocks: BlockSource,
    /// Trial steps (default: the run's `recruitment.trial_steps`, else 100).
    pub trial_steps: Option<usize>,
    /// Tokens of the recruitment split (default: the run's, else 4096).
    pub split_tokens: Option<usize>,
    /// Bits beyond the cost (default: the run's `recruitment.margin_bits`, else 0).
    pub margin_bits: Option<f64>,
    /// The layer of the block's own-block rule (default: the run's `recruitment.rule_layer`, else the
    /// last).
    pub rule_layer: Option<usize>,
    /// The head of the block's own-block rule (default: the run's `recruitment.rule_head`, else 0).
    pub rule_head: Option<usize>,
    /// How to trial (default: the run's `recruitment.trial`, else frozen).
    pub trial: Option<super::TrialKind>,
}

/// The bits of the split's positions whose input token is (or is not) a member.
#[derive(Serialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
pub struct PositionBits {
    pub positions: usize,
    pub bits_control: f64,
    pub bits_with_block: f64,
}

/// One block's verdict, and where its bits came from.
#[derive(Serialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
pub struct BlockVerdict {
    /// The verdict in the form a training run records it.
    pub decision: Decision,
    /// `log2 C(V, |B|)`: which entries are members.
    pub membership_bits: f64,
    /// Positions where a member is the input: the queries the block's own-block rule covers.
    pub member_queries: PositionBits,
    pub other_queries: PositionBits,
}

#[derive(Serialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
pub struct Probe {
    /// `frozen`: each block's copy path on the run's model, only its gate trained (`member_queries` are
    /// then the positions where the path's cache held the target); `co_trained`: each block trained
    /// into a copy of the model beside a control.
    pub trial: super::TrialKind,
    /// Steps of the run's checkpoint the trials started from.
    pub from_step: usize,
    pub trial_steps: usize,
    /// The dial value the split was coded at.
    pub lambda: f64,
    /// Where each block's own-block rule acted.
    pub rule_layer: usize,
    pub rule_head: usize,
    pub rule_within: Option<usize>,
    /// Every block against the same two controls, in the order asked for.
    pub blocks: Vec<BlockVerdict>,
    /// Warnings about the rules file, rendered with their places (not in the JSON).
    #[serde(skip)]
    pub rules_warnings: String,
}

fn corrupt_run(run_dir: &Path, message: impl Into<String>) -> Error {
    Error::Config { path: run_dir.join("train.json"), message: message.into() }
}

/// Trials `request`'s block on the run in `run_dir`, beside a control, as a recruitment check would.
pub fn probe(run_dir: &Path, request: &ProbeRequest) -> Result<Probe> {
    // the flags first: a wrong one should not wait for a checkpoint to load
    Error::require_counts([
        ("--steps", request.trial_steps.unwrap_or(1)),
        ("--split-tokens", request.split_tokens.unwrap_or(1)),
    ])?;
    if let Some(margin) = request.margin_bits {
        Error::require_bits("--margin", margin, true)?;
    }
    let paths = RunPaths { dir: run_dir.to_path_buf() };
    let config_path = paths.config();
    let text = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
    let config: TrainConfig =
        serde_json::from_str(&text).map_err(|e| corrupt_run(run_dir, format!("not a run's training config: {e}")))?;
    let Some(locality) = config.locality.clone() else {
        return Err(corrupt_run(
            run_dir,
            "the run trained without rules (`locality`), so a block has no rule to act by",
        ));
    };
    // a run records its files as it was started; relative ones resolve from where that was
    let named = [
        match &locality.rules {
            crate::locality::RulesSource::File(path) => Some(("rules file", path)),
            crate::locality::RulesSource::Bundled => None,
        },
        match &config.corpus {
            crate::config::CorpusSource::Directory(path) => Some(("corpus", path)),
            crate::config::CorpusSource::Bundled { .. } | crate::config::CorpusSource::Planted { .. } => None,
        },
    ];
    for (what, path) in named.into_iter().flatten() {
        if path.is_relative() && !path.exists() {
            return Err(corrupt_run(
                run_dir,
                format!(
                    "names its {what} `{}` relative to the directory the run was started in; \
                     run `ailla trial` from that directory",
                    path.display()
                ),
            ));
        }
    }
    // the run's recorded shape is the checkpoint's, so the placement flags are checked before it loads
    let (layers, heads) = (config.model.n_layers, config.model.n_heads);
    if let Some(layer) = request.rule_layer {
        super::require_index("--layer", layer, layers, "layers")?;
    }
    if let Some(head) = request.rule_head {
        super::require_index("--head", head, heads, "heads per layer")?;
    }
    let crate::run_dir::units::ResumePoint::Unit { unit, .. } = crate::run_dir::units::resume_point(&paths)? else {
        return Err(corrupt_run(run_dir, "has no checkpoint yet: train it first"));
    };
    let crate::run_dir::units::Resumable { checkpoint: loaded, optimizer, .. } = *unit;
    let vocabulary = loaded.vocabulary;
    let model = loaded.model;
    // the rules the run trained with, recruited blocks included, as its checkpoint stores them
    let stored_rules = loaded.locality.map(|l| l.rules);

    let mut recruitment = RecruitmentConfig::of_run(config.recruitment.as_ref());
    if let Some(steps) = request.trial_steps {
        recruitment.trial_steps = steps;
    }
    if let Some(tokens) = request.split_tokens {
        recruitment.split_tokens = tokens;
    }
    if let Some(margin) = request.margin_bits {
        recruitment.margin_bits = margin;
    }
    recruitment.validate()?;
    // a trial reports the bits of every position, where its cache held the target and elsewhere
    recruitment.split_scoring = crate::config::SplitScoring::EveryPosition;
    // the run's recruited blocks keep the head the run gave them; the flags place only the new blocks
    let spec = match stored_rules {
        Some(stored) => stored,
        None => super::spec_with_recruited(
            &locality.load_rules()?,
            &model,
            &vocabulary,
            recruitment.placement(layers, heads)?,
        ),
    };
    recruitment.rule_layer = request.rule_layer.or(recruitment.rule_layer);
    recruitment.rule_head = request.rule_head.unwrap_or(recruitment.rule_head);
    let placement = recruitment.placement(layers, heads)?;
    let (set, _) = RuleSet::compile(&spec, &vocabulary)?;
    let (candidates, rules_warnings) = requested_blocks(&request.blocks, &vocabulary, &set)?;
    let splits = config.corpus.load()?;
    let data = Dataset::with_vocabulary(&splits, vocabulary)?;
    let split = split_of(&data.valid, recruitment.split_tokens);
    // a finished run has no steps left: its schedule is stretched to cover the trial, near its floor
    let step = optimizer.step;
    let mut trial_config = config.clone();
    trial_config.steps = trial_config.steps.max(step + recruitment.trial_steps);
    let context = CheckContext {
        config: &trial_config,
        recruitment: &recruitment,
        locality: &locality,
        spec: &spec,
        set: &set,
        vocabulary: &data.vocabulary,
        train_ids: &data.train,
        split,
        step,
    };
    if request.trial.unwrap_or(recruitment.trial) == super::TrialKind::Frozen {
        let outcome = super::copy_check::check(&context, &model, &candidates)?;
        let blocks = outcome
            .decisions
            .into_iter()
            .zip(&outcome.scored)
            .zip(&candidates)
            .map(|((mut decision, scored), candidate)| {
                // each block is judged on its own, as if it were the check's only candidate
                decision.accepted = decision.pays();
                if decision.accepted {
                    decision.description_length_after = decision
                        .description_length_before
                        .map(|before| before - decision.saving_bits() + decision.cost_bits);
                }
                let mut member_queries = PositionBits { positions: 0, bits_control: 0.0, bits_with_block: 0.0 };
                let mut other_queries = member_queries.clone();
                // `ailla trial` scores every position of D (set above), so every candidate has its bits
                let positions = scored.iter().flat_map(|s| s.copied.iter().enumerate().map(move |(i, c)| (s, i, c)));
                for (scored, i, copied) in positions {
                    let side = if *copied { &mut member_queries } else { &mut other_queries };
                    side.positions += 1;
                    side.bits_control += scored.bits_without[i];
                    side.bits_with_block += scored.bits_with[i];
                }
                BlockVerdict {
                    membership_bits: log2_binomial(data.vocabulary.len(), candidate.members.len()),
                    decision,
                    member_queries,
                    other_queries,
                }
            })
            .collect();
        return Ok(Probe {
            trial: super::TrialKind::Frozen,
            from_step: step,
            trial_steps: recruitment.trial_steps,
            lambda: recruitment.lambda,
            rule_layer: placement.layer,
            rule_head: placement.head,
            rule_within: Some(recruitment.copy_within.unwrap_or(model.config.ctx_len)),
            blocks,
            rules_warnings,
        });
    }
    let judged = super::judge(&context, &model, &candidates, trial_all(&context, &model, &optimizer, &candidates)?);
    let control = &judged.control;
    let mut blocks = Vec::new();
    for (candidate, verdict) in candidates.iter().zip(judged.verdicts) {
        let (mut decision, with) = verdict?;
        if decision.pays() {
            decision.accept(judged.recruited_cost);
        }
        let mut member_queries = PositionBits { positions: 0, bits_control: 0.0, bits_with_block: 0.0 };
        let mut other_queries = member_queries.clone();
        for (position, (&c, &w)) in control.bits_by_position.iter().zip(&with.bits_by_position).enumerate() {
            let side = if candidate.members.binary_search(&split[position]).is_ok() {
                &mut member_queries
            } else {
                &mut other_queries
            };
            side.positions += 1;
            side.bits_control += c;
            side.bits_with_block += w;
        }
        blocks.push(BlockVerdict {
            decision,
            membership_bits: log2_binomial(data.vocabulary.len(), candidate.members.len()),
            member_queries,
            other_queries,
        });
    }
    Ok(Probe {
        trial: super::TrialKind::CoTrained,
        from_step: step,
        trial_steps: control.steps.len(),
        lambda: measuring_lambda(&locality.schedule, step, config.seed),
        rule_layer: placement.layer,
        rule_head: placement.head,
        rule_within: placement.within,
        blocks,
        rules_warnings,
    })
}

/// The candidates `source` names, as vocabulary ids, each free of the run's blocks; and the rules
/// file's warnings, rendered.
fn requested_blocks(
    source: &BlockSource,
    vocabulary: &Vocabulary,
    run_set: &RuleSet,
) -> Result<(Vec<Candidate>, String)> {
    let (named, warnings): (Vec<(String, Vec<u32>)>, String) = match source {
        BlockSource::Words { name, words } => {
            let mut members = Vec::new();
            for word in words {
                let Some(id) = vocabulary.id(word) else {
                    let suggestions = crate::suggest::closest(word, vocabulary.tokens.iter().map(String::as_str), 3);
                    let hint = if suggestions.is_empty() {
                        String::new()
                    } else {
                        format!(" (closest entries: {})", suggestions.join(", "))
                    };
                    return Err(Error::invalid("--block", format!("`{word}` is not in the run's vocabulary{hint}")));
                };
                members.push(id);
            }
            (vec![(name.clone(), members)], String::new())
        }
        BlockSource::Rules { path, only } => {
            let checked = crate::dsl::Checked::new(crate::dsl::load(path)?, Some(vocabulary));
            if let Some(summary) = checked.errors_found(path) {
                return Err(Error::Rejected(format!("{summary}\n{}", checked.render().trim_end())));
            }
            let warnings = if checked.diagnostics.is_empty() { String::new() } else { checked.render() };
            let set =
                checked.compiled.set.ok_or_else(|| Error::Rejected(format!("{}: did not compile", path.display())))?;
            let mut blocks: Vec<(String, Vec<u32>)> = set.blocks.into_iter().map(|b| (b.name, b.members)).collect();
            if let Some(only) = only {
                let names: Vec<String> = blocks.iter().map(|(n, _)| format!("`{n}`")).collect();
                blocks.retain(|(n, _)| n == only);
                if blocks.is_empty() {
                    return Err(Error::invalid(
                        "--name",
                        format!("{} declares no block `{only}` (it declares {})", path.display(), names.join(", ")),
                    ));
                }
            }
            if blocks.is_empty() {
                return Err(Error::Rejected(format!("{}: declares no block to trial", path.display())));
            }
            (blocks, warnings)
        }
    };
    let flag = match source {
        BlockSource::Words { .. } => "--block",
        BlockSource::Rules { .. } => "--rules",
    };
    let mut candidates = Vec::new();
    for (name, mut members) in named {
        // the run's set holds its recruited blocks too, so this catches both kinds of owner
        if let Some(&taken) = members.iter().find(|&&id| run_set.block_of_token(id) != 0) {
            let owner = &run_set.blocks[usize::from(run_set.block_of_token(taken)) - 1].name;
            return Err(Error::invalid(
                flag,
                format!(
                    "`{}` of block `{name}` already belongs to the run's block `{owner}`",
                    vocabulary.tokens[taken as usize]
                ),
            ));
        }
        if run_set.blocks.iter().any(|b| b.name == name) {
            return Err(Error::invalid(flag, format!("the run's rules already have a block `{name}`")));
        }
        members.sort_unstable();
        members.dedup();
        if members.is_empty() {
            return Err(Error::invalid(flag, format!("block `{name}` names no word of the run's vocabulary")));
        }
        candidates.push(Candidate { name, origin: Origin::Given, members });
    }
    Ok((candidates, warnings))
}
