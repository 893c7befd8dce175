//! The `connections` collector: one walk of every TCP connection per full
//! pass, folded while it streams into per-port states and Send-Q/Recv-Q by
//! role, and into the bytes, age and SYN-RECV requests of each listener's
//! queue.

use std::sync::Arc;
use std::time::SystemTime;

use clap::{Arg, ArgAction, ValueEnum, builder::EnumValueParser, value_parser};

use crate::aggregate::{ConnectionAggregator, ListenerRecord, Role, in_accept_queue};
use crate::diag::lookup::{Answer, Lookup, LookupError};
use crate::diag::{DiagError, DiagSocket, DumpRequest, Mode, PortFilter, TcpState};
use crate::family::{Families, Kind, LISTENER_LABELS, MetricDef, NETNS_LABELS, PORT_LABELS};
use crate::model::{ConnectionSample, ListenerSample, NetnsView, PortSummary, QueueSummary};
use crate::netns::{Need, ProcName};
use crate::procfs;
use crate::table::{Report, align};

use super::listening::{Backlogs, dump_listeners, tcp_listener_drops, waiting};
use super::{
    CONNECTIONS, Call, Collector, Common, Ctx, LISTENERS, NamespaceView, PortList, Registration,
    Sample, Tier, TypedCollector, parse_ports,
};

/// Its declaration.
pub static REGISTRATION: Registration = Registration {
    name: CONNECTIONS,
    help: "states and Send-Q/Recv-Q per port, and bytes, age and SYN-RECV requests of each \
           listener. Walks every TCP socket: cost grows with connections (about 0.2 s of kernel \
           time per 100k); all walks together keep to --collector.connections.cpu-budget, \
           troubled namespaces first.",
    default_enabled: true,
    tier: Tier::Full,
    families: &[
        &ACCEPT_QUEUE_BYTES,
        &ACCEPT_QUEUE_OLDEST,
        &SYN_QUEUE_LENGTH,
        &TCP_CONNECTIONS,
        &TCP_SEND_QUEUE,
        &TCP_RECV_QUEUE,
        &CLIENT_PORTS_FOLDED,
        &WALKS_SKIPPED,
    ],
    args,
    build,
};

/// `sockdiag_accept_queue_bytes`
pub const ACCEPT_QUEUE_BYTES: MetricDef = MetricDef {
    name: "sockdiag_accept_queue_bytes",
    kind: Kind::Gauge,
    labels: LISTENER_LABELS,
    member: false,
    help: "Bytes already received on connections still waiting in the accept queue: requests clients have sent that nobody has read yet. For a SO_REUSEPORT group, the whole group.",
};
/// `sockdiag_accept_queue_oldest_seconds`
pub const ACCEPT_QUEUE_OLDEST: MetricDef = MetricDef {
    name: "sockdiag_accept_queue_oldest_seconds",
    kind: Kind::Gauge,
    labels: LISTENER_LABELS,
    member: false,
    help: "How long the oldest connection still in the accept queue has waited (0 when empty). Seconds here mean clients waiting that long before the application sees them. For a SO_REUSEPORT group, the whole group. Not exported with --collector.connections.queue-age off.",
};
/// `sockdiag_syn_queue_length`
pub const SYN_QUEUE_LENGTH: MetricDef = MetricDef {
    name: "sockdiag_syn_queue_length",
    kind: Kind::Gauge,
    labels: LISTENER_LABELS,
    member: false,
    help: "Half-open connections (SYN-RECV requests) for this listener: handshakes waiting for the client's final ACK. A large or growing value suggests a SYN flood or lossy clients. For a SO_REUSEPORT group, the whole group.",
};
/// `sockdiag_tcp_connections`
pub const TCP_CONNECTIONS: MetricDef = MetricDef {
    name: "sockdiag_tcp_connections",
    kind: Kind::Gauge,
    labels: &["netns", "role", "port", "state"],
    member: false,
    help: "TCP sockets by state, keyed by the local port for role=server (a listening port) and by the remote port for role=client. States with no socket are not exported.",
};
/// `sockdiag_tcp_send_queue_bytes`
pub const TCP_SEND_QUEUE: MetricDef = MetricDef {
    name: "sockdiag_tcp_send_queue_bytes",
    kind: Kind::Gauge,
    labels: PORT_LABELS,
    member: false,
    help: "Sum of Send-Q: bytes written and not yet acknowledged by the peer. Growing on role=client: the remote side is not accepting or reading; on role=server: clients are not reading.",
};
/// `sockdiag_tcp_recv_queue_bytes`
pub const TCP_RECV_QUEUE: MetricDef = MetricDef {
    name: "sockdiag_tcp_recv_queue_bytes",
    kind: Kind::Gauge,
    labels: PORT_LABELS,
    member: false,
    help: "Sum of Recv-Q: bytes received and not yet read by the local application (includes connections still in accept queues).",
};
/// `sockdiag_netns_walks_skipped_total`
pub const WALKS_SKIPPED: MetricDef = MetricDef {
    name: "sockdiag_netns_walks_skipped_total",
    kind: Kind::Counter,
    labels: NETNS_LABELS,
    member: false,
    help: "Connection walks of the namespace skipped because nothing could have changed: the last walk found no connection, and its sockstat TCP counts and Tcp InSegs/OutSegs had not moved since. The figures then stand as of the skipped walk.",
};
/// `sockdiag_tcp_client_ports_folded`
pub const CLIENT_PORTS_FOLDED: MetricDef = MetricDef {
    name: "sockdiag_tcp_client_ports_folded",
    kind: Kind::Gauge,
    labels: NETNS_LABELS,
    member: false,
    help: "Remote ports summed into port=\"other\" because there were more than --collector.connections.max-client-ports of them.",
};

