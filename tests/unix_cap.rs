//! `--collector.unix.max-listeners`: at most that many unix listeners per
//! namespace are exported, and those exported already keep their place
//! when newcomers arrive, so no exported series vanishes because another
//! listener appeared.

mod common;

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener};
use std::time::Duration;

use common::*;

/// A listener on the abstract name `@sockdiag-cap-<name>`.
fn listen(name: &str) -> UnixListener {
    let addr = SocketAddr::from_abstract_name(format!("sockdiag-cap-{name}"))
        .expect("abstract unix address");
    UnixListener::bind_addr(&addr).expect("binding an abstract unix listener")
}

/// The unix listeners `/metrics` shows, by address, sorted.
fn exported(m: &Metrics) -> Vec<String> {
    let mut v: Vec<String> = m
        .find("sockdiag_accept_queue_length", &[("family", "unix")])
        .iter()
        .map(|s| s.labels["address"].clone())
        .collect();
    v.sort();
    v
}

/// Polls `/metrics` until `ready` holds (at most 15 s); a timeout shows
/// the unix listeners exported.
fn wait_for(daemon: &Daemon, what: &str, ready: impl Fn(&Metrics) -> bool) -> Metrics {
    daemon.wait_for(what, ready, |m| {
        format!("unix listeners exported: {:?}", exported(m))
    })
}

/// Regression: a listener first seen in the dump that starts the capping
/// counted as already exported, so it competed by address with those that
/// were: `@...-a` arriving beside exported `@...-b` and `@...-c` under a cap
/// of 2 pushed `@...-c` out, ending its series.
#[test]
fn listeners_already_exported_keep_their_place_under_the_cap() {
    in_netns(
        "listeners_already_exported_keep_their_place_under_the_cap",
        || {
            let _b = listen("b");
            let _c = listen("c");
            let daemon = Daemon::start(&[
                "--no-collector.netns",
                "--collector.unix.max-listeners",
                "2",
            ]);
            let before = vec!["@sockdiag-cap-b".to_string(), "@sockdiag-cap-c".to_string()];
            wait_for(&daemon, "b and c exported", |m| exported(m) == before);

            let _a = listen("a");
            let m = wait_for(&daemon, "one listener over the cap", |m| {
                m.value_or_zero(
                    "sockdiag_unix_listeners_unexported",
                    &[("netns", "host"), ("reason", "cap")],
                ) == 1.0
            });
            assert_eq!(
                exported(&m),
                before,
                "the newcomer is left out, not an exported listener"
            );
            // And it stays so over further samples.
            std::thread::sleep(Duration::from_millis(300));
            assert_eq!(exported(&daemon.metrics()), before);
        },
    );
}
