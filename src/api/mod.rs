//! The HTTP face of the registry: parse the request into an [`Endpoint`],
//! authenticate, authorize, call one service method, build the response.
//! Handlers never touch a backend (DESIGN invariant 8).

mod admin;
pub mod endpoint;
pub mod errors;
mod handlers;
pub mod ranges;
mod token;

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

use crate::auth::{Gate, NameRef};
use crate::conn::{ClientInfo, TrustedProxies};
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
    pub trusted_proxies: TrustedProxies,
    /// Serve `/metrics` on the main listener too; off when a health
    /// listener (`server.health_listen`) carries it.
    pub metrics_on_main: bool,
    /// Who may read `/metrics` on the main listener (`[metrics]`); open
    /// when unset.
    pub metrics_access: Option<MetricsAccess>,
    /// Continue any caller's W3C trace context, not only trusted proxies'.
    pub trust_trace_context: bool,
    /// The scan extension's scanner, when enabled.
    #[cfg(feature = "scan")]
    pub scanner: Option<Arc<crate::ext::scan::Scanner>>,
    /// The mirror extension's upstreams, when configured.
    #[cfg(feature = "mirror")]
    pub mirror: Option<Arc<crate::ext::mirror::Mirror>>,
    /// The search extension's index, when enabled.
    #[cfg(feature = "search")]
    pub search: Option<Arc<crate::ext::search::Search>>,
    /// The UI's settings, when enabled.
    #[cfg(feature = "ui")]
    pub ui: Option<crate::ext::ui::UiSettings>,
}

impl App {
    pub fn new(registry: Registry, gate: Gate, body_idle_timeout: Duration) -> App {
        App {
            registry,
            gate,
            body_idle_timeout,
            draining: AtomicBool::new(false),
            limiter: None,
            trusted_proxies: TrustedProxies::default(),
            metrics_on_main: true,
            #[cfg(feature = "scan")]
            scanner: None,
            #[cfg(feature = "mirror")]
            mirror: None,
            #[cfg(feature = "search")]
            search: None,
            #[cfg(feature = "ui")]
            ui: None,
            metrics_access: None,
            trust_trace_context: false,
        }
    }

