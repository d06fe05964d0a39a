//! In-process shared state for the embedded shape: one mutex-guarded map per
//! concern. Nothing here survives a restart, which is what the contract allows.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;

use crate::{Lease, Result, SharedState};

const BACKEND: &str = "memory";
const CHANNEL_CAPACITY: usize = 1024;

#[derive(Debug)]
struct Expiring<T> {
    value: T,
    expires_at: Instant,
}

impl<T> Expiring<T> {
    fn live(&self, now: Instant) -> bool {
        now < self.expires_at
    }
}

/// A schedule: members ordered by due time, and each member's due time.
#[derive(Debug, Default)]
struct Queue {
    order: BTreeSet<(SystemTime, String)>,
    due: HashMap<String, SystemTime>,
}

#[derive(Debug, Default)]
struct Tables {
    values: HashMap<String, Expiring<Bytes>>,
    counters: HashMap<String, Expiring<i64>>,
    /// Rate limits: theoretical arrival time per key.
    tats: HashMap<String, Instant>,
    locks: HashMap<String, Expiring<u64>>,
    /// Last fencing token issued. One counter for all locks keeps every
    /// name's tokens increasing without remembering each name forever.
    last_token: u64,
    queues: HashMap<String, Queue>,
    /// Heartbeat groups: each member's expiry.
    groups: HashMap<String, HashMap<String, Instant>>,
    /// Size of `values` after the last sweep of expired entries.
    swept_at_len: usize,
}

impl Tables {
    /// Drops expired values once the map has doubled since the last sweep, so
    /// keys nobody reads again do not accumulate.
    fn maybe_sweep(&mut self, now: Instant) {
        if self.values.len() > 2 * self.swept_at_len.max(512) {
            self.values.retain(|_, v| v.live(now));
            self.counters.retain(|_, v| v.live(now));
            self.locks.retain(|_, v| v.live(now));
            self.swept_at_len = self.values.len();
        }
    }

    fn holds(&self, lease: &Lease, now: Instant) -> bool {
        self.locks.get(&lease.name).is_some_and(|l| l.live(now) && l.value == lease.token)
    }
}

/// [`SharedState`] held in this process's memory.
#[derive(Debug, Default)]
pub struct MemoryState {
    tables: Mutex<Tables>,
    channels: Mutex<HashMap<String, broadcast::Sender<Bytes>>>,
}

impl MemoryState {
    pub fn new() -> MemoryState {
        MemoryState::default()
    }

    fn tables(&self) -> std::sync::MutexGuard<'_, Tables> {
        // A panic while holding the lock cannot leave the maps half-updated in
        // a way that matters here (every update is a single insert/remove).
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn sender(&self, channel: &str) -> broadcast::Sender<Bytes> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        channels.entry(channel.to_owned()).or_insert_with(|| broadcast::channel(CHANNEL_CAPACITY).0).clone()
    }
}

