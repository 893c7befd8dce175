//! A helper process of the bench that talks in lines: it reads its orders on stdin, answers
//! on stdout, and exits when its stdin closes. Used by the unix workers, the churn load and
//! the churn's namespace holders.

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::proc_util::{self, Reaped};

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

    /// Waits at most `timeout` for the next line the helper writes; fails, with its exit
    /// status, if it closes its stdout first.
    pub fn read_line(&mut self, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(pos) = self.line.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.line.drain(..=pos).collect();
                return Ok(String::from_utf8_lossy(&line).trim().to_string());
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
            let Some(out) = self.child.stdout.as_mut() else {
                bail!("{} (pid {}) has no stdout", self.what, self.pid);
            };
            let mut pfd = libc::pollfd {
                fd: out.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = i32::try_from(left.as_millis().clamp(1, 1000)).unwrap_or(1000);
            // SAFETY: one valid pollfd.
            if unsafe { libc::poll(&mut pfd, 1, ms) } <= 0 {
                continue;
            }
            let mut chunk = [0u8; 4096];
            match out.read(&mut chunk) {
                Ok(0) => {
                    self.child.stdout = None;
                    let status =
                        match proc_util::wait_with_timeout(self.pid, Duration::from_secs(10)) {
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
                    return Err(e)
                        .with_context(|| format!("reading {} (pid {})", self.what, self.pid));
                }
            }
        }
    }

    /// Closes the helper's stdin, which tells it to exit, and waits at most `timeout` for
    /// it; then kills it. Returns how it ended, if it was still ours to reap.
    pub fn stop(&mut self, timeout: Duration) -> Option<Reaped> {
        drop(self.child.stdin.take());
        if self.reaped {
            return None;
        }
        self.reaped = true;
        match proc_util::wait_with_timeout(self.pid, timeout) {
            Ok(r) => r,
            Err(_) => {
                proc_util::kill_and_reap(self.pid);
                None
            }
        }
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        if !self.reaped {
            drop(self.child.stdin.take());
            proc_util::kill_and_reap(self.pid);
        }
    }
}
