//! Reading advisory sources from disk: a directory of OSV JSON files (any
//! depth), osv.dev's per-ecosystem zip exports, single OSV files, and the
//! RustSec advisory-db directory (`crates/<name>/RUSTSEC-*.md`).

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{osv, rustsec, Entry};

/// The largest advisory file read.
const MAX_RECORD: u64 = 16 << 20;

/// What one source contributed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceInfo {
    pub path: String,
    /// `osv`, `osv-zip` or `rustsec`.
    pub kind: String,
    /// Advisory files read, entries (advisory × package) kept, files
    /// skipped as withdrawn or informational, and files refused.
    pub records: u64,
    pub entries: u64,
    pub skipped: u64,
    pub refused: u64,
    /// The RustSec snapshot's own description (its SNAPSHOT file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// The first refusals, for the operator.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

impl SourceInfo {
    fn refuse(&mut self, what: &Path, why: &str) {
        self.refused += 1;
        if self.problems.len() < 20 {
            self.problems.push(format!("{}: {why}", what.display()));
        }
    }

    fn osv(&mut self, what: &Path, data: &[u8], out: &mut Vec<Entry>) {
        self.records += 1;
        // A file may hold one record or an array of them.
        if data.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
            match serde_json::from_slice::<Vec<serde_json::Value>>(data) {
                Ok(items) => {
                    self.records += items.len().saturating_sub(1) as u64;
                    for item in items {
                        let bytes = serde_json::to_vec(&item).unwrap_or_default();
                        self.one_osv(what, &bytes, out);
                    }
                }
                Err(e) => self.refuse(what, &e.to_string()),
            }
        } else {
            self.one_osv(what, data, out);
        }
    }

    fn one_osv(&mut self, what: &Path, data: &[u8], out: &mut Vec<Entry>) {
        match osv::parse(data) {
            Ok(e) if e.is_empty() => self.skipped += 1,
            Ok(e) => {
                self.entries += e.len() as u64;
                out.extend(e);
            }
            Err(e) => self.refuse(what, &e),
        }
    }
}

/// Read one source (file or directory) into entries.
pub fn read_source(path: &Path, out: &mut Vec<Entry>) -> Result<SourceInfo, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut info = SourceInfo { path: path.display().to_string(), ..Default::default() };
    if meta.is_dir() {
        if path.join("crates").is_dir() {
            info.kind = "rustsec".into();
            info.snapshot = std::fs::read_to_string(path.join("SNAPSHOT"))
                .ok()
                .map(|s| s.lines().next().unwrap_or_default().to_owned());
            for file in walk(&path.join("crates"))? {
                if file.extension().is_some_and(|e| e == "md") {
                    info.records += 1;
                    match read_limited(&file).and_then(|d| String::from_utf8(d).map_err(|_| "not UTF-8".into())) {
                        Ok(text) => match rustsec::parse(&text) {
                            Ok(Some(e)) => {
                                info.entries += 1;
                                out.push(e);
                            }
                            Ok(None) => info.skipped += 1,
                            Err(e) => info.refuse(&file, &e),
                        },
                        Err(e) => info.refuse(&file, &e),
                    }
                }
            }
        } else {
            info.kind = "osv".into();
            for file in walk(path)? {
                match file.extension().and_then(|e| e.to_str()) {
                    Some("json") => match read_limited(&file) {
                        Ok(d) => info.osv(&file, &d, out),
                        Err(e) => info.refuse(&file, &e),
                    },
                    Some("zip") => read_zip(&file, &mut info, out)?,
                    _ => {}
                }
            }
        }
    } else if path.extension().is_some_and(|e| e == "zip") {
        info.kind = "osv-zip".into();
        read_zip(path, &mut info, out)?;
    } else {
        info.kind = "osv".into();
        let d = read_limited(path)?;
        info.osv(path, &d, out);
    }
    if info.records == 0 {
        return Err(format!(
            "{}: no advisories found (an OSV directory, zip or file, or a RustSec advisory-db)",
            path.display()
        ));
    }
    Ok(info)
}

fn read_limited(path: &Path) -> Result<Vec<u8>, String> {
    let f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut data = Vec::new();
    f.take(MAX_RECORD + 1).read_to_end(&mut data).map_err(|e| e.to_string())?;
    if data.len() as u64 > MAX_RECORD {
        return Err(format!("larger than {MAX_RECORD} bytes"));
    }
    Ok(data)
}

fn read_zip(path: &Path, info: &mut SourceInfo, out: &mut Vec<Entry>) -> Result<(), String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| format!("{}: not a zip archive: {e}", path.display()))?;
    for i in 0..zip.len() {
        let mut f = match zip.by_index(i) {
            Ok(f) => f,
            Err(e) => {
                info.refuse(path, &e.to_string());
                continue;
            }
        };
        if !f.is_file() || !f.name().ends_with(".json") {
            continue;
        }
        let name = PathBuf::from(format!("{}!{}", path.display(), f.name()));
        let mut data = Vec::new();
        if let Err(e) = (&mut f).take(MAX_RECORD + 1).read_to_end(&mut data) {
            info.refuse(&name, &e.to_string());
            continue;
        }
        if data.len() as u64 > MAX_RECORD {
            info.refuse(&name, "larger than the record limit");
            continue;
        }
        info.osv(&name, &data, out);
    }
    Ok(())
}

/// Every file under `dir`, sorted (symbolic links are not followed).
fn walk(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|e| format!("{}: {e}", d.display()))?;
        for e in entries {
            let e = e.map_err(|e| format!("{}: {e}", d.display()))?;
            let kind = e.file_type().map_err(|e| e.to_string())?;
            if kind.is_dir() {
                stack.push(e.path());
            } else if kind.is_file() {
                out.push(e.path());
            }
        }
    }
    out.sort();
    Ok(out)
}
