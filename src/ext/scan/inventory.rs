//! What a scan knows about a layer and an image. A layer's facts depend only
//! on its digest: they are computed once, stored, and merged per image
//! (whiteouts and later files applied) when a report is built.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Bumped whenever analyzers change what they find: stored inventories of
/// another format are recomputed.
pub const FORMAT: u32 = 2;

/// The kind of package, which decides the ecosystem it is matched in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PackageType {
    Deb,
    Apk,
    Rpm,
    Cargo,
    Golang,
    Pypi,
    Npm,
}

impl PackageType {
    /// The package-URL type.
    pub fn purl_type(self) -> &'static str {
        match self {
            PackageType::Deb => "deb",
            PackageType::Apk => "apk",
            PackageType::Rpm => "rpm",
            PackageType::Cargo => "cargo",
            PackageType::Golang => "golang",
            PackageType::Pypi => "pypi",
            PackageType::Npm => "npm",
        }
    }
}

/// One installed package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Package {
    #[serde(rename = "type")]
    pub kind: PackageType,
    pub name: String,
    pub version: String,
    /// The source package (Debian `Source:`, Alpine origin, RPM source rpm),
    /// what OS advisories name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub license: Option<String>,
    /// The RPM epoch, when the package has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
}

impl Package {
    pub fn new(kind: PackageType, name: impl Into<String>, version: impl Into<String>) -> Package {
        Package {
            kind,
            name: name.into(),
            version: version.into(),
            source_name: None,
            source_version: None,
            arch: None,
            license: None,
            epoch: None,
        }
    }
}

/// The packages one file of a layer declares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileFacts {
    /// Normalised path inside the image, without a leading `/`.
    pub path: String,
    /// Which analyzer read it.
    pub analyzer: String,
    pub packages: Vec<Package>,
}

/// The operating system an `os-release` file names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OsRelease {
    pub id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version_codename: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pretty_name: String,
}

/// Everything the analyzers found in one layer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerInventory {
    pub format: u32,
    pub digest: String,
    /// `os-release` contents by path.
    #[serde(default)]
    pub os_release: BTreeMap<String, OsRelease>,
    /// Symbolic and hard links at paths an analyzer cares about: path ->
    /// target (relative targets resolve against the link's directory; hard
    /// link targets are from the root).
    #[serde(default)]
    pub links: BTreeMap<String, String>,
    #[serde(default)]
    pub files: Vec<FileFacts>,
    /// Executable files: each replaces whatever lower layers had at its path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub executables: Vec<String>,
    /// `.wh.<name>` entries: the path they delete from lower layers.
    #[serde(default)]
    pub whiteouts: Vec<String>,
    /// `.wh..wh..opq` entries: directories whose lower contents are hidden.
    #[serde(default)]
    pub opaque_dirs: Vec<String>,
    /// Problems that stopped the layer's analysis (it is then incomplete).
    #[serde(default)]
    pub errors: Vec<String>,
    /// Problems with single entries; the rest of the layer was analyzed.
    #[serde(default)]
    pub warnings: Vec<String>,
    /// Tar entries seen, compressed bytes read and bytes after decompression.
    pub entries: u64,
    pub compressed_bytes: u64,
    pub uncompressed_bytes: u64,
}
