//! The handles a sampling tier keeps for one namespace: a sock_diag socket
//! and procfs files, each opened inside the namespace and bound to it for
//! good, and each retried with back-off when opening it failed.
//!
//! Opening a handle in another namespace means entering it on a short-lived
//! thread (see [`super::enter`]). That is done at most once per namespace
//! per pass, for every handle that is missing and due, so neither a
//! namespace whose socket cannot be opened nor one whose procfs file was
//! briefly unreadable costs a thread per pass, and neither stays broken:
//! the next try comes after 1 s, then 2 s, 4 s, ... up to a minute.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::enter::{EnterError, run_in};
use super::naming::{NameSource, NetnsInfo};
use crate::diag::{DiagError, DiagSocket};
use crate::procfs::{ProcError, ProcFile};

/// The first retry after a failed open.
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// The longest wait between retries.
const MAX_RETRY: Duration = Duration::from_secs(60);

/// A namespace-wide procfs file a collector reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcName {
    /// `net/netstat` (TcpExt counters).
    Netstat,
    /// `net.core.somaxconn`.
    Somaxconn,
    /// `net.ipv4.tcp_ehash_entries` (negative when the namespace shares the
    /// host's established hash).
    EhashEntries,
    /// `net/snmp` (the `Udp:` counters).
    Snmp,
    /// `net/snmp6` (the `Udp6` counters).
    Snmp6,
    /// `net.ipv4.ip_local_port_range`: where ephemeral ports come from.
    LocalPortRange,
    /// `net/sockstat` (TCP sockets in use and in TIME-WAIT).
    Sockstat,
    /// `net/sockstat6` (TCPv6 sockets in use).
    Sockstat6,
}

impl ProcName {
    const ALL: [ProcName; 8] = [
        ProcName::Netstat,
        ProcName::Somaxconn,
        ProcName::EhashEntries,
        ProcName::Snmp,
        ProcName::Snmp6,
        ProcName::LocalPortRange,
        ProcName::Sockstat,
        ProcName::Sockstat6,
    ];

    fn index(self) -> usize {
        self as usize
    }

    /// Path under procfs for the daemon's own namespace.
    fn own_path(self) -> &'static str {
        match self {
            ProcName::Netstat => "self/net/netstat",
            ProcName::Somaxconn => "sys/net/core/somaxconn",
            ProcName::EhashEntries => "sys/net/ipv4/tcp_ehash_entries",
            ProcName::Snmp => "self/net/snmp",
            ProcName::Snmp6 => "self/net/snmp6",
            ProcName::LocalPortRange => "sys/net/ipv4/ip_local_port_range",
            ProcName::Sockstat => "self/net/sockstat",
            ProcName::Sockstat6 => "self/net/sockstat6",
        }
    }

    /// Path under procfs from a thread that entered the namespace: only
    /// `thread-self` follows a thread into another namespace (`self` is the
    /// process's); sysctls answer for the opener's namespace either way.
    fn entered_path(self) -> &'static str {
        match self {
            ProcName::Netstat => "thread-self/net/netstat",
            ProcName::Snmp => "thread-self/net/snmp",
            ProcName::Snmp6 => "thread-self/net/snmp6",
            ProcName::Sockstat => "thread-self/net/sockstat",
            ProcName::Sockstat6 => "thread-self/net/sockstat6",
            other => other.own_path(),
        }
    }
}

/// A handle a collector needs before it can sample a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// A NETLINK_SOCK_DIAG socket.
    Diag,
    /// A procfs file.
    Proc(ProcName),
}

/// When to try again something that failed: after 1 s, then twice as long
/// after each further failure, at most a minute; at once after a success.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backoff {
    failures: u32,
    retry_at: Option<Instant>,
}

impl Backoff {
    /// Whether a try is allowed at `now`.
    pub fn due(&self, now: Instant) -> bool {
        self.retry_at.is_none_or(|t| now >= t)
    }

    /// Records a failure at `now`; returns the wait before the next try.
    pub fn failed(&mut self, now: Instant) -> Duration {
        let wait = FIRST_RETRY
            .checked_mul(1 << self.failures.min(16))
            .unwrap_or(MAX_RETRY)
            .min(MAX_RETRY);
        self.failures = self.failures.saturating_add(1);
        self.retry_at = Some(now + wait);
        wait
    }

    /// Records a success: the next failure starts the back-off afresh.
    pub fn succeeded(&mut self) {
        *self = Backoff::default();
    }

