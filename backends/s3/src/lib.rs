//! Berth's object store on S3 and S3-compatible servers (MinIO, Ceph RGW,
//! moto).
//!
//! Every key the registry uses is stored under an optional key prefix in one
//! bucket. Multipart writes are S3 multipart uploads under
//! `<prefix>_uploads/<uuid>`; completing one assembles the parts at that
//! staging key and copies the result to its destination server-side, so the
//! bytes never pass through Berth again. Objects over 5 GiB are copied with
//! `UploadPartCopy`, also server-side.
//!
//! The client honours `AWS_CA_BUNDLE` (which the AWS SDK for Rust ignores on
//! its own) and an explicit `ca_file`, on top of the system trust store.

use std::ops::Range;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream as SdkByteStream;
use aws_sdk_s3::types::{
    CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier, ServerSideEncryption, StorageClass,
};
use aws_sdk_s3::Client;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode, TlsContext, TrustStore};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use berth_storage::{
    ByteStream, GetResult, ListPage, MultipartUpload, ObjectMeta, ObjectStore, PartLimits, PartReceipt, PutMode,
    Result, StorageError,
};
use bytes::Bytes;
use futures::StreamExt;

#[cfg(feature = "testing")]
pub mod testing;

const BACKEND: &str = "s3";
/// Where multipart uploads are staged, under the key prefix.
const UPLOADS_DIR: &str = "_uploads/";
/// S3's limits for multipart uploads.
const MIN_PART: u64 = 5 * 1024 * 1024;
const MAX_PART: u64 = 5 * 1024 * 1024 * 1024;
const MAX_PARTS: u32 = 10_000;
/// Largest object a single CopyObject may copy.
const MAX_SINGLE_COPY: u64 = 5 * 1024 * 1024 * 1024;
/// Part size for server-side copies of larger objects.
const COPY_PART: u64 = 1024 * 1024 * 1024;
/// Concurrent UploadPartCopy requests of one large copy.
const COPY_CONCURRENCY: usize = 4;

/// Server-side encryption applied to every object Berth writes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Encryption {
    /// The bucket's default.
    #[default]
    BucketDefault,
    /// SSE-S3 (AES256 with keys S3 manages).
    S3,
    /// SSE-KMS, with the given key (or the account's default KMS key).
    Kms { key_id: Option<String> },
}

/// Static credentials, when the standard chain is not wanted.
#[derive(Clone)]
pub struct StaticCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for StaticCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticCredentials").field("access_key_id", &self.access_key_id).finish_non_exhaustive()
    }
}

/// How to reach the bucket.
#[derive(Debug, Clone)]
pub struct S3Options {
    pub bucket: String,
    /// Region; when unset, the standard chain (environment, profile), then us-east-1.
    pub region: Option<String>,
    /// Endpoint of an S3-compatible server, e.g. `http://127.0.0.1:9000`.
    pub endpoint: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), which MinIO and most
    /// S3-compatible servers want.
    pub force_path_style: bool,
    /// Prepended to every key. A non-empty prefix should end in `/`.
    pub prefix: String,
    /// Static keys; when unset, the standard chain: environment, shared
    /// profile, web identity (IRSA), ECS and EC2 instance metadata.
    pub credentials: Option<StaticCredentials>,
    /// Shared-config profile to use with the standard chain.
    pub profile: Option<String>,
    pub encryption: Encryption,
    /// Storage class of written objects (`STANDARD`, `INTELLIGENT_TIERING`, ...).
    pub storage_class: Option<String>,
    /// Attempts per request, the first included.
    pub max_attempts: u32,
    pub connect_timeout: Duration,
    /// Bound on one attempt of a metadata request or of a read until its
    /// first byte; an S3 that hangs is reported unavailable after this.
    pub request_timeout: Duration,
    /// Bound on one attempt of a request that moves many bytes (a part
    /// upload, a server-side copy, completing a multipart upload).
    pub transfer_timeout: Duration,
    /// Size of the parts uploads are cut into (at least 5 MiB).
    pub part_size: u64,
    /// Extra PEM CA bundle to trust; `AWS_CA_BUNDLE` is honoured too.
    pub ca_file: Option<PathBuf>,
}

impl S3Options {
    pub fn new(bucket: impl Into<String>) -> S3Options {
        S3Options {
            bucket: bucket.into(),
            region: None,
            endpoint: None,
            force_path_style: false,
            prefix: String::new(),
            credentials: None,
            profile: None,
            encryption: Encryption::BucketDefault,
            storage_class: None,
            max_attempts: 3,
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(10),
            transfer_timeout: Duration::from_secs(300),
            part_size: 16 * 1024 * 1024,
            ca_file: None,
        }
    }
}

