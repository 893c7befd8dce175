//! Options of the connection walk, end to end through `snapshot`.
//!
//! Port filters: listeners stay complete, per-port and per-address figures
//! cover exactly the chosen ports, and a listener whose connections the walk
//! skipped gets no per-address figures rather than zeros that would read as
//! "nothing queued". Queue ages: `off` leaves the age of waiting connections
//! unknown instead of claiming 0.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use common::*;

fn snapshot(args: &[&str]) -> serde_json::Value {
    snapshot_host(&snapshot_json(args)).clone()
}

fn role_ports(v: &serde_json::Value, role: &str) -> Vec<u64> {
    let mut p: Vec<u64> = v["connections"]["ports"]
        .as_array()
        .expect("array")
        .iter()
        .filter(|e| e["role"] == role)
        .filter_map(|e| e["port"].as_u64())
        .collect();
    p.sort_unstable();
    p
}

fn ports_of(v: &serde_json::Value, list: &str) -> Vec<u64> {
    let mut p: Vec<u64> = v["connections"][list]
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|e| e["port"].as_u64())
        .collect();
    p.sort_unstable();
    p.dedup();
    p
}

#[test]
fn port_filters_restrict_the_walk_not_the_listeners() {
    in_netns("port_filters_restrict_the_walk_not_the_listeners", || {
        let mut keep = Vec::new();
        for port in [5001u16, 5002, 5003] {
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            keep.push(listen(addr, 8, false, None));
            for _ in 0..2 {
                let mut c = start_connect(addr);
                assert!(wait_connected(&c, Duration::from_secs(2)));
                c.write_all(b"hello").unwrap();
                keep.push(c);
            }
        }
        std::thread::sleep(Duration::from_millis(100));

        let all = snapshot(&[]);
        assert_eq!(ports_of(&all, "queues"), vec![5001, 5002, 5003]);

        let only = snapshot(&["--collector.connections.ports", "5002"]);
        assert_eq!(
            only["listeners"]["listeners"].as_array().unwrap().len(),
            3,
            "listeners unaffected"
        );
        assert_eq!(
            ports_of(&only, "queues"),
            vec![5002],
            "no per-address figures for skipped ports"
        );
        assert_eq!(
            ports_of(&only, "ports"),
            vec![5002],
            "server and client side of 5002 only"
        );
        let q = &only["connections"]["queues"][0];
        assert_eq!(
            (q["queued"].as_u64(), q["queued_bytes"].as_u64()),
            (Some(2), Some(10))
        );
        assert_eq!(only["connections"]["sockets"].as_u64(), Some(4));

        let except = snapshot(&["--collector.connections.exclude-ports", "5002"]);
        assert_eq!(ports_of(&except, "queues"), vec![5001, 5003]);
        // Exclusion is by local port: the servers on 5002 are skipped, the
        // clients talking to it are still counted.
        assert_eq!(role_ports(&except, "server"), vec![5001, 5003]);
        assert_eq!(role_ports(&except, "client"), vec![5001, 5002, 5003]);
        assert_eq!(except["connections"]["sockets"].as_u64(), Some(10));
        drop(keep);
    });
}

#[test]
fn queue_age_off_leaves_waiting_connections_undated() {
    in_netns("queue_age_off_leaves_waiting_connections_undated", || {
        let busy: SocketAddr = "127.0.0.1:5001".parse().unwrap();
        let idle: SocketAddr = "127.0.0.1:5002".parse().unwrap();
        let keep = vec![listen(busy, 8, false, None), listen(idle, 8, false, None)];
        let clients: Vec<_> = (0..2)
            .map(|_| {
                let c = start_connect(busy);
                assert!(wait_connected(&c, Duration::from_secs(2)));
                c
            })
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        let age = |v: &serde_json::Value, port: u64| {
            let q = v["connections"]["queues"]
                .as_array()
                .unwrap()
                .iter()
                .find(|q| q["port"].as_u64() == Some(port))
                .cloned()
                .expect("queue figures for the port");
            (q["queued"].as_u64(), q["oldest_seconds"].as_f64())
        };
        let exact = snapshot(&[]);
        let (queued, oldest) = age(&exact, 5001);
        assert_eq!(queued, Some(2));
        assert!(
            oldest.is_some_and(|s| s >= 0.2),
            "dated from tcp_info: {oldest:?}"
        );
        assert_eq!(age(&exact, 5002), (Some(0), Some(0.0)));

        let off = snapshot(&["--collector.connections.queue-age", "off"]);
        assert_eq!(age(&off, 5001), (Some(2), None), "waiting, age unknown");
        assert_eq!(
            age(&off, 5002),
            (Some(0), None),
            "with ages off the age is never exported"
        );
        drop((keep, clients));
    });
}

