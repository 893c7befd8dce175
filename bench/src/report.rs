//! The results as a Markdown table for people and as JSON for scripts.

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};

use serde_json::{Value, json};

use crate::BenchOpts;
use crate::daemon::{DaemonOutcome, LISTEN};
use crate::diag::Census;
use crate::measure::{self, CommandResult, Outcome};

pub struct Environment {
    pub connections: u64,
    pub census: Census,
    pub run: RunInfo,
}

/// How a benchmark ran, as every report says it.
pub struct RunInfo {
    pub runs: u32,
    pub setup_seconds: f64,
    pub workers: usize,
    pub exporter: String,
    pub baseline: Option<String>,
}

impl RunInfo {
    pub fn new(
        runs: u32,
        setup_seconds: f64,
        workers: usize,
        exporter: &Path,
        baseline: Option<&Path>,
    ) -> RunInfo {
        RunInfo {
            runs,
            setup_seconds,
            workers,
            exporter: exporter.display().to_string(),
            baseline: baseline.map(|b| b.display().to_string()),
        }
    }

    /// `Kernel <release>, <n> CPUs, <runs> run(s) per command, medians shown.`
    pub fn environment(&self) -> String {
        format!(
            "{}, {} run(s) per command, medians shown.",
            kernel_and_cpus(),
            self.runs
        )
    }

    /// A report's JSON: these fields, and those of `more`.
    pub fn json(&self, more: Value) -> Value {
        merge(
            json!({
                "runs": self.runs,
                "kernel": kernel(),
                "cpus": cpus(),
                "setup_seconds": self.setup_seconds,
                "workers": self.workers,
                "exporter": self.exporter,
                "baseline_exporter": self.baseline,
            }),
            more,
        )
    }
}

/// The fields of JSON object `a` and those of `b`.
pub fn merge(mut a: Value, b: Value) -> Value {
    if let (Some(a), Value::Object(b)) = (a.as_object_mut(), b) {
        a.extend(b);
    }
    a
}

/// The running kernel's release.
pub fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string())
}

pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(0, |p| p.get())
}

/// `Kernel <release>, <n> CPUs`, as every report says where it ran.
pub fn kernel_and_cpus() -> String {
    format!("Kernel {}, {} CPUs", kernel(), cpus())
}

/// Milliseconds with two decimals; `-` when unknown.
pub fn ms(v: Option<f64>) -> String {
    v.map_or("-".to_string(), |s| format!("{:.2} ms", s * 1000.0))
}

/// The median and the longest of a collector's passes as two table cells; the median is
/// `absent` when the daemon exported none.
pub fn pass_cells(durations: &[f64]) -> (String, String) {
    let median = if durations.is_empty() {
        "absent".to_string()
    } else {
        ms(measure::median(durations.to_vec()))
    };
    (median, ms(durations.iter().copied().reduce(f64::max)))
}

/// Free text made fit for one table cell: no `|` or line break to split the table.
pub fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

/// A JSON report as written to `--json`: pretty, ending in a newline.
pub fn json_text(doc: &Value) -> String {
    let mut text = serde_json::to_string_pretty(doc).unwrap_or_else(|_| "{}".to_string());
    text.push('\n');
    text
}

/// Writes the JSON report made by `text` to `path` when `--json` asked for one, and says
/// so.
pub fn write_json(path: Option<&Path>, text: impl FnOnce() -> String) -> Result<()> {
    if let Some(path) = path {
        std::fs::write(path, text()).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("sockdiag-bench: results written to {}", path.display());
    }
    Ok(())
}

/// A benchmark's exit status: 2 when something it measured failed.
pub fn exit_code(failed: bool) -> ExitCode {
    if failed {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    }
}

impl Environment {
    pub fn collect(
        opts: &BenchOpts,
        exporter: &Path,
        census: Census,
        setup_seconds: f64,
        workers: usize,
    ) -> Self {
        Environment {
            connections: opts.connections,
            census,
            run: RunInfo::new(
                opts.runs,
                setup_seconds,
                workers,
                exporter,
                opts.baseline_exporter.as_deref(),
            ),
        }
    }
}

pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn floor_wall(results: &[CommandResult]) -> Option<f64> {
    results
        .iter()
        .find(|r| r.is_floor())
        .and_then(|r| r.median_wall())
}

/// A cell of the "new / baseline" column.
fn baseline_cell(ratios: Option<(Option<f64>, Option<f64>)>, is_baseline: bool) -> String {
    if is_baseline {
        return "(baseline)".to_string();
    }
    let x = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}x"));
    match ratios {
        None => String::new(),
        Some((wall, cpu)) => format!("{} wall, {} CPU", x(wall), x(cpu)),
    }
}

/// The results table: one row per command, `ratio` is the last figure column (named
/// `ratio_name`), and with baseline rows a paired "new / baseline" column.
pub fn table(
    results: &[CommandResult],
    ratio_name: &str,
    ratio: &dyn Fn(&CommandResult) -> String,
    with_baseline: bool,
) -> String {
    let mut s = String::new();
    let (extra_head, extra_rule) = if with_baseline {
        (" new / baseline (paired medians) |", "---:|")
    } else {
        ("", "")
    };
    let blanks = if with_baseline {
        " | | | | |"
    } else {
        " | | | |"
    };
    let _ = writeln!(
        s,
        "| command | median wall | median CPU | peak RSS | {ratio_name} |{extra_head}"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|{extra_rule}");
    let ratios = measure::baseline_ratios(results);
    for (r, pair) in results.iter().zip(ratios) {
        match &r.outcome {
            Outcome::Measured(_) => {
                let extra = if with_baseline {
                    format!(" {} |", baseline_cell(pair, r.baseline_of.is_some()))
                } else {
                    String::new()
                };
                let _ = writeln!(
                    s,
                    "| `{}` | {:.3} s | {:.3} s | {} | {} |{extra}",
                    r.label,
                    r.median_wall().unwrap_or(0.0),
                    r.median_cpu().unwrap_or(0.0),
                    mib(r.peak_rss().unwrap_or(0)),
                    ratio(r),
                );
            }
            Outcome::Failed(why) => {
                let _ = writeln!(s, "| `{}` | FAILED: {}{blanks}", r.label, cell(why));
            }
            Outcome::Skipped(why) => {
                let _ = writeln!(s, "| `{}` | skipped: {}{blanks}", r.label, cell(why));
            }
        }
    }
    s
}

/// Every command's figures for the JSON reports, each with what `more` adds.
pub fn commands_json(
    results: &[CommandResult],
    mut more: impl FnMut(&CommandResult, &mut Value),
) -> Vec<Value> {
    let ratios = measure::baseline_ratios(results);
    results
        .iter()
        .zip(ratios)
        .map(|(r, pair)| {
            let mut v = command_json(r, results, pair);
            more(r, &mut v);
            v
        })
        .collect()
}

/// The wall ratio of a row to the row labelled `label`, paired by round (see
/// [`measure::paired_ratio`]).
pub fn paired_wall_ratio<'a>(
    results: &'a [CommandResult],
    label: &str,
) -> impl Fn(&CommandResult) -> Option<f64> + 'a {
    let to = results.iter().find(|r| r.label == label);
    move |r| to.and_then(|to| measure::paired_ratio(r, to, measure::wall_of))
}