#[async_trait]
impl SharedState for MemoryState {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        let now = Instant::now();
        let t = self.tables();
        Ok(t.values.get(key).filter(|v| v.live(now)).map(|v| v.value.clone()))
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Duration) -> Result<()> {
        let now = Instant::now();
        let mut t = self.tables();
        t.values.insert(key.to_owned(), Expiring { value, expires_at: now + ttl });
        t.maybe_sweep(now);
        Ok(())
    }

    async fn set_fenced(&self, key: &str, value: Bytes, ttl: Duration, lease: &Lease) -> Result<()> {
        let now = Instant::now();
        let mut t = self.tables();
        if !t.holds(lease, now) {
            return Err(crate::StateError::Fenced { name: lease.name.clone() });
        }
        t.values.insert(key.to_owned(), Expiring { value, expires_at: now + ttl });
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<()> {
        // Values and counters share one key space, as in Redis.
        let mut t = self.tables();
        t.values.remove(key);
        t.counters.remove(key);
        Ok(())
    }

    async fn try_lock(&self, name: &str, ttl: Duration) -> Result<Option<Lease>> {
        let now = Instant::now();
        let mut t = self.tables();
        if t.locks.get(name).is_some_and(|l| l.live(now)) {
            return Ok(None);
        }
        t.last_token += 1;
        let token = t.last_token;
        t.locks.insert(name.to_owned(), Expiring { value: token, expires_at: now + ttl });
        Ok(Some(Lease { name: name.to_owned(), token }))
    }

    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<bool> {
        let now = Instant::now();
        let mut t = self.tables();
        if !t.holds(lease, now) {
            return Ok(false);
        }
        t.locks.insert(lease.name.clone(), Expiring { value: lease.token, expires_at: now + ttl });
        Ok(true)
    }

    async fn unlock(&self, lease: &Lease) -> Result<()> {
        let now = Instant::now();
        let mut t = self.tables();
        if t.holds(lease, now) {
            t.locks.remove(&lease.name);
        }
        Ok(())
    }

    async fn incr(&self, key: &str, by: i64, ttl: Duration) -> Result<i64> {
        let now = Instant::now();
        let mut t = self.tables();
        let entry = t.counters.entry(key.to_owned()).or_insert(Expiring { value: 0, expires_at: now + ttl });
        if !entry.live(now) {
            *entry = Expiring { value: 0, expires_at: now + ttl };
        }
        entry.value = entry.value.saturating_add(by);
        Ok(entry.value)
    }

    async fn rate_limit(&self, key: &str, interval: Duration, burst: u32) -> Result<Option<Duration>> {
        let now = Instant::now();
        let mut t = self.tables();
        let tat = t.tats.get(key).copied().filter(|tat| *tat > now).unwrap_or(now);
        let new_tat = tat + interval;
        let allow_at = new_tat.checked_sub(interval * burst).unwrap_or(now);
        if now < allow_at {
            return Ok(Some(allow_at - now));
        }
        t.tats.insert(key.to_owned(), new_tat);
        if t.tats.len() > 100_000 {
            t.tats.retain(|_, tat| *tat > now);
        }
        Ok(None)
    }

    async fn schedule(&self, queue: &str, member: &str, due: SystemTime) -> Result<()> {
        let mut t = self.tables();
        let q = t.queues.entry(queue.to_owned()).or_default();
        if let Some(old) = q.due.insert(member.to_owned(), due) {
            q.order.remove(&(old, member.to_owned()));
        }
        q.order.insert((due, member.to_owned()));
        Ok(())
    }

    async fn unschedule(&self, queue: &str, member: &str) -> Result<()> {
        let mut t = self.tables();
        if let Some(q) = t.queues.get_mut(queue) {
            if let Some(old) = q.due.remove(member) {
                q.order.remove(&(old, member.to_owned()));
            }
        }
        Ok(())
    }

    async fn due(&self, queue: &str, now: SystemTime, limit: usize) -> Result<Vec<String>> {
        let t = self.tables();
        Ok(t.queues
            .get(queue)
            .map(|q| q.order.iter().take_while(|(due, _)| *due <= now).take(limit).map(|(_, m)| m.clone()).collect())
            .unwrap_or_default())
    }

    async fn heartbeat(&self, group: &str, member: &str, ttl: Duration) -> Result<()> {
        let now = Instant::now();
        let mut t = self.tables();
        let g = t.groups.entry(group.to_owned()).or_default();
        g.retain(|_, expires| *expires > now);
        g.insert(member.to_owned(), now + ttl);
        Ok(())
    }

    async fn members(&self, group: &str) -> Result<Vec<String>> {
        let now = Instant::now();
        let t = self.tables();
        let mut live: Vec<String> = t
            .groups
            .get(group)
            .map(|g| g.iter().filter(|(_, expires)| **expires > now).map(|(m, _)| m.clone()).collect())
            .unwrap_or_default();
        live.sort();
        Ok(live)
    }

    async fn leave(&self, group: &str, member: &str) -> Result<()> {
        if let Some(g) = self.tables().groups.get_mut(group) {
            g.remove(member);
        }
        Ok(())
    }

    async fn publish(&self, channel: &str, message: Bytes) -> Result<()> {
        // No subscribers is not an error: the message simply has no audience.
        let _ = self.sender(channel).send(message);
        Ok(())
    }

    async fn subscribe(&self, channel: &str) -> Result<BoxStream<'static, Bytes>> {
        let rx = self.sender(channel).subscribe();
        Ok(BroadcastStream::new(rx).filter_map(|m| async move { m.ok() }).boxed())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conformance() {
        crate::testing::run_all(Arc::new(MemoryState::new())).await;
    }

    #[tokio::test]
    async fn expired_values_are_swept() {
        let s = MemoryState::new();
        for i in 0..2000 {
            s.set(&format!("k{i}"), Bytes::new(), Duration::from_millis(0)).await.unwrap();
        }
        assert!(s.tables().values.len() < 2000);
    }
}
