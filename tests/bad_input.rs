//! Bad input and hostile clients: flags the exporter must refuse with a
//! message naming them, a port already taken, every collector disabled, an
//! unreadable procfs, HTTP clients that say nothing, dribble, flood or send
//! garbage, shutdown with a keep-alive connection held open, and a kernel
//! error reply from netlink.
//!
//! Every test runs in a network namespace of its own (see
//! `common::in_netns`), even those that only parse flags: should a
//! regression let a bad command line start the daemon, it binds nothing
//! outside the test.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// What a bounded run of the binary produced.
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

/// Runs the exporter with `args`, killing it (by pid) if it has not exited
/// within `limit`; panics in that case, since every invocation here must
/// end on its own.
fn run_bounded(args: &[&str], limit: Duration) -> Run {
    let started = Instant::now();
    let mut child = Command::new(exporter_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the exporter");
    let out = drain(child.stdout.take().expect("piped stdout"));
    let err = drain(child.stderr.take().expect("piped stderr"));
    let status = loop {
        if let Some(s) = child.try_wait().expect("waiting for the exporter") {
            break s;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("sockdiag-exporter {args:?} still running after {limit:?}; killed it");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let elapsed = started.elapsed();
    Run {
        status,
        stdout: text(&out.join().unwrap_or_default()),
        stderr: text(&err.join().unwrap_or_default()),
        elapsed,
    }
}

fn drain(mut r: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = r.read_to_end(&mut v);
        v
    })
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts the run failed with a message that mentions each of `needles`.
fn assert_refused(args: &[&str], needles: &[&str]) {
    let run = run_bounded(args, Duration::from_secs(10));
    assert!(
        !run.status.success(),
        "sockdiag-exporter {args:?} should fail, exited {}\nstderr: {}",
        run.status,
        run.stderr
    );
    assert!(
        run.status.code().is_some(),
        "sockdiag-exporter {args:?} should exit with a code, not die by signal: {}",
        run.status
    );
    for needle in needles {
        assert!(
            run.stderr.contains(needle),
            "stderr of sockdiag-exporter {args:?} should mention {needle:?}:\n{}",
            run.stderr
        );
    }
    assert!(
        run.stdout.trim().is_empty(),
        "a refused command line prints nothing on stdout: {:?}",
        run.stdout
    );
}

/// A daemon started with stderr captured; killed (by pid) when dropped.
struct Exporter {
    child: Child,
    addr: SocketAddr,
    stderr: Arc<Mutex<Vec<u8>>>,
}

impl Exporter {
    /// Starts the daemon on a free loopback port with `args` and waits until
    /// it answers HTTP at all (any status on `/healthz`).
    fn spawn(args: &[&str]) -> Exporter {
        let port = free_port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut child = Command::new(exporter_bin())
            .arg("--web.listen-address")
            .arg(addr.to_string())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting the daemon");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut pipe = child.stderr.take().expect("piped stderr");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => sink.lock().unwrap().extend_from_slice(&buf[..n]),
                }
            }
        });
        let mut exporter = Exporter {
            child,
            addr,
            stderr,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if http_get(addr, "/healthz").is_ok() {
                return exporter;
            }
            if let Some(status) = exporter.child.try_wait().expect("waiting for the daemon") {
                panic!(
                    "daemon exited early ({status}):\n{}",
                    exporter.stderr_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not answer HTTP within 15 s:\n{}",
                exporter.stderr_text()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Like [`Exporter::spawn`], then waits for `/healthz` to say 200.
    fn start(args: &[&str]) -> Exporter {
        let e = Exporter::spawn(args);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok((200, _)) = http_get(e.addr, "/healthz") {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "daemon not healthy within 15 s:\n{}",
                e.stderr_text()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn stderr_text(&self) -> String {
        text(&self.stderr.lock().unwrap())
    }

    fn get(&self, path: &str) -> (u16, String) {
        http_get(self.addr, path)
            .unwrap_or_else(|e| panic!("GET {path}: {e}\n{}", self.stderr_text()))
    }

    fn metrics(&self) -> Metrics {
        let (status, body) = self.get("/metrics");
        assert_eq!(status, 200, "GET /metrics: {body}");
        Metrics::parse(&body)
    }

    fn assert_alive(&mut self) {
        assert!(
            self.child.try_wait().expect("waiting").is_none(),
            "daemon exited:\n{}",
            self.stderr_text()
        );
    }

    fn signal(&self, sig: i32) {
        let rc = unsafe { libc::kill(self.child.id() as i32, sig) };
        assert_eq!(rc, 0, "kill({}, {sig})", self.child.id());
    }

    /// Waits up to `limit` for the daemon to exit.
    fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait().expect("waiting for the daemon") {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How a connection ended, seen from the client.
#[derive(Debug, PartialEq)]
enum Ending {
    /// The server closed it (EOF or reset), after sending these bytes.
    Closed(Vec<u8>),
    /// Still open at the deadline, after these bytes.
    Open(Vec<u8>),
}

/// Reads from `s` until the peer closes or `limit` passes.
fn read_until_closed(s: &mut TcpStream, limit: Duration) -> Ending {
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ending::Open(got);
        }
        s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .expect("read timeout");
        match s.read(&mut buf) {
            Ok(0) => return Ending::Closed(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return Ending::Closed(got),
        }
    }
}

/// The status code of an HTTP response's first line, if there is one.
fn status_of(raw: &[u8]) -> Option<u16> {
    let line = raw.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    if !line.starts_with("HTTP/1.") {
        return None;
    }
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Reads one response (headers plus a Content-Length body) from a
/// keep-alive connection, leaving it open.
fn read_one_response(s: &mut TcpStream, limit: Duration) -> (u16, String) {
    let deadline = Instant::now() + limit;
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let body_len: usize = text(&raw[..end])
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .expect("response has a Content-Length");
            let body = end + 4..end + 4 + body_len;
            if raw.len() >= body.end {
                let status = status_of(&raw).expect("status line");
                return (status, text(&raw[body]));
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "no complete response within {limit:?}: {}",
            text(&raw)
        );
        s.set_read_timeout(Some(left)).expect("read timeout");
        match s.read(&mut buf) {
            Ok(0) => panic!("connection closed mid-response: {}", text(&raw)),
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!("reading a response: {e}"),
        }
    }
}

/// Sends `request` on a fresh connection and returns how it ended.
fn raw_exchange(addr: SocketAddr, request: &[u8], limit: Duration) -> Ending {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_write_timeout(Some(limit)).expect("write timeout");
    // The server may close as soon as it has seen enough: a failed write is
    // an answer, not an error.
    let _ = s.write_all(request);
    read_until_closed(&mut s, limit)
}

/// What a server did with one request.
#[derive(Debug)]
enum Answer {
    /// Closed (EOF or reset) without sending anything.
    Closed,
    /// Sent a response head with this status (the connection may stay open).
    Status(u16),
    /// Sent bytes that are not an HTTP response head, then closed.
    Other(Vec<u8>),
    /// Neither answered nor closed within the limit.
    Hang(Vec<u8>),
}

/// Sends `request` on a fresh connection and waits (bounded) for a
/// response head or a close, whichever comes first.
fn answer_to(addr: SocketAddr, request: &[u8], limit: Duration) -> Answer {
    let deadline = Instant::now() + limit;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_write_timeout(Some(limit)).expect("write timeout");
    // The server may close as soon as it has seen enough: a failed write is
    // part of the answer, not an error.
    let _ = s.write_all(request);
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if got.windows(4).any(|w| w == b"\r\n\r\n") {
            return status_of(&got).map_or(Answer::Other(got), Answer::Status);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Answer::Hang(got);
        }
        s.set_read_timeout(Some(left)).expect("read timeout");
        match s.read(&mut buf) {
            Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            // EOF or reset.
            _ if got.is_empty() => return Answer::Closed,
            _ => return status_of(&got).map_or(Answer::Other(got), Answer::Status),
        }
    }
}

/// Deterministic pseudo-random bytes (xorshift64).
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 24) as u8
        })
        .collect()
}

