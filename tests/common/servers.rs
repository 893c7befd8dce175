//! Real servers for tests: gunicorn and php-fpm on a unix socket, nginx in
//! front of them on loopback, started the way a user would, inside the
//! test's namespaces and with every file they write (config, pid, logs,
//! sockets, temp files) in one per-test directory.
//!
//! Inside the test's user namespace the test runs as root, mapped to the
//! real uid (root or an ordinary user outside). What that means per server:
//! - gunicorn runs as is: without `--user` it switches nothing.
//! - php-fpm refuses to run as root without `-R` and a pool `user`; with
//!   `user = root` its uid and gid are 0, so it never calls `setuid`,
//!   `setgid` or `initgroups` (the last would fail: the test's namespace
//!   denies `setgroups`).
//! - nginx run as root always switches its workers to a user: `nobody` by
//!   default, unmapped here, so `chown` of its temp dirs fails with EINVAL
//!   and it does not start; with `user root` every worker logs
//!   `[emerg] initgroups(root, 0) failed (1: Operation not permitted)`.
//!   So it runs as uid 1000 in a user namespace nested in the test's, mapped
//!   to the test's uid: a non-root nginx switches nothing, and it reaches
//!   the backend's socket as its owner, being the same kernel uid.
//!
//! Each server knows the processes it started (its master and the master's
//! children, found in /proc), can pause and resume all of them, and kills
//! them by pid when dropped.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::TempDir;

/// With this set (CI should set it), a missing server binary fails the test instead
/// of skipping it.
const REQUIRE_SERVERS: &str = "SOCKDIAG_TEST_REQUIRE_SERVERS";

/// How long a server may take to become ready: a cold Python import on a
/// busy 2-core machine takes a few seconds.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// The listen backlog every backend asks for.
pub const BACKLOG: u32 = 8;

/// A server program and the Debian package that installs it.
#[derive(Debug, Clone, Copy)]
pub struct Program {
    pub bin: &'static str,
    pub package: &'static str,
}

pub const GUNICORN: Program = Program {
    bin: "gunicorn",
    package: "gunicorn",
};
pub const PHP_FPM: Program = Program {
    bin: "php-fpm8.2",
    package: "php8.2-fpm",
};
pub const NGINX: Program = Program {
    bin: "nginx",
    package: "nginx-light",
};

/// Whether every program is installed; for each one missing, a loud
/// message naming its package, or a panic when [`REQUIRE_SERVERS`] is set.
/// Call it in the test itself, before `in_netns`: the message is written
/// past the test harness's output capture, so a skipped test shows even
/// when it passes (output from inside the namespace is shown only on
/// failure).
pub fn installed(programs: &[Program]) -> bool {
    let mut all = true;
    for &p in programs {
        all &= program(p).is_some();
    }
    all
}

/// Finds a program on PATH or in the sbin directories (an ordinary user's
/// PATH often lacks them, and nginx and php-fpm live there).
fn program(p: Program) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .filter(|d| !d.is_empty())
        .chain(["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin"])
        .map(|d| Path::new(d).join(p.bin))
        .find(|p| is_executable(p));
    if found.is_none() {
        let msg = format!(
            "`{}` not found: install the Debian package `{}` to run this test",
            p.bin, p.package
        );
        assert!(std::env::var_os(REQUIRE_SERVERS).is_none(), "{msg}");
        // Not eprintln!, which the test harness captures.
        let _ =
            std::io::stderr().write_all(format!("\n!!!!!!!! SKIPPED: {msg} !!!!!!!!\n").as_bytes());
    }
    found
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Processes started by a test: a master and whatever it forks.
pub struct Server {
    pub name: &'static str,
    child: Child,
    /// Where the server logs, shown when it fails.
    pub log: PathBuf,
}

impl Server {
    fn spawn(name: &'static str, mut cmd: Command, log: PathBuf) -> Server {
        // Workers orphaned when their master dies come to this process,
        // which reaps them on drop, rather than to the machine's init.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Server { name, child, log }
    }

