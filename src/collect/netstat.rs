//! The `netstat` collector: the namespace's TcpExt `ListenOverflows` and
//! `ListenDrops`, its `net.core.somaxconn`, and whether it shares the
//! host's established-socket hash, read from procfs files opened inside the
//! namespace, on the full tier.

use std::sync::Arc;

use crate::family::{Families, Kind, MetricDef, NETNS_LABELS};
use crate::model::NetstatSample;
use crate::netns::{Need, ProcName};
use crate::procfs::{self, ProcError, TcpExt};

use super::{
    Collector, Common, Ctx, NETSTAT, NamespaceView, Registration, Sample, SampleError, Tier,
    TypedCollector,
};

/// Its declaration.
pub static REGISTRATION: Registration = Registration {
    name: NETSTAT,
    help: "the namespace's TcpExt ListenOverflows/ListenDrops, net.core.somaxconn and \
           whether it shares the host's established hash (net.ipv4.tcp_ehash_entries), from \
           procfs.",
    default_enabled: true,
    tier: Tier::Full,
    families: &[
        &NETSTAT_OVERFLOWS,
        &NETSTAT_DROPS,
        &SOMAXCONN,
        &EHASH_SHARED,
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

fn build(_: &clap::ArgMatches, common: &Common) -> Box<dyn Collector> {
    // The sysctl is the kernel's (6.1+), the same in every namespace: where
    // the host lacks it, no namespace has it, and it is not asked for.
    let ehash = common
        .procfs
        .join("sys/net/ipv4/tcp_ehash_entries")
        .exists();
    Box::new(Netstat { ehash })
}

/// The built collector.
pub struct Netstat {
    /// Whether the kernel has `net.ipv4.tcp_ehash_entries`.
    ehash: bool,
}

const NEEDS: &[Need] = &[
    Need::Proc(ProcName::Netstat),
    Need::Proc(ProcName::Somaxconn),
];
const NEEDS_EHASH: &[Need] = &[
    Need::Proc(ProcName::Netstat),
    Need::Proc(ProcName::Somaxconn),
    Need::Proc(ProcName::EhashEntries),
];

impl TypedCollector for Netstat {
    /// The last sample, whose figures stand in for a file that fails.
    type State = Option<Arc<NetstatSample>>;
    type Scratch = ();

    fn registration(&self) -> &'static Registration {
        &REGISTRATION
    }

    fn needs(&self) -> &'static [Need] {
        if self.ehash { NEEDS_EHASH } else { NEEDS }
    }

    fn new_state(&self) -> Self::State {
        None
    }

    fn new_scratch(&self) {}

    /// Fields that fail keep their last value, so one unreadable file does
    /// not blank the others; the failure is still reported.
    fn sample(&self, ctx: &mut Ctx<'_>, last: &mut Self::State, _: &mut ()) -> Sample {
        let previous = last.as_deref();
        let mut errors = Vec::new();
        let ext = match ctx.handles.proc(ProcName::Netstat, ctx.now) {
            Ok(file) => read_tcp_ext(file).map_err(SampleError::from),
            Err(e) => Err(e.into()),
        };
        let (overflows, drops) = match ext {
            Ok(ext) => (ext.listen_overflows, ext.listen_drops),
            Err(e) => {
                errors.push(e);
                (
                    previous.and_then(|p| p.listen_overflows),
                    previous.and_then(|p| p.listen_drops),
                )
            }
        };
        let somaxconn = match ctx.handles.proc(ProcName::Somaxconn, ctx.now) {
            Ok(file) => file
                .read()
                .and_then(|text| procfs::parse_number(file.path(), &text))
                .map_err(SampleError::from),
            Err(e) => Err(e.into()),
        };
        let somaxconn = match somaxconn {
            Ok(v) => Some(v),
            Err(e) => {
                errors.push(e);
                previous.and_then(|p| p.somaxconn)
            }
        };
        let ehash_shared = if self.ehash {
            let entries = match ctx.handles.proc(ProcName::EhashEntries, ctx.now) {
                Ok(file) => file
                    .read()
                    .and_then(|text| procfs::parse_signed(file.path(), &text))
                    .map_err(SampleError::from),
                Err(e) => Err(e.into()),
            };
            match entries {
                Ok(n) => Some(n < 0),
                Err(e) => {
                    errors.push(e);
                    previous.and_then(|p| p.ehash_shared)
                }
            }
        } else {
            None
        };
        let sample = Arc::new(NetstatSample {
            taken_at: ctx.wall,
            listen_overflows: overflows,
            listen_drops: drops,
            somaxconn,
            ehash_shared,
        });
        *last = Some(sample.clone());
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
    }

    fn report(&self, ns: &NamespaceView<'_>, out: &mut crate::table::Report) {
        let Some(n) = ns.view.part::<NetstatSample>(NETSTAT) else {
            return;
        };
        let show = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
        out.sections.push(format!(
            "ListenOverflows {}  ListenDrops {}  somaxconn {}\n",
            show(n.listen_overflows),
            show(n.listen_drops),
            show(n.somaxconn)
        ));
    }
}

fn read_tcp_ext(file: &mut procfs::ProcFile) -> Result<TcpExt, ProcError> {
    let text = file.read()?;
    procfs::parse_tcp_ext(&text).map_err(|what| ProcError::Parse {
        path: file.path().to_path_buf(),
        what,
    })
}
