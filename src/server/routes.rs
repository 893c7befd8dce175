//! The routes: `/metrics` (or `--web.telemetry-path`), gzipped for scrapers
//! that accept it as Prometheus does, a landing page and `/healthz`.
//! Concurrent scrapes beyond `--web.max-requests` get 503 at once instead
//! of queueing, and each render has a deadline.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use tokio::sync::Semaphore;

use crate::metrics::Exposition;
use crate::store::Store;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// Renders the page.
    pub exposition: Arc<Exposition>,
    /// Health for `/healthz`, and the 503 counter.
    pub store: Arc<Store>,
    /// One permit per request served at once.
    pub requests: Arc<Semaphore>,
    /// Deadline of one render.
    pub timeout: Duration,
    /// Path of the metrics page.
    pub telemetry_path: String,
}

/// Builds the routes.
pub fn router(state: AppState) -> Router {
    let path = state.telemetry_path.clone();
    let metrics_state = state.clone();
    let landing_state = state.clone();
    Router::new()
        .route(
            &path,
            get(move |headers: HeaderMap| metrics(metrics_state.clone(), headers)),
        )
        .route("/", get(move || landing(landing_state.clone())))
        .route("/healthz", get(move || healthz(state.clone())))
}

/// Whether the client's `Accept-Encoding` takes gzip (Prometheus sends
/// `gzip`): `gzip` (or `x-gzip`) with a weight above 0, or else `*` with
/// one; an explicit `gzip;q=0` wins over `*`.
fn accepts_gzip(headers: &HeaderMap) -> bool {
    let (mut gzip, mut any) = (None, None);
    for coding in headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
    {
        let mut parts = coding.split(';');
        let name = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let refused = parts.any(|p| {
            let p = p.trim();
            p.get(..2)
                .is_some_and(|k| k.eq_ignore_ascii_case("q="))
                .then(|| p.get(2..).and_then(|q| q.trim().parse::<f32>().ok()))
                .flatten()
                .is_some_and(|q| q <= 0.0)
        });
        match name.as_str() {
            "gzip" | "x-gzip" => gzip = Some(gzip.unwrap_or(false) || !refused),
            "*" => any = Some(!refused),
            _ => {}
        }
    }
    gzip.or(any).unwrap_or(false)
}

/// `body` gzipped at the fastest level: a metrics page is repetitive text
/// (label names, namespace names), which the fastest level already shrinks
/// several times over for little CPU.
fn gzip(body: &str) -> std::io::Result<Vec<u8>> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 4),
        flate2::Compression::fast(),
    );
    encoder.write_all(body.as_bytes())?;
    encoder.finish()
}

/// What a render produced: the page, gzipped when asked and possible.
enum Page {
    Plain(String),
    Gzip(Vec<u8>),
}

async fn metrics(state: AppState, headers: HeaderMap) -> Response {
    let Ok(permit) = state.requests.clone().try_acquire_owned() else {
        state.store.count_rejected();
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "too many concurrent requests; retry later\n",
        )
            .into_response();
    };
    let exposition = state.exposition.clone();
    let compress = accepts_gzip(&headers);
    // Rendering and compressing are CPU work: keep them off the thread
    // that accepts and times out connections.
    let render = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        exposition.render().map(|body| {
            if !compress {
                return Page::Plain(body);
            }
            match gzip(&body) {
                Ok(zipped) => Page::Gzip(zipped),
                // Writing to a Vec does not fail; if it ever did, the
                // plain page is still an answer.
                Err(_) => Page::Plain(body),
            }
        })
    });
    const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
    match tokio::time::timeout(state.timeout, render).await {
        Ok(Ok(Ok(Page::Plain(body)))) => (
            [
                (header::CONTENT_TYPE, TEXT),
                (header::VARY, "Accept-Encoding"),
            ],
            body,
        )
            .into_response(),
        Ok(Ok(Ok(Page::Gzip(body)))) => (
            [
                (header::CONTENT_TYPE, TEXT),
                (header::CONTENT_ENCODING, "gzip"),
                (header::VARY, "Accept-Encoding"),
            ],
            body,
        )
            .into_response(),
        Ok(Ok(Err(e))) => {
            tracing::error!(error = %e, "rendering metrics failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("rendering metrics failed: {e}\n"),
            )
                .into_response()
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "rendering task failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "rendering metrics failed\n",
            )
                .into_response()
        }
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "rendering metrics took longer than --web.request-timeout\n",
        )
            .into_response(),
    }
}

async fn landing(state: AppState) -> Html<String> {
    let path = html_escape(&state.telemetry_path);
    Html(format!(
        "<!doctype html>\n<html><head><title>sockdiag-exporter</title></head><body>\n\
         <h1>sockdiag-exporter {}</h1>\n\
         <p>Accept queues, SYN queues, drops and Send-Q/Recv-Q per listener and port, read over NETLINK_SOCK_DIAG.</p>\n\
         <ul><li><a href=\"{path}\">{path}</a>: metrics</li>\n<li><a href=\"/healthz\">/healthz</a>: health</li></ul>\n\
         </body></html>\n",
        env!("CARGO_PKG_VERSION")
    ))
}

/// 503 until every enabled collector has finished its first sample, 200
/// after that, with one line per collector saying how it fares. A collector
/// that fails later shows here and in the metrics, but does not turn the
/// answer to 503: restarting the daemon cannot fix the kernel or procfs, and
/// a liveness probe must not loop on it.
async fn healthz(state: AppState) -> Response {
    let mut body = String::new();
    let mut ready = true;
    for (name, h) in state.store.health() {
        let status = match (h.samples_total, h.last_ok, &h.last_error) {
            (0, _, _) => {
                ready = false;
                "starting: no sample yet".to_string()
            }
            (_, true, _) => "ok".to_string(),
            (_, false, Some(e)) if h.last_success.is_some() => {
                format!("failing, serving the last good figures: {e}")
            }
            (_, false, e) => format!(
                "failing, no good sample yet: {}",
                e.as_deref().unwrap_or("unknown error")
            ),
        };
        body.push_str(&format!("{name}: {status}\n"));
    }
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, body).into_response()
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Ok(v) = value.parse() {
            h.insert(header::ACCEPT_ENCODING, v);
        }
        h
    }

    #[test]
    fn gzip_is_offered_only_when_the_scraper_takes_it() {
        assert!(accepts_gzip(&with("gzip")));
        assert!(accepts_gzip(&with("deflate, GZIP;q=0.5")));
        assert!(accepts_gzip(&with("identity;q=1, *;q=0.1")));
        assert!(!accepts_gzip(&with("gzip;q=0")));
        assert!(!accepts_gzip(&with("gzip; q=0.0, identity")));
        assert!(!accepts_gzip(&with("br, deflate")));
        assert!(!accepts_gzip(&HeaderMap::new()));
        assert!(!accepts_gzip(&with("gzip;Q=0, *")), "gzip refused outright");
        assert!(!accepts_gzip(&with("*;q=0")));
    }

    #[test]
    fn a_gzipped_page_unzips_to_the_page() {
        use std::io::Read;
        let page = "sockdiag_accept_queue_length{netns=\"host\"} 1\n".repeat(1000);
        let Ok(zipped) = gzip(&page) else {
            panic!("gzip into a Vec failed");
        };
        assert!(zipped.len() * 10 < page.len(), "{} bytes", zipped.len());
        let mut back = String::new();
        let read = flate2::read::GzDecoder::new(zipped.as_slice()).read_to_string(&mut back);
        assert!(read.is_ok());
        assert_eq!(back, page);
    }
}
