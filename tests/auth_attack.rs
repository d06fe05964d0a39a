//! Authentication under attack, against the release binary, behind a
//! trusted proxy address: 127.0.0.1 is a trusted proxy, and the test, like
//! a load balancer, names each request's client in `X-Forwarded-For`.
//!
//! - A storm of failed logins from many forwarded addresses against many
//!   made-up names locks out no unrelated user from an unrelated address;
//!   it slows and then refuses the names and the addresses it used.
//! - A storm of failed logins for unknown users, 150 at a time, then 60
//!   more that are all hashed, keep the replica's peak resident memory under
//!   150 MiB (read from /proc).

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use common::{basic, client, Berth};
use futures::StreamExt as _;

const ALICE_PW: &str = "alice-pw-9Kq2-long-enough";
const BOB_PW: &str = "bob-pw-4Tz8-long-enough";

fn start(dir: &Path, extra: &str) -> Berth {
    let users = dir.join("users.htpasswd");
    // argon2id at the default cost, as `berth user hash` writes it.
    let lines = format!("{}\n{}\n", common::user_hash("alice", ALICE_PW), common::user_hash("bob", BOB_PW));
    std::fs::write(&users, lines).unwrap();
    let toml = format!("[auth]\nhtpasswd = {:?}\n{extra}", users.display().to_string());
    Berth::start_release(&toml, &[("BERTH__SERVER__TRUSTED_PROXIES", "[\"127.0.0.1\"]")])
}

/// `GET /v2/` with Basic credentials, as forwarded for `client_ip`.
async fn login(b: &Berth, http: &reqwest::Client, user: &str, password: &str, client_ip: &str) -> u16 {
    http.get(b.url("/v2/"))
        .header("authorization", basic(user, password))
        .header("x-forwarded-for", client_ip)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_from_many_addresses_locks_out_no_one_else() {
    let dir = tempfile::tempdir().unwrap();
    let b = start(
        dir.path(),
        "[auth.throttle]\nuser_lockout = 10\nip_lockout = 20\ndelay_after = 3\nmax_delay = \"200ms\"\n",
    );
    let http = client();

    // 160 failed logins with made-up names, each from another address.
    let storm = (0..160u32).map(|i| {
        let (b, http) = (&b, &http);
        async move {
            let ip = format!("198.51.100.{}", i + 1);
            login(b, http, &format!("made-up-{i}"), "guess", &ip).await
        }
    });
    let statuses = futures::stream::iter(storm).buffer_unordered(8).collect::<Vec<u16>>().await;
    assert!(statuses.iter().all(|s| *s == 401), "each name and address failed once: {statuses:?}");

    // A good user from yet another address is served.
    assert_eq!(login(&b, &http, "alice", ALICE_PW, "192.0.2.77").await, 200);

    // The storm's targets are what gets refused: one name tried from many
    // addresses is locked out (from a new address too)...
    for i in 0..10u32 {
        let status = login(&b, &http, "mallory", "guess", &format!("203.0.113.{}", i + 1)).await;
        assert_eq!(status, 401, "attempt {i}");
    }
    assert_eq!(login(&b, &http, "mallory", "guess", "203.0.113.200").await, 429);
    // ...and one address trying many names is locked out, for every name.
    for i in 0..20u32 {
        assert_eq!(login(&b, &http, &format!("other-{i}"), "guess", "198.51.100.250").await, 401, "attempt {i}");
    }
    assert_eq!(login(&b, &http, "bob", BOB_PW, "198.51.100.250").await, 429);
    // Nobody else is: bob from his own address gets in, and so does alice.
    assert_eq!(login(&b, &http, "bob", BOB_PW, "192.0.2.78").await, 200);
    assert_eq!(login(&b, &http, "alice", ALICE_PW, "192.0.2.79").await, 200);
    // Audit records and access lines name the client the throttle counted.
    assert!(b.stderr().contains("198.51.100.160"), "the forwarded client is in the logs");
    // A malformed forwarding entry makes the request the proxy's own: it
    // never promotes the entry to its left.
    let status = http
        .get(b.url("/v2/probe/malformed/tags/list"))
        .header("authorization", basic("nobody", "guess"))
        .header("x-forwarded-for", "203.0.113.51, not-an-address")
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 401);
    let logs = b.stderr();
    let lines: Vec<&str> = logs.lines().filter(|l| l.contains("probe/malformed")).collect();
    assert!(!lines.is_empty(), "no log line for the request");
    for line in lines {
        assert!(line.contains("127.0.0.1") && !line.contains("203.0.113.51"), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_unknown_users_keeps_memory_bounded() {
    let dir = tempfile::tempdir().unwrap();
    // Counters out of the way: this is about what the hashing costs.
    let b = start(dir.path(), "[auth.throttle]\nuser_lockout = 100000\nip_lockout = 100000\ndelay_after = 100000\n");
    let http = reqwest::Client::builder().pool_max_idle_per_host(150).build().unwrap();
    let before = common::peak_rss(b.pid());

    let logins = (0..300u32).map(|i| {
        let (b, http) = (&b, &http);
        async move { login(b, http, &format!("nobody-{i}"), "guess", "198.51.100.9").await }
    });
    let statuses = futures::stream::iter(logins).buffer_unordered(150).collect::<Vec<u16>>().await;
    // Then 60 more, two at a time from other addresses, each of them
    // hashed: memory must not grow with the number of checks either.
    let hashed = (0..60u32).map(|i| {
        let (b, http) = (&b, &http);
        async move { login(b, http, &format!("later-{i}"), "guess", &format!("198.51.100.{}", 100 + i % 2)).await }
    });
    let later = futures::stream::iter(hashed).buffer_unordered(2).collect::<Vec<u16>>().await;
    assert!(later.iter().all(|s| *s == 401), "{later:?}");
    let peak = common::peak_rss(b.pid());

    let refused = statuses.iter().filter(|s| **s == 401).count();
    let turned_away = statuses.iter().filter(|s| **s == 429 || **s == 503).count();
    assert_eq!(refused + turned_away, 300, "only 401, 429 or 503: {statuses:?}");
    assert!(refused >= 1, "some logins were checked");
    assert!(
        peak < 150 * 1024 * 1024,
        "peak RSS {} MiB (from {} MiB at start) over the 150 MiB bound",
        peak >> 20,
        before >> 20
    );
    eprintln!(
        "peak RSS {} MiB (start {} MiB); {refused} checked and refused, {turned_away} turned away at once",
        peak >> 20,
        before >> 20
    );
    // The replica still serves.
    assert_eq!(login(&b, &http, "alice", ALICE_PW, "192.0.2.10").await, 200);
}
