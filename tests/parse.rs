//! Parser tests on netlink replies captured from a real kernel (Linux 6.18),
//! checked in under tests/fixtures/, plus the damage a reply can suffer on
//! the way: truncation at every byte, unknown and short attributes, unknown
//! families and states, kernel errors, interrupted dumps, foreign messages.
//!
//! Regenerate the captures with
//! `cargo test --test parse -- --ignored regenerate_fixtures`; the scenario
//! they hold is described in `build_scenario` and asserted below.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use sockdiag_exporter::diag::{
    DiagSocket, DumpRequest, Family, MAX_FILTER_PORTS, Mode, PortFilter, SockRecord, StateSet,
    TcpState,
};
use sockdiag_exporter::diag::{ParseError, inet::parse_datagram};

use common::*;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A capture is the concatenated datagrams of one dump: itself a valid
/// stream of netlink messages ending in NLMSG_DONE.
fn load(name: &str) -> (Vec<u8>, u32) {
    let bytes =
        std::fs::read(fixture(name)).unwrap_or_else(|e| panic!("reading fixture {name}: {e}"));
    let seq = u32::from_ne_bytes(bytes[8..12].try_into().unwrap());
    (bytes, seq)
}

fn records(bytes: &[u8], seq: u32) -> Result<Vec<SockRecord>, ParseError> {
    let mut out = Vec::new();
    let summary = parse_datagram(bytes, seq, |r| out.push(*r))?;
    assert!(summary.done, "capture ends in NLMSG_DONE");
    Ok(out)
}

/// Listener 127.0.0.1:4444 backlog 10 with 3 unaccepted clients that each
/// sent 4 bytes; listener [::1]:6666 backlog 5 with 1 accepted client.
fn build_scenario() -> Vec<socket2::Socket> {
    let mut keep = Vec::new();
    let v4: SocketAddr = "127.0.0.1:4444".parse().unwrap();
    keep.push(listen(v4, 10, false, None));
    for _ in 0..3 {
        let mut c = start_connect(v4);
        assert!(wait_connected(&c, Duration::from_secs(2)));
        c.write_all(b"ping").unwrap();
        keep.push(c);
    }
    let v6: SocketAddr = "[::1]:6666".parse().unwrap();
    let l6 = listen(v6, 5, false, None);
    let c6 = start_connect(v6);
    assert!(wait_connected(&c6, Duration::from_secs(2)));
    let (a6, _) = l6.accept().unwrap();
    keep.extend([l6, c6, a6]);
    std::thread::sleep(Duration::from_millis(100));
    keep
}

fn capture(request: &DumpRequest<'_>) -> Vec<u8> {
    let mut socket = DiagSocket::open().expect("opening sock_diag socket");
    let mut all = Vec::new();
    socket
        .dump_datagrams(request, |d, seq| {
            all.extend_from_slice(d);
            Ok(parse_datagram(d, seq, |_| {})?.done)
        })
        .expect("dump");
    all
}

fn req(family: Family, states: StateSet, meminfo: bool, tcp_info: bool) -> DumpRequest<'static> {
    DumpRequest {
        family,
        states,
        meminfo,
        tcp_info,
        filter: None,
    }
}

#[test]
#[ignore = "rewrites tests/fixtures from the running kernel"]
fn regenerate_fixtures() {
    in_netns("regenerate_fixtures", || {
        let _sockets = build_scenario();
        for (name, request) in [
            (
                "listeners_v4.bin",
                req(Family::Ipv4, StateSet::Listeners, true, false),
            ),
            (
                "listeners_v6.bin",
                req(Family::Ipv6, StateSet::Listeners, true, false),
            ),
            (
                "connections_v4.bin",
                req(Family::Ipv4, StateSet::Connections, false, true),
            ),
        ] {
            std::fs::write(fixture(name), capture(&request)).expect("writing fixture");
        }
    });
}

