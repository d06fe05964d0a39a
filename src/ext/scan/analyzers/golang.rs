//! Go binaries: the build information the Go linker embeds (the
//! `.go.buildinfo` section, found by its magic): the Go version and the
//! module graph (`mod`, `dep`, `=>` replacement lines).

use crate::ext::scan::inventory::{Package, PackageType};

const MAGIC: &[u8; 14] = b"\xff Go buildinf:";
/// The most a module list may take (real ones are a few KiB).
const MAX_MODINFO: u64 = 4 << 20;

/// The packages of a Go binary: `stdlib` at the Go version it was built
/// with, the main module when it has a real version, and every dependency
/// (replacements applied). `Ok(None)` when the file is no Go binary.
pub fn parse(data: &[u8]) -> Result<Option<Vec<Package>>, String> {
    let Some(start) = find_header(data) else { return Ok(None) };
    let header = &data[start..];
    if header.len() < 32 {
        return Err("truncated Go build information".into());
    }
    let ptr_size = header[14] as usize;
    let flags = header[15];
    let (version, modinfo) = if flags & 2 != 0 {
        // Go 1.18+: the strings follow the header, length-prefixed.
        let mut at = 32;
        let version = varint_string(header, &mut at)?;
        let modinfo = varint_string(header, &mut at)?;
        (version, modinfo)
    } else {
        let big_endian = flags & 1 != 0;
        if ptr_size != 4 && ptr_size != 8 {
            return Err(format!("Go build information with pointer size {ptr_size}"));
        }
        let file = object::File::parse(data).map_err(|e| format!("not an executable Go can describe: {e}"))?;
        let version = pointed_string(&file, header, 16, ptr_size, big_endian)?;
        let modinfo = pointed_string(&file, header, 16 + ptr_size, ptr_size, big_endian)?;
        (version, modinfo)
    };
    if !version.starts_with("go") {
        return Err(format!("unexpected Go version string {version:?}"));
    }
    let mut out = vec![Package::new(PackageType::Golang, "stdlib", go_version(&version))];
    out.extend(modules(&modinfo));
    Ok(Some(out))
}

/// Go's versions (`go1.22.2`, `go1.21`, `go1.21rc2`) as SemVer.
fn go_version(v: &str) -> String {
    let v = v.trim_start_matches("go");
    // Strip build suffixes such as ` X:boringcrypto`.
    let v = v.split([' ', '+']).next().unwrap_or(v);
    let (core, pre) = match v.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&v[..i], Some(&v[i..])),
        None => (v, None),
    };
    let mut parts: Vec<&str> = core.split('.').filter(|p| !p.is_empty()).collect();
    while parts.len() < 3 {
        parts.push("0");
    }
    let mut out = parts.join(".");
    if let Some(pre) = pre {
        let (word, num) = pre.split_at(pre.find(|c: char| c.is_ascii_digit()).unwrap_or(pre.len()));
        out.push('-');
        out.push_str(word);
        if !num.is_empty() {
            out.push('.');
            out.push_str(num);
        }
    }
    out
}

fn find_header(data: &[u8]) -> Option<usize> {
    if let Ok(file) = object::File::parse(data) {
        use object::{Object, ObjectSection};
        if let Some(section) = file.section_by_name(".go.buildinfo") {
            if let Some((offset, _)) = section.file_range() {
                let offset = usize::try_from(offset).ok()?;
                if data.get(offset..)?.starts_with(MAGIC) {
                    return Some(offset);
                }
            }
        }
    }
    // The header is 16-byte aligned wherever the linker put it.
    (0..data.len().saturating_sub(32)).step_by(16).find(|&i| data[i..].starts_with(MAGIC))
}

fn varint_string(data: &[u8], at: &mut usize) -> Result<String, String> {
    let mut len: u64 = 0;
    let mut shift = 0;
    loop {
        let b = *data.get(*at).ok_or("truncated Go build information")?;
        *at += 1;
        len |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 63 {
            return Err("bad length in Go build information".into());
        }
    }
    if len > MAX_MODINFO {
        return Err(format!("Go build information claims {len} bytes"));
    }
    let end = at.checked_add(len as usize).ok_or("bad length")?;
    let bytes = data.get(*at..end).ok_or("truncated Go build information")?;
    *at = end;
    Ok(String::from_utf8_lossy(bytes).into_owned())
}