    /// Count a request against its budget.
    pub async fn admit(
        &self,
        class: crate::ratelimit::Class,
        identity: &crate::auth::Identity,
        client: std::net::IpAddr,
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

/// The request's connection facts, as the server resolved them; a request
/// that came through no listener (in-process tests) is from nowhere known.
pub(crate) fn client_of(extensions: &http::Extensions) -> ClientInfo {
    extensions.get::<ClientInfo>().cloned().unwrap_or_else(ClientInfo::unknown)
}

/// Who may scrape `/metrics` on the main listener. (Builds without the
/// `metrics` extension refuse `[metrics]`, so never read it.)
#[derive(Debug, Clone)]
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
pub struct MetricsAccess {
    /// SHA-256 of the bearer token: compared by digest, so the comparison
    /// reveals nothing about the token.
    token_digest: Option<[u8; 32]>,
    allow: Vec<NameRef>,
}

impl MetricsAccess {
    /// From `[metrics]`; names are checked like those of access policies.
    pub fn from_config(c: &crate::config::MetricsConfig, issuers: &[&str]) -> Result<MetricsAccess, String> {
        use sha2::Digest as _;
        let allow = c
            .allow
            .iter()
            .map(|n| NameRef::parse(n, crate::auth::NameKind::User, issuers).map_err(|e| format!("allow: {e}")))
            .collect::<Result<_, _>>()?;
        let token_digest = c.bearer_token.as_ref().map(|t| sha2::Sha256::digest(t.expose().as_bytes()).into());
        Ok(MetricsAccess { token_digest, allow })
    }

    #[cfg(feature = "metrics")]
    async fn admits(&self, gate: &Gate, headers: &http::HeaderMap, client: &ClientInfo) -> bool {
        use sha2::Digest as _;
        if let Some(want) = &self.token_digest {
            let presented = headers
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")));
            if let Some(token) = presented {
                let got: [u8; 32] = sha2::Sha256::digest(token.trim().as_bytes()).into();
                if &got == want {
                    return true;
                }
            }
        }
        if self.allow.is_empty() {
            return false;
        }
        match gate.authenticate(headers, client).await {
            Ok(identity) => self.allow.iter().any(|n| n.is_subject_of(&identity)),
            Err(_) => false,
        }
    }
}

/// An audit record of a UI sign-in attempt (the API's own are written by
/// the dispatcher).
#[cfg(feature = "ui")]
pub(crate) fn audit_login(identity: Option<&crate::auth::Identity>, client: std::net::IpAddr, status: StatusCode) {
    handlers::audit(identity, client, None, "ui_login", status);
}

/// Where the token service's public keys are published.
pub const JWKS_PATH: &str = "/.well-known/jwks.json";

/// The router: health endpoints, the token service when configured, then
/// everything else through the parser.
pub fn router(app: Arc<App>) -> Router {
    let mut router = Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/admin/revocations", axum::routing::post(admin::revoke))
        .route("/admin/gc", get(admin::gc_report).post(admin::gc_start))
        .route("/admin/usage", get(admin::usage))
        .route("/admin/scrub", get(admin::scrub_report).post(admin::scrub_start));
    #[cfg(feature = "metrics")]
    if app.metrics_on_main {
        router = router.route("/metrics", get(metrics_guarded));
    }
    if let Some(t) = app.gate.token_service() {
        router =
            router.route(&t.path, get(token::token_get).post(token::token_post)).route(JWKS_PATH, get(token::jwks));
    }
    #[cfg(feature = "ui")]
    if app.ui.is_some() {
        router = router.merge(crate::ext::ui::routes());
    }
    router
        .fallback(handlers::dispatch)
        .layer(middleware::from_fn(contain_panics))
        .layer(middleware::from_fn_with_state(app.clone(), log_and_stamp))
        // Outermost as well: a panic in the logging middleware itself is
        // contained too (the inner layer keeps such 500s measured).
        .layer(middleware::from_fn(contain_panics))
        .with_state(app)
}

/// The health listener's router: probes and metrics, nothing else.
pub fn health_router(app: Arc<App>) -> Router {
    let router = Router::new().route("/livez", get(livez)).route("/readyz", get(readyz));
    #[cfg(feature = "metrics")]
    let router = router.route("/metrics", get(metrics));
    router.layer(middleware::from_fn(contain_panics)).with_state(app)
}

/// `/metrics` of the health listener: open (keep that port internal).
#[cfg(feature = "metrics")]
async fn metrics() -> Response {
    (
        StatusCode::OK,
        [(http::header::CONTENT_TYPE, crate::ext::prometheus::CONTENT_TYPE)],
        crate::ext::prometheus::render(),
    )
        .into_response()
}

/// `/metrics` of the main listener: behind `[metrics]` when configured.
#[cfg(feature = "metrics")]
async fn metrics_guarded(State(app): State<Arc<App>>, req: Request<Body>) -> Response {
    if let Some(access) = &app.metrics_access {
        let client = client_of(req.extensions());
        if !access.admits(&app.gate, req.headers(), &client).await {
            let mut resp = errors::error_response(&crate::oci::OciError::Unauthorized {
                challenge: "Bearer realm=\"metrics\"".into(),
                message: "scraping /metrics needs the metrics bearer token or an allowed identity",
            });
            resp.headers_mut().insert(http::header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            return resp;
        }
    }
    metrics().await
}

/// A request's endpoint, parsed once by `log_and_stamp` for the handler.
#[derive(Debug, Clone)]
pub(crate) struct Parsed(pub(crate) Endpoint);

/// The operation of a request the parser never saw: the fixed routes by
/// path, anything else `unknown` (never the raw path: it is client input).
fn fixed_operation(app: &App, path: &str) -> &'static str {
    match path {
        "/livez" => "livez",
        "/readyz" => "readyz",
        "/metrics" => "metrics",
        "/admin/revocations" => "admin_revocations",
        "/admin/gc" => "admin_gc",
        "/admin/usage" => "admin_usage",
        "/admin/scrub" => "admin_scrub",
        JWKS_PATH => "jwks",
        _ if app.gate.token_service().is_some_and(|t| t.path == path) => "token",
        #[cfg(feature = "ui")]
        _ if app.ui.is_some() => crate::ext::ui::operation(path).unwrap_or("unknown"),
        _ => "unknown",
    }
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

/// A panicking handler is answered 500 (and counted) while the process and
/// every other request go on. Panics are bugs: none should be reachable.
async fn contain_panics(req: Request<Body>, next: Next) -> Response {
    use futures::FutureExt as _;
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    match std::panic::AssertUnwindSafe(next.run(req)).catch_unwind().await {
        Ok(resp) => resp,
        Err(panic) => {
            crate::metrics::inc(&crate::metrics::get().panics);
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(%method, %path, panic = %what, "a request handler panicked; answered 500");
            errors::error_response(&crate::oci::OciError::Internal("request handler panicked".into()))
        }
    }
}

/// Around every request: a span (exported by the `otel` extension), the API
/// version header, metrics, and one access log line.
async fn log_and_stamp(State(app): State<Arc<App>>, mut req: Request<Body>, next: Next) -> Response {
    use tracing::Instrument as _;

    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let client = client_of(req.extensions());
    // The operation names the span and labels the metrics. The parsed
    // endpoint travels with the request, so the handler does not parse again.
    let operation = match endpoint::parse(&method, &path) {
        Ok(endpoint) => {
            let operation = endpoint.operation();
            req.extensions_mut().insert(Parsed(endpoint));
            operation
        }
        Err(_) => fixed_operation(&app, &path),
    };
    let request_id = request_id(req.headers(), client.peer_is_trusted(&app.trusted_proxies));
    // A closed set of method names: clients cannot mint span names.
    let method_name = crate::metrics::method_label(&method);
    let span = tracing::info_span!(
        target: "berth::request",
        "request",
        otel.name = %format_args!("{method_name} {operation}"),
        otel.kind = "server",
        http.request.method = method_name,
        http.route = operation,
        url.path = %path,
        client.address = %client.address,
        http.response.status_code = tracing::field::Empty,
        request_id = %request_id,
        trace_id = tracing::field::Empty,
    );
    // Trace context is believed from trusted proxies, or from anyone when
    // configured: otherwise a client could force sampling of its requests.
    #[cfg(feature = "otel")]
    {
        if client.peer_is_trusted(&app.trusted_proxies) || app.trust_trace_context {
            crate::ext::otel::continue_trace(&span, req.headers());
        }
        if let Some(id) = crate::ext::otel::trace_id(&span) {
            span.record("trace_id", id);
        }
    }
    let mut resp = next.run(req).instrument(span.clone()).await;
    resp.headers_mut().insert(handlers::API_VERSION, HeaderValue::from_static("registry/2.0"));
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert(REQUEST_ID, value);
    }
    let status = resp.status().as_u16();
    let elapsed = started.elapsed();
    span.record("http.response.status_code", status);
    crate::metrics::observe_request(&method, operation, status, elapsed);
    let latency_ms = elapsed.as_secs_f64() * 1000.0;
    let (peer, client) = (client.peer, client.address);
    // Inside the span, so the line carries the request and trace ids.
    span.in_scope(|| {
        if status >= 500 {
            tracing::warn!(target: "berth::access", %method, %path, status, latency_ms, %client, %peer, "request");
        } else {
            tracing::info!(target: "berth::access", %method, %path, status, latency_ms, %client, %peer, "request");
        }
    });
    resp
}

/// The header naming a request in both directions.
const REQUEST_ID: &str = "x-request-id";

/// The request's id: the one a trusted proxy passed on, when it is a
/// plain token of at most 128 characters, or a new random one. A client's
/// own id is not believed (it could collide with another's on purpose).
fn request_id(headers: &http::HeaderMap, trusted: bool) -> String {
    if trusted {
        if let Some(v) = headers.get(REQUEST_ID).and_then(|v| v.to_str().ok()) {
            let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':');
            if !v.is_empty() && v.len() <= 128 && v.chars().all(plain) {
                return v.to_owned();
            }
        }
    }
    uuid::Uuid::new_v4().simple().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt as _;

    #[tokio::test]
    async fn a_panicking_handler_is_answered_500_and_the_service_goes_on() {
        async fn boom() -> &'static str {
            panic!("a bug in a handler")
        }
        let router: Router = Router::new()
            .route("/boom", get(boom))
            .route("/fine", get(livez))
            .layer(middleware::from_fn(contain_panics));
        let before = crate::metrics::get().panics.load(Ordering::Relaxed);
        let req = || Request::builder().uri("/boom").body(Body::empty()).unwrap();
        let resp = router.clone().oneshot(req()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = http_body_util::BodyExt::collect(resp.into_body()).await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&body);
        assert!(text.contains("\"UNKNOWN\""), "{text}");
        assert!(!text.contains("a bug in a handler"), "the panic message must not reach the client: {text}");
        // The same service keeps answering.
        let ok = router.clone().oneshot(Request::builder().uri("/fine").body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(ok.status(), StatusCode::OK);
        let again = router.oneshot(req()).await.unwrap();
        assert_eq!(again.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(crate::metrics::get().panics.load(Ordering::Relaxed) >= before + 2);
    }
}
