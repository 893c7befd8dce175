//! `sockdiag-exporter top` as a user meets it: the live view in a real
//! terminal (tmux, read with capture-pane), the plain `--once` text against
//! `ss -ltn`, and `--from` against a running daemon. Each test runs in its
//! own network namespace, with listeners that never accept.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// A tmux server of the test's own (its socket in a temp dir), with one
/// detached session of a given size running one command; killed when
/// dropped.
struct Tmux {
    socket: String,
    _dir: TempDir,
}

impl Tmux {
    fn start(cols: u16, rows: u16, command: &str) -> Tmux {
        let dir = TempDir::new("tmux");
        let socket = dir.file("sock");
        let t = Tmux { socket, _dir: dir };
        let status = t
            .cmd()
            .args(["new-session", "-d", "-s", "top"])
            .args(["-x", &cols.to_string(), "-y", &rows.to_string()])
            .arg(command)
            .status()
            .expect("running tmux (package tmux)");
        assert!(status.success(), "tmux new-session failed");
        t
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.args(["-S", &self.socket]).env_remove("TMUX");
        c
    }

    /// The pane's text now.
    fn capture(&self) -> String {
        let out = output_ok(
            self.cmd().args(["capture-pane", "-p", "-t", "top"]),
            "tmux capture-pane",
        );
        String::from_utf8_lossy(&out).into_owned()
    }

    /// A tmux format evaluated for the pane, e.g. `#{alternate_on}`;
    /// empty when tmux cannot say (its server gone).
    fn display(&self, format: &str) -> String {
        let out = self
            .cmd()
            .args(["display-message", "-p", "-t", "top", format])
            .output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    }

    /// Polls the pane every 50 ms until `ready` holds, for at most
    /// `timeout`; the pane then, and how long it took.
    fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        ready: impl Fn(&str) -> bool,
    ) -> (String, Duration) {
        let start = Instant::now();
        loop {
            let pane = self.capture();
            if ready(&pane) {
                return (pane, start.elapsed());
            }
            assert!(
                start.elapsed() < timeout,
                "timed out ({timeout:?}) waiting for {what}; the pane:\n{pane}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn keys(&self, keys: &[&str]) {
        let status = self
            .cmd()
            .args(["send-keys", "-t", "top"])
            .args(keys)
            .status()
            .expect("tmux send-keys");
        assert!(status.success(), "tmux send-keys {keys:?}");
    }

    /// The pid of the process the pane runs (the shell around `top`).
    fn pane_pid(&self) -> u32 {
        self.display("#{pane_pid}")
            .parse()
            .expect("a pid from #{pane_pid}")
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        // `top` first, by pid, so that a failed test leaves nothing running
        // whatever `top` makes of its terminal going away.
        if let Some(pid) = self.display("#{pane_pid}").parse().ok().and_then(child_of) {
            // SAFETY: a signal to a process this test started, by pid.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        let _ = self.cmd().arg("kill-server").status();
    }
}

/// The refresh clock in `top`'s header (`HH:MM:SS`, before `UTC`).
fn header_clock(pane: &str) -> Option<String> {
    let header = pane.lines().next()?;
    let words: Vec<&str> = header.split_whitespace().collect();
    let i = words.iter().position(|w| *w == "UTC")?;
    Some(words.get(i.checked_sub(1)?)?.to_string())
}

/// The shell command a pane runs: `top` with `args`, then a line saying
/// how it exited and whether the terminal's settings are as before, then
/// a pause so the pane stays to be read.
fn pane_command(args: &str) -> String {
    format!(
        "before=$(stty -g); {exe} top {args}; rc=$?; after=$(stty -g); \
         if [ \"$before\" = \"$after\" ]; then echo \"top exited $rc, terminal restored\"; \
         else echo \"top exited $rc, terminal NOT restored\"; fi; sleep 600",
        exe = exporter_bin()
    )
}

/// Flags that keep `top` to the test's namespaces (see [`netns_flags`]).
fn netns_args(run_netns: &TempDir) -> String {
    netns_flags(run_netns.as_str()).join(" ")
}

/// The table row (line) of the pane naming `endpoint`.
fn row_of<'a>(pane: &'a str, endpoint: &str) -> Option<&'a str> {
    pane.lines().find(|l| l.contains(endpoint))
}

