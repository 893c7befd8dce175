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
    DiagSocket, DumpRequest, Family, MAX_FILTER_PORTS, Mode, PortFilter, Protocol, SockRecord,
    StateSet, TcpState,
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
    let seq = seq_of(&bytes);
    (bytes, seq)
}

/// The sequence number of a capture's request: its first message's.
fn seq_of(capture: &[u8]) -> u32 {
    u32::from_ne_bytes(capture[8..12].try_into().unwrap())
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

/// The datagrams of one dump of `request`, concatenated; `done` tells the
/// last one (it parses a datagram and says whether it ends the dump).
fn capture<R: sockdiag_exporter::diag::Request + ?Sized>(
    request: &R,
    done: impl Fn(&[u8], u32) -> Result<bool, ParseError>,
) -> Vec<u8> {
    let mut socket = DiagSocket::open().expect("opening sock_diag socket");
    let mut all = Vec::new();
    socket
        .dump_datagrams(request, |d, seq| {
            all.extend_from_slice(d);
            done(d, seq)
        })
        .expect("dump");
    all
}

/// Whether an inet_diag datagram ends its dump.
fn inet_done(d: &[u8], seq: u32) -> Result<bool, ParseError> {
    Ok(parse_datagram(d, seq, |_| {})?.done)
}

fn req(family: Family, states: StateSet, meminfo: bool, tcp_info: bool) -> DumpRequest<'static> {
    DumpRequest {
        protocol: Protocol::Tcp,
        family: Some(family),
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
            std::fs::write(fixture(name), capture(&request, inet_done)).expect("writing fixture");
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
        every_cut(
            name,
            &bytes,
            |b| parse_datagram(b, seq, |_| {}),
            // A cut between messages is a datagram that simply ended early:
            // fine, but not done.
            |_, _, s| assert!(!s.done),
        );
    }
}

