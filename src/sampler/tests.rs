//! The driver with made-up collectors and a made-up clock: which
//! namespaces get sampled when, what is published, what is recorded.

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::*;
use crate::collect::{Call, Common, Registration, SampleError, TypedCollector};
use crate::family::Families;
use crate::model::{ListenerSample, NetstatSample};
use crate::netns::{NameSource, Targets, own};

/// A clock that moves only when told, and CPU time that grows with it.
#[derive(Default)]
struct FakeClock(Mutex<Option<Instant>>, Mutex<Duration>);

impl FakeClock {
    fn advance(&self, by: Duration) {
        let mut t = self.0.lock().unwrap();
        *t = Some(t.unwrap_or_else(Instant::now) + by);
        *self.1.lock().unwrap() += by;
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Instant {
        *self.0.lock().unwrap().get_or_insert_with(Instant::now)
    }

    /// Made-up samples spend all their made-up time working.
    fn cpu(&self) -> Duration {
        *self.1.lock().unwrap()
    }
}

fn never_built(_: &clap::ArgMatches, _: &Common) -> Box<dyn Collector> {
    unreachable!("test collectors are made by hand")
}

static FAST: Registration = Registration {
    name: "fast_test",
    help: "",
    default_enabled: true,
    tier: Tier::Fast,
    families: &[],
    args: Vec::new,
    build: never_built,
};

static FULL: Registration = Registration {
    name: "full_test",
    help: "",
    default_enabled: true,
    tier: Tier::Full,
    families: &[],
    args: Vec::new,
    build: never_built,
};

/// Publishes a `ListenerSample` on the fast tier; each sample costs
/// `cost` on the fake clock, fails in namespaces named `bad*`, and asks for
/// `least` between samples if set.
struct Fake {
    clock: Arc<FakeClock>,
    cost: Duration,
    least: Option<Duration>,
    samples: AtomicU64,
    states: AtomicU64,
}

impl Fake {
    fn new(clock: &Arc<FakeClock>, cost: Duration, least: Option<Duration>) -> Arc<Self> {
        Arc::new(Fake {
            clock: clock.clone(),
            cost,
            least,
            samples: AtomicU64::new(0),
            states: AtomicU64::new(0),
        })
    }
}

impl TypedCollector for Fake {
    /// Samples taken in this namespace.
    type State = u64;
    type Scratch = ();

    fn registration(&self) -> &'static Registration {
        &FAST
    }
    fn needs(&self) -> &'static [Need] {
        &[]
    }
    fn new_state(&self) -> u64 {
        self.states.fetch_add(1, Ordering::Relaxed);
        0
    }
    fn new_scratch(&self) {}
    fn sample(&self, ctx: &mut Ctx<'_>, state: &mut u64, _: &mut ()) -> Sample {
        self.clock.advance(self.cost);
        self.samples.fetch_add(1, Ordering::Relaxed);
        *state += 1;
        if ctx.info.name.starts_with("bad") && *state > 1 {
            return Sample::Failed(SampleError::Internal("made to fail"));
        }
        Sample::Done(Arc::new(ListenerSample {
            taken_at: ctx.wall,
            listeners: Vec::new(),
            unexported: vec![("samples", *state)],
        }))
    }
    fn min_period(&self, _took: Duration) -> Option<Duration> {
        self.least
    }
    fn render(&self, _: &NamespaceView<'_>, _: &mut Families) {}
}

/// A full-tier part carrying one figure, for made-up collectors.
fn netstat_part(taken_at: SystemTime, listen_overflows: Option<u64>) -> Arc<NetstatSample> {
    Arc::new(NetstatSample {
        taken_at,
        listen_overflows,
        listen_drops: None,
        somaxconn: None,
        ehash_shared: None,
        udp_rcvbuf_errors: None,
        udp_in_errors: None,
    })
}

/// Runs on the full tier and reports whether it saw the fast part.
struct Reader;

impl TypedCollector for Reader {
    type State = ();
    type Scratch = ();
    fn registration(&self) -> &'static Registration {
        &FULL
    }
    fn needs(&self) -> &'static [Need] {
        &[]
    }
    fn new_state(&self) {}
    fn new_scratch(&self) {}
    fn sample(&self, ctx: &mut Ctx<'_>, _: &mut (), _: &mut ()) -> Sample {
        let saw = ctx
            .view
            .and_then(|v| v.part::<ListenerSample>(FAST.name))
            .map_or(0, |s| s.unexported[0].1);
        Sample::Done(netstat_part(ctx.wall, Some(saw)))
    }
    fn render(&self, _: &NamespaceView<'_>, _: &mut Families) {}
}

