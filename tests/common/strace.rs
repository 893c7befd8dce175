//! Fault injection: the exporter daemon runs under `strace -f`, which makes
//! chosen system calls of any of its threads fail, so tests can prove the
//! daemon heals from faults the kernel would only rarely produce.
//!
//! What strace 6.1 does, measured here (as root and as an ordinary user,
//! inside the test's user + network namespace):
//!
//! - `when=` counts per thread, not per process: `when=1` fails the first
//!   matching call of *every* thread. The daemon enters another namespace
//!   on a fresh thread each time, so `when=1` alone would fail every retry.
//! - With `-P PATH`, only calls naming exactly that path string are counted
//!   and injected (`when=2` skips the first open of PATH however many other
//!   files were opened before). No suffixes, no globs; `-P` also adds the
//!   `realpath` of PATH as resolved in strace itself, and says so on stderr
//!   unless `--quiet=all` (`-qqq` does not silence it).
//! - Injection applies only to calls in the `-e trace=` set.
//! - `-o FILE PROG` and `-D` block fatal signals by default (`-I3`/`-I4`):
//!   `-I2` lets SIGTERM through, and strace then detaches cleanly, resuming
//!   a thread it holds. With `-D` the tracer is a grandchild and the daemon
//!   our own child, so detaching leaves the daemon running, and the daemon
//!   can be killed by its pid like any other.
//! - `--seccomp-bpf` must not be used: its filter outlives strace, and once
//!   strace detaches every traced call fails with ENOSYS.
//! - `glibc`'s `recv()` is the `recvfrom` system call on x86-64; so are the
//!   HTTP server's reads, which injected `recvfrom` faults hit too.
//!
//! So "fail only the first open of PATH, by any thread" is `when=1` plus
//! `delay_exit`, which holds the failing thread after the failure is
//! written, plus a watcher here that detaches strace as soon as it sees
//! that line. Whoever waits for the held thread (the sampler waits for the
//! thread it sent into a namespace) cannot open PATH again before strace is
//! gone; a thread that does not wait for it and opens PATH within those
//! milliseconds would fail too, and [`TracedDaemon::injections`] shows it.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{Daemon, exporter_bin};

/// How long strace holds the thread whose open it failed, waiting for the
/// watcher to detach it. Only a watcher slower than this lets a later open
/// of the same path fail too (and [`TracedDaemon::injections`] shows it).
const HOLD: Duration = Duration::from_secs(5);

/// How long detaching strace may take.
const DETACH_DEADLINE: Duration = Duration::from_secs(10);

/// Which system calls fail, and how.
#[derive(Debug, Clone)]
pub struct Fault {
    args: Vec<String>,
    /// Detach strace after the first injection.
    once: bool,
}

impl Fault {
    /// The first `openat` of any of `paths` (exact strings, as the daemon
    /// passes them) by any thread fails with `errno` (e.g. `EMFILE`); no
    /// later one does.
    pub fn first_open(paths: &[&str], errno: &str) -> Fault {
        let mut args = vec!["-e".to_string(), "trace=openat".to_string()];
        for p in paths {
            args.extend(["-P".to_string(), p.to_string()]);
        }
        args.extend([
            "-e".to_string(),
            format!(
                "inject=openat:error={errno}:delay_exit={}:when=1",
                HOLD.as_micros()
            ),
        ]);
        Fault { args, once: true }
    }

    /// Every `nth` `recvfrom` of each thread (the `nth`, `2 * nth`, ...)
    /// fails with `errno` (e.g. `ENOBUFS`), for as long as strace stays
    /// attached. That includes the HTTP server's reads: scrape with
    /// [`TracedDaemon::metrics`], which retries.
    pub fn every_nth_recv(nth: u32, errno: &str) -> Fault {
        let args = vec![
            "-e".to_string(),
            "trace=recvfrom".to_string(),
            // Only failed calls are written: injected ones and EAGAIN.
            "-e".to_string(),
            "status=failed".to_string(),
            "-e".to_string(),
            format!("inject=recvfrom:error={errno}:when={nth}+{nth}"),
        ];
        Fault { args, once: false }
    }
}

/// The daemon running under strace. Dropping it kills strace (if still
/// attached) and the daemon, each by pid.
pub struct TracedDaemon {
    daemon: Daemon,
    dir: PathBuf,
    trace: PathBuf,
    log: PathBuf,
    stop: Arc<AtomicBool>,
    watcher: Option<JoinHandle<()>>,
}

impl std::ops::Deref for TracedDaemon {
    type Target = Daemon;
    fn deref(&self) -> &Daemon {
        &self.daemon
    }
}

