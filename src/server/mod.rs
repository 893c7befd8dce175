//! HTTP: `/metrics` (or `--web.telemetry-path`), a landing page and
//! `/healthz`, hardened for life next to production servers.
//!
//! The accept loops are our own rather than `axum::serve` because the
//! daemon must bound what clients can hold, and still let scrapers in:
//! - one table ([`conns`]) caps the open connections over every listen
//!   address; at the cap a newcomer takes the place of a connection that is
//!   not serving a request (the slowest to send its head first, then the
//!   longest idle), and is refused only when all are busy;
//! - a client has `--web.read-header-timeout` to send its request head,
//!   which also bounds idle keep-alive connections;
//! - concurrent scrapes beyond a cap get 503 at once, each render has a
//!   deadline ([`routes`]), a connection lives at most a few minutes, and
//!   shutdown waits a bounded time for requests in flight.
//!
//! Per connection: accept, `establish` the byte stream (a TLS handshake
//! with `--web.config.file`), then `serve_http` over any
//! `AsyncRead + AsyncWrite`: HTTP/1, or HTTP/2 when TLS negotiated it.
//! The web config's basic auth and headers wrap every route.

pub mod conns;
pub mod listen;
pub mod routes;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{Request, Response};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tower::ServiceExt;

use crate::metrics::Exposition;
use crate::store::Store;
use crate::web::WebConfig;
use crate::web::handshake::{self, HandshakeError};
use conns::{Admitted, ConnHandle, ConnTable, RequestGuard};
use routes::{AppState, router};

/// Longest life of one HTTP connection. Past it the connection is shut down
/// gracefully (a response in flight finishes, with `Connection: close`), so
/// a client that reads slower than we write cannot hold a slot for long,
/// and Prometheus simply reconnects.
const MAX_CONNECTION_LIFETIME: Duration = Duration::from_secs(120);

/// The most bytes of request line and headers a client may send; longer
/// requests get 431 or a closed connection.
const MAX_REQUEST_HEAD: usize = 16 * 1024;

/// HTTP settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Path of the metrics page.
    pub telemetry_path: String,
    /// Requests served at once before 503.
    pub max_requests: usize,
    /// Open connections over every listener; see [`conns`].
    pub max_connections: usize,
    /// Time to read a request head, or to wait for the next on keep-alive.
    pub read_header_timeout: Duration,
    /// Deadline of one request's answer.
    pub request_timeout: Duration,
    /// Grace period for requests in flight at shutdown.
    pub shutdown_timeout: Duration,
    /// `--web.config.file`: TLS, basic auth, headers.
    pub web: Option<Arc<WebConfig>>,
}

/// What every accept loop and connection shares.
struct Shared {
    app: Router,
    table: Arc<ConnTable>,
    config: ServerConfig,
}

/// Serves on every listener until `shutdown` completes, then gives requests
/// in flight up to `shutdown_timeout` to finish.
pub async fn serve(
    listeners: Vec<TcpListener>,
    exposition: Arc<Exposition>,
    store: Arc<Store>,
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) {
    let app = router(AppState {
        exposition,
        store: store.clone(),
        requests: Arc::new(Semaphore::new(config.max_requests)),
        timeout: config.request_timeout,
        telemetry_path: config.telemetry_path.clone(),
    });
    let shared = Arc::new(Shared {
        app,
        // A render gets --web.request-timeout; a connection busy for longer
        // is waiting on its client, not on us.
        table: ConnTable::new(config.max_connections, config.request_timeout, store),
        config,
    });
    let (stop, stopping) = watch::channel(false);
    let loops: Vec<_> = listeners
        .into_iter()
        .map(|l| tokio::spawn(accept_loop(l, shared.clone(), stopping.clone())))
        .collect();
    shutdown.await;
    // Stop accepting (each loop drops its listener), ask every connection
    // to finish, then wait until all have closed, or the deadline passes.
    let _ = stop.send(true);
    for l in loops {
        let _ = l.await;
    }
    let timeout = shared.config.shutdown_timeout;
    match tokio::time::timeout(timeout, shared.table.closed()).await {
        Ok(()) => tracing::info!("HTTP server stopped"),
        Err(_) => tracing::warn!(
            ?timeout,
            "requests still in flight at shutdown deadline; closing them"
        ),
    }
}

