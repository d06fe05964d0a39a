//! What garbage collection keeps and deletes, on the filesystem and on S3
//! (moto_server, or BERTH_TEST_S3_ENDPOINT): tagged images whole, index
//! children, referrers of kept manifests, mounted blobs; the untagged
//! policy, globally and per repository glob; a dry run that changes
//! nothing; batched deletes; a second pass that reads only what changed.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use berth::auth::{Gate, Identity};
use berth::oci::{Digest, OciError, Reference};
use berth::registry::gc::{GcOptions, GcReport, Kind, RetentionRule};
use berth::registry::{Access, Delete, Pull, Push, Registry, RegistryOptions};
use berth_storage::metered::Meters;
use berth_storage::{MeteredStore, ObjectStore, ObjectStoreExt};
use bytes::Bytes;
use futures::StreamExt;

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX: &str = "application/vnd.oci.image.index.v1+json";

fn access<A: berth::registry::access::Action>(repo: &str) -> Access<A> {
    Gate::anonymous().authorize(&Identity::anonymous(), &repo.parse().unwrap()).unwrap()
}

async fn upload(registry: &Registry, repo: &str, data: &[u8]) -> Digest {
    let digest = Digest::sha256(data);
    let body = futures::stream::iter(vec![Ok(Bytes::copy_from_slice(data))]).boxed();
    registry.upload_monolithic(&access::<Push>(repo), &digest, Some(data.len() as u64), body).await.unwrap()
}