// ---------------------------------------------------------------------------
// 1. Bad flags
// ---------------------------------------------------------------------------

#[test]
fn unknown_flag_is_refused_naming_it() {
    in_netns("unknown_flag_is_refused_naming_it", || {
        assert_refused(&["--collector.bogus"], &["--collector.bogus"]);
    });
}

#[test]
fn listener_interval_zero_too_short_or_garbage_is_refused() {
    in_netns(
        "listener_interval_zero_too_short_or_garbage_is_refused",
        || {
            for (value, why) in [
                ("0s", "at least 10ms"),
                ("0", "no unit"),
                ("5ms", "at least 10ms"),
                ("abc", "abc"),
            ] {
                assert_refused(
                    &["--collector.listeners.interval", value],
                    &["--collector.listeners.interval", value, why],
                );
            }
        },
    );
}

#[test]
fn connection_interval_zero_is_refused() {
    in_netns("connection_interval_zero_is_refused", || {
        assert_refused(
            &["--collector.connections.interval", "0s"],
            &["--collector.connections.interval", "0s", "at least 10ms"],
        );
    });
}

#[test]
fn telemetry_path_without_leading_slash_is_refused() {
    in_netns("telemetry_path_without_leading_slash_is_refused", || {
        assert_refused(
            &["--web.telemetry-path", "metrics"],
            &["--web.telemetry-path", "metrics", "must start with '/'"],
        );
    });
}

