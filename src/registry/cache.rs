//! In-process caches for the manifest read path, so a GET by tag costs no
//! backend round trip when nothing changed.
//!
//! - Manifests by (repository, digest) are immutable until deleted: cached
//!   up to a byte budget.
//! - Tag -> digest is cached and invalidated whenever a tag is written or
//!   deleted: at once in this process, and in every other process through
//!   the shared state's pub/sub channel. Entries also expire after `tag_ttl`,
//!   which bounds how long a lost invalidation can serve a moved tag.
//!
//! A read that raced with an invalidation must not re-insert what it read
//! before it: every invalidation bumps a generation, and an entry is
//! inserted only if the generation did not move while it was being read.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use berth_state::SharedState;
use bytes::Bytes;
use futures::StreamExt;

use super::StoredManifest;
use crate::oci::Digest;

/// The pub/sub channel carrying invalidations between processes.
pub const INVALIDATION_CHANNEL: &str = "berth:cache-invalidate";

/// Cache limits.
#[derive(Debug, Clone, Copy)]
pub struct CacheOptions {
    /// Bytes of manifests kept in memory (0 disables the manifest cache).
    pub manifest_bytes: usize,
    /// Longest time a tag entry is trusted without hearing of a change.
    pub tag_ttl: Duration,
    /// Most tag entries kept.
    pub max_tags: usize,
}

impl Default for CacheOptions {
    fn default() -> Self {
        CacheOptions { manifest_bytes: 32 * 1024 * 1024, tag_ttl: Duration::from_secs(5), max_tags: 100_000 }
    }
}

#[derive(Debug, Default)]
struct Manifests {
    entries: HashMap<(String, Digest), StoredManifest>,
    bytes: usize,
}

/// The caches of one process.
#[derive(Debug)]
pub struct Caches {
    options: CacheOptions,
    manifests: Mutex<Manifests>,
    tags: Mutex<HashMap<(String, String), (Digest, Instant)>>,
    generation: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A message on the invalidation channel.
fn encode(kind: &str, repo: &str, name: &str) -> Bytes {
    Bytes::from(format!("{kind}\n{repo}\n{name}"))
}

impl Caches {
    pub fn new(options: CacheOptions) -> Caches {
        Caches {
            options,
            manifests: Mutex::new(Manifests::default()),
            tags: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
        }
    }

    /// Read the generation before reading the backend; pass it to `put_*`.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn tag(&self, repo: &str, tag: &str) -> Option<Digest> {
        let found = {
            let tags = lock(&self.tags);
            tags.get(&(repo.to_owned(), tag.to_owned()))
                .filter(|(_, at)| at.elapsed() < self.options.tag_ttl)
                .map(|(digest, _)| digest.clone())
        };
        let m = crate::metrics::get();
        crate::metrics::inc(if found.is_some() { &m.cache_tag_hits } else { &m.cache_tag_misses });
        found
    }

    pub fn put_tag(&self, repo: &str, tag: &str, digest: Digest, read_at_generation: u64) {
        if self.options.tag_ttl.is_zero() {
            return;
        }
        let mut tags = lock(&self.tags);
        if self.generation() != read_at_generation {
            return;
        }
        if tags.len() >= self.options.max_tags {
            tags.retain(|_, (_, at)| at.elapsed() < self.options.tag_ttl);
            if tags.len() >= self.options.max_tags {
                tags.clear();
            }
        }
        tags.insert((repo.to_owned(), tag.to_owned()), (digest, Instant::now()));
    }

    pub fn manifest(&self, repo: &str, digest: &Digest) -> Option<StoredManifest> {
        let found = lock(&self.manifests).entries.get(&(repo.to_owned(), digest.clone())).cloned();
        let m = crate::metrics::get();
        crate::metrics::inc(if found.is_some() { &m.cache_manifest_hits } else { &m.cache_manifest_misses });
        found
    }

    pub fn put_manifest(&self, repo: &str, manifest: StoredManifest, read_at_generation: u64) {
        let size = manifest.bytes.len();
        let budget = self.options.manifest_bytes;
        if size > budget / 8 {
            return;
        }
        let mut m = lock(&self.manifests);
        if self.generation() != read_at_generation {
            return;
        }
        if m.bytes + size > budget {
            // Drop about a quarter, in the map's (arbitrary) order.
            let target = budget * 3 / 4;
            let mut victims = Vec::new();
            let mut freed = 0;
            for (k, v) in &m.entries {
                if m.bytes - freed <= target.saturating_sub(size) {
                    break;
                }
                freed += v.bytes.len();
                victims.push(k.clone());
            }
            for k in victims {
                m.entries.remove(&k);
            }
            m.bytes -= freed;
        }
        if let Some(old) = m.entries.insert((repo.to_owned(), manifest.digest.clone()), manifest) {
            m.bytes -= old.bytes.len();
        }
        m.bytes += size;
    }

