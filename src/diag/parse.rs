//! Decoding of sock_diag dump datagrams without allocation.
//!
//! A datagram holds several netlink messages; each inet_diag reply is a fixed
//! `inet_diag_msg` header (decoded by the `netlink-packet-sock-diag` crate's
//! [`InetResponseHeader`]) followed by attributes, which we walk here by
//! offset. The crate's full message parser is not used on purpose: it boxes
//! every reply and builds a vector of attributes, about eight allocations per
//! socket (see the README's "Why not the full parser").

use netlink_packet_core::Parseable;
use netlink_packet_sock_diag::inet::InetResponseHeader;

use super::record::{Family, RawAddr, SockRecord, TcpState};

/// `NLMSG_NOOP`
const NLMSG_NOOP: u16 = 1;
/// `NLMSG_ERROR`
const NLMSG_ERROR: u16 = 2;
/// `NLMSG_DONE`
const NLMSG_DONE: u16 = 3;
/// `NLMSG_OVERRUN`
const NLMSG_OVERRUN: u16 = 4;
/// `SOCK_DIAG_BY_FAMILY`: the type of every inet_diag reply.
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `NLM_F_DUMP_INTR`: the dump changed under the kernel while it was walked.
const NLM_F_DUMP_INTR: u16 = 0x10;

/// Size of `struct nlmsghdr`.
const NLMSG_HDRLEN: usize = 16;
/// Size of `struct inet_diag_msg`.
const INET_DIAG_MSG_LEN: usize = 72;

/// `INET_DIAG_INFO`: `struct tcp_info`.
pub const INET_DIAG_INFO: u16 = 2;
/// `INET_DIAG_SKMEMINFO`: `u32 [SK_MEMINFO_VARS]`.
pub const INET_DIAG_SKMEMINFO: u16 = 7;
/// Index of `SK_MEMINFO_DROPS` in the skmeminfo array.
const SK_MEMINFO_DROPS: usize = 8;
/// Offset of `tcpi_last_data_sent` in `struct tcp_info`: 8 bytes of u8
/// fields, then u32s `rto ato snd_mss rcv_mss unacked sacked lost retrans
/// fackets`, then `last_data_sent`. Stable since Linux 2.6.
const TCPI_LAST_DATA_SENT_OFFSET: usize = 44;

/// Why a datagram could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// A message or attribute claims more bytes than the datagram holds.
    #[error("truncated reply at byte {offset}: {what} needs {needed} bytes, {available} left")]
    Truncated {
        /// Byte offset in the datagram where the short item starts.
        offset: usize,
        /// What was being read.
        what: &'static str,
        /// Bytes the item needs.
        needed: usize,
        /// Bytes the datagram had left.
        available: usize,
    },
    /// A length field is impossible (smaller than its own header).
    #[error("malformed reply at byte {offset}: {what}")]
    Malformed {
        /// Byte offset in the datagram.
        offset: usize,
        /// What is wrong.
        what: &'static str,
    },
    /// The kernel answered with `NLMSG_ERROR` or a negative `NLMSG_DONE`.
    #[error("kernel returned error {errno} ({})", std::io::Error::from_raw_os_error(*errno))]
    Kernel {
        /// The positive errno.
        errno: i32,
    },
    /// The kernel flagged the dump as inconsistent (`NLM_F_DUMP_INTR`).
    #[error("dump interrupted by concurrent changes (NLM_F_DUMP_INTR)")]
    Interrupted,
    /// The kernel dropped messages (`NLMSG_OVERRUN`).
    #[error("netlink overrun: the kernel dropped part of the dump")]
    Overrun,
}

/// What a datagram told us beyond its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DatagramSummary {
    /// Socket records handed to the callback.
    pub records: usize,
    /// Replies skipped because their family or state is not one we know
    /// (a future kernel, or a family we did not ask for).
    pub skipped: usize,
    /// Messages belonging to another request (sequence mismatch), ignored.
    pub foreign: usize,
    /// `NLMSG_DONE` was seen: the dump is complete.
    pub done: bool,
}

fn read_u16(buf: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([buf[at], buf[at + 1]])
}

