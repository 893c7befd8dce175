//! The deployment artefacts under deploy/ and dashboards/: Prometheus rules and
//! their unit tests (promtool), the systemd unit (systemd-analyze), the
//! PrometheusRule mirroring rules.yml, metric names against the exporter's
//! metric table, the Grafana dashboard, and end-to-end runs of a real
//! Prometheus server alerting on a real accept-queue overflow (TCP and unix)
//! and on a real UDP receiver dropping datagrams.
//!
//! Tools come from Debian packages: `prometheus` (promtool, prometheus) and
//! `systemd` (systemd-analyze). A missing tool fails the test with the package
//! to install; nothing is skipped.

mod common;

use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::TempDir;
use serde_json::Value;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
}

/// Fails with the Debian package to install when `tool` is not on PATH.
fn require_tool(tool: &str, package: &str) {
    match Command::new(tool)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => panic!(
            "`{tool}` is not installed: install the Debian package `{package}` \
             (apt-get install -y {package})"
        ),
        Err(e) => panic!("running `{tool} --version`: {e}"),
    }
}

/// Runs `tool args` in the crate root and returns its output, failing with
/// both streams when it does not exit 0.
fn run_ok(tool: &str, package: &str, args: &[&str]) -> Output {
    require_tool(tool, package);
    let out = Command::new(tool)
        .args(args)
        .current_dir(root())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {tool}: {e}"));
    assert!(
        out.status.success(),
        "`{tool} {}` failed ({}):\n{}\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn promtool_checks_rules() {
    let out = run_ok(
        "promtool",
        "prometheus",
        &["check", "rules", "deploy/prometheus/rules.yml"],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("SUCCESS"), "promtool check rules: {text}");
}

#[test]
fn promtool_unit_tests_pass() {
    run_ok(
        "promtool",
        "prometheus",
        &["test", "rules", "deploy/prometheus/rules_test.yml"],
    );
}

#[test]
fn promtool_checks_example_config() {
    run_ok(
        "promtool",
        "prometheus",
        &["check", "config", "deploy/prometheus/prometheus.yml"],
    );
}

/// Alert names defined in rules.yml (with repeats for several severities).
fn alert_names(rules: &str) -> BTreeSet<String> {
    rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(|n| n.trim().to_string())
        .collect()
}

/// Recording rule names defined in rules.yml.
fn record_names(rules: &str) -> BTreeSet<String> {
    rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- record:"))
        .map(|n| n.trim().to_string())
        .collect()
}

#[test]
fn every_alert_is_unit_tested_and_documented() {
    let rules = read("deploy/prometheus/rules.yml");
    let tests = read("deploy/prometheus/rules_test.yml");
    let runbook = read("deploy/prometheus/README.md");
    let alerts = alert_names(&rules);
    assert!(alerts.len() >= 10, "too few alerts: {alerts:?}");
    for alert in &alerts {
        let tested: Vec<&str> = tests
            .lines()
            .filter(|l| l.trim() == format!("alertname: {alert}"))
            .collect();
        // At least one case where it fires and one where it must not.
        assert!(
            tested.len() >= 2,
            "{alert} needs promtool cases where it fires and where it does not"
        );
        assert!(
            runbook.contains(&format!("### {alert}")),
            "deploy/prometheus/README.md has no `### {alert}` runbook section"
        );
    }
    // Every alert carries a severity and the annotations an on-call needs.
    let blocks: Vec<&str> = rules.split("- alert:").skip(1).collect();
    for block in blocks {
        let block = block.split("- record:").next().unwrap_or(block);
        let name = block.lines().next().unwrap_or("").trim();
        for needle in ["severity:", "summary:", "description:", "runbook:", "for:"] {
            assert!(block.contains(needle), "alert {name} lacks `{needle}`");
        }
    }
}

/// Each alert block of rules.yml: its name and its expression.
fn alert_exprs(rules: &str) -> Vec<(String, String)> {
    rules
        .split("- alert:")
        .skip(1)
        .map(|block| {
            let block = block.split("- record:").next().unwrap_or(block);
            let name = block.lines().next().unwrap_or("").trim().to_string();
            let expr = yaml_exprs(block).join(" ");
            (name, expr)
        })
        .collect()
}

/// Alerts that can fire for a unix listener (their expression reads only
/// per-listener metrics unix listeners have) must be unit tested firing on
/// one, with the annotations pinned (they must read well without a port);
/// and at least the full-queue alert is among them.
#[test]
fn listener_alerts_are_unit_tested_on_unix_listeners() {
    let rules = read("deploy/prometheus/rules.yml");
    let tests = read("deploy/prometheus/rules_test.yml");
    // Alert names with a firing case on a family="unix" series whose
    // expected annotations are given.
    let mut unix_firing = BTreeSet::new();
    let lines: Vec<&str> = tests.lines().map(str::trim).collect();
    let mut current: Option<&str> = None;
    for (i, line) in lines.iter().enumerate() {
        if line.starts_with("- eval_time:") {
            current = None;
        } else if let Some(name) = line.strip_prefix("alertname:") {
            current = Some(name.trim());
        } else if line.starts_with("- exp_labels:") && line.contains("family: unix") {
            let name = current.expect("exp_labels after an alertname");
            assert_eq!(
                lines.get(i + 1).copied(),
                Some("exp_annotations:"),
                "{name}: unix case without expected annotations"
            );
            unix_firing.insert(name.to_string());
        }
    }
    let for_unix: Vec<String> = alert_exprs(&rules)
        .into_iter()
        .filter(|(_, expr)| shows_unix_listeners(expr))
        .map(|(name, _)| name)
        .collect();
    assert!(
        for_unix.iter().any(|n| n == "SockdiagAcceptQueueFull"),
        "SockdiagAcceptQueueFull should apply to unix listeners: {for_unix:?}"
    );
    for name in &for_unix {
        assert!(
            unix_firing.contains(name),
            "{name} can fire for unix listeners: rules_test.yml needs a case where it fires \
             for a family=\"unix\" series, with exp_annotations"
        );
    }
}

#[test]
fn systemd_unit_verifies() {
    let unit = read("deploy/systemd/sockdiag-exporter.service");
    for directive in [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "DynamicUser=yes",
        // Exactly the three capabilities the Privileges table names.
        "CapabilityBoundingSet=\nCapabilityBoundingSet=CAP_SYS_ADMIN CAP_SYS_PTRACE CAP_DAC_READ_SEARCH\n",
        "AmbientCapabilities=\nAmbientCapabilities=CAP_SYS_ADMIN CAP_SYS_PTRACE CAP_DAC_READ_SEARCH\n",
        "RestrictNamespaces=net\n",
        "RestrictAddressFamilies=AF_NETLINK AF_INET AF_INET6 AF_UNIX",
        "SystemCallFilter=@system-service",
        "Restart=on-failure",
        // Where the Debian package puts the binary.
        "ExecStart=/usr/bin/sockdiag-exporter",
        // Served on the socket unit's port, configured by the package's files.
        "--web.systemd-socket",
        "--web.config.file=/etc/sockdiag-exporter/web-config.yml",
        "EnvironmentFile=-/etc/default/sockdiag-exporter\n",
        "Requires=sockdiag-exporter.socket\n",
        "After=sockdiag-exporter.socket ",
        // Started at boot, not on the first scrape: peaks need history.
        "WantedBy=multi-user.target\nAlso=sockdiag-exporter.socket\n",
    ] {
        assert!(unit.contains(directive), "unit lacks `{directive}`");
    }
    let socket = read("deploy/systemd/sockdiag-exporter.socket");
    for directive in [
        "ListenStream=19101\n",
        "BindIPv6Only=both\n",
        "Accept=no\n",
        "WantedBy=sockets.target",
    ] {
        assert!(
            socket.contains(directive),
            "socket unit lacks `{directive}`"
        );
    }
    // verify needs ExecStart to exist: point a copy at the binary under test.
    // The socket is verified beside the service, which it activates.
    let dir = TempDir::new("systemd");
    let service_copy = dir.0.join("sockdiag-exporter.service");
    std::fs::write(
        &service_copy,
        unit.replace("/usr/bin/sockdiag-exporter", common::exporter_bin()),
    )
    .expect("writing the unit copy");
    let socket_copy = dir.0.join("sockdiag-exporter.socket");
    std::fs::write(&socket_copy, &socket).expect("writing the socket unit copy");
    let out = run_ok(
        "systemd-analyze",
        "systemd",
        &[
            "verify",
            socket_copy.to_str().expect("utf-8 temp path"),
            service_copy.to_str().expect("utf-8 temp path"),
        ],
    );
    // Warnings about these units (unknown directive, bad value) are failures;
    // lines about the host's own units are not ours.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("sockdiag-exporter"))
        .collect();
    assert!(ours.is_empty(), "systemd-analyze verify: {ours:#?}");
}

/// No Docker engine runs here to build the image: at least it must build the
/// same stripped dist binary as the Debian package, and copy that one.
#[test]
fn dockerfile_ships_the_dist_binary() {
    let dockerfile = read("deploy/Dockerfile");
    for needed in [
        "cargo build --profile dist --locked --bin sockdiag-exporter",
        "COPY --from=build /src/target/dist/sockdiag-exporter ",
    ] {
        assert!(dockerfile.contains(needed), "Dockerfile lacks `{needed}`");
    }
    assert!(
        !dockerfile.contains("target/release/"),
        "Dockerfile still uses the release profile's binary (debug info)"
    );
    let manifest = read("Cargo.toml");
    let dist = manifest
        .split("[profile.dist]")
        .nth(1)
        .expect("Cargo.toml has a [profile.dist]");
    for needed in ["strip = true", "debug = false"] {
        assert!(dist.contains(needed), "[profile.dist] lacks `{needed}`");
    }
}

/// The lines of a YAML block that matter for comparison: comments and blank
/// lines dropped, trailing spaces trimmed, `indent` leading spaces removed.
fn normalized(lines: &[&str], indent: usize) -> Vec<String> {
    lines
        .iter()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|l| {
            let lead = l.len() - l.trim_start().len();
            assert!(lead >= indent, "line less indented than its block: {l:?}");
            l[indent..].trim_end().to_string()
        })
        .collect()
}

