//! The hot path's promise, counted rather than timed: one connection sample
//! allocates the same number of times whether the namespace holds a hundred
//! sockets or a few thousand. Allocation counts are exact and unaffected by
//! machine load, so this cannot flake the way a timing test would.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sockdiag_exporter::collect::connections::{ConnectionWork, Settings, sample_connections};
use sockdiag_exporter::collect::listening::dump_listeners;
use sockdiag_exporter::diag::DiagSocket;

use common::*;

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Raises the soft open-file limit to the hard one (shells often start at
/// 1024); fails clearly if even the hard limit is below what the test holds.
fn raise_fd_limit(needed: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    assert!(
        lim.rlim_max >= needed,
        "RLIMIT_NOFILE hard limit {} is below the {needed} descriptors this test holds",
        lim.rlim_max
    );
    lim.rlim_cur = lim.rlim_max;
    assert_eq!(
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) },
        0,
        "raising RLIMIT_NOFILE"
    );
}

/// Opens `n` connections to `addr` and accepts them all, so nothing waits
/// in a queue and every socket is an ordinary established one.
fn connect_many(
    listener: &socket2::Socket,
    addr: SocketAddr,
    n: usize,
    keep: &mut Vec<socket2::Socket>,
) {
    for _ in 0..n {
        let c = start_connect(addr);
        assert!(
            wait_connected(&c, Duration::from_secs(2)),
            "loopback connect"
        );
        keep.push(listener.accept().expect("accept").0);
        keep.push(c);
    }
}

/// Runs `f` once to warm up (reused maps and buffers reach their size),
/// then again: the allocations of that second run, and what it returned.
fn warm_allocations<T>(mut f: impl FnMut() -> T) -> (u64, T) {
    f();
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    let out = f();
    (ALLOCATIONS.load(Ordering::Relaxed) - before, out)
}

/// One connection sample; the sockets it saw.
fn one_sample(socket: &mut DiagSocket, work: &mut ConnectionWork) -> u64 {
    let settings = Settings {
        max_client_ports: 256,
        filter: None,
        queue_ages: true,
        cpu_budget: 0.02,
    };
    sample_connections(socket, work, &settings, None, true)
        .expect("connection sample")
        .sockets
}

#[test]
fn sample_allocations_do_not_grow_with_sockets() {
    in_netns("sample_allocations_do_not_grow_with_sockets", || {
        raise_fd_limit(2400);
        let addr: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        let listener = listen(addr, 128, false, None);
        let mut keep = Vec::new();
        connect_many(&listener, addr, 50, &mut keep);

        let mut socket = DiagSocket::open().expect("sock_diag socket");
        let mut work = ConnectionWork::default();
        let (small, small_sockets) = warm_allocations(|| one_sample(&mut socket, &mut work));

        connect_many(&listener, addr, 1050, &mut keep);
        let (large, large_sockets) = warm_allocations(|| one_sample(&mut socket, &mut work));

        println!("{small} allocations for {small_sockets} sockets, {large} for {large_sockets}");
        assert_eq!((small_sockets, large_sockets), (100, 2200));
        assert_eq!(
            small, large,
            "allocations must not depend on the number of sockets"
        );

        // The listener dump likewise.
        let mut records = Vec::new();
        let (allocations, _) =
            warm_allocations(|| dump_listeners(&mut socket, true, &mut records).unwrap());
        assert_eq!(allocations, 0, "a warm listener dump allocates nothing");
        drop((keep, listener));
    });
}

/// A warm unix listener dump hands every record over from the receive
/// buffer: no allocation with 10 listeners, none with 500 (which take more
/// than one datagram).
#[test]
fn a_warm_unix_listener_dump_allocates_nothing() {
    use sockdiag_exporter::diag::UnixListenersRequest;
    use socket2::{Domain, SockAddr, Socket, Type};

    in_netns("a_warm_unix_listener_dump_allocates_nothing", || {
        raise_fd_limit(700);
        let mut keep: Vec<Socket> = Vec::new();
        let mut listeners = 0;
        let mut socket = DiagSocket::open().expect("sock_diag socket");
        for total in [10u64, 500] {
            while listeners < total {
                // Stream and seqpacket, and a pending client on every tenth.
                let kind = if listeners % 3 == 0 {
                    Type::SEQPACKET
                } else {
                    Type::STREAM
                };
                let name = format!("\0sockdiag-alloc-{listeners}");
                let addr = SockAddr::unix(name).expect("abstract address");
                let l = Socket::new(Domain::UNIX, kind, None).expect("unix socket");
                l.bind(&addr).expect("bind");
                l.listen(4).expect("listen");
                keep.push(l);
                if listeners % 10 == 0 {
                    let c = Socket::new(Domain::UNIX, kind, None).expect("unix client");
                    c.set_nonblocking(true).expect("non-blocking client");
                    c.connect(&addr).expect("connect");
                    keep.push(c);
                }
                listeners += 1;
            }
            let queued = total.div_ceil(10);
            let dump = |socket: &mut DiagSocket| {
                let (mut records, mut length) = (0u64, 0u64);
                let stats = socket
                    .dump_unix(&UnixListenersRequest, |r| {
                        records += 1;
                        length += u64::from(r.queue_length.unwrap_or(0));
                    })
                    .expect("unix dump");
                (records, length, stats.datagrams)
            };
            let (allocations, (records, length, datagrams)) =
                warm_allocations(|| dump(&mut socket));
            println!(
                "{allocations} allocations for {records} unix listeners in {datagrams} datagrams"
            );
            assert_eq!((records, length), (total, queued));
            assert_eq!(allocations, 0, "a warm unix dump of {total} listeners");
        }
        drop(keep);
    });
}

