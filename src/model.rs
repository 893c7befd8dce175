//! Immutable results of sampling, shared by every renderer (Prometheus text,
//! the `snapshot` table, JSON). Each collector publishes its own part of a
//! namespace's [`NetnsView`]; nothing downstream reaches back into netlink.

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde::ser::SerializeStruct;

use crate::aggregate::{ListenKey, PortEntry, QueueFigures, Role};
use crate::diag::TcpState;
use crate::owners::Owner;

/// Where a listener listens: what its `family`, `address` and `port`
/// labels say.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Endpoint {
    /// A TCP listener's address and port.
    Inet(ListenKey),
    /// A unix listener's address as its label shows it (see
    /// [`crate::collect::unix::address_label`]): a path, or `@` and an
    /// abstract name.
    Unix(Arc<str>),
}

impl Endpoint {
    /// The `family` label: `ipv4`, `ipv6` or `unix`.
    pub fn family(&self) -> &'static str {
        match self {
            Endpoint::Inet(k) => k.family().as_str(),
            Endpoint::Unix(_) => "unix",
        }
    }

    /// The `address` label.
    pub fn address(&self) -> String {
        match self {
            Endpoint::Inet(k) => k.addr.ip().to_string(),
            Endpoint::Unix(name) => name.to_string(),
        }
    }

    /// The `port` label; unix listeners have none.
    pub fn port(&self) -> Option<u16> {
        match self {
            Endpoint::Inet(k) => Some(k.port),
            Endpoint::Unix(_) => None,
        }
    }

    /// The TCP listening address, if this is one.
    pub fn inet(&self) -> Option<&ListenKey> {
        match self {
            Endpoint::Inet(k) => Some(k),
            Endpoint::Unix(_) => None,
        }
    }
}

/// As `ss` prints it: `127.0.0.1:80`, `[::]:443`, or the unix address.
impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Inet(k) => match k.addr.ip() {
                IpAddr::V4(a) => write!(f, "{a}:{}", k.port),
                IpAddr::V6(a) => write!(f, "[{a}]:{}", k.port),
            },
            Endpoint::Unix(name) => f.write_str(name),
        }
    }
}

/// Serialised as `family`, `address` and, for TCP, `port` fields.
impl Serialize for Endpoint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let port = self.port();
        let mut st = s.serialize_struct("Endpoint", 2 + usize::from(port.is_some()))?;
        st.serialize_field("family", self.family())?;
        st.serialize_field("address", &self.address())?;
        if let Some(p) = port {
            st.serialize_field("port", &p)?;
        }
        st.end()
    }
}

/// One listening socket, as the fast listener tier last saw it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ListenerFigures {
    /// Where it listens.
    #[serde(flatten)]
    pub endpoint: Endpoint,
    /// Stable slot among the sockets sharing its address (a `SO_REUSEPORT`
    /// group, or a unix path bound again while the old socket still
    /// listens): the lowest free slot when the socket was first seen, kept
    /// while it lives; `None` when the socket is alone on its address.
    pub member: Option<u32>,
    /// Socket cookie.
    pub cookie: u64,
    /// Socket inode.
    pub inode: u32,
    /// Owner uid, when the kernel says.
    pub uid: Option<u32>,
    /// Accept-queue length now.
    pub queue_length: u32,
    /// Effective backlog; the queue is full when length > limit.
    pub queue_limit: u32,
    /// Highest length over the peak window; `None` from a one-off sample,
    /// which cannot know it.
    pub peak_length: Option<u32>,
    /// Seconds during which sampling saw the queue full; `None` from a
    /// one-off sample.
    pub full_seconds: Option<f64>,
    /// The socket's drop counter (`sk_drops`, widened past its 32-bit
    /// wrap); `None` if the kernel keeps none (unix) or did not send it.
    pub drops: Option<u64>,
    /// While connections wait: the wall time since which the queue has
    /// been non-empty at the latest (the last sample that saw it empty).
    /// Only a connection walk taken after it describes these connections.
    #[serde(skip)]
    pub queued_since: Option<SystemTime>,
}

impl ListenerFigures {
    /// Whether the kernel would refuse a new connection now.
    pub fn is_full(&self) -> bool {
        self.queue_length > self.queue_limit
    }
}

/// One listener collector's result for one namespace.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ListenerSample {
    /// When the sample was taken.
    #[serde(serialize_with = "unix_seconds")]
    pub taken_at: SystemTime,
    /// Listening sockets, in the order the kernel listed them (renderers
    /// for people sort them).
    pub listeners: Vec<ListenerFigures>,
    /// Listeners left out of the figures, by reason (`filter`, `cap`).
    pub unexported: Vec<(&'static str, u64)>,
}

