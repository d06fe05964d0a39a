//! The scanner in process, on a metered store: an image sharing its base
//! layer with one already scanned reads only its own layer; a report after
//! a new database import reads no layer at all (matching happens at read
//! time against stored inventories).

#![cfg(feature = "scan")]
#![allow(clippy::unwrap_used)]

use std::sync::atomic::Ordering;
use std::sync::Arc;

use berth::auth::{Gate, Identity};
use berth::config::ScanConfig;
use berth::ext::scan::vulndb::{import, store};
use berth::ext::scan::{Outcome, Scanner};
use berth::oci::{Digest, Reference};
use berth::registry::{Access, Pull, Push, Registry, RegistryOptions};
use berth_storage::{MeteredStore, ObjectStore};
use bytes::Bytes;
use futures::StreamExt;

fn access<A: berth::registry::access::Action>(repo: &str) -> Access<A> {
    Gate::anonymous().authorize(&Identity::anonymous(), &repo.parse().unwrap()).unwrap()
}

fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect()
}

fn tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, path, *data).unwrap();
    }
    b.into_inner().unwrap()
}

async fn upload(registry: &Registry, repo: &str, data: &[u8]) -> Digest {
    let digest = Digest::sha256(data);
    let body = futures::stream::iter(vec![Ok(Bytes::copy_from_slice(data))]).boxed();
    registry.upload_monolithic(&access::<Push>(repo), &digest, Some(data.len() as u64), body).await.unwrap()
}

async fn push(registry: &Registry, repo: &str, tag: &str, layers: &[&[u8]]) -> Digest {
    let config = format!(r#"{{"os":"linux","architecture":"amd64","tag":"{tag}"}}"#);
    let c = upload(registry, repo, config.as_bytes()).await;
    let mut descs = Vec::new();
    for l in layers {
        let d = upload(registry, repo, l).await;
        descs.push(format!(
            r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{d}","size":{}}}"#,
            l.len()
        ));
    }
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{c}","size":{}}},"layers":[{}]}}"#,
        config.len(),
        descs.join(",")
    );
    let reference: Reference = tag.parse().unwrap();
    registry
        .manifest_put(
            &access::<Push>(repo),
            None,
            &reference,
            Some("application/vnd.oci.image.manifest.v1+json"),
            Bytes::from(manifest.clone()),
        )
        .await
        .unwrap();
    Digest::sha256(manifest.as_bytes())
}

fn osv_dir(fixed: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let doc = format!(
        r#"{{"id":"DSA-9","summary":"zlib","affected":[{{"package":{{"ecosystem":"Debian:12","name":"zlib"}},
        "ranges":[{{"type":"ECOSYSTEM","events":[{{"introduced":"0"}},{{"fixed":"{fixed}"}}]}}]}}]}}"#
    );
    std::fs::write(dir.path().join("DSA-9.json"), doc).unwrap();
    dir
}

async fn publish(registry: &Registry, dir: &std::path::Path) -> String {
    let mut entries = Vec::new();
    let info = import::read_source(dir, &mut entries).unwrap();
    store::publish(&registry.derived("scan"), vec![info], entries).await.unwrap().version
}

async fn ready(scanner: &Scanner, repo: &str, tag: &str) -> Arc<berth::ext::scan::report::Report> {
    match scanner.report(&access::<Pull>(repo), &tag.parse().unwrap()).await.unwrap() {
        Outcome::Ready(r) => r,
        Outcome::Pending { .. } => panic!("{repo}:{tag} pending"),
    }
}

/// The tests below count the process's scan metrics: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn count(c: &std::sync::atomic::AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

