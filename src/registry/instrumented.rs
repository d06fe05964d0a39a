//! An [`ObjectStore`] that reports every call of the store it wraps: calls
//! by operation and outcome, their latency, and the bytes read and written.
//! Labels come from closed sets (the trait's operations, four outcomes),
//! never from keys. The numbers go to `crate::metrics::observe_store`,
//! which the `metrics` extension exposes and the minimal flavor drops.

use std::future::Future;
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

/// The S3 API action behind each operation (span names and `rpc.method`).
fn s3_action(op: &'static str) -> &'static str {
    match op {
        "head" => "HeadObject",
        "get" => "GetObject",
        "put" => "PutObject",
        "delete" => "DeleteObject",
        "delete_many" => "DeleteObjects",
        "list" => "ListObjectsV2",
        "copy" => "CopyObject",
        "create_multipart" => "CreateMultipartUpload",
        "put_part" => "UploadPart",
        "complete_multipart" => "CompleteMultipartUpload",
        "abort_multipart" => "AbortMultipartUpload",
        "list_multipart" => "ListMultipartUploads",
        _ => "Other",
    }
}

/// A span for one call, a child of the current span (a request's, or a
/// background job's); none outside any span, so background loops do not
/// mint root traces. Attributes follow OpenTelemetry's conventions: S3
/// calls as AWS SDK calls (`rpc.system = aws-api`, span `S3.GetObject`),
/// the file system as internal work. No key is recorded: keys hold
/// repository names and digests.
fn span(backend: &'static str, op: &'static str) -> tracing::Span {
    if tracing::Span::current().is_none() {
        return tracing::Span::none();
    }
    if backend == "s3" {
        let action = s3_action(op);
        tracing::debug_span!(
            target: "berth::backend",
            "object_store",
            otel.name = %format_args!("S3.{action}"),
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            rpc.system = "aws-api",
            rpc.service = "S3",
            rpc.method = action,
            berth.store.operation = op,
            error.type = tracing::field::Empty,
        )
    } else {
        tracing::debug_span!(
            target: "berth::backend",
            "object_store",
            otel.name = %format_args!("store.{op}"),
            otel.kind = "internal",
            otel.status_code = tracing::field::Empty,
            berth.store.backend = backend,
            berth.store.operation = op,
            error.type = tracing::field::Empty,
        )
    }
}

/// Run one call of the inner store in its span, and count it.
async fn call<T>(backend: &'static str, op: &'static str, fut: impl Future<Output = Result<T>>) -> Result<T> {
    use tracing::Instrument as _;
    let span = span(backend, op);
    let started = Instant::now();
    let r = fut.instrument(span.clone()).await;
    let outcome = outcome(&r);
    metrics::observe_store(op, outcome, started.elapsed());
    if r.is_err() && outcome != "not_found_or_exists" {
        span.record("otel.status_code", "ERROR");
        span.record("error.type", outcome);
    }
    r
}

#[async_trait]
impl ObjectStore for InstrumentedStore {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        call(self.inner.backend(), "head", self.inner.head(key)).await
    }

    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<GetResult> {
        // Latency to the response (the first byte), as S3 reports it; the
        // body's bytes are counted as they are read.
        let got = call(self.inner.backend(), "get", self.inner.get(key, range)).await?;
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
        let len = data.len() as u64;
        let r = call(self.inner.backend(), "put", self.inner.put(key, data, mode)).await;
        if r.is_ok() {
            metrics::store_bytes(StoreDirection::Written, len);
        }
        r
    }

    async fn delete(&self, key: &str) -> Result<()> {
        call(self.inner.backend(), "delete", self.inner.delete(key)).await
    }

    async fn delete_many(&self, keys: &[String]) -> Result<()> {
        call(self.inner.backend(), "delete_many", self.inner.delete_many(keys)).await
    }

    async fn list(&self, prefix: &str, start_after: Option<&str>, limit: usize) -> Result<ListPage> {
        call(self.inner.backend(), "list", self.inner.list(prefix, start_after, limit)).await
    }

    async fn copy(&self, from: &str, to: &str) -> Result<ObjectMeta> {
        call(self.inner.backend(), "copy", self.inner.copy(from, to)).await
    }

    async fn create_multipart(&self) -> Result<MultipartUpload> {
        call(self.inner.backend(), "create_multipart", self.inner.create_multipart()).await
    }

    async fn put_part(&self, upload: &MultipartUpload, number: u32, offset: u64, data: Bytes) -> Result<PartReceipt> {
        let len = data.len() as u64;
        let r = call(self.inner.backend(), "put_part", self.inner.put_part(upload, number, offset, data)).await;
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
        call(self.inner.backend(), "complete_multipart", self.inner.complete_multipart(upload, parts, dest)).await
    }

    async fn abort_multipart(&self, upload: &MultipartUpload) -> Result<()> {
        call(self.inner.backend(), "abort_multipart", self.inner.abort_multipart(upload)).await
    }

    async fn list_multipart(&self) -> Result<Vec<(MultipartUpload, SystemTime)>> {
        call(self.inner.backend(), "list_multipart", self.inner.list_multipart()).await
    }

    fn part_limits(&self) -> PartLimits {
        self.inner.part_limits()
    }

    async fn presign_get(&self, key: &str, expires: Duration) -> Result<Option<String>> {
        call(self.inner.backend(), "presign_get", self.inner.presign_get(key, expires)).await
    }
}