/// A namespace entered in place (as the daemon's own is), so no test
/// needs privileges; the made-up collectors need no handles anyway.
fn ns(id: u64, name: &str) -> NetnsInfo {
    NetnsInfo {
        id: (7, id),
        name: name.to_string(),
        source: NameSource::Host,
        ..own(Path::new("/nonexistent"))
    }
}

fn store_with(list: Vec<NetnsInfo>) -> Store {
    let store = Store::new(&[FAST.name, FULL.name]);
    store.set_targets(Targets {
        list,
        ..Targets::default()
    });
    store
}

fn runner(tier: Tier, collectors: &[Arc<dyn Collector>], clock: &Arc<FakeClock>) -> TierRunner {
    let clock: Arc<dyn Clock> = clock.clone();
    TierRunner::new(
        tier,
        (Duration::from_millis(200), Duration::from_millis(200)),
        true,
        Path::new("/proc"),
        collectors,
        clock,
        Arc::new(Logs::default()),
    )
}

fn samples_in(store: &Store, id: u64) -> Option<u64> {
    store
        .view((7, id))?
        .part::<ListenerSample>(FAST.name)
        .map(|s| s.unexported[0].1)
}

#[test]
fn every_namespace_is_sampled_every_pass_and_published_apart() {
    let clock = Arc::new(FakeClock::default());
    let fake = Fake::new(&clock, Duration::from_millis(1), None);
    let store = store_with(vec![ns(1, "a"), ns(2, "b")]);
    let mut fast = runner(Tier::Fast, &[fake.clone() as Arc<dyn Collector>], &clock);
    for _ in 0..3 {
        fast.pass(&store);
        clock.advance(Duration::from_millis(200));
    }
    assert_eq!(
        (samples_in(&store, 1), samples_in(&store, 2)),
        (Some(3), Some(3))
    );
    let h = store.health();
    assert_eq!(h[0].0, FAST.name);
    assert_eq!((h[0].1.samples_total, h[0].1.errors_total), (3, 0));
    assert_eq!(
        h[0].1.last_duration,
        Some(Duration::from_millis(2)),
        "time spent, summed over namespaces"
    );
}

#[test]
fn a_failing_namespace_fails_the_pass_and_keeps_its_last_part() {
    let clock = Arc::new(FakeClock::default());
    let fake = Fake::new(&clock, Duration::ZERO, None);
    let store = store_with(vec![ns(1, "good"), ns(2, "bad")]);
    let mut fast = runner(Tier::Fast, &[fake as Arc<dyn Collector>], &clock);
    fast.pass(&store);
    clock.advance(Duration::from_millis(200));
    fast.pass(&store);
    let h = &store.health()[0].1;
    assert_eq!((h.samples_total, h.errors_total), (2, 1));
    let error = h.last_error.as_deref().unwrap();
    assert!(error.starts_with("netns bad: "), "{error}");
    assert!(!error.contains("good"));
    let bad = store.view((7, 2)).unwrap();
    assert_eq!(
        bad.part::<ListenerSample>(FAST.name).unwrap().unexported[0].1,
        1
    );
    let st = &bad.status[FAST.name];
    assert!(!st.ok && st.last_success.is_some());
    assert!(store.view((7, 1)).unwrap().status[FAST.name].ok);
}

#[test]
fn a_dear_namespace_is_sampled_less_often_than_a_cheap_one() {
    let clock = Arc::new(FakeClock::default());
    // Every sample asks for a second before the next one: one tick in five.
    let fake = Fake::new(&clock, Duration::ZERO, Some(Duration::from_secs(1)));
    let store = store_with(vec![ns(1, "a")]);
    let mut fast = runner(Tier::Fast, &[fake.clone() as Arc<dyn Collector>], &clock);
    for _ in 0..20 {
        fast.pass(&store);
        clock.advance(Duration::from_millis(200));
    }
    assert_eq!(
        fake.samples.load(Ordering::Relaxed),
        4,
        "at 0, 1, 2 and 3 s"
    );
}

#[test]
fn a_vanished_namespace_loses_its_state_and_a_new_one_starts_afresh() {
    let clock = Arc::new(FakeClock::default());
    let fake = Fake::new(&clock, Duration::ZERO, None);
    let store = store_with(vec![ns(1, "a"), ns(2, "b")]);
    let mut fast = runner(Tier::Fast, &[fake.clone() as Arc<dyn Collector>], &clock);
    fast.pass(&store);
    clock.advance(Duration::from_millis(200));
    store.set_targets(Targets {
        list: vec![ns(1, "a"), ns(3, "c")],
        ..Targets::default()
    });
    fast.pass(&store);
    assert_eq!(fast.slots.len(), 2);
    assert!(!fast.slots.contains_key(&(7, 2)));
    assert_eq!(fake.states.load(Ordering::Relaxed), 3);
    assert_eq!(samples_in(&store, 1), Some(2));
    assert_eq!(samples_in(&store, 3), Some(1));
    assert!(store.view((7, 2)).is_none());
}

