//! Which process owns each listening socket, found by walking procfs and
//! remembered from one refresh to the next.
//!
//! The kernel's socket dump names a listener's inode but not the processes
//! holding it; only `/proc/<pid>/fd/*` links (`socket:[<inode>]`) say that.
//! Reading every link of every process is what makes other tools burn a core
//! on busy hosts, so the walk here runs only when a listener is new or its
//! cached owner let go of it, stops as soon as every wanted inode is found,
//! reads links with `readlinkat` into a stack buffer, and lists fd
//! directories with `getdents64` into one reused buffer, so nothing is
//! allocated per fd. A cached owner costs one `readlinkat` per refresh to
//! confirm, and a listener whose owner cannot be found (held only by
//! processes we may not inspect, or in flux) is searched for again only
//! after a retry interval.
//!
//! The owner is the lowest pid holding the socket: with a pre-fork server
//! that is the master rather than whichever worker happens to come first.
//! Once cached, an owner stays until it no longer holds the socket, so a
//! lower pid that receives the socket later is not noticed, and a `comm`
//! changed by `exec` is not either; both are rare enough not to be worth a
//! read per listener per refresh.

use std::collections::HashMap;
use std::ffi::CStr;
use std::fmt;
use std::io::{self, Read, Write};
use std::ops::ControlFlow;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cgroup::{self, Workload};
use crate::cookie::CookieMap;

pub use crate::netns::NsId;

/// Bytes asked of the kernel per `getdents64` call: a few hundred fd
/// entries, so a process with many fds costs few calls.
const DIR_BUF_BYTES: usize = 32 * 1024;

/// Longest `socket:[<u32>]` link is 19 bytes; a link filling the buffer was
/// cut short and is something else.
const LINK_BUF_BYTES: usize = 32;

/// Room for `<pid>/fd/<fd>` and `<pid>/ns/net` with two u32s and a NUL.
const REL_PATH_BYTES: usize = 32;

/// `comm` is at most 16 bytes today; the cap only bounds a damaged file.
const MAX_COMM_BYTES: u64 = 256;

/// The most of `/proc/<pid>/cmdline` read.
const MAX_CMDLINE_READ: u64 = 4096;

/// The most characters of a command line kept: enough to tell
/// `gunicorn: master [app]` from `celery worker`, short enough for a label.
pub const MAX_CMDLINE_CHARS: usize = 128;

/// The process behind a listening socket.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Owner {
    /// The lowest pid holding an fd to the socket.
    pub pid: u32,
    /// Its command name, from `/proc/<pid>/comm`.
    pub comm: String,
    /// Its executable, from the `/proc/<pid>/exe` link (`None` if it cannot
    /// be read); what tells `python3` running gunicorn from any other.
    pub exe: Option<String>,
    /// Its command line, arguments separated by spaces, control characters
    /// replaced and cut at [`MAX_CMDLINE_CHARS`] (see [`sanitize_cmdline`]);
    /// empty for kernel threads or when it cannot be read.
    pub cmdline: String,
    /// Its unit, container and pod, from `/proc/<pid>/cgroup`.
    pub workload: Workload,
}

/// Counts from one refresh, for metrics and the benchmark.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RefreshStats {
    /// Listeners whose owner is known after this refresh.
    pub known: u64,
    /// Listeners (with an inode) whose owner is not known.
    pub unknown: u64,
    /// Processes whose fds could not be examined (EACCES/EPERM on their fd
    /// directory, fd links or, with a namespace filter, `ns/net`: no
    /// CAP_SYS_PTRACE / CAP_DAC_READ_SEARCH over them). 0 when no search ran.
    pub denied: u64,
    /// Whether a /proc walk ran (only when some listener was new or its
    /// cached owner gone).
    pub searched: bool,
    /// Processes whose fds were read during the walk (the denied ones not
    /// included).
    pub processes_scanned: u64,
    /// fd links read during the walk.
    pub fds_scanned: u64,
}

#[derive(Debug)]
enum State {
    /// Found holding the socket at this fd number, which the next refresh
    /// checks before trusting the owner again.
    Known { owner: Arc<Owner>, fd: u32 },
    /// Searched for without success at this time.
    Missing { searched_at: Instant },
}

#[derive(Debug)]
struct Entry {
    inode: u32,
    state: State,
}

/// Owners of the listeners of one network namespace, kept between
/// refreshes so that /proc is walked only when something changed.
#[derive(Debug)]
pub struct OwnerCache {
    procfs: PathBuf,
    retry: Duration,
    /// By socket cookie; only listeners with an inode.
    entries: CookieMap<Entry>,
}

/// An inode looked for during one walk, and where it was first found.
struct Wanted {
    inode: u32,
    found: Option<(u32, u32)>,
}

impl OwnerCache {
    /// `procfs`: where /proc is mounted (may be e.g. /host/proc). `retry`:
    /// how long a listener whose owner was not found waits before it is
    /// searched for again.
    pub fn new(procfs: PathBuf, retry: Duration) -> Self {
        OwnerCache {
            procfs,
            retry,
            entries: CookieMap::default(),
        }
    }

