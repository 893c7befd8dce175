//! Oracle test for UDP receivers: `ss -uanmep` and `nstat` (iproute2) judge
//! every figure the exporter reports for UDP sockets, in several network
//! namespaces at once.
//!
//! The test's own namespace (`host`) and two or three namespaces it creates
//! (one named through a test-owned `--path.run-netns` directory, the others
//! known by inode) each get a randomized but static mix, built by a python3
//! helper living in that namespace, some with an `ip_local_port_range` of
//! their own:
//!
//! - receivers (unconnected, bound outside the namespace's ephemeral range)
//!   on IPv4 (`0.0.0.0`, `127.0.0.1`, `127.0.0.53`), IPv6 (`::1`, `::` with
//!   IPV6_V6ONLY) and dual-stack `::` fed v4-mapped datagrams; where the
//!   namespace has a range of its own, one receiver on a port inside the
//!   kernel's default range but outside the namespace's;
//! - SO_REUSEPORT groups of 3-4 members;
//! - tiny `SO_RCVBUF`s (2048-8192) flooded from loopback with a bounded
//!   number of datagrams until they drop, others with datagrams queued and
//!   no drop, some partly read (the kernel's forward deficit then makes
//!   Recv-Q smaller than skmem `r`), some empty;
//! - clients on ephemeral ports: unconnected after `sendto` (some with
//!   datagrams queued on them) and connected;
//! - connected sockets sharing a receiver's port (bound with SO_REUSEPORT,
//!   then connected, as QUIC servers make), counted as `state="connected"`
//!   under that receiver's address;
//! - in every namespace, receivers on two ports inside every ephemeral
//!   range, which are receivers only with `--collector.udp.ports` listing
//!   them: one snapshot runs without the flag, one with it, and the daemon
//!   with it.
//!
//! Once the mix is static (nothing sends; ss and nstat equal before and
//! after each view), `snapshot --format json` and a running daemon's
//! `/metrics` are compared with ss run inside each namespace: every
//! receiver, none missing or extra; queue bytes = Recv-Q, buffer = `rb`,
//! drops = `d`, the socket's cookie and inode, `member` labels only for
//! groups; sockets per receiving address and state; the other sockets and
//! their queued bytes; the namespace's UDP RcvbufErrors and InErrors
//! against `nstat -as` (v4 plus v6); and no client's ephemeral port as a
//! `port` label anywhere in the namespace's series.
//!
//! The mix is drawn from a seeded xorshift generator; the seed is printed,
//! and `SOCKDIAG_UDP_ORACLE_SEED=<seed>` replays a run.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::report::Report;
use common::rng::{Rng, Seed};
use common::{
    Daemon, Metrics, NsHelper, OWNER_LABELS, TempDir, in_new_netns, netns_flags, nsenter,
    python_with_loopback, snapshot_json, snapshot_owners,
};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------
// The plan of one namespace

/// The kernel's default `ip_local_port_range`.
const DEFAULT_RANGE: (u16, u16) = (32768, 60999);
/// Where every client sends its first datagram (nothing listens there):
/// `sendto` gives it its ephemeral port.
const SINK_PORT: u16 = 9;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Fam {
    V4,
    V6,
    /// IPv6 `::` without IPV6_V6ONLY: receives v4-mapped datagrams.
    Dual,
}

