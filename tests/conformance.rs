//! Conformance with the OCI Distribution Specification v1.1, written from
//! the spec text: the four workflow categories (pull, push, content
//! discovery, content management) and every error code they name, against
//! the real binary over HTTP.

#![allow(clippy::unwrap_used)]

mod common;

use common::{bytes, client, sha256, Berth};
use reqwest::{Client, Response, StatusCode};
use serde_json::{json, Value};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const EMPTY_CONFIG: &str = "application/vnd.oci.empty.v1+json";

struct Reg {
    b: Berth,
    c: Client,
}

async fn error_code(resp: Response) -> String {
    let v: Value = resp.json().await.expect("error body is JSON");
    v["errors"][0]["code"].as_str().expect("errors[0].code").to_owned()
}

fn header(resp: &Response, name: &str) -> Option<String> {
    resp.headers().get(name).map(|v| v.to_str().unwrap().to_owned())
}

impl Reg {
    fn new() -> Reg {
        Reg { b: Berth::start(""), c: client() }
    }

    fn url(&self, path: &str) -> String {
        self.b.url(path)
    }

    /// Monolithic push with a single POST; returns the digest.
    async fn push_blob(&self, repo: &str, data: &[u8]) -> String {
        let d = sha256(data);
        let resp = self
            .c
            .post(self.url(&format!("/v2/{repo}/blobs/uploads/?digest={d}")))
            .body(data.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED, "push blob to {repo}");
        d
    }

    async fn put_manifest(&self, repo: &str, reference: &str, media_type: &str, body: &[u8]) -> Response {
        self.c
            .put(self.url(&format!("/v2/{repo}/manifests/{reference}")))
            .header("content-type", media_type)
            .body(body.to_vec())
            .send()
            .await
            .unwrap()
    }

    /// Push config + layers and an image manifest; returns (manifest bytes, digest).
    async fn push_image(&self, repo: &str, tag: &str, seed: u64) -> (Vec<u8>, String) {
        let config = format!("{{\"seed\":{seed}}}").into_bytes();
        let layer = bytes(1000 + seed as usize, seed);
        let cd = self.push_blob(repo, &config).await;
        let ld = self.push_blob(repo, &layer).await;
        let m = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld, "size": layer.len()}],
        });
        let body = serde_json::to_vec(&m).unwrap();
        let resp = self.put_manifest(repo, tag, OCI_MANIFEST, &body).await;
        assert_eq!(resp.status(), StatusCode::CREATED);
        let d = sha256(&body);
        (body, d)
    }

    async fn start_upload(&self, repo: &str) -> String {
        let resp = self
            .c
            .post(self.url(&format!("/v2/{repo}/blobs/uploads/")))
            .header("content-length", "0")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::ACCEPTED);
        assert!(header(&resp, "docker-upload-uuid").is_some());
        let loc = header(&resp, "location").expect("Location");
        assert!(loc.starts_with(&format!("/v2/{repo}/blobs/uploads/")), "{loc}");
        loc
    }
}

// ---------------------------------------------------------------- pull

