//! Image details by reference: what a person wants to know before pulling
//! (platforms, layers and sizes, labels and annotations, history, what is
//! attached to it, when it was pushed and pulled), read through the
//! caller's own pull access. Values are kept verbatim; escaping is the
//! renderer's job.

use std::collections::BTreeMap;

use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use crate::oci::image::{self, ConfigFacts};
use crate::oci::manifest::{self, Descriptor, ManifestKind};
use crate::oci::{Digest, OciError, Reference};
use crate::registry::access::{Access, Pull};
use crate::registry::Registry;
use crate::timefmt::rfc3339_time;

/// Children of an index whose sizes are read (the rest are listed without).
pub const MAX_CHILDREN: usize = 64;
/// Referrers listed per image.
pub const MAX_REFERRERS: usize = 200;

/// A blob an image names.
#[derive(Debug, Clone, Serialize)]
pub struct Blob {
    pub digest: String,
    pub media_type: String,
    pub size: u64,
}

/// An image manifest's contents.
#[derive(Debug, Clone, Serialize)]
pub struct ImageFacts {
    pub config: Option<Blob>,
    pub layers: Vec<Blob>,
    /// Config and layers, compressed, as a pull transfers them at most.
    pub total_size: u64,
    #[serde(flatten)]
    pub facts: ConfigFacts,
    /// Why the config could not be read (not stored here, or malformed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_error: Option<String>,
}

/// One entry of an index.
#[derive(Debug, Clone, Serialize)]
pub struct PlatformEntry {
    /// `os/architecture[/variant]`, when the index names one.
    pub platform: Option<String>,
    pub digest: String,
    pub media_type: String,
    pub size: u64,
    /// The child's config and layers (when it is stored here and read).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layers: Option<usize>,
}

/// Referrers of one artifact type.
#[derive(Debug, Clone, Serialize)]
pub struct ReferrerGroup {
    pub artifact_type: String,
    pub manifests: Vec<Descriptor>,
}

/// Everything about one manifest.
#[derive(Debug, Clone, Serialize)]
pub struct ImageDetails {
    pub repository: String,
    pub reference: String,
    pub digest: String,
    pub media_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// The manifest's own size in bytes.
    pub size: u64,
    pub annotations: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// When the manifest was pushed here, and when a pull of it was last
    /// recorded (pulls are recorded at most once per `pull_record_every`).
    pub pushed: Option<String>,
    pub pulled: Option<String>,
    /// An index's entries.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub platforms: Vec<PlatformEntry>,
    /// An image manifest's config and layers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageFacts>,
    pub referrers: Vec<ReferrerGroup>,
    /// More referrers exist than are listed.
    pub referrers_truncated: bool,
}

fn blob(d: &Descriptor) -> Blob {
    Blob { digest: d.digest.to_string(), media_type: d.media_type.clone(), size: d.size }
}

/// Read a blob whole, refusing more than `max` bytes.
async fn read_small_blob(
    registry: &Registry,
    access: &Access<Pull>,
    digest: &Digest,
    max: usize,
) -> Result<Vec<u8>, String> {
    let read = registry.blob_get(access, digest, None).await.map_err(|e| e.to_string())?;
    if read.size > max as u64 {
        return Err(format!("{} bytes, over the {max} read", read.size));
    }
    let chunks: Vec<bytes::Bytes> = read.body.try_collect().await.map_err(|e| e.to_string())?;
    Ok(chunks.concat())
}

