//! Registry services: blobs, uploads, manifests, tags, referrers, catalog.
//! Domain types only: no HTTP, no SDK types (DESIGN invariant 8). Every
//! method that touches a repository takes an [`Access`] for it.

pub mod access;
pub mod blobcache;
pub mod cache;
pub mod cursor;
pub mod delivery;
pub mod derived;
pub mod gc;
pub mod hooks;
pub mod instrumented;
pub mod instrumented_state;
pub mod keys;
mod manifests;
pub mod records;
pub mod revocations;
mod uploads;

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use berth_state::SharedState;
use berth_storage::{ByteStream, ObjectStore, ObjectStoreExt, PutMode, StorageError};
use bytes::Bytes;
use futures::stream::BoxStream;

pub use access::{Access, Delete, Pull, Push, Update};
pub use manifests::{PushedManifest, ReferrersPage, StoredManifest};
pub use uploads::{JanitorReport, UploadSession, UploadStatus};

use crate::oci::{Digest, OciError, RepoName};

/// Result alias for service calls.
pub type Result<T, E = OciError> = std::result::Result<T, E>;

/// Why reading a request body failed; the api layer produces these.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BodyError {
    #[error("the client sent nothing for {0:?}")]
    IdleTimeout(Duration),
    #[error("reading the request body failed: {0}")]
    Read(String),
}

/// A request body as the services see it.
pub type BodyStream = BoxStream<'static, Result<Bytes, BodyError>>;

/// Tunables of the registry services.
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// An upload session with no activity for this long is abandoned.
    pub upload_ttl: Duration,
    /// How long one PATCH/PUT may hold an upload's lock between renewals.
    pub upload_lock_ttl: Duration,
    /// How long a request waits for an upload another request is writing.
    pub upload_lock_wait: Duration,
    /// Largest page a listing returns.
    pub max_page: usize,
    /// Staged multipart writes untouched this long are removed even without
    /// a session (which a restart of the embedded shape loses).
    pub orphan_upload_age: Duration,
    /// Manifest and tag caches of the read path.
    pub cache: cache::CacheOptions,
    /// When set, blob GETs are answered with a redirect to a presigned URL
    /// valid this long, instead of streaming the bytes.
    pub redirect_ttl: Option<Duration>,
    /// Garbage collection.
    pub gc: gc::GcOptions,
    /// A manifest's pulls are recorded (for retention) at most this often.
    pub pull_record_every: Duration,
    /// Storage quotas, checked at manifest PUT.
    pub quotas: Vec<gc::usage::Quota>,
    /// How blob GETs are answered, per repository.
    pub delivery: delivery::DeliveryRules,
    /// Repository prefixes whose blobs and manifests arrive when first
    /// pulled (mirrored upstreams): what their manifests reference may
    /// rightly be absent, and scrub counts it as not fetched, not missing.
    pub fetched_on_demand: Vec<String>,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            upload_ttl: Duration::from_secs(3600),
            upload_lock_ttl: Duration::from_secs(30),
            upload_lock_wait: Duration::from_secs(5),
            max_page: 10_000,
            orphan_upload_age: Duration::from_secs(24 * 3600),
            cache: cache::CacheOptions::default(),
            redirect_ttl: None,
            gc: gc::GcOptions::default(),
            pull_record_every: Duration::from_secs(3600),
            quotas: Vec::new(),
            delivery: delivery::DeliveryRules::default(),
            fetched_on_demand: Vec::new(),
        }
    }
}

/// The registry: services over one object store and one shared state.
#[derive(Debug, Clone)]
pub struct Registry {
    store: Arc<dyn ObjectStore>,
    state: Arc<dyn SharedState>,
    options: RegistryOptions,
    caches: Arc<cache::Caches>,
    /// Read (or created) the first time a listing needs a sealed cursor.
    cursor_key: Arc<tokio::sync::OnceCell<cursor::CursorKey>>,
    /// The collector's state between passes.
    gc: Arc<gc::GcState>,
    /// A test's pause points ([`hooks`]); `None` outside tests.
    hook: Option<hooks::Hook>,
    /// Pulls recorded recently by this process.
    pulls: Arc<gc::PullNotes>,
    /// Immutable facts the quota check reuses.
    quota_caches: Arc<gc::usage::QuotaCaches>,
    /// Blob bytes on this replica's disk (`delivery = cache`).
    blob_cache: Option<Arc<blobcache::BlobCache>>,
}

