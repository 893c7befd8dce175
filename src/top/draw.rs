//! Draws the model into ratatui widgets: a pure function of the model and
//! the screen's size, so a test can draw into a buffer and read it.

use ratatui::Frame as Screen;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{
    Block, Borders, Cell, Clear, Paragraph, Row as TableRow, Table, TableState,
};
use ratatui::widgets::{Sparkline, Wrap};

use super::cells;
use super::frame::QueueKey;
use super::model::{HISTORY_SECONDS, Model, Row, View};

/// What the header says about where the figures come from and when.
#[derive(Debug, Clone)]
pub struct Status {
    /// Whether `top` samples here (else it reads a daemon's page).
    pub local: bool,
    /// `local` or the URL read.
    pub source: String,
    /// Wall-clock time of the latest refresh, `HH:MM:SS`.
    pub clock: String,
    /// Refresh period, as written on the command line.
    pub interval: String,
}

/// Draws the whole screen.
pub fn draw(screen: &mut Screen<'_>, model: &mut Model, status: &Status) {
    let area = screen.area();
    let [head, body, foot] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(area);
    header(screen, head, model, status);
    footer(screen, foot, model);
    match model.view.clone() {
        View::List => list(screen, body, model),
        View::Detail(_) => detail(screen, body, model, status),
        View::Help => help(screen, body),
    }
}

fn header(screen: &mut Screen<'_>, area: Rect, model: &Model, status: &Status) {
    let rows = model.rows();
    let full = rows.iter().filter(|r| r.full).count();
    let netns: std::collections::BTreeSet<&str> =
        rows.iter().map(|r| r.key.netns.as_str()).collect();
    // What matters first, so that a narrow terminal cuts the rest.
    let mut first = vec![Span::from("sockdiag-exporter top").bold()];
    if full > 0 {
        first.push(Span::from(format!("  {full} FULL")).bold().red());
    }
    if model.paused {
        first.push(Span::from("  PAUSED").bold().reversed());
    }
    first.push(Span::from(format!(
        "  {} queues in {} netns  {} {} every {}",
        rows.len(),
        netns.len(),
        status.source,
        status.clock,
        status.interval,
    )));
    let second = if let Some(e) = &model.error {
        Line::from(vec![
            Span::from("error: ").bold().red(),
            Span::from(e.clone()),
        ])
    } else {
        let mut spans = vec![Span::from(format!("sort {}", model.sort.title()))];
        if !model.filter.is_empty() {
            spans.push(Span::from(format!("  filter \"{}\"", model.filter)));
        }
        let mut overflowing: Vec<(String, f64)> = model
            .frame()
            .namespaces
            .keys()
            .filter_map(|n| {
                model
                    .overflows_per_second(n)
                    .filter(|r| *r > 0.0)
                    .map(|r| (n.clone(), r))
            })
            .collect();
        overflowing.sort_by(|a, b| b.1.total_cmp(&a.1));
        for (n, r) in overflowing.iter().take(3) {
            spans.push(
                Span::from(format!(
                    "  {n}: ListenOverflows {}/s",
                    cells::rate(Some(*r))
                ))
                .red(),
            );
        }
        for c in &model.frame().failing {
            spans.push(Span::from(format!("  collector {c} failing")).red());
        }
        let down = model
            .frame()
            .namespaces
            .values()
            .filter(|n| n.up == Some(0.0))
            .count();
        if down > 0 {
            spans.push(
                Span::from(format!(
                    "  {down} netns not fully readable (privileges? see sockdiag_netns_up)"
                ))
                .red(),
            );
        }
        Line::from(spans)
    };
    screen.render_widget(Paragraph::new(vec![Line::from(first), second]), area);
}

fn footer(screen: &mut Screen<'_>, area: Rect, model: &Model) {
    let line = if let Some(text) = &model.editing {
        Line::from(vec![
            Span::from("filter (port, process, netns; Enter applies, Esc clears): ").bold(),
            Span::from(format!("{text}_")),
        ])
    } else {
        let keys = match model.view {
            View::List => "q quit  / filter  s sort  ↑↓ select  Enter detail  p pause  ? help",
            View::Detail(_) => "Esc back  ↑↓ PgUp PgDn scroll  p pause  q quit",
            View::Help => "any key back  q quit",
        };
        Line::from(keys).reversed()
    };
    screen.render_widget(Paragraph::new(line), area);
}

