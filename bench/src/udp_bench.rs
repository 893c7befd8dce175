//! `udp`: the UDP receiver pass at scale.
//!
//! Inside the private namespace, S UDP sockets of which R are receivers: unconnected,
//! bound below `ip_local_port_range` (IPv4, IPv6, a few IPv6 dual-stack, a few
//! SO_REUSEPORT groups of 4), some with a tiny SO_RCVBUF and datagrams queued, some flooded
//! until they drop. The rest are clients on ephemeral ports, half connected to a receiver,
//! half unconnected after one `sendto()`. Worker processes hold them, each under the
//! descriptor limit. Then, round-robin as child processes: a raw UDP inet_diag dump with
//! SKMEMINFO (the floor), the exporter's snapshot with only the udp collector, `ss -uanm`
//! and `ss -ulnm`. The UDP hash table is walked whole for any of these, so their cost grows
//! with S (and with the host's UDP sockets), not with R.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::{Value, json};

use crate::daemon::{self, LISTEN};
use crate::helper::{self, Helper};
use crate::measure::{self, CommandResult, Spec};
use crate::netns_bench::{label, parse_sample};
use crate::report::mib;
use crate::udp_diag::{self, TCP_ESTABLISHED};
use crate::{BenchOpts, namespace, proc_util, report, setup, worker};

/// The namespace's ephemeral range, written explicitly so that which sockets count as
/// receivers does not depend on the kernel's default.
const PORT_RANGE: (u16, u16) = (32768, 60999);
/// Receivers take ports from here up, below the ephemeral range.
const FIRST_PORT: u16 = 20000;
/// Unconnected clients send their one datagram here, where nothing listens: the datagram
/// is dropped as NoPorts and no receiver's queue moves.
const SINK_PORT: u16 = 19999;
/// IPv6 clients autobind to the wildcard address, so they share one port space of 28,232
/// ports; staying at about half of it keeps autobind quick.
const V6_CLIENT_CAP: u64 = 16_000;
/// IPv4 clients bind to 127.2.x.y port 0 (an ephemeral port): this many per address, so
/// that no address's share of the range fills.
const V4_PER_SOURCE: u64 = 8_000;
const CLIENT_V4_NET: u32 = 0x7f02_0000;
/// Source of the IPv4 feeders, apart from the clients'.
const FEEDER_V4: u32 = 0x7f03_0001;
/// SO_RCVBUF asked for by the tiny receivers; the kernel raises it to its minimum (2,304
/// bytes on 6.x, room for two small datagrams).
const TINY_RCVBUF: libc::c_int = 1024;
/// A receive buffer at or below this counts as tiny in the checks (the default is 212,992).
const TINY_LIMIT: u32 = 8192;
/// Datagrams sent to a flooded receiver, many times what its tiny buffer holds.
const FLOOD_DATAGRAMS: u32 = 64;
const FLOOD_SIZE: usize = 200;
const SMALL_DATAGRAM: &[u8; 32] = b"sockdiag-bench udp datagram 32 b";
/// At most this many SO_REUSEPORT groups of [`GROUP_SIZE`].
const MAX_GROUPS: u64 = 8;
const GROUP_SIZE: u64 = 4;
/// Descriptors a worker holds at most: the machine's hard limit is 20,000.
const MAX_FDS_PER_WORKER: u64 = 18_000;
const FD_HEADROOM: u64 = 100;
const WORKER_TIMEOUT: Duration = Duration::from_secs(120);
/// Loopback delivery runs in softirq context, usually inside the send, but under load it
/// may be deferred to ksoftirqd: the census is retried this long.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);
const SS_UANM: &str = "ss -uanm";
/// The floor's wall may exceed its CPU by this much (fork + exec, a few ms) before the
/// table warns that the CPUs were busy.
const FLOOR_GAP_TOLERATED: f64 = 0.005;
const FLOOR_LABEL: &str = "floor (raw inet_diag UDP dump with SKMEMINFO)";

/// Options of `udp`.
#[derive(Args, Debug, Clone)]
pub struct UdpOpts {
    /// UDP sockets in the namespace, receivers and clients included. Accepts a k / M suffix.
    #[arg(long, default_value = "10000", value_name = "S", value_parser = crate::parse_count)]
    pub udp_sockets: u64,

    /// How many of them are receivers (unconnected, bound below the ephemeral range).
    #[arg(long, default_value = "100", value_name = "R", value_parser = crate::parse_count)]
    pub receivers: u64,

    #[command(flatten)]
    pub rounds: crate::RoundOpts,
}

/// Arguments of the hidden `internal-udp-worker`: it recomputes the plan from S and R and
/// builds its share.
#[derive(Args, Debug)]
pub struct UdpWorkerArgs {
    #[arg(long)]
    udp_sockets: u64,
    #[arg(long)]
    receivers: u64,
    /// Also build the receivers and their feeders (one worker does).
    #[arg(long)]
    with_receivers: bool,
    /// Index of this worker's first client.
    #[arg(long)]
    first: u64,
    /// Clients to open.
    #[arg(long)]
    count: u64,
    /// The coordinator's pid: the worker dies with it.
    #[arg(long)]
    parent: i32,
}

// ---------------------------------------------------------------------------------------
// The plan.

/// What a receiver is bound to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bind {
    /// 0.0.0.0
    V4Any,
    /// 127.0.0.1
    V4Lo,
    /// [::] with IPV6_V6ONLY
    V6Any,
    /// [::1]
    V6Lo,
    /// [::] without IPV6_V6ONLY: takes IPv4 datagrams too (ss shows `*:port`)
    Dual,
}

impl Bind {
    fn v6_socket(self) -> bool {
        matches!(self, Bind::V6Any | Bind::V6Lo | Bind::Dual)
    }

    fn takes_v4(self) -> bool {
        matches!(self, Bind::V4Any | Bind::V4Lo | Bind::Dual)
    }

    fn takes_v6(self) -> bool {
        self.v6_socket()
    }
}

/// One receiving socket to build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReceiverPlan {
    pub port: u16,
    pub bind: Bind,
    /// SO_REUSEPORT group (its members share the port).
    pub group: Option<u64>,
    pub tiny: bool,
    /// Small datagrams queued, never read.
    pub datagrams: u32,
    /// Flooded until it drops.
    pub flood: bool,
}

impl ReceiverPlan {
    /// Whether a feeder client sends to it.
    fn fed(&self) -> bool {
        self.datagrams > 0 || self.flood
    }
}

/// One client socket: IPv6 ones autobind to the wildcard, IPv4 ones bind to `source`
/// port 0; `target` is the receiver port it connects to, `None` for an unconnected client
/// that sends one datagram to [`SINK_PORT`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientPlan {
    pub v6: bool,
    pub target: Option<u16>,
    pub source: u32,
}

/// What the whole namespace holds once built.
#[derive(Debug)]
pub struct Plan {
    pub receivers: Vec<ReceiverPlan>,
    pub clients: u64,
    v4_targets: Vec<u16>,
    v6_targets: Vec<u16>,
}

