//! Garbage collection against concurrent writers, deterministically: the
//! collector and a writer (manifest PUT, upload completion, mount) pause at
//! named points (`registry::hooks`) and a driver lets them run one segment
//! at a time, in every order of their segments. Each order must end with
//! the write's blobs kept, or the write refused with the error that makes a
//! client upload again; never a success with something missing. Then: a
//! Redis restarted empty in the middle of a pass, and a pass that dies
//! mid-way.

#![allow(clippy::unwrap_used)]

mod common;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use berth::auth::{Gate, Identity};
use berth::oci::{Digest, OciError, Reference};
use berth::registry::gc::{GcOptions, GcReport};
use berth::registry::hooks::{Hook, Point};
use berth::registry::{Access, Pull, Push, Registry, RegistryOptions};
use berth_state::SharedState;
use berth_storage::{ObjectStore, ObjectStoreExt};
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Actor {
    Writer,
    Gc,
}

struct Parked {
    actor: Actor,
    go: oneshot::Sender<()>,
}

fn hook_for(actor: Actor, tx: mpsc::UnboundedSender<Parked>) -> Hook {
    Hook(Arc::new(move |_point: Point| {
        let tx = tx.clone();
        Box::pin(async move {
            let (go, wait) = oneshot::channel();
            if tx.send(Parked { actor, go }).is_ok() {
                let _ = wait.await;
            }
        })
    }))
}

enum Run<T> {
    NotStarted(std::pin::Pin<Box<dyn Future<Output = T> + Send>>),
    Running(tokio::task::JoinHandle<T>, Option<oneshot::Sender<()>>),
    Done(T),
}

/// Run `writer` and `gc` one segment at a time in `order`: a step lets
/// that actor go on from where it paused to its next pause point (or its
/// end). Only one actor runs at any moment.
async fn interleave<W, G>(
    order: &[Actor],
    rx: &mut mpsc::UnboundedReceiver<Parked>,
    writer: W,
    gc: G,
) -> (W::Output, G::Output)
where
    W: Future + Send + 'static,
    W::Output: Send + 'static,
    G: Future + Send + 'static,
    G::Output: Send + 'static,
{
    let mut w: Run<W::Output> = Run::NotStarted(Box::pin(writer));
    let mut g: Run<G::Output> = Run::NotStarted(Box::pin(gc));
    let steps = order.iter().copied().chain(std::iter::repeat([Actor::Writer, Actor::Gc]).flatten().take(64));
    for actor in steps {
        match actor {
            Actor::Writer => step(Actor::Writer, &mut w, rx).await,
            Actor::Gc => step(Actor::Gc, &mut g, rx).await,
        }
        if matches!((&w, &g), (Run::Done(_), Run::Done(_))) {
            break;
        }
    }
    match (w, g) {
        (Run::Done(a), Run::Done(b)) => (a, b),
        _ => panic!("an actor never finished"),
    }
}

async fn step<T: Send + 'static>(actor: Actor, run: &mut Run<T>, rx: &mut mpsc::UnboundedReceiver<Parked>) {
    let current = std::mem::replace(run, Run::NotStarted(Box::pin(futures::future::pending())));
    let mut handle = match current {
        Run::Done(v) => {
            *run = Run::Done(v);
            return;
        }
        Run::NotStarted(fut) => tokio::spawn(fut),
        Run::Running(handle, go) => {
            if let Some(go) = go {
                let _ = go.send(());
            }
            handle
        }
    };
    let deadline = tokio::time::sleep(Duration::from_secs(60));
    tokio::pin!(deadline);
    tokio::select! {
        parked = rx.recv() => match parked {
            Some(parked) => {
                assert_eq!(parked.actor, actor, "only the released actor runs");
                *run = Run::Running(handle, Some(parked.go));
            }
            // The last hook went away with the finishing actor.
            None => *run = Run::Done(handle.await.expect("actor panicked")),
        },
        done = &mut handle => *run = Run::Done(done.expect("actor panicked")),
        () = &mut deadline => panic!("{actor:?} neither paused nor finished within 60 s"),
    }
}

