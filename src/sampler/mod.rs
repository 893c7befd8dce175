//! The driver: finds the namespaces to collect, and runs every enabled
//! collector in each of them on its tier, publishing to the [`Store`].
//!
//! Two tiers run on their own threads: the fast tier every
//! `--collector.listeners.interval` (listener dumps, whose figures change
//! between scrapes), the full tier's collectors every
//! `--collector.connections.interval` (connection walks and procfs reads).
//! The full tier looks at the fast tier's figures as often as the fast tier
//! takes them, so that a namespace whose figures call for it
//! ([`crate::collect::Call`]: a queue the last walk never saw, new drops, a
//! new listener) is sampled within a tick, not a period; a collector with
//! a CPU budget (the connection walk) spends it troubled namespaces first
//! ([`budget`]). A tier keeps, per namespace, the
//! handles its collectors need ([`Handles`]: opened inside the namespace,
//! retried with back-off) and each collector's state, and drops both when
//! the namespace stops being collected. `snapshot` runs the very same
//! passes once ([`run_once`]).

pub mod budget;
pub mod log;
pub mod schedule;

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crate::collect::{Collector, Ctx, NamespaceView, Sample, Tier};
use crate::model::{NetnsView, Outcome};
use crate::netns::{DiscoveryConfig, Handles, Need, NetnsInfo, NsId, discover};
use crate::store::{Store, TargetSet};

use self::budget::{Budget, Candidate, in_line};
use self::log::{FailureLog, Notices};
use self::schedule::Due;

/// The name of namespace discovery in `--collector.netns` and the
/// `collector` label.
pub const NETNS: &str = "netns";

/// What the driver needs beyond the collectors.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Period of the fast tier.
    pub fast_interval: Duration,
    /// Period of the full tier.
    pub full_interval: Duration,
    /// Which namespaces to collect.
    pub discovery: DiscoveryConfig,
    /// Where procfs is mounted.
    pub procfs: std::path::PathBuf,
}

/// A source of monotonic time: the real clock, or a test's.
pub trait Clock: Send + Sync {
    /// Now.
    fn now(&self) -> Instant;
    /// CPU time the calling thread has used: what a sample costs, as
    /// opposed to how long it waited (for the kernel, or for a CPU under a
    /// throttled cgroup).
    fn cpu(&self) -> Duration;
}

/// The real monotonic clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn cpu(&self) -> Duration {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: a valid clock id and a pointer to a timespec we own.
        if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
            return Duration::ZERO;
        }
        Duration::new(
            u64::try_from(ts.tv_sec).unwrap_or(0),
            u32::try_from(ts.tv_nsec).unwrap_or(0),
        )
    }
}

/// Logging shared by every tier.
#[derive(Debug, Default)]
pub struct Logs {
    failures: FailureLog,
    notices: Notices,
}

struct Lane {
    collector: Arc<dyn Collector>,
    scratch: Box<dyn Any + Send>,
    /// Failures of this pass, one line per namespace.
    errors: Vec<String>,
    /// Time spent sampling in this pass.
    spent: Duration,
    /// CPU time the sampling thread spent on it in this pass.
    cpu: Duration,
    /// Its CPU budget, if it has one and budgets apply.
    budget: Option<Budget>,
    /// Whether it was due in some namespace in this pass.
    sampled: bool,
    /// Whether any pass was recorded yet.
    recorded: bool,
}

struct Slot {
    handles: Handles,
    states: Vec<Box<dyn Any + Send>>,
    due: Vec<Due>,
    /// Whether each collector's last sample here failed.
    failing: Vec<bool>,
    /// What each collector's last sample here cost in CPU time.
    cost: Vec<Duration>,
    /// The discovery generation in which entering was refused; not retried
    /// before the next one.
    refused_in: Option<u64>,
}

/// One tier: its collectors, and their state in every namespace.
pub struct TierRunner {
    tier: Tier,
    interval: Duration,
    /// Time between passes: the fast tier's period, on both tiers.
    tick: Duration,
    procfs: std::path::PathBuf,
    lanes: Vec<Lane>,
    slots: HashMap<NsId, Slot>,
    clock: Arc<dyn Clock>,
    logs: Arc<Logs>,
}

