//! `namespaces --uneven`: the setup of issue 12 at the daemon's default flags.
//!
//! 100 child namespaces spread unevenly: one big (90k connections, held by the worker fleet),
//! 49 small (200 connections each), one of which is in trouble (a listener nobody accepts
//! from, its accept queue full), and 50 empty (listeners only). The daemon runs with its
//! default intervals (connections 15 s, listeners 200 ms); what this measures is what an
//! operator pays and gets on such a node: the daemon's CPU as a fraction of one core, the
//! listener pass period it achieves (from `sockdiag_collector_passes_total`, where the build
//! exports it), and how old each namespace's figures are at every scrape
//! (scrape time - `sockdiag_netns_last_sample_timestamp_seconds`), and where the daemon's
//! CPU goes (each collector's `sockdiag_collector_cpu_seconds_total`, the rest being
//! /metrics, HTTP and scheduling), scraped every `--scrape-every`. All of it once with the
//! shared established hash and once with `tcp_child_ehash_entries` set, and with
//! `--baseline-exporter` for a second build too, back to back on the same namespaces.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::{Value, json};

use crate::netns_bench::{
    self as nb, Ctx, DaemonRun, Group, Holders, Role, RunSpec, STUCK_PORT, ehash_for, ms,
    own_ehash_entries, stuck_queue_length,
};
use crate::report::{self, mib};

/// The daemon's default `--collector.listeners.interval`, in seconds.
const LISTENERS_PERIOD: f64 = 0.2;
/// The daemon's default `--collector.connections.interval`, in seconds.
const CONNECTIONS_PERIOD: f64 = 15.0;
/// The stuck listener's backlog: its queue holds one more, so 12 clients leave 9 queued
/// and 3 in SYN-SENT whose SYNs the listener drops.
const STUCK_BACKLOG: i32 = 8;
const STUCK_CLIENTS: u64 = 12;
/// The target: under 5% of one core...
const CPU_TARGET: f64 = 0.05;
/// ...with the listener tier at its period (10% slack for tick jitter).
const PERIOD_SLACK: f64 = 1.1;
const COLLECTORS: [&str; 2] = ["listeners", "connections"];
/// The daemon's collectors, in the order of the columns of the CPU table; any other one a
/// build reports comes after them, by name.
const CPU_COLUMNS: [&str; 7] = [
    "listeners",
    "unix",
    "udp",
    "connections",
    "netstat",
    "processes",
    "netns",
];
/// Longest wait, from the daemon's start, for a connections sample of every namespace
/// before the window opens (two periods of the tier), so that the window sees the daemon
/// past its first pass; past it the window opens anyway, with a note.
const CONNECTIONS_WAIT: Duration = Duration::from_secs(30);

/// How many namespaces of each kind.
struct Layout {
    big: u64,
    /// Small namespaces, the troubled one included.
    small: u32,
    empty: u32,
    listeners: u16,
    connections: u64,
}

impl Layout {
    fn children(&self) -> u32 {
        1 + self.small + self.empty
    }
}

/// `tcp_child_ehash_entries` for each kind of namespace, in the per-namespace half.
#[derive(Clone, Copy, Default)]
struct Entries {
    big: u64,
    small: u64,
    empty: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Build {
    New,
    Baseline,
}

impl Build {
    fn name(self) -> &'static str {
        match self {
            Build::New => "new",
            Build::Baseline => "baseline",
        }
    }
}

/// One daemon run, or why it failed.
struct Measured {
    build: Build,
    round: u32,
    exporter: PathBuf,
    run: Result<DaemonRun, String>,
}

/// One established-hash setting: its namespaces, and every daemon run on them.
struct Half {
    title: &'static str,
    setup_seconds: f64,
    host_walk: f64,
    /// `tcp_ehash_entries` the holders reported, by role.
    ehash: HashMap<&'static str, Vec<i64>>,
    ehash_host: Option<i64>,
    troubled_inode: u64,
    big_inode: u64,
    runs: Vec<Measured>,
}

impl Half {
    /// The netns label the daemon gave the troubled namespace, from any run.
    fn troubled_label(&self) -> Option<String> {
        self.label_of(self.troubled_inode)
    }

    fn label_of(&self, inode: u64) -> Option<String> {
        self.runs
            .iter()
            .filter_map(|m| m.run.as_ref().ok())
            .flat_map(|r| r.scrapes.iter())
            .find_map(|f| {
                f.inode_of
                    .iter()
                    .find(|(_, i)| **i == inode)
                    .map(|(n, _)| n.clone())
            })
    }

    fn ok_runs(&self, build: Build) -> impl Iterator<Item = &DaemonRun> {
        self.runs
            .iter()
            .filter(move |m| m.build == build)
            .filter_map(|m| m.run.as_ref().ok())
    }
}

// ---------------------------------------------------------------------------------------
// Figures of one run.

/// The age of one namespace's figures of one collector at one scrape.
struct Age {
    role: Role,
    netns: String,
    seconds: f64,
    /// No sample of this collector in this namespace yet: `seconds` is the time since the
    /// daemon started, a lower bound.
    never: bool,
}

/// Every (namespace, scrape) pair's age of `collector`'s figures in `run`.
fn ages(run: &DaemonRun, collector: &str) -> Vec<Age> {
    let mut out = Vec::new();
    for f in &run.scrapes {
        for (netns, inode) in &f.inode_of {
            let Some(&role) = run.expected.get(inode) else {
                continue;
            };
            let last = f.last_sample.get(&(netns.clone(), collector.to_string()));
            let (since, never) = match last {
                Some(&t) => (t, false),
                None => (run.started_unix, true),
            };
            out.push(Age {
                role,
                netns: netns.clone(),
                seconds: (f.at - since).max(0.0),
                never,
            });
        }
    }
    out
}

