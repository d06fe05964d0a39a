//! Filesystem object store.
//!
//! Each object is one file. A key `a/b/c` is stored at `<root>/a/b/c@`: every
//! segment but the last is a directory and the last gets an `@` suffix, a
//! character keys may not contain, so a key may also be a prefix of another
//! key (`a/b` and `a/b/c`) as on S3. Writes go to a temporary file under
//! `<root>/.tmp`, are optionally fsynced, then renamed into place, so readers
//! see the old object or the new one and never a mix. Multipart uploads are
//! one staging file under `<root>/.uploads` written at each part's offset and
//! renamed into place on completion.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use berth_storage::{
    clip_range, GetResult, ListPage, MultipartUpload, ObjectMeta, ObjectStore, PartLimits, PartReceipt, PutMode,
    Result, StorageError,
};
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;

const BACKEND: &str = "fs";
const OBJECT_SUFFIX: char = '@';
const TMP_DIR: &str = ".tmp";
const UPLOADS_DIR: &str = ".uploads";
/// Read size for streamed gets: large enough to keep syscalls few.
const READ_CHUNK: usize = 256 * 1024;

/// Options of the filesystem store.
#[derive(Debug, Clone, Copy)]
pub struct FsOptions {
    /// fsync files and their directories before a write is acknowledged.
    pub fsync: bool,
    /// Write upload parts with O_DIRECT where the file system allows it
    /// (aligned parts only): the bytes skip the page cache, which costs far
    /// less CPU for large uploads than copying them into it.
    pub direct_io: bool,
}

impl Default for FsOptions {
    fn default() -> Self {
        FsOptions { fsync: true, direct_io: true }
    }
}

/// An [`ObjectStore`] over a local directory.
#[derive(Debug, Clone)]
pub struct FsStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    options: FsOptions,
    /// Cleared when the file system refuses O_DIRECT.
    direct_ok: std::sync::atomic::AtomicBool,
    /// Aligned buffers for O_DIRECT writes, kept for reuse.
    aligned_pool: std::sync::Mutex<Vec<Vec<AlignedBlock>>>,
}

/// Aligned write buffers kept for reuse (one per concurrent write is enough).
const ALIGNED_POOL: usize = 8;

/// O_DIRECT needs buffers, offsets and lengths aligned to the device's
/// logical block; 4 KiB covers the devices in use.
const DIRECT_ALIGN: usize = 4096;

/// A 4 KiB-aligned block, so a `Vec` of them is a buffer O_DIRECT accepts.
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C, align(4096))]
struct AlignedBlock([u8; DIRECT_ALIGN]);

impl std::fmt::Debug for AlignedBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AlignedBlock")
    }
}

fn backend_err(e: io::Error) -> StorageError {
    StorageError::Backend { backend: BACKEND, source: Box::new(e) }
}

fn map_io(key: &str, e: io::Error) -> StorageError {
    if e.kind() == io::ErrorKind::NotFound {
        StorageError::NotFound { key: key.to_owned() }
    } else {
        backend_err(e)
    }
}

/// Checks a key and returns its segments. Keys are `/`-separated, non-empty
/// segments of `[A-Za-z0-9._:+=-]` that do not start with a dot, which rules
/// out `..`, absolute paths and collisions with the store's own files.
fn key_segments(key: &str) -> Result<Vec<&str>> {
    let bad = |reason| StorageError::InvalidKey { key: key.to_owned(), reason };
    if key.is_empty() {
        return Err(bad("empty key"));
    }
    if key.len() > 4096 {
        return Err(bad("key too long"));
    }
    let segments: Vec<&str> = key.split('/').collect();
    for seg in &segments {
        if seg.is_empty() {
            return Err(bad("empty segment"));
        }
        if seg.starts_with('.') {
            return Err(bad("segment starts with a dot"));
        }
        if seg.len() > 255 {
            return Err(bad("segment longer than 255 bytes"));
        }
        if !seg.bytes().all(|b| b.is_ascii_alphanumeric() || b"._:+=-".contains(&b)) {
            return Err(bad("character outside [A-Za-z0-9._:+=-]"));
        }
    }
    Ok(segments)
}

