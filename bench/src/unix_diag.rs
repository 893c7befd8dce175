//! Raw unix_diag dumps: the floor of the unix listener pass, and the census that checks the
//! unix benchmark built what it claims.
//!
//! The kernel walks every unix socket of the namespace for any dump and filters by state
//! afterwards, so the floor's cost grows with all unix sockets, not with listeners.

use std::process::ExitCode;

use anyhow::Result;

use crate::diag::{self, NLMSG_HDRLEN, u32_at};

/// unix_diag_req: family, protocol, pad (2), states, ino, show, cookie (8).
const REQ_LEN: usize = 24;
/// unix_diag_msg: family, type, state, pad, ino, cookie (8); attributes follow.
const MSG_LEN: usize = 16;
const UDIAG_SHOW_NAME: u32 = 0x01;
const UDIAG_SHOW_RQLEN: u32 = 0x10;
const UNIX_DIAG_NAME: u16 = 0;
const UNIX_DIAG_RQLEN: u16 = 4;
pub const TCP_LISTEN: u8 = 10;
pub const LISTEN_ONLY: u32 = 1 << TCP_LISTEN;
pub const ALL_STATES: u32 = u32::MAX;

fn request(states: u32, show: u32) -> [u8; NLMSG_HDRLEN + REQ_LEN] {
    let mut req = [0u8; NLMSG_HDRLEN + REQ_LEN];
    diag::dump_header(&mut req, 1);
    let p = NLMSG_HDRLEN;
    req[p] = libc::AF_UNIX as u8;
    req[p + 4..p + 8].copy_from_slice(&states.to_ne_bytes());
    req[p + 12..p + 16].copy_from_slice(&show.to_ne_bytes());
    req
}

/// What the bench reads from one unix_diag reply.
#[derive(Clone, Copy, Debug, Default)]
pub struct UnixSock {
    pub kind: u8,
    pub state: u8,
    /// For a listener: connections waiting to be accepted.
    pub rqueue: u32,
    /// For a listener: its backlog.
    pub wqueue: u32,
    /// Bytes of the name attribute (0: unnamed).
    pub name_len: usize,
}

fn parse(payload: &[u8]) -> UnixSock {
    let mut s = UnixSock {
        kind: payload[1],
        state: payload[2],
        ..UnixSock::default()
    };
    diag::for_each_attr(payload, MSG_LEN, |ty, data| match ty {
        UNIX_DIAG_RQLEN if data.len() >= 8 => {
            s.rqueue = u32_at(data, 0);
            s.wqueue = u32_at(data, 4);
        }
        UNIX_DIAG_NAME => s.name_len = data.len(),
        _ => {}
    });
    s
}

/// Dumps the unix sockets of the current network namespace in `states`, with their queue
/// figures and, if `names`, their names.
pub fn dump_unix(states: u32, names: bool, mut each: impl FnMut(UnixSock)) -> Result<bool> {
    let show = UDIAG_SHOW_RQLEN | if names { UDIAG_SHOW_NAME } else { 0 };
    let req = request(states, show);
    diag::dump_requests(&[&req], MSG_LEN, |payload| each(parse(payload)))
}

/// `sockdiag-bench unix-floor`: one dump of the listening unix sockets with names and queue
/// figures, which is what any unix listener collector must ask for; counts them and sums
/// the queues, nothing else.
pub fn floor_main() -> Result<ExitCode> {
    let (mut count, mut rqueue, mut wqueue, mut name_bytes) = (0u64, 0u64, 0u64, 0u64);
    let interrupted = dump_unix(LISTEN_ONLY, true, |s| {
        count += 1;
        rqueue += u64::from(s.rqueue);
        wqueue += u64::from(s.wqueue);
        name_bytes += s.name_len as u64;
    })?;
    println!("listeners {count} rqueue_sum {rqueue} wqueue_sum {wqueue} name_bytes {name_bytes}");
    diag::warn_if_interrupted(interrupted, "sockdiag-bench unix-floor");
    Ok(ExitCode::SUCCESS)
}

/// Unix sockets of the namespace by what the bench checks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnixCensus {
    pub sockets: u64,
    pub listeners: u64,
    pub seqpacket_listeners: u64,
    /// Sum of the listeners' accept queues.
    pub queued: u64,
    /// Listeners whose queue is over full (length > backlog).
    pub over_full: u64,
    /// Listeners with something queued but not over full.
    pub pending: u64,
}

pub fn census() -> Result<UnixCensus> {
    let mut c = UnixCensus::default();
    let interrupted = dump_unix(ALL_STATES, false, |s| {
        c.sockets += 1;
        if s.state == TCP_LISTEN {
            c.listeners += 1;
            if i32::from(s.kind) == libc::SOCK_SEQPACKET {
                c.seqpacket_listeners += 1;
            }
            c.queued += u64::from(s.rqueue);
            if s.rqueue > s.wqueue {
                c.over_full += 1;
            } else if s.rqueue > 0 {
                c.pending += 1;
            }
        }
    })?;
    diag::warn_if_interrupted(interrupted, "sockdiag-bench: unix census");
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diag::{SOCK_DIAG_BY_FAMILY, u16_at};

    /// A wrong length or offset gets EINVAL, or a dump without the queue figures.
    #[test]
    fn request_layout_matches_unix_diag_req() {
        let req = request(LISTEN_ONLY, UDIAG_SHOW_RQLEN | UDIAG_SHOW_NAME);
        assert_eq!(req.len(), 40);
        assert_eq!(u32_at(&req, 0) as usize, req.len());
        assert_eq!(u16_at(&req, 4), SOCK_DIAG_BY_FAMILY);
        assert_eq!(req[16], libc::AF_UNIX as u8);
        assert_eq!(req[17], 0, "no protocol");
        assert_eq!(u32_at(&req, 20), 1 << 10, "udiag_states");
        assert_eq!(u32_at(&req, 24), 0, "udiag_ino");
        assert_eq!(u32_at(&req, 28), 0x11, "udiag_show");
        assert!(req[32..].iter().all(|&b| b == 0), "no cookie");
    }

    #[test]
    fn reply_attributes_give_queues_and_name_length() {
        let mut p = vec![
            libc::AF_UNIX as u8,
            libc::SOCK_SEQPACKET as u8,
            TCP_LISTEN,
            0,
        ];
        p.extend_from_slice(&[0u8; 12]);
        // UNIX_DIAG_NAME "@ab" stored as NUL a b: length 4 + 3, padded to 8.
        p.extend_from_slice(&7u16.to_ne_bytes());
        p.extend_from_slice(&UNIX_DIAG_NAME.to_ne_bytes());
        p.extend_from_slice(&[0, b'a', b'b', 0]);
        p.extend_from_slice(&12u16.to_ne_bytes());
        p.extend_from_slice(&UNIX_DIAG_RQLEN.to_ne_bytes());
        p.extend_from_slice(&3u32.to_ne_bytes());
        p.extend_from_slice(&2u32.to_ne_bytes());
        let s = parse(&p);
        assert_eq!((s.kind, s.state), (libc::SOCK_SEQPACKET as u8, TCP_LISTEN));
        assert_eq!((s.rqueue, s.wqueue, s.name_len), (3, 2, 3));
    }
}
