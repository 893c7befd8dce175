//! How `top` writes each figure, shared by the terminal view and the plain
//! `--once` text so that both say the same thing: short units, `-` for
//! unknown, `FULL` in words.

use super::frame::{Kind, Owner};
use super::model::{ClientRow, Row};

/// `-` for a figure the page does not have.
pub const UNKNOWN: &str = "-";

/// Length over limit: connections for accept queues, bytes for UDP.
pub fn queue(r: &Row<'_>) -> String {
    let q = r.queue;
    let part = |v: Option<f64>| match r.key.kind {
        Kind::Udp => bytes(v),
        Kind::Tcp | Kind::Unix => count(v),
    };
    format!("{}/{}", part(q.length), part(q.limit))
}

/// Fill in percent, `FULL` when the queue refuses new arrivals.
pub fn fill(r: &Row<'_>) -> String {
    match (r.queue.fill(), r.full) {
        (Some(f), true) => format!("{:.0}% FULL", f * 100.0),
        (Some(f), false) => format!("{:.0}%", f * 100.0),
        (None, true) => "FULL".to_string(),
        (None, false) => UNKNOWN.to_string(),
    }
}

/// A bar of `width` cells for a fill (1.0 and above: all filled).
pub fn bar(fill: Option<f64>, width: usize) -> String {
    let Some(f) = fill else {
        return " ".repeat(width);
    };
    let filled = ((f.clamp(0.0, 1.0) * width as f64).round() as usize).min(width);
    let mut s = "█".repeat(filled);
    s.push_str(&"░".repeat(width - filled));
    s
}

/// A whole number of things.
pub fn count(v: Option<f64>) -> String {
    v.map_or_else(|| UNKNOWN.to_string(), |v| format!("{v:.0}"))
}

/// A rate per second: whole above 10, one decimal below.
pub fn rate(v: Option<f64>) -> String {
    match v {
        None => UNKNOWN.to_string(),
        Some(0.0) => "0".to_string(),
        Some(v) if v >= 10.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.1}"),
    }
}

/// Bytes in binary units, as `ss -m` readers expect: `512B`, `4.0K`,
/// `208K`, `1.5M`.
pub fn bytes(v: Option<f64>) -> String {
    let Some(v) = v else {
        return UNKNOWN.to_string();
    };
    const UNITS: [&str; 4] = ["K", "M", "G", "T"];
    if v < 1024.0 {
        return format!("{v:.0}");
    }
    let mut x = v;
    let mut unit = "";
    for u in UNITS {
        if x < 1024.0 {
            break;
        }
        x /= 1024.0;
        unit = u;
    }
    if x < 10.0 {
        format!("{x:.1}{unit}")
    } else {
        format!("{x:.0}{unit}")
    }
}

/// A duration: `850ms`, `6.1s`, `2m03s`, `1h02m`.
pub fn seconds(v: Option<f64>) -> String {
    let Some(s) = v else {
        return UNKNOWN.to_string();
    };
    if s <= 0.0 {
        "0".to_string()
    } else if s < 1.0 {
        format!("{:.0}ms", s * 1000.0)
    } else if s < 60.0 {
        format!("{s:.1}s")
    } else if s < 3600.0 {
        let m = (s / 60.0).floor();
        format!("{m:.0}m{:02.0}s", (s - m * 60.0).floor())
    } else {
        let h = (s / 3600.0).floor();
        format!("{h:.0}h{:02.0}m", ((s - h * 3600.0) / 60.0).floor())
    }
}

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

/// A client port's cells, in [`CLIENT_COLUMNS`] order.
pub fn client(c: &ClientRow<'_>) -> [String; CLIENT_COLUMNS.len()] {
    let f = c.figures;
    [
        c.netns.to_string(),
        c.port.to_string(),
        count(Some(f.syn_sent)),
        count(Some(f.established)),
        count(f.server_established),
        count(c.gap()),
        bytes(Some(f.send_queue_bytes)),
    ]
}

