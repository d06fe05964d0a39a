//! The fleet shape end to end: `scripts/fleet up` starts an S3-compatible
//! server (moto), Redis, replicas of the real binary and haproxy
//! round-robin in front, all on loopback ephemeral ports. Real clients go
//! through the load balancer; faults are injected with `scripts/fleet`
//! (kill -9 of a replica, Redis restarted empty, S3 hung by SIGSTOP).

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use common::{bytes, client, push_blob, sha256, LocalFleet};
use futures::StreamExt;

const MIB: usize = 1024 * 1024;
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A one-layer image; `salt` makes each manifest distinct.
async fn push_image(base: &str, repo: &str, tag: &str, layer: &[u8], salt: &str) -> String {
    let config = format!("{{\"architecture\":\"amd64\",\"os\":\"linux\",\"salt\":\"{salt}\"}}");
    let config_digest = push_blob(base, repo, config.as_bytes()).await;
    let layer_digest = push_blob(base, repo, layer).await;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer.len()}],
        "annotations": {"salt": salt}
    })
    .to_string();
    let resp = client()
        .put(format!("{base}/v2/{repo}/manifests/{tag}"))
        .header("content-type", OCI_MANIFEST)
        .body(manifest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "push manifest: {}", resp.text().await.unwrap());
    sha256(manifest.as_bytes())
}

async fn get_blob(base: &str, repo: &str, digest: &str) -> reqwest::Response {
    client().get(format!("{base}/v2/{repo}/blobs/{digest}")).send().await.unwrap()
}

async fn tag_digest(base: &str, repo: &str, tag: &str) -> String {
    let resp =
        client().get(format!("{base}/v2/{repo}/manifests/{tag}")).header("accept", OCI_MANIFEST).send().await.unwrap();
    assert_eq!(resp.status(), 200, "GET {repo}:{tag} on {base}");
    let header = resp.headers()["docker-content-digest"].to_str().unwrap().to_owned();
    let body = resp.bytes().await.unwrap();
    assert_eq!(sha256(&body), header, "manifest bytes do not match their digest");
    header
}

