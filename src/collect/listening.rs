//! What the per-socket collectors (TCP and unix listeners, UDP
//! receivers) share: the per-listener metric families, the labels of one
//! socket and its owner's info series, the cap on exported sockets and the
//! count of those left out, the TCP listener dump the connections
//! collector also takes, and the owner lookup the snapshot table uses.
//! Kept apart so that no collector module depends on another.

use std::collections::HashMap;
use std::time::SystemTime;

use crate::aggregate::{ListenKey, ListenerRecord};
use crate::diag::{DiagError, DiagSocket, DumpRequest, Protocol, StateSet};
use crate::family::{Families, Kind, LISTENER_LABELS, MetricDef, OWNER_LABELS};
use crate::model::{
    Endpoint, ListenerFigures, ListenerSample, NetnsView, OwnerSample, QueueSummary,
};
use crate::owners::Owner;
use crate::tracker::Seen;

use super::{LISTENERS, NamespaceView, PROCESSES};

/// `sockdiag_accept_queue_length`
pub const ACCEPT_QUEUE_LENGTH: MetricDef = MetricDef {
    name: "sockdiag_accept_queue_length",
    kind: Kind::Gauge,
    labels: LISTENER_LABELS,
    member: true,
    help: "Connections waiting for accept() now (for TCP, those that completed the handshake). Above sockdiag_accept_queue_limit the kernel refuses new ones (TCP drops SYNs; a unix connect blocks or fails with EAGAIN, which nginx answers with 502): the application is not accepting fast enough.",
};
/// `sockdiag_accept_queue_limit`
pub const ACCEPT_QUEUE_LIMIT: MetricDef = MetricDef {
    name: "sockdiag_accept_queue_limit",
    kind: Kind::Gauge,
    labels: LISTENER_LABELS,
    member: true,
    help: "Effective accept-queue limit: min(listen() backlog, net.core.somaxconn). The queue is full when length > limit; raise the backlog (listen.backlog in php-fpm, --backlog in gunicorn) or accept faster.",
};
/// `sockdiag_accept_queue_peak_length`
pub const ACCEPT_QUEUE_PEAK: MetricDef = MetricDef {
    name: "sockdiag_accept_queue_peak_length",
    kind: Kind::Gauge,
    labels: LISTENER_LABELS,
    member: true,
    help: "Highest accept-queue length seen by fast listener sampling over the peak window (--collector.listeners.peak-window, kept in six steps, so a peak leaves between one window and 7/6 of a window later); shows bursts shorter than the scrape interval. Scrapes do not reset it.",
};
/// `sockdiag_accept_queue_full_seconds_total`
pub const ACCEPT_QUEUE_FULL_SECONDS: MetricDef = MetricDef {
    name: "sockdiag_accept_queue_full_seconds_total",
    kind: Kind::Counter,
    labels: LISTENER_LABELS,
    member: true,
    help: "Seconds during which listener sampling saw the accept queue full (length > limit); while it grows, new connections to this listener are being dropped.",
};
/// `sockdiag_listen_drops_total`
pub const LISTEN_DROPS: MetricDef = MetricDef {
    name: "sockdiag_listen_drops_total",
    kind: Kind::Counter,
    labels: LISTENER_LABELS,
    member: true,
    help: "Packets this TCP listening socket dropped (its sk_drops): accept-queue overflows and other listen drops. Any increase means clients failed to connect or had to retransmit. Not exported for unix listeners, for which the kernel keeps no drop counter.",
};

