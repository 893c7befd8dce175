//! `sockdiag-exporter`: parse flags, run, report errors once with context.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // First, before any thread exists: see `memory` for why.
    if !sockdiag_exporter::memory::limit_malloc_arenas() {
        eprintln!(
            "sockdiag-exporter: warning: glibc refused M_ARENA_MAX; \
             each thread may reserve 64 MiB of address space"
        );
    }
    let cli = sockdiag_exporter::cli::Cli::parse();
    match sockdiag_exporter::daemon::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sockdiag-exporter: {e:#}");
            ExitCode::FAILURE
        }
    }
}
