//! Oracle test: `ss` (iproute2) is the independent judge of every figure the
//! exporter reports.
//!
//! Inside a fresh network namespace the test builds a randomized but static
//! mix of listeners, queued and accepted connections, unread data, blocked
//! senders and a `SO_REUSEPORT` group with one stuck member, then takes the
//! exporter's view twice (`snapshot --format json`, then a running daemon's
//! `/metrics`) and compares both with what `ss` says, in both directions.
//!
//! The mix is drawn from a seeded xorshift generator; the seed is printed,
//! and `SOCKDIAG_ORACLE_SEED=<seed>` replays a run.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use common::report::Report;
use common::rng::{Rng, Seed};
use common::{Daemon, Metrics, listen, ss, start_connect, wait_connected};
use serde_json::Value;
use socket2::Socket;

// ---------------------------------------------------------------------------
// Socket helpers the harness lacks

/// Accept-queue length and limit of a listener as the kernel keeps them:
/// for a LISTEN socket, `tcp_info` carries `sk_ack_backlog` in
/// `tcpi_unacked` and `sk_max_ack_backlog` in `tcpi_sacked`. Asking the
/// socket itself keeps the build loop off `ss`, which is slow on a host with
/// many sockets.
fn accept_queue(l: &Socket) -> (u32, u32) {
    // SAFETY: tcp_info is plain data; the kernel writes at most `len` bytes.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    let rc = unsafe {
        libc::getsockopt(
            l.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    assert_eq!(
        rc,
        0,
        "TCP_INFO on a listener: {}",
        std::io::Error::last_os_error()
    );
    (info.tcpi_unacked, info.tcpi_sacked)
}

/// `SO_MEMINFO` (asm-generic value, as on x86 and arm), which the libc
/// crate does not export for every target.
const SO_MEMINFO: libc::c_int = 55;

/// The listener's drop counter (`sk_drops`), from the socket itself: the
/// build loop waits on it to know that a SYN was dropped rather than
/// guessing from a timeout, which a loaded machine could outlast.
fn listener_drops(l: &Socket) -> u32 {
    let mut meminfo = [0u32; 9];
    let mut len = std::mem::size_of_val(&meminfo) as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into the array.
    let rc = unsafe {
        libc::getsockopt(
            l.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_MEMINFO,
            meminfo.as_mut_ptr().cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "SO_MEMINFO: {}", std::io::Error::last_os_error());
    meminfo[libc::SK_MEMINFO_DROPS as usize]
}

/// Bytes a socket holds that it could not send yet (`SIOCOUTQNSD`).
fn not_sent(s: &Socket) -> libc::c_int {
    let mut n: libc::c_int = 0;
    // SAFETY: the ioctl writes one int.
    let rc = unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCOUTQNSD, &mut n) };
    assert_eq!(rc, 0, "SIOCOUTQNSD: {}", std::io::Error::last_os_error());
    n
}

/// The socket's inode, as `ss -e` prints it (`ino:`).
fn inode(s: &Socket) -> u64 {
    // SAFETY: fstat fills a plain struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::fstat(s.as_raw_fd(), &mut st) };
    assert_eq!(rc, 0, "fstat: {}", std::io::Error::last_os_error());
    st.st_ino
}

/// Waits (bounded) until the listener's queue holds `len` connections: the
/// server learns of a connection one ACK after the client does, and the next
/// SYN must not overtake it or the kernel's full check would race.
fn wait_queue_len(l: &Socket, len: u32, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let (now, _) = accept_queue(l);
        if now == len {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: accept queue stuck at {now}, expected {len}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Accepts one connection from a non-blocking listener, waiting at most 2 s.
fn accept_within(l: &Socket, what: &str) -> Socket {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(true)
                    .expect("non-blocking accepted socket");
                return s;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                let left = deadline.saturating_duration_since(Instant::now());
                assert!(!left.is_zero(), "{what}: nothing to accept within 2 s");
                let mut pfd = libc::pollfd {
                    fd: l.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                unsafe { libc::poll(&mut pfd, 1, left.as_millis().max(1) as i32) };
            }
            Err(e) => panic!("{what}: accept: {e}"),
        }
    }
}

/// One non-blocking accept; `None` when the queue is empty.
fn try_accept(l: &Socket) -> Option<Socket> {
    match l.accept() {
        Ok((s, _)) => {
            s.set_nonblocking(true)
                .expect("non-blocking accepted socket");
            Some(s)
        }
        Err(e) if e.kind() == ErrorKind::WouldBlock => None,
        Err(e) => panic!("accept: {e}"),
    }
}

/// Connects and waits for the handshake (bounded).
fn connect(addr: SocketAddr) -> Socket {
    let c = start_connect(addr);
    assert!(
        wait_connected(&c, Duration::from_secs(2)),
        "connect to {addr} did not complete within 2 s"
    );
    c
}

/// Writes until the kernel says EAGAIN and stays there, with a small locked
/// send buffer so the amount stays bounded whatever the autotuning limits
/// are. The first EAGAIN only means the send buffer is full for now: it
/// drains into the peer's receive buffer and would leave no Send-Q behind,
/// so writing goes on until the socket stays unwritable while holding bytes
/// it cannot send (the peer's window is closed).
fn fill_send_queue(rng: &mut Rng, s: &Socket) -> usize {
    s.set_send_buffer_size(rng.range(8, 64) as usize * 1024)
        .expect("SO_SNDBUF");
    let chunk = rng.bytes(4096);
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut total = 0;
    loop {
        match s.send(&chunk) {
            Ok(n) => total += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                let mut pfd = libc::pollfd {
                    fd: s.as_raw_fd(),
                    events: libc::POLLOUT,
                    revents: 0,
                };
                if unsafe { libc::poll(&mut pfd, 1, 100) } == 0 && not_sent(s) > 0 {
                    return total;
                }
            }
            Err(e) => panic!("filling a send queue: {e}"),
        }
        assert!(
            Instant::now() < deadline && total < 64 << 20,
            "send queue never filled ({total} bytes written)"
        );
    }
}

/// Sends a few random bytes nobody will read, half of the time.
fn maybe_send(rng: &mut Rng, s: &Socket) {
    if rng.chance(50) {
        let len = rng.range(1, 64) as usize;
        let data = rng.bytes(len);
        let n = s.send(&data).expect("small write on a fresh connection");
        assert_eq!(n, data.len(), "a small write fits any send buffer");
    }
}

// ---------------------------------------------------------------------------
// Building the mix

#[derive(Debug, Clone, Copy, PartialEq)]
enum Fill {
    /// limit + 1 queued (some accepted before), plus one client in SYN-SENT
    /// whose retransmitted SYNs keep the drop counter moving.
    Full,
    /// Some queued, below the limit.
    Partial,
    /// Accepted connections only.
    Accepted,
    /// Accepted connections, then some queued.
    Mixed,
    Empty,
}

