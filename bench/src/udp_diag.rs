//! Raw inet_diag dumps of UDP sockets: the floor of the UDP benchmark, and the census that
//! checks the benchmark built what it claims.
//!
//! A UDP receiver's queue is its receive buffer, so what any UDP collector must ask for is
//! `idiag_rqueue` (bytes queued, per-datagram overhead included) plus `INET_DIAG_SKMEMINFO`
//! for the buffer limit and the drop count. The kernel walks its whole UDP hash table
//! (host-wide, shared by every namespace) for each family's dump, whatever the states asked.

use std::process::ExitCode;

use anyhow::Result;

use crate::diag::{self, NLMSG_HDRLEN, u32_at};

/// inet_diag_req_v2: family, protocol, ext, pad, states (u32), inet_diag_sockid (48 bytes).
const REQ_V2_LEN: usize = 56;
/// inet_diag_msg is 72 bytes; attributes follow.
const MSG_LEN: usize = 72;
const MSG_STATE_OFF: usize = 1;
/// inet_diag_sockid starts at 4: sport and dport first, big endian.
const MSG_SPORT_OFF: usize = 4;
const MSG_DPORT_OFF: usize = 6;
const MSG_RQUEUE_OFF: usize = 56;
/// INET_DIAG_NONE, MEMINFO, INFO, VEGASINFO, CONG, TOS, TCLASS, then SKMEMINFO.
const INET_DIAG_SKMEMINFO: u16 = 7;
/// idiag_ext is a bit mask of (attribute type - 1).
const EXT_SKMEMINFO: u8 = 1 << (INET_DIAG_SKMEMINFO - 1);
const SK_MEMINFO_RCVBUF: usize = 1;
const SK_MEMINFO_DROPS: usize = 8;
/// Every state bit: an unconnected UDP socket is TCP_CLOSE, a connected one
/// TCP_ESTABLISHED, and the dump filters on `1 << sk_state`.
const ALL_STATES: u32 = 0xfff;
pub const TCP_ESTABLISHED: u8 = 1;

fn request(family: u8, seq: u32) -> [u8; NLMSG_HDRLEN + REQ_V2_LEN] {
    let mut req = [0u8; NLMSG_HDRLEN + REQ_V2_LEN];
    diag::dump_header(&mut req, seq);
    let p = NLMSG_HDRLEN;
    req[p] = family;
    req[p + 1] = libc::IPPROTO_UDP as u8;
    req[p + 2] = EXT_SKMEMINFO;
    req[p + 4..p + 8].copy_from_slice(&ALL_STATES.to_ne_bytes());
    req
}

/// What the bench reads from one UDP reply.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UdpSock {
    pub family: u8,
    pub state: u8,
    pub sport: u16,
    pub dport: u16,
    /// Bytes queued for the application (Recv-Q).
    pub rqueue: u32,
    /// SK_MEMINFO_RCVBUF; `None` when the reply carried no SKMEMINFO.
    pub rcvbuf: Option<u32>,
    /// SK_MEMINFO_DROPS.
    pub drops: Option<u32>,
}

fn parse(payload: &[u8]) -> UdpSock {
    let mut s = UdpSock {
        family: payload[0],
        state: payload[MSG_STATE_OFF],
        sport: u16::from_be_bytes([payload[MSG_SPORT_OFF], payload[MSG_SPORT_OFF + 1]]),
        dport: u16::from_be_bytes([payload[MSG_DPORT_OFF], payload[MSG_DPORT_OFF + 1]]),
        rqueue: u32_at(payload, MSG_RQUEUE_OFF),
        rcvbuf: None,
        drops: None,
    };
    diag::for_each_attr(payload, MSG_LEN, |ty, data| {
        if ty == INET_DIAG_SKMEMINFO {
            let field = |i: usize| (data.len() >= 4 * (i + 1)).then(|| u32_at(data, 4 * i));
            s.rcvbuf = field(SK_MEMINFO_RCVBUF);
            s.drops = field(SK_MEMINFO_DROPS);
        }
    });
    s
}