/// The results of a benchmark measured against `reference` (an `ss` row run in the same
/// rounds): who is under test, the table with each row's wall ratio to `reference`, paired
/// by round, and how the exporter's first row compares with the floor (`what` names its
/// snapshot, e.g. `unix-only`).
pub fn paired_results(
    results: &[CommandResult],
    run: &RunInfo,
    reference: &str,
    what: &str,
) -> String {
    let mut s = String::new();
    if let Some(b) = &run.baseline {
        let _ = write!(
            s,
            "Exporter under test: `{}`; baseline: `{b}`.\n\n",
            run.exporter
        );
    }
    let to_reference = paired_wall_ratio(results, reference);
    let ratio = |r: &CommandResult| to_reference(r).map_or("-".to_string(), |x| format!("{x:.2}x"));
    let with_baseline = results.iter().any(|r| r.baseline_of.is_some());
    s.push_str(&table(
        results,
        &format!("wall ratio to `{reference}` (paired)"),
        &ratio,
        with_baseline,
    ));
    let exporter_row = results
        .iter()
        .find(|r| r.label.starts_with("sockdiag-exporter") && r.baseline_of.is_none());
    let floor = results.iter().find(|r| r.is_floor());
    if let (Some(e), Some(f)) = (exporter_row, floor)
        && let Some(x) = measure::paired_ratio(e, f, measure::wall_of)
    {
        let _ = write!(
            s,
            "\nThe exporter's {what} snapshot takes {x:.2}x the floor's wall time (paired).\n"
        );
    }
    s
}

/// One command's figures for the JSON reports.
pub fn command_json(
    r: &CommandResult,
    results: &[CommandResult],
    pair: Option<(Option<f64>, Option<f64>)>,
) -> Value {
    let (status, note, runs) = match &r.outcome {
        Outcome::Measured(samples) => (
            "ok",
            Value::Null,
            samples
                .iter()
                .map(|s| {
                    json!({
                        "wall_seconds": s.wall,
                        "cpu_seconds": s.cpu,
                        "max_rss_bytes": s.max_rss,
                    })
                })
                .collect(),
        ),
        Outcome::Failed(why) => ("failed", json!(why), Vec::new()),
        Outcome::Skipped(why) => ("skipped", json!(why), Vec::new()),
    };
    json!({
        "command": r.label,
        "argv": r.argv,
        "status": status,
        "note": note,
        "runs": runs,
        "median_wall_seconds": r.median_wall(),
        "median_cpu_seconds": r.median_cpu(),
        "peak_rss_bytes": r.peak_rss(),
        "baseline_of": r.baseline_of.map(|i| results[i].label.clone()),
        "ratio_to_baseline": pair.map(|(wall, cpu)| json!({
            "wall_paired_median": wall,
            "cpu_paired_median": cpu,
        })),
    })
}

/// A warning when the floor waited for a CPU: it is single-threaded and never sleeps, so
/// wall well above CPU means something else held the cores. `min_gap` seconds of
/// difference are tolerated: on a dump of a few milliseconds, fork + exec alone is more
/// than 15% of it.
pub fn floor_busy_warning(results: &[CommandResult], min_gap: f64) -> Option<String> {
    let (w, c) = results
        .iter()
        .find(|r| r.is_floor())
        .and_then(|f| Some((f.median_wall()?, f.median_cpu()?)))
        .filter(|&(w, c)| c > 0.0 && w > 1.15 * c && w - c > min_gap)?;
    Some(format!(
        "Warning: the floor's wall time is {:.0}% above its CPU time: other work competed for \
         the CPUs, so times and ratios are noisier than usual.",
        100.0 * (w / c - 1.0)
    ))
}

