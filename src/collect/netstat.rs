//! The `netstat` collector: the namespace's TcpExt `ListenOverflows` and
//! `ListenDrops`, its `net.core.somaxconn`, and whether it shares the
//! host's established-socket hash, read from procfs files opened inside the
//! namespace, on the full tier.

use std::sync::Arc;

use crate::family::{Families, Kind, MetricDef, NETNS_LABELS};
use crate::model::{NetnsView, NetstatSample};
use crate::netns::{Need, ProcName};
use crate::procfs::{self, ProcError, ProcFile, TcpExt, UdpErrors};

use super::listening::tcp_listener_drops;
use super::{
    Call, Collector, Common, Ctx, NETSTAT, NamespaceView, Registration, Sample, SampleError, Tier,
    TypedCollector,
};

/// Its declaration.
pub static REGISTRATION: Registration = Registration {
    name: NETSTAT,
    help: "the namespace's TcpExt ListenOverflows/ListenDrops, Udp and Udp6 RcvbufErrors and \
           InErrors, net.core.somaxconn and whether it shares the host's established hash \
           (net.ipv4.tcp_ehash_entries), from procfs.",
    default_enabled: true,
    tier: Tier::Full,
    families: &[
        &NETSTAT_OVERFLOWS,
        &NETSTAT_DROPS,
        &SOMAXCONN,
        &EHASH_SHARED,
        &UDP_RCVBUF_ERRORS,
        &UDP_IN_ERRORS,
    ],
    args: Vec::new,
    build,
};

/// `sockdiag_netstat_listen_overflows_total`
pub const NETSTAT_OVERFLOWS: MetricDef = MetricDef {
    name: "sockdiag_netstat_listen_overflows_total",
    kind: Kind::Counter,
    labels: NETNS_LABELS,
    member: false,
    help: "TcpExt ListenOverflows of the namespace: connections dropped because an accept queue was full, on any listener.",
};
/// `sockdiag_netstat_listen_drops_total`
pub const NETSTAT_DROPS: MetricDef = MetricDef {
    name: "sockdiag_netstat_listen_drops_total",
    kind: Kind::Counter,
    labels: NETNS_LABELS,
    member: false,
    help: "TcpExt ListenDrops of the namespace: every drop at any listener, overflows included.",
};
/// `sockdiag_somaxconn`
pub const SOMAXCONN: MetricDef = MetricDef {
    name: "sockdiag_somaxconn",
    kind: Kind::Gauge,
    labels: NETNS_LABELS,
    member: false,
    help: "net.core.somaxconn of the namespace: the ceiling on every listen() backlog.",
};

/// `sockdiag_netns_tcp_ehash_shared`
pub const EHASH_SHARED: MetricDef = MetricDef {
    name: "sockdiag_netns_tcp_ehash_shared",
    kind: Kind::Gauge,
    labels: NETNS_LABELS,
    member: false,
    help: "1 when the namespace shares the host's established-socket hash (its net.ipv4.tcp_ehash_entries is negative, because net.ipv4.tcp_child_ehash_entries was 0 when it was created): every connection walk in it then costs every socket on the node. Not exported before Linux 6.1.",
};

/// `sockdiag_netstat_udp_rcvbuf_errors_total`
pub const UDP_RCVBUF_ERRORS: MetricDef = MetricDef {
    name: "sockdiag_netstat_udp_rcvbuf_errors_total",
    kind: Kind::Counter,
    labels: NETNS_LABELS,
    member: false,
    help: "Udp RcvbufErrors plus Udp6RcvbufErrors of the namespace (nstat's UdpRcvbufErrors, Udp6RcvbufErrors): datagrams dropped because a socket's receive buffer was full, on any socket. Per socket: sockdiag_udp_drops_total.",
};
/// `sockdiag_netstat_udp_in_errors_total`
pub const UDP_IN_ERRORS: MetricDef = MetricDef {
    name: "sockdiag_netstat_udp_in_errors_total",
    kind: Kind::Counter,
    labels: NETNS_LABELS,
    member: false,
    help: "Udp InErrors plus Udp6InErrors of the namespace: datagrams that could not be delivered, receive-buffer drops included.",
};

