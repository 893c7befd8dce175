//! The fast listener tier's memory: accept-queue peaks over a window and the
//! time each queue was seen full, carried from one listener dump to the next.
//!
//! State is kept per socket cookie, so a listener that is closed and opened
//! again starts afresh (its counter resets, as Prometheus expects), and each
//! member of a `SO_REUSEPORT` group keeps its own figures.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant, SystemTime};

use crate::aggregate::{ListenKey, ListenerRecord};
use crate::snapshot::{ListenerFigures, ListenerSample};

/// A peak window is kept as this many buckets of per-bucket maxima, so the
/// peak ages out gradually instead of all at once.
const PEAK_BUCKETS: u32 = 6;

struct Tracked {
    /// (bucket start, max length seen in it), oldest first.
    buckets: VecDeque<(Instant, u32)>,
    full_seconds: f64,
    last_seen: Instant,
}

/// Tracks peaks and full time across listener samples.
pub struct ListenerTracker {
    peak_window: Duration,
    bucket: Duration,
    /// The longest gap between two samples still counted as full time: a
    /// stalled sampler must not credit a whole stall to a queue it saw
    /// full once.
    max_gap: Duration,
    tracked: HashMap<u64, Tracked>,
}

impl ListenerTracker {
    /// A tracker for a sampler running every `interval`.
    pub fn new(peak_window: Duration, interval: Duration) -> Self {
        let bucket = (peak_window / PEAK_BUCKETS).max(Duration::from_millis(1));
        ListenerTracker {
            peak_window,
            bucket,
            max_gap: (interval * 2).max(Duration::from_secs(1)),
            tracked: HashMap::new(),
        }
    }

    /// Folds one listener dump into the tracked state and returns the
    /// figures to publish. Listeners missing from `records` are forgotten.
    pub fn update(
        &mut self,
        now: Instant,
        wall: SystemTime,
        records: &[ListenerRecord],
    ) -> ListenerSample {
        let mut figures = Vec::with_capacity(records.len());
        for r in records {
            let t = self.tracked.entry(r.cookie).or_insert_with(|| Tracked {
                buckets: VecDeque::with_capacity(PEAK_BUCKETS as usize + 1),
                full_seconds: 0.0,
                last_seen: now,
            });
            if r.length > r.limit {
                let gap = now.saturating_duration_since(t.last_seen).min(self.max_gap);
                t.full_seconds += gap.as_secs_f64();
            }
            t.last_seen = now;
            match t.buckets.back_mut() {
                Some((start, max)) if now.saturating_duration_since(*start) < self.bucket => {
                    *max = (*max).max(r.length);
                }
                _ => t.buckets.push_back((now, r.length)),
            }
            while let Some((start, _)) = t.buckets.front() {
                if now.saturating_duration_since(*start) >= self.peak_window + self.bucket {
                    t.buckets.pop_front();
                } else {
                    break;
                }
            }
            let peak = t.buckets.iter().map(|(_, m)| *m).max().unwrap_or(r.length);
            figures.push(ListenerFigures {
                family: r.key.family(),
                address: r.key.addr.ip(),
                port: r.key.port,
                member: None,
                cookie: r.cookie,
                inode: r.inode,
                uid: r.uid,
                queue_length: r.length,
                queue_limit: r.limit,
                peak_length: peak,
                full_seconds: t.full_seconds,
                drops: r.drops.map(u64::from),
            });
        }
        self.tracked.retain(|_, t| t.last_seen == now);
        ListenerSample {
            taken_at: wall,
            listeners: number_members(figures),
        }
    }
}

