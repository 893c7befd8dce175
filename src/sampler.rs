//! The sampling tiers and the store they publish to.
//!
//! Two tiers run on their own threads, each owning blocking sock_diag
//! sockets: the listener tier dumps only `LISTEN` sockets (its cost follows
//! the number of listeners) at a fast interval for peaks and full time; the
//! connection tier walks every connection at a slow interval, and reads the
//! namespace's procfs counters. Each publishes an immutable part to the
//! [`Store`]; scrapes only read the store, so no number of scrapers can make
//! the kernel do more work.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crate::aggregate::{ConnectionAggregator, ListenerRecord, Role};
use crate::diag::{DiagError, DiagSocket, DumpRequest, Family, PortFilter, StateSet};
use crate::listeners::ListenerTracker;
use crate::netns::{
    DiscoveryConfig, EnterError, NameSource, NetnsInfo, NsId, Targets, discover, ns_id, run_in,
};
use crate::owners::OwnerCache;
use crate::procfs::{NetnsProc, ProcError};
use crate::snapshot::{
    ConnectionSample, NetnsView, NetstatSample, OwnerSample, PortSummary, QueueSummary,
    SampleStatus,
};

/// The `netns` label of the daemon's own namespace.
pub const HOST_NETNS: &str = "host";

/// Collector names, as used in `--collector.<name>` and the `collector` label.
pub const LISTENERS: &str = "listeners";
/// See [`LISTENERS`].
pub const CONNECTIONS: &str = "connections";
/// See [`LISTENERS`].
pub const NETSTAT: &str = "netstat";
/// See [`LISTENERS`]: namespace discovery.
pub const NETNS: &str = "netns";
/// See [`LISTENERS`]: which process owns each listener.
pub const PROCESSES: &str = "processes";

/// What to sample and how often.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplerConfig {
    /// Run the listener tier.
    pub listeners: bool,
    /// Listener tier interval.
    pub listener_interval: Duration,
    /// Window over which the peak accept-queue length is kept.
    pub peak_window: Duration,
    /// Run the connection tier.
    pub connections: bool,
    /// Connection tier interval (also the procfs interval).
    pub connection_interval: Duration,
    /// Client ports kept as their own series; the rest fold into `other`.
    pub max_client_ports: usize,
    /// Kernel-side port filter for the connection walk.
    pub port_filter: Option<PortFilter>,
    /// Read `tcp_info` to date connections waiting in accept queues (only
    /// while some queue is non-empty).
    pub queue_ages: bool,
    /// Read namespace counters from procfs.
    pub netstat: bool,
    /// Attribute listeners to processes.
    pub processes: bool,
    /// Which namespaces to collect.
    pub discovery: DiscoveryConfig,
    /// Where procfs is mounted.
    pub procfs: PathBuf,
}

/// Health of one collector, as the exporter's own metrics report it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CollectorHealth {
    /// Samples attempted.
    pub samples_total: u64,
    /// Samples that failed.
    pub errors_total: u64,
    /// Duration of the last sample, successful or not.
    pub last_duration: Option<Duration>,
    /// When a sample last succeeded.
    pub last_success: Option<SystemTime>,
    /// Whether the last sample succeeded.
    pub last_ok: bool,
    /// The last error, for `/healthz` and logs.
    pub last_error: Option<String>,
}

/// The namespaces being collected, as the last discovery pass found them.
#[derive(Debug, Clone, Default)]
pub struct TargetSet {
    /// Bumped by every discovery pass: a namespace that could not be
    /// entered is tried again only after the next one.
    pub generation: u64,
    /// The namespaces, with their names and what they join to.
    pub targets: Targets,
}

/// Where the tiers publish and renderers read.
#[derive(Debug, Default)]
pub struct Store {
    netns: Mutex<NetnsState>,
    health: Mutex<BTreeMap<&'static str, CollectorHealth>>,
    /// HTTP requests refused because too many were in flight.
    pub rejected_requests: AtomicU64,
    /// Set once a namespace could not be entered for lack of privilege, so
    /// that is logged once, not once per namespace per sample.
    denial_logged: AtomicBool,
    /// Same for process fds that could not be read.
    owner_denial_logged: AtomicBool,
    /// Same for processes whose namespace could not be seen.
    discovery_denial_logged: AtomicBool,
}

