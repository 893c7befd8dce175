//! Speaking NETLINK_SOCK_DIAG: generic netlink framing ([`netlink`]), the
//! blocking dump socket ([`socket`]), exact lookups of single sockets in
//! bulk ([`lookup`]), and one request builder and
//! zero-allocation reply decoder per socket family ([`inet`] for TCP and
//! UDP, [`unix`] for unix listeners).

pub mod filter;
pub mod inet;
pub mod lookup;
pub mod netlink;
pub mod record;
pub mod socket;
pub mod unix;

pub use filter::{MAX_FILTER_PORTS, Mode, PortFilter};
pub use inet::{DumpRequest, Protocol, StateSet};
pub use lookup::{Answer, Lookup, LookupError, LookupStats, SocketIdentity};
pub use netlink::ParseError;
pub use record::{Family, RawAddr, SockRecord, TcpState};
pub use socket::{DiagError, DiagSocket, DumpStats, Request};
pub use unix::{UnixKind, UnixListenersRequest, UnixRecord};