/// Nearest-rank percentile `q` (0 < q <= 1) of sorted values.
fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// The distribution of a set of ages.
#[derive(Default, Debug, Clone, Copy, PartialEq)]
struct AgeStats {
    pairs: usize,
    never: usize,
    p50: Option<f64>,
    p90: Option<f64>,
    p99: Option<f64>,
    max: Option<f64>,
}

impl AgeStats {
    fn of<'a>(ages: impl Iterator<Item = &'a Age>) -> AgeStats {
        let mut never = 0;
        let mut v: Vec<f64> = ages
            .inspect(|a| never += usize::from(a.never))
            .map(|a| a.seconds)
            .collect();
        v.sort_by(f64::total_cmp);
        AgeStats {
            pairs: v.len(),
            never,
            p50: percentile(&v, 0.5),
            p90: percentile(&v, 0.9),
            p99: percentile(&v, 0.99),
            max: v.last().copied(),
        }
    }

    fn json(&self) -> Value {
        json!({
            "pairs": self.pairs,
            "never_sampled": self.never,
            "p50_seconds": self.p50,
            "p90_seconds": self.p90,
            "p99_seconds": self.p99,
            "max_seconds": self.max,
        })
    }
}

/// Which namespaces a row of ages covers.
#[derive(Clone, Copy)]
enum Of {
    All,
    Role(Role),
}

impl Of {
    fn matches(self, a: &Age) -> bool {
        match self {
            Of::All => true,
            Of::Role(r) => a.role == r,
        }
    }
}

/// The ages of `collector`'s figures over several runs (of one build), of the namespaces
/// `of` picks.
fn age_stats(runs: &[&DaemonRun], collector: &str, of: Of) -> AgeStats {
    let all: Vec<Age> = runs.iter().flat_map(|r| ages(r, collector)).collect();
    AgeStats::of(all.iter().filter(|a| of.matches(a)))
}

/// How a counter of the daemon grew over the window: from the first scrape that showed it
/// to the last.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Growth {
    /// Two scrapes or more, none with the counter: the build does not export it.
    NotExported,
    /// Fewer than two scrapes (at distinct times) showed it, so no rate: how many did.
    TooFewScrapes(usize),
    /// It grew `by` over `seconds`.
    Over { seconds: f64, by: f64 },
}

fn growth(run: &DaemonRun, value: impl Fn(&nb::Figures) -> Option<f64>) -> Growth {
    let points: Vec<(f64, f64)> = run
        .scrapes
        .iter()
        .filter_map(|f| value(f).map(|v| (f.at, v)))
        .collect();
    if points.is_empty() && run.scrapes.len() >= 2 {
        return Growth::NotExported;
    }
    match (points.first(), points.last()) {
        (Some(first), Some(last)) if points.len() >= 2 && last.0 > first.0 => Growth::Over {
            seconds: last.0 - first.0,
            by: last.1 - first.1,
        },
        _ => Growth::TooFewScrapes(points.len()),
    }
}

/// "N scrape(s)".
fn scrapes_text(n: usize) -> String {
    format!("{n} scrape{}", if n == 1 { "" } else { "s" })
}

/// How often a collector's passes ran over the window, from the first scrape that showed
/// `sockdiag_collector_passes_total{collector}` to the last.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Period {
    /// The build does not export the counter.
    NotExported,
    /// Fewer than two scrapes showed the counter: how many did.
    TooFewScrapes(usize),
    /// Seconds per pass, and the passes counted.
    Every(f64, f64),
    /// No pass within this many seconds.
    None(f64),
}

fn pass_period(run: &DaemonRun, collector: &str) -> Period {
    match growth(run, |f| f.passes.get(collector).copied()) {
        Growth::NotExported => Period::NotExported,
        Growth::TooFewScrapes(n) => Period::TooFewScrapes(n),
        Growth::Over { seconds, by } if by > 0.0 => Period::Every(seconds / by, by),
        Growth::Over { seconds, .. } => Period::None(seconds),
    }
}

impl Period {
    fn cell(self) -> String {
        match self {
            Period::NotExported => "n/a".to_string(),
            Period::TooFewScrapes(n) => format!("- ({})", scrapes_text(n)),
            Period::Every(p, n) => format!("{} ({n:.0} passes)", secs(Some(p))),
            Period::None(s) => format!("no pass in {s:.0} s"),
        }
    }

    fn json(self) -> Value {
        match self {
            Period::NotExported => Value::Null,
            Period::TooFewScrapes(n) => json!({"seconds_per_pass": null, "too_few_scrapes": n}),
            Period::Every(p, n) => json!({"seconds_per_pass": p, "passes": n}),
            Period::None(s) => json!({"seconds_per_pass": null, "passes": 0, "window": s}),
        }
    }
}

/// Whether a run meets the target.
fn verdict(run: &DaemonRun) -> String {
    let cpu = run.window.cpu_fraction() < CPU_TARGET;
    let at_period = match pass_period(run, "listeners") {
        Period::Every(p, _) => Ok(p <= PERIOD_SLACK * LISTENERS_PERIOD),
        Period::None(_) => Ok(false),
        Period::NotExported => Err("period n/a"),
        Period::TooFewScrapes(_) => Err("period: too few scrapes"),
    };
    match (cpu, at_period) {
        (true, Ok(true)) => "met".to_string(),
        (true, Err(why)) => format!("CPU met; {why}"),
        (false, Err(why)) => format!("not met (CPU); {why}"),
        (true, Ok(false)) => "not met (period)".to_string(),
        (false, Ok(true)) => "not met (CPU)".to_string(),
        (false, Ok(false)) => "not met (CPU, period)".to_string(),
    }
}

/// Where a run's CPU went: each collector's share of one core, from the growth of
/// `sockdiag_collector_cpu_seconds_total{collector}` over the window.
#[derive(Debug, Clone, PartialEq)]
enum CpuSplit {
    /// Two scrapes or more, none with the counter: the build does not export it.
    NotExported,
    /// Fewer than two scrapes in the window: how many.
    TooFewScrapes(usize),
    /// Fraction of one core by collector; a collector shown by fewer than two scrapes is
    /// left out.
    Shares(BTreeMap<String, f64>),
}