/// `text` in at most `width` characters, cut in the middle with `…` when
/// longer: the ends of a pod name, a socket path or an `ino:` label are
/// what tell two of them apart.
pub fn fit(text: &str, width: usize) -> String {
    let n = text.chars().count();
    if n <= width {
        return text.to_string();
    }
    if width < 3 {
        return text.chars().take(width).collect();
    }
    let head = (width - 1) / 2;
    let tail = width - 1 - head;
    let mut out: String = text.chars().take(head).collect();
    out.push('…');
    out.extend(text.chars().skip(n - tail));
    out
}

/// The first owner, and how many more share the socket.
pub fn owners(owners: &[Owner]) -> String {
    match owners {
        [] => UNKNOWN.to_string(),
        [one] => one.to_string(),
        [first, rest @ ..] => format!("{first} +{}", rest.len()),
    }
}

/// [`owners`] in at most `width` characters: without the unit or container
/// when the whole does not fit, then cut in the middle, so `comm/pid`
/// stays as long as it can.
pub fn owners_within(list: &[Owner], width: usize) -> String {
    let whole = owners(list);
    if whole.chars().count() <= width {
        return whole;
    }
    let short = match list {
        [] => UNKNOWN.to_string(),
        [one] => format!("{}/{}", one.comm, one.pid),
        [first, rest @ ..] => format!("{}/{} +{}", first.comm, first.pid, rest.len()),
    };
    fit(&short, width)
}

/// A queue's last minute in `width` block characters, each the highest
/// length seen in its slice of time, scaled to `top` (the limit, or the
/// highest length if that is more). A slice with no reading is a space.
pub fn sparkline(history: &[(f64, f64)], seconds: f64, top: f64, width: usize) -> String {
    const BLOCKS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    if width == 0 {
        return String::new();
    }
    let mut slots: Vec<Option<f64>> = vec![None; width];
    for &(ago, v) in history {
        if !(0.0..=seconds).contains(&ago) {
            continue;
        }
        // Newest on the right.
        let i = width - 1 - ((ago / seconds) * (width as f64 - 1.0)).round() as usize;
        if let Some(slot) = slots.get_mut(i) {
            *slot = Some(slot.map_or(v, |s: f64| s.max(v)));
        }
    }
    let top = slots.iter().flatten().fold(top, |m, v| m.max(*v));
    slots
        .into_iter()
        .map(|s| match s {
            None => ' ',
            Some(_) if top <= 0.0 => BLOCKS[0],
            Some(v) => {
                let i = ((v / top) * (BLOCKS.len() - 1) as f64).round() as usize;
                BLOCKS[i.min(BLOCKS.len() - 1)]
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_read_as_people_expect() {
        assert_eq!(bytes(Some(512.0)), "512");
        assert_eq!(bytes(Some(4096.0)), "4.0K");
        assert_eq!(bytes(Some(212_992.0)), "208K");
        assert_eq!(bytes(Some(1.5 * 1024.0 * 1024.0)), "1.5M");
        assert_eq!(seconds(Some(0.25)), "250ms");
        assert_eq!(seconds(Some(6.14)), "6.1s");
        assert_eq!(seconds(Some(123.0)), "2m03s");
        assert_eq!(seconds(Some(3720.0)), "1h02m");
        assert_eq!(seconds(None), "-");
        assert_eq!(rate(Some(0.5)), "0.5");
        assert_eq!(rate(Some(42.4)), "42");
        assert_eq!(bar(Some(0.5), 4), "██░░");
        assert_eq!(bar(Some(1.1), 4), "████");
        assert_eq!(fit("ino:4026532123", 9), "ino:…2123");
        assert_eq!(fit("/run/php/www.sock", 17), "/run/php/www.sock");
        assert_eq!(fit("/run/php/www.sock", 10), "/run….sock");
        assert_eq!(fit("abc", 2), "ab");
    }

    #[test]
    fn a_sparkline_puts_the_newest_on_the_right_and_scales_to_the_limit() {
        let h = [(60.0, 0.0), (30.0, 5.0), (0.0, 10.0)];
        assert_eq!(sparkline(&h, 60.0, 10.0, 3), "▁▅█");
        assert_eq!(sparkline(&h, 60.0, 20.0, 5), "▁ ▃ ▅");
        assert_eq!(sparkline(&[], 60.0, 10.0, 2), "  ");
    }
}
