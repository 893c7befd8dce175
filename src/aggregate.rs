//! Folding socket records into per-listener and per-port figures while a
//! dump streams. Nothing here allocates per socket: maps are keyed by port
//! or listening address, and are reused from one sample to the next.

use std::collections::HashMap;

use crate::diag::lookup::SocketIdentity;
use crate::diag::{Family, RawAddr, SockRecord, TcpState};

/// A listening address: what the `family`, `address` and `port` labels name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListenKey {
    /// Local address (its family is the socket's family).
    pub addr: RawAddr,
    /// Local port.
    pub port: u16,
}

impl ListenKey {
    /// The socket's address family.
    pub fn family(&self) -> Family {
        self.addr.family
    }
}

/// One listening socket as the listener dump reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerRecord {
    /// Where it listens.
    pub key: ListenKey,
    /// Accept-queue length now (`sk_ack_backlog`).
    pub length: u32,
    /// Effective backlog (`sk_max_ack_backlog`); full when length > limit.
    pub limit: u32,
    /// `sk_drops`, when the kernel sent `SKMEMINFO`.
    pub drops: Option<u32>,
    /// Socket cookie: tells apart members of a `SO_REUSEPORT` group.
    pub cookie: u64,
    /// Socket inode, for matching with `ss -e` and `/proc/*/fd`.
    pub inode: u32,
    /// Owner uid.
    pub uid: u32,
}

impl ListenerRecord {
    /// Extracts the listener figures from a `LISTEN` record.
    pub fn from_record(r: &SockRecord) -> Option<Self> {
        (r.state == TcpState::Listen).then_some(ListenerRecord {
            key: ListenKey {
                addr: r.local,
                port: r.local_port,
            },
            length: r.rqueue,
            limit: r.wqueue,
            drops: r.drops,
            cookie: r.cookie,
            inode: r.inode,
            uid: r.uid,
        })
    }
}

/// Whether a connection is counted by its local (server) or remote (client)
/// port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The local port is a listening port in the namespace.
    Server,
    /// Anything else: keyed by the remote port, never by an ephemeral one.
    Client,
}

impl Role {
    /// The `role` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Client => "client",
        }
    }
}

/// Figures for one (role, port).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PortFigures {
    /// Sockets per state, indexed like [`TcpState::CONNECTION_STATES`].
    pub states: [u64; TcpState::CONNECTION_STATES.len()],
    /// Sum of Send-Q: bytes written and not yet acknowledged.
    pub send_queue_bytes: u64,
    /// Sum of Recv-Q: bytes received and not yet read.
    pub recv_queue_bytes: u64,
}

impl PortFigures {
    fn add(&mut self, other: &PortFigures) {
        for (a, b) in self.states.iter_mut().zip(other.states.iter()) {
            *a += b;
        }
        self.send_queue_bytes += other.send_queue_bytes;
        self.recv_queue_bytes += other.recv_queue_bytes;
    }

    /// All sockets on this port, whatever their state.
    pub fn total(&self) -> u64 {
        self.states.iter().sum()
    }
}

/// What the connection dump says about one listening address's queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueFigures {
    /// Connections waiting in the accept queue (established, no owner yet).
    pub queued: u64,
    /// Bytes already received on those connections.
    pub queued_bytes: u64,
    /// Age of the oldest of them in ms, when the age dump ran.
    pub oldest_ms: Option<u32>,
    /// Half-open requests (SYN-RECV).
    pub syn_recv: u64,
    /// Waiting connections whose identity was not kept for a lookup (past
    /// [`MAX_WAITING`]): the queue's oldest is then unknown.
    pub undated: u64,
}

/// The most waiting connections one walk keeps to look up (about 80 bytes
/// each: 5 MiB). Accept queues are bounded by their backlogs, but a node
/// of many full queues with large backlogs could hold far more; past it,
/// the queues with connections left out get no age for that walk rather
/// than one that may be too young, and the next walk dates with `tcp_info`.
pub const MAX_WAITING: usize = 65_536;