/// Which optional columns fit, widest first dropped.
struct Columns {
    kind: bool,
    bar: bool,
    bytes: bool,
    spark: usize,
}

impl Columns {
    fn for_width(w: u16) -> Columns {
        Columns {
            kind: w >= 100,
            bar: w >= 100,
            bytes: w >= 110,
            spark: match w {
                0..140 => 0,
                140..180 => 20,
                _ => 30,
            },
        }
    }
}

/// The least the owner column gets: `comm/pid` of most processes.
const OWNER_MIN: u16 = 16;

fn list(screen: &mut Screen<'_>, area: Rect, model: &mut Model) {
    let client_rows = model.clients().len();
    let clients_height = if client_rows == 0 {
        0
    } else {
        (client_rows as u16 + 3).min(area.height / 3).max(4)
    };
    let [queues, clients] =
        Layout::vertical([Constraint::Min(3), Constraint::Length(clients_height)]).areas(area);
    model.page = queues.height.saturating_sub(3).max(1) as usize;
    queue_table(screen, queues, model);
    if clients_height > 0 {
        client_table(screen, clients, model);
    }
}

/// The LISTEN cell: the endpoint, marked `udp/` where no KIND column says
/// so (a TCP and a UDP socket on `:53` must not look alike).
fn listen_cell(r: &Row<'_>, kind_column: bool) -> String {
    if !kind_column && r.key.kind == super::frame::Kind::Udp {
        format!("udp/{}", r.key.endpoint())
    } else {
        r.key.endpoint()
    }
}