const MAX_CLIENT_PORTS: &str = "collector.connections.max-client-ports";
const PORTS: &str = "collector.connections.ports";
const EXCLUDE_PORTS: &str = "collector.connections.exclude-ports";
const QUEUE_AGE: &str = "collector.connections.queue-age";
const CPU_BUDGET: &str = "collector.connections.cpu-budget";

/// The default of `--collector.connections.cpu-budget`.
pub const DEFAULT_CPU_BUDGET: f64 = 0.02;

/// A listener whose queue is fuller than this fraction of its limit puts
/// its namespace in trouble: first in line for the walk.
pub const TROUBLE_FILL: f64 = 0.5;

/// Parses a fraction of one core: more than 0, at most 1.
fn parse_budget(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(f) if f > 0.0 && f <= 1.0 => Ok(f),
        Ok(_) => Err(format!(
            "{text:?} is out of range: a fraction of one core, more than 0 and at most 1 \
             (0.02 is 2%)"
        )),
        Err(_) => Err(format!(
            "{text:?} is not a number: a fraction of one core such as 0.02"
        )),
    }
}

/// How queued connections are dated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum QueueAge {
    /// From `tcp_info`, to the millisecond.
    Exact,
    /// Not at all.
    Off,
}

fn args() -> Vec<Arg> {
    vec![
        Arg::new(MAX_CLIENT_PORTS)
            .long(MAX_CLIENT_PORTS)
            .value_name("N")
            .value_parser(value_parser!(usize))
            .default_value("256")
            .action(ArgAction::Set)
            .global(true)
            .help(
                "Most remote ports exported as their own role=\"client\" series; the rest \
                 (those with the fewest sockets) are summed into port=\"other\".",
            ),
        Arg::new(PORTS)
            .long(PORTS)
            .value_name("PORTS")
            .value_parser(parse_ports)
            .conflicts_with(EXCLUDE_PORTS)
            .action(ArgAction::Set)
            .global(true)
            .help(
                "Walk only connections whose local or remote port is in this comma-separated \
                 list (e.g. 80,443): the kernel skips the others before building replies. \
                 Per-listener bytes, age and SYN queue are exported only for listed ports; \
                 listener queues, limits and drops are not affected.",
            ),
        Arg::new(EXCLUDE_PORTS)
            .long(EXCLUDE_PORTS)
            .value_name("PORTS")
            .value_parser(parse_ports)
            .action(ArgAction::Set)
            .global(true)
            .help(
                "Walk every connection except those whose local port is in this \
                 comma-separated list: the servers on those ports (e.g. 22,2049 to leave out \
                 SSH and NFS servers). Connections from this host to those ports are still \
                 counted, and the listed ports get no per-listener bytes, age or SYN queue.",
            ),
        Arg::new(QUEUE_AGE)
            .long(QUEUE_AGE)
            .value_name("MODE")
            .value_parser(EnumValueParser::<QueueAge>::new())
            .default_value("exact")
            .action(ArgAction::Set)
            .global(true)
            .help(
                "How to date connections waiting in accept queues \
                 (sockdiag_accept_queue_oldest_seconds). `exact`, while some queue is \
                 non-empty, asks the kernel about each waiting connection alone after the \
                 walk (about 2 us each), or, when more than one socket in ten waits, reads \
                 tcp_info in the walk itself (about 15% dearer); `off` skips it, and the age \
                 is then not exported at all.",
            ),
        Arg::new(CPU_BUDGET)
            .long(CPU_BUDGET)
            .value_name("FRACTION")
            .value_parser(parse_budget)
            .default_value("0.02")
            .action(ArgAction::Set)
            .global(true)
            .help(
                "CPU the connection walks may use, all namespaces together, as a fraction of \
                 one core (0.02 = 2%), measured as the sampling thread's own CPU time. \
                 Namespaces in trouble (a listener more than half full or dropping, a queue \
                 no walk has seen) are walked first, within a second; the rest in turn, \
                 oldest figures first. A quiet namespace is walked at most every \
                 --collector.connections.interval; when the budget cannot cover every \
                 namespace in one interval, figures get older instead \
                 (sockdiag_netns_last_sample_timestamp_seconds shows how old).",
            ),
    ]
}

