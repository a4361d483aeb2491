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
use crate::locality::{RuleSet, RulesAt};
use crate::step::sample_batch;
use crate::Result;

use crate::config::SplitScoring;
use crate::engine::copy::{gate_forward, mixture_forward};

use super::frozen::{rows_of, trial_candidates, CandidateRows, FrozenBatch, Gate, GateTraining, SplitRows};
use super::{log2_binomial, Candidate, CheckContext, Decision, Origin};

/// The rules a frozen model is read under: a check trains no attention, so no group penalty.
fn frozen_rules<'a>(model: &Model<f32>, set: &'a RuleSet, ctx: &CheckContext, lambda: f64) -> RulesAt<'a> {
    RulesAt::new(set, lambda, model.config.n_layers, ctx.locality.progressive_beta, ctx.locality.dial).without_penalty()
}

/// The frozen model's view of one batch: hidden states, `ln p_M(y)` and `ln B` of its own copy paths.
pub fn frozen_batch(
    model: &Model<f32>,
    set: &RuleSet,
    ctx: &CheckContext,
    lambda: f64,
    batch: &EvalBatch,
) -> FrozenBatch {
    let rules = frozen_rules(model, set, ctx, lambda);
    let (cache, copy) = crate::locality::score::hidden_states(model, batch, &rules);
    let loss = model.output_loss(&cache, &batch.targets, false, copy.as_ref().map(|c| (c, lambda)));
    let ln_p: Vec<f64> = loss.nll.iter().map(|&v| -f64::from(v)).collect();
    // ln B = −ln w₀, as the output loss's mixture computed it
    let ln_denominator = match &loss.copy {
        Some(mixed) => mixed.log_w0.iter().map(|&l| -l).collect(),
        None => vec![0.0; ln_p.len()],
    };
    FrozenBatch {
        hidden: cache.hidden,
        ln_p,
        ln_denominator,
        inputs: batch.inputs.clone(),
        targets: batch.targets.clone(),
        seq_len: batch.seq_len,
    }
}

