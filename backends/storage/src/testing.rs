//! The storage conformance suite. Every backend calls [`run_all`] from its own
//! tests (with a fresh, empty store) so that fs and s3 are held to the same
//! guarantees the trait documents.

#![allow(clippy::unwrap_used)] // a test suite: a failed unwrap is a failed check

use std::sync::Arc;

use bytes::Bytes;

use crate::{collect_body, ObjectStore, ObjectStoreExt, PutMode, StorageError};

/// Run every conformance check against an empty store.
pub async fn run_all(store: Arc<dyn ObjectStore>) {
    put_get_head_delete(store.as_ref()).await;
    ranged_reads(store.as_ref()).await;
    create_mode(store.as_ref()).await;
    listing_sorted_and_paginated(store.as_ref()).await;
    keys_that_are_prefixes_of_others(store.as_ref()).await;
    copy_replaces_atomically(store.as_ref()).await;
    multipart_roundtrip(store.as_ref()).await;
    multipart_abort_leaves_nothing(store.as_ref()).await;
    concurrent_puts_leave_one_whole_value(store.clone()).await;
    batched_deletes(store.as_ref()).await;
}

async fn read_all(store: &dyn ObjectStore, key: &str) -> Bytes {
    store.get_bytes(key, u64::MAX).await.expect("read back")
}

/// Basic object lifecycle.
pub async fn put_get_head_delete(store: &dyn ObjectStore) {
    let key = "conf/basic/object";
    assert!(store.head(key).await.unwrap_err().is_not_found());
    assert!(store.get(key, None).await.unwrap_err().is_not_found());

    let meta = store.put(key, Bytes::from_static(b"hello world"), PutMode::Overwrite).await.unwrap();
    assert_eq!(meta.size, 11);
    assert_eq!(store.head(key).await.unwrap().size, 11);
    assert_eq!(read_all(store, key).await, Bytes::from_static(b"hello world"));

    store.put(key, Bytes::from_static(b"bye"), PutMode::Overwrite).await.unwrap();
    assert_eq!(read_all(store, key).await, Bytes::from_static(b"bye"));

    let empty = "conf/basic/empty";
    store.put(empty, Bytes::new(), PutMode::Overwrite).await.unwrap();
    assert_eq!(store.head(empty).await.unwrap().size, 0);
    assert!(read_all(store, empty).await.is_empty());

    store.delete(key).await.unwrap();
    store.delete(empty).await.unwrap();
    assert!(store.head(key).await.unwrap_err().is_not_found());
    // Deleting again is fine.
    store.delete(key).await.unwrap();
}

/// `get` with a range returns exactly those bytes; bad ranges are errors.
pub async fn ranged_reads(store: &dyn ObjectStore) {
    let key = "conf/range/object";
    let data: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
    store.put(key, Bytes::from(data.clone()), PutMode::Overwrite).await.unwrap();

    for (start, end) in [(0u64, 1u64), (0, 10_000), (5, 9_999), (9_999, 10_000), (4096, 8192)] {
        let got = store.get(key, Some(start..end)).await.unwrap();
        assert_eq!(got.meta.size, 10_000);
        assert_eq!(got.range, start..end);
        let body = collect_body(got.body, u64::MAX).await.unwrap();
        assert_eq!(&body[..], &data[start as usize..end as usize], "range {start}..{end}");
    }
    // Past the end is clipped.
    let got = store.get(key, Some(9_000..20_000)).await.unwrap();
    assert_eq!(got.range, 9_000..10_000);
    assert_eq!(collect_body(got.body, u64::MAX).await.unwrap().len(), 1_000);
    // Starting at or past the end is refused.
    assert!(matches!(
        store.get(key, Some(10_000..10_001)).await.unwrap_err(),
        StorageError::InvalidRange { size: 10_000 }
    ));
    store.delete(key).await.unwrap();
}

/// `PutMode::Create` never replaces.
pub async fn create_mode(store: &dyn ObjectStore) {
    let key = "conf/create/object";
    store.put(key, Bytes::from_static(b"first"), PutMode::Create).await.unwrap();
    let err = store.put(key, Bytes::from_static(b"second"), PutMode::Create).await.unwrap_err();
    assert!(matches!(err, StorageError::AlreadyExists { .. }), "{err:?}");
    assert_eq!(read_all(store, key).await, Bytes::from_static(b"first"));
    store.delete(key).await.unwrap();
}

