//! Slow and idle clients cannot lock scrapers out: at `--web.max-connections`
//! a newcomer takes the place of a connection that is not serving a request,
//! and is refused only when every connection is busy.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;

/// `GET /metrics` on a new connection, all of it within `limit`: the
/// status, or why it failed.
fn scrape_within(addr: SocketAddr, limit: Duration) -> Result<u16, String> {
    let start = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr, limit).map_err(|e| format!("connect: {e}"))?;
    let left = || {
        limit
            .checked_sub(start.elapsed())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| "out of time".to_string())
    };
    s.set_read_timeout(Some(left()?))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(left()?))
        .map_err(|e| e.to_string())?;
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| format!("send: {e}"))?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        s.set_read_timeout(Some(left()?))
            .map_err(|e| e.to_string())?;
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) => return Err(format!("read after {:?}: {e}", start.elapsed())),
        }
    }
    let text = String::from_utf8_lossy(&raw);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status in {} bytes", raw.len()))
}

/// Clients that each send one byte of a request head every `every`,
/// reconnecting (at most once per `tick`) when the server drops them, until
/// stopped. Spread over a few threads; every socket is closed when they end.
struct SlowClients {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    connects: Arc<AtomicU64>,
}

impl SlowClients {
    fn start(addr: SocketAddr, clients: usize, every: Duration, deadline: Duration) -> Self {
        const THREADS: usize = 10;
        const TICK: Duration = Duration::from_millis(100);
        // A head that never ends: a request line, then one header growing
        // a byte at a time.
        const HEAD: &[u8] = b"GET /metrics HTTP/1.1\r\nX-Slow: ";
        let stop = Arc::new(AtomicBool::new(false));
        let connects = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let threads = (0..THREADS)
            .map(|t| {
                let (stop, connects) = (stop.clone(), connects.clone());
                let mine = clients / THREADS + usize::from(t < clients % THREADS);
                std::thread::spawn(move || {
                    // (socket, bytes sent, when the last was sent)
                    let mut socks: Vec<Option<(TcpStream, usize, Instant)>> =
                        (0..mine).map(|_| None).collect();
                    while !stop.load(Ordering::Relaxed) && started.elapsed() < deadline {
                        for slot in socks.iter_mut() {
                            if let Some((s, _, _)) = slot {
                                let mut byte = [0u8; 1];
                                match s.read(&mut byte) {
                                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                                    // Closed (or answered): drop and reconnect.
                                    _ => *slot = None,
                                }
                            }
                            if slot.is_none() {
                                let Ok(s) =
                                    TcpStream::connect_timeout(&addr, Duration::from_millis(500))
                                else {
                                    continue;
                                };
                                connects.fetch_add(1, Ordering::Relaxed);
                                if s.set_nonblocking(true).is_err() {
                                    continue;
                                }
                                // The first byte at once, as a client does.
                                *slot = Some((s, 0, Instant::now() - every));
                            }
                            if let Some((s, sent, last)) = slot {
                                if last.elapsed() >= every {
                                    let b = HEAD.get(*sent).copied().unwrap_or(b'z');
                                    match s.write(&[b]) {
                                        Ok(1) => {
                                            *sent += 1;
                                            *last = Instant::now();
                                        }
                                        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                                        _ => *slot = None,
                                    }
                                }
                            }
                        }
                        std::thread::sleep(TICK);
                    }
                })
            })
            .collect();
        SlowClients {
            stop,
            threads,
            connects,
        }
    }

    /// Stops every client and closes its socket; the connections made.
    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().expect("slow client thread");
        }
        self.connects.load(Ordering::Relaxed)
    }
}

fn evicted(m: &Metrics, reason: &str) -> f64 {
    m.value(
        "sockdiag_http_connections_evicted_total",
        &[("reason", reason)],
    )
}

