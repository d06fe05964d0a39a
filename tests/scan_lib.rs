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

#[tokio::test]
async fn layers_are_read_once_and_never_for_a_new_database() {
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
    let reports = read() - before;
    eprintln!("bytes read by two reports across two database versions: {reports}");
    assert!((reports as usize) < app_a.len() / 4, "a layer was read: {reports} bytes");
}
