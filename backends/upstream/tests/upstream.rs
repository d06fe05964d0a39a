//! The upstream client against a stand-in registry with a token service
//! (Bearer, expiring tokens, rate limits, lies, stalls) and against Debian's
//! CNCF Distribution 2.8.2 with htpasswd (Basic), both on loopback.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use berth_upstream::{Credentials, Upstream, UpstreamError, UpstreamOptions};
use bytes::Bytes;
use futures::StreamExt;
use sha2::Digest as _;

fn sha256(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(b)))
}

/// What the stand-in does, and what it saw.
#[derive(Default)]
struct Stand {
    /// Blobs and manifests by digest; tags by name.
    blobs: HashMap<String, Bytes>,
    manifests: HashMap<String, Bytes>,
    tags: HashMap<String, String>,
    /// Answers to give before the real one, per path: (status, Retry-After).
    hiccups: HashMap<String, Vec<(u16, Option<&'static str>)>>,
    /// Serve this instead of the blob asked for (a lying upstream).
    lie: Option<Bytes>,
    /// Stop sending after the first chunk of a blob.
    stall: bool,
    token_life: u64,
    tokens_issued: usize,
    token_requests: Vec<String>,
    requests: Vec<String>,
}

type Shared = Arc<Mutex<Stand>>;

const TOKEN_USER: &str = "mirror";
const TOKEN_PASSWORD: &str = "s3cret-pass";

fn basic_ok(headers: &HeaderMap) -> bool {
    let want = format!("Basic {}", base64(&format!("{TOKEN_USER}:{TOKEN_PASSWORD}")));
    headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(want.as_str())
}

fn base64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

async fn token(State(s): State<Shared>, headers: HeaderMap, uri: Uri) -> Response {
    let q: HashMap<String, String> = uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), percent_decode(v)))
        .collect();
    let mut s = s.lock().unwrap();
    s.token_requests.push(format!(
        "service={} scope={}",
        q.get("service").cloned().unwrap_or_default(),
        q.get("scope").cloned().unwrap_or_default()
    ));
    if !basic_ok(&headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    s.tokens_issued += 1;
    let t = format!("tok-{}", s.tokens_issued);
    let life = s.token_life;
    ([("content-type", "application/json")], serde_json::json!({"token": t, "expires_in": life}).to_string())
        .into_response()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(if b[i] == b'+' { b' ' } else { b[i] });
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

async fn v2(State(s): State<Shared>, headers: HeaderMap, uri: Uri, method: axum::http::Method) -> Response {
    let path = uri.path().to_owned();
    let host = headers.get("host").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let mut st = s.lock().unwrap();
    st.requests.push(format!("{method} {path}"));
    let current = format!("Bearer tok-{}", st.tokens_issued);
    let authorized =
        st.tokens_issued > 0 && headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(current.as_str());
    if !authorized {
        let repo =
            path.trim_start_matches("/v2/").split("/manifests/").next().unwrap().split("/blobs/").next().unwrap();
        let challenge =
            format!("Bearer realm=\"http://{host}/token\",service=\"stand-in\",scope=\"repository:{repo}:pull\"");
        return (StatusCode::UNAUTHORIZED, [("www-authenticate", challenge)]).into_response();
    }
    if let Some(list) = st.hiccups.get_mut(&path) {
        if !list.is_empty() {
            let (status, after) = list.remove(0);
            let mut resp = Response::new(Body::empty());
            *resp.status_mut() = StatusCode::from_u16(status).unwrap();
            if let Some(a) = after {
                resp.headers_mut().insert("retry-after", a.parse().unwrap());
            }
            return resp;
        }
    }
    if let Some((_, reference)) = path.split_once("/manifests/") {
        let digest =
            if reference.starts_with("sha256:") { Some(reference.to_owned()) } else { st.tags.get(reference).cloned() };
        let Some(bytes) = digest.as_ref().and_then(|d| st.manifests.get(d)).cloned() else {
            return StatusCode::NOT_FOUND.into_response();
        };
        let digest = digest.unwrap();
        let body = if method == axum::http::Method::HEAD { Body::empty() } else { Body::from(bytes.clone()) };
        return (
            [
                ("content-type", "application/vnd.oci.image.manifest.v1+json".to_owned()),
                ("docker-content-digest", digest),
                ("content-length", bytes.len().to_string()),
            ],
            body,
        )
            .into_response();
    }
    if let Some((_, digest)) = path.split_once("/blobs/") {
        let Some(bytes) = st.blobs.get(digest).cloned() else { return StatusCode::NOT_FOUND.into_response() };
        let bytes = st.lie.clone().unwrap_or(bytes);
        if st.stall {
            let first = bytes.slice(..bytes.len() / 2);
            let stream =
                futures::stream::once(async move { Ok::<_, std::io::Error>(first) }).chain(futures::stream::pending());
            return ([("content-length", bytes.len().to_string())], Body::from_stream(stream)).into_response();
        }
        return ([("content-length", bytes.len().to_string())], Body::from(bytes)).into_response();
    }
    StatusCode::NOT_FOUND.into_response()
}

async fn stand_in(setup: impl FnOnce(&mut Stand)) -> (String, Shared) {
    let mut stand = Stand { token_life: 300, ..Default::default() };
    setup(&mut stand);
    let shared = Arc::new(Mutex::new(stand));
    let app = Router::new().route("/token", get(token)).fallback(v2).with_state(shared.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, shared)
}

fn client(url: &str, creds: Option<(&str, &str)>) -> Upstream {
    Upstream::new(UpstreamOptions {
        url: url.into(),
        credentials: creds.map(|(u, p)| Credentials { username: u.into(), password: p.into() }),
        idle_timeout: Duration::from_secs(2),
        response_timeout: Duration::from_secs(10),
        max_retry_wait: Duration::from_secs(3),
        ..Default::default()
    })
    .unwrap()
}

async fn read_all(
    mut body: futures::stream::BoxStream<'static, berth_upstream::Result<Bytes>>,
) -> Result<Vec<u8>, UpstreamError> {
    let mut out = Vec::new();
    while let Some(p) = body.next().await {
        out.extend_from_slice(&p?);
    }
    Ok(out)
}

/// An image: a layer blob and a manifest naming it, tagged `v1`.
fn image(stand: &mut Stand) -> (String, String, Bytes) {
    let layer = Bytes::from((0..200_000u32).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    let layer_digest = sha256(&layer);
    stand.blobs.insert(layer_digest.clone(), layer.clone());
    let manifest = Bytes::from(
        serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": layer_digest, "size": layer.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer.len()}],
        })
        .to_string(),
    );
    let manifest_digest = sha256(&manifest);
    stand.manifests.insert(manifest_digest.clone(), manifest);
    stand.tags.insert("v1".into(), manifest_digest.clone());
    (manifest_digest, layer_digest, layer)
}

