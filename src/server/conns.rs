//! The connection table: what each open HTTP connection is doing, and
//! which one gives way when `--web.max-connections` are open.
//!
//! Refusing newcomers at the cap lets anyone lock scrapers out by holding
//! connections open (one header byte every few seconds, or nothing at
//! all). So a newcomer is always let in while some connection is not
//! doing useful work, and the one closed comes from the client address
//! holding the most such connections: a flood from one address pushes out
//! its own connections, not a scraper's that is still in its TLS handshake.
//! Among that address's connections, first the one that has been sending
//! its first request head (or TLS handshake) the longest goes, then one
//! stalled on a client that does not read its answer (busy for longer than
//! any render may take, so only the client's reading holds it), then the
//! one idle on keep-alive the longest. Only when every connection is
//! serving a request that is still within its time is the newcomer
//! refused: those are doing the work we exist for.
//!
//! One mutex guards the whole table. The runtime is single-threaded, so it
//! is never contended; the victim search scans every entry, which is only
//! done at the cap and costs microseconds at the default 64.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};

use crate::store::{Eviction, Store};

/// What a connection is doing, as the eviction choice sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activity {
    /// Accepted, and its task has not run yet. Never evicted: a scraper's
    /// request head is usually already in the socket when it is accepted,
    /// and its first poll reads it and makes it busy; evicting it before
    /// that poll would shut out exactly the clients the cap protects.
    Unpolled,
    /// Has not completed a request yet: sending its first request head
    /// (or TLS handshake), slowly or not at all.
    Head,
    /// Serving at least one request: from its head parsed (and its
    /// credentials accepted) until its response body has been handed to
    /// the connection, and while writing to the client is blocked (a
    /// response it has not read yet).
    Busy,
    /// Busy for longer than a render may take: the answer waits on a
    /// client that does not read it (a full send buffer, or an HTTP/2
    /// flow-control window it never opens).
    Stalled,
    /// Completed a request and waits on keep-alive for the next (or sends
    /// the next head). Evicting it can cross a request the client has just
    /// sent, as any server's idle timeout can; HTTP clients retry an
    /// idempotent request on a kept-alive connection closed under them.
    Idle,
}

/// The connection to close to make room for a newcomer, with why; `None`
/// when every connection is busy (or not yet polled) and the newcomer
/// must be refused. `conns` yields each connection's key, client address,
/// activity and since when it has been in that activity.
pub fn choose_victim<K, A: Eq + std::hash::Hash + Copy>(
    conns: impl IntoIterator<Item = (K, A, Activity, Instant)>,
) -> Option<(K, Eviction)> {
    let rank = |activity: Activity| match activity {
        Activity::Head => Some((0, Eviction::Slow)),
        Activity::Stalled => Some((1, Eviction::Stalled)),
        Activity::Idle => Some((2, Eviction::Idle)),
        Activity::Busy | Activity::Unpolled => None,
    };
    let candidates: Vec<(K, A, u8, Eviction, Instant)> = conns
        .into_iter()
        .filter_map(|(key, addr, activity, since)| {
            rank(activity).map(|(r, why)| (key, addr, r, why, since))
        })
        .collect();
    let mut per_address: HashMap<A, usize> = HashMap::new();
    for (_, addr, ..) in &candidates {
        *per_address.entry(*addr).or_default() += 1;
    }
    // Most evictable connections of one address first, then the least
    // useful activity, then the oldest.
    candidates
        .into_iter()
        .min_by_key(|(_, addr, r, _, since)| {
            let held = per_address.get(addr).copied().unwrap_or(0);
            (std::cmp::Reverse(held), *r, *since)
        })
        .map(|(key, _, _, why, _)| (key, why))
}

struct Entry {
    /// The client's address.
    peer: IpAddr,
    polled: bool,
    /// Requests in flight (HTTP/1 serves one at a time; HTTP/2 may not).
    requests: u32,
    /// Whether a request has completed on this connection.
    served: bool,
    /// Whether the last write to the client could not go through.
    write_blocked: bool,
    /// When the connection entered its current activity.
    since: Instant,
    /// Dropping it (with the entry) tells the connection's task to close.
    _evict: oneshot::Sender<()>,
}

