//! `unix`: the unix listener pass at scale.
//!
//! Inside the private namespace, S unix sockets of which L are listeners: filesystem paths
//! (in a temporary directory) and abstract names, stream and seqpacket, random backlogs,
//! some listeners with clients never accepted and some over full (queue = backlog + 1, the
//! next non-blocking connect gets EAGAIN). The other sockets are connected pairs
//! (socketpair, or connect + accept). Worker processes hold them, each under the
//! descriptor limit. Then, round-robin as child processes: a raw unix_diag dump of the
//! listeners (the floor), the exporter's snapshot with only the unix collector, `ss -xl`
//! and `ss -xlH`. The kernel walks every unix socket of the namespace for any of these, so
//! their cost grows with S, not L.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};
use std::{ffi::OsString, io};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::{Value, json};

use crate::daemon::{self, LISTEN};
use crate::helper::{self, Helper};
use crate::measure::{self, CommandResult, Spec};
use crate::netns_bench::{label, parse_sample};
use crate::report::mib;
use crate::rng::Rng;
use crate::unix_diag::{self, UnixCensus};
use crate::{BenchOpts, namespace, proc_util, report, setup, worker};

/// Descriptors a worker holds at most: the machine's hard limit is 20,000.
const MAX_FDS_PER_WORKER: u64 = 18_000;
const FD_HEADROOM: u64 = 100;
/// A worker that has not built its share in this long is stuck.
const WORKER_TIMEOUT: Duration = Duration::from_secs(120);
const ABSTRACT_PREFIX: &str = "sockdiag-bench/l";
const SS_XL: &str = "ss -xl";

/// Options of `unix`.
#[derive(Args, Debug, Clone)]
pub struct UnixOpts {
    /// Unix sockets in the namespace, listeners, their queued clients and connected pairs
    /// included. Accepts a k / M suffix.
    #[arg(long, default_value = "10000", value_name = "S", value_parser = crate::parse_count)]
    pub unix_sockets: u64,

    /// How many of them are listeners. Accepts a k / M suffix.
    #[arg(long, default_value = "1000", value_name = "L", value_parser = crate::parse_count)]
    pub listeners: u64,

    /// Seed of the listener mix (types, names, backlogs, queued clients).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    #[command(flatten)]
    pub rounds: crate::RoundOpts,

    /// Directory for the path-named sockets (made and removed by the outer process).
    #[arg(long, hide = true)]
    pub socket_dir: Option<PathBuf>,
}

/// Arguments of the hidden `internal-unix-worker`; its plan comes on stdin.
#[derive(Args, Debug)]
pub struct UnixWorkerArgs {
    /// Directory of the path-named listeners.
    #[arg(long)]
    dir: PathBuf,
    /// The coordinator's pid: the worker dies with it.
    #[arg(long)]
    parent: i32,
}

// ---------------------------------------------------------------------------------------
// The plan.

/// One listener to build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenerPlan {
    pub index: u64,
    pub seqpacket: bool,
    pub abstract_name: bool,
    pub backlog: u32,
    /// Clients connected and never accepted.
    pub clients: u32,
    /// `clients` is backlog + 1 and a further connect must get EAGAIN.
    pub over_full: bool,
}

impl ListenerPlan {
    fn fds(&self) -> u64 {
        1 + u64::from(self.clients)
    }

    fn line(&self) -> String {
        format!(
            "L {} {} {} {} {} {}\n",
            self.index,
            if self.seqpacket { 'q' } else { 's' },
            if self.abstract_name { 'a' } else { 'p' },
            self.backlog,
            self.clients,
            u8::from(self.over_full)
        )
    }

    fn parse(line: &str) -> Result<ListenerPlan> {
        let w: Vec<&str> = line.split_whitespace().collect();
        let [_, index, kind, name, backlog, clients, over_full] = w[..] else {
            bail!("bad plan line {line:?}");
        };
        Ok(ListenerPlan {
            index: index.parse()?,
            seqpacket: kind == "q",
            abstract_name: name == "a",
            backlog: backlog.parse()?,
            clients: clients.parse()?,
            over_full: over_full == "1",
        })
    }
}

/// What the whole namespace holds once built.
#[derive(Debug)]
pub struct Plan {
    pub listeners: Vec<ListenerPlan>,
    pub pairs: u64,
}

/// A backlog between 1 and 4096, spread over powers of two so that small and large ones
/// both occur.
fn random_backlog(rng: &mut Rng) -> u32 {
    let base = 1u64 << rng.below(13);
    (base + rng.below(base)).min(4096) as u32
}

