//! One layer, streamed: decompress (gzip, zstd or none, told apart by their
//! magic bytes), walk the tar entries once, hand the files analyzers want
//! to them, and record whiteouts. Hostile layers are bounded: the bytes
//! decompressed (against a bomb), the entries, the size of any file read
//! into memory; a problem with one entry is a warning, a problem with the
//! stream ends the layer with an error. Never panics, never reads a file
//! nobody asked for.

use std::io::{self, BufRead, BufReader, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::analyzers::{apk, cargo, dpkg, golang, npm, os, python, rpm};
use super::inventory::{FileFacts, LayerInventory, OsRelease, Package, FORMAT};

/// Every analyzer, by the name reports use.
pub const ANALYZERS: [&str; 10] =
    ["os-release", "dpkg", "apk", "rpm", "python", "npm", "npm-lock", "cargo-lock", "cargo-auditable", "gobinary"];

/// Bounds on what one layer may cost.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Decompressed bytes may reach `ratio` times the compressed bytes...
    pub ratio: u64,
    /// ...but at least this many, and never more than `max_uncompressed`.
    pub floor: u64,
    pub max_uncompressed: u64,
    pub max_entries: u64,
    /// The largest package database or manifest read into memory.
    pub max_file: u64,
    /// The largest executable read into memory to look for build info.
    pub max_binary: u64,
    /// All bytes read into memory for analysis in one layer (databases,
    /// manifests, executables, sparse holes included).
    pub max_analyzed: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            ratio: 100,
            floor: 256 << 20,
            max_uncompressed: 64 << 30,
            max_entries: 2_000_000,
            max_file: 64 << 20,
            max_binary: 256 << 20,
            max_analyzed: 2 << 30,
        }
    }
}

#[derive(Debug)]
struct Counters {
    compressed: AtomicU64,
    uncompressed: AtomicU64,
    /// How far the tar reader may read before the walker sees the next
    /// entry: the unread rest of the current entry plus room for headers.
    /// A long name or pax record bigger than that room is refused before
    /// the tar reader holds it in memory.
    fence: AtomicU64,
    /// The blob's stored size.
    stored: u64,
}

/// Room for the headers between two entries (long names, pax records).
const HEADER_ROOM: u64 = 1 << 20;

struct Counting<R> {
    inner: R,
    counter: Arc<Counters>,
    compressed: bool,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let c = if self.compressed { &self.counter.compressed } else { &self.counter.uncompressed };
        c.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// The decompressed stream, refusing to go past the bomb limit.
struct Bounded<R> {
    inner: Counting<R>,
    limits: Limits,
}

const BOMB: &str = "decompression bomb";
const FENCE: &str = "extension header";

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let c = &self.inner.counter;
        let allowed = (c.compressed.load(Ordering::Relaxed).max(c.stored).saturating_mul(self.limits.ratio))
            .max(self.limits.floor)
            .min(self.limits.max_uncompressed);
        let at = c.uncompressed.load(Ordering::Relaxed);
        if at > allowed {
            return Err(io::Error::other(BOMB));
        }
        if at > c.fence.load(Ordering::Relaxed) {
            return Err(io::Error::other(FENCE));
        }
        self.inner.read(buf)
    }
}

