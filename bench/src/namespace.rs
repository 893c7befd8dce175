//! Entering a private user + network namespace, and making it usable for the benchmark.
//!
//! `unshare(CLONE_NEWUSER)` is refused to a multi-threaded process, so it happens in a freshly
//! forked child just before it executes this binary again. Inside, the child is root of its
//! own user namespace, which owns the new network namespace: it can bring `lo` up and set the
//! per-namespace sysctls without any privilege on the host.

use std::ffi::OsString;
use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use anyhow::{Context, Result};

use crate::proc_util;

/// The coordinator's pid, for the signal handler (0 while there is none).
static CHILD_PID: AtomicI32 = AtomicI32::new(0);
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn forward_signal(_sig: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
    let pid = CHILD_PID.load(Ordering::SeqCst);
    if pid > 0 {
        // SIGKILL rather than forwarding the signal: the coordinator has no cleanup of its
        // own to do, its children die with it through PR_SET_PDEATHSIG, and the namespace
        // disappears with its last process.
        // SAFETY: kill() is async-signal-safe and takes plain integers.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

fn install_signal_forwarding() -> Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value; the handler
        // only touches atomics and calls kill().
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = forward_signal as *const () as libc::sighandler_t;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error())
                    .with_context(|| format!("installing a handler for signal {sig}"));
            }
        }
    }
    Ok(())
}

/// Writes `msg` to stderr from a forked child (no allocation, no locks).
fn raw_stderr(msg: &[u8]) {
    // SAFETY: write() is async-signal-safe; the buffer is valid for its length.
    unsafe {
        libc::write(2, msg.as_ptr().cast(), msg.len());
    }
}

/// Writes a whole buffer to a /proc file in one write(), as the id-map files require.
/// Only async-signal-safe calls: this runs between fork and exec.
fn write_proc_file(path: &std::ffi::CStr, data: &[u8], what: &[u8]) -> io::Result<()> {
    // SAFETY: open/write/close on a NUL-terminated path and a valid buffer.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            let err = io::Error::last_os_error();
            raw_stderr(what);
            return Err(err);
        }
        let n = libc::write(fd, data.as_ptr().cast(), data.len());
        let err = io::Error::last_os_error();
        libc::close(fd);
        if n != data.len() as isize {
            raw_stderr(what);
            return Err(err);
        }
    }
    Ok(())
}

/// Runs this executable with `args` as the only process of a new user + network namespace,
/// waits for it, and returns its exit status. SIGINT/SIGTERM/SIGHUP kill it meanwhile.
pub fn run_in_new_namespace(args: &[OsString]) -> Result<ExitStatus> {
    run_in_new_namespace_with(args, 0)
}

/// [`run_in_new_namespace`] with more namespaces of its own (`extra` CLONE_NEW* flags, e.g.
/// CLONE_NEWNS for a mount namespace).
pub fn run_in_new_namespace_with(args: &[OsString], extra: libc::c_int) -> Result<ExitStatus> {
    let exe = std::env::current_exe().context("locating this executable")?;
    // SAFETY: getuid/getgid/getpid cannot fail.
    let (uid, gid, me) = unsafe { (libc::getuid(), libc::getgid(), libc::getpid()) };
    // Root inside maps to the caller outside: the caller keeps its rights on files, and
    // needs no privilege to write a map of its own id.
    let uid_map = format!("0 {uid} 1").into_bytes();
    let gid_map = format!("0 {gid} 1").into_bytes();

    let mut cmd = Command::new(&exe);
    cmd.args(args);
    // SAFETY: the hook calls only async-signal-safe functions (unshare, open, write, close,
    // prctl, getppid) on buffers prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNET | extra) != 0 {
                let err = io::Error::last_os_error();
                raw_stderr(
                    b"sockdiag-bench: unshare(CLONE_NEWUSER|CLONE_NEWNET) failed; \
                      are unprivileged user namespaces disabled (user.max_user_namespaces, \
                      kernel.apparmor_restrict_unprivileged_userns)?\n",
                );
                return Err(err);
            }
            write_proc_file(
                c"/proc/self/uid_map",
                &uid_map,
                b"sockdiag-bench: writing /proc/self/uid_map failed\n",
            )?;
            // Unprivileged callers must give up setgroups() before they may write gid_map;
            // the file is missing only on kernels older than 3.19.
            match write_proc_file(
                c"/proc/self/setgroups",
                b"deny",
                b"sockdiag-bench: writing /proc/self/setgroups failed\n",
            ) {
                Err(e) if e.raw_os_error() != Some(libc::ENOENT) => return Err(e),
                _ => {}
            }
            write_proc_file(
                c"/proc/self/gid_map",
                &gid_map,
                b"sockdiag-bench: writing /proc/self/gid_map failed\n",
            )?;
            // After the credential change, so that it cannot be reset by it; the getppid()
            // check closes the race with a parent that died before the prctl.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 || libc::getppid() != me {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }

    install_signal_forwarding()?;
    let mut child = cmd.spawn().with_context(|| {
        format!(
            "starting {} in a new user + network namespace",
            exe.display()
        )
    })?;
    let pid = i32::try_from(child.id()).context("child pid out of range")?;
    CHILD_PID.store(pid, Ordering::SeqCst);
    if interrupted() {
        // A signal that arrived between spawn and the store above found no pid to kill.
        proc_util::kill(pid, libc::SIGKILL);
    }
    let status = child
        .wait()
        .context("waiting for the namespace coordinator")?;
    CHILD_PID.store(0, Ordering::SeqCst);
    Ok(status)
}

