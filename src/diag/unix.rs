//! unix_diag: the dump request for listening unix sockets, and the decoder
//! of its replies into [`UnixRecord`]s that borrow the receive buffer.
//!
//! A reply is a fixed `unix_diag_msg` (decoded by the
//! `netlink-packet-sock-diag` crate's [`UnixResponseHeader`]) followed by
//! the attributes asked for: `UNIX_DIAG_NAME` (the bound path or abstract
//! name), `UNIX_DIAG_RQLEN` (for a listener: connections waiting to be
//! accepted, and its backlog) and `UNIX_DIAG_UID`. The kernel walks every
//! unix socket of the namespace and filters by state, so a dump costs in
//! proportion to all unix sockets, not to listeners.

use std::fmt;

use netlink_packet_core::{Emitable, Parseable};
use netlink_packet_sock_diag::unix::{ShowFlags, StateFlags, UnixRequest, UnixResponseHeader};

use super::netlink::{
    DatagramSummary, ParseError, decode_datagram, encode_dump, for_each_attribute, read_u32,
};

/// Size of `struct unix_diag_msg`.
const UNIX_DIAG_MSG_LEN: usize = 16;
/// `UNIX_DIAG_NAME`: the address, without its family.
const UNIX_DIAG_NAME: u16 = 0;
/// `UNIX_DIAG_RQLEN`: two u32, receive-queue length and its limit.
const UNIX_DIAG_RQLEN: u16 = 4;
/// `UNIX_DIAG_UID` (Linux 5.3+): the owner's uid.
const UNIX_DIAG_UID: u16 = 7;
/// `UDIAG_SHOW_UID`, which the crate's flags lack. Not `1 << UNIX_DIAG_UID`:
/// `UNIX_DIAG_SHUTDOWN` (6) has no show flag, so the flags and the
/// attribute numbers part ways there.
const UDIAG_SHOW_UID: u32 = 0x40;
/// `TCP_LISTEN`, the state unix sockets borrow for listening.
const STATE_LISTEN: u8 = 10;
/// The longest `sun_path`.
pub const MAX_NAME: usize = 108;

/// The longest name the kernel reports: a path that fills `sun_path`
/// (108 bytes, no NUL, which `bind()` accepts) comes back with the NUL the
/// kernel appended when binding, 109 bytes.
fn longest_name(name: &[u8]) -> usize {
    if name.first().is_some_and(|&b| b != 0) && name.last() == Some(&0) {
        MAX_NAME + 1
    } else {
        MAX_NAME
    }
}

/// The kinds of unix socket that can listen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UnixKind {
    /// `SOCK_STREAM`
    Stream,
    /// `SOCK_SEQPACKET`
    Seqpacket,
}

impl UnixKind {
    fn from_raw(raw: u8) -> Option<Self> {
        match i32::from(raw) {
            libc::SOCK_STREAM => Some(UnixKind::Stream),
            libc::SOCK_SEQPACKET => Some(UnixKind::Seqpacket),
            _ => None,
        }
    }

    /// `stream` or `seqpacket`, as `ss` names them (`u_str`, `u_seq`).
    pub fn as_str(self) -> &'static str {
        match self {
            UnixKind::Stream => "stream",
            UnixKind::Seqpacket => "seqpacket",
        }
    }
}

/// A dump of every listening unix socket of the namespace, with name,
/// queue lengths and owner uid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UnixListenersRequest;

impl fmt::Display for UnixListenersRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("unix dump of listeners")
    }
}

impl UnixListenersRequest {
    /// Writes the whole netlink message into `out`, replacing its contents.
    pub fn encode(&self, seq: u32, out: &mut Vec<u8>) {
        let body = UnixRequest {
            state_flags: StateFlags::LISTEN,
            inode: 0,
            show_flags: ShowFlags::from_bits_retain(
                (ShowFlags::NAME | ShowFlags::RQLEN).bits() | UDIAG_SHOW_UID,
            ),
            // All ones: "no particular socket".
            cookie: [0xff; 8],
        };
        encode_dump(out, seq, |out| {
            let start = out.len();
            out.resize(start + body.buffer_len(), 0);
            body.emit(&mut out[start..]);
        });
    }
}

/// One listening unix socket, borrowed from the receive buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnixRecord<'a> {
    /// Stream or seqpacket.
    pub kind: UnixKind,
    /// Socket inode (what `/proc/PID/fd` links name).
    pub inode: u32,
    /// The kernel's socket cookie.
    pub cookie: u64,
    /// The address as the kernel holds it: a path (possibly with a trailing
    /// NUL), or a leading NUL and an abstract name. Empty when unbound.
    pub name: &'a [u8],
    /// Connections waiting to be accepted; `None` if the kernel did not
    /// send `UNIX_DIAG_RQLEN`.
    pub queue_length: Option<u32>,
    /// The backlog (`sk_max_ack_backlog`); full when length > limit.
    pub queue_limit: Option<u32>,
    /// Owner uid (Linux 5.3+).
    pub uid: Option<u32>,
}

