//! Exact lookups of single TCP sockets, many at a time.
//!
//! A dump walks every socket of the host's established hash; asking for
//! `tcp_info` in it makes every reply about three times larger, only to
//! date the few connections waiting in accept queues. A single-socket
//! request (`SOCK_DIAG_BY_FAMILY` without `NLM_F_DUMP`, naming the socket's
//! addresses, ports and cookie) makes the kernel find that one socket in
//! its hash in constant time instead.
//!
//! The kernel serves the messages of one `send` one after the other, in the
//! sender's own system call, and queues one answer per request on our
//! socket before `send` returns: the socket's reply, or an `NLMSG_ERROR`
//! (`ENOENT` when no socket holds those addresses any more). So
//! [`Lookup`] encodes a batch
//! of requests, each with its own sequence number, into one buffer, sends
//! it in one call, and drains the answers with `recvmmsg`, many datagrams
//! per call, matching them to their requests by sequence number.
//!
//! Answers the receive buffer cannot hold are dropped by the kernel, which
//! then reports `ENOBUFS` once on the next receive. The batch size keeps a
//! batch's answers inside the default buffer; should some be dropped anyway
//! (a smaller `net.core.rmem_default`), only the unanswered requests are
//! sent again, in batches no larger than what fitted.
//!
//! A cookie that does not match the socket now holding the addresses is
//! answered `ENOENT` too on Linux 6.18 (3.x kernels said `ESTALE`): either
//! way the connection the caller knew is gone.

use std::io;
use std::os::fd::RawFd;

use netlink_packet_core::Emitable;
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};

use super::inet::parse_inet_reply;
use super::netlink::{
    NLMSG_ERROR, NLMSG_HDRLEN, ParseError, REQUEST_FLAGS, SOCK_DIAG_BY_FAMILY, append_message,
    error_code, kernel_error, message_at, read_u32,
};
use super::record::{Family, RawAddr, SockRecord};
use super::socket::DiagSocket;

/// Requests per `send`. Each answer is its own datagram, which the kernel
/// charges to our receive buffer at its allocation size, not its length:
/// measured on Linux 6.18, a 408-byte answer with `tcp_info` costs about
/// 1.3 KiB, and 166 answers fit the default 208 KiB buffer
/// (`net.core.rmem_default` 212992); the 167th and later are dropped. 128
/// leaves a quarter of the buffer spare, and a smaller buffer only costs a
/// retry: the batch then shrinks to what fitted.
pub const DEFAULT_BATCH: usize = 128;

/// Bytes set aside for one answer. A reply with `tcp_info` is 408 bytes on
/// Linux 6.18; one longer than this is reported as truncated, not cut.
const SLOT: usize = 2048;

/// How many times a request whose answer was dropped is sent again before
/// it is reported [`Answer::Unanswered`].
const ATTEMPTS: usize = 4;

/// `INET_DIAG_NOCOOKIE`: a cookie of all ones matches any socket.
pub const NO_COOKIE: u64 = u64::MAX;

/// What the kernel needs to find one TCP socket: its family, both ends,
/// and its cookie, which tells it apart from a newer socket reusing the
/// same addresses and ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SocketIdentity {
    /// Local address; its family is the socket's (a v4-mapped connection on
    /// a dual-stack listener is IPv6).
    pub local: RawAddr,
    /// Local port.
    pub local_port: u16,
    /// Remote address, of the same family.
    pub remote: RawAddr,
    /// Remote port.
    pub remote_port: u16,
    /// The interface the socket is bound to, 0 for none: the kernel does
    /// not find a socket bound to an interface without it.
    pub interface: u32,
    /// The socket cookie from the dump, or [`NO_COOKIE`] for whichever
    /// socket holds these addresses now.
    pub cookie: u64,
}

impl SocketIdentity {
    /// The identity of a socket a dump reported.
    pub fn of(r: &SockRecord) -> Self {
        SocketIdentity {
            local: r.local,
            local_port: r.local_port,
            remote: r.remote,
            remote_port: r.remote_port,
            interface: r.interface,
            cookie: r.cookie,
        }
    }

