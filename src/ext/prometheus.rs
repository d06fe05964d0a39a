//! The `metrics` extension: `/metrics` in the OpenMetrics text format, with
//! request counts and latencies by method, operation and status, plus the
//! core's own counters (rate limits, panics), read from their atomics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Latency buckets, in seconds: a manifest from cache is well under a
/// millisecond, a large blob upload can take minutes.
const BUCKETS: [f64; 16] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Answered {
    method: &'static str,
    operation: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Timed {
    method: &'static str,
    operation: &'static str,
}

fn histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

#[derive(Debug)]
struct Http {
    requests: Family<Answered, Counter>,
    duration: Family<Timed, Histogram, fn() -> Histogram>,
}

fn http() -> &'static Http {
    static HTTP: OnceLock<Http> = OnceLock::new();
    HTTP.get_or_init(|| Http {
        requests: Family::default(),
        duration: Family::new_with_constructor(histogram as fn() -> Histogram),
    })
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreCall {
    operation: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreOp {
    operation: &'static str,
}

#[derive(Debug)]
struct Store {
    requests: Family<StoreCall, Counter>,
    duration: Family<StoreOp, Histogram, fn() -> Histogram>,
}

fn store() -> &'static Store {
    static STORE: OnceLock<Store> = OnceLock::new();
    STORE.get_or_init(|| Store {
        requests: Family::default(),
        duration: Family::new_with_constructor(histogram as fn() -> Histogram),
    })
}

/// Count one object-store call and its latency.
pub fn observe_store(operation: &'static str, outcome: &'static str, elapsed: Duration) {
    let s = store();
    s.requests.get_or_create(&StoreCall { operation, outcome }).inc();
    s.duration.get_or_create(&StoreOp { operation }).observe(elapsed.as_secs_f64());
}

fn state() -> &'static Store {
    static STATE: OnceLock<Store> = OnceLock::new();
    STATE.get_or_init(|| Store {
        requests: Family::default(),
        duration: Family::new_with_constructor(histogram as fn() -> Histogram),
    })
}

/// Count one shared-state call and its latency.
pub fn observe_state(operation: &'static str, outcome: &'static str, elapsed: Duration) {
    let s = state();
    s.requests.get_or_create(&StoreCall { operation, outcome }).inc();
    s.duration.get_or_create(&StoreOp { operation }).observe(elapsed.as_secs_f64());
}

/// Count one answered request and its latency.
pub fn observe(method: &http::Method, operation: &'static str, status: u16, elapsed: Duration) {
    let method = crate::metrics::method_label(method);
    let h = http();
    h.requests.get_or_create(&Answered { method, operation, status }).inc();
    h.duration.get_or_create(&Timed { method, operation }).observe(elapsed.as_secs_f64());
}

/// The core's counters, read at scrape time.
#[derive(Debug)]
struct Core;