    /// [`OwnerCache::refresh_with`], listing processes afresh.
    pub fn refresh(
        &mut self,
        now: Instant,
        netns: Option<NsId>,
        listeners: &[(u64, u32)],
    ) -> RefreshStats {
        let mut index = ProcessIndex::new(self.procfs.clone());
        self.refresh_with(now, netns, listeners, &mut index)
    }

    /// Brings the cache in line with the listeners seen now.
    ///
    /// `listeners` is (cookie, inode) of each listening socket of one
    /// namespace; `netns` is that namespace's id, used to read only the fds
    /// of processes in it (`None`: read every process's), as `index` lists
    /// them: one index serves every namespace of a pass, so finding owners
    /// in many namespaces lists /proc once, not once per namespace. Entries for
    /// cookies no longer listed are dropped; each cached owner is confirmed
    /// with one `readlinkat` of its fd, and dropped if that fd no longer is
    /// the socket; then /proc is walked once, by ascending pid, for the
    /// listeners not cached, except those searched for less than `retry`
    /// ago without success. Listeners with inode 0 have no file for any
    /// process to hold, and are neither searched for nor counted.
    pub fn refresh_with(
        &mut self,
        now: Instant,
        netns: Option<NsId>,
        listeners: &[(u64, u32)],
        index: &mut ProcessIndex,
    ) -> RefreshStats {
        let started = Instant::now();
        let mut stats = RefreshStats::default();
        let listed: CookieMap<u32> = listeners
            .iter()
            .copied()
            .filter(|&(_, inode)| inode != 0)
            .collect();
        let proc_dir = open_dir(&self.procfs);

        // A cookie names one socket for the whole boot, so a changed inode
        // would mean a confused caller; starting afresh is safest.
        self.entries.retain(|cookie, entry| {
            listed.get(cookie) == Some(&entry.inode)
                && match &entry.state {
                    State::Known { owner, fd } => proc_dir
                        .as_ref()
                        .is_ok_and(|dir| holds(dir.as_fd(), owner.pid, *fd, entry.inode)),
                    State::Missing { .. } => true,
                }
        });

        let due: Vec<(u64, u32)> = listed
            .iter()
            .map(|(&cookie, &inode)| (cookie, inode))
            .filter(|(cookie, _)| match self.entries.get(cookie) {
                None => true,
                Some(Entry {
                    state: State::Missing { searched_at },
                    ..
                }) => now.saturating_duration_since(*searched_at) >= self.retry,
                Some(_) => false,
            })
            .collect();

        if !due.is_empty() {
            let mut wanted: Vec<Wanted> = due
                .iter()
                .map(|&(_, inode)| Wanted { inode, found: None })
                .collect();
            wanted.sort_unstable_by_key(|w| w.inode);
            wanted.dedup_by_key(|w| w.inode);
            if let Ok(dir) = &proc_dir {
                stats.searched = true;
                let (pids, denied) = index.pids(dir.as_fd(), netns);
                stats.denied += denied;
                search(dir.as_fd(), pids, &mut wanted, &mut stats);
            }
            // Several listeners of one process share one read of its
            // comm and cgroup, and one Owner.
            let mut owners: HashMap<u32, Option<Arc<Owner>>> = HashMap::new();
            for (cookie, inode) in due {
                let found = wanted
                    .binary_search_by_key(&inode, |w| w.inode)
                    .ok()
                    .and_then(|i| wanted.get(i))
                    .and_then(|w| w.found);
                let known = found.and_then(|(pid, fd)| {
                    let owner = owners
                        .entry(pid)
                        .or_insert_with(|| read_owner(&self.procfs, pid).map(Arc::new))
                        .clone()?;
                    Some(State::Known { owner, fd })
                });
                // An owner that exited between the walk and reading its
                // comm counts as not found: retrying at once could chase a
                // churning process every refresh.
                let state = known.unwrap_or(State::Missing { searched_at: now });
                self.entries.insert(cookie, Entry { inode, state });
            }
        }

        for entry in self.entries.values() {
            match entry.state {
                State::Known { .. } => stats.known += 1,
                State::Missing { .. } => stats.unknown += 1,
            }
        }
        if stats.searched || (proc_dir.is_err() && !listed.is_empty()) {
            tracing::debug!(
                procfs = %self.procfs.display(),
                known = stats.known,
                unknown = stats.unknown,
                denied = stats.denied,
                processes = stats.processes_scanned,
                fds = stats.fds_scanned,
                elapsed_us = started.elapsed().as_micros() as u64,
                error = proc_dir.as_ref().err().map(|e| e.to_string()),
                "searched procfs for listener owners"
            );
        }
        stats
    }

    /// Whether the listener with this cookie was looked for (and found or
    /// not) since it appeared.
    pub fn has_looked_for(&self, cookie: u64) -> bool {
        self.entries.contains_key(&cookie)
    }