fn queue_table(screen: &mut Screen<'_>, area: Rect, model: &Model) {
    let cols = Columns::for_width(area.width);
    let rows = model.rows();
    let widest = |cell: &dyn Fn(&Row<'_>) -> String, min: usize, max: usize| {
        rows.iter()
            .map(|r| cell(r).chars().count())
            .max()
            .unwrap_or(min)
            .clamp(min, max) as u16
    };
    // Narrow columns as narrow as their contents, so the owner keeps room.
    let queue_width = widest(&|r| cells::queue(r), 5, 13);
    let fill_width = widest(&|r| cells::fill(r), 4, 9);
    let fill_column = if cols.bar {
        11 + fill_width
    } else {
        fill_width
    };
    let fixed: u16 = [
        1, // the selection marker
        if cols.kind { 5 } else { 0 },
        queue_width + 1,
        fill_column + 1,
        7, // DROP/s
        6, // SYN-Q
        if cols.bytes { 7 } else { 0 },
        7, // OLDEST
        if cols.spark > 0 {
            cols.spark as u16 + 1
        } else {
            0
        },
        2, // the spaces after NETNS and LISTEN
    ]
    .iter()
    .sum();
    // NETNS and LISTEN share what the owner leaves; long names are cut in
    // the middle (see `cells::fit`), so their distinct ends stay.
    let room = area.width.saturating_sub(fixed + OWNER_MIN);
    let listen_natural = widest(&|r| listen_cell(r, cols.kind), 6, 60);
    let netns_natural = widest(&|r| r.key.netns.clone(), 5, 40);
    // Nine columns keep `ino:` or `pod:` and the distinct end of a label.
    let netns_least = netns_natural.min(9);
    let listen_width = listen_natural.min(room.saturating_sub(netns_least).max(12));
    let netns_width = netns_natural.min(room.saturating_sub(listen_width).max(5));
    let owner_width = area
        .width
        .saturating_sub(fixed + listen_width + netns_width)
        .max(OWNER_MIN);
    let mut titles = vec!["NETNS"];
    let mut widths = vec![Constraint::Length(netns_width)];
    if cols.kind {
        titles.push("KIND");
        widths.push(Constraint::Length(4));
    }
    titles.extend(["LISTEN", "QUEUE", "FILL"]);
    widths.extend([
        Constraint::Length(listen_width),
        Constraint::Length(queue_width),
        Constraint::Length(fill_column),
    ]);
    titles.extend(["DROP/s", "SYN-Q"]);
    widths.extend([Constraint::Length(6), Constraint::Length(5)]);
    if cols.bytes {
        titles.push("BYTES");
        widths.push(Constraint::Length(6));
    }
    titles.push("OLDEST");
    widths.push(Constraint::Length(6));
    if cols.spark > 0 {
        titles.push("LAST MINUTE");
        widths.push(Constraint::Length(cols.spark as u16));
    }
    titles.push("OWNER");
    widths.push(Constraint::Fill(1));

    let table_rows: Vec<TableRow<'_>> = rows
        .iter()
        .map(|r| {
            let q = r.queue;
            let mut c: Vec<String> = vec![cells::fit(&r.key.netns, netns_width.into())];
            if cols.kind {
                c.push(r.key.kind.as_str().into());
            }
            c.push(cells::fit(&listen_cell(r, cols.kind), listen_width.into()));
            c.push(cells::queue(r));
            c.push(if cols.bar {
                format!("{} {}", cells::bar(q.fill(), 10), cells::fill(r))
            } else {
                cells::fill(r)
            });
            c.push(cells::rate(r.drops_per_second));
            c.push(cells::count(q.syn_queue));
            if cols.bytes {
                c.push(cells::bytes(q.waiting_bytes));
            }
            c.push(cells::seconds(q.oldest));
            if cols.spark > 0 {
                c.push(spark(model, r, cols.spark));
            }
            c.push(cells::owners_within(&q.owners, owner_width.into()));
            let style = if r.full {
                Style::new().red().bold()
            } else if r.drops_per_second.is_some_and(|d| d > 0.0) {
                Style::new().yellow()
            } else {
                Style::new()
            };
            TableRow::new(c.into_iter().map(Cell::from)).style(style)
        })
        .collect();
    let empty = table_rows.is_empty();
    let title = if model.filter.is_empty() {
        " queues ".to_string()
    } else {
        format!(" queues matching \"{}\" ", model.filter)
    };
    let table = Table::new(table_rows, widths)
        .header(TableRow::new(titles).bold().underlined())
        .block(Block::new().borders(Borders::TOP).title(title))
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
        .highlight_symbol(">");
    let mut state = TableState::default().with_selected(Some(model.selected_index(&rows)));
    screen.render_stateful_widget(table, area, &mut state);
    if empty {
        let msg = if model.refreshes == 0 {
            "waiting for the first sample..."
        } else if model.filter.is_empty() && model.editing.is_none() {
            "no listening socket, UDP receiver or unix listener here"
        } else {
            "no queue matches the filter"
        };
        let inner = Rect {
            y: area.y + 2,
            height: 1,
            ..area
        };
        screen.render_widget(Paragraph::new(msg).italic(), inner);
    }
}

fn spark(model: &Model, r: &Row<'_>, width: usize) -> String {
    let top = r.queue.limit.unwrap_or(0.0);
    cells::sparkline(&model.history(r.key), HISTORY_SECONDS, top, width)
}

fn client_table(screen: &mut Screen<'_>, area: Rect, model: &Model) {
    let rows: Vec<TableRow<'_>> = model
        .clients()
        .iter()
        .map(|c| {
            // Not the gap: a port's clients may talk to another server than
            // the one listening here (see the help).
            let style = if c.figures.syn_sent > 0.0 {
                Style::new().red()
            } else {
                Style::new()
            };
            TableRow::new(cells::client(c)).style(style)
        })
        .collect();
    let widths = [
        Constraint::Length(if area.width >= 120 { 24 } else { 10 }),
        Constraint::Length(6),
        Constraint::Length(8),
        Constraint::Length(6),
        Constraint::Length(12),
        Constraint::Length(5),
        Constraint::Length(7),
    ];
    let table = Table::new(rows, widths)
        .header(TableRow::new(cells::CLIENT_COLUMNS).bold().underlined())
        .block(
            Block::new()
                .borders(Borders::TOP)
                .title(" clients, by remote port "),
        );
    screen.render_widget(table, area);
}

