//! The `unix` collector: the accept queue of every listening unix stream
//! and seqpacket socket (php-fpm, gunicorn, uwsgi, PostgreSQL, containerd),
//! sampled on the fast tier and exported through the same per-listener
//! families as TCP, with `family="unix"`, the path (or `@name`) as
//! `address`, and no `port`.
//!
//! The kernel keeps no drop counter, SYN queue or request bytes for unix
//! listeners, so those series are absent, never zero. A unix dump walks
//! every unix socket of the namespace, so a namespace with very many of
//! them is sampled less often (see [`MAX_SHARE`]).

use std::sync::Arc;
use std::time::Duration;

use clap::{Arg, ArgAction, value_parser};
use regex::Regex;

use crate::cookie::CookieMap;
use crate::diag::{UnixListenersRequest, UnixRecord};
use crate::family::{Families, Kind, MetricDef};
use crate::model::{Endpoint, ListenerSample};
use crate::netns::Need;
use crate::table::{ListenerRow, Report};
use crate::tracker::{ListenerTracker, Seen};

use super::listening::{
    ACCEPT_QUEUE_FULL_SECONDS, ACCEPT_QUEUE_LENGTH, ACCEPT_QUEUE_LIMIT, ACCEPT_QUEUE_PEAK,
    LISTENER_PROCESS_INFO, cap, forget_history, in_order, owner, render_listener, render_owner,
    render_unexported,
};
use super::{
    Collector, Common, Ctx, NamespaceView, Registration, Sample, Tier, TypedCollector, UNIX,
};

/// The largest share of one core the unix dump of one namespace may take:
/// a namespace whose dump takes longer than this share of the fast
/// interval is sampled less often (31 ms per dump beside 150k unix sockets
/// means every 1.6 s instead of every 200 ms).
pub const MAX_SHARE: f64 = 0.02;

/// Its declaration.
pub static REGISTRATION: Registration = Registration {
    name: UNIX,
    help: "accept queues, limits, peaks and full time of every listening unix stream and \
           seqpacket socket (php-fpm, gunicorn, uwsgi behind a proxy), sampled fast, as \
           family=\"unix\" with the path as address. Each dump walks every unix socket of the \
           namespace; where that takes more than 2% of a core the namespace is sampled less \
           often.",
    default_enabled: true,
    tier: Tier::Fast,
    families: &[
        &ACCEPT_QUEUE_LENGTH,
        &ACCEPT_QUEUE_LIMIT,
        &ACCEPT_QUEUE_PEAK,
        &ACCEPT_QUEUE_FULL_SECONDS,
        &LISTENER_PROCESS_INFO,
        &UNEXPORTED,
    ],
    args,
    build,
};

/// `sockdiag_unix_listeners_unexported`
pub const UNEXPORTED: MetricDef = MetricDef {
    name: "sockdiag_unix_listeners_unexported",
    kind: Kind::Gauge,
    labels: &["netns", "reason"],
    member: false,
    help: "Listening unix sockets of the namespace left out of the per-listener series: reason=\"filter\" by --collector.unix.paths-include/-exclude, reason=\"cap\" because --collector.unix.max-listeners were already exported. Above 0 for cap, a full queue may go unseen: raise the cap or filter paths.",
};

const INCLUDE: &str = "collector.unix.paths-include";
const EXCLUDE: &str = "collector.unix.paths-exclude";
const MAX_LISTENERS: &str = "collector.unix.max-listeners";

