//! Uploads on S3 (moto_server, or BERTH_TEST_S3_ENDPOINT) driven through the
//! library, with several `Registry` values sharing one bucket and one shared
//! state, as replicas of a fleet do: chunks of any size on any replica,
//! parts that respect S3's 5 MiB minimum, a staged tail below it, completion
//! without reading a byte back, expiry that aborts the multipart upload, and
//! a janitor that runs on one replica at a time.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use berth::auth::{Gate, Identity};
use berth::oci::{Algorithm, Digest, OciError};
use berth::registry::{Access, Push, Registry, RegistryOptions};
use berth_state::SharedState;
use berth_storage::metered::Meters;
use berth_storage::{MeteredStore, ObjectStore, ObjectStoreExt};
use berth_storage_s3::testing::S3TestServer;
use bytes::Bytes;
use futures::StreamExt;
use sha2::Digest as _;

const MIB: usize = 1024 * 1024;

struct Fleet {
    replicas: Vec<Registry>,
    store: MeteredStore,
    state: Arc<berth_state::MemoryState>,
}

async fn fleet(server: &S3TestServer, replicas: usize, options: RegistryOptions) -> Fleet {
    let s3: Arc<dyn ObjectStore> = Arc::new(server.fresh_store().await);
    let store = MeteredStore::new(s3);
    let state = Arc::new(berth_state::MemoryState::new());
    let replicas =
        (0..replicas).map(|_| Registry::new(Arc::new(store.clone()), state.clone(), options.clone())).collect();
    Fleet { replicas, store, state }
}

fn access(repo: &str) -> Access<Push> {
    Gate::anonymous().authorize(&Identity::anonymous(), &repo.parse().unwrap()).unwrap()
}

fn body(data: Bytes) -> berth::registry::BodyStream {
    // Deliver in 64 KiB pieces, as a socket would.
    let pieces: Vec<_> =
        (0..data.len()).step_by(64 * 1024).map(|i| Ok(data.slice(i..(i + 64 * 1024).min(data.len())))).collect();
    futures::stream::iter(pieces).boxed()
}

fn digest_of(data: &[u8]) -> Digest {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data))).parse().unwrap()
}

fn pattern(len: usize) -> Bytes {
    Bytes::from((0..len).map(|i| (i * 31 % 251) as u8).collect::<Vec<u8>>())
}

