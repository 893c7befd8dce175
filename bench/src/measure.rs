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
pub const FLOOR_LABEL: &str = "floor (raw inet_diag dump)";
/// What the label of a baseline row adds to the label of the row it is paired with.
pub const BASELINE_SUFFIX: &str = " [baseline]";

#[derive(Clone)]
pub struct Spec {
    pub label: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Why the row is not measured at all (e.g. the exporter is not built).
    pub skip: Option<String>,
    /// For a baseline row: the index of the row it is paired with (same arguments, the
    /// exporter under test).
    pub baseline_of: Option<usize>,
}

impl Spec {
    pub fn new(label: &str, program: &Path, args: &[&str], skip: Option<String>) -> Spec {
        Spec {
            label: label.to_string(),
            program: program.to_path_buf(),
            args: args.iter().map(|a| a.to_string()).collect(),
            skip,
            baseline_of: None,
        }
    }
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
    /// For a baseline row: the index of the row it is paired with.
    pub baseline_of: Option<usize>,
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
        self.label.starts_with("floor")
    }
}

/// Median over runs of `a`'s figure divided by `b`'s in the same round, for two rows
/// measured in the same rounds: slow drift of the machine cancels out run by run.
pub fn paired_ratio(
    a: &CommandResult,
    b: &CommandResult,
    figure: fn(&Sample) -> f64,
) -> Option<f64> {
    let (sa, sb) = (a.samples(), b.samples());
    if sa.is_empty() || sa.len() != sb.len() {
        return None;
    }
    median(
        sa.iter()
            .zip(sb)
            .filter(|(_, y)| figure(y) > 0.0)
            .map(|(x, y)| figure(x) / figure(y))
            .collect(),
    )
}

pub fn wall_of(s: &Sample) -> f64 {
    s.wall
}

pub fn cpu_of(s: &Sample) -> f64 {
    s.cpu
}

/// The paired ratios (wall, CPU) of each row that has a baseline row, by row index.
pub fn baseline_ratios(results: &[CommandResult]) -> Vec<Option<(Option<f64>, Option<f64>)>> {
    let mut out: Vec<Option<(Option<f64>, Option<f64>)>> = vec![None; results.len()];
    for base in results {
        if let Some(i) = base.baseline_of {
            out[i] = Some((
                paired_ratio(&results[i], base, wall_of),
                paired_ratio(&results[i], base, cpu_of),
            ));
        }
    }
    out
}

/// Why a baseline exporter cannot be measured at all, if it cannot.
pub fn baseline_skip(baseline: &Path) -> Option<String> {
    if baseline.is_file() {
        None
    } else {
        Some(format!("baseline {} not found", baseline.display()))
    }
}

/// Adds, right after every row that runs `exporter`, the same command run by `baseline`.
/// `skip_row` may refuse a row for the baseline (e.g. it lacks the collector measured).
pub fn add_baseline(
    specs: Vec<Spec>,
    exporter: &Path,
    baseline: &Path,
    skip_row: impl Fn(&Spec) -> Option<String>,
) -> Vec<Spec> {
    let missing = baseline_skip(baseline);
    let mut out = Vec::with_capacity(specs.len() * 2);
    for spec in specs {
        let twin = (spec.program == exporter).then(|| Spec {
            label: format!("{}{BASELINE_SUFFIX}", spec.label),
            program: baseline.to_path_buf(),
            args: spec.args.clone(),
            skip: missing.clone().or_else(|| skip_row(&spec)),
            baseline_of: Some(out.len()),
        });
        out.push(spec);
        out.extend(twin);
    }
    out
}

fn specs(exporter: &Path) -> Result<Vec<Spec>> {
    let me = std::env::current_exe().context("locating this executable")?;
    let exporter_skip = exporter_skip(exporter);
    let ss = Path::new("ss");
    let spec = |label: &str, args: &[&str]| Spec::new(label, exporter, args, exporter_skip.clone());
    Ok(vec![
        Spec::new(FLOOR_LABEL, &me, &["floor"], None),
        spec(
            "sockdiag-exporter snapshot (full)",
            &["snapshot", "--format", "json"],
        ),
        spec(
            "sockdiag-exporter snapshot (listeners only)",
            &[
                "snapshot",
                "--format",
                "json",
                "--no-collector.connections",
                "--no-collector.netstat",
            ],
        ),
        // Queued connections without tcp_info: what exact ages cost.
        spec(
            "sockdiag-exporter snapshot (--collector.connections.queue-age off)",
            &[
                "snapshot",
                "--format",
                "json",
                "--collector.connections.queue-age",
                "off",
            ],
        ),
        // One port of the 16: the kernel still walks every socket, but builds
        // and sends replies for a sixteenth of them.
        spec(
            "sockdiag-exporter snapshot (--collector.connections.ports 20000)",
            &[
                "snapshot",
                "--format",
                "json",
                "--collector.connections.ports",
                "20000",
            ],
        ),
        Spec::new("ss -tn state all", ss, &["-tn", "state", "all"], None),
        Spec::new("ss -ltn", ss, &["-ltn"], None),
    ])
}

/// Why the exporter's rows cannot be measured at all, if they cannot.
pub fn exporter_skip(exporter: &Path) -> Option<String> {
    if exporter.is_file() {
        None
    } else {
        Some(format!(
            "{} not found: build it with `cargo build --release` in the workspace root, or \
             pass --exporter PATH",
            exporter.display()
        ))
    }
}