#[tokio::test]
async fn the_token_flow_is_driven_by_the_challenge_and_tokens_are_reused_until_they_expire() {
    let mut ids = None;
    let (url, stand) = stand_in(|s| ids = Some(image(s))).await;
    let (manifest_digest, layer_digest, layer) = ids.unwrap();
    let up = client(&url, Some((TOKEN_USER, TOKEN_PASSWORD)));

    let head = up.head_manifest("team/app", "v1").await.unwrap();
    assert_eq!(head.digest, manifest_digest);
    let by_tag = up.get_manifest("team/app", "v1").await.unwrap();
    assert_eq!(by_tag.digest, manifest_digest);
    assert_eq!(by_tag.media_type, "application/vnd.oci.image.manifest.v1+json");
    let by_digest = up.get_manifest("team/app", &manifest_digest).await.unwrap();
    assert_eq!(by_digest.bytes, by_tag.bytes);
    let blob = up.get_blob("team/app", &layer_digest).await.unwrap();
    assert_eq!(blob.size, Some(layer.len() as u64));
    assert_eq!(read_all(blob.body).await.unwrap(), layer);
    {
        let s = stand.lock().unwrap();
        // One token for the whole series, asked for the challenge's service and scope.
        assert_eq!(s.tokens_issued, 1, "{:?}", s.requests);
        assert_eq!(s.token_requests, vec!["service=stand-in scope=repository:team/app:pull".to_owned()]);
    }

    // Tokens that live 1 s: the next call after that gets a new one.
    stand.lock().unwrap().token_life = 1;
    let up = client(&url, Some((TOKEN_USER, TOKEN_PASSWORD)));
    up.head_manifest("team/app", "v1").await.unwrap();
    let issued = stand.lock().unwrap().tokens_issued;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    up.head_manifest("team/app", "v1").await.unwrap();
    assert_eq!(stand.lock().unwrap().tokens_issued, issued + 1);

    // Wrong or missing credentials: refused, clearly.
    let wrong = client(&url, Some((TOKEN_USER, "nope")));
    assert!(matches!(wrong.head_manifest("team/app", "v1").await, Err(UpstreamError::Unauthorized(_))));
    let anonymous = client(&url, None);
    assert!(matches!(anonymous.head_manifest("team/app", "v1").await, Err(UpstreamError::Unauthorized(_))));
    // Unknown names and references.
    assert!(matches!(up.get_manifest("team/app", "v404").await, Err(UpstreamError::NotFound)));
    assert!(matches!(up.get_blob("team/app", &sha256(b"absent")).await, Err(UpstreamError::NotFound)));
    assert!(matches!(up.get_blob("team/app", "md5:abc").await, Err(UpstreamError::Protocol(_))));
}

