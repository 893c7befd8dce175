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
use crate::{BenchOpts, diag, measure, namespace, proc_util, report, setup, worker};

/// The daemon's connections interval here: several full passes within one window.
const CONNECTIONS_INTERVAL: &str = "2s";
/// Time between two scrapes of /metrics while sampling (`--scrape-every` changes it with
/// `--uneven`).
const SCRAPE_EVERY: Duration = Duration::from_secs(1);
/// Bounds of `--scrape-every`, in seconds.
const SCRAPE_EVERY_MIN: f64 = 0.2;
const SCRAPE_EVERY_MAX: f64 = 60.0;
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
    /// Child network namespaces with a few sockets each [default: 100; 10 with
    /// --big-ns-connections; 49 with --uneven, the troubled one included].
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub namespaces: Option<u32>,

    /// Listeners on 127.0.0.1 in each small (and, with --uneven, each empty) namespace.
    #[arg(long, default_value_t = 4, value_name = "L",
          value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub listeners_per_ns: u16,

    /// Loopback connections in each small namespace (accepted by the same process)
    /// [default: 50; 200 with --uneven].
    #[arg(long, value_name = "C", value_parser = clap::value_parser!(u64).range(0..=8000))]
    pub connections_per_ns: Option<u64>,

    /// Scenario 2: one child namespace holding N loopback connections next to the small
    /// ones, measured with the shared established hash and again with per-namespace hashes.
    /// With --uneven, the big namespace's connections [default there: 90k]. Accepts a k / M
    /// suffix.
    #[arg(long, value_name = "N", value_parser = crate::parse_count)]
    pub big_ns_connections: Option<u64>,

    /// Buckets of every child's own established hash in the second half of scenario 2
    /// (and of --uneven) [default: one per socket the namespace holds, rounded up to a
    /// power of two].
    #[arg(long, value_name = "ENTRIES",
          value_parser = clap::value_parser!(u64).range(1..=MAX_CHILD_EHASH))]
    pub child_ehash_entries: Option<u64>,

    /// Seconds of sampling /metrics per daemon run [default: 20; 120 with --uneven].
    #[arg(long, value_name = "S", value_parser = clap::value_parser!(u64).range(4..=600))]
    pub seconds: Option<u64>,

    /// The uneven layout at the daemon's default flags (issue 12): one big namespace
    /// (--big-ns-connections), --namespaces small ones with --connections-per-ns each (one
    /// of them in trouble: a listener nobody accepts from, its queue full), and
    /// --empty-namespaces with listeners only; the daemon's CPU, the listener pass period
    /// and the age of every namespace's figures, with the shared established hash and with
    /// per-namespace ones.
    #[arg(long)]
    pub uneven: bool,

    /// With --uneven: namespaces holding --listeners-per-ns listeners and no connection
    /// [default: 50].
    #[arg(long, value_name = "E", requires = "uneven",
          value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub empty_namespaces: Option<u32>,

    /// With --uneven: daemon runs of each build per established-hash setting, on the same
    /// namespaces; with --baseline-exporter the baseline runs second in odd rounds and
    /// first in even ones.
    #[arg(long, default_value_t = 1, value_name = "R", requires = "uneven",
          value_parser = clap::value_parser!(u32).range(1..=20))]
    pub rounds: u32,

    /// With --uneven: seconds between two scrapes of /metrics while sampling (0.2-60), each
    /// at a random point of its slot. Every scrape costs the daemon a page to render; a
    /// Prometheus scrapes every 15-30 s. The window needs two scrapes at least (--seconds
    /// above this).
    #[arg(long, default_value_t = 1.0, value_name = "SECONDS", requires = "uneven",
          value_parser = parse_scrape_every)]
    pub scrape_every: f64,

    /// With --uneven: a second exporter binary (the build before a change) run in every
    /// round on the same namespaces, back to back with the one under test; the table adds
    /// the ratios new / baseline.
    #[arg(long, value_name = "PATH")]
    pub baseline_exporter: Option<PathBuf>,

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

/// The big namespace of `--uneven` unless `--big-ns-connections` says otherwise.
const UNEVEN_BIG: u64 = 90_000;
/// `--uneven`'s small namespaces, the troubled one included.
const UNEVEN_SMALL: u32 = 49;
/// `--uneven`'s empty namespaces.
const UNEVEN_EMPTY: u32 = 50;
/// Connections of each small namespace of `--uneven`.
const UNEVEN_CONNECTIONS_PER_NS: u64 = 200;
/// `--uneven` samples for two minutes: eight periods of the default 15 s connection tier.
const UNEVEN_SECONDS: u64 = 120;

/// `--scrape-every`: a number of seconds within [`SCRAPE_EVERY_MIN`, `SCRAPE_EVERY_MAX`].
fn parse_scrape_every(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(SCRAPE_EVERY_MIN..=SCRAPE_EVERY_MAX).contains(&v) {
        return Err(format!(
            "{s} s is out of range: {SCRAPE_EVERY_MIN} to {SCRAPE_EVERY_MAX} s"
        ));
    }
    Ok(v)
}