/// Size of a blob visible in a repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobMeta {
    pub size: u64,
}

/// A blob read: the whole blob's size, the range served and its bytes.
pub struct BlobRead {
    pub size: u64,
    pub range: Range<u64>,
    pub body: ByteStream,
}

impl std::fmt::Debug for BlobRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobRead").field("size", &self.size).field("range", &self.range).finish_non_exhaustive()
    }
}

/// One page of a listing and, when more follows, where the next page
/// starts: the last name of this page, or a sealed cursor
/// ([`cursor::CursorKey`]) when the page ended on a name the caller may
/// not see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub items: Vec<String>,
    pub next: Option<String>,
}

/// Names a filtered listing looks at, at most, for one page: past this, a
/// page with fewer entries than asked for ends with a cursor, so a caller
/// who may see few of many repositories costs bounded work per request.
const LISTING_SCAN_BUDGET: usize = 5_000;

impl Registry {
    pub fn new(store: Arc<dyn ObjectStore>, state: Arc<dyn SharedState>, options: RegistryOptions) -> Registry {
        let caches = Arc::new(cache::Caches::new(options.cache));
        Registry {
            store,
            state,
            options,
            caches,
            cursor_key: Arc::default(),
            gc: Arc::default(),
            hook: None,
            pulls: Arc::default(),
            quota_caches: Arc::default(),
            blob_cache: None,
        }
    }

    /// Serve blobs of repositories whose delivery is `cache` from `cache`.
    pub fn with_blob_cache(mut self, cache: Arc<blobcache::BlobCache>) -> Registry {
        self.blob_cache = Some(cache);
        self
    }

    /// The blob cache, when there is one.
    pub fn blob_cache(&self) -> Option<&Arc<blobcache::BlobCache>> {
        self.blob_cache.as_ref()
    }

    /// The blob cache, if `repo`'s blobs are delivered from it.
    fn cache_for(&self, repo: &RepoName) -> Option<&Arc<blobcache::BlobCache>> {
        let d = self.options.delivery.for_repo(repo.as_str());
        if d.mode == delivery::DeliveryMode::Cache {
            self.blob_cache.as_ref()
        } else {
            None
        }
    }

    /// Install a test's pause points (see [`hooks`]).
    #[cfg(any(test, feature = "test-helpers"))]
    pub fn with_hook(mut self, hook: hooks::Hook) -> Registry {
        self.hook = Some(hook);
        self
    }

