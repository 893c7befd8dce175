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
        let mut rows: Vec<Vec<String>> = vec![
            cells::CLIENT_COLUMNS
                .iter()
                .map(|s| s.to_string())
                .collect(),
        ];
        rows.extend(clients.iter().map(|c| cells::client(c).to_vec()));
        out.push_str(&align(&rows));
    }
    out
}
