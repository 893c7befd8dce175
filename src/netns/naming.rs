//! Readable, stable `netns` label values.
//!
//! In order of preference: `host` for the daemon's own namespace; the
//! Kubernetes pod that lives in it (`pod:<namespace>/<name>` when the
//! kubelet's log directory tells the name, else `pod:<uid>`); its
//! `ip netns` name; the container whose process is in it
//! (`container:<12 hex>`); else `ino:<inode>`. A pod outranks an `ip netns`
//! name because container runtimes register pod namespaces under
//! `/run/netns` with generated names (`cni-1c2d...`) that say nothing.
//! Everything comes from files on the node; no API is called.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::discover::Found;
use super::enter::NsId;
use crate::cgroup::Workload;

/// Where a namespace's name came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NameSource {
    /// The daemon's own namespace.
    Host,
    /// A Kubernetes pod.
    Pod,
    /// An `ip netns` name.
    Named,
    /// A container.
    Container,
    /// Nothing better: the inode.
    Inode,
}

impl NameSource {
    /// The `source` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            NameSource::Host => "host",
            NameSource::Pod => "pod",
            NameSource::Named => "ip_netns",
            NameSource::Container => "container",
            NameSource::Inode => "inode",
        }
    }
}

/// Everything known about one namespace: its label and what it joins to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetnsInfo {
    /// Identity (device, inode).
    #[serde(skip)]
    pub id: NsId,
    /// The `netns` label value.
    pub name: String,
    /// Where the name came from.
    pub source: NameSource,
    /// The lowest pid in the namespace, if any process is in it.
    pub pid: Option<u32>,
    /// Processes in it.
    pub processes: usize,
    /// `ip netns` name, if any.
    pub ip_netns: Option<String>,
    /// Kubernetes pod UID.
    pub pod_uid: Option<String>,
    /// Kubernetes namespace of the pod.
    pub pod_namespace: Option<String>,
    /// Kubernetes pod name.
    pub pod_name: Option<String>,
    /// Container ID (full).
    pub container_id: Option<String>,
    /// nsfs files to enter it by, best first: the `ip netns` file (which
    /// cannot be reused by another namespace while it exists), then the
    /// first few processes'.
    #[serde(skip)]
    pub entries: Vec<PathBuf>,
}

impl NetnsInfo {
    /// The namespace's inode, as shown by `ls -l /proc/<pid>/ns/net`.
    pub fn inode(&self) -> u64 {
        self.id.1
    }
}

/// How many processes' cgroups are read to learn who lives in a namespace;
/// the first that names a pod or container decides.
const CGROUP_PROBES: usize = 3;
/// How many process paths are kept to enter a namespace by.
const ENTRY_PIDS: usize = 3;

/// Pod UID to (namespace, name), from the kubelet's log directory, whose
/// entries are `<namespace>_<name>_<uid>`. Neither part may contain `_`
/// (they are DNS labels), so the split is exact. Missing directory: empty.
pub fn pod_names(dir: &Path) -> HashMap<String, (String, String)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return HashMap::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let mut parts = name.splitn(3, '_');
            let (ns, pod, uid) = (parts.next()?, parts.next()?, parts.next()?);
            if ns.is_empty() || pod.is_empty() || uid.is_empty() || uid.contains('_') {
                return None;
            }
            Some((uid.to_string(), (ns.to_string(), pod.to_string())))
        })
        .collect()
}

