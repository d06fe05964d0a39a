//! The registry's writer for mirrored manifests, through the library: a
//! manifest from upstream is stored before its blobs, must hash to the
//! digest upstream named, moves its tag whatever it named before, leaves an
//! unchanged tag untouched, and survives a collection pass.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use berth::auth::{Gate, Identity};
use berth::oci::{Digest, OciError, Reference, Tag};
use berth::registry::{keys, Registry, RegistryOptions};
use berth_storage::ObjectStore;
use bytes::Bytes;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn manifest(layer_seed: u8) -> Bytes {
    let digest = |b: u8| format!("sha256:{}", format!("{b:02x}").repeat(32));
    Bytes::from(
        serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(layer_seed), "size": 100},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest(layer_seed + 1), "size": 12345}],
        })
        .to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrored_manifests_are_stored_before_their_blobs_and_checked_against_upstreams_digest() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(
        berth_storage_fs::FsStore::open(dir.path(), berth_storage_fs::FsOptions { fsync: false, direct_io: true })
            .unwrap(),
    );
    let state = Arc::new(berth_state::MemoryState::new());
    let options = RegistryOptions {
        gc: berth::registry::gc::GcOptions {
            grace: Duration::ZERO,
            untagged_after: Some(Duration::ZERO),
            ..Default::default()
        },
        ..RegistryOptions::default()
    };
    let registry = Registry::new(store.clone(), state, options);
    let gate = Gate::anonymous();
    let repo = "docker.io/library/alpine".parse().unwrap();
    let push = gate.authorize(&Identity::anonymous(), &repo).unwrap();
    let pull = gate.authorize(&Identity::anonymous(), &repo).unwrap();
    let tag: Tag = "3.21".parse().unwrap();

    let first = manifest(1);
    let first_digest = Digest::sha256(&first);
    // A regular push of it is refused: its blobs are not here.
    let refused =
        registry.manifest_put(&push, None, &Reference::Tag(tag.clone()), Some(OCI_MANIFEST), first.clone()).await;
    assert!(matches!(refused, Err(OciError::ManifestBlobUnknown(_))), "{refused:?}");

    // Bytes that are not what upstream named: refused, nothing stored.
    let lie = registry
        .manifest_put_mirrored(&push, &Digest::sha256(b"something else"), Some(&tag), Some(OCI_MANIFEST), first.clone())
        .await;
    assert!(matches!(lie, Err(OciError::DigestInvalid(_))), "{lie:?}");
    assert!(matches!(
        registry.manifest_get(&pull, &Reference::Tag(tag.clone())).await,
        Err(OciError::ManifestUnknown(_))
    ));

    // The mirror's write: stored and tagged, blobs still absent.
    let stored = registry
        .manifest_put_mirrored(&push, &first_digest, Some(&tag), Some(OCI_MANIFEST), first.clone())
        .await
        .unwrap();
    assert_eq!(stored.digest, first_digest);
    let got = registry.manifest_get(&pull, &Reference::Tag(tag.clone())).await.unwrap();
    assert_eq!((got.digest.clone(), got.bytes.clone()), (first_digest.clone(), first.clone()));
    assert_eq!(got.media_type, OCI_MANIFEST);

    // The same again: the tag object is not rewritten (retention reads its time).
    let tag_key = keys::tag(&repo, &tag);
    let before = store.head(&tag_key).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    registry.manifest_put_mirrored(&push, &first_digest, Some(&tag), Some(OCI_MANIFEST), first.clone()).await.unwrap();
    assert_eq!(store.head(&tag_key).await.unwrap().last_modified, before.last_modified);

    // Upstream moved the tag: so does the mirror, without a tag-update right.
    let second = manifest(7);
    let second_digest = Digest::sha256(&second);
    registry
        .manifest_put_mirrored(&push, &second_digest, Some(&tag), Some(OCI_MANIFEST), second.clone())
        .await
        .unwrap();
    let got = registry.manifest_get(&pull, &Reference::Tag(tag.clone())).await.unwrap();
    assert_eq!(got.digest, second_digest);
    // The first stays readable by digest.
    let old = registry.manifest_get(&pull, &Reference::Digest(first_digest.clone())).await.unwrap();
    assert_eq!(old.bytes, first);

    // A collection pass neither fails on the absent blobs nor removes the
    // tagged manifest.
    let report = registry.gc_pass(false, &|_| {}).await.unwrap().expect("the lease");
    assert_eq!(report.deleted.manifests, 1, "the untagged first manifest is collected: {:?}", report.items);
    let got = registry.manifest_get(&pull, &Reference::Tag(tag)).await.unwrap();
    assert_eq!(got.digest, second_digest);
}
