//! `ailla bench`.

use super::*;

pub(super) fn torch_script() -> PathBuf {
    let beside_manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/torch_reference.py");
    if beside_manifest.is_file() {
        beside_manifest
    } else {
        PathBuf::from("benches/torch_reference.py")
    }
}

fn planted_pipeline() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/recruit_planted.yaml")
}

fn check_cost_text(cost: &bench::FrozenCheckCost) -> String {
    format!(
        "frozen-model recruitment check ({}): {} candidates over a split of {} tokens in {:.2} s; the {} \
         training steps between two checks take {:.2} s (timed over {}): {:.1} % (target ≤ 15 %)\n\
         split scoring {}; the same check scoring every position: {:.2} s ({:.1} %); largest difference \
         of a candidate's saving between the two: {:.2e} bits\n",
        cost.pipeline,
        cost.candidates,
        cost.split_tokens,
        cost.check_seconds,
        cost.check_every,
        cost.steps_seconds,
        cost.timed_steps,
        100.0 * cost.ratio,
        match cost.split_scoring {
            crate::config::SplitScoring::EveryPosition => "every_position",
            crate::config::SplitScoring::SavingOnly => "saving_only",
        },
        cost.every_position_seconds,
        100.0 * cost.every_position_seconds / cost.steps_seconds.max(f64::MIN_POSITIVE),
        cost.largest_saving_difference_bits
    )
}

pub(super) fn run_bench(args: BenchArgs, out: &mut dyn Write) -> Result<()> {
    if let Some(megabytes) = args.rules_check {
        if !(megabytes > 0.0 && megabytes <= 1024.0) {
            return Err(Error::invalid("--rules-check", "must be a size in megabytes above 0 and at most 1024"));
        }
        let cost = crate::dsl::cost::rules_check_cost((megabytes * 1e6) as usize)?;
        let text = if args.json {
            serde_json::to_string_pretty(&cost).map_err(|e| Error::Numeric(e.to_string()))? + "\n"
        } else {
            format!(
                "{}\nailla check on a generated rules file of {:.1} MB ({} blocks, {} words, most not in the \
                 vocabulary): {:.2} s (target < 2 s), {} diagnostics in {} characters; building a word vocabulary \
                 from the same bytes takes {:.2} s: {:.1}× that\n",
                crate::engine::environment::current().cpu,
                cost.bytes as f64 / 1e6,
                cost.blocks,
                cost.words,
                cost.check_seconds,
                cost.diagnostics,
                cost.rendered_chars,
                cost.reference_seconds,
                cost.ratio
            )
        };
        return write_out(out, &text);
    }
    if let Some(pipeline) = &args.check_cost {
        let cost = bench::frozen_check_cost(pipeline, args.data.clone())?;
        let text = if args.json {
            serde_json::to_string_pretty(&cost).map_err(|e| Error::Numeric(e.to_string()))? + "\n"
        } else {
            format!("{} threads, {}\n", rayon::current_num_threads(), crate::engine::environment::current().cpu)
                + &check_cost_text(&cost)
        };
        return write_out(out, &text);
    }
    let all = bench::standard_configs();
    let selected: Vec<BenchConfig> = if args.configs.is_empty() {
        all.clone()
    } else {
        args.configs
            .iter()
            .map(|name| {
                all.iter().find(|c| &c.name == name).cloned().ok_or_else(|| {
                    let names: Vec<&str> = all.iter().map(|c| c.name.as_str()).collect();
                    Error::invalid("--config", format!("unknown configuration `{name}`; known: {}", names.join(", ")))
                })
            })
            .collect::<Result<_>>()?
    };
    if args.single {
        let config = selected.first().ok_or_else(|| Error::invalid("--config", "name one configuration"))?;
        let result = bench::run_config(config, args.steps)?;
        return write_out(out, &(serde_json::to_string(&result).map_err(|e| Error::Numeric(e.to_string()))? + "\n"));
    }
    let threads = rayon::current_num_threads();
    let sgemm = bench::sgemm_gflops(1024, 5);
    let mut rows = Vec::new();
    for config in &selected {
        // one process per configuration, so that its peak memory is its own
        let result =
            measure_in_child(config, args.steps, threads).or_else(|_| bench::run_config(config, args.steps))?;
        let torch = if args.compare_torch {
            bench::run_torch(&args.python, &torch_script(), config, args.steps, threads)?
        } else {
            None
        };
        rows.push((result, torch));
    }
    let overhead = bench::dial_overhead(args.steps)?;
    let (scaling, recruitment) = if args.scaling {
        let shape = all.first().cloned().ok_or_else(|| Error::invalid("bench", "no configuration"))?;
        let scaling: Vec<bench::Scaling> = [1, 2, 4, 6]
            .iter()
            .map(|&m| bench::sweep_scaling(&shape, args.steps, m, threads))
            .collect::<Result<_>>()?;
        (scaling, Some((bench::recruitment_cost(args.steps)?, bench::frozen_check_cost(&planted_pipeline(), None)?)))
    } else {
        (Vec::new(), None)
    };
    let text = if args.json {
        let output = json::BenchOutput {
            threads,
            sgemm_gflops: sgemm,
            results: rows.iter().map(|(r, t)| json::BenchRow { ailla: r.clone(), torch: t.clone() }).collect(),
            dial_overhead: overhead.clone(),
            sweep_scaling: scaling.clone(),
            recruitment_cost: recruitment.as_ref().map(|(co_trained, _)| co_trained.clone()),
            frozen_check_cost: recruitment.as_ref().map(|(_, frozen)| frozen.clone()),
        };
        serde_json::to_string_pretty(&output).map_err(|e| Error::Numeric(e.to_string()))? + "\n"
    } else {
        bench_table(threads, sgemm, &rows, args.compare_torch)
            + &format!(
                "\nlocality dial at evaluation (bundled corpus and rules, char-small shape, λ = 1):\n  \
                 without rules {:.0} tok/s, with rules {:.0} tok/s: {:.2}× the time (target ≤ 1.15×); \
                 with every metric and certificate {:.0} tok/s\n\
                 copy path at evaluation (one copy rule, `copy from drugs within 40`, λ = 1): {:.0} tok/s, \
                 {:.2}× the time without (target ≤ 1.15×)\n",
                overhead.plain_tokens_per_s,
                overhead.rules_tokens_per_s,
                overhead.cost_ratio,
                overhead.metrics_tokens_per_s,
                overhead.copy_tokens_per_s,
                overhead.copy_cost_ratio
            )
            + &scaling_text(&scaling, recruitment.as_ref().map(|(co_trained, _)| co_trained))
            + &recruitment.as_ref().map_or(String::new(), |(_, f)| check_cost_text(f))
    };
    write_out(out, &text)
}

pub(super) fn measure_in_child(config: &BenchConfig, steps: usize, threads: usize) -> Result<BenchResult> {
    let exe = std::env::current_exe().map_err(|e| Error::io("<current executable>", e))?;
    let output = std::process::Command::new(&exe)
        .args(["--threads", &threads.to_string(), "bench", "--single", "--json", "--config", &config.name])
        .args(["--steps", &steps.to_string()])
        .output()
        .map_err(|e| Error::io(&exe, e))?;
    if !output.status.success() {
        return Err(Error::Numeric(String::from_utf8_lossy(&output.stderr).into_owned()));
    }
    serde_json::from_slice(&output.stdout).map_err(|e| Error::Numeric(e.to_string()))
}
