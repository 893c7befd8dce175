//! `churn`: robustness of the daemon under churn, bounded in time.
//!
//! Two scenarios, each inside the bench's private user + network namespace:
//!
//! - TCP churn (default): the daemon on fast intervals while a load process connects to a
//!   listener that accepts and resets each connection (SO_LINGER 0), as fast as it can up
//!   to `--rate`, and opens and closes a second listener every 100 ms (backlog 1, two
//!   clients queued and a third dropped while it lives, so its figures move);
//! - namespace churn (`--namespaces K`): K network namespaces, each held by one process
//!   with a listener, created and deleted over the run (half of them also named by a bind
//!   mount in a test-owned `--path.run-netns`) while the daemon rescans every second.
//!
//! Meanwhile /metrics is scraped every 500 ms and checked: no counter decreases for the
//! same label set, no negative value; and the daemon's RSS, threads and descriptors are
//! read from /proc. The result is a verdict table; the exit status is 2 if a check failed.

use std::collections::{HashMap, HashSet};
use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::{Value, json};

use crate::daemon::{self, LISTEN};
use crate::helper::{self, Helper};
use crate::netns_bench::{label, parse_sample};
use crate::report::mib;
use crate::{BenchOpts, namespace, proc_util, report, worker};

const SCRAPE_EVERY: Duration = Duration::from_millis(500);
const LOAD_PORT: u16 = 21000;
const TOGGLE_PORT: u16 = 21001;
/// The toggled listener is opened once per period of 80-120 ms (100 on average), at a random
/// point of it, for 30-70 ms. The jitter matters: the daemon samples on a drift-free 50 ms
/// grid and the scrapes run on a drift-free 500 ms one; a toggler on a fixed 100 ms grid
/// locks in phase with them, so every sample can fall at the same point of its cycle
/// (measured: the listener showed in 0 of 20 scrapes, and in 33% with only the opening
/// time jittered).
const TOGGLE_PERIOD_MIN_MS: u64 = 80;
const TOGGLE_PERIOD_SPREAD_MS: u64 = 41;
const TOGGLE_OPEN_MIN_MS: u64 = 30;
const TOGGLE_OPEN_MAX_MS: u64 = 70;
const LOAD_BACKLOG: i32 = 4096;
/// A connect that has not completed in this long met a full queue (its SYN was dropped).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const DAEMON_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait after the churn for the daemon to forget every deleted namespace.
const FORGET_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for threads and descriptors to come back to their baseline.
const RETURN_TIMEOUT: Duration = Duration::from_secs(10);
/// Examples kept per kind of violation.
const EXAMPLES: usize = 5;
/// RSS at the end above this multiple of the start is flagged.
const RSS_GROWTH_WARN: f64 = 1.5;

/// Options of `churn`.
#[derive(Args, Debug, Clone)]
pub struct ChurnOpts {
    /// How long the churn lasts (the run takes a few seconds more to start and settle).
    #[arg(long, default_value_t = 60, value_name = "S",
          value_parser = clap::value_parser!(u64).range(5..=3600))]
    pub seconds: u64,

    /// Churn network namespaces instead of TCP connections: create and delete K of them,
    /// each held by a process with a listener.
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u32).range(1..=2000))]
    pub namespaces: Option<u32>,

    /// The daemon's --collector.listeners.interval.
    #[arg(long, default_value = "50ms", value_name = "DURATION")]
    pub listeners_interval: String,

    /// The daemon's --collector.connections.interval.
    #[arg(long, default_value = "1s", value_name = "DURATION")]
    pub connections_interval: String,

    /// The daemon's --collector.netns.rescan-interval (namespace churn).
    #[arg(long, default_value = "1s", value_name = "DURATION")]
    pub rescan_interval: String,

    /// Most TCP connects (each reset at once) per second the load makes; it reports what it
    /// achieved.
    #[arg(long, default_value_t = 48_000, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub rate: u64,

    /// Threads of the load process that connect.
    #[arg(long, default_value_t = 2, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=64))]
    pub load_threads: u32,

    /// Also write the results as JSON to this file.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,

    /// The test-owned --path.run-netns (made and removed by the outer process).
    #[arg(long, hide = true)]
    pub run_netns_dir: Option<PathBuf>,
}

impl ChurnOpts {
    fn to_args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec![
            "--seconds".into(),
            self.seconds.to_string().into(),
            "--listeners-interval".into(),
            self.listeners_interval.clone().into(),
            "--connections-interval".into(),
            self.connections_interval.clone().into(),
            "--rescan-interval".into(),
            self.rescan_interval.clone().into(),
            "--rate".into(),
            self.rate.to_string().into(),
            "--load-threads".into(),
            self.load_threads.to_string().into(),
        ];
        if let Some(k) = self.namespaces {
            a.extend(["--namespaces".into(), k.to_string().into()]);
        }
        crate::push_flag(&mut a, "--json", self.json.as_deref());
        crate::push_flag(&mut a, "--run-netns-dir", self.run_netns_dir.as_deref());
        a
    }
}

/// Arguments of the hidden `internal-churn-load`.
#[derive(Args, Debug)]
pub struct LoadArgs {
    #[arg(long)]
    seconds: f64,
    #[arg(long)]
    rate: u64,
    #[arg(long)]
    threads: u32,
    /// The coordinator's pid: the load dies with it.
    #[arg(long)]
    parent: i32,
}

// ---------------------------------------------------------------------------------------
// Checking what the daemon serves.

/// Everything the scrapes showed that a check is made of.
#[derive(Default)]
pub struct Checker {
    /// Family name -> type, from `# TYPE` lines.
    types: HashMap<String, String>,
    /// Counter series -> (last value, index of the scrape that showed it).
    last: HashMap<String, (f64, u64)>,
    pub scrapes: u64,
    pub failed_scrapes: u64,
    failed_examples: Vec<String>,
    pub slowest_scrape: f64,
    pub samples: u64,
    pub counter_samples: u64,
    counter_series: HashSet<String>,
    pub decreases: u64,
    decrease_examples: Vec<String>,
    pub lower_after_absence: u64,
    absence_examples: Vec<String>,
    pub negatives: u64,
    negative_examples: Vec<String>,
    pub non_finite: u64,
    non_finite_examples: Vec<String>,
    pub unparsed: u64,
    unparsed_examples: Vec<String>,
    /// sockdiag_collector_errors_total by collector: first and last seen.
    errors_first: HashMap<String, f64>,
    errors_last: HashMap<String, f64>,
}