/// Where a listener's clients connect.
#[derive(Debug, Clone, Copy)]
enum Target {
    V4Loopback,
    /// Any of 127.0.0.1-20 (a wildcard listener takes them all).
    V4Any,
    /// 127.0.0.2-20: reaches the wildcard listener of a port whose
    /// 127.0.0.1 has its own listener.
    V4NotLoopback,
    V6Loopback,
    /// IPv4 and IPv6 clients, alternating.
    DualStack,
}

impl Target {
    fn pick(self, rng: &mut Rng, i: u64) -> IpAddr {
        let v4 = |rng: &mut Rng, lo| IpAddr::V4(Ipv4Addr::new(127, 0, 0, rng.range(lo, 20) as u8));
        match self {
            Target::V4Loopback => IpAddr::V4(Ipv4Addr::LOCALHOST),
            Target::V4Any => v4(rng, 1),
            Target::V4NotLoopback => v4(rng, 2),
            Target::V6Loopback => IpAddr::V6(Ipv6Addr::LOCALHOST),
            Target::DualStack if i % 2 == 0 => v4(rng, 1),
            Target::DualStack => IpAddr::V6(Ipv6Addr::LOCALHOST),
        }
    }
}

#[derive(Default)]
struct Mix {
    listeners: Vec<Socket>,
    accepted: Vec<Socket>,
    clients: Vec<Socket>,
    /// Indices into `clients` of connections waiting in an accept queue.
    queued_clients: Vec<usize>,
    /// Indices into `clients` of accepted connections.
    accepted_clients: Vec<usize>,
    /// Ports that must not be drawn again.
    used_ports: BTreeSet<u16>,
    /// The reuseport group's address, and the inode of its stuck member.
    group: Option<(SocketAddr, u64)>,
    /// Listeners whose queue holds connections and has room for one more:
    /// (listener index, port, target, queued now).
    roomy: Vec<(usize, u16, Target, u32)>,
    description: Vec<String>,
}

impl Mix {
    /// A port outside the ephemeral range (32768-60999), so that no client
    /// socket can hold it.
    fn port(&mut self, rng: &mut Rng) -> u16 {
        for _ in 0..1000 {
            let p = rng.range(10_000, 30_000) as u16;
            if self.used_ports.insert(p) {
                return p;
            }
        }
        panic!("no unused port drawn in 1000 tries");
    }

    fn listener(
        &mut self,
        addr: SocketAddr,
        backlog: u32,
        reuseport: bool,
        v6only: Option<bool>,
    ) -> usize {
        let l = listen(addr, backlog as i32, reuseport, v6only);
        l.set_nonblocking(true).expect("non-blocking listener");
        let (len, limit) = accept_queue(&l);
        assert_eq!((len, limit), (0, backlog), "fresh listener on {addr}");
        self.listeners.push(l);
        self.listeners.len() - 1
    }

    /// Connections each fill asks for: (accepted, queued, one in SYN-SENT).
    fn counts(rng: &mut Rng, fill: Fill, backlog: u32) -> (u64, u64, bool) {
        match fill {
            Fill::Full => (rng.range(0, 2), u64::from(backlog) + 1, true),
            Fill::Partial => (0, rng.range(1, u64::from(backlog) - 1), false),
            Fill::Accepted => (rng.range(1, 4), 0, false),
            Fill::Mixed => (rng.range(1, 3), rng.range(1, u64::from(backlog)), false),
            Fill::Empty => (0, 0, false),
        }
    }