/// Strip `./` and `/`, resolve `.` and `..` lexically; `None` when the name
/// climbs out of the root or is empty.
pub fn normalize(raw: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for part in raw.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// Paths whose symbolic or hard links are recorded (resolved at merge).
fn link_wanted(path: &str) -> bool {
    os::PATHS.contains(&path)
}

enum Want {
    OsRelease,
    Dpkg,
    Apk,
    RpmSqlite,
    RpmUnsupported(&'static str),
    CargoLock,
    Python,
    NpmManifest,
    NpmLock,
}

fn want(path: &str) -> Option<Want> {
    if os::PATHS.contains(&path) {
        return Some(Want::OsRelease);
    }
    if dpkg::matches(path) {
        return Some(Want::Dpkg);
    }
    if path == apk::PATH {
        return Some(Want::Apk);
    }
    if rpm::SQLITE_PATHS.contains(&path) {
        return Some(Want::RpmSqlite);
    }
    if let Some((_, format)) = rpm::UNSUPPORTED.iter().find(|(p, _)| *p == path) {
        return Some(Want::RpmUnsupported(format));
    }
    if cargo::is_lockfile(path) {
        return Some(Want::CargoLock);
    }
    if python::matches(path) {
        return Some(Want::Python);
    }
    if npm::is_lockfile(path) {
        return Some(Want::NpmLock);
    }
    if npm::is_installed_manifest(path) {
        return Some(Want::NpmManifest);
    }
    None
}

/// The most packages one layer may list, and warnings it may carry.
pub const MAX_PACKAGES: usize = 200_000;
const MAX_WARNINGS: usize = 100;

/// At most `max` characters of a name taken from the layer, for messages.
fn shown(name: &str) -> String {
    let mut out: String = name.chars().take(200).collect();
    if out.len() < name.len() {
        out.push('…');
    }
    out
}

fn warn(inv: &mut LayerInventory, dropped: &mut u64, message: String) {
    if inv.warnings.len() < MAX_WARNINGS {
        inv.warnings.push(message);
    } else {
        *dropped += 1;
    }
}

/// Analyze one layer blob. Errors land in the inventory, never in a panic.
/// `size` is the blob's stored size: the decompression limit is a ratio of
/// it (a layer of text that compresses 1000 to 1 early on is no bomb as
/// long as the whole stays within the ratio).
pub fn analyze<R: Read>(digest: &str, blob: R, limits: &Limits, size: u64) -> LayerInventory {
    let counters = Arc::new(Counters {
        compressed: AtomicU64::new(0),
        uncompressed: AtomicU64::new(0),
        fence: AtomicU64::new(HEADER_ROOM),
        stored: size,
    });
    let mut inv = LayerInventory { format: FORMAT, digest: digest.to_owned(), ..Default::default() };
    let mut input =
        BufReader::with_capacity(64 << 10, Counting { inner: blob, counter: counters.clone(), compressed: true });
    let magic = match input.fill_buf() {
        Ok(b) => b.get(..4).map(<[u8]>::to_vec).unwrap_or_else(|| b.to_vec()),
        Err(e) => {
            inv.errors.push(format!("the layer cannot be read: {e}"));
            return inv;
        }
    };
    let decoded: Box<dyn Read> = if magic.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::MultiGzDecoder::new(input))
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        match ruzstd::decoding::StreamingDecoder::new(input) {
            Ok(d) => Box::new(d),
            Err(e) => {
                inv.errors.push(format!("the layer is not valid zstd: {e}"));
                return inv;
            }
        }
    } else {
        Box::new(input)
    };
    let stream = Bounded {
        inner: Counting { inner: decoded, counter: counters.clone(), compressed: false },
        limits: limits.clone(),
    };
    let mut dropped = 0u64;
    walk(stream, limits, &mut inv, &mut dropped, &counters);
    if dropped > 0 {
        inv.warnings.push(format!("... and {dropped} more warnings"));
    }
    inv.compressed_bytes = counters.compressed.load(Ordering::Relaxed);
    inv.uncompressed_bytes = counters.uncompressed.load(Ordering::Relaxed);
    inv.files.sort_by(|a, b| a.path.cmp(&b.path));
    inv
}

fn stream_error(e: &io::Error, entries: u64) -> String {
    if e.to_string().contains(FENCE) {
        format!("a tar extension header (long name or pax records) over {HEADER_ROOM} bytes after {entries} entries; the rest was not analyzed")
    } else if e.to_string().contains(BOMB) {
        format!("decompression bomb: the layer inflates past its limit (after {entries} entries); the rest was not analyzed")
    } else if entries == 0 {
        format!("not a tar archive (plain, gzip or zstd): {e}")
    } else {
        format!("the layer's tar stream breaks after {entries} entries: {e}")
    }
}

