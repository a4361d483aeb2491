//! The earlier co-trained trial (`trial: co_trained`): the block and a control train side by side.

use super::*;

/// A trial's result: its weights and optimizer, the split's code length, and its training records.
pub struct Trial {
    pub model: Model<f32>,
    pub optimizer: AdamW<f32>,
    pub bits: f64,
    /// The split's bits position by position (`bits` is their sum).
    pub bits_by_position: Vec<f64>,
    /// Every trial step, as the training log records it.
    pub steps: Vec<StepRecord>,
}

pub struct CheckOutcome {
    pub decisions: Vec<Decision>,
    /// The accepted candidate's trial, with the spec that now includes its block.
    pub accepted: Option<(Trial, RuleSpec)>,
    /// Copies trained, controls included.
    pub trials: usize,
    pub seconds: f64,
}

/// The candidates of a check: every recruitable block not yet grown, then the most cohesive clusters.
pub fn propose(ctx: &CheckContext, model: &Model<f32>) -> Vec<Candidate> {
    let r = ctx.recruitment;
    // the vocabulary is ordered by frequency, so the first free ids are the most frequent
    let frequent: Vec<u32> =
        free_tokens(ctx.set, model, ctx.vocabulary).into_iter().take(r.cluster_vocabulary).collect();
    let rows: Vec<usize> = frequent.iter().map(|&t| t as usize).collect();
    let embeddings = model.params.tok_emb.select(ndarray::Axis(0), &rows);
    let unit = kmeans::normalized(embeddings.view());
    let mut candidates = Vec::new();
    let recruited: Vec<&str> = model.config.recruited_blocks.iter().map(|b| b.name.as_str()).collect();
    for block in ctx.set.blocks.iter().filter(|b| b.recruitable && !recruited.contains(&b.name.as_str())) {
        if block.members.is_empty() || frequent.is_empty() {
            continue;
        }
        // grow from the seeds' mean direction
        let seeds = model
            .params
            .tok_emb
            .select(ndarray::Axis(0), &block.members.iter().map(|&m| m as usize).collect::<Vec<_>>());
        let seed_unit = kmeans::normalized(seeds.view());
        let centre = seed_unit.sum_axis(ndarray::Axis(0));
        let similarity = unit.dot(&centre);
        let mut order: Vec<usize> = (0..frequent.len()).collect();
        order.sort_by(|&a, &b| similarity[b].total_cmp(&similarity[a]).then(a.cmp(&b)));
        let grow = r.cluster_size.saturating_sub(block.members.len());
        let mut members: Vec<u32> = block.members.clone();
        members.extend(order.iter().take(grow).map(|&i| frequent[i]));
        members.sort_unstable();
        candidates.push(Candidate { name: block.name.clone(), origin: Origin::Recruitable, members });
    }
    if frequent.len() >= 4 {
        let k = (frequent.len() / r.cluster_size).max(2);
        let assignment = kmeans::cluster(&unit, k, 25, ctx.config.seed ^ ctx.step as u64);
        // a cluster counts by how much tighter than the frequent tokens at large it is, and by its size
        // (√n: a big tight group says more than a pair)
        let background = kmeans::cohesion(&unit, &(0..frequent.len()).collect::<Vec<_>>());
        let mut clusters: Vec<(f64, Vec<usize>)> = (0..k)
            .map(|c| (0..frequent.len()).filter(|&i| assignment[i] == c).collect::<Vec<_>>())
            .filter(|members| members.len() >= 2)
            .map(|members| ((kmeans::cohesion(&unit, &members) - background) * (members.len() as f64).sqrt(), members))
            .collect();
        clusters.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        for (index, (_, members)) in clusters.into_iter().take(r.candidates_per_check).enumerate() {
            let mut ids: Vec<u32> = members.iter().map(|&i| frequent[i]).collect();
            ids.sort_unstable();
            candidates.push(Candidate {
                name: format!("cluster-{}-{}", ctx.step, index + 1),
                origin: Origin::Cluster,
                members: ids,
            });
        }
    }
    candidates
}

