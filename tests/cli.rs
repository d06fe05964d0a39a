//! The command line and process behaviour: config checking, refusing unsafe
//! listeners, health endpoints, environment overrides and graceful shutdown.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use common::{bytes, client, Berth};

fn berth(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_berth")).args(args).output().expect("run berth")
}

#[test]
fn example_configs_pass_config_check() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
            cmd.args(["config", "check", path.to_str().unwrap()]);
            // The image's configuration names a file the deployment mounts.
            let htpasswd = tempfile::NamedTempFile::new().unwrap();
            if path.ends_with("container.toml") {
                std::fs::write(htpasswd.path(), format!("{}\n", common::user_hash("ci", "a test password"))).unwrap();
                cmd.env("BERTH__AUTH__HTPASSWD", htpasswd.path());
            }
            let out = cmd.output().unwrap();
            assert!(out.status.success(), "{path:?}: {}", String::from_utf8_lossy(&out.stderr));
            let printed = String::from_utf8_lossy(&out.stdout);
            assert!(printed.contains("[server]") && printed.contains("listen"), "{printed}");
            checked += 1;
        }
    }
    assert!(checked >= 2, "expected example configs in config/");
}

#[test]
fn config_check_names_the_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[server]\nlisten = \"127.0.0.1:1\"\ntimeout = \"1s\"\n", "timeout"),
        ("[storage.fs]\nfsync = \"yes\"\n", "storage.fs.fsync"),
        ("[uploads]\nsession_ttl = \"5 minutes\"\n", "uploads.session_ttl"),
        ("[server]\nlisten = \"0.0.0.0:5000\"\n", "server.listen"),
    ];
    for (text, key) in cases {
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        let out = berth(&["config", "check", path.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{text}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(key), "{text}: {err}");
    }
    let out = berth(&["config", "check", "/nonexistent/berth.toml"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn refuses_anonymous_network_listener() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["serve", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no authentication") && err.contains("allow_anonymous"), "{err}");
}

#[test]
fn environment_overrides_and_flags() {
    // The env var moves the listener to another loopback address.
    let b = Berth::start_with("", &[("BERTH__SERVER__LISTEN", "127.0.0.2:0")]);
    assert!(b.addr.starts_with("127.0.0.2:"), "{}", b.addr);
}

/// The search API exists exactly when the extension is built: the minimal
/// flavor answers its paths as it answers any unknown path.
#[tokio::test]
async fn the_search_api_answers_only_in_builds_with_the_extension() {
    let b = Berth::start("");
    let c = client();
    let discover: serde_json::Value = c.get(b.url("/v2/_oci/ext/discover")).send().await.unwrap().json().await.unwrap();
    let listed = discover["extensions"].as_array().unwrap().iter().any(|e| e["name"] == "_berth.search");
    assert_eq!(listed, cfg!(feature = "search"), "{discover}");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let resp = c.get(b.url("/v2/_berth/search/repositories?q=x")).send().await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap();
        if cfg!(feature = "search") {
            // 503 only while the first index is being built.
            if status == 503 && std::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            assert_eq!(status, 200, "{body}");
            assert!(body.contains("\"total\":0"), "{body}");
        } else {
            assert_eq!(status, 404, "{body}");
            assert!(body.contains("NAME_UNKNOWN"), "{body}");
        }
        break;
    }
    let detail = c.get(b.url("/v2/_berth/search/images/a/latest")).send().await.unwrap();
    assert_eq!(detail.status(), 404);
}

#[tokio::test]
async fn health_endpoints() {
    let b = Berth::start("");
    let c = client();
    assert_eq!(c.get(b.url("/livez")).send().await.unwrap().status(), 200);
    assert_eq!(c.get(b.url("/readyz")).send().await.unwrap().status(), 200);
}

#[test]
fn one_log_line_per_request() {
    let b = Berth::start("");
    for _ in 0..3 {
        let mut s = TcpStream::connect(&b.addr).unwrap();
        s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let n = b.stderr().lines().filter(|l| l.contains("berth::access") && l.contains("/v2/")).count();
        if n == 3 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "expected 3 access lines, saw {n}:\n{}", b.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGTERM while a chunk is being received: the request completes, then
/// the process exits cleanly.
#[test]
fn graceful_shutdown_finishes_in_flight_requests() {
    let mut b = Berth::start("");
    let mut s = TcpStream::connect(&b.addr).unwrap();
    s.write_all(b"POST /v2/shutdown/blobs/uploads/ HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n").unwrap();
    let mut head = [0u8; 4096];
    let n = s.read(&mut head).unwrap();
    let head = String::from_utf8_lossy(&head[..n]).to_string();
    let loc = head.lines().find_map(|l| l.strip_prefix("location: ")).expect("location").trim().to_owned();

    let data = bytes(8 * 1024 * 1024, 99);
    let (first, second) = data.split_at(4 * 1024 * 1024);
    s.write_all(format!("PATCH {loc} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", data.len()).as_bytes())
        .unwrap();
    s.write_all(first).unwrap();
    // Wait until the server is writing this chunk: its staging file grows.
    let uploads = b.data_dir().join(".uploads");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while common::files_under(&uploads).iter().all(|f| f.metadata().map(|m| m.len()).unwrap_or(0) == 0) {
        assert!(std::time::Instant::now() < deadline, "the chunk never reached the store");
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = Command::new("kill").arg("-TERM").arg(b.pid().to_string()).status();
    s.write_all(second).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let resp = String::from_utf8_lossy(&resp);
    assert!(resp.starts_with("HTTP/1.1 202"), "{resp}");
    assert!(resp.to_ascii_lowercase().contains(&format!("range: 0-{}", data.len() - 1)), "{resp}");
    let status = b.terminate().expect("berth exited");
    assert!(status.success(), "exit status {status:?}");
}

/// The plain-HTTP health listener serves probes (and metrics) only, and
/// follows the main listener's readiness through shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_listener_serves_probes_and_nothing_else() {
    let mut b = Berth::start("health_listen = \"127.0.0.1:0\"\nshutdown_delay = \"3s\"\n[log]\nformat = \"json\"\n");
    // The bound address, from the JSON log line that announces it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let addr = loop {
        let found = b.stderr().lines().find_map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).ok()?;
            v["message"].as_str()?.starts_with("health listener").then(|| v["addr"].as_str().map(str::to_owned))?
        });
        if let Some(addr) = found {
            break addr;
        }
        assert!(std::time::Instant::now() < deadline, "the health listener was never announced: {}", b.stderr());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let health = format!("http://{addr}");
    let c = client();
    assert_eq!(c.get(format!("{health}/livez")).send().await.unwrap().status(), 200);
    assert_eq!(c.get(format!("{health}/readyz")).send().await.unwrap().status(), 200);
    assert_eq!(c.get(b.url("/v2/")).send().await.unwrap().status(), 200);
    let metrics = c.get(format!("{health}/metrics")).send().await.unwrap();
    if cfg!(feature = "metrics") {
        assert_eq!(metrics.status(), 200);
        let text = metrics.text().await.unwrap();
        assert!(text.contains(r#"berth_http_requests_total{method="GET",operation="base",status="200"} 1"#), "{text}");
    } else {
        assert_eq!(metrics.status(), 404);
    }
    // Metrics moved off the main listener.
    assert_eq!(c.get(b.url("/metrics")).send().await.unwrap().status(), 404);
    // The registry API is not there.
    for path in ["/v2/", "/v2/_catalog", "/admin/revocations"] {
        assert_eq!(c.get(format!("{health}{path}")).send().await.unwrap().status(), 404, "{path}");
    }
    assert_eq!(c.get(b.url("/v2/")).send().await.unwrap().status(), 200);
    // Draining shows on the health port too.
    let _ = Command::new("kill").arg("-TERM").arg(b.pid().to_string()).status();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let code = c.get(format!("{health}/readyz")).send().await.unwrap().status();
        if code == 503 {
            break;
        }
        assert_eq!(code, 200);
        assert!(std::time::Instant::now() < deadline, "readiness never turned 503 on the health port");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = tokio::task::spawn_blocking(move || b.terminate()).await.unwrap().expect("berth exited");
    assert!(status.success());
}

/// With a shutdown delay, SIGTERM first turns readiness to 503 while the
/// listener still accepts, then the process exits cleanly.
#[test]
fn shutdown_delay_turns_readiness_off_first() {
    let mut b = Berth::start("shutdown_delay = \"3s\"");
    let ready = |addr: &str| -> u16 {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
    };
    assert_eq!(ready(&b.addr), 200);
    let _ = Command::new("kill").arg("-TERM").arg(b.pid().to_string()).status();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let code = ready(&b.addr);
        if code == 503 {
            break;
        }
        assert_eq!(code, 200, "unexpected readiness answer");
        assert!(std::time::Instant::now() < deadline, "readiness never turned 503");
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = b.terminate().expect("berth exited");
    assert!(status.success());
}

/// Object-store calls are counted by operation and outcome, timed, and
/// their bytes summed: a push and a pull show up, a missing blob's HEAD is
/// a `not_found_or_exists` outcome, and no label carries a key.
#[cfg(feature = "metrics")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_store_calls_are_counted_by_operation_and_outcome() {
    let b = Berth::start("");
    let c = client();
    let data = bytes(300_000, 5);
    let digest = common::sha256(&data);
    let resp = c
        .post(b.url(&format!("/v2/store/metrics/blobs/uploads/?digest={digest}")))
        .header("content-type", "application/octet-stream")
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let got = c.get(b.url(&format!("/v2/store/metrics/blobs/{digest}"))).send().await.unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(got.bytes().await.unwrap().len(), data.len());
    let unknown = common::sha256(b"not there");
    let missing = c.head(b.url(&format!("/v2/store/metrics/blobs/{unknown}"))).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    // An upload cancelled, one refused at completion (wrong digest), a tag
    // that is not there (a cache miss).
    for refused in [false, true] {
        let start = c.post(b.url("/v2/store/metrics/blobs/uploads/")).send().await.unwrap();
        assert_eq!(start.status(), 202);
        let location = start.headers()["location"].to_str().unwrap().to_owned();
        let sep = if location.contains('?') { '&' } else { '?' };
        let resp = if refused {
            c.put(b.url(&format!("{location}{sep}digest={unknown}"))).body(b"other bytes".to_vec()).send().await
        } else {
            c.delete(b.url(&location)).send().await
        };
        let status = resp.unwrap().status();
        assert_eq!(status, if refused { 400 } else { 204 });
    }
    let tag = c.get(b.url("/v2/store/metrics/manifests/absent")).send().await.unwrap();
    assert_eq!(tag.status(), 404);
    let text = c.get(b.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let value = |series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    };
    assert!(value(r#"berth_store_requests_total{operation="put_part",outcome="ok"}"#) >= 1.0);
    assert!(value(r#"berth_store_requests_total{operation="complete_multipart",outcome="ok"}"#) >= 1.0);
    assert!(value(r#"berth_store_requests_total{operation="get",outcome="ok"}"#) >= 1.0);
    assert!(value(r#"berth_store_requests_total{operation="head",outcome="not_found_or_exists"}"#) >= 1.0);
    assert!(value(r#"berth_store_bytes_total{direction="written"}"#) >= data.len() as f64);
    assert!(value(r#"berth_store_bytes_total{direction="read"}"#) >= data.len() as f64);
    assert!(value(r#"berth_store_request_duration_seconds_count{operation="get"}"#) >= 1.0);
    assert!(
        !text.contains("store/metrics") && !text.contains(digest.trim_start_matches("sha256:")),
        "a key in a label"
    );
    // Uploads, caches and the build.
    assert_eq!(value(r#"berth_uploads_ended_total{outcome="completed"}"#), 1.0);
    assert_eq!(value(r#"berth_uploads_ended_total{outcome="failed"}"#), 1.0);
    assert_eq!(value(r#"berth_uploads_ended_total{outcome="cancelled"}"#), 1.0);
    assert!(value("berth_upload_received_bytes_total") >= data.len() as f64);
    assert_eq!(value("berth_uploads_in_flight"), 0.0);
    assert!(value(r#"berth_cache_lookups_total{cache="tag",result="miss"}"#) >= 1.0);
    let build = format!(r#"berth_build_info{{version="{}",flavor="full"}}"#, env!("CARGO_PKG_VERSION"));
    assert_eq!(value(&build), 1.0);
    // Shared-state calls (memory here): upload sessions are locked.
    assert!(value(r#"berth_state_requests_total{operation="try_lock",outcome="ok"}"#) >= 1.0);
    assert!(value(r#"berth_state_request_duration_seconds_count{operation="try_lock"}"#) >= 1.0);
}