async fn staged_len(state: &berth_state::MemoryState, id: &str) -> usize {
    let raw = state.get(&format!("upload:{id}")).await.unwrap().unwrap();
    let session: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    let staged = session["staged"].as_str().unwrap();
    base64::engine::general_purpose::STANDARD.decode(staged).unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_of_any_size_on_any_replica_complete_without_reading_back() {
    let server = S3TestServer::start();
    let fleet = fleet(&server, 3, RegistryOptions::default()).await;
    let acc = access("fleet/chunked");
    let data = pattern(13 * MIB + 12_345);
    // Chunk sizes below, at and above S3's minimum part, in an odd order.
    let cuts = [MIB, 3 * MIB, 7 * MIB, 333, 2 * MIB - 333];
    let status = fleet.replicas[0].upload_start(&acc, Algorithm::Sha256).await.unwrap();
    let mut offset = 0usize;
    for (i, len) in cuts.iter().enumerate() {
        let chunk = data.slice(offset..offset + len);
        let replica = &fleet.replicas[i % 3];
        let st =
            replica.upload_append(&acc, &status.id, Some(offset as u64), Some(*len as u64), body(chunk)).await.unwrap();
        offset += len;
        assert_eq!(st.offset, offset as u64);
        assert!(staged_len(&fleet.state, &status.id).await < 5 * MIB, "shared state holds a tail below one part");
    }
    // A stale offset is refused with the current one, on any replica.
    let err = fleet.replicas[1]
        .upload_append(&acc, &status.id, Some(3), Some(1), body(Bytes::from_static(b"x")))
        .await
        .unwrap_err();
    assert!(matches!(err, OciError::UploadOffsetMismatch { offset: o } if o == offset as u64), "{err:?}");

    let rest = data.slice(offset..);
    let digest = digest_of(&data);
    let reads_before = Meters::get(&fleet.store.meters().gets);
    fleet.replicas[2]
        .upload_complete(&acc, &status.id, &digest, Some(offset as u64), Some(rest.len() as u64), Some(body(rest)))
        .await
        .unwrap();
    assert_eq!(Meters::get(&fleet.store.meters().gets), reads_before, "completion read the blob back");
    assert_eq!(Meters::get(&fleet.store.meters().bytes_read), 0);

    let key = berth::registry::keys::blob(&digest);
    let stored = fleet.store.get_bytes(&key, u64::MAX).await.unwrap();
    assert!(stored == data, "stored blob differs");
    // Nothing is left staged.
    assert!(fleet.store.list_multipart().await.unwrap().is_empty());
    assert!(fleet.store.list("_uploads/", None, 10).await.unwrap().objects.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_and_empty_blobs_and_a_wrong_digest() {
    let server = S3TestServer::start();
    let fleet = fleet(&server, 2, RegistryOptions::default()).await;
    let acc = access("fleet/small");
    for data in [Bytes::new(), Bytes::from_static(b"tiny"), pattern(5 * MIB), pattern(5 * MIB + 1)] {
        let digest = digest_of(&data);
        fleet.replicas[0].upload_monolithic(&acc, &digest, Some(data.len() as u64), body(data.clone())).await.unwrap();
        let key = berth::registry::keys::blob(&digest);
        assert!(fleet.store.get_bytes(&key, u64::MAX).await.unwrap() == data);
    }
    // A digest that does not match leaves nothing visible and nothing staged.
    let data = pattern(6 * MIB);
    let wrong = digest_of(b"something else");
    let err = fleet.replicas[1].upload_monolithic(&acc, &wrong, None, body(data)).await.unwrap_err();
    assert!(matches!(err, OciError::DigestInvalid(_)), "{err:?}");
    assert!(!fleet.store.exists(&berth::registry::keys::blob(&wrong)).await.unwrap());
    assert!(fleet.store.list_multipart().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_aborts_the_multipart_upload_and_the_janitor_runs_alone() {
    let server = S3TestServer::start();
    let options = RegistryOptions { upload_ttl: Duration::from_secs(1), ..RegistryOptions::default() };
    let fleet = fleet(&server, 2, options).await;
    let acc = access("fleet/expiry");
    let status = fleet.replicas[0].upload_start(&acc, Algorithm::Sha256).await.unwrap();
    fleet.replicas[0].upload_append(&acc, &status.id, Some(0), None, body(pattern(6 * MIB))).await.unwrap();
    assert_eq!(fleet.store.list_multipart().await.unwrap().len(), 1);

    // While one replica holds the janitor lock, the other's pass stands aside.
    let held = fleet.state.try_lock("janitor", Duration::from_secs(30)).await.unwrap().unwrap();
    assert_eq!(fleet.replicas[1].janitor_pass(Duration::from_secs(3600)).await.unwrap(), None);
    fleet.state.unlock(&held).await.unwrap();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut expired = 0;
    while expired == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the session never expired");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let report = fleet.replicas[1].janitor_pass(Duration::from_secs(3600)).await.unwrap().unwrap();
        expired += report.expired;
    }
    assert!(fleet.store.list_multipart().await.unwrap().is_empty(), "the multipart upload was not aborted");
    assert!(matches!(fleet.replicas[0].upload_status(&acc, &status.id).await, Err(OciError::BlobUploadUnknown)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mount_links_without_copying() {
    let server = S3TestServer::start();
    let fleet = fleet(&server, 1, RegistryOptions::default()).await;
    let data = pattern(6 * MIB);
    let digest = digest_of(&data);
    let source = access("fleet/source");
    fleet.replicas[0].upload_monolithic(&source, &digest, None, body(data)).await.unwrap();
    let (copies, written) =
        (Meters::get(&fleet.store.meters().copies), Meters::get(&fleet.store.meters().bytes_written));
    let pull = Gate::anonymous().authorize(&Identity::anonymous(), &"fleet/source".parse().unwrap()).unwrap();
    assert!(fleet.replicas[0].mount(&access("fleet/target"), &pull, &digest).await.unwrap());
    assert_eq!(Meters::get(&fleet.store.meters().copies), copies, "mount copied the blob");
    assert!(Meters::get(&fleet.store.meters().bytes_written) - written < 1024, "mount wrote more than links");
}
