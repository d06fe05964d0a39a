//! A [`SharedState`] that reports every call of the state it wraps (Redis
//! in a fleet, memory in the embedded shape): calls by operation and
//! outcome, and their latency. Labels come from closed sets (the trait's
//! operations, four outcomes), never from keys or channels.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use berth_state::{Lease, Result, SharedState, StateError};
use bytes::Bytes;
use futures::stream::BoxStream;

use crate::metrics;

fn outcome<T>(r: &Result<T>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(StateError::Unavailable(_)) => "unavailable",
        Err(StateError::Fenced { .. }) => "fenced",
        Err(_) => "error",
    }
}

fn done<T>(op: &'static str, started: Instant, r: Result<T>) -> Result<T> {
    metrics::observe_state(op, outcome(&r), started.elapsed());
    r
}

/// Wraps a shared state and reports its calls.
#[derive(Debug)]
pub struct InstrumentedState {
    inner: Arc<dyn SharedState>,
}

impl InstrumentedState {
    pub fn new(inner: Arc<dyn SharedState>) -> InstrumentedState {
        InstrumentedState { inner }
    }
}

#[async_trait]
impl SharedState for InstrumentedState {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        let t = Instant::now();
        done("get", t, self.inner.get(key).await)
    }
    async fn set(&self, key: &str, value: Bytes, ttl: Duration) -> Result<()> {
        let t = Instant::now();
        done("set", t, self.inner.set(key, value, ttl).await)
    }
    async fn set_fenced(&self, key: &str, value: Bytes, ttl: Duration, lease: &Lease) -> Result<()> {
        let t = Instant::now();
        done("set_fenced", t, self.inner.set_fenced(key, value, ttl, lease).await)
    }
    async fn delete(&self, key: &str) -> Result<()> {
        let t = Instant::now();
        done("delete", t, self.inner.delete(key).await)
    }
    async fn try_lock(&self, name: &str, ttl: Duration) -> Result<Option<Lease>> {
        let t = Instant::now();
        done("try_lock", t, self.inner.try_lock(name, ttl).await)
    }
    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<bool> {
        let t = Instant::now();
        done("extend", t, self.inner.extend(lease, ttl).await)
    }
    async fn unlock(&self, lease: &Lease) -> Result<()> {
        let t = Instant::now();
        done("unlock", t, self.inner.unlock(lease).await)
    }
    async fn incr(&self, key: &str, by: i64, ttl: Duration) -> Result<i64> {
        let t = Instant::now();
        done("incr", t, self.inner.incr(key, by, ttl).await)
    }
    async fn rate_limit(&self, key: &str, interval: Duration, burst: u32) -> Result<Option<Duration>> {
        let t = Instant::now();
        done("rate_limit", t, self.inner.rate_limit(key, interval, burst).await)
    }
    async fn schedule(&self, queue: &str, member: &str, due: SystemTime) -> Result<()> {
        let t = Instant::now();
        done("schedule", t, self.inner.schedule(queue, member, due).await)
    }
    async fn unschedule(&self, queue: &str, member: &str) -> Result<()> {
        let t = Instant::now();
        done("unschedule", t, self.inner.unschedule(queue, member).await)
    }
    async fn due(&self, queue: &str, now: SystemTime, limit: usize) -> Result<Vec<String>> {
        let t = Instant::now();
        done("due", t, self.inner.due(queue, now, limit).await)
    }
    async fn heartbeat(&self, group: &str, member: &str, ttl: Duration) -> Result<()> {
        let t = Instant::now();
        done("heartbeat", t, self.inner.heartbeat(group, member, ttl).await)
    }
    async fn members(&self, group: &str) -> Result<Vec<String>> {
        let t = Instant::now();
        done("members", t, self.inner.members(group).await)
    }
    async fn leave(&self, group: &str, member: &str) -> Result<()> {
        let t = Instant::now();
        done("leave", t, self.inner.leave(group, member).await)
    }
    async fn publish(&self, channel: &str, message: Bytes) -> Result<()> {
        let t = Instant::now();
        done("publish", t, self.inner.publish(channel, message).await)
    }
    async fn subscribe(&self, channel: &str) -> Result<BoxStream<'static, Bytes>> {
        let t = Instant::now();
        done("subscribe", t, self.inner.subscribe(channel).await)
    }
}
