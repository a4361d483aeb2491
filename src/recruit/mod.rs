//! Recruitment of semantic blocks during training (METHOD §7), decided in bits.
//!
//! Every `check_every` steps candidates are proposed (`copy_check::propose`): clusters of the model's
//! own embeddings of frequent general-block tokens, recurrent tokens (`recurrent`), and `recruitable`
//! blocks grown from their seeds. Each is trialled on the frozen model (`frozen`, `copy_check`): only
//! its copy path's gate trains, on the run's next batches, and with `D` the recruitment split
//!
//! ```text
//! saving(B) = L(D | M) − L(D | M + B)                                [bits]
//! accept  ⇔ saving(B) > cost(B) + margin_bits
//! cost(B) = log2 C(V, |B|) + (p_B / 2)·log2 |D|
//! ```
//!
//! At most one block is accepted per check, the one with the largest net saving; a rejected trial
//! leaves the model bit-identical. `settings` holds the section's schema, `decision` what a trial
//! records, `spec` how an admitted block enters the rules, and `co_trained` the earlier design (a
//! control trains beside the block), kept behind `trial: co_trained` for comparison.

pub mod copy_check;
pub mod domains;
pub mod frozen;
pub mod kmeans;
pub mod probe;
pub mod recurrent;

use std::time::Instant;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::config::{LocalityConfig, TrainConfig};
use crate::data::Vocabulary;
use crate::engine::optim::AdamW;
use crate::engine::Model;
use crate::locality::rules::{Block, BlockSpec, RuleEntrySpec, RuleKindSpec};
use crate::locality::{Conditions, LambdaSchedule, RuleSet, RuleSpec, RulesAt};
use crate::step::{train_step, NonFinite, StepPlan, StepRecord};
use crate::{Error, Result};

mod co_trained;
mod decision;
mod spec;

pub use crate::config::recruitment::*;
pub use co_trained::*;
pub use decision::*;
pub use spec::*;

/// What a check needs from the run.
pub struct CheckContext<'a> {
    pub config: &'a TrainConfig,
    pub recruitment: &'a RecruitmentConfig,
    pub locality: &'a LocalityConfig,
    /// The rules in force, recruited blocks included.
    pub spec: &'a RuleSpec,
    pub set: &'a RuleSet,
    pub vocabulary: &'a Vocabulary,
    pub train_ids: &'a [u32],
    /// The recruitment split `D`.
    pub split: &'a [u32],
    /// Training steps done.
    pub step: usize,
}

/// The recruitment split: the last `tokens + 1` ids of the validation split.
pub fn split_of(valid: &[u32], tokens: usize) -> &[u32] {
    &valid[valid.len().saturating_sub(tokens + 1)..]
}

/// The λ at which code lengths are measured: the schedule's at this step, or the middle of a uniform
/// draw (dial training serves every λ; its centre is the one it is trained at on average).
pub fn measuring_lambda(schedule: &LambdaSchedule, step: usize, seed: u64) -> f64 {
    match schedule {
        LambdaSchedule::Uniform { low, high } => 0.5 * (low + high),
        other => other.at(step, seed),
    }
}

/// The bits of every predicted token of `ids` at dial value `lambda` under `set`, the rules' attention
/// bias and copy paths in force: their sum is `L(ids | model)`, and where a block's saving comes from
/// is read off them.
pub fn code_lengths(
    model: &Model<f32>,
    ids: &[u32],
    set: &RuleSet,
    locality: &LocalityConfig,
    lambda: f64,
    batch: usize,
) -> Vec<f64> {
    let rules =
        RulesAt::new(set, lambda, model.config.n_layers, locality.progressive_beta, locality.dial).without_penalty();
    crate::locality::score::code_lengths(model, ids, batch, &Conditions::Rules(rules))
}

/// Tokens that may join a new block: not special, in no block, not recruited.
pub(crate) fn free_tokens(set: &RuleSet, model: &Model<f32>, vocabulary: &Vocabulary) -> Vec<u32> {
    let lookup = model.config.block_lookup();
    (0..vocabulary.len() as u32)
        .filter(|&t| {
            let token = &vocabulary.tokens[t as usize];
            let special = token == crate::data::tokenizer::UNK || token == crate::data::tokenizer::EOS;
            !special && set.block_of_token(t) == 0 && lookup.get(t as usize).is_none_or(|&k| k == 0)
        })
        .collect()
}