fn detail(screen: &mut Screen<'_>, area: Rect, model: &Model, status: &Status) {
    screen.render_widget(Clear, area);
    let Some(r) = model.detail() else {
        let p = Paragraph::new("this queue is gone (its socket closed); Esc goes back")
            .block(Block::new().borders(Borders::TOP).title(" detail "));
        screen.render_widget(p, area);
        return;
    };
    let q = r.queue;
    let k = r.key;
    let field = |name: &str, value: String| {
        Line::from(vec![
            Span::from(format!("{name:<23} ")).bold(),
            Span::from(value),
        ])
    };
    let accept = !matches!(k.kind, super::frame::Kind::Udp);
    let mut lines = vec![
        field("netns", k.netns.clone()),
        field(
            "kind",
            if k.kind == super::frame::Kind::Unix {
                "unix".to_string()
            } else {
                format!("{} ({})", k.kind.as_str(), k.family)
            },
        ),
        field("listening on", k.endpoint()),
        field(
            if accept {
                "accept queue"
            } else {
                "receive queue"
            },
            format!("{}  {}", cells::queue(&r), cells::fill(&r)),
        ),
        field(
            "peak (daemon's window)",
            if accept {
                cells::count(q.peak)
            } else {
                cells::bytes(q.peak)
            },
        ),
    ];
    if accept {
        lines.push(field("time full (total)", cells::seconds(q.full_seconds)));
    }
    if k.kind != super::frame::Kind::Unix {
        lines.push(field(
            "drops",
            format!(
                "{} total, {}/s",
                cells::count(q.drops),
                cells::rate(r.drops_per_second)
            ),
        ));
    }
    if k.kind == super::frame::Kind::Tcp {
        lines.push(field(
            "netns ListenOverflows",
            format!("{}/s", cells::rate(model.overflows_per_second(&k.netns))),
        ));
        lines.extend([
            field("SYN-RECV (half-open)", cells::count(q.syn_queue)),
            field(
                "waiting to be accepted",
                format!(
                    "{}, oldest {}, clients sent {} bytes",
                    cells::count(q.length),
                    cells::seconds(q.oldest),
                    cells::bytes(q.waiting_bytes),
                ),
            ),
        ]);
        if let Some(at) = model
            .frame()
            .namespaces
            .get(&k.netns)
            .and_then(|n| n.connections_at)
        {
            lines.push(field(
                "connection figures",
                format!("walked at {}", clock_of(at)),
            ));
        }
    }
    if q.owners.is_empty() {
        lines.push(field("owner", "not known".into()));
    }
    for o in &q.owners {
        lines.push(field("owner", o.to_string()));
        lines.push(field("  exe", o.exe.clone()));
        lines.push(field("  cmdline", o.cmdline.clone()));
        if !o.unit.is_empty() {
            lines.push(field("  unit", o.unit.clone()));
        }
        if !o.container_id.is_empty() {
            lines.push(field("  container", o.container_id.clone()));
        }
    }
    let history = model.history(k);
    let list = (k.kind == super::frame::Kind::Tcp).then(|| waiting_list(model, k, status));
    // Side by side where there is room; else figures first.
    let (text, rest) = if area.width >= 120 && list.is_some() {
        let [l, r] =
            Layout::horizontal([Constraint::Percentage(55), Constraint::Fill(1)]).areas(area);
        (l, r)
    } else {
        // Every figure first; what is left goes to the list.
        let [t, r] = Layout::vertical([
            Constraint::Length((lines.len() as u16 + 1).min(area.height.saturating_sub(4))),
            Constraint::Fill(1),
        ])
        .areas(area);
        (t, r)
    };
    // The graph only where it leaves the list room.
    let graph_height = if history.is_empty() || (list.is_some() && rest.height < 10) {
        0
    } else {
        6
    };
    let [list_area, graph] =
        Layout::vertical([Constraint::Fill(1), Constraint::Length(graph_height)]).areas(rest);
    screen.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .scroll((model.detail_scroll, 0))
            .block(Block::new().borders(Borders::TOP).title(" detail ")),
        text,
    );
    if let Some((title, list)) = list {
        screen.render_widget(
            Paragraph::new(list).block(Block::new().borders(Borders::TOP).title(title)),
            list_area,
        );
    }
    if graph_height > 0 {
        // The widget draws from the first point: keep the newest that fit.
        let fit = usize::from(graph.width).max(1);
        let data: Vec<u64> = history
            .iter()
            .skip(history.len().saturating_sub(fit))
            .map(|(_, v)| *v as u64)
            .collect();
        let max = q
            .limit
            .unwrap_or(0.0)
            .max(data.iter().copied().max().unwrap_or(0) as f64);
        let title = format!(" queue, last {} s (scale: 0..{max:.0}) ", HISTORY_SECONDS);
        screen.render_widget(
            Sparkline::default()
                .block(Block::new().borders(Borders::TOP).title(title))
                .data(&data)
                .max(max.max(1.0) as u64),
            graph,
        );
    }
}

