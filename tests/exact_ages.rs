//! Waiting connections dated by exact lookups after the walk: a server that
//! accepts in a tight loop while samples run makes many connections leave
//! their queue between the walk and their lookup, and that must never be an
//! error, a negative age or an age older than the connections themselves.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;

#[test]
fn connections_accepted_between_walk_and_lookup_are_never_errors_or_stale_ages() {
    in_netns(
        "connections_accepted_between_walk_and_lookup_are_never_errors_or_stale_ages",
        || {
            let addr: SocketAddr = ([127, 0, 0, 1], 7631).into();
            let listener: std::net::TcpListener = listen(addr, 4096, false, None).into();
            let stop = Arc::new(AtomicBool::new(false));
            let started = Instant::now();
            // The server: every 5 ms, accepts all that wait, as fast as it
            // can; so some connections always wait, and many leave their
            // queue while a sample runs. It never writes, and keeps the first
            // 300 it accepted open to the end: their lastsnd grows all
            // through the test, so taking any accepted connection for a
            // waiting one would show as an age of seconds. (One accepted
            // between the walk and its lookup is told apart by its inode;
            // its lastsnd would date its handshake anyway.) Under 1,024
            // descriptors in all, the default soft limit.
            let server = {
                let stop = stop.clone();
                listener.set_nonblocking(true).expect("non-blocking");
                std::thread::spawn(move || {
                    let mut accepted = 0u64;
                    let mut first = Vec::with_capacity(300);
                    let mut taken: std::collections::VecDeque<TcpStream> = Default::default();
                    while !stop.load(Ordering::Relaxed) {
                        while let Ok((s, _)) = listener.accept() {
                            accepted += 1;
                            if first.len() < 300 {
                                first.push(s);
                                continue;
                            }
                            taken.push_back(s);
                            if taken.len() > 100 {
                                taken.pop_front();
                            }
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    accepted
                })
            };
            // The clients: a steady stream, at most 40,000 connections
            // within 20 s, the first 300 and the newest 100 kept open.
            let clients = {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut made = 0u64;
                    let mut first = Vec::with_capacity(300);
                    let mut held: std::collections::VecDeque<TcpStream> = Default::default();
                    while !stop.load(Ordering::Relaxed)
                        && made < 40_000
                        && started.elapsed() < Duration::from_secs(20)
                    {
                        if let Ok(s) = TcpStream::connect(addr) {
                            made += 1;
                            if first.len() < 300 {
                                first.push(s);
                                continue;
                            }
                            held.push_back(s);
                            if held.len() > 100 {
                                held.pop_front();
                            }
                        }
                        if made % 20 == 0 {
                            std::thread::sleep(Duration::from_millis(1));
                        }
                    }
                    made
                })
            };
            std::thread::sleep(Duration::from_millis(200));
            let mut dated = 0;
            for i in 0..25 {
                let before = started.elapsed().as_secs_f64();
                let out = Command::new(exporter_bin())
                    .args([
                        "snapshot",
                        "--format",
                        "json",
                        "--no-collector.netns",
                        "--no-collector.processes",
                    ])
                    .stdin(Stdio::null())
                    .output()
                    .expect("running snapshot");
                let stderr = String::from_utf8_lossy(&out.stderr);
                assert!(out.status.success(), "snapshot {i} failed: {stderr}");
                assert!(
                    !stderr.contains("lookup") && !stderr.contains("error"),
                    "snapshot {i}: {stderr}"
                );
                let doc: serde_json::Value =
                    serde_json::from_slice(&out.stdout).expect("snapshot JSON");
                // One namespace: the test's own (--no-collector.netns).
                let namespaces = doc["namespaces"].as_array().into_iter().flatten();
                let queues = namespaces
                    .flat_map(|ns| ns["connections"]["queues"].as_array().into_iter().flatten());
                for q in queues {
                    if q["port"].as_u64() != Some(7631) {
                        continue;
                    }
                    let queued = q["queued"].as_u64().unwrap_or(0);
                    if let (Some(age), true) = (q["oldest_seconds"].as_f64(), queued > 0) {
                        dated += 1;
                        assert!(age >= 0.0, "snapshot {i}: negative age {age}");
                        // Nothing waits longer than the server's 5 ms nap
                        // and a sample; an accepted connection taken for a
                        // waiting one would be dated by its growing
                        // lastsnd, up to the test's length ({before:.3} s).
                        assert!(
                            age < 0.5,
                            "snapshot {i}: oldest waiting {age} s, {before:.3} s into the test"
                        );
                    }
                }
            }
            stop.store(true, Ordering::Relaxed);
            let accepted = server.join().expect("server thread");
            let made = clients.join().expect("client thread");
            eprintln!("{made} connections, {accepted} accepted, {dated} samples dated the queue");
            assert!(accepted > 100, "the server accepted in a tight loop");
            assert!(dated >= 5, "queues were dated in {dated} of 25 samples");
        },
    );
}

