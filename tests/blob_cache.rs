//! The blob cache through the library, over a store whose reads can be
//! paused, cut or corrupted, and a stand-in mesh peer: one upstream read
//! for many readers, readers streaming a fill as it grows, ranges, the
//! byte budget, damaged files (on restart and while serving), a crash's
//! leftovers, a disk that refuses, upstream failures and lying upstreams,
//! and peers that are silent or fail mid-stream.

#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use berth::oci::Digest;
use berth::registry::blobcache::{BlobCache, BlobCacheOptions, PeerSource};
use berth::registry::keys;
use berth_storage::{
    ByteStream, GetResult, ListPage, MultipartUpload, ObjectMeta, ObjectStore, PartLimits, PartReceipt, PutMode,
    Result, StorageError,
};
use bytes::Bytes;
use futures::StreamExt;

const MIB: usize = 1024 * 1024;

fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect()
}

/// What the next GET of the store does.
#[derive(Clone)]
enum Fault {
    /// Send `after` bytes, then wait for the notify.
    Pause { after: usize, release: Arc<tokio::sync::Notify> },
    /// Send `after` bytes, then fail.
    Fail { after: usize },
    /// Flip the byte at `at` (of the object).
    Flip { at: usize },
}

/// A store delegating to `inner`, counting GETs, recording their ranges
/// and applying queued faults to them.
#[derive(Debug)]
struct TestStore {
    inner: Arc<dyn ObjectStore>,
    gets: AtomicU64,
    ranges: Mutex<Vec<Option<Range<u64>>>>,
    faults: Mutex<VecDeque<FaultBox>>,
}

struct FaultBox(Fault);

impl std::fmt::Debug for FaultBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Fault")
    }
}

impl TestStore {
    fn new(inner: Arc<dyn ObjectStore>) -> Arc<TestStore> {
        Arc::new(TestStore { inner, gets: AtomicU64::new(0), ranges: Mutex::default(), faults: Mutex::default() })
    }
    fn gets(&self) -> u64 {
        self.gets.load(Ordering::SeqCst)
    }
    fn push_fault(&self, f: Fault) {
        self.faults.lock().unwrap().push_back(FaultBox(f));
    }
}

/// Re-chunk a body into pieces of at most 64 KiB and apply a fault.
fn apply(body: ByteStream, start: u64, fault: Option<Fault>) -> ByteStream {
    let pieces = body.flat_map(|r| {
        let v: Vec<Result<Bytes>> = match r {
            Ok(b) => (0..b.len()).step_by(64 * 1024).map(|i| Ok(b.slice(i..(i + 64 * 1024).min(b.len())))).collect(),
            Err(e) => vec![Err(e)],
        };
        futures::stream::iter(v)
    });
    let Some(fault) = fault else { return pieces.boxed() };
    let state = (pieces.boxed(), start as usize, fault, false);
    futures::stream::unfold(state, |(mut body, pos, fault, done)| async move {
        if done {
            return None;
        }
        match &fault {
            Fault::Pause { after, release } if pos >= *after => {
                release.notified().await;
                let next = body.next().await?;
                let len = next.as_ref().map(|b| b.len()).unwrap_or(0);
                // Released: no more pausing.
                Some((next, (body, pos + len, Fault::Flip { at: usize::MAX }, false)))
            }
            Fault::Fail { after } if pos >= *after => Some((
                Err(StorageError::Unavailable { backend: "test", source: "cut".into() }),
                (body, pos, fault, true),
            )),
            _ => {
                let next = body.next().await?;
                match next {
                    Ok(b) => {
                        let len = b.len();
                        let b = match &fault {
                            Fault::Flip { at } if (pos..pos + len).contains(at) => {
                                let mut v = b.to_vec();
                                v[at - pos] ^= 0xff;
                                Bytes::from(v)
                            }
                            _ => b,
                        };
                        Some((Ok(b), (body, pos + len, fault, false)))
                    }
                    Err(e) => Some((Err(e), (body, pos, fault, true))),
                }
            }
        }
    })
    .boxed()
}