/// Why the store could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("cannot read CA bundle {path}: {source}")]
    CaFile { path: PathBuf, source: std::io::Error },
    #[error("invalid S3 settings: {0}")]
    Invalid(String),
}

/// An S3 bucket as an object store.
#[derive(Debug, Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
    prefix: String,
    encryption: Encryption,
    storage_class: Option<StorageClass>,
    part_size: u64,
    transfer_timeout: Duration,
}

/// Attempts the SDK's retry strategy made beyond the first of each
/// operation, over every client of the process.
static RETRIES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Retries of S3 requests so far (attempts after an operation's first:
/// throttling, 5xx answers, timeouts, dropped connections).
pub fn retries() -> u64 {
    RETRIES.load(std::sync::atomic::Ordering::Relaxed)
}

/// Counts the attempts the SDK makes after an operation's first.
#[derive(Debug)]
struct CountRetries;

impl aws_sdk_s3::config::Intercept for CountRetries {
    fn name(&self) -> &'static str {
        "berth-count-retries"
    }

    fn read_before_attempt(
        &self,
        _context: &aws_sdk_s3::config::interceptors::BeforeTransmitInterceptorContextRef<'_>,
        _components: &aws_sdk_s3::config::RuntimeComponents,
        cfg: &mut aws_sdk_s3::config::ConfigBag,
    ) -> std::result::Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        use aws_smithy_runtime_api::client::retries::RequestAttempts;
        if cfg.load::<RequestAttempts>().is_some_and(|a| a.attempts() > 1) {
            RETRIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    }
}

impl S3Store {
    /// Build a client from the options and the standard AWS configuration chain.
    pub async fn connect(options: S3Options) -> Result<S3Store, SetupError> {
        if options.bucket.is_empty() {
            return Err(SetupError::Invalid("the bucket name is empty".into()));
        }
        if !(MIN_PART..=MAX_PART).contains(&options.part_size) {
            return Err(SetupError::Invalid(format!(
                "part_size must be between {MIN_PART} and {MAX_PART} bytes, not {}",
                options.part_size
            )));
        }
        if options.max_attempts == 0 {
            return Err(SetupError::Invalid("max_attempts must be at least 1".into()));
        }
        let http_client = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
            .tls_context(tls_context(options.ca_file.as_deref())?)
            .build_https();
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(options.connect_timeout)
            .operation_attempt_timeout(options.request_timeout)
            .build();
        let retries = aws_config::retry::RetryConfig::standard().with_max_attempts(options.max_attempts);
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .http_client(http_client)
            .timeout_config(timeouts)
            .retry_config(retries);
        if let Some(region) = &options.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        if let Some(profile) = &options.profile {
            loader = loader.profile_name(profile);
        }
        if let Some(creds) = &options.credentials {
            loader = loader.credentials_provider(aws_sdk_s3::config::Credentials::new(
                creds.access_key_id.clone(),
                creds.secret_access_key.clone(),
                creds.session_token.clone(),
                None,
                "berth-config",
            ));
        }
        let shared = loader.load().await;
        let mut config = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(options.force_path_style)
            // Berth hashes every byte with SHA-256 itself; extra CRCs cost CPU
            // and some S3-compatible servers reject the trailers.
            .request_checksum_calculation(aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired)
            .interceptor(CountRetries);
        if shared.region().is_none() {
            config = config.region(aws_config::Region::new("us-east-1"));
        }
        if let Some(endpoint) = &options.endpoint {
            config = config.endpoint_url(endpoint.clone());
        }
        let storage_class = options.storage_class.as_deref().map(StorageClass::from);
        if options.storage_class.as_deref().is_some_and(|c| !StorageClass::values().contains(&c)) {
            // S3-compatible servers have classes of their own: pass it through, but say so.
            tracing::warn!(class = ?options.storage_class, "storage class not known to the AWS SDK; sending it as given");
        }
        Ok(S3Store {
            client: Client::from_conf(config.build()),
            bucket: options.bucket,
            prefix: options.prefix,
            encryption: options.encryption,
            storage_class,
            part_size: options.part_size,
            transfer_timeout: options.transfer_timeout,
        })
    }

    /// The underlying client, for tools and tests (bucket creation).
    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    fn full(&self, key: &str) -> Result<String> {
        if key.is_empty() {
            return Err(StorageError::InvalidKey { key: key.into(), reason: "empty" });
        }
        if key.len() + self.prefix.len() > 1024 {
            return Err(StorageError::InvalidKey { key: key.into(), reason: "longer than S3's 1024 bytes" });
        }
        Ok(format!("{}{key}", self.prefix))
    }

