//! A scan report: an image's merged inventory matched against one version
//! of the vulnerability database, and its renderings (JSON, CycloneDX with
//! the findings as VEX, SARIF, a terminal table).

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::inventory::{OsRelease, PackageType};
use super::merge::{ImageInventory, Located};
use super::version::Scheme;
use super::vulndb::{normalize_name, scheme_of, shard_of, split_ecosystem, Entry, Severity, Verdict};

/// One vulnerability in one installed package.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    pub id: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    pub package: String,
    #[serde(rename = "type")]
    pub kind: PackageType,
    pub installed_version: String,
    /// The version the advisory was matched on when it differs (the source
    /// package's, for Debian and Alpine).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matched: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed_version: Option<String>,
    pub severity: Severity,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vector: Option<String>,
    pub layer: String,
    pub path: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub summary: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
}

/// One image (one platform of an index).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlatformReport {
    pub manifest: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    pub os: Option<OsRelease>,
    pub package_count: usize,
    /// Packages found, by analyzer.
    pub analyzers: BTreeMap<String, usize>,
    /// The analyzers that found nothing (an image without an OS database
    /// lists `os-release`, `dpkg`, `apk` and `rpm` here; that is no error).
    pub nothing_found: Vec<String>,
    pub packages: Vec<Located>,
    pub layers: Vec<LayerSummary>,
    /// Packages whose ecosystem the database cannot speak to (no OS
    /// detected for OS packages, say), and versions it could not order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerSummary {
    pub digest: String,
    pub entries: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    pub repository: String,
    pub reference: String,
    pub digest: String,
    pub media_type: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseRef {
    pub version: String,
    /// Seconds since the epoch.
    pub created: u64,
}

/// The report served by the API and printed by `berth scan`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub artifact: Artifact,
    pub scanner: ScannerRef,
    /// `None` before any database import: inventory only.
    pub database: Option<DatabaseRef>,
    /// RFC 3339.
    pub generated: String,
    pub os: Option<OsRelease>,
    pub package_count: usize,
    /// Findings by severity.
    pub summary: BTreeMap<String, usize>,
    pub findings: Vec<Finding>,
    pub platforms: Vec<PlatformReport>,
    /// Set when the artifact is no image (a signature, an SBOM): nothing
    /// to inventory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_an_image: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScannerRef {
    pub name: String,
    pub version: String,
    pub inventory_format: u32,
}

/// What a package is matched as: (ecosystem base, release filter, name,
/// version, ordering).
#[derive(Debug)]
pub struct Query {
    pub base: String,
    pub release: Option<String>,
    pub name: String,
    pub version: String,
    pub scheme: Scheme,
}

/// How an OS's `ID` maps to OSV ecosystems, and the release its entries
/// name (`Debian:12`, `Alpine:v3.20`, `Ubuntu:22.04`, `Rocky Linux:9`).
fn os_ecosystem(os: &OsRelease) -> Option<(&'static str, String)> {
    let major = os.version_id.split('.').next().unwrap_or_default().to_owned();
    let major_minor = os.version_id.split('.').take(2).collect::<Vec<_>>().join(".");
    Some(match os.id.as_str() {
        "debian" => ("debian", major),
        "ubuntu" => ("ubuntu", os.version_id.clone()),
        "alpine" => ("alpine", format!("v{major_minor}")),
        "wolfi" => ("wolfi", String::new()),
        "chainguard" => ("chainguard", String::new()),
        "rocky" => ("rocky linux", major),
        "almalinux" => ("almalinux", major),
        "rhel" => ("red hat", major),
        "opensuse-leap" | "opensuse" => ("opensuse", os.version_id.clone()),
        "opensuse-tumbleweed" => ("opensuse", "Tumbleweed".to_owned()),
        "sles" => ("suse", os.version_id.clone()),
        "mageia" => ("mageia", os.version_id.clone()),
        "openeuler" => ("openeuler", os.version_id.clone()),
        _ => return None,
    })
}

