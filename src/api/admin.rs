//! The admin API: `POST /admin/revocations` revokes one token (by `jti`) or
//! every token of a subject issued before a time, on every replica. Only
//! the subjects in `auth.admins` may call it.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::{header, StatusCode};
use http_body_util::BodyExt as _;
use serde::Deserialize;

use super::errors::error_response;
use super::App;
use crate::oci::OciError;
use crate::registry::revocations::Revocation;

/// How long a `jti` revocation is kept when the caller gives no expiry:
/// longer than any token this registry issues.
const DEFAULT_JTI_RETENTION: u64 = 7 * 24 * 3600;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeRequest {
    jti: Option<String>,
    exp: Option<u64>,
    subject: Option<String>,
    before: Option<u64>,
}

pub async fn revoke(State(app): State<Arc<App>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let client = super::client_of(&parts.extensions);
    let identity = match app.gate.authenticate(&parts.headers, &client).await {
        Ok(id) => id,
        Err(e) => return error_response(&e),
    };
    if let Err(e) = app.gate.require_identity(&identity) {
        return error_response(&e);
    }
    if !app.gate.is_admin(&identity) {
        return error_response(&OciError::Denied);
    }
    let bytes = match http_body_util::Limited::new(body, 64 * 1024).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return error_response(&OciError::SizeInvalid("the request is over 64 KiB or unreadable".into())),
    };
    let request: RevokeRequest = match serde_json::from_slice(&bytes) {
        Ok(r) => r,
        Err(e) => {
            return error_response(&OciError::Unsupported(format!("expected {{\"jti\"}} or {{\"subject\"}}: {e}")))
        }
    };
    let now = crate::auth::token::now();
    let revocation = match request {
        RevokeRequest { jti: Some(jti), subject: None, before: None, exp } => {
            Revocation::Token { jti, exp: exp.unwrap_or(now + DEFAULT_JTI_RETENTION) }
        }
        // Tokens issued in this very second are included.
        RevokeRequest { subject: Some(subject), jti: None, exp: None, before } => {
            Revocation::Subject { subject, before: before.unwrap_or(now + 1) }
        }
        _ => {
            return error_response(&OciError::Unsupported(
                "give either jti (with an optional exp) or subject (with an optional before)".into(),
            ))
        }
    };
    match app.registry.revoke(revocation.clone(), app.gate.revocations()).await {
        Ok(()) => {
            tracing::info!(target: "berth::auth", by = identity.qualified_subject().unwrap_or_default(), ?revocation, "revoked");
            let body = serde_json::to_string(&revocation).unwrap_or_default();
            (StatusCode::CREATED, [(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
        Err(e) => error_response(&e),
    }
}
