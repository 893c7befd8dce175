//! The whole `/metrics` page for one fixed scenario, compared line by line
//! with `tests/fixtures/golden_metrics.txt`: every family, HELP and TYPE
//! line, label set and value. A restructure of the sampler, the store or the
//! renderers must leave it unchanged; a deliberate change of the output
//! shows up as a diff of that file in review.
//!
//! Only what differs between runs or machines is normalized: durations and
//! timestamps, the time a queue has been full or waited, pids, inodes and
//! the names of the test's own process and unit. Everything else is compared
//! exactly. Run with `SOCKDIAG_UPDATE_GOLDEN=1` to rewrite the file.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;

/// Families whose values are time measurements.
const TIMED: &[&str] = &[
    "sockdiag_collector_duration_seconds",
    "sockdiag_collector_last_success_timestamp_seconds",
    "sockdiag_collector_cpu_seconds_total",
    "sockdiag_collector_passes_total",
    "sockdiag_netns_sample_duration_seconds",
    "sockdiag_netns_last_sample_timestamp_seconds",
    "sockdiag_accept_queue_full_seconds_total",
    "sockdiag_accept_queue_oldest_seconds",
];

/// Families whose value depends on the machine rather than the scenario:
/// UDP queues count the kernel's accounting per datagram, which differs
/// between kernels.
const MACHINE: &[&str] = &[
    "sockdiag_netns_processes_unreadable",
    "sockdiag_udp_receive_queue_bytes",
    "sockdiag_udp_receive_queue_peak_bytes",
];

/// Labels whose values differ between runs or machines.
const VOLATILE_LABELS: &[&str] = &["pid", "inode", "unit", "container_id", "exe", "cmdline"];

fn golden_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden_metrics.txt")
}

/// Rewrites one exposition line so that it no longer depends on timing or
/// on the machine.
fn normalize(line: &str, own_comm: &str) -> String {
    if line.starts_with('#') {
        return line.to_string();
    }
    let Some((series, value)) = line.rsplit_once(' ') else {
        return line.to_string();
    };
    let name = series.split('{').next().unwrap_or(series);
    let value = if TIMED.contains(&name) || MACHINE.contains(&name) {
        "<v>"
    } else {
        value
    };
    let Some((name, labels)) = series.split_once('{') else {
        return format!("{series} {value}");
    };
    let labels = labels.trim_end_matches('}');
    let mut out = Vec::new();
    for pair in labels.split("\",").filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once("=\"").expect("label pair");
        let v = v.trim_end_matches('"');
        let v = if (VOLATILE_LABELS.contains(&k) && !v.is_empty()) || (k == "comm" && v == own_comm)
        {
            format!("<{k}>")
        } else {
            v.to_string()
        };
        out.push(format!("{k}=\"{v}\""));
    }
    format!("{name}{{{}}} {value}", out.join(","))
}

/// A unix socket of `kind` listening on abstract name `name`.
fn unix_listener(name: &[u8], kind: i32, backlog: i32) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    let fd = unsafe { libc::socket(libc::AF_UNIX, kind, 0) };
    assert!(fd >= 0, "unix socket: {}", std::io::Error::last_os_error());
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    let (addr, len) = abstract_addr(name);
    let rc = unsafe {
        libc::bind(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            (&addr as *const libc::sockaddr_un).cast(),
            len,
        )
    };
    assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
    let rc = unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&fd), backlog) };
    assert_eq!(rc, 0, "listen: {}", std::io::Error::last_os_error());
    fd
}

/// A non-blocking client of abstract name `name`, left waiting.
fn unix_connect(name: &[u8], kind: i32) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    let fd = unsafe { libc::socket(libc::AF_UNIX, kind | libc::SOCK_NONBLOCK, 0) };
    assert!(fd >= 0);
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    let (addr, len) = abstract_addr(name);
    let rc = unsafe {
        libc::connect(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            (&addr as *const libc::sockaddr_un).cast(),
            len,
        )
    };
    assert_eq!(rc, 0, "connect: {}", std::io::Error::last_os_error());
    fd
}