    /// The socket's address family.
    pub fn family(&self) -> Family {
        self.local.family
    }

    /// Appends the request for this socket, with `tcp_info`, as message
    /// `seq` to `out`.
    pub fn append_request(&self, out: &mut Vec<u8>, seq: u32) {
        let cookie = self.cookie;
        let mut cookie_bytes = [0u8; 8];
        // The kernel splits the cookie into two native-endian u32s, low
        // half first, as the decoder reads it back.
        cookie_bytes[..4].copy_from_slice(&(cookie as u32).to_ne_bytes());
        cookie_bytes[4..].copy_from_slice(&((cookie >> 32) as u32).to_ne_bytes());
        let body = InetRequest {
            family: self.family().raw(),
            protocol: libc::IPPROTO_TCP as u8,
            extensions: ExtensionFlags::INFO,
            // Ignored by single-socket lookups; all states for clarity.
            states: StateFlags::all(),
            socket_id: SocketId {
                source_port: self.local_port,
                destination_port: self.remote_port,
                source_address: self.local.ip(),
                destination_address: self.remote.ip(),
                // The kernel's hash lookup matches a socket bound to an
                // interface only when asked with that interface.
                interface_id: self.interface,
                cookie: cookie_bytes,
            },
        };
        append_message(out, seq, SOCK_DIAG_BY_FAMILY, REQUEST_FLAGS, |out| {
            let start = out.len();
            out.resize(start + body.buffer_len(), 0);
            body.emit(&mut out[start..]);
        });
    }
}

/// The kernel's answer about one socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The socket exists; its record carries `last_data_sent_ms` when the
    /// kernel sent `tcp_info`.
    Found(SockRecord),
    /// No such socket any more (`ENOENT`), or its addresses now belong to
    /// another socket (`ESTALE`): a connection that waited in an accept
    /// queue has been accepted or closed since the dump.
    Gone {
        /// `ENOENT` or `ESTALE`.
        errno: i32,
    },
    /// The kernel refused the request, or its answer was damaged.
    Failed(ParseError),
    /// No answer came back, even after sending the request again.
    Unanswered,
}

impl Answer {
    /// `tcpi_last_data_sent` of a found socket, in ms: the age of a
    /// connection still in an accept queue, which has sent nothing yet.
    pub fn last_data_sent_ms(&self) -> Option<u32> {
        match self {
            Answer::Found(r) => r.last_data_sent_ms,
            _ => None,
        }
    }
}