/// The query for one package, or why there is none.
pub fn query(p: &Located, os: Option<&OsRelease>) -> Result<Query, String> {
    let pkg = &p.package;
    let language = |base: &str, scheme| Query {
        base: base.to_owned(),
        release: None,
        name: normalize_name(base, &pkg.name),
        version: pkg.version.clone(),
        scheme,
    };
    match pkg.kind {
        PackageType::Cargo => Ok(language("crates.io", Scheme::Semver)),
        PackageType::Golang => Ok(language("go", Scheme::Semver)),
        PackageType::Npm => Ok(language("npm", Scheme::Semver)),
        PackageType::Pypi => Ok(language("pypi", Scheme::Pep440)),
        PackageType::Deb | PackageType::Apk | PackageType::Rpm => {
            let os = os.ok_or("no os-release in the image: OS packages are listed but not matched")?;
            let (base, release) =
                os_ecosystem(os).ok_or_else(|| format!("no vulnerability data maps to OS {:?}", os.id))?;
            let scheme = scheme_of(base).ok_or("unknown ordering")?;
            // Debian and Alpine advisories name source packages.
            let (name, version) = match pkg.kind {
                PackageType::Rpm => {
                    let v = match pkg.epoch {
                        Some(e) if e > 0 => format!("{e}:{}", pkg.version),
                        _ => pkg.version.clone(),
                    };
                    (pkg.name.clone(), v)
                }
                _ => (
                    pkg.source_name.clone().unwrap_or_else(|| pkg.name.clone()),
                    pkg.source_version.clone().unwrap_or_else(|| pkg.version.clone()),
                ),
            };
            Ok(Query {
                base: base.to_owned(),
                release: (!release.is_empty()).then_some(release),
                name,
                version,
                scheme,
            })
        }
    }
}

impl Query {
    pub fn shard(&self) -> u32 {
        shard_of(&self.base, &self.name)
    }

    /// Whether an entry's ecosystem is this query's (the release matching
    /// exactly or as a prefix of `22.04:LTS`-style names; an entry with no
    /// release applies to all).
    pub fn accepts(&self, entry: &Entry) -> bool {
        let (base, release) = split_ecosystem(&entry.ecosystem);
        if base != self.base || normalize_name(&base, &entry.name) != self.name {
            return false;
        }
        match &self.release {
            None => true,
            Some(r) => release.is_empty() || release_matches(&base, release, r),
        }
    }
}

/// Whether an OSV ecosystem's release part names the image's release, as
/// each distribution writes it: `12` (Debian), `v3.20` (Alpine),
/// `22.04:LTS` (Ubuntu), `enterprise_linux:9::appstream` (Red Hat),
/// `Linux Enterprise Server 15 SP5` (SUSE, os-release `15.5`), `Leap 15.5`
/// and `Tumbleweed` (openSUSE), `24.03-LTS` (openEuler).
pub fn release_matches(base: &str, release: &str, ours: &str) -> bool {
    if release == ours || release.strip_prefix(ours).is_some_and(|t| t.starts_with(':')) {
        return true;
    }
    match base {
        "red hat" => release.split(':').any(|t| t == ours),
        "suse" => {
            let sp = match ours.split_once('.') {
                Some((major, "0")) => major.to_owned(),
                Some((major, minor)) => format!("{major} SP{minor}"),
                None => ours.to_owned(),
            };
            release.ends_with(&format!(" {sp}"))
        }
        "opensuse" => release.ends_with(&format!(" {ours}")),
        "openeuler" => release.strip_prefix(ours).is_some_and(|t| t.starts_with('-')),
        _ => false,
    }
}

