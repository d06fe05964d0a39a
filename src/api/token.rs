//! The token service endpoints (Docker registry token authentication):
//! `GET <path>?service=&scope=...` with Basic credentials, the OAuth2
//! `POST <path>` form (`grant_type=password` or `refresh_token`), and the
//! JWKS document other verifiers fetch the current public key from.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue, StatusCode};
use http_body_util::BodyExt as _;
use serde_json::json;

use super::errors::error_response;
use super::App;
use crate::auth::{AuthMethod, Identity, IssuedToken};
use crate::oci::OciError;

/// Largest token request form accepted.
const MAX_FORM: usize = 64 * 1024;

fn params(raw: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(raw).into_owned().collect()
}

fn all<'a>(params: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    params.iter().filter(|(k, _)| k == key).map(|(_, v)| v.as_str()).collect()
}

fn one<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// An error answer of the token endpoint; refusals (429) are audited like
/// the registry's own.
fn refused(e: &OciError, client: std::net::IpAddr) -> Response {
    let resp = error_response(e);
    if resp.status() == StatusCode::TOO_MANY_REQUESTS {
        super::handlers::audit(None, client, None, "token", resp.status());
    }
    resp
}

fn unauthorized(app: &App, message: &'static str) -> Response {
    error_response(&OciError::Unauthorized { challenge: app.gate.challenge_basic(), message })
}

/// The service a request names must be ours (clients send what the
/// challenge told them).
fn check_service(app: &App, params: &[(String, String)]) -> Result<(), OciError> {
    let ours = app.gate.token_service().map(|t| t.service.as_str());
    match (one(params, "service"), ours) {
        (Some(asked), Some(ours)) if asked != ours => {
            Err(OciError::Unsupported(format!("this token service serves {ours:?}, not {asked:?}")))
        }
        _ => Ok(()),
    }
}

fn token_json(issued: &IssuedToken, oauth: bool) -> Response {
    let issued_at = crate::timefmt::rfc3339(issued.issued_at);
    let mut body = if oauth {
        json!({ "access_token": issued.token, "expires_in": issued.expires_in, "issued_at": issued_at, "scope": "" })
    } else {
        json!({ "token": issued.token, "access_token": issued.token, "expires_in": issued.expires_in, "issued_at": issued_at })
    };
    if let Some(refresh) = &issued.refresh_token {
        body["refresh_token"] = json!(refresh);
    }
    let mut resp = (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response();
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// `GET`: Basic credentials (or none, for a registry that allows anonymous
/// access), one or more `scope` parameters, `offline_token=true` for a
/// refresh token.
pub async fn token_get(State(app): State<Arc<App>>, req: Request) -> Response {
    let (parts, _body) = req.into_parts();
    let client = super::client_of(&parts.extensions);
    if let Err(e) = app.admit(crate::ratelimit::Class::Auth, &Identity::anonymous(), client.address, None).await {
        return refused(&e, client.address);
    }
    let params = params(parts.uri.query().unwrap_or("").as_bytes());
    if let Err(e) = check_service(&app, &params) {
        return error_response(&e);
    }
    let identity = match app.gate.authenticate(&parts.headers, &client).await {
        Ok(id) => id,
        Err(OciError::Unauthorized { message, .. }) => {
            super::handlers::audit(None, client.address, None, "token", StatusCode::UNAUTHORIZED);
            return unauthorized(&app, message);
        }
        Err(e) => return refused(&e, client.address),
    };
    if identity.method() == AuthMethod::Bearer {
        // A token cannot be traded for another, possibly broader, one.
        return unauthorized(&app, "present a password, not a token, to the token service");
    }
    if app.gate.required() && identity.is_anonymous() {
        return unauthorized(&app, "authentication required");
    }
    let scopes: Vec<String> = all(&params, "scope").into_iter().map(str::to_owned).collect();
    let offline = one(&params, "offline_token") == Some("true");
    match app.gate.issue_token(&identity, &scopes, offline) {
        Ok(issued) => token_json(&issued, false),
        Err(e) => error_response(&e),
    }
}

/// `POST`: the OAuth2 form, `grant_type=password` (with `username`,
/// `password`) or `grant_type=refresh_token` (with `refresh_token`).
pub async fn token_post(State(app): State<Arc<App>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let client = super::client_of(&parts.extensions);
    if let Err(e) = app.admit(crate::ratelimit::Class::Auth, &Identity::anonymous(), client.address, None).await {
        return refused(&e, client.address);
    }
    let form = match read_form(body).await {
        Ok(f) => f,
        Err(e) => return error_response(&e),
    };
    if let Err(e) = check_service(&app, &form) {
        return error_response(&e);
    }
    let identity: Identity = match one(&form, "grant_type") {
        Some("password") => {
            let (Some(user), Some(password)) = (one(&form, "username"), one(&form, "password")) else {
                return error_response(&OciError::Unsupported(
                    "grant_type=password needs username and password".into(),
                ));
            };
            match app.gate.check_password(user, password.to_owned(), None, client.address).await {
                Ok(id) => id,
                Err(OciError::Unauthorized { message, .. }) => {
                    super::handlers::audit(None, client.address, None, "token", StatusCode::UNAUTHORIZED);
                    return unauthorized(&app, message);
                }
                Err(e) => return refused(&e, client.address),
            }
        }
        Some("refresh_token") => {
            let Some(raw) = one(&form, "refresh_token") else {
                return error_response(&OciError::Unsupported("grant_type=refresh_token needs refresh_token".into()));
            };
            match app.gate.redeem_refresh_token(raw) {
                Ok(id) => id,
                Err(OciError::Unauthorized { message, .. }) => return unauthorized(&app, message),
                Err(e) => return error_response(&e),
            }
        }
        _ => return error_response(&OciError::Unsupported("grant_type must be password or refresh_token".into())),
    };
    let scopes: Vec<String> = all(&form, "scope").into_iter().map(str::to_owned).collect();
    let offline = one(&form, "access_type") == Some("offline");
    match app.gate.issue_token(&identity, &scopes, offline) {
        Ok(issued) => token_json(&issued, true),
        Err(e) => error_response(&e),
    }
}

async fn read_form(body: Body) -> Result<Vec<(String, String)>, OciError> {
    let limited = http_body_util::Limited::new(body, MAX_FORM);
    match limited.collect().await {
        Ok(collected) => Ok(params(&collected.to_bytes())),
        Err(_) => Err(OciError::SizeInvalid(format!("the form is over {MAX_FORM} bytes or unreadable"))),
    }
}

/// The public key of the token service as a JWKS document.
pub async fn jwks(State(app): State<Arc<App>>) -> Response {
    let keys: Vec<_> = app.gate.token_service().map(|t| t.key.public_jwk().clone()).into_iter().collect();
    let body = json!({ "keys": keys });
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}