#[tokio::test]
async fn base_endpoint() {
    let r = Reg::new();
    let resp = r.c.get(r.url("/v2/")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, "docker-distribution-api-version").as_deref(), Some("registry/2.0"));
    let resp = r.c.get(r.url("/v2")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn pull_blobs_and_manifests() {
    let r = Reg::new();
    let (body, d) = r.push_image("pull/app", "v1", 1).await;
    let m: Value = serde_json::from_slice(&body).unwrap();
    let layer_digest = m["layers"][0]["digest"].as_str().unwrap();
    let layer = bytes(1001, 1);

    // Manifest by tag and by digest.
    for reference in ["v1", d.as_str()] {
        let resp =
            r.c.get(r.url(&format!("/v2/pull/app/manifests/{reference}")))
                .header("accept", OCI_MANIFEST)
                .send()
                .await
                .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(header(&resp, "content-type").as_deref(), Some(OCI_MANIFEST));
        assert_eq!(header(&resp, "docker-content-digest").as_deref(), Some(d.as_str()));
        assert_eq!(resp.bytes().await.unwrap(), body);
        let resp = r.c.head(r.url(&format!("/v2/pull/app/manifests/{reference}"))).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(header(&resp, "content-length"), Some(body.len().to_string()));
        assert_eq!(header(&resp, "docker-content-digest").as_deref(), Some(d.as_str()));
        assert!(resp.bytes().await.unwrap().is_empty());
    }

    // Blob GET and HEAD.
    let resp = r.c.get(r.url(&format!("/v2/pull/app/blobs/{layer_digest}"))).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, "docker-content-digest").as_deref(), Some(layer_digest));
    assert_eq!(resp.bytes().await.unwrap(), layer);
    let resp = r.c.head(r.url(&format!("/v2/pull/app/blobs/{layer_digest}"))).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, "content-length"), Some("1001".into()));

    // Missing content is 404 with the right code.
    let missing = sha256(b"missing");
    let resp = r.c.get(r.url(&format!("/v2/pull/app/blobs/{missing}"))).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(resp).await, "BLOB_UNKNOWN");
    let resp = r.c.head(r.url(&format!("/v2/pull/app/blobs/{missing}"))).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let resp = r.c.get(r.url("/v2/pull/app/manifests/nope")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(resp).await, "MANIFEST_UNKNOWN");
    let resp = r.c.get(r.url(&format!("/v2/pull/app/manifests/{missing}"))).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(resp).await, "MANIFEST_UNKNOWN");
    let resp = r.c.get(r.url("/v2/pull/nothing-here/manifests/v1")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn blob_ranges() {
    let r = Reg::new();
    let data = bytes(10_000, 7);
    let d = r.push_blob("ranges", &data).await;
    let url = r.url(&format!("/v2/ranges/blobs/{d}"));
    let cases: &[(&str, usize, usize)] = &[
        ("bytes=0-99", 0, 100),
        ("bytes=9990-", 9990, 10_000),
        ("bytes=-10", 9990, 10_000),
        ("bytes=100-199", 100, 200),
        ("bytes=9000-20000", 9000, 10_000),
    ];
    for (range, start, end) in cases {
        let resp = r.c.get(&url).header("range", *range).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(header(&resp, "content-range"), Some(format!("bytes {}-{}/10000", start, end - 1)));
        assert_eq!(header(&resp, "content-length"), Some((end - start).to_string()));
        assert_eq!(&resp.bytes().await.unwrap()[..], &data[*start..*end]);
    }
    for bad in ["bytes=10000-", "bytes=20000-30000", "bytes=5-1", "bytes=x-y"] {
        let resp = r.c.get(&url).header("range", bad).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE, "{bad}");
        assert_eq!(header(&resp, "content-range").as_deref(), Some("bytes */10000"));
    }
    // Several ranges: served whole, as RFC 9110 allows.
    let resp = r.c.get(&url).header("range", "bytes=0-1,5-6").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.bytes().await.unwrap().len(), 10_000);
}

#[tokio::test]
async fn blobs_are_visible_only_where_linked() {
    let r = Reg::new();
    let data = b"private layer".to_vec();
    let d = r.push_blob("team-a/app", &data).await;
    // The bytes exist in the registry, but not in this repository.
    let resp = r.c.get(r.url(&format!("/v2/team-b/app/blobs/{d}"))).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(resp).await, "BLOB_UNKNOWN");
    let resp = r.c.head(r.url(&format!("/v2/team-b/app/blobs/{d}"))).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    // A manifest in team-b cannot reference it either.
    let m = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": EMPTY_CONFIG, "digest": d, "size": data.len()}, "layers": []});
    let resp = r.put_manifest("team-b/app", "v1", OCI_MANIFEST, &serde_json::to_vec(&m).unwrap()).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(resp).await, "MANIFEST_BLOB_UNKNOWN");
}

#[tokio::test]
async fn accept_negotiation() {
    let r = Reg::new();
    let (_, d) = r.push_image("neg", "v1", 3).await;
    let url = r.url("/v2/neg/manifests/v1");
    let ok = [None, Some("*/*"), Some(OCI_MANIFEST), Some(&*format!("{DOCKER_MANIFEST}, {OCI_MANIFEST};q=0.9"))];
    for accept in ok {
        let mut req = r.c.get(&url);
        if let Some(a) = accept {
            req = req.header("accept", a);
        }
        assert_eq!(req.send().await.unwrap().status(), StatusCode::OK, "{accept:?}");
    }
    // q=0 refuses a type explicitly.
    let resp = r.c.get(&url).header("accept", format!("{OCI_MANIFEST};q=0, {DOCKER_MANIFEST}")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    // A client that only reads Docker manifests is not handed an OCI one by tag...
    let resp = r.c.get(&url).header("accept", DOCKER_MANIFEST).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(resp).await, "MANIFEST_UNKNOWN");
    // ...but a digest names exact bytes, which are served.
    let resp =
        r.c.get(r.url(&format!("/v2/neg/manifests/{d}"))).header("accept", DOCKER_MANIFEST).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

// ---------------------------------------------------------------- push

#[tokio::test]
async fn push_post_then_put() {
    let r = Reg::new();
    let data = bytes(5000, 11);
    let d = sha256(&data);
    let loc = r.start_upload("push/pp").await;
    let sep = if loc.contains('?') { '&' } else { '?' };
    let resp =
        r.c.put(r.url(&format!("{loc}{sep}digest={d}")))
            .header("content-type", "application/octet-stream")
            .body(data.clone())
            .send()
            .await
            .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(header(&resp, "location"), Some(format!("/v2/push/pp/blobs/{d}")));
    assert_eq!(header(&resp, "docker-content-digest"), Some(d.clone()));
    let got = r.c.get(r.url(&format!("/v2/push/pp/blobs/{d}"))).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(got, data);
    // The session is closed.
    let resp = r.c.get(r.url(&loc)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(resp).await, "BLOB_UPLOAD_UNKNOWN");
}

#[tokio::test]
async fn push_single_post() {
    let r = Reg::new();
    let data = bytes(3 * 1024 * 1024 + 17, 12);
    let d = r.push_blob("push/single", &data).await;
    let resp = r.c.get(r.url(&format!("/v2/push/single/blobs/{d}"))).send().await.unwrap();
    assert_eq!(resp.bytes().await.unwrap(), data);
    // Empty blobs are blobs too.
    let e = r.push_blob("push/single", b"").await;
    let resp = r.c.get(r.url(&format!("/v2/push/single/blobs/{e}"))).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.bytes().await.unwrap().is_empty());
}

