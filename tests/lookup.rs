//! Exact single-socket lookups against the kernel: connections waiting in
//! accept queues, found by a dump without extensions, looked up one by one
//! in batches, each in a network namespace of its own.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sockdiag_exporter::aggregate::in_accept_queue;
use sockdiag_exporter::diag::lookup::{DEFAULT_BATCH, NO_COOKIE};
use sockdiag_exporter::diag::{
    Answer, DiagSocket, DumpRequest, Lookup, LookupStats, SockRecord, SocketIdentity,
};

use common::*;

/// The connection walk's request, with or without `tcp_info`.
fn walk(tcp_info: bool) -> DumpRequest<'static> {
    DumpRequest::tcp_connections(tcp_info, None)
}

/// Every connection record of one walk.
fn dump(socket: &mut DiagSocket, tcp_info: bool) -> Vec<SockRecord> {
    let mut out = Vec::new();
    socket
        .dump(&walk(tcp_info), |r| out.push(*r))
        .expect("connection walk");
    out
}

/// The connections of a bare walk that wait in the accept queue of one of
/// `ports`.
fn waiting(socket: &mut DiagSocket, ports: &[u16]) -> Vec<SocketIdentity> {
    dump(socket, false)
        .iter()
        .filter(|r| in_accept_queue(r) && ports.contains(&r.local_port))
        .map(SocketIdentity::of)
        .collect()
}

/// Opens `n` connections to `addr` that nobody accepts; the client ends go
/// into `keep`.
fn connect_waiting(addr: SocketAddr, n: usize, keep: &mut Vec<socket2::Socket>) {
    for _ in 0..n {
        let c = start_connect(addr);
        assert!(
            wait_connected(&c, Duration::from_secs(2)),
            "loopback connect to {addr}"
        );
        keep.push(c);
    }
}

/// Looks every identity up; the answers by index.
fn look_up(
    socket: &mut DiagSocket,
    lookup: &mut Lookup,
    ids: &[SocketIdentity],
) -> (Vec<Option<Answer>>, LookupStats) {
    let mut answers = vec![None; ids.len()];
    let stats = lookup
        .run(socket, ids, |i, a| {
            assert!(answers[i].is_none(), "identity {i} answered twice");
            answers[i] = Some(a);
        })
        .expect("lookup");
    (answers, stats)
}

fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    lim.rlim_cur = lim.rlim_max;
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
}

