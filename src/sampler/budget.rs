//! The CPU budget of a collector whose samples are dear (the connection
//! walk, which costs every socket in the namespace's established hash, and
//! on a node whose namespaces share the host's hash, every socket on the
//! node): which namespaces it samples in a pass, and in what order.
//!
//! The budget is a token bucket of CPU time, filled at `fraction` seconds
//! per second of wall time (saving up at most one period's worth) and
//! emptied by what each sample actually cost (the sampling thread's own
//! CPU time), so the collector spends at most that fraction of one core
//! over time however many namespaces there are, and however dear each is.
//!
//! Which namespace goes next: one in trouble, its figures oldest first,
//! for as long as troubled namespaces have spent less than
//! [`TROUBLE_SHARE`] of the budget (a second bucket; a troubled sample may
//! overdraw the first, the others repay it by waiting); then one never
//! sampled; then the rest, oldest first (round-robin), each only once the
//! bucket holds what its last sample cost (or is full, if it cost more),
//! and the line stops at the first of them that must wait, so that cheap
//! namespaces cannot starve a dear one. Troubled namespaces are thus
//! sampled first and every period while their share allows, and the
//! others share what is left, never less than the rest of the budget: none
//! starves, and each waits about (CPU of one round of them) / (what is
//! left) at most.

use std::time::{Duration, Instant};

use crate::collect::Call;

/// The most of the budget troubled namespaces may take, so that however
/// many are in trouble, the others are still sampled.
pub const TROUBLE_SHARE: f64 = 0.5;

/// The least time between two samples of one namespace called for out of
/// turn ([`Call::now`]): a queue that empties and refills every few
/// hundred milliseconds must not have the walk follow it.
pub const MIN_CALL_GAP: Duration = Duration::from_secs(1);

/// A token bucket of CPU time.
#[derive(Debug, Clone, PartialEq)]
struct Bucket {
    /// Seconds of CPU per second of wall time.
    fraction: f64,
    /// Most seconds of CPU saved up: one period's worth, so that a quiet
    /// spell does not let a burst of samples exceed the budget by more.
    capacity: f64,
    /// Seconds of CPU that may be spent now; negative while in debt.
    tokens: f64,
}

impl Bucket {
    fn new(fraction: f64, period: Duration) -> Self {
        let capacity = fraction * period.as_secs_f64();
        Bucket {
            fraction,
            capacity,
            tokens: capacity,
        }
    }

    fn refill(&mut self, seconds: f64) {
        self.tokens = (self.tokens + seconds * self.fraction).min(self.capacity);
    }
}

/// A collector's CPU budget: all its samples together, and within it the
/// share troubled namespaces may take. Both start full.
#[derive(Debug, Clone, PartialEq)]
pub struct Budget {
    all: Bucket,
    trouble: Bucket,
    refilled: Option<Instant>,
}

impl Budget {
    /// A budget of `fraction` of one core, saving up at most what
    /// `period` earns.
    pub fn new(fraction: f64, period: Duration) -> Self {
        Budget {
            all: Bucket::new(fraction, period),
            trouble: Bucket::new(fraction * TROUBLE_SHARE, period),
            refilled: None,
        }
    }

    /// Adds what the time since the last refill earned.
    pub fn refill(&mut self, now: Instant) {
        if let Some(last) = self.refilled {
            let seconds = now.saturating_duration_since(last).as_secs_f64();
            self.all.refill(seconds);
            self.trouble.refill(seconds);
        }
        self.refilled = Some(now);
    }

    /// Whether a sample of a namespace, troubled or not, whose last sample
    /// cost `cost`, may start. A troubled one needs only its share to
    /// have tokens left, and may overdraw the whole: the quiet ones repay
    /// it by waiting, and troubled ones cannot take more than their share
    /// over time. A quiet one must find its cost saved up (or a full
    /// bucket, if it costs more), so that quiet walks do not leave the
    /// budget in debt when a namespace falls into trouble.
    pub fn allows(&self, troubled: bool, cost: Duration) -> bool {
        let all = &self.all;
        if troubled {
            self.trouble.tokens > 0.0
        } else {
            all.tokens > 0.0 && all.tokens >= cost.as_secs_f64().min(all.capacity)
        }
    }

