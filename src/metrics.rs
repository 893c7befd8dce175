//! Prometheus exposition of the latest snapshot.
//!
//! A custom [`Collector`] builds every family from the store on each scrape,
//! so a listener or port that vanished leaves no stale series behind, and a
//! scrape costs rendering only: it never asks the kernel anything.
//! [`METRICS`] is the one list of names, types, labels and help texts; the
//! README's metrics table is checked against it by a test.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricFamily, MetricType};
use prometheus::{Encoder, Registry, TextEncoder};

use crate::aggregate::ListenKey;
use crate::diag::TcpState;
use crate::sampler::Store;
use crate::snapshot::NetnsView;

/// Gauge or counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// May go up and down.
    Gauge,
    /// Only goes up (resets when its socket is replaced).
    Counter,
}

impl Kind {
    /// The name used in the README and `# TYPE` lines.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
        }
    }
}

/// One exported metric.
#[derive(Debug, Clone, Copy)]
pub struct MetricDef {
    /// Full metric name.
    pub name: &'static str,
    /// Type.
    pub kind: Kind,
    /// Label names, in exposition order.
    pub labels: &'static [&'static str],
    /// Whether a `member` label is added for sockets that share their
    /// address and port (`SO_REUSEPORT`): true for figures the kernel keeps
    /// per socket, false for those it can only give per address.
    pub member: bool,
    /// HELP text.
    pub help: &'static str,
}

const LISTENER: &[&str] = &["netns", "family", "address", "port"];
/// Per listening socket: gets `member` in a reuseport group.
const SOCKET: (&[&str], bool) = (LISTENER, true);
/// Per listening address.
const ADDRESS: (&[&str], bool) = (LISTENER, false);
const PORT: &[&str] = &["netns", "role", "port"];
const NETNS: &[&str] = &["netns"];
const COLLECTOR: &[&str] = &["collector"];
const NO_LABELS: &[&str] = &[];

macro_rules! defs {
    ($($id:ident = $name:literal, $kind:ident, $labels:expr, $help:literal;)*) => {
        $(const $id: MetricDef = MetricDef { name: $name, kind: Kind::$kind, labels: $labels.0, member: $labels.1, help: $help };)*
        /// Every metric this exporter can expose, in README order.
        pub const METRICS: &[MetricDef] = &[$($id),*];
    };
}

