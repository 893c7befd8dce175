//! inet_diag dump requests as small typed values, and their wire form.

use std::fmt;

use netlink_packet_core::Emitable;
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};

use super::parse::{INET_DIAG_INFO, INET_DIAG_SKMEMINFO};
use super::record::{Family, TcpState};

/// A port filter with more ports than one bytecode program can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("port filter of {0} ports exceeds the {MAX_FILTER_PORTS} one request can carry")]
pub struct TooManyPorts(pub usize);

/// `NLM_F_REQUEST | NLM_F_DUMP`
const DUMP_FLAGS: u16 = 0x01 | 0x300;
/// `SOCK_DIAG_BY_FAMILY`
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `INET_DIAG_REQ_BYTECODE`: a filter program appended to the request.
const INET_DIAG_REQ_BYTECODE: u16 = 1;
/// `INET_DIAG_BC_JMP`: unconditional jump by `no`.
const INET_DIAG_BC_JMP: u8 = 1;
/// `INET_DIAG_BC_S_EQ`: local port equals the port in the next op's `no`.
const INET_DIAG_BC_S_EQ: u8 = 11;
/// Size of `struct inet_diag_bc_op`.
const BC_OP_LEN: usize = 4;

/// Which sockets a dump asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateSet {
    /// Only `LISTEN`: the kernel walks the listening hash alone, so the cost
    /// follows the number of listeners, not connections.
    Listeners,
    /// Every state but `LISTEN` (including SYN-RECV requests and TIME-WAIT).
    Connections,
}

impl StateSet {
    fn mask(self) -> u32 {
        match self {
            StateSet::Listeners => TcpState::Listen.bit(),
            StateSet::Connections => {
                TcpState::CONNECTION_STATES.iter().fold(0, |m, s| m | s.bit())
                    // NEW_SYN_RECV (12): kernels map the SYN_RECV bit to it,
                    // but asking explicitly costs nothing and helps old ones.
                    | (1 << 12)
            }
        }
    }

    fn name(self) -> &'static str {
        match self {
            StateSet::Listeners => "listeners",
            StateSet::Connections => "connections",
        }
    }
}

/// A TCP dump request for one address family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpRequest<'a> {
    /// Address family to dump.
    pub family: Family,
    /// States to dump.
    pub states: StateSet,
    /// Ask for `INET_DIAG_SKMEMINFO` (drop counter).
    pub meminfo: bool,
    /// Ask for `INET_DIAG_INFO` (`tcp_info`).
    pub tcp_info: bool,
    /// Only sockets whose local port is one of these (kernel-side filter);
    /// empty means no filter.
    pub local_ports: &'a [u16],
}

impl fmt::Display for DumpRequest<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "TCP {} dump of {}",
            self.family.as_str(),
            self.states.name()
        )?;
        if !self.local_ports.is_empty() {
            write!(f, " on {} local port(s)", self.local_ports.len())?;
        }
        Ok(())
    }
}

