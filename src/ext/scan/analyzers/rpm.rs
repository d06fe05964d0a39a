//! RPM's package database in its SQLite form (`rpmdb.sqlite`, table
//! `Packages`: one header blob per package). The Berkeley DB and NDB forms
//! are recognised by path and reported as unsupported.

use super::sqlite::{Database, Value};
use crate::ext::scan::inventory::{Package, PackageType};

pub const SQLITE_PATHS: [&str; 2] = ["var/lib/rpm/rpmdb.sqlite", "usr/lib/sysimage/rpm/rpmdb.sqlite"];
/// Other database forms: (path, name of the format).
pub const UNSUPPORTED: [(&str, &str); 4] = [
    ("var/lib/rpm/Packages", "Berkeley DB"),
    ("usr/lib/sysimage/rpm/Packages", "Berkeley DB"),
    ("var/lib/rpm/Packages.db", "NDB"),
    ("usr/lib/sysimage/rpm/Packages.db", "NDB"),
];

const NAME: u32 = 1000;
const VERSION: u32 = 1001;
const RELEASE: u32 = 1002;
const EPOCH: u32 = 1003;
const LICENSE: u32 = 1014;
const ARCH: u32 = 1022;
const SOURCERPM: u32 = 1044;

/// The packages of an `rpmdb.sqlite` file.
pub fn parse_sqlite(data: &[u8]) -> Result<Vec<Package>, String> {
    let db = Database::open(data)?;
    let root = db.table_root("Packages")?.ok_or("the rpmdb has no Packages table")?;
    let mut out = Vec::new();
    let mut bad = 0usize;
    db.scan(root, &mut |_, values| {
        if let Some(Value::Blob(blob)) = values.get(1) {
            match header(blob) {
                Ok(Some(p)) => out.push(p),
                Ok(None) => {}
                Err(_) => bad += 1,
            }
        }
        Ok(())
    })?;
    if bad > 0 && out.is_empty() {
        return Err(format!("none of the rpmdb's {bad} headers parse"));
    }
    Ok(out)
}

/// One package header (the "immutable region" form the database stores:
/// index count, data length, 16-byte index entries, then data).
pub fn header(blob: &[u8]) -> Result<Option<Package>, String> {
    let be32 = |at: usize| -> Option<u32> { Some(u32::from_be_bytes(blob.get(at..at + 4)?.try_into().ok()?)) };
    let (il, dl) = (be32(0).ok_or("short header")? as usize, be32(4).ok_or("short header")? as usize);
    let data_start = 8usize.checked_add(il.checked_mul(16).ok_or("bad header")?).ok_or("bad header")?;
    let data = blob.get(data_start..data_start.checked_add(dl).ok_or("bad header")?).ok_or("header past its blob")?;
    let mut strings = std::collections::HashMap::new();
    let mut epoch = None;
    for i in 0..il {
        let e = 8 + 16 * i;
        let (tag, kind, offset, count) = (
            be32(e).unwrap_or(0),
            be32(e + 4).unwrap_or(0),
            be32(e + 8).unwrap_or(u32::MAX) as usize,
            be32(e + 12).unwrap_or(0),
        );
        match (tag, kind) {
            (NAME | VERSION | RELEASE | LICENSE | ARCH | SOURCERPM, 6 | 8 | 9) => {
                let s = data.get(offset..).ok_or("string past the header")?;
                let end = s.iter().position(|b| *b == 0).ok_or("unterminated string")?;
                strings.insert(tag, String::from_utf8_lossy(&s[..end]).into_owned());
            }
            (EPOCH, 4) if count >= 1 => {
                let b = data.get(offset..offset + 4).ok_or("epoch past the header")?;
                epoch = Some(u64::from(u32::from_be_bytes([b[0], b[1], b[2], b[3]])));
            }
            _ => {}
        }
    }
    let (Some(name), Some(version)) = (strings.remove(&NAME), strings.remove(&VERSION)) else {
        return Err("header without name or version".into());
    };
    if name == "gpg-pubkey" {
        return Ok(None); // imported signing keys, not software
    }
    let release = strings.remove(&RELEASE).unwrap_or_default();
    let full = if release.is_empty() { version.clone() } else { format!("{version}-{release}") };
    let mut p = Package::new(PackageType::Rpm, name, full);
    p.epoch = epoch;
    p.arch = strings.remove(&ARCH);
    p.license = strings.remove(&LICENSE);
    if let Some((src, ver)) = strings.get(&SOURCERPM).and_then(|s| source_rpm(s)) {
        p.source_name = Some(src);
        p.source_version = Some(ver);
    }
    Ok(Some(p))
}

/// `name-version-release.src.rpm` into (name, version-release).
fn source_rpm(s: &str) -> Option<(String, String)> {
    let base = s.strip_suffix(".src.rpm").or_else(|| s.strip_suffix(".nosrc.rpm"))?;
    let (rest, release) = base.rsplit_once('-')?;
    let (name, version) = rest.rsplit_once('-')?;
    Some((name.to_owned(), format!("{version}-{release}")))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A header blob with the given string tags and an optional epoch.
    pub(crate) fn make_header(strings: &[(u32, &str)], epoch: Option<u32>) -> Vec<u8> {
        let mut index = Vec::new();
        let mut data = Vec::new();
        for (tag, s) in strings {
            index.extend(tag.to_be_bytes());
            index.extend(6u32.to_be_bytes());
            index.extend((data.len() as u32).to_be_bytes());
            index.extend(1u32.to_be_bytes());
            data.extend(s.as_bytes());
            data.push(0);
        }
        if let Some(e) = epoch {
            while data.len() % 4 != 0 {
                data.push(0);
            }
            index.extend(EPOCH.to_be_bytes());
            index.extend(4u32.to_be_bytes());
            index.extend((data.len() as u32).to_be_bytes());
            index.extend(1u32.to_be_bytes());
            data.extend(e.to_be_bytes());
        }
        let mut out = ((index.len() / 16) as u32).to_be_bytes().to_vec();
        out.extend((data.len() as u32).to_be_bytes());
        out.extend(index);
        out.extend(data);
        out
    }

    #[test]
    fn headers() {
        let h = make_header(
            &[
                (NAME, "bash"),
                (VERSION, "5.1.8"),
                (RELEASE, "6.el9"),
                (ARCH, "x86_64"),
                (SOURCERPM, "bash-5.1.8-6.el9.src.rpm"),
            ],
            Some(1),
        );
        let p = header(&h).unwrap().unwrap();
        assert_eq!((p.name.as_str(), p.version.as_str(), p.epoch), ("bash", "5.1.8-6.el9", Some(1)));
        assert_eq!((p.source_name.as_deref(), p.source_version.as_deref()), (Some("bash"), Some("5.1.8-6.el9")));
        assert!(header(&make_header(&[(NAME, "gpg-pubkey"), (VERSION, "1")], None)).unwrap().is_none());
        assert!(header(b"\xff\xff\xff\xff\0\0\0\0").is_err());
        assert!(header(&h[..h.len() - 3]).is_err());
        assert_eq!(source_rpm("python3.11-3.11.5-1.el9.src.rpm"), Some(("python3.11".into(), "3.11.5-1.el9".into())));
        assert!(parse_sqlite(b"SQLite format 3\0 but nothing else").is_err());
    }
}
