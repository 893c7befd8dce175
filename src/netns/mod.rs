//! Every network namespace on the node: finding them, naming them, and
//! entering them to open the handles the samplers keep ([`handles`]).
//!
//! Namespace-wide counters (`ListenOverflows`) and sock_diag dumps are both
//! per namespace, so an exporter that looks only at its own sees nothing of
//! the pods on its node.

pub mod discover;
pub mod enter;
pub mod handles;
pub mod naming;

use std::path::{Path, PathBuf};
use std::time::Duration;

use regex::Regex;

pub use enter::{EnterError, NsId, ns_id, run_in};
pub use handles::{Backoff, HandleError, Handles, Need, ProcName};
pub use naming::{NameSource, NetnsInfo};

/// The `netns` label of the daemon's own namespace.
pub const HOST_NETNS: &str = "host";

/// Which namespaces are collected, by their `netns` label.
#[derive(Debug, Clone, Default)]
pub struct NetnsFilter {
    /// Only names matching this (whole name) are kept.
    pub include: Option<Regex>,
    /// Names matching this (whole name) are dropped.
    pub exclude: Option<Regex>,
}

impl NetnsFilter {
    /// Anchors a user's pattern so it must match the whole name, as
    /// Prometheus label matchers do.
    pub fn pattern(text: &str) -> Result<Regex, regex::Error> {
        Regex::new(&format!("^(?:{text})$"))
    }

    /// Whether namespace `name` is collected.
    pub fn keeps(&self, name: &str) -> bool {
        self.include.as_ref().is_none_or(|r| r.is_match(name))
            && !self.exclude.as_ref().is_some_and(|r| r.is_match(name))
    }
}

impl PartialEq for NetnsFilter {
    fn eq(&self, other: &Self) -> bool {
        let s = |r: &Option<Regex>| r.as_ref().map(|r| r.as_str().to_string());
        s(&self.include) == s(&other.include) && s(&self.exclude) == s(&other.exclude)
    }
}

/// How namespaces are found.
#[derive(Debug, Clone, PartialEq)]
pub struct DiscoveryConfig {
    /// Look beyond the daemon's own namespace at all.
    pub enabled: bool,
    /// How often to look for namespaces that appeared or vanished.
    pub rescan_interval: Duration,
    /// Which to collect.
    pub filter: NetnsFilter,
    /// procfs mount (the host's, to see every process).
    pub procfs: PathBuf,
    /// Where `ip netns` keeps its names.
    pub run_netns: PathBuf,
    /// The kubelet's pod log directory, to name pods without its API.
    pub pod_logs: PathBuf,
}

/// One discovery pass: the namespaces to collect now.
#[derive(Debug, Clone, Default)]
pub struct Targets {
    /// Collected namespaces, ordered by identity; the daemon's own first
    /// is not guaranteed, but it is always present unless filtered out.
    pub list: Vec<NetnsInfo>,
    /// Namespaces found but filtered out by name.
    pub excluded: usize,
    /// Processes whose namespace could not be read for lack of privilege.
    pub denied: u64,
    /// Whether discovery looked beyond the daemon's own namespace.
    pub discovery: bool,
    /// What discovery could not read although it should have (see
    /// [`discover::Scan::problems`]).
    pub problems: Vec<String>,
}

/// The daemon's own namespace, which is always collected (unless excluded)
/// and entered by nobody: its handles are opened in place.
pub fn own(procfs: &Path) -> NetnsInfo {
    NetnsInfo {
        // Without procfs the identity is unknown; nothing else is collected
        // then, so nothing can be confused with it.
        id: ns_id(&procfs.join("self/ns/net")).unwrap_or((0, 0)),
        name: HOST_NETNS.to_string(),
        source: NameSource::Host,
        pid: Some(std::process::id()),
        processes: 0,
        ip_netns: None,
        pod_uid: None,
        pod_namespace: None,
        pod_name: None,
        container_id: None,
        entries: Vec::new(),
    }
}

/// Finds and names every namespace, keeping those the filter accepts. The
/// daemon's own is in the list even when procfs cannot be listed.
pub fn discover(config: &DiscoveryConfig) -> (Targets, Option<discover::DiscoverError>) {
    let host = own(&config.procfs);
    let keep_host = |t: &mut Targets| {
        if config.filter.keeps(&host.name) {
            t.list.push(host.clone());
        } else {
            t.excluded += 1;
        }
    };
    let mut targets = Targets {
        discovery: config.enabled,
        ..Targets::default()
    };
    if !config.enabled {
        keep_host(&mut targets);
        return (targets, None);
    }
    let scan = match discover::scan(&config.procfs, &config.run_netns) {
        Ok(scan) => scan,
        Err(e) => {
            keep_host(&mut targets);
            return (targets, Some(e));
        }
    };
    let pods = naming::pod_names(&config.pod_logs);
    let mut infos = naming::name_all(
        &scan.found,
        Some(host.id),
        &config.procfs,
        &config.run_netns,
        &pods,
        |pid| crate::cgroup::read(&config.procfs, pid).ok(),
    );
    if !infos.iter().any(|i| i.source == NameSource::Host) {
        // Our own link was unreadable but we still live here.
        infos.push(host);
    }
    targets.denied = scan.denied;
    targets.problems = scan.problems;
    for info in infos {
        if config.filter.keeps(&info.name) {
            targets.list.push(info);
        } else {
            targets.excluded += 1;
        }
    }
    (targets, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_matches_whole_names() {
        let f = NetnsFilter {
            include: Some(NetnsFilter::pattern("pod:.*|host").unwrap()),
            exclude: Some(NetnsFilter::pattern("pod:kube-system/.*").unwrap()),
        };
        assert!(f.keeps("host"));
        assert!(f.keeps("pod:shop/web-0"));
        assert!(!f.keeps("pod:kube-system/coredns-1"));
        assert!(!f.keeps("hostile"));
        assert!(!f.keeps("blue"));
        assert!(NetnsFilter::default().keeps("anything"));
    }

    #[test]
    fn disabled_discovery_is_the_own_namespace_only() {
        let config = DiscoveryConfig {
            enabled: false,
            rescan_interval: Duration::from_secs(10),
            filter: NetnsFilter::default(),
            procfs: "/proc".into(),
            run_netns: "/run/netns".into(),
            pod_logs: "/var/log/pods".into(),
        };
        let (t, err) = discover(&config);
        assert!(err.is_none());
        assert_eq!(t.list.len(), 1);
        assert_eq!(t.list[0].name, HOST_NETNS);
        assert_eq!(t.list[0].id, ns_id(Path::new("/proc/self/ns/net")).unwrap());
    }
}
