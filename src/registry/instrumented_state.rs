//! A [`SharedState`] that reports every call of the state it wraps (Redis
//! in a fleet, memory in the embedded shape): calls by operation and
//! outcome, and their latency. Labels come from closed sets (the trait's
//! operations, four outcomes), never from keys or channels.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt as _;

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

/// Wraps a shared state and reports its calls.
#[derive(Debug)]
pub struct InstrumentedState {
    inner: Arc<dyn SharedState>,
    /// The last call found the state unreachable.
    unreachable: AtomicBool,
}

impl InstrumentedState {
    pub fn new(inner: Arc<dyn SharedState>) -> InstrumentedState {
        InstrumentedState { inner, unreachable: AtomicBool::new(false) }
    }

    /// A span for one call, a child of the current span; none outside any
    /// span (background loops mint no root traces). Redis calls carry
    /// OpenTelemetry's database attributes; no key or channel is recorded.
    fn span(&self, op: &'static str) -> tracing::Span {
        if tracing::Span::current().is_none() {
            return tracing::Span::none();
        }
        let backend = self.inner.backend();
        if backend == "redis" {
            tracing::debug_span!(
                target: "berth::backend",
                "shared_state",
                otel.name = %format_args!("redis {op}"),
                otel.kind = "client",
                otel.status_code = tracing::field::Empty,
                db.system.name = "redis",
                db.operation.name = op,
                error.type = tracing::field::Empty,
            )
        } else {
            tracing::debug_span!(
                target: "berth::backend",
                "shared_state",
                otel.name = %format_args!("state.{op}"),
                otel.kind = "internal",
                otel.status_code = tracing::field::Empty,
                berth.state.backend = backend,
                berth.state.operation = op,
                error.type = tracing::field::Empty,
            )
        }
    }

    /// Run one call of the inner state in its span, count it, and count a
    /// reconnection when a call succeeds after the state was unreachable.
    async fn call<T>(&self, op: &'static str, fut: impl Future<Output = Result<T>>) -> Result<T> {
        use tracing::Instrument as _;
        let span = self.span(op);
        let started = Instant::now();
        let r = fut.instrument(span.clone()).await;
        let outcome = outcome(&r);
        metrics::observe_state(op, outcome, started.elapsed());
        match &r {
            Ok(_) => {
                if self.unreachable.swap(false, Ordering::Relaxed) {
                    metrics::inc(&metrics::get().state_reconnects);
                    tracing::info!(backend = self.inner.backend(), "shared state reachable again");
                }
            }
            Err(e) => {
                if matches!(e, StateError::Unavailable(_)) {
                    self.unreachable.store(true, Ordering::Relaxed);
                }
                span.record("otel.status_code", "ERROR");
                span.record("error.type", outcome);
            }
        }
        r
    }
}

#[async_trait]
impl SharedState for InstrumentedState {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        self.call("get", self.inner.get(key)).await
    }
    async fn set(&self, key: &str, value: Bytes, ttl: Duration) -> Result<()> {
        self.call("set", self.inner.set(key, value, ttl)).await
    }
    async fn set_fenced(&self, key: &str, value: Bytes, ttl: Duration, lease: &Lease) -> Result<()> {
        self.call("set_fenced", self.inner.set_fenced(key, value, ttl, lease)).await
    }
    async fn delete(&self, key: &str) -> Result<()> {
        self.call("delete", self.inner.delete(key)).await
    }
    async fn try_lock(&self, name: &str, ttl: Duration) -> Result<Option<Lease>> {
        self.call("try_lock", self.inner.try_lock(name, ttl)).await
    }
    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<bool> {
        self.call("extend", self.inner.extend(lease, ttl)).await
    }
    async fn unlock(&self, lease: &Lease) -> Result<()> {
        self.call("unlock", self.inner.unlock(lease)).await
    }
    async fn incr(&self, key: &str, by: i64, ttl: Duration) -> Result<i64> {
        self.call("incr", self.inner.incr(key, by, ttl)).await
    }
    async fn rate_limit(&self, key: &str, interval: Duration, burst: u32) -> Result<Option<Duration>> {
        self.call("rate_limit", self.inner.rate_limit(key, interval, burst)).await
    }
    async fn schedule(&self, queue: &str, member: &str, due: SystemTime) -> Result<()> {
        self.call("schedule", self.inner.schedule(queue, member, due)).await
    }
    async fn unschedule(&self, queue: &str, member: &str) -> Result<()> {
        self.call("unschedule", self.inner.unschedule(queue, member)).await
    }
    async fn due(&self, queue: &str, now: SystemTime, limit: usize) -> Result<Vec<String>> {
        self.call("due", self.inner.due(queue, now, limit)).await
    }
    async fn heartbeat(&self, group: &str, member: &str, ttl: Duration) -> Result<()> {
        self.call("heartbeat", self.inner.heartbeat(group, member, ttl)).await
    }
    async fn members(&self, group: &str) -> Result<Vec<String>> {
        self.call("members", self.inner.members(group)).await
    }
    async fn leave(&self, group: &str, member: &str) -> Result<()> {
        self.call("leave", self.inner.leave(group, member)).await
    }
    async fn publish(&self, channel: &str, message: Bytes) -> Result<()> {
        self.call("publish", self.inner.publish(channel, message)).await
    }
    async fn subscribe(&self, channel: &str) -> Result<BoxStream<'static, Bytes>> {
        let stream = self.call("subscribe", self.inner.subscribe(channel)).await?;
        // Counted in `state_subscriptions` until the stream (whose end means
        // the connection dropped) is dropped: the closure owns the guard.
        let live = metrics::GaugeGuard::enter(&metrics::get().state_subscriptions);
        Ok(stream
            .map(move |message| {
                let _ = &live;
                message
            })
            .boxed())
    }
}
