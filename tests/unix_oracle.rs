//! Oracle test for unix listeners: `ss -xl` (iproute2) judges every figure
//! the exporter reports for listening unix stream and seqpacket sockets, in
//! several network namespaces at once.
//!
//! The test's own namespace (`host`) and two or three namespaces it creates
//! (one named through a test-owned `--path.run-netns` directory, the others
//! known by inode) each get a randomized but static mix, built by a python3
//! helper living in that namespace: path and abstract listeners, stream and
//! seqpacket, backlogs 1..=32, pending clients never accepted, queues
//! filled to backlog + 1 with further connects refused (EAGAIN), names with
//! a space, UTF-8 and a backslash, names of the longest length, a path bound
//! again after unlink while the old socket still listens (two listeners,
//! one label), the same abstract name in every namespace, clients from the
//! test's namespace queued on another namespace's path listener, and
//! sockets that must not count (datagram, bound but not listening,
//! connected pairs, a listener closed again).
//!
//! Once the mix is static, `snapshot --format json` and then a running
//! daemon's `/metrics` are compared with `ss -xlHp` run in each namespace,
//! read before and after each view (they must be equal): every listener,
//! none missing or extra, length and limit, labels exactly as the contract
//! says (no `port`; `member` only on a shared label), no drop, SYN, byte or
//! age series, and the owner's pid.
//!
//! The mix is drawn from a seeded xorshift generator; the seed is printed,
//! and `SOCKDIAG_UNIX_ORACLE_SEED=<seed>` replays a run.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::report::Report;
use common::rng::{Rng, Seed};
use common::{
    Daemon, Metrics, NsHelper, OWNER_LABELS, TempDir, in_new_netns, netns_flags, nsenter,
    snapshot_json, snapshot_owners,
};
use serde_json::{Value, json};
use socket2::{Domain, SockAddr, Socket, Type};

// ---------------------------------------------------------------------------
// The plan of one namespace

/// `sun_path`: a path takes at most 107 bytes and its NUL (python refuses
/// the 108-byte unterminated form), an abstract name 108 with its leading
/// NUL.
const SUN_PATH: usize = 108;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Stream,
    Seqpacket,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Stream => "stream",
            Kind::Seqpacket => "seqpacket",
        }
    }
    fn ss_netid(self) -> &'static str {
        match self {
            Kind::Stream => "u_str",
            Kind::Seqpacket => "u_seq",
        }
    }
    fn socket_type(self) -> Type {
        match self {
            Kind::Stream => Type::STREAM,
            Kind::Seqpacket => Type::SEQPACKET,
        }
    }
}

#[derive(Debug, Clone)]
struct PlannedListener {
    kind: Kind,
    /// The address as bound: a path, or NUL and an abstract name.
    name: Vec<u8>,
    backlog: u32,
    /// Connections accepted before any is left pending.
    accepted: u32,
    /// Clients of the helper left in the queue.
    pending: u32,
    /// Further non-blocking connects, each of which must fail with EAGAIN.
    refused: u32,
    /// Unlink the path first: an earlier listener still listens on it.
    replace: bool,
    /// Clients the test process (in `host`) queues here across namespaces.
    cross: u32,
}

impl PlannedListener {
    fn is_path(&self) -> bool {
        self.name.first() != Some(&0)
    }
    fn queued(&self) -> u32 {
        self.pending + self.cross
    }
}

struct NsPlan {
    /// The `netns` label (for a namespace known by inode, set once its
    /// helper runs).
    label: String,
    /// Whether the helper gets a network namespace of its own.
    own_netns: bool,
    dir: PathBuf,
    listeners: Vec<PlannedListener>,
    description: Vec<String>,
}

/// Random fill of one listener: (pending, refused).
fn fill(rng: &mut Rng, backlog: u32, full: bool) -> (u32, u32) {
    if full {
        (backlog + 1, rng.range(1, 3) as u32)
    } else if rng.chance(30) {
        (0, 0)
    } else {
        (rng.range(1, u64::from(backlog)) as u32, 0)
    }
}