impl TierRunner {
    /// A runner for the collectors of `tier` among `collectors`, sampling
    /// each every `interval` where due, in passes `tick` apart; with
    /// `budgets`, collectors that have a CPU budget keep to it (a one-off
    /// look samples everything once instead).
    pub fn new(
        tier: Tier,
        (interval, tick): (Duration, Duration),
        budgets: bool,
        procfs: &std::path::Path,
        collectors: &[Arc<dyn Collector>],
        clock: Arc<dyn Clock>,
        logs: Arc<Logs>,
    ) -> Self {
        let lanes = collectors
            .iter()
            .filter(|c| c.registration().tier == tier)
            .map(|c| Lane {
                collector: c.clone(),
                scratch: c.new_scratch(),
                errors: Vec::new(),
                spent: Duration::ZERO,
                cpu: Duration::ZERO,
                budget: c
                    .cpu_budget()
                    .filter(|_| budgets)
                    .map(|f| Budget::new(f, interval)),
                sampled: false,
                recorded: false,
            })
            .collect();
        TierRunner {
            tier,
            interval,
            tick,
            procfs: procfs.to_path_buf(),
            lanes,
            slots: HashMap::new(),
            clock,
            logs,
        }
    }

    /// Whether it has anything to run.
    pub fn is_empty(&self) -> bool {
        self.lanes.is_empty()
    }

    /// Drops the handles and state of namespaces no longer collected:
    /// handles keep a deleted namespace alive in the kernel.
    pub fn prune(&mut self, store: &Store) {
        self.keep_only(&store.targets());
    }

    fn keep_only(&mut self, set: &TargetSet) {
        self.slots.retain(|id, _| set.get(*id).is_some());
    }

    /// Samples every namespace with every collector that is due there or
    /// called for by the namespace's figures, then lets each budgeted
    /// collector sample the namespaces first in its line while its budget
    /// lasts, and records each collector's pass.
    pub fn pass(&mut self, store: &Store) {
        let set = store.targets();
        // Before sampling, so that a deleted namespace is let go at once.
        self.keep_only(&set);
        for lane in &mut self.lanes {
            lane.collector.begin_pass(&mut *lane.scratch);
            lane.errors.clear();
            lane.spent = Duration::ZERO;
            lane.cpu = Duration::ZERO;
            lane.sampled = false;
        }
        let now = self.clock.now();
        let mut lines: Vec<Vec<Candidate<usize>>> = vec![Vec::new(); self.lanes.len()];
        for (n, info) in set.targets.list.iter().enumerate() {
            let view = self.view(store, info);
            let slot = slot_of(
                &mut self.slots,
                info,
                self.interval,
                &self.procfs,
                &self.lanes,
            );
            if slot.refused_in == Some(set.generation) {
                continue;
            }
            let mut due = Vec::new();
            for (i, lane) in self.lanes.iter().enumerate() {
                let call = view
                    .as_ref()
                    .map(|v| lane.collector.call(v, &*slot.states[i]))
                    .unwrap_or_default();
                let is_due = slot.due[i].is_due(now, self.tick);
                if lane.budget.is_some() {
                    lines[i].push(Candidate {
                        key: n,
                        age: slot.due[i].age(now),
                        due: is_due,
                        failing: slot.failing[i],
                        cost: slot.cost[i],
                        call,
                    });
                } else if is_due || (call.now && !slot.failing[i]) {
                    due.push(i);
                }
            }
            if !due.is_empty() {
                self.sample_namespace(store, info, set.generation, view.as_ref(), &due);
            }
        }
        for (i, mut line) in lines.into_iter().enumerate() {
            if line.is_empty() {
                continue;
            }
            in_line(&mut line);
            let started = self.clock.now();
            if let Some(b) = &mut self.lanes[i].budget {
                b.refill(started);
            }
            for c in line {
                let troubled = c.troubled();
                if !self.lanes[i]
                    .budget
                    .as_ref()
                    .is_some_and(|b| b.allows(troubled, c.cost))
                {
                    // Troubled ones may have spent their share while the
                    // rest still may go; the rest go in turn (see in_line).
                    if troubled {
                        continue;
                    }
                    break;
                }
                let Some(info) = set.targets.list.get(c.key) else {
                    continue;
                };
                // Fetched again: other collectors of this pass published.
                let view = self.view(store, info);
                let cpu = self.sample_namespace(store, info, set.generation, view.as_ref(), &[i]);
                if let Some(b) = &mut self.lanes[i].budget {
                    b.spend(cpu, troubled);
                }
            }
        }
        for (i, lane) in self.lanes.iter_mut().enumerate() {
            let name = lane.collector.registration().name;
            let cost = (lane.spent, lane.cpu);
            if !lane.errors.is_empty() {
                store.record(name, cost, Err(lane.errors.join("; ")));
            } else if self.slots.values().any(|s| s.failing[i]) {
                // A namespace not sampled in this pass (not due, or left
                // for a later one by a budget or a cost bound) failed at
                // its last sample: the collector still fails there, and
                // this pass cannot say otherwise. Its cost still counts.
                store.record_cost(name, lane.cpu);
                continue;
            } else if lane.sampled || !lane.recorded {
                store.record(name, cost, Ok(()));
            } else {
                // Nothing was due: the last pass's duration and success
                // time still describe the figures served.
                continue;
            }
            lane.recorded = true;
        }
    }