fn cpu_split(run: &DaemonRun) -> CpuSplit {
    if run.scrapes.len() < 2 {
        return CpuSplit::TooFewScrapes(run.scrapes.len());
    }
    let names: BTreeSet<&String> = run.scrapes.iter().flat_map(|f| f.cpu.keys()).collect();
    if names.is_empty() {
        return CpuSplit::NotExported;
    }
    let mut shares = BTreeMap::new();
    for name in names {
        if let Growth::Over { seconds, by } = growth(run, |f| f.cpu.get(name).copied()) {
            shares.insert(name.clone(), by / seconds);
        }
    }
    CpuSplit::Shares(shares)
}

impl CpuSplit {
    /// What the collectors leave of the run's CPU (from /proc over the window): rendering
    /// /metrics, the HTTP server, the scheduler.
    fn rest(&self, run: &DaemonRun) -> Option<f64> {
        match self {
            CpuSplit::Shares(s) => Some(run.window.cpu_fraction() - s.values().sum::<f64>()),
            _ => None,
        }
    }

    /// The cell of `collector`.
    fn cell(&self, collector: &str) -> String {
        match self {
            CpuSplit::NotExported => "n/a".to_string(),
            CpuSplit::TooFewScrapes(_) => "-".to_string(),
            CpuSplit::Shares(s) => s.get(collector).map_or("-".to_string(), |&f| share(f)),
        }
    }

    fn json(&self) -> Value {
        match self {
            CpuSplit::Shares(s) => json!(s),
            _ => json!({}),
        }
    }
}

/// A fraction of one core, to 0.1 per mille.
fn share(f: f64) -> String {
    format!("{f:.4}")
}

/// The collectors any run's scrapes showed `sockdiag_collector_cpu_seconds_total` of, in
/// the order of [`CPU_COLUMNS`], unknown ones last by name.
fn cpu_columns<'a>(runs: impl Iterator<Item = &'a DaemonRun>) -> Vec<String> {
    let seen: BTreeSet<&String> = runs
        .flat_map(|r| r.scrapes.iter())
        .flat_map(|f| f.cpu.keys())
        .collect();
    let mut columns: Vec<String> = seen.into_iter().cloned().collect();
    columns.sort_by_key(|c| {
        let at = CPU_COLUMNS.iter().position(|k| k == c);
        (at.unwrap_or(CPU_COLUMNS.len()), c.clone())
    });
    columns
}

/// The CPU table: one row per run, one column per collector in `columns`, then the rest.
fn cpu_table(halves: &[&Half], columns: &[String]) -> String {
    let mut s = String::from("| established hash | daemon | round");
    for c in columns {
        s.push_str(&format!(" | {c}"));
    }
    s.push_str(" | rest |\n|---|---|---:");
    s.push_str(&"|---:".repeat(columns.len() + 1));
    s.push_str("|\n");
    for h in halves {
        for m in &h.runs {
            s.push_str(&format!(
                "| {} | {} | {}",
                h.title,
                m.build.name(),
                m.round + 1
            ));
            match &m.run {
                Ok(r) => {
                    let split = cpu_split(r);
                    for c in columns {
                        s.push_str(&format!(" | {}", split.cell(c)));
                    }
                    let rest = match &split {
                        CpuSplit::NotExported => "n/a".to_string(),
                        _ => split.rest(r).map_or("-".to_string(), share),
                    };
                    s.push_str(&format!(" | {rest} |\n"));
                }
                Err(_) => {
                    s.push_str(" | FAILED");
                    s.push_str(&" |".repeat(columns.len() + 1));
                    s.push('\n');
                }
            }
        }
    }
    s
}

/// Seconds, as ms below one second.
fn secs(v: Option<f64>) -> String {
    match v {
        Some(s) if s.is_finite() && s >= 1.0 => format!("{s:.2} s"),
        other => ms(other),
    }
}

fn cpu_cell(fraction: f64) -> String {
    format!("{fraction:.3} ({:.1}%)", 100.0 * fraction)
}

/// A number, whole when it is, else to one decimal.
fn round_text(v: f64) -> String {
    if (v - v.round()).abs() < 0.05 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// Median over rounds of new / baseline of `f`, paired by round; the rounds paired.
fn paired(half: &Half, f: impl Fn(&DaemonRun) -> Option<f64>) -> (Option<f64>, usize) {
    let mut ratios = Vec::new();
    let rounds = half.runs.iter().map(|m| m.round).max().unwrap_or(0);
    for round in 0..=rounds {
        let of = |b: Build| {
            half.runs
                .iter()
                .find(|m| m.round == round && m.build == b)
                .and_then(|m| m.run.as_ref().ok())
                .and_then(&f)
        };
        if let (Some(n), Some(b)) = (of(Build::New), of(Build::Baseline))
            && b > 0.0
            && n.is_finite()
        {
            ratios.push(n / b);
        }
    }
    let count = ratios.len();
    (crate::measure::median(ratios), count)
}

fn ratio_cell(r: Option<f64>) -> String {
    r.map_or("-".to_string(), |r| format!("{r:.2}x"))
}

// ---------------------------------------------------------------------------------------
// The scenario.

/// The seed of a run's scrape offsets: fresh each time, so that rounds do not repeat one
/// another's phases.
fn spread_seed(round: u32, build: Build) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    now ^ (u64::from(round) << 32) ^ (build as u64)
}

