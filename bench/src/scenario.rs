//! Scenarios: what is set up on each registry, and the one operation that is
//! timed, run by `concurrency` workers until the request count or the
//! duration is used up. With two targets the run alternates between them in
//! rounds (A, B, A, B, ...) so both see the same machine conditions.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::ValueEnum;

use crate::client::{image_manifest, OpResult, Registry};
use crate::data;
use crate::rss::{rss_bytes, PeakSampler};
use crate::stats::Samples;

/// The timed workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Monolithic push in one request (`POST ?digest=`), a new blob each time.
    PushMono,
    /// Monolithic push as `POST` then `PUT ?digest=` with the body.
    PushPostPut,
    /// Chunked push: `POST`, `PATCH` chunks of `--chunk-size`, `PUT`.
    PushChunked,
    /// `GET` of one blob of `--size`.
    PullBlob,
    ManifestGetTag,
    ManifestHeadTag,
    ManifestGetDigest,
    ManifestHeadDigest,
    /// `GET /v2/<repo>/tags/list` over 100 tags.
    TagsList,
    /// `GET /v2/_catalog` over 50 repositories.
    Catalog,
    /// 70% manifest GET by tag, 20% blob pull, 10% monolithic push of `--size`.
    Mixed,
    /// `GET /v2/` with the Basic user and a wrong password (a new one each
    /// time): a 401 is the expected answer. With `--compare-user`, target B
    /// uses another user, so known and unknown users are timed side by side.
    /// Turn the failed-login throttle up on the server first.
    FailedLogin,
}

impl Scenario {
    pub fn name(self) -> String {
        self.to_possible_value().map(|v| v.get_name().to_owned()).unwrap_or_default()
    }

    fn pushes(self) -> bool {
        matches!(self, Scenario::PushMono | Scenario::PushPostPut | Scenario::PushChunked | Scenario::Mixed)
    }
}

/// How a scenario runs.
#[derive(Debug, Clone)]
pub struct Options {
    pub concurrency: usize,
    /// Total requests per target (split over the rounds).
    pub requests: Option<u64>,
    /// Total time per target (split over the rounds).
    pub duration: Option<Duration>,
    /// Blob size for pushes and pulls.
    pub size: u64,
    /// Chunk size for chunked pushes.
    pub chunk: u64,
    pub repo: String,
    pub rounds: u32,
    /// Makes generated blobs of different runs differ.
    pub seed: u64,
}

/// A registry under test.
#[derive(Debug, Clone)]
pub struct Target {
    pub label: String,
    pub registry: Registry,
    /// Server process to sample memory of.
    pub pid: Option<u32>,
}

/// What setup left on a target for the timed operation.
#[derive(Debug, Clone, Default)]
struct Fixture {
    manifest_digest: String,
    blob_digest: String,
    /// Pre-computed digests of the blobs pushes will send, by index.
    push_digests: Vec<String>,
    seed_base: u64,
}

/// Number of distinct blobs a push scenario prepares.
fn push_pool(opts: &Options) -> u64 {
    match opts.requests {
        Some(n) => n.max(1),
        // Duration runs cycle through a pool (re-pushing a blob the registry
        // already has costs it the same transfer and hashing).
        None => (opts.concurrency as u64 * 8).clamp(8, 512),
    }
}

async fn setup(scenario: Scenario, target: &Target, index: usize, opts: &Options) -> anyhow::Result<Fixture> {
    let reg = &target.registry;
    if scenario == Scenario::FailedLogin {
        reg.check_refuses_wrong_password().await?;
        return Ok(Fixture::default());
    }
    reg.check().await?;
    let seed_base = opts.seed.wrapping_add((index as u64) << 40);
    let mut fx = Fixture { seed_base, ..Fixture::default() };
    let repo = &opts.repo;
    match scenario {
        Scenario::ManifestGetTag
        | Scenario::ManifestHeadTag
        | Scenario::ManifestGetDigest
        | Scenario::ManifestHeadDigest
        | Scenario::PullBlob
        | Scenario::Mixed => {
            let config = format!("{{\"bench\":{seed_base}}}").into_bytes();
            let config_len = config.len() as u64;
            let config_digest = reg.push_bytes(repo, config).await?;
            let layer_seed = seed_base ^ 0xB10B;
            let layer_size =
                if scenario == Scenario::PullBlob || scenario == Scenario::Mixed { opts.size } else { 1024 };
            fx.blob_digest = reg.push_generated(repo, layer_seed, layer_size).await?;
            let manifest = image_manifest((&config_digest, config_len), &[(&fx.blob_digest, layer_size)]);
            fx.manifest_digest = format!("sha256:{}", hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&manifest)));
            reg.put_manifest(repo, "bench", manifest).await?;
        }
        Scenario::TagsList => {
            let config = b"{}".to_vec();
            let digest = reg.push_bytes(repo, config).await?;
            let manifest = image_manifest((&digest, 2), &[]);
            for i in 0..100 {
                reg.put_manifest(repo, &format!("t{i:03}"), manifest.clone()).await?;
            }
        }
        Scenario::Catalog => {
            for i in 0..50 {
                reg.push_bytes(&format!("{repo}-cat-{i:02}"), format!("repo {i}").into_bytes()).await?;
            }
        }
        Scenario::PushMono | Scenario::PushPostPut | Scenario::PushChunked | Scenario::FailedLogin => {}
    }
    if scenario.pushes() {
        fx.push_digests = precompute_digests(seed_base, push_pool(opts), opts.size).await?;
    }
    Ok(fx)
}

