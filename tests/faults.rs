//! Faults the daemon must heal from or report, injected into a running
//! daemon with strace (see `tests/common/strace.rs`): a procfs open that
//! fails once in a namespace, netlink receives that fail now and then, and
//! an `ip netns` directory the daemon cannot list.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::strace::{Fault, TracedDaemon};
use common::*;

/// The second namespace's name: a link in the test's own `--path.run-netns`
/// directory. It is the only namespace collected, so nothing but its own
/// sampling opens the file whose first open fails.
const NS: &str = "faulty";

/// How long the daemon may take to heal. The retry is due within about a
/// second, so this is slack for a loaded machine, not a tolerance.
const HEAL: Duration = Duration::from_secs(15);

#[test]
fn a_failed_netstat_open_in_a_new_namespace_is_retried() {
    in_netns(
        "a_failed_netstat_open_in_a_new_namespace_is_retried",
        || {
            failed_open_is_retried(
                &["/proc/thread-self/net/netstat"],
                "sockdiag_netstat_listen_overflows_total",
            );
        },
    );
}

#[test]
fn a_failed_somaxconn_open_in_a_new_namespace_is_retried() {
    in_netns(
        "a_failed_somaxconn_open_in_a_new_namespace_is_retried",
        || {
            failed_open_is_retried(&["/proc/sys/net/core/somaxconn"], "sockdiag_somaxconn");
        },
    );
}

