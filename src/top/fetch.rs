//! A minimal blocking HTTP client: one GET of a remote daemon's metrics
//! page for `top --from`.
//!
//! Blocking, on `top`'s reader thread, with one deadline over the whole
//! exchange (resolving the name included), which a client on the daemon's
//! async runtime would need a runtime in `top` for. It speaks just enough
//! HTTP/1.0: asking for 1.0
//! makes the server close the connection after the body and rules out
//! chunked encoding, so a response is whatever arrives before EOF. Servers
//! that answer with chunks or a `Content-Length` anyway are still handled.
//!
//! Everything the server sends is untrusted: sizes are bounded, malformed
//! responses are errors, and text quoted in error messages is stripped of
//! control characters so it cannot drive the terminal `top` draws on.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::str::FromStr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::fetch_tls::ClientTls;

/// The most bytes a response may hold, head included.
const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// The most bytes the status line and headers may take.
const MAX_HEAD_BYTES: usize = 64 << 10;

/// How much of an error response's body an error message quotes.
const BODY_EXCERPT_BYTES: usize = 200;

/// The path fetched when the URL names none.
const DEFAULT_PATH: &str = "/metrics";

/// Bounds the deadline so adding it to the current instant cannot
/// overflow, whatever the caller passes.
const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);

/// Where to fetch from, parsed from a URL given on the command line.
///
/// The URL has the form `http://[user:password@]host[:port][/path][?query]`.
/// A URL without a path, such as a bare `http://node:19101`, means that
/// server's metrics page, `/metrics`; so does one whose path is just `/`,
/// since the daemon serves its landing page there, never metrics. The port
/// defaults to 80. An IPv6 address goes in brackets: `http://[::1]:19101`.
/// `%XX` escapes in the user and password are decoded, so a password with
/// `@`, `:` or `/` in it can be given.
///
/// `Debug` and `Display` never show the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Target {
    /// Whether the URL is https.
    pub tls: bool,
    /// Host name or address as written; an IPv6 address without brackets.
    pub host: String,
    /// TCP port; 80 when the URL gives none.
    pub port: u16,
    /// Path and query for the request line, `/metrics` when the URL has no
    /// path.
    pub path_and_query: String,
    /// User and password for HTTP basic authentication, percent-decoded.
    pub basic_auth: Option<(String, String)>,
}

/// Why a page could not be fetched.
///
/// Every variant carries the URL without its credentials, so messages can
/// be shown and logged as they are.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The URL is malformed.
    #[error("invalid URL {url}: {reason}")]
    BadUrl {
        /// The URL without credentials.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// TLS could not be set up or the handshake failed: the daemon's
    /// certificate is not trusted, a client certificate is missing, ...
    #[error("{url}: TLS: {reason}")]
    Tls {
        /// The URL without credentials.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The URL has a scheme other than http and https.
    #[error(
        "invalid URL {url}: unsupported scheme {scheme:?}; `top --from` takes http://host[:port][/path]"
    )]
    UnsupportedScheme {
        /// The URL without credentials.
        url: String,
        /// The scheme as written.
        scheme: String,
    },
    /// The host name did not resolve to any address.
    #[error("{url}: cannot resolve {host}: {source}")]
    Resolve {
        /// The URL without credentials.
        url: String,
        /// The host name.
        host: String,
        /// The resolver's error.
        #[source]
        source: io::Error,
    },
    /// No address of the host accepted a connection.
    #[error("{url}: cannot connect: {source}")]
    Connect {
        /// The URL without credentials.
        url: String,
        /// The error of the last address tried.
        #[source]
        source: io::Error,
    },
    /// The exchange did not finish within the timeout.
    #[error("{url}: timed out after {timeout:?} {stage}")]
    Timeout {
        /// The URL without credentials.
        url: String,
        /// The timeout given to [`fetch`].
        timeout: Duration,
        /// What was under way, e.g. "connecting".
        stage: &'static str,
    },
    /// The connection failed after it was established.
    #[error("{url}: connection failed {stage}: {source}")]
    Io {
        /// The URL without credentials.
        url: String,
        /// What was under way, e.g. "reading the response".
        stage: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The response is larger than `top` accepts.
    #[error("{url}: response larger than {} MiB", .limit >> 20)]
    TooLarge {
        /// The URL without credentials.
        url: String,
        /// The limit in bytes.
        limit: usize,
    },
    /// The response is not valid HTTP.
    #[error("{url}: malformed HTTP response: {reason}")]
    BadResponse {
        /// The URL without credentials.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The server answered 401: it wants credentials, or other ones.
    #[error(
        "{url}: authentication was refused (HTTP 401{}){}",
        quoted_body(.body),
        auth_hint(*.credentials_sent)
    )]
    Unauthorized {
        /// The URL without credentials.
        url: String,
        /// Whether the request carried credentials.
        credentials_sent: bool,
        /// The start of the response body, control characters removed.
        body: String,
    },
    /// The server answered with a status other than 200 and 401.
    #[error(
        "{url}: server answered HTTP {code}{}{}{}",
        reason_phrase(.reason),
        status_hint(*.code),
        quoted_body(.body)
    )]
    Status {
        /// The URL without credentials.
        url: String,
        /// The status code.
        code: u16,
        /// The reason phrase, control characters removed.
        reason: String,
        /// The start of the response body, control characters removed.
        body: String,
    },
    /// The body is compressed or otherwise encoded, which we never ask for.
    #[error("{url}: response has content encoding {encoding:?}, which `top` cannot decode")]
    UnsupportedEncoding {
        /// The URL without credentials.
        url: String,
        /// The encoding as the server named it, control characters removed.
        encoding: String,
    },
    /// The body is not UTF-8, so it cannot be exposition text.
    #[error("{url}: response body is not UTF-8 (invalid byte at offset {offset})")]
    NotUtf8 {
        /// The URL without credentials.
        url: String,
        /// Offset in the body of the first invalid byte.
        offset: usize,
    },
}

impl FromStr for Target {
    type Err = FetchError;

    fn from_str(url: &str) -> Result<Self, FetchError> {
        let text = url.trim();
        let bad = |reason: &str| FetchError::BadUrl {
            url: redact(text),
            reason: reason.to_string(),
        };
        let Some((scheme, rest)) = text.split_once("://") else {
            return Err(bad(&format!(
                "expected http://host[:port][/path], e.g. http://{}",
                redact(text)
            )));
        };
        let tls = scheme.eq_ignore_ascii_case("https");
        if !tls && !scheme.eq_ignore_ascii_case("http") {
            return Err(FetchError::UnsupportedScheme {
                url: redact(text),
                scheme: printable(scheme, 32),
            });
        }

        // The fragment is for the client, never sent.
        let rest = rest.split_once('#').map_or(rest, |(before, _)| before);
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path_and_query) =
            rest.split_at_checked(authority_end).unwrap_or((rest, ""));
        let (userinfo, host_port) = match authority.rsplit_once('@') {
            Some((userinfo, host_port)) => (Some(userinfo), host_port),
            None => (None, authority),
        };