/// A set of ports as 65,536 bits (8 KiB, so kept boxed): asking whether
/// a dumped socket's port is in it costs one load, on the per-socket path.
pub struct PortSet([u64; 1024]);

impl PortSet {
    /// The set of `ports`.
    pub fn of(ports: &[u16]) -> Box<PortSet> {
        let mut set = Box::new(PortSet([0; 1024]));
        for &p in ports {
            set.insert(p);
        }
        set
    }
    /// Adds `port`.
    #[inline]
    pub fn insert(&mut self, port: u16) {
        self.0[usize::from(port >> 6)] |= 1 << (port & 63);
    }
    /// Whether `port` is in the set.
    #[inline]
    pub fn contains(&self, port: u16) -> bool {
        self.0[usize::from(port >> 6)] & (1 << (port & 63)) != 0
    }
    /// Empties the set.
    pub fn clear(&mut self) {
        self.0 = [0; 1024];
    }
}

/// The listening address a server-side connection belongs to, among those
/// `listens` says something listens on: the exact local address if one
/// does, else the wildcard of the same family (the kernel's own lookup
/// prefers the exact match; a v4-mapped connection on a dual-stack `::`
/// listener is IPv6 already).
pub fn listening_address(
    r: &SockRecord,
    listens: impl Fn(&ListenKey) -> bool,
) -> Option<ListenKey> {
    let exact = ListenKey {
        addr: r.local,
        port: r.local_port,
    };
    if listens(&exact) {
        return Some(exact);
    }
    let wildcard = ListenKey {
        addr: RawAddr::unspecified(r.local.family),
        port: r.local_port,
    };
    listens(&wildcard).then_some(wildcard)
}

/// Whether a connection with no owning file waits in an accept queue:
/// connections leave the queue only through `accept()`, which gives them an
/// inode; an orphan (closed by its process) cannot be established or in
/// close-wait.
pub fn in_accept_queue(r: &SockRecord) -> bool {
    r.inode == 0 && matches!(r.state, TcpState::Established | TcpState::CloseWait)
}

/// Aggregates one connection sample of one namespace.
///
/// Call [`ConnectionAggregator::reset`] with the namespace's current
/// listeners, feed every connection record to [`ConnectionAggregator::add`],
/// optionally feed the accept-queue age dump to
/// [`ConnectionAggregator::add_age`], then read the figures.
pub struct ConnectionAggregator {
    listening_ports: Box<PortSet>,
    queues: HashMap<ListenKey, QueueFigures>,
    ports: HashMap<(Role, u16), PortFigures>,
    /// Whether [`ConnectionAggregator::add`] keeps the identities of the
    /// connections waiting in accept queues, to be dated by exact lookups.
    collect_waiting: bool,
    /// Those identities, and the listening address each waits on (reused
    /// between samples: no allocation once warm).
    waiting: Waiting,
}

/// Connections waiting in accept queues, as the walk found them: who they
/// are, to ask the kernel about each, and which queue each waits on.
#[derive(Debug, Default)]
pub struct Waiting {
    /// The listening address of each.
    pub keys: Vec<ListenKey>,
    /// The socket of each, for the kernel's lookup.
    pub ids: Vec<SocketIdentity>,
}

impl Default for ConnectionAggregator {
    fn default() -> Self {
        ConnectionAggregator {
            listening_ports: PortSet::of(&[]),
            queues: HashMap::new(),
            ports: HashMap::new(),
            collect_waiting: false,
            waiting: Waiting::default(),
        }
    }
}

