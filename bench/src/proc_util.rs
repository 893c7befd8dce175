//! Thin, checked wrappers over the libc calls the bench needs in several places.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use anyhow::{Context, Result};

/// `socket()` with CLOEXEC always set: measured commands must not inherit the bench's
/// sockets, or they would show up as their owners.
pub fn socket(domain: i32, ty: i32, protocol: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the fd is owned by the returned OwnedFd.
    let fd = unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, protocol) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn setsockopt<T>(fd: &OwnedFd, level: i32, name: i32, value: &T) -> io::Result<()> {
    // SAFETY: value points to a live T of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub fn sockaddr_v4(addr: u32, port: u16) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: addr.to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// The length to pass with a socket address of type `T` (sockaddr_in, sockaddr_in6).
pub fn len_of<T>() -> libc::socklen_t {
    std::mem::size_of::<T>() as libc::socklen_t
}

/// `bind()` to the socket address `sa`, of which the kernel reads `len` bytes.
pub fn bind<T>(fd: &OwnedFd, sa: &T, len: libc::socklen_t) -> io::Result<()> {
    // SAFETY: sa is a live T; len is at most its size.
    let rc = unsafe { libc::bind(fd.as_raw_fd(), (sa as *const T).cast(), len) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `connect()` to the socket address `sa`, of which the kernel reads `len` bytes.
pub fn connect<T>(fd: &OwnedFd, sa: &T, len: libc::socklen_t) -> io::Result<()> {
    // SAFETY: sa is a live T; len is at most its size.
    let rc = unsafe { libc::connect(fd.as_raw_fd(), (sa as *const T).cast(), len) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub fn listen(fd: &OwnedFd, backlog: i32) -> io::Result<()> {
    // SAFETY: plain syscall on our socket.
    if unsafe { libc::listen(fd.as_raw_fd(), backlog) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The next connection waiting on `listener` (CLOEXEC, like every socket of the bench).
pub fn accept(listener: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: accept4 with null address pointers; the fd is owned below.
    let fd = unsafe {
        libc::accept4(
            listener,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A TCP listener on 127.0.0.1:`port` (SO_REUSEADDR), non-blocking if asked.
pub fn loopback_listener(port: u16, backlog: i32, nonblock: bool) -> io::Result<OwnedFd> {
    let ty = libc::SOCK_STREAM | if nonblock { libc::SOCK_NONBLOCK } else { 0 };
    let fd = socket(libc::AF_INET, ty, 0)?;
    setsockopt(&fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, &1i32)?;
    let sa = sockaddr_v4(0x7f00_0001, port);
    bind(&fd, &sa, len_of::<libc::sockaddr_in>())?;
    listen(&fd, backlog)?;
    Ok(fd)
}

pub fn kill(pid: i32, sig: i32) {
    if pid > 0 {
        // SAFETY: plain syscall on a pid this process started.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

/// Makes the calling process die with SIGKILL when its parent dies, so that no helper
/// outlives the bench even if the bench itself is killed with SIGKILL.
/// Async-signal-safe: usable in a pre_exec hook.
pub fn die_with_parent(parent: libc::pid_t) -> io::Result<()> {
    // SAFETY: prctl/getppid take and return plain integers.
    unsafe {
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::getppid() != parent {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
    }
    Ok(())
}

/// Makes the child that `cmd` starts die with this process, so that no measured command
/// outlives the bench.
pub fn tie_to_this_process(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: getpid cannot fail.
    let me = unsafe { libc::getpid() };
    // SAFETY: die_with_parent only calls prctl and getppid.
    unsafe {
        cmd.pre_exec(move || die_with_parent(me));
    }
}

/// An anonymous in-memory file, used to collect a child's stderr without a reader thread
/// and without the risk of a full pipe blocking the child.
pub fn memfd(name: &std::ffi::CStr) -> Result<std::fs::File> {
    // SAFETY: name is NUL-terminated; the fd is owned by the returned File.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("memfd_create");
    }
    // SAFETY: fresh descriptor nobody else owns.
    Ok(unsafe { std::fs::File::from_raw_fd(fd) })
}

/// What wait4() tells about a finished child.
pub struct Reaped {
    pub status: i32,
    pub rusage: libc::rusage,
}

impl Reaped {
    pub fn success(&self) -> bool {
        libc::WIFEXITED(self.status) && libc::WEXITSTATUS(self.status) == 0
    }

    pub fn describe(&self) -> String {
        if libc::WIFEXITED(self.status) {
            format!("exit status {}", libc::WEXITSTATUS(self.status))
        } else if libc::WIFSIGNALED(self.status) {
            format!("killed by signal {}", libc::WTERMSIG(self.status))
        } else {
            format!("wait status {:#x}", self.status)
        }
    }

    pub fn cpu_seconds(&self) -> f64 {
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        tv(self.rusage.ru_utime) + tv(self.rusage.ru_stime)
    }

    /// Peak resident set size in bytes (Linux reports ru_maxrss in KiB).
    pub fn max_rss_bytes(&self) -> u64 {
        u64::try_from(self.rusage.ru_maxrss).unwrap_or(0) * 1024
    }
}

fn wait4_blocking(pid: i32) -> io::Result<Reaped> {
    let mut status = 0;
    // SAFETY: rusage is plain old data.
    let mut rusage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: wait4 on a child of ours with valid out-pointers.
        let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut rusage) };
        if rc == pid {
            return Ok(Reaped { status, rusage });
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Waits for child `pid` for at most `timeout`; on time-out kills it with SIGKILL, reaps it
/// and returns `Ok(None)`. Uses a pidfd so that the wall time is not rounded up to a polling
/// interval.
pub fn wait_with_timeout(pid: i32, timeout: Duration) -> io::Result<Option<Reaped>> {
    // SAFETY: pidfd_open takes a pid and flags; the fd is owned below.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if raw < 0 {
        // Kernels before 5.3: no time-out, but still a correct measurement.
        return wait4_blocking(pid).map(Some);
    }
    // SAFETY: fresh descriptor nobody else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(raw as RawFd) };
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            kill(pid, libc::SIGKILL);
            wait4_blocking(pid)?;
            return Ok(None);
        }
        let mut pfd = libc::pollfd {
            fd: pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = i32::try_from(left.as_millis().max(1)).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc > 0 {
            return wait4_blocking(pid).map(Some);
        }
        if rc < 0 {
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }
}

/// Non-blocking check: `Some` once the child has exited (and is reaped).
pub fn try_reap(pid: i32) -> io::Result<Option<Reaped>> {
    let mut status = 0;
    // SAFETY: rusage is plain old data.
    let mut rusage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on a child of ours with valid out-pointers.
    let rc = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut rusage) };
    match rc {
        0 => Ok(None),
        r if r == pid => Ok(Some(Reaped { status, rusage })),
        _ => Err(io::Error::last_os_error()),
    }
}

/// Kills a child we started and reaps it (no-op if it already exited and was reaped).
pub fn kill_and_reap(pid: i32) {
    kill(pid, libc::SIGKILL);
    let _ = wait_with_timeout(pid, Duration::from_secs(30));
}

/// Reads what a child wrote to a memfd, for error messages: at most the last `max` bytes.
pub fn read_tail(file: &mut std::fs::File, max: usize) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let mut buf = Vec::new();
    if file.seek(SeekFrom::Start(0)).is_err() || file.read_to_end(&mut buf).is_err() {
        return String::new();
    }
    let start = buf.len().saturating_sub(max);
    String::from_utf8_lossy(&buf[start..]).trim().to_string()
}