        let basic_auth = match userinfo {
            None | Some("") => None,
            Some(userinfo) => {
                let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
                let user =
                    percent_decode(user).map_err(|reason| bad(&format!("user name: {reason}")))?;
                let password = percent_decode(password)
                    .map_err(|reason| bad(&format!("password: {reason}")))?;
                // Basic authentication joins the two with a colon, so the
                // server would split such a user name in the wrong place.
                if user.contains(':') {
                    return Err(bad("the user name cannot contain ':'"));
                }
                Some((user, password))
            }
        };

        let default_port = if tls { 443 } else { 80 };
        let (host, port) = split_host_port(host_port, default_port).map_err(|reason| {
            // An unescaped `/`, `?` or `#` in a password ends the authority
            // early, leaving a piece of the password as the host or port.
            if text.contains('@') {
                bad(&format!(
                    "{reason} (percent-encode any '/', '?', '#' or '@' in the user or password)"
                ))
            } else {
                bad(&reason)
            }
        })?;
        let path_and_query = match path_and_query {
            "" | "/" => DEFAULT_PATH.to_string(),
            query if query.starts_with('?') => format!("{DEFAULT_PATH}{query}"),
            path => path.to_string(),
        };
        if !is_request_target(&path_and_query) {
            return Err(bad(
                "the path may only hold printable ASCII without spaces; percent-encode the rest",
            ));
        }
        Ok(Target {
            tls,
            host,
            port,
            path_and_query,
            basic_auth,
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        write!(f, "{scheme}://{}{}", self.host_port(), self.path_and_query)
    }
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Derived Debug would print the password wherever a Target is
        // logged.
        let user = self.basic_auth.as_ref().map(|(user, _)| user);
        f.debug_struct("Target")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("path_and_query", &self.path_and_query)
            .field("basic_auth_user", &user)
            .finish_non_exhaustive()
    }
}

impl Target {
    /// `host[:port]` as it goes in a URL and the Host header: IPv6 in
    /// brackets, the port only when it is not the default.
    fn host_port(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == if self.tls { 443 } else { 80 } {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    /// The GET request for the page.
    fn request(&self) -> String {
        let mut request = format!(
            "GET {} HTTP/1.0\r\n\
             Host: {}\r\n\
             Accept: text/plain;version=0.0.4\r\n\
             Accept-Encoding: identity\r\n\
             User-Agent: sockdiag-exporter-top/{}\r\n\
             Connection: close\r\n",
            self.path_and_query,
            self.host_port(),
            env!("CARGO_PKG_VERSION"),
        );
        if let Some((user, password)) = &self.basic_auth {
            let credentials = base64(format!("{user}:{password}").as_bytes());
            request.push_str(&format!("Authorization: Basic {credentials}\r\n"));
        }
        request.push_str("\r\n");
        request
    }
}

/// GETs the page; `timeout` bounds connect, and the whole exchange (use a
/// deadline; set read/write timeouts to the time remaining).
///
/// Name resolution counts against the timeout too. Returns the body of a
/// 200 response; any other status is an error quoting the start of the
/// body.
pub fn fetch(
    target: &Target,
    tls: Option<&ClientTls>,
    timeout: Duration,
) -> Result<String, FetchError> {
    fetch_limited(target, tls, timeout, MAX_RESPONSE_BYTES)
}

/// [`fetch`] with the response size limit as a parameter, so tests can
/// exceed it without sending 64 MiB.
fn fetch_limited(
    target: &Target,
    tls: Option<&ClientTls>,
    timeout: Duration,
    limit: usize,
) -> Result<String, FetchError> {
    let timeout = timeout.min(MAX_TIMEOUT);
    let exchange = Exchange {
        url: target.to_string(),
        timeout,
        deadline: Instant::now() + timeout,
        limit,
    };
    // The fields are public, so a Target need not come from `from_str`;
    // checking here keeps a stray CR or LF from splitting the request.
    if !is_request_target(&target.path_and_query) || !is_valid_host(&target.host) {
        return Err(FetchError::BadUrl {
            url: exchange.url,
            reason: "the host or path holds characters a request cannot carry".to_string(),
        });
    }
    let tls = match (target.tls, tls) {
        (false, _) => None,
        (true, Some(tls)) => Some(tls),
        (true, None) => {
            return Err(FetchError::Tls {
                url: exchange.url,
                reason: "https without TLS settings".to_string(),
            });
        }
    };
    let addresses = exchange.resolve(target)?;
    let stream = exchange.connect(&addresses)?;
    let mut stream: Box<dyn Wire> = match tls {
        None => Box::new(stream),
        Some(tls) => Box::new(exchange.handshake(stream, tls, &target.host)?),
    };

    let remaining = exchange.remaining("sending the request")?;
    stream
        .socket()
        .set_write_timeout(Some(remaining))
        .map_err(|source| exchange.io("sending the request", source))?;
    stream
        .write_all(target.request().as_bytes())
        .and_then(|()| stream.flush())
        .map_err(|source| exchange.io("sending the request", source))?;

    let response = exchange.read_response(stream.as_mut())?;
    exchange.interpret(response, target.basic_auth.is_some())
}

/// The connection a request goes over: plain TCP, or TLS over it; either
/// way the socket underneath takes the deadline's timeouts.
trait Wire: Read + Write {
    fn socket(&self) -> &TcpStream;
}

impl Wire for TcpStream {
    fn socket(&self) -> &TcpStream {
        self
    }
}

impl Wire for rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    fn socket(&self) -> &TcpStream {
        &self.sock
    }
}

/// One fetch under way: what its errors need and its deadline.
struct Exchange {
    /// The URL without credentials, for error messages.
    url: String,
    timeout: Duration,
    deadline: Instant,
    /// The most bytes the response may hold.
    limit: usize,
}

/// A response read off the wire: the parsed head and the raw bytes after
/// it, still chunked if the server chunked them.
struct Response {
    head: Head,
    body: Vec<u8>,
}

/// A response's status line and the headers that matter to us.
#[derive(Debug, PartialEq)]
struct Head {
    code: u16,
    reason: String,
    content_length: Option<usize>,
    /// `Transfer-Encoding` codings, lower case, in order.
    transfer_codings: Vec<String>,
    /// `Content-Encoding` codings, lower case, `identity` left out.
    content_codings: Vec<String>,
}

impl Exchange {
    /// The time left before the deadline, or a timeout error naming
    /// `stage` when none is.
    fn remaining(&self, stage: &'static str) -> Result<Duration, FetchError> {
        self.deadline
            .checked_duration_since(Instant::now())
            .filter(|left| !left.is_zero())
            .ok_or_else(|| self.timed_out(stage))
    }

    fn timed_out(&self, stage: &'static str) -> FetchError {
        FetchError::Timeout {
            url: self.url.clone(),
            timeout: self.timeout,
            stage,
        }
    }

