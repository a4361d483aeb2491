use clap::Parser;

fn main() {
    let cli = ailla::cli::Cli::parse();
    let mut stdout = std::io::stdout().lock();
    if let Err(error) = ailla::cli::run(cli, &mut stdout) {
        // `ailla … | head` closing the pipe early is not a failure
        if let ailla::Error::Io { source, .. } = &error {
            if source.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
        }
        ailla::eprintln_lossy!("error: {error}");
        std::process::exit(error.exit_code());
    }
}
