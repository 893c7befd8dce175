//! The exporter as a daemon: what it costs to keep sampling the same sockets with its
//! default intervals, which is what an operator pays all day, unlike a one-off snapshot.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use crate::proc_util;

pub const LISTEN: &str = "127.0.0.1:19199";

pub struct Scrape {
    pub seconds: f64,
    pub bytes: usize,
    pub status_line: String,
    /// Sample lines (not comments) in the body.
    pub series: usize,
}

pub struct DaemonStats {
    pub seconds: f64,
    pub cpu_seconds: f64,
    pub vm_hwm_bytes: u64,
    /// One GET /metrics after the CPU reading, and the peak RSS once it was served.
    pub scrape: Result<Scrape, String>,
    pub vm_hwm_after_scrape_bytes: Option<u64>,
}

impl DaemonStats {
    pub fn cpu_percent(&self) -> f64 {
        if self.seconds > 0.0 {
            100.0 * self.cpu_seconds / self.seconds
        } else {
            0.0
        }
    }
}

pub enum DaemonOutcome {
    Measured(DaemonStats),
    Failed(String),
    Skipped(String),
}

/// utime + stime of `pid` in seconds, from /proc/<pid>/stat.
fn cpu_seconds(pid: i32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name may hold spaces and parentheses; fields are counted after its last ')'.
    let rest = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .ok_or_else(|| anyhow!("unexpected format of {path}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field 3 (state) is fields[0], so utime (14) and stime (15) are fields[11] and [12].
    let tick = |i: usize| -> Result<f64> {
        let v: u64 = fields
            .get(i)
            .ok_or_else(|| anyhow!("{path} is too short"))?
            .parse()
            .with_context(|| format!("field {} of {path}", i + 3))?;
        Ok(v as f64)
    };
    // SAFETY: sysconf takes and returns plain integers.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz <= 0 {
        bail!("sysconf(_SC_CLK_TCK) failed");
    }
    Ok((tick(11)? + tick(12)?) / hz as f64)
}

fn vm_hwm_bytes(pid: i32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .ok_or_else(|| anyhow!("no VmHWM in {path}"))?;
    let kib: u64 = line
        .trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .with_context(|| format!("parsing {line:?}"))?;
    Ok(kib * 1024)
}

/// One `GET /metrics` against the daemon on [`LISTEN`], timed.
pub fn scrape_once() -> Result<Scrape, String> {
    let addr: SocketAddr = LISTEN.parse().map_err(|e| format!("{e}"))?;
    let start = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connecting to {LISTEN}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(120)))
        .and_then(|()| s.set_write_timeout(Some(Duration::from_secs(5))))
        .map_err(|e| format!("socket timeouts: {e}"))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("sending the request: {e}"))?;
    let mut body = Vec::new();
    s.read_to_end(&mut body)
        .map_err(|e| format!("reading the response: {e}"))?;
    let status_line = String::from_utf8_lossy(body.split(|&b| b == b'\n').next().unwrap_or(&[]))
        .trim()
        .to_string();
    let seconds = start.elapsed().as_secs_f64();
    let series = String::from_utf8_lossy(&body)
        .split("\r\n\r\n")
        .nth(1)
        .map_or(0, |b| {
            b.lines()
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .count()
        });
    Ok(Scrape {
        seconds,
        series,
        bytes: body.len(),
        status_line,
    })
}

/// Starts the daemon, lets it run for `run_for`, reads its CPU time and peak RSS, scrapes it
/// once, and kills it.
pub fn run(exporter: &Path, run_for: Duration) -> DaemonOutcome {
    if !exporter.is_file() {
        return DaemonOutcome::Skipped(format!(
            "{} not found: build it with `cargo build --release`",
            exporter.display()
        ));
    }
    eprintln!(
        "sockdiag-bench: running the exporter daemon on {LISTEN} for {} s",
        run_for.as_secs()
    );
    match run_inner(exporter, run_for) {
        Ok(stats) => DaemonOutcome::Measured(stats),
        Err(e) => DaemonOutcome::Failed(format!("{e:#}")),
    }
}

fn run_inner(exporter: &Path, run_for: Duration) -> Result<DaemonStats> {
    let mut errfile = proc_util::memfd(c"daemon-stderr")?;
    let errdup = errfile.try_clone().context("duplicating the stderr file")?;
    let mut cmd = Command::new(exporter);
    cmd.args(["--web.listen-address", LISTEN])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(errdup));
    proc_util::tie_to_this_process(&mut cmd);
    let start = Instant::now();
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {}", exporter.display()))?;
    let pid = i32::try_from(child.id()).context("pid out of range")?;
    drop(child);
    // Whatever happens below, the daemon does not outlive this function.
    struct KillOnDrop(i32);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            proc_util::kill(self.0, libc::SIGTERM);
            match proc_util::wait_with_timeout(self.0, Duration::from_secs(5)) {
                Ok(Some(_)) => {}
                _ => proc_util::kill_and_reap(self.0),
            }
        }
    }
    let guard = KillOnDrop(pid);

    let deadline = start + run_for;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200).min(deadline - Instant::now()));
        if let Some(r) = proc_util::try_reap(pid).context("checking on the daemon")? {
            std::mem::forget(guard);
            let tail = proc_util::read_tail(&mut errfile, 800);
            bail!(
                "the daemon exited after {:.1} s ({}){}{tail}",
                start.elapsed().as_secs_f64(),
                r.describe(),
                if tail.is_empty() { "" } else { ": " }
            );
        }
    }
    let cpu = cpu_seconds(pid)?;
    let seconds = start.elapsed().as_secs_f64();
    let hwm = vm_hwm_bytes(pid)?;
    let scrape = scrape_once();
    let hwm_after = vm_hwm_bytes(pid).ok();
    drop(guard);
    Ok(DaemonStats {
        seconds,
        cpu_seconds: cpu,
        vm_hwm_bytes: hwm,
        scrape,
        vm_hwm_after_scrape_bytes: hwm_after,
    })
}
