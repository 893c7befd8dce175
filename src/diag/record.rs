//! One socket as the kernel described it in an inet_diag reply.
//!
//! A [`SockRecord`] is a plain `Copy` value decoded in place from the
//! receive buffer: producing one allocates nothing, which is what keeps a
//! dump of a million sockets cheap.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// `AF_INET` as the kernel reports it in `idiag_family`.
pub const AF_INET: u8 = libc::AF_INET as u8;
/// `AF_INET6` as the kernel reports it in `idiag_family`.
pub const AF_INET6: u8 = libc::AF_INET6 as u8;

/// Address family of a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// IPv4 (`AF_INET`).
    Ipv4,
    /// IPv6 (`AF_INET6`), including dual-stack sockets bound to `::`.
    Ipv6,
}

impl Family {
    /// Maps the kernel's family number; `None` for anything but INET/INET6.
    pub fn from_raw(raw: u8) -> Option<Self> {
        match raw {
            AF_INET => Some(Family::Ipv4),
            AF_INET6 => Some(Family::Ipv6),
            _ => None,
        }
    }

    /// The kernel's family number.
    pub fn raw(self) -> u8 {
        match self {
            Family::Ipv4 => AF_INET,
            Family::Ipv6 => AF_INET6,
        }
    }

    /// The `family` label value: `ipv4` or `ipv6`.
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Ipv4 => "ipv4",
            Family::Ipv6 => "ipv6",
        }
    }
}

/// TCP states as numbered by the kernel (`include/net/tcp_states.h`).
///
/// `NEW_SYN_RECV` request sockets are reported by inet_diag as `SYN_RECV`, so
/// they need no variant of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum TcpState {
    /// `TCP_ESTABLISHED`
    Established = 1,
    /// `TCP_SYN_SENT`
    SynSent = 2,
    /// `TCP_SYN_RECV`
    SynRecv = 3,
    /// `TCP_FIN_WAIT1`
    FinWait1 = 4,
    /// `TCP_FIN_WAIT2`
    FinWait2 = 5,
    /// `TCP_TIME_WAIT`
    TimeWait = 6,
    /// `TCP_CLOSE`
    Close = 7,
    /// `TCP_CLOSE_WAIT`
    CloseWait = 8,
    /// `TCP_LAST_ACK`
    LastAck = 9,
    /// `TCP_LISTEN`
    Listen = 10,
    /// `TCP_CLOSING`
    Closing = 11,
}

impl TcpState {
    /// Every connection state (all but `Listen`), in the order used for
    /// per-state arrays and for rendering.
    pub const CONNECTION_STATES: [TcpState; 10] = [
        TcpState::Established,
        TcpState::SynSent,
        TcpState::SynRecv,
        TcpState::FinWait1,
        TcpState::FinWait2,
        TcpState::TimeWait,
        TcpState::Close,
        TcpState::CloseWait,
        TcpState::LastAck,
        TcpState::Closing,
    ];

    /// Maps the kernel's state number (`NEW_SYN_RECV`, 12, maps to `SynRecv`).
    pub fn from_raw(raw: u8) -> Option<Self> {
        Some(match raw {
            1 => TcpState::Established,
            2 => TcpState::SynSent,
            3 | 12 => TcpState::SynRecv,
            4 => TcpState::FinWait1,
            5 => TcpState::FinWait2,
            6 => TcpState::TimeWait,
            7 => TcpState::Close,
            8 => TcpState::CloseWait,
            9 => TcpState::LastAck,
            10 => TcpState::Listen,
            11 => TcpState::Closing,
            _ => return None,
        })
    }