impl Entry {
    fn busy(&self) -> bool {
        self.requests > 0 || self.write_blocked
    }

    fn activity(&self, now: Instant, stall_after: Duration) -> Activity {
        match (self.polled, self.busy(), self.served) {
            (false, _, _) => Activity::Unpolled,
            (true, true, _) if now.saturating_duration_since(self.since) > stall_after => {
                Activity::Stalled
            }
            (true, true, _) => Activity::Busy,
            (true, false, false) => Activity::Head,
            (true, false, true) => Activity::Idle,
        }
    }

    /// Sets `since` when the connection turns busy or stops being busy.
    fn changed(&mut self, was_busy: bool, now: Instant) {
        if was_busy != self.busy() {
            self.since = now;
        }
    }
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    entries: HashMap<u64, Entry>,
}

/// Every open HTTP connection over all listen addresses, capped.
pub struct ConnTable {
    inner: Mutex<Inner>,
    cap: usize,
    /// Busy for longer than this, a connection counts as stalled.
    stall_after: Duration,
    store: Arc<Store>,
    open: watch::Sender<usize>,
}

/// A newcomer let in.
pub struct Admitted {
    /// Its entry; the slot is freed when every clone is dropped.
    pub handle: ConnHandle,
    /// Completes when the connection was evicted: close it then.
    pub evicted: oneshot::Receiver<()>,
    /// The connection closed to make room, if one was, with the running
    /// total of evictions (for logging at a bounded rate).
    pub reclaimed: Option<(Eviction, u64)>,
}

/// A newcomer refused, with the running total of refusals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused(pub u64);

/// Locks a mutex even if a thread panicked while holding it: every update
/// here is a single field write, so the table is never half-changed.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl ConnTable {
    /// A table of at most `cap` connections (at least one), publishing
    /// its figures to `store`; a connection busy for longer than
    /// `stall_after` (the longest a render may take) is stalled.
    pub fn new(cap: usize, stall_after: Duration, store: Arc<Store>) -> Arc<Self> {
        Arc::new(ConnTable {
            inner: Mutex::default(),
            cap: cap.max(1),
            stall_after,
            store,
            open: watch::Sender::new(0),
        })
    }

    /// Lets a newly accepted connection in, evicting another if the table
    /// is full; refuses it when no connection may be evicted.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Admitted, Refused> {
        let mut inner = lock(&self.inner);
        let mut reclaimed = None;
        let now = Instant::now();
        if inner.entries.len() >= self.cap {
            let victim = choose_victim(
                inner
                    .entries
                    .iter()
                    .map(|(id, e)| (*id, e.peer, e.activity(now, self.stall_after), e.since)),
            );
            let Some((id, reason)) = victim else {
                return Err(Refused(self.store.count_connection_refused()));
            };
            // Dropping the entry drops its sender: the victim's task sees
            // its receiver complete and closes the connection.
            inner.entries.remove(&id);
            reclaimed = Some((reason, self.store.count_connection_evicted(reason)));
        }
        let id = inner.next_id;
        inner.next_id += 1;
        let (tx, rx) = oneshot::channel();
        inner.entries.insert(
            id,
            Entry {
                peer,
                polled: false,
                requests: 0,
                served: false,
                write_blocked: false,
                since: now,
                _evict: tx,
            },
        );
        self.publish(&inner);
        Ok(Admitted {
            handle: ConnHandle(Arc::new(HandleInner {
                table: self.clone(),
                id,
            })),
            evicted: rx,
            reclaimed,
        })
    }

    /// Connections open now (evicted ones no longer count).
    pub fn len(&self) -> usize {
        lock(&self.inner).entries.len()
    }

    /// Whether no connection is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the table holds `--web.max-connections` connections.
    pub fn is_full(&self) -> bool {
        self.len() >= self.cap
    }

    /// Completes once no connection is open.
    pub async fn closed(&self) {
        let mut open = self.open.subscribe();
        // The sender lives in `self`, so the wait cannot fail.
        let _ = open.wait_for(|n| *n == 0).await;
    }

    fn publish(&self, inner: &Inner) {
        let n = inner.entries.len();
        self.store.set_connections_open(n as u64);
        self.open.send_replace(n);
    }

    fn update(&self, id: u64, f: impl FnOnce(&mut Entry)) {
        if let Some(e) = lock(&self.inner).entries.get_mut(&id) {
            let was_busy = e.busy();
            f(e);
            e.changed(was_busy, Instant::now());
        }
    }
}

