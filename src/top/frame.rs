//! One refresh of `top`: the queues, client ports and namespaces that a
//! metrics page describes, gathered from its samples by their labels.
//!
//! Built from the exposition, not from the daemon's internal types, so that
//! `top` shows the same figures whether it samples the kernel itself or
//! reads a remote daemon's `/metrics`: both go through [`Frame::from_samples`].

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

use super::exposition::Sample;
use crate::owners::without_controls;
use crate::table::owner_text;

/// What kind of queue a row is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// A TCP listener's accept queue (connections).
    Tcp,
    /// A unix stream or seqpacket listener's accept queue (connections).
    Unix,
    /// A UDP receiver's receive queue (bytes).
    Udp,
}

impl Kind {
    /// As the view's first column shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Tcp => "tcp",
            Kind::Unix => "unix",
            Kind::Udp => "udp",
        }
    }
}

/// What identifies a queue from one refresh to the next: its labels.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QueueKey {
    /// TCP, unix or UDP.
    pub kind: Kind,
    /// The `netns` label.
    pub netns: String,
    /// The `family` label: `ipv4`, `ipv6` or `unix`.
    pub family: String,
    /// The `address` label (a path for unix listeners).
    pub address: String,
    /// The `port` label; empty for unix listeners.
    pub port: String,
    /// The `member` label of a `SO_REUSEPORT` group member; empty otherwise.
    pub member: String,
}

impl QueueKey {
    /// `address:port` as `ss` prints it (`[v6]:port`), the path for unix,
    /// and `#member` for a reuseport group's members.
    pub fn endpoint(&self) -> String {
        let mut s = match (self.kind, self.family.as_str()) {
            (Kind::Unix, _) => self.address.clone(),
            (_, "ipv6") => format!("[{}]:{}", self.address, self.port),
            _ => format!("{}:{}", self.address, self.port),
        };
        if !self.member.is_empty() {
            s.push('#');
            s.push_str(&self.member);
        }
        s
    }

    /// The labels shared by a reuseport group's members, which the
    /// connection figures (SYN queue, bytes, age) are keyed by.
    fn group(&self) -> GroupKey {
        (
            self.netns.clone(),
            self.family.clone(),
            self.address.clone(),
            self.port.clone(),
        )
    }
}

type GroupKey = (String, String, String, String);

/// The process owning a socket, from its `*_process_info` series.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Owner {
    /// `pid` label.
    pub pid: String,
    /// `comm` label: the process name.
    pub comm: String,
    /// `exe` label.
    pub exe: String,
    /// `cmdline` label.
    pub cmdline: String,
    /// `unit` label: the systemd unit, or empty.
    pub unit: String,
    /// `container_id` label, or empty.
    pub container_id: String,
}

/// `comm/pid`, as `ss -p` and `snapshot` print an owner, with its unit or
/// (shortened) container when known.
impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&owner_text(
            &self.comm,
            &self.pid,
            known(&self.unit),
            known(&self.container_id),
        ))
    }
}

/// One queue's figures in one refresh; `None` where the page has no such
/// series (not collected, not applicable, or not known yet).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Queue {
    /// Accept queue length (connections), or for UDP the receive queue
    /// (bytes).
    pub length: Option<f64>,
    /// Accept queue limit, or for UDP the receive buffer (bytes).
    pub limit: Option<f64>,
    /// Peak length over the daemon's peak window.
    pub peak: Option<f64>,
    /// Counter: seconds the accept queue was seen full.
    pub full_seconds: Option<f64>,
    /// Counter: drops at this socket.
    pub drops: Option<f64>,
    /// Half-open requests (SYN-RECV) of the listener's address.
    pub syn_queue: Option<f64>,
    /// Bytes clients already sent on connections waiting to be accepted.
    pub waiting_bytes: Option<f64>,
    /// Seconds the oldest waiting connection has waited.
    pub oldest: Option<f64>,
    /// Processes owning the socket (several after a fork).
    pub owners: Vec<Owner>,
}

impl Queue {
    /// Length over limit, when both are known and the limit is not zero.
    pub fn fill(&self) -> Option<f64> {
        match (self.length, self.limit) {
            (Some(l), Some(m)) if m > 0.0 => Some(l / m),
            _ => None,
        }
    }
}