/// Dumps the listening TCP sockets of both families into `out` (cleared
/// first); `meminfo` asks for the drop counter.
pub fn dump_listeners(
    socket: &mut DiagSocket,
    meminfo: bool,
    out: &mut Vec<ListenerRecord>,
) -> Result<(), DiagError> {
    out.clear();
    // Both families in one walk of the host-wide listening hash.
    let request = DumpRequest {
        protocol: Protocol::Tcp,
        family: None,
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
    Ok(())
}

/// The drops of a namespace's TCP listeners, all together, as the fast
/// tier last saw them.
pub fn tcp_listener_drops(view: &NetnsView) -> u64 {
    view.part::<ListenerSample>(LISTENERS).map_or(0, |s| {
        s.listeners
            .iter()
            .filter(|l| l.endpoint.inet().is_some())
            .filter_map(|l| l.drops)
            .sum()
    })
}

/// A one-off look cannot know a peak or how long a queue was full: those
/// figures are left unknown rather than made up.
pub fn forget_history(sample: &mut ListenerSample) {
    for l in &mut sample.listeners {
        l.peak_length = None;
        l.full_seconds = None;
    }
}

/// `sockdiag_listener_process_info`
pub const LISTENER_PROCESS_INFO: MetricDef = MetricDef {
    name: "sockdiag_listener_process_info",
    kind: Kind::Gauge,
    labels: OWNER_LABELS,
    member: true,
    help: "Always 1: the process owning this listening socket (the lowest pid holding it): its command name, executable, command line (at most 128 characters, control characters as ?), systemd unit and container. Join on job, instance, netns, family, address, port and member to name the owner of a full queue (unix listeners have no port).",
};
/// Renders the owner of socket `l` as an info series of `def`, whose
/// labels are the socket's and the owner's; nothing when the processes
/// collector has not found it (or does not run).
pub fn render_owner(
    out: &mut Families,
    ns: &NamespaceView<'_>,
    l: &ListenerFigures,
    def: &MetricDef,
) {
    render_owner_of(out, ns, &l.endpoint, l.member, l.cookie, def);
}

/// [`render_owner`] for a socket given by its address, member and cookie.
pub fn render_owner_of(
    out: &mut Families,
    ns: &NamespaceView<'_>,
    endpoint: &Endpoint,
    member: Option<u32>,
    cookie: u64,
    def: &MetricDef,
) {
    let Some(owner) = owner(ns.view, cookie) else {
        return;
    };
    let labels = ListenerLabels::new(endpoint, member);
    let pid = owner.pid.to_string();
    let w = &owner.workload;
    let extra = [
        ("pid", pid.as_str()),
        ("comm", owner.comm.as_str()),
        ("exe", owner.exe.as_deref().unwrap_or("")),
        ("cmdline", owner.cmdline.as_str()),
        ("unit", w.unit.as_deref().unwrap_or("")),
        ("container_id", w.container_id.as_deref().unwrap_or("")),
    ];
    out.push(def, &labels.pairs(ns.name, &extra), 1.0);
}

/// Keeps at most `max` listeners in `seen`: those `was_exported` says were
/// exported last time first, then newcomers by address; returns how many
/// were left out.
pub fn cap(seen: &mut Vec<Seen>, was_exported: impl Fn(u64) -> bool, max: usize) -> u64 {
    if seen.len() <= max {
        return 0;
    }
    seen.sort_by(|a, b| {
        let new = |s: &Seen| !was_exported(s.cookie);
        (new(a), &a.endpoint, a.cookie).cmp(&(new(b), &b.endpoint, b.cookie))
    });
    let dropped = (seen.len() - max) as u64;
    seen.truncate(max);
    dropped
}

/// Renders how many sockets a collector left out of its per-socket
/// series, by reason, as `def` (labels `netns` and `reason`).
pub fn render_unexported(
    out: &mut Families,
    netns: &str,
    def: &MetricDef,
    unexported: &[(&'static str, u64)],
) {
    for (reason, n) in unexported {
        out.push(def, &[("netns", netns), ("reason", reason)], *n as f64);
    }
}

/// A sample's listeners by address and member, as people read them (the
/// sample keeps the kernel's order, which costs nothing to keep).
pub fn in_order(sample: &ListenerSample) -> Vec<&ListenerFigures> {
    let mut v: Vec<&ListenerFigures> = sample.listeners.iter().collect();
    v.sort_unstable_by(|a, b| (&a.endpoint, a.member).cmp(&(&b.endpoint, b.member)));
    v
}

/// The owner of the listener with this cookie in a namespace's view, as
/// the processes collector last found it.
pub fn owner(view: &NetnsView, cookie: u64) -> Option<&Owner> {
    view.part::<OwnerSample>(PROCESSES)?.get(cookie)
}

/// The labels of one listener: `netns`, `family`, `address`, `port` (TCP
/// only) and `member` (groups only).
pub struct ListenerLabels {
    family: &'static str,
    address: String,
    port: Option<String>,
    member: Option<String>,
}

impl ListenerLabels {
    /// The labels of `l`.
    pub fn of(l: &ListenerFigures) -> Self {
        ListenerLabels::new(&l.endpoint, l.member)
    }

    /// The labels of a socket at `endpoint`, `member` of its group.
    pub fn new(endpoint: &Endpoint, member: Option<u32>) -> Self {
        ListenerLabels {
            family: endpoint.family(),
            address: endpoint.address(),
            port: endpoint.port().map(|p| p.to_string()),
            member: member.map(|m| m.to_string()),
        }
    }

    /// As label pairs: `netns`, `family`, `address`, `port`, then `extra`,
    /// then `member`.
    pub fn pairs<'a>(
        &'a self,
        netns: &'a str,
        extra: &[(&'a str, &'a str)],
    ) -> Vec<(&'a str, &'a str)> {
        let mut v = vec![
            ("netns", netns),
            ("family", self.family),
            ("address", self.address.as_str()),
        ];
        if let Some(p) = &self.port {
            v.push(("port", p));
        }
        v.extend_from_slice(extra);
        if let Some(m) = &self.member {
            v.push(("member", m));
        }
        v
    }
}

/// Renders one listener's own figures (TCP or unix); absent figures
/// (drops of a unix listener, peaks of a one-off look) leave no series.
pub fn render_listener(out: &mut Families, netns: &str, l: &ListenerFigures) {
    let labels = ListenerLabels::of(l);
    let pairs = labels.pairs(netns, &[]);
    out.push(&ACCEPT_QUEUE_LENGTH, &pairs, f64::from(l.queue_length));
    out.push(&ACCEPT_QUEUE_LIMIT, &pairs, f64::from(l.queue_limit));
    if let Some(peak) = l.peak_length {
        out.push(&ACCEPT_QUEUE_PEAK, &pairs, f64::from(peak));
    }
    if let Some(full) = l.full_seconds {
        out.push(&ACCEPT_QUEUE_FULL_SECONDS, &pairs, full);
    }
    if let Some(d) = l.drops {
        out.push(&LISTEN_DROPS, &pairs, d as f64);
    }
}

/// The fast tier's view of one listening address's queue: connections
/// waiting across its sockets, and since when (see
/// [`crate::model::ListenerFigures::queued_since`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backlog {
    /// Connections waiting now, summed over the sockets at the address.
    pub waiting: u64,
    /// While some wait: the earliest time since which a socket there has
    /// had a non-empty queue.
    pub since: Option<SystemTime>,
}

/// Each TCP listening address's [`Backlog`] in a listener sample.
pub struct Backlogs(HashMap<ListenKey, Backlog>);

impl Backlogs {
    /// The backlogs of `sample`'s TCP listeners.
    pub fn of(sample: &ListenerSample) -> Self {
        let mut map: HashMap<ListenKey, Backlog> = HashMap::new();
        for l in &sample.listeners {
            let Some(key) = l.endpoint.inet() else {
                continue;
            };
            let b = map.entry(*key).or_insert(Backlog {
                waiting: 0,
                since: None,
            });
            b.waiting += u64::from(l.queue_length);
            b.since = match (b.since, l.queued_since) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        Backlogs(map)
    }

    /// The backlog at `key`, if a listener is there.
    pub fn get(&self, key: &ListenKey) -> Option<&Backlog> {
        self.0.get(key)
    }

    /// Every listening address with its backlog.
    pub fn iter(&self) -> impl Iterator<Item = (&ListenKey, &Backlog)> {
        self.0.iter()
    }
}

/// Bytes and age of the connections waiting at one address.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Waiting {
    /// Bytes received on them.
    pub bytes: u64,
    /// Seconds the oldest has waited; `None` when not dated.
    pub oldest_seconds: Option<f64>,
}

/// The bytes and age that may be shown beside the fast tier's queue length
/// (`backlog`, when the listeners collector runs), from walk summary `q`
/// taken at `walked`. The two tiers sample at different times, and must
/// never be read together as a full queue holding nothing: an empty queue
/// holds no bytes and no age, whatever an older walk found; a non-empty
/// one shows the walk's figures only if the walk was taken after the queue
/// last was empty and found connections waiting, and is otherwise not
/// shown until a walk has seen them (the scheduler walks such a namespace
/// soon: see the connections collector).
pub fn waiting(q: &QueueSummary, walked: SystemTime, backlog: Option<&Backlog>) -> Option<Waiting> {
    let from_walk = Waiting {
        bytes: q.queued_bytes,
        oldest_seconds: q.oldest_seconds,
    };
    let Some(b) = backlog else {
        return Some(from_walk);
    };
    if b.waiting == 0 {
        return Some(Waiting {
            bytes: 0,
            oldest_seconds: q.oldest_seconds.map(|_| 0.0),
        });
    }
    let seen = q.queued > 0 && b.since.is_some_and(|since| walked >= since);
    seen.then_some(from_walk)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn seen(cookie: u64, name: &str) -> Seen {
        Seen {
            endpoint: Endpoint::Unix(name.into()),
            length: 0,
            limit: 1,
            drops: None,
            cookie,
            inode: cookie as u32,
            uid: None,
        }
    }

    #[test]
    fn the_cap_keeps_exported_listeners_first_then_newcomers_by_name() {
        let cookies = |v: &[Seen]| v.iter().map(|s| s.cookie).collect::<Vec<_>>();
        // Nobody was exported before: by address.
        let mut v = vec![seen(1, "/c"), seen(2, "/a"), seen(3, "/b")];
        assert_eq!(cap(&mut v, |_| false, 2), 1);
        assert_eq!(cookies(&v), vec![2, 3], "by address");
        let exported: HashSet<u64> = cookies(&v).into_iter().collect();
        // A newcomer that sorts first does not push out an exported one.
        let mut v = vec![seen(1, "/c"), seen(2, "/a"), seen(3, "/b"), seen(4, "/0")];
        assert_eq!(cap(&mut v, |c| exported.contains(&c), 2), 2);
        assert_eq!(cookies(&v), vec![2, 3]);
        // When one leaves, the newcomer that sorts first takes its place.
        let mut v = vec![seen(1, "/c"), seen(3, "/b"), seen(4, "/0")];
        assert_eq!(cap(&mut v, |c| exported.contains(&c), 2), 1);
        assert_eq!(cookies(&v), vec![3, 4]);
        let mut v = vec![seen(3, "/b")];
        assert_eq!(cap(&mut v, |_| true, 2), 0);
        assert_eq!(cookies(&v), vec![3]);
    }
}
