//! What the web config asks of every request: basic auth when users are
//! configured (401 with `WWW-Authenticate: Basic` otherwise, as
//! exporter-toolkit answers), and the configured headers on every answer,
//! the 401 included.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{Verdict, WebConfig};

/// Axum middleware over every route, `/healthz` too: a liveness probe
/// that cannot authenticate should check the port (a TCP probe) instead.
pub async fn guard(State(web): State<Arc<WebConfig>>, request: Request, next: Next) -> Response {
    let active = web.current();
    if let Some(auth) = &active.auth {
        let verdict = auth
            .check(request.headers().get(header::AUTHORIZATION))
            .await;
        if verdict == Verdict::Denied {
            web.count_unauthorized();
            let mut response = (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Basic")],
                "Unauthorized\n",
            )
                .into_response();
            add_headers(&mut response, &active.headers);
            return response;
        }
    }
    let mut response = next.run(request).await;
    add_headers(&mut response, &active.headers);
    response
}

fn add_headers(response: &mut Response, headers: &[(header::HeaderName, header::HeaderValue)]) {
    for (name, value) in headers {
        response.headers_mut().insert(name.clone(), value.clone());
    }
}
