//! The mirror extension end to end: Berth pulls through from Debian's
//! Distribution 2.8.2 with htpasswd (Basic) on loopback.

#![cfg(feature = "mirror")]
#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{basic, client, sha256, Berth};

/// Debian's docker-registry with htpasswd, killed on drop.
struct Distribution {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    /// Configuration after storage and http (auth or proxy).
    extra: String,
    /// Storage root when not `dir/data`.
    data: Option<std::path::PathBuf>,
}

impl Distribution {
    fn start(user: &str, password: &str) -> Distribution {
        let dir = tempfile::tempdir().unwrap();
        let line = Command::new("htpasswd").args(["-Bbn", user, password]).output().expect("htpasswd (apache2-utils)");
        std::fs::write(dir.path().join("htpasswd"), &line.stdout).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let extra =
            format!("auth: {{htpasswd: {{realm: upstream, path: {}}}}}\n", dir.path().join("htpasswd").display());
        let mut d = Distribution { child: None, port, dir, extra, data: None };
        d.run();
        d
    }

    /// Distribution as a pull-through proxy of `upstream` (no auth).
    fn proxy_of(upstream: &str) -> Distribution {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let extra = format!("proxy: {{remoteurl: \"{upstream}\"}}\n");
        let mut d = Distribution { child: None, port, dir, extra, data: None };
        d.run();
        d
    }

    /// A second Distribution without auth serving `other`'s data.
    fn serving(other: &Distribution) -> Distribution {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let data = Some(other.data_dir());
        let mut d = Distribution { child: None, port, dir, extra: String::new(), data };
        d.run();
        d
    }

    fn data_dir(&self) -> std::path::PathBuf {
        self.data.clone().unwrap_or_else(|| self.dir.path().join("data"))
    }

    /// Successful GETs and HEADs the upstream logged, by request path.
    fn served(&self) -> Vec<(String, String)> {
        let log = std::fs::read_to_string(self.dir.path().join("access.log")).unwrap();
        log.lines()
            .filter_map(|l| {
                // The combined-format access line: "GET /v2/... HTTP/1.1" 200
                let (_, rest) = l.split_once(" \"")?;
                let (request, rest) = rest.split_once("\" ")?;
                let status = rest.split(' ').next()?;
                let mut parts = request.split(' ');
                let (method, path) = (parts.next()?, parts.next()?);
                (status.starts_with('2') && path.starts_with("/v2/") && path != "/v2/")
                    .then(|| (method.to_owned(), path.to_owned()))
            })
            .collect()
    }

    fn run(&mut self) {
        let config = format!(
            "version: 0.1\nlog: {{level: info}}\n\
             storage: {{filesystem: {{rootdirectory: {}}}}}\n\
             http: {{addr: 127.0.0.1:{}}}\n{}",
            self.data_dir().display(),
            self.port,
            self.extra
        );
        std::fs::write(self.dir.path().join("config.yml"), config).unwrap();
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("access.log")).unwrap();
        self.child = Some(
            Command::new("docker-registry")
                .arg("serve")
                .arg(self.dir.path().join("config.yml"))
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .stdin(Stdio::null())
                .spawn()
                .expect("docker-registry"),
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "docker-registry did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// SIGSTOP (`true`) or SIGCONT: a hung upstream, connections accepted
    /// by the kernel and never answered.
    fn hang(&self, hung: bool) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        let signal = if hung { "-STOP" } else { "-CONT" };
        assert!(Command::new("kill").args([signal, &pid]).status().unwrap().success());
    }
}

impl Drop for Distribution {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill").args(["-CONT", &c.id().to_string()]).status();
        }
        self.stop();
    }
}

/// Push one image (config + one layer) tagged `tag` with Basic auth.
async fn push(base: &str, auth: &str, repo: &str, tag: &str, seed: u8) -> (String, String, Vec<u8>) {
    let layer: Vec<u8> = (0..400_000u32).map(|i| ((i % 251) as u8) ^ seed).collect();
    let (manifest, _) = push_image(base, auth, repo, tag, seed, std::slice::from_ref(&layer)).await;
    (manifest, sha256(&layer), layer)
}

/// Push an image of `layers` and a config tagged `tag`; its manifest's
/// digest and the digests of its blobs (config first).
async fn push_image(
    base: &str,
    auth: &str,
    repo: &str,
    tag: &str,
    seed: u8,
    layers: &[Vec<u8>],
) -> (String, Vec<String>) {
    let http = client();
    let config = format!(r#"{{"architecture":"amd64","os":"linux","seed":{seed}}}"#).into_bytes();
    for data in std::iter::once(&config).chain(layers) {
        let start =
            http.post(format!("{base}/v2/{repo}/blobs/uploads/")).header("authorization", auth).send().await.unwrap();
        assert_eq!(start.status(), 202);
        let location = start.headers()["location"].to_str().unwrap().to_owned();
        let location = if location.starts_with('/') { format!("{base}{location}") } else { location };
        let sep = if location.contains('?') { '&' } else { '?' };
        let put = http
            .put(format!("{location}{sep}digest={}", sha256(data)))
            .header("authorization", auth)
            .body(data.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(put.status(), 201);
    }
    let layer_descriptors: Vec<_> = layers
        .iter()
        .map(|l| serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha256(l), "size": l.len()}))
        .collect();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(&config), "size": config.len()},
        "layers": layer_descriptors,
    })
    .to_string();
    let put = http
        .put(format!("{base}/v2/{repo}/manifests/{tag}"))
        .header("authorization", auth)
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201);
    let blobs = std::iter::once(sha256(&config)).chain(layers.iter().map(|l| sha256(l))).collect();
    (sha256(manifest.as_bytes()), blobs)
}

/// Pull `repo:tag` from `base` as a client would (manifest, then every
/// blob), checking each digest; the number of blob bytes.
async fn pull(http: &reqwest::Client, base: &str, repo: &str, tag: &str) -> Result<usize, String> {
    let m = http
        .get(format!("{base}/v2/{repo}/manifests/{tag}"))
        .header("accept", ACCEPT)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if m.status() != 200 {
        return Err(format!("manifest: {} {}", m.status(), m.text().await.unwrap_or_default()));
    }
    let manifest: serde_json::Value = serde_json::from_slice(&m.bytes().await.unwrap()).map_err(|e| e.to_string())?;
    let digests = std::iter::once(&manifest["config"])
        .chain(manifest["layers"].as_array().unwrap())
        .map(|d| d["digest"].as_str().unwrap().to_owned());
    let mut total = 0;
    for digest in digests {
        let b = http.get(format!("{base}/v2/{repo}/blobs/{digest}")).send().await.map_err(|e| e.to_string())?;
        if b.status() != 200 {
            return Err(format!("blob {digest}: {}", b.status()));
        }
        let body = b.bytes().await.map_err(|e| format!("blob {digest}: {e}"))?;
        if sha256(&body) != digest {
            return Err(format!("blob {digest}: wrong bytes"));
        }
        total += body.len();
    }
    Ok(total)
}