#[tokio::test]
async fn push_chunked() {
    let r = Reg::new();
    let data = bytes(2 * 1024 * 1024 + 333, 13);
    let d = sha256(&data);
    let mut loc = r.start_upload("push/chunked").await;
    let chunks: Vec<&[u8]> = data.chunks(700_000).collect();
    let mut offset = 0usize;
    for chunk in &chunks[..chunks.len() - 1] {
        let end = offset + chunk.len() - 1;
        let resp =
            r.c.patch(r.url(&loc))
                .header("content-type", "application/octet-stream")
                .header("content-range", format!("{offset}-{end}"))
                .header("content-length", chunk.len().to_string())
                .body(chunk.to_vec())
                .send()
                .await
                .unwrap();
        assert_eq!(resp.status(), StatusCode::ACCEPTED);
        assert_eq!(header(&resp, "range"), Some(format!("0-{end}")));
        loc = header(&resp, "location").unwrap();
        offset += chunk.len();
        // Status reports the same.
        let resp = r.c.get(r.url(&loc)).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        assert_eq!(header(&resp, "range"), Some(format!("0-{end}")));
        assert!(header(&resp, "docker-upload-uuid").is_some());
    }
    // Out of order: 416 with the current range.
    let resp = r.c.patch(r.url(&loc)).header("content-range", "0-9").body(vec![0u8; 10]).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(header(&resp, "range"), Some(format!("0-{}", offset - 1)));
    assert!(header(&resp, "location").is_some());
    assert_eq!(error_code(resp).await, "BLOB_UPLOAD_INVALID");
    // The last chunk rides on the closing PUT.
    let last = chunks[chunks.len() - 1];
    let resp =
        r.c.put(r.url(&format!("{loc}?digest={d}")))
            .header("content-range", format!("{offset}-{}", offset + last.len() - 1))
            .body(last.to_vec())
            .send()
            .await
            .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let got = r.c.get(r.url(&format!("/v2/push/chunked/blobs/{d}"))).send().await.unwrap().bytes().await.unwrap();
    assert!(got == data, "assembled blob differs");
}

#[tokio::test]
async fn push_streamed_patch_then_empty_put() {
    let r = Reg::new();
    let data = bytes(1_500_000, 14);
    let d = sha256(&data);
    let loc = r.start_upload("push/stream").await;
    // No Content-Range, no Content-Length: a streamed (chunked-encoding) body.
    let stream =
        futures::stream::iter(data.chunks(100_000).map(|c| Ok::<_, std::io::Error>(c.to_vec())).collect::<Vec<_>>());
    let resp = r.c.patch(r.url(&loc)).body(reqwest::Body::wrap_stream(stream)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&resp, "range"), Some(format!("0-{}", data.len() - 1)));
    let loc = header(&resp, "location").unwrap();
    let resp = r.c.put(r.url(&format!("{loc}?digest={d}"))).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let got = r.c.get(r.url(&format!("/v2/push/stream/blobs/{d}"))).send().await.unwrap().bytes().await.unwrap();
    assert!(got == data);
}