/// Brings `lo` up: a new network namespace starts with it down, and nothing (not even
/// 127.0.0.1) is reachable until it is up.
pub fn bring_loopback_up() -> Result<()> {
    let sock = proc_util::socket(libc::AF_INET, libc::SOCK_DGRAM, 0)
        .context("creating a socket for interface ioctls")?;
    // SAFETY: ifreq is plain old data; "lo" fits in IFNAMSIZ with its NUL.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(b"lo") {
        *dst = *src as libc::c_char;
    }
    use std::os::fd::AsRawFd;
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write an ifreq we own.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) != 0 {
            return Err(io::Error::last_os_error()).context("SIOCGIFFLAGS on lo");
        }
        ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) != 0 {
            return Err(io::Error::last_os_error()).context("SIOCSIFFLAGS IFF_UP on lo");
        }
    }
    Ok(())
}

/// Widens the ephemeral port range and raises somaxconn in this namespace. Both are
/// per-namespace, so this changes nothing on the host; failures only cost headroom, so
/// they are reported and skipped.
pub fn tune_sysctls() {
    for (path, value) in [
        ("/proc/sys/net/ipv4/ip_local_port_range", "1024 65000"),
        ("/proc/sys/net/core/somaxconn", "65535"),
    ] {
        if let Err(e) = std::fs::write(path, value) {
            eprintln!("sockdiag-bench: warning: could not set {path} to {value:?}: {e}");
        }
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit and returns it.
pub fn raise_nofile_limit() -> Result<u64> {
    // SAFETY: getrlimit/setrlimit on a struct we own.
    unsafe {
        let mut rl: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) != 0 {
            return Err(io::Error::last_os_error()).context("getrlimit(RLIMIT_NOFILE)");
        }
        if rl.rlim_cur < rl.rlim_max {
            rl.rlim_cur = rl.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &rl) != 0 {
                return Err(io::Error::last_os_error())
                    .context("raising the soft RLIMIT_NOFILE to the hard limit");
            }
        }
        Ok(rl.rlim_cur)
    }
}

/// Makes `cmd` start in a network namespace of its own, created from the caller's (which is
/// when the kernel reads the caller's `tcp_child_ehash_entries`).
pub fn in_new_netns(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: unshare is async-signal-safe and touches no memory of ours.
    unsafe {
        cmd.pre_exec(|| {
            if libc::unshare(libc::CLONE_NEWNET) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Makes the directory `dir` for a run, runs it, and removes `dir` with whatever is left in
/// it afterwards, however the run ended (failing to remove it is only a warning).
pub fn with_dir<T>(dir: &std::path::Path, run: impl FnOnce() -> T) -> Result<T> {
    std::fs::create_dir(dir).with_context(|| format!("creating {}", dir.display()))?;
    let out = run();
    if let Err(e) = std::fs::remove_dir_all(dir) {
        eprintln!("sockdiag-bench: warning: removing {}: {e}", dir.display());
    }
    Ok(out)
}

/// The bench's exit code from the coordinator's `status`: its own code when it exited, 130
/// when the user interrupted it (the namespace and its processes are gone with it), else an
/// error naming `what` died.
pub fn exit_code_of(status: ExitStatus, what: &str) -> Result<std::process::ExitCode> {
    if let Some(code) = status.code() {
        return Ok(std::process::ExitCode::from(
            u8::try_from(code).unwrap_or(1),
        ));
    }
    if interrupted() {
        eprintln!("sockdiag-bench: interrupted; the namespace and its processes are gone");
        return Ok(std::process::ExitCode::from(130));
    }
    anyhow::bail!("{what} died: {status}");
}