#[tokio::test]
async fn layers_are_read_once_and_never_for_a_new_database() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let fs: Arc<dyn ObjectStore> = Arc::new(
        berth_storage_fs::FsStore::open(dir.path(), berth_storage_fs::FsOptions { fsync: false, direct_io: false })
            .unwrap(),
    );
    let metered = Arc::new(MeteredStore::new(fs));
    let meters = metered.meters().clone();
    let registry = Registry::new(metered, Arc::new(berth_state::MemoryState::new()), RegistryOptions::default());
    let status = b"Package: zlib1g\nStatus: install ok installed\nSource: zlib\nVersion: 1:1.2.13.dfsg-1\n";
    let filler = noise(8 << 20, 1);
    let base = tar(&[
        ("etc/os-release", b"ID=debian\nVERSION_ID=12\n"),
        ("var/lib/dpkg/status", status),
        ("opt/base.bin", &filler),
    ]);
    let app_a = tar(&[("srv/a.bin", &noise(1 << 20, 2))]);
    let app_b = tar(&[("srv/b.bin", &noise(1 << 20, 3))]);
    let a = push(&registry, "apps/a", "1", &[&base, &app_a]).await;
    let b = push(&registry, "apps/b", "1", &[&base, &app_b]).await;

    let scanner = Scanner::new(registry.clone(), ScanConfig::default());
    let read = || meters.bytes_read.load(Ordering::Relaxed);
    let before = read();
    scanner.scan(&"apps/a".parse().unwrap(), &a).await.unwrap();
    let first = read() - before;
    let before = read();
    scanner.scan(&"apps/b".parse().unwrap(), &b).await.unwrap();
    let second = read() - before;
    eprintln!(
        "bytes read: first image {first} (layers {} + {}), second image sharing the base {second} (its own layer {})",
        base.len(),
        app_a.len(),
        app_b.len()
    );
    assert!(first as usize >= base.len() + app_a.len());
    assert!((second as usize) < app_b.len() + (64 << 10), "the shared base was read again: {second} bytes");

    // Inventory only, then a database, then another: no layer read.
    let r = ready(&scanner, "apps/a", "1").await;
    assert!(r.findings.is_empty() && r.database.is_none());
    let v1 = publish(&registry, osv_dir("1:1.2.13.dfsg-2").path()).await;
    scanner.db().invalidate();
    let before = read();
    let r1 = ready(&scanner, "apps/a", "1").await;
    assert_eq!(r1.database.as_ref().unwrap().version, v1);
    assert_eq!(r1.findings.len(), 1);
    assert_eq!(r1.findings[0].package, "zlib1g");
    let v2 = publish(&registry, osv_dir("1:1.2.13.dfsg-1").path()).await;
    assert_ne!(v1, v2);
    scanner.db().invalidate();
    let r2 = ready(&scanner, "apps/a", "1").await;
    assert_eq!(r2.database.as_ref().unwrap().version, v2);
    assert!(r2.findings.is_empty(), "fixed in the installed version: {:?}", r2.findings);
    // The same manifest in another repository: its report names that
    // repository, never the first one's.
    let c = push(&registry, "apps/c", "1", &[&base, &app_a]).await;
    assert_eq!(c, a);
    let rc = ready(&scanner, "apps/c", "1").await;
    assert_eq!(rc.artifact.repository, "apps/c");
    assert_eq!(ready(&scanner, "apps/a", "1").await.artifact.repository, "apps/a");
    let reports = read() - before;
    eprintln!("bytes read by two reports across two database versions: {reports}");
    assert!((reports as usize) < app_a.len() / 4, "a layer was read: {reports} bytes");
}