/// Accepts on one listener until told to stop.
async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stopping: watch::Receiver<bool>,
) {
    let mut accept_failures = 0u64;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopping.wait_for(|stop| *stop) => break,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Usually EMFILE/ENFILE: back off instead of spinning, but
                // not past a shutdown; and say so at a bounded rate (the
                // 1st, 2nd, 4th, 8th ... failure).
                accept_failures += 1;
                if accept_failures.is_power_of_two() {
                    tracing::warn!(error = %e, failures = accept_failures, "accept failed");
                }
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    _ = stopping.wait_for(|stop| *stop) => break,
                }
            }
        };
        let admitted = match shared.table.admit(peer.ip()) {
            Ok(admitted) => admitted,
            Err(conns::Refused(refused)) => {
                if refused.is_power_of_two() {
                    tracing::warn!(%peer, refused, max = shared.config.max_connections,
                        "every HTTP connection is serving a request; closing a new one");
                }
                drop(stream);
                continue;
            }
        };
        if let Some((reason, total)) = admitted.reclaimed {
            if total.is_power_of_two() {
                tracing::info!(%peer, reason = reason.as_str(), evicted = total,
                    max = shared.config.max_connections,
                    "HTTP connections at the cap; closed one not serving a request to let a new one in");
            }
        }
        tokio::spawn(connection(
            stream,
            peer,
            admitted,
            shared.clone(),
            stopping.clone(),
        ));
        if shared.table.is_full() {
            // The newcomer's request head has usually arrived with it: let
            // its task read it (and turn busy) before this loop accepts
            // again, so a flood of newcomers cannot push it out before it
            // has been looked at. The table never evicts a connection that
            // has not been polled, so this is about fairness, not safety:
            // without it, a burst at the cap would find every slot
            // unpolled and be refused.
            tokio::task::yield_now().await;
        }
    }
}

/// One connection's task: the stream established and served, unless the
/// table evicts it first (then it is simply dropped: it was not serving a
/// request).
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    admitted: Admitted,
    shared: Arc<Shared>,
    stopping: watch::Receiver<bool>,
) {
    let Admitted {
        handle, evicted, ..
    } = admitted;
    let work = async {
        let timeout = shared.config.read_header_timeout;
        let (io, h2) = match establish(stream, &handle, &shared, timeout).await {
            Ok(established) => established,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "HTTP connection could not be established");
                return;
            }
        };
        serve_http(io, h2, peer, &handle, &shared, stopping).await;
    };
    let mut work = std::pin::pin!(work);
    let mut first = true;
    // Marked after the first poll, not before: that poll is what reads a
    // request head already waiting in the socket and marks the connection
    // busy; until it has happened, the table will not evict it.
    let work = std::future::poll_fn(|cx| {
        let progress = work.as_mut().poll(cx);
        if first {
            first = false;
            handle.mark_polled();
        }
        progress
    });
    tokio::select! {
        biased;
        () = work => {}
        _ = evicted => {
            tracing::debug!(%peer, "HTTP connection closed to let a new one in");
        }
    }
}

/// A connection's byte stream: plain TCP, or TLS over it.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Turns an accepted TCP connection into the byte stream HTTP is spoken
/// over, and says whether it speaks HTTP/2: the stream itself, or with a
/// web config that has TLS, the TLS stream after a handshake with the
/// certificates in force now (so a renewed one is used at once).
///
/// The handshake runs under `--web.read-header-timeout`, and the
/// connection counts as sending its request head meanwhile: `conn` has not
/// begun a request, so the table may evict it as slow. A stalled handshake
/// therefore costs a slot for at most that long, and less at the cap.
async fn establish(
    stream: TcpStream,
    _conn: &ConnHandle,
    shared: &Shared,
    timeout: Duration,
) -> Result<(Box<dyn Io>, bool), HandshakeError> {
    let Some(web) = shared.config.web.as_ref().filter(|w| w.tls()) else {
        return Ok((Box::new(stream), false));
    };
    // A server that started with TLS never loads a config without it (the
    // reload is refused), but if it ever did, the connection must not fall
    // back to clear text.
    let Some(tls) = web.current().tls.clone() else {
        return Err(HandshakeError::NoConfig);
    };
    match handshake::accept(stream, tls, timeout).await {
        Ok(stream) => {
            let h2 = handshake::is_h2(&stream);
            Ok((Box::new(stream), h2))
        }
        Err(e) => {
            if !matches!(e, HandshakeError::Closed) {
                web.count_handshake_failure();
            }
            Err(e)
        }
    }
}

/// Serves HTTP/1 (or HTTP/2 when `h2`) over `io` until the client is done,
/// the connection's lifetime ends, or the server stops; each request marks
/// `conn` busy.
async fn serve_http<I>(
    io: I,
    h2: bool,
    peer: SocketAddr,
    conn: &ConnHandle,
    shared: &Shared,
    mut stopping: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = Tracked {
        app: shared.app.clone(),
        conn: conn.clone(),
        web: shared.config.web.clone(),
    };
    let io = TokioIo::new(WatchedIo {
        io,
        conn: conn.clone(),
        blocked: false,
    });
    let result = if h2 {
        let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            // Streams beyond --web.max-requests would only get 503.
            .max_concurrent_streams(u32::try_from(shared.config.max_requests).unwrap_or(8))
            .max_header_list_size(MAX_REQUEST_HEAD as u32)
            .serve_connection(io, service);
        // HTTP/2 has no header-read timer: a connection that waits for
        // its first or next request gets as long as HTTP/1's would.
        let idle = Some(shared.config.read_header_timeout);
        drive(connection, peer, conn, idle, shared, &mut stopping).await
    } else {
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            // hyper starts this timer whenever it waits for a request head,
            // including between requests on keep-alive, so it bounds slow
            // clients and idle connections alike.
            .header_read_timeout(shared.config.read_header_timeout)
            // hyper would buffer ~400 KiB of headers per connection by
            // default; a scrape request needs well under 1 KiB.
            .max_buf_size(MAX_REQUEST_HEAD)
            .serve_connection(io, service);
        drive(connection, peer, conn, None, shared, &mut stopping).await
    };
    let Some(result) = result else {
        return;
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
    }
}

