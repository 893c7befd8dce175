//! Netlink framing shared by every sock_diag family: the request header,
//! the messages of a multipart dump reply (`NLMSG_DONE`, `NLMSG_ERROR`,
//! `NLMSG_OVERRUN`, `NLM_F_DUMP_INTR`, stale sequence numbers), and the
//! attribute walk, each checked for truncation.
//!
//! Nothing here knows what a reply describes: [`for_each_reply`] hands the
//! payload of every `SOCK_DIAG_BY_FAMILY` message to a family decoder
//! ([`super::inet`], [`super::unix`]) while it still lies in the receive
//! buffer, so decoding a dump allocates nothing.

/// Size of `struct nlmsghdr`.
pub const NLMSG_HDRLEN: usize = 16;
/// `SOCK_DIAG_BY_FAMILY`: the type of every sock_diag request and reply.
pub const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `TCPDIAG_GETSOCK`: the older inet_diag request, which dumps TCP sockets
/// of every family at once; its replies carry this type.
pub const TCPDIAG_GETSOCK: u16 = 18;
/// `NLM_F_REQUEST | NLM_F_DUMP` (`NLM_F_ROOT | NLM_F_MATCH`).
pub const DUMP_FLAGS: u16 = 0x01 | 0x300;

const NLMSG_NOOP: u16 = 1;
/// `NLMSG_ERROR`: a status code (0 for an acknowledgement) and the
/// request's header.
pub const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_OVERRUN: u16 = 4;
/// `NLM_F_REQUEST` alone: a request for one object, answered by one
/// message (the object, or an `NLMSG_ERROR`).
pub const REQUEST_FLAGS: u16 = 0x01;
/// The dump changed under the kernel while it was walked.
const NLM_F_DUMP_INTR: u16 = 0x10;

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
    /// Socket records handed to the caller.
    pub records: usize,
    /// Replies skipped because their family, state or kind is not one the
    /// decoder tracks (a future kernel, or a kind we did not ask for).
    pub skipped: usize,
    /// Messages belonging to another request (sequence mismatch), ignored.
    pub foreign: usize,
    /// `NLMSG_DONE` was seen: the dump is complete.
    pub done: bool,
}

/// What a family decoder made of one reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded {
    /// A record was handed on.
    Record,
    /// A well-formed reply the decoder does not track.
    Skipped,
}

pub(crate) fn read_u16(buf: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([buf[at], buf[at + 1]])
}

pub(crate) fn read_u32(buf: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Writes a dump request into `out` (replacing its contents): the netlink
/// header, then whatever `body` appends (the family's request struct and
/// its attributes).
pub fn encode_dump(out: &mut Vec<u8>, seq: u32, body: impl FnOnce(&mut Vec<u8>)) {
    encode_request(out, seq, SOCK_DIAG_BY_FAMILY, body);
}

/// [`encode_dump`] with another message type.
pub fn encode_request(out: &mut Vec<u8>, seq: u32, kind: u16, body: impl FnOnce(&mut Vec<u8>)) {
    out.clear();
    append_message(out, seq, kind, DUMP_FLAGS, body);
}

/// Appends one netlink message (header with these `flags`, then whatever
/// `body` appends, padded to 4 bytes) after what `out` already holds: one
/// `send` of the whole buffer hands the kernel every message in it.
pub fn append_message(
    out: &mut Vec<u8>,
    seq: u32,
    kind: u16,
    flags: u16,
    body: impl FnOnce(&mut Vec<u8>),
) {
    let start = out.len();
    out.extend_from_slice(&[0u8; NLMSG_HDRLEN]);
    body(out);
    let total = (out.len() - start) as u32;
    out[start..start + 4].copy_from_slice(&total.to_ne_bytes());
    out[start + 4..start + 6].copy_from_slice(&kind.to_ne_bytes());
    out[start + 6..start + 8].copy_from_slice(&flags.to_ne_bytes());
    out[start + 8..start + 12].copy_from_slice(&seq.to_ne_bytes());
    // nlmsg_pid 0: the kernel fills in our port id.
    out.resize(align4(out.len()), 0);
}

/// Appends one attribute (`struct nlattr` and its value, padded) to `out`.
/// `value` must be shorter than 65,532 bytes.
pub fn push_attribute(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = (4 + value.len()) as u16;
    out.extend_from_slice(&len.to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(value);
    out.resize(align4(out.len()), 0);
}

/// One netlink message of a datagram, checked to fit in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message<'b> {
    /// `nlmsg_type`.
    pub kind: u16,
    /// `nlmsg_flags`.
    pub flags: u16,
    /// `nlmsg_seq`: the sequence number of the request it answers.
    pub seq: u32,
    /// The bytes after the header, up to the message's length.
    pub payload: &'b [u8],
    /// Offset of the next message (the length padded to 4 bytes).
    pub next: usize,
}

/// The message starting at `offset` of `buf`; an error when its header
/// or its claimed length does not fit.
pub fn message_at(buf: &[u8], offset: usize) -> Result<Message<'_>, ParseError> {
    let available = buf.len().saturating_sub(offset);
    if available < NLMSG_HDRLEN {
        return Err(ParseError::Truncated {
            offset,
            what: "netlink header",
            needed: NLMSG_HDRLEN,
            available,
        });
    }
    let len = read_u32(buf, offset) as usize;
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
    Ok(Message {
        kind: read_u16(buf, offset + 4),
        flags: read_u16(buf, offset + 6),
        seq: read_u32(buf, offset + 8),
        payload: &buf[offset + NLMSG_HDRLEN..offset + len],
        next: offset + align4(len),
    })
}

