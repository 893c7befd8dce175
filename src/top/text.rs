//! `top`'s frame as plain text, for `--once`, a pipe or a script: every
//! row (nothing cut to a screen), the same cells as the terminal view.

use std::fmt::Write;

use super::cells;
use super::model::Model;
use crate::table::align;

/// Column titles of the queue table, in order.
pub const QUEUE_COLUMNS: [&str; 10] = [
    "NETNS", "KIND", "LISTEN", "QUEUE", "FILL", "DROP/s", "SYN-Q", "BYTES", "OLDEST", "OWNER",
];

/// Column titles of the client table, in order.
pub const CLIENT_COLUMNS: [&str; 7] = [
    "NETNS",
    "PORT",
    "SYN-SENT",
    "ESTAB",
    "SERVER-ESTAB",
    "GAP",
    "SEND-Q",
];

/// The frame as text: a title line, the queues in the model's order and
/// filter, then the client ports.
pub fn frame(model: &Model, title: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{title}");
    let mut rows: Vec<Vec<String>> = vec![QUEUE_COLUMNS.iter().map(|s| s.to_string()).collect()];
    for r in model.rows() {
        let q = r.queue;
        rows.push(vec![
            r.key.netns.clone(),
            r.key.kind.as_str().to_string(),
            r.key.endpoint(),
            cells::queue(&r),
            cells::fill(&r),
            cells::rate(r.drops_per_second),
            cells::count(q.syn_queue),
            cells::bytes(q.waiting_bytes),
            cells::seconds(q.oldest),
            cells::owners(&q.owners),
        ]);
    }
    out.push_str(&align(&rows));
    let clients = model.clients();
    if !clients.is_empty() {
        out.push('\n');
        let mut rows: Vec<Vec<String>> =
            vec![CLIENT_COLUMNS.iter().map(|s| s.to_string()).collect()];
        for c in clients {
            let f = c.figures;
            rows.push(vec![
                c.netns.to_string(),
                c.port.to_string(),
                cells::count(Some(f.syn_sent)),
                cells::count(Some(f.established)),
                cells::count(f.server_established),
                cells::count(c.gap()),
                cells::bytes(Some(f.send_queue_bytes)),
            ]);
        }
        out.push_str(&align(&rows));
    }
    out
}