/// Every sequence of `w` writer steps and `g` collector steps.
fn orders(w: usize, g: usize) -> Vec<Vec<Actor>> {
    if w == 0 {
        return vec![vec![Actor::Gc; g]];
    }
    if g == 0 {
        return vec![vec![Actor::Writer; w]];
    }
    let mut out = Vec::new();
    for mut rest in orders(w - 1, g) {
        rest.insert(0, Actor::Writer);
        out.push(rest);
    }
    for mut rest in orders(w, g - 1) {
        rest.insert(0, Actor::Gc);
        out.push(rest);
    }
    out
}

fn options() -> RegistryOptions {
    RegistryOptions { gc: GcOptions { grace: Duration::ZERO, ..GcOptions::default() }, ..RegistryOptions::default() }
}

fn fs_store(root: &std::path::Path) -> Arc<dyn ObjectStore> {
    Arc::new(
        berth_storage_fs::FsStore::open(root, berth_storage_fs::FsOptions { fsync: false, direct_io: false }).unwrap(),
    )
}

fn push(repo: &str) -> Access<Push> {
    Gate::anonymous().authorize(&Identity::anonymous(), &repo.parse().unwrap()).unwrap()
}

fn pull(repo: &str) -> Access<Pull> {
    Gate::anonymous().authorize(&Identity::anonymous(), &repo.parse().unwrap()).unwrap()
}

async fn upload(registry: &Registry, repo: &str, data: &[u8]) -> Result<Digest, OciError> {
    let digest = Digest::sha256(data);
    let body = futures::stream::iter(vec![Ok(Bytes::copy_from_slice(data))]).boxed();
    registry.upload_monolithic(&push(repo), &digest, Some(data.len() as u64), body).await
}

struct Image {
    config: Vec<u8>,
    layer: Vec<u8>,
    manifest: Vec<u8>,
    digest: Digest,
}

fn image(seed: &str) -> Image {
    let config = format!(r#"{{"architecture":"amd64","os":"linux","seed":"{seed}"}}"#).into_bytes();
    let layer = format!("layer bytes of {seed}").repeat(50).into_bytes();
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{}","size":{}}}]}}"#,
        Digest::sha256(&config),
        config.len(),
        Digest::sha256(&layer),
        layer.len()
    )
    .into_bytes();
    let digest = Digest::sha256(&manifest);
    Image { config, layer, manifest, digest }
}

async fn put_manifest(registry: &Registry, repo: &str, tag: &str, img: &Image) -> Result<Digest, OciError> {
    let reference: Reference = tag.parse().unwrap();
    registry
        .manifest_put(&push(repo), None, &reference, Some(MANIFEST), Bytes::copy_from_slice(&img.manifest))
        .await
        .map(|p| p.digest)
}

async fn read_blob(registry: &Registry, repo: &str, digest: &Digest) -> Result<Vec<u8>, OciError> {
    let got = registry.blob_get(&pull(repo), digest, None).await?;
    let mut body = got.body;
    let mut out = Vec::new();
    while let Some(chunk) = body.next().await {
        out.extend_from_slice(&chunk.map_err(OciError::from)?);
    }
    Ok(out)
}

/// The image pulls whole through `repo:tag`, bytes verified.
async fn assert_pulls(registry: &Registry, repo: &str, tag: &str, img: &Image, why: &str) {
    let m = registry.manifest_get(&pull(repo), &tag.parse().unwrap()).await.unwrap_or_else(|e| panic!("{why}: {e}"));
    assert_eq!(m.digest, img.digest, "{why}");
    for blob in [&img.config, &img.layer] {
        let got = read_blob(registry, repo, &Digest::sha256(blob)).await.unwrap_or_else(|e| panic!("{why}: {e}"));
        assert_eq!(Digest::sha256(&got), Digest::sha256(blob), "{why}");
    }
}

async fn gc_once(registry: &Registry) -> GcReport {
    registry.gc_pass(false, &berth::registry::gc::no_progress).await.unwrap().expect("lease free")
}

#[derive(Debug, Default)]
struct Tally {
    kept: usize,
    refused: usize,
    refused_after_deletion: usize,
}