    fn populate(
        &mut self,
        rng: &mut Rng,
        li: usize,
        port: u16,
        (accepted, queued, syn_sent): (u64, u64, bool),
        target: Target,
    ) {
        let local = self.listeners[li]
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .expect("listener address");
        let what = format!("listener {local}");
        let offset = rng.range(0, 1);
        let mut n = 0;
        let mut next = |rng: &mut Rng| {
            n += 1;
            SocketAddr::new(target.pick(rng, n + offset), port)
        };
        for _ in 0..accepted {
            let c = connect(next(rng));
            maybe_send(rng, &c);
            let s = accept_within(&self.listeners[li], &what);
            if rng.chance(40) {
                // Bytes the client never reads: Recv-Q on role=client.
                maybe_send(rng, &s);
            }
            self.accepted.push(s);
            self.accepted_clients.push(self.clients.len());
            self.clients.push(c);
        }
        for i in 0..queued {
            let c = connect(next(rng));
            maybe_send(rng, &c);
            wait_queue_len(&self.listeners[li], i as u32 + 1, &what);
            self.queued_clients.push(self.clients.len());
            self.clients.push(c);
        }
        if syn_sent {
            let l = &self.listeners[li];
            let before = listener_drops(l);
            let c = start_connect(next(rng));
            let deadline = Instant::now() + Duration::from_secs(2);
            while listener_drops(l) == before {
                assert!(
                    Instant::now() < deadline,
                    "{what}: full, yet no SYN dropped within 2 s"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            self.clients.push(c);
        }
        let limit = accept_queue(&self.listeners[li]).1;
        if !syn_sent && queued > 0 && queued < u64::from(limit) {
            self.roomy.push((li, port, target, queued as u32));
        }
        self.description.push(format!(
            "{what} backlog {limit}: {accepted} accepted, {queued} queued{}",
            if syn_sent { ", 1 in SYN-SENT" } else { "" }
        ));
    }

    /// A reuseport group on 127.0.0.1 where one member never accepts: it
    /// fills up and drops, while the others accept everything.
    fn reuseport_group(&mut self, rng: &mut Rng) {
        let port = self.port(rng);
        let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
        let members = rng.range(2, 4) as usize;
        let stuck = rng.range(0, members as u64 - 1) as usize;
        let stuck_backlog = rng.range(1, 4) as u32;
        let first = self.listeners.len();
        for m in 0..members {
            let backlog = if m == stuck {
                stuck_backlog
            } else {
                rng.range(8, 16) as u32
            };
            self.listener(addr, backlog, true, None);
        }
        let (stuck_l, others) = (
            first + stuck,
            (first..first + members)
                .filter(|&i| i != first + stuck)
                .collect::<Vec<_>>(),
        );

        // Lands a just-connected client: accepted if it reached a draining
        // member, queued if it reached the stuck one.
        let land = |mix: &mut Mix, c: Socket, stuck_before: u32| {
            let deadline = Instant::now() + Duration::from_secs(2);
            loop {
                if let Some(s) = others.iter().find_map(|&i| try_accept(&mix.listeners[i])) {
                    mix.accepted.push(s);
                    mix.accepted_clients.push(mix.clients.len());
                    break;
                }
                if accept_queue(&mix.listeners[stuck_l]).0 > stuck_before {
                    mix.queued_clients.push(mix.clients.len());
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "reuseport client reached no member's queue within 2 s"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            mix.clients.push(c);
        };

        let mut attempts = 0;
        loop {
            let (len, limit) = accept_queue(&self.listeners[stuck_l]);
            if len > limit {
                break;
            }
            attempts += 1;
            assert!(
                attempts <= 400,
                "stuck member not full after 400 clients ({len}/{limit})"
            );
            let c = connect(addr);
            maybe_send(rng, &c);
            land(self, c, len);
        }
        // Keep connecting until one client hashes to the full member: its
        // SYN is dropped (the member's drop counter says so) and it stays in
        // SYN-SENT, retransmitting.
        let mut syn_sent = false;
        'clients: for _ in 0..200 {
            let stuck_socket = &self.listeners[stuck_l];
            let (len, drops) = (accept_queue(stuck_socket).0, listener_drops(stuck_socket));
            let c = start_connect(addr);
            let deadline = Instant::now() + Duration::from_secs(2);
            loop {
                if wait_connected(&c, Duration::from_millis(5)) {
                    land(self, c, len);
                    continue 'clients;
                }
                if listener_drops(&self.listeners[stuck_l]) > drops {
                    self.clients.push(c);
                    syn_sent = true;
                    break 'clients;
                }
                assert!(
                    Instant::now() < deadline,
                    "reuseport client neither connected nor dropped within 2 s"
                );
            }
        }
        assert!(
            syn_sent,
            "no client hashed to the stuck member in 200 tries"
        );
        for &i in &others {
            if let Some(s) = try_accept(&self.listeners[i]) {
                panic!(
                    "a connection {:?} reached a draining member after its client was landed",
                    s.peer_addr().ok()
                );
            }
            assert_eq!(
                accept_queue(&self.listeners[i]).0,
                0,
                "draining member left with a queue"
            );
        }
        let (len, limit) = accept_queue(&self.listeners[stuck_l]);
        assert_eq!(len, limit + 1, "stuck member is exactly full");
        self.group = Some((addr, inode(&self.listeners[stuck_l])));
        self.description.push(format!(
            "reuseport group {addr}: {members} members, member socket #{stuck} stuck (backlog {stuck_backlog}, inode {}), 1 in SYN-SENT",
            inode(&self.listeners[stuck_l])
        ));
    }

    fn build(rng: &mut Rng) -> Mix {
        let mut mix = Mix::default();
        let v4 = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let v4_any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        let v6_any = IpAddr::V6(Ipv6Addr::UNSPECIFIED);

        // (address, port, reuseport, v6only, target) of every lone listener.
        let mut plan: Vec<(IpAddr, u16, bool, Option<bool>, Target)> = Vec::new();
        for _ in 0..rng.range(2, 3) {
            let p = mix.port(rng);
            plan.push((v4, p, false, None, Target::V4Loopback));
        }
        for _ in 0..rng.range(1, 2) {
            let p = mix.port(rng);
            plan.push((v4_any, p, false, None, Target::V4Any));
        }
        for _ in 0..rng.range(1, 2) {
            let p = mix.port(rng);
            plan.push((v6, p, false, Some(true), Target::V6Loopback));
        }
        // The same port on 127.0.0.1 and on 0.0.0.0 (possible with
        // SO_REUSEPORT on both; they form two groups of one): a connection
        // belongs to the exact address if it listens, else to the wildcard.
        let shared = mix.port(rng);
        plan.push((v4, shared, true, None, Target::V4Loopback));
        plan.push((v4_any, shared, true, None, Target::V4NotLoopback));

        let mut fills = vec![
            Fill::Full,
            Fill::Full,
            Fill::Partial,
            Fill::Mixed,
            Fill::Accepted,
        ];
        let extra = [
            Fill::Full,
            Fill::Partial,
            Fill::Accepted,
            Fill::Mixed,
            Fill::Empty,
        ];
        while fills.len() < plan.len() {
            fills.push(extra[rng.range(0, extra.len() as u64 - 1) as usize]);
        }
        rng.shuffle(&mut fills);

        for ((ip, port, reuseport, v6only, target), fill) in plan.into_iter().zip(fills) {
            let backlog = match fill {
                Fill::Full => rng.range(1, 5),
                Fill::Partial => rng.range(3, 10),
                Fill::Accepted => rng.range(1, 10),
                Fill::Mixed => rng.range(2, 10),
                Fill::Empty => rng.range(1, 100),
            } as u32;
            let li = mix.listener(SocketAddr::new(ip, port), backlog, reuseport, v6only);
            let counts = Mix::counts(rng, fill, backlog);
            mix.populate(rng, li, port, counts, target);
        }

        // Dual stack, reached by IPv4 (v4-mapped) and IPv6 clients both in
        // its queue and among its accepted connections (clients alternate
        // families, so two of each suffice).
        let port = mix.port(rng);
        let backlog = rng.range(2, 6) as u32;
        let full = rng.chance(50);
        let queued = if full {
            u64::from(backlog) + 1
        } else {
            rng.range(2, u64::from(backlog))
        };
        let li = mix.listener(SocketAddr::new(v6_any, port), backlog, false, Some(false));
        mix.populate(rng, li, port, (2, queued, full), Target::DualStack);

        mix.reuseport_group(rng);

        // Blocked senders. Server side: an accepted connection whose client
        // never reads (Send-Q on role=server).
        let s = rng.range(0, mix.accepted.len() as u64 - 1) as usize;
        let n = fill_send_queue(rng, &mix.accepted[s]);
        mix.description.push(format!(
            "server side of one accepted connection wrote {n} bytes until EAGAIN"
        ));
        // Client side: into a connection still queued and into an accepted
        // one, neither read by the server (Send-Q on role=client; the queued
        // one also piles bytes into the accept queue).
        for kind in ["queued", "accepted"] {
            let pool = if kind == "queued" {
                &mix.queued_clients
            } else {
                &mix.accepted_clients
            };
            let c = pool[rng.range(0, pool.len() as u64 - 1) as usize];
            let n = fill_send_queue(rng, &mix.clients[c]);
            mix.description.push(format!(
                "client of one {kind} connection wrote {n} bytes until EAGAIN"
            ));
        }

        // A late connection into a queue that already holds older ones:
        // the oldest age must be the oldest connection's, and a gap wider
        // than the time between two ss readings tells oldest from youngest.
        std::thread::sleep(Duration::from_millis(1500));
        let (li, port, target, queued) =
            mix.roomy[rng.range(0, mix.roomy.len() as u64 - 1) as usize];
        let family_pick = rng.range(0, 1);
        let c = connect(SocketAddr::new(target.pick(rng, family_pick), port));
        maybe_send(rng, &c);
        wait_queue_len(&mix.listeners[li], queued + 1, "late connection");
        mix.queued_clients.push(mix.clients.len());
        mix.clients.push(c);
        mix.description.push(format!(
            "1.5 s later, one more queued connection on port {port}"
        ));
        mix
    }
}

// ---------------------------------------------------------------------------
// Reading ss

/// One `ss -tanemi` line.
#[derive(Debug, Clone)]
struct SsLine {
    state: String,
    recv_q: u64,
    send_q: u64,
    local: SocketAddr,
    peer: String,
    inode: u64,
    cookie: u64,
    uid: u64,
    drops: Option<u64>,
    /// `lastsnd:` in ms (ss leaves it out when 0).
    lastsnd_ms: u64,
}

impl SsLine {
    fn peer_port(&self) -> Option<u16> {
        self.peer.rsplit_once(':').and_then(|(_, p)| p.parse().ok())
    }

    /// What must not change while the views are compared.
    fn signature(&self) -> String {
        format!(
            "{} {} {} {} {}",
            self.state, self.recv_q, self.send_q, self.local, self.peer
        )
    }
}

/// Parses a local address as `ss` prints it. `common::parse_ss` reads `*`
/// as 0.0.0.0, but ss prints a dual-stack `::` listener (v6only:0) as `*`
/// and an IPv4 wildcard as `0.0.0.0`, so here `*` is `::`.
fn ss_local(text: &str) -> SocketAddr {
    let (host, port) = text
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("no port in {text:?}"));
    let port: u16 = port
        .parse()
        .unwrap_or_else(|_| panic!("bad port in {text:?}"));
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ip = match host {
        "*" => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        h => h
            .parse()
            .unwrap_or_else(|_| panic!("bad address in {text:?}")),
    };
    SocketAddr::new(ip, port)
}

fn read_ss() -> Vec<SsLine> {
    // One call for everything: every dump walks the host-wide hash tables,
    // which costs most of a second when the host is busy.
    ss(&["-tanemi"])
        .iter()
        .map(|line| {
            let mut t = line.split_whitespace();
            let mut field = || t.next().unwrap_or_else(|| panic!("short ss line {line:?}"));
            let state = field().to_string();
            let recv_q = field().parse().expect("ss Recv-Q");
            let send_q = field().parse().expect("ss Send-Q");
            let local = ss_local(field());
            let peer = field().to_string();
            let rest: Vec<&str> = t.collect();
            let tagged = |tag: &str| rest.iter().find_map(|w| w.strip_prefix(tag));
            let number = |tag: &str| {
                tagged(tag).map(|v| {
                    v.parse::<u64>()
                        .unwrap_or_else(|_| panic!("{tag} in {line:?}"))
                })
            };
            let drops = tagged("skmem:(").map(|skmem| {
                skmem
                    .trim_end_matches(')')
                    .split(',')
                    .find_map(|f| f.strip_prefix('d'))
                    .and_then(|d| d.parse().ok())
                    .unwrap_or_else(|| panic!("no drop count in {line:?}"))
            });
            SsLine {
                state,
                recv_q,
                send_q,
                local,
                peer,
                inode: number("ino:").unwrap_or_else(|| panic!("no ino: in {line:?}")),
                cookie: tagged("sk:")
                    .map(|c| {
                        u64::from_str_radix(c, 16).unwrap_or_else(|_| panic!("sk: in {line:?}"))
                    })
                    .unwrap_or_else(|| panic!("no sk: in {line:?}")),
                uid: number("uid:").unwrap_or(0),
                drops,
                lastsnd_ms: number("lastsnd:").unwrap_or(0),
            }
        })
        .collect()
}

fn signatures<'a>(lines: impl IntoIterator<Item = &'a SsLine>) -> Vec<String> {
    let mut v: Vec<String> = lines.into_iter().map(SsLine::signature).collect();
    v.sort();
    v
}

/// Reads ss until nothing has changed for 1.5 s (bounded). Delayed ACKs
/// and blocked senders take a moment to come to rest, and a blocked sender's
/// first zero-window probe (one RTO, 200 ms or more, after the window
/// closed) can still move a last KiB across: two readings close together
/// would call the mix static too early.
fn settle() -> Vec<SsLine> {
    const QUIET: Duration = Duration::from_millis(1500);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut previous = read_ss();
    let mut quiet_since = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = read_ss();
        if signatures(&now) != signatures(&previous) {
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= QUIET {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "the socket mix did not come to rest within 10 s"
        );
        previous = now;
    }
}

fn ss_state(name: &str) -> &'static str {
    match name {
        "ESTAB" => "established",
        "SYN-SENT" => "syn_sent",
        "SYN-RECV" => "syn_recv",
        "FIN-WAIT-1" => "fin_wait1",
        "FIN-WAIT-2" => "fin_wait2",
        "TIME-WAIT" => "time_wait",
        "CLOSE-WAIT" => "close_wait",
        "LAST-ACK" => "last_ack",
        "CLOSING" => "closing",
        "UNCONN" | "CLOSE" => "close",
        other => panic!("unknown ss state {other:?}"),
    }
}