    fn forget_tag(&self, repo: &str, tag: &str) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        lock(&self.tags).remove(&(repo.to_owned(), tag.to_owned()));
    }

    fn forget_manifest(&self, repo: &str, digest: &str) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let Ok(d) = digest.parse::<Digest>() {
            let mut m = lock(&self.manifests);
            if let Some(old) = m.entries.remove(&(repo.to_owned(), d)) {
                m.bytes -= old.bytes.len();
            }
        }
    }

    /// Apply an invalidation received from any process (including this one).
    pub fn apply(&self, message: &[u8]) {
        let Ok(text) = std::str::from_utf8(message) else { return };
        let mut parts = text.splitn(3, '\n');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("tag"), Some(repo), Some(tag)) => self.forget_tag(repo, tag),
            (Some("manifest"), Some(repo), Some(digest)) => self.forget_manifest(repo, digest),
            // A repository changed in a way no cached entry depends on
            // (records.rs): for derived indexes only.
            (Some("repo"), Some(_), _) => {}
            _ => tracing::debug!("ignoring malformed cache invalidation"),
        }
    }

    /// Forget a tag here and tell every other process.
    pub async fn invalidate_tag(&self, state: &dyn SharedState, repo: &str, tag: &str) {
        self.forget_tag(repo, tag);
        if let Err(e) = state.publish(INVALIDATION_CHANNEL, encode("tag", repo, tag)).await {
            tracing::warn!(error = %e, "cannot publish tag invalidation; other replicas rely on the tag TTL");
        }
    }

    /// Forget a manifest here and tell every other process.
    pub async fn invalidate_manifest(&self, state: &dyn SharedState, repo: &str, digest: &Digest) {
        self.forget_manifest(repo, &digest.to_string());
        if let Err(e) = state.publish(INVALIDATION_CHANNEL, encode("manifest", repo, &digest.to_string())).await {
            tracing::warn!(error = %e, "cannot publish manifest invalidation; other replicas rely on the tag TTL");
        }
    }

    /// Apply invalidations from other processes until the channel ends.
    pub async fn listen(self: Arc<Self>, state: Arc<dyn SharedState>) {
        loop {
            match state.subscribe(INVALIDATION_CHANNEL).await {
                Ok(mut messages) => {
                    while let Some(m) = messages.next().await {
                        self.apply(&m);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot subscribe to cache invalidations"),
            }
            // The subscription ended or failed: anything may have changed meanwhile.
            self.clear_tags();
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    fn clear_tags(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        lock(&self.tags).clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(n: u8, size: usize) -> StoredManifest {
        let bytes = Bytes::from(vec![n; size]);
        StoredManifest { digest: Digest::sha256(&bytes), media_type: "x".into(), bytes }
    }

    #[test]
    fn tags_invalidate_and_expire() {
        let c = Caches::new(CacheOptions { tag_ttl: Duration::from_millis(200), ..CacheOptions::default() });
        let d = Digest::sha256(b"a");
        let g = c.generation();
        c.put_tag("r", "t", d.clone(), g);
        assert_eq!(c.tag("r", "t"), Some(d.clone()));
        c.apply(b"tag\nr\nt");
        assert_eq!(c.tag("r", "t"), None);
        // A read that began before the invalidation does not re-insert.
        c.put_tag("r", "t", d.clone(), g);
        assert_eq!(c.tag("r", "t"), None);
        c.put_tag("r", "t", d.clone(), c.generation());
        assert!(c.tag("r", "t").is_some());
        let deadline = Instant::now() + Duration::from_secs(5);
        while c.tag("r", "t").is_some() {
            assert!(Instant::now() < deadline, "tag entry never expired");
            std::thread::sleep(Duration::from_millis(20));
        }
        c.apply(b"garbage");
        c.apply(&[0xff, 0xfe]);
    }

    #[test]
    fn manifests_respect_the_budget() {
        let c = Caches::new(CacheOptions { manifest_bytes: 10_000, ..CacheOptions::default() });
        for i in 0..100u8 {
            c.put_manifest("r", manifest(i, 1000), c.generation());
            assert!(lock(&c.manifests).bytes <= 10_000);
        }
        let m = manifest(200, 100);
        c.put_manifest("r", m.clone(), c.generation());
        assert_eq!(c.manifest("r", &m.digest), Some(m.clone()));
        assert_eq!(c.manifest("other", &m.digest), None, "entries are per repository");
        c.apply(format!("manifest\nr\n{}", m.digest).as_bytes());
        assert_eq!(c.manifest("r", &m.digest), None);
        // Larger than an eighth of the budget: not cached.
        let big = manifest(1, 2000);
        c.put_manifest("r", big.clone(), c.generation());
        assert_eq!(c.manifest("r", &big.digest), None);
    }
}