#[test]
fn the_full_tier_reads_what_the_fast_tier_published() {
    let clock = Arc::new(FakeClock::default());
    let fake = Fake::new(&clock, Duration::ZERO, None);
    let collectors: Vec<Arc<dyn Collector>> = vec![fake, Arc::new(Reader)];
    let store = store_with(vec![ns(1, "a")]);
    let mut fast = runner(Tier::Fast, &collectors, &clock);
    let mut full = runner(Tier::Full, &collectors, &clock);
    assert_eq!((fast.lanes.len(), full.lanes.len()), (1, 1));
    fast.pass(&store);
    // Not due again yet: the pass samples nothing.
    fast.pass(&store);
    clock.advance(Duration::from_millis(200));
    fast.pass(&store);
    full.pass(&store);
    let seen = store
        .view((7, 1))
        .unwrap()
        .part::<NetstatSample>(FULL.name)
        .unwrap()
        .listen_overflows;
    assert_eq!(seen, Some(2));
    assert_eq!(
        store.health()[0].1.samples_total,
        2,
        "every pass that sampled is recorded"
    );
}

/// Regression: a pass in which a collector was due nowhere (its one
/// namespace is dear, so sampled every second) recorded a success with a
/// duration of 0, though that namespace's last sample had failed:
/// `sockdiag_collector_success` went back to 1 and its last success time
/// moved on every tick, so a failing dear namespace never held
/// `SockdiagCollectorFailing` or `SockdiagCollectorStale`, and the
/// collector's duration read 0 most of the time.
#[test]
fn a_pass_that_samples_nothing_leaves_the_collectors_health_alone() {
    let clock = Arc::new(FakeClock::default());
    let fake = Fake::new(
        &clock,
        Duration::from_millis(5),
        Some(Duration::from_secs(1)),
    );
    let store = store_with(vec![ns(1, "bad")]);
    let mut fast = runner(Tier::Fast, &[fake.clone() as Arc<dyn Collector>], &clock);
    fast.pass(&store);
    clock.advance(Duration::from_secs(1));
    fast.pass(&store);
    let failed = store.health()[0].1.clone();
    assert!(!failed.last_ok, "the second sample fails");
    // After a failure the next sample waits two periods (back-off).
    clock.advance(Duration::from_millis(200));
    fast.pass(&store);
    assert_eq!(fake.samples.load(Ordering::Relaxed), 2, "not due meanwhile");
    let h = &store.health()[0].1;
    assert!(!h.last_ok, "still failing");
    assert_eq!(h.last_success, failed.last_success);
    assert_eq!(h.last_duration, Some(Duration::from_millis(5)));
    assert_eq!(h.errors_total, 1, "one failed sample");
}

/// Regression: with a dear namespace failing, a pass that sampled only
/// other namespaces, all fine, recorded the collector as healthy again.
#[test]
fn a_namespace_still_failing_keeps_its_collector_failing() {
    let clock = Arc::new(FakeClock::default());
    let fake = Fake::new(&clock, Duration::ZERO, Some(Duration::from_secs(1)));
    let store = store_with(vec![ns(1, "bad")]);
    let mut fast = runner(Tier::Fast, &[fake.clone() as Arc<dyn Collector>], &clock);
    fast.pass(&store);
    clock.advance(Duration::from_secs(1));
    fast.pass(&store);
    assert!(!store.health()[0].1.last_ok, "the second sample fails");
    // A namespace appears: sampled at once, while "bad" is not due.
    store.set_targets(Targets {
        list: vec![ns(1, "bad"), ns(2, "good")],
        ..Targets::default()
    });
    clock.advance(Duration::from_millis(200));
    fast.pass(&store);
    assert_eq!(samples_in(&store, 2), Some(1));
    assert!(!store.health()[0].1.last_ok, "bad still fails");
    // Once the failing namespace is gone, the collector is healthy again.
    store.set_targets(Targets {
        list: vec![ns(2, "good")],
        ..Targets::default()
    });
    clock.advance(Duration::from_secs(1));
    fast.pass(&store);
    assert!(store.health()[0].1.last_ok);
}

/// A full-tier collector on a CPU budget: a sample of namespace `n` costs
/// 200 ms of made-up CPU for `dear*`, 45 ms otherwise; `hot*` namespaces
/// say they are in trouble; a namespace called for out of turn says so
/// once, through its state.
struct Budgeted {
    clock: Arc<FakeClock>,
}