#[tokio::test]
async fn upload_status_before_any_byte_and_cancel() {
    let r = Reg::new();
    let loc = r.start_upload("push/cancel").await;
    let resp = r.c.get(r.url(&loc)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&resp, "range").as_deref(), Some("0-0"));
    let resp = r.c.delete(r.url(&loc)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let resp = r.c.get(r.url(&loc)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(resp).await, "BLOB_UPLOAD_UNKNOWN");
    let resp = r.c.patch(r.url(&loc)).body("x").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(resp).await, "BLOB_UPLOAD_UNKNOWN");
    // A session is reachable only through its own repository.
    let loc = r.start_upload("push/owner").await;
    let other = loc.replace("/push/owner/", "/push/other/");
    let resp = r.c.get(r.url(&other)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(resp).await, "BLOB_UPLOAD_UNKNOWN");
}

#[tokio::test]
async fn digest_mismatch_leaves_nothing_visible() {
    let r = Reg::new();
    let data = b"some content".to_vec();
    let wrong = sha256(b"other content");
    // Single POST.
    let resp =
        r.c.post(r.url(&format!("/v2/push/bad/blobs/uploads/?digest={wrong}")))
            .body(data.clone())
            .send()
            .await
            .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(resp).await, "DIGEST_INVALID");
    // POST + PUT.
    let loc = r.start_upload("push/bad").await;
    let resp = r.c.put(r.url(&format!("{loc}?digest={wrong}"))).body(data.clone()).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(resp).await, "DIGEST_INVALID");
    for d in [&wrong, &sha256(&data)] {
        let resp = r.c.head(r.url(&format!("/v2/push/bad/blobs/{d}"))).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    }
    // No blob file landed in the store.
    let blobs = common::files_under(&r.b.data_dir().join("blobs"));
    assert!(blobs.is_empty(), "{blobs:?}");
    // The failed session is gone.
    let resp = r.c.get(r.url(&loc)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    // PUT without a digest parameter.
    let loc = r.start_upload("push/bad").await;
    let resp = r.c.put(r.url(&loc)).body(data.clone()).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(resp).await, "DIGEST_INVALID");
}

#[tokio::test]
async fn sha512_blobs_and_manifests() {
    let r = Reg::new();
    let data = bytes(300_000, 15);
    let d512 = format!("sha512:{}", hex::encode(<sha2::Sha512 as sha2::Digest>::digest(&data)));
    // Monolithic.
    let resp =
        r.c.post(r.url(&format!("/v2/s512/blobs/uploads/?digest={d512}"))).body(data.clone()).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(header(&resp, "docker-content-digest"), Some(d512.clone()));
    let got = r.c.get(r.url(&format!("/v2/s512/blobs/{d512}"))).send().await.unwrap().bytes().await.unwrap();
    assert!(got == data);
    // Chunked: the client names the algorithm when it opens the session, so
    // the bytes are hashed once, as they arrive.
    let data2 = bytes(200_000, 16);
    let d2 = format!("sha512:{}", hex::encode(<sha2::Sha512 as sha2::Digest>::digest(&data2)));
    let resp = r.c.post(r.url("/v2/s512/blobs/uploads/?digest-algorithm=sha512")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let loc = header(&resp, "location").unwrap();
    let resp =
        r.c.patch(r.url(&loc))
            .header("content-range", format!("0-{}", data2.len() - 1))
            .body(data2.clone())
            .send()
            .await
            .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let resp = r.c.put(r.url(&format!("{loc}?digest={d2}"))).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let got = r.c.get(r.url(&format!("/v2/s512/blobs/{d2}"))).send().await.unwrap().bytes().await.unwrap();
    assert!(got == data2);
    // Chunks hashed as sha256 cannot be closed with a sha512 digest: the
    // content would have to be read again. The refusal says how to do it.
    let loc = r.start_upload("s512").await;
    let resp = r.c.patch(r.url(&loc)).body(data2.clone()).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let resp = r.c.put(r.url(&format!("{loc}?digest={d2}"))).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["errors"][0]["code"], "DIGEST_INVALID");
    assert!(v["errors"][0]["message"].as_str().unwrap().contains("digest-algorithm=sha512"));
    // A manifest pushed by a sha512 digest.
    let m = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": EMPTY_CONFIG, "digest": d512, "size": data.len()}, "layers": []});
    let body = serde_json::to_vec(&m).unwrap();
    let md = format!("sha512:{}", hex::encode(<sha2::Sha512 as sha2::Digest>::digest(&body)));
    let resp = r.put_manifest("s512", &md, OCI_MANIFEST, &body).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(header(&resp, "docker-content-digest"), Some(md.clone()));
    let resp = r.c.get(r.url(&format!("/v2/s512/manifests/{md}"))).send().await.unwrap();
    assert_eq!(resp.bytes().await.unwrap(), body);
}

