//! Manifest media types and validation of pushed manifest documents: the
//! JSON must parse, its declared media type must agree with the request's
//! Content-Type and with its shape, and every descriptor must be well formed.
//! What the document references is returned so the registry can check that
//! each referenced blob or child manifest exists in the repository.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::digest::Digest;

/// Largest manifest accepted (and stored), in bytes.
pub const MAX_MANIFEST_SIZE: usize = 4 * 1024 * 1024;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_SCHEMA1: &[&str] = &[
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
];

/// The manifest kinds Berth stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ManifestKind {
    OciManifest,
    OciIndex,
    DockerManifest,
    DockerList,
}

impl ManifestKind {
    pub const ALL: [ManifestKind; 4] =
        [ManifestKind::OciManifest, ManifestKind::OciIndex, ManifestKind::DockerManifest, ManifestKind::DockerList];

    pub fn media_type(self) -> &'static str {
        match self {
            ManifestKind::OciManifest => OCI_MANIFEST,
            ManifestKind::OciIndex => OCI_INDEX,
            ManifestKind::DockerManifest => DOCKER_MANIFEST,
            ManifestKind::DockerList => DOCKER_LIST,
        }
    }

    pub fn from_media_type(mt: &str) -> Option<ManifestKind> {
        ManifestKind::ALL.into_iter().find(|k| k.media_type() == mt)
    }

    /// Index-like kinds list child manifests; the others list blobs.
    pub fn is_index(self) -> bool {
        matches!(self, ManifestKind::OciIndex | ManifestKind::DockerList)
    }
}

/// A content descriptor as it appears in manifests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
}

/// The fields of a manifest Berth reads; everything else is kept verbatim
/// in the stored bytes.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: Option<serde_json::Value>,
    media_type: Option<String>,
    artifact_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Descriptor>>,
    subject: Option<Descriptor>,
    annotations: Option<BTreeMap<String, String>>,
}

/// A validated manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    pub kind: ManifestKind,
    pub config: Option<Descriptor>,
    /// Layers of an image manifest.
    pub layers: Vec<Descriptor>,
    /// Children of an index.
    pub manifests: Vec<Descriptor>,
    pub subject: Option<Descriptor>,
    pub artifact_type: Option<String>,
    pub annotations: Option<BTreeMap<String, String>>,
}

impl Manifest {
    /// Blobs this manifest needs in its repository: config and layers, less
    /// non-distributable layers that point elsewhere by URL.
    pub fn required_blobs(&self) -> impl Iterator<Item = &Descriptor> {
        self.config.iter().chain(self.layers.iter().filter(|l| !is_external_layer(l)))
    }

    /// The artifact type a referrers listing reports: `artifactType`, or the
    /// config's media type for image manifests without one.
    pub fn effective_artifact_type(&self) -> Option<&str> {
        self.artifact_type.as_deref().or_else(|| match self.kind {
            ManifestKind::OciManifest => self.config.as_ref().map(|c| c.media_type.as_str()),
            _ => None,
        })
    }
}

fn is_external_layer(d: &Descriptor) -> bool {
    d.urls.as_ref().is_some_and(|u| !u.is_empty())
        && (d.media_type.contains("nondistributable") || d.media_type.contains("foreign"))
}

/// Why a manifest was refused; every case is the spec's `MANIFEST_INVALID`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is larger than {MAX_MANIFEST_SIZE} bytes")]
    TooLarge,
    #[error("Docker schema 1 manifests are not supported; push schema 2 or OCI")]
    Schema1,
    #[error("unsupported manifest media type {0:?}")]
    UnsupportedMediaType(String),
    #[error("manifest is not valid JSON: {0}")]
    Json(String),
    #[error("schemaVersion must be 2")]
    SchemaVersion,
    #[error("mediaType {body:?} in the manifest does not match Content-Type {header:?}")]
    MediaTypeMismatch { header: String, body: String },
    #[error("{0}")]
    Shape(&'static str),
}

