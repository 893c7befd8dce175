//! What a process's cgroup path says about who runs it: its systemd unit,
//! its container and its Kubernetes pod.
//!
//! Nothing here asks a runtime: container runtimes and the kubelet name
//! cgroups after what they run, so the path alone answers, and reading it
//! costs one small procfs file. The names recognised are those written by
//! docker, containerd (CRI), cri-o and podman, with both the systemd and the
//! cgroupfs cgroup drivers, possibly nested (a kind node is itself a docker
//! container). A path of any other shape yields less, never an error, since
//! these labels are a convenience and the figures they annotate matter more.

use std::io::Read;
use std::path::Path;

use crate::procfs::ProcError;

/// The most of a cgroup file read: the kernel writes one line per hierarchy,
/// each at most a path long, so anything beyond this is not a cgroup file.
const MAX_FILE_BYTES: u64 = 64 * 1024;

/// systemd's limit on unit names (`UNIT_NAME_MAX` less its NUL); a longer
/// name is not a unit, and would make an unwieldy label.
const MAX_UNIT_NAME: usize = 255;

/// Prefixes of the scope (systemd driver) or cgroup (cgroupfs driver) that
/// each runtime creates for a container, before the container ID.
const CONTAINER_PREFIXES: [&str; 4] = ["docker-", "cri-containerd-", "crio-", "libpod-"];

/// Unit types a process can run in; slices only group other units.
const UNIT_SUFFIXES: [&str; 5] = [".service", ".scope", ".socket", ".mount", ".swap"];

/// Who runs a process, as far as its cgroup path tells.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Workload {
    /// The systemd unit the process runs in, e.g. `nginx.service` or
    /// `session-3.scope`; not a container's own scope (`docker-<id>.scope`
    /// and the like), which sets `container_id` instead.
    pub unit: Option<String>,
    /// Full container ID (64 lowercase hex digits) from a docker,
    /// containerd, cri-o or podman cgroup.
    pub container_id: Option<String>,
    /// Kubernetes pod UID, dashed as the API shows it (the systemd driver
    /// writes it with underscores).
    pub pod_uid: Option<String>,
}

impl Workload {
    /// How much a line tells, to pick the most telling one: a container
    /// outweighs a pod, which outweighs a unit, because a runtime's unit
    /// (`docker.service`) is what a hybrid host's v2 line shows for a
    /// container the runtime placed only in the v1 hierarchies.
    fn weight(&self) -> u8 {
        4 * u8::from(self.container_id.is_some())
            + 2 * u8::from(self.pod_uid.is_some())
            + u8::from(self.unit.is_some())
    }
}

/// Parses the content of `/proc/<pid>/cgroup`.
///
/// Of a cgroup v2 line (`0::/path`) and cgroup v1 lines
/// (`N:controllers:/path`), the line whose path tells the most wins (a
/// container, then a pod, then a unit); on a tie the v2 line is preferred,
/// then the `name=systemd` line, then the first. A v1 line can tell more on
/// hybrid hosts, where a runtime using the cgroupfs driver may name its
/// containers only in the v1 hierarchies. Never
/// fails: shapes not recognised give an empty [`Workload`].
pub fn parse(text: &str) -> Workload {
    // (weight, line preference, workload) of the best line so far.
    let mut best: Option<(u8, u8, Workload)> = None;
    for line in text.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let preference = if id == "0" && controllers.is_empty() {
            2
        } else if controllers.split(',').any(|c| c == "name=systemd") {
            1
        } else {
            0
        };
        let workload = parse_path(path);
        let weight = workload.weight();
        let better = match &best {
            None => true,
            Some((w, p, _)) => (weight, preference) > (*w, *p),
        };
        if better {
            best = Some((weight, preference, workload));
        }
    }
    best.map(|(_, _, w)| w).unwrap_or_default()
}

/// Reads and parses `<procfs>/<pid>/cgroup`.
pub fn read(procfs: &Path, pid: u32) -> Result<Workload, ProcError> {
    let path = procfs.join(pid.to_string()).join("cgroup");
    let mut bytes = Vec::new();
    std::fs::File::open(&path)
        .and_then(|f| f.take(MAX_FILE_BYTES).read_to_end(&mut bytes))
        .map_err(|source| ProcError::Read {
            path: path.clone(),
            source,
        })?;
    // Cgroup names are whatever bytes their creator chose; a name that is
    // not UTF-8 cannot be one of the names parsed here anyway.
    Ok(parse(&String::from_utf8_lossy(&bytes)))
}