fn family(ip: &IpAddr) -> &'static str {
    if ip.is_ipv4() { "ipv4" } else { "ipv6" }
}

/// A TcpExt counter of this namespace, read straight from procfs.
fn tcp_ext(name: &str) -> u64 {
    let text =
        std::fs::read_to_string("/proc/self/net/netstat").expect("reading /proc/self/net/netstat");
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (
        lines.next().expect("TcpExt names line"),
        lines.next().expect("TcpExt values line"),
    );
    let i = names
        .split_whitespace()
        .position(|n| n == name)
        .unwrap_or_else(|| panic!("TcpExt {name} missing"));
    values
        .split_whitespace()
        .nth(i)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("TcpExt {name} value"))
}

// ---------------------------------------------------------------------------
// What ss says the figures are

type ListenAddr = (IpAddr, u16);
/// (address, port, member).
type ListenerId = (IpAddr, u16, Option<u32>);
/// (role, port); `None` is the folded `other`.
type PortId = (String, Option<u16>);

#[derive(Debug, Clone)]
struct OracleListener {
    inode: u64,
    cookie: u64,
    uid: u64,
    length: u64,
    limit: u64,
    drops_before: u64,
    drops_after: u64,
}

#[derive(Debug, Clone, Default)]
struct OracleQueue {
    queued: u64,
    bytes: u64,
    syn: u64,
    oldest_before_ms: u64,
    oldest_after_ms: u64,
    /// Recv-Q of the listener(s) on this address, summed over a group.
    listener_length: u64,
}

#[derive(Debug, Clone, Default, PartialEq)]
struct Port {
    states: BTreeMap<String, u64>,
    send: u64,
    recv: u64,
}

struct Oracle {
    listeners: BTreeMap<ListenerId, OracleListener>,
    queues: BTreeMap<ListenAddr, OracleQueue>,
    ports: BTreeMap<PortId, Port>,
    sockets: u64,
}