impl ConnectionAggregator {
    /// Starts a new sample with these listeners; keeps allocated capacity.
    pub fn reset<'a>(&mut self, listeners: impl IntoIterator<Item = &'a ListenerRecord>) {
        self.listening_ports.clear();
        self.queues.clear();
        self.ports.clear();
        self.collect_waiting = false;
        self.waiting.keys.clear();
        self.waiting.ids.clear();
        for l in listeners {
            self.listening_ports.insert(l.key.port);
            self.queues.entry(l.key).or_default();
        }
    }

    /// Keeps, from now until the next reset, the identity of every
    /// connection found waiting in an accept queue, for
    /// [`ConnectionAggregator::take_waiting`].
    pub fn collect_waiting(&mut self) {
        self.collect_waiting = true;
    }

    /// The waiting connections kept since the reset; hand them back with
    /// [`ConnectionAggregator::restore_waiting`] to keep their capacity.
    pub fn take_waiting(&mut self) -> Waiting {
        std::mem::take(&mut self.waiting)
    }

    /// Returns buffers taken with [`ConnectionAggregator::take_waiting`].
    pub fn restore_waiting(&mut self, mut waiting: Waiting) {
        waiting.keys.clear();
        waiting.ids.clear();
        self.waiting = waiting;
    }

    /// Folds in the age of a connection still waiting on `key`'s queue,
    /// found by an exact lookup after the walk.
    pub fn add_age(&mut self, key: &ListenKey, age_ms: u32) {
        if let Some(q) = self.queues.get_mut(key) {
            q.oldest_ms = Some(q.oldest_ms.map_or(age_ms, |old| old.max(age_ms)));
        }
    }

    /// The listening address a server-side connection belongs to (see
    /// [`listening_address`]).
    fn owner(&self, r: &SockRecord) -> Option<ListenKey> {
        listening_address(r, |k| self.queues.contains_key(k))
    }

    /// Counts one connection record. Listener records are ignored: their
    /// queue fields count connections, not bytes.
    pub fn add(&mut self, r: &SockRecord) {
        let Some(state_index) = r.state.connection_index() else {
            return;
        };
        let (role, port) = if self.listening_ports.contains(r.local_port) {
            (Role::Server, r.local_port)
        } else {
            (Role::Client, r.remote_port)
        };
        let figures = self.ports.entry((role, port)).or_default();
        figures.states[state_index] += 1;
        figures.send_queue_bytes += u64::from(r.wqueue);
        figures.recv_queue_bytes += u64::from(r.rqueue);

        if role == Role::Server {
            let syn = r.state == TcpState::SynRecv;
            let queued = in_accept_queue(r);
            if syn || queued {
                let Some(key) = self.owner(r) else {
                    return;
                };
                if let Some(q) = self.queues.get_mut(&key) {
                    if syn {
                        q.syn_recv += 1;
                    } else {
                        q.queued += 1;
                        q.queued_bytes += u64::from(r.rqueue);
                        if let Some(age) = r.last_data_sent_ms {
                            q.oldest_ms = Some(q.oldest_ms.map_or(age, |old| old.max(age)));
                        }
                        if self.collect_waiting {
                            if self.waiting.ids.len() < MAX_WAITING {
                                self.waiting.keys.push(key);
                                self.waiting.ids.push(SocketIdentity::of(r));
                            } else {
                                q.undated += 1;
                            }
                        }
                    }
                }
            }
        }
    }

    /// Ends a sample. With `dating` on, queued connections whose age the
    /// dump did not carry (it asks for `tcp_info` only when the listener
    /// dump just before it saw a non-empty queue) arrived during the sample
    /// itself, so their age is within the sample's duration: counted as 0.
    /// With it off, their age stays unknown.
    pub fn finish(&mut self, dating: bool) {
        if !dating {
            return;
        }
        for q in self.queues.values_mut() {
            if q.undated > 0 {
                // Its oldest may be among those not looked up.
                q.oldest_ms = None;
            } else if q.queued > 0 && q.oldest_ms.is_none() {
                q.oldest_ms = Some(0);
            }
        }
    }

    /// Waiting connections left undated this walk (past [`MAX_WAITING`]).
    pub fn undated(&self) -> u64 {
        self.queues.values().map(|q| q.undated).sum()
    }

    /// Per listening address figures, sorted by address.
    pub fn queues(&self) -> Vec<(ListenKey, QueueFigures)> {
        let mut out: Vec<_> = self.queues.iter().map(|(k, q)| (*k, *q)).collect();
        out.sort_unstable_by_key(|(k, _)| *k);
        out
    }

    /// Per-port figures, sorted by role then port, with client ports beyond
    /// `max_client_ports` (the busiest kept) folded into one `None` entry.
    /// Returns the figures and how many client ports were folded.
    ///
    /// Only (role, port) pairs that `keep` accepts are reported or folded:
    /// under a port filter the walk saw stray subsets of other ports.
    pub fn ports(
        &self,
        max_client_ports: usize,
        keep: impl Fn(Role, u16) -> bool,
    ) -> (Vec<PortEntry>, usize) {
        let mut server: Vec<PortEntry> = Vec::new();
        let mut client: Vec<PortEntry> = Vec::new();
        for (&(role, port), figures) in self
            .ports
            .iter()
            .filter(|((role, port), _)| keep(*role, *port))
        {
            let entry = PortEntry {
                role,
                port: Some(port),
                figures: *figures,
            };
            match role {
                Role::Server => server.push(entry),
                Role::Client => client.push(entry),
            }
        }
        let mut folded = 0;
        if client.len() > max_client_ports {
            // Keep the ports with the most sockets; ties by port so the
            // choice is stable between samples.
            client.sort_unstable_by(|a, b| {
                b.figures
                    .total()
                    .cmp(&a.figures.total())
                    .then(a.port.cmp(&b.port))
            });
            let mut other = PortFigures::default();
            for e in client.drain(max_client_ports..) {
                other.add(&e.figures);
                folded += 1;
            }
            client.push(PortEntry {
                role: Role::Client,
                port: None,
                figures: other,
            });
        }
        server.append(&mut client);
        server.sort_unstable_by_key(|e| (e.role, e.port.is_none(), e.port));
        (server, folded)
    }
}