/// What one cgroup path tells.
fn parse_path(path: &str) -> Workload {
    // The kernel marks a cgroup removed under a process still listed in it.
    let path = path.strip_suffix(" (deleted)").unwrap_or(path);
    let mut out = Workload::default();
    // Positions of the last unit and container components: a container
    // nested in a unit (docker-in-a-service) belongs to the container, a
    // unit nested in a container (systemd in a container) to both.
    let mut unit_at = None;
    let mut container_at = None;
    let mut in_kubepods = false;
    for (i, component) in path.split('/').enumerate() {
        if let Some(id) = container_id(component) {
            out.container_id = Some(id.to_string());
            container_at = Some(i);
        } else if is_unit(component) {
            out.unit = Some(component.to_string());
            unit_at = Some(i);
        }
        if let Some(uid) = pod_uid(component, in_kubepods) {
            out.pod_uid = Some(uid);
        }
        // Pod cgroups sit below the kubelet's `kubepods` cgroup, whose
        // name may carry a prefix (`kubelet-kubepods.slice` on kind).
        in_kubepods |= component.contains("kubepods");
    }
    if container_at > unit_at {
        out.unit = None;
    }
    out
}

/// The container ID a component names: `<prefix><id>[.scope]` for the
/// known runtime prefixes, or a bare ID (docker's and containerd's cgroupfs
/// layout, or a custom `--cgroup-parent`).
fn container_id(component: &str) -> Option<&str> {
    let stem = component.strip_suffix(".scope").unwrap_or(component);
    let id = CONTAINER_PREFIXES
        .iter()
        .find_map(|prefix| stem.strip_prefix(prefix))
        .unwrap_or(stem);
    is_container_id(id).then_some(id)
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Whether a component is a unit a process can run in. The character set
/// is systemd's own, so a label never carries bytes systemd would refuse.
fn is_unit(component: &str) -> bool {
    component.len() <= MAX_UNIT_NAME
        && UNIT_SUFFIXES.iter().any(|suffix| {
            component
                .strip_suffix(suffix)
                .is_some_and(|stem| !stem.is_empty())
        })
        && component.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b':' | b'-' | b'_' | b'.' | b'\\' | b'@')
        })
}

/// The pod UID a component names: `<parent>-pod<uid>.slice` with the
/// systemd driver (the parent names the QoS class, or is `kubepods` for
/// guaranteed pods), `pod<uid>` below `kubepods` with the cgroupfs driver.
fn pod_uid(component: &str, in_kubepods: bool) -> Option<String> {
    let raw = match component.strip_suffix(".slice") {
        Some(stem) if stem.contains("kubepods") => stem.rsplit('-').next()?.strip_prefix("pod")?,
        Some(_) => return None,
        None if in_kubepods => component.strip_prefix("pod")?,
        None => return None,
    };
    // systemd reserves '-' for slice nesting, so the kubelet writes the
    // UID's dashes as underscores there.
    let uid = raw.replace('_', "-").to_ascii_lowercase();
    is_pod_uid(&uid).then_some(uid)
}

