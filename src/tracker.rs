//! The fast listener tier's memory: accept-queue peaks over a window, the
//! time each queue was seen full, drop counters, and stable member numbers
//! for sockets sharing an address (`SO_REUSEPORT` groups, a unix path bound
//! again), carried from one listener dump to the next. TCP and unix
//! listeners are tracked alike.
//!
//! State is kept per socket cookie, so each member of a reuseport group
//! keeps its own figures, and a listener that is closed and opened again
//! starts afresh (its peak forgotten). Its counters, though, are published
//! per label set: a socket that takes over the labels of one that went
//! (a server restarted, a reuseport member replaced) continues from the
//! last value published under them, so no counter series ever goes down
//! while it is being scraped, and `increase()` needs no reset detection,
//! which undercounts when the new socket passes the old value before a
//! scrape. A label set unpublished for [`SERIES_MEMORY`] starts afresh:
//! Prometheus has marked that series stale long before.
//!
//! A dump is not an atomic snapshot: the kernel resumes a multi-datagram
//! dump by position in its hash table, so a listener added or removed
//! meanwhile can make another one appear twice or not at all. The tracker
//! therefore ignores repeated cookies and keeps a missing listener's state
//! for a few samples before forgetting it, so its counters do not reset and
//! its member number does not move over one inconsistent dump.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant, SystemTime};

use crate::cookie::CookieMap;
use crate::model::{Endpoint, ListenerFigures, ListenerSample};

/// A peak window is kept as this many buckets of per-bucket maxima, so the
/// peak ages out gradually instead of all at once.
const PEAK_BUCKETS: u32 = 6;

/// Samples a listener may be missing from before its state is dropped.
const MISSES_TOLERATED: u32 = 2;

/// How long the counters last published under a label set are remembered
/// for a socket that takes it over: Prometheus's default staleness
/// lookback, after which the series was already ended.
pub const SERIES_MEMORY: Duration = Duration::from_secs(300);

/// One listening socket as a listener dump reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// Where it listens.
    pub endpoint: Endpoint,
    /// Accept-queue length now.
    pub length: u32,
    /// Effective backlog; full when length > limit.
    pub limit: u32,
    /// `sk_drops`, when the kernel keeps and sent it.
    pub drops: Option<u32>,
    /// Socket cookie: tells apart sockets sharing an address.
    pub cookie: u64,
    /// Socket inode.
    pub inode: u32,
    /// Owner uid, when known.
    pub uid: Option<u32>,
}

/// How one socket's counters appear under the label set it publishes in:
/// its own totals plus what the label set had reached before it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Published {
    member: Option<u32>,
    full_base: f64,
    drops_base: u64,
    full: f64,
    drops: u64,
}

/// Who publishes in a label set, or, once nobody does, the counters it
/// had reached.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Label {
    /// The socket publishing in it; `None` once it left.
    owner: Option<u64>,
    /// The counters when it was left.
    full: f64,
    drops: u64,
    /// When it was taken or left.
    at: Instant,
}

struct Tracked {
    key: Endpoint,
    /// Stable position in its group of sockets sharing the address.
    slot: u32,
    /// (bucket start, max length seen in it), oldest first.
    buckets: VecDeque<(Instant, u32)>,
    full_seconds: f64,
    /// While the queue is non-empty: the wall time of the last sample that
    /// saw it empty (or of the first sample, for a socket first seen
    /// non-empty). `None` while it is empty.
    queued_since: Option<SystemTime>,
    /// Wall time of the sample that last saw it.
    last_wall: SystemTime,
    /// Last raw `sk_drops` (a wrapping 32-bit counter) and the 64-bit total
    /// built from its increments.
    drops_raw: Option<u32>,
    drops_total: u64,
    last_seen: Instant,
    misses: u32,
    /// The sample that last saw it: a dump naming it twice is told by this.
    seen_in: u64,
    /// Whether another tracked socket shares its address, so that it may
    /// need a `member` label.
    crowd: bool,
    /// Its label set and counter bases, once published.
    published: Option<Published>,
}

