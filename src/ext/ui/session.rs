//! Sign-in sessions of the UI and their CSRF tokens.
//!
//! A session is a random 256-bit id in a cookie (`__Host-berth_session`:
//! HttpOnly, Secure, SameSite=Strict, Path=/); shared state holds, under the
//! SHA-256 of the id (a leaked state dump holds no usable cookie), the
//! identity the sign-in established, when it began, and the session's CSRF
//! token. With Redis every replica knows every session. A session ends after
//! `session_idle` unused, `session_max` after the sign-in, at sign-out,
//! when the token it was made from expires, and as soon as its credential
//! ends: the token or the subject revoked, the htpasswd user removed or
//! given a new password ([`crate::auth::Gate::session_check`], on every use).
//!
//! CSRF: every state-changing form carries a token that must equal the
//! session's (signed in) or the `__Host-berth_csrf` cookie's (the sign-in
//! form, before any session: the double-submit pattern), compared in
//! constant time; a POST whose `Origin` names another site is refused too.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use http::HeaderMap;
use ring::rand::{SecureRandom as _, SystemRandom};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::auth::identity::SavedIdentity;
use crate::auth::{Gate, Identity, SessionCheck, SessionCredential};
use berth_state::SharedState;

pub const SESSION_COOKIE: &str = "__Host-berth_session";
pub const CSRF_COOKIE: &str = "__Host-berth_csrf";

/// A random token: 32 bytes, base64url.
pub fn random_token() -> Option<String> {
    let mut bytes = [0u8; 32];
    SystemRandom::new().fill(&mut bytes).ok()?;
    Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// Whether `s` looks like a token [`random_token`] makes (so nothing else
/// reaches shared state keys or comparisons).
fn well_formed(s: &str) -> bool {
    s.len() == 43 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Constant-time equality of two tokens.
pub fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0 && !a.is_empty()
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn state_key(id: &str) -> String {
    format!("ui:session:{}", hex::encode(Sha256::digest(id.as_bytes())))
}

/// Where a signed-out session's mark is kept, so that a page view racing
/// the sign-out cannot write the session back.
fn ended_key(id: &str) -> String {
    format!("ui:ended:{}", hex::encode(Sha256::digest(id.as_bytes())))
}

/// What shared state holds per session.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    identity: SavedIdentity,
    csrf: String,
    /// Unix seconds: the sign-in, the last time the expiry was pushed,
    /// and the latest end (session_max, or the token's expiry).
    created: u64,
    touched: u64,
    ends: u64,
    /// What the session keeps of its credential.
    #[serde(default)]
    credential: SessionCredential,
}

/// A signed-in visitor.
#[derive(Debug, Clone)]
pub struct Session {
    pub id: String,
    pub identity: Identity,
    pub csrf: String,
}

/// Session limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub idle: Duration,
    pub max: Duration,
}

/// The value of cookie `name` in the request, if present once.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

/// A `Set-Cookie` value for one of the UI's cookies.
pub fn set_cookie(name: &str, value: &str, max_age: Option<Duration>) -> String {
    let age = match max_age {
        Some(d) => format!("; Max-Age={}", d.as_secs()),
        None => String::new(),
    };
    format!("{name}={value}; Path=/; Secure; HttpOnly; SameSite=Strict{age}")
}