    /// Takes what a sample cost.
    pub fn spend(&mut self, cpu: Duration, troubled: bool) {
        self.all.tokens -= cpu.as_secs_f64();
        if troubled {
            self.trouble.tokens -= cpu.as_secs_f64();
        }
    }

    /// Seconds of CPU left (negative: owed).
    pub fn tokens(&self) -> f64 {
        self.all.tokens
    }
}

/// One namespace waiting for a budgeted collector.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate<K> {
    /// Which namespace.
    pub key: K,
    /// Time since its last sample started; `None` if it never was sampled.
    pub age: Option<Duration>,
    /// Whether its period is up.
    pub due: bool,
    /// Whether its last sample failed (it waits its back-off, however it is
    /// called).
    pub failing: bool,
    /// What its last sample cost (zero before the first).
    pub cost: Duration,
    /// What the faster collectors' figures say of it.
    pub call: Call,
}

impl<K> Candidate<K> {
    /// Whether it may be sampled now: its period is up, or it is called
    /// for out of turn and was not sampled within [`MIN_CALL_GAP`].
    pub fn eligible(&self) -> bool {
        self.due || (self.call.now && !self.failing && self.age.is_none_or(|a| a >= MIN_CALL_GAP))
    }

    /// Whether it counts as troubled: in trouble, or called for out of
    /// turn.
    pub fn troubled(&self) -> bool {
        self.call.troubled || self.call.now
    }

    /// Its place in line, lowest first: troubled, then never sampled,
    /// then the rest; within each, oldest figures first.
    fn rank(&self) -> (u8, Duration) {
        let class = match self.age {
            _ if self.troubled() => 0,
            None => 1,
            Some(_) => 2,
        };
        (class, Duration::MAX - self.age.unwrap_or(Duration::MAX))
    }
}

