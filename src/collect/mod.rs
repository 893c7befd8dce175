//! The collectors, one module each, and the registry that lists them.
//!
//! A collector declares itself once, in a [`Registration`]: its name (the
//! `--collector.<name>` switch and the `collector` label), whether it is on
//! by default, the tier it runs on, the metric families it emits, its own
//! flags, and how to build it from the parsed command line. The built
//! [`Collector`] says which handles it needs in a namespace, samples one
//! namespace into an immutable part, and renders its parts into `/metrics`
//! and the `snapshot` table. Flags, README tables, HELP lines, the
//! scheduler and both renderers iterate [`REGISTRY`], so adding a collector
//! is one module plus its line there.

pub mod connections;
pub mod listeners;
pub mod listening;
pub mod netstat;
pub mod processes;
pub mod udp;
pub mod unix;

use std::any::Any;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::diag::{DiagError, DiagSocket, MAX_FILTER_PORTS};
use crate::family::{Families, MetricDef};
use crate::model::{NetnsView, Part};
use crate::netns::{HandleError, Handles, Need, NetnsInfo, ProcName};
use crate::procfs::ProcError;
use crate::table::Report;

/// The `listeners` collector's name, and the key of its parts.
pub const LISTENERS: &str = "listeners";
/// The `unix` collector's name, and the key of its parts.
pub const UNIX: &str = "unix";
/// The `connections` collector's name, and the key of its parts.
pub const CONNECTIONS: &str = "connections";
/// The `netstat` collector's name, and the key of its parts.
pub const NETSTAT: &str = "netstat";
/// The `processes` collector's name, and the key of its parts.
pub const PROCESSES: &str = "processes";
/// The `udp` collector's name, and the key of its parts.
pub const UDP: &str = "udp";

/// Every collector, in the order they run within a tier and render.
pub const REGISTRY: &[&Registration] = &[
    &listeners::REGISTRATION,
    &unix::REGISTRATION,
    &udp::REGISTRATION,
    &connections::REGISTRATION,
    &netstat::REGISTRATION,
    &processes::REGISTRATION,
];

/// A comma-separated port list as one flag value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortList(pub Vec<u16>);

/// Parses a comma-separated list of ports, at most [`MAX_FILTER_PORTS`]
/// (the most a kernel-side filter can carry; more would be a mistake).
pub fn parse_ports(text: &str) -> Result<PortList, String> {
    let mut ports = text
        .split(',')
        .map(|p| {
            p.trim()
                .parse::<u16>()
                .map_err(|_| format!("{:?} is not a port number (0-65535)", p.trim()))
        })
        .collect::<Result<Vec<u16>, String>>()?;
    ports.sort_unstable();
    ports.dedup();
    if ports.len() > MAX_FILTER_PORTS {
        return Err(format!(
            "{} distinct ports listed; at most {MAX_FILTER_PORTS}",
            ports.len()
        ));
    }
    Ok(PortList(ports))
}

/// The registration of `name`.
pub fn registration(name: &str) -> Option<&'static Registration> {
    REGISTRY.iter().copied().find(|r| r.name == name)
}

/// Which sampling loop a collector runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tier {
    /// The fast listener pass (`--collector.listeners.interval`): cheap
    /// dumps whose figures change between scrapes (queue peaks, time full).
    Fast,
    /// The full pass (`--collector.connections.interval`): walks and
    /// procfs reads whose cost grows with connections or processes.
    Full,
}

impl Tier {
    /// As the README and `--help` name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Fast => "fast",
            Tier::Full => "full",
        }
    }
}

/// A collector's declaration.
pub struct Registration {
    /// `--collector.<name>`, and the `collector` label.
    pub name: &'static str,
    /// What it exports and what it costs, for `--help` and the README.
    pub help: &'static str,
    /// Whether it runs without `--collector.<name>`.
    pub default_enabled: bool,
    /// The loop it runs on.
    pub tier: Tier,
    /// Every family it can emit (families shared with another collector,
    /// such as the per-listener ones, are listed by each).
    pub families: &'static [&'static MetricDef],
    /// Its own flags, `--collector.<name>.<setting>`.
    pub args: fn() -> Vec<clap::Arg>,
    /// Builds it from the parsed command line; the flags were validated by
    /// their parsers, so this only reads them.
    pub build: fn(&clap::ArgMatches, &Common) -> Box<dyn Collector>,
}

/// Settings every collector may read, from the driver's own flags.
#[derive(Debug, Clone, PartialEq)]
pub struct Common {
    /// Where procfs is mounted.
    pub procfs: PathBuf,
    /// Period of the fast tier.
    pub fast_interval: Duration,
    /// Period of the full tier.
    pub full_interval: Duration,
    /// Window over which accept-queue peaks are kept.
    pub peak_window: Duration,
    /// How long a listener whose owner was not found waits before it is
    /// searched for again (the namespace rescan interval).
    pub owner_retry: Duration,
    /// One look only (`snapshot`): figures that need repeated sampling
    /// (peaks, time full) are left unknown rather than made up.
    pub one_shot: bool,
}