/// Match an image's packages against the entries of the shards they need.
pub fn match_packages(
    inv: &ImageInventory,
    shards: &HashMap<u32, std::sync::Arc<Vec<Entry>>>,
    notes: &mut Vec<String>,
) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut unmatched_os = 0usize;
    for p in &inv.packages {
        let q = match query(p, inv.os.as_ref()) {
            Ok(q) => q,
            Err(why) => {
                unmatched_os += 1;
                if unmatched_os == 1 {
                    notes.push(why);
                }
                continue;
            }
        };
        let Some(entries) = shards.get(&q.shard()) else { continue };
        for e in entries.iter().filter(|e| q.accepts(e)) {
            match e.verdict(q.scheme, &q.version) {
                Verdict::Affected { fixed } => {
                    // One finding per (advisory, package, file).
                    if !seen.insert((e.id.clone(), p.package.name.clone(), p.package.version.clone(), p.path.clone())) {
                        continue;
                    }
                    out.push(Finding {
                        id: e.id.clone(),
                        aliases: e.aliases.clone(),
                        package: p.package.name.clone(),
                        kind: p.package.kind,
                        installed_version: p.package.version.clone(),
                        matched: (q.version != p.package.version || q.name != p.package.name)
                            .then(|| format!("{} {}", q.name, q.version)),
                        fixed_version: fixed,
                        severity: e.severity,
                        score: e.score,
                        vector: e.vector.clone(),
                        layer: p.layer.clone(),
                        path: p.path.clone(),
                        summary: e.summary.clone(),
                        url: e.url.clone(),
                        platform: None,
                    });
                }
                Verdict::NotAffected => {}
                Verdict::Undecided(why) => {
                    if notes.len() < 50 {
                        notes.push(format!("{} {} {}: {why}", e.id, p.package.name, p.package.version))
                    }
                }
            }
        }
    }
    if unmatched_os > 1 {
        notes.push(format!("{unmatched_os} OS packages were not matched"));
    }
    out.sort_by(|a, b| b.severity.cmp(&a.severity).then_with(|| (&a.package, &a.id).cmp(&(&b.package, &b.id))));
    out
}

/// Findings by severity name.
pub fn summarize(findings: &[Finding]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for f in findings {
        *m.entry(f.severity.as_str().to_owned()).or_insert(0) += 1;
    }
    m
}

fn purl(p: &Located, os: Option<&OsRelease>) -> String {
    let pkg = &p.package;
    // The purl specification leaves `.`, `-`, `_` and `~` unencoded.
    const PURL: &percent_encoding::AsciiSet =
        &percent_encoding::NON_ALPHANUMERIC.remove(b'.').remove(b'-').remove(b'_').remove(b'~');
    let enc = |s: &str| percent_encoding::utf8_percent_encode(s, PURL).to_string();
    let (namespace, name) = match pkg.kind {
        PackageType::Deb | PackageType::Apk | PackageType::Rpm => (os.map(|o| o.id.clone()), pkg.name.clone()),
        PackageType::Npm if pkg.name.starts_with('@') => match pkg.name.split_once('/') {
            Some((ns, n)) => (Some(ns.to_owned()), n.to_owned()),
            None => (None, pkg.name.clone()),
        },
        PackageType::Golang => match pkg.name.rsplit_once('/') {
            Some((ns, n)) => (Some(ns.to_owned()), n.to_owned()),
            None => (None, pkg.name.clone()),
        },
        PackageType::Pypi => (None, normalize_name("pypi", &pkg.name)),
        _ => (None, pkg.name.clone()),
    };
    let mut s = format!("pkg:{}/", pkg.kind.purl_type());
    if let Some(ns) = namespace {
        let parts: Vec<String> = ns.split('/').map(enc).collect();
        s.push_str(&parts.join("/"));
        s.push('/');
    }
    s.push_str(&enc(&name));
    s.push('@');
    s.push_str(&enc(&pkg.version));
    let mut q = Vec::new();
    if let Some(a) = &pkg.arch {
        q.push(format!("arch={}", enc(a)));
    }
    if let Some(e) = pkg.epoch.filter(|e| *e > 0) {
        q.push(format!("epoch={e}"));
    }
    if matches!(pkg.kind, PackageType::Deb | PackageType::Apk | PackageType::Rpm) {
        if let Some(o) = os {
            q.push(format!("distro={}-{}", enc(&o.id), enc(&o.version_id)));
        }
    }
    if !q.is_empty() {
        s.push('?');
        s.push_str(&q.join("&"));
    }
    s
}

