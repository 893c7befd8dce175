//! `namespaces`: what collecting many network namespaces costs the daemon per sample.
//!
//! Every namespace's sock_diag dump walks the host-wide established hash and skips the
//! sockets of other namespaces, so a daemon that collects K namespaces may pay K times for
//! every socket on the node. Two scenarios, both inside the bench's private user + network
//! namespace, which plays `host` for the daemon:
//!
//! - many small namespaces (`--namespaces K --listeners-per-ns L --connections-per-ns C`):
//!   the daemon collecting all K + 1 of them, against the same daemon with
//!   `--no-collector.netns` on the same sockets, so the ratios come from one run;
//! - one big namespace (`--big-ns-connections N`) next to K small ones, once with the
//!   shared established hash and once with per-namespace hashes
//!   (`net.ipv4.tcp_child_ehash_entries`, Linux 6.1+): does a small namespace's walk pay for
//!   the big one's sockets?
//!
//! Each child namespace is made by a holder: this binary re-executed as
//! `internal-netns-holder` with `unshare(CLONE_NEWNET)` between fork and exec. A small
//! holder opens its listeners and connections itself; the big one runs the worker fleet of
//! [`crate::setup`] from inside its namespace, since one process holds fewer than 10,000
//! connections. Holders die with the coordinator (PR_SET_PDEATHSIG), their workers with
//! them, and they exit when their stdin closes.

use std::collections::HashMap;
use std::ffi::OsString;

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::{Value, json};

use crate::daemon::{self, LISTEN};
use crate::helper::Helper;
use crate::report::mib;
use crate::{BenchOpts, diag, measure, namespace, report, setup, worker};

/// The daemon's connections interval here: several full passes within one window.
const CONNECTIONS_INTERVAL: &str = "2s";
/// Time between two scrapes of /metrics while sampling.
const SCRAPE_EVERY: Duration = Duration::from_secs(1);
/// Longest wait for the daemon to report every namespace up.
const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// Longest wait for the holders to exit once their stdin is closed.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait for the host-wide table to lose a torn-down namespace's sockets.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
const CHILD_EHASH_SYSCTL: &str = "/proc/sys/net/ipv4/tcp_child_ehash_entries";
const EHASH_SYSCTL: &str = "/proc/sys/net/ipv4/tcp_ehash_entries";
/// Largest value the kernel accepts for tcp_child_ehash_entries.
const MAX_CHILD_EHASH: u64 = 1 << 24;

/// Options of `namespaces`.
#[derive(Args, Debug, Clone)]
pub struct NamespacesOpts {
    /// Child network namespaces with a few sockets each [default: 100, or 10 with
    /// --big-ns-connections].
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub namespaces: Option<u32>,

    /// Listeners on 127.0.0.1 in each small namespace.
    #[arg(long, default_value_t = 4, value_name = "L",
          value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub listeners_per_ns: u16,

    /// Loopback connections in each small namespace (accepted by the same process).
    #[arg(long, default_value_t = 50, value_name = "C",
          value_parser = clap::value_parser!(u64).range(0..=8000))]
    pub connections_per_ns: u64,

    /// Scenario 2: one child namespace holding N loopback connections next to the small
    /// ones, measured with the shared established hash and again with per-namespace hashes.
    /// Accepts a k / M suffix.
    #[arg(long, value_name = "N", value_parser = crate::parse_count)]
    pub big_ns_connections: Option<u64>,

    /// Buckets of every child's own established hash in the second half of scenario 2
    /// [default: one per socket the namespace holds, rounded up to a power of two].
    #[arg(long, value_name = "ENTRIES",
          value_parser = clap::value_parser!(u64).range(1..=MAX_CHILD_EHASH))]
    pub child_ehash_entries: Option<u64>,

    /// Seconds of sampling /metrics per daemon run.
    #[arg(long, default_value_t = 20, value_name = "S",
          value_parser = clap::value_parser!(u64).range(4..=600))]
    pub seconds: u64,

    /// Keep the daemon's processes collector on. It is off by default: it reads every
    /// process's descriptors, a cost that is not the one measured here.
    #[arg(long)]
    pub processes: bool,

    /// Also write the results as JSON to this file.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,

    /// An empty directory for the daemon's `--path.run-netns` (made by the outer process,
    /// which outlives an interrupted coordinator and removes it).
    #[arg(long, hide = true)]
    pub run_netns_dir: Option<PathBuf>,
}

impl NamespacesOpts {
    fn small_namespaces(&self) -> u32 {
        self.namespaces
            .unwrap_or(if self.big_ns_connections.is_some() {
                10
            } else {
                100
            })
    }

    /// The same options as arguments, for the coordinator inside the namespace.
    fn to_args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec![
            "--namespaces".into(),
            self.small_namespaces().to_string().into(),
            "--listeners-per-ns".into(),
            self.listeners_per_ns.to_string().into(),
            "--connections-per-ns".into(),
            self.connections_per_ns.to_string().into(),
            "--seconds".into(),
            self.seconds.to_string().into(),
        ];
        if let Some(n) = self.big_ns_connections {
            a.extend(["--big-ns-connections".into(), n.to_string().into()]);
        }
        if let Some(e) = self.child_ehash_entries {
            a.extend(["--child-ehash-entries".into(), e.to_string().into()]);
        }
        if self.processes {
            a.push("--processes".into());
        }
        crate::push_flag(&mut a, "--json", self.json.as_deref());
        crate::push_flag(&mut a, "--run-netns-dir", self.run_netns_dir.as_deref());
        a
    }
}

/// Arguments of the hidden `internal-netns-holder`, which starts in a fresh network
/// namespace.
#[derive(Args, Debug)]
pub struct HolderArgs {
    /// Listeners to open on 127.0.0.1.
    #[arg(long)]
    listeners: u16,
    /// Connections to open to them and accept.
    #[arg(long)]
    connections: u64,
    /// Hold this many connections with worker processes instead (the big namespace; its
    /// listeners are the fleet's usual 16).
    #[arg(long)]
    big: Option<u64>,
}