#[async_trait]
impl ObjectStore for TestStore {
    fn backend(&self) -> &'static str {
        "test"
    }
    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        self.inner.head(key).await
    }
    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<GetResult> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        self.ranges.lock().unwrap().push(range.clone());
        let fault = self.faults.lock().unwrap().pop_front().map(|f| f.0);
        let got = self.inner.get(key, range).await?;
        let start = got.range.start;
        Ok(GetResult { meta: got.meta, range: got.range, body: apply(got.body, start, fault) })
    }
    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<ObjectMeta> {
        self.inner.put(key, data, mode).await
    }
    async fn delete(&self, key: &str) -> Result<()> {
        self.inner.delete(key).await
    }
    async fn list(&self, prefix: &str, start_after: Option<&str>, limit: usize) -> Result<ListPage> {
        self.inner.list(prefix, start_after, limit).await
    }
    async fn copy(&self, from: &str, to: &str) -> Result<ObjectMeta> {
        self.inner.copy(from, to).await
    }
    async fn create_multipart(&self) -> Result<MultipartUpload> {
        self.inner.create_multipart().await
    }
    async fn put_part(&self, upload: &MultipartUpload, number: u32, offset: u64, data: Bytes) -> Result<PartReceipt> {
        self.inner.put_part(upload, number, offset, data).await
    }
    async fn complete_multipart(
        &self,
        upload: &MultipartUpload,
        parts: &[PartReceipt],
        dest: &str,
    ) -> Result<ObjectMeta> {
        self.inner.complete_multipart(upload, parts, dest).await
    }
    fn part_limits(&self) -> PartLimits {
        self.inner.part_limits()
    }
    async fn abort_multipart(&self, upload: &MultipartUpload) -> Result<()> {
        self.inner.abort_multipart(upload).await
    }
    async fn list_multipart(&self) -> Result<Vec<(MultipartUpload, SystemTime)>> {
        self.inner.list_multipart().await
    }
}

struct Setup {
    _store_dir: tempfile::TempDir,
    cache_dir: tempfile::TempDir,
    store: Arc<TestStore>,
    reverify_after: Duration,
}

fn setup() -> Setup {
    let store_dir = tempfile::tempdir().unwrap();
    let fs = berth_storage_fs::FsStore::open(
        store_dir.path(),
        berth_storage_fs::FsOptions { fsync: false, direct_io: false },
    )
    .unwrap();
    Setup {
        _store_dir: store_dir,
        cache_dir: tempfile::tempdir().unwrap(),
        store: TestStore::new(Arc::new(fs)),
        reverify_after: Duration::from_secs(3600),
    }
}

impl Setup {
    fn cache(&self, max_bytes: u64) -> Arc<BlobCache> {
        self.cache_at(self.cache_dir.path(), max_bytes)
    }
    fn cache_at(&self, dir: &Path, max_bytes: u64) -> Arc<BlobCache> {
        let opts = BlobCacheOptions {
            dir: dir.to_owned(),
            max_bytes,
            first_byte_timeout: Duration::from_millis(300),
            idle_timeout: Duration::from_millis(300),
            reverify_after: self.reverify_after,
        };
        Arc::new(BlobCache::open(self.store.clone(), opts).unwrap())
    }
    async fn blob(&self, len: usize, seed: u64) -> (Digest, Vec<u8>) {
        let data = noise(len, seed);
        let d = Digest::sha256(&data);
        self.store.put(&keys::blob(&d), Bytes::from(data.clone()), PutMode::Overwrite).await.unwrap();
        (d, data)
    }
}

async fn collect(body: ByteStream) -> std::result::Result<Vec<u8>, StorageError> {
    let mut out = Vec::new();
    let mut body = body;
    while let Some(piece) = body.next().await {
        out.extend_from_slice(&piece?);
    }
    Ok(out)
}

async fn read_all(cache: &Arc<BlobCache>, d: &Digest) -> std::result::Result<Vec<u8>, StorageError> {
    collect(cache.read(d, None, false).await?.body).await
}

