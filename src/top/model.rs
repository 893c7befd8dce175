//! What `top` shows, apart from any terminal: the latest frame, rates
//! from its counters, each queue's last minute, and the user's choices
//! (sort, filter, selection, pause, which view). Keys change it through
//! [`Model::key`]; drawing reads it and never changes it.

use std::cmp::Ordering;
use std::collections::{HashMap, VecDeque};

use super::frame::{ClientPort, Frame, Kind, Queue, QueueKey, is_full};

/// How long each queue's history (the sparkline) goes back, in seconds.
pub const HISTORY_SECONDS: f64 = 60.0;

/// Columns the listener table can be sorted by, in the order `s` cycles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortBy {
    /// Queue over limit, fullest first (FULL before everything else).
    Fill,
    /// Drops per second, highest first.
    Drops,
    /// Half-open requests, most first.
    SynQueue,
    /// Age of the oldest waiting connection, oldest first.
    Oldest,
    /// Queue length, longest first.
    Queue,
    /// Namespace, then address: a stable list to read through.
    Name,
}

impl SortBy {
    const ALL: [SortBy; 6] = [
        SortBy::Fill,
        SortBy::Drops,
        SortBy::SynQueue,
        SortBy::Oldest,
        SortBy::Queue,
        SortBy::Name,
    ];

    /// The column title it sorts by, as the header names it.
    pub fn title(self) -> &'static str {
        match self {
            SortBy::Fill => "FILL",
            SortBy::Drops => "DROP/s",
            SortBy::SynQueue => "SYN-Q",
            SortBy::Oldest => "OLDEST",
            SortBy::Queue => "QUEUE",
            SortBy::Name => "NETNS",
        }
    }

    fn step(self, by: isize) -> SortBy {
        let n = Self::ALL.len() as isize;
        let i = Self::ALL.iter().position(|s| *s == self).unwrap_or(0) as isize;
        Self::ALL[(i + by).rem_euclid(n) as usize]
    }
}

/// Which screen is up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum View {
    /// The table of queues and the client panel.
    List,
    /// Everything about one queue.
    Detail(QueueKey),
    /// The keys.
    Help,
}

/// A key, as far as `top` cares: crossterm's events are turned into these
/// so that the model is tested without a terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    /// A printable character.
    Char(char),
    /// Ctrl and a character (Ctrl-C quits).
    Ctrl(char),
    /// Enter.
    Enter,
    /// Escape.
    Esc,
    /// Backspace.
    Backspace,
    /// Arrow up.
    Up,
    /// Arrow down.
    Down,
    /// Page up.
    PageUp,
    /// Page down.
    PageDown,
    /// Home.
    Home,
    /// End.
    End,
    /// F6, htop's sort key.
    F6,
}

/// What the event loop should do after a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Redraw.
    Redraw,
    /// Leave `top`.
    Quit,
}

/// One row of the queue table: a queue and what the model derived for it.
#[derive(Debug, Clone, Copy)]
pub struct Row<'a> {
    /// The queue's labels.
    pub key: &'a QueueKey,
    /// Its figures in the latest frame.
    pub queue: &'a Queue,
    /// Drops per second since the previous frame; `None` on the first
    /// frame, or when the counter went back (the socket was replaced).
    pub drops_per_second: Option<f64>,
    /// Whether the queue refuses new arrivals.
    pub full: bool,
}

/// One client port with its derived figures.
#[derive(Debug, Clone, Copy)]
pub struct ClientRow<'a> {
    /// Namespace label.
    pub netns: &'a str,
    /// Remote port.
    pub port: &'a str,
    /// Its figures.
    pub figures: &'a ClientPort,
}

impl ClientRow<'_> {
    /// Clients that believe they are connected while the server side has
    /// no connection for them (its final ACK dropped at a full queue);
    /// only known when the server is in the same namespace.
    pub fn gap(&self) -> Option<f64> {
        self.figures
            .server_established
            .map(|s| (self.figures.established - s).max(0.0))
    }
}