    fn strip<'a>(&self, full: &'a str) -> &'a str {
        full.strip_prefix(&self.prefix).unwrap_or(full)
    }

    /// Create the bucket if it does not exist (for tests and local fleets).
    pub async fn ensure_bucket(&self) -> Result<()> {
        if self.client.head_bucket().bucket(&self.bucket).send().await.is_ok() {
            return Ok(());
        }
        match self.client.create_bucket().bucket(&self.bucket).send().await {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.code(), Some("BucketAlreadyOwnedByYou" | "BucketAlreadyExists")) => Ok(()),
            Err(e) => Err(sdk_err(e, &self.bucket)),
        }
    }

    async fn head_full(&self, full: &str) -> Result<ObjectMeta> {
        let out =
            self.client.head_object().bucket(&self.bucket).key(full).send().await.map_err(|e| sdk_err(e, full))?;
        Ok(ObjectMeta {
            key: self.strip(full).to_owned(),
            size: out.content_length().unwrap_or(0).max(0) as u64,
            last_modified: out.last_modified().and_then(|t| SystemTime::try_from(*t).ok()),
            version: version_of(out.e_tag(), out.last_modified()),
        })
    }

    async fn put_empty(&self, full: &str) -> Result<()> {
        let mut req = self.client.put_object().bucket(&self.bucket).key(full).body(SdkByteStream::from(Bytes::new()));
        req = req.set_server_side_encryption(self.sse()).set_ssekms_key_id(self.kms_key());
        req = req.set_storage_class(self.storage_class.clone());
        req.send().await.map_err(|e| sdk_err(e, full))?;
        Ok(())
    }

    /// Per-request settings for requests that move many bytes.
    fn transfer(&self) -> aws_sdk_s3::config::Builder {
        aws_sdk_s3::config::Builder::default().timeout_config(
            aws_config::timeout::TimeoutConfig::builder().operation_attempt_timeout(self.transfer_timeout).build(),
        )
    }

    fn sse(&self) -> Option<ServerSideEncryption> {
        match self.encryption {
            Encryption::BucketDefault => None,
            Encryption::S3 => Some(ServerSideEncryption::Aes256),
            Encryption::Kms { .. } => Some(ServerSideEncryption::AwsKms),
        }
    }

    fn kms_key(&self) -> Option<String> {
        match &self.encryption {
            Encryption::Kms { key_id } => key_id.clone(),
            _ => None,
        }
    }

    fn copy_source(&self, full: &str) -> String {
        let encoded = percent_encoding::utf8_percent_encode(full, COPY_SOURCE_SET).to_string();
        format!("{}/{encoded}", self.bucket)
    }

    /// Server-side copy of an object of `size` bytes.
    async fn copy_full(&self, from: &str, to: &str, size: u64) -> Result<()> {
        if size <= MAX_SINGLE_COPY {
            let mut req = self.client.copy_object().bucket(&self.bucket).key(to).copy_source(self.copy_source(from));
            req = req.set_server_side_encryption(self.sse()).set_ssekms_key_id(self.kms_key());
            req = req.set_storage_class(self.storage_class.clone());
            req.customize().config_override(self.transfer()).send().await.map_err(|e| sdk_err(e, from))?;
            return Ok(());
        }
        self.copy_multipart(from, to, size).await
    }

    /// Copy an object over 5 GiB with UploadPartCopy, a few parts at a time.
    async fn copy_multipart(&self, from: &str, to: &str, size: u64) -> Result<()> {
        let mut req = self.client.create_multipart_upload().bucket(&self.bucket).key(to);
        req = req.set_server_side_encryption(self.sse()).set_ssekms_key_id(self.kms_key());
        req = req.set_storage_class(self.storage_class.clone());
        let created = req.send().await.map_err(|e| sdk_err(e, to))?;
        let upload_id = created.upload_id().unwrap_or_default().to_owned();
        let part_size = COPY_PART.max(size.div_ceil(u64::from(MAX_PARTS)));
        let ranges: Vec<(i32, u64, u64)> = (0..size.div_ceil(part_size))
            .map(|i| (i as i32 + 1, i * part_size, ((i + 1) * part_size).min(size) - 1))
            .collect();
        let source = self.copy_source(from);
        let copied = futures::stream::iter(ranges)
            .map(|(number, first, last)| {
                let (client, bucket, to, upload_id, source, transfer) = (
                    self.client.clone(),
                    self.bucket.clone(),
                    to.to_owned(),
                    upload_id.clone(),
                    source.clone(),
                    self.transfer(),
                );
                async move {
                    let out = client
                        .upload_part_copy()
                        .bucket(bucket)
                        .key(&to)
                        .upload_id(upload_id)
                        .part_number(number)
                        .copy_source(source)
                        .copy_source_range(format!("bytes={first}-{last}"))
                        .customize()
                        .config_override(transfer)
                        .send()
                        .await
                        .map_err(|e| sdk_err(e, &to))?;
                    let etag = out.copy_part_result().and_then(|r| r.e_tag()).unwrap_or_default().to_owned();
                    Ok::<_, StorageError>(CompletedPart::builder().part_number(number).e_tag(etag).build())
                }
            })
            .buffered(COPY_CONCURRENCY)
            .collect::<Vec<_>>()
            .await;
        let parts: Result<Vec<CompletedPart>> = copied.into_iter().collect();
        let outcome = match parts {
            Ok(parts) => self
                .client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(to)
                .upload_id(&upload_id)
                .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
                .customize()
                .config_override(self.transfer())
                .send()
                .await
                .map(|_| ())
                .map_err(|e| sdk_err(e, to)),
            Err(e) => Err(e),
        };
        if outcome.is_err() {
            let _ =
                self.client.abort_multipart_upload().bucket(&self.bucket).key(to).upload_id(&upload_id).send().await;
        }
        outcome
    }
}