impl NamespacesOpts {
    /// Time between two scrapes while sampling: `--scrape-every` (1 s unless `--uneven`
    /// says otherwise).
    pub(crate) fn scrape_every(&self) -> Duration {
        if self.uneven {
            Duration::from_secs_f64(self.scrape_every)
        } else {
            SCRAPE_EVERY
        }
    }

    /// Scrapes in each sampling window: one per slot of [`Self::scrape_every`] that starts
    /// within `--seconds`.
    pub(crate) fn scrapes_per_window(&self) -> u64 {
        let (window, every) = (
            Duration::from_secs(self.seconds()).as_nanos(),
            self.scrape_every().as_nanos().max(1),
        );
        window.div_ceil(every) as u64
    }

    /// Checks what clap cannot: a window of two scrapes at least, which the pass periods
    /// and the CPU by collector need (both are rates between the first and the last).
    pub(crate) fn check(&self) -> Result<()> {
        let n = self.scrapes_per_window();
        if n < 2 {
            bail!(
                "--scrape-every {} with --seconds {} leaves {n} scrape in each window; pass \
                 periods and CPU by collector need two: lower --scrape-every or raise --seconds",
                self.scrape_every,
                self.seconds()
            );
        }
        Ok(())
    }

    pub(crate) fn small_namespaces(&self) -> u32 {
        self.namespaces.unwrap_or(if self.uneven {
            UNEVEN_SMALL
        } else if self.big_ns_connections.is_some() {
            10
        } else {
            100
        })
    }

    pub(crate) fn connections_per_ns(&self) -> u64 {
        self.connections_per_ns.unwrap_or(if self.uneven {
            UNEVEN_CONNECTIONS_PER_NS
        } else {
            50
        })
    }

    pub(crate) fn seconds(&self) -> u64 {
        self.seconds
            .unwrap_or(if self.uneven { UNEVEN_SECONDS } else { 20 })
    }

    /// The big namespace's connections: `--big-ns-connections`, or `--uneven`'s default.
    pub(crate) fn big_connections(&self) -> Option<u64> {
        match self.big_ns_connections {
            None if self.uneven => Some(UNEVEN_BIG),
            n => n,
        }
    }

    pub(crate) fn empty_namespaces(&self) -> u32 {
        self.empty_namespaces.unwrap_or(UNEVEN_EMPTY)
    }

    /// The same options as arguments, for the coordinator inside the namespace.
    fn to_args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec![
            "--namespaces".into(),
            self.small_namespaces().to_string().into(),
            "--listeners-per-ns".into(),
            self.listeners_per_ns.to_string().into(),
            "--connections-per-ns".into(),
            self.connections_per_ns().to_string().into(),
            "--seconds".into(),
            self.seconds().to_string().into(),
        ];
        if let Some(n) = self.big_ns_connections {
            a.extend(["--big-ns-connections".into(), n.to_string().into()]);
        }
        if let Some(e) = self.child_ehash_entries {
            a.extend(["--child-ehash-entries".into(), e.to_string().into()]);
        }
        if self.uneven {
            a.extend([
                "--uneven".into(),
                "--empty-namespaces".into(),
                self.empty_namespaces().to_string().into(),
                "--rounds".into(),
                self.rounds.to_string().into(),
                "--scrape-every".into(),
                self.scrape_every.to_string().into(),
            ]);
        }
        if self.processes {
            a.push("--processes".into());
        }
        crate::push_flag(&mut a, "--json", self.json.as_deref());
        crate::push_flag(
            &mut a,
            "--baseline-exporter",
            self.baseline_exporter.as_deref(),
        );
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
    /// Also open a listener on 127.0.0.1:[`STUCK_PORT`] with this backlog that is never
    /// accepted from, and make --stuck-clients connections to it: a namespace in trouble.
    #[arg(long, requires = "stuck_clients")]
    stuck_backlog: Option<i32>,
    /// Connections made to the stuck listener (non-blocking; those beyond its queue's room
    /// stay in SYN-SENT, their SYNs dropped).
    #[arg(long)]
    stuck_clients: Option<u64>,
}

/// Port of the listener nobody accepts from in a troubled namespace: above every port
/// `--listeners-per-ns` can take.
pub const STUCK_PORT: u16 = setup::FIRST_PORT + 1000;

// ---------------------------------------------------------------------------------------
// The holder, inside its own network namespace.