impl Common {
    /// Whether the kernel offers `path` under procfs (e.g. `self/net/snmp6`,
    /// absent where IPv6 is off): what it offers the daemon's namespace it
    /// offers every namespace, so a collector that finds a file missing
    /// does not ask for it anywhere.
    pub fn procfs_has(&self, path: &str) -> bool {
        self.procfs.join(path).exists()
    }
}

/// What a collector sees of one namespace while sampling it.
pub struct Ctx<'a> {
    /// The namespace.
    pub info: &'a NetnsInfo,
    /// Its handles on this tier, prepared for the collector's needs.
    pub handles: &'a mut Handles,
    /// Its latest published view (other collectors' parts, e.g. the
    /// listeners whose owners the processes collector looks up).
    pub view: Option<&'a NetnsView>,
    /// Monotonic time of this pass.
    pub now: Instant,
    /// Wall time of this pass.
    pub wall: SystemTime,
    /// The time the scheduler means to leave until this collector samples
    /// this namespace again.
    pub period: Duration,
}

impl Ctx<'_> {
    /// Runs `dump` on the namespace's sock_diag socket. A socket that is
    /// not open (it waits its back-off) and a dump that fails are both the
    /// sample's failure; after a failed dump the handles also drop a socket
    /// the kernel may still be dumping on, so every collector that dumps
    /// gets that right by going through here.
    pub fn dump<T>(
        &mut self,
        dump: impl FnOnce(&mut DiagSocket) -> Result<T, DiagError>,
    ) -> Result<T, SampleError> {
        let socket = self.handles.diag(self.now)?;
        dump(socket).map_err(|e| {
            self.handles.after_failed_dump(&e);
            SampleError::Diag(e)
        })
    }
}

impl Ctx<'_> {
    /// Reads procfs file `name` of the namespace for a collector that can do
    /// without it (to skip work it would otherwise do): `None` when it
    /// cannot be read, which is logged at debug level only.
    pub fn read_optional(&mut self, name: ProcName) -> Option<String> {
        let file = self.handles.proc(name, self.now).ok()?;
        match file.read() {
            Ok(text) => Some(text),
            Err(e) => {
                tracing::debug!(netns = %self.info.name, error = %e, "cannot read");
                None
            }
        }
    }
}

