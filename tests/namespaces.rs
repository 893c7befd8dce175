//! Every namespace on the node: the daemon finds network namespaces the
//! test creates (each with a process inside, one with a full accept queue),
//! names them, collects each separately, attributes listeners to
//! processes, drops a namespace that vanishes without errors or leaked
//! descriptors, and degrades to its own namespace without privileges.

mod common;

use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::Duration;

use common::*;

/// Fast rescans, and no names or pods from the machine the test runs on:
/// its /run/netns may hold namespaces nobody in this test made.
const FAST: &[&str] = &[
    "--collector.netns.rescan-interval",
    "100ms",
    "--path.pod-logs",
    "/nonexistent/pods",
];
const NO_NAMES: &[&str] = &["--path.run-netns", "/nonexistent/run-netns"];

/// [`FAST`] and [`NO_NAMES`] plus `extra`.
fn flags<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = FAST.to_vec();
    if !extra.contains(&"--path.run-netns") {
        v.extend(NO_NAMES);
    }
    v.extend(extra);
    v
}

/// Descriptors the daemon holds on a namespace it collects: the fast
/// tier's socket (listener, unix and UDP dumps share it), its
/// `ip_local_port_range` and `net/sockstat`; the full tier's socket and its
/// procfs files: `net/netstat`, `somaxconn`, `net/snmp`, `net/sockstat`; and
/// where the kernel has them, `tcp_ehash_entries` (Linux 6.1+), and
/// `net/snmp6` and, on each tier, `net/sockstat6` (IPv6 on).
fn handles_per_namespace() -> usize {
    let has = |p: &str| usize::from(std::path::Path::new(p).exists());
    3 + 5
        + has("/proc/sys/net/ipv4/tcp_ehash_entries")
        + has("/proc/self/net/snmp6")
        + 2 * has("/proc/self/net/sockstat6")
}

/// Polls `/metrics` until `ready` holds (at most 15 s); a timeout shows
/// every series with a netns.
fn wait_for(daemon: &Daemon, what: &str, ready: impl Fn(&Metrics) -> bool) -> Metrics {
    daemon.wait_for(what, ready, |m| {
        let netns: Vec<_> =
            m.0.iter()
                .filter(|s| s.labels.contains_key("netns"))
                .collect();
        format!("series with a netns: {netns:#?}")
    })
}

/// The daemon's open descriptors once it has settled: 500 ms (two
/// connection samples, a few rescans) after the last change, then the
/// fewest of several looks, as a look can catch a directory the daemon has
/// open for a moment (a /proc scan).
fn settled_fds(daemon: &Daemon) -> usize {
    std::thread::sleep(Duration::from_millis(500));
    (0..10)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(20));
            open_fds(daemon.child.id())
        })
        .min()
        .unwrap_or(0)
}

/// Every collector's last sample succeeded and none ever failed: neither
/// a vanished namespace nor a missing privilege is a collector failure.
fn assert_every_collector_healthy(m: &Metrics) {
    for c in ["listeners", "connections", "netstat", "processes", "netns"] {
        let errors = m.value("sockdiag_collector_errors_total", &[("collector", c)]);
        assert_eq!(errors, 0.0, "{c}");
        let success = m.value("sockdiag_collector_success", &[("collector", c)]);
        assert_eq!(success, 1.0, "{c}");
    }
}

fn netns_names(m: &Metrics) -> Vec<String> {
    let mut v: Vec<String> = m
        .find("sockdiag_netns_info", &[])
        .iter()
        .map(|s| s.labels["netns"].clone())
        .collect();
    v.sort();
    v
}

/// The command name of the current process, as the kernel truncates it.
fn own_comm() -> String {
    std::fs::read_to_string("/proc/self/comm")
        .expect("own comm")
        .trim()
        .to_string()
}