impl TracedDaemon {
    /// Starts the daemon as [`Daemon::start`] does (same flags, same wait
    /// for `/healthz`), under strace injecting `fault`; its stderr goes to
    /// [`TracedDaemon::log`].
    pub fn start(fault: Fault, args: &[&str]) -> TracedDaemon {
        check_strace();
        let dir = super::tempdir("strace");
        let trace = dir.join("trace");
        let log = dir.join("stderr");
        let mut cmd = Command::new("strace");
        cmd.args(["-D", "-I2", "-f", "--quiet=all"])
            .arg("-o")
            .arg(&trace)
            .args(["-e", "signal=none"])
            .args(&fault.args)
            .arg("--")
            .arg(exporter_bin())
            .stderr(std::fs::File::create(&log).expect("creating the daemon's log file"));
        let stop = Arc::new(AtomicBool::new(false));
        // The first injection can come before the daemon answers /healthz
        // (its first samples are part of being ready), so the watcher must
        // run before the daemon does; it learns the tracer from the trace.
        let watcher = fault.once.then(|| {
            let (trace, stop) = (trace.clone(), stop.clone());
            std::thread::spawn(move || detach_after_first_injection(&trace, &stop))
        });
        let started = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            Daemon::start_command(cmd, args)
        }));
        let daemon = match started {
            Ok(d) => d,
            Err(panic) => {
                stop.store(true, Ordering::Relaxed);
                eprintln!(
                    "daemon under strace did not start; its stderr (and strace's):\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
                std::panic::resume_unwind(panic);
            }
        };
        assert!(
            fault.once || tracer_of(daemon.child.id()).is_some(),
            "the daemon is not traced; strace said:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        TracedDaemon {
            daemon,
            dir,
            trace,
            log,
            stop,
            watcher,
        }
    }

    /// What strace wrote: one line per traced call (failed ones only for
    /// [`Fault::every_nth_recv`]).
    pub fn trace(&self) -> String {
        std::fs::read_to_string(&self.trace).unwrap_or_default()
    }

    /// How many calls strace made fail so far.
    pub fn injections(&self) -> usize {
        self.trace().matches("(INJECTED)").count()
    }

    /// The daemon's stderr (with strace's own complaints, if any).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether strace has let go of the daemon.
    pub fn detached(&self) -> bool {
        tracer_of(self.daemon.child.id()).is_none()
    }

    /// Ends the injection: detaches strace (the daemon keeps running) and
    /// waits until it is gone.
    pub fn stop_injecting(&self) {
        let pid = self.daemon.child.id();
        if let Some(tracer) = tracer_of(pid) {
            detach(tracer, pid);
        }
    }

    /// Scrapes `/metrics`, retrying (bounded) when an injected fault broke
    /// the HTTP exchange.
    pub fn metrics(&self) -> super::Metrics {
        let mut last = String::new();
        for _ in 0..20 {
            match self.daemon.try_get("/metrics") {
                Ok((200, body)) => return super::Metrics::parse(&body),
                Ok((status, body)) => last = format!("status {status}: {body}"),
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("GET /metrics failed 20 times in a row; last: {last}");
    }
}

impl Drop for TracedDaemon {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(w) = self.watcher.take() {
            let _ = w.join();
        }
        // The tracer is not our child (`-D`), so it is found, by pid, as
        // whoever traces our daemon right now: only the strace we started
        // can, and a pid it left behind is never hit.
        if let Some(tracer) = tracer_of(self.daemon.child.id()) {
            unsafe { libc::kill(tracer as libc::pid_t, libc::SIGKILL) };
        }
        // The daemon itself is killed by `Daemon`'s drop, by pid.
        if std::thread::panicking() {
            eprintln!(
                "strace output and daemon log kept in {}",
                self.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn check_strace() {
    let ok = Command::new("strace")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "strace is needed for fault injection (apt-get install strace)"
    );
}

/// A field of `/proc/PID/status` (PID may be any thread's id).
fn status_field(pid: u32, field: &str) -> Option<u32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
}

/// The process tracing `pid`, if any.
fn tracer_of(pid: u32) -> Option<u32> {
    status_field(pid, "TracerPid").filter(|&t| t != 0)
}

/// SIGTERMs `tracer` and waits until `daemon` is no longer traced.
fn detach(tracer: u32, daemon: u32) {
    if tracer_of(daemon) != Some(tracer) {
        return;
    }
    unsafe { libc::kill(tracer as libc::pid_t, libc::SIGTERM) };
    let start = Instant::now();
    while tracer_of(daemon).is_some() {
        assert!(
            start.elapsed() < DETACH_DEADLINE,
            "strace (pid {tracer}) did not detach within {DETACH_DEADLINE:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Watches the trace for the first injected failure, then detaches strace
/// while it still holds the failing thread.
fn detach_after_first_injection(trace: &Path, stop: &AtomicBool) {
    let mut text = String::new();
    while !stop.load(Ordering::Relaxed) {
        text.clear();
        if let Ok(mut f) = std::fs::File::open(trace) {
            let _ = f.read_to_string(&mut text);
        }
        // Lines start with the thread id.
        let tid = text
            .lines()
            .find(|l| l.contains("(INJECTED)"))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|t| t.parse::<u32>().ok());
        if let Some(tid) = tid {
            // Only a thread of our own child, and only its tracer.
            let ours = status_field(tid, "Tgid")
                .and_then(|pid| status_field(pid, "PPid"))
                .is_some_and(|parent| parent == std::process::id());
            if let (true, Some(t)) = (ours, tracer_of(tid)) {
                detach(t, status_field(tid, "Tgid").unwrap_or(tid));
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}