fn args() -> Vec<Arg> {
    vec![
        Arg::new(INCLUDE)
            .long(INCLUDE)
            .value_name("REGEX")
            .value_parser(parse_regex)
            .action(ArgAction::Set)
            .global(true)
            .help(
                "Export only unix listeners whose address label (the path, or @name for \
                 abstract sockets) matches this regular expression (whole label), e.g. \
                 '/run/php/.*|@gunicorn.*'.",
            ),
        Arg::new(EXCLUDE)
            .long(EXCLUDE)
            .value_name("REGEX")
            .value_parser(parse_regex)
            .action(ArgAction::Set)
            .global(true)
            .help(
                "Leave out unix listeners whose address label matches this regular expression \
                 (whole label), e.g. '/run/user/.*|@/tmp/.X11-unix/.*'. Applied after include.",
            ),
        Arg::new(MAX_LISTENERS)
            .long(MAX_LISTENERS)
            .value_name("N")
            .value_parser(value_parser!(u32).range(1..=1_000_000))
            .default_value("1000")
            .action(ArgAction::Set)
            .global(true)
            .help(
                "Most unix listeners exported per namespace. Listeners already exported keep \
                 their place; newcomers past the cap are counted in \
                 sockdiag_unix_listeners_unexported{reason=\"cap\"}.",
            ),
    ]
}

fn parse_regex(text: &str) -> Result<Regex, String> {
    Regex::new(&format!("^(?:{text})$")).map_err(|e| format!("not a valid regular expression: {e}"))
}

fn build(m: &clap::ArgMatches, common: &Common) -> Box<dyn Collector> {
    Box::new(Unix {
        common: common.clone(),
        include: m.get_one::<Regex>(INCLUDE).cloned(),
        exclude: m.get_one::<Regex>(EXCLUDE).cloned(),
        max_listeners: m.get_one::<u32>(MAX_LISTENERS).copied().unwrap_or(1000) as usize,
    })
}

/// The built collector.
pub struct Unix {
    common: Common,
    include: Option<Regex>,
    exclude: Option<Regex>,
    max_listeners: usize,
}

/// What is kept per namespace between samples.
pub struct State {
    tracker: ListenerTracker,
    /// Address labels by cookie, so a dump allocates only for listeners
    /// it has not seen before (or that were bound anew).
    names: CookieMap<Name>,
}

struct Name {
    raw: Box<[u8]>,
    label: Arc<str>,
    /// Whether the path filters keep it.
    kept: bool,
    /// The dump that last saw it.
    seen_in: u64,
}

/// Buffers reused by every namespace's dump.
#[derive(Default)]
pub struct Scratch {
    seen: Vec<Seen>,
    dumps: u64,
}