/// Manifest PUT against a pass collecting its (so far unreferenced)
/// blobs, in the 126 orders of their segments, on one store.
/// `every`: run every n-th order only (the filesystem run takes all).
async fn manifest_put_orders(
    store_for: &(dyn Fn() -> (Arc<dyn ObjectStore>, Box<dyn std::any::Any>) + Sync),
    every: usize,
) -> Tally {
    let mut tally = Tally::default();
    let all = orders(4, 5);
    assert_eq!(all.len(), 126);
    for (n, order) in all.iter().enumerate().filter(|(n, _)| n % every == 0) {
        let (store, _guard) = store_for();
        let base = Registry::new(store, Arc::new(berth_state::MemoryState::new()), options());
        let img = image(&format!("put-{n}"));
        // The blobs were uploaded but nothing references them yet: the
        // collector's candidates.
        upload(&base, "app", &img.config).await.unwrap();
        upload(&base, "app", &img.layer).await.unwrap();

        let (tx, mut rx) = mpsc::unbounded_channel();
        let writer = base.clone().with_hook(hook_for(Actor::Writer, tx.clone()));
        let collector = base.clone().with_hook(hook_for(Actor::Gc, tx));
        let img = Arc::new(img);
        let w = {
            let img = img.clone();
            async move { put_manifest(&writer, "app", "v1", &img).await }
        };
        let g = async move { collector.gc_pass(false, &berth::registry::gc::no_progress).await };
        let (put, report) = interleave(order, &mut rx, w, g).await;
        let report = report.unwrap().expect("lease free");
        let why = format!("order {order:?}, put {put:?}, deleted {:?}", report.deleted);
        match put {
            Ok(d) => {
                assert_eq!(d, img.digest);
                tally.kept += 1;
                assert_pulls(&base, "app", "v1", &img, &why).await;
                // The image is tagged now: another pass keeps all of it.
                gc_once(&base).await;
                assert_pulls(&base, "app", "v1", &img, &why).await;
            }
            Err(OciError::ManifestBlobUnknown(_)) => {
                tally.refused += 1;
                if report.deleted.blobs > 0 {
                    tally.refused_after_deletion += 1;
                }
                // The client uploads again and pushes again.
                upload(&base, "app", &img.config).await.unwrap();
                upload(&base, "app", &img.layer).await.unwrap();
                put_manifest(&base, "app", "v1", &img).await.unwrap_or_else(|e| panic!("{why}: retry: {e}"));
                assert_pulls(&base, "app", "v1", &img, &why).await;
            }
            Err(e) => panic!("{why}: unexpected error {e:?}"),
        }
    }
    tally
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_put_racing_a_pass_in_every_order_on_fs() {
    let store_for = || {
        let dir = tempfile::tempdir().unwrap();
        let store = fs_store(dir.path());
        (store, Box::new(dir) as Box<dyn std::any::Any>)
    };
    let tally = manifest_put_orders(&store_for, 1).await;
    // Both outcomes happen, and some refusals came after the blobs were
    // really deleted: the orders reach the race, not around it.
    assert!(tally.kept > 0 && tally.refused > 0 && tally.refused_after_deletion > 0, "{tally:?}");
    assert_eq!(tally.kept + tally.refused, 126);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_put_racing_a_pass_in_every_order_on_s3() {
    let server = berth_storage_s3::testing::S3TestServer::start();
    let rt = tokio::runtime::Handle::current();
    let store_for = || {
        let store = tokio::task::block_in_place(|| rt.block_on(server.fresh_store()));
        (Arc::new(store) as Arc<dyn ObjectStore>, Box::new(()) as Box<dyn std::any::Any>)
    };
    // A third of the orders (every third one) on S3, where each costs a bucket.
    let tally = manifest_put_orders(&store_for, 3).await;
    assert!(tally.kept > 0 && tally.refused > 0 && tally.refused_after_deletion > 0, "{tally:?}");
}

/// Age an object of the filesystem store (its file is `<root>/<key>@`).
fn age(root: &std::path::Path, key: &str, by: Duration) {
    let file = std::fs::OpenOptions::new().write(true).open(root.join(format!("{key}@"))).unwrap();
    file.set_modified(std::time::SystemTime::now() - by).unwrap();
}

/// Upload completion and mount of a digest the pass is collecting from
/// another repository, in every order. The source's blob and link are two
/// hours old and the grace period one hour, so only they are candidates:
/// whatever the writer stores is young, and a success must leave the blob
/// readable after the pass, whenever the pass ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_completion_and_mount_racing_a_pass_in_every_order() {
    let mut opts = options();
    opts.gc.grace = Duration::from_secs(3600);
    for mount in [false, true] {
        let mut tally = Tally::default();
        let all = orders(2, 5);
        assert_eq!(all.len(), 21);
        for (n, order) in all.iter().enumerate() {
            let dir = tempfile::tempdir().unwrap();
            let base = Registry::new(fs_store(dir.path()), Arc::new(berth_state::MemoryState::new()), opts.clone());
            let data = format!("shared layer {n} {mount}").repeat(100).into_bytes();
            let digest = upload(&base, "src", &data).await.unwrap();
            let src: berth::oci::RepoName = "src".parse().unwrap();
            for key in [berth::registry::keys::blob(&digest), berth::registry::keys::layer_link(&src, &digest)] {
                age(dir.path(), &key, Duration::from_secs(7200));
            }

            let (tx, mut rx) = mpsc::unbounded_channel();
            let writer = base.clone().with_hook(hook_for(Actor::Writer, tx.clone()));
            let collector = base.clone().with_hook(hook_for(Actor::Gc, tx));
            let w = {
                let data = data.clone();
                let digest = digest.clone();
                async move {
                    if mount {
                        writer.mount(&push("dst"), &pull("src"), &digest).await.map(|mounted| mounted.then_some(()))
                    } else {
                        upload(&writer, "dst", &data).await.map(|_| Some(()))
                    }
                }
            };
            let g = async move { collector.gc_pass(false, &berth::registry::gc::no_progress).await };
            let (wrote, report) = interleave(order, &mut rx, w, g).await;
            let report = report.unwrap().expect("lease free");
            let why = format!("mount={mount} order {order:?}, write {wrote:?}, deleted {:?}", report.deleted);
            match wrote {
                Ok(Some(())) => {
                    tally.kept += 1;
                    let got = read_blob(&base, "dst", &digest).await.unwrap_or_else(|e| panic!("{why}: {e}"));
                    assert_eq!(got, data, "{why}");
                }
                // Refused: not mountable (the client uploads instead), or the
                // upload must start over.
                Ok(None) | Err(OciError::BlobUploadUnknown) => {
                    tally.refused += 1;
                    if report.deleted.blobs > 0 {
                        tally.refused_after_deletion += 1;
                    }
                    upload(&base, "dst", &data).await.unwrap_or_else(|e| panic!("{why}: retry: {e}"));
                    assert_eq!(read_blob(&base, "dst", &digest).await.unwrap(), data, "{why}");
                }
                Err(e) => panic!("{why}: unexpected error {e:?}"),
            }
        }
        assert!(tally.kept > 0 && tally.refused > 0 && tally.refused_after_deletion > 0, "mount={mount}: {tally:?}");
    }
}

/// Shared state restarted empty while a pass is between its marks and its
/// deletions: the pass loses its lease and stops; nothing reachable is
/// lost, and the next pass (on another replica) collects as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_mid_pass_loses_nothing_reachable() {
    let mut redis = common::RedisServer::start();
    let port = redis.port;
    let connect = || async {
        let options = berth_state_redis::RedisOptions {
            url: format!("redis://127.0.0.1:{port}/0"),
            key_prefix: "gc-test:".into(),
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(2),
            tls_ca_pem: None,
            username: None,
            password: None,
        };
        Arc::new(berth_state_redis::RedisState::connect(&options).await.unwrap()) as Arc<dyn SharedState>
    };
    let dir = tempfile::tempdir().unwrap();
    let store = fs_store(dir.path());
    let mut opts = options();
    opts.gc.lease_ttl = Duration::from_millis(600);
    let replica_a = Registry::new(store.clone(), connect().await, opts.clone());
    let replica_b = Registry::new(store.clone(), connect().await, opts);

    let kept = image("kept");
    for b in [&kept.config, &kept.layer] {
        upload(&replica_a, "app", b).await.unwrap();
    }
    put_manifest(&replica_a, "app", "v1", &kept).await.unwrap();
    let garbage = image("garbage");
    for b in [&garbage.config, &garbage.layer] {
        upload(&replica_a, "app", b).await.unwrap();
    }

    let (tx, mut rx) = mpsc::unbounded_channel();
    let collector = replica_a.clone().with_hook(hook_for(Actor::Gc, tx));
    let pass = tokio::spawn(async move { collector.gc_pass(false, &berth::registry::gc::no_progress).await });
    // Let the pass scan and mark its candidates, then restart Redis empty.
    let scanned = rx.recv().await.unwrap();
    scanned.go.send(()).unwrap();
    let marked = rx.recv().await.unwrap();
    redis.stop();
    let mut redis = common::RedisServer::start_on(port);
    // While the first pass is stopped, the lease is free again: another
    // replica takes it and collects; the first pass, resumed, finds its
    // lease gone and stops before deleting.
    let report_b = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match replica_b.gc_pass(false, &berth::registry::gc::no_progress).await {
                Ok(Some(r)) => return r,
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })
    .await
    .expect("replica b collects after the restart");
    // Resume the first pass through every remaining point.
    let _ = marked.go.send(());
    tokio::spawn(async move {
        while let Some(p) = rx.recv().await {
            let _ = p.go.send(());
        }
    });
    let _ = tokio::time::timeout(Duration::from_secs(30), pass).await.expect("first pass ends");
    assert_pulls(&replica_a, "app", "v1", &kept, "after the restart").await;
    assert_pulls(&replica_b, "app", "v1", &kept, "after the restart").await;
    assert!(report_b.deleted.blobs >= 2, "{:?}", report_b.deleted);
    for b in [&garbage.config, &garbage.layer] {
        assert!(!store.exists(&berth::registry::keys::blob(&Digest::sha256(b))).await.unwrap());
    }
    assert!(replica_a.gc_status().await.unwrap().0.is_empty(), "no pass left active");
    redis.stop();
}