/// Trains a copy of `model` for the trial's steps, with `candidate`'s block added when given, and
/// measures the recruitment split. The copy shares nothing with `model`.
pub fn trial(
    ctx: &CheckContext,
    model: &Model<f32>,
    optimizer: &AdamW<f32>,
    candidate: Option<&Candidate>,
) -> Result<Trial> {
    train_copy(ctx, model, optimizer, candidate, false)
}

/// A second control: the same model trained on the same batches (each with its own λ) in the reverse
/// order. Its code length differs from the control's only by the path training took, never by what it
/// saw, so their difference is a measured noise floor for the check's savings.
pub fn reversed_control(ctx: &CheckContext, model: &Model<f32>, optimizer: &AdamW<f32>) -> Result<Trial> {
    train_copy(ctx, model, optimizer, None, true)
}

pub(super) fn train_copy(
    ctx: &CheckContext,
    model: &Model<f32>,
    optimizer: &AdamW<f32>,
    candidate: Option<&Candidate>,
    reversed: bool,
) -> Result<Trial> {
    let mut model = model.clone();
    let mut optimizer = optimizer.clone();
    let with_block;
    let set: &RuleSet = match candidate {
        Some(c) => {
            model.add_block(&c.name, &c.members)?;
            optimizer.grow_to(&model.params);
            let placement = ctx.recruitment.placement(model.config.n_layers, model.config.n_heads)?;
            let spec = spec_with_block(ctx.spec, &c.name, &c.members, ctx.vocabulary, placement);
            with_block = RuleSet::compile(&spec, ctx.vocabulary)?.0;
            &with_block
        }
        None => ctx.set,
    };
    let config = ctx.config;
    let last = (ctx.step + ctx.recruitment.trial_steps).min(config.steps);
    let plan = StepPlan::of(config, Some((ctx.locality, set)), ctx.train_ids);
    let mut steps = Vec::new();
    let mut diverged = false;
    for step in ctx.step..last {
        // the batch (and its λ) of step `batch_step`; the learning rate stays the step's own
        let batch_step = if reversed { last - 1 - (step - ctx.step) } else { step };
        match train_step(&mut model, &mut optimizer, &plan, step, batch_step) {
            Ok(record) => steps.push(record),
            Err(NonFinite { .. }) => {
                diverged = true;
                break;
            }
        }
    }
    let lambda = measuring_lambda(&ctx.locality.schedule, ctx.step, config.seed);
    let mut bits_by_position = code_lengths(&model, ctx.split, set, ctx.locality, lambda, config.batch_size);
    if diverged {
        // a trial that diverged has no code length: NaN bits are never a saving, so it is rejected
        bits_by_position.iter_mut().for_each(|b| *b = f64::NAN);
    }
    let bits = bits_by_position.iter().sum();
    Ok(Trial { model, optimizer, bits, bits_by_position, steps })
}

/// Runs one recruitment check on the run's current state. `extra` candidates (if any) are trialled
/// beside the proposed ones.
pub fn check(
    ctx: &CheckContext,
    model: &Model<f32>,
    optimizer: &AdamW<f32>,
    extra: &[Candidate],
) -> Result<CheckOutcome> {
    let started = Instant::now();
    let mut candidates = propose(ctx, model);
    candidates.extend(extra.iter().cloned());
    let trialled = trial_all(ctx, model, optimizer, &candidates)?;
    let mut outcome = decide(ctx, model, &candidates, trialled)?;
    outcome.seconds = started.elapsed().as_secs_f64();
    Ok(outcome)
}