fn keep(examples: &mut Vec<String>, text: String) {
    if examples.len() < EXAMPLES {
        examples.push(text);
    }
}

/// A series' identity: its name and its labels in a fixed order.
fn series_key(name: &str, labels: &[(&str, String)]) -> String {
    let mut l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    l.sort();
    format!("{name}{{{}}}", l.join(","))
}

impl Checker {
    fn is_counter(&self, name: &str) -> bool {
        let typed = |n: &str| self.types.get(n).is_some_and(|t| t == "counter");
        name.ends_with("_total") || typed(name) || name.strip_suffix("_total").is_some_and(typed)
    }

    /// A scrape that did not return a page.
    pub fn failed(&mut self, why: String) {
        self.scrapes += 1;
        self.failed_scrapes += 1;
        keep(&mut self.failed_examples, why);
    }

    /// Checks one page of the text exposition.
    pub fn observe(&mut self, body: &str, seconds: f64) {
        self.scrapes += 1;
        self.slowest_scrape = self.slowest_scrape.max(seconds);
        let idx = self.scrapes;
        for line in body.lines() {
            let mut w = line.split_whitespace();
            if let (Some("#"), Some("TYPE"), Some(name), Some(ty)) =
                (w.next(), w.next(), w.next(), w.next())
            {
                self.types.insert(name.to_string(), ty.to_string());
            }
        }
        for line in body.lines() {
            let t = line.trim();
            if t.is_empty() || t.starts_with('#') {
                continue;
            }
            let Some((name, labels, value)) = parse_sample(t) else {
                self.unparsed += 1;
                keep(&mut self.unparsed_examples, t.to_string());
                continue;
            };
            self.samples += 1;
            if value.is_nan() {
                self.non_finite += 1;
                keep(&mut self.non_finite_examples, t.to_string());
            } else if value < 0.0 {
                self.negatives += 1;
                keep(&mut self.negative_examples, t.to_string());
            } else if value.is_infinite() {
                self.non_finite += 1;
                keep(&mut self.non_finite_examples, t.to_string());
            }
            if name == "sockdiag_collector_errors_total"
                && let Some(c) = label(&labels, "collector")
            {
                self.errors_first.entry(c.to_string()).or_insert(value);
                self.errors_last.insert(c.to_string(), value);
            }
            if !self.is_counter(name) {
                continue;
            }
            self.counter_samples += 1;
            let key = series_key(name, &labels);
            if let Some(&(prev, seen)) = self.last.get(&key)
                && value < prev
            {
                let what = format!("{key}: {prev} -> {value}");
                if seen + 1 == idx {
                    self.decreases += 1;
                    keep(
                        &mut self.decrease_examples,
                        format!("{what} (scrape {idx})"),
                    );
                } else {
                    self.lower_after_absence += 1;
                    keep(
                        &mut self.absence_examples,
                        format!("{what} (absent from scrape {} to {})", seen + 1, idx - 1),
                    );
                }
            }
            self.counter_series.insert(key.clone());
            self.last.insert(key, (value, idx));
        }
    }

