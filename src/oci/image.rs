//! Facts about an image for people (search results, the UI): the platforms
//! of an index, the sizes of an image's layers, and what its config says
//! (labels, creation time, history). Pure parsing of the bytes a registry
//! holds; unknown fields are ignored, malformed ones are reported.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::manifest::{Descriptor, Manifest};
use super::Digest;

/// Largest image config read for its facts.
pub const MAX_CONFIG_BYTES: usize = 4 * 1024 * 1024;

/// The platform of an index entry (`os/architecture[/variant]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(rename = "os.version", default, skip_serializing_if = "Option::is_none")]
    pub os_version: Option<String>,
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// One entry of an index: the child's descriptor and its platform, when
/// the index names one (attestations and other artifacts often do not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    pub platform: Option<Platform>,
}

/// The entries of an index, in its order, from its bytes.
pub fn index_entries(body: &[u8]) -> Result<Vec<IndexEntry>, String> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Entry {
        #[serde(flatten)]
        descriptor: Descriptor,
        #[serde(default)]
        platform: Option<Platform>,
    }
    #[derive(Deserialize)]
    struct Index {
        #[serde(default)]
        manifests: Vec<Entry>,
    }
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| format!("index: {e}"))?;
    if !value.is_object() {
        return Err("index: not a JSON object".into());
    }
    let index: Index = serde_json::from_value(value).map_err(|e| format!("index: {e}"))?;
    Ok(index
        .manifests
        .into_iter()
        .map(|e| IndexEntry {
            digest: e.descriptor.digest,
            media_type: e.descriptor.media_type,
            size: e.descriptor.size,
            platform: e.platform,
        })
        .collect())
}

/// Compressed sizes of an image: the config and each layer as stored, and
/// their total (what a pull of this image transfers at most).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Sizes {
    pub config: u64,
    pub layers: Vec<u64>,
    pub total: u64,
}

/// The sizes the manifest declares (nothing is read from storage).
pub fn sizes(manifest: &Manifest) -> Sizes {
    let config = manifest.config.as_ref().map_or(0, |c| c.size);
    let layers: Vec<u64> = manifest.layers.iter().map(|l| l.size).collect();
    let total = layers.iter().fold(config, |sum, s| sum.saturating_add(*s));
    Sizes { config, layers, total }
}

/// One step of an image's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryStep {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// The step made no layer (ENV, LABEL, CMD...).
    #[serde(default)]
    pub empty_layer: bool,
}

/// What an image config says about the image.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ConfigFacts {
    pub created: Option<String>,
    pub author: Option<String>,
    pub os: Option<String>,
    pub architecture: Option<String>,
    pub variant: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub exposed_ports: Vec<String>,
    pub history: Vec<HistoryStep>,
}