impl Fam {
    fn as_str(self) -> &'static str {
        match self {
            Fam::V4 => "v4",
            Fam::V6 => "v6",
            Fam::Dual => "dual",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Fill {
    Empty,
    /// This many datagrams, fewer than the buffer holds.
    Queued(u32),
    /// This many datagrams into a tiny buffer: drops.
    Flood(u32),
}

#[derive(Debug, Clone)]
struct Group {
    fam: Fam,
    addr: &'static str,
    port: u16,
    members: u32,
    reuseport: bool,
    /// SO_RCVBUF asked for; 0: the default.
    rcvbuf: u32,
    fill: Fill,
    /// Payload bytes per datagram.
    size: u32,
    /// Datagrams the application reads back (lone receivers only).
    read: u32,
    /// Connected sockets sharing the port.
    connected: u32,
    /// On a port inside every ephemeral range: a receiver only when listed
    /// in `--collector.udp.ports`.
    listed: bool,
}

impl Group {
    /// Which client pool sends to it, and where.
    fn destination(&self) -> (Fam, &'static str) {
        match (self.fam, self.addr) {
            (Fam::V4, "0.0.0.0") => (Fam::V4, "127.0.0.1"),
            (Fam::V4, a) => (Fam::V4, a),
            (Fam::V6, _) => (Fam::V6, "::1"),
            // v4-mapped: a v4 client to 127.0.0.1 lands on `::`.
            (Fam::Dual, _) => (Fam::V4, "127.0.0.1"),
        }
    }

    fn sent(&self) -> u32 {
        match self.fill {
            Fill::Empty => 0,
            Fill::Queued(n) | Fill::Flood(n) => n,
        }
    }

    fn describe(&self) -> String {
        let mut s = format!(
            "{} {}:{} x{}",
            self.fam.as_str(),
            self.addr,
            self.port,
            self.members
        );
        if self.reuseport {
            s.push_str(" reuseport");
        }
        if self.rcvbuf > 0 {
            s.push_str(&format!(" rcvbuf {}", self.rcvbuf));
        }
        match self.fill {
            Fill::Empty => s.push_str(" empty"),
            Fill::Queued(n) => s.push_str(&format!(" {n} queued of {} B", self.size)),
            Fill::Flood(n) => s.push_str(&format!(" flood {n} of {} B", self.size)),
        }
        if self.read > 0 {
            s.push_str(&format!(", {} read back", self.read));
        }
        if self.connected > 0 {
            s.push_str(&format!(", {} connected sharing the port", self.connected));
        }
        if self.listed {
            s.push_str(" (listed port)");
        }
        s
    }
}

struct NsPlan {
    /// The `netns` label (for a namespace known by inode, set once its
    /// helper runs).
    label: String,
    own_netns: bool,
    /// `ip_local_port_range`, written by the helper when not the default.
    range: (u16, u16),
    groups: Vec<Group>,
    v4_clients: u32,
    v6_clients: u32,
    /// (from, to, count): datagrams one v4 client sends another, left
    /// queued on the receiving client.
    replies: Vec<(u32, u32, u32)>,
    /// Connected clients: (family, destination, port).
    connected_clients: Vec<(Fam, &'static str, u16)>,
}

/// A random address a group of `fam` binds.
fn random_addr(rng: &mut Rng, fam: Fam) -> &'static str {
    match fam {
        Fam::V4 => rng.pick(&["0.0.0.0", "127.0.0.1", "127.0.0.53"]),
        Fam::V6 => rng.pick(&["::1", "::"]),
        Fam::Dual => "::",
    }
}

/// `fill_kind`: 0 empty, 1 queued, 2 flooded.
fn random_group(rng: &mut Rng, fam: Fam, members: u32, fill_kind: u8) -> Group {
    let tiny = fill_kind == 2 || rng.chance(30);
    let rcvbuf = if tiny {
        rng.range(2048, 8192) as u32
    } else {
        0
    };
    let size = rng.range(32, if tiny { 200 } else { 1200 }) as u32;
    let fill = match fill_kind {
        0 => Fill::Empty,
        // A tiny buffer (4096 bytes at least) holds two small datagrams.
        1 if tiny => Fill::Queued(rng.range(1, 2) as u32),
        1 => Fill::Queued(rng.range(1, 8) as u32),
        // SO_REUSEPORT spreads the flood over members by the client's
        // port: enough for each to drop even if the hash is unkind.
        _ => Fill::Flood(members * rng.range(35, 50) as u32),
    };
    Group {
        fam,
        addr: random_addr(rng, fam),
        port: 0,
        members,
        reuseport: members > 1,
        rcvbuf,
        fill,
        size,
        read: 0,
        connected: 0,
        listed: false,
    }
}

/// A port outside `range`, not yet taken; sometimes a well-known one.
fn receiver_port(rng: &mut Rng, range: (u16, u16), taken: &mut BTreeSet<u16>) -> u16 {
    for _ in 0..1000 {
        let p = if rng.chance(10) {
            rng.pick(&[53u16, 123, 514, 443])
        } else if rng.chance(50) {
            rng.range(1024, u64::from(range.0) - 1) as u16
        } else {
            rng.range(u64::from(range.1) + 1, 65535) as u16
        };
        if p != SINK_PORT && taken.insert(p) {
            return p;
        }
    }
    panic!("no free receiver port outside {range:?}");
}

impl NsPlan {
    fn build(rng: &mut Rng, label: &str, own_netns: bool, range: (u16, u16)) -> NsPlan {
        // Fill kinds: 0 empty, 1 queued, 2 flooded.
        let dual_fill = rng.range(1, 2) as u8;
        let mut groups = vec![
            random_group(rng, Fam::V4, 1, 2),
            random_group(rng, Fam::V6, 1, 1),
            random_group(rng, Fam::Dual, 1, dual_fill),
        ];
        let members = rng.range(3, 4) as u32;
        let fam = rng.pick(&[Fam::V4, Fam::V6, Fam::Dual]);
        let fill = rng.range(1, 2) as u8;
        groups.push(random_group(rng, fam, members, fill));
        let fam = rng.pick(&[Fam::V4, Fam::V6]);
        groups.push(random_group(rng, fam, 1, 0));
        for _ in 0..rng.range(0, 3) {
            let fam = rng.pick(&[Fam::V4, Fam::V6, Fam::Dual]);
            let members = if rng.chance(25) {
                rng.range(2, 4) as u32
            } else {
                1
            };
            let fill = rng.range(0, 2) as u8;
            groups.push(random_group(rng, fam, members, fill));
        }
        rng.shuffle(&mut groups);
        let mut taken = BTreeSet::new();
        let custom = range != DEFAULT_RANGE;
        for (i, g) in groups.iter_mut().enumerate() {
            g.port = if custom && i == 0 {
                // Inside the kernel's default range, outside this
                // namespace's: a receiver here only by its own sysctl.
                let p = rng.range(u64::from(DEFAULT_RANGE.0), u64::from(range.0) - 1) as u16;
                taken.insert(p);
                p
            } else {
                receiver_port(rng, range, &mut taken)
            };
            if g.members == 1 {
                if let Fill::Queued(n) = g.fill {
                    if n >= 2 && rng.chance(40) {
                        g.read = rng.range(1, u64::from(n) - 1) as u32;
                    }
                }
            }
        }
        // Connected sockets sharing a receiver's port on one or two of them.
        let mut idx: Vec<usize> = (0..groups.len()).collect();
        rng.shuffle(&mut idx);
        for &i in idx.iter().take(rng.range(1, 2) as usize) {
            groups[i].connected = rng.range(1, 2) as u32;
            groups[i].reuseport = true;
        }
        let v4_clients = rng.range(3, 5) as u32;
        let v6_clients = rng.range(2, 3) as u32;
        let mut replies = Vec::new();
        for _ in 0..rng.range(0, 2) {
            let to = rng.range(0, u64::from(v4_clients) - 1) as u32;
            let from = (to + 1) % v4_clients;
            replies.push((from, to, rng.range(1, 3) as u32));
        }
        let mut connected_clients = Vec::new();
        for _ in 0..rng.range(1, 3) {
            let g = &groups[rng.range(0, groups.len() as u64 - 1) as usize];
            let (fam, to) = g.destination();
            connected_clients.push((fam, to, g.port));
        }
        NsPlan {
            label: label.to_string(),
            own_netns,
            range,
            groups,
            v4_clients,
            v6_clients,
            replies,
            connected_clients,
        }
    }

    /// Receivers on `ports`, inside every namespace's ephemeral range.
    fn add_listed(&mut self, rng: &mut Rng, ports: &[u16]) {
        for &port in ports {
            // Not a v6-only `::`: a v4 client could then take the port for
            // itself (the kernel lets v4 sockets share a port with it), and
            // be a receiver by the flag, not by the test's plan.
            let fam = rng.pick(&[Fam::V4, Fam::Dual]);
            let members = rng.range(1, 2) as u32;
            let fill = rng.range(0, 2) as u8;
            let mut g = random_group(rng, fam, members, fill);
            g.port = port;
            g.listed = true;
            self.groups.push(g);
        }
    }

    fn describe(&self) -> Vec<String> {
        let mut out = vec![format!(
            "ip_local_port_range {} {}{}; {} v4 and {} v6 clients, {} connected, replies {:?}",
            self.range.0,
            self.range.1,
            if self.range == DEFAULT_RANGE {
                " (default)"
            } else {
                ""
            },
            self.v4_clients,
            self.v6_clients,
            self.connected_clients.len(),
            self.replies,
        )];
        out.extend(self.groups.iter().map(Group::describe));
        out
    }

    /// What the python helper is told to build.
    fn to_json(&self) -> String {
        let groups: Vec<Value> = self
            .groups
            .iter()
            .map(|g| {
                let (via, to) = g.destination();
                json!({
                    "fam": g.fam.as_str(),
                    "addr": g.addr,
                    "port": g.port,
                    "members": g.members,
                    "reuseport": g.reuseport,
                    "v6only": g.fam == Fam::V6 && g.addr == "::",
                    "rcvbuf": g.rcvbuf,
                    "via": via.as_str(),
                    "to": to,
                    "count": g.sent(),
                    "size": g.size,
                    "read": g.read,
                    "connected": g.connected,
                })
            })
            .collect();
        let range = (self.range != DEFAULT_RANGE).then_some([self.range.0, self.range.1]);
        json!({
            "range": range,
            "groups": groups,
            "v4_clients": self.v4_clients,
            "v6_clients": self.v6_clients,
            "sink": SINK_PORT,
            "replies": self.replies,
            "connected_clients": self
                .connected_clients
                .iter()
                .map(|(f, to, port)| json!([f.as_str(), to, port]))
                .collect::<Vec<_>>(),
        })
        .to_string()
    }
}

// ---------------------------------------------------------------------------
// The helper process of one namespace

/// Builds the plan it gets as JSON, prints `ready` and what it built
/// (receiver inodes per group, client ports, the local addresses of the
/// connected sockets sharing a port), and holds everything until stdin
/// closes. Every send happens before `ready`; the connected sockets that
/// share a receiver's port connect last, so no datagram meant for a
/// receiver reaches them.
const HELPER: &str = r#"
import json, os, socket, sys
plan = json.loads(sys.argv[1])
def fail(msg):
    print("error " + msg, flush=True)
    sys.exit(1)
if plan["range"]:
    with open("/proc/sys/net/ipv4/ip_local_port_range", "w") as f:
        f.write("%d %d" % tuple(plan["range"]))
FAM = {"v4": socket.AF_INET, "v6": socket.AF_INET6, "dual": socket.AF_INET6}
held = []
def udp(fam):
    s = socket.socket(FAM[fam], socket.SOCK_DGRAM)
    held.append(s)
    return s
def receiver(g):
    s = udp(g["fam"])
    if g["reuseport"]:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if g["fam"] != "v4":
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1 if g["v6only"] else 0)
    if g["rcvbuf"]:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, g["rcvbuf"])
    try:
        s.bind((g["addr"], g["port"]))
    except OSError as e:
        fail("bind %s:%d: %s" % (g["addr"], g["port"], e))
    return s