    /// Other collectors' parts of a namespace, for those that build on
    /// them (on the full tier: the fast tier's figures).
    fn view(&self, store: &Store, info: &NetnsInfo) -> Option<NetnsView> {
        (self.tier == Tier::Full)
            .then(|| store.parts(info.id))
            .flatten()
    }

    /// Samples one namespace with the collectors `due` (lane indices, in
    /// tier order); returns the CPU time the samples took.
    fn sample_namespace(
        &mut self,
        store: &Store,
        info: &NetnsInfo,
        generation: u64,
        view: Option<&NetnsView>,
        due: &[usize],
    ) -> Duration {
        let mut total_cpu = Duration::ZERO;
        let slot = slot_of(
            &mut self.slots,
            info,
            self.interval,
            &self.procfs,
            &self.lanes,
        );
        if slot.refused_in == Some(generation) {
            return total_cpu;
        }
        let now = self.clock.now();
        let mut needs: Vec<Need> = Vec::new();
        for &i in due {
            for n in self.lanes[i].collector.needs() {
                if !needs.contains(n) {
                    needs.push(*n);
                }
            }
        }
        let mut prepared = slot.handles.prepare(info, &needs, now);
        // Entering the namespace is part of what sampling it costs: it is
        // counted in the first collector's time.
        let mut entering = self.clock.now().saturating_duration_since(now);
        for &i in due {
            let lane = &mut self.lanes[i];
            lane.sampled = true;
            let name = lane.collector.registration().name;
            let started = self.clock.now();
            if prepared.is_ok() {
                // Again for this collector alone: a previous one may have
                // dropped a socket after a failed dump.
                prepared = slot.handles.prepare(info, lane.collector.needs(), started);
            }
            if let Err(e) = &prepared {
                if e.is_gone() {
                    tracing::debug!(netns = %info.name, error = %e, "namespace vanished");
                    return total_cpu;
                }
                // Refused: not a fault of the collector, shown per
                // namespace by sockdiag_netns_up; tried again after the
                // next discovery.
                self.logs.notices.entering_denied(info, e);
                slot.refused_in = Some(generation);
                slot.failing[i] = false;
                store.publish(
                    info,
                    name,
                    None,
                    Outcome::Refused(e.to_string()),
                    Duration::ZERO,
                );
                continue;
            }
            let mut ctx = Ctx {
                info,
                handles: &mut slot.handles,
                view,
                now: started,
                wall: SystemTime::now(),
                period: slot.due[i].period(),
            };
            let cpu_before = self.clock.cpu();
            let sample = lane
                .collector
                .sample(&mut ctx, &mut *slot.states[i], &mut *lane.scratch);
            let ended = self.clock.now();
            let cpu = self.clock.cpu().saturating_sub(cpu_before);
            let took = ended.saturating_duration_since(started) + std::mem::take(&mut entering);
            lane.spent += took;
            lane.cpu += cpu;
            slot.cost[i] = cpu;
            total_cpu += cpu;
            // A collector's cost bound follows the CPU a good sample cost
            // (waiting is no cost to bound); a failed one backs off instead.
            match &sample {
                Sample::Failed(_) => slot.due[i].failed(started, self.interval),
                _ => slot.due[i].sampled(started, self.interval, lane.collector.min_period(cpu)),
            }
            let (part, error) = match sample {
                Sample::Done(part) => (Some(part), None),
                Sample::Partial(part, e) => (Some(part), Some(e.to_string())),
                Sample::Failed(e) => (None, Some(e.to_string())),
                Sample::Idle => (None, None),
            };
            self.logs
                .failures
                .outcome(name, &info.name, ended, error.as_deref());
            if let Some(e) = &error {
                lane.errors.push(format!("netns {}: {e}", info.name));
            }
            slot.failing[i] = error.is_some();
            let outcome = error.map_or(Outcome::Ok, Outcome::Failed);
            store.publish(info, name, part, outcome, took);
        }
        total_cpu
    }
}