/// The cardinality guard: beyond --collector.connections.max-client-ports,
/// the remote ports with the fewest sockets fold into port="other", and the
/// fold is counted.
#[test]
fn client_ports_beyond_the_cap_fold_into_other() {
    in_netns("client_ports_beyond_the_cap_fold_into_other", || {
        let mut keep = Vec::new();
        // 4, 3, 2 and 1 connections: the two busiest remote ports stay.
        for (port, n) in [(6001u16, 4), (6002, 3), (6003, 2), (6004, 1)] {
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            keep.push(listen(addr, 16, false, None));
            for _ in 0..n {
                let c = start_connect(addr);
                assert!(wait_connected(&c, Duration::from_secs(2)));
                keep.push(c);
            }
        }
        let v = snapshot(&["--collector.connections.max-client-ports", "2"]);
        let client: Vec<(Option<u64>, u64)> = v["connections"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["role"] == "client")
            .map(|p| (p["port"].as_u64(), p["states"][0][1].as_u64().unwrap_or(0)))
            .collect();
        assert_eq!(client, vec![(Some(6001), 4), (Some(6002), 3), (None, 3)]);
        assert_eq!(v["connections"]["client_ports_folded"].as_u64(), Some(2));
        // Server ports are never folded: they are bounded by the listeners.
        assert_eq!(ports_of(&v, "ports").len(), 4);

        let daemon = Daemon::start(&["--collector.connections.max-client-ports", "2"]);
        std::thread::sleep(Duration::from_millis(400));
        let m = daemon.metrics();
        let other = [
            ("netns", "host"),
            ("role", "client"),
            ("port", "other"),
            ("state", "established"),
        ];
        assert_eq!(m.value("sockdiag_tcp_connections", &other), 3.0);
        assert_eq!(
            m.value("sockdiag_tcp_client_ports_folded", &[("netns", "host")]),
            2.0
        );
        assert!(
            m.find(
                "sockdiag_tcp_send_queue_bytes",
                &[("role", "client"), ("port", "6004")]
            )
            .is_empty()
        );
        drop(keep);
    });
}

/// Regression: a server connection whose client happens to use a filtered
/// port as its source port. Excluding that port must not make the server's
/// own figures short; including only it must not export a stray partial
/// view of the server's port.
#[test]
fn filters_never_publish_partial_figures_for_unlisted_ports() {
    in_netns(
        "filters_never_publish_partial_figures_for_unlisted_ports",
        || {
            let server: SocketAddr = "127.0.0.1:3000".parse().unwrap();
            let listener = listen(server, 8, false, None);
            let client =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            client
                .bind(&SocketAddr::from(([127, 0, 0, 1], 40000)).into())
                .expect("binding the client's source port");
            client.connect(&server.into()).expect("connect");
            (&client).write_all(b"8 bytes!").unwrap();
            std::thread::sleep(Duration::from_millis(100));

            let queue = |v: &serde_json::Value| {
                v["connections"]["queues"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|q| q["port"] == 3000)
                    .map(|q| (q["queued"].as_u64(), q["queued_bytes"].as_u64()))
            };
            let except = snapshot(&["--collector.connections.exclude-ports", "40000"]);
            assert_eq!(
                queue(&except),
                Some((Some(1), Some(8))),
                "server figures complete"
            );
            assert_eq!(role_ports(&except, "server"), vec![3000]);

            let only = snapshot(&["--collector.connections.ports", "40000"]);
            assert_eq!(
                queue(&only),
                None,
                "3000 is not listed: no per-address figures"
            );
            assert!(role_ports(&only, "server").is_empty(), "{only}");
            assert!(role_ports(&only, "client").is_empty(), "{only}");
            drop((client, listener));
        },
    );
}
