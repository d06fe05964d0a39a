//! npm: installed `node_modules/**/package.json` files and
//! `package-lock.json` (lockfile v1 nested `dependencies`, v2/v3 `packages`).

use serde_json::Value;

use crate::ext::scan::inventory::{Package, PackageType};

pub fn is_installed_manifest(path: &str) -> bool {
    path.ends_with("/package.json") && (path.contains("/node_modules/") || path.starts_with("node_modules/"))
}

pub fn is_lockfile(path: &str) -> bool {
    path == "package-lock.json" || path.ends_with("/package-lock.json")
}

/// One installed package's `package.json`; `None` without name and version
/// (a nested `package.json` of a package's own sources, say).
pub fn parse_manifest(data: &[u8]) -> Option<Package> {
    let v: Value = serde_json::from_slice(data).ok()?;
    let name = v.get("name")?.as_str()?;
    let version = v.get("version")?.as_str()?;
    if name.is_empty() || version.is_empty() {
        return None;
    }
    let mut p = Package::new(PackageType::Npm, name, version);
    p.license = match v.get("license") {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Object(o)) => o.get("type").and_then(Value::as_str).map(str::to_owned),
        _ => None,
    };
    Some(p)
}

/// The packages a lockfile pins.
pub fn parse_lockfile(data: &[u8]) -> Result<Vec<Package>, String> {
    let v: Value = serde_json::from_slice(data).map_err(|e| format!("not JSON: {e}"))?;
    let mut out = Vec::new();
    if let Some(packages) = v.get("packages").and_then(Value::as_object) {
        for (path, entry) in packages {
            if path.is_empty() || entry.get("link").and_then(Value::as_bool) == Some(true) {
                continue; // the root project, or a symlinked workspace
            }
            let Some(version) = entry.get("version").and_then(Value::as_str) else { continue };
            let name = match entry.get("name").and_then(Value::as_str) {
                Some(n) => n,
                None => match path.rfind("node_modules/") {
                    Some(i) => &path[i + "node_modules/".len()..],
                    None => continue,
                },
            };
            out.push(Package::new(PackageType::Npm, name, version));
        }
    } else if let Some(deps) = v.get("dependencies").and_then(Value::as_object) {
        let mut stack: Vec<&serde_json::Map<String, Value>> = vec![deps];
        while let Some(map) = stack.pop() {
            for (name, entry) in map {
                if let Some(version) = entry.get("version").and_then(Value::as_str) {
                    if !version.starts_with("file:") && !version.starts_with("link:") {
                        out.push(Package::new(PackageType::Npm, name, version));
                    }
                }
                if let Some(nested) = entry.get("dependencies").and_then(Value::as_object) {
                    stack.push(nested);
                }
            }
        }
    }
    out.sort_by(|a, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
    out.dedup_by(|a, b| a.name == b.name && a.version == b.version);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_and_lockfiles() {
        let p = parse_manifest(br#"{"name":"@scope/x","version":"1.2.3","license":{"type":"MIT"}}"#).unwrap();
        assert_eq!((p.name.as_str(), p.license.as_deref()), ("@scope/x", Some("MIT")));
        assert!(parse_manifest(br#"{"name":"x"}"#).is_none());
        assert!(parse_manifest(b"not json").is_none());
        let v3 = br#"{"lockfileVersion":3,"packages":{"":{"name":"app","version":"1.0.0"},
            "node_modules/lodash":{"version":"4.17.20"},
            "node_modules/a/node_modules/@s/b":{"version":"2.0.0"},
            "packages/w":{"version":"0.1.0","name":"w"},
            "node_modules/w":{"link":true,"resolved":"packages/w"}}}"#;
        let names: Vec<String> =
            parse_lockfile(v3).unwrap().iter().map(|p| format!("{}@{}", p.name, p.version)).collect();
        assert_eq!(names, ["@s/b@2.0.0", "lodash@4.17.20", "w@0.1.0"]);
        let v1 = br#"{"lockfileVersion":1,"dependencies":{"a":{"version":"1.0.0","dependencies":{"b":{"version":"2.0.0"}}},"c":{"version":"file:../c"}}}"#;
        assert_eq!(parse_lockfile(v1).unwrap().len(), 2);
        assert!(parse_lockfile(b"{").is_err());
        assert!(is_installed_manifest("usr/lib/node_modules/npm/package.json"));
        assert!(!is_installed_manifest("app/package.json"));
        assert!(is_lockfile("app/package-lock.json"));
    }
}