/// One UDP socket receiving on a port of its own, as the fast tier last
/// saw it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UdpReceiver {
    /// Where it receives.
    #[serde(flatten)]
    pub endpoint: Endpoint,
    /// Stable slot in its `SO_REUSEPORT` group; `None` when alone.
    pub member: Option<u32>,
    /// Socket cookie.
    pub cookie: u64,
    /// Socket inode.
    pub inode: u32,
    /// Owner uid.
    pub uid: Option<u32>,
    /// Bytes queued for the application (`idiag_rqueue`).
    pub queue_bytes: u32,
    /// The receive buffer's limit (`SK_MEMINFO_RCVBUF`); 0 if not sent.
    pub buffer_bytes: u32,
    /// Highest queue over the peak window; `None` from a one-off sample.
    pub peak_bytes: Option<u32>,
    /// Datagrams it dropped (`SK_MEMINFO_DROPS`, widened past its 32-bit
    /// wrap, continued across sockets taking over its labels).
    pub drops: Option<u64>,
}

impl UdpReceiver {
    /// Queue over buffer, `None` when the buffer is not known.
    pub fn fill(&self) -> Option<f64> {
        (self.buffer_bytes > 0).then(|| f64::from(self.queue_bytes) / f64::from(self.buffer_bytes))
    }
}

/// Sockets on one receiving address and port.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UdpAddress {
    /// The address and port.
    #[serde(flatten)]
    pub endpoint: Endpoint,
    /// Unconnected sockets receiving there (more than one: `SO_REUSEPORT`).
    pub unconnected: u64,
    /// Connected sockets sharing that port (as QUIC servers make).
    pub connected: u64,
}

/// The UDP collector's result for one namespace.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UdpSample {
    /// When the sample was taken.
    #[serde(serialize_with = "unix_seconds")]
    pub taken_at: SystemTime,
    /// Receiving sockets, in the order the kernel listed them.
    pub receivers: Vec<UdpReceiver>,
    /// Sockets per receiving address, sorted.
    pub addresses: Vec<UdpAddress>,
    /// Sockets that are not receivers (clients on ephemeral ports).
    pub other_sockets: u64,
    /// Bytes queued on those.
    pub other_queue_bytes: u64,
    /// Receivers left out of the figures, by reason (`cap`).
    pub unexported: Vec<(&'static str, u64)>,
}

/// What the connection walk found for one listening address.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueueSummary {
    /// The listening address.
    #[serde(flatten)]
    pub endpoint: Endpoint,
    /// Connections waiting for `accept()` (counted one by one).
    pub queued: u64,
    /// Bytes received on them.
    pub queued_bytes: u64,
    /// Seconds the oldest of them has waited (0 when none waits); `None`
    /// when connections wait but their age was not read
    /// (`--collector.connections.queue-age off`).
    pub oldest_seconds: Option<f64>,
    /// Half-open requests (SYN-RECV).
    pub syn_queue_length: u64,
}

impl QueueSummary {
    /// Builds the summary from the aggregator's figures.
    pub fn new(key: ListenKey, q: QueueFigures) -> Self {
        QueueSummary {
            endpoint: Endpoint::Inet(key),
            queued: q.queued,
            queued_bytes: q.queued_bytes,
            oldest_seconds: if q.queued == 0 {
                Some(0.0)
            } else {
                q.oldest_ms.map(|ms| f64::from(ms) / 1000.0)
            },
            syn_queue_length: q.syn_recv,
        }
    }
}

/// Figures of one (role, port).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PortSummary {
    /// Server or client.
    pub role: Role,
    /// The port, or `None` for client ports folded into `other`.
    pub port: Option<u16>,
    /// Sockets by state name; states with no socket are left out.
    pub states: Vec<(&'static str, u64)>,
    /// Sum of Send-Q.
    pub send_queue_bytes: u64,
    /// Sum of Recv-Q.
    pub recv_queue_bytes: u64,
}

impl PortSummary {
    /// Builds the summary from the aggregator's figures.
    pub fn new(e: &PortEntry) -> Self {
        PortSummary {
            role: e.role,
            port: e.port,
            states: TcpState::CONNECTION_STATES
                .iter()
                .zip(e.figures.states.iter())
                .filter(|(_, n)| **n > 0)
                .map(|(s, n)| (s.as_str(), *n))
                .collect(),
            send_queue_bytes: e.figures.send_queue_bytes,
            recv_queue_bytes: e.figures.recv_queue_bytes,
        }
    }

