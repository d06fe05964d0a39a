//! Upload-session behaviour driven through the library, where time and
//! backend failures can be controlled: expiry with a short TTL (the config
//! refuses TTLs under a minute), ownership of sessions, recovery from a
//! failed part write, and the sweep of uploads orphaned by a restart.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use berth::auth::{AuthMethod, Gate, Identity, Source};
use berth::oci::{Algorithm, OciError};
use berth::registry::{Access, Push};
use berth::registry::{Registry, RegistryOptions};
use berth_storage::{
    GetResult, ListPage, MultipartUpload, ObjectMeta, ObjectStore, PartLimits, PartReceipt, PutMode, StorageError,
};
use bytes::Bytes;
use futures::StreamExt;
use std::sync::atomic::{AtomicUsize, Ordering};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_sessions_are_cleaned_up() {
    let dir = tempfile::tempdir().unwrap();
    let store = fs_store(dir.path());
    let state = Arc::new(berth_state::MemoryState::new());
    let options = RegistryOptions { upload_ttl: Duration::from_secs(3), ..RegistryOptions::default() };
    let registry = Registry::new(Arc::new(store), state, options);
    let gate = Gate::anonymous();
    let access = gate.authorize(&Identity::anonymous(), &"expiry/test".parse().unwrap()).unwrap();

    let live = registry.upload_start(&access, Algorithm::Sha256).await.unwrap();
    let abandoned = registry.upload_start(&access, Algorithm::Sha256).await.unwrap();
    let body = futures::stream::iter(vec![Ok(Bytes::from_static(b"partial data"))]).boxed();
    registry.upload_append(&access, &abandoned.id, Some(0), None, body).await.unwrap();
    let staged = || std::fs::read_dir(dir.path().join(".uploads")).unwrap().count();
    assert_eq!(staged(), 2);

    // Nothing is due yet.
    assert_eq!(registry.expire_uploads(100).await.unwrap(), 0);

    // Keep one session alive by touching it, and wait for the other to expire.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut removed = 0;
    while removed < 1 {
        assert!(tokio::time::Instant::now() < deadline, "session never expired");
        let empty = futures::stream::iter(Vec::<Result<Bytes, berth::registry::BodyError>>::new()).boxed();
        registry.upload_append(&access, &live.id, None, None, empty).await.unwrap();
        removed += registry.expire_uploads(100).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(matches!(registry.upload_status(&access, &abandoned.id).await, Err(OciError::BlobUploadUnknown)));
    assert_eq!(registry.upload_status(&access, &live.id).await.unwrap().offset, 0);
    assert_eq!(staged(), 1, "the abandoned upload's staged bytes were not removed");
}

fn fs_store(root: &std::path::Path) -> berth_storage_fs::FsStore {
    berth_storage_fs::FsStore::open(root, berth_storage_fs::FsOptions { fsync: false, direct_io: true }).unwrap()
}

fn registry_on(store: Arc<dyn ObjectStore>) -> Registry {
    Registry::new(store, Arc::new(berth_state::MemoryState::new()), RegistryOptions::default())
}

fn access_for(subject: Option<&str>, repo: &str) -> Access<Push> {
    let identity = match subject {
        Some(s) => Identity::for_tests(Source::Htpasswd, s, &[], AuthMethod::Htpasswd),
        None => Identity::anonymous(),
    };
    Gate::anonymous().authorize(&identity, &repo.parse().unwrap()).unwrap()
}

fn body(chunks: Vec<Vec<u8>>) -> berth::registry::BodyStream {
    futures::stream::iter(chunks.into_iter().map(|c| Ok(Bytes::from(c)))).boxed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_belong_to_their_owner() {
    let dir = tempfile::tempdir().unwrap();
    let store = fs_store(dir.path());
    let registry = registry_on(Arc::new(store));
    let alice = access_for(Some("alice"), "shared/repo");
    let bob = access_for(Some("bob"), "shared/repo");
    let anonymous = access_for(None, "shared/repo");
    let upload = registry.upload_start(&alice, Algorithm::Sha256).await.unwrap();
    for other in [&bob, &anonymous] {
        assert!(matches!(registry.upload_status(other, &upload.id).await, Err(OciError::BlobUploadUnknown)));
        assert!(matches!(
            registry.upload_append(other, &upload.id, Some(0), None, body(vec![b"x".to_vec()])).await,
            Err(OciError::BlobUploadUnknown)
        ));
        assert!(matches!(registry.upload_cancel(other, &upload.id).await, Err(OciError::BlobUploadUnknown)));
    }
    registry.upload_append(&alice, &upload.id, Some(0), None, body(vec![b"data".to_vec()])).await.unwrap();
    assert_eq!(registry.upload_status(&alice, &upload.id).await.unwrap().offset, 4);
}

/// A store whose `put_part` fails while `fail` is above zero.
#[derive(Debug)]
struct FlakyStore {
    inner: berth_storage_fs::FsStore,
    fail: AtomicUsize,
}

#[async_trait]
impl ObjectStore for FlakyStore {
    fn backend(&self) -> &'static str {
        "flaky"
    }
    async fn head(&self, key: &str) -> Result<ObjectMeta, StorageError> {
        self.inner.head(key).await
    }
    async fn get(&self, key: &str, range: Option<std::ops::Range<u64>>) -> Result<GetResult, StorageError> {
        self.inner.get(key, range).await
    }
    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<ObjectMeta, StorageError> {
        self.inner.put(key, data, mode).await
    }
    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.inner.delete(key).await
    }
    async fn list(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<ListPage, StorageError> {
        self.inner.list(prefix, after, limit).await
    }
    async fn copy(&self, from: &str, to: &str) -> Result<ObjectMeta, StorageError> {
        self.inner.copy(from, to).await
    }
    async fn create_multipart(&self) -> Result<MultipartUpload, StorageError> {
        self.inner.create_multipart().await
    }
    async fn put_part(&self, u: &MultipartUpload, n: u32, off: u64, data: Bytes) -> Result<PartReceipt, StorageError> {
        if self.fail.load(Ordering::SeqCst) > 0 {
            self.fail.fetch_sub(1, Ordering::SeqCst);
            return Err(StorageError::Backend { backend: "flaky", source: "injected write failure".into() });
        }
        self.inner.put_part(u, n, off, data).await
    }
    async fn complete_multipart(
        &self,
        u: &MultipartUpload,
        p: &[PartReceipt],
        dest: &str,
    ) -> Result<ObjectMeta, StorageError> {
        self.inner.complete_multipart(u, p, dest).await
    }
    async fn abort_multipart(&self, u: &MultipartUpload) -> Result<(), StorageError> {
        self.inner.abort_multipart(u).await
    }
    async fn list_multipart(&self) -> Result<Vec<(MultipartUpload, std::time::SystemTime)>, StorageError> {
        self.inner.list_multipart().await
    }
    fn part_limits(&self) -> PartLimits {
        self.inner.part_limits()
    }
}

/// A part write that fails loses nothing: the bytes the hasher counted stay
/// staged, the client resumes at the reported offset, and the blob that is
/// finally stored is exactly what was sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_part_write_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let inner = fs_store(dir.path());
    let store = Arc::new(FlakyStore { inner, fail: AtomicUsize::new(0) });
    let registry = registry_on(store.clone());
    let access = access_for(None, "flaky/repo");
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let upload = registry.upload_start(&access, Algorithm::Sha256).await.unwrap();

    // First chunk: 1.5 MB, with the second part write failing.
    let first = data[..1_500_000].to_vec();
    store.fail.store(1, Ordering::SeqCst);
    let err = registry.upload_append(&access, &upload.id, Some(0), None, body(vec![first])).await.unwrap_err();
    assert!(matches!(err, OciError::Internal(_)), "{err:?}");
    let offset = registry.upload_status(&access, &upload.id).await.unwrap().offset;
    assert!(offset <= 1_500_000);

    // The client resumes from the reported offset.
    let rest = data[offset as usize..].to_vec();
    registry.upload_append(&access, &upload.id, Some(offset), None, body(vec![rest])).await.unwrap();
    let digest = berth::oci::Digest::sha256(&data);
    registry.upload_complete(&access, &upload.id, &digest, None, None, None).await.unwrap();

    let pull = Gate::anonymous().authorize(&Identity::anonymous(), &"flaky/repo".parse().unwrap()).unwrap();
    let read = registry.blob_get(&pull, &digest, None).await.unwrap();
    let stored = berth_storage::collect_body(read.body, u64::MAX).await.unwrap();
    assert!(stored[..] == data[..], "stored blob differs from what was sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphaned_uploads_are_swept() {
    let dir = tempfile::tempdir().unwrap();
    let store = fs_store(dir.path());
    // An upload staged by an earlier process whose sessions are gone.
    let orphan = store.create_multipart().await.unwrap();
    store.put_part(&orphan, 1, 0, Bytes::from_static(b"left behind")).await.unwrap();
    let registry = registry_on(Arc::new(store.clone()));
    // Recent ones survive a sweep with a long age...
    assert_eq!(registry.sweep_orphaned_uploads(Duration::from_secs(3600)).await.unwrap(), 0);
    // ...and go when the age is reached (zero at start-up of the embedded shape).
    assert_eq!(registry.sweep_orphaned_uploads(Duration::ZERO).await.unwrap(), 1);
    assert!(store.list_multipart().await.unwrap().is_empty());
}
