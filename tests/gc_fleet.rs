//! Garbage collection under load on a fleet (moto, Redis, three replicas,
//! haproxy from scripts/fleet): writers push images that share layers
//! across repositories, mount, move and delete tags through the load
//! balancer for at least 60 s, while the replicas run a collection pass
//! every second with a 5 s grace period and untagged manifests deleted at
//! once, and writers keep pushing images made of layers and configs of
//! images whose tags moved away (so what they push is often what a pass is
//! collecting). Writers behave as clients do: a refused manifest means
//! uploading the blobs again, a 503 means retrying later, with backoff.
//! Afterwards every tag pulls completely through the load balancer with
//! verified digests, and a dry run finds nothing left to collect.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{client, sha256, LocalFleet};

const OCI: &str = "application/vnd.oci.image.manifest.v1+json";
const REPOS: [&str; 3] = ["farm/a", "farm/b", "farm/c"];
const RUN_FOR: Duration = Duration::from_secs(65);

#[derive(Clone)]
struct Pushed {
    manifest: String,
    blobs: Vec<(String, Vec<u8>)>,
}

async fn send(req: reqwest::RequestBuilder) -> (u16, String, Option<u64>) {
    match req.send().await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let retry = resp.headers().get("retry-after").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
            let body = resp.text().await.unwrap_or_default();
            (status, body, retry)
        }
        Err(e) => (0, e.to_string(), None),
    }
}

/// Backoff between retries, as clients do: 100 ms doubling to 2 s.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(100 << attempt.min(4)).min(Duration::from_secs(2))
}

/// How long a client keeps retrying one operation.
const GIVE_UP: Duration = Duration::from_secs(60);

async fn upload(lb: &str, repo: &str, data: &[u8]) -> Result<(), String> {
    let d = sha256(data);
    let start = Instant::now();
    for attempt in 0.. {
        if start.elapsed() > GIVE_UP {
            break;
        }
        let (status, body, retry) = send(
            client()
                .post(format!("{lb}/v2/{repo}/blobs/uploads/?digest={d}"))
                .header("content-type", "application/octet-stream")
                .body(data.to_vec()),
        )
        .await;
        match status {
            201 => return Ok(()),
            // Collected while completing (BLOB_UPLOAD_UNKNOWN) or busy: again.
            404 | 503 => tokio::time::sleep(Duration::from_secs(retry.unwrap_or(0)).max(backoff(attempt))).await,
            _ => return Err(format!("upload to {repo}: {status} {body}")),
        }
    }
    Err(format!("upload to {repo} kept failing"))
}

async fn mount(lb: &str, repo: &str, from: &str, digest: &str) -> Result<bool, String> {
    let (status, body, _) =
        send(client().post(format!("{lb}/v2/{repo}/blobs/uploads/?mount={digest}&from={from}"))).await;
    match status {
        201 => Ok(true),
        202 => Ok(false),
        _ => Err(format!("mount into {repo}: {status} {body}")),
    }
}

/// Push an image the way a client does, retrying what the registry refuses.
async fn push(
    lb: &str,
    repo: &str,
    tag: &str,
    blobs: &[(String, Vec<u8>)],
    stats: &Mutex<HashMap<&'static str, u64>>,
) -> Result<String, String> {
    let config = &blobs[0].1;
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(config), "size": config.len()},
        "layers": blobs[1..].iter().map(|(_, b)| serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha256(b), "size": b.len()
        })).collect::<Vec<_>>(),
    })
    .to_string();
    let start = Instant::now();
    for attempt in 0.. {
        if start.elapsed() > GIVE_UP {
            break;
        }
        for (_, b) in blobs {
            upload(lb, repo, b).await?;
        }
        let (status, body, retry) = send(
            client().put(format!("{lb}/v2/{repo}/manifests/{tag}")).header("content-type", OCI).body(manifest.clone()),
        )
        .await;
        match status {
            201 => return Ok(sha256(manifest.as_bytes())),
            400 if body.contains("MANIFEST_BLOB_UNKNOWN") => {
                *stats.lock().unwrap().entry("manifest_blob_unknown").or_default() += 1;
                tokio::time::sleep(backoff(attempt)).await;
            }
            503 => {
                *stats.lock().unwrap().entry("unavailable").or_default() += 1;
                tokio::time::sleep(Duration::from_secs(retry.unwrap_or(1))).await;
            }
            _ => return Err(format!("manifest {repo}:{tag}: {status} {body}")),
        }
    }
    Err(format!("manifest {repo}:{tag} kept being refused"))
}

