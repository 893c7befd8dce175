//! The floor: the least work a netlink collector can do to see every TCP socket's queues.
//!
//! One SOCK_DIAG_BY_FAMILY dump per address family, no extensions, no bytecode filter, a
//! 64 KiB receive buffer, and per message only two loads (Recv-Q, Send-Q). Whatever a real
//! collector costs beyond this is its own parsing, aggregation and rendering.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::proc_util;

pub const SOCK_DIAG_BY_FAMILY: u16 = 20;
pub const NLMSG_HDRLEN: usize = 16;
/// inet_diag_req_v2: family, protocol, ext, pad, states (u32), inet_diag_sockid (48 bytes).
const REQ_V2_LEN: usize = 56;
/// Offsets inside inet_diag_msg: after family/state/timer/retrans (4), the sockid (48) and
/// idiag_expires (4) come idiag_rqueue and idiag_wqueue.
const MSG_STATE_OFF: usize = 1;
const MSG_RQUEUE_OFF: usize = 56;
const MSG_WQUEUE_OFF: usize = 60;
const INET_DIAG_MSG_LEN: usize = 72;
/// Every TCP state bit (TCPF_ALL), so one dump sees listeners and connections alike.
const ALL_STATES: u32 = 0xfff;
const RECV_BUF: usize = 64 * 1024;
/// A dump that takes longer than this is broken, not slow (1M connections take ~2 s).
const DUMP_DEADLINE: Duration = Duration::from_secs(300);

/// What one message of the dump carries that the bench looks at.
#[derive(Clone, Copy)]
pub struct SockQueues {
    pub state: u8,
    pub rqueue: u32,
    pub wqueue: u32,
}

pub fn u32_at(buf: &[u8], off: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&buf[off..off + 4]);
    u32::from_ne_bytes(b)
}

pub fn u16_at(buf: &[u8], off: usize) -> u16 {
    u16::from_ne_bytes([buf[off], buf[off + 1]])
}

/// Writes the netlink header of a sock_diag dump request that fills `req`: its length, type,
/// flags and `seq`. nlmsg_pid stays 0: the kernel is the destination.
pub fn dump_header(req: &mut [u8], seq: u32) {
    let len = req.len() as u32;
    req[0..4].copy_from_slice(&len.to_ne_bytes());
    req[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    req[6..8].copy_from_slice(&flags.to_ne_bytes());
    req[8..12].copy_from_slice(&seq.to_ne_bytes());
}

/// Calls `each` with the type (flags masked off) and value of every attribute of a reply,
/// starting at `off`; stops at the first one that does not fit.
pub fn for_each_attr(payload: &[u8], mut off: usize, mut each: impl FnMut(u16, &[u8])) {
    while off + 4 <= payload.len() {
        let len = usize::from(u16_at(payload, off));
        let ty = u16_at(payload, off + 2) & 0x3fff;
        if len < 4 || off + len > payload.len() {
            break;
        }
        each(ty, &payload[off + 4..off + len]);
        off += (len + 3) & !3;
    }
}

/// Says so on stderr when a dump was flagged inconsistent (NLM_F_DUMP_INTR); `who` names
/// the dump.
pub fn warn_if_interrupted(interrupted: bool, who: &str) {
    if interrupted {
        eprintln!("{who}: warning: dump was interrupted (NLM_F_DUMP_INTR)");
    }
}

fn request(family: u8, seq: u32) -> [u8; NLMSG_HDRLEN + REQ_V2_LEN] {
    let mut req = [0u8; NLMSG_HDRLEN + REQ_V2_LEN];
    dump_header(&mut req, seq);
    let p = NLMSG_HDRLEN;
    req[p] = family;
    req[p + 1] = libc::IPPROTO_TCP as u8;
    // idiag_ext and pad stay 0: no extensions.
    req[p + 4..p + 8].copy_from_slice(&ALL_STATES.to_ne_bytes());
    req
}

fn open_diag_socket() -> Result<OwnedFd> {
    let fd = proc_util::socket(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_SOCK_DIAG)
        .context("creating a NETLINK_SOCK_DIAG socket")?;
    // A stuck kernel reply must not hang the bench.
    let tv = libc::timeval {
        tv_sec: 30,
        tv_usec: 0,
    };
    proc_util::setsockopt(&fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv)
        .context("setting SO_RCVTIMEO on the netlink socket")?;
    Ok(fd)
}

/// Dumps every TCP socket of the current network namespace, IPv4 then IPv6, calling `each`
/// once per socket. Returns whether any part of the dump was flagged inconsistent
/// (NLM_F_DUMP_INTR: the socket tables changed while being walked).
pub fn dump_tcp(mut each: impl FnMut(SockQueues)) -> Result<bool> {
    let v4 = request(libc::AF_INET as u8, 1);
    let v6 = request(libc::AF_INET6 as u8, 2);
    dump_requests(&[&v4, &v6], INET_DIAG_MSG_LEN, |payload| {
        each(SockQueues {
            state: payload[MSG_STATE_OFF],
            rqueue: u32_at(payload, MSG_RQUEUE_OFF),
            wqueue: u32_at(payload, MSG_WQUEUE_OFF),
        })
    })
}

/// Sends each sock_diag dump request in turn on one NETLINK_SOCK_DIAG socket and calls
/// `each` with the payload of every reply of at least `min_len` bytes. Returns whether any
/// part was flagged inconsistent (NLM_F_DUMP_INTR).
pub fn dump_requests(
    requests: &[&[u8]],
    min_len: usize,
    mut each: impl FnMut(&[u8]),
) -> Result<bool> {
    let fd = open_diag_socket()?;
    let mut buf = vec![0u8; RECV_BUF];
    let mut interrupted = false;
    let start = Instant::now();
    for req in requests {
        let mut dst: libc::sockaddr_nl = unsafe {
            // SAFETY: sockaddr_nl is plain old data.
            std::mem::zeroed()
        };
        dst.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: valid buffer and address of the sizes passed.
        let sent = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                req.as_ptr().cast(),
                req.len(),
                0,
                (&dst as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent != req.len() as isize {
            return Err(io::Error::last_os_error()).context("sending a sock_diag dump request");
        }
        'recv: loop {
            if start.elapsed() > DUMP_DEADLINE {
                bail!("sock_diag dump still running after {DUMP_DEADLINE:?}");
            }
            // SAFETY: buf is valid for RECV_BUF bytes.
            let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err).context("receiving the sock_diag dump");
            }
            let n = n as usize;
            if n == 0 {
                bail!("netlink socket closed in the middle of the dump");
            }
            let data = &buf[..n];
            let mut off = 0;
            while off + NLMSG_HDRLEN <= n {
                let len = u32_at(data, off) as usize;
                if len < NLMSG_HDRLEN || off + len > n {
                    bail!("malformed netlink message (length {len} at offset {off} of {n})");
                }
                let ty = u16_at(data, off + 4);
                let flags = u16_at(data, off + 6);
                if flags & libc::NLM_F_DUMP_INTR as u16 != 0 {
                    interrupted = true;
                }
                let payload = &data[off + NLMSG_HDRLEN..off + len];
                match ty {
                    t if t == libc::NLMSG_DONE as u16 => {
                        if payload.len() >= 4 {
                            let code = u32_at(payload, 0) as i32;
                            if code < 0 {
                                return Err(io::Error::from_raw_os_error(-code))
                                    .context("the kernel ended the sock_diag dump with an error");
                            }
                        }
                        break 'recv;
                    }
                    t if t == libc::NLMSG_ERROR as u16 => {
                        let code = if payload.len() >= 4 {
                            u32_at(payload, 0) as i32
                        } else {
                            -libc::EPROTO
                        };
                        if code != 0 {
                            return Err(io::Error::from_raw_os_error(-code))
                                .context("the kernel refused the sock_diag dump request");
                        }
                    }
                    SOCK_DIAG_BY_FAMILY if payload.len() >= min_len => each(payload),
                    _ => bail!("unexpected netlink message type {ty} (length {len})"),
                }
                // NLMSG_ALIGN
                off += (len + 3) & !3;
            }
        }
    }
    Ok(interrupted)
}

