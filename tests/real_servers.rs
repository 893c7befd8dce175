//! The user's story with real servers: nginx in front of an application
//! server on a unix socket (`listen.backlog = 8` for php-fpm, `--backlog 8`
//! for gunicorn). The application server stops taking connections, nginx
//! answers 502 to most requests, and the exporter must show the full queue,
//! its limit and who owns it, as `ss -xl` does, then the queue draining once
//! the server runs again.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::servers::*;
use common::*;

/// Requests sent at once while the backend is paused: far more than the
/// queue holds, so most must be refused.
const REQUESTS: usize = 40;

/// A unix accept queue is full at backlog + 1, as a TCP one.
const FULL_QUEUE: u64 = BACKLOG as u64 + 1;

const DAEMON_ARGS: &[&str] = &[
    "--path.run-netns",
    "/nonexistent",
    "--path.pod-logs",
    "/nonexistent",
];

#[test]
fn gunicorn_behind_nginx_on_a_unix_socket_shows_its_full_queue() {
    if !installed(&[GUNICORN, NGINX]) {
        return;
    }
    in_netns(
        "gunicorn_behind_nginx_on_a_unix_socket_shows_its_full_queue",
        || shows_its_full_queue("gunicorn", BackendKind::Gunicorn),
    );
}

#[test]
fn php_fpm_behind_nginx_on_a_unix_socket_shows_its_full_queue() {
    if !installed(&[PHP_FPM, NGINX]) {
        return;
    }
    in_netns(
        "php_fpm_behind_nginx_on_a_unix_socket_shows_its_full_queue",
        || shows_its_full_queue("php-fpm", BackendKind::PhpFpm),
    );
}