/// Characters a copy source keeps as they are: the unreserved set and `/`.
const COPY_SOURCE_SET: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~').remove(b'/');

fn tls_context(ca_file: Option<&std::path::Path>) -> Result<TlsContext, SetupError> {
    let mut store = TrustStore::default().with_native_roots(true);
    let env_bundle = std::env::var_os("AWS_CA_BUNDLE").filter(|v| !v.is_empty()).map(PathBuf::from);
    for path in ca_file.map(PathBuf::from).into_iter().chain(env_bundle) {
        let pem = std::fs::read(&path).map_err(|source| SetupError::CaFile { path: path.clone(), source })?;
        store = store.with_pem_certificate(pem);
    }
    TlsContext::builder().with_trust_store(store).build().map_err(|e| SetupError::Invalid(e.to_string()))
}

/// Map an SDK error to the storage error it means.
/// What identifies one write of an object: its ETag (content-derived for
/// single-part writes) and its modification time.
fn version_of(etag: Option<&str>, modified: Option<&aws_smithy_types::DateTime>) -> Option<String> {
    let etag = etag?;
    Some(match modified {
        Some(t) => format!("{etag}@{}.{:09}", t.secs(), t.subsec_nanos()),
        None => etag.to_owned(),
    })
}

fn sdk_err<E>(err: SdkError<E, HttpResponse>, key: &str) -> StorageError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let status = err.http_status();
    let code = err.code().map(str::to_owned);
    let unreachable = matches!(err, SdkError::TimeoutError(_) | SdkError::DispatchFailure(_));
    if unreachable || status.is_some_and(|s| s >= 500) || matches!(code.as_deref(), Some("SlowDown")) {
        let detail = format!("{}", aws_smithy_types::error::display::DisplayErrorContext(&err));
        return StorageError::Unavailable { backend: BACKEND, source: format!("{key}: {detail}").into() };
    }
    match (status, code.as_deref()) {
        (_, Some("NoSuchKey" | "NoSuchUpload" | "NotFound")) | (Some(404), _) => {
            StorageError::NotFound { key: key.to_owned() }
        }
        (_, Some("PreconditionFailed")) | (Some(412), _) => StorageError::AlreadyExists { key: key.to_owned() },
        (_, Some("EntityTooSmall" | "InvalidPart" | "InvalidPartOrder")) => {
            StorageError::InvalidPart(format!("{key}: {}", code.unwrap_or_default()))
        }
        _ => {
            // The SDK's Display is terse ("service error"); keep the code and message.
            let detail = match (err.code(), err.message()) {
                (Some(c), Some(m)) => format!("{c}: {m}"),
                (Some(c), None) => c.to_owned(),
                _ => format!("{}", aws_smithy_types::error::display::DisplayErrorContext(&err)),
            };
            StorageError::Backend { backend: BACKEND, source: format!("{key}: {detail}").into() }
        }
    }
}

/// The HTTP status of a failed request, where a response arrived.
trait HttpStatus {
    fn http_status(&self) -> Option<u16>;
}

