//! Command-line definitions (flags as typed) and their resolution into work (what the program does).

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::bench::{self, BenchConfig, BenchResult};
use crate::checkpoint;
use crate::data::generator::{bundled_corpus, generate, DEFAULT_SEED, TRAIN_RECORDS};
use crate::data::TokenizerKind;
use crate::locality::metrics::{evaluate_at, DialEvaluation, LocalityMetrics};
use crate::locality::score::evaluate;
use crate::locality::{Conditions, DialSettings, RuleSet, RulesSource};
use crate::train::{self, CorpusSource, EvalResult, Progress, TrainConfig};
use crate::{Error, Result};

mod args;
mod audit;
mod bench_args;
mod benchmark;
mod cluster;
mod explain;
mod members;
mod pipeline;
mod recruit;
mod rules;
mod text;
mod training;

pub mod json;
pub use args::*;
use audit::*;
use benchmark::*;
use cluster::*;
use explain::*;
use members::*;
use pipeline::*;
use recruit::*;
use rules::*;
use text::*;
use training::*;
pub use training::{load_train_config, parse_ids};

/// More worker threads than this many per core only add synchronisation: results do not depend on
/// the thread count, so a larger number is a mistake (or a pipeline written for a bigger machine).
const MAX_THREADS_PER_CORE: usize = 4;

/// An error unless `threads` is between 1 and [`MAX_THREADS_PER_CORE`] times this machine's cores.
pub fn check_threads(field: &str, threads: usize) -> Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let most = MAX_THREADS_PER_CORE * cores;
    match threads {
        0 => Err(Error::invalid(field, "must be at least 1")),
        n if n > most => Err(Error::invalid(
            field,
            format!(
                "{n} threads on {cores} core{} would only add synchronisation (at most {most}: \
                 {MAX_THREADS_PER_CORE} per core); results are the same for any thread count",
                if cores == 1 { "" } else { "s" }
            ),
        )),
        _ => Ok(()),
    }
}

/// Runs a parsed command line; output goes to `out`.
pub fn run(cli: Cli, out: &mut dyn Write) -> Result<()> {
    let products = crate::engine::direct_gemm::PRODUCTS_VARIABLE;
    crate::engine::direct_gemm::direct_products_allowed().map_err(|message| Error::invalid(products, message))?;
    let simd = crate::engine::simd::SIMD_VARIABLE;
    crate::engine::simd::simd_cap().map_err(|message| Error::invalid(simd, message))?;
    if let Some(threads) = cli.threads {
        check_threads("--threads", threads)?;
        // fails only if a pool was already built, which main never does before this point
        let _ = rayon::ThreadPoolBuilder::new().num_threads(threads).build_global();
    }
    crate::progress::set_verbosity(match (cli.quiet, cli.verbose) {
        (true, _) => crate::progress::Verbosity::Quiet,
        (_, true) => crate::progress::Verbosity::Verbose,
        _ => crate::progress::Verbosity::Normal,
    });
    // decided before any work starts, so that `--device cuda` on a machine without a GPU fails at once
    let device = match cli.device {
        Some(choice) => {
            let gpu = crate::engine::cuda::select(choice).map_err(|message| Error::invalid("--device", message))?;
            Some(crate::engine::cuda::StepDevice::of(choice, gpu))
        }
        None => None,
    };
    match cli.command {
        Command::Run(args) => run_pipeline(args, cli.threads, device, out),
        Command::Submit(args) => run_submit(args, cli.threads, out),
        Command::Validate(args) => run_validate(args, out),
        Command::Report(args) => {
            crate::report::require_finished(&args.run_dir)?;
            let report = crate::report::build(&args.run_dir)?;
            crate::report::write(&args.run_dir, &report)?;
            write_out(
                out,
                &format!("wrote {0}/report.html, report.md, report.json and the figures\n", args.run_dir.display()),
            )
        }
        Command::Verify(args) => run_verify(args, out),
        Command::Diff(args) => run_diff(args, out),
        Command::Train(args) => run_train(args, device.unwrap_or_default(), out),
        Command::Eval(args) => run_eval(args, out),
        Command::Explain(args) => run_explain(args, out),
        Command::Bench(args) => run_bench(args, device.unwrap_or_default(), out),
        Command::CudaCheck(args) => run_cuda_check(args, out),
        Command::Generate(args) => run_generate(args, out),
        Command::Check(args) => run_check(args, out),
        Command::Route(args) => run_route(args, out),
        Command::Trial(args) => run_trial(args, out),
        Command::Fmt(args) => run_fmt(args, out),
        Command::Anchors(args) => run_anchors(args, out),
        Command::Env(args) => run_env(args, out),
        Command::Export(args) => run_export(args, out),
        Command::Completions(args) => run_completions(args, out),
        Command::Man(args) => run_man(args, out),
    }
}

