//! `ailla bench`.

use super::*;
use crate::engine::cuda::StepDevice;

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

pub(super) fn run_bench(args: BenchArgs, device: StepDevice, out: &mut dyn Write) -> Result<()> {
    if !(1..=9).contains(&args.rounds) {
        return Err(Error::invalid("--rounds", format!("is {}; it must be between 1 and 9", args.rounds)));
    }
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
    if let StepDevice::Gpu { .. } = device {
        return gpu_bench(&args, &selected, out);
    }
    if args.single {
        let config = selected.first().ok_or_else(|| Error::invalid("--config", "name one configuration"))?;
        let result = bench::run_config(config, args.steps)?;
        return write_out(out, &(serde_json::to_string(&result).map_err(|e| Error::Numeric(e.to_string()))? + "\n"));
    }
    let threads = rayon::current_num_threads();
    let sgemm = bench::sgemm_gflops(1024, 5);
    let mut rows = Vec::new();
    for config in &selected {
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for _ in 0..args.rounds {
            // one process per configuration, so that its peak memory is its own
            ours.push(
                measure_in_child(config, args.steps, threads).or_else(|_| bench::run_config(config, args.steps))?,
            );
            if args.compare_torch {
                theirs.extend(bench::run_torch(&args.python, &torch_script(), config, args.steps, threads, "cpu")?);
            }
        }
        let result = bench::median_of_rounds(ours).ok_or_else(|| Error::invalid("--rounds", "no round ran"))?;
        rows.push((result, bench::median_torch_of_rounds(theirs)));
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
            dial_overhead: Some(overhead.clone()),
            device: None,
            sweep_scaling: scaling.clone(),
            recruitment_cost: recruitment.as_ref().map(|(co_trained, _)| co_trained.clone()),
            frozen_check_cost: recruitment.as_ref().map(|(_, frozen)| frozen.clone()),
        };
        serde_json::to_string_pretty(&output).map_err(|e| Error::Numeric(e.to_string()))? + "\n"
    } else {
        let rounds = if args.rounds > 1 {
            let alternating = if args.compare_torch { ", ailla and PyTorch alternating" } else { "" };
            format!("medians of {} rounds per configuration{alternating}\n", args.rounds)
        } else {
            String::new()
        };
        cpu_line()
            + &rounds
            + &bench_table(threads, sgemm, &rows, args.compare_torch)
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

/// The CPU and what runs on it, first line of a CPU benchmark: which machine the figures belong to,
/// and whether `AILLA_SIMD` made it compute as a narrower one.
fn cpu_line() -> String {
    use crate::engine::environment;
    let environment = environment::current();
    format!(
        "{}: ailla's kernels {}{}; OpenBLAS kernel {}{}\n",
        environment.cpu,
        environment.simd_path,
        environment::simd_cap_note(),
        environment.blas_core,
        environment::replaced_kernel_note(&environment)
    )
}

/// `ailla cuda-check`: the kernels against the host device, then the losses of a short run against the
/// CPU engine's; an error (exit 1) when any check fails, after printing them all.
pub(super) fn run_cuda_check(args: CudaCheckArgs, out: &mut dyn Write) -> Result<()> {
    if !(args.tolerance > 0.0 && args.loss_tolerance > 0.0) || args.steps == 0 {
        return Err(Error::invalid("cuda-check", "the tolerances must be above 0 and --steps at least 1"));
    }
    #[cfg(feature = "cuda")]
    {
        use crate::engine::cuda::device::Gpu;
        use crate::engine::cuda::ops::Device;
        let open = || Gpu::new(0).map_err(|m| Error::invalid("--device", m));
        let mut gpu = open()?;
        let name = gpu.describe();
        let errors = crate::engine::cuda::parity::compare_kernels(
            &mut gpu,
            &mut crate::engine::cuda::host::HostDevice::new(),
            1,
        )
        .map_err(|m| Error::Numeric(format!("the kernel check failed to run: {m}")))?;
        drop(gpu);
        let mut text = format!("cuda-check on {name}\n");
        let mut failed = 0;
        for e in &errors {
            let pass = e.relative_error <= args.tolerance;
            failed += usize::from(!pass);
            text += &format!(
                "{}  {:<30} {:<18} relative error {:.2e} (≤ {:.0e})\n",
                if pass { "PASS" } else { "FAIL" },
                e.kernel,
                e.output,
                e.relative_error,
                args.tolerance
            );
        }
        let config =
            bench::standard_configs().into_iter().next().ok_or_else(|| Error::invalid("bench", "no configuration"))?;
        let (cpu, device) = bench::device::loss_trajectories(open()?, &config, args.steps)?;
        let (c, d) = (cpu.last().copied().unwrap_or(f64::NAN), device.last().copied().unwrap_or(f64::NAN));
        let difference = (c - d).abs();
        let pass = difference <= args.loss_tolerance * c.abs().max(1.0);
        failed += usize::from(!pass);
        text += &format!(
            "{}  loss after {} steps ({}, random batches): CPU {c:.6}, GPU {d:.6}, difference {difference:.2e} (≤ {:.0e})\n",
            if pass { "PASS" } else { "FAIL" },
            args.steps,
            config.name,
            args.loss_tolerance
        );
        let checks = errors.len() + 1;
        if failed > 0 {
            write_out(out, &text)?;
            return Err(Error::Numeric(format!("cuda-check: {failed} of {checks} checks failed")));
        }
        write_out(out, &(text + &format!("cuda-check: all {checks} checks passed\n")))
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = out;
        Err(Error::invalid("--device", "this ailla was built without the `cuda` feature"))
    }
}

/// The configurations on GPU 0 through the device step, each beside PyTorch on the same GPU when asked.
/// The dial, scaling and recruitment figures are the CPU engine's and are not repeated here.
fn gpu_bench(args: &BenchArgs, selected: &[BenchConfig], out: &mut dyn Write) -> Result<()> {
    #[cfg(feature = "cuda")]
    {
        let threads = rayon::current_num_threads();
        let mut rows = Vec::new();
        let mut name = String::new();
        for config in selected {
            let gpu = crate::engine::cuda::device::Gpu::new(0).map_err(|m| Error::invalid("--device", m))?;
            name = crate::engine::cuda::ops::Device::describe(&gpu);
            // a 4096³ product fills the GPU as the word-level output layer does
            let result = bench::device::run_config_on(gpu, config, args.steps, 4096)?;
            let torch = if args.compare_torch {
                bench::run_torch(&args.python, &torch_script(), config, args.steps, threads, "cuda")?
            } else {
                None
            };
            rows.push((result, torch));
        }
        let text = if args.json {
            let output = json::BenchOutput {
                threads,
                sgemm_gflops: rows.first().map_or(0.0, |(r, _)| r.sgemm_gflops),
                results: rows.iter().map(|(r, t)| json::BenchRow { ailla: r.clone(), torch: t.clone() }).collect(),
                dial_overhead: None,
                device: Some(name.clone()),
                sweep_scaling: Vec::new(),
                recruitment_cost: None,
                frozen_check_cost: None,
            };
            serde_json::to_string_pretty(&output).map_err(|e| Error::Numeric(e.to_string()))? + "\n"
        } else {
            format!(
                "device {name}: the device step (products by cuBLAS in f32, TF32 off); PyTorch eager on the same \
                 GPU; sgemm is a 4096³ cuBLAS product timed between the steps\n"
            ) + &bench_table(threads, rows.first().map_or(0.0, |(r, _)| r.sgemm_gflops), &rows, args.compare_torch)
        };
        write_out(out, &text)
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (args, selected, out);
        Err(Error::invalid("--device", "this ailla was built without the `cuda` feature"))
    }
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