/// A UUID (API-created pods), or 32 hex digits (static pods, whose UID is
/// a hash of their manifest).
fn is_pod_uid(s: &str) -> bool {
    let hex = |b: u8| b.is_ascii_hexdigit();
    match s.len() {
        32 => s.bytes().all(hex),
        36 => s.bytes().enumerate().all(|(i, b)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                b == b'-'
            } else {
                hex(b)
            }
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f4e5d6c7b8a99887766554433221100ffeeddccbbaa00112233445566778899";
    const ID2: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const UID: &str = "6f1a2b3c-4d5e-6f70-8192-a3b4c5d6e7f8";
    const UID_: &str = "6f1a2b3c_4d5e_6f70_8192_a3b4c5d6e7f8";

    fn unit(u: &str) -> Workload {
        Workload {
            unit: Some(u.to_string()),
            ..Workload::default()
        }
    }

    fn container(id: &str, pod: Option<&str>) -> Workload {
        Workload {
            unit: None,
            container_id: Some(id.to_string()),
            pod_uid: pod.map(str::to_string),
        }
    }

    #[test]
    fn systemd_services_and_sessions_are_units() {
        assert_eq!(
            parse("0::/system.slice/nginx.service\n"),
            unit("nginx.service")
        );
        assert_eq!(
            parse("0::/user.slice/user-1000.slice/session-3.scope\n"),
            unit("session-3.scope")
        );
        assert_eq!(parse("0::/init.scope\n"), unit("init.scope"));
        // The innermost unit is the one the process runs in.
        assert_eq!(
            parse(
                "0::/user.slice/user-1000.slice/user@1000.service/app.slice/app-foo@autostart.service\n"
            ),
            unit("app-foo@autostart.service")
        );
        assert_eq!(
            parse("0::/system.slice/system-getty.slice/getty@tty1.service\n"),
            unit("getty@tty1.service")
        );
    }

    #[test]
    fn docker_systemd_driver() {
        let text = format!("0::/system.slice/docker-{ID}.scope\n");
        assert_eq!(parse(&text), container(ID, None));
    }

    #[test]
    fn docker_cgroupfs_driver() {
        assert_eq!(parse(&format!("0::/docker/{ID}\n")), container(ID, None));
    }

    #[test]
    fn containerd_systemd_driver_burstable_pod() {
        let text = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope\n"
        );
        assert_eq!(parse(&text), container(ID, Some(UID)));
    }

    #[test]
    fn containerd_cgroupfs_driver_besteffort_pod() {
        let text = format!("0::/kubepods/besteffort/pod{UID}/{ID}\n");
        assert_eq!(parse(&text), container(ID, Some(UID)));
    }

    #[test]
    fn guaranteed_pods_sit_directly_under_kubepods() {
        let text =
            format!("0::/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope\n");
        assert_eq!(parse(&text), container(ID, Some(UID)));
        let text = format!("0::/kubepods/pod{UID}/{ID}\n");
        assert_eq!(parse(&text), container(ID, Some(UID)));
    }

    #[test]
    fn static_pods_have_hash_uids() {
        let text = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0a1b2c3d4e5f60718293a4b5c6d7e8f9.slice/cri-containerd-{ID}.scope\n"
        );
        assert_eq!(
            parse(&text),
            container(ID, Some("0a1b2c3d4e5f60718293a4b5c6d7e8f9"))
        );
    }

    #[test]
    fn a_pod_cgroup_without_a_container_still_names_the_pod() {
        let text = format!(
            "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice\n"
        );
        assert_eq!(
            parse(&text),
            Workload {
                pod_uid: Some(UID.to_string()),
                ..Workload::default()
            }
        );
    }

    #[test]
    fn crio_both_drivers() {
        let text = format!(
            "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/crio-{ID}.scope\n"
        );
        assert_eq!(parse(&text), container(ID, Some(UID)));
        let text = format!("0::/kubepods/burstable/pod{UID}/crio-{ID}\n");
        assert_eq!(parse(&text), container(ID, Some(UID)));
    }

    #[test]
    fn conmon_runs_in_a_unit_not_the_container() {
        let text = format!(
            "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/crio-conmon-{ID}.scope\n"
        );
        assert_eq!(
            parse(&text),
            Workload {
                unit: Some(format!("crio-conmon-{ID}.scope")),
                container_id: None,
                pod_uid: Some(UID.to_string()),
            }
        );
        assert_eq!(
            parse(&format!("0::/machine.slice/libpod-conmon-{ID}.scope\n")),
            unit(&format!("libpod-conmon-{ID}.scope"))
        );
    }

    #[test]
    fn podman_rootful_rootless_and_cgroupfs() {
        assert_eq!(
            parse(&format!("0::/machine.slice/libpod-{ID}.scope\n")),
            container(ID, None)
        );
        // Rootless, with the container's processes in a `container` child.
        assert_eq!(
            parse(&format!(
                "0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope/container\n"
            )),
            container(ID, None)
        );
        assert_eq!(
            parse(&format!("0::/libpod_parent/libpod-{ID}\n")),
            container(ID, None)
        );
    }

    #[test]
    fn nested_kind_node_reports_the_innermost_container() {
        // A kind node is a docker container whose kubelet uses the
        // `/kubelet` cgroup root.
        let text = format!(
            "0::/system.slice/docker-{ID2}.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{ID}.scope\n"
        );
        assert_eq!(parse(&text), container(ID, Some(UID)));
    }

    #[test]
    fn a_unit_inside_a_container_keeps_both() {
        let text = format!("0::/system.slice/docker-{ID}.scope/system.slice/nginx.service\n");
        assert_eq!(
            parse(&text),
            Workload {
                unit: Some("nginx.service".to_string()),
                container_id: Some(ID.to_string()),
                pod_uid: None,
            }
        );
    }

    #[test]
    fn cgroup_v1_prefers_name_systemd_then_the_most_telling_line() {
        let text = format!(
            "12:pids:/system.slice/docker-{ID}.scope\n\
             11:memory:/system.slice/docker-{ID}.scope\n\
             4:cpu,cpuacct:/system.slice/docker-{ID}.scope\n\
             1:name=systemd:/system.slice/docker-{ID}.scope\n"
        );
        assert_eq!(parse(&text), container(ID, None));
        // name=systemd beats other v1 lines that say as much.
        let text =
            "5:memory:/system.slice/other.service\n1:name=systemd:/system.slice/nginx.service\n";
        assert_eq!(parse(text), unit("nginx.service"));
        // Controllers not delegated show `/`; the one that names a
        // container wins.
        let text = format!("3:cpuset:/\n2:memory:/docker/{ID}\n1:name=systemd:/\n");
        assert_eq!(parse(&text), container(ID, None));
        let text = format!(
            "11:devices:/kubepods/burstable/pod{UID}/{ID}\n1:name=systemd:/kubepods/burstable/pod{UID}/{ID}\n0::/\n"
        );
        assert_eq!(parse(&text), container(ID, Some(UID)));
    }

    #[test]
    fn hybrid_hosts_prefer_the_v2_line_on_a_tie() {
        let text = "1:name=systemd:/system.slice/old.service\n0::/system.slice/nginx.service\n";
        assert_eq!(parse(text), unit("nginx.service"));
        // ...but a v1 line naming the container beats a v2 line naming the
        // runtime's unit.
        let text = format!("4:memory:/docker/{ID}\n0::/system.slice/docker.service\n");
        assert_eq!(parse(&text), container(ID, None));
    }

    #[test]
    fn root_empty_and_unknown_paths_say_nothing() {
        assert_eq!(parse("0::/\n"), Workload::default());
        assert_eq!(parse(""), Workload::default());
        assert_eq!(parse("\n\n"), Workload::default());
        assert_eq!(
            parse("0::/process_api/0a61b795d8098690a16e65527456d674\n"),
            Workload::default()
        );
        // A slice only groups units; nothing runs in it.
        assert_eq!(parse("0::/system.slice\n"), Workload::default());
        assert_eq!(parse("0::/system.slice/.service\n"), Workload::default());
    }

    #[test]
    fn deleted_cgroups_still_parse() {
        assert_eq!(
            parse("0::/system.slice/nginx.service (deleted)\n"),
            unit("nginx.service")
        );
    }

    #[test]
    fn near_misses_are_not_ids() {
        // 63 digits, uppercase, a pod outside kubepods, a malformed UUID.
        let short = &ID[..63];
        assert_eq!(parse(&format!("0::/docker/{short}\n")), Workload::default());
        let upper = ID.to_ascii_uppercase();
        assert_eq!(parse(&format!("0::/docker/{upper}\n")), Workload::default());
        assert_eq!(
            parse(&format!("0::/somewhere/pod{UID}\n")),
            Workload::default()
        );
        assert_eq!(
            parse("0::/kubepods/besteffort/pod6f1a2b3c-4d5e-6f70-8192a-3b4c5d6e7f8/\n"),
            Workload::default()
        );
        // A docker-looking scope with a bad ID is just a unit.
        assert_eq!(
            parse("0::/system.slice/docker-abc.scope\n"),
            unit("docker-abc.scope")
        );
    }

    #[test]
    fn garbage_does_not_panic() {
        let long = "a".repeat(1 << 20);
        let slashes = "/".repeat(1 << 20);
        let units = "x.service/".repeat(1 << 16);
        let inputs = [
            "garbage".to_string(),
            "no colons at all\nstill none".to_string(),
            ":".to_string(),
            "::".to_string(),
            ":::::::".to_string(),
            "0::".to_string(),
            "0::/../../etc/passwd\n".to_string(),
            "0::/system.slice/../nginx.service/..\n".to_string(),
            "0::/system.slice/ngi\u{0}nx.service\n".to_string(),
            "0::/system.slice/nginx\u{1b}[31m.service\n".to_string(),
            "0::/system.slice/ñginx.service\n".to_string(),
            "0::/kubepods/pod\u{fffd}\n".to_string(),
            format!("0::/{long}.service\n"),
            format!("0::{slashes}\n"),
            format!("0::/{units}\n"),
            long.clone(),
        ];
        for input in &inputs {
            let w = parse(input);
            // Odd bytes and oversized names never reach a label.
            if let Some(u) = &w.unit {
                assert!(u.len() <= MAX_UNIT_NAME, "{u}");
                assert!(u.is_ascii() && !u.contains('\u{1b}') && !u.contains('\0'));
            }
        }
        assert_eq!(
            parse("0::/system.slice/ngi\u{0}nx.service\n"),
            Workload::default()
        );
        assert_eq!(
            parse("0::/system.slice/../nginx.service/..\n"),
            unit("nginx.service")
        );
    }

    #[test]
    fn reads_this_process_and_names_missing_files() {
        // Whatever the cgroup of the test runner, reading it works.
        read(Path::new("/proc"), std::process::id()).expect("own cgroup file");
        let e = read(Path::new("/nonexistent"), 1).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/1/cgroup"), "{e}");
    }
}
