//! The `udp` collector: every UDP socket receiving on a port of its own
//! (DNS, syslog, statsd, QUIC, game servers): its receive queue against its
//! buffer, the queue's peak over a window, and the datagrams it dropped,
//! sampled on the fast tier; and the number of sockets on each receiving
//! address.
//!
//! A UDP socket has no accept queue: its queue is the receive buffer, and
//! when the application falls behind, the kernel drops datagrams silently
//! (`ss -ulnm` shows them as `r`, `rb` and `d`). Receivers are unconnected
//! sockets bound to a port outside the namespace's ephemeral range
//! (`net.ipv4.ip_local_port_range`), or to a port listed in
//! `--collector.udp.ports`; clients' ephemeral source ports never become
//! label values, and other sockets are summed per namespace. UDP sockets
//! live in one host-wide hash that every namespace's dump walks, so, like
//! the unix collector, a namespace whose dump is dear is sampled less often.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use clap::{Arg, ArgAction, value_parser};

use crate::aggregate::{ListenKey, PortSet};
use crate::diag::{DumpRequest, Family, Protocol, RawAddr, SockRecord, StateSet, TcpState};
use crate::family::{Families, Kind, LISTENER_LABELS, MetricDef, NETNS_LABELS, OWNER_LABELS};
use crate::model::{Endpoint, UdpAddress, UdpReceiver, UdpSample};
use crate::netns::{Need, ProcName};
use crate::procfs;
use crate::table::{Report, align};
use crate::tracker::{ListenerTracker, Seen};

use super::listening::{ListenerLabels, cap, owner, render_owner_of, render_unexported};
use super::{
    Collector, Common, Ctx, NamespaceView, PortList, Registration, Sample, SampleError, Tier,
    TypedCollector, UDP, parse_ports,
};

/// The largest share of one core the UDP dump of one namespace may take
/// (see [`super::unix::MAX_SHARE`]): every namespace's dump walks the
/// host-wide UDP hash, 8 ms beside 100k UDP sockets.
pub const MAX_SHARE: f64 = 0.02;

/// The kernel's default ephemeral range, for a namespace whose
/// `ip_local_port_range` cannot be read.
const DEFAULT_EPHEMERAL: (u16, u16) = (32768, 60999);

/// Its declaration.
pub static REGISTRATION: Registration = Registration {
    name: UDP,
    help: "receive queue against buffer, queue peak and datagram drops of every UDP socket \
           receiving on a port of its own (unconnected, outside ip_local_port_range or listed \
           in --collector.udp.ports), sampled fast, with its owner; other UDP sockets summed \
           per namespace. Each dump walks the host-wide UDP hash; where that takes more than \
           2% of a core the namespace is sampled less often.",
    default_enabled: true,
    tier: Tier::Fast,
    families: &[
        &RECEIVE_QUEUE,
        &RECEIVE_QUEUE_PEAK,
        &RECEIVE_BUFFER,
        &DROPS,
        &PROCESS_INFO,
        &SOCKETS,
        &OTHER_SOCKETS,
        &OTHER_QUEUE,
        &UNEXPORTED,
    ],
    args,
    build,
};

