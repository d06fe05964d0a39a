//! What a pass may delete, computed from one scan of the records: pure
//! functions over a [`Snapshot`], so the rules are tested without a store.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::super::keys;
use super::index::Refs;
use crate::oci::{Digest, RepoName, Tag};

/// What the collector knows of one stored object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Obj {
    pub version: Option<String>,
    pub modified: Option<SystemTime>,
    pub size: u64,
}

/// The records of one repository.
#[derive(Debug, Clone, Default)]
pub struct RepoRecords {
    pub revisions: BTreeMap<Digest, Obj>,
    /// Each tag and the digest it holds (`None`: unreadable, so its
    /// repository keeps everything).
    pub tags: BTreeMap<Tag, (Obj, Option<Digest>)>,
    pub links: BTreeMap<Digest, Obj>,
    /// Referrer records by (subject, referrer).
    pub referrers: BTreeMap<(Digest, Digest), Obj>,
    /// Pull records: the last recorded pull of a manifest.
    pub pulls: BTreeMap<Digest, Obj>,
    pub catalog: Option<Obj>,
}

/// One scan of everything the collector reads.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// When the scan started: ages are measured from here.
    pub taken: SystemTime,
    pub repos: BTreeMap<RepoName, RepoRecords>,
    pub blobs: BTreeMap<Digest, Obj>,
    /// References of every manifest digest stored (`None`: unreadable).
    pub refs: HashMap<Digest, Option<Refs>>,
}

/// Which tags a repository keeps; a tag any rule keeps stays, the others go.
#[derive(Debug, Clone, Default)]
pub struct TagRetention {
    /// Tags matching one of these globs (`*` any run of characters).
    pub keep_tags: Vec<(String, crate::glob::Glob)>,
    /// The images (manifests) of the N most recently pushed tags.
    pub keep_last: Option<usize>,
    /// Tags pushed within this long.
    pub pushed_within: Option<Duration>,
    /// Tags whose manifest was pulled within this long.
    pub pulled_within: Option<Duration>,
}

/// What decides for one repository.
#[derive(Debug, Clone, Copy)]
pub struct RepoRule<'a> {
    /// The policy's glob, for reasons (`None`: the global settings).
    pub policy: Option<&'a str>,
    /// `None` keeps untagged manifests forever.
    pub untagged_after: Option<Duration>,
    /// `None`: no tag is ever deleted.
    pub tags: Option<&'a TagRetention>,
}

/// The rules per repository.
pub trait Rules {
    fn rule(&self, repo: &RepoName) -> RepoRule<'_>;
}

/// What is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Tag,
    Manifest,
    Referrer,
    #[serde(rename = "pull-record")]
    PullRecord,
    Link,
    Repository,
    Blob,
}

impl Kind {
    /// Deletion order: records first, data last (DESIGN "Content lifecycle").
    pub fn phase(self) -> u8 {
        match self {
            Kind::Tag | Kind::Manifest | Kind::Referrer | Kind::PullRecord => 0,
            Kind::Link => 1,
            Kind::Repository => 2,
            Kind::Blob => 3,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Tag => "tag",
            Kind::Manifest => "manifest",
            Kind::Referrer => "referrer",
            Kind::PullRecord => "pull-record",
            Kind::Link => "link",
            Kind::Repository => "repository",
            Kind::Blob => "blob",
        }
    }
}

/// One object a pass deletes (or, dry, would delete), and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deletion {
    pub kind: Kind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// The digest or tag.
    pub target: String,
    /// Bytes reclaimed (blobs: their size; records: their object size).
    pub bytes: u64,
    /// The rule that decided it.
    pub reason: String,
    #[serde(skip)]
    pub key: String,
    #[serde(skip)]
    pub version: Option<String>,
}

/// Deletions of one plan, records first.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub deletions: Vec<Deletion>,
}

/// Keys a first plan marked, with the version each had: a second plan may
/// delete only these, and only unchanged.
pub type Allowed = HashMap<String, Option<String>>;