struct HandleInner {
    table: Arc<ConnTable>,
    id: u64,
}

impl Drop for HandleInner {
    fn drop(&mut self) {
        let mut inner = lock(&self.table.inner);
        // Already gone if it was evicted.
        if inner.entries.remove(&self.id).is_some() {
            self.table.publish(&inner);
        }
    }
}

/// One connection's entry in the table, shared by its task and its
/// service; the entry goes when the last clone does.
#[derive(Clone)]
pub struct ConnHandle(Arc<HandleInner>);

impl ConnHandle {
    /// The connection's task has polled it once: from now on it may be
    /// evicted when it is not busy.
    pub fn mark_polled(&self) {
        self.0.table.update(self.0.id, |e| e.polled = true);
    }

    /// Writing to the client blocked (`true`: the kernel's send buffer is
    /// full, the client is not reading what we answered) or went through
    /// again. The end of a response can wait there after its body is done;
    /// closing the connection then would cut the answer short.
    pub fn set_write_blocked(&self, blocked: bool) {
        self.0
            .table
            .update(self.0.id, |e| e.write_blocked = blocked);
    }

    /// How long the connection has been waiting for a request (idle, or
    /// never used); `None` while it serves one.
    pub fn waiting_for(&self) -> Option<Duration> {
        let inner = lock(&self.0.table.inner);
        let e = inner.entries.get(&self.0.id)?;
        (!e.busy()).then(|| e.since.elapsed())
    }

    /// A request's head was read and its credentials accepted: the
    /// connection is busy until the guard, which must live until its
    /// response body has been sent, is dropped.
    pub fn begin_request(&self) -> RequestGuard {
        self.0.table.update(self.0.id, |e| e.requests += 1);
        RequestGuard(self.clone())
    }
}