#[test]
fn prometheusrule_groups_equal_rules_yml() {
    let rules = read("deploy/prometheus/rules.yml");
    let cr = read("deploy/kubernetes/prometheusrule.yaml");
    assert!(cr.contains("kind: PrometheusRule"), "not a PrometheusRule");
    let rules_lines: Vec<&str> = rules.lines().collect();
    let start = rules_lines
        .iter()
        .position(|l| *l == "groups:")
        .expect("rules.yml has a top-level `groups:`");
    let cr_lines: Vec<&str> = cr.lines().collect();
    let spec = cr_lines
        .iter()
        .position(|l| *l == "spec:")
        .expect("prometheusrule.yaml has a top-level `spec:`");
    let body = &cr_lines[spec + 1..];
    // Everything after `spec:` is the groups block (nothing else in spec).
    assert!(
        body.iter().all(|l| l.is_empty() || l.starts_with("  ")),
        "prometheusrule.yaml has top-level keys after `spec:`"
    );
    let first = body
        .iter()
        .find(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
    assert_eq!(first.map(|l| l.trim()), Some("groups:"));
    let ours = normalized(&rules_lines[start..], 0);
    let theirs = normalized(body, 2);
    for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        assert_eq!(
            a, b,
            "rules.yml and prometheusrule.yaml differ at line {i} of groups"
        );
    }
    assert_eq!(
        ours.len(),
        theirs.len(),
        "rules.yml and prometheusrule.yaml groups differ in length"
    );
}

/// Metric names in README.md's generated metrics table.
fn exporter_metrics() -> BTreeSet<String> {
    let readme = read("README.md");
    let table = readme
        .split("<!-- metrics-table:begin -->")
        .nth(1)
        .and_then(|t| t.split("<!-- metrics-table:end -->").next())
        .expect("README.md has the generated metrics table");
    let names: BTreeSet<String> = table
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_string)
        .collect();
    assert!(
        names.contains("sockdiag_accept_queue_length"),
        "metrics table: {names:?}"
    );
    names
}

const PROMQL_WORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "group",
    "inf",
    "nan",
    "atan2",
];

/// Skips a quoted string starting at `i` (at the quote); returns the index after it.
fn skip_string(b: &[u8], i: usize) -> usize {
    let q = b[i];
    let mut j = i + 1;
    while j < b.len() && b[j] != q {
        if b[j] == b'\\' {
            j += 1;
        }
        j += 1;
    }
    j + 1
}

/// Skips from an opening bracket at `i` to after its closing `close`.
fn skip_to(b: &[u8], i: usize, close: u8) -> usize {
    let mut j = i + 1;
    while j < b.len() && b[j] != close {
        if b[j] == b'"' || b[j] == b'\'' || b[j] == b'`' {
            j = skip_string(b, j);
        } else {
            j += 1;
        }
    }
    j + 1
}

/// Metric names a PromQL expression selects (functions, keywords, label
/// matchers, ranges, numbers, durations and `$variables` left out).
fn metric_names_in(expr: &str) -> Vec<String> {
    let b = expr.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    while i < b.len() {
        let c = b[i];
        if c == b'"' || c == b'\'' || c == b'`' {
            i = skip_string(b, i);
        } else if c == b'{' {
            i = skip_to(b, i, b'}');
        } else if c == b'[' {
            i = skip_to(b, i, b']');
        } else if c.is_ascii_digit() || c == b'.' || c == b'$' {
            i += 1;
            while i < b.len() && (ident(b[i]) || b[i] == b'.') && b[i] != b':' {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == b'_' || c == b':' {
            let start = i;
            while i < b.len() && ident(b[i]) {
                i += 1;
            }
            let word = &expr[start..i];
            let mut k = i;
            while k < b.len() && b[k].is_ascii_whitespace() {
                k += 1;
            }
            let call = k < b.len() && b[k] == b'(';
            let lower = word.to_ascii_lowercase();
            if [
                "by",
                "without",
                "on",
                "ignoring",
                "group_left",
                "group_right",
            ]
            .contains(&lower.as_str())
                && call
            {
                i = skip_to(b, k, b')');
            } else if !call && !PROMQL_WORDS.contains(&lower.as_str()) {
                out.push(word.to_string());
            }
        } else {
            i += 1;
        }
    }
    out
}

/// `expr:` values of a YAML file (single-line or folded `>-` blocks).
fn yaml_exprs(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start().trim_start_matches("- ");
        if let Some(value) = trimmed.strip_prefix("expr:") {
            let value = value.trim();
            if value.starts_with('>') || value.starts_with('|') {
                let indent = line.len() - line.trim_start().len();
                let mut parts = Vec::new();
                i += 1;
                while i < lines.len()
                    && (lines[i].trim().is_empty()
                        || lines[i].len() - lines[i].trim_start().len() > indent)
                {
                    parts.push(lines[i].trim());
                    i += 1;
                }
                out.push(parts.join(" "));
                continue;
            }
            out.push(value.trim_matches('\'').to_string());
        }
        i += 1;
    }
    out
}

/// Every PromQL expression of the dashboard (targets and variable queries,
/// `label_values(selector, label)` reduced to its selector).
fn dashboard_exprs(dash: &Value) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                if let Some(Value::String(e)) = map.get("expr") {
                    out.push(e.clone());
                }
                for v in map.values() {
                    walk(v, out);
                }
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    walk(&dash["panels"], &mut out);
    for var in dash["templating"]["list"]
        .as_array()
        .expect("templating list")
    {
        if let Some(def) = var["definition"].as_str() {
            out.push(label_values_selector(def));
        }
    }
    out
}