/// A hyper connection of either version: a future that can be asked to
/// finish gracefully.
trait Graceful: Future<Output = hyper::Result<()>> {
    fn finish(self: Pin<&mut Self>);
}

impl<I> Graceful for hyper::server::conn::http1::Connection<TokioIo<WatchedIo<I>>, Tracked>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    fn finish(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I> Graceful
    for hyper::server::conn::http2::Connection<TokioIo<WatchedIo<I>>, Tracked, TokioExecutor>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    fn finish(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// Runs `connection` until it ends, its lifetime is up, the server stops
/// or (with `idle`) it has waited that long for a request; in all but the
/// first case it is asked to finish and given the request timeout to do
/// so. `None` when it had to be cut off.
async fn drive<C: Graceful>(
    connection: C,
    peer: SocketAddr,
    conn: &ConnHandle,
    idle: Option<Duration>,
    shared: &Shared,
    stopping: &mut watch::Receiver<bool>,
) -> Option<hyper::Result<()>> {
    tokio::pin!(connection);
    let lifetime = tokio::time::sleep(MAX_CONNECTION_LIFETIME);
    tokio::pin!(lifetime);
    let idle_too_long = async {
        let Some(limit) = idle else {
            return std::future::pending().await;
        };
        // Checked at a fraction of the limit: it may run over by as much.
        let mut tick = tokio::time::interval(limit / 4);
        loop {
            tick.tick().await;
            if conn.waiting_for().is_some_and(|w| w >= limit) {
                return;
            }
        }
    };
    tokio::pin!(idle_too_long);
    let finished = tokio::select! {
        result = connection.as_mut() => Some(result),
        () = &mut lifetime => None,
        () = &mut idle_too_long => {
            // Nothing in flight to finish gracefully, and a client that
            // never sent its preface would hold the grace period too: close
            // it, as HTTP/1's header timer does.
            tracing::debug!(%peer, "HTTP/2 connection idle for --web.read-header-timeout; closed");
            return None;
        }
        _ = stopping.wait_for(|stop| *stop) => None,
    };
    match finished {
        Some(result) => Some(result),
        None => {
            connection.as_mut().finish();
            let grace = shared.config.request_timeout;
            match tokio::time::timeout(grace, connection.as_mut()).await {
                Ok(result) => Some(result),
                Err(_) => {
                    tracing::debug!(%peer, "HTTP connection did not finish in time; closed");
                    None
                }
            }
        }
    }
}

/// The routes behind the web config's basic auth and headers, marking
/// the connection busy from a request's credentials accepted until its
/// response body has been handed over. A request waiting for its bcrypt,
/// or refused with 401, leaves the connection evictable.
#[derive(Clone)]
struct Tracked {
    app: Router,
    conn: ConnHandle,
    web: Option<Arc<WebConfig>>,
}

impl hyper::service::Service<Request<Incoming>> for Tracked {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future =
        Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send + 'static>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let conn = self.conn.clone();
        let app = self.app.clone();
        let web = self.web.clone();
        Box::pin(async move {
            let active = web.as_ref().map(|w| (w, w.current()));
            if let Some((web, active)) = &active {
                if let Err(denied) =
                    crate::web::guard::authorize(web, active, request.headers()).await
                {
                    return Ok(denied);
                }
            }
            // Without a password to check, this runs within the poll that
            // read the head: the connection is busy from then on.
            let guard = conn.begin_request();
            let response = app.oneshot(request).await?;
            let mut response = response.map(|body| {
                Body::new(GuardedBody {
                    body,
                    _guard: guard,
                })
            });
            if let Some((_, active)) = &active {
                crate::web::guard::add_headers(&mut response, &active.headers);
            }
            Ok(response)
        })
    }
}

/// A response body that keeps its connection busy until hyper has taken
/// all of it (or given up on it) and drops it.
struct GuardedBody {
    body: Body,
    _guard: RequestGuard,
}

impl HttpBody for GuardedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The connection's byte stream, telling the table when writing to the
/// client blocks and when it goes through again.
struct WatchedIo<I> {
    io: I,
    conn: ConnHandle,
    blocked: bool,
}

impl<I> WatchedIo<I> {
    fn watch<T>(&mut self, poll: Poll<T>) -> Poll<T> {
        let blocked = poll.is_pending();
        // Only changes reach the table: a write is far more frequent.
        if blocked != self.blocked {
            self.blocked = blocked;
            self.conn.set_write_blocked(blocked);
        }
        poll
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for WatchedIo<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for WatchedIo<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write(cx, buf);
        self.watch(poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.watch(poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let poll = Pin::new(&mut self.io).poll_flush(cx);
        self.watch(poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
