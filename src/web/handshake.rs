//! The TLS side of a new connection: a client that speaks plain HTTP to the
//! TLS port gets a readable 400 instead of a dropped connection (as Go's
//! servers answer), then the handshake runs under the caller's deadline.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// Why a connection did not become a TLS stream.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The client spoke plain HTTP; it was told to use https.
    #[error("plain HTTP sent to the TLS port")]
    PlainHttp,
    /// The first bytes were neither TLS nor HTTP.
    #[error("not a TLS handshake")]
    NotTls,
    /// The server serves TLS but holds no TLS configuration.
    #[error("no TLS configuration in service; refusing to serve in clear")]
    NoConfig,
    /// The client closed before its first byte.
    #[error("closed before the handshake")]
    Closed,
    /// The handshake did not finish in time.
    #[error("TLS handshake took longer than {0:?}")]
    Timeout(Duration),
    /// rustls refused the handshake (bad client certificate, no common
    /// version or suite, ...), or the socket failed.
    #[error("TLS handshake failed: {0}")]
    Failed(std::io::Error),
}

/// The record type of a TLS handshake record, the first byte a TLS client
/// sends.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

const PLAIN_HTTP_ANSWER: &[u8] = b"HTTP/1.0 400 Bad Request\r\n\
Content-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n\
Client sent an HTTP request to an HTTPS server: use https://\n";

/// Runs the server side of a TLS handshake on `stream` within `deadline`.
pub async fn accept(
    stream: TcpStream,
    config: Arc<rustls::ServerConfig>,
    deadline: Duration,
) -> Result<TlsStream<TcpStream>, HandshakeError> {
    match tokio::time::timeout(deadline, handshake(stream, config)).await {
        Ok(result) => result,
        Err(_) => Err(HandshakeError::Timeout(deadline)),
    }
}

async fn handshake(
    mut stream: TcpStream,
    config: Arc<rustls::ServerConfig>,
) -> Result<TlsStream<TcpStream>, HandshakeError> {
    let mut first = [0u8; 1];
    match stream.peek(&mut first).await {
        Ok(0) => return Err(HandshakeError::Closed),
        Ok(_) => {}
        Err(e) => return Err(HandshakeError::Failed(e)),
    }
    if first[0] != TLS_HANDSHAKE_RECORD {
        if first[0].is_ascii_uppercase() {
            // Best effort: the client may be gone already.
            let _ = stream.write_all(PLAIN_HTTP_ANSWER).await;
            let _ = stream.shutdown().await;
            return Err(HandshakeError::PlainHttp);
        }
        return Err(HandshakeError::NotTls);
    }
    tokio_rustls::TlsAcceptor::from(config)
        .accept(stream)
        .await
        .map_err(HandshakeError::Failed)
}

/// Whether the client chose HTTP/2 by ALPN.
pub fn is_h2(stream: &TlsStream<TcpStream>) -> bool {
    stream.get_ref().1.alpn_protocol() == Some(b"h2")
}