groups = [[receiver(g) for _ in range(g["members"])] for g in plan["groups"]]
pools = {
    "v4": [udp("v4") for _ in range(plan["v4_clients"])],
    "v6": [udp("v6") for _ in range(plan["v6_clients"])],
}
for c in pools["v4"]:
    c.sendto(b"hello", ("127.0.0.1", plan["sink"]))
for c in pools["v6"]:
    c.sendto(b"hello", ("::1", plan["sink"]))
for g, members in zip(plan["groups"], groups):
    pool = pools[g["via"]]
    for i in range(g["count"]):
        pool[i % len(pool)].sendto(b"u" * g["size"], (g["to"], g["port"]))
    members[0].settimeout(2)
    for i in range(g["read"]):
        try:
            members[0].recv(65536)
        except OSError as e:
            fail("reading back from %s:%d: %s" % (g["addr"], g["port"], e))
for frm, to, count in plan["replies"]:
    port = pools["v4"][to].getsockname()[1]
    for _ in range(count):
        pools["v4"][frm].sendto(b"reply", ("127.0.0.1", port))
connected = []
for fam, to, port in plan["connected_clients"]:
    c = udp(fam)
    c.connect((to, port))
    connected.append(c)
shared = []
for g in plan["groups"]:
    for k in range(g["connected"]):
        s = receiver(g)
        if g["fam"] == "v4":
            peer = ("127.0.0.1", pools["v4"][k % len(pools["v4"])].getsockname()[1])
        elif g["fam"] == "dual":
            peer = ("::ffff:127.0.0.1", pools["v4"][k % len(pools["v4"])].getsockname()[1])
        else:
            peer = ("::1", pools["v6"][k % len(pools["v6"])].getsockname()[1])
        s.connect(peer)
        shared.append(list(s.getsockname()[:2]))
clients = [c.getsockname()[1] for c in pools["v4"] + pools["v6"] + connected]
inodes = [[os.fstat(s.fileno()).st_ino for s in m] for m in groups]
print("ready " + json.dumps({"inodes": inodes, "clients": clients, "shared": shared}), flush=True)
sys.stdin.read()
"#;

/// What the helper of one namespace built.
#[derive(serde::Deserialize)]
struct Built {
    /// Socket inodes of each group's members, in plan order.
    inodes: Vec<Vec<u64>>,
    /// Local ports of every client socket.
    clients: BTreeSet<u16>,
    /// (address, port) of the connected sockets sharing a receiver's port.
    shared: Vec<(String, u16)>,
}

type Helper = NsHelper<Built>;