#[derive(Debug, Default)]
struct NetnsState {
    set: Arc<TargetSet>,
    views: BTreeMap<String, NetnsView>,
}

/// Locks a mutex even if a thread panicked while holding it: every value
/// behind these locks is replaced whole, so it is never half-written.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Store {
    /// An empty store expecting these collectors.
    pub fn new(collectors: &[&'static str]) -> Self {
        let store = Store::default();
        {
            let mut health = lock(&store.health);
            for c in collectors {
                health.insert(c, CollectorHealth::default());
            }
        }
        store
    }

    /// Every namespace's latest parts (cheap: clones `Arc`s).
    pub fn views(&self) -> Vec<NetnsView> {
        lock(&self.netns).views.values().cloned().collect()
    }

    /// The namespaces being collected.
    pub fn targets(&self) -> Arc<TargetSet> {
        lock(&self.netns).set.clone()
    }

    /// Every enabled collector's health.
    pub fn health(&self) -> Vec<(&'static str, CollectorHealth)> {
        lock(&self.health)
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect()
    }

    /// Replaces the namespaces being collected. Figures of namespaces no
    /// longer listed (vanished, renamed or excluded) go at once, so none
    /// outlives its namespace by more than one discovery interval.
    pub fn set_targets(&self, targets: Targets) {
        let mut state = lock(&self.netns);
        let generation = state.set.generation + 1;
        state
            .views
            .retain(|name, _| targets.list.iter().any(|t| t.name == *name));
        state.set = Arc::new(TargetSet {
            generation,
            targets,
        });
    }

    /// Updates the view of namespace `info`, unless it stopped being
    /// collected meanwhile: a tier finishing a sample of a namespace that
    /// just vanished must not bring its series back.
    fn publish(&self, info: &NetnsInfo, update: impl FnOnce(&mut NetnsView)) {
        let mut state = lock(&self.netns);
        if !state
            .set
            .targets
            .list
            .iter()
            .any(|t| t.id == info.id && t.name == info.name)
        {
            return;
        }
        let view = state
            .views
            .entry(info.name.clone())
            .or_insert_with(|| NetnsView {
                netns: info.name.clone(),
                ..NetnsView::default()
            });
        update(view);
    }

    /// Records one namespace's sample outcome for `collector`.
    fn publish_status(
        &self,
        info: &NetnsInfo,
        collector: &'static str,
        started: Instant,
        error: Option<String>,
    ) {
        let status = SampleStatus {
            ok: error.is_none(),
            duration: started.elapsed(),
            error,
        };
        self.publish(info, |v| {
            v.status.insert(collector, status);
        });
    }

    /// Records one pass's outcome; logs failures once per streak, not once
    /// per sample, so a persistent error cannot flood the journal.
    fn record(&self, collector: &'static str, took: Duration, result: Result<(), String>) {
        let mut health = lock(&self.health);
        let h = health.entry(collector).or_default();
        h.samples_total += 1;
        h.last_duration = Some(took);
        match result {
            Ok(()) => {
                if !h.last_ok && h.errors_total > 0 {
                    tracing::info!(collector, "collector recovered");
                }
                h.last_ok = true;
                h.last_success = Some(SystemTime::now());
                h.last_error = None;
            }
            Err(e) => {
                if h.last_ok || h.errors_total == 0 {
                    tracing::warn!(collector, error = %e, "sample failed; serving the last good figures");
                } else {
                    tracing::debug!(collector, error = %e, "sample failed again");
                }
                h.errors_total += 1;
                h.last_ok = false;
                h.last_error = Some(e);
            }
        }
    }

    /// Notes a namespace that cannot be entered for lack of privilege:
    /// logged once for the daemon's life, shown per namespace by
    /// `sockdiag_netns_up`.
    fn note_denied(&self, info: &NetnsInfo, error: &EnterError) {
        if !self.denial_logged.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                netns = %info.name,
                error = %error,
                "cannot enter other network namespaces (setns needs CAP_SYS_ADMIN); \
                 collecting only those that can be entered; sockdiag_netns_up shows which \
                 (logged once)"
            );
        } else {
            tracing::debug!(netns = %info.name, error = %error, "cannot enter namespace");
        }
    }

    /// Notes processes whose namespace could not be seen, once.
    fn note_discovery_denied(&self, processes: u64) {
        if processes > 0 && !self.discovery_denial_logged.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                processes,
                "cannot see the network namespace of some processes (needs CAP_SYS_PTRACE): \
                 namespaces only they live in are not collected; \
                 sockdiag_netns_processes_unreadable counts them (logged once)"
            );
        }
    }

    /// Notes process fds that could not be read, once for the daemon's life.
    fn note_owner_denied(&self, info: &NetnsInfo, processes: u64) {
        if processes > 0 && !self.owner_denial_logged.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                netns = %info.name,
                processes,
                "cannot read the open files of some processes (needs CAP_SYS_PTRACE and \
                 CAP_DAC_READ_SEARCH): their listeners get no process name; \
                 sockdiag_listener_owner_unknown counts them (logged once)"
            );
        }
    }
}