    /// How long until the next try is allowed.
    pub fn wait(&self, now: Instant) -> Duration {
        self.retry_at
            .map_or(Duration::ZERO, |t| t.saturating_duration_since(now))
    }
}

/// A handle that is not open: why, and when it is tried again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} is not open: {error} (next try in {retry_in:.1?})")]
pub struct HandleError {
    /// The handle.
    pub what: &'static str,
    /// Why the last try failed.
    pub error: String,
    /// Until the next try.
    pub retry_in: Duration,
}

struct Handle<T> {
    value: Option<T>,
    backoff: Backoff,
    error: Option<String>,
}

impl<T> Default for Handle<T> {
    fn default() -> Self {
        Handle {
            value: None,
            backoff: Backoff::default(),
            error: None,
        }
    }
}

impl<T> Handle<T> {
    fn wanted_now(&self, now: Instant) -> bool {
        self.value.is_none() && self.backoff.due(now)
    }

    fn set<E: std::fmt::Display>(&mut self, result: Result<T, E>, now: Instant) {
        match result {
            Ok(v) => {
                self.value = Some(v);
                self.error = None;
                self.backoff.succeeded();
            }
            Err(e) => self.fail(e.to_string(), now),
        }
    }

    fn fail(&mut self, error: String, now: Instant) {
        self.value = None;
        self.error = Some(error);
        self.backoff.failed(now);
    }

    fn get(&mut self, what: &'static str, now: Instant) -> Result<&mut T, HandleError> {
        let retry_in = self.backoff.wait(now);
        let error = &self.error;
        self.value.as_mut().ok_or_else(|| HandleError {
            what,
            error: error
                .clone()
                .unwrap_or_else(|| "not opened yet".to_string()),
            retry_in,
        })
    }
}

/// One tier's handles in one namespace.
pub struct Handles {
    host: bool,
    procfs: PathBuf,
    diag: Handle<DiagSocket>,
    procs: [Handle<ProcFile>; ProcName::ALL.len()],
}

/// What one visit inside the namespace opened.
type Opened = (
    Option<Result<DiagSocket, DiagError>>,
    [Option<Result<ProcFile, ProcError>>; ProcName::ALL.len()],
);

impl Handles {
    /// No handle open yet, for namespace `info` with procfs at `procfs`.
    pub fn new(info: &NetnsInfo, procfs: &Path) -> Self {
        Handles {
            host: info.source == NameSource::Host,
            procfs: procfs.to_path_buf(),
            diag: Handle::default(),
            procs: Default::default(),
        }
    }

    /// Opens what `needs` lists and is neither open nor waiting for its
    /// back-off, entering the namespace at most once. Only a namespace
    /// that is gone or may not be entered is an error here; a handle that
    /// fails to open is reported by the accessor that asks for it.
    pub fn prepare(
        &mut self,
        info: &NetnsInfo,
        needs: &[Need],
        now: Instant,
    ) -> Result<(), EnterError> {
        let want_diag = needs.contains(&Need::Diag) && self.diag.wanted_now(now);
        let mut want_proc = [false; ProcName::ALL.len()];
        for name in ProcName::ALL {
            want_proc[name.index()] =
                needs.contains(&Need::Proc(name)) && self.procs[name.index()].wanted_now(now);
        }
        if !want_diag && !want_proc.contains(&true) {
            return Ok(());
        }
        let (host, procfs) = (self.host, self.procfs.as_path());
        let open = || -> Opened {
            let diag = want_diag.then(DiagSocket::open);
            let procs = ProcName::ALL.map(|name| {
                want_proc[name.index()].then(|| {
                    if host {
                        // Read by path each time: the daemon's own
                        // namespace is every thread's.
                        Ok(ProcFile::at(procfs.join(name.own_path())))
                    } else {
                        ProcFile::open_here(procfs.join(name.entered_path()))
                    }
                })
            });
            (diag, procs)
        };
        let opened = open_in(info, open);
        match opened {
            Ok((diag, procs)) => {
                if let Some(result) = diag {
                    self.diag.set(result, now);
                }
                for (handle, result) in self.procs.iter_mut().zip(procs) {
                    if let Some(result) = result {
                        handle.set(result, now);
                    }
                }
                Ok(())
            }
            Err(e) if e.is_gone() || e.is_denied() => Err(e),
            Err(e) => {
                // Entering failed for another reason (out of descriptors,
                // say): every handle it was for waits its back-off.
                let error = e.to_string();
                if want_diag {
                    self.diag.fail(error.clone(), now);
                }
                for name in ProcName::ALL {
                    if want_proc[name.index()] {
                        self.procs[name.index()].fail(error.clone(), now);
                    }
                }
                Ok(())
            }
        }
    }

