//! A recruitment check whose trials run on the frozen model (METHOD §7): every candidate block brings a
//! copy path, `any token copies from B within w`, and only its gate trains, on one shared forward pass
//! over the trial batches and one over the recruitment split `D`.
//!
//! ```text
//! saving(B) = L(D | M) − L(D | M + B)                                [bits]
//! cost(B)   = log2 C(V, |B|) + ((d + 1)/2) · log2 N                  (or (d + 1) · bits_per_parameter)
//! accept    ⇔ saving(B) > cost(B) + margin_bits                      (the largest net saving of a check)
//! ```

use std::time::Instant;

use rayon::prelude::*;

use crate::engine::eval::{eval_batches, EvalBatch};
use crate::engine::Model;
use crate::locality::score::score_batch;
use crate::locality::{Conditions, RuleSet, RulesAt};
use crate::step::sample_batch;
use crate::Result;

use super::frozen::{trial_candidates, FrozenBatch, Gate, GateTraining};
use super::{log2_binomial, Candidate, CheckContext, Decision, Origin};

/// The frozen model's view of one batch: hidden states, `ln p_M(y)` and `ln B` of its own copy paths.
pub fn frozen_batch(
    model: &Model<f32>,
    set: &RuleSet,
    ctx: &CheckContext,
    lambda: f64,
    batch: &EvalBatch,
) -> FrozenBatch {
    let rules = RulesAt::new(set, lambda, model.config.n_layers, ctx.locality.progressive_beta, ctx.locality.dial);
    score_batch(model, 0, batch, &Conditions::Rules(rules), false, |scored| {
        let ln_p: Vec<f64> = scored.loss.nll.iter().map(|&v| -f64::from(v)).collect();
        // ln B = −ln w₀, as the output loss's mixture computed it
        let ln_denominator = match &scored.loss.copy {
            Some(mixed) => mixed.log_w0.iter().map(|&l| -l).collect(),
            None => vec![0.0; ln_p.len()],
        };
        FrozenBatch {
            hidden: scored.cache.hidden,
            ln_p,
            ln_denominator,
            inputs: batch.inputs.clone(),
            targets: batch.targets.clone(),
            seq_len: batch.seq_len,
        }
    })
}

/// `cost(B)` of METHOD §7 for a block that brings a copy path: membership, then its `d + 1` gate numbers.
pub fn copy_block_cost(
    vocab_size: usize,
    members: usize,
    d_model: usize,
    split_tokens: usize,
    bits_per_parameter: Option<f64>,
) -> (f64, f64) {
    let per_parameter = bits_per_parameter.unwrap_or(0.5 * (split_tokens.max(2) as f64).log2());
    (log2_binomial(vocab_size, members), (d_model + 1) as f64 * per_parameter)
}

/// What a frozen-model check decided, and the accepted block's trained gate.
pub struct CopyCheckOutcome {
    pub decisions: Vec<Decision>,
    /// Each candidate's bits on `D` position by position, without and with its path.
    pub scored: Vec<super::frozen::Scored>,
    /// The accepted candidate, its recruited name, and its trained gate.
    pub accepted: Option<(Candidate, String, Gate)>,
    pub seconds: f64,
}