impl Oracle {
    /// Static figures from `before`; the drop counters and ages, which grow,
    /// from both readings.
    fn new(before: &[SsLine], after: &[SsLine]) -> Oracle {
        let listening: Vec<&SsLine> = before.iter().filter(|l| l.state == "LISTEN").collect();
        let mut groups: BTreeMap<ListenAddr, Vec<&SsLine>> = BTreeMap::new();
        for l in &listening {
            groups
                .entry((l.local.ip(), l.local.port()))
                .or_default()
                .push(l);
        }
        let mut listeners = BTreeMap::new();
        for (&(ip, port), members) in &mut groups {
            members.sort_by_key(|l| l.cookie);
            let alone = members.len() == 1;
            for (i, l) in members.iter().enumerate() {
                let later = after
                    .iter()
                    .find(|a| a.cookie == l.cookie && a.state == "LISTEN")
                    .unwrap_or_else(|| {
                        panic!("listener {} gone from the second ss reading", l.local)
                    });
                let id = (ip, port, if alone { None } else { Some(i as u32) });
                listeners.insert(
                    id,
                    OracleListener {
                        inode: l.inode,
                        cookie: l.cookie,
                        uid: l.uid,
                        length: l.recv_q,
                        limit: l.send_q,
                        drops_before: l
                            .drops
                            .unwrap_or_else(|| panic!("ss printed no drops for {}", l.local)),
                        drops_after: later
                            .drops
                            .unwrap_or_else(|| panic!("ss printed no drops for {}", l.local)),
                    },
                );
            }
        }
        let listening_ports: BTreeSet<u16> = listening.iter().map(|l| l.local.port()).collect();
        // The exact address if something listens there, else the wildcard
        // of the socket's family (v4-mapped sockets are IPv6 sockets).
        let owner = |local: &SocketAddr| -> Option<ListenAddr> {
            let exact = (local.ip(), local.port());
            if groups.contains_key(&exact) {
                return Some(exact);
            }
            let any = match local.ip() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            };
            groups
                .contains_key(&(any, local.port()))
                .then_some((any, local.port()))
        };
        let in_accept_queue =
            |l: &SsLine| l.inode == 0 && (l.state == "ESTAB" || l.state == "CLOSE-WAIT");

        let mut queues: BTreeMap<ListenAddr, OracleQueue> = groups
            .iter()
            .map(|(k, members)| {
                let q = OracleQueue {
                    listener_length: members.iter().map(|l| l.recv_q).sum(),
                    ..OracleQueue::default()
                };
                (*k, q)
            })
            .collect();
        let mut ports: BTreeMap<PortId, Port> = BTreeMap::new();
        let mut sockets = 0;
        for l in before.iter().filter(|l| l.state != "LISTEN") {
            sockets += 1;
            let key = if listening_ports.contains(&l.local.port()) {
                ("server".to_string(), Some(l.local.port()))
            } else {
                (
                    "client".to_string(),
                    Some(
                        l.peer_port()
                            .unwrap_or_else(|| panic!("no peer port: {l:?}")),
                    ),
                )
            };
            let p = ports.entry(key.clone()).or_default();
            *p.states.entry(ss_state(&l.state).to_string()).or_default() += 1;
            p.send += l.send_q;
            p.recv += l.recv_q;
            if key.0 != "server" {
                continue;
            }
            let Some(addr) = owner(&l.local) else {
                continue;
            };
            let q = queues.get_mut(&addr).expect("owner is a listening address");
            if l.state == "SYN-RECV" {
                q.syn += 1;
            } else if in_accept_queue(l) {
                q.queued += 1;
                q.bytes += l.recv_q;
                q.oldest_before_ms = q.oldest_before_ms.max(l.lastsnd_ms);
                let later = after
                    .iter()
                    .find(|a| a.cookie == l.cookie)
                    .unwrap_or_else(|| {
                        panic!("queued connection gone from the second ss reading: {l:?}")
                    });
                q.oldest_after_ms = q.oldest_after_ms.max(later.lastsnd_ms);
            }
        }
        Oracle {
            listeners,
            queues,
            ports,
            sockets,
        }
    }

    /// Leaves out every figure on `port`: the daemon's own HTTP port, which
    /// our scrapes keep changing.
    fn without_port(mut self, port: u16) -> Oracle {
        self.listeners.retain(|k, _| k.1 != port);
        self.queues.retain(|k, _| k.1 != port);
        self.ports.retain(|k, _| k.1 != Some(port));
        self
    }
}

// ---------------------------------------------------------------------------
// The exporter's view, from JSON or from /metrics

#[derive(Debug, Clone)]
struct OurListener {
    family: String,
    length: u64,
    limit: u64,
    /// `None` where the view does not claim one (a one-off snapshot).
    peak: Option<u64>,
    full_seconds: Option<f64>,
    drops: Option<u64>,
    /// JSON only.
    inode: Option<u64>,
    cookie: Option<u64>,
    uid: Option<u64>,
}

#[derive(Debug, Clone)]
struct OurQueue {
    family: String,
    /// JSON only.
    queued: Option<u64>,
    bytes: u64,
    syn: u64,
    oldest_seconds: Option<f64>,
}

struct Ours {
    listeners: BTreeMap<ListenerId, OurListener>,
    queues: BTreeMap<ListenAddr, OurQueue>,
    ports: BTreeMap<PortId, Port>,
}

impl Ours {
    fn without_port(mut self, port: u16) -> Ours {
        self.listeners.retain(|k, _| k.1 != port);
        self.queues.retain(|k, _| k.1 != port);
        self.ports.retain(|k, _| k.1 != Some(port));
        self
    }
}

fn json_u64(v: &Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("JSON field {field} is not a u64 in {v}"))
}

fn json_str<'a>(v: &'a Value, field: &str) -> &'a str {
    v[field]
        .as_str()
        .unwrap_or_else(|| panic!("JSON field {field} is not a string in {v}"))
}

fn json_ip(v: &Value) -> IpAddr {
    json_str(v, "address")
        .parse()
        .unwrap_or_else(|_| panic!("JSON address in {v}"))
}

fn from_json(doc: &Value, report: &mut Report) -> Ours {
    let mut listeners = BTreeMap::new();
    let list = doc["listeners"]["listeners"]
        .as_array()
        .expect("JSON listeners.listeners[]");
    for l in list {
        let id = (
            json_ip(l),
            json_u64(l, "port") as u16,
            l["member"].as_u64().map(|m| m as u32),
        );
        let ours = OurListener {
            family: json_str(l, "family").to_string(),
            length: json_u64(l, "queue_length"),
            limit: json_u64(l, "queue_limit"),
            peak: l["peak_length"].as_u64(),
            full_seconds: l["full_seconds"].as_f64(),
            drops: l["drops"].as_u64(),
            inode: Some(json_u64(l, "inode")),
            cookie: Some(json_u64(l, "cookie")),
            uid: Some(json_u64(l, "uid")),
        };
        if listeners.insert(id, ours).is_some() {
            report.fail(format!("JSON: listener {id:?} listed twice"));
        }
    }
    let mut queues = BTreeMap::new();
    let conns = &doc["connections"];
    for q in conns["queues"]
        .as_array()
        .expect("JSON connections.queues[]")
    {
        let id = (json_ip(q), json_u64(q, "port") as u16);
        let ours = OurQueue {
            family: json_str(q, "family").to_string(),
            queued: Some(json_u64(q, "queued")),
            bytes: json_u64(q, "queued_bytes"),
            syn: json_u64(q, "syn_queue_length"),
            oldest_seconds: q["oldest_seconds"].as_f64(),
        };
        if queues.insert(id, ours).is_some() {
            report.fail(format!("JSON: queue {id:?} listed twice"));
        }
    }
    let mut ports = BTreeMap::new();
    for p in conns["ports"].as_array().expect("JSON connections.ports[]") {
        let id = (
            json_str(p, "role").to_string(),
            p["port"].as_u64().map(|v| v as u16),
        );
        let mut states = BTreeMap::new();
        for pair in p["states"].as_array().expect("JSON states[]") {
            let name = pair[0].as_str().expect("state name").to_string();
            let n = pair[1].as_u64().expect("state count");
            if states.insert(name.clone(), n).is_some() {
                report.fail(format!("JSON: port {id:?} lists state {name} twice"));
            }
        }
        let ours = Port {
            states,
            send: json_u64(p, "send_queue_bytes"),
            recv: json_u64(p, "recv_queue_bytes"),
        };
        if ports.insert(id.clone(), ours).is_some() {
            report.fail(format!("JSON: port {id:?} listed twice"));
        }
    }
    Ours {
        listeners,
        queues,
        ports,
    }
}