    /// Start applying cache invalidations published by other processes.
    pub fn spawn_cache_listener(&self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.caches.clone().listen(self.state.clone()))
    }

    /// Whether `repo` is under a prefix filled on demand.
    pub fn fetched_on_demand(&self, repo: &RepoName) -> bool {
        self.options
            .fetched_on_demand
            .iter()
            .any(|p| p.is_empty() || repo.as_str().strip_prefix(p.as_str()).is_some_and(|rest| rest.starts_with('/')))
    }

    pub fn options(&self) -> &RegistryOptions {
        &self.options
    }

    /// The shared state, for the auth layer's fleet-wide counters.
    pub fn state(&self) -> Arc<dyn SharedState> {
        self.state.clone()
    }

    /// Smallest chunk a client should send (the backend's minimum part size).
    pub fn min_chunk_length(&self) -> u64 {
        self.store.part_limits().min_part_size
    }

    /// Probe the object store, for readiness checks. Shared state is not
    /// part of readiness: without it pulls of committed content still work,
    /// and only uploads answer 503.
    pub async fn check_backends(&self) -> Result<()> {
        match self.store.head("_readiness-probe").await {
            Ok(_) | Err(StorageError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// One read of the shared state (a key nobody writes): answers when
    /// the state does.
    pub async fn check_state(&self) -> Result<()> {
        self.state.get("_probe").await?;
        Ok(())
    }

    /// True if `digest` is linked into `repo` (DESIGN invariant 4).
    async fn is_linked(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        Ok(self.store.exists(&keys::layer_link(repo, digest)).await?)
    }

    /// Link an existing blob into a repository and record the repository.
    async fn link_blob(&self, repo: &RepoName, digest: &Digest) -> Result<()> {
        self.store.put(&keys::layer_link(repo, digest), Bytes::new(), PutMode::Overwrite).await?;
        self.ensure_catalog_entry(repo).await
    }

    async fn ensure_catalog_entry(&self, repo: &RepoName) -> Result<()> {
        let key = keys::catalog_entry(repo);
        if !self.store.exists(&key).await? {
            match self.store.put(&key, Bytes::new(), PutMode::Create).await {
                Ok(_) | Err(StorageError::AlreadyExists { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// The catalog entry says so, or, without one, any record does (a
    /// push that raced the collector removing the entry of a repository it
    /// had emptied; the next pass writes the entry again).
    async fn repo_exists(&self, repo: &RepoName) -> Result<bool> {
        if self.store.exists(&keys::catalog_entry(repo)).await? {
            return Ok(true);
        }
        Ok(!self.store.list(&keys::repo_prefix(repo), None, 1).await?.objects.is_empty())
    }

    /// Size of a blob visible in the repository.
    pub async fn blob_meta(&self, access: &Access<Pull>, digest: &Digest) -> Result<BlobMeta> {
        if !self.is_linked(access.repo(), digest).await? {
            return Err(OciError::BlobUnknown(digest.to_string()));
        }
        if let Some(size) = self.cache_for(access.repo()).and_then(|c| c.cached_size(digest)) {
            return Ok(BlobMeta { size });
        }
        match self.store.head(&keys::blob(digest)).await {
            Ok(meta) => Ok(BlobMeta { size: meta.size }),
            Err(e) if e.is_not_found() => Err(OciError::BlobUnknown(digest.to_string())),
            Err(e) => Err(e.into()),
        }
    }

    /// Read a blob, or a range of it.
    pub async fn blob_get(
        &self,
        access: &Access<Pull>,
        digest: &Digest,
        range: Option<Range<u64>>,
    ) -> Result<BlobRead> {
        if !self.is_linked(access.repo(), digest).await? {
            return Err(OciError::BlobUnknown(digest.to_string()));
        }
        self.read_blob(self.cache_for(access.repo()), false, digest, range).await
    }

    /// A blob's bytes from `cache`, or from the store without one, with
    /// storage errors in the spec's terms.
    async fn read_blob(
        &self,
        cache: Option<&Arc<blobcache::BlobCache>>,
        via_peer: bool,
        digest: &Digest,
        range: Option<Range<u64>>,
    ) -> Result<BlobRead> {
        let read = match cache {
            Some(cache) => cache.read(digest, range, via_peer).await,
            None => blobcache::store_read(self.store.as_ref(), digest, range).await,
        };
        match read {
            Ok(read) => Ok(read),
            Err(StorageError::NotFound { .. }) => Err(OciError::BlobUnknown(digest.to_string())),
            Err(StorageError::InvalidRange { size }) => Err(OciError::RangeNotSatisfiable { size }),
            Err(e) => Err(e.into()),
        }
    }

    /// Where the client may fetch the blob itself, when the registry is set
    /// to redirect blob reads: a presigned URL of the object store, issued
    /// only to a caller holding pull access and only for a linked blob.
    /// `Ok(None)` means "stream it" (redirects are off or unsupported).
    pub async fn blob_redirect(&self, access: &Access<Pull>, digest: &Digest) -> Result<Option<String>> {
        let Some(ttl) = self.options.redirect_ttl else { return Ok(None) };
        let d = self.options.delivery.for_repo(access.repo().as_str());
        if d.mode != delivery::DeliveryMode::Redirect && d.redirect_above.is_none() {
            return Ok(None);
        }
        if !self.is_linked(access.repo(), digest).await? {
            return Err(OciError::BlobUnknown(digest.to_string()));
        }
        if let (Some(limit), false) = (d.redirect_above, d.mode == delivery::DeliveryMode::Redirect) {
            let size = match self.blob_cache.as_ref().and_then(|c| c.cached_size(digest)) {
                Some(size) => size,
                None => match self.store.head(&keys::blob(digest)).await {
                    Ok(meta) => meta.size,
                    Err(e) if e.is_not_found() => return Err(OciError::BlobUnknown(digest.to_string())),
                    Err(e) => return Err(e.into()),
                },
            };
            if size <= limit {
                return Ok(None);
            }
        }
        Ok(self.store.presign_get(&keys::blob(digest), ttl).await?)
    }

    /// Read a blob by digest for a peer of the mesh: no repository, no
    /// access check (the replica the client talked to authorized the pull;
    /// the internal listener admits peers only), through the blob cache.
    pub async fn blob_for_peer(&self, digest: &Digest, range: Option<Range<u64>>) -> Result<BlobRead> {
        self.read_blob(self.blob_cache.as_ref(), true, digest, range).await
    }

    /// Unlink a blob from a repository. The bytes stay for other
    /// repositories; reclaiming unreferenced blobs is garbage collection's job.
    pub async fn blob_delete(&self, access: &Access<Delete>, digest: &Digest) -> Result<()> {
        if !self.is_linked(access.repo(), digest).await? {
            return Err(OciError::BlobUnknown(digest.to_string()));
        }
        self.store.delete(&keys::layer_link(access.repo(), digest)).await?;
        Ok(())
    }

    /// Repositories in lexical order, after `last`, at most `n`, keeping
    /// only those `visible` admits (pagination counts visible ones only).
    pub async fn catalog(
        &self,
        n: Option<usize>,
        last: Option<&str>,
        visible: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<Page> {
        self.list_names(keys::CATALOG_PREFIX, n, last, visible).await
    }

    /// Tags of a repository in lexical order, after `last`, at most `n`.
    pub async fn tags(&self, access: &Access<Pull>, n: Option<usize>, last: Option<&str>) -> Result<Page> {
        if !self.repo_exists(access.repo()).await? {
            return Err(OciError::NameUnknown(access.repo().to_string()));
        }
        self.list_names(&keys::tags_prefix(access.repo()), n, last, &|_| true).await
    }

    /// Lists the key suffixes under `prefix` after `last` (a name, or a
    /// sealed cursor), paging through the store, keeping what `keep` admits
    /// and counting only those towards `n`. A filtered listing stops after
    /// [`LISTING_SCAN_BUDGET`] names, so its work per page is bounded.
    async fn list_names(
        &self,
        prefix: &str,
        n: Option<usize>,
        last: Option<&str>,
        keep: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<Page> {
        let want = n.unwrap_or(usize::MAX).min(self.options.max_page);
        let mut items = Vec::new();
        if want == 0 {
            return Ok(Page { items, next: None });
        }
        let start = match last {
            Some(c) if c.starts_with(cursor::SEALED) => Some(
                self.cursor_key()
                    .await?
                    .open(c)
                    .ok_or_else(|| OciError::Unsupported("`last` is not a cursor this registry issued".into()))?,
            ),
            other => other.map(str::to_owned),
        };
        let mut after = start.map(|l| format!("{prefix}{l}"));
        let mut scanned = 0usize;
        loop {
            let page = self.store.list(prefix, after.as_deref(), (want - items.len() + 1).clamp(1, 1000)).await?;
            for obj in &page.objects {
                let name = &obj.key[prefix.len()..];
                scanned += 1;
                if keep(name) {
                    if items.len() == want {
                        let next = items.last().cloned();
                        return Ok(Page { items, next });
                    }
                    items.push(name.to_owned());
                } else if scanned >= LISTING_SCAN_BUDGET {
                    let sealed = self
                        .cursor_key()
                        .await?
                        .seal(name)
                        .ok_or_else(|| OciError::internal("cannot seal a listing cursor"))?;
                    return Ok(Page { items, next: Some(sealed) });
                }
            }
            match page.next_start_after {
                Some(next) => after = Some(next),
                None => return Ok(Page { items, next: None }),
            }
        }
    }

    /// The key listing cursors are sealed with, shared by every replica
    /// through the object store: the first replica to need it writes one
    /// (create-only); the others read it.
    async fn cursor_key(&self) -> Result<&cursor::CursorKey> {
        self.cursor_key
            .get_or_try_init(|| async {
                let bad = || OciError::internal("the listing cursor key in the object store is unusable");
                if let Ok(bytes) = self.store.get_bytes(keys::LISTING_CURSOR_KEY, 64).await {
                    return cursor::CursorKey::from_bytes(&bytes).ok_or_else(bad);
                }
                let fresh = cursor::CursorKey::generate().ok_or_else(|| OciError::internal("no random bytes"))?;
                match self.store.put(keys::LISTING_CURSOR_KEY, Bytes::copy_from_slice(&fresh), PutMode::Create).await {
                    Ok(_) => cursor::CursorKey::from_bytes(&fresh).ok_or_else(bad),
                    // Another replica was first: use its key.
                    Err(StorageError::AlreadyExists { .. }) => {
                        let bytes = self.store.get_bytes(keys::LISTING_CURSOR_KEY, 64).await?;
                        cursor::CursorKey::from_bytes(&bytes).ok_or_else(bad)
                    }
                    Err(e) => Err(e.into()),
                }
            })
            .await
    }
}
