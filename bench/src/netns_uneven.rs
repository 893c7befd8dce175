//! `namespaces --uneven`: the setup of issue 12 at the daemon's default flags.
//!
//! 100 child namespaces spread unevenly: one big (90k connections, held by the worker fleet),
//! 49 small (200 connections each), one of which is in trouble (a listener nobody accepts
//! from, its accept queue full), and 50 empty (listeners only). The daemon runs with its
//! default intervals (connections 15 s, listeners 200 ms); what this measures is what an
//! operator pays and gets on such a node: the daemon's CPU as a fraction of one core, the
//! listener pass period it achieves (from `sockdiag_collector_passes_total`, where the build
//! exports it), and how old each namespace's figures are at every scrape
//! (scrape time - `sockdiag_netns_last_sample_timestamp_seconds`). All of it once with the
//! shared established hash and once with `tcp_child_ehash_entries` set, and with
//! `--baseline-exporter` for a second build too, back to back on the same namespaces.

use std::collections::HashMap;
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

/// How often a collector's passes ran over the window, from the first scrape that showed
/// `sockdiag_collector_passes_total{collector}` to the last.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Period {
    /// The build does not export the counter.
    NotExported,
    /// Seconds per pass, and the passes counted.
    Every(f64, f64),
    /// No pass within this many seconds.
    None(f64),
}

fn pass_period(run: &DaemonRun, collector: &str) -> Period {
    let points: Vec<(f64, f64)> = run
        .scrapes
        .iter()
        .filter_map(|f| f.passes.get(collector).map(|&p| (f.at, p)))
        .collect();
    let (Some(first), Some(last)) = (points.first(), points.last()) else {
        return Period::NotExported;
    };
    let (seconds, passes) = (last.0 - first.0, last.1 - first.1);
    if points.len() < 2 || seconds <= 0.0 {
        return Period::NotExported;
    }
    if passes > 0.0 {
        Period::Every(seconds / passes, passes)
    } else {
        Period::None(seconds)
    }
}

impl Period {
    fn cell(self) -> String {
        match self {
            Period::NotExported => "n/a".to_string(),
            Period::Every(p, n) => format!("{} ({n:.0} passes)", secs(Some(p))),
            Period::None(s) => format!("no pass in {s:.0} s"),
        }
    }

    fn seconds(self) -> Option<f64> {
        match self {
            Period::Every(p, _) => Some(p),
            _ => None,
        }
    }

    fn json(self) -> Value {
        match self {
            Period::NotExported => Value::Null,
            Period::Every(p, n) => json!({"seconds_per_pass": p, "passes": n}),
            Period::None(s) => json!({"seconds_per_pass": null, "passes": 0, "window": s}),
        }
    }
}

/// Whether a run meets the target.
fn verdict(run: &DaemonRun) -> String {
    let cpu = run.window.cpu_fraction() < CPU_TARGET;
    let period = pass_period(run, "listeners");
    let at_period = period
        .seconds()
        .map(|p| p <= PERIOD_SLACK * LISTENERS_PERIOD);
    match (cpu, at_period) {
        (true, Some(true)) => "met".to_string(),
        (true, None) => "CPU met; period n/a".to_string(),
        (false, None) => "not met (CPU); period n/a".to_string(),
        (true, Some(false)) => "not met (period)".to_string(),
        (false, Some(true)) => "not met (CPU)".to_string(),
        (false, Some(false)) => "not met (CPU, period)".to_string(),
    }
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
        "environment": nb::environment(),
        "daemon_defaults_assumed": {
            "listeners_interval_seconds": LISTENERS_PERIOD,
            "connections_interval_seconds": CONNECTIONS_PERIOD,
        },
        "exporter": ctx.exporter,
        "baseline_exporter": opts.baseline_exporter,
        "rounds": opts.rounds,
        "seconds": opts.seconds(),
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
         /metrics scraped once a second, at a random point of each 1 s slot (so that ages \
         are seen at every phase of the daemon's ticks), for {} s, from 2 s after every \
         namespace was up with a sample of both collectors (or {} s after the daemon's start, \
         with a warning below, if the connections samples took longer). Scraping once a \
         second, the daemon's CPU includes rendering 60 pages a minute. Per-namespace hashes: `net.ipv4.tcp_child_ehash_entries` = {} (big) / {} \
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

    s.push_str(
        "\nAge of each namespace's figures at each scrape (scrape time - \
         `sockdiag_netns_last_sample_timestamp_seconds`), over every (namespace, scrape) pair:\n\n\
         | established hash | daemon | namespaces | listeners: p50 | p90 | p99 | max | \
         connections: p50 | p90 | p99 | max | pairs | never sampled: listeners / \
         connections |\n\
         |---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
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
    json!({
        "cpu_fraction_of_one_core": r.window.cpu_fraction(),
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
}