/// The listener mix: a fifth seqpacket, half abstract; a tenth over full (backlog 1..16,
/// backlog + 1 clients), a quarter with 1..8 clients (never more than the backlog), the
/// rest empty. Clients come out of the socket budget; what is left of it becomes connected
/// pairs, with one more client somewhere if it is odd.
pub fn plan(sockets: u64, listeners: u64, seed: u64) -> Result<Plan> {
    if listeners > sockets {
        bail!("--listeners {listeners} is more than --unix-sockets {sockets}");
    }
    let mut rng = Rng(seed);
    let mut budget = sockets - listeners;
    let mut out = Vec::with_capacity(listeners as usize);
    for index in 0..listeners {
        let seqpacket = rng.below(5) == 0;
        let abstract_name = index % 2 == 1;
        let r = rng.below(100);
        let (backlog, clients, over_full) = if r < 10 {
            let b = 1 + rng.below(16) as u32;
            (b, b + 1, true)
        } else if r < 35 {
            let b = random_backlog(&mut rng);
            (b, 1 + rng.below(u64::from(b.min(8))) as u32, false)
        } else {
            (random_backlog(&mut rng), 0, false)
        };
        let (clients, over_full) = if u64::from(clients) <= budget {
            (clients, over_full)
        } else {
            (0, false)
        };
        budget -= u64::from(clients);
        out.push(ListenerPlan {
            index,
            seqpacket,
            abstract_name,
            backlog,
            clients,
            over_full,
        });
    }
    if budget % 2 == 1 {
        let spare = out
            .iter_mut()
            .find(|l| !l.over_full && l.clients < l.backlog)
            .context("no listener can take one more client to make the count even")?;
        spare.clients += 1;
        budget -= 1;
    }
    Ok(Plan {
        listeners: out,
        pairs: budget / 2,
    })
}

impl Plan {
    /// What a census of the namespace must show.
    pub fn expected(&self) -> UnixCensus {
        let l = &self.listeners;
        UnixCensus {
            sockets: l.len() as u64
                + l.iter().map(|l| u64::from(l.clients)).sum::<u64>()
                + 2 * self.pairs,
            listeners: l.len() as u64,
            seqpacket_listeners: l.iter().filter(|l| l.seqpacket).count() as u64,
            queued: l.iter().map(|l| u64::from(l.clients)).sum(),
            over_full: l.iter().filter(|l| l.over_full).count() as u64,
            pending: l.iter().filter(|l| !l.over_full && l.clients > 0).count() as u64,
        }
    }
}

/// One worker's share.
#[derive(Debug, Default)]
pub struct WorkerPlan {
    pub listeners: Vec<ListenerPlan>,
    pub pairs: u64,
}

impl WorkerPlan {
    fn fds(&self) -> u64 {
        self.listeners.iter().map(ListenerPlan::fds).sum::<u64>() + 2 * self.pairs
    }
}

/// Deals the plan out to workers of at most `max_fds` descriptors each: listeners in order,
/// then pairs into what room is left, then new workers for the rest.
pub fn assign(plan: &Plan, max_fds: u64) -> Result<Vec<WorkerPlan>> {
    if max_fds < 2 + 17 {
        bail!("{max_fds} descriptors per worker is too few");
    }
    let mut workers = vec![WorkerPlan::default()];
    for l in &plan.listeners {
        let used = workers.last().map_or(0, WorkerPlan::fds);
        if used + l.fds() > max_fds {
            workers.push(WorkerPlan::default());
        }
        if let Some(w) = workers.last_mut() {
            w.listeners.push(*l);
        }
    }
    let mut left = plan.pairs;
    for w in &mut workers {
        let take = ((max_fds - w.fds()) / 2).min(left);
        w.pairs += take;
        left -= take;
    }
    while left > 0 {
        let take = (max_fds / 2).min(left);
        workers.push(WorkerPlan {
            listeners: Vec::new(),
            pairs: take,
        });
        left -= take;
    }
    workers.retain(|w| !w.listeners.is_empty() || w.pairs > 0);
    Ok(workers)
}

// ---------------------------------------------------------------------------------------
// The worker.