    /// Collectors whose error counter grew while we watched, with by how much.
    fn errors_grown(&self) -> Vec<(String, f64)> {
        let mut v: Vec<(String, f64)> = self
            .errors_last
            .iter()
            .filter_map(|(c, last)| {
                let d = last - self.errors_first.get(c).copied().unwrap_or(0.0);
                (d > 0.0).then(|| (c.clone(), d))
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    fn json(&self) -> Value {
        json!({
            "scrapes": self.scrapes,
            "failed_scrapes": self.failed_scrapes,
            "failed_examples": self.failed_examples,
            "slowest_scrape_seconds": self.slowest_scrape,
            "samples": self.samples,
            "counter_samples": self.counter_samples,
            "counter_series": self.counter_series.len(),
            "counter_decreases": self.decreases,
            "counter_decrease_examples": self.decrease_examples,
            "counter_lower_after_absence": self.lower_after_absence,
            "counter_lower_after_absence_examples": self.absence_examples,
            "negative_values": self.negatives,
            "negative_examples": self.negative_examples,
            "non_finite_values": self.non_finite,
            "non_finite_examples": self.non_finite_examples,
            "unparsed_lines": self.unparsed,
            "unparsed_examples": self.unparsed_examples,
            "collector_errors_grown": self.errors_grown()
                .into_iter()
                .map(|(c, d)| json!({"collector": c, "increase": d}))
                .collect::<Vec<_>>(),
        })
    }
}

// ---------------------------------------------------------------------------------------
// What the daemon holds.

#[derive(Clone, Copy, Debug, Default)]
struct ProcFigures {
    rss: u64,
    threads: u64,
    fds: u64,
}

impl ProcFigures {
    fn read(pid: i32) -> Result<ProcFigures> {
        Ok(ProcFigures {
            rss: daemon::vm_rss_bytes(pid)?,
            threads: daemon::threads(pid)?,
            fds: daemon::fd_count(pid)?,
        })
    }

    /// Three readings 100 ms apart, between scrapes, keeping the lowest thread and
    /// descriptor counts: a scrape's connection or a sample's netlink socket that is just
    /// closing is not what the daemon holds.
    fn settled(pid: i32) -> Result<ProcFigures> {
        let mut f = ProcFigures::read(pid)?;
        for _ in 0..2 {
            std::thread::sleep(Duration::from_millis(100));
            let g = ProcFigures::read(pid)?;
            f = ProcFigures {
                rss: g.rss,
                threads: f.threads.min(g.threads),
                fds: f.fds.min(g.fds),
            };
        }
        Ok(f)
    }

    fn max(self, o: ProcFigures) -> ProcFigures {
        ProcFigures {
            rss: self.rss.max(o.rss),
            threads: self.threads.max(o.threads),
            fds: self.fds.max(o.fds),
        }
    }

    fn json(&self) -> Value {
        json!({"rss_bytes": self.rss, "threads": self.threads, "fds": self.fds})
    }
}

// ---------------------------------------------------------------------------------------
// The verdict.

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Verdict {
    Pass,
    Fail,
    Warn,
    Info,
}

impl Verdict {
    fn text(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
            Verdict::Warn => "WARN",
            Verdict::Info => "info",
        }
    }
}

struct Row {
    check: String,
    verdict: Verdict,
    detail: String,
}

fn row(check: &str, verdict: Verdict, detail: String) -> Row {
    Row {
        check: check.to_string(),
        verdict,
        detail,
    }
}

fn pass_if(ok: bool) -> Verdict {
    if ok { Verdict::Pass } else { Verdict::Fail }
}

/// The rows every scenario shares: what the scrapes showed.
fn scrape_rows(c: &Checker) -> Vec<Row> {
    let ex = |v: &[String]| {
        if v.is_empty() {
            String::new()
        } else {
            format!("; e.g. {}", v.join("; "))
        }
    };
    let mut rows = vec![
        row(
            "scrapes answered 200",
            pass_if(c.failed_scrapes == 0 && c.scrapes > 0),
            format!(
                "{} of {}, slowest {:.0} ms{}",
                c.scrapes - c.failed_scrapes,
                c.scrapes,
                c.slowest_scrape * 1000.0,
                ex(&c.failed_examples)
            ),
        ),
        row(
            "no counter decreased between two scrapes that both showed it",
            pass_if(c.decreases == 0),
            format!(
                "{} decreases over {} counter series ({} counter samples){}",
                c.decreases,
                c.counter_series.len(),
                c.counter_samples,
                ex(&c.decrease_examples)
            ),
        ),
        row(
            "counters back lower after their series was absent",
            Verdict::Info,
            format!(
                "{} (a new series, which Prometheus reads as a reset){}",
                c.lower_after_absence,
                ex(&c.absence_examples)
            ),
        ),
        row(
            "no negative value",
            pass_if(c.negatives == 0),
            format!(
                "{} of {} samples{}",
                c.negatives,
                c.samples,
                ex(&c.negative_examples)
            ),
        ),
        row(
            "no NaN or infinite value",
            if c.non_finite == 0 {
                Verdict::Pass
            } else {
                Verdict::Warn
            },
            format!("{}{}", c.non_finite, ex(&c.non_finite_examples)),
        ),
        row(
            "every sample line parses",
            if c.unparsed == 0 {
                Verdict::Pass
            } else {
                Verdict::Warn
            },
            format!("{} unparsed{}", c.unparsed, ex(&c.unparsed_examples)),
        ),
    ];
    let grown = c.errors_grown();
    rows.push(row(
        "collector errors while churning",
        Verdict::Info,
        if grown.is_empty() {
            "none".to_string()
        } else {
            grown
                .iter()
                .map(|(c, d)| format!("{c} +{d}"))
                .collect::<Vec<_>>()
                .join(", ")
        },
    ));
    rows
}

fn table(rows: &[Row]) -> String {
    let mut s = String::from("| check | verdict | detail |\n|---|---|---|\n");
    for r in rows {
        let d = report::cell(&r.detail);
        s.push_str(&format!("| {} | {} | {d} |\n", r.check, r.verdict.text()));
    }
    let count = |v| rows.iter().filter(|r| r.verdict == v).count();
    s.push_str(&format!(
        "\n{} passed, {} failed, {} warnings.\n",
        count(Verdict::Pass),
        count(Verdict::Fail),
        count(Verdict::Warn)
    ));
    s
}

fn rows_json(rows: &[Row]) -> Value {
    rows.iter()
        .map(|r| json!({"check": r.check, "verdict": r.verdict.text(), "detail": r.detail}))
        .collect()
}

// ---------------------------------------------------------------------------------------
// The daemon.

/// The daemon under churn: every scrape checked, its CPU counted from the churn's start.
struct Watch {
    d: daemon::Running,
    checker: Checker,
    /// Its settled figures before the churn.
    before: ProcFigures,
    cpu0: f64,
    cpu_from: Instant,
}

/// How the daemon came out of a churn.
struct Outcome {
    checker: Checker,
    /// Its figures once threads and descriptors were back where they started, or
    /// [`RETURN_TIMEOUT`] passed, and how long that took.
    after: ProcFigures,
    return_seconds: f64,
    cpu: f64,
    cpu_window: f64,
}

impl Watch {
    /// Starts the daemon with `args`, waits until it has served every collector in
    /// `collectors` at least once, lets it run for `warm`, then scrapes it once (the page,
    /// if it answered) and reads its settled figures.
    fn start(
        exporter: &Path,
        args: &[String],
        collectors: &[&str],
        warm: Duration,
    ) -> Result<(Watch, Option<String>)> {
        eprintln!(
            "sockdiag-bench: churn: starting the daemon: {}",
            args.join(" ")
        );
        let mut d = daemon::Running::start(exporter, args)?;
        d.ready_or_fail(
            Duration::from_millis(200),
            DAEMON_READY_TIMEOUT,
            |page| match page {
                Ok((s, body)) if s.status_line.contains(" 200") => {
                    let missing: Vec<&&str> = collectors
                        .iter()
                        .filter(|c| {
                            !body.contains(&format!(
                                "sockdiag_collector_duration_seconds{{collector=\"{c}\"}}"
                            ))
                        })
                        .collect();
                    (!missing.is_empty()).then(|| format!("no duration yet for {missing:?}"))
                }
                Ok((s, _)) => Some(s.status_line),
                Err(e) => Some(e),
            },
        )?;
        std::thread::sleep(warm);
        let mut checker = Checker::default();
        let page = scrape(&mut checker);
        let before = ProcFigures::settled(d.pid)?;
        let cpu0 = daemon::cpu_seconds(d.pid)?;
        let watch = Watch {
            d,
            checker,
            before,
            cpu0,
            cpu_from: Instant::now(),
        };
        Ok((watch, page))
    }

    /// One scrape, checked.
    fn scrape(&mut self) -> Option<String> {
        scrape(&mut self.checker)
    }

    /// Four more scrapes, so that a connections pass or two rescans see the quiet
    /// namespace and the daemon frees what it no longer needs; then its settled figures
    /// and its CPU over the whole watch. Ends the daemon.
    fn finish(mut self) -> Result<Outcome> {
        for _ in 0..4 {
            std::thread::sleep(SCRAPE_EVERY);
            self.scrape();
        }
        self.d.check_alive()?;
        let (after, return_seconds) = settle_to(self.d.pid, self.before)?;
        let cpu = daemon::cpu_seconds(self.d.pid)? - self.cpu0;
        Ok(Outcome {
            checker: self.checker,
            after,
            return_seconds,
            cpu,
            cpu_window: self.cpu_from.elapsed().as_secs_f64(),
        })
    }
}

/// One scrape, checked; returns the page for callers that read figures from it.
fn scrape(checker: &mut Checker) -> Option<String> {
    match daemon::fetch_metrics() {
        Ok((s, body)) if s.status_line.contains(" 200") => {
            checker.observe(&body, s.seconds);
            Some(body)
        }
        Ok((s, _)) => {
            checker.failed(format!("answered {}", s.status_line));
            None
        }
        Err(e) => {
            checker.failed(e);
            None
        }
    }
}

fn daemon_args(opts: &ChurnOpts, run_netns: &Path) -> Vec<String> {
    vec![
        "--collector.listeners.interval".to_string(),
        opts.listeners_interval.clone(),
        "--collector.connections.interval".to_string(),
        opts.connections_interval.clone(),
        "--path.run-netns".to_string(),
        run_netns.display().to_string(),
        "--log.level".to_string(),
        "warn".to_string(),
    ]
}

/// The common rows about the daemon's own state.
fn daemon_rows(start: ProcFigures, peak: ProcFigures, end: ProcFigures) -> Vec<Row> {
    let rss_ok = (end.rss as f64) <= RSS_GROWTH_WARN * start.rss as f64;
    vec![
        row(
            "daemon RSS: start / max / end",
            if rss_ok { Verdict::Pass } else { Verdict::Warn },
            format!(
                "{} / {} / {}{}",
                mib(start.rss),
                mib(peak.rss),
                mib(end.rss),
                if rss_ok {
                    String::new()
                } else {
                    format!(" (end above {RSS_GROWTH_WARN}x start)")
                }
            ),
        ),
        row(
            "daemon threads: start / max / end",
            pass_if(end.threads <= start.threads),
            format!("{} / {} / {}", start.threads, peak.threads, end.threads),
        ),
        row(
            "daemon open descriptors: start / max / end",
            pass_if(end.fds <= start.fds),
            format!("{} / {} / {}", start.fds, peak.fds, end.fds),
        ),
    ]
}

/// Reads the daemon's figures until threads and descriptors are back to `baseline`, for at
/// most [`RETURN_TIMEOUT`]; returns the last reading and how long it took.
fn settle_to(pid: i32, baseline: ProcFigures) -> Result<(ProcFigures, f64)> {
    let start = Instant::now();
    loop {
        let f = ProcFigures::settled(pid)?;
        let back = f.threads <= baseline.threads && f.fds <= baseline.fds;
        if back || start.elapsed() > RETURN_TIMEOUT {
            return Ok((f, start.elapsed().as_secs_f64()));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

// ---------------------------------------------------------------------------------------
// The TCP load process.

fn errno_name(e: i32) -> String {
    match e {
        libc::ECONNREFUSED => "ECONNREFUSED".to_string(),
        libc::ECONNRESET => "ECONNRESET".to_string(),
        libc::ETIMEDOUT => "ETIMEDOUT".to_string(),
        libc::EAGAIN => "EAGAIN(timeout)".to_string(),
        libc::EINPROGRESS => "EINPROGRESS(timeout)".to_string(),
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL".to_string(),
        libc::EADDRINUSE => "EADDRINUSE".to_string(),
        libc::EMFILE => "EMFILE".to_string(),
        libc::ENOBUFS => "ENOBUFS".to_string(),
        e => format!("errno {e}"),
    }
}

/// Connects to 127.0.0.1:`port`; a non-blocking connect returns at once (EINPROGRESS).
fn tcp_connect(port: u16, nonblock: bool) -> io::Result<OwnedFd> {
    let ty = libc::SOCK_STREAM | if nonblock { libc::SOCK_NONBLOCK } else { 0 };
    let fd = proc_util::socket(libc::AF_INET, ty, 0)?;
    if !nonblock {
        let tv = libc::timeval {
            tv_sec: CONNECT_TIMEOUT.as_secs() as libc::time_t,
            tv_usec: 0,
        };
        proc_util::setsockopt(&fd, libc::SOL_SOCKET, libc::SO_SNDTIMEO, &tv)?;
    }
    let sa = proc_util::sockaddr_v4(0x7f00_0001, port);
    match proc_util::connect(&fd, &sa, proc_util::len_of::<libc::sockaddr_in>()) {
        Err(e) if !(nonblock && e.raw_os_error() == Some(libc::EINPROGRESS)) => Err(e),
        _ => Ok(fd),
    }
}

/// Connect + RST as fast as allowed: `rate` per second shared by the threads.
fn connect_loop(deadline: Instant, per_thread_rate: f64, errors: &mut HashMap<i32, u64>) -> u64 {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let start = Instant::now();
    let mut done = 0u64;
    loop {
        if done.is_multiple_of(64) {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            // Ahead of the rate: wait for it, but never past the deadline.
            let due = start + Duration::from_secs_f64(done as f64 / per_thread_rate);
            if due > now {
                std::thread::sleep((due - now).min(deadline - now));
            }
        }
        match tcp_connect(LOAD_PORT, false) {
            Ok(fd) => {
                // SO_LINGER 0: close() sends RST and leaves no TIME_WAIT behind.
                if proc_util::setsockopt(&fd, libc::SOL_SOCKET, libc::SO_LINGER, &linger).is_err() {
                    *errors.entry(-1).or_default() += 1;
                }
                drop(fd);
                done += 1;
            }
            Err(e) => {
                *errors.entry(e.raw_os_error().unwrap_or(0)).or_default() += 1;
                // Do not spin on a persistent error.
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
    done
}

/// Accepts and closes whatever arrives on `listener` until `stop`.
fn accept_loop(listener: &OwnedFd, stop: &AtomicBool, accepted: &AtomicU64) {
    while !stop.load(Ordering::Relaxed) {
        let mut pfd = libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe {
            libc::poll(&mut pfd, 1, 100);
        }
        loop {
            match proc_util::accept(listener.as_raw_fd()) {
                // Closed at once.
                Ok(_) => {
                    accepted.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) if matches!(e.raw_os_error(), Some(libc::ECONNABORTED | libc::EINTR)) => {}
                Err(_) => break,
            }
        }
    }
}

/// Opens a listener with backlog 1 once per period (80-120 ms), queues two clients (a full
/// queue: length 2 > limit 1) and a third whose SYN is dropped, and closes it all 30-70 ms
/// later. Returns (cycles, failed cycles).
fn toggle_loop(deadline: Instant) -> (u64, u64) {
    let (mut cycles, mut failed) = (0, 0);
    let mut next = Instant::now();
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut draw = |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n.max(1)
    };
    while next < deadline {
        let period = TOGGLE_PERIOD_MIN_MS + draw(TOGGLE_PERIOD_SPREAD_MS);
        let max_open = TOGGLE_OPEN_MAX_MS.min(period - 10);
        let open = TOGGLE_OPEN_MIN_MS + draw(max_open - TOGGLE_OPEN_MIN_MS + 1);
        let delay = draw(period - open);
        let cycle_start = next;
        next += Duration::from_millis(period);
        std::thread::sleep(
            (cycle_start + Duration::from_millis(delay)).saturating_duration_since(Instant::now()),
        );
        match proc_util::loopback_listener(TOGGLE_PORT, 1, true) {
            Ok(l) => {
                let clients: Vec<OwnedFd> = (0..3)
                    .filter_map(|_| tcp_connect(TOGGLE_PORT, true).ok())
                    .collect();
                std::thread::sleep(Duration::from_millis(open));
                drop(clients);
                drop(l);
                cycles += 1;
            }
            Err(_) => failed += 1,
        }
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    (cycles, failed)
}

/// `internal-churn-load`: says `ready`, churns for `seconds`, then prints one line of
/// `key=value` totals and exits.
pub fn load_main(args: &LoadArgs) -> Result<ExitCode> {
    proc_util::die_with_parent(args.parent).context("the coordinator is gone")?;
    namespace::raise_nofile_limit()?;
    let listener = proc_util::loopback_listener(LOAD_PORT, LOAD_BACKLOG, true)
        .with_context(|| format!("listening on 127.0.0.1:{LOAD_PORT}"))?;
    worker::say_ready("")?;
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(args.seconds);
    let stop = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(AtomicU64::new(0));
    let per_thread = args.rate as f64 / f64::from(args.threads.max(1));
    let (connects, errors, toggles) = std::thread::scope(|s| {
        let acceptor = s.spawn(|| accept_loop(&listener, &stop, &accepted));
        let toggler = s.spawn(|| toggle_loop(deadline));
        let connectors: Vec<_> = (0..args.threads)
            .map(|_| {
                s.spawn(move || {
                    let mut errors = HashMap::new();
                    let n = connect_loop(deadline, per_thread, &mut errors);
                    (n, errors)
                })
            })
            .collect();
        let mut total = 0;
        let mut errors: HashMap<i32, u64> = HashMap::new();
        for c in connectors {
            if let Ok((n, e)) = c.join() {
                total += n;
                for (k, v) in e {
                    *errors.entry(k).or_default() += v;
                }
            }
        }
        let toggles = toggler.join().unwrap_or((0, 0));
        stop.store(true, Ordering::Relaxed);
        let _ = acceptor.join();
        (total, errors, toggles)
    });
    let seconds = start.elapsed().as_secs_f64();
    let failed: u64 = errors.values().sum();
    let mut detail: Vec<String> = errors
        .iter()
        .map(|(e, n)| {
            let name = if *e == -1 {
                "SO_LINGER".to_string()
            } else {
                errno_name(*e)
            };
            format!("{name}:{n}")
        })
        .collect();
    detail.sort();
    worker::say_line(&format!(
        "done connects={connects} accepted={} failed={failed} toggles={} toggle_failed={} \
         seconds={seconds:.3} errors={}",
        accepted.load(Ordering::Relaxed),
        toggles.0,
        toggles.1,
        if detail.is_empty() {
            "-".to_string()
        } else {
            detail.join(",")
        }
    ))?;
    Ok(ExitCode::SUCCESS)
}

/// The load's `done` line as key -> value.
fn parse_done(line: &str) -> HashMap<String, String> {
    line.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

// ---------------------------------------------------------------------------------------
// Scenario 1: TCP churn.

fn tcp_churn(opts: &ChurnOpts, exporter: &Path, run_netns: &Path) -> Result<(String, Value, bool)> {
    let args = daemon_args(opts, run_netns);
    let (mut watch, _) = Watch::start(
        exporter,
        &args,
        &["listeners", "connections"],
        Duration::from_secs(1),
    )?;
    let start_figures = watch.before;

    let mut cmd = helper::bench_command("internal-churn-load")?;
    cmd.args(["--seconds", &opts.seconds.to_string()])
        .args(["--rate", &opts.rate.to_string()])
        .args(["--threads", &opts.load_threads.to_string()]);
    let mut load = Helper::spawn(cmd, "the churn load")?;
    load.wait_ready(Duration::from_secs(10))?;
    eprintln!(
        "sockdiag-bench: churn: load running for {} s, scraping every {} ms",
        opts.seconds,
        SCRAPE_EVERY.as_millis()
    );
    let started = Instant::now();
    let end = started + Duration::from_secs(opts.seconds);
    let mut peak = start_figures;
    let mut toggled_seen = 0u64;
    let mut churn_scrapes = 0u64;
    let mut next = started;
    while next < end {
        watch.d.check_alive()?;
        if let Some(body) = watch.scrape() {
            churn_scrapes += 1;
            if body.lines().any(|l| {
                l.starts_with("sockdiag_accept_queue_length{")
                    && l.contains(&format!("port=\"{TOGGLE_PORT}\""))
            }) {
                toggled_seen += 1;
            }
        }
        peak = peak.max(ProcFigures::read(watch.d.pid)?);
        next += SCRAPE_EVERY;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    let done = load.read_line(Duration::from_secs(30))?;
    load.stop(Duration::from_secs(10));
    let churn_seconds = started.elapsed().as_secs_f64();
    let Outcome {
        checker,
        after: end_figures,
        cpu,
        cpu_window,
        ..
    } = watch.finish()?;
    peak = peak.max(end_figures);

    let done = parse_done(&done);
    let num = |k: &str| {
        done.get(k)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let load_seconds = num("seconds").max(f64::MIN_POSITIVE);
    let rate = num("connects") / load_seconds;
    let mut rows = scrape_rows(&checker);
    rows.push(row("daemon alive to the end", Verdict::Pass, String::new()));
    rows.extend(daemon_rows(start_figures, peak, end_figures));
    rows.push(row(
        "daemon CPU",
        Verdict::Info,
        format!(
            "{:.1}% of one core over {cpu_window:.1} s of churn and settling",
            100.0 * cpu / cpu_window.max(f64::MIN_POSITIVE)
        ),
    ));
    rows.push(row(
        "load: connect + RST per second",
        Verdict::Info,
        format!(
            "{:.0}/s achieved (target {}): {} connects in {load_seconds:.1} s, {} accepted, {} \
             failed ({})",
            rate,
            opts.rate,
            num("connects"),
            num("accepted"),
            num("failed"),
            done.get("errors").map_or("-", String::as_str)
        ),
    ));
    rows.push(row(
        "toggled listener (127.0.0.1:21001, open 30-70 ms of every ~100 ms)",
        Verdict::Info,
        format!(
            "{} open/close cycles ({} failed to open); present in {toggled_seen} of \
             {churn_scrapes} scrapes",
            num("toggles"),
            num("toggle_failed")
        ),
    ));
    let failed = rows.iter().any(|r| r.verdict == Verdict::Fail);
    let md = format!(
        "## sockdiag-bench churn: {} s of TCP churn\n\n\
         Daemon `sockdiag-exporter --web.listen-address {LISTEN} {}`, in a private network \
         namespace where a load process connects to 127.0.0.1:{LOAD_PORT} and resets each \
         connection (SO_LINGER 0; an acceptor takes and closes what arrives), and a listener \
         on 127.0.0.1:{TOGGLE_PORT} (backlog 1, two queued clients and a third dropped) is \
         opened once every 80-120 ms (100 on average; jittered so that it does not lock in phase \
         with the daemon's samples) and closed 30-70 ms later. /metrics scraped every {} ms. {}.\n\n{}",
        opts.seconds,
        args.join(" "),
        SCRAPE_EVERY.as_millis(),
        report::kernel_and_cpus(),
        table(&rows)
    );
    let doc = json!({
        "scenario": "tcp",
        "seconds": opts.seconds,
        "daemon_args": args,
        "rate_target": opts.rate,
        "rate_achieved": rate,
        "load": done,
        "churn_seconds": churn_seconds,
        "cpu_window_seconds": cpu_window,
        "toggled_listener_scrapes_present": toggled_seen,
        "churn_scrapes": churn_scrapes,
        "daemon": {
            "start": start_figures.json(),
            "max": peak.json(),
            "end": end_figures.json(),
            "cpu_seconds": cpu,
        },
        "checks": checker.json(),
        "verdict": rows_json(&rows),
    });
    Ok((md, doc, failed))
}

// ---------------------------------------------------------------------------------------
// Scenario 2: namespace churn.

/// A namespace of the churn: its holder, and its `ip netns`-style name if it has one.
struct Ns {
    holder: Helper,
    named: Option<PathBuf>,
}

fn cstring(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes()).with_context(|| format!("{} holds a NUL", p.display()))
}

/// Makes every mount of this (private) mount namespace private, so that the bind mounts
/// below cannot propagate anywhere.
fn private_mounts() -> Result<()> {
    // SAFETY: plain syscall with NUL-terminated strings or nulls.
    let rc = unsafe {
        libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error()).context("making / private");
    }
    Ok(())
}

/// Names the namespace of `pid` as `ip netns add` does: a bind mount of its ns/net file
/// onto `dir/name`.
fn name_netns(dir: &Path, name: &str, pid: i32) -> Result<PathBuf> {
    let target = dir.join(name);
    std::fs::File::create(&target).with_context(|| format!("creating {}", target.display()))?;
    let src = cstring(Path::new(&format!("/proc/{pid}/ns/net")))?;
    let dst = cstring(&target)?;
    // SAFETY: plain syscall with NUL-terminated strings.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let err = io::Error::last_os_error();
        let _ = std::fs::remove_file(&target);
        return Err(err).with_context(|| format!("bind-mounting the namespace of {pid}"));
    }
    Ok(target)
}

/// Removes a name as `ip netns delete` does.
fn unname_netns(target: &Path) {
    if let Ok(c) = cstring(target) {
        // SAFETY: plain syscall with a NUL-terminated string.
        unsafe {
            libc::umount2(c.as_ptr(), libc::MNT_DETACH);
        }
    }
    let _ = std::fs::remove_file(target);
}

fn stop_ns(mut ns: Ns) {
    if let Some(t) = &ns.named {
        unname_netns(t);
    }
    ns.holder.stop(Duration::from_secs(10));
}

/// Namespaces the daemon lists (`sockdiag_netns_info` series), and how many of them under
/// one of the churn's names.
fn namespaces_listed(body: &str) -> (u64, u64) {
    let mut n = (0, 0);
    for (name, labels, _) in body.lines().filter_map(parse_sample) {
        if name == "sockdiag_netns_info" {
            n.0 += 1;
            if label(&labels, "netns").is_some_and(|l| l.starts_with(NAME_PREFIX)) {
                n.1 += 1;
            }
        }
    }
    n
}

/// Names given to the churn's namespaces in the test-owned run-netns directory.
const NAME_PREFIX: &str = "churn-";

/// When namespace `i` of `k` is created and deleted, in seconds from the start of a churn
/// of `t` seconds: created evenly over the first half, each living 15-30% of the run, so
/// creations and deletions interleave and all are gone by 80%.
fn schedule(i: u32, k: u32, t: f64, seed: u64) -> (f64, f64) {
    let create = 0.5 * t * f64::from(i) / f64::from(k.max(1));
    let mut z = seed.wrapping_add(u64::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 31)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let u = (z >> 11) as f64 / (1u64 << 53) as f64;
    (create, create + t * (0.15 + 0.15 * u))
}

fn netns_churn(
    opts: &ChurnOpts,
    k: u32,
    exporter: &Path,
    run_netns: &Path,
) -> Result<(String, Value, bool)> {
    let naming = private_mounts();
    if let Err(e) = &naming {
        eprintln!("sockdiag-bench: churn: namespaces stay unnamed: {e:#}");
    }
    let mut args = daemon_args(opts, run_netns);
    args.extend([
        "--collector.netns.rescan-interval".to_string(),
        opts.rescan_interval.clone(),
    ]);
    let (mut watch, page) = Watch::start(
        exporter,
        &args,
        &["listeners", "connections", "netns"],
        Duration::from_secs(2),
    )?;
    let listed_before = page.map_or(0, |b| namespaces_listed(&b).0);
    let before = watch.before;

    let exe = std::env::current_exe().context("locating this executable")?;
    let t = opts.seconds as f64;
    let plan: Vec<(f64, f64)> = (0..k).map(|i| schedule(i, k, t, 1)).collect();
    let mut live: HashMap<u32, Ns> = HashMap::new();
    let (mut created, mut deleted, mut named, mut name_failures) = (0u32, 0u32, 0u32, 0u32);
    let mut name_error: Option<String> = naming.as_ref().err().map(|e| format!("{e:#}"));
    let (mut peak_live, mut peak_listed, mut peak_named_listed) = (0usize, listed_before, 0u64);
    let mut peak_named_live = 0usize;
    let mut peak = before;
    let started = Instant::now();
    let mut next_scrape = started;
    eprintln!(
        "sockdiag-bench: churn: creating and deleting {k} namespaces over {} s",
        opts.seconds
    );
    let result: Result<()> = (|| {
        while (deleted as usize) < plan.len() {
            let now = started.elapsed().as_secs_f64();
            for (i, &(c, _)) in plan.iter().enumerate() {
                let i = i as u32;
                if c <= now && i >= created {
                    let mut cmd = Command::new(&exe);
                    cmd.args([
                        "internal-netns-holder",
                        "--listeners",
                        "1",
                        "--connections",
                        "0",
                    ]);
                    namespace::in_new_netns(&mut cmd);
                    let mut holder = Helper::spawn(cmd, "a namespace holder")?;
                    holder.wait_ready(Duration::from_secs(30))?;
                    let mut ns = Ns {
                        holder,
                        named: None,
                    };
                    if naming.is_ok() && i.is_multiple_of(2) {
                        match name_netns(run_netns, &format!("{NAME_PREFIX}{i}"), ns.holder.pid) {
                            Ok(p) => {
                                ns.named = Some(p);
                                named += 1;
                            }
                            Err(e) => {
                                name_failures += 1;
                                name_error.get_or_insert(format!("{e:#}"));
                            }
                        }
                    }
                    live.insert(i, ns);
                    created = i + 1;
                }
            }
            let due: Vec<u32> = live
                .keys()
                .copied()
                .filter(|i| plan[*i as usize].1 <= now)
                .collect();
            for i in due {
                if let Some(ns) = live.remove(&i) {
                    stop_ns(ns);
                    deleted += 1;
                }
            }
            peak_live = peak_live.max(live.len());
            peak_named_live =
                peak_named_live.max(live.values().filter(|ns| ns.named.is_some()).count());
            if Instant::now() >= next_scrape {
                watch.d.check_alive()?;
                if let Some(body) = watch.scrape() {
                    let (all, named) = namespaces_listed(&body);
                    peak_listed = peak_listed.max(all);
                    peak_named_listed = peak_named_listed.max(named);
                }
                peak = peak.max(ProcFigures::read(watch.d.pid)?);
                next_scrape += SCRAPE_EVERY;
            }
            if started.elapsed() > Duration::from_secs_f64(t + 60.0) {
                bail!("the namespace churn overran its schedule by a minute");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    })();
    for (_, ns) in live.drain() {
        stop_ns(ns);
    }
    result?;
    let churn_seconds = started.elapsed().as_secs_f64();

    // The daemon must forget every deleted namespace, then give back what it held for them.
    let forget_start = Instant::now();
    let mut listed_after = u64::MAX;
    while forget_start.elapsed() < FORGET_TIMEOUT {
        watch.d.check_alive()?;
        if let Some(body) = watch.scrape() {
            listed_after = namespaces_listed(&body).0;
            if listed_after <= listed_before {
                break;
            }
        }
        std::thread::sleep(SCRAPE_EVERY);
    }
    let forget_seconds = forget_start.elapsed().as_secs_f64();
    let Outcome {
        checker,
        after,
        return_seconds,
        cpu,
        cpu_window,
    } = watch.finish()?;

    let mut rows = scrape_rows(&checker);
    rows.push(row("daemon alive to the end", Verdict::Pass, String::new()));
    rows.push(row(
        "namespaces created / deleted",
        pass_if(created == k && deleted == k),
        format!(
            "{created} / {deleted} of {k}; at most {peak_live} at once; {named} named in {}{}",
            run_netns.display(),
            match (&name_error, name_failures) {
                (Some(e), _) => format!(" (naming: {e})"),
                (None, _) => String::new(),
            }
        ),
    ));
    rows.push(row(
        "namespaces the daemon listed: before / peak / after",
        pass_if(listed_after <= listed_before),
        format!(
            "{listed_before} / {peak_live_listed} / {after_text} (after: {forget_seconds:.1} s \
             after the last deletion)",
            peak_live_listed = peak_listed,
            after_text = if listed_after == u64::MAX {
                "no scrape".to_string()
            } else {
                listed_after.to_string()
            }
        ),
    ));
    rows.push(row(
        "named namespaces listed by their name",
        if named == 0 {
            Verdict::Info
        } else {
            pass_if(peak_named_listed > 0)
        },
        format!(
            "at most {peak_named_listed} at once in sockdiag_netns_info{{netns=\"{NAME_PREFIX}...\"}}, \
             of at most {peak_named_live} named and alive at once"
        ),
    ));
    rows.push(row(
        "daemon threads: before / peak / after (back to baseline)",
        pass_if(after.threads <= before.threads),
        format!("{} / {} / {}", before.threads, peak.threads, after.threads),
    ));
    rows.push(row(
        "daemon open descriptors: before / peak / after (back to baseline)",
        pass_if(after.fds <= before.fds),
        format!(
            "{} / {} / {}{}",
            before.fds,
            peak.fds,
            after.fds,
            if return_seconds > 0.5 {
                format!(" (read {return_seconds:.1} s after settling)")
            } else {
                String::new()
            }
        ),
    ));
    rows.push(row(
        "daemon RSS: before / peak / after",
        Verdict::Info,
        format!(
            "{} / {} / {}",
            mib(before.rss),
            mib(peak.rss),
            mib(after.rss)
        ),
    ));
    rows.push(row(
        "daemon CPU",
        Verdict::Info,
        format!(
            "{:.1}% of one core over {cpu_window:.1} s of churn ({churn_seconds:.1} s) and \
             settling",
            100.0 * cpu / cpu_window.max(f64::MIN_POSITIVE)
        ),
    ));
    let failed = rows.iter().any(|r| r.verdict == Verdict::Fail);
    let md = format!(
        "## sockdiag-bench churn: {k} network namespaces over {} s\n\n\
         Daemon `sockdiag-exporter --web.listen-address {LISTEN} {}`, in a private user + \
         network + mount namespace. {k} child network namespaces, each held by one process \
         with a listener on 127.0.0.1:20000, created evenly over the first half of the run and \
         each deleted 15-30% of the run later; every other one also named by a bind mount in \
         the test-owned --path.run-netns, removed (umount, unlink) before its holder exits. \
         /metrics scraped every {} ms. {}.\n\n{}",
        opts.seconds,
        args.join(" "),
        SCRAPE_EVERY.as_millis(),
        report::kernel_and_cpus(),
        table(&rows)
    );
    let doc = json!({
        "scenario": "namespaces",
        "seconds": opts.seconds,
        "namespaces": k,
        "daemon_args": args,
        "created": created,
        "deleted": deleted,
        "named": named,
        "naming_error": name_error,
        "peak_live": peak_live,
        "peak_named_live": peak_named_live,
        "peak_named_listed": peak_named_listed,
        "namespaces_listed": {"before": listed_before, "peak": peak_listed, "after": listed_after},
        "seconds_to_forget": forget_seconds,
        "churn_seconds": churn_seconds,
        "cpu_window_seconds": cpu_window,
        "daemon": {
            "before": before.json(),
            "peak": peak.json(),
            "after": after.json(),
            "cpu_seconds": cpu,
        },
        "checks": checker.json(),
        "verdict": rows_json(&rows),
    });
    Ok((md, doc, failed))
}

/// The coordinator inside the private namespace.
pub fn internal_main(bench: &BenchOpts, opts: &ChurnOpts) -> Result<ExitCode> {
    namespace::bring_loopback_up()?;
    namespace::tune_sysctls();
    namespace::raise_nofile_limit()?;
    let exporter = crate::resolve_exporter(bench.exporter.as_deref())?;
    let Some(run_netns) = opts.run_netns_dir.clone() else {
        bail!("internal-churn needs --run-netns-dir");
    };
    let (md, doc, failed) = match opts.namespaces {
        None => tcp_churn(opts, &exporter, &run_netns)?,
        Some(k) => netns_churn(opts, k, &exporter, &run_netns)?,
    };
    print!("{md}");
    report::write_json(opts.json.as_deref(), || report::json_text(&doc))?;
    Ok(report::exit_code(failed))
}

/// `churn`: makes the test-owned run-netns directory, hands over to a coordinator inside a
/// new user + network (+ mount, for named namespaces) namespace, and removes it afterwards.
pub fn run_outer(bench: BenchOpts, mut opts: ChurnOpts) -> Result<ExitCode> {
    let exporter = crate::resolve_exporter(bench.exporter.as_deref())?;
    opts.json = crate::absolute(opts.json.take(), "--json")?;
    let run_netns =
        std::env::temp_dir().join(format!("sockdiag-bench-churn-netns.{}", std::process::id()));
    opts.run_netns_dir = Some(run_netns.clone());
    let mut args: Vec<OsString> = vec!["--exporter".into(), exporter.into()];
    args.push("internal-churn".into());
    args.extend(opts.to_args());
    // Named namespaces need a mount namespace of our own: the bind mounts live and die in it.
    let extra = if opts.namespaces.is_some() {
        libc::CLONE_NEWNS
    } else {
        0
    };
    // The mounts die with the namespace; the files they covered are plain files here.
    let status = namespace::with_dir(&run_netns, || {
        namespace::run_in_new_namespace_with(&args, extra)
    })?;
    namespace::exit_code_of(status?, "the churn coordinator")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_decreases_are_told_apart_from_series_that_came_back() {
        let mut c = Checker::default();
        let page = |full: f64, drops: Option<f64>, gauge: f64| {
            let mut s = format!(
                "# TYPE sockdiag_accept_queue_full_seconds_total counter\n\
                 sockdiag_accept_queue_full_seconds_total{{port=\"1\",netns=\"host\"}} {full}\n\
                 # TYPE sockdiag_accept_queue_length gauge\n\
                 sockdiag_accept_queue_length{{port=\"1\"}} {gauge}\n\
                 # TYPE odd_counter counter\nodd_counter 5\n"
            );
            if let Some(d) = drops {
                s.push_str(&format!("sockdiag_listen_drops_total{{port=\"2\"}} {d}\n"));
            }
            s
        };
        c.observe(&page(1.0, Some(5.0), 3.0), 0.01);
        c.observe(&page(2.0, None, 1.0), 0.01);
        c.observe(&page(1.5, Some(1.0), 0.0), 0.01);
        assert_eq!(
            c.decreases, 1,
            "full_seconds 2 -> 1.5 in consecutive scrapes"
        );
        assert_eq!(c.lower_after_absence, 1, "drops 5 -> absent -> 1");
        assert_eq!(c.negatives, 0);
        assert_eq!(
            c.counter_series.len(),
            3,
            "typed counter without _total included"
        );
        c.observe("sockdiag_x{a=\"b\"} -1\nsockdiag_y NaN\nbroken{ 1\n", 0.02);
        assert_eq!((c.negatives, c.non_finite, c.unparsed), (1, 1, 1));
    }

    #[test]
    fn label_order_does_not_make_a_new_series() {
        let a = parse_sample(r#"m{a="1",b="2"} 1"#).unwrap();
        let b = parse_sample(r#"m{b="2",a="1"} 1"#).unwrap();
        assert_eq!(series_key(a.0, &a.1), series_key(b.0, &b.1));
    }

    #[test]
    fn namespace_schedule_interleaves_and_ends_by_four_fifths() {
        let t = 120.0;
        let s: Vec<(f64, f64)> = (0..200).map(|i| schedule(i, 200, t, 1)).collect();
        assert!(
            s.iter()
                .all(|&(c, d)| c < d && c <= 0.5 * t && d <= 0.8 * t)
        );
        // Some namespace is deleted before the last one is created.
        let last_create = s.iter().map(|x| x.0).fold(0.0, f64::max);
        assert!(s.iter().any(|x| x.1 < last_create));
    }

    #[test]
    fn load_totals_parse() {
        let d = parse_done("done connects=10 accepted=9 failed=0 errors=- seconds=1.5");
        assert_eq!(d["connects"], "10");
        assert_eq!(d["seconds"], "1.5");
    }
}