#[test]
fn log_level_unknown_is_refused_listing_levels() {
    in_netns("log_level_unknown_is_refused_listing_levels", || {
        assert_refused(
            &["--log.level", "loud"],
            &["--log.level", "loud", "error", "warn", "info", "debug"],
        );
    });
}

#[test]
fn snapshot_format_unknown_is_refused_listing_formats() {
    in_netns("snapshot_format_unknown_is_refused_listing_formats", || {
        assert_refused(
            &["snapshot", "--format", "xml"],
            &["--format", "xml", "table", "json"],
        );
    });
}

#[test]
fn listen_address_without_port_or_with_port_out_of_range_is_refused() {
    in_netns(
        "listen_address_without_port_or_with_port_out_of_range_is_refused",
        || {
            assert_refused(
                &["--web.listen-address", "nonsense"],
                &["--web.listen-address", "nonsense", "no port"],
            );
            assert_refused(
                &["--web.listen-address", "127.0.0.1:99999"],
                &["--web.listen-address", "127.0.0.1:99999"],
            );
            assert_refused(
                &["--web.listen-address", ":99999"],
                &["--web.listen-address", "99999"],
            );
        },
    );
}

// ---------------------------------------------------------------------------
// 2. Port in use, 3. nothing to do
// ---------------------------------------------------------------------------

#[test]
fn port_in_use_exits_nonzero_naming_address() {
    in_netns("port_in_use_exits_nonzero_naming_address", || {
        let taken = TcpListener::bind("127.0.0.1:0").expect("binding a port");
        let addr = taken.local_addr().unwrap().to_string();
        let run = run_bounded(&["--web.listen-address", &addr], Duration::from_secs(5));
        assert!(
            !run.status.success() && run.status.code().is_some(),
            "daemon on a taken port should exit with an error code: {}\n{}",
            run.status,
            run.stderr
        );
        assert!(
            run.elapsed < Duration::from_secs(3),
            "took {:?} to give up",
            run.elapsed
        );
        assert!(
            run.stderr.contains(&addr),
            "stderr should name {addr}:\n{}",
            run.stderr
        );
        assert!(
            run.stderr.to_lowercase().contains("in use"),
            "stderr should say the address is in use:\n{}",
            run.stderr
        );
        // The listener we hold was not disturbed.
        let _probe = TcpStream::connect(&addr).expect("our listener still accepts");
        drop(taken);
    });
}

#[test]
fn all_collectors_disabled_exits_nonzero() {
    in_netns("all_collectors_disabled_exits_nonzero", || {
        let port = free_port().to_string();
        let addr = format!("127.0.0.1:{port}");
        // Every collector the registry knows, so a new one cannot slip by.
        let off: Vec<String> = sockdiag_exporter::collect::REGISTRY
            .iter()
            .map(|r| format!("--no-collector.{}", r.name))
            .collect();
        let mut args = vec!["--web.listen-address", addr.as_str()];
        args.extend(off.iter().map(String::as_str));
        let run = run_bounded(&args, Duration::from_secs(5));
        assert!(
            !run.status.success() && run.status.code().is_some(),
            "{}\n{}",
            run.status,
            run.stderr
        );
        assert!(
            run.stderr.contains("collector") && run.stderr.contains("disabled"),
            "stderr should say every collector is disabled:\n{}",
            run.stderr
        );
    });
}

// ---------------------------------------------------------------------------
// 4. Unreadable procfs
// ---------------------------------------------------------------------------

