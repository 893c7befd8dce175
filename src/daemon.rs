//! The binary's edge: turns parsed flags into a running daemon or one
//! snapshot, with errors that name what failed.

use std::io;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};

use crate::cli::{Cli, Command, Format, resolve_listen_address};
use crate::collect::Collector;
use crate::metrics::Exposition;
use crate::sampler::{Sampler, run_once};
use crate::server::{ServerConfig, serve};
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

/// Binds the first address that works; a port in use is an error at once
/// (trying the IPv4 wildcard after the IPv6 one is for hosts without IPv6,
/// not for dodging a conflict).
fn bind(text: &str) -> Result<std::net::TcpListener> {
    let candidates =
        resolve_listen_address(text).map_err(|e| anyhow::anyhow!("--web.listen-address {e}"))?;
    let mut last: Option<(SocketAddr, io::Error)> = None;
    for addr in candidates {
        match bind_one(addr) {
            Ok(l) => return Ok(l),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                bail!(
                    "cannot listen on {addr} (--web.listen-address {text}): {e}; is another exporter running?"
                )
            }
            Err(e) => last = Some((addr, e)),
        }
    }
    match last {
        Some((addr, e)) => bail!("cannot listen on {addr} (--web.listen-address {text}): {e}"),
        None => bail!("--web.listen-address {text}: no address to listen on"),
    }
}

/// A non-blocking listening socket on `addr`. The IPv6 wildcard is made
/// dual-stack explicitly, so `:PORT` also takes IPv4 scrapes on hosts where
/// `net.ipv6.bindv6only` is 1.
fn bind_one(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    if let SocketAddr::V6(v6) = addr {
        if v6.ip().is_unspecified() {
            socket.set_only_v6(false)?;
        }
    }
    // Lets a restarted daemon bind while its old connections linger in
    // TIME-WAIT; it does not allow two live listeners on one port.
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(128)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

fn daemon(cli: &Cli) -> Result<ExitCode> {
    let config = cli.collectors.sampler_config();
    let collectors: Arc<[Arc<dyn Collector>]> = cli.collectors.build(false).into();
    if collectors.is_empty() {
        bail!("every collector is disabled: nothing to export");
    }
    let listener = bind(&cli.listen_address)?;
    let local = listener
        .local_addr()
        .context("reading the HTTP socket's address")?;

    let enabled = cli.collectors.health_names(&collectors);
    let store = Arc::new(Store::new(&enabled));
    let exposition = Arc::new(
        Exposition::new(store.clone(), collectors.clone()).context("registering metrics")?,
    );
    let sampler =
        Sampler::start(&config, &collectors, store.clone()).context("starting sampler threads")?;
    tracing::info!(
        address = %local,
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
        request_timeout: cli.request_timeout,
        shutdown_timeout: cli.shutdown_timeout,
    };
    runtime.block_on(async {
        let listener =
            tokio::net::TcpListener::from_std(listener).context("registering the HTTP socket")?;
        let signal = shutdown_signal().context("installing signal handlers")?;
        serve(listener, exposition, store, server_config, signal).await;
        anyhow::Ok(())
    })?;
    sampler.stop(cli.shutdown_timeout);
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
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