fn build(m: &clap::ArgMatches, common: &Common) -> Box<dyn Collector> {
    let sockstat6 = common.procfs_has("self/net/sockstat6");
    let mut needs = vec![
        Need::Diag,
        Need::Proc(ProcName::Sockstat),
        Need::Proc(ProcName::Snmp),
    ];
    if sockstat6 {
        needs.push(Need::Proc(ProcName::Sockstat6));
    }
    Box::new(Connections {
        settings: settings(m),
        sockstat6,
        needs,
    })
}

/// The settings the parsed flags describe.
pub fn settings(m: &clap::ArgMatches) -> Settings {
    let (mode, ports) = match (
        m.get_one::<PortList>(PORTS),
        m.get_one::<PortList>(EXCLUDE_PORTS),
    ) {
        (Some(p), _) => (Mode::Only, Some(p)),
        (None, Some(p)) => (Mode::Except, Some(p)),
        (None, None) => (Mode::Only, None),
    };
    // The lists were bounded when parsed, so building cannot fail.
    let filter = ports.and_then(|p| PortFilter::new(mode, p.0.clone()).ok().flatten());
    Settings {
        max_client_ports: m.get_one::<usize>(MAX_CLIENT_PORTS).copied().unwrap_or(256),
        filter,
        queue_ages: m.get_one::<QueueAge>(QUEUE_AGE).copied() != Some(QueueAge::Off),
        cpu_budget: m
            .get_one::<f64>(CPU_BUDGET)
            .copied()
            .unwrap_or(DEFAULT_CPU_BUDGET),
    }
}

/// How the walk is done.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Client ports kept as their own series; the rest fold into `other`.
    pub max_client_ports: usize,
    /// Kernel-side port filter for the walk.
    pub filter: Option<PortFilter>,
    /// Read `tcp_info` to date connections waiting in accept queues (only
    /// while some queue is non-empty).
    pub queue_ages: bool,
    /// Fraction of one core the walks may use.
    pub cpu_budget: f64,
}

/// The built collector.
pub struct Connections {
    settings: Settings,
    /// Whether the kernel has `net/sockstat6`.
    sockstat6: bool,
    needs: Vec<Need>,
}

/// Reusable buffers of the walk, shared by every namespace of a pass.
#[derive(Default)]
pub struct ConnectionWork {
    listeners: Vec<ListenerRecord>,
    aggregator: ConnectionAggregator,
    lookup: Lookup,
}

/// Exact lookups date the waiting connections while they are fewer than
/// one in this many of the sockets walked. Measured: `tcp_info` in the
/// walk costs about 0.15 us per socket walked, a lookup about 1.6 us per
/// waiting connection (`sockdiag-bench lookup`), so lookups win below
/// about one in ten; past it the walk reads `tcp_info` for all, as before.
const LOOKUPS_BELOW_ONE_IN: u64 = 10;

