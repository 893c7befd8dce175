//! The exporter as a daemon: what it costs to keep sampling the same sockets with its
//! default intervals, which is what an operator pays all day, unlike a one-off snapshot.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};

use crate::proc_util;

pub const LISTEN: &str = "127.0.0.1:19199";
/// Longest wait for the daemon's first sample of the pass a benchmark measures.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Daemon start-up work (owner discovery reads every worker's descriptors once) left out
/// of its CPU figure.
pub const WARMUP: Duration = Duration::from_secs(3);

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
pub fn cpu_seconds(pid: i32) -> Result<f64> {
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

/// A numeric field of /proc/<pid>/status (`VmHWM:`, `VmRSS:`, `Threads:`), without its unit.
fn status_field(pid: i32, key: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with(key))
        .ok_or_else(|| anyhow!("no {key} in {path}"))?;
    line.trim_start_matches(key)
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .with_context(|| format!("parsing {line:?}"))
}

/// Peak resident set size of `pid` in bytes, from /proc/<pid>/status.
pub fn vm_hwm_bytes(pid: i32) -> Result<u64> {
    Ok(status_field(pid, "VmHWM:")? * 1024)
}

/// Current resident set size of `pid` in bytes.
pub fn vm_rss_bytes(pid: i32) -> Result<u64> {
    Ok(status_field(pid, "VmRSS:")? * 1024)
}

/// Threads of `pid`.
pub fn threads(pid: i32) -> Result<u64> {
    status_field(pid, "Threads:")
}

/// Open file descriptors of `pid`.
pub fn fd_count(pid: i32) -> Result<u64> {
    let path = format!("/proc/{pid}/fd");
    let dir = std::fs::read_dir(&path).with_context(|| format!("listing {path}"))?;
    Ok(dir.filter(|e| e.is_ok()).count() as u64)
}

/// One `GET /metrics` against the daemon on [`LISTEN`], timed.
pub fn scrape_once() -> Result<Scrape, String> {
    fetch_metrics().map(|(scrape, _)| scrape)
}

/// One `GET /metrics` as Prometheus asks for it (`Accept-Encoding:
/// gzip`), timed; `bytes` is the whole response as sent, compressed.
pub fn scrape_gzipped() -> Result<Scrape, String> {
    fetch(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n")
        .map(|(scrape, _)| scrape)
}

/// One `GET /metrics` against the daemon on [`LISTEN`], timed, with the body for callers
/// that read the figures in it.
pub fn fetch_metrics() -> Result<(Scrape, String), String> {
    fetch(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
}

/// Sends `request` to the daemon on [`LISTEN`] and reads the answer, timed.
fn fetch(request: &[u8]) -> Result<(Scrape, String), String> {
    let addr: SocketAddr = LISTEN.parse().map_err(|e| format!("{e}"))?;
    let start = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connecting to {LISTEN}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(120)))
        .and_then(|()| s.set_write_timeout(Some(Duration::from_secs(5))))
        .map_err(|e| format!("socket timeouts: {e}"))?;
    s.write_all(request)
        .map_err(|e| format!("sending the request: {e}"))?;
    let mut body = Vec::new();
    s.read_to_end(&mut body)
        .map_err(|e| format!("reading the response: {e}"))?;
    let status_line = String::from_utf8_lossy(body.split(|&b| b == b'\n').next().unwrap_or(&[]))
        .trim()
        .to_string();
    let seconds = start.elapsed().as_secs_f64();
    let bytes = body.len();
    let text = String::from_utf8_lossy(&body);
    let payload = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let series = payload
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .count();
    let scrape = Scrape {
        seconds,
        series,
        bytes,
        status_line,
    };
    Ok((scrape, payload.to_string()))
}

