//! The `snapshot` subcommand's output, from the same snapshot `/metrics`
//! renders: a table for people (each collector adds its rows and
//! sections), JSON for scripts (each collector's parts as they are).

use std::fmt::Write;
use std::sync::Arc;

use serde_json::{Map, Value, json};

use crate::collect::{Collector, LISTENERS, UNIX};
use crate::model::NetnsView;
use crate::netns::{HOST_NETNS, NetnsInfo};
use crate::sampler::{NETNS, namespace_view};
use crate::store::Snapshot;
use crate::table::{LISTENER_COLUMNS, Report, align};

/// A failure worth telling the user, as (collector, message).
pub type Problem = (&'static str, String);

/// The namespaces of a snapshot in the order people read them: the
/// daemon's own first, then by name.
fn ordered(snapshot: &Snapshot) -> Vec<(&NetnsInfo, &NetnsView)> {
    let mut v: Vec<_> = snapshot.namespaces().collect();
    v.sort_by(|(a, _), (b, _)| {
        (a.name != HOST_NETNS, &a.name).cmp(&(b.name != HOST_NETNS, &b.name))
    });
    v
}

/// Every failure in the snapshot: discovery problems, then each
/// namespace's failed samples (refusals to enter included, marked so).
pub fn problems(snapshot: &Snapshot) -> Vec<Problem> {
    let mut out = Vec::new();
    for (name, h) in &snapshot.health {
        if *name == NETNS {
            if let Some(e) = &h.last_error {
                out.push((NETNS, e.clone()));
            }
        }
    }
    for (info, view) in ordered(snapshot) {
        for (collector, st) in &view.status {
            if let Some(e) = &st.error {
                out.push((*collector, format!("netns {}: {e}", info.name)));
            }
        }
    }
    out
}

/// Whether the snapshot misses figures because something failed: a
/// collector that published nothing where it should have. A namespace that
/// may not be entered is a lack of privilege, and a sample that published
/// figures with some missing (a procfs file unreadable) only blanks those:
/// both are told, neither fails the snapshot.
pub fn failed(snapshot: &Snapshot) -> bool {
    snapshot.namespaces().any(|(_, view)| {
        view.status
            .iter()
            .any(|(collector, st)| !st.ok && !st.refused && !view.parts.contains_key(collector))
    })
}

/// Renders a snapshot as aligned text: per namespace, the listeners (TCP
/// and unix) first, then each collector's section; then the problems.
pub fn table(snapshot: &Snapshot, collectors: &[Arc<dyn Collector>]) -> String {
    let mut out = String::new();
    let listener_collectors = collectors
        .iter()
        .any(|c| [LISTENERS, UNIX].contains(&c.registration().name));
    for (i, (info, view)) in ordered(snapshot).into_iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let _ = writeln!(out, "netns {}", info.name);
        let ns = namespace_view(info, view);
        let mut report = Report::default();
        for c in collectors {
            c.report(&ns, &mut report);
        }
        if listener_collectors {
            let mut rows: Vec<Vec<String>> =
                vec![LISTENER_COLUMNS.iter().map(|s| s.to_string()).collect()];
            rows.extend(report.listeners.into_iter().map(|r| r.cells.to_vec()));
            out.push_str(&align(&rows));
        }
        for section in report.sections {
            out.push_str(&section);
        }
    }
    for (collector, e) in problems(snapshot) {
        let _ = writeln!(out, "error: {collector}: {e}");
    }
    out
}

/// Renders a snapshot as one JSON document: `namespaces`, each with its
/// `netns` label, what names it, every enabled collector's part under its
/// collector's key (`null` when it has none) and the `status` of each; then
/// `errors`.
pub fn json(snapshot: &Snapshot, collectors: &[Arc<dyn Collector>]) -> String {
    let namespaces: Vec<Value> = ordered(snapshot)
        .into_iter()
        .map(|(info, view)| {
            let mut ns = Map::new();
            ns.insert("netns".into(), json!(info.name));
            ns.insert(
                "info".into(),
                serde_json::to_value(info).unwrap_or(Value::Null),
            );
            for c in collectors {
                let name = c.registration().name;
                let part = view.parts.get(name).map_or(Value::Null, |p| p.to_json());
                ns.insert(name.into(), part);
            }
            ns.insert(
                "status".into(),
                serde_json::to_value(&view.status).unwrap_or(Value::Null),
            );
            Value::Object(ns)
        })
        .collect();
    let errors: Vec<Value> = problems(snapshot)
        .into_iter()
        .map(|(collector, error)| json!({ "collector": collector, "error": error }))
        .collect();
    serde_json::to_string_pretty(&json!({ "namespaces": namespaces, "errors": errors }))
        .unwrap_or_else(|e| format!("{{\"errors\":[{{\"error\":\"{e}\"}}]}}"))
}
