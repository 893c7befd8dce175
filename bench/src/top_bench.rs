//! What `top` costs against the loop it replaces, on the same sockets for the same time:
//! the live view as a person runs it (on a terminal: a tmux pane of the bench's own),
//! at its default CPU budget and with the budget lifted so every refresh walks every
//! connection; and `ss -ltn; ss -tn` once a second, as `watch -n1` runs it. Each is
//! measured as CPU seconds over wall seconds of its whole process tree.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::daemon::cpu_seconds;

/// One row: what ran and the share of a core it used.
pub struct TopRow {
    pub label: String,
    pub seconds: f64,
    pub cpu_seconds: f64,
}

impl TopRow {
    pub fn cpu_percent(&self) -> f64 {
        100.0 * self.cpu_seconds / self.seconds.max(f64::EPSILON)
    }
}

/// A tmux server of the bench's own, killed when dropped.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.args(["-S", &self.socket]).env_remove("TMUX");
        c
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").status();
    }
}

/// `top` with `args` in a 160x50 pane for `run_for` after `warmup`; its CPU.
fn live_top(exporter: &Path, args: &[&str], warmup: Duration, run_for: Duration) -> Result<f64> {
    let socket = std::env::temp_dir().join(format!("sockdiag-bench-tmux-{}", std::process::id()));
    let tmux = Tmux {
        socket: socket.to_string_lossy().into_owned(),
    };
    let command = format!("exec {} top {}", exporter.display(), args.join(" "));
    let status = tmux
        .cmd()
        .args(["new-session", "-d", "-s", "top", "-x", "160", "-y", "50"])
        .arg(&command)
        .status()
        .context("running tmux (apt-get install tmux)")?;
    if !status.success() {
        bail!("tmux new-session failed");
    }
    let out = tmux
        .cmd()
        .args(["display-message", "-p", "-t", "top", "#{pane_pid}"])
        .output()
        .context("asking tmux for the pane's pid")?;
    let pid: i32 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .context("the pane's pid")?;
    std::thread::sleep(warmup);
    let before = cpu_seconds(pid)?;
    let start = Instant::now();
    std::thread::sleep(run_for);
    let after = cpu_seconds(pid)?;
    let wall = start.elapsed().as_secs_f64();
    let _ = tmux.cmd().args(["send-keys", "-t", "top", "q"]).status();
    Ok((after - before) / wall * run_for.as_secs_f64())
}

/// CPU of children this process has waited for, user + system, in seconds.
fn children_cpu() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// `ss -ltn; ss -tn` every second for about `run_for`, output thrown away; its CPU
/// and wall time.
fn ss_loop(run_for: Duration) -> Result<(f64, f64)> {
    let rounds = run_for.as_secs().max(1);
    let script = format!(
        "i=0; while [ $i -lt {rounds} ]; do ss -ltn; ss -tn; sleep 1; i=$((i+1)); done >/dev/null"
    );
    let before = children_cpu();
    let start = Instant::now();
    let status = Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .status()
        .context("running the ss loop")?;
    if !status.success() {
        bail!("the ss loop failed: {status}");
    }
    Ok((children_cpu() - before, start.elapsed().as_secs_f64()))
}

/// The three rows, `run_for` each, one after the other on the same sockets.
pub fn run(exporter: &Path, run_for: Duration) -> Result<Vec<TopRow>> {
    let warmup = Duration::from_secs(3);
    let secs = run_for.as_secs_f64();
    let mut rows = Vec::new();
    let default = live_top(exporter, &["--no-collector.netns"], warmup, run_for)?;
    rows.push(TopRow {
        label: "`top` (1 s refresh, default --collector.connections.cpu-budget 0.02)".into(),
        seconds: secs,
        cpu_seconds: default,
    });
    let unbudgeted = live_top(
        exporter,
        &[
            "--no-collector.netns",
            "--collector.connections.cpu-budget",
            "1",
        ],
        warmup,
        run_for,
    )?;
    rows.push(TopRow {
        label: "`top --collector.connections.cpu-budget 1` (every connection walked every second)"
            .into(),
        seconds: secs,
        cpu_seconds: unbudgeted,
    });
    let (cpu, wall) = ss_loop(run_for)?;
    rows.push(TopRow {
        label: "`ss -ltn; ss -tn` every second (what `watch -n1` runs)".into(),
        seconds: wall,
        cpu_seconds: cpu,
    });
    Ok(rows)
}

/// The rows as a markdown table, with each row's cost against the `ss` loop's.
pub fn markdown(connections: u64, rows: &[TopRow]) -> String {
    let ss = rows.last().map_or(0.0, TopRow::cpu_percent);
    let mut out = format!(
        "\n### `top` against `watch ss` ({connections} connections)\n\n\
         | what | CPU (% of a core) | against the ss loop |\n|---|---:|---:|\n"
    );
    for r in rows {
        let ratio = if ss > 0.0 {
            format!("{:.2}x", r.cpu_percent() / ss)
        } else {
            "-".into()
        };
        out.push_str(&format!(
            "| {} | {:.1}% | {ratio} |\n",
            r.label,
            r.cpu_percent()
        ));
    }
    out
}