/// The connections waiting on `key`, as a title and lines: listed when
/// sampling here (the reader fetched them for this view), else why not.
fn waiting_list<'a>(model: &Model, key: &QueueKey, status: &Status) -> (String, Vec<Line<'a>>) {
    let note = |text: &str| vec![Line::from(text.to_string()).italic()];
    if !status.local {
        return (
            " waiting connections ".into(),
            note(
                "listed only when top samples here: the daemon's page has their count, bytes and oldest age",
            ),
        );
    }
    match &model.frame().waiting {
        Some((k, Ok(list))) if k == key => {
            // inet_diag does not say which member's queue a connection
            // is in: a member shows its whole group's.
            let whose = if key.member.is_empty() {
                ""
            } else {
                " in the reuseport group"
            };
            let title = if list.total > list.listed.len() {
                format!(
                    " waiting connections{whose}: {} (the first {} listed) ",
                    list.total,
                    list.listed.len()
                )
            } else {
                format!(" waiting connections{whose}: {} ", list.total)
            };
            let peers: Vec<String> = list.listed.iter().map(|w| w.peer.to_string()).collect();
            let width = peers.iter().map(String::len).max().unwrap_or(0).max(6);
            let mut lines = vec![
                Line::from(format!(
                    "{:<width$} {:>7} {:>8}",
                    "CLIENT", "BYTES", "WAITED"
                ))
                .bold(),
            ];
            lines.extend(list.listed.iter().zip(peers).map(|(w, peer)| {
                Line::from(format!(
                    "{peer:<width$} {:>7} {:>8}",
                    cells::bytes(Some(f64::from(w.bytes))),
                    cells::seconds(w.waited_ms.map(|ms| f64::from(ms) / 1000.0)),
                ))
            }));
            (title, lines)
        }
        Some((k, Err(e))) if k == key => (
            " waiting connections ".into(),
            note(&format!("cannot list them: {e}")),
        ),
        _ => (
            " waiting connections ".into(),
            note("listing them at the next refresh..."),
        ),
    }
}

/// A Unix time as `HH:MM:SS` UTC.
pub fn clock_of(unix: f64) -> String {
    let s = unix.max(0.0) as u64 % 86_400;
    format!("{:02}:{:02}:{:02} UTC", s / 3600, s / 60 % 60, s % 60)
}