/// A namespace's slot, made on first sight.
fn slot_of<'a>(
    slots: &'a mut HashMap<NsId, Slot>,
    info: &NetnsInfo,
    interval: Duration,
    procfs: &std::path::Path,
    lanes: &[Lane],
) -> &'a mut Slot {
    slots.entry(info.id).or_insert_with(|| Slot {
        handles: Handles::new(info, procfs),
        states: lanes.iter().map(|l| l.collector.new_state()).collect(),
        due: lanes.iter().map(|_| Due::new(interval)).collect(),
        failing: vec![false; lanes.len()],
        cost: vec![Duration::ZERO; lanes.len()],
        refused_in: None,
    })
}

/// Wakes sampler threads for shutdown.
#[derive(Debug, Default)]
pub struct Shutdown {
    stopped: Mutex<bool>,
    cv: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
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

/// Runs `tick` every `interval` until shutdown, starting one interval from
/// now. A slow tick pushes the next one back rather than causing a burst of
/// catch-up ticks.
fn every(interval: Duration, shutdown: &Shutdown, mut tick: impl FnMut()) {
    let mut next = Instant::now() + interval;
    loop {
        if shutdown.wait_until(next) {
            return;
        }
        tick();
        next += interval;
        let now = Instant::now();
        if next < now {
            next = now + interval;
        }
    }
}

/// Runs `runner`'s passes every `interval` until shutdown, as [`every`]
/// does, and in between, every `prune_every`, lets go of namespaces that
/// vanished, so that a slow tier (connections every 15 s, or every hour)
/// does not keep a deleted namespace alive until its next pass.
fn run_tier(
    runner: &mut TierRunner,
    interval: Duration,
    prune_every: Duration,
    store: &Store,
    shutdown: &Shutdown,
) {
    let mut next = Instant::now() + interval;
    loop {
        if shutdown.wait_until(next.min(Instant::now() + prune_every)) {
            return;
        }
        if Instant::now() < next {
            runner.prune(store);
            continue;
        }
        runner.pass(store);
        next += interval;
        let now = Instant::now();
        if next < now {
            next = now + interval;
        }
    }
}

/// One discovery pass: finds and names the namespaces, and publishes them
/// unless the scan failed (a failed scan knows only the daemon's own
/// namespace; dropping every other one's series for a passing procfs
/// hiccup would be a lie of omission, so the last good list stands, but the
/// first pass must set one).
pub fn discovery_pass(discovery: &DiscoveryConfig, store: &Store, logs: &Logs) {
    let (started, cpu) = (Instant::now(), SystemClock.cpu());
    let (targets, error) = discover(discovery);
    let (found, excluded) = (targets.list.len(), targets.excluded);
    let mut problems: Vec<String> = targets.problems.clone();
    if error.is_none() || store.targets().generation == 0 {
        logs.notices.discovery_denied(targets.denied);
        store.set_targets(targets);
    }
    if let Some(e) = error {
        problems.insert(0, e.to_string());
    }
    if discovery.enabled {
        tracing::debug!(found, excluded, "namespaces discovered");
        let problem = (!problems.is_empty()).then(|| problems.join("; "));
        logs.failures
            .outcome(NETNS, "", Instant::now(), problem.as_deref());
        let cost = (started.elapsed(), SystemClock.cpu().saturating_sub(cpu));
        store.record(NETNS, cost, problem.map_or(Ok(()), Err));
    }
}

/// What a sampler thread runs until shutdown.
type ThreadBody = dyn FnMut(&Store, &Shutdown) + Send;

/// The running sampler threads.
pub struct Sampler {
    shutdown: Arc<Shutdown>,
    threads: Vec<JoinHandle<()>>,
}

impl Sampler {
    /// Finds the namespaces to collect and takes a first fast pass (so the
    /// full tier's first pass finds listeners to attribute), then starts
    /// discovery (if enabled) and the tiers that have collectors.
    pub fn start(
        config: &Config,
        collectors: &[Arc<dyn Collector>],
        store: Arc<Store>,
    ) -> std::io::Result<Self> {
        let shutdown = Arc::new(Shutdown::default());
        let logs = Arc::new(Logs::default());
        let mut threads = Vec::new();
        discovery_pass(&config.discovery, &store, &logs);
        let [mut fast, mut full] = runners(config, collectors, &logs, true);
        let spawn = |name: &str, mut body: Box<ThreadBody>| {
            let (store, shutdown) = (store.clone(), shutdown.clone());
            std::thread::Builder::new()
                .name(name.into())
                .stack_size(crate::memory::THREAD_STACK_BYTES)
                .spawn(move || body(&store, &shutdown))
        };
        if config.discovery.enabled {
            let (discovery, logs) = (config.discovery.clone(), logs.clone());
            threads.push(spawn(
                "discover-netns",
                Box::new(move |store, shutdown| {
                    every(discovery.rescan_interval, shutdown, || {
                        discovery_pass(&discovery, store, &logs)
                    })
                }),
            )?);
        }
        let prune_every = config.discovery.rescan_interval;
        if !fast.is_empty() {
            fast.pass(&store);
            let interval = config.fast_interval;
            threads.push(spawn(
                "sample-fast",
                Box::new(move |store, shutdown| {
                    run_tier(&mut fast, interval, prune_every, store, shutdown);
                }),
            )?);
        }
        if !full.is_empty() {
            let interval = tick(config);
            threads.push(spawn(
                "sample-full",
                Box::new(move |store, shutdown| {
                    full.pass(store);
                    run_tier(&mut full, interval, prune_every, store, shutdown);
                }),
            )?);
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

/// One look, for `snapshot`: discovery, then one pass of each tier, fast
/// first, into `store`.
pub fn run_once(config: &Config, collectors: &[Arc<dyn Collector>], store: &Store) {
    let logs = Arc::new(Logs::default());
    discovery_pass(&config.discovery, store, &logs);
    for mut tier in runners(config, collectors, &logs, false) {
        tier.pass(store);
    }
}

/// How often both tiers pass: the fast tier's period (or the full tier's,
/// if shorter), so that the full tier answers the fast tier's figures
/// within one of its periods.
fn tick(config: &Config) -> Duration {
    config.fast_interval.min(config.full_interval)
}

/// The fast and the full tier's runners, on the real clock; `budgets`:
/// whether CPU budgets apply (not to a one-off look).
fn runners(
    config: &Config,
    collectors: &[Arc<dyn Collector>],
    logs: &Arc<Logs>,
    budgets: bool,
) -> [TierRunner; 2] {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    [
        (Tier::Fast, config.fast_interval),
        (Tier::Full, config.full_interval),
    ]
    .map(|(tier, interval)| {
        TierRunner::new(
            tier,
            (interval, tick(config)),
            budgets,
            &config.procfs,
            collectors,
            clock.clone(),
            logs.clone(),
        )
    })
}

/// One namespace of a snapshot, as renderers see it.
pub fn namespace_view<'a>(info: &'a NetnsInfo, view: &'a NetnsView) -> NamespaceView<'a> {
    NamespaceView {
        name: &info.name,
        view,
    }
}

#[cfg(test)]
mod tests;