/// Whether `exporter` has the collector `name`, from its `--help`: a build without it would
/// run a snapshot of that collector alone with every collector off (or refuse its
/// `--no-collector.` flag) and time nothing.
pub fn collector_support(exporter: &Path, name: &str) -> Result<(), String> {
    if let Some(why) = crate::exporter_missing(exporter) {
        return Err(why);
    }
    let out = Command::new(exporter)
        .arg("--help")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {} --help: {e}", exporter.display()))?;
    let flag = format!("--collector.{name}");
    if String::from_utf8_lossy(&out.stdout).contains(&flag) {
        Ok(())
    } else {
        Err(format!(
            "{} has no {name} collector (no {flag} in its --help): nothing to time",
            exporter.display()
        ))
    }
}

/// [`add_baseline`] for a benchmark of the collector `name`: a baseline build without that
/// collector gets its rows skipped, saying why.
pub fn add_collector_baseline(
    specs: Vec<Spec>,
    exporter: &Path,
    baseline: Option<&Path>,
    name: &str,
) -> Vec<Spec> {
    let Some(b) = baseline else {
        return specs;
    };
    let why = collector_support(b, name)
        .err()
        .map(|e| format!("{e}; baseline row skipped"));
    add_baseline(specs, exporter, b, |_| why.clone())
}

/// Runs a JSON snapshot (`exporter args`) once more, outside the timing, for the benchmark
/// to check what it reports.
pub fn snapshot_json(exporter: &Path, args: &[&str]) -> Result<serde_json::Value, String> {
    let out = Command::new(exporter)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running the snapshot: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "the snapshot failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("the snapshot's output is not JSON: {e}"))
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

/// The main benchmark's commands, each paired with the `baseline` exporter's run of the
/// same command if one is given, measured `runs` times.
pub fn measure_all(
    exporter: &Path,
    baseline: Option<&Path>,
    runs: u32,
) -> Result<Vec<CommandResult>> {
    let mut specs = specs(exporter)?;
    if let Some(b) = baseline {
        specs = add_baseline(specs, exporter, b, |_| None);
    }
    Ok(measure_specs(&specs, runs))
}

/// The order of one round: every row once, a row and its baseline twin back to back, the
/// twin second in odd rounds and first in even ones, so that whatever the first of two runs
/// leaves warm (page cache, CPU frequency) favours neither.
fn round_order(specs: &[Spec], round: u32) -> Vec<usize> {
    let mut order = Vec::with_capacity(specs.len());
    for (i, s) in specs.iter().enumerate() {
        if s.baseline_of.is_some() {
            continue;
        }
        match specs.iter().position(|t| t.baseline_of == Some(i)) {
            Some(j) if round.is_multiple_of(2) => order.extend([j, i]),
            Some(j) => order.extend([i, j]),
            None => order.push(i),
        }
    }
    order
}

/// Runs every command `runs` times, round-robin, so that slow drift (page cache, memory
/// compaction after setup) spreads over all rows instead of favouring one.
pub fn measure_specs(specs: &[Spec], runs: u32) -> Vec<CommandResult> {
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
            baseline_of: s.baseline_of,
        })
        .collect();
    for round in 1..=runs {
        eprintln!("sockdiag-bench: round {round}/{runs}");
        for i in round_order(specs, round) {
            let (spec, result) = (&specs[i], &mut results[i]);
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
    results
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured(label: &str, walls: &[f64]) -> CommandResult {
        CommandResult {
            label: label.to_string(),
            argv: Vec::new(),
            outcome: Outcome::Measured(
                walls
                    .iter()
                    .map(|&w| Sample {
                        wall: w,
                        cpu: w / 2.0,
                        max_rss: 0,
                    })
                    .collect(),
            ),
            baseline_of: None,
        }
    }

    /// A slow round slows both rows of a pair; the paired ratio must not move with it.
    #[test]
    fn paired_ratio_is_the_median_of_per_round_ratios() {
        let new = measured("new", &[1.0, 10.0, 2.0]);
        let base = measured("base", &[2.0, 10.0, 2.0]);
        assert_eq!(paired_ratio(&new, &base, wall_of), Some(1.0));
        assert_eq!(paired_ratio(&new, &base, cpu_of), Some(1.0));
        let short = measured("short", &[1.0]);
        assert_eq!(paired_ratio(&new, &short, wall_of), None);
    }

    #[test]
    fn baseline_twins_follow_their_row_and_alternate_order_by_round() {
        let exporter = Path::new("/x/new");
        let specs = vec![
            Spec::new("floor", Path::new("/x/bench"), &["floor"], None),
            Spec::new("snap", exporter, &["snapshot"], None),
            Spec::new("ss", Path::new("ss"), &["-xl"], None),
        ];
        let specs = add_baseline(specs, exporter, Path::new("/nonexistent/old"), |_| None);
        let labels: Vec<&str> = specs.iter().map(|s| s.label.as_str()).collect();
        assert_eq!(labels, ["floor", "snap", "snap [baseline]", "ss"]);
        assert_eq!(specs[2].baseline_of, Some(1));
        assert!(specs[2].skip.as_deref().unwrap_or("").contains("not found"));
        assert_eq!(round_order(&specs, 1), [0, 1, 2, 3]);
        assert_eq!(round_order(&specs, 2), [0, 2, 1, 3]);
    }

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(Vec::new()), None);
    }
}