/// How waiting connections are dated in one walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dating {
    /// Nothing waits (or ages are off).
    None,
    /// The walk reads `tcp_info` for every socket.
    Walk,
    /// The walk reads no extension; each waiting connection is then looked
    /// up alone.
    Lookups,
}

impl Dating {
    /// The cheaper way for `queued` waiting connections among about
    /// `sockets` (the namespace's last walk; unknown before the first).
    fn choose(want_ages: bool, queued: u64, sockets: Option<u64>) -> Dating {
        match (want_ages, sockets) {
            (false, _) => Dating::None,
            (true, Some(n)) if queued.saturating_mul(LOOKUPS_BELOW_ONE_IN) > n => Dating::Walk,
            (true, _) => Dating::Lookups,
        }
    }
}

/// One connection sample: the current listeners (to tell server from client
/// ports), then one walk of every other socket. Dating the connections
/// waiting in accept queues is done only when the listener dump just taken
/// shows a non-empty queue, the cheaper of two ways for their number
/// against `sockets_hint` (the namespace's last walk): the walk itself
/// reads no extension, the cheapest dump the kernel offers, and each
/// waiting connection is then asked about alone (`tcp_info` of that socket,
/// found in the kernel's hash); or, when more than one socket in ten
/// waits (or when `allow_lookups` is false, after a walk that found more
/// than it may look up), the walk reads `tcp_info` for every socket. A
/// second walk just for ages would cost as much as the first, since
/// touching every socket, not building replies, is what a dump pays for.
///
/// With a port filter, the kernel skips other sockets before building
/// their replies, and per-address queue figures are kept only for listening
/// ports whose connections the walk sees in full.
pub fn sample_connections(
    socket: &mut DiagSocket,
    work: &mut ConnectionWork,
    settings: &Settings,
    sockets_hint: Option<u64>,
    allow_lookups: bool,
) -> Result<ConnectionSample, DiagError> {
    let taken_at = SystemTime::now();
    let filter = settings.filter.as_ref();
    dump_listeners(socket, false, &mut work.listeners)?;
    // Only queues the walk sees in full are dated: ages for a listener
    // whose connections are filtered out would never be exported.
    let queued: u64 = work
        .listeners
        .iter()
        .filter(|l| filter.is_none_or(|f| f.covers(true, l.key.port)))
        .map(|l| u64::from(l.length))
        .sum();
    let want_ages = settings.queue_ages && queued > 0;
    let dating = match Dating::choose(want_ages, queued, sockets_hint) {
        Dating::Lookups if !allow_lookups => Dating::Walk,
        d => d,
    };
    let agg = &mut work.aggregator;
    agg.reset(work.listeners.iter());
    if dating == Dating::Lookups {
        agg.collect_waiting();
    }
    let mut sockets = 0u64;
    // Both families in one walk of the established hash.
    let request = DumpRequest::tcp_connections(dating == Dating::Walk, filter);
    let stats = socket.dump(&request, |r| {
        sockets += 1;
        agg.add(r);
    })?;
    let (walk_bytes, walk_datagrams) = (stats.bytes as u64, stats.datagrams as u64);
    if dating == Dating::Lookups {
        let waiting = agg.take_waiting();
        let result = work.lookup.run(socket, &waiting.ids, |i, answer| {
            // Only a connection still waiting tells its wait: one accepted
            // since the walk is the same socket, now with an inode; one gone
            // or closed answers ENOENT and has stopped waiting.
            if let Answer::Found(r) = answer {
                if let (true, Some(age), Some(key)) = (
                    in_accept_queue(&r),
                    r.last_data_sent_ms,
                    waiting.keys.get(i),
                ) {
                    agg.add_age(key, age);
                }
            }
        });
        agg.restore_waiting(waiting);
        result.map_err(lookup_error)?;
    }
    agg.finish(settings.queue_ages);
    let undated = agg.undated();
    let (ports, folded) = agg.ports(settings.max_client_ports, |role, port| {
        filter.is_none_or(|f| f.covers(role == Role::Server, port))
    });
    Ok(ConnectionSample {
        taken_at,
        queues: agg
            .queues()
            .into_iter()
            .filter(|(k, _)| filter.is_none_or(|f| f.covers(true, k.port)))
            .map(|(k, q)| QueueSummary::new(k, q))
            .map(|mut q| {
                // With ages off the series is never exported, so that a
                // dashboard cannot read "0" across the very windows when
                // connections waited.
                if !settings.queue_ages {
                    q.oldest_seconds = None;
                }
                q
            })
            .collect(),
        ports: ports.iter().map(PortSummary::new).collect(),
        sockets,
        walk_bytes,
        walk_datagrams,
        dated: want_ages,
        undated,
        client_ports_folded: folded as u64,
        skipped_total: 0,
    })
}

