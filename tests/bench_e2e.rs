//! berth-bench end to end: every scenario, briefly, against berths started by
//! the test, including a side-by-side comparison with memory sampling.

#![allow(clippy::unwrap_used)]

mod common;

use berth_bench::{Auth, Options, Registry, Scenario, Target};
use clap::ValueEnum;
use common::Berth;

fn target(label: &str, b: &Berth) -> Target {
    Target { label: label.into(), registry: Registry::new(&b.base, Auth::None, false, 4).unwrap(), pid: Some(b.pid()) }
}

fn options(requests: u64) -> Options {
    Options {
        concurrency: 4,
        requests: Some(requests),
        duration: None,
        size: 300 * 1024,
        chunk: 100 * 1024,
        repo: "bench/e2e".into(),
        rounds: 2,
        seed: 1,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_runs_without_errors() {
    let b = Berth::start("");
    // failed-login needs a registry with users: its own test below.
    let scenarios: Vec<Scenario> =
        Scenario::value_variants().iter().copied().filter(|s| *s != Scenario::FailedLogin).collect();
    let reports = berth_bench::run_all(&scenarios, &[target("A", &b)], &options(12)).await.unwrap();
    assert_eq!(reports.len(), scenarios.len());
    for r in &reports {
        let s = &r.targets[0].summary;
        assert_eq!(s.errors, 0, "{}: {:?}", r.scenario, s.errors_by_status);
        assert_eq!(s.requests, 12, "{}", r.scenario);
        assert!(s.req_per_sec > 0.0 && s.p99_ms >= s.p50_ms && s.max_ms >= s.p99_ms, "{}", r.scenario);
        assert!(s.peak_rss_mib.unwrap() > 0.0);
    }
    // Pushes and pulls move the payload they claim.
    let push = reports.iter().find(|r| r.scenario == "push-chunked").unwrap();
    assert!(push.targets[0].summary.mb_per_sec > 0.0);
    let log = b.stderr();
    assert!(!log.contains("status=500"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_reports_both_targets() {
    let (a, b) = (Berth::start(""), Berth::start(""));
    let reports = berth_bench::run_all(&[Scenario::ManifestGetTag], &[target("A", &a), target("B", &b)], &options(40))
        .await
        .unwrap();
    let r = &reports[0];
    assert_eq!(r.targets.len(), 2);
    for t in &r.targets {
        assert_eq!(t.summary.requests, 40);
        assert_eq!(t.summary.errors, 0);
    }
    let table = r.to_table();
    assert!(table.lines().any(|l| l.starts_with("req/s") && l.ends_with('x')), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_and_missing_are_errors_not_panics() {
    let b = Berth::start("");
    // Nothing listens here: every request is a transport error, reported, not a panic.
    let dead = Target {
        label: "dead".into(),
        registry: Registry::new("http://127.0.0.1:9", Auth::None, false, 1).unwrap(),
        pid: None,
    };
    assert!(berth_bench::run_all(&[Scenario::PullBlob], &[dead], &options(2)).await.is_err());
    // A registry that answers 404 for the blob: errors counted under 404.
    let t = target("A", &b);
    let opts = options(4);
    let reports = berth_bench::run_all(&[Scenario::ManifestGetTag], std::slice::from_ref(&t), &opts).await.unwrap();
    assert_eq!(reports[0].targets[0].summary.errors, 0);
    let client = common::client();
    let resp = client.delete(b.url("/v2/bench/e2e/manifests/bench")).send().await.unwrap();
    assert_eq!(resp.status(), 202);
    let missing = t.registry.manifest("bench/e2e", "bench", false).await;
    assert_eq!(missing.unwrap_err().0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_is_measured() {
    let dir = tempfile::tempdir().unwrap();
    // A free loopback port: bind, read it, release it.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let command =
        format!("{} serve --listen 127.0.0.1:{port} --data-dir {}", env!("CARGO_BIN_EXE_berth"), dir.path().display());
    let report = berth_bench::startup::measure(
        &command,
        &format!("http://127.0.0.1:{port}"),
        2,
        std::time::Duration::from_secs(30),
        std::time::Duration::from_millis(50),
    )
    .await
    .unwrap();
    assert_eq!(report.samples.len(), 2);
    assert!(report.median_ready_ms > 0.0);
    assert!(report.median_idle_rss_mib.unwrap() > 0.0);
}

/// failed-login times a known and an unknown user side by side: every
/// answer is a 401, and a registry that lets the wrong password in is an
/// error, not a measurement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_of_known_and_unknown_users() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("users"), format!("{}\n", common::user_hash("alice", "alice-pw-123456"))).unwrap();
    let b = Berth::start(&format!(
        "[auth]\nhtpasswd = {:?}\n[auth.throttle]\nuser_lockout = 100000\nip_lockout = 100000\ndelay_after = 100000\n",
        dir.path().join("users").display().to_string()
    ));
    let as_user = |label: &str, user: &str| Target {
        label: label.into(),
        registry: Registry::new(&b.base, Auth::Basic { user: user.into(), password: "unused".into() }, false, 2)
            .unwrap(),
        pid: Some(b.pid()),
    };
    let reports = berth_bench::run_all(
        &[Scenario::FailedLogin],
        &[as_user("known", "alice"), as_user("unknown", "nobody")],
        &Options { concurrency: 2, ..options(8) },
    )
    .await
    .unwrap();
    for t in &reports[0].targets {
        assert_eq!(t.summary.requests, 8);
        assert_eq!(t.summary.errors, 0, "{:?}", t.summary.errors_by_status);
    }
    // Without credentials the scenario refuses to start.
    assert!(berth_bench::run_all(&[Scenario::FailedLogin], &[target("A", &b)], &options(2)).await.is_err());
}
