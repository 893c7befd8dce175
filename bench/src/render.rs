//! `render`: how long one `/metrics` scrape takes when the exporter holds
//! many series. Inside a private namespace it opens L listeners with one
//! queued connection each (about 11 series per listener once per-port
//! figures are counted), runs the real daemon, and times R scrapes.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::daemon::{self, scrape_gzipped, scrape_once};
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

/// In this (new) namespace, with loopback brought up: `n` listeners on
/// 127.0.0.1 from `first_port`, never accepting, each with one client
/// connection waiting in its queue. The sockets live as long as the result.
pub fn queued_listeners(first_port: u16, n: u16) -> Result<Vec<OwnedFd>> {
    namespace::bring_loopback_up()?;
    namespace::raise_nofile_limit()?;
    let mut keep = Vec::with_capacity(2 * usize::from(n));
    for i in 0..n {
        let port = first_port + i;
        keep.push(
            proc_util::loopback_listener(port, 8, false)
                .with_context(|| format!("listening on 127.0.0.1:{port}"))?,
        );
        keep.push(worker::connect_client(u64::from(i), port)?);
    }
    Ok(keep)
}

/// The coordinator inside the namespace.
pub fn internal_main(opts: &RenderOpts, exporter: &Path) -> Result<ExitCode> {
    let keep = queued_listeners(FIRST_PORT, opts.listeners)?;
    let mut daemon = daemon::Running::start_showing_stderr(
        exporter,
        &[
            "--collector.connections.interval",
            "1s",
            "--log.level",
            "warn",
        ],
    )?;
    let result = measure_scrapes(opts, &mut daemon);
    drop(daemon);
    drop(keep);
    result
}

fn measure_scrapes(opts: &RenderOpts, daemon: &mut daemon::Running) -> Result<ExitCode> {
    let expected = usize::from(opts.listeners) * 10;
    let mut series = 0;
    daemon.ready_or_fail(
        Duration::from_millis(500),
        Duration::from_secs(15),
        |page| match page {
            Ok((s, _)) if s.series > expected => {
                series = s.series;
                None
            }
            Ok((s, _)) => Some(format!("{} series, not yet over {expected}", s.series)),
            Err(e) => Some(e),
        },
    )?;
    // Two connection samples, so every figure is present.
    std::thread::sleep(Duration::from_millis(2500));
    // Plain and gzipped scrapes alternate, so both see the same machine.
    let (mut plain, mut zipped) = (Vec::new(), Vec::new());
    let (mut plain_bytes, mut zipped_bytes) = (0, 0);
    for _ in 0..opts.scrapes {
        for (gzip, times, bytes) in [
            (false, &mut plain, &mut plain_bytes),
            (true, &mut zipped, &mut zipped_bytes),
        ] {
            let s = if gzip {
                scrape_gzipped()
            } else {
                scrape_once()
            }
            .map_err(anyhow::Error::msg)?;
            if !s.status_line.contains("200") {
                bail!("scrape answered {}", s.status_line);
            }
            *bytes = s.bytes;
            times.push(s.seconds);
        }
    }
    println!("## sockdiag-bench render: {} listeners\n", opts.listeners);
    println!("| scrape | series | bytes sent | scrapes | median scrape | slowest scrape |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (label, times, bytes) in [
        ("plain", plain, plain_bytes),
        ("`Accept-Encoding: gzip`", zipped, zipped_bytes),
    ] {
        let median = measure::median(times.clone()).unwrap_or(f64::NAN);
        let slowest = times.iter().copied().fold(0.0, f64::max);
        println!(
            "| {label} | {series} | {bytes} | {} | {:.1} ms | {:.1} ms |",
            opts.scrapes,
            median * 1000.0,
            slowest * 1000.0
        );
    }
    Ok(ExitCode::SUCCESS)
}
