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
    /// Collection passes that ended, by outcome.
    pub gc_passes_ok: AtomicU64,
    pub gc_passes_failed: AtomicU64,
    /// Unix seconds of the last pass that succeeded (0: none yet).
    pub gc_last_success: AtomicU64,
    pub gc_last_duration_ms: AtomicU64,
    /// Objects the collector deleted, by kind.
    pub gc_deleted_blobs: AtomicU64,
    pub gc_deleted_manifests: AtomicU64,
    pub gc_deleted_links: AtomicU64,
    pub gc_deleted_tags: AtomicU64,
    /// Referrer and pull records, catalog entries.
    pub gc_deleted_records: AtomicU64,
    /// Blob bytes the collector deleted.
    pub gc_reclaimed_bytes: AtomicU64,
    /// Writes refused by the collection guard (the client retries).
    pub gc_writer_refusals: AtomicU64,
    /// Findings of the last scrub of this process, by class.
    pub scrub_corrupt: AtomicU64,
    pub scrub_missing: AtomicU64,
    pub scrub_orphaned: AtomicU64,
    pub scrub_dangling: AtomicU64,
    /// Unix seconds the last scrub of this process ended (0: none yet).
    pub scrub_last_run: AtomicU64,
    /// Scan jobs (one manifest each) that ended, by outcome; retries.
    pub scan_jobs_ok: AtomicU64,
    pub scan_jobs_failed: AtomicU64,
    pub scan_jobs_retried: AtomicU64,
    /// Layers inventoried, and those whose analysis ended with an error.
    pub scan_layers: AtomicU64,
    pub scan_layer_errors: AtomicU64,
    /// Time spent inventorying layers, in milliseconds.
    pub scan_layer_ms: AtomicU64,
    /// Jobs waiting in the fleet's queue, as this process last saw it.
    pub scan_queue_depth: AtomicU64,
    /// Reports computed, and their findings by severity.
    pub scan_reports: AtomicU64,
    pub scan_findings_critical: AtomicU64,
    pub scan_findings_high: AtomicU64,
    pub scan_findings_medium: AtomicU64,
    pub scan_findings_low: AtomicU64,
    pub scan_findings_unknown: AtomicU64,
    /// Pulls the scan policy refused.
    pub scan_policy_denials: AtomicU64,
    /// Blob reads through the blob cache, and how they were served: from a
    /// cached file (hit), from a fill (miss; `fill_joins` of them followed
    /// a fill another request started), or passed through.
    pub blob_cache_requests: AtomicU64,
    pub blob_cache_hits: AtomicU64,
    pub blob_cache_misses: AtomicU64,
    pub blob_cache_fill_joins: AtomicU64,
    pub blob_cache_passthrough: AtomicU64,
    /// Object-store GETs the cache made (fills, resumptions, pass-through),
    /// and those it saved (reads served without one of their own).
    pub blob_cache_store_gets: AtomicU64,
    pub blob_cache_store_gets_saved: AtomicU64,
    /// Bytes sent to clients from the cache, and bytes written into it.
    pub blob_cache_served_bytes: AtomicU64,
    pub blob_cache_filled_bytes: AtomicU64,
    /// Files discarded because they did not match their digest.
    pub blob_cache_corrupt: AtomicU64,
    pub blob_cache_evictions: AtomicU64,
    /// Gauges: bytes and blobs cached, fills in progress.
    pub blob_cache_bytes: AtomicU64,
    pub blob_cache_blobs: AtomicU64,
    pub blob_cache_fills_in_flight: AtomicU64,
    /// The cache's byte budget (0: no cache).
    pub blob_cache_max_bytes: AtomicU64,
    /// Fills that asked the owning peer, and those that fell back to the
    /// object store (peer gone, slow, or failed mid-stream).
    pub mesh_peer_fetches: AtomicU64,
    pub mesh_peer_fallbacks: AtomicU64,
    /// Blob requests the internal listener served to peers, and
    /// connections it refused (no or untrusted client certificate).
    pub mesh_served: AtomicU64,
    pub mesh_refused: AtomicU64,
    /// Gauge: live members this replica sees (itself included).
    pub mesh_members: AtomicU64,
    /// Bytes read from and written to the object store (bodies only).
    pub store_read_bytes: AtomicU64,
    pub store_written_bytes: AtomicU64,
    /// Gauge: upload requests (PATCH, PUT, monolithic POST) streaming a body
    /// into this process now.
    pub uploads_in_flight: AtomicU64,
    /// Upload body bytes received.
    pub upload_bytes: AtomicU64,
    /// Upload completions, by outcome; cancellations; sessions expired.
    pub upload_completed: AtomicU64,
    pub upload_failed: AtomicU64,
    pub upload_cancelled: AtomicU64,
    pub upload_expired: AtomicU64,
    /// Read-path caches (registry/cache.rs): hits and misses.
    pub cache_tag_hits: AtomicU64,
    pub cache_tag_misses: AtomicU64,
    pub cache_manifest_hits: AtomicU64,
    pub cache_manifest_misses: AtomicU64,
    /// Shared-state calls that succeeded after the state was unreachable
    /// (the connection came back), and the pub/sub subscriptions open now.
    pub state_reconnects: AtomicU64,
    pub state_subscriptions: AtomicU64,
    /// Unix seconds the revocation list was last loaded in full (0: never),
    /// and since when this process keeps one (0: it does not: no
    /// authentication is configured).
    pub revocations_loaded_at: AtomicU64,
    pub revocations_tracked_since: AtomicU64,
    /// Whether the last probe of each backend answered in time (1) or not
    /// (0), and how long it took; written by the probe loop of `serve`.
    pub probe_store_up: AtomicU64,
    pub probe_state_up: AtomicU64,
    pub probe_store_ms: AtomicU64,
    pub probe_state_ms: AtomicU64,
    /// Mirror: upstream requests by outcome (ok, not_found, rate_limited,
    /// unavailable, refused: content not matching its digest), bytes of
    /// blobs fetched, tag checks answered locally within their TTL, and
    /// tags served stale because the upstream could not be asked; pulls
    /// that waited for another pull's fetch of the same object.
    pub mirror_upstream: [AtomicU64; MIRROR_OUTCOMES.len()],
    pub mirror_fetched_bytes: AtomicU64,
    pub mirror_fresh_hits: AtomicU64,
    pub mirror_stale: AtomicU64,
    pub mirror_fill_waits: AtomicU64,
    /// Authentications by scheme and outcome ([`observe_auth`]).
    pub auth: [[AtomicU64; 4]; 4],
    /// Failed-login throttle decisions ([`observe_throttle`]).
    pub throttle: [AtomicU64; 4],
}

