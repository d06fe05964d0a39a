//! The shared-state conformance suite, run against every implementation with
//! a fresh state (keys are namespaced with `conf:` so a shared Redis works).

#![allow(clippy::unwrap_used)] // a test suite: a failed unwrap is a failed check

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::StreamExt;

use crate::{SharedState, StateError};

/// Polls `cond` until it holds, for at most `limit`: waits on a condition,
/// never on a guessed delay.
async fn eventually<F, Fut>(limit: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if cond().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Run every conformance check.
pub async fn run_all(state: Arc<dyn SharedState>) {
    values_and_expiry(state.as_ref()).await;
    locks_and_fencing(state.as_ref()).await;
    counters(state.clone()).await;
    rate_limits(state.clone()).await;
    schedules(state.as_ref()).await;
    memberships(state.clone()).await;
    pubsub(state.as_ref()).await;
}

/// GCRA: a burst is admitted, the next is refused with the wait until one
/// more is, concurrent callers share one budget, keys are independent.
pub async fn rate_limits(s: Arc<dyn SharedState>) {
    let interval = Duration::from_millis(200);
    for i in 0..3 {
        assert_eq!(s.rate_limit("conf:rl:a", interval, 3).await.unwrap(), None, "request {i} of the burst");
    }
    let wait = s.rate_limit("conf:rl:a", interval, 3).await.unwrap().expect("over the burst");
    assert!(wait <= interval && !wait.is_zero(), "{wait:?}");
    assert_eq!(s.rate_limit("conf:rl:other", interval, 3).await.unwrap(), None);
    assert!(
        eventually(Duration::from_secs(5), || {
            let s = s.clone();
            async move { s.rate_limit("conf:rl:a", interval, 3).await.unwrap().is_none() }
        })
        .await,
        "the budget never refilled"
    );
    // Many concurrent callers: no more than the burst get through at once.
    let tries = (0..20).map(|_| {
        let s = s.clone();
        async move { s.rate_limit("conf:rl:b", Duration::from_secs(60), 5).await.unwrap().is_none() }
    });
    let admitted = futures::future::join_all(tries).await.into_iter().filter(|a| *a).count();
    assert_eq!(admitted, 5);
}

pub async fn values_and_expiry(s: &dyn SharedState) {
    assert_eq!(s.get("conf:v:missing").await.unwrap(), None);
    s.set("conf:v:a", Bytes::from_static(b"1"), Duration::from_secs(60)).await.unwrap();
    assert_eq!(s.get("conf:v:a").await.unwrap(), Some(Bytes::from_static(b"1")));
    s.set("conf:v:a", Bytes::from_static(b"2"), Duration::from_secs(60)).await.unwrap();
    assert_eq!(s.get("conf:v:a").await.unwrap(), Some(Bytes::from_static(b"2")));
    s.delete("conf:v:a").await.unwrap();
    assert_eq!(s.get("conf:v:a").await.unwrap(), None);
    s.delete("conf:v:a").await.unwrap();

    s.set("conf:v:short", Bytes::from_static(b"x"), Duration::from_millis(100)).await.unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async { s.get("conf:v:short").await.unwrap().is_none() }).await,
        "value did not expire"
    );
}

