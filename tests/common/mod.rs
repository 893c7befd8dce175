//! Test harness: every test runs in a network namespace of its own, created
//! by re-executing the test binary for just that test inside a fresh user +
//! network namespace. It works as root and as an ordinary user, and a test
//! sees only the sockets it makes.
//!
//! `unshare(CLONE_NEWUSER)` fails in a multi-threaded process, and the test
//! harness is one; so the namespace is entered in the forked child between
//! fork and exec, where only one thread exists.

#![allow(dead_code)]

pub mod report;
pub mod rng;
pub mod strace;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub mod servers;

const IN_NETNS: &str = "SOCKDIAG_TEST_IN_NETNS";

/// How long one isolated test may run before it is killed.
const TEST_DEADLINE: Duration = Duration::from_secs(120);

/// Runs `body` inside a fresh network namespace. `name` must be the test
/// function's name (the harness re-runs exactly that test).
pub fn in_netns(name: &str, body: impl FnOnce()) {
    if std::env::var(IN_NETNS).as_deref() == Ok(name) {
        let status = Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status()
            .expect("running `ip link set lo up` (package iproute2)");
        assert!(
            status.success(),
            "`ip link set lo up` failed in the test namespace"
        );
        body();
        return;
    }
    let exe = std::env::current_exe().expect("locating the test binary");
    let mut cmd = Command::new(exe);
    cmd.args([
        name,
        "--exact",
        "--include-ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(IN_NETNS, name)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    // Everything the child writes between fork and exec is prepared here:
    // only async-signal-safe calls may run there.
    let maps = IdMaps::to_root();
    unsafe {
        cmd.pre_exec(move || {
            // Its own process group, so whatever the test starts (daemons,
            // helpers) can be killed with it even if the test panics first.
            if libc::setpgid(0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            maps.write()
        });
    }
    let child = cmd
        .spawn()
        .expect("spawning the test in a new user+network namespace");
    let output = wait_with_deadline(child, TEST_DEADLINE);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    print!("{stdout}");
    eprint!("{stderr}");
    assert!(
        output.status.success(),
        "test {name} failed in its namespace ({})",
        output.status
    );
    assert!(
        stdout.contains("1 passed"),
        "test {name} did not run in its namespace:\n{stdout}"
    );
}

/// The id maps a process writes for the user namespace it just created,
/// prepared before fork: between fork and exec only async-signal-safe
/// calls may run.
struct IdMaps([(&'static std::ffi::CStr, CString); 3]);

impl IdMaps {
    fn new(uid_map: String, gid_map: String) -> Self {
        IdMaps([
            (c"/proc/self/setgroups", CString::new("deny").unwrap()),
            (c"/proc/self/uid_map", CString::new(uid_map).unwrap()),
            (c"/proc/self/gid_map", CString::new(gid_map).unwrap()),
        ])
    }

    /// The caller's ids become root inside.
    fn to_root() -> Self {
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        IdMaps::new(format!("0 {uid} 1"), format!("0 {gid} 1"))
    }

    /// The caller's ids stay what they are inside.
    fn same_ids() -> Self {
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        IdMaps::new(format!("{uid} {uid} 1"), format!("{gid} {gid} 1"))
    }

    /// Writes the maps; only raw syscalls, so it may run after fork.
    fn write(&self) -> std::io::Result<()> {
        for (path, content) in &self.0 {
            let fd = unsafe { libc::open(path.as_ptr(), libc::O_WRONLY) };
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let bytes = content.as_bytes();
            let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
            unsafe { libc::close(fd) };
            if n != bytes.len() as isize {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

fn wait_with_deadline(mut child: Child, deadline: Duration) -> std::process::Output {
    // Drain pipes on threads so a chatty child cannot block on a full pipe.
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let start = Instant::now();
    let group = child.id() as libc::pid_t;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for the test child") {
            break Some(status);
        }
        if start.elapsed() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // Leftovers of the test's group (a daemon it started before panicking)
    // would hold the output pipes open forever: end them. The group holds
    // only processes this test started.
    unsafe { libc::kill(-group, libc::SIGKILL) };
    let Some(status) = status else {
        let _ = child.wait();
        panic!("test child exceeded {deadline:?} and was killed");
    };
    std::process::Output {
        status,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    }
}

/// The exporter binary built by cargo for this test run.
pub fn exporter_bin() -> &'static str {
    env!("CARGO_BIN_EXE_sockdiag-exporter")
}

/// A free loopback port in this namespace (nothing else runs here).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding a free port")
        .port()
}

/// A running daemon, killed (by its pid) when dropped.
pub struct Daemon {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Daemon {
    /// Starts the daemon with fast intervals plus `args`, waits for
    /// `/healthz` to answer 200.
    pub fn start(args: &[&str]) -> Daemon {
        Daemon::start_command(Command::new(exporter_bin()), args)
    }

    /// Like [`Daemon::start`], from a command prepared by the caller: the
    /// exporter itself, or a wrapper that execs it (e.g. to start it with
    /// fewer privileges).
    pub fn start_command(mut cmd: Command, args: &[&str]) -> Daemon {
        let port = free_port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let child = cmd
            .arg("--web.listen-address")
            .arg(addr.to_string())
            .args([
                "--collector.listeners.interval",
                "50ms",
                "--collector.connections.interval",
                "200ms",
                "--log.level",
                "debug",
            ])
            .args(args)
            .stdin(Stdio::null())
            .spawn()
            .expect("starting the daemon");
        Daemon::wait_healthy(child, addr)
    }

    /// The daemon `child` started listening on `addr`, once `/healthz`
    /// answers 200 (at most 15 s).
    pub fn wait_healthy(child: Child, addr: SocketAddr) -> Daemon {
        let daemon = Daemon { child, addr };
        let start = Instant::now();
        loop {
            if let Ok((200, _)) = daemon.try_get("/healthz") {
                return daemon;
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "daemon not healthy within 15 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// GET `path`, returning status and body.
    pub fn try_get(&self, path: &str) -> std::io::Result<(u16, String)> {
        http_get(self.addr, path)
    }

    /// GET `path`; panics on transport errors.
    pub fn get(&self, path: &str) -> (u16, String) {
        self.try_get(path).expect("HTTP GET to the daemon")
    }

    /// Scrapes `/metrics` and parses it.
    pub fn metrics(&self) -> Metrics {
        let (status, body) = self.get("/metrics");
        assert_eq!(status, 200, "GET /metrics: {body}");
        Metrics::parse(&body)
    }

    /// Polls `/metrics` every 50 ms until `ready` holds, for at most 15 s;
    /// on timeout the panic names `what` and what `seen` makes of the last
    /// page.
    pub fn wait_for(
        &self,
        what: &str,
        ready: impl Fn(&Metrics) -> bool,
        seen: impl Fn(&Metrics) -> String,
    ) -> Metrics {
        let start = Instant::now();
        loop {
            let m = self.metrics();
            if ready(&m) {
                return m;
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "timed out waiting for {what}; {}",
                seen(&m)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().expect("waiting for the daemon") {
                return s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "daemon ignored SIGTERM for 15 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.0 GET: 1.0, so the answer is never chunked and the body
/// is everything until the server closes.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status line in {text:?}")))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// One parsed exposition line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    /// Its `member` label, which must be a number where present.
    pub fn member(&self) -> Option<u64> {
        self.labels.get("member").map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("member label {v:?} of {self:?}"))
        })
    }

    /// Its label names, sorted.
    pub fn label_names(&self) -> Vec<&str> {
        self.labels.keys().map(String::as_str).collect()
    }
}

/// What a `*_process_info` series adds to the labels of the socket it is
/// about: its owner.
pub const OWNER_LABELS: [&str; 6] = ["cmdline", "comm", "container_id", "exe", "pid", "unit"];

/// The `member` labels of the `n` sockets sharing one address: none for a
/// lone socket, 0..n for a group.
pub fn members_wanted(n: usize) -> Vec<Option<u64>> {
    if n == 1 {
        vec![None]
    } else {
        (0..n as u64).map(Some).collect()
    }
}

/// A parsed `/metrics` page.
#[derive(Debug, Clone)]
pub struct Metrics(pub Vec<Sample>);

impl Metrics {
    pub fn parse(text: &str) -> Metrics {
        let mut out = Vec::new();
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("sample line has a value");
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let mut map = BTreeMap::new();
            for pair in labels.split("\",").filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once("=\"").expect("label pair");
                map.insert(k.to_string(), v.trim_end_matches('"').to_string());
            }
            out.push(Sample {
                name: name.to_string(),
                labels: map,
                value: value.parse().expect("numeric sample value"),
            });
        }
        Metrics(out)
    }

    /// Samples of `name` whose labels include every pair in `labels`.
    pub fn find(&self, name: &str, labels: &[(&str, &str)]) -> Vec<&Sample> {
        self.0
            .iter()
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect()
    }

    /// The value of the one sample matching; panics if none or several.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found = self.find(name, labels);
        assert_eq!(
            found.len(),
            1,
            "expected one {name}{labels:?}, found {found:?}"
        );
        found[0].value
    }

    /// Like [`Metrics::value`], but 0 when there is no such series.
    pub fn value_or_zero(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found = self.find(name, labels);
        assert!(
            found.len() <= 1,
            "expected at most one {name}{labels:?}, found {found:?}"
        );
        found.first().map_or(0.0, |s| s.value)
    }
}

/// Runs `cmd`, which must exit 0; what it wrote to stdout. `what` names it
/// in the panic, which shows its stderr.
pub fn output_ok(cmd: &mut Command, what: &str) -> Vec<u8> {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Runs `ss` with `args` (always `-H -O`: no header, one line per socket)
/// and returns its lines.
pub fn ss(args: &[&str]) -> Vec<String> {
    let out = output_ok(
        Command::new("ss").args(["-H", "-O"]).args(args),
        &format!("ss {args:?} (package iproute2)"),
    );
    String::from_utf8_lossy(&out)
        .lines()
        .map(str::to_string)
        .collect()
}

/// One line of `ss -tan` (`-H`): state, Recv-Q, Send-Q, local, peer.
#[derive(Debug, Clone, PartialEq)]
pub struct SsSocket {
    pub state: String,
    pub recv_q: u64,
    pub send_q: u64,
    pub local: SocketAddr,
    pub peer: String,
    /// The rest of the line (`ino:`, `sk:`, `skmem:(...)` with -e/-m).
    pub rest: String,
}

impl SsSocket {
    pub fn local_port(&self) -> u16 {
        self.local.port()
    }
    pub fn peer_port(&self) -> Option<u16> {
        self.peer.rsplit_once(':').and_then(|(_, p)| p.parse().ok())
    }
    /// `ino:N` from `-e`.
    pub fn inode(&self) -> Option<u64> {
        self.rest
            .split_whitespace()
            .find_map(|t| t.strip_prefix("ino:"))
            .and_then(|v| v.parse().ok())
    }
    /// `d<N>` inside `skmem:(...)` from `-m`.
    pub fn drops(&self) -> Option<u64> {
        let skmem = self.rest.split("skmem:(").nth(1)?.split(')').next()?;
        skmem
            .split(',')
            .find_map(|f| f.strip_prefix('d'))
            .and_then(|v| v.parse().ok())
    }
}

/// Parses `ss -tan` style lines (state first). Addresses like `[::ffff:127.0.0.1]:80`,
/// `[::]:80`, `127.0.0.1:80`, `*:80` (dual-stack `::`) are understood.
pub fn parse_ss(lines: &[String]) -> Vec<SsSocket> {
    lines
        .iter()
        .filter_map(|line| {
            let mut t = line.split_whitespace();
            let state = t.next()?.to_string();
            let recv_q = t.next()?.parse().ok()?;
            let send_q = t.next()?.parse().ok()?;
            let local = parse_ss_addr(t.next()?)?;
            let peer = t.next()?.to_string();
            let rest: Vec<&str> = t.collect();
            Some(SsSocket {
                state,
                recv_q,
                send_q,
                local,
                peer,
                rest: rest.join(" "),
            })
        })
        .collect()
}

fn parse_ss_addr(text: &str) -> Option<SocketAddr> {
    let (host, port) = text.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let host = host.split('%').next()?;
    let ip: std::net::IpAddr = match host {
        // ss prints a dual-stack `::` listener as `*`.
        "*" => "::".parse().ok()?,
        h => h.parse().ok()?,
    };
    Some(SocketAddr::new(ip, port))
}

/// Waits up to `timeout` for a non-blocking socket to finish connecting.
pub fn wait_connected(s: &socket2::Socket, timeout: Duration) -> bool {
    use std::os::fd::AsRawFd;
    let mut pfd = libc::pollfd {
        fd: s.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    let rc = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as i32) };
    rc == 1 && s.take_error().ok().flatten().is_none() && s.peer_addr().is_ok()
}

/// Starts a non-blocking connect to `addr`.
pub fn start_connect(addr: SocketAddr) -> socket2::Socket {
    let domain = socket2::Domain::for_address(addr);
    let s = socket2::Socket::new(domain, socket2::Type::STREAM, None).expect("client socket");
    s.set_nonblocking(true).expect("non-blocking client");
    match s.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => panic!("connect to {addr}: {e}"),
    }
    s
}

/// A TCP listener with the given backlog, optionally in a reuseport group.
pub fn listen(
    addr: SocketAddr,
    backlog: i32,
    reuseport: bool,
    v6only: Option<bool>,
) -> socket2::Socket {
    let domain = socket2::Domain::for_address(addr);
    let s = socket2::Socket::new(domain, socket2::Type::STREAM, None).expect("listener socket");
    s.set_reuse_address(true).expect("SO_REUSEADDR");
    if reuseport {
        s.set_reuse_port(true).expect("SO_REUSEPORT");
    }
    if let Some(only) = v6only {
        s.set_only_v6(only).expect("IPV6_V6ONLY");
    }
    s.bind(&addr.into())
        .unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    s.listen(backlog).expect("listen");
    s
}

/// Python run by [`NetnsProcess`]: a listener on 127.0.0.1:PORT with
/// BACKLOG, and CLIENTS connections to it that it never accepts.
const NETNS_HELPER: &str = r#"
import socket, sys
port, backlog, clients = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", port))
s.listen(backlog)
held = []
for _ in range(clients):
    c = socket.socket()
    c.setblocking(False)
    c.connect_ex(("127.0.0.1", port))
    held.append(c)
print("ready", flush=True)
sys.stdin.read()
"#;

/// Makes `cmd` start in a network namespace of its own (the test's user
/// namespace makes that allowed without root).
pub fn in_new_netns(cmd: &mut Command) {
    // SAFETY: only a raw syscall between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::unshare(libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// `python3 -c script args...` with loopback up first: a new network
/// namespace's loopback starts down.
pub fn python_with_loopback(script: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        "ip link set lo up && exec python3 -c \"$0\" \"$@\"",
        script,
    ])
    .args(args);
    cmd
}

/// A helper process that builds something (sockets, a namespace), says
/// `ready` on its first line, followed by what it built as JSON (`T`), and
/// holds it until its stdin closes. Killed, by pid, when dropped.
pub struct NsHelper<T> {
    pub child: Child,
    pub built: T,
}

impl<T: serde::de::DeserializeOwned> NsHelper<T> {
    /// Starts `cmd` with stdin and stdout piped and waits for its `ready`
    /// line; `what` names it when it says anything else.
    pub fn spawn(mut cmd: Command, what: &str) -> NsHelper<T> {
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {what} (python3): {e}"));
        let mut line = String::new();
        let mut out = std::io::BufReader::new(child.stdout.take().expect("piped stdout"));
        std::io::BufRead::read_line(&mut out, &mut line).expect("reading the helper's first line");
        let line = line.trim();
        let built = match line {
            "ready" => Some("null"),
            _ => line.strip_prefix("ready "),
        };
        let Some(built) = built else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not build its mix: {line:?}");
        };
        let built = serde_json::from_str(built)
            .unwrap_or_else(|e| panic!("what {what} built, {built:?}: {e}"));
        NsHelper { child, built }
    }
}

impl<T> NsHelper<T> {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The inode of its network namespace, as `ls -l /proc/PID/ns/net`.
    pub fn netns_inode(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(format!("/proc/{}/ns/net", self.pid()))
            .expect("stat of the helper's netns")
            .ino()
    }

    /// The `netns` label of its namespace while it has no name.
    pub fn ino_label(&self) -> String {
        format!("ino:{}", self.netns_inode())
    }

    /// Names its namespace `name` as `ip netns` would, for a daemon whose
    /// `--path.run-netns` is `dir`: a symlink to its `ns/net`.
    pub fn name_netns(&self, dir: &std::path::Path, name: &str) {
        std::os::unix::fs::symlink(format!("/proc/{}/ns/net", self.pid()), dir.join(name))
            .expect("naming the namespace");
    }

    /// Gives its namespace its `netns` label: `blue` is named so in
    /// `run_netns`, any other is known by inode.
    pub fn label_netns(&self, run_netns: &std::path::Path, label: &mut String) {
        if label == "blue" {
            self.name_netns(run_netns, "blue");
        } else {
            *label = self.ino_label();
        }
    }

    /// Kills it (by pid) and waits, so its namespace is gone when this
    /// returns (nothing else holds it but the daemon's handles).
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl<T> Drop for NsHelper<T> {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A process alone in a network namespace it created, holding a listener
/// (and optionally connections stuck in its accept queue).
pub type NetnsProcess = NsHelper<()>;

impl NetnsProcess {
    /// Starts `python3` in a new network namespace listening on `port`.
    pub fn start(port: u16, backlog: u32, clients: u32) -> NetnsProcess {
        let mut cmd = python_with_loopback(
            NETNS_HELPER,
            &[
                &port.to_string(),
                &backlog.to_string(),
                &clients.to_string(),
            ],
        );
        in_new_netns(&mut cmd);
        NsHelper::spawn(cmd, "netns helper")
    }
}

/// Daemon flags for collecting the test's own network namespaces only:
/// those named in `run_netns` (a directory of the test's, not the
/// machine's /run/netns) or held by its processes, no pods of the machine,
/// and a rescan every 100 ms.
pub fn netns_flags(run_netns: &str) -> [&str; 6] {
    [
        "--path.run-netns",
        run_netns,
        "--path.pod-logs",
        "/nonexistent/pods",
        "--collector.netns.rescan-interval",
        "100ms",
    ]
}

/// The owners the snapshot lists for one namespace: socket cookie -> pid.
pub fn snapshot_owners(ns: &serde_json::Value) -> BTreeMap<u64, u64> {
    ns["processes"]["owners"]
        .as_array()
        .map(|v| {
            v.iter()
                .filter_map(|pair| Some((pair[0].as_u64()?, pair[1]["pid"].as_u64()?)))
                .collect()
        })
        .unwrap_or_default()
}

/// A fresh directory under the system temp dir, unique to this process and
/// this call.
pub fn tempdir(what: &str) -> std::path::PathBuf {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("sockdiag-{what}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    dir
}

/// A fresh directory of a test's ([`tempdir`]), removed however the test
/// ends.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(what: &str) -> TempDir {
        TempDir(tempdir(what))
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }

    pub fn as_str(&self) -> &str {
        self.0.to_str().expect("UTF-8 temp path")
    }

    /// A path in the directory as text, for config files and flags.
    pub fn file(&self, name: &str) -> String {
        let p = self.0.join(name);
        p.to_str()
            .unwrap_or_else(|| panic!("temp path {p:?} is not UTF-8"))
            .to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Makes `cmd` start in a user namespace of its own, nested in the test's:
/// it keeps the same uid but holds no capability over the test's
/// namespaces, like an exporter run without CAP_SYS_ADMIN/CAP_SYS_PTRACE.
pub fn without_privileges(cmd: &mut Command) {
    let maps = IdMaps::same_ids();
    unsafe {
        cmd.pre_exec(move || {
            if libc::unshare(libc::CLONE_NEWUSER) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            maps.write()
        });
    }
}

/// Open file descriptors of process `pid`.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("listing the daemon's fds")
        .count()
}

/// A TcpExt counter from a procfs `netstat` file (e.g. `/proc/self/net/netstat`
/// or `/proc/PID/net/netstat` for another process's namespace).
pub fn tcp_ext_at(path: &str, name: &str) -> f64 {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next().unwrap(), lines.next().unwrap());
    let i = names
        .split_whitespace()
        .position(|n| n == name)
        .expect("counter present");
    values.split_whitespace().nth(i).unwrap().parse().unwrap()
}

/// The UDP dump the udp collector asks for, one family at a time.
pub fn udp_dump_request(
    family: sockdiag_exporter::diag::Family,
) -> sockdiag_exporter::diag::DumpRequest<'static> {
    sockdiag_exporter::collect::udp::dump_request(family)
}

/// Runs `args` in the network namespace of process `pid` (with `envs`
/// set), which must exit 0; its standard output.
pub fn nsenter(pid: u32, args: &[&str], envs: &[(&str, &str)]) -> String {
    let out = output_ok(
        Command::new("nsenter")
            .arg(format!("--net=/proc/{pid}/ns/net"))
            .args(args)
            .envs(envs.iter().copied()),
        &format!("nsenter (util-linux) --net=/proc/{pid}/ns/net {args:?}"),
    );
    String::from_utf8(out).expect("UTF-8 output")
}

/// `sockdiag-exporter snapshot --format json` with `flags`, which must exit
/// 0: the document it prints.
pub fn snapshot_json(flags: &[&str]) -> serde_json::Value {
    let out = output_ok(
        Command::new(exporter_bin())
            .args(["snapshot", "--format", "json"])
            .args(flags),
        &format!("sockdiag-exporter snapshot {flags:?}"),
    );
    serde_json::from_slice(&out).expect("snapshot --format json is JSON")
}

/// The daemon's own namespace (`netns` "host") in `snapshot --format json`
/// output, which lists every namespace collected.
pub fn snapshot_host(doc: &serde_json::Value) -> &serde_json::Value {
    doc["namespaces"]
        .as_array()
        .expect("snapshot JSON has namespaces[]")
        .iter()
        .find(|ns| ns["netns"] == "host")
        .expect("snapshot JSON has the host namespace")
}