#[test]
fn every_waiting_connection_is_found_with_the_age_a_tcp_info_walk_gives() {
    in_netns(
        "every_waiting_connection_is_found_with_the_age_a_tcp_info_walk_gives",
        || {
            let v4: SocketAddr = "127.0.0.1:7001".parse().unwrap();
            let v6: SocketAddr = "[::1]:7002".parse().unwrap();
            let dual: SocketAddr = "[::]:7003".parse().unwrap();
            let _l4 = listen(v4, 128, false, None);
            let _l6 = listen(v6, 128, false, Some(true));
            let ld = listen(dual, 128, false, Some(false));
            let mut keep = Vec::new();
            connect_waiting(v4, 20, &mut keep);
            connect_waiting(v6, 20, &mut keep);
            // IPv4 clients of a dual-stack listener: v4-mapped IPv6 sockets.
            connect_waiting("127.0.0.1:7003".parse().unwrap(), 20, &mut keep);
            // A listener bound to an interface: its connections are too, and
            // the kernel finds them only when asked with that interface.
            let bound: SocketAddr = "127.0.0.1:7004".parse().unwrap();
            let lb = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                .expect("listener socket");
            lb.bind_device(Some(b"lo")).expect("SO_BINDTODEVICE lo");
            lb.bind(&bound.into()).expect("bind");
            lb.listen(128).expect("listen");
            connect_waiting(bound, 5, &mut keep);
            // Accepted connections are not waiting and must not be picked.
            connect_waiting("127.0.0.1:7003".parse().unwrap(), 3, &mut keep);
            for _ in 0..3 {
                keep.push(ld.accept().expect("accept").0);
            }
            std::thread::sleep(Duration::from_millis(300));

            let mut socket = DiagSocket::open().expect("sock_diag socket");
            let ids = waiting(&mut socket, &[7001, 7002, 7003, 7004]);
            assert_eq!(ids.len(), 65, "{ids:?}");
            let on_lo = ids.iter().filter(|id| id.interface != 0).count();
            assert_eq!(on_lo, 5, "connections of the listener bound to lo");
            let mapped = ids
                .iter()
                .filter(|id| id.local.ip().to_string().starts_with("::ffff:"))
                .count();
            assert_eq!(mapped, 20, "v4-mapped connections on the dual listener");

            let start = Instant::now();
            let walked: HashMap<u64, u32> = dump(&mut socket, true)
                .iter()
                .filter_map(|r| Some((r.cookie, r.last_data_sent_ms?)))
                .collect();
            let mut lookup = Lookup::default();
            let (answers, stats) = look_up(&mut socket, &mut lookup, &ids);
            // Apart by the time between the two reads, plus a tick of the
            // kernel's clock: tcp_info ages count jiffies (10 ms at HZ=100,
            // 4 ms at 250), so two reads 2 ms apart may differ by a tick.
            let spread = start.elapsed().as_millis() as u32 + 10;
            println!("{stats:?}");
            assert_eq!(stats.found, 65, "{stats:?}");
            assert_eq!(stats.overflows, 0);
            for (id, answer) in ids.iter().zip(&answers) {
                let Some(Answer::Found(r)) = answer else {
                    panic!("{id:?}: {answer:?}")
                };
                assert!(in_accept_queue(r), "still waiting: {r:?}");
                let age = r.last_data_sent_ms.expect("tcp_info in the answer");
                let walk_age = walked[&id.cookie];
                // Less a tick of the kernel's clock (see `spread`).
                assert!(age >= 290, "waited about the 300 ms slept: {age}");
                assert!(
                    age >= walk_age && age - walk_age <= spread,
                    "lookup age {age} ms vs tcp_info walk {walk_age} ms, {spread} ms apart"
                );
            }
            // Asked without its interface, a bound connection is not found.
            let unbound: Vec<SocketIdentity> = ids
                .iter()
                .filter(|id| id.interface != 0)
                .map(|id| SocketIdentity {
                    interface: 0,
                    ..*id
                })
                .collect();
            let (answers, _) = look_up(&mut socket, &mut lookup, &unbound);
            assert!(
                answers.iter().all(|a| matches!(
                    a,
                    Some(Answer::Gone {
                        errno: libc::ENOENT
                    })
                )),
                "{answers:?}"
            );
            // ss agrees too: `lastsnd` of the waiting sockets.
            let ss_ages: Vec<u32> = ss(&["-tni", "state", "established", "sport", "= :7001"])
                .iter()
                .filter_map(|l| {
                    let v = l.split("lastsnd:").nth(1)?;
                    v.split_whitespace().next()?.parse().ok()
                })
                .collect();
            assert_eq!(ss_ages.len(), 20, "ss -tni lines for port 7001");
            assert!(ss_ages.iter().all(|&a| a >= 290), "{ss_ages:?}");
        },
    );
}