fn start_helper(plan: &NsPlan) -> Helper {
    let mut cmd = python_with_loopback(HELPER, &[&plan.to_json()]);
    if plan.own_netns {
        in_new_netns(&mut cmd);
    }
    let helper: Helper = NsHelper::spawn(cmd, &format!("helper for netns {}", plan.label));
    assert_eq!(helper.built.inodes.len(), plan.groups.len());
    helper
}

// ---------------------------------------------------------------------------
// Reading ss and nstat

/// One UDP socket as `ss -uanmep -H -O` prints it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct SsUdp {
    /// `UNCONN` (what `ss -ul` lists) or `ESTAB`.
    state: String,
    local: SocketAddr,
    peer: String,
    recv_q: u64,
    inode: u64,
    /// `sk:` in hex: the socket cookie.
    cookie: u64,
    /// skmem `r`, `rb`, `d`.
    r: u64,
    rb: u64,
    d: u64,
    pid: Option<u32>,
}

impl SsUdp {
    fn unconnected(&self) -> bool {
        self.state == "UNCONN"
    }
    fn family(&self) -> &'static str {
        if self.local.is_ipv4() { "ipv4" } else { "ipv6" }
    }
    fn key(&self) -> AddrKey {
        (
            self.family(),
            self.local.ip().to_string(),
            self.local.port(),
        )
    }
}

/// (family label, address label, port).
type AddrKey = (&'static str, String, u16);

/// Every UDP socket of the namespace of process `pid`.
fn read_ss(pid: u32) -> Vec<SsUdp> {
    let text = nsenter(pid, &["ss", "-uanmepHO"], &[]);
    let mut v: Vec<SsUdp> = text.lines().map(parse_ss_line).collect();
    v.sort();
    v
}

/// `UNCONN 3328 0 127.0.0.1:53 0.0.0.0:* users:(("python3",pid=7,fd=3))
/// ino:34211979 sk:36d157 cgroup:/ <-> skmem:(r3328,rb4096,...,d16)`
fn parse_ss_line(line: &str) -> SsUdp {
    let t: Vec<&str> = line.split_whitespace().collect();
    assert!(t.len() >= 6, "unexpected ss line {line:?}");
    let local = parse_addr(t[3]).unwrap_or_else(|| panic!("local address in {line:?}"));
    let field = |prefix: &str| t.iter().find_map(|w| w.strip_prefix(prefix));
    let number = |s: &str| -> u64 { s.parse().unwrap_or_else(|_| panic!("{s:?} in {line:?}")) };
    let skmem: BTreeMap<String, u64> = field("skmem:(")
        .unwrap_or_else(|| panic!("no skmem in {line:?}"))
        .trim_end_matches(')')
        .split(',')
        .map(|f| {
            let split = f.find(|c: char| c.is_ascii_digit()).unwrap_or(f.len());
            (f[..split].to_string(), number(&f[split..]))
        })
        .collect();
    let pid = field("users:").map(|u| {
        u.split("pid=")
            .nth(1)
            .and_then(|p| p.split([',', ')']).next())
            .map(number)
            .unwrap_or_else(|| panic!("no pid in {line:?}")) as u32
    });
    SsUdp {
        state: t[0].to_string(),
        local,
        peer: t[4].to_string(),
        recv_q: number(t[1]),
        inode: number(field("ino:").unwrap_or_else(|| panic!("no ino in {line:?}"))),
        cookie: u64::from_str_radix(
            field("sk:").unwrap_or_else(|| panic!("no sk in {line:?}")),
            16,
        )
        .unwrap_or_else(|_| panic!("sk: in {line:?}")),
        r: skmem["r"],
        rb: skmem["rb"],
        d: skmem["d"],
        pid,
    }
}

/// `127.0.0.1:53`, `[::1]:53`, `[::ffff:127.0.0.1]:53`, `*:53` (dual-stack
/// `::`), `[::]:53`.
fn parse_addr(text: &str) -> Option<SocketAddr> {
    let (host, port) = text.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ip: IpAddr = if host == "*" {
        "::".parse().ok()?
    } else {
        host.split('%').next()?.parse().ok()?
    };
    Some(SocketAddr::new(ip, port.parse().ok()?))
}

/// The namespace's counters as `nstat` prints them: absolute (`-a`), not
/// written to any history (`-s`, and a history file of the test's own).
fn read_nstat(pid: u32, history: &str) -> BTreeMap<String, u64> {
    const NAMES: [&str; 4] = [
        "UdpRcvbufErrors",
        "Udp6RcvbufErrors",
        "UdpInErrors",
        "Udp6InErrors",
    ];
    let mut args = vec!["nstat", "-asz"];
    args.extend(NAMES);
    let text = nsenter(pid, &args, &[("NSTAT_HISTORY", history)]);
    let out: BTreeMap<String, u64> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut t = l.split_whitespace();
            Some((t.next()?.to_string(), t.next()?.parse().ok()?))
        })
        .collect();
    for n in NAMES {
        assert!(out.contains_key(n), "nstat printed no {n}:\n{text}");
    }
    out
}

/// What ss and nstat say about every namespace at one moment.
#[derive(Debug, PartialEq)]
struct Reading {
    ss: BTreeMap<String, Vec<SsUdp>>,
    nstat: BTreeMap<String, BTreeMap<String, u64>>,
}

fn read_all(plans: &[NsPlan], helpers: &[Helper], history: &str) -> Reading {
    let mut ss = BTreeMap::new();
    let mut nstat = BTreeMap::new();
    for (p, h) in plans.iter().zip(helpers) {
        ss.insert(p.label.clone(), read_ss(h.pid()));
        nstat.insert(p.label.clone(), read_nstat(h.pid(), history));
    }
    Reading { ss, nstat }
}

// ---------------------------------------------------------------------------
// The oracle: what the exporter must report, from ss alone