/// This namespace's `tcp_ehash_entries`: negative when it shares the host-wide table.
pub(crate) fn own_ehash_entries() -> Option<i64> {
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

/// Connections a TCP accept queue holds: one more than its backlog (the kernel's queue is
/// full only when its length exceeds the limit).
pub fn stuck_queue_length(backlog: i32, clients: u64) -> u64 {
    clients.min(u64::try_from(backlog).unwrap_or(0) + 1)
}

/// Opens the stuck listener and `clients` non-blocking connections to it, which nobody
/// accepts; returns them all, listener first.
fn stuck_listener(backlog: i32, clients: u64) -> Result<Vec<OwnedFd>> {
    let mut held = vec![
        proc_util::loopback_listener(STUCK_PORT, backlog, true)
            .with_context(|| format!("listening on 127.0.0.1:{STUCK_PORT}"))?,
    ];
    let len = proc_util::len_of::<libc::sockaddr_in>();
    for i in 0..clients {
        let fd = proc_util::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0)
            .with_context(|| format!("stuck client {i}: socket()"))?;
        match proc_util::connect(&fd, &proc_util::sockaddr_v4(0x7f00_0001, STUCK_PORT), len) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => {
                return Err(e).with_context(|| format!("stuck client {i}: connect()"));
            }
        }
        held.push(fd);
    }
    Ok(held)
}

/// Checks a small namespace's census: `listeners` listeners, `connections` accepted
/// connections, and with a stuck listener its queue full and the rest of its clients
/// waiting in SYN-SENT. Loopback handshakes complete in softirq, so the census is retried
/// for up to 5 s.
fn verify_small(listeners: u16, connections: u64, stuck: Option<(i32, u64)>) -> Result<()> {
    let (queued, syn_sent) = stuck.map_or((0, 0), |(backlog, clients)| {
        let q = stuck_queue_length(backlog, clients);
        (q, clients - q)
    });
    let want_listeners = u64::from(listeners) + u64::from(stuck.is_some());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let c = diag::census().context("counting the namespace's sockets")?;
        let ok = c.listeners == want_listeners
            && c.established == 2 * (connections + queued)
            && c.accept_queued == queued
            && c.other_states == syn_sent;
        if ok {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "expected {want_listeners} listeners, {} established sockets, {queued} queued \
                 connections and {syn_sent} in other states; the dump shows {c:?}",
                2 * (connections + queued)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
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
            held.extend(listeners);
            let stuck = args.stuck_backlog.zip(args.stuck_clients);
            if let Some((backlog, clients)) = stuck {
                held.extend(stuck_listener(backlog, clients)?);
            }
            verify_small(args.listeners, args.connections, stuck)?;
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
pub(crate) enum Role {
    Host,
    Small,
    Big,
    /// Listeners only, no connection (`--uneven`).
    Empty,
    /// A small namespace with a stuck listener too (`--uneven`).
    Troubled,
}

impl Role {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Role::Host => "host",
            Role::Small => "small",
            Role::Big => "big",
            Role::Empty => "empty",
            Role::Troubled => "troubled",
        }
    }
}

pub(crate) struct Holder {
    helper: Helper,
    pub(crate) role: Role,
    /// The inode of its network namespace, as `sockdiag_netns_info{inode}` shows it.
    pub(crate) inode: u64,
    /// Its `tcp_ehash_entries` (negative: the host-wide table); `None` if unknown.
    pub(crate) ehash: Option<i64>,
}