/// The verdicts of a check on its trials (`trialled.candidates[i]` is `candidates[i]`'s). Of the blocks
/// that pay, the one with the largest saving net of its cost is accepted: it is named (from its anchors,
/// unless a recruitable block brought its name), and the rules gain it with its own-block rule.
pub fn decide(
    ctx: &CheckContext,
    model: &Model<f32>,
    candidates: &[Candidate],
    trialled: Trialled,
) -> Result<CheckOutcome> {
    let placement = ctx.recruitment.placement(model.config.n_layers, model.config.n_heads)?;
    let judged = judge(ctx, model, candidates, trialled);
    let recruited_cost = judged.recruited_cost;
    // decisions[k] is the verdict on kept[k] = (candidate index, its trial)
    let mut decisions = Vec::new();
    let mut kept = Vec::new();
    let mut best: Option<(usize, f64)> = None;
    for (index, verdict) in judged.verdicts.into_iter().enumerate() {
        // a candidate whose members were all taken by recruited blocks cannot be trialled: left out
        let Ok((decision, trial)) = verdict else { continue };
        let net = decision.saving_bits() - decision.cost_bits;
        if decision.pays() && best.is_none_or(|(_, best_net)| net > best_net) {
            best = Some((kept.len(), net));
        }
        decisions.push(decision);
        kept.push((index, trial));
    }
    let accepted = best.map(|(k, _)| {
        let (index, mut trial) = kept.swap_remove(k);
        let candidate = &candidates[index];
        let name = recruited_name(ctx, candidate);
        // the trial named its block provisionally; the run keeps the anchor-derived name
        if let Some(block) = trial.model.config.recruited_blocks.last_mut() {
            block.name = name.clone();
        }
        let spec = spec_with_block(ctx.spec, &name, &candidate.members, ctx.vocabulary, placement);
        let decision = &mut decisions[k];
        decision.candidate = name;
        decision.accept(recruited_cost);
        (trial, spec)
    });
    Ok(CheckOutcome { decisions, accepted, trials: judged.trials, seconds: 0.0 })
}

/// The trials of one check: the control, the noise floor, and each candidate's trial (an error for a
/// candidate that cannot be trialled).
pub struct Trialled {
    pub control: Trial,
    /// `|L(control) − L(reversed control)|`, or 0 when `noise_control` is off.
    pub noise_bits: f64,
    pub candidates: Vec<Result<Trial>>,
    /// Copies trained, controls included.
    pub trials: usize,
}

/// Trains the control, the reversed control (when asked for) and every candidate's copy side by side:
/// they are independent copies of the same state.
pub fn trial_all(
    ctx: &CheckContext,
    model: &Model<f32>,
    optimizer: &AdamW<f32>,
    candidates: &[Candidate],
) -> Result<Trialled> {
    enum Run<'a> {
        Control,
        Reversed,
        Block(&'a Candidate),
    }
    let noise = ctx.recruitment.noise_control;
    let runs: Vec<Run> = std::iter::once(Run::Control)
        .chain(noise.then_some(Run::Reversed))
        .chain(candidates.iter().map(Run::Block))
        .collect();
    let trials = runs.len();
    let mut results = runs
        .par_iter()
        .map(|run| match run {
            Run::Control => trial(ctx, model, optimizer, None),
            Run::Reversed => reversed_control(ctx, model, optimizer),
            Run::Block(c) => trial(ctx, model, optimizer, Some(c)),
        })
        .collect::<Vec<_>>()
        .into_iter();
    let control = results.next().ok_or_else(|| Error::invalid("recruitment", "no control trial"))??;
    let noise_bits = if noise {
        let reversed = results.next().ok_or_else(|| Error::invalid("recruitment", "no reversed control"))??;
        (control.bits - reversed.bits).abs()
    } else {
        0.0
    };
    Ok(Trialled { control, noise_bits, candidates: results.collect(), trials })
}

pub(super) fn cost_of(ctx: &CheckContext, model: &Model<f32>, members: usize) -> f64 {
    block_cost_bits(
        ctx.vocabulary.len(),
        members,
        model.config.d_model,
        ctx.split.len().saturating_sub(1),
        ctx.recruitment.bits_per_parameter,
    )
}
