//! The blob cache: verified copies of blobs on this replica's disk, so a
//! layer a build farm pulls a thousand times is read from upstream once.
//!
//! Blobs are content-addressed and immutable, so nothing here is ever
//! invalidated; the cache only decides what to keep within its byte budget
//! (least recently used goes first).
//!
//! - **One fill, many readers.** The first request for a blob that is not
//!   cached starts a fill: a task of its own (not tied to that request)
//!   that reads the blob from upstream once, writes it to a temporary file
//!   and hashes it. Every request that arrives meanwhile follows the fill,
//!   reading the temporary file as it grows, ranges included; nobody waits
//!   for the whole blob (a range starting more than 16 MiB beyond what has
//!   arrived is read from the object store instead).
//! - **Nothing unverified is released whole.** A reader whose range ends at
//!   the blob's last byte gets that last piece only after the fill verified
//!   the digest; a fill that fails verification is discarded and its
//!   readers' downloads fail rather than complete wrong. A verified file is
//!   renamed into `blobs/<alg>/<hex>`. A cached file last hashed longer
//!   ago than `reverify_after` (an hour by default) is hashed again by the
//!   next full read that serves it, and a mismatch (a file damaged on disk)
//!   discards the file and fails that download (the next one refills); a
//!   herd of reads in between costs no hashing.
//! - **Restarts keep the cache.** The index is rebuilt from
//!   `blobs/<alg>/<hex>`; what is in `tmp/` (a fill a crash interrupted) is
//!   removed. An adopted file is hashed once before it is first served.
//! - **Failures degrade to pass-through.** A blob larger than the budget, a
//!   disk that refuses the write, or a read error: the bytes come from the
//!   object store as without a cache. A fill whose upstream fails is
//!   resumed from where it stopped (from the object store when the peer was
//!   the source), and readers of a fill that gives up read the rest of
//!   their range from the object store themselves.
//!
//! Upstream is the object store, or, with the mesh, the replica that owns
//! the digest ([`PeerSource`]); a fill for a peer's request (`via_peer`)
//! always reads the object store, so requests never travel in a circle.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use berth_storage::{ByteStream, ObjectStore, StorageError};
use futures::StreamExt;
use tokio::sync::{watch, OnceCell};

use super::{keys, BlobRead};
use crate::metrics;
use crate::oci::digest::ResumableHasher;
use crate::oci::Digest;

const BACKEND: &str = "blob-cache";
/// Size of the pieces readers are sent.
const CHUNK: u64 = 256 * 1024;
/// A range starting this far beyond what a fill has written is read from
/// the object store instead of waiting for the fill.
const AHEAD: u64 = 16 * 1024 * 1024;
/// Times a fill resumes from the object store before giving up.
const STORE_ATTEMPTS: u32 = 3;

/// Settings of the blob cache.
#[derive(Debug, Clone)]
pub struct BlobCacheOptions {
    /// A directory the cache owns.
    pub dir: PathBuf,
    /// Budget on disk.
    pub max_bytes: u64,
    /// A peer that has not sent its first byte within this time, or stops
    /// sending for `idle_timeout`, is abandoned for the object store.
    pub first_byte_timeout: Duration,
    pub idle_timeout: Duration,
    /// A cached file last hashed longer ago than this is hashed again by
    /// the next full read that serves it (its last piece held back until
    /// it matches). Zero: every full read.
    pub reverify_after: Duration,
}

/// Another replica that may hold a blob: the owner of its digest in the
/// mesh.
#[async_trait]
pub trait PeerSource: Send + Sync + fmt::Debug {
    /// The live replica that owns `digest`, when that is not this one.
    fn owner(&self, digest: &Digest) -> Option<String>;
    /// The blob's bytes from `offset` to its end, from `peer`.
    async fn open(&self, peer: &str, digest: &Digest, offset: u64) -> Result<ByteStream, String>;
}

/// A cached blob.
#[derive(Debug)]
struct Entry {
    size: u64,
    tick: u64,
    /// Whether the file on disk matches its digest: known at once for
    /// files this process filled, checked on first use for adopted ones.
    verified: Arc<OnceCell<bool>>,
    /// When the file was last hashed whole (fill, adoption or a serve).
    checked: Instant,
}