#[derive(Debug)]
struct NsOracle {
    label: String,
    /// Receivers by address.
    receivers: BTreeMap<AddrKey, Vec<SsUdp>>,
    /// (unconnected, connected) sockets per receiving address.
    addresses: BTreeMap<AddrKey, (u64, u64)>,
    other_sockets: u64,
    other_queue_bytes: u64,
    rcvbuf_errors: u64,
    in_errors: u64,
    helper_pid: u32,
    clients: BTreeSet<u16>,
}

fn wildcard(family: &str) -> String {
    if family == "ipv4" { "0.0.0.0" } else { "::" }.to_string()
}

impl NsOracle {
    /// The contract's rule, applied to ss: a receiver is an unconnected
    /// socket on a port outside the namespace's ephemeral range or listed;
    /// a connected socket on such a port counts under the receiver on its
    /// exact address, else under its family's wildcard receiver, else (an
    /// IPv4 socket) under a dual-stack `::` receiver, else under its own
    /// address; every other socket is "other".
    fn new(plan: &NsPlan, helper: &Helper, reading: &Reading, listed: &BTreeSet<u16>) -> NsOracle {
        let lines = &reading.ss[&plan.label];
        let nstat = &reading.nstat[&plan.label];
        let receiving =
            |port: u16| !(plan.range.0..=plan.range.1).contains(&port) || listed.contains(&port);
        let mut receivers: BTreeMap<AddrKey, Vec<SsUdp>> = BTreeMap::new();
        let mut connected = Vec::new();
        let (mut other_sockets, mut other_queue_bytes) = (0, 0);
        for s in lines {
            if !receiving(s.local.port()) {
                other_sockets += 1;
                other_queue_bytes += s.recv_q;
            } else if s.unconnected() {
                receivers.entry(s.key()).or_default().push(s.clone());
            } else {
                connected.push(s.key());
            }
        }
        let mut addresses: BTreeMap<AddrKey, (u64, u64)> = receivers
            .iter()
            .map(|(k, v)| (k.clone(), (v.len() as u64, 0)))
            .collect();
        for key in connected {
            let wild = (key.0, wildcard(key.0), key.2);
            let dual = ("ipv6", wildcard("ipv6"), key.2);
            let at = if receivers.contains_key(&key) {
                key
            } else if receivers.contains_key(&wild) {
                wild
            } else if receivers.contains_key(&dual) {
                dual
            } else {
                key
            };
            addresses.entry(at).or_default().1 += 1;
        }
        NsOracle {
            label: plan.label.clone(),
            receivers,
            addresses,
            other_sockets,
            other_queue_bytes,
            rcvbuf_errors: nstat["UdpRcvbufErrors"] + nstat["Udp6RcvbufErrors"],
            in_errors: nstat["UdpInErrors"] + nstat["Udp6InErrors"],
            helper_pid: helper.pid(),
            clients: helper.built.clients.clone(),
        }
    }

    fn receiver_count(&self) -> usize {
        self.receivers.values().map(Vec::len).sum()
    }
}

/// The construction is what the plan says, by ss alone: if the kernel
/// stops behaving as the test assumes, say so rather than compare the
/// exporter with a mix the test did not mean.
fn check_construction(plan: &NsPlan, helper: &Helper, lines: &[SsUdp], range_text: &str) {
    let at = &plan.label;
    let got_range: Vec<u16> = range_text
        .split_whitespace()
        .map(|p| p.parse().expect("port range"))
        .collect();
    assert_eq!(
        got_range,
        [plan.range.0, plan.range.1],
        "netns {at}: ip_local_port_range"
    );
    let by_inode: BTreeMap<u64, &SsUdp> = lines.iter().map(|s| (s.inode, s)).collect();
    let planned = plan
        .groups
        .iter()
        .map(|g| g.members + g.connected)
        .sum::<u32>()
        + plan.v4_clients
        + plan.v6_clients
        + plan.connected_clients.len() as u32;
    assert_eq!(
        lines.len(),
        planned as usize,
        "netns {at}: ss lists {} UDP sockets, the plan has {planned}:\n{lines:#?}",
        lines.len()
    );
    for s in lines {
        assert_eq!(s.pid, Some(helper.pid()), "netns {at}: owner of {s:?}");
    }
    for (g, inodes) in plan.groups.iter().zip(&helper.built.inodes) {
        let what = format!("netns {at} {}", g.describe());
        let members: Vec<&SsUdp> = inodes
            .iter()
            .map(|i| {
                *by_inode
                    .get(i)
                    .unwrap_or_else(|| panic!("{what}: ss does not list inode {i}"))
            })
            .collect();
        for s in &members {
            assert!(s.unconnected(), "{what}: {s:?}");
            assert_eq!(s.local.port(), g.port, "{what}: {s:?}");
            assert_eq!(
                s.local.ip(),
                g.addr.parse::<IpAddr>().unwrap(),
                "{what}: {s:?}"
            );
            if g.rcvbuf > 0 {
                assert_eq!(s.rb, 2 * u64::from(g.rcvbuf), "{what}: twice SO_RCVBUF");
            }
            if g.read == 0 {
                assert_eq!(s.recv_q, s.r, "{what}: Recv-Q is skmem r: {s:?}");
            }
        }
        let drops: u64 = members.iter().map(|s| s.d).sum();
        let queued: u64 = members.iter().map(|s| s.recv_q).sum();
        match g.fill {
            Fill::Flood(_) => assert!(drops > 0, "{what}: no drop: {members:?}"),
            _ => assert_eq!(drops, 0, "{what}: drops: {members:?}"),
        }
        match g.fill {
            Fill::Empty => assert_eq!(queued, 0, "{what}: {members:?}"),
            _ => assert!(queued > 0, "{what}: nothing queued: {members:?}"),
        }
        if g.read > 0 {
            // The kernel releases read memory in batches (udp's forward
            // deficit): Recv-Q counts what is left, skmem r lags.
            assert!(
                members[0].recv_q < members[0].r,
                "{what}: after reading, Recv-Q below r: {members:?}"
            );
        }
    }
    for (addr, port) in &helper.built.shared {
        let found = lines.iter().any(|s| {
            !s.unconnected() && s.local.port() == *port && s.local.ip().to_string() == *addr
        });
        assert!(
            found,
            "netns {at}: connected socket on {addr}:{port} not in ss"
        );
    }
    for port in &helper.built.clients {
        assert!(
            (plan.range.0..=plan.range.1).contains(port),
            "netns {at}: client port {port} outside {:?}",
            plan.range
        );
        assert!(
            lines.iter().any(|s| s.local.port() == *port),
            "netns {at}: client port {port} not in ss"
        );
    }
}