/// `namespaces --uneven` with a big namespace of `n` connections: both halves, every run,
/// the report. True in the last place when a daemon run failed.
pub fn uneven(ctx: &Ctx, n: u64) -> Result<(String, Value, bool)> {
    let opts = ctx.opts;
    let layout = Layout {
        big: n,
        small: opts.small_namespaces(),
        empty: opts.empty_namespaces(),
        listeners: opts.listeners_per_ns,
        connections: opts.connections_per_ns(),
    };
    let small_sockets =
        u64::from(layout.listeners) + 1 + 2 * layout.connections + 2 * STUCK_CLIENTS;
    let entries = match opts.child_ehash_entries {
        Some(e) => Entries {
            big: e,
            small: e,
            empty: e,
        },
        None => Entries {
            big: ehash_for(2 * n + 16),
            small: ehash_for(small_sockets),
            empty: ehash_for(u64::from(layout.listeners)),
        },
    };
    let empty_walk = nb::raw_host_walk()?;
    let shared_ok = nb::child_ehash_to_shared();
    let shared = half(ctx, &layout, None, "shared established hash")?;
    let private = match nb::ready_for_per_ns_hash(shared_ok, empty_walk, entries.big) {
        Ok(()) => Some(half(
            ctx,
            &layout,
            Some(entries),
            "per-namespace established hash",
        )?),
        Err(_) => None,
    };
    let halves: Vec<&Half> = std::iter::once(&shared).chain(private.as_ref()).collect();
    let failed = halves.iter().any(|h| h.runs.iter().any(|m| m.run.is_err()));
    let markdown = markdown(ctx, &layout, entries, empty_walk, &halves);
    let doc = json!({
        "scenario": "uneven",
        "environment": nb::environment(opts),
        "daemon_defaults_assumed": {
            "listeners_interval_seconds": LISTENERS_PERIOD,
            "connections_interval_seconds": CONNECTIONS_PERIOD,
        },
        "exporter": ctx.exporter,
        "baseline_exporter": opts.baseline_exporter,
        "rounds": opts.rounds,
        "seconds": opts.seconds(),
        "scrape_every_seconds": opts.scrape_every().as_secs_f64(),
        "scrapes_per_run": opts.scrapes_per_window(),
        "layout": {
            "child_namespaces": layout.children(),
            "big_ns_connections": layout.big,
            "small_namespaces": layout.small,
            "connections_per_small_ns": layout.connections,
            "empty_namespaces": layout.empty,
            "listeners_per_ns": layout.listeners,
            "stuck_listener": {
                "port": STUCK_PORT,
                "backlog": STUCK_BACKLOG,
                "clients": STUCK_CLIENTS,
                "queued": stuck_queue_length(STUCK_BACKLOG, STUCK_CLIENTS),
            },
        },
        "child_ehash_entries": {"big": entries.big, "small": entries.small, "empty": entries.empty},
        "raw_host_walk_before_setup_seconds": empty_walk,
        "shared": half_json(&shared),
        "per_namespace": private.as_ref().map(half_json),
        "per_namespace_skipped": private.is_none().then(nb::per_ns_hash_skipped_why),
    });
    Ok((markdown, doc, failed))
}

/// Builds the namespaces (with per-namespace hashes if `entries` says so), runs every
/// build `--rounds` times on them, tears them down.
fn half(ctx: &Ctx, layout: &Layout, entries: Option<Entries>, title: &'static str) -> Result<Half> {
    let opts = ctx.opts;
    let e = entries.unwrap_or_default();
    eprintln!(
        "sockdiag-bench: {title}: setting up {} namespaces (one with {} connections)",
        layout.children(),
        layout.big
    );
    let stuck: Vec<String> = [
        "--stuck-backlog".to_string(),
        STUCK_BACKLOG.to_string(),
        "--stuck-clients".to_string(),
        STUCK_CLIENTS.to_string(),
    ]
    .to_vec();
    let groups = [
        Group::big(layout.big, e.big),
        Group::small(opts, Role::Troubled, 1, layout.connections, &stuck, e.small),
        Group::small(
            opts,
            Role::Small,
            layout.small - 1,
            layout.connections,
            &[],
            e.small,
        ),
        Group::small(opts, Role::Empty, layout.empty, 0, &[], e.empty),
    ];
    let mut holders = Holders::default();
    let start = Instant::now();
    nb::start_groups(&mut holders, ctx, &groups, entries.is_some())?;
    let setup_seconds = start.elapsed().as_secs_f64();
    let host_walk = nb::raw_host_walk()?;
    let expected = nb::expected_namespaces(&holders)?;
    let inode = |role| holders.of(role).next().map_or(0, |h| h.inode);
    let (troubled_inode, big_inode) = (inode(Role::Troubled), inode(Role::Big));
    let mut ehash: HashMap<&'static str, Vec<i64>> = HashMap::new();
    for h in &holders.list {
        ehash.entry(h.role.name()).or_default().extend(h.ehash);
    }

    let args = nb::daemon_args(ctx, true, None);
    let baseline = opts
        .baseline_exporter
        .as_deref()
        .filter(|b| crate::exporter_missing(b).is_none());
    let mut runs = Vec::new();
    for round in 0..opts.rounds {
        let order = if round % 2 == 0 {
            [Build::New, Build::Baseline]
        } else {
            [Build::Baseline, Build::New]
        };
        for build in order {
            let exporter: &Path = match (build, baseline) {
                (Build::New, _) => ctx.exporter,
                (Build::Baseline, Some(b)) => b,
                (Build::Baseline, None) => continue,
            };
            let label = format!("{title}, {}, round {}", build.name(), round + 1);
            let spec = RunSpec {
                exporter,
                label: &label,
                args: args.clone(),
                need: &["listeners"],
                want: &["connections"],
                want_within: CONNECTIONS_WAIT,
                spread: Some(spread_seed(round, build)),
            };
            let run =
                nb::run_daemon_with(ctx, spec, expected.clone()).map_err(|e| format!("{e:#}"));
            if let Err(e) = &run {
                eprintln!("sockdiag-bench: {label} failed: {e}");
            }
            runs.push(Measured {
                build,
                round,
                exporter: exporter.to_path_buf(),
                run,
            });
        }
    }
    eprintln!("sockdiag-bench: {title}: tearing down");
    holders.shutdown();
    Ok(Half {
        title,
        setup_seconds,
        host_walk,
        ehash,
        ehash_host: own_ehash_entries(),
        troubled_inode,
        big_inode,
        runs,
    })
}