fn run_env(args: EnvArgs, out: &mut dyn Write) -> Result<()> {
    let environment = crate::engine::environment::current();
    if args.json {
        let text = serde_json::to_string_pretty(&environment).map_err(|e| Error::invalid("--json", e.to_string()))?;
        return write_out(out, &format!("{text}\n"));
    }
    let rows = [
        ("ailla", LONG_VERSION.to_string()),
        ("CPU", environment.cpu.clone()),
        (
            "kernels",
            format!(
                "{}{} (ailla's element-wise kernels; the same bits on every path)",
                environment.simd_path,
                crate::engine::environment::simd_cap_note()
            ),
        ),
        (
            "products",
            match crate::engine::direct_gemm::kernel() {
                Some(kernel) => format!(
                    "ailla's {} kernel for the output layer's tiles, each block task's rows and the weight \
                     gradients (where few columns fall in edge blocks), BLAS for the rest",
                    kernel.name
                ),
                None if crate::engine::direct_gemm::avx2_tile_kernel().is_some() => {
                    "ailla's avx2 6x16 kernel for the output layer's tiles over operands packed once per pass, \
                     BLAS for the rest (ailla's kernel for every row product needs AVX-512)"
                        .into()
                }
                None if crate::engine::direct_gemm::available_kernels().is_empty() => {
                    if crate::engine::simd::detected_simd() >= crate::engine::simd::Simd::Avx512 {
                        format!(
                            "BLAS for every product (ailla's own kernel needs AVX-512, which {} holds back)",
                            crate::engine::simd::SIMD_VARIABLE
                        )
                    } else {
                        "BLAS for every product (ailla's own kernel needs AVX-512)".into()
                    }
                }
                None => format!("BLAS for every product ({}=blas)", crate::engine::direct_gemm::PRODUCTS_VARIABLE),
            },
        ),
        (
            "BLAS",
            format!(
                "{} {}, kernel {}{}",
                environment.blas,
                environment.blas_version,
                environment.blas_core,
                crate::engine::environment::replaced_kernel_note(&environment)
            ),
        ),
        ("BLAS build", environment.blas_config.clone()),
        ("BLAS threads", environment.blas_threads.to_string()),
        ("worker threads", format!("{} (of {} cores)", environment.worker_threads, environment.cores)),
        ("CUDA", crate::engine::cuda::probe().summary()),
    ];
    let text: String = rows.iter().map(|(k, v)| format!("{k:<15} {v}\n")).collect();
    write_out(out, &text)
}

fn write_out(out: &mut dyn Write, text: &str) -> Result<()> {
    out.write_all(text.as_bytes()).map_err(|e| Error::io("<stdout>", e))
}

fn run_generate(args: GenerateArgs, out: &mut dyn Write) -> Result<()> {
    if args.sample {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/pharmacy-sample.txt");
        let text = generate(DEFAULT_SEED, 0, TRAIN_RECORDS);
        let sample: String = text.lines().take(60).map(|l| format!("{l}\n")).collect();
        checkpoint::atomic_write(&path, sample.as_bytes())?;
        return write_out(out, &format!("wrote {}\n", path.display()));
    }
    let Some(dir) = args.out else {
        return Err(Error::invalid("--out", "give a directory"));
    };
    let splits =
        if args.planted { crate::data::generator::planted_corpus(args.seed) } else { bundled_corpus(args.seed) };
    for (name, text) in [("train.txt", &splits.train), ("valid.txt", &splits.valid), ("test.txt", &splits.test)] {
        checkpoint::atomic_write(&dir.join(name), text.as_bytes())?;
    }
    write_out(out, &format!("wrote {} ({})\n", dir.display(), splits.name))
}

fn run_export(args: ExportArgs, out: &mut dyn Write) -> Result<()> {
    let ExportFormat::Hf = args.format;
    let checkpoint = checkpoint::load(&args.checkpoint)?;
    let exported = crate::export::export_hf(&checkpoint, &args.out)?;
    let mut text = format!("wrote {} ({})\n", exported.dir.display(), exported.files.join(", "));
    for note in &exported.notes {
        text += &format!("note: {note}\n");
    }
    write_out(out, &text)
}

fn run_completions(args: CompletionsArgs, out: &mut dyn Write) -> Result<()> {
    use clap::CommandFactory;
    let mut command = Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command, "ailla", &mut script);
    out.write_all(&script).map_err(|e| Error::io("<stdout>", e))
}

/// The manual page of `command`, in roff.
fn man_page(command: clap::Command) -> Result<Vec<u8>> {
    let mut page = Vec::new();
    clap_mangen::Man::new(command).render(&mut page).map_err(|e| Error::io("manual page", e))?;
    Ok(page)
}

fn run_man(args: ManArgs, out: &mut dyn Write) -> Result<()> {
    use clap::CommandFactory;
    let command = Cli::command();
    let Some(dir) = args.out else {
        let page = man_page(command)?;
        return out.write_all(&page).map_err(|e| Error::io("<stdout>", e));
    };
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let mut written = vec!["ailla.1".to_string()];
    checkpoint::atomic_write(&dir.join("ailla.1"), &man_page(command.clone())?)?;
    for verb in command.get_subcommands() {
        let name = format!("ailla-{}", verb.get_name());
        let page = man_page(verb.clone().name(name.clone()))?;
        checkpoint::atomic_write(&dir.join(format!("{name}.1")), &page)?;
        written.push(format!("{name}.1"));
    }
    write_out(out, &format!("wrote {} pages into {}: {}\n", written.len(), dir.display(), written.join(", ")))
}