const PER_SOCKET: [&str; 5] = [
    "sockdiag_accept_queue_length",
    "sockdiag_accept_queue_limit",
    "sockdiag_accept_queue_peak_length",
    "sockdiag_accept_queue_full_seconds_total",
    "sockdiag_listen_drops_total",
];
const PER_ADDRESS: [&str; 3] = [
    "sockdiag_accept_queue_bytes",
    "sockdiag_accept_queue_oldest_seconds",
    "sockdiag_syn_queue_length",
];

fn label_keys(labels: &BTreeMap<String, String>) -> Vec<&str> {
    labels.keys().map(String::as_str).collect()
}

fn as_count(v: f64, what: &str) -> u64 {
    assert!(v >= 0.0 && v.fract() == 0.0, "{what} = {v} is not a count");
    v as u64
}

/// Reads the exporter's figures from `/metrics`, checking label sets on the
/// way: a lone listener has exactly {netns, family, address, port}, a
/// reuseport member also `member`; per-address figures never carry `member`.
fn from_metrics(m: &Metrics, report: &mut Report) -> Ours {
    let ip = |labels: &BTreeMap<String, String>| -> IpAddr {
        labels["address"]
            .parse()
            .unwrap_or_else(|_| panic!("address label {labels:?}"))
    };
    let port = |labels: &BTreeMap<String, String>| -> u16 {
        labels["port"]
            .parse()
            .unwrap_or_else(|_| panic!("port label {labels:?}"))
    };
    // name -> listener id -> value
    let mut per_socket: BTreeMap<&str, BTreeMap<ListenerId, (String, f64)>> = BTreeMap::new();
    let mut per_address: BTreeMap<&str, BTreeMap<ListenAddr, (String, f64)>> = BTreeMap::new();
    for s in &m.0 {
        let name = s.name.as_str();
        let keys = label_keys(&s.labels);
        if let Some(&name) = PER_SOCKET.iter().find(|n| **n == name) {
            let lone = keys == ["address", "family", "netns", "port"];
            let member = keys == ["address", "family", "member", "netns", "port"];
            if !lone && !member || s.labels["netns"] != "host" {
                report.fail(format!("{name}: unexpected labels {:?}", s.labels));
                continue;
            }
            let m = s.labels.get("member").map(|v| {
                v.parse::<u32>()
                    .unwrap_or_else(|_| panic!("member label {v:?}"))
            });
            let id = (ip(&s.labels), port(&s.labels), m);
            if per_socket
                .entry(name)
                .or_default()
                .insert(id, (s.labels["family"].clone(), s.value))
                .is_some()
            {
                report.fail(format!("{name}: series {id:?} exposed twice"));
            }
        } else if let Some(&name) = PER_ADDRESS.iter().find(|n| **n == name) {
            if keys != ["address", "family", "netns", "port"] || s.labels["netns"] != "host" {
                report.fail(format!(
                    "{name}: per-address series with labels {:?}",
                    s.labels
                ));
                continue;
            }
            let id = (ip(&s.labels), port(&s.labels));
            if per_address
                .entry(name)
                .or_default()
                .insert(id, (s.labels["family"].clone(), s.value))
                .is_some()
            {
                report.fail(format!("{name}: more than one series for {id:?}"));
            }
        }
    }
    let lengths = per_socket.get(PER_SOCKET[0]).cloned().unwrap_or_default();
    let mut listeners = BTreeMap::new();
    for (id, (family, length)) in &lengths {
        let value = |name: &str| {
            per_socket
                .get(name)
                .and_then(|series| series.get(id))
                .map(|(_, v)| *v)
        };
        for name in &PER_SOCKET[1..] {
            if value(name).is_none() {
                report.fail(format!("{name}: no series for listener {id:?}"));
            }
        }
        listeners.insert(
            *id,
            OurListener {
                family: family.clone(),
                length: as_count(*length, "accept_queue_length"),
                limit: as_count(value(PER_SOCKET[1]).unwrap_or(0.0), "limit"),
                peak: value(PER_SOCKET[2]).map(|v| as_count(v, "peak")),
                full_seconds: value(PER_SOCKET[3]),
                drops: value(PER_SOCKET[4]).map(|v| as_count(v, "drops")),
                inode: None,
                cookie: None,
                uid: None,
            },
        );
    }
    for name in &PER_SOCKET[1..] {
        for id in per_socket
            .get(name)
            .map(|s| s.keys().cloned().collect::<Vec<_>>())
            .unwrap_or_default()
        {
            if !lengths.contains_key(&id) {
                report.fail(format!(
                    "{name}: series {id:?} without an accept_queue_length"
                ));
            }
        }
    }
    let bytes = per_address.get(PER_ADDRESS[0]).cloned().unwrap_or_default();
    let mut queues = BTreeMap::new();
    for (id, (family, b)) in &bytes {
        let value = |name: &str| {
            per_address
                .get(name)
                .and_then(|s| s.get(id))
                .map(|(_, v)| *v)
        };
        if value(PER_ADDRESS[1]).is_none() || value(PER_ADDRESS[2]).is_none() {
            report.fail(format!("per-address figures of {id:?} incomplete"));
        }
        queues.insert(
            *id,
            OurQueue {
                family: family.clone(),
                queued: None,
                bytes: as_count(*b, "accept_queue_bytes"),
                syn: as_count(value(PER_ADDRESS[2]).unwrap_or(0.0), "syn_queue_length"),
                oldest_seconds: value(PER_ADDRESS[1]),
            },
        );
    }
    for name in &PER_ADDRESS[1..] {
        for id in per_address
            .get(name)
            .map(|s| s.keys().cloned().collect::<Vec<_>>())
            .unwrap_or_default()
        {
            if !bytes.contains_key(&id) {
                report.fail(format!("{name}: series {id:?} without accept_queue_bytes"));
            }
        }
    }

    let mut ports: BTreeMap<PortId, Port> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for s in &m.0 {
        let (want, is_state) = match s.name.as_str() {
            "sockdiag_tcp_connections" => (&["netns", "port", "role", "state"][..], true),
            "sockdiag_tcp_send_queue_bytes" | "sockdiag_tcp_recv_queue_bytes" => {
                (&["netns", "port", "role"][..], false)
            }
            _ => continue,
        };
        if label_keys(&s.labels) != want || s.labels["netns"] != "host" {
            report.fail(format!("{}: unexpected labels {:?}", s.name, s.labels));
            continue;
        }
        let port = match s.labels["port"].as_str() {
            "other" => None,
            p => Some(p.parse().unwrap_or_else(|_| panic!("port label {p:?}"))),
        };
        if !seen.insert((s.name.clone(), s.labels.clone())) {
            report.fail(format!("{}{:?} exposed twice", s.name, s.labels));
            continue;
        }
        let id = (s.labels["role"].clone(), port);
        let p = ports.entry(id.clone()).or_default();
        let n = as_count(s.value, &s.name);
        let slot = if is_state {
            let state = s.labels["state"].clone();
            if n == 0 {
                report.fail(format!("{id:?} exports state {state} with no socket"));
            }
            p.states.entry(state).or_default()
        } else if s.name == "sockdiag_tcp_send_queue_bytes" {
            &mut p.send
        } else {
            &mut p.recv
        };
        *slot = n;
    }
    Ours {
        listeners,
        queues,
        ports,
    }
}