#[tokio::test]
async fn cross_repository_mount() {
    let r = Reg::new();
    let data = bytes(4096, 17);
    let d = r.push_blob("mount/src", &data).await;
    let resp = r.c.post(r.url(&format!("/v2/mount/dst/blobs/uploads/?mount={d}&from=mount/src"))).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(header(&resp, "location"), Some(format!("/v2/mount/dst/blobs/{d}")));
    assert_eq!(header(&resp, "docker-content-digest"), Some(d.clone()));
    let got = r.c.get(r.url(&format!("/v2/mount/dst/blobs/{d}"))).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(got, data);
    // Not in the source: a fresh session instead.
    let unknown = sha256(b"not anywhere");
    let resp =
        r.c.post(r.url(&format!("/v2/mount/dst/blobs/uploads/?mount={unknown}&from=mount/src"))).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    assert!(header(&resp, "location").unwrap().starts_with("/v2/mount/dst/blobs/uploads/"));
    // In the registry but not in the named source: no mount (invariant 4).
    let other = r.push_blob("mount/elsewhere", b"elsewhere").await;
    let resp =
        r.c.post(r.url(&format!("/v2/mount/dst/blobs/uploads/?mount={other}&from=mount/src"))).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    // Without `from`: a session.
    let resp = r.c.post(r.url(&format!("/v2/mount/dst/blobs/uploads/?mount={other}"))).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let resp = r.c.head(r.url(&format!("/v2/mount/dst/blobs/{other}"))).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn push_manifests_of_every_kind() {
    let r = Reg::new();
    let (_, m1) = r.push_image("kinds", "amd64", 21).await;
    let (_, m2) = r.push_image("kinds", "arm64", 22).await;
    let m1_size = r.c.head(r.url(&format!("/v2/kinds/manifests/{m1}"))).send().await.unwrap().content_length().unwrap();
    let m2_size = r.c.head(r.url(&format!("/v2/kinds/manifests/{m2}"))).send().await.unwrap().content_length().unwrap();
    // Hmm: HEAD responses carry Content-Length of the manifest.
    let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": m1, "size": m1_size, "platform": {"architecture": "amd64", "os": "linux"}},
        {"mediaType": OCI_MANIFEST, "digest": m2, "size": m2_size, "platform": {"architecture": "arm64", "os": "linux"}}]});
    let body = serde_json::to_vec(&index).unwrap();
    let resp = r.put_manifest("kinds", "multi", OCI_INDEX, &body).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let resp = r.c.get(r.url("/v2/kinds/manifests/multi")).send().await.unwrap();
    assert_eq!(header(&resp, "content-type").as_deref(), Some(OCI_INDEX));

    // An index whose child is missing.
    let missing = sha256(b"no such manifest");
    let bad = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [{"mediaType": OCI_MANIFEST, "digest": missing, "size": 10}]});
    let resp = r.put_manifest("kinds", "broken", OCI_INDEX, &serde_json::to_vec(&bad).unwrap()).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(resp).await, "MANIFEST_BLOB_UNKNOWN");

    // Docker schema 2 manifest and manifest list.
    let config = b"{\"architecture\":\"amd64\"}".to_vec();
    let layer = bytes(2048, 23);
    let cd = r.push_blob("kinds", &config).await;
    let ld = r.push_blob("kinds", &layer).await;
    let dm = json!({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": cd, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": ld, "size": layer.len()}]});
    let dm_body = serde_json::to_vec(&dm).unwrap();
    let resp = r.put_manifest("kinds", "docker", DOCKER_MANIFEST, &dm_body).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let resp = r.c.get(r.url("/v2/kinds/manifests/docker")).header("accept", DOCKER_MANIFEST).send().await.unwrap();
    assert_eq!(header(&resp, "content-type").as_deref(), Some(DOCKER_MANIFEST));
    let list = json!({"schemaVersion": 2, "mediaType": DOCKER_LIST, "manifests": [
        {"mediaType": DOCKER_MANIFEST, "digest": sha256(&dm_body), "size": dm_body.len(), "platform": {"architecture": "amd64", "os": "linux"}}]});
    let resp = r.put_manifest("kinds", "docker-list", DOCKER_LIST, &serde_json::to_vec(&list).unwrap()).await;
    assert_eq!(resp.status(), StatusCode::CREATED);

    // Schema 1 is refused.
    let s1 = json!({"schemaVersion": 1, "name": "kinds", "tag": "old", "architecture": "amd64", "fsLayers": [], "history": []});
    let resp = r
        .put_manifest(
            "kinds",
            "old",
            "application/vnd.docker.distribution.manifest.v1+prettyjws",
            &serde_json::to_vec(&s1).unwrap(),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(resp).await, "MANIFEST_INVALID");
}