fn random_listener(rng: &mut Rng, name: Vec<u8>, full: bool) -> PlannedListener {
    let kind = if rng.chance(35) {
        Kind::Seqpacket
    } else {
        Kind::Stream
    };
    let backlog = rng.range(1, 32) as u32;
    let (pending, refused) = fill(rng, backlog, full);
    let accepted = if rng.chance(30) {
        rng.range(1, 2) as u32
    } else {
        0
    };
    PlannedListener {
        kind,
        name,
        backlog,
        accepted,
        pending,
        refused,
        replace: false,
        cross: 0,
    }
}

fn path_name(dir: &Path, file: &str) -> Vec<u8> {
    let mut v = dir.as_os_str().as_bytes().to_vec();
    v.push(b'/');
    v.extend_from_slice(file.as_bytes());
    assert!(v.len() < SUN_PATH, "path too long for sun_path: {v:?}");
    v
}

fn abstract_name(name: &str) -> Vec<u8> {
    let mut v = vec![0];
    v.extend_from_slice(name.as_bytes());
    assert!(v.len() <= SUN_PATH);
    v
}

impl NsPlan {
    fn build(rng: &mut Rng, label: &str, own_netns: bool, dir: PathBuf) -> NsPlan {
        let tag = label.to_string();
        let mut names: Vec<Vec<u8>> = Vec::new();
        for i in 0..rng.range(2, 5) {
            names.push(path_name(&dir, &format!("s{i}.sock")));
        }
        for i in 0..rng.range(1, 3) {
            names.push(abstract_name(&format!("sockdiag-{tag}-{i}")));
        }
        // Names whose label must come out as the path is: a space, UTF-8,
        // a backslash (which the label doubles, see `expected_label`).
        names.push(path_name(&dir, "with space.sock"));
        names.push(path_name(&dir, "caf\u{e9} \u{2615}.sock"));
        names.push(path_name(&dir, "back\\slash.sock"));
        names.push(abstract_name(&format!("abstract caf\u{e9} {tag}")));
        // The same abstract name in every namespace: one label, several
        // namespaces, never a member label.
        names.push(abstract_name("sockdiag-shared"));
        // The longest names sun_path holds.
        let mut long = path_name(&dir, "");
        long.resize(SUN_PATH - 1, b'L');
        names.push(long);
        let mut long = abstract_name(&format!("sockdiag-{tag}-"));
        long.resize(SUN_PATH, b'A');
        names.push(long);

        // At least one full queue per namespace; otherwise 40%.
        let mut fulls: Vec<bool> = (0..names.len()).map(|i| i == 0 || rng.chance(40)).collect();
        rng.shuffle(&mut fulls);
        let mut listeners: Vec<PlannedListener> = names
            .into_iter()
            .zip(fulls)
            .map(|(name, full)| random_listener(rng, name, full))
            .collect();

        // A path bound again after unlink while its first socket still
        // listens (a server restarted with the old process not yet gone).
        let rebound = path_name(&dir, "rebound.sock");
        let old_full = rng.chance(50);
        listeners.push(random_listener(rng, rebound.clone(), old_full));
        let new_full = !old_full && rng.chance(50);
        let mut new = random_listener(rng, rebound, new_full);
        new.replace = true;
        listeners.push(new);

        let mut plan = NsPlan {
            label: tag,
            own_netns,
            dir,
            listeners,
            description: Vec::new(),
        };
        plan.describe();
        plan
    }

    fn describe(&mut self) {
        self.description = self
            .listeners
            .iter()
            .map(|l| {
                format!(
                    "{} {:?} backlog {}: {} accepted, {} pending{}{}{}",
                    l.kind.as_str(),
                    display_name(&l.name),
                    l.backlog,
                    l.accepted,
                    l.pending,
                    if l.cross > 0 {
                        format!(", {} from host", l.cross)
                    } else {
                        String::new()
                    },
                    if l.refused > 0 {
                        format!(", {} refused", l.refused)
                    } else {
                        String::new()
                    },
                    if l.replace {
                        ", bound after unlink of the one above"
                    } else {
                        ""
                    }
                )
            })
            .collect();
    }