#[test]
fn real_clients_through_the_load_balancer() {
    let fleet = LocalFleet::up(3, &[]);
    let work = tempfile::tempdir().unwrap();
    let script = repo_root().join("tests/clients/skopeo-roundtrip.sh");
    let out = Command::new("bash").arg(script).arg(fleet.lb_hostport()).arg(work.path()).output().unwrap();
    assert!(out.status.success(), "skopeo through the fleet:\n{}", String::from_utf8_lossy(&out.stderr));
    let script = repo_root().join("tests/clients/oras_referrers.py");
    let out = Command::new(common::venv_python()).arg(script).arg(fleet.lb_hostport()).output().unwrap();
    assert!(out.status.success(), "oras through the fleet:\n{}", String::from_utf8_lossy(&out.stderr));
    // Round-robin spread the work: every replica served uploads.
    for n in 1..=3 {
        let log = std::fs::read_to_string(fleet.dir.path().join(format!("replica-{n}.log"))).unwrap();
        assert!(log.contains("/blobs/uploads/"), "replica {n} served no upload request");
    }
    fleet.assert_no_server_errors();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_upload_whose_patches_land_on_three_replicas() {
    let fleet = LocalFleet::up(3, &[]);
    let repo = "fleet/chunked";
    let data = bytes(11 * MIB + 777, 7);
    let digest = sha256(&data);
    let c = client();
    let start = c.post(format!("{}/v2/{repo}/blobs/uploads/", fleet.replica(1))).send().await.unwrap();
    assert_eq!(start.status(), 202);
    let location = start.headers()["location"].to_str().unwrap().to_owned();
    // Chunks below and above S3's 5 MiB part minimum, each on another replica.
    let cuts = [(0, 3 * MIB), (3 * MIB, 9 * MIB), (9 * MIB, 10 * MIB)];
    for (i, (from, to)) in cuts.iter().enumerate() {
        let resp = c
            .patch(format!("{}{location}", fleet.replica(i + 1)))
            .header("content-type", "application/octet-stream")
            .header("content-range", format!("{from}-{}", to - 1))
            .body(data[*from..*to].to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202, "PATCH on replica {}", i + 1);
        assert_eq!(resp.headers()["range"], format!("0-{}", to - 1).as_str());
    }
    // A stale offset on yet another replica is refused with where to go on.
    let stale = c
        .patch(format!("{}{location}", fleet.replica(2)))
        .header("content-range", "0-9")
        .body(vec![0u8; 10])
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), 416);
    let status = c.get(format!("{}{location}", fleet.replica(3))).send().await.unwrap();
    assert_eq!(status.status(), 204);
    assert_eq!(status.headers()["range"], format!("0-{}", 10 * MIB - 1).as_str());
    let sep = if location.contains('?') { '&' } else { '?' };
    let done = c
        .put(format!("{}{location}{sep}digest={digest}", fleet.replica(1)))
        .header("content-type", "application/octet-stream")
        .body(data[10 * MIB..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 201, "{}", done.text().await.unwrap());
    for n in 1..=3 {
        let got = get_blob(fleet.replica(n), repo, &digest).await;
        assert_eq!(got.status(), 200);
        assert_eq!(sha256(&got.bytes().await.unwrap()), digest, "replica {n} serves other bytes");
    }
    fleet.assert_no_server_errors();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_killed_mid_push_then_the_retry_completes() {
    let fleet = LocalFleet::up(3, &[]);
    let repo = "fleet/killed";
    let layers: Vec<Vec<u8>> = (0..3).map(|i| bytes(12 * MIB + i, 100 + i as u64)).collect();
    let first = push_blob(fleet.lb(), repo, &layers[0]).await;

    // Layer 2 streams to replica 2, which is killed after 4 MiB have gone.
    let victim = layers[1].clone();
    let digest = sha256(&victim);
    let (reached_tx, reached_rx) = tokio::sync::oneshot::channel::<()>();
    let (killed_tx, killed_rx) = tokio::sync::oneshot::channel::<()>();
    let mut signals = Some((reached_tx, killed_rx));
    let chunks: Vec<Bytes> = victim.chunks(MIB).map(Bytes::copy_from_slice).collect();
    let body = futures::stream::iter(chunks.into_iter().enumerate())
        .then(move |(i, chunk)| {
            let signal = if i == 4 { signals.take() } else { None };
            async move {
                if let Some((reached, killed)) = signal {
                    let _ = reached.send(());
                    let _ = killed.await;
                }
                Ok::<_, std::io::Error>(chunk)
            }
        })
        .boxed();
    let url = format!("{}/v2/{repo}/blobs/uploads/?digest={digest}", fleet.replica(2));
    let push = tokio::spawn(async move { client().post(url).body(reqwest::Body::wrap_stream(body)).send().await });
    reached_rx.await.unwrap();
    fleet.run(&["kill", "2"]);
    // The body may be gone already, dropped with the dead connection.
    let _ = killed_tx.send(());
    // Usually the connection dies with the replica; an answer, if any, is a failure.
    if let Ok(resp) = push.await.unwrap() {
        assert!(!resp.status().is_success(), "a push to a killed replica cannot succeed");
    }
    // Nothing half-written is visible.
    assert_eq!(get_blob(fleet.lb(), repo, &digest).await.status(), 404);

    // The client goes on through the load balancer and retries the layer.
    let third = push_blob(fleet.lb(), repo, &layers[2]).await;
    assert_eq!(push_blob(fleet.lb(), repo, &victim).await, digest);
    for (d, data) in [(&first, &layers[0]), (&digest, &layers[1]), (&third, &layers[2])] {
        for base in [fleet.lb(), fleet.replica(1), fleet.replica(3)] {
            let got = get_blob(base, repo, d).await;
            assert_eq!(got.status(), 200);
            assert!(got.bytes().await.unwrap()[..] == data[..], "corrupt blob {d} from {base}");
        }
    }
    // The killed replica comes back on its address and serves the same content.
    fleet.run(&["start", "2"]);
    assert_eq!(sha256(&get_blob(fleet.replica(2), repo, &digest).await.bytes().await.unwrap()), digest);
    fleet.assert_no_server_errors();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_leaves_every_committed_image_pullable() {
    let fleet = LocalFleet::up(3, &[]);
    let repo = "fleet/redis";
    let mut pushed = Vec::new();
    for i in 0..3 {
        let layer = bytes(2 * MIB + i, 300 + i as u64);
        let manifest = push_image(fleet.lb(), repo, &format!("v{i}"), &layer, &format!("r{i}")).await;
        pushed.push((format!("v{i}"), manifest, layer));
    }
    fleet.run(&["restart-redis"]);
    // Redis came back empty: every committed image is still there, on every replica.
    for (tag, manifest, layer) in &pushed {
        for n in 1..=3 {
            assert_eq!(&tag_digest(fleet.replica(n), repo, tag).await, manifest);
            let blob = get_blob(fleet.replica(n), repo, &sha256(layer)).await;
            assert_eq!(blob.status(), 200);
            assert!(blob.bytes().await.unwrap()[..] == layer[..]);
        }
    }
    // Uploads work again once the replicas have reconnected (bounded wait).
    let layer = bytes(MIB, 399);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let digest = sha256(&layer);
        let resp = client()
            .post(format!("{}/v2/{repo}/blobs/uploads/?digest={digest}", fleet.lb()))
            .body(layer.clone())
            .send()
            .await
            .unwrap();
        if resp.status() == 201 {
            break;
        }
        assert_eq!(resp.status(), 503, "only 'unavailable' is acceptable while Redis reconnects");
        assert!(tokio::time::Instant::now() < deadline, "uploads did not recover after the Redis restart");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    fleet.assert_no_server_errors();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_hung_fails_readiness_answers_503_and_recovers() {
    let fleet =
        LocalFleet::up(2, &[("BERTH__STORAGE__S3__REQUEST_TIMEOUT", "1s"), ("BERTH__STORAGE__S3__MAX_ATTEMPTS", "1")]);
    let repo = "fleet/s3down";
    let layer = bytes(MIB, 500);
    let digest = push_blob(fleet.lb(), repo, &layer).await;
    let c = client();
    fleet.run(&["pause-s3"]);
    // (A failed check leaves S3 paused; the fleet guard kills it regardless.)
    {
        for n in 1..=2 {
            let ready = c.get(format!("{}/readyz", fleet.replica(n))).send().await.unwrap();
            assert_eq!(ready.status(), 503, "replica {n} ready with S3 hung");
        }
        let resp = get_blob(fleet.lb(), repo, &digest).await;
        assert_eq!(resp.status(), 503);
        assert!(resp.headers().contains_key("retry-after"));
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["errors"][0]["code"], "UNAVAILABLE");
        let resp = c
            .post(format!("{}/v2/{repo}/blobs/uploads/?digest={}", fleet.lb(), sha256(b"new")))
            .body("new")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 503);
    }
    fleet.run(&["resume-s3"]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    for n in 1..=2 {
        loop {
            let ready = c.get(format!("{}/readyz", fleet.replica(n))).send().await.unwrap();
            if ready.status() == 200 {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "replica {n} never became ready again");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let got = get_blob(fleet.lb(), repo, &digest).await;
    assert_eq!(got.status(), 200);
    assert!(got.bytes().await.unwrap()[..] == layer[..]);
    assert_eq!(push_blob(fleet.lb(), repo, b"new").await, sha256(b"new"));
    fleet.assert_no_server_errors();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pushes_of_one_tag_leave_it_consistent() {
    let fleet = LocalFleet::up(3, &[("BERTH__CACHE__TAG_TTL", "1s")]);
    let repo = "fleet/race";
    let layer = bytes(64 * 1024, 600);
    let writers = (1..=2).map(|n| {
        let base = fleet.replica(n).to_owned();
        let layer = layer.clone();
        tokio::spawn(async move {
            let mut digests = Vec::new();
            for round in 0..8 {
                digests.push(push_image(&base, repo, "latest", &layer, &format!("w{n}-{round}")).await);
            }
            digests
        })
    });
    let mut pushed = BTreeSet::new();
    for w in writers {
        pushed.extend(w.await.unwrap());
    }
    // Every replica converges on one of the pushed manifests: at once through
    // the invalidations, at the latest after tag_ttl.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let agreed = loop {
        let mut seen = BTreeSet::new();
        for n in 1..=3 {
            seen.insert(tag_digest(fleet.replica(n), repo, "latest").await);
        }
        if seen.len() == 1 {
            break seen.into_iter().next().unwrap();
        }
        assert!(tokio::time::Instant::now() < deadline, "replicas disagree on the tag: {seen:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(pushed.contains(&agreed), "the tag points at {agreed}, which nobody pushed");
    let tags: serde_json::Value =
        client().get(format!("{}/v2/{repo}/tags/list", fleet.lb())).send().await.unwrap().json().await.unwrap();
    assert_eq!(tags["tags"], serde_json::json!(["latest"]));
    fleet.assert_no_server_errors();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_delivery_hands_out_presigned_urls_after_authorization() {
    let fleet = LocalFleet::up(1, &[("BERTH__STORAGE__DELIVERY", "redirect"), ("BERTH__STORAGE__REDIRECT_TTL", "30s")]);
    let repo = "fleet/redirect";
    let layer = bytes(3 * MIB, 700);
    let digest = push_blob(fleet.lb(), repo, &layer).await;
    let resp = get_blob(fleet.lb(), repo, &digest).await;
    assert_eq!(resp.status(), 307);
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with(fleet.var("s3_endpoint")), "{location}");
    assert!(location.contains("X-Amz-Expires=30"), "{location}");
    assert_eq!(resp.headers()["docker-content-digest"], digest.as_str());
    let direct = client().get(&location).send().await.unwrap();
    assert_eq!(direct.status(), 200);
    assert_eq!(sha256(&direct.bytes().await.unwrap()), digest);
    // HEAD is answered by the registry itself.
    let head = client().head(format!("{}/v2/{repo}/blobs/{digest}", fleet.lb())).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["content-length"], layer.len().to_string().as_str());
    // No URL for a blob not linked into the repository, even if it exists elsewhere.
    let other = get_blob(fleet.lb(), "fleet/other", &digest).await;
    assert_eq!(other.status(), 404);
    assert!(!other.headers().contains_key("location"));
    fleet.assert_no_server_errors();
}

async fn token_for(base: &str, user: &str, pw: &str) -> String {
    let resp = client()
        .get(format!("{base}/v2/token?service=berth&scope=repository:fleet/rev:pull,push"))
        .header("authorization", common::basic(user, pw))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    body["token"].as_str().unwrap().to_owned()
}

async fn status_with(base: &str, token: &str) -> u16 {
    client()
        .get(format!("{base}/v2/"))
        .header("authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Poll every replica until each refuses `token`; returns the slowest time.
/// How soon every replica must refuse a revoked token. The replicas re-read
/// the revocations only every 30 s (`auth.revocation_reload`); well within
/// that, only the announcement on the revocation channel can have done it.
/// The measured lag is printed (tens of milliseconds on this machine); the
/// bound leaves room for a busy one.
const ANNOUNCED: Duration = Duration::from_secs(5);

async fn refused_everywhere(fleet: &LocalFleet, replicas: usize, token: &str) -> Duration {
    let started = tokio::time::Instant::now();
    let mut slowest = Duration::ZERO;
    for n in 1..=replicas {
        while status_with(fleet.replica(n), token).await != 401 {
            assert!(started.elapsed() < Duration::from_secs(10), "replica {n} still accepts a revoked token");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        slowest = slowest.max(started.elapsed());
    }
    slowest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_refused_by_every_replica_through_the_announcement() {
    let dir = tempfile::tempdir().unwrap();
    let key = common::token_key(&dir.path().join("token.pem"), common::KeyKind::P256);
    let users = dir.path().join("users");
    std::fs::write(
        &users,
        format!("{}\n{}\n", common::user_hash("alice", "alice-pw"), common::user_hash("root", "root-pw")),
    )
    .unwrap();
    let (users_s, key_s) = (users.display().to_string(), key.display().to_string());
    let fleet = LocalFleet::up(
        3,
        &[
            ("BERTH__AUTH__HTPASSWD", &users_s),
            ("BERTH__AUTH__TOKEN__KEY_FILE", &key_s),
            ("BERTH__AUTH__ADMINS", "[\"root\"]"),
        ],
    );
    let token = token_for(fleet.replica(1), "alice", "alice-pw").await;
    for n in 1..=3 {
        assert_eq!(status_with(fleet.replica(n), &token).await, 200, "replica {n}");
    }
    let jti = {
        use base64::Engine as _;
        let claims = token.split('.').nth(1).unwrap();
        let claims: serde_json::Value =
            serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(claims).unwrap()).unwrap();
        claims["jti"].as_str().unwrap().to_owned()
    };
    let revoke = |auth: Option<String>, body: serde_json::Value| {
        let mut req = client().post(format!("{}/admin/revocations", fleet.replica(1))).json(&body);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        req.send()
    };
    // Only admins may revoke.
    assert_eq!(revoke(None, serde_json::json!({"jti": jti})).await.unwrap().status(), 401);
    assert_eq!(
        revoke(Some(common::basic("alice", "alice-pw")), serde_json::json!({"jti": jti})).await.unwrap().status(),
        403
    );
    assert_eq!(
        revoke(Some(common::basic("root", "root-pw")), serde_json::json!({"jti": "../x"})).await.unwrap().status(),
        400
    );
    assert_eq!(
        revoke(Some(common::basic("root", "root-pw")), serde_json::json!({"nope": 1})).await.unwrap().status(),
        400
    );

    let resp = revoke(Some(common::basic("root", "root-pw")), serde_json::json!({"jti": jti})).await.unwrap();
    assert_eq!(resp.status(), 201);
    let slowest = refused_everywhere(&fleet, 3, &token).await;
    println!("jti revocation refused by all 3 replicas after {slowest:?}");
    assert!(slowest < ANNOUNCED, "a revocation took {slowest:?} to reach every replica");
    // Another token of the same user is unaffected.
    let other = token_for(fleet.replica(2), "alice", "alice-pw").await;
    assert_eq!(status_with(fleet.replica(3), &other).await, 200);

    // Every token of a subject, revoked from the command line.
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["token", "revoke", "--config"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/fleet.toml"))
        .args(["--subject", "alice"])
        .env("BERTH__STORAGE__S3__ENDPOINT", fleet.var("s3_endpoint"))
        .env("BERTH__STORAGE__S3__BUCKET", fleet.var("s3_bucket"))
        .env("BERTH__STATE__REDIS__URL", fleet.var("redis_url"))
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "testsecret")
        .output()
        .unwrap();
    assert!(out.status.success(), "berth token revoke: {}", String::from_utf8_lossy(&out.stderr));
    let slowest = refused_everywhere(&fleet, 3, &other).await;
    println!("subject revocation (CLI) refused by all 3 replicas after {slowest:?}");
    assert!(slowest < ANNOUNCED, "a subject revocation took {slowest:?}");

    // Revocations are durable: a replica started afterwards knows them.
    fleet.run(&["kill", "3"]);
    fleet.run(&["start", "3"]);
    assert_eq!(status_with(fleet.replica(3), &token).await, 401);
    assert_eq!(status_with(fleet.replica(3), &other).await, 401);
    fleet.assert_no_server_errors();
}