impl<E> HttpStatus for SdkError<E, HttpResponse> {
    fn http_status(&self) -> Option<u16> {
        self.raw_response().map(|r| r.status().as_u16())
    }
}

fn stream_body(body: SdkByteStream, key: String) -> ByteStream {
    futures::stream::unfold(Some(body), move |state| {
        let key = key.clone();
        async move {
            let mut body = state?;
            match body.try_next().await {
                Ok(Some(chunk)) => Some((Ok(chunk), Some(body))),
                Ok(None) => None,
                Err(e) => Some((
                    Err(StorageError::Backend { backend: BACKEND, source: format!("{key}: reading body: {e}").into() }),
                    None,
                )),
            }
        }
    })
    .boxed()
}

/// `bytes START-END/TOTAL` of a Content-Range header.
fn parse_content_range(value: &str) -> Option<(u64, u64, u64)> {
    let rest = value.strip_prefix("bytes ")?;
    let (span, total) = rest.split_once('/')?;
    let (first, last) = span.split_once('-')?;
    Some((first.parse().ok()?, last.parse().ok()?, total.parse().ok()?))
}

#[async_trait]
impl ObjectStore for S3Store {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        let full = self.full(key)?;
        self.head_full(&full).await.map_err(|e| rekey(e, key))
    }

    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<GetResult> {
        let full = self.full(key)?;
        let mut req = self.client.get_object().bucket(&self.bucket).key(&full);
        if let Some(r) = &range {
            if r.end <= r.start {
                let size = self.head(key).await?.size;
                return Err(StorageError::InvalidRange { size });
            }
            req = req.range(format!("bytes={}-{}", r.start, r.end - 1));
        }
        let out = match req.send().await {
            Ok(out) => out,
            Err(e) if e.http_status() == Some(416) || e.code() == Some("InvalidRange") => {
                let size = self.head(key).await?.size;
                return Err(StorageError::InvalidRange { size });
            }
            Err(e) => return Err(rekey(sdk_err(e, &full), key)),
        };
        let length = out.content_length().unwrap_or(0).max(0) as u64;
        let (size, served) = match (range.is_some(), out.content_range().and_then(parse_content_range)) {
            (true, Some((first, last, total))) => (total, first..last + 1),
            // A server that ignored the range sent the whole object.
            _ => (length, 0..length),
        };
        let meta = ObjectMeta {
            key: key.to_owned(),
            size,
            last_modified: out.last_modified().and_then(|t| SystemTime::try_from(*t).ok()),
            version: version_of(out.e_tag(), out.last_modified()),
        };
        let mut body = stream_body(out.body, key.to_owned());
        if let (Some(want), 0) = (&range, served.start) {
            if want.start > 0 {
                // Range ignored: skip to the wanted bytes ourselves.
                body = skip_take(body, want.start, want.end.min(size) - want.start);
                return Ok(GetResult { meta, range: want.start..want.end.min(size), body });
            }
        }
        Ok(GetResult { meta, range: served, body })
    }

    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<ObjectMeta> {
        let full = self.full(key)?;
        let size = data.len() as u64;
        let mut req = self.client.put_object().bucket(&self.bucket).key(&full).body(SdkByteStream::from(data));
        req = req.set_server_side_encryption(self.sse()).set_ssekms_key_id(self.kms_key());
        req = req.set_storage_class(self.storage_class.clone());
        if mode == PutMode::Create {
            req = req.if_none_match("*");
        }
        match req.send().await {
            Ok(_) => {
                Ok(ObjectMeta { key: key.to_owned(), size, last_modified: Some(SystemTime::now()), version: None })
            }
            // Two creates raced: S3 answers 409 to the loser; the key exists either way.
            Err(e) if mode == PutMode::Create && e.http_status() == Some(409) => {
                Err(StorageError::AlreadyExists { key: key.to_owned() })
            }
            Err(e) => Err(rekey(sdk_err(e, &full), key)),
        }
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let full = self.full(key)?;
        match self.client.delete_object().bucket(&self.bucket).key(&full).send().await {
            Ok(_) => Ok(()),
            Err(e) => match sdk_err(e, key) {
                StorageError::NotFound { .. } => Ok(()),
                other => Err(other),
            },
        }
    }

    async fn delete_many(&self, keys: &[String]) -> Result<()> {
        for batch in keys.chunks(berth_storage::DELETE_BATCH) {
            let mut objects = Vec::with_capacity(batch.len());
            for key in batch {
                let id = ObjectIdentifier::builder()
                    .key(self.full(key)?)
                    .build()
                    .map_err(|e| StorageError::Backend { backend: BACKEND, source: e.into() })?;
                objects.push(id);
            }
            let delete = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .map_err(|e| StorageError::Backend { backend: BACKEND, source: e.into() })?;
            let first = batch.first().map(String::as_str).unwrap_or_default();
            let out = self
                .client
                .delete_objects()
                .bucket(&self.bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|e| sdk_err(e, first))?;
            // Quiet mode lists only failures; a missing key is not one.
            if let Some(failed) = out.errors().iter().find(|e| e.code() != Some("NoSuchKey")) {
                let key = failed.key().map(|k| self.strip(k).to_owned()).unwrap_or_default();
                let detail = format!("{}: {}", failed.code().unwrap_or("?"), failed.message().unwrap_or(""));
                let source = format!("{key}: {detail}").into();
                return Err(match failed.code() {
                    Some("SlowDown" | "InternalError" | "ServiceUnavailable") => {
                        StorageError::Unavailable { backend: BACKEND, source }
                    }
                    _ => StorageError::Backend { backend: BACKEND, source },
                });
            }
        }
        Ok(())
    }

    async fn list(&self, prefix: &str, start_after: Option<&str>, limit: usize) -> Result<ListPage> {
        let full_prefix = format!("{}{prefix}", self.prefix);
        let mut after = start_after.map(|s| format!("{}{s}", self.prefix));
        let mut objects = Vec::new();
        let limit = limit.max(1);
        loop {
            let want = (limit - objects.len()).min(1000) as i32;
            let mut req = self.client.list_objects_v2().bucket(&self.bucket).prefix(&full_prefix).max_keys(want);
            if let Some(a) = &after {
                req = req.start_after(a);
            }
            let out = req.send().await.map_err(|e| sdk_err(e, prefix))?;
            for obj in out.contents() {
                let Some(k) = obj.key() else { continue };
                objects.push(ObjectMeta {
                    key: self.strip(k).to_owned(),
                    size: obj.size().unwrap_or(0).max(0) as u64,
                    last_modified: obj.last_modified().and_then(|t| SystemTime::try_from(*t).ok()),
                    version: version_of(obj.e_tag(), obj.last_modified()),
                });
            }
            let truncated = out.is_truncated().unwrap_or(false);
            let last = out.contents().last().and_then(|o| o.key()).map(str::to_owned);
            match (truncated, last) {
                (true, Some(last)) if objects.len() < limit => after = Some(last),
                (true, Some(_)) => {
                    let next = objects.last().map(|o| o.key.clone());
                    return Ok(ListPage { objects, next_start_after: next });
                }
                _ => return Ok(ListPage { objects, next_start_after: None }),
            }
        }
    }

    async fn copy(&self, from: &str, to: &str) -> Result<ObjectMeta> {
        let (full_from, full_to) = (self.full(from)?, self.full(to)?);
        let meta = self.head_full(&full_from).await.map_err(|e| rekey(e, from))?;
        self.copy_full(&full_from, &full_to, meta.size).await.map_err(|e| rekey(e, from))?;
        Ok(ObjectMeta { key: to.to_owned(), size: meta.size, last_modified: Some(SystemTime::now()), version: None })
    }

    async fn create_multipart(&self) -> Result<MultipartUpload> {
        let staging_key = format!("{UPLOADS_DIR}{}", uuid::Uuid::new_v4());
        let full = self.full(&staging_key)?;
        let mut req = self.client.create_multipart_upload().bucket(&self.bucket).key(&full);
        req = req.set_server_side_encryption(self.sse()).set_ssekms_key_id(self.kms_key());
        req = req.set_storage_class(self.storage_class.clone());
        let out = req.send().await.map_err(|e| sdk_err(e, &staging_key))?;
        let upload_id = out.upload_id().filter(|id| !id.is_empty()).ok_or_else(|| StorageError::Backend {
            backend: BACKEND,
            source: "CreateMultipartUpload returned no upload id".into(),
        })?;
        Ok(MultipartUpload { staging_key, upload_id: upload_id.to_owned() })
    }

    async fn put_part(&self, upload: &MultipartUpload, number: u32, offset: u64, data: Bytes) -> Result<PartReceipt> {
        if number == 0 || number > MAX_PARTS {
            return Err(StorageError::InvalidPart(format!("part number {number} is outside 1..={MAX_PARTS}")));
        }
        if data.len() as u64 > MAX_PART {
            return Err(StorageError::InvalidPart(format!("a part of {} bytes is over S3's 5 GiB", data.len())));
        }
        let full = self.full(&upload.staging_key)?;
        let size = data.len() as u64;
        let out = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(&full)
            .upload_id(&upload.upload_id)
            .part_number(number as i32)
            .content_length(size as i64)
            .body(SdkByteStream::from(data))
            .customize()
            .config_override(self.transfer())
            .send()
            .await
            .map_err(|e| sdk_err(e, &upload.staging_key))?;
        let etag = out.e_tag().unwrap_or_default().to_owned();
        Ok(PartReceipt { number, offset, size, etag })
    }

    async fn complete_multipart(
        &self,
        upload: &MultipartUpload,
        parts: &[PartReceipt],
        dest: &str,
    ) -> Result<ObjectMeta> {
        let staging = self.full(&upload.staging_key)?;
        let full_dest = self.full(dest)?;
        if parts.is_empty() {
            // S3 will not complete an upload without parts: an empty object is one PUT.
            self.put_empty(&full_dest).await?;
            self.abort_multipart(upload).await?;
            return Ok(ObjectMeta {
                key: dest.to_owned(),
                size: 0,
                last_modified: Some(SystemTime::now()),
                version: None,
            });
        }
        let expected: u64 = parts.iter().map(|p| p.size).sum();
        let completed: Vec<CompletedPart> = parts
            .iter()
            .map(|p| CompletedPart::builder().part_number(p.number as i32).e_tag(&p.etag).build())
            .collect();
        let done = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(&staging)
            .upload_id(&upload.upload_id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(completed)).build())
            .customize()
            .config_override(self.transfer())
            .send()
            .await;
        match done {
            Ok(_) => {}
            // Completed already by an earlier attempt whose copy then failed:
            // the assembled object is at the staging key, go on from there.
            Err(e) if matches!(sdk_err_ref_code(&e), Some("NoSuchUpload")) => {
                let staged = self.head_full(&staging).await?;
                if staged.size != expected {
                    return Err(StorageError::NotFound { key: upload.staging_key.clone() });
                }
            }
            Err(e) => return Err(sdk_err(e, &upload.staging_key)),
        }
        self.copy_full(&staging, &full_dest, expected).await?;
        if let Err(e) = self.client.delete_object().bucket(&self.bucket).key(&staging).send().await {
            tracing::warn!(key = %staging, error = %sdk_err(e, &staging), "cannot remove assembled staging object");
        }
        Ok(ObjectMeta { key: dest.to_owned(), size: expected, last_modified: Some(SystemTime::now()), version: None })
    }

    async fn abort_multipart(&self, upload: &MultipartUpload) -> Result<()> {
        let staging = self.full(&upload.staging_key)?;
        match self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(&staging)
            .upload_id(&upload.upload_id)
            .send()
            .await
        {
            Ok(_) => {}
            Err(e) => match sdk_err(e, &upload.staging_key) {
                StorageError::NotFound { .. } => {}
                other => return Err(other),
            },
        }
        // An upload completed but not copied left its assembled object behind.
        self.delete(&upload.staging_key).await
    }

    async fn list_multipart(&self) -> Result<Vec<(MultipartUpload, SystemTime)>> {
        let prefix = format!("{}{UPLOADS_DIR}", self.prefix);
        let mut out = Vec::new();
        let (mut key_marker, mut id_marker): (Option<String>, Option<String>) = (None, None);
        loop {
            let page = self
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(&prefix)
                .set_key_marker(key_marker.clone())
                .set_upload_id_marker(id_marker.clone())
                .send()
                .await
                .map_err(|e| sdk_err(e, UPLOADS_DIR))?;
            for u in page.uploads() {
                let (Some(key), Some(id)) = (u.key(), u.upload_id()) else { continue };
                let initiated =
                    u.initiated().and_then(|t| SystemTime::try_from(*t).ok()).unwrap_or(SystemTime::UNIX_EPOCH);
                let upload = MultipartUpload { staging_key: self.strip(key).to_owned(), upload_id: id.to_owned() };
                let touched = self.last_part_time(&upload).await.unwrap_or(None).unwrap_or(initiated).max(initiated);
                out.push((upload, touched));
            }
            if !page.is_truncated().unwrap_or(false) {
                return Ok(out);
            }
            key_marker = page.next_key_marker().map(str::to_owned);
            id_marker = page.next_upload_id_marker().map(str::to_owned);
            if key_marker.is_none() && id_marker.is_none() {
                return Ok(out);
            }
        }
    }

    fn part_limits(&self) -> PartLimits {
        PartLimits { min_part_size: MIN_PART, preferred_part_size: self.part_size, max_parts: MAX_PARTS }
    }

    async fn presign_get(&self, key: &str, expires: Duration) -> Result<Option<String>> {
        let full = self.full(key)?;
        let config = PresigningConfig::expires_in(expires)
            .map_err(|e| StorageError::Backend { backend: BACKEND, source: Box::new(e) })?;
        let req = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&full)
            .presigned(config)
            .await
            .map_err(|e| sdk_err(e, key))?;
        Ok(Some(req.uri().to_owned()))
    }
}