    /// The owner of the listener with this cookie, if known.
    pub fn get(&self, cookie: u64) -> Option<&Arc<Owner>> {
        match &self.entries.get(&cookie)?.state {
            State::Known { owner, .. } => Some(owner),
            State::Missing { .. } => None,
        }
    }
}

/// The processes under a procfs mount, by network namespace: listed once
/// and shared by the owner searches of every namespace in one pass.
#[derive(Debug)]
pub struct ProcessIndex {
    procfs: PathBuf,
    /// Every pid, ascending; `None` until asked for.
    all: Option<Vec<u32>>,
    /// Pids by namespace, ascending, and the processes whose namespace
    /// could not be read; `None` until asked for.
    by_netns: Option<(HashMap<NsId, Vec<u32>>, u64)>,
}

impl ProcessIndex {
    /// An index of the processes under `procfs`, built when first asked.
    pub fn new(procfs: PathBuf) -> Self {
        ProcessIndex {
            procfs,
            all: None,
            by_netns: None,
        }
    }

    /// Forgets what was listed, so the next question lists afresh (at the
    /// start of each pass).
    pub fn clear(&mut self) {
        self.all = None;
        self.by_netns = None;
    }

    /// The pids to search for listeners of namespace `netns` (every pid for
    /// `None`), ascending, and the processes whose namespace could not be
    /// read for lack of privilege.
    fn pids(&mut self, proc_dir: BorrowedFd<'_>, netns: Option<NsId>) -> (&[u32], u64) {
        let all = self.all.get_or_insert_with(|| list_pids(proc_dir));
        let Some(want) = netns else {
            return (all, 0);
        };
        let (by_netns, denied) = self.by_netns.get_or_insert_with(|| {
            let mut map: HashMap<NsId, Vec<u32>> = HashMap::new();
            let mut denied = 0;
            let mut path = [0u8; REL_PATH_BYTES];
            for &pid in all.iter() {
                let Some(ns_path) = rel_path(&mut path, format_args!("{pid}/ns/net\0")) else {
                    continue;
                };
                match stat_at(proc_dir, ns_path) {
                    Ok(id) => map.entry(id).or_default().push(pid),
                    Err(e) if is_denied(&e) => denied += 1,
                    // Gone meanwhile: the normal churn of a busy host.
                    Err(_) => {}
                }
            }
            (map, denied)
        });
        (by_netns.get(&want).map_or(&[][..], Vec::as_slice), *denied)
    }

    /// Where procfs is mounted.
    pub fn procfs(&self) -> &Path {
        &self.procfs
    }
}