impl FsStore {
    /// Open (creating if needed) a store rooted at `root`.
    pub fn open(root: impl Into<PathBuf>, options: FsOptions) -> io::Result<FsStore> {
        let root = root.into();
        fs::create_dir_all(root.join(TMP_DIR))?;
        fs::create_dir_all(root.join(UPLOADS_DIR))?;
        // Temporary files left by a crash are never visible; clear them.
        for entry in fs::read_dir(root.join(TMP_DIR))? {
            let _ = fs::remove_file(entry?.path());
        }
        let direct_ok = std::sync::atomic::AtomicBool::new(options.direct_io);
        let aligned_pool = std::sync::Mutex::new(Vec::new());
        Ok(FsStore { inner: Arc::new(Inner { root, options, direct_ok, aligned_pool }) })
    }

    /// The directory this store lives in.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| StorageError::Backend { backend: BACKEND, source: Box::new(e) })?
    }
}

impl Inner {
    fn object_path(&self, key: &str) -> Result<PathBuf> {
        let segments = key_segments(key)?;
        let mut path = self.root.clone();
        let (last, dirs) = segments.split_last().expect("split yields at least one segment");
        for d in dirs {
            path.push(d);
        }
        path.push(format!("{last}{OBJECT_SUFFIX}"));
        Ok(path)
    }

    fn upload_path(&self, upload: &MultipartUpload) -> Result<PathBuf> {
        let id = &upload.upload_id;
        if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(StorageError::InvalidKey { key: id.clone(), reason: "malformed upload id" });
        }
        Ok(self.root.join(UPLOADS_DIR).join(id))
    }

    fn temp_path(&self) -> PathBuf {
        self.root.join(TMP_DIR).join(uuid::Uuid::new_v4().to_string())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        if self.options.fsync {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    /// Moves a finished temporary file into place for `key`.
    fn publish(&self, tmp: &Path, key: &str, dest: &Path, mode: PutMode) -> Result<()> {
        let parent = dest.parent().expect("object paths have a parent");
        fs::create_dir_all(parent).map_err(backend_err)?;
        match mode {
            PutMode::Overwrite => fs::rename(tmp, dest).map_err(backend_err)?,
            PutMode::Create => {
                // link(2) fails if the destination exists: an atomic create.
                let linked = fs::hard_link(tmp, dest);
                let _ = fs::remove_file(tmp);
                match linked {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        return Err(StorageError::AlreadyExists { key: key.to_owned() })
                    }
                    Err(e) => return Err(backend_err(e)),
                }
            }
        }
        self.sync_dir(parent).map_err(backend_err)
    }

    /// Write `data` at `offset` with O_DIRECT if it is aligned and the file
    /// system allows it; `Ok(false)` means "write it the ordinary way".
    fn write_direct(&self, path: &Path, id: &str, data: &[u8], offset: u64) -> Result<bool> {
        use std::sync::atomic::Ordering;
        let aligned =
            offset.is_multiple_of(DIRECT_ALIGN as u64) && data.len().is_multiple_of(DIRECT_ALIGN) && !data.is_empty();
        if !aligned || !self.direct_ok.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let flags = rustix::fs::OFlags::WRONLY | rustix::fs::OFlags::DIRECT | rustix::fs::OFlags::CLOEXEC;
        let file = match rustix::fs::open(path, flags, rustix::fs::Mode::empty()) {
            Ok(fd) => File::from(fd),
            Err(rustix::io::Errno::INVAL) => {
                tracing_disabled_direct();
                self.direct_ok.store(false, Ordering::Relaxed);
                return Ok(false);
            }
            Err(e) => return Err(map_io(id, e.into())),
        };
        let mut buf = self.take_aligned(data.len() / DIRECT_ALIGN);
        let bytes: &mut [u8] = &mut bytemuck::cast_slice_mut(&mut buf)[..data.len()];
        bytes.copy_from_slice(data);
        let written = file.write_all_at(bytes, offset).map_err(backend_err);
        self.return_aligned(buf);
        written.map(|()| true)
    }

    /// An aligned buffer of at least `blocks` blocks, reused across writes:
    /// allocating a fresh megabyte on whichever blocking thread runs the write
    /// made the allocator keep per-thread arenas of freed buffers around.
    fn take_aligned(&self, blocks: usize) -> Vec<AlignedBlock> {
        let mut pool = self.aligned_pool.lock().unwrap_or_else(|p| p.into_inner());
        match pool.iter().position(|b| b.len() >= blocks) {
            Some(i) => pool.swap_remove(i),
            None => vec![AlignedBlock([0; DIRECT_ALIGN]); blocks],
        }
    }

    fn return_aligned(&self, buf: Vec<AlignedBlock>) {
        let mut pool = self.aligned_pool.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < ALIGNED_POOL {
            pool.push(buf);
        }
    }

    fn meta(key: &str, md: &fs::Metadata) -> ObjectMeta {
        use std::os::unix::fs::MetadataExt;
        let version = format!("{}.{:09}-{}-{}", md.mtime(), md.mtime_nsec(), md.len(), md.ino());
        ObjectMeta { key: key.to_owned(), size: md.len(), last_modified: md.modified().ok(), version: Some(version) }
    }

    fn put(&self, key: &str, data: &[u8], mode: PutMode) -> Result<ObjectMeta> {
        let dest = self.object_path(key)?;
        let tmp = self.temp_path();
        let write = || -> io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(data)?;
            if self.options.fsync {
                f.sync_all()?;
            }
            Ok(())
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&tmp);
            return Err(backend_err(e));
        }
        self.publish(&tmp, key, &dest, mode)?;
        Ok(ObjectMeta { key: key.to_owned(), size: data.len() as u64, last_modified: None, version: None })
    }

    fn list(&self, prefix: &str, start_after: Option<&str>, limit: usize) -> Result<ListPage> {
        // Walk only the deepest directory the prefix names in full.
        let dir_part = match prefix.rfind('/') {
            Some(i) => &prefix[..i],
            None => "",
        };
        let mut base = self.root.clone();
        if !dir_part.is_empty() {
            match key_segments(dir_part) {
                Ok(segs) => segs.iter().for_each(|s| base.push(s)),
                // No valid key can live under an invalid prefix.
                Err(_) => return Ok(ListPage::default()),
            }
        }
        let mut objects = Vec::new();
        let range = Window { prefix, start_after, want: limit.saturating_add(1) };
        walk_sorted(&base, dir_part, &range, &mut objects).map_err(backend_err)?;
        let next_start_after = if objects.len() > limit {
            objects.truncate(limit);
            objects.last().map(|m| m.key.clone())
        } else {
            None
        };
        Ok(ListPage { objects, next_start_after })
    }
}

