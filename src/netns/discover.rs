//! Finding every network namespace on the node.
//!
//! Two places name namespaces: each process's `/proc/<pid>/ns/net`, and the
//! files `ip netns add` bind-mounts under `/run/netns` (which may have no
//! process in them at all). Both are stat'ed, never opened, so a scan holds
//! no namespace alive.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use super::enter::{NsId, ns_id};

/// A scan of procfs that could not run at all.
#[derive(Debug, thiserror::Error)]
#[error("cannot list processes in {path}: {source}")]
pub struct DiscoverError {
    /// The procfs directory.
    pub path: PathBuf,
    /// The OS error.
    #[source]
    pub source: io::Error,
}

/// One namespace as a scan found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Its identity.
    pub id: NsId,
    /// Processes in it, ascending.
    pub pids: Vec<u32>,
    /// Names under the `ip netns` directory that point to it, sorted.
    pub names: Vec<String>,
}

/// The result of one scan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scan {
    /// Every namespace found, ordered by identity.
    pub found: Vec<Found>,
    /// Processes whose namespace could not be read (no ptrace access to
    /// them: the daemon lacks CAP_SYS_PTRACE over them).
    pub denied: u64,
    /// What could not be read although it should have been: a `run_netns`
    /// path that is not a readable directory (namespaces named only there
    /// are missing). A missing directory is no problem: no `ip netns` name
    /// was ever made.
    pub problems: Vec<String>,
}

/// Lists the network namespaces of every process under `procfs`, plus the
/// named ones under `run_netns` (a missing directory means no names).
pub fn scan(procfs: &Path, run_netns: &Path) -> Result<Scan, DiscoverError> {
    let entries = std::fs::read_dir(procfs).map_err(|source| DiscoverError {
        path: procfs.to_path_buf(),
        source,
    })?;
    let mut pids: Vec<u32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    let mut by_id: BTreeMap<NsId, Found> = BTreeMap::new();
    let mut denied = 0;
    let mut path = procfs.to_path_buf();
    for pid in pids {
        path.push(pid.to_string());
        path.push("ns/net");
        match ns_id(&path) {
            Ok(id) => by_id
                .entry(id)
                .or_insert_with(|| Found {
                    id,
                    pids: Vec::new(),
                    names: Vec::new(),
                })
                .pids
                .push(pid),
            // Kernel threads have no namespace links to follow for most
            // users, and any process may exit mid-scan: neither is news.
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => denied += 1,
            Err(_) => {}
        }
        path.pop();
        path.pop();
        path.pop();
    }
    let mut problems = Vec::new();
    let entries = match std::fs::read_dir(run_netns) {
        Ok(entries) => Some(entries),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => {
            problems.push(format!(
                "cannot list --path.run-netns {}: {e}; namespaces named only there are not \
                 collected",
                run_netns.display()
            ));
            None
        }
    };
    if let Some(entries) = entries {
        for entry in entries.flatten() {
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            // A name file is an nsfs bind mount; an unmounted leftover is a
            // plain empty file on another device, which no process shares.
            let Ok(id) = ns_id(&entry.path()) else {
                continue;
            };
            if !is_nsfs(&entry.path()) {
                continue;
            }
            by_id
                .entry(id)
                .or_insert_with(|| Found {
                    id,
                    pids: Vec::new(),
                    names: Vec::new(),
                })
                .names
                .push(name);
        }
    }
    let mut found: Vec<Found> = by_id.into_values().collect();
    for f in &mut found {
        f.names.sort();
    }
    Ok(Scan {
        found,
        denied,
        problems,
    })
}

/// Whether `path` is a namespace file (nsfs), following links. A failed
/// `ip netns add` can leave a plain file behind.
fn is_nsfs(path: &Path) -> bool {
    const NSFS_MAGIC: i64 = 0x6e73_6673;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into the zeroed struct we own; the path is a
    // valid NUL-terminated string.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == NSFS_MAGIC
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_namespace_is_found_with_this_process() {
        let scan = scan(Path::new("/proc"), Path::new("/nonexistent")).expect("scanning /proc");
        let own = ns_id(Path::new("/proc/self/ns/net")).expect("own namespace");
        let me = scan.found.iter().find(|f| f.id == own).expect("own netns");
        assert!(me.pids.contains(&std::process::id()));
        assert!(me.pids.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn missing_procfs_is_an_error_naming_it() {
        let e = scan(Path::new("/nonexistent/proc"), Path::new("/run/netns")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/proc"), "{e}");
    }

    #[test]
    fn a_run_netns_path_that_is_no_directory_is_a_problem() {
        let scan = scan(Path::new("/proc"), Path::new("/proc/self/status")).unwrap();
        assert_eq!(scan.problems.len(), 1);
        assert!(
            scan.problems[0].contains("/proc/self/status"),
            "{:?}",
            scan.problems
        );
        let fine = super::scan(Path::new("/proc"), Path::new("/nonexistent/run-netns")).unwrap();
        assert!(fine.problems.is_empty(), "missing is normal");
    }

    #[test]
    fn plain_files_are_not_namespaces() {
        assert!(!is_nsfs(Path::new("/proc/self/status")));
        assert!(is_nsfs(Path::new("/proc/self/ns/net")));
    }
}