fn build(_: &clap::ArgMatches, common: &Common) -> Box<dyn Collector> {
    // What the kernel offers is the same in every namespace: the
    // tcp_ehash_entries sysctl (Linux 6.1+) and net/snmp6 (IPv6 not
    // disabled). Where the host lacks one, no namespace has it, and it is
    // not asked for.
    let (ehash, snmp6) = (
        common.procfs_has("sys/net/ipv4/tcp_ehash_entries"),
        common.procfs_has("self/net/snmp6"),
    );
    let mut needs = vec![
        Need::Proc(ProcName::Netstat),
        Need::Proc(ProcName::Somaxconn),
        Need::Proc(ProcName::Snmp),
    ];
    if ehash {
        needs.push(Need::Proc(ProcName::EhashEntries));
    }
    if snmp6 {
        needs.push(Need::Proc(ProcName::Snmp6));
    }
    Box::new(Netstat {
        ehash,
        snmp6,
        needs,
    })
}

/// The built collector.
pub struct Netstat {
    /// Whether the kernel has `net.ipv4.tcp_ehash_entries`.
    ehash: bool,
    /// Whether it has `net/snmp6`.
    snmp6: bool,
    needs: Vec<Need>,
}

/// Reads procfs file `name` and parses it; on failure, notes the error and
/// gives `previous`, the last good value, so one unreadable file does not
/// blank the other figures.
fn read<T>(
    ctx: &mut Ctx<'_>,
    name: ProcName,
    parse: impl FnOnce(&ProcFile, &str) -> Result<T, ProcError>,
    previous: Option<T>,
    errors: &mut Vec<SampleError>,
) -> Option<T> {
    let result = match ctx.handles.proc(name, ctx.now) {
        Ok(file) => file
            .read()
            .and_then(|text| parse(file, &text))
            .map_err(SampleError::from),
        Err(e) => Err(e.into()),
    };
    match result {
        Ok(v) => Some(v),
        Err(e) => {
            errors.push(e);
            previous
        }
    }
}

