//! The HTTP face of the registry: parse the request into an [`Endpoint`],
//! authenticate, authorize, call one service method, build the response.
//! Handlers never touch a backend (DESIGN invariant 8).

mod admin;
pub mod endpoint;
pub mod errors;
mod handlers;
pub mod ranges;
mod token;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use http::{HeaderValue, StatusCode};

pub use endpoint::Endpoint;

use crate::auth::Gate;
use crate::registry::Registry;

/// Everything a request handler needs.
#[derive(Debug)]
pub struct App {
    pub registry: Registry,
    pub gate: Gate,
    /// Longest pause allowed while reading a request body.
    pub body_idle_timeout: Duration,
    /// Set when shutdown starts: readiness turns 503 so traffic moves away.
    draining: AtomicBool,
    /// Request budgets shared by the fleet.
    pub limiter: Option<crate::ratelimit::RateLimiter>,
    /// Peers whose X-Forwarded-For / Forwarded headers are believed.
    pub trusted_proxies: Vec<crate::ratelimit::Cidr>,
}

impl App {
    pub fn new(registry: Registry, gate: Gate, body_idle_timeout: Duration) -> App {
        App {
            registry,
            gate,
            body_idle_timeout,
            draining: AtomicBool::new(false),
            limiter: None,
            trusted_proxies: Vec::new(),
        }
    }

    /// The client's address: the peer, or what a trusted proxy says.
    pub fn client_address(&self, parts: &http::request::Parts) -> Option<std::net::IpAddr> {
        let peer = parts.extensions.get::<PeerAddr>().map(|p| p.0.ip());
        crate::ratelimit::client_address(peer, &parts.headers, &self.trusted_proxies)
    }

    /// Count a request against its budget.
    pub async fn admit(
        &self,
        class: crate::ratelimit::Class,
        identity: &crate::auth::Identity,
        client: Option<std::net::IpAddr>,
        repo: Option<&str>,
    ) -> Result<(), crate::oci::OciError> {
        use crate::ratelimit::Verdict;
        let Some(limiter) = &self.limiter else { return Ok(()) };
        match limiter.check(class, identity, client, repo).await {
            Verdict::Allow => Ok(()),
            Verdict::Limited(wait) => {
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                Err(crate::oci::OciError::TooManyRequests { retry_after: Duration::from_secs(secs.max(1)) })
            }
            Verdict::Unavailable => Err(crate::oci::OciError::Unavailable {
                retry_after: Duration::from_secs(5),
                cause: "rate limiter unavailable and configured to fail closed".into(),
            }),
        }
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }
}

/// The peer address of the connection, put on each request by the server.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// Marks a request that arrived over TLS (set by the server).
#[derive(Debug, Clone, Copy)]
pub struct Tls;

/// The verified leaf certificate (DER) the client presented, if any.
#[derive(Debug, Clone)]
pub struct ClientCertificate(pub Arc<Vec<u8>>);

/// Where the token service's public keys are published.
pub const JWKS_PATH: &str = "/.well-known/jwks.json";

/// The router: health endpoints, the token service when configured, then
/// everything else through the parser.
pub fn router(app: Arc<App>) -> Router {
    let mut router = Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/admin/revocations", axum::routing::post(admin::revoke));
    if let Some(t) = app.gate.token_service() {
        router =
            router.route(&t.path, get(token::token_get).post(token::token_post)).route(JWKS_PATH, get(token::jwks));
    }
    router.fallback(handlers::dispatch).layer(middleware::from_fn(log_and_stamp)).with_state(app)
}

async fn metrics() -> impl IntoResponse {
    (StatusCode::OK, [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], crate::metrics::render())
}

async fn livez() -> impl IntoResponse {
    (StatusCode::OK, "ok\n")
}

async fn readyz(State(app): State<Arc<App>>) -> Response {
    if app.draining.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    match tokio::time::timeout(Duration::from_secs(2), app.registry.check_backends()).await {
        Ok(Ok(())) => (StatusCode::OK, "ready\n").into_response(),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, source = ?std::error::Error::source(&e), "readiness check failed");
            (StatusCode::SERVICE_UNAVAILABLE, "backends unavailable\n").into_response()
        }
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "backends did not answer\n").into_response(),
    }
}

/// One log line per request, and the API version header on every response.
async fn log_and_stamp(req: Request<Body>, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let peer = req.extensions().get::<PeerAddr>().map(|p| p.0.to_string()).unwrap_or_default();
    let mut resp = next.run(req).await;
    resp.headers_mut().insert(handlers::API_VERSION, HeaderValue::from_static("registry/2.0"));
    let status = resp.status().as_u16();
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    if status >= 500 {
        tracing::warn!(target: "berth::access", %method, %path, status, latency_ms, %peer, "request");
    } else {
        tracing::info!(target: "berth::access", %method, %path, status, latency_ms, %peer, "request");
    }
    resp
}