/// Read `len` bytes at `pos` of `file`. The read is first tried without
/// blocking (RWF_NOWAIT succeeds when the bytes are in the page cache, the
/// common case for hot layers) on the calling runtime thread; only bytes
/// that need the disk go through the blocking pool. A file shorter than
/// `pos + len` is an `UnexpectedEof` error.
pub async fn read_at(file: &Arc<File>, pos: u64, len: usize) -> io::Result<Bytes> {
    let mut buf = vec![0u8; len];
    let filled = read_cached(file, &mut buf, pos);
    if filled < len {
        let file = file.clone();
        let (returned, result) = tokio::task::spawn_blocking(move || {
            let result = file.read_exact_at(&mut buf[filled..], pos + filled as u64);
            (buf, result)
        })
        .await
        .map_err(io::Error::other)?;
        result?;
        buf = returned;
    }
    Ok(Bytes::from(buf))
}

/// Stream `range` of an open file in pieces of 256 KiB, read as
/// [`read_at`] does; the reads land in the buffers handed to the client.
pub fn stream_file(file: Arc<File>, range: Range<u64>) -> BoxStream<'static, io::Result<Bytes>> {
    let end = range.end;
    futures::stream::iter((range.start..end).step_by(READ_CHUNK))
        .then(move |pos| {
            let file = file.clone();
            let len = (end - pos).min(READ_CHUNK as u64) as usize;
            async move { read_at(&file, pos, len).await }
        })
        .boxed()
}

/// Read what the page cache already holds of `buf.len()` bytes at `pos`
/// without blocking; returns how many bytes were read.
fn read_cached(file: &File, buf: &mut [u8], pos: u64) -> usize {
    let mut filled = 0;
    while filled < buf.len() {
        let mut slices = [io::IoSliceMut::new(&mut buf[filled..])];
        match rustix::io::preadv2(file, &mut slices, pos + filled as u64, rustix::io::ReadWriteFlags::NOWAIT) {
            Ok(0) | Err(_) => break,
            Ok(n) => filled += n,
        }
    }
    filled
}

/// The store has no logger of its own; say once on stderr why uploads take
/// the ordinary path.
fn tracing_disabled_direct() {
    static SAID: std::sync::Once = std::sync::Once::new();
    SAID.call_once(|| {
        eprintln!("berth-storage-fs: the file system refuses O_DIRECT; writing uploads through the page cache")
    });
}