/// A warm UDP dump, as the udp collector makes it (each family, every
/// state, SKMEMINFO), hands every record over from the receive buffer: no
/// allocation with 10 UDP sockets, none with 1,000 (several datagrams).
#[test]
fn a_warm_udp_dump_allocates_nothing() {
    use sockdiag_exporter::diag::Family;
    use socket2::{Domain, Socket, Type};

    in_netns("a_warm_udp_dump_allocates_nothing", || {
        raise_fd_limit(1200);
        let mut keep: Vec<Socket> = Vec::new();
        let mut receivers: Vec<SocketAddr> = Vec::new();
        let mut socket = DiagSocket::open().expect("sock_diag socket");
        let mut queued = 0u64;
        for total in [10usize, 1000] {
            while keep.len() < total {
                let i = keep.len();
                // Receivers on both families, clients unconnected after
                // sendto (their datagram queued on a receiver), connected
                // clients.
                let s = match i % 4 {
                    0 | 3 => {
                        let addr: SocketAddr = if i % 4 == 0 {
                            ([127, 0, 0, 1], 10000 + i as u16).into()
                        } else {
                            format!("[::1]:{}", 10000 + i).parse().unwrap()
                        };
                        let s = Socket::new(Domain::for_address(addr), Type::DGRAM, None)
                            .expect("udp socket");
                        s.bind(&addr.into()).expect("bind a receiver");
                        receivers.push(addr);
                        s
                    }
                    1 => {
                        let to = receivers[i % receivers.len()];
                        let s = Socket::new(Domain::for_address(to), Type::DGRAM, None)
                            .expect("udp client");
                        s.send_to(b"datagram", &to.into()).expect("sendto");
                        queued += 1;
                        s
                    }
                    _ => {
                        let to = receivers[(i / 2) % receivers.len()];
                        let s = Socket::new(Domain::for_address(to), Type::DGRAM, None)
                            .expect("udp client");
                        s.connect(&to.into()).expect("connect");
                        s
                    }
                };
                keep.push(s);
            }
            std::thread::sleep(Duration::from_millis(50));
            let dump = |socket: &mut DiagSocket| {
                let (mut records, mut with_data, mut datagrams) = (0usize, 0u64, 0usize);
                for family in [Family::Ipv4, Family::Ipv6] {
                    let stats = socket
                        .dump(&udp_dump_request(family), |r| {
                            records += 1;
                            if r.rqueue > 0 && r.rcvbuf.is_some() && r.drops.is_some() {
                                with_data += 1;
                            }
                        })
                        .expect("udp dump");
                    datagrams += stats.datagrams;
                }
                (records, with_data, datagrams)
            };
            let (allocations, (records, with_data, datagrams)) =
                warm_allocations(|| dump(&mut socket));
            println!(
                "{allocations} allocations for {records} UDP sockets in {datagrams} datagrams"
            );
            assert_eq!(records, total);
            assert!(
                with_data > 0 && with_data <= queued,
                "receivers with queued datagrams: {with_data} (sent {queued})"
            );
            assert_eq!(allocations, 0, "a warm UDP dump of {total} sockets");
        }
        drop(keep);
    });
}

/// Warm exact lookups of waiting connections allocate nothing, whether
/// they ask about 10 sockets in one batch or 1,000 in eight, retries after
/// an overflowing batch included: the caller's identities and answers are
/// its own, the requests and receive slots are reused.
#[test]
fn warm_exact_lookups_allocate_nothing() {
    use sockdiag_exporter::aggregate::in_accept_queue;
    use sockdiag_exporter::diag::{Answer, DumpRequest, Lookup, SocketIdentity};

    in_netns("warm_exact_lookups_allocate_nothing", || {
        raise_fd_limit(1200);
        let addr: SocketAddr = "127.0.0.1:7030".parse().unwrap();
        let _listener = listen(addr, 2048, false, None);
        let mut keep = Vec::new();
        let mut socket = DiagSocket::open().expect("sock_diag socket");
        let walk = DumpRequest::tcp_connections(false, None);
        let mut ids: Vec<SocketIdentity> = Vec::new();
        for (total, batch) in [(10usize, 128usize), (1000, 128), (1000, 1000)] {
            while keep.len() < total {
                let c = start_connect(addr);
                assert!(wait_connected(&c, Duration::from_secs(2)));
                keep.push(c);
            }
            ids.clear();
            socket
                .dump(&walk, |r| {
                    if in_accept_queue(r) {
                        ids.push(SocketIdentity::of(r));
                    }
                })
                .expect("walk");
            assert_eq!(ids.len(), total);
            let mut lookup = Lookup::with_batch(batch);
            let (allocations, (found, stats)) = warm_allocations(|| {
                let mut found = 0;
                let stats = lookup
                    .run(&mut socket, &ids, |_, a| {
                        found += usize::from(matches!(a, Answer::Found(_)));
                    })
                    .expect("lookup");
                (found, stats)
            });
            println!("{allocations} allocations for {total} lookups, batch {batch}: {stats:?}");
            assert_eq!(found, total);
            assert_eq!(allocations, 0, "warm lookups of {total}, batch {batch}");
        }
    });
}