/// Keeps the candidates that may be sampled now, first in line first (ties
/// by key, so that the order is stable). A caller goes down the line while
/// the budget allows; past a troubled one it may not take, it goes on to
/// the next, but at the first quiet one it may not take, it stops: taking
/// younger, cheaper ones instead would starve a dear one.
pub fn in_line<K: Ord>(candidates: &mut Vec<Candidate<K>>) {
    candidates.retain(Candidate::eligible);
    candidates.sort_by(|a, b| a.rank().cmp(&b.rank()).then_with(|| a.key.cmp(&b.key)));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A made-up node: namespaces with fixed walk costs, some in trouble,
    /// scheduled every `tick` for `seconds` with `fraction` of a core and a
    /// period of `period`. Returns the CPU spent and, per namespace, the
    /// times (seconds from the start) it was sampled.
    struct Node {
        costs: Vec<Duration>,
        troubled: Vec<bool>,
    }

    struct Run {
        spent: f64,
        samples: Vec<Vec<f64>>,
        seconds: f64,
    }

    impl Run {
        /// The longest any namespace's figures went without a sample,
        /// counting from the start and up to the end.
        fn worst_age(&self, ns: usize) -> f64 {
            let mut last = 0.0;
            let mut worst: f64 = 0.0;
            for &t in &self.samples[ns] {
                worst = worst.max(t - last);
                last = t;
            }
            worst.max(self.seconds - last)
        }
    }

    fn run(node: &Node, fraction: f64, period: Duration, tick: Duration, seconds: u64) -> Run {
        let t0 = Instant::now();
        let mut budget = Budget::new(fraction, period);
        let mut last: Vec<Option<Instant>> = vec![None; node.costs.len()];
        let mut samples = vec![Vec::new(); node.costs.len()];
        let mut spent = 0.0;
        let ticks = Duration::from_secs(seconds).as_millis() / tick.as_millis();
        for n in 0..ticks as u32 {
            let now = t0 + tick * n;
            budget.refill(now);
            let mut line: Vec<Candidate<usize>> = (0..node.costs.len())
                .map(|i| {
                    let age = last[i].map(|l| now.saturating_duration_since(l));
                    Candidate {
                        key: i,
                        age,
                        due: age.is_none_or(|a| a + tick / 2 >= period),
                        failing: false,
                        cost: node.costs[i],
                        call: Call {
                            now: false,
                            troubled: node.troubled[i],
                        },
                    }
                })
                .collect();
            in_line(&mut line);
            for c in line {
                if !budget.allows(c.troubled(), c.cost) {
                    if c.troubled() {
                        continue;
                    }
                    break;
                }
                budget.spend(node.costs[c.key], c.troubled());
                spent += node.costs[c.key].as_secs_f64();
                last[c.key] = Some(now);
                samples[c.key].push((now - t0).as_secs_f64());
            }
        }
        Run {
            spent,
            samples,
            seconds: seconds as f64,
        }
    }

    const TICK: Duration = Duration::from_millis(200);
    const PERIOD: Duration = Duration::from_secs(15);

    /// One dear namespace, 40 cheap ones, two of them in trouble.
    fn node() -> Node {
        let mut costs = vec![Duration::from_millis(200)];
        costs.extend(std::iter::repeat_n(Duration::from_millis(45), 40));
        let mut troubled = vec![false; costs.len()];
        troubled[7] = true;
        troubled[30] = true;
        Node { costs, troubled }
    }

    #[test]
    fn the_budget_holds_however_dear_the_namespaces() {
        // A round costs 2 s of CPU; 2% of a core earns 0.3 s per period.
        let r = run(&node(), 0.02, PERIOD, TICK, 3600);
        let used = r.spent / 3600.0;
        assert!(used <= 0.02 * 1.01, "used {used} of a core");
        // And it is used, not left idle: within what the first full
        // bucket and one sample's overdraft allow.
        assert!(used > 0.02 * 0.95, "used {used} of a core");
    }

    #[test]
    fn with_enough_budget_every_namespace_is_sampled_every_period() {
        let r = run(&node(), 0.5, PERIOD, TICK, 600);
        for ns in 0..41 {
            let age = r.worst_age(ns);
            assert!(age <= 15.2, "namespace {ns} went {age} s without a sample");
        }
        assert!(r.spent / 600.0 < 0.15);
    }

    #[test]
    fn troubled_namespaces_are_freshest_and_none_starves() {
        let r = run(&node(), 0.02, PERIOD, TICK, 3600);
        let troubled = r.worst_age(7).max(r.worst_age(30));
        let quiet = (0..41)
            .filter(|&i| i != 7 && i != 30)
            .map(|i| r.worst_age(i))
            .fold(0.0, f64::max);
        // Troubled namespaces at their period: their walks (90 ms per
        // period) fit the budget (300 ms per period).
        assert!(troubled <= 15.2, "troubled figures {troubled} s old");
        // The rest share what is left: 2.1 s of CPU a round at 0.21 s per
        // period is a round in about 150 s; none waits much beyond it.
        assert!(
            quiet > 100.0 && quiet < 200.0,
            "quiet figures {quiet} s old"
        );
        // Round-robin: every quiet namespace is sampled about as often.
        let counts: Vec<usize> = (0..41)
            .filter(|&i| i != 7 && i != 30)
            .map(|i| r.samples[i].len())
            .collect();
        let (min, max) = (counts.iter().min(), counts.iter().max());
        assert!(
            max.zip(min).is_some_and(|(max, min)| max - min <= 1),
            "{counts:?}"
        );
    }

    #[test]
    fn trouble_beyond_the_budget_still_leaves_the_rest_a_share() {
        // Every cheap namespace in trouble, more than the whole budget
        // could walk each period: they take half of it, and the dear quiet
        // one is walked with the other half (0.2 s of CPU every 20 s).
        let mut n = node();
        n.troubled = vec![true; 41];
        n.troubled[0] = false;
        let r = run(&n, 0.02, PERIOD, TICK, 7200);
        let quiet = r.worst_age(0);
        assert!(quiet <= 30.0, "quiet figures {quiet} s old");
        let troubled_cpu: f64 = (1..41).map(|i| r.samples[i].len() as f64 * 0.045).sum();
        let share = troubled_cpu / 7200.0;
        assert!(
            share <= 0.02 * TROUBLE_SHARE * 1.01,
            "troubled namespaces used {share} of a core"
        );
        // Among themselves, round-robin.
        let counts: Vec<usize> = (1..41).map(|i| r.samples[i].len()).collect();
        let (min, max) = (counts.iter().min(), counts.iter().max());
        assert!(
            max.zip(min).is_some_and(|(max, min)| max - min <= 1),
            "{counts:?}"
        );
    }

    #[test]
    fn a_call_goes_first_but_not_more_often_than_the_gap() {
        let now_call = Call {
            now: true,
            troubled: false,
        };
        let c = |age: Option<u64>, call: Call, due: bool| Candidate {
            key: 0,
            age: age.map(Duration::from_millis),
            due,
            failing: false,
            cost: Duration::ZERO,
            call,
        };
        assert!(c(Some(1000), now_call, false).eligible());
        assert!(!c(Some(999), now_call, false).eligible(), "within the gap");
        assert!(c(None, now_call, false).eligible());
        assert!(!c(Some(5000), Call::default(), false).eligible(), "not due");
        let failing = Candidate {
            failing: true,
            ..c(Some(5000), now_call, false)
        };
        assert!(
            !failing.eligible(),
            "a failing namespace keeps its back-off"
        );
        let mut line = vec![
            Candidate {
                key: 1,
                ..c(Some(20_000), Call::default(), true)
            },
            Candidate {
                key: 2,
                ..c(Some(6_000), now_call, false)
            },
            Candidate {
                key: 3,
                ..c(Some(15_000), Call::default(), true)
            },
            Candidate {
                key: 4,
                ..c(None, Call::default(), true)
            },
        ];
        in_line(&mut line);
        let keys: Vec<usize> = line.iter().map(|c| c.key).collect();
        assert_eq!(keys, vec![2, 4, 1, 3], "troubled, never sampled, oldest");
    }

    #[test]
    fn the_bucket_saves_one_period_at_most_and_lends_one_sample() {
        let t0 = Instant::now();
        let mut b = Budget::new(0.02, PERIOD);
        b.refill(t0);
        assert!((b.tokens() - 0.3).abs() < 1e-9);
        b.refill(t0 + Duration::from_secs(3600));
        assert!((b.tokens() - 0.3).abs() < 1e-9, "capped at one period");
        let (cheap, dear) = (Duration::from_millis(10), Duration::from_secs(2));
        assert!(b.allows(false, dear), "a full bucket lets a dear one go");
        b.spend(dear, false);
        assert!(!b.allows(false, cheap));
        assert!(b.allows(true, cheap), "trouble has its own share");
        b.refill(t0 + Duration::from_secs(3600 + 84));
        assert!(
            !b.allows(false, Duration::ZERO),
            "1.7 s owed takes 85 s to repay"
        );
        b.refill(t0 + Duration::from_millis(3_600_000 + 85_200));
        assert!(b.allows(false, Duration::ZERO));
        assert!(!b.allows(false, cheap), "a quiet one waits for its cost");
        b.refill(t0 + Duration::from_secs(3600 + 90));
        assert!(b.allows(false, cheap));
        // Trouble spent its half: the rest may still go.
        b.refill(t0 + Duration::from_secs(7200));
        b.spend(Duration::from_millis(160), true);
        assert!(!b.allows(true, cheap));
        assert!(b.allows(false, cheap));
    }
}