pub async fn locks_and_fencing(s: &dyn SharedState) {
    let ttl = Duration::from_secs(30);
    let a = s.try_lock("conf:l:one", ttl).await.unwrap().expect("free lock");
    assert!(s.try_lock("conf:l:one", ttl).await.unwrap().is_none(), "lock granted twice");
    s.set_fenced("conf:l:value", Bytes::from_static(b"a"), ttl, &a).await.unwrap();
    s.unlock(&a).await.unwrap();

    let b = s.try_lock("conf:l:one", ttl).await.unwrap().expect("released lock");
    assert!(b.token > a.token, "fencing token did not grow");
    // The old holder is fenced out.
    let err = s.set_fenced("conf:l:value", Bytes::from_static(b"stale"), ttl, &a).await.unwrap_err();
    assert!(matches!(err, StateError::Fenced { .. }), "{err:?}");
    assert_eq!(s.get("conf:l:value").await.unwrap(), Some(Bytes::from_static(b"a")));
    // Unlocking with a stale lease does not release the current holder.
    s.unlock(&a).await.unwrap();
    assert!(s.try_lock("conf:l:one", ttl).await.unwrap().is_none());
    s.unlock(&b).await.unwrap();

    // Extending keeps a short lease alive past its first expiry.
    let e = s.try_lock("conf:l:three", Duration::from_secs(2)).await.unwrap().unwrap();
    assert!(s.extend(&e, Duration::from_secs(30)).await.unwrap());
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert!(s.try_lock("conf:l:three", ttl).await.unwrap().is_none(), "extended lease was lost");
    s.unlock(&e).await.unwrap();
    assert!(!s.extend(&e, ttl).await.unwrap(), "released lease extended");

    // An expired lease frees the lock and is fenced out.
    let c = s.try_lock("conf:l:two", Duration::from_millis(100)).await.unwrap().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let d = loop {
        if let Some(lease) = s.try_lock("conf:l:two", ttl).await.unwrap() {
            break Some(lease);
        }
        if tokio::time::Instant::now() >= deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(d.is_some(), "lock never expired");
    let d = d.unwrap();
    assert!(d.token > c.token);
    assert!(matches!(s.set_fenced("conf:l:v2", Bytes::new(), ttl, &c).await, Err(StateError::Fenced { .. })));
    s.set_fenced("conf:l:v2", Bytes::new(), ttl, &d).await.unwrap();
    s.unlock(&d).await.unwrap();
    s.delete("conf:l:value").await.unwrap();
    s.delete("conf:l:v2").await.unwrap();
}

pub async fn counters(s: Arc<dyn SharedState>) {
    let ttl = Duration::from_secs(30);
    assert_eq!(s.incr("conf:c:a", 1, ttl).await.unwrap(), 1);
    assert_eq!(s.incr("conf:c:a", 5, ttl).await.unwrap(), 6);
    // Concurrent increments are not lost.
    let adds = (0..50).map(|_| {
        let s = s.clone();
        async move { s.incr("conf:c:b", 1, ttl).await.unwrap() }
    });
    let results = futures::future::join_all(adds).await;
    assert_eq!(results.iter().max(), Some(&50));
    assert_eq!(s.incr("conf:c:b", 0, ttl).await.unwrap(), 50);
    // `delete` removes a counter too: it starts again from zero.
    s.delete("conf:c:b").await.unwrap();
    assert_eq!(s.incr("conf:c:b", 0, ttl).await.unwrap(), 0);

    s.incr("conf:c:short", 3, Duration::from_millis(100)).await.unwrap();
    assert!(
        eventually(Duration::from_secs(5), || {
            let s = s.clone();
            async move { s.incr("conf:c:short", 0, Duration::from_millis(100)).await.unwrap() == 0 }
        })
        .await,
        "counter did not expire"
    );
}

pub async fn schedules(s: &dyn SharedState) {
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    let q = "conf:q";
    s.schedule(q, "late", t0 + Duration::from_secs(30)).await.unwrap();
    s.schedule(q, "early", t0 + Duration::from_secs(10)).await.unwrap();
    s.schedule(q, "middle", t0 + Duration::from_secs(20)).await.unwrap();
    assert!(s.due(q, t0, 10).await.unwrap().is_empty());
    assert_eq!(s.due(q, t0 + Duration::from_secs(25), 10).await.unwrap(), ["early", "middle"]);
    assert_eq!(s.due(q, t0 + Duration::from_secs(25), 1).await.unwrap(), ["early"]);
    // Rescheduling moves a member.
    s.schedule(q, "early", t0 + Duration::from_secs(40)).await.unwrap();
    assert_eq!(s.due(q, t0 + Duration::from_secs(35), 10).await.unwrap(), ["middle", "late"]);
    s.unschedule(q, "middle").await.unwrap();
    s.unschedule(q, "absent").await.unwrap();
    assert_eq!(s.due(q, t0 + Duration::from_secs(100), 10).await.unwrap(), ["late", "early"]);
    s.unschedule(q, "late").await.unwrap();
    s.unschedule(q, "early").await.unwrap();
    assert!(s.due(q, t0 + Duration::from_secs(100), 10).await.unwrap().is_empty());
}

/// Heartbeat groups: members are listed while their heartbeat lasts, a
/// renewed heartbeat extends it, `leave` removes at once, groups are
/// independent.
pub async fn memberships(s: Arc<dyn SharedState>) {
    let g = "conf:group";
    let long = Duration::from_secs(60);
    assert!(s.members(g).await.unwrap().is_empty());
    s.heartbeat(g, "b:2", long).await.unwrap();
    s.heartbeat(g, "a:1", long).await.unwrap();
    s.heartbeat(g, "a:1", long).await.unwrap();
    s.heartbeat("conf:other-group", "z", long).await.unwrap();
    assert_eq!(s.members(g).await.unwrap(), ["a:1", "b:2"]);
    s.heartbeat(g, "short", Duration::from_millis(150)).await.unwrap();
    assert_eq!(s.members(g).await.unwrap(), ["a:1", "b:2", "short"]);
    assert!(
        eventually(Duration::from_secs(5), || {
            let s = s.clone();
            async move { s.members(g).await.unwrap() == ["a:1", "b:2"] }
        })
        .await,
        "an expired member is still listed"
    );
    s.leave(g, "b:2").await.unwrap();
    s.leave(g, "absent").await.unwrap();
    assert_eq!(s.members(g).await.unwrap(), ["a:1"]);
    s.leave(g, "a:1").await.unwrap();
    s.leave("conf:other-group", "z").await.unwrap();
    assert!(s.members(g).await.unwrap().is_empty());
}

pub async fn pubsub(s: &dyn SharedState) {
    let mut sub = s.subscribe("conf:chan").await.unwrap();
    let mut other = s.subscribe("conf:other").await.unwrap();
    s.publish("conf:chan", Bytes::from_static(b"one")).await.unwrap();
    s.publish("conf:chan", Bytes::from_static(b"two")).await.unwrap();
    let limit = Duration::from_secs(5);
    assert_eq!(tokio::time::timeout(limit, sub.next()).await.unwrap(), Some(Bytes::from_static(b"one")));
    assert_eq!(tokio::time::timeout(limit, sub.next()).await.unwrap(), Some(Bytes::from_static(b"two")));
    s.publish("conf:other", Bytes::from_static(b"three")).await.unwrap();
    assert_eq!(tokio::time::timeout(limit, other.next()).await.unwrap(), Some(Bytes::from_static(b"three")));
    // Publishing with no subscriber is fine.
    s.publish("conf:nobody", Bytes::from_static(b"x")).await.unwrap();
}