async fn image_facts(registry: &Registry, access: &Access<Pull>, parsed: &manifest::Manifest) -> ImageFacts {
    let sizes = image::sizes(parsed);
    let (facts, config_error) = match &parsed.config {
        // Only image configs say anything about the image; an artifact's
        // config is the artifact's business.
        Some(c) if is_image_config(&c.media_type) => {
            match read_small_blob(registry, access, &c.digest, image::MAX_CONFIG_BYTES).await {
                Ok(bytes) => match image::config_facts(&bytes) {
                    Ok(f) => (f, None),
                    Err(e) => (ConfigFacts::default(), Some(e)),
                },
                Err(e) => (ConfigFacts::default(), Some(format!("config {}: {e}", c.digest))),
            }
        }
        _ => (ConfigFacts::default(), None),
    };
    ImageFacts {
        config: parsed.config.as_ref().map(blob),
        layers: parsed.layers.iter().map(blob).collect(),
        total_size: sizes.total,
        facts,
        config_error,
    }
}

fn is_image_config(media_type: &str) -> bool {
    matches!(media_type, "application/vnd.oci.image.config.v1+json" | "application/vnd.docker.container.image.v1+json")
}

/// The details of `reference` in the repository `access` grants.
pub async fn details(
    registry: &Registry,
    access: &Access<Pull>,
    reference: &Reference,
) -> Result<ImageDetails, OciError> {
    let stored = registry.manifest_get(access, reference).await?;
    let parsed = manifest::parse(Some(&stored.media_type), &stored.bytes)
        .map_err(|e| OciError::ManifestInvalid(format!("the stored manifest cannot be read: {e}")))?;
    let digest = stored.digest.clone();
    let (times, referrers) = futures::join!(
        registry.manifest_times(access, &digest),
        registry.referrers(access, &digest, None, None, Some(MAX_REFERRERS)),
    );
    let times = times?;
    let referrers = referrers?;
    let mut groups: BTreeMap<String, Vec<Descriptor>> = BTreeMap::new();
    for d in referrers.manifests {
        let kind = d.artifact_type.clone().unwrap_or_else(|| d.media_type.clone());
        groups.entry(kind).or_default().push(d);
    }
    let mut out = ImageDetails {
        repository: access.repo().to_string(),
        reference: reference.to_string(),
        digest: digest.to_string(),
        media_type: stored.media_type.clone(),
        artifact_type: parsed.artifact_type.clone(),
        size: stored.bytes.len() as u64,
        annotations: parsed.annotations.clone().unwrap_or_default(),
        subject: parsed.subject.as_ref().map(|s| s.digest.to_string()),
        pushed: times.pushed.map(rfc3339_time),
        pulled: times.pulled.map(rfc3339_time),
        platforms: Vec::new(),
        image: None,
        referrers: groups
            .into_iter()
            .map(|(artifact_type, manifests)| ReferrerGroup { artifact_type, manifests })
            .collect(),
        referrers_truncated: referrers.next.is_some(),
    };
    match parsed.kind {
        ManifestKind::OciIndex | ManifestKind::DockerList => {
            let entries = image::index_entries(&stored.bytes).map_err(OciError::ManifestInvalid)?;
            out.platforms = futures::stream::iter(entries.into_iter().enumerate())
                .map(|(i, e)| async move {
                    let mut entry = PlatformEntry {
                        platform: e.platform.as_ref().map(ToString::to_string),
                        digest: e.digest.to_string(),
                        media_type: e.media_type.clone(),
                        size: e.size,
                        total_size: None,
                        layers: None,
                    };
                    // A child not stored here (a mirror that fetched one
                    // platform) or past the bound is listed without sizes.
                    if i < MAX_CHILDREN {
                        if let Ok(child) = registry.manifest_get(access, &Reference::Digest(e.digest.clone())).await {
                            if let Ok(m) = manifest::parse(Some(&child.media_type), &child.bytes) {
                                if matches!(m.kind, ManifestKind::OciManifest | ManifestKind::DockerManifest) {
                                    entry.total_size = Some(image::sizes(&m).total);
                                    entry.layers = Some(m.layers.len());
                                }
                            }
                        }
                    }
                    entry
                })
                .buffered(8)
                .collect()
                .await;
        }
        ManifestKind::OciManifest | ManifestKind::DockerManifest => {
            out.image = Some(image_facts(registry, access, &parsed).await);
        }
    }
    Ok(out)
}