/// Read the facts of an image config (OCI or Docker; both keep them in
/// the same fields). Absent fields are empty; a config that is not a JSON
/// object, or too large, is an error.
pub fn config_facts(body: &[u8]) -> Result<ConfigFacts, String> {
    if body.len() > MAX_CONFIG_BYTES {
        return Err(format!("image config over {MAX_CONFIG_BYTES} bytes"));
    }
    #[derive(Deserialize, Default)]
    #[serde(rename_all = "PascalCase", default)]
    struct Runtime {
        labels: Option<BTreeMap<String, String>>,
        entrypoint: Option<Vec<String>>,
        cmd: Option<Vec<String>>,
        exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    }
    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct Raw {
        created: Option<String>,
        author: Option<String>,
        os: Option<String>,
        architecture: Option<String>,
        variant: Option<String>,
        config: Option<Runtime>,
        history: Option<Vec<HistoryStep>>,
    }
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| format!("image config: {e}"))?;
    if !value.is_object() {
        return Err("image config: not a JSON object".into());
    }
    let raw: Raw = serde_json::from_value(value).map_err(|e| format!("image config: {e}"))?;
    let runtime = raw.config.unwrap_or_default();
    Ok(ConfigFacts {
        created: raw.created,
        author: raw.author,
        os: raw.os,
        architecture: raw.architecture,
        variant: raw.variant,
        labels: runtime.labels.unwrap_or_default(),
        entrypoint: runtime.entrypoint.unwrap_or_default(),
        cmd: runtime.cmd.unwrap_or_default(),
        exposed_ports: runtime.exposed_ports.map(|p| p.into_keys().collect()).unwrap_or_default(),
        history: raw.history.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
    const D3: &str = "sha256:3333333333333333333333333333333333333333333333333333333333333333";

    #[test]
    fn index_entries_keep_order_and_platforms() {
        let body = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": D1, "size": 10,
                 "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}},
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": D2, "size": 20,
                 "platform": {"os": "windows", "architecture": "amd64", "os.version": "10.0.20348.2227"}},
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": D3, "size": 30,
                 "annotations": {"vnd.docker.reference.type": "attestation-manifest"}},
            ],
        })
        .to_string();
        let entries = index_entries(body.as_bytes()).unwrap();
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0].platform.as_ref().unwrap().to_string(), "linux/arm/v7");
        assert_eq!(entries[1].platform.as_ref().unwrap().os_version.as_deref(), Some("10.0.20348.2227"));
        assert_eq!(entries[1].platform.as_ref().unwrap().to_string(), "windows/amd64");
        assert_eq!(entries[2].platform, None);
        assert_eq!(entries[2].size, 30);
        assert_eq!(entries[2].digest.to_string(), D3);
        assert!(index_entries(b"[]").is_err());
        assert!(index_entries(br#"{"manifests":[{"digest":"nope"}]}"#).is_err());
        assert_eq!(index_entries(b"{}").unwrap(), vec![]);
    }

    #[test]
    fn sizes_add_up_and_do_not_overflow() {
        let body = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": D1, "size": 100},
            "layers": [
                {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": D2, "size": 1000},
                {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": D3, "size": 20},
            ],
        })
        .to_string();
        let m = super::super::manifest::parse(None, body.as_bytes()).unwrap();
        assert_eq!(sizes(&m), Sizes { config: 100, layers: vec![1000, 20], total: 1120 });
        let mut huge = m.clone();
        huge.layers[0].size = u64::MAX;
        assert_eq!(sizes(&huge).total, u64::MAX);
    }

    #[test]
    fn config_facts_read_labels_history_and_the_runtime() {
        let body = serde_json::json!({
            "created": "2026-12-01T10:00:00Z",
            "author": "builder",
            "architecture": "arm64",
            "variant": "v8",
            "os": "linux",
            "config": {
                "Labels": {"org.opencontainers.image.source": "https://example.test/app", "x": "<script>alert(1)</script>"},
                "Entrypoint": ["/app/run.sh"],
                "Cmd": null,
                "ExposedPorts": {"8080/tcp": {}, "53/udp": {}},
                "Env": ["A=1"],
            },
            "rootfs": {"type": "layers", "diff_ids": []},
            "history": [
                {"created": "2026-12-01T09:00:00Z", "created_by": "ADD rootfs.tar /"},
                {"created_by": "LABEL x=1", "empty_layer": true, "comment": "buildkit"},
            ],
        })
        .to_string();
        let f = config_facts(body.as_bytes()).unwrap();
        assert_eq!(f.created.as_deref(), Some("2026-12-01T10:00:00Z"));
        assert_eq!(f.author.as_deref(), Some("builder"));
        assert_eq!(
            (f.os.as_deref(), f.architecture.as_deref(), f.variant.as_deref()),
            (Some("linux"), Some("arm64"), Some("v8"))
        );
        assert_eq!(f.labels["x"], "<script>alert(1)</script>", "kept verbatim; escaping is the renderer's job");
        assert_eq!(f.entrypoint, ["/app/run.sh"]);
        assert!(f.cmd.is_empty());
        assert_eq!(f.exposed_ports, ["53/udp", "8080/tcp"]);
        assert_eq!(f.history.len(), 2);
        assert!(f.history[1].empty_layer);
        assert_eq!(f.history[1].comment.as_deref(), Some("buildkit"));
        // A bare config (scratch, artifacts) has no facts, and that is fine.
        assert_eq!(config_facts(b"{}").unwrap(), ConfigFacts::default());
        assert!(config_facts(b"not json").is_err());
        assert!(config_facts(b"[1,2]").is_err());
        assert!(config_facts(br#"{"config":{"Labels":{"a":1}}}"#).is_err(), "a label must be a string");
        assert!(config_facts(&vec![b' '; MAX_CONFIG_BYTES + 1]).is_err());
    }
}