#[test]
fn scrapes_get_through_300_slow_clients() {
    in_netns("scrapes_get_through_300_slow_clients", || {
        let daemon = Daemon::start(&["--no-collector.netns"]);
        let load = SlowClients::start(
            daemon.addr,
            300,
            Duration::from_secs(5),
            Duration::from_secs(60),
        );
        // Let the slow clients take every slot first.
        std::thread::sleep(Duration::from_secs(2));
        let (mut ok, mut failures, mut slowest) = (0, Vec::new(), Duration::ZERO);
        const SCRAPES: usize = 40;
        for i in 0..SCRAPES {
            let start = Instant::now();
            match scrape_within(daemon.addr, Duration::from_secs(5)) {
                Ok(200) => {
                    ok += 1;
                    slowest = slowest.max(start.elapsed());
                }
                other => failures.push((i, other)),
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        let m = daemon.metrics();
        let connects = load.stop();
        let ratio = ok as f64 / SCRAPES as f64;
        eprintln!(
            "{ok} of {SCRAPES} scrapes succeeded ({:.0}%), slowest {slowest:?}; \
             slow clients connected {connects} times; evicted slow {} idle {}, refused {}, open {}; \
             failures: {failures:?}",
            ratio * 100.0,
            evicted(&m, "slow"),
            evicted(&m, "idle"),
            m.value("sockdiag_http_connections_refused_total", &[]),
            m.value("sockdiag_http_connections_open", &[]),
        );
        assert!(ratio >= 0.9, "only {ok} of {SCRAPES} scrapes got through");
        assert!(evicted(&m, "slow") > 0.0, "slow clients were evicted");
        assert!(
            m.value("sockdiag_http_connections_open", &[]) <= 64.0,
            "the cap holds"
        );
    });
}

/// Raises this process's soft limit on open files to at least `want`
/// (within the hard limit).
fn allow_open_files(want: u64) {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) }, 0);
    if l.rlim_cur < want {
        assert!(
            l.rlim_max >= want,
            "hard RLIMIT_NOFILE {} < {want}",
            l.rlim_max
        );
        l.rlim_cur = want;
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &l) }, 0);
    }
}

