//! The sampling tiers and the store they publish to.
//!
//! Two tiers run on their own threads, each owning blocking sock_diag
//! sockets: the listener tier dumps only `LISTEN` sockets (its cost follows
//! the number of listeners) at a fast interval for peaks and full time; the
//! connection tier walks every connection at a slow interval, and reads the
//! namespace's procfs counters. Each publishes an immutable part to the
//! [`Store`]; scrapes only read the store, so no number of scrapers can make
//! the kernel do more work.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crate::aggregate::{ConnectionAggregator, ListenerRecord, Role};
use crate::diag::{DiagError, DiagSocket, DumpRequest, Family, PortFilter, StateSet};
use crate::listeners::ListenerTracker;
use crate::procfs::{NetnsProc, ProcError, read_tcp_ext, read_u64};
use crate::snapshot::{ConnectionSample, NetnsView, NetstatSample, PortSummary, QueueSummary};

/// The `netns` label of the daemon's own namespace.
pub const HOST_NETNS: &str = "host";

/// Collector names, as used in `--collector.<name>` and the `collector` label.
pub const LISTENERS: &str = "listeners";
/// See [`LISTENERS`].
pub const CONNECTIONS: &str = "connections";
/// See [`LISTENERS`].
pub const NETSTAT: &str = "netstat";

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

