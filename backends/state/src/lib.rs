//! The shared-state contract: what replicas of a fleet share that may be lost
//! without losing committed data (upload sessions, caches, counters, locks,
//! notifications). The in-memory implementation serves the embedded shape;
//! Redis serves the fleet.

use std::fmt;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

mod memory;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use memory::MemoryState;

/// Result alias for state operations.
pub type Result<T, E = StateError> = std::result::Result<T, E>;

/// Errors of the shared state.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The state service cannot be reached now; the caller may retry later.
    #[error("shared state unavailable: {0}")]
    Unavailable(String),
    /// A write under a lease was refused because the lease was lost: another
    /// holder has taken the lock since.
    #[error("lease on {name} is no longer held")]
    Fenced { name: String },
    /// Anything else from the backend.
    #[error("{backend} state error: {source}")]
    Backend {
        backend: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
}

/// A held lock. `token` grows with every acquisition of the same lock name,
/// so a write carrying an older token can be detected and refused (fencing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub name: String,
    pub token: u64,
}

/// Shared state as the registry uses it.
///
/// Guarantees (checked by [`testing::run_all`]):
/// - values expire after their TTL and are then absent;
/// - at most one unexpired lease per lock name; a lease's token is larger
///   than every earlier token of that name;
/// - `set_fenced` writes only while the given lease is the current holder;
/// - `incr` is atomic;
/// - `due` returns scheduled members whose time has passed, oldest first;
/// - `members` returns exactly the members whose heartbeat has not expired;
/// - a message published after `subscribe` returned reaches that subscriber
///   (best effort: a slow subscriber may miss messages, never see reordering).
#[async_trait]
pub trait SharedState: Send + Sync + fmt::Debug + 'static {
    /// Short backend name for logs ("memory", "redis").
    fn backend(&self) -> &'static str;

    async fn get(&self, key: &str) -> Result<Option<Bytes>>;
    async fn set(&self, key: &str, value: Bytes, ttl: Duration) -> Result<()>;
    /// Write `key` only if `lease` is still held.
    async fn set_fenced(&self, key: &str, value: Bytes, ttl: Duration, lease: &Lease) -> Result<()>;
    /// Remove a value or a counter.
    async fn delete(&self, key: &str) -> Result<()>;

    /// Take the lock `name` for `ttl`, or `None` if someone else holds it.
    async fn try_lock(&self, name: &str, ttl: Duration) -> Result<Option<Lease>>;
    /// Push a held lease's expiry to `ttl` from now; false if it was lost.
    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<bool>;
    /// Release a lease; releasing a lease that was lost is not an error.
    async fn unlock(&self, lease: &Lease) -> Result<()>;

    /// Add `by` to a counter (created at 0) and return the new value; the
    /// counter expires `ttl` after its creation.
    async fn incr(&self, key: &str, by: i64, ttl: Duration) -> Result<i64>;

    /// One request against a rate limit (GCRA): a request costs `interval`,
    /// and up to `burst` may come at once. `Ok(None)` admits it;
    /// `Ok(Some(wait))` refuses it, and one will be admitted after `wait`.
    /// Atomic, one round trip.
    async fn rate_limit(&self, key: &str, interval: Duration, burst: u32) -> Result<Option<Duration>>;

    /// Schedule `member` in `queue` at time `due` (replacing an earlier time).
    async fn schedule(&self, queue: &str, member: &str, due: SystemTime) -> Result<()>;
    /// Remove `member` from `queue`.
    async fn unschedule(&self, queue: &str, member: &str) -> Result<()>;
    /// Members of `queue` due at `now`, oldest first, at most `limit`.
    async fn due(&self, queue: &str, now: SystemTime, limit: usize) -> Result<Vec<String>>;

    /// Record `member` in `group` for `ttl` from now (replacing an earlier
    /// expiry): membership that lasts only while it is renewed.
    async fn heartbeat(&self, group: &str, member: &str, ttl: Duration) -> Result<()>;
    /// Members of `group` whose last heartbeat has not expired, sorted.
    async fn members(&self, group: &str) -> Result<Vec<String>>;
    /// Remove `member` from `group` at once.
    async fn leave(&self, group: &str, member: &str) -> Result<()>;

    async fn publish(&self, channel: &str, message: Bytes) -> Result<()>;
    async fn subscribe(&self, channel: &str) -> Result<BoxStream<'static, Bytes>>;
}
