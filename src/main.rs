//! `sockdiag-exporter`: parse flags, run, report errors once with context.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = sockdiag_exporter::cli::Cli::parse();
    match sockdiag_exporter::daemon::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sockdiag-exporter: {e:#}");
            ExitCode::FAILURE
        }
    }
}