#[derive(Debug, Default)]
struct Index {
    entries: HashMap<Digest, Entry>,
    /// Use order: tick -> digest, oldest first.
    lru: BTreeMap<u64, Digest>,
    tick: u64,
    /// Bytes of cached files.
    bytes: u64,
    /// Bytes promised to fills in progress.
    reserved: u64,
}

impl Index {
    fn next_tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    fn touch(&mut self, digest: &Digest) -> Option<(u64, Arc<OnceCell<bool>>, Instant)> {
        let tick = self.next_tick();
        let e = self.entries.get_mut(digest)?;
        self.lru.remove(&e.tick);
        e.tick = tick;
        self.lru.insert(tick, digest.clone());
        Some((e.size, e.verified.clone(), e.checked))
    }

    fn insert(&mut self, digest: Digest, size: u64, verified: Arc<OnceCell<bool>>) {
        self.remove(&digest);
        let tick = self.next_tick();
        self.lru.insert(tick, digest.clone());
        self.bytes += size;
        self.entries.insert(digest, Entry { size, tick, verified, checked: Instant::now() });
    }

    fn remove(&mut self, digest: &Digest) -> bool {
        match self.entries.remove(digest) {
            Some(e) => {
                self.lru.remove(&e.tick);
                self.bytes -= e.size;
                true
            }
            None => false,
        }
    }

    /// Make room for `size` more bytes, evicting the least recently used;
    /// returns the evicted digests, or `None` (nothing evicted) when even
    /// an empty cache could not hold them next to the fills in progress.
    fn reserve(&mut self, size: u64, max: u64) -> Option<Vec<Digest>> {
        if self.reserved.saturating_add(size) > max {
            return None;
        }
        let mut evicted = Vec::new();
        while self.bytes + self.reserved + size > max {
            let (_, oldest) = self.lru.pop_first()?;
            if let Some(e) = self.entries.remove(&oldest) {
                self.bytes -= e.size;
            }
            evicted.push(oldest);
        }
        self.reserved += size;
        Some(evicted)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    /// Verified and in the cache.
    Done,
    /// Upstream failed for good: readers continue from the object store.
    Failed,
    /// The local file could not be written: readers continue from the
    /// object store.
    Spilled,
    /// The bytes did not match the digest.
    Corrupt,
}

#[derive(Debug, Clone, Copy)]
struct Progress {
    written: u64,
    phase: Phase,
}

/// A fill in progress.
#[derive(Debug)]
struct Fill {
    size: u64,
    /// The temporary file, opened before anyone reads it: readers keep
    /// reading through the rename (or the removal) at the end.
    file: Arc<File>,
    progress: watch::Sender<Progress>,
}

/// A blob, or `range` of it, straight from the object store.
pub async fn store_read(
    store: &dyn ObjectStore,
    digest: &Digest,
    range: Option<Range<u64>>,
) -> Result<BlobRead, StorageError> {
    let got = store.get(&keys::blob(digest), range).await?;
    Ok(BlobRead { size: got.meta.size, range: got.range, body: got.body })
}

/// How a read that missed the cache goes on.
enum Start {
    Fill(Arc<Fill>),
    /// A fill finished meanwhile: look again.
    Cached,
    /// Too big for the budget, or the disk refuses: read upstream directly.
    PassThrough,
}

/// The blob cache of one replica.
pub struct BlobCache {
    opts: BlobCacheOptions,
    store: Arc<dyn ObjectStore>,
    peers: OnceLock<Arc<dyn PeerSource>>,
    index: Mutex<Index>,
    fills: Mutex<HashMap<Digest, Arc<Fill>>>,
}

impl fmt::Debug for BlobCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobCache").field("dir", &self.opts.dir).field("max_bytes", &self.opts.max_bytes).finish()
    }
}

/// What a blob cache holds, for status and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheUsage {
    pub blobs: usize,
    pub bytes: u64,
    pub fills: usize,
}