/// The queue table's rows: the lines after its header, up to the first
/// blank line or the client table.
fn queue_rows(pane: &str) -> Vec<&str> {
    pane.lines()
        .skip_while(|l| !(l.contains("LISTEN") && l.contains("QUEUE")))
        .skip(1)
        .take_while(|l| !l.trim().is_empty() && !l.contains("clients"))
        .collect()
}

/// `count` clients connected (or connecting) to `addr`, held open.
fn clients(addr: SocketAddr, count: usize) -> Vec<socket2::Socket> {
    (0..count).map(|_| start_connect(addr)).collect()
}

/// Waits until the listener at `addr` shows `length` in `ss -ltn`.
fn wait_queue(addr: SocketAddr, length: u64) {
    let start = Instant::now();
    loop {
        let now = parse_ss(&ss(&["-ltn"]))
            .into_iter()
            .find(|s| s.local == addr)
            .map(|s| s.recv_q);
        if now == Some(length) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{addr} queue {now:?}, want {length}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn live_view_puts_the_full_queue_first_and_quits_cleanly() {
    in_netns(
        "live_view_puts_the_full_queue_first_and_quits_cleanly",
        || {
            // A listener that never accepts, backlog 8, with nine clients: the
            // queue holds limit + 1 and refuses the tenth; three more wait in
            // SYN-SENT.
            let full: SocketAddr = ([127, 0, 0, 1], 7501).into();
            let _full = listen(full, 8, false, None);
            let _waiting = clients(full, 9);
            wait_queue(full, 9);
            let _refused = clients(full, 3);
            // A quiet one, and a listener in another namespace.
            let quiet: SocketAddr = ([127, 0, 0, 1], 7502).into();
            let _quiet = listen(quiet, 128, false, None);
            let _one = clients(quiet, 1);
            let other = NetnsProcess::start(7503, 4, 2);
            let run_netns = TempDir::new("top-netns");

            // The size the issue asks to work in.
            let tmux = Tmux::start(80, 24, &pane_command(&netns_args(&run_netns)));
            // The first frame holds what the fast tier saw; owners and the
            // walk's figures follow at the next refresh.
            // At 80 columns the owner may be cut: its name's start is there,
            // the whole of it in the detail view below.
            let comm = std::fs::read_to_string("/proc/self/comm").expect("reading our comm");
            let comm: String = comm.trim().chars().take(6).collect();
            let (pane, took) = tmux.wait_for("the full queue", Duration::from_secs(15), |p| {
                row_of(p, "127.0.0.1:7501").is_some_and(|r| r.contains("FULL") && r.contains(&comm))
                    && p.contains(":7503")
            });
            eprintln!("first frame with the full queue after {took:?}:\n{pane}");
            let rows = queue_rows(&pane);
            assert!(
                rows.first()
                    .is_some_and(|r| r.contains("127.0.0.1:7501") && r.contains("FULL")),
                "the full listener is the first row, marked FULL:\n{pane}"
            );
            let first = rows[0];
            assert!(first.contains("9/8"), "queue/limit 9/8 in {first:?}");
            assert!(first.contains(&comm), "the owner (this test) in {first:?}");
            assert!(
                row_of(&pane, ":7503").is_some_and(|r| r.contains("ino:") && r.contains("2/4")),
                "the other namespace's listener, under its own netns label:\n{pane}"
            );
            let (pane, _) =
                tmux.wait_for("the clients in SYN-SENT", Duration::from_secs(10), |p| {
                    p.lines().any(|l| {
                        let f: Vec<&str> = l.split_whitespace().collect();
                        f.get(1) == Some(&"7501") && f.get(2) == Some(&"3")
                    })
                });
            assert!(pane.contains("SYN-SENT"), "the client panel:\n{pane}");

            // A listener started now appears within two refreshes: counted by
            // the header's clock, not timed, so a loaded machine cannot fail it.
            let before = header_clock(&tmux.capture()).expect("a clock in the header");
            let late: SocketAddr = ([127, 0, 0, 1], 7504).into();
            let _late = listen(late, 16, false, None);
            let clocks = std::cell::RefCell::new(std::collections::BTreeSet::from([before]));
            let (_, took) = tmux.wait_for("the new listener", Duration::from_secs(15), |p| {
                if let Some(c) = header_clock(p) {
                    clocks.borrow_mut().insert(c);
                }
                p.contains("127.0.0.1:7504")
            });
            let refreshes = clocks.borrow().len() - 1;
            eprintln!("a new listener appeared after {took:?}, {refreshes} refreshes");
            assert!(refreshes <= 2, "it took {refreshes} refreshes");

            // Keys: help, filter, detail, back, quit.
            tmux.keys(&["?"]);
            tmux.wait_for("the help", Duration::from_secs(5), |p| p.contains("Enter"));
            tmux.keys(&["x"]);
            tmux.keys(&["/", "7502", "Enter"]);
            // tmux may show a frame half drawn: wait for the whole of it.
            tmux.wait_for("only the filtered listener", Duration::from_secs(5), |p| {
                let rows = queue_rows(p);
                p.contains("matching \"7502\"")
                    && rows.len() == 1
                    && rows[0].contains("127.0.0.1:7502")
            });
            tmux.keys(&["Escape"]);
            tmux.wait_for("the filter cleared", Duration::from_secs(5), |p| {
                p.contains("127.0.0.1:7501")
            });
            tmux.keys(&["Enter"]);
            tmux.wait_for("its waiting connections", Duration::from_secs(5), |p| {
                p.contains("waiting connections: 9")
            });
            let pid = format!("/{}", std::process::id());
            tmux.wait_for(
                "the full listener's detail, with its owner's pid",
                Duration::from_secs(5),
                |p| {
                    p.contains("listening on")
                        && p.contains("127.0.0.1:7501")
                        && p.contains("9/8")
                        && p.contains(&pid)
                },
            );
            tmux.keys(&["Escape"]);
            tmux.wait_for("the list again", Duration::from_secs(5), |p| {
                p.contains("OWNER")
            });
            tmux.keys(&["q"]);
            let (pane, _) = tmux.wait_for("top to quit", Duration::from_secs(5), |p| {
                p.contains("top exited")
            });
            assert!(
                pane.contains("top exited 0, terminal restored"),
                "quit with the terminal as before:\n{pane}"
            );
            assert_eq!(
                tmux.display("#{alternate_on}"),
                "0",
                "left the alternate screen"
            );
            assert_eq!(tmux.display("#{cursor_flag}"), "1", "the cursor is shown");
            other.kill();
        },
    );
}

/// The pid of `parent`'s child running `top`.
fn child_of(parent: u32) -> Option<u32> {
    let children =
        std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children")).ok()?;
    children
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .find(|pid: &u32| {
            std::fs::read_to_string(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.contains("top"))
        })
}

#[test]
fn sigterm_restores_the_terminal_and_a_wide_terminal_shows_the_last_minute() {
    in_netns(
        "sigterm_restores_the_terminal_and_a_wide_terminal_shows_the_last_minute",
        || {
            let addr: SocketAddr = ([127, 0, 0, 1], 7511).into();
            let _l = listen(addr, 4, false, None);
            let _c = clients(addr, 2);
            let tmux = Tmux::start(200, 40, &pane_command("--no-collector.netns"));
            let (pane, _) = tmux.wait_for("the wide view", Duration::from_secs(15), |p| {
                p.contains("127.0.0.1:7511")
            });
            assert!(
                pane.contains("LAST MINUTE") && pane.contains("KIND") && pane.contains("BYTES"),
                "a wide terminal has every column:\n{pane}"
            );
            // 2/4: a half-filled bar, and a sparkline at half height (the
            // bar never draws ▅).
            let (pane, _) = tmux.wait_for("the sparkline", Duration::from_secs(15), |p| {
                row_of(p, "127.0.0.1:7511").is_some_and(|r| r.contains('▅'))
            });
            let row = row_of(&pane, "127.0.0.1:7511").unwrap_or_default();
            assert!(row.contains("█████░░░░░"), "a half-filled bar in {row:?}");

            let top = child_of(tmux.pane_pid()).expect("top's pid under the pane's shell");
            // SAFETY: a signal to a process this test started, by pid.
            unsafe { libc::kill(top as i32, libc::SIGTERM) };
            let (pane, _) = tmux.wait_for("top to end", Duration::from_secs(5), |p| {
                p.contains("top exited")
            });
            assert!(
                pane.contains("terminal restored"),
                "SIGTERM leaves the terminal as it was:\n{pane}"
            );
            assert_eq!(tmux.display("#{alternate_on}"), "0");
            assert_eq!(tmux.display("#{cursor_flag}"), "1");
            drop(tmux);

            // The window closed under it (an ssh session dropped): `top`
            // leaves instead of spinning on a dead terminal.
            let tmux = Tmux::start(80, 24, &pane_command("--no-collector.netns"));
            tmux.wait_for("the view", Duration::from_secs(15), |p| {
                p.contains("127.0.0.1:7511")
            });
            let top = child_of(tmux.pane_pid()).expect("top's pid under the pane's shell");
            let _ = tmux.cmd().arg("kill-server").status();
            let start = Instant::now();
            while std::path::Path::new(&format!("/proc/{top}")).exists()
                && std::fs::read_to_string(format!("/proc/{top}/stat"))
                    .is_ok_and(|s| !s.contains(") Z "))
            {
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "top still runs 10 s after its terminal went away"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        },
    );
}

/// `top --once` (or `--iterations`) with `args`, which must exit 0: its
/// output.
fn top_plain(args: &[&str]) -> String {
    let out = output_ok(
        Command::new(exporter_bin()).arg("top").args(args),
        &format!("sockdiag-exporter top {args:?}"),
    );
    String::from_utf8(out).expect("UTF-8 output")
}

/// The cells of each row of the last queue table in `text`, by column
/// title: cells are cut at the header's column starts (a cell may hold a
/// space, as in `110% FULL`).
fn table(text: &str) -> Vec<std::collections::BTreeMap<String, String>> {
    let last_frame = text
        .rsplit("sockdiag-exporter top:")
        .next()
        .unwrap_or_default();
    let mut lines = last_frame
        .lines()
        .skip_while(|l| !l.starts_with("NETNS  KIND"));
    let Some(header) = lines.next() else {
        return Vec::new();
    };
    // Titles are single words: each starts where a space ends.
    let mut titles: Vec<(usize, &str)> = Vec::new();
    let mut after_space = true;
    for (i, ch) in header.char_indices() {
        if ch != ' ' && after_space {
            let word = header[i..].split(' ').next().unwrap_or_default();
            titles.push((i, word));
        }
        after_space = ch == ' ';
    }
    lines
        .take_while(|l| !l.trim().is_empty())
        .map(|l| {
            titles
                .iter()
                .enumerate()
                .map(|(i, (start, title))| {
                    let end = titles.get(i + 1).map_or(l.len(), |(s, _)| *s).min(l.len());
                    let cell = l.get((*start).min(l.len())..end).unwrap_or("").trim();
                    (title.to_string(), cell.to_string())
                })
                .collect()
        })
        .collect()
}

#[test]
fn once_agrees_with_ss() {
    in_netns("once_agrees_with_ss", || {
        let full: SocketAddr = ([127, 0, 0, 1], 7521).into();
        let _full = listen(full, 3, false, None);
        let _c = clients(full, 4);
        wait_queue(full, 4);
        let v6: SocketAddr = "[::1]:7522".parse().expect("address");
        let _v6 = listen(v6, 10, false, Some(true));
        let _c6 = clients(v6, 5);
        wait_queue(v6, 5);
        let _idle = listen(([0, 0, 0, 0], 7523).into(), 511, false, None);
        // A unix listener, backlog 2, with three clients: full as well.
        let dir = TempDir::new("top-unix");
        let path = dir.file("app.sock");
        let unix = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)
            .expect("unix socket");
        unix.bind(&socket2::SockAddr::unix(&path).expect("unix address"))
            .expect("binding the unix socket");
        unix.listen(2).expect("listen");
        let _unix_clients: Vec<_> = (0..3)
            .map(|_| std::os::unix::net::UnixStream::connect(&path).expect("unix connect"))
            .collect();

        let text = top_plain(&["--once", "--no-collector.netns"]);
        eprintln!("{text}");
        let rows = table(&text);
        let tcp: Vec<_> = rows.iter().filter(|r| r["KIND"] == "tcp").collect();
        let ss_rows = parse_ss(&ss(&["-ltn"]));
        assert_eq!(tcp.len(), ss_rows.len(), "one row per listener of ss -ltn");
        for s in &ss_rows {
            let row = tcp
                .iter()
                .find(|r| r["LISTEN"] == s.local.to_string())
                .unwrap_or_else(|| panic!("{} of ss -ltn in:\n{text}", s.local));
            assert_eq!(
                row["QUEUE"],
                format!("{}/{}", s.recv_q, s.send_q),
                "Recv-Q/Send-Q of {}",
                s.local
            );
            assert_eq!(
                row["FILL"].ends_with("FULL"),
                s.recv_q > s.send_q,
                "FULL exactly when ss shows the queue above its backlog: {row:?}"
            );
        }
        let unix_row = rows
            .iter()
            .find(|r| r["KIND"] == "unix" && r["LISTEN"] == path)
            .unwrap_or_else(|| panic!("the unix listener in:\n{text}"));
        let ss_unix = ss(&["-xlH"]);
        let fields: Vec<&str> = ss_unix
            .iter()
            .find(|l| l.contains(&path))
            .map(|l| l.split_whitespace().collect())
            .unwrap_or_default();
        assert_eq!(
            unix_row["QUEUE"],
            format!(
                "{}/{}",
                fields.get(2).unwrap_or(&"?"),
                fields.get(3).unwrap_or(&"?")
            ),
            "Recv-Q/Send-Q of ss -xl: {fields:?}"
        );
        assert_eq!(unix_row["FILL"], "150% FULL");
        assert_eq!(tcp[0]["LISTEN"], "127.0.0.1:7521", "the full TCP one first");
        assert_eq!(tcp[0]["FILL"], "133% FULL");
        assert_eq!(tcp[0]["DROP/s"], "-", "one frame has no rate");
    });
}

#[test]
fn top_from_a_daemon_shows_what_top_shows_here() {
    in_netns("top_from_a_daemon_shows_what_top_shows_here", || {
        let full: SocketAddr = ([127, 0, 0, 1], 7531).into();
        let _full = listen(full, 2, false, None);
        let _c = clients(full, 3);
        wait_queue(full, 3);
        // Clients beyond a full queue retransmit SYNs the listener drops.
        let _refused = clients(full, 4);
        let daemon = Daemon::start(&["--no-collector.netns"]);
        let url = format!("http://{}", daemon.addr);

        let text = top_plain(&["--from", &url, "--iterations", "4", "--interval", "1s"]);
        eprintln!("{text}");
        let remote = table(&text);
        let row = remote
            .iter()
            .find(|r| r["LISTEN"] == "127.0.0.1:7531")
            .expect("the full listener");
        assert_eq!(
            (row["QUEUE"].as_str(), row["FILL"].as_str()),
            ("3/2", "150% FULL")
        );
        // The refused clients retransmit their SYNs 1 s and 3 s after
        // connecting: some frame of the four sees drops.
        let rates: Vec<f64> = text
            .split("sockdiag-exporter top:")
            .flat_map(|frame| table(&format!("sockdiag-exporter top:{frame}")))
            .filter(|r| r["LISTEN"] == "127.0.0.1:7531")
            .filter_map(|r| r["DROP/s"].parse().ok())
            .collect();
        assert!(
            rates.iter().any(|r| *r > 0.0),
            "a positive drop rate in some frame: {rates:?}"
        );
        assert!(
            text.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.get(1) == Some(&"7531") && f.get(2) == Some(&"4")
            }),
            "the four clients in SYN-SENT"
        );

        let local = table(&top_plain(&["--once", "--no-collector.netns"]));
        let listeners = |rows: &[std::collections::BTreeMap<String, String>]| {
            let mut v: Vec<(String, String)> = rows
                .iter()
                .filter(|r| r["KIND"] == "tcp")
                .map(|r| (r["LISTEN"].clone(), r["QUEUE"].clone()))
                .collect();
            v.sort();
            v
        };
        assert_eq!(
            listeners(&remote),
            listeners(&local),
            "the same queues either way"
        );
    });
}

