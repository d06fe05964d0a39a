//! The core's counters: plain atomics, kept in every flavor (they cost an
//! atomic add). The `metrics` extension exposes them, with request counts
//! and latencies, at `/metrics`; the minimal flavor has no such endpoint.

use std::sync::atomic::{AtomicU64, Ordering};

/// Every metric of the process.
#[derive(Debug, Default)]
pub struct Metrics {
    pub rate_limited_read: AtomicU64,
    pub rate_limited_write: AtomicU64,
    pub rate_limited_auth: AtomicU64,
    /// 1 while the limiter cannot reach the shared state.
    pub rate_limit_backend_down: AtomicU64,
    /// Requests let through because the limiter failed open.
    pub rate_limit_failed_open: AtomicU64,
    /// Requests refused because the limiter failed closed.
    pub rate_limit_failed_closed: AtomicU64,
    /// Requests whose handler panicked and were answered 500.
    pub panics: AtomicU64,
}

static METRICS: std::sync::OnceLock<Metrics> = std::sync::OnceLock::new();

/// The process-wide metrics.
pub fn get() -> &'static Metrics {
    METRICS.get_or_init(Metrics::default)
}

pub fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Count one answered request. Recorded by the `metrics` extension; a
/// no-op in builds without it.
pub fn observe_request(method: &http::Method, operation: &'static str, status: u16, elapsed: std::time::Duration) {
    #[cfg(feature = "metrics")]
    crate::ext::prometheus::observe(method, operation, status, elapsed);
    #[cfg(not(feature = "metrics"))]
    let _ = (method, operation, status, elapsed);
}

/// The method as a label or span name: the registry's own methods by name,
/// anything else `_OTHER` (OpenTelemetry's convention), so clients cannot
/// grow the set.
pub fn method_label(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::HEAD => "HEAD",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::PATCH => "PATCH",
        http::Method::DELETE => "DELETE",
        http::Method::OPTIONS => "OPTIONS",
        _ => "_OTHER",
    }
}