#[tokio::test]
async fn manifest_push_errors() {
    let r = Reg::new();
    let cfg = r.push_blob("merr", b"{}").await;
    let good = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": EMPTY_CONFIG, "digest": cfg, "size": 2}, "layers": []});
    let body = serde_json::to_vec(&good).unwrap();
    // No layers is fine.
    let resp = r.put_manifest("merr", "empty-layers", OCI_MANIFEST, &body).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(header(&resp, "location"), Some(format!("/v2/merr/manifests/{}", sha256(&body))));
    // By digest: must match.
    let resp = r.put_manifest("merr", &sha256(&body), OCI_MANIFEST, &body).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let resp = r.put_manifest("merr", &sha256(b"x"), OCI_MANIFEST, &body).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(resp).await, "DIGEST_INVALID");
    // A layer that was never pushed.
    let missing = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": EMPTY_CONFIG, "digest": cfg, "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha256(b"nope"), "size": 4}]});
    let resp = r.put_manifest("merr", "missing", OCI_MANIFEST, &serde_json::to_vec(&missing).unwrap()).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(resp).await, "MANIFEST_BLOB_UNKNOWN");
    // A descriptor whose size is wrong.
    let wrong_size = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": EMPTY_CONFIG, "digest": cfg, "size": 3}, "layers": []});
    let resp = r.put_manifest("merr", "wrong-size", OCI_MANIFEST, &serde_json::to_vec(&wrong_size).unwrap()).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(resp).await, "MANIFEST_INVALID");
    // Invalid JSON, type mismatch, unknown type.
    for (ct, b) in [
        (OCI_MANIFEST, b"{not json".to_vec()),
        (OCI_INDEX, body.clone()),
        ("application/vnd.example.unknown+json", body.clone()),
        (
            OCI_MANIFEST,
            br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[]}"#.to_vec(),
        ),
    ] {
        let resp = r.put_manifest("merr", "bad", ct, &b).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{ct}");
        assert_eq!(error_code(resp).await, "MANIFEST_INVALID", "{ct}");
    }
    // Nothing from the refused pushes is visible.
    let resp = r.c.get(r.url("/v2/merr/manifests/bad")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    // Over 4 MiB.
    let mut huge = body.clone();
    huge.pop();
    huge.extend_from_slice(format!(",\"annotations\":{{\"pad\":\"{}\"}}}}", "x".repeat(4 * 1024 * 1024)).as_bytes());
    let resp = r.put_manifest("merr", "huge", OCI_MANIFEST, &huge).await;
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_code(resp).await, "MANIFEST_INVALID");
}

// ------------------------------------------------------ content discovery

#[tokio::test]
async fn tags_list_with_pagination() {
    let r = Reg::new();
    let cfg = r.push_blob("tags", b"{}").await;
    let m = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {"mediaType": EMPTY_CONFIG, "digest": cfg, "size": 2}, "layers": []});
    let body = serde_json::to_vec(&m).unwrap();
    let mut tags = vec!["v10", "v2", "latest", "a", "b-1", "b.1", "b_1", "Z"];
    for t in &tags {
        assert_eq!(r.put_manifest("tags", t, OCI_MANIFEST, &body).await.status(), StatusCode::CREATED);
    }
    tags.sort();
    let resp = r.c.get(r.url("/v2/tags/tags/list")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(header(&resp, "link").is_none());
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["name"], "tags");
    assert_eq!(v["tags"], json!(tags));

    // Walk with n=3 following Link headers.
    let mut url = "/v2/tags/tags/list?n=3".to_owned();
    let mut walked: Vec<String> = Vec::new();
    for _ in 0..10 {
        let resp = r.c.get(r.url(&url)).send().await.unwrap();
        let link = header(&resp, "link");
        let v: Value = resp.json().await.unwrap();
        let page: Vec<String> = serde_json::from_value(v["tags"].clone()).unwrap();
        assert!(page.len() <= 3);
        walked.extend(page);
        match link {
            Some(l) => {
                assert!(l.ends_with("; rel=\"next\""), "{l}");
                url = l[l.find('<').unwrap() + 1..l.find('>').unwrap()].to_owned();
            }
            None => break,
        }
    }
    assert_eq!(walked, tags);

    // last without n; n=0; n larger than the list.
    let v: Value = r.c.get(r.url("/v2/tags/tags/list?last=latest")).send().await.unwrap().json().await.unwrap();
    let expected: Vec<&str> = tags.iter().copied().filter(|t| *t > "latest").collect();
    assert_eq!(v["tags"], json!(expected));
    let resp = r.c.get(r.url("/v2/tags/tags/list?n=0")).send().await.unwrap();
    assert!(header(&resp, "link").is_none());
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["tags"], json!([]));
    let resp = r.c.get(r.url("/v2/tags/tags/list?n=100")).send().await.unwrap();
    assert!(header(&resp, "link").is_none());
    let resp = r.c.get(r.url("/v2/tags/tags/list?n=-1")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);

    // Unknown repository.
    let resp = r.c.get(r.url("/v2/no/such/repo/tags/list")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(resp).await, "NAME_UNKNOWN");
}