fn sockaddr(dir: &Path, l: &ListenerPlan) -> Result<(libc::sockaddr_un, libc::socklen_t, String)> {
    // SAFETY: sockaddr_un is plain old data.
    let mut sa: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    sa.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let (bytes, shown): (Vec<u8>, String) = if l.abstract_name {
        let name = format!("{ABSTRACT_PREFIX}{}", l.index);
        let mut b = vec![0u8];
        b.extend_from_slice(name.as_bytes());
        (b, format!("@{name}"))
    } else {
        let p = dir.join(format!("l{}.sock", l.index));
        let mut b = p.as_os_str().as_bytes().to_vec();
        b.push(0);
        (b, p.display().to_string())
    };
    if bytes.len() > sa.sun_path.len() {
        bail!("socket name {shown} is longer than a sockaddr_un holds");
    }
    for (d, s) in sa.sun_path.iter_mut().zip(&bytes) {
        *d = *s as libc::c_char;
    }
    let base = std::mem::offset_of!(libc::sockaddr_un, sun_path);
    // Abstract names are exactly as long as given; paths include their NUL.
    let len = (base + bytes.len()) as libc::socklen_t;
    Ok((sa, len, shown))
}

fn unix_socket(seqpacket: bool) -> io::Result<OwnedFd> {
    let ty = if seqpacket {
        libc::SOCK_SEQPACKET
    } else {
        libc::SOCK_STREAM
    };
    proc_util::socket(libc::AF_UNIX, ty | libc::SOCK_NONBLOCK, 0)
}

/// A non-blocking connect: `Ok(None)` when the listener's queue is full (EAGAIN).
fn connect(
    seqpacket: bool,
    sa: &libc::sockaddr_un,
    len: libc::socklen_t,
) -> Result<Option<OwnedFd>> {
    let fd = unix_socket(seqpacket).context("socket(AF_UNIX)")?;
    match proc_util::connect(&fd, sa, len) {
        Ok(()) => Ok(Some(fd)),
        Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => Ok(None),
        Err(e) => Err(e).context("connect()"),
    }
}

/// Builds one listener with its clients; returns every descriptor to hold.
fn build_listener(dir: &Path, l: &ListenerPlan, held: &mut Vec<OwnedFd>) -> Result<OwnedFd> {
    let (sa, len, shown) = sockaddr(dir, l)?;
    let fd = unix_socket(l.seqpacket).context("socket(AF_UNIX)")?;
    proc_util::bind(&fd, &sa, len).with_context(|| format!("bind({shown})"))?;
    proc_util::listen(&fd, l.backlog as i32).with_context(|| format!("listen({shown})"))?;
    for k in 0..l.clients {
        match connect(l.seqpacket, &sa, len).with_context(|| format!("client {k} of {shown}"))? {
            Some(c) => held.push(c),
            None => bail!(
                "{shown} (backlog {}) refused client {} of {}: its queue filled early",
                l.backlog,
                k + 1,
                l.clients
            ),
        }
    }
    if l.over_full {
        // The probe is closed at once: a refused socket would stay as an unconnected one.
        if connect(l.seqpacket, &sa, len)
            .with_context(|| format!("probe of {shown}"))?
            .is_some()
        {
            bail!(
                "{shown} (backlog {}) took a connect beyond backlog + 1 = {} clients",
                l.backlog,
                l.clients
            );
        }
    }
    Ok(fd)
}

fn socketpair(seqpacket: bool) -> Result<[OwnedFd; 2]> {
    let ty = if seqpacket {
        libc::SOCK_SEQPACKET
    } else {
        libc::SOCK_STREAM
    };
    let mut fds = [0i32; 2];
    // SAFETY: fds has room for the two descriptors returned.
    if unsafe { libc::socketpair(libc::AF_UNIX, ty | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) } != 0
    {
        return Err(io::Error::last_os_error()).context("socketpair()");
    }
    // SAFETY: two fresh descriptors nobody else owns.
    Ok(unsafe { [OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])] })
}

/// A pair by connect + accept through `listener` (whose queue is empty, so the connect
/// cannot be refused).
fn accepted_pair(dir: &Path, l: &ListenerPlan, listener: &OwnedFd) -> Result<[OwnedFd; 2]> {
    let (sa, len, shown) = sockaddr(dir, l)?;
    let client = connect(l.seqpacket, &sa, len)?
        .with_context(|| format!("{shown} refused a connect with an empty queue"))?;
    let server =
        proc_util::accept(listener.as_raw_fd()).with_context(|| format!("accept() on {shown}"))?;
    Ok([client, server])
}

