use clap::Parser;

fn main() {
    // SAFETY: the first statement of main, before any thread or BLAS call exists.
    unsafe { ailla::engine::environment::select_blas_kernel() };
    let cli = ailla::cli::Cli::parse();
    let mut stdout = std::io::stdout().lock();
    if let Err(error) = ailla::cli::run(cli, &mut stdout) {
        // `ailla … | head` closing the pipe early is not a failure
        if let ailla::Error::Io { source, .. } = &error {
            if source.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
        }
        // a verification within tolerance is an outcome with its own exit status, not a failure
        let label = if matches!(error, ailla::Error::WithinTolerance(_)) { "note" } else { "error" };
        ailla::eprintln_lossy!("{label}: {error}");
        std::process::exit(error.exit_code());
    }
}
