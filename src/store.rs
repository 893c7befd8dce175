//! The published state: the namespaces being collected, each one's latest
//! parts, and every collector's health. Samplers publish here; renderers
//! read an owned, immutable [`Snapshot`] of it and nothing else, so no
//! number of scrapers can make the kernel do more work, and no renderer
//! sees a sampler's internals.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use crate::model::{NetnsView, Outcome, Part, SampleStatus};
use crate::netns::{NetnsInfo, NsId, Targets};

/// The namespaces being collected, as the last discovery pass found them.
#[derive(Debug, Clone, Default)]
pub struct TargetSet {
    /// Bumped by every discovery pass: a namespace that could not be
    /// entered is tried again only after the next one.
    pub generation: u64,
    /// The namespaces, with their names and what they join to.
    pub targets: Targets,
    index: HashMap<NsId, usize>,
}

impl TargetSet {
    /// Indexes `targets` by namespace identity.
    pub fn new(generation: u64, targets: Targets) -> Self {
        let index = targets
            .list
            .iter()
            .enumerate()
            .map(|(i, t)| (t.id, i))
            .collect();
        TargetSet {
            generation,
            targets,
            index,
        }
    }

    /// The namespace with identity `id`, if it is collected.
    pub fn get(&self, id: NsId) -> Option<&NetnsInfo> {
        self.targets.list.get(*self.index.get(&id)?)
    }
}

/// Health of one collector, as the exporter's own metrics report it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CollectorHealth {
    /// Passes recorded: every discovery pass; every tier pass in which the
    /// collector was due somewhere, and its first.
    pub samples_total: u64,
    /// Passes that failed (in any namespace).
    pub errors_total: u64,
    /// CPU time its samples took, all passes together.
    pub cpu_total: Duration,
    /// Duration of the last pass, successful or not.
    pub last_duration: Option<Duration>,
    /// When a pass last succeeded.
    pub last_success: Option<SystemTime>,
    /// Whether the last pass succeeded.
    pub last_ok: bool,
    /// The last error, for `/healthz`.
    pub last_error: Option<String>,
}

/// Where the samplers publish and renderers read.
#[derive(Debug, Default)]
pub struct Store {
    state: Mutex<State>,
    health: Mutex<BTreeMap<&'static str, CollectorHealth>>,
    rejected_requests: AtomicU64,
    connections: ConnectionCounters,
    /// The web config in service, whose reloads and refusals are shown.
    web: std::sync::OnceLock<Arc<crate::web::WebConfig>>,
}

/// Why an HTTP connection was closed to make room for a new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eviction {
    /// It had not sent a whole request head (or TLS handshake) yet.
    Slow,
    /// It waited on keep-alive after a request.
    Idle,
    /// Its answer waited on a client that did not read it for longer
    /// than a render may take.
    Stalled,
}

impl Eviction {
    /// The `reason` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Eviction::Slow => "slow",
            Eviction::Idle => "idle",
            Eviction::Stalled => "stalled",
        }
    }
}

#[derive(Debug, Default)]
struct ConnectionCounters {
    open: AtomicU64,
    refused: AtomicU64,
    evicted_slow: AtomicU64,
    evicted_idle: AtomicU64,
    evicted_stalled: AtomicU64,
}

/// The HTTP server's connection figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionFigures {
    /// Connections open now.
    pub open: u64,
    /// Newcomers closed at once because every connection was busy.
    pub refused: u64,
    /// Connections closed for a newcomer while sending their first head.
    pub evicted_slow: u64,
    /// Connections closed for a newcomer while idle on keep-alive.
    pub evicted_idle: u64,
    /// Connections closed for a newcomer while stalled on a client that
    /// does not read.
    pub evicted_stalled: u64,
}

#[derive(Debug, Default)]
struct State {
    set: Arc<TargetSet>,
    views: HashMap<NsId, NetnsView>,
}

/// Everything a renderer needs, owned and immutable.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The namespaces being collected.
    pub targets: Arc<TargetSet>,
    /// Each collected namespace's view, by identity.
    pub views: HashMap<NsId, NetnsView>,
    /// Every enabled collector's health, by name.
    pub health: Vec<(&'static str, CollectorHealth)>,
    /// HTTP requests refused because too many were in flight.
    pub rejected_requests: u64,
    /// HTTP connections open, refused and evicted.
    pub connections: ConnectionFigures,
    /// How the web config fares, when there is one.
    pub web: Option<crate::web::WebStatus>,
}

impl Snapshot {
    /// Each collected namespace with its view, in target order; namespaces
    /// nothing was published for yet are left out.
    pub fn namespaces(&self) -> impl Iterator<Item = (&NetnsInfo, &NetnsView)> {
        self.targets
            .targets
            .list
            .iter()
            .filter_map(|info| Some((info, self.views.get(&info.id)?)))
    }
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