fn parse_with<T>(
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> impl FnOnce(&ProcFile, &str) -> Result<T, ProcError> {
    move |file, text| {
        parse(text).map_err(|what| ProcError::Parse {
            path: file.path().to_path_buf(),
            what,
        })
    }
}

/// What the collector keeps of a namespace between samples.
#[derive(Default)]
pub struct Last {
    /// The last sample, whose figures stand in for a file that fails.
    sample: Option<Arc<NetstatSample>>,
    /// The drops of the namespace's TCP listeners when it was taken.
    drops: u64,
}

impl TypedCollector for Netstat {
    type State = Last;
    type Scratch = ();

    fn registration(&self) -> &'static Registration {
        &REGISTRATION
    }

    fn needs(&self) -> &[Need] {
        &self.needs
    }

    fn new_state(&self) -> Last {
        Last::default()
    }

    fn new_scratch(&self) {}

    /// Every drop at a listener is counted by the listener and by
    /// ListenDrops (and by ListenOverflows, if the queue was full): when the
    /// fast tier sees a listener's drops grow, the namespace's counters are
    /// read again at once, so they never lag the listener's.
    fn call(&self, view: &NetnsView, last: &Last) -> Call {
        Call {
            now: tcp_listener_drops(view) > last.drops,
            troubled: false,
        }
    }

    fn sample(&self, ctx: &mut Ctx<'_>, last: &mut Last, _: &mut ()) -> Sample {
        last.drops = ctx.view.map_or(0, tcp_listener_drops);
        let previous = last.sample.as_deref();
        let mut errors = Vec::new();
        let before = previous.map(|p| TcpExt {
            listen_overflows: p.listen_overflows,
            listen_drops: p.listen_drops,
        });
        let ext = read(
            ctx,
            ProcName::Netstat,
            parse_with(procfs::parse_tcp_ext),
            before,
            &mut errors,
        )
        .unwrap_or_default();
        let somaxconn = read(
            ctx,
            ProcName::Somaxconn,
            |f, t| procfs::parse_number(f.path(), t),
            previous.and_then(|p| p.somaxconn),
            &mut errors,
        );
        let ehash_shared = if self.ehash {
            read(
                ctx,
                ProcName::EhashEntries,
                |f, t| procfs::parse_signed(f.path(), t).map(|n| n < 0),
                previous.and_then(|p| p.ehash_shared),
                &mut errors,
            )
        } else {
            None
        };
        let before = previous.and_then(|p| {
            Some(UdpErrors {
                rcvbuf_errors: p.udp_rcvbuf_errors?,
                in_errors: p.udp_in_errors?,
            })
        });
        let v4 = read(
            ctx,
            ProcName::Snmp,
            parse_with(procfs::parse_snmp_udp),
            None,
            &mut errors,
        );
        let v6 = if self.snmp6 {
            read(
                ctx,
                ProcName::Snmp6,
                parse_with(procfs::parse_snmp6_udp),
                None,
                &mut errors,
            )
        } else {
            Some(UdpErrors::default())
        };
        // Both families or the last good sum: half a sum would go down.
        let udp = match (v4, v6) {
            (Some(a), Some(b)) => Some(UdpErrors {
                rcvbuf_errors: a.rcvbuf_errors + b.rcvbuf_errors,
                in_errors: a.in_errors + b.in_errors,
            }),
            _ => before,
        };
        let sample = Arc::new(NetstatSample {
            taken_at: ctx.wall,
            listen_overflows: ext.listen_overflows,
            listen_drops: ext.listen_drops,
            somaxconn,
            ehash_shared,
            udp_rcvbuf_errors: udp.map(|u| u.rcvbuf_errors),
            udp_in_errors: udp.map(|u| u.in_errors),
        });
        last.sample = Some(sample.clone());
        match errors.len() {
            0 => Sample::Done(sample),
            1 => Sample::Partial(sample, errors.remove(0)),
            _ => Sample::Partial(sample, SampleError::Several(errors)),
        }
    }

    fn render(&self, ns: &NamespaceView<'_>, out: &mut Families) {
        let Some(n) = ns.view.part::<NetstatSample>(NETSTAT) else {
            return;
        };
        let labels = [("netns", ns.name)];
        if let Some(v) = n.listen_overflows {
            out.push(&NETSTAT_OVERFLOWS, &labels, v as f64);
        }
        if let Some(v) = n.listen_drops {
            out.push(&NETSTAT_DROPS, &labels, v as f64);
        }
        if let Some(v) = n.somaxconn {
            out.push(&SOMAXCONN, &labels, v as f64);
        }
        if let Some(shared) = n.ehash_shared {
            out.push(&EHASH_SHARED, &labels, if shared { 1.0 } else { 0.0 });
        }
        if let Some(v) = n.udp_rcvbuf_errors {
            out.push(&UDP_RCVBUF_ERRORS, &labels, v as f64);
        }
        if let Some(v) = n.udp_in_errors {
            out.push(&UDP_IN_ERRORS, &labels, v as f64);
        }
    }

    fn report(&self, ns: &NamespaceView<'_>, out: &mut crate::table::Report) {
        let Some(n) = ns.view.part::<NetstatSample>(NETSTAT) else {
            return;
        };
        let show = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
        out.sections.push(format!(
            "ListenOverflows {}  ListenDrops {}  somaxconn {}  UdpRcvbufErrors {}  UdpInErrors {}\n",
            show(n.listen_overflows),
            show(n.listen_drops),
            show(n.somaxconn),
            show(n.udp_rcvbuf_errors),
            show(n.udp_in_errors)
        ));
    }
}