/// The outcome labels of `Metrics::mirror_upstream`, by index.
pub const MIRROR_OUTCOMES: [&str; 5] = ["ok", "not_found", "rate_limited", "unavailable", "refused"];
pub const MIRROR_OK: usize = 0;
pub const MIRROR_NOT_FOUND: usize = 1;
pub const MIRROR_RATE_LIMITED: usize = 2;
pub const MIRROR_UNAVAILABLE: usize = 3;
/// Content that did not match its digest.
pub const MIRROR_REFUSED: usize = 4;

/// Counts a gauge up while it lives.
#[derive(Debug)]
pub struct GaugeGuard(&'static AtomicU64);

impl GaugeGuard {
    pub fn enter(gauge: &'static AtomicU64) -> GaugeGuard {
        gauge.fetch_add(1, Ordering::Relaxed);
        GaugeGuard(gauge)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
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

/// Which way bytes crossed between the replica and the object store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreDirection {
    Read,
    Written,
}

/// Count one object-store call: its operation (a name of the trait's
/// methods), outcome (a closed set) and latency. Recorded by the `metrics`
/// extension; a no-op in builds without it.
pub fn observe_store(operation: &'static str, outcome: &'static str, elapsed: std::time::Duration) {
    #[cfg(feature = "metrics")]
    crate::ext::prometheus::observe_store(operation, outcome, elapsed);
    #[cfg(not(feature = "metrics"))]
    let _ = (operation, outcome, elapsed);
}

/// Count one shared-state call (Redis, or memory in the embedded shape):
/// its operation, outcome (ok, unavailable, fenced, error) and latency.
pub fn observe_state(operation: &'static str, outcome: &'static str, elapsed: std::time::Duration) {
    #[cfg(feature = "metrics")]
    crate::ext::prometheus::observe_state(operation, outcome, elapsed);
    #[cfg(not(feature = "metrics"))]
    let _ = (operation, outcome, elapsed);
}

/// How a request's credentials were presented (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthScheme {
    Anonymous = 0,
    Basic = 1,
    Bearer = 2,
    Mtls = 3,
}

impl AuthScheme {
    pub const ALL: [AuthScheme; 4] = [AuthScheme::Anonymous, AuthScheme::Basic, AuthScheme::Bearer, AuthScheme::Mtls];

    pub fn label(self) -> &'static str {
        match self {
            AuthScheme::Anonymous => "anonymous",
            AuthScheme::Basic => "basic",
            AuthScheme::Bearer => "bearer",
            AuthScheme::Mtls => "mtls",
        }
    }
}