/// The first open of `paths` inside a new namespace fails (EMFILE, as when
/// the daemon briefly runs out of descriptors); within [`HEAL`] the
/// namespace must be up with `figure` exported, the failure counted, and
/// that one open the only one that failed.
fn failed_open_is_retried(paths: &[&str], figure: &str) {
    let helper = NetnsProcess::start(7090, 8, 0);
    let names = tempdir("run-netns");
    helper.name_netns(&names, NS);
    let names_arg = names.to_str().expect("temp dir path is UTF-8");
    let traced = TracedDaemon::start(
        Fault::first_open(paths, "EMFILE"),
        &[
            &netns_flags(names_arg)[..],
            &["--collector.netns.include", NS],
        ]
        .concat(),
    );
    let start = Instant::now();
    loop {
        let m = traced.metrics();
        let up = m.value_or_zero("sockdiag_netns_up", &[("netns", NS)]);
        let exported = !m.find(figure, &[("netns", NS)]).is_empty();
        let errors = m.value_or_zero(
            "sockdiag_collector_errors_total",
            &[("collector", "netstat")],
        );
        let injected = traced.injections();
        if up == 1.0 && exported && injected >= 1 {
            assert_eq!(
                injected,
                1,
                "only the first open may fail; strace wrote:\n{}",
                traced.trace()
            );
            assert!(traced.detached(), "strace still attached after the fault");
            assert!(
                errors >= 1.0,
                "the failed open of {paths:?} was not counted as a netstat error"
            );
            let _ = std::fs::remove_dir_all(&names);
            return;
        }
        if start.elapsed() > HEAL {
            let health = traced
                .try_get("/healthz")
                .map(|(_, body)| body)
                .unwrap_or_else(|e| e.to_string());
            panic!(
                "namespace {NS} not healed {HEAL:?} after the first open of {paths:?} failed: \
                 sockdiag_netns_up={up}, {figure} exported: {exported}, \
                 netstat errors={errors}, injected faults={injected}\n\
                 /healthz:\n{health}\nstrace wrote:\n{}",
                traced.trace()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// How long every fifth receive fails.
const FAULTY_PERIOD: Duration = Duration::from_secs(10);

#[test]
fn intermittent_recv_failures_are_logged_at_a_bounded_rate() {
    in_netns(
        "intermittent_recv_failures_are_logged_at_a_bounded_rate",
        || {
            // Only the daemon's own namespace: one netns per collector in
            // the log, whatever other processes the machine runs.
            let traced = TracedDaemon::start(
                Fault::every_nth_recv(5, "ENOBUFS"),
                &["--no-collector.netns"],
            );
            let start = Instant::now();
            let errors = |m: &Metrics| -> f64 {
                m.find("sockdiag_collector_errors_total", &[])
                    .iter()
                    .map(|s| s.value)
                    .sum()
            };
            let (mut early, mut late, mut scrapes) = (None, 0.0, 0);
            while start.elapsed() < FAULTY_PERIOD {
                // Serving goes on through the faults (`metrics` retries
                // when a fault hits the HTTP exchange itself).
                let m = traced.metrics();
                scrapes += 1;
                late = errors(&m);
                if early.is_none() && start.elapsed() >= Duration::from_secs(1) {
                    early = Some(late);
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            let log = traced.log();
            let injected = traced.injections();
            traced.stop_injecting();

            // At 50 ms per listener sample, ten seconds see hundreds of
            // receives: the faults did happen, and often.
            assert!(
                injected >= 20,
                "only {injected} receives failed; strace wrote:\n{}",
                traced.trace()
            );
            let early = early.expect("a scrape after the first second");
            assert!(
                late > early,
                "sockdiag_collector_errors_total stayed at {early} over {scrapes} scrapes \
                 while {injected} receives failed"
            );

            // At most one WARN a minute per (collector, netns), plus the one
            // INFO saying it recovered; the rest are counted, not logged.
            let mut lines: BTreeMap<(String, String), (usize, usize)> = BTreeMap::new();
            for line in log.lines() {
                let level = line.split_whitespace().nth(1).unwrap_or_default();
                let Some(collector) = field(line, "collector") else {
                    continue;
                };
                let key = (collector, field(line, "netns").unwrap_or_default());
                match level {
                    "WARN" => lines.entry(key).or_default().0 += 1,
                    "INFO" => lines.entry(key).or_default().1 += 1,
                    _ => {}
                }
            }
            println!(
                "{injected} receives failed in {FAULTY_PERIOD:?}; errors_total {early} -> {late}; \
                 (WARN, INFO) lines by (collector, netns): {lines:?}"
            );
            let warned: usize = lines.values().map(|(w, _)| w).sum();
            assert!(
                warned >= 1,
                "{injected} failed receives and no WARN naming a collector:\n{log}"
            );
            let excess: Vec<_> = lines
                .iter()
                .filter(|(_, (warn, info))| *warn > 1 || warn + info > 2)
                .collect();
            assert!(
                excess.is_empty(),
                "more than one WARN plus one INFO per (collector, netns) in {FAULTY_PERIOD:?} \
                 of intermittent failures; (WARN, INFO) lines by (collector, netns): {lines:?}"
            );

            // Once the faults stop, every collector's samples succeed again.
            let healed = Instant::now();
            loop {
                let m = traced.metrics();
                let failing: Vec<_> = m
                    .find("sockdiag_collector_success", &[])
                    .into_iter()
                    .filter(|s| s.value != 1.0)
                    .map(|s| s.labels.get("collector").cloned().unwrap_or_default())
                    .collect();
                if failing.is_empty() {
                    break;
                }
                assert!(
                    healed.elapsed() < Duration::from_secs(5),
                    "collectors still failing 5 s after the faults stopped: {failing:?}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        },
    );
}

/// The value of `name=` in a tracing fmt line, quoted or not.
fn field(line: &str, name: &str) -> Option<String> {
    let at = line.find(&format!(" {name}="))? + name.len() + 2;
    let rest = &line[at..];
    let value = match rest.strip_prefix('"') {
        Some(quoted) => quoted.split('"').next()?,
        None => rest.split_whitespace().next()?,
    };
    Some(value.to_string())
}

/// The daemon without the capabilities that would let it read a directory
/// whatever its mode: in the test's user namespace it is root, and its
/// files belong to that root.
fn without_dac_override() -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--inh-caps=-dac_override,-dac_read_search",
        "--bounding-set=-dac_override,-dac_read_search",
        "--",
    ]);
    cmd
}

#[test]
fn a_bad_run_netns_path_is_reported() {
    in_netns("a_bad_run_netns_path_is_reported", || {
        let dir = tempdir("bad-run-netns");
        let file = dir.join("a-file");
        std::fs::write(&file, "not a directory\n").expect("writing a plain file");
        let closed = dir.join("closed");
        std::fs::create_dir(&closed).expect("creating a directory");
        std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o000))
            .expect("chmod 000");
        let listed = without_dac_override()
            .arg("ls")
            .arg(&closed)
            .output()
            .expect("running setpriv (package util-linux)");
        assert!(
            !listed.status.success(),
            "without CAP_DAC_OVERRIDE a mode-000 directory should not be listable"
        );

        // Every case is checked before failing, so one run tells them all.
        let unreported: Vec<String> = [&file, &closed]
            .into_iter()
            .filter_map(|path| bad_path_is_reported(path, &dir).err())
            .collect();
        assert!(unreported.is_empty(), "{}", unreported.join("\n\n"));
        missing_path_is_not_reported(&dir.join("absent"), &dir);

        let _ = std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o755));
        let _ = std::fs::remove_dir_all(&dir);
    });
}

/// Starts the daemon (without DAC override) on `run_netns`, its stderr in
/// `dir`.
fn start_on(run_netns: &Path, dir: &Path) -> (Daemon, std::path::PathBuf) {
    let name = run_netns
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("run-netns");
    let log = dir.join(format!("{name}.log"));
    let mut cmd = without_dac_override();
    cmd.arg(exporter_bin())
        .stderr(std::fs::File::create(&log).expect("creating the daemon's log"));
    let daemon = Daemon::start_command(
        cmd,
        &netns_flags(run_netns.to_str().expect("temp path is UTF-8")),
    );
    (daemon, log)
}

/// `/healthz` lines about namespace discovery that name `path`.
fn health_lines_naming(daemon: &Daemon, path: &str) -> (Vec<String>, String) {
    let (_, body) = daemon.get("/healthz");
    let lines = body
        .lines()
        .filter(|l| l.starts_with("netns:") && l.contains(path))
        .map(str::to_string)
        .collect();
    (lines, body)
}

/// WARN lines of the log that name `path`.
fn warnings_naming(log: &Path, path: &str) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.split_whitespace().nth(1) == Some("WARN") && l.contains(path))
        .map(str::to_string)
        .collect()
}

