//! berth with its shared state in Redis: pushes and pulls work; with Redis
//! down, committed content is still served and uploads answer 503 with
//! Retry-After; when Redis returns, service resumes by itself.

#![allow(clippy::unwrap_used)]

mod common;

use common::{bytes, client, sha256, Berth, RedisServer};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn redis_outage_keeps_pulls_and_refuses_uploads() {
    let mut redis = RedisServer::start();
    let b = Berth::start(&format!(
        "[state]\nbackend = \"redis\"\n[state.redis]\nurl = \"{}\"\nkey_prefix = \"t:\"",
        redis.url()
    ));
    let c = client();

    // Push an image with a chunked upload (session state lives in Redis).
    let layer = bytes(300_000, 3);
    let ld = sha256(&layer);
    let resp = c.post(b.url("/v2/fleet/app/blobs/uploads/")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let loc = resp.headers()["location"].to_str().unwrap().to_owned();
    let resp =
        c.patch(b.url(&loc)).header("content-range", "0-149999").body(layer[..150_000].to_vec()).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let loc = resp.headers()["location"].to_str().unwrap().to_owned();
    let resp = c
        .put(b.url(&format!("{loc}?digest={ld}")))
        .header("content-range", "150000-299999")
        .body(layer[150_000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let config = b"{}".to_vec();
    let cd = sha256(&config);
    assert_eq!(
        c.post(b.url(&format!("/v2/fleet/app/blobs/uploads/?digest={cd}"))).body(config).send().await.unwrap().status(),
        StatusCode::CREATED
    );
    let manifest =
        serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": cd, "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld, "size": layer.len()}]}))
        .unwrap();
    let resp = c
        .put(b.url("/v2/fleet/app/manifests/v1"))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);

    // Redis goes away.
    let port = redis.port;
    redis.stop();
    let resp = c.get(b.url("/v2/fleet/app/manifests/v1")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.bytes().await.unwrap(), manifest);
    let resp = c.get(b.url(&format!("/v2/fleet/app/blobs/{ld}"))).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.bytes().await.unwrap(), layer);
    assert_eq!(c.get(b.url("/readyz")).send().await.unwrap().status(), StatusCode::OK);
    let resp = c.post(b.url("/v2/fleet/app/blobs/uploads/")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(resp.headers().contains_key("retry-after"));
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["errors"][0]["code"], "UNAVAILABLE");

    // Redis returns (empty): uploads work again without a restart of berth.
    let _redis = RedisServer::start_on(port);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let status = c.post(b.url("/v2/fleet/app/blobs/uploads/")).send().await.unwrap().status();
        if status == StatusCode::ACCEPTED {
            break;
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(std::time::Instant::now() < deadline, "uploads never recovered");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let log = b.stderr();
    assert!(!log.contains("status=500") && !log.contains("panicked"), "{log}");
}
