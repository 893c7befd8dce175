//! The `processes` collector: which process (command, executable, command
//! line, pid, systemd unit, container) owns each listening socket, TCP and
//! unix alike, found by walking `/proc/<pid>/fd` on the full tier.
//!
//! It needs no handle of its own: the listeners it attributes are those the
//! listener collectors last published for the namespace. Owners are cached
//! by socket cookie and confirmed with one `readlink` each; `/proc` is
//! walked only for listeners that are new or lost their owner, over the
//! processes of that namespace as one per-pass index lists them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::family::{Families, Kind, MetricDef, NETNS_LABELS};
use crate::model::{NetnsView, OwnerSample};
use crate::netns::Need;
use crate::owners::{OwnerCache, ProcessIndex};

use super::{
    Call, Collector, Common, Ctx, NamespaceView, PROCESSES, Registration, Sample, Tier,
    TypedCollector,
};

/// Its declaration.
pub static REGISTRATION: Registration = Registration {
    name: PROCESSES,
    help: "which process (command, executable, command line, pid, systemd unit, container) \
           owns each TCP and unix listener and UDP receiver, rendered as \
           sockdiag_listener_process_info and sockdiag_udp_receiver_process_info. Reads /proc/<pid>/fd only when a new listener \
           appears; other users' processes need CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH. \
           Attributes the listeners the listeners and unix collectors find.",
    default_enabled: true,
    tier: Tier::Full,
    families: &[&LISTENER_OWNER_UNKNOWN],
    args: Vec::new,
    build,
};

/// `sockdiag_listener_owner_unknown`
pub const LISTENER_OWNER_UNKNOWN: MetricDef = MetricDef {
    name: "sockdiag_listener_owner_unknown",
    kind: Kind::Gauge,
    labels: NETNS_LABELS,
    member: false,
    help: "Listening sockets of the namespace whose owning process is not known: the exporter may not read other users' /proc/PID/fd (needs CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH), or the owner is outside the namespace.",
};

fn build(_: &clap::ArgMatches, common: &Common) -> Box<dyn Collector> {
    Box::new(Processes {
        common: common.clone(),
    })
}

/// The built collector.
pub struct Processes {
    common: Common,
}

/// Set once the fds of some process could not be read, so that is logged
/// once for the daemon's life, not once per namespace per pass.
static DENIAL_LOGGED: AtomicBool = AtomicBool::new(false);

/// The effective capability set, from the `CapEff:` line of
/// `/proc/self/status`.
fn effective_caps(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// Why other processes' open files could not be read, as far as the
/// exporter can tell from its own capabilities (`caps`, when known): the
/// capabilities it lacks; or, holding them (root, say), what else refuses,
/// so that nobody is told to grant what they already have.
fn denial_reason(caps: Option<u64>) -> String {
    const NEEDED: [(u32, &str); 2] = [(19, "CAP_SYS_PTRACE"), (2, "CAP_DAC_READ_SEARCH")];
    let Some(caps) = caps else {
        return "needs CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH".to_string();
    };
    let missing: Vec<&str> = NEEDED
        .iter()
        .filter(|(bit, _)| caps & (1u64 << bit) == 0)
        .map(|(_, name)| *name)
        .collect();
    if missing.is_empty() {
        "the exporter holds CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH, so something else \
         refuses: those processes belong to a user namespace the exporter's capabilities do \
         not reach (a rootless container, or the exporter itself runs in one), or a security \
         module denies it ptrace access (Yama ptrace_scope 3, AppArmor, SELinux)"
            .to_string()
    } else {
        format!("needs {}", missing.join(" and "))
    }
}

impl TypedCollector for Processes {
    type State = OwnerCache;
    type Scratch = ProcessIndex;

    fn registration(&self) -> &'static Registration {
        &REGISTRATION
    }

    fn needs(&self) -> &'static [Need] {
        &[]
    }

    fn new_state(&self) -> OwnerCache {
        OwnerCache::new(self.common.procfs.clone(), self.common.owner_retry)
    }

    fn new_scratch(&self) -> ProcessIndex {
        ProcessIndex::new(self.common.procfs.clone())
    }

    fn begin_pass(&self, index: &mut ProcessIndex) {
        index.clear();
    }

    /// A socket nobody looked for an owner of yet (a new listener) is
    /// looked for at once, not a period later; one looked for without
    /// success waits for the retry interval, as in a regular sample.
    fn call(&self, view: &NetnsView, cache: &OwnerCache) -> Call {
        Call {
            now: view
                .owned_sockets()
                .any(|(cookie, inode)| inode != 0 && !cache.has_looked_for(cookie)),
            troubled: false,
        }
    }

    fn sample(
        &self,
        ctx: &mut Ctx<'_>,
        cache: &mut OwnerCache,
        index: &mut ProcessIndex,
    ) -> Sample {
        let Some(view) = ctx.view else {
            return Sample::Idle;
        };
        let mut sockets = view.owned_sockets().peekable();
        if sockets.peek().is_none() && !view.has_socket_parts() {
            // No socket collector has published here yet.
            return Sample::Idle;
        }
        let listeners: Vec<(u64, u32)> = sockets.collect();
        let netns = (ctx.info.id != (0, 0)).then_some(ctx.info.id);
        let stats = cache.refresh_with(ctx.now, netns, &listeners, index);
        if stats.denied > 0 && !DENIAL_LOGGED.swap(true, Ordering::Relaxed) {
            let status = std::fs::read_to_string(self.common.procfs.join("self/status"));
            let reason = denial_reason(status.ok().as_deref().and_then(effective_caps));
            tracing::warn!(
                netns = %ctx.info.name,
                processes = stats.denied,
                "cannot read the open files of some processes ({reason}): their listeners \
                 get no process name; sockdiag_listener_owner_unknown counts them (logged once)"
            );
        }
        let owners = listeners
            .iter()
            .filter_map(|(cookie, _)| Some((*cookie, cache.get(*cookie)?.clone())))
            .collect();
        Sample::Done(Arc::new(OwnerSample::new(owners, stats.unknown)))
    }

    fn render(&self, ns: &NamespaceView<'_>, out: &mut Families) {
        // Each socket collector renders its sockets' owners; what is left
        // here is how many are not known.
        let Some(owners) = ns.view.part::<OwnerSample>(PROCESSES) else {
            return;
        };
        out.push(
            &LISTENER_OWNER_UNKNOWN,
            &[("netns", ns.name)],
            owners.unknown as f64,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_denial_names_what_is_missing_or_what_else_refuses() {
        let status = "Name:\tsockdiag\nCapEff:\t000001ffffffffff\n";
        let root = effective_caps(status);
        assert_eq!(root, Some(0x1ff_ffff_ffff));
        assert!(denial_reason(root).contains("something else refuses"));
        let only_ptrace = Some(1u64 << 19);
        assert_eq!(denial_reason(only_ptrace), "needs CAP_DAC_READ_SEARCH");
        assert_eq!(
            denial_reason(Some(0)),
            "needs CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH"
        );
        assert_eq!(effective_caps("CapEff:\tzz\n"), None);
    }
}