/// Starts the daemon, lets it run for `run_for`, reads its CPU time and peak RSS, scrapes it
/// once, and kills it.
pub fn run(exporter: &Path, run_for: Duration) -> DaemonOutcome {
    if let Some(why) = crate::exporter_missing(exporter) {
        return DaemonOutcome::Skipped(why);
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

/// The daemon as a child of this process, listening on [`LISTEN`]. Dropping it stops it
/// (SIGTERM, then SIGKILL after 5 s) and reaps it, on success and on every error path alike.
pub struct Running {
    pub pid: i32,
    pub started: Instant,
    errfile: std::fs::File,
    reaped: bool,
}

impl Running {
    /// Starts `exporter --web.listen-address LISTEN args...`, tied to this process's life;
    /// what it writes to stderr is kept for error messages.
    pub fn start<S: AsRef<std::ffi::OsStr>>(exporter: &Path, args: &[S]) -> Result<Running> {
        Running::spawn(exporter, LISTEN, args, false)
    }

    /// Like [`Running::start`], listening on `listen` instead of [`LISTEN`].
    pub fn start_at<S: AsRef<std::ffi::OsStr>>(
        exporter: &Path,
        listen: &str,
        args: &[S],
    ) -> Result<Running> {
        Running::spawn(exporter, listen, args, false)
    }

    /// Like [`Running::start`], the daemon's stderr going to the bench's.
    pub fn start_showing_stderr<S: AsRef<std::ffi::OsStr>>(
        exporter: &Path,
        args: &[S],
    ) -> Result<Running> {
        Running::spawn(exporter, LISTEN, args, true)
    }

    fn spawn<S: AsRef<std::ffi::OsStr>>(
        exporter: &Path,
        listen: &str,
        args: &[S],
        show_stderr: bool,
    ) -> Result<Running> {
        let errfile = proc_util::memfd(c"daemon-stderr")?;
        let stderr = if show_stderr {
            Stdio::inherit()
        } else {
            Stdio::from(errfile.try_clone().context("duplicating the stderr file")?)
        };
        let mut cmd = Command::new(exporter);
        cmd.args(["--web.listen-address", listen])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        proc_util::tie_to_this_process(&mut cmd);
        let started = Instant::now();
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", exporter.display()))?;
        let pid = i32::try_from(child.id()).context("pid out of range")?;
        drop(child);
        Ok(Running {
            pid,
            started,
            errfile,
            reaped: false,
        })
    }

    /// Fails, with the end of what the daemon wrote to stderr, once it has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if self.reaped {
            bail!("the daemon has exited");
        }
        if let Some(r) = proc_util::try_reap(self.pid).context("checking on the daemon")? {
            self.reaped = true;
            let tail = proc_util::read_tail(&mut self.errfile, 800);
            bail!(
                "the daemon exited after {:.1} s ({}){}{tail}",
                self.started.elapsed().as_secs_f64(),
                r.describe(),
                if tail.is_empty() { "" } else { ": " }
            );
        }
        Ok(())
    }

    /// The end of what the daemon wrote to stderr so far, for error messages.
    pub fn stderr_tail(&mut self, max: usize) -> String {
        proc_util::read_tail(&mut self.errfile, max)
    }

    /// Scrapes /metrics every `every` until `missing` finds nothing missing from what it
    /// got (a page, or why there is none), for at most `timeout` from the daemon's start;
    /// then what was still missing.
    pub fn wait_ready(
        &mut self,
        every: Duration,
        timeout: Duration,
        mut missing: impl FnMut(Result<(Scrape, String), String>) -> Option<String>,
    ) -> Result<Option<String>> {
        loop {
            std::thread::sleep(every);
            self.check_alive()?;
            let why = match missing(fetch_metrics()) {
                None => return Ok(None),
                Some(why) => why,
            };
            if self.started.elapsed() > timeout {
                return Ok(Some(why));
            }
        }
    }

    /// [`Running::wait_ready`], failing with the daemon's stderr when it is not ready in
    /// time.
    pub fn ready_or_fail(
        &mut self,
        every: Duration,
        timeout: Duration,
        missing: impl FnMut(Result<(Scrape, String), String>) -> Option<String>,
    ) -> Result<()> {
        let Some(why) = self.wait_ready(every, timeout, missing)? else {
            return Ok(());
        };
        let tail = self.stderr_tail(600);
        bail!(
            "the daemon was not ready within {} s: {why}; its stderr: {tail}",
            timeout.as_secs()
        );
    }

    /// Scrapes /metrics every `every` for `length`, handing each page (which must be
    /// answered 200) to `each`; the daemon's CPU time over that window and its peak RSS.
    pub fn sample_window(
        &mut self,
        length: Duration,
        every: Duration,
        each: impl FnMut(&Scrape, &str),
    ) -> Result<Window> {
        self.sample_window_spread(length, every, || 0.0, each)
    }

    /// [`Running::sample_window`] with one scrape in each slot of `every`, at the fraction
    /// `offset()` (in [0, 1)) of it: random offsets keep the scrapes from locking in phase
    /// with the daemon's own ticks. The window still lasts `length`; a last slot cut short
    /// by its end has its scrape at that fraction of what is left of it.
    pub fn sample_window_spread(
        &mut self,
        length: Duration,
        every: Duration,
        mut offset: impl FnMut() -> f64,
        mut each: impl FnMut(&Scrape, &str),
    ) -> Result<Window> {
        let cpu0 = cpu_seconds(self.pid)?;
        let start = Instant::now();
        let end = start + length;
        let mut scrapes = 0;
        let mut slot = start;
        while slot < end {
            let room = every.min(end.saturating_duration_since(slot));
            let at = slot + room.mul_f64(offset().clamp(0.0, 1.0));
            std::thread::sleep(at.saturating_duration_since(Instant::now()));
            self.check_alive()?;
            let (scrape, body) = fetch_metrics()
                .map_err(anyhow::Error::msg)
                .context("scraping the daemon")?;
            if !scrape.status_line.contains(" 200") {
                bail!("the daemon answered {}", scrape.status_line);
            }
            each(&scrape, &body);
            scrapes += 1;
            slot += every;
        }
        std::thread::sleep(end.saturating_duration_since(Instant::now()));
        let cpu1 = cpu_seconds(self.pid)?;
        Ok(Window {
            seconds: start.elapsed().as_secs_f64(),
            cpu_seconds: cpu1 - cpu0,
            vm_hwm_bytes: vm_hwm_bytes(self.pid)?,
            scrapes,
        })
    }
}