/// Whether a queue refuses what comes next. An accept queue is full when
/// its length is greater than its limit (the kernel's own test, so a full
/// queue shows limit + 1); a UDP receiver when its queue has reached its
/// buffer.
pub fn is_full(kind: Kind, q: &Queue) -> bool {
    match (kind, q.length, q.limit) {
        (Kind::Udp, Some(l), Some(m)) => m > 0.0 && l >= m,
        (_, Some(l), Some(m)) => l > m,
        _ => false,
    }
}

/// The client side of one remote port in one namespace: what clients of
/// it see, and, when the server is in the same namespace, what it sees.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClientPort {
    /// Connections still in SYN-SENT: their SYN not answered (on current
    /// kernels, what a full accept queue does to new clients).
    pub syn_sent: f64,
    /// Client connections in ESTABLISHED.
    pub established: f64,
    /// Send-Q summed over the clients: bytes written, not yet acknowledged.
    pub send_queue_bytes: f64,
    /// ESTABLISHED connections on the server side of the same port in the
    /// same namespace (waiting ones included), when there are any.
    pub server_established: Option<f64>,
}

/// One connection waiting to be accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waiting {
    /// The client's address and port.
    pub peer: SocketAddr,
    /// Bytes the client sent that nobody has read yet.
    pub bytes: u32,
    /// How long it has waited, in milliseconds (`tcpi_last_data_sent`:
    /// nothing is sent on a connection before it is accepted).
    pub waited_ms: Option<u32>,
}

/// The waiting connections of one listener, longest waiting first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WaitingList {
    /// Up to [`super::waiting::MAX_LISTED`] of them.
    pub listed: Vec<Waiting>,
    /// How many there were in all.
    pub total: usize,
}

/// What a page says about one namespace as a whole.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Namespace {
    /// Counter: TcpExt ListenOverflows.
    pub listen_overflows: Option<f64>,
    /// `sockdiag_netns_up`.
    pub up: Option<f64>,
    /// Unix time of the last connection walk: the age of SYN-Q, bytes,
    /// oldest and the client figures.
    pub connections_at: Option<f64>,
    /// Unix time of the last TCP listener sample, which drop rates are
    /// timed by.
    pub listeners_at: Option<f64>,
    /// Unix time of the last UDP sample.
    pub udp_at: Option<f64>,
}

/// Everything one refresh shows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Frame {
    /// Every queue, by key.
    pub queues: BTreeMap<QueueKey, Queue>,
    /// Client ports by (netns, remote port).
    pub clients: BTreeMap<(String, String), ClientPort>,
    /// Namespaces by `netns` label.
    pub namespaces: BTreeMap<String, Namespace>,
    /// Collectors whose last sample failed, by name.
    pub failing: Vec<String>,
    /// The connections waiting on the queue the detail view shows, when
    /// `top` samples here (see [`super::waiting`]).
    pub waiting: Option<(QueueKey, Result<WaitingList, String>)>,
}

fn label<'a>(s: &'a Sample, name: &str) -> &'a str {
    s.label(name).unwrap_or("")
}

/// An empty label: an unknown unit or container.
fn known(value: &str) -> Option<&str> {
    (!value.is_empty()).then_some(value)
}

fn queue_key(kind: Kind, s: &Sample) -> QueueKey {
    QueueKey {
        kind,
        netns: without_controls(label(s, "netns")),
        family: without_controls(label(s, "family")),
        address: without_controls(label(s, "address")),
        port: without_controls(label(s, "port")),
        member: without_controls(label(s, "member")),
    }
}

/// TCP or unix, from a listener series' `family`.
fn listener_kind(s: &Sample) -> Kind {
    if label(s, "family") == "unix" {
        Kind::Unix
    } else {
        Kind::Tcp
    }
}

fn owner(s: &Sample) -> Owner {
    Owner {
        pid: without_controls(label(s, "pid")),
        comm: without_controls(label(s, "comm")),
        exe: without_controls(label(s, "exe")),
        cmdline: without_controls(label(s, "cmdline")),
        unit: without_controls(label(s, "unit")),
        container_id: without_controls(label(s, "container_id")),
    }
}