impl Report {
    /// CycloneDX 1.5: the packages as components, the findings as
    /// vulnerabilities (VEX) affecting them.
    pub fn cyclonedx(&self) -> Value {
        let mut components = Vec::new();
        let mut refs: HashMap<(String, String, String), String> = HashMap::new();
        for plat in &self.platforms {
            for p in &plat.packages {
                let purl = purl(p, plat.os.as_ref());
                let key = (p.package.name.clone(), p.package.version.clone(), p.path.clone());
                if refs.contains_key(&key) {
                    continue;
                }
                let bom_ref = format!("{}#{}", purl, p.path);
                refs.insert(key, bom_ref.clone());
                let mut props = vec![
                    json!({"name": "berth:layer", "value": p.layer}),
                    json!({"name": "berth:path", "value": p.path}),
                    json!({"name": "berth:analyzer", "value": p.analyzer}),
                ];
                if let Some(s) = &p.package.source_name {
                    props.push(json!({"name": "berth:source_name", "value": s}));
                }
                if let Some(s) = &p.package.source_version {
                    props.push(json!({"name": "berth:source_version", "value": s}));
                }
                let mut c = json!({
                    "type": "library",
                    "bom-ref": bom_ref,
                    "name": p.package.name,
                    "version": p.package.version,
                    "purl": purl,
                    "properties": props,
                });
                if let Some(l) = &p.package.license {
                    c["licenses"] = json!([{"license": {"name": l}}]);
                }
                components.push(c);
            }
        }
        let mut vulns: BTreeMap<String, Value> = BTreeMap::new();
        for f in &self.findings {
            let Some(r) = refs.get(&(f.package.clone(), f.installed_version.clone(), f.path.clone())) else { continue };
            let v = vulns.entry(f.id.clone()).or_insert_with(|| {
                let mut rating = json!({"severity": f.severity.as_str()});
                if let Some(s) = f.score {
                    rating["score"] = json!(s);
                }
                if let Some(v) = &f.vector {
                    rating["vector"] = json!(v);
                    rating["method"] = json!(if v.starts_with("CVSS:3") {
                        "CVSSv31"
                    } else if v.starts_with("CVSS:4") {
                        "CVSSv4"
                    } else {
                        "CVSSv2"
                    });
                }
                let mut v = json!({
                    "id": f.id,
                    "ratings": [rating],
                    "description": f.summary,
                    "affects": [],
                    "analysis": {"state": "exploitable"},
                });
                if !f.aliases.is_empty() {
                    v["references"] = json!(f
                        .aliases
                        .iter()
                        .map(|a| json!({"id": a, "source": {"name": "alias"}}))
                        .collect::<Vec<_>>());
                }
                if let Some(u) = &f.url {
                    v["source"] = json!({"url": u});
                }
                if let Some(fix) = &f.fixed_version {
                    v["recommendation"] = json!(format!("upgrade to {fix}"));
                }
                v
            });
            if let Some(a) = v["affects"].as_array_mut() {
                a.push(json!({"ref": r, "versions": [{"version": f.installed_version, "status": "affected"}]}));
            }
        }
        json!({
            "bomFormat": "CycloneDX",
            "specVersion": "1.5",
            "version": 1,
            "metadata": {
                "timestamp": self.generated,
                "tools": {"components": [{"type": "application", "name": self.scanner.name, "version": self.scanner.version}]},
                "component": {
                    "type": "container",
                    "bom-ref": self.artifact.digest,
                    "name": format!("{}@{}", self.artifact.repository, self.artifact.digest),
                },
                "properties": [{"name": "berth:database", "value": self.database.as_ref().map(|d| d.version.clone()).unwrap_or_default()}],
            },
            "components": components,
            "vulnerabilities": vulns.into_values().collect::<Vec<_>>(),
        })
    }

