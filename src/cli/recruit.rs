//! `ailla route` and `ailla trial`.

use super::*;

pub(super) fn run_route(args: RouteArgs, out: &mut dyn Write) -> Result<()> {
    Error::require_counts([("--tokens", args.tokens.unwrap_or(1))])?;
    let pool = crate::recruit::domains::load_pool(&args.pool)?;
    let text = crate::data::corpus::read_text(&args.text)?;
    let ids = pool.vocabulary.encode(&text);
    let k = args.tokens.unwrap_or(pool.manifest.router_tokens);
    if ids.len() < 2 {
        return Err(Error::Corpus { path: args.text.clone(), message: "has fewer than two tokens to score".into() });
    }
    let (best, bits) = crate::recruit::domains::route(&pool.models, &ids, k);
    // a model whose code length is not finite is never chosen; if every one is, nothing is
    Error::require_finite(
        &format!("the code length under the chosen model `{}`", pool.manifest.models[best].name),
        bits[best],
        "every model of the pool gives this document non-finite bits; check the pool's checkpoints",
    )?;
    let read = ids.len().min(k + 1) - 1;
    if args.json {
        let output = json::RouteOutput {
            tokens: read,
            chosen: pool.manifest.models[best].name.clone(),
            models: pool
                .manifest
                .models
                .iter()
                .zip(&bits)
                .map(|(m, &b)| json::RoutedModel {
                    model: m.name.clone(),
                    trained_on: m.trained_on.clone(),
                    bits: b.is_finite().then_some(b),
                })
                .collect(),
        };
        return write_out(
            out,
            &(serde_json::to_string_pretty(&output).map_err(|e| Error::Numeric(e.to_string()))? + "\n"),
        );
    }
    let mut s = format!(
        "{}: first {read} tokens\n\n{:<32} {:<20} {:>12} {:>12}\n",
        args.text.display(),
        "model",
        "trained on",
        "bits",
        "bits/token"
    );
    for (index, (model, b)) in pool.manifest.models.iter().zip(&bits).enumerate() {
        let mark = if index == best { "  ← chosen" } else { "" };
        s += &format!(
            "{:<32} {:<20} {:>12.1} {:>12.4}{mark}\n",
            model.name,
            model.trained_on,
            b,
            b / read.max(1) as f64
        );
    }
    write_out(out, &s)
}

pub(super) fn run_trial(args: TrialArgs, out: &mut dyn Write) -> Result<()> {
    use crate::recruit::probe::BlockSource;
    let blocks = match (&args.block, &args.rules) {
        (Some(words), _) => BlockSource::Words {
            name: args.name.clone().unwrap_or_else(|| "proposed".into()),
            words: words.split([',', ' ', '\t', '\n']).filter(|w| !w.is_empty()).map(String::from).collect(),
        },
        (None, Some(path)) => BlockSource::Rules { path: path.clone(), only: args.name.clone() },
        (None, None) => return Err(Error::invalid("--block", "give --block or --rules")),
    };
    let request = crate::recruit::probe::ProbeRequest {
        blocks,
        trial_steps: args.steps,
        split_tokens: args.split_tokens,
        margin_bits: args.margin,
        rule_layer: args.layer,
        rule_head: args.head,
        trial: args.trial.map(|t| match t {
            TrialFlag::Frozen => crate::recruit::TrialKind::Frozen,
            TrialFlag::CoTrained => crate::recruit::TrialKind::CoTrained,
        }),
    };
    let probe = crate::recruit::probe::probe(&args.run_dir, &request)?;
    if !probe.rules_warnings.is_empty() {
        crate::eprint_lossy!("{}", probe.rules_warnings);
    }
    if args.json {
        let json = serde_json::to_string_pretty(&probe).map_err(|e| Error::Numeric(e.to_string()))?;
        return write_out(out, &format!("{json}\n"));
    }
    let Some(first) = probe.blocks.first() else {
        return write_out(out, "no block was trialled\n");
    };
    if probe.trial == crate::recruit::TrialKind::Frozen {
        return write_out(out, &frozen_trial_text(&args.run_dir, &probe));
    }
    let mut s = format!(
        "{} from step {}: {} trial steps, split of {} tokens coded at λ = {}\n\
         each block's own-block rule acts on layer {}, head {}, {}\n\
         control (the same steps, no new block): {:.1} bits; noise {:.1} bits (a second control on the reversed batches)\n",
        args.run_dir.display(),
        probe.from_step,
        probe.trial_steps,
        first.decision.split_tokens,
        probe.lambda,
        probe.rule_layer,
        probe.rule_head,
        match probe.rule_within {
            Some(within) => format!("within {within} positions"),
            None => "over the whole context".to_string(),
        },
        first.member_queries.bits_control + first.other_queries.bits_control,
        first.decision.noise_bits
    );
    for verdict in &probe.blocks {
        let d = &verdict.decision;
        s += &format!("\nblock `{}` ({} members)\n", d.candidate, d.members.len());
        s += &position_rows(verdict, ("control", "with block"), "a member is the input");
        s += &format!(
            "saving {:.1} bits; cost {:.1} bits ({:.1} for the membership, {:.1} for the block embedding); \
             margin {:.1} bits; noise {:.1} bits\n",
            d.saving_bits(),
            d.cost_bits,
            verdict.membership_bits,
            d.cost_bits - verdict.membership_bits,
            d.margin_bits,
            d.noise_bits
        );
        s += &if d.accepted {
            format!("verdict: recruited — it saves {:.1} bits more than it must\n", d.saving_bits() - d.required_bits())
        } else {
            format!("verdict: not recruited — {:.1} bits short\n", d.required_bits() - d.saving_bits())
        };
    }
    write_out(out, &s)
}
