//! A helper process of the bench that talks in lines: it reads its orders on stdin, answers
//! on stdout, and exits when its stdin closes. Every helper is one: the connection, unix and
//! udp workers, the namespace holders and the churn load.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::proc_util;

pub struct Helper {
    pub pid: i32,
    child: Child,
    what: String,
    line: Vec<u8>,
    reaped: bool,
}

impl Helper {
    /// Starts `cmd` with piped stdin and stdout, tied to this process's life (it dies with
    /// SIGKILL if we die). `what` names it in messages.
    pub fn spawn(mut cmd: Command, what: &str) -> Result<Helper> {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        proc_util::tie_to_this_process(&mut cmd);
        let child = cmd.spawn().with_context(|| format!("starting {what}"))?;
        let pid = i32::try_from(child.id()).context("pid out of range")?;
        Ok(Helper {
            pid,
            child,
            what: what.to_string(),
            line: Vec::new(),
            reaped: false,
        })
    }

    /// Writes `text` to the helper's stdin.
    pub fn send(&mut self, text: &str) -> Result<()> {
        let Some(stdin) = self.child.stdin.as_mut() else {
            bail!("{} (pid {}): stdin already closed", self.what, self.pid);
        };
        stdin
            .write_all(text.as_bytes())
            .and_then(|()| stdin.flush())
            .with_context(|| format!("writing to {} (pid {}): did it die?", self.what, self.pid))
    }

    /// Its stdout, to poll, while it is open.
    pub fn stdout_fd(&self) -> Option<RawFd> {
        Some(self.child.stdout.as_ref()?.as_raw_fd())
    }

    /// The next complete line the helper wrote, if one has been read.
    pub fn take_line(&mut self) -> Option<String> {
        let pos = self.line.iter().position(|&b| b == b'\n')?;
        let line: Vec<u8> = self.line.drain(..=pos).collect();
        Some(String::from_utf8_lossy(&line).trim().to_string())
    }

    /// Reads what the helper wrote (one read: call it once its stdout is readable); fails,
    /// with its exit status, when it has closed its stdout.
    pub fn fill(&mut self) -> Result<()> {
        let Some(out) = self.child.stdout.as_mut() else {
            bail!("{} (pid {}) has no stdout", self.what, self.pid);
        };
        let mut chunk = [0u8; 4096];
        match out.read(&mut chunk) {
            Ok(0) => {
                self.child.stdout = None;
                let status = match proc_util::wait_with_timeout(self.pid, Duration::from_secs(10)) {
                    Ok(Some(r)) => r.describe(),
                    Ok(None) => "hung after closing its stdout; killed".to_string(),
                    Err(e) => format!("not reapable: {e}"),
                };
                self.reaped = true;
                bail!(
                    "{} (pid {}) stopped ({status}); its error is above",
                    self.what,
                    self.pid
                );
            }
            Ok(n) => self.line.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(e).with_context(|| format!("reading {} (pid {})", self.what, self.pid));
            }
        }
        Ok(())
    }

    /// Waits at most `timeout` for the next line the helper writes; fails, with its exit
    /// status, if it closes its stdout first.
    pub fn read_line(&mut self, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.take_line() {
                return Ok(line);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "{} (pid {}) said nothing within {:.0} s",
                    self.what,
                    self.pid,
                    timeout.as_secs_f64()
                );
            }
            let Some(fd) = self.stdout_fd() else {
                bail!("{} (pid {}) has no stdout", self.what, self.pid);
            };
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = i32::try_from(left.as_millis().clamp(1, 1000)).unwrap_or(1000);
            // SAFETY: one valid pollfd.
            if unsafe { libc::poll(&mut pfd, 1, ms) } > 0 {
                self.fill()?;
            }
        }
    }

    /// Waits at most `timeout` for a line that starts with `ready`, the helper's word that
    /// it holds what it was asked to build; what follows the word.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<String> {
        let line = self.read_line(timeout)?;
        match line.strip_prefix("ready") {
            Some(rest) if rest.is_empty() || rest.starts_with(' ') => Ok(rest.trim().to_string()),
            _ => bail!(
                "unexpected line from {} (pid {}): {line:?}",
                self.what,
                self.pid
            ),
        }
    }

    /// Closes the helper's stdin, which tells it to exit.
    pub fn close_stdin(&mut self) {
        drop(self.child.stdin.take());
    }

    /// Closes the helper's stdin and waits at most `timeout` for it to exit; then kills it.
    /// False when it had to be killed.
    pub fn stop(&mut self, timeout: Duration) -> bool {
        self.close_stdin();
        if self.reaped {
            return true;
        }
        self.reaped = true;
        match proc_util::wait_with_timeout(self.pid, timeout) {
            Ok(Some(_)) => true,
            // Timed out: wait_with_timeout has killed and reaped it.
            Ok(None) => false,
            Err(_) => {
                proc_util::kill_and_reap(self.pid);
                false
            }
        }
    }
}

/// This executable run again as `subcommand`, told the coordinator's pid (`--parent`) so that
/// it dies with it.
pub fn bench_command(subcommand: &str) -> Result<Command> {
    let exe = std::env::current_exe().context("locating this executable")?;
    // SAFETY: getpid cannot fail.
    let me = unsafe { libc::getpid() };
    let mut cmd = Command::new(exe);
    cmd.arg(subcommand).args(["--parent", &me.to_string()]);
    Ok(cmd)
}

/// Starts worker helpers batch by batch, each batch started at once and then waited for
/// until every one of its helpers says `ready`; `start` gives a worker's command and what
/// to write to its stdin first. Dropping the helpers ends them.
pub fn start_fleet<'a, W: 'a>(
    batches: impl IntoIterator<Item = &'a [W]>,
    what: &str,
    timeout: Duration,
    mut start: impl FnMut(&W) -> Result<(Command, Option<String>)>,
) -> Result<Vec<Helper>> {
    let mut fleet: Vec<Helper> = Vec::new();
    for batch in batches {
        let from = fleet.len();
        for w in batch {
            let (cmd, orders) = start(w)?;
            // Pushed before its orders are sent, so that an error still ends it.
            fleet.push(Helper::spawn(cmd, what)?);
            if let (Some(h), Some(text)) = (fleet.last_mut(), orders) {
                h.send(&text)?;
            }
        }
        for h in &mut fleet[from..] {
            h.wait_ready(timeout)?;
        }
    }
    Ok(fleet)
}

impl Drop for Helper {
    fn drop(&mut self) {
        if !self.reaped {
            drop(self.child.stdin.take());
            proc_util::kill_and_reap(self.pid);
        }
    }
}