/// Why a sample failed, naming what failed.
#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    /// A dump failed.
    #[error(transparent)]
    Diag(#[from] DiagError),
    /// A procfs file could not be read or parsed.
    #[error(transparent)]
    Proc(#[from] ProcError),
    /// A handle is not open (it failed to open and waits its back-off).
    #[error(transparent)]
    Handle(#[from] HandleError),
    /// Several things failed.
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Several(Vec<SampleError>),
    /// The scheduler handed a collector another collector's state.
    #[error("internal error: {0}")]
    Internal(&'static str),
}

/// What one sample of one namespace came to.
#[derive(Debug)]
pub enum Sample {
    /// A new part to publish.
    Done(Arc<dyn Part>),
    /// A new part to publish, though something failed (the part carries the
    /// last good figures for what failed).
    Partial(Arc<dyn Part>, SampleError),
    /// Nothing to publish: the last part stands.
    Failed(SampleError),
    /// Nothing to do here, and nothing wrong (e.g. no listeners to find
    /// owners for yet).
    Idle,
}

/// What the figures published since a collector's last sample of a
/// namespace (by faster collectors) ask of its schedule there.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Call {
    /// Sample it now rather than when its period is up: its last figures
    /// cannot be read beside the newer ones (a queue the last walk never
    /// saw, drops the last netstat read does not count, a listener whose
    /// owner was never looked for).
    pub now: bool,
    /// It is in trouble (a queue filling, a listener dropping): first in
    /// line for a CPU budget.
    pub troubled: bool,
}

/// One namespace as renderers see it.
pub struct NamespaceView<'a> {
    /// The `netns` label value.
    pub name: &'a str,
    /// What was published for it.
    pub view: &'a NetnsView,
}

/// A built collector (see [`TypedCollector`], which every collector
/// implements; this is its type-erased face for the registry).
pub trait Collector: Send + Sync {
    /// Its declaration.
    fn registration(&self) -> &'static Registration;
    /// The handles it needs in a namespace.
    fn needs(&self) -> &[Need];
    /// Fresh per-namespace state.
    fn new_state(&self) -> Box<dyn Any + Send>;
    /// Fresh per-tier scratch, shared by every namespace of a pass.
    fn new_scratch(&self) -> Box<dyn Any + Send>;
    /// Called once at the start of every pass.
    fn begin_pass(&self, scratch: &mut (dyn Any + Send));
    /// Samples one namespace.
    fn sample(
        &self,
        ctx: &mut Ctx<'_>,
        state: &mut (dyn Any + Send),
        scratch: &mut (dyn Any + Send),
    ) -> Sample;
    /// The least time to leave before sampling a namespace again after a
    /// sample that took `took`, when that is longer than the tier's period.
    fn min_period(&self, took: Duration) -> Option<Duration>;
    /// What a namespace's latest view asks of this collector's schedule
    /// there, given its state.
    fn call(&self, view: &NetnsView, state: &(dyn Any + Send)) -> Call;
    /// The fraction of one core its samples may use, all namespaces
    /// together; `None`: sampled every period wherever due.
    fn cpu_budget(&self) -> Option<f64>;
    /// Renders its parts of one namespace into `/metrics`.
    fn render(&self, ns: &NamespaceView<'_>, out: &mut Families);
    /// Renders its parts of one namespace into the `snapshot` table.
    fn report(&self, ns: &NamespaceView<'_>, out: &mut Report);
}

/// A collector with typed state; [`Collector`] is implemented for every
/// one of these.
pub trait TypedCollector: Send + Sync + 'static {
    /// What it keeps per namespace between samples (handles aside).
    type State: Send + 'static;
    /// What it reuses across the namespaces of a pass.
    type Scratch: Send + 'static;
    /// Its declaration.
    fn registration(&self) -> &'static Registration;
    /// The handles it needs in a namespace.
    fn needs(&self) -> &[Need];
    /// Fresh per-namespace state.
    fn new_state(&self) -> Self::State;
    /// Fresh per-tier scratch.
    fn new_scratch(&self) -> Self::Scratch;
    /// Called once at the start of every pass.
    fn begin_pass(&self, _scratch: &mut Self::Scratch) {}
    /// Samples one namespace.
    fn sample(
        &self,
        ctx: &mut Ctx<'_>,
        state: &mut Self::State,
        scratch: &mut Self::Scratch,
    ) -> Sample;
    /// See [`Collector::min_period`].
    fn min_period(&self, _took: Duration) -> Option<Duration> {
        None
    }
    /// See [`Collector::call`].
    fn call(&self, _view: &NetnsView, _state: &Self::State) -> Call {
        Call::default()
    }
    /// See [`Collector::cpu_budget`].
    fn cpu_budget(&self) -> Option<f64> {
        None
    }
    /// Renders into `/metrics`.
    fn render(&self, ns: &NamespaceView<'_>, out: &mut Families);
    /// Renders into the `snapshot` table.
    fn report(&self, _ns: &NamespaceView<'_>, _out: &mut Report) {}
}

impl<T: TypedCollector> Collector for T {
    fn registration(&self) -> &'static Registration {
        TypedCollector::registration(self)
    }
    fn needs(&self) -> &[Need] {
        TypedCollector::needs(self)
    }
    fn new_state(&self) -> Box<dyn Any + Send> {
        Box::new(TypedCollector::new_state(self))
    }
    fn new_scratch(&self) -> Box<dyn Any + Send> {
        Box::new(TypedCollector::new_scratch(self))
    }
    fn begin_pass(&self, scratch: &mut (dyn Any + Send)) {
        if let Some(s) = scratch.downcast_mut::<T::Scratch>() {
            TypedCollector::begin_pass(self, s);
        }
    }
    fn sample(
        &self,
        ctx: &mut Ctx<'_>,
        state: &mut (dyn Any + Send),
        scratch: &mut (dyn Any + Send),
    ) -> Sample {
        match (
            state.downcast_mut::<T::State>(),
            scratch.downcast_mut::<T::Scratch>(),
        ) {
            (Some(state), Some(scratch)) => TypedCollector::sample(self, ctx, state, scratch),
            _ => Sample::Failed(SampleError::Internal("state of another collector")),
        }
    }
    fn min_period(&self, took: Duration) -> Option<Duration> {
        TypedCollector::min_period(self, took)
    }
    fn call(&self, view: &NetnsView, state: &(dyn Any + Send)) -> Call {
        state
            .downcast_ref::<T::State>()
            .map_or_else(Call::default, |s| TypedCollector::call(self, view, s))
    }
    fn cpu_budget(&self) -> Option<f64> {
        TypedCollector::cpu_budget(self)
    }
    fn render(&self, ns: &NamespaceView<'_>, out: &mut Families) {
        TypedCollector::render(self, ns, out)
    }
    fn report(&self, ns: &NamespaceView<'_>, out: &mut Report) {
        TypedCollector::report(self, ns, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_families_declared_once_per_collector() {
        let mut names: Vec<_> = REGISTRY.iter().map(|r| r.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), REGISTRY.len());
        for r in REGISTRY {
            let mut fams: Vec<_> = r.families.iter().map(|f| f.name).collect();
            fams.sort_unstable();
            fams.dedup();
            assert_eq!(fams.len(), r.families.len(), "{}", r.name);
            assert!(
                r.name.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{}",
                r.name
            );
        }
    }

    #[test]
    fn every_collector_flag_is_namespaced_by_its_collector() {
        for r in REGISTRY {
            for arg in (r.args)() {
                let long = arg.get_long().unwrap_or_default();
                assert!(
                    long.starts_with(&format!("collector.{}.", r.name)),
                    "{long} belongs to {}",
                    r.name
                );
            }
        }
    }
}