/// Decodes one answer datagram, calling `on_answer` with the sequence
/// number and the answer of every message in it (the kernel sends one
/// per datagram; more are accepted). Acknowledgements (`NLMSG_ERROR` with
/// code 0) and other message types are not answers and are skipped.
///
/// A message whose length does not fit is answered [`Answer::Failed`] when
/// its sequence number could be read; otherwise the error is returned, as
/// nothing says which request it answers.
pub fn decode_answers(
    datagram: &[u8],
    mut on_answer: impl FnMut(u32, Answer),
) -> Result<(), ParseError> {
    let mut offset = 0;
    while offset < datagram.len() {
        let message = match message_at(datagram, offset) {
            Ok(m) => m,
            Err(e) if datagram.len() >= offset + 12 => {
                on_answer(read_u32(datagram, offset + 8), Answer::Failed(e));
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let base = offset + NLMSG_HDRLEN;
        match message.kind {
            NLMSG_ERROR => match error_code(message.payload, offset) {
                Err(e) => on_answer(message.seq, Answer::Failed(e)),
                Ok(0) => {}
                Ok(code) if code == -libc::ENOENT || code == -libc::ESTALE => {
                    on_answer(message.seq, Answer::Gone { errno: -code });
                }
                Ok(code) => on_answer(message.seq, Answer::Failed(kernel_error(code, offset))),
            },
            SOCK_DIAG_BY_FAMILY => {
                let answer = match parse_inet_reply(message.payload, base) {
                    Ok(Some(record)) => Answer::Found(record),
                    Ok(None) => Answer::Failed(ParseError::Malformed {
                        offset: base,
                        what: "reply of an unknown family or state",
                    }),
                    Err(e) => Answer::Failed(e),
                };
                on_answer(message.seq, answer);
            }
            _ => {}
        }
        offset = message.next;
    }
    Ok(())
}

/// A lookup that could not go on: the socket failed, not one request.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// Sending a batch failed.
    #[error("exact lookup of {requests} sockets: send failed: {source}")]
    Send {
        /// Requests in the batch.
        requests: usize,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Receiving answers failed (other than a dropped answer, which is
    /// retried).
    #[error("exact lookup of {requests} sockets: receive failed: {source}")]
    Recv {
        /// Requests in the batch.
        requests: usize,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// What one [`Lookup::run`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LookupStats {
    /// Requests sent, retries included.
    pub requests: usize,
    /// `send` calls (batches).
    pub sends: usize,
    /// `recvmmsg` calls.
    pub receives: usize,
    /// Answer datagrams received.
    pub datagrams: usize,
    /// Bytes of answers received.
    pub bytes: usize,
    /// Times the kernel reported answers dropped for a full receive buffer
    /// (`ENOBUFS`).
    pub overflows: usize,
    /// Requests sent again because their answer was dropped.
    pub retried: usize,
    /// Messages that answered no request of the batch (a late answer to an
    /// abandoned one), ignored.
    pub foreign: usize,
    /// Datagrams too damaged to say which request they answer.
    pub malformed: usize,
    /// Identities found.
    pub found: usize,
    /// Identities gone.
    pub gone: usize,
    /// Identities failed or unanswered.
    pub failed: usize,
}

/// Reusable buffers for exact lookups: after the first run, a run
/// allocates nothing, however many sockets it asks about.
pub struct Lookup {
    batch: usize,
    /// The batch's requests, encoded back to back.
    requests: Vec<u8>,
    /// [`RECV_AT_ONCE`] receive slots of [`SLOT`] bytes.
    slots: Vec<u8>,
    /// The batch in flight: index of each request's identity in the
    /// caller's slice, and how many times it has been sent.
    pending: Vec<(usize, u8)>,
    /// Per request of the batch: whether it has been answered.
    answered: Vec<bool>,
    /// Requests whose answer was dropped, to be sent again.
    again: Vec<(usize, u8)>,
    /// Lengths of the datagrams of the last `recvmmsg`.
    received: [usize; RECV_AT_ONCE],
}

/// Datagrams one `recvmmsg` reads at most.
const RECV_AT_ONCE: usize = 64;

impl Default for Lookup {
    fn default() -> Self {
        Lookup::with_batch(DEFAULT_BATCH)
    }
}

impl Lookup {
    /// Buffers for batches of `batch` requests (at least 1).
    pub fn with_batch(batch: usize) -> Self {
        Lookup {
            batch: batch.max(1),
            requests: Vec::new(),
            slots: Vec::new(),
            pending: Vec::new(),
            answered: Vec::new(),
            again: Vec::new(),
            received: [0; RECV_AT_ONCE],
        }
    }

    /// Requests per `send`.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Looks up every socket of `ids` on `socket` (which must be idle: no
    /// dump in progress), calling `on_answer` exactly once per identity
    /// with its index in `ids` and the kernel's answer, in no particular
    /// order.
    ///
    /// Per-socket trouble (gone, refused, damaged answer) is an [`Answer`];
    /// an error means the socket itself failed, after which some identities
    /// got no call and the socket should be reopened.
    pub fn run<F>(
        &mut self,
        socket: &mut DiagSocket,
        ids: &[SocketIdentity],
        mut on_answer: F,
    ) -> Result<LookupStats, LookupError>
    where
        F: FnMut(usize, Answer),
    {
        let mut stats = LookupStats::default();
        // A dropped answer shrinks the batch for the rest of the run: the
        // receive buffer holds fewer answers than planned.
        let mut batch = self.batch;
        let mut next = 0;
        self.again.clear();
        loop {
            self.pending.clear();
            while self.pending.len() < batch {
                if let Some(retry) = self.again.pop() {
                    self.pending.push(retry);
                } else if next < ids.len() {
                    self.pending.push((next, 0));
                    next += 1;
                } else {
                    break;
                }
            }
            if self.pending.is_empty() {
                return Ok(stats);
            }
            if self.one_batch(socket, ids, &mut stats, &mut on_answer)? {
                // What was answered is what the buffer held: batches of
                // that size fit from now on.
                let fitted = self.answered.iter().filter(|a| **a).count();
                batch = batch.min(fitted).max(1);
            }
            for (p, &(index, sent)) in self.pending.iter().enumerate() {
                if self.answered[p] {
                    continue;
                }
                if usize::from(sent) >= ATTEMPTS {
                    stats.failed += 1;
                    on_answer(index, Answer::Unanswered);
                } else {
                    stats.retried += 1;
                    self.again.push((index, sent));
                }
            }
        }
    }

    /// Sends the requests of `self.pending` in one datagram and reads every
    /// answer the kernel queued, handing each to `on_answer`; marks them in
    /// `self.answered`. Returns whether the kernel dropped answers
    /// (`ENOBUFS`).
    fn one_batch<F>(
        &mut self,
        socket: &mut DiagSocket,
        ids: &[SocketIdentity],
        stats: &mut LookupStats,
        on_answer: &mut F,
    ) -> Result<bool, LookupError>
    where
        F: FnMut(usize, Answer),
    {
        let n = self.pending.len();
        let first_seq = socket.reserve_seqs(n as u32);
        self.requests.clear();
        for (p, (index, sent)) in self.pending.iter_mut().enumerate() {
            ids[*index].append_request(&mut self.requests, first_seq.wrapping_add(p as u32));
            *sent += 1;
        }
        self.answered.clear();
        self.answered.resize(n, false);
        stats.requests += n;
        stats.sends += 1;
        match socket.send_raw(&self.requests) {
            Ok(sent) if sent == self.requests.len() => {}
            Ok(_) => {
                return Err(LookupError::Send {
                    requests: n,
                    source: io::Error::new(io::ErrorKind::WriteZero, "short send"),
                });
            }
            Err(source) => {
                return Err(LookupError::Send {
                    requests: n,
                    source,
                });
            }
        }
        let mut overflowed = false;
        let mut remaining = n;
        while remaining > 0 {
            let got = match self.receive(socket.raw_fd(), remaining) {
                Ok(got) => got,
                // Reported once, before the answers that did fit: read on.
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    stats.overflows += 1;
                    overflowed = true;
                    continue;
                }
                // Nothing more is queued: the kernel answered before `send`
                // returned, so what is missing was dropped.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(source) => {
                    return Err(LookupError::Recv {
                        requests: n,
                        source,
                    });
                }
            };
            if got == 0 {
                break;
            }
            stats.receives += 1;
            for slot in 0..got {
                let len = self.received[slot];
                stats.datagrams += 1;
                stats.bytes += len;
                // A datagram longer than its slot was cut to the slot; the
                // message's own length then exceeds it and the decoder
                // reports it truncated.
                let datagram = &self.slots[slot * SLOT..slot * SLOT + len.min(SLOT)];
                let pending = &self.pending;
                let answered = &mut self.answered;
                let decoded = decode_answers(datagram, |seq, answer| {
                    let p = seq.wrapping_sub(first_seq) as usize;
                    if p >= n || answered[p] {
                        stats.foreign += 1;
                        return;
                    }
                    answered[p] = true;
                    remaining -= 1;
                    let index = pending[p].0;
                    let answer = match answer {
                        Answer::Found(r) if !same_socket(&ids[index], &r) => {
                            Answer::Failed(ParseError::Malformed {
                                offset: 0,
                                what: "reply describes another socket than the one asked for",
                            })
                        }
                        a => a,
                    };
                    match answer {
                        Answer::Found(_) => stats.found += 1,
                        Answer::Gone { .. } => stats.gone += 1,
                        Answer::Failed(_) | Answer::Unanswered => stats.failed += 1,
                    }
                    on_answer(index, answer);
                });
                if decoded.is_err() {
                    stats.malformed += 1;
                }
            }
        }
        Ok(overflowed)
    }

    /// One `recvmmsg` of at most `want` datagrams into the slots, without
    /// waiting: every answer is queued before `send` returns. Records each
    /// datagram's length in `self.received`; returns how many arrived.
    fn receive(&mut self, fd: RawFd, want: usize) -> io::Result<usize> {
        let count = want.clamp(1, RECV_AT_ONCE);
        if self.slots.len() < RECV_AT_ONCE * SLOT {
            self.slots.resize(RECV_AT_ONCE * SLOT, 0);
        }
        let base = self.slots.as_mut_ptr();
        // SAFETY: iovec and mmsghdr are plain C structs for which all zero
        // bytes are valid values.
        let mut iovecs: [libc::iovec; RECV_AT_ONCE] = unsafe { std::mem::zeroed() };
        let mut headers: [libc::mmsghdr; RECV_AT_ONCE] = unsafe { std::mem::zeroed() };
        for (i, (iov, header)) in iovecs.iter_mut().zip(headers.iter_mut()).enumerate() {
            // SAFETY: slot i lies inside `slots`, which holds
            // RECV_AT_ONCE * SLOT bytes.
            iov.iov_base = unsafe { base.add(i * SLOT) }.cast();
            iov.iov_len = SLOT;
            header.msg_hdr.msg_iov = iov;
            header.msg_hdr.msg_iovlen = 1;
        }
        loop {
            // SAFETY: `count` headers, each pointing to one iovec describing
            // a SLOT-byte slot of our own buffer, all alive for the call.
            let n = unsafe {
                libc::recvmmsg(
                    fd,
                    headers.as_mut_ptr(),
                    count as libc::c_uint,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            if n >= 0 {
                let n = n as usize;
                for (len, header) in self.received.iter_mut().zip(&headers[..n]) {
                    *len = header.msg_len as usize;
                }
                return Ok(n);
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }
}

/// Whether a reply is about the socket asked for: same ports and cookie
/// (unless any cookie would do).
fn same_socket(id: &SocketIdentity, r: &SockRecord) -> bool {
    id.local_port == r.local_port
        && id.remote_port == r.remote_port
        && (id.cookie == NO_COOKIE || id.cookie == r.cookie)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diag::netlink::{push_attribute, read_u16};
    use crate::diag::record::TcpState;

    fn addr(s: &str) -> RawAddr {
        RawAddr::from_ip(s.parse().unwrap())
    }

    fn identity() -> SocketIdentity {
        SocketIdentity {
            local: addr("127.0.0.1"),
            local_port: 8080,
            remote: addr("127.0.0.2"),
            remote_port: 40000,
            interface: 3,
            cookie: 0x0000_0001_0000_2a2a,
        }
    }

    /// A netlink message of `kind` with sequence number `seq` around
    /// `payload`, as the kernel frames it.
    fn message(kind: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&((NLMSG_HDRLEN + payload.len()) as u32).to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(&0u16.to_ne_bytes());
        out.extend_from_slice(&seq.to_ne_bytes());
        out.extend_from_slice(&4242u32.to_ne_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// An `NLMSG_ERROR` with status `code`, quoting a request header.
    fn error(seq: u32, code: i32) -> Vec<u8> {
        let mut payload = code.to_ne_bytes().to_vec();
        payload.extend_from_slice(&[0u8; NLMSG_HDRLEN]);
        message(NLMSG_ERROR, seq, &payload)
    }

    /// The payload of a reply about `id` (an ESTABLISHED IPv4 socket with
    /// no inode), with a `tcp_info` whose `tcpi_last_data_sent` is `age`.
    fn reply_payload(id: &SocketIdentity, age: Option<u32>) -> Vec<u8> {
        let mut p = vec![0u8; 72];
        p[0] = libc::AF_INET as u8;
        p[1] = TcpState::Established as u8;
        p[4..6].copy_from_slice(&id.local_port.to_be_bytes());
        p[6..8].copy_from_slice(&id.remote_port.to_be_bytes());
        p[8..12].copy_from_slice(&id.local.bytes[..4]);
        p[24..28].copy_from_slice(&id.remote.bytes[..4]);
        p[40..44].copy_from_slice(&id.interface.to_ne_bytes());
        p[44..48].copy_from_slice(&(id.cookie as u32).to_ne_bytes());
        p[48..52].copy_from_slice(&((id.cookie >> 32) as u32).to_ne_bytes());
        p[56..60].copy_from_slice(&7u32.to_ne_bytes()); // rqueue
        if let Some(age) = age {
            let mut info = vec![0u8; 232];
            info[44..48].copy_from_slice(&age.to_ne_bytes());
            push_attribute(&mut p, 2, &info);
        }
        p
    }

    fn answers(datagram: &[u8]) -> Result<Vec<(u32, Answer)>, ParseError> {
        let mut out = Vec::new();
        decode_answers(datagram, |seq, a| out.push((seq, a)))?;
        Ok(out)
    }

    #[test]
    fn a_request_names_one_socket_and_asks_for_tcp_info() {
        let mut out = vec![1, 2, 3, 4];
        let id = identity();
        id.append_request(&mut out, 77);
        let msg = &out[4..];
        assert_eq!(msg.len(), NLMSG_HDRLEN + 56);
        assert_eq!(read_u32(msg, 0) as usize, msg.len());
        assert_eq!(read_u16(msg, 4), SOCK_DIAG_BY_FAMILY);
        assert_eq!(read_u16(msg, 6), REQUEST_FLAGS, "no NLM_F_DUMP");
        assert_eq!(read_u32(msg, 8), 77);
        let req = &msg[NLMSG_HDRLEN..];
        assert_eq!(req[0], libc::AF_INET as u8);
        assert_eq!(req[1], libc::IPPROTO_TCP as u8);
        assert_eq!(req[2], 1 << (2 - 1), "idiag_ext: INET_DIAG_INFO");
        let sockid = &req[8..];
        assert_eq!(&sockid[0..2], &8080u16.to_be_bytes(), "sport");
        assert_eq!(&sockid[2..4], &40000u16.to_be_bytes(), "dport");
        assert_eq!(&sockid[4..8], &[127, 0, 0, 1]);
        assert_eq!(&sockid[20..24], &[127, 0, 0, 2]);
        assert_eq!(read_u32(sockid, 36), 3, "the interface");
        assert_eq!(read_u32(sockid, 40), 0x2a2a, "cookie, low half first");
        assert_eq!(read_u32(sockid, 44), 1);

        // A second request follows the first, aligned, in the same buffer.
        let mut v6 = identity();
        v6.local = addr("::ffff:127.0.0.1");
        v6.remote = addr("::ffff:127.0.0.2");
        v6.append_request(&mut out, 78);
        let second = &out[4 + NLMSG_HDRLEN + 56..];
        assert_eq!(read_u32(second, 8), 78);
        assert_eq!(second[NLMSG_HDRLEN], libc::AF_INET6 as u8);
        assert_eq!(
            &second[NLMSG_HDRLEN + 8 + 4..NLMSG_HDRLEN + 8 + 20],
            &"::ffff:127.0.0.1"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets()
        );
    }

    #[test]
    fn a_reply_with_tcp_info_is_found_with_its_age() {
        let id = identity();
        let got = answers(&message(
            SOCK_DIAG_BY_FAMILY,
            9,
            &reply_payload(&id, Some(1234)),
        ))
        .unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, 9);
        assert_eq!(got[0].1.last_data_sent_ms(), Some(1234));
        let Answer::Found(r) = &got[0].1 else {
            panic!("{got:?}")
        };
        assert_eq!(SocketIdentity::of(r), id);
        assert_eq!((r.inode, r.rqueue), (0, 7));

        let got = answers(&message(SOCK_DIAG_BY_FAMILY, 9, &reply_payload(&id, None))).unwrap();
        assert!(matches!(got[0].1, Answer::Found(_)));
        assert_eq!(got[0].1.last_data_sent_ms(), None, "no tcp_info sent");
    }

    #[test]
    fn enoent_and_estale_mean_gone_other_errors_fail_and_acks_are_no_answer() {
        let mut datagram = error(1, -libc::ENOENT);
        datagram.extend(error(2, -libc::ESTALE));
        datagram.extend(error(3, -libc::EPERM));
        datagram.extend(error(4, 0));
        datagram.extend(error(5, 12345));
        let got = answers(&datagram).unwrap();
        assert_eq!(
            got,
            vec![
                (
                    1,
                    Answer::Gone {
                        errno: libc::ENOENT
                    }
                ),
                (
                    2,
                    Answer::Gone {
                        errno: libc::ESTALE
                    }
                ),
                (3, Answer::Failed(ParseError::Kernel { errno: libc::EPERM })),
                (
                    5,
                    Answer::Failed(ParseError::Malformed {
                        offset: 4 * 36,
                        what: "status code is not a negative errno"
                    })
                ),
            ]
        );
    }

    #[test]
    fn truncated_answers_fail_without_panicking() {
        let id = identity();
        let whole = message(SOCK_DIAG_BY_FAMILY, 3, &reply_payload(&id, Some(5)));
        // Cut anywhere: an answer for seq 3 that failed, or, shorter than
        // the sequence number, an error for the datagram.
        for cut in 0..whole.len() {
            let part = &whole[..cut];
            match answers(part) {
                Ok(got) if cut == 0 => assert!(got.is_empty()),
                Ok(got) => {
                    assert_eq!(got.len(), 1, "cut at {cut}");
                    assert_eq!(got[0].0, 3);
                    assert!(
                        matches!(got[0].1, Answer::Failed(ParseError::Truncated { .. })),
                        "cut at {cut}: {got:?}"
                    );
                }
                Err(e) => {
                    assert!(cut < 12, "cut at {cut}: {e}");
                    assert!(matches!(e, ParseError::Truncated { .. }));
                }
            }
        }
        // The message fits the datagram, but what it holds is short: a
        // payload shorter than inet_diag_msg, an attribute overrunning it,
        // an error without its status code.
        let short = message(SOCK_DIAG_BY_FAMILY, 4, &reply_payload(&id, None)[..40]);
        let mut overrun = reply_payload(&id, Some(5));
        overrun.truncate(overrun.len() - 8);
        let overrun = message(SOCK_DIAG_BY_FAMILY, 5, &overrun);
        let bare_error = message(NLMSG_ERROR, 6, &[0xff, 0xff]);
        for (datagram, seq) in [(short, 4), (overrun, 5), (bare_error, 6)] {
            let got = answers(&datagram).unwrap();
            assert_eq!(got.len(), 1);
            assert_eq!(got[0].0, seq);
            assert!(
                matches!(got[0].1, Answer::Failed(ParseError::Truncated { .. })),
                "{got:?}"
            );
        }
    }

    #[test]
    fn a_header_claiming_less_than_itself_or_an_unknown_family_fails() {
        let mut bad = error(8, -libc::ENOENT);
        bad[0..4].copy_from_slice(&4u32.to_ne_bytes());
        let got = answers(&bad).unwrap();
        assert!(matches!(
            got[..],
            [(8, Answer::Failed(ParseError::Malformed { .. }))]
        ));

        let mut payload = reply_payload(&identity(), Some(5));
        payload[0] = libc::AF_UNIX as u8;
        let got = answers(&message(SOCK_DIAG_BY_FAMILY, 9, &payload)).unwrap();
        assert!(matches!(
            got[..],
            [(9, Answer::Failed(ParseError::Malformed { .. }))]
        ));
    }

    #[test]
    fn a_reply_about_another_socket_is_not_taken_for_the_one_asked() {
        let id = identity();
        let mut other = id;
        other.cookie += 1;
        let r = match answers(&message(
            SOCK_DIAG_BY_FAMILY,
            1,
            &reply_payload(&other, Some(1)),
        ))
        .unwrap()
        .pop()
        {
            Some((_, Answer::Found(r))) => r,
            got => panic!("{got:?}"),
        };
        assert!(!same_socket(&id, &r));
        assert!(same_socket(&other, &r));
        let mut any = id;
        any.cookie = NO_COOKIE;
        assert!(same_socket(&any, &r));
    }
}