#[test]
fn namespaces_are_found_named_and_collected_apart() {
    in_netns("namespaces_are_found_named_and_collected_apart", || {
        let port = 7070;
        // The same address and port in three namespaces: three listeners,
        // never summed. The test's own namespace is the daemon's "host".
        let _host_listener = listen(([127, 0, 0, 1], port).into(), 16, false, None);
        // One namespace with a full queue: backlog 2, six clients never
        // accepted: three wait in the queue (limit + 1), three SYNs dropped.
        let full = NetnsProcess::start(port, 2, 6);
        let named = NetnsProcess::start(port, 8, 0);
        let names_dir = tempdir("run-netns");
        named.name_netns(&names_dir, "blue");
        let full_name = full.ino_label();
        let names_arg = names_dir.to_str().unwrap();
        let daemon = Daemon::start(&flags(&["--path.run-netns", names_arg]));

        let m = wait_for(&daemon, "three namespaces with their listeners", |m| {
            ["host", "blue", full_name.as_str()].iter().all(|ns| {
                !m.find(
                    "sockdiag_accept_queue_length",
                    &[("netns", ns), ("port", &port.to_string())],
                )
                .is_empty()
                    && m.find(
                        "sockdiag_tcp_connections",
                        &[("netns", ns), ("port", &port.to_string())],
                    )
                    .is_empty()
                        != (*ns == full_name)
            }) && !m
                .find("sockdiag_listener_process_info", &[("netns", "blue")])
                .is_empty()
        });
        let mut expected = vec!["blue".to_string(), full_name.clone(), "host".to_string()];
        expected.sort();
        assert_eq!(netns_names(&m), expected);

        let port_s = port.to_string();
        let at = |ns: &str| {
            vec![
                ("netns", ns.to_string()),
                ("family", "ipv4".to_string()),
                ("address", "127.0.0.1".to_string()),
                ("port", port_s.clone()),
            ]
        };
        let val = |name: &str, ns: &str| {
            let labels = at(ns);
            let l: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
            m.value(name, &l)
        };
        // Each namespace's own queue and limit.
        assert_eq!(val("sockdiag_accept_queue_length", &full_name), 3.0);
        assert_eq!(val("sockdiag_accept_queue_limit", &full_name), 2.0);
        assert_eq!(val("sockdiag_accept_queue_length", "blue"), 0.0);
        assert_eq!(val("sockdiag_accept_queue_limit", "blue"), 8.0);
        assert_eq!(val("sockdiag_accept_queue_length", "host"), 0.0);
        assert_eq!(val("sockdiag_accept_queue_limit", "host"), 16.0);
        // Connections are counted in their own namespace only.
        let conns = |ns: &str, role: &str, state: &str| {
            m.value_or_zero(
                "sockdiag_tcp_connections",
                &[
                    ("netns", ns),
                    ("role", role),
                    ("port", &port_s),
                    ("state", state),
                ],
            )
        };
        assert_eq!(conns(&full_name, "server", "established"), 3.0);
        assert_eq!(conns(&full_name, "client", "established"), 3.0);
        assert_eq!(conns(&full_name, "client", "syn_sent"), 3.0);
        // (The host's other connections are the test's scrapes.)
        assert!(
            m.find(
                "sockdiag_tcp_connections",
                &[("netns", "host"), ("port", &port_s)]
            )
            .is_empty()
        );
        assert!(
            m.find("sockdiag_tcp_connections", &[("netns", "blue")])
                .is_empty()
        );

        // Namespace counters are each namespace's own: overflows happened
        // only where the queue is full.
        let overflows =
            |ns: &str| m.value("sockdiag_netstat_listen_overflows_total", &[("netns", ns)]);
        let after = tcp_ext_at(
            &format!("/proc/{}/net/netstat", full.pid()),
            "ListenOverflows",
        );
        assert!(overflows(&full_name) >= 1.0 && overflows(&full_name) <= after);
        assert_eq!(overflows("blue"), 0.0);
        assert_eq!(overflows("host"), 0.0);
        assert!(val("sockdiag_listen_drops_total", &full_name) >= 1.0);

        // The info metric joins names to inodes, pids and sources.
        let info = |ns: &str| {
            m.find("sockdiag_netns_info", &[("netns", ns)])[0]
                .labels
                .clone()
        };
        let blue = info("blue");
        assert_eq!(blue["source"], "ip_netns");
        assert_eq!(blue["ip_netns"], "blue");
        assert_eq!(blue["inode"], named.netns_inode().to_string());
        assert_eq!(blue["pid"], named.pid().to_string());
        let f = info(&full_name);
        assert_eq!(f["source"], "inode");
        assert_eq!(f["pid"], full.pid().to_string());
        let own_ino = std::fs::metadata("/proc/self/ns/net").unwrap().ino();
        assert_eq!(info("host")["inode"], own_ino.to_string());
        for ns in ["host", "blue", full_name.as_str()] {
            assert_eq!(m.value("sockdiag_netns_up", &[("netns", ns)]), 1.0, "{ns}");
        }

        // Process attribution: python3 in the helpers, this test binary at
        // home.
        let owner = |ns: &str| {
            let found = m.find(
                "sockdiag_listener_process_info",
                &[("netns", ns), ("port", &port_s)],
            );
            assert_eq!(found.len(), 1, "owner of {ns}: {found:?}");
            found[0].labels.clone()
        };
        assert_eq!(owner("blue")["comm"], "python3");
        assert_eq!(owner("blue")["pid"], named.pid().to_string());
        assert_eq!(owner(&full_name)["pid"], full.pid().to_string());
        assert_eq!(owner("host")["comm"], own_comm());
        assert_eq!(owner("host")["pid"], std::process::id().to_string());
        for ns in ["host", "blue", full_name.as_str()] {
            assert_eq!(
                m.value("sockdiag_listener_owner_unknown", &[("netns", ns)]),
                0.0
            );
        }
        assert_every_collector_healthy(&m);
        let _ = std::fs::remove_dir_all(&names_dir);
    });
}

