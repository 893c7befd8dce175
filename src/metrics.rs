//! Prometheus exposition of the store's latest snapshot.
//!
//! A custom [`Collector`] builds every family from one [`Snapshot`] on each
//! scrape, so a listener or port that vanished leaves no stale series
//! behind, and a scrape costs rendering only: it never asks the kernel
//! anything. Each enabled collector renders its own parts; the families
//! about the exporter itself are rendered here. [`all_families`] is the one
//! list of names, types, labels and help texts; the README's metrics table
//! is checked against it by a test.

use std::sync::Arc;

use prometheus::core::{Collector as PromCollector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Encoder, Registry, TextEncoder};

use crate::collect::{Collector, REGISTRY};
use crate::family::{Families, Kind, MetricDef, NETNS_LABELS};
use crate::model::seconds_since_epoch;
use crate::sampler::namespace_view;
use crate::store::{Eviction, Snapshot, Store};

const COLLECTOR: &[&str] = &["collector"];
const NO_LABELS: &[&str] = &[];

/// `sockdiag_netns_info`
pub const NETNS_INFO: MetricDef = MetricDef {
    name: "sockdiag_netns_info",
    kind: Kind::Gauge,
    labels: &[
        "netns",
        "source",
        "inode",
        "pid",
        "ip_netns",
        "pod_namespace",
        "pod_name",
        "pod_uid",
        "container_id",
    ],
    member: false,
    help: "Always 1, for every network namespace found and not excluded (also those that cannot be entered; see sockdiag_netns_up): joins the netns label to the namespace's inode (as in ls -l /proc/PID/ns/net), its lowest pid, and the ip netns name, Kubernetes pod or container it belongs to. source says which of these named it (host, pod, ip_netns, container, inode).",
};
/// `sockdiag_netns_processes_unreadable`
pub const NETNS_UNREADABLE: MetricDef = MetricDef {
    name: "sockdiag_netns_processes_unreadable",
    kind: Kind::Gauge,
    labels: NO_LABELS,
    member: false,
    help: "Processes whose network namespace the last discovery pass could not see (reading /proc/PID/ns/net of another user's process needs CAP_SYS_PTRACE); namespaces only such processes live in are not collected. Only exported with the netns collector.",
};
/// `sockdiag_netns_up`
pub const NETNS_UP: MetricDef = MetricDef {
    name: "sockdiag_netns_up",
    kind: Kind::Gauge,
    labels: NETNS_LABELS,
    member: false,
    help: "1 if the last sample of every enabled collector in this namespace succeeded; 0 if the namespace could not be entered (the exporter lacks CAP_SYS_ADMIN) or a sample failed. A namespace that cannot be entered has no other series; one whose sample failed keeps its last good figures.",
};
/// `sockdiag_netns_sample_duration_seconds`
pub const NETNS_SAMPLE_DURATION: MetricDef = MetricDef {
    name: "sockdiag_netns_sample_duration_seconds",
    kind: Kind::Gauge,
    labels: &["netns", "collector"],
    member: false,
    help: "How long the last sample of this collector in this namespace took; the sum over namespaces is sockdiag_collector_duration_seconds. Every namespace's dump walks the host-wide socket tables, so this grows with all sockets on the node.",
};
/// `sockdiag_netns_last_sample_timestamp_seconds`
pub const NETNS_LAST_SAMPLE: MetricDef = MetricDef {
    name: "sockdiag_netns_last_sample_timestamp_seconds",
    kind: Kind::Gauge,
    labels: &["netns", "collector"],
    member: false,
    help: "Unix time of the last successful sample of this collector in this namespace: its figures are as old as this. Compare with time() to see how fresh each namespace's figures are.",
};
/// `sockdiag_build_info`
pub const BUILD_INFO: MetricDef = MetricDef {
    name: "sockdiag_build_info",
    kind: Kind::Gauge,
    labels: &["version"],
    member: false,
    help: "Always 1; the labels say which build of sockdiag-exporter is running.",
};
/// `sockdiag_collector_duration_seconds`
pub const COLLECTOR_DURATION: MetricDef = MetricDef {
    name: "sockdiag_collector_duration_seconds",
    kind: Kind::Gauge,
    labels: COLLECTOR,
    member: false,
    help: "How long the last pass of this collector took: the namespaces it sampled in one pass of its tier (for connections, those its CPU budget allowed). Compare with the tier's interval: a pass longer than it delays the next.",
};
/// `sockdiag_collector_errors_total`
pub const COLLECTOR_ERRORS: MetricDef = MetricDef {
    name: "sockdiag_collector_errors_total",
    kind: Kind::Counter,
    labels: COLLECTOR,
    member: false,
    help: "Failed samples of this collector. While it fails the exporter keeps serving the last good figures; see the log for the error.",
};
/// `sockdiag_collector_success`
pub const COLLECTOR_SUCCESS: MetricDef = MetricDef {
    name: "sockdiag_collector_success",
    kind: Kind::Gauge,
    labels: COLLECTOR,
    member: false,
    help: "1 if the last sample of this collector succeeded, 0 if it failed.",
};
/// `sockdiag_collector_last_success_timestamp_seconds`
pub const COLLECTOR_LAST_SUCCESS: MetricDef = MetricDef {
    name: "sockdiag_collector_last_success_timestamp_seconds",
    kind: Kind::Gauge,
    labels: COLLECTOR,
    member: false,
    help: "Unix time of the last successful sample of this collector; figures are as old as this.",
};
/// `sockdiag_collector_passes_total`
pub const COLLECTOR_PASSES: MetricDef = MetricDef {
    name: "sockdiag_collector_passes_total",
    kind: Kind::Counter,
    labels: COLLECTOR,
    member: false,
    help: "Passes of this collector that sampled at least one namespace (and its first). rate() of it for listeners is the fast tier's achieved rate: 5/s at the default 200ms interval.",
};
/// `sockdiag_collector_cpu_seconds_total`
pub const COLLECTOR_CPU: MetricDef = MetricDef {
    name: "sockdiag_collector_cpu_seconds_total",
    kind: Kind::Counter,
    labels: COLLECTOR,
    member: false,
    help: "CPU time the exporter's sampling threads spent in this collector's samples (kernel time of its dumps included). rate() of it is the fraction of one core it uses; for connections it stays within --collector.connections.cpu-budget.",
};
/// `sockdiag_http_requests_rejected_total`
pub const HTTP_REJECTED: MetricDef = MetricDef {
    name: "sockdiag_http_requests_rejected_total",
    kind: Kind::Counter,
    labels: NO_LABELS,
    member: false,
    help: "HTTP requests answered 503 because --web.max-requests were already in flight.",
};
/// `sockdiag_http_connections_open`
pub const HTTP_CONNECTIONS_OPEN: MetricDef = MetricDef {
    name: "sockdiag_http_connections_open",
    kind: Kind::Gauge,
    labels: NO_LABELS,
    member: false,
    help: "HTTP connections open now, over every listen address; at most --web.max-connections.",
};
/// `sockdiag_http_connections_evicted_total`
pub const HTTP_CONNECTIONS_EVICTED: MetricDef = MetricDef {
    name: "sockdiag_http_connections_evicted_total",
    kind: Kind::Counter,
    labels: &["reason"],
    member: false,
    help: "HTTP connections closed to let a new one in when --web.max-connections were open: reason=\"slow\" for one that had not sent its first request head (or finished its TLS handshake) yet; reason=\"stalled\" for one whose answer waited longer than --web.request-timeout on a client that does not read it; reason=\"idle\" for one waiting on keep-alive after a request. The client address holding the most such connections gives way first; among its connections slow before stalled before idle, the oldest first. A steady rate means clients hold connections they do not use (or a slow-client attack): scrapes still get through.",
};
/// `sockdiag_http_connections_refused_total`
pub const HTTP_CONNECTIONS_REFUSED: MetricDef = MetricDef {
    name: "sockdiag_http_connections_refused_total",
    kind: Kind::Counter,
    labels: NO_LABELS,
    member: false,
    help: "New HTTP connections closed at once because --web.max-connections were open and every one was serving a request. Scrapes may fail while it grows: raise --web.max-connections, or find who sends that many requests.",
};
/// `sockdiag_web_config_last_reload_successful`
pub const WEB_RELOAD_OK: MetricDef = MetricDef {
    name: "sockdiag_web_config_last_reload_successful",
    kind: Kind::Gauge,
    labels: NO_LABELS,
    member: false,
    help: "With --web.config.file: 1 if the last load of the web config and the certificates it names succeeded, 0 if it failed and the last good configuration is still in service (the log says why).",
};
/// `sockdiag_web_config_last_reload_success_timestamp_seconds`
pub const WEB_RELOAD_SUCCESS: MetricDef = MetricDef {
    name: "sockdiag_web_config_last_reload_success_timestamp_seconds",
    kind: Kind::Gauge,
    labels: NO_LABELS,
    member: false,
    help: "With --web.config.file: Unix time of the last successful load of the web config: the configuration in service dates from then.",
};
/// `sockdiag_http_requests_unauthorized_total`
pub const HTTP_UNAUTHORIZED: MetricDef = MetricDef {
    name: "sockdiag_http_requests_unauthorized_total",
    kind: Kind::Counter,
    labels: NO_LABELS,
    member: false,
    help: "With basic_auth_users in --web.config.file: requests answered 401 for missing or wrong credentials.",
};
/// `sockdiag_http_tls_handshake_failures_total`
pub const HTTP_TLS_FAILURES: MetricDef = MetricDef {
    name: "sockdiag_http_tls_handshake_failures_total",
    kind: Kind::Counter,
    labels: NO_LABELS,
    member: false,
    help: "With TLS in --web.config.file: connections that did not complete a TLS handshake (refused client certificate, no common version or suite, plain HTTP, too slow).",
};

