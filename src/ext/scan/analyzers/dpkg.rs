//! Debian's package database: `var/lib/dpkg/status` (paragraphs of
//! `Field: value`, continuation lines indented) and distroless images'
//! `var/lib/dpkg/status.d/<name>` files in the same format.

use crate::ext::scan::inventory::{Package, PackageType};

/// Whether a path is a dpkg database this analyzer reads.
pub fn matches(path: &str) -> bool {
    if path == "var/lib/dpkg/status" {
        return true;
    }
    match path.strip_prefix("var/lib/dpkg/status.d/") {
        Some(name) => !name.is_empty() && !name.contains('/') && !name.ends_with(".md5sums"),
        None => false,
    }
}

/// The installed packages of a status file. Paragraphs whose `Status`
/// says the package is not installed (removed, config files only) are
/// skipped; distroless files without a `Status` count as installed.
pub fn parse(data: &[u8]) -> Vec<Package> {
    let text = String::from_utf8_lossy(data);
    let mut out = Vec::new();
    let mut fields: Vec<(&str, &str)> = Vec::new();
    let mut flush = |fields: &mut Vec<(&str, &str)>| {
        if let Some(p) = package(fields) {
            out.push(p);
        }
        fields.clear();
    };
    for line in text.lines() {
        if line.trim().is_empty() {
            flush(&mut fields);
            continue;
        }
        if line.starts_with([' ', '\t']) {
            continue; // a continuation line (descriptions, conffiles)
        }
        if let Some((k, v)) = line.split_once(':') {
            fields.push((k.trim(), v.trim()));
        }
    }
    flush(&mut fields);
    out
}

fn package(fields: &[(&str, &str)]) -> Option<Package> {
    let get = |name: &str| fields.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| *v);
    let name = get("Package").filter(|n| !n.is_empty())?;
    let version = get("Version").filter(|v| !v.is_empty())?;
    if let Some(status) = get("Status") {
        // "want flag status": the last word must be `installed`.
        if status.split_whitespace().last() != Some("installed") {
            return None;
        }
    }
    let mut p = Package::new(PackageType::Deb, name, version);
    p.arch = get("Architecture").map(str::to_owned);
    // `Source: name` or `Source: name (version)`.
    let (src, src_version) = match get("Source") {
        Some(s) => match s.split_once('(') {
            Some((n, v)) => (n.trim(), v.trim_end_matches(')').trim()),
            None => (s.trim(), version),
        },
        None => (name, version),
    };
    p.source_name = Some(src.to_owned());
    p.source_version = Some(src_version.to_owned());
    Some(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_paragraphs() {
        let status = b"Package: libc6\nStatus: install ok installed\nArchitecture: amd64\nSource: glibc\n\
Version: 2.36-9+deb12u4\nDescription: GNU C Library\n a continuation: with a colon\n\n\
Package: gone\nStatus: deinstall ok config-files\nVersion: 1.0\n\n\
Package: libssl3\nStatus: install ok installed\nSource: openssl (3.0.11-1~deb12u2)\nVersion: 3.0.11-1~deb12u2+b1\n\n\
Package: broken\nStatus: install ok installed\n";
        let pkgs = parse(status);
        assert_eq!(pkgs.len(), 2, "{pkgs:?}");
        assert_eq!(pkgs[0].name, "libc6");
        assert_eq!(pkgs[0].source_name.as_deref(), Some("glibc"));
        assert_eq!(pkgs[0].source_version.as_deref(), Some("2.36-9+deb12u4"));
        assert_eq!(pkgs[0].arch.as_deref(), Some("amd64"));
        assert_eq!(pkgs[1].version, "3.0.11-1~deb12u2+b1");
        assert_eq!(pkgs[1].source_name.as_deref(), Some("openssl"));
        assert_eq!(pkgs[1].source_version.as_deref(), Some("3.0.11-1~deb12u2"));
        // distroless: no Status field.
        let one = parse(b"Package: tzdata\nVersion: 2024a-0+deb12u1\nArchitecture: all\n");
        assert_eq!(one[0].source_name.as_deref(), Some("tzdata"));
        assert!(matches("var/lib/dpkg/status.d/tzdata"));
        assert!(!matches("var/lib/dpkg/status.d/tzdata.md5sums"));
        assert!(!matches("var/lib/dpkg/status-old"));
        assert!(parse(&[0xff; 64]).is_empty());
    }
}
