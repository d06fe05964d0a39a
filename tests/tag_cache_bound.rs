//! The bound on serving a moved or deleted tag. Replicas cache tag ->
//! digest; a change made anywhere is announced over the shared state's
//! pub/sub and applies at once where it is heard. A replica that misses the
//! announcement (here: one on another shared state, as when Redis is down)
//! serves the old digest for at most `cache.tag_ttl`.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use berth::auth::{Gate, Identity};
use berth::oci::{Algorithm, Digest, OciError, Reference};
use berth::registry::cache::CacheOptions;
use berth::registry::{Access, Pull, Push, Registry, RegistryOptions};
use bytes::Bytes;
use futures::StreamExt;

const OCI: &str = "application/vnd.oci.image.manifest.v1+json";

fn grant<A: berth::registry::access::Action>(repo: &str) -> Access<A> {
    Gate::anonymous().authorize(&Identity::anonymous(), &repo.parse().unwrap()).unwrap()
}

fn registry(
    store: Arc<dyn berth_storage::ObjectStore>,
    state: Arc<berth_state::MemoryState>,
    ttl: Duration,
) -> Registry {
    let cache = CacheOptions { tag_ttl: ttl, ..CacheOptions::default() };
    Registry::new(store, state, RegistryOptions { cache, ..RegistryOptions::default() })
}

async fn push(r: &Registry, salt: &str) -> Digest {
    let acc: Access<Push> = grant("bound/repo");
    let config = Bytes::from(format!("{{\"salt\":\"{salt}\"}}"));
    let cd = Digest::of(Algorithm::Sha256, &config);
    let body = futures::stream::iter(vec![Ok(config.clone())]).boxed();
    r.upload_monolithic(&acc, &cd, None, body).await.unwrap();
    let manifest = format!(
        "{{\"schemaVersion\":2,\"mediaType\":\"{OCI}\",\"config\":{{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"{cd}\",\"size\":{}}},\"layers\":[]}}",
        config.len()
    );
    let mover: Access<berth::registry::Update> = grant("bound/repo");
    r.manifest_put(&acc, Some(&mover), &"t".parse().unwrap(), Some(OCI), Bytes::from(manifest)).await.unwrap().digest
}

async fn tag_of(r: &Registry) -> Result<Digest, OciError> {
    let acc: Access<Pull> = grant("bound/repo");
    let reference: Reference = "t".parse().unwrap();
    r.manifest_get(&acc, &reference).await.map(|m| m.digest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_tag_is_served_stale_at_most_tag_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn berth_storage::ObjectStore> = Arc::new(
        berth_storage_fs::FsStore::open(dir.path(), berth_storage_fs::FsOptions { fsync: false, direct_io: false })
            .unwrap(),
    );
    let shared = Arc::new(berth_state::MemoryState::new());
    let ttl = Duration::from_millis(1500);
    let writer = registry(store.clone(), shared.clone(), ttl);
    // Hears announcements; its TTL is long, so only an announcement can move it.
    let listening = registry(store.clone(), shared.clone(), Duration::from_secs(3600));
    let _listener = listening.spawn_cache_listener();
    // On another shared state: it never hears of the change.
    let deaf = registry(store.clone(), Arc::new(berth_state::MemoryState::new()), ttl);

    let first = push(&writer, "one").await;
    assert_eq!(tag_of(&listening).await.unwrap(), first);
    // The deaf replica caches the tag no earlier than this.
    let cached_at = tokio::time::Instant::now();
    assert_eq!(tag_of(&deaf).await.unwrap(), first);

    let moved_at = tokio::time::Instant::now();
    let second = push(&writer, "two").await;
    assert_eq!(tag_of(&writer).await.unwrap(), second, "the writer serves its own change at once");
    // The announcement reaches the listening replica (bounded wait for delivery).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tag_of(&listening).await.unwrap() != second {
        assert!(tokio::time::Instant::now() < deadline, "the invalidation never arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The deaf one may serve the old digest, but not past the TTL.
    let stale = tag_of(&deaf).await.unwrap();
    if cached_at.elapsed() < ttl {
        assert_eq!(stale, first, "a cache entry younger than tag_ttl is served");
    }
    tokio::time::sleep_until(moved_at + ttl + Duration::from_millis(50)).await;
    assert_eq!(tag_of(&deaf).await.unwrap(), second, "a moved tag was served past tag_ttl");

    // Deletion has the same bound.
    let deleted_at = tokio::time::Instant::now();
    let del: Access<berth::registry::Delete> = grant("bound/repo");
    writer.manifest_delete(&del, &"t".parse().unwrap()).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tag_of(&listening).await.is_ok() {
        assert!(tokio::time::Instant::now() < deadline, "the deletion was never announced");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep_until(deleted_at + ttl + Duration::from_millis(50)).await;
    assert!(matches!(tag_of(&deaf).await, Err(OciError::ManifestUnknown(_))), "a deleted tag was served past tag_ttl");
}
