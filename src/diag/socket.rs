//! A blocking NETLINK_SOCK_DIAG socket that runs one dump at a time.
//!
//! Blocking sockets on a dedicated collector thread fit a periodic dump
//! better than an async stream: there is exactly one request in flight, the
//! receive buffer is reused for every datagram, and records are handed to
//! the caller while they are still in that buffer.

use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_SOCK_DIAG};

use super::inet::{self, DumpRequest};
use super::netlink::ParseError;
use super::record::SockRecord;
use super::unix::{self, UnixListenersRequest, UnixRecord};

/// The kernel caps one dump datagram at about 32 KiB whatever the buffer;
/// twice that leaves room for a kernel that sends more.
const RECV_BUFFER: usize = 64 * 1024;

/// How long one `recv` may wait before the dump is declared stuck.
const RECV_TIMEOUT: Duration = Duration::from_secs(30);

/// A failed dump, naming the request that failed.
#[derive(Debug, thiserror::Error)]
pub enum DiagError {
    /// The socket could not be created or bound.
    #[error("cannot open NETLINK_SOCK_DIAG socket: {0}")]
    Open(#[source] io::Error),
    /// Sending the request failed.
    #[error("{request}: send failed: {source}")]
    Send {
        /// The request, described.
        request: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Receiving a reply failed or timed out.
    #[error("{request}: receive failed: {source}")]
    Recv {
        /// The request, described.
        request: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A datagram was larger than our buffer (should not happen; kernels cap
    /// dump datagrams well below it).
    #[error("{request}: datagram of {len} bytes exceeds the {RECV_BUFFER}-byte buffer")]
    Oversized {
        /// The request, described.
        request: String,
        /// The datagram's real length.
        len: usize,
    },
    /// A reply could not be decoded, or the kernel reported an error.
    #[error("{request}: {source}")]
    Reply {
        /// The request, described.
        request: String,
        /// What was wrong.
        #[source]
        source: ParseError,
    },
}

impl DiagError {
    /// Whether the socket is idle after this error, ready for the next
    /// dump: the kernel answered the request with an error (no such
    /// family, not permitted), which ends the dump. After any other error
    /// the kernel may still be sending the rest of the dump.
    pub fn leaves_socket_idle(&self) -> bool {
        matches!(
            self,
            DiagError::Reply {
                source: ParseError::Kernel { .. },
                ..
            }
        )
    }
}

/// What one dump returned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DumpStats {
    /// Socket records handed to the callback.
    pub records: usize,
    /// Replies skipped (unknown family or state).
    pub skipped: usize,
    /// Datagrams received.
    pub datagrams: usize,
    /// Bytes received.
    pub bytes: usize,
}

/// A sock_diag dump request of any family.
pub trait Request: std::fmt::Display {
    /// Writes the whole netlink message into `out`, replacing its contents.
    fn encode(&self, seq: u32, out: &mut Vec<u8>);
}

impl Request for DumpRequest<'_> {
    fn encode(&self, seq: u32, out: &mut Vec<u8>) {
        DumpRequest::encode(self, seq, out)
    }
}

impl Request for UnixListenersRequest {
    fn encode(&self, seq: u32, out: &mut Vec<u8>) {
        UnixListenersRequest::encode(self, seq, out)
    }
}

/// A NETLINK_SOCK_DIAG socket in the network namespace it was created in.
pub struct DiagSocket {
    socket: Socket,
    /// [`RECV_BUFFER`] bytes of capacity; its length is what the last
    /// `recv` wrote. Not zeroed up front: a zeroed 64 KiB is 64 KiB resident
    /// for every namespace on every tier (12.5 MiB for 100 namespaces) once
    /// malloc hands out reused memory, while the kernel writes only what a
    /// dump returns, a page or two in most namespaces.
    buf: Vec<u8>,
    request: Vec<u8>,
    seq: u32,
}

impl DiagSocket {
    /// Opens a socket in the calling thread's network namespace; it stays
    /// bound to that namespace for its whole life.
    pub fn open() -> Result<Self, DiagError> {
        let mut socket = Socket::new(NETLINK_SOCK_DIAG).map_err(DiagError::Open)?;
        socket.bind_auto().map_err(DiagError::Open)?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(DiagError::Open)?;
        set_recv_timeout(&socket, RECV_TIMEOUT).map_err(DiagError::Open)?;
        Ok(DiagSocket {
            socket,
            buf: Vec::with_capacity(RECV_BUFFER),
            request: Vec::with_capacity(128),
            seq: 0,
        })
    }

    /// Runs one inet_diag dump, calling `on_record` for every socket while
    /// its bytes are still in the receive buffer.
    ///
    /// After an error the kernel may still be dumping on this socket and
    /// would refuse a new request (`EBUSY`): open a new socket instead.
    pub fn dump<F>(
        &mut self,
        request: &DumpRequest<'_>,
        mut on_record: F,
    ) -> Result<DumpStats, DiagError>
    where
        F: FnMut(&SockRecord),
    {
        self.dump_decoded(request, |datagram, seq| {
            inet::parse_datagram(datagram, seq, &mut on_record)
        })
    }

    /// Runs one unix_diag dump of listeners, calling `on_record` for each
    /// while its bytes are still in the receive buffer. Same error rule as
    /// [`DiagSocket::dump`].
    pub fn dump_unix<F>(
        &mut self,
        request: &UnixListenersRequest,
        mut on_record: F,
    ) -> Result<DumpStats, DiagError>
    where
        F: FnMut(&UnixRecord<'_>),
    {
        self.dump_decoded(request, |datagram, seq| {
            unix::parse_datagram(datagram, seq, &mut on_record)
        })
    }

    /// One dump, each datagram handed to a family decoder.
    fn dump_decoded<R, F>(&mut self, request: &R, mut decode: F) -> Result<DumpStats, DiagError>
    where
        R: Request,
        F: FnMut(&[u8], u32) -> Result<super::netlink::DatagramSummary, ParseError>,
    {
        let mut records = 0;
        let mut skipped = 0;
        let mut stats = self.dump_datagrams(request, |datagram, seq| {
            let summary = decode(datagram, seq)?;
            records += summary.records;
            skipped += summary.skipped;
            Ok(summary.done)
        })?;
        stats.records = records;
        stats.skipped = skipped;
        Ok(stats)
    }

    /// Runs one dump, handing each raw datagram and the request's sequence
    /// number to `on_datagram`, which says whether the dump is complete.
    /// [`DiagSocket::dump`] is this plus decoding; on its own it serves to
    /// capture replies for tests and bug reports.
    pub fn dump_datagrams<R, F>(
        &mut self,
        request: &R,
        mut on_datagram: F,
    ) -> Result<DumpStats, DiagError>
    where
        R: Request + ?Sized,
        F: FnMut(&[u8], u32) -> Result<bool, ParseError>,
    {
        self.seq = self.seq.wrapping_add(1);
        request.encode(self.seq, &mut self.request);
        let sent = self
            .socket
            .send(&self.request, 0)
            .map_err(|source| DiagError::Send {
                request: request.to_string(),
                source,
            })?;
        if sent != self.request.len() {
            return Err(DiagError::Send {
                request: request.to_string(),
                source: io::Error::new(io::ErrorKind::WriteZero, "short send"),
            });
        }
        let mut stats = DumpStats::default();
        loop {
            let len = self.recv().map_err(|source| DiagError::Recv {
                request: request.to_string(),
                source,
            })?;
            if len > RECV_BUFFER {
                return Err(DiagError::Oversized {
                    request: request.to_string(),
                    len,
                });
            }
            stats.datagrams += 1;
            stats.bytes += len;
            let done =
                on_datagram(&self.buf[..len], self.seq).map_err(|source| DiagError::Reply {
                    request: request.to_string(),
                    source,
                })?;
            if done {
                return Ok(stats);
            }
        }
    }

    /// Reserves `n` consecutive sequence numbers (wrapping) and returns the
    /// first: a batch of requests numbers its messages from it, so that an
    /// answer names its request and a late one to an abandoned batch is
    /// told apart.
    pub(super) fn reserve_seqs(&mut self, n: u32) -> u32 {
        let first = self.seq.wrapping_add(1);
        self.seq = self.seq.wrapping_add(n);
        first
    }

    /// The descriptor, for the bulk receive ([`super::lookup`]) that reads
    /// many datagrams in one `recvmmsg`.
    pub(super) fn raw_fd(&self) -> std::os::fd::RawFd {
        self.socket.as_raw_fd()
    }

    /// Sends `buf`, which may hold many netlink messages, in one datagram.
    pub(super) fn send_raw(&self, buf: &[u8]) -> io::Result<usize> {
        self.socket.send(buf, 0)
    }

    /// One `recv`, retried on EINTR; `MSG_TRUNC` makes the kernel report a
    /// datagram's real size so an oversized one is caught, not cut silently.
    fn recv(&mut self) -> io::Result<usize> {
        self.buf.clear();
        let capacity = self.buf.capacity();
        loop {
            // SAFETY: the pointer and capacity describe our own live
            // allocation, which the kernel writes at most `capacity` bytes
            // of.
            let n = unsafe {
                libc::recv(
                    self.socket.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    capacity,
                    libc::MSG_TRUNC,
                )
            };
            if n >= 0 {
                let len = n as usize;
                // SAFETY: the kernel initialized the first min(len,
                // capacity) bytes (MSG_TRUNC reports a longer datagram's
                // whole size but writes only what fits).
                unsafe { self.buf.set_len(len.min(capacity)) };
                return Ok(len);
            }
            let err = io::Error::last_os_error();
            match err.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no reply within {} s", RECV_TIMEOUT.as_secs()),
                    ));
                }
                _ => return Err(err),
            }
        }
    }
}

fn set_recv_timeout(socket: &Socket, timeout: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: valid fd, and a pointer to a timeval of the size we pass.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