/// `sockdiag_udp_receive_queue_bytes`
pub const RECEIVE_QUEUE: MetricDef = MetricDef {
    name: "sockdiag_udp_receive_queue_bytes",
    kind: Kind::Gauge,
    labels: LISTENER_LABELS,
    member: true,
    help: "Bytes queued on this UDP receiver for the application to read (Recv-Q: the kernel's accounting, per-datagram overhead included). Near sockdiag_udp_receive_buffer_bytes the kernel drops new datagrams: the application is not reading fast enough.",
};
/// `sockdiag_udp_receive_queue_peak_bytes`
pub const RECEIVE_QUEUE_PEAK: MetricDef = MetricDef {
    name: "sockdiag_udp_receive_queue_peak_bytes",
    kind: Kind::Gauge,
    labels: LISTENER_LABELS,
    member: true,
    help: "Highest receive queue seen by fast sampling over the peak window (--collector.listeners.peak-window): bursts that fill the buffer between scrapes. Scrapes do not reset it.",
};
/// `sockdiag_udp_receive_buffer_bytes`
pub const RECEIVE_BUFFER: MetricDef = MetricDef {
    name: "sockdiag_udp_receive_buffer_bytes",
    kind: Kind::Gauge,
    labels: LISTENER_LABELS,
    member: true,
    help: "The receive buffer's limit the kernel applies to this UDP receiver (ss's rb): twice what the application asked with SO_RCVBUF, at most twice net.core.rmem_max; net.core.rmem_default when it asked nothing. A queue near it means drops: raise SO_RCVBUF (and rmem_max) or read faster.",
};
/// `sockdiag_udp_drops_total`
pub const DROPS: MetricDef = MetricDef {
    name: "sockdiag_udp_drops_total",
    kind: Kind::Counter,
    labels: LISTENER_LABELS,
    member: true,
    help: "Datagrams this UDP receiver dropped (its sk_drops, ss's d): receive buffer full and other receive drops. Any increase is data lost without the sender knowing.",
};
/// `sockdiag_udp_receiver_process_info`
pub const PROCESS_INFO: MetricDef = MetricDef {
    name: "sockdiag_udp_receiver_process_info",
    kind: Kind::Gauge,
    labels: OWNER_LABELS,
    member: true,
    help: "Always 1: the process owning this UDP receiver (the lowest pid holding it): its command name, executable, command line, systemd unit and container. Join on job, instance, netns, family, address, port and member.",
};
/// `sockdiag_udp_sockets`
pub const SOCKETS: MetricDef = MetricDef {
    name: "sockdiag_udp_sockets",
    kind: Kind::Gauge,
    labels: &["netns", "family", "address", "port", "state"],
    member: false,
    help: "UDP sockets on this receiving address and port by state: unconnected receivers (more than one: a SO_REUSEPORT group) and connected sockets sharing the port (as QUIC servers make).",
};
/// `sockdiag_udp_other_sockets`
pub const OTHER_SOCKETS: MetricDef = MetricDef {
    name: "sockdiag_udp_other_sockets",
    kind: Kind::Gauge,
    labels: NETNS_LABELS,
    member: false,
    help: "UDP sockets of the namespace that are not receivers (clients on ephemeral ports, connected or not), whose ports are never labels.",
};
/// `sockdiag_udp_other_receive_queue_bytes`
pub const OTHER_QUEUE: MetricDef = MetricDef {
    name: "sockdiag_udp_other_receive_queue_bytes",
    kind: Kind::Gauge,
    labels: NETNS_LABELS,
    member: false,
    help: "Bytes queued on the namespace's UDP sockets that are not receivers (replies clients have not read yet).",
};
/// `sockdiag_udp_receivers_unexported`
pub const UNEXPORTED: MetricDef = MetricDef {
    name: "sockdiag_udp_receivers_unexported",
    kind: Kind::Gauge,
    labels: &["netns", "reason"],
    member: false,
    help: "UDP receivers of the namespace left out of the per-receiver series because --collector.udp.max-receivers were already exported (reason=\"cap\"). Above 0, drops may go unseen: raise the cap.",
};

const PORTS: &str = "collector.udp.ports";
const MAX_RECEIVERS: &str = "collector.udp.max-receivers";

fn args() -> Vec<Arg> {
    vec![
        Arg::new(PORTS)
            .long(PORTS)
            .value_name("PORTS")
            .value_parser(parse_ports)
            .action(ArgAction::Set)
            .global(true)
            .help(
                "Also treat unconnected UDP sockets on these ports (comma-separated) as \
                 receivers though the ports lie in net.ipv4.ip_local_port_range, e.g. 51820 \
                 for WireGuard: ports in that range are taken for clients' ephemeral ports \
                 otherwise.",
            ),
        Arg::new(MAX_RECEIVERS)
            .long(MAX_RECEIVERS)
            .value_name("N")
            .value_parser(value_parser!(u32).range(1..=1_000_000))
            .default_value("1000")
            .action(ArgAction::Set)
            .global(true)
            .help(
                "Most UDP receivers exported per namespace. Receivers already exported keep \
                 their place; newcomers past the cap are counted in \
                 sockdiag_udp_receivers_unexported{reason=\"cap\"}.",
            ),
    ]
}

