//! The S3 store against the shared storage conformance suite, on moto_server
//! (or the server in BERTH_TEST_S3_ENDPOINT), plus S3-specific behaviour.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use berth_storage::{ObjectStore, ObjectStoreExt, PutMode, StorageError};
use berth_storage_s3::testing::S3TestServer;
use berth_storage_s3::S3Store;
use bytes::Bytes;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite() {
    let server = S3TestServer::start();
    let store = server.fresh_store().await;
    berth_storage::testing::run_all(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_prefix_scopes_every_operation() {
    let server = S3TestServer::start();
    let plain = server.fresh_store().await;
    let mut options = server.options(plain.bucket());
    options.prefix = "tenant-a/".into();
    let prefixed = S3Store::connect(options).await.unwrap();
    prefixed.put("k/one", Bytes::from_static(b"1"), PutMode::Overwrite).await.unwrap();
    // Stored under the prefix, reported without it.
    assert_eq!(plain.get_bytes("tenant-a/k/one", 10).await.unwrap(), Bytes::from_static(b"1"));
    let page = prefixed.list("k/", None, 10).await.unwrap();
    assert_eq!(page.objects[0].key, "k/one");
    let upload = prefixed.create_multipart().await.unwrap();
    assert!(prefixed.list_multipart().await.unwrap().iter().any(|(u, _)| u == &upload));
    assert!(plain.list_multipart().await.unwrap().is_empty(), "uploads under another prefix are not ours");
    prefixed.abort_multipart(&upload).await.unwrap();
    // The same conformance holds under a prefix.
    berth_storage::testing::multipart_roundtrip(&prefixed).await;
    berth_storage::testing::listing_sorted_and_paginated(&prefixed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parts_below_the_minimum_are_refused_at_completion() {
    let server = S3TestServer::start();
    let store = server.fresh_store().await;
    let upload = store.create_multipart().await.unwrap();
    let a = store.put_part(&upload, 1, 0, Bytes::from_static(b"small")).await.unwrap();
    let b = store.put_part(&upload, 2, 5, Bytes::from_static(b"tail")).await.unwrap();
    let err = store.complete_multipart(&upload, &[a, b], "dest").await.unwrap_err();
    assert!(matches!(err, StorageError::InvalidPart(_)), "{err:?}");
    store.abort_multipart(&upload).await.unwrap();
    assert!(store.head("dest").await.unwrap_err().is_not_found());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presigned_urls_serve_the_object() {
    let server = S3TestServer::start();
    let store = server.fresh_store().await;
    store.put("blobs/x", Bytes::from_static(b"presigned body"), PutMode::Overwrite).await.unwrap();
    let url = store.presign_get("blobs/x", Duration::from_secs(60)).await.unwrap().unwrap();
    assert!(url.starts_with(&server.endpoint), "{url}");
    assert!(url.contains("X-Amz-Expires=60"), "{url}");
    let body = reqwest::get(&url).await.unwrap();
    assert_eq!(body.status(), 200);
    assert_eq!(&body.bytes().await.unwrap()[..], b"presigned body");
    // Signed for the configured key (moto does not check signatures, so
    // refusal of a tampered one is left to the real S3 and MinIO).
    assert!(url.contains("X-Amz-Signature=") && url.contains("X-Amz-Credential=test%2F"), "{url}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_or_hung_server_is_unavailable_not_internal() {
    // Nothing listens on a port we bound and released.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let server = S3TestServer::start_moto();
    let mut options = server.options("nowhere");
    options.endpoint = Some(format!("http://127.0.0.1:{port}"));
    options.max_attempts = 1;
    let store = S3Store::connect(options).await.unwrap();
    let err = store.head("k").await.unwrap_err();
    assert!(matches!(err, StorageError::Unavailable { .. }), "{err:?}");

    // A server that accepts but never answers: the request timeout ends it.
    let live = server.fresh_store().await;
    let mut options = server.options(live.bucket());
    options.request_timeout = Duration::from_millis(500);
    options.max_attempts = 1;
    let store = S3Store::connect(options).await.unwrap();
    store.put("k", Bytes::from_static(b"v"), PutMode::Overwrite).await.unwrap();
    server.pause(true);
    let err = store.head("k").await.unwrap_err();
    server.pause(false);
    assert!(matches!(err, StorageError::Unavailable { .. }), "{err:?}");
    // And it recovers with the data intact.
    assert_eq!(store.get_bytes("k", 10).await.unwrap(), Bytes::from_static(b"v"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn works_with_aws_ca_bundle_set() {
    // These machines set AWS_CA_BUNDLE; an explicit CA file is read the same way.
    let server = S3TestServer::start();
    let bucket = server.fresh_store().await;
    let mut options = server.options(bucket.bucket());
    if let Ok(bundle) = std::env::var("AWS_CA_BUNDLE") {
        options.ca_file = Some(bundle.into());
    }
    let store = S3Store::connect(options).await.unwrap();
    store.put("k", Bytes::from_static(b"v"), PutMode::Overwrite).await.unwrap();
    assert!(store.exists("k").await.unwrap());
}

/// An HTTPS endpoint signed by a private CA: trusted through `ca_file`,
/// refused (as unavailable, never a panic) without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_endpoint_with_a_private_ca() {
    let dir = std::env::temp_dir().join(format!("berth-s3-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sh = |cmd: &str| {
        let out = std::process::Command::new("sh").arg("-c").arg(cmd).current_dir(&dir).output().unwrap();
        assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
    };
    sh("openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=test-ca -keyout ca.key -out ca.pem 2>/dev/null");
    sh("openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout srv.key -out srv.csr 2>/dev/null");
    sh("printf 'subjectAltName=DNS:localhost,IP:127.0.0.1' > ext.cnf && openssl x509 -req -in srv.csr -CA ca.pem \
        -CAkey ca.key -CAcreateserial -days 2 -extfile ext.cnf -out srv.pem 2>/dev/null");
    let server = S3TestServer::start_moto_tls(&dir.join("srv.pem"), &dir.join("srv.key"));
    assert!(server.endpoint.starts_with("https://"), "{}", server.endpoint);

    let mut options = server.options("tls-bucket");
    options.ca_file = Some(dir.join("ca.pem"));
    let store = S3Store::connect(options).await.unwrap();
    store.ensure_bucket().await.unwrap();
    store.put("k", Bytes::from_static(b"over tls"), PutMode::Overwrite).await.unwrap();
    assert_eq!(store.get_bytes("k", 100).await.unwrap(), Bytes::from_static(b"over tls"));

    let mut untrusting = server.options("tls-bucket");
    untrusting.max_attempts = 1;
    let store = S3Store::connect(untrusting).await.unwrap();
    let err = store.head("k").await.unwrap_err();
    assert!(matches!(err, StorageError::Unavailable { .. }), "{err:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