    /// SARIF 2.1.0: one rule per advisory, one result per finding.
    pub fn sarif(&self) -> Value {
        let level = |s: Severity| match s {
            Severity::Critical | Severity::High => "error",
            Severity::Medium => "warning",
            _ => "note",
        };
        let mut rules: BTreeMap<String, Value> = BTreeMap::new();
        let mut results = Vec::new();
        for f in &self.findings {
            rules.entry(f.id.clone()).or_insert_with(|| {
                json!({
                    "id": f.id,
                    "shortDescription": {"text": if f.summary.is_empty() { f.id.clone() } else { f.summary.clone() }},
                    "helpUri": f.url,
                    "properties": {"security-severity": f.score.map(|s| format!("{s:.1}")).unwrap_or_default(), "severity": f.severity.as_str()},
                })
            });
            results.push(json!({
                "ruleId": f.id,
                "level": level(f.severity),
                "message": {"text": format!(
                    "{} {} ({}) is affected by {}{}",
                    f.package, f.installed_version, f.kind.purl_type(), f.id,
                    f.fixed_version.as_ref().map(|v| format!("; fixed in {v}")).unwrap_or_default()
                )},
                "locations": [{"physicalLocation": {"artifactLocation": {"uri": f.path}}, "logicalLocations": [{"name": f.layer, "kind": "layer"}]}],
            }));
        }
        json!({
            "version": "2.1.0",
            "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
            "runs": [{
                "tool": {"driver": {"name": self.scanner.name, "version": self.scanner.version, "rules": rules.into_values().collect::<Vec<_>>()}},
                "results": results,
                "properties": {"artifact": format!("{}@{}", self.artifact.repository, self.artifact.digest)},
            }],
        })
    }

    /// A table for a terminal.
    pub fn table(&self) -> String {
        let mut s = format!(
            "{}@{}\nOS: {}  packages: {}  database: {}\n",
            self.artifact.repository,
            self.artifact.digest,
            self.os.as_ref().map(|o| format!("{} {}", o.id, o.version_id)).unwrap_or_else(|| "none detected".into()),
            self.package_count,
            self.database.as_ref().map(|d| d.version.as_str()).unwrap_or("none imported"),
        );
        if let Some(n) = &self.not_an_image {
            s.push_str(&format!("not an image: {n}\n"));
        }
        let summary: Vec<String> = self.summary.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        s.push_str(&format!("findings: {} ({})\n", self.findings.len(), summary.join(", ")));
        if !self.findings.is_empty() {
            s.push_str(&format!(
                "{:<24} {:<9} {:<28} {:<24} {:<24}\n",
                "ID", "SEVERITY", "PACKAGE", "INSTALLED", "FIXED"
            ));
            for f in &self.findings {
                s.push_str(&format!(
                    "{:<24} {:<9} {:<28} {:<24} {:<24}\n",
                    f.id,
                    f.severity.as_str(),
                    f.package,
                    f.installed_version,
                    f.fixed_version.as_deref().unwrap_or("-")
                ));
            }
        }
        for p in &self.platforms {
            for l in &p.layers {
                for e in &l.errors {
                    s.push_str(&format!("layer {}: error: {e}\n", l.digest));
                }
                for w in &l.warnings {
                    s.push_str(&format!("layer {}: warning: {w}\n", l.digest));
                }
            }
            for n in &p.notes {
                s.push_str(&format!("note: {n}\n"));
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_as_each_distribution_writes_them() {
        for (base, release, ours, want) in [
            ("debian", "12", "12", true),
            ("debian", "11", "12", false),
            ("alpine", "v3.20", "v3.20", true),
            ("alpine", "v3.2", "v3.20", false),
            ("ubuntu", "22.04:LTS", "22.04", true),
            ("ubuntu", "Pro:22.04:LTS", "22.04", false),
            ("red hat", "enterprise_linux:9::appstream", "9", true),
            ("red hat", "enterprise_linux:8::appstream", "9", false),
            ("suse", "Linux Enterprise Server 15 SP5", "15.5", true),
            ("suse", "Linux Enterprise Server 15 SP4", "15.5", false),
            ("suse", "Linux Enterprise Server 15", "15.0", true),
            ("opensuse", "Leap 15.5", "15.5", true),
            ("opensuse", "Tumbleweed", "Tumbleweed", true),
            ("opensuse", "Leap 15.5", "Tumbleweed", false),
            ("openeuler", "24.03-LTS", "24.03", true),
            ("openeuler", "24.03-LTS-SP1", "24.03", true),
            ("openeuler", "22.03-LTS", "24.03", false),
        ] {
            assert_eq!(release_matches(base, release, ours), want, "{base} {release:?} vs {ours:?}");
        }
    }
}
