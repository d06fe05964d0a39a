//! The OSV format (one JSON object per advisory): each `affected` package
//! becomes an [`Entry`]. Withdrawn advisories and GIT ranges are left out.

use serde::Deserialize;
use serde_json::Value;

use super::cvss::{self, Severity};
use super::{Entry, Event, Range};

#[derive(Deserialize)]
struct Osv {
    id: String,
    #[serde(default)]
    withdrawn: Option<String>,
    #[serde(default)]
    aliases: Vec<String>,
    #[serde(default)]
    summary: Option<String>,
    #[serde(default)]
    details: Option<String>,
    #[serde(default)]
    severity: Vec<OsvSeverity>,
    #[serde(default)]
    affected: Vec<Affected>,
    #[serde(default)]
    references: Vec<Reference>,
    #[serde(default)]
    database_specific: Option<Value>,
}

#[derive(Deserialize)]
struct OsvSeverity {
    #[serde(rename = "type")]
    kind: String,
    score: String,
}

#[derive(Deserialize)]
struct Affected {
    package: Option<Package>,
    #[serde(default)]
    severity: Vec<OsvSeverity>,
    #[serde(default)]
    ranges: Vec<OsvRange>,
    #[serde(default)]
    versions: Vec<String>,
    #[serde(default)]
    ecosystem_specific: Option<Value>,
    #[serde(default)]
    database_specific: Option<Value>,
}

#[derive(Deserialize)]
struct Package {
    ecosystem: String,
    name: String,
}

#[derive(Deserialize)]
struct OsvRange {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    events: Vec<Value>,
}

#[derive(Deserialize)]
struct Reference {
    #[serde(default)]
    url: String,
}

/// A severity from CVSS vectors (v3 first, then v2), else the source's
/// own word in `database_specific` or `ecosystem_specific`.
fn severity(scores: &[OsvSeverity], specific: &[Option<&Value>]) -> (Severity, Option<f64>, Option<String>) {
    let mut vector = None;
    for prefer in ["CVSS_V3", "CVSS_V2", "CVSS_V4"] {
        for s in scores.iter().filter(|s| s.kind == prefer) {
            if vector.is_none() {
                vector = Some(s.score.clone());
            }
            if let Some(score) = cvss::score(&s.score) {
                return (Severity::from_score(score), Some(score), Some(s.score.clone()));
            }
        }
    }
    for v in specific.iter().flatten() {
        for key in ["severity", "urgency", "priority", "cvss_severity"] {
            if let Some(word) = v.get(key).and_then(Value::as_str) {
                if let Some(sev) = Severity::from_word(word) {
                    return (sev, None, vector);
                }
            }
        }
    }
    (Severity::Unknown, None, vector)
}

/// The entries of one OSV document; `Ok(empty)` for a withdrawn one.
pub fn parse(data: &[u8]) -> Result<Vec<Entry>, String> {
    let osv: Osv = serde_json::from_slice(data).map_err(|e| format!("not an OSV record: {e}"))?;
    if osv.id.is_empty() {
        return Err("an OSV record without an id".into());
    }
    if osv.withdrawn.is_some() {
        return Ok(Vec::new());
    }
    let summary = osv
        .summary
        .filter(|s| !s.is_empty())
        .or_else(|| osv.details.map(|d| d.lines().next().unwrap_or_default().chars().take(200).collect()))
        .unwrap_or_default();
    let url = osv.references.iter().map(|r| r.url.clone()).find(|u| !u.is_empty());
    let mut out = Vec::new();
    for a in osv.affected {
        let Some(pkg) = a.package else { continue };
        let mut ranges = Vec::new();
        for r in a.ranges {
            let semver = match r.kind.as_str() {
                "SEMVER" => true,
                "ECOSYSTEM" => false,
                _ => continue, // GIT: commits, not versions
            };
            let mut events = Vec::new();
            for e in r.events {
                let Some(obj) = e.as_object() else { continue };
                for (k, v) in obj {
                    let Some(v) = v.as_str() else { continue };
                    let v = v.to_owned();
                    events.push(match k.as_str() {
                        "introduced" => Event::Introduced(v),
                        "fixed" => Event::Fixed(v),
                        "last_affected" => Event::LastAffected(v),
                        "limit" => Event::Limit(v),
                        _ => continue,
                    });
                }
            }
            if !events.is_empty() {
                ranges.push(Range { semver, events });
            }
        }
        let scores = if a.severity.is_empty() { &osv.severity } else { &a.severity };
        let (sev, score, vector) = severity(
            scores,
            &[a.ecosystem_specific.as_ref(), a.database_specific.as_ref(), osv.database_specific.as_ref()],
        );
        if ranges.is_empty() && a.versions.is_empty() {
            continue;
        }
        out.push(Entry {
            id: osv.id.clone(),
            aliases: osv.aliases.clone(),
            summary: summary.clone(),
            severity: sev,
            score,
            vector,
            ecosystem: pkg.ecosystem,
            name: pkg.name,
            ranges,
            versions: a.versions,
            cargo: None,
            url: url.clone(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn osv_documents() {
        let doc = br#"{"schema_version":"1.6.0","id":"GHSA-xxxx","modified":"2024-01-01T00:00:00Z",
          "aliases":["CVE-2024-1"],"summary":"bad thing",
          "severity":[{"type":"CVSS_V3","score":"CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"}],
          "affected":[{"package":{"ecosystem":"npm","name":"lodash"},
             "ranges":[{"type":"SEMVER","events":[{"introduced":"0"},{"fixed":"4.17.21"}]},
                       {"type":"GIT","repo":"x","events":[{"introduced":"abc"}]}]},
             {"package":{"ecosystem":"PyPI","name":"x"},"versions":["1.0"],"database_specific":{"severity":"LOW"}}],
          "references":[{"type":"WEB","url":"https://example.invalid/a"}]}"#;
        let e = parse(doc).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!((e[0].severity, e[0].score), (Severity::Critical, Some(9.8)));
        assert_eq!(e[0].ranges.len(), 1);
        assert!(e[0].ranges[0].semver);
        // Per-package severity is absent: the record's vector applies.
        assert_eq!(e[1].severity, Severity::Critical);
        assert_eq!(e[0].url.as_deref(), Some("https://example.invalid/a"));
        let withdrawn = br#"{"id":"X","withdrawn":"2024-01-01T00:00:00Z","affected":[]}"#;
        assert!(parse(withdrawn).unwrap().is_empty());
        assert!(parse(b"{").is_err());
        assert!(parse(br#"{"id":""}"#).is_err());
        let word = br#"{"id":"DEBIAN-CVE-1","affected":[{"package":{"ecosystem":"Debian:12","name":"glibc"},
            "ranges":[{"type":"ECOSYSTEM","events":[{"introduced":"0"}]}],"ecosystem_specific":{"urgency":"high"}}]}"#;
        assert_eq!(parse(word).unwrap()[0].severity, Severity::High);
    }
}