/// A failed lookup batch as the sample's error: the socket failed, so the
/// namespace's handles are reopened like after a failed dump.
fn lookup_error(e: LookupError) -> DiagError {
    match e {
        LookupError::Send { requests, source } => DiagError::Send {
            request: format!("exact lookup of {requests} waiting connections"),
            source,
        },
        LookupError::Recv { requests, source } => DiagError::Recv {
            request: format!("exact lookup of {requests} waiting connections"),
            source,
        },
    }
}

/// What the collector remembers of a namespace between walks.
#[derive(Debug, Default)]
pub struct Walked {
    /// The drops of the namespace's TCP listeners when the last walk began:
    /// more since puts the namespace in trouble.
    drops: u64,
    /// The namespace's TCP activity just before the last walk, if that
    /// walk found no connection at all.
    quiet: Option<TcpActivity>,
    /// Walks skipped so far.
    skipped: u64,
    /// Sockets the last walk found, to choose how to date waiting
    /// connections (before the first, `net/sockstat`'s count).
    sockets: Option<u64>,
    /// The last walk kept more waiting connections than it may look up:
    /// the next one reads `tcp_info` instead.
    too_many_waiting: bool,
}

/// What the namespace's TCP counters say of its activity: while none of
/// these moves, no connection can have appeared (a connection is hashed,
/// or at least sends or receives a segment; a half-open request needs a
/// SYN received).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpActivity {
    /// `net/sockstat` TCP inuse and tw.
    v4: (u64, u64),
    /// `net/sockstat6` TCP6 inuse.
    v6: Option<u64>,
    /// `net/snmp` Tcp InSegs and OutSegs.
    segments: (u64, u64),
}

impl TcpActivity {
    /// TCP sockets of the namespace, about what a walk reports.
    fn sockets(&self) -> u64 {
        self.v4.0 + self.v4.1 + self.v6.unwrap_or(0)
    }
}

impl Connections {
    /// Reads the namespace's TCP activity; `None` if a file cannot be read
    /// (then the walk is simply not skipped).
    fn activity(&self, ctx: &mut Ctx<'_>) -> Option<TcpActivity> {
        let mut read = |name| ctx.read_optional(name);
        let v4 = procfs::parse_sockstat(&read(ProcName::Sockstat)?, "TCP:").ok()?;
        let v6 = if self.sockstat6 {
            Some(
                procfs::parse_sockstat(&read(ProcName::Sockstat6)?, "TCP6:")
                    .ok()?
                    .0,
            )
        } else {
            None
        };
        let segments = procfs::parse_snmp_tcp_segments(&read(ProcName::Snmp)?).ok()?;
        Some(TcpActivity { v4, v6, segments })
    }
}

impl TypedCollector for Connections {
    type State = Walked;
    type Scratch = ConnectionWork;

