//! A wrapper that counts what an object store is asked to do, for tests and
//! measurements (how many reads a push caused, say).

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;

use crate::{GetResult, ListPage, MultipartUpload, ObjectMeta, ObjectStore, PartLimits, PartReceipt, PutMode, Result};

/// Counters of a [`MeteredStore`].
#[derive(Debug, Default)]
pub struct Meters {
    pub gets: AtomicU64,
    /// Bytes actually streamed out of `get` bodies.
    pub bytes_read: AtomicU64,
    pub heads: AtomicU64,
    pub puts: AtomicU64,
    pub parts: AtomicU64,
    /// Bytes sent by `put` and `put_part`.
    pub bytes_written: AtomicU64,
    pub copies: AtomicU64,
    pub completes: AtomicU64,
    pub lists: AtomicU64,
    pub deletes: AtomicU64,
    /// Batched delete requests (one per [`crate::DELETE_BATCH`] keys).
    pub batch_deletes: AtomicU64,
    /// Keys removed through batched deletes.
    pub keys_batch_deleted: AtomicU64,
}

impl Meters {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Counts every call to the store it wraps.
#[derive(Debug, Clone)]
pub struct MeteredStore {
    inner: Arc<dyn ObjectStore>,
    meters: Arc<Meters>,
}

impl MeteredStore {
    pub fn new(inner: Arc<dyn ObjectStore>) -> MeteredStore {
        MeteredStore { inner, meters: Arc::new(Meters::default()) }
    }

    pub fn meters(&self) -> &Arc<Meters> {
        &self.meters
    }
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

#[async_trait]
impl ObjectStore for MeteredStore {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        bump(&self.meters.heads, 1);
        self.inner.head(key).await
    }

    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<GetResult> {
        bump(&self.meters.gets, 1);
        let mut got = self.inner.get(key, range).await?;
        let meters = self.meters.clone();
        got.body = got
            .body
            .inspect(move |chunk| {
                if let Ok(c) = chunk {
                    bump(&meters.bytes_read, c.len() as u64);
                }
            })
            .boxed();
        Ok(got)
    }

    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<ObjectMeta> {
        bump(&self.meters.puts, 1);
        bump(&self.meters.bytes_written, data.len() as u64);
        self.inner.put(key, data, mode).await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        bump(&self.meters.deletes, 1);
        self.inner.delete(key).await
    }

    async fn delete_many(&self, keys: &[String]) -> Result<()> {
        bump(&self.meters.batch_deletes, keys.len().div_ceil(crate::DELETE_BATCH) as u64);
        bump(&self.meters.keys_batch_deleted, keys.len() as u64);
        self.inner.delete_many(keys).await
    }

    async fn list(&self, prefix: &str, start_after: Option<&str>, limit: usize) -> Result<ListPage> {
        bump(&self.meters.lists, 1);
        self.inner.list(prefix, start_after, limit).await
    }

    async fn copy(&self, from: &str, to: &str) -> Result<ObjectMeta> {
        bump(&self.meters.copies, 1);
        self.inner.copy(from, to).await
    }

    async fn create_multipart(&self) -> Result<MultipartUpload> {
        self.inner.create_multipart().await
    }

    async fn put_part(&self, upload: &MultipartUpload, number: u32, offset: u64, data: Bytes) -> Result<PartReceipt> {
        bump(&self.meters.parts, 1);
        bump(&self.meters.bytes_written, data.len() as u64);
        self.inner.put_part(upload, number, offset, data).await
    }

    async fn complete_multipart(
        &self,
        upload: &MultipartUpload,
        parts: &[PartReceipt],
        dest: &str,
    ) -> Result<ObjectMeta> {
        bump(&self.meters.completes, 1);
        self.inner.complete_multipart(upload, parts, dest).await
    }

    async fn abort_multipart(&self, upload: &MultipartUpload) -> Result<()> {
        self.inner.abort_multipart(upload).await
    }

    async fn list_multipart(&self) -> Result<Vec<(MultipartUpload, SystemTime)>> {
        self.inner.list_multipart().await
    }

    fn part_limits(&self) -> PartLimits {
        self.inner.part_limits()
    }

    async fn presign_get(&self, key: &str, expires: Duration) -> Result<Option<String>> {
        self.inner.presign_get(key, expires).await
    }
}