    /// The namespaces being collected.
    pub fn targets(&self) -> Arc<TargetSet> {
        lock(&self.state).set.clone()
    }

    /// The latest view of one namespace.
    pub fn view(&self, id: NsId) -> Option<NetnsView> {
        lock(&self.state).views.get(&id).cloned()
    }

    /// The latest parts of one namespace, without the outcomes (which
    /// collectors do not read): what the full tier looks at every tick,
    /// cheaper to copy than the whole view.
    pub fn parts(&self, id: NsId) -> Option<NetnsView> {
        lock(&self.state).views.get(&id).map(|v| NetnsView {
            parts: v.parts.clone(),
            status: BTreeMap::new(),
        })
    }

    /// An owned copy of everything published (cheap: parts are shared).
    pub fn snapshot(&self) -> Snapshot {
        let (targets, views) = {
            let state = lock(&self.state);
            (state.set.clone(), state.views.clone())
        };
        Snapshot {
            targets,
            views,
            health: self.health(),
            rejected_requests: self.rejected_requests.load(Ordering::Relaxed),
            connections: {
                let c = &self.connections;
                ConnectionFigures {
                    open: c.open.load(Ordering::Relaxed),
                    refused: c.refused.load(Ordering::Relaxed),
                    evicted_slow: c.evicted_slow.load(Ordering::Relaxed),
                    evicted_idle: c.evicted_idle.load(Ordering::Relaxed),
                    evicted_stalled: c.evicted_stalled.load(Ordering::Relaxed),
                }
            },
            web: self.web.get().map(|w| w.status()),
        }
    }

    /// Every enabled collector's health.
    pub fn health(&self) -> Vec<(&'static str, CollectorHealth)> {
        lock(&self.health)
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect()
    }

    /// Replaces the namespaces being collected. Figures of namespaces no
    /// longer listed (vanished or excluded) go at once, so none outlives its
    /// namespace by more than one discovery interval.
    pub fn set_targets(&self, targets: Targets) {
        let mut state = lock(&self.state);
        let set = TargetSet::new(state.set.generation + 1, targets);
        state.views.retain(|id, _| set.index.contains_key(id));
        state.set = Arc::new(set);
    }

    /// Records one collector's sample of namespace `info`: its new part,
    /// if any, and how it went; unless the namespace stopped being
    /// collected meanwhile, since a sample finishing just after its
    /// namespace vanished must not bring its series back.
    pub fn publish(
        &self,
        info: &NetnsInfo,
        collector: &'static str,
        part: Option<Arc<dyn Part>>,
        outcome: Outcome,
        duration: Duration,
    ) {
        let mut state = lock(&self.state);
        if !state.set.index.contains_key(&info.id) {
            return;
        }
        let view = state.views.entry(info.id).or_default();
        if let Some(part) = part {
            view.parts.insert(collector, part);
        }
        let ok = outcome == Outcome::Ok;
        let (refused, error) = match outcome {
            Outcome::Ok => (false, None),
            Outcome::Failed(e) => (false, Some(e)),
            Outcome::Refused(e) => (true, Some(e)),
        };
        let last_success = if ok {
            Some(SystemTime::now())
        } else {
            view.status.get(collector).and_then(|s| s.last_success)
        };
        view.status.insert(
            collector,
            SampleStatus {
                ok,
                refused,
                duration,
                error,
                last_success,
            },
        );
    }

    /// Records one pass's outcome for `collector`: how long it took, the
    /// CPU time it cost, and how it went.
    pub fn record(
        &self,
        collector: &'static str,
        (took, cpu): (Duration, Duration),
        result: Result<(), String>,
    ) {
        let mut health = lock(&self.health);
        let h = health.entry(collector).or_default();
        h.samples_total += 1;
        h.cpu_total += cpu;
        h.last_duration = Some(took);
        match result {
            Ok(()) => {
                h.last_ok = true;
                h.last_success = Some(SystemTime::now());
                h.last_error = None;
            }
            Err(e) => {
                h.errors_total += 1;
                h.last_ok = false;
                h.last_error = Some(e);
            }
        }
    }

    /// Adds CPU time spent by `collector` in a pass that records nothing
    /// else (see [`crate::sampler::TierRunner::pass`]).
    pub fn record_cost(&self, collector: &'static str, cpu: Duration) {
        lock(&self.health).entry(collector).or_default().cpu_total += cpu;
    }

    /// Shows `web`'s reloads, auth refusals and failed handshakes in the
    /// metrics; the first call wins.
    pub fn set_web_config(&self, web: Arc<crate::web::WebConfig>) {
        let _ = self.web.set(web);
    }