    /// What the python helper is told to build.
    fn to_json(&self) -> String {
        let listeners: Vec<Value> = self
            .listeners
            .iter()
            .map(|l| {
                json!({
                    "kind": l.kind.as_str(),
                    "name": hex(&l.name),
                    "backlog": l.backlog,
                    "accepted": l.accepted,
                    "pending": l.pending,
                    "refused": l.refused,
                    "replace": l.replace,
                })
            })
            .collect();
        json!({
            "dir": hex(self.dir.as_os_str().as_bytes()),
            "tag": self.label,
            "listeners": listeners,
        })
        .to_string()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A name as `ss` prints it: an abstract name's leading NUL as `@`.
fn display_name(name: &[u8]) -> String {
    match name.split_first() {
        Some((0, rest)) => format!("@{}", String::from_utf8_lossy(rest)),
        _ => String::from_utf8_lossy(name).into_owned(),
    }
}

// ---------------------------------------------------------------------------
// The helper process of one namespace

/// Builds the plan it gets as JSON, prints `ready` and the socket inodes of
/// its listeners (in plan order), and holds everything until stdin closes.
/// Noise sockets (datagram, bound but not listening, connected pairs, a
/// listener already closed) must never show as listeners.
const HELPER: &str = r#"
import json, os, socket, sys
plan = json.loads(sys.argv[1])
types = {"stream": socket.SOCK_STREAM, "seqpacket": socket.SOCK_SEQPACKET}
held, inodes = [], []
def fail(msg):
    print("error " + msg, flush=True)
    sys.exit(1)
for l in plan["listeners"]:
    name, kind = bytes.fromhex(l["name"]), types[l["kind"]]
    if l["replace"]:
        os.unlink(name)
    s = socket.socket(socket.AF_UNIX, kind)
    s.bind(name)
    s.listen(l["backlog"])
    held.append(s)
    for _ in range(l["accepted"]):
        c = socket.socket(socket.AF_UNIX, kind)
        c.connect(name)
        held += [c, s.accept()[0]]
    for i in range(l["pending"]):
        c = socket.socket(socket.AF_UNIX, kind)
        c.setblocking(False)
        try:
            c.connect(name)
        except OSError as e:
            fail("pending client %d of %r: %s" % (i, name, e))
        held.append(c)
    for i in range(l["refused"]):
        c = socket.socket(socket.AF_UNIX, kind)
        c.setblocking(False)
        try:
            c.connect(name)
        except BlockingIOError:
            pass
        except OSError as e:
            fail("connect beyond a full queue of %r: %s, not EAGAIN" % (name, e))
        else:
            fail("connect beyond a full queue of %r succeeded" % (name,))
        c.close()
    inodes.append(os.fstat(s.fileno()).st_ino)
tag = plan["tag"].encode()
d = bytes.fromhex(plan["dir"])
for kind, name in [
    (socket.SOCK_DGRAM, b"\0noise-dgram-" + tag),
    (socket.SOCK_DGRAM, d + b"/noise-dgram.sock"),
    (socket.SOCK_STREAM, b"\0noise-bound-" + tag),
    (socket.SOCK_SEQPACKET, d + b"/noise-bound.sock"),
]:
    n = socket.socket(socket.AF_UNIX, kind)
    n.bind(name)
    held.append(n)
for kind in (socket.SOCK_STREAM, socket.SOCK_SEQPACKET, socket.SOCK_DGRAM):
    held += list(socket.socketpair(socket.AF_UNIX, kind))
closed = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
closed.bind(b"\0noise-closed-" + tag)
closed.listen(4)
closed.close()
print("ready " + json.dumps(inodes), flush=True)
sys.stdin.read()
"#;

/// The helper of one namespace; what it built is its listeners' socket
/// inodes, in plan order.
type Helper = NsHelper<Vec<u64>>;

fn start_helper(plan: &NsPlan) -> Helper {
    std::fs::create_dir_all(&plan.dir).expect("creating the namespace's socket dir");
    let mut cmd = Command::new("python3");
    cmd.args(["-c", HELPER, &plan.to_json()]);
    if plan.own_netns {
        in_new_netns(&mut cmd);
    }
    let helper: Helper = NsHelper::spawn(cmd, &format!("helper for netns {}", plan.label));
    assert_eq!(helper.built.len(), plan.listeners.len());
    helper
}

/// A non-blocking client of `name` in the test's own namespace.
fn connect_from_host(kind: Kind, name: &[u8]) -> std::io::Result<Socket> {
    let s = Socket::new(Domain::UNIX, kind.socket_type(), None).expect("unix client socket");
    s.set_nonblocking(true).expect("non-blocking client");
    let addr = SockAddr::unix(std::ffi::OsStr::from_bytes(name)).expect("unix address");
    s.connect(&addr).map(|()| s)
}

// ---------------------------------------------------------------------------
// Reading ss

/// One listening unix socket as `ss -xlHp` prints it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct SsListener {
    netid: String,
    /// As printed: the path, or `@` and an abstract name.
    name: String,
    inode: u64,
    recv_q: u64,
    send_q: u64,
    pid: Option<u32>,
}

/// `ss -xlHp` in the namespace of process `pid`, listeners only (`-l` also
/// lists unconnected sockets).
fn read_ss(pid: u32) -> Vec<SsListener> {
    let mut v: Vec<SsListener> = nsenter(pid, &["ss", "-xlHp"], &[])
        .lines()
        .filter_map(parse_ss_line)
        .collect();
    v.sort();
    v
}

/// `u_str LISTEN 3 2 /tmp/a b 3432643 * 0 users:(("python3",pid=7,fd=3))`:
/// the name may hold single spaces, so it is what lies between Send-Q and
/// the last three columns (inode, peer name, peer inode).
fn parse_ss_line(line: &str) -> Option<SsListener> {
    let mut t: Vec<&str> = line.split_whitespace().collect();
    if t.len() < 2 || t[1] != "LISTEN" {
        return None;
    }
    let pid = match t.last() {
        Some(users) if users.starts_with("users:") => {
            let pid = users
                .split("pid=")
                .nth(1)
                .and_then(|p| p.split([',', ')']).next())
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("no pid in {line:?}"));
            t.pop();
            Some(pid)
        }
        _ => None,
    };
    let n = t.len();
    assert!(
        n >= 8 && t[n - 2] == "*" && t[n - 1] == "0",
        "unexpected ss line {line:?}"
    );
    let number = |s: &str| -> u64 { s.parse().unwrap_or_else(|_| panic!("{s:?} in {line:?}")) };
    Some(SsListener {
        netid: t[0].to_string(),
        name: t[4..n - 3].join(" "),
        inode: number(t[n - 3]),
        recv_q: number(t[2]),
        send_q: number(t[3]),
        pid,
    })
}