impl S3Store {
    /// When the newest part of an upload was written, if it has any.
    async fn last_part_time(&self, upload: &MultipartUpload) -> Result<Option<SystemTime>> {
        let full = self.full(&upload.staging_key)?;
        let mut newest: Option<SystemTime> = None;
        let mut marker: Option<String> = None;
        loop {
            let page = self
                .client
                .list_parts()
                .bucket(&self.bucket)
                .key(&full)
                .upload_id(&upload.upload_id)
                .set_part_number_marker(marker.clone())
                .send()
                .await
                .map_err(|e| sdk_err(e, &upload.staging_key))?;
            for part in page.parts() {
                if let Some(t) = part.last_modified().and_then(|t| SystemTime::try_from(*t).ok()) {
                    newest = Some(newest.map_or(t, |n| n.max(t)));
                }
            }
            match (page.is_truncated().unwrap_or(false), page.next_part_number_marker()) {
                (true, Some(next)) if Some(next) != marker.as_deref() => marker = Some(next.to_owned()),
                _ => return Ok(newest),
            }
        }
    }
}

fn sdk_err_ref_code<E: ProvideErrorMetadata, R>(err: &SdkError<E, R>) -> Option<&str> {
    err.code()
}

/// Report errors under the caller's key, not the prefixed one.
fn rekey(err: StorageError, key: &str) -> StorageError {
    match err {
        StorageError::NotFound { .. } => StorageError::NotFound { key: key.to_owned() },
        StorageError::AlreadyExists { .. } => StorageError::AlreadyExists { key: key.to_owned() },
        other => other,
    }
}

