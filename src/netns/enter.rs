//! Running code inside another network namespace.
//!
//! A sock_diag socket answers for the namespace it was created in, and a
//! procfs `net/` file for the namespace of the task that opened it; both
//! stay bound after that. So entering a namespace is only needed to create
//! them: a short-lived thread calls `setns()`, builds the handles, hands
//! them back and ends, and the daemon's own threads never leave home.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Identity of a network namespace: device and inode of its nsfs file.
/// Stable for the namespace's life and never shared with another live one.
pub type NsId = (u64, u64);

/// Why a namespace could not be entered.
#[derive(Debug, thiserror::Error)]
pub enum EnterError {
    /// The namespace file is gone: the namespace (or the process that
    /// pointed to it) no longer exists. Not a fault: namespaces come and go.
    #[error("{path}: namespace gone")]
    Gone {
        /// The nsfs file tried.
        path: PathBuf,
    },
    /// The path now names a different namespace (the pid was reused).
    #[error("{path}: now names another namespace")]
    Changed {
        /// The nsfs file tried.
        path: PathBuf,
    },
    /// Not allowed: `setns()` needs CAP_SYS_ADMIN over the namespace's
    /// owning user namespace, and opening another process's
    /// `/proc/<pid>/ns/net` needs ptrace access to it.
    #[error("{path}: {source} (entering a network namespace needs CAP_SYS_ADMIN)")]
    Denied {
        /// The nsfs file tried.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Anything else.
    #[error("{path}: {source}")]
    Failed {
        /// The nsfs file tried.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

impl EnterError {
    fn from_io(path: &Path, source: io::Error) -> Self {
        let path = path.to_path_buf();
        match source.raw_os_error() {
            Some(libc::ENOENT | libc::ESRCH) => EnterError::Gone { path },
            Some(libc::EPERM | libc::EACCES) => EnterError::Denied { path, source },
            _ => EnterError::Failed { path, source },
        }
    }

    /// Whether the namespace simply no longer exists.
    pub fn is_gone(&self) -> bool {
        matches!(self, EnterError::Gone { .. } | EnterError::Changed { .. })
    }

    /// Whether the daemon lacks the privilege.
    pub fn is_denied(&self) -> bool {
        matches!(self, EnterError::Denied { .. })
    }
}

/// The identity of the namespace an nsfs file (or a link to one) names.
pub fn ns_id(path: &Path) -> io::Result<NsId> {
    let m = std::fs::metadata(path)?;
    Ok((m.dev(), m.ino()))
}

/// Runs `f` on a fresh thread inside the network namespace `path` names,
/// after checking that it is still namespace `expected`. The thread ends
/// with `f`, so nothing else ever runs in the foreign namespace.
pub fn run_in<T: Send>(
    path: &Path,
    expected: NsId,
    f: impl FnOnce() -> T + Send,
) -> Result<T, EnterError> {
    let file = File::open(path).map_err(|e| EnterError::from_io(path, e))?;
    let m = file.metadata().map_err(|e| EnterError::from_io(path, e))?;
    if (m.dev(), m.ino()) != expected {
        return Err(EnterError::Changed {
            path: path.to_path_buf(),
        });
    }
    std::thread::scope(|scope| {
        let handle = std::thread::Builder::new()
            .name("netns-enter".into())
            .stack_size(crate::memory::THREAD_STACK_BYTES)
            .spawn_scoped(scope, move || {
                // SAFETY: setns on a valid, open nsfs descriptor changes only
                // this thread's network namespace.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                drop(file);
                Ok(f())
            })
            .map_err(|e| EnterError::Failed {
                path: path.to_path_buf(),
                source: e,
            })?;
        match handle.join() {
            Ok(result) => result.map_err(|e| EnterError::from_io(path, e)),
            Err(_) => Err(EnterError::Failed {
                path: path.to_path_buf(),
                source: io::Error::other("thread panicked inside the namespace"),
            }),
        }
    })
}