/// The `address` label of a socket `ss` prints as `name`. The label is the
/// path (or `@name`) as it is, except that a backslash is doubled, the
/// exporter's rule (`collect::unix::address_label`) that keeps a literal
/// `\x..` in a path apart from an escaped byte. The mix has no control
/// characters, invalid UTF-8 or NULs inside a name, which ss would print
/// differently.
fn expected_label(ss_name: &str) -> String {
    ss_name.replace('\\', "\\\\")
}

// ---------------------------------------------------------------------------
// Comparing

/// One namespace as ss saw it, keyed by label.
struct NsOracle {
    label: String,
    by_label: BTreeMap<String, Vec<SsListener>>,
}

impl NsOracle {
    fn new(label: &str, lines: &[SsListener]) -> NsOracle {
        let mut by_label: BTreeMap<String, Vec<SsListener>> = BTreeMap::new();
        for l in lines {
            by_label
                .entry(expected_label(&l.name))
                .or_default()
                .push(l.clone());
        }
        NsOracle {
            label: label.to_string(),
            by_label,
        }
    }
}

/// The construction is what the plan says, by ss alone: if the kernel
/// stops behaving as the test assumes, say so rather than compare the
/// exporter with a mix the test did not mean.
fn check_construction(plan: &NsPlan, helper: &Helper, lines: &[SsListener]) {
    let by_inode: BTreeMap<u64, &SsListener> = lines.iter().map(|l| (l.inode, l)).collect();
    assert_eq!(
        by_inode.len(),
        plan.listeners.len(),
        "netns {}: ss lists {} listeners, the plan has {}:\n{lines:#?}",
        plan.label,
        lines.len(),
        plan.listeners.len()
    );
    for (l, inode) in plan.listeners.iter().zip(&helper.built) {
        let s = by_inode.get(inode).unwrap_or_else(|| {
            panic!(
                "netns {}: ss does not list {:?} (inode {inode})",
                plan.label,
                display_name(&l.name)
            )
        });
        let want = (
            l.kind.ss_netid(),
            display_name(&l.name),
            u64::from(l.queued()),
            u64::from(l.backlog),
            Some(helper.pid()),
        );
        let got = (s.netid.as_str(), s.name.clone(), s.recv_q, s.send_q, s.pid);
        assert_eq!(got, want, "netns {}: ss vs plan", plan.label);
    }
}