    /// The sock_diag socket.
    pub fn diag(&mut self, now: Instant) -> Result<&mut DiagSocket, HandleError> {
        self.diag.get("sock_diag socket", now)
    }

    /// After a failed dump: forgets the socket if the kernel may still be
    /// dumping on it (it would refuse the next request), so a new one is
    /// opened at the next [`Handles::prepare`], without back-off since
    /// opening did not fail; keeps it when the kernel ended the dump with
    /// an error reply, so a dump the kernel refuses every time (a module
    /// missing) costs no namespace entry per sample.
    pub fn after_failed_dump(&mut self, error: &DiagError) {
        if !error.leaves_socket_idle() {
            self.diag.value = None;
        }
    }

    /// A procfs file.
    pub fn proc(&mut self, name: ProcName, now: Instant) -> Result<&mut ProcFile, HandleError> {
        let what = match name {
            ProcName::Netstat => "net/netstat",
            ProcName::Somaxconn => "net.core.somaxconn",
            ProcName::EhashEntries => "net.ipv4.tcp_ehash_entries",
            ProcName::Snmp => "net/snmp",
            ProcName::Snmp6 => "net/snmp6",
            ProcName::LocalPortRange => "net.ipv4.ip_local_port_range",
            ProcName::Sockstat => "net/sockstat",
            ProcName::Sockstat6 => "net/sockstat6",
        };
        self.procs[name.index()].get(what, now)
    }
}

/// Runs `open` inside namespace `info`: here, for the daemon's own (every
/// thread's already); else on a thread that enters it through the first of
/// its nsfs paths that still names it.
pub fn open_in<T: Send>(
    info: &NetnsInfo,
    open: impl Fn() -> T + Send + Sync,
) -> Result<T, EnterError> {
    if info.source == NameSource::Host {
        return Ok(open());
    }
    let mut last = None;
    for path in &info.entries {
        match run_in(path, info.id, &open) {
            Ok(v) => return Ok(v),
            // That process is gone; another in the namespace may remain.
            Err(e) if e.is_gone() => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| EnterError::Gone {
        path: PathBuf::from(format!("netns {}", info.name)),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_a_minute_and_resets_on_success() {
        let t0 = Instant::now();
        let mut b = Backoff::default();
        assert!(b.due(t0));
        let waits: Vec<u64> = (0..9).map(|_| b.failed(t0).as_secs()).collect();
        assert_eq!(waits, vec![1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert!(!b.due(t0 + Duration::from_secs(59)));
        assert!(b.due(t0 + Duration::from_secs(60)));
        b.succeeded();
        assert!(b.due(t0));
        assert_eq!(b.failed(t0), Duration::from_secs(1));
        for _ in 0..100 {
            b.failed(t0);
        }
        assert_eq!(b.wait(t0), MAX_RETRY, "no overflow after many failures");
    }

    #[test]
    fn a_failed_handle_says_why_and_when_it_is_tried_again() {
        let t0 = Instant::now();
        let mut h: Handle<u32> = Handle::default();
        assert!(h.wanted_now(t0));
        let e = h.get("thing", t0).unwrap_err();
        assert_eq!(e.error, "not opened yet");
        h.set(Err::<u32, _>("EACCES"), t0);
        assert!(!h.wanted_now(t0 + Duration::from_millis(500)));
        let e = h.get("thing", t0 + Duration::from_millis(500)).unwrap_err();
        assert_eq!(e.error, "EACCES");
        assert_eq!(e.retry_in, Duration::from_millis(500));
        assert!(h.wanted_now(t0 + Duration::from_secs(1)));
        h.set(Ok::<u32, &str>(7), t0 + Duration::from_secs(1));
        assert_eq!(h.get("thing", t0).ok().copied(), Some(7));
        assert!(!h.wanted_now(t0), "open: nothing to do");
    }

    #[test]
    fn the_own_namespace_opens_in_place() {
        let info = crate::netns::own(Path::new("/proc"));
        let mut h = Handles::new(&info, Path::new("/proc"));
        let now = Instant::now();
        h.prepare(&info, &[Need::Proc(ProcName::Somaxconn)], now)
            .unwrap();
        assert!(h.proc(ProcName::Somaxconn, now).is_ok());
        assert!(h.diag(now).is_err(), "not asked for");
    }
}
