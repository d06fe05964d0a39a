//! The admin API, for the subjects in `auth.admins` only:
//! - `POST /admin/revocations` revokes one token (by `jti`) or every token
//!   of a subject issued before a time, on every replica;
//! - `POST /admin/gc` starts a garbage-collection pass (202; `?dry_run=true`
//!   runs a read-only pass and answers its report), `GET /admin/gc` reads
//!   the last pass's report;
//! - `GET /admin/usage` reads storage used per repository;
//! - `POST /admin/scrub` starts a scrub (`?repair=true` removes dangling
//!   records), `GET /admin/scrub` reads the last scrub's report.

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

/// The caller, if it is an admin; else the response to send.
async fn admin(app: &App, parts: &http::request::Parts) -> Result<crate::auth::Identity, Response> {
    let client = super::client_of(&parts.extensions);
    let identity = app.gate.authenticate(&parts.headers, &client).await.map_err(|e| error_response(&e))?;
    app.gate.require_identity(&identity).map_err(|e| error_response(&e))?;
    if !app.gate.is_admin(&identity) {
        return Err(error_response(&OciError::Denied));
    }
    Ok(identity)
}

fn json(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "no-store")], body).into_response()
}

/// `GET /admin/gc`: the last pass's report (`null` before any) and the
/// passes running in the fleet now.
pub async fn gc_report(State(app): State<Arc<App>>, req: Request) -> Response {
    let (parts, _body) = req.into_parts();
    if let Err(resp) = admin(&app, &parts).await {
        return resp;
    }
    match app.registry.gc_status().await {
        Ok((running, last)) => {
            json(StatusCode::OK, serde_json::json!({ "running": running, "last": last }).to_string())
        }
        Err(e) => error_response(&e),
    }
}

/// `GET /admin/usage[?repositories=GLOB][&fresh=true]`: storage used per
/// repository (from the last pass, or a scan now).
pub async fn usage(State(app): State<Arc<App>>, req: Request) -> Response {
    let (parts, _body) = req.into_parts();
    if let Err(resp) = admin(&app, &parts).await {
        return resp;
    }
    let query = parts.uri.query().unwrap_or("");
    let mut glob = None;
    let mut fresh = false;
    for kv in query.split('&').filter(|kv| !kv.is_empty()) {
        match kv.split_once('=') {
            Some(("repositories", v)) => {
                let v = percent_decode(v);
                if crate::config::access::check_pattern(&v).is_err() {
                    return error_response(&OciError::Unsupported(format!(
                        "repositories={v:?} is not a repository glob"
                    )));
                }
                glob = Some(v);
            }
            Some(("fresh", v)) => fresh = matches!(v, "true" | "1"),
            _ => return error_response(&OciError::Unsupported(format!("unknown parameter {kv:?}"))),
        }
    }
    match app.registry.usage(glob.as_deref(), fresh).await {
        Ok(report) => json(StatusCode::OK, serde_json::to_string(&report).unwrap_or_default()),
        Err(e) => error_response(&e),
    }
}

/// `GET /admin/scrub`: the last scrub's report (`null` before any).
pub async fn scrub_report(State(app): State<Arc<App>>, req: Request) -> Response {
    let (parts, _body) = req.into_parts();
    if let Err(resp) = admin(&app, &parts).await {
        return resp;
    }
    match app.registry.scrub_last_report().await {
        Ok(report) => json(StatusCode::OK, serde_json::json!({ "last": report }).to_string()),
        Err(e) => error_response(&e),
    }
}

/// `POST /admin/scrub[?repair=true]`: start a scrub in the background
/// (202); its report is at `GET /admin/scrub` and its findings in
/// `/metrics` when it ends.
pub async fn scrub_start(State(app): State<Arc<App>>, req: Request) -> Response {
    let (parts, _body) = req.into_parts();
    let identity = match admin(&app, &parts).await {
        Ok(id) => id,
        Err(resp) => return resp,
    };
    let repair = parts.uri.query().unwrap_or("").split('&').any(|kv| matches!(kv, "repair=true" | "repair=1"));
    let by = identity.qualified_subject().unwrap_or_default();
    tracing::info!(target: "berth::audit", subject = %by, operation = "scrub_start", repair, outcome = "ok", "audit");
    let registry = app.registry.clone();
    tokio::spawn(async move {
        let options = crate::registry::gc::scrub::ScrubOptions { repair, ..Default::default() };
        match registry.scrub(&options, &crate::registry::gc::no_progress).await {
            Ok(r) => tracing::info!(
                corrupt = r.corrupt.len(),
                missing = r.missing.len(),
                dangling = r.dangling.len(),
                orphaned = r.orphaned.len(),
                "scrub done"
            ),
            Err(e) => tracing::warn!(error = %e, "scrub failed"),
        }
    });
    let mut resp = json(StatusCode::ACCEPTED, r#"{"started":true}"#.into());
    resp.headers_mut().insert(header::LOCATION, http::HeaderValue::from_static("/admin/scrub"));
    resp
}

/// `%2A` and friends in a query value; invalid escapes stay as they are.
fn percent_decode(v: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `POST /admin/gc`: start a pass in the background (202), or with
/// `dry_run=true` run a read-only pass and answer its report.
pub async fn gc_start(State(app): State<Arc<App>>, req: Request) -> Response {
    let (parts, _body) = req.into_parts();
    let identity = match admin(&app, &parts).await {
        Ok(id) => id,
        Err(resp) => return resp,
    };
    let dry_run =
        parts.uri.query().unwrap_or("").split('&').any(|kv| matches!(kv, "dry_run=true" | "dry_run=1" | "dry_run"));
    let by = identity.qualified_subject().unwrap_or_default();
    if dry_run {
        return match app.registry.gc_pass(true, &crate::registry::gc::no_progress).await {
            Ok(Some(report)) => json(StatusCode::OK, serde_json::to_string(&report).unwrap_or_default()),
            Ok(None) => error_response(&OciError::internal("a dry run never waits for the lease")),
            Err(e) => error_response(&e),
        };
    }
    if app.registry.gc_running() {
        return json(StatusCode::CONFLICT, r#"{"started":false,"reason":"a pass is running on this replica"}"#.into());
    }
    tracing::info!(target: "berth::audit", subject = %by, operation = "gc_start", outcome = "ok", "audit");
    let registry = app.registry.clone();
    tokio::spawn(async move {
        match registry.gc_pass(false, &crate::registry::gc::no_progress).await {
            Ok(Some(_)) => {}
            Ok(None) => tracing::info!("garbage collection not started: another replica holds the lease"),
            Err(e) => tracing::warn!(error = %e, "garbage collection pass failed"),
        }
    });
    let mut resp = json(StatusCode::ACCEPTED, r#"{"started":true}"#.into());
    resp.headers_mut().insert(header::LOCATION, http::HeaderValue::from_static("/admin/gc"));
    resp
}

pub async fn revoke(State(app): State<Arc<App>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let identity = match admin(&app, &parts).await {
        Ok(id) => id,
        Err(resp) => return resp,
    };
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