defs! {
    ACCEPT_QUEUE_LENGTH = "sockdiag_accept_queue_length", Gauge, SOCKET,
        "Connections that completed the handshake and wait for accept() now. Above sockdiag_accept_queue_limit the kernel drops new connections: the application is not accepting fast enough.";
    ACCEPT_QUEUE_LIMIT = "sockdiag_accept_queue_limit", Gauge, SOCKET,
        "Effective accept-queue limit: min(listen() backlog, net.core.somaxconn). The queue is full when length > limit; raise the backlog or accept faster.";
    ACCEPT_QUEUE_PEAK = "sockdiag_accept_queue_peak_length", Gauge, SOCKET,
        "Highest accept-queue length seen by fast listener sampling over the peak window (--collector.listeners.peak-window, kept in six steps, so a peak leaves between one window and 7/6 of a window later); shows bursts shorter than the scrape interval. Scrapes do not reset it.";
    ACCEPT_QUEUE_FULL_SECONDS = "sockdiag_accept_queue_full_seconds_total", Counter, SOCKET,
        "Seconds during which listener sampling saw the accept queue full (length > limit); while it grows, new connections to this listener are being dropped.";
    ACCEPT_QUEUE_BYTES = "sockdiag_accept_queue_bytes", Gauge, ADDRESS,
        "Bytes already received on connections still waiting in the accept queue: requests clients have sent that nobody has read yet. For a SO_REUSEPORT group, the whole group.";
    ACCEPT_QUEUE_OLDEST = "sockdiag_accept_queue_oldest_seconds", Gauge, ADDRESS,
        "How long the oldest connection still in the accept queue has waited (0 when empty). Seconds here mean clients waiting that long before the application sees them. For a SO_REUSEPORT group, the whole group. Not exported with --collector.connections.queue-age off.";
    SYN_QUEUE_LENGTH = "sockdiag_syn_queue_length", Gauge, ADDRESS,
        "Half-open connections (SYN-RECV requests) for this listener: handshakes waiting for the client's final ACK. A large or growing value suggests a SYN flood or lossy clients. For a SO_REUSEPORT group, the whole group.";
    LISTEN_DROPS = "sockdiag_listen_drops_total", Counter, SOCKET,
        "Packets this listening socket dropped (its sk_drops): accept-queue overflows and other listen drops. Any increase means clients failed to connect or had to retransmit.";
    TCP_CONNECTIONS = "sockdiag_tcp_connections", Gauge, (&["netns", "role", "port", "state"], false),
        "TCP sockets by state, keyed by the local port for role=server (a listening port) and by the remote port for role=client. States with no socket are not exported.";
    TCP_SEND_QUEUE = "sockdiag_tcp_send_queue_bytes", Gauge, (PORT, false),
        "Sum of Send-Q: bytes written and not yet acknowledged by the peer. Growing on role=client: the remote side is not accepting or reading; on role=server: clients are not reading.";
    TCP_RECV_QUEUE = "sockdiag_tcp_recv_queue_bytes", Gauge, (PORT, false),
        "Sum of Recv-Q: bytes received and not yet read by the local application (includes connections still in accept queues).";
    CLIENT_PORTS_FOLDED = "sockdiag_tcp_client_ports_folded", Gauge, (NETNS, false),
        "Remote ports summed into port=\"other\" because there were more than --collector.connections.max-client-ports of them.";
    NETSTAT_OVERFLOWS = "sockdiag_netstat_listen_overflows_total", Counter, (NETNS, false),
        "TcpExt ListenOverflows of the namespace: connections dropped because an accept queue was full, on any listener.";
    NETSTAT_DROPS = "sockdiag_netstat_listen_drops_total", Counter, (NETNS, false),
        "TcpExt ListenDrops of the namespace: every drop at any listener, overflows included.";
    SOMAXCONN = "sockdiag_somaxconn", Gauge, (NETNS, false),
        "net.core.somaxconn of the namespace: the ceiling on every listen() backlog.";
    NETNS_INFO = "sockdiag_netns_info", Gauge, (&["netns", "source", "inode", "pid", "ip_netns", "pod_namespace", "pod_name", "pod_uid", "container_id"], false),
        "Always 1, for every network namespace found and not excluded (also those that cannot be entered; see sockdiag_netns_up): joins the netns label to the namespace's inode (as in ls -l /proc/PID/ns/net), its lowest pid, and the ip netns name, Kubernetes pod or container it belongs to. source says which of these named it (host, pod, ip_netns, container, inode).";
    NETNS_UNREADABLE = "sockdiag_netns_processes_unreadable", Gauge, (NO_LABELS, false),
        "Processes whose network namespace the last discovery pass could not see (reading /proc/PID/ns/net of another user's process needs CAP_SYS_PTRACE); namespaces only such processes live in are not collected. Only exported with the netns collector.";
    NETNS_UP = "sockdiag_netns_up", Gauge, (NETNS, false),
        "1 if the last sample of every enabled collector in this namespace succeeded; 0 if the namespace could not be entered (the exporter lacks CAP_SYS_ADMIN) or a sample failed. A namespace that cannot be entered has no other series; one whose sample failed keeps its last good figures.";
    NETNS_SAMPLE_DURATION = "sockdiag_netns_sample_duration_seconds", Gauge, (&["netns", "collector"], false),
        "How long the last sample of this collector in this namespace took; the sum over namespaces is sockdiag_collector_duration_seconds. Every namespace's dump walks the host-wide socket tables, so this grows with all sockets on the node.";
    LISTENER_PROCESS_INFO = "sockdiag_listener_process_info", Gauge, (&["netns", "family", "address", "port", "pid", "comm", "unit", "container_id"], true),
        "Always 1: the process owning this listening socket (the lowest pid holding it), its command name, systemd unit and container. Join on job, instance, netns, family, address, port and member to name the owner of a full queue.";
    LISTENER_OWNER_UNKNOWN = "sockdiag_listener_owner_unknown", Gauge, (NETNS, false),
        "Listening sockets of the namespace whose owning process is not known: the exporter may not read other users' /proc/PID/fd (needs CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH), or the owner is outside the namespace.";
    BUILD_INFO = "sockdiag_build_info", Gauge, (&["version"], false),
        "Always 1; the labels say which build of sockdiag-exporter is running.";
    COLLECTOR_DURATION = "sockdiag_collector_duration_seconds", Gauge, (COLLECTOR, false),
        "How long the last sample of this collector took. Compare with its interval: a sample longer than its interval delays the next.";
    COLLECTOR_ERRORS = "sockdiag_collector_errors_total", Counter, (COLLECTOR, false),
        "Failed samples of this collector. While it fails the exporter keeps serving the last good figures; see the log for the error.";
    COLLECTOR_SUCCESS = "sockdiag_collector_success", Gauge, (COLLECTOR, false),
        "1 if the last sample of this collector succeeded, 0 if it failed.";
    COLLECTOR_LAST_SUCCESS = "sockdiag_collector_last_success_timestamp_seconds", Gauge, (COLLECTOR, false),
        "Unix time of the last successful sample of this collector; figures are as old as this.";
    HTTP_REJECTED = "sockdiag_http_requests_rejected_total", Counter, (NO_LABELS, false),
        "HTTP requests answered 503 because --web.max-requests were already in flight.";
}

