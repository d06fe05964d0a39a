//! Rust: `Cargo.lock` files and binaries built with `cargo auditable`,
//! whose `.dep-v0` section holds the dependency tree as zlib-compressed
//! JSON.

use std::io::Read;

use serde::Deserialize;

use crate::ext::scan::inventory::{Package, PackageType};

/// The most a `.dep-v0` section may inflate to.
const MAX_AUDIT_JSON: u64 = 16 << 20;

pub fn is_lockfile(path: &str) -> bool {
    path == "Cargo.lock" || path.ends_with("/Cargo.lock")
}

#[derive(Deserialize)]
struct Lock {
    #[serde(default)]
    package: Vec<LockPackage>,
}

#[derive(Deserialize)]
struct LockPackage {
    name: String,
    version: String,
    source: Option<String>,
}

/// The packages a lockfile pins. Path dependencies (no `source`, the
/// workspace's own crates) are left out: no registry publishes them.
pub fn parse_lockfile(data: &[u8]) -> Result<Vec<Package>, String> {
    let text = std::str::from_utf8(data).map_err(|_| "Cargo.lock is not UTF-8".to_owned())?;
    let lock: Lock = toml::from_str(text).map_err(|e| format!("Cargo.lock does not parse: {}", e.message()))?;
    Ok(lock
        .package
        .into_iter()
        .filter(|p| p.source.is_some())
        .map(|p| Package::new(PackageType::Cargo, p.name, p.version))
        .collect())
}

#[derive(Deserialize)]
struct Audit {
    packages: Vec<AuditPackage>,
}

#[derive(Deserialize)]
struct AuditPackage {
    name: String,
    version: String,
    #[serde(default)]
    source: serde_json::Value,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    root: bool,
}

/// The crates compiled into a binary, from its `.dep-v0` section: runtime
/// dependencies from a registry or git (build dependencies never reach
/// the binary; the root and local path crates are the project itself).
pub fn parse_audit_section(section: &[u8]) -> Result<Vec<Package>, String> {
    let mut json = Vec::new();
    flate2::read::ZlibDecoder::new(section)
        .take(MAX_AUDIT_JSON + 1)
        .read_to_end(&mut json)
        .map_err(|e| format!("the .dep-v0 section does not inflate: {e}"))?;
    if json.len() as u64 > MAX_AUDIT_JSON {
        return Err(format!("the .dep-v0 section inflates past {MAX_AUDIT_JSON} bytes"));
    }
    let audit: Audit =
        serde_json::from_slice(&json).map_err(|e| format!("the .dep-v0 section is not the expected JSON: {e}"))?;
    Ok(audit
        .packages
        .into_iter()
        .filter(|p| !p.root && p.kind.as_deref() != Some("build"))
        .filter(|p| !matches!(p.source.as_str(), Some("local")))
        .map(|p| Package::new(PackageType::Cargo, p.name, p.version))
        .collect())
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn lockfile() {
        let lock = br#"version = 3
[[package]]
name = "app"
version = "0.1.0"
dependencies = ["smallvec"]

[[package]]
name = "smallvec"
version = "1.6.0"
source = "registry+https://github.com/rust-lang/crates.io-index"
checksum = "abc"
"#;
        let pkgs = parse_lockfile(lock).unwrap();
        assert_eq!(pkgs.len(), 1);
        assert_eq!((pkgs[0].name.as_str(), pkgs[0].version.as_str()), ("smallvec", "1.6.0"));
        assert!(parse_lockfile(b"[[package]]\nname = 1\n").is_err());
        assert!(parse_lockfile(&[0xff, 0xfe]).is_err());
        assert!(is_lockfile("src/app/Cargo.lock"));
    }

    #[test]
    fn audit_section() {
        let json = br#"{"packages":[{"name":"app","version":"0.1.0","source":"local","root":true,"dependencies":[1,2]},
            {"name":"smallvec","version":"1.6.0","source":"crates.io"},
            {"name":"cc","version":"1.0.0","source":"crates.io","kind":"build"},
            {"name":"helper","version":"0.1.0","source":"local"}]}"#;
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(json).unwrap();
        let pkgs = parse_audit_section(&z.finish().unwrap()).unwrap();
        assert_eq!(pkgs.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["smallvec"]);
        assert!(parse_audit_section(b"not zlib").is_err());
        // A bomb: 64 MiB of spaces inflates past the limit and is refused.
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        z.write_all(&vec![b' '; 64 << 20]).unwrap();
        let err = parse_audit_section(&z.finish().unwrap()).unwrap_err();
        assert!(err.contains("inflates past"), "{err}");
    }
}