fn build(m: &clap::ArgMatches, common: &Common) -> Box<dyn Collector> {
    let ports = m.get_one::<PortList>(PORTS).map_or(&[][..], |p| &p.0);
    let sockstat6 = common.procfs_has("self/net/sockstat6");
    let mut needs = vec![
        Need::Diag,
        Need::Proc(ProcName::LocalPortRange),
        Need::Proc(ProcName::Sockstat),
    ];
    if sockstat6 {
        needs.push(Need::Proc(ProcName::Sockstat6));
    }
    Box::new(Udp {
        common: common.clone(),
        extra: PortSet::of(ports),
        max_receivers: m.get_one::<u32>(MAX_RECEIVERS).copied().unwrap_or(1000) as usize,
        sockstat6,
        needs,
    })
}

/// The dump the collector asks for, one family at a time (UDP has no
/// request for both at once): every state, with SKMEMINFO for the
/// receive buffer and the drop counter.
pub fn dump_request(family: Family) -> DumpRequest<'static> {
    DumpRequest {
        protocol: Protocol::Udp,
        family: Some(family),
        states: StateSet::All,
        meminfo: true,
        tcp_info: false,
        filter: None,
    }
}

/// The built collector.
pub struct Udp {
    common: Common,
    /// Ports listed in `--collector.udp.ports`.
    extra: Box<PortSet>,
    max_receivers: usize,
    /// Whether the kernel has `net/sockstat6`.
    sockstat6: bool,
    needs: Vec<Need>,
}

impl Udp {
    /// Whether the namespace may have UDP sockets of `family`: its
    /// sockstat counts them (bound or connected, the only ones a dump
    /// shows). A dump walks the host-wide UDP hash whatever the namespace
    /// holds (50 us for both families in an empty namespace here, against
    /// 2 us for each sockstat read), so a family with none is not dumped.
    /// When the count cannot be read, the dump is taken.
    fn may_have(&self, ctx: &mut Ctx<'_>, family: Family) -> bool {
        let (name, prefix) = match family {
            Family::Ipv4 => (ProcName::Sockstat, "UDP:"),
            Family::Ipv6 if self.sockstat6 => (ProcName::Sockstat6, "UDP6:"),
            Family::Ipv6 => return false,
        };
        let Some(text) = ctx.read_optional(name) else {
            return true;
        };
        procfs::parse_sockstat(&text, prefix).map_or(true, |(inuse, _)| inuse > 0)
    }
}

/// What is kept per namespace between samples.
pub struct State {
    tracker: ListenerTracker,
}

/// Buffers reused by every namespace's dump.
#[derive(Default)]
pub struct Scratch {
    seen: Vec<Seen>,
    /// Connected sockets on receiving ports, by local address and port.
    connected: HashMap<ListenKey, u64>,
}

/// How one dump classified the namespace's UDP sockets.
#[derive(Default)]
struct Tally {
    other_sockets: u64,
    other_queue_bytes: u64,
}

impl Udp {
    /// Whether an unconnected socket on `port` receives there: the port is
    /// not where ephemeral ports come from, or it is listed.
    fn receiving_port(&self, port: u16, ephemeral: (u16, u16)) -> bool {
        port != 0 && (!(ephemeral.0..=ephemeral.1).contains(&port) || self.extra.contains(port))
    }

    fn classify(&self, r: &SockRecord, ephemeral: (u16, u16), s: &mut Scratch, t: &mut Tally) {
        let key = ListenKey {
            addr: r.local,
            port: r.local_port,
        };
        let unconnected = r.remote_port == 0 && r.state == TcpState::Close;
        if !self.receiving_port(r.local_port, ephemeral) {
            t.other_sockets += 1;
            t.other_queue_bytes += u64::from(r.rqueue);
        } else if unconnected {
            s.seen.push(Seen {
                endpoint: Endpoint::Inet(key),
                length: r.rqueue,
                limit: r.rcvbuf.unwrap_or(0),
                drops: r.drops,
                cookie: r.cookie,
                inode: r.inode,
                uid: Some(r.uid),
            });
        } else {
            *s.connected.entry(key).or_default() += 1;
        }
    }
}