fn cache_err(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> StorageError {
    StorageError::Backend { backend: BACKEND, source: e.into() }
}

impl BlobCache {
    /// Open (creating) the cache directory and rebuild the index from the
    /// files in it. Blocking: call it before serving.
    pub fn open(store: Arc<dyn ObjectStore>, opts: BlobCacheOptions) -> io::Result<BlobCache> {
        let blobs = opts.dir.join("blobs");
        let tmp = opts.dir.join("tmp");
        std::fs::create_dir_all(&blobs)?;
        std::fs::create_dir_all(&tmp)?;
        // Fills a crash interrupted: never served, never adopted.
        for e in std::fs::read_dir(&tmp)? {
            let e = e?;
            let _ = std::fs::remove_file(e.path());
        }
        let mut found: Vec<(SystemTime, Digest, u64)> = Vec::new();
        for alg in std::fs::read_dir(&blobs)? {
            let alg = alg?;
            let alg_name = alg.file_name().to_string_lossy().into_owned();
            if !alg.file_type()?.is_dir() {
                let _ = std::fs::remove_file(alg.path());
                continue;
            }
            for f in std::fs::read_dir(alg.path())? {
                let f = f?;
                let name = f.file_name().to_string_lossy().into_owned();
                let md = f.metadata()?;
                match format!("{alg_name}:{name}").parse::<Digest>() {
                    Ok(d) if md.is_file() && d.hex() == name => {
                        found.push((md.modified().unwrap_or(SystemTime::UNIX_EPOCH), d, md.len()))
                    }
                    _ => {
                        let _ = if md.is_dir() {
                            std::fs::remove_dir_all(f.path())
                        } else {
                            std::fs::remove_file(f.path())
                        };
                    }
                }
            }
        }
        // Oldest first: the order they were filled in is the best guess of
        // their use order.
        found.sort();
        let mut index = Index::default();
        for (_, d, size) in found {
            index.insert(d, size, Arc::new(OnceCell::new()));
        }
        let cache = BlobCache {
            opts,
            store,
            peers: OnceLock::new(),
            index: Mutex::new(Index::default()),
            fills: Mutex::new(HashMap::new()),
        };
        // A smaller budget than last time: evict down to it.
        let mut evicted = Vec::new();
        while index.bytes > cache.opts.max_bytes {
            let Some((_, d)) = index.lru.pop_first() else { break };
            if let Some(e) = index.entries.remove(&d) {
                index.bytes -= e.size;
            }
            evicted.push(d);
        }
        for d in &evicted {
            let _ = std::fs::remove_file(cache.path(d));
        }
        *cache.lock_index() = index;
        cache.publish_usage();
        Ok(cache)
    }

    /// Fill from the mesh's owners from now on.
    pub fn set_peers(&self, peers: Arc<dyn PeerSource>) {
        let _ = self.peers.set(peers);
    }

    fn lock_index(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_fills(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, Arc<Fill>>> {
        self.fills.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn path(&self, d: &Digest) -> PathBuf {
        self.opts.dir.join("blobs").join(d.algorithm().as_str()).join(d.hex())
    }

    /// Where a cached blob lives on disk (tests damage it there).
    pub fn file_path(&self, d: &Digest) -> PathBuf {
        self.path(d)
    }

    pub fn usage(&self) -> CacheUsage {
        let fills = self.lock_fills().len();
        let i = self.lock_index();
        CacheUsage { blobs: i.entries.len(), bytes: i.bytes, fills }
    }

    fn publish_usage(&self) {
        let u = self.usage();
        let m = metrics::get();
        m.blob_cache_bytes.store(u.bytes, Ordering::Relaxed);
        m.blob_cache_blobs.store(u.blobs as u64, Ordering::Relaxed);
        m.blob_cache_fills_in_flight.store(u.fills as u64, Ordering::Relaxed);
        m.blob_cache_max_bytes.store(self.opts.max_bytes, Ordering::Relaxed);
    }

    /// The size of a blob, when cached (no upstream request).
    pub fn cached_size(&self, d: &Digest) -> Option<u64> {
        self.lock_index().entries.get(d).map(|e| e.size)
    }

    /// Drop a blob from the index and the disk.
    fn discard(&self, d: &Digest) {
        if self.lock_index().remove(d) {
            let _ = std::fs::remove_file(self.path(d));
        }
        self.publish_usage();
    }

    /// Read a blob, or `range` of it. `via_peer`: a peer asks, so a fill
    /// reads the object store, never another peer.
    pub async fn read(
        self: &Arc<Self>,
        digest: &Digest,
        range: Option<Range<u64>>,
        via_peer: bool,
    ) -> Result<BlobRead, StorageError> {
        let m = metrics::get();
        metrics::inc(&m.blob_cache_requests);
        // A few rounds at most: a fill may finish between the look-up and
        // the start of another.
        for _ in 0..3 {
            if let Some(read) = self.try_cached(digest, range.clone()).await? {
                return Ok(read);
            }
            let fill = match self.join_or_start(digest, via_peer).await? {
                Start::Fill(fill) => fill,
                Start::Cached => continue,
                Start::PassThrough => break,
            };
            metrics::inc(&m.blob_cache_misses);
            let size = fill.size;
            let range = match range {
                None => 0..size,
                Some(r) if r.start < size => r.start..r.end.min(size),
                Some(_) => return Err(StorageError::InvalidRange { size }),
            };
            if range.start > fill.progress.borrow().written + AHEAD {
                // Far beyond what has arrived: read that range from the
                // object store rather than wait for the fill to reach it
                // (the fill goes on for the next readers).
                metrics::inc(&m.blob_cache_store_gets);
                return store_read(self.store.as_ref(), digest, Some(range)).await;
            }
            return Ok(BlobRead { size, range: range.clone(), body: self.follow(digest.clone(), fill, range) });
        }
        // Pass-through: today's behaviour.
        metrics::inc(&m.blob_cache_misses);
        metrics::inc(&m.blob_cache_passthrough);
        metrics::inc(&m.blob_cache_store_gets);
        store_read(self.store.as_ref(), digest, range).await
    }

    /// Serve from the cache, if the blob is there and sound.
    async fn try_cached(
        self: &Arc<Self>,
        digest: &Digest,
        range: Option<Range<u64>>,
    ) -> Result<Option<BlobRead>, StorageError> {
        let m = metrics::get();
        let touched = self.lock_index().touch(digest);
        if let Some((size, verified, checked)) = touched {
            let this = self.clone();
            let d = digest.clone();
            let ok = *verified.get_or_init(|| async move { this.verify_file(&d, size).await }).await;
            if ok {
                let recheck = checked.elapsed() >= self.opts.reverify_after;
                match self.open_cached(digest, size, range.clone(), recheck).await {
                    Ok(read) => {
                        metrics::inc(&m.blob_cache_hits);
                        metrics::inc(&m.blob_cache_store_gets_saved);
                        return Ok(Some(read));
                    }
                    Err(StorageError::InvalidRange { size }) => return Err(StorageError::InvalidRange { size }),
                    Err(e) => {
                        tracing::warn!(%digest, error = %e, "cached blob unreadable; discarded");
                        self.discard(digest);
                    }
                }
            }
        }
        Ok(None)
    }

    /// Hash an adopted file once before it is served.
    async fn verify_file(&self, d: &Digest, size: u64) -> bool {
        let path = self.path(d);
        let want = d.clone();
        let ok = tokio::task::spawn_blocking(move || -> io::Result<bool> {
            let file = File::open(&path)?;
            if file.metadata()?.len() != size {
                return Ok(false);
            }
            let mut hasher = ResumableHasher::new(want.algorithm());
            let mut buf = vec![0u8; 1 << 20];
            let mut pos = 0u64;
            while pos < size {
                let n = file.read_at(&mut buf, pos)?;
                if n == 0 {
                    return Ok(false);
                }
                hasher.update(&buf[..n]);
                pos += n as u64;
            }
            Ok(hasher.finish() == want)
        })
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)))
        .unwrap_or(false);
        if !ok {
            tracing::warn!(digest = %d, "cached blob does not match its digest; discarded and fetched again");
            metrics::inc(&metrics::get().blob_cache_corrupt);
            self.discard(d);
        }
        ok
    }

    /// Serve a cached file; with `recheck`, a full read is hashed on the
    /// way and its last piece released only if the digest matches.
    async fn open_cached(
        self: &Arc<Self>,
        digest: &Digest,
        size: u64,
        range: Option<Range<u64>>,
        recheck: bool,
    ) -> Result<BlobRead, StorageError> {
        let path = self.path(digest);
        let file = tokio::task::spawn_blocking(move || -> io::Result<(File, u64)> {
            let f = File::open(&path)?;
            let len = f.metadata()?.len();
            Ok((f, len))
        })
        .await
        .map_err(cache_err)?;
        let (file, len) = file.map_err(cache_err)?;
        if len != size {
            return Err(cache_err(format!("cached file has {len} bytes, {size} expected")));
        }
        let range = match range {
            None => 0..size,
            Some(r) if r.start < size || (size == 0 && r.start == 0) => r.start..r.end.min(size),
            Some(_) => return Err(StorageError::InvalidRange { size }),
        };
        let full = range.start == 0 && range.end == size && recheck;
        let body = berth_storage_fs::stream_file(Arc::new(file), range.clone()).map(|r| {
            let piece = r.map_err(cache_err)?;
            metrics::get().blob_cache_served_bytes.fetch_add(piece.len() as u64, Ordering::Relaxed);
            Ok(piece)
        });
        if !full {
            return Ok(BlobRead { size, range, body: body.boxed() });
        }
        let this = self.clone();
        let digest = digest.clone();
        let mut hasher = ResumableHasher::new(digest.algorithm());
        let mut seen = 0u64;
        let checked = body.map(move |piece| {
            let piece = piece?;
            hasher.update(&piece);
            seen += piece.len() as u64;
            if seen == size {
                if hasher.finish() != digest {
                    tracing::warn!(%digest, "cached blob damaged on disk; discarded, the download fails");
                    metrics::inc(&metrics::get().blob_cache_corrupt);
                    this.discard(&digest);
                    return Err(cache_err("cached blob does not match its digest"));
                }
                if let Some(e) = this.lock_index().entries.get_mut(&digest) {
                    e.checked = Instant::now();
                }
            }
            Ok(piece)
        });
        Ok(BlobRead { size, range, body: checked.boxed() })
    }

    /// The fill of `digest`: one in progress, or a new one. `None` means
    /// pass through (too big for the budget, or the disk refuses).
    async fn join_or_start(self: &Arc<Self>, digest: &Digest, via_peer: bool) -> Result<Start, StorageError> {
        if let Some(f) = self.lock_fills().get(digest) {
            metrics::inc(&metrics::get().blob_cache_fill_joins);
            metrics::inc(&metrics::get().blob_cache_store_gets_saved);
            return Ok(Start::Fill(f.clone()));
        }
        let size = self.store.head(&keys::blob(digest)).await?.size;
        let mut fills = self.lock_fills();
        if let Some(f) = fills.get(digest) {
            metrics::inc(&metrics::get().blob_cache_fill_joins);
            metrics::inc(&metrics::get().blob_cache_store_gets_saved);
            return Ok(Start::Fill(f.clone()));
        }
        let evicted = {
            let mut index = self.lock_index();
            if index.entries.contains_key(digest) {
                return Ok(Start::Cached);
            }
            match index.reserve(size, self.opts.max_bytes) {
                Some(evicted) => evicted,
                None => return Ok(Start::PassThrough),
            }
        };
        for d in &evicted {
            let _ = std::fs::remove_file(self.path(d));
        }
        metrics::get().blob_cache_evictions.fetch_add(evicted.len() as u64, Ordering::Relaxed);
        let temp = self.opts.dir.join("tmp").join(uuid::Uuid::new_v4().to_string());
        let file = match std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&temp) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, dir = %self.opts.dir.display(), "cannot create a cache file; passing the blob through");
                self.lock_index().reserved -= size;
                return Ok(Start::PassThrough);
            }
        };
        let (tx, _) = watch::channel(Progress { written: 0, phase: Phase::Running });
        let fill = Arc::new(Fill { size, file: Arc::new(file), progress: tx });
        fills.insert(digest.clone(), fill.clone());
        drop(fills);
        let peer = if via_peer { None } else { self.peers.get().and_then(|p| p.owner(digest).map(|o| (p.clone(), o))) };
        let this = self.clone();
        let d = digest.clone();
        let f = fill.clone();
        tokio::spawn(async move {
            let task = tokio::spawn(this.clone().run_fill(d.clone(), f.clone(), temp, peer));
            if task.await.is_err() {
                // A panic must not leave readers waiting for a verdict.
                this.lock_index().reserved -= f.size;
                this.lock_fills().remove(&d);
                f.progress.send_modify(|p| p.phase = Phase::Failed);
            }
        });
        self.publish_usage();
        Ok(Start::Fill(fill))
    }

    /// The fill task: read upstream once into the temporary file.
    async fn run_fill(
        self: Arc<Self>,
        digest: Digest,
        fill: Arc<Fill>,
        temp: PathBuf,
        peer: Option<(Arc<dyn PeerSource>, String)>,
    ) {
        let m = metrics::get();
        let size = fill.size;
        let mut hasher = ResumableHasher::new(digest.algorithm());
        let mut written = 0u64;
        let mut peer = peer;
        let mut store_failures = 0u32;
        let mut store_gets = 0u32;
        let phase = 'fill: loop {
            if written == size {
                break 'fill if hasher.finish() == digest { Phase::Done } else { Phase::Corrupt };
            }
            // Open upstream at `written`.
            let from_peer = peer.is_some();
            let opened: Result<ByteStream, String> = match &peer {
                Some((p, owner)) => {
                    metrics::inc(&m.mesh_peer_fetches);
                    p.open(owner, &digest, written).await
                }
                None => {
                    metrics::inc(&m.blob_cache_store_gets);
                    store_gets += 1;
                    self.store
                        .get(&keys::blob(&digest), Some(written..size))
                        .await
                        .map(|g| g.body)
                        .map_err(|e| e.to_string())
                }
            };
            let mut body = match opened {
                Ok(b) => b,
                Err(e) => {
                    if let Some((_, owner)) = peer.take() {
                        tracing::info!(%digest, peer = %owner, error = %e, "peer fetch failed; reading the object store");
                        metrics::inc(&m.mesh_peer_fallbacks);
                        continue;
                    }
                    store_failures += 1;
                    tracing::warn!(%digest, error = %e, attempt = store_failures, "blob fill: object store read failed");
                    if store_failures >= STORE_ATTEMPTS {
                        break 'fill Phase::Failed;
                    }
                    continue;
                }
            };
            // Pull bytes until the end or a failure.
            let mut first = true;
            loop {
                let wait = if !from_peer {
                    None
                } else if first {
                    Some(self.opts.first_byte_timeout)
                } else {
                    Some(self.opts.idle_timeout)
                };
                let next = match wait {
                    Some(w) => match tokio::time::timeout(w, body.next()).await {
                        Ok(n) => n,
                        Err(_) => Some(Err(cache_err(format!("no bytes for {w:?}")))),
                    },
                    None => body.next().await,
                };
                first = false;
                match next {
                    Some(Ok(piece)) => {
                        if piece.is_empty() {
                            continue;
                        }
                        if written + piece.len() as u64 > size {
                            // More than the object store says the blob has.
                            break 'fill Phase::Corrupt;
                        }
                        let f = fill.file.clone();
                        let at = written;
                        let data = piece.clone();
                        let wrote = tokio::task::spawn_blocking(move || f.write_all_at(&data, at))
                            .await
                            .unwrap_or_else(|e| Err(io::Error::other(e)));
                        if let Err(e) = wrote {
                            tracing::warn!(%digest, error = %e, "cannot write the blob cache; passing bytes through");
                            break 'fill Phase::Spilled;
                        }
                        hasher.update(&piece);
                        written += piece.len() as u64;
                        metrics::get().blob_cache_filled_bytes.fetch_add(piece.len() as u64, Ordering::Relaxed);
                        fill.progress.send_modify(|p| p.written = written);
                    }
                    Some(Err(e)) => {
                        if let Some((_, owner)) = peer.take() {
                            tracing::info!(%digest, peer = %owner, at = written, error = %e, "peer stream failed; resuming from the object store");
                            metrics::inc(&m.mesh_peer_fallbacks);
                        } else {
                            store_failures += 1;
                            tracing::warn!(%digest, at = written, error = %e, attempt = store_failures, "blob fill: object store stream failed");
                            if store_failures >= STORE_ATTEMPTS {
                                break 'fill Phase::Failed;
                            }
                        }
                        continue 'fill;
                    }
                    None => {
                        if written < size {
                            // Upstream ended early: resume like a failure.
                            if let Some((_, owner)) = peer.take() {
                                tracing::info!(%digest, peer = %owner, at = written, "peer stream ended early; resuming from the object store");
                                metrics::inc(&m.mesh_peer_fallbacks);
                            } else {
                                store_failures += 1;
                                if store_failures >= STORE_ATTEMPTS {
                                    break 'fill Phase::Failed;
                                }
                            }
                        }
                        continue 'fill;
                    }
                }
            }
        };
        if phase == Phase::Done && store_gets == 0 {
            // The owner served it: this replica's read cost the bucket nothing.
            metrics::inc(&m.blob_cache_store_gets_saved);
        }
        let final_path = self.path(&digest);
        let phase = if phase == Phase::Done {
            let renamed = (|| -> io::Result<()> {
                std::fs::create_dir_all(final_path.parent().unwrap_or(Path::new(".")))?;
                std::fs::rename(&temp, &final_path)
            })();
            match renamed {
                Ok(()) => {
                    let mut index = self.lock_index();
                    index.reserved -= size;
                    index.insert(digest.clone(), size, Arc::new(OnceCell::new_with(Some(true))));
                    Phase::Done
                }
                Err(e) => {
                    tracing::warn!(%digest, error = %e, "cannot keep the filled blob; it was served anyway");
                    self.lock_index().reserved -= size;
                    let _ = std::fs::remove_file(&temp);
                    // Readers have every byte in the open file.
                    Phase::Done
                }
            }
        } else {
            if phase == Phase::Corrupt {
                tracing::error!(%digest, "upstream bytes do not match the digest; nothing cached");
                metrics::inc(&m.blob_cache_corrupt);
            }
            self.lock_index().reserved -= size;
            let _ = std::fs::remove_file(&temp);
            phase
        };
        // Unlisted before the verdict goes out: a reader that saw a failed
        // fill and asks again starts a new one rather than joining it.
        self.lock_fills().remove(&digest);
        fill.progress.send_modify(|p| p.phase = phase);
        self.publish_usage();
    }

    /// Stream `range` of a fill in progress as it grows.
    fn follow(self: &Arc<Self>, digest: Digest, fill: Arc<Fill>, range: Range<u64>) -> ByteStream {
        struct Reader {
            cache: Arc<BlobCache>,
            digest: Digest,
            fill: Arc<Fill>,
            rx: watch::Receiver<Progress>,
            pos: u64,
            end: u64,
            rest: Option<ByteStream>,
            done: bool,
        }
        impl Reader {
            /// Read the rest of the range from the object store.
            async fn rest_from_store(&mut self) -> Result<(), StorageError> {
                metrics::inc(&metrics::get().blob_cache_store_gets);
                match self.cache.store.get(&keys::blob(&self.digest), Some(self.pos..self.end)).await {
                    Ok(got) => {
                        self.rest = Some(got.body);
                        Ok(())
                    }
                    Err(e) => {
                        self.done = true;
                        Err(e)
                    }
                }
            }
        }
        let rx = fill.progress.subscribe();
        let reader =
            Reader { cache: self.clone(), digest, fill, rx, pos: range.start, end: range.end, rest: None, done: false };
        futures::stream::unfold(reader, |mut r| async move {
            if r.done {
                return None;
            }
            loop {
                if let Some(rest) = r.rest.as_mut() {
                    return rest.next().await.map(|item| (item, r));
                }
                if r.pos >= r.end {
                    return None;
                }
                let p = *r.rx.borrow_and_update();
                match p.phase {
                    Phase::Corrupt => {
                        r.done = true;
                        return Some((Err(cache_err("the blob's bytes do not match its digest")), r));
                    }
                    Phase::Failed | Phase::Spilled if p.written <= r.pos => {
                        // Read the rest of the range from the object store.
                        if let Err(e) = r.rest_from_store().await {
                            return Some((Err(e), r));
                        }
                        continue;
                    }
                    _ => {}
                }
                let avail = p.written.min(r.end);
                if r.pos < avail {
                    let len = (avail - r.pos).min(CHUNK);
                    let last = r.pos + len == r.fill.size;
                    // The blob's last piece waits for the verdict, unless
                    // the fill gave up (then the caller gets unverified
                    // bytes, as without a cache).
                    if !(last && p.phase == Phase::Running) {
                        match berth_storage_fs::read_at(&r.fill.file, r.pos, len as usize).await {
                            Ok(bytes) => {
                                metrics::get().blob_cache_served_bytes.fetch_add(len, Ordering::Relaxed);
                                r.pos += len;
                                return Some((Ok(bytes), r));
                            }
                            Err(e) => {
                                tracing::warn!(digest = %r.digest, error = %e, "reading a fill failed; reading the object store");
                                if let Err(e) = r.rest_from_store().await {
                                    return Some((Err(e), r));
                                }
                                continue;
                            }
                        }
                    }
                }
                if p.phase != Phase::Running {
                    // Done with bytes short of our range cannot happen;
                    // failed phases were handled above once caught up.
                    if p.phase == Phase::Done && p.written < r.end {
                        r.done = true;
                        return Some((Err(cache_err("fill ended short")), r));
                    }
                    continue;
                }
                // The reader holds the sender too, so this only waits.
                let _ = r.rx.changed().await;
            }
        })
        .boxed()
    }
}