    /// The `state` label value, lower case as in `ss` but with underscores.
    pub fn as_str(self) -> &'static str {
        match self {
            TcpState::Established => "established",
            TcpState::SynSent => "syn_sent",
            TcpState::SynRecv => "syn_recv",
            TcpState::FinWait1 => "fin_wait1",
            TcpState::FinWait2 => "fin_wait2",
            TcpState::TimeWait => "time_wait",
            TcpState::Close => "close",
            TcpState::CloseWait => "close_wait",
            TcpState::LastAck => "last_ack",
            TcpState::Listen => "listen",
            TcpState::Closing => "closing",
        }
    }

    /// Index into [`TcpState::CONNECTION_STATES`]; `None` for `Listen`.
    pub fn connection_index(self) -> Option<usize> {
        TcpState::CONNECTION_STATES.iter().position(|s| *s == self)
    }

    /// The bit for this state in an inet_diag request's `idiag_states`.
    pub fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

/// A socket address as the kernel encodes it: 16 bytes, of which IPv4 uses
/// the first 4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RawAddr {
    /// Address family of the bytes below.
    pub family: Family,
    /// The address in network order, IPv4 in the first 4 bytes.
    pub bytes: [u8; 16],
}

impl RawAddr {
    /// The address as a standard library value.
    pub fn ip(&self) -> IpAddr {
        match self.family {
            Family::Ipv4 => IpAddr::V4(Ipv4Addr::new(
                self.bytes[0],
                self.bytes[1],
                self.bytes[2],
                self.bytes[3],
            )),
            Family::Ipv6 => IpAddr::V6(Ipv6Addr::from(self.bytes)),
        }
    }

    /// Whether this is `0.0.0.0` or `::`.
    pub fn is_unspecified(&self) -> bool {
        match self.family {
            Family::Ipv4 => self.bytes[..4] == [0; 4],
            Family::Ipv6 => self.bytes == [0; 16],
        }
    }

    /// The wildcard address of this family.
    pub fn unspecified(family: Family) -> Self {
        RawAddr {
            family,
            bytes: [0; 16],
        }
    }

    /// Builds the raw form from a standard library address.
    pub fn from_ip(ip: IpAddr) -> Self {
        let mut bytes = [0u8; 16];
        match ip {
            IpAddr::V4(v4) => {
                bytes[..4].copy_from_slice(&v4.octets());
                RawAddr {
                    family: Family::Ipv4,
                    bytes,
                }
            }
            IpAddr::V6(v6) => RawAddr {
                family: Family::Ipv6,
                bytes: v6.octets(),
            },
        }
    }
}

/// One socket from an inet_diag dump (TCP or UDP), with the extensions
/// this project reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SockRecord {
    /// TCP state; a UDP socket is `Close` when unconnected and
    /// `Established` when connected.
    pub state: TcpState,
    /// Local address.
    pub local: RawAddr,
    /// Local port.
    pub local_port: u16,
    /// Remote address.
    pub remote: RawAddr,
    /// Remote port.
    pub remote_port: u16,
    /// `idiag_rqueue`: accept-queue length for a listener, unread bytes otherwise.
    pub rqueue: u32,
    /// `idiag_wqueue`: backlog limit for a listener, unacknowledged bytes otherwise.
    pub wqueue: u32,
    /// Socket inode; 0 for sockets no process holds (e.g. not yet accepted).
    pub inode: u32,
    /// `idiag_if`: the interface the socket is bound to (`SO_BINDTODEVICE`,
    /// a link-local scope, inherited from the listener), 0 for none. A
    /// single-socket lookup must name it to find the socket.
    pub interface: u32,
    /// Owner uid.
    pub uid: u32,
    /// The kernel's socket cookie: unique per socket for its lifetime.
    pub cookie: u64,
    /// `SK_MEMINFO_DROPS` when `INET_DIAG_SKMEMINFO` was asked for and sent.
    pub drops: Option<u32>,
    /// `SK_MEMINFO_RCVBUF` (the receive buffer's limit, twice what
    /// `SO_RCVBUF` asked for) with the drops.
    pub rcvbuf: Option<u32>,
    /// `tcpi_last_data_sent` in milliseconds when `INET_DIAG_INFO` was asked
    /// for and sent: for a connection still in an accept queue, nothing has
    /// been sent since the kernel created it, so this is its age.
    pub last_data_sent_ms: Option<u32>,
}
