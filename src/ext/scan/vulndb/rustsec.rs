//! RustSec's advisory format: a Markdown file whose first block is TOML
//! (```` ```toml ````) with `[advisory]` (id, package, aliases, cvss,
//! withdrawn, informational) and `[versions]` (patched and unaffected
//! Cargo requirements); the first `# ` heading is the title.
//! Informational advisories (unmaintained, notices) are no
//! vulnerabilities and are left out, as are withdrawn ones.

use serde::Deserialize;

use super::cvss::{self, Severity};
use super::{CargoReqs, Entry};

#[derive(Deserialize)]
struct Doc {
    advisory: Advisory,
    #[serde(default)]
    versions: Versions,
}

#[derive(Deserialize)]
struct Advisory {
    id: String,
    package: String,
    #[serde(default)]
    aliases: Vec<String>,
    #[serde(default)]
    cvss: Option<String>,
    #[serde(default)]
    withdrawn: Option<toml::Value>,
    #[serde(default)]
    informational: Option<String>,
    #[serde(default)]
    url: Option<String>,
}

#[derive(Deserialize, Default)]
struct Versions {
    #[serde(default)]
    patched: Vec<String>,
    #[serde(default)]
    unaffected: Vec<String>,
}

/// `Ok(None)` for advisories that are no vulnerability (informational,
/// withdrawn).
pub fn parse(text: &str) -> Result<Option<Entry>, String> {
    let body = text.trim_start().strip_prefix("```toml").ok_or("no ```toml front matter")?;
    let (front, rest) = body.split_once("\n```").ok_or("unterminated ```toml front matter")?;
    let doc: Doc = toml::from_str(front).map_err(|e| format!("front matter: {}", e.message()))?;
    let a = doc.advisory;
    if a.withdrawn.is_some() || a.informational.is_some() {
        return Ok(None);
    }
    let title = rest.lines().find_map(|l| l.strip_prefix("# ")).unwrap_or_default().trim().to_owned();
    let (severity, score) = match a.cvss.as_deref().and_then(cvss::score) {
        Some(s) => (Severity::from_score(s), Some(s)),
        None => (Severity::Unknown, None),
    };
    Ok(Some(Entry {
        url: Some(a.url.unwrap_or_else(|| format!("https://rustsec.org/advisories/{}.html", a.id))),
        id: a.id,
        aliases: a.aliases,
        summary: title,
        severity,
        score,
        vector: a.cvss,
        ecosystem: "crates.io".into(),
        name: a.package,
        ranges: Vec::new(),
        versions: Vec::new(),
        cargo: Some(CargoReqs { patched: doc.versions.patched, unaffected: doc.versions.unaffected }),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advisory_files() {
        let md = "```toml\n[advisory]\nid = \"RUSTSEC-2020-0071\"\npackage = \"time\"\ndate = \"2020-11-18\"\n\
cvss = \"CVSS:3.1/AV:L/AC:L/PR:N/UI:N/S:U/C:N/I:N/A:H\"\naliases = [\"CVE-2020-26235\"]\n\n[versions]\n\
patched = [\">= 0.2.23\"]\nunaffected = [\"=0.2.0\"]\n```\n\n# Potential segfault in the time crate\n\nBody.\n";
        let e = parse(md).unwrap().unwrap();
        assert_eq!(
            (e.id.as_str(), e.name.as_str(), e.summary.as_str()),
            ("RUSTSEC-2020-0071", "time", "Potential segfault in the time crate")
        );
        assert_eq!((e.severity, e.score), (Severity::Medium, Some(6.2)));
        let info =
            "```toml\n[advisory]\nid = \"RUSTSEC-1\"\npackage = \"x\"\ninformational = \"unmaintained\"\n```\n# t\n";
        assert!(parse(info).unwrap().is_none());
        assert!(parse("# no front matter").is_err());
    }
}
