//! The `snapshot` subcommand's output: a table for people, JSON for scripts.

use std::fmt::Write;

use serde::Serialize;

use crate::snapshot::{ListenerFigures, NetnsView};

/// Formats an address and port the way `ss` does (`[::]:443`).
pub fn endpoint(address: &std::net::IpAddr, port: u16) -> String {
    match address {
        std::net::IpAddr::V4(a) => format!("{a}:{port}"),
        std::net::IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

fn fill(l: &ListenerFigures) -> String {
    if l.queue_limit == 0 {
        return "-".to_string();
    }
    let pct = f64::from(l.queue_length) * 100.0 / f64::from(l.queue_limit);
    if l.is_full() {
        format!("{pct:.0}% FULL")
    } else {
        format!("{pct:.0}%")
    }
}

/// `comm/pid` of a listener's owner, like `ss -p`, with its unit or
/// container when known; `-` when not known.
fn process(view: &NetnsView, cookie: u64) -> String {
    let Some(o) = view.owners.as_ref().and_then(|o| o.get(cookie)) else {
        return "-".to_string();
    };
    let w = &o.workload;
    match (&w.unit, &w.container_id) {
        (_, Some(c)) => format!(
            "{}/{} ({})",
            o.comm,
            o.pid,
            c.chars().take(12).collect::<String>()
        ),
        (Some(u), None) => format!("{}/{} ({u})", o.comm, o.pid),
        (None, None) => format!("{}/{}", o.comm, o.pid),
    }
}

/// Renders a view as aligned text: listeners first, then ports by role.
pub fn table(view: &NetnsView, errors: &[(&str, String)]) -> String {
    let mut rows: Vec<Vec<String>> = vec![
        [
            "LISTEN", "MEMBER", "QUEUE", "LIMIT", "FILL", "DROPS", "SYN-Q", "BYTES", "OLDEST",
            "INODE", "PROCESS",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
    ];
    if let Some(ls) = &view.listeners {
        for l in &ls.listeners {
            let q = view.queue(&l.key());
            // Bytes, age and SYN queue are per address: the kernel does not
            // say which member of a reuseport group holds a connection, so
            // they are shown on the group's first row only.
            let first = l.member.is_none_or(|m| m == 0);
            let per_addr = |f: &dyn Fn(&crate::snapshot::QueueSummary) -> String| {
                q.filter(|_| first).map_or_else(|| "-".to_string(), f)
            };
            rows.push(vec![
                endpoint(&l.address, l.port),
                l.member.map_or_else(|| "-".to_string(), |m| m.to_string()),
                l.queue_length.to_string(),
                l.queue_limit.to_string(),
                fill(l),
                l.drops.map_or_else(|| "-".to_string(), |d| d.to_string()),
                per_addr(&|q| q.syn_queue_length.to_string()),
                per_addr(&|q| q.queued_bytes.to_string()),
                per_addr(&|q| {
                    q.oldest_seconds
                        .map_or_else(|| "-".to_string(), |s| format!("{s:.1}s"))
                }),
                l.inode.to_string(),
                process(view, l.cookie),
            ]);
        }
    }
    let mut out = String::new();
    let _ = writeln!(out, "netns {}", view.netns);
    if view.listeners.is_some() {
        out.push_str(&align(&rows));
    }
    if let Some(c) = &view.connections {
        let mut rows: Vec<Vec<String>> = vec![
            ["ROLE", "PORT", "SEND-Q", "RECV-Q", "STATES"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
        ];
        for p in &c.ports {
            let states: Vec<String> = p.states.iter().map(|(s, n)| format!("{s}={n}")).collect();
            rows.push(vec![
                p.role.as_str().to_string(),
                p.port_label(),
                p.send_queue_bytes.to_string(),
                p.recv_queue_bytes.to_string(),
                states.join(" "),
            ]);
        }
        out.push('\n');
        out.push_str(&align(&rows));
        let _ = writeln!(out, "\n{} sockets", c.sockets);
        if c.client_ports_folded > 0 {
            let _ = writeln!(
                out,
                "{} client ports folded into \"other\"",
                c.client_ports_folded
            );
        }
    }
    if let Some(n) = &view.netstat {
        let show = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
        let _ = writeln!(
            out,
            "ListenOverflows {}  ListenDrops {}  somaxconn {}",
            show(n.listen_overflows),
            show(n.listen_drops),
            show(n.somaxconn)
        );
    }
    for (collector, e) in errors {
        let _ = writeln!(out, "error: {collector}: {e}");
    }
    out
}

fn align(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(String::len)
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, cell)| format!("{cell:<width$}", width = widths[i]))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[derive(Serialize)]
struct JsonReport<'a> {
    #[serde(flatten)]
    view: &'a NetnsView,
    errors: Vec<JsonError<'a>>,
}

#[derive(Serialize)]
struct JsonError<'a> {
    collector: &'a str,
    error: &'a str,
}

/// Renders a view as one JSON document (the schema is `NetnsView`'s fields
/// plus `errors`).
pub fn json(view: &NetnsView, errors: &[(&str, String)]) -> String {
    let report = JsonReport {
        view,
        errors: errors
            .iter()
            .map(|(c, e)| JsonError {
                collector: c,
                error: e,
            })
            .collect(),
    };
    serde_json::to_string_pretty(&report)
        .unwrap_or_else(|e| format!("{{\"errors\":[{{\"error\":\"{e}\"}}]}}"))
}
