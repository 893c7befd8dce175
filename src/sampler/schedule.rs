//! When a collector samples a namespace next: every tier period, unless
//! the collector bounds its own cost there (see
//! [`crate::collect::Collector::min_period`]), in which case a namespace
//! where one sample is dear waits longer before the next.

use std::time::{Duration, Instant};

/// The longest a collector's cost bound may stretch a namespace's period.
pub const MAX_STRETCH: Duration = Duration::from_secs(60);

/// One collector's timing in one namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    next: Option<Instant>,
    /// When the last sample started.
    last: Option<Instant>,
    period: Duration,
    /// Failed samples in a row.
    failures: u32,
}

impl Due {
    /// Due at once, then every `base`.
    pub fn new(base: Duration) -> Self {
        Due {
            next: None,
            last: None,
            period: base,
            failures: 0,
        }
    }

    /// Whether a pass at `now` should sample. A pass may run up to half a
    /// tick (the time between the tier's passes) early, since ticks
    /// jitter, so that a namespace sampled every tick is not skipped every
    /// other one.
    pub fn is_due(&self, now: Instant, tick: Duration) -> bool {
        self.next.is_none_or(|next| now + tick / 2 >= next)
    }

    /// Time since the last sample started; `None` before the first.
    pub fn age(&self, now: Instant) -> Option<Duration> {
        self.last.map(|l| now.saturating_duration_since(l))
    }

    /// The time meant to pass between this namespace's samples now.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// Records a sample that started at `started`; `least` is the least
    /// period the collector asks for after what that sample cost, if any.
    /// However dear a namespace, it is sampled at least every
    /// [`MAX_STRETCH`] (or every `base`, if that is longer): its figures
    /// are never older than that.
    pub fn sampled(&mut self, started: Instant, base: Duration, least: Option<Duration>) {
        self.failures = 0;
        self.period = least.map_or(base, |l| l.min(MAX_STRETCH).max(base));
        self.next = Some(started + self.period);
        self.last = Some(started);
    }

    /// Records a failed sample: the next waits twice as long as the last,
    /// up to [`MAX_STRETCH`], so a namespace whose samples time out does
    /// not hold its tier every pass, and one failing now and then is
    /// hardly slowed.
    pub fn failed(&mut self, started: Instant, base: Duration) {
        self.failures = self.failures.saturating_add(1);
        self.period = base
            .checked_mul(1 << self.failures.min(16))
            .unwrap_or(MAX_STRETCH)
            .min(MAX_STRETCH)
            .max(base);
        self.next = Some(started + self.period);
        self.last = Some(started);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_millis(200);

    /// Ticks of a tier running every 200 ms (with some jitter) for `ms`;
    /// returns the ticks at which the collector sampled.
    fn run(ms: u64, cost: impl Fn(u64) -> Option<Duration>) -> Vec<u64> {
        let t0 = Instant::now();
        let mut due = Due::new(BASE);
        let mut sampled = Vec::new();
        for tick in 0..ms / 200 {
            let jitter = (tick * 7) % 13;
            let now = t0 + Duration::from_millis(tick * 200 + jitter);
            if due.is_due(now, BASE) {
                sampled.push(tick);
                due.sampled(now, BASE, cost(tick));
            }
        }
        sampled
    }

    #[test]
    fn a_cheap_collector_samples_every_tick_despite_jitter() {
        assert_eq!(run(2_000, |_| None), (0..10).collect::<Vec<_>>());
        assert_eq!(run(2_000, |_| Some(Duration::from_millis(50))).len(), 10);
    }

    #[test]
    fn a_dear_namespace_waits_as_long_as_its_bound_says() {
        // A sample costs 1.6 s worth of bound: one tick in eight.
        let ticks = run(8_000, |_| Some(Duration::from_millis(1600)));
        assert_eq!(ticks, vec![0, 8, 16, 24, 32]);
    }

    #[test]
    fn failures_back_off_and_a_success_ends_it() {
        let t0 = Instant::now();
        let mut d = Due::new(BASE);
        let periods: Vec<u64> = (0..12)
            .map(|_| {
                d.failed(t0, BASE);
                d.period().as_millis() as u64
            })
            .collect();
        assert_eq!(
            periods,
            vec![
                400, 800, 1600, 3200, 6400, 12800, 25600, 51200, 60000, 60000, 60000, 60000
            ]
        );
        d.sampled(t0, BASE, None);
        assert_eq!(d.period(), BASE);
        d.failed(t0, BASE);
        assert_eq!(d.period(), BASE * 2, "afresh");
    }

    #[test]
    fn the_bound_follows_the_cost_as_it_changes() {
        // Dear at first, cheap again after tick 10.
        let ticks = run(4_000, |t| (t < 10).then_some(Duration::from_millis(1000)));
        assert_eq!(ticks, vec![0, 5, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19]);
        let mut d = Due::new(BASE);
        d.sampled(Instant::now(), BASE, Some(Duration::from_secs(2)));
        assert_eq!(d.period(), Duration::from_secs(2));
        d.sampled(Instant::now(), BASE, None);
        assert_eq!(d.period(), BASE);
        d.sampled(Instant::now(), BASE, Some(Duration::from_secs(3600)));
        assert_eq!(d.period(), MAX_STRETCH, "bounded staleness");
        d.sampled(
            Instant::now(),
            Duration::from_secs(120),
            Some(Duration::from_secs(3600)),
        );
        assert_eq!(
            d.period(),
            Duration::from_secs(120),
            "never shorter than the tier's"
        );
    }
}
