//! Speaking NETLINK_SOCK_DIAG: requests, the dump loop, and zero-allocation
//! decoding of replies into [`SockRecord`]s.

pub mod filter;
pub mod parse;
pub mod record;
pub mod request;
pub mod socket;

pub use filter::{MAX_FILTER_PORTS, Mode, PortFilter};
pub use parse::ParseError;
pub use record::{Family, RawAddr, SockRecord, TcpState};
pub use request::{DumpRequest, StateSet};
pub use socket::{DiagError, DiagSocket, DumpStats};
