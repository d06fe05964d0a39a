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
}

impl Distribution {
    fn start(user: &str, password: &str) -> Distribution {
        let dir = tempfile::tempdir().unwrap();
        let line = Command::new("htpasswd").args(["-Bbn", user, password]).output().expect("htpasswd (apache2-utils)");
        std::fs::write(dir.path().join("htpasswd"), &line.stdout).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut d = Distribution { child: None, port, dir };
        d.run();
        d
    }

    fn run(&mut self) {
        let config = format!(
            "version: 0.1\nlog: {{level: info}}\n\
             storage: {{filesystem: {{rootdirectory: {}}}}}\n\
             http: {{addr: 127.0.0.1:{}}}\n\
             auth: {{htpasswd: {{realm: upstream, path: {}}}}}\n",
            self.dir.path().join("data").display(),
            self.port,
            self.dir.path().join("htpasswd").display()
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
}

impl Drop for Distribution {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Push one image (config + one layer) tagged `tag` with Basic auth.
async fn push(base: &str, auth: &str, repo: &str, tag: &str, seed: u8) -> (String, String, Vec<u8>) {
    let http = client();
    let layer: Vec<u8> = (0..400_000u32).map(|i| ((i % 251) as u8) ^ seed).collect();
    let config = format!(r#"{{"architecture":"amd64","os":"linux","seed":{seed}}}"#).into_bytes();
    for data in [&layer, &config] {
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
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha256(&layer), "size": layer.len()}],
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
    (sha256(manifest.as_bytes()), sha256(&layer), layer)
}

const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_through_from_distribution_and_serves_stale_when_it_is_gone() {
    let mut up = Distribution::start("mirror", "Upstream-pw1");
    let auth = basic("mirror", "Upstream-pw1");
    let (manifest_digest, layer_digest, layer) = push(&up.url(), &auth, "team/base", "1.0", 0).await;
    let b = Berth::start(&format!(
        "[[mirror.upstreams]]\nname = \"dist\"\nprefix = \"up\"\nurl = \"{}\"\nusername = \"mirror\"\npassword = \"Upstream-pw1\"\ntag_ttl = \"2s\"\n",
        up.url()
    ));
    let c = client();
    let m = c.get(b.url("/v2/up/team/base/manifests/1.0")).header("accept", ACCEPT).send().await.unwrap();
    assert_eq!(m.status(), 200);
    assert_eq!(m.headers()["docker-content-digest"], manifest_digest.as_str());
    let blob = c.get(b.url(&format!("/v2/up/team/base/blobs/{layer_digest}"))).send().await.unwrap();
    assert_eq!(blob.status(), 200);
    assert_eq!(blob.bytes().await.unwrap().to_vec(), layer);
    // The blob lands (the fill finishes after the response).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let head = c.head(b.url(&format!("/v2/up/team/base/blobs/{layer_digest}"))).send().await.unwrap();
        if head.status() == 200 {
            break;
        }
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
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let stale = c.get(b.url("/v2/up/team/base/manifests/1.0")).header("accept", ACCEPT).send().await.unwrap();
    assert_eq!(stale.status(), 200);
    assert!(stale.headers().get("warning").is_some(), "{:?}", stale.headers());
    let blob = c.get(b.url(&format!("/v2/up/team/base/blobs/{layer_digest}"))).send().await.unwrap();
    assert_eq!(blob.bytes().await.unwrap().len(), layer.len());
    // Something never fetched: a clear error, not a 500.
    let missing = c.get(b.url("/v2/up/team/other/manifests/1.0")).header("accept", ACCEPT).send().await.unwrap();
    assert_eq!(missing.status(), 503, "{}", missing.text().await.unwrap());

    // What the mirror did is counted.
    let metrics = c.get(b.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let value = |series: &str| common::metric_value(&metrics, series);
    assert!(value(r#"berth_mirror_upstream_requests_total{outcome="ok"}"#) >= 3.0, "{metrics}");
    assert!(value(r#"berth_mirror_upstream_requests_total{outcome="unavailable"}"#) >= 2.0, "{metrics}");
    assert!(value("berth_mirror_stale_serves_total") >= 1.0, "{metrics}");
    assert!(value("berth_mirror_fetched_bytes_total") >= layer.len() as f64, "{metrics}");

    // Upstream back, tag moved: seen after the TTL.
    up.run();
    let (moved, _, _) = push(&up.url(), &auth, "team/base", "1.0", 9).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = c.get(b.url("/v2/up/team/base/manifests/1.0")).header("accept", ACCEPT).send().await.unwrap();
        if m.headers()["docker-content-digest"] == moved.as_str() {
            break;
        }
        assert!(Instant::now() < deadline, "the moved tag was never seen");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