/// Names every namespace of a scan. `own` is the daemon's namespace;
/// `workload` reads a process's cgroup (None when unreadable).
pub fn name_all(
    found: &[Found],
    own: Option<NsId>,
    procfs: &Path,
    run_netns: &Path,
    pods: &HashMap<String, (String, String)>,
    mut workload: impl FnMut(u32) -> Option<Workload>,
) -> Vec<NetnsInfo> {
    let mut infos: Vec<NetnsInfo> = found
        .iter()
        .map(|f| {
            let w = f
                .pids
                .iter()
                .take(CGROUP_PROBES)
                .filter_map(|&pid| workload(pid))
                .find(|w| w.pod_uid.is_some() || w.container_id.is_some())
                .unwrap_or_default();
            let pod = w.pod_uid.as_ref().and_then(|uid| pods.get(uid));
            let ip_netns = f.names.first().cloned();
            let (source, name) = if Some(f.id) == own {
                (NameSource::Host, super::HOST_NETNS.to_string())
            } else if let Some(uid) = &w.pod_uid {
                let name = match pod {
                    Some((ns, pod)) => format!("pod:{ns}/{pod}"),
                    None => format!("pod:{uid}"),
                };
                (NameSource::Pod, name)
            } else if let Some(n) = &ip_netns {
                (NameSource::Named, n.clone())
            } else if let Some(c) = &w.container_id {
                (
                    NameSource::Container,
                    format!("container:{}", c.chars().take(12).collect::<String>()),
                )
            } else {
                (NameSource::Inode, format!("ino:{}", f.id.1))
            };
            let mut entries: Vec<PathBuf> = f.names.iter().map(|n| run_netns.join(n)).collect();
            entries.extend(
                f.pids
                    .iter()
                    .take(ENTRY_PIDS)
                    .map(|pid| procfs.join(pid.to_string()).join("ns/net")),
            );
            NetnsInfo {
                id: f.id,
                name,
                source,
                pid: f.pids.first().copied(),
                processes: f.pids.len(),
                ip_netns,
                pod_namespace: pod.map(|p| p.0.clone()),
                pod_name: pod.map(|p| p.1.clone()),
                pod_uid: w.pod_uid,
                container_id: w.container_id,
                entries,
            }
        })
        .collect();
    // Two namespaces can claim one name (a pod's old and new sandbox for a
    // moment, an ip netns called "host"). The better source keeps it; the
    // other falls back to its inode, which is unique.
    infos.sort_by_key(|i| (i.source, i.id));
    let mut taken = HashSet::new();
    for info in &mut infos {
        let inode_name = format!("ino:{}", info.id.1);
        if !taken.insert(info.name.clone())
            || (info.source != NameSource::Inode && info.name.starts_with("ino:"))
        {
            info.name = inode_name.clone();
            info.source = NameSource::Inode;
            taken.insert(inode_name);
        }
    }
    infos.sort_by_key(|i| i.id);
    infos
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(ino: u64, pids: &[u32], names: &[&str]) -> Found {
        Found {
            id: (4, ino),
            pids: pids.to_vec(),
            names: names.iter().map(|s| s.to_string()).collect(),
        }
    }

    const UID: &str = "6f1a2b3c-4d5e-6f70-8192-a3b4c5d6e7f8";
    const CID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn names(
        found: &[Found],
        pods: &HashMap<String, (String, String)>,
    ) -> Vec<(String, NameSource)> {
        name_all(
            found,
            Some((4, 1)),
            Path::new("/proc"),
            Path::new("/run/netns"),
            pods,
            |pid| match pid {
                10 => Some(Workload {
                    pod_uid: Some(UID.into()),
                    container_id: Some(CID.into()),
                    unit: None,
                }),
                20 => Some(Workload {
                    container_id: Some(CID.into()),
                    ..Workload::default()
                }),
                _ => None,
            },
        )
        .into_iter()
        .map(|i| (i.name, i.source))
        .collect()
    }

    #[test]
    fn preference_order() {
        let mut pods = HashMap::new();
        let f = [
            found(1, &[1], &["host"]),
            found(2, &[10], &["cni-1234"]),
            found(3, &[], &["blue"]),
            found(5, &[20], &[]),
            found(6, &[30], &[]),
        ];
        assert_eq!(
            names(&f, &pods),
            [
                ("host".into(), NameSource::Host),
                (format!("pod:{UID}"), NameSource::Pod),
                ("blue".into(), NameSource::Named),
                ("container:0123456789ab".into(), NameSource::Container),
                ("ino:6".into(), NameSource::Inode),
            ]
        );
        pods.insert(UID.to_string(), ("shop".into(), "web-0".into()));
        assert_eq!(names(&f, &pods)[1].0, "pod:shop/web-0");
    }

    #[test]
    fn clashing_names_fall_back_to_the_inode() {
        let f = [
            found(1, &[1], &[]),
            found(2, &[], &["host"]),
            found(3, &[], &["ino:1"]),
            found(7, &[10], &[]),
            found(8, &[10], &[]),
        ];
        let n = names(&f, &HashMap::new());
        assert_eq!(n[0].0, "host");
        assert_eq!(n[1].0, "ino:2");
        assert_eq!(n[2].0, "ino:3");
        assert_eq!(n[3].0, format!("pod:{UID}"));
        assert_eq!(n[4].0, "ino:8");
        let unique: HashSet<_> = n.iter().map(|(name, _)| name).collect();
        assert_eq!(unique.len(), n.len());
    }

    #[test]
    fn pod_log_directories() {
        let dir = std::env::temp_dir().join(format!("sockdiag-pods-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for d in [
            format!("shop_web-0_{UID}"),
            "bad".into(),
            "a_b".into(),
            "_x_y".into(),
        ] {
            std::fs::create_dir_all(dir.join(d)).expect("creating a test directory");
        }
        let pods = pod_names(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(pods.len(), 1);
        assert_eq!(pods[UID], ("shop".to_string(), "web-0".to_string()));
        assert!(pod_names(Path::new("/nonexistent")).is_empty());
    }
}
