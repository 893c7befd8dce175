//! Timing commands as child processes: wall time around spawn..reap, CPU time and peak RSS
//! from the child's own rusage (wait4), so every row pays the same fork/exec overhead and
//! the bench's own memory never counts.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::proc_util;

/// One look at 1M connections takes seconds; a run still going after this is hung.
const RUN_TIMEOUT: Duration = Duration::from_secs(300);
const FLOOR_LABEL: &str = "floor (raw inet_diag dump)";

pub struct Spec {
    pub label: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Why the row is not measured at all (e.g. the exporter is not built).
    pub skip: Option<String>,
}

#[derive(Clone, Copy)]
pub struct Sample {
    pub wall: f64,
    pub cpu: f64,
    pub max_rss: u64,
}

pub enum Outcome {
    Measured(Vec<Sample>),
    Failed(String),
    Skipped(String),
}

pub struct CommandResult {
    pub label: String,
    pub argv: Vec<String>,
    pub outcome: Outcome,
}

pub fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    })
}

impl CommandResult {
    fn samples(&self) -> &[Sample] {
        match &self.outcome {
            Outcome::Measured(s) => s,
            _ => &[],
        }
    }

    pub fn median_wall(&self) -> Option<f64> {
        median(self.samples().iter().map(|s| s.wall).collect())
    }

    pub fn median_cpu(&self) -> Option<f64> {
        median(self.samples().iter().map(|s| s.cpu).collect())
    }

    pub fn peak_rss(&self) -> Option<u64> {
        self.samples().iter().map(|s| s.max_rss).max()
    }

    pub fn failed(&self) -> bool {
        matches!(self.outcome, Outcome::Failed(_))
    }

    pub fn is_floor(&self) -> bool {
        self.label == FLOOR_LABEL
    }
}

fn specs(exporter: &Path) -> Result<Vec<Spec>> {
    let me = std::env::current_exe().context("locating this executable")?;
    let exporter_skip = if exporter.is_file() {
        None
    } else {
        Some(format!(
            "{} not found: build it with `cargo build --release` in the workspace root, or \
             pass --exporter PATH",
            exporter.display()
        ))
    };
    let ss = PathBuf::from("ss");
    let spec = |label: &str, program: &PathBuf, args: &[&str], skip: &Option<String>| Spec {
        label: label.to_string(),
        program: program.clone(),
        args: args.iter().map(|a| a.to_string()).collect(),
        skip: skip.clone(),
    };
    let exporter = exporter.to_path_buf();
    Ok(vec![
        spec(FLOOR_LABEL, &me, &["floor"], &None),
        spec(
            "sockdiag-exporter snapshot (full)",
            &exporter,
            &["snapshot", "--format", "json"],
            &exporter_skip,
        ),
        spec(
            "sockdiag-exporter snapshot (listeners only)",
            &exporter,
            &[
                "snapshot",
                "--format",
                "json",
                "--no-collector.connections",
                "--no-collector.netstat",
            ],
            &exporter_skip,
        ),
        // Queued connections without tcp_info: what exact ages cost.
        spec(
            "sockdiag-exporter snapshot (--collector.connections.queue-age off)",
            &exporter,
            &[
                "snapshot",
                "--format",
                "json",
                "--collector.connections.queue-age",
                "off",
            ],
            &exporter_skip,
        ),
        // One port of the 16: the kernel still walks every socket, but builds
        // and sends replies for a sixteenth of them.
        spec(
            "sockdiag-exporter snapshot (--collector.connections.ports 20000)",
            &exporter,
            &[
                "snapshot",
                "--format",
                "json",
                "--collector.connections.ports",
                "20000",
            ],
            &exporter_skip,
        ),
        spec("ss -tn state all", &ss, &["-tn", "state", "all"], &None),
        spec("ss -ltn", &ss, &["-ltn"], &None),
    ])
}

/// Runs one command once, stdout discarded, stderr kept for the error message.
fn run_once(spec: &Spec) -> Result<Sample, String> {
    let mut errfile = proc_util::memfd(c"bench-stderr").map_err(|e| format!("{e:#}"))?;
    let errdup = errfile
        .try_clone()
        .map_err(|e| format!("duplicating the stderr file: {e}"))?;
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(errdup));
    proc_util::tie_to_this_process(&mut cmd);
    let start = Instant::now();
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", spec.program.display()))?;
    let pid = i32::try_from(child.id()).map_err(|_| "pid out of range".to_string())?;
    let reaped = proc_util::wait_with_timeout(pid, RUN_TIMEOUT)
        .map_err(|e| format!("waiting for pid {pid}: {e}"))?;
    let wall = start.elapsed().as_secs_f64();
    drop(child);
    let Some(reaped) = reaped else {
        return Err(format!("killed after {} s", RUN_TIMEOUT.as_secs()));
    };
    if !reaped.success() {
        let tail = proc_util::read_tail(&mut errfile, 600);
        return Err(if tail.is_empty() {
            reaped.describe()
        } else {
            format!("{}: {tail}", reaped.describe())
        });
    }
    Ok(Sample {
        wall,
        cpu: reaped.cpu_seconds(),
        max_rss: reaped.max_rss_bytes(),
    })
}

/// Runs every command `runs` times, round-robin, so that slow drift (page cache, memory
/// compaction after setup) spreads over all rows instead of favouring one.
pub fn measure_all(exporter: &Path, runs: u32) -> Result<Vec<CommandResult>> {
    let specs = specs(exporter)?;
    let mut results: Vec<CommandResult> = specs
        .iter()
        .map(|s| CommandResult {
            label: s.label.clone(),
            argv: std::iter::once(s.program.display().to_string())
                .chain(s.args.iter().cloned())
                .collect(),
            outcome: match &s.skip {
                Some(why) => Outcome::Skipped(why.clone()),
                None => Outcome::Measured(Vec::new()),
            },
        })
        .collect();
    for round in 1..=runs {
        eprintln!("sockdiag-bench: round {round}/{runs}");
        for (spec, result) in specs.iter().zip(results.iter_mut()) {
            let Outcome::Measured(samples) = &mut result.outcome else {
                continue;
            };
            match run_once(spec) {
                Ok(s) => samples.push(s),
                Err(why) => {
                    eprintln!("sockdiag-bench: {} failed: {why}", spec.label);
                    result.outcome = Outcome::Failed(why);
                }
            }
        }
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(Vec::new()), None);
    }
}