/// Dumps the listening sockets of both families into `out` (cleared first).
pub fn dump_listeners(
    socket: &mut DiagSocket,
    meminfo: bool,
    out: &mut Vec<ListenerRecord>,
) -> Result<(), DiagError> {
    out.clear();
    for family in [Family::Ipv4, Family::Ipv6] {
        let request = DumpRequest {
            family,
            states: StateSet::Listeners,
            meminfo,
            tcp_info: false,
            filter: None,
        };
        socket.dump(&request, |r| {
            if let Some(l) = ListenerRecord::from_record(r) {
                out.push(l);
            }
        })?;
    }
    Ok(())
}

/// Reusable buffers of the connection tier.
#[derive(Default)]
pub struct ConnectionWork {
    listeners: Vec<ListenerRecord>,
    aggregator: ConnectionAggregator,
}

/// One connection sample: the current listeners (to tell server from client
/// ports), then one walk of every other socket. The walk asks for
/// `tcp_info`, which dates the connections waiting in accept queues, only
/// when the listener dump just taken shows a non-empty queue: without
/// extensions the walk is the cheapest the kernel offers, and a second walk
/// just for ages would cost as much as the first, since touching every
/// socket, not building replies, is what a dump pays for.
///
/// With a port `filter`, the kernel skips other sockets before building
/// their replies, and per-address queue figures are kept only for listening
/// ports whose connections the walk sees in full.
pub fn sample_connections(
    socket: &mut DiagSocket,
    work: &mut ConnectionWork,
    max_client_ports: usize,
    filter: Option<&PortFilter>,
    queue_ages: bool,
) -> Result<ConnectionSample, DiagError> {
    let taken_at = SystemTime::now();
    dump_listeners(socket, false, &mut work.listeners)?;
    // Only queues the walk sees in full are dated: ages for a listener
    // whose connections are filtered out would never be exported.
    let want_ages = queue_ages
        && work
            .listeners
            .iter()
            .any(|l| l.length > 0 && filter.is_none_or(|f| f.covers(true, l.key.port)));
    let agg = &mut work.aggregator;
    agg.reset(work.listeners.iter());
    let (mut sockets, mut walk_bytes, mut walk_datagrams) = (0u64, 0u64, 0u64);
    for family in [Family::Ipv4, Family::Ipv6] {
        let request = DumpRequest {
            family,
            states: StateSet::Connections,
            meminfo: false,
            tcp_info: want_ages,
            filter,
        };
        let stats = socket.dump(&request, |r| {
            sockets += 1;
            agg.add(r);
        })?;
        walk_bytes += stats.bytes as u64;
        walk_datagrams += stats.datagrams as u64;
    }
    agg.finish(queue_ages);
    let (ports, folded) = agg.ports(max_client_ports, |role, port| {
        filter.is_none_or(|f| f.covers(role == Role::Server, port))
    });
    Ok(ConnectionSample {
        taken_at,
        queues: agg
            .queues()
            .into_iter()
            .filter(|(k, _)| filter.is_none_or(|f| f.covers(true, k.port)))
            .map(|(k, q)| QueueSummary::new(k, q))
            .map(|mut q| {
                // With ages off the series is never exported, so that a
                // dashboard cannot read "0" across the very windows when
                // connections waited.
                if !queue_ages {
                    q.oldest_seconds = None;
                }
                q
            })
            .collect(),
        ports: ports.iter().map(PortSummary::new).collect(),
        sockets,
        walk_bytes,
        walk_datagrams,
        dated: want_ages,
        client_ports_folded: folded as u64,
    })
}