/// The state of `top`.
#[derive(Debug)]
pub struct Model {
    frame: Frame,
    /// Seconds (on the caller's monotonic clock) of the latest frame.
    at: Option<f64>,
    drops_per_second: HashMap<QueueKey, f64>,
    overflows_per_second: HashMap<String, f64>,
    history: HashMap<QueueKey, VecDeque<(f64, f64)>>,
    /// Sort column.
    pub sort: SortBy,
    /// Applied filter: rows whose text contains it (any case).
    pub filter: String,
    /// The filter being typed after `/`, until Enter or Esc.
    pub editing: Option<String>,
    selected: Option<QueueKey>,
    /// Current screen.
    pub view: View,
    /// While paused, new frames are not taken in.
    pub paused: bool,
    /// Why the last refresh failed, shown until one succeeds.
    pub error: Option<String>,
    /// Frames taken in.
    pub refreshes: u64,
    /// Rows a page key moves by (the table's height, set by drawing's
    /// caller).
    pub page: usize,
    /// Lines the detail view's figures are scrolled by (a long command
    /// line, many owners).
    pub detail_scroll: u16,
}

impl Default for Model {
    fn default() -> Self {
        Model {
            frame: Frame::default(),
            at: None,
            drops_per_second: HashMap::new(),
            overflows_per_second: HashMap::new(),
            history: HashMap::new(),
            sort: SortBy::Fill,
            filter: String::new(),
            editing: None,
            selected: None,
            view: View::List,
            paused: false,
            error: None,
            refreshes: 0,
            page: 10,
            detail_scroll: 0,
        }
    }
}

/// Per second between two readings of a counter; `None` when it went
/// back (a new socket under the same labels) or no time passed.
fn rate(before: Option<f64>, now: Option<f64>, seconds: f64) -> Option<f64> {
    match (before, now) {
        (Some(b), Some(n)) if n >= b && seconds > 0.0 => Some((n - b) / seconds),
        _ => None,
    }
}

impl Model {
    /// Takes in a frame read at `at` seconds (any monotonic origin),
    /// unless paused: rates against the previous frame, history, and the
    /// selection kept on the same queue.
    pub fn update(&mut self, frame: Frame, at: f64) {
        if self.paused {
            return;
        }
        let seconds = self.at.map_or(0.0, |before| at - before);
        // A rate is timed by the samples it compares, when the page says
        // when they were taken: reads drift against samples by up to a
        // listener period, which would make a steady rate jitter. Between
        // two reads of the same sample the rate stays what it was.
        let previous = std::mem::take(&mut self.drops_per_second);
        self.drops_per_second = frame
            .queues
            .iter()
            .filter_map(|(k, q)| {
                let before = self.frame.queues.get(k).and_then(|b| b.drops);
                let sampled = |f: &Frame| {
                    let ns = f.namespaces.get(&k.netns)?;
                    match k.kind {
                        Kind::Tcp => ns.listeners_at,
                        Kind::Udp => ns.udp_at,
                        Kind::Unix => None,
                    }
                };
                let r = match (sampled(&self.frame), sampled(&frame)) {
                    (Some(b), Some(n)) if n == b && before == q.drops => previous.get(k).copied(),
                    (Some(b), Some(n)) => rate(before, q.drops, n - b),
                    _ => rate(before, q.drops, seconds),
                };
                r.map(|r| (k.clone(), r))
            })
            .collect();
        self.overflows_per_second = frame
            .namespaces
            .iter()
            .filter_map(|(name, ns)| {
                let before = self
                    .frame
                    .namespaces
                    .get(name)
                    .and_then(|b| b.listen_overflows);
                rate(before, ns.listen_overflows, seconds).map(|r| (name.clone(), r))
            })
            .collect();
        self.history.retain(|k, _| frame.queues.contains_key(k));
        for (k, q) in &frame.queues {
            let h = self.history.entry(k.clone()).or_default();
            h.push_back((at, q.length.unwrap_or(0.0)));
            while h.front().is_some_and(|(t, _)| *t < at - HISTORY_SECONDS) {
                h.pop_front();
            }
        }
        self.frame = frame;
        self.at = Some(at);
        self.error = None;
        self.refreshes += 1;
    }

