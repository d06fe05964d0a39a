//! Token revocation. A revocation is a durable record in the object store
//! (one object per record, DESIGN invariant 3), announced to every replica
//! over the shared state's pub/sub so it applies everywhere at once; each
//! replica also re-reads the records periodically, which bounds the effect
//! of a lost announcement (Redis down).
//!
//! Two kinds: one token by `jti` (kept until the token would have expired),
//! and every token of a subject issued before a time.
//!
//! ```text
//! _revocations/jti/<jti>            {"jti": ..., "exp": unix seconds}
//! _revocations/subject/<hex(name)>  {"subject": ..., "before": unix seconds}
//! ```

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use berth_storage::{ObjectStoreExt, PutMode};
use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::{Registry, Result};
use crate::oci::OciError;

/// The pub/sub channel carrying new revocations.
pub const REVOCATION_CHANNEL: &str = "berth:revocations";
const PREFIX: &str = "_revocations/";

/// One revocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Revocation {
    /// One token, until `exp` (after which it is invalid anyway).
    Token { jti: String, exp: u64 },
    /// Every token of `subject` issued before `before`.
    Subject { subject: String, before: u64 },
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A `jti` becomes a key segment: keep it to a safe alphabet and length.
fn valid_jti(jti: &str) -> bool {
    !jti.is_empty() && jti.len() <= 128 && jti.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Revocation {
    fn key(&self) -> String {
        match self {
            Revocation::Token { jti, .. } => format!("{PREFIX}jti/{jti}"),
            Revocation::Subject { subject, .. } => format!("{PREFIX}subject/{}", hex::encode(subject.as_bytes())),
        }
    }

    fn validate(&self) -> Result<()> {
        match self {
            Revocation::Token { jti, .. } if !valid_jti(jti) => {
                Err(OciError::Unsupported("a jti is 1-128 characters of [A-Za-z0-9_-]".into()))
            }
            Revocation::Subject { subject, .. } if subject.is_empty() || subject.len() > 256 => {
                Err(OciError::Unsupported("a subject is 1-256 bytes".into()))
            }
            _ => Ok(()),
        }
    }
}

/// The revocations in force, as every replica holds them in memory.
#[derive(Debug, Default)]
pub struct RevocationList {
    inner: RwLock<Lists>,
    /// Set once the records have been read from the object store: until
    /// then nobody can tell a revoked token from a good one.
    loaded: std::sync::atomic::AtomicBool,
}

#[derive(Debug, Default)]
struct Lists {
    tokens: HashMap<String, u64>,
    subjects: HashMap<String, u64>,
}

impl RevocationList {
    /// Whether a token with this `jti`, `sub` and `iat` is revoked.
    pub fn is_revoked(&self, jti: &str, subject: &str, issued_at: u64) -> bool {
        let lists = self.inner.read().unwrap_or_else(|p| p.into_inner());
        lists.tokens.contains_key(jti) || lists.subjects.get(subject).is_some_and(|before| issued_at < *before)
    }

    fn apply(&self, r: &Revocation) {
        let mut lists = self.inner.write().unwrap_or_else(|p| p.into_inner());
        match r {
            Revocation::Token { jti, exp } => {
                lists.tokens.insert(jti.clone(), *exp);
            }
            Revocation::Subject { subject, before } => {
                let entry = lists.subjects.entry(subject.clone()).or_insert(0);
                *entry = (*entry).max(*before);
            }
        }
    }

    /// Whether the durable records have been read at least once.
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Replace the list with everything the object store holds.
    pub fn replace(&self, all: Vec<Revocation>) {
        let fresh = RevocationList::default();
        for r in &all {
            fresh.apply(r);
        }
        let fresh = fresh.inner.into_inner().unwrap_or_else(|p| p.into_inner());
        *self.inner.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        self.loaded.store(true, std::sync::atomic::Ordering::Release);
        crate::metrics::get().revocations_loaded_at.store(now(), std::sync::atomic::Ordering::Relaxed);
    }

    pub fn len(&self) -> usize {
        let lists = self.inner.read().unwrap_or_else(|p| p.into_inner());
        lists.tokens.len() + lists.subjects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Registry {
    /// Record a revocation durably, apply it here, and announce it to every
    /// replica. Only the durable write can fail the call: a lost
    /// announcement is made up for by the periodic reload.
    pub async fn revoke(&self, revocation: Revocation, list: &RevocationList) -> Result<()> {
        revocation.validate()?;
        let body = Bytes::from(serde_json::to_vec(&revocation).map_err(OciError::internal)?);
        self.store.put(&revocation.key(), body.clone(), PutMode::Overwrite).await?;
        list.apply(&revocation);
        if let Err(e) = self.state.publish(REVOCATION_CHANNEL, body).await {
            tracing::warn!(error = %e, "cannot announce a revocation; replicas apply it at their next reload");
        }
        Ok(())
    }

    /// Read every revocation record (expired token records are removed).
    pub async fn load_revocations(&self) -> Result<Vec<Revocation>> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        let now = now();
        loop {
            let page = self.store.list(PREFIX, after.as_deref(), 1000).await?;
            for obj in &page.objects {
                let raw = match self.store.get_bytes(&obj.key, 64 * 1024).await {
                    Ok(raw) => raw,
                    Err(e) if e.is_not_found() => continue,
                    Err(e) => return Err(e.into()),
                };
                match serde_json::from_slice::<Revocation>(&raw) {
                    Ok(Revocation::Token { exp, .. }) if exp < now => {
                        // The token is dead anyway; the record can go.
                        let _ = self.store.delete(&obj.key).await;
                    }
                    Ok(r) => out.push(r),
                    Err(e) => tracing::warn!(key = %obj.key, error = %e, "ignoring an unreadable revocation record"),
                }
            }
            match page.next_start_after {
                Some(next) => after = Some(next),
                None => return Ok(out),
            }
        }
    }

    /// Keep `list` current: load everything, then apply announcements as
    /// they arrive, and reload every `every` (and after any gap in the
    /// subscription) so nothing missed stays missed.
    pub fn spawn_revocation_sync(&self, list: Arc<RevocationList>, every: Duration) -> tokio::task::JoinHandle<()> {
        let registry = self.clone();
        tokio::spawn(async move {
            let reload = |registry: Registry, list: Arc<RevocationList>| async move {
                match registry.load_revocations().await {
                    Ok(all) => list.replace(all),
                    Err(e) => tracing::warn!(error = %e, "cannot reload revocations; keeping the ones known"),
                }
            };
            loop {
                let subscription = registry.state.subscribe(REVOCATION_CHANNEL).await;
                // Reload after subscribing, so nothing falls between the two.
                reload(registry.clone(), list.clone()).await;
                match subscription {
                    Ok(mut messages) => {
                        let mut tick = tokio::time::interval(every);
                        tick.tick().await;
                        loop {
                            tokio::select! {
                                m = messages.next() => match m {
                                    Some(m) => match serde_json::from_slice::<Revocation>(&m) {
                                        Ok(r) => list.apply(&r),
                                        Err(_) => tracing::debug!("ignoring a malformed revocation announcement"),
                                    },
                                    None => break,
                                },
                                _ = tick.tick() => reload(registry.clone(), list.clone()).await,
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot subscribe to revocations; reloading periodically");
                        tokio::time::sleep(every.min(Duration::from_secs(5))).await;
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_keys() {
        let l = RevocationList::default();
        l.apply(&Revocation::Token { jti: "abc".into(), exp: 10 });
        l.apply(&Revocation::Subject { subject: "alice".into(), before: 100 });
        l.apply(&Revocation::Subject { subject: "alice".into(), before: 50 });
        assert!(l.is_revoked("abc", "bob", 0));
        assert!(l.is_revoked("x", "alice", 99));
        assert!(!l.is_revoked("x", "alice", 100), "issued after the cut-off");
        assert!(!l.is_revoked("x", "bob", 0));
        assert_eq!(Revocation::Subject { subject: "a/b".into(), before: 1 }.key(), "_revocations/subject/612f62");
        assert!(Revocation::Token { jti: "../x".into(), exp: 1 }.validate().is_err());
        assert!(Revocation::Token { jti: "ok-jti_1".into(), exp: 1 }.validate().is_ok());
        let parsed: Revocation = serde_json::from_str(r#"{"subject":"s","before":5}"#).unwrap();
        assert_eq!(parsed, Revocation::Subject { subject: "s".into(), before: 5 });
    }
}