#[tokio::test]
async fn catalog_with_pagination() {
    let r = Reg::new();
    let mut repos = vec!["b", "a", "a/b", "a-b", "a.b", "c/d/e"];
    for repo in &repos {
        r.push_blob(repo, repo.as_bytes()).await;
    }
    repos.sort();
    let v: Value = r.c.get(r.url("/v2/_catalog")).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["repositories"], json!(repos));
    let resp = r.c.get(r.url("/v2/_catalog?n=2")).send().await.unwrap();
    let link = header(&resp, "link").expect("Link");
    assert_eq!(link, format!("</v2/_catalog?n=2&last={}>; rel=\"next\"", repos[1].replace('/', "%2F")));
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["repositories"], json!(&repos[..2]));
    let v: Value =
        r.c.get(r.url(&format!("/v2/_catalog?n=2&last={}", repos[1]))).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["repositories"], json!(&repos[2..4]));
}

#[tokio::test]
async fn referrers_api() {
    let r = Reg::new();
    let (subject_body, subject) = r.push_image("refs", "v1", 31).await;
    let empty = r.push_blob("refs", b"{}").await;
    let sbom = r.push_blob("refs", b"sbom contents").await;
    let referrer = |artifact_type: &str, annotation: &str| {
        json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": artifact_type,
            "config": {"mediaType": EMPTY_CONFIG, "digest": empty, "size": 2},
            "layers": [{"mediaType": "text/plain", "digest": sbom, "size": 13}],
            "subject": {"mediaType": OCI_MANIFEST, "digest": subject, "size": subject_body.len()},
            "annotations": {"org.example.note": annotation}})
    };
    let sbom_body = serde_json::to_vec(&referrer("application/vnd.example.sbom", "s")).unwrap();
    let sig_body = serde_json::to_vec(&referrer("application/vnd.example.sig", "g")).unwrap();
    for b in [&sbom_body, &sig_body] {
        let resp = r.put_manifest("refs", &sha256(b), OCI_MANIFEST, b).await;
        assert_eq!(resp.status(), StatusCode::CREATED);
        assert_eq!(header(&resp, "oci-subject"), Some(subject.clone()));
    }
    let resp = r.c.get(r.url(&format!("/v2/refs/referrers/{subject}"))).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, "content-type").as_deref(), Some(OCI_INDEX));
    assert!(header(&resp, "oci-filters-applied").is_none());
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["schemaVersion"], 2);
    assert_eq!(v["mediaType"], OCI_INDEX);
    let listed = v["manifests"].as_array().unwrap();
    assert_eq!(listed.len(), 2);
    let sbom_entry = listed.iter().find(|m| m["digest"] == sha256(&sbom_body)).expect("sbom listed");
    assert_eq!(sbom_entry["size"], sbom_body.len());
    assert_eq!(sbom_entry["mediaType"], OCI_MANIFEST);
    assert_eq!(sbom_entry["artifactType"], "application/vnd.example.sbom");
    assert_eq!(sbom_entry["annotations"]["org.example.note"], "s");

    let resp =
        r.c.get(r.url(&format!("/v2/refs/referrers/{subject}?artifactType=application/vnd.example.sig")))
            .send()
            .await
            .unwrap();
    assert_eq!(header(&resp, "oci-filters-applied").as_deref(), Some("artifactType"));
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(v["manifests"][0]["digest"], sha256(&sig_body));

    // An unknown subject has an empty list.
    let resp = r.c.get(r.url(&format!("/v2/refs/referrers/{}", sha256(b"unknown")))).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["manifests"], json!([]));

    // A referrer may arrive before its subject.
    let future_subject = sha256(b"not pushed yet");
    let early = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.example.cfg", "digest": empty, "size": 2}, "layers": [],
        "subject": {"mediaType": OCI_MANIFEST, "digest": future_subject, "size": 10}});
    let resp = r.put_manifest("refs", "early", OCI_MANIFEST, &serde_json::to_vec(&early).unwrap()).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let v: Value =
        r.c.get(r.url(&format!("/v2/refs/referrers/{future_subject}"))).send().await.unwrap().json().await.unwrap();
    // Without artifactType the config's media type is reported.
    assert_eq!(v["manifests"][0]["artifactType"], "application/vnd.example.cfg");

    // Deleting a referrer removes it from the list.
    let resp = r.c.delete(r.url(&format!("/v2/refs/manifests/{}", sha256(&sig_body)))).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let v: Value = r.c.get(r.url(&format!("/v2/refs/referrers/{subject}"))).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["manifests"].as_array().unwrap().len(), 1);
}

