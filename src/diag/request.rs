//! inet_diag dump requests as small typed values, and their wire form.

use std::fmt;

use netlink_packet_core::Emitable;
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};

use super::filter::PortFilter;
use super::parse::{INET_DIAG_INFO, INET_DIAG_SKMEMINFO};
use super::record::{Family, TcpState};

/// `NLM_F_REQUEST | NLM_F_DUMP`
const DUMP_FLAGS: u16 = 0x01 | 0x300;
/// `SOCK_DIAG_BY_FAMILY`
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `INET_DIAG_REQ_BYTECODE`: a filter program appended to the request.
const INET_DIAG_REQ_BYTECODE: u16 = 1;

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
    /// A kernel-side port filter, if any.
    pub filter: Option<&'a PortFilter>,
}

impl fmt::Display for DumpRequest<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "TCP {} dump of {}",
            self.family.as_str(),
            self.states.name()
        )?;
        if let Some(filter) = self.filter {
            write!(f, ", {filter}")?;
        }
        Ok(())
    }
}

impl DumpRequest<'_> {
    /// Writes the whole netlink message (header, `inet_diag_req_v2`, optional
    /// bytecode) into `out`, replacing its contents.
    pub fn encode(&self, seq: u32, out: &mut Vec<u8>) {
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
        if let Some(filter) = self.filter {
            let program = filter.program();
            // PortFilter bounds its ports so that this fits a u16.
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
    }
}