// ---------------------------------------------------------------------------------------
// The holder, inside its own network namespace.

/// This namespace's `tcp_ehash_entries`: negative when it shares the host-wide table.
fn own_ehash_entries() -> Option<i64> {
    std::fs::read_to_string(EHASH_SYSCTL)
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Opens `count` connections over `listeners` and accepts them all, in batches small
/// enough never to fill a queue.
fn connect_and_accept(listeners: &[OwnedFd], count: u64) -> Result<Vec<OwnedFd>> {
    const BATCH: u64 = 256;
    let fds: Vec<RawFd> = listeners.iter().map(|l| l.as_raw_fd()).collect();
    let mut held = Vec::with_capacity(2 * count as usize);
    let mut servers = Vec::with_capacity(count as usize);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut opened = 0;
    while opened < count || (servers.len() as u64) < count {
        let end = (opened + BATCH).min(count);
        while opened < end {
            let port = setup::FIRST_PORT + (opened % fds.len() as u64) as u16;
            held.push(worker::connect_client(opened, port)?);
            opened += 1;
        }
        let want = opened - servers.len() as u64;
        if worker::drain(&fds, want, &mut servers)? == 0 && opened == count {
            if Instant::now() > deadline {
                bail!(
                    "accepted {} of {count} connections within 30 s",
                    servers.len()
                );
            }
            worker::wait_readable(&fds, Duration::from_millis(100));
        }
    }
    held.append(&mut servers);
    Ok(held)
}

/// `internal-netns-holder`: sets up its namespace, says `ready <tcp_ehash_entries>`, and
/// holds everything until its stdin closes (or the coordinator dies: PDEATHSIG).
pub fn holder_main(args: &HolderArgs) -> Result<ExitCode> {
    namespace::bring_loopback_up()?;
    let nofile = namespace::raise_nofile_limit()?;
    let mut fleet = setup::Fleet::default();
    let held = match args.big {
        Some(n) => {
            namespace::tune_sysctls();
            let listeners = setup::create_listeners(setup::LISTENERS)?;
            let per_worker = setup::per_worker(nofile)?;
            fleet.build(&listeners, n, per_worker, setup::parallel_workers())?;
            let census = diag::census().context("counting the big namespace's sockets")?;
            setup::verify(&census, n, 0)?;
            listeners
        }
        None => {
            let listeners = setup::create_listeners(args.listeners)?;
            let mut held = connect_and_accept(&listeners, args.connections)?;
            let c = diag::census().context("counting the namespace's sockets")?;
            if c.listeners != u64::from(args.listeners) || c.established != 2 * args.connections {
                bail!(
                    "expected {} listeners and {} established sockets; the dump shows {c:?}",
                    args.listeners,
                    2 * args.connections
                );
            }
            held.extend(listeners);
            held
        }
    };
    let ehash = own_ehash_entries().map_or_else(|| "?".to_string(), |e| e.to_string());
    worker::say_ready(&ehash)?;

    worker::hold_until_stdin_closes();
    drop(fleet);
    drop(held);
    // The kernel closes what is left faster than we would one by one.
    std::process::exit(0);
}

// ---------------------------------------------------------------------------------------
// The coordinator's side of the holders.

/// Which part a namespace plays in a run.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Role {
    Host,
    Small,
    Big,
}

struct Holder {
    helper: Helper,
    role: Role,
    /// The inode of its network namespace, as `sockdiag_netns_info{inode}` shows it.
    inode: u64,
    /// Its `tcp_ehash_entries` (negative: the host-wide table); `None` if unknown.
    ehash: Option<i64>,
}

/// Every holder started so far. Dropping it ends them all, by pid: on success and on
/// every error path alike.
#[derive(Default)]
struct Holders {
    list: Vec<Holder>,
}

impl Drop for Holders {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Holders {
    /// Starts a holder in a new network namespace, created from the caller's, which is
    /// when the kernel reads the caller's `tcp_child_ehash_entries`.
    fn spawn(&mut self, exe: &Path, role: Role, holder_args: &[String]) -> Result<()> {
        let mut cmd = Command::new(exe);
        cmd.arg("internal-netns-holder").args(holder_args);
        namespace::in_new_netns(&mut cmd);
        let helper = Helper::spawn(cmd, "a namespace holder")?;
        let path = format!("/proc/{}/ns/net", helper.pid);
        // Pushed before anything can fail, so that Drop ends it.
        self.list.push(Holder {
            helper,
            role,
            inode: 0,
            ehash: None,
        });
        let inode = std::fs::metadata(&path)
            .with_context(|| format!("stat of {path}"))?
            .ino();
        if let Some(h) = self.list.last_mut() {
            h.inode = inode;
        }
        Ok(())
    }

    /// Waits until every holder from `from` on has said `ready`, for at most `timeout`.
    fn wait_ready(&mut self, from: usize, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        for h in &mut self.list[from..] {
            let left = deadline.saturating_duration_since(Instant::now());
            let ehash = h.helper.wait_ready(left)?;
            h.ehash = ehash.parse().ok();
        }
        Ok(())
    }

    /// Closes every holder's stdin, gives them [`SHUTDOWN_TIMEOUT`] to exit (the big one
    /// ends its workers first), then kills and reaps the rest, each by its pid.
    fn shutdown(&mut self) {
        for h in &mut self.list {
            h.helper.close_stdin();
        }
        let deadline = Instant::now() + SHUTDOWN_TIMEOUT;
        for mut h in self.list.drain(..) {
            let left = deadline.saturating_duration_since(Instant::now());
            if !h.helper.stop(left.max(Duration::from_millis(1))) {
                eprintln!(
                    "sockdiag-bench: namespace holder {} did not exit in time; killed",
                    h.helper.pid
                );
            }
        }
    }

