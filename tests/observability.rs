//! deploy/observability against running Berths: every metric the alert rules
//! and the dashboard name exists in /metrics; a real Prometheus (Debian's)
//! scrapes a 3-replica fleet with prometheus.yml and alerts.yml unchanged but
//! for the targets, and the object-store alert fires while S3 is paused and
//! clears after; a push's trace reaches a stand-in OTLP collector with S3 and
//! Redis spans under the request span, and the request's log lines carry its
//! trace id; a storm of random repository names adds no series.
//! (`promtool check/test rules` runs in scripts/check-observability.)

#![cfg(all(feature = "metrics", feature = "otel"))]
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{bytes, client, metric_value as value, push_blob, sha256, Berth, LocalFleet, RedisServer};

fn observability_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/observability")
}

/// Every `berth_*` name in `text`.
fn metric_names_in(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("berth_") {
        let before_ok = at == 0 || !rest.as_bytes()[at - 1].is_ascii_alphanumeric();
        let tail = &rest[at..];
        let len = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        if before_ok {
            names.insert(tail[..len].to_owned());
        }
        rest = &tail[len..];
    }
    names
}

/// The series of an OpenMetrics text: `name{labels}` of each sample line.
fn series(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| match l.find('}') {
            Some(end) => l[..=end].to_owned(),
            None => l.split(' ').next().unwrap_or_default().to_owned(),
        })
        .collect()
}

/// The metric name of each series.
fn exported_names(text: &str) -> BTreeSet<String> {
    series(text).into_iter().map(|s| s.split('{').next().unwrap_or_default().to_owned()).collect()
}

async fn scrape(base: &str) -> String {
    let resp = client().get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.text().await.unwrap()
}

/// Wait (bounded) until the first backend probe has reported.
async fn wait_for_probes(base: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = scrape(base).await;
        if text.contains("berth_backend_up{backend=\"object_store\"} 1")
            && text.contains("berth_backend_up{backend=\"shared_state\"} 1")
        {
            return;
        }
        assert!(Instant::now() < deadline, "the backend probes never reported up:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An image of one layer pushed to `repo:tag`; its manifest digest.
async fn push_image(base: &str, repo: &str, tag: &str, seed: u64) -> String {
    let layer = bytes(4096, seed);
    let layer_digest = push_blob(base, repo, &layer).await;
    let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let config_digest = push_blob(base, repo, config).await;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer.len()}],
    })
    .to_string();
    let resp = client()
        .put(format!("{base}/v2/{repo}/manifests/{tag}"))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());
    sha256(manifest.as_bytes())
}

#[tokio::test]
async fn every_metric_of_the_alerts_and_the_dashboard_is_exported() {
    let b = Berth::start("");
    wait_for_probes(&b.base).await;
    // Traffic on the paths the dashboard shows: a push and a pull.
    let digest = push_image(&b.base, "team/app", "v1", 1).await;
    let got = client().get(b.url(&format!("/v2/team/app/manifests/{digest}"))).send().await.unwrap();
    assert_eq!(got.status(), 200);
    let text = scrape(&b.base).await;
    let exported = exported_names(&text);

    let dir = observability_dir();
    let alerts = std::fs::read_to_string(dir.join("alerts.yml")).unwrap();
    let dashboard = std::fs::read_to_string(dir.join("grafana/berth-dashboard.json")).unwrap();
    let used: BTreeSet<String> = metric_names_in(&alerts).into_iter().chain(metric_names_in(&dashboard)).collect();
    assert!(used.len() >= 30, "the rules and the dashboard name only {} metrics: {used:?}", used.len());
    let missing: Vec<&String> = used.iter().filter(|n| !exported.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "named by deploy/observability but not exported: {missing:?}\n\nexported: {exported:?}"
    );
}