#[test]
fn bad_sources_are_clear_errors() {
    in_netns("bad_sources_are_clear_errors", || {
        for (args, says) in [
            (
                &[
                    "--from",
                    "https://127.0.0.1:1",
                    "--from.ca-file",
                    "/nonexistent/ca.pem",
                ][..],
                "/nonexistent/ca.pem",
            ),
            (&["--from.ca-file", "/etc/hostname"][..], "--from"),
            (&["--from", "ftp://node"][..], "ftp"),
            (&["--from", "http://127.0.0.1:1"][..], "127.0.0.1:1"),
            (&["--interval", "10ms"][..], "too short"),
        ] {
            let out = Command::new(exporter_bin())
                .args(["top", "--once"])
                .args(args)
                .output()
                .expect("running top");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "top {args:?} failed");
            assert!(err.contains(says), "top {args:?} says {says:?}: {err}");
            assert!(!err.contains("panicked"), "{err}");
        }
    });
}

#[test]
fn the_waiting_connections_are_those_ss_shows() {
    in_netns("the_waiting_connections_are_those_ss_shows", || {
        use sockdiag_exporter::top::frame::{Frame, Kind, Queue, QueueKey};
        // The same port on a specific address and on the wildcard: each
        // connection belongs to the listener the kernel gave it to.
        let specific: SocketAddr = ([127, 0, 0, 1], 7541).into();
        // SO_REUSEPORT lets both bind; their addresses differ, so they are
        // no reuseport group.
        let _s = listen(specific, 16, true, None);
        let wildcard: SocketAddr = ([0, 0, 0, 0], 7541).into();
        let _w = listen(wildcard, 16, true, None);
        // Loopback answers all of 127.0.0.0/8.
        let other: SocketAddr = ([127, 0, 0, 2], 7541).into();
        let mut held = Vec::new();
        for i in 0..5 {
            let c = start_connect(specific);
            assert!(wait_connected(&c, Duration::from_secs(5)));
            c.send(&vec![b'x'; i + 1]).expect("sending");
            held.push(c);
        }
        let _to_wildcard = clients(other, 2);
        wait_queue(specific, 5);
        wait_queue(wildcard, 2);
        std::thread::sleep(Duration::from_millis(100));

        let key = |address: &str| QueueKey {
            kind: Kind::Tcp,
            netns: "host".into(),
            family: "ipv4".into(),
            address: address.into(),
            port: "7541".into(),
            member: String::new(),
        };
        let mut frame = Frame::default();
        frame.queues.insert(key("127.0.0.1"), Queue::default());
        frame.queues.insert(key("0.0.0.0"), Queue::default());
        let info = sockdiag_exporter::netns::own(std::path::Path::new("/proc"));
        let list = sockdiag_exporter::top::waiting::list(&info, &key("127.0.0.1"), &frame)
            .expect("listing the waiting connections");
        let mut ours: Vec<(u16, u32)> = list
            .listed
            .iter()
            .map(|w| (w.peer.port(), w.bytes))
            .collect();
        ours.sort();
        let mut theirs: Vec<(u16, u32)> = parse_ss(&ss(&["-tn"]))
            .into_iter()
            .filter(|s| s.state == "ESTAB" && s.local == specific)
            .filter_map(|s| Some((s.peer_port()?, s.recv_q as u32)))
            .collect();
        theirs.sort();
        assert_eq!(list.total, 5);
        assert_eq!(ours, theirs, "(client port, bytes) as ss -tn shows them");
        assert!(list.listed.iter().all(|w| w.waited_ms.is_some()));
        let wild = sockdiag_exporter::top::waiting::list(&info, &key("0.0.0.0"), &frame)
            .expect("listing the wildcard's");
        assert_eq!(wild.total, 2, "the wildcard's own two");
    });
}