/// Metric names [`Frame::from_samples`] reads; a page's other series can
/// be skipped while parsing (see [`super::exposition::parse_only`]).
pub const SHOWN: [&str; 20] = [
    "sockdiag_accept_queue_length",
    "sockdiag_accept_queue_limit",
    "sockdiag_accept_queue_peak_length",
    "sockdiag_accept_queue_full_seconds_total",
    "sockdiag_listen_drops_total",
    "sockdiag_listener_process_info",
    "sockdiag_udp_receive_queue_bytes",
    "sockdiag_udp_receive_buffer_bytes",
    "sockdiag_udp_receive_queue_peak_bytes",
    "sockdiag_udp_drops_total",
    "sockdiag_udp_receiver_process_info",
    "sockdiag_syn_queue_length",
    "sockdiag_accept_queue_bytes",
    "sockdiag_accept_queue_oldest_seconds",
    "sockdiag_tcp_connections",
    "sockdiag_tcp_send_queue_bytes",
    "sockdiag_netstat_listen_overflows_total",
    "sockdiag_netns_up",
    "sockdiag_netns_last_sample_timestamp_seconds",
    "sockdiag_collector_success",
];

impl Frame {
    /// Gathers a page's samples; series `top` does not show are ignored,
    /// and so are samples without a finite value. Every label value loses
    /// its control characters: an escape sequence in a process name or a
    /// hostile page would move the cursor, retitle the window or clear the
    /// screen.
    pub fn from_samples(samples: &[Sample]) -> Frame {
        let mut f = Frame::default();
        // Connection figures are per address, shared by a reuseport group's
        // members: gathered first, then given to one row of the group.
        let mut per_group: BTreeMap<GroupKey, Queue> = BTreeMap::new();
        let mut server_established: BTreeMap<(String, String), f64> = BTreeMap::new();
        for s in samples {
            let v = s.value;
            if !v.is_finite() {
                continue;
            }
            let netns = || without_controls(label(s, "netns"));
            match s.name.as_str() {
                "sockdiag_accept_queue_length" => {
                    f.queue(listener_kind(s), s).length = Some(v);
                }
                "sockdiag_accept_queue_limit" => f.queue(listener_kind(s), s).limit = Some(v),
                "sockdiag_accept_queue_peak_length" => {
                    f.queue(listener_kind(s), s).peak = Some(v);
                }
                "sockdiag_accept_queue_full_seconds_total" => {
                    f.queue(listener_kind(s), s).full_seconds = Some(v);
                }
                "sockdiag_listen_drops_total" => f.queue(Kind::Tcp, s).drops = Some(v),
                "sockdiag_listener_process_info" => {
                    f.queue(listener_kind(s), s).owners.push(owner(s));
                }
                "sockdiag_udp_receive_queue_bytes" => f.queue(Kind::Udp, s).length = Some(v),
                "sockdiag_udp_receive_buffer_bytes" => f.queue(Kind::Udp, s).limit = Some(v),
                "sockdiag_udp_receive_queue_peak_bytes" => f.queue(Kind::Udp, s).peak = Some(v),
                "sockdiag_udp_drops_total" => f.queue(Kind::Udp, s).drops = Some(v),
                "sockdiag_udp_receiver_process_info" => {
                    f.queue(Kind::Udp, s).owners.push(owner(s));
                }
                "sockdiag_syn_queue_length" => {
                    group(&mut per_group, s).syn_queue = Some(v);
                }
                "sockdiag_accept_queue_bytes" => {
                    group(&mut per_group, s).waiting_bytes = Some(v);
                }
                "sockdiag_accept_queue_oldest_seconds" => {
                    group(&mut per_group, s).oldest = Some(v);
                }
                "sockdiag_tcp_connections" => {
                    let key = (netns(), without_controls(label(s, "port")));
                    match (label(s, "role"), label(s, "state")) {
                        ("client", "syn_sent") => f.clients.entry(key).or_default().syn_sent = v,
                        ("client", "established") => {
                            f.clients.entry(key).or_default().established = v;
                        }
                        ("server", "established") => {
                            server_established.insert(key, v);
                        }
                        _ => {}
                    }
                }
                "sockdiag_tcp_send_queue_bytes" if label(s, "role") == "client" => {
                    let key = (netns(), without_controls(label(s, "port")));
                    f.clients.entry(key).or_default().send_queue_bytes = v;
                }
                "sockdiag_netstat_listen_overflows_total" => {
                    f.namespaces.entry(netns()).or_default().listen_overflows = Some(v);
                }
                "sockdiag_netns_up" => f.namespaces.entry(netns()).or_default().up = Some(v),
                "sockdiag_netns_last_sample_timestamp_seconds" => {
                    let ns = f.namespaces.entry(netns()).or_default();
                    match label(s, "collector") {
                        "connections" => ns.connections_at = Some(v),
                        "listeners" => ns.listeners_at = Some(v),
                        "udp" => ns.udp_at = Some(v),
                        _ => {}
                    }
                }
                "sockdiag_collector_success" if v == 0.0 => {
                    f.failing.push(without_controls(label(s, "collector")));
                }
                _ => {}
            }
        }
        for (key, client) in f.clients.iter_mut() {
            client.server_established = server_established.get(key).copied();
        }
        f.attach_groups(per_group);
        f
    }