/// The snapshot's unix listeners of one namespace against ss.
fn compare_json(report: &mut Report, ns: &Value, oracle: &NsOracle) {
    let at = &oracle.label;
    report.eq(
        format!("netns {at}: unix collector ok"),
        ns["status"]["unix"]["ok"].as_bool(),
        Some(true),
    );
    let Some(list) = ns["unix"]["listeners"].as_array() else {
        report.fail(format!("netns {at}: no unix.listeners[] in {}", ns["unix"]));
        return;
    };
    report.eq(
        format!("netns {at}: unexported"),
        ns["unix"]["unexported"].clone(),
        json!([["filter", 0], ["cap", 0]]),
    );
    report.eq(
        format!("netns {at}: TCP listeners"),
        ns["listeners"]["listeners"].as_array().map(Vec::len),
        Some(0),
    );
    let owners = snapshot_owners(ns);
    let mut ours: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    let mut cookies = BTreeSet::new();
    for l in list {
        let label = l["address"].as_str().unwrap_or("<no address>").to_string();
        let keys: Vec<&str> = l
            .as_object()
            .map(|o| o.keys().map(String::as_str).collect())
            .unwrap_or_default();
        if keys.contains(&"port") {
            report.fail(format!("netns {at} {label:?}: has a port field: {l}"));
        }
        report.eq(
            format!("netns {at} {label:?} family"),
            l["family"].as_str(),
            Some("unix"),
        );
        // A one-off sample claims no peak or full time; the kernel keeps
        // no drop counter for unix listeners.
        for absent in ["peak_length", "full_seconds", "drops"] {
            report.eq(
                format!("netns {at} {label:?} {absent}"),
                &l[absent],
                &Value::Null,
            );
        }
        match l["cookie"].as_u64() {
            Some(c) if c != 0 && cookies.insert(c) => {}
            other => report.fail(format!(
                "netns {at} {label:?}: cookie {other:?} zero, missing or repeated"
            )),
        }
        if !l["uid"].is_null() {
            // The helper's uid is root in the test's user namespace.
            report.eq(
                format!("netns {at} {label:?} uid"),
                l["uid"].as_u64(),
                Some(0),
            );
        }
        ours.entry(label).or_default().push(l);
    }
    report.pair_by_inode(
        at,
        "listener",
        &ours,
        &oracle.by_label,
        |s| s.inode,
        |report, what, l, s| {
            report.eq(
                format!("{what} queue length"),
                l["queue_length"].as_u64(),
                Some(s.recv_q),
            );
            report.eq(
                format!("{what} queue limit"),
                l["queue_limit"].as_u64(),
                Some(s.send_q),
            );
            let owner = l["cookie"].as_u64().and_then(|c| owners.get(&c)).copied();
            report.eq(format!("{what} owner pid"), owner, s.pid.map(u64::from));
        },
    );
}

/// Label values as written in the exposition format, unescaped once more
/// than `Metrics::parse` does.
fn unescape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some(other) => out.push(other),
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