/// What became of them (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthOutcome {
    Accepted = 0,
    Refused = 1,
    /// Refused by the failed-login throttle or the password-check limits.
    Throttled = 2,
    /// A backend (the directory, the revocation list) could not decide.
    Unavailable = 3,
}

impl AuthOutcome {
    pub const ALL: [AuthOutcome; 4] =
        [AuthOutcome::Accepted, AuthOutcome::Refused, AuthOutcome::Throttled, AuthOutcome::Unavailable];

    pub fn label(self) -> &'static str {
        match self {
            AuthOutcome::Accepted => "accepted",
            AuthOutcome::Refused => "refused",
            AuthOutcome::Throttled => "throttled",
            AuthOutcome::Unavailable => "unavailable",
        }
    }
}

/// Count one authentication by scheme and outcome.
pub fn observe_auth(scheme: AuthScheme, outcome: AuthOutcome) {
    get().auth[scheme as usize][outcome as usize].fetch_add(1, Ordering::Relaxed);
}

/// What the failed-login throttle decided about one password check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThrottleDecision {
    /// Checked and let through.
    Allowed = 0,
    /// Refused without checking (user or address locked out).
    LockedOut = 1,
    /// A failure whose answer was held back.
    Delayed = 2,
    /// The counters were unreachable: not throttled.
    Unchecked = 3,
}

impl ThrottleDecision {
    pub const ALL: [ThrottleDecision; 4] = [
        ThrottleDecision::Allowed,
        ThrottleDecision::LockedOut,
        ThrottleDecision::Delayed,
        ThrottleDecision::Unchecked,
    ];

    pub fn label(self) -> &'static str {
        match self {
            ThrottleDecision::Allowed => "allowed",
            ThrottleDecision::LockedOut => "locked_out",
            ThrottleDecision::Delayed => "delayed",
            ThrottleDecision::Unchecked => "unchecked",
        }
    }
}

pub fn observe_throttle(decision: ThrottleDecision) {
    get().throttle[decision as usize].fetch_add(1, Ordering::Relaxed);
}

/// Count bytes read from or written to the object store.
pub fn store_bytes(direction: StoreDirection, n: u64) {
    let m = get();
    match direction {
        StoreDirection::Read => m.store_read_bytes.fetch_add(n, Ordering::Relaxed),
        StoreDirection::Written => m.store_written_bytes.fetch_add(n, Ordering::Relaxed),
    };
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