    /// Counts a scrape refused with 503.
    pub fn count_rejected(&self) {
        self.rejected_requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a new HTTP connection closed at once; the total so far.
    pub fn count_connection_refused(&self) -> u64 {
        self.connections.refused.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Counts an HTTP connection closed to make room; the total so far
    /// for that reason.
    pub fn count_connection_evicted(&self, reason: Eviction) -> u64 {
        let c = &self.connections;
        let counter = match reason {
            Eviction::Slow => &c.evicted_slow,
            Eviction::Idle => &c.evicted_idle,
            Eviction::Stalled => &c.evicted_stalled,
        };
        counter.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Sets the number of open HTTP connections.
    pub fn set_connections_open(&self, n: u64) {
        self.connections.open.store(n, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ListenerSample;
    use crate::netns::{NameSource, own};
    use std::path::Path;

    fn ns(id: u64, name: &str) -> NetnsInfo {
        NetnsInfo {
            id: (1, id),
            name: name.to_string(),
            source: NameSource::Inode,
            ..own(Path::new("/nonexistent"))
        }
    }

    fn targets(list: Vec<NetnsInfo>) -> Targets {
        Targets {
            list,
            ..Targets::default()
        }
    }

    fn part() -> Arc<dyn Part> {
        Arc::new(ListenerSample {
            taken_at: SystemTime::UNIX_EPOCH,
            listeners: Vec::new(),
            unexported: Vec::new(),
        })
    }

    #[test]
    fn publishing_needs_a_collected_namespace() {
        let store = Store::new(&["listeners"]);
        let (a, b) = (ns(1, "a"), ns(2, "b"));
        store.set_targets(targets(vec![a.clone()]));
        store.publish(&a, "listeners", Some(part()), Outcome::Ok, Duration::ZERO);
        store.publish(&b, "listeners", Some(part()), Outcome::Ok, Duration::ZERO);
        let snap = store.snapshot();
        assert_eq!(snap.views.len(), 1);
        assert!(snap.views.contains_key(&a.id));
        assert_eq!(snap.targets.generation, 1);
    }

    #[test]
    fn a_vanished_namespace_loses_its_view_and_a_renamed_one_keeps_it() {
        let store = Store::new(&["listeners"]);
        let (a, b) = (ns(1, "a"), ns(2, "b"));
        store.set_targets(targets(vec![a.clone(), b.clone()]));
        for n in [&a, &b] {
            store.publish(n, "listeners", Some(part()), Outcome::Ok, Duration::ZERO);
        }
        // b vanishes; a is renamed (now named by ip netns): same identity.
        let renamed = NetnsInfo {
            name: "blue".into(),
            ..a.clone()
        };
        store.set_targets(targets(vec![renamed]));
        let snap = store.snapshot();
        let names: Vec<_> = snap.namespaces().map(|(i, _)| i.name.clone()).collect();
        assert_eq!(names, vec!["blue"]);
        assert_eq!(snap.targets.generation, 2);
        assert!(snap.targets.get(b.id).is_none());
    }

    #[test]
    fn a_failed_sample_keeps_the_part_and_the_last_success_time() {
        let store = Store::new(&["listeners"]);
        let a = ns(1, "a");
        store.set_targets(targets(vec![a.clone()]));
        store.publish(&a, "listeners", Some(part()), Outcome::Ok, Duration::ZERO);
        let ok_at = store.view(a.id).unwrap().status["listeners"].last_success;
        store.publish(
            &a,
            "listeners",
            None,
            Outcome::Failed("boom".into()),
            Duration::ZERO,
        );
        let v = store.view(a.id).unwrap();
        assert!(v.parts.contains_key("listeners"));
        let st = &v.status["listeners"];
        assert!(!st.ok);
        assert_eq!(st.error.as_deref(), Some("boom"));
        assert_eq!(st.last_success, ok_at);
    }

    #[test]
    fn health_counts_passes_and_failures() {
        let store = Store::new(&["listeners", "netstat"]);
        store.record(
            "listeners",
            (Duration::from_millis(3), Duration::ZERO),
            Ok(()),
        );
        store.record(
            "listeners",
            (Duration::from_millis(4), Duration::ZERO),
            Err("x".into()),
        );
        let h = store.health();
        assert_eq!(h.len(), 2);
        let (_, l) = &h[0];
        assert_eq!((l.samples_total, l.errors_total, l.last_ok), (2, 1, false));
        assert_eq!(l.last_error.as_deref(), Some("x"));
        assert!(l.last_success.is_some());
        assert_eq!(h[1].1.samples_total, 0);
        store.count_rejected();
        assert_eq!(store.snapshot().rejected_requests, 1);
    }
}