const UNIX_SERIES: [&str; 4] = [
    "sockdiag_accept_queue_length",
    "sockdiag_accept_queue_limit",
    "sockdiag_accept_queue_peak_length",
    "sockdiag_accept_queue_full_seconds_total",
];
const NEVER_FOR_UNIX: [&str; 4] = [
    "sockdiag_listen_drops_total",
    "sockdiag_syn_queue_length",
    "sockdiag_accept_queue_bytes",
    "sockdiag_accept_queue_oldest_seconds",
];

/// Figures of one unix listener series set on `/metrics`.
#[derive(Debug, Default, Clone)]
struct MetricListener {
    values: BTreeMap<&'static str, f64>,
    pid: Option<String>,
    comm: Option<String>,
}

/// The daemon's unix series of one namespace, keyed by (label, member),
/// with label sets checked on the way.
fn unix_series(
    m: &Metrics,
    netns: &str,
    report: &mut Report,
) -> BTreeMap<(String, Option<u64>), MetricListener> {
    let mut out: BTreeMap<(String, Option<u64>), MetricListener> = BTreeMap::new();
    for s in &m.0 {
        if s.labels.get("family").map(String::as_str) != Some("unix")
            || s.labels.get("netns").map(String::as_str) != Some(netns)
        {
            continue;
        }
        let label = unescape(&s.labels["address"]);
        let member = s.member();
        let keys = s.label_names();
        let base: Vec<&str> = if member.is_some() {
            vec!["address", "family", "member", "netns"]
        } else {
            vec!["address", "family", "netns"]
        };
        let entry = out.entry((label.clone(), member)).or_default();
        let what = format!("netns {netns} {label:?} member {member:?}: {}", s.name);
        if let Some(&name) = UNIX_SERIES.iter().find(|n| **n == s.name) {
            report.eq(format!("{what} label names"), keys, base);
            if entry.values.insert(name, s.value).is_some() {
                report.fail(format!("{what}: twice"));
            }
        } else if s.name == "sockdiag_listener_process_info" {
            let mut want = base.clone();
            want.extend(OWNER_LABELS);
            want.sort();
            report.eq(format!("{what} label names"), keys, want);
            if entry.pid.replace(s.labels["pid"].clone()).is_some() {
                report.fail(format!("{what}: two owners"));
            }
            entry.comm = Some(s.labels["comm"].clone());
        } else if NEVER_FOR_UNIX.contains(&s.name.as_str()) {
            report.fail(format!("{what}: must not exist for unix ({})", s.value));
        } else {
            report.fail(format!("{what}: unexpected series with family=\"unix\""));
        }
    }
    out
}