fn read_u32(buf: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Decodes every message of one datagram, calling `on_record` for each socket.
///
/// `seq` is the sequence number of our request; messages with another
/// number are counted as foreign and ignored (a late answer to an abandoned
/// request must not be mixed into this one).
pub fn parse_datagram<F>(
    buf: &[u8],
    seq: u32,
    mut on_record: F,
) -> Result<DatagramSummary, ParseError>
where
    F: FnMut(&SockRecord),
{
    let mut summary = DatagramSummary::default();
    let mut offset = 0;
    while offset < buf.len() {
        let available = buf.len() - offset;
        if available < NLMSG_HDRLEN {
            return Err(ParseError::Truncated {
                offset,
                what: "netlink header",
                needed: NLMSG_HDRLEN,
                available,
            });
        }
        let len = read_u32(buf, offset) as usize;
        let kind = read_u16(buf, offset + 4);
        let flags = read_u16(buf, offset + 6);
        let msg_seq = read_u32(buf, offset + 8);
        if len < NLMSG_HDRLEN {
            return Err(ParseError::Malformed {
                offset,
                what: "netlink message shorter than its header",
            });
        }
        if len > available {
            return Err(ParseError::Truncated {
                offset,
                what: "netlink message",
                needed: len,
                available,
            });
        }
        let payload = &buf[offset + NLMSG_HDRLEN..offset + len];
        let next = offset + align4(len);

        if msg_seq != seq {
            summary.foreign += 1;
            offset = next;
            continue;
        }
        if flags & NLM_F_DUMP_INTR != 0 {
            return Err(ParseError::Interrupted);
        }
        match kind {
            NLMSG_NOOP => {}
            NLMSG_ERROR => {
                let code = error_code(payload, offset)?;
                // Code 0 is an acknowledgement; errors are negative errnos.
                if code != 0 {
                    return Err(kernel_error(code, offset));
                }
            }
            NLMSG_DONE => {
                // Kernels since 2.6 put the dump's final status here; a
                // bare DONE without it is a success.
                if payload.len() >= 4 {
                    let code = read_u32(payload, 0) as i32;
                    if code != 0 {
                        return Err(kernel_error(code, offset));
                    }
                }
                summary.done = true;
                return Ok(summary);
            }
            NLMSG_OVERRUN => return Err(ParseError::Overrun),
            SOCK_DIAG_BY_FAMILY => match parse_inet_reply(payload, offset + NLMSG_HDRLEN)? {
                Some(record) => {
                    summary.records += 1;
                    on_record(&record);
                }
                None => summary.skipped += 1,
            },
            _ => summary.skipped += 1,
        }
        offset = next;
    }
    Ok(summary)
}

/// The error a non-zero status code stands for: a negative errno, or, for
/// anything else, a damaged message.
fn kernel_error(code: i32, offset: usize) -> ParseError {
    match code.checked_neg() {
        Some(errno) if errno > 0 => ParseError::Kernel { errno },
        _ => ParseError::Malformed {
            offset,
            what: "status code is not a negative errno",
        },
    }
}

fn error_code(payload: &[u8], offset: usize) -> Result<i32, ParseError> {
    if payload.len() < 4 {
        return Err(ParseError::Truncated {
            offset,
            what: "netlink error code",
            needed: 4,
            available: payload.len(),
        });
    }
    Ok(read_u32(payload, 0) as i32)
}

/// Decodes one inet_diag reply. `None` means a well-formed reply we do not
/// track (unknown family or state); errors mean the bytes are damaged.
/// `base` is the payload's offset in the datagram, for error messages.
pub fn parse_inet_reply(payload: &[u8], base: usize) -> Result<Option<SockRecord>, ParseError> {
    if payload.len() < INET_DIAG_MSG_LEN {
        return Err(ParseError::Truncated {
            offset: base,
            what: "inet_diag_msg",
            needed: INET_DIAG_MSG_LEN,
            available: payload.len(),
        });
    }
    let (Some(family), Some(state)) =
        (Family::from_raw(payload[0]), TcpState::from_raw(payload[1]))
    else {
        return Ok(None);
    };
    // Family and length were checked above, so the crate's parse cannot fail
    // here; should a future version disagree, treat the reply as damaged.
    let header = InetResponseHeader::parse(payload).map_err(|_| ParseError::Malformed {
        offset: base,
        what: "inet_diag_msg header rejected",
    })?;
    let id = &header.socket_id;
    let cookie_lo = u32::from_ne_bytes([id.cookie[0], id.cookie[1], id.cookie[2], id.cookie[3]]);
    let cookie_hi = u32::from_ne_bytes([id.cookie[4], id.cookie[5], id.cookie[6], id.cookie[7]]);
    let mut record = SockRecord {
        state,
        local: RawAddr::from_ip(id.source_address),
        local_port: id.source_port,
        remote: RawAddr::from_ip(id.destination_address),
        remote_port: id.destination_port,
        rqueue: header.recv_queue,
        wqueue: header.send_queue,
        inode: header.inode,
        uid: header.uid,
        cookie: u64::from(cookie_lo) | (u64::from(cookie_hi) << 32),
        drops: None,
        last_data_sent_ms: None,
    };
    // The crate builds addresses from the family byte, so they agree with it.
    debug_assert_eq!(record.local.family, family);
    walk_attributes(
        &payload[INET_DIAG_MSG_LEN..],
        base + INET_DIAG_MSG_LEN,
        &mut record,
    )?;
    Ok(Some(record))
}

/// Reads the attributes we use; unknown ones are skipped, and known ones
/// shorter than we need are ignored, since other kernels send other sizes.
fn walk_attributes(attrs: &[u8], base: usize, record: &mut SockRecord) -> Result<(), ParseError> {
    let mut offset = 0;
    while offset < attrs.len() {
        let available = attrs.len() - offset;
        if available < 4 {
            return Err(ParseError::Truncated {
                offset: base + offset,
                what: "attribute header",
                needed: 4,
                available,
            });
        }
        let len = read_u16(attrs, offset) as usize;
        // Bits 15 and 14 are NLA_F_NESTED / NLA_F_NET_BYTEORDER.
        let kind = read_u16(attrs, offset + 2) & 0x3fff;
        if len < 4 {
            return Err(ParseError::Malformed {
                offset: base + offset,
                what: "attribute shorter than its header",
            });
        }
        if len > available {
            return Err(ParseError::Truncated {
                offset: base + offset,
                what: "attribute",
                needed: len,
                available,
            });
        }
        let value = &attrs[offset + 4..offset + len];
        match kind {
            INET_DIAG_SKMEMINFO if value.len() >= (SK_MEMINFO_DROPS + 1) * 4 => {
                record.drops = Some(read_u32(value, SK_MEMINFO_DROPS * 4));
            }
            INET_DIAG_INFO if value.len() >= TCPI_LAST_DATA_SENT_OFFSET + 4 => {
                record.last_data_sent_ms = Some(read_u32(value, TCPI_LAST_DATA_SENT_OFFSET));
            }
            _ => {}
        }
        offset += align4(len);
    }
    Ok(())
}