fn descriptor(media_type: &str, data: &[u8]) -> String {
    format!(r#"{{"mediaType":"{media_type}","digest":"{}","size":{}}}"#, Digest::sha256(data), data.len())
}

/// Push an image (config + layers) and return its manifest bytes.
async fn push_image(
    registry: &Registry,
    repo: &str,
    reference: &str,
    layers: &[&[u8]],
    subject: Option<&[u8]>,
) -> Vec<u8> {
    let config = format!(r#"{{"os":"linux","ref":"{reference}","n":{}}}"#, layers.len()).into_bytes();
    upload(registry, repo, &config).await;
    let mut descs = Vec::new();
    for l in layers {
        upload(registry, repo, l).await;
        descs.push(descriptor("application/vnd.oci.image.layer.v1.tar", l));
    }
    let subject = subject.map(|s| format!(r#","subject":{}"#, descriptor(MANIFEST, s))).unwrap_or_default();
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{MANIFEST}","config":{},"layers":[{}]{subject}}}"#,
        descriptor("application/vnd.oci.image.config.v1+json", &config),
        descs.join(",")
    )
    .into_bytes();
    // An empty reference pushes by digest.
    let by_digest = Digest::sha256(&manifest).to_string();
    put(registry, repo, if reference.is_empty() { &by_digest } else { reference }, MANIFEST, &manifest).await;
    manifest
}

async fn put(registry: &Registry, repo: &str, reference: &str, media_type: &str, body: &[u8]) {
    let reference: Reference = reference.parse().unwrap();
    registry
        .manifest_put(&access::<Push>(repo), None, &reference, Some(media_type), Bytes::copy_from_slice(body))
        .await
        .unwrap();
}

async fn pulls(registry: &Registry, repo: &str, reference: &str) -> Result<(), OciError> {
    let m = registry.manifest_get(&access::<Pull>(repo), &reference.parse().unwrap()).await?;
    let parsed = berth::oci::manifest::parse(Some(&m.media_type), &m.bytes).unwrap();
    for d in parsed.required_blobs() {
        let got = registry.blob_get(&access::<Pull>(repo), &d.digest, None).await?;
        let mut body = got.body;
        let mut bytes = Vec::new();
        while let Some(c) = body.next().await {
            bytes.extend_from_slice(&c.map_err(OciError::from)?);
        }
        assert_eq!(Digest::sha256(&bytes), d.digest);
    }
    for child in &parsed.manifests {
        Box::pin(pulls(registry, repo, &child.digest.to_string())).await?;
    }
    Ok(())
}

async fn gc(registry: &Registry) -> GcReport {
    registry.gc_pass(false, &berth::registry::gc::no_progress).await.unwrap().expect("lease free")
}

async fn all_keys(store: &dyn ObjectStore) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut after: Option<String> = None;
    loop {
        let page = store.list("", after.as_deref(), 1000).await.unwrap();
        out.extend(page.objects.iter().map(|o| o.key.clone()).filter(|k| !k.starts_with("_gc/")));
        match page.next_start_after {
            Some(n) => after = Some(n),
            None => return out,
        }
    }
}

fn registry_with(store: Arc<dyn ObjectStore>, gc: GcOptions) -> Registry {
    Registry::new(
        store,
        Arc::new(berth_state::MemoryState::new()),
        RegistryOptions { gc, ..RegistryOptions::default() },
    )
}

fn now_gc() -> GcOptions {
    GcOptions { grace: Duration::ZERO, ..GcOptions::default() }
}

/// The whole scenario, on one store.
async fn keeps_what_is_reachable(store: Arc<dyn ObjectStore>) {
    let registry = registry_with(store.clone(), now_gc());
    let base: &[u8] = b"base layer shared by every image, and by the other repository";
    // Tagged image with a signature (a referrer) and an SBOM of the signature.
    let app = push_image(&registry, "team/app", "v1", &[base, b"app v1"], None).await;
    let signature = {
        let cfg = b"{\"sig\":1}".to_vec();
        upload(&registry, "team/app", &cfg).await;
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"{MANIFEST}","artifactType":"application/vnd.example.sig","config":{},"layers":[],"subject":{}}}"#,
            descriptor("application/vnd.oci.empty.v1+json", &cfg),
            descriptor(MANIFEST, &app)
        )
        .into_bytes();
        put(&registry, "team/app", &Digest::sha256(&m).to_string(), MANIFEST, &m).await;
        m
    };
    let sbom_of_sig =
        push_image(&registry, "team/app", "sbom-tmp", &[b"sbom of the signature"], Some(&signature)).await;
    registry.manifest_delete(&access::<Delete>("team/app"), &"sbom-tmp".parse().unwrap()).await.unwrap();

    // A multi-platform index whose children are only reachable through it.
    let amd = push_image(&registry, "team/app", "tmp-amd", &[base, b"amd64 bits"], None).await;
    let arm = push_image(&registry, "team/app", "tmp-arm", &[base, b"arm64 bits"], None).await;
    for t in ["tmp-amd", "tmp-arm"] {
        registry.manifest_delete(&access::<Delete>("team/app"), &t.parse().unwrap()).await.unwrap();
    }
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{INDEX}","manifests":[{},{}]}}"#,
        descriptor(MANIFEST, &amd),
        descriptor(MANIFEST, &arm)
    )
    .into_bytes();
    put(&registry, "team/app", "multi", INDEX, &index).await;

    // A blob mounted into another repository and used by an image there.
    let base_digest = Digest::sha256(base);
    assert!(registry.mount(&access::<Push>("team/other"), &access::<Pull>("team/app"), &base_digest).await.unwrap());
    push_image(&registry, "team/other", "latest", &[base], None).await;

    // Garbage: an image whose tag moved away, a stray upload, an untagged
    // manifest pushed by digest, a repository emptied by deletes.
    push_image(&registry, "team/app", "v0", &[base, b"old app layer"], None).await;
    let old = registry.manifest_get(&access::<Pull>("team/app"), &"v0".parse().unwrap()).await.unwrap();
    registry.manifest_delete(&access::<Delete>("team/app"), &"v0".parse().unwrap()).await.unwrap();
    upload(&registry, "team/app", b"a stray upload nothing references").await;
    push_image(&registry, "scratch/tmp", "t", &[b"temporary"], None).await;
    let tmp = registry.manifest_get(&access::<Pull>("scratch/tmp"), &"t".parse().unwrap()).await.unwrap();
    registry.manifest_delete(&access::<Delete>("scratch/tmp"), &Reference::Digest(tmp.digest.clone())).await.unwrap();

    // Dry run: reports, changes nothing.
    let before = all_keys(store.as_ref()).await;
    let dry = registry.gc_pass(true, &berth::registry::gc::no_progress).await.unwrap().unwrap();
    assert!(dry.dry_run);
    assert_eq!(all_keys(store.as_ref()).await, before, "a dry run changed the store");
    let would: BTreeSet<(Kind, String)> = dry.items.iter().map(|d| (d.kind, d.target.clone())).collect();
    assert!(would.contains(&(Kind::Blob, Digest::sha256(b"a stray upload nothing references").to_string())));
    assert!(!would.contains(&(Kind::Blob, Digest::sha256(b"old app layer").to_string())), "untagged kept");
    assert!(dry.items.iter().all(|d| !d.reason.is_empty()));

    // Untagged manifests are kept by default: only unreferenced blobs and
    // links go (the v0 image's manifest keeps its own layer).
    let report = gc(&registry).await;
    assert_eq!(report.deleted.manifests, 0, "{:?}", report.items);
    let deleted: BTreeSet<String> = report.items.iter().map(|d| d.target.clone()).collect();
    assert!(deleted.contains(&Digest::sha256(b"a stray upload nothing references").to_string()));
    assert!(!deleted.contains(&Digest::sha256(b"old app layer").to_string()), "kept by the untagged v0 manifest");
    assert_eq!(report.deleted.repositories, 1, "scratch/tmp is empty: {:?}", report.items);
    for (repo, r) in [("team/app", "v1"), ("team/app", "multi"), ("team/other", "latest")] {
        pulls(&registry, repo, r).await.unwrap_or_else(|e| panic!("{repo}:{r}: {e}"));
    }
    pulls(&registry, "team/app", &Digest::sha256(&signature).to_string()).await.unwrap();
    pulls(&registry, "team/app", &Digest::sha256(&sbom_of_sig).to_string()).await.unwrap();
    pulls(&registry, "team/app", &old.digest.to_string()).await.unwrap();

    // Now delete untagged manifests older than "0s" in team/** only.
    let strict = GcOptions { policies: vec![RetentionRule::new("team/**").untagged(Some(Duration::ZERO))], ..now_gc() };
    let registry = registry_with(store.clone(), strict);
    let report = gc(&registry).await;
    let gone: BTreeSet<String> =
        report.items.iter().filter(|d| d.kind == Kind::Manifest).map(|d| d.target.clone()).collect();
    // The old v0 manifest goes; the index children, the signature and its SBOM stay.
    assert!(gone.contains(&old.digest.to_string()), "{gone:?}");
    for keep in [&amd, &arm, &signature, &sbom_of_sig, &app, &index] {
        assert!(!gone.contains(&Digest::sha256(keep).to_string()));
    }
    assert!(report
        .items
        .iter()
        .any(|d| d.kind == Kind::Blob && d.target == Digest::sha256(b"old app layer").to_string()));
    for (repo, r) in [("team/app", "v1"), ("team/app", "multi"), ("team/other", "latest")] {
        pulls(&registry, repo, r).await.unwrap_or_else(|e| panic!("{repo}:{r}: {e}"));
    }
    pulls(&registry, "team/app", &Digest::sha256(&signature).to_string()).await.unwrap();
    pulls(&registry, "team/app", &Digest::sha256(&sbom_of_sig).to_string()).await.unwrap();
    // The referrers listing still finds the signature.
    let page = registry.referrers(&access::<Pull>("team/app"), &Digest::sha256(&app), None, None, None).await.unwrap();
    assert_eq!(page.manifests.len(), 1);
    // The emptied repository left the catalog.
    let catalog = registry.catalog(None, None, &|_| true).await.unwrap();
    assert_eq!(catalog.items, vec!["team/app".to_owned(), "team/other".to_owned()]);

    // A pass with nothing to do deletes nothing, and marks are all cleared.
    let again = gc(&registry).await;
    assert_eq!(again.deleted.objects(), 0, "{:?}", again.items);
    assert!(store.list("_gc/marks/", None, 10).await.unwrap().objects.is_empty());
    assert!(store.list("_gc/active/", None, 10).await.unwrap().objects.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeps_what_is_reachable_on_fs() {
    let dir = tempfile::tempdir().unwrap();
    let store =
        berth_storage_fs::FsStore::open(dir.path(), berth_storage_fs::FsOptions { fsync: false, direct_io: false })
            .unwrap();
    keeps_what_is_reachable(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeps_what_is_reachable_on_s3() {
    let server = berth_storage_s3::testing::S3TestServer::start();
    keeps_what_is_reachable(Arc::new(server.fresh_store().await)).await;
}

/// Young things are never collected, whatever references them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grace_period_protects_new_content() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(
        berth_storage_fs::FsStore::open(dir.path(), berth_storage_fs::FsOptions { fsync: false, direct_io: false })
            .unwrap(),
    );
    let registry =
        registry_with(store.clone(), GcOptions { untagged_after: Some(Duration::ZERO), ..GcOptions::default() });
    upload(&registry, "a", b"an upload a client will reference in a moment").await;
    push_image(&registry, "a", "", &[b"pushed by digest"], None).await;
    let before = all_keys(store.as_ref()).await;
    let report = gc(&registry).await;
    assert_eq!(report.deleted.objects(), 0, "{:?}", report.items);
    assert_eq!(all_keys(store.as_ref()).await, before);
}

/// On S3: deletes go in batches, and a second pass reads only the manifests
/// and tags that changed since the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_batches_deletes_and_a_second_pass_reads_only_what_changed() {
    let server = berth_storage_s3::testing::S3TestServer::start();
    let s3: Arc<dyn ObjectStore> = Arc::new(server.fresh_store().await);
    let metered = MeteredStore::new(s3);
    let store: Arc<dyn ObjectStore> = Arc::new(metered.clone());
    let registry = registry_with(store.clone(), now_gc());
    for i in 0..30 {
        push_image(&registry, "farm/app", &format!("build-{i}"), &[format!("layer {i}").as_bytes()], None).await;
    }
    // 1,200 stray uploads, written as an upload leaves them (the blob and
    // its link), straight into the store: uploading each through the
    // registry would cost moto ten times the requests.
    let farm: berth::oci::RepoName = "farm/app".parse().unwrap();
    let strays: Vec<futures::future::BoxFuture<'_, ()>> = (0..1200)
        .map(|i| {
            let (store, farm) = (store.clone(), farm.clone());
            Box::pin(async move {
                let data = Bytes::from(format!("stray {i}"));
                let d = Digest::sha256(&data);
                store.put(&berth::registry::keys::blob(&d), data, berth_storage::PutMode::Overwrite).await.unwrap();
                let link = berth::registry::keys::layer_link(&farm, &d);
                store.put(&link, Bytes::new(), berth_storage::PutMode::Overwrite).await.unwrap();
            }) as futures::future::BoxFuture<'_, ()>
        })
        .collect();
    futures::stream::iter(strays).buffer_unordered(16).collect::<Vec<()>>().await;
    let m = metered.meters().clone();
    let (batches, singles) = (Meters::get(&m.batch_deletes), Meters::get(&m.deletes));
    let first = gc(&registry).await;
    assert_eq!(first.deleted.blobs, 1200);
    assert_eq!(first.scanned.manifests_read, 30);
    assert_eq!(first.scanned.tags_read, 30);
    // 1,200 links, then 1,200 blobs, each in two requests of at most
    // 1,000 keys, then the 2,400 marks in three; one single delete (the
    // pass's active record).
    assert_eq!(Meters::get(&m.batch_deletes) - batches, 7);
    assert_eq!(Meters::get(&m.deletes) - singles, 1);

    // A fresh process (another replica) reads the derived index, not the
    // manifests again.
    for i in 30..33 {
        push_image(&registry, "farm/app", &format!("build-{i}"), &[format!("layer {i}").as_bytes()], None).await;
    }
    let replica = registry_with(store.clone(), now_gc());
    let second = gc(&replica).await;
    assert_eq!(second.deleted.objects(), 0, "{:?}", second.items);
    assert_eq!(second.scanned.manifests_read, 3, "only the new manifests are read");
    assert_eq!(second.scanned.tags_read, 3, "only the new tags are read");
    for i in 0..33 {
        pulls(&replica, "farm/app", &format!("build-{i}")).await.unwrap();
    }
}