/// The receiver mix: up to [`MAX_GROUPS`] SO_REUSEPORT groups of 4 (one per 25
/// receivers, none below 20), then single receivers on a port each. Of the singles, by
/// index: 0.0.0.0, 127.0.0.1, [::1], [::] v6-only in turn and one in ten dual-stack; one
/// in ten has a tiny buffer and one datagram queued, one in ten a tiny buffer flooded until
/// it drops, one in ten a default buffer with 1-8 datagrams queued.
pub fn receivers(r: u64) -> Vec<ReceiverPlan> {
    let groups = if r >= 20 {
        (r / 25).clamp(1, MAX_GROUPS)
    } else {
        0
    };
    let mut out = Vec::with_capacity(r as usize);
    let mut port = FIRST_PORT;
    for g in 0..groups {
        let bind = [Bind::V4Any, Bind::V6Any, Bind::V4Lo, Bind::V6Lo][(g % 4) as usize];
        for _ in 0..GROUP_SIZE {
            out.push(ReceiverPlan {
                port,
                bind,
                group: Some(g),
                tiny: false,
                datagrams: 0,
                flood: false,
            });
        }
        port += 1;
    }
    for k in 0..r - GROUP_SIZE * groups {
        let bind = match k % 10 {
            0 | 5 => Bind::V4Any,
            1 | 3 | 8 => Bind::V4Lo,
            2 | 6 => Bind::V6Lo,
            4 | 9 => Bind::V6Any,
            _ => Bind::Dual,
        };
        let (tiny, datagrams, flood) = match k % 20 {
            1 | 12 => (true, 1, false),
            5 | 16 => (true, 0, true),
            7 | 19 => (false, 1 + (k % 8) as u32, false),
            _ => (false, 0, false),
        };
        out.push(ReceiverPlan {
            port,
            bind,
            group: None,
            tiny,
            datagrams,
            flood,
        });
        port = port.saturating_add(1);
    }
    out
}

/// The plan for S sockets of which R receivers; every port it uses must be below `low`,
/// the start of the ephemeral range.
pub fn plan(sockets: u64, r: u64, low: u16) -> Result<Plan> {
    if r > sockets {
        bail!("--receivers {r} is more than --udp-sockets {sockets}");
    }
    let ports = u64::from(low.saturating_sub(FIRST_PORT));
    if r > ports {
        bail!(
            "--receivers {r}: at most {ports} fit between port {FIRST_PORT} and the \
             ephemeral range ({low})"
        );
    }
    let receivers = receivers(r);
    let feeders = receivers.iter().filter(|r| r.fed()).count() as u64;
    let Some(clients) = sockets.checked_sub(r + feeders) else {
        bail!(
            "--udp-sockets {sockets} leaves no room for the {feeders} feeder clients {r} \
             receivers need: give at least {}",
            r + feeders
        );
    };
    let targets = |f: fn(Bind) -> bool| {
        let set: BTreeSet<u16> = receivers
            .iter()
            .filter(|r| f(r.bind))
            .map(|r| r.port)
            .collect();
        set.into_iter().collect::<Vec<u16>>()
    };
    Ok(Plan {
        v4_targets: targets(Bind::takes_v4),
        v6_targets: targets(Bind::takes_v6),
        receivers,
        clients,
    })
}

impl Plan {
    /// Client `k`: one in five IPv6 (up to [`V6_CLIENT_CAP`]), even ones connected, spread
    /// over the receivers of their family in turn.
    pub fn client(&self, k: u64) -> ClientPlan {
        let v6 = k.is_multiple_of(5) && k < 5 * V6_CLIENT_CAP;
        let targets = if v6 {
            &self.v6_targets
        } else {
            &self.v4_targets
        };
        let target = (k.is_multiple_of(2) && !targets.is_empty()).then(|| {
            let turn = if v6 { k / 10 } else { k / 2 };
            targets[(turn % targets.len() as u64) as usize]
        });
        let v6_before = k.div_ceil(5).min(V6_CLIENT_CAP);
        let v4_index = k - v6_before;
        ClientPlan {
            v6,
            target,
            source: CLIENT_V4_NET + 1 + (v4_index / V4_PER_SOURCE) as u32,
        }
    }

    fn feeders(&self) -> impl Iterator<Item = &ReceiverPlan> {
        self.receivers.iter().filter(|r| r.fed())
    }

    pub fn ports(&self) -> BTreeSet<u16> {
        self.receivers.iter().map(|r| r.port).collect()
    }

    /// What a census of the namespace must show.
    pub fn expected(&self) -> UdpCensus {
        let mut c = UdpCensus {
            receivers: self.receivers.len() as u64,
            ..UdpCensus::default()
        };
        let mut count = |v6: bool, connected: bool| {
            c.sockets += 1;
            if v6 {
                c.ipv6 += 1;
            } else {
                c.ipv4 += 1;
            }
            c.connected += u64::from(connected);
        };
        for r in &self.receivers {
            count(r.bind.v6_socket(), false);
        }
        for r in self.feeders() {
            count(!r.bind.takes_v4(), true);
        }
        for k in 0..self.clients {
            let cl = self.client(k);
            count(cl.v6, cl.target.is_some());
        }
        for r in &self.receivers {
            if r.fed() {
                c.queued_ports.insert(r.port);
            }
            if r.flood {
                c.dropping_ports.insert(r.port);
            }
            if r.tiny {
                c.tiny_ports.insert(r.port);
            }
        }
        c
    }
}

/// UDP sockets of the namespace by what the bench checks, from a dump or from `ss`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UdpCensus {
    pub sockets: u64,
    pub ipv4: u64,
    pub ipv6: u64,
    pub connected: u64,
    /// Unconnected sockets on a port below the ephemeral range.
    pub receivers: u64,
    /// Receiver ports with a socket whose Recv-Q is not empty.
    pub queued_ports: BTreeSet<u16>,
    /// Receiver ports with a socket that dropped datagrams.
    pub dropping_ports: BTreeSet<u16>,
    /// Receiver ports with a socket whose buffer is at most [`TINY_LIMIT`].
    pub tiny_ports: BTreeSet<u16>,
    /// Recv-Q bytes and drops of every other socket (the plan has none).
    pub other_queued_bytes: u64,
    pub other_drops: u64,
    /// Connected sockets whose peer is not a receiver port.
    pub stray_peers: u64,
    /// Sockets whose buffer figures were missing.
    pub without_meminfo: u64,
}

/// One socket as the census sees it.
struct Seen {
    v6: bool,
    connected: bool,
    sport: u16,
    dport: u16,
    rqueue: u64,
    rcvbuf: Option<u32>,
    drops: Option<u32>,
}

impl UdpCensus {
    fn add(&mut self, s: &Seen, low: u16, ports: &BTreeSet<u16>) {
        self.sockets += 1;
        if s.v6 {
            self.ipv6 += 1;
        } else {
            self.ipv4 += 1;
        }
        if s.rcvbuf.is_none() || s.drops.is_none() {
            self.without_meminfo += 1;
        }
        let drops = s.drops.unwrap_or(0);
        if s.connected {
            self.connected += 1;
            if !ports.contains(&s.dport) {
                self.stray_peers += 1;
            }
        } else if s.sport < low {
            self.receivers += 1;
            if s.rqueue > 0 {
                self.queued_ports.insert(s.sport);
            }
            if drops > 0 {
                self.dropping_ports.insert(s.sport);
            }
            if s.rcvbuf.is_some_and(|b| b <= TINY_LIMIT) {
                self.tiny_ports.insert(s.sport);
            }
            return;
        }
        self.other_queued_bytes += s.rqueue;
        self.other_drops += u64::from(drops);
    }