/// Reads the namespace counters. Fields that fail keep the value of
/// `previous`, so one unreadable file does not blank the others; the errors
/// are returned for counting.
pub fn sample_netstat(
    files: &mut NetnsProc,
    previous: Option<&NetstatSample>,
) -> (NetstatSample, Vec<ProcError>) {
    let mut errors = Vec::new();
    let (mut overflows, mut drops) = (
        previous.and_then(|p| p.listen_overflows),
        previous.and_then(|p| p.listen_drops),
    );
    match files.tcp_ext() {
        Ok(ext) => {
            overflows = ext.listen_overflows;
            drops = ext.listen_drops;
        }
        Err(e) => errors.push(e),
    }
    let somaxconn = match files.somaxconn() {
        Ok(v) => Some(v),
        Err(e) => {
            errors.push(e);
            previous.and_then(|p| p.somaxconn)
        }
    };
    (
        NetstatSample {
            taken_at: SystemTime::now(),
            listen_overflows: overflows,
            listen_drops: drops,
            somaxconn,
        },
        errors,
    )
}

/// Wakes sampler threads for shutdown.
#[derive(Debug, Default)]
pub struct Shutdown {
    stopped: Mutex<bool>,
    cv: Condvar,
}

impl Shutdown {
    /// Asks every thread waiting on this to stop.
    pub fn trigger(&self) {
        *lock(&self.stopped) = true;
        self.cv.notify_all();
    }

    /// Sleeps until `deadline` or shutdown; true if shutting down.
    fn wait_until(&self, deadline: Instant) -> bool {
        let mut stopped = lock(&self.stopped);
        loop {
            if *stopped {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            stopped = match self.cv.wait_timeout(stopped, deadline - now) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }
}

/// Runs `tick` every `interval` until shutdown. A slow tick pushes the next
/// one back rather than causing a burst of catch-up ticks.
fn every(interval: Duration, shutdown: &Shutdown, mut tick: impl FnMut()) {
    let mut next = Instant::now();
    loop {
        tick();
        next += interval;
        let now = Instant::now();
        if next < now {
            next = now + interval;
        }
        if shutdown.wait_until(next) {
            return;
        }
    }
}

/// Runs `open` inside namespace `info`: in place for the daemon's own,
/// else on a thread that enters it through the first of its nsfs paths
/// that still names it.
fn open_in<T: Send>(info: &NetnsInfo, open: impl Fn() -> T + Send + Sync) -> Result<T, EnterError> {
    if info.source == NameSource::Host {
        return Ok(open());
    }
    let mut last = None;
    for path in &info.entries {
        match run_in(path, info.id, &open) {
            Ok(v) => return Ok(v),
            // That process is gone; another in the namespace may remain.
            Err(e) if e.is_gone() => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| EnterError::Gone {
        path: PathBuf::from(format!("netns {}", info.name)),
    }))
}

/// Per-namespace state a tier keeps between samples.
struct Slot<S> {
    state: S,
    /// The discovery generation in which entering was refused; not retried
    /// before the next one.
    refused_in: Option<u64>,
}

/// A tier's per-namespace states, following the target list.
struct Slots<S> {
    by_id: HashMap<NsId, Slot<S>>,
}

impl<S> Slots<S> {
    fn new() -> Self {
        Slots {
            by_id: HashMap::new(),
        }
    }

    /// Drops the state of namespaces no longer collected: their sockets and
    /// files are what keeps a deleted namespace alive in the kernel.
    fn follow(&mut self, set: &TargetSet) {
        self.by_id
            .retain(|id, _| set.targets.list.iter().any(|t| t.id == *id));
    }

    fn get(&mut self, info: &NetnsInfo, new: impl FnOnce() -> S) -> &mut Slot<S> {
        self.by_id.entry(info.id).or_insert_with(|| Slot {
            state: new(),
            refused_in: None,
        })
    }
}

/// What one namespace's sample came to, for the pass's outcome.
enum Outcome {
    Done,
    /// Not a fault: the namespace vanished, or cannot be entered (shown by
    /// `sockdiag_netns_up`).
    Skipped,
    Failed(String),
}

/// Sums the outcomes of a pass over every namespace: it fails if any
/// namespace's sample failed, naming them.
#[derive(Default)]
struct Pass {
    errors: Vec<String>,
}

impl Pass {
    fn add(&mut self, info: &NetnsInfo, outcome: Outcome) {
        if let Outcome::Failed(e) = outcome {
            self.errors.push(format!("netns {}: {e}", info.name));
        }
    }

    fn result(self) -> Result<(), String> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(self.errors.join("; "))
        }
    }
}