// ---------------------------------------------------------------------------
// Comparing

/// The snapshot's UDP view of one namespace against the oracle.
fn compare_json(report: &mut Report, ns: &Value, oracle: &NsOracle) {
    let at = &oracle.label;
    report.eq(
        format!("netns {at}: udp collector ok"),
        ns["status"]["udp"]["ok"].as_bool(),
        Some(true),
    );
    let udp = &ns["udp"];
    let Some(list) = udp["receivers"].as_array() else {
        report.fail(format!("netns {at}: no udp.receivers[] in {udp}"));
        return;
    };
    report.eq(
        format!("netns {at}: unexported"),
        udp["unexported"].clone(),
        json!([["cap", 0]]),
    );
    report.eq(
        format!("netns {at}: other_sockets"),
        udp["other_sockets"].as_u64(),
        Some(oracle.other_sockets),
    );
    report.eq(
        format!("netns {at}: other_queue_bytes"),
        udp["other_queue_bytes"].as_u64(),
        Some(oracle.other_queue_bytes),
    );
    report.eq(
        format!("netns {at}: netstat udp_rcvbuf_errors"),
        ns["netstat"]["udp_rcvbuf_errors"].as_u64(),
        Some(oracle.rcvbuf_errors),
    );
    report.eq(
        format!("netns {at}: netstat udp_in_errors"),
        ns["netstat"]["udp_in_errors"].as_u64(),
        Some(oracle.in_errors),
    );
    let owners = snapshot_owners(ns);
    let mut ours: BTreeMap<AddrKey, Vec<&Value>> = BTreeMap::new();
    for r in list {
        let family = match r["family"].as_str() {
            Some("ipv4") => "ipv4",
            Some("ipv6") => "ipv6",
            other => {
                report.fail(format!("netns {at}: receiver family {other:?}: {r}"));
                continue;
            }
        };
        let key = (
            family,
            r["address"].as_str().unwrap_or("<none>").to_string(),
            r["port"].as_u64().unwrap_or(0) as u16,
        );
        report.eq(
            format!("netns {at} {key:?}: peak of a one-off sample"),
            &r["peak_bytes"],
            &Value::Null,
        );
        ours.entry(key).or_default().push(r);
    }
    report.pair_by_inode(
        at,
        "receiver",
        &ours,
        &oracle.receivers,
        |s| s.inode,
        |report, what, r, s| {
            report.eq(
                format!("{what} queue_bytes (Recv-Q)"),
                r["queue_bytes"].as_u64(),
                Some(s.recv_q),
            );
            report.eq(
                format!("{what} buffer_bytes (rb)"),
                r["buffer_bytes"].as_u64(),
                Some(s.rb),
            );
            report.eq(format!("{what} drops (d)"), r["drops"].as_u64(), Some(s.d));
            report.eq(
                format!("{what} cookie (sk)"),
                r["cookie"].as_u64(),
                Some(s.cookie),
            );
            let owner = r["cookie"].as_u64().and_then(|c| owners.get(&c)).copied();
            report.eq(format!("{what} owner pid"), owner, s.pid.map(u64::from));
        },
    );
    let mut addresses: BTreeMap<AddrKey, (u64, u64)> = BTreeMap::new();
    for a in udp["addresses"].as_array().into_iter().flatten() {
        let family = if a["family"] == "ipv4" {
            "ipv4"
        } else {
            "ipv6"
        };
        let key = (
            family,
            a["address"].as_str().unwrap_or("<none>").to_string(),
            a["port"].as_u64().unwrap_or(0) as u16,
        );
        let counts = (
            a["unconnected"].as_u64().unwrap_or(u64::MAX),
            a["connected"].as_u64().unwrap_or(u64::MAX),
        );
        if addresses.insert(key.clone(), counts).is_some() {
            report.fail(format!("netns {at} {key:?}: address listed twice"));
        }
    }
    report.eq(
        format!("netns {at}: (unconnected, connected) per address"),
        addresses,
        oracle.addresses.clone(),
    );
}

const RECEIVER_SERIES: [&str; 4] = [
    "sockdiag_udp_receive_queue_bytes",
    "sockdiag_udp_receive_queue_peak_bytes",
    "sockdiag_udp_receive_buffer_bytes",
    "sockdiag_udp_drops_total",
];
const PROCESS_INFO: &str = "sockdiag_udp_receiver_process_info";

/// Figures of one receiver's series on `/metrics`.
#[derive(Debug, Default)]
struct MetricReceiver {
    values: BTreeMap<&'static str, f64>,
    pid: Option<String>,
    comm: Option<String>,
}