/// What the daemon cost over a window in which it was scraped at a fixed period.
#[derive(Clone, Copy, Debug, Default)]
pub struct Window {
    pub seconds: f64,
    pub cpu_seconds: f64,
    /// Peak RSS at the end of the window.
    pub vm_hwm_bytes: u64,
    pub scrapes: usize,
}

impl Window {
    pub fn cpu_fraction(&self) -> f64 {
        self.cpu_seconds / self.seconds.max(f64::MIN_POSITIVE)
    }
}

/// One daemon run of a benchmark that measures one collector's pass.
pub struct Sampled {
    pub label: String,
    pub args: Vec<String>,
    pub window: Window,
    /// What went unexpected: no sample of the pass in time.
    pub note: Option<String>,
}

impl Sampled {
    /// `| `label` | CPU fraction (percent) |`: how a benchmark's daemon table starts a row.
    pub fn row_start(&self) -> String {
        let f = self.window.cpu_fraction();
        format!("| `{}` | {f:.3} ({:.1}%) |", self.label, 100.0 * f)
    }

    /// The line under a daemon table about this run's note, if it has one.
    pub fn note_line(&self) -> Option<String> {
        let n = self.note.as_ref()?;
        Some(format!("\nNote (`{}`): {n}.\n", self.label))
    }

    /// What every benchmark's JSON says of a daemon run; `more` adds its own figures.
    pub fn json(&self, more: Value) -> Value {
        crate::report::merge(
            json!({
                "label": self.label,
                "args": self.args,
                "window_seconds": self.window.seconds,
                "cpu_seconds": self.window.cpu_seconds,
                "cpu_fraction_of_one_core": self.window.cpu_fraction(),
                "peak_rss_bytes": self.window.vm_hwm_bytes,
                "note": self.note,
            }),
            more,
        )
    }
}

/// The daemon at default intervals (plus `extra`, logging warnings only) for `seconds`
/// after a warm-up: waits until `has_pass` sees the `pass` collector's work in a page (or
/// notes that it never did), then hands every scrape, once a second, to `each`.
pub fn sample(
    exporter: &Path,
    label: &str,
    extra: &[&str],
    seconds: u64,
    pass: &str,
    has_pass: impl Fn(&str) -> bool,
    mut each: impl FnMut(&str),
) -> Result<Sampled> {
    let mut args = vec!["--log.level".to_string(), "warn".to_string()];
    args.extend(extra.iter().map(|s| s.to_string()));
    eprintln!("sockdiag-bench: daemon ({label}) for {seconds} s");
    let mut d = Running::start(exporter, &args)?;
    let late = d.wait_ready(
        Duration::from_millis(250),
        READY_TIMEOUT,
        |page| match page {
            Ok((s, body))
                if s.status_line.contains(" 200")
                    && body.contains("sockdiag_collector_duration_seconds")
                    && has_pass(&body) =>
            {
                None
            }
            _ => Some(String::new()),
        },
    )?;
    let note = late.map(|_| format!("no {pass} sample within {} s", READY_TIMEOUT.as_secs()));
    std::thread::sleep(WARMUP);
    let window = d.sample_window(
        Duration::from_secs(seconds),
        Duration::from_secs(1),
        |_, body| each(body),
    )?;
    drop(d);
    Ok(Sampled {
        label: label.to_string(),
        args,
        window,
        note,
    })
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.reaped {
            return;
        }
        proc_util::kill(self.pid, libc::SIGTERM);
        match proc_util::wait_with_timeout(self.pid, Duration::from_secs(5)) {
            Ok(Some(_)) => {}
            _ => proc_util::kill_and_reap(self.pid),
        }
    }
}

fn run_inner(exporter: &Path, run_for: Duration) -> Result<DaemonStats> {
    let no_args: [&str; 0] = [];
    let mut daemon = Running::start(exporter, &no_args)?;
    let deadline = daemon.started + run_for;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200).min(deadline - Instant::now()));
        daemon.check_alive()?;
    }
    let cpu = cpu_seconds(daemon.pid)?;
    let seconds = daemon.started.elapsed().as_secs_f64();
    let hwm = vm_hwm_bytes(daemon.pid)?;
    let scrape = scrape_once();
    let hwm_after = vm_hwm_bytes(daemon.pid).ok();
    drop(daemon);
    Ok(DaemonStats {
        seconds,
        cpu_seconds: cpu,
        vm_hwm_bytes: hwm,
        scrape,
        vm_hwm_after_scrape_bytes: hwm_after,
    })
}
