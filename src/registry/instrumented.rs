//! An [`ObjectStore`] that reports every call of the store it wraps: calls
//! by operation and outcome, their latency, and the bytes read and written.
//! Labels come from closed sets (the trait's operations, four outcomes),
//! never from keys. The numbers go to `crate::metrics::observe_store`,
//! which the `metrics` extension exposes and the minimal flavor drops.

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use berth_storage::{
    GetResult, ListPage, MultipartUpload, ObjectMeta, ObjectStore, PartLimits, PartReceipt, PutMode, Result,
    StorageError,
};
use bytes::Bytes;
use futures::StreamExt;

use crate::metrics::{self, StoreDirection};

/// The outcome label of a call.
fn outcome<T>(r: &Result<T>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(StorageError::NotFound { .. }) | Err(StorageError::AlreadyExists { .. }) => "not_found_or_exists",
        Err(StorageError::Unavailable { .. }) => "unavailable",
        Err(_) => "error",
    }
}

/// Wraps a store and reports its calls.
#[derive(Debug)]
pub struct InstrumentedStore {
    inner: Arc<dyn ObjectStore>,
}

impl InstrumentedStore {
    pub fn new(inner: Arc<dyn ObjectStore>) -> InstrumentedStore {
        InstrumentedStore { inner }
    }
}

fn done<T>(op: &'static str, started: Instant, r: Result<T>) -> Result<T> {
    metrics::observe_store(op, outcome(&r), started.elapsed());
    r
}

#[async_trait]
impl ObjectStore for InstrumentedStore {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        let t = Instant::now();
        done("head", t, self.inner.head(key).await)
    }

    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<GetResult> {
        // Latency to the response (the first byte), as S3 reports it; the
        // body's bytes are counted as they are read.
        let t = Instant::now();
        let got = done("get", t, self.inner.get(key, range).await)?;
        let body = got
            .body
            .map(|piece| {
                if let Ok(b) = &piece {
                    metrics::store_bytes(StoreDirection::Read, b.len() as u64);
                }
                piece
            })
            .boxed();
        Ok(GetResult { meta: got.meta, range: got.range, body })
    }

    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<ObjectMeta> {
        let t = Instant::now();
        let len = data.len() as u64;
        let r = done("put", t, self.inner.put(key, data, mode).await);
        if r.is_ok() {
            metrics::store_bytes(StoreDirection::Written, len);
        }
        r
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let t = Instant::now();
        done("delete", t, self.inner.delete(key).await)
    }

    async fn delete_many(&self, keys: &[String]) -> Result<()> {
        let t = Instant::now();
        done("delete_many", t, self.inner.delete_many(keys).await)
    }

    async fn list(&self, prefix: &str, start_after: Option<&str>, limit: usize) -> Result<ListPage> {
        let t = Instant::now();
        done("list", t, self.inner.list(prefix, start_after, limit).await)
    }

    async fn copy(&self, from: &str, to: &str) -> Result<ObjectMeta> {
        let t = Instant::now();
        done("copy", t, self.inner.copy(from, to).await)
    }

    async fn create_multipart(&self) -> Result<MultipartUpload> {
        let t = Instant::now();
        done("create_multipart", t, self.inner.create_multipart().await)
    }

    async fn put_part(&self, upload: &MultipartUpload, number: u32, offset: u64, data: Bytes) -> Result<PartReceipt> {
        let t = Instant::now();
        let len = data.len() as u64;
        let r = done("put_part", t, self.inner.put_part(upload, number, offset, data).await);
        if r.is_ok() {
            metrics::store_bytes(StoreDirection::Written, len);
        }
        r
    }

    async fn complete_multipart(
        &self,
        upload: &MultipartUpload,
        parts: &[PartReceipt],
        dest: &str,
    ) -> Result<ObjectMeta> {
        let t = Instant::now();
        done("complete_multipart", t, self.inner.complete_multipart(upload, parts, dest).await)
    }

    async fn abort_multipart(&self, upload: &MultipartUpload) -> Result<()> {
        let t = Instant::now();
        done("abort_multipart", t, self.inner.abort_multipart(upload).await)
    }

    async fn list_multipart(&self) -> Result<Vec<(MultipartUpload, SystemTime)>> {
        let t = Instant::now();
        done("list_multipart", t, self.inner.list_multipart().await)
    }

    fn part_limits(&self) -> PartLimits {
        self.inner.part_limits()
    }

    async fn presign_get(&self, key: &str, expires: Duration) -> Result<Option<String>> {
        let t = Instant::now();
        done("presign_get", t, self.inner.presign_get(key, expires).await)
    }
}