    /// An I/O error, or a timeout error for the kinds a socket timeout
    /// produces.
    fn io(&self, stage: &'static str, source: io::Error) -> FetchError {
        if is_timeout(&source) {
            self.timed_out(stage)
        } else {
            FetchError::Io {
                url: self.url.clone(),
                stage,
                source,
            }
        }
    }

    fn bad_response(&self, reason: impl Into<String>) -> FetchError {
        FetchError::BadResponse {
            url: self.url.clone(),
            reason: reason.into(),
        }
    }

    fn too_large(&self) -> FetchError {
        FetchError::TooLarge {
            url: self.url.clone(),
            limit: self.limit,
        }
    }

    /// The addresses of the target's host.
    fn resolve(&self, target: &Target) -> Result<Vec<SocketAddr>, FetchError> {
        if let Ok(ip) = target.host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, target.port)]);
        }
        let stage = "resolving the host name";
        let remaining = self.remaining(stage)?;
        let resolve_error = |source| FetchError::Resolve {
            url: self.url.clone(),
            host: target.host.clone(),
            source,
        };
        // The system resolver takes no timeout, and a DNS server that does
        // not answer would hold us past the deadline. On a timeout the
        // thread is left to finish on its own; the resolver gives up after
        // its own retries.
        let (sender, receiver) = mpsc::channel();
        let host = target.host.clone();
        let port = target.port;
        std::thread::Builder::new()
            .name("top-resolve".to_string())
            .spawn(move || {
                let addresses = (host.as_str(), port)
                    .to_socket_addrs()
                    .map(|addresses| addresses.collect::<Vec<_>>());
                // The receiver is gone if the caller timed out; nobody is
                // left to tell.
                let _ = sender.send(addresses);
            })
            .map_err(resolve_error)?;
        match receiver.recv_timeout(remaining) {
            Ok(Ok(addresses)) if !addresses.is_empty() => Ok(addresses),
            Ok(Ok(_)) => Err(resolve_error(io::Error::new(
                io::ErrorKind::NotFound,
                "no addresses",
            ))),
            Ok(Err(source)) => Err(resolve_error(source)),
            Err(mpsc::RecvTimeoutError::Timeout) => Err(self.timed_out(stage)),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(resolve_error(io::Error::other(
                "the resolver thread ended without an answer",
            ))),
        }
    }

    /// Runs the TLS handshake on `stream` within the deadline, so a
    /// refused certificate is told as such rather than as a failed read.
    fn handshake(
        &self,
        mut stream: TcpStream,
        tls: &ClientTls,
        host: &str,
    ) -> Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>, FetchError> {
        let stage = "in the TLS handshake";
        let fail = |reason: String| FetchError::Tls {
            url: self.url.clone(),
            reason,
        };
        let name = tls.name_for(host).map_err(fail)?;
        let mut connection = rustls::ClientConnection::new(tls.config.clone(), name)
            .map_err(|e| fail(e.to_string()))?;
        while connection.is_handshaking() {
            let remaining = self.remaining(stage)?;
            stream
                .set_read_timeout(Some(remaining))
                .and_then(|()| stream.set_write_timeout(Some(remaining)))
                .map_err(|source| self.io(stage, source))?;
            match connection.complete_io(&mut stream) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_timeout(&e) => return Err(self.timed_out(stage)),
                Err(e) => return Err(fail(format!("handshake failed: {e}"))),
            }
        }
        Ok(rustls::StreamOwned::new(connection, stream))
    }

    /// Connects to the first address that accepts.
    fn connect(&self, addresses: &[SocketAddr]) -> Result<TcpStream, FetchError> {
        let stage = "connecting";
        let mut last_error = None;
        for (index, address) in addresses.iter().enumerate() {
            let remaining = self.remaining(stage)?;
            // Sharing out the time keeps one black-holed address (often an
            // unreachable IPv6 one listed first) from using all of it
            // before the others are tried. The last one gets what is left.
            let untried = u32::try_from(addresses.len().saturating_sub(index)).unwrap_or(u32::MAX);
            let budget = (remaining / untried.max(1))
                .max(Duration::from_millis(1))
                .min(remaining);
            match TcpStream::connect_timeout(address, budget) {
                Ok(stream) => return Ok(stream),
                Err(error) => last_error = Some(error),
            }
        }
        match last_error {
            Some(source) if !is_timeout(&source) => Err(FetchError::Connect {
                url: self.url.clone(),
                source,
            }),
            _ => Err(self.timed_out(stage)),
        }
    }

    /// Reads the response: up to `Content-Length` when the server gives
    /// one, else to EOF.
    fn read_response(&self, stream: &mut dyn Wire) -> Result<Response, FetchError> {
        let stage = "waiting for the response";
        let mut buffer = Vec::new();
        let mut chunk = vec![0_u8; 64 << 10];
        let mut head: Option<(Head, usize)> = None;
        // Where to resume looking for the end of the head, so a server
        // trickling a long head does not make the search quadratic.
        let mut scanned = 0;
        let mut eof = false;
        while !eof {
            let remaining = self.remaining(stage)?;
            stream
                .socket()
                .set_read_timeout(Some(remaining))
                .map_err(|source| self.io(stage, source))?;
            match stream.read(&mut chunk) {
                Ok(0) => eof = true,
                // A TLS server that closes without close_notify: the end,
                // as for plain TCP; a body cut short still shows against
                // Content-Length.
                Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => eof = true,
                Ok(read) => {
                    let received = chunk.get(..read).unwrap_or(&[]);
                    if buffer.len().saturating_add(received.len()) > self.limit {
                        return Err(self.too_large());
                    }
                    buffer.extend_from_slice(received);
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => return Err(self.io(stage, source)),
            }

            if head.is_none() {
                match find_head_end(&buffer, scanned) {
                    Some((head_len, body_start)) => {
                        let parsed = parse_head(buffer.get(..head_len).unwrap_or(&[]))
                            .map_err(|reason| self.bad_response(reason))?;
                        if let Some(length) = parsed.content_length {
                            if body_start.saturating_add(length) > self.limit {
                                return Err(self.too_large());
                            }
                        }
                        head = Some((parsed, body_start));
                    }
                    None if buffer.len() > MAX_HEAD_BYTES => {
                        return Err(self.bad_response(format!(
                            "no end of the headers within {} KiB",
                            MAX_HEAD_BYTES >> 10
                        )));
                    }
                    None if eof && buffer.is_empty() => {
                        return Err(self.bad_response("connection closed without a response"));
                    }
                    None if eof => {
                        return Err(self.bad_response("connection closed inside the headers"));
                    }
                    None => scanned = buffer.len().saturating_sub(2),
                }
            }
            // A server that ignores `Connection: close` would otherwise
            // hold us until the deadline after sending everything.
            if let Some((parsed, body_start)) = &head {
                if parsed.transfer_codings.is_empty() {
                    if let Some(length) = parsed.content_length {
                        if buffer.len().saturating_sub(*body_start) >= length {
                            break;
                        }
                    }
                }
            }
        }
        let Some((head, body_start)) = head else {
            return Err(self.bad_response("connection closed inside the headers"));
        };
        Ok(Response {
            body: buffer.get(body_start..).unwrap_or(&[]).to_vec(),
            head,
        })
    }

    /// Turns a response into the page, or the error it stands for.
    fn interpret(&self, response: Response, credentials_sent: bool) -> Result<String, FetchError> {
        let Response { head, body } = response;
        let body = self.decode_framing(&head, body);
        if head.code != 200 {
            let raw = match &body {
                Ok(body) => body.as_slice(),
                // Quote what arrived even when its framing is broken: the
                // status is the news, not the framing.
                Err((_, raw)) => raw.as_slice(),
            };
            let body = excerpt(raw);
            return Err(if head.code == 401 {
                FetchError::Unauthorized {
                    url: self.url.clone(),
                    credentials_sent,
                    body,
                }
            } else {
                FetchError::Status {
                    url: self.url.clone(),
                    code: head.code,
                    reason: head.reason,
                    body,
                }
            });
        }
        if !head.content_codings.is_empty() {
            return Err(FetchError::UnsupportedEncoding {
                url: self.url.clone(),
                encoding: printable(&head.content_codings.join(", "), 64),
            });
        }
        let body = body.map_err(|(error, _)| error)?;
        String::from_utf8(body).map_err(|error| FetchError::NotUtf8 {
            url: self.url.clone(),
            offset: error.utf8_error().valid_up_to(),
        })
    }

    /// Removes the transfer framing: chunks, or bytes past
    /// `Content-Length`. On failure returns the error with the raw bytes.
    fn decode_framing(&self, head: &Head, body: Vec<u8>) -> Result<Vec<u8>, (FetchError, Vec<u8>)> {
        match head.transfer_codings.as_slice() {
            [] => {}
            [only] if only == "chunked" => {
                return decode_chunked(&body).map_err(|reason| (self.bad_response(reason), body));
            }
            _ => {
                let error = FetchError::UnsupportedEncoding {
                    url: self.url.clone(),
                    encoding: printable(&head.transfer_codings.join(", "), 64),
                };
                return Err((error, body));
            }
        }
        match head.content_length {
            Some(length) if body.len() < length => {
                let reason = format!(
                    "body ended after {} of the {length} bytes in Content-Length",
                    body.len()
                );
                Err((self.bad_response(reason), body))
            }
            Some(length) => {
                let mut body = body;
                body.truncate(length);
                Ok(body)
            }
            None => Ok(body),
        }
    }
}