/// Renders the store as Prometheus families.
pub struct SnapshotCollector {
    store: Arc<Store>,
    descs: Vec<Desc>,
}

impl SnapshotCollector {
    /// A collector over `store`.
    pub fn new(store: Arc<Store>) -> prometheus::Result<Self> {
        let descs = METRICS
            .iter()
            .map(|d| {
                Desc::new(
                    d.name.to_string(),
                    d.help.to_string(),
                    d.labels.iter().map(|l| l.to_string()).collect(),
                    HashMap::new(),
                )
            })
            .collect::<prometheus::Result<Vec<_>>>()?;
        Ok(SnapshotCollector { store, descs })
    }
}

/// Accumulates the samples of every family during one render.
struct Families(Vec<MetricFamily>);

impl Families {
    fn new() -> Self {
        Families(
            METRICS
                .iter()
                .map(|d| {
                    let mut mf = MetricFamily::default();
                    mf.set_name(d.name.to_string());
                    mf.set_help(d.help.to_string());
                    mf.set_field_type(match d.kind {
                        Kind::Gauge => MetricType::GAUGE,
                        Kind::Counter => MetricType::COUNTER,
                    });
                    mf
                })
                .collect(),
        )
    }

    fn push(&mut self, def: &MetricDef, labels: &[(&str, &str)], value: f64) {
        let Some(index) = METRICS.iter().position(|d| d.name == def.name) else {
            return;
        };
        let mut m = proto::Metric::default();
        m.set_label(
            labels
                .iter()
                .map(|(k, v)| {
                    let mut lp = proto::LabelPair::default();
                    lp.set_name(k.to_string());
                    lp.set_value(v.to_string());
                    lp
                })
                .collect(),
        );
        match def.kind {
            Kind::Gauge => {
                let mut g = proto::Gauge::default();
                g.set_value(value);
                m.set_gauge(g);
            }
            Kind::Counter => {
                let mut c = proto::Counter::default();
                c.set_value(value);
                m.set_counter(c);
            }
        }
        self.0[index].mut_metric().push(m);
    }
}