/// Keeps a connection busy while a request is served.
pub struct RequestGuard(ConnHandle);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.0.table.update(self.0.0.id, |e| {
            e.requests = e.requests.saturating_sub(1);
            if e.requests == 0 {
                e.served = true;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn at(t0: Instant, secs: u64) -> Instant {
        t0 + Duration::from_secs(secs)
    }

    #[test]
    fn the_oldest_slow_connection_goes_first() {
        let t0 = Instant::now();
        let conns = [
            ("idle-oldest", 1, Activity::Idle, at(t0, 0)),
            ("slow-new", 1, Activity::Head, at(t0, 5)),
            ("busy", 1, Activity::Busy, at(t0, 0)),
            ("slow-old", 1, Activity::Head, at(t0, 2)),
            ("unpolled-older", 1, Activity::Unpolled, at(t0, 1)),
        ];
        assert_eq!(choose_victim(conns), Some(("slow-old", Eviction::Slow)));
    }

    #[test]
    fn without_slow_connections_the_longest_idle_goes() {
        let t0 = Instant::now();
        let conns = [
            ("idle-new", 1, Activity::Idle, at(t0, 9)),
            ("idle-old", 1, Activity::Idle, at(t0, 3)),
            ("busy", 1, Activity::Busy, at(t0, 1)),
        ];
        assert_eq!(choose_victim(conns), Some(("idle-old", Eviction::Idle)));
    }

    #[test]
    fn busy_and_unpolled_connections_are_never_evicted() {
        let t0 = Instant::now();
        let conns = [
            ("busy", 1, Activity::Busy, at(t0, 0)),
            ("unpolled", 1, Activity::Unpolled, at(t0, 0)),
        ];
        assert_eq!(choose_victim(conns), None);
        assert_eq!(
            choose_victim(Vec::<(u8, u8, Activity, Instant)>::new()),
            None
        );
    }

    #[test]
    fn the_address_holding_the_most_goes_first() {
        let t0 = Instant::now();
        // A scraper (address 2) mid-handshake and older than a flood from
        // address 1: the flood's own connections give way, even idle ones
        // that would otherwise come after every slow one.
        let conns = [
            ("scraper", 2, Activity::Head, at(t0, 0)),
            ("flood-a", 1, Activity::Idle, at(t0, 5)),
            ("flood-b", 1, Activity::Head, at(t0, 7)),
            ("flood-c", 1, Activity::Head, at(t0, 6)),
        ];
        assert_eq!(choose_victim(conns), Some(("flood-c", Eviction::Slow)));
    }

    #[test]
    fn a_stalled_connection_goes_before_an_idle_one() {
        let t0 = Instant::now();
        let conns = [
            ("idle", 1, Activity::Idle, at(t0, 0)),
            ("stalled", 1, Activity::Stalled, at(t0, 5)),
            ("busy", 1, Activity::Busy, at(t0, 0)),
        ];
        assert_eq!(choose_victim(conns), Some(("stalled", Eviction::Stalled)));
    }

    #[test]
    fn a_connection_busy_for_too_long_is_stalled() {
        let store = Arc::new(Store::new(&[]));
        let table = ConnTable::new(1, Duration::from_millis(50), store.clone());
        let Ok(a) = table.admit(LOCAL) else {
            panic!("room for a")
        };
        a.handle.mark_polled();
        let request = a.handle.begin_request();
        assert!(table.admit(LOCAL).is_err(), "a is busy");
        std::thread::sleep(Duration::from_millis(80));
        let Ok(b) = table.admit(LOCAL) else {
            panic!("a has stalled: b takes its place")
        };
        assert_eq!(b.reclaimed, Some((Eviction::Stalled, 1)));
        drop((request, a, b));
    }

    #[test]
    fn the_table_evicts_by_activity_and_frees_slots_on_drop() {
        let store = Arc::new(Store::new(&[]));
        let table = ConnTable::new(2, Duration::from_secs(3600), store.clone());
        let Ok(mut a) = table.admit(LOCAL) else {
            panic!("room for a")
        };
        let Ok(b) = table.admit(LOCAL) else {
            panic!("room for b")
        };
        // Neither has been polled: a newcomer is refused.
        assert_eq!(table.admit(LOCAL).err(), Some(Refused(1)));
        a.handle.mark_polled();
        b.handle.mark_polled();
        let served = b.handle.begin_request();
        // a is slow (no request yet), b busy: a goes.
        let Ok(c) = table.admit(LOCAL) else {
            panic!("c evicts a")
        };
        assert_eq!(c.reclaimed, Some((Eviction::Slow, 1)));
        assert!(
            matches!(
                a.evicted.try_recv(),
                Err(oneshot::error::TryRecvError::Closed)
            ),
            "a's task is told to close"
        );
        drop(a);
        assert_eq!(table.len(), 2, "an evicted handle frees nothing twice");
        c.handle.mark_polled();
        let c_busy = c.handle.begin_request();
        assert!(table.admit(LOCAL).is_err(), "b and c are busy");
        // b finished its request: it is idle now, and goes next.
        drop(served);
        b.handle.set_write_blocked(true);
        assert!(
            table.admit(LOCAL).is_err(),
            "b's answer is still being written"
        );
        b.handle.set_write_blocked(false);
        let Ok(d) = table.admit(LOCAL) else {
            panic!("d evicts idle b")
        };
        assert_eq!(d.reclaimed, Some((Eviction::Idle, 1)));
        let snap = store.snapshot();
        assert_eq!(snap.connections.refused, 3);
        assert_eq!(snap.connections.evicted_slow, 1);
        assert_eq!(snap.connections.evicted_idle, 1);
        assert_eq!(snap.connections.open, 2);
        drop((b, c_busy, c, d));
        assert!(table.is_empty());
        assert_eq!(store.snapshot().connections.open, 0);
    }
}
