//! The binary's edge: turns parsed flags into a running daemon or one
//! snapshot, with errors that name what failed.

use std::io;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};

use crate::cli::{Cli, Command, Format};
use crate::collect::Collector;
use crate::metrics::Exposition;
use crate::sampler::{Sampler, run_once};
use crate::server::{ServerConfig, listen, serve};
use crate::store::Store;

/// Runs what the command line asks for.
pub fn run(cli: Cli) -> Result<ExitCode> {
    let logs = tracing_subscriber::fmt()
        .with_max_level(cli.log_level.tracing())
        .with_ansi(false)
        .with_target(false);
    match &cli.command {
        // The live view owns the terminal; a log line would tear it. Its
        // header shows failing collectors instead.
        Some(Command::Top(args)) if crate::top::is_live(args) => {
            logs.with_writer(io::sink).init();
        }
        _ => logs.with_writer(io::stderr).init(),
    }
    match &cli.command {
        Some(Command::Snapshot { format }) => snapshot(&cli, *format),
        Some(Command::Top(args)) => crate::top::run(args, &cli.collectors),
        None => daemon(&cli),
    }
}

fn snapshot(cli: &Cli, format: Format) -> Result<ExitCode> {
    let config = cli.collectors.sampler_config();
    let collectors = cli.collectors.build(true);
    let store = Store::new(&cli.collectors.health_names(&collectors));
    run_once(&config, &collectors, &store);
    let snapshot = store.snapshot();
    let text = match format {
        Format::Table => crate::report::table(&snapshot, &collectors),
        Format::Json => crate::report::json(&snapshot, &collectors),
    };
    print_ignoring_broken_pipe(&text)?;
    for (collector, e) in crate::report::problems(&snapshot) {
        eprintln!("sockdiag-exporter: snapshot: {collector}: {e}");
    }
    // Without the kernel's answer there is nothing to show; a missing procfs
    // file only blanks its own figures, and a namespace that may not be
    // entered is a lack of privilege, told but not a failure.
    Ok(if crate::report::failed(&snapshot) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn print_ignoring_broken_pipe(text: &str) -> Result<()> {
    use std::io::Write;
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing to standard output"),
    }
}

fn daemon(cli: &Cli) -> Result<ExitCode> {
    // First: taking systemd's sockets edits the environment, which is only
    // sound while this is the process's one thread.
    let listeners = if cli.systemd_socket {
        // SAFETY: no thread has been started yet (the sampler and the
        // runtime start below), and nothing else uses descriptors 3 and up.
        unsafe { listen::systemd_listeners() }?
    } else {
        listen::bind_all(&cli.listen_address)?
    };
    // A bad web config must stop the daemon before it serves anything in
    // clear that was meant to be behind TLS or a password.
    let web = cli
        .web_config_file
        .as_deref()
        .map(crate::web::WebConfig::load)
        .transpose()?
        .map(Arc::new);
    let config = cli.collectors.sampler_config();
    let collectors: Arc<[Arc<dyn Collector>]> = cli.collectors.build(false).into();
    if collectors.is_empty() {
        bail!("every collector is disabled: nothing to export");
    }
    let open_files = raise_open_files_limit();
    // Every connection holds a descriptor, and eviction only happens after
    // accept(): past the limit, accept() fails with EMFILE and nobody,
    // scrapers included, gets in.
    let wanted = u64::from(cli.max_connections) + 64;
    if open_files.is_some_and(|n| n < wanted) {
        tracing::warn!(
            limit = open_files,
            max_connections = cli.max_connections,
            "the open files limit (RLIMIT_NOFILE) is too low for --web.max-connections; \
             lower it, or raise LimitNOFILE="
        );
    }
    let addresses = listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.to_string()))
        .collect::<io::Result<Vec<_>>>()
        .context("reading the HTTP sockets' addresses")?;

    let enabled = cli.collectors.health_names(&collectors);
    let store = Arc::new(Store::new(&enabled));
    if let Some(web) = &web {
        store.set_web_config(web.clone());
    }
    let exposition = Arc::new(
        Exposition::new(store.clone(), collectors.clone()).context("registering metrics")?,
    );
    let sampler =
        Sampler::start(&config, &collectors, store.clone()).context("starting sampler threads")?;
    tracing::info!(
        addresses = ?addresses,
        systemd_socket = cli.systemd_socket,
        web_config = ?web.as_ref().map(|w| w.path().display().to_string()),
        tls = web.as_ref().is_some_and(|w| w.tls()),
        path = %cli.telemetry_path,
        collectors = ?enabled,
        listener_interval = ?config.fast_interval,
        connection_interval = ?config.full_interval,
        namespaces = store.targets().targets.list.len(),
        "sockdiag-exporter {} listening", env!("CARGO_PKG_VERSION")
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(4)
        // Scrapes render on these threads; their default 2 MiB stacks
        // would be most of an address-space cap (see `memory`).
        .thread_stack_size(crate::memory::RENDER_STACK_BYTES)
        .build()
        .context("starting the async runtime")?;
    let server_config = ServerConfig {
        telemetry_path: cli.telemetry_path.clone(),
        max_requests: cli.max_requests as usize,
        max_connections: cli.max_connections as usize,
        read_header_timeout: cli.read_header_timeout,
        request_timeout: cli.request_timeout,
        shutdown_timeout: cli.shutdown_timeout,
        web: web.clone(),
    };
    runtime.block_on(async {
        let listeners = listeners
            .into_iter()
            .map(tokio::net::TcpListener::from_std)
            .collect::<io::Result<Vec<_>>>()
            .context("registering the HTTP sockets")?;
        let signal = shutdown_signal().context("installing signal handlers")?;
        serve(listeners, exposition, store, server_config, signal).await;
        anyhow::Ok(())
    })?;
    sampler.stop(cli.shutdown_timeout);
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// Raises the soft limit on open files to the hard one, and returns the
/// limit now in force (`None` if it cannot be read). Every open HTTP
/// connection holds a descriptor, and `--web.max-connections` goes up to
/// 65536, while the usual soft limit is 1024. The hard limit is what the
/// administrator allows; the soft one is a default kept low for programs
/// that use select(), which this one does not (Go raises it the same way
/// at start).
fn raise_open_files_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    let soft = limit.rlim_cur;
    if soft >= limit.rlim_max {
        return Some(soft);
    }
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: setrlimit only reads the struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        tracing::debug!(error = %io::Error::last_os_error(), soft, "could not raise the open files limit");
        return Some(soft);
    }
    tracing::debug!(
        from = soft,
        to = limit.rlim_max,
        "raised the open files limit"
    );
    Some(limit.rlim_max)
}

/// Completes on the first SIGTERM or SIGINT.
fn shutdown_signal() -> io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "shutting down");
    })
}