fn render_netns(f: &mut Families, view: &NetnsView) {
    let netns = view.netns.as_str();
    if let Some(ls) = &view.listeners {
        for l in &ls.listeners {
            let (family, address, port) =
                (l.family.as_str(), l.address.to_string(), l.port.to_string());
            let member = l.member.map(|m| m.to_string());
            let mut labels = vec![
                ("netns", netns),
                ("family", family),
                ("address", &address),
                ("port", &port),
            ];
            if let Some(m) = &member {
                labels.push(("member", m));
            }
            f.push(&ACCEPT_QUEUE_LENGTH, &labels, f64::from(l.queue_length));
            f.push(&ACCEPT_QUEUE_LIMIT, &labels, f64::from(l.queue_limit));
            if let Some(peak) = l.peak_length {
                f.push(&ACCEPT_QUEUE_PEAK, &labels, f64::from(peak));
            }
            if let Some(full) = l.full_seconds {
                f.push(&ACCEPT_QUEUE_FULL_SECONDS, &labels, full);
            }
            if let Some(d) = l.drops {
                f.push(&LISTEN_DROPS, &labels, d as f64);
            }
            if let Some(owner) = view.owners.as_ref().and_then(|o| o.get(l.cookie)) {
                let pid = owner.pid.to_string();
                let w = &owner.workload;
                let mut info = labels[..4].to_vec();
                info.extend([
                    ("pid", pid.as_str()),
                    ("comm", owner.comm.as_str()),
                    ("unit", w.unit.as_deref().unwrap_or("")),
                    ("container_id", w.container_id.as_deref().unwrap_or("")),
                ]);
                info.extend(labels.get(4).copied());
                f.push(&LISTENER_PROCESS_INFO, &info, 1.0);
            }
        }
    }
    if let Some(o) = &view.owners {
        f.push(
            &LISTENER_OWNER_UNKNOWN,
            &[("netns", netns)],
            o.unknown as f64,
        );
    }
    if !view.status.is_empty() {
        for (collector, st) in &view.status {
            f.push(
                &NETNS_SAMPLE_DURATION,
                &[("netns", netns), ("collector", collector)],
                st.duration.as_secs_f64(),
            );
        }
        let up = view.status.values().all(|st| st.ok);
        f.push(&NETNS_UP, &[("netns", netns)], if up { 1.0 } else { 0.0 });
    }
    // Figures the kernel keeps per address rather than per socket come from
    // the connection tier, once per address. While the listener tier runs,
    // only addresses it still sees are rendered, so a listener closed since
    // the last connection sample leaves no series behind.
    let live: Option<HashSet<ListenKey>> = view
        .listeners
        .as_ref()
        .map(|ls| ls.listeners.iter().map(|l| l.key()).collect());
    if let Some(c) = &view.connections {
        for q in &c.queues {
            if live.as_ref().is_some_and(|live| !live.contains(&q.key())) {
                continue;
            }
            let (address, port) = (q.address.to_string(), q.port.to_string());
            let labels = [
                ("netns", netns),
                ("family", q.family.as_str()),
                ("address", address.as_str()),
                ("port", port.as_str()),
            ];
            f.push(&ACCEPT_QUEUE_BYTES, &labels, q.queued_bytes as f64);
            if let Some(oldest) = q.oldest_seconds {
                f.push(&ACCEPT_QUEUE_OLDEST, &labels, oldest);
            }
            f.push(&SYN_QUEUE_LENGTH, &labels, q.syn_queue_length as f64);
        }
    }
    if let Some(c) = &view.connections {
        for p in &c.ports {
            let port = p.port_label();
            let labels = [
                ("netns", netns),
                ("role", p.role.as_str()),
                ("port", port.as_str()),
            ];
            for state in TcpState::CONNECTION_STATES {
                let n = p.count(state);
                if n > 0 {
                    let mut with_state = labels.to_vec();
                    with_state.push(("state", state.as_str()));
                    f.push(&TCP_CONNECTIONS, &with_state, n as f64);
                }
            }
            f.push(&TCP_SEND_QUEUE, &labels, p.send_queue_bytes as f64);
            f.push(&TCP_RECV_QUEUE, &labels, p.recv_queue_bytes as f64);
        }
        f.push(
            &CLIENT_PORTS_FOLDED,
            &[("netns", netns)],
            c.client_ports_folded as f64,
        );
    }
    if let Some(n) = &view.netstat {
        let labels = [("netns", netns)];
        if let Some(v) = n.listen_overflows {
            f.push(&NETSTAT_OVERFLOWS, &labels, v as f64);
        }
        if let Some(v) = n.listen_drops {
            f.push(&NETSTAT_DROPS, &labels, v as f64);
        }
        if let Some(v) = n.somaxconn {
            f.push(&SOMAXCONN, &labels, v as f64);
        }
    }
}

