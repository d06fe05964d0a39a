//! `os-release`: `KEY=value` lines, values optionally quoted.

use crate::ext::scan::inventory::OsRelease;

/// The paths `os-release` lives at, in the order they are consulted.
pub const PATHS: [&str; 2] = ["etc/os-release", "usr/lib/os-release"];

/// Parse an `os-release` file; `None` when it names no `ID`.
pub fn parse(data: &[u8]) -> Option<OsRelease> {
    let text = String::from_utf8_lossy(data);
    let mut os = OsRelease::default();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else { continue };
        let value = unquote(value.trim());
        match key.trim() {
            "ID" => os.id = value.to_ascii_lowercase(),
            "VERSION_ID" => os.version_id = value,
            "VERSION_CODENAME" => os.version_codename = value,
            "PRETTY_NAME" => os.pretty_name = value,
            _ => {}
        }
    }
    (!os.id.is_empty()).then_some(os)
}

fn unquote(v: &str) -> String {
    let inner = if v.len() >= 2 && (v.starts_with('"') && v.ends_with('"') || v.starts_with('\'') && v.ends_with('\''))
    {
        &v[1..v.len() - 1]
    } else {
        v
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debian_and_alpine() {
        let deb = parse(
            b"PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\n\
              VERSION_CODENAME=bookworm\nID=debian\n",
        )
        .unwrap();
        assert_eq!(
            (deb.id.as_str(), deb.version_id.as_str(), deb.version_codename.as_str()),
            ("debian", "12", "bookworm")
        );
        assert_eq!(deb.pretty_name, "Debian GNU/Linux 12 (bookworm)");
        let alpine = parse(b"# comment\nID='alpine'\nVERSION_ID=3.20.3\n").unwrap();
        assert_eq!((alpine.id.as_str(), alpine.version_id.as_str()), ("alpine", "3.20.3"));
        assert!(parse(b"NAME=nothing\n").is_none());
        assert!(parse(&[0xff, 0xfe, b'\n']).is_none());
    }
}
