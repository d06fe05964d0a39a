//! `OciError`: the one error type the registry speaks. Each variant maps to
//! one of the spec's error codes; the HTTP status and headers are chosen in
//! one place in the api layer. Internal causes are kept for the log and never
//! shown to clients.

use std::time::Duration;

/// A failure of a registry operation, in the spec's terms.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("blob unknown to registry: {0}")]
    BlobUnknown(String),
    #[error("blob upload invalid: {0}")]
    BlobUploadInvalid(String),
    #[error("blob upload unknown to registry")]
    BlobUploadUnknown,
    /// A chunk did not start where the upload stands.
    #[error("chunk out of order: the upload is at offset {offset}")]
    UploadOffsetMismatch { offset: u64 },
    #[error("provided digest did not match uploaded content: {0}")]
    DigestInvalid(String),
    #[error("manifest references a blob unknown to this repository: {0}")]
    ManifestBlobUnknown(String),
    #[error("manifest invalid: {0}")]
    ManifestInvalid(String),
    /// A manifest over the size the registry accepts (413).
    #[error("manifest is larger than the {limit} bytes accepted")]
    ManifestTooLarge { limit: usize },
    #[error("manifest unknown: {0}")]
    ManifestUnknown(String),
    #[error("invalid repository name: {0}")]
    NameInvalid(String),
    #[error("repository name not known to registry: {0}")]
    NameUnknown(String),
    #[error("provided length did not match content length: {0}")]
    SizeInvalid(String),
    /// A `Range` that does not overlap the blob.
    #[error("requested range not satisfiable")]
    RangeNotSatisfiable { size: u64 },
    /// The caller must (re)authenticate; `challenge` is the
    /// `WWW-Authenticate` value, built by the auth layer.
    #[error("{message}")]
    Unauthorized { challenge: String, message: &'static str },
    #[error("requested access to the resource is denied")]
    Denied,
    /// Refused by a storage quota; the message names the quota.
    #[error("{0}")]
    QuotaExceeded(String),
    /// Refused by a content policy (the scanner's pull policy); the
    /// message names the policy and why.
    #[error("{0}")]
    PolicyDenied(String),
    /// A valid token that does not grant the access (RFC 6750
    /// `insufficient_scope`, answered 403 with a challenge for the scope).
    #[error("the token does not grant this access")]
    InsufficientScope { challenge: String },
    #[error("the operation is unsupported: {0}")]
    Unsupported(String),
    #[error("too many requests")]
    TooManyRequests { retry_after: Duration },
    /// A dependency (shared state, object store) is down; retry later.
    #[error("service temporarily unavailable")]
    Unavailable { retry_after: Duration, cause: String },
    /// A bug or backend failure; the cause is logged, never sent.
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
}

impl OciError {
    /// The spec's error code for the envelope.
    pub fn code(&self) -> &'static str {
        match self {
            OciError::BlobUnknown(_) => "BLOB_UNKNOWN",
            OciError::BlobUploadInvalid(_) | OciError::UploadOffsetMismatch { .. } => "BLOB_UPLOAD_INVALID",
            OciError::BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            OciError::DigestInvalid(_) => "DIGEST_INVALID",
            OciError::ManifestBlobUnknown(_) => "MANIFEST_BLOB_UNKNOWN",
            OciError::ManifestInvalid(_) | OciError::ManifestTooLarge { .. } => "MANIFEST_INVALID",
            OciError::ManifestUnknown(_) => "MANIFEST_UNKNOWN",
            OciError::NameInvalid(_) => "NAME_INVALID",
            OciError::NameUnknown(_) => "NAME_UNKNOWN",
            OciError::SizeInvalid(_) | OciError::RangeNotSatisfiable { .. } => "SIZE_INVALID",
            OciError::Unauthorized { .. } => "UNAUTHORIZED",
            OciError::Denied
            | OciError::InsufficientScope { .. }
            | OciError::QuotaExceeded(_)
            | OciError::PolicyDenied(_) => "DENIED",
            OciError::Unsupported(_) => "UNSUPPORTED",
            OciError::TooManyRequests { .. } => "TOOMANYREQUESTS",
            OciError::Unavailable { .. } => "UNAVAILABLE",
            OciError::Internal(_) => "UNKNOWN",
        }
    }

    /// Wrap any error as internal.
    pub fn internal(e: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> OciError {
        OciError::Internal(e.into())
    }

    /// True for errors whose cause is ours, not the client's.
    pub fn is_server_side(&self) -> bool {
        matches!(self, OciError::Internal(_) | OciError::Unavailable { .. })
    }
}

impl From<berth_storage::StorageError> for OciError {
    /// Storage errors are internal unless a caller maps them on purpose
    /// (a missing object means different things for blobs and manifests).
    fn from(e: berth_storage::StorageError) -> OciError {
        match e {
            berth_storage::StorageError::Unavailable { .. } => {
                OciError::Unavailable { retry_after: Duration::from_secs(5), cause: e.to_string() }
            }
            other => OciError::Internal(Box::new(other)),
        }
    }
}

impl From<berth_state::StateError> for OciError {
    fn from(e: berth_state::StateError) -> OciError {
        match e {
            berth_state::StateError::Unavailable(cause) => {
                OciError::Unavailable { retry_after: Duration::from_secs(5), cause }
            }
            other => OciError::Internal(Box::new(other)),
        }
    }
}