impl Collector for SnapshotCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut f = Families::new();
        for view in self.store.views() {
            render_netns(&mut f, &view);
        }
        let set = self.store.targets();
        if set.targets.discovery {
            f.push(&NETNS_UNREADABLE, &[], set.targets.denied as f64);
        }
        for info in &set.targets.list {
            let (inode, pid) = (
                info.inode().to_string(),
                info.pid.map(|p| p.to_string()).unwrap_or_default(),
            );
            let o = |v: &Option<String>| v.clone().unwrap_or_default();
            let (ip, pns, pname, puid, cid) = (
                o(&info.ip_netns),
                o(&info.pod_namespace),
                o(&info.pod_name),
                o(&info.pod_uid),
                o(&info.container_id),
            );
            f.push(
                &NETNS_INFO,
                &[
                    ("netns", info.name.as_str()),
                    ("source", info.source.as_str()),
                    ("inode", &inode),
                    ("pid", &pid),
                    ("ip_netns", &ip),
                    ("pod_namespace", &pns),
                    ("pod_name", &pname),
                    ("pod_uid", &puid),
                    ("container_id", &cid),
                ],
                1.0,
            );
        }
        f.push(&BUILD_INFO, &[("version", env!("CARGO_PKG_VERSION"))], 1.0);
        for (name, h) in self.store.health() {
            let labels = [("collector", name)];
            if let Some(d) = h.last_duration {
                f.push(&COLLECTOR_DURATION, &labels, d.as_secs_f64());
            }
            f.push(&COLLECTOR_ERRORS, &labels, h.errors_total as f64);
            if h.samples_total > 0 {
                f.push(
                    &COLLECTOR_SUCCESS,
                    &labels,
                    if h.last_ok { 1.0 } else { 0.0 },
                );
            }
            if let Some(t) = h
                .last_success
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            {
                f.push(&COLLECTOR_LAST_SUCCESS, &labels, t.as_secs_f64());
            }
        }
        f.push(
            &HTTP_REJECTED,
            &[],
            self.store.rejected_requests.load(Ordering::Relaxed) as f64,
        );
        f.0
    }
}

/// A registry holding the snapshot collector, rendered per scrape.
pub struct Exposition {
    registry: Registry,
}

impl Exposition {
    /// Registers the collector over `store`.
    pub fn new(store: Arc<Store>) -> prometheus::Result<Self> {
        let registry = Registry::new();
        registry.register(Box::new(SnapshotCollector::new(store)?))?;
        Ok(Exposition { registry })
    }

    /// The text exposition format of the latest figures.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        let families = self.registry.gather();
        let mut out = Vec::with_capacity(64 * 1024);
        TextEncoder::new().encode(&families, &mut out)?;
        String::from_utf8(out).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }
}