/// The receiving address a connected socket on a receiving port belongs
/// to: the receiver on its exact address, else the wildcard receiver of its
/// family, else (for IPv4) a dual-stack `::` receiver (a v4-mapped socket is
/// IPv6 already, but a plain IPv4 socket may share a `::` receiver's port
/// through SO_REUSEPORT), else its own address.
fn receiving_address(key: ListenKey, receivers: &HashMap<ListenKey, u64>) -> ListenKey {
    let wildcard = |family| ListenKey {
        addr: RawAddr::unspecified(family),
        port: key.port,
    };
    [key, wildcard(key.family()), wildcard(Family::Ipv6)]
        .into_iter()
        .find(|k| receivers.contains_key(k))
        .unwrap_or(key)
}

impl TypedCollector for Udp {
    type State = State;
    type Scratch = Scratch;

    fn registration(&self) -> &'static Registration {
        &REGISTRATION
    }

    fn needs(&self) -> &[Need] {
        &self.needs
    }

    fn new_state(&self) -> State {
        State {
            tracker: ListenerTracker::new(self.common.peak_window),
        }
    }

    fn new_scratch(&self) -> Scratch {
        Scratch::default()
    }

    fn sample(&self, ctx: &mut Ctx<'_>, state: &mut State, s: &mut Scratch) -> Sample {
        let families = [Family::Ipv4, Family::Ipv6].map(|f| self.may_have(ctx, f).then_some(f));
        // Which ports are ephemeral: a namespace's own sysctl. Without it,
        // the kernel's default, and the failure is told. Not needed where
        // nothing is dumped.
        let range = if families.iter().all(Option::is_none) {
            Ok(DEFAULT_EPHEMERAL)
        } else {
            match ctx.handles.proc(ProcName::LocalPortRange, ctx.now) {
                Ok(file) => file
                    .read()
                    .and_then(|text| procfs::parse_port_range(file.path(), &text))
                    .map_err(SampleError::from),
                Err(e) => Err(e.into()),
            }
        };
        let (ephemeral, range_error) = match range {
            Ok(r) => (r, None),
            Err(e) => (DEFAULT_EPHEMERAL, Some(e)),
        };
        s.seen.clear();
        s.connected.clear();
        let mut tally = Tally::default();
        let result = ctx.dump(|socket| {
            for family in families.into_iter().flatten() {
                let request = dump_request(family);
                socket.dump(&request, |r| self.classify(r, ephemeral, s, &mut tally))?;
            }
            Ok(())
        });
        if let Err(e) = result {
            return Sample::Failed(e);
        }
        let tracker = &state.tracker;
        let capped = cap(&mut s.seen, |c| tracker.tracks(c), self.max_receivers);
        let tracked = state.tracker.update(ctx.now, ctx.wall, &s.seen, ctx.period);
        let receivers: Vec<UdpReceiver> = tracked
            .listeners
            .into_iter()
            .map(|l| UdpReceiver {
                endpoint: l.endpoint,
                member: l.member,
                cookie: l.cookie,
                inode: l.inode,
                uid: l.uid,
                queue_bytes: l.queue_length,
                buffer_bytes: l.queue_limit,
                peak_bytes: l.peak_length.filter(|_| !self.common.one_shot),
                drops: l.drops,
            })
            .collect();
        let mut by_address: HashMap<ListenKey, u64> = HashMap::new();
        for r in &receivers {
            if let Some(key) = r.endpoint.inet() {
                *by_address.entry(*key).or_default() += 1;
            }
        }
        let mut connected: HashMap<ListenKey, u64> = HashMap::new();
        for (key, n) in s.connected.drain() {
            *connected
                .entry(receiving_address(key, &by_address))
                .or_default() += n;
        }
        // In address order (a set of keys sorts them).
        let addresses: Vec<UdpAddress> = by_address
            .keys()
            .chain(connected.keys())
            .copied()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .map(|key| UdpAddress {
                endpoint: Endpoint::Inet(key),
                unconnected: by_address.get(&key).copied().unwrap_or(0),
                connected: connected.get(&key).copied().unwrap_or(0),
            })
            .collect();
        let sample = Arc::new(UdpSample {
            taken_at: ctx.wall,
            receivers,
            addresses,
            other_sockets: tally.other_sockets,
            other_queue_bytes: tally.other_queue_bytes,
            unexported: vec![("cap", capped)],
        });
        match range_error {
            None => Sample::Done(sample),
            Some(e) => Sample::Partial(sample, e),
        }
    }

    fn min_period(&self, took: Duration) -> Option<Duration> {
        Some(took.div_f64(MAX_SHARE))
    }

    fn render(&self, ns: &NamespaceView<'_>, out: &mut Families) {
        let Some(sample) = ns.view.part::<UdpSample>(UDP) else {
            return;
        };
        for r in &sample.receivers {
            let labels = ListenerLabels::new(&r.endpoint, r.member);
            let pairs = labels.pairs(ns.name, &[]);
            out.push(&RECEIVE_QUEUE, &pairs, f64::from(r.queue_bytes));
            if let Some(peak) = r.peak_bytes {
                out.push(&RECEIVE_QUEUE_PEAK, &pairs, f64::from(peak));
            }
            if r.buffer_bytes > 0 {
                out.push(&RECEIVE_BUFFER, &pairs, f64::from(r.buffer_bytes));
            }
            if let Some(d) = r.drops {
                out.push(&DROPS, &pairs, d as f64);
            }
            render_owner_of(out, ns, &r.endpoint, r.member, r.cookie, &PROCESS_INFO);
        }
        for a in &sample.addresses {
            let (address, port) = (
                a.endpoint.address(),
                a.endpoint.port().unwrap_or_default().to_string(),
            );
            for (state, n) in [("unconnected", a.unconnected), ("connected", a.connected)] {
                if n > 0 {
                    out.push(
                        &SOCKETS,
                        &[
                            ("netns", ns.name),
                            ("family", a.endpoint.family()),
                            ("address", &address),
                            ("port", &port),
                            ("state", state),
                        ],
                        n as f64,
                    );
                }
            }
        }
        let netns = [("netns", ns.name)];
        out.push(&OTHER_SOCKETS, &netns, sample.other_sockets as f64);
        out.push(&OTHER_QUEUE, &netns, sample.other_queue_bytes as f64);
        render_unexported(out, ns.name, &UNEXPORTED, &sample.unexported);
    }

    fn report(&self, ns: &NamespaceView<'_>, out: &mut Report) {
        let Some(sample) = ns.view.part::<UdpSample>(UDP) else {
            return;
        };
        let mut rows: Vec<Vec<String>> = vec![
            [
                "UDP RECEIVER",
                "MEMBER",
                "QUEUE",
                "BUFFER",
                "FILL",
                "PEAK",
                "DROPS",
                "SOCKETS",
                "PROCESS",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        ];
        let mut receivers: Vec<&UdpReceiver> = sample.receivers.iter().collect();
        receivers.sort_by(|a, b| (&a.endpoint, a.member).cmp(&(&b.endpoint, b.member)));
        let dash = || "-".to_string();
        for r in receivers {
            let sockets = sample
                .addresses
                .iter()
                .find(|a| a.endpoint == r.endpoint)
                .filter(|_| r.member.is_none_or(|m| m == 0))
                .map_or_else(dash, |a| {
                    if a.connected > 0 {
                        format!("{}+{} connected", a.unconnected, a.connected)
                    } else {
                        a.unconnected.to_string()
                    }
                });
            rows.push(vec![
                r.endpoint.to_string(),
                r.member.map_or_else(dash, |m| m.to_string()),
                r.queue_bytes.to_string(),
                if r.buffer_bytes > 0 {
                    r.buffer_bytes.to_string()
                } else {
                    dash()
                },
                r.fill().map_or_else(dash, |f| format!("{:.0}%", f * 100.0)),
                r.peak_bytes.map_or_else(dash, |p| p.to_string()),
                r.drops.map_or_else(dash, |d| d.to_string()),
                sockets,
                crate::table::owner_cell(owner(ns.view, r.cookie)),
            ]);
        }
        let mut text = format!("\n{}", align(&rows));
        text.push_str(&format!(
            "{} other UDP sockets (clients), {} bytes queued on them\n",
            sample.other_sockets, sample.other_queue_bytes
        ));
        if let Some((_, n)) = sample.unexported.iter().find(|(_, n)| *n > 0) {
            text.push_str(&format!(
                "{n} receivers left out (--collector.udp.max-receivers)\n"
            ));
        }
        out.sections.push(text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn udp(extra: &[u16]) -> Udp {
        Udp {
            common: Common {
                procfs: "/proc".into(),
                fast_interval: Duration::from_millis(200),
                full_interval: Duration::from_secs(15),
                peak_window: Duration::from_secs(60),
                owner_retry: Duration::from_secs(10),
                one_shot: false,
            },
            extra: PortSet::of(extra),
            max_receivers: 10,
            sockstat6: true,
            needs: Vec::new(),
        }
    }

    fn record(local: &str, lport: u16, remote: &str, rport: u16, state: TcpState) -> SockRecord {
        SockRecord {
            state,
            local: RawAddr::from_ip(local.parse().unwrap()),
            local_port: lport,
            remote: RawAddr::from_ip(remote.parse().unwrap()),
            remote_port: rport,
            rqueue: 768,
            wqueue: 0,
            inode: 9,
            uid: 0,
            cookie: u64::from(lport),
            drops: Some(3),
            rcvbuf: Some(4608),
            last_data_sent_ms: None,
            interface: 0,
        }
    }

    #[test]
    fn receivers_are_unconnected_sockets_on_ports_of_their_own() {
        let u = udp(&[51820]);
        let range = (32768, 60999);
        let (mut s, mut t) = (Scratch::default(), Tally::default());
        for r in [
            record("0.0.0.0", 53, "0.0.0.0", 0, TcpState::Close),
            record("::", 443, "::", 0, TcpState::Close),
            record("0.0.0.0", 51820, "0.0.0.0", 0, TcpState::Close),
            // A client after sendto(): unconnected, ephemeral port.
            record("0.0.0.0", 40001, "0.0.0.0", 0, TcpState::Close),
            // A connected client, ephemeral port.
            record("127.0.0.1", 40002, "127.0.0.1", 53, TcpState::Established),
            // A QUIC server's connected socket on its port.
            record(
                "::ffff:127.0.0.1",
                443,
                "::ffff:127.0.0.1",
                40003,
                TcpState::Established,
            ),
            // Not bound at all.
            record("0.0.0.0", 0, "0.0.0.0", 0, TcpState::Close),
        ] {
            u.classify(&r, range, &mut s, &mut t);
        }
        let ports: Vec<u16> = s.seen.iter().map(|x| x.endpoint.port().unwrap()).collect();
        assert_eq!(ports, vec![53, 443, 51820]);
        assert_eq!(
            (s.seen[0].length, s.seen[0].limit, s.seen[0].drops),
            (768, 4608, Some(3))
        );
        assert_eq!((t.other_sockets, t.other_queue_bytes), (3, 3 * 768));
        let connected: Vec<_> = s.connected.iter().map(|(k, n)| (k.port, *n)).collect();
        assert_eq!(connected, vec![(443, 1)]);
        let receivers: HashMap<ListenKey, u64> = s
            .seen
            .iter()
            .map(|x| (*x.endpoint.inet().unwrap(), 1))
            .collect();
        let key = *s.connected.keys().next().unwrap();
        assert_eq!(
            receiving_address(key, &receivers).addr,
            RawAddr::unspecified(Family::Ipv6),
            "v4-mapped on the dual-stack wildcard"
        );
        let plain_v4 = ListenKey {
            addr: RawAddr::from_ip("127.0.0.1".parse().unwrap()),
            port: 443,
        };
        assert_eq!(
            receiving_address(plain_v4, &receivers).addr,
            RawAddr::unspecified(Family::Ipv6),
            "a plain IPv4 socket sharing a dual-stack receiver's port"
        );
        let elsewhere = ListenKey {
            addr: RawAddr::from_ip("127.0.0.1".parse().unwrap()),
            port: 9999,
        };
        assert_eq!(receiving_address(elsewhere, &receivers), elsewhere);
    }

    #[test]
    fn the_ephemeral_range_is_the_namespaces_own() {
        let u = udp(&[]);
        assert!(u.receiving_port(40000, (50000, 60000)));
        assert!(!u.receiving_port(40000, (32768, 60999)));
        assert!(!u.receiving_port(0, (50000, 60000)));
    }
}