/// `internal-unix-worker`: reads its plan on stdin (`L ...` lines, `P pairs`, `END`), builds
/// it, says `ready <sockets>`, and holds everything until stdin closes.
pub fn worker_main(args: &UnixWorkerArgs) -> Result<ExitCode> {
    use std::io::BufRead;
    proc_util::die_with_parent(args.parent).context("the coordinator is gone")?;
    namespace::raise_nofile_limit()?;
    let mut listeners = Vec::new();
    let mut pairs = 0u64;
    let stdin = io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        let line = lines
            .next()
            .context("the plan ended without END")?
            .context("reading the plan")?;
        match line.split_whitespace().next() {
            Some("L") => listeners.push(ListenerPlan::parse(&line)?),
            Some("P") => {
                pairs = line
                    .split_whitespace()
                    .nth(1)
                    .context("P without a count")?
                    .parse()?
            }
            Some("END") => break,
            _ => bail!("bad plan line {line:?}"),
        }
    }
    drop(lines);
    let mut held: Vec<OwnedFd> = Vec::new();
    let mut built: Vec<(ListenerPlan, OwnedFd)> = Vec::with_capacity(listeners.len());
    for l in &listeners {
        let fd = build_listener(&args.dir, l, &mut held)?;
        built.push((*l, fd));
    }
    // Half the pairs by connect + accept through an empty listener, if this worker has one.
    let empty = built.iter().find(|(l, _)| l.clients == 0);
    for k in 0..pairs {
        let pair = match empty {
            Some((l, fd)) if k % 2 == 0 => accepted_pair(&args.dir, l, fd)?,
            _ => socketpair(k % 5 == 1)?,
        };
        held.extend(pair);
    }
    worker::say_ready(&(built.len() + held.len()).to_string())?;
    worker::hold_then_exit()
}

// ---------------------------------------------------------------------------------------
// The coordinator.

/// Starts the workers, at most `parallel` building at once, and waits until each holds its
/// share. Dropping the returned helpers ends them.
fn build(workers: &[WorkerPlan], dir: &Path, parallel: usize) -> Result<Vec<Helper>> {
    helper::start_fleet(
        workers.chunks(parallel.max(1)),
        "a unix worker",
        WORKER_TIMEOUT,
        |w| {
            let mut cmd = helper::bench_command("internal-unix-worker")?;
            cmd.arg("--dir").arg(dir);
            let mut text = String::with_capacity(40 * w.listeners.len() + 32);
            for l in &w.listeners {
                text.push_str(&l.line());
            }
            text.push_str(&format!("P {}\nEND\n", w.pairs));
            Ok((cmd, Some(text)))
        },
    )
}

/// What `ss -xlH` shows, to check the setup with the tool operators trust.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SsCount {
    pub listeners: u64,
    pub queued: u64,
    pub over_full: u64,
    pub pending: u64,
    /// Lines in another state (`ss -l` also lists unconnected unix sockets).
    pub other: u64,
}

/// Counts `ss -xlH` output: `Netid State Recv-Q Send-Q Local-Address Port Peer Port`.
pub fn count_ss(text: &str) -> Result<SsCount> {
    let mut c = SsCount::default();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let w: Vec<&str> = line.split_whitespace().collect();
        let (Some(state), Some(rq), Some(sq)) = (w.get(1), w.get(2), w.get(3)) else {
            bail!("unexpected ss line {line:?}");
        };
        if *state != "LISTEN" {
            c.other += 1;
            continue;
        }
        let rq: u64 = rq.parse().with_context(|| format!("Recv-Q of {line:?}"))?;
        let sq: u64 = sq.parse().with_context(|| format!("Send-Q of {line:?}"))?;
        c.listeners += 1;
        c.queued += rq;
        if rq > sq {
            c.over_full += 1;
        } else if rq > 0 {
            c.pending += 1;
        }
    }
    Ok(c)
}

