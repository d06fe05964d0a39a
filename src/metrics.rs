//! Process metrics in the Prometheus text format, served at `/metrics`.
//! Counters are plain atomics; this is the start of the registry's
//! metrics, with what the rate limiter and authentication report.

use std::fmt::Write as _;
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
}

static METRICS: std::sync::OnceLock<Metrics> = std::sync::OnceLock::new();

/// The process-wide metrics.
pub fn get() -> &'static Metrics {
    METRICS.get_or_init(Metrics::default)
}

pub fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// The metrics as Prometheus text exposition.
pub fn render() -> String {
    let m = get();
    let v = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let mut out = String::new();
    let _ = writeln!(out, "# HELP berth_rate_limited_requests_total Requests refused for being over budget.");
    let _ = writeln!(out, "# TYPE berth_rate_limited_requests_total counter");
    for (class, c) in [("read", &m.rate_limited_read), ("write", &m.rate_limited_write), ("auth", &m.rate_limited_auth)]
    {
        let _ = writeln!(out, "berth_rate_limited_requests_total{{class=\"{class}\"}} {}", v(c));
    }
    let _ =
        writeln!(out, "# HELP berth_rate_limit_backend_down 1 while the rate limiter cannot reach the shared state.");
    let _ = writeln!(out, "# TYPE berth_rate_limit_backend_down gauge");
    let _ = writeln!(out, "berth_rate_limit_backend_down {}", v(&m.rate_limit_backend_down));
    let _ = writeln!(out, "# HELP berth_rate_limit_unchecked_requests_total Requests decided by the fail mode while the limiter was down.");
    let _ = writeln!(out, "# TYPE berth_rate_limit_unchecked_requests_total counter");
    let _ =
        writeln!(out, "berth_rate_limit_unchecked_requests_total{{mode=\"open\"}} {}", v(&m.rate_limit_failed_open));
    let _ = writeln!(
        out,
        "berth_rate_limit_unchecked_requests_total{{mode=\"closed\"}} {}",
        v(&m.rate_limit_failed_closed)
    );
    out
}