/// Media type of a PUT: the Content-Type without parameters, or, when the
/// client sent none, the document's own `mediaType`.
pub fn parse(content_type: Option<&str>, body: &[u8]) -> Result<Manifest, ManifestError> {
    if body.len() > MAX_MANIFEST_SIZE {
        return Err(ManifestError::TooLarge);
    }
    let header = content_type.map(|ct| ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase());
    if let Some(h) = &header {
        if DOCKER_SCHEMA1.contains(&h.as_str()) {
            return Err(ManifestError::Schema1);
        }
    }
    let raw: RawManifest = serde_json::from_slice(body).map_err(|e| ManifestError::Json(e.to_string()))?;
    if raw.schema_version.as_ref().and_then(|v| v.as_u64()) == Some(1) {
        return Err(ManifestError::Schema1);
    }
    if raw.schema_version.as_ref().and_then(|v| v.as_u64()) != Some(2) {
        return Err(ManifestError::SchemaVersion);
    }
    let header = header.filter(|h| !h.is_empty() && h != "application/octet-stream" && h != "application/json");
    let media_type = match (&header, &raw.media_type) {
        (Some(h), Some(b)) if h != b => {
            return Err(ManifestError::MediaTypeMismatch { header: h.clone(), body: b.clone() })
        }
        (Some(h), _) => h.clone(),
        (None, Some(b)) => b.clone(),
        // Without either, infer from the shape, as OCI allows mediaType to be absent.
        (None, None) if raw.manifests.is_some() => OCI_INDEX.to_owned(),
        (None, None) => OCI_MANIFEST.to_owned(),
    };
    if DOCKER_SCHEMA1.contains(&media_type.as_str()) {
        return Err(ManifestError::Schema1);
    }
    let kind =
        ManifestKind::from_media_type(&media_type).ok_or(ManifestError::UnsupportedMediaType(media_type.clone()))?;
    // Docker schema 2 requires mediaType in the body.
    if matches!(kind, ManifestKind::DockerManifest | ManifestKind::DockerList) && raw.media_type.is_none() {
        return Err(ManifestError::Shape("Docker schema 2 manifests must declare mediaType"));
    }

    if kind.is_index() {
        if raw.config.is_some() || raw.layers.is_some() {
            return Err(ManifestError::Shape("an index must not have config or layers"));
        }
        let manifests = raw.manifests.ok_or(ManifestError::Shape("an index must have a manifests array"))?;
        Ok(Manifest {
            kind,
            config: None,
            layers: Vec::new(),
            manifests,
            subject: raw.subject,
            artifact_type: raw.artifact_type,
            annotations: raw.annotations,
        })
    } else {
        if raw.manifests.is_some() {
            return Err(ManifestError::Shape("an image manifest must not have a manifests array"));
        }
        let config = raw.config.ok_or(ManifestError::Shape("an image manifest must have a config descriptor"))?;
        let layers = raw.layers.ok_or(ManifestError::Shape("an image manifest must have a layers array"))?;
        Ok(Manifest {
            kind,
            config: Some(config),
            layers,
            manifests: Vec::new(),
            subject: raw.subject,
            artifact_type: raw.artifact_type,
            annotations: raw.annotations,
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn d(n: u8) -> String {
        format!("sha256:{}", format!("{n:02x}").repeat(32))
    }

    fn image(media_type: Option<&str>) -> String {
        let mt = media_type.map(|m| format!(r#""mediaType":"{m}","#)).unwrap_or_default();
        format!(
            r#"{{"schemaVersion":2,{mt}"config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":2}},
            "layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{}","size":10}}]}}"#,
            d(1),
            d(2)
        )
    }

    /// One table for every manifest PUT case: (content type, body, expected).
    fn check(content_type: Option<&str>, body: &str, expected: Result<ManifestKind, ManifestError>) {
        let got = parse(content_type, body.as_bytes()).map(|m| m.kind);
        assert_eq!(got, expected, "content-type {content_type:?}, body {body}");
    }

    #[test]
    fn manifest_table() {
        check(Some(OCI_MANIFEST), &image(Some(OCI_MANIFEST)), Ok(ManifestKind::OciManifest));
        check(Some(OCI_MANIFEST), &image(None), Ok(ManifestKind::OciManifest));
        check(None, &image(Some(OCI_MANIFEST)), Ok(ManifestKind::OciManifest));
        check(None, &image(None), Ok(ManifestKind::OciManifest));
        check(
            Some("application/vnd.oci.image.manifest.v1+json; charset=utf-8"),
            &image(None),
            Ok(ManifestKind::OciManifest),
        );
        check(Some(DOCKER_MANIFEST), &image(Some(DOCKER_MANIFEST)), Ok(ManifestKind::DockerManifest));
        check(
            Some(DOCKER_MANIFEST),
            &image(None),
            Err(ManifestError::Shape("Docker schema 2 manifests must declare mediaType")),
        );
        check(
            Some(OCI_INDEX),
            &image(Some(OCI_MANIFEST)),
            Err(ManifestError::MediaTypeMismatch { header: OCI_INDEX.into(), body: OCI_MANIFEST.into() }),
        );
        check(Some(OCI_INDEX), &image(None), Err(ManifestError::Shape("an index must not have config or layers")));
        let index = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":5}}]}}"#,
            d(3)
        );
        check(Some(OCI_INDEX), &index, Ok(ManifestKind::OciIndex));
        check(None, &index, Ok(ManifestKind::OciIndex));
        check(
            Some(OCI_MANIFEST),
            &index,
            Err(ManifestError::MediaTypeMismatch { header: OCI_MANIFEST.into(), body: OCI_INDEX.into() }),
        );
        let list = format!(r#"{{"schemaVersion":2,"mediaType":"{DOCKER_LIST}","manifests":[]}}"#);
        check(Some(DOCKER_LIST), &list, Ok(ManifestKind::DockerList));
        check(Some("application/vnd.docker.distribution.manifest.v1+prettyjws"), "{}", Err(ManifestError::Schema1));
        check(None, r#"{"schemaVersion":1,"name":"x","tag":"y","fsLayers":[]}"#, Err(ManifestError::Schema1));
        check(
            Some("application/vnd.example+json"),
            &image(None),
            Err(ManifestError::UnsupportedMediaType("application/vnd.example+json".into())),
        );
        check(Some(OCI_MANIFEST), r#"{"schemaVersion":3,"layers":[]}"#, Err(ManifestError::SchemaVersion));
        check(
            Some(OCI_MANIFEST),
            r#"{"schemaVersion":2,"layers":[]}"#,
            Err(ManifestError::Shape("an image manifest must have a config descriptor")),
        );
        assert!(matches!(parse(Some(OCI_MANIFEST), b"not json"), Err(ManifestError::Json(_))));
        assert!(matches!(parse(Some(OCI_MANIFEST), b""), Err(ManifestError::Json(_))));
        let bad_digest = image(None).replace(&d(1), "sha256:abc");
        assert!(matches!(parse(Some(OCI_MANIFEST), bad_digest.as_bytes()), Err(ManifestError::Json(_))));
        let negative = image(None).replace(r#""size":10"#, r#""size":-1"#);
        assert!(matches!(parse(Some(OCI_MANIFEST), negative.as_bytes()), Err(ManifestError::Json(_))));
        let huge = format!("{}{}", image(None), " ".repeat(MAX_MANIFEST_SIZE));
        assert_eq!(parse(Some(OCI_MANIFEST), huge.as_bytes()).unwrap_err(), ManifestError::TooLarge);
    }

    #[test]
    fn subject_and_artifact_type() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.empty.v1+json","digest":"{}","size":2}},
            "layers":[],"subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":100}},"annotations":{{"a":"b"}}}}"#,
            d(1),
            d(9)
        );
        let m = parse(Some(OCI_MANIFEST), body.as_bytes()).unwrap();
        assert_eq!(m.subject.as_ref().unwrap().digest.to_string(), d(9));
        assert_eq!(m.effective_artifact_type(), Some("application/vnd.oci.empty.v1+json"));
        let with_type = body.replacen(r#""layers""#, r#""artifactType":"application/x.sbom","layers""#, 1);
        let m = parse(Some(OCI_MANIFEST), with_type.as_bytes()).unwrap();
        assert_eq!(m.effective_artifact_type(), Some("application/x.sbom"));
        assert_eq!(m.annotations.unwrap()["a"], "b");
    }

    #[test]
    fn external_layers_are_not_required() {
        let body = image(Some(DOCKER_MANIFEST)).replace(
            "application/vnd.oci.image.layer.v1.tar+gzip\"",
            "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip\",\"urls\":[\"https://example.invalid/l\"]",
        );
        let m = parse(Some(DOCKER_MANIFEST), body.as_bytes()).unwrap();
        assert_eq!(m.required_blobs().count(), 1);
    }

    proptest! {
        #[test]
        fn parse_never_panics(ct in proptest::option::of("\\PC{0,60}"), body in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = parse(ct.as_deref(), &body);
        }

        #[test]
        fn parse_never_panics_on_jsonish(body in r#"\{("[a-zA-Z]{1,12}":(2|"[a-z./+]{0,20}"|\[\]|\{\}|null),?){0,6}\}"#) {
            let _ = parse(Some(OCI_MANIFEST), body.as_bytes());
            let _ = parse(None, body.as_bytes());
        }
    }
}
