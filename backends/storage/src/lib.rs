//! The object-store contract every Berth storage backend implements.
//!
//! The trait is shaped after an S3-style object store so that the filesystem
//! and S3 backends are interchangeable: flat string keys, ranged reads, sorted
//! paginated listing, multipart writes whose parts may be sent from different
//! processes, server-side copy and optional presigned URLs. The registry layer
//! decides the key layout; backends only store bytes.

use std::fmt;
use std::ops::Range;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::stream::BoxStream;
use futures::StreamExt;

pub mod metered;
#[cfg(feature = "testing")]
pub mod testing;

pub use metered::MeteredStore;

/// A stream of object bytes.
pub type ByteStream = BoxStream<'static, Result<Bytes, StorageError>>;

/// Result alias for storage operations.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// The one error type all backends speak. Backends keep their own error enums
/// and convert into [`StorageError::Backend`] for anything without a meaning
/// here.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The key (or multipart upload) does not exist.
    #[error("object not found: {key}")]
    NotFound { key: String },
    /// A create-only write found an existing object.
    #[error("object already exists: {key}")]
    AlreadyExists { key: String },
    /// The key is not acceptable to the backend (the registry never builds such keys).
    #[error("invalid key {key:?}: {reason}")]
    InvalidKey { key: String, reason: &'static str },
    /// A ranged read asked for bytes outside the object.
    #[error("range not satisfiable for object of {size} bytes")]
    InvalidRange { size: u64 },
    /// A multipart part is out of the backend's limits or out of order.
    #[error("invalid part: {0}")]
    InvalidPart(String),
    /// The backend does not offer this optional operation.
    #[error("{op} is not supported by the {backend} backend")]
    NotSupported { backend: &'static str, op: &'static str },
    /// The backend cannot be reached or is overloaded (connection refused,
    /// timeouts, 5xx answers): worth retrying later.
    #[error("{backend} backend unavailable: {source}")]
    Unavailable {
        backend: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// Anything else: I/O errors, network errors, service errors.
    #[error("{backend} backend error: {source}")]
    Backend {
        backend: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
}

impl StorageError {
    /// True for [`StorageError::NotFound`].
    pub fn is_not_found(&self) -> bool {
        matches!(self, StorageError::NotFound { .. })
    }
}

/// What a backend knows about a stored object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub key: String,
    pub size: u64,
    pub last_modified: Option<SystemTime>,
    /// An opaque token that changes whenever the object is rewritten with
    /// other content (S3: the ETag and the modification time; fs: the
    /// modification time in nanoseconds, size and inode). Listings and
    /// `head` fill it where the backend knows it; `None` elsewhere.
    pub version: Option<String>,
}

/// A (possibly ranged) read.
pub struct GetResult {
    /// Metadata of the whole object (size is the full size, not the range's).
    pub meta: ObjectMeta,
    /// The byte range the body carries.
    pub range: Range<u64>,
    /// The bytes of `range`, streamed.
    pub body: ByteStream,
}

impl fmt::Debug for GetResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GetResult").field("meta", &self.meta).field("range", &self.range).finish_non_exhaustive()
    }
}

/// Most keys one batched delete request removes (S3's limit).
pub const DELETE_BATCH: usize = 1000;

/// How `put` treats an existing object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutMode {
    /// Replace any existing object atomically.
    Overwrite,
    /// Fail with [`StorageError::AlreadyExists`] if the key exists.
    Create,
}

/// One page of a listing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListPage {
    /// Objects in ascending byte order of their keys.
    pub objects: Vec<ObjectMeta>,
    /// When more objects follow: pass this as `start_after` for the next page.
    pub next_start_after: Option<String>,
}

/// A multipart write in progress. It is plain data so that it can be stored in
/// shared state and continued by another process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MultipartUpload {
    /// Backend-chosen staging key the parts are written under.
    pub staging_key: String,
    /// Backend-chosen upload identifier.
    pub upload_id: String,
}

/// What `put_part` returns; `complete_multipart` takes the receipts of every
/// part, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartReceipt {
    /// 1-based part number.
    pub number: u32,
    /// Byte offset of the part within the final object.
    pub offset: u64,
    pub size: u64,
    /// Backend-defined tag (the S3 ETag).
    pub etag: String,
}

/// Part size rules of a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartLimits {
    /// Every part but the last must be at least this large.
    pub min_part_size: u64,
    /// A good size to buffer before sending a part.
    pub preferred_part_size: u64,
    /// Highest part number accepted.
    pub max_parts: u32,
}