/// Listing is in byte order, honours the prefix, `start_after` and `limit`.
pub async fn listing_sorted_and_paginated(store: &dyn ObjectStore) {
    let names = ["b", "a", "a-b", "a/b", "a/b/c", "A", "a.b", "z9", "a_b", "0"];
    for n in names {
        store.put(&format!("conf/list/{n}"), Bytes::from(n.as_bytes().to_vec()), PutMode::Overwrite).await.unwrap();
    }
    store.put("conf/listother/x", Bytes::new(), PutMode::Overwrite).await.unwrap();
    let mut expected: Vec<String> = names.iter().map(|n| format!("conf/list/{n}")).collect();
    expected.sort();

    let page = store.list("conf/list/", None, 1000).await.unwrap();
    let keys: Vec<String> = page.objects.iter().map(|o| o.key.clone()).collect();
    assert_eq!(keys, expected);
    assert_eq!(page.next_start_after, None);
    let sized = page.objects.iter().find(|o| o.key == "conf/list/a-b").unwrap();
    assert_eq!(sized.size, 3);

    // Pages of 3 walk the same sequence.
    let mut walked = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store.list("conf/list/", after.as_deref(), 3).await.unwrap();
        assert!(page.objects.len() <= 3);
        walked.extend(page.objects.iter().map(|o| o.key.clone()));
        match page.next_start_after {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(walked, expected);

    // A prefix that ends inside a segment.
    let page = store.list("conf/list/a", None, 1000).await.unwrap();
    let keys: Vec<&str> = page.objects.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(
        keys,
        ["conf/list/a", "conf/list/a-b", "conf/list/a.b", "conf/list/a/b", "conf/list/a/b/c", "conf/list/a_b"]
    );

    // start_after that is not itself a key.
    let page = store.list("conf/list/", Some("conf/list/a/"), 1000).await.unwrap();
    assert_eq!(page.objects[0].key, "conf/list/a/b");

    // Nothing under a missing prefix.
    assert!(store.list("conf/nothing/", None, 10).await.unwrap().objects.is_empty());

    for n in names {
        store.delete(&format!("conf/list/{n}")).await.unwrap();
    }
    store.delete("conf/listother/x").await.unwrap();
    assert!(store.list("conf/list/", None, 10).await.unwrap().objects.is_empty());
}

/// A key may be a prefix (at a `/`) of another key: object stores allow it.
pub async fn keys_that_are_prefixes_of_others(store: &dyn ObjectStore) {
    store.put("conf/nest/a", Bytes::from_static(b"1"), PutMode::Overwrite).await.unwrap();
    store.put("conf/nest/a/b", Bytes::from_static(b"2"), PutMode::Overwrite).await.unwrap();
    assert_eq!(read_all(store, "conf/nest/a").await, Bytes::from_static(b"1"));
    assert_eq!(read_all(store, "conf/nest/a/b").await, Bytes::from_static(b"2"));
    store.delete("conf/nest/a").await.unwrap();
    assert_eq!(read_all(store, "conf/nest/a/b").await, Bytes::from_static(b"2"));
    store.delete("conf/nest/a/b").await.unwrap();
}

/// `copy` duplicates content; the source stays.
pub async fn copy_replaces_atomically(store: &dyn ObjectStore) {
    store.put("conf/copy/src", Bytes::from_static(b"payload"), PutMode::Overwrite).await.unwrap();
    store.put("conf/copy/dst", Bytes::from_static(b"old"), PutMode::Overwrite).await.unwrap();
    let meta = store.copy("conf/copy/src", "conf/copy/dst").await.unwrap();
    assert_eq!(meta.size, 7);
    assert_eq!(read_all(store, "conf/copy/dst").await, Bytes::from_static(b"payload"));
    assert_eq!(read_all(store, "conf/copy/src").await, Bytes::from_static(b"payload"));
    assert!(store.copy("conf/copy/missing", "conf/copy/x").await.unwrap_err().is_not_found());
    store.delete("conf/copy/src").await.unwrap();
    store.delete("conf/copy/dst").await.unwrap();
}

/// Parts written (possibly by different handles to the same store) assemble
/// into exactly their concatenation, visible only after completion.
pub async fn multipart_roundtrip(store: &dyn ObjectStore) {
    let limits = store.part_limits();
    let part_size = limits.min_part_size.max(1) as usize;
    let upload = store.create_multipart().await.unwrap();
    let dest = "conf/multipart/dest";
    let p1 = vec![1u8; part_size];
    let p2 = vec![2u8; part_size];
    let p3 = b"tail".to_vec();
    let mut receipts = Vec::new();
    let mut offset = 0u64;
    for (i, part) in [&p1, &p2, &p3].into_iter().enumerate() {
        let r = store.put_part(&upload, i as u32 + 1, offset, Bytes::from(part.clone())).await.unwrap();
        assert_eq!(r.size, part.len() as u64);
        offset += part.len() as u64;
        receipts.push(r);
    }
    assert!(store.head(dest).await.unwrap_err().is_not_found(), "visible before completion");
    let meta = store.complete_multipart(&upload, &receipts, dest).await.unwrap();
    assert_eq!(meta.size, offset);
    let all = read_all(store, dest).await;
    let mut expected = p1.clone();
    expected.extend_from_slice(&p2);
    expected.extend_from_slice(&p3);
    assert!(all[..] == expected[..], "assembled bytes differ");
    // The upload is gone once completed: aborting it is a harmless no-op.
    store.abort_multipart(&upload).await.unwrap();
    store.delete(dest).await.unwrap();

    // An empty upload (no parts) completes to an empty object.
    let upload = store.create_multipart().await.unwrap();
    let meta = store.complete_multipart(&upload, &[], "conf/multipart/empty").await.unwrap();
    assert_eq!(meta.size, 0);
    store.delete("conf/multipart/empty").await.unwrap();
}

/// Abort removes staged bytes and makes nothing visible.
pub async fn multipart_abort_leaves_nothing(store: &dyn ObjectStore) {
    let upload = store.create_multipart().await.unwrap();
    let listed = store.list_multipart().await.unwrap();
    assert!(listed.iter().any(|(u, _)| u == &upload), "a started upload is listed");
    store.put_part(&upload, 1, 0, Bytes::from_static(b"partial")).await.unwrap();
    store.abort_multipart(&upload).await.unwrap();
    store.abort_multipart(&upload).await.unwrap();
    assert!(store.put_part(&upload, 2, 7, Bytes::from_static(b"x")).await.is_err());
    let listed = store.list_multipart().await.unwrap();
    assert!(!listed.iter().any(|(u, _)| u == &upload), "an aborted upload is not listed");
    assert!(store.list("conf/multipart/", None, 10).await.unwrap().objects.is_empty());
}

/// Many writers of one key: the survivor is one writer's whole value.
pub async fn concurrent_puts_leave_one_whole_value(store: Arc<dyn ObjectStore>) {
    let key = "conf/race/object";
    let writes = (0..16u8).map(|i| {
        let store = store.clone();
        async move {
            let value = Bytes::from(vec![i; 4096 + i as usize]);
            store.put(key, value, PutMode::Overwrite).await.unwrap();
        }
    });
    futures::future::join_all(writes).await;
    let got = read_all(store.as_ref(), key).await;
    let first = got[0];
    assert_eq!(got.len(), 4096 + first as usize);
    assert!(got.iter().all(|b| *b == first), "interleaved writes");
    store.delete(key).await.unwrap();
}

/// `delete_many` removes every key given, ignores missing ones, spans more
/// than one backend batch, and leaves keys it was not given.
pub async fn batched_deletes(store: &dyn ObjectStore) {
    let keys: Vec<String> = (0..crate::DELETE_BATCH + 7).map(|i| format!("conf/batch/{i:05}")).collect();
    for k in keys.iter().step_by(97) {
        store.put(k, Bytes::from_static(b"x"), PutMode::Overwrite).await.unwrap();
    }
    store.put("conf/batch/keep", Bytes::from_static(b"k"), PutMode::Overwrite).await.unwrap();
    store.delete_many(&keys).await.unwrap();
    let left = store.list("conf/batch/", None, 100).await.unwrap();
    let left: Vec<&str> = left.objects.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(left, ["conf/batch/keep"]);
    store.delete_many(&[]).await.unwrap();
    store.delete_many(&["conf/batch/keep".to_owned()]).await.unwrap();
    assert!(!store.exists("conf/batch/keep").await.unwrap());
}
