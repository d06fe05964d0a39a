//! `OciError` -> HTTP, in one place: status, the spec's JSON envelope and
//! the headers some errors carry. Internal causes are logged here, once, and
//! never sent.

use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue, StatusCode};
use serde_json::json;

use crate::oci::OciError;

pub fn status_of(e: &OciError) -> StatusCode {
    match e {
        OciError::BlobUnknown(_)
        | OciError::BlobUploadUnknown
        | OciError::ManifestUnknown(_)
        | OciError::NameUnknown(_) => StatusCode::NOT_FOUND,
        OciError::BlobUploadInvalid(_)
        | OciError::DigestInvalid(_)
        | OciError::ManifestBlobUnknown(_)
        | OciError::ManifestInvalid(_)
        | OciError::NameInvalid(_)
        | OciError::SizeInvalid(_)
        | OciError::Unsupported(_) => StatusCode::BAD_REQUEST,
        OciError::UploadOffsetMismatch { .. } | OciError::RangeNotSatisfiable { .. } => {
            StatusCode::RANGE_NOT_SATISFIABLE
        }
        OciError::ManifestTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        OciError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
        OciError::Denied
        | OciError::InsufficientScope { .. }
        | OciError::QuotaExceeded(_)
        | OciError::PolicyDenied(_) => StatusCode::FORBIDDEN,
        OciError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
        OciError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        OciError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The error envelope with an explicit status and code.
pub fn envelope(status: StatusCode, code: &str, message: &str) -> Response {
    let body = json!({ "errors": [{ "code": code, "message": message }] });
    (status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body.to_string()).into_response()
}

/// Render an error for the client.
pub fn error_response(e: &OciError) -> Response {
    match e {
        OciError::Internal(cause) => {
            tracing::error!(error = %cause, source = ?cause.source(), "internal error")
        }
        OciError::Unavailable { cause, .. } => tracing::warn!(%cause, "dependency unavailable"),
        _ => {}
    }
    let mut resp = envelope(status_of(e), e.code(), &e.to_string());
    let headers = resp.headers_mut();
    match e {
        OciError::RangeNotSatisfiable { size } => {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                headers.insert(header::CONTENT_RANGE, v);
            }
        }
        OciError::Unauthorized { challenge, .. } | OciError::InsufficientScope { challenge } => {
            if let Ok(v) = HeaderValue::from_str(challenge) {
                headers.insert(header::WWW_AUTHENTICATE, v);
            }
        }
        OciError::TooManyRequests { retry_after } | OciError::Unavailable { retry_after, .. } => {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after.as_secs().max(1)));
        }
        _ => {}
    }
    resp
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Every variant renders the spec's envelope with its code and status.
    #[tokio::test]
    async fn envelope_per_variant() {
        let cases: Vec<(OciError, u16, &str)> = vec![
            (OciError::BlobUnknown("d".into()), 404, "BLOB_UNKNOWN"),
            (OciError::BlobUploadInvalid("x".into()), 400, "BLOB_UPLOAD_INVALID"),
            (OciError::BlobUploadUnknown, 404, "BLOB_UPLOAD_UNKNOWN"),
            (OciError::UploadOffsetMismatch { offset: 5 }, 416, "BLOB_UPLOAD_INVALID"),
            (OciError::DigestInvalid("x".into()), 400, "DIGEST_INVALID"),
            (OciError::ManifestBlobUnknown("x".into()), 400, "MANIFEST_BLOB_UNKNOWN"),
            (OciError::ManifestInvalid("x".into()), 400, "MANIFEST_INVALID"),
            (OciError::ManifestUnknown("x".into()), 404, "MANIFEST_UNKNOWN"),
            (OciError::ManifestTooLarge { limit: 4 }, 413, "MANIFEST_INVALID"),
            (OciError::NameInvalid("x".into()), 400, "NAME_INVALID"),
            (OciError::NameUnknown("x".into()), 404, "NAME_UNKNOWN"),
            (OciError::SizeInvalid("x".into()), 400, "SIZE_INVALID"),
            (OciError::RangeNotSatisfiable { size: 9 }, 416, "SIZE_INVALID"),
            (OciError::Unauthorized { challenge: "Basic realm=\"r\"".into(), message: "m" }, 401, "UNAUTHORIZED"),
            (OciError::Denied, 403, "DENIED"),
            (OciError::QuotaExceeded("over quota".into()), 403, "DENIED"),
            (OciError::PolicyDenied("vulnerable".into()), 403, "DENIED"),
            (OciError::InsufficientScope { challenge: "Bearer realm=\"r\"".into() }, 403, "DENIED"),
            (OciError::Unsupported("x".into()), 400, "UNSUPPORTED"),
            (OciError::TooManyRequests { retry_after: Duration::from_secs(3) }, 429, "TOOMANYREQUESTS"),
            (OciError::Unavailable { retry_after: Duration::from_secs(2), cause: "redis".into() }, 503, "UNAVAILABLE"),
            (OciError::internal("secret path /var/x"), 500, "UNKNOWN"),
        ];
        for (e, status, code) in cases {
            let resp = error_response(&e);
            assert_eq!(resp.status().as_u16(), status, "{e:?}");
            let headers = resp.headers().clone();
            let body = axum::body::to_bytes(resp.into_body(), 1 << 16).await.unwrap();
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["errors"][0]["code"], code, "{e:?}");
            assert!(!String::from_utf8_lossy(&body).contains("/var/x"), "internal detail leaked");
            if status == 429 || status == 503 {
                assert!(headers.contains_key(header::RETRY_AFTER));
            }
            if let OciError::RangeNotSatisfiable { .. } = e {
                assert_eq!(headers[header::CONTENT_RANGE], "bytes */9");
            }
        }
    }
}
