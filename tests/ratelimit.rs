//! Rate limits: over budget is 429 TOOMANYREQUESTS with Retry-After; the
//! client address comes from X-Forwarded-For only through a trusted proxy
//! (a spoofed header from anyone else is ignored); a 3-replica fleet keeps
//! one budget; with Redis stopped the limiter fails open (default) or
//! closed, as configured, and says so once in the log.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{client, Berth, LocalFleet, RedisServer};

const LIMITED: &str = "[rate_limit]\nenabled = true\nreads = { per_second = 0.2, burst = 3 }\n";

async fn get(url: &str, xff: Option<&str>) -> reqwest::Response {
    let mut req = client().get(url);
    if let Some(x) = xff {
        req = req.header("x-forwarded-for", x);
    }
    req.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_budget_is_429_and_spoofed_forwarding_is_ignored() {
    let b = Berth::start(LIMITED);
    for i in 0..3 {
        assert_eq!(get(&b.url("/v2/"), Some(&format!("198.51.100.{i}"))).await.status(), 200, "request {i}");
    }
    // The XFF header came from an untrusted peer: all four are one client.
    let resp = get(&b.url("/v2/"), Some("198.51.100.99")).await;
    assert_eq!(resp.status(), 429);
    let retry: u64 = resp.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=5).contains(&retry), "{retry}");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "TOOMANYREQUESTS");
    // Health endpoints are not limited.
    assert_eq!(get(&b.url("/livez"), None).await.status(), 200);
    assert_metrics(&b.url("/metrics"), &["berth_rate_limited_requests_total{class=\"read\"} 1"]).await;

    // Behind a trusted proxy each forwarded client has a budget of its own.
    let trusted = Berth::start(&format!("trusted_proxies = [\"127.0.0.1\"]\n{LIMITED}"));
    for i in 0..6 {
        assert_eq!(get(&trusted.url("/v2/"), Some(&format!("198.51.100.{i}"))).await.status(), 200, "client {i}");
    }
    for _ in 0..3 {
        assert_eq!(get(&trusted.url("/v2/"), Some("203.0.113.7")).await.status(), 200);
    }
    assert_eq!(get(&trusted.url("/v2/"), Some("203.0.113.7")).await.status(), 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_budget_across_a_fleet_and_redis_outage_fails_open() {
    let fleet = LocalFleet::up(
        3,
        &[("BERTH__RATE_LIMIT__ENABLED", "true"), ("BERTH__RATE_LIMIT__READS", "{ per_second = 0.2, burst = 6 }")],
    );
    let started = tokio::time::Instant::now();
    let mut allowed = 0;
    for i in 0..18 {
        let resp = get(&format!("{}/v2/", fleet.replica(i % 3 + 1)), None).await;
        match resp.status().as_u16() {
            200 => allowed += 1,
            429 => assert!(resp.headers().contains_key("retry-after")),
            other => panic!("unexpected {other}"),
        }
    }
    // One shared budget: the burst plus what refilled meanwhile, not 3 x 6.
    let refill = (started.elapsed().as_secs_f64() * 0.2).ceil() as usize;
    assert!((6..=6 + refill).contains(&allowed), "{allowed} admitted across the fleet");

    // Redis stopped: the default fail-open mode lets requests through and says so once.
    fleet.run(&["stop-redis"]);
    for i in 0..6 {
        assert_eq!(get(&format!("{}/v2/", fleet.replica(1)), None).await.status(), 200, "request {i} with Redis down");
    }
    let log = std::fs::read_to_string(fleet.dir.path().join("replica-1.log")).unwrap();
    assert_eq!(log.matches("rate limiter cannot reach shared state").count(), 1, "not said exactly once");
    assert_metrics(
        &format!("{}/metrics", fleet.replica(1)),
        &["berth_rate_limit_backend_down 1", "berth_rate_limit_unchecked_requests_total{mode=\"open\"} 6"],
    )
    .await;
    fleet.run(&["start-redis"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_fails_closed_when_configured() {
    let mut redis = RedisServer::start();
    let b = Berth::start(&format!(
        "[state]\nbackend = \"redis\"\n[state.redis]\nurl = \"{}\"\nresponse_timeout = \"500ms\"\n\
         [rate_limit]\nenabled = true\nfail_open = false\n",
        redis.url()
    ));
    assert_eq!(get(&b.url("/v2/"), None).await.status(), 200);
    redis.stop();
    let resp = get(&b.url("/v2/"), None).await;
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    assert_metrics(&b.url("/metrics"), &["berth_rate_limit_unchecked_requests_total{mode=\"closed\"} 1"]).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !b.stderr().contains("rate limiter cannot reach shared state") {
        assert!(tokio::time::Instant::now() < deadline, "the outage was not logged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The counters at `/metrics` in builds with the `metrics` extension; the
/// minimal flavor has no such endpoint.
async fn assert_metrics(url: &str, lines: &[&str]) {
    let resp = get(url, None).await;
    if cfg!(feature = "metrics") {
        let text = resp.text().await.unwrap();
        for line in lines {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    } else {
        assert_eq!(resp.status(), 404, "the minimal flavor serves no /metrics");
    }
}
