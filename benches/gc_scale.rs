//! Garbage collection at scale on S3 (moto_server, or BERTH_TEST_S3_ENDPOINT):
//! time and object-store requests of a first pass over N manifests (default
//! 10,000; `BERTH_GC_BENCH_MANIFESTS`), of a second pass after 100 new
//! pushes, and the churn scenario (50 builds sharing a base, retention
//! "keep last 5": the bytes left against the bytes the 5 images need).
//! Run by scripts/bench-gc; prints a table for docs/performance.md.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use berth::auth::{Gate, Identity};
use berth::oci::{Digest, Reference};
use berth::registry::gc::{GcOptions, RetentionRule, TagRetention};
use berth::registry::{keys, Registry, RegistryOptions};
use berth_storage::metered::Meters;
use berth_storage::{MeteredStore, ObjectStore, PutMode};
use bytes::Bytes;
use futures::StreamExt;

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn blob(seed: &str, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut n = 0u64;
    while out.len() < len {
        out.extend_from_slice(Digest::sha256(format!("{seed}/{n}").as_bytes()).hex().as_bytes());
        n += 1;
    }
    out.truncate(len);
    out
}

fn manifest(blobs: &[&[u8]]) -> Vec<u8> {
    let desc =
        |mt: &str, b: &[u8]| format!(r#"{{"mediaType":"{mt}","digest":"{}","size":{}}}"#, Digest::sha256(b), b.len());
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{MANIFEST}","config":{},"layers":[{}]}}"#,
        desc("application/vnd.oci.image.config.v1+json", blobs[0]),
        blobs[1..].iter().map(|b| desc("application/vnd.oci.image.layer.v1.tar", b)).collect::<Vec<_>>().join(",")
    )
    .into_bytes()
}

/// Write an image's records straight to the store (the layout the
/// registry writes), so setting up 10,000 images takes minutes, not hours.
async fn store_image(store: &dyn ObjectStore, repo: &str, tag: Option<&str>, blobs: &[&[u8]]) -> Digest {
    let repo: berth::oci::RepoName = repo.parse().unwrap();
    for b in blobs {
        let d = Digest::sha256(b);
        store.put(&keys::blob(&d), Bytes::copy_from_slice(b), PutMode::Overwrite).await.unwrap();
        store.put(&keys::layer_link(&repo, &d), Bytes::new(), PutMode::Overwrite).await.unwrap();
    }
    let m = manifest(blobs);
    let d = Digest::sha256(&m);
    let mut rev = format!("{MANIFEST}\n").into_bytes();
    rev.extend_from_slice(&m);
    store.put(&keys::revision(&repo, &d), Bytes::from(rev), PutMode::Overwrite).await.unwrap();
    if let Some(t) = tag {
        store
            .put(&keys::tag(&repo, &t.parse().unwrap()), Bytes::from(d.to_string()), PutMode::Overwrite)
            .await
            .unwrap();
    }
    store.put(&keys::catalog_entry(&repo), Bytes::new(), PutMode::Overwrite).await.unwrap();
    d
}

fn requests(m: &Meters) -> [u64; 7] {
    [
        Meters::get(&m.lists),
        Meters::get(&m.gets),
        Meters::get(&m.heads),
        Meters::get(&m.puts),
        Meters::get(&m.deletes),
        Meters::get(&m.batch_deletes),
        Meters::get(&m.keys_batch_deleted),
    ]
}

fn row(label: &str, took: Duration, before: [u64; 7], after: [u64; 7], deleted: u64) {
    let d: Vec<u64> = after.iter().zip(before).map(|(a, b)| a - b).collect();
    println!(
        "| {label} | {:.2} s | {} | {} | {} | {} | {} | {} ({} keys) | {} | {deleted} |",
        took.as_secs_f64(),
        d[0],
        d[1],
        d[2],
        d[3],
        d[4],
        d[5],
        d[6],
        d[0] + d[1] + d[2] + d[3] + d[4] + d[5],
    );
}