/// The frozen model's view of one batch of `D` where only the `needed` rows' prediction matters: every
/// row's hidden state and `ln B`, and `ln p_M(y)` at the needed rows (NaN elsewhere). The output layer
/// runs on those rows alone; a row's softmax does not depend on the others.
fn frozen_rows(
    model: &Model<f32>,
    set: &RuleSet,
    ctx: &CheckContext,
    lambda: f64,
    batch: &EvalBatch,
    needed: &[bool],
) -> FrozenBatch {
    let rules = frozen_rules(model, set, ctx, lambda);
    let (cache, copy) = crate::locality::score::hidden_states(model, batch, &rules);
    let rows: Vec<usize> = (0..needed.len()).filter(|&n| needed[n]).collect();
    let row_targets: Vec<u32> = rows.iter().map(|&n| batch.targets[n]).collect();
    // ln q(y) at the needed rows; the placeholder elsewhere reaches only ln p, which is replaced by NaN
    let mut log_q = vec![0.0f64; needed.len()];
    if !rows.is_empty() {
        let row_hidden = cache.hidden.select(ndarray::Axis(0), &rows);
        let softmax =
            crate::engine::loss::output_loss(row_hidden.view(), model.output_weight(), &row_targets, false, None);
        for (k, &n) in rows.iter().enumerate() {
            log_q[n] = -f64::from(softmax.nll[k]);
        }
    }
    let (mut ln_p, ln_denominator) = match copy.as_ref().filter(|c| c.n_rules() > 0 && lambda > 0.0) {
        Some(caches) => {
            // ln B = −ln w₀ depends on the gates alone, not on q
            let params = &model.params;
            let z = gate_forward(cache.hidden.view(), params.copy_gate_weight.view(), params.copy_gate_bias.view());
            let mix = mixture_forward(&log_q, z.mapv(f64::from).view(), caches, &batch.targets, lambda);
            (mix.nll.iter().map(|&v| -v).collect::<Vec<f64>>(), mix.log_w0.iter().map(|&l| -l).collect())
        }
        None => (log_q, vec![0.0; needed.len()]),
    };
    for (n, &is_needed) in needed.iter().enumerate() {
        if !is_needed {
            ln_p[n] = f64::NAN;
        }
    }
    FrozenBatch {
        hidden: cache.hidden,
        ln_p,
        ln_denominator,
        inputs: batch.inputs.clone(),
        targets: batch.targets.clone(),
        seq_len: batch.seq_len,
    }
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
    /// Each candidate's bits on `D` position by position, without and with its path, where `D` was
    /// scored at every position.
    pub scored: Vec<Option<super::frozen::Scored>>,
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
    let split: Vec<EvalBatch> = eval_batches(ctx.split, seq_len, config.batch_size).collect();
    // which rows of D each candidate's path applies to depends on the tokens alone
    let rows: Vec<Vec<CandidateRows>> = masks
        .par_iter()
        .map(|mask| split.iter().map(|b| rows_of(&b.inputs, &b.targets, b.seq_len, mask, within)).collect())
        .collect();
    let every_position = r.split_scoring == SplitScoring::EveryPosition;
    let split_batches: Vec<FrozenBatch> = if every_position {
        split.par_iter().map(|b| frozen_batch(model, ctx.set, ctx, lambda, b)).collect()
    } else {
        split
            .par_iter()
            .enumerate()
            .map(|(index, b)| {
                let mut needed = vec![false; b.targets.len()];
                for candidate in &rows {
                    for &(n, ln_kappa) in &candidate[index] {
                        needed[n as usize] |= ln_kappa > f32::NEG_INFINITY;
                    }
                }
                frozen_rows(model, ctx.set, ctx, lambda, b, &needed)
            })
            .collect()
    };
    let training = GateTraining { steps: r.trial_steps, learning_rate: r.trial_learning_rate };
    let split_view = SplitRows { batches: &split_batches, rows: &rows, every_position };
    let trials = trial_candidates(&trial_batches, &split_view, &masks, within, lambda.ln(), &training);

    let split_tokens = ctx.split.len().saturating_sub(1);
    let recruited_cost = recruited_cost_bits(ctx, model);
    let bits_without: Option<f64> = every_position
        .then(|| trials.first().and_then(|t| t.scored.as_ref()).map_or(0.0, |s| s.bits_without.iter().sum()));
    if let Some(bits) = bits_without {
        crate::Error::require_finite(
            "the recruitment split's code length under the model",
            bits,
            "the model gives the split non-finite probabilities; training has diverged",
        )?;
    }
    let before = bits_without.map(|bits| bits + recruited_cost);
    let mut decisions = Vec::with_capacity(candidates.len());
    let mut best: Option<(usize, f64)> = None;
    for (index, (candidate, trial)) in candidates.iter().zip(&trials).enumerate() {
        let (membership, parameters) =
            copy_block_cost(vocab, candidate.members.len(), model.config.d_model, split_tokens, r.bits_per_parameter);
        let bits_with = trial.scored.as_ref().map(|s| s.bits_with.iter().sum::<f64>());
        // a code length that is not finite decides nothing
        crate::Error::require_finite(
            &format!("the recruitment split's code length with candidate `{}`", candidate.name),
            bits_with.unwrap_or(trial.saving.bits),
            "the model's weights or the gate's trial diverged; lower recruitment.trial_learning_rate",
        )?;
        let decision = Decision {
            step: ctx.step,
            candidate: candidate.name.clone(),
            origin: candidate.origin,
            members: candidate.members.iter().map(|&m| ctx.vocabulary.tokens[m as usize].clone()).collect(),
            bits_before: bits_without,
            bits_after: bits_with,
            saving_bits: trial.saving.bits,
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
            copied_positions: Some(trial.saving.copied_positions),
            saved_where_copied_bits: Some(trial.saving.where_copied_bits),
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
        decision.description_length_after = decision.bits_after.map(|bits| bits + recruited_cost + decision.cost_bits);
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