#[tokio::test]
async fn a_storm_of_random_repository_names_adds_no_series() {
    let b = Berth::start("");
    wait_for_probes(&b.base).await;
    let c = client();
    // Every kind of request the storm sends, once, so their (operation,
    // status) series exist before the count is taken.
    let storm = |round: u64| {
        let c = c.clone();
        let base = b.base.clone();
        async move {
            let name = format!("storm{round:x}/r{:016x}", round.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let digest = format!("sha256:{}", sha256(&round.to_le_bytes()).trim_start_matches("sha256:"));
            for (method, path) in [
                ("GET", format!("/v2/{name}/manifests/t{round}")),
                ("HEAD", format!("/v2/{name}/manifests/{digest}")),
                ("GET", format!("/v2/{name}/blobs/{digest}")),
                ("HEAD", format!("/v2/{name}/blobs/{digest}")),
                ("GET", format!("/v2/{name}/tags/list?n=5&last=x{round}")),
                ("GET", format!("/v2/{name}/referrers/{digest}")),
                ("GET", format!("/v2/{name}/blobs/uploads/{round:032x}")),
                ("GET", format!("/v2/{name}/nothing/{round}")),
                ("GET", format!("/x{round}/y")),
                ("PROPFIND", format!("/v2/{name}/manifests/t{round}")),
                ("BREW", format!("/v2/{name}/tags/list")),
            ] {
                let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
                let resp = c.request(m, format!("{base}{path}")).send().await.unwrap();
                assert!(resp.status().as_u16() < 500, "{method} {path}: {}", resp.status());
            }
        }
    };
    storm(0).await;
    let before = scrape(&b.base).await;
    for round in 1..=200 {
        storm(round).await;
    }
    let after = scrape(&b.base).await;
    let (s0, s1) = (series(&before), series(&after));
    let added: Vec<&String> = s1.difference(&s0).collect();
    assert!(added.is_empty(), "the storm added series: {added:?}");
    assert_eq!(s0.len(), s1.len());
    for leak in ["storm", "PROPFIND", "BREW", "nothing"] {
        assert!(!after.contains(leak), "{leak:?} reached /metrics");
    }
    // The storm was counted, under closed labels.
    assert!(after.contains(r#"berth_http_requests_total{method="_OTHER""#), "{after}");
}

/// A child process killed when the guard drops, also when the test fails.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Resumes the fleet's S3 when dropped, so a failing test leaves nothing paused.
struct Resume<'a>(&'a LocalFleet);

impl Drop for Resume<'_> {
    fn drop(&mut self) {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.0.run(&["resume-s3"])));
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn prometheus_api(base: &str, path: &str) -> serde_json::Value {
    let resp = client().get(format!("{base}{path}")).send().await.unwrap();
    assert_eq!(resp.status(), 200, "{path}");
    resp.json().await.unwrap()
}

/// The alerts named `name` Prometheus reports, as (instance, state).
async fn alerts(prom: &str, name: &str) -> Vec<(String, String)> {
    let v = prometheus_api(prom, "/api/v1/alerts").await;
    v["data"]["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["labels"]["alertname"] == name)
        .map(|a| {
            (
                a["labels"]["instance"].as_str().unwrap_or_default().to_owned(),
                a["state"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_fires_the_object_store_alert_while_s3_is_paused_and_clears_it_after() {
    let fleet = LocalFleet::up(3, &[]);
    // deploy/observability as shipped; only the targets are this fleet's.
    let dir = tempfile::tempdir().unwrap();
    let src = observability_dir();
    for f in ["prometheus.yml", "alerts.yml"] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    std::fs::create_dir(dir.path().join("targets")).unwrap();
    let targets: Vec<String> =
        (1..=3).map(|n| format!("    - {}", fleet.replica(n).trim_start_matches("http://"))).collect();
    std::fs::write(dir.path().join("targets/fleet.yml"), format!("- targets:\n{}\n", targets.join("\n"))).unwrap();
    let port = free_port();
    let prom = format!("http://127.0.0.1:{port}");
    let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let _prometheus = Killed(
        Command::new("prometheus")
            .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus (scripts/install-test-deps installs it)"),
    );
    let prom_log = || std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default();

    // Ready, and scraping all three replicas.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let up = match client().get(format!("{prom}/api/v1/query?query=up%7Bjob%3D%22berth%22%7D%3D%3D1")).send().await
        {
            Ok(r) if r.status() == 200 => {
                r.json::<serde_json::Value>().await.unwrap()["data"]["result"].as_array().map(|a| a.len()).unwrap_or(0)
            }
            _ => 0,
        };
        if up == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "Prometheus did not scrape 3 replicas in 120 s:\n{}", prom_log());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The rules loaded, and nothing fires on a healthy fleet.
    let rules = prometheus_api(&prom, "/api/v1/rules").await;
    let loaded =
        rules["data"]["groups"].as_array().unwrap().iter().map(|g| g["rules"].as_array().unwrap().len()).sum::<usize>();
    assert!(loaded >= 15, "{rules}");
    assert!(alerts(&prom, "BerthObjectStoreUnavailable").await.is_empty());

    let paused_at = Instant::now();
    fleet.run(&["pause-s3"]);
    let resume = Resume(&fleet);
    let deadline = Instant::now() + Duration::from_secs(240);
    let firing = loop {
        let now = alerts(&prom, "BerthObjectStoreUnavailable").await;
        let firing: Vec<String> = now.iter().filter(|(_, s)| s == "firing").map(|(i, _)| i.clone()).collect();
        if firing.len() == 3 {
            break firing;
        }
        assert!(
            Instant::now() < deadline,
            "the alert did not fire for 3 replicas within 240 s: {now:?}\n{}",
            prom_log()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let fired_after = paused_at.elapsed();
    for a in prometheus_api(&prom, "/api/v1/alerts").await["data"]["alerts"].as_array().unwrap() {
        eprintln!(
            "{} {} {} active since {}",
            a["labels"]["alertname"], a["labels"]["instance"], a["state"], a["activeAt"]
        );
    }
    // Only the object store is down: Redis's alert stays quiet.
    assert!(alerts(&prom, "BerthRedisDown").await.is_empty());

    drop(resume);
    let resumed_at = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let now = alerts(&prom, "BerthObjectStoreUnavailable").await;
        if now.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "the alert did not clear within 180 s of resuming: {now:?}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    eprintln!(
        "BerthObjectStoreUnavailable firing for {firing:?} {:.0} s after pausing S3; cleared {:.0} s after resuming",
        fired_after.as_secs_f64(),
        resumed_at.elapsed().as_secs_f64()
    );
    // The fleet serves again.
    let deadline = Instant::now() + Duration::from_secs(60);
    while client().get(format!("{}/readyz", fleet.replica(1))).send().await.map(|r| r.status() != 200).unwrap_or(true) {
        assert!(Instant::now() < deadline, "replica 1 not ready after S3 resumed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

mod trace {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use axum::body::Bytes;
    use axum::extract::State;
    use axum::routing::post;
    use axum::Router;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::trace::v1::Span;
    use prost::Message as _;

    use super::*;

    type Spans = Arc<Mutex<Vec<Span>>>;

    /// A stand-in OTLP/HTTP collector: decodes every export and keeps its spans.
    async fn collector() -> (String, Spans, tokio::task::JoinHandle<()>) {
        async fn traces(State(spans): State<Spans>, body: Bytes) -> ([(&'static str, &'static str); 1], Vec<u8>) {
            let request = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf export");
            let mut kept = spans.lock().unwrap();
            for rs in request.resource_spans {
                for ss in rs.scope_spans {
                    kept.extend(ss.spans);
                }
            }
            ([("content-type", "application/x-protobuf")], Vec::new())
        }
        let spans = Spans::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1/traces", listener.local_addr().unwrap());
        let app = Router::new().route("/v1/traces", post(traces)).with_state(spans.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (url, spans, task)
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    fn attr(span: &Span, key: &str) -> Option<String> {
        use opentelemetry_proto::tonic::common::v1::any_value::Value;
        span.attributes.iter().find(|kv| kv.key == key).and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.clone()),
            Value::IntValue(i) => Some(i.to_string()),
            _ => None,
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pushs_trace_has_s3_and_redis_spans_under_the_request_and_its_id_is_in_the_logs() {
        let (url, spans, _task) = collector().await;
        let fleet = LocalFleet::up(
            1,
            &[
                ("BERTH__TELEMETRY__OTLP__ENDPOINT", url.as_str()),
                ("BERTH__TELEMETRY__OTLP__EXPORT_INTERVAL", "100ms"),
                ("BERTH__TELEMETRY__OTLP__SERVICE_NAME", "berth-trace-test"),
            ],
        );
        let base = fleet.replica(1).to_owned();
        // A chunked push: start, one PATCH, and the PUT that completes it.
        let c = client();
        let data = bytes(300_000, 7);
        let digest = sha256(&data);
        let start = c.post(format!("{base}/v2/traced/app/blobs/uploads/")).send().await.unwrap();
        assert_eq!(start.status(), 202);
        let location = start.headers()["location"].to_str().unwrap().to_owned();
        let location = if location.starts_with('/') { format!("{base}{location}") } else { location };
        let patch = c
            .patch(&location)
            .header("content-type", "application/octet-stream")
            .header("content-range", format!("0-{}", data.len() - 1))
            .body(data.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(patch.status(), 202, "{}", patch.text().await.unwrap());
        let location = patch.headers()["location"].to_str().unwrap().to_owned();
        let location = if location.starts_with('/') { format!("{base}{location}") } else { location };
        let sep = if location.contains('?') { '&' } else { '?' };
        let put = c.put(format!("{location}{sep}digest={digest}")).send().await.unwrap();
        assert_eq!(put.status(), 201, "{}", put.text().await.unwrap());
        let request_id = put.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert!(request_id.len() >= 16, "{request_id}");

        // The PUT's server span, and its children, reach the collector.
        let deadline = Instant::now() + Duration::from_secs(60);
        let (server, children) = loop {
            let found = {
                let all = spans.lock().unwrap();
                all.iter().find(|s| s.name == "PUT upload_put").cloned().map(|server| {
                    let children: Vec<Span> = all
                        .iter()
                        .filter(|s| s.trace_id == server.trace_id && s.parent_span_id == server.span_id)
                        .cloned()
                        .collect();
                    (server, children)
                })
            };
            if let Some((server, children)) = found {
                let s3 = children.iter().any(|s| s.name.starts_with("S3."));
                let redis = children.iter().any(|s| s.name.starts_with("redis "));
                if s3 && redis {
                    break (server, children);
                }
            }
            assert!(
                Instant::now() < deadline,
                "no PUT upload_put span with S3 and Redis children within 60 s; spans: {:?}",
                spans.lock().unwrap().iter().map(|s| s.name.clone()).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let trace_id = hex(&server.trace_id);
        assert_eq!(attr(&server, "request_id").as_deref(), Some(request_id.as_str()));
        assert_eq!(attr(&server, "http.route").as_deref(), Some("upload_put"));
        let mut by_name: HashMap<String, usize> = HashMap::new();
        for s in &children {
            *by_name.entry(s.name.clone()).or_default() += 1;
            assert!(s.start_time_unix_nano >= server.start_time_unix_nano, "{} starts before its parent", s.name);
            assert!(s.end_time_unix_nano <= server.end_time_unix_nano, "{} ends after its parent", s.name);
            if s.name.starts_with("S3.") {
                assert_eq!(attr(s, "rpc.system").as_deref(), Some("aws-api"), "{s:?}");
                assert_eq!(attr(s, "rpc.service").as_deref(), Some("S3"));
                assert_eq!(s.name, format!("S3.{}", attr(s, "rpc.method").unwrap()));
                assert_eq!(s.kind, 3, "S3 spans are client spans"); // SPAN_KIND_CLIENT
            } else if s.name.starts_with("redis ") {
                assert_eq!(attr(s, "db.system.name").as_deref(), Some("redis"));
                assert!(attr(s, "db.operation.name").is_some());
                assert_eq!(s.kind, 3);
            }
            // No key (repository names, digests) in any attribute.
            for kv in &s.attributes {
                let v = format!("{:?}", kv.value);
                assert!(!v.contains("traced/app") && !v.contains(&digest[7..]), "{} leaks {v}", kv.key);
            }
        }
        // The tree, for the record: children in start order, offsets from the parent's start.
        let mut ordered = children.clone();
        ordered.sort_by_key(|s| s.start_time_unix_nano);
        let ms = |ns: u64| ns as f64 / 1e6;
        let mut tree = format!(
            "trace {trace_id}\n{} [{:.2} ms] request_id={request_id}\n",
            server.name,
            ms(server.end_time_unix_nano - server.start_time_unix_nano)
        );
        for s in &ordered {
            tree.push_str(&format!(
                "  +{:>7.2} ms  {:<34} [{:.2} ms]\n",
                ms(s.start_time_unix_nano - server.start_time_unix_nano),
                s.name,
                ms(s.end_time_unix_nano - s.start_time_unix_nano)
            ));
        }
        eprintln!("{tree}counts: {by_name:?}");

        // The access log line of that request carries the trace and request ids.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let logs = fleet.logs();
            let lines: Vec<&str> =
                logs.lines().filter(|l| l.contains(&format!("\"trace_id\":\"{trace_id}\""))).collect();
            if lines.iter().any(|l| l.contains("\"target\":\"berth::access\"") && l.contains(&request_id)) {
                break;
            }
            assert!(Instant::now() < deadline, "no access log line with trace id {trace_id}; lines with it: {lines:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Scrape until `ready` holds for the text (bounded).
async fn wait_for_metrics(base: &str, what: &str, ready: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = scrape(base).await;
        if ready(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "{what} within 60 s; /metrics:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn authentications_and_throttle_decisions_are_counted_by_method_and_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users.htpasswd");
    std::fs::write(&users, format!("{}\n", common::user_hash("alice", "alice-password-1"))).unwrap();
    let b = Berth::start(&format!(
        "[auth]\nhtpasswd = {:?}\n[auth.throttle]\nuser_lockout = 3\nip_lockout = 100\ndelay_after = 1\nmax_delay = \"50ms\"\n",
        users.display().to_string()
    ));
    let c = client();
    let get = |auth: Option<String>| {
        let mut r = c.get(b.url("/v2/"));
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        r.send()
    };
    assert_eq!(get(None).await.unwrap().status(), 401);
    assert_eq!(get(Some(common::basic("alice", "alice-password-1"))).await.unwrap().status(), 200);
    for _ in 0..3 {
        assert_eq!(get(Some(common::basic("alice", "wrong-password"))).await.unwrap().status(), 401);
    }
    assert_eq!(get(Some(common::basic("alice", "wrong-password"))).await.unwrap().status(), 429);
    assert_eq!(get(Some("Bearer not.a.jwt".into())).await.unwrap().status(), 401);
    assert_eq!(get(Some("Basic !!!".into())).await.unwrap().status(), 401);

    let text = scrape(&b.base).await;
    let auth = |method: &str, outcome: &str| {
        value(&text, &format!("berth_auth_requests_total{{method=\"{method}\",outcome=\"{outcome}\"}}"))
    };
    assert_eq!(auth("anonymous", "accepted"), 1.0, "{text}");
    assert_eq!(auth("basic", "accepted"), 1.0);
    assert_eq!(auth("basic", "refused"), 4.0, "three wrong passwords and one malformed header");
    assert_eq!(auth("basic", "throttled"), 1.0);
    assert_eq!(auth("bearer", "refused"), 1.0);
    assert_eq!(auth("mtls", "accepted"), 0.0);
    let throttle = |d: &str| value(&text, &format!("berth_auth_throttle_decisions_total{{decision=\"{d}\"}}"));
    // The good login and the three wrong ones were checked; the second and
    // third failures were held back; the fourth attempt was locked out.
    assert_eq!(throttle("allowed"), 4.0, "{text}");
    assert_eq!(throttle("delayed"), 2.0);
    assert_eq!(throttle("locked_out"), 1.0);
    assert_eq!(throttle("unchecked"), 0.0);
    // Authentication is on: the revocation list is kept, and fresh.
    let age = value(&text, "berth_auth_revocation_list_age_seconds");
    assert!((0.0..60.0).contains(&age), "{age}");
    assert!(text.contains("berth_auth_revocation_list_age_seconds "), "{text}");
}

#[tokio::test]
async fn request_ids_are_returned_and_believed_only_from_trusted_proxies() {
    let c = client();
    let untrusted = Berth::start("");
    let mut seen = BTreeSet::new();
    for _ in 0..5 {
        let resp = c.get(untrusted.url("/v2/")).header("x-request-id", "chosen-by-client").send().await.unwrap();
        let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert_ne!(id, "chosen-by-client", "a client's own id must not be believed");
        assert_eq!(id.len(), 32, "{id}");
        seen.insert(id);
    }
    assert_eq!(seen.len(), 5, "ids repeat: {seen:?}");
    // Errors carry one too.
    let resp = c.get(untrusted.url("/v2/nope/manifests/x")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    assert!(resp.headers().contains_key("x-request-id"));

    let trusted = Berth::start("trusted_proxies = [\"127.0.0.1\"]\n");
    let resp = c.get(trusted.url("/v2/")).header("x-request-id", "lb-7f3a.1").send().await.unwrap();
    assert_eq!(resp.headers()["x-request-id"], "lb-7f3a.1");
    for bad in ["has space", "<script>", &"x".repeat(129), ""] {
        let resp = c.get(trusted.url("/v2/")).header("x-request-id", bad).send().await.unwrap();
        let id = resp.headers()["x-request-id"].to_str().unwrap();
        assert!(id != bad && id.len() == 32, "{bad:?} -> {id:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outages_show_in_the_probe_the_subscriptions_and_the_reconnects() {
    let mut redis = RedisServer::start();
    let port = redis.port;
    let b = Berth::start(&format!("[state]\nbackend = \"redis\"\n[state.redis]\nurl = \"{}\"\n", redis.url()));
    let up = "berth_backend_up{backend=\"shared_state\"}";
    // The caches' invalidation listener, and the search index's.
    let subscriptions = if cfg!(feature = "search") { 2.0 } else { 1.0 };
    let text = wait_for_metrics(&b.base, "Redis probed up and the invalidation channel subscribed", |t| {
        value(t, up) == 1.0 && value(t, "berth_state_pubsub_subscriptions") == subscriptions
    })
    .await;
    let reconnects = value(&text, "berth_state_reconnects_total");
    assert_eq!(reconnects, 0.0);

    redis.stop();
    wait_for_metrics(&b.base, "the probe reporting Redis down and the subscription gone", |t| {
        value(t, up) == 0.0 && value(t, "berth_state_pubsub_subscriptions") == 0.0
    })
    .await;
    // The object store (the file system here) is not affected.
    assert_eq!(value(&scrape(&b.base).await, "berth_backend_up{backend=\"object_store\"}"), 1.0);

    let _redis = RedisServer::start_on(port);
    let text = wait_for_metrics(&b.base, "Redis probed up again, resubscribed and a reconnect counted", |t| {
        value(t, up) == 1.0
            && value(t, "berth_state_pubsub_subscriptions") == subscriptions
            && value(t, "berth_state_reconnects_total") >= 1.0
    })
    .await;
    assert!(value(&text, "berth_state_requests_total{operation=\"get\",outcome=\"unavailable\"}") >= 1.0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_retries_are_counted() {
    use axum::http::StatusCode;
    use axum::Router;
    // An S3 endpoint that answers every request 503 SlowDown.
    async fn slow_down() -> (StatusCode, [(&'static str, &'static str); 1], &'static str) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [("content-type", "application/xml")],
            "<?xml version=\"1.0\"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>",
        )
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let _s3 = tokio::spawn(async move {
        let _ = axum::serve(listener, Router::new().fallback(slow_down)).await;
    });
    let b = Berth::start_with(
        &format!(
            "[storage]\nbackend = \"s3\"\n[storage.s3]\nbucket = \"b\"\nregion = \"us-east-1\"\nendpoint = \"{endpoint}\"\n\
             force_path_style = true\nmax_attempts = 3\naccess_key_id = \"k\"\nsecret_access_key = \"s\"\n"
        ),
        &[],
    );
    // The probe's HEAD failed after its retries (or timed out meanwhile),
    // and the shared state (memory) was probed up regardless.
    let text = wait_for_metrics(&b.base, "S3 retries counted and the store probed down", |t| {
        value(t, "berth_store_retries_total") >= 2.0
            && value(t, "berth_backend_probe_duration_seconds{backend=\"object_store\"}") > 0.0
            && value(t, "berth_backend_up{backend=\"object_store\"}") == 0.0
            && value(t, "berth_backend_up{backend=\"shared_state\"}") == 1.0
    })
    .await;
    // Each failed call made at most 3 attempts: 2 retries per call.
    let calls: f64 = text
        .lines()
        .filter(|l| l.starts_with("berth_store_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(calls >= 1.0, "{text}");
    assert!(value(&text, "berth_store_retries_total") <= 2.0 * (calls + 2.0), "{text}");
    // A request meanwhile gets the spec's error, not a hang or a panic.
    let resp = client().get(b.url("/v2/a/manifests/latest")).send().await.unwrap();
    assert!(resp.status().as_u16() == 503 || resp.status().as_u16() == 404, "{}", resp.status());
}