const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_through_from_distribution_and_serves_stale_when_it_is_gone() {
    let mut up = Distribution::start("mirror", "Upstream-pw1");
    let auth = basic("mirror", "Upstream-pw1");
    let (manifest_digest, layer_digest, layer) = push(&up.url(), &auth, "team/base", "1.0", 0).await;
    let b = Berth::start(&format!(
        "[[mirror.upstreams]]\nname = \"dist\"\nprefix = \"up\"\nurl = \"{}\"\nusername = \"mirror\"\npassword = \"Upstream-pw1\"\ntag_ttl = \"4s\"\n",
        up.url()
    ));
    let c = client();
    let m = c.get(b.url("/v2/up/team/base/manifests/1.0")).header("accept", ACCEPT).send().await.unwrap();
    assert_eq!(m.status(), 200);
    assert_eq!(m.headers()["docker-content-digest"], manifest_digest.as_str());
    // A HEAD of a blob not fetched yet answers as the upstream does.
    let head = c.head(b.url(&format!("/v2/up/team/base/blobs/{layer_digest}"))).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["content-length"], layer.len().to_string().as_str());
    let absent = format!("sha256:{}", "0".repeat(64));
    let head = c.head(b.url(&format!("/v2/up/team/base/blobs/{absent}"))).send().await.unwrap();
    assert_eq!(head.status(), 404);
    let blob = c.get(b.url(&format!("/v2/up/team/base/blobs/{layer_digest}"))).send().await.unwrap();
    assert_eq!(blob.status(), 200);
    assert_eq!(blob.bytes().await.unwrap().to_vec(), layer);
    // The blob lands (the fill finishes after the response).
    let deadline = Instant::now() + Duration::from_secs(30);
    while stored(&b.data_dir(), layer_digest.trim_start_matches("sha256:")).is_empty() {
        assert!(Instant::now() < deadline, "the mirrored blob never landed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Pushing into the mirrored prefix is refused.
    let refused = c.post(b.url("/v2/up/team/base/blobs/uploads/")).send().await.unwrap();
    assert_eq!(refused.status(), 403);

    // Upstream gone: the cached image still pulls; by tag, stale after the TTL.
    up.stop();
    let by_digest = c
        .get(b.url(&format!("/v2/up/team/base/manifests/{manifest_digest}")))
        .header("accept", ACCEPT)
        .send()
        .await
        .unwrap();
    assert_eq!(by_digest.status(), 200);
    tokio::time::sleep(Duration::from_millis(4100)).await;
    let stale = c.get(b.url("/v2/up/team/base/manifests/1.0")).header("accept", ACCEPT).send().await.unwrap();
    assert_eq!(stale.status(), 200);
    assert!(stale.headers().get("warning").is_some(), "{:?}", stale.headers());
    let blob = c.get(b.url(&format!("/v2/up/team/base/blobs/{layer_digest}"))).send().await.unwrap();
    assert_eq!(blob.bytes().await.unwrap().len(), layer.len());
    // Something never fetched: a clear error, not a 500.
    let missing = c.get(b.url("/v2/up/team/other/manifests/1.0")).header("accept", ACCEPT).send().await.unwrap();
    assert_eq!(missing.status(), 503, "{}", missing.text().await.unwrap());
    let head = c.head(b.url(&format!("/v2/up/team/base/blobs/sha256:{}", "1".repeat(64)))).send().await.unwrap();
    assert_eq!(head.status(), 503);

    // What the mirror did is counted.
    let metrics = c.get(b.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let value = |series: &str| common::metric_value(&metrics, series);
    assert!(value(r#"berth_mirror_upstream_requests_total{outcome="ok"}"#) >= 3.0, "{metrics}");
    assert!(value(r#"berth_mirror_upstream_requests_total{outcome="unavailable"}"#) >= 2.0, "{metrics}");
    assert!(value("berth_mirror_stale_serves_total") >= 1.0, "{metrics}");
    assert!(value("berth_mirror_fetched_bytes_total") >= layer.len() as f64, "{metrics}");

    // Upstream back: the tag is checked (and found where it was), then it
    // moves upstream. The move is seen after the TTL and not before.
    up.run();
    let checked = Instant::now();
    let m = c.get(b.url("/v2/up/team/base/manifests/1.0")).header("accept", ACCEPT).send().await.unwrap();
    assert_eq!(m.headers()["docker-content-digest"], manifest_digest.as_str());
    assert!(m.headers().get("warning").is_none());
    let (moved, _, _) = push(&up.url(), &auth, "team/base", "1.0", 9).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = c.get(b.url("/v2/up/team/base/manifests/1.0")).header("accept", ACCEPT).send().await.unwrap();
        if m.headers()["docker-content-digest"] == moved.as_str() {
            assert!(checked.elapsed() >= Duration::from_secs(4), "moved tag seen before the TTL");
            break;
        }
        assert_eq!(m.headers()["docker-content-digest"], manifest_digest.as_str());
        assert!(Instant::now() < deadline, "the moved tag was never seen");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // What failed while the upstream was gone pulls now, without a restart.
    let (_, _, layer) = push(&up.url(), &auth, "team/other", "1.0", 3).await;
    let config = r#"{"architecture":"amd64","os":"linux","seed":3}"#;
    assert_eq!(pull(&c, &b.url(""), "up/team/other", "1.0").await, Ok(layer.len() + config.len()));
}

/// `clients` pulls of `repo:tag` from `base` at once, each checked.
async fn herd(base: &str, repo: &str, tag: &str, clients: usize, expect_bytes: usize) {
    let started = Instant::now();
    let pulls: Vec<_> = (0..clients)
        .map(|_| {
            let (base, repo, tag) = (base.to_owned(), repo.to_owned(), tag.to_owned());
            tokio::spawn(async move { pull(&client(), &base, &repo, &tag).await })
        })
        .collect();
    for p in pulls {
        assert_eq!(p.await.unwrap(), Ok(expect_bytes));
    }
    eprintln!("{clients} pulls of {repo}:{tag} through {base} in {:?}", started.elapsed());
}

/// Upstream requests under `upstream_repo`, counted by (method, path).
fn per_object(served: &[(String, String)], upstream_repo: &str) -> std::collections::BTreeMap<(String, String), usize> {
    let mut counts = std::collections::BTreeMap::new();
    for (method, path) in served {
        if path.starts_with(&format!("/v2/{upstream_repo}/")) {
            *counts.entry((method.clone(), path.clone())).or_insert(0) += 1;
        }
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_herd_on_three_replicas_costs_the_upstream_one_get_per_object() {
    let up = Distribution::start("mirror", "Upstream-pw1");
    let auth = basic("mirror", "Upstream-pw1");
    // Layers large enough that the herd arrives while they are fetched.
    let layers = vec![common::bytes(6 << 20, 1), common::bytes(3 << 20, 2), common::bytes(1000, 3)];
    let total: usize = layers.iter().map(Vec::len).sum();
    let (manifest_digest, blobs) = push_image(&up.url(), &auth, "team/app", "1.0", 1, &layers).await;
    let total = total + r#"{"architecture":"amd64","os":"linux","seed":1}"#.len();
    let before = up.served().len();

    let upstreams = format!(
        r#"[{{name = "dist", prefix = "up", url = "{}", username = "mirror", password = "Upstream-pw1", tag_ttl = "1h"}}]"#,
        up.url()
    );
    let fleet = common::LocalFleet::up(3, &[("BERTH__MIRROR__UPSTREAMS", upstreams.as_str())]);
    herd(fleet.lb(), "up/team/app", "1.0", 50, total).await;
    fleet.assert_no_server_errors();

    let served = up.served()[before..].to_vec();
    let counts = per_object(&served, "team/app");
    eprintln!("upstream requests for the Berth fleet's herd: {counts:#?}");
    let gets = |path: &str| counts.get(&("GET".to_owned(), path.to_owned())).copied().unwrap_or(0);
    assert_eq!(gets(&format!("/v2/team/app/manifests/{manifest_digest}")), 1, "{counts:#?}");
    for blob in &blobs {
        assert_eq!(gets(&format!("/v2/team/app/blobs/{blob}")), 1, "{blob}: {counts:#?}");
    }
    assert_eq!(counts.get(&("HEAD".to_owned(), "/v2/team/app/manifests/1.0".to_owned())), Some(&1), "{counts:#?}");
    assert_eq!(counts.len(), 2 + blobs.len(), "nothing else asked: {counts:#?}");

    // The same herd against Distribution 2.8.2 as a pull-through proxy of
    // the same content (one instance: it cannot share storage as a fleet).
    // Its proxy sends Basic credentials only to token realms, so its
    // upstream is a second Distribution on the same data without auth.
    let open = Distribution::serving(&up);
    let proxy = Distribution::proxy_of(&open.url());
    herd(&proxy.url(), "team/app", "1.0", 50, total).await;
    let counts = per_object(&open.served(), "team/app");
    let requests: usize = counts.values().sum();
    eprintln!("upstream requests for Distribution's herd ({requests} in all): {counts:#?}");
}

/// A proxy in front of an upstream that lies: it flips one byte of the blob
/// `corrupt` and answers GETs of the manifest `swap` with another body.
struct Liar {
    addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Liar {
    async fn start(upstream: String, corrupt: String, swap: (String, Vec<u8>)) -> Liar {
        use axum::extract::{Request, State};
        use axum::response::IntoResponse;
        type Shared = std::sync::Arc<(String, String, (String, Vec<u8>), reqwest::Client)>;
        async fn forward(State(s): State<Shared>, req: Request) -> axum::response::Response {
            let (upstream, corrupt, (swap_path, swap_body), http) = &*s;
            let path = req.uri().path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_default();
            let mut out = http.request(req.method().clone(), format!("{upstream}{path}"));
            for (k, v) in req.headers() {
                if k != "host" {
                    out = out.header(k, v);
                }
            }
            let resp = out.send().await.unwrap();
            let status = resp.status();
            let headers = resp.headers().clone();
            let mut body = resp.bytes().await.unwrap().to_vec();
            if status == 200 && path.ends_with(corrupt.as_str()) && !body.is_empty() {
                let i = body.len() / 2;
                body[i] ^= 0x01;
            }
            if status == 200 && path == *swap_path && req.method() == "GET" {
                body = swap_body.clone();
            }
            let mut r = (status, body).into_response();
            for (k, v) in &headers {
                if k != "content-length" && k != "transfer-encoding" {
                    r.headers_mut().insert(k, v.clone());
                }
            }
            r
        }
        let state: Shared = std::sync::Arc::new((upstream, corrupt, swap, client()));
        let app = axum::Router::new().fallback(forward).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Liar { addr, task }
    }
}

impl Drop for Liar {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Files under `dir` whose path names `hex`.
fn stored(dir: &std::path::Path, hex: &str) -> Vec<std::path::PathBuf> {
    common::files_under(dir).into_iter().filter(|p| p.to_string_lossy().contains(hex)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_upstream_is_refused_and_nothing_it_sent_is_stored() {
    let up = Distribution::start("mirror", "Upstream-pw1");
    let auth = basic("mirror", "Upstream-pw1");
    let (good, layer_digest, _) = push(&up.url(), &auth, "team/base", "1.0", 0).await;
    let (other, _, _) = push(&up.url(), &auth, "team/base", "2.0", 5).await;
    let other_body = client()
        .get(format!("{}/v2/team/base/manifests/{other}", up.url()))
        .header("authorization", &auth)
        .header("accept", ACCEPT)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .to_vec();
    // 2.0's manifest is the truth; 1.0's is swapped for it, and 1.0's
    // layer (still asked for by digest) is corrupted.
    let liar =
        Liar::start(up.url(), layer_digest.clone(), (format!("/v2/team/base/manifests/{good}"), other_body)).await;
    let b = Berth::start(&format!(
        "[[mirror.upstreams]]\nname = \"liar\"\nprefix = \"up\"\nurl = \"http://{}\"\nusername = \"mirror\"\npassword = \"Upstream-pw1\"\n",
        liar.addr
    ));
    let c = client();
    for reference in ["1.0".to_owned(), good.clone()] {
        let m = c
            .get(b.url(&format!("/v2/up/team/base/manifests/{reference}")))
            .header("accept", ACCEPT)
            .send()
            .await
            .unwrap();
        assert_eq!(m.status(), 503, "{reference}");
        assert!(m.headers().contains_key("retry-after"));
        let body = m.text().await.unwrap();
        assert!(body.contains("UNAVAILABLE"), "{body}");
    }
    assert!(b.stderr().contains("does not match its digest"), "{}", b.stderr());
    // The corrupted layer: the client's download breaks before its end.
    let blob = c.get(b.url(&format!("/v2/up/team/base/blobs/{layer_digest}"))).send().await.unwrap();
    assert_eq!(blob.status(), 200, "the first bytes are on their way before the digest is known");
    assert!(blob.bytes().await.is_err(), "a corrupted layer must not arrive whole");
    // Nothing the liar sent is stored (the refused fill is over once the
    // registry counts it).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = c.get(b.url("/metrics")).send().await.unwrap().text().await.unwrap();
        if common::metric_value(&metrics, r#"berth_mirror_upstream_requests_total{outcome="refused"}"#) >= 3.0 {
            break;
        }
        assert!(Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for digest in [&good, &layer_digest] {
        let hex = digest.trim_start_matches("sha256:");
        let found = stored(&b.data_dir(), hex);
        assert!(found.is_empty(), "{digest} stored: {found:?}");
    }
    // A HEAD asks the upstream and stores nothing.
    let head = c.head(b.url(&format!("/v2/up/team/base/blobs/{layer_digest}"))).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert!(stored(&b.data_dir(), layer_digest.trim_start_matches("sha256:")).is_empty());
    // The honest tag next to it mirrors normally.
    let honest = c.get(b.url("/v2/up/team/base/manifests/2.0")).header("accept", ACCEPT).send().await.unwrap();
    assert_eq!(honest.status(), 200);
    assert_eq!(honest.headers()["docker-content-digest"], other.as_str());
    assert!(!stored(&b.data_dir(), other.trim_start_matches("sha256:")).is_empty());
}

/// Upstream = a second Berth with the token service: the mirror follows its
/// Bearer challenge. skopeo and podman pull through the mirror by tag and
/// by digest, a single-architecture image and a two-platform index.
#[test]
fn skopeo_and_podman_pull_through_from_a_berth_with_the_token_service() {
    for program in ["skopeo", "podman", "umoci"] {
        let found = Command::new("sh").arg("-c").arg(format!("command -v {program}")).output().unwrap();
        assert!(found.status.success(), "{program} is not installed: run scripts/install-test-deps");
    }
    let dir = tempfile::tempdir().unwrap();
    let key = common::token_key(&dir.path().join("token.pem"), common::KeyKind::P256);
    let htpasswd = dir.path().join("users");
    std::fs::write(&htpasswd, format!("{}\n", common::user_hash("mirror", "Upstream-pw1"))).unwrap();
    let upstream = Berth::start(&format!(
        "[auth]\nhtpasswd = {:?}\n[auth.token]\nkey_file = {:?}\nissuer = \"upstream\"\nservice = \"upstream\"\n",
        htpasswd.display().to_string(),
        key.display().to_string()
    ));
    let mirror = Berth::start(&format!(
        "[[mirror.upstreams]]\nname = \"berth\"\nprefix = \"up\"\nurl = \"http://{}\"\nusername = \"mirror\"\npassword = \"Upstream-pw1\"\n",
        upstream.addr
    ));
    let work = tempfile::tempdir().unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/mirror-pull.sh");
    let out = Command::new("bash")
        .arg(script)
        .args([&upstream.addr, "mirror:Upstream-pw1", &mirror.addr, "up"])
        .arg(work.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mirror-pull.sh: {}\n{}\nmirror log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        mirror.stderr()
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("mirror-pull: ok"));
    // The mirror used the upstream's token service, and the pulls came
    // from the mirror (nothing was asked of the upstream anonymously).
    let upstream_log = upstream.stderr();
    assert!(upstream_log.contains("/v2/token"), "no token request upstream");
    let metrics = Command::new("curl").args(["-fsS", &mirror.url("/metrics")]).output().unwrap();
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    assert!(
        common::metric_value(&metrics, r#"berth_mirror_upstream_requests_total{outcome="ok"}"#) >= 7.0,
        "{metrics}"
    );
    assert_eq!(common::metric_value(&metrics, r#"berth_mirror_upstream_requests_total{outcome="unavailable"}"#), 0.0);
}

/// Push `repo:tag` with two layers of `size` bytes unique to it.
async fn push_tagged(base: &str, auth: &str, repo: &str, tag: &str, seed: u8, size: usize) -> (String, Vec<String>) {
    let layers = vec![common::bytes(size, u64::from(seed) * 2 + 1), common::bytes(size, u64::from(seed) * 2 + 2)];
    push_image(base, auth, repo, tag, seed, &layers).await
}

/// A child process killed (and resumed first, if stopped) on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-CONT", &self.0.id().to_string()]).status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `berth mirror sync` with the config of `b`.
fn sync_command(b: &Berth) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
    cmd.args(["mirror", "sync", "--config"]).arg(b.dir.path().join("berth.toml")).stdin(Stdio::null());
    cmd
}

async fn tags_of(b: &Berth, repo: &str) -> Vec<String> {
    let list: serde_json::Value =
        client().get(b.url(&format!("/v2/{repo}/tags/list"))).send().await.unwrap().json().await.unwrap();
    let mut tags: Vec<String> =
        list["tags"].as_array().into_iter().flatten().map(|t| t.as_str().unwrap().to_owned()).collect();
    tags.sort();
    tags
}

/// GETs of blobs and manifests in `served`, by path.
fn gets(served: &[(String, String)]) -> std::collections::BTreeMap<String, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for (method, path) in served {
        if method == "GET" && (path.contains("/blobs/") || path.contains("/manifests/")) {
            *counts.entry(path.clone()).or_insert(0) += 1;
        }
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_copies_exactly_the_selected_tags_and_resumes_after_kill_9() {
    let up = Distribution::start("mirror", "Upstream-pw1");
    let auth = basic("mirror", "Upstream-pw1");
    let mut pushed = std::collections::HashMap::new();
    for (i, (repo, tag)) in [
        ("team/app", "1.0"),
        ("team/app", "1.2"),
        ("team/app", "1.10"),
        ("team/app", "2.0"),
        ("team/app", "dev"),
        ("team/lib", "1.0"),
        ("team/lib", "1.5"),
        ("team/lib", "0.9"),
        ("other/x", "1.0"),
    ]
    .into_iter()
    .enumerate()
    {
        let image = push_tagged(&up.url(), &auth, repo, tag, i as u8, 3 << 20).await;
        pushed.insert(format!("{repo}:{tag}"), image);
    }
    let b = Berth::start(&format!(
        "[[mirror.upstreams]]\nname = \"dist\"\nprefix = \"up\"\nurl = \"{}\"\nusername = \"mirror\"\n\
         password = \"Upstream-pw1\"\n\
         sync = {{ repositories = [\"team/*\"], tags = [\"1.*\"], newest = 2 }}\n",
        up.url()
    ));
    let selected = ["up/team/app:1.10", "up/team/app:1.2", "up/team/lib:1.5", "up/team/lib:1.0"];

    // First run, killed (SIGKILL) right after its first tag is copied.
    let before = up.served().len();
    let mut first = Running(sync_command(&b).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap());
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(first.0.stdout.take().unwrap()));
    let copied_line = lines.next().expect("a progress line").unwrap();
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    assert!(copied_line.starts_with("dist up/team/") && copied_line.contains(" copied (1/4)"), "{copied_line}");
    let copied_first = copied_line.split(' ').nth(1).unwrap().to_owned();
    let first_gets = gets(&up.served()[before..]);

    // Second run: resumes; the tag copied before the kill is current, and
    // none of its objects is fetched again.
    let before = up.served().len();
    let out = sync_command(&b).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(&format!("dist {copied_first} current")), "{stdout}");
    assert!(stdout.contains("4 tags selected"), "{stdout}");
    let copied_again: usize = stdout.lines().filter(|l| l.contains(" copied (")).count();
    assert!(copied_again >= 1, "the first run was not cut short: {stdout}");
    let second_gets = gets(&up.served()[before..]);
    let (repo, tag) = copied_first.strip_prefix("up/").unwrap().split_once(':').unwrap();
    let (manifest, blobs) = &pushed[&format!("{repo}:{tag}")];
    for digest in std::iter::once(manifest).chain(blobs) {
        let refetched = second_gets.keys().filter(|p| p.ends_with(digest.as_str())).count();
        assert_eq!(refetched, 0, "{digest} of {copied_first} fetched again: {second_gets:#?}");
    }
    // Over both runs each object came once, but for what the kill cut off.
    let mut all = first_gets.clone();
    for (p, n) in &second_gets {
        *all.entry(p.clone()).or_insert(0) += n;
    }
    let twice: Vec<_> = all.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.len() <= 1, "{twice:?}");

    // Exactly the selected tags are here, and nothing of the others.
    assert_eq!(tags_of(&b, "up/team/app").await, ["1.10", "1.2"]);
    assert_eq!(tags_of(&b, "up/team/lib").await, ["1.0", "1.5"]);
    for key in selected {
        let (repo, tag) = key.strip_prefix("up/").unwrap().split_once(':').unwrap();
        let (_, blobs) = &pushed[&format!("{repo}:{tag}")];
        for blob in blobs {
            assert!(!stored(&b.data_dir(), blob.trim_start_matches("sha256:")).is_empty(), "{key}: {blob} missing");
        }
    }
    for key in ["team/app:1.0", "team/app:2.0", "team/app:dev", "team/lib:0.9", "other/x:1.0"] {
        let (manifest, blobs) = &pushed[key];
        for digest in std::iter::once(manifest).chain(blobs) {
            assert!(stored(&b.data_dir(), digest.trim_start_matches("sha256:")).is_empty(), "{key} copied");
        }
    }

    // A third run finds everything current and fetches nothing.
    let before = up.served().len();
    let out = sync_command(&b).arg("--json").output().unwrap();
    assert!(out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report[0]["tags_current"], 4, "{report}");
    assert_eq!(report[0]["tags_copied"], 0, "{report}");
    assert!(gets(&up.served()[before..]).is_empty());

    // Unknown upstream: a usage error.
    let out = sync_command(&b).args(["--upstream", "nope"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_syncs_on_its_schedule_only_the_selected_platforms() {
    let up = Distribution::start("mirror", "Upstream-pw1");
    let auth = basic("mirror", "Upstream-pw1");
    // An index of two platforms, tagged 1.0; its members pushed under
    // tags the sync does not select.
    let (amd, amd_blobs) = push_tagged(&up.url(), &auth, "team/multi", "build-amd64", 1, 100_000).await;
    let (arm, arm_blobs) = push_tagged(&up.url(), &auth, "team/multi", "build-arm64", 2, 100_000).await;
    let base = up.url();
    let size = |d: String| {
        let base = base.clone();
        async move {
            let r = client()
                .head(format!("{base}/v2/team/multi/manifests/{d}"))
                .header("authorization", basic("mirror", "Upstream-pw1"))
                .header("accept", ACCEPT)
                .send()
                .await
                .unwrap();
            r.headers()["content-length"].to_str().unwrap().parse::<u64>().unwrap()
        }
    };
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": ACCEPT, "digest": amd, "size": size(amd.clone()).await, "platform": {"os": "linux", "architecture": "amd64"}},
            {"mediaType": ACCEPT, "digest": arm, "size": size(arm.clone()).await, "platform": {"os": "linux", "architecture": "arm64"}},
        ],
    })
    .to_string();
    let put = client()
        .put(format!("{}/v2/team/multi/manifests/1.0", up.url()))
        .header("authorization", &auth)
        .header("content-type", "application/vnd.oci.image.index.v1+json")
        .body(index.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201);

    let b = Berth::start(&format!(
        "[[mirror.upstreams]]\nname = \"dist\"\nprefix = \"up\"\nurl = \"{}\"\nusername = \"mirror\"\n\
         password = \"Upstream-pw1\"\n\
         sync = {{ repositories = [\"team/multi\"], tags = [\"1.*\"], platforms = [\"linux/arm64\"], interval = \"1h\" }}\n",
        up.url()
    ));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !b.stderr().contains("mirror sync finished") {
        assert!(Instant::now() < deadline, "no sync ran: {}", b.stderr());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(tags_of(&b, "up/team/multi").await, ["1.0"]);
    let here = |d: &str| !stored(&b.data_dir(), d.trim_start_matches("sha256:")).is_empty();
    assert!(here(&sha256(index.as_bytes())), "the index is kept whole");
    assert!(here(&arm), "the arm64 manifest");
    for blob in &arm_blobs {
        assert!(here(blob), "arm64 blob {blob}");
    }
    assert!(!here(&amd), "the amd64 manifest was copied");
    for blob in &amd_blobs {
        assert!(!here(blob), "amd64 layer {blob} was copied");
    }
}

/// Retention applies to mirrored repositories like any other: a mirrored
/// tag not pulled within `keep_pulled_within` is collected, and pulling it
/// again fetches it again, even within its tag_ttl.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrored_tags_not_pulled_are_collected_and_fetched_again_when_pulled() {
    let up = Distribution::start("mirror", "Upstream-pw1");
    let auth = basic("mirror", "Upstream-pw1");
    let (_, pulled_blobs) = push_tagged(&up.url(), &auth, "team/pulled", "1.0", 1, 50_000).await;
    let (synced, _) = push_tagged(&up.url(), &auth, "team/synced", "1.0", 2, 50_000).await;
    let b = Berth::start(&format!(
        "[[mirror.upstreams]]\nname = \"dist\"\nprefix = \"up\"\nurl = \"{}\"\nusername = \"mirror\"\n\
         password = \"Upstream-pw1\"\ntag_ttl = \"1h\"\n\
         sync = {{ repositories = [\"team/synced\"] }}\n\
         [gc]\ngrace = \"1s\"\nuntagged_after = \"1s\"\n\
         [[retention.policies]]\nrepositories = \"up/**\"\nkeep_pulled_within = \"1h\"\n",
        up.url()
    ));
    // One image is pulled through; the other only synced (never pulled).
    let total = 100_000 + r#"{"architecture":"amd64","os":"linux","seed":1}"#.len();
    assert_eq!(pull(&client(), &b.url(""), "up/team/pulled", "1.0").await, Ok(total));
    let out = sync_command(&b).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(tags_of(&b, "up/team/synced").await, ["1.0"]);
    // The pull's record is written in the background.
    let deadline = Instant::now() + Duration::from_secs(30);
    while stored(&b.data_dir(), "_pulls").is_empty() {
        assert!(Instant::now() < deadline, "no pull record");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Past the collector's 1 s grace.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let gc = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["gc", "--config"])
        .arg(b.dir.path().join("berth.toml"))
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&gc.stdout);
    assert!(gc.status.success(), "{report}\n{}", String::from_utf8_lossy(&gc.stderr));
    assert!(report.contains("not pulled within"), "{report}");
    assert_eq!(tags_of(&b, "up/team/synced").await, Vec::<String>::new(), "{report}");
    assert_eq!(tags_of(&b, "up/team/pulled").await, ["1.0"], "{report}");
    for blob in &pulled_blobs {
        assert!(!stored(&b.data_dir(), blob.trim_start_matches("sha256:")).is_empty());
    }
    // Pulled again (its check is still within tag_ttl): fetched again.
    let m = client().get(b.url("/v2/up/team/synced/manifests/1.0")).header("accept", ACCEPT).send().await.unwrap();
    assert_eq!(m.status(), 200);
    assert_eq!(m.headers()["docker-content-digest"], synced.as_str());
    assert_eq!(tags_of(&b, "up/team/synced").await, ["1.0"]);

    // Its blobs were collected and not pulled again: scrub counts them as
    // not fetched yet, not as missing.
    let scrub = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["scrub", "--json", "--no-verify", "--config"])
        .arg(b.dir.path().join("berth.toml"))
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&scrub.stdout).unwrap();
    assert!(scrub.status.success(), "{report}");
    assert_eq!(report["missing"], serde_json::json!([]), "{report}");
    assert!(report["not_fetched"].as_u64().unwrap() >= 1, "{report}");
}

/// A Debian-like layer: os-release and a dpkg status with one package.
#[cfg(feature = "scan")]
fn debian_layer() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, body) in [
        ("etc/os-release", "ID=debian\nVERSION_ID=\"12\"\nPRETTY_NAME=\"Debian 12\"\n"),
        (
            "var/lib/dpkg/status",
            "Package: libssl3\nStatus: install ok installed\nArchitecture: amd64\nSource: openssl\nVersion: 3.0.11-1~deb12u1\n\n",
        ),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, path, body.as_bytes()).unwrap();
    }
    b.into_inner().unwrap()
}

/// Mirrored images are scanned as pushed ones are: queued when the mirror
/// stores them, inventoried once a pull has fetched their layers.
#[cfg(feature = "scan")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrored_images_are_scanned_once_pulled() {
    let up = Distribution::start("mirror", "Upstream-pw1");
    let auth = basic("mirror", "Upstream-pw1");
    let (digest, _) = push_image(&up.url(), &auth, "team/deb", "12", 4, &[debian_layer()]).await;
    let b = Berth::start(&format!(
        "[[mirror.upstreams]]\nname = \"dist\"\nprefix = \"up\"\nurl = \"{}\"\nusername = \"mirror\"\n\
         password = \"Upstream-pw1\"\n[scan]\nworkers = 1\n",
        up.url()
    ));
    let total = debian_layer().len() + r#"{"architecture":"amd64","os":"linux","seed":4}"#.len();
    assert_eq!(pull(&client(), &b.url(""), "up/team/deb", "12").await, Ok(total));
    // Queued by the mirror itself: the job finishes before anyone asks.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let metrics = client().get(b.url("/metrics")).send().await.unwrap().text().await.unwrap();
        if common::metric_value(&metrics, r#"berth_scan_jobs_total{outcome="ok"}"#) >= 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "no scan job ran: {metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let report = loop {
        let r = client().get(b.url(&format!("/v2/up/team/deb/_berth/scan/{digest}"))).send().await.unwrap();
        let status = r.status();
        let body = r.text().await.unwrap();
        if status == 200 {
            break serde_json::from_str::<serde_json::Value>(&body).unwrap();
        }
        assert_eq!(status, 202, "{body}");
        assert!(Instant::now() < deadline, "no report: {body}\n{}", b.stderr());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(report["os"]["id"], "debian", "{report}");
    assert!(report.to_string().contains("libssl3"), "{report}");
    assert!(!b.stderr().contains("scan: job failed"), "{}", b.stderr());
}

/// With shared state in Redis, one sync run per upstream at a time: a
/// second command while the first runs does nothing and exits 75.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sync_while_one_runs_is_refused_by_the_lease() {
    let redis = common::RedisServer::start();
    let up = Distribution::start("mirror", "Upstream-pw1");
    let auth = basic("mirror", "Upstream-pw1");
    for (i, tag) in ["1.0", "1.1", "1.2", "1.3"].into_iter().enumerate() {
        push_tagged(&up.url(), &auth, "team/big", tag, 20 + i as u8, 8 << 20).await;
    }
    let b = Berth::start(&format!(
        "[state]\nbackend = \"redis\"\n[state.redis]\nurl = \"{}\"\n[scan]\nworkers = 1\n\
         [[mirror.upstreams]]\nname = \"dist\"\nprefix = \"up\"\nurl = \"{}\"\nusername = \"mirror\"\n\
         password = \"Upstream-pw1\"\nsync = {{ repositories = [\"team/big\"] }}\n",
        redis.url(),
        up.url()
    ));
    let mut first = Running(sync_command(&b).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap());
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(first.0.stdout.take().unwrap()));
    let line = lines.next().expect("a progress line").unwrap();
    assert!(line.contains("(1/4)"), "{line}");
    // Held still mid-run (its lease lives 30 s unrenewed) while a second
    // run tries, then let go.
    let pid = first.0.id().to_string();
    assert!(Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
    let second = sync_command(&b).output().unwrap();
    assert!(Command::new("kill").args(["-CONT", &pid]).status().unwrap().success());
    let rest: Vec<String> = lines.map(Result::unwrap).collect();
    assert!(first.0.wait().unwrap().success(), "{rest:?}");
    assert_eq!(second.status.code(), Some(75), "{}", String::from_utf8_lossy(&second.stderr));
    assert!(String::from_utf8_lossy(&second.stderr).contains("holds the lease"));
    // The lease was released: a run now goes ahead (everything current).
    let third = sync_command(&b).output().unwrap();
    assert!(third.status.success());
    assert!(String::from_utf8_lossy(&third.stdout).contains("4 current"), "{}", String::from_utf8_lossy(&third.stdout));
    // What the commands copied was queued (in Redis) for the replica's
    // scanner, as a push is: its four jobs run with no one asking.
    #[cfg(feature = "scan")]
    {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let metrics = client().get(b.url("/metrics")).send().await.unwrap().text().await.unwrap();
            if common::metric_value(&metrics, r#"berth_scan_jobs_total{outcome="ok"}"#) >= 4.0 {
                break;
            }
            assert!(Instant::now() < deadline, "the synced images were not scanned: {metrics}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A hung upstream (accepting connections, never answering): while one pull
/// checks an expired tag with it, the others are served the copy here at
/// once instead of queueing behind that check; the checking pull itself is
/// served stale after the response timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_do_not_queue_behind_a_check_of_a_hung_upstream() {
    let up = Distribution::start("mirror", "Upstream-pw1");
    let auth = basic("mirror", "Upstream-pw1");
    let (digest, _, _) = push(&up.url(), &auth, "team/base", "1.0", 0).await;
    let b = Berth::start(&format!(
        "[[mirror.upstreams]]\nname = \"dist\"\nprefix = \"up\"\nurl = \"{}\"\nusername = \"mirror\"\n\
         password = \"Upstream-pw1\"\ntag_ttl = \"1s\"\nresponse_timeout = \"2s\"\nfill_wait = \"3s\"\n",
        up.url()
    ));
    let url = b.url("/v2/up/team/base/manifests/1.0");
    let get = move || {
        let url = url.clone();
        async move {
            let r = client().get(url).header("accept", ACCEPT).send().await.unwrap();
            (r.status(), r.headers().get("docker-content-digest").cloned(), r.headers().contains_key("warning"))
        }
    };
    assert_eq!(get().await.0, 200);
    // Past the tag's TTL, with the upstream hung.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    up.hang(true);
    let pulls: Vec<_> = (0..10).map(|_| tokio::spawn(get.clone()())).collect();
    let mut warned = 0;
    for p in pulls {
        let (status, d, warning) = p.await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(d.unwrap(), digest.as_str());
        warned += usize::from(warning);
    }
    up.hang(false);
    // The pull that asked the upstream learned it was not answering.
    assert!(warned >= 1, "no stale answer");
}

/// The same herd on a fleet with blob caches and the mesh (`delivery =
/// "cache"`): the pulls that wait for the fill are served through the
/// caches, and the upstream still sees one GET per object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_herd_on_a_mesh_fleet_costs_the_upstream_one_get_per_object() {
    let up = Distribution::start("mirror", "Upstream-pw1");
    let auth = basic("mirror", "Upstream-pw1");
    let layers = vec![common::bytes(4 << 20, 11), common::bytes(1 << 20, 12)];
    let total: usize =
        layers.iter().map(Vec::len).sum::<usize>() + r#"{"architecture":"amd64","os":"linux","seed":7}"#.len();
    let (manifest_digest, blobs) = push_image(&up.url(), &auth, "team/meshed", "2.0", 7, &layers).await;
    let before = up.served().len();
    let upstreams = format!(
        r#"[{{name = "dist", prefix = "up", url = "{}", username = "mirror", password = "Upstream-pw1"}}]"#,
        up.url()
    );
    let fleet = common::LocalFleet::up_with(3, &["--mesh"], &[("BERTH__MIRROR__UPSTREAMS", upstreams.as_str())]);
    herd(fleet.lb(), "up/team/meshed", "2.0", 30, total).await;
    // Once more, now from the caches.
    herd(fleet.lb(), "up/team/meshed", "2.0", 30, total).await;
    fleet.assert_no_server_errors();
    let mut served_by_caches = 0.0;
    for n in 1..=3 {
        let metrics = client().get(format!("{}/metrics", fleet.replica(n))).send().await.unwrap().text().await.unwrap();
        served_by_caches += common::metric_value(&metrics, "berth_blob_cache_requests_total");
    }
    assert!(served_by_caches >= 90.0, "{served_by_caches} blob GETs through the caches");
    let counts = per_object(&up.served()[before..], "team/meshed");
    let gets = |path: &str| counts.get(&("GET".to_owned(), path.to_owned())).copied().unwrap_or(0);
    assert_eq!(gets(&format!("/v2/team/meshed/manifests/{manifest_digest}")), 1, "{counts:#?}");
    for blob in &blobs {
        assert_eq!(gets(&format!("/v2/team/meshed/blobs/{blob}")), 1, "{blob}: {counts:#?}");
    }
}

/// A root upstream (`prefix = ""`), as Docker's `registry-mirrors` uses a
/// mirror: names arrive unprefixed (`library/alpine`); a prefixed upstream
/// beside it keeps its own names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_upstream_serves_unprefixed_names() {
    let up = Distribution::start("mirror", "Upstream-pw1");
    let other = Distribution::start("other", "Other-pw1");
    let auth = basic("mirror", "Upstream-pw1");
    let (digest, _, layer) = push(&up.url(), &auth, "library/base", "3.21", 1).await;
    let (other_digest, _, _) = push(&other.url(), &basic("other", "Other-pw1"), "team/tool", "1", 2).await;
    // The root upstream also has a repository under the other upstream's
    // prefix: its sync must leave that name to the other upstream.
    // (Under the other upstream's remote name too, so a sync that took the
    // name would copy the root's image over the other's.)
    push(&up.url(), &auth, "other/team/tool", "1", 3).await;
    push(&up.url(), &auth, "team/tool", "1", 4).await;
    let b = Berth::start(&format!(
        "[[mirror.upstreams]]\nname = \"hub\"\nprefix = \"\"\nurl = \"{}\"\nusername = \"mirror\"\npassword = \"Upstream-pw1\"\n\
         [mirror.upstreams.sync]\nrepositories = [\"**\"]\n\
         [[mirror.upstreams]]\nname = \"other\"\nprefix = \"other\"\nurl = \"{}\"\nusername = \"other\"\npassword = \"Other-pw1\"\n",
        up.url(),
        other.url()
    ));
    let c = client();
    let config = r#"{"architecture":"amd64","os":"linux","seed":1}"#;
    assert_eq!(pull(&c, &b.url(""), "library/base", "3.21").await, Ok(layer.len() + config.len()));
    let m =
        c.get(b.url(&format!("/v2/library/base/manifests/{digest}"))).header("accept", ACCEPT).send().await.unwrap();
    assert_eq!(m.status(), 200);
    let m = c.get(b.url("/v2/other/team/tool/manifests/1")).header("accept", ACCEPT).send().await.unwrap();
    assert_eq!(m.headers()["docker-content-digest"], other_digest.as_str());
    // The whole namespace is the mirror's: no pushes.
    assert_eq!(c.post(b.url("/v2/team/mine/blobs/uploads/")).send().await.unwrap().status(), 403);
    // Unknown upstream names are unknown here too.
    let missing = c.get(b.url("/v2/library/nothing/manifests/1")).header("accept", ACCEPT).send().await.unwrap();
    assert_eq!(missing.status(), 404);

    // The root upstream's sync copies its own repository and skips the
    // one under the other upstream's prefix, saying so.
    let out = sync_command(&b).args(["--upstream", "hub", "--json"]).output().unwrap();
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    let errors = report[0]["errors"].to_string();
    assert!(errors.contains("other/team/tool belongs to upstream other"), "{report}");
    assert_eq!(report[0]["repositories"], 2, "library/base and team/tool are the root upstream's: {report}");
    assert_eq!(report[0]["tags_failed"], 0, "{report}");
    let m = c.get(b.url("/v2/other/team/tool/manifests/1")).header("accept", ACCEPT).send().await.unwrap();
    assert_eq!(m.headers()["docker-content-digest"], other_digest.as_str());
}

/// Access control applies to mirrored repositories like any other: who
/// may not read gets 401/403 and causes no upstream request; a reader's
/// pull fills with the mirror's authority but the reader cannot push; a
/// writer may push only where the upstream's `allow_push` says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_control_applies_to_mirrored_repositories() {
    let up = Distribution::start("mirror", "Upstream-pw1");
    let (digest, _, layer) = push(&up.url(), &basic("mirror", "Upstream-pw1"), "team/base", "1.0", 3).await;
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("users");
    std::fs::write(
        &htpasswd,
        format!("{}\n{}\n", common::user_hash("reader", "Reader-pw1"), common::user_hash("writer", "Writer-pw1")),
    )
    .unwrap();
    let b = Berth::start(&format!(
        "[auth]\nhtpasswd = {:?}\n\
         [access]\ndefault_policy = []\nanonymous_policy = []\n\
         [[access.repositories]]\npattern = \"up/**\"\n\
         policies = [{{ users = [\"reader\"], actions = [\"read\"] }}, {{ users = [\"writer\"], actions = [\"read\", \"create\", \"update\"] }}]\n\
         [[access.repositories]]\npattern = \"locked/**\"\n\
         policies = [{{ users = [\"writer\"], actions = [\"read\", \"create\", \"update\"] }}]\n\
         [[mirror.upstreams]]\nname = \"open\"\nprefix = \"up\"\nurl = \"{}\"\nusername = \"mirror\"\npassword = \"Upstream-pw1\"\nallow_push = true\n\
         [[mirror.upstreams]]\nname = \"locked\"\nprefix = \"locked\"\nurl = \"{}\"\nusername = \"mirror\"\npassword = \"Upstream-pw1\"\n",
        htpasswd.display().to_string(),
        up.url(),
        up.url()
    ));
    let c = client();
    let reader = basic("reader", "Reader-pw1");
    let writer = basic("writer", "Writer-pw1");
    let before = up.served().len();
    // Anonymous and a user without a grant: refused before the mirror is asked.
    let anon = c.get(b.url("/v2/up/team/base/manifests/1.0")).header("accept", ACCEPT).send().await.unwrap();
    assert_eq!(anon.status(), 401);
    let stranger = c
        .get(b.url("/v2/locked/team/base/manifests/1.0"))
        .header("accept", ACCEPT)
        .header("authorization", &reader)
        .send()
        .await
        .unwrap();
    assert_eq!(stranger.status(), 403);
    let blob = c.get(b.url(&format!("/v2/up/team/base/blobs/{}", sha256(&layer)))).send().await.unwrap();
    assert_eq!(blob.status(), 401);
    assert_eq!(up.served().len(), before, "a refused caller made the mirror ask the upstream");
    // The reader's pull fills (the mirror writes, not the reader).
    let m = c
        .get(b.url("/v2/up/team/base/manifests/1.0"))
        .header("accept", ACCEPT)
        .header("authorization", &reader)
        .send()
        .await
        .unwrap();
    assert_eq!(m.status(), 200);
    assert_eq!(m.headers()["docker-content-digest"], digest.as_str());
    // Pushes: the reader never; the writer where allow_push is set only.
    let push_as = |who: &str, repo: &str| {
        c.post(b.url(&format!("/v2/{repo}/blobs/uploads/"))).header("authorization", who.to_owned()).send()
    };
    assert_eq!(push_as(&reader, "up/team/base").await.unwrap().status(), 403);
    assert_eq!(push_as(&writer, "up/team/mine").await.unwrap().status(), 202);
    assert_eq!(push_as(&writer, "locked/team/mine").await.unwrap().status(), 403);
}