/// The `address` label of a unix socket's name as the kernel holds it: a
/// path up to its first NUL, or, for a name starting with NUL (abstract),
/// `@` and the rest without its trailing NULs. A backslash is written `\\`
/// and every byte that is not printable UTF-8 as `\xNN`, so two names
/// never share a label unless they differ only in trailing NULs (and then
/// the `member` label tells them apart).
pub fn address_label(name: &[u8]) -> String {
    let (prefix, text) = match name.split_first() {
        Some((0, rest)) => {
            let end = rest.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
            ("@", &rest[..end])
        }
        _ => {
            let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
            ("", &name[..end])
        }
    };
    let mut out = String::with_capacity(prefix.len() + text.len());
    out.push_str(prefix);
    for chunk in text.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                c if c.is_control() => {
                    let mut buf = [0u8; 4];
                    for b in c.encode_utf8(&mut buf).bytes() {
                        out.push_str(&format!("\\x{b:02x}"));
                    }
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

impl Unix {
    fn keeps(&self, label: &str) -> bool {
        self.include.as_ref().is_none_or(|r| r.is_match(label))
            && !self.exclude.as_ref().is_some_and(|r| r.is_match(label))
    }

    /// The label of `r`, from the cache when its name is unchanged.
    fn name<'s>(&self, names: &'s mut CookieMap<Name>, r: &UnixRecord<'_>, dump: u64) -> &'s Name {
        let entry = names.entry(r.cookie).or_insert_with(|| Name {
            raw: Box::default(),
            label: Arc::from(""),
            kept: false,
            seen_in: 0,
        });
        if entry.seen_in == 0 || *entry.raw != *r.name {
            let label = address_label(r.name);
            entry.kept = self.keeps(&label);
            entry.label = Arc::from(label);
            entry.raw = r.name.into();
        }
        entry.seen_in = dump;
        entry
    }
}

impl TypedCollector for Unix {
    type State = State;
    type Scratch = Scratch;

    fn registration(&self) -> &'static Registration {
        &REGISTRATION
    }

    fn needs(&self) -> &'static [Need] {
        &[Need::Diag]
    }

    fn new_state(&self) -> State {
        State {
            tracker: ListenerTracker::new(self.common.peak_window),
            names: CookieMap::default(),
        }
    }

    fn new_scratch(&self) -> Scratch {
        Scratch::default()
    }

    fn sample(&self, ctx: &mut Ctx<'_>, state: &mut State, s: &mut Scratch) -> Sample {
        s.dumps += 1;
        let dump = s.dumps;
        s.seen.clear();
        let mut filtered = 0u64;
        let result = ctx.dump(|socket| {
            socket.dump_unix(&UnixListenersRequest, |r| {
                let (Some(length), Some(limit)) = (r.queue_length, r.queue_limit) else {
                    return;
                };
                let name = self.name(&mut state.names, r, dump);
                if !name.kept {
                    filtered += 1;
                    return;
                }
                s.seen.push(Seen {
                    endpoint: Endpoint::Unix(name.label.clone()),
                    length,
                    limit,
                    drops: None,
                    cookie: r.cookie,
                    inode: r.inode,
                    uid: r.uid,
                });
            })
        });
        if let Err(e) = result {
            return Sample::Failed(e);
        }
        state.names.retain(|_, n| n.seen_in == dump);
        // The tracker follows exactly the listeners exported: those keep
        // their place under the cap.
        let tracker = &state.tracker;
        let capped = cap(&mut s.seen, |c| tracker.tracks(c), self.max_listeners);
        let mut sample = state.tracker.update(ctx.now, ctx.wall, &s.seen, ctx.period);
        sample.unexported = vec![("filter", filtered), ("cap", capped)];
        if self.common.one_shot {
            forget_history(&mut sample);
        }
        Sample::Done(Arc::new(sample))
    }

    fn min_period(&self, took: Duration) -> Option<Duration> {
        Some(took.div_f64(MAX_SHARE))
    }

    fn render(&self, ns: &NamespaceView<'_>, out: &mut Families) {
        let Some(sample) = ns.view.part::<ListenerSample>(UNIX) else {
            return;
        };
        for l in &sample.listeners {
            render_listener(out, ns.name, l);
            render_owner(out, ns, l, &LISTENER_PROCESS_INFO);
        }
        render_unexported(out, ns.name, &UNEXPORTED, &sample.unexported);
    }

    fn report(&self, ns: &NamespaceView<'_>, out: &mut Report) {
        if let Some(sample) = ns.view.part::<ListenerSample>(UNIX) {
            for l in in_order(sample) {
                out.listeners
                    .push(ListenerRow::new(l, owner(ns.view, l.cookie)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_name_paths_and_abstract_sockets_like_ss() {
        assert_eq!(address_label(b"/run/php/app.sock\0"), "/run/php/app.sock");
        assert_eq!(address_label(b"/tmp/x"), "/tmp/x");
        assert_eq!(address_label(b"\0gunicorn"), "@gunicorn");
        assert_eq!(address_label(b"\0padded\0\0\0"), "@padded");
        assert_eq!(address_label(b"\0in\0side"), "@in\\x00side");
        assert_eq!(address_label(b""), "");
    }

    #[test]
    fn labels_escape_what_is_not_printable_and_stay_distinct() {
        assert_eq!(address_label(b"/a\\b"), "/a\\\\b");
        assert_eq!(address_label(b"/new\nline"), "/new\\x0aline");
        assert_eq!(address_label(b"/bad\xff\xfe"), "/bad\\xff\\xfe");
        assert_eq!(address_label("/caf\u{e9}".as_bytes()), "/caf\u{e9}");
        // A literal backslash-x in a path is not confused with an escape.
        assert_ne!(address_label(b"/x\\xff"), address_label(b"/x\xff"));
        assert_eq!(address_label("/\u{85}".as_bytes()), "/\\xc2\\x85");
    }
}