    /// Notes a failed refresh; the last frame stays on screen.
    pub fn failed(&mut self, error: String) {
        self.error = Some(error);
    }

    /// The latest frame.
    pub fn frame(&self) -> &Frame {
        &self.frame
    }

    /// ListenOverflows per second of a namespace, once two frames are in.
    pub fn overflows_per_second(&self, netns: &str) -> Option<f64> {
        self.overflows_per_second.get(netns).copied()
    }

    /// A queue's lengths over the last minute, oldest first, with their
    /// times in seconds before the latest frame.
    pub fn history(&self, key: &QueueKey) -> Vec<(f64, f64)> {
        let now = self.at.unwrap_or(0.0);
        self.history
            .get(key)
            .map(|h| h.iter().map(|(t, v)| (now - t, *v)).collect())
            .unwrap_or_default()
    }

    /// The queues that pass the filter, in sort order.
    pub fn rows(&self) -> Vec<Row<'_>> {
        let needle = self.needle();
        let mut rows: Vec<Row<'_>> = self
            .frame
            .queues
            .iter()
            .map(|(key, queue)| self.row(key, queue))
            .filter(|r| needle.is_empty() || matches(r, &needle))
            .collect();
        let sort = self.sort;
        rows.sort_by(|a, b| compare(sort, a, b).then_with(|| a.key.cmp(b.key)));
        rows
    }

    /// Client ports worth a look first: SYN-SENT, then a gap with the
    /// server, then unacknowledged bytes, then the most connections;
    /// filtered like the queues.
    pub fn clients(&self) -> Vec<ClientRow<'_>> {
        let needle = self.needle();
        let mut rows: Vec<ClientRow<'_>> = self
            .frame
            .clients
            .iter()
            .map(|((netns, port), figures)| ClientRow {
                netns,
                port,
                figures,
            })
            .filter(|c| {
                needle.is_empty()
                    || match port_of(&needle) {
                        Some(p) => c.port == p,
                        None => c.netns.to_lowercase().contains(&needle),
                    }
            })
            .collect();
        let weight = |c: &ClientRow<'_>| {
            (
                c.figures.syn_sent,
                c.gap().unwrap_or(0.0),
                c.figures.send_queue_bytes,
                c.figures.established,
            )
        };
        rows.sort_by(|a, b| {
            weight(b)
                .partial_cmp(&weight(a))
                .unwrap_or(Ordering::Equal)
                .then_with(|| (a.netns, a.port).cmp(&(b.netns, b.port)))
        });
        rows
    }

    /// The filter in effect, lower case: what is being typed, as it is
    /// typed, else the one applied.
    fn needle(&self) -> String {
        self.editing
            .as_deref()
            .unwrap_or(&self.filter)
            .trim()
            .to_lowercase()
    }

    /// Index of the selected row among `rows`, if it is still there; else
    /// the first row.
    pub fn selected_index(&self, rows: &[Row<'_>]) -> usize {
        self.selected
            .as_ref()
            .and_then(|s| rows.iter().position(|r| r.key == s))
            .unwrap_or(0)
    }

    /// The row the detail view shows, if it is still in the frame.
    pub fn detail(&self) -> Option<Row<'_>> {
        let View::Detail(key) = &self.view else {
            return None;
        };
        let (key, queue) = self.frame.queues.get_key_value(key)?;
        Some(self.row(key, queue))
    }

    /// A queue's row. A UDP receiver also counts as full while it drops
    /// with its buffer half used or more: the kernel refuses a datagram
    /// when queue plus the datagram's truesize exceed the buffer, so a
    /// dropping receiver rarely shows a queue at its very limit.
    fn row<'a>(&'a self, key: &'a QueueKey, queue: &'a Queue) -> Row<'a> {
        let drops_per_second = self.drops_per_second.get(key).copied();
        let dropping = key.kind == Kind::Udp
            && drops_per_second.is_some_and(|d| d > 0.0)
            && queue.fill().is_some_and(|f| f >= 0.5);
        Row {
            key,
            queue,
            drops_per_second,
            full: is_full(key.kind, queue) || dropping,
        }
    }

    fn select_moved(&mut self, by: isize) {
        let rows = self.rows();
        if rows.is_empty() {
            return;
        }
        let i = self.selected_index(&rows) as isize;
        let last = rows.len() as isize - 1;
        let j = (i + by).clamp(0, last) as usize;
        self.selected = Some(rows[j].key.clone());
    }

    /// Applies a key.
    pub fn key(&mut self, key: Key) -> Action {
        if let Key::Ctrl('c') = key {
            return Action::Quit;
        }
        if let Some(text) = self.editing.as_mut() {
            match key {
                Key::Char(c) => text.push(c),
                Key::Backspace => {
                    text.pop();
                }
                Key::Enter => {
                    self.filter = self.editing.take().unwrap_or_default();
                }
                // Back to the filter as it was before `/`.
                Key::Esc => self.editing = None,
                _ => {}
            }
            return Action::Redraw;
        }
        let page = self.page.max(1) as isize;
        match (key, &self.view) {
            (Key::Char('q'), _) => return Action::Quit,
            (Key::Char('?') | Key::Char('h'), View::Help) | (Key::Esc, View::Help) => {
                self.view = View::List;
            }
            (Key::Char('?') | Key::Char('h'), _) => self.view = View::Help,
            (Key::Char('p') | Key::Char(' '), _) => self.paused = !self.paused,
            (Key::Esc | Key::Enter | Key::Backspace, View::Detail(_)) => self.view = View::List,
            (Key::Up | Key::Char('k'), View::Detail(_)) => {
                self.detail_scroll = self.detail_scroll.saturating_sub(1);
            }
            (Key::Down | Key::Char('j'), View::Detail(_)) => {
                self.detail_scroll = self.detail_scroll.saturating_add(1).min(200);
            }
            (Key::PageUp, View::Detail(_)) => {
                self.detail_scroll = self.detail_scroll.saturating_sub(10);
            }
            (Key::PageDown, View::Detail(_)) => {
                self.detail_scroll = self.detail_scroll.saturating_add(10).min(200);
            }
            (_, View::Help) => self.view = View::List,
            (Key::Char('s') | Key::Char('>') | Key::F6, _) => self.sort = self.sort.step(1),
            (Key::Char('<'), _) => self.sort = self.sort.step(-1),
            (Key::Char('/'), _) => self.editing = Some(self.filter.clone()),
            (Key::Esc, View::List) => self.filter.clear(),
            (Key::Up | Key::Char('k'), View::List) => self.select_moved(-1),
            (Key::Down | Key::Char('j'), View::List) => self.select_moved(1),
            (Key::PageUp, View::List) => self.select_moved(-page),
            (Key::PageDown, View::List) => self.select_moved(page),
            (Key::Home | Key::Char('g'), View::List) => self.select_moved(isize::MIN / 2),
            (Key::End | Key::Char('G'), View::List) => self.select_moved(isize::MAX / 2),
            (Key::Enter, View::List) => {
                let rows = self.rows();
                if let Some(r) = rows.get(self.selected_index(&rows)) {
                    self.view = View::Detail(r.key.clone());
                    self.detail_scroll = 0;
                }
            }
            _ => {}
        }
        Action::Redraw
    }
}

