//! Immutable results of sampling, shared by every renderer (Prometheus text,
//! the `snapshot` table, JSON). Each sampling tier publishes its own part;
//! nothing downstream reaches back into netlink.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;

use crate::aggregate::{ListenKey, PortEntry, QueueFigures, Role};
use crate::diag::{Family, TcpState};
use crate::owners::Owner;

/// One listening socket, as the fast listener tier last saw it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ListenerFigures {
    /// Address family.
    pub family: Family,
    /// Local address.
    pub address: IpAddr,
    /// Local port.
    pub port: u16,
    /// Stable slot in its `SO_REUSEPORT` group: the lowest free slot when
    /// the socket was first seen, kept while it lives; `None` when the socket
    /// is alone on its address and port.
    pub member: Option<u32>,
    /// Socket cookie.
    pub cookie: u64,
    /// Socket inode.
    pub inode: u32,
    /// Owner uid.
    pub uid: u32,
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
    /// The socket's drop counter (`sk_drops`, widened past its 32-bit wrap);
    /// `None` if the kernel did not send it.
    pub drops: Option<u64>,
}

impl ListenerFigures {
    /// The listening address this socket serves.
    pub fn key(&self) -> ListenKey {
        ListenKey {
            addr: crate::diag::RawAddr::from_ip(self.address),
            port: self.port,
        }
    }

    /// Whether the kernel would drop a new connection now.
    pub fn is_full(&self) -> bool {
        self.queue_length > self.queue_limit
    }
}

/// The listener tier's result for one namespace.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ListenerSample {
    /// When the sample was taken.
    #[serde(serialize_with = "unix_seconds")]
    pub taken_at: SystemTime,
    /// Listening sockets, sorted by address, port and member.
    pub listeners: Vec<ListenerFigures>,
}

/// What the connection tier found for one listening address.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueueSummary {
    /// Address family.
    pub family: Family,
    /// Local address.
    pub address: IpAddr,
    /// Local port.
    pub port: u16,
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
            family: key.family(),
            address: key.addr.ip(),
            port: key.port,
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

    /// The listening address.
    pub fn key(&self) -> ListenKey {
        ListenKey {
            addr: crate::diag::RawAddr::from_ip(self.address),
            port: self.port,
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

/// The connection tier's result for one namespace.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConnectionSample {
    /// When the sample was taken.
    #[serde(serialize_with = "unix_seconds")]
    pub taken_at: SystemTime,
    /// Per listening address queue figures.
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
    /// Whether the walk read `tcp_info` to date queued connections.
    pub dated: bool,
    /// Client ports folded into `port="other"` by the cardinality cap.
    pub client_ports_folded: u64,
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
}

/// How the last sample of one collector in one namespace went.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SampleStatus {
    /// Whether it succeeded.
    pub ok: bool,
    /// How long it took (entering the namespace included, when that was
    /// needed).
    pub duration: std::time::Duration,
    /// What went wrong.
    pub error: Option<String>,
}

/// Which process owns each listening socket of a namespace.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct OwnerSample {
    /// Owner by socket cookie, for listeners whose owner is known.
    pub owners: Vec<(u64, Arc<Owner>)>,
    /// Listeners with a file whose owner is not known (no process found,
    /// or no permission to read the fds of the one that has it).
    pub unknown: u64,
}

impl OwnerSample {
    /// The owner of the socket with this cookie.
    pub fn get(&self, cookie: u64) -> Option<&Owner> {
        self.owners
            .iter()
            .find(|(c, _)| *c == cookie)
            .map(|(_, o)| o.as_ref())
    }
}

/// Everything known about one namespace, each part from its own tier.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NetnsView {
    /// The `netns` label value.
    pub netns: String,
    /// Latest listener sample.
    pub listeners: Option<Arc<ListenerSample>>,
    /// Latest connection sample.
    pub connections: Option<Arc<ConnectionSample>>,
    /// Latest procfs sample.
    pub netstat: Option<Arc<NetstatSample>>,
    /// Latest process attribution.
    pub owners: Option<Arc<OwnerSample>>,
    /// Last outcome of each collector here.
    pub status: std::collections::BTreeMap<&'static str, SampleStatus>,
}

impl NetnsView {
    /// The connection tier's queue figures for a listening address, if its
    /// last sample saw that address.
    pub fn queue(&self, key: &ListenKey) -> Option<&QueueSummary> {
        self.connections
            .as_ref()?
            .queues
            .iter()
            .find(|q| q.key() == *key)
    }
}

fn unix_seconds<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    s.serialize_f64(secs)
}