/// Run jobs on every scanner until the queue is empty (bounded).
async fn drain(scanners: &[&Scanner], state: &Arc<dyn berth_state::SharedState>) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let mut ran = false;
        let results = futures::future::join_all(scanners.iter().map(|s| s.run_one())).await;
        for r in results {
            ran |= r.unwrap();
        }
        let far = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
        if !ran && state.due(berth::ext::scan::service::QUEUE, far, 1).await.unwrap().is_empty() {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "the queue did not drain");
        if !ran {
            // Jobs are waiting for their retry time: poll for them.
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test]
async fn the_queue_backfills_shares_layers_takes_over_and_gives_up() {
    let _serial = SERIAL.lock().await;
    use berth::ext::scan::service::{job_lock, member, QUEUE};
    use std::time::{Duration, SystemTime};

    let dir = tempfile::tempdir().unwrap();
    let fs: Arc<dyn ObjectStore> = Arc::new(
        berth_storage_fs::FsStore::open(dir.path(), berth_storage_fs::FsOptions { fsync: false, direct_io: false })
            .unwrap(),
    );
    let state: Arc<dyn berth_state::SharedState> = Arc::new(berth_state::MemoryState::new());
    // Two replicas: same store, same shared state.
    let r1 = Registry::new(fs.clone(), state.clone(), RegistryOptions::default());
    let r2 = Registry::new(fs.clone(), state.clone(), RegistryOptions::default());
    let timing =
        |s: Scanner| s.with_timing(Duration::from_millis(300), Duration::from_millis(10), Duration::from_secs(3600));
    let s1 = timing(Scanner::new(r1.clone(), ScanConfig::default()));
    let s2 = timing(Scanner::new(r2.clone(), ScanConfig::default()));
    let m = berth::metrics::get();
    let status = b"Package: zlib1g\nStatus: install ok installed\nSource: zlib\nVersion: 1:1.2.13.dfsg-1\n";
    let base = tar(&[
        ("etc/os-release", b"ID=debian\nVERSION_ID=12\n"),
        ("var/lib/dpkg/status", status),
        ("opt/x", &noise(1 << 20, 9)),
    ]);

    // Stored before the extension ran: the backfill queues every tagged
    // image once; two replicas drain the queue; each layer is inventoried
    // once in the fleet (3 images, 4 distinct layers).
    let layers = count(&m.scan_layers);
    for i in 0..3u64 {
        let own = tar(&[("srv/own", &noise(4096, 100 + i))]);
        push(&r1, &format!("old/app{i}"), "1", &[&base, &own]).await;
    }
    s1.backfill().await.unwrap();
    let queued = state.due(QUEUE, SystemTime::now(), 100).await.unwrap();
    assert_eq!(queued.len(), 3, "{queued:?}");
    drain(&[&s1, &s2], &state).await;
    assert_eq!(count(&m.scan_layers) - layers, 4, "a layer was inventoried twice");
    for i in 0..3 {
        let r = ready(&s2, &format!("old/app{i}"), "1").await;
        assert_eq!(r.package_count, 1);
    }
    // The backfill runs once per inventory format.
    s2.backfill().await.unwrap();
    assert!(state.due(QUEUE, SystemTime::now(), 10).await.unwrap().is_empty());

    // A worker that took a job and died: the job comes back when its lease
    // ends, and another replica finishes it.
    let d = push(&r1, "new/app", "1", &[&base, &tar(&[("srv/new", &noise(4096, 7))])]).await;
    let job = member(&"new/app".parse().unwrap(), &d);
    let dead = state.try_lock(&job_lock(&job), Duration::from_millis(300)).await.unwrap().unwrap();
    state.schedule(QUEUE, &job, SystemTime::now() + Duration::from_millis(300)).await.unwrap();
    assert!(!s2.run_one().await.unwrap(), "the job was taken while its lease held");
    drain(&[&s2], &state).await;
    assert_eq!(ready(&s2, "new/app", "1").await.package_count, 1);
    drop(dead);

    // A layer that cannot be read: retried with backoff, then the failure
    // is recorded and answered (and the job queued again).
    let broken_layer = tar(&[("srv/broken", &noise(4096, 8))]);
    let b = push(&r1, "new/broken", "1", &[&broken_layer]).await;
    let key =
        format!("blobs/sha256/{}/{}", &Digest::sha256(&broken_layer).hex()[..2], Digest::sha256(&broken_layer).hex());
    fs.delete(&key).await.unwrap();
    let (failed, retried) = (count(&m.scan_jobs_failed), count(&m.scan_jobs_retried));
    s1.enqueue(&"new/broken".parse().unwrap(), &b).await.unwrap();
    drain(&[&s1], &state).await;
    assert_eq!(count(&m.scan_jobs_failed) - failed, 1);
    assert_eq!(count(&m.scan_jobs_retried) - retried, berth::ext::scan::service::MAX_ATTEMPTS as u64 - 1);
    // Answered while the failure is recent (readers polling do not restart
    // the job), queued again once it is old.
    for _ in 0..3 {
        match s1.report(&access::<Pull>("new/broken"), &"1".parse().unwrap()).await {
            Err(berth::oci::OciError::Unavailable { cause, .. }) => {
                assert!(cause.contains("failed after 6 attempts"), "{cause}")
            }
            other => panic!("expected the recorded failure, got {other:?}"),
        }
    }
    assert!(state.due(QUEUE, SystemTime::now(), 10).await.unwrap().is_empty());
    // Another repository holding the same image sees no failure of this one.
    let elsewhere = push(&r1, "other/broken", "1", &[&broken_layer]).await;
    assert_eq!(elsewhere, b);
    assert!(matches!(
        s1.report(&access::<Pull>("other/broken"), &"1".parse().unwrap()).await,
        Ok(Outcome::Pending { .. })
    ));
    state.unschedule(QUEUE, &member(&"other/broken".parse().unwrap(), &b)).await.unwrap();
    let later = Scanner::new(r1.clone(), ScanConfig::default()).with_timing(
        Duration::from_millis(300),
        Duration::from_millis(10),
        Duration::ZERO,
    );
    assert!(matches!(
        later.report(&access::<Pull>("new/broken"), &"1".parse().unwrap()).await,
        Ok(Outcome::Pending { .. })
    ));
    assert_eq!(state.due(QUEUE, SystemTime::now(), 10).await.unwrap().len(), 1, "queued again");

    // The facts of a blob the collector deleted are swept (after a grace).
    let gone = tar(&[("srv/gone", &noise(4096, 11))]);
    let g = push(&r1, "new/gone", "1", &[&gone]).await;
    s1.scan(&"new/gone".parse().unwrap(), &g).await.unwrap();
    let gd = Digest::sha256(&gone);
    let fact = format!("blobs/sha256/{}/inventory-v{}", gd.hex(), berth::ext::scan::inventory::FORMAT);
    assert!(r1.derived("scan").head(&fact).await.unwrap().is_some());
    assert_eq!(s1.sweep(Duration::ZERO).await.unwrap(), 0, "nothing to sweep while every blob is stored");
    fs.delete(&format!("blobs/sha256/{}/{}", &gd.hex()[..2], gd.hex())).await.unwrap();
    assert_eq!(s1.sweep(Duration::from_secs(3600)).await.unwrap(), 0, "a young fact is kept");
    assert_eq!(s1.sweep(Duration::ZERO).await.unwrap(), 1, "the deleted blob's inventory");
    assert!(r1.derived("scan").head(&fact).await.unwrap().is_none());
}