/// Every holder started so far. Dropping it ends them all, by pid: on success and on
/// every error path alike.
#[derive(Default)]
pub(crate) struct Holders {
    pub(crate) list: Vec<Holder>,
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
    pub(crate) fn shutdown(&mut self) {
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

    pub(crate) fn of(&self, role: Role) -> impl Iterator<Item = &Holder> {
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
pub(crate) struct Figures {
    /// Unix time at which the scrape was sent (set by the caller; 0 if not).
    pub(crate) at: f64,
    /// sockdiag_collector_duration_seconds by collector.
    pass: HashMap<String, f64>,
    /// sockdiag_collector_passes_total by collector (builds that count passes).
    pub(crate) passes: HashMap<String, f64>,
    /// sockdiag_collector_cpu_seconds_total by collector (builds that count it): CPU
    /// seconds the daemon's sampling threads spent in that collector's samples.
    pub(crate) cpu: HashMap<String, f64>,
    /// netns label -> inode, from sockdiag_netns_info.
    pub(crate) inode_of: HashMap<String, u64>,
    /// netns label -> its lowest pid, from sockdiag_netns_info.
    pid_of: HashMap<String, String>,
    /// sockdiag_netns_up by netns label.
    up: HashMap<String, f64>,
    /// sockdiag_netns_sample_duration_seconds by (netns, collector).
    sample: HashMap<(String, String), f64>,
    /// sockdiag_netns_last_sample_timestamp_seconds by (netns, collector).
    pub(crate) last_sample: HashMap<(String, String), f64>,
    /// sockdiag_accept_queue_length of the stuck listener (port [`STUCK_PORT`]) by netns.
    pub(crate) stuck_queue: HashMap<String, f64>,
}

impl Figures {
    pub(crate) fn parse(body: &str) -> Figures {
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
                "sockdiag_netns_last_sample_timestamp_seconds" => {
                    if let (Some(n), Some(c)) = (l("netns"), l("collector")) {
                        f.last_sample.insert((n, c), value);
                    }
                }
                "sockdiag_collector_passes_total" => {
                    if let Some(c) = l("collector") {
                        f.passes.insert(c, value);
                    }
                }
                "sockdiag_collector_cpu_seconds_total" => {
                    if let Some(c) = l("collector") {
                        f.cpu.insert(c, value);
                    }
                }
                "sockdiag_accept_queue_length"
                    if l("port").as_deref() == Some(STUCK_PORT.to_string().as_str()) =>
                {
                    if let Some(n) = l("netns") {
                        f.stuck_queue.insert(n, value);
                    }
                }
                _ => {}
            }
        }
        f
    }

    /// Why this scrape does not yet show every expected namespace collected (up, with a
    /// sample of each of `need`), if it does not.
    fn not_ready(&self, expected: &HashMap<u64, Role>, need: &[&str]) -> Option<String> {
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
        for &c in need {
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
pub(crate) struct DaemonRun {
    label: String,
    pub(crate) args: Vec<String>,
    namespaces: usize,
    pub(crate) ready_seconds: f64,
    /// Unix time at which the daemon was started.
    pub(crate) started_unix: f64,
    pub(crate) window: daemon::Window,
    /// Sample lines and bytes of the last page.
    pub(crate) series: usize,
    bytes: usize,
    /// Wall time of every scrape in the window, connect to last byte.
    pub(crate) scrape_seconds: Vec<f64>,
    pub(crate) scrapes: Vec<Figures>,
    pub(crate) expected: HashMap<u64, Role>,
    /// What went unexpected, each once.
    pub(crate) warnings: Vec<String>,
}

/// Seconds since the Unix epoch, now.
pub(crate) fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl DaemonRun {
    /// A run with no scrapes yet, for tests of what reads them.
    #[cfg(test)]
    pub(crate) fn for_tests(expected: HashMap<u64, Role>) -> DaemonRun {
        DaemonRun {
            label: "test".to_string(),
            args: Vec::new(),
            namespaces: expected.len(),
            ready_seconds: 0.0,
            started_unix: 0.0,
            window: daemon::Window::default(),
            series: 0,
            bytes: 0,
            scrape_seconds: Vec::new(),
            scrapes: Vec::new(),
            expected,
            warnings: Vec::new(),
        }
    }

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

    pub(crate) fn json(&self) -> Value {
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
            "median_scrape_seconds": measure::median(self.scrape_seconds.clone()),
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

/// The daemon's arguments: `connections_interval` overrides the default (15 s), `None`
/// keeps it; every other interval is the default.
pub(crate) fn daemon_args(
    ctx: &Ctx,
    all_namespaces: bool,
    connections_interval: Option<&str>,
) -> Vec<String> {
    let mut args = Vec::new();
    if let Some(i) = connections_interval {
        args.extend([
            "--collector.connections.interval".to_string(),
            i.to_string(),
        ]);
    }
    args.extend([
        "--path.run-netns".to_string(),
        ctx.run_netns.display().to_string(),
        "--log.level".to_string(),
        "warn".to_string(),
    ]);
    if !ctx.opts.processes {
        args.push("--no-collector.processes".to_string());
    }
    if !all_namespaces {
        args.push("--no-collector.netns".to_string());
    }
    args
}

/// [`run_daemon_with`] with the `namespaces` scenarios' arguments (connections every
/// [`CONNECTIONS_INTERVAL`]), ready once every namespace has a sample of both tiers.
fn run_daemon(
    ctx: &Ctx,
    label: &str,
    all_namespaces: bool,
    expected: HashMap<u64, Role>,
) -> Result<DaemonRun> {
    let spec = RunSpec {
        exporter: ctx.exporter,
        label,
        args: daemon_args(ctx, all_namespaces, Some(CONNECTIONS_INTERVAL)),
        need: &["listeners", "connections"],
        want: &[],
        want_within: Duration::ZERO,
        spread: None,
    };
    run_daemon_with(ctx, spec, expected)
}

/// How one daemon run is started, and when its sampling starts.
pub(crate) struct RunSpec<'a> {
    pub(crate) exporter: &'a Path,
    pub(crate) label: &'a str,
    pub(crate) args: Vec<String>,
    /// Collectors every namespace must have a sample of before sampling starts, within
    /// [`READY_TIMEOUT`] of the daemon's start (else the run fails).
    pub(crate) need: &'a [&'a str],
    /// Collectors every namespace should have a sample of too: waited for until
    /// `want_within` after the daemon's start, and noted if still missing then.
    pub(crate) want: &'a [&'a str],
    pub(crate) want_within: Duration,
    /// A seed: each scrape falls at a random point of its slot (`--scrape-every`) instead of
    /// at its start, so that the ages of figures the daemon refreshes on a fixed tick are
    /// seen at every phase of that tick.
    pub(crate) spread: Option<u64>,
}

/// Starts the daemon of `spec`, waits (bounded) until it reports exactly the `expected`
/// namespaces up with a sample of each collector `spec` needs (and, within bounds, wants),
/// waits 2 s more (at a 2 s connection interval, one more pass, so that no figure is the
/// first, cold one), then scrapes it every `--scrape-every` for `--seconds` and reads its
/// CPU time over that window and its peak RSS.
pub(crate) fn run_daemon_with(
    ctx: &Ctx,
    spec: RunSpec,
    expected: HashMap<u64, Role>,
) -> Result<DaemonRun> {
    let RunSpec {
        exporter,
        label,
        args,
        need,
        want,
        want_within,
        spread,
    } = spec;
    let seconds = ctx.opts.seconds();
    eprintln!(
        "sockdiag-bench: daemon ({label}): waiting for {} namespaces, then sampling for \
         {seconds} s",
        expected.len(),
    );
    let mut d = daemon::Running::start(exporter, &args)?;
    let started_unix = unix_now();
    d.ready_or_fail(
        Duration::from_millis(250),
        READY_TIMEOUT,
        |page| match page {
            Ok((_, body)) => Figures::parse(&body).not_ready(&expected, need),
            Err(e) => Some(e),
        },
    )
    .with_context(|| format!("the daemon ({label}) reporting every namespace"))?;
    let mut ready_seconds = d.started.elapsed().as_secs_f64();
    let mut not_wanted = None;
    if !want.is_empty() {
        let all: Vec<&str> = need.iter().chain(want).copied().collect();
        not_wanted = d
            .wait_ready(Duration::from_millis(250), want_within, |page| match page {
                Ok((_, body)) => Figures::parse(&body).not_ready(&expected, &all),
                Err(e) => Some(e),
            })?
            .map(|why| {
                let why = format!(
                    "{:.0} s after its start the daemon still showed {why}; sampling started \
                     anyway",
                    want_within.as_secs_f64()
                );
                eprintln!("sockdiag-bench: warning: daemon ({label}): {why}");
                why
            });
        ready_seconds = d.started.elapsed().as_secs_f64();
    }
    std::thread::sleep(Duration::from_secs(2));

    let mut scrapes = Vec::new();
    let mut warnings: Vec<String> = not_wanted.into_iter().collect();
    let mut scrape_seconds = Vec::new();
    let (mut series, mut bytes) = (0, 0);
    let mut rng = crate::rng::Rng(spread.unwrap_or(0));
    let window = d
        .sample_window_spread(
            Duration::from_secs(seconds),
            ctx.opts.scrape_every(),
            || if spread.is_some() { rng.unit() } else { 0.0 },
            |scrape, body| {
                let at = unix_now() - scrape.seconds;
                scrape_seconds.push(scrape.seconds);
                (series, bytes) = (scrape.series, scrape.bytes);
                let mut f = Figures::parse(body);
                f.at = at;
                if let Some(why) = f
                    .not_ready(&expected, need)
                    .map(|w| format!("while sampling, {w}"))
                    .filter(|w| !warnings.contains(w))
                {
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
        started_unix,
        window,
        series,
        bytes,
        scrape_seconds,
        scrapes,
        expected,
        warnings,
    })
}

// ---------------------------------------------------------------------------------------
// The coordinator.

/// What every part of the coordinator needs.
pub(crate) struct Ctx<'a> {
    pub(crate) opts: &'a NamespacesOpts,
    pub(crate) exporter: &'a Path,
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

pub(crate) fn own_netns_inode() -> Result<u64> {
    Ok(std::fs::metadata("/proc/self/ns/net")
        .context("stat of /proc/self/ns/net")?
        .ino())
}

/// Median wall time of a few raw dumps of every TCP socket in the bench's own namespace,
/// which holds none: what the kernel's walk of the host-wide table costs by itself.
pub(crate) fn raw_host_walk() -> Result<f64> {
    let mut times = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        diag::dump_tcp(|_| {})?;
        times.push(start.elapsed().as_secs_f64());
    }
    Ok(measure::median(times).unwrap_or(f64::NAN))
}

/// Namespaces the daemon must report: `host` and every holder, by inode.
pub(crate) fn expected_namespaces(holders: &Holders) -> Result<HashMap<u64, Role>> {
    let mut m: HashMap<u64, Role> = holders.list.iter().map(|h| (h.inode, h.role)).collect();
    m.insert(own_netns_inode()?, Role::Host);
    Ok(m)
}

/// Holders started alike, in one go.
pub(crate) struct Group {
    pub(crate) role: Role,
    pub(crate) count: u32,
    args: Vec<String>,
    /// `tcp_child_ehash_entries` while they are created, when namespaces get hashes of
    /// their own.
    ehash_entries: u64,
    /// Longest wait for all of them to be ready.
    timeout: Duration,
}

impl Group {
    /// `count` namespaces of `--listeners-per-ns` listeners and `connections` connections,
    /// `extra` added to their holder's arguments.
    pub(crate) fn small(
        opts: &NamespacesOpts,
        role: Role,
        count: u32,
        connections: u64,
        extra: &[String],
        ehash_entries: u64,
    ) -> Group {
        let mut args = vec![
            "--listeners".to_string(),
            opts.listeners_per_ns.to_string(),
            "--connections".to_string(),
            connections.to_string(),
        ];
        args.extend_from_slice(extra);
        Group {
            role,
            count,
            args,
            ehash_entries,
            timeout: Duration::from_secs(60) + Duration::from_millis(200) * count,
        }
    }

    /// The one namespace of `n` connections, held by the worker fleet.
    pub(crate) fn big(n: u64, ehash_entries: u64) -> Group {
        Group {
            role: Role::Big,
            count: 1,
            args: [
                "--listeners",
                "16",
                "--connections",
                "0",
                "--big",
                &n.to_string(),
            ]
            .map(String::from)
            .to_vec(),
            ehash_entries,
            timeout: Duration::from_secs(120 + n / 1000),
        }
    }
}

/// Starts the groups in turn, each once the one before is ready. With `per_ns_hash` each
/// is created under its own `tcp_child_ehash_entries`, set back to 0 (the shared table)
/// after every group, whatever happened.
pub(crate) fn start_groups(
    holders: &mut Holders,
    ctx: &Ctx,
    groups: &[Group],
    per_ns_hash: bool,
) -> Result<()> {
    for g in groups {
        let from = holders.list.len();
        let spawned = (|| -> Result<()> {
            if per_ns_hash {
                set_child_ehash(g.ehash_entries)?;
            }
            for _ in 0..g.count {
                holders.spawn(&ctx.exe, g.role, &g.args)?;
            }
            Ok(())
        })();
        if per_ns_hash {
            set_child_ehash(0)?;
        }
        spawned?;
        holders.wait_ready(from, g.timeout)?;
    }
    Ok(())
}

/// Starts `count` small holders and waits until all are ready.
fn start_small(holders: &mut Holders, ctx: &Ctx, count: u32) -> Result<()> {
    let opts = ctx.opts;
    let small = Group::small(opts, Role::Small, count, opts.connections_per_ns(), &[], 0);
    start_groups(holders, ctx, &[small], false)
}

/// Writes `net.ipv4.tcp_child_ehash_entries` of the bench's namespace: namespaces created
/// from it afterwards get an established hash of their own of that size (0: the shared one).
pub(crate) fn set_child_ehash(entries: u64) -> Result<()> {
    std::fs::write(CHILD_EHASH_SYSCTL, entries.to_string())
        .with_context(|| format!("writing {entries} to {CHILD_EHASH_SYSCTL}"))
}

/// One bucket per socket, rounded up to a power of two, within what the kernel accepts.
pub(crate) fn ehash_for(sockets: u64) -> u64 {
    sockets.next_power_of_two().clamp(128, MAX_CHILD_EHASH)
}

/// What a scenario reports: its markdown, its JSON document, and whether it failed.
pub(crate) type Report = (String, Value, bool);

/// The coordinator of `namespaces` inside the private namespace: readies it, runs
/// `scenario` (chosen by the caller: `--uneven` lives above this module) and reports.
pub fn internal_main(
    opts: &NamespacesOpts,
    exporter: &Path,
    scenario: impl FnOnce(&Ctx) -> Result<Report>,
) -> Result<ExitCode> {
    namespace::bring_loopback_up()?;
    namespace::tune_sysctls();
    namespace::raise_nofile_limit()?;
    let ctx = Ctx::new(opts, exporter)?;
    let (markdown, doc, failed) = scenario(&ctx)?;
    print!("{markdown}");
    report::write_json(opts.json.as_deref(), || report::json_text(&doc))?;
    Ok(report::exit_code(failed))
}

/// The scenarios of this module: K small namespaces, or with `--big-ns-connections` one
/// big namespace next to small ones.
pub(crate) fn even(ctx: &Ctx) -> Result<Report> {
    Ok(match ctx.opts.big_connections() {
        None => with_success(many_small(ctx)?),
        Some(n) => with_success(one_big(ctx, n)?),
    })
}

/// A scenario's report, no run of which can fail without failing it all.
fn with_success((markdown, doc): (String, Value)) -> Report {
    (markdown, doc, false)
}

pub(crate) fn environment(opts: &NamespacesOpts) -> Value {
    json!({
        "kernel": report::kernel(),
        "cpus": report::cpus(),
        "daemon_listen": LISTEN,
        "connections_interval": CONNECTIONS_INTERVAL,
        "scrape_every_seconds": opts.scrape_every().as_secs_f64(),
    })
}

/// Scenario 1: K small namespaces, the daemon on all of them against the daemon on its
/// own namespace only.
fn many_small(ctx: &Ctx) -> Result<(String, Value)> {
    let opts = ctx.opts;
    let k = opts.small_namespaces();
    let (l, c) = (opts.listeners_per_ns, opts.connections_per_ns());
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
        daemon_args(ctx, true, Some(CONNECTIONS_INTERVAL)).join(" "),
        SCRAPE_EVERY.as_secs(),
        opts.seconds(),
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
        "environment": environment(opts),
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

impl Half {
    fn json(&self) -> Value {
        json!({
            "title": self.title,
            "setup_seconds": self.setup_seconds,
            "raw_host_walk_seconds": self.host_walk,
            "tcp_ehash_entries": {
                "big": self.ehash_big,
                "small": self.ehash_small,
                "host": self.ehash_host,
            },
            "run": self.run.json(),
        })
    }
}

/// Builds the big namespace and `k` small ones, measures the daemon on them, tears them
/// down. `ehash` is `(big, small)` entries for per-namespace hashes, `None` for the
/// shared one.
fn big_half(ctx: &Ctx, n: u64, ehash: Option<(u64, u64)>, title: &'static str) -> Result<Half> {
    let opts = ctx.opts;
    let k = opts.small_namespaces();
    let mut holders = Holders::default();
    let start = Instant::now();
    let (big, small) = ehash.unwrap_or((0, 0));
    eprintln!("sockdiag-bench: {title}: setting up a namespace with {n} connections");
    let groups = [
        Group::big(n, big),
        Group::small(opts, Role::Small, k, opts.connections_per_ns(), &[], small),
    ];
    start_groups(&mut holders, ctx, &groups, ehash.is_some())?;
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
pub(crate) fn settle(empty: f64) -> Result<()> {
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

/// Makes the namespaces created from the bench's from now on share the host-wide table;
/// fails when `tcp_child_ehash_entries` cannot be read or written (before Linux 6.1), and
/// then the per-namespace halves are skipped.
pub(crate) fn child_ehash_to_shared() -> Result<()> {
    match std::fs::read_to_string(CHILD_EHASH_SYSCTL) {
        Ok(v) if v.trim() == "0" => Ok(()),
        Ok(_) => set_child_ehash(0),
        Err(e) => Err(e).with_context(|| format!("reading {CHILD_EHASH_SYSCTL}")),
    }
}

/// Before a per-namespace half: `shared_ok` from [`child_ehash_to_shared`]; waits (bounded)
/// until the shared half's sockets have left the host-wide table, and checks that the
/// sysctl takes `entries`. An error means the half is skipped, and is printed.
pub(crate) fn ready_for_per_ns_hash(
    shared_ok: Result<()>,
    empty_walk: f64,
    entries: u64,
) -> Result<()> {
    let ready = shared_ok.and_then(|()| {
        settle(empty_walk)?;
        set_child_ehash(entries)?;
        set_child_ehash(0)?;
        Ok(())
    });
    if let Err(e) = &ready {
        eprintln!("sockdiag-bench: per-namespace hashes unavailable, second half skipped: {e:#}");
    }
    ready
}

/// Why a per-namespace half is missing from a report.
pub(crate) fn per_ns_hash_skipped_why() -> String {
    format!("{CHILD_EHASH_SYSCTL} cannot be written here (it exists since Linux 6.1)")
}

/// Scenario 2: one big namespace next to K small ones, with the shared established hash
/// and with per-namespace ones.
fn one_big(ctx: &Ctx, n: u64) -> Result<(String, Value)> {
    let opts = ctx.opts;
    let k = opts.small_namespaces();
    let small_sockets = u64::from(opts.listeners_per_ns) + 2 * opts.connections_per_ns();
    let (big_entries, small_entries) = match opts.child_ehash_entries {
        Some(e) => (e, e),
        None => (ehash_for(2 * n + 16), ehash_for(small_sockets)),
    };
    let empty_walk = raw_host_walk()?;
    let private_ok = child_ehash_to_shared();
    let shared = big_half(ctx, n, None, "shared established hash")?;
    let private = match ready_for_per_ns_hash(private_ok, empty_walk, big_entries) {
        Ok(()) => Some(big_half(
            ctx,
            n,
            Some((big_entries, small_entries)),
            "per-namespace established hash",
        )?),
        Err(_) => None,
    };
    let skipped_why = private.is_none().then(per_ns_hash_skipped_why);

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
        opts.connections_per_ns(),
        shared.run.args.join(" "),
        SCRAPE_EVERY.as_secs(),
        opts.seconds(),
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
    let doc = json!({
        "scenario": "one_big",
        "environment": environment(opts),
        "big_ns_connections": n,
        "namespaces": k,
        "listeners_per_ns": opts.listeners_per_ns,
        "connections_per_ns": opts.connections_per_ns(),
        "child_ehash_entries": {"big": big_entries, "small": small_entries},
        "raw_host_walk_before_setup_seconds": empty_walk,
        "shared": shared.json(),
        "per_namespace": private.as_ref().map(Half::json),
        "per_namespace_skipped": skipped_why,
    });
    Ok((s, doc))
}

pub(crate) fn ms(v: Option<f64>) -> String {
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

pub(crate) fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 && a.is_finite() => format!("{:.1}x", a / b),
        _ => "-".to_string(),
    }
}

pub(crate) fn percent(x: f64) -> String {
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
            s.push_str(&format!("\nWarning ({}): {w}.\n", r.label));
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
    let baseline = ns.baseline_exporter.take().or(opts.baseline_exporter);
    if baseline.is_some() && !ns.uneven {
        bail!("namespaces takes --baseline-exporter only with --uneven");
    }
    ns.check()?;
    ns.baseline_exporter = crate::absolute(baseline, "--baseline-exporter")?;
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
        let both = ["listeners", "connections"];
        assert_eq!(f.not_ready(&expected, &both), None);
        assert_eq!(
            f.samples_of(&expected, Role::Small, "connections"),
            vec![0.006]
        );
        let more: HashMap<u64, Role> = [(1, Role::Host), (2, Role::Small), (3, Role::Big)].into();
        assert!(
            f.not_ready(&more, &both)
                .unwrap()
                .contains("1 of the 3 expected missing")
        );
        let down = Figures::parse(&body.replace("netns_up{netns=\"ino:2\"} 1", "x 1"));
        assert!(
            down.not_ready(&expected, &both)
                .unwrap()
                .contains("sockdiag_netns_up")
        );
    }

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        ns: NamespacesOpts,
    }

    fn opts(args: &[&str]) -> Result<NamespacesOpts, clap::Error> {
        use clap::Parser;
        Cli::try_parse_from(std::iter::once("t").chain(args.iter().copied())).map(|c| c.ns)
    }

    #[test]
    fn scrape_every_is_bounded_passed_on_and_leaves_two_scrapes() {
        let o = opts(&["--uneven"]).unwrap();
        assert_eq!(o.scrape_every(), Duration::from_secs(1));
        assert_eq!(o.scrapes_per_window(), 120);
        let o = opts(&["--uneven", "--scrape-every", "15"]).unwrap();
        assert_eq!(o.scrapes_per_window(), 8);
        assert!(o.check().is_ok());
        let args: Vec<String> = o
            .to_args()
            .iter()
            .map(|a| a.to_string_lossy().into())
            .collect();
        let at = args.iter().position(|a| a == "--scrape-every").unwrap();
        assert_eq!(args[at + 1], "15");
        let o = opts(&["--uneven", "--scrape-every", "0.25", "--seconds", "4"]).unwrap();
        assert_eq!(
            (o.scrape_every().as_secs_f64(), o.scrapes_per_window()),
            (0.25, 16)
        );
        // A partial last slot still gets its scrape.
        let o = opts(&["--uneven", "--scrape-every", "50", "--seconds", "120"]).unwrap();
        assert_eq!(o.scrapes_per_window(), 3);
        let o = opts(&["--uneven", "--scrape-every", "60", "--seconds", "60"]).unwrap();
        assert_eq!(o.scrapes_per_window(), 1);
        assert!(o.check().is_err());
        for bad in ["0.1", "61", "x", "NaN", "inf"] {
            assert!(opts(&["--uneven", "--scrape-every", bad]).is_err(), "{bad}");
        }
        assert!(opts(&["--scrape-every", "15"]).is_err());
        assert_eq!(opts(&[]).unwrap().scrape_every(), SCRAPE_EVERY);
    }

    #[test]
    fn the_collector_cpu_counter_is_parsed_by_collector() {
        let f = Figures::parse(
            "sockdiag_collector_cpu_seconds_total{collector=\"listeners\"} 1.25\n\
             sockdiag_collector_cpu_seconds_total{collector=\"connections\"} 30\n\
             sockdiag_collector_passes_total{collector=\"listeners\"} 9\n",
        );
        assert_eq!(f.cpu.get("listeners"), Some(&1.25));
        assert_eq!(f.cpu.get("connections"), Some(&30.0));
        assert_eq!(f.cpu.len(), 2);
        assert_eq!(f.passes.get("listeners"), Some(&9.0));
    }

    #[test]
    fn per_namespace_hash_sizes_are_powers_of_two_within_the_kernel_range() {
        assert_eq!(ehash_for(104), 128);
        assert_eq!(ehash_for(200_016), 262_144);
        assert_eq!(ehash_for(1), 128);
        assert_eq!(ehash_for(u64::MAX / 4), MAX_CHILD_EHASH);
    }
}
