//! What the samplers tell the journal, bounded so that no fault can flood
//! it: failures are logged per collector and namespace at most once per
//! [`WINDOW`], with the number of lines held back in between, and the
//! notices about missing privileges once for the daemon's life.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::netns::{EnterError, NetnsInfo};

/// The least time between two lines about one collector in one namespace.
pub const WINDOW: Duration = Duration::from_secs(60);

/// Keys kept before old ones are forgotten: namespaces come and go.
const MAX_KEYS: usize = 4096;

#[derive(Debug, Default)]
struct Entry {
    failing: bool,
    /// When a line was last written for this key.
    logged_at: Option<Instant>,
    /// Whether the current failure streak was announced (so its end is).
    announced: bool,
    /// Lines held back since the last one written.
    suppressed: u64,
    /// When anything last happened, for pruning.
    touched: Option<Instant>,
}

/// Rate-limited logging of sample failures and recoveries.
#[derive(Debug, Default)]
pub struct FailureLog {
    /// By collector, then namespace; only keys that failed lately, so a
    /// healthy sample costs one lookup and no allocation.
    entries: Mutex<HashMap<&'static str, HashMap<String, Entry>>>,
}

/// What [`FailureLog::outcome`] did, for tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logged {
    /// A WARN about a failure, with the count of lines held back before it.
    Failure {
        /// Lines held back since the previous one.
        suppressed: u64,
    },
    /// An INFO that the failures stopped.
    Recovery,
    /// Nothing written (a DEBUG line at most).
    Nothing,
}

impl FailureLog {
    /// Records how one sample of `collector` in namespace `netns` went at
    /// `now`, logging if the rate allows.
    pub fn outcome(
        &self,
        collector: &'static str,
        netns: &str,
        now: Instant,
        error: Option<&str>,
    ) -> Logged {
        let logged = self.decide(collector, netns, now, error);
        // Written after the lock is released: both tiers share it.
        match (logged, error) {
            (Logged::Failure { suppressed }, Some(error)) => tracing::warn!(
                collector,
                netns,
                error,
                suppressed,
                "sample failed; serving the last good figures (at most one line per minute per \
                 collector and namespace; suppressed counts lines held back)"
            ),
            (Logged::Recovery, _) => {
                tracing::info!(collector, netns, "collector recovered")
            }
            (_, Some(error)) => tracing::debug!(collector, netns, error, "sample failed again"),
            (_, None) => {}
        }
        logged
    }

    fn decide(
        &self,
        collector: &'static str,
        netns: &str,
        now: Instant,
        error: Option<&str>,
    ) -> Logged {
        let mut all = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let by_netns = all.entry(collector).or_default();
        if error.is_none() && !by_netns.contains_key(netns) {
            return Logged::Nothing;
        }
        if by_netns.len() >= MAX_KEYS {
            // Namespaces come and go: forget keys neither failing nor heard
            // from within a window.
            by_netns.retain(|_, e| {
                e.failing
                    || e.touched
                        .is_some_and(|t| now.saturating_duration_since(t) < WINDOW)
            });
        }
        let e = match by_netns.get_mut(netns) {
            Some(e) => e,
            None => by_netns.entry(netns.to_string()).or_default(),
        };
        e.touched = Some(now);
        let may_log = e
            .logged_at
            .is_none_or(|t| now.saturating_duration_since(t) >= WINDOW);
        match error {
            Some(_) => {
                let starts = !e.failing;
                e.failing = true;
                if may_log {
                    let suppressed = std::mem::take(&mut e.suppressed);
                    e.logged_at = Some(now);
                    e.announced = true;
                    return Logged::Failure { suppressed };
                }
                if starts {
                    e.announced = false;
                }
                e.suppressed += 1;
                Logged::Nothing
            }
            None => {
                if !e.failing {
                    return Logged::Nothing;
                }
                e.failing = false;
                if e.announced {
                    // The end of an announced streak is always worth a line:
                    // it says the figures are fresh again.
                    e.announced = false;
                    return Logged::Recovery;
                }
                e.suppressed += 1;
                Logged::Nothing
            }
        }
    }
}

/// Notices about missing privileges, each logged once for the daemon's
/// life: they cannot change while it runs, and their effect is shown per
/// namespace by metrics.
#[derive(Debug, Default)]
pub struct Notices {
    entering: AtomicBool,
    discovery: AtomicBool,
}

impl Notices {
    /// A namespace cannot be entered for lack of privilege.
    pub fn entering_denied(&self, info: &NetnsInfo, error: &EnterError) {
        if !self.entering.swap(true, Ordering::Relaxed) {
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

    /// Processes whose namespace could not be seen.
    pub fn discovery_denied(&self, processes: u64) {
        if processes > 0 && !self.discovery.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                processes,
                "cannot see the network namespace of some processes (needs CAP_SYS_PTRACE): \
                 namespaces only they live in are not collected; \
                 sockdiag_netns_processes_unreadable counts them (logged once)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn a_flapping_collector_logs_two_lines_a_minute() {
        let log = FailureLog::default();
        let t0 = Instant::now();
        let mut written = Vec::new();
        // Fails every other sample, every 200 ms, for 25 s.
        for i in 0..125u64 {
            let error = (i % 2 == 0).then_some("ENOBUFS");
            let l = log.outcome("listeners", "host", at(t0, i * 200), error);
            if l != Logged::Nothing {
                written.push((i, l));
            }
        }
        assert_eq!(
            written,
            vec![
                (0, Logged::Failure { suppressed: 0 }),
                (1, Logged::Recovery)
            ]
        );
        // A minute after the first line, the next failure is told with the
        // count of what was held back (61 failures and recoveries).
        let l = log.outcome("listeners", "host", at(t0, 60_000), Some("ENOBUFS"));
        assert_eq!(l, Logged::Failure { suppressed: 123 });
    }

    #[test]
    fn keys_are_apart_and_healthy_ones_cost_nothing() {
        let log = FailureLog::default();
        let t0 = Instant::now();
        assert_eq!(log.outcome("netstat", "a", t0, None), Logged::Nothing);
        assert!(
            log.entries
                .lock()
                .unwrap()
                .values()
                .all(|by_netns| by_netns.is_empty())
        );
        assert_eq!(
            log.outcome("netstat", "a", t0, Some("x")),
            Logged::Failure { suppressed: 0 }
        );
        assert_eq!(
            log.outcome("netstat", "b", t0, Some("x")),
            Logged::Failure { suppressed: 0 },
            "another namespace"
        );
        assert_eq!(
            log.outcome("listeners", "a", t0, Some("x")),
            Logged::Failure { suppressed: 0 },
            "another collector"
        );
        assert_eq!(
            log.outcome("netstat", "a", at(t0, 10), Some("x")),
            Logged::Nothing
        );
        assert_eq!(
            log.outcome("netstat", "a", at(t0, 20), None),
            Logged::Recovery
        );
    }

    #[test]
    fn a_persistent_failure_is_repeated_once_a_minute() {
        let log = FailureLog::default();
        let t0 = Instant::now();
        let lines = (0..300u64)
            .filter(|i| {
                log.outcome("connections", "host", at(t0, i * 1000), Some("x")) != Logged::Nothing
            })
            .count();
        assert_eq!(lines, 5, "0, 60, 120, 180 and 240 s");
    }
}
