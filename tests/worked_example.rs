//! The worked example of METRICS.md, end to end through a running daemon:
//! `listen(10)` on 127.0.0.1:4444, the server accepts 4 connections and
//! stops, 25 clients connect one after another and each that gets through
//! sends 4 bytes.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;

/// A TcpExt counter of this namespace, read straight from procfs.
fn tcp_ext(name: &str) -> f64 {
    tcp_ext_at("/proc/self/net/netstat", name)
}

#[test]
fn worked_example_through_metrics() {
    in_netns("worked_example_through_metrics", || {
        let addr: SocketAddr = "127.0.0.1:4444".parse().unwrap();
        let listener = listen(addr, 10, false, None);
        let mut clients = Vec::new();
        let mut accepted = Vec::new();
        let mut established = 0;
        let first_connect = Instant::now();
        for i in 0..25 {
            let mut c = start_connect(addr);
            if wait_connected(&c, Duration::from_millis(200)) {
                c.write_all(b"ping").expect("client write");
                established += 1;
            }
            if i < 4 {
                accepted.push(listener.accept().expect("accept").0);
            }
            clients.push(c);
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(
            established, 15,
            "4 accepted + 11 queued (limit 10 + 1) should connect"
        );

        let daemon = Daemon::start(&[]);
        // Let SYN-SENT clients retransmit once (1 s) so drops grow while the
        // daemon watches, and let the queue age.
        std::thread::sleep(Duration::from_millis(1300));
        let ss_before = parse_ss(&ss(&["-ltnm", "sport", "= :4444"]));
        let netstat_before = tcp_ext("ListenOverflows");
        // A connection sample and a listener sample, both after ss_before.
        std::thread::sleep(Duration::from_millis(500));
        let m = daemon.metrics();
        let ss_after = parse_ss(&ss(&["-ltnm", "sport", "= :4444"]));
        let netstat_after = tcp_ext("ListenOverflows");
        let waited = first_connect.elapsed().as_secs_f64();

        let l = [
            ("netns", "host"),
            ("family", "ipv4"),
            ("address", "127.0.0.1"),
            ("port", "4444"),
        ];
        assert_eq!(m.value("sockdiag_accept_queue_length", &l), 11.0);
        assert_eq!(m.value("sockdiag_accept_queue_limit", &l), 10.0);
        assert_eq!(m.value("sockdiag_accept_queue_peak_length", &l), 11.0);
        assert_eq!(m.value("sockdiag_accept_queue_bytes", &l), 44.0);
        assert_eq!(m.value("sockdiag_syn_queue_length", &l), 0.0);
        let oldest = m.value("sockdiag_accept_queue_oldest_seconds", &l);
        assert!(
            oldest > 1.0 && oldest <= waited + 0.1,
            "oldest {oldest} s, test ran {waited} s"
        );
        let full = m.value("sockdiag_accept_queue_full_seconds_total", &l);
        assert!(
            full > 1.0 && full <= waited,
            "full for {full} s of {waited} s"
        );

        // The drop counter grows while clients retransmit; ours must sit
        // between two readings of ss taken around the scrape.
        let drops = m.value("sockdiag_listen_drops_total", &l);
        let (before, after) = (ss_before[0].drops().unwrap(), ss_after[0].drops().unwrap());
        assert!(
            drops >= 10.0,
            "10 clients had their SYN dropped at least once: {drops}"
        );
        assert!(
            before as f64 <= drops && drops <= after as f64,
            "drops {drops} outside ss {before}..{after}"
        );

        let server = [("netns", "host"), ("role", "server"), ("port", "4444")];
        let client = [("netns", "host"), ("role", "client"), ("port", "4444")];
        let state = |base: &[(&'static str, &'static str)], s: &'static str| {
            let mut v = base.to_vec();
            v.push(("state", s));
            m.value_or_zero("sockdiag_tcp_connections", &v)
        };
        assert_eq!(state(&server, "established"), 15.0);
        assert_eq!(m.value("sockdiag_tcp_recv_queue_bytes", &server), 60.0);
        assert_eq!(m.value("sockdiag_tcp_send_queue_bytes", &server), 0.0);
        assert_eq!(state(&client, "established"), 15.0);
        assert_eq!(state(&client, "syn_sent"), 10.0);
        assert_eq!(m.value("sockdiag_tcp_send_queue_bytes", &client), 10.0);
        assert_eq!(m.value("sockdiag_tcp_recv_queue_bytes", &client), 0.0);
        // Listeners never count as connections.
        assert_eq!(state(&server, "listen"), 0.0);

        // The namespace counters, bracketed by our own readings of procfs.
        let ns = [("netns", "host")];
        let overflows = m.value("sockdiag_netstat_listen_overflows_total", &ns);
        assert!(
            overflows >= 10.0,
            "at least one overflow per SYN-SENT client: {overflows}"
        );
        assert!(
            netstat_before <= overflows && overflows <= netstat_after,
            "ListenOverflows {overflows} outside procfs {netstat_before}..{netstat_after}"
        );
        assert!(m.value("sockdiag_netstat_listen_drops_total", &ns) >= overflows);
        assert_eq!(m.value("sockdiag_somaxconn", &ns), 4096.0);

        for c in ["listeners", "connections", "netstat"] {
            assert_eq!(
                m.value("sockdiag_collector_errors_total", &[("collector", c)]),
                0.0
            );
            assert_eq!(
                m.value("sockdiag_collector_success", &[("collector", c)]),
                1.0
            );
        }
        assert_eq!(m.find("sockdiag_build_info", &[]).len(), 1);

        // Once the application drains its queue, the figures follow.
        for _ in 0..11 {
            accepted.push(listener.accept().expect("draining accept").0);
        }
        std::thread::sleep(Duration::from_millis(400));
        let m = daemon.metrics();
        assert!(m.value("sockdiag_accept_queue_length", &l) < 11.0);
        assert_eq!(
            m.value("sockdiag_accept_queue_peak_length", &l),
            11.0,
            "peak outlives the burst"
        );

        let status = daemon.terminate();
        assert!(status.success(), "daemon exit on SIGTERM: {status}");
        drop((clients, accepted, listener));
    });
}