/// `sockdiag-bench floor`: the measured floor command.
pub fn floor_main() -> Result<ExitCode> {
    let mut count: u64 = 0;
    let mut rqueue: u64 = 0;
    let mut wqueue: u64 = 0;
    let interrupted = dump_tcp(|s| {
        count += 1;
        rqueue += u64::from(s.rqueue);
        wqueue += u64::from(s.wqueue);
    })?;
    println!("sockets {count} rqueue_sum {rqueue} wqueue_sum {wqueue}");
    warn_if_interrupted(interrupted, "sockdiag-bench floor");
    Ok(ExitCode::SUCCESS)
}

/// Per-state totals, for checking that the setup built what it claims.
#[derive(Default, Debug, Clone, Copy)]
pub struct Census {
    pub sockets: u64,
    pub listeners: u64,
    pub accept_queued: u64,
    pub established: u64,
    pub other_states: u64,
    pub recv_q_bytes: u64,
    pub send_q_bytes: u64,
}

const TCP_ESTABLISHED: u8 = 1;
const TCP_LISTEN: u8 = 10;

pub fn census() -> Result<Census> {
    let mut c = Census::default();
    let interrupted = dump_tcp(|s| {
        c.sockets += 1;
        match s.state {
            TCP_LISTEN => {
                c.listeners += 1;
                // For a listener Recv-Q is the accept-queue length, not bytes.
                c.accept_queued += u64::from(s.rqueue);
            }
            st => {
                if st == TCP_ESTABLISHED {
                    c.established += 1;
                } else {
                    c.other_states += 1;
                }
                c.recv_q_bytes += u64::from(s.rqueue);
                c.send_q_bytes += u64::from(s.wqueue);
            }
        }
    })?;
    warn_if_interrupted(interrupted, "sockdiag-bench: census");
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout the kernel expects: a wrong length or offset gets EINVAL or, worse, a
    /// dump of some other protocol.
    #[test]
    fn request_layout_matches_inet_diag_req_v2() {
        let req = request(libc::AF_INET6 as u8, 7);
        assert_eq!(u32_at(&req, 0) as usize, req.len());
        assert_eq!(req.len(), 72);
        assert_eq!(u16_at(&req, 4), SOCK_DIAG_BY_FAMILY);
        assert_eq!(
            u16_at(&req, 6),
            (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16
        );
        assert_eq!(u32_at(&req, 8), 7);
        assert_eq!(req[16], libc::AF_INET6 as u8);
        assert_eq!(req[17], libc::IPPROTO_TCP as u8);
        assert_eq!(req[18], 0, "no extensions");
        assert_eq!(u32_at(&req, 20), ALL_STATES);
        assert!(req[24..].iter().all(|&b| b == 0), "no socket id filter");
    }
}