/// Handles an entering failure: vanished namespaces are dropped quietly,
/// refused ones wait for the next discovery pass.
fn entering_failed<S>(
    store: &Store,
    info: &NetnsInfo,
    collector: &'static str,
    started: Instant,
    slot: &mut Slot<S>,
    generation: u64,
    e: EnterError,
) -> Outcome {
    if e.is_gone() {
        tracing::debug!(netns = %info.name, error = %e, "namespace vanished");
        return Outcome::Skipped;
    }
    store.publish_status(info, collector, started, Some(e.to_string()));
    if e.is_denied() {
        store.note_denied(info, &e);
        slot.refused_in = Some(generation);
        return Outcome::Skipped;
    }
    Outcome::Failed(e.to_string())
}

/// The running sampler threads.
pub struct Sampler {
    shutdown: Arc<Shutdown>,
    threads: Vec<JoinHandle<()>>,
}

impl Sampler {
    /// Finds the namespaces to collect, then starts discovery (if enabled)
    /// and the enabled tiers.
    pub fn start(config: &SamplerConfig, store: Arc<Store>) -> std::io::Result<Self> {
        let shutdown = Arc::new(Shutdown::default());
        let mut threads = Vec::new();
        discovery_pass(config, &store);
        let spawn = |name: &str, tier: fn(&SamplerConfig, &Store, &Shutdown)| {
            let (store, shutdown, config) = (store.clone(), shutdown.clone(), config.clone());
            std::thread::Builder::new()
                .name(name.into())
                .spawn(move || tier(&config, &store, &shutdown))
        };
        if config.discovery.enabled {
            threads.push(spawn("discover-netns", discovery_tier)?);
        }
        if config.listeners {
            threads.push(spawn("sample-listeners", listener_tier)?);
        }
        if config.connections || config.netstat || config.processes {
            threads.push(spawn("sample-connections", connection_tier)?);
        }
        Ok(Sampler { shutdown, threads })
    }