/// The daemon's view of one namespace against ss.
fn compare_metrics(report: &mut Report, m: &Metrics, oracle: &NsOracle) {
    let at = oracle.label.as_str();
    let ours = unix_series(m, at, report);
    // A unix listener's address under another family (or none) would be a
    // series the family="unix" pass above never sees.
    for s in &m.0 {
        let unix_address = s
            .labels
            .get("address")
            .is_some_and(|a| oracle.by_label.contains_key(&unescape(a)));
        if s.labels.get("netns").map(String::as_str) == Some(at)
            && unix_address
            && s.labels.get("family").map(String::as_str) != Some("unix")
        {
            report.fail(format!(
                "netns {at}: {} {:?} is not family=\"unix\"",
                s.name, s.labels
            ));
        }
    }
    for reason in ["filter", "cap"] {
        report.eq(
            format!("netns {at}: unexported {reason}"),
            m.value_or_zero(
                "sockdiag_unix_listeners_unexported",
                &[("netns", at), ("reason", reason)],
            ),
            0.0,
        );
    }
    report.pair_members(at, &ours, &oracle.by_label, |report, what, mine, ss| {
        // Members carry no inode on /metrics: compare the figures as
        // multisets, each member's own series agreeing with each other.
        let mut got: Vec<(u64, u64, String)> = Vec::new();
        for (member, l) in mine {
            let what = format!("{what} member {member:?}");
            let v = |name: &str| l.values.get(name).copied();
            let (Some(length), Some(limit)) = (
                v("sockdiag_accept_queue_length"),
                v("sockdiag_accept_queue_limit"),
            ) else {
                report.fail(format!("{what}: no length or limit: {l:?}"));
                continue;
            };
            // A static queue: its peak is its length.
            report.eq(
                format!("{what} peak"),
                v("sockdiag_accept_queue_peak_length"),
                Some(length),
            );
            let full_seconds = v("sockdiag_accept_queue_full_seconds_total");
            if length > limit {
                if !full_seconds.is_some_and(|f| f > 0.0) {
                    report.fail(format!(
                        "{what}: full all along, full seconds {full_seconds:?}"
                    ));
                }
            } else {
                report.eq(format!("{what} full seconds"), full_seconds, Some(0.0));
            }
            report.eq(
                format!("{what} owner comm"),
                l.comm.as_deref(),
                Some("python3"),
            );
            got.push((
                length as u64,
                limit as u64,
                l.pid.clone().unwrap_or_default(),
            ));
        }
        let mut want: Vec<(u64, u64, String)> = ss
            .iter()
            .map(|s| {
                (
                    s.recv_q,
                    s.send_q,
                    s.pid.map(|p| p.to_string()).unwrap_or_default(),
                )
            })
            .collect();
        got.sort();
        want.sort();
        report.eq(format!("{what}: (length, limit, owner pid)"), got, want);
    });
    report.eq(
        "unix collector errors",
        m.value_or_zero("sockdiag_collector_errors_total", &[("collector", "unix")]),
        0.0,
    );
}

// ---------------------------------------------------------------------------

/// Every namespace's ss reading, by netns label.
fn read_all(plans: &[NsPlan], helpers: &[Helper]) -> BTreeMap<String, Vec<SsListener>> {
    plans
        .iter()
        .zip(helpers)
        .map(|(p, h)| (p.label.clone(), read_ss(h.pid())))
        .collect()
}