/// Parses every prefix of a capture with `parse`. A cut between messages
/// is a datagram that ended early: `at_boundary` gets the cut, the
/// messages before it and what `parse` made of it. A cut inside a message
/// must be reported as truncated or malformed, never a panic.
fn every_cut<T: std::fmt::Debug>(
    name: &str,
    bytes: &[u8],
    parse: impl Fn(&[u8]) -> Result<T, ParseError>,
    at_boundary: impl Fn(usize, usize, T),
) {
    let boundaries = message_boundaries(bytes);
    for cut in 0..bytes.len() {
        let result = parse(&bytes[..cut]);
        match boundaries.iter().position(|&b| b == cut) {
            Some(before) => {
                let parsed = result.unwrap_or_else(|e| panic!("{name} cut at boundary {cut}: {e}"));
                at_boundary(cut, before, parsed);
            }
            None => {
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

/// Where the attributes of an inet_diag reply start: after the netlink
/// header and inet_diag_msg.
const INET_ATTRS: usize = 16 + 72;

/// Offset and length of the first attribute of `kind` in a reply message
/// whose attributes start at `first`.
fn find_attr(msg: &[u8], first: usize, kind: u16) -> Option<(usize, usize)> {
    let mut at = first;
    while at + 4 <= msg.len() {
        let len = u16::from_ne_bytes([msg[at], msg[at + 1]]) as usize;
        if u16::from_ne_bytes([msg[at + 2], msg[at + 3]]) & 0x3fff == kind {
            return Some((at, len));
        }
        at += (len + 3) & !3;
    }
    None
}

#[test]
fn short_extensions_from_older_kernels_are_tolerated() {
    let (bytes, seq) = load("connections_v4.bin");
    let mut msgs = messages(&bytes);
    let (info, _) = find_attr(&msgs[0], INET_ATTRS, 2).expect("tcp_info attribute in capture");
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
    let (at, _) = find_attr(&msgs[0], INET_ATTRS, 7).expect("skmeminfo attribute in capture");
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
                protocol: Protocol::Tcp,
                family: Some(Family::Ipv4),
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

/// A dump of both families at once (the older TCPDIAG_GETSOCK request, one
/// walk of the kernel's tables) returns exactly what one dump per family
/// returns, with the same extensions and under the same port filter.
#[test]
fn one_walk_of_both_families_equals_one_per_family() {
    in_netns("one_walk_of_both_families_equals_one_per_family", || {
        let mut keep = Vec::new();
        let addrs: [SocketAddr; 3] = [
            ([127, 0, 0, 1], 4101).into(),
            "[::1]:4102".parse().unwrap(),
            "[::]:4103".parse().unwrap(),
        ];
        for addr in addrs {
            keep.push(listen(addr, 2, false, None));
        }
        // v4, v6 and v4-mapped connections, some of them left in the
        // queues (two of them over the limit, so the listeners drop).
        for target in [
            SocketAddr::from(([127, 0, 0, 1], 4101)),
            "[::1]:4102".parse().unwrap(),
            SocketAddr::from(([127, 0, 0, 1], 4103)),
        ] {
            for _ in 0..4 {
                keep.push(start_connect(target));
            }
        }
        std::thread::sleep(Duration::from_millis(300));
        let mut socket = DiagSocket::open().unwrap();
        let mut dump = |states: StateSet, family: Option<Family>, filter: Option<&PortFilter>| {
            let mut seen = Vec::new();
            let request = DumpRequest {
                protocol: Protocol::Tcp,
                family,
                states,
                meminfo: true,
                tcp_info: true,
                filter,
            };
            socket
                .dump(&request, |r| {
                    seen.push((
                        r.cookie,
                        r.local.family,
                        r.state,
                        r.local_port,
                        r.remote_port,
                        r.rqueue,
                        r.wqueue,
                        r.drops.is_some(),
                        r.last_data_sent_ms.is_some(),
                    ))
                })
                .unwrap_or_else(|e| panic!("{family:?} {filter:?}: {e}"));
            seen.sort_unstable();
            seen
        };
        let filter = PortFilter::new(Mode::Only, vec![4101, 4103])
            .unwrap()
            .unwrap();
        for states in [StateSet::Listeners, StateSet::Connections] {
            for f in [None, Some(&filter)] {
                let both = dump(states, None, f);
                let mut apart = dump(states, Some(Family::Ipv4), f);
                apart.extend(dump(states, Some(Family::Ipv6), f));
                apart.sort_unstable();
                assert_eq!(both, apart, "{states:?} {f:?}");
                let families: std::collections::BTreeSet<Family> =
                    both.iter().map(|r| r.1).collect();
                assert_eq!(families.len(), 2, "{states:?} {f:?}: both families seen");
                assert!(both.iter().all(|r| r.7), "meminfo on every reply");
            }
        }
        let listeners = dump(StateSet::Listeners, None, None);
        assert_eq!(listeners.len(), 3);
        drop(keep);
    });
}

// ---------------------------------------------------------------------------
// unix_diag: a capture of listening unix sockets, and the damage it can take.
//
// Regenerate with `cargo test --test parse -- --ignored regenerate_unix_fixture`;
// the scenario is `build_unix_scenario`.

use std::collections::BTreeSet;
use std::os::unix::ffi::OsStrExt;

use sockdiag_exporter::collect::unix::address_label;
use sockdiag_exporter::diag::netlink::{DatagramSummary, encode_dump};
use sockdiag_exporter::diag::unix::{self as unix_diag, MAX_NAME};
use sockdiag_exporter::diag::{Request, UnixKind, UnixListenersRequest, UnixRecord};
use socket2::{Domain, SockAddr, Socket, Type};

const UNIX_FIXTURE: &str = "unix_listeners.bin";
/// A fixed path, so the capture holds the same name whoever regenerates it.
const UNIX_FIXTURE_DIR: &str = "/tmp/sockdiag-unix-fixture";
const UNIX_FIXTURE_PATH: &str = "/tmp/sockdiag-unix-fixture/app.sock";
const UNIX_FIXTURE_SEQPACKET: &[u8] = b"\0sockdiag-fixture-seq";
const UNIX_FIXTURE_UTF8: &str = "\0sockdiag caf\u{e9}";

/// Size of `nlmsghdr` plus `unix_diag_msg`: where a reply's attributes start.
const UNIX_ATTRS: usize = 16 + 16;
const UNIX_DIAG_NAME: u16 = 0;
const UNIX_DIAG_RQLEN: u16 = 4;

/// A decoded record, owned.
#[derive(Debug, Clone, PartialEq)]
struct UnixOwned {
    kind: UnixKind,
    name: Vec<u8>,
    length: Option<u32>,
    limit: Option<u32>,
    inode: u32,
    cookie: u64,
    uid: Option<u32>,
}

impl From<&UnixRecord<'_>> for UnixOwned {
    fn from(r: &UnixRecord<'_>) -> Self {
        UnixOwned {
            kind: r.kind,
            name: r.name.to_vec(),
            length: r.queue_length,
            limit: r.queue_limit,
            inode: r.inode,
            cookie: r.cookie,
            uid: r.uid,
        }
    }
}

fn unix_parse(bytes: &[u8], seq: u32) -> Result<(Vec<UnixOwned>, DatagramSummary), ParseError> {
    let mut out = Vec::new();
    let summary = unix_diag::parse_datagram(bytes, seq, |r| out.push(UnixOwned::from(r)))?;
    Ok((out, summary))
}

fn unix_socket(kind: Type, name: &[u8]) -> (Socket, SockAddr) {
    let s = Socket::new(Domain::UNIX, kind, None).expect("unix socket");
    let addr = SockAddr::unix(std::ffi::OsStr::from_bytes(name)).expect("unix address");
    (s, addr)
}

fn unix_listen(kind: Type, name: &[u8], backlog: i32) -> Socket {
    let (s, addr) = unix_socket(kind, name);
    s.bind(&addr)
        .unwrap_or_else(|e| panic!("bind {:?}: {e}", String::from_utf8_lossy(name)));
    s.listen(backlog).expect("listen");
    s
}

/// A client left in the listener's queue (non-blocking: a full queue
/// fails instead of blocking the test).
fn unix_pending(kind: Type, name: &[u8]) -> Socket {
    let (s, addr) = unix_socket(kind, name);
    s.set_nonblocking(true).expect("non-blocking client");
    s.connect(&addr)
        .unwrap_or_else(|e| panic!("connect {:?}: {e}", String::from_utf8_lossy(name)));
    s
}

/// - a stream listener on `UNIX_FIXTURE_PATH`, backlog 5, 2 clients pending;
/// - a seqpacket listener on abstract `@sockdiag-fixture-seq`, backlog 1, 2
///   clients pending: full (backlog + 1);
/// - a stream listener on abstract `@sockdiag café`, backlog 32, one
///   connection accepted, none pending.
///
/// Not listening, so not in the dump: the clients, the accepted socket, a
/// bound datagram socket and a bound stream socket that never listened.
fn build_unix_scenario() -> Vec<Socket> {
    let _ = std::fs::remove_dir_all(UNIX_FIXTURE_DIR);
    std::fs::create_dir_all(UNIX_FIXTURE_DIR).expect("creating the fixture's socket dir");
    let path = UNIX_FIXTURE_PATH.as_bytes();
    let utf8 = UNIX_FIXTURE_UTF8.as_bytes();
    let mut keep = vec![unix_listen(Type::STREAM, path, 5)];
    keep.extend((0..2).map(|_| unix_pending(Type::STREAM, path)));
    keep.push(unix_listen(Type::SEQPACKET, UNIX_FIXTURE_SEQPACKET, 1));
    keep.extend((0..2).map(|_| unix_pending(Type::SEQPACKET, UNIX_FIXTURE_SEQPACKET)));
    let over = unix_socket(Type::SEQPACKET, UNIX_FIXTURE_SEQPACKET);
    over.0.set_nonblocking(true).unwrap();
    let refused = over
        .0
        .connect(&over.1)
        .expect_err("third client of backlog 1");
    assert_eq!(refused.raw_os_error(), Some(libc::EAGAIN), "{refused}");
    let l = unix_listen(Type::STREAM, utf8, 32);
    let c = unix_pending(Type::STREAM, utf8);
    let (a, _) = l.accept().expect("accept");
    keep.extend([l, c, a]);
    let (d, addr) = unix_socket(Type::DGRAM, b"\0sockdiag-fixture-dgram");
    d.bind(&addr).expect("bind datagram socket");
    let (b, addr) = unix_socket(Type::STREAM, b"\0sockdiag-fixture-bound");
    b.bind(&addr).expect("bind stream socket");
    keep.extend([d, b]);
    keep
}

#[test]
#[ignore = "rewrites tests/fixtures/unix_listeners.bin from the running kernel"]
fn regenerate_unix_fixture() {
    in_netns("regenerate_unix_fixture", || {
        let _sockets = build_unix_scenario();
        let all = capture(&UnixListenersRequest, |d, seq| {
            Ok(unix_diag::parse_datagram(d, seq, |_| {})?.done)
        });
        std::fs::write(fixture(UNIX_FIXTURE), all).expect("writing fixture");
        let _ = std::fs::remove_dir_all(UNIX_FIXTURE_DIR);
    });
}

/// The capture's records sorted by name.
fn unix_fixture_records() -> (Vec<u8>, u32, Vec<UnixOwned>) {
    let (bytes, seq) = load(UNIX_FIXTURE);
    let (mut rs, summary) = unix_parse(&bytes, seq).expect("the capture decodes");
    assert!(summary.done, "capture ends in NLMSG_DONE");
    rs.sort_by(|a, b| a.name.cmp(&b.name));
    (bytes, seq, rs)
}

#[test]
fn captured_unix_listeners_decode_to_the_scenario() {
    let (bytes, seq, rs) = unix_fixture_records();
    let (_, summary) = unix_parse(&bytes, seq).unwrap();
    assert_eq!(
        (summary.records, summary.skipped, summary.foreign),
        (3, 0, 0)
    );
    let mut path = UNIX_FIXTURE_PATH.as_bytes().to_vec();
    // The kernel keeps a bound path with its terminating NUL.
    path.push(0);
    let got: Vec<_> = rs
        .iter()
        .map(|r| (r.kind, r.name.as_slice(), r.length, r.limit))
        .collect();
    let want: [(UnixKind, &[u8], _, _); 3] = [
        (
            UnixKind::Stream,
            UNIX_FIXTURE_UTF8.as_bytes(),
            Some(0),
            Some(32),
        ),
        (
            UnixKind::Seqpacket,
            UNIX_FIXTURE_SEQPACKET,
            Some(2),
            Some(1),
        ),
        (UnixKind::Stream, &path, Some(2), Some(5)),
    ];
    assert_eq!(got, want);
    let labels: Vec<String> = rs.iter().map(|r| address_label(&r.name)).collect();
    assert_eq!(
        labels,
        [
            "@sockdiag caf\u{e9}",
            "@sockdiag-fixture-seq",
            UNIX_FIXTURE_PATH
        ]
    );
    let inodes: BTreeSet<u32> = rs.iter().map(|r| r.inode).collect();
    let cookies: BTreeSet<u64> = rs.iter().map(|r| r.cookie).collect();
    assert!(!inodes.contains(&0) && inodes.len() == 3, "{inodes:?}");
    assert!(!cookies.contains(&0) && cookies.len() == 3, "{cookies:?}");
    // The owner was root of the capturing test's user namespace. A capture
    // taken with the request's UDIAG_SHOW_UID bit wrong holds no uid at all
    // (see `unix_listener_dump_carries_the_owner_uid`).
    for r in &rs {
        assert!(matches!(r.uid, None | Some(0)), "{r:?}");
    }
}

#[test]
fn unix_truncation_at_every_byte_is_an_error_never_a_panic() {
    let (bytes, seq) = load(UNIX_FIXTURE);
    let replies = messages(&bytes).len() - 1;
    every_cut(
        UNIX_FIXTURE,
        &bytes,
        |b| unix_parse(b, seq),
        // A cut between messages is a datagram that ended early: the
        // records before it, and not done, so the dump goes on.
        |cut, before, (rs, s)| {
            assert!(!s.done, "cut at {cut}");
            assert_eq!(rs.len(), before.min(replies), "cut at {cut}");
        },
    );
}

/// Offset and length of the first attribute of `kind` in a unix_diag reply.
fn find_unix_attr(msg: &[u8], kind: u16) -> Option<(usize, usize)> {
    find_attr(msg, UNIX_ATTRS, kind)
}

/// `msg` with the attribute at `at` (of length `len`) replaced by `with`
/// (a whole attribute, or nothing), its netlink length fixed.
fn splice_attr(msg: &[u8], (at, len): (usize, usize), with: &[u8]) -> Vec<u8> {
    let end = (at + ((len + 3) & !3)).min(msg.len());
    let mut out = msg[..at].to_vec();
    out.extend_from_slice(with);
    out.extend_from_slice(&msg[end..]);
    set_len(&mut out);
    out
}

fn attr(kind: u16, value: &[u8]) -> Vec<u8> {
    let mut v = ((4 + value.len()) as u16).to_ne_bytes().to_vec();
    v.extend_from_slice(&kind.to_ne_bytes());
    v.extend_from_slice(value);
    v.resize((v.len() + 3) & !3, 0);
    v
}

/// The capture's messages, and the index of the reply for `name`.
fn unix_message_of(name: &[u8]) -> (Vec<Vec<u8>>, usize, u32) {
    let (bytes, seq) = load(UNIX_FIXTURE);
    let msgs = messages(&bytes);
    let i = msgs
        .iter()
        .position(|m| {
            find_unix_attr(m, UNIX_DIAG_NAME)
                .is_some_and(|(at, len)| m[at + 4..at + len].starts_with(name))
        })
        .unwrap_or_else(|| panic!("no reply for {name:?} in the capture"));
    (msgs, i, seq)
}

#[test]
fn unix_damaged_attribute_lengths_are_errors() {
    let (msgs, i, seq) = unix_message_of(UNIX_FIXTURE_PATH.as_bytes());
    let (at, _) = find_unix_attr(&msgs[i], UNIX_DIAG_RQLEN).expect("RQLEN in capture");
    // Below the attribute header.
    let mut bad = msgs.clone();
    bad[i][at..at + 2].copy_from_slice(&3u16.to_ne_bytes());
    assert!(matches!(
        unix_parse(&bad.concat(), seq),
        Err(ParseError::Malformed { .. })
    ));
    // Beyond the message.
    let mut bad = msgs.clone();
    bad[i][at..at + 2].copy_from_slice(&2000u16.to_ne_bytes());
    assert!(matches!(
        unix_parse(&bad.concat(), seq),
        Err(ParseError::Truncated { .. })
    ));
    // A reply too short for unix_diag_msg.
    let mut bad = msgs.clone();
    bad[i].truncate(16 + 12);
    set_len(&mut bad[i]);
    assert!(matches!(
        unix_parse(&bad.concat(), seq),
        Err(ParseError::Truncated {
            what: "unix_diag_msg",
            ..
        })
    ));
}

#[test]
fn unix_unknown_attributes_are_skipped() {
    let (bytes, seq, expected) = unix_fixture_records();
    let mut msgs = messages(&bytes);
    let last = msgs.len() - 1;
    for m in &mut msgs[..last] {
        // A future kernel's attribute, and one with the nested flag set.
        m.extend_from_slice(&attr(99, &[1, 2, 3, 4, 5]));
        m.extend_from_slice(&attr(0x8000 | 42, &[0; 8]));
        set_len(m);
    }
    let (mut got, s) = unix_parse(&msgs.concat(), seq).unwrap();
    got.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(got, expected);
    assert!(s.done);
}

/// Without UNIX_DIAG_RQLEN (or with one too short) the record comes with
/// no queue figures, which the collector skips rather than report zeros.
#[test]
fn a_unix_reply_without_rqlen_has_no_queue_figures() {
    let (_, _, expected) = unix_fixture_records();
    let (msgs, i, seq) = unix_message_of(UNIX_FIXTURE_SEQPACKET);
    let rqlen = find_unix_attr(&msgs[i], UNIX_DIAG_RQLEN).expect("RQLEN in capture");
    for with in [Vec::new(), attr(UNIX_DIAG_RQLEN, &7u32.to_ne_bytes())] {
        let mut damaged = msgs.clone();
        damaged[i] = splice_attr(&msgs[i], rqlen, &with);
        let (mut got, s) = unix_parse(&damaged.concat(), seq).unwrap();
        assert_eq!((s.records, s.done), (3, true));
        got.sort_by(|a, b| a.name.cmp(&b.name));
        let mut want = expected.clone();
        want[1].length = None;
        want[1].limit = None;
        assert_eq!(want[1].name, UNIX_FIXTURE_SEQPACKET);
        assert_eq!(got, want, "RQLEN replaced by {with:?}");
    }
}

#[test]
fn unix_names_longer_than_sun_path_are_malformed() {
    let (msgs, i, seq) = unix_message_of(UNIX_FIXTURE_PATH.as_bytes());
    let name = find_unix_attr(&msgs[i], UNIX_DIAG_NAME).expect("NAME in capture");
    // The longest name sun_path holds: a path of 108 bytes without NUL.
    let mut damaged = msgs.clone();
    damaged[i] = splice_attr(&msgs[i], name, &attr(UNIX_DIAG_NAME, &[b'/'; MAX_NAME]));
    let (rs, _) = unix_parse(&damaged.concat(), seq).expect("108 bytes fit sun_path");
    assert!(rs.iter().any(|r| r.name == [b'/'; MAX_NAME]));
    for len in [MAX_NAME + 1, MAX_NAME + 3, 1000] {
        let mut damaged = msgs.clone();
        damaged[i] = splice_attr(&msgs[i], name, &attr(UNIX_DIAG_NAME, &vec![b'/'; len]));
        let e = unix_parse(&damaged.concat(), seq).expect_err("name longer than sun_path");
        assert!(matches!(e, ParseError::Malformed { .. }), "{len}: {e}");
    }
}

/// Regression: `bind()` accepts a path that fills all 108 bytes of
/// `sun_path` without a NUL; the kernel appends one when binding and
/// reports the name as 109 bytes. Taking that for damage failed every unix
/// dump of the namespace, so any local user could blind the unix collector
/// there (and make `snapshot` exit 1) with one socket.
#[test]
fn a_path_that_fills_sun_path_decodes() {
    use std::os::fd::FromRawFd;
    in_netns("a_path_that_fills_sun_path_decodes", || {
        let dir = format!("/tmp/sockdiag-sun-path-{}", std::process::id());
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating the socket dir");
        let mut path = format!("{dir}/").into_bytes();
        path.resize(MAX_NAME, b'L');
        // socket2 and std refuse a path without room for its NUL; the
        // kernel does not.
        let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) };
        assert!(fd >= 0, "unix socket: {}", std::io::Error::last_os_error());
        let listener = unsafe { Socket::from_raw_fd(fd) };
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (to, from) in addr.sun_path.iter_mut().zip(&path) {
            *to = *from as libc::c_char;
        }
        let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
        let rc = unsafe { libc::bind(fd, (&raw const addr).cast(), len) };
        assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
        listener.listen(4).expect("listen");

        let mut socket = DiagSocket::open().expect("sock_diag socket");
        let mut names = Vec::new();
        let dumped = socket.dump_unix(&UnixListenersRequest, |r| names.push(r.name.to_vec()));
        let _ = std::fs::remove_dir_all(&dir);
        dumped.expect("a unix dump beside a listener whose path fills sun_path");
        let mut reported = path.clone();
        reported.push(0);
        assert_eq!(names, vec![reported], "the path and the kernel's NUL");
        assert_eq!(
            address_label(&names[0]).as_bytes(),
            &path[..],
            "labelled as the path"
        );
        drop(listener);
    });
}

#[test]
fn unix_replies_of_other_families_kinds_and_states_are_skipped() {
    let (bytes, seq, expected) = unix_fixture_records();
    let msgs = messages(&bytes);
    let at = |m: &[u8]| find_unix_attr(m, UNIX_DIAG_NAME).map(|(a, l)| m[a + 4..a + l].to_vec());
    for (what, offset, value) in [
        ("AF_INET family", 16, libc::AF_INET as u8),
        ("SOCK_DGRAM", 17, libc::SOCK_DGRAM as u8),
        ("SOCK_RAW", 17, libc::SOCK_RAW as u8),
        ("ESTABLISHED state", 18, 1),
        ("CLOSE state", 18, 7),
    ] {
        for i in 0..msgs.len() - 1 {
            let mut damaged = msgs.clone();
            damaged[i][offset] = value;
            let skipped = at(&msgs[i]).expect("a name");
            let (got, s) = unix_parse(&damaged.concat(), seq).unwrap();
            assert_eq!((s.records, s.skipped, s.done), (2, 1, true), "{what}");
            let want: Vec<UnixOwned> = expected
                .iter()
                .filter(|r| r.name != skipped)
                .cloned()
                .collect();
            let mut got = got;
            got.sort_by(|a, b| a.name.cmp(&b.name));
            assert_eq!(got, want, "{what} on reply {i}");
        }
    }
}

/// `UnixListenersRequest` with a chosen `udiag_show`, to tell what the
/// kernel sends when asked from what the exporter asks.
struct UnixShow(u32);

impl std::fmt::Display for UnixShow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unix dump of listeners with udiag_show {:#x}", self.0)
    }
}

impl Request for UnixShow {
    fn encode(&self, seq: u32, out: &mut Vec<u8>) {
        encode_dump(out, seq, |b| {
            b.extend_from_slice(&[libc::AF_UNIX as u8, 0, 0, 0]);
            b.extend_from_slice(&(1u32 << 10).to_ne_bytes()); // TCP_LISTEN
            b.extend_from_slice(&0u32.to_ne_bytes()); // any inode
            b.extend_from_slice(&self.0.to_ne_bytes());
            b.extend_from_slice(&[0xff; 8]); // any cookie
        });
    }
}

/// `udiag_show` of an encoded unix_diag request.
fn udiag_show(request: &dyn Request) -> u32 {
    let mut out = Vec::new();
    request.encode(1, &mut out);
    u32::from_ne_bytes(out[16 + 12..16 + 16].try_into().unwrap())
}

/// The exporter asks for the owner's uid (UDIAG_SHOW_UID, 0x40 in
/// linux/unix_diag.h; the attribute it brings back is UNIX_DIAG_UID, 7) and
/// gets it: root of the test's user namespace.
#[test]
fn unix_listener_dump_carries_the_owner_uid() {
    in_netns("unix_listener_dump_carries_the_owner_uid", || {
        let _l = unix_listen(Type::STREAM, b"\0sockdiag-uid", 3);
        let mut socket = DiagSocket::open().expect("sock_diag socket");
        let mut uids = |request: &dyn Request| {
            let mut uids = Vec::new();
            socket
                .dump_datagrams(request, |d, seq| {
                    Ok(unix_diag::parse_datagram(d, seq, |r| uids.push(r.uid))?.done)
                })
                .unwrap_or_else(|e| panic!("{request}: {e}"));
            uids
        };
        // NAME | RQLEN | UID, as the kernel numbers them: the kernel does
        // send the uid when asked so.
        const UDIAG_SHOW_NAME_RQLEN_UID: u32 = 0x01 | 0x10 | 0x40;
        assert_eq!(uids(&UnixShow(UDIAG_SHOW_NAME_RQLEN_UID)), [Some(0)]);
        let show = udiag_show(&UnixListenersRequest);
        assert_eq!(
            uids(&UnixListenersRequest),
            [Some(0)],
            "UnixListenersRequest asks with udiag_show {show:#x}, the kernel's \
             NAME|RQLEN|UID is {UDIAG_SHOW_NAME_RQLEN_UID:#x}: its UID bit is wrong, so \
             no unix listener ever gets a uid"
        );
    });
}

// ---------------------------------------------------------------------------
// UDP: captures of the two dumps the udp collector makes (IPv4 and IPv6, all
// states, with SKMEMINFO), and the damage they can take.
//
// Regenerate with `cargo test --test parse -- --ignored regenerate_udp_fixtures`;
// the scenario is `build_udp_scenario`.

const UDP_FIXTURE_V4: &str = "udp_sockets.bin";
const UDP_FIXTURE_V6: &str = "udp_sockets_v6.bin";
/// The tiny receiver: SO_RCVBUF 2048 (the kernel doubles it), flooded.
const UDP_TINY_PORT: u16 = 5300;
const UDP_TINY_RCVBUF: usize = 2048;
const UDP_FLOOD: usize = 20;
/// The IPv6 receiver, with a few datagrams queued and no drop.
const UDP_V6_PORT: u16 = 5301;
const UDP_V6_QUEUED: usize = 3;
const UDP_PAYLOAD: usize = 100;
const INET_DIAG_SKMEMINFO: u16 = 7;

/// - receiver 127.0.0.1:5300 with SO_RCVBUF 2048 (4096 for the kernel),
///   sent 20 datagrams of 100 bytes by an unconnected client: it holds a
///   few and dropped the rest;
/// - that client: unconnected after `sendto`, on an ephemeral port;
/// - a client connected to 127.0.0.1:5300 that sends nothing;
/// - receiver [::1]:5301, default buffer, 3 datagrams of 100 bytes queued
///   by a client connected to it (the IPv6 dump's two sockets).
fn build_udp_scenario() -> Vec<Socket> {
    let tiny_addr: SocketAddr = ([127, 0, 0, 1], UDP_TINY_PORT).into();
    let tiny = Socket::new(Domain::IPV4, Type::DGRAM, None).expect("udp socket");
    tiny.set_recv_buffer_size(UDP_TINY_RCVBUF)
        .expect("SO_RCVBUF");
    tiny.bind(&tiny_addr.into()).expect("bind 127.0.0.1:5300");
    let client = Socket::new(Domain::IPV4, Type::DGRAM, None).expect("udp client");
    for _ in 0..UDP_FLOOD {
        client
            .send_to(&[b'u'; UDP_PAYLOAD], &tiny_addr.into())
            .expect("sendto the tiny receiver");
    }
    let connected = Socket::new(Domain::IPV4, Type::DGRAM, None).expect("udp client");
    connected.connect(&tiny_addr.into()).expect("connect");
    let v6_addr: SocketAddr = format!("[::1]:{UDP_V6_PORT}").parse().unwrap();
    let v6 = Socket::new(Domain::IPV6, Type::DGRAM, None).expect("udp6 socket");
    v6.bind(&v6_addr.into()).expect("bind [::1]:5301");
    let v6_client = Socket::new(Domain::IPV6, Type::DGRAM, None).expect("udp6 client");
    v6_client
        .connect(&v6_addr.into())
        .expect("connect [::1]:5301");
    for _ in 0..UDP_V6_QUEUED {
        v6_client.send(&[b'6'; UDP_PAYLOAD]).expect("send");
    }
    std::thread::sleep(Duration::from_millis(100));
    vec![tiny, client, connected, v6, v6_client]
}

#[test]
#[ignore = "rewrites tests/fixtures/udp_sockets*.bin from the running kernel"]
fn regenerate_udp_fixtures() {
    in_netns("regenerate_udp_fixtures", || {
        let _sockets = build_udp_scenario();
        for (name, family) in [
            (UDP_FIXTURE_V4, Family::Ipv4),
            (UDP_FIXTURE_V6, Family::Ipv6),
        ] {
            let bytes = capture(&udp_dump_request(family), inet_done);
            // Only a capture that holds the scenario is written.
            let rs = records(&bytes, seq_of(&bytes)).expect("the capture decodes");
            for r in &rs {
                println!(
                    "{name}: {:?} {}:{} -> {}:{} rqueue {} rcvbuf {:?} drops {:?}",
                    r.state,
                    r.local.ip(),
                    r.local_port,
                    r.remote.ip(),
                    r.remote_port,
                    r.rqueue,
                    r.rcvbuf,
                    r.drops
                );
            }
            assert_eq!(rs.len(), if family == Family::Ipv4 { 3 } else { 2 });
            std::fs::write(fixture(name), &bytes).expect("writing fixture");
        }
    });
}

/// A capture's records, sorted by (state, local port).
fn udp_fixture(name: &str) -> (Vec<u8>, u32, Vec<SockRecord>) {
    let (bytes, seq) = load(name);
    let mut rs = records(&bytes, seq).expect("the capture decodes");
    rs.sort_by_key(|r| (r.state, r.local_port));
    (bytes, seq, rs)
}

fn ephemeral(port: u16) -> bool {
    (32768..=60999).contains(&port)
}

#[test]
fn captured_udp_sockets_decode_to_the_scenario() {
    let (bytes, seq, rs) = udp_fixture(UDP_FIXTURE_V4);
    let s = parse_datagram(&bytes, seq, |_| {}).unwrap();
    assert_eq!((s.records, s.skipped, s.foreign, s.done), (3, 0, 0, true));
    // Established sorts before Close.
    let [connected, tiny, client] = rs[..] else {
        panic!("three IPv4 UDP sockets: {rs:#?}");
    };

    // The flooded receiver: unconnected, Recv-Q in the kernel's accounting
    // (832 bytes per 100-byte datagram here), its buffer twice SO_RCVBUF,
    // and the datagrams that did not fit counted as drops.
    assert_eq!(tiny.state, TcpState::Close);
    assert_eq!(tiny.local.ip().to_string(), "127.0.0.1");
    assert_eq!((tiny.local_port, tiny.remote_port), (UDP_TINY_PORT, 0));
    assert_eq!(tiny.rcvbuf, Some(2 * UDP_TINY_RCVBUF as u32));
    assert_eq!((tiny.rqueue, tiny.drops), (4 * 832, Some(16)));
    let queued = tiny.rqueue / 832;
    assert_eq!(
        queued as usize + tiny.drops.unwrap() as usize,
        UDP_FLOOD,
        "every datagram sent is queued or dropped"
    );
    assert_eq!(tiny.last_data_sent_ms, None, "tcp_info was not asked for");

    // The client that sent them: unconnected after sendto, ephemeral port.
    assert_eq!(client.state, TcpState::Close);
    assert_eq!(client.remote_port, 0);
    assert!(ephemeral(client.local_port), "{client:?}");
    assert_eq!((client.rqueue, client.drops), (0, Some(0)));
    assert_eq!(client.rcvbuf, Some(212_992), "net.core.rmem_default");

    // The connected client: Established, its peer the receiver.
    assert_eq!(connected.state, TcpState::Established);
    assert!(ephemeral(connected.local_port), "{connected:?}");
    assert_eq!(connected.remote.ip().to_string(), "127.0.0.1");
    assert_eq!(connected.remote_port, UDP_TINY_PORT);
    assert_eq!((connected.rqueue, connected.drops), (0, Some(0)));

    let cookies: BTreeSet<u64> = rs.iter().map(|r| r.cookie).collect();
    let inodes: BTreeSet<u32> = rs.iter().map(|r| r.inode).collect();
    assert!(!cookies.contains(&0) && cookies.len() == 3, "{cookies:?}");
    assert!(!inodes.contains(&0) && inodes.len() == 3, "{inodes:?}");

    let (_, _, rs) = udp_fixture(UDP_FIXTURE_V6);
    let [v6_client, v6] = rs[..] else {
        panic!("two IPv6 UDP sockets: {rs:#?}");
    };
    assert_eq!(v6.state, TcpState::Close);
    assert_eq!(v6.local.family, Family::Ipv6);
    assert_eq!(v6.local.ip().to_string(), "::1");
    assert_eq!((v6.local_port, v6.remote_port), (UDP_V6_PORT, 0));
    assert_eq!(
        (v6.rqueue, v6.rcvbuf, v6.drops),
        (UDP_V6_QUEUED as u32 * 832, Some(212_992), Some(0))
    );
    assert_eq!(v6_client.state, TcpState::Established);
    assert_eq!(v6_client.remote.ip().to_string(), "::1");
    assert_eq!(v6_client.remote_port, UDP_V6_PORT);
    assert!(ephemeral(v6_client.local_port), "{v6_client:?}");
}

/// A cut between messages is a datagram that ended early: the records
/// before it, not done, so the dump reads on; a cut inside a message is an
/// error. Never a panic, never fewer records passed off as the whole dump.
#[test]
fn udp_truncation_at_every_byte_is_an_error_never_a_panic() {
    for name in [UDP_FIXTURE_V4, UDP_FIXTURE_V6] {
        let (bytes, seq) = load(name);
        let replies = messages(&bytes).len() - 1;
        every_cut(
            name,
            &bytes,
            |b| {
                let mut n = 0;
                parse_datagram(b, seq, |_| n += 1).map(|s| (n, s))
            },
            |cut, before, (n, s)| {
                assert!(!s.done, "{name} cut at {cut}");
                assert_eq!(
                    (n, s.records),
                    (before.min(replies), before.min(replies)),
                    "{name} cut at {cut}"
                );
            },
        );
    }
}

/// The tiny receiver's reply with its SKMEMINFO replaced by `with` (a whole
/// attribute, or nothing), decoded with the rest of the capture.
fn udp_with_skmeminfo(with: &[u8]) -> (Vec<SockRecord>, Vec<SockRecord>) {
    let (bytes, seq, expected) = udp_fixture(UDP_FIXTURE_V4);
    let mut msgs = messages(&bytes);
    let i = msgs
        .iter()
        .position(|m| m.len() > INET_ATTRS && u16::from_be_bytes([m[20], m[21]]) == UDP_TINY_PORT)
        .expect("the tiny receiver's reply");
    let skmem = find_attr(&msgs[i], INET_ATTRS, INET_DIAG_SKMEMINFO).expect("SKMEMINFO in capture");
    msgs[i] = splice_attr(&msgs[i], skmem, with);
    let mut got = Vec::new();
    let s = parse_datagram(&msgs.concat(), seq, |r| got.push(*r))
        .unwrap_or_else(|e| panic!("SKMEMINFO replaced by {with:?}: {e}"));
    assert_eq!((s.records, s.done), (3, true));
    got.sort_by_key(|r| (r.state, r.local_port));
    (got, expected)
}

/// The capture's records with the tiny receiver's buffer and drops as given.
fn with_tiny_meminfo(
    mut records: Vec<SockRecord>,
    rcvbuf: Option<u32>,
    drops: Option<u32>,
) -> Vec<SockRecord> {
    let tiny = records
        .iter_mut()
        .find(|r| r.local_port == UDP_TINY_PORT && r.state == TcpState::Close)
        .expect("the tiny receiver's record");
    tiny.rcvbuf = rcvbuf;
    tiny.drops = drops;
    records
}

/// Without INET_DIAG_SKMEMINFO (a kernel that did not send it) the record
/// has no buffer and no drop figure rather than zeros; the rest stands.
#[test]
fn a_udp_reply_without_skmeminfo_has_no_buffer_or_drops() {
    let (got, expected) = udp_with_skmeminfo(&[]);
    assert_eq!(got, with_tiny_meminfo(expected, None, None));
}

/// A SKMEMINFO too short to hold SK_MEMINFO_DROPS (index 8; kernels from
/// before it existed send 8 fields) is ignored whole: neither figure is
/// taken from it. A longer one (a future kernel's extra fields) is read.
#[test]
fn a_short_udp_skmeminfo_is_ignored_a_long_one_read() {
    for fields in [0usize, 1, 2, 8] {
        let value: Vec<u8> = (0..fields as u32)
            .flat_map(|v| (v + 1).to_ne_bytes())
            .collect();
        let (got, expected) = udp_with_skmeminfo(&attr(INET_DIAG_SKMEMINFO, &value));
        assert_eq!(
            got,
            with_tiny_meminfo(expected, None, None),
            "SKMEMINFO of {fields} fields"
        );
    }
    // Ten fields, numbered 1..=10: rcvbuf is field 1, drops field 8.
    let value: Vec<u8> = (0..10u32).flat_map(|v| (v + 1).to_ne_bytes()).collect();
    let (got, expected) = udp_with_skmeminfo(&attr(INET_DIAG_SKMEMINFO, &value));
    assert_eq!(
        got,
        with_tiny_meminfo(expected, Some(2), Some(9)),
        "SKMEMINFO of 10 fields"
    );
}

/// What the udp collector makes of such a record: the receiver keeps its
/// queue series, and has no buffer and no drop series rather than zeros
/// (a zero buffer would read as "full" to a fill-ratio alert). A kernel
/// always sends SKMEMINFO when asked, and the daemon always asks, so this
/// cannot be shown through a running daemon; the receiver is built here
/// the way the collector builds it from the record (`rcvbuf`, when not
/// sent, is 0 in the model), and rendered by the collector itself.
#[test]
fn a_udp_receiver_without_skmeminfo_gets_no_buffer_or_drop_series() {
    use std::collections::BTreeMap as Map;
    use std::sync::Arc;
    use std::time::SystemTime;

    use sockdiag_exporter::aggregate::ListenKey;
    use sockdiag_exporter::collect::{Common, NamespaceView, udp};
    use sockdiag_exporter::family::Families;
    use sockdiag_exporter::model::{Endpoint, NetnsView, Part, UdpAddress, UdpReceiver, UdpSample};

    let (got, _) = udp_with_skmeminfo(&[]);
    let tiny = got
        .iter()
        .find(|r| r.local_port == UDP_TINY_PORT && r.state == TcpState::Close)
        .unwrap();
    assert_eq!((tiny.rcvbuf, tiny.drops), (None, None));
    let endpoint = Endpoint::Inet(ListenKey {
        addr: tiny.local,
        port: tiny.local_port,
    });
    let sample = UdpSample {
        taken_at: SystemTime::now(),
        receivers: vec![UdpReceiver {
            endpoint: endpoint.clone(),
            member: None,
            cookie: tiny.cookie,
            inode: tiny.inode,
            uid: Some(tiny.uid),
            queue_bytes: tiny.rqueue,
            buffer_bytes: tiny.rcvbuf.unwrap_or(0),
            peak_bytes: Some(tiny.rqueue),
            drops: tiny.drops.map(u64::from),
        }],
        addresses: vec![UdpAddress {
            endpoint,
            unconnected: 1,
            connected: 0,
        }],
        other_sockets: 0,
        other_queue_bytes: 0,
        unexported: vec![("cap", 0)],
    };
    let mut parts: Map<&'static str, Arc<dyn Part>> = Map::new();
    parts.insert(udp::REGISTRATION.name, Arc::new(sample));
    let view = NetnsView {
        parts,
        status: Map::new(),
    };
    let matches = clap::Command::new("t")
        .args((udp::REGISTRATION.args)())
        .get_matches_from(["t"]);
    let common = Common {
        procfs: "/proc".into(),
        fast_interval: Duration::from_millis(200),
        full_interval: Duration::from_secs(15),
        peak_window: Duration::from_secs(60),
        owner_retry: Duration::from_secs(10),
        one_shot: false,
    };
    let collector = (udp::REGISTRATION.build)(&matches, &common);
    let mut families = Families::new(udp::REGISTRATION.families.iter().copied());
    collector.render(
        &NamespaceView {
            name: "host",
            view: &view,
        },
        &mut families,
    );
    let series: Map<String, usize> = families
        .into_inner()
        .iter()
        .map(|f| (f.name().to_string(), f.get_metric().len()))
        .filter(|(_, n)| *n > 0)
        .collect();
    let want: Map<String, usize> = [
        ("sockdiag_udp_receive_queue_bytes", 1),
        ("sockdiag_udp_receive_queue_peak_bytes", 1),
        ("sockdiag_udp_sockets", 1),
        ("sockdiag_udp_other_sockets", 1),
        ("sockdiag_udp_other_receive_queue_bytes", 1),
        ("sockdiag_udp_receivers_unexported", 1),
    ]
    .into_iter()
    .map(|(n, c)| (n.to_string(), c))
    .collect();
    assert_eq!(series, want, "no buffer, no drops, no fill");
}
