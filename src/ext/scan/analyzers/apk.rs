//! Alpine's package database, `lib/apk/db/installed`: records of
//! `X:value` lines separated by blank lines (`P` name, `V` version, `A`
//! architecture, `o` origin, `L` license).

use crate::ext::scan::inventory::{Package, PackageType};

pub const PATH: &str = "lib/apk/db/installed";

pub fn parse(data: &[u8]) -> Vec<Package> {
    let text = String::from_utf8_lossy(data);
    let mut out = Vec::new();
    let mut cur: Option<Package> = None;
    let mut finish = |cur: &mut Option<Package>| {
        if let Some(mut p) = cur.take() {
            if !p.name.is_empty() && !p.version.is_empty() {
                if p.source_name.is_none() {
                    p.source_name = Some(p.name.clone());
                }
                p.source_version = Some(p.version.clone());
                out.push(p);
            }
        }
    };
    for line in text.lines() {
        if line.trim().is_empty() {
            finish(&mut cur);
            continue;
        }
        let Some((k, v)) = line.split_once(':') else { continue };
        let p = cur.get_or_insert_with(|| Package::new(PackageType::Apk, "", ""));
        match k {
            "P" => p.name = v.to_owned(),
            "V" => p.version = v.to_owned(),
            "A" => p.arch = Some(v.to_owned()),
            "o" => p.source_name = Some(v.to_owned()),
            "L" => p.license = Some(v.to_owned()),
            _ => {}
        }
    }
    finish(&mut cur);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installed_records() {
        let db = b"C:Q1abc=\nP:musl\nV:1.2.5-r0\nA:x86_64\nL:MIT\no:musl\nF:lib\nR:libc.musl-x86_64.so.1\n\n\
C:Q1def=\nP:libcrypto3\nV:3.3.2-r0\nA:x86_64\no:openssl\n\nP:incomplete\n";
        let pkgs = parse(db);
        assert_eq!(pkgs.len(), 2);
        assert_eq!((pkgs[1].name.as_str(), pkgs[1].version.as_str()), ("libcrypto3", "3.3.2-r0"));
        assert_eq!(pkgs[1].source_name.as_deref(), Some("openssl"));
        assert_eq!(pkgs[0].license.as_deref(), Some("MIT"));
    }
}
