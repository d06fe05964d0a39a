//! Hostile and malformed requests, sent as raw bytes so nothing normalizes
//! them on the way: each gets the spec's 4xx and error code, never a 500 or
//! a panic, and nothing lands outside the data directory.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{client, sha256, Berth};
use serde_json::Value;

struct RawResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn code(&self) -> String {
        let v: Value = serde_json::from_slice(&self.body).unwrap_or(Value::Null);
        v["errors"][0]["code"].as_str().unwrap_or("").to_owned()
    }
}

fn parse_response(raw: &[u8]) -> RawResponse {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned())).collect();
    RawResponse { status, headers, body: raw[split + 4..].to_vec() }
}

/// Send `request` verbatim (it must ask for `Connection: close`) and read the
/// response to EOF.
fn raw(addr: &str, request: &[u8]) -> RawResponse {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    parse_response(&out)
}

fn get(addr: &str, method: &str, path: &str) -> RawResponse {
    raw(
        addr,
        format!("{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

#[test]
fn hostile_paths() {
    let b = Berth::start("");
    let long_name = "a".repeat(300);
    let deep = "a/".repeat(2000);
    let uuid = "0f8fad5b-d9cb-469f-a165-70867728950e";
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("GET", "/v2/../etc/passwd".into(), 404, "NAME_UNKNOWN"),
        ("GET", "/v2/a/../b/manifests/latest".into(), 400, "NAME_INVALID"),
        ("GET", "/v2/a/%2e%2e/b/manifests/latest".into(), 400, "NAME_INVALID"),
        ("GET", "/v2/a%2Fb/manifests/latest".into(), 400, "NAME_INVALID"),
        ("GET", "/v2/UPPER/manifests/latest".into(), 400, "NAME_INVALID"),
        ("GET", "/v2/a//b/tags/list".into(), 400, "NAME_INVALID"),
        ("GET", format!("/v2/{long_name}/tags/list"), 400, "NAME_INVALID"),
        ("GET", format!("/v2/{deep}tags/list"), 400, "NAME_INVALID"),
        ("GET", "/v2/a/manifests/..%2F..%2Fetc".into(), 404, "MANIFEST_UNKNOWN"),
        ("HEAD", "/v2/a/manifests/.INVALID_MANIFEST_NAME".into(), 404, ""),
        ("GET", "/v2/a/manifests/-leadingdash".into(), 404, "MANIFEST_UNKNOWN"),
        ("PUT", "/v2/a/manifests/-leadingdash".into(), 400, "MANIFEST_INVALID"),
        ("GET", format!("/v2/a/manifests/{}", "t".repeat(129)), 404, "MANIFEST_UNKNOWN"),
        ("GET", "/v2/a/blobs/sha256:..%2F..%2Fetc".into(), 400, "DIGEST_INVALID"),
        ("GET", "/v2/a/blobs/sha256:ABCDEF".into(), 400, "DIGEST_INVALID"),
        ("GET", "/v2/a/blobs/md5:d41d8cd98f00b204e9800998ecf8427e".into(), 400, "DIGEST_INVALID"),
        ("GET", "/v2/a/referrers/notadigest".into(), 400, "DIGEST_INVALID"),
        ("GET", "/v2/a/blobs/uploads/..%2F..%2Fetc".into(), 404, "BLOB_UPLOAD_UNKNOWN"),
        ("PATCH", "/v2/a/blobs/uploads/not-a-uuid".into(), 404, "BLOB_UPLOAD_UNKNOWN"),
        ("PUT", format!("/v2/a/blobs/uploads/{uuid}?digest={}", sha256(b"")), 404, "BLOB_UPLOAD_UNKNOWN"),
        ("DELETE", format!("/v2/a/blobs/uploads/{uuid}"), 404, "BLOB_UPLOAD_UNKNOWN"),
        ("DELETE", "/v2/_catalog".into(), 405, "UNSUPPORTED"),
        ("POST", "/v2/a/manifests/latest".into(), 405, "UNSUPPORTED"),
        ("GET", "/v2/a/tags/list?n=abc".into(), 400, "UNSUPPORTED"),
        ("GET", "/v2/_catalog?n=-5".into(), 400, "UNSUPPORTED"),
        ("POST", "/v2/a/blobs/uploads/?digest=sha256:xyz".into(), 400, "DIGEST_INVALID"),
        ("POST", "/v2/a/blobs/uploads/?mount=bogus&from=b".into(), 400, "DIGEST_INVALID"),
        ("POST", format!("/v2/a/blobs/uploads/?mount={}&from=Bad/../Name", sha256(b"x")), 400, "NAME_INVALID"),
        ("GET", "/nope".into(), 404, "NAME_UNKNOWN"),
    ];
    for (method, path, status, code) in &cases {
        let r = get(&b.addr, method, path);
        assert_eq!(r.status, *status, "{method} {path}");
        assert_eq!(r.code(), *code, "{method} {}", &path[..path.len().min(80)]);
    }
    // A URI hyper itself cannot parse is answered, not crashed on.
    let r = raw(&b.addr, b"GET /v2/a\x01b/tags/list HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(r.status, 400);
    assert_no_server_errors(&b);
    assert_nothing_outside_data_dir(&b);
}

#[test]
fn bad_upload_headers() {
    let b = Berth::start("");
    let loc = start_upload(&b, "up");
    let send = |extra: &str, body: &[u8]| {
        let mut req = format!(
            "PATCH {loc} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}Content-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body);
        raw(&b.addr, &req)
    };
    for bad in ["abc", "5-1", "-", "0-", "bytes */*"] {
        let r = send(&format!("Content-Range: {bad}\r\n"), b"0123456789");
        assert_eq!((r.status, r.code().as_str()), (400, "BLOB_UPLOAD_INVALID"), "Content-Range {bad}");
    }
    // Content-Range that disagrees with Content-Length.
    let r = send("Content-Range: 0-4\r\n", b"0123456789");
    assert_eq!((r.status, r.code().as_str()), (400, "SIZE_INVALID"));
    // A start that is not the current offset.
    let r = send("Content-Range: 5-14\r\n", b"0123456789");
    assert_eq!(r.status, 416);
    assert_eq!(r.header("range"), Some("0-0"));
    // None of the refused chunks moved the upload.
    let r = get(&b.addr, "GET", &loc);
    assert_eq!(r.status, 204);
    assert_eq!(r.header("range"), Some("0-0"));
    // A good chunk still works after all that.
    let r = send("Content-Range: 0-9\r\n", b"0123456789");
    assert_eq!(r.status, 202);
    assert_eq!(r.header("range"), Some("0-9"));
    // Manifest body announced far over the cap is refused without reading it.
    let r = raw(&b.addr, b"PUT /v2/up/manifests/v1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nContent-Length: 10000000000\r\n\r\n{");
    assert_eq!((r.status, r.code().as_str()), (413, "MANIFEST_INVALID"));
    assert_no_server_errors(&b);
}

#[test]
fn truncated_body_keeps_progress() {
    let b = Berth::start("");
    let loc = start_upload(&b, "trunc");
    // Announce 100 bytes, send 10, then stop sending.
    let mut s = patch_ten_of_a_hundred(&b, &loc);
    s.shutdown(std::net::Shutdown::Write).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    if !out.is_empty() {
        let r = parse_response(&out);
        assert_eq!(r.status / 100, 4, "truncated body answered with {}", r.status);
    }
    // The ten bytes that arrived are kept; the client resumes from there.
    let r = wait_for_range(&b, &loc, "0-9");
    assert_eq!(r.status, 204);
    let rest: Vec<u8> = (10..100u8).collect();
    let mut all: Vec<u8> = b"0123456789".to_vec();
    all.extend_from_slice(&rest);
    let mut req = format!("PUT {loc}?digest={} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Range: 10-99\r\nContent-Length: 90\r\n\r\n", sha256(&all)).into_bytes();
    req.extend_from_slice(&rest);
    let r = raw(&b.addr, &req);
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert_no_server_errors(&b);
}

#[test]
fn idle_body_times_out_and_keeps_progress() {
    let b = Berth::start("body_idle_timeout = \"1s\"");
    let loc = start_upload(&b, "idle");
    let mut s = patch_ten_of_a_hundred(&b, &loc);
    // Keep the connection open without sending: the server gives up.
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let r = parse_response(&out);
    assert_eq!((r.status, r.code().as_str()), (400, "BLOB_UPLOAD_INVALID"));
    let r = wait_for_range(&b, &loc, "0-9");
    assert_eq!(r.status, 204);
}

#[test]
fn slow_headers_are_cut_off() {
    let b = Berth::start("header_read_timeout = \"1s\"");
    let mut s = TcpStream::connect(&b.addr).unwrap();
    s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let started = std::time::Instant::now();
    let mut out = Vec::new();
    // Blocks until the server closes the connection.
    let _ = s.read_to_end(&mut out);
    assert!(started.elapsed() < Duration::from_secs(29), "the connection was never closed");
    assert!(out.is_empty() || out.starts_with(b"HTTP/1.1 408"), "{:?}", String::from_utf8_lossy(&out));
}

/// A PATCH that announces 100 bytes and sends the first 10, left open.
fn patch_ten_of_a_hundred(b: &Berth, loc: &str) -> TcpStream {
    let mut s = TcpStream::connect(&b.addr).unwrap();
    let head = format!("PATCH {loc} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 100\r\n\r\n");
    s.write_all(format!("{head}0123456789").as_bytes()).unwrap();
    s
}

fn start_upload(b: &Berth, repo: &str) -> String {
    let r = get(&b.addr, "POST", &format!("/v2/{repo}/blobs/uploads/"));
    assert_eq!(r.status, 202);
    r.header("location").unwrap().to_owned()
}

/// Poll the upload status until it reports `range` (the server may still be
/// saving the session when the client sees the connection end).
fn wait_for_range(b: &Berth, loc: &str, range: &str) -> RawResponse {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = get(&b.addr, "GET", loc);
        if r.header("range") == Some(range) || std::time::Instant::now() > deadline {
            assert_eq!(r.header("range"), Some(range), "upload progress");
            return r;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn assert_no_server_errors(b: &Berth) {
    let log = b.stderr();
    assert!(!log.contains("panicked"), "server panicked:\n{log}");
    assert!(!log.contains("status=500"), "server answered 500:\n{log}");
}

/// The test directory holds exactly what the test put there: the config, the
/// log and the data directory.
fn assert_nothing_outside_data_dir(b: &Berth) {
    let mut names: Vec<String> = std::fs::read_dir(b.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["berth.toml", "data", "stderr.log"]);
    for f in common::files_under(&b.data_dir()) {
        assert!(f.starts_with(b.data_dir()), "{f:?}");
    }
}

#[tokio::test]
async fn client_disconnect_mid_upload_is_not_a_server_error() {
    let b = Berth::start("");
    let c = client();
    let loc = start_upload(&b, "disc");
    // A streamed body that fails half way, as when a client dies.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        vec![Ok(vec![1u8; 100_000]), Err(std::io::Error::other("client died"))];
    let _ = c.patch(b.url(&loc)).body(reqwest::Body::wrap_stream(futures::stream::iter(chunks))).send().await;
    // Whatever arrived before the reset is kept; the session stays usable.
    let r = get(&b.addr, "GET", &loc);
    assert_eq!(r.status, 204);
    let end: u64 = r.header("range").unwrap().split('-').nth(1).unwrap().parse().unwrap();
    assert!(end < 100_000);
    assert_no_server_errors(&b);
}

#[test]
fn silent_connections_are_closed() {
    let b = Berth::start("header_read_timeout = \"1s\"");
    let mut s = TcpStream::connect(&b.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let started = std::time::Instant::now();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    assert!(started.elapsed() < Duration::from_secs(29), "a connection that never spoke was kept open");
    assert!(out.is_empty());
}

/// A client that stops reading a download is disconnected once nothing has
/// moved for the connection idle timeout.
#[tokio::test]
async fn stalled_download_is_disconnected() {
    let b = Berth::start("connection_idle_timeout = \"1s\"");
    let data = common::bytes(32 * 1024 * 1024, 5);
    let d = sha256(&data);
    let resp = client().post(b.url(&format!("/v2/stall/blobs/uploads/?digest={d}"))).body(data).send().await.unwrap();
    assert_eq!(resp.status(), 201);
    let addr = b.addr.clone();
    let received = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(&addr).unwrap();
        s.write_all(format!("GET /v2/stall/blobs/{d} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).unwrap();
        let mut first = [0u8; 1024];
        let n = s.read(&mut first).unwrap();
        (s, n)
    })
    .await
    .unwrap();
    let (mut s, first) = received;
    // Stop reading until the server reports closing the connection.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !b.stderr().contains("closing idle connection") {
        assert!(std::time::Instant::now() < deadline, "stalled connection never closed:\n{}", b.stderr());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rest = tokio::task::spawn_blocking(move || {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        out.len()
    })
    .await
    .unwrap();
    assert!(first + rest < 32 * 1024 * 1024, "the whole blob arrived; the stall was not detected");
}