#[test]
fn unreadable_procfs_counts_netstat_errors_and_warns_once() {
    in_netns(
        "unreadable_procfs_counts_netstat_errors_and_warns_once",
        || {
            let procfs = TempDir::new("procfs");
            let listener = listen("127.0.0.1:4444".parse().unwrap(), 7, false, None);
            let started = Instant::now();
            let mut daemon = Exporter::spawn(&[
                "--path.procfs",
                procfs.as_str(),
                "--collector.listeners.interval",
                "200ms",
                "--collector.connections.interval",
                "200ms",
                "--log.level",
                "info",
            ]);
            let l = [
                ("netns", "host"),
                ("family", "ipv4"),
                ("address", "127.0.0.1"),
                ("port", "4444"),
            ];
            // Wait (bounded) for the first listener sample.
            let deadline = Instant::now() + Duration::from_secs(5);
            let first = loop {
                let m = daemon.metrics();
                if !m.find("sockdiag_accept_queue_limit", &l).is_empty()
                    && m.value_or_zero(
                        "sockdiag_collector_errors_total",
                        &[("collector", "netstat")],
                    ) > 0.0
                {
                    break m;
                }
                assert!(Instant::now() < deadline, "no listener sample in 5 s");
                std::thread::sleep(Duration::from_millis(50));
            };
            assert_eq!(first.value("sockdiag_accept_queue_limit", &l), 7.0);
            let errors_first = first.value(
                "sockdiag_collector_errors_total",
                &[("collector", "netstat")],
            );
            assert!(errors_first > 0.0);

            // Let several more netstat samples fail. They run after each
            // connection sample, whose duration grows with every TCP socket
            // on the host (other namespaces included), so wait for a count
            // of failures rather than a fixed time.
            let deadline = Instant::now() + Duration::from_secs(10);
            let (m, errors_later) = loop {
                daemon.assert_alive();
                let m = daemon.metrics();
                let errors = m.value(
                    "sockdiag_collector_errors_total",
                    &[("collector", "netstat")],
                );
                if errors >= errors_first + 4.0 {
                    break (m, errors);
                }
                assert!(
                    Instant::now() < deadline,
                    "netstat errors should keep growing: {errors_first} then {errors} 10 s later"
                );
                std::thread::sleep(Duration::from_millis(100));
            };
            eprintln!("{errors_later} netstat failures in {:?}", started.elapsed());
            assert_eq!(
                m.value("sockdiag_collector_success", &[("collector", "netstat")]),
                0.0
            );
            for c in ["listeners", "connections"] {
                assert_eq!(
                    m.value("sockdiag_collector_errors_total", &[("collector", c)]),
                    0.0,
                    "collector {c}"
                );
                assert_eq!(
                    m.value("sockdiag_collector_success", &[("collector", c)]),
                    1.0,
                    "collector {c}"
                );
            }
            // Listener figures are still there; netstat figures are blank, not 0.
            assert_eq!(m.value("sockdiag_accept_queue_limit", &l), 7.0);
            // A collector that cannot work here must not make /healthz fail:
            // a liveness probe would restart the daemon in a loop for nothing.
            let (status, body) = http_get(daemon.addr, "/healthz").expect("GET /healthz");
            assert_eq!(status, 200, "/healthz with netstat failing: {body}");
            assert!(body.contains("netstat: failing"), "{body}");
            assert!(body.contains("listeners: ok"), "{body}");
            assert!(
                m.find("sockdiag_somaxconn", &[]).is_empty(),
                "no somaxconn without procfs: {:?}",
                m.find("sockdiag_somaxconn", &[])
            );

            let log = daemon.stderr_text();
            let missing = procfs.path().join("self/net/netstat");
            let missing = missing.to_str().unwrap();
            assert!(log.contains(missing), "log should name {missing}:\n{log}");
            let warnings: Vec<&str> = log
                .lines()
                .filter(|line| line.contains("WARN") && line.contains("netstat"))
                .collect();
            assert_eq!(
                warnings.len(),
                1,
                "one warning per failure streak, not per sample ({errors_later} failures):\n{log}"
            );
            drop(listener);
        },
    );
}

#[test]
fn snapshot_with_unreadable_procfs_exits_zero_naming_file() {
    in_netns(
        "snapshot_with_unreadable_procfs_exits_zero_naming_file",
        || {
            let procfs = TempDir::new("snapshot");
            let _listener = listen("127.0.0.1:4444".parse().unwrap(), 7, false, None);
            let run = run_bounded(
                &["snapshot", "--path.procfs", procfs.as_str()],
                Duration::from_secs(10),
            );
            assert!(
                run.status.success(),
                "netstat failure only blanks its figures: {}\n{}",
                run.status,
                run.stderr
            );
            let missing = procfs.path().join("self/net/netstat");
            let missing = missing.to_str().unwrap();
            let line = run
                .stderr
                .lines()
                .find(|l| l.contains(missing))
                .unwrap_or_else(|| panic!("stderr should name {missing}:\n{}", run.stderr));
            assert!(
                line.contains("netstat") && line.contains("cannot read"),
                "error line: {line}"
            );
            assert!(
                run.stdout.contains("4444"),
                "the listener is still shown:\n{}",
                run.stdout
            );
        },
    );
}

// ---------------------------------------------------------------------------
// 5. HTTP hardening
// ---------------------------------------------------------------------------