/// Dumps every UDP socket of the current network namespace, IPv4 then IPv6, with
/// SKMEMINFO. Returns whether any part was flagged inconsistent (NLM_F_DUMP_INTR).
pub fn dump_udp(mut each: impl FnMut(UdpSock)) -> Result<bool> {
    let v4 = request(libc::AF_INET as u8, 1);
    let v6 = request(libc::AF_INET6 as u8, 2);
    diag::dump_requests(&[&v4, &v6], MSG_LEN, |payload| each(parse(payload)))
}

/// `sockdiag-bench udp-floor`: one UDP dump per family with SKMEMINFO, which is what any
/// UDP receiver collector must ask for; counts the sockets and sums queues and drops,
/// nothing else.
pub fn floor_main() -> Result<ExitCode> {
    let (mut count, mut rqueue, mut rcvbuf, mut drops, mut no_meminfo) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let interrupted = dump_udp(|s| {
        count += 1;
        rqueue += u64::from(s.rqueue);
        match (s.rcvbuf, s.drops) {
            (Some(b), Some(d)) => {
                rcvbuf += u64::from(b);
                drops += u64::from(d);
            }
            _ => no_meminfo += 1,
        }
    })?;
    println!(
        "sockets {count} rqueue_sum {rqueue} rcvbuf_sum {rcvbuf} drops_sum {drops} \
         without_skmeminfo {no_meminfo}"
    );
    diag::warn_if_interrupted(interrupted, "sockdiag-bench udp-floor");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diag::{SOCK_DIAG_BY_FAMILY, u16_at};

    const TCP_CLOSE: u8 = 7;

    /// A wrong offset asks for another protocol or no SKMEMINFO, and the floor would be
    /// cheaper than any real collector.
    #[test]
    fn request_layout_matches_inet_diag_req_v2_for_udp_with_skmeminfo() {
        let req = request(libc::AF_INET6 as u8, 9);
        assert_eq!(req.len(), 72);
        assert_eq!(u32_at(&req, 0) as usize, req.len());
        assert_eq!(u16_at(&req, 4), SOCK_DIAG_BY_FAMILY);
        assert_eq!(u32_at(&req, 8), 9);
        assert_eq!(req[16], libc::AF_INET6 as u8);
        assert_eq!(req[17], libc::IPPROTO_UDP as u8);
        assert_eq!(req[18], 0x40, "idiag_ext: 1 << (INET_DIAG_SKMEMINFO - 1)");
        assert_eq!(u32_at(&req, 20), ALL_STATES);
        assert!(req[24..].iter().all(|&b| b == 0), "no socket id filter");
    }

    #[test]
    fn reply_gives_ports_queue_buffer_and_drops() {
        let mut p = vec![0u8; MSG_LEN];
        p[0] = libc::AF_INET as u8;
        p[1] = TCP_CLOSE;
        p[4..6].copy_from_slice(&20_005u16.to_be_bytes());
        p[56..60].copy_from_slice(&1664u32.to_ne_bytes());
        // An unrelated attribute first, then SKMEMINFO with its nine u32s.
        p.extend_from_slice(&5u16.to_ne_bytes());
        p.extend_from_slice(&1u16.to_ne_bytes());
        p.extend_from_slice(&[7, 0, 0, 0]);
        p.extend_from_slice(&(4u16 + 36).to_ne_bytes());
        p.extend_from_slice(&INET_DIAG_SKMEMINFO.to_ne_bytes());
        for v in [1664u32, 2304, 0, 212_992, 2432, 0, 0, 0, 48] {
            p.extend_from_slice(&v.to_ne_bytes());
        }
        let s = parse(&p);
        assert_eq!((s.family, s.state), (libc::AF_INET as u8, TCP_CLOSE));
        assert_eq!((s.sport, s.dport), (20_005, 0));
        assert_eq!((s.rqueue, s.rcvbuf, s.drops), (1664, Some(2304), Some(48)));
    }

    #[test]
    fn a_reply_without_skmeminfo_says_so() {
        let p = vec![0u8; MSG_LEN];
        let s = parse(&p);
        assert_eq!((s.rcvbuf, s.drops), (None, None));
    }
}