fn shows_its_full_queue(name: &str, kind: BackendKind) {
    let start = Instant::now();
    let at = || format!("[{:5.2}s]", start.elapsed().as_secs_f64());
    let dir = TempDir::new(name);
    let backend = match kind {
        BackendKind::Gunicorn => Backend::gunicorn(&dir),
        BackendKind::PhpFpm => Backend::php_fpm(&dir),
    };
    let Some(mut backend) = backend else { return };
    let Some(nginx) = Nginx::start(&dir, &backend) else {
        return;
    };
    let socket = backend.socket.clone();
    eprintln!(
        "{} {name} pids {:?} on {socket}, nginx pids {:?} on {}",
        at(),
        backend.server.pids(),
        nginx.server.pids(),
        nginx.addr
    );
    assert_eq!(
        ss_unix_listener(&socket),
        Some((0, u64::from(BACKLOG))),
        "ss -xl before the pause"
    );

    let daemon = Daemon::start(DAEMON_ARGS);
    let paused = backend.server.pause();
    eprintln!("{} {name} paused: {paused:?}", at());

    let statuses = burst(nginx.addr, REQUESTS);
    eprintln!("{} {REQUESTS} requests through nginx: {statuses:?}", at());
    let refused = statuses.get("502").copied().unwrap_or(0);
    let queued = REQUESTS - refused;
    assert_eq!(
        (refused, queued as u64),
        (REQUESTS - FULL_QUEUE as usize, FULL_QUEUE),
        "nginx must answer 502 to all but the {FULL_QUEUE} connections the queue holds: \
         {statuses:?}\nnginx log:\n{}",
        nginx.server.log_text()
    );
    let (ss_length, ss_limit) = ss_unix_listener(&socket).expect("ss -xl lists the socket");
    assert_eq!(
        (ss_length, ss_limit),
        (FULL_QUEUE, u64::from(BACKLOG)),
        "ss -xl Recv-Q/Send-Q of the paused backend"
    );
    eprintln!(
        "{} ss -xl: Recv-Q {ss_length} Send-Q {ss_limit}; now the exporter",
        at()
    );

    let l = [("netns", "host"), ("family", "unix"), ("address", &*socket)];
    let mut m = daemon.metrics();
    let polled = Instant::now();
    while m.find("sockdiag_accept_queue_length", &l).is_empty()
        || m.value_or_zero("sockdiag_accept_queue_full_seconds_total", &l) <= 0.0
    {
        assert!(
            polled.elapsed() < Duration::from_secs(3),
            "no full unix queue for {socket} on /metrics within 3 s:\n{}",
            unix_series(&m)
        );
        std::thread::sleep(Duration::from_millis(100));
        m = daemon.metrics();
    }
    assert_eq!(
        m.value("sockdiag_accept_queue_length", &l),
        ss_length as f64
    );
    assert_eq!(
        m.value("sockdiag_accept_queue_limit", &l),
        f64::from(BACKLOG)
    );
    let peak = m.value("sockdiag_accept_queue_peak_length", &l);
    assert!(peak >= FULL_QUEUE as f64, "peak {peak}");
    for absent in [
        "sockdiag_listen_drops_total",
        "sockdiag_syn_queue_length",
        "sockdiag_accept_queue_bytes",
        "sockdiag_accept_queue_oldest_seconds",
    ] {
        let found = m.find(absent, &[("address", &*socket)]);
        assert!(
            found.is_empty(),
            "{absent} is never exported for unix: {found:?}"
        );
    }
    for s in
        m.0.iter()
            .filter(|s| s.labels.get("address") == Some(&socket))
    {
        assert!(
            !s.labels.contains_key("port"),
            "unix series with a port: {s:?}"
        );
    }
    check_owner(&m, &l, kind, &backend, &paused);

    let table = snapshot();
    let row = table
        .lines()
        .find(|line| line.split_whitespace().any(|t| t == socket))
        .unwrap_or_else(|| panic!("snapshot has no row for {socket}:\n{table}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert!(
        cells.contains(&FULL_QUEUE.to_string().as_str())
            && cells.contains(&BACKLOG.to_string().as_str())
            && cells.contains(&"FULL"),
        "snapshot row must show {FULL_QUEUE}, {BACKLOG} and FULL: {row}"
    );
    eprintln!("{} exporter and snapshot agree with ss", at());

    backend.server.resume();
    wait_until(Duration::from_secs(10), "the queue to drain (ss)", || {
        ss_unix_listener(&socket) == Some((0, u64::from(BACKLOG)))
    });
    eprintln!("{} ss -xl: queue drained", at());
    wait_until(
        Duration::from_secs(5),
        "the queue to drain (/metrics)",
        || daemon.metrics().value("sockdiag_accept_queue_length", &l) == 0.0,
    );
    let (status, _) = http_get(nginx.addr, "/").expect("request after the resume");
    assert_eq!(status, 200, "the resumed backend answers through nginx");
    eprintln!("{} drained on /metrics, 200 through nginx", at());
}

/// Sends `n` requests to `addr` at once, each on its own connection with
/// bounded timeouts; counts answers by status code (`timeout`, `error` for
/// the others).
fn burst(addr: SocketAddr, n: usize) -> BTreeMap<String, usize> {
    let read_timeout = Duration::from_secs(u64::from(UPSTREAM_TIMEOUT_SECS) + 3);
    let threads: Vec<_> = (0..n)
        .map(|_| {
            std::thread::spawn(move || -> String {
                let attempt = || -> std::io::Result<String> {
                    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
                    s.set_read_timeout(Some(read_timeout))?;
                    write!(s, "GET / HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
                    let mut head = [0u8; 12];
                    s.read_exact(&mut head)?;
                    let text = String::from_utf8_lossy(&head).into_owned();
                    Ok(text.split_whitespace().nth(1).unwrap_or("?").to_string())
                };
                match attempt() {
                    Ok(code) => code,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => "timeout".into(),
                    Err(e) => format!("error: {e}"),
                }
            })
        })
        .collect();
    let mut counts = BTreeMap::new();
    for t in threads {
        let outcome = t.join().unwrap_or_else(|_| "panic".into());
        *counts.entry(outcome).or_insert(0) += 1;
    }
    counts
}

/// The listener's owner on /metrics is one of the processes the backend
/// started, named as the user sees it in `ps`.
fn check_owner(
    m: &Metrics,
    l: &[(&str, &str)],
    kind: BackendKind,
    backend: &Backend,
    paused: &[u32],
) {
    let info = m.find("sockdiag_listener_process_info", l);
    assert_eq!(info.len(), 1, "one owner for the socket: {info:?}");
    let labels = &info[0].labels;
    let pid: u32 = labels
        .get("pid")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no numeric pid label: {labels:?}"));
    assert!(
        paused.contains(&pid),
        "owner {pid} is not one of {paused:?}"
    );
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).expect("reading the owner's exe");
    assert_eq!(labels.get("exe").map(String::as_str), exe.to_str());
    // The exporter names the lowest pid holding the socket: usually the
    // master, the worker when pids wrapped between the two forks.
    let master = pid == backend.server.pid();
    // The titles both servers set for themselves (gunicorn through
    // python3-setproctitle); without it gunicorn's is `python3 gunicorn ...`.
    let (program, title) = match (kind, master) {
        (BackendKind::Gunicorn, true) => ("gunicorn", "gunicorn: master"),
        (BackendKind::Gunicorn, false) => ("gunicorn", "gunicorn: worker"),
        (BackendKind::PhpFpm, true) => ("php-fpm", "php-fpm: master process"),
        (BackendKind::PhpFpm, false) => ("php-fpm", "php-fpm: pool app"),
    };
    let real = cmdline(pid);
    let shown = labels.get("cmdline").map(String::as_str).unwrap_or("");
    // Bounded and with the title's NUL padding gone: a prefix of what the
    // process shows.
    assert!(
        !shown.trim_end().is_empty() && real.starts_with(shown.trim_end()),
        "cmdline label {shown:?} is not a prefix of the process's {real:?}"
    );
    assert!(
        shown.contains(program),
        "cmdline label {shown:?} does not name {program}"
    );
    if real.starts_with(title) {
        assert!(
            shown.starts_with(title),
            "cmdline label {shown:?} does not start with {title:?}"
        );
    }
}

/// Every unix series on a page, for failure messages.
fn unix_series(m: &Metrics) -> String {
    m.0.iter()
        .filter(|s| s.labels.get("family").map(String::as_str) == Some("unix"))
        .map(|s| format!("{} {:?} {}\n", s.name, s.labels, s.value))
        .collect()
}

/// `sockdiag-exporter snapshot` (the table) of this namespace.
fn snapshot() -> String {
    let out = Command::new(exporter_bin())
        .arg("snapshot")
        .args(DAEMON_ARGS)
        .output()
        .expect("running sockdiag-exporter snapshot");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "snapshot failed ({}): {}\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    text
}