#[test]
fn a_vanished_namespace_leaves_no_series_errors_or_descriptors() {
    in_netns(
        "a_vanished_namespace_leaves_no_series_errors_or_descriptors",
        || {
            let stays = NetnsProcess::start(7071, 4, 0);
            let stays_name = stays.ino_label();
            let daemon = Daemon::start(&flags(&[]));
            let present = |m: &Metrics, ns: &str| {
                !m.find("sockdiag_accept_queue_length", &[("netns", ns)])
                    .is_empty()
                    && !m
                        .find("sockdiag_netstat_listen_overflows_total", &[("netns", ns)])
                        .is_empty()
                    && !m
                        .find("sockdiag_listener_process_info", &[("netns", ns)])
                        .is_empty()
            };
            wait_for(&daemon, "the first namespace", |m| present(m, &stays_name));
            let settle = || settled_fds(&daemon);
            let baseline = settle();
            for round in 0..5 {
                let goes = NetnsProcess::start(7072, 4, 2);
                let goes_name = goes.ino_label();
                wait_for(&daemon, "the second namespace", |m| present(m, &goes_name));
                let with_it = settle();
                assert_eq!(
                    with_it,
                    baseline + handles_per_namespace(),
                    "round {round}: fds while collecting it"
                );
                goes.kill();
                let m = wait_for(&daemon, "the namespace's series to go", |m| {
                    !m.0.iter()
                        .any(|s| s.labels.get("netns") == Some(&goes_name))
                });
                assert!(present(&m, &stays_name));
                assert_eq!(settle(), baseline, "round {round}: fds after it vanished");
            }
            let m = daemon.metrics();
            assert_every_collector_healthy(&m);
        },
    );
}