impl Collector for Core {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let m = crate::metrics::get();
        let v = |c: &AtomicU64| c.load(Ordering::Relaxed);
        {
            let mut family = encoder.encode_descriptor(
                "berth_rate_limited_requests",
                "Requests refused for being over budget.",
                None,
                MetricType::Counter,
            )?;
            for (class, c) in
                [("read", &m.rate_limited_read), ("write", &m.rate_limited_write), ("auth", &m.rate_limited_auth)]
            {
                ConstCounter::new(v(c)).encode(family.encode_family(&[("class", class)])?)?;
            }
        }
        ConstGauge::new(v(&m.rate_limit_backend_down) as i64).encode(encoder.encode_descriptor(
            "berth_rate_limit_backend_down",
            "1 while the rate limiter cannot reach the shared state.",
            None,
            MetricType::Gauge,
        )?)?;
        {
            let mut family = encoder.encode_descriptor(
                "berth_rate_limit_unchecked_requests",
                "Requests decided by the fail mode while the limiter was down.",
                None,
                MetricType::Counter,
            )?;
            for (mode, c) in [("open", &m.rate_limit_failed_open), ("closed", &m.rate_limit_failed_closed)] {
                ConstCounter::new(v(c)).encode(family.encode_family(&[("mode", mode)])?)?;
            }
        }
        ConstCounter::new(v(&m.panics)).encode(encoder.encode_descriptor(
            "berth_panics",
            "Requests whose handler panicked (answered 500).",
            None,
            MetricType::Counter,
        )?)?;
        {
            let mut family = encoder.encode_descriptor(
                "berth_gc_passes",
                "Garbage-collection passes this process ran, by outcome.",
                None,
                MetricType::Counter,
            )?;
            for (outcome, c) in [("ok", &m.gc_passes_ok), ("failed", &m.gc_passes_failed)] {
                ConstCounter::new(v(c)).encode(family.encode_family(&[("outcome", outcome)])?)?;
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "berth_gc_deleted_objects",
                "Objects garbage collection deleted, by kind (record: referrer and pull records, catalog entries).",
                None,
                MetricType::Counter,
            )?;
            for (kind, c) in [
                ("blob", &m.gc_deleted_blobs),
                ("manifest", &m.gc_deleted_manifests),
                ("link", &m.gc_deleted_links),
                ("tag", &m.gc_deleted_tags),
                ("record", &m.gc_deleted_records),
            ] {
                ConstCounter::new(v(c)).encode(family.encode_family(&[("kind", kind)])?)?;
            }
        }
        ConstCounter::new(v(&m.gc_reclaimed_bytes)).encode(encoder.encode_descriptor(
            "berth_gc_reclaimed_bytes",
            "Blob bytes garbage collection deleted.",
            None,
            MetricType::Counter,
        )?)?;
        ConstGauge::new(v(&m.gc_last_success) as i64).encode(encoder.encode_descriptor(
            "berth_gc_last_success_timestamp_seconds",
            "Unix time the last successful pass of this process ended (0: none yet).",
            None,
            MetricType::Gauge,
        )?)?;
        ConstGauge::new(v(&m.gc_last_duration_ms) as f64 / 1000.0).encode(encoder.encode_descriptor(
            "berth_gc_last_duration_seconds",
            "Duration of the last successful pass of this process.",
            None,
            MetricType::Gauge,
        )?)?;
        {
            let mut family = encoder.encode_descriptor(
                "berth_scrub_findings",
                "Findings of the last scrub this process ran, by class.",
                None,
                MetricType::Gauge,
            )?;
            for (class, c) in [
                ("corrupt", &m.scrub_corrupt),
                ("missing", &m.scrub_missing),
                ("orphaned", &m.scrub_orphaned),
                ("dangling", &m.scrub_dangling),
            ] {
                ConstGauge::new(v(c) as i64).encode(family.encode_family(&[("class", class)])?)?;
            }
        }
        ConstGauge::new(v(&m.scrub_last_run) as i64).encode(encoder.encode_descriptor(
            "berth_scrub_last_run_timestamp_seconds",
            "Unix time the last scrub of this process ended (0: none yet).",
            None,
            MetricType::Gauge,
        )?)?;
        ConstCounter::new(v(&m.gc_writer_refusals)).encode(encoder.encode_descriptor(
            "berth_gc_writer_refusals",
            "Writes refused because a collection pass was removing what they touched (clients retry).",
            None,
            MetricType::Counter,
        )?)?;
        {
            let mut family = encoder.encode_descriptor(
                "berth_scan_jobs",
                "Scan jobs (one manifest each) that ended, by outcome, and retries.",
                None,
                MetricType::Counter,
            )?;
            for (outcome, c) in
                [("ok", &m.scan_jobs_ok), ("failed", &m.scan_jobs_failed), ("retried", &m.scan_jobs_retried)]
            {
                ConstCounter::new(v(c)).encode(family.encode_family(&[("outcome", outcome)])?)?;
            }
        }
        ConstCounter::new(v(&m.scan_layers)).encode(encoder.encode_descriptor(
            "berth_scan_layers",
            "Layers inventoried by this process (each layer once per fleet).",
            None,
            MetricType::Counter,
        )?)?;
        ConstCounter::new(v(&m.scan_layer_errors)).encode(encoder.encode_descriptor(
            "berth_scan_layer_errors",
            "Layers whose analysis ended with an error (not a tar, a bomb, ...), reported per layer.",
            None,
            MetricType::Counter,
        )?)?;
        ConstCounter::new(v(&m.scan_layer_ms) as f64 / 1000.0).encode(encoder.encode_descriptor(
            "berth_scan_layer_seconds",
            "Time spent inventorying layers.",
            None,
            MetricType::Counter,
        )?)?;
        ConstGauge::new(v(&m.scan_queue_depth) as i64).encode(encoder.encode_descriptor(
            "berth_scan_queue_depth",
            "Scan jobs due in the fleet's queue when this process last looked (at most 16 counted).",
            None,
            MetricType::Gauge,
        )?)?;
        ConstCounter::new(v(&m.scan_reports)).encode(encoder.encode_descriptor(
            "berth_scan_reports",
            "Reports computed (cached reports are not counted).",
            None,
            MetricType::Counter,
        )?)?;
        {
            let mut family = encoder.encode_descriptor(
                "berth_scan_findings",
                "Findings in the reports this process computed, by severity.",
                None,
                MetricType::Counter,
            )?;
            for (severity, c) in [
                ("critical", &m.scan_findings_critical),
                ("high", &m.scan_findings_high),
                ("medium", &m.scan_findings_medium),
                ("low", &m.scan_findings_low),
                ("unknown", &m.scan_findings_unknown),
            ] {
                ConstCounter::new(v(c)).encode(family.encode_family(&[("severity", severity)])?)?;
            }
        }
        ConstCounter::new(v(&m.scan_policy_denials)).encode(encoder.encode_descriptor(
            "berth_scan_policy_denials",
            "Pulls refused by the scan policy.",
            None,
            MetricType::Counter,
        )?)?;
        let counters: [(&str, &str, &std::sync::atomic::AtomicU64); 13] = [
            ("berth_blob_cache_requests", "Blob reads through the blob cache.", &m.blob_cache_requests),
            ("berth_blob_cache_hits", "Blob reads served from a cached file.", &m.blob_cache_hits),
            ("berth_blob_cache_misses", "Blob reads served from a fill or passed through.", &m.blob_cache_misses),
            (
                "berth_blob_cache_fill_joins",
                "Blob reads that followed a fill another read started.",
                &m.blob_cache_fill_joins,
            ),
            (
                "berth_blob_cache_passthrough",
                "Blob reads passed through (too big for the budget, disk refused).",
                &m.blob_cache_passthrough,
            ),
            ("berth_blob_cache_store_gets", "Object-store GETs the blob cache made.", &m.blob_cache_store_gets),
            (
                "berth_blob_cache_store_gets_saved",
                "Blob reads served without an object-store GET of their own.",
                &m.blob_cache_store_gets_saved,
            ),
            ("berth_blob_cache_served_bytes", "Bytes sent to clients from the blob cache.", &m.blob_cache_served_bytes),
            ("berth_blob_cache_filled_bytes", "Bytes written into the blob cache.", &m.blob_cache_filled_bytes),
            (
                "berth_blob_cache_corrupt",
                "Cached or fetched blobs discarded for not matching their digest.",
                &m.blob_cache_corrupt,
            ),
            ("berth_blob_cache_evictions", "Blobs evicted to stay within the budget.", &m.blob_cache_evictions),
            ("berth_mesh_peer_fetches", "Fills that asked the digest's owner.", &m.mesh_peer_fetches),
            (
                "berth_mesh_peer_fallbacks",
                "Peer fetches abandoned for the object store (owner gone, slow or failed).",
                &m.mesh_peer_fallbacks,
            ),
        ];
        for (name, help, c) in counters {
            ConstCounter::new(v(c)).encode(encoder.encode_descriptor(name, help, None, MetricType::Counter)?)?;
        }
        ConstCounter::new(v(&m.mesh_served)).encode(encoder.encode_descriptor(
            "berth_mesh_served",
            "Blob requests the internal listener served to peers.",
            None,
            MetricType::Counter,
        )?)?;
        ConstCounter::new(v(&m.mesh_refused)).encode(encoder.encode_descriptor(
            "berth_mesh_refused_connections",
            "Connections to the internal listener refused (no or untrusted client certificate).",
            None,
            MetricType::Counter,
        )?)?;
        {
            let mut family = encoder.encode_descriptor(
                "berth_store_bytes",
                "Body bytes read from and written to the object store.",
                None,
                MetricType::Counter,
            )?;
            for (direction, c) in [("read", &m.store_read_bytes), ("written", &m.store_written_bytes)] {
                ConstCounter::new(v(c)).encode(family.encode_family(&[("direction", direction)])?)?;
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "berth_build_info",
                "The running build: version and flavor (minimal, full or custom).",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(1).encode(
                family.encode_family(&[("version", env!("CARGO_PKG_VERSION")), ("flavor", crate::flavor::flavor())])?,
            )?;
        }
        ConstGauge::new(v(&m.uploads_in_flight) as i64).encode(encoder.encode_descriptor(
            "berth_uploads_in_flight",
            "Upload requests streaming a body into this process now.",
            None,
            MetricType::Gauge,
        )?)?;
        ConstCounter::new(v(&m.upload_bytes)).encode(encoder.encode_descriptor(
            "berth_upload_received_bytes",
            "Upload body bytes received.",
            None,
            MetricType::Counter,
        )?)?;
        {
            let mut family = encoder.encode_descriptor(
                "berth_uploads_ended",
                "Upload sessions ended: completed, failed (completion refused), cancelled, expired.",
                None,
                MetricType::Counter,
            )?;
            for (outcome, c) in [
                ("completed", &m.upload_completed),
                ("failed", &m.upload_failed),
                ("cancelled", &m.upload_cancelled),
                ("expired", &m.upload_expired),
            ] {
                ConstCounter::new(v(c)).encode(family.encode_family(&[("outcome", outcome)])?)?;
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "berth_cache_lookups",
                "Read-path cache look-ups, by cache (tag, manifest) and result (hit, miss).",
                None,
                MetricType::Counter,
            )?;
            for (cache, result, c) in [
                ("tag", "hit", &m.cache_tag_hits),
                ("tag", "miss", &m.cache_tag_misses),
                ("manifest", "hit", &m.cache_manifest_hits),
                ("manifest", "miss", &m.cache_manifest_misses),
            ] {
                ConstCounter::new(v(c)).encode(family.encode_family(&[("cache", cache), ("result", result)])?)?;
            }
        }
        ConstCounter::new(berth_storage_s3::retries()).encode(encoder.encode_descriptor(
            "berth_store_retries",
            "Object-store requests the S3 client retried (throttling, 5xx answers, timeouts, dropped connections).",
            None,
            MetricType::Counter,
        )?)?;
        ConstCounter::new(v(&m.state_reconnects)).encode(encoder.encode_descriptor(
            "berth_state_reconnects",
            "Times the shared state answered again after being unreachable.",
            None,
            MetricType::Counter,
        )?)?;
        ConstGauge::new(v(&m.state_subscriptions) as i64).encode(encoder.encode_descriptor(
            "berth_state_pubsub_subscriptions",
            "Pub/sub subscriptions connected now (cache invalidation, the search index, and revocations when authentication is on).",
            None,
            MetricType::Gauge,
        )?)?;
        {
            use crate::metrics::{AuthOutcome, AuthScheme};
            let mut family = encoder.encode_descriptor(
                "berth_auth_requests",
                "Authentications, by method (anonymous, basic, bearer, mtls) and outcome.",
                None,
                MetricType::Counter,
            )?;
            for scheme in AuthScheme::ALL {
                for outcome in AuthOutcome::ALL {
                    let c = &m.auth[scheme as usize][outcome as usize];
                    ConstCounter::new(v(c))
                        .encode(family.encode_family(&[("method", scheme.label()), ("outcome", outcome.label())])?)?;
                }
            }
        }
        {
            use crate::metrics::ThrottleDecision;
            let mut family = encoder.encode_descriptor(
                "berth_auth_throttle_decisions",
                "Decisions of the failed-login throttle: allowed, locked_out, delayed, unchecked (counters unreachable).",
                None,
                MetricType::Counter,
            )?;
            for d in ThrottleDecision::ALL {
                ConstCounter::new(v(&m.throttle[d as usize]))
                    .encode(family.encode_family(&[("decision", d.label())])?)?;
            }
        }
        {
            let now = crate::auth::token::now();
            let (loaded, since) = (v(&m.revocations_loaded_at), v(&m.revocations_tracked_since));
            let age = match (since, loaded) {
                (0, _) => 0,
                (since, 0) => now.saturating_sub(since),
                (_, loaded) => now.saturating_sub(loaded),
            };
            ConstGauge::new(age as i64).encode(encoder.encode_descriptor(
                "berth_auth_revocation_list_age_seconds",
                "Seconds since the token revocation list was last loaded in full (0 without authentication).",
                None,
                MetricType::Gauge,
            )?)?;
        }
        {
            let mut family = encoder.encode_descriptor(
                "berth_mirror_upstream_requests",
                "Mirror requests to upstreams, by outcome (refused: content not matching its digest).",
                None,
                MetricType::Counter,
            )?;
            for (i, outcome) in crate::metrics::MIRROR_OUTCOMES.into_iter().enumerate() {
                ConstCounter::new(v(&m.mirror_upstream[i])).encode(family.encode_family(&[("outcome", outcome)])?)?;
            }
        }
        for (name, help, c) in [
            ("berth_mirror_fetched_bytes", "Blob bytes the mirror fetched from upstreams.", &m.mirror_fetched_bytes),
            (
                "berth_mirror_fresh_hits",
                "Mirrored tags served without asking the upstream (checked within tag_ttl).",
                &m.mirror_fresh_hits,
            ),
            (
                "berth_mirror_stale_serves",
                "Mirrored tags served stale: the upstream could not be asked.",
                &m.mirror_stale,
            ),
            (
                "berth_mirror_fill_waits",
                "Pulls that waited for another pull's upstream fetch of the same object (on any replica).",
                &m.mirror_fill_waits,
            ),
        ] {
            ConstCounter::new(v(c)).encode(encoder.encode_descriptor(name, help, None, MetricType::Counter)?)?;
        }
        {
            let mut family = encoder.encode_descriptor(
                "berth_backend_up",
                "1 when the last probe of the backend answered in time, 0 when it failed or timed out.",
                None,
                MetricType::Gauge,
            )?;
            for (backend, g) in [("object_store", &m.probe_store_up), ("shared_state", &m.probe_state_up)] {
                ConstGauge::new(v(g) as i64).encode(family.encode_family(&[("backend", backend)])?)?;
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "berth_backend_probe_duration_seconds",
                "How long the last probe of the backend took (the timeout when it did not answer).",
                None,
                MetricType::Gauge,
            )?;
            for (backend, g) in [("object_store", &m.probe_store_ms), ("shared_state", &m.probe_state_ms)] {
                ConstGauge::new(v(g) as f64 / 1000.0).encode(family.encode_family(&[("backend", backend)])?)?;
            }
        }
        let gauges: [(&str, &str, &std::sync::atomic::AtomicU64); 5] = [
            ("berth_blob_cache_bytes", "Bytes of cached blobs on this replica's disk.", &m.blob_cache_bytes),
            ("berth_blob_cache_max_bytes", "The blob cache's byte budget (0: no cache).", &m.blob_cache_max_bytes),
            ("berth_blob_cache_blobs", "Blobs cached on this replica's disk.", &m.blob_cache_blobs),
            ("berth_blob_cache_fills_in_flight", "Fills in progress.", &m.blob_cache_fills_in_flight),
            ("berth_mesh_members", "Live mesh members this replica sees, itself included.", &m.mesh_members),
        ];
        for (name, help, g) in gauges {
            ConstGauge::new(v(g) as i64).encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)?;
        }
        Ok(())
    }
}