fn fs_store(dir: &std::path::Path) -> Arc<dyn ObjectStore> {
    Arc::new(
        berth_storage_fs::FsStore::open(dir, berth_storage_fs::FsOptions { fsync: false, direct_io: false }).unwrap(),
    )
}

/// Scrub finds a corrupted blob, a missing one, an orphan and dangling
/// records; `--repair` removes the dangling records and nothing else.
async fn scrub_findings(store: Arc<dyn ObjectStore>) {
    use berth::registry::gc::scrub::ScrubOptions;
    use berth::registry::keys;
    let registry = registry_with(store.clone(), GcOptions::default());
    let good_layer = b"layer that will be corrupted".repeat(40);
    push_image(&registry, "s/a", "v1", &[&good_layer], None).await;
    let lost_layer = b"layer whose bytes get lost".repeat(40);
    push_image(&registry, "s/b", "v1", &[&lost_layer], None).await;
    // An orphan: uploaded, then unlinked by a blob DELETE.
    let stray = upload(&registry, "s/a", b"a stray upload").await;
    registry.blob_delete(&access::<Delete>("s/a"), &stray).await.unwrap();
    // Corrupt: same length, other bytes. Missing: the object is gone.
    let mut evil = good_layer.clone();
    evil[7] ^= 0x55;
    store
        .put(&keys::blob(&Digest::sha256(&good_layer)), Bytes::from(evil), berth_storage::PutMode::Overwrite)
        .await
        .unwrap();
    store.delete(&keys::blob(&Digest::sha256(&lost_layer))).await.unwrap();
    // Dangling: a tag naming a manifest that is not stored.
    let ghost = Digest::sha256(b"no such manifest");
    let repo: berth::oci::RepoName = "s/a".parse().unwrap();
    store
        .put(
            &keys::tag(&repo, &"ghost".parse().unwrap()),
            Bytes::from(ghost.to_string()),
            berth_storage::PutMode::Overwrite,
        )
        .await
        .unwrap();

    let options = ScrubOptions { max_bytes_per_sec: None, ..ScrubOptions::default() };
    let report = registry.scrub(&options, &berth::registry::gc::no_progress).await.unwrap();
    let targets = |list: &[berth::registry::gc::scrub::Finding]| -> BTreeSet<String> {
        list.iter().map(|f| f.target.clone()).collect()
    };
    assert_eq!(targets(&report.corrupt), BTreeSet::from([Digest::sha256(&good_layer).to_string()]), "{report:?}");
    assert_eq!(targets(&report.missing), BTreeSet::from([Digest::sha256(&lost_layer).to_string()]), "{report:?}");
    assert_eq!(targets(&report.orphaned), BTreeSet::from([Digest::sha256(b"a stray upload").to_string()]));
    assert_eq!(
        targets(&report.dangling),
        BTreeSet::from(["ghost".to_owned(), Digest::sha256(&lost_layer).to_string()]),
        "{report:?}"
    );
    assert!(report.repaired.is_none());
    assert_eq!(report.blobs_hashed, 3, "the config both images share, the corrupt layer, the orphan");
    assert!(report.bytes_hashed > 0);

    let before = all_keys(store.as_ref()).await;
    let repair = ScrubOptions { repair: true, ..options };
    let report = registry.scrub(&repair, &berth::registry::gc::no_progress).await.unwrap();
    let repaired = report.repaired.expect("a repair pass ran");
    assert_eq!(repaired.deleted.tags, 1);
    assert_eq!(repaired.deleted.links, 1);
    let after = all_keys(store.as_ref()).await;
    let removed: BTreeSet<&String> = before.difference(&after).collect();
    assert_eq!(removed.len(), 2, "{removed:?}");
    assert!(removed.iter().all(|k| k.starts_with("repositories/")), "records only: {removed:?}");
    // Data is never removed: the corrupt blob and the orphan stay.
    assert!(store.exists(&keys::blob(&Digest::sha256(&good_layer))).await.unwrap());
    assert!(store.exists(&keys::blob(&Digest::sha256(b"a stray upload"))).await.unwrap());
    let again = registry.scrub(&options, &berth::registry::gc::no_progress).await.unwrap();
    assert!(again.dangling.is_empty(), "{:?}", again.dangling);
    assert_eq!(again.corrupt.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrub_on_fs() {
    let dir = tempfile::tempdir().unwrap();
    scrub_findings(fs_store(dir.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrub_on_s3() {
    let server = berth_storage_s3::testing::S3TestServer::start();
    scrub_findings(Arc::new(server.fresh_store().await)).await;
}

/// A quota refuses the push that would cross it, accepts a push that
/// reuses the repository's layers, and a re-tag; usage reports it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_and_usage() {
    use berth::registry::gc::usage::Quota;
    let dir = tempfile::tempdir().unwrap();
    let store = fs_store(dir.path());
    let options = RegistryOptions {
        gc: now_gc(),
        quotas: vec![Quota::new("q/**", 10_000), Quota::new("q/big", 1_000_000)],
        ..RegistryOptions::default()
    };
    let registry = Registry::new(store.clone(), Arc::new(berth_state::MemoryState::new()), options);
    let base = vec![b'b'; 6000];
    push_image(&registry, "q/app", "a", &[&base, &[b'1'; 1000]], None).await;
    // Shares the base: about 8,100 bytes in all.
    push_image(&registry, "q/app", "b", &[&base, &[b'2'; 1000]], None).await;
    // A new 3,000-byte layer would take it past 10,000.
    let config = b"{\"c\":1}".to_vec();
    upload(&registry, "q/app", &config).await;
    let big = vec![b'3'; 3000];
    upload(&registry, "q/app", &big).await;
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{MANIFEST}","config":{},"layers":[{},{}]}}"#,
        descriptor("application/vnd.oci.image.config.v1+json", &config),
        descriptor("application/vnd.oci.image.layer.v1.tar", &base),
        descriptor("application/vnd.oci.image.layer.v1.tar", &big)
    );
    let refused = registry
        .manifest_put(&access::<Push>("q/app"), None, &"c".parse().unwrap(), Some(MANIFEST), Bytes::from(manifest))
        .await;
    match refused {
        Err(OciError::QuotaExceeded(msg)) => {
            assert!(msg.contains("q/**") && msg.contains("10000") && msg.contains("q/app"), "{msg}")
        }
        other => panic!("expected a quota refusal, got {other:?}"),
    }
    // Re-tagging an image adds nothing: accepted.
    let a = registry.manifest_get(&access::<Pull>("q/app"), &"a".parse().unwrap()).await.unwrap();
    put(&registry, "q/app", "a-again", MANIFEST, &a.bytes).await;
    // The longest pattern decides: q/big may hold much more.
    push_image(&registry, "q/big", "x", &[&[b'x'; 20_000]], None).await;
    // Unquoted repositories are unaffected.
    push_image(&registry, "free/app", "x", &[&[b'y'; 50_000]], None).await;

    let usage = registry.usage(Some("q/**"), true).await.unwrap();
    let app = usage.repositories.iter().find(|u| u.repository == "q/app").unwrap();
    assert!(app.bytes > 8000 && app.bytes < 8400, "{app:?}");
    assert_eq!(app.unreferenced_bytes, 3000 + config.len() as u64, "{app:?}");
    assert_eq!(app.tags, 3);
    assert!(!usage.repositories.iter().any(|u| u.repository == "free/app"), "filtered by glob");
    // Shared bytes: the same base in two repositories.
    push_image(&registry, "q/other", "x", &[&base], None).await;
    let usage = registry.usage(None, true).await.unwrap();
    let app = usage.repositories.iter().find(|u| u.repository == "q/app").unwrap();
    assert_eq!(app.shared_bytes, 6000, "{app:?}");
    // A pass stores usage for cheap reads.
    gc(&registry).await;
    let stored = registry.usage(Some("q/app"), false).await.unwrap();
    assert!(stored.source.starts_with("pass "), "{}", stored.source);
    assert_eq!(stored.repositories[0].unreferenced_bytes, 0, "the pass removed the refused push's uploads");
    assert_eq!(stored.repositories[0].pushed_since_pass, 0);
    // Between passes, newly linked bytes add up; the next pass reconciles.
    push_image(&registry, "q/app", "d", &[&base, &[b'4'; 500]], None).await;
    let app = registry.usage(Some("q/app"), false).await.unwrap().repositories[0].clone();
    assert!(app.pushed_since_pass >= 500 && app.pushed_since_pass < 600, "{app:?}");
    gc(&registry).await;
    let app = registry.usage(Some("q/app"), false).await.unwrap().repositories[0].clone();
    assert_eq!(app.pushed_since_pass, 0, "{app:?}");
}

/// Retention: 8 builds, keep the 3 most recent; the bytes left are exactly
/// what the kept images need. A pulled build is kept by keep_pulled_within.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_exactly_what_the_rules_say() {
    use berth::registry::gc::TagRetention;
    let dir = tempfile::tempdir().unwrap();
    let store = fs_store(dir.path());
    let base = vec![b'B'; 4096];
    let registry = registry_with(store.clone(), now_gc());
    let mut manifests = Vec::new();
    for i in 0..8 {
        let layer = format!("build {i} ").repeat(100).into_bytes();
        manifests.push(push_image(&registry, "ci/app", &format!("build-{i}"), &[&base, &layer], None).await);
    }
    push_image(&registry, "release/app", "v1", &[&base, b"release"], None).await;
    // build-1 was pulled recently.
    let pulled = Digest::sha256(&manifests[1]);
    let pull_every = RegistryOptions { pull_record_every: Duration::ZERO, ..RegistryOptions::default() };
    let puller = Registry::new(store.clone(), Arc::new(berth_state::MemoryState::new()), pull_every);
    puller.note_pull(&access::<Pull>("ci/app"), &pulled);
    let record = berth::registry::keys::pull_record(&"ci/app".parse().unwrap(), &pulled);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !store.exists(&record).await.unwrap() {
        assert!(std::time::Instant::now() < deadline, "the pull was never recorded");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let rule = |tags: TagRetention| GcOptions { policies: vec![RetentionRule::new("ci/**").tags(tags)], ..now_gc() };
    // Dry run first: lists tags with the rule, changes nothing.
    let keep3 =
        TagRetention { keep_last: Some(3), pulled_within: Some(Duration::from_secs(3600)), ..TagRetention::default() };
    let registry = registry_with(store.clone(), rule(keep3));
    let before = all_keys(store.as_ref()).await;
    let dry = registry.gc_pass(true, &berth::registry::gc::no_progress).await.unwrap().unwrap();
    assert_eq!(all_keys(store.as_ref()).await, before);
    let tags: BTreeSet<String> = dry.items.iter().filter(|d| d.kind == Kind::Tag).map(|d| d.target.clone()).collect();
    assert_eq!(tags, ["build-0", "build-2", "build-3", "build-4"].iter().map(|s| s.to_string()).collect());
    assert!(dry.items.iter().filter(|d| d.kind == Kind::Tag).all(|d| d.reason.starts_with("retention ci/**: ")));

    let report = gc(&registry).await;
    assert_eq!(report.deleted.tags, 4);
    assert_eq!(report.deleted.manifests, 4);
    for t in ["build-1", "build-5", "build-6", "build-7"] {
        pulls(&registry, "ci/app", t).await.unwrap();
    }
    pulls(&registry, "release/app", "v1").await.unwrap();
    for t in ["build-0", "build-4"] {
        assert!(registry.manifest_get(&access::<Pull>("ci/app"), &t.parse().unwrap()).await.is_err());
    }
    // Exactly the kept images' bytes remain: distinct blobs of the kept
    // manifests (and the release image), nothing else.
    let usage = registry.usage(None, true).await.unwrap();
    let mut needed: BTreeSet<(Digest, u64)> = BTreeSet::new();
    for (repo, t) in [
        ("ci/app", "build-1"),
        ("ci/app", "build-5"),
        ("ci/app", "build-6"),
        ("ci/app", "build-7"),
        ("release/app", "v1"),
    ] {
        let m = registry.manifest_get(&access::<Pull>(repo), &t.parse().unwrap()).await.unwrap();
        let parsed = berth::oci::manifest::parse(Some(&m.media_type), &m.bytes).unwrap();
        needed.extend(parsed.required_blobs().map(|d| (d.digest.clone(), d.size)));
    }
    let expected: u64 = needed.iter().map(|(_, s)| s).sum();
    assert_eq!(usage.stored_bytes, expected);
}