/// Walks every message of one datagram, handing the payload of each
/// `SOCK_DIAG_BY_FAMILY` (or `TCPDIAG_GETSOCK`) reply and its offset in the
/// datagram to `decode`.
///
/// `seq` is the sequence number of our request; messages with another
/// number are counted as foreign and ignored (a late answer to an abandoned
/// request must not be mixed into this one).
pub fn for_each_reply<'b, F>(
    buf: &'b [u8],
    seq: u32,
    mut decode: F,
) -> Result<DatagramSummary, ParseError>
where
    F: FnMut(&'b [u8], usize) -> Result<Decoded, ParseError>,
{
    let mut summary = DatagramSummary::default();
    let mut offset = 0;
    while offset < buf.len() {
        let Message {
            kind,
            flags,
            seq: msg_seq,
            payload,
            next,
        } = message_at(buf, offset)?;

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
            SOCK_DIAG_BY_FAMILY | TCPDIAG_GETSOCK => {
                match decode(payload, offset + NLMSG_HDRLEN)? {
                    Decoded::Record => summary.records += 1,
                    Decoded::Skipped => summary.skipped += 1,
                }
            }
            _ => summary.skipped += 1,
        }
        offset = next;
    }
    Ok(summary)
}

/// Walks one datagram with [`for_each_reply`], decoding each reply with a
/// family's `decode` (`None`: a reply it does not track) and handing each
/// record to `on_record` while it still borrows the buffer.
pub fn decode_datagram<'b, R, D, F>(
    buf: &'b [u8],
    seq: u32,
    decode: D,
    mut on_record: F,
) -> Result<DatagramSummary, ParseError>
where
    D: Fn(&'b [u8], usize) -> Result<Option<R>, ParseError>,
    F: FnMut(&R),
{
    for_each_reply(buf, seq, |payload, base| {
        Ok(match decode(payload, base)? {
            Some(record) => {
                on_record(&record);
                Decoded::Record
            }
            None => Decoded::Skipped,
        })
    })
}

/// The error a non-zero status code stands for: a negative errno, or, for
/// anything else, a damaged message.
pub(crate) fn kernel_error(code: i32, offset: usize) -> ParseError {
    match code.checked_neg() {
        Some(errno) if errno > 0 => ParseError::Kernel { errno },
        _ => ParseError::Malformed {
            offset,
            what: "status code is not a negative errno",
        },
    }
}

pub(crate) fn error_code(payload: &[u8], offset: usize) -> Result<i32, ParseError> {
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

/// Walks the attributes (`struct nlattr`) in `attrs`, calling `on_attr`
/// with each one's type (flag bits cleared) and value. `base` is the
/// offset of `attrs` in the datagram, for error messages.
pub fn for_each_attribute<'a, F>(
    attrs: &'a [u8],
    base: usize,
    mut on_attr: F,
) -> Result<(), ParseError>
where
    F: FnMut(u16, &'a [u8]),
{
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
        on_attr(kind, &attrs[offset + 4..offset + len]);
        offset += align4(len);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_round_trip_with_padding() {
        let mut buf = Vec::new();
        push_attribute(&mut buf, 1, b"abc");
        push_attribute(&mut buf, 0x8004, &7u32.to_ne_bytes());
        assert_eq!(buf.len(), 8 + 8, "3 bytes pad to 4");
        let mut seen = Vec::new();
        for_each_attribute(&buf, 0, |k, v| seen.push((k, v.to_vec()))).unwrap();
        assert_eq!(
            seen,
            vec![(1, b"abc".to_vec()), (4, 7u32.to_ne_bytes().to_vec())],
            "flag bits are cleared"
        );
    }

    #[test]
    fn a_request_header_frames_its_body() {
        let mut out = vec![9; 3];
        encode_dump(&mut out, 42, |b| b.extend_from_slice(&[1, 2, 3, 4]));
        assert_eq!(out.len(), 20);
        assert_eq!(read_u32(&out, 0), 20);
        assert_eq!(read_u16(&out, 4), SOCK_DIAG_BY_FAMILY);
        assert_eq!(read_u16(&out, 6), DUMP_FLAGS);
        assert_eq!(read_u32(&out, 8), 42);
        assert_eq!(&out[16..], &[1, 2, 3, 4]);
    }
}