    fn registration(&self) -> &'static Registration {
        &REGISTRATION
    }

    fn needs(&self) -> &[Need] {
        &self.needs
    }

    fn new_state(&self) -> Walked {
        Walked::default()
    }

    fn new_scratch(&self) -> ConnectionWork {
        ConnectionWork::default()
    }

    fn cpu_budget(&self) -> Option<f64> {
        Some(self.settings.cpu_budget)
    }

    /// Trouble: a listener more than [`TROUBLE_FILL`] full, or drops since
    /// the last walk. Now: drops since the last walk, or a queue whose
    /// bytes and age cannot be shown because no walk has seen it (see
    /// [`waiting`]).
    fn call(&self, view: &NetnsView, walked: &Walked) -> Call {
        let Some(listeners) = view.part::<ListenerSample>(LISTENERS) else {
            return Call::default();
        };
        let last = view.part::<ConnectionSample>(CONNECTIONS);
        let filter = self.settings.filter.as_ref();
        let covered = |port: u16| filter.is_none_or(|f| f.covers(true, port));
        let mut call = Call::default();
        for l in &listeners.listeners {
            let Some(key) = l.endpoint.inet() else {
                continue;
            };
            if covered(key.port)
                && f64::from(l.queue_length) > f64::from(l.queue_limit) * TROUBLE_FILL
            {
                call.troubled = true;
            }
        }
        let waiting_somewhere = listeners
            .listeners
            .iter()
            .any(|l| l.queue_length > 0 && l.endpoint.inet().is_some());
        // Most namespaces, most of the time: no queue, nothing to compare.
        let backlogs = waiting_somewhere.then(|| Backlogs::of(listeners));
        call.now = backlogs
            .iter()
            .flat_map(Backlogs::iter)
            .any(|(key, backlog)| {
                backlog.waiting > 0
                    && covered(key.port)
                    && last
                        .and_then(|c| waiting(c.queue(key)?, c.taken_at, Some(backlog)))
                        .is_none()
            });
        if tcp_listener_drops(view) > walked.drops {
            call.now = true;
            call.troubled = true;
        }
        call
    }

    fn sample(&self, ctx: &mut Ctx<'_>, walked: &mut Walked, work: &mut ConnectionWork) -> Sample {
        walked.drops = ctx.view.map_or(0, tcp_listener_drops);
        let activity = self.activity(ctx);
        // Nothing can have changed since a walk that found nothing: its
        // figures stand, as of now.
        if let (Some(now), Some(quiet)) = (activity, walked.quiet) {
            if now == quiet {
                if let Some(last) = ctx
                    .view
                    .and_then(|v| v.part::<ConnectionSample>(CONNECTIONS))
                {
                    let mut again = last.clone();
                    again.taken_at = ctx.wall;
                    again.walk_bytes = 0;
                    again.walk_datagrams = 0;
                    walked.skipped += 1;
                    again.skipped_total = walked.skipped;
                    return Sample::Done(Arc::new(again));
                }
            }
        }
        // Before the first walk, the namespace's own count of its TCP
        // sockets stands in for what the walk will find.
        let hint = walked.sockets.or_else(|| activity.map(|a| a.sockets()));
        let lookups = !walked.too_many_waiting;
        match ctx.dump(|socket| sample_connections(socket, work, &self.settings, hint, lookups)) {
            Ok(mut sample) => {
                walked.sockets = Some(sample.sockets);
                walked.too_many_waiting = sample.undated > 0;
                walked.quiet = activity.filter(|_| sample.sockets == 0);
                sample.skipped_total = walked.skipped;
                Sample::Done(Arc::new(sample))
            }
            Err(e) => {
                walked.quiet = None;
                Sample::Failed(e)
            }
        }
    }

    fn render(&self, ns: &NamespaceView<'_>, out: &mut Families) {
        let Some(c) = ns.view.part::<ConnectionSample>(CONNECTIONS) else {
            return;
        };
        let netns = ns.name;
        // Figures the kernel keeps per address rather than per socket come
        // from the walk, once per address. While the listeners collector
        // runs, only addresses it still sees are rendered, so a listener
        // closed since the last walk leaves no series behind.
        let backlogs = ns.view.part::<ListenerSample>(LISTENERS).map(Backlogs::of);
        for q in &c.queues {
            let Some(key) = q.endpoint.inet() else {
                continue;
            };
            let backlog = match &backlogs {
                Some(b) => match b.get(key) {
                    Some(backlog) => Some(backlog),
                    None => continue,
                },
                None => None,
            };
            let (address, port) = (q.endpoint.address(), key.port.to_string());
            let labels = [
                ("netns", netns),
                ("family", q.endpoint.family()),
                ("address", address.as_str()),
                ("port", port.as_str()),
            ];
            if let Some(w) = waiting(q, c.taken_at, backlog) {
                out.push(&ACCEPT_QUEUE_BYTES, &labels, w.bytes as f64);
                if let Some(oldest) = w.oldest_seconds {
                    out.push(&ACCEPT_QUEUE_OLDEST, &labels, oldest);
                }
            }
            out.push(&SYN_QUEUE_LENGTH, &labels, q.syn_queue_length as f64);
        }
        for p in &c.ports {
            let port = p.port_label();
            let labels = [
                ("netns", netns),
                ("role", p.role.as_str()),
                ("port", port.as_str()),
            ];
            for state in TcpState::CONNECTION_STATES {
                let n = p.count(state);
                if n > 0 {
                    let mut with_state = labels.to_vec();
                    with_state.push(("state", state.as_str()));
                    out.push(&TCP_CONNECTIONS, &with_state, n as f64);
                }
            }
            out.push(&TCP_SEND_QUEUE, &labels, p.send_queue_bytes as f64);
            out.push(&TCP_RECV_QUEUE, &labels, p.recv_queue_bytes as f64);
        }
        out.push(
            &CLIENT_PORTS_FOLDED,
            &[("netns", netns)],
            c.client_ports_folded as f64,
        );
        out.push(&WALKS_SKIPPED, &[("netns", netns)], c.skipped_total as f64);
    }

    fn report(&self, ns: &NamespaceView<'_>, out: &mut Report) {
        let Some(c) = ns.view.part::<ConnectionSample>(CONNECTIONS) else {
            return;
        };
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
        let mut text = format!("\n{}", align(&rows));
        text.push_str(&format!("\n{} sockets\n", c.sockets));
        if c.client_ports_folded > 0 {
            text.push_str(&format!(
                "{} client ports folded into \"other\"\n",
                c.client_ports_folded
            ));
        }
        out.sections.push(text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_connections_are_looked_up_while_few() {
        assert_eq!(Dating::choose(false, 5, Some(100)), Dating::None);
        assert_eq!(Dating::choose(true, 5, None), Dating::Lookups, "first walk");
        assert_eq!(Dating::choose(true, 1_000, Some(200_000)), Dating::Lookups);
        assert_eq!(Dating::choose(true, 10, Some(100)), Dating::Lookups);
        assert_eq!(Dating::choose(true, 11, Some(100)), Dating::Walk);
        assert_eq!(Dating::choose(true, 20, Some(40)), Dating::Walk);
        assert_eq!(
            Dating::choose(true, u64::MAX, Some(u64::MAX)),
            Dating::Lookups
        );
    }

    fn cli(args: &[&str]) -> Result<clap::ArgMatches, clap::Error> {
        clap::Command::new("t")
            .args(super::args())
            .try_get_matches_from([&["t"], args].concat())
    }

    #[test]
    fn port_lists() {
        assert_eq!(parse_ports("443, 80, 80"), Ok(PortList(vec![80, 443])));
        let many = vec!["80"; 3000].join(",");
        assert_eq!(
            parse_ports(&many),
            Ok(PortList(vec![80])),
            "duplicates do not count"
        );
        let long: String = (1..=3000)
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let e = parse_ports(&long).unwrap_err();
        assert!(e.len() < 100, "the error does not echo the list: {e}");
        assert!(parse_ports("80,http").unwrap_err().contains("not a port"));
        assert!(parse_ports("70000").is_err());
        assert!(parse_ports("").is_err());
        let only = settings(&cli(&["--collector.connections.ports", "443,80"]).unwrap())
            .filter
            .unwrap();
        assert_eq!((only.mode(), only.ports()), (Mode::Only, &[80, 443][..]));
        let except = settings(&cli(&["--collector.connections.exclude-ports", "22"]).unwrap())
            .filter
            .unwrap();
        assert_eq!((except.mode(), except.ports()), (Mode::Except, &[22][..]));
        let defaults = settings(&cli(&[]).unwrap());
        assert_eq!(
            defaults,
            Settings {
                max_client_ports: 256,
                filter: None,
                queue_ages: true,
                cpu_budget: DEFAULT_CPU_BUDGET,
            }
        );
        assert!(
            cli(&[
                "--collector.connections.ports",
                "80",
                "--collector.connections.exclude-ports",
                "22"
            ])
            .is_err(),
            "include and exclude are exclusive"
        );
        for bad in ["0", "-0.1", "1.5", "NaN", "inf", "2%", ""] {
            assert!(
                cli(&["--collector.connections.cpu-budget", bad]).is_err(),
                "{bad:?}"
            );
        }
        let m = cli(&["--collector.connections.cpu-budget", "0.05"]).unwrap();
        assert_eq!(settings(&m).cpu_budget, 0.05);
        let m = cli(&["--collector.connections.queue-age", "off"]).unwrap();
        assert!(!settings(&m).queue_ages);
        assert!(cli(&["--collector.connections.queue-age", "fuzzy"]).is_err());
    }
}