/// A `Set-Cookie` value removing a cookie.
pub fn clear_cookie(name: &str) -> String {
    format!("{name}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// Start a session for `identity`; its id (for the cookie) and CSRF token.
/// `token_expires`: the end of the bearer token it was made from.
pub async fn create(
    state: &dyn SharedState,
    identity: &Identity,
    credential: SessionCredential,
    limits: Limits,
    token_expires: Option<u64>,
) -> Result<Session, String> {
    let saved = identity.save().ok_or("an anonymous caller has no session")?;
    let (id, csrf) = match (random_token(), random_token()) {
        (Some(a), Some(b)) => (a, b),
        _ => return Err("no random bytes".into()),
    };
    let now = now_secs();
    let mut ends = now + limits.max.as_secs();
    if let Some(t) = token_expires {
        ends = ends.min(t);
    }
    let stored = Stored { identity: saved, csrf: csrf.clone(), created: now, touched: now, ends, credential };
    let value = serde_json::to_vec(&stored).map_err(|e| e.to_string())?;
    let ttl = limits.idle.min(Duration::from_secs(ends.saturating_sub(now).max(1)));
    state.set(&state_key(&id), Bytes::from(value), ttl).await.map_err(|e| e.to_string())?;
    Ok(Session { id, identity: identity.clone(), csrf })
}

/// The session the request's cookie names, if it is live and `gate` says
/// its credential still holds. Pushes its idle expiry when a quarter of
/// `idle` passed since the last push.
pub async fn lookup(
    state: &dyn SharedState,
    gate: &Gate,
    headers: &HeaderMap,
    limits: Limits,
) -> Result<Option<Session>, String> {
    let Some(id) = cookie(headers, SESSION_COOKIE).filter(|v| well_formed(v)) else { return Ok(None) };
    let key = state_key(id);
    let Some(raw) = state.get(&key).await.map_err(|e| e.to_string())? else { return Ok(None) };
    let Ok(mut stored) = serde_json::from_slice::<Stored>(&raw) else { return Ok(None) };
    let now = now_secs();
    if now >= stored.ends {
        let _ = state.delete(&key).await;
        return Ok(None);
    }
    let Some(identity) = Identity::restore(&stored.identity) else { return Ok(None) };
    match gate.session_check(&identity, &stored.credential, stored.created) {
        SessionCheck::Valid => {}
        SessionCheck::Ended(why) => {
            tracing::info!(
                target: "berth::auth",
                subject = identity.qualified_subject().unwrap_or_default(),
                why,
                "UI session ended"
            );
            let _ = state.delete(&key).await;
            return Ok(None);
        }
        SessionCheck::Unknown => return Err("token revocations not loaded yet".into()),
    }
    if now.saturating_sub(stored.touched) >= limits.idle.as_secs() / 4 {
        stored.touched = now;
        if let Ok(value) = serde_json::to_vec(&stored) {
            let ttl = limits.idle.min(Duration::from_secs(stored.ends - now));
            // Best effort: a failed push only shortens the session.
            let _ = state.set(&key, Bytes::from(value), ttl).await;
            // A sign-out between the read above and this write must win:
            // it marks the id before deleting it, so looking after writing
            // sees the mark whenever the write could have undone it.
            if matches!(state.get(&ended_key(id)).await, Ok(Some(_))) {
                let _ = state.delete(&key).await;
                return Ok(None);
            }
        }
    }
    Ok(Some(Session { id: id.to_owned(), identity, csrf: stored.csrf }))
}

/// End a session: mark the id ended (for as long as a session could
/// live), then delete it.
pub async fn end(state: &dyn SharedState, id: &str, limits: Limits) -> Result<(), String> {
    if !well_formed(id) {
        return Ok(());
    }
    state.set(&ended_key(id), Bytes::from_static(b"1"), limits.max).await.map_err(|e| e.to_string())?;
    state.delete(&state_key(id)).await.map_err(|e| e.to_string())
}

/// Whether a POST comes from this site: its `Origin` (or, without one, its
/// `Referer`) names the host the request was sent to. A request with
/// neither (old clients) is judged by its CSRF token alone.
pub fn same_origin(headers: &HeaderMap) -> bool {
    let host = match headers.get(http::header::HOST).and_then(|v| v.to_str().ok()) {
        Some(h) => h,
        None => return false,
    };
    let named =
        headers.get(http::header::ORIGIN).or_else(|| headers.get(http::header::REFERER)).and_then(|v| v.to_str().ok());
    match named {
        None => true,
        Some("null") => false,
        Some(url) => {
            let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"));
            rest.map(|r| r.split('/').next().unwrap_or("")) == Some(host)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{AuthMethod, Source};

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    #[test]
    fn cookies_and_tokens() {
        let t = random_token().unwrap();
        assert!(well_formed(&t));
        assert!(!well_formed("short"));
        assert!(!well_formed(&format!("{}!", &t[..42])));
        assert!(same_token(&t, &t.clone()));
        assert!(!same_token(&t, &random_token().unwrap()));
        assert!(!same_token("", ""));
        let h = headers(&[("cookie", "a=1; __Host-berth_session=abc ; b=2"), ("cookie", "c=3")]);
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&h, "c"), Some("3"));
        assert_eq!(cookie(&h, "berth_session"), None);
        let set = set_cookie(SESSION_COOKIE, "v", Some(Duration::from_secs(60)));
        for attr in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=60"] {
            assert!(set.contains(attr), "{set}");
        }
    }

    #[test]
    fn origins() {
        assert!(same_origin(&headers(&[("host", "r.example:5000"), ("origin", "https://r.example:5000")])));
        assert!(!same_origin(&headers(&[("host", "r.example:5000"), ("origin", "https://evil.example")])));
        assert!(!same_origin(&headers(&[("host", "r.example"), ("origin", "null")])));
        assert!(same_origin(&headers(&[("host", "r.example"), ("referer", "https://r.example/ui/login")])));
        assert!(!same_origin(&headers(&[("host", "r.example"), ("referer", "https://r.example.evil/ui/")])));
        assert!(same_origin(&headers(&[("host", "r.example")])));
        assert!(!same_origin(&headers(&[])));
    }

    #[tokio::test]
    async fn sessions_live_end_and_expire() {
        let state = berth_state::MemoryState::new();
        let gate = Gate::anonymous();
        let limits = Limits { idle: Duration::from_secs(60), max: Duration::from_secs(600) };
        let id = Identity::restore(
            &Identity::for_tests(Source::Certificate, "alice", &["devs"], AuthMethod::Mtls).save().unwrap(),
        )
        .unwrap();
        let none = SessionCredential::default;
        let s = create(&state, &id, none(), limits, None).await.unwrap();
        let h = headers(&[("cookie", &format!("{SESSION_COOKIE}={}", s.id))]);
        let found = lookup(&state, &gate, &h, limits).await.unwrap().unwrap();
        assert_eq!(found.identity, id);
        assert_eq!(found.csrf, s.csrf);
        // A token already expired gives a session that is over at once.
        let expired = create(&state, &id, none(), limits, Some(now_secs() - 1)).await.unwrap();
        let h2 = headers(&[("cookie", &format!("{SESSION_COOKIE}={}", expired.id))]);
        assert!(lookup(&state, &gate, &h2, limits).await.unwrap().is_none());
        end(&state, &s.id, limits).await.unwrap();
        assert!(lookup(&state, &gate, &h, limits).await.unwrap().is_none());
        // Forged or malformed ids find nothing.
        let forged = headers(&[("cookie", &format!("{SESSION_COOKIE}={}", random_token().unwrap()))]);
        assert!(lookup(&state, &gate, &forged, limits).await.unwrap().is_none());
        let junk = headers(&[("cookie", &format!("{SESSION_COOKIE}=../../etc"))]);
        assert!(lookup(&state, &gate, &junk, limits).await.unwrap().is_none());
        assert!(create(&state, &Identity::anonymous(), none(), limits, None).await.is_err());
        // An htpasswd session whose user this gate does not know is over.
        let htpasswd = Identity::for_tests(Source::Htpasswd, "bob", &[], AuthMethod::Htpasswd);
        let gone = create(&state, &htpasswd, none(), limits, None).await.unwrap();
        let h3 = headers(&[("cookie", &format!("{SESSION_COOKIE}={}", gone.id))]);
        assert!(lookup(&state, &gate, &h3, limits).await.unwrap().is_none());
        // A token session before the revocations are known: cannot tell.
        let token = SessionCredential { token: Some(("j1".into(), now_secs())), entry: None };
        let early = create(&state, &id, token, limits, None).await.unwrap();
        let h4 = headers(&[("cookie", &format!("{SESSION_COOKIE}={}", early.id))]);
        assert!(lookup(&state, &gate, &h4, limits).await.is_err());
    }

    /// A page view that read the session just before a sign-out and pushes
    /// its expiry just after it does not bring the session back.
    #[tokio::test]
    async fn a_sign_out_wins_over_a_racing_page_view() {
        let state = berth_state::MemoryState::new();
        let gate = Gate::anonymous();
        let limits = Limits { idle: Duration::from_secs(60), max: Duration::from_secs(600) };
        let id = Identity::for_tests(Source::Certificate, "alice", &[], AuthMethod::Mtls);
        let s = create(&state, &id, SessionCredential::default(), limits, None).await.unwrap();
        let h = headers(&[("cookie", &format!("{SESSION_COOKIE}={}", s.id))]);
        // What the page view read: last pushed long ago, so it pushes again.
        let raw = state.get(&state_key(&s.id)).await.unwrap().unwrap();
        let mut stale: Stored = serde_json::from_slice(&raw).unwrap();
        stale.touched = 0;
        end(&state, &s.id, limits).await.unwrap();
        // Its write-back lands after the sign-out...
        let back = Bytes::from(serde_json::to_vec(&stale).unwrap());
        state.set(&state_key(&s.id), back, limits.idle).await.unwrap();
        // ...and the look after the write finds the mark.
        assert!(lookup(&state, &gate, &h, limits).await.unwrap().is_none());
        assert!(state.get(&state_key(&s.id)).await.unwrap().is_none(), "the session was left in shared state");
        // Without a sign-out, the same push keeps the session.
        let live = create(&state, &id, SessionCredential::default(), limits, None).await.unwrap();
        let raw = state.get(&state_key(&live.id)).await.unwrap().unwrap();
        let mut due: Stored = serde_json::from_slice(&raw).unwrap();
        due.touched = 0;
        state.set(&state_key(&live.id), Bytes::from(serde_json::to_vec(&due).unwrap()), limits.idle).await.unwrap();
        let h2 = headers(&[("cookie", &format!("{SESSION_COOKIE}={}", live.id))]);
        assert!(lookup(&state, &gate, &h2, limits).await.unwrap().is_some());
    }
}
