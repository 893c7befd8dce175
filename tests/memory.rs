//! The daemon's address space: it runs under `prlimit --as=32M`, the cap
//! some operators put on a sidecar, while it walks processes holding
//! thousands of sockets and serves scrapes.

mod common;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// 32 MiB: the cap from the issue. Before the daemon bounded its arenas and
/// stacks it reserved about 277 MiB, and under this cap it aborted within a
/// second of its first pass ("memory allocation of 1 bytes failed").
const ADDRESS_SPACE_CAP: &str = "33554432";

/// Holders, listeners each, connections each (both ends held): about 9,000
/// sockets, which took the old daemon down every time.
const HOLDERS: u16 = 3;
const LISTENERS: u16 = 10;
const CONNECTIONS: u32 = 1_500;

/// How long the daemon is watched after every owner is known: five
/// connection passes at 1 s, a dozen rescans.
const WATCH: Duration = Duration::from_secs(5);
const SCRAPE_EVERY: Duration = Duration::from_millis(250);

/// Python: LISTENERS listeners on 127.0.0.1 from port BASE, and CONNECTIONS
/// connections spread over them, accepted, both ends held; says `ready` and
/// holds everything until stdin closes.
const HOLDER: &str = r#"
import socket, sys
base, nl, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
ls = []
for j in range(nl):
    l = socket.socket()
    l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    l.bind(("127.0.0.1", base + j))
    l.listen(4096)
    l.setblocking(False)
    ls.append(l)
held = []
for k in range(n):
    c = socket.socket()
    c.connect(("127.0.0.1", base + k % nl))
    held.append(c)
    if k % 256 == 255 or k == n - 1:
        for l in ls:
            while True:
                try:
                    held.append(l.accept()[0])
                except BlockingIOError:
                    break
if len(held) != 2 * n:
    print("accepted %d of %d" % (len(held) - n, n), flush=True)
    sys.exit(1)
print("ready", flush=True)
sys.stdin.read()
"#;

/// A holder listening from port `base`, in the test's namespace or in one
/// of its own (which the daemon must enter, on a thread of its own).
fn holder(base: u16, own_netns: bool) -> NsHelper<()> {
    let args = [
        base.to_string(),
        LISTENERS.to_string(),
        CONNECTIONS.to_string(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut cmd = python_with_loopback(HOLDER, &args);
    if own_netns {
        in_new_netns(&mut cmd);
    }
    NsHelper::spawn(cmd, "socket holder")
}

/// The pids `sockdiag_listener_process_info` names.
fn owner_pids(m: &Metrics) -> BTreeSet<String> {
    m.find("sockdiag_listener_process_info", &[])
        .iter()
        .filter_map(|s| s.labels.get("pid").cloned())
        .collect()
}

/// A `Vm*` line of `/proc/PID/status`, in kB.
fn vm_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("reading the daemon's status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Regression for issue 12: every thread that allocated reserved a 64 MiB
/// glibc arena and every thread a 2 MiB stack, so under a 32 MiB
/// address-space cap no arena fitted, each allocation took a page of its
/// own, and the processes collector's pass over a few thousand sockets
/// aborted the daemon.
#[test]
fn the_daemon_runs_under_a_32_mib_address_space_cap() {
    in_netns("the_daemon_runs_under_a_32_mib_address_space_cap", || {
        let holders: Vec<NsHelper<()>> = (0..HOLDERS)
            .map(|i| holder(20_000 + 100 * i, i == HOLDERS - 1))
            .collect();
        let wanted: BTreeSet<String> = holders.iter().map(|h| h.pid().to_string()).collect();

        let addr: std::net::SocketAddr = ([127, 0, 0, 1], free_port()).into();
        // prlimit sets the limit and execs the daemon: same pid.
        let child = Command::new("prlimit")
            .arg(format!("--as={ADDRESS_SPACE_CAP}"))
            .arg("--")
            .arg(exporter_bin())
            .arg("--web.listen-address")
            .arg(addr.to_string())
            .args(["--collector.listeners.interval", "100ms"])
            .args(["--collector.connections.interval", "1s"])
            .args(netns_flags("/nonexistent/run-netns"))
            .stdin(Stdio::null())
            .spawn()
            .expect("starting the daemon under prlimit (package util-linux)");
        let mut daemon = Daemon::wait_healthy(child, addr);
        let pid = daemon.child.id();
        let limits = std::fs::read_to_string(format!("/proc/{pid}/limits"))
            .expect("reading the daemon's limits");
        assert!(
            limits.lines().any(|l| l.starts_with("Max address space")
                && l.split_whitespace().nth(3) == Some(ADDRESS_SPACE_CAP)),
            "the cap is not on the daemon:\n{limits}"
        );

        // Every scrape must succeed, from the first until the watch ends;
        // the owners appear after the first connection pass.
        let started = Instant::now();
        let mut scrapes = 0;
        let mut all_owned_at = None;
        while all_owned_at.is_none_or(|t: Instant| t.elapsed() < WATCH) {
            assert!(
                started.elapsed() < WATCH + Duration::from_secs(15),
                "owners never appeared for every holder {wanted:?}"
            );
            std::thread::sleep(SCRAPE_EVERY);
            let exited = daemon.child.try_wait().expect("waiting for the daemon");
            assert!(exited.is_none(), "the daemon died: {exited:?}");
            let m = match daemon.try_get("/metrics") {
                Ok((200, body)) => Metrics::parse(&body),
                other => panic!("scrape {scrapes} failed: {other:?}"),
            };
            scrapes += 1;
            let owned = owner_pids(&m).is_superset(&wanted);
            match all_owned_at {
                None if owned => all_owned_at = Some(Instant::now()),
                Some(_) => assert!(owned, "owners lost: {:?}", owner_pids(&m)),
                None => {}
            }
        }
        let m = daemon.metrics();
        assert_eq!(
            m.value(
                "sockdiag_collector_errors_total",
                &[("collector", "processes")]
            ),
            0.0
        );
        let (peak, size) = (vm_kb(pid, "VmPeak"), vm_kb(pid, "VmSize"));
        eprintln!("{scrapes} scrapes; daemon VmPeak {peak} kB, VmSize {size} kB");
        let status = daemon.terminate();
        assert!(status.success(), "the daemon under the cap: {status}");
        drop(holders);
    });
}