/// Regression: the full tier let go of a vanished namespace's handles (its
/// sock_diag socket and procfs files) only at its next pass, a whole
/// `--collector.connections.interval` later (up to 24 h), so a deleted
/// namespace, network stack and all, stayed alive in the kernel that long.
#[test]
fn a_vanished_namespace_is_freed_before_the_next_connection_pass() {
    in_netns(
        "a_vanished_namespace_is_freed_before_the_next_connection_pass",
        || {
            let goes = NetnsProcess::start(7074, 4, 0);
            let goes_name = goes.ino_label();
            // Daemon::start sets a 200 ms connection interval, which hides
            // the delay: this one samples connections once, at start.
            let addr: std::net::SocketAddr = ([127, 0, 0, 1], free_port()).into();
            let child = Command::new(exporter_bin())
                .arg("--web.listen-address")
                .arg(addr.to_string())
                .args(["--collector.listeners.interval", "50ms"])
                .args(["--collector.connections.interval", "1h"])
                .args(flags(&[]))
                .stdin(std::process::Stdio::null())
                .spawn()
                .expect("starting the daemon");
            let daemon = Daemon::wait_healthy(child, addr);
            wait_for(&daemon, "the namespace on both tiers", |m| {
                let l = [("netns", goes_name.as_str())];
                !m.find("sockdiag_accept_queue_length", &l).is_empty()
                    && !m
                        .find("sockdiag_netstat_listen_overflows_total", &l)
                        .is_empty()
            });
            let settle = || settled_fds(&daemon);
            let with_it = settle();
            goes.kill();
            wait_for(&daemon, "the namespace's series to go", |m| {
                !m.0.iter()
                    .any(|s| s.labels.get("netns") == Some(&goes_name))
            });
            assert_eq!(
                settle(),
                with_it - handles_per_namespace(),
                "every handle on the vanished namespace is closed"
            );
        },
    );
}

#[test]
fn include_and_exclude_select_namespaces_by_name() {
    in_netns("include_and_exclude_select_namespaces_by_name", || {
        let _other = NetnsProcess::start(7073, 4, 0);
        let _l = listen(([127, 0, 0, 1], 7073).into(), 4, false, None);
        let only_host = Daemon::start(&flags(&["--collector.netns.include", "host"]));
        let no_host = Daemon::start(&flags(&["--collector.netns.exclude", "host"]));
        let m = wait_for(&only_host, "host listeners", |m| {
            !m.find("sockdiag_accept_queue_length", &[]).is_empty()
        });
        assert_eq!(netns_names(&m), ["host"]);
        assert!(
            m.find("sockdiag_accept_queue_length", &[])
                .iter()
                .all(|s| s.labels["netns"] == "host")
        );
        let m = wait_for(&no_host, "the other namespace's listeners", |m| {
            !m.find("sockdiag_accept_queue_length", &[]).is_empty()
        });
        let names = netns_names(&m);
        assert_eq!(names.len(), 1);
        assert!(names[0].starts_with("ino:"), "{names:?}");
        assert!(
            !m.0.iter()
                .any(|s| s.labels.get("netns").map(String::as_str) == Some("host"))
        );
    });
}

/// Starts the daemon as `cmd` with its stderr in a file; returns the file's
/// path with it.
fn start_logged(mut cmd: Command, what: &str) -> (Daemon, std::path::PathBuf) {
    let log = tempdir(what).join("stderr");
    cmd.stderr(std::fs::File::create(&log).expect("log file"));
    (Daemon::start_command(cmd, &flags(&[])), log)
}