/// Every metric, as OpenMetrics text.
pub fn render() -> String {
    // `register` ends each help text with a period of its own.
    let h = http();
    let mut registry = Registry::default();
    registry.register("berth_http_requests", "Requests answered, by method, operation and status", h.requests.clone());
    registry.register(
        "berth_http_request_duration_seconds",
        "Time from the request's arrival to its response headers, by method and operation",
        h.duration.clone(),
    );
    let s = store();
    registry.register(
        "berth_store_requests",
        "Object-store calls, by operation and outcome (ok, not_found_or_exists, unavailable, error)",
        s.requests.clone(),
    );
    registry.register(
        "berth_store_request_duration_seconds",
        "Object-store call latency by operation (reads: until the response, before the body)",
        s.duration.clone(),
    );
    let st = state();
    registry.register(
        "berth_state_requests",
        "Shared-state (Redis) calls, by operation and outcome (ok, unavailable, fenced, error)",
        st.requests.clone(),
    );
    registry.register(
        "berth_state_request_duration_seconds",
        "Shared-state (Redis) call latency by operation",
        st.duration.clone(),
    );
    registry.register_collector(Box::new(Core));
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
        tracing::error!(error = %e, "encoding metrics failed");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_core_counters_are_exposed() {
        observe(&http::Method::GET, "manifest_get", 200, Duration::from_millis(3));
        observe(&http::Method::from_bytes(b"BREW").unwrap(), "unknown", 405, Duration::from_micros(10));
        let text = render();
        assert!(
            text.contains(r#"berth_http_requests_total{method="GET",operation="manifest_get",status="200"}"#),
            "{text}"
        );
        assert!(text.contains(r#"method="_OTHER",operation="unknown",status="405""#), "{text}");
        assert!(
            text.contains(
                r#"berth_http_request_duration_seconds_bucket{le="0.005",method="GET",operation="manifest_get"}"#
            ) || text.contains(
                r#"berth_http_request_duration_seconds_bucket{method="GET",operation="manifest_get",le="0.005"}"#
            ),
            "{text}"
        );
        assert!(text.contains("# TYPE berth_rate_limited_requests counter"), "{text}");
        assert!(text.contains(r#"berth_rate_limited_requests_total{class="read"}"#), "{text}");
        assert!(text.contains("berth_rate_limit_backend_down "), "{text}");
        assert!(text.contains("berth_panics_total "), "{text}");
        observe_store("get", "unavailable", Duration::from_millis(40));
        let text = render();
        assert!(text.contains(r#"berth_store_requests_total{operation="get",outcome="unavailable"}"#), "{text}");
        assert!(text.contains("berth_store_request_duration_seconds_bucket"), "{text}");
        assert!(text.contains(r#"berth_store_bytes_total{direction="read"}"#), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