// ----------------------------------------------------- content management

#[tokio::test]
async fn delete_tags_manifests_and_blobs() {
    let r = Reg::new();
    let (body, d) = r.push_image("del", "v1", 41).await;
    assert_eq!(r.put_manifest("del", "v1-alias", OCI_MANIFEST, &body).await.status(), StatusCode::CREATED);
    let m: Value = serde_json::from_slice(&body).unwrap();
    let layer = m["layers"][0]["digest"].as_str().unwrap().to_owned();

    // Tag delete untags only.
    let resp = r.c.delete(r.url("/v2/del/manifests/v1")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    assert_eq!(r.c.get(r.url("/v2/del/manifests/v1")).send().await.unwrap().status(), StatusCode::NOT_FOUND);
    assert_eq!(r.c.get(r.url(&format!("/v2/del/manifests/{d}"))).send().await.unwrap().status(), StatusCode::OK);
    let resp = r.c.delete(r.url("/v2/del/manifests/v1")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(resp).await, "MANIFEST_UNKNOWN");

    // Manifest delete by digest removes it and every tag on it.
    let resp = r.c.delete(r.url(&format!("/v2/del/manifests/{d}"))).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    assert_eq!(r.c.get(r.url(&format!("/v2/del/manifests/{d}"))).send().await.unwrap().status(), StatusCode::NOT_FOUND);
    assert_eq!(r.c.get(r.url("/v2/del/manifests/v1-alias")).send().await.unwrap().status(), StatusCode::NOT_FOUND);
    let v: Value = r.c.get(r.url("/v2/del/tags/list")).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["tags"], json!([]));
    let resp = r.c.delete(r.url(&format!("/v2/del/manifests/{d}"))).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);

    // Blob delete.
    let resp = r.c.delete(r.url(&format!("/v2/del/blobs/{layer}"))).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let resp = r.c.get(r.url(&format!("/v2/del/blobs/{layer}"))).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let resp = r.c.delete(r.url(&format!("/v2/del/blobs/{layer}"))).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(resp).await, "BLOB_UNKNOWN");
}

#[tokio::test]
async fn concurrent_patches_to_one_session_are_serialized() {
    let r = Reg::new();
    let loc = r.start_upload("race").await;
    let chunk = bytes(2 * 1024 * 1024, 51);
    let send = || {
        r.c.patch(r.url(&loc))
            .header("content-range", format!("0-{}", chunk.len() - 1))
            .header("content-length", chunk.len().to_string())
            .body(chunk.clone())
            .send()
    };
    let (a, b) = tokio::join!(send(), send());
    let mut statuses = [a.unwrap().status().as_u16(), b.unwrap().status().as_u16()];
    statuses.sort();
    assert_eq!(statuses, [202, 416], "exactly one chunk at offset 0 is accepted");
    let resp = r.c.get(r.url(&loc)).send().await.unwrap();
    assert_eq!(header(&resp, "range"), Some(format!("0-{}", chunk.len() - 1)));
    let resp = r.c.put(r.url(&format!("{loc}?digest={}", sha256(&chunk)))).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn moved_tags_are_served_at_once() {
    let r = Reg::new();
    let (_, first) = r.push_image("move", "latest", 61).await;
    // Read it (and so cache it) a few times.
    for _ in 0..3 {
        let resp = r.c.get(r.url("/v2/move/manifests/latest")).send().await.unwrap();
        assert_eq!(header(&resp, "docker-content-digest"), Some(first.clone()));
    }
    let (_, second) = r.push_image("move", "latest", 62).await;
    assert_ne!(first, second);
    let resp = r.c.get(r.url("/v2/move/manifests/latest")).send().await.unwrap();
    assert_eq!(header(&resp, "docker-content-digest"), Some(second.clone()));
    let resp = r.c.head(r.url("/v2/move/manifests/latest")).send().await.unwrap();
    assert_eq!(header(&resp, "docker-content-digest"), Some(second.clone()));
    // Deleting the tag is seen at once too.
    assert_eq!(r.c.delete(r.url("/v2/move/manifests/latest")).send().await.unwrap().status(), StatusCode::ACCEPTED);
    assert_eq!(r.c.get(r.url("/v2/move/manifests/latest")).send().await.unwrap().status(), StatusCode::NOT_FOUND);
}