/// The daemon's view of one namespace against the oracle.
fn compare_metrics(report: &mut Report, m: &Metrics, oracle: &NsOracle, daemon_port: u16) {
    let at = oracle.label.as_str();
    let mut ours: BTreeMap<(AddrKey, Option<u64>), MetricReceiver> = BTreeMap::new();
    let mut sockets: BTreeMap<AddrKey, (u64, u64)> = BTreeMap::new();
    for s in &m.0 {
        if s.labels.get("netns").map(String::as_str) != Some(at) {
            continue;
        }
        // No client's ephemeral port is a label value. The daemon's own
        // web port is a TCP one (listener and connections series), which a
        // UDP client of the test's namespace may share by number.
        if let Some(port) = s.labels.get("port").and_then(|p| p.parse::<u16>().ok()) {
            let tcp_daemon_port = !s.name.starts_with("sockdiag_udp_") && port == daemon_port;
            if oracle.clients.contains(&port) && !tcp_daemon_port {
                report.fail(format!(
                    "netns {at}: client port {port} is a label: {} {:?}",
                    s.name, s.labels
                ));
            }
        }
        if !s.name.starts_with("sockdiag_udp_") {
            continue;
        }
        let family = match s.labels.get("family").map(String::as_str) {
            Some("ipv4") => "ipv4",
            Some("ipv6") => "ipv6",
            _ => "",
        };
        let key = || -> AddrKey {
            (
                family,
                s.labels.get("address").cloned().unwrap_or_default(),
                s.labels
                    .get("port")
                    .and_then(|p| p.parse().ok())
                    .unwrap_or(0),
            )
        };
        let names = s.label_names();
        let member = s.member();
        let mut base = vec!["address", "family", "netns", "port"];
        if member.is_some() {
            base.push("member");
        }
        let what = format!("netns {at} {:?} member {member:?}: {}", key(), s.name);
        if let Some(&name) = RECEIVER_SERIES.iter().find(|n| **n == s.name) {
            base.sort();
            report.eq(format!("{what} label names"), names, base);
            let entry = ours.entry((key(), member)).or_default();
            if entry.values.insert(name, s.value).is_some() {
                report.fail(format!("{what}: twice"));
            }
        } else if s.name == PROCESS_INFO {
            base.extend(OWNER_LABELS);
            base.sort();
            report.eq(format!("{what} label names"), names, base);
            let entry = ours.entry((key(), member)).or_default();
            if entry.pid.replace(s.labels["pid"].clone()).is_some() {
                report.fail(format!("{what}: two owners"));
            }
            entry.comm = Some(s.labels["comm"].clone());
        } else if s.name == "sockdiag_udp_sockets" {
            let state = s.labels.get("state").map(String::as_str);
            let entry = sockets.entry(key()).or_default();
            match state {
                Some("unconnected") => entry.0 += s.value as u64,
                Some("connected") => entry.1 += s.value as u64,
                other => report.fail(format!("{what}: state {other:?}")),
            }
            if s.value <= 0.0 {
                report.fail(format!("{what}: a zero count is exported ({})", s.value));
            }
        }
    }
    report.pair_members(at, &ours, &oracle.receivers, |report, what, mine, ss| {
        // Members carry no inode on /metrics: the figures are compared as
        // multisets.
        let mut got: Vec<(u64, u64, u64)> = Vec::new();
        for (member, r) in mine {
            let what = format!("{what} member {member:?}");
            let v = |name: &str| r.values.get(name).map(|v| *v as u64);
            let (Some(queue), Some(buffer), Some(drops)) = (
                v("sockdiag_udp_receive_queue_bytes"),
                v("sockdiag_udp_receive_buffer_bytes"),
                v("sockdiag_udp_drops_total"),
            ) else {
                report.fail(format!("{what}: a figure is missing: {r:?}"));
                continue;
            };
            // A static queue: its peak is its length.
            report.eq(
                format!("{what} peak"),
                v("sockdiag_udp_receive_queue_peak_bytes"),
                Some(queue),
            );
            report.eq(
                format!("{what} owner"),
                (r.pid.clone(), r.comm.as_deref()),
                (Some(oracle.helper_pid.to_string()), Some("python3")),
            );
            got.push((queue, buffer, drops));
        }
        let mut want: Vec<(u64, u64, u64)> = ss.iter().map(|s| (s.recv_q, s.rb, s.d)).collect();
        got.sort();
        want.sort();
        report.eq(format!("{what}: (queue, buffer, drops)"), got, want);
    });
    report.eq(
        format!("netns {at}: sockdiag_udp_sockets (unconnected, connected)"),
        sockets,
        oracle.addresses.clone(),
    );
    let ns = [("netns", at)];
    report.eq(
        format!("netns {at}: other sockets"),
        m.value_or_zero("sockdiag_udp_other_sockets", &ns),
        oracle.other_sockets as f64,
    );
    report.eq(
        format!("netns {at}: other receive queue bytes"),
        m.value_or_zero("sockdiag_udp_other_receive_queue_bytes", &ns),
        oracle.other_queue_bytes as f64,
    );
    report.eq(
        format!("netns {at}: unexported (cap)"),
        m.value_or_zero(
            "sockdiag_udp_receivers_unexported",
            &[("netns", at), ("reason", "cap")],
        ),
        0.0,
    );
    report.eq(
        format!("netns {at}: rcvbuf errors"),
        m.find("sockdiag_netstat_udp_rcvbuf_errors_total", &ns)
            .first()
            .map(|s| s.value),
        Some(oracle.rcvbuf_errors as f64),
    );
    report.eq(
        format!("netns {at}: in errors"),
        m.find("sockdiag_netstat_udp_in_errors_total", &ns)
            .first()
            .map(|s| s.value),
        Some(oracle.in_errors as f64),
    );
}

// ---------------------------------------------------------------------------

/// Reads until two readings 100 ms apart agree (loopback delivery is done
/// by then), bounded.
fn settle(plans: &[NsPlan], helpers: &[Helper], history: &str) -> Reading {
    let mut last = read_all(plans, helpers, history);
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(100));
        let now = read_all(plans, helpers, history);
        if now == last {
            return now;
        }
        last = now;
    }
    panic!("the UDP mix did not settle within 2 s");
}