    /// The master's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The master's descendants now (workers), from the parent pids in
    /// /proc/*/stat, which every kernel has (`task/*/children` needs
    /// CONFIG_PROC_CHILDREN).
    pub fn workers(&self) -> Vec<u32> {
        let parents = parent_pids();
        let mut found = vec![self.pid()];
        let mut i = 0;
        // Bounded: each pid is added once, and the map is finite.
        while i < found.len() {
            let p = found[i];
            for (&pid, &ppid) in &parents {
                if ppid == p && !found.contains(&pid) {
                    found.push(pid);
                }
            }
            i += 1;
        }
        found.remove(0);
        found
    }

    /// The master then its workers.
    pub fn pids(&self) -> Vec<u32> {
        let mut all = vec![self.pid()];
        all.extend(self.workers());
        all
    }

    /// Polls every 50 ms, the master still running, until `ready` holds,
    /// for at most [`READY_TIMEOUT`]; then panics with what `failure` says.
    fn wait_ready(&mut self, ready: impl Fn(&Server) -> bool, failure: impl Fn(&Server) -> String) {
        let start = Instant::now();
        loop {
            self.assert_running();
            if ready(self) {
                return;
            }
            assert!(start.elapsed() < READY_TIMEOUT, "{}", failure(self));
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Panics with the log if the master has exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "{} exited ({status}); its log {}:\n{}",
                self.name,
                self.log.display(),
                self.log_text()
            );
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_else(|e| format!("(unreadable: {e})"))
    }

    /// Stops every process of the server with SIGSTOP and waits until the
    /// kernel shows each stopped. The master goes first so that it cannot
    /// notice a stopped worker and replace it; its workers are listed after
    /// it stopped, so none is forked in between.
    pub fn pause(&mut self) -> Vec<u32> {
        self.assert_running();
        signal(self.pid(), libc::SIGSTOP);
        wait_until(Duration::from_secs(5), "the master to stop", || {
            state(self.pid()) == Some('T')
        });
        let workers = self.workers();
        for &w in &workers {
            signal(w, libc::SIGSTOP);
        }
        wait_until(Duration::from_secs(5), "the workers to stop", || {
            workers.iter().all(|&w| state(w) == Some('T'))
        });
        self.pids()
    }