// ---------------------------------------------------------------------------
// Comparing

/// Compares every figure both views share. `fresh` is true for a view taken
/// by a brand-new tracker (the snapshot), which has seen one sample only.
fn compare(report: &mut Report, ours: &Ours, oracle: &Oracle, fresh: bool) {
    report.same_keys("listener", &ours.listeners, &oracle.listeners);
    for (id, ss) in &oracle.listeners {
        let Some(o) = ours.listeners.get(id) else {
            continue;
        };
        let at = format!("listener {id:?}");
        report.eq(format!("{at} family"), o.family.as_str(), family(&id.0));
        report.eq(format!("{at} queue length"), o.length, ss.length);
        report.eq(format!("{at} queue limit"), o.limit, ss.limit);
        // A one-off sample cannot know a peak or a duration and must not
        // claim one; the daemon saw a mix that was static before it started,
        // so its peak over the window is the length now.
        if fresh {
            report.eq(format!("{at} peak of a one-off sample"), o.peak, None);
            report.eq(
                format!("{at} full seconds of a one-off sample"),
                o.full_seconds,
                None,
            );
        } else {
            report.eq(format!("{at} peak length"), o.peak, Some(ss.length));
        }
        match o.drops {
            Some(d) => report.within(format!("{at} drops"), d, ss.drops_before, ss.drops_after),
            None => report.fail(format!(
                "{at} has no drop counter (ss: {})",
                ss.drops_before
            )),
        }
        if fresh {
            // Checked above.
        } else if ss.length > ss.limit {
            if !o.full_seconds.is_some_and(|f| f > 0.0) {
                report.fail(format!(
                    "{at} full all along, full seconds {:?}",
                    o.full_seconds
                ));
            }
        } else {
            report.eq(
                format!("{at} full seconds of a queue never full"),
                o.full_seconds,
                Some(0.0),
            );
        }
        if let Some(inode) = o.inode {
            report.eq(format!("{at} inode"), inode, ss.inode);
        }
        if let Some(cookie) = o.cookie {
            report.eq(format!("{at} cookie"), cookie, ss.cookie);
        }
        if let Some(uid) = o.uid {
            report.eq(format!("{at} uid"), uid, ss.uid);
        }
    }

    report.same_keys("listening address", &ours.queues, &oracle.queues);
    for (id, ss) in &oracle.queues {
        // The listener's Recv-Q and the owner-less connections on its
        // address are two kernel views of one queue; if they disagree in ss
        // itself, the mix is not what this test thinks it is.
        report.eq(
            format!("ss at {id:?}: queued sockets vs listener Recv-Q"),
            ss.queued,
            ss.listener_length,
        );
        let Some(o) = ours.queues.get(id) else {
            continue;
        };
        let at = format!("accept queue {id:?}");
        report.eq(format!("{at} family"), o.family.as_str(), family(&id.0));
        if let Some(queued) = o.queued {
            report.eq(format!("{at} queued"), queued, ss.queued);
        }
        report.eq(format!("{at} queued bytes"), o.bytes, ss.bytes);
        report.eq(format!("{at} SYN queue"), o.syn, ss.syn);
        match o.oldest_seconds {
            None if ss.queued == 0 => {}
            None => report.fail(format!("{at}: {} queued, but no age", ss.queued)),
            Some(s) => {
                let ms = (s * 1000.0).round() as u64;
                if ss.queued == 0 {
                    report.eq(format!("{at} oldest of an empty queue"), ms, 0);
                } else {
                    report.within(
                        format!("{at} oldest (ms)"),
                        ms,
                        ss.oldest_before_ms,
                        ss.oldest_after_ms,
                    );
                }
            }
        }
    }

    report.same_keys("(role, port)", &ours.ports, &oracle.ports);
    for (id, ss) in &oracle.ports {
        if let Some(o) = ours.ports.get(id) {
            report.eq(format!("{id:?} states"), &o.states, &ss.states);
            report.eq(format!("{id:?} Send-Q bytes"), o.send, ss.send);
            report.eq(format!("{id:?} Recv-Q bytes"), o.recv, ss.recv);
        }
    }
}

/// The stuck reuseport member is full while another member is empty, each
/// in a series of its own.
fn check_group(report: &mut Report, ours: &Ours, oracle: &Oracle, group: (SocketAddr, u64)) {
    let (addr, stuck_inode) = group;
    let members: Vec<(&ListenerId, &OracleListener)> = oracle
        .listeners
        .iter()
        .filter(|(k, _)| (k.0, k.1) == (addr.ip(), addr.port()))
        .collect();
    let numbered: Vec<Option<u32>> = members.iter().map(|(k, _)| k.2).collect();
    let want: Vec<Option<u32>> = (0..members.len() as u32).map(Some).collect();
    report.eq(
        format!("reuseport group {addr} members (by ss cookies)"),
        &numbered,
        &want,
    );
    let Some((stuck, _)) = members.iter().find(|(_, l)| l.inode == stuck_inode) else {
        report.fail(format!(
            "ss does not show the stuck member (inode {stuck_inode})"
        ));
        return;
    };
    match ours.listeners.get(*stuck) {
        Some(l) if l.length > l.limit => {}
        other => report.fail(format!(
            "stuck member {stuck:?} not reported full: {other:?}"
        )),
    }
    let empty_other = members
        .iter()
        .filter(|(k, _)| *k != *stuck)
        .any(|(k, _)| ours.listeners.get(*k).is_some_and(|l| l.length == 0));
    if !empty_other {
        report.fail(format!(
            "no other member of {addr} reported with an empty queue"
        ));
    }
}

