//! `render`: how long one `/metrics` scrape takes when the exporter holds
//! many series. Inside a private namespace it opens L listeners with one
//! queued connection each (about 11 series per listener once per-port
//! figures are counted), runs the real daemon, and times R scrapes.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::daemon::{LISTEN, scrape_once};
use crate::{measure, namespace, proc_util, worker};

/// First port of the render benchmark's listeners.
const FIRST_PORT: u16 = 30000;

/// Options of `render`.
#[derive(Args, Debug, Clone)]
pub struct RenderOpts {
    /// Listeners to open, each with one connection waiting in its queue.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u16).range(1..=8000))]
    pub listeners: u16,

    /// Scrapes to time; the report gives the median and the slowest.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub scrapes: u32,
}

fn listener(port: u16) -> Result<OwnedFd> {
    let fd = proc_util::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0)
        .context("listener socket")?;
    let addr = proc_util::sockaddr_v4(u32::from(std::net::Ipv4Addr::LOCALHOST), port);
    // SAFETY: a valid fd and a sockaddr_in of the size given.
    let rc = unsafe {
        libc::bind(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        bail!("bind 127.0.0.1:{port}: {}", std::io::Error::last_os_error());
    }
    // SAFETY: a valid, bound fd.
    if unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&fd), 8) } != 0 {
        bail!("listen on {port}: {}", std::io::Error::last_os_error());
    }
    Ok(fd)
}

/// The coordinator inside the namespace.
pub fn internal_main(opts: &RenderOpts, exporter: &Path) -> Result<ExitCode> {
    namespace::bring_loopback_up()?;
    namespace::raise_nofile_limit()?;
    let mut keep = Vec::with_capacity(2 * usize::from(opts.listeners));
    for i in 0..opts.listeners {
        let port = FIRST_PORT + i;
        keep.push(listener(port)?);
        keep.push(worker::connect_client(u64::from(i), port)?);
    }
    let mut cmd = Command::new(exporter);
    cmd.args([
        "--web.listen-address",
        LISTEN,
        "--collector.connections.interval",
        "1s",
        "--log.level",
        "warn",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::null());
    proc_util::tie_to_this_process(&mut cmd);
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {}", exporter.display()))?;
    let pid = i32::try_from(child.id()).context("pid out of range")?;
    drop(child);
    let result = measure_scrapes(opts);
    proc_util::kill_and_reap(pid);
    drop(keep);
    result
}

fn measure_scrapes(opts: &RenderOpts) -> Result<ExitCode> {
    // Two connection samples, so every figure is present.
    let ready = Instant::now() + Duration::from_secs(15);
    let series = loop {
        std::thread::sleep(Duration::from_millis(500));
        if let Ok(s) = scrape_once() {
            let n = s.series;
            if n > usize::from(opts.listeners) * 10 {
                std::thread::sleep(Duration::from_millis(2500));
                break n;
            }
        }
        if Instant::now() > ready {
            bail!("the daemon did not export the expected series within 15 s");
        }
    };
    let mut times = Vec::new();
    let mut bytes = 0;
    for _ in 0..opts.scrapes {
        let s = scrape_once().map_err(anyhow::Error::msg)?;
        if !s.status_line.contains("200") {
            bail!("scrape answered {}", s.status_line);
        }
        bytes = s.bytes;
        times.push(s.seconds);
    }
    let median = measure::median(times.clone()).unwrap_or(f64::NAN);
    let slowest = times.iter().copied().fold(0.0, f64::max);
    println!("## sockdiag-bench render: {} listeners\n", opts.listeners);
    println!("| series | bytes | scrapes | median scrape | slowest scrape |");
    println!("|---:|---:|---:|---:|---:|");
    println!(
        "| {series} | {bytes} | {} | {:.1} ms | {:.1} ms |",
        opts.scrapes,
        median * 1000.0,
        slowest * 1000.0
    );
    Ok(ExitCode::SUCCESS)
}
