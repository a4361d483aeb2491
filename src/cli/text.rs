//! Tables and texts the verbs print, as functions of what they computed.

use super::*;

pub(super) fn dial_table(
    rows: &[LocalityMetrics],
    kind: TokenizerKind,
    settings: &DialSettings,
    epsilon: f64,
) -> String {
    let mut s = format!(
        "tokenizer {}; margin μ {} nats, temperature τ₁ {}, ρ {}; certificates at ε = {epsilon}\n\n",
        kind.name(),
        settings.margin,
        settings.temperature,
        settings.penalty
    );
    s += "     λ  mean_ce  perplexity  accuracy  entropy  covered_entropy  fidelity  hit_rate  concentration  λ*(p90)  certified  violations\n";
    for r in rows {
        let c = &r.certificates;
        s += &format!(
            "{:>6.2}  {:>7.4}  {:>10.3}  {:>8.4}  {:>7.3}  {:>15.3}  {:>8.4}  {:>8.4}  {:>13.4}  {:>7.3}  {:>9.3}  {:>10}\n",
            r.lambda,
            r.language_model.mean_ce_nats,
            r.language_model.perplexity,
            r.language_model.accuracy,
            r.entropy_bits,
            r.covered_entropy_bits,
            r.pointer_fidelity,
            r.pointer_hit_rate,
            r.block_concentration,
            c.lambda_star_quantiles[1],
            c.share_certified,
            c.violations.total()
        );
    }
    s += "\nentropies in bits per attention row; fidelity, hit rate and certificates over rows a rule covers\n";
    if rows.iter().any(|r| !r.copy_paths.is_empty()) {
        s += "\ncopy paths (METHOD §4): rows where the cache is not empty, mean copy weight there, share of those \
              rows whose cache holds the target, bits saved against the same model without the path\n";
        s += &format!(
            "{:>6}  {:<44} {:>9} {:>10} {:>9} {:>11}\n",
            "λ", "copy rule", "rows", "share", "hit_rate", "bits_saved"
        );
        for r in rows {
            for path in &r.copy_paths {
                s += &format!(
                    "{:>6.2}  {:<44} {:>9} {:>10.4} {:>9.4} {:>11.1}\n",
                    r.lambda, path.name, path.applied_rows, path.copy_share, path.copy_hit_rate, path.bits_saved
                );
            }
        }
    }
    s
}

pub(super) fn eval_table(r: &EvalResult, kind: TokenizerKind) -> String {
    format!(
        "tokenizer       {}\ntokens          {}\nmean_ce_nats    {:.6}\nperplexity      {:.4}\nbits_per_token  {:.4}\naccuracy        {:.4}\n",
        kind.name(),
        r.tokens,
        r.mean_ce_nats,
        r.perplexity,
        r.bits_per_token,
        r.accuracy
    )
}

pub(super) fn scaling_text(scaling: &[bench::Scaling], recruitment: Option<&bench::RecruitmentCost>) -> String {
    let mut s = String::new();
    if let Some(first) = scaling.first() {
        s += "\nsweep scaling (char-small training, members share the cores as `ailla run` shares them):\n";
        s += "members  at once  threads each  tokens/s  vs one member\n";
        for row in scaling {
            s += &format!(
                "{:>7}  {:>7}  {:>12}  {:>8.0}  {:>12.2}×\n",
                row.members,
                row.concurrent,
                row.threads_each,
                row.tokens_per_s,
                row.tokens_per_s / first.tokens_per_s
            );
        }
    }
    if let Some(r) = recruitment {
        s += &format!(
            "\nrecruitment check (bundled corpus, char-small shape): {} trials × {} steps in {:.2} s; the same {} training \
             steps alone {:.2} s: {:.2}× (target ≤ 1.1×)\n",
            r.trials,
            r.trial_steps,
            r.check_seconds,
            r.trials * r.trial_steps,
            r.steps_seconds,
            r.ratio
        );
    }
    s
}

pub(super) fn bench_table(
    threads: usize,
    sgemm: f64,
    rows: &[(BenchResult, Option<bench::TorchResult>)],
    compared: bool,
) -> String {
    let mut s = format!(
        "threads {threads}; sgemm {sgemm:.1} GFLOP/s (1024³, best of 5 at the start); each configuration's \
         share is of its own sgemm, timed between its training steps\n\n"
    );
    s += "config       params     train tok/s  eval tok/s   GFLOP/s     sgemm  of sgemm  peak MiB";
    if compared {
        s += "  torch train  torch eval  ratio train  ratio eval";
    }
    s += "\n";
    for (r, torch) in rows {
        s += &format!(
            "{:<12} {:>9}  {:>11.0}  {:>10.0}  {:>8.1}  {:>8.1}  {:>7.1}%  {:>8}",
            r.config.name,
            r.parameters,
            r.train_tokens_per_s,
            r.eval_tokens_per_s,
            r.train_gflops,
            r.sgemm_gflops,
            100.0 * r.train_gflops / r.sgemm_gflops,
            r.peak_memory_mib.map_or("-".into(), |m| format!("{m:.0}")),
        );
        if compared {
            match torch {
                Some(t) => {
                    s += &format!(
                        "  {:>11.0}  {:>10.0}  {:>10.2}×  {:>9.2}×",
                        t.train_tokens_per_s,
                        t.eval_tokens_per_s,
                        r.train_tokens_per_s / t.train_tokens_per_s,
                        r.eval_tokens_per_s / t.eval_tokens_per_s
                    )
                }
                None => s += "  (no torch in this Python)",
            }
        }
        s += "\n";
    }
    let timed: Vec<_> = rows.iter().filter_map(|(r, _)| Some((&r.config.name, r.train_step_parts.as_ref()?))).collect();
    if !timed.is_empty() {
        s += "\ntraining step by part (median ms)   forward  output layer  backward    AdamW\n";
        for (name, parts) in timed {
            s += &format!(
                "{name:<34} {:>8.2}  {:>12.2}  {:>8.2}  {:>7.2}\n",
                1e3 * parts.forward_seconds,
                1e3 * parts.output_layer_seconds,
                1e3 * parts.backward_seconds,
                1e3 * parts.optimizer_seconds
            );
        }
    }
    s
}