    /// What differs from `want`, for an error message.
    fn diff(&self, want: &UdpCensus) -> String {
        let mut out = Vec::new();
        macro_rules! cmp {
            ($($f:ident),*) => {$(
                if self.$f != want.$f {
                    out.push(format!("{}: {:?}, expected {:?}", stringify!($f), self.$f, want.$f));
                }
            )*};
        }
        cmp!(
            sockets,
            ipv4,
            ipv6,
            connected,
            receivers,
            queued_ports,
            dropping_ports,
            tiny_ports,
            other_queued_bytes,
            other_drops,
            stray_peers,
            without_meminfo
        );
        out.join("; ")
    }
}

/// A census by one raw dump of both families.
pub fn census(low: u16, ports: &BTreeSet<u16>) -> Result<UdpCensus> {
    let mut c = UdpCensus::default();
    let interrupted = udp_diag::dump_udp(|s| {
        c.add(
            &Seen {
                v6: i32::from(s.family) == libc::AF_INET6,
                connected: s.state == TCP_ESTABLISHED,
                sport: s.sport,
                dport: s.dport,
                rqueue: u64::from(s.rqueue),
                rcvbuf: s.rcvbuf,
                drops: s.drops,
            },
            low,
            ports,
        )
    })?;
    if interrupted {
        eprintln!("sockdiag-bench: warning: UDP census dump was interrupted (NLM_F_DUMP_INTR)");
    }
    Ok(c)
}

// ---------------------------------------------------------------------------------------
// `ss -uanmH`.

fn port_of(endpoint: &str) -> Result<(bool, u16)> {
    let (addr, port) = endpoint
        .rsplit_once(':')
        .with_context(|| format!("no port in {endpoint:?}"))?;
    // ss writes IPv6 addresses in brackets, and a dual-stack wildcard as `*`.
    let v6 = addr.starts_with('[') || addr == "*";
    let port = if port == "*" {
        0
    } else {
        port.parse()
            .with_context(|| format!("port of {endpoint:?}"))?
    };
    Ok((v6, port))
}

/// `skmem:(r1664,rb2304,t0,tb212992,f2432,w0,o0,bl0,d48)`: r, rb and d.
fn skmem(text: &str) -> Result<(u64, u32, u32)> {
    let inner = text
        .trim()
        .strip_prefix("skmem:(")
        .and_then(|s| s.strip_suffix(')'))
        .with_context(|| format!("unexpected skmem {text:?}"))?;
    let (mut r, mut rb, mut d) = (None, None, None);
    for field in inner.split(',') {
        let split = field
            .find(|c: char| c.is_ascii_digit())
            .with_context(|| format!("skmem field {field:?}"))?;
        let (key, value) = field.split_at(split);
        let value: u64 = value
            .parse()
            .with_context(|| format!("skmem field {field:?}"))?;
        match key {
            "r" => r = Some(value),
            "rb" => rb = Some(u32::try_from(value)?),
            "d" => d = Some(u32::try_from(value)?),
            _ => {}
        }
    }
    match (r, rb, d) {
        (Some(r), Some(rb), Some(d)) => Ok((r, rb, d)),
        _ => bail!("skmem without r, rb or d: {text:?}"),
    }
}

/// Counts `ss -uanmH` output: `State Recv-Q Send-Q Local:Port Peer:Port`, each socket
/// followed by its `skmem:(...)` line.
pub fn count_ss(text: &str, low: u16, ports: &BTreeSet<u16>) -> Result<UdpCensus> {
    let mut c = UdpCensus::default();
    let mut pending: Option<Seen> = None;
    for line in text.lines() {
        let t = line.trim();
        if t.is_empty() {
            continue;
        }
        if t.starts_with("skmem:") {
            let Some(mut s) = pending.take() else {
                bail!("skmem line without a socket line: {line:?}");
            };
            let (_, rb, d) = skmem(t)?;
            (s.rcvbuf, s.drops) = (Some(rb), Some(d));
            c.add(&s, low, ports);
            continue;
        }
        if let Some(s) = pending.take() {
            c.add(&s, low, ports);
        }
        let w: Vec<&str> = t.split_whitespace().collect();
        let [state, rq, _sq, local, peer, ..] = w[..] else {
            bail!("unexpected ss line {line:?}");
        };
        let (v6, sport) = port_of(local)?;
        let (_, dport) = port_of(peer)?;
        pending = Some(Seen {
            v6,
            connected: state == "ESTAB",
            sport,
            dport,
            rqueue: rq.parse().with_context(|| format!("Recv-Q of {line:?}"))?,
            rcvbuf: None,
            drops: None,
        });
    }
    if let Some(s) = pending.take() {
        c.add(&s, low, ports);
    }
    Ok(c)
}