fn is_timeout(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
    )
}

/// Finds the blank line ending the head, searching from `from`. Returns
/// the length of the head before the blank line and where the body starts.
/// Lines may end in `\r\n` or `\n`.
fn find_head_end(buffer: &[u8], from: usize) -> Option<(usize, usize)> {
    let tail = buffer.get(from..)?;
    for (offset, &byte) in tail.iter().enumerate() {
        if byte != b'\n' {
            continue;
        }
        let at = from + offset;
        let after = buffer.get(at + 1..).unwrap_or(&[]);
        if after.starts_with(b"\n") {
            return Some((at, at + 2));
        }
        if after.starts_with(b"\r\n") {
            return Some((at, at + 3));
        }
    }
    None
}

/// Parses the status line and headers.
fn parse_head(bytes: &[u8]) -> Result<Head, String> {
    // Header values may be Latin-1; none we read needs more than ASCII.
    let text = String::from_utf8_lossy(bytes);
    let mut lines = text
        .split('\n')
        .map(|line| line.strip_suffix('\r').unwrap_or(line));
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    let code = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/") {
        return Err(format!(
            "expected an HTTP status line, got {:?}",
            printable(status_line, 64)
        ));
    }
    // Exactly three digits: `u16::from_str` would also take `+20`.
    let code = Some(code)
        .filter(|code| code.len() == 3 && code.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line {:?}", printable(status_line, 64)))?;
    let mut head = Head {
        code,
        reason: printable(parts.next().unwrap_or("").trim(), 64),
        content_length: None,
        transfer_codings: Vec::new(),
        content_codings: Vec::new(),
    };

    for line in lines {
        // Obsolete line folding continues the previous header; none of
        // the headers we read is folded in practice.
        if line.is_empty() || line.starts_with([' ', '\t']) {
            continue;
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!("bad header line {:?}", printable(line, 64)));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let length = value
                .parse::<usize>()
                .ok()
                .filter(|_| value.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| format!("bad Content-Length {:?}", printable(value, 32)))?;
            if head.content_length.is_some_and(|earlier| earlier != length) {
                return Err("conflicting Content-Length headers".to_string());
            }
            head.content_length = Some(length);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            head.transfer_codings
                .extend(codings(value).filter(|c| c != "identity"));
        } else if name.eq_ignore_ascii_case("content-encoding") {
            head.content_codings
                .extend(codings(value).filter(|c| c != "identity"));
        }
    }
    Ok(head)
}

/// The codings in an encoding header value, lower case.
fn codings(value: &str) -> impl Iterator<Item = String> + '_ {
    value
        .split(',')
        .map(|coding| coding.trim().to_ascii_lowercase())
        .filter(|coding| !coding.is_empty())
}

/// Decodes a chunked body. Trailers after the last chunk are ignored.
fn decode_chunked(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let Some(line_end) = data.iter().position(|&b| b == b'\n') else {
            return Err("chunked body ends inside a chunk size line".to_string());
        };
        let (line, rest) = data.split_at_checked(line_end).unwrap_or((data, &[]));
        data = rest.get(1..).unwrap_or(&[]);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        // Chunk extensions after `;` carry nothing we use.
        let size = line
            .split(|&b| b == b';')
            .next()
            .unwrap_or(&[])
            .trim_ascii();
        let size = std::str::from_utf8(size)
            .ok()
            .filter(|size| !size.is_empty() && size.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|size| usize::from_str_radix(size, 16).ok())
            .ok_or_else(|| {
                format!(
                    "bad chunk size line {:?}",
                    printable(&String::from_utf8_lossy(line), 32)
                )
            })?;
        if size == 0 {
            return Ok(out);
        }
        let Some((chunk, rest)) = data.split_at_checked(size) else {
            return Err(format!("chunked body ends inside a chunk of {size} bytes"));
        };
        out.extend_from_slice(chunk);
        data = rest
            .strip_prefix(b"\r\n")
            .or_else(|| rest.strip_prefix(b"\n"))
            .ok_or_else(|| "a chunk is not followed by a line break".to_string())?;
    }
}

