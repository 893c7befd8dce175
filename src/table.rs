//! The `snapshot` table's pieces that collectors fill: one row per
//! listener (TCP and unix alike) and free-form sections, aligned for
//! people by [`align`].

use std::fmt::Write;

use crate::model::ListenerFigures;
use crate::owners::Owner;

/// Column titles of the listener table, in order.
pub const LISTENER_COLUMNS: [&str; 11] = [
    "LISTEN", "MEMBER", "QUEUE", "LIMIT", "FILL", "DROPS", "SYN-Q", "BYTES", "OLDEST", "INODE",
    "PROCESS",
];

/// What a collector adds to one namespace's part of the `snapshot` table.
#[derive(Debug, Default)]
pub struct Report {
    /// Rows of the listener table, one per listening socket.
    pub listeners: Vec<ListenerRow>,
    /// Text sections printed after the listener table, in collector order.
    pub sections: Vec<String>,
}

/// One row of the listener table; `-` where a figure does not apply or is
/// not known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerRow {
    /// Cells in [`LISTENER_COLUMNS`] order.
    pub cells: [String; LISTENER_COLUMNS.len()],
}

/// Index of the SYN-Q cell.
pub const SYN_Q: usize = 6;
/// Index of the BYTES cell.
pub const BYTES: usize = 7;
/// Index of the OLDEST cell.
pub const OLDEST: usize = 8;

impl ListenerRow {
    /// The row of one listener: its own figures and owner; the per-address
    /// cells (SYN-Q, BYTES, OLDEST) are left `-` for the caller to fill.
    pub fn new(l: &ListenerFigures, owner: Option<&Owner>) -> Self {
        let dash = || "-".to_string();
        ListenerRow {
            cells: [
                l.endpoint.to_string(),
                l.member.map_or_else(dash, |m| m.to_string()),
                l.queue_length.to_string(),
                l.queue_limit.to_string(),
                fill(l),
                l.drops.map_or_else(dash, |d| d.to_string()),
                dash(),
                dash(),
                dash(),
                l.inode.to_string(),
                owner_cell(owner),
            ],
        }
    }
}

/// Queue against limit in percent, with `FULL` in words (not only colour)
/// when the kernel would refuse a new connection.
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

/// `comm/pid` of a socket's owner, like `ss -p`, with its unit or
/// container when known; `-` when not known.
pub fn owner_cell(owner: Option<&Owner>) -> String {
    let Some(o) = owner else {
        return "-".to_string();
    };
    let w = &o.workload;
    owner_text(
        &o.comm,
        &o.pid.to_string(),
        w.unit.as_deref(),
        w.container_id.as_deref(),
    )
}

/// `comm/pid`, then the container (its ID's first 12 characters, as
/// `docker ps` shows it) or else the systemd unit, in parentheses: how the
/// snapshot table and `top` name an owner.
pub fn owner_text(comm: &str, pid: &str, unit: Option<&str>, container: Option<&str>) -> String {
    match (unit, container) {
        (_, Some(c)) => format!("{comm}/{pid} ({})", c.chars().take(12).collect::<String>()),
        (Some(u), None) => format!("{comm}/{pid} ({u})"),
        (None, None) => format!("{comm}/{pid}"),
    }
}

/// Rows of cells as left-aligned columns two spaces apart.
pub fn align(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let _ = write!(line, "{cell:<width$}", width = widths[i]);
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}
