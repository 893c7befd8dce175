//! Where the daemon listens: on every `--web.listen-address` given, with
//! one connection cap over all of them, or on the sockets systemd passes
//! (`--web.systemd-socket`).

mod common;

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// `systemd-socket-activate` (package `systemd`), wherever it is installed.
fn socket_activate() -> &'static str {
    [
        "/usr/bin/systemd-socket-activate",
        "/lib/systemd/systemd-socket-activate",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists())
    .expect("systemd-socket-activate (package systemd) is not installed")
}

#[test]
fn systemd_socket_activation_serves_metrics_and_healthz() {
    in_netns(
        "systemd_socket_activation_serves_metrics_and_healthz",
        || {
            let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
            // systemd-socket-activate listens, and on the first connection
            // execs the exporter (same pid) with the socket as fd 3.
            let child = Command::new(socket_activate())
                .arg("--listen")
                .arg(addr.to_string())
                .arg(exporter_bin())
                .args([
                    "--web.systemd-socket",
                    "--no-collector.netns",
                    "--collector.listeners.interval",
                    "50ms",
                    "--collector.connections.interval",
                    "200ms",
                    "--log.level",
                    "debug",
                ])
                .stdin(Stdio::null())
                .spawn()
                .expect("starting systemd-socket-activate");
            let started = Instant::now();
            let daemon = Daemon::wait_healthy(child, addr);
            eprintln!("healthy {:?} after the first connection", started.elapsed());
            let exe = std::fs::read_link(format!("/proc/{}/exe", daemon.child.id()))
                .expect("the daemon's executable");
            assert!(
                exe.ends_with("sockdiag-exporter"),
                "the activated process is the exporter: {exe:?}"
            );
            let (status, body) = daemon.get("/metrics");
            assert_eq!(status, 200);
            assert!(body.contains("sockdiag_build_info"), "{body}");
            let m = Metrics::parse(&body);
            assert_eq!(
                m.value(
                    "sockdiag_accept_queue_limit",
                    &[("address", "127.0.0.1"), ("port", &addr.port().to_string())]
                ),
                // systemd's default Backlog= (SOMAXCONN, capped by the
                // namespace's somaxconn, 4096 here): the socket is
                // systemd's, not one we bound with backlog 128.
                m.value("sockdiag_somaxconn", &[]).min(4096.0),
                "the exporter serves on the socket systemd-socket-activate made"
            );
            assert_eq!(daemon.get("/healthz").0, 200);
            let status = daemon.terminate();
            assert!(status.success(), "exit after SIGTERM: {status}");
        },
    );
}

/// Runs the exporter with `args` and `env`, which must fail within 10 s;
/// its exit code and stderr.
fn refused(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut child = Command::new(exporter_bin())
        .args(args)
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDS")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the exporter");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("waiting") {
            break s;
        }
        if start.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the exporter with {args:?} still runs after 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("piped stderr")
        .read_to_string(&mut err)
        .expect("reading stderr");
    (status.code(), err)
}

#[test]
fn systemd_socket_without_sockets_fails_clearly() {
    in_netns("systemd_socket_without_sockets_fails_clearly", || {
        let (code, err) = refused(&["--web.systemd-socket"], &[]);
        eprintln!("{err}");
        assert_eq!(code, Some(1), "{err}");
        assert!(
            err.contains("--web.systemd-socket: no sockets were passed")
                && err.contains("LISTEN_FDS"),
            "{err}"
        );
        // Variables meant for another process (LISTEN_PID not ours).
        let (code, err) = refused(
            &["--web.systemd-socket"],
            &[("LISTEN_PID", "1"), ("LISTEN_FDS", "1")],
        );
        assert_eq!(code, Some(1), "{err}");
        assert!(err.contains("LISTEN_PID=1 is not this process"), "{err}");
        // An explicit listen address cannot be honoured at the same time.
        let (code, err) = refused(
            &["--web.systemd-socket", "--web.listen-address", ":19101"],
            &[],
        );
        assert_eq!(code, Some(2), "a usage error: {err}");
        assert!(err.contains("cannot be used with"), "{err}");
    });
}

#[test]
fn every_listen_address_is_served_under_one_connection_cap() {
    in_netns(
        "every_listen_address_is_served_under_one_connection_cap",
        || {
            let v6: SocketAddr = format!("[::1]:{}", free_port()).parse().expect("address");
            let daemon = Daemon::start(&[
                "--no-collector.netns",
                "--web.listen-address",
                &v6.to_string(),
                "--web.max-connections",
                "2",
                "--web.read-header-timeout",
                "30s",
            ]);
            let (status, _) = http_get(v6, "/metrics").expect("a scrape over IPv6");
            assert_eq!(status, 200);
            assert_eq!(daemon.get("/metrics").0, 200, "and over IPv4");
            // One cap over both: an idle connection on each address fills
            // it, and a scrape on either pushes out the older one.
            let connect = |a: &SocketAddr| {
                TcpStream::connect_timeout(a, Duration::from_secs(2)).expect("connect")
            };
            let mut on_v4 = connect(&daemon.addr);
            std::thread::sleep(Duration::from_millis(100));
            let _on_v6 = connect(&v6);
            std::thread::sleep(Duration::from_millis(100));
            let (status, body) = http_get(v6, "/metrics").expect("a scrape at the cap");
            assert_eq!(status, 200);
            let m = Metrics::parse(&body);
            assert_eq!(
                m.value(
                    "sockdiag_http_connections_evicted_total",
                    &[("reason", "slow")]
                ),
                1.0
            );
            on_v4
                .set_read_timeout(Some(Duration::from_secs(2)))
                .expect("read timeout");
            let mut buf = [0u8; 16];
            let closed = match on_v4.read(&mut buf) {
                Ok(n) => n == 0,
                Err(e) => !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
            };
            assert!(closed, "the IPv4 connection, the older, made room");
        },
    );
}