#[tokio::test]
async fn retry_after_is_honoured_up_to_a_bound_and_reported_beyond_it() {
    let mut ids = None;
    let (url, stand) = stand_in(|s| ids = Some(image(s))).await;
    let (manifest_digest, _, _) = ids.unwrap();
    let up = client(&url, Some((TOKEN_USER, TOKEN_PASSWORD)));
    up.head_manifest("team/app", "v1").await.unwrap();
    let path = "/v2/team/app/manifests/v1".to_owned();

    // 429 with Retry-After: 1, then 503: both waited out, the third answer is used.
    stand.lock().unwrap().hiccups.insert(path.clone(), vec![(429, Some("1")), (503, None)]);
    let started = Instant::now();
    assert_eq!(up.get_manifest("team/app", "v1").await.unwrap().digest, manifest_digest);
    assert!(started.elapsed() >= Duration::from_secs(1), "Retry-After: 1 was not waited for");
    assert!(stand.lock().unwrap().hiccups[&path].is_empty());

    // Retry-After beyond max_retry_wait: reported at once, with its value.
    stand.lock().unwrap().hiccups.insert(path.clone(), vec![(429, Some("120"))]);
    match up.get_manifest("team/app", "v1").await {
        Err(UpstreamError::RateLimited { retry_after }) => assert_eq!(retry_after, Duration::from_secs(120)),
        other => panic!("{other:?}"),
    }
    // 503 on every attempt: unavailable after max_attempts (3).
    stand.lock().unwrap().hiccups.insert(path.clone(), vec![(503, None); 5]);
    let before = stand.lock().unwrap().requests.len();
    assert!(matches!(up.get_manifest("team/app", "v1").await, Err(UpstreamError::Unavailable { .. })));
    assert_eq!(stand.lock().unwrap().requests.len() - before, 3);
    // A server that is gone.
    let gone = client("http://127.0.0.1:9", None);
    assert!(matches!(gone.head_manifest("a", "b").await, Err(UpstreamError::Unavailable { .. })));
}

#[tokio::test]
async fn a_lying_or_stalling_upstream_is_refused() {
    let mut ids = None;
    let (url, stand) = stand_in(|s| ids = Some(image(s))).await;
    let (manifest_digest, layer_digest, layer) = ids.unwrap();
    let up = client(&url, Some((TOKEN_USER, TOKEN_PASSWORD)));

    // A layer with one byte flipped: everything but the last piece arrives,
    // then the mismatch.
    let mut bad = layer.to_vec();
    bad[1000] ^= 0xff;
    stand.lock().unwrap().lie = Some(Bytes::from(bad));
    let blob = up.get_blob("team/app", &layer_digest).await.unwrap();
    assert!(matches!(read_all(blob.body).await, Err(UpstreamError::DigestMismatch(_))));
    stand.lock().unwrap().lie = None;

    // A manifest swapped for another under the same digest and tag.
    let other = Bytes::from_static(
        br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[]}"#,
    );
    stand.lock().unwrap().manifests.insert(manifest_digest.clone(), other);
    assert!(matches!(up.get_manifest("team/app", &manifest_digest).await, Err(UpstreamError::DigestMismatch(_))));
    assert!(matches!(up.get_manifest("team/app", "v1").await, Err(UpstreamError::DigestMismatch(_))));

    // A body that stops: the idle timeout (2 s) ends it.
    stand.lock().unwrap().stall = true;
    let blob = up.get_blob("team/app", &layer_digest).await.unwrap();
    assert!(matches!(read_all(blob.body).await, Err(UpstreamError::Unavailable { .. })));
}