/// Tracks peaks, full time, drops and member slots across listener samples.
///
/// A sample costs lookups by socket cookie only; addresses are hashed
/// just when a socket appears or leaves, or in a group's bookkeeping.
pub struct ListenerTracker {
    peak_window: Duration,
    bucket: Duration,
    /// Samples taken.
    samples: u64,
    tracked: CookieMap<Tracked>,
    /// Slots taken in each group of sockets sharing an address.
    slots: HashMap<Endpoint, BTreeSet<u32>>,
    /// Addresses labelled as groups: several members were seen together,
    /// and more than one is still tracked.
    grouped: HashSet<Endpoint>,
    /// Every label set published in within [`SERIES_MEMORY`].
    labels: HashMap<(Endpoint, Option<u32>), Label>,
}

impl ListenerTracker {
    /// A tracker keeping peaks over `peak_window`.
    pub fn new(peak_window: Duration) -> Self {
        let bucket = (peak_window / PEAK_BUCKETS).max(Duration::from_millis(1));
        ListenerTracker {
            peak_window,
            bucket,
            samples: 0,
            tracked: CookieMap::default(),
            slots: HashMap::new(),
            grouped: HashSet::new(),
            labels: HashMap::new(),
        }
    }

    /// Whether socket `cookie` is tracked (was published lately).
    pub fn tracks(&self, cookie: u64) -> bool {
        self.tracked.contains_key(&cookie)
    }

    /// A slot at `key` for a new socket, and whether others share `key`.
    fn take_slot(&mut self, key: &Endpoint) -> (u32, bool) {
        let used = self.slots.entry(key.clone()).or_default();
        let slot = (0..).find(|s| !used.contains(s)).unwrap_or(0);
        used.insert(slot);
        let crowd = used.len() > 1;
        if used.len() == 2 {
            self.set_crowd(key, true);
        }
        (slot, crowd)
    }

    fn free_slot(&mut self, key: &Endpoint, slot: u32) {
        if let Some(used) = self.slots.get_mut(key) {
            used.remove(&slot);
            match used.len() {
                0 => {
                    self.slots.remove(key);
                }
                1 => self.set_crowd(key, false),
                _ => {}
            }
        }
    }

    /// Marks every tracked socket at `key`; only when a second socket
    /// joins an address or the last but one leaves it.
    fn set_crowd(&mut self, key: &Endpoint, crowd: bool) {
        for t in self.tracked.values_mut() {
            if t.key == *key {
                t.crowd = crowd;
            }
        }
    }

    /// Forgets socket `cookie`: frees its slot and leaves its label set's
    /// counters for a socket that takes the label set over.
    fn forget(&mut self, cookie: u64, now: Instant) {
        if let Some(t) = self.tracked.remove(&cookie) {
            self.free_slot(&t.key, t.slot);
            if let Some(p) = t.published {
                self.leave((t.key, p.member), cookie, &p, now);
            }
        }
    }

    /// Socket `cookie` stops publishing in label set `key`, at counters `p`.
    fn leave(&mut self, key: (Endpoint, Option<u32>), cookie: u64, p: &Published, now: Instant) {
        if let Some(l) = self.labels.get_mut(&key) {
            if l.owner == Some(cookie) {
                *l = Label {
                    owner: None,
                    full: p.full,
                    drops: p.drops,
                    at: now,
                };
            }
        }
    }

