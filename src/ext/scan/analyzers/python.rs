//! Installed Python distributions: `*.dist-info/METADATA` (and the
//! `PKG-INFO` of `*.egg-info` directories), RFC 822 style headers.

use crate::ext::scan::inventory::{Package, PackageType};

pub fn matches(path: &str) -> bool {
    let Some((dir, file)) = path.rsplit_once('/') else { return false };
    (file == "METADATA" && dir.ends_with(".dist-info")) || (file == "PKG-INFO" && dir.ends_with(".egg-info"))
}

pub fn parse(data: &[u8]) -> Option<Package> {
    let text = String::from_utf8_lossy(data);
    let (mut name, mut version, mut license) = (None, None, None);
    for line in text.lines() {
        if line.is_empty() {
            break; // the body (long description) starts here
        }
        let Some((k, v)) = line.split_once(':') else { continue };
        let v = v.trim();
        match k.to_ascii_lowercase().as_str() {
            "name" => name = Some(v.to_owned()),
            "version" => version = Some(v.to_owned()),
            "license-expression" => license = Some(v.to_owned()),
            "license" if license.is_none() && !v.is_empty() && v.len() < 200 => license = Some(v.to_owned()),
            _ => {}
        }
    }
    let mut p = Package::new(PackageType::Pypi, name.filter(|n| !n.is_empty())?, version.filter(|v| !v.is_empty())?);
    p.license = license;
    Some(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_headers() {
        let p = parse(b"Metadata-Version: 2.1\nName: requests\nVersion: 2.31.0\nLicense: Apache 2.0\n\nName: body\n")
            .unwrap();
        assert_eq!(
            (p.name.as_str(), p.version.as_str(), p.license.as_deref()),
            ("requests", "2.31.0", Some("Apache 2.0"))
        );
        assert!(parse(b"Name: x\n").is_none());
        assert!(matches("usr/lib/python3/dist-packages/requests-2.31.0.dist-info/METADATA"));
        assert!(matches("usr/lib/python3/site-packages/six-1.16.0.egg-info/PKG-INFO"));
        assert!(!matches("METADATA"));
        assert!(!matches("a/b.dist-info/RECORD"));
    }
}
