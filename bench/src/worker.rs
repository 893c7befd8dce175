//! A worker holds both ends of its share of the connections.
//!
//! RLIMIT_NOFILE caps one process at 20,000 descriptors (hard limit, not raisable here), so
//! a million connections (two million sockets) need over a hundred holders. Each worker
//! opens its clients to the shared listeners it inherited and accepts as many connections
//! as it opened, from whichever listener has one: which end pairs with which does not
//! matter, only that every process stays under its limit and that the queues never fill.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::{namespace, proc_util};

/// Connections opened between two drains of the accept queues. With a few workers running
/// at once this keeps at most a few thousand connections queued, far below the 16 x 4096
/// the listeners hold, so a blocking connect() never meets a full queue.
const CONNECT_BATCH: u64 = 256;
/// A setup that has not moved for this long is stuck, not slow.
pub const STALL_LIMIT: Duration = Duration::from_secs(60);
/// Per-connect bound: on loopback the handshake completes inside the connect() call.
const CONNECT_TIMEOUT_SECS: libc::time_t = 10;
/// One client in this many sends a few bytes that nobody reads, so that Recv-Q sums are
/// not all zero.
pub const DATA_EVERY: u64 = 10;
pub const DATA: &[u8; 4] = b"ping";
const PROGRESS_EVERY: u64 = 1024;

#[derive(Args, Debug)]
pub struct WorkerArgs {
    /// Global index of this worker's first client (picks source addresses and listeners).
    #[arg(long)]
    first_client: u64,
    /// Clients to open, and connections to accept.
    #[arg(long)]
    clients: u64,
    /// Inherited listener descriptors, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    listen_fds: Vec<RawFd>,
    /// The coordinator's pid: the worker dies with it.
    #[arg(long)]
    parent: i32,
}

/// Source address of client `k`: 1,024 clients per address in 127.1.0.0/16, which keeps the
/// number of connections per (source, destination) pair far below the ephemeral port range.
pub fn client_source(k: u64) -> u32 {
    0x7f01_0000 + 1 + (k / 1024) as u32
}

/// Opens client `k` to `127.0.0.1:port` from its own source address; every tenth one sends
/// [`DATA`].
pub fn connect_client(k: u64, port: u16) -> Result<OwnedFd> {
    let src = client_source(k);
    let what = || {
        let [a, b, c, d] = src.to_be_bytes();
        format!("client {k}: {a}.{b}.{c}.{d} -> 127.0.0.1:{port}")
    };
    let fd = proc_util::socket(libc::AF_INET, libc::SOCK_STREAM, 0)
        .with_context(|| format!("{}: socket()", what()))?;
    // Lets connect() pick the port per 4-tuple instead of bind() reserving one per source
    // address, which is what allows more than 64k connections per destination.
    proc_util::setsockopt(&fd, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, &1i32)
        .with_context(|| format!("{}: IP_BIND_ADDRESS_NO_PORT", what()))?;
    let tv = libc::timeval {
        tv_sec: CONNECT_TIMEOUT_SECS,
        tv_usec: 0,
    };
    proc_util::setsockopt(&fd, libc::SOL_SOCKET, libc::SO_SNDTIMEO, &tv)
        .with_context(|| format!("{}: SO_SNDTIMEO", what()))?;
    let len = proc_util::len_of::<libc::sockaddr_in>();
    proc_util::bind(&fd, &proc_util::sockaddr_v4(src, 0), len)
        .with_context(|| format!("{}: bind()", what()))?;
    if let Err(err) = proc_util::connect(&fd, &proc_util::sockaddr_v4(0x7f00_0001, port), len) {
        let hint = match err.raw_os_error() {
            Some(libc::EINPROGRESS) | Some(libc::EAGAIN) => {
                " (timed out: is the accept queue full?)"
            }
            Some(libc::EADDRNOTAVAIL) => " (out of ephemeral ports for this source address)",
            _ => "",
        };
        return Err(err).with_context(|| format!("{}: connect(){hint}", what()));
    }
    if k.is_multiple_of(DATA_EVERY) {
        // SAFETY: DATA is valid for its length.
        let n = unsafe { libc::write(fd.as_raw_fd(), DATA.as_ptr().cast(), DATA.len()) };
        if n != DATA.len() as isize {
            return Err(io::Error::last_os_error())
                .with_context(|| format!("{}: writing {} bytes", what(), DATA.len()));
        }
    }
    Ok(fd)
}