/// A verdict's bits on every position of the split, on the positions `place` names (the verdict's
/// `member_queries`) and everywhere else, under the two `columns`, with what was saved.
pub(super) fn position_rows(
    verdict: &crate::recruit::probe::BlockVerdict,
    columns: (&str, &str),
    place: &str,
) -> String {
    let d = &verdict.decision;
    let per_token = |bits: f64, n: usize| bits / n.max(1) as f64;
    let (first, second) = columns;
    let mut s = format!("{:<40} {first:>11} {second:>11} {:>9} {:>19}\n", "bits", "saved", "bits/token");
    let rows = [
        (
            format!("all {} positions", d.split_tokens),
            verdict.member_queries.bits_control + verdict.other_queries.bits_control,
            verdict.member_queries.bits_with_block + verdict.other_queries.bits_with_block,
            d.split_tokens,
        ),
        (
            format!("  {place} ({})", verdict.member_queries.positions),
            verdict.member_queries.bits_control,
            verdict.member_queries.bits_with_block,
            verdict.member_queries.positions,
        ),
        (
            format!("  everywhere else ({})", verdict.other_queries.positions),
            verdict.other_queries.bits_control,
            verdict.other_queries.bits_with_block,
            verdict.other_queries.positions,
        ),
    ];
    for (label, without, with, positions) in rows {
        s += &format!(
            "{label:<40} {without:>11.1} {with:>11.1} {:>9.1} {:>8.4} → {:.4}\n",
            without - with,
            per_token(without, positions),
            per_token(with, positions)
        );
    }
    s
}

/// `ailla trial` of frozen-model trials: per block, the bits of `D` without and with its copy path,
/// where the path's cache held the target and elsewhere, and the verdict.
pub(super) fn frozen_trial_text(run_dir: &Path, probe: &crate::recruit::probe::Probe) -> String {
    let mut s = format!(
        "{} from step {}: each block's copy path (any token copies from the block within {} positions) on the \
         frozen model, its gate trained {} steps; split coded at λ = {}\n",
        run_dir.display(),
        probe.from_step,
        probe.rule_within.unwrap_or(0),
        probe.trial_steps,
        probe.lambda
    );
    for verdict in &probe.blocks {
        let d = &verdict.decision;
        s += &format!("\nblock `{}` ({} members)\n", d.candidate, d.members.len());
        s += &position_rows(verdict, ("without", "with path"), "the cache held the target");
        s += &format!(
            "cost {:.1} bits (membership {:.1}, gate {:.1}), margin {:.1}\nverdict: {}\n",
            d.cost_bits,
            d.membership_bits.unwrap_or(verdict.membership_bits),
            d.parameter_bits.unwrap_or(0.0),
            d.margin_bits,
            if d.accepted {
                format!("pays: saves {:.1} bits more than it needs", d.saving_bits() - d.required_bits())
            } else {
                format!("does not pay: {:.1} bits short", d.required_bits() - d.saving_bits())
            }
        );
    }
    s
}

pub(super) fn check_table(checked: &json::CheckOutput, tokenizer: TokenizerKind, window: usize) -> String {
    let copies = checked.copy_rules.len();
    let mut s = format!(
        "{}: {} blocks, {} rules{}\n",
        checked.rules_file,
        checked.blocks.len(),
        checked.written_rules,
        if copies > 0 { format!(", {copies} copy rules") } else { String::new() }
    );
    if !checked.vocabulary_given {
        s += "(no vocabulary given: words were not looked up; add --corpus or --checkpoint)\n";
    }
    s += "\nblock                 members  anchors\n";
    for block in &checked.blocks {
        let kind = if block.recruitable { "  (recruitable)" } else { "" };
        s += &format!("{:<20}  {:>7}  {}{kind}\n", block.name, block.members, block.anchors.join(", "));
    }
    let covers = |rule: &json::CheckedRule| rule.covers.map_or("-".to_string(), |c| c.to_string());
    s += "\nrule                                         covers\n";
    for rule in &checked.rules {
        s += &format!("{:<42}  {:>7}\n", rule.name, covers(rule));
    }
    if copies > 0 {
        s += "\ncopy rule                                    covers\n";
        for rule in &checked.copy_rules {
            s += &format!("{:<42}  {:>7}\n", rule.name, covers(rule));
        }
    }
    if let Some(tokens) = checked.corpus_tokens {
        s += &format!(
            "\ncoverage: query positions each rule covers in the corpus ({tokens} {} tokens, windows of {window}){}\n",
            tokenizer.name(),
            if copies > 0 { "; a copy rule covers a position whose copy cache is not empty" } else { "" }
        );
    }
    s
}