fn ss_check(low: u16, ports: &BTreeSet<u16>) -> Result<UdpCensus> {
    let out = Command::new("ss")
        .arg("-uanmH")
        .stdin(Stdio::null())
        .output()
        .context("running ss -uanmH")?;
    if !out.status.success() {
        bail!(
            "ss -uanmH failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    count_ss(&String::from_utf8_lossy(&out.stdout), low, ports)
}

// ---------------------------------------------------------------------------------------
// The worker.

enum SockAddr {
    V4(libc::sockaddr_in),
    V6(libc::sockaddr_in6),
}

impl SockAddr {
    fn v4(addr: u32, port: u16) -> SockAddr {
        SockAddr::V4(proc_util::sockaddr_v4(addr, port))
    }

    fn v6(addr: [u8; 16], port: u16) -> SockAddr {
        // SAFETY: sockaddr_in6 is plain old data.
        let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
        sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
        sa.sin6_port = port.to_be();
        sa.sin6_addr.s6_addr = addr;
        SockAddr::V6(sa)
    }

    fn raw(&self) -> (*const libc::sockaddr, libc::socklen_t) {
        match self {
            SockAddr::V4(sa) => (
                (sa as *const libc::sockaddr_in).cast(),
                proc_util::len_of::<libc::sockaddr_in>(),
            ),
            SockAddr::V6(sa) => (
                (sa as *const libc::sockaddr_in6).cast(),
                proc_util::len_of::<libc::sockaddr_in6>(),
            ),
        }
    }
}

const V6_ANY: [u8; 16] = [0; 16];
const V6_LO: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const V4_LO: u32 = 0x7f00_0001;

fn udp_socket(v6: bool, v6only: bool) -> Result<OwnedFd> {
    let domain = if v6 { libc::AF_INET6 } else { libc::AF_INET };
    let fd = proc_util::socket(domain, libc::SOCK_DGRAM, 0).context("socket(SOCK_DGRAM)")?;
    if v6 {
        let on = libc::c_int::from(v6only);
        proc_util::setsockopt(&fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, &on)
            .context("IPV6_V6ONLY")?;
    }
    Ok(fd)
}

fn bind(fd: &OwnedFd, sa: &SockAddr) -> io::Result<()> {
    match sa {
        SockAddr::V4(sa) => proc_util::bind(fd, sa, proc_util::len_of::<libc::sockaddr_in>()),
        SockAddr::V6(sa) => proc_util::bind(fd, sa, proc_util::len_of::<libc::sockaddr_in6>()),
    }
}

fn connect(fd: &OwnedFd, sa: &SockAddr) -> io::Result<()> {
    match sa {
        SockAddr::V4(sa) => proc_util::connect(fd, sa, proc_util::len_of::<libc::sockaddr_in>()),
        SockAddr::V6(sa) => proc_util::connect(fd, sa, proc_util::len_of::<libc::sockaddr_in6>()),
    }
}

fn send_to(fd: &OwnedFd, data: &[u8], to: Option<&SockAddr>) -> io::Result<()> {
    let (p, len) = to.map_or((std::ptr::null(), 0), SockAddr::raw);
    // SAFETY: data is valid for its length; p is null or a live sockaddr of len bytes.
    let n = unsafe { libc::sendto(fd.as_raw_fd(), data.as_ptr().cast(), data.len(), 0, p, len) };
    if n != data.len() as isize {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn receiver_addr(bind: Bind, port: u16) -> SockAddr {
    match bind {
        Bind::V4Any => SockAddr::v4(0, port),
        Bind::V4Lo => SockAddr::v4(V4_LO, port),
        Bind::V6Any | Bind::Dual => SockAddr::v6(V6_ANY, port),
        Bind::V6Lo => SockAddr::v6(V6_LO, port),
    }
}

/// Where a client of the given family reaches `port`.
fn target_addr(v6: bool, port: u16) -> SockAddr {
    if v6 {
        SockAddr::v6(V6_LO, port)
    } else {
        SockAddr::v4(V4_LO, port)
    }
}

fn open_receiver(r: &ReceiverPlan) -> Result<OwnedFd> {
    let fd = udp_socket(r.bind.v6_socket(), r.bind != Bind::Dual)?;
    if r.group.is_some() {
        let on: libc::c_int = 1;
        proc_util::setsockopt(&fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, &on)
            .context("SO_REUSEPORT")?;
    }
    if r.tiny {
        proc_util::setsockopt(&fd, libc::SOL_SOCKET, libc::SO_RCVBUF, &TINY_RCVBUF)
            .context("SO_RCVBUF")?;
    }
    bind(&fd, &receiver_addr(r.bind, r.port))
        .with_context(|| format!("binding receiver {:?} port {}", r.bind, r.port))?;
    Ok(fd)
}

/// A connected client that sends `r` its datagrams; IPv4 (through the dual-stack path for
/// a dual-stack receiver) unless the receiver takes IPv6 only.
fn feed(r: &ReceiverPlan) -> Result<OwnedFd> {
    let v6 = !r.bind.takes_v4();
    let fd = udp_socket(v6, true)?;
    if !v6 {
        bind(&fd, &SockAddr::v4(FEEDER_V4, 0)).context("binding a feeder")?;
    }
    connect(&fd, &target_addr(v6, r.port))
        .with_context(|| format!("connecting a feeder to port {}", r.port))?;
    let big = [b'f'; FLOOD_SIZE];
    let (data, n): (&[u8], u32) = if r.flood {
        (&big, FLOOD_DATAGRAMS)
    } else {
        (SMALL_DATAGRAM, r.datagrams)
    };
    for i in 0..n {
        send_to(&fd, data, None)
            .with_context(|| format!("datagram {} of {n} to port {}", i + 1, r.port))?;
    }
    Ok(fd)
}

fn open_client(c: &ClientPlan) -> Result<OwnedFd> {
    // IPv6 clients are v6-only so that their autobind does not compete with the IPv4
    // clients for ports.
    let fd = udp_socket(c.v6, true)?;
    if !c.v6 {
        bind(&fd, &SockAddr::v4(c.source, 0)).context("bind(127.2.x.y:0)")?;
    }
    match c.target {
        Some(port) => connect(&fd, &target_addr(c.v6, port))
            .with_context(|| format!("connect to port {port}"))?,
        None => send_to(&fd, b"q", Some(&target_addr(c.v6, SINK_PORT)))
            .context("sendto the sink port")?,
    }
    Ok(fd)
}

/// `internal-udp-worker`: builds its share, says `ready <sockets>`, and holds everything
/// until stdin closes.
pub fn worker_main(args: &UdpWorkerArgs) -> Result<ExitCode> {
    proc_util::die_with_parent(args.parent).context("the coordinator is gone")?;
    namespace::raise_nofile_limit()?;
    let plan = plan(args.udp_sockets, args.receivers, PORT_RANGE.0)?;
    let mut held: Vec<OwnedFd> = Vec::new();
    if args.with_receivers {
        for r in &plan.receivers {
            held.push(open_receiver(r)?);
        }
        for r in plan.feeders() {
            held.push(feed(r)?);
        }
    }
    for k in args.first..args.first + args.count {
        let c = plan.client(k);
        held.push(open_client(&c).with_context(|| format!("client {k} ({c:?})"))?);
    }
    worker::say_ready(&held.len().to_string())?;
    worker::hold_then_exit()
}

// ---------------------------------------------------------------------------------------
// The coordinator.

/// One worker's share: the receivers and feeders (first worker only) and a run of clients.
#[derive(Debug, PartialEq, Eq)]
pub struct WorkerShare {
    pub with_receivers: bool,
    pub first: u64,
    pub count: u64,
}

/// Deals the sockets out to workers of at most `max_fds` descriptors each.
pub fn assign(plan: &Plan, max_fds: u64) -> Result<Vec<WorkerShare>> {
    let own = plan.receivers.len() as u64 + plan.feeders().count() as u64;
    if own > max_fds {
        bail!(
            "{own} receivers and feeders do not fit in one worker's {max_fds} descriptors; \
             ask for fewer --receivers"
        );
    }
    let mut out = Vec::new();
    let first_count = (max_fds - own).min(plan.clients);
    out.push(WorkerShare {
        with_receivers: true,
        first: 0,
        count: first_count,
    });
    let mut next = first_count;
    while next < plan.clients {
        let count = max_fds.min(plan.clients - next);
        out.push(WorkerShare {
            with_receivers: false,
            first: next,
            count,
        });
        next += count;
    }
    Ok(out)
}

fn build(shares: &[WorkerShare], opts: &UdpOpts, parallel: usize) -> Result<Vec<Helper>> {
    // The receivers first and alone: the rest need nothing from them (a UDP connect sends
    // nothing), but a failure there is the likeliest and should come first.
    let batches = std::iter::once(&shares[..1]).chain(shares[1..].chunks(parallel.max(1)));
    helper::start_fleet(batches, "a udp worker", WORKER_TIMEOUT, |w| {
        let mut cmd = helper::bench_command("internal-udp-worker")?;
        cmd.args(["--udp-sockets", &opts.udp_sockets.to_string()])
            .args(["--receivers", &opts.receivers.to_string()])
            .args(["--first", &w.first.to_string()])
            .args(["--count", &w.count.to_string()]);
        if w.with_receivers {
            cmd.arg("--with-receivers");
        }
        Ok((cmd, None))
    })
}

/// Sets the namespace's ephemeral range to [`PORT_RANGE`] and returns what it reads back.
fn set_port_range() -> Result<(u16, u16)> {
    let path = "/proc/sys/net/ipv4/ip_local_port_range";
    let want = format!("{} {}", PORT_RANGE.0, PORT_RANGE.1);
    if let Err(e) = std::fs::write(path, &want) {
        eprintln!("sockdiag-bench: warning: could not set {path} to {want:?}: {e}");
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    let mut it = text.split_whitespace().map(str::parse::<u16>);
    match (it.next(), it.next()) {
        (Some(Ok(lo)), Some(Ok(hi))) => Ok((lo, hi)),
        _ => bail!("unexpected {path}: {text:?}"),
    }
}

const UDP_ONLY_FLAGS: [&str; 6] = [
    "--no-collector.listeners",
    "--no-collector.unix",
    "--no-collector.connections",
    "--no-collector.netstat",
    "--no-collector.processes",
    "--no-collector.netns",
];

fn udp_only(json: bool) -> Vec<&'static str> {
    let mut v = vec!["snapshot"];
    if json {
        v.extend(["--format", "json"]);
    }
    v.extend(UDP_ONLY_FLAGS);
    v
}

fn specs(exporter: &Path, baseline: Option<&Path>) -> Result<Vec<Spec>> {
    let me = std::env::current_exe().context("locating this executable")?;
    let ss = Path::new("ss");
    let skip = measure::collector_support(exporter, "udp").err();
    let specs = vec![
        Spec::new(FLOOR_LABEL, &me, &["udp-floor"], None),
        Spec::new(
            "sockdiag-exporter snapshot (udp collector only)",
            exporter,
            &udp_only(true),
            skip.clone(),
        ),
        Spec::new(
            "sockdiag-exporter snapshot (udp collector only, table)",
            exporter,
            &udp_only(false),
            skip,
        ),
        Spec::new(SS_UANM, ss, &["-uanm"], None),
        Spec::new("ss -ulnm", ss, &["-ulnm"], None),
    ];
    Ok(measure::add_collector_baseline(
        specs, exporter, baseline, "udp",
    ))
}

/// UDP receivers in one snapshot JSON document, and how many of them dropped: objects
/// somewhere under a key that names udp, with a `port` among `ports` and a field whose
/// name holds `drop`. The per-address socket counts carry no drops and are not counted.
pub fn count_udp_receivers(v: &Value, ports: &BTreeSet<u16>) -> (u64, u64) {
    fn walk(v: &Value, in_udp: bool, ports: &BTreeSet<u16>, acc: &mut (u64, u64)) {
        match v {
            Value::Object(m) => {
                if in_udp {
                    let port = m
                        .get("port")
                        .and_then(Value::as_u64)
                        .and_then(|p| u16::try_from(p).ok());
                    let drops = m
                        .iter()
                        .find(|(k, v)| k.contains("drop") && v.is_number())
                        .and_then(|(_, v)| v.as_f64());
                    if let (Some(p), Some(d)) = (port, drops)
                        && ports.contains(&p)
                    {
                        acc.0 += 1;
                        acc.1 += u64::from(d > 0.0);
                    }
                }
                for (k, child) in m {
                    walk(
                        child,
                        in_udp || k.to_ascii_lowercase().contains("udp"),
                        ports,
                        acc,
                    );
                }
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, in_udp, ports, acc)),
            _ => {}
        }
    }
    let mut acc = (0, 0);
    walk(v, false, ports, &mut acc);
    acc
}

/// Receivers (and those with drops) the udp-only snapshot reports, run once more outside
/// the timing.
fn snapshot_sanity(exporter: &Path, ports: &BTreeSet<u16>) -> Result<(u64, u64), String> {
    measure::snapshot_json(exporter, &udp_only(true)).map(|v| count_udp_receivers(&v, ports))
}

// ---------------------------------------------------------------------------------------
// The daemon.

/// One daemon run on the UDP sockets.
pub struct DaemonUdp {
    run: daemon::Sampled,
    /// `sockdiag_collector_duration_seconds{collector="udp"}`, one per scrape.
    udp_durations: Vec<f64>,
    /// Distinct udp pass timestamps seen, in order: the daemon's cost bound may sample a
    /// namespace less often than the fast tier's interval.
    udp_passes: Vec<f64>,
    /// At the last scrape.
    figures: UdpFigures,
    /// Whether a udp pass was waited for (the build has the collector and it is on).
    expect_udp: bool,
}

impl DaemonUdp {
    /// Passes completed between the first and the last scrape, and the mean time between
    /// them; `at_least` when every scrape saw a new one (the passes may be faster than the
    /// scrapes).
    fn pass_rate(&self) -> Option<PassRate> {
        let (first, last) = (self.udp_passes.first()?, self.udp_passes.last()?);
        let passes = self.udp_passes.len() - 1;
        Some(PassRate {
            passes,
            mean_interval: (passes > 0).then(|| (last - first) / passes as f64),
            at_least: passes + 1 >= self.run.window.scrapes,
        })
    }
}

struct PassRate {
    passes: usize,
    mean_interval: Option<f64>,
    at_least: bool,
}

impl PassRate {
    fn cell(&self) -> String {
        let ge = if self.at_least { "≥" } else { "" };
        match self.mean_interval {
            Some(i) if !self.at_least => format!("{ge}{} (every {i:.2} s)", self.passes),
            _ => format!("{ge}{}", self.passes),
        }
    }
}

pub enum DaemonRow {
    Ran(DaemonUdp),
    Failed { label: String, why: String },
    Skipped { label: String, why: String },
}

/// What one scrape says about the udp collector.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct UdpFigures {
    pub duration: Option<f64>,
    /// `sockdiag_collector_last_success_timestamp_seconds{collector="udp"}`: changes from
    /// one scrape to the next count the passes.
    pub last_success: Option<f64>,
    /// Every sample line.
    pub series: u64,
    /// Sample lines of `sockdiag_udp_*` families.
    pub udp_series: u64,
    /// `sockdiag_udp_receive_queue_bytes` series: receivers exported.
    pub receivers: u64,
    /// `sockdiag_udp_drops_total` series above 0.
    pub dropping: u64,
    /// Sum of `sockdiag_udp_receivers_unexported`.
    pub unexported: f64,
}

pub fn udp_figures(body: &str) -> UdpFigures {
    let mut f = UdpFigures::default();
    for (name, labels, value) in body.lines().filter_map(parse_sample) {
        f.series += 1;
        if name.starts_with("sockdiag_udp_") {
            f.udp_series += 1;
        }
        match name {
            "sockdiag_collector_duration_seconds" if label(&labels, "collector") == Some("udp") => {
                f.duration = Some(value)
            }
            "sockdiag_collector_last_success_timestamp_seconds"
                if label(&labels, "collector") == Some("udp") =>
            {
                f.last_success = Some(value)
            }
            "sockdiag_udp_receive_queue_bytes" => f.receivers += 1,
            "sockdiag_udp_drops_total" if value > 0.0 => f.dropping += 1,
            "sockdiag_udp_receivers_unexported" => f.unexported += value,
            _ => {}
        }
    }
    f
}

/// The daemon at default intervals (plus `extra`) for `seconds` after a warm-up: its CPU
/// share and the udp pass duration from every scrape (one a second).
fn run_daemon(
    exporter: &Path,
    label_text: &str,
    extra: &[&str],
    seconds: u64,
    expect_udp: bool,
) -> Result<DaemonUdp> {
    let mut durations = Vec::new();
    let mut passes: Vec<f64> = Vec::new();
    let mut figures = UdpFigures::default();
    let run = daemon::sample(
        exporter,
        label_text,
        extra,
        seconds,
        "udp",
        |body| !expect_udp || udp_figures(body).duration.is_some(),
        |body| {
            figures = udp_figures(body);
            durations.extend(figures.duration);
            if let Some(t) = figures.last_success
                && passes.last() != Some(&t)
            {
                passes.push(t);
            }
        },
    )?;
    Ok(DaemonUdp {
        run,
        udp_durations: durations,
        udp_passes: passes,
        figures,
        expect_udp,
    })
}

fn daemons(exporter: &Path, seconds: u64) -> Vec<DaemonRow> {
    const DEFAULT: &str = "default collectors";
    const NO_UDP: &str = "--no-collector.udp";
    if !exporter.is_file() {
        return vec![DaemonRow::Skipped {
            label: DEFAULT.to_string(),
            why: format!("{} not found", exporter.display()),
        }];
    }
    let support = measure::collector_support(exporter, "udp");
    let ran = |label: &str, extra: &[&str], expect_udp: bool| match run_daemon(
        exporter, label, extra, seconds, expect_udp,
    ) {
        Ok(d) => DaemonRow::Ran(d),
        Err(e) => DaemonRow::Failed {
            label: label.to_string(),
            why: format!("{e:#}"),
        },
    };
    let mut rows = vec![ran(DEFAULT, &[], support.is_ok())];
    rows.push(match &support {
        Ok(()) => ran(NO_UDP, &[NO_UDP], false),
        Err(why) => DaemonRow::Skipped {
            label: NO_UDP.to_string(),
            why: why.clone(),
        },
    });
    rows
}

// ---------------------------------------------------------------------------------------
// Running and reporting.

pub fn internal_main(bench: &BenchOpts, opts: &UdpOpts) -> Result<ExitCode> {
    namespace::bring_loopback_up()?;
    let (low, high) = set_port_range()?;
    if (low, high) != PORT_RANGE {
        bail!(
            "ip_local_port_range is {low} {high} in the bench's namespace, not {} {}",
            PORT_RANGE.0,
            PORT_RANGE.1
        );
    }
    let nofile = namespace::raise_nofile_limit()?;
    let exporter = bench.exporter();
    let baseline = opts.rounds.baseline_exporter.as_deref();
    let (s, r) = (opts.udp_sockets, opts.receivers);

    let plan = plan(s, r, low)?;
    let expected = plan.expected();
    let ports = plan.ports();
    let max_fds = nofile.saturating_sub(FD_HEADROOM).min(MAX_FDS_PER_WORKER);
    let shares = assign(&plan, max_fds)?;
    eprintln!(
        "sockdiag-bench: setting up {s} UDP sockets ({r} receivers on {} ports, {} feeders, \
         {} clients) with {} workers",
        ports.len(),
        plan.feeders().count(),
        plan.clients,
        shares.len()
    );
    let start = Instant::now();
    let fleet = build(&shares, opts, setup::parallel_workers())?;
    let setup_seconds = start.elapsed().as_secs_f64();

    let settle = Instant::now();
    let census = loop {
        let c = census(low, &ports).context("counting the UDP sockets that were set up")?;
        if c == expected {
            break c;
        }
        if settle.elapsed() > SETTLE_TIMEOUT {
            bail!(
                "the namespace does not hold what was set up; the UDP dump shows {}",
                c.diff(&expected)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let ss = ss_check(low, &ports)?;
    if ss != expected {
        bail!("ss -uanmH disagrees with the plan: {}", ss.diff(&expected));
    }
    eprintln!(
        "sockdiag-bench: {} UDP sockets ready in {setup_seconds:.1} s; ss -uanmH agrees; \
         measuring",
        census.sockets
    );

    let specs = specs(&exporter, baseline)?;
    let results = measure::measure_specs(&specs, opts.rounds.runs);
    let sanity = match measure::collector_support(&exporter, "udp") {
        Ok(()) => Some(snapshot_sanity(&exporter, &ports)),
        Err(_) => None,
    };
    let daemons = if opts.rounds.daemon_seconds > 0 {
        daemons(&exporter, opts.rounds.daemon_seconds)
    } else {
        Vec::new()
    };

    let env = UdpEnv {
        sockets: s,
        receivers: r,
        receiver_ports: ports.len(),
        groups: plan
            .receivers
            .iter()
            .filter_map(|r| r.group)
            .max()
            .map_or(0, |g| g + 1),
        dual_stack: plan
            .receivers
            .iter()
            .filter(|r| r.bind == Bind::Dual)
            .count(),
        range: (low, high),
        census,
        run: report::RunInfo::new(
            opts.rounds.runs,
            setup_seconds,
            fleet.len(),
            &exporter,
            baseline,
        ),
    };
    print!("{}", markdown(&env, &results, sanity.as_ref(), &daemons));
    report::write_json(opts.rounds.json.as_deref(), || {
        json_report(&env, &results, sanity.as_ref(), &daemons)
    })?;
    eprintln!("sockdiag-bench: tearing down");
    drop(fleet);
    let failed = results.iter().any(CommandResult::failed)
        || daemons
            .iter()
            .any(|d| matches!(d, DaemonRow::Failed { .. }));
    Ok(report::exit_code(failed))
}

struct UdpEnv {
    sockets: u64,
    receivers: u64,
    receiver_ports: usize,
    groups: u64,
    dual_stack: usize,
    range: (u16, u16),
    census: UdpCensus,
    run: report::RunInfo,
}

fn markdown(
    env: &UdpEnv,
    results: &[CommandResult],
    sanity: Option<&Result<(u64, u64), String>>,
    daemons: &[DaemonRow],
) -> String {
    let c = &env.census;
    let mut s = format!(
        "## sockdiag-bench udp: {} UDP sockets, {} receivers\n\n\
         {} UDP sockets ({} IPv4, {} IPv6) in a private network namespace: {} receivers on \
         {} ports below the ephemeral range {}-{} ({} SO_REUSEPORT groups of {GROUP_SIZE}, \
         {} dual-stack), {} with a tiny buffer, {} with datagrams queued, {} flooded until \
         they dropped; the rest clients on ephemeral ports, {} sockets connected. Set up in \
         {:.1} s by {} workers; `ss -uanmH` agrees. {}\n\n",
        env.sockets,
        env.receivers,
        c.sockets,
        c.ipv4,
        c.ipv6,
        c.receivers,
        env.receiver_ports,
        env.range.0,
        env.range.1,
        env.groups,
        env.dual_stack,
        c.tiny_ports.len(),
        c.queued_ports.len(),
        c.dropping_ports.len(),
        c.connected,
        env.run.setup_seconds,
        env.run.workers,
        env.run.environment(),
    );
    s.push_str(&report::paired_results(
        results, &env.run, SS_UANM, "udp-only",
    ));
    if let Some(w) = report::floor_busy_warning(results, FLOOR_GAP_TOLERATED) {
        s.push_str(&format!("\n{w}\n"));
    }
    let dropping = c.dropping_ports.len() as u64;
    match sanity {
        None => {}
        Some(Ok((n, d))) if *n == env.receivers && *d == dropping => s.push_str(&format!(
            "\nThe udp-only snapshot reports all {n} receivers, {d} of them with drops.\n"
        )),
        Some(Ok((n, d))) => s.push_str(&format!(
            "\nWarning: the udp-only snapshot's JSON shows {n} receivers ({d} with drops), \
             not {} ({dropping} with drops): a --collector.udp.max-receivers cap, a miscount, \
             or a JSON layout this check does not know (it counts objects under a key naming \
             udp that have a receiver `port` and a field naming drops).\n",
            env.receivers
        )),
        Some(Err(e)) => s.push_str(&format!(
            "\nWarning: checking the snapshot's output: {e}.\n"
        )),
    }
    if !daemons.is_empty() {
        s.push_str(&daemon_table(daemons));
        for d in daemons {
            if let DaemonRow::Ran(d) = d
                && d.expect_udp
                && (d.figures.receivers != env.receivers || d.figures.dropping != dropping)
            {
                s.push_str(&format!(
                    "\nWarning (`{}`): the daemon exported {} receivers ({} with drops), not {} \
                     ({dropping} with drops).\n",
                    d.run.label, d.figures.receivers, d.figures.dropping, env.receivers
                ));
            }
        }
    }
    s
}

fn daemon_table(daemons: &[DaemonRow]) -> String {
    let mut s = String::from(
        "\n| daemon (default intervals) | CPU (fraction of one core) | udp pass: median | \
         udp pass: max | udp passes seen | series (all / `sockdiag_udp_*`) | receivers exported \
         (dropping) | peak RSS |\n|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for d in daemons {
        match d {
            DaemonRow::Ran(d) => {
                let f = &d.figures;
                let (med, max) = report::pass_cells(&d.udp_durations);
                let unexported = if f.unexported > 0.0 {
                    format!(" +{} unexported", f.unexported)
                } else {
                    String::new()
                };
                s.push_str(&format!(
                    "{} {med} | {max} | {} | {} / {} | {} ({}){unexported} | {} |\n",
                    d.run.row_start(),
                    d.pass_rate().map_or("-".to_string(), |p| p.cell()),
                    f.series,
                    f.udp_series,
                    f.receivers,
                    f.dropping,
                    mib(d.run.window.vm_hwm_bytes),
                ));
            }
            DaemonRow::Failed { label, why } => {
                let why = report::cell(why);
                s.push_str(&format!("| `{label}` | FAILED: {why} | | | | | | |\n"));
            }
            DaemonRow::Skipped { label, why } => {
                let why = report::cell(why);
                s.push_str(&format!("| `{label}` | skipped: {why} | | | | | | |\n"));
            }
        }
    }
    if let Some(d) = daemons.iter().find_map(|d| match d {
        DaemonRow::Ran(d) => Some(d),
        _ => None,
    }) {
        s.push_str(&format!(
            "\nCPU over {:.0} s after a {} s warm-up, from utime + stime in /proc/PID/stat; \
             the udp pass from `sockdiag_collector_duration_seconds{{collector=\"udp\"}}` and \
             the series from /metrics, scraped once a second ({} scrapes); series figures \
             are the last scrape's. Passes seen: changes of \
             `sockdiag_collector_last_success_timestamp_seconds{{collector=\"udp\"}}` between \
             scrapes (≥ when every scrape saw one: the passes may be more frequent).\n",
            d.run.window.seconds,
            daemon::WARMUP.as_secs(),
            d.run.window.scrapes
        ));
    }
    for d in daemons {
        if let DaemonRow::Ran(d) = d {
            s.extend(d.run.note_line());
            if d.udp_durations.is_empty() && !d.expect_udp && d.run.label == "default collectors" {
                s.push_str(
                    "\nNote: the daemon exports no udp collector duration: this build has no \
                     udp collector, so this row is the daemon without one.\n",
                );
            }
        }
    }
    s
}

fn json_report(
    env: &UdpEnv,
    results: &[CommandResult],
    sanity: Option<&Result<(u64, u64), String>>,
    daemons: &[DaemonRow],
) -> String {
    let to_ss = report::paired_wall_ratio(results, SS_UANM);
    let to_floor = report::paired_wall_ratio(results, FLOOR_LABEL);
    let commands = report::commands_json(results, |r, v| {
        v["wall_ratio_to_ss_uanm_paired"] = json!(to_ss(r));
        v["wall_ratio_to_floor_paired"] = json!(to_floor(r));
    });
    let daemons: Vec<Value> = daemons
        .iter()
        .map(|d| match d {
            DaemonRow::Ran(d) => d.run.json(json!({
                "status": "ok",
                "udp_duration_seconds_per_scrape": d.udp_durations,
                "udp_duration_median_seconds": measure::median(d.udp_durations.clone()),
                "udp_duration_max_seconds": d.udp_durations.iter().copied().reduce(f64::max),
                "udp_pass_timestamps_seen": d.udp_passes,
                "udp_passes_seen": d.pass_rate().map(|p| p.passes),
                "udp_passes_seen_is_lower_bound": d.pass_rate().map(|p| p.at_least),
                "udp_pass_mean_interval_seconds": d.pass_rate().and_then(|p| p.mean_interval),
                "series": d.figures.series,
                "udp_series": d.figures.udp_series,
                "receivers_exported": d.figures.receivers,
                "receivers_dropping": d.figures.dropping,
                "receivers_unexported": d.figures.unexported,
                "scrapes": d.run.window.scrapes,
            })),
            DaemonRow::Failed { label, why } => {
                json!({"label": label, "status": "failed", "note": why})
            }
            DaemonRow::Skipped { label, why } => {
                json!({"label": label, "status": "skipped", "note": why})
            }
        })
        .collect();
    let c = &env.census;
    let doc = env.run.json(json!({
        "udp_sockets": env.sockets,
        "receivers": env.receivers,
        "receiver_ports": env.receiver_ports,
        "reuseport_groups": env.groups,
        "dual_stack_receivers": env.dual_stack,
        "ip_local_port_range": [env.range.0, env.range.1],
        "census": {
            "sockets": c.sockets,
            "ipv4": c.ipv4,
            "ipv6": c.ipv6,
            "connected": c.connected,
            "receivers": c.receivers,
            "queued_ports": c.queued_ports,
            "dropping_ports": c.dropping_ports,
            "tiny_buffer_ports": c.tiny_ports,
        },
        "commands": commands,
        "snapshot_receivers": match sanity {
            None => Value::Null,
            Some(Ok((n, d))) => json!({"receivers": n, "dropping": d}),
            Some(Err(e)) => json!({"error": e}),
        },
        "daemon_listen": LISTEN,
        "daemons": daemons,
    }));
    report::json_text(&doc)
}

/// `udp`: hands over to a coordinator inside a new user + network namespace.
pub fn run_outer(bench: BenchOpts, mut opts: UdpOpts) -> Result<ExitCode> {
    let exporter = crate::exporter_path(bench.exporter.as_deref())?;
    opts.rounds.resolve()?;
    // Refused here rather than inside the namespace, where the message is the same but
    // comes after the namespace was made.
    plan(opts.udp_sockets, opts.receivers, PORT_RANGE.0)?;
    let mut args: Vec<OsString> = vec![
        "--exporter".into(),
        exporter.into(),
        "internal-udp".into(),
        "--udp-sockets".into(),
        opts.udp_sockets.to_string().into(),
        "--receivers".into(),
        opts.receivers.to_string().into(),
    ];
    opts.rounds.push_args(&mut args);
    let status = namespace::run_in_new_namespace(&args)?;
    namespace::exit_code_of(status, "the udp benchmark")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_holds_exactly_the_sockets_and_receivers_asked_for() {
        for (s, r) in [
            (10_000, 100),
            (2_000, 50),
            (100_000, 100),
            (6, 5),
            (30, 19),
            (1_000_000, 1_000),
        ] {
            let p = plan(s, r, PORT_RANGE.0).unwrap();
            let e = p.expected();
            assert_eq!((e.sockets, e.receivers), (s, r), "S={s} R={r}");
            assert_eq!(e.ipv4 + e.ipv6, s);
            assert!(p.ports().iter().all(|&port| port < PORT_RANGE.0));
        }
        assert!(plan(10, 11, PORT_RANGE.0).is_err());
        assert!(plan(100, 100, PORT_RANGE.0).is_err(), "no room for feeders");
        assert!(
            plan(100_000, 13_000, PORT_RANGE.0).is_err(),
            "ports run out"
        );
    }

    #[test]
    fn the_mix_has_every_kind_of_receiver() {
        let p = plan(10_000, 100, PORT_RANGE.0).unwrap();
        let r = &p.receivers;
        let groups: BTreeSet<u64> = r.iter().filter_map(|r| r.group).collect();
        assert_eq!(groups.len(), 4);
        for g in &groups {
            let members: Vec<_> = r.iter().filter(|r| r.group == Some(*g)).collect();
            assert_eq!(members.len(), 4);
            assert!(members.iter().all(|m| m.port == members[0].port));
        }
        let singles: BTreeSet<u16> = r
            .iter()
            .filter(|r| r.group.is_none())
            .map(|r| r.port)
            .collect();
        assert_eq!(singles.len(), 84, "singles each have their own port");
        for bind in [Bind::V4Any, Bind::V4Lo, Bind::V6Any, Bind::V6Lo, Bind::Dual] {
            assert!(r.iter().any(|r| r.bind == bind), "{bind:?}");
        }
        let e = p.expected();
        assert!(e.dropping_ports.len() >= 4, "{e:?}");
        assert!(e.tiny_ports.len() > e.dropping_ports.len(), "{e:?}");
        assert!(e.queued_ports.len() > e.tiny_ports.len(), "{e:?}");
        assert!(e.dropping_ports.is_subset(&e.tiny_ports));
        // Flooded receivers of both families.
        let flooded: Vec<Bind> = r.iter().filter(|r| r.flood).map(|r| r.bind).collect();
        assert!(flooded.iter().any(|b| b.v6_socket()) && flooded.iter().any(|b| !b.v6_socket()));
    }

    #[test]
    fn clients_are_half_connected_and_a_fifth_ipv6_up_to_the_cap() {
        let p = plan(10_000, 100, PORT_RANGE.0).unwrap();
        let all: Vec<ClientPlan> = (0..p.clients).map(|k| p.client(k)).collect();
        let v6 = all.iter().filter(|c| c.v6).count() as u64;
        assert_eq!(v6, p.clients.div_ceil(5));
        let connected = all.iter().filter(|c| c.target.is_some()).count() as u64;
        assert_eq!(connected, p.clients.div_ceil(2));
        for c in &all {
            if let Some(port) = c.target {
                let r = p.receivers.iter().find(|r| r.port == port).unwrap();
                assert!(if c.v6 {
                    r.bind.takes_v6()
                } else {
                    r.bind.takes_v4()
                });
            }
        }
        let big = plan(1_000_000, 100, PORT_RANGE.0).unwrap();
        let v6 = (0..big.clients).filter(|&k| big.client(k).v6).count() as u64;
        assert_eq!(v6, V6_CLIENT_CAP);
        // No IPv4 source address holds more than its share.
        let mut per_source = std::collections::BTreeMap::new();
        for k in 0..big.clients {
            let c = big.client(k);
            if !c.v6 {
                *per_source.entry(c.source).or_insert(0u64) += 1;
            }
        }
        assert!(per_source.values().all(|&n| n <= V4_PER_SOURCE));
        assert_eq!(per_source.keys().next(), Some(&(CLIENT_V4_NET + 1)));
    }

    #[test]
    fn workers_stay_under_their_descriptor_budget() {
        let p = plan(100_000, 100, PORT_RANGE.0).unwrap();
        let w = assign(&p, 18_000).unwrap();
        assert_eq!(w.len(), 6);
        assert!(w[0].with_receivers && w[1..].iter().all(|w| !w.with_receivers));
        let own = 100 + p.feeders().count() as u64;
        assert_eq!(w[0].count + own, 18_000);
        assert!(w.iter().all(|w| w.count <= 18_000));
        assert_eq!(w.iter().map(|w| w.count).sum::<u64>(), p.clients);
        for pair in w.windows(2) {
            assert_eq!(pair[0].first + pair[0].count, pair[1].first);
        }
    }

    #[test]
    fn ss_lines_count_families_receivers_queues_and_drops() {
        let text = "\
ESTAB  0      0      127.2.0.1:52423 127.0.0.1:20000
\t skmem:(r0,rb212992,t0,tb212992,f0,w0,o0,bl0,d0)
UNCONN 1664   0      127.0.0.1:20000   0.0.0.0:*
\t skmem:(r1664,rb2304,t0,tb212992,f2432,w0,o0,bl0,d48)
UNCONN 0      0           [::]:50128      [::]:*
\t skmem:(r0,rb212992,t0,tb212992,f0,w0,o0,bl0,d0)
UNCONN 832    0              *:20001         *:*
\t skmem:(r832,rb212992,t0,tb212992,f3264,w0,o0,bl0,d0)
ESTAB  0      0        [::1]:40000     [::1]:31000
\t skmem:(r0,rb212992,t0,tb212992,f0,w0,o0,bl0,d0)
";
        let ports: BTreeSet<u16> = [20000, 20001].into();
        let c = count_ss(text, PORT_RANGE.0, &ports).unwrap();
        assert_eq!((c.sockets, c.ipv4, c.ipv6, c.connected), (5, 2, 3, 2));
        assert_eq!(c.receivers, 2);
        assert_eq!(c.queued_ports, [20000, 20001].into());
        assert_eq!(c.dropping_ports, [20000].into());
        assert_eq!(c.tiny_ports, [20000].into());
        assert_eq!((c.other_queued_bytes, c.other_drops), (0, 0));
        assert_eq!(c.stray_peers, 1, "[::1]:31000 is no receiver");
        assert_eq!(c.without_meminfo, 0);
        assert!(count_ss("UNCONN 0 0 1.2.3.4:5\n\tskmem:(rb1)\n", 1, &ports).is_err());
    }

    #[test]
    fn snapshot_json_receivers_are_counted_under_a_udp_key_only() {
        let v = json!({"namespaces": [{
            "listeners": {"listeners": [{"family": "ipv4", "port": 20000, "drops": 3}]},
            "udp": {
                "receivers": [
                    {"family": "ipv4", "address": "0.0.0.0", "port": 20000, "drops": 0},
                    {"family": "ipv6", "address": "::1", "port": 20001, "drops": 12},
                    {"family": "ipv4", "address": "127.2.0.1", "port": 40000, "drops": 0},
                ],
                "sockets": [{"address": "0.0.0.0", "port": 20000, "state": "unconnected", "count": 4}],
            },
        }]});
        let ports: BTreeSet<u16> = [20000, 20001].into();
        assert_eq!(count_udp_receivers(&v, &ports), (2, 1));
    }

    #[test]
    fn scrape_figures_of_the_udp_collector() {
        let body = "\
# TYPE sockdiag_collector_duration_seconds gauge
sockdiag_collector_duration_seconds{collector=\"udp\"} 0.004
sockdiag_collector_duration_seconds{collector=\"listeners\"} 0.001
sockdiag_collector_last_success_timestamp_seconds{collector=\"udp\"} 1796184431.5
sockdiag_udp_receive_queue_bytes{netns=\"host\",family=\"ipv4\",address=\"0.0.0.0\",port=\"53\"} 0
sockdiag_udp_receive_queue_bytes{netns=\"host\",family=\"ipv6\",address=\"::1\",port=\"54\"} 832
sockdiag_udp_drops_total{netns=\"host\",family=\"ipv4\",address=\"0.0.0.0\",port=\"53\"} 0
sockdiag_udp_drops_total{netns=\"host\",family=\"ipv6\",address=\"::1\",port=\"54\"} 62
sockdiag_udp_receivers_unexported{netns=\"host\",reason=\"cap\"} 5
";
        let f = udp_figures(body);
        assert_eq!(f.duration, Some(0.004));
        assert_eq!(f.last_success, Some(1_796_184_431.5));
        assert_eq!((f.series, f.udp_series), (8, 5));
        assert_eq!((f.receivers, f.dropping), (2, 1));
        assert_eq!(f.unexported, 5.0);
    }
}