    fn of(&self, role: Role) -> impl Iterator<Item = &Holder> {
        self.list.iter().filter(move |h| h.role == role)
    }
}

// ---------------------------------------------------------------------------------------
// Reading /metrics.

/// One sample of the text exposition: name, labels, value.
pub type Sample<'a> = (&'a str, Vec<(&'a str, String)>, f64);

/// Parses one line of the text exposition; `None` for comments, blanks and what it cannot
/// read.
pub fn parse_sample(line: &str) -> Option<Sample<'_>> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (name, labels, rest) = match line.find('{') {
        Some(open) => {
            let mut labels = Vec::new();
            let mut s = &line[open + 1..];
            loop {
                s = s.trim_start_matches([',', ' ']);
                if let Some(r) = s.strip_prefix('}') {
                    break (&line[..open], labels, r);
                }
                let eq = s.find('=')?;
                let key = s[..eq].trim();
                let mut chars = s[eq + 1..].strip_prefix('"')?.char_indices();
                let mut value = String::new();
                let end = loop {
                    match chars.next()? {
                        (i, '"') => break i,
                        (_, '\\') => match chars.next()?.1 {
                            'n' => value.push('\n'),
                            c => value.push(c),
                        },
                        (_, c) => value.push(c),
                    }
                };
                labels.push((key, value));
                s = &s[eq + 1 + 1 + end + 1..];
            }
        }
        None => {
            let sp = line.find(' ')?;
            (&line[..sp], Vec::new(), &line[sp..])
        }
    };
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some((name, labels, value))
}

pub fn label<'a>(labels: &'a [(&str, String)], key: &str) -> Option<&'a str> {
    labels
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.as_str())
}

/// The figures one scrape gives.
#[derive(Default, Debug)]
struct Figures {
    /// sockdiag_collector_duration_seconds by collector.
    pass: HashMap<String, f64>,
    /// netns label -> inode, from sockdiag_netns_info.
    inode_of: HashMap<String, u64>,
    /// netns label -> its lowest pid, from sockdiag_netns_info.
    pid_of: HashMap<String, String>,
    /// sockdiag_netns_up by netns label.
    up: HashMap<String, f64>,
    /// sockdiag_netns_sample_duration_seconds by (netns, collector).
    sample: HashMap<(String, String), f64>,
}

impl Figures {
    fn parse(body: &str) -> Figures {
        let mut f = Figures::default();
        for (name, labels, value) in body.lines().filter_map(parse_sample) {
            let l = |k| label(&labels, k).map(str::to_string);
            match name {
                "sockdiag_collector_duration_seconds" => {
                    if let Some(c) = l("collector") {
                        f.pass.insert(c, value);
                    }
                }
                "sockdiag_netns_info" => {
                    let inode = l("inode").and_then(|i| i.parse().ok());
                    if let (Some(n), Some(i)) = (l("netns"), inode) {
                        f.pid_of.insert(n.clone(), l("pid").unwrap_or_default());
                        f.inode_of.insert(n, i);
                    }
                }
                "sockdiag_netns_up" => {
                    if let Some(n) = l("netns") {
                        f.up.insert(n, value);
                    }
                }
                "sockdiag_netns_sample_duration_seconds" => {
                    if let (Some(n), Some(c)) = (l("netns"), l("collector")) {
                        f.sample.insert((n, c), value);
                    }
                }
                _ => {}
            }
        }
        f
    }

    /// Why this scrape does not yet show every expected namespace collected, if it does not.
    fn not_ready(&self, expected: &HashMap<u64, Role>) -> Option<String> {
        let seen: Vec<u64> = self.inode_of.values().copied().collect();
        let missing = expected.keys().filter(|i| !seen.contains(i)).count();
        let extra: Vec<String> = self
            .inode_of
            .iter()
            .filter(|(_, i)| !expected.contains_key(i))
            .map(|(n, _)| format!("{n} (pid {})", self.pid_of[n]))
            .collect();
        if missing > 0 || !extra.is_empty() {
            return Some(format!(
                "sockdiag_netns_info lists {} namespaces: {missing} of the {} expected missing, \
                 {} unexpected{}{}",
                seen.len(),
                expected.len(),
                extra.len(),
                if extra.is_empty() { "" } else { ": " },
                extra.join(", ")
            ));
        }
        let down: Vec<&String> = self
            .inode_of
            .keys()
            .filter(|n| self.up.get(*n) != Some(&1.0))
            .collect();
        if !down.is_empty() {
            return Some(format!(
                "{} namespaces without sockdiag_netns_up 1 (e.g. {})",
                down.len(),
                down[0]
            ));
        }
        for c in ["listeners", "connections"] {
            if !self.pass.contains_key(c) {
                return Some(format!(
                    "no sockdiag_collector_duration_seconds{{collector={c:?}}}"
                ));
            }
            if let Some(n) = self
                .inode_of
                .keys()
                .find(|n| !self.sample.contains_key(&((*n).clone(), c.to_string())))
            {
                return Some(format!("no {c} sample duration for namespace {n} yet"));
            }
        }
        None
    }