#[test]
fn a_fresh_client_is_served_at_once_beside_2000_idle_connections() {
    in_netns(
        "a_fresh_client_is_served_at_once_beside_2000_idle_connections",
        || {
            allow_open_files(2_500);
            let daemon = Daemon::start(&["--no-collector.netns"]);
            let started = Instant::now();
            let mut idle: Vec<TcpStream> = Vec::new();
            for i in 0..2_000 {
                if let Ok(s) = TcpStream::connect_timeout(&daemon.addr, Duration::from_secs(2)) {
                    idle.push(s);
                }
                // Paced so that the daemon's accept queue (128) does not
                // overflow: dropped SYNs would only measure the client's
                // retransmission back-off.
                if i % 50 == 49 {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            let opened = started.elapsed();
            // Before --web.read-header-timeout (3 s) could free any slot.
            let start = Instant::now();
            let got = scrape_within(daemon.addr, Duration::from_secs(5));
            let took = start.elapsed();
            let m = daemon.metrics();
            eprintln!(
                "{} idle connections opened in {opened:?}; a fresh scrape: {got:?} in {took:?}; \
                 evicted slow {} idle {}, refused {}",
                idle.len(),
                evicted(&m, "slow"),
                evicted(&m, "idle"),
                m.value("sockdiag_http_connections_refused_total", &[]),
            );
            assert!(idle.len() >= 1_900, "only {} connected", idle.len());
            assert_eq!(got, Ok(200));
            assert!(took < Duration::from_secs(2), "the scrape took {took:?}");
            assert!(
                evicted(&m, "slow") >= 1_000.0,
                "idle newcomers pushed out the older ones"
            );
            drop(idle);
        },
    );
}

/// A connection busy with a response its client does not read: thousands
/// of pipelined scrapes (over 100 MB of answers), never read, so the
/// server soon blocks writing one of them.
fn busy_connection(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
    s.set_write_timeout(Some(Duration::from_millis(500)))
        .expect("write timeout");
    let requests = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".repeat(8_000);
    // The server stops reading once it cannot write: a short write is fine.
    let _ = s.write_all(requests.as_bytes());
    s
}

#[test]
fn a_newcomer_is_refused_only_when_every_connection_is_busy() {
    in_netns(
        "a_newcomer_is_refused_only_when_every_connection_is_busy",
        || {
            let daemon = Daemon::start(&["--no-collector.netns", "--web.max-connections", "2"]);
            // An idle keep-alive connection, then a slow one: the slow one
            // goes first, then the idle one.
            let mut kept =
                TcpStream::connect_timeout(&daemon.addr, Duration::from_secs(2)).expect("connect");
            write!(kept, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").expect("send");
            kept.set_read_timeout(Some(Duration::from_secs(2)))
                .expect("read timeout");
            let mut buf = [0u8; 4096];
            assert!(kept.read(&mut buf).expect("an answer") > 0);
            let _slow =
                TcpStream::connect_timeout(&daemon.addr, Duration::from_secs(2)).expect("connect");
            std::thread::sleep(Duration::from_millis(200));
            let busy: Vec<TcpStream> = (0..2).map(|_| busy_connection(daemon.addr)).collect();
            std::thread::sleep(Duration::from_millis(500));
            // Both slots serve a request now: a newcomer is closed unanswered.
            let refused = scrape_within(daemon.addr, Duration::from_secs(2));
            assert!(
                refused.is_err(),
                "a newcomer beside two busy connections: {refused:?}"
            );
            drop(busy);
            let deadline = Instant::now() + Duration::from_secs(5);
            let m = loop {
                if let Ok((200, body)) = http_get(daemon.addr, "/metrics") {
                    break Metrics::parse(&body);
                }
                assert!(
                    Instant::now() < deadline,
                    "no scrape after the busy ones closed"
                );
                std::thread::sleep(Duration::from_millis(50));
            };
            eprintln!(
                "evicted slow {} idle {}, refused {}",
                evicted(&m, "slow"),
                evicted(&m, "idle"),
                m.value("sockdiag_http_connections_refused_total", &[])
            );
            assert!(evicted(&m, "slow") >= 1.0, "the slow one went first");
            assert!(evicted(&m, "idle") >= 1.0, "then the idle one");
            assert!(m.value("sockdiag_http_connections_refused_total", &[]) >= 1.0);
        },
    );
}

#[test]
fn a_client_that_never_reads_gives_way_after_the_request_timeout() {
    in_netns(
        "a_client_that_never_reads_gives_way_after_the_request_timeout",
        || {
            let daemon = Daemon::start(&[
                "--no-collector.netns",
                "--web.max-connections",
                "2",
                "--web.request-timeout",
                "1s",
            ]);
            let busy: Vec<TcpStream> = (0..2).map(|_| busy_connection(daemon.addr)).collect();
            std::thread::sleep(Duration::from_millis(300));
            assert!(
                scrape_within(daemon.addr, Duration::from_secs(2)).is_err(),
                "both slots are writing answers: a newcomer is refused"
            );
            // No render takes longer than --web.request-timeout: past it,
            // only the client's not reading holds the slot.
            std::thread::sleep(Duration::from_millis(1200));
            let got = scrape_within(daemon.addr, Duration::from_secs(5));
            assert_eq!(got, Ok(200), "a scrape beside two stalled connections");
            let (_, body) = http_get(daemon.addr, "/metrics").expect("scrape");
            let m = Metrics::parse(&body);
            assert!(evicted(&m, "stalled") >= 1.0, "{body}");
            drop(busy);
        },
    );
}

/// `GET /metrics` from `source`, the head sent in two halves `pause`
/// apart, as a client far away or in a TLS handshake takes a while to
/// send its request: the status, or why it failed.
fn slow_scrape_from(
    source: std::net::IpAddr,
    addr: SocketAddr,
    pause: Duration,
) -> Result<u16, String> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).map_err(|e| e.to_string())?;
    s.bind(&SocketAddr::new(source, 0).into())
        .map_err(|e| format!("bind: {e}"))?;
    s.connect_timeout(&addr.into(), Duration::from_secs(2))
        .map_err(|e| format!("connect: {e}"))?;
    let mut s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET /metrics HTTP/1.0\r\n")
        .map_err(|e| format!("send: {e}"))?;
    std::thread::sleep(pause);
    s.write_all(format!("Host: {addr}\r\n\r\n").as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&raw);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status in {} bytes", raw.len()))
}

#[test]
fn a_flood_from_one_address_gives_way_to_a_slow_scraper_from_another() {
    in_netns(
        "a_flood_from_one_address_gives_way_to_a_slow_scraper_from_another",
        || {
            let daemon = Daemon::start(&["--no-collector.netns"]);
            let load = SlowClients::start(
                daemon.addr,
                300,
                Duration::from_secs(5),
                Duration::from_secs(60),
            );
            std::thread::sleep(Duration::from_secs(2));
            // 300 ms between the halves of its head: at about 2,000
            // reconnects a second from the flood, the oldest-first rule
            // alone would close it before its head was complete.
            let scraper: std::net::IpAddr = [127, 0, 0, 2].into();
            const SCRAPES: usize = 10;
            let results: Vec<Result<u16, String>> = (0..SCRAPES)
                .map(|_| slow_scrape_from(scraper, daemon.addr, Duration::from_millis(300)))
                .collect();
            let m = daemon.metrics();
            let connects = load.stop();
            let ok = results.iter().filter(|r| **r == Ok(200)).count();
            eprintln!(
                "{ok} of {SCRAPES} slow scrapes from another address succeeded; \
                 the flood connected {connects} times, evicted slow {}: {results:?}",
                evicted(&m, "slow")
            );
            assert!(ok >= 9, "{ok} of {SCRAPES}: {results:?}");
            assert!(evicted(&m, "slow") > 100.0, "the flood churned");
        },
    );
}