/// The families about the exporter itself and its namespaces.
pub const EXPORTER_FAMILIES: &[&MetricDef] = &[
    &NETNS_INFO,
    &NETNS_UNREADABLE,
    &NETNS_UP,
    &NETNS_SAMPLE_DURATION,
    &NETNS_LAST_SAMPLE,
    &BUILD_INFO,
    &COLLECTOR_DURATION,
    &COLLECTOR_ERRORS,
    &COLLECTOR_SUCCESS,
    &COLLECTOR_PASSES,
    &COLLECTOR_CPU,
    &COLLECTOR_LAST_SUCCESS,
    &HTTP_REJECTED,
    &HTTP_CONNECTIONS_OPEN,
    &HTTP_CONNECTIONS_EVICTED,
    &HTTP_CONNECTIONS_REFUSED,
    &WEB_RELOAD_OK,
    &WEB_RELOAD_SUCCESS,
    &HTTP_UNAUTHORIZED,
    &HTTP_TLS_FAILURES,
];

/// Every family this exporter can expose, each once, in README order:
/// the collectors' in registry order, then the exporter's own; with the
/// collectors that emit each.
pub fn all_families() -> Vec<(&'static MetricDef, Vec<&'static str>)> {
    let mut out: Vec<(&'static MetricDef, Vec<&'static str>)> = Vec::new();
    for r in REGISTRY {
        for f in r.families {
            match out.iter_mut().find(|(d, _)| d.name == f.name) {
                Some((_, by)) => by.push(r.name),
                None => out.push((f, vec![r.name])),
            }
        }
    }
    out.extend(EXPORTER_FAMILIES.iter().map(|f| (*f, Vec::new())));
    out
}