// ---------------------------------------------------------------------------------------
// The report.

fn markdown(
    ctx: &Ctx,
    layout: &Layout,
    entries: Entries,
    empty_walk: f64,
    halves: &[&Half],
) -> String {
    let opts = ctx.opts;
    let queued = stuck_queue_length(STUCK_BACKLOG, STUCK_CLIENTS);
    let args = nb::daemon_args(ctx, true, None).join(" ");
    let every = opts.scrape_every().as_secs_f64();
    let scrapes = opts.scrapes_per_window();
    let pages = round_text(60.0 / every);
    let mut s = format!(
        "## sockdiag-bench namespaces --uneven: {} namespaces, {} connections, default \
         flags\n\n\
         {} child network namespaces: one big with {} loopback connections ({} sockets, 16 \
         listeners); {} small with {} listeners and {} connections each, one of them in \
         trouble (a listener on 127.0.0.1:{STUCK_PORT} with backlog {STUCK_BACKLOG} that \
         nobody accepts from, {STUCK_CLIENTS} clients: {queued} queued, {} in SYN-SENT, their \
         SYNs dropped); {} empty with {} listeners each. `host` is the bench's own namespace, \
         holding only the daemon ({} namespaces collected in all). {} connections in all. \
         Daemon at its default intervals (listeners {} ms, connections {:.0} s): `{args}`; \
         /metrics scraped every {every} s (`--scrape-every`), at a random point of each \
         {every} s slot (so that ages are seen at every phase of the daemon's ticks), for {} \
         s: {scrapes} scrapes a run, from 2 s after every namespace was up with a sample of \
         both collectors (or {} s after the daemon's start, with a warning below, if the \
         connections samples took longer). Scraping every {every} s, the daemon's CPU \
         includes rendering {pages} pages a minute (a Prometheus scraping every 15-30 s asks \
         for 2-4). Per-namespace hashes: `net.ipv4.tcp_child_ehash_entries` = {} (big) / {} \
         (small) / {} (empty) while they were created. A raw dump of the empty `host` took {} \
         before any setup. {}.\n\n",
        layout.children(),
        layout.big + u64::from(layout.small) * layout.connections,
        layout.children(),
        layout.big,
        2 * layout.big + 16,
        layout.small,
        layout.listeners,
        layout.connections,
        STUCK_CLIENTS - queued,
        layout.empty,
        layout.listeners,
        layout.children() + 1,
        layout.big + u64::from(layout.small) * layout.connections,
        LISTENERS_PERIOD * 1000.0,
        CONNECTIONS_PERIOD,
        opts.seconds(),
        CONNECTIONS_WAIT.as_secs(),
        entries.big,
        entries.small,
        entries.empty,
        ms(Some(empty_walk)),
        report::kernel_and_cpus(),
    );
    s.push_str(&format!(
        "Builds: new = `{}`{}.\n\n",
        ctx.exporter.display(),
        match &opts.baseline_exporter {
            None => String::new(),
            Some(b) => match crate::exporter_missing(b) {
                None => format!("; baseline = `{}`", b.display()),
                Some(why) => format!("; baseline skipped: {why}"),
            },
        }
    ));

    s.push_str(
        "| established hash | daemon | round | CPU (fraction of one core) | peak RSS | \
         listeners pass period | connections pass period | target (< 5% CPU, listeners at \
         200 ms) | /metrics: series, median scrape |\n|---|---|---:|---:|---:|---:|---:|---|---:|\n",
    );
    for h in halves {
        for m in &h.runs {
            let start = format!("| {} | {} | {}", h.title, m.build.name(), m.round + 1);
            match &m.run {
                Ok(r) => s.push_str(&format!(
                    "{start} | {} | {} | {} | {} | {} | {}, {} |\n",
                    cpu_cell(r.window.cpu_fraction()),
                    mib(r.window.vm_hwm_bytes),
                    pass_period(r, "listeners").cell(),
                    pass_period(r, "connections").cell(),
                    verdict(r),
                    r.series,
                    ms(crate::measure::median(r.scrape_seconds.clone())),
                )),
                Err(e) => s.push_str(&format!(
                    "{start} | FAILED: {} | | | | | |\n",
                    report::cell(e)
                )),
            }
        }
    }
    if halves
        .iter()
        .any(|h| h.runs.iter().any(|m| m.build == Build::Baseline))
    {
        s.push_str(
            "\n| established hash | CPU new / baseline | peak RSS new / baseline | listeners \
             age p99 new / baseline | connections age p99 new / baseline | rounds paired \
             |\n|---|---:|---:|---:|---:|---:|\n",
        );
        for h in halves {
            let (cpu, rounds) = paired(h, |r| Some(r.window.cpu_fraction()));
            let (rss, _) = paired(h, |r| Some(r.window.vm_hwm_bytes as f64));
            let p99 = |c: &'static str| paired(h, move |r| AgeStats::of(ages(r, c).iter()).p99).0;
            s.push_str(&format!(
                "| {} | {} | {} | {} | {} | {rounds} |\n",
                h.title,
                ratio_cell(cpu),
                ratio_cell(rss),
                ratio_cell(p99("listeners")),
                ratio_cell(p99("connections")),
            ));
        }
    }

    let runs = halves
        .iter()
        .flat_map(|h| h.runs.iter())
        .filter_map(|m| m.run.as_ref().ok());
    let columns = cpu_columns(runs);
    if columns.is_empty() {
        s.push_str(
            "\nWhere the daemon's CPU goes: n/a, no build here exports \
             `sockdiag_collector_cpu_seconds_total`.\n",
        );
    } else {
        s.push_str(
            "\nWhere the daemon's CPU goes, in fractions of one core: each collector's growth \
             of `sockdiag_collector_cpu_seconds_total{collector}` (its samples on the daemon's \
             sampling threads) from the first to the last scrape of the window, over the time \
             between them; rest: the first table's CPU minus the collectors (rendering \
             /metrics, the HTTP server, the scheduler). n/a: the build does not export the \
             counter; -: no such collector in that run.\n\n",
        );
        s.push_str(&cpu_table(halves, &columns));
    }

    s.push_str(&format!(
        "\nAge of each namespace's figures at each scrape (scrape time - \
         `sockdiag_netns_last_sample_timestamp_seconds`), over every (namespace, scrape) pair \
         ({scrapes} scrapes a run, so pairs = namespaces x {scrapes} x runs; in a row of 100 \
         pairs or fewer, p99 is the max):\n\n\
         | established hash | daemon | namespaces | listeners: p50 | p90 | p99 | max | \
         connections: p50 | p90 | p99 | max | pairs | never sampled: listeners / \
         connections |\n\
         |---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    ));
    for h in halves {
        for build in [Build::New, Build::Baseline] {
            let runs: Vec<&DaemonRun> = h.ok_runs(build).collect();
            if runs.is_empty() {
                continue;
            }
            let troubled = h.troubled_label().unwrap_or_else(|| "?".to_string());
            let big = h.label_of(h.big_inode).unwrap_or_else(|| "?".to_string());
            for (name, of) in [
                (
                    format!("all {} (children + host)", runs[0].expected.len()),
                    Of::All,
                ),
                (format!("troubled `{troubled}`"), Of::Role(Role::Troubled)),
                (format!("big `{big}`"), Of::Role(Role::Big)),
            ] {
                let l = age_stats(&runs, "listeners", of);
                let c = age_stats(&runs, "connections", of);
                s.push_str(&format!(
                    "| {} | {} | {name} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} \
                     |\n",
                    h.title,
                    build.name(),
                    secs(l.p50),
                    secs(l.p90),
                    secs(l.p99),
                    secs(l.max),
                    secs(c.p50),
                    secs(c.p90),
                    secs(c.p99),
                    secs(c.max),
                    l.pairs,
                    l.never,
                    c.never,
                ));
            }
        }
    }

    for h in halves {
        let e = |role: &str| {
            let v = h.ehash.get(role).map(Vec::as_slice).unwrap_or(&[]);
            match (v.iter().min(), v.iter().max()) {
                (Some(a), Some(b)) if a == b => a.to_string(),
                (Some(a), Some(b)) => format!("{a}..{b}"),
                _ => "?".to_string(),
            }
        };
        s.push_str(&format!(
            "\n{}: set up in {:.1} s; tcp_ehash_entries big / small / troubled / empty / host = \
             {} / {} / {} / {} / {} (negative: the host-wide table); a raw dump of the empty \
             `host` took {} with every namespace up.\n",
            h.title,
            h.setup_seconds,
            e("big"),
            e("small"),
            e("troubled"),
            e("empty"),
            h.ehash_host.map_or("?".to_string(), |v| v.to_string()),
            ms(Some(h.host_walk)),
        ));
        for m in &h.runs {
            let Ok(r) = &m.run else { continue };
            let name = format!("{}, {}, round {}", h.title, m.build.name(), m.round + 1);
            let stuck = h.troubled_label().and_then(|t| {
                r.scrapes
                    .last()
                    .and_then(|f| f.stuck_queue.get(&t).copied())
            });
            match stuck {
                Some(q) if q > f64::from(STUCK_BACKLOG) => {}
                Some(q) => s.push_str(&format!(
                    "\nWarning ({name}): the last scrape showed the stuck listener's queue at \
                     {q} (limit {STUCK_BACKLOG}): not full.\n"
                )),
                None => s.push_str(&format!(
                    "\nWarning ({name}): the last scrape had no \
                     `sockdiag_accept_queue_length` for the stuck listener (port \
                     {STUCK_PORT}).\n"
                )),
            }
            for w in &r.warnings {
                s.push_str(&format!("\nWarning ({name}): {w}.\n"));
            }
        }
    }
    s.push_str(&format!(
        "\nCPU: utime + stime of the daemon from /proc/PID/stat over the window, over its wall \
         time. Pass period: window / passes, from `sockdiag_collector_passes_total` (n/a: the \
         build does not export it). Ages: p50 / p90 / p99 / max, nearest rank; `never \
         sampled` pairs (a namespace with no sample of that collector yet) count with the time \
         since the daemon started, a lower bound. At the default intervals a namespace's \
         listener figures should be under {} ms old and its connection figures under {:.0} s.\n",
        LISTENERS_PERIOD * 1000.0 * 2.0,
        CONNECTIONS_PERIOD * 2.0
    ));
    s
}

fn half_json(h: &Half) -> Value {
    let runs: Vec<Value> = h
        .runs
        .iter()
        .map(|m| {
            let base = json!({
                "build": m.build.name(),
                "round": m.round + 1,
                "exporter": m.exporter,
            });
            let more = match &m.run {
                Err(e) => json!({"error": e}),
                Ok(r) => run_json(r, h),
            };
            report::merge(base, more)
        })
        .collect();
    let ratio = |f: &dyn Fn(&DaemonRun) -> Option<f64>| {
        let (r, n) = paired(h, f);
        json!({"paired_median": r, "rounds": n})
    };
    json!({
        "title": h.title,
        "setup_seconds": h.setup_seconds,
        "raw_host_walk_seconds": h.host_walk,
        "tcp_ehash_entries": {
            "by_role": h.ehash,
            "host": h.ehash_host,
        },
        "troubled_netns": h.troubled_label(),
        "big_netns": h.label_of(h.big_inode),
        "runs": runs,
        "new_over_baseline": {
            "cpu": ratio(&|r| Some(r.window.cpu_fraction())),
            "peak_rss": ratio(&|r| Some(r.window.vm_hwm_bytes as f64)),
            "listeners_age_p99": ratio(&|r| AgeStats::of(ages(r, "listeners").iter()).p99),
            "connections_age_p99": ratio(&|r| AgeStats::of(ages(r, "connections").iter()).p99),
        },
    })
}

fn run_json(r: &DaemonRun, h: &Half) -> Value {
    let mut age_doc = serde_json::Map::new();
    for c in COLLECTORS {
        let all = ages(r, c);
        let mut by = serde_json::Map::new();
        by.insert("all".to_string(), AgeStats::of(all.iter()).json());
        for role in [
            Role::Host,
            Role::Big,
            Role::Troubled,
            Role::Small,
            Role::Empty,
        ] {
            let st = AgeStats::of(all.iter().filter(|a| a.role == role));
            by.insert(role.name().to_string(), st.json());
        }
        let mut max_by_ns: HashMap<&str, (Role, f64)> = HashMap::new();
        for a in &all {
            let e = max_by_ns.entry(a.netns.as_str()).or_insert((a.role, 0.0));
            e.1 = e.1.max(a.seconds);
        }
        let mut per_ns: Vec<Value> = max_by_ns
            .into_iter()
            .map(
                |(n, (role, max))| json!({"netns": n, "role": role.name(), "max_age_seconds": max}),
            )
            .collect();
        per_ns.sort_by(|a, b| {
            b["max_age_seconds"]
                .as_f64()
                .unwrap_or(0.0)
                .total_cmp(&a["max_age_seconds"].as_f64().unwrap_or(0.0))
        });
        by.insert("per_namespace_max".to_string(), Value::Array(per_ns));
        age_doc.insert(c.to_string(), Value::Object(by));
    }
    let stuck: Vec<Option<f64>> = match h.troubled_label() {
        Some(t) => r
            .scrapes
            .iter()
            .map(|f| f.stuck_queue.get(&t).copied())
            .collect(),
        None => Vec::new(),
    };
    let split = cpu_split(r);
    json!({
        "cpu_fraction_of_one_core": r.window.cpu_fraction(),
        "cpu_by_collector": split.json(),
        "cpu_rest": split.rest(r),
        "listeners_pass_period": pass_period(r, "listeners").json(),
        "connections_pass_period": pass_period(r, "connections").json(),
        "target": verdict(r),
        "daemon_started_unix": r.started_unix,
        "figure_ages": Value::Object(age_doc),
        "stuck_listener_queue_per_scrape": stuck,
        "daemon": r.json(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn age(role: Role, seconds: f64, never: bool) -> Age {
        Age {
            role,
            netns: "ino:1".to_string(),
            seconds,
            never,
        }
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), Some(50.0));
        assert_eq!(percentile(&v, 0.9), Some(90.0));
        assert_eq!(percentile(&v, 0.99), Some(99.0));
        assert_eq!(percentile(&v, 1.0), Some(100.0));
        assert_eq!(percentile(&[7.0], 0.01), Some(7.0));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn age_stats_count_pairs_never_sampled() {
        let ages = [
            age(Role::Big, 3.0, false),
            age(Role::Small, 1.0, false),
            age(Role::Big, 20.0, true),
        ];
        let st = AgeStats::of(ages.iter());
        assert_eq!((st.pairs, st.never), (3, 1));
        assert_eq!((st.p50, st.max), (Some(3.0), Some(20.0)));
        let big = AgeStats::of(ages.iter().filter(|a| Of::Role(Role::Big).matches(a)));
        assert_eq!((big.pairs, big.p50), (2, Some(3.0)));
    }

    fn run_with(scrapes: &[(f64, &str)]) -> DaemonRun {
        let mut run = DaemonRun::for_tests(HashMap::from([(1, Role::Host), (2, Role::Big)]));
        run.started_unix = 1000.0;
        for (at, body) in scrapes {
            let mut f = nb::Figures::parse(body);
            f.at = *at;
            run.scrapes.push(f);
        }
        run
    }

    #[test]
    fn ages_and_periods_come_from_the_scrapes() {
        let page = |passes: u32| {
            format!(
                "sockdiag_netns_info{{netns=\"host\",inode=\"1\"}} 1\n\
                 sockdiag_netns_info{{netns=\"ino:2\",inode=\"2\"}} 1\n\
                 sockdiag_netns_info{{netns=\"ino:9\",inode=\"9\"}} 1\n\
                 sockdiag_netns_last_sample_timestamp_seconds{{netns=\"host\",collector=\"listeners\"}} 1009.9\n\
                 sockdiag_netns_last_sample_timestamp_seconds{{netns=\"ino:2\",collector=\"listeners\"}} 1009.5\n\
                 sockdiag_netns_last_sample_timestamp_seconds{{netns=\"host\",collector=\"connections\"}} 1001\n\
                 sockdiag_collector_passes_total{{collector=\"listeners\"}} {passes}\n"
            )
        };
        let run = run_with(&[(1010.0, &page(40)), (1020.0, &page(90))]);
        let l = ages(&run, "listeners");
        // ino:9 is not one of ours: left out.
        assert_eq!(l.len(), 4);
        let big = AgeStats::of(l.iter().filter(|a| a.role == Role::Big));
        assert_eq!(big.p50.map(|v| (v * 10.0).round()), Some(5.0));
        let c = ages(&run, "connections");
        let never: Vec<&Age> = c.iter().filter(|a| a.never).collect();
        // The big namespace has no connections sample: aged from the daemon's start.
        assert_eq!(never.len(), 2);
        assert_eq!(never[1].seconds, 20.0);
        assert_eq!(pass_period(&run, "listeners"), Period::Every(0.2, 50.0));
        assert_eq!(pass_period(&run, "connections"), Period::NotExported);
        assert_eq!(Period::NotExported.cell(), "n/a");
    }

    /// A page with `sockdiag_collector_cpu_seconds_total` of each (collector, seconds).
    fn cpu_page(cpu: &[(&str, f64)]) -> String {
        let mut page = "sockdiag_netns_info{netns=\"host\",inode=\"1\"} 1\n\
                        sockdiag_collector_passes_total{collector=\"listeners\"} 7\n"
            .to_string();
        for (c, v) in cpu {
            page.push_str(&format!(
                "sockdiag_collector_cpu_seconds_total{{collector=\"{c}\"}} {v}\n"
            ));
        }
        page
    }

    fn near(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn cpu_by_collector_is_the_growth_between_first_and_last_scrape() {
        let mut run = run_with(&[
            (
                1010.0,
                &cpu_page(&[("listeners", 1.0), ("connections", 2.0)]),
            ),
            (
                1015.0,
                &cpu_page(&[("listeners", 1.2), ("connections", 3.0), ("netns", 0.1)]),
            ),
            (
                1020.0,
                &cpu_page(&[("listeners", 1.5), ("connections", 4.0), ("netns", 0.3)]),
            ),
        ]);
        assert_eq!(run.scrapes[2].cpu.get("netns"), Some(&0.3));
        // 0.3 of a core over the window, as /proc tells it.
        run.window = crate::daemon::Window {
            seconds: 20.0,
            cpu_seconds: 6.0,
            ..Default::default()
        };
        let split = cpu_split(&run);
        let CpuSplit::Shares(shares) = &split else {
            panic!("no shares: {split:?}");
        };
        // 0.5 s over 10 s; 2 s over 10 s; netns from the first scrape that showed it:
        // 0.2 s over 5 s.
        assert!(near(shares["listeners"], 0.05));
        assert!(near(shares["connections"], 0.2));
        assert!(near(shares["netns"], 0.04));
        assert_eq!(shares.len(), 3);
        assert!(near(split.rest(&run).unwrap(), 0.3 - 0.29));
        assert_eq!(split.cell("listeners"), "0.0500");
        assert_eq!(split.cell("udp"), "-");
        let doc = run_json(&run, &half_of(Vec::new()));
        assert!(near(
            doc["cpu_by_collector"]["connections"].as_f64().unwrap(),
            0.2
        ));
        assert!(near(doc["cpu_rest"].as_f64().unwrap(), 0.01));
    }

    #[test]
    fn cpu_by_collector_without_the_counter_or_with_one_scrape() {
        let old = run_with(&[(1010.0, &cpu_page(&[])), (1020.0, &cpu_page(&[]))]);
        let split = cpu_split(&old);
        assert_eq!(split, CpuSplit::NotExported);
        assert_eq!(
            (split.cell("listeners"), split.rest(&old)),
            ("n/a".into(), None)
        );
        let doc = run_json(&old, &half_of(Vec::new()));
        assert_eq!(doc["cpu_by_collector"], json!({}));
        assert_eq!(doc["cpu_rest"], Value::Null);

        // One scrape: no rate, and it says so rather than "not exported".
        let one = run_with(&[(1010.0, &cpu_page(&[("listeners", 1.0)]))]);
        assert_eq!(cpu_split(&one), CpuSplit::TooFewScrapes(1));
        assert_eq!(pass_period(&one, "listeners"), Period::TooFewScrapes(1));
        assert_eq!(pass_period(&one, "listeners").cell(), "- (1 scrape)");
        assert!(verdict(&one).ends_with("period: too few scrapes"));
        let none = run_with(&[]);
        assert_eq!(cpu_split(&none), CpuSplit::TooFewScrapes(0));
        assert_eq!(pass_period(&none, "listeners"), Period::TooFewScrapes(0));
    }

    fn half_of(runs: Vec<Measured>) -> Half {
        Half {
            title: "shared",
            setup_seconds: 0.0,
            host_walk: 0.0,
            ehash: HashMap::new(),
            ehash_host: None,
            troubled_inode: 0,
            big_inode: 0,
            runs,
        }
    }

    #[test]
    fn cpu_table_has_a_column_per_collector_seen_then_the_rest() {
        let measured = |build, round, run| Measured {
            build,
            round,
            exporter: PathBuf::from("x"),
            run,
        };
        let mut new = run_with(&[
            (
                1000.0,
                &cpu_page(&[
                    ("zzz", 0.0),
                    ("netns", 0.0),
                    ("udp", 0.0),
                    ("listeners", 0.0),
                ]),
            ),
            (
                1010.0,
                &cpu_page(&[
                    ("zzz", 0.1),
                    ("netns", 0.1),
                    ("udp", 0.1),
                    ("listeners", 0.2),
                ]),
            ),
        ]);
        new.window = crate::daemon::Window {
            seconds: 10.0,
            cpu_seconds: 1.0,
            ..Default::default()
        };
        let old = run_with(&[(1000.0, &cpu_page(&[])), (1010.0, &cpu_page(&[]))]);
        let half = half_of(vec![
            measured(Build::New, 0, Ok(new)),
            measured(Build::Baseline, 0, Ok(old)),
            measured(Build::New, 1, Err("boom".to_string())),
        ]);
        let columns = cpu_columns(half.runs.iter().filter_map(|m| m.run.as_ref().ok()));
        assert_eq!(columns, ["listeners", "udp", "netns", "zzz"]);
        let table = cpu_table(&[&half], &columns);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0],
            "| established hash | daemon | round | listeners | udp | netns | zzz | rest |"
        );
        assert_eq!(lines[1], "|---|---|---:|---:|---:|---:|---:|---:|");
        // 0.1 of a core: 0.02 + 3 x 0.01 in the collectors, 0.05 left.
        assert_eq!(
            lines[2],
            "| shared | new | 1 | 0.0200 | 0.0100 | 0.0100 | 0.0100 | 0.0500 |"
        );
        assert_eq!(
            lines[3],
            "| shared | baseline | 1 | n/a | n/a | n/a | n/a | n/a |"
        );
        assert_eq!(lines[4], "| shared | new | 2 | FAILED | | | | |");
        assert_eq!(lines.len(), 5);
    }
}