/// One check: every candidate's copy path trialled on the frozen model, then at most one accepted.
pub fn check(ctx: &CheckContext, model: &Model<f32>, candidates: &[Candidate]) -> Result<CopyCheckOutcome> {
    let started = Instant::now();
    let r = ctx.recruitment;
    let lambda = r.lambda;
    let config = ctx.config;
    let seq_len = model.config.ctx_len;
    // the run's next training batches, and the recruitment split, each through the frozen model once
    // the batches are independent and each product's blocks depend on its shape alone, so running
    // them side by side (small products keep two cores busier this way) changes no bit
    let trial_batches: Vec<FrozenBatch> = (ctx.step..ctx.step + r.trial_batches())
        .into_par_iter()
        .map(|step| {
            let (inputs, targets) = sample_batch(ctx.train_ids, config.batch_size, seq_len, config.seed, step);
            let batch = EvalBatch { inputs, targets, windows: config.batch_size, seq_len };
            frozen_batch(model, ctx.set, ctx, lambda, &batch)
        })
        .collect();
    let split: Vec<EvalBatch> = eval_batches(ctx.split, seq_len, config.batch_size).collect();
    let split_batches: Vec<FrozenBatch> =
        split.par_iter().map(|b| frozen_batch(model, ctx.set, ctx, lambda, b)).collect();
    let vocab = ctx.vocabulary.len();
    let masks: Vec<Vec<bool>> = candidates
        .iter()
        .map(|c| {
            let mut mask = vec![false; vocab];
            c.members.iter().for_each(|&m| mask[m as usize] = true);
            mask
        })
        .collect();
    let within = r.copy_within.unwrap_or(seq_len);
    let training = GateTraining { steps: r.trial_steps, learning_rate: r.trial_learning_rate };
    let trials = trial_candidates(&trial_batches, &split_batches, &masks, within, lambda.ln(), &training);

    let split_tokens = ctx.split.len().saturating_sub(1);
    let recruited_cost = recruited_cost_bits(ctx, model);
    let bits_without: f64 = trials.first().map_or(0.0, |t| t.scored.bits_without.iter().sum());
    crate::Error::require_finite(
        "the recruitment split's code length under the model",
        bits_without,
        "the model gives the split non-finite probabilities; training has diverged",
    )?;
    let before = bits_without + recruited_cost;
    let mut decisions = Vec::with_capacity(candidates.len());
    let mut best: Option<(usize, f64)> = None;
    for (index, (candidate, trial)) in candidates.iter().zip(&trials).enumerate() {
        let (membership, parameters) =
            copy_block_cost(vocab, candidate.members.len(), model.config.d_model, split_tokens, r.bits_per_parameter);
        let bits_with: f64 = trial.scored.bits_with.iter().sum();
        // a code length that is not finite decides nothing
        crate::Error::require_finite(
            &format!("the recruitment split's code length with candidate `{}`", candidate.name),
            bits_with,
            "the model's weights or the gate's trial diverged; lower recruitment.trial_learning_rate",
        )?;
        let saved_where_copied: f64 = (0..trial.scored.copied.len())
            .filter(|&i| trial.scored.copied[i])
            .map(|i| trial.scored.bits_without[i] - trial.scored.bits_with[i])
            .sum();
        let decision = Decision {
            step: ctx.step,
            candidate: candidate.name.clone(),
            origin: candidate.origin,
            members: candidate.members.iter().map(|&m| ctx.vocabulary.tokens[m as usize].clone()).collect(),
            bits_before: bits_without,
            bits_after: bits_with,
            cost_bits: membership + parameters,
            margin_bits: r.margin_bits,
            noise_bits: 0.0,
            split_tokens,
            accepted: false,
            description_length_before: before,
            description_length_after: before,
            trial: super::TrialKind::Frozen,
            membership_bits: Some(membership),
            parameter_bits: Some(parameters),
            copied_positions: Some(trial.scored.copied.iter().filter(|&&c| c).count()),
            saved_where_copied_bits: Some(saved_where_copied),
        };
        let net = decision.saving_bits() - decision.cost_bits;
        if decision.pays() && best.is_none_or(|(_, best_net)| net > best_net) {
            best = Some((index, net));
        }
        decisions.push(decision);
    }
    let accepted = best.map(|(index, _)| {
        let candidate = candidates[index].clone();
        let name = super::recruited_name(ctx, &candidate);
        let decision = &mut decisions[index];
        decision.candidate = name.clone();
        decision.accepted = true;
        decision.description_length_after = decision.bits_after + recruited_cost + decision.cost_bits;
        (candidate, name, trials[index].gate.clone())
    });
    let scored = trials.into_iter().map(|t| t.scored).collect();
    Ok(CopyCheckOutcome { decisions, scored, accepted, seconds: started.elapsed().as_secs_f64() })
}

/// The cost of the copy blocks a run has already recruited: part of every description length.
fn recruited_cost_bits(ctx: &CheckContext, model: &Model<f32>) -> f64 {
    let split_tokens = ctx.split.len().saturating_sub(1);
    super::recruited_copy_blocks(ctx.spec)
        .into_iter()
        .map(|(block, _)| {
            let (membership, parameters) = copy_block_cost(
                ctx.vocabulary.len(),
                block.words.len(),
                model.config.d_model,
                split_tokens,
                ctx.recruitment.bits_per_parameter,
            );
            membership + parameters
        })
        .sum()
}

/// The candidates of a frozen-model check: every recruitable block not yet grown and the most cohesive
/// embedding clusters (as [`super::propose`]), then the recurrent tokens of METHOD §7 item 2 — all of
/// them as one block, and each of their embedding clusters when they are more than `cluster_size`.
pub fn propose(ctx: &CheckContext, model: &Model<f32>) -> Vec<Candidate> {
    let r = ctx.recruitment;
    let mut candidates = super::propose(ctx, model);
    let free = super::free_tokens(ctx.set, model, ctx.vocabulary);
    let sample = &ctx.train_ids[..ctx.train_ids.len().min(200_000)];
    let within = r.copy_within.unwrap_or(model.config.ctx_len);
    let recurrent =
        super::recurrent::recurrent_tokens(sample, ctx.vocabulary.len(), within, &free, r.min_recurrence, r.min_count);
    if recurrent.len() < 2 {
        return candidates;
    }
    let mut all = recurrent.clone();
    all.sort_unstable();
    candidates.push(Candidate { name: format!("recurrent-{}", ctx.step), origin: Origin::Recurrent, members: all });
    if recurrent.len() > r.cluster_size {
        let rows: Vec<usize> = recurrent.iter().map(|&t| t as usize).collect();
        let unit = super::kmeans::normalized(model.params.tok_emb.select(ndarray::Axis(0), &rows).view());
        let k = (recurrent.len() / r.cluster_size).max(2);
        let assignment = super::kmeans::cluster(&unit, k, 25, ctx.config.seed ^ ctx.step as u64 ^ 0x5EC);
        for c in 0..k {
            let mut members: Vec<u32> =
                (0..recurrent.len()).filter(|&i| assignment[i] == c).map(|i| recurrent[i]).collect();
            if members.len() < 2 {
                continue;
            }
            members.sort_unstable();
            candidates.push(Candidate {
                name: format!("recurrent-{}-{}", ctx.step, c + 1),
                origin: Origin::Recurrent,
                members,
            });
        }
    }
    candidates
}