    /// Stops the threads, waiting up to `timeout` for them; a thread stuck in
    /// a dump is left to die with the process.
    pub fn stop(self, timeout: Duration) {
        self.shutdown.trigger();
        let deadline = Instant::now() + timeout;
        for t in self.threads {
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

fn discovery_pass(config: &SamplerConfig, store: &Store) {
    let started = Instant::now();
    let (targets, error) = discover(&config.discovery);
    let (found, excluded) = (targets.list.len(), targets.excluded);
    // A failed scan knows only the daemon's own namespace; dropping every
    // other one's series for a passing procfs hiccup would be a lie of
    // omission, so the last good list stands (the first pass must set one).
    if error.is_none() || store.targets().generation == 0 {
        store.note_discovery_denied(targets.denied);
        store.set_targets(targets);
    }
    if config.discovery.enabled {
        tracing::debug!(found, excluded, "namespaces discovered");
        store.record(
            NETNS,
            started.elapsed(),
            error.map_or(Ok(()), |e| Err(e.to_string())),
        );
    }
}

fn discovery_tier(config: &SamplerConfig, store: &Store, shutdown: &Shutdown) {
    // The first pass ran before the tiers started.
    let mut first = true;
    every(config.discovery.rescan_interval, shutdown, || {
        if !std::mem::take(&mut first) {
            discovery_pass(config, store);
        }
    });
}

struct ListenerNs {
    socket: Option<DiagSocket>,
    tracker: ListenerTracker,
}

fn listener_tier(config: &SamplerConfig, store: &Store, shutdown: &Shutdown) {
    let mut slots = Slots::new();
    let mut records = Vec::new();
    every(config.listener_interval, shutdown, || {
        let started = Instant::now();
        let set = store.targets();
        slots.follow(&set);
        let mut pass = Pass::default();
        for info in &set.targets.list {
            let slot = slots.get(info, || ListenerNs {
                socket: None,
                tracker: ListenerTracker::new(config.peak_window, config.listener_interval),
            });
            if slot.refused_in == Some(set.generation) {
                continue;
            }
            let outcome = sample_listeners_in(store, info, slot, set.generation, &mut records);
            pass.add(info, outcome);
        }
        store.record(LISTENERS, started.elapsed(), pass.result());
    });
}

fn sample_listeners_in(
    store: &Store,
    info: &NetnsInfo,
    slot: &mut Slot<ListenerNs>,
    generation: u64,
    records: &mut Vec<ListenerRecord>,
) -> Outcome {
    let started = Instant::now();
    if slot.state.socket.is_none() {
        match open_in(info, DiagSocket::open) {
            Ok(Ok(s)) => slot.state.socket = Some(s),
            Ok(Err(e)) => {
                store.publish_status(info, LISTENERS, started, Some(e.to_string()));
                return Outcome::Failed(e.to_string());
            }
            Err(e) => {
                return entering_failed(store, info, LISTENERS, started, slot, generation, e);
            }
        }
    }
    let Some(socket) = slot.state.socket.as_mut() else {
        return Outcome::Skipped;
    };
    match dump_listeners(socket, true, records) {
        Ok(()) => {
            let sample = slot
                .state
                .tracker
                .update(started, SystemTime::now(), records);
            store.publish(info, |v| v.listeners = Some(Arc::new(sample)));
            store.publish_status(info, LISTENERS, started, None);
            Outcome::Done
        }
        Err(e) => {
            // A socket that failed once may be in any state: start afresh.
            slot.state.socket = None;
            store.publish_status(info, LISTENERS, started, Some(e.to_string()));
            Outcome::Failed(e.to_string())
        }
    }
}

struct ConnectionNs {
    socket: Option<DiagSocket>,
    files: Option<NetnsProc>,
    last_netstat: Option<Arc<NetstatSample>>,
    owners: OwnerCache,
}

/// One collector's part of a connection-tier pass: its outcome and the
/// time it took, summed over namespaces.
struct Share {
    collector: &'static str,
    enabled: bool,
    pass: Pass,
    spent: Duration,
}

impl Share {
    fn new(collector: &'static str, enabled: bool) -> Self {
        Share {
            collector,
            enabled,
            pass: Pass::default(),
            spent: Duration::ZERO,
        }
    }

    /// Runs `sample` for namespace `info` if this collector is enabled.
    fn run(&mut self, info: &NetnsInfo, sample: impl FnOnce() -> Outcome) -> Option<bool> {
        if !self.enabled {
            return None;
        }
        let t = Instant::now();
        let outcome = sample();
        self.spent += t.elapsed();
        let done = matches!(outcome, Outcome::Done);
        self.pass.add(info, outcome);
        Some(done)
    }

    fn record(self, store: &Store) {
        if self.enabled {
            store.record(self.collector, self.spent, self.pass.result());
        }
    }
}

fn connection_tier(config: &SamplerConfig, store: &Store, shutdown: &Shutdown) {
    let mut slots = Slots::new();
    let mut work = ConnectionWork::default();
    every(config.connection_interval, shutdown, || {
        let set = store.targets();
        slots.follow(&set);
        let mut conn = Share::new(CONNECTIONS, config.connections);
        let mut netstat = Share::new(NETSTAT, config.netstat);
        let mut procs = Share::new(PROCESSES, config.processes);
        for info in &set.targets.list {
            let slot = slots.get(info, || ConnectionNs {
                socket: None,
                files: None,
                last_netstat: None,
                owners: OwnerCache::new(config.procfs.clone(), config.discovery.rescan_interval),
            });
            if slot.refused_in == Some(set.generation) {
                continue;
            }
            if let Err(outcome) = enter_for_connections(config, store, info, slot, set.generation) {
                // Counted once, under the first enabled collector.
                if let Some(share) = [&mut conn, &mut netstat, &mut procs]
                    .into_iter()
                    .find(|s| s.enabled)
                {
                    share.pass.add(info, outcome);
                }
                continue;
            }
            // Whether `work` now holds this namespace's listeners, fresh.
            let listed = conn
                .run(info, || {
                    sample_connections_in(config, store, info, slot, &mut work)
                })
                .unwrap_or(false);
            netstat.run(info, || sample_netstat_in(store, info, slot));
            procs.run(info, || {
                sample_owners_in(store, info, slot, &mut work, listed)
            });
        }
        conn.record(store);
        netstat.record(store);
        procs.record(store);
    });
}

/// Makes sure the namespace's socket and procfs files exist, entering it
/// once for both.
fn enter_for_connections(
    config: &SamplerConfig,
    store: &Store,
    info: &NetnsInfo,
    slot: &mut Slot<ConnectionNs>,
    generation: u64,
) -> Result<(), Outcome> {
    let st = &mut slot.state;
    if st.socket.is_some() && st.files.is_some() {
        return Ok(());
    }
    let started = Instant::now();
    let procfs = config.procfs.clone();
    let host = info.source == NameSource::Host;
    let opened = open_in(info, || {
        let files = if host {
            NetnsProc::own(&procfs)
        } else {
            NetnsProc::open_here(&procfs)
        };
        (DiagSocket::open(), files)
    });
    match opened {
        Ok((socket, files)) => {
            if st.files.is_none() {
                st.files = Some(files);
            }
            match socket {
                Ok(s) => st.socket = Some(s),
                // Reported by the collectors that need it.
                Err(e) => tracing::debug!(netns = %info.name, error = %e, "cannot open socket"),
            }
            Ok(())
        }
        Err(e) => {
            let collector = if config.connections {
                CONNECTIONS
            } else {
                NETSTAT
            };
            Err(entering_failed(
                store, info, collector, started, slot, generation, e,
            ))
        }
    }
}

fn sample_connections_in(
    config: &SamplerConfig,
    store: &Store,
    info: &NetnsInfo,
    slot: &mut Slot<ConnectionNs>,
    work: &mut ConnectionWork,
) -> Outcome {
    let started = Instant::now();
    let result = match slot.state.socket.as_mut() {
        None => Err("no sock_diag socket (see the log)".to_string()),
        Some(s) => sample_connections(
            s,
            work,
            config.max_client_ports,
            config.port_filter.as_ref(),
            config.queue_ages,
        )
        .map_err(|e| e.to_string()),
    };
    match result {
        Ok(sample) => {
            store.publish(info, |v| v.connections = Some(Arc::new(sample)));
            store.publish_status(info, CONNECTIONS, started, None);
            Outcome::Done
        }
        Err(e) => {
            slot.state.socket = None;
            store.publish_status(info, CONNECTIONS, started, Some(e.clone()));
            Outcome::Failed(e)
        }
    }
}

fn sample_netstat_in(store: &Store, info: &NetnsInfo, slot: &mut Slot<ConnectionNs>) -> Outcome {
    let started = Instant::now();
    let st = &mut slot.state;
    let Some(files) = st.files.as_mut() else {
        return Outcome::Skipped;
    };
    let (sample, errors) = sample_netstat(files, st.last_netstat.as_deref());
    let sample = Arc::new(sample);
    st.last_netstat = Some(sample.clone());
    store.publish(info, |v| v.netstat = Some(sample));
    let error = (!errors.is_empty()).then(|| {
        errors
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("; ")
    });
    store.publish_status(info, NETSTAT, started, error.clone());
    error.map_or(Outcome::Done, Outcome::Failed)
}

/// Attributes the namespace's listeners to processes. Uses the listener
/// list the connection sample just took (`listed`), or dumps one: the
/// shared work area may still hold another namespace's.
fn sample_owners_in(
    store: &Store,
    info: &NetnsInfo,
    slot: &mut Slot<ConnectionNs>,
    work: &mut ConnectionWork,
    listed: bool,
) -> Outcome {
    let started = Instant::now();
    let st = &mut slot.state;
    if !listed {
        let Some(socket) = st.socket.as_mut() else {
            return Outcome::Skipped;
        };
        if let Err(e) = dump_listeners(socket, false, &mut work.listeners) {
            st.socket = None;
            store.publish_status(info, PROCESSES, started, Some(e.to_string()));
            return Outcome::Failed(e.to_string());
        }
    }
    let netns = (info.id != (0, 0)).then_some(info.id);
    let (sample, denied) = attribute(&mut st.owners, netns, &work.listeners);
    store.note_owner_denied(info, denied);
    store.publish(info, |v| v.owners = Some(Arc::new(sample)));
    store.publish_status(info, PROCESSES, started, None);
    Outcome::Done
}

/// Brings `cache` in line with one namespace's `listeners` and returns
/// their owners, with the number of processes whose fds could not be read.
fn attribute(
    cache: &mut OwnerCache,
    netns: Option<NsId>,
    listeners: &[ListenerRecord],
) -> (OwnerSample, u64) {
    let wanted: Vec<(u64, u32)> = listeners.iter().map(|l| (l.cookie, l.inode)).collect();
    let stats = cache.refresh(Instant::now(), netns, &wanted);
    let owners = wanted
        .iter()
        .filter_map(|(cookie, _)| Some((*cookie, cache.get(*cookie)?.clone())))
        .collect();
    let sample = OwnerSample {
        owners,
        unknown: stats.unknown,
    };
    (sample, stats.denied)
}

/// One full sample of the calling thread's namespace, for `snapshot`.
/// Returns the view and one message per collector that failed.
pub fn sample_once(config: &SamplerConfig) -> (NetnsView, Vec<(&'static str, String)>) {
    let mut view = NetnsView {
        netns: HOST_NETNS.to_string(),
        ..NetnsView::default()
    };
    let mut errors = Vec::new();
    // Each collector gets a fresh socket: after a failed dump the kernel may
    // still be dumping on the old one and would refuse the next request.
    let mut records = Vec::new();
    if config.listeners || config.processes {
        match DiagSocket::open().and_then(|mut s| dump_listeners(&mut s, true, &mut records)) {
            Ok(()) if config.listeners => {
                let mut tracker =
                    ListenerTracker::new(config.peak_window, config.listener_interval);
                let mut sample = tracker.update(Instant::now(), SystemTime::now(), &records);
                // One look cannot know a peak or how long a queue was full.
                for l in &mut sample.listeners {
                    l.peak_length = None;
                    l.full_seconds = None;
                }
                view.listeners = Some(Arc::new(sample));
            }
            Ok(()) => {}
            Err(e) => errors.push((LISTENERS, e.to_string())),
        }
    }
    if config.connections {
        let sample = DiagSocket::open().and_then(|mut s| {
            sample_connections(
                &mut s,
                &mut ConnectionWork::default(),
                config.max_client_ports,
                config.port_filter.as_ref(),
                config.queue_ages,
            )
        });
        match sample {
            Ok(sample) => view.connections = Some(Arc::new(sample)),
            Err(e) => errors.push((CONNECTIONS, e.to_string())),
        }
    }
    if config.netstat {
        let (sample, errs) = sample_netstat(&mut NetnsProc::own(&config.procfs), None);
        view.netstat = Some(Arc::new(sample));
        errors.extend(errs.into_iter().map(|e| (NETSTAT, e.to_string())));
    }
    if config.processes && !records.is_empty() {
        let mut cache = OwnerCache::new(config.procfs.clone(), Duration::ZERO);
        let netns = ns_id(&config.procfs.join("self/ns/net")).ok();
        let (sample, _) = attribute(&mut cache, netns, &records);
        view.owners = Some(Arc::new(sample));
    }
    (view, errors)
}

/// Counter of scrapes refused with 503, exposed as a metric.
pub fn count_rejected(store: &Store) {
    store.rejected_requests.fetch_add(1, Ordering::Relaxed);
}