/// Drop the first `skip` bytes of a stream and end it after `take` more.
fn skip_take(body: ByteStream, skip: u64, take: u64) -> ByteStream {
    let mut to_skip = skip;
    let mut left = take;
    body.filter_map(move |chunk| {
        let out = match chunk {
            Err(e) => Some(Err(e)),
            Ok(mut bytes) => {
                let drop = to_skip.min(bytes.len() as u64) as usize;
                to_skip -= drop as u64;
                let _ = bytes.split_to(drop);
                let keep = left.min(bytes.len() as u64) as usize;
                left -= keep as u64;
                bytes.truncate(keep);
                (!bytes.is_empty()).then_some(Ok(bytes))
            }
        };
        futures::future::ready(out)
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_parsing() {
        assert_eq!(parse_content_range("bytes 0-99/1000"), Some((0, 99, 1000)));
        assert_eq!(parse_content_range("bytes 5-5/6"), Some((5, 5, 6)));
        assert_eq!(parse_content_range("bytes */1000"), None);
        assert_eq!(parse_content_range("items 0-1/2"), None);
    }

    #[test]
    fn copy_source_encoding() {
        let enc = percent_encoding::utf8_percent_encode("p/blobs/sha256:ab cd+é", COPY_SOURCE_SET).to_string();
        assert_eq!(enc, "p/blobs/sha256%3Aab%20cd%2B%C3%A9");
    }

    #[tokio::test]
    async fn refuses_bad_settings() {
        let mut o = S3Options::new("");
        assert!(matches!(S3Store::connect(o.clone()).await, Err(SetupError::Invalid(_))));
        o.bucket = "b".into();
        o.part_size = 1024;
        assert!(matches!(S3Store::connect(o.clone()).await, Err(SetupError::Invalid(_))));
        o.part_size = MIN_PART;
        o.ca_file = Some("/nonexistent/ca.pem".into());
        assert!(matches!(S3Store::connect(o).await, Err(SetupError::CaFile { .. })));
    }

    #[tokio::test]
    async fn skip_take_slices_across_chunks() {
        let chunks: Vec<Result<Bytes>> =
            vec![Ok(Bytes::from_static(b"abc")), Ok(Bytes::from_static(b"defg")), Ok(Bytes::from_static(b"hij"))];
        let body = futures::stream::iter(chunks).boxed();
        let got = berth_storage::collect_body(skip_take(body, 2, 6), 100).await.unwrap();
        assert_eq!(&got[..], b"cdefgh");
    }
}