fn walk<R: Read>(stream: R, limits: &Limits, inv: &mut LayerInventory, dropped: &mut u64, counters: &Counters) {
    let mut archive = tar::Archive::new(stream);
    let entries = match archive.entries() {
        Ok(e) => e,
        Err(e) => {
            inv.errors.push(stream_error(&e, 0));
            return;
        }
    };
    let mut analyzed = 0u64;
    for entry in entries {
        let mut entry = match entry {
            Ok(e) => e,
            Err(e) => {
                inv.errors.push(stream_error(&e, inv.entries));
                return;
            }
        };
        inv.entries += 1;
        // What the archive holds for this entry (a sparse file's data only).
        let unread = if entry.header().entry_type().is_gnu_sparse() {
            entry.header().entry_size().unwrap_or(u64::MAX)
        } else {
            entry.size()
        };
        // The fence: this entry's data (read by us or skipped by the tar
        // reader) and then the next entry's headers; nothing more.
        let here = counters.uncompressed.load(Ordering::Relaxed);
        counters.fence.store(here.saturating_add(unread).saturating_add(HEADER_ROOM + 1024), Ordering::Relaxed);
        if inv.entries > limits.max_entries {
            inv.errors.push(format!("more than {} entries; the rest was not analyzed", limits.max_entries));
            return;
        }
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        if raw.len() > 4096 {
            warn(inv, dropped, format!("an entry name of {} bytes was ignored", raw.len()));
            continue;
        }
        let Some(path) = normalize(&raw) else {
            if !matches!(raw.trim_matches('/'), "" | ".") {
                warn(inv, dropped, format!("entry {:?} escapes the layer's root and was ignored", shown(&raw)));
            }
            continue;
        };
        let (dir, base) = match path.rsplit_once('/') {
            Some((d, b)) => (d, b),
            None => ("", path.as_str()),
        };
        if let Some(hidden) = base.strip_prefix(".wh.") {
            if hidden == ".wh..opq" {
                inv.opaque_dirs.push(dir.to_owned());
            } else if !hidden.starts_with(".wh.") && !hidden.is_empty() {
                inv.whiteouts.push(if dir.is_empty() { hidden.to_owned() } else { format!("{dir}/{hidden}") });
            }
            continue;
        }
        let kind = entry.header().entry_type();
        if kind.is_symlink() || kind.is_hard_link() {
            if link_wanted(&path) {
                let target =
                    entry.link_name_bytes().map(|t| String::from_utf8_lossy(&t).into_owned()).unwrap_or_default();
                let target = if kind.is_hard_link() { format!("/{}", target.trim_start_matches('/')) } else { target };
                inv.links.insert(path, target);
            }
            continue;
        }
        if !(kind.is_file() || kind == tar::EntryType::Continuous || kind.is_gnu_sparse()) {
            continue;
        }
        // A sparse file's size is what it expands to, not its bytes here.
        let sparse = kind.is_gnu_sparse();
        let size = if sparse { entry.header().size().unwrap_or(u64::MAX) } else { entry.size() };
        let executable = entry.header().mode().map(|m| m & 0o111 != 0).unwrap_or(false);
        if executable {
            // Replaces whatever a lower layer had at this path (a Go binary
            // replaced by a script no longer lists Go modules).
            inv.executables.push(path.clone());
        }
        if let Some(w) = want(&path) {
            if let Want::RpmUnsupported(format) = w {
                warn(
                    inv,
                    dropped,
                    format!("{path}: a {format} rpmdb, which is not supported (only the SQLite rpmdb is); its packages are not listed"),
                );
                push(inv, path, "rpm", Vec::new());
                continue;
            }
            if size > limits.max_file || analyzed.saturating_add(size) > limits.max_analyzed {
                warn(
                    inv,
                    dropped,
                    format!(
                        "{path}: {size} bytes, over the {} byte limit for a file to analyze; not analyzed",
                        limits.max_file
                    ),
                );
                // Still a file at this path: it hides what lower layers had.
                placeholder(inv, path, &w);
                continue;
            }
            analyzed += size;
            let data = match read_all(&mut entry, size) {
                Ok(d) => d,
                Err(e) => {
                    inv.errors.push(stream_error(&e, inv.entries));
                    return;
                }
            };
            analyze_file(inv, dropped, path, w, &data);
            continue;
        }
        // Sparse executables are no build output worth expanding.
        if executable && !sparse && size >= 64 {
            let mut magic = [0u8; 4];
            if let Err(e) = entry.read_exact(&mut magic) {
                inv.errors.push(stream_error(&e, inv.entries));
                return;
            }
            if &magic != b"\x7fELF" {
                continue;
            }
            if size > limits.max_binary || analyzed.saturating_add(size) > limits.max_analyzed {
                warn(
                    inv,
                    dropped,
                    format!(
                        "{path}: an executable of {size} bytes, over the {} byte limit; not analyzed",
                        limits.max_binary
                    ),
                );
                continue;
            }
            analyzed += size;
            let mut data = magic.to_vec();
            match read_all(&mut entry, size - 4) {
                Ok(rest) => data.extend(rest),
                Err(e) => {
                    inv.errors.push(stream_error(&e, inv.entries));
                    return;
                }
            }
            analyze_binary(inv, dropped, path, &data);
        }
        if inv.files.iter().map(|f| f.packages.len()).sum::<usize>() > MAX_PACKAGES {
            inv.errors.push(format!("more than {MAX_PACKAGES} packages in one layer; the rest was not analyzed"));
            return;
        }
    }
}