/// Accepts up to `want` connections from the (non-blocking) listeners, until each of them
/// would block.
pub fn drain(listeners: &[RawFd], want: u64, into: &mut Vec<OwnedFd>) -> Result<u64> {
    let mut got = 0;
    for &l in listeners {
        while got < want {
            let err = match proc_util::accept(l) {
                Ok(fd) => {
                    into.push(fd);
                    got += 1;
                    continue;
                }
                Err(err) => err,
            };
            match err.raw_os_error() {
                Some(libc::EAGAIN) => break,
                // The peer went away before we got to it: not ours to count.
                Some(libc::ECONNABORTED) | Some(libc::EINTR) => continue,
                _ => return Err(err).with_context(|| format!("accept() on listener fd {l}")),
            }
        }
    }
    Ok(got)
}

/// Waits at most `timeout` for any of `listeners` to have a connection to accept.
pub fn wait_readable(listeners: &[RawFd], timeout: Duration) {
    let mut pfds: Vec<libc::pollfd> = listeners
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: pfds is a valid array of the length passed. The result does not matter: the
    // caller drains and checks its own progress either way.
    unsafe {
        libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms);
    }
}

fn listener_port(fd: RawFd) -> Result<u16> {
    // SAFETY: sockaddr_in is plain old data; getsockname writes at most len bytes.
    let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    if unsafe { libc::getsockname(fd, (&mut sa as *mut libc::sockaddr_in).cast(), &mut len) } != 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("listener fd {fd} was not inherited as a socket"));
    }
    if i32::from(sa.sin_family) != libc::AF_INET {
        bail!("listener fd {fd} is not an IPv4 socket");
    }
    Ok(u16::from_be(sa.sin_port))
}

fn report(word: &str, connected: u64, accepted: u64) -> Result<()> {
    say_line(&format!("{word} {connected} {accepted}"))
}

/// Writes one line to the coordinator, at once.
pub fn say_line(line: &str) -> Result<()> {
    let mut out = io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .context("reporting to the coordinator (is it gone?)")
}

/// Tells the coordinator (`ready` and `what`, if anything) that this helper holds what it
/// was asked to build.
pub fn say_ready(what: &str) -> Result<()> {
    let line = if what.is_empty() {
        "ready".to_string()
    } else {
        format!("ready {what}")
    };
    say_line(&line)
}

pub fn worker_main(args: &WorkerArgs) -> Result<ExitCode> {
    proc_util::die_with_parent(args.parent).context("the coordinator is gone")?;
    namespace::raise_nofile_limit()?;
    let ports: Vec<u16> = args
        .listen_fds
        .iter()
        .map(|&fd| listener_port(fd))
        .collect::<Result<_>>()?;
    let n = args.clients;
    let mut clients = Vec::with_capacity(n as usize);
    let mut servers = Vec::with_capacity(n as usize);
    let (mut connected, mut accepted) = (0u64, 0u64);
    let mut last_progress = Instant::now();
    let mut next_report = PROGRESS_EVERY;

    while connected < n || accepted < n {
        if connected < n {
            let end = (connected + CONNECT_BATCH).min(n);
            while connected < end {
                let k = args.first_client + connected;
                let port = ports[(k % ports.len() as u64) as usize];
                clients.push(connect_client(k, port)?);
                connected += 1;
            }
            last_progress = Instant::now();
        }
        let got = drain(&args.listen_fds, n - accepted, &mut servers)?;
        accepted += got;
        if got > 0 {
            last_progress = Instant::now();
        } else if connected == n && accepted < n {
            if last_progress.elapsed() > STALL_LIMIT {
                bail!(
                    "accepted {accepted} of {n} connections and nothing arrived for {} s",
                    STALL_LIMIT.as_secs()
                );
            }
            wait_readable(&args.listen_fds, Duration::from_secs(1));
        }
        if connected + accepted >= next_report {
            report("progress", connected, accepted)?;
            next_report += PROGRESS_EVERY;
        }
    }
    report("ready", connected, accepted)?;
    hold_then_exit()
}

/// Holds every socket until the coordinator closes our stdin (or dies: PDEATHSIG), then
/// exits without closing them one by one: the kernel closes 18,000 sockets faster.
pub fn hold_then_exit() -> ! {
    hold_until_stdin_closes();
    std::process::exit(0);
}

/// Blocks until the coordinator closes our stdin (or dies: PDEATHSIG ends us first). Used by
/// every process whose only job left is to keep its sockets open.
pub fn hold_until_stdin_closes() {
    let mut sink = [0u8; 64];
    let mut stdin = io::stdin().lock();
    loop {
        match stdin.read(&mut sink) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
}