    /// Per-namespace sample durations of `collector` in namespaces playing `role`.
    fn samples_of(&self, expected: &HashMap<u64, Role>, role: Role, collector: &str) -> Vec<f64> {
        self.inode_of
            .iter()
            .filter(|(_, i)| expected.get(i) == Some(&role))
            .filter_map(|(n, _)| {
                self.sample
                    .get(&(n.clone(), collector.to_string()))
                    .copied()
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------
// One daemon run.

/// What one daemon run measured, over its sampling window.
struct DaemonRun {
    label: String,
    args: Vec<String>,
    namespaces: usize,
    ready_seconds: f64,
    window: daemon::Window,
    series: usize,
    bytes: usize,
    scrapes: Vec<Figures>,
    expected: HashMap<u64, Role>,
    /// What went unexpected while sampling, each once.
    warnings: Vec<String>,
}

impl DaemonRun {
    fn cpu_percent(&self) -> f64 {
        100.0 * self.window.cpu_fraction()
    }

    /// Median over scrapes of the last full pass of `collector`.
    fn pass(&self, collector: &str) -> Option<f64> {
        measure::median(
            self.scrapes
                .iter()
                .filter_map(|f| f.pass.get(collector).copied())
                .collect(),
        )
    }

    /// Median over scrapes of the median over `role`'s namespaces of their last sample.
    fn per_ns(&self, role: Role, collector: &str) -> Option<f64> {
        measure::median(
            self.scrapes
                .iter()
                .filter_map(|f| measure::median(f.samples_of(&self.expected, role, collector)))
                .collect(),
        )
    }

    fn json(&self) -> Value {
        let per_ns = |role| {
            json!({
                "listeners_seconds": self.per_ns(role, "listeners"),
                "connections_seconds": self.per_ns(role, "connections"),
            })
        };
        let series = |collector: &str| -> Vec<Option<f64>> {
            self.scrapes
                .iter()
                .map(|f| f.pass.get(collector).copied())
                .collect()
        };
        json!({
            "label": self.label,
            "daemon_args": self.args,
            "namespaces": self.namespaces,
            "ready_seconds": self.ready_seconds,
            "window_seconds": self.window.seconds,
            "cpu_seconds": self.window.cpu_seconds,
            "cpu_percent_of_one_core": self.cpu_percent(),
            "peak_rss_bytes": self.window.vm_hwm_bytes,
            "metrics_series": self.series,
            "metrics_bytes": self.bytes,
            "scrapes": self.scrapes.len(),
            "median_listeners_pass_seconds": self.pass("listeners"),
            "median_connections_pass_seconds": self.pass("connections"),
            "per_namespace_median": {
                "host": per_ns(Role::Host),
                "small": per_ns(Role::Small),
                "big": per_ns(Role::Big),
            },
            "warnings": self.warnings,
            "listeners_pass_seconds_per_scrape": series("listeners"),
            "connections_pass_seconds_per_scrape": series("connections"),
        })
    }
}

fn daemon_args(ctx: &Ctx, all_namespaces: bool) -> Vec<String> {
    let mut args = vec![
        "--collector.connections.interval".to_string(),
        CONNECTIONS_INTERVAL.to_string(),
        "--path.run-netns".to_string(),
        ctx.run_netns.display().to_string(),
        "--log.level".to_string(),
        "warn".to_string(),
    ];
    if !ctx.opts.processes {
        args.push("--no-collector.processes".to_string());
    }
    if !all_namespaces {
        args.push("--no-collector.netns".to_string());
    }
    args
}

/// Starts the daemon, waits (bounded) until it reports exactly the `expected` namespaces
/// up with a sample of each, lets one more connections pass run, then scrapes it every
/// [`SCRAPE_EVERY`] for `opts.seconds` and reads its CPU time over that window and its peak
/// RSS.
fn run_daemon(
    ctx: &Ctx,
    label: &str,
    all_namespaces: bool,
    expected: HashMap<u64, Role>,
) -> Result<DaemonRun> {
    let opts = ctx.opts;
    let args = daemon_args(ctx, all_namespaces);
    eprintln!(
        "sockdiag-bench: daemon ({label}): waiting for {} namespaces, then sampling for {} s",
        expected.len(),
        opts.seconds
    );
    let mut d = daemon::Running::start(ctx.exporter, &args)?;
    d.ready_or_fail(
        Duration::from_millis(250),
        READY_TIMEOUT,
        |page| match page {
            Ok((_, body)) => Figures::parse(&body).not_ready(&expected),
            Err(e) => Some(e),
        },
    )
    .with_context(|| format!("the daemon ({label}) reporting every namespace"))?;
    let ready_seconds = d.started.elapsed().as_secs_f64();
    // One more connections pass, so that no figure is the first, cold one.
    std::thread::sleep(Duration::from_secs(2));

    let mut scrapes = Vec::new();
    let mut warnings: Vec<String> = Vec::new();
    let (mut series, mut bytes) = (0, 0);
    let window = d
        .sample_window(
            Duration::from_secs(opts.seconds),
            SCRAPE_EVERY,
            |scrape, body| {
                (series, bytes) = (scrape.series, scrape.bytes);
                let f = Figures::parse(body);
                if let Some(why) = f.not_ready(&expected).filter(|w| !warnings.contains(w)) {
                    eprintln!("sockdiag-bench: warning: daemon ({label}): {why}");
                    warnings.push(why);
                }
                scrapes.push(f);
            },
        )
        .with_context(|| format!("the daemon ({label})"))?;
    drop(d);
    Ok(DaemonRun {
        label: label.to_string(),
        args,
        namespaces: expected.len(),
        ready_seconds,
        window,
        series,
        bytes,
        scrapes,
        expected,
        warnings,
    })
}

// ---------------------------------------------------------------------------------------
// The coordinator.

/// What every part of the coordinator needs.
struct Ctx<'a> {
    opts: &'a NamespacesOpts,
    exporter: &'a Path,
    /// This executable, run again as holders.
    exe: PathBuf,
    /// An empty directory, the daemon's `--path.run-netns`: it then finds only the
    /// namespaces of processes in the bench's user namespace, not those others named with
    /// `ip netns` on this machine, which it could not enter.
    run_netns: PathBuf,
}

impl<'a> Ctx<'a> {
    fn new(opts: &'a NamespacesOpts, exporter: &'a Path) -> Result<Ctx<'a>> {
        let Some(run_netns) = opts.run_netns_dir.clone() else {
            bail!("internal-namespaces needs --run-netns-dir");
        };
        Ok(Ctx {
            opts,
            exporter,
            exe: std::env::current_exe().context("locating this executable")?,
            run_netns,
        })
    }
}

fn own_netns_inode() -> Result<u64> {
    Ok(std::fs::metadata("/proc/self/ns/net")
        .context("stat of /proc/self/ns/net")?
        .ino())
}

/// Median wall time of a few raw dumps of every TCP socket in the bench's own namespace,
/// which holds none: what the kernel's walk of the host-wide table costs by itself.
fn raw_host_walk() -> Result<f64> {
    let mut times = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        diag::dump_tcp(|_| {})?;
        times.push(start.elapsed().as_secs_f64());
    }
    Ok(measure::median(times).unwrap_or(f64::NAN))
}

/// Namespaces the daemon must report: `host` and every holder, by inode.
fn expected_namespaces(holders: &Holders) -> Result<HashMap<u64, Role>> {
    let mut m: HashMap<u64, Role> = holders.list.iter().map(|h| (h.inode, h.role)).collect();
    m.insert(own_netns_inode()?, Role::Host);
    Ok(m)
}

fn small_holder_args(opts: &NamespacesOpts) -> Vec<String> {
    vec![
        "--listeners".to_string(),
        opts.listeners_per_ns.to_string(),
        "--connections".to_string(),
        opts.connections_per_ns.to_string(),
    ]
}

/// Starts `count` small holders and waits until all are ready.
fn start_small(holders: &mut Holders, ctx: &Ctx, count: u32) -> Result<()> {
    let from = holders.list.len();
    let args = small_holder_args(ctx.opts);
    for _ in 0..count {
        holders.spawn(&ctx.exe, Role::Small, &args)?;
    }
    holders.wait_ready(
        from,
        Duration::from_secs(60) + Duration::from_millis(200) * count,
    )
}

/// Writes `net.ipv4.tcp_child_ehash_entries` of the bench's namespace: namespaces created
/// from it afterwards get an established hash of their own of that size (0: the shared one).
fn set_child_ehash(entries: u64) -> Result<()> {
    std::fs::write(CHILD_EHASH_SYSCTL, entries.to_string())
        .with_context(|| format!("writing {entries} to {CHILD_EHASH_SYSCTL}"))
}

/// One bucket per socket, rounded up to a power of two, within what the kernel accepts.
fn ehash_for(sockets: u64) -> u64 {
    sockets.next_power_of_two().clamp(128, MAX_CHILD_EHASH)
}

pub fn internal_main(opts: &NamespacesOpts, exporter: &Path) -> Result<ExitCode> {
    namespace::bring_loopback_up()?;
    namespace::tune_sysctls();
    namespace::raise_nofile_limit()?;
    let ctx = Ctx::new(opts, exporter)?;
    let (markdown, doc) = match opts.big_ns_connections {
        None => many_small(&ctx)?,
        Some(n) => one_big(&ctx, n)?,
    };
    print!("{markdown}");
    report::write_json(opts.json.as_deref(), || report::json_text(&doc))?;
    Ok(ExitCode::SUCCESS)
}

fn environment() -> Value {
    json!({
        "kernel": report::kernel(),
        "cpus": report::cpus(),
        "daemon_listen": LISTEN,
        "connections_interval": CONNECTIONS_INTERVAL,
        "scrape_every_seconds": SCRAPE_EVERY.as_secs_f64(),
    })
}

/// Scenario 1: K small namespaces, the daemon on all of them against the daemon on its
/// own namespace only.
fn many_small(ctx: &Ctx) -> Result<(String, Value)> {
    let opts = ctx.opts;
    let k = opts.small_namespaces();
    let (l, c) = (opts.listeners_per_ns, opts.connections_per_ns);
    eprintln!(
        "sockdiag-bench: starting {k} network namespaces with {l} listeners and {c} \
         connections each"
    );
    let mut holders = Holders::default();
    let start = Instant::now();
    start_small(&mut holders, ctx, k)?;
    let setup_seconds = start.elapsed().as_secs_f64();
    let host_walk = raw_host_walk()?;
    let expected = expected_namespaces(&holders)?;
    let host_only: HashMap<u64, Role> = expected
        .iter()
        .filter(|(_, r)| **r == Role::Host)
        .map(|(i, r)| (*i, *r))
        .collect();
    let base = run_daemon(ctx, "host only", false, host_only)?;
    let all = run_daemon(ctx, "every namespace", true, expected)?;
    eprintln!("sockdiag-bench: tearing down");
    holders.shutdown();

    let mut s = format!(
        "## sockdiag-bench namespaces: {k} namespaces x ({l} listeners, {c} connections)\n\n\
         {k} child network namespaces, each held by one process with {l} listeners and {c} \
         loopback connections ({} sockets in all), set up in {setup_seconds:.2} s; `host` is \
         the bench's own namespace, holding only the daemon. Daemon: `{}`; /metrics scraped \
         every {} s for {} s once every namespace was up, medians over scrapes. A raw dump of \
         the empty `host` walks the shared table in {}. {}.\n\n",
        u64::from(k) * (u64::from(l) + 2 * c),
        daemon_args(ctx, true).join(" "),
        SCRAPE_EVERY.as_secs(),
        opts.seconds,
        ms(Some(host_walk)),
        report::kernel_and_cpus(),
    );
    s.push_str(
        "| daemon | namespaces | listeners pass | connections pass | connections sample per \
         child namespace | connections sample of host | CPU (% of one core) | peak RSS | series |\n",
    );
    s.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for (name, r) in [
        ("host only (`--no-collector.netns`)", &base),
        ("every namespace", &all),
    ] {
        s.push_str(&format!(
            "| {name} | {} | {} | {} | {} | {} | {:.1}% | {} | {} |\n",
            r.namespaces,
            ms(r.pass("listeners")),
            ms(r.pass("connections")),
            ms(r.per_ns(Role::Small, "connections")),
            ms(r.per_ns(Role::Host, "connections")),
            r.cpu_percent(),
            mib(r.window.vm_hwm_bytes),
            r.series,
        ));
    }
    s.push_str(&format!(
        "| ratio | {} | {} | {} | | {} | {} | {} | {} |\n",
        ratio(Some(all.namespaces as f64), Some(base.namespaces as f64)),
        ratio(all.pass("listeners"), base.pass("listeners")),
        ratio(all.pass("connections"), base.pass("connections")),
        ratio(
            all.per_ns(Role::Host, "connections"),
            base.per_ns(Role::Host, "connections")
        ),
        ratio(Some(all.cpu_percent()), Some(base.cpu_percent())),
        ratio(
            Some(all.window.vm_hwm_bytes as f64),
            Some(base.window.vm_hwm_bytes as f64)
        ),
        ratio(Some(all.series as f64), Some(base.series as f64)),
    ));
    s.push_str(&warnings_md(&[&base, &all]));
    if let (Some(per), Some(host)) = (
        all.per_ns(Role::Small, "connections"),
        all.per_ns(Role::Host, "connections"),
    ) {
        s.push_str(&format!(
            "\nPer child namespace a connections sample costs {} against {} for `host`; \
             listeners samples cost {} per child namespace.\n",
            ms(Some(per)),
            ms(Some(host)),
            ms(all.per_ns(Role::Small, "listeners")),
        ));
    }
    let doc = json!({
        "scenario": "many_small",
        "environment": environment(),
        "namespaces": k,
        "listeners_per_ns": l,
        "connections_per_ns": c,
        "setup_seconds": setup_seconds,
        "raw_host_walk_seconds": host_walk,
        "runs": [base.json(), all.json()],
    });
    Ok((s, doc))
}

/// What one half of scenario 2 measured.
struct Half {
    title: &'static str,
    setup_seconds: f64,
    host_walk: f64,
    ehash_big: Option<i64>,
    ehash_small: Vec<i64>,
    ehash_host: Option<i64>,
    run: DaemonRun,
}

/// Builds the big namespace and `k` small ones, measures the daemon on them, tears them
/// down. `ehash` is `(big, small)` entries for per-namespace hashes, `None` for the
/// shared one.
fn big_half(ctx: &Ctx, n: u64, ehash: Option<(u64, u64)>, title: &'static str) -> Result<Half> {
    let k = ctx.opts.small_namespaces();
    let mut holders = Holders::default();
    let start = Instant::now();
    if let Some((big, _)) = ehash {
        set_child_ehash(big)?;
    }
    eprintln!("sockdiag-bench: {title}: setting up a namespace with {n} connections");
    holders.spawn(
        &ctx.exe,
        Role::Big,
        &[
            "--listeners",
            "16",
            "--connections",
            "0",
            "--big",
            &n.to_string(),
        ]
        .map(String::from),
    )?;
    if let Some((_, small)) = ehash {
        set_child_ehash(small)?;
    }
    let started = holders.wait_ready(0, Duration::from_secs(120 + n / 1000));
    // Whatever happened, later namespaces (and other runs) start from the shared table.
    if ehash.is_some() {
        set_child_ehash(0)?;
    }
    started?;
    if let Some((_, small)) = ehash {
        set_child_ehash(small)?;
    }
    let started = start_small(&mut holders, ctx, k);
    if ehash.is_some() {
        set_child_ehash(0)?;
    }
    started?;
    let setup_seconds = start.elapsed().as_secs_f64();
    let host_walk = raw_host_walk()?;
    let expected = expected_namespaces(&holders)?;
    let run = run_daemon(ctx, title, true, expected)?;
    let half = Half {
        title,
        setup_seconds,
        host_walk,
        ehash_big: holders.of(Role::Big).find_map(|h| h.ehash),
        ehash_small: holders.of(Role::Small).filter_map(|h| h.ehash).collect(),
        ehash_host: own_ehash_entries(),
        run,
    };
    eprintln!("sockdiag-bench: {title}: tearing down");
    holders.shutdown();
    Ok(half)
}

/// Waits (bounded) until a raw dump of `host` is back near `empty`: a torn-down
/// namespace's sockets leave the shared table only once the kernel has cleaned the
/// namespace up.
fn settle(empty: f64) -> Result<()> {
    let start = Instant::now();
    loop {
        let now = raw_host_walk()?;
        if now <= 1.5 * empty + 0.001 {
            return Ok(());
        }
        if start.elapsed() > SETTLE_TIMEOUT {
            eprintln!(
                "sockdiag-bench: warning: a raw dump of host still takes {} ({} before setup) \
                 after {} s: the table still holds sockets of torn-down namespaces or of \
                 others on this machine",
                ms(Some(now)),
                ms(Some(empty)),
                SETTLE_TIMEOUT.as_secs()
            );
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Scenario 2: one big namespace next to K small ones, with the shared established hash
/// and with per-namespace ones.
fn one_big(ctx: &Ctx, n: u64) -> Result<(String, Value)> {
    let opts = ctx.opts;
    let k = opts.small_namespaces();
    let small_sockets = u64::from(opts.listeners_per_ns) + 2 * opts.connections_per_ns;
    let (big_entries, small_entries) = match opts.child_ehash_entries {
        Some(e) => (e, e),
        None => (ehash_for(2 * n + 16), ehash_for(small_sockets)),
    };
    let empty_walk = raw_host_walk()?;
    // Namespaces created from this one share the host-wide table unless this says otherwise.
    let private_ok = match std::fs::read_to_string(CHILD_EHASH_SYSCTL) {
        Ok(v) if v.trim() == "0" => Ok(()),
        Ok(_) => set_child_ehash(0),
        Err(e) => Err(e).with_context(|| format!("reading {CHILD_EHASH_SYSCTL}")),
    };
    let shared = big_half(ctx, n, None, "shared established hash")?;
    let private = match private_ok.and_then(|()| {
        settle(empty_walk)?;
        set_child_ehash(big_entries)?;
        set_child_ehash(0)?;
        Ok(())
    }) {
        Ok(()) => Some(big_half(
            ctx,
            n,
            Some((big_entries, small_entries)),
            "per-namespace established hash",
        )?),
        Err(e) => {
            eprintln!(
                "sockdiag-bench: per-namespace hashes unavailable, second half skipped: {e:#}"
            );
            None
        }
    };
    let skipped_why = if private.is_none() {
        Some(format!(
            "{CHILD_EHASH_SYSCTL} cannot be written here (it exists since Linux 6.1)"
        ))
    } else {
        None
    };

    let mut s = format!(
        "## sockdiag-bench namespaces: one namespace with {n} connections, {k} small ones\n\n\
         One child namespace holds {n} loopback connections ({} sockets, 16 listeners); {k} \
         small ones hold {} listeners and {} connections each; `host` is the bench's own \
         namespace, holding only the daemon. Daemon: `{}`; /metrics scraped every {} s for {} \
         s once every namespace was up, medians over scrapes. Per-namespace hashes: \
         `net.ipv4.tcp_child_ehash_entries` = {big_entries} while the big namespace was \
         created, {small_entries} for the small ones. A raw dump of the empty `host` took {} \
         before any setup. {}.\n\n",
        2 * n + 16,
        opts.listeners_per_ns,
        opts.connections_per_ns,
        shared.run.args.join(" "),
        SCRAPE_EVERY.as_secs(),
        opts.seconds,
        ms(Some(empty_walk)),
        report::kernel_and_cpus(),
    );
    let halves: Vec<&Half> = std::iter::once(&shared).chain(private.as_ref()).collect();
    s.push('|');
    for h in &halves {
        s.push_str(&format!(" | {}", h.title));
    }
    if halves.len() == 2 {
        s.push_str(" | shared / per-namespace");
    }
    s.push_str(" |\n|---");
    s.push_str(&"|---:".repeat(halves.len() + usize::from(halves.len() == 2)));
    s.push_str("|\n");
    let time = |name: &str, f: &dyn Fn(&Half) -> Option<f64>| figure_row(name, &halves, f, ms);
    s.push_str(&time("connections pass, all namespaces", &|h| {
        h.run.pass("connections")
    }));
    s.push_str(&time("connections sample: big namespace", &|h| {
        h.run.per_ns(Role::Big, "connections")
    }));
    s.push_str(&time("connections sample: host (empty)", &|h| {
        h.run.per_ns(Role::Host, "connections")
    }));
    s.push_str(&time(
        "connections sample: small namespace (median)",
        &|h| h.run.per_ns(Role::Small, "connections"),
    ));
    s.push_str(&time("listeners pass, all namespaces", &|h| {
        h.run.pass("listeners")
    }));
    s.push_str(&time("listeners sample: small namespace (median)", &|h| {
        h.run.per_ns(Role::Small, "listeners")
    }));
    s.push_str(&time("raw dump of host, daemon stopped", &|h| {
        Some(h.host_walk)
    }));
    s.push_str(&figure_row(
        "daemon CPU (% of one core)",
        &halves,
        &|h| Some(h.run.cpu_percent()),
        |v| v.map_or("-".to_string(), |v| format!("{v:.1}%")),
    ));
    s.push_str(&figure_row(
        "daemon peak RSS",
        &halves,
        &|h| Some(h.run.window.vm_hwm_bytes as f64),
        |v| v.map_or("-".to_string(), |v| mib(v as u64)),
    ));
    s.push_str(&text_row(
        "tcp_ehash_entries: big / small / host",
        &halves,
        |h| {
            let e = |v: Option<i64>| v.map_or("?".to_string(), |v| v.to_string());
            let small = match (h.ehash_small.iter().min(), h.ehash_small.iter().max()) {
                (Some(a), Some(b)) if a == b => a.to_string(),
                (Some(a), Some(b)) => format!("{a}..{b}"),
                _ => "?".to_string(),
            };
            format!("{} / {small} / {}", e(h.ehash_big), e(h.ehash_host))
        },
    ));
    s.push_str(&text_row("setup", &halves, |h| {
        format!("{:.1} s", h.setup_seconds)
    }));
    s.push_str("\nA negative tcp_ehash_entries means the namespace shares the host-wide table.\n");
    if let Some(why) = &skipped_why {
        s.push_str(&format!("\nPer-namespace hashes: skipped: {why}.\n"));
    }
    s.push_str(&warnings_md(
        &halves.iter().map(|h| &h.run).collect::<Vec<_>>(),
    ));
    for h in &halves {
        if let (Some(small), Some(big)) = (
            h.run.per_ns(Role::Small, "connections"),
            h.run.per_ns(Role::Big, "connections"),
        ) {
            let rest = h
                .run
                .pass("connections")
                .map_or("-".to_string(), |pass| ms(Some(pass - big)));
            s.push_str(&format!(
                "\n{}: a small namespace's connections sample costs {} ({} of the big \
                 namespace's {}); a pass spends {rest} outside the big namespace, on the other \
                 {} namespaces.\n",
                h.title,
                ms(Some(small)),
                percent(small / big),
                ms(Some(big)),
                h.run.namespaces - 1,
            ));
        }
    }
    let half_json = |h: &Half| {
        json!({
            "title": h.title,
            "setup_seconds": h.setup_seconds,
            "raw_host_walk_seconds": h.host_walk,
            "tcp_ehash_entries": {
                "big": h.ehash_big,
                "small": h.ehash_small,
                "host": h.ehash_host,
            },
            "run": h.run.json(),
        })
    };
    let doc = json!({
        "scenario": "one_big",
        "environment": environment(),
        "big_ns_connections": n,
        "namespaces": k,
        "listeners_per_ns": opts.listeners_per_ns,
        "connections_per_ns": opts.connections_per_ns,
        "child_ehash_entries": {"big": big_entries, "small": small_entries},
        "raw_host_walk_before_setup_seconds": empty_walk,
        "shared": half_json(&shared),
        "per_namespace": private.as_ref().map(half_json),
        "per_namespace_skipped": skipped_why,
    });
    Ok((s, doc))
}

fn ms(v: Option<f64>) -> String {
    match v {
        None => "-".to_string(),
        Some(s) if !s.is_finite() => "-".to_string(),
        Some(s) => {
            let m = s * 1000.0;
            if m >= 100.0 {
                format!("{m:.0} ms")
            } else if m >= 10.0 {
                format!("{m:.1} ms")
            } else if m >= 0.1 {
                format!("{m:.2} ms")
            } else {
                format!("{m:.3} ms")
            }
        }
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 && a.is_finite() => format!("{:.1}x", a / b),
        _ => "-".to_string(),
    }
}

fn percent(x: f64) -> String {
    match 100.0 * x {
        p if !p.is_finite() => "-".to_string(),
        p if p < 1.0 => format!("{p:.2}%"),
        p => format!("{p:.0}%"),
    }
}

/// What went unexpected while sampling, under the table.
fn warnings_md(runs: &[&DaemonRun]) -> String {
    let mut s = String::new();
    for r in runs {
        for w in &r.warnings {
            s.push_str(&format!("\nWarning ({}): while sampling, {w}.\n", r.label));
        }
    }
    s
}

/// A table row of one figure per half, and with two halves the first over the second.
fn figure_row(
    name: &str,
    halves: &[&Half],
    f: &dyn Fn(&Half) -> Option<f64>,
    fmt: fn(Option<f64>) -> String,
) -> String {
    let mut row = format!("| {name}");
    for h in halves {
        row.push_str(&format!(" | {}", fmt(f(h))));
    }
    if let [a, b] = halves {
        row.push_str(&format!(" | {}", ratio(f(a), f(b))));
    }
    row.push_str(" |\n");
    row
}

/// A table row of text cells, one per half.
fn text_row(name: &str, halves: &[&Half], f: impl Fn(&Half) -> String) -> String {
    let mut row = format!("| {name}");
    for h in halves {
        row.push_str(&format!(" | {}", f(h)));
    }
    if halves.len() == 2 {
        row.push_str(" |");
    }
    row.push_str(" |\n");
    row
}

// ---------------------------------------------------------------------------------------
// The outer process.

/// `namespaces`: resolves paths against the user's working directory, then hands over to
/// a coordinator inside a new user + network namespace.
pub fn run_outer(opts: BenchOpts, mut ns: NamespacesOpts) -> Result<ExitCode> {
    let exporter = crate::resolve_exporter(opts.exporter.as_deref())?;
    ns.json = crate::absolute(ns.json.take().or(opts.json), "--json")?;
    let run_netns =
        std::env::temp_dir().join(format!("sockdiag-bench-run-netns.{}", std::process::id()));
    ns.run_netns_dir = Some(run_netns.clone());
    let mut args: Vec<OsString> = vec!["--exporter".into(), exporter.into()];
    args.push("internal-namespaces".into());
    args.extend(ns.to_args());
    let status = namespace::with_dir(&run_netns, || namespace::run_in_new_namespace(&args))?;
    namespace::exit_code_of(status?, "the namespace coordinator")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_parse_with_and_without_labels() {
        let (n, l, v) =
            parse_sample(r#"sockdiag_netns_info{netns="ino:4026532",inode="4026532",pid="7"} 1"#)
                .unwrap();
        assert_eq!(n, "sockdiag_netns_info");
        assert_eq!(label(&l, "netns"), Some("ino:4026532"));
        assert_eq!(label(&l, "inode"), Some("4026532"));
        assert_eq!(v, 1.0);
        let (n, l, v) = parse_sample("sockdiag_up 0.5").unwrap();
        assert_eq!((n, l.len(), v), ("sockdiag_up", 0, 0.5));
        let (_, l, v) = parse_sample(r#"x{a="q\"u,o}te",b="\\"} 2e-3 1700000000"#).unwrap();
        assert_eq!(label(&l, "a"), Some("q\"u,o}te"));
        assert_eq!(label(&l, "b"), Some("\\"));
        assert_eq!(v, 0.002);
        assert!(parse_sample("# HELP x y").is_none());
        assert!(parse_sample("").is_none());
        assert!(parse_sample(r#"x{a="unterminated} 1"#).is_none());
    }

    #[test]
    fn readiness_needs_every_expected_namespace_up_with_samples() {
        let body = "\
sockdiag_collector_duration_seconds{collector=\"listeners\"} 0.001
sockdiag_collector_duration_seconds{collector=\"connections\"} 0.01
sockdiag_netns_info{netns=\"host\",inode=\"1\"} 1
sockdiag_netns_info{netns=\"ino:2\",inode=\"2\"} 1
sockdiag_netns_up{netns=\"host\"} 1
sockdiag_netns_up{netns=\"ino:2\"} 1
sockdiag_netns_sample_duration_seconds{netns=\"host\",collector=\"listeners\"} 0.0004
sockdiag_netns_sample_duration_seconds{netns=\"host\",collector=\"connections\"} 0.004
sockdiag_netns_sample_duration_seconds{netns=\"ino:2\",collector=\"listeners\"} 0.0006
sockdiag_netns_sample_duration_seconds{netns=\"ino:2\",collector=\"connections\"} 0.006
";
        let expected: HashMap<u64, Role> = [(1, Role::Host), (2, Role::Small)].into();
        let f = Figures::parse(body);
        assert_eq!(f.not_ready(&expected), None);
        assert_eq!(
            f.samples_of(&expected, Role::Small, "connections"),
            vec![0.006]
        );
        let more: HashMap<u64, Role> = [(1, Role::Host), (2, Role::Small), (3, Role::Big)].into();
        assert!(
            f.not_ready(&more)
                .unwrap()
                .contains("1 of the 3 expected missing")
        );
        let down = Figures::parse(&body.replace("netns_up{netns=\"ino:2\"} 1", "x 1"));
        assert!(
            down.not_ready(&expected)
                .unwrap()
                .contains("sockdiag_netns_up")
        );
    }

    #[test]
    fn per_namespace_hash_sizes_are_powers_of_two_within_the_kernel_range() {
        assert_eq!(ehash_for(104), 128);
        assert_eq!(ehash_for(200_016), 262_144);
        assert_eq!(ehash_for(1), 128);
        assert_eq!(ehash_for(u64::MAX / 4), MAX_CHILD_EHASH);
    }
}
