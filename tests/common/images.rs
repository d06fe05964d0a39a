//! Pushing small images for tests: blobs, image manifests with a config
//! (labels, history, platform), indexes and referrers, over the API.

use serde_json::json;

use super::{client, sha256};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// A pushed manifest: its digest, size and media type.
#[derive(Debug, Clone)]
pub struct Pushed {
    pub digest: String,
    pub size: usize,
    pub media_type: &'static str,
}

/// Pushes to one registry with one set of credentials.
pub struct Pusher {
    pub base: String,
    pub auth: Option<String>,
}

impl Pusher {
    pub fn new(base: &str, auth: Option<String>) -> Pusher {
        Pusher { base: base.trim_end_matches('/').to_owned(), auth }
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = client().request(method, format!("{}{path}", self.base));
        match &self.auth {
            Some(a) => r.header("authorization", a),
            None => r,
        }
    }

    /// Push a blob in one request; its digest.
    pub async fn blob(&self, repo: &str, data: &[u8]) -> String {
        let digest = sha256(data);
        let resp = self
            .req(reqwest::Method::POST, &format!("/v2/{repo}/blobs/uploads/?digest={digest}"))
            .header("content-type", "application/octet-stream")
            .body(data.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201, "push blob to {repo}: {}", resp.text().await.unwrap());
        digest
    }

    /// Put a manifest; asserts 201.
    pub async fn manifest(&self, repo: &str, reference: &str, media_type: &'static str, body: Vec<u8>) -> Pushed {
        let digest = sha256(&body);
        let size = body.len();
        let resp = self
            .req(reqwest::Method::PUT, &format!("/v2/{repo}/manifests/{reference}"))
            .header("content-type", media_type)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201, "push manifest {repo}:{reference}: {}", resp.text().await.unwrap());
        Pushed { digest, size, media_type }
    }

    /// An image for `os/arch` with `labels` and the given layers (their
    /// bytes pushed as they are), tagged `reference` (a tag or its digest).
    pub async fn image(
        &self,
        repo: &str,
        reference: Option<&str>,
        platform: (&str, &str),
        labels: &[(&str, &str)],
        layers: &[&[u8]],
    ) -> Pushed {
        let labels: serde_json::Map<String, serde_json::Value> =
            labels.iter().map(|(k, v)| ((*k).to_owned(), json!(v))).collect();
        let diff_ids: Vec<String> = layers.iter().map(|l| sha256(l)).collect();
        let config = json!({
            "created": "2026-11-30T12:00:00Z",
            "author": "berth tests",
            "architecture": platform.1,
            "os": platform.0,
            "config": { "Labels": labels, "Entrypoint": ["/bin/app"], "Cmd": ["--serve"], "ExposedPorts": { "8080/tcp": {} } },
            "rootfs": { "type": "layers", "diff_ids": diff_ids },
            "history": [
                { "created": "2026-11-30T11:00:00Z", "created_by": "ADD base.tar /" },
                { "created": "2026-11-30T12:00:00Z", "created_by": "LABEL something", "empty_layer": true }
            ]
        });
        let config = serde_json::to_vec(&config).unwrap();
        let config_digest = self.blob(repo, &config).await;
        let mut descriptors = Vec::new();
        for l in layers {
            let d = self.blob(repo, l).await;
            descriptors.push(json!({ "mediaType": OCI_LAYER, "digest": d, "size": l.len() }));
        }
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": { "mediaType": OCI_CONFIG, "digest": config_digest, "size": config.len() },
            "layers": descriptors,
            "annotations": { "org.opencontainers.image.source": "https://example.invalid/app" }
        });
        let body = serde_json::to_vec(&manifest).unwrap();
        let digest = sha256(&body);
        self.manifest(repo, reference.unwrap_or(&digest), OCI_MANIFEST, body).await
    }

    /// An index of `children`, each with its platform.
    pub async fn index(&self, repo: &str, tag: &str, children: &[(&Pushed, &str, &str)]) -> Pushed {
        let manifests: Vec<serde_json::Value> = children
            .iter()
            .map(|(p, os, arch)| {
                json!({ "mediaType": p.media_type, "digest": p.digest, "size": p.size,
                        "platform": { "os": os, "architecture": arch } })
            })
            .collect();
        let body =
            serde_json::to_vec(&json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests })).unwrap();
        self.manifest(repo, tag, OCI_INDEX, body).await
    }

    /// An artifact of `artifact_type` referring to `subject` (an SBOM, a
    /// signature), pushed by digest.
    pub async fn referrer(&self, repo: &str, subject: &Pushed, artifact_type: &str, content: &[u8]) -> Pushed {
        let empty = b"{}";
        let empty_digest = self.blob(repo, empty).await;
        let layer = self.blob(repo, content).await;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": artifact_type,
            "config": { "mediaType": "application/vnd.oci.empty.v1+json", "digest": empty_digest, "size": 2 },
            "layers": [{ "mediaType": artifact_type, "digest": layer, "size": content.len() }],
            "subject": { "mediaType": subject.media_type, "digest": subject.digest, "size": subject.size },
            "annotations": { "org.opencontainers.image.created": "2026-11-30T13:00:00Z" }
        });
        let body = serde_json::to_vec(&manifest).unwrap();
        let digest = sha256(&body);
        self.manifest(repo, &digest, OCI_MANIFEST, body).await
    }
}