fn files_in(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|r| r.count()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_readers_share_one_upstream_read() {
    let s = setup();
    let cache = s.cache(64 * MIB as u64);
    let (d, data) = s.blob(8 * MIB + 123, 1).await;
    let readers: Vec<_> = (0..32)
        .map(|_| {
            let cache = cache.clone();
            let d = d.clone();
            tokio::spawn(async move { read_all(&cache, &d).await.unwrap() })
        })
        .collect();
    for r in readers {
        assert!(r.await.unwrap() == data, "a reader got other bytes");
    }
    assert_eq!(s.store.gets(), 1, "32 readers of one blob must cost one GET");
    assert_eq!(cache.usage().blobs, 1);
    assert_eq!(cache.usage().fills, 0);
    // Now a hit: no GET.
    assert!(read_all(&cache, &d).await.unwrap() == data);
    // A range from the cached file.
    let r = cache.read(&d, Some(100..5000), false).await.unwrap();
    assert_eq!(r.range, 100..5000);
    assert!(collect(r.body).await.unwrap() == data[100..5000]);
    // A range past the end is refused with the size.
    match cache.read(&d, Some(data.len() as u64..data.len() as u64 + 10), false).await {
        Err(StorageError::InvalidRange { size }) => assert_eq!(size, data.len() as u64),
        other => panic!("expected InvalidRange, got {:?}", other.map(|r| r.range)),
    }
    assert_eq!(s.store.gets(), 1);
    assert_eq!(files_in(&s.cache_dir.path().join("tmp")), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_stream_a_fill_as_it_grows() {
    let s = setup();
    let cache = s.cache(64 * MIB as u64);
    let (d, data) = s.blob(4 * MIB, 2).await;
    let release = Arc::new(tokio::sync::Notify::new());
    s.store.push_fault(Fault::Pause { after: MIB, release: release.clone() });
    // The first reader gets the first MiB while the fill is held upstream.
    let mut first = cache.read(&d, None, false).await.unwrap().body;
    let mut got = Vec::new();
    while got.len() < MIB {
        got.extend_from_slice(&first.next().await.unwrap().unwrap());
    }
    // A second reader follows the same fill and gets the same MiB.
    let mut second = cache.read(&d, None, false).await.unwrap().body;
    let mut got2 = Vec::new();
    while got2.len() < MIB {
        got2.extend_from_slice(&second.next().await.unwrap().unwrap());
    }
    assert!(got2[..MIB] == data[..MIB]);
    // A range inside what has arrived is answered from the fill in progress.
    let r = cache.read(&d, Some(1000..200_000), false).await.unwrap();
    assert!(collect(r.body).await.unwrap() == data[1000..200_000]);
    assert_eq!(cache.usage().fills, 1, "the fill is still in progress");
    assert_eq!(s.store.gets(), 1);
    release.notify_one();
    got.extend(collect(first).await.unwrap());
    got2.extend(collect(second).await.unwrap());
    assert!(got == data && got2 == data);
    assert_eq!(s.store.gets(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_far_ahead_of_a_fill_is_read_from_the_object_store() {
    let s = setup();
    let cache = s.cache(128 * MIB as u64);
    let (d, data) = s.blob(40 * MIB, 22).await;
    let release = Arc::new(tokio::sync::Notify::new());
    s.store.push_fault(Fault::Pause { after: MIB, release: release.clone() });
    let mut first = cache.read(&d, None, false).await.unwrap().body;
    let mut got = Vec::new();
    while got.len() < MIB {
        got.extend_from_slice(&first.next().await.unwrap().unwrap());
    }
    // The fill is held at 1 MiB; the last 100 bytes do not wait for it.
    let end = data.len() as u64;
    let r = cache.read(&d, Some(end - 100..end), false).await.unwrap();
    assert_eq!(r.range, end - 100..end);
    assert!(collect(r.body).await.unwrap() == data[data.len() - 100..]);
    assert_eq!(s.store.gets(), 2);
    release.notify_one();
    got.extend(collect(first).await.unwrap());
    assert!(got == data);
    assert_eq!(cache.usage().blobs, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_fails_mid_fill_is_resumed_where_it_stopped() {
    let s = setup();
    let cache = s.cache(64 * MIB as u64);
    let (d, data) = s.blob(6 * MIB, 3).await;
    s.store.push_fault(Fault::Fail { after: 3 * MIB });
    assert!(read_all(&cache, &d).await.unwrap() == data);
    assert_eq!(s.store.gets(), 2);
    let ranges = s.store.ranges.lock().unwrap().clone();
    assert_eq!(ranges[1], Some(3 * MIB as u64..6 * MIB as u64), "resumed at the failure: {ranges:?}");
    assert_eq!(cache.usage().blobs, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_that_do_not_match_the_digest_are_never_released_whole_or_kept() {
    let s = setup();
    let cache = s.cache(64 * MIB as u64);
    let (d, data) = s.blob(2 * MIB, 4).await;
    s.store.push_fault(Fault::Flip { at: MIB });
    let a = cache.read(&d, None, false).await.unwrap();
    let b = cache.read(&d, None, false).await.unwrap();
    assert!(collect(a.body).await.is_err(), "a corrupt fill completed a download");
    assert!(collect(b.body).await.is_err(), "a corrupt fill completed a follower's download");
    assert_eq!(cache.usage().blobs, 0);
    assert_eq!(files_in(&s.cache_dir.path().join("tmp")), 0);
    // The next read fills again, from sound bytes.
    assert!(read_all(&cache, &d).await.unwrap() == data);
    assert_eq!(cache.usage().blobs, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_the_cache_and_discards_damage_and_leftovers() {
    let s = setup();
    let (d1, data1) = s.blob(MIB, 5).await;
    let (d2, data2) = s.blob(MIB, 6).await;
    {
        let cache = s.cache(64 * MIB as u64);
        assert!(read_all(&cache, &d1).await.unwrap() == data1);
        assert!(read_all(&cache, &d2).await.unwrap() == data2);
        // Damage d2's file on disk.
        let path = cache.file_path(&d2);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[1234] ^= 1;
        std::fs::write(&path, bytes).unwrap();
    }
    assert_eq!(s.store.gets(), 2);
    // A crash's leftovers: a half-written fill and a stray file.
    std::fs::write(s.cache_dir.path().join("tmp/0000-torn"), b"half a blob").unwrap();
    std::fs::write(s.cache_dir.path().join("blobs/sha256/not-a-digest"), b"junk").unwrap();
    let cache = s.cache(64 * MIB as u64);
    assert_eq!(files_in(&s.cache_dir.path().join("tmp")), 0, "a torn fill survived the restart");
    assert!(!s.cache_dir.path().join("blobs/sha256/not-a-digest").exists());
    assert_eq!(cache.usage().blobs, 2);
    // d1 comes from disk: no GET.
    assert!(read_all(&cache, &d1).await.unwrap() == data1);
    assert_eq!(s.store.gets(), 2);
    // d2 is found damaged before it is served, and fetched again.
    assert!(read_all(&cache, &d2).await.unwrap() == data2);
    assert_eq!(s.store.gets(), 3);
    assert!(read_all(&cache, &d2).await.unwrap() == data2);
    assert_eq!(s.store.gets(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_damaged_while_serving_fails_that_download_once_due_and_is_refetched() {
    // Within the re-check period, cached reads are not hashed again.
    let s = setup();
    let cache = s.cache(64 * MIB as u64);
    let (d, data) = s.blob(MIB + 7, 7).await;
    assert!(read_all(&cache, &d).await.unwrap() == data);
    let damage = |path: &Path| {
        let mut bytes = std::fs::read(path).unwrap();
        bytes[10] ^= 0x80;
        std::fs::write(path, bytes).unwrap();
    };
    damage(&cache.file_path(&d));
    assert!(read_all(&cache, &d).await.unwrap() != data, "the hour-long re-check period was not honoured");
    // With the period over (zero here), the next full read hashes the file.
    let mut s = s;
    s.reverify_after = Duration::ZERO;
    drop(cache);
    let cache = s.cache(64 * MIB as u64);
    // Adoption after a restart finds the damage before serving.
    assert!(read_all(&cache, &d).await.unwrap() == data);
    assert_eq!(s.store.gets(), 2);
    damage(&cache.file_path(&d));
    assert!(read_all(&cache, &d).await.is_err(), "a damaged file was served whole");
    assert!(read_all(&cache, &d).await.unwrap() == data);
    assert_eq!(s.store.gets(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_over_the_budget_passes_through_and_old_blobs_are_evicted() {
    let s = setup();
    let cache = s.cache(3 * MIB as u64);
    let (big, big_data) = s.blob(4 * MIB, 8).await;
    assert!(read_all(&cache, &big).await.unwrap() == big_data);
    assert!(read_all(&cache, &big).await.unwrap() == big_data);
    assert_eq!(s.store.gets(), 2, "a blob over the budget is passed through each time");
    assert_eq!(cache.usage().blobs, 0);
    let mut blobs = Vec::new();
    for seed in 10..13 {
        blobs.push(s.blob(MIB, seed).await);
    }
    for (d, data) in &blobs {
        assert!(read_all(&cache, d).await.unwrap() == *data);
    }
    // Use the first again, then a fourth blob evicts the least recently
    // used: the second.
    assert!(read_all(&cache, &blobs[0].0).await.unwrap() == blobs[0].1);
    let (d4, data4) = s.blob(MIB, 13).await;
    assert!(read_all(&cache, &d4).await.unwrap() == data4);
    let u = cache.usage();
    assert!(u.bytes <= 3 * MIB as u64 && u.blobs == 3, "{u:?}");
    assert!(!cache.file_path(&blobs[1].0).exists(), "the least recently used blob was not evicted");
    let before = s.store.gets();
    assert!(read_all(&cache, &blobs[0].0).await.unwrap() == blobs[0].1);
    assert_eq!(s.store.gets(), before, "a recently used blob was evicted");
    // A smaller budget after a restart evicts down to it.
    drop(cache);
    let cache = s.cache(2 * MIB as u64);
    assert!(cache.usage().bytes <= 2 * MIB as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_that_refuses_passes_bytes_through() {
    let s = setup();
    let cache = s.cache(64 * MIB as u64);
    let (d, data) = s.blob(MIB, 14).await;
    // The fill directory becomes a file: no fill file can be created.
    let tmp = s.cache_dir.path().join("tmp");
    std::fs::remove_dir(&tmp).unwrap();
    std::fs::write(&tmp, b"not a directory").unwrap();
    assert!(read_all(&cache, &d).await.unwrap() == data);
    assert!(read_all(&cache, &d).await.unwrap() == data);
    assert_eq!(cache.usage().blobs, 0);
    assert_eq!(s.store.gets(), 2);
}

/// A stand-in owner: serves blobs from memory, or stays silent, or fails
/// after some bytes.
#[derive(Debug)]
struct FakePeer {
    data: Vec<u8>,
    mode: PeerMode,
    opens: AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum PeerMode {
    Serve,
    Silent,
    FailAfter(usize),
}

#[async_trait]
impl PeerSource for FakePeer {
    fn owner(&self, _digest: &Digest) -> Option<String> {
        Some("peer:1".into())
    }
    async fn open(&self, _peer: &str, _digest: &Digest, offset: u64) -> std::result::Result<ByteStream, String> {
        self.opens.fetch_add(1, Ordering::SeqCst);
        let rest = Bytes::from(self.data[offset as usize..].to_vec());
        match self.mode {
            PeerMode::Serve => Ok(futures::stream::iter(vec![Ok(rest)]).boxed()),
            PeerMode::Silent => Ok(futures::stream::pending().boxed()),
            PeerMode::FailAfter(n) => {
                let first = rest.slice(..n);
                let err = StorageError::Unavailable { backend: "mesh", source: "peer died".into() };
                // Sends n bytes, then stalls past the idle timeout... or fails.
                Ok(futures::stream::iter(vec![Ok(first), Err(err)]).boxed())
            }
        }
    }
}

async fn with_peer(mode: PeerMode) -> (Setup, Arc<BlobCache>, Arc<FakePeer>, Digest, Vec<u8>) {
    let s = setup();
    let cache = s.cache(64 * MIB as u64);
    let (d, data) = s.blob(3 * MIB, 20).await;
    let peer = Arc::new(FakePeer { data: data.clone(), mode, opens: AtomicU64::new(0) });
    cache.set_peers(peer.clone());
    (s, cache, peer, d, data)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_fills_a_replica_without_an_object_store_read() {
    let (s, cache, peer, d, data) = with_peer(PeerMode::Serve).await;
    assert!(read_all(&cache, &d).await.unwrap() == data);
    assert_eq!(peer.opens.load(Ordering::SeqCst), 1);
    assert_eq!(s.store.gets(), 0);
    // A peer's request never goes on to another peer.
    let (d2, data2) = s.blob(MIB, 21).await;
    let r = cache.read(&d2, None, true).await.unwrap();
    assert!(collect(r.body).await.unwrap() == data2);
    assert_eq!(peer.opens.load(Ordering::SeqCst), 1);
    assert_eq!(s.store.gets(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_owner_is_abandoned_for_the_object_store() {
    let (s, cache, peer, d, data) = with_peer(PeerMode::Silent).await;
    assert!(read_all(&cache, &d).await.unwrap() == data);
    assert_eq!(peer.opens.load(Ordering::SeqCst), 1);
    assert_eq!(s.store.gets(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_failing_mid_stream_is_resumed_from_the_object_store() {
    let (s, cache, _peer, d, data) = with_peer(PeerMode::FailAfter(MIB + 5)).await;
    assert!(read_all(&cache, &d).await.unwrap() == data);
    assert_eq!(s.store.gets(), 1);
    let ranges = s.store.ranges.lock().unwrap().clone();
    assert_eq!(ranges, [Some((MIB + 5) as u64..3 * MIB as u64)], "the object store read starts where the peer stopped");
}