/// An S3-shaped object store.
///
/// Guarantees every implementation gives (and the conformance suite in
/// [`testing`] checks):
/// - **Atomic visibility**: `put`, `copy` and `complete_multipart` make the
///   whole new object visible at once or not at all; a reader never sees a
///   partial object, and a failed write leaves the previous object (or none).
/// - **Read-after-write**: once a write returns `Ok`, `head`, `get` and `list`
///   on any process observe it; once `delete` returns, they do not.
/// - **Sorted listing**: `list` returns keys with the given string prefix in
///   ascending byte order, strictly after `start_after`, at most `limit` per page.
/// - **Idempotent delete**: deleting a missing key succeeds.
/// - **Multipart**: parts of one upload may be written by different processes;
///   nothing is visible at the destination until `complete_multipart`, and
///   `abort_multipart` removes every staged byte.
#[async_trait]
pub trait ObjectStore: Send + Sync + fmt::Debug + 'static {
    /// Short backend name for logs and errors ("fs", "s3").
    fn backend(&self) -> &'static str;

    /// Metadata of an object.
    async fn head(&self, key: &str) -> Result<ObjectMeta>;

    /// Read an object, or the `range` of it. A range that starts at or past
    /// the end is [`StorageError::InvalidRange`]; one that ends past the end
    /// is clipped.
    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<GetResult>;

    /// Write a small object in one request, atomically.
    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<ObjectMeta>;

    /// Remove an object; missing objects are not an error.
    async fn delete(&self, key: &str) -> Result<()>;

    /// Remove many objects; missing ones are not an error. Backends with a
    /// batch operation override this (S3: `DeleteObjects`, up to
    /// [`DELETE_BATCH`] keys per request). On error, some of the keys may
    /// have been removed and the others not: callers delete only what may
    /// go in any order.
    async fn delete_many(&self, keys: &[String]) -> Result<()> {
        for key in keys {
            self.delete(key).await?;
        }
        Ok(())
    }

    /// List objects whose key starts with `prefix` (see the trait docs).
    async fn list(&self, prefix: &str, start_after: Option<&str>, limit: usize) -> Result<ListPage>;

    /// Server-side copy; the destination is replaced atomically.
    async fn copy(&self, from: &str, to: &str) -> Result<ObjectMeta>;

    /// Start a multipart write.
    async fn create_multipart(&self) -> Result<MultipartUpload>;

    /// Write part `number` (1-based, consecutive) that starts at byte `offset`.
    async fn put_part(&self, upload: &MultipartUpload, number: u32, offset: u64, data: Bytes) -> Result<PartReceipt>;

    /// Assemble the parts and make the result visible at `dest`, replacing
    /// any object there. Consumes the upload.
    async fn complete_multipart(
        &self,
        upload: &MultipartUpload,
        parts: &[PartReceipt],
        dest: &str,
    ) -> Result<ObjectMeta>;

    /// Discard a multipart write and everything staged for it. Aborting an
    /// upload that no longer exists succeeds.
    async fn abort_multipart(&self, upload: &MultipartUpload) -> Result<()>;

    /// Multipart writes not yet completed or aborted, each with the time it
    /// was last written to (or started, where the backend knows no better),
    /// so writes whose session was lost can be swept.
    async fn list_multipart(&self) -> Result<Vec<(MultipartUpload, SystemTime)>>;

    /// The backend's part-size rules.
    fn part_limits(&self) -> PartLimits;

    /// A URL a client may GET the object from directly, valid for `expires`.
    /// Backends without presigning return `Ok(None)`.
    async fn presign_get(&self, _key: &str, _expires: Duration) -> Result<Option<String>> {
        Ok(None)
    }
}

/// Conveniences built on [`ObjectStore`], so backends need not repeat them.
#[async_trait]
pub trait ObjectStoreExt: ObjectStore {
    /// Read a whole object into memory, refusing objects over `max_size`.
    async fn get_bytes(&self, key: &str, max_size: u64) -> Result<Bytes> {
        let got = self.get(key, None).await?;
        if got.meta.size > max_size {
            return Err(StorageError::InvalidPart(format!(
                "object {key} is {} bytes, more than the {max_size} allowed here",
                got.meta.size
            )));
        }
        collect_body(got.body, max_size).await
    }

    /// True if the object exists.
    async fn exists(&self, key: &str) -> Result<bool> {
        match self.head(key).await {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }
}

impl<T: ObjectStore + ?Sized> ObjectStoreExt for T {}

/// Collect a byte stream, failing once it passes `max_size` bytes.
pub async fn collect_body(mut body: ByteStream, max_size: u64) -> Result<Bytes> {
    let mut buf = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        if (buf.len() + chunk.len()) as u64 > max_size {
            return Err(StorageError::InvalidPart(format!("object grew past the {max_size} bytes allowed here")));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// Clip a requested range to an object of `size` bytes, per [`ObjectStore::get`].
pub fn clip_range(range: Option<Range<u64>>, size: u64) -> Result<Range<u64>> {
    match range {
        None => Ok(0..size),
        Some(r) if r.start >= size || r.start >= r.end => Err(StorageError::InvalidRange { size }),
        Some(r) => Ok(r.start..r.end.min(size)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_range_rules() {
        assert_eq!(clip_range(None, 10).unwrap(), 0..10);
        assert_eq!(clip_range(Some(2..5), 10).unwrap(), 2..5);
        assert_eq!(clip_range(Some(2..50), 10).unwrap(), 2..10);
        assert!(matches!(clip_range(Some(10..11), 10), Err(StorageError::InvalidRange { size: 10 })));
        assert!(matches!(clip_range(Some(3..3), 10), Err(StorageError::InvalidRange { .. })));
        assert!(matches!(clip_range(Some(0..1), 0), Err(StorageError::InvalidRange { .. })));
    }
}