#[test]
fn captured_listeners_decode() {
    let (bytes, seq) = load("listeners_v4.bin");
    let rs = records(&bytes, seq).unwrap();
    assert_eq!(rs.len(), 1);
    let l = rs[0];
    assert_eq!(l.state, TcpState::Listen);
    assert_eq!(l.local.ip().to_string(), "127.0.0.1");
    assert_eq!(l.local_port, 4444);
    assert_eq!((l.rqueue, l.wqueue), (3, 10), "queue length 3 of limit 10");
    assert_eq!(l.drops, Some(0), "SKMEMINFO carries sk_drops");
    assert_ne!(l.inode, 0);
    assert_ne!(l.cookie, 0);

    let (bytes, seq) = load("listeners_v6.bin");
    let rs = records(&bytes, seq).unwrap();
    assert_eq!(rs.len(), 1);
    assert_eq!(rs[0].local.family, Family::Ipv6);
    assert_eq!(rs[0].local.ip().to_string(), "::1");
    assert_eq!((rs[0].local_port, rs[0].rqueue, rs[0].wqueue), (6666, 0, 5));
}

#[test]
fn captured_connections_decode() {
    let (bytes, seq) = load("connections_v4.bin");
    let rs = records(&bytes, seq).unwrap();
    // 3 client sockets and 3 server-side children, all established.
    assert_eq!(rs.len(), 6);
    assert!(rs.iter().all(|r| r.state == TcpState::Established));
    let children: Vec<_> = rs.iter().filter(|r| r.local_port == 4444).collect();
    assert_eq!(children.len(), 3);
    for c in &children {
        assert_eq!(c.inode, 0, "not accepted: no file yet");
        assert_eq!(c.rqueue, 4, "4 unread bytes");
        assert!(
            c.last_data_sent_ms.is_some(),
            "tcp_info was asked for and sent"
        );
    }
    for c in rs.iter().filter(|r| r.remote_port == 4444) {
        assert_ne!(c.inode, 0);
        assert_eq!(c.wqueue, 0, "acknowledged by the server's kernel");
    }
}

#[test]
fn truncation_at_every_byte_is_an_error_never_a_panic() {
    for name in ["listeners_v4.bin", "connections_v4.bin"] {
        let (bytes, seq) = load(name);
        let boundaries = message_boundaries(&bytes);
        for cut in 0..bytes.len() {
            let result = parse_datagram(&bytes[..cut], seq, |_| {});
            if boundaries.contains(&cut) {
                // A cut between messages is a datagram that simply ended
                // early: fine, but not done.
                let s = result.unwrap_or_else(|e| panic!("{name} cut at boundary {cut}: {e}"));
                assert!(!s.done);
            } else {
                let e = result.expect_err("a cut inside a message must be reported");
                assert!(
                    matches!(
                        e,
                        ParseError::Truncated { .. } | ParseError::Malformed { .. }
                    ),
                    "{name} cut at {cut}: {e}"
                );
            }
        }
    }
}

fn message_boundaries(bytes: &[u8]) -> Vec<usize> {
    let mut at = 0;
    let mut out = vec![0];
    while at + 4 <= bytes.len() {
        let len = u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        at += (len + 3) & !3;
        out.push(at);
    }
    out
}

/// Splits a capture into its messages.
fn messages(bytes: &[u8]) -> Vec<Vec<u8>> {
    let b = message_boundaries(bytes);
    b.windows(2).map(|w| bytes[w[0]..w[1]].to_vec()).collect()
}

fn set_len(msg: &mut [u8]) {
    let len = msg.len() as u32;
    msg[0..4].copy_from_slice(&len.to_ne_bytes());
}

#[test]
fn unknown_attributes_are_skipped() {
    let (bytes, seq) = load("listeners_v4.bin");
    let expected = records(&bytes, seq).unwrap();
    let mut msgs = messages(&bytes);
    // Attribute 99, 5 bytes of value, padded: a future kernel's addition.
    let mut reply = msgs[0].clone();
    reply.extend_from_slice(&9u16.to_ne_bytes());
    reply.extend_from_slice(&99u16.to_ne_bytes());
    reply.extend_from_slice(&[1, 2, 3, 4, 5, 0, 0, 0]);
    set_len(&mut reply);
    msgs[0] = reply;
    let got = records(&msgs.concat(), seq).unwrap();
    assert_eq!(got, expected);
}