pub fn markdown(
    env: &Environment,
    results: &[CommandResult],
    daemon: Option<&DaemonOutcome>,
) -> String {
    let c = &env.census;
    let mut s = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(
        s,
        "## sockdiag-bench: {} connections\n\n\
         {} TCP sockets in a private network namespace ({} listeners, {} connections in \
         accept queues, {} bytes unread in Recv-Q), set up in {:.1} s by {} workers. {}\n",
        env.connections,
        c.sockets,
        c.listeners,
        c.accept_queued,
        c.recv_q_bytes,
        env.run.setup_seconds,
        env.run.workers,
        env.run.environment(),
    );
    if let Some(b) = &env.run.baseline {
        let _ = writeln!(
            s,
            "Exporter under test: `{}`; baseline: `{b}` (rows marked `[baseline]`, run back \
             to back with the row above them, in alternating order).\n",
            env.run.exporter
        );
    }
    let with_baseline = results.iter().any(|r| r.baseline_of.is_some());
    let floor = floor_wall(results);
    let ratio_to_floor = |r: &CommandResult| match (r.median_wall(), floor) {
        (Some(w), Some(f)) if f > 0.0 => format!("{:.2}x", w / f),
        _ => "-".to_string(),
    };
    s.push_str(&table(
        results,
        "wall ratio to floor",
        &ratio_to_floor,
        with_baseline,
    ));
    if let Some(w) = floor_busy_warning(results, 0.0) {
        let _ = writeln!(s, "\n{w}");
    }
    match daemon {
        None => {}
        Some(DaemonOutcome::Skipped(why)) => {
            let _ = writeln!(s, "\nDaemon: skipped: {why}");
        }
        Some(DaemonOutcome::Failed(why)) => {
            let _ = writeln!(s, "\nDaemon: FAILED: {why}");
        }
        Some(DaemonOutcome::Measured(d)) => {
            let _ = writeln!(
                s,
                "\nDaemon (`sockdiag-exporter --web.listen-address {LISTEN}`, default \
                 intervals) for {:.1} s: {:.1}% of one core ({:.2} s CPU), peak RSS {}.",
                d.seconds,
                d.cpu_percent(),
                d.cpu_seconds,
                mib(d.vm_hwm_bytes)
            );
            match &d.scrape {
                Ok(sc) => {
                    let _ = writeln!(
                        s,
                        "One scrape of /metrics afterwards: {:.3} s, {} bytes, `{}`; peak RSS \
                         after it {}.",
                        sc.seconds,
                        sc.bytes,
                        sc.status_line,
                        d.vm_hwm_after_scrape_bytes
                            .map_or_else(|| "unknown".to_string(), mib)
                    );
                }
                Err(e) => {
                    let _ = writeln!(s, "Scraping /metrics afterwards failed: {e}");
                }
            }
        }
    }
    s
}

pub fn json(
    env: &Environment,
    results: &[CommandResult],
    daemon: Option<&DaemonOutcome>,
) -> String {
    let floor = floor_wall(results);
    let commands = commands_json(results, |r, v| {
        v["wall_ratio_to_floor"] = match (r.median_wall(), floor) {
            (Some(w), Some(f)) if f > 0.0 => json!(w / f),
            _ => Value::Null,
        };
    });
    let daemon = match daemon {
        None => Value::Null,
        Some(DaemonOutcome::Skipped(why)) => json!({"status": "skipped", "note": why}),
        Some(DaemonOutcome::Failed(why)) => json!({"status": "failed", "note": why}),
        Some(DaemonOutcome::Measured(d)) => json!({
            "status": "ok",
            "listen_address": LISTEN,
            "seconds": d.seconds,
            "cpu_seconds": d.cpu_seconds,
            "cpu_percent_of_one_core": d.cpu_percent(),
            "peak_rss_bytes": d.vm_hwm_bytes,
            "scrape": match &d.scrape {
                Ok(sc) => json!({
                    "seconds": sc.seconds,
                    "bytes": sc.bytes,
                    "status_line": sc.status_line,
                }),
                Err(e) => json!({"error": e}),
            },
            "peak_rss_after_scrape_bytes": d.vm_hwm_after_scrape_bytes,
        }),
    };
    let c = &env.census;
    let doc = env.run.json(json!({
        "connections": env.connections,
        "sockets": {
            "total": c.sockets,
            "listeners": c.listeners,
            "accept_queued": c.accept_queued,
            "established": c.established,
            "other_states": c.other_states,
            "recv_q_bytes": c.recv_q_bytes,
            "send_q_bytes": c.send_q_bytes,
        },
        "commands": commands,
        "daemon": daemon,
    }));
    json_text(&doc)
}