fn help(screen: &mut Screen<'_>, area: Rect) {
    let lines: Vec<Line<'_>> = [
        ("q, Ctrl-C", "quit"),
        ("?", "this help; any key goes back"),
        ("s, F6, >", "sort by the next column: FILL, DROP/s, SYN-Q, OLDEST, QUEUE, NETNS"),
        ("<", "sort by the previous column"),
        ("/", "filter by port, address, process, unit, container or netns; Esc clears"),
        ("↑ ↓ j k, PgUp PgDn, g G", "select a queue"),
        ("Enter", "every figure of the selected queue, its last minute and (TCP, sampling here) its waiting connections; ↑↓ PgUp PgDn scroll it"),
        ("p, space", "pause (the screen stops changing; sampling goes on)"),
    ]
    .into_iter()
    .map(|(k, v)| Line::from(vec![Span::from(format!("{k:<26}")).bold(), Span::from(v)]))
    .chain([
        Line::from(""),
        Line::from("FULL: the accept queue is longer than its limit; the kernel refuses new connections."),
        Line::from("DROP/s: the listener's own drop counter (sk_drops) per second; SYN-Q: half-open requests."),
        Line::from("OLDEST: how long the oldest unaccepted connection has waited; BYTES: what clients sent it."),
        Line::from("Clients: SYN-SENT and Send-Q by remote port; GAP: clients ESTABLISHED beyond the server's"),
        Line::from("  count for that port in the same netns (final ACKs dropped at a full queue, as older"),
        Line::from("  kernels do); it means that only where the port's clients talk to that server."),
    ])
    .collect();
    screen.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(Block::new().borders(Borders::TOP).title(" keys ")),
        area,
    );
}

#[cfg(test)]
mod tests {
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    use super::*;
    use crate::top::frame::{Frame, Kind, Owner, Queue, QueueKey};
    use crate::top::model::Key;

    fn screen_text(model: &mut Model, width: u16, height: u16) -> String {
        let status = Status {
            local: true,
            source: "local".into(),
            clock: "08:00:00 UTC".into(),
            interval: "1s".into(),
        };
        let Ok(mut terminal) = Terminal::new(TestBackend::new(width, height)) else {
            panic!("a test terminal");
        };
        if let Err(e) = terminal.draw(|f| draw(f, model, &status)) {
            panic!("drawing: {e}");
        }
        let buffer = terminal.backend().buffer();
        let mut text = String::new();
        for y in 0..height {
            for x in 0..width {
                text.push_str(buffer[(x, y)].symbol());
            }
            text.push('\n');
        }
        text
    }

    fn busy_frame() -> Frame {
        let mut f = Frame::default();
        for (i, netns) in ["pod:production/frontend-web-7d4b9c-x2k9p", "host"]
            .into_iter()
            .enumerate()
        {
            let mut q = Queue {
                length: Some(if i == 0 { 129.0 } else { 3.0 }),
                limit: Some(128.0),
                ..Queue::default()
            };
            q.owners.push(Owner {
                pid: "123456".into(),
                comm: "nginx".into(),
                unit: "nginx.service".into(),
                ..Owner::default()
            });
            f.queues.insert(
                QueueKey {
                    kind: Kind::Tcp,
                    netns: netns.into(),
                    family: "ipv6".into(),
                    address: "2001:db8::1".into(),
                    port: "8443".into(),
                    member: String::new(),
                },
                q,
            );
        }
        f
    }

    #[test]
    fn at_80x24_full_paused_and_the_owner_pid_are_on_screen() {
        let mut m = Model::default();
        m.update(busy_frame(), 0.0);
        m.key(Key::Char('p'));
        let text = screen_text(&mut m, 80, 24);
        let header = text.lines().next().unwrap_or_default();
        assert!(
            header.contains("1 FULL") && header.contains("PAUSED"),
            "{header}"
        );
        let row = text
            .lines()
            .find(|l| l.contains("129/128"))
            .unwrap_or_default();
        assert!(row.contains("FULL") && row.contains("/123456"), "{row:?}");
        assert!(
            row.contains("pod:…"),
            "the netns cut in the middle: {row:?}"
        );
    }

    #[test]
    fn every_size_draws_without_panicking() {
        let mut m = Model::default();
        m.update(busy_frame(), 0.0);
        for (w, h) in [(1, 1), (10, 3), (40, 10), (80, 24), (120, 30), (250, 60)] {
            screen_text(&mut m, w, h);
            m.key(Key::Enter);
            screen_text(&mut m, w, h);
            m.key(Key::Esc);
            m.key(Key::Char('?'));
            screen_text(&mut m, w, h);
            m.key(Key::Esc);
        }
    }
}