/// Digests of blobs `seed_base + i`, computed on all cores before timing.
async fn precompute_digests(seed_base: u64, count: u64, size: u64) -> anyhow::Result<Vec<String>> {
    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2) as u64;
    let mut handles = Vec::new();
    for w in 0..workers {
        handles.push(tokio::task::spawn_blocking(move || {
            (w..count).step_by(workers as usize).map(|i| (i, data::digest(seed_base + i, size))).collect::<Vec<_>>()
        }));
    }
    let mut out = vec![String::new(); count as usize];
    for h in handles {
        for (i, d) in h.await.context("digest worker")? {
            out[i as usize] = d;
        }
    }
    Ok(out)
}

/// The timed operation number `i`.
async fn operation(scenario: Scenario, reg: &Registry, fx: &Fixture, opts: &Options, i: u64) -> OpResult {
    let repo = &opts.repo;
    let push = |i: u64| {
        let n = fx.push_digests.len() as u64;
        let k = i % n.max(1);
        (fx.seed_base + k, fx.push_digests.get(k as usize).cloned().unwrap_or_default())
    };
    match scenario {
        Scenario::PushMono => {
            let (seed, digest) = push(i);
            reg.push_monolithic(repo, seed, opts.size, &digest).await
        }
        Scenario::PushPostPut => {
            let (seed, digest) = push(i);
            reg.push_post_put(repo, seed, opts.size, &digest).await
        }
        Scenario::PushChunked => {
            let (seed, digest) = push(i);
            reg.push_chunked(repo, seed, opts.size, &digest, opts.chunk).await
        }
        Scenario::PullBlob => reg.pull_blob(repo, &fx.blob_digest, opts.size).await,
        Scenario::ManifestGetTag => reg.manifest(repo, "bench", false).await,
        Scenario::ManifestHeadTag => reg.manifest(repo, "bench", true).await,
        Scenario::ManifestGetDigest => reg.manifest(repo, &fx.manifest_digest, false).await,
        Scenario::ManifestHeadDigest => reg.manifest(repo, &fx.manifest_digest, true).await,
        Scenario::TagsList => reg.get_json(&format!("/v2/{repo}/tags/list")).await,
        Scenario::Catalog => reg.get_json("/v2/_catalog?n=100").await,
        Scenario::FailedLogin => reg.failed_login(i).await,
        Scenario::Mixed => match i % 10 {
            0..=6 => reg.manifest(repo, "bench", false).await,
            7 | 8 => reg.pull_blob(repo, &fx.blob_digest, opts.size).await,
            _ => {
                let (seed, digest) = push(i / 10);
                reg.push_monolithic(repo, seed, opts.size, &digest).await
            }
        },
    }
}

/// Run one slice: `concurrency` workers until `limit` operations (starting
/// at index `first`) or `deadline`.
#[allow(clippy::too_many_arguments)]
async fn run_slice(
    scenario: Scenario,
    target: &Target,
    fx: Arc<Fixture>,
    opts: Arc<Options>,
    first: u64,
    limit: Option<u64>,
    time: Option<Duration>,
) -> (Samples, u64) {
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = time.map(|t| started + t);
    let sampler = target.pid.map(|pid| PeakSampler::start(pid, Duration::from_millis(20)));
    let mut workers = Vec::new();
    for _ in 0..opts.concurrency.max(1) {
        let (next, fx, opts, reg) = (next.clone(), fx.clone(), opts.clone(), target.registry.clone());
        workers.push(tokio::spawn(async move {
            let mut samples = Samples::default();
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if limit.is_some_and(|l| k >= l) || deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                let t0 = Instant::now();
                match operation(scenario, &reg, &fx, &opts, first + k).await {
                    Ok(bytes) => {
                        samples.latencies_us.push(t0.elapsed().as_micros() as u64);
                        samples.bytes += bytes;
                    }
                    Err((status, _)) => *samples.errors.entry(status).or_default() += 1,
                }
            }
            samples
        }));
    }
    let mut total = Samples::default();
    for w in workers {
        if let Ok(s) = w.await {
            total.merge(s);
        }
    }
    total.elapsed = started.elapsed();
    total.peak_rss = sampler.map(|s| s.finish());
    let done = next.load(Ordering::Relaxed).min(limit.unwrap_or(u64::MAX));
    (total, done)
}

/// Set up every target, then run the scenario in alternating rounds.
/// Returns one merged [`Samples`] per target, in order.
pub async fn run(scenario: Scenario, targets: &[Target], opts: &Options) -> anyhow::Result<Vec<Samples>> {
    anyhow::ensure!(opts.requests.is_some() || opts.duration.is_some(), "give a request count (-n) or a duration (-d)");
    let opts = Arc::new(opts.clone());
    let mut fixtures = Vec::new();
    let mut results = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        let fx = setup(scenario, t, i, &opts)
            .await
            .with_context(|| format!("setting up {} on {}", scenario.name(), t.label))?;
        fixtures.push(Arc::new(fx));
        let idle = t.pid.and_then(rss_bytes);
        results.push(Samples { idle_rss: idle, ..Samples::default() });
    }
    let rounds = opts.rounds.max(1) as u64;
    let mut issued = vec![0u64; targets.len()];
    for round in 0..rounds {
        for (i, t) in targets.iter().enumerate() {
            let limit = opts.requests.map(|n| n / rounds + u64::from(round < n % rounds));
            let time = opts.duration.map(|d| d / rounds as u32);
            let (samples, done) =
                run_slice(scenario, t, fixtures[i].clone(), opts.clone(), issued[i], limit, time).await;
            issued[i] += done;
            results[i].merge(samples);
        }
    }
    Ok(results)
}