impl Plan {
    pub fn allowed(&self) -> Allowed {
        self.deletions.iter().map(|d| (d.key.clone(), d.version.clone())).collect()
    }
}

struct Ctx<'a> {
    snap: &'a Snapshot,
    grace: Duration,
    allowed: Option<&'a Allowed>,
}

impl Ctx<'_> {
    fn older_than(&self, obj: &Obj, age: Duration) -> bool {
        obj.modified.and_then(|m| self.snap.taken.duration_since(m).ok()).is_some_and(|a| a >= age)
    }

    /// May `key` go: past the grace period and, on a second scan, marked
    /// by the first with the same version.
    fn may_delete(&self, key: &str, obj: &Obj) -> bool {
        self.older_than(obj, self.grace) && self.marked(key, obj)
    }

    /// On a second scan, was `key` marked by the first, unchanged since?
    fn marked(&self, key: &str, obj: &Obj) -> bool {
        match self.allowed {
            None => true,
            Some(allowed) => match allowed.get(key) {
                None => false,
                Some(v) => v.is_none() || obj.version.is_none() || *v == obj.version,
            },
        }
    }
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    if s.is_multiple_of(86_400) && s > 0 {
        format!("{}d", s / 86_400)
    } else if s.is_multiple_of(3600) && s > 0 {
        format!("{}h", s / 3600)
    } else if s.is_multiple_of(60) && s > 0 {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

/// Compute what may be deleted. `allowed` is `None` on the first scan and
/// the first plan's marks on the second.
pub fn plan(snap: &Snapshot, grace: Duration, rules: &dyn Rules, allowed: Option<&Allowed>) -> Plan {
    let ctx = Ctx { snap, grace, allowed };
    let mut out = Vec::new();
    // Digests some surviving manifest needs, and digests some surviving
    // link keeps, over every repository.
    let mut needed: HashSet<&Digest> = HashSet::new();
    let mut linked: HashSet<&Digest> = HashSet::new();

    for (repo, recs) in &snap.repos {
        let name = repo.to_string();
        let refs_of = |d: &Digest| snap.refs.get(d).and_then(|r| r.as_ref());
        let opaque_tags = recs.tags.values().any(|(_, d)| d.is_none());
        let rule = rules.rule(repo);
        // Retention: tags no rule keeps go (never in a repository with an
        // unreadable tag), and so do their manifests, unless reachable.
        let mut removed: HashSet<&Tag> = HashSet::new();
        let mut untagged_by_retention: HashMap<&Digest, String> = HashMap::new();
        if let (Some(tr), false) = (rule.tags, opaque_tags) {
            for (tag, reason) in retention(&ctx, repo, recs, tr, rule.policy.unwrap_or("*")) {
                let (obj, d) = &recs.tags[tag];
                let key = keys::tag(repo, tag);
                if !ctx.may_delete(&key, obj) {
                    continue;
                }
                removed.insert(tag);
                if let Some(d) = d {
                    untagged_by_retention
                        .insert(d, format!("its tags were removed by retention {}", rule.policy.unwrap_or("*")));
                }
                out.push(Deletion {
                    kind: Kind::Tag,
                    repository: Some(name.clone()),
                    target: tag.to_string(),
                    bytes: obj.size,
                    reason,
                    key,
                    version: obj.version.clone(),
                });
            }
        }
        // Roots: tagged manifests, and every manifest the untagged rule,
        // the grace period or the first plan keeps.
        let untagged_after = rule.untagged_after;
        let mut keep: HashSet<&Digest> = HashSet::new();
        for (tag, (_, d)) in &recs.tags {
            if let (Some(d), false) = (d, removed.contains(tag)) {
                keep.insert(d);
            }
        }
        untagged_by_retention.retain(|d, _| !keep.contains(d));
        let mut untagged_reason = HashMap::new();
        for (d, obj) in &recs.revisions {
            let key = keys::revision(repo, d);
            let expired = match untagged_after {
                Some(age) if !opaque_tags && ctx.older_than(obj, age) => true,
                _ => untagged_by_retention.contains_key(d),
            };
            // A manifest that cannot be read is never deleted: what it
            // references is unknown.
            if !expired || !ctx.may_delete(&key, obj) || refs_of(d).is_none() {
                keep.insert(d);
            } else if let Some(r) = untagged_by_retention.get(d) {
                untagged_reason.insert(d, r.clone());
            } else if let Some(age) = untagged_after {
                untagged_reason.insert(d, format!("untagged for more than {}", human(age)));
            }
        }
        // Everything a kept manifest reaches: index children and referrers.
        let mut referrers_of: HashMap<&Digest, Vec<&Digest>> = HashMap::new();
        for d in recs.revisions.keys() {
            if let Some(s) = refs_of(d).and_then(|r| r.subject.as_ref()) {
                referrers_of.entry(s).or_default().push(d);
            }
        }
        let mut stack: Vec<&Digest> = keep.iter().copied().collect();
        while let Some(d) = stack.pop() {
            let children = refs_of(d).map(|r| r.children.iter().collect::<Vec<_>>()).unwrap_or_default();
            let referrers = referrers_of.get(d).cloned().unwrap_or_default();
            for next in children.into_iter().chain(referrers) {
                if recs.revisions.contains_key(next) && keep.insert(next) {
                    stack.push(next);
                }
            }
        }
        // Manifests to delete, and their referrer records.
        let mut gone: HashSet<&Digest> = HashSet::new();
        for (d, obj) in &recs.revisions {
            if keep.contains(d) {
                continue;
            }
            gone.insert(d);
            out.push(Deletion {
                kind: Kind::Manifest,
                repository: Some(name.clone()),
                target: d.to_string(),
                bytes: obj.size,
                reason: untagged_reason.remove(d).unwrap_or_else(|| "untagged and unreachable".into()),
                key: keys::revision(repo, d),
                version: obj.version.clone(),
            });
        }
        let mut referrers_left = 0usize;
        for ((subject, referrer), obj) in &recs.referrers {
            let key = keys::referrer(repo, subject, referrer);
            let reason = if gone.contains(referrer) {
                "its manifest is deleted"
            } else if !recs.revisions.contains_key(referrer) {
                "its manifest no longer exists"
            } else {
                referrers_left += 1;
                continue;
            };
            // A record of a deleted manifest goes with it; a dangling one
            // only past the grace period.
            if (gone.contains(referrer) && ctx.marked(&key, obj)) || ctx.may_delete(&key, obj) {
                out.push(Deletion {
                    kind: Kind::Referrer,
                    repository: Some(name.clone()),
                    target: format!("{referrer} -> {subject}"),
                    bytes: obj.size,
                    reason: reason.into(),
                    key,
                    version: obj.version.clone(),
                });
            } else {
                referrers_left += 1;
            }
        }
        for (d, obj) in &recs.pulls {
            let key = keys::pull_record(repo, d);
            let gone_or_dangling = gone.contains(d) || !recs.revisions.contains_key(d);
            if gone_or_dangling && ctx.may_delete(&key, obj) {
                out.push(Deletion {
                    kind: Kind::PullRecord,
                    repository: Some(name.clone()),
                    target: format!("pull record of {d}"),
                    bytes: obj.size,
                    reason: "its manifest is deleted".into(),
                    key,
                    version: obj.version.clone(),
                });
            } else {
                referrers_left += 1;
            }
        }
        // Blobs the kept manifests need. A manifest that cannot be read, or
        // a tag that cannot, makes the repository keep every link.
        let mut repo_needed: HashSet<&Digest> = HashSet::new();
        let mut opaque = opaque_tags;
        for d in &keep {
            match snap.refs.get(*d) {
                Some(Some(r)) => repo_needed.extend(r.blobs.iter()),
                Some(None) => opaque = true,
                None if recs.revisions.contains_key(*d) => opaque = true,
                None => {}
            }
        }
        let mut links_left = 0usize;
        for (d, obj) in &recs.links {
            let key = keys::layer_link(repo, d);
            if opaque || repo_needed.contains(d) || !ctx.may_delete(&key, obj) {
                linked.insert(d);
                links_left += 1;
                continue;
            }
            out.push(Deletion {
                kind: Kind::Link,
                repository: Some(name.clone()),
                target: d.to_string(),
                bytes: obj.size,
                reason: "no kept manifest of the repository references it".into(),
                key,
                version: obj.version.clone(),
            });
        }
        needed.extend(repo_needed);
        // An empty repository leaves the catalog.
        let revisions_left = recs.revisions.len() - gone.len();
        if let Some(obj) = &recs.catalog {
            let key = keys::catalog_entry(repo);
            let tags_left = recs.tags.len() - removed.len();
            let empty = revisions_left == 0 && tags_left == 0 && links_left == 0 && referrers_left == 0;
            if empty && ctx.may_delete(&key, obj) {
                out.push(Deletion {
                    kind: Kind::Repository,
                    repository: Some(name.clone()),
                    target: name.clone(),
                    bytes: obj.size,
                    reason: "the repository holds nothing".into(),
                    key,
                    version: obj.version.clone(),
                });
            }
        }
    }
    // Blob bytes go when no surviving link keeps them and no surviving
    // manifest needs them.
    for (d, obj) in &snap.blobs {
        let key = keys::blob(d);
        if needed.contains(d) || linked.contains(d) || !ctx.may_delete(&key, obj) {
            continue;
        }
        out.push(Deletion {
            kind: Kind::Blob,
            repository: None,
            target: d.to_string(),
            bytes: obj.size,
            reason: "no repository links it".into(),
            key,
            version: obj.version.clone(),
        });
    }
    out.sort_by_key(|d| d.kind.phase());
    Plan { deletions: out }
}

/// Records that point at nothing (scrub `--repair`): links to missing
/// blobs, tags and referrer or pull records of missing manifests. Never
/// data. On a second scan, only what the first marked.
pub fn dangling(snap: &Snapshot, allowed: Option<&Allowed>) -> Plan {
    let ctx = Ctx { snap, grace: Duration::ZERO, allowed };
    let mut out = Vec::new();
    for (repo, recs) in &snap.repos {
        let name = repo.to_string();
        let mut push = |kind: Kind, target: String, key: String, obj: &Obj, reason: &str| {
            if ctx.marked(&key, obj) {
                out.push(Deletion {
                    kind,
                    repository: Some(name.clone()),
                    target,
                    bytes: obj.size,
                    reason: reason.into(),
                    key,
                    version: obj.version.clone(),
                });
            }
        };
        for (d, obj) in &recs.links {
            if !snap.blobs.contains_key(d) {
                push(Kind::Link, d.to_string(), keys::layer_link(repo, d), obj, "dangling: its blob is missing");
            }
        }
        for (tag, (obj, d)) in &recs.tags {
            if let Some(d) = d {
                if !recs.revisions.contains_key(d) {
                    let reason = "dangling: its manifest is missing";
                    push(Kind::Tag, tag.to_string(), keys::tag(repo, tag), obj, reason);
                }
            }
        }
        for ((subject, referrer), obj) in &recs.referrers {
            if !recs.revisions.contains_key(referrer) {
                let key = keys::referrer(repo, subject, referrer);
                push(Kind::Referrer, format!("{referrer} -> {subject}"), key, obj, "dangling: its manifest is missing");
            }
        }
        for (d, obj) in &recs.pulls {
            if !recs.revisions.contains_key(d) {
                let key = keys::pull_record(repo, d);
                push(Kind::PullRecord, format!("pull record of {d}"), key, obj, "dangling: its manifest is missing");
            }
        }
    }
    out.sort_by_key(|d| d.kind.phase());
    Plan { deletions: out }
}

/// The tags of `recs` that `tr` does not keep, each with the reason.
/// Images are ordered by their most recent tag push; `keep_last` keeps
/// every tag of the N newest images.
fn retention<'a>(
    ctx: &Ctx<'_>,
    _repo: &RepoName,
    recs: &'a RepoRecords,
    tr: &TagRetention,
    policy: &str,
) -> Vec<(&'a Tag, String)> {
    let mut newest: HashMap<&Digest, SystemTime> = HashMap::new();
    for (obj, d) in recs.tags.values() {
        if let (Some(d), Some(m)) = (d, obj.modified) {
            let e = newest.entry(d).or_insert(m);
            if m > *e {
                *e = m;
            }
        }
    }
    let mut images: Vec<(&Digest, SystemTime)> = newest.into_iter().collect();
    images.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    let recent: HashSet<&Digest> = images.iter().take(tr.keep_last.unwrap_or(0)).map(|(d, _)| *d).collect();
    let mut out = Vec::new();
    for (tag, (obj, d)) in &recs.tags {
        let Some(d) = d else { continue };
        let by_name = tr.keep_tags.iter().any(|(_, g)| g.matches(tag.as_str()));
        let by_count = recent.contains(d);
        let by_push = tr.pushed_within.is_some_and(|w| !ctx.older_than(obj, w));
        let by_pull = tr.pulled_within.is_some_and(|w| recs.pulls.get(d).is_some_and(|p| !ctx.older_than(p, w)));
        if by_name || by_count || by_push || by_pull {
            continue;
        }
        let mut why = Vec::new();
        if !tr.keep_tags.is_empty() {
            let names: Vec<&str> = tr.keep_tags.iter().map(|(p, _)| p.as_str()).collect();
            why.push(format!("matches none of {names:?}"));
        }
        if let Some(n) = tr.keep_last {
            why.push(format!("not among the {n} most recently pushed images"));
        }
        if let Some(w) = tr.pushed_within {
            why.push(format!("pushed more than {} ago", human(w)));
        }
        if let Some(w) = tr.pulled_within {
            why.push(format!("not pulled within {}", human(w)));
        }
        out.push((tag, format!("retention {policy}: {}", why.join(", "))));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Keep;
    impl Rules for Keep {
        fn rule(&self, _: &RepoName) -> RepoRule<'_> {
            RepoRule { policy: None, untagged_after: None, tags: None }
        }
    }
    struct After(Duration);
    impl Rules for After {
        fn rule(&self, _: &RepoName) -> RepoRule<'_> {
            RepoRule { policy: None, untagged_after: Some(self.0), tags: None }
        }
    }
    struct Retain(TagRetention, Option<Duration>);
    impl Rules for Retain {
        fn rule(&self, _: &RepoName) -> RepoRule<'_> {
            RepoRule { policy: Some("ci/**"), untagged_after: self.1, tags: Some(&self.0) }
        }
    }

    const HOUR: Duration = Duration::from_secs(3600);

    fn d(s: &str) -> Digest {
        Digest::sha256(s.as_bytes())
    }

    fn obj(age: Duration, now: SystemTime) -> Obj {
        Obj { version: Some("v1".into()), modified: Some(now - age), size: 10 }
    }

    struct Builder {
        snap: Snapshot,
    }

    impl Builder {
        fn new() -> Builder {
            Builder {
                snap: Snapshot {
                    taken: SystemTime::now(),
                    repos: BTreeMap::new(),
                    blobs: BTreeMap::new(),
                    refs: HashMap::new(),
                },
            }
        }
        fn repo(&mut self, r: &str) -> &mut RepoRecords {
            let now = self.snap.taken;
            let e = self.snap.repos.entry(r.parse().unwrap()).or_default();
            e.catalog.get_or_insert_with(|| obj(2 * HOUR, now));
            e
        }
        fn blob(&mut self, name: &str, age: Duration) {
            let now = self.snap.taken;
            self.snap.blobs.insert(d(name), obj(age, now));
        }
        fn link(&mut self, r: &str, name: &str, age: Duration) {
            let now = self.snap.taken;
            self.repo(r).links.insert(d(name), obj(age, now));
        }
        fn manifest(&mut self, r: &str, name: &str, age: Duration, refs: Refs) {
            let now = self.snap.taken;
            self.repo(r).revisions.insert(d(name), obj(age, now));
            self.snap.refs.insert(d(name), Some(refs));
        }
        fn tag(&mut self, r: &str, tag: &str, name: &str) {
            let now = self.snap.taken;
            self.repo(r).tags.insert(tag.parse().unwrap(), (obj(HOUR, now), Some(d(name))));
        }
    }

    fn image(blobs: &[&str]) -> Refs {
        Refs { blobs: blobs.iter().map(|b| d(b)).collect(), ..Refs::default() }
    }

    fn targets(p: &Plan, kind: Kind) -> Vec<String> {
        let mut v: Vec<String> = p.deletions.iter().filter(|x| x.kind == kind).map(|x| x.target.clone()).collect();
        v.sort();
        v
    }

    fn names(list: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = list.iter().map(|n| d(n).to_string()).collect();
        v.sort();
        v
    }

    #[test]
    fn unreferenced_links_and_blobs_go_after_the_grace_period() {
        let mut b = Builder::new();
        for name in ["cfg", "base", "app", "stray", "fresh", "shared"] {
            b.blob(name, 2 * HOUR);
        }
        b.blob("new-upload", Duration::from_secs(60));
        b.manifest("a", "m1", 2 * HOUR, image(&["cfg", "base", "app"]));
        b.tag("a", "v1", "m1");
        for l in ["cfg", "base", "app", "stray", "shared"] {
            b.link("a", l, 2 * HOUR);
        }
        b.link("a", "fresh", Duration::from_secs(60));
        b.link("other", "shared", 2 * HOUR);
        b.manifest("other", "m2", 2 * HOUR, image(&["shared"]));
        let p = plan(&b.snap, HOUR, &Keep, None);
        assert_eq!(targets(&p, Kind::Link), names(&["stray", "shared"]));
        // "fresh" is linked (young link), "new-upload" is young, "shared" is
        // needed by the other repository, "stray" has no link left.
        assert_eq!(targets(&p, Kind::Blob), names(&["stray"]));
        assert!(targets(&p, Kind::Manifest).is_empty());
        // Records first, data last.
        let phases: Vec<u8> = p.deletions.iter().map(|x| x.kind.phase()).collect();
        assert!(phases.windows(2).all(|w| w[0] <= w[1]), "{phases:?}");
    }

    #[test]
    fn untagged_manifests_follow_the_rule_but_children_and_referrers_of_reachable_ones_stay() {
        let mut b = Builder::new();
        let old = 48 * HOUR;
        b.manifest("r", "child-amd64", old, image(&["l1"]));
        b.manifest("r", "child-arm64", old, image(&["l2"]));
        b.manifest("r", "index", old, Refs { children: vec![d("child-amd64"), d("child-arm64")], ..Refs::default() });
        b.tag("r", "latest", "index");
        b.manifest("r", "signature", old, Refs { blobs: vec![d("sig")], subject: Some(d("index")), ..Refs::default() });
        b.manifest("r", "sbom-of-sig", old, Refs { subject: Some(d("signature")), ..Refs::default() });
        b.manifest("r", "orphan", old, image(&["l3"]));
        b.manifest("r", "young-orphan", Duration::from_secs(10), image(&["l4"]));
        b.manifest("r", "orphan-ref", old, Refs { subject: Some(d("gone")), ..Refs::default() });
        for l in ["l1", "l2", "l3", "l4", "sig"] {
            b.link("r", l, old);
            b.blob(l, old);
        }
        let now = b.snap.taken;
        b.repo("r").referrers.insert((d("index"), d("signature")), obj(old, now));
        b.repo("r").referrers.insert((d("gone"), d("orphan-ref")), obj(old, now));
        b.repo("r").referrers.insert((d("x"), d("never-stored")), obj(old, now));

        let kept = plan(&b.snap, HOUR, &Keep, None);
        assert!(targets(&kept, Kind::Manifest).is_empty(), "untagged manifests are kept by default");
        assert_eq!(targets(&kept, Kind::Referrer).len(), 1, "only the dangling record goes");

        let p = plan(&b.snap, HOUR, &After(24 * HOUR), None);
        assert_eq!(targets(&p, Kind::Manifest), names(&["orphan", "orphan-ref"]));
        assert_eq!(targets(&p, Kind::Link), names(&["l3"]));
        assert_eq!(targets(&p, Kind::Blob), names(&["l3"]));
        assert_eq!(targets(&p, Kind::Referrer).len(), 2);
        // Nothing of the tagged index, its children or its referrer chain.
        let deleted: Vec<&Deletion> = p.deletions.iter().collect();
        for keep in ["index", "child-amd64", "child-arm64", "signature", "sbom-of-sig", "young-orphan"] {
            assert!(!deleted.iter().any(|x| x.target == d(keep).to_string()), "{keep} deleted");
        }
        assert!(p.deletions.iter().any(|x| x.reason == "untagged for more than 1d"));
    }

    #[test]
    fn a_second_scan_deletes_only_what_the_first_marked_and_nothing_changed() {
        let mut b = Builder::new();
        b.blob("a", 2 * HOUR);
        b.blob("b", 2 * HOUR);
        b.link("r", "a", 2 * HOUR);
        let first = plan(&b.snap, HOUR, &Keep, None);
        assert_eq!(targets(&first, Kind::Blob), names(&["a", "b"]));
        let allowed = first.allowed();
        // Meanwhile a writer referenced "a" and rewrote "b".
        b.manifest("r", "m", Duration::ZERO, image(&["a"]));
        b.snap.blobs.get_mut(&d("b")).unwrap().version = Some("v2".into());
        b.blob("c", 2 * HOUR);
        let second = plan(&b.snap, HOUR, &Keep, Some(&allowed));
        assert!(second.deletions.is_empty(), "{:?}", second.deletions);
    }

    #[test]
    fn unreadable_records_keep_their_repository_whole() {
        let mut b = Builder::new();
        b.blob("x", 2 * HOUR);
        b.link("r", "x", 2 * HOUR);
        let now = b.snap.taken;
        b.repo("r").revisions.insert(d("broken"), obj(2 * HOUR, now));
        b.snap.refs.insert(d("broken"), None);
        assert!(plan(&b.snap, HOUR, &After(Duration::ZERO), None).deletions.is_empty());
        let mut b = Builder::new();
        b.blob("x", 2 * HOUR);
        b.link("r", "x", 2 * HOUR);
        b.repo("r").tags.insert("t".parse().unwrap(), (obj(HOUR, now), None));
        assert!(plan(&b.snap, HOUR, &After(Duration::ZERO), None).deletions.is_empty());
    }

    #[test]
    fn an_emptied_repository_leaves_the_catalog() {
        let mut b = Builder::new();
        b.blob("x", 2 * HOUR);
        b.link("gone", "x", 2 * HOUR);
        b.repo("young").catalog = Some(obj(Duration::from_secs(5), b.snap.taken));
        let p = plan(&b.snap, HOUR, &Keep, None);
        assert_eq!(targets(&p, Kind::Repository), vec!["gone".to_owned()]);
    }

    fn retention_setup() -> Builder {
        let mut b = Builder::new();
        let now = b.snap.taken;
        let day = 24 * HOUR;
        b.blob("base", 30 * day);
        b.link("ci/app", "base", 30 * day);
        let pushes: [(&str, &str, Duration); 7] = [
            ("v1.0", "m1", 10 * day),
            ("v1.1", "m2", 5 * day),
            ("build-3", "m3", 3 * day),
            ("build-4", "m4", 2 * day),
            ("build-5", "m5", day),
            ("build-6", "m6", HOUR),
            ("latest", "m6", HOUR),
        ];
        for (tag, m, age) in pushes {
            let layer = format!("layer-{m}");
            b.blob(&layer, age);
            b.link("ci/app", &layer, age);
            b.manifest("ci/app", m, age, image(&["base", &layer]));
            b.tag("ci/app", tag, m);
            b.repo("ci/app").tags.get_mut(&tag.parse::<Tag>().unwrap()).unwrap().0 = obj(age, now);
        }
        b.repo("ci/app").pulls.insert(d("m1"), obj(day, now));
        b.repo("ci/app").pulls.insert(d("m3"), obj(2 * HOUR, now));
        b
    }

    fn survivors(p: &Plan, b: &Builder) -> Vec<String> {
        let gone: HashSet<String> = targets(p, Kind::Tag).into_iter().collect();
        let mut left: Vec<String> = b.snap.repos[&"ci/app".parse::<RepoName>().unwrap()]
            .tags
            .keys()
            .map(|t| t.to_string())
            .filter(|t| !gone.contains(t))
            .collect();
        left.sort();
        left
    }

    fn tags(list: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = list.iter().map(|s| s.to_string()).collect();
        v.sort();
        v
    }

    #[test]
    fn retention_rules_alone_and_combined() {
        let b = retention_setup();
        let glob = |p: &str| (p.to_owned(), crate::glob::Glob::new(p));
        let table: Vec<(TagRetention, Vec<String>)> = vec![
            (TagRetention { keep_tags: vec![glob("v*")], ..TagRetention::default() }, tags(&["v1.0", "v1.1"])),
            (TagRetention { keep_last: Some(2), ..TagRetention::default() }, tags(&["build-5", "build-6", "latest"])),
            (
                TagRetention { pushed_within: Some(36 * HOUR), ..TagRetention::default() },
                tags(&["build-5", "build-6", "latest"]),
            ),
            (TagRetention { pulled_within: Some(25 * HOUR), ..TagRetention::default() }, tags(&["build-3", "v1.0"])),
            (
                TagRetention {
                    keep_tags: vec![glob("latest")],
                    keep_last: Some(1),
                    pulled_within: Some(25 * HOUR),
                    ..TagRetention::default()
                },
                tags(&["build-3", "build-6", "latest", "v1.0"]),
            ),
        ];
        for (rule, expected) in table {
            let p = plan(&b.snap, HOUR, &Retain(rule.clone(), None), None);
            assert_eq!(survivors(&p, &b), expected, "{rule:?}");
            // The manifests of removed tags go with them (and their own
            // layers); nothing a surviving tag needs goes.
            let kept: HashSet<Digest> = b.snap.repos[&"ci/app".parse::<RepoName>().unwrap()]
                .tags
                .iter()
                .filter(|(t, _)| expected.contains(&t.to_string()))
                .filter_map(|(_, (_, d))| d.clone())
                .collect();
            let gone: HashSet<String> = targets(&p, Kind::Manifest).into_iter().collect();
            for m in ["m1", "m2", "m3", "m4", "m5", "m6"] {
                assert_eq!(gone.contains(&d(m).to_string()), !kept.contains(&d(m)), "{m} under {rule:?}");
                assert_eq!(
                    targets(&p, Kind::Blob).contains(&d(&format!("layer-{m}")).to_string()),
                    !kept.contains(&d(m)),
                    "layer of {m}"
                );
            }
            assert!(!targets(&p, Kind::Blob).contains(&d("base").to_string()));
            assert!(p
                .deletions
                .iter()
                .filter(|x| x.kind == Kind::Tag)
                .all(|x| x.reason.starts_with("retention ci/**: ")));
        }
        // A young tag is never removed, whatever the rule.
        let none = TagRetention { keep_tags: vec![glob("none")], ..TagRetention::default() };
        let p = plan(&b.snap, 2 * HOUR, &Retain(none, None), None);
        assert_eq!(survivors(&p, &b), tags(&["build-6", "latest"]));
    }

    #[test]
    fn retention_reasons_name_the_rules() {
        let b = retention_setup();
        let rule = TagRetention {
            keep_tags: vec![("v*".to_owned(), crate::glob::Glob::new("v*"))],
            keep_last: Some(1),
            pushed_within: Some(HOUR / 2),
            pulled_within: Some(HOUR),
        };
        let p = plan(&b.snap, HOUR, &Retain(rule, None), None);
        let build4 = p.deletions.iter().find(|x| x.kind == Kind::Tag && x.target == "build-4").unwrap();
        assert_eq!(
            build4.reason,
            "retention ci/**: matches none of [\"v*\"], not among the 1 most recently pushed images, \
             pushed more than 30m ago, not pulled within 1h"
        );
    }
}