    /// Keeps the `member` number only for groups, so one stuck member of a
    /// `SO_REUSEPORT` group shows as its own series while a lone listener
    /// keeps exactly the contract's labels. `crowded` are the indexes of
    /// the figures of sockets that share their address with another
    /// tracked socket; every other figure is a lone listener.
    ///
    /// An address becomes a group when several members are seen together,
    /// and stays one while more than one is tracked (members missing from
    /// a dump included). So a member skipped by one dump does not turn the
    /// others into lone listeners, which would put two sockets' counters on
    /// one series in turn; and a lone listener restarted (the old socket
    /// still tracked, the new one present) does not become a group.
    fn label_members(&mut self, figures: &mut [ListenerFigures], crowded: &[usize]) {
        let mut present: HashMap<&Endpoint, usize> = HashMap::new();
        for &i in crowded {
            *present.entry(&figures[i].endpoint).or_default() += 1;
        }
        for (key, n) in present {
            if n > 1 && !self.grouped.contains(key) {
                self.grouped.insert(key.clone());
            }
        }
        if !self.grouped.is_empty() {
            let slots = &self.slots;
            self.grouped
                .retain(|key| slots.get(key).is_some_and(|used| used.len() > 1));
        }
        let mut crowded = crowded.iter().peekable();
        for (i, f) in figures.iter_mut().enumerate() {
            let crowd = crowded.next_if_eq(&&i).is_some();
            if !crowd || !self.grouped.contains(&f.endpoint) {
                f.member = None;
            }
        }
    }

    /// Makes each published counter continue its label set's series: a
    /// socket publishing in a label set for the first time starts where the
    /// label set was: where the socket that published in it last (one that
    /// went, one restarted but still in its grace, or one that moved to
    /// another member label) had brought it.
    fn continue_series(&mut self, now: Instant, figures: &mut [ListenerFigures]) {
        self.labels.retain(|_, l| {
            l.owner.is_some() || now.saturating_duration_since(l.at) < SERIES_MEMORY
        });
        for f in figures.iter_mut() {
            let Some(t) = self.tracked.get(&f.cookie) else {
                continue;
            };
            let previous = t.published;
            if previous.is_none_or(|p| p.member != f.member) {
                let key = t.key.clone();
                if let Some(p) = previous {
                    self.leave((key.clone(), p.member), f.cookie, &p, now);
                }
                let label = (key, f.member);
                // Where the label set stands: its owner's counters, taken
                // over from it, or those it was left at.
                let before = match self.labels.get(&label) {
                    Some(Label { owner: Some(o), .. }) if *o != f.cookie => {
                        self.tracked.get_mut(o).and_then(|other| {
                            let fresh =
                                now.saturating_duration_since(other.last_seen) < SERIES_MEMORY;
                            other
                                .published
                                .take()
                                .filter(|_| fresh)
                                .map(|p| (p.full, p.drops))
                        })
                    }
                    Some(l) if l.owner.is_none() => Some((l.full, l.drops)),
                    _ => None,
                };
                self.labels.insert(
                    label,
                    Label {
                        owner: Some(f.cookie),
                        full: 0.0,
                        drops: 0,
                        at: now,
                    },
                );
                let (own_full, own_drops) = (f.full_seconds.unwrap_or(0.0), f.drops.unwrap_or(0));
                if let Some(t) = self.tracked.get_mut(&f.cookie) {
                    t.published = Some(Published {
                        member: f.member,
                        full_base: before.map_or(0.0, |(full, _)| (full - own_full).max(0.0)),
                        drops_base: before.map_or(0, |(_, drops)| drops.saturating_sub(own_drops)),
                        full: 0.0,
                        drops: 0,
                    });
                }
            }
            let Some(p) = self
                .tracked
                .get_mut(&f.cookie)
                .and_then(|t| t.published.as_mut())
            else {
                continue;
            };
            if let Some(full) = &mut f.full_seconds {
                *full += p.full_base;
                p.full = *full;
            }
            if let Some(drops) = &mut f.drops {
                *drops += p.drops_base;
                p.drops = *drops;
            }
        }
    }