/// Offset of the first attribute of `kind` in a reply message.
fn find_attr(msg: &[u8], kind: u16) -> Option<usize> {
    let mut at = 16 + 72;
    while at + 4 <= msg.len() {
        let len = u16::from_ne_bytes([msg[at], msg[at + 1]]) as usize;
        if u16::from_ne_bytes([msg[at + 2], msg[at + 3]]) & 0x3fff == kind {
            return Some(at);
        }
        at += (len + 3) & !3;
    }
    None
}

#[test]
fn short_extensions_from_older_kernels_are_tolerated() {
    let (bytes, seq) = load("connections_v4.bin");
    let mut msgs = messages(&bytes);
    let info = find_attr(&msgs[0], 2).expect("tcp_info attribute in capture");
    // An old kernel's tcp_info that ends before tcpi_last_data_sent: cut the
    // attribute to 40 bytes of value and drop what followed it.
    let mut reply = msgs[0][..info + 4 + 40].to_vec();
    reply[info..info + 2].copy_from_slice(&44u16.to_ne_bytes());
    set_len(&mut reply);
    msgs[0] = reply;
    let rs = records(&msgs.concat(), seq).unwrap();
    assert_eq!(rs.len(), 6);
    assert_eq!(rs[0].last_data_sent_ms, None, "too short to hold the field");
    assert!(rs[1..].iter().all(|r| r.last_data_sent_ms.is_some()));
}

#[test]
fn damaged_attributes_are_errors() {
    let (bytes, seq) = load("listeners_v4.bin");
    let msgs = messages(&bytes);
    let at = find_attr(&msgs[0], 7).expect("skmeminfo attribute in capture");
    // Length below the attribute header.
    let mut bad = msgs.clone();
    bad[0][at..at + 2].copy_from_slice(&2u16.to_ne_bytes());
    assert!(matches!(
        parse_datagram(&bad.concat(), seq, |_| {}),
        Err(ParseError::Malformed { .. })
    ));
    // Length beyond the message.
    let mut bad = msgs.clone();
    bad[0][at..at + 2].copy_from_slice(&4000u16.to_ne_bytes());
    assert!(matches!(
        parse_datagram(&bad.concat(), seq, |_| {}),
        Err(ParseError::Truncated { .. })
    ));
    // A netlink length shorter than its own header.
    let mut bad = msgs.clone();
    bad[0][0..4].copy_from_slice(&8u32.to_ne_bytes());
    assert!(matches!(
        parse_datagram(&bad.concat(), seq, |_| {}),
        Err(ParseError::Malformed { .. })
    ));
}

#[test]
fn unknown_families_and_states_are_skipped() {
    let (bytes, seq) = load("connections_v4.bin");
    let mut msgs = messages(&bytes);
    msgs[0][16] = libc::AF_UNIX as u8;
    msgs[1][17] = 13; // a state this kernel does not have
    let mut n = 0;
    let s = parse_datagram(&msgs.concat(), seq, |_| n += 1).unwrap();
    assert_eq!((n, s.records, s.skipped), (4, 4, 2));
}

