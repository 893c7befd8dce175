//! The `netstat` collector: the namespace's TcpExt `ListenOverflows` and
//! `ListenDrops` and its `net.core.somaxconn`, read from procfs files opened
//! inside the namespace, on the full tier.

use std::sync::Arc;

use crate::family::{Families, Kind, MetricDef, NETNS_LABELS};
use crate::model::NetstatSample;
use crate::netns::{Need, ProcName};
use crate::procfs::{self, ProcError, TcpExt};

use super::{
    Collector, Common, Ctx, NamespaceView, Registration, Sample, SampleError, Tier, TypedCollector,
};

/// Its declaration.
pub static REGISTRATION: Registration = Registration {
    name: "netstat",
    help: "the namespace's TcpExt ListenOverflows/ListenDrops and net.core.somaxconn from \
           procfs.",
    default_enabled: true,
    tier: Tier::Full,
    families: &[&NETSTAT_OVERFLOWS, &NETSTAT_DROPS, &SOMAXCONN],
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

fn build(_: &clap::ArgMatches, _: &Common) -> Box<dyn Collector> {
    Box::new(Netstat)
}

/// The built collector.
pub struct Netstat;

const NEEDS: &[Need] = &[
    Need::Proc(ProcName::Netstat),
    Need::Proc(ProcName::Somaxconn),
];

impl TypedCollector for Netstat {
    /// The last sample, whose figures stand in for a file that fails.
    type State = Option<Arc<NetstatSample>>;
    type Scratch = ();

    fn registration(&self) -> &'static Registration {
        &REGISTRATION
    }

    fn needs(&self) -> &'static [Need] {
        NEEDS
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
        let sample = Arc::new(NetstatSample {
            taken_at: ctx.wall,
            listen_overflows: overflows,
            listen_drops: drops,
            somaxconn,
        });
        *last = Some(sample.clone());
        match errors.len() {
            0 => Sample::Done(sample),
            1 => Sample::Partial(sample, errors.remove(0)),
            _ => Sample::Partial(sample, SampleError::Several(errors)),
        }
    }

    fn render(&self, ns: &NamespaceView<'_>, out: &mut Families) {
        let Some(n) = ns.view.part::<NetstatSample>(REGISTRATION.name) else {
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
    }

    fn report(&self, ns: &NamespaceView<'_>, out: &mut crate::table::Report) {
        let Some(n) = ns.view.part::<NetstatSample>(REGISTRATION.name) else {
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