#[derive(Default)]
struct Sampled {
    /// When each sample of this namespace was taken.
    at: Vec<Instant>,
    /// Set by the test: call for a sample now.
    called: bool,
}

static BUDGETED: Registration = Registration {
    name: "budgeted_test",
    help: "",
    default_enabled: true,
    tier: Tier::Full,
    families: &[],
    args: Vec::new,
    build: never_built,
};

impl TypedCollector for Budgeted {
    type State = Arc<Mutex<Sampled>>;
    type Scratch = ();
    fn registration(&self) -> &'static Registration {
        &BUDGETED
    }
    fn needs(&self) -> &'static [Need] {
        &[]
    }
    fn new_state(&self) -> Self::State {
        Arc::default()
    }
    fn new_scratch(&self) {}
    fn cpu_budget(&self) -> Option<f64> {
        Some(0.02)
    }
    fn call(&self, _view: &NetnsView, state: &Self::State) -> Call {
        Call {
            now: state.lock().unwrap().called,
            troubled: false,
        }
    }
    fn sample(&self, ctx: &mut Ctx<'_>, state: &mut Self::State, _: &mut ()) -> Sample {
        let cost = if ctx.info.name.starts_with("dear") {
            Duration::from_millis(200)
        } else {
            Duration::from_millis(45)
        };
        self.clock.advance(cost);
        let mut s = state.lock().unwrap();
        s.at.push(ctx.now);
        s.called = false;
        Sample::Done(netstat_part(ctx.wall, None))
    }
    fn render(&self, _: &NamespaceView<'_>, _: &mut Families) {}
}

#[test]
fn the_budget_holds_in_the_driver_and_a_call_is_answered_within_a_tick() {
    let clock = Arc::new(FakeClock::default());
    let mut list = vec![ns(0, "dear")];
    list.extend((1..=40).map(|i| ns(i, &format!("small{i}"))));
    let store = store_with(list);
    let budgeted = Arc::new(Budgeted {
        clock: clock.clone(),
    });
    let mut full = TierRunner::new(
        Tier::Full,
        (Duration::from_secs(15), Duration::from_millis(200)),
        true,
        Path::new("/proc"),
        &[budgeted.clone() as Arc<dyn Collector>],
        clock.clone() as Arc<dyn Clock>,
        Arc::new(Logs::default()),
    );
    // Calls are asked of a namespace's view: its first sample makes one.
    let t0 = clock.now();
    let tick = Duration::from_millis(200);
    let state_of = |full: &TierRunner, id: u64| -> Arc<Mutex<Sampled>> {
        full.slots[&(7, id)].states[0]
            .downcast_ref::<Arc<Mutex<Sampled>>>()
            .unwrap()
            .clone()
    };
    let mut answered = Vec::new();
    for n in 0..18_000u32 {
        let due = t0 + tick * n;
        let now = clock.now();
        if due > now {
            clock.advance(due - now);
        }
        // Every 10 minutes, call for namespace 5 out of turn.
        if n > 0 && n % 3000 == 0 {
            state_of(&full, 5).lock().unwrap().called = true;
            let before = state_of(&full, 5).lock().unwrap().at.len();
            full.pass(&store);
            answered.push(state_of(&full, 5).lock().unwrap().at.len() > before);
            continue;
        }
        full.pass(&store);
    }
    let elapsed = clock.now().saturating_duration_since(t0).as_secs_f64();
    let health = store.health();
    let cpu = health
        .iter()
        .find(|(n, _)| *n == BUDGETED.name)
        .map(|(_, h)| h.cpu_total.as_secs_f64())
        .unwrap();
    // The whole run's CPU, against 2% of its length plus the first bucket
    // and one sample's overdraft.
    assert!(
        cpu <= 0.02 * elapsed + 0.3 + 0.2,
        "spent {cpu} s of CPU in {elapsed} s"
    );
    assert!(
        cpu >= 0.02 * elapsed * 0.9,
        "spent only {cpu} s in {elapsed} s"
    );
    assert!(answered.iter().all(|a| *a), "calls answered: {answered:?}");
    // Nobody starves: 2.0 s of CPU a round at 0.3 s a period is a round in
    // about 100 s; every namespace is sampled at least every 150 s.
    for id in 0..=40 {
        let at = state_of(&full, id).lock().unwrap().at.clone();
        let worst = at
            .windows(2)
            .map(|w| w[1].saturating_duration_since(w[0]))
            .max()
            .unwrap_or_default();
        assert!(
            at.len() >= 20 && worst <= Duration::from_secs(150),
            "namespace {id}: {} samples, {worst:?} apart at worst",
            at.len()
        );
    }
}