    /// Folds one listener dump into the tracked state and returns the
    /// figures to publish. `period` is the time the sampler means to leave
    /// between samples: a gap longer than twice that (at least 1 s) is a
    /// stall, and a stalled sampler must not credit the whole stall to a
    /// queue it saw full once.
    pub fn update(
        &mut self,
        now: Instant,
        wall: SystemTime,
        records: &[Seen],
        period: Duration,
    ) -> ListenerSample {
        let max_gap = (period * 2).max(Duration::from_secs(1));
        self.samples += 1;
        let sample = self.samples;
        let mut figures = Vec::with_capacity(records.len());
        for r in records {
            // A socket that listens again elsewhere keeps its cookie but
            // changes address or port: it starts afresh in its new group.
            let known = match self.tracked.get(&r.cookie) {
                Some(t) if t.seen_in == sample => continue,
                Some(t) if t.key != r.endpoint => {
                    self.forget(r.cookie, now);
                    false
                }
                Some(_) => true,
                None => false,
            };
            if !known {
                let (slot, crowd) = self.take_slot(&r.endpoint);
                self.tracked.insert(
                    r.cookie,
                    Tracked {
                        key: r.endpoint.clone(),
                        slot,
                        buckets: VecDeque::with_capacity(PEAK_BUCKETS as usize + 1),
                        full_seconds: 0.0,
                        queued_since: None,
                        last_wall: wall,
                        drops_raw: None,
                        drops_total: 0,
                        last_seen: now,
                        misses: 0,
                        seen_in: 0,
                        crowd,
                        published: None,
                    },
                );
            }
            let Some(t) = self.tracked.get_mut(&r.cookie) else {
                continue;
            };
            t.seen_in = sample;
            if r.length > r.limit {
                let gap = now.saturating_duration_since(t.last_seen).min(max_gap);
                t.full_seconds += gap.as_secs_f64();
            }
            // A queue that fills between two samples may have filled just
            // after the earlier one: only a walk taken after that one can
            // have seen these connections.
            t.queued_since = match (r.length, t.queued_since) {
                (0, _) => None,
                (_, Some(since)) => Some(since),
                (_, None) => Some(t.last_wall.min(wall)),
            };
            t.last_wall = wall;
            t.last_seen = now;
            t.misses = 0;
            if let Some(raw) = r.drops {
                t.drops_total += match t.drops_raw {
                    Some(prev) => u64::from(raw.wrapping_sub(prev)),
                    None => u64::from(raw),
                };
                t.drops_raw = Some(raw);
            }
            match t.buckets.back_mut() {
                Some((start, max)) if now.saturating_duration_since(*start) < self.bucket => {
                    *max = (*max).max(r.length);
                }
                _ => t.buckets.push_back((now, r.length)),
            }
            // A bucket leaves once all of it is older than the window.
            while let Some((start, _)) = t.buckets.front() {
                if now.saturating_duration_since(*start) >= self.peak_window + self.bucket {
                    t.buckets.pop_front();
                } else {
                    break;
                }
            }
            let peak = t.buckets.iter().map(|(_, m)| *m).max().unwrap_or(r.length);
            figures.push(ListenerFigures {
                endpoint: r.endpoint.clone(),
                member: Some(t.slot),
                cookie: r.cookie,
                inode: r.inode,
                uid: r.uid,
                queue_length: r.length,
                queue_limit: r.limit,
                peak_length: Some(peak),
                full_seconds: Some(t.full_seconds),
                drops: t.drops_raw.map(|_| t.drops_total),
                queued_since: t.queued_since,
            });
        }
        let mut gone = Vec::new();
        for (cookie, t) in self.tracked.iter_mut() {
            if t.seen_in != sample {
                t.misses += 1;
                if t.misses > MISSES_TOLERATED {
                    gone.push(*cookie);
                }
            }
        }
        for cookie in gone {
            self.forget(cookie, now);
        }
        // Only now is every socket's crowd known: a second socket at an
        // address marks the first one too.
        let crowded: Vec<usize> = if self.slots.len() == self.tracked.len() {
            Vec::new()
        } else {
            figures
                .iter()
                .enumerate()
                .filter(|(_, f)| self.tracked.get(&f.cookie).is_some_and(|t| t.crowd))
                .map(|(i, _)| i)
                .collect()
        };
        self.label_members(&mut figures, &crowded);
        self.continue_series(now, &mut figures);
        ListenerSample {
            taken_at: wall,
            listeners: figures,
            unexported: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::ListenKey;
    use crate::diag::RawAddr;

    fn listener(cookie: u64, port: u16, length: u32, limit: u32) -> Seen {
        Seen {
            endpoint: Endpoint::Inet(ListenKey {
                addr: RawAddr::from_ip("127.0.0.1".parse().unwrap()),
                port,
            }),
            length,
            limit,
            drops: Some(0),
            cookie,
            inode: cookie as u32,
            uid: Some(0),
        }
    }

    /// Peaks over a minute, sampled every 200 ms.
    struct T(ListenerTracker);

    impl T {
        fn update(&mut self, now: Instant, wall: SystemTime, records: &[Seen]) -> ListenerSample {
            self.0
                .update(now, wall, records, Duration::from_millis(200))
        }
    }

    fn tracker() -> T {
        T(ListenerTracker::new(Duration::from_secs(60)))
    }

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn peak_holds_for_the_window_then_ages_out() {
        let mut t = tracker();
        let (t0, wall) = (Instant::now(), SystemTime::now());
        t.update(t0, wall, &[listener(1, 80, 7, 10)]);
        let s = t.update(at(t0, 30_000), wall, &[listener(1, 80, 0, 10)]);
        assert_eq!(s.listeners[0].peak_length, Some(7));
        let s = t.update(at(t0, 75_000), wall, &[listener(1, 80, 2, 10)]);
        assert_eq!(
            s.listeners[0].peak_length,
            Some(2),
            "the burst left the window"
        );
    }

    #[test]
    fn full_time_counts_gaps_while_full_and_caps_stalls() {
        let mut t = tracker();
        let (t0, wall) = (Instant::now(), SystemTime::now());
        let full = |s: &ListenerSample| s.listeners[0].full_seconds.unwrap();
        let s = t.update(t0, wall, &[listener(1, 80, 11, 10)]);
        assert_eq!(full(&s), 0.0, "no evidence of duration yet");
        let s = t.update(at(t0, 200), wall, &[listener(1, 80, 11, 10)]);
        assert!((full(&s) - 0.2).abs() < 1e-9);
        let s = t.update(at(t0, 400), wall, &[listener(1, 80, 10, 10)]);
        assert!((full(&s) - 0.2).abs() < 1e-9, "length == limit is not full");
        // A 30 s stall counts at most the cap (1 s here).
        let s = t.update(at(t0, 30_000), wall, &[listener(1, 80, 11, 10)]);
        assert!((full(&s) - 1.2).abs() < 1e-9);
    }

    #[test]
    fn a_replaced_socket_starts_afresh_but_continues_the_counters() {
        let mut t = tracker();
        let (t0, wall) = (Instant::now(), SystemTime::now());
        t.update(t0, wall, &[listener(1, 80, 11, 10)]);
        t.update(at(t0, 200), wall, &[listener(1, 80, 11, 10)]);
        let s = t.update(at(t0, 400), wall, &[listener(2, 80, 0, 10)]);
        assert_eq!(s.listeners.len(), 1, "the missing socket is not published");
        assert_eq!(
            (s.listeners[0].full_seconds, s.listeners[0].peak_length),
            (Some(0.2), Some(0)),
            "its own peak, the labels' full time"
        );
        for i in 1..=3 {
            t.update(at(t0, 400 + 200 * i), wall, &[listener(2, 80, 0, 10)]);
        }
        assert_eq!(
            t.0.tracked.len(),
            1,
            "the closed socket is forgotten after its grace"
        );
    }

    /// Regression: a dump racing with socket churn can repeat one listener
    /// and skip another. Neither may reset counters or move member numbers.
    #[test]
    fn an_inconsistent_dump_neither_resets_nor_renumbers() {
        let mut t = tracker();
        let (t0, wall) = (Instant::now(), SystemTime::now());
        let group = |ls: &[(u64, u32)]| {
            ls.iter()
                .map(|&(c, len)| listener(c, 80, len, 10))
                .collect::<Vec<_>>()
        };
        t.update(t0, wall, &group(&[(1, 11), (2, 0), (3, 0)]));
        t.update(at(t0, 200), wall, &group(&[(1, 11), (2, 0), (3, 0)]));
        // Cookie 1 is skipped and cookie 3 repeated.
        let s = t.update(at(t0, 400), wall, &group(&[(2, 0), (3, 0), (3, 0)]));
        let mut got: Vec<_> = s.listeners.iter().map(|l| (l.cookie, l.member)).collect();
        got.sort_unstable_by_key(|(_, m)| *m);
        assert_eq!(got, vec![(2, Some(1)), (3, Some(2))]);
        let s = t.update(at(t0, 600), wall, &group(&[(1, 11), (2, 0), (3, 0)]));
        let one = s.listeners.iter().find(|l| l.cookie == 1).unwrap();
        assert_eq!(one.member, Some(0), "kept its slot");
        assert!(
            (one.full_seconds.unwrap() - 0.6).abs() < 1e-9,
            "kept and extended its full time"
        );
    }

    /// Regression: when the only other member of a pair is skipped by a
    /// dump, the survivor must keep its `member` label, or two sockets'
    /// counters would take turns on the lone-listener series.
    #[test]
    fn a_skipped_member_does_not_turn_the_survivor_into_a_loner() {
        let mut t = tracker();
        let (t0, wall) = (Instant::now(), SystemTime::now());
        t.update(t0, wall, &[listener(1, 80, 0, 10), listener(2, 80, 0, 10)]);
        let s = t.update(at(t0, 200), wall, &[listener(2, 80, 0, 10)]);
        assert_eq!(s.listeners[0].member, Some(1));
        for i in 2..=4 {
            t.update(at(t0, 200 * i), wall, &[listener(2, 80, 0, 10)]);
        }
        let s = t.update(at(t0, 1000), wall, &[listener(2, 80, 0, 10)]);
        assert_eq!(
            s.listeners[0].member, None,
            "alone once the other is gone for good"
        );
    }

    /// A restarted lone listener (new socket present, old one still in its
    /// grace period) stays a lone listener: no transient `member` series.
    #[test]
    fn a_restarted_lone_listener_stays_alone() {
        let mut t = tracker();
        let (t0, wall) = (Instant::now(), SystemTime::now());
        t.update(t0, wall, &[listener(1, 80, 0, 10)]);
        for i in 1..=4 {
            let s = t.update(at(t0, 200 * i), wall, &[listener(2, 80, 0, 10)]);
            assert_eq!(s.listeners[0].member, None, "sample {i}");
        }
    }

    #[test]
    fn a_socket_that_moves_starts_afresh_in_its_new_group() {
        let mut t = tracker();
        let (t0, wall) = (Instant::now(), SystemTime::now());
        t.update(
            t0,
            wall,
            &[
                listener(1, 80, 0, 10),
                listener(2, 80, 0, 10),
                listener(3, 90, 0, 10),
            ],
        );
        // Cookie 2 now listens on 90, beside cookie 3 (slot 0 there).
        let s = t.update(
            at(t0, 200),
            wall,
            &[
                listener(1, 80, 0, 10),
                listener(2, 90, 0, 10),
                listener(3, 90, 0, 10),
            ],
        );
        let mut got: Vec<_> = s
            .listeners
            .iter()
            .map(|l| (l.endpoint.port().unwrap(), l.cookie, l.member))
            .collect();
        got.sort_unstable_by_key(|(port, _, member)| (*port, *member));
        assert_eq!(got, vec![(80, 1, None), (90, 3, Some(0)), (90, 2, Some(1))]);
    }

    #[test]
    fn member_slots_are_sticky_and_loners_have_none() {
        let mut t = tracker();
        let (t0, wall) = (Instant::now(), SystemTime::now());
        let members = |s: &ListenerSample| {
            let mut v = s
                .listeners
                .iter()
                .map(|l| (l.endpoint.port().unwrap(), l.cookie, l.member))
                .collect::<Vec<_>>();
            v.sort_unstable_by_key(|(port, _, member)| (*port, *member));
            v
        };
        let s = t.update(
            t0,
            wall,
            &[
                listener(9, 80, 0, 10),
                listener(3, 80, 11, 10),
                listener(5, 443, 0, 10),
            ],
        );
        assert_eq!(
            members(&s),
            vec![(80, 9, Some(0)), (80, 3, Some(1)), (443, 5, None)]
        );
        // Member 0 leaves for good and a new socket joins: the survivor keeps
        // slot 1 and the newcomer takes the free slot 0.
        for i in 1..=3 {
            t.update(
                at(t0, 200 * i),
                wall,
                &[listener(3, 80, 11, 10), listener(5, 443, 0, 10)],
            );
        }
        let s = t.update(
            at(t0, 800),
            wall,
            &[listener(3, 80, 11, 10), listener(7, 80, 0, 10)],
        );
        assert_eq!(members(&s), vec![(80, 7, Some(0)), (80, 3, Some(1))]);
    }

    /// Regression: a listener reopened on its port (a server restarted,
    /// or a crash loop) published its new socket's counters from zero
    /// under the same labels, a decrease to anyone scraping.
    #[test]
    fn counters_never_go_down_under_one_label_set() {
        let mut t = tracker();
        let (t0, wall) = (Instant::now(), SystemTime::now());
        let with = |cookie, length, drops| Seen {
            drops: Some(drops),
            ..listener(cookie, 80, length, 10)
        };
        let mut last = (0.0, 0);
        let mut ms = 0;
        // Five sockets in turn, each full for a while, each with its own
        // drop counter starting low.
        for cookie in 1..=5u64 {
            for step in 0..4u32 {
                ms += 200;
                let s = t.update(at(t0, ms), wall, &[with(cookie, 11, step)]);
                let l = &s.listeners[0];
                let now = (l.full_seconds.unwrap(), l.drops.unwrap());
                assert!(now.0 >= last.0 && now.1 >= last.1, "{last:?} -> {now:?}");
                last = now;
            }
        }
        assert_eq!(last.1, 5 * 3, "each socket's drops add up");
        // Unpublished past the memory, the labels start afresh.
        let s = t.update(
            at(t0, ms) + SERIES_MEMORY + Duration::from_secs(1),
            wall,
            &[with(6, 0, 0)],
        );
        assert_eq!(s.listeners[0].full_seconds, Some(0.0));
        assert_eq!(s.listeners[0].drops, Some(0));
    }

    #[test]
    fn a_replaced_group_member_continues_its_members_counters() {
        let mut t = tracker();
        let (t0, wall) = (Instant::now(), SystemTime::now());
        t.update(t0, wall, &[listener(1, 80, 11, 10), listener(2, 80, 0, 10)]);
        let s = t.update(
            at(t0, 200),
            wall,
            &[listener(1, 80, 11, 10), listener(2, 80, 0, 10)],
        );
        let full = |s: &ListenerSample, m| {
            s.listeners
                .iter()
                .find(|l| l.member == Some(m))
                .and_then(|l| l.full_seconds)
        };
        assert_eq!((full(&s, 0), full(&s, 1)), (Some(0.2), Some(0.0)));
        // Member 0 goes; after its grace a new socket takes slot 0.
        for i in 2..=4 {
            t.update(at(t0, 200 * i), wall, &[listener(2, 80, 0, 10)]);
        }
        let s = t.update(
            at(t0, 1000),
            wall,
            &[listener(3, 80, 0, 10), listener(2, 80, 0, 10)],
        );
        assert_eq!(full(&s, 0), Some(0.2), "member 0's series goes on");
        assert_eq!(full(&s, 1), Some(0.0));
    }

    #[test]
    fn drop_counter_survives_the_kernels_32_bit_wrap() {
        let mut t = tracker();
        let (t0, wall) = (Instant::now(), SystemTime::now());
        let with_drops = |d: u32| Seen {
            drops: Some(d),
            ..listener(1, 80, 0, 10)
        };
        t.update(t0, wall, &[with_drops(u32::MAX - 1)]);
        let s = t.update(at(t0, 200), wall, &[with_drops(3)]);
        assert_eq!(s.listeners[0].drops, Some(u64::from(u32::MAX) + 4));
    }
}