/// Figures of one (role, port); `port` is `None` for the folded `other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortEntry {
    /// Server or client side.
    pub role: Role,
    /// The port, or `None` for client ports folded by the cardinality cap.
    pub port: Option<u16>,
    /// The figures.
    pub figures: PortFigures,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> RawAddr {
        RawAddr::from_ip(s.parse().unwrap())
    }

    fn listener(a: &str, port: u16) -> ListenerRecord {
        ListenerRecord {
            key: ListenKey {
                addr: addr(a),
                port,
            },
            length: 0,
            limit: 10,
            drops: None,
            cookie: 1,
            inode: 1,
            uid: 0,
        }
    }

    fn conn(
        state: TcpState,
        local: &str,
        lport: u16,
        remote: &str,
        rport: u16,
        inode: u32,
        rq: u32,
    ) -> SockRecord {
        SockRecord {
            state,
            local: addr(local),
            local_port: lport,
            remote: addr(remote),
            remote_port: rport,
            rqueue: rq,
            wqueue: 0,
            inode,
            uid: 0,
            cookie: 7,
            drops: None,
            rcvbuf: None,
            last_data_sent_ms: Some(1500),
            interface: 0,
        }
    }

    #[test]
    fn queued_connections_go_to_the_exact_listener_else_the_wildcard() {
        let mut a = ConnectionAggregator::default();
        let ls = [
            listener("127.0.0.1", 80),
            listener("0.0.0.0", 80),
            listener("::", 80),
        ];
        a.reset(ls.iter());
        a.add(&conn(
            TcpState::Established,
            "127.0.0.1",
            80,
            "127.0.0.1",
            50000,
            0,
            4,
        ));
        a.add(&conn(
            TcpState::Established,
            "127.0.0.2",
            80,
            "127.0.0.1",
            50001,
            0,
            5,
        ));
        a.add(&conn(
            TcpState::CloseWait,
            "::ffff:127.0.0.3",
            80,
            "::ffff:127.0.0.1",
            50002,
            0,
            6,
        ));
        a.add(&conn(
            TcpState::Established,
            "127.0.0.1",
            80,
            "127.0.0.1",
            50003,
            42,
            9,
        ));
        a.add(&conn(
            TcpState::SynRecv,
            "127.0.0.1",
            80,
            "127.0.0.1",
            50004,
            0,
            0,
        ));
        let q: std::collections::HashMap<_, _> = a.queues().into_iter().collect();
        let k = |s: &str| ListenKey {
            addr: addr(s),
            port: 80,
        };
        assert_eq!(
            (q[&k("127.0.0.1")].queued, q[&k("127.0.0.1")].queued_bytes),
            (1, 4)
        );
        assert_eq!(q[&k("127.0.0.1")].syn_recv, 1);
        assert_eq!(
            (q[&k("0.0.0.0")].queued, q[&k("0.0.0.0")].queued_bytes),
            (1, 5)
        );
        assert_eq!(
            (q[&k("::")].queued, q[&k("::")].queued_bytes),
            (1, 6),
            "v4-mapped on dual stack"
        );
        let (ports, _) = a.ports(10, |_, _| true);
        assert_eq!(ports.len(), 1);
        assert_eq!((ports[0].role, ports[0].port), (Role::Server, Some(80)));
        assert_eq!(ports[0].figures.recv_queue_bytes, 4 + 5 + 6 + 9);

        a.finish(true);
        let q: std::collections::HashMap<_, _> = a.queues().into_iter().collect();
        assert_eq!(
            q[&k("127.0.0.1")].oldest_ms,
            Some(1500),
            "only queued sockets count"
        );
        assert_eq!(q[&k("::")].oldest_ms, Some(1500));
        let mut young = conn(TcpState::Established, "::", 80, "::1", 50005, 0, 0);
        young.last_data_sent_ms = None;
        let mut b = ConnectionAggregator::default();
        b.reset(ls.iter());
        b.add(&young);
        b.finish(true);
        let q: std::collections::HashMap<_, _> = b.queues().into_iter().collect();
        assert_eq!(
            q[&k("::")].oldest_ms,
            Some(0),
            "queued without tcp_info: arrived during the sample"
        );
    }

    #[test]
    fn client_ports_beyond_the_cap_fold_into_other() {
        let mut a = ConnectionAggregator::default();
        a.reset([].iter());
        for (port, n) in [(443u16, 5), (80, 3), (25, 1), (22, 1)] {
            for i in 0..n {
                a.add(&conn(
                    TcpState::Established,
                    "10.0.0.1",
                    40000 + i,
                    "10.0.0.2",
                    port,
                    1,
                    0,
                ));
            }
        }
        let (ports, folded) = a.ports(2, |_, _| true);
        let got: Vec<_> = ports.iter().map(|p| (p.port, p.figures.total())).collect();
        assert_eq!(got, vec![(Some(80), 3), (Some(443), 5), (None, 2)]);
        assert_eq!(folded, 2);
    }

    #[test]
    fn waiting_connections_past_the_cap_leave_their_queue_undated() {
        let mut agg = ConnectionAggregator::default();
        let (a, b) = (listener("127.0.0.1", 80), listener("127.0.0.1", 81));
        agg.reset([&a, &b]);
        agg.collect_waiting();
        let mut young = conn(TcpState::Established, "127.0.0.1", 80, "127.0.0.1", 1, 0, 0);
        young.last_data_sent_ms = None;
        for i in 0..MAX_WAITING {
            young.remote_port = (i % 60_000) as u16;
            agg.add(&young);
        }
        // Past the cap: port 81's only connection is not kept.
        let late = conn(TcpState::Established, "127.0.0.1", 81, "127.0.0.1", 2, 0, 0);
        agg.add(&late);
        let waiting = agg.take_waiting();
        assert_eq!(waiting.ids.len(), MAX_WAITING);
        agg.restore_waiting(waiting);
        agg.add_age(&a.key, 40);
        agg.finish(true);
        let q: HashMap<_, _> = agg.queues().into_iter().collect();
        assert_eq!(q[&a.key].oldest_ms, Some(40));
        assert_eq!(q[&b.key].undated, 1);
        assert_eq!(q[&b.key].oldest_ms, None, "unknown, not 0");
        assert_eq!(agg.undated(), 1);
    }
}