/// Sanity of the construction itself, judged by ss alone: if the kernel ever
/// stops behaving as this test assumes, it should say so rather than pass
/// while covering nothing.
fn check_coverage(lines: &[SsLine], oracle: &Oracle) {
    let full = oracle
        .listeners
        .values()
        .filter(|l| l.length > l.limit)
        .count();
    assert!(
        full >= 3,
        "expected at least 2 full listeners and the stuck member, ss shows {full}"
    );
    let syn_sent = lines.iter().filter(|l| l.state == "SYN-SENT").count();
    assert!(
        syn_sent >= full,
        "{full} full listeners but {syn_sent} clients in SYN-SENT"
    );
    let send = |role: &str| {
        oracle
            .ports
            .iter()
            .filter(|(k, _)| k.0 == role)
            .map(|(_, p)| p.send)
            .max()
            .unwrap_or(0)
    };
    assert!(send("server") > 1000, "no server-side Send-Q built up");
    assert!(send("client") > 1000, "no client-side Send-Q built up");
    assert!(
        oracle.queues.values().any(|q| q.bytes > 1000),
        "no accept queue holds a blocked sender's bytes"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.inode == 0 && l.local.to_string().starts_with("[::ffff:127.")),
        "no v4-mapped connection queued on the dual-stack listener"
    );
}

// ---------------------------------------------------------------------------

#[test]
fn oracle_against_ss() {
    common::in_netns("oracle_against_ss", || {
        let started = Instant::now();
        let seed = Seed::from_env("SOCKDIAG_ORACLE_SEED", "oracle");
        let mut rng = seed.rng();
        let mix = Mix::build(&mut rng);
        for line in &mix.description {
            println!("  {line}");
        }
        let group = mix.group.expect("the mix has a reuseport group");
        println!(
            "mix built in {:?}: {} listeners, {} clients, {} accepted",
            started.elapsed(),
            mix.listeners.len(),
            mix.clients.len(),
            mix.accepted.len()
        );

        // Phase 1: one snapshot, between two ss readings.
        let before = settle();
        let overflows_before = tcp_ext("ListenOverflows");
        let listen_drops_before = tcp_ext("ListenDrops");
        let whole = common::snapshot_json(&[]);
        let overflows_after = tcp_ext("ListenOverflows");
        let listen_drops_after = tcp_ext("ListenDrops");
        let after = read_ss();
        assert_eq!(
            signatures(&after),
            signatures(&before),
            "the mix changed while the snapshot ran"
        );
        let doc = common::snapshot_host(&whole);
        let oracle = Oracle::new(&before, &after);
        check_coverage(&before, &oracle);

        let mut report = Report::new("snapshot --format json", seed, "ss", "figure");
        report.eq("errors", whole["errors"].clone(), Value::Array(Vec::new()));
        let ours = from_json(doc, &mut report);
        compare(&mut report, &ours, &oracle, true);
        check_group(&mut report, &ours, &oracle, group);
        report.eq(
            "sockets in the dump",
            doc["connections"]["sockets"].as_u64(),
            Some(oracle.sockets),
        );
        report.eq(
            "client ports folded",
            doc["connections"]["client_ports_folded"].as_u64(),
            Some(0),
        );
        let netstat = &doc["netstat"];
        match netstat["listen_overflows"].as_u64() {
            Some(v) => report.within("ListenOverflows", v, overflows_before, overflows_after),
            None => report.fail(format!("no ListenOverflows in {netstat}")),
        }
        match netstat["listen_drops"].as_u64() {
            Some(v) => report.within("ListenDrops", v, listen_drops_before, listen_drops_after),
            None => report.fail(format!("no ListenDrops in {netstat}")),
        }
        let somaxconn: u64 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .expect("reading somaxconn")
            .trim()
            .parse()
            .expect("somaxconn is a number");
        report.eq("somaxconn", netstat["somaxconn"].as_u64(), Some(somaxconn));
        report.finish();
        println!("phase 1 done at {:?}", started.elapsed());

        // Phase 2: a running daemon. `after` was read before it started, so
        // any sample it takes lies between `after` and the final reading.
        let daemon = Daemon::start(&[]);
        let daemon_port = daemon.addr.port();
        let sampled = |m: &Metrics, c: &str| {
            m.value_or_zero("sockdiag_collector_success", &[("collector", c)]) == 1.0
        };
        daemon.wait_for(
            "a connection and a listener sample",
            |m| sampled(m, "connections") && sampled(m, "listeners"),
            |m| format!("{:?}", m.find("sockdiag_collector_success", &[])),
        );
        // Full time needs two listener samples that both saw a queue full;
        // several 50 ms intervals make sure there were.
        std::thread::sleep(Duration::from_millis(300));
        let m = daemon.metrics();
        let overflows_last = tcp_ext("ListenOverflows");
        let listen_drops_last = tcp_ext("ListenDrops");
        let last = read_ss();
        let outside =
            |l: &&SsLine| l.local.port() != daemon_port && l.peer_port() != Some(daemon_port);
        assert_eq!(
            signatures(last.iter().filter(outside)),
            signatures(&before),
            "the mix changed while the daemon ran"
        );

        let mut report = Report::new("daemon /metrics", seed, "ss", "figure");
        let ours = from_metrics(&m, &mut report);
        // The daemon's own listener must show like any lone listener; its
        // figures move with our scrapes, so they are not compared.
        let own = (IpAddr::V4(Ipv4Addr::LOCALHOST), daemon_port, None);
        if !ours.listeners.contains_key(&own) {
            report.fail(format!("the daemon's own listener {own:?} is missing"));
        }
        let oracle = Oracle::new(&after, &last).without_port(daemon_port);
        let ours = ours.without_port(daemon_port);
        compare(&mut report, &ours, &oracle, false);
        check_group(&mut report, &ours, &oracle, group);
        report.eq(
            "client ports folded",
            m.value_or_zero("sockdiag_tcp_client_ports_folded", &[("netns", "host")]),
            0.0,
        );
        let ns = [("netns", "host")];
        // Counters read from procfs before the daemon started and after the
        // scrape bracket the daemon's reading.
        for (name, metric, lo, hi) in [
            (
                "ListenOverflows",
                "sockdiag_netstat_listen_overflows_total",
                overflows_after,
                overflows_last,
            ),
            (
                "ListenDrops",
                "sockdiag_netstat_listen_drops_total",
                listen_drops_after,
                listen_drops_last,
            ),
        ] {
            match m.find(metric, &ns).as_slice() {
                [one] => report.within(name, as_count(one.value, metric), lo, hi),
                other => report.fail(format!("{metric}: expected one series, got {other:?}")),
            }
        }
        report.eq(
            "somaxconn",
            m.value_or_zero("sockdiag_somaxconn", &ns),
            somaxconn as f64,
        );
        for c in ["listeners", "connections", "netstat"] {
            report.eq(
                format!("collector {c} errors"),
                m.value_or_zero("sockdiag_collector_errors_total", &[("collector", c)]),
                0.0,
            );
        }
        report.finish();

        let status = daemon.terminate();
        assert!(status.success(), "daemon exit on SIGTERM: {status}");
        println!("oracle test done in {:?}", started.elapsed());
        drop(mix);
    });
}