/// Debian's docker-registry (Distribution 2.8.2), killed on drop.
struct Distribution {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Distribution {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn distribution_with_htpasswd(user: &str, password: &str) -> Distribution {
    let dir = tempfile::tempdir().unwrap();
    let line = Command::new("htpasswd").args(["-Bbn", user, password]).output().expect("htpasswd (apache2-utils)");
    assert!(line.status.success());
    std::fs::write(dir.path().join("htpasswd"), &line.stdout).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = format!(
        "version: 0.1\nlog: {{level: error, accesslog: {{disabled: true}}}}\n\
         storage: {{filesystem: {{rootdirectory: {}}}, delete: {{enabled: true}}}}\n\
         http: {{addr: 127.0.0.1:{port}}}\n\
         auth: {{htpasswd: {{realm: upstream, path: {}}}}}\n",
        dir.path().join("data").display(),
        dir.path().join("htpasswd").display()
    );
    std::fs::write(dir.path().join("config.yml"), config).unwrap();
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(dir.path().join("config.yml"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("docker-registry (Debian's CNCF Distribution)");
    let url = format!("http://127.0.0.1:{port}");
    let d = Distribution { child, url, _dir: dir };
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "docker-registry did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    d
}

/// Push a blob and a manifest tagged `tag` into Distribution with Basic auth.
async fn push(base: &str, user: &str, password: &str, repo: &str, tag: &str) -> (String, String, Vec<u8>) {
    let http = reqwest::Client::new();
    let auth = format!("Basic {}", base64(&format!("{user}:{password}")));
    let layer: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#.to_vec();
    for data in [&layer, &config] {
        let start =
            http.post(format!("{base}/v2/{repo}/blobs/uploads/")).header("authorization", &auth).send().await.unwrap();
        assert_eq!(start.status(), 202);
        let location = start.headers()["location"].to_str().unwrap().to_owned();
        let location = if location.starts_with('/') { format!("{base}{location}") } else { location };
        let sep = if location.contains('?') { '&' } else { '?' };
        let put = http
            .put(format!("{location}{sep}digest={}", sha256(data)))
            .header("authorization", &auth)
            .header("content-type", "application/octet-stream")
            .body(data.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(put.status(), 201, "{}", put.text().await.unwrap());
    }
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha256(&layer), "size": layer.len()}],
    })
    .to_string();
    let put = http
        .put(format!("{base}/v2/{repo}/manifests/{tag}"))
        .header("authorization", &auth)
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201, "{}", put.text().await.unwrap());
    (sha256(manifest.as_bytes()), sha256(&layer), layer)
}

#[tokio::test]
async fn distribution_with_htpasswd_is_read_with_basic_credentials() {
    let d = distribution_with_htpasswd("puller", "pull-Pa55word");
    let (manifest_digest, layer_digest, layer) = push(&d.url, "puller", "pull-Pa55word", "library/base", "3.21").await;
    let up = client(&d.url, Some(("puller", "pull-Pa55word")));
    let head = up.head_manifest("library/base", "3.21").await.unwrap();
    assert_eq!(head.digest, manifest_digest);
    assert_eq!(head.media_type, "application/vnd.oci.image.manifest.v1+json");
    let m = up.get_manifest("library/base", "3.21").await.unwrap();
    assert_eq!(m.digest, manifest_digest);
    assert_eq!(up.get_manifest("library/base", &manifest_digest).await.unwrap().bytes, m.bytes);
    let blob = up.get_blob("library/base", &layer_digest).await.unwrap();
    assert_eq!(read_all(blob.body).await.unwrap(), layer);
    assert!(matches!(up.get_manifest("library/base", "nope").await, Err(UpstreamError::NotFound)));
    assert_eq!(up.head_blob("library/base", &layer_digest).await.unwrap(), layer.len() as u64);
    let absent = format!("sha256:{}", "0".repeat(64));
    assert!(matches!(up.head_blob("library/base", &absent).await, Err(UpstreamError::NotFound)));
    assert_eq!(up.tags("library/base").await.unwrap(), vec!["3.21".to_owned()]);
    assert_eq!(up.catalog().await.unwrap(), vec!["library/base".to_owned()]);
    assert!(matches!(up.tags("library/nothing").await, Err(UpstreamError::NotFound)));

    let wrong = client(&d.url, Some(("puller", "wrong-password")));
    assert!(matches!(wrong.head_manifest("library/base", "3.21").await, Err(UpstreamError::Unauthorized(_))));
    let none = client(&d.url, None);
    assert!(matches!(none.head_manifest("library/base", "3.21").await, Err(UpstreamError::Unauthorized(_))));
}