/// Decodes every message of one datagram of a unix_diag dump, calling
/// `on_record` for each listening stream or seqpacket socket.
pub fn parse_datagram<F>(buf: &[u8], seq: u32, on_record: F) -> Result<DatagramSummary, ParseError>
where
    F: FnMut(&UnixRecord<'_>),
{
    decode_datagram(buf, seq, parse_unix_reply, on_record)
}

/// Decodes one unix_diag reply. `None` means a well-formed reply we do not
/// track (another family, a kind that cannot listen, or not listening);
/// errors mean the bytes are damaged. `base` is the payload's offset in the
/// datagram, for error messages.
pub fn parse_unix_reply(payload: &[u8], base: usize) -> Result<Option<UnixRecord<'_>>, ParseError> {
    if payload.len() < UNIX_DIAG_MSG_LEN {
        return Err(ParseError::Truncated {
            offset: base,
            what: "unix_diag_msg",
            needed: UNIX_DIAG_MSG_LEN,
            available: payload.len(),
        });
    }
    if i32::from(payload[0]) != libc::AF_UNIX {
        return Ok(None);
    }
    let header = UnixResponseHeader::parse(payload).map_err(|_| ParseError::Malformed {
        offset: base,
        what: "unix_diag_msg header rejected",
    })?;
    let Some(kind) = UnixKind::from_raw(header.kind) else {
        return Ok(None);
    };
    if header.state != STATE_LISTEN {
        return Ok(None);
    }
    let cookie_lo = read_u32(&header.cookie, 0);
    let cookie_hi = read_u32(&header.cookie, 4);
    let mut record = UnixRecord {
        kind,
        inode: header.inode,
        cookie: u64::from(cookie_lo) | (u64::from(cookie_hi) << 32),
        name: &[],
        queue_length: None,
        queue_limit: None,
        uid: None,
    };
    let attrs = &payload[UNIX_DIAG_MSG_LEN..];
    let mut name_too_long = false;
    for_each_attribute(attrs, base + UNIX_DIAG_MSG_LEN, |kind, value| match kind {
        UNIX_DIAG_NAME if value.len() > longest_name(value) => name_too_long = true,
        UNIX_DIAG_NAME => record.name = value,
        UNIX_DIAG_RQLEN if value.len() >= 8 => {
            record.queue_length = Some(read_u32(value, 0));
            record.queue_limit = Some(read_u32(value, 4));
        }
        UNIX_DIAG_UID if value.len() >= 4 => record.uid = Some(read_u32(value, 0)),
        _ => {}
    })?;
    if name_too_long {
        return Err(ParseError::Malformed {
            offset: base + UNIX_DIAG_MSG_LEN,
            what: "unix socket name longer than sun_path",
        });
    }
    Ok(Some(record))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diag::netlink::push_attribute;

    fn reply(kind: u8, state: u8, attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut p = vec![libc::AF_UNIX as u8, kind, state, 0];
        p.extend_from_slice(&77u32.to_ne_bytes());
        p.extend_from_slice(&5u32.to_ne_bytes());
        p.extend_from_slice(&1u32.to_ne_bytes());
        for (k, v) in attrs {
            push_attribute(&mut p, *k, v);
        }
        p
    }

    #[test]
    fn a_listener_reply_decodes() {
        let mut rq = 9u32.to_ne_bytes().to_vec();
        rq.extend_from_slice(&8u32.to_ne_bytes());
        let p = reply(
            libc::SOCK_SEQPACKET as u8,
            STATE_LISTEN,
            &[
                (UNIX_DIAG_NAME, b"/run/app.sock\0"),
                (UNIX_DIAG_RQLEN, &rq),
                (UNIX_DIAG_UID, &1000u32.to_ne_bytes()),
            ],
        );
        let r = parse_unix_reply(&p, 0).unwrap().unwrap();
        assert_eq!(r.kind, UnixKind::Seqpacket);
        assert_eq!((r.inode, r.cookie), (77, (1 << 32) | 5));
        assert_eq!(r.name, b"/run/app.sock\0");
        assert_eq!((r.queue_length, r.queue_limit), (Some(9), Some(8)));
        assert_eq!(r.uid, Some(1000));
    }

    #[test]
    fn datagram_sockets_and_non_listeners_are_skipped() {
        let dgram = reply(libc::SOCK_DGRAM as u8, STATE_LISTEN, &[]);
        assert_eq!(parse_unix_reply(&dgram, 0), Ok(None));
        let established = reply(libc::SOCK_STREAM as u8, 1, &[]);
        assert_eq!(parse_unix_reply(&established, 0), Ok(None));
    }

    #[test]
    fn a_name_longer_than_sun_path_is_damage() {
        let p = reply(
            libc::SOCK_STREAM as u8,
            STATE_LISTEN,
            &[(UNIX_DIAG_NAME, &[b'a'; MAX_NAME + 1])],
        );
        assert!(matches!(
            parse_unix_reply(&p, 0),
            Err(ParseError::Malformed { .. })
        ));
    }
}