    /// Continues every process of the server, workers first, so the master
    /// never runs beside a stopped worker.
    pub fn resume(&self) {
        for w in self.workers() {
            signal(w, libc::SIGCONT);
        }
        signal(self.pid(), libc::SIGCONT);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // A stopped master cannot fork a replacement for a worker killed
        // here; killed after their master, workers would be orphans nobody
        // waits for.
        signal(self.pid(), libc::SIGSTOP);
        let workers = self.workers();
        for &w in &workers {
            signal(w, libc::SIGKILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Dead workers are now this process's children: reap them, bounded.
        let start = Instant::now();
        for w in workers {
            while start.elapsed() < Duration::from_secs(5) {
                let rc =
                    unsafe { libc::waitpid(w as libc::pid_t, std::ptr::null_mut(), libc::WNOHANG) };
                if rc != 0 {
                    break; // reaped, or not ours (-1)
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

fn signal(pid: u32, sig: libc::c_int) {
    // A pid we started: nothing else is signalled.
    unsafe { libc::kill(pid as libc::pid_t, sig) };
}

/// Every process's parent pid, from /proc/*/stat.
fn parent_pids() -> std::collections::HashMap<u32, u32> {
    let mut map = std::collections::HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return map;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        if let Some(ppid) = stat_field(pid, 1).and_then(|f| f.parse().ok()) {
            map.insert(pid, ppid);
        }
    }
    map
}

/// Field `n` (0 = state, 1 = ppid) after the command name in
/// /proc/PID/stat; the name may hold spaces and parentheses, so the fields
/// start after its last `)`.
fn stat_field(pid: u32, n: usize) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(n).map(str::to_string)
}

/// The process state letter (`T` for stopped), `None` once it is gone.
pub fn state(pid: u32) -> Option<char> {
    stat_field(pid, 0).and_then(|s| s.chars().next())
}

/// Polls `done` every 20 ms until it holds, panicking after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The program behind a unix socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Gunicorn,
    PhpFpm,
}

/// An application server listening on a unix socket with backlog
/// [`BACKLOG`] and one worker.
pub struct Backend {
    pub kind: BackendKind,
    pub server: Server,
    /// The socket's path, as the server bound it.
    pub socket: String,
}

/// The WSGI app gunicorn serves.
const WSGI_APP: &str = r#"
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok\n"]
"#;

impl Backend {
    /// gunicorn with one sync worker on `unix:<dir>/app.sock`, ready once
    /// that worker answered a request over the socket. `None` (after a loud
    /// message) when gunicorn is not installed.
    pub fn gunicorn(dir: &TempDir) -> Option<Backend> {
        let bin = program(GUNICORN)?;
        std::fs::write(dir.path().join("app.py"), WSGI_APP).expect("writing the WSGI app");
        let socket = dir.file("app.sock");
        let log = dir.path().join("gunicorn.log");
        let mut cmd = Command::new(bin);
        cmd.args(["--bind", &format!("unix:{socket}")])
            .args(["--backlog", &BACKLOG.to_string(), "--workers", "1"])
            // A worker paused for longer than this is killed by the
            // master once both run again; keep it above any test pause.
            .args(["--timeout", "120"])
            .args(["--chdir", &dir.file("")])
            .args(["--pid", &dir.file("gunicorn.pid")])
            .args(["--worker-tmp-dir", &dir.file("")])
            .args(["--error-logfile", &dir.file("gunicorn.log")])
            .arg("app:app")
            .current_dir(dir.path())
            // The user's environment must not reconfigure the server or
            // its Python.
            .env_remove("GUNICORN_CMD_ARGS")
            .env_remove("PYTHONPATH")
            .env_remove("PYTHONHOME");
        let mut server = Server::spawn("gunicorn", cmd, log);
        server.wait_ready(
            |_| http_over_unix(&socket).is_ok_and(|r| r.starts_with("HTTP/1.0 200")),
            |server| {
                format!(
                    "gunicorn did not answer on {socket} within {READY_TIMEOUT:?}; log:\n{}",
                    server.log_text()
                )
            },
        );
        Some(Backend {
            kind: BackendKind::Gunicorn,
            server,
            socket,
        })
    }

    /// php-fpm (`php-fpm8.2`) with one static child on `<dir>/app.sock`,
    /// ready once that child exists and the socket accepts. `None` (after a
    /// loud message) when php-fpm is not installed.
    pub fn php_fpm(dir: &TempDir) -> Option<Backend> {
        let bin = program(PHP_FPM)?;
        std::fs::write(dir.path().join("index.php"), "<?php echo \"ok\\n\";\n")
            .expect("writing the PHP script");
        let socket = dir.file("app.sock");
        let log = dir.path().join("php-fpm.log");
        let root = unsafe { libc::geteuid() } == 0;
        let conf = format!(
            "[global]\n\
             pid = {pid}\n\
             error_log = {log}\n\
             daemonize = no\n\
             [app]\n\
             {user}\
             listen = {socket}\n\
             listen.backlog = {BACKLOG}\n\
             pm = static\n\
             pm.max_children = 1\n",
            pid = dir.file("php-fpm.pid"),
            log = log.display(),
            user = if root { "user = root\n" } else { "" },
        );
        let conf_path = dir.file("php-fpm.conf");
        std::fs::write(&conf_path, conf).expect("writing php-fpm.conf");
        let mut cmd = Command::new(bin);
        cmd.args(["-F", "-y", &conf_path, "-p", &dir.file("")]);
        if root {
            cmd.arg("-R");
        }
        let mut server = Server::spawn("php-fpm", cmd, log);
        server.wait_ready(
            |server| !server.workers().is_empty() && UnixStream::connect(&socket).is_ok(),
            |server| {
                format!(
                    "php-fpm not listening on {socket} within {READY_TIMEOUT:?}; log:\n{}",
                    server.log_text()
                )
            },
        );
        Some(Backend {
            kind: BackendKind::PhpFpm,
            server,
            socket,
        })
    }
}

/// One HTTP/1.0 request over a unix socket; the whole answer.
pub fn http_over_unix(path: &str) -> std::io::Result<String> {
    let mut s = UnixStream::connect(path)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n")?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// nginx on 127.0.0.1, one worker, in front of a [`Backend`].
pub struct Nginx {
    pub server: Server,
    pub addr: SocketAddr,
}

/// How long nginx waits for a queued backend connection to answer: long
/// enough to see the queue, short enough to keep a test quick.
pub const UPSTREAM_TIMEOUT_SECS: u32 = 2;

impl Nginx {
    /// Starts nginx proxying to `backend` and waits until it answers 200
    /// through it. `None` (after a loud message) when nginx is not
    /// installed.
    pub fn start(dir: &TempDir, backend: &Backend) -> Option<Nginx> {
        let bin = program(NGINX)?;
        let port = super::free_port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let t = UPSTREAM_TIMEOUT_SECS;
        let location = match backend.kind {
            BackendKind::Gunicorn => format!(
                "proxy_pass http://unix:{};\n\
                 proxy_connect_timeout {t}s;\n\
                 proxy_read_timeout {t}s;",
                backend.socket
            ),
            BackendKind::PhpFpm => format!(
                "fastcgi_pass unix:{};\n\
                 fastcgi_param SCRIPT_FILENAME {};\n\
                 fastcgi_param REQUEST_METHOD $request_method;\n\
                 fastcgi_param QUERY_STRING $query_string;\n\
                 fastcgi_param SERVER_PROTOCOL $server_protocol;\n\
                 fastcgi_connect_timeout {t}s;\n\
                 fastcgi_read_timeout {t}s;",
                backend.socket,
                dir.file("index.php")
            ),
        };
        let log = dir.path().join("nginx-error.log");
        // Every path nginx would otherwise take from its build (/run,
        // /var/log/nginx, /var/lib/nginx/*) points into the test's dir.
        let conf = format!(
            "worker_processes 1;\n\
             pid {pid};\n\
             error_log {log} info;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n\
             access_log {access};\n\
             client_body_temp_path {d}/body;\n\
             proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n\
             uwsgi_temp_path {d}/uwsgi;\n\
             scgi_temp_path {d}/scgi;\n\
             server {{\n\
             listen {addr};\n\
             location / {{\n{location}\n}}\n\
             }}\n\
             }}\n",
            pid = dir.file("nginx.pid"),
            log = log.display(),
            access = dir.file("nginx-access.log"),
            d = dir.path().display(),
        );
        let conf_path = dir.file("nginx.conf");
        std::fs::write(&conf_path, conf).expect("writing nginx.conf");
        let mut cmd = Command::new(bin);
        cmd.args(["-p", &dir.file(""), "-c", &conf_path, "-g", "daemon off;"]);
        as_ordinary_user(&mut cmd);
        let mut server = Server::spawn("nginx", cmd, log);
        server.wait_ready(
            |_| matches!(super::http_get(addr, "/"), Ok((200, _))),
            |server| {
                format!(
                    "nginx did not answer 200 through {} within {READY_TIMEOUT:?}; nginx log:\n{}\nbackend log:\n{}",
                    backend.socket,
                    server.log_text(),
                    backend.server.log_text()
                )
            },
        );
        Some(Nginx { server, addr })
    }
}

/// The uid and gid a server started by [`as_ordinary_user`] has inside its
/// own user namespace.
const ORDINARY_ID: u32 = 1000;

/// Makes `cmd` start as uid/gid 1000 in a user namespace nested in the
/// test's, mapped to the test's own ids: not root to itself, the same
/// kernel user to every file and socket the test made.
fn as_ordinary_user(cmd: &mut Command) {
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let maps = super::IdMaps::new(
        format!("{ORDINARY_ID} {uid} 1"),
        format!("{ORDINARY_ID} {gid} 1"),
    );
    unsafe {
        cmd.pre_exec(move || {
            if libc::unshare(libc::CLONE_NEWUSER) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            maps.write()
        });
    }
}

/// `ss -xl` for the listener at `path`: (Recv-Q, Send-Q), i.e. queue length
/// and backlog.
pub fn ss_unix_listener(path: &str) -> Option<(u64, u64)> {
    super::ss(&["-xl"]).iter().find_map(|line| {
        let t: Vec<&str> = line.split_whitespace().collect();
        // u_str LISTEN RECV-Q SEND-Q PATH INODE * 0
        match t.as_slice() {
            [_, "LISTEN", r, s, p, ..] if *p == path => Some((r.parse().ok()?, s.parse().ok()?)),
            _ => None,
        }
    })
}

/// The first NUL-separated words of /proc/PID/cmdline, joined by spaces,
/// with the padding some programs leave after a rewritten title trimmed.
pub fn cmdline(pid: u32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&raw)
        .replace('\0', " ")
        .trim_end()
        .to_string()
}