#[test]
fn http_silent_client_is_disconnected_after_read_header_timeout() {
    in_netns(
        "http_silent_client_is_disconnected_after_read_header_timeout",
        || {
            let mut daemon = Exporter::start(&["--web.read-header-timeout", "1s"]);
            let connected = Instant::now();
            let mut silent =
                TcpStream::connect_timeout(&daemon.addr, Duration::from_secs(2)).expect("connect");
            // Scrapes work while the silent client holds its connection.
            assert_eq!(daemon.get("/metrics").0, 200);
            let ending = read_until_closed(&mut silent, Duration::from_secs(3));
            let waited = connected.elapsed();
            eprintln!("silent client: {ending:?} after {waited:?}");
            assert!(
                matches!(ending, Ending::Closed(_)),
                "a client that sends nothing must be dropped within ~1s; still open after {waited:?}: {ending:?}"
            );
            assert!(
                waited >= Duration::from_millis(800),
                "dropped after {waited:?}, before the 1s timeout"
            );
            daemon.assert_alive();
            assert_eq!(daemon.get("/metrics").0, 200);

            // A kept-alive connection that goes silent after one request is
            // dropped the same way.
            let mut kept =
                TcpStream::connect_timeout(&daemon.addr, Duration::from_secs(2)).expect("connect");
            write!(
                kept,
                "GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n",
                daemon.addr
            )
            .unwrap();
            assert_eq!(read_one_response(&mut kept, Duration::from_secs(5)).0, 200);
            let answered = Instant::now();
            let ending = read_until_closed(&mut kept, Duration::from_secs(3));
            assert!(
                matches!(ending, Ending::Closed(ref got) if got.is_empty()),
                "an idle keep-alive connection must be dropped within ~1s: {ending:?} after {:?}",
                answered.elapsed()
            );
            daemon.assert_alive();
        },
    );
}

#[test]
fn http_slowloris_client_is_cut_off_after_read_header_timeout() {
    in_netns(
        "http_slowloris_client_is_cut_off_after_read_header_timeout",
        || {
            let mut daemon = Exporter::start(&["--web.read-header-timeout", "1s"]);
            let request = format!(
                "GET /metrics HTTP/1.1\r\nHost: {}\r\nX-Slow: {}\r\n\r\n",
                daemon.addr,
                "z".repeat(200)
            );
            let started = Instant::now();
            let mut s =
                TcpStream::connect_timeout(&daemon.addr, Duration::from_secs(2)).expect("connect");
            s.set_write_timeout(Some(Duration::from_secs(1))).unwrap();
            let mut sent = 0;
            let mut closed_after = None;
            for byte in request.as_bytes() {
                if s.write_all(std::slice::from_ref(byte)).is_err() {
                    closed_after = Some(started.elapsed());
                    break;
                }
                sent += 1;
                // Wait 300 ms between bytes, watching for the server closing.
                if let Ending::Closed(got) = read_until_closed(&mut s, Duration::from_millis(300)) {
                    assert!(
                        got.is_empty() || status_of(&got).is_some_and(|c| (400..500).contains(&c)),
                        "a cut-off client gets nothing or a 4xx: {}",
                        text(&got)
                    );
                    closed_after = Some(started.elapsed());
                    break;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(5),
                    "slow client still connected after {:?} ({sent} bytes sent)",
                    started.elapsed()
                );
            }
            let closed_after = closed_after.expect("the server never cut the slow client off");
            eprintln!("slow client cut off after {closed_after:?}, {sent} bytes sent");
            assert!(
                closed_after < Duration::from_millis(2500),
                "slow client cut off only after {closed_after:?} with a 1s timeout"
            );
            assert!(sent < request.len(), "the whole request got through");
            daemon.assert_alive();
            assert_eq!(daemon.get("/metrics").0, 200);
        },
    );
}

#[test]
fn http_connections_beyond_max_connections_push_out_the_oldest_idle_ones() {
    in_netns(
        "http_connections_beyond_max_connections_push_out_the_oldest_idle_ones",
        || {
            let mut daemon = Exporter::start(&[
                "--web.max-connections",
                "4",
                "--web.read-header-timeout",
                "30s",
            ]);
            // Let the start-up probes' connections finish and free their slots.
            std::thread::sleep(Duration::from_millis(200));
            let mut idle: Vec<TcpStream> = Vec::new();
            for _ in 0..10 {
                idle.push(
                    TcpStream::connect_timeout(&daemon.addr, Duration::from_secs(2))
                        .expect("connect"),
                );
                // Each is looked at before the next arrives.
                std::thread::sleep(Duration::from_millis(20));
            }
            let started = Instant::now();
            let mut closed = Vec::new();
            let mut open = Vec::new();
            for (i, mut s) in idle.drain(..).enumerate() {
                let left = Duration::from_millis(1500).saturating_sub(started.elapsed());
                match read_until_closed(&mut s, left.max(Duration::from_millis(50))) {
                    Ending::Closed(got) => {
                        assert!(
                            got.is_empty(),
                            "an evicted connection gets no bytes: {got:?}"
                        );
                        closed.push(i);
                    }
                    Ending::Open(got) => {
                        assert!(got.is_empty(), "an idle connection gets no bytes: {got:?}");
                        open.push((i, s));
                    }
                }
            }
            assert_eq!(
                closed,
                (0..6).collect::<Vec<_>>(),
                "with --web.max-connections 4, the 6 oldest of 10 idle connections are closed"
            );
            // While idle connections hold every slot, a scrape still gets in.
            let m = daemon.metrics();
            assert_eq!(
                m.value(
                    "sockdiag_http_connections_evicted_total",
                    &[("reason", "slow")]
                ),
                7.0,
                "6 idle clients, then the oldest remaining one for the scrape"
            );
            assert_eq!(m.value("sockdiag_http_connections_refused_total", &[]), 0.0);
            assert!(m.value("sockdiag_http_connections_open", &[]) <= 4.0);
            let ending = read_until_closed(&mut open[0].1, Duration::from_millis(500));
            assert!(
                matches!(ending, Ending::Closed(_)),
                "the oldest remaining idle connection made room: {ending:?}"
            );
            daemon.assert_alive();
        },
    );
}