/// A pass that dies after marking leaves its active record: writers refuse
/// only the keys it marked, until a later pass has seen the record
/// unchanged for `stale_after` and removes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_pass_is_cleared_and_blocks_only_what_it_marked() {
    let dir = tempfile::tempdir().unwrap();
    let store = fs_store(dir.path());
    let mut opts = options();
    opts.gc.stale_after = Duration::from_millis(400);
    opts.gc.lease_ttl = Duration::from_millis(300);
    let registry = Registry::new(store.clone(), Arc::new(berth_state::MemoryState::new()), opts);
    let marked = image("marked");
    for b in [&marked.config, &marked.layer] {
        upload(&registry, "app", b).await.unwrap();
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    let collector = registry.clone().with_hook(hook_for(Actor::Gc, tx));
    let pass = tokio::spawn(async move { collector.gc_pass(false, &berth::registry::gc::no_progress).await });
    let scanned = rx.recv().await.unwrap();
    scanned.go.send(()).unwrap();
    let _marked_point = rx.recv().await.unwrap();
    // The pass dies here (its task is dropped, as in a crash).
    pass.abort();
    let _ = pass.await;
    assert_eq!(registry.gc_status().await.unwrap().0.len(), 1, "the dead pass's record stays");

    // Its marks bind writers...
    let refused = put_manifest(&registry, "app", "v1", &marked).await;
    assert!(matches!(refused, Err(OciError::ManifestBlobUnknown(_))), "{refused:?}");
    // ...but nothing else.
    let other = image("other");
    for b in [&other.config, &other.layer] {
        upload(&registry, "app", b).await.unwrap();
    }
    put_manifest(&registry, "app", "other", &other).await.unwrap();

    // A later pass observes the dead record; once it has stayed unchanged
    // for stale_after, a pass removes it and its marks.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        // (The dead pass's lease in shared state expires first.)
        registry.gc_pass(false, &berth::registry::gc::no_progress).await.unwrap();
        if registry.gc_status().await.unwrap().0.is_empty() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the dead pass was never cleared");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut marks = Vec::new();
    let page = store.list(berth::registry::keys::GC_MARKS_PREFIX, None, 10).await.unwrap();
    marks.extend(page.objects);
    assert!(marks.is_empty(), "marks left: {marks:?}");
    for b in [&marked.config, &marked.layer] {
        upload(&registry, "app", b).await.unwrap();
    }
    put_manifest(&registry, "app", "v1", &marked).await.unwrap();
    assert_pulls(&registry, "app", "v1", &marked, "after the dead pass was cleared").await;
    assert_pulls(&registry, "app", "other", &other, "the other image").await;
}