/// A filter that names a port (`80` or `:80`) matches that port only, not
/// `8080` or `10.0.80.1`.
fn port_of(needle: &str) -> Option<&str> {
    let digits = needle.strip_prefix(':').unwrap_or(needle);
    (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())).then_some(digits)
}

/// Whether a row matches `needle` (already lower case): its port, when
/// the needle is one; else its text (namespace, address, port, kind,
/// owners) contains it.
fn matches(r: &Row<'_>, needle: &str) -> bool {
    let k = r.key;
    if let Some(port) = port_of(needle) {
        return k.port == port;
    }
    [
        k.netns.as_str(),
        k.address.as_str(),
        k.port.as_str(),
        k.kind.as_str(),
    ]
    .iter()
    .any(|s| s.to_lowercase().contains(needle))
        || k.endpoint().to_lowercase().contains(needle)
        || r.queue.owners.iter().any(|o| {
            [&o.comm, &o.pid, &o.unit, &o.container_id, &o.exe]
                .iter()
                .any(|s| s.to_lowercase().contains(needle))
        })
}

/// Descending by a figure, unknown last.
fn desc(a: Option<f64>, b: Option<f64>) -> Ordering {
    match (a, b) {
        (Some(x), Some(y)) => y.partial_cmp(&x).unwrap_or(Ordering::Equal),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    }
}