async fn pull_verified(lb: &str, repo: &str, tag: &str, want: &Pushed) -> Result<(), String> {
    let resp = client()
        .get(format!("{lb}/v2/{repo}/manifests/{tag}"))
        .header("accept", OCI)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if resp.status() != 200 {
        return Err(format!("{repo}:{tag}: manifest {}", resp.status()));
    }
    let bytes = resp.bytes().await.map_err(|e| e.to_string())?;
    if sha256(&bytes) != want.manifest {
        return Err(format!("{repo}:{tag}: manifest digest {} != {}", sha256(&bytes), want.manifest));
    }
    for (d, data) in &want.blobs {
        let resp = client().get(format!("{lb}/v2/{repo}/blobs/{d}")).send().await.map_err(|e| e.to_string())?;
        if resp.status() != 200 {
            return Err(format!("{repo}:{tag}: blob {d}: {}", resp.status()));
        }
        let got = resp.bytes().await.map_err(|e| e.to_string())?;
        if sha256(&got) != *d || got.len() != data.len() {
            return Err(format!("{repo}:{tag}: blob {d} corrupt"));
        }
    }
    Ok(())
}

fn gc_cli(fleet: &LocalFleet, args: &[&str]) -> std::process::Output {
    let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/fleet.toml");
    std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["gc", "--config"])
        .arg(config)
        .args(args)
        .env("BERTH__STORAGE__S3__ENDPOINT", fleet.var("s3_endpoint"))
        .env("BERTH__STORAGE__S3__BUCKET", fleet.var("s3_bucket"))
        .env("BERTH__STATE__REDIS__URL", fleet.var("redis_url"))
        .env("BERTH__GC__GRACE", "0s")
        .env("AWS_ACCESS_KEY_ID", std::env::var("S3_ACCESS_KEY_ID").unwrap_or_else(|_| "test".into()))
        .env("AWS_SECRET_ACCESS_KEY", std::env::var("S3_SECRET_ACCESS_KEY").unwrap_or_else(|_| "testsecret".into()))
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_and_continuous_collection_on_a_fleet() {
    let fleet = LocalFleet::up(
        3,
        &[("BERTH__GC__INTERVAL", "1s"), ("BERTH__GC__GRACE", "5s"), ("BERTH__GC__UNTAGGED_AFTER", "0s")],
    );
    let lb = fleet.lb().to_owned();
    let base: Vec<u8> = common::bytes(256 * 1024, 7);
    // (repository, tag) -> the image it must pull as, or None once deleted.
    type Expected = HashMap<(String, String), Option<Pushed>>;
    let expected: Arc<Mutex<Expected>> = Arc::default();
    let stats: Arc<Mutex<HashMap<&'static str, u64>>> = Arc::default();
    let started = Instant::now();

    let mut writers = Vec::new();
    for w in 0..4u64 {
        let (lb, base, expected, stats) = (lb.clone(), base.clone(), expected.clone(), stats.clone());
        writers.push(tokio::spawn(async move {
            let mut i = 0u64;
            while started.elapsed() < RUN_FOR && i < 10_000 {
                i += 1;
                let repo = REPOS[((w + i) % 3) as usize];
                let tag = format!("w{w}-{}", i % 4);
                match i % 7 {
                    // Delete a tag of this writer (it may not exist).
                    3 => {
                        let (status, body, _) = send(client().delete(format!("{lb}/v2/{repo}/manifests/{tag}"))).await;
                        assert!(status == 202 || status == 404, "delete {repo}:{tag}: {status} {body}");
                        expected.lock().unwrap().insert((repo.into(), tag), None);
                        continue;
                    }
                    // Mount the shared base from another repository first.
                    5 => {
                        let from = REPOS[((w + i + 1) % 3) as usize];
                        mount(&lb, repo, from, &sha256(&base)).await.unwrap();
                    }
                    _ => {}
                }
                // Configs and layers come back every 5 and 6 pushes, so
                // images repeat every 30: what is pushed was often garbage.
                let config = format!(r#"{{"writer":{w},"variant":{}}}"#, i % 5).into_bytes();
                let v = i % 6;
                let own = common::bytes(8 * 1024 + v as usize, w * 1_000 + v);
                let blobs: Vec<(String, Vec<u8>)> =
                    [config, base.clone(), own].into_iter().map(|b| (sha256(&b), b)).collect();
                let manifest = push(&lb, repo, &tag, &blobs, &stats).await.unwrap();
                expected.lock().unwrap().insert((repo.into(), tag), Some(Pushed { manifest, blobs }));
            }
            i
        }));
    }
    let mut pushes = 0;
    for w in writers {
        pushes += w.await.unwrap();
    }
    assert!(started.elapsed() >= Duration::from_secs(60), "the writers ran {:?}", started.elapsed());

    // After the writers stopped, passes (the command's, or the replicas'
    // loops, which may hold the lease) leave nothing to collect. A dry run
    // takes no lease, so it can look while a replica's pass is between
    // deleting records and deleting data: look again until a deadline.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut passed = false;
    loop {
        let out = gc_cli(&fleet, &[]);
        if out.status.success() {
            passed = true;
        } else {
            assert_eq!(out.status.code(), Some(75), "{}", String::from_utf8_lossy(&out.stderr));
        }
        let out = gc_cli(&fleet, &["--dry-run", "--json"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let left = report["items"].as_array().unwrap().len();
        if passed && left == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "left to collect (or no gc lease): {}", report["items"]);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let expected = expected.lock().unwrap().clone();
    let mut tagged = 0;
    for ((repo, tag), want) in &expected {
        match want {
            Some(p) => {
                tagged += 1;
                pull_verified(&lb, repo, tag, p).await.unwrap_or_else(|e| panic!("{e}"));
            }
            None => {
                let (status, _, _) =
                    send(client().get(format!("{lb}/v2/{repo}/manifests/{tag}")).header("accept", OCI)).await;
                assert_eq!(status, 404, "{repo}:{tag} was deleted");
            }
        }
    }
    let stats = stats.lock().unwrap().clone();
    eprintln!("{pushes} writer iterations, {tagged} tags checked, refusals: {stats:?}");
    assert!(tagged >= 10, "{tagged}");
    // Passes really ran throughout (the replicas' logs say so).
    let logs = fleet.logs();
    let done: Vec<&str> = logs.lines().filter(|l| l.contains("garbage collection pass done")).collect();
    let deleting = done.iter().filter(|l| !l.contains("\"deleted\":0")).count();
    let mut refusals = 0u64;
    for n in 1..=3 {
        let text = client().get(format!("{}/metrics", fleet.replica(n))).send().await.unwrap().text().await.unwrap();
        refusals += text
            .lines()
            .find_map(|l| l.strip_prefix("berth_gc_writer_refusals_total "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    eprintln!("{} passes, {deleting} of them deleted something; {refusals} writes refused by the guard", done.len());
    assert!(done.len() >= 20, "only {} passes ran", done.len());
    assert!(deleting >= 3, "collection hardly deleted anything while the writers ran ({deleting} passes)");
    fleet.assert_no_server_errors();
}