/// An upstream whose token endpoint and lists misbehave: a realm on
/// another host over plain http, an absurd `expires_in`, an oversized
/// token answer, a `next` link that points back at its own page.
#[tokio::test]
async fn a_hostile_token_endpoint_or_list_is_refused_without_leaking_or_hanging() {
    #[derive(Default)]
    struct Seen {
        elsewhere: Vec<String>,
        pages: usize,
    }
    let seen = Arc::new(Mutex::new(Seen::default()));
    // Another host on loopback that would collect credentials.
    let thief = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
    let thief_addr = thief.local_addr().unwrap();
    let app = Router::new().fallback(|State(s): State<Arc<Mutex<Seen>>>, headers: HeaderMap| async move {
        let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("-").to_owned();
        s.lock().unwrap().elsewhere.push(auth);
        ([("content-type", "application/json")], r#"{"token":"stolen"}"#)
    });
    let app = app.with_state(seen.clone());
    tokio::spawn(async move {
        let _ = axum::serve(thief, app).await;
    });

    // realm: where the token is asked for; what the token endpoint answers.
    let upstream = |realm: String, answer: String| {
        let seen = seen.clone();
        async move {
            let app = Router::new()
                .route("/token", get(move || async move { ([("content-type", "application/json")], answer) }))
                .fallback(move |headers: HeaderMap, uri: Uri| {
                    let (seen, realm) = (seen.clone(), realm.clone());
                    async move {
                        let host = headers.get("host").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
                        if headers.get("authorization").is_none() {
                            let realm = realm.replace("HOST", &host);
                            let challenge = format!("Bearer realm=\"{realm}\",service=\"s\"");
                            return (StatusCode::UNAUTHORIZED, [("www-authenticate", challenge)]).into_response();
                        }
                        // Every page of tags names itself as the next one.
                        seen.lock().unwrap().pages += 1;
                        let link = format!("<{}>; rel=\"next\"", uri);
                        ([("content-type", "application/json"), ("link", link.as_str())], r#"{"tags":["a"]}"#)
                            .into_response()
                    }
                });
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
            url
        }
    };
    let creds = Some((TOKEN_USER, TOKEN_PASSWORD));

    // Credentials are not sent over plain http to another host.
    let url = upstream(format!("http://{thief_addr}/token"), "{}".into()).await;
    let listed = tokio::time::timeout(Duration::from_secs(60), client(&url, creds).tags("team/app")).await;
    let err = listed.expect("the pages were followed for a minute").unwrap_err();
    assert!(matches!(&err, UpstreamError::Protocol(m) if m.contains("token realm")), "{err:?}");
    assert!(
        seen.lock().unwrap().elsewhere.is_empty(),
        "the other host was asked: {:?}",
        seen.lock().unwrap().elsewhere
    );
    // Without credentials to lose, an anonymous token may come from there.
    let _ = tokio::time::timeout(Duration::from_secs(60), client(&url, None).tags("team/app")).await;
    assert_eq!(seen.lock().unwrap().elsewhere, vec!["-".to_owned()]);
    let pages_before = seen.lock().unwrap().pages;

    // An expires_in no clock can add: the token is used, nothing panics.
    // The tags list then names itself as its next page: refused, once.
    let url = upstream("http://HOST/token".into(), r#"{"token":"t","expires_in":18446744073709551615}"#.into()).await;
    // (A bound on the wait, so a loop fails the test instead of hanging it.)
    let listed = tokio::time::timeout(Duration::from_secs(60), client(&url, creds).tags("team/app")).await;
    let err = listed.expect("the pages were followed for a minute").unwrap_err();
    assert!(matches!(&err, UpstreamError::Protocol(m) if m.contains("do not end")), "{err:?}");
    assert_eq!(seen.lock().unwrap().pages, pages_before + 1, "the repeated page was asked for again");

    // A token answer of a megabyte is refused.
    let huge = format!(r#"{{"token":"{}"}}"#, "x".repeat(1024 * 1024));
    let url = upstream("http://HOST/token".into(), huge).await;
    let err = client(&url, creds).tags("team/app").await.unwrap_err();
    assert!(matches!(&err, UpstreamError::Protocol(m) if m.contains("over")), "{err:?}");
}
