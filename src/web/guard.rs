//! What the web config asks of every request: basic auth when users are
//! configured (401 with `WWW-Authenticate: Basic` otherwise, as
//! exporter-toolkit answers), and the configured headers on every answer,
//! the 401 included. The server runs [`authorize`] before it counts a
//! request as work being done, so a client that cannot authenticate never
//! holds a connection slot as busy.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode, header};

use super::{Active, Verdict, WebConfig};

/// `Ok` when `active` lets the request with `headers` through; otherwise
/// the 401 to answer with. Every path is covered, `/healthz` too: a
/// liveness probe that cannot authenticate should check the port (a TCP
/// probe) instead.
pub async fn authorize(
    web: &WebConfig,
    active: &Active,
    headers: &HeaderMap,
) -> Result<(), Response<Body>> {
    let Some(auth) = &active.auth else {
        return Ok(());
    };
    if auth.check(headers.get(header::AUTHORIZATION)).await == Verdict::Allowed {
        return Ok(());
    }
    web.count_unauthorized();
    let mut response = Response::new(Body::from("Unauthorized\n"));
    *response.status_mut() = StatusCode::UNAUTHORIZED;
    let h = response.headers_mut();
    h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic"));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    add_headers(&mut response, &active.headers);
    Err(response)
}

/// Adds the configured headers to `response`.
pub fn add_headers<B>(response: &mut Response<B>, headers: &[(HeaderName, HeaderValue)]) {
    for (name, value) in headers {
        response.headers_mut().insert(name.clone(), value.clone());
    }
}