    /// The `port` label value.
    pub fn port_label(&self) -> String {
        self.port
            .map_or_else(|| "other".to_string(), |p| p.to_string())
    }

    /// Sockets in `state`, 0 when none.
    pub fn count(&self, state: TcpState) -> u64 {
        self.states
            .iter()
            .find(|(name, _)| *name == state.as_str())
            .map_or(0, |(_, n)| *n)
    }
}

/// The connection walk's result for one namespace.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConnectionSample {
    /// When the sample was taken.
    #[serde(serialize_with = "unix_seconds")]
    pub taken_at: SystemTime,
    /// Per listening address queue figures, sorted by address.
    pub queues: Vec<QueueSummary>,
    /// Per (role, port) figures.
    pub ports: Vec<PortSummary>,
    /// Sockets seen in the dump (listeners excluded).
    pub sockets: u64,
    /// Bytes the kernel sent for the walk: with `sockets`, what one socket
    /// costs to describe.
    pub walk_bytes: u64,
    /// Datagrams (receive calls) the walk took.
    pub walk_datagrams: u64,
    /// Whether queued connections were dated (by `tcp_info` in the walk,
    /// or by exact lookups after it).
    pub dated: bool,
    /// Waiting connections left undated because the walk kept as many as
    /// it may look up (`aggregate::MAX_WAITING`); their queues have no age
    /// for this walk.
    pub undated: u64,
    /// Client ports folded into `port="other"` by the cardinality cap.
    pub client_ports_folded: u64,
    /// Walks of this namespace skipped so far because its TCP counters had
    /// not moved since one that found no connection; when this sample is
    /// one of them, its figures are that walk's, still true when
    /// `taken_at` says.
    pub skipped_total: u64,
}

impl ConnectionSample {
    /// The queue figures of a listening address, if the walk saw it.
    pub fn queue(&self, key: &ListenKey) -> Option<&QueueSummary> {
        self.queues
            .binary_search_by(|q| q.endpoint.inet().cmp(&Some(key)))
            .ok()
            .map(|i| &self.queues[i])
    }
}

/// Namespace-wide counters from procfs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NetstatSample {
    /// When the sample was taken.
    #[serde(serialize_with = "unix_seconds")]
    pub taken_at: SystemTime,
    /// TcpExt `ListenOverflows`.
    pub listen_overflows: Option<u64>,
    /// TcpExt `ListenDrops`.
    pub listen_drops: Option<u64>,
    /// `net.core.somaxconn`.
    pub somaxconn: Option<u64>,
    /// `Udp: RcvbufErrors` plus `Udp6RcvbufErrors`.
    pub udp_rcvbuf_errors: Option<u64>,
    /// `Udp: InErrors` plus `Udp6InErrors`.
    pub udp_in_errors: Option<u64>,
    /// Whether the namespace shares the host's established-socket hash
    /// (its `net.ipv4.tcp_ehash_entries` is negative); `None` on kernels
    /// before 6.1, which have no such sysctl.
    pub ehash_shared: Option<bool>,
}

/// Which process owns each listening socket of a namespace.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct OwnerSample {
    /// Owner by socket cookie, sorted by cookie, for listeners whose owner
    /// is known.
    pub owners: Vec<(u64, Arc<Owner>)>,
    /// Listeners with a file whose owner is not known (no process found,
    /// or no permission to read the fds of the one that has it).
    pub unknown: u64,
}

impl OwnerSample {
    /// Builds a sample from owners in any order.
    pub fn new(mut owners: Vec<(u64, Arc<Owner>)>, unknown: u64) -> Self {
        owners.sort_unstable_by_key(|(cookie, _)| *cookie);
        owners.dedup_by_key(|(cookie, _)| *cookie);
        OwnerSample { owners, unknown }
    }

    /// The owner of the socket with this cookie.
    pub fn get(&self, cookie: u64) -> Option<&Owner> {
        self.owners
            .binary_search_by_key(&cookie, |(c, _)| *c)
            .ok()
            .map(|i| self.owners[i].1.as_ref())
    }
}

/// How one sample of one collector in one namespace went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It succeeded (or had nothing to do).
    Ok,
    /// It failed; the collector's last part stands.
    Failed(String),
    /// The namespace may not be entered: the exporter lacks the privilege.
    /// Not a fault of the collector.
    Refused(String),
}

/// How the last sample of one collector in one namespace went.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SampleStatus {
    /// Whether it succeeded.
    pub ok: bool,
    /// Whether it could not run because the namespace may not be entered.
    pub refused: bool,
    /// How long it took (entering the namespace included, when that was
    /// needed).
    pub duration: Duration,
    /// What went wrong.
    pub error: Option<String>,
    /// When it last succeeded.
    #[serde(serialize_with = "optional_unix_seconds")]
    pub last_success: Option<SystemTime>,
}