fn abstract_addr(name: &[u8]) -> (libc::sockaddr_un, libc::socklen_t) {
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (i, b) in name.iter().enumerate() {
        addr.sun_path[i + 1] = *b as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + 1 + name.len();
    (addr, len as libc::socklen_t)
}

/// Connects and sends `bytes` bytes, without anyone accepting.
fn client(addr: SocketAddr, bytes: usize) -> TcpStream {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.write_all(&vec![b'x'; bytes]).expect("client write");
    s
}

#[test]
fn metrics_page_matches_the_golden_file() {
    in_netns("metrics_page_matches_the_golden_file", || {
        // A full queue: backlog 2, three clients with 4 bytes each, none
        // accepted (limit + 1 is full; a fourth would be dropped).
        let full_addr: SocketAddr = ([127, 0, 0, 1], 4444).into();
        let _full = listen(full_addr, 2, false, None);
        let _waiting: Vec<_> = (0..3).map(|_| client(full_addr, 4)).collect();

        // IPv6 with two accepted connections holding 10 unread bytes each.
        let v6_addr: SocketAddr = "[::1]:5555".parse().unwrap();
        let v6 = listen(v6_addr, 16, false, None);
        let _v6_clients: Vec<_> = (0..2).map(|_| client(v6_addr, 10)).collect();
        let _v6_accepted: Vec<_> = (0..2).map(|_| v6.accept().expect("accept")).collect();

        // A reuseport group of two.
        let group_addr: SocketAddr = ([0, 0, 0, 0], 6666).into();
        let _group = [
            listen(group_addr, 4, true, None),
            listen(group_addr, 4, true, None),
        ];

        // Dual-stack wildcard with a v4-mapped connection waiting.
        let dual = listen("[::]:7777".parse().unwrap(), 8, false, Some(false));
        let _mapped = client(([127, 0, 0, 1], 7777).into(), 1);

        // Unix listeners with abstract names (per namespace, so fixed
        // names are safe): a full stream queue (backlog 3, four clients
        // waiting) and an idle seqpacket one.
        let app = unix_listener(b"golden-app", libc::SOCK_STREAM, 3);
        let _app_clients: Vec<_> = (0..4)
            .map(|_| unix_connect(b"golden-app", libc::SOCK_STREAM))
            .collect();
        let _seq = unix_listener(b"golden-seq", libc::SOCK_SEQPACKET, 1);

        // UDP: a receiver with three datagrams waiting, a reuseport pair,
        // and the client that sent them (an ephemeral port, never a label).
        // Buffers are set, so they do not depend on net.core.rmem_default.
        let udp = |addr: &str, reuse: bool| {
            let addr: SocketAddr = addr.parse().unwrap();
            let s = socket2::Socket::new(
                socket2::Domain::for_address(addr),
                socket2::Type::DGRAM,
                None,
            )
            .expect("udp socket");
            s.set_recv_buffer_size(65536).expect("SO_RCVBUF");
            if reuse {
                s.set_reuse_port(true).expect("SO_REUSEPORT");
            }
            s.bind(&addr.into()).expect("bind udp");
            s
        };
        let _dns = udp("127.0.0.1:5353", false);
        let _statsd = [udp("[::]:8125", true), udp("[::]:8125", true)];
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp client");
        for _ in 0..3 {
            sender
                .send_to(b"query", "127.0.0.1:5353")
                .expect("send datagram");
        }

        // Another namespace, named by a symlink like `ip netns` makes.
        let blue = NetnsProcess::start(8080, 8, 0);
        let names = tempdir("golden-run-netns");
        blue.name_netns(&names, "blue");

        let daemon = Daemon::start(&netns_flags(names.to_str().unwrap()));
        // Until every part of both namespaces is in: owners (five TCP and
        // two unix listeners, and the daemon's own), connection figures
        // and procfs counters.
        let start = Instant::now();
        let body = loop {
            let (status, body) = daemon.get("/metrics");
            assert_eq!(status, 200);
            let m = Metrics::parse(&body);
            let ready = ["host", "blue"].iter().all(|ns| {
                m.find("sockdiag_listener_process_info", &[("netns", ns)])
                    .len()
                    == if *ns == "host" { 8 } else { 1 }
                    && !m.find("sockdiag_somaxconn", &[("netns", ns)]).is_empty()
                    && !m
                        .find("sockdiag_tcp_client_ports_folded", &[("netns", ns)])
                        .is_empty()
            }) && m.value_or_zero(
                "sockdiag_accept_queue_bytes",
                &[("netns", "host"), ("port", "4444")],
            ) == 12.0;
            if ready {
                break body;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "scenario not complete within 20 s:\n{body}"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        drop((dual, app));
        let own_comm = std::fs::read_to_string("/proc/self/comm")
            .expect("own comm")
            .trim()
            .to_string();
        // The test's own scrapes are connections too: drop the exporter's
        // port, which differs each run, from the comparison.
        let scrape_port = daemon.addr.port().to_string();
        let got: String = body
            .lines()
            .filter(|l| !l.contains(&format!("port=\"{scrape_port}\"")))
            .map(|l| normalize(l, &own_comm) + "\n")
            .collect();
        let _ = std::fs::remove_dir_all(&names);
        let path = golden_path();
        if std::env::var_os("SOCKDIAG_UPDATE_GOLDEN").is_some() {
            std::fs::write(&path, &got).expect("writing the golden file");
            return;
        }
        let want = std::fs::read_to_string(&path).expect("reading the golden file");
        if got != want {
            let (g, w): (Vec<_>, Vec<_>) = (got.lines().collect(), want.lines().collect());
            let missing: Vec<_> = w.iter().filter(|l| !g.contains(l)).collect();
            let extra: Vec<_> = g.iter().filter(|l| !w.contains(l)).collect();
            panic!(
                "/metrics differs from {} (rewrite with SOCKDIAG_UPDATE_GOLDEN=1 if intended)\n\
                 missing: {missing:#?}\nunexpected: {extra:#?}\norder differs: {}",
                path.display(),
                missing.is_empty() && extra.is_empty()
            );
        }
    });
}