#[test]
fn unix_oracle_against_ss() {
    common::in_netns("unix_oracle_against_ss", || {
        let started = Instant::now();
        let seed = Seed::from_env("SOCKDIAG_UNIX_ORACLE_SEED", "unix_oracle");
        let mut rng = seed.rng();
        let tmp = TempDir::new("unix-oracle");
        let root = tmp.path();
        let run_netns = root.join("run-netns");
        std::fs::create_dir_all(&run_netns).expect("creating the run-netns dir");

        // host, a named namespace, and one or two known by inode.
        let extra = rng.range(1, 2) as usize;
        let mut plans = vec![
            NsPlan::build(&mut rng, "host", false, root.join("host")),
            NsPlan::build(&mut rng, "blue", true, root.join("blue")),
        ];
        for i in 0..extra {
            let tag = format!("anon{i}");
            let dir = root.join(&tag);
            plans.push(NsPlan::build(&mut rng, &tag, true, dir));
        }
        // Clients from the test's own namespace queued on one path
        // listener with room in each other namespace, up to full.
        let mut cross_plan = Vec::new();
        for (pi, plan) in plans.iter_mut().enumerate().skip(1) {
            let roomy: Vec<usize> = (0..plan.listeners.len())
                .filter(|&i| {
                    let l = &plan.listeners[i];
                    l.is_path()
                        && l.queued() <= l.backlog
                        && !plan.listeners.iter().any(|o| o.replace && o.name == l.name)
                })
                .collect();
            if roomy.is_empty() {
                continue;
            }
            let li = roomy[rng.range(0, roomy.len() as u64 - 1) as usize];
            let l = &mut plan.listeners[li];
            l.cross = rng.range(1, u64::from(l.backlog + 1 - l.pending)) as u32;
            cross_plan.push((pi, li));
            plan.describe();
        }

        let helpers: Vec<Helper> = plans.iter().map(start_helper).collect();
        for (plan, helper) in plans.iter_mut().zip(&helpers).skip(1) {
            helper.label_netns(&run_netns, &mut plan.label);
        }
        let mut cross_clients = Vec::new();
        for &(pi, li) in &cross_plan {
            let l = &plans[pi].listeners[li];
            for i in 0..l.cross {
                let c = connect_from_host(l.kind, &l.name).unwrap_or_else(|e| {
                    panic!(
                        "client {i} from host to {:?} in netns {}: {e}",
                        display_name(&l.name),
                        plans[pi].label
                    )
                });
                cross_clients.push(c);
            }
            if l.queued() == l.backlog + 1 {
                let e = connect_from_host(l.kind, &l.name)
                    .expect_err("a connect beyond a full queue must fail");
                assert_eq!(
                    e.raw_os_error(),
                    Some(libc::EAGAIN),
                    "connect beyond a full queue: {e}"
                );
            }
        }
        for plan in &plans {
            println!("netns {} ({} listeners):", plan.label, plan.listeners.len());
            for line in &plan.description {
                println!("  {line}");
            }
        }

        let before = read_all(&plans, &helpers);
        for (plan, helper) in plans.iter().zip(&helpers) {
            check_construction(plan, helper, &before[&plan.label]);
        }
        let full = before
            .values()
            .flatten()
            .filter(|l| l.recv_q > l.send_q)
            .count();
        let total: usize = before.values().map(Vec::len).sum();
        println!(
            "mix built in {:?}: {} namespaces, {total} listeners, {full} full",
            started.elapsed(),
            plans.len()
        );
        let oracles: Vec<NsOracle> = plans
            .iter()
            .map(|p| NsOracle::new(&p.label, &before[&p.label]))
            .collect();
        let run_netns_arg = run_netns.to_str().expect("UTF-8 temp dir");
        let flags = netns_flags(run_netns_arg);

        // Phase 1: one snapshot between two ss readings.
        let doc = snapshot_json(&flags);
        let after = read_all(&plans, &helpers);
        assert_eq!(after, before, "the mix changed while the snapshot ran");
        let mut report = Report::new("snapshot --format json", seed, "ss", "unix listener");
        report.snapshot_namespaces(&doc, &oracles, |o| &o.label, compare_json);
        report.finish();
        println!("phase 1 done at {:?}", started.elapsed());

        // Phase 2: a running daemon, between `after` and a last reading.
        let daemon = Daemon::start(&flags);
        let expected: BTreeMap<&str, usize> = oracles
            .iter()
            .map(|o| (o.label.as_str(), o.by_label.values().map(Vec::len).sum()))
            .collect();
        // (listeners, owners) the daemon shows in each of the namespaces.
        let seen = |m: &Metrics| {
            let count =
                |name: &str, ns: &str| m.find(name, &[("family", "unix"), ("netns", ns)]).len();
            expected
                .keys()
                .map(|ns| {
                    let listeners = count("sockdiag_accept_queue_length", ns);
                    (
                        *ns,
                        (listeners, count("sockdiag_listener_process_info", ns)),
                    )
                })
                .collect::<BTreeMap<&str, (usize, usize)>>()
        };
        daemon.wait_for(
            "every unix listener and owner",
            |m| {
                seen(m).iter().all(|(ns, &(listeners, owners))| {
                    (listeners, owners) == (expected[ns], expected[ns])
                })
            },
            |m| {
                format!(
                    "replay with {seed}; expected {expected:?}, (listeners, owners) {:?}",
                    seen(m)
                )
            },
        );
        // Full time needs two samples that both saw a queue full.
        std::thread::sleep(Duration::from_millis(300));
        let m = daemon.metrics();
        let last = read_all(&plans, &helpers);
        assert_eq!(last, before, "the mix changed while the daemon ran");
        let mut report = Report::new("daemon /metrics", seed, "ss", "unix listener");
        for oracle in &oracles {
            compare_metrics(&mut report, &m, oracle);
        }
        report.finish();
        let status = daemon.terminate();
        assert!(status.success(), "daemon exit on SIGTERM: {status}");
        println!("unix oracle done in {:?}", started.elapsed());
        drop((cross_clients, helpers));
    });
}