/// Where the tiers publish and renderers read.
#[derive(Debug, Default)]
pub struct Store {
    netns: Mutex<BTreeMap<String, NetnsView>>,
    health: Mutex<BTreeMap<&'static str, CollectorHealth>>,
    /// HTTP requests refused because too many were in flight.
    pub rejected_requests: AtomicU64,
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
        lock(&self.netns).values().cloned().collect()
    }

    /// Every enabled collector's health.
    pub fn health(&self) -> Vec<(&'static str, CollectorHealth)> {
        lock(&self.health)
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect()
    }

    fn publish(&self, netns: &str, update: impl FnOnce(&mut NetnsView)) {
        let mut map = lock(&self.netns);
        let view = map.entry(netns.to_string()).or_insert_with(|| NetnsView {
            netns: netns.to_string(),
            ..NetnsView::default()
        });
        update(view);
    }

    /// Records one sample's outcome; logs failures once per streak, not once
    /// per sample, so a persistent error cannot flood the journal.
    fn record(
        &self,
        collector: &'static str,
        netns: &str,
        started: Instant,
        result: Result<(), String>,
    ) {
        let mut health = lock(&self.health);
        let h = health.entry(collector).or_default();
        h.samples_total += 1;
        h.last_duration = Some(started.elapsed());
        match result {
            Ok(()) => {
                if !h.last_ok && h.errors_total > 0 {
                    tracing::info!(collector, netns, "collector recovered");
                }
                h.last_ok = true;
                h.last_success = Some(SystemTime::now());
                h.last_error = None;
            }
            Err(e) => {
                if h.last_ok || h.errors_total == 0 {
                    tracing::warn!(collector, netns, error = %e, "sample failed; serving the last good figures");
                } else {
                    tracing::debug!(collector, netns, error = %e, "sample failed again");
                }
                h.errors_total += 1;
                h.last_ok = false;
                h.last_error = Some(e);
            }
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
    files: &NetnsProc,
    previous: Option<&NetstatSample>,
) -> (NetstatSample, Vec<ProcError>) {
    let mut errors = Vec::new();
    let (mut overflows, mut drops) = (
        previous.and_then(|p| p.listen_overflows),
        previous.and_then(|p| p.listen_drops),
    );
    match read_tcp_ext(&files.netstat) {
        Ok(ext) => {
            overflows = ext.listen_overflows;
            drops = ext.listen_drops;
        }
        Err(e) => errors.push(e),
    }
    let somaxconn = match read_u64(&files.somaxconn) {
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

/// Opens the socket if needed; a failure is reported as this tick's error.
fn ensure_socket(socket: &mut Option<DiagSocket>) -> Result<&mut DiagSocket, String> {
    if socket.is_none() {
        *socket = Some(DiagSocket::open().map_err(|e| e.to_string())?);
    }
    socket
        .as_mut()
        .ok_or_else(|| "socket unavailable".to_string())
}

/// The running sampler threads of the daemon's own namespace.
pub struct Sampler {
    shutdown: Arc<Shutdown>,
    threads: Vec<JoinHandle<()>>,
}

impl Sampler {
    /// Starts the enabled tiers for the namespace the daemon runs in.
    pub fn start(config: &SamplerConfig, store: Arc<Store>) -> std::io::Result<Self> {
        let shutdown = Arc::new(Shutdown::default());
        let mut threads = Vec::new();
        if config.listeners {
            let (store, shutdown, config) = (store.clone(), shutdown.clone(), config.clone());
            threads.push(
                std::thread::Builder::new()
                    .name("sample-listeners".into())
                    .spawn(move || listener_tier(&config, &store, &shutdown))?,
            );
        }
        if config.connections || config.netstat {
            let (store, shutdown, config) = (store.clone(), shutdown.clone(), config.clone());
            threads.push(
                std::thread::Builder::new()
                    .name("sample-connections".into())
                    .spawn(move || connection_tier(&config, &store, &shutdown))?,
            );
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

fn listener_tier(config: &SamplerConfig, store: &Store, shutdown: &Shutdown) {
    let mut socket = None;
    let mut records = Vec::new();
    let mut tracker = ListenerTracker::new(config.peak_window, config.listener_interval);
    every(config.listener_interval, shutdown, || {
        let started = Instant::now();
        let result = ensure_socket(&mut socket)
            .and_then(|s| dump_listeners(s, true, &mut records).map_err(|e| e.to_string()));
        let result = result.map(|()| {
            let sample = tracker.update(started, SystemTime::now(), &records);
            store.publish(HOST_NETNS, |v| v.listeners = Some(Arc::new(sample)));
        });
        if result.is_err() {
            // A socket that failed once may be in any state: start afresh.
            socket = None;
        }
        store.record(LISTENERS, HOST_NETNS, started, result);
    });
}

fn connection_tier(config: &SamplerConfig, store: &Store, shutdown: &Shutdown) {
    let mut socket = None;
    let mut work = ConnectionWork::default();
    let files = NetnsProc::own(&config.procfs);
    let mut last_netstat: Option<Arc<NetstatSample>> = None;
    every(config.connection_interval, shutdown, || {
        if config.connections {
            let started = Instant::now();
            let result = ensure_socket(&mut socket).and_then(|s| {
                sample_connections(
                    s,
                    &mut work,
                    config.max_client_ports,
                    config.port_filter.as_ref(),
                    config.queue_ages,
                )
                .map_err(|e| e.to_string())
            });
            let result = result.map(|sample| {
                store.publish(HOST_NETNS, |v| v.connections = Some(Arc::new(sample)));
            });
            if result.is_err() {
                socket = None;
            }
            store.record(CONNECTIONS, HOST_NETNS, started, result);
        }
        if config.netstat {
            let started = Instant::now();
            let (sample, errors) = sample_netstat(&files, last_netstat.as_deref());
            let sample = Arc::new(sample);
            last_netstat = Some(sample.clone());
            store.publish(HOST_NETNS, |v| v.netstat = Some(sample));
            let result = if errors.is_empty() {
                Ok(())
            } else {
                Err(errors
                    .iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; "))
            };
            store.record(NETSTAT, HOST_NETNS, started, result);
        }
    });
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
    if config.listeners {
        let mut records = Vec::new();
        match DiagSocket::open().and_then(|mut s| dump_listeners(&mut s, true, &mut records)) {
            Ok(()) => {
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
        let (sample, errs) = sample_netstat(&NetnsProc::own(&config.procfs), None);
        view.netstat = Some(Arc::new(sample));
        errors.extend(errs.into_iter().map(|e| (NETSTAT, e.to_string())));
    }
    (view, errors)
}

/// Counter of scrapes refused with 503, exposed as a metric.
pub fn count_rejected(store: &Store) {
    store.rejected_requests.fetch_add(1, Ordering::Relaxed);
}
