//! Abandoned uploads expire: the janitor aborts their staged data and the
//! session is gone. Driven through the library with a short TTL (the config
//! refuses TTLs under a minute, which would make this test slow).

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use berth::auth::{Gate, Identity};
use berth::oci::{Algorithm, OciError};
use berth::registry::{Registry, RegistryOptions};
use bytes::Bytes;
use futures::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_sessions_are_cleaned_up() {
    let dir = tempfile::tempdir().unwrap();
    let store =
        berth_storage_fs::FsStore::open(dir.path(), berth_storage_fs::FsOptions { fsync: false })
            .unwrap();
    let state = Arc::new(berth_state::MemoryState::new());
    let options = RegistryOptions {
        upload_ttl: Duration::from_secs(1),
        ..RegistryOptions::default()
    };
    let registry = Registry::new(Arc::new(store), state, options);
    let gate = Gate::anonymous();
    let access = gate
        .authorize(&Identity::anonymous(), &"expiry/test".parse().unwrap())
        .unwrap();

    let live = registry
        .upload_start(&access, None, Algorithm::Sha256)
        .await
        .unwrap();
    let abandoned = registry
        .upload_start(&access, None, Algorithm::Sha256)
        .await
        .unwrap();
    let body = futures::stream::iter(vec![Ok(Bytes::from_static(b"partial data"))]).boxed();
    registry
        .upload_append(&access, &abandoned.id, Some(0), None, body)
        .await
        .unwrap();
    let staged = || {
        std::fs::read_dir(dir.path().join(".uploads"))
            .unwrap()
            .count()
    };
    assert_eq!(staged(), 2);

    // Nothing is due yet.
    assert_eq!(registry.expire_uploads(100).await.unwrap(), 0);

    // Keep one session alive by touching it, and wait for the other to expire.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut removed = 0;
    while removed < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "session never expired"
        );
        let empty =
            futures::stream::iter(Vec::<Result<Bytes, berth::registry::BodyError>>::new()).boxed();
        registry
            .upload_append(&access, &live.id, None, None, empty)
            .await
            .unwrap();
        removed += registry.expire_uploads(100).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(matches!(
        registry.upload_status(&access, &abandoned.id).await,
        Err(OciError::BlobUploadUnknown)
    ));
    assert_eq!(
        registry
            .upload_status(&access, &live.id)
            .await
            .unwrap()
            .offset,
        0
    );
    assert_eq!(
        staged(),
        1,
        "the abandoned upload's staged bytes were not removed"
    );
}