impl DumpRequest<'_> {
    /// Writes the whole netlink message (header, `inet_diag_req_v2`, optional
    /// bytecode) into `out`, replacing its contents. Fails only for a port
    /// filter longer than [`MAX_FILTER_PORTS`].
    pub fn encode(&self, seq: u32, out: &mut Vec<u8>) -> Result<(), TooManyPorts> {
        let mut extensions = ExtensionFlags::empty();
        if self.meminfo {
            extensions |= ExtensionFlags::SKMEMINFO;
        }
        if self.tcp_info {
            extensions |= ExtensionFlags::INFO;
        }
        debug_assert_eq!(
            ExtensionFlags::SKMEMINFO.bits(),
            1 << (INET_DIAG_SKMEMINFO - 1)
        );
        debug_assert_eq!(ExtensionFlags::INFO.bits(), 1 << (INET_DIAG_INFO - 1));
        let body = InetRequest {
            family: self.family.raw(),
            protocol: libc::IPPROTO_TCP as u8,
            extensions,
            states: StateFlags::from_bits_retain(self.states.mask()),
            socket_id: match self.family {
                Family::Ipv4 => SocketId::new_v4(),
                Family::Ipv6 => SocketId::new_v6(),
            },
        };
        out.clear();
        out.extend_from_slice(&[0u8; 16]);
        let start = out.len();
        out.resize(start + body.buffer_len(), 0);
        body.emit(&mut out[start..]);
        if !self.local_ports.is_empty() {
            let program =
                port_filter(self.local_ports).ok_or(TooManyPorts(self.local_ports.len()))?;
            // At most MAX_FILTER_PORTS * 12 + 4 bytes: fits a u16.
            let nla_len = (4 + program.len()) as u16;
            out.extend_from_slice(&nla_len.to_ne_bytes());
            out.extend_from_slice(&INET_DIAG_REQ_BYTECODE.to_ne_bytes());
            out.extend_from_slice(&program);
        }
        let total = out.len() as u32;
        out[0..4].copy_from_slice(&total.to_ne_bytes());
        out[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        out[6..8].copy_from_slice(&DUMP_FLAGS.to_ne_bytes());
        out[8..12].copy_from_slice(&seq.to_ne_bytes());
        // nlmsg_pid 0: the kernel fills in our port id.
        Ok(())
    }
}

/// Builds an inet_diag bytecode program accepting sockets whose local port
/// is in `ports`.
///
/// The kernel runs the program from the start: an op that matches jumps
/// `yes` bytes, one that fails jumps `no` bytes; landing exactly on the end
/// accepts the socket, jumping past it rejects it. Its audit
/// (`inet_diag_bc_audit`/`valid_cc`) also insists that every jump target is
/// reachable by following `yes` offsets from the start. So each port is a
/// 12-byte block `S_EQ(yes=8, no=12)`, a carrier op holding the port in its
/// `no` field, and `JMP(yes=4, no=distance to end)`: a match reaches the JMP
/// and accepts; a miss moves to the next block; the last block's miss
/// overshoots the end and rejects.
///
/// ```
/// use sockdiag_exporter::diag::request::{MAX_FILTER_PORTS, port_filter};
///
/// let program = port_filter(&[80, 443]).unwrap();
/// assert_eq!(program.len(), 2 * 12);
/// // First block: S_EQ (code 11) jumping 8 bytes on a match, 12 on a miss.
/// assert_eq!(&program[..2], &[11, 8]);
/// assert_eq!(u16::from_ne_bytes([program[2], program[3]]), 12);
/// // The last block's miss overshoots the end (12 + 4): the socket is rejected.
/// assert_eq!(u16::from_ne_bytes([program[14], program[15]]), 16);
/// assert!(port_filter(&vec![1; MAX_FILTER_PORTS + 1]).is_none());
/// ```
pub fn port_filter(ports: &[u16]) -> Option<Vec<u8>> {
    const BLOCK: usize = 3 * BC_OP_LEN;
    if ports.len() > MAX_FILTER_PORTS {
        return None;
    }
    let total = ports.len() * BLOCK;
    let mut program = Vec::with_capacity(total);
    for (i, port) in ports.iter().enumerate() {
        let remaining = total - i * BLOCK;
        let miss = if i + 1 == ports.len() {
            BLOCK + 4
        } else {
            BLOCK
        };
        push_op(
            &mut program,
            INET_DIAG_BC_S_EQ,
            2 * BC_OP_LEN as u8,
            miss as u16,
        );
        push_op(&mut program, 0, 0, *port);
        push_op(
            &mut program,
            INET_DIAG_BC_JMP,
            BC_OP_LEN as u8,
            // Below 12 * MAX_FILTER_PORTS, so within a u16.
            (remaining - 2 * BC_OP_LEN) as u16,
        );
    }
    Some(program)
}

fn push_op(program: &mut Vec<u8>, code: u8, yes: u8, no: u16) {
    program.push(code);
    program.push(yes);
    program.extend_from_slice(&no.to_ne_bytes());
}

/// The most ports one bytecode program may test: the final `JMP` must reach
/// the end with a 16-bit offset, and the kernel caps the attribute at 64 KiB.
pub const MAX_FILTER_PORTS: usize = 4096;