#[test]
fn kernel_errors_interrupted_dumps_and_foreign_messages() {
    let (bytes, seq) = load("listeners_v4.bin");
    let msgs = messages(&bytes);
    let done = msgs.last().unwrap().clone();

    // NLMSG_DONE carrying -EPERM.
    let mut failed = done.clone();
    failed[16..20].copy_from_slice(&(-libc::EPERM).to_ne_bytes());
    let e = parse_datagram(&failed, seq, |_| {}).unwrap_err();
    assert_eq!(e, ParseError::Kernel { errno: libc::EPERM });
    assert!(e.to_string().contains("Operation not permitted"), "{e}");

    // NLMSG_ERROR with -EINVAL and the offending header.
    let mut err = vec![0u8; 36];
    err[0..4].copy_from_slice(&36u32.to_ne_bytes());
    err[4..6].copy_from_slice(&2u16.to_ne_bytes());
    err[8..12].copy_from_slice(&seq.to_ne_bytes());
    err[16..20].copy_from_slice(&(-libc::EINVAL).to_ne_bytes());
    assert_eq!(
        parse_datagram(&err, seq, |_| {}),
        Err(ParseError::Kernel {
            errno: libc::EINVAL
        })
    );

    // A positive status is no errno: the message is damaged.
    let mut positive = err.clone();
    positive[16..20].copy_from_slice(&5i32.to_ne_bytes());
    assert!(matches!(
        parse_datagram(&positive, seq, |_| {}),
        Err(ParseError::Malformed { .. })
    ));
    let mut min = done.clone();
    min[16..20].copy_from_slice(&i32::MIN.to_ne_bytes());
    assert!(matches!(
        parse_datagram(&min, seq, |_| {}),
        Err(ParseError::Malformed { .. })
    ));

    // NLM_F_DUMP_INTR on a reply.
    let mut intr = msgs[0].clone();
    intr[6] |= 0x10;
    assert_eq!(
        parse_datagram(&intr, seq, |_| {}),
        Err(ParseError::Interrupted)
    );

    // A late answer to an earlier request is ignored, even an error.
    let mut stale = err.clone();
    stale[8..12].copy_from_slice(&seq.wrapping_sub(1).to_ne_bytes());
    let mut stream = stale;
    stream.extend_from_slice(&bytes);
    let mut n = 0;
    let s = parse_datagram(&stream, seq, |_| n += 1).unwrap();
    assert_eq!((n, s.foreign, s.done), (1, 1, true));
}

/// The kernel-side port filter: the kernel accepts both program shapes (its
/// audit rejects malformed jumps with EINVAL), also at the longest allowed,
/// and returns exactly the sockets the userspace mirror keeps.
#[test]
fn port_filter_is_accepted_and_exact() {
    in_netns("port_filter_is_accepted_and_exact", || {
        let mut keep = Vec::new();
        let ports = [4001u16, 4002, 4003, 4004];
        for port in ports {
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            keep.push(listen(addr, 16, false, None));
            for _ in 0..2 {
                let c = start_connect(addr);
                assert!(wait_connected(&c, Duration::from_secs(2)));
                keep.push(c);
            }
        }
        let mut socket = DiagSocket::open().unwrap();
        let mut dump = |filter: Option<&PortFilter>| {
            let mut seen = Vec::new();
            let request = DumpRequest {
                family: Family::Ipv4,
                states: StateSet::Connections,
                meminfo: false,
                tcp_info: true,
                filter,
            };
            socket
                .dump(&request, |r| seen.push((r.local_port, r.remote_port)))
                .unwrap_or_else(|e| panic!("filter {filter:?}: {e}"));
            seen.sort_unstable();
            seen
        };
        let all = dump(None);
        assert_eq!(all.len(), 16, "both ends of 8 connections");
        let expect = |f: &PortFilter| {
            let v: Vec<_> = all
                .iter()
                .copied()
                .filter(|&(l, r)| f.keeps(l, r))
                .collect();
            v
        };
        for (mode, list) in [
            (Mode::Only, vec![4002]),
            (Mode::Only, vec![4001, 4004]),
            (Mode::Only, vec![5000]),
            (Mode::Except, vec![4002]),
            (Mode::Except, vec![4001, 4003, 4004]),
            (Mode::Except, vec![5000]),
        ] {
            let f = PortFilter::new(mode, list).unwrap().unwrap();
            let got = dump(Some(&f));
            assert_eq!(got, expect(&f), "{f:?}");
        }
        // Spot-check the mirror itself: a listed port keeps both ends.
        let f = PortFilter::new(Mode::Only, vec![4002]).unwrap().unwrap();
        assert_eq!(dump(Some(&f)).len(), 4);
        // The longest programs the flags allow.
        let many: Vec<u16> = (10000..10000 + MAX_FILTER_PORTS as u16 - 1)
            .chain([4003])
            .collect();
        let only = PortFilter::new(Mode::Only, many.clone()).unwrap().unwrap();
        assert_eq!(dump(Some(&only)).len(), 4);
        let except = PortFilter::new(Mode::Except, many).unwrap().unwrap();
        assert_eq!(
            dump(Some(&except)).len(),
            14,
            "all but the 2 server ends on 4003"
        );
        drop(keep);
    });
}