/// A WARN naming `path` and a `netns:` line in `/healthz` naming it, while
/// the daemon goes on serving; else what was missing.
fn bad_path_is_reported(path: &Path, dir: &Path) -> Result<(), String> {
    let shown = path.to_str().expect("temp path is UTF-8");
    let (daemon, log) = start_on(path, dir);
    let start = Instant::now();
    loop {
        let warned = warnings_naming(&log, shown);
        let (health, body) = health_lines_naming(&daemon, shown);
        if !warned.is_empty() && !health.is_empty() {
            break;
        }
        if start.elapsed() > Duration::from_secs(5) {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            let warnings: Vec<&str> = log.lines().filter(|l| l.contains(" WARN ")).collect();
            return Err(format!(
                "--path.run-netns {shown} cannot be listed and is not reported within 5 s: \
                 WARN lines naming it: {warned:?}; /healthz:\n{body}all WARN lines:\n{}",
                warnings.join("\n")
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let m = daemon.metrics();
    assert_eq!(m.value("sockdiag_netns_up", &[("netns", "host")]), 1.0);
    Ok(())
}

/// A node where `ip netns` was never used has no `/run/netns`: nothing to
/// report. Checked after two discovery passes, which is when a bad path
/// shows.
fn missing_path_is_not_reported(path: &Path, dir: &Path) {
    let shown = path.to_str().expect("temp path is UTF-8");
    let (daemon, log) = start_on(path, dir);
    let pass = |d: &Daemon| {
        d.metrics().value_or_zero(
            "sockdiag_collector_last_success_timestamp_seconds",
            &[("collector", "netns")],
        )
    };
    let mut seen = vec![pass(&daemon)];
    let start = Instant::now();
    while seen.len() < 3 {
        let t = pass(&daemon);
        if Some(&t) != seen.last() {
            seen.push(t);
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "namespace discovery did not run twice in 5 s: {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(warnings_naming(&log, shown), Vec::<String>::new());
    let (health, body) = health_lines_naming(&daemon, shown);
    assert!(
        health.is_empty(),
        "a missing --path.run-netns is normal:\n{body}"
    );
}
