//! Trace export (the `otel` extension) against a stand-in OTLP/HTTP
//! collector on loopback, and its refusal in builds without the extension;
//! `/metrics` protection on the main listener (the `metrics` extension).

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::{client, Berth};

#[cfg(feature = "otel")]
mod otel {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use axum::body::Bytes;
    use axum::extract::State;
    use axum::routing::post;
    use axum::Router;

    use super::common::{client, Berth};

    type Received = Arc<Mutex<Vec<Bytes>>>;

    /// A collector that keeps every body POSTed to /v1/traces.
    async fn collector() -> (String, Received, tokio::task::JoinHandle<()>) {
        async fn traces(State(received): State<Received>, body: Bytes) -> ([(&'static str, &'static str); 1], Vec<u8>) {
            received.lock().unwrap().push(body);
            // An empty ExportTraceServiceResponse is zero bytes of protobuf.
            ([("content-type", "application/x-protobuf")], Vec::new())
        }
        let received = Received::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1/traces", listener.local_addr().unwrap());
        let app = Router::new().route("/v1/traces", post(traces)).with_state(received.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (url, received, task)
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    /// Wait (bounded) until some exported batch holds every needle.
    async fn wait_for(received: &Received, needles: &[&[u8]]) -> bool {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if received.lock().unwrap().iter().any(|b| needles.iter().all(|n| contains(b, n))) {
                return true;
            }
            if tokio::time::Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
    const PARENT_ID: &str = "b7ad6b7169203331";

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn request_spans_reach_the_collector_and_continue_the_callers_trace() {
        let (url, received, _task) = collector().await;
        let b = Berth::start(&format!(
            "[telemetry.otlp]\nendpoint = \"{url}\"\nservice_name = \"berth-under-test\"\nexport_interval = \"100ms\"\n\
             trust_trace_context = true\n"
        ));
        let resp = client()
            .get(b.url("/v2/"))
            .header("traceparent", format!("00-{TRACE_ID}-{PARENT_ID}-01"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let trace = hex::decode(TRACE_ID).unwrap();
        let parent = hex::decode(PARENT_ID).unwrap();
        assert!(
            wait_for(&received, &[&trace, &parent, b"berth-under-test", b"GET base"]).await,
            "no span with the caller's trace id, parent, service name and operation reached the collector; got {} batches",
            received.lock().unwrap().len()
        );
        // A request without trace context starts a trace of its own.
        let before = received.lock().unwrap().len();
        assert_eq!(client().get(b.url("/v2/_catalog")).send().await.unwrap().status(), 200);
        assert!(wait_for(&received, &[b"GET catalog"]).await);
        assert!(received.lock().unwrap().len() > before);
    }

    /// By default only trusted proxies' trace context is continued: a
    /// direct client's `traceparent` neither joins its trace nor forces
    /// sampling; behind a trusted proxy it does.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn trace_context_is_believed_only_from_trusted_proxies() {
        let (url, received, _task) = collector().await;
        let trace = hex::decode(TRACE_ID).unwrap();
        let config = format!("[telemetry.otlp]\nendpoint = \"{url}\"\nexport_interval = \"100ms\"\n");
        let direct = Berth::start(&config);
        let resp = client()
            .get(direct.url("/v2/"))
            .header("traceparent", format!("00-{TRACE_ID}-{PARENT_ID}-01"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert!(wait_for(&received, &[b"GET base"]).await, "the request's span was not exported");
        assert!(
            !received.lock().unwrap().iter().any(|b| contains(b, &trace)),
            "an untrusted caller's trace id was adopted"
        );
        let proxied = Berth::start(&format!("trusted_proxies = [\"127.0.0.1\"]\n{config}"));
        let resp = client()
            .get(proxied.url("/v2/_catalog"))
            .header("traceparent", format!("00-{TRACE_ID}-{PARENT_ID}-01"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert!(wait_for(&received, &[&trace, b"GET catalog"]).await, "a trusted proxy's trace context was ignored");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn spans_still_queued_are_sent_at_shutdown() {
        let (url, received, _task) = collector().await;
        // Batches would wait an hour: only the shutdown flush can send it.
        let mut b = Berth::start(&format!("[telemetry.otlp]\nendpoint = \"{url}\"\nexport_interval = \"1h\"\n"));
        assert_eq!(client().get(b.url("/v2/")).send().await.unwrap().status(), 200);
        assert!(received.lock().unwrap().is_empty());
        let status = tokio::task::spawn_blocking(move || {
            let s = b.terminate();
            (s, b)
        })
        .await
        .unwrap();
        assert!(status.0.is_some_and(|s| s.success()), "{:?}: {}", status.0, status.1.stderr());
        assert!(wait_for(&received, &[b"GET base"]).await, "the queued span was lost at shutdown");
    }

    /// A collector that accepts connections and never answers: exports
    /// time out on the exporter's thread while requests go on answering.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hung_collector_costs_spans_not_requests() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let held = Arc::new(Mutex::new(Vec::new()));
        let keep = held.clone();
        let _task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                keep.lock().unwrap().push(conn);
            }
        });
        let b = Berth::start(&format!(
            "[telemetry.otlp]\nendpoint = \"http://{addr}/v1/traces\"\nexport_interval = \"50ms\"\ntimeout = \"1s\"\n"
        ));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut answered = 0;
        // Requests keep flowing while exports hang: at least until the
        // exporter has connected, and well past its first timeout.
        while answered < 40 || held.lock().unwrap().is_empty() {
            assert!(tokio::time::Instant::now() < deadline, "the exporter never connected");
            assert_eq!(client().get(b.url("/v2/")).send().await.unwrap().status(), 200, "request {answered}");
            answered += 1;
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert_eq!(client().get(b.url("/readyz")).send().await.unwrap().status(), 200);
        assert!(!b.stderr().contains("panicked"), "{}", b.stderr());
    }
}

fn config_check(toml: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("berth.toml");
    std::fs::write(&path, toml).unwrap();
    Command::new(env!("CARGO_BIN_EXE_berth")).args(["config", "check"]).arg(&path).output().unwrap()
}

#[test]
fn the_otlp_section_is_checked_and_refused_by_builds_without_the_extension() {
    let out = config_check("[telemetry.otlp]\nendpoint = \"http://127.0.0.1:4318/v1/traces\"\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    if cfg!(feature = "otel") {
        assert!(out.status.success(), "{stderr}");
        for (bad, key) in [
            ("endpoint = \"https://collector.example:4318/v1/traces\"", "telemetry.otlp.endpoint"),
            ("sample_ratio = 1.5", "telemetry.otlp.sample_ratio"),
            ("export_interval = \"0s\"", "telemetry.otlp"),
            ("colour = \"blue\"", "colour"),
        ] {
            let out = config_check(&format!("[telemetry.otlp]\n{bad}\n"));
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{bad}: {stderr}");
            assert!(stderr.contains(key), "{bad}: {stderr}");
        }
    } else {
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("telemetry.otlp") && stderr.contains("otel"), "{stderr}");
        assert!(stderr.contains("flavor: "), "{stderr}");
    }
}

/// With `[metrics]`, `/metrics` on the main listener answers scrapers with
/// the bearer token or an allowed identity, and 401 to everyone else; the
/// minimal flavor refuses the section.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_on_the_main_listener_can_require_a_token_or_an_identity() {
    let token = "scrape-token-0123456789abcdef";
    if !cfg!(feature = "metrics") {
        let out = config_check(&format!("[metrics]\nbearer_token = \"{token}\"\n"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("metrics") && stderr.contains("flavor: "), "{stderr}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    std::fs::write(
        &users,
        format!("{}\n{}\n", common::user_hash("prom", "prom-pw-123456"), common::user_hash("dev", "dev-pw-123456")),
    )
    .unwrap();
    let b = Berth::start(&format!(
        "[auth]\nhtpasswd = {:?}\n[metrics]\nbearer_token = \"{token}\"\nallow = [\"htpasswd:prom\"]\n",
        users.display().to_string()
    ));
    let get = |auth: Option<String>| {
        let mut req = client().get(b.url("/metrics"));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        async move { req.send().await.unwrap() }
    };
    let refused = get(None).await;
    assert_eq!(refused.status(), 401);
    assert!(refused.headers().contains_key("www-authenticate"));
    assert_eq!(get(Some(format!("Bearer {token}x"))).await.status(), 401);
    assert_eq!(get(Some(common::basic("dev", "dev-pw-123456"))).await.status(), 401, "not an allowed identity");
    let by_token = get(Some(format!("Bearer {token}"))).await;
    assert_eq!(by_token.status(), 200);
    assert!(by_token.text().await.unwrap().contains("berth_http_requests_total"));
    assert_eq!(get(Some(common::basic("prom", "prom-pw-123456"))).await.status(), 200);
    assert!(!b.stderr().contains(token), "the token reached the log");
    // Names in `allow` are checked like those of policies.
    let out = config_check(&format!("[metrics]\nbearer_token = \"{token}\"\nallow = [\"team:prom\"]\n"));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ambiguous"));
}