#[test]
fn connections_that_left_the_queue_are_found_accepted_or_answer_gone() {
    in_netns(
        "connections_that_left_the_queue_are_found_accepted_or_answer_gone",
        || {
            let addr: SocketAddr = "127.0.0.1:7010".parse().unwrap();
            let listener = listen(addr, 128, false, None);
            let mut clients = Vec::new();
            connect_waiting(addr, 6, &mut clients);
            let mut socket = DiagSocket::open().expect("sock_diag socket");
            let mut ids = waiting(&mut socket, &[7010]);
            assert_eq!(ids.len(), 6);
            let by_client_port = |port: u16| ids.iter().position(|id| id.remote_port == port);

            // Between the walk and the lookup: two accepted, two reset by
            // their client (they leave the kernel's hash, not the queue).
            let accepted: Vec<_> = (0..2).map(|_| listener.accept().expect("accept")).collect();
            let accepted_idx: Vec<usize> = accepted
                .iter()
                .map(|(_, peer)| by_client_port(peer.as_socket().unwrap().port()).unwrap())
                .collect();
            let mut reset_idx = Vec::new();
            let mut kept = Vec::new();
            for c in clients.drain(..) {
                let port = c.local_addr().unwrap().as_socket().unwrap().port();
                let i = by_client_port(port).unwrap();
                if accepted_idx.contains(&i) || reset_idx.len() == 2 {
                    kept.push(c);
                    continue;
                }
                c.set_linger(Some(Duration::ZERO)).expect("SO_LINGER 0");
                drop(c);
                reset_idx.push(i);
            }
            // A live socket asked for with a cookie not its own, one asked
            // for with any cookie, and addresses nobody holds.
            let waiting_idx: Vec<usize> = (0..6)
                .filter(|i| !accepted_idx.contains(i) && !reset_idx.contains(i))
                .collect();
            let mut stale = ids[waiting_idx[0]];
            stale.cookie ^= 1 << 40;
            let mut any_cookie = ids[waiting_idx[1]];
            any_cookie.cookie = NO_COOKIE;
            let mut nobody = ids[0];
            nobody.remote_port = 1;
            ids.extend([stale, any_cookie, nobody]);

            std::thread::sleep(Duration::from_millis(50));
            let mut lookup = Lookup::default();
            let (answers, stats) = look_up(&mut socket, &mut lookup, &ids);
            println!("{stats:?}");
            for (i, answer) in answers.iter().enumerate() {
                println!("{i}: {:?}", answer.as_ref().map(short));
            }
            for &i in &accepted_idx {
                let Some(Answer::Found(r)) = &answers[i] else {
                    panic!("accepted {i}: {:?}", answers[i])
                };
                assert_ne!(r.inode, 0, "an accepted socket has a file");
                assert!(!in_accept_queue(r));
            }
            for &i in &reset_idx {
                assert_eq!(
                    answers[i],
                    Some(Answer::Gone {
                        errno: libc::ENOENT
                    }),
                    "reset {i}"
                );
            }
            for &i in &waiting_idx {
                assert!(
                    matches!(&answers[i], Some(Answer::Found(r)) if in_accept_queue(r)),
                    "waiting {i}: {:?}",
                    answers[i]
                );
            }
            // Linux 6.18 answers ENOENT; kernels before it said ESTALE.
            assert!(
                matches!(answers[6], Some(Answer::Gone { .. })),
                "a cookie not the socket's: {:?}",
                answers[6]
            );
            assert!(
                matches!(&answers[7], Some(Answer::Found(r)) if r.cookie == ids[waiting_idx[1]].cookie),
                "any cookie: {:?}",
                answers[7]
            );
            assert_eq!(
                answers[8],
                Some(Answer::Gone {
                    errno: libc::ENOENT
                }),
                "nobody's addresses"
            );
            assert_eq!(stats.failed, 0);
            drop(accepted);
        },
    );
}

fn short(a: &Answer) -> String {
    match a {
        Answer::Found(r) => format!(
            "found {:?} inode {} age {:?}",
            r.state, r.inode, r.last_data_sent_ms
        ),
        other => format!("{other:?}"),
    }
}

#[test]
fn a_batch_larger_than_the_receive_buffer_still_gets_every_answer() {
    in_netns(
        "a_batch_larger_than_the_receive_buffer_still_gets_every_answer",
        || {
            raise_fd_limit();
            const N: usize = 2000;
            let addr: SocketAddr = "127.0.0.1:7020".parse().unwrap();
            let _listener = listen(addr, 4096, false, None);
            let mut keep = Vec::new();
            connect_waiting(addr, N, &mut keep);
            let mut socket = DiagSocket::open().expect("sock_diag socket");
            let ids = waiting(&mut socket, &[7020]);
            assert_eq!(ids.len(), N);
            println!(
                "net.core.rmem_default {}",
                std::fs::read_to_string("/proc/sys/net/core/rmem_default")
                    .unwrap_or_default()
                    .trim()
            );
            for batch in [64, 128, 160, 192, 256, 512, N] {
                let mut lookup = Lookup::with_batch(batch);
                let start = Instant::now();
                let (answers, stats) = look_up(&mut socket, &mut lookup, &ids);
                println!(
                    "batch {batch}: {:.2} ms, {stats:?}",
                    start.elapsed().as_secs_f64() * 1e3
                );
                assert_eq!(stats.found, N, "batch {batch}: {stats:?}");
                assert!(
                    answers
                        .iter()
                        .all(|a| matches!(a, Some(Answer::Found(r)) if in_accept_queue(r))),
                    "batch {batch}"
                );
                if batch == N {
                    assert!(stats.overflows > 0, "{N} answers overflow the buffer");
                }
                if batch <= DEFAULT_BATCH {
                    assert_eq!(stats.overflows, 0, "batch {batch} fits the default buffer");
                }
            }
        },
    );
}