/// Which keys a listing wants.
struct Window<'a> {
    prefix: &'a str,
    start_after: Option<&'a str>,
    want: usize,
}

impl Window<'_> {
    fn admits(&self, key: &str) -> bool {
        key.starts_with(self.prefix) && self.start_after.is_none_or(|a| key > a)
    }

    /// Whether a directory whose keys all start with `sub_prefix` can hold
    /// an admitted key.
    fn may_enter(&self, sub_prefix: &str) -> bool {
        let overlaps = sub_prefix.starts_with(self.prefix) || self.prefix.starts_with(sub_prefix);
        // Every key inside sorts before `start_after` when `start_after` is
        // past the directory and not inside it.
        let passed = self.start_after.is_some_and(|a| a > sub_prefix && !a.starts_with(sub_prefix));
        overlaps && !passed
    }
}

/// Collects, in ascending key order, objects under `dir` (whose keys start
/// with `dir_key`) that `window` admits, stopping once it has enough. Within
/// a directory a file `x@` sorts as key `x` and a directory `x` as `x/`;
/// since no sibling key can fall between `x/` and the keys inside `x/`, a
/// depth-first walk in that order yields globally sorted keys, and the walk
/// skips whole directories before `start_after`.
fn walk_sorted(dir: &Path, dir_key: &str, window: &Window<'_>, out: &mut Vec<ObjectMeta>) -> io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound || e.kind() == io::ErrorKind::NotADirectory => return Ok(()),
        Err(e) => return Err(e),
    };
    let joined = |seg: &str| if dir_key.is_empty() { seg.to_owned() } else { format!("{dir_key}/{seg}") };
    // (sort key, key, is_dir)
    let mut children: Vec<(String, String, bool)> = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') {
            continue;
        }
        if entry.file_type()?.is_dir() {
            let key = joined(name);
            children.push((format!("{key}/"), key, true));
        } else if let Some(seg) = name.strip_suffix(OBJECT_SUFFIX) {
            let key = joined(seg);
            children.push((key.clone(), key, false));
        }
    }
    children.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    for (sort_key, key, is_dir) in children {
        if out.len() >= window.want {
            break;
        }
        if is_dir {
            if window.may_enter(&sort_key) {
                let mut sub = dir.to_path_buf();
                sub.push(key.rsplit('/').next().unwrap_or(&key));
                walk_sorted(&sub, &key, window, out)?;
            }
        } else if window.admits(&key) {
            let mut path = dir.to_path_buf();
            path.push(format!("{}{OBJECT_SUFFIX}", key.rsplit('/').next().unwrap_or(&key)));
            match fs::metadata(&path) {
                Ok(md) => out.push(Inner::meta(&key, &md)),
                // Deleted while listing: it is simply not in this page.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

#[async_trait]
impl ObjectStore for FsStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        let key = key.to_owned();
        self.blocking(move |inner| {
            let path = inner.object_path(&key)?;
            let md = fs::metadata(&path).map_err(|e| map_io(&key, e))?;
            Ok(Inner::meta(&key, &md))
        })
        .await
    }

    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<GetResult> {
        let owned = key.to_owned();
        let (file, meta, range) = self
            .blocking(move |inner| {
                let path = inner.object_path(&owned)?;
                let file = File::open(&path).map_err(|e| map_io(&owned, e))?;
                let md = file.metadata().map_err(backend_err)?;
                let meta = Inner::meta(&owned, &md);
                let range = clip_range(range, md.len())?;
                Ok((file, meta, range))
            })
            .await?;
        let body = stream_file(Arc::new(file), range.clone()).map(|r| r.map_err(backend_err)).boxed();
        Ok(GetResult { meta, range, body })
    }

    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<ObjectMeta> {
        let key = key.to_owned();
        self.blocking(move |inner| inner.put(&key, &data, mode)).await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let key = key.to_owned();
        self.blocking(move |inner| {
            let path = inner.object_path(&key)?;
            match fs::remove_file(&path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(backend_err(e)),
            }
        })
        .await
    }

    async fn list(&self, prefix: &str, start_after: Option<&str>, limit: usize) -> Result<ListPage> {
        let prefix = prefix.to_owned();
        let start_after = start_after.map(str::to_owned);
        self.blocking(move |inner| inner.list(&prefix, start_after.as_deref(), limit)).await
    }

    async fn copy(&self, from: &str, to: &str) -> Result<ObjectMeta> {
        let (from, to) = (from.to_owned(), to.to_owned());
        self.blocking(move |inner| {
            let src = inner.object_path(&from)?;
            let dest = inner.object_path(&to)?;
            let tmp = inner.temp_path();
            let size = match fs::copy(&src, &tmp) {
                Ok(n) => n,
                Err(e) => {
                    let _ = fs::remove_file(&tmp);
                    return Err(map_io(&from, e));
                }
            };
            if inner.options.fsync {
                File::open(&tmp).and_then(|f| f.sync_all()).map_err(backend_err)?;
            }
            inner.publish(&tmp, &to, &dest, PutMode::Overwrite)?;
            Ok(ObjectMeta { key: to, size, last_modified: None, version: None })
        })
        .await
    }

    async fn create_multipart(&self) -> Result<MultipartUpload> {
        self.blocking(|inner| {
            let id = uuid::Uuid::new_v4().to_string();
            let upload = MultipartUpload { staging_key: format!("{UPLOADS_DIR}/{id}"), upload_id: id };
            File::create(inner.upload_path(&upload)?).map_err(backend_err)?;
            Ok(upload)
        })
        .await
    }

    async fn put_part(&self, upload: &MultipartUpload, number: u32, offset: u64, data: Bytes) -> Result<PartReceipt> {
        if number == 0 {
            return Err(StorageError::InvalidPart("part numbers start at 1".into()));
        }
        let upload = upload.clone();
        self.blocking(move |inner| {
            let path = inner.upload_path(&upload)?;
            if !inner.write_direct(&path, &upload.upload_id, &data, offset)? {
                let file = OpenOptions::new().write(true).open(&path).map_err(|e| map_io(&upload.upload_id, e))?;
                file.write_all_at(&data, offset).map_err(backend_err)?;
            }
            Ok(PartReceipt {
                number,
                offset,
                size: data.len() as u64,
                etag: format!("{number}-{offset}-{}", data.len()),
            })
        })
        .await
    }

    async fn complete_multipart(
        &self,
        upload: &MultipartUpload,
        parts: &[PartReceipt],
        dest: &str,
    ) -> Result<ObjectMeta> {
        let mut expected_offset = 0u64;
        for (i, p) in parts.iter().enumerate() {
            if p.number as usize != i + 1 || p.offset != expected_offset {
                return Err(StorageError::InvalidPart(format!("part {} is out of sequence", p.number)));
            }
            expected_offset += p.size;
        }
        let total = expected_offset;
        let (upload, dest) = (upload.clone(), dest.to_owned());
        self.blocking(move |inner| {
            let path = inner.upload_path(&upload)?;
            let dest_path = inner.object_path(&dest)?;
            let file = OpenOptions::new().write(true).open(&path).map_err(|e| map_io(&upload.upload_id, e))?;
            // A part rewritten by a retry may have left bytes past the end.
            if file.metadata().map_err(backend_err)?.len() != total {
                file.set_len(total).map_err(backend_err)?;
            }
            if inner.options.fsync {
                file.sync_all().map_err(backend_err)?;
            }
            drop(file);
            inner.publish(&path, &dest, &dest_path, PutMode::Overwrite)?;
            Ok(ObjectMeta { key: dest, size: total, last_modified: None, version: None })
        })
        .await
    }

    async fn abort_multipart(&self, upload: &MultipartUpload) -> Result<()> {
        let upload = upload.clone();
        self.blocking(move |inner| match fs::remove_file(inner.upload_path(&upload)?) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(backend_err(e)),
        })
        .await
    }

    async fn list_multipart(&self) -> Result<Vec<(MultipartUpload, std::time::SystemTime)>> {
        self.blocking(|inner| {
            let mut out = Vec::new();
            for entry in fs::read_dir(inner.root.join(UPLOADS_DIR)).map_err(backend_err)? {
                let entry = entry.map_err(backend_err)?;
                let Some(id) = entry.file_name().to_str().map(str::to_owned) else { continue };
                let Ok(modified) = entry.metadata().and_then(|m| m.modified()) else { continue };
                out.push((MultipartUpload { staging_key: format!("{UPLOADS_DIR}/{id}"), upload_id: id }, modified));
            }
            Ok(out)
        })
        .await
    }

    fn part_limits(&self) -> PartLimits {
        PartLimits { min_part_size: 1, preferred_part_size: 1024 * 1024, max_parts: u32::MAX }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conformance_with_fsync() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path(), FsOptions { fsync: true, direct_io: true }).unwrap();
        berth_storage::testing::run_all(Arc::new(store)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conformance_without_fsync_or_direct_io() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path(), FsOptions { fsync: false, direct_io: false }).unwrap();
        berth_storage::testing::run_all(Arc::new(store)).await;
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(64))]
        /// The sorted, early-stopping walk returns exactly what a sorted set
        /// of the same keys gives, for any prefix, start and page size.
        #[test]
        fn listing_matches_a_sorted_model(
            keys in proptest::collection::btree_set("[ab._-]{1,3}(/[ab._-]{1,3}){0,2}", 1..25),
            prefix in "[ab/._-]{0,4}",
            start_after in proptest::option::of("[ab/._-]{0,5}"),
            limit in 1usize..8,
        ) {
            let keys: Vec<String> = keys.into_iter().filter(|k| key_segments(k).is_ok()).collect();
            let dir = tempfile::tempdir().unwrap();
            let store = FsStore::open(dir.path(), FsOptions { fsync: false, direct_io: true }).unwrap();
            for k in &keys {
                store.inner.put(k, b"x", PutMode::Overwrite).unwrap();
            }
            let model: Vec<&String> = keys
                .iter()
                .filter(|k| k.starts_with(&prefix) && start_after.as_deref().is_none_or(|a| k.as_str() > a))
                .collect();
            let page = store.inner.list(&prefix, start_after.as_deref(), limit).unwrap();
            let got: Vec<&str> = page.objects.iter().map(|o| o.key.as_str()).collect();
            let want: Vec<&str> = model.iter().take(limit).map(|k| k.as_str()).collect();
            proptest::prop_assert_eq!(&got, &want);
            proptest::prop_assert_eq!(page.next_start_after.is_some(), model.len() > limit);
        }
    }

    /// Reads of bytes not in the page cache take the blocking path and
    /// return the same content.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn uncached_reads_fall_back_to_blocking_reads() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path(), FsOptions { fsync: true, direct_io: true }).unwrap();
        let data: Vec<u8> = (0..3 * READ_CHUNK + 99).map(|i| (i % 253) as u8).collect();
        store.put("cold/object", Bytes::from(data.clone()), PutMode::Overwrite).await.unwrap();
        let path = store.inner.object_path("cold/object").unwrap();
        let file = File::open(&path).unwrap();
        // Written and synced, so the kernel may drop the cached pages.
        rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed).unwrap();
        let mut probe = vec![0u8; READ_CHUNK];
        let cached = read_cached(&file, &mut probe, 0);
        assert!(cached <= READ_CHUNK);
        let got = store.get("cold/object", Some(5..data.len() as u64)).await.unwrap();
        let body = berth_storage::collect_body(got.body, u64::MAX).await.unwrap();
        assert!(body[..] == data[5..], "content differs");
    }

    #[test]
    fn hostile_keys_are_refused() {
        for key in ["", "/abs", "a//b", "a/../b", "..", "a/.hidden", "a/b/", "a\\b", "a b", "a/%2e%2e", "a@b", "a\0b"] {
            assert!(key_segments(key).is_err(), "{key:?} accepted");
        }
        for key in ["a", "blobs/sha256/ab/abcdef", "repositories/x/y/_manifests/tags/v1.0-rc_1", "a:b+c=d"] {
            assert!(key_segments(key).is_ok(), "{key:?} refused");
        }
    }

    #[tokio::test]
    async fn files_stay_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        let store = FsStore::open(&root, FsOptions { fsync: false, direct_io: true }).unwrap();
        assert!(store.put("../escape", Bytes::new(), PutMode::Overwrite).await.is_err());
        assert!(store.put("a/../../escape", Bytes::new(), PutMode::Overwrite).await.is_err());
        assert!(!dir.path().join("escape").exists());
        let bogus = MultipartUpload { staging_key: String::new(), upload_id: "../../x".into() };
        assert!(store.put_part(&bogus, 1, 0, Bytes::new()).await.is_err());
    }

    #[tokio::test]
    async fn leftover_temp_files_are_cleared_on_open() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join(TMP_DIR)).unwrap();
        fs::write(dir.path().join(TMP_DIR).join("junk"), b"x").unwrap();
        let _store = FsStore::open(dir.path(), FsOptions::default()).unwrap();
        assert_eq!(fs::read_dir(dir.path().join(TMP_DIR)).unwrap().count(), 0);
    }
}
