//! Where the server listens: the sockets it binds for
//! `--web.listen-address`, or those systemd passes (socket activation).

use std::io;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use socket2::{Domain, Socket, Type};

/// The listen backlog of the sockets bound for `--web.listen-address`.
const LISTEN_BACKLOG: i32 = 1024;

/// The first file descriptor systemd passes (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;

/// The environment of socket activation, read and then removed.
const LISTEN_ENV: [&str; 3] = ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"];

/// Why the server could not get a socket to listen on.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// `--web.listen-address` is malformed or resolves to nothing.
    #[error("--web.listen-address {0}")]
    Address(String),
    /// Another process (likely another exporter) has the port.
    #[error(
        "cannot listen on {addr} (--web.listen-address {text}): {source}; is another exporter running?"
    )]
    InUse {
        /// The address tried.
        addr: SocketAddr,
        /// As given on the command line.
        text: String,
        /// The error from `bind()`.
        source: io::Error,
    },
    /// No address given could be bound.
    #[error("cannot listen on {addr} (--web.listen-address {text}): {source}")]
    Bind {
        /// The last address tried.
        addr: SocketAddr,
        /// As given on the command line.
        text: String,
        /// Why it failed.
        source: io::Error,
    },
    /// `--web.systemd-socket` without sockets from systemd.
    #[error(
        "--web.systemd-socket: no sockets were passed ({0}); start the exporter from a systemd \
         .socket unit (or systemd-socket-activate), or use --web.listen-address instead"
    )]
    NoSystemdSockets(String),
    /// A passed descriptor cannot be served on.
    #[error("--web.systemd-socket: file descriptor {fd} {problem}")]
    BadSystemdSocket {
        /// The descriptor.
        fd: RawFd,
        /// What is wrong with it.
        problem: String,
    },
}

/// Resolves `--web.listen-address`. `:PORT` means every address: the IPv6
/// wildcard (dual-stack on Linux) first, IPv4 if IPv6 is unavailable.
pub fn resolve_listen_address(text: &str) -> Result<Vec<SocketAddr>, String> {
    if let Some(port) = text.strip_prefix(':') {
        let port: u16 = port
            .parse()
            .map_err(|_| format!("{text:?}: {port:?} is not a port number"))?;
        return Ok(vec![
            SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)),
            SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, port)),
        ]);
    }
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(vec![addr]);
    }
    if !text.contains(':') {
        return Err(format!("{text:?} has no port: write HOST:PORT or :PORT"));
    }
    let addrs: Vec<SocketAddr> = text
        .to_socket_addrs()
        .map_err(|e| format!("{text:?}: {e}"))?
        .collect();
    if addrs.is_empty() {
        return Err(format!("{text:?} resolves to no address"));
    }
    Ok(addrs)
}

/// Binds one socket for each `--web.listen-address`.
pub fn bind_all(texts: &[String]) -> Result<Vec<TcpListener>, ListenError> {
    texts.iter().map(|t| bind(t)).collect()
}

/// Binds the first address `text` resolves to that works; a port in use
/// is an error at once (trying the IPv4 wildcard after the IPv6 one is for
/// hosts without IPv6, not for dodging a conflict).
pub fn bind(text: &str) -> Result<TcpListener, ListenError> {
    let candidates = resolve_listen_address(text).map_err(ListenError::Address)?;
    let mut last: Option<(SocketAddr, io::Error)> = None;
    for addr in candidates {
        match bind_one(addr) {
            Ok(l) => return Ok(l),
            Err(source) if source.kind() == io::ErrorKind::AddrInUse => {
                return Err(ListenError::InUse {
                    addr,
                    text: text.to_string(),
                    source,
                });
            }
            Err(e) => last = Some((addr, e)),
        }
    }
    match last {
        Some((addr, source)) => Err(ListenError::Bind {
            addr,
            text: text.to_string(),
            source,
        }),
        None => Err(ListenError::Address(format!(
            "{text}: no address to listen on"
        ))),
    }
}