/// The record of a wanted file that could not be read: present, listing
/// nothing, so it still replaces a lower layer's file at that path.
fn placeholder(inv: &mut LayerInventory, path: String, w: &Want) {
    match w {
        Want::OsRelease => {
            inv.os_release.insert(path, OsRelease::default());
        }
        _ => push(inv, path, "unreadable", Vec::new()),
    }
}

fn read_all<R: Read>(r: &mut R, size: u64) -> io::Result<Vec<u8>> {
    let mut data = Vec::with_capacity(size.min(64 << 20) as usize);
    r.take(size).read_to_end(&mut data)?;
    Ok(data)
}

fn push(inv: &mut LayerInventory, path: String, analyzer: &str, packages: Vec<Package>) {
    inv.files.push(FileFacts { path, analyzer: analyzer.to_owned(), packages });
}

fn analyze_file(inv: &mut LayerInventory, dropped: &mut u64, path: String, w: Want, data: &[u8]) {
    match w {
        Want::OsRelease => match os::parse(data) {
            Some(o) => {
                inv.os_release.insert(path, o);
            }
            None => {
                warn(inv, dropped, format!("{path}: no ID in this os-release file"));
                placeholder(inv, path, &w);
            }
        },
        Want::Dpkg => push(inv, path, "dpkg", dpkg::parse(data)),
        Want::Apk => push(inv, path, "apk", apk::parse(data)),
        Want::RpmSqlite => match rpm::parse_sqlite(data) {
            Ok(p) => push(inv, path, "rpm", p),
            Err(e) => {
                warn(inv, dropped, format!("{path}: {e}"));
                push(inv, path, "rpm", Vec::new());
            }
        },
        Want::RpmUnsupported(_) => {}
        Want::CargoLock => match cargo::parse_lockfile(data) {
            Ok(p) => push(inv, path, "cargo-lock", p),
            Err(e) => {
                warn(inv, dropped, format!("{path}: {e}"));
                placeholder(inv, path, &w);
            }
        },
        Want::Python => match python::parse(data) {
            Some(p) => push(inv, path, "python", vec![p]),
            None => {
                warn(inv, dropped, format!("{path}: no Name and Version"));
                placeholder(inv, path, &w);
            }
        },
        Want::NpmManifest => match npm::parse_manifest(data) {
            Some(p) => push(inv, path, "npm", vec![p]),
            // A package.json of a package's own sources: no package.
            None => placeholder(inv, path, &w),
        },
        Want::NpmLock => match npm::parse_lockfile(data) {
            Ok(p) => push(inv, path, "npm-lock", p),
            Err(e) => {
                warn(inv, dropped, format!("{path}: {e}"));
                placeholder(inv, path, &w);
            }
        },
    }
}

fn analyze_binary(inv: &mut LayerInventory, dropped: &mut u64, path: String, data: &[u8]) {
    use object::{Object, ObjectSection};
    if let Ok(file) = object::File::parse(data) {
        if let Some(section) = file.section_by_name(".dep-v0") {
            match section.data().map_err(|e| e.to_string()).and_then(cargo::parse_audit_section) {
                Ok(p) => push(inv, path.clone(), "cargo-auditable", p),
                Err(e) => warn(inv, dropped, format!("{path}: {e}")),
            }
        }
    }
    match golang::parse(data) {
        Ok(Some(p)) => push(inv, path, "gobinary", p),
        Ok(None) => {}
        Err(e) => warn(inv, dropped, format!("{path}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_normalize() {
        assert_eq!(normalize("./etc/os-release").as_deref(), Some("etc/os-release"));
        assert_eq!(normalize("/usr//lib/../lib/os-release").as_deref(), Some("usr/lib/os-release"));
        assert_eq!(normalize("../../etc/passwd"), None);
        assert_eq!(normalize("a/../../b"), None);
        assert_eq!(normalize("./"), None);
    }
}
