//! A daemon's admin port: plain HTTP on 127.0.0.1 by default, for the operator's own
//! monitoring, never for partners.
//!
//! - `GET /livez`: 200 while the process serves HTTP at all;
//! - `GET /readyz`: 200 once the daemon has recovered its store and serves its gRPC ports,
//!   503 before (and while it stops);
//! - `GET /metrics`: the daemon's metrics in the OpenMetrics text format (which Prometheus
//!   reads), rendered at each scrape by the daemon's own function.
//!
//! A daemon may add its own routes ([`serve_admin_with`]): the node daemon's inbox, whose
//! changes each need a statement signed by the owner's key. Reading carries no
//! authentication; keep the port on loopback or behind the organisation's own proxy
//! (docs/service.md).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;

use crate::transport::{NetError, transport_err};

/// The content type of `/metrics`.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Renders the metrics text at each scrape.
pub type Render = Arc<dyn Fn() -> Result<String, String> + Send + Sync>;

#[derive(Clone)]
struct Admin {
    ready: Arc<AtomicBool>,
    render: Render,
}

async fn livez() -> &'static str {
    "ok\n"
}

async fn readyz(State(a): State<Admin>) -> Response {
    if a.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "recovering or stopping\n").into_response()
    }
}

async fn metrics(State(a): State<Admin>) -> Response {
    let render = a.render.clone();
    match tokio::task::spawn_blocking(move || render()).await {
        Ok(Ok(text)) => ([(header::CONTENT_TYPE, OPENMETRICS)], text).into_response(),
        Ok(Err(e)) => {
            tracing::error!("metrics: {e}");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "metrics failed (see the log)\n",
            )
                .into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

/// The headers every admin response carries: a Content-Security-Policy that allows only the
/// daemon's own stylesheet (no script, no frames, forms only to the daemon), no sniffing, no
/// referrer, no framing, and no caching unless the route set its own.
async fn security_headers(mut res: Response) -> Response {
    use axum::http::HeaderValue;
    let h = res.headers_mut();
    for (k, v) in [
        (
            "content-security-policy",
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'",
        ),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("x-frame-options", "DENY"),
        ("cross-origin-opener-policy", "same-origin"),
        ("cross-origin-resource-policy", "same-origin"),
        (
            "permissions-policy",
            "camera=(), microphone=(), geolocation=()",
        ),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    res
}

/// Serves the admin port on `listener` until `shutdown` completes. `ready` is the daemon's
/// readiness, which it sets once it has recovered and clears when it stops.
pub async fn serve_admin(
    listener: TcpListener,
    ready: Arc<AtomicBool>,
    render: Render,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NetError> {
    serve_admin_with(listener, ready, render, Router::new(), shutdown).await
}

/// [`serve_admin`], with the daemon's own `routes` beside the three standard ones.
pub async fn serve_admin_with(
    listener: TcpListener,
    ready: Arc<AtomicBool>,
    render: Render,
    routes: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NetError> {
    let app = Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(Admin { ready, render })
        .merge(routes)
        .layer(axum::middleware::map_response(security_headers));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| transport_err("admin port", e))
}