/// Sorts listeners and numbers the members of each `SO_REUSEPORT` group by
/// cookie (oldest socket first), so one stuck member shows as its own series
/// while a lone listener keeps exactly the contract's labels.
pub fn number_members(mut figures: Vec<ListenerFigures>) -> Vec<ListenerFigures> {
    figures.sort_unstable_by_key(|f| (f.key(), f.cookie));
    let mut start = 0;
    while start < figures.len() {
        let key: ListenKey = figures[start].key();
        let end = figures[start..]
            .iter()
            .position(|f| f.key() != key)
            .map_or(figures.len(), |n| start + n);
        if end - start > 1 {
            for (i, f) in figures[start..end].iter_mut().enumerate() {
                f.member = Some(i as u32);
            }
        }
        start = end;
    }
    figures
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diag::RawAddr;

    fn listener(cookie: u64, port: u16, length: u32, limit: u32) -> ListenerRecord {
        ListenerRecord {
            key: ListenKey {
                addr: RawAddr::from_ip("127.0.0.1".parse().unwrap()),
                port,
            },
            length,
            limit,
            drops: Some(0),
            cookie,
            inode: cookie as u32,
            uid: 0,
        }
    }

    #[test]
    fn peak_holds_for_the_window_then_ages_out() {
        let mut t = ListenerTracker::new(Duration::from_secs(60), Duration::from_millis(200));
        let t0 = Instant::now();
        let wall = SystemTime::now();
        t.update(t0, wall, &[listener(1, 80, 7, 10)]);
        let s = t.update(
            t0 + Duration::from_secs(30),
            wall,
            &[listener(1, 80, 0, 10)],
        );
        assert_eq!(s.listeners[0].peak_length, 7);
        let s = t.update(
            t0 + Duration::from_secs(75),
            wall,
            &[listener(1, 80, 2, 10)],
        );
        assert_eq!(s.listeners[0].peak_length, 2, "the burst left the window");
    }

    #[test]
    fn full_time_counts_gaps_while_full_and_caps_stalls() {
        let mut t = ListenerTracker::new(Duration::from_secs(60), Duration::from_millis(200));
        let t0 = Instant::now();
        let wall = SystemTime::now();
        let s = t.update(t0, wall, &[listener(1, 80, 11, 10)]);
        assert_eq!(
            s.listeners[0].full_seconds, 0.0,
            "no evidence of duration yet"
        );
        let s = t.update(
            t0 + Duration::from_millis(200),
            wall,
            &[listener(1, 80, 11, 10)],
        );
        assert!((s.listeners[0].full_seconds - 0.2).abs() < 1e-9);
        let s = t.update(
            t0 + Duration::from_millis(400),
            wall,
            &[listener(1, 80, 10, 10)],
        );
        assert!(
            (s.listeners[0].full_seconds - 0.2).abs() < 1e-9,
            "length == limit is not full"
        );
        // A 30 s stall counts at most the cap (1 s here).
        let s = t.update(
            t0 + Duration::from_secs(30),
            wall,
            &[listener(1, 80, 11, 10)],
        );
        assert!((s.listeners[0].full_seconds - 1.2).abs() < 1e-9);
    }

    #[test]
    fn a_replaced_socket_starts_afresh() {
        let mut t = ListenerTracker::new(Duration::from_secs(60), Duration::from_millis(200));
        let t0 = Instant::now();
        let wall = SystemTime::now();
        t.update(t0, wall, &[listener(1, 80, 11, 10)]);
        t.update(
            t0 + Duration::from_millis(200),
            wall,
            &[listener(1, 80, 11, 10)],
        );
        let s = t.update(
            t0 + Duration::from_millis(400),
            wall,
            &[listener(2, 80, 0, 10)],
        );
        assert_eq!(
            (s.listeners[0].full_seconds, s.listeners[0].peak_length),
            (0.0, 0)
        );
        assert_eq!(t.tracked.len(), 1, "the closed socket is forgotten");
    }

    #[test]
    fn reuseport_members_are_numbered_by_cookie_and_loners_are_not() {
        let mut t = ListenerTracker::new(Duration::from_secs(60), Duration::from_millis(200));
        let s = t.update(
            Instant::now(),
            SystemTime::now(),
            &[
                listener(9, 80, 0, 10),
                listener(3, 80, 11, 10),
                listener(5, 443, 0, 10),
            ],
        );
        let got: Vec<_> = s
            .listeners
            .iter()
            .map(|l| (l.port, l.cookie, l.member))
            .collect();
        assert_eq!(
            got,
            vec![(80, 3, Some(0)), (80, 9, Some(1)), (443, 5, None)]
        );
    }
}