/// A collector's published result for one namespace: any immutable value
/// that can be shown as JSON. Renderers find a part by its collector's
/// name and type ([`NetnsView::part`]).
pub trait Part: Any + Send + Sync + fmt::Debug {
    /// The part as JSON, for `snapshot --format json`.
    fn to_json(&self) -> serde_json::Value;
    /// For downcasting to the concrete type.
    fn as_any(&self) -> &dyn Any;
}

impl<T: Any + Send + Sync + fmt::Debug + Serialize> Part for T {
    fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Everything known about one namespace: each collector's latest part and
/// how its last sample went.
#[derive(Debug, Clone, Default)]
pub struct NetnsView {
    /// Latest part of each collector that published one.
    pub parts: BTreeMap<&'static str, Arc<dyn Part>>,
    /// Last outcome of each collector here.
    pub status: BTreeMap<&'static str, SampleStatus>,
}

impl NetnsView {
    /// The part collector `name` published, if it is of type `T`.
    pub fn part<T: Part>(&self, name: &str) -> Option<&T> {
        self.parts.get(name)?.as_any().downcast_ref::<T>()
    }

    /// The sockets whose owners are looked for, as (cookie, inode): every
    /// listener (TCP and unix) and UDP receiver published here.
    pub fn owned_sockets(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.parts.values().flat_map(|p| {
            let any = p.as_any();
            let listeners = any
                .downcast_ref::<ListenerSample>()
                .map(|s| &s.listeners[..])
                .unwrap_or_default();
            let receivers = any
                .downcast_ref::<UdpSample>()
                .map(|s| &s.receivers[..])
                .unwrap_or_default();
            listeners
                .iter()
                .map(|l| (l.cookie, l.inode))
                .chain(receivers.iter().map(|r| (r.cookie, r.inode)))
        })
    }

    /// Whether any collector that publishes sockets has published here.
    pub fn has_socket_parts(&self) -> bool {
        self.parts.values().any(|p| {
            let any = p.as_any();
            any.is::<ListenerSample>() || any.is::<UdpSample>()
        })
    }
}

fn unix_seconds<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(seconds_since_epoch(*t))
}

fn optional_unix_seconds<S: serde::Serializer>(
    t: &Option<SystemTime>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_f64(seconds_since_epoch(*t)),
        None => s.serialize_none(),
    }
}

/// Unix time in seconds (0 for a clock before 1970).
pub fn seconds_since_epoch(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diag::RawAddr;

    #[test]
    fn parts_are_found_by_collector_and_type() {
        let sample = ListenerSample {
            taken_at: SystemTime::UNIX_EPOCH,
            listeners: Vec::new(),
            unexported: Vec::new(),
        };
        let mut view = NetnsView::default();
        view.parts.insert("unix", Arc::new(sample.clone()));
        view.parts
            .insert("processes", Arc::new(OwnerSample::default()));
        assert_eq!(view.part::<ListenerSample>("unix"), Some(&sample));
        assert_eq!(view.part::<OwnerSample>("unix"), None, "wrong type");
        assert_eq!(view.part::<ListenerSample>("listeners"), None);
        assert!(view.has_socket_parts());
        assert_eq!(view.owned_sockets().count(), 0);
    }

    #[test]
    fn owners_are_looked_up_by_cookie() {
        let owner = |pid| {
            Arc::new(Owner {
                pid,
                comm: "x".into(),
                exe: None,
                cmdline: String::new(),
                workload: Default::default(),
            })
        };
        let s = OwnerSample::new(vec![(9, owner(1)), (3, owner(2)), (9, owner(3))], 0);
        assert_eq!(s.get(3).map(|o| o.pid), Some(2));
        assert_eq!(s.get(9).map(|o| o.pid), Some(1));
        assert_eq!(s.get(4), None);
    }

    #[test]
    fn endpoints_serialise_like_labels() {
        let inet = Endpoint::Inet(ListenKey {
            addr: RawAddr::from_ip("::1".parse().unwrap()),
            port: 80,
        });
        assert_eq!(inet.to_string(), "[::1]:80");
        assert_eq!(
            serde_json::to_value(&inet).unwrap(),
            serde_json::json!({"family": "ipv6", "address": "::1", "port": 80})
        );
        let unix = Endpoint::Unix("@app".into());
        assert_eq!(
            serde_json::to_value(&unix).unwrap(),
            serde_json::json!({"family": "unix", "address": "@app"})
        );
    }
}