fn label_values_selector(def: &str) -> String {
    let inner = def
        .trim()
        .strip_prefix("label_values(")
        .and_then(|s| s.strip_suffix(')'))
        .unwrap_or_else(|| panic!("variable query is not label_values(...): {def}"));
    let (selector, _label) = inner
        .rsplit_once(',')
        .unwrap_or_else(|| panic!("label_values without a selector: {def}"));
    selector.trim().to_string()
}

fn dashboard() -> Value {
    serde_json::from_str(&read("dashboards/sockdiag-exporter.json"))
        .expect("dashboards/sockdiag-exporter.json is valid JSON")
}

#[test]
fn metric_names_exist() {
    let known = exporter_metrics();
    let rules = read("deploy/prometheus/rules.yml");
    let records = record_names(&rules);
    let ok = |name: &str| name == "up" || known.contains(name) || records.contains(name);

    // Any `sockdiag_...` or `sockdiag:...` word anywhere, prose included.
    let files = [
        "deploy/prometheus/rules.yml",
        "deploy/prometheus/rules_test.yml",
        "deploy/prometheus/README.md",
        "dashboards/sockdiag-exporter.json",
    ];
    for file in files {
        let text = read(file);
        let b = text.as_bytes();
        let mut i = 0;
        while let Some(pos) = text[i..].find("sockdiag") {
            let start = i + pos;
            let mut end = start;
            while end < b.len()
                && (b[end].is_ascii_alphanumeric() || b[end] == b'_' || b[end] == b':')
            {
                end += 1;
            }
            let word = text[start..end].trim_end_matches(':');
            let before_ok =
                start == 0 || !(b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'_');
            if before_ok && (word.starts_with("sockdiag_") || word.starts_with("sockdiag:")) {
                assert!(
                    ok(word),
                    "{file}: `{word}` is neither an exporter metric nor a recording rule"
                );
            }
            i = end.max(start + 1);
        }
    }

    // Every selector of every expression.
    let tests = read("deploy/prometheus/rules_test.yml");
    let mut exprs = yaml_exprs(&rules);
    exprs.extend(yaml_exprs(&tests));
    for line in tests.lines() {
        let t = line.trim().trim_start_matches("- ");
        for key in ["series:", "labels:"] {
            if let Some(v) = t.strip_prefix(key) {
                exprs.push(v.trim().trim_matches('\'').to_string());
            }
        }
    }
    exprs.extend(dashboard_exprs(&dashboard()));
    assert!(
        exprs.len() > 40,
        "too few expressions found: {}",
        exprs.len()
    );
    for expr in &exprs {
        let names = metric_names_in(expr);
        for name in names {
            assert!(
                ok(&name),
                "`{name}` in `{expr}` is not an exporter metric, `up` or a recording rule"
            );
        }
    }
}

#[test]
fn promql_tokenizer_finds_names() {
    assert_eq!(
        metric_names_in(
            r#"sum without (member) (rate(a_total{x="y{z}"}[5m] offset 1h)) > 0.5 * on(i) group_left b and $v unless c"#
        ),
        ["a_total", "b", "c"]
    );
    assert_eq!(
        metric_names_in("time() - sockdiag:x:y > 300"),
        ["sockdiag:x:y"]
    );
}