fn compare(sort: SortBy, a: &Row<'_>, b: &Row<'_>) -> Ordering {
    let (qa, qb) = (a.queue, b.queue);
    match sort {
        // Full queues first whatever their ratio; among the rest, the
        // fullest; accept queues before UDP at equal fill, since an accept
        // queue's fill counts refused clients.
        SortBy::Fill => b
            .full
            .cmp(&a.full)
            .then_with(|| desc(qa.fill(), qb.fill()))
            .then_with(|| (a.key.kind == Kind::Udp).cmp(&(b.key.kind == Kind::Udp)))
            .then_with(|| desc(a.drops_per_second, b.drops_per_second)),
        SortBy::Drops => {
            desc(a.drops_per_second, b.drops_per_second).then_with(|| desc(qa.drops, qb.drops))
        }
        SortBy::SynQueue => desc(qa.syn_queue, qb.syn_queue),
        SortBy::Oldest => desc(qa.oldest, qb.oldest),
        // Connections and bytes do not compare: accept queues first.
        SortBy::Queue => (a.key.kind == Kind::Udp)
            .cmp(&(b.key.kind == Kind::Udp))
            .then_with(|| desc(qa.length, qb.length)),
        SortBy::Name => {
            let port = |k: &QueueKey| k.port.parse::<u32>().unwrap_or(u32::MAX);
            (&a.key.netns, a.key.kind, port(a.key), &a.key.address).cmp(&(
                &b.key.netns,
                b.key.kind,
                port(b.key),
                &b.key.address,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::top::frame::Owner;

    fn key(netns: &str, port: u16) -> QueueKey {
        QueueKey {
            kind: Kind::Tcp,
            netns: netns.into(),
            family: "ipv4".into(),
            address: "127.0.0.1".into(),
            port: port.to_string(),
            member: String::new(),
        }
    }

    fn queue(length: f64, limit: f64, drops: f64) -> Queue {
        Queue {
            length: Some(length),
            limit: Some(limit),
            drops: Some(drops),
            ..Queue::default()
        }
    }

    fn frame(queues: &[(QueueKey, Queue)]) -> Frame {
        Frame {
            queues: queues.iter().cloned().collect(),
            ..Frame::default()
        }
    }

    fn ports(m: &Model) -> Vec<String> {
        m.rows().iter().map(|r| r.key.port.clone()).collect()
    }

    #[test]
    fn the_full_queue_comes_first_then_the_fullest() {
        let mut m = Model::default();
        m.update(
            frame(&[
                (key("a", 1), queue(5.0, 10.0, 0.0)),
                (key("a", 2), queue(11.0, 10.0, 0.0)),
                (key("b", 3), queue(900.0, 1000.0, 0.0)),
                (key("b", 4), queue(0.0, 0.0, 0.0)),
            ]),
            0.0,
        );
        assert_eq!(ports(&m), ["2", "3", "1", "4"]);
        assert!(m.rows()[0].full);
        assert!(!m.rows()[1].full, "90% is not full");
    }

    #[test]
    fn drops_per_second_come_from_the_counter_and_a_reset_is_no_rate() {
        let mut m = Model::default();
        m.update(frame(&[(key("a", 1), queue(11.0, 10.0, 100.0))]), 10.0);
        assert_eq!(m.rows()[0].drops_per_second, None, "one frame has no rate");
        m.update(frame(&[(key("a", 1), queue(11.0, 10.0, 130.0))]), 12.0);
        assert_eq!(m.rows()[0].drops_per_second, Some(15.0));
        m.update(frame(&[(key("a", 1), queue(11.0, 10.0, 4.0))]), 13.0);
        assert_eq!(m.rows()[0].drops_per_second, None, "a new socket");
    }

    #[test]
    fn sorting_cycles_through_every_column_and_back() {
        let mut m = Model::default();
        m.update(
            frame(&[
                (key("a", 1), queue(1.0, 10.0, 0.0)),
                (key("a", 2), queue(3.0, 100.0, 0.0)),
            ]),
            0.0,
        );
        m.update(
            frame(&[
                (key("a", 1), queue(1.0, 10.0, 0.0)),
                (key("a", 2), queue(3.0, 100.0, 50.0)),
            ]),
            1.0,
        );
        assert_eq!(ports(&m), ["1", "2"], "10% over 3%");
        m.key(Key::Char('s'));
        assert_eq!(
            (m.sort, ports(&m)),
            (SortBy::Drops, vec!["2".into(), "1".into()])
        );
        for _ in 0..5 {
            m.key(Key::F6);
        }
        assert_eq!(m.sort, SortBy::Fill);
        m.key(Key::Char('<'));
        assert_eq!(m.sort, SortBy::Name);
    }

    #[test]
    fn the_filter_matches_port_process_and_namespace_and_esc_clears_it() {
        let mut m = Model::default();
        let mut owned = queue(0.0, 10.0, 0.0);
        owned.owners.push(Owner {
            pid: "7".into(),
            comm: "php-fpm".into(),
            ..Owner::default()
        });
        m.update(
            frame(&[
                (key("host", 80), queue(0.0, 10.0, 0.0)),
                (key("pod:web/a", 9000), owned),
            ]),
            0.0,
        );
        for c in "/PHP".chars() {
            m.key(Key::Char(c));
        }
        assert_eq!(ports(&m), ["9000"], "applied as it is typed");
        m.key(Key::Esc);
        assert_eq!(ports(&m).len(), 2, "Esc while typing goes back");
        for c in "/PHP".chars() {
            m.key(Key::Char(c));
        }
        m.key(Key::Enter);
        assert_eq!(ports(&m), ["9000"]);
        m.key(Key::Char('/'));
        m.key(Key::Backspace);
        m.key(Key::Backspace);
        m.key(Key::Backspace);
        m.key(Key::Backspace);
        for c in ":80".chars() {
            m.key(Key::Char(c));
        }
        m.key(Key::Enter);
        assert_eq!(ports(&m), ["80"]);
        m.filter = "pod:web".into();
        assert_eq!(ports(&m), ["9000"]);
        m.filter = "8".into();
        assert!(
            ports(&m).is_empty(),
            "a port matches whole: 8 is neither 80 nor 9000"
        );
        m.key(Key::Esc);
        assert_eq!(ports(&m).len(), 2);
        assert_eq!(m.key(Key::Char('q')), Action::Quit);
    }

    #[test]
    fn selection_follows_its_queue_and_enter_opens_its_detail() {
        let mut m = Model::default();
        m.update(
            frame(&[
                (key("a", 1), queue(1.0, 10.0, 0.0)),
                (key("a", 2), queue(2.0, 10.0, 0.0)),
            ]),
            0.0,
        );
        m.key(Key::Down);
        assert_eq!(m.rows()[m.selected_index(&m.rows())].key.port, "1");
        // Port 1 becomes the fullest and moves up: the selection goes with it.
        m.update(
            frame(&[
                (key("a", 1), queue(9.0, 10.0, 0.0)),
                (key("a", 2), queue(2.0, 10.0, 0.0)),
            ]),
            1.0,
        );
        assert_eq!(m.selected_index(&m.rows()), 0);
        m.key(Key::Enter);
        assert_eq!(m.detail().map(|r| r.key.port.clone()), Some("1".into()));
        m.key(Key::Down);
        m.key(Key::PageDown);
        assert_eq!(m.detail_scroll, 11, "arrows scroll the detail");
        assert_eq!(
            m.selected_index(&m.rows()),
            0,
            "and do not move the selection"
        );
        assert_eq!(m.key(Key::Esc), Action::Redraw);
        assert_eq!(m.view, View::List);
        m.key(Key::End);
        assert_eq!(m.selected_index(&m.rows()), 1);
        m.key(Key::Enter);
        assert_eq!(m.detail_scroll, 0, "a detail opens at its top");
    }

    #[test]
    fn pause_freezes_the_frame_and_help_toggles() {
        let mut m = Model::default();
        m.update(frame(&[(key("a", 1), queue(1.0, 10.0, 0.0))]), 0.0);
        m.key(Key::Char('p'));
        m.update(frame(&[]), 1.0);
        assert_eq!(m.rows().len(), 1);
        m.key(Key::Char('p'));
        m.update(frame(&[]), 2.0);
        assert_eq!(m.rows().len(), 0);
        m.key(Key::Char('?'));
        assert_eq!(m.view, View::Help);
        m.key(Key::Char('x'));
        assert_eq!(m.view, View::List);
        assert_eq!(m.key(Key::Ctrl('c')), Action::Quit);
    }

    #[test]
    fn drop_rates_are_timed_by_the_samples_and_kept_between_them() {
        let mut m = Model::default();
        let at = |listeners_at: f64, drops: f64| {
            let mut f = frame(&[(key("a", 1), queue(11.0, 10.0, drops))]);
            f.namespaces.insert(
                "a".into(),
                crate::top::frame::Namespace {
                    listeners_at: Some(listeners_at),
                    ..Default::default()
                },
            );
            f
        };
        m.update(at(100.0, 0.0), 0.0);
        // Read 1.2 s later, but the samples are 1.0 s apart.
        m.update(at(101.0, 10.0), 1.2);
        assert_eq!(m.rows()[0].drops_per_second, Some(10.0));
        // The same sample read again: the rate stays.
        m.update(at(101.0, 10.0), 1.4);
        assert_eq!(m.rows()[0].drops_per_second, Some(10.0));
    }

    #[test]
    fn a_dropping_udp_receiver_with_a_busy_buffer_is_full() {
        let mut m = Model::default();
        let udp = QueueKey {
            kind: Kind::Udp,
            ..key("a", 53)
        };
        m.update(frame(&[(udp.clone(), queue(7_300.0, 8_000.0, 10.0))]), 0.0);
        assert!(!m.rows()[0].full, "91% and no rate yet");
        m.update(frame(&[(udp.clone(), queue(7_300.0, 8_000.0, 11.0))]), 1.0);
        assert!(m.rows()[0].full, "91% and dropping");
        m.update(frame(&[(udp, queue(100.0, 8_000.0, 12.0))]), 2.0);
        assert!(
            !m.rows()[0].full,
            "dropping with an empty buffer is something else"
        );
    }

    #[test]
    fn history_keeps_one_minute() {
        let mut m = Model::default();
        for t in 0..100 {
            m.update(
                frame(&[(key("a", 1), queue(t as f64, 200.0, 0.0))]),
                t as f64,
            );
        }
        let h = m.history(&key("a", 1));
        assert_eq!(h.len(), 61);
        assert_eq!(h.first(), Some(&(60.0, 39.0)));
        assert_eq!(h.last(), Some(&(0.0, 99.0)));
    }

    #[test]
    fn clients_in_syn_sent_come_first_and_the_gap_needs_the_server() {
        let mut f = Frame::default();
        f.clients.insert(
            ("host".into(), "443".into()),
            ClientPort {
                established: 100.0,
                ..ClientPort::default()
            },
        );
        f.clients.insert(
            ("host".into(), "80".into()),
            ClientPort {
                syn_sent: 10.0,
                established: 15.0,
                server_established: Some(14.0),
                ..ClientPort::default()
            },
        );
        let mut m = Model::default();
        m.update(f, 0.0);
        let c = m.clients();
        assert_eq!((c[0].port, c[0].gap()), ("80", Some(1.0)));
        assert_eq!((c[1].port, c[1].gap()), ("443", None));
    }
}