fn read_ptr(bytes: &[u8], size: usize, big_endian: bool) -> Option<u64> {
    let b = bytes.get(..size)?;
    Some(match (size, big_endian) {
        (4, false) => u64::from(u32::from_le_bytes(b.try_into().ok()?)),
        (4, true) => u64::from(u32::from_be_bytes(b.try_into().ok()?)),
        (_, false) => u64::from_le_bytes(b.try_into().ok()?),
        (_, true) => u64::from_be_bytes(b.try_into().ok()?),
    })
}

/// Before Go 1.18 the header points at Go string headers (pointer, length)
/// in the data segment.
fn pointed_string(
    file: &object::File<'_>,
    header: &[u8],
    at: usize,
    size: usize,
    big_endian: bool,
) -> Result<String, String> {
    use object::{Object, ObjectSegment};
    let read =
        |addr: u64, len: u64| -> Option<&[u8]> { file.segments().find_map(|s| s.data_range(addr, len).ok().flatten()) };
    let bad = || "Go build information points outside the binary".to_owned();
    let header_addr = read_ptr(header.get(at..).ok_or_else(bad)?, size, big_endian).ok_or_else(bad)?;
    let string_header = read(header_addr, 2 * size as u64).ok_or_else(bad)?;
    let data_addr = read_ptr(string_header, size, big_endian).ok_or_else(bad)?;
    let len = read_ptr(&string_header[size..], size, big_endian).ok_or_else(bad)?;
    if len > MAX_MODINFO {
        return Err(format!("Go build information claims {len} bytes"));
    }
    Ok(String::from_utf8_lossy(read(data_addr, len).ok_or_else(bad)?).into_owned())
}

/// The modules of a module-info string.
fn modules(modinfo: &str) -> Vec<Package> {
    let mut info = modinfo;
    // Sentinels of 16 bytes surround the text.
    if info.len() >= 33
        && info.as_bytes()[info.len() - 17] == b'\n'
        && info.is_char_boundary(16)
        && info.is_char_boundary(info.len() - 16)
    {
        info = &info[16..info.len() - 16];
    }
    let mut out: Vec<Package> = Vec::new();
    for line in info.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        match f.as_slice() {
            ["mod", path, version, ..] if *version != "(devel)" && !version.is_empty() => {
                out.push(Package::new(PackageType::Golang, *path, *version));
            }
            ["dep", path, version, ..] => out.push(Package::new(PackageType::Golang, *path, *version)),
            ["=>", path, version, ..] => {
                if let Some(last) = out.last_mut() {
                    // A local directory replacement has no version: keep the
                    // one required.
                    if !version.is_empty() {
                        last.name = (*path).to_owned();
                        last.version = (*version).to_owned();
                    }
                }
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inline_binary(version: &str, modinfo: &str) -> Vec<u8> {
        let mut data = vec![0u8; 48];
        let mut h = MAGIC.to_vec();
        h.extend([8, 2]);
        h.resize(32, 0);
        for s in [version, modinfo] {
            let mut n = s.len();
            loop {
                let b = (n & 0x7f) as u8;
                n >>= 7;
                if n == 0 {
                    h.push(b);
                    break;
                }
                h.push(b | 0x80);
            }
            h.extend_from_slice(s.as_bytes());
        }
        data.extend(h);
        data
    }

    #[test]
    fn inline_build_information() {
        let sentinel = "0123456789abcdef";
        let modinfo = format!(
            "{sentinel}path\texample.com/app\nmod\texample.com/app\t(devel)\t\ndep\tgolang.org/x/text\tv0.3.7\th1:x=\n\
dep\tgithub.com/a/b\tv1.0.0\th1:y=\n=>\tgithub.com/fork/b\tv1.0.1\th1:z=\nbuild\t-compiler=gc\n{sentinel}"
        );
        let pkgs = parse(&inline_binary("go1.21rc2", &modinfo)).unwrap().unwrap();
        let got: Vec<String> = pkgs.iter().map(|p| format!("{}@{}", p.name, p.version)).collect();
        assert_eq!(got, ["stdlib@1.21.0-rc.2", "golang.org/x/text@v0.3.7", "github.com/fork/b@v1.0.1"]);
        assert_eq!(go_version("go1.22.2"), "1.22.2");
        assert_eq!(go_version("go1.22"), "1.22.0");
        assert_eq!(go_version("go1.20.1 X:boringcrypto"), "1.20.1");
        assert!(parse(b"\x7fELF not really").unwrap().is_none());
        let mut truncated = inline_binary("go1.22.0", "x");
        truncated.truncate(truncated.len() - 4);
        assert!(parse(&truncated).is_err());
    }
}