#[test]
fn dashboard_is_importable() {
    let dash = dashboard();
    assert_eq!(dash["uid"].as_str(), Some("sockdiag-exporter"));
    assert!(dash["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(dash["schemaVersion"].as_u64().is_some_and(|v| v >= 30));
    let vars = dash["templating"]["list"]
        .as_array()
        .expect("templating.list");
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("dashboard variable `{name}` missing"))
    };
    let ds = var("datasource");
    assert_eq!(ds["type"], "datasource");
    assert_eq!(ds["query"], "prometheus");
    for name in ["instance", "netns", "port"] {
        let v = var(name);
        assert_eq!(v["type"], "query", "variable {name}");
        // All must match series without the label too: `.*` matches the
        // empty value, `.+` or Grafana's default list of values would
        // hide every unix listener (no `port`).
        assert_eq!(v["allValue"], ".*", "variable {name}");
        let def = v["definition"].as_str().unwrap_or_default();
        assert!(def.starts_with("label_values("), "variable {name}: {def}");
        assert!(
            def.trim_end().ends_with(&format!("{name})")),
            "variable {name}: {def}"
        );
        assert_eq!(v["datasource"]["uid"], "${datasource}", "variable {name}");
    }
    let panels = dash["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut titles = Vec::new();
    for p in panels {
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "duplicate panel id"
        );
        if p["type"] == "row" {
            continue;
        }
        let title = p["title"].as_str().expect("panel title");
        titles.push(title.to_string());
        assert!(
            p["description"].as_str().is_some_and(|d| d.len() > 20),
            "panel `{title}` has no description"
        );
        assert_eq!(p["datasource"]["uid"], "${datasource}", "panel `{title}`");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel `{title}` has no query");
        for t in targets {
            assert_eq!(
                t["datasource"]["uid"], "${datasource}",
                "panel `{title}` target"
            );
        }
        if p["type"] != "table" {
            assert!(
                p["fieldConfig"]["defaults"]["unit"].as_str().is_some(),
                "panel `{title}` has no unit"
            );
            assert!(
                p["fieldConfig"]["defaults"]["thresholds"]["steps"].is_array(),
                "panel `{title}` has no thresholds"
            );
        }
        let gp = &p["gridPos"];
        assert!(
            gp["w"].as_u64().is_some_and(|w| w > 0 && w <= 24),
            "panel `{title}` gridPos"
        );
    }
    let exprs = dashboard_exprs(&dash).join("\n");
    for metric in [
        "sockdiag_accept_queue_length",
        "sockdiag_accept_queue_peak_length",
        "sockdiag_accept_queue_limit",
        "sockdiag_listen_drops_total",
        "sockdiag_netstat_listen_overflows_total",
        "sockdiag_syn_queue_length",
        "sockdiag_tcp_send_queue_bytes",
        "sockdiag_tcp_recv_queue_bytes",
        "sockdiag_tcp_connections",
        "sockdiag_collector_success",
        "sockdiag_collector_errors_total",
        "sockdiag_collector_duration_seconds",
        "sockdiag_udp_receive_queue_bytes",
        "sockdiag_udp_receive_queue_peak_bytes",
        "sockdiag_udp_receive_buffer_bytes",
        "sockdiag_udp_drops_total",
        "sockdiag_udp_receiver_process_info",
        "sockdiag_netstat_udp_rcvbuf_errors_total",
    ] {
        assert!(exprs.contains(metric), "dashboard never queries {metric}");
    }
    // A row for unix listeners, with their owners' executables.
    assert!(
        titles.iter().any(|t| t.starts_with("Unix listeners")),
        "no unix listener panel: {titles:?}"
    );
    assert!(exprs.contains(r#"family="unix""#));
    // A row for UDP receivers, with their owners too.
    assert!(
        titles.iter().any(|t| t.starts_with("UDP receivers")),
        "no UDP receiver panel: {titles:?}"
    );
    let tables = panels.iter().filter(|p| p["type"] == "table");
    let renamed: Vec<&Value> = tables
        .flat_map(|p| p["transformations"].as_array().into_iter().flatten())
        .filter_map(|t| t["options"]["renameByName"].get("exe"))
        .collect();
    assert!(
        renamed.len() >= 3,
        "the listener and UDP receiver tables should show the owner's exe"
    );
}

// ---------------------------------------------------------------------------
// End to end: daemon + Prometheus server + a real overflow, in a private netns.

/// Percent-encodes a query parameter.
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Prometheus server killed (by its pid) when dropped.
struct PromServer {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl PromServer {
    /// Starts Prometheus scraping the exporter at `target` every second, with
    /// rules.yml's rules and every `for:` shortened to one evaluation, its
    /// files in `tmp`; waits (until `deadline`) for it to be ready. Every
    /// `[5m]` range of the rules becomes `rate_window` when given: an alert
    /// on a 5-minute rate stays active for 5 minutes after the events stop,
    /// far past a test's 60 s.
    fn start(
        tmp: &TempDir,
        target: SocketAddr,
        deadline: Instant,
        rate_window: Option<&str>,
    ) -> PromServer {
        let rules: String = read("deploy/prometheus/rules.yml")
            .lines()
            .map(|l| {
                let l = match rate_window {
                    Some(w) => l.replace("[5m]", &format!("[{w}]")),
                    None => l.to_string(),
                };
                if l.trim_start().starts_with("for:") {
                    format!("{}for: 1s", &l[..l.len() - l.trim_start().len()])
                } else {
                    l
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        let rules_path = tmp.0.join("rules.yml");
        std::fs::write(&rules_path, rules).expect("writing rules copy");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: sockdiag-exporter\n    static_configs:\n      - targets: ['{}']\n",
            rules_path.display(),
            target
        );
        let config_path = tmp.0.join("prometheus.yml");
        std::fs::write(&config_path, config).expect("writing prometheus.yml");
        let port = common::free_port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let log = tmp.0.join("prometheus.log");
        let log_file = std::fs::File::create(&log).expect("prometheus log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                tmp.0.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log fd"))
            .stderr(log_file)
            .spawn()
            .expect("starting prometheus");
        let prom = PromServer { child, addr, log };
        let ready = poll(
            deadline,
            Duration::from_millis(100),
            || matches!(common::http_get(addr, "/-/ready"), Ok((200, _))),
            |&ready| ready,
        );
        assert!(ready, "prometheus not ready:\n{}", prom.log_text());
        prom
    }

    fn get_json(&self, path: &str) -> Value {
        let (status, body) = common::http_get(self.addr, path)
            .unwrap_or_else(|e| panic!("GET {path} from Prometheus: {e}\n{}", self.log_text()));
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The active alerts named `name` whose label `label` is `value`.
    fn alerts(&self, name: &str, label: &str, value: &str) -> Vec<Value> {
        let v = self.get_json("/api/v1/alerts");
        v["data"]["alerts"]
            .as_array()
            .map(|all| {
                all.iter()
                    .filter(|a| a["labels"]["alertname"] == name && a["labels"][label] == value)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// State of alert `name` for the series whose label `label` is `value`.
    fn alert_state(&self, name: &str, label: &str, value: &str) -> Option<String> {
        self.alerts(name, label, value)
            .first()
            .map(|a| a["state"].as_str().unwrap_or("").to_string())
    }

    /// Runs an instant query, which must succeed; returns its series.
    fn query(&self, expr: &str) -> Vec<Value> {
        let v = self.get_json(&format!("/api/v1/query?query={}", urlencode(expr)));
        assert_eq!(v["status"], "success", "query `{expr}`: {v}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// Polls (every 250 ms, until `until`) for alert `name` on `label`=`value`
    /// to be firing; true if it did.
    fn wait_firing(&self, name: &str, label: &str, value: &str, until: Instant) -> bool {
        poll(
            until,
            Duration::from_millis(250),
            || self.alert_state(name, label, value).as_deref() == Some("firing"),
            |&firing| firing,
        )
    }

    /// Runs every expression of rules.yml (each must succeed); rules.yml.
    fn run_every_rule(&self) -> String {
        let rules = read("deploy/prometheus/rules.yml");
        for e in yaml_exprs(&rules) {
            self.query(&e);
        }
        rules
    }

    /// Runs every rule and every dashboard query (each must succeed);
    /// returns the dashboard queries and recording rules that are about
    /// `what` (`about` says which), at least ten of them.
    fn run_all_keep_about(&self, what: &str, about: impl Fn(&str) -> bool) -> Vec<String> {
        let rules = self.run_every_rule();
        let queries = dashboard_queries_with_all_selected();
        for e in &queries {
            self.query(e);
        }
        let wanted: Vec<String> = queries
            .into_iter()
            .chain(record_names(&rules))
            .filter(|e| about(e))
            .collect();
        assert!(wanted.len() >= 10, "too few {what} queries: {wanted:#?}");
        wanted
    }
}

/// Calls `look` every `every` until `done` accepts what it returns or
/// `until` has passed; the last look.
fn poll<T>(
    until: Instant,
    every: Duration,
    mut look: impl FnMut() -> T,
    done: impl Fn(&T) -> bool,
) -> T {
    loop {
        let seen = look();
        if done(&seen) || Instant::now() > until {
            return seen;
        }
        std::thread::sleep(every);
    }
}

/// One line of an end-to-end run's timeline, `t0` its start.
fn timeline(t0: Instant, what: &str) {
    eprintln!("e2e {:>6.2} s  {what}", t0.elapsed().as_secs_f64());
}

/// An end-to-end run: the exporter and a Prometheus server scraping it in
/// the test's namespace, 60 s for it all, and a timeline on the test's
/// output, what to read first when one fails in CI. Dropping it stops
/// Prometheus, then the exporter.
struct E2e {
    t0: Instant,
    deadline: Instant,
    prom: PromServer,
    daemon: common::Daemon,
    tmp: TempDir,
}

impl E2e {
    /// Starts both; `rate_window` as for [`PromServer::start`].
    fn start(tag: &str, rate_window: Option<&str>) -> E2e {
        let t0 = Instant::now();
        let deadline = t0 + Duration::from_secs(60);
        let tmp = TempDir::new(tag);
        let daemon = common::Daemon::start(&[]);
        timeline(t0, "exporter healthy");
        let prom = PromServer::start(&tmp, daemon.addr, deadline, rate_window);
        let ranges = rate_window.map_or(String::new(), |w| format!(", [5m] ranges {w}"));
        timeline(
            t0,
            &format!(
                "prometheus ready (scrape and evaluation every 1 s, every `for:` 1 s{ranges})"
            ),
        );
        E2e {
            t0,
            deadline,
            prom,
            daemon,
            tmp,
        }
    }

    fn mark(&self, what: &str) {
        timeline(self.t0, what);
    }

    /// Waits for SockdiagAcceptQueueFull on `label`=`value`, leaving 20 s of
    /// the run for what follows; whether it fired.
    fn wait_queue_full_alert(&self, label: &str, value: &str) -> bool {
        let fired = self.prom.wait_firing(
            "SockdiagAcceptQueueFull",
            label,
            value,
            self.deadline - Duration::from_secs(20),
        );
        self.mark(if fired {
            "SockdiagAcceptQueueFull firing"
        } else {
            "SockdiagAcceptQueueFull not firing by its deadline"
        });
        fired
    }

    /// How long queries may take to show data: 15 s, leaving `after` of the
    /// run for what follows.
    fn data_deadline(&self, after: Duration) -> Instant {
        (Instant::now() + Duration::from_secs(15)).min(self.deadline - after)
    }

    /// Accepts from `listener` until SockdiagAcceptQueueFull for
    /// `label`=`value` resolves, or the run's deadline; whether it resolved,
    /// and the connections accepted.
    fn drain_until_resolved(
        &self,
        listener: &socket2::Socket,
        label: &str,
        value: &str,
    ) -> (bool, Vec<socket2::Socket>) {
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let mut accepted = Vec::new();
        let resolved = poll(
            self.deadline,
            Duration::from_millis(250),
            || {
                while let Ok((s, _)) = listener.accept() {
                    accepted.push(s);
                }
                self.prom
                    .alert_state("SockdiagAcceptQueueFull", label, value)
                    .is_none()
            },
            |&resolved| resolved,
        );
        self.mark("queue drained; SockdiagAcceptQueueFull resolved");
        (resolved, accepted)
    }
}

/// The owner join's series names this test process: its pid and its
/// executable.
fn assert_owned_by_this_process(owner: &[Value]) {
    let me = std::env::current_exe().expect("the test binary's path");
    assert_eq!(
        owner[0]["metric"]["pid"],
        std::process::id().to_string().as_str()
    );
    assert_eq!(
        owner[0]["metric"]["exe"],
        me.to_str().expect("utf-8 binary path"),
        "{owner:?}"
    );
}

impl Drop for PromServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every dashboard expression as Grafana sends it with each variable set
/// to All: its `allValue` (what decides whether series without that label,
/// such as unix listeners without `port`, stay visible), rate and step
/// intervals at typical values.
fn dashboard_queries_with_all_selected() -> Vec<String> {
    let dash = dashboard();
    let vars: Vec<(String, String)> = dash["templating"]["list"]
        .as_array()
        .expect("templating list")
        .iter()
        .filter_map(|v| {
            let all = v["allValue"].as_str()?;
            Some((format!("${}", v["name"].as_str()?), all.to_string()))
        })
        .collect();
    dashboard_exprs(&dash)
        .into_iter()
        .map(|e| {
            let e = e
                .replace("$__rate_interval", "1m")
                .replace("$__interval", "15s");
            vars.iter().fold(e, |e, (name, all)| e.replace(name, all))
        })
        .collect()
}

/// Per-listener metrics a unix listener has, and those only TCP listeners
/// have (absent, not zero, for unix).
const UNIX_LISTENER_METRICS: &[&str] = &[
    "sockdiag_accept_queue_length",
    "sockdiag_accept_queue_limit",
    "sockdiag_accept_queue_peak_length",
    "sockdiag_accept_queue_full_seconds_total",
    "sockdiag_listener_process_info",
    "sockdiag:accept_queue_fill_ratio",
    "sockdiag:accept_queue_fill_ratio:max_by_address",
    "sockdiag:accept_queue_peak_ratio",
    "sockdiag:accept_queue_full_seconds:rate5m",
];
const TCP_ONLY_LISTENER_METRICS: &[&str] = &[
    "sockdiag_listen_drops_total",
    "sockdiag_syn_queue_length",
    "sockdiag_accept_queue_bytes",
    "sockdiag_accept_queue_oldest_seconds",
    "sockdiag:listen_drops:rate5m",
];

/// Whether `expr` can return unix listeners: it reads a per-listener metric
/// unix listeners have, none that only TCP listeners have, and does not
/// leave unix out itself.
fn shows_unix_listeners(expr: &str) -> bool {
    let names = metric_names_in(expr);
    names
        .iter()
        .any(|n| UNIX_LISTENER_METRICS.contains(&n.as_str()))
        && !names
            .iter()
            .any(|n| TCP_ONLY_LISTENER_METRICS.contains(&n.as_str()))
        && !expr.contains(r#"family!="unix""#)
}

/// Whether `expr` reads a UDP metric or recording rule (every UDP name
/// has `udp` in it; no other does).
fn reads_udp(expr: &str) -> bool {
    metric_names_in(expr).iter().any(|n| n.contains("udp"))
}

/// Waits, bounded by `deadline`, until every expression in `pending`
/// returns a series that `ours` accepts; returns those that never did.
/// Rates need two scrapes and recording rules an evaluation after them, so
/// an alert can fire before its panels have data.
fn wait_for_data(
    prom: &PromServer,
    mut pending: Vec<String>,
    deadline: Instant,
    ours: impl Fn(&str, &[Value]) -> bool,
) -> Vec<String> {
    poll(
        deadline,
        Duration::from_millis(500),
        || {
            pending.retain(|e| !ours(e, &prom.query(e)));
            pending.is_empty()
        },
        |&done| done,
    );
    pending
}

#[test]
fn prometheus_alerts_on_real_overflow() {
    require_tool("prometheus", "prometheus");
    common::in_netns("prometheus_alerts_on_real_overflow", || {
        let e2e = E2e::start("e2e", None);
        let prom = &e2e.prom;

        // listen(5): the queue holds 6 (full: length > limit); the rest of
        // the 10 clients sit in SYN-SENT.
        let target: SocketAddr = ([127, 0, 0, 1], common::free_port()).into();
        let port = target.port().to_string();
        let listener = common::listen(target, 5, false, None);
        let clients: Vec<socket2::Socket> =
            (0..10).map(|_| common::start_connect(target)).collect();
        e2e.mark("listen(5) queue overflowed by 10 clients");

        let fired = e2e.wait_queue_full_alert("port", &port);
        assert!(
            fired,
            "SockdiagAcceptQueueFull never fired for port {port}: {}\n{}",
            prom.get_json("/api/v1/alerts"),
            prom.log_text()
        );
        // The alert is for our listener only, with its labels.
        let alerts = prom.get_json("/api/v1/alerts");
        let ours: Vec<&Value> = alerts["data"]["alerts"]
            .as_array()
            .expect("alerts")
            .iter()
            .filter(|a| a["labels"]["alertname"] == "SockdiagAcceptQueueFull")
            .collect();
        assert_eq!(ours.len(), 1, "{alerts}");
        assert_eq!(ours[0]["labels"]["address"], "127.0.0.1");
        assert_eq!(ours[0]["labels"]["netns"], "host");
        assert_eq!(ours[0]["labels"]["severity"], "critical");

        // Every rule and dashboard expression parses and runs; every
        // dashboard query and every recording rule also returns series
        // (with a queue overflowing, each panel has something to show).
        // Queries of unix listeners only (the Unix listeners row) and of UDP
        // (the UDP receivers row, the udp recording rules) have nothing
        // here: the unix and UDP end-to-end tests require their data.
        let rules = prom.run_every_rule();
        let wanted: Vec<String> = dashboard_queries_with_all_selected()
            .into_iter()
            .filter(|e| !e.contains(r#"family="unix""#))
            .chain(record_names(&rules))
            .filter(|e| !reads_udp(e))
            .collect();
        // Within the test's 60 s, leaving time for the queue to drain.
        let data_deadline = e2e.data_deadline(Duration::from_secs(10));
        let pending = wait_for_data(prom, wanted, data_deadline, |_, found| !found.is_empty());
        assert!(
            pending.is_empty(),
            "queries with no data during an overflow: {pending:#?}"
        );
        e2e.mark(
            "every rule and dashboard query ran; every panel query and recording rule has data",
        );
        let ratios = prom.query("sockdiag:accept_queue_fill_ratio:max_by_address");
        assert!(
            ratios.iter().any(|r| r["metric"]["port"] == port.as_str()),
            "no fill ratio recorded for port {port}: {ratios:?}"
        );

        // Drain the queue (and the clients that get in later); the alert resolves.
        let (resolved, accepted) = e2e.drain_until_resolved(&listener, "port", &port);
        assert!(
            resolved,
            "SockdiagAcceptQueueFull still active after draining: {}",
            prom.get_json("/api/v1/alerts")
        );
        assert!(accepted.len() >= 6, "accepted only {}", accepted.len());
        drop(clients);
        drop(e2e);
    });
}

/// A unix stream listener on `path` with `backlog`.
fn unix_listen(path: &Path, backlog: i32) -> socket2::Socket {
    let s = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)
        .expect("unix listener socket");
    let addr = socket2::SockAddr::unix(path).expect("unix socket address");
    s.bind(&addr)
        .unwrap_or_else(|e| panic!("bind {}: {e}", path.display()));
    s.listen(backlog).expect("listen on the unix socket");
    s
}

/// A non-blocking connect to the unix socket at `path`: Ok once queued,
/// `EAGAIN` when the listener's queue is full (what nginx turns into 502).
fn unix_connect(path: &Path) -> std::io::Result<socket2::Socket> {
    let s = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)?;
    s.set_nonblocking(true)?;
    s.connect(&socket2::SockAddr::unix(path)?)?;
    Ok(s)
}

/// Needs the exporter's unix listener collector (`--collector.unix`, on by
/// default): without it no unix series exist and the alert never fires.
#[test]
fn prometheus_alerts_on_real_unix_overflow() {
    require_tool("prometheus", "prometheus");
    common::in_netns("prometheus_alerts_on_real_unix_overflow", || {
        let e2e = E2e::start("e2e-unix", None);
        let (prom, daemon) = (&e2e.prom, &e2e.daemon);

        // listen(2) on a path: three connections fit (full: length 3 >
        // limit 2), the other three clients are refused with EAGAIN.
        let path = e2e.tmp.0.join("app.sock");
        let path_text = path.to_str().expect("utf-8 temp path").to_string();
        let listener = unix_listen(&path, 2);
        let attempts: Vec<std::io::Result<socket2::Socket>> =
            (0..6).map(|_| unix_connect(&path)).collect();
        let refused = attempts
            .iter()
            .filter(|r| {
                r.as_ref()
                    .err()
                    .is_some_and(|e| e.raw_os_error() == Some(libc::EAGAIN))
            })
            .count();
        let clients: Vec<socket2::Socket> = attempts.into_iter().filter_map(Result::ok).collect();
        assert_eq!(
            (clients.len(), refused),
            (3, 3),
            "listen(2) on a unix socket should queue 3 of 6 clients and refuse the rest"
        );
        e2e.mark("unix listen(2) queue full: 3 queued, 3 refused with EAGAIN");

        let fired = e2e.wait_queue_full_alert("address", &path_text);
        assert!(
            fired,
            "SockdiagAcceptQueueFull never fired for {path_text} (does the exporter have the unix \
             collector?): {}\nunix series: {:?}\n{}",
            prom.get_json("/api/v1/alerts"),
            prom.query(r#"sockdiag_accept_queue_length{family="unix"}"#),
            prom.log_text()
        );
        let ours = prom.alerts("SockdiagAcceptQueueFull", "address", &path_text);
        assert_eq!(ours.len(), 1, "{ours:?}");
        let labels = &ours[0]["labels"];
        assert_eq!(labels["family"], "unix", "{labels}");
        assert_eq!(labels["netns"], "host", "{labels}");
        assert_eq!(labels["severity"], "critical", "{labels}");
        assert!(
            labels.get("port").is_none(),
            "a unix alert with a port: {labels}"
        );
        assert!(
            labels.get("member").is_none(),
            "one listener, no member: {labels}"
        );
        let summary = ours[0]["annotations"]["summary"].as_str().unwrap_or("");
        assert_eq!(
            summary,
            format!(
                "Accept queue full on unix socket {path_text} (netns host, {})",
                daemon.addr
            )
        );
        let description = ours[0]["annotations"]["description"].as_str().unwrap_or("");
        assert!(
            description.contains(&format!("unix socket {path_text} in netns host"))
                && description.contains("holds 3 connections")
                && !description.contains(" port "),
            "description: {description}"
        );

        // Every rule and dashboard query runs; each recording rule and
        // dashboard query over metrics unix listeners have shows ours (the
        // Port variable at All must not hide a series without `port`), and
        // the legend label built for both kinds is the path alone.
        let wanted = prom.run_all_keep_about("unix", shows_unix_listeners);
        let ours_in = |series: &[Value]| {
            series
                .iter()
                .filter(|s| s["metric"]["address"] == path_text.as_str())
                .cloned()
                .collect::<Vec<Value>>()
        };
        // Within the test's 60 s, leaving time for the queue to drain.
        let data_deadline = e2e.data_deadline(Duration::from_secs(10));
        let pending = wait_for_data(prom, wanted, data_deadline, |e, series| {
            let found = ours_in(series);
            for s in &found {
                assert_eq!(s["metric"]["family"], "unix", "`{e}`: {s}");
                if let Some(l) = s["metric"].get("listener") {
                    assert_eq!(l, path_text.as_str(), "legend label of `{e}`");
                }
            }
            !found.is_empty()
        });
        assert!(
            pending.is_empty(),
            "queries that do not show the full unix listener {path_text}: {pending:#?}"
        );
        e2e.mark("every rule and dashboard query ran; every unix listener query shows the socket");
        let ratio = ours_in(&prom.query("sockdiag:accept_queue_fill_ratio:max_by_address"));
        assert_eq!(ratio.len(), 1, "{ratio:?}");
        assert_eq!(ratio[0]["value"][1], "1.5", "3 queued on a backlog of 2");

        // The runbook's owner join names this process, by executable.
        let join = "(sockdiag_accept_queue_length > sockdiag_accept_queue_limit) \
                    * on (job, instance, netns, family, address, port, member) \
                    group_left (comm, exe, cmdline, pid, unit, container_id) \
                    sockdiag_listener_process_info";
        let owner = poll(
            data_deadline + Duration::from_secs(5),
            Duration::from_millis(500),
            || ours_in(&prom.query(join)),
            |found| !found.is_empty(),
        );
        assert_eq!(owner.len(), 1, "owner join for {path_text}: {owner:?}");
        assert_owned_by_this_process(&owner);
        assert!(
            owner[0]["metric"]["cmdline"]
                .as_str()
                .is_some_and(|c| !c.is_empty()),
            "{owner:?}"
        );
        e2e.mark("the owner join names this process with exe and cmdline");

        // Drain the queue; the alert resolves.
        let (resolved, accepted) = e2e.drain_until_resolved(&listener, "address", &path_text);
        assert!(
            resolved,
            "SockdiagAcceptQueueFull still active after draining {path_text}: {}",
            prom.get_json("/api/v1/alerts")
        );
        assert_eq!(accepted.len(), 3, "accepted {}", accepted.len());
        drop(clients);
        drop(e2e);
    });
}

/// A port a UDP socket may bind in this namespace and still count as a
/// receiver: outside `net.ipv4.ip_local_port_range`, where only clients'
/// ephemeral ports live.
fn receiver_port() -> u16 {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .expect("reading net.ipv4.ip_local_port_range");
    let bounds: Vec<u16> = range
        .split_whitespace()
        .map(|v| v.parse().expect("a port in ip_local_port_range"))
        .collect();
    match bounds[..] {
        [low, _] if low > 1024 => low - 1,
        [_, high] if high < u16::MAX => high + 1,
        _ => panic!("ip_local_port_range {range:?} leaves no port for a UDP receiver"),
    }
}

/// Drops the kernel counts for the UDP socket bound to `port` (`d` in
/// `ss -ulnm`'s skmem), 0 while it has none.
fn udp_drops_seen_by_ss(port: u16) -> u64 {
    let filter = format!("sport = :{port}");
    common::parse_ss(&common::ss(&["-ulnm", &filter]))
        .iter()
        .filter(|s| s.local_port() == port)
        .filter_map(|s| s.drops())
        .sum()
}

/// Needs the exporter's udp collector (`--collector.udp`, on by default):
/// without it no UDP series exist and the alert never fires.
#[test]
fn prometheus_alerts_on_real_udp_drops() {
    require_tool("prometheus", "prometheus");
    common::in_netns("prometheus_alerts_on_real_udp_drops", || {
        let e2e = E2e::start("e2e-udp", Some("10s"));
        let (prom, daemon, deadline) = (&e2e.prom, &e2e.daemon, e2e.deadline);

        // A receiver that never reads, with the smallest buffer the kernel
        // gives (4096 asked, doubled): a handful of datagrams fill it.
        let port = receiver_port();
        let port_text = port.to_string();
        let target: SocketAddr = ([127, 0, 0, 1], port).into();
        let receiver = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)
            .expect("UDP receiver socket");
        receiver.set_recv_buffer_size(4096).expect("SO_RCVBUF 4096");
        receiver
            .bind(&target.into())
            .unwrap_or_else(|e| panic!("bind {target}: {e}"));
        let buffer = receiver.recv_buffer_size().expect("reading SO_RCVBUF");
        assert!(
            (4096..=16384).contains(&buffer),
            "SO_RCVBUF 4096 gave a {buffer}-byte buffer"
        );

        // Flood it from loopback until the kernel drops (bounded: at most
        // 5000 datagrams), then keep datagrams coming in the background (100
        // every 100 ms, until told or the deadline) so the drop rate stays up
        // while Prometheus is asked.
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").expect("UDP sender socket");
        let payload = b"sockdiag-exporter deploy e2e";
        let mut sent = 0;
        while sent < 5000 && udp_drops_seen_by_ss(port) == 0 {
            for _ in 0..100 {
                sender.send_to(payload, target).expect("sending a datagram");
                sent += 1;
            }
        }
        let dropped = udp_drops_seen_by_ss(port);
        assert!(
            dropped > 0,
            "{sent} datagrams into a {buffer}-byte buffer and no drop in ss -ulnm"
        );
        e2e.mark(&format!(
            "{sent} datagrams sent to 127.0.0.1:{port} ({buffer}-byte buffer): {dropped} dropped"
        ));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flood = {
            let stop = stop.clone();
            let sender = sender.try_clone().expect("cloning the sender");
            std::thread::spawn(move || {
                let mut sent = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline
                {
                    for _ in 0..100 {
                        if sender.send_to(payload, target).is_ok() {
                            sent += 1;
                        }
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                sent
            })
        };

        // Both severities fire: hundreds of drops per second.
        let firing = |name: &str| -> Vec<Value> {
            prom.alerts(name, "port", &port_text)
                .into_iter()
                .filter(|a| a["state"] == "firing")
                .collect()
        };
        let fire_deadline = deadline - Duration::from_secs(25);
        let dropping = poll(
            fire_deadline,
            Duration::from_millis(250),
            || firing("SockdiagUdpReceiverDropping"),
            |found| found.len() >= 2,
        );
        e2e.mark(&format!(
            "SockdiagUdpReceiverDropping firing {} time(s)",
            dropping.len()
        ));
        assert_eq!(
            dropping.len(),
            2,
            "SockdiagUdpReceiverDropping should fire at warning and critical for port {port} \
             (does the exporter have the udp collector?): {}\nUDP series: {:?}\n{}",
            prom.get_json("/api/v1/alerts"),
            prom.query("{__name__=~\"sockdiag_udp_.*\"}"),
            prom.log_text()
        );
        let mut severities: Vec<&str> = dropping
            .iter()
            .map(|a| a["labels"]["severity"].as_str().unwrap_or(""))
            .collect();
        severities.sort_unstable();
        assert_eq!(severities, ["critical", "warning"]);
        for alert in &dropping {
            let labels = &alert["labels"];
            assert_eq!(labels["netns"], "host", "{labels}");
            assert_eq!(labels["family"], "ipv4", "{labels}");
            assert_eq!(labels["address"], "127.0.0.1", "{labels}");
            assert_eq!(labels["job"], "sockdiag-exporter", "{labels}");
            assert_eq!(
                labels["instance"],
                daemon.addr.to_string().as_str(),
                "{labels}"
            );
            assert!(
                labels.get("member").is_none(),
                "one socket, summed without member: {labels}"
            );
            let summary = alert["annotations"]["summary"].as_str().unwrap_or("");
            assert!(
                summary.starts_with(&format!("UDP receiver 127.0.0.1 port {port} drops "))
                    && summary.ends_with(&format!(" datagrams/s (netns host, {})", daemon.addr)),
                "summary: {summary}"
            );
            let description = alert["annotations"]["description"].as_str().unwrap_or("");
            assert!(
                description.contains(&format!(
                    "receiving on 127.0.0.1 port {port} in netns host on {}",
                    daemon.addr
                )),
                "description: {description}"
            );
        }
        // A queue held at its buffer by a reader that never reads.
        let full = poll(
            fire_deadline,
            Duration::from_millis(250),
            || firing("SockdiagUdpReceiveBufferFull"),
            |found| !found.is_empty(),
        );
        assert_eq!(full.len(), 1, "SockdiagUdpReceiveBufferFull: {full:?}");
        assert!(
            full[0]["labels"].get("member").is_none(),
            "{}",
            full[0]["labels"]
        );
        e2e.mark("SockdiagUdpReceiveBufferFull firing");

        // Every rule and dashboard query runs; each one about UDP shows our
        // socket (those with a port label) or our namespace (the others).
        let wanted = prom.run_all_keep_about("UDP", reads_udp);
        let data_deadline = e2e.data_deadline(Duration::from_secs(15));
        let pending = wait_for_data(prom, wanted, data_deadline, |e, series| {
            if series.iter().any(|s| s["metric"].get("port").is_some()) {
                let ours: Vec<&Value> = series
                    .iter()
                    .filter(|s| s["metric"]["port"] == port_text.as_str())
                    .collect();
                for s in &ours {
                    assert_eq!(s["metric"]["address"], "127.0.0.1", "`{e}`: {s}");
                    assert_eq!(s["metric"]["family"], "ipv4", "`{e}`: {s}");
                }
                !ours.is_empty()
            } else {
                series
                    .iter()
                    .any(|s| s["metric"].get("netns").is_none_or(|n| n == "host"))
            }
        });
        assert!(
            pending.is_empty(),
            "UDP queries that do not show the dropping receiver on port {port}: {pending:#?}"
        );
        e2e.mark(
            "every rule and dashboard query ran; every UDP query shows the socket or its netns",
        );
        let ratio: Vec<Value> = prom
            .query("sockdiag:udp_receive_buffer_fill_ratio")
            .into_iter()
            .filter(|s| s["metric"]["port"] == port_text.as_str())
            .collect();
        assert_eq!(ratio.len(), 1, "{ratio:?}");
        let fill: f64 = ratio[0]["value"][1]
            .as_str()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        assert!(
            fill > 0.8,
            "fill ratio of a receiver that never reads: {fill}"
        );
        // The receivers explain the namespace's RcvbufErrors: no alert about
        // drops nobody accounts for.
        let unexplained = prom.alerts("SockdiagNetnsUdpDropsWithoutReceiverDrops", "netns", "host");
        assert!(
            unexplained.iter().all(|a| a["state"] != "firing"),
            "{unexplained:?}\nnetns RcvbufErrors: {:?}\nreceiver drops: {:?}",
            prom.query("sockdiag:netstat_udp_rcvbuf_errors:rate5m"),
            prom.query("sockdiag:udp_drops:rate5m")
        );

        // The runbook's owner join names this process, by executable.
        let join = "(sockdiag:udp_receive_buffer_peak_ratio > 0.8) \
                    * on (job, instance, netns, family, address, port, member) \
                    group_left (comm, exe, cmdline, pid, unit, container_id) \
                    sockdiag_udp_receiver_process_info";
        let owner: Vec<Value> = prom
            .query(join)
            .into_iter()
            .filter(|s| s["metric"]["port"] == port_text.as_str())
            .collect();
        assert_eq!(owner.len(), 1, "owner join for port {port}: {owner:?}");
        assert_owned_by_this_process(&owner);
        e2e.mark("the owner join names this process");

        // Stop the flood and read everything: drops stop, the rate window
        // passes, the drop alert resolves.
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let flooded = flood.join().expect("the flood thread");
        receiver
            .set_nonblocking(true)
            .expect("non-blocking receiver");
        let mut read = 0u64;
        let mut datagram = [std::mem::MaybeUninit::<u8>::uninit(); 64];
        let resolved = poll(
            deadline - Duration::from_secs(3),
            Duration::from_millis(250),
            || {
                while receiver.recv(&mut datagram).is_ok() {
                    read += 1;
                }
                prom.alerts("SockdiagUdpReceiverDropping", "port", &port_text)
                    .is_empty()
            },
            |&resolved| resolved,
        );
        e2e.mark(&format!(
            "flood stopped after {flooded} more datagrams; {read} read; \
             SockdiagUdpReceiverDropping resolved: {resolved}"
        ));
        assert!(
            resolved,
            "SockdiagUdpReceiverDropping still active after the drops stopped: {}",
            prom.get_json("/api/v1/alerts")
        );
        assert!(read > 0, "nothing was queued for the receiver");
        let queue: Vec<Value> = prom
            .query("sockdiag_udp_receive_queue_bytes")
            .into_iter()
            .filter(|s| s["metric"]["port"] == port_text.as_str())
            .collect();
        assert!(
            queue.len() == 1 && queue[0]["value"][1] == "0",
            "the drained receiver's queue: {queue:?}"
        );

        // Closed, the socket's series go and its buffer alert with them (its
        // peak would otherwise hold it for the exporter's peak window).
        drop(receiver);
        let closed = poll(
            deadline,
            Duration::from_millis(250),
            || {
                prom.alerts("SockdiagUdpReceiveBufferFull", "port", &port_text)
                    .is_empty()
            },
            |&closed| closed,
        );
        e2e.mark("receiver closed; SockdiagUdpReceiveBufferFull resolved");
        assert!(
            closed,
            "SockdiagUdpReceiveBufferFull still active after closing: {}",
            prom.get_json("/api/v1/alerts")
        );
        drop(e2e);
    });
}

/// The core manifests against Kubernetes' own schemas, offline, strictly
/// (unknown fields rejected). The prometheus-operator CRDs have no bundled
/// schema; their content is covered by the rule checks above.
#[test]
fn kubernetes_manifests_validate() {
    let probe = Command::new("python3")
        .args(["-c", "import kubernetes_validate"])
        .stdin(Stdio::null())
        .output()
        .expect("running python3");
    assert!(
        probe.status.success(),
        "the PyPI package kubernetes-validate is not installed: \
         python3 -m pip install kubernetes-validate"
    );
    // What namespace discovery and process attribution need, and the
    // --path flags pointing where the host directories are mounted.
    let ds = read("deploy/kubernetes/daemonset.yaml");
    for needed in [
        "hostPID: true",
        "--path.run-netns=/host/run/netns",
        "mountPath: /host/run/netns",
        "--path.pod-logs=/host/var/log/pods",
        "mountPath: /host/var/log/pods",
        "mountPropagation: HostToContainer",
    ] {
        assert!(ds.contains(needed), "daemonset lacks `{needed}`");
    }
    // The whole `add:` list, no more: its items are the lines after it
    // that are list items.
    let added: Vec<&str> = ds
        .lines()
        .skip_while(|l| l.trim() != "add:")
        .skip(1)
        .map(str::trim)
        .take_while(|l| l.starts_with("- "))
        .collect();
    assert_eq!(added, ["- SYS_ADMIN", "- SYS_PTRACE", "- DAC_READ_SEARCH"]);
    assert!(ds.contains("drop:\n                - ALL\n"), "drop ALL");
    // HTTPS from the web config and the TLS Secret, projected side by side
    // so the config's relative names are the Secret's files.
    for needed in [
        "--web.config.file=/etc/sockdiag-exporter/web-config.yml",
        "mountPath: /etc/sockdiag-exporter\n",
        "name: sockdiag-exporter-web-config\n",
        "name: sockdiag-exporter-tls\n",
        "scheme: HTTPS\n",
    ] {
        assert!(ds.contains(needed), "daemonset lacks `{needed}`");
    }
    let web = read("deploy/kubernetes/web-config.yaml");
    for needed in ["cert_file: tls.crt\n", "key_file: tls.key\n"] {
        assert!(web.contains(needed), "web-config.yaml lacks `{needed}`");
    }
    let monitor = read("deploy/kubernetes/servicemonitor.yaml");
    for needed in [
        "scheme: https\n",
        "tlsConfig:\n",
        "name: sockdiag-exporter-tls\n",
    ] {
        assert!(monitor.contains(needed), "servicemonitor lacks `{needed}`");
    }
    // Every manifest of a core kind; the prometheus-operator ones are left
    // out by kind, so a new core manifest is validated without being listed.
    let mut manifests: Vec<String> = std::fs::read_dir(root().join("deploy/kubernetes"))
        .expect("listing deploy/kubernetes")
        .map(|e| e.expect("a directory entry").file_name())
        .filter_map(|n| n.to_str().map(|n| format!("deploy/kubernetes/{n}")))
        .filter(|n| n.ends_with(".yaml"))
        .filter(|n| !read(n).contains("apiVersion: monitoring.coreos.com/"))
        .collect();
    manifests.sort();
    for known in [
        "daemonset.yaml",
        "networkpolicy.yaml",
        "service.yaml",
        "web-config.yaml",
    ] {
        let known = format!("deploy/kubernetes/{known}");
        assert!(
            manifests.contains(&known),
            "{known} not validated: {manifests:?}"
        );
    }
    for manifest in &manifests {
        let out = Command::new("python3")
            .args(["-m", "kubernetes_validate", "--strict", manifest.as_str()])
            .current_dir(root())
            .stdin(Stdio::null())
            .output()
            .expect("running kubernetes-validate");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && text.contains("passed"),
            "{manifest}:\n{text}"
        );
    }
}