    fn queue(&mut self, kind: Kind, s: &Sample) -> &mut Queue {
        self.queues.entry(queue_key(kind, s)).or_default()
    }

    /// Gives each address's connection figures to the first TCP row of its
    /// group (the member-less row, or the lowest member), so that a sum over
    /// rows counts them once.
    fn attach_groups(&mut self, per_group: BTreeMap<GroupKey, Queue>) {
        for (group, figures) in per_group {
            let first = self
                .queues
                .iter_mut()
                .filter(|(k, _)| k.kind == Kind::Tcp && k.group() == group)
                .min_by_key(|(k, _)| k.member.parse::<u64>().unwrap_or(0));
            if let Some((_, q)) = first {
                q.syn_queue = figures.syn_queue;
                q.waiting_bytes = figures.waiting_bytes;
                q.oldest = figures.oldest;
            }
        }
    }
}

fn group<'a>(per_group: &'a mut BTreeMap<GroupKey, Queue>, s: &Sample) -> &'a mut Queue {
    per_group
        .entry(queue_key(Kind::Tcp, s).group())
        .or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(name: &str, labels: &[(&str, &str)], value: f64) -> Sample {
        Sample {
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            value,
        }
    }

    const L80: [(&str, &str); 4] = [
        ("netns", "host"),
        ("family", "ipv4"),
        ("address", "127.0.0.1"),
        ("port", "80"),
    ];

    #[test]
    fn gathers_a_listener_its_owner_and_its_connection_figures() {
        let mut owner = L80.to_vec();
        owner.extend([("pid", "42"), ("comm", "nginx"), ("unit", "nginx.service")]);
        let f = Frame::from_samples(&[
            sample("sockdiag_accept_queue_length", &L80, 11.0),
            sample("sockdiag_accept_queue_limit", &L80, 10.0),
            sample("sockdiag_listen_drops_total", &L80, 25.0),
            sample("sockdiag_syn_queue_length", &L80, 2.0),
            sample("sockdiag_accept_queue_oldest_seconds", &L80, 6.5),
            sample("sockdiag_listener_process_info", &owner, 1.0),
        ]);
        assert_eq!(f.queues.len(), 1);
        let (k, q) = f.queues.iter().next().unwrap();
        assert_eq!((k.kind, k.endpoint()), (Kind::Tcp, "127.0.0.1:80".into()));
        assert_eq!(
            (q.length, q.limit, q.drops),
            (Some(11.0), Some(10.0), Some(25.0))
        );
        assert_eq!((q.syn_queue, q.oldest), (Some(2.0), Some(6.5)));
        assert!(is_full(k.kind, q));
        assert_eq!(q.owners[0].to_string(), "nginx/42 (nginx.service)");
    }

    #[test]
    fn connection_figures_go_to_one_member_of_a_reuseport_group() {
        let member = |m: &'static str| {
            let mut l = L80.to_vec();
            l.push(("member", m));
            l
        };
        let f = Frame::from_samples(&[
            sample("sockdiag_accept_queue_length", &member("1"), 0.0),
            sample("sockdiag_accept_queue_length", &member("0"), 3.0),
            sample("sockdiag_accept_queue_bytes", &L80, 300.0),
        ]);
        let bytes: Vec<_> = f
            .queues
            .iter()
            .map(|(k, q)| (k.member.as_str(), q.waiting_bytes))
            .collect();
        assert_eq!(bytes, [("0", Some(300.0)), ("1", None)]);
        assert_eq!(f.queues.keys().next().unwrap().endpoint(), "127.0.0.1:80#0");
    }

    #[test]
    fn unix_and_udp_rows_are_told_apart_and_printed_as_ss_does() {
        let unix = [
            ("netns", "host"),
            ("family", "unix"),
            ("address", "/run/php/fpm.sock"),
            ("port", ""),
        ];
        let udp = [
            ("netns", "host"),
            ("family", "ipv6"),
            ("address", "::"),
            ("port", "53"),
        ];
        let f = Frame::from_samples(&[
            sample("sockdiag_accept_queue_length", &unix, 5.0),
            sample("sockdiag_accept_queue_limit", &unix, 4.0),
            sample("sockdiag_udp_receive_queue_bytes", &udp, 212_992.0),
            sample("sockdiag_udp_receive_buffer_bytes", &udp, 212_992.0),
        ]);
        let rows: Vec<_> = f
            .queues
            .iter()
            .map(|(k, q)| (k.kind, k.endpoint(), is_full(k.kind, q)))
            .collect();
        assert_eq!(
            rows,
            [
                (Kind::Unix, "/run/php/fpm.sock".to_string(), true),
                (Kind::Udp, "[::]:53".to_string(), true),
            ]
        );
    }

    #[test]
    fn client_ports_carry_the_server_side_of_the_same_namespace() {
        let c = |state: &'static str| {
            [
                ("netns", "host"),
                ("role", "client"),
                ("port", "80"),
                ("state", state),
            ]
        };
        let f = Frame::from_samples(&[
            sample("sockdiag_tcp_connections", &c("established"), 15.0),
            sample("sockdiag_tcp_connections", &c("syn_sent"), 10.0),
            sample(
                "sockdiag_tcp_connections",
                &[
                    ("netns", "host"),
                    ("role", "server"),
                    ("port", "80"),
                    ("state", "established"),
                ],
                14.0,
            ),
            sample(
                "sockdiag_tcp_send_queue_bytes",
                &[("netns", "host"), ("role", "client"), ("port", "80")],
                10.0,
            ),
        ]);
        let client = &f.clients[&("host".to_string(), "80".to_string())];
        assert_eq!(
            (client.established, client.syn_sent, client.send_queue_bytes),
            (15.0, 10.0, 10.0)
        );
        assert_eq!(client.server_established, Some(14.0));
    }

    #[test]
    fn every_name_read_is_one_the_parser_keeps() {
        let source = include_str!("frame.rs");
        let body = &source[source.find("pub fn from_samples").unwrap_or(0)..];
        let body = &body[..body.find("fn queue(&mut self").unwrap_or(body.len())];
        for piece in body.split('"').skip(1).step_by(2) {
            if piece.starts_with("sockdiag_") {
                assert!(SHOWN.contains(&piece), "{piece} is read but not in SHOWN");
            }
        }
    }

    #[test]
    fn control_characters_never_reach_the_terminal() {
        let mut owner = L80.to_vec();
        owner.extend([("pid", "1"), ("comm", "a\u{1b}]0;PWN\u{7}b")]);
        let f = Frame::from_samples(&[
            sample(
                "sockdiag_accept_queue_length",
                &[("netns", "x\u{1b}[2J")],
                1.0,
            ),
            sample("sockdiag_listener_process_info", &owner, 1.0),
        ]);
        for (k, q) in &f.queues {
            assert!(!k.netns.chars().any(char::is_control), "{:?}", k.netns);
            for o in &q.owners {
                assert_eq!(o.comm, "a?]0;PWN?b");
            }
        }
    }

    #[test]
    fn a_queue_at_its_limit_is_not_full_but_one_past_it_is() {
        let q = |l: f64| Queue {
            length: Some(l),
            limit: Some(10.0),
            ..Queue::default()
        };
        assert!(!is_full(Kind::Tcp, &q(10.0)));
        assert!(is_full(Kind::Tcp, &q(11.0)));
        assert!(!is_full(Kind::Tcp, &Queue::default()));
        assert_eq!(q(5.0).fill(), Some(0.5));
    }
}