/// Removes the directory [`start_logged`] made for `log`.
fn remove_log(log: &std::path::Path) {
    if let Some(dir) = log.parent() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// How often `needle` occurs in the daemon's log.
fn logged(log: &std::path::Path, needle: &str) -> usize {
    std::fs::read_to_string(log)
        .expect("daemon log")
        .matches(needle)
        .count()
}

#[test]
fn without_privileges_only_the_own_namespace_is_collected() {
    in_netns(
        "without_privileges_only_the_own_namespace_is_collected",
        || {
            // The test process hides its fds from processes without
            // CAP_SYS_PTRACE over it, as sshd or a setuid program does.
            assert_eq!(unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0) }, 0);
            let other = NetnsProcess::start(7074, 4, 0);
            let other_name = other.ino_label();
            let _l = listen(([127, 0, 0, 1], 7074).into(), 4, false, None);
            // A user namespace of its own: the daemon keeps the uid but holds
            // no capability over the test's processes and namespaces.
            let mut cmd = Command::new(exporter_bin());
            without_privileges(&mut cmd);
            let (daemon, log) = start_logged(cmd, "unprivileged-log");
            let m = wait_for(&daemon, "the host's listener and its owner", |m| {
                !m.find(
                    "sockdiag_accept_queue_limit",
                    &[("netns", "host"), ("port", "7074")],
                )
                .is_empty()
                    && !m
                        .find("sockdiag_listener_owner_unknown", &[("netns", "host")])
                        .is_empty()
            });
            // Other processes' namespaces cannot even be seen: nothing about
            // them, and a count of the processes hidden.
            assert_eq!(netns_names(&m), ["host"]);
            assert!(
                !m.0.iter()
                    .any(|s| s.labels.get("netns") == Some(&other_name))
            );
            assert!(m.value("sockdiag_netns_processes_unreadable", &[]) >= 2.0);
            assert_eq!(m.value("sockdiag_netns_up", &[("netns", "host")]), 1.0);
            // The host is collected in full; its listener's owner is unknown.
            assert_eq!(
                m.value(
                    "sockdiag_accept_queue_limit",
                    &[("netns", "host"), ("port", "7074")]
                ),
                4.0
            );
            assert!(
                m.find(
                    "sockdiag_listener_process_info",
                    &[("netns", "host"), ("port", "7074")]
                )
                .is_empty()
            );
            assert_eq!(
                m.value("sockdiag_listener_owner_unknown", &[("netns", "host")]),
                1.0
            );
            // Not a collector failure: nothing to page on but the coverage.
            assert_every_collector_healthy(&m);
            // Said once, not once per sample.
            std::thread::sleep(Duration::from_millis(600));
            drop(daemon);
            assert_eq!(logged(&log, "cannot see the network namespace of"), 1);
            assert_eq!(logged(&log, "cannot read the open files"), 1);
            drop(other);
            remove_log(&log);
        },
    );
}

#[test]
fn without_cap_sys_admin_other_namespaces_show_as_down() {
    in_netns(
        "without_cap_sys_admin_other_namespaces_show_as_down",
        || {
            let other = NetnsProcess::start(7075, 4, 0);
            let other_name = other.ino_label();
            let _l = listen(([127, 0, 0, 1], 7075).into(), 4, false, None);
            let mut cmd = Command::new("setpriv");
            cmd.args(["--inh-caps=-sys_admin", "--bounding-set=-sys_admin", "--"])
                .arg(exporter_bin());
            let (daemon, log) = start_logged(cmd, "no-sys-admin-log");
            let m = wait_for(&daemon, "the other namespace marked down", |m| {
                !m.find("sockdiag_netns_up", &[("netns", &other_name)])
                    .is_empty()
                    && !m
                        .find(
                            "sockdiag_listener_process_info",
                            &[("netns", "host"), ("port", "7075")],
                        )
                        .is_empty()
            });
            // Seen (it has an info series to join on) but not entered.
            assert_eq!(m.value("sockdiag_netns_up", &[("netns", &other_name)]), 0.0);
            assert_eq!(m.value("sockdiag_netns_up", &[("netns", "host")]), 1.0);
            let other_series: Vec<&str> =
                m.0.iter()
                    .filter(|s| s.labels.get("netns") == Some(&other_name))
                    .map(|s| s.name.as_str())
                    .collect();
            assert!(
                other_series.iter().all(|n| [
                    "sockdiag_netns_up",
                    "sockdiag_netns_info",
                    "sockdiag_netns_sample_duration_seconds"
                ]
                .contains(n)),
                "{other_series:?}"
            );
            // Process names need no CAP_SYS_ADMIN.
            let owner = &m.find(
                "sockdiag_listener_process_info",
                &[("netns", "host"), ("port", "7075")],
            )[0];
            assert_eq!(owner.labels["pid"], std::process::id().to_string());
            assert_every_collector_healthy(&m);
            std::thread::sleep(Duration::from_millis(600));
            drop(daemon);
            assert_eq!(logged(&log, "cannot enter other network namespaces"), 1);
            drop(other);
            remove_log(&log);
        },
    );
}