/// Renders one snapshot: every enabled collector's parts of every
/// namespace, then the exporter's own families.
pub fn render(snapshot: &Snapshot, collectors: &[Arc<dyn Collector>]) -> Vec<MetricFamily> {
    let mut f = Families::new(all_families().into_iter().map(|(d, _)| d));
    for (info, view) in snapshot.namespaces() {
        let ns = namespace_view(info, view);
        for c in collectors {
            c.render(&ns, &mut f);
        }
        let netns = info.name.as_str();
        if !view.status.is_empty() {
            for (collector, st) in &view.status {
                let labels = [("netns", netns), ("collector", collector)];
                f.push(&NETNS_SAMPLE_DURATION, &labels, st.duration.as_secs_f64());
                if let Some(t) = st.last_success {
                    f.push(&NETNS_LAST_SAMPLE, &labels, seconds_since_epoch(t));
                }
            }
            let up = view.status.values().all(|st| st.ok);
            f.push(&NETNS_UP, &[("netns", netns)], if up { 1.0 } else { 0.0 });
        }
    }
    let targets = &snapshot.targets.targets;
    if targets.discovery {
        f.push(&NETNS_UNREADABLE, &[], targets.denied as f64);
    }
    for info in &targets.list {
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
    for (name, h) in &snapshot.health {
        let labels = [("collector", *name)];
        if let Some(d) = h.last_duration {
            f.push(&COLLECTOR_DURATION, &labels, d.as_secs_f64());
        }
        f.push(&COLLECTOR_ERRORS, &labels, h.errors_total as f64);
        f.push(&COLLECTOR_PASSES, &labels, h.samples_total as f64);
        f.push(&COLLECTOR_CPU, &labels, h.cpu_total.as_secs_f64());
        if h.samples_total > 0 {
            f.push(
                &COLLECTOR_SUCCESS,
                &labels,
                if h.last_ok { 1.0 } else { 0.0 },
            );
        }
        if let Some(t) = h.last_success {
            f.push(&COLLECTOR_LAST_SUCCESS, &labels, seconds_since_epoch(t));
        }
    }
    f.push(&HTTP_REJECTED, &[], snapshot.rejected_requests as f64);
    let c = &snapshot.connections;
    f.push(&HTTP_CONNECTIONS_OPEN, &[], c.open as f64);
    for (reason, n) in [
        (Eviction::Slow, c.evicted_slow),
        (Eviction::Idle, c.evicted_idle),
        (Eviction::Stalled, c.evicted_stalled),
    ] {
        f.push(
            &HTTP_CONNECTIONS_EVICTED,
            &[("reason", reason.as_str())],
            n as f64,
        );
    }
    f.push(&HTTP_CONNECTIONS_REFUSED, &[], c.refused as f64);
    if let Some(w) = &snapshot.web {
        let ok = if w.last_reload_ok { 1.0 } else { 0.0 };
        f.push(&WEB_RELOAD_OK, &[], ok);
        f.push(&WEB_RELOAD_SUCCESS, &[], w.last_success_unix);
        f.push(&HTTP_UNAUTHORIZED, &[], w.unauthorized as f64);
        f.push(&HTTP_TLS_FAILURES, &[], w.handshake_failures as f64);
    }
    f.into_inner()
}

/// Renders the store as Prometheus families.
struct SnapshotCollector {
    store: Arc<Store>,
    collectors: Arc<[Arc<dyn Collector>]>,
    descs: Vec<Desc>,
}

impl PromCollector for SnapshotCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        render(&self.store.snapshot(), &self.collectors)
    }
}

/// A registry holding the snapshot collector, rendered per scrape.
pub struct Exposition {
    registry: Registry,
}

impl Exposition {
    /// Registers a collector over `store` rendering `collectors`' parts.
    pub fn new(
        store: Arc<Store>,
        collectors: Arc<[Arc<dyn Collector>]>,
    ) -> prometheus::Result<Self> {
        let descs = all_families()
            .into_iter()
            .map(|(d, _)| {
                Desc::new(
                    d.name.to_string(),
                    d.help.to_string(),
                    d.labels.iter().map(|l| l.to_string()).collect(),
                    Default::default(),
                )
            })
            .collect::<prometheus::Result<Vec<_>>>()?;
        let registry = Registry::new();
        registry.register(Box::new(SnapshotCollector {
            store,
            collectors,
            descs,
        }))?;
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