/// A non-blocking listening socket on `addr`. The IPv6 wildcard is made
/// dual-stack explicitly, so `:PORT` also takes IPv4 scrapes on hosts where
/// `net.ipv6.bindv6only` is 1.
fn bind_one(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    if let SocketAddr::V6(v6) = addr {
        if v6.ip().is_unspecified() {
            socket.set_only_v6(false)?;
        }
    }
    // Lets a restarted daemon bind while its old connections linger in
    // TIME-WAIT; it does not allow two live listeners on one port.
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    // Room for a burst of connections while the accept loop makes room at
    // the cap (net.core.somaxconn, 4096 by default, caps it); 128 overflowed
    // when 2,000 clients connected at once, and each overflow costs the
    // client a SYN retransmit of a second or more.
    socket.listen(LISTEN_BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Takes the listening sockets systemd passed (`LISTEN_PID` must be this
/// process, `LISTEN_FDS` of them from descriptor 3), each checked to be a
/// listening TCP socket, made non-blocking and close-on-exec; then removes
/// the `LISTEN_*` variables, so nothing this process starts takes them
/// for its own.
///
/// # Safety
///
/// Call it once, before the process starts any thread: it changes the
/// environment, which another thread could be reading, and takes
/// ownership of descriptors 3.. that nothing else in the process may use.
pub unsafe fn systemd_listeners() -> Result<Vec<TcpListener>, ListenError> {
    let env = |name: &str| std::env::var(name).ok();
    let (pid, fds) = (env("LISTEN_PID"), env("LISTEN_FDS"));
    for name in LISTEN_ENV {
        // SAFETY: the caller guarantees no other thread exists yet.
        unsafe { std::env::remove_var(name) };
    }
    let ours = std::process::id();
    let count = match (pid, fds) {
        (None, _) | (_, None) => {
            return Err(ListenError::NoSystemdSockets(
                "LISTEN_PID or LISTEN_FDS is not set".into(),
            ));
        }
        (Some(pid), Some(fds)) => {
            if pid.trim().parse::<u32>().ok() != Some(ours) {
                return Err(ListenError::NoSystemdSockets(format!(
                    "LISTEN_PID={pid} is not this process ({ours})"
                )));
            }
            match fds.trim().parse::<RawFd>() {
                Ok(n) if (1..=1024).contains(&n) => n,
                Ok(0) => {
                    return Err(ListenError::NoSystemdSockets(
                        "LISTEN_FDS=0: the socket unit has no ListenStream=".into(),
                    ));
                }
                _ => {
                    return Err(ListenError::NoSystemdSockets(format!(
                        "LISTEN_FDS={fds} is not a number of sockets"
                    )));
                }
            }
        }
    };
    (LISTEN_FDS_START..LISTEN_FDS_START + count)
        .map(|fd| {
            // SAFETY: systemd handed these descriptors to this process; the
            // caller guarantees nothing else in it uses them.
            unsafe { take_listener(fd) }
        })
        .collect()
}

/// Descriptor `fd` as a non-blocking, close-on-exec TCP listener.
///
/// # Safety
///
/// `fd` must be owned by nobody else in the process.
unsafe fn take_listener(fd: RawFd) -> Result<TcpListener, ListenError> {
    let bad = |problem: String| ListenError::BadSystemdSocket { fd, problem };
    // An `OwnedFd` must hold an open descriptor: check before taking it.
    // SAFETY: F_GETFD only reads the descriptor's flags.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
        return Err(bad(format!("is not open: {}", io::Error::last_os_error())));
    }
    // SAFETY: open (checked above) and owned by nobody else (the caller).
    let socket = Socket::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let io_err = |what: &str, e: io::Error| bad(format!("{what}: {e}"));
    let domain = socket.domain().map_err(|e| io_err("is not a socket", e))?;
    if domain != Domain::IPV4 && domain != Domain::IPV6 {
        return Err(bad(format!(
            "is a {domain:?} socket, not TCP over IPv4 or IPv6"
        )));
    }
    let kind = socket.r#type().map_err(|e| io_err("socket type", e))?;
    if kind != Type::STREAM {
        return Err(bad(format!("is a {kind:?} socket, not a stream (TCP) one")));
    }
    if !socket
        .is_listener()
        .map_err(|e| io_err("SO_ACCEPTCONN", e))?
    {
        return Err(bad(
            "is not listening (use ListenStream= with Accept=no)".into()
        ));
    }
    socket
        .set_nonblocking(true)
        .map_err(|e| io_err("setting O_NONBLOCK", e))?;
    socket
        .set_cloexec(true)
        .map_err(|e| io_err("setting FD_CLOEXEC", e))?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses() {
        assert_eq!(
            resolve_listen_address(":9").unwrap().len(),
            2,
            "IPv6 wildcard, then IPv4"
        );
        assert_eq!(
            resolve_listen_address("127.0.0.1:19101").unwrap(),
            vec!["127.0.0.1:19101".parse().unwrap()]
        );
        assert!(resolve_listen_address("[::1]:80").is_ok());
        assert!(
            resolve_listen_address("nonsense")
                .unwrap_err()
                .contains("no port")
        );
        assert!(resolve_listen_address(":http").is_err());
        assert!(resolve_listen_address(":70000").is_err());
    }

    #[test]
    fn a_passed_descriptor_must_be_a_listening_tcp_socket() {
        use std::os::fd::IntoRawFd;
        let udp = Socket::new(Domain::IPV4, Type::DGRAM, None).unwrap();
        let tcp = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        for (socket, needle) in [(udp, "not a stream"), (tcp, "not listening")] {
            let fd = socket.into_raw_fd();
            // SAFETY: the descriptor was just released by its owner.
            let err = unsafe { take_listener(fd) }.unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
        }
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let fd = listener.into_raw_fd();
        // SAFETY: as above.
        let taken = unsafe { take_listener(fd) }.unwrap();
        assert!(taken.local_addr().is_ok());
    }
}