#[test]
fn http_rejected_requests_counter_matches_503s() {
    in_netns("http_rejected_requests_counter_matches_503s", || {
        let daemon = Exporter::start(&["--web.max-requests", "1"]);
        for _ in 0..5 {
            assert_eq!(daemon.get("/metrics").0, 200);
        }
        let m = daemon.metrics();
        assert_eq!(
            m.value("sockdiag_http_requests_rejected_total", &[]),
            0.0,
            "sequential scrapes are never rejected"
        );
        // A burst of concurrent scrapes with room for one at a time: whether
        // any is rejected depends on timing, but each answer is 200 or 503
        // and the counter must account for every 503.
        let addr = daemon.addr;
        let workers: Vec<_> = (0..16)
            .map(|_| {
                std::thread::spawn(move || {
                    (0..5)
                        .map(|_| http_get(addr, "/metrics").map(|(s, _)| s))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut rejected = 0;
        for w in workers {
            for status in w.join().expect("scrape thread") {
                match status {
                    Ok(200) => {}
                    Ok(503) => rejected += 1,
                    other => panic!("scrape answered {other:?}"),
                }
            }
        }
        eprintln!("{rejected} of 80 concurrent scrapes got 503");
        let m = daemon.metrics();
        assert_eq!(
            m.value("sockdiag_http_requests_rejected_total", &[]),
            rejected as f64,
            "counter vs 503s seen"
        );
    });
}

#[test]
fn http_garbage_requests_get_4xx_or_close_and_daemon_keeps_serving() {
    in_netns(
        "http_garbage_requests_get_4xx_or_close_and_daemon_keeps_serving",
        || {
            // A long timeout: garbage must be refused on sight, not by it.
            let mut daemon = Exporter::start(&["--web.read-header-timeout", "30s"]);
            let long_method = format!("{} /metrics HTTP/1.1\r\nHost: x\r\n\r\n", "Q".repeat(8192));
            let cases: Vec<(&str, Vec<u8>)> = vec![
                (
                    "64 KiB of random bytes",
                    noise(64 * 1024, 0x9e37_79b9_7f4a_7c15),
                ),
                ("random bytes after a request line", {
                    let mut v = b"GET /metrics HTTP/1.1\r\n".to_vec();
                    v.extend(noise(4096, 42));
                    v
                }),
                (
                    "control bytes in the method",
                    b"G\x01\x02T /metrics HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
                ),
                ("an 8 KiB method name", long_method.into_bytes()),
                (
                    "an unknown HTTP version",
                    b"GET /metrics HTTP/7.3\r\nHost: x\r\n\r\n".to_vec(),
                ),
                (
                    "a header line without a colon",
                    b"GET /metrics HTTP/1.1\r\nHost x\r\nnonsense\r\n\r\n".to_vec(),
                ),
                ("200 headers", {
                    let mut v = b"GET /metrics HTTP/1.1\r\nHost: x\r\n".to_vec();
                    for i in 0..200 {
                        v.extend(format!("X-H{i}: v\r\n").into_bytes());
                    }
                    v.extend(b"\r\n");
                    v
                }),
                ("half a megabyte of header", {
                    let mut v = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
                    v.extend(std::iter::repeat_n(b'a', 512 * 1024));
                    v.extend(b"\r\n\r\n");
                    v
                }),
            ];
            for (what, bytes) in &cases {
                match answer_to(daemon.addr, bytes, Duration::from_secs(5)) {
                    Answer::Closed => {}
                    Answer::Status(code) => {
                        assert!((400..500).contains(&code), "{what}: answered {code}")
                    }
                    Answer::Other(got) => panic!(
                        "{what}: answered neither HTTP 4xx nor a close: {:?}",
                        text(&got[..got.len().min(200)])
                    ),
                    Answer::Hang(got) => panic!(
                        "{what}: no answer and still open after 5 s; got {:?}",
                        text(&got[..got.len().min(200)])
                    ),
                }
                daemon.assert_alive();
                assert_eq!(daemon.get("/metrics").0, 200, "after {what}");
            }
        },
    );
}

/// A 100 KiB header is below hyper's default 400 KiB read buffer, so the
/// daemon serves the request with 200 instead of refusing it.
#[test]
fn http_100k_header_is_refused() {
    in_netns("http_100k_header_is_refused", || {
        let mut daemon = Exporter::start(&["--web.read-header-timeout", "30s"]);
        let mut req = b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: ".to_vec();
        req.extend(std::iter::repeat_n(b'a', 100 * 1024));
        req.extend(b"\r\n\r\n");
        match raw_exchange(daemon.addr, &req, Duration::from_secs(5)) {
            Ending::Closed(got) => {
                let status = status_of(&got);
                assert!(
                    got.is_empty() || status.is_some_and(|c| (400..500).contains(&c)),
                    "a 100 KiB header should get a 4xx (431) or a closed connection, got {status:?}"
                );
            }
            Ending::Open(_) => panic!("connection left open after a 100 KiB header"),
        }
        daemon.assert_alive();
        assert_eq!(daemon.get("/metrics").0, 200);
    });
}

#[test]
fn http_routes_404_405_landing_and_healthz() {
    in_netns("http_routes_404_405_landing_and_healthz", || {
        let daemon = Exporter::start(&[]);
        assert_eq!(daemon.get("/nope").0, 404);
        assert_eq!(daemon.get("/metrics/extra").0, 404);
        assert_eq!(daemon.get("/metricsx").0, 404);

        let post = raw_exchange(
            daemon.addr,
            b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
            Duration::from_secs(5),
        );
        match post {
            Ending::Closed(got) => assert_eq!(status_of(&got), Some(405), "{}", text(&got)),
            Ending::Open(got) => panic!("POST left open: {}", text(&got)),
        }

        let (status, body) = daemon.get("/");
        assert_eq!(status, 200);
        assert!(body.contains("href=\"/metrics\""), "landing page: {body}");
        assert!(body.contains("href=\"/healthz\""), "landing page: {body}");

        let (status, body) = daemon.get("/healthz");
        assert_eq!(status, 200, "{body}");
        let lines: Vec<&str> = body.lines().collect();
        let registry = sockdiag_exporter::collect::REGISTRY;
        assert_eq!(
            lines.len(),
            registry.len() + 1,
            "one line per enabled collector, and netns: {body}"
        );
        for c in registry.iter().map(|r| r.name).chain(["netns"]) {
            assert!(
                lines.iter().any(|l| l.starts_with(&format!("{c}: ok"))),
                "healthz line for {c}: {body}"
            );
        }
    });
}

#[test]
fn http_custom_telemetry_path_and_healthz_follow_flags() {
    in_netns(
        "http_custom_telemetry_path_and_healthz_follow_flags",
        || {
            let daemon = Exporter::start(&[
                "--web.telemetry-path",
                "/custom",
                "--no-collector.connections",
            ]);
            let (status, body) = daemon.get("/custom");
            assert_eq!(status, 200);
            let m = Metrics::parse(&body);
            assert_eq!(m.find("sockdiag_build_info", &[]).len(), 1);
            assert_eq!(daemon.get("/metrics").0, 404, "the default path is gone");
            let (status, body) = daemon.get("/");
            assert_eq!(status, 200);
            assert!(body.contains("href=\"/custom\""), "landing page: {body}");
            assert!(!body.contains("href=\"/metrics\""), "landing page: {body}");

            let (status, body) = daemon.get("/healthz");
            assert_eq!(status, 200, "{body}");
            let lines: Vec<&str> = body.lines().collect();
            assert_eq!(
                lines.len(),
                sockdiag_exporter::collect::REGISTRY.len(),
                "every collector but connections, and netns: {body}"
            );
            assert!(
                lines.iter().any(|l| l.starts_with("listeners: ok")),
                "{body}"
            );
            assert!(lines.iter().any(|l| l.starts_with("netstat: ok")), "{body}");
            assert!(!body.contains("connections"), "{body}");
        },
    );
}

// ---------------------------------------------------------------------------
// 6. Graceful shutdown
// ---------------------------------------------------------------------------

fn shutdown_with_idle_keepalive(sig: i32) {
    let mut daemon = Exporter::start(&[
        "--web.shutdown-timeout",
        "1s",
        "--web.read-header-timeout",
        "30s",
    ]);
    let mut kept =
        TcpStream::connect_timeout(&daemon.addr, Duration::from_secs(2)).expect("connect");
    write!(
        kept,
        "GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n",
        daemon.addr
    )
    .unwrap();
    let (status, _) = read_one_response(&mut kept, Duration::from_secs(5));
    assert_eq!(status, 200);
    // The connection is now idle and kept alive by both sides.
    std::thread::sleep(Duration::from_millis(100));
    let signalled = Instant::now();
    daemon.signal(sig);
    let exit = daemon.wait_exit(Duration::from_secs(5));
    let took = signalled.elapsed();
    let exit = exit.unwrap_or_else(|| {
        panic!(
            "daemon still running {took:?} after signal {sig} with an idle keep-alive connection:\n{}",
            daemon.stderr_text()
        )
    });
    assert!(
        exit.success(),
        "exit after signal {sig}: {exit}\n{}",
        daemon.stderr_text()
    );
    assert!(
        matches!(
            read_until_closed(&mut kept, Duration::from_secs(1)),
            Ending::Closed(_)
        ),
        "the kept-alive connection is closed"
    );
}

#[test]
fn shutdown_on_sigterm_with_idle_keepalive_exits_zero() {
    in_netns("shutdown_on_sigterm_with_idle_keepalive_exits_zero", || {
        shutdown_with_idle_keepalive(libc::SIGTERM)
    });
}

#[test]
fn shutdown_on_sigint_with_idle_keepalive_exits_zero() {
    in_netns("shutdown_on_sigint_with_idle_keepalive_exits_zero", || {
        shutdown_with_idle_keepalive(libc::SIGINT)
    });
}

// ---------------------------------------------------------------------------
// 7. Netlink errors
// ---------------------------------------------------------------------------

#[test]
fn netlink_dump_works_and_kernel_error_reply_is_an_error() {
    use sockdiag_exporter::diag::{DiagSocket, DumpRequest, Family, Protocol, StateSet};
    use sockdiag_exporter::diag::{ParseError, inet::parse_datagram};

    in_netns(
        "netlink_dump_works_and_kernel_error_reply_is_an_error",
        || {
            let _l = listen("127.0.0.1:4444".parse().unwrap(), 9, false, None);
            let mut socket = DiagSocket::open().expect("opening NETLINK_SOCK_DIAG");
            let mut ports = Vec::new();
            let stats = socket
                .dump(
                    &DumpRequest {
                        protocol: Protocol::Tcp,
                        family: Some(Family::Ipv4),
                        states: StateSet::Listeners,
                        meminfo: true,
                        tcp_info: false,
                        filter: None,
                    },
                    |r| ports.push(r.local_port),
                )
                .expect("a normal listener dump");
            assert_eq!(ports, vec![4444], "{stats:?}");

            // NLMSG_ERROR carrying -EINVAL and the header of the refused request.
            let seq = 0x5eed_u32;
            let mut dgram = Vec::new();
            dgram.extend_from_slice(&36u32.to_ne_bytes());
            dgram.extend_from_slice(&2u16.to_ne_bytes());
            dgram.extend_from_slice(&0u16.to_ne_bytes());
            dgram.extend_from_slice(&seq.to_ne_bytes());
            dgram.extend_from_slice(&0u32.to_ne_bytes());
            dgram.extend_from_slice(&(-libc::EINVAL).to_ne_bytes());
            dgram.extend_from_slice(&96u32.to_ne_bytes());
            dgram.extend_from_slice(&20u16.to_ne_bytes());
            dgram.extend_from_slice(&0x301u16.to_ne_bytes());
            dgram.extend_from_slice(&seq.to_ne_bytes());
            dgram.extend_from_slice(&0u32.to_ne_bytes());
            assert_eq!(dgram.len(), 36);
            let mut records = 0;
            let err = parse_datagram(&dgram, seq, |_| records += 1)
                .expect_err("an NLMSG_ERROR reply must be an error");
            assert_eq!(err, ParseError::Kernel { errno: 22 });
            assert_eq!(records, 0);
            let shown = err.to_string();
            assert!(shown.contains("22"), "error names errno 22: {shown}");
            assert!(
                shown.to_lowercase().contains("invalid argument"),
                "error explains EINVAL: {shown}"
            );
        },
    );
}

/// `:PORT` means every address, IPv4 included, even where the host makes
/// IPv6 sockets v6-only by default (`net.ipv6.bindv6only=1`, per namespace).
#[test]
fn port_only_listen_address_serves_ipv4_and_ipv6_despite_bindv6only() {
    in_netns(
        "port_only_listen_address_serves_ipv4_and_ipv6_despite_bindv6only",
        || {
            std::fs::write("/proc/sys/net/ipv6/bindv6only", "1")
                .expect("setting bindv6only in our namespace");
            let port = free_port();
            let mut child = Command::new(exporter_bin())
                .args(["--web.listen-address", &format!(":{port}")])
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("starting the daemon");
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut answered = Vec::new();
            for addr in [
                SocketAddr::from(([127, 0, 0, 1], port)),
                SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)),
            ] {
                loop {
                    match http_get(addr, "/healthz") {
                        Ok((status, _)) => {
                            answered.push((addr, status));
                            break;
                        }
                        Err(e) if Instant::now() > deadline => panic!("{addr}: {e}"),
                        Err(_) => std::thread::sleep(Duration::from_millis(25)),
                    }
                }
            }
            let _ = child.kill();
            let _ = child.wait();
            assert_eq!(answered.len(), 2, "{answered:?}");
        },
    );
}