/// Every pid under `proc_dir`, ascending: readdir order is the kernel's
/// business, lowest pid first is ours.
fn list_pids(proc_dir: BorrowedFd<'_>) -> Vec<u32> {
    let mut dir_buf = DirBuf::new();
    let mut pids = Vec::new();
    // A listing cut short by an error still names processes worth reading.
    let _ = for_each_name(proc_dir, &mut dir_buf, |name| {
        if let Some(pid) = parse_u32(name.to_bytes()) {
            pids.push(pid);
        }
        ControlFlow::Continue(())
    });
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// Walks the processes `pids` under `proc_dir` in order, recording in
/// `wanted` the first (pid, fd) holding each inode, until all are found.
fn search(proc_dir: BorrowedFd<'_>, pids: &[u32], wanted: &mut [Wanted], stats: &mut RefreshStats) {
    let mut dir_buf = DirBuf::new();
    let mut remaining = wanted.len();
    let mut path = [0u8; REL_PATH_BYTES];
    for &pid in pids {
        if remaining == 0 {
            break;
        }
        let Some(fd_path) = rel_path(&mut path, format_args!("{pid}/fd\0")) else {
            continue;
        };
        let fd_dir = match open_dir_at(proc_dir, fd_path) {
            Ok(dir) => dir,
            Err(e) => {
                // Gone (ENOENT, ESRCH) is the normal churn of a busy host.
                if is_denied(&e) {
                    stats.denied += 1;
                }
                continue;
            }
        };
        let mut denied = false;
        // An error part way through the listing means the process exited;
        // what was read before still stands.
        let _ = for_each_name(fd_dir.as_fd(), &mut dir_buf, |name| {
            let Some(fd) = parse_u32(name.to_bytes()) else {
                return ControlFlow::Continue(()); // "." and ".."
            };
            let mut link = [0u8; LINK_BUF_BYTES];
            stats.fds_scanned += 1;
            let inode = match readlink_at(fd_dir.as_fd(), name, &mut link) {
                Ok(target) => socket_inode(target),
                Err(e) => {
                    // Access is decided per process, so one refusal
                    // means every other link would be refused too.
                    if is_denied(&e) {
                        denied = true;
                        return ControlFlow::Break(());
                    }
                    None
                }
            };
            let newly_found = inode
                .and_then(|inode| wanted.binary_search_by_key(&inode, |w| w.inode).ok())
                .and_then(|i| wanted.get_mut(i))
                .filter(|w| w.found.is_none());
            if let Some(w) = newly_found {
                w.found = Some((pid, fd));
                remaining -= 1;
                if remaining == 0 {
                    return ControlFlow::Break(());
                }
            }
            ControlFlow::Continue(())
        });
        if denied {
            stats.denied += 1;
        } else {
            stats.processes_scanned += 1;
        }
    }
}

/// Whether `<pid>/fd/<fd>` under `proc_dir` still is the socket `inode`.
fn holds(proc_dir: BorrowedFd<'_>, pid: u32, fd: u32, inode: u32) -> bool {
    let mut path = [0u8; REL_PATH_BYTES];
    let mut link = [0u8; LINK_BUF_BYTES];
    rel_path(&mut path, format_args!("{pid}/fd/{fd}\0"))
        .and_then(|p| readlink_at(proc_dir, p, &mut link).ok())
        .and_then(socket_inode)
        == Some(inode)
}

/// The owner record of a process that held a wanted socket; `None` if it
/// is gone. A cgroup file that cannot be read only leaves the workload
/// unknown.
fn read_owner(procfs: &Path, pid: u32) -> Option<Owner> {
    let mut comm = Vec::new();
    std::fs::File::open(procfs.join(pid.to_string()).join("comm"))
        .and_then(|f| f.take(MAX_COMM_BYTES).read_to_end(&mut comm))
        .ok()?;
    // Only the kernel's newline goes: a comm may end in a space.
    let comm = comm.strip_suffix(b"\n").unwrap_or(&comm);
    let dir = procfs.join(pid.to_string());
    let exe = std::fs::read_link(dir.join("exe"))
        .ok()
        .map(|p| without_controls(&p.to_string_lossy()));
    let mut cmdline = Vec::new();
    let _ = std::fs::File::open(dir.join("cmdline"))
        .and_then(|f| f.take(MAX_CMDLINE_READ).read_to_end(&mut cmdline));
    Some(Owner {
        pid,
        comm: without_controls(&String::from_utf8_lossy(comm)),
        exe,
        cmdline: sanitize_cmdline(&cmdline),
        workload: cgroup::read(procfs, pid).unwrap_or_default(),
    })
}

/// `text` with control characters as `?`: any process may name itself
/// (prctl PR_SET_NAME) or its executable's path with an escape sequence,
/// which would drive the terminal of whoever reads `snapshot` or `top`.
pub fn without_controls(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// A command line as a label can carry it: the NULs between arguments
/// become spaces, trailing ones go, other control characters and invalid
/// UTF-8 become `?`, and past [`MAX_CMDLINE_CHARS`] it is cut with `...`.
/// (`setproctitle` rewrites the whole area, so a title like
/// `gunicorn: master [app]` arrives as one argument padded with NULs.)
pub fn sanitize_cmdline(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let text = text.trim_end_matches(['\0', ' ']);
    let mut out = String::with_capacity(text.len().min(MAX_CMDLINE_CHARS + 3));
    for (i, c) in text.chars().enumerate() {
        if i == MAX_CMDLINE_CHARS {
            out.push_str("...");
            break;
        }
        out.push(match c {
            '\0' => ' ',
            '\u{fffd}' => '?',
            c if c.is_control() => '?',
            c => c,
        });
    }
    out
}

/// The inode of a `socket:[<inode>]` fd link, without allocating.
fn socket_inode(link: &[u8]) -> Option<u32> {
    parse_u32(link.strip_prefix(b"socket:[")?.strip_suffix(b"]")?)
}

/// A decimal u32 made of digits only, as procfs names pids and fds.
fn parse_u32(digits: &[u8]) -> Option<u32> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u32, |n, &b| {
        let digit = b.checked_sub(b'0').filter(|d| *d <= 9)?;
        n.checked_mul(10)?.checked_add(u32::from(digit))
    })
}

fn is_denied(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EACCES | libc::EPERM))
}

/// Formats a NUL-terminated path relative to the procfs directory into
/// `buf`; the arguments must end in `\0`. `None` only if it does not fit.
fn rel_path<'b>(buf: &'b mut [u8; REL_PATH_BYTES], args: fmt::Arguments<'_>) -> Option<&'b CStr> {
    {
        let mut w: &mut [u8] = &mut buf[..];
        w.write_fmt(args).ok()?;
    }
    CStr::from_bytes_until_nul(buf).ok()
}

/// Opens a directory for listing and as the base of `*at` calls.
fn open_dir(path: &Path) -> io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(path)
}

fn open_dir_at(dir: BorrowedFd<'_>, path: &CStr) -> io::Result<OwnedFd> {
    // SAFETY: a live directory fd and a NUL-terminated path.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            path.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openat just returned this fd, and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `readlinkat` into `buf`; a target that fills the buffer may have been
/// cut short, and is refused rather than misread.
fn readlink_at<'b>(dir: BorrowedFd<'_>, path: &CStr, buf: &'b mut [u8]) -> io::Result<&'b [u8]> {
    // SAFETY: a live directory fd, a NUL-terminated path, and a pointer and
    // length describing our own buffer.
    let n = unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            path.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    let Ok(n) = usize::try_from(n) else {
        return Err(io::Error::last_os_error());
    };
    if n >= buf.len() {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    buf.get(..n)
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))
}

