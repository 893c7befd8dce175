//! The `listeners` collector: every TCP `LISTEN` socket's accept queue
//! against its limit, its peak over a window, the time it was full, and its
//! drop counter, sampled on the fast tier. A dump that asks only for
//! `LISTEN` walks the listening hash alone, so its cost follows listeners,
//! not connections.
//!
//! Its families are the per-listener ones it shares with the unix
//! collector ([`super::listening`]), so alerts and dashboards cover both.

use std::sync::Arc;

use crate::aggregate::ListenerRecord;
use crate::family::Families;
use crate::model::{ConnectionSample, Endpoint, ListenerSample};
use crate::netns::Need;
use crate::table::{self, ListenerRow, Report};
use crate::tracker::{ListenerTracker, Seen};

use super::listening::{
    ACCEPT_QUEUE_FULL_SECONDS, ACCEPT_QUEUE_LENGTH, ACCEPT_QUEUE_LIMIT, ACCEPT_QUEUE_PEAK,
    Backlogs, LISTEN_DROPS, LISTENER_PROCESS_INFO, dump_listeners, forget_history, in_order, owner,
    render_listener, render_owner, waiting,
};
use super::{
    CONNECTIONS, Collector, Common, Ctx, LISTENERS, NamespaceView, Registration, Sample, Tier,
    TypedCollector,
};

/// Its declaration.
pub static REGISTRATION: Registration = Registration {
    name: LISTENERS,
    help: "accept queues, limits, peaks, full time and drops of every TCP LISTEN socket, \
           sampled fast. Its cost grows with listeners, not connections.",
    default_enabled: true,
    tier: Tier::Fast,
    families: &[
        &ACCEPT_QUEUE_LENGTH,
        &ACCEPT_QUEUE_LIMIT,
        &ACCEPT_QUEUE_PEAK,
        &ACCEPT_QUEUE_FULL_SECONDS,
        &LISTEN_DROPS,
        &LISTENER_PROCESS_INFO,
    ],
    args: Vec::new,
    build,
};

fn build(_: &clap::ArgMatches, common: &Common) -> Box<dyn Collector> {
    Box::new(Listeners {
        common: common.clone(),
    })
}

/// The built collector.
pub struct Listeners {
    common: Common,
}

/// Buffers reused by every namespace's dump.
#[derive(Default)]
pub struct Scratch {
    records: Vec<ListenerRecord>,
    seen: Vec<Seen>,
}

impl TypedCollector for Listeners {
    type State = ListenerTracker;
    type Scratch = Scratch;

    fn registration(&self) -> &'static Registration {
        &REGISTRATION
    }

    fn needs(&self) -> &'static [Need] {
        &[Need::Diag]
    }

    fn new_state(&self) -> ListenerTracker {
        ListenerTracker::new(self.common.peak_window)
    }

    fn new_scratch(&self) -> Scratch {
        Scratch::default()
    }

    fn sample(&self, ctx: &mut Ctx<'_>, tracker: &mut ListenerTracker, s: &mut Scratch) -> Sample {
        if let Err(e) = ctx.dump(|socket| dump_listeners(socket, true, &mut s.records)) {
            return Sample::Failed(e);
        }
        s.seen.clear();
        s.seen.extend(s.records.iter().map(|r| Seen {
            endpoint: Endpoint::Inet(r.key),
            length: r.length,
            limit: r.limit,
            drops: r.drops,
            cookie: r.cookie,
            inode: r.inode,
            uid: Some(r.uid),
        }));
        let mut sample = tracker.update(ctx.now, ctx.wall, &s.seen, ctx.period);
        if self.common.one_shot {
            forget_history(&mut sample);
        }
        Sample::Done(Arc::new(sample))
    }

    fn render(&self, ns: &NamespaceView<'_>, out: &mut Families) {
        if let Some(sample) = ns.view.part::<ListenerSample>(LISTENERS) {
            for l in &sample.listeners {
                render_listener(out, ns.name, l);
                render_owner(out, ns, l, &LISTENER_PROCESS_INFO);
            }
        }
    }

    fn report(&self, ns: &NamespaceView<'_>, out: &mut Report) {
        let Some(sample) = ns.view.part::<ListenerSample>(LISTENERS) else {
            return;
        };
        let connections = ns.view.part::<ConnectionSample>(CONNECTIONS);
        let backlogs = Backlogs::of(sample);
        for l in in_order(sample) {
            let mut row = ListenerRow::new(l, owner(ns.view, l.cookie));
            // Bytes, age and SYN queue are per address: the kernel does not
            // say which member of a reuseport group holds a connection, so
            // they are shown on the group's first row only.
            let first = l.member.is_none_or(|m| m == 0);
            let walked = l.endpoint.inet().and_then(|key| {
                let c = connections?;
                Some((c.queue(key)?, c.taken_at, backlogs.get(key)))
            });
            if let Some((q, taken_at, backlog)) = walked.filter(|_| first) {
                row.cells[table::SYN_Q] = q.syn_queue_length.to_string();
                // Not shown beside a queue the walk did not see.
                if let Some(w) = waiting(q, taken_at, backlog) {
                    row.cells[table::BYTES] = w.bytes.to_string();
                    row.cells[table::OLDEST] = w
                        .oldest_seconds
                        .map_or_else(|| "-".to_string(), |s| format!("{s:.1}s"));
                }
            }
            out.listeners.push(row);
        }
    }
}