/// Builds, in a network namespace of its own, a listener on 127.0.0.1:PORT
/// and one on [::1]:PORT+1, neither accepting, with 3 and 2 clients
/// waiting; says when the clients connected (Unix time).
const WAITING_MIX: &str = r#"
import json, socket, sys, time
port = int(sys.argv[1])
l4 = socket.socket(socket.AF_INET)
l4.bind(("127.0.0.1", port)); l4.listen(8)
l6 = socket.socket(socket.AF_INET6)
l6.bind(("::1", port + 1)); l6.listen(8)
t = time.time()
held = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
held += [socket.create_connection(("::1", port + 1)) for _ in range(2)]
print("ready", json.dumps({"t": t}), flush=True)
sys.stdin.read()
"#;

#[derive(serde::Deserialize)]
struct Connected {
    t: f64,
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[test]
fn ages_in_several_namespaces_match_when_their_clients_connected() {
    in_netns(
        "ages_in_several_namespaces_match_when_their_clients_connected",
        || {
            let spawn = || {
                let mut cmd = python_with_loopback(WAITING_MIX, &["7641"]);
                in_new_netns(&mut cmd);
                NsHelper::<Connected>::spawn(cmd, "a namespace with waiting clients")
            };
            let early = spawn();
            std::thread::sleep(Duration::from_millis(1500));
            let late = spawn();
            std::thread::sleep(Duration::from_millis(300));
            let before = unix_now();
            let out = Command::new(exporter_bin())
                .args(["snapshot", "--format", "json", "--no-collector.processes"])
                .stdin(Stdio::null())
                .output()
                .expect("running snapshot");
            let after = unix_now();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let doc: serde_json::Value =
                serde_json::from_slice(&out.stdout).expect("snapshot JSON");
            let mut checked = 0;
            for (helper, what) in [(&early, "early"), (&late, "late")] {
                let label = helper.ino_label();
                let ns = doc["namespaces"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|ns| ns["netns"].as_str() == Some(label.as_str()))
                    .unwrap_or_else(|| panic!("namespace {label} not in the snapshot"));
                for port in [7641, 7642] {
                    let q = ns["connections"]["queues"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|q| q["port"].as_u64() == Some(port))
                        .unwrap_or_else(|| panic!("{what}: no queue on port {port}: {ns}"));
                    let age = q["oldest_seconds"]
                        .as_f64()
                        .unwrap_or_else(|| panic!("{what}: port {port} not dated: {q}"));
                    // Dated between the snapshot's start and end; the
                    // kernel's clock ticks in milliseconds (and jiffies).
                    let (low, high) = (before - helper.built.t, after - helper.built.t);
                    assert!(
                        age >= low - 0.02 && age <= high + 0.02,
                        "{what} port {port}: age {age:.3} s, expected {low:.3}..{high:.3}"
                    );
                    checked += 1;
                }
            }
            assert_eq!(checked, 4);
            early.kill();
            late.kill();
        },
    );
}