/// (st_dev, st_ino) of what `path` under `dir` leads to, following links:
/// for `<pid>/ns/net`, the namespace itself.
fn stat_at(dir: BorrowedFd<'_>, path: &CStr) -> io::Result<NsId> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: a live directory fd, a NUL-terminated path, and room for a
    // stat of the type the function fills.
    let rc = unsafe { libc::fstatat(dir.as_raw_fd(), path.as_ptr(), st.as_mut_ptr(), 0) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstatat succeeded, so it filled the whole struct.
    let st = unsafe { st.assume_init() };
    #[allow(clippy::useless_conversion)] // the field types differ by target
    Ok((u64::from(st.st_dev), u64::from(st.st_ino)))
}

/// The `getdents64` buffer, aligned as the kernel lays records out.
#[repr(C, align(8))]
struct DirBuf([u8; DIR_BUF_BYTES]);

impl DirBuf {
    fn new() -> Box<Self> {
        Box::new(DirBuf([0; DIR_BUF_BYTES]))
    }
}

/// Calls `f` with each name in a directory read from its current offset,
/// until it breaks or the directory ends. Names borrow the buffer, so
/// listing allocates nothing.
fn for_each_name(
    dir: BorrowedFd<'_>,
    buf: &mut DirBuf,
    mut f: impl FnMut(&CStr) -> ControlFlow<()>,
) -> io::Result<()> {
    const RECLEN_AT: usize = std::mem::offset_of!(libc::dirent64, d_reclen);
    const NAME_AT: usize = std::mem::offset_of!(libc::dirent64, d_name);
    let damaged = || io::Error::new(io::ErrorKind::InvalidData, "malformed getdents64 record");
    loop {
        // SAFETY: a live directory fd, and a pointer and length describing
        // our own buffer.
        let n = unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                dir.as_raw_fd(),
                buf.0.as_mut_ptr(),
                buf.0.len(),
            )
        };
        let Ok(n) = usize::try_from(n) else {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        };
        if n == 0 {
            return Ok(());
        }
        let mut records = buf.0.get(..n).ok_or_else(damaged)?;
        while !records.is_empty() {
            let reclen = records
                .get(RECLEN_AT..RECLEN_AT + 2)
                .and_then(|b| <[u8; 2]>::try_from(b).ok())
                .map(|b| usize::from(u16::from_ne_bytes(b)))
                .ok_or_else(damaged)?;
            if reclen <= NAME_AT {
                return Err(damaged());
            }
            let record = records.get(..reclen).ok_or_else(damaged)?;
            let name = record
                .get(NAME_AT..)
                .and_then(|b| CStr::from_bytes_until_nul(b).ok())
                .ok_or_else(damaged)?;
            if f(name).is_break() {
                return Ok(());
            }
            records = records.get(reclen..).unwrap_or_default();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::os::unix::ffi::OsStrExt;

    const RETRY: Duration = Duration::from_secs(60);

    #[test]
    fn a_process_name_cannot_carry_an_escape_sequence() {
        assert_eq!(without_controls("a\u{1b}]0;PWN\u{7}b"), "a?]0;PWN?b");
        assert_eq!(without_controls("nginx: worker"), "nginx: worker");
    }

    fn inode_of(fd: &impl AsRawFd) -> u32 {
        let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
        socket_inode(link.as_os_str().as_bytes()).unwrap()
    }

    fn cookie_of(fd: &impl AsRawFd) -> u64 {
        let mut cookie = 0u64;
        let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
        // SAFETY: a live socket, and a pointer and length describing a u64.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_COOKIE,
                (&mut cookie as *mut u64).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
        cookie
    }

    fn listener() -> (TcpListener, u64, u32) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let (cookie, inode) = (cookie_of(&l), inode_of(&l));
        (l, cookie, inode)
    }

    fn own_comm() -> String {
        std::fs::read_to_string("/proc/self/comm")
            .unwrap()
            .trim()
            .to_string()
    }

    fn own_netns() -> NsId {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata("/proc/self/ns/net").unwrap();
        (m.dev(), m.ino())
    }

    /// An inode no process holds: that of a socket already closed.
    fn unheld_inode() -> u32 {
        listener().2
    }

    #[test]
    fn finds_this_process_as_owner() {
        let (_l, cookie, inode) = listener();
        let mut cache = OwnerCache::new(PathBuf::from("/proc"), RETRY);
        let stats = cache.refresh(Instant::now(), None, &[(cookie, inode)]);
        assert!(stats.searched);
        assert_eq!((stats.known, stats.unknown), (1, 0), "{stats:?}");
        assert!(stats.processes_scanned >= 1 && stats.fds_scanned >= 1);
        let owner = cache.get(cookie).expect("owner found");
        assert_eq!(owner.pid, std::process::id());
        assert_eq!(owner.comm, own_comm());
        assert_eq!(
            owner.workload,
            cgroup::read(Path::new("/proc"), std::process::id()).unwrap()
        );
    }

    #[test]
    fn the_namespace_filter_keeps_only_its_processes() {
        let (_l, cookie, inode) = listener();
        let mut cache = OwnerCache::new(PathBuf::from("/proc"), RETRY);
        let stats = cache.refresh(Instant::now(), Some(own_netns()), &[(cookie, inode)]);
        assert_eq!(stats.known, 1, "{stats:?}");
        assert_eq!(cache.get(cookie).unwrap().pid, std::process::id());

        let mut cache = OwnerCache::new(PathBuf::from("/proc"), RETRY);
        let stats = cache.refresh(Instant::now(), Some((0, 0)), &[(cookie, inode)]);
        assert!(stats.searched);
        assert_eq!((stats.known, stats.unknown), (0, 1), "{stats:?}");
        assert_eq!(stats.fds_scanned, 0);
        assert!(cache.get(cookie).is_none());
    }

    #[test]
    fn a_cached_owner_is_confirmed_without_a_search() {
        let (_l, cookie, inode) = listener();
        let mut cache = OwnerCache::new(PathBuf::from("/proc"), RETRY);
        cache.refresh(Instant::now(), None, &[(cookie, inode)]);
        let first = Arc::clone(cache.get(cookie).unwrap());
        let stats = cache.refresh(Instant::now(), None, &[(cookie, inode)]);
        assert_eq!(
            stats,
            RefreshStats {
                known: 1,
                ..RefreshStats::default()
            }
        );
        assert!(Arc::ptr_eq(&first, cache.get(cookie).unwrap()));
    }

    #[test]
    fn a_closed_listener_loses_its_owner() {
        let (l, cookie, inode) = listener();
        let mut cache = OwnerCache::new(PathBuf::from("/proc"), RETRY);
        assert_eq!(
            cache
                .refresh(Instant::now(), None, &[(cookie, inode)])
                .known,
            1
        );
        drop(l);
        // Still listed (a dump taken before the close): the fd check
        // fails, a search runs and finds nobody.
        let stats = cache.refresh(Instant::now(), None, &[(cookie, inode)]);
        assert!(stats.searched);
        assert_eq!((stats.known, stats.unknown), (0, 1), "{stats:?}");
        assert!(cache.get(cookie).is_none());
        // No longer listed: forgotten.
        let stats = cache.refresh(Instant::now(), None, &[]);
        assert_eq!(stats, RefreshStats::default());
        assert!(cache.entries.is_empty());
    }

    #[test]
    fn an_unlisted_listener_is_forgotten() {
        let (_l, cookie, inode) = listener();
        let mut cache = OwnerCache::new(PathBuf::from("/proc"), RETRY);
        cache.refresh(Instant::now(), None, &[(cookie, inode)]);
        let stats = cache.refresh(Instant::now(), None, &[]);
        assert_eq!(stats, RefreshStats::default());
        assert!(cache.get(cookie).is_none());
    }

    #[test]
    fn when_the_owner_lets_go_another_holder_takes_over() {
        use std::os::unix::process::CommandExt;
        let (l, cookie, inode) = listener();
        // Let a child inherit the socket; it is a later (higher) pid. Only
        // the child clears close-on-exec, so children that other tests
        // spawn meanwhile do not inherit it too.
        let fd = l.as_raw_fd();
        let mut command = std::process::Command::new("sleep");
        command.arg("30");
        // SAFETY: fcntl is async-signal-safe, and F_SETFD with 0 only
        // clears FD_CLOEXEC on an fd the child has inherited.
        unsafe {
            command.pre_exec(move || {
                if libc::fcntl(fd, libc::F_SETFD, 0) == 0 {
                    Ok(())
                } else {
                    Err(io::Error::last_os_error())
                }
            });
        }
        let mut child = command.spawn().expect("spawn sleep");
        let mut cache = OwnerCache::new(PathBuf::from("/proc"), RETRY);
        cache.refresh(Instant::now(), None, &[(cookie, inode)]);
        let parent = cache.get(cookie).map(|o| o.pid);
        drop(l);
        let stats = cache.refresh(Instant::now(), None, &[(cookie, inode)]);
        let heir = cache.get(cookie).cloned();
        let _ = child.kill();
        let _ = child.wait();

        assert_eq!(parent, Some(std::process::id()), "lowest pid wins");
        assert!(stats.searched);
        let heir = heir.expect("the child holds it");
        assert_eq!(heir.pid, child.id());
        assert_eq!(heir.comm, "sleep");
    }

    #[test]
    fn listeners_of_one_process_share_its_owner() {
        let (_a, cookie_a, inode_a) = listener();
        let (_b, cookie_b, inode_b) = listener();
        let mut cache = OwnerCache::new(PathBuf::from("/proc"), RETRY);
        let stats = cache.refresh(
            Instant::now(),
            None,
            &[
                (cookie_a, inode_a),
                (cookie_b, inode_b),
                (cookie_a, inode_a),
            ],
        );
        assert_eq!((stats.known, stats.unknown), (2, 0), "{stats:?}");
        assert!(Arc::ptr_eq(
            cache.get(cookie_a).unwrap(),
            cache.get(cookie_b).unwrap()
        ));
    }

    #[test]
    fn inode_zero_is_never_searched() {
        let mut cache = OwnerCache::new(PathBuf::from("/proc"), RETRY);
        let stats = cache.refresh(Instant::now(), None, &[(7, 0)]);
        assert_eq!(stats, RefreshStats::default());
        assert!(cache.get(7).is_none());
    }

    #[test]
    fn a_missing_procfs_leaves_owners_unknown() {
        let mut cache = OwnerCache::new(PathBuf::from("/nonexistent"), RETRY);
        let stats = cache.refresh(Instant::now(), Some((1, 2)), &[(1, 12345), (2, 0)]);
        assert_eq!(
            stats,
            RefreshStats {
                unknown: 1,
                ..RefreshStats::default()
            }
        );
        assert!(cache.get(1).is_none());
    }

    #[test]
    fn an_unfound_listener_waits_for_the_retry_interval() {
        let gone = (11, unheld_inode());
        let mut cache = OwnerCache::new(PathBuf::from("/proc"), RETRY);
        let t0 = Instant::now();
        let stats = cache.refresh(t0, None, &[gone]);
        assert!(stats.searched);
        assert_eq!(stats.unknown, 1);

        let stats = cache.refresh(t0 + RETRY / 2, None, &[gone]);
        assert!(!stats.searched, "{stats:?}");
        assert_eq!(stats.unknown, 1);
        // A caller's clock going backwards does not trigger a search.
        assert!(!cache.refresh(t0, None, &[gone]).searched);

        // A new listener is searched for at once, and found; the waiting
        // one keeps waiting from its last search.
        let (_l, cookie, inode) = listener();
        let stats = cache.refresh(t0 + RETRY / 2, None, &[gone, (cookie, inode)]);
        assert!(stats.searched);
        assert_eq!((stats.known, stats.unknown), (1, 1), "{stats:?}");

        let stats = cache.refresh(t0 + RETRY, None, &[gone, (cookie, inode)]);
        assert!(stats.searched, "retry interval elapsed");
        assert_eq!((stats.known, stats.unknown), (1, 1), "{stats:?}");
        // ...and the search restarts the wait.
        assert!(
            !cache
                .refresh(t0 + RETRY + RETRY / 2, None, &[gone])
                .searched
        );
    }

    #[test]
    fn command_lines_are_bounded_and_printable() {
        assert_eq!(
            sanitize_cmdline(b"/usr/bin/python3\0-m\0app\0"),
            "/usr/bin/python3 -m app"
        );
        assert_eq!(
            sanitize_cmdline(b"gunicorn: master [app]\0\0\0\0"),
            "gunicorn: master [app]"
        );
        assert_eq!(sanitize_cmdline(b"a\nb\x1b[31m\xff"), "a?b?[31m?");
        assert_eq!(sanitize_cmdline(b""), "");
        let long = sanitize_cmdline(&[b'x'; 1000]);
        assert_eq!(long.len(), MAX_CMDLINE_CHARS + 3);
        assert!(long.ends_with("..."));
        let wide = sanitize_cmdline("é".repeat(200).as_bytes());
        assert_eq!(wide.chars().count(), MAX_CMDLINE_CHARS + 3);
    }

    #[test]
    fn owners_name_their_executable_and_command_line() {
        let (_l, cookie, inode) = listener();
        let mut cache = OwnerCache::new(PathBuf::from("/proc"), RETRY);
        cache.refresh(Instant::now(), None, &[(cookie, inode)]);
        let owner = cache.get(cookie).expect("owner found");
        let exe = std::env::current_exe().unwrap();
        assert_eq!(owner.exe.as_deref(), exe.to_str());
        let first_arg = std::env::args().next().unwrap();
        assert!(owner.cmdline.starts_with(&first_arg), "{}", owner.cmdline);
    }

    #[test]
    fn one_index_serves_every_namespace_of_a_pass() {
        let (_l, cookie, inode) = listener();
        let proc_dir = open_dir(Path::new("/proc")).unwrap();
        let mut index = ProcessIndex::new(PathBuf::from("/proc"));
        let (pids, _) = index.pids(proc_dir.as_fd(), Some(own_netns()));
        assert!(pids.contains(&std::process::id()));
        assert!(pids.windows(2).all(|w| w[0] < w[1]), "ascending");
        let (none, _) = index.pids(proc_dir.as_fd(), Some((0, 0)));
        assert!(none.is_empty());
        let mut cache = OwnerCache::new(PathBuf::from("/proc"), RETRY);
        let stats = cache.refresh_with(
            Instant::now(),
            Some(own_netns()),
            &[(cookie, inode)],
            &mut index,
        );
        assert_eq!(stats.known, 1);
        index.clear();
        assert!(index.all.is_none() && index.by_netns.is_none());
    }

    #[test]
    fn socket_links_parse_without_surprises() {
        assert_eq!(socket_inode(b"socket:[12345]"), Some(12345));
        assert_eq!(socket_inode(b"socket:[4294967295]"), Some(u32::MAX));
        assert_eq!(socket_inode(b"socket:[4294967296]"), None);
        assert_eq!(socket_inode(b"socket:[]"), None);
        assert_eq!(socket_inode(b"socket:[12a]"), None);
        assert_eq!(socket_inode(b"socket:[-1]"), None);
        assert_eq!(socket_inode(b"socket:[1"), None);
        assert_eq!(socket_inode(b"pipe:[12345]"), None);
        assert_eq!(socket_inode(b"/tmp/socket:[1]"), None);
        assert_eq!(socket_inode(b""), None);
        assert_eq!(parse_u32(b"0"), Some(0));
        assert_eq!(parse_u32(b"."), None);
        assert_eq!(parse_u32(b".."), None);
        assert_eq!(parse_u32(b"self"), None);
    }

    #[test]
    fn relative_paths_fit_the_largest_numbers() {
        let mut buf = [0u8; REL_PATH_BYTES];
        let (pid, fd) = (u32::MAX, u32::MAX);
        let p = rel_path(&mut buf, format_args!("{pid}/fd/{fd}\0")).unwrap();
        assert_eq!(p.to_bytes(), b"4294967295/fd/4294967295");
        let p = rel_path(&mut buf, format_args!("{pid}/ns/net\0")).unwrap();
        assert_eq!(p.to_bytes(), b"4294967295/ns/net");
        let long = "x".repeat(REL_PATH_BYTES);
        assert!(rel_path(&mut buf, format_args!("{long}\0")).is_none());
    }

    /// Timing of a search over the whole of this machine's /proc (a wanted
    /// inode nobody holds, so nothing stops it early) and of a refresh that
    /// only confirms a cached owner. Run with
    /// `cargo test --release --lib owners -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn timing() {
        let rounds = 20;
        let mut cache = OwnerCache::new(PathBuf::from("/proc"), Duration::ZERO);
        let gone = [(1, unheld_inode())];
        let mut stats = RefreshStats::default();
        let started = Instant::now();
        for _ in 0..rounds {
            stats = cache.refresh(Instant::now(), None, &gone);
        }
        let walk = started.elapsed() / rounds;
        println!(
            "full walk: {walk:?} per refresh, {} processes, {} fds, {} denied",
            stats.processes_scanned, stats.fds_scanned, stats.denied
        );
        let netns = Some(own_netns());
        let started = Instant::now();
        for _ in 0..rounds {
            stats = cache.refresh(Instant::now(), netns, &gone);
        }
        println!(
            "full walk, netns filter: {:?} per refresh, {} processes, {} fds, {} denied",
            started.elapsed() / rounds,
            stats.processes_scanned,
            stats.fds_scanned,
            stats.denied
        );

        let (_l, cookie, inode) = listener();
        let mut cache = OwnerCache::new(PathBuf::from("/proc"), RETRY);
        let started = Instant::now();
        stats = cache.refresh(Instant::now(), None, &[(cookie, inode)]);
        println!(
            "first search for own listener: {:?}, {} processes, {} fds",
            started.elapsed(),
            stats.processes_scanned,
            stats.fds_scanned
        );
        let rounds = 1000;
        let started = Instant::now();
        for _ in 0..rounds {
            stats = cache.refresh(Instant::now(), None, &[(cookie, inode)]);
        }
        assert!(!stats.searched);
        println!(
            "confirm-only refresh, 1 listener: {:?}",
            started.elapsed() / rounds
        );
    }

    /// The same full walk on a loaded machine: first with 1000 more
    /// processes, then also with 10,000 more fds in this one. Run as
    /// [`timing`] is.
    #[test]
    #[ignore]
    fn timing_loaded() {
        fn walk(label: &str) {
            let mut cache = OwnerCache::new(PathBuf::from("/proc"), Duration::ZERO);
            let gone = [(1, unheld_inode())];
            let rounds = 10;
            let mut stats = RefreshStats::default();
            let started = Instant::now();
            for _ in 0..rounds {
                stats = cache.refresh(Instant::now(), None, &gone);
            }
            println!(
                "{label}: {:?} per refresh, {} processes, {} fds, {} denied",
                started.elapsed() / rounds,
                stats.processes_scanned,
                stats.fds_scanned,
                stats.denied
            );
        }
        let mut children: Vec<_> = (0..1000)
            .map(|_| {
                std::process::Command::new("sleep")
                    .arg("60")
                    .spawn()
                    .unwrap()
            })
            .collect();
        walk("full walk, +1000 processes");
        let null = std::fs::File::open("/dev/null").unwrap();
        let fds: Vec<OwnedFd> = (0..10_000)
            .map(|_| null.as_fd().try_clone_to_owned().unwrap())
            .collect();
        walk("full walk, +1000 processes, +10000 fds");
        for child in &mut children {
            let _ = child.kill();
            let _ = child.wait();
        }
        walk("full walk, +10000 fds");
        drop(fds);
    }
}