fn ss_check() -> Result<SsCount> {
    let out = Command::new("ss")
        .arg("-xlH")
        .stdin(Stdio::null())
        .output()
        .context("running ss -xlH")?;
    if !out.status.success() {
        bail!(
            "ss -xlH failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    count_ss(&String::from_utf8_lossy(&out.stdout))
}

const UNIX_ONLY: [&str; 8] = [
    "snapshot",
    "--format",
    "json",
    "--no-collector.listeners",
    "--no-collector.connections",
    "--no-collector.netstat",
    "--no-collector.processes",
    "--no-collector.netns",
];

/// The same sample as a table, the text a person reads, as `ss -xl` prints.
const UNIX_ONLY_TABLE: [&str; 6] = [
    "snapshot",
    "--no-collector.listeners",
    "--no-collector.connections",
    "--no-collector.netstat",
    "--no-collector.processes",
    "--no-collector.netns",
];

fn specs(exporter: &Path, baseline: Option<&Path>) -> Result<Vec<Spec>> {
    let me = std::env::current_exe().context("locating this executable")?;
    let ss = Path::new("ss");
    let specs = vec![
        Spec::new(
            "floor (raw unix_diag dump of listeners)",
            &me,
            &["unix-floor"],
            None,
        ),
        Spec::new(
            "sockdiag-exporter snapshot (unix collector only)",
            exporter,
            &UNIX_ONLY,
            measure::collector_support(exporter, "unix").err(),
        ),
        Spec::new(
            "sockdiag-exporter snapshot (unix collector only, table)",
            exporter,
            &UNIX_ONLY_TABLE,
            measure::collector_support(exporter, "unix").err(),
        ),
        Spec::new(SS_XL, ss, &["-xl"], None),
        Spec::new("ss -xlH", ss, &["-xlH"], None),
    ];
    Ok(measure::add_collector_baseline(
        specs, exporter, baseline, "unix",
    ))
}

/// Unix listeners in one snapshot JSON document: objects whose `family` is `unix`.
pub fn count_unix_listeners(v: &Value) -> u64 {
    match v {
        Value::Object(m) => {
            u64::from(m.get("family").and_then(Value::as_str) == Some("unix"))
                + m.values().map(count_unix_listeners).sum::<u64>()
        }
        Value::Array(a) => a.iter().map(count_unix_listeners).sum(),
        _ => 0,
    }
}

/// Unix listeners the unix-only snapshot reports, run once more outside the timing.
fn snapshot_sanity(exporter: &Path) -> Result<u64, String> {
    measure::snapshot_json(exporter, &UNIX_ONLY).map(|v| count_unix_listeners(&v))
}

/// One daemon run on the unix sockets.
pub struct DaemonUnix {
    run: daemon::Sampled,
    /// `sockdiag_collector_duration_seconds{collector="unix"}`, one per scrape.
    unix_durations: Vec<f64>,
    /// Unix listeners exported (`sockdiag_accept_queue_length{family="unix"}`) at the last
    /// scrape.
    unix_series: u64,
    unexported: f64,
}

/// What one scrape says about the unix collector.
fn unix_figures(body: &str) -> (Option<f64>, u64, f64) {
    let (mut duration, mut series, mut unexported) = (None, 0, 0.0);
    for (name, labels, value) in body.lines().filter_map(parse_sample) {
        match name {
            "sockdiag_collector_duration_seconds"
                if label(&labels, "collector") == Some("unix") =>
            {
                duration = Some(value)
            }
            "sockdiag_accept_queue_length" if label(&labels, "family") == Some("unix") => {
                series += 1
            }
            "sockdiag_unix_listeners_unexported" => unexported += value,
            _ => {}
        }
    }
    (duration, series, unexported)
}

/// The daemon at default intervals (plus `extra`) for `seconds` after a warm-up: its CPU
/// share and the unix pass duration from every scrape (one a second).
fn run_daemon(
    exporter: &Path,
    label_text: &str,
    extra: &[&str],
    seconds: u64,
    expect_unix: bool,
) -> Result<DaemonUnix> {
    let (mut durations, mut series, mut unexported) = (Vec::new(), 0, 0.0);
    let run = daemon::sample(
        exporter,
        label_text,
        extra,
        seconds,
        "unix",
        |body| !expect_unix || unix_figures(body).0.is_some(),
        |body| {
            let (dur, n, u) = unix_figures(body);
            durations.extend(dur);
            (series, unexported) = (n, u);
        },
    )?;
    Ok(DaemonUnix {
        run,
        unix_durations: durations,
        unix_series: series,
        unexported,
    })
}

pub fn internal_main(bench: &BenchOpts, opts: &UnixOpts) -> Result<ExitCode> {
    namespace::bring_loopback_up()?;
    namespace::tune_sysctls();
    let nofile = namespace::raise_nofile_limit()?;
    let exporter = bench.exporter();
    let baseline = opts.rounds.baseline_exporter.as_deref();
    let Some(dir) = opts.socket_dir.clone() else {
        bail!("internal-unix needs --socket-dir");
    };
    let (s, l) = (opts.unix_sockets, opts.listeners);

    let plan = plan(s, l, opts.seed)?;
    let expected = plan.expected();
    let max_fds = nofile.saturating_sub(FD_HEADROOM).min(MAX_FDS_PER_WORKER);
    let workers = assign(&plan, max_fds)?;
    eprintln!(
        "sockdiag-bench: setting up {s} unix sockets ({l} listeners, {} queued clients, {} \
         pairs) with {} workers",
        expected.queued,
        plan.pairs,
        workers.len()
    );
    let start = Instant::now();
    let fleet = build(&workers, &dir, setup::parallel_workers())?;
    let setup_seconds = start.elapsed().as_secs_f64();

    let census = unix_diag::census().context("counting the unix sockets that were set up")?;
    if census != expected {
        bail!(
            "the namespace does not hold what was set up: expected {expected:?}, the unix_diag \
             dump shows {census:?}"
        );
    }
    let ss = ss_check()?;
    let ss_expected = SsCount {
        listeners: expected.listeners,
        queued: expected.queued,
        over_full: expected.over_full,
        pending: expected.pending,
        other: 0,
    };
    if ss != ss_expected {
        bail!("ss -xlH shows {ss:?}, expected {ss_expected:?}");
    }
    eprintln!(
        "sockdiag-bench: {} unix sockets ready in {setup_seconds:.1} s; ss -xlH agrees; measuring",
        census.sockets
    );

    let specs = specs(&exporter, baseline)?;
    let results = measure::measure_specs(&specs, opts.rounds.runs);
    let sanity = match measure::collector_support(&exporter, "unix") {
        Ok(()) => Some(snapshot_sanity(&exporter)),
        Err(_) => None,
    };

    let mut daemons: Vec<Result<DaemonUnix, String>> = Vec::new();
    if opts.rounds.daemon_seconds > 0 {
        let has_unix = measure::collector_support(&exporter, "unix").is_ok();
        if exporter.is_file() {
            daemons.push(
                run_daemon(
                    &exporter,
                    "default collectors",
                    &[],
                    opts.rounds.daemon_seconds,
                    has_unix,
                )
                .map_err(|e| format!("{e:#}")),
            );
            if has_unix {
                daemons.push(
                    run_daemon(
                        &exporter,
                        "--no-collector.unix",
                        &["--no-collector.unix"],
                        opts.rounds.daemon_seconds,
                        false,
                    )
                    .map_err(|e| format!("{e:#}")),
                );
            }
        } else {
            daemons.push(Err(format!("{} not found", exporter.display())));
        }
    }

    let env = UnixEnv {
        sockets: s,
        listeners: l,
        seed: opts.seed,
        census,
        ss,
        run: report::RunInfo::new(
            opts.rounds.runs,
            setup_seconds,
            fleet.len(),
            &exporter,
            baseline,
        ),
    };
    print!("{}", markdown(&env, &results, sanity.as_ref(), &daemons));
    report::write_json(opts.rounds.json.as_deref(), || {
        json_report(&env, &results, sanity.as_ref(), &daemons)
    })?;
    eprintln!("sockdiag-bench: tearing down");
    drop(fleet);
    let failed = results.iter().any(CommandResult::failed) || daemons.iter().any(Result::is_err);
    Ok(report::exit_code(failed))
}

struct UnixEnv {
    sockets: u64,
    listeners: u64,
    seed: u64,
    census: UnixCensus,
    ss: SsCount,
    run: report::RunInfo,
}

fn markdown(
    env: &UnixEnv,
    results: &[CommandResult],
    sanity: Option<&Result<u64, String>>,
    daemons: &[Result<DaemonUnix, String>],
) -> String {
    let c = &env.census;
    let mut s = format!(
        "## sockdiag-bench unix: {} unix sockets, {} listeners\n\n\
         {} unix sockets in a private network namespace: {} listeners ({} seqpacket, half \
         path-named, half abstract), {} of them with clients never accepted and {} over full \
         (queue = backlog + 1), {} clients queued in all; the rest connected pairs. Set up in \
         {:.1} s by {} workers (seed {}). `ss -xlH` shows {} listeners, {} over full, {} \
         queued. {}\n\n",
        env.sockets,
        env.listeners,
        c.sockets,
        c.listeners,
        c.seqpacket_listeners,
        c.pending,
        c.over_full,
        c.queued,
        env.run.setup_seconds,
        env.run.workers,
        env.seed,
        env.ss.listeners,
        env.ss.over_full,
        env.ss.queued,
        env.run.environment(),
    );
    s.push_str(&report::paired_results(
        results,
        &env.run,
        SS_XL,
        "unix-only",
    ));
    match sanity {
        None => {}
        Some(Ok(n)) if *n == env.listeners => s.push_str(&format!(
            "\nThe unix-only snapshot reports all {n} unix listeners.\n"
        )),
        Some(Ok(n)) => s.push_str(&format!(
            "\nWarning: the unix-only snapshot reports {n} unix listeners, not {} (a \
             --collector.unix.max-listeners cap, or a miscount).\n",
            env.listeners
        )),
        Some(Err(e)) => s.push_str(&format!(
            "\nWarning: checking the snapshot's output: {e}.\n"
        )),
    }
    if !daemons.is_empty() {
        s.push_str(
            "\n| daemon (default intervals) | CPU (fraction of one core) | unix pass: median | \
             unix pass: max | unix listeners exported | peak RSS |\n|---|---:|---:|---:|---:|---:|\n",
        );
        for d in daemons {
            match d {
                Ok(d) => {
                    let (med, max) = report::pass_cells(&d.unix_durations);
                    let unexported = if d.unexported > 0.0 {
                        format!(" (+{} unexported)", d.unexported)
                    } else {
                        String::new()
                    };
                    s.push_str(&format!(
                        "{} {med} | {max} | {}{unexported} | {} |\n",
                        d.run.row_start(),
                        d.unix_series,
                        mib(d.run.window.vm_hwm_bytes),
                    ));
                }
                Err(e) => {
                    s.push_str(&format!("| FAILED: {} | | | | | |\n", report::cell(e)));
                }
            }
        }
        if let Some(Ok(d)) = daemons.first() {
            s.push_str(&format!(
                "\nCPU over {:.0} s after a {} s warm-up, from utime + stime in /proc/PID/stat; \
                 the unix pass from `sockdiag_collector_duration_seconds{{collector=\"unix\"}}`, \
                 scraped once a second ({} scrapes).\n",
                d.run.window.seconds,
                daemon::WARMUP.as_secs(),
                d.run.window.scrapes
            ));
        }
        for d in daemons.iter().flatten() {
            s.extend(d.run.note_line());
            if d.unix_durations.is_empty() && d.run.label == "default collectors" {
                s.push_str(
                    "\nNote: the daemon exports no unix collector duration: this build has no \
                     unix collector.\n",
                );
            }
        }
    }
    s
}

fn json_report(
    env: &UnixEnv,
    results: &[CommandResult],
    sanity: Option<&Result<u64, String>>,
    daemons: &[Result<DaemonUnix, String>],
) -> String {
    let to_ss = report::paired_wall_ratio(results, SS_XL);
    let commands = report::commands_json(results, |r, v| {
        v["wall_ratio_to_ss_xl_paired"] = json!(to_ss(r));
    });
    let daemons: Vec<Value> = daemons
        .iter()
        .map(|d| match d {
            Ok(d) => d.run.json(json!({
                "unix_duration_seconds_per_scrape": d.unix_durations,
                "unix_duration_median_seconds": measure::median(d.unix_durations.clone()),
                "unix_listeners_exported": d.unix_series,
                "unix_listeners_unexported": d.unexported,
            })),
            Err(e) => json!({"status": "failed", "note": e}),
        })
        .collect();
    let c = &env.census;
    let doc = env.run.json(json!({
        "unix_sockets": env.sockets,
        "listeners": env.listeners,
        "seed": env.seed,
        "census": {
            "sockets": c.sockets,
            "listeners": c.listeners,
            "seqpacket_listeners": c.seqpacket_listeners,
            "queued": c.queued,
            "over_full": c.over_full,
            "pending": c.pending,
        },
        "ss_xlH": {
            "listeners": env.ss.listeners,
            "queued": env.ss.queued,
            "over_full": env.ss.over_full,
            "pending": env.ss.pending,
        },
        "commands": commands,
        "snapshot_unix_listeners": match sanity {
            None => Value::Null,
            Some(Ok(n)) => json!(n),
            Some(Err(e)) => json!({"error": e}),
        },
        "daemon_listen": LISTEN,
        "daemons": daemons,
    }));
    report::json_text(&doc)
}

/// `unix`: makes the socket directory, then hands over to a coordinator inside a new user +
/// network namespace, and removes the directory afterwards.
pub fn run_outer(bench: BenchOpts, mut opts: UnixOpts) -> Result<ExitCode> {
    let exporter = crate::exporter_path(bench.exporter.as_deref())?;
    opts.rounds.resolve()?;
    let dir = std::env::temp_dir().join(format!("sockdiag-bench-unix.{}", std::process::id()));
    // A path-named socket must fit in sockaddr_un (108 bytes with its NUL).
    let longest = dir
        .join(format!("l{}.sock", opts.listeners))
        .as_os_str()
        .len();
    if longest >= 108 {
        bail!(
            "{} is too long for unix socket paths; set TMPDIR to a shorter directory",
            dir.display()
        );
    }
    let mut args: Vec<OsString> = vec![
        "--exporter".into(),
        exporter.into(),
        "internal-unix".into(),
        "--unix-sockets".into(),
        opts.unix_sockets.to_string().into(),
        "--listeners".into(),
        opts.listeners.to_string().into(),
        "--seed".into(),
        opts.seed.to_string().into(),
        "--socket-dir".into(),
        dir.clone().into(),
    ];
    opts.rounds.push_args(&mut args);
    let status = namespace::with_dir(&dir, || namespace::run_in_new_namespace(&args))?;
    namespace::exit_code_of(status?, "the unix benchmark")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_holds_exactly_the_sockets_and_listeners_asked_for() {
        for (s, l, seed) in [
            (10_000, 1_000, 1),
            (2_000, 200, 7),
            (150_000, 1_000, 3),
            (5, 5, 1),
            (7, 2, 2),
        ] {
            let p = plan(s, l, seed).unwrap();
            let e = p.expected();
            assert_eq!((e.sockets, e.listeners), (s, l), "S={s} L={l}");
            for x in &p.listeners {
                if x.over_full {
                    assert_eq!(x.clients, x.backlog + 1);
                } else {
                    assert!(x.clients <= x.backlog, "{x:?} would be full");
                }
            }
        }
        assert!(plan(10, 11, 1).is_err());
    }

    #[test]
    fn the_mix_has_every_kind_of_listener() {
        let e = plan(10_000, 1_000, 1).unwrap().expected();
        assert!(
            e.seqpacket_listeners > 100 && e.seqpacket_listeners < 300,
            "{e:?}"
        );
        assert!(e.over_full > 50 && e.over_full < 150, "{e:?}");
        assert!(e.pending > 150 && e.pending < 350, "{e:?}");
    }

    #[test]
    fn workers_stay_under_their_descriptor_budget() {
        let p = plan(150_000, 1_000, 1).unwrap();
        let w = assign(&p, 18_000).unwrap();
        assert!(w.iter().all(|w| w.fds() <= 18_000));
        assert_eq!(
            w.iter().map(|w| w.listeners.len() as u64).sum::<u64>(),
            1_000
        );
        assert_eq!(w.iter().map(|w| w.pairs).sum::<u64>(), p.pairs);
        assert_eq!(w.len(), 9);
    }

    #[test]
    fn plan_lines_round_trip() {
        let l = ListenerPlan {
            index: 42,
            seqpacket: true,
            abstract_name: false,
            backlog: 16,
            clients: 17,
            over_full: true,
        };
        assert_eq!(ListenerPlan::parse(&l.line()).unwrap(), l);
    }

    #[test]
    fn ss_lines_count_listeners_queues_and_other_states() {
        let text = "\
u_str LISTEN 3      2      /tmp/x/a.sock 43295 * 0
u_seq LISTEN 1      4      @abs-x 43301 * 0
u_str LISTEN 0      128    @abs-y 43302 * 0
u_str UNCONN 0      0      * 43306 * 0
";
        let c = count_ss(text).unwrap();
        assert_eq!(
            c,
            SsCount {
                listeners: 3,
                queued: 4,
                over_full: 1,
                pending: 1,
                other: 1
            }
        );
    }

    #[test]
    fn snapshot_json_unix_listeners_are_counted_wherever_they_are() {
        let v = json!({"listeners": {"listeners": [
            {"family": "unix", "address": "/run/php.sock"},
            {"family": "ipv4", "address": "127.0.0.1"},
            {"family": "unix", "address": "@x"},
        ]}, "netns": [{"listeners": [{"family": "unix"}]}]});
        assert_eq!(count_unix_listeners(&v), 3);
    }
}