/// A check's trials with every candidate judged on its own against the control.
pub(crate) struct Judged {
    pub control: Trial,
    /// The cost of the blocks the model already has, part of every description length.
    pub recruited_cost: f64,
    /// Copies trained, controls included.
    pub trials: usize,
    /// `candidates[i]`'s verdict, "not recruited" until [`Decision::accept`], with its trial; an error
    /// where it could not be trialled.
    pub verdicts: Vec<Result<(Decision, Trial)>>,
}

pub(crate) fn judge(ctx: &CheckContext, model: &Model<f32>, candidates: &[Candidate], trialled: Trialled) -> Judged {
    let Trialled { control, noise_bits, candidates: trials_of, trials } = trialled;
    let recruited_cost: f64 = model.config.recruited_blocks.iter().map(|b| cost_of(ctx, model, b.members.len())).sum();
    let before = control.bits + recruited_cost;
    let verdicts = candidates
        .iter()
        .zip(trials_of)
        .map(|(candidate, result)| {
            let trial = result?;
            let cost = cost_of(ctx, model, candidate.members.len());
            Ok((Decision::rejected(ctx, candidate, (control.bits, noise_bits), trial.bits, cost, before), trial))
        })
        .collect();
    Judged { control, recruited_cost, trials, verdicts }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binomial_code_lengths_match_small_cases_and_symmetry() {
        assert!((log2_binomial(10, 3) - 120f64.log2()).abs() < 1e-9);
        assert!((log2_binomial(50_000, 7) - log2_binomial(50_000, 49_993)).abs() < 1e-6);
        assert!(log2_binomial(5, 0).abs() < 1e-9);
        // the membership code plus d/2·log2 N
        let cost = block_cost_bits(10, 3, 4, 1024, None);
        assert!((cost - (120f64.log2() + 4.0 * 5.0)).abs() < 1e-9);
        assert!((block_cost_bits(10, 3, 4, 1024, Some(1.0)) - (120f64.log2() + 4.0)).abs() < 1e-9);
    }

    #[test]
    fn a_recruited_rule_acts_on_the_head_the_priors_name_and_a_missing_head_is_refused() {
        let mut priors = RecruitmentConfig::new(10, 5, 0.0, 1);
        let default = priors.placement(3, 4).unwrap();
        assert_eq!((default.layer, default.head, default.within), (2, 0, Some(32)));
        assert_eq!(default, RecruitmentConfig::of_run(None).placement(3, 4).unwrap());
        priors.rule_layer = Some(0);
        priors.rule_head = 3;
        let placement = priors.placement(3, 4).unwrap();
        assert_eq!((placement.layer, placement.head), (0, 3));

        let vocabulary = Vocabulary::from_tokens(
            crate::data::TokenizerKind::Word,
            ["<unk>", "<eos>", "latex", "soy"].map(String::from).to_vec(),
        );
        let spec = RuleSpec { blocks: Vec::new(), rules: Vec::new(), own_block_default: true };
        let with = spec_with_block(&spec, "allergens", &[2, 3], &vocabulary, placement);
        assert_eq!(with.blocks[0].words, ["latex", "soy"]);
        let rule = &with.rules[0];
        assert_eq!(
            (rule.layers.as_deref(), rule.heads.as_deref(), rule.within),
            (Some(&[0][..]), Some(&[3][..]), Some(32))
        );

        priors.rule_head = 4;
        let refused = priors.placement(3, 4).unwrap_err().to_string();
        assert!(refused.contains("recruitment.rule_head") && refused.contains("4 heads per layer"), "{refused}");
        priors.rule_head = 0;
        priors.rule_layer = Some(3);
        let refused = priors.placement(3, 4).unwrap_err().to_string();
        assert!(refused.contains("recruitment.rule_layer") && refused.contains("3 layers"), "{refused}");
    }
}