/// Splits `host[:port]` or `[v6]:port`, checking both.
fn split_host_port(text: &str, default_port: u16) -> Result<(String, u16), String> {
    let (host, port) = if let Some(after) = text.strip_prefix('[') {
        let (address, tail) = after
            .split_once(']')
            .ok_or_else(|| "missing ']' after the IPv6 address".to_string())?;
        if address.parse::<Ipv6Addr>().is_err() {
            return Err("the host in brackets is not an IPv6 address".to_string());
        }
        let port = match tail {
            "" => None,
            tail => Some(
                tail.strip_prefix(':')
                    .ok_or_else(|| "expected ':port' after ']'".to_string())?,
            ),
        };
        (address, port)
    } else {
        match text.split_once(':') {
            Some((_, port)) if port.contains(':') => {
                return Err(
                    "an IPv6 address must be in brackets, as in http://[::1]:19101".to_string(),
                );
            }
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    if host.is_empty() {
        return Err("no host".to_string());
    }
    if !is_valid_host(host) {
        return Err("bad host name".to_string());
    }
    let port = match port {
        // RFC 3986 lets an empty port mean the default.
        None | Some("") => default_port,
        // Plain digits only: `u16::from_str` also takes a leading `+`.
        Some(port) => Some(port)
            .filter(|port| port.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|port| port.parse::<u16>().ok())
            .filter(|&port| port != 0)
            .ok_or_else(|| "bad port: expected a number from 1 to 65535".to_string())?,
    };
    Ok((host.to_string(), port))
}

/// Whether `host` is an IPv6 address or a name or IPv4 address made of
/// the characters DNS names and addresses use.
fn is_valid_host(host: &str) -> bool {
    if host.contains(':') {
        return host.parse::<Ipv6Addr>().is_ok();
    }
    !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// Whether `text` can go in a request line as it is.
fn is_request_target(text: &str) -> bool {
    text.starts_with('/') && text.bytes().all(|b| b.is_ascii_graphic())
}

/// Decodes `%XX` escapes.
fn percent_decode(text: &str) -> Result<String, String> {
    let mut bytes = Vec::with_capacity(text.len());
    let mut rest = text.as_bytes();
    while let Some((&byte, tail)) = rest.split_first() {
        rest = tail;
        if byte != b'%' {
            bytes.push(byte);
            continue;
        }
        let digits = rest.get(..2).unwrap_or(rest);
        let value = std::str::from_utf8(digits)
            .ok()
            .filter(|digits| digits.len() == 2 && digits.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|digits| u8::from_str_radix(digits, 16).ok())
            .ok_or_else(|| "'%' must be followed by two hex digits".to_string())?;
        bytes.push(value);
        rest = rest.get(2..).unwrap_or(&[]);
    }
    String::from_utf8(bytes).map_err(|_| "percent-escapes do not decode to UTF-8".to_string())
}

/// `url` with any `user:password@` removed, for messages.
///
/// Drops everything up to the last `@` after the scheme rather than
/// parsing the authority: a malformed URL, e.g. with an unescaped `/` in
/// the password, must not leak the password either.
fn redact(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(at) => url.split_at_checked(at + 3).unwrap_or(("", url)),
        None => ("", url),
    };
    let rest = rest.rsplit_once('@').map_or(rest, |(_, after)| after);
    printable(&format!("{scheme}{rest}"), 256)
}

/// `text` with control characters replaced and runs of whitespace
/// collapsed, cut to about `max` bytes: safe to print in a terminal.
fn printable(text: &str, max: usize) -> String {
    let mut out = String::new();
    for word in text
        .split(|c: char| c.is_whitespace() || c.is_control())
        .filter(|word| !word.is_empty())
    {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    if out.len() > max {
        let mut cut = max;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push('…');
    }
    out
}

/// The start of an error response's body, for a message.
fn excerpt(body: &[u8]) -> String {
    let start = body.get(..BODY_EXCERPT_BYTES).unwrap_or(body);
    let text = String::from_utf8_lossy(start);
    // The cut may split a character, which decodes as a replacement
    // character that says nothing.
    let mut text = printable(text.trim_end_matches('\u{FFFD}'), BODY_EXCERPT_BYTES);
    if body.len() > BODY_EXCERPT_BYTES && !text.ends_with('…') {
        text.push('…');
    }
    text
}

fn quoted_body(body: &str) -> String {
    if body.is_empty() {
        String::new()
    } else {
        format!(": {body}")
    }
}

fn reason_phrase(reason: &str) -> String {
    if reason.is_empty() {
        String::new()
    } else {
        format!(" {reason}")
    }
}

fn status_hint(code: u16) -> &'static str {
    match code {
        404 => " (check the path in the URL)",
        _ => "",
    }
}

fn auth_hint(credentials_sent: bool) -> &'static str {
    if credentials_sent {
        "; check the user and password in the URL"
    } else {
        "; give credentials in the URL, as http://user:password@host:port/path \
         (percent-encode '@', ':' and '/' in them)"
    }
}

/// Standard base64 with padding (RFC 4648, section 4), for the
/// Authorization header.
fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let sextet = |bits: u32| char::from(ALPHABET[(bits & 63) as usize]);
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for group in input.chunks(3) {
        let (bytes, len) = match *group {
            [a, b, c] => ([a, b, c], 3),
            [a, b] => ([a, b, 0], 2),
            [a] => ([a, 0, 0], 1),
            _ => continue,
        };
        let [first, second, third] = bytes;
        let bits = (u32::from(first) << 16) | (u32::from(second) << 8) | u32::from(third);
        // `len` input bytes fill `len + 1` output characters; the rest of
        // the quantum is padding.
        for index in 0..4_u32 {
            if index <= len {
                out.push(sextet(bits >> (18 - 6 * index)));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::thread::JoinHandle;

    fn target(url: &str) -> Target {
        url.parse().unwrap()
    }

    fn bad_url_reason(url: &str) -> String {
        match url.parse::<Target>() {
            Err(FetchError::BadUrl { reason, .. }) => reason,
            other => panic!("{url}: expected BadUrl, got {other:?}"),
        }
    }

    #[test]
    fn parses_urls() {
        assert_eq!(
            target("http://node:19101"),
            Target {
                tls: false,
                host: "node".into(),
                port: 19101,
                path_and_query: "/metrics".into(),
                basic_auth: None,
            }
        );
        let t = target("http://node");
        assert_eq!((t.port, t.path_and_query.as_str()), (80, "/metrics"));
        assert_eq!(target("http://node:19101/").path_and_query, "/metrics");
        assert_eq!(target("http://node/x/y").path_and_query, "/x/y");
        assert_eq!(
            target("http://node/x?a=1&b=%20").path_and_query,
            "/x?a=1&b=%20"
        );
        assert_eq!(target("http://node?a=1").path_and_query, "/metrics?a=1");
        assert_eq!(target("http://node/?a=1").path_and_query, "/?a=1");
        assert_eq!(target("http://node/m#frag").path_and_query, "/m");
        assert_eq!(target("http://node#frag").path_and_query, "/metrics");
        assert_eq!(target("HTTP://Node.Example:8080/m").host, "Node.Example");
        assert_eq!(target("  http://node:1/m \n").port, 1);
        assert_eq!(target("http://node:/m").port, 80);
        assert_eq!(target("http://10.0.0.1:9/").host, "10.0.0.1");
    }

    #[test]
    fn parses_ipv6_urls() {
        let t = target("http://[::1]:19101");
        assert_eq!((t.host.as_str(), t.port), ("::1", 19101));
        assert_eq!(t.path_and_query, "/metrics");
        let t = target("http://[fe80::1:2]/m");
        assert_eq!((t.host.as_str(), t.port), ("fe80::1:2", 80));
        assert_eq!(t.to_string(), "http://[fe80::1:2]/m");
    }

    #[test]
    fn parses_credentials() {
        let t = target("http://u:p%40ss@127.0.0.1:1/x");
        assert_eq!(t.basic_auth, Some(("u".into(), "p@ss".into())));
        let t = target("http://us%C3%A9r:a%3Ab%2Fc%25@node");
        assert_eq!(t.basic_auth, Some(("usér".into(), "a:b/c%".into())));
        // An unescaped `@` in the password: the last one ends the userinfo.
        let t = target("http://u:p@ss@node");
        assert_eq!(t.basic_auth, Some(("u".into(), "p@ss".into())));
        assert_eq!(t.host, "node");
        assert_eq!(
            target("http://u@node").basic_auth,
            Some(("u".into(), "".into()))
        );
        assert_eq!(
            target("http://u:@node").basic_auth,
            Some(("u".into(), "".into()))
        );
        assert_eq!(target("http://@node").basic_auth, None);
    }

    #[test]
    fn display_and_debug_hide_the_password() {
        let t = target("http://admin:hunter2@node:19101/m?x=1");
        assert_eq!(t.to_string(), "http://node:19101/m?x=1");
        assert_eq!(target("http://node").to_string(), "http://node/metrics");
        let debug = format!("{t:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("admin"), "{debug}");
    }

    #[test]
    fn https_urls_default_to_port_443() {
        let t = target("https://admin:hunter2@node.example/metrics");
        assert!(t.tls);
        assert_eq!(t.port, 443);
        assert_eq!(t.to_string(), "https://node.example/metrics");
        let t = target("HTTPS://[::1]:19101");
        assert!(t.tls);
        assert_eq!(t.to_string(), "https://[::1]:19101/metrics");
        assert!(!target("http://node").tls);
    }

    #[test]
    fn https_without_tls_settings_is_an_error_not_plain_http() {
        let t = target("https://127.0.0.1:9/metrics");
        let err = fetch(&t, None, Duration::from_secs(1)).unwrap_err();
        assert!(matches!(err, FetchError::Tls { .. }), "{err}");
    }

    #[test]
    fn rejects_other_schemes_and_malformed_urls() {
        let err = "ftp://u:secret@node/".parse::<Target>().unwrap_err();
        assert!(
            matches!(&err, FetchError::UnsupportedScheme { scheme, .. } if scheme == "ftp"),
            "{err:?}"
        );
        assert!(!err.to_string().contains("secret"));
        assert!(err.to_string().contains("ftp://node/"), "{err}");

        assert!(bad_url_reason("node:19101").contains("e.g. http://node:19101"));
        assert!(bad_url_reason("").contains("expected http://"));
        assert_eq!(bad_url_reason("http://"), "no host");
        assert_eq!(bad_url_reason("http:///metrics"), "no host");
        assert_eq!(bad_url_reason("http://:80/"), "no host");
        assert!(bad_url_reason("http://node:abc/").contains("bad port"));
        assert!(bad_url_reason("http://node:70000/").contains("bad port"));
        assert!(bad_url_reason("http://node:0/").contains("bad port"));
        assert!(bad_url_reason("http://node:+80/").contains("bad port"));
        assert!(bad_url_reason("http://::1:80/").contains("brackets"));
        assert!(bad_url_reason("http://[::1/").contains("missing ']'"));
        assert!(bad_url_reason("http://[node]:80/").contains("not an IPv6"));
        assert!(bad_url_reason("http://[::1]x/").contains("':port'"));
        assert!(bad_url_reason("http://no de/").contains("bad host"));
        assert!(bad_url_reason("http://nødé/").contains("bad host"));
        assert!(bad_url_reason("http://node/a b").contains("path"));
        assert!(bad_url_reason("http://node/ü").contains("path"));
        assert!(bad_url_reason("http://u:p%zz@node/").contains("password"));
        assert!(bad_url_reason("http://u%4@node/").contains("user name"));
        assert!(bad_url_reason("http://u:%ff@node/").contains("UTF-8"));
        assert!(bad_url_reason("http://a%3Ab:c@node/").contains("':'"));
    }

    #[test]
    fn malformed_urls_never_show_the_password() {
        for url in [
            "http://u:hunter2@node:bad/",
            "http://u:hun/ter2@node/",
            "http://u:hunter2%zz@node/",
            "u:hunter2@node:19101",
        ] {
            let message = url.parse::<Target>().unwrap_err().to_string();
            assert!(!message.contains("hunter2"), "{message}");
            assert!(!message.contains("ter2"), "{message}");
        }
    }

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (input, expected) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), expected, "{input:?}");
        }
        assert_eq!(base64(&[0xfb, 0xff, 0xbf]), "+/+/");
        assert_eq!(
            base64("Aladdin:open sesame".as_bytes()),
            "QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
    }

    #[test]
    fn decodes_chunks() {
        assert_eq!(
            decode_chunked(b"4\r\nWiki\r\n5;ext=1\r\npedia\r\n0\r\n\r\n").unwrap(),
            b"Wikipedia"
        );
        assert_eq!(
            decode_chunked(b"3\nabc\nA \n0123456789\n0\nTrailer: x\n\n").unwrap(),
            b"abc0123456789"
        );
        assert_eq!(decode_chunked(b"0\r\n").unwrap(), b"");
        for bad in [
            &b""[..],
            b"4\r\nWi",
            b"4\r\nWikiX\r\n0\r\n\r\n",
            b"zz\r\nabc\r\n",
            b"\r\nabc\r\n",
            b"+4\r\nWiki\r\n0\r\n",
            b"ffffffffffffffffffffffff\r\nabc\r\n",
            b"ffffffffffffffff\r\nabc\r\n",
            b"4\r\nWiki\r\n",
        ] {
            assert!(
                decode_chunked(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn parses_heads() {
        let head = parse_head(
            b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\nTransfer-Encoding: Chunked\r\nContent-Encoding: identity\r\n X-Folded: y",
        )
        .unwrap();
        assert_eq!(head.code, 200);
        assert_eq!(head.reason, "OK");
        assert_eq!(head.content_length, Some(12));
        assert_eq!(head.transfer_codings, ["chunked"]);
        assert!(head.content_codings.is_empty());
        let head = parse_head(b"HTTP/1.0 404\nContent-Encoding: gzip").unwrap();
        assert_eq!((head.code, head.reason.as_str()), (404, ""));
        assert_eq!(head.content_codings, ["gzip"]);
        for bad in [
            &b""[..],
            b"ICY 200 OK",
            b"HTTP/1.1 2000 OK",
            b"HTTP/1.1 +20 OK",
            b"HTTP/1.1 OK",
            b"HTTP/1.1 200 OK\r\nno colon",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1",
            b"HTTP/1.1 200 OK\r\nContent-Length: +1",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2",
        ] {
            assert!(
                parse_head(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn finds_the_end_of_the_head() {
        assert_eq!(
            find_head_end(b"HTTP/1.0 200 OK\r\n\r\nbody", 0),
            Some((16, 19))
        );
        assert_eq!(find_head_end(b"HTTP/1.0 200 OK\n\nbody", 0), Some((15, 17)));
        assert_eq!(find_head_end(b"HTTP/1.0 200 OK\r\nA: b\r\n", 0), None);
        assert_eq!(find_head_end(b"x", 5), None);
    }

    #[test]
    fn sanitises_server_text() {
        assert_eq!(printable("a\x1b[2Jb\r\n  c\td", 64), "a [2Jb c d");
        assert_eq!(printable("ééé", 3), "é…");
        assert_eq!(
            excerpt(&[b'x'; 300]).len(),
            BODY_EXCERPT_BYTES + '…'.len_utf8()
        );
        let mut cut = vec![b'a'; BODY_EXCERPT_BYTES - 1];
        cut.extend_from_slice("é and more".as_bytes());
        assert!(!excerpt(&cut).contains('\u{FFFD}'));
    }

    /// Serves one connection on a fresh port: reads the request head, hands
    /// the stream to `respond`, and yields the request as text.
    fn serve(respond: impl FnOnce(&mut TcpStream) + Send + 'static) -> (u16, JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let handle = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            let mut request = Vec::new();
            let mut byte = [0_u8; 1];
            while !request.ends_with(b"\r\n\r\n") {
                if stream.read(&mut byte).unwrap() == 0 {
                    break;
                }
                request.push(byte[0]);
            }
            respond(&mut stream);
            String::from_utf8(request).unwrap()
        });
        (port, handle)
    }

    /// Serves one connection answering `response` and closing.
    fn serve_bytes(response: impl Into<Vec<u8>>) -> (u16, JoinHandle<String>) {
        let response = response.into();
        serve(move |stream| {
            // The client may hang up early, e.g. on a huge Content-Length.
            let _ = stream.write_all(&response);
        })
    }

    fn fetch_port(port: u16, path: &str) -> Result<String, FetchError> {
        fetch(
            &target(&format!("http://127.0.0.1:{port}{path}")),
            None,
            Duration::from_secs(2),
        )
    }

    const PAGE: &str = "# TYPE m gauge\nm{a=\"b\"} 1\n";

    #[test]
    fn fetches_with_content_length() {
        let (port, server) = serve_bytes(format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n{PAGE}ignored",
            PAGE.len()
        ));
        assert_eq!(fetch_port(port, "").unwrap(), PAGE);
        let request = server.join().unwrap();
        assert!(
            request.starts_with("GET /metrics HTTP/1.0\r\n"),
            "{request}"
        );
        assert!(
            request.contains(&format!("\r\nHost: 127.0.0.1:{port}\r\n")),
            "{request}"
        );
        assert!(
            request.contains("\r\nAccept: text/plain;version=0.0.4\r\n"),
            "{request}"
        );
        assert!(request.contains("\r\nConnection: close\r\n"), "{request}");
        assert!(
            request.contains(&format!(
                "\r\nUser-Agent: sockdiag-exporter-top/{}\r\n",
                env!("CARGO_PKG_VERSION")
            )),
            "{request}"
        );
        assert!(!request.contains("Authorization"), "{request}");
    }

    #[test]
    fn stops_at_content_length_even_if_the_server_keeps_the_connection() {
        let (port, server) = serve(|stream| {
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{PAGE}",
                PAGE.len()
            );
            // Hold the connection until the client hangs up.
            let _ = stream.read(&mut [0_u8; 1]);
        });
        // Waiting for EOF would end in the 2 s timeout, an error.
        assert_eq!(fetch_port(port, "/").unwrap(), PAGE);
        server.join().unwrap();
    }

    #[test]
    fn fetches_a_close_delimited_body() {
        let (port, server) = serve_bytes(format!(
            "HTTP/1.0 200 OK\nContent-Type: text/plain\n\n{PAGE}"
        ));
        assert_eq!(fetch_port(port, "/m?x=1").unwrap(), PAGE);
        assert!(
            server
                .join()
                .unwrap()
                .starts_with("GET /m?x=1 HTTP/1.0\r\n")
        );
    }

    #[test]
    fn fetches_a_chunked_body() {
        let (port, server) = serve_bytes(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
             f\r\n# TYPE m gauge\n\r\n\
             b;name=x\r\nm{a=\"b\"} 1\n\r\n\
             0\r\n\r\n",
        );
        assert_eq!(fetch_port(port, "").unwrap(), PAGE);
        server.join().unwrap();
    }

    #[test]
    fn rejects_a_bad_chunked_body() {
        let (port, server) =
            serve_bytes("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffff\r\nabc");
        let err = fetch_port(port, "").unwrap_err();
        assert!(matches!(err, FetchError::BadResponse { .. }), "{err:?}");
        server.join().unwrap();
    }

    #[test]
    fn reports_refused_authentication() {
        let response = "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"x\"\r\nContent-Length: 13\r\n\r\nUnauthorized\n";
        let (port, server) = serve_bytes(response);
        let err = fetch_port(port, "").unwrap_err();
        let message = err.to_string();
        assert!(
            matches!(&err, FetchError::Unauthorized { credentials_sent: false, body, .. } if body == "Unauthorized"),
            "{err:?}"
        );
        assert!(message.contains("authentication was refused"), "{message}");
        assert!(message.contains("http://user:password@"), "{message}");
        server.join().unwrap();

        let (port, server) = serve_bytes(response);
        let url = format!("http://u:hunter2@127.0.0.1:{port}/");
        let err = fetch(&target(&url), None, Duration::from_secs(2)).unwrap_err();
        let message = err.to_string();
        assert!(matches!(
            err,
            FetchError::Unauthorized {
                credentials_sent: true,
                ..
            }
        ));
        assert!(message.contains("check the user and password"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
        server.join().unwrap();
    }

    #[test]
    fn reports_other_statuses_with_the_start_of_the_body() {
        let body = format!("404 page not found\x1b[31m {}", "x".repeat(500));
        let (port, server) = serve_bytes(format!("HTTP/1.1 404 Not Found\r\n\r\n{body}"));
        let err = fetch_port(port, "/nope").unwrap_err();
        let FetchError::Status {
            code, reason, body, ..
        } = &err
        else {
            panic!("{err:?}");
        };
        assert_eq!((*code, reason.as_str()), (404, "Not Found"));
        assert!(body.starts_with("404 page not found [31m x"), "{body}");
        assert!(body.len() <= BODY_EXCERPT_BYTES + 3, "{}", body.len());
        let message = err.to_string();
        assert!(message.contains("HTTP 404 Not Found"), "{message}");
        assert!(!message.contains('\x1b'), "{message}");
        server.join().unwrap();
    }

    #[test]
    fn times_out_when_the_server_never_answers() {
        let (port, server) = serve(|stream| {
            // Wait for the client to give up and hang up.
            let _ = stream.read(&mut [0_u8; 1]);
        });
        let timeout = Duration::from_millis(300);
        let started = Instant::now();
        let err = fetch(&target(&format!("http://127.0.0.1:{port}")), None, timeout).unwrap_err();
        let elapsed = started.elapsed();
        assert!(
            matches!(
                err,
                FetchError::Timeout {
                    stage: "waiting for the response",
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(elapsed >= timeout, "{elapsed:?}");
        // Generous: a loaded machine is slow, and without the timeout this
        // would never end.
        assert!(elapsed < timeout + Duration::from_secs(5), "{elapsed:?}");
        server.join().unwrap();
    }

    #[test]
    fn a_trickling_server_cannot_stretch_the_deadline() {
        let (port, server) = serve(|stream| {
            let _ = stream.write_all(b"HTTP/1.0 200 OK\r\n\r\n");
            // Each byte arrives well within any read timeout; only the
            // overall deadline can stop this.
            for _ in 0..400 {
                if stream.write_all(b"m 1\n").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(25));
            }
        });
        let timeout = Duration::from_millis(300);
        let started = Instant::now();
        let err = fetch(&target(&format!("http://127.0.0.1:{port}")), None, timeout).unwrap_err();
        assert!(matches!(err, FetchError::Timeout { .. }), "{err:?}");
        // The trickle lasts 10 s; the deadline ends it long before,
        // however loaded the machine.
        assert!(started.elapsed() < Duration::from_secs(5));
        server.join().unwrap();
    }

    #[test]
    fn a_body_shorter_than_content_length_is_an_error() {
        let (port, server) =
            serve_bytes("HTTP/1.1 200 OK\r\nContent-Length: 50000000\r\n\r\nm 1\n");
        let err = fetch_port(port, "").unwrap_err();
        assert!(
            matches!(&err, FetchError::BadResponse { reason, .. } if reason.contains("50000000")),
            "{err:?}"
        );
        server.join().unwrap();
    }

    #[test]
    fn a_content_length_over_the_limit_is_refused_at_once() {
        let (port, server) = serve_bytes(format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\nm 1\n",
            MAX_RESPONSE_BYTES
        ));
        let err = fetch_port(port, "").unwrap_err();
        assert!(matches!(err, FetchError::TooLarge { .. }), "{err:?}");
        assert!(err.to_string().contains("64 MiB"), "{err}");
        server.join().unwrap();
    }

    #[test]
    fn a_close_delimited_body_over_the_limit_is_refused() {
        let (port, server) = serve(|stream| {
            let _ = stream.write_all(b"HTTP/1.0 200 OK\r\n\r\n");
            let _ = stream.write_all(&[b'#'; 8192]);
        });
        let t = target(&format!("http://127.0.0.1:{port}"));
        let err = fetch_limited(&t, None, Duration::from_secs(2), 4096).unwrap_err();
        assert!(
            matches!(err, FetchError::TooLarge { limit: 4096, .. }),
            "{err:?}"
        );
        server.join().unwrap();
    }

    #[test]
    fn sends_basic_auth_with_decoded_credentials() {
        let (port, server) = serve_bytes(format!("HTTP/1.0 200 OK\r\n\r\n{PAGE}"));
        let url = format!("http://u:p%40ss@127.0.0.1:{port}/x");
        assert_eq!(
            fetch(&target(&url), None, Duration::from_secs(2)).unwrap(),
            PAGE
        );
        let request = server.join().unwrap();
        assert!(request.starts_with("GET /x HTTP/1.0\r\n"), "{request}");
        // base64("u:p@ss")
        assert!(
            request.contains("\r\nAuthorization: Basic dTpwQHNz\r\n"),
            "{request}"
        );
    }

    #[test]
    fn rejects_compressed_and_non_utf8_bodies() {
        let (port, server) =
            serve_bytes("HTTP/1.0 200 OK\r\nContent-Encoding: gzip\r\n\r\n\x1f\u{8b}");
        let err = fetch_port(port, "").unwrap_err();
        assert!(
            matches!(&err, FetchError::UnsupportedEncoding { encoding, .. } if encoding == "gzip"),
            "{err:?}"
        );
        server.join().unwrap();

        let mut response = b"HTTP/1.0 200 OK\r\n\r\nm 1\n".to_vec();
        response.extend_from_slice(&[0xff, 0xfe]);
        let (port, server) = serve_bytes(response);
        let err = fetch_port(port, "").unwrap_err();
        assert!(
            matches!(err, FetchError::NotUtf8 { offset: 4, .. }),
            "{err:?}"
        );
        server.join().unwrap();
    }

    #[test]
    fn rejects_garbage_and_empty_responses() {
        for response in [
            &b""[..],
            b"HTTP/1.0 200 OK\r\nA: b",
            b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
        ] {
            let (port, server) = serve_bytes(response);
            let err = fetch_port(port, "").unwrap_err();
            assert!(matches!(err, FetchError::BadResponse { .. }), "{err:?}");
            server.join().unwrap();
        }
    }

    #[test]
    fn reports_a_refused_connection() {
        let port = {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let err = fetch_port(port, "").unwrap_err();
        assert!(matches!(err, FetchError::Connect { .. }), "{err:?}");
    }

    #[test]
    fn resolves_host_names() {
        let (port, server) = serve_bytes(format!("HTTP/1.0 200 OK\r\n\r\n{PAGE}"));
        let t = target(&format!("http://localhost:{port}"));
        assert_eq!(fetch(&t, None, Duration::from_secs(2)).unwrap(), PAGE);
        assert!(
            server
                .join()
                .unwrap()
                .contains(&format!("\r\nHost: localhost:{port}\r\n"))
        );
    }

    #[test]
    fn refuses_targets_that_would_split_the_request() {
        let t = Target {
            tls: false,
            host: "127.0.0.1".into(),
            port: 1,
            path_and_query: "/x HTTP/1.0\r\nX-Evil: 1".into(),
            basic_auth: None,
        };
        let err = fetch(&t, None, Duration::from_millis(100)).unwrap_err();
        assert!(matches!(err, FetchError::BadUrl { .. }), "{err:?}");
    }
}