#[test]
fn udp_oracle_against_ss_and_nstat() {
    common::in_netns("udp_oracle_against_ss_and_nstat", || {
        let started = Instant::now();
        let seed = Seed::from_env("SOCKDIAG_UDP_ORACLE_SEED", "udp_oracle");
        let mut rng = seed.rng();
        let tmp = TempDir::new("udp-oracle");
        let root = tmp.path();
        let run_netns = root.join("run-netns");
        std::fs::create_dir_all(&run_netns).expect("creating the run-netns dir");
        let history = root.join("nstat.history");
        let history = history.to_str().expect("UTF-8 temp dir");

        // host, a named namespace, and one or two known by inode; about
        // half with an ephemeral range of their own.
        let range = |rng: &mut Rng| {
            if rng.chance(50) {
                DEFAULT_RANGE
            } else {
                let lo = rng.range(40000, 45000) as u16;
                (lo, lo + rng.range(8000, 12000) as u16)
            }
        };
        let mut labels = vec![("host", false), ("blue", true)];
        let anon = ["anon0", "anon1"];
        for tag in anon.iter().take(rng.range(1, 2) as usize) {
            labels.push((tag, true));
        }
        let mut plans: Vec<NsPlan> = labels
            .into_iter()
            .map(|(label, own)| {
                let r = range(&mut rng);
                NsPlan::build(&mut rng, label, own, r)
            })
            .collect();
        // Two ports inside every namespace's ephemeral range, bound in
        // every namespace so that no client there can take them.
        let lo = plans.iter().map(|p| p.range.0).max().unwrap();
        let hi = plans.iter().map(|p| p.range.1).min().unwrap();
        let first = rng.range(u64::from(lo), u64::from(hi) - 1) as u16;
        let second = if first + 1 < hi { first + 1 } else { first - 1 };
        let listed_ports = [first.min(second), first.max(second)];
        for plan in &mut plans {
            plan.add_listed(&mut rng, &listed_ports);
        }

        let helpers: Vec<Helper> = plans.iter().map(start_helper).collect();
        for (plan, helper) in plans.iter_mut().zip(&helpers).skip(1) {
            helper.label_netns(&run_netns, &mut plan.label);
        }
        for plan in &plans {
            println!("netns {} ({} groups):", plan.label, plan.groups.len());
            for line in plan.describe() {
                println!("  {line}");
            }
        }

        let before = settle(&plans, &helpers, history);
        for (plan, helper) in plans.iter().zip(&helpers) {
            let range_text = nsenter(
                helper.pid(),
                &["cat", "/proc/sys/net/ipv4/ip_local_port_range"],
                &[],
            );
            check_construction(plan, helper, &before.ss[&plan.label], &range_text);
        }
        let no_listed = BTreeSet::new();
        let listed: BTreeSet<u16> = listed_ports.into_iter().collect();
        let oracles_plain: Vec<NsOracle> = plans
            .iter()
            .zip(&helpers)
            .map(|(p, h)| NsOracle::new(p, h, &before, &no_listed))
            .collect();
        let oracles: Vec<NsOracle> = plans
            .iter()
            .zip(&helpers)
            .map(|(p, h)| NsOracle::new(p, h, &before, &listed))
            .collect();
        for o in &oracles {
            let drops: u64 = o.receivers.values().flatten().map(|s| s.d).sum();
            println!(
                "  netns {}: {} receivers ({} without --collector.udp.ports), {} drops, \
                 {} other sockets, RcvbufErrors {} InErrors {}",
                o.label,
                o.receiver_count(),
                oracles_plain
                    .iter()
                    .find(|p| p.label == o.label)
                    .map_or(0, NsOracle::receiver_count),
                drops,
                o.other_sockets,
                o.rcvbuf_errors,
                o.in_errors
            );
        }
        println!("mix built in {:?}", started.elapsed());
        let run_netns_arg = run_netns.to_str().expect("UTF-8 temp dir");
        let ports_arg = format!("{},{}", listed_ports[0], listed_ports[1]);
        let flags = netns_flags(run_netns_arg);
        let mut flags_listed = flags.to_vec();
        flags_listed.extend(["--collector.udp.ports", &ports_arg]);

        // Phase 1: a snapshot without the flag, one with it, between two
        // readings.
        let plain = snapshot_json(&flags);
        let with_ports = snapshot_json(&flags_listed);
        let after = read_all(&plans, &helpers, history);
        assert_eq!(after, before, "the mix changed while the snapshots ran");
        let mut report = Report::new(
            "snapshot --format json",
            seed,
            "ss and nstat",
            "UDP receiver",
        );
        report.snapshot_namespaces(&plain, &oracles_plain, |o| &o.label, compare_json);
        report.finish();
        let mut report = Report::new(
            format!("snapshot --collector.udp.ports {ports_arg}"),
            seed,
            "ss and nstat",
            "UDP receiver",
        );
        report.snapshot_namespaces(&with_ports, &oracles, |o| &o.label, compare_json);
        report.finish();
        println!("phase 1 done at {:?}", started.elapsed());

        // Phase 2: a running daemon (with the flag), between `after` and a
        // last reading.
        let daemon = Daemon::start(&flags_listed);
        let count = |m: &Metrics, name: &str, ns: &str| m.find(name, &[("netns", ns)]).len();
        daemon.wait_for(
            "every UDP receiver and owner",
            |m| {
                oracles.iter().all(|o| {
                    let at = o.label.as_str();
                    RECEIVER_SERIES
                        .iter()
                        .chain([&PROCESS_INFO])
                        .all(|n| count(m, n, at) == o.receiver_count())
                        && count(m, "sockdiag_netstat_udp_rcvbuf_errors_total", at) == 1
                })
            },
            |m| {
                let seen: Vec<(String, usize, usize, usize)> = oracles
                    .iter()
                    .map(|o| {
                        (
                            o.label.clone(),
                            o.receiver_count(),
                            count(m, RECEIVER_SERIES[0], &o.label),
                            count(m, PROCESS_INFO, &o.label),
                        )
                    })
                    .collect();
                format!("replay with {seed}; (netns, expected, queues, owners) {seen:?}")
            },
        );
        let m = daemon.metrics();
        let last = read_all(&plans, &helpers, history);
        assert_eq!(last, before, "the mix changed while the daemon ran");
        let mut report = Report::new("daemon /metrics", seed, "ss and nstat", "UDP receiver");
        for oracle in &oracles {
            compare_metrics(&mut report, &m, oracle, daemon.addr.port());
        }
        report.eq(
            "udp collector errors",
            m.value_or_zero("sockdiag_collector_errors_total", &[("collector", "udp")]),
            0.0,
        );
        report.finish();
        let status = daemon.terminate();
        assert!(status.success(), "daemon exit on SIGTERM: {status}");
        println!("udp oracle done in {:?}", started.elapsed());
        drop(helpers);
    });
}