async fn scale(server: &berth_storage_s3::testing::S3TestServer, n: usize) {
    let s3: Arc<dyn ObjectStore> = Arc::new(server.fresh_store().await);
    let metered = MeteredStore::new(s3.clone());
    let store: Arc<dyn ObjectStore> = Arc::new(metered.clone());
    let bases: Vec<Vec<u8>> = (0..10).map(|i| blob(&format!("base{i}"), 4096)).collect();
    let setup = Instant::now();
    // Every tenth image is untagged (pushed by digest, then abandoned).
    futures::stream::iter(0..n)
        .map(|i| {
            let (s3, bases) = (s3.clone(), &bases);
            async move {
                let cfg = blob(&format!("cfg{i}"), 200);
                let own = blob(&format!("own{i}"), 1024);
                let tag = format!("b{i}");
                let tagged = i % 10 != 0;
                store_image(
                    s3.as_ref(),
                    &format!("bench/r{}", i % 100),
                    tagged.then_some(tag.as_str()),
                    &[&cfg, &bases[i % 10], &own],
                )
                .await;
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;
    eprintln!("setup of {n} images: {:.1} s", setup.elapsed().as_secs_f64());

    let options = RegistryOptions {
        gc: GcOptions { grace: Duration::ZERO, untagged_after: Some(Duration::ZERO), ..GcOptions::default() },
        ..RegistryOptions::default()
    };
    let registry = Registry::new(store.clone(), Arc::new(berth_state::MemoryState::new()), options.clone());
    println!("\n{n} manifests ({} tagged, {} untagged), 100 repositories, moto_server:\n", n - n / 10, n / 10);
    println!("| pass | time | LIST | GET | HEAD | PUT | DELETE | DeleteObjects | requests | objects deleted |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let m = metered.meters().clone();
    let before = requests(&m);
    let t = Instant::now();
    let first = registry.gc_pass(false, &berth::registry::gc::no_progress).await.unwrap().unwrap();
    row("first pass", t.elapsed(), before, requests(&m), first.deleted.objects());

    for i in 0..100 {
        let cfg = blob(&format!("new-cfg{i}"), 200);
        let own = blob(&format!("new-own{i}"), 1024);
        store_image(
            s3.as_ref(),
            &format!("bench/r{}", i % 100),
            Some(&format!("new{i}")),
            &[&cfg, &bases[i % 10], &own],
        )
        .await;
    }
    // Another replica: nothing in memory, only the derived index.
    let replica = Registry::new(store.clone(), Arc::new(berth_state::MemoryState::new()), options.clone());
    let before = requests(&m);
    let t = Instant::now();
    let second = replica.gc_pass(false, &berth::registry::gc::no_progress).await.unwrap().unwrap();
    row("after 100 new pushes (another replica)", t.elapsed(), before, requests(&m), second.deleted.objects());
    let before = requests(&m);
    let t = Instant::now();
    let third = replica.gc_pass(false, &berth::registry::gc::no_progress).await.unwrap().unwrap();
    row("again, nothing changed", t.elapsed(), before, requests(&m), third.deleted.objects());
    println!(
        "\nfirst pass: {} manifests and {} tags read; second: {} and {}",
        first.scanned.manifests_read, first.scanned.tags_read, second.scanned.manifests_read, second.scanned.tags_read
    );
}

async fn churn(server: &berth_storage_s3::testing::S3TestServer) {
    let store: Arc<dyn ObjectStore> = Arc::new(server.fresh_store().await);
    let writer = Registry::new(store.clone(), Arc::new(berth_state::MemoryState::new()), RegistryOptions::default());
    let access = |repo: &str| Gate::anonymous().authorize(&Identity::anonymous(), &repo.parse().unwrap()).unwrap();
    let base = blob("churn-base", 2 * 1024 * 1024);
    let upload = |data: Vec<u8>| {
        let writer = writer.clone();
        let acc = access("ci/app");
        async move {
            let d = Digest::sha256(&data);
            let len = data.len() as u64;
            let body = futures::stream::iter(vec![Ok(Bytes::from(data))]).boxed();
            writer.upload_monolithic(&acc, &d, Some(len), body).await.unwrap();
        }
    };
    upload(base.clone()).await;
    let mut images = Vec::new();
    for i in 0..50 {
        let cfg = format!(r#"{{"build":{i}}}"#).into_bytes();
        let own = blob(&format!("churn-{i}"), 256 * 1024 + i * 1000);
        upload(cfg.clone()).await;
        upload(own.clone()).await;
        let m = manifest(&[&cfg, &base, &own]);
        let reference: Reference = format!("build-{i}").parse().unwrap();
        writer.manifest_put(&access("ci/app"), None, &reference, Some(MANIFEST), Bytes::from(m)).await.unwrap();
        // Distinct push times even where the store keeps whole seconds.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        images.push((cfg, own));
    }
    let options = RegistryOptions {
        gc: GcOptions {
            grace: Duration::ZERO,
            policies: vec![
                RetentionRule::new("ci/**").tags(TagRetention { keep_last: Some(5), ..TagRetention::default() })
            ],
            ..GcOptions::default()
        },
        ..RegistryOptions::default()
    };
    let gc = Registry::new(store.clone(), Arc::new(berth_state::MemoryState::new()), options);
    let before = gc.usage(None, true).await.unwrap().stored_bytes;
    let t = Instant::now();
    let report = gc.gc_pass(false, &berth::registry::gc::no_progress).await.unwrap().unwrap();
    let took = t.elapsed();
    let after = gc.usage(None, true).await.unwrap().stored_bytes;
    let needed: u64 = base.len() as u64 + images[45..].iter().map(|(c, o)| (c.len() + o.len()) as u64).sum::<u64>();
    println!("\nChurn: 50 builds of ci/app sharing a 2 MiB base, retention keep_last = 5 (moto_server):\n");
    println!("| stored before | stored after | the 5 kept images need | tags deleted | manifests deleted | blobs deleted | pass |");
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| {before} B | {after} B | {needed} B | {} | {} | {} | {:.2} s |",
        report.deleted.tags,
        report.deleted.manifests,
        report.deleted.blobs,
        took.as_secs_f64()
    );
    assert_eq!(after, needed, "the bytes left are exactly what the kept images need");
}

fn main() {
    let n: usize = std::env::var("BERTH_GC_BENCH_MANIFESTS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let server = berth_storage_s3::testing::S3TestServer::start();
        scale(&server, n).await;
        churn(&server).await;
    });
}
