//! The search index: every repository with its tags and when each was last
//! written, built from the record listings alone (derived data: losing it
//! costs a re-listing, never content). Pure data: the service (mod.rs)
//! keeps it current, this module answers queries over it.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::oci::RepoName;
use crate::registry::keys::RepoKey;
use crate::registry::records::Record;

/// Most terms of a query looked at.
pub const MAX_TERMS: usize = 8;
/// Longest query accepted (bytes).
pub const MAX_QUERY: usize = 256;

/// Milliseconds since the epoch (0: unknown).
pub type Millis = i64;

pub fn millis(t: Option<SystemTime>) -> Millis {
    t.and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0, |d| d.as_millis() as Millis)
}

/// RFC 3339 (whole seconds) of a known time.
pub fn rfc3339(ms: Millis) -> Option<String> {
    (ms > 0).then(|| crate::timefmt::rfc3339(ms as u64 / 1000))
}

/// A tag and when it was last written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagEntry {
    pub name: Box<str>,
    pub pushed: Millis,
}

/// A repository: its tags in name order, when anything of it was last
/// pushed, and how many manifests it holds (images, indexes, artifacts).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepoEntry {
    pub tags: Vec<TagEntry>,
    pub last_push: Millis,
    pub manifests: u32,
}

impl RepoEntry {
    /// Add one record (tags and revisions count; others are ignored).
    pub fn add(&mut self, record: &Record) {
        let at = millis(record.modified);
        match &record.key {
            RepoKey::Tag { tag, .. } => self.tags.push(TagEntry { name: tag.as_str().into(), pushed: at }),
            RepoKey::Revision { .. } => self.manifests += 1,
            _ => return,
        }
        self.last_push = self.last_push.max(at);
    }

    /// Put the tags in name order (listings give them so; notices may not).
    pub fn finish(&mut self) {
        self.tags.sort_by(|a, b| a.name.cmp(&b.name));
        self.tags.dedup_by(|a, b| a.name == b.name);
        self.tags.shrink_to_fit();
    }
}

/// Every repository, by name.
#[derive(Debug, Clone, Default)]
pub struct Index {
    repos: BTreeMap<Box<str>, RepoEntry>,
    /// Every name in one string, for substring search in one pass; built
    /// at the first query after a change.
    haystack: std::sync::OnceLock<Haystack>,
}

impl PartialEq for Index {
    fn eq(&self, other: &Index) -> bool {
        self.repos == other.repos
    }
}

impl Eq for Index {}

/// The names, each followed by `\n` (no term holds one, so no match spans
/// two names), and where each starts.
#[derive(Debug, Clone, Default)]
struct Haystack {
    text: String,
    starts: Vec<usize>,
}

impl Haystack {
    fn build(repos: &BTreeMap<Box<str>, RepoEntry>) -> Haystack {
        let mut h = Haystack {
            text: String::with_capacity(repos.keys().map(|k| k.len() + 1).sum()),
            starts: Vec::with_capacity(repos.len()),
        };
        for name in repos.keys() {
            h.starts.push(h.text.len());
            h.text.push_str(name);
            h.text.push('\n');
        }
        h
    }

    /// The name holding byte `at`, and the next name's start.
    fn name_at(&self, at: usize) -> (&str, usize) {
        let i = self.starts.partition_point(|s| *s <= at) - 1;
        let start = self.starts[i];
        let end = self.starts.get(i + 1).copied().unwrap_or(self.text.len());
        (&self.text[start..end - 1], end)
    }
}

/// One repository in search results.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RepoHit {
    pub name: String,
    pub tags: usize,
    pub manifests: u32,
    #[serde(skip)]
    pub last_push: Millis,
}

/// A page of search results: the hits the caller may see, how many there
/// are in all (visible ones only), and the name to continue after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoPage {
    pub items: Vec<RepoHit>,
    pub total: usize,
    pub next: Option<String>,
}

/// How a tag listing is ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagOrder {
    /// By name.
    Name,
    /// Newest push first (then by name).
    Pushed,
}

/// A page of tags and, when more follow, the cursor of the next page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagPage {
    pub items: Vec<TagEntry>,
    pub total: usize,
    pub next: Option<String>,
}

/// A query's terms: lowercase, split at whitespace, at most [`MAX_TERMS`].
pub fn terms(q: &str) -> Vec<String> {
    q.split_whitespace().take(MAX_TERMS).map(str::to_ascii_lowercase).collect()
}

/// How well `name` matches one term (lower is better), or `None`:
/// 0 the whole name, 1 the name's start or its last component exactly,
/// 2 the start of a path component, 3 the start of a word (after `-`, `_`,
/// `.`), 4 anywhere.
fn term_rank(name: &str, term: &str) -> Option<u32> {
    if name == term {
        return Some(0);
    }
    if name.starts_with(term) || name.rsplit('/').next() == Some(term) {
        return Some(1);
    }
    let mut best = None;
    for (at, _) in name.match_indices(term) {
        let rank = match name.as_bytes()[at - 1] {
            b'/' => 2,
            b'-' | b'_' | b'.' => 3,
            _ => 4,
        };
        best = Some(best.map_or(rank, |b: u32| b.min(rank)));
        if rank == 2 {
            break;
        }
    }
    best
}

/// The rank of `name` for all `terms` (every term must match), or `None`.
pub fn rank(name: &str, terms: &[String]) -> Option<u32> {
    terms.iter().try_fold(0, |sum, t| term_rank(name, t).map(|r| sum + r))
}

/// The order of results: rank, then shorter names, then by name. Without
/// terms, by name alone.
fn sort_key<'a>(name: &'a str, terms: &[String]) -> Option<(u32, usize, &'a str)> {
    if terms.is_empty() {
        return Some((0, 0, name));
    }
    rank(name, terms).map(|r| (r, name.len(), name))
}

/// An index under construction: the catalog first, then the records one
/// at a time as a listing produces them (none is kept), then `finish`.
#[derive(Debug)]
pub struct IndexBuilder {
    repos: BTreeMap<Box<str>, RepoEntry>,
}

impl IndexBuilder {
    pub fn new(catalog: impl IntoIterator<Item = RepoName>) -> IndexBuilder {
        IndexBuilder { repos: catalog.into_iter().map(|n| (Box::from(n.as_str()), RepoEntry::default())).collect() }
    }

    /// Take in one record. Records of a repository the catalog no longer
    /// names are leftovers the collector will remove: skipped.
    pub fn add(&mut self, record: &Record) {
        if let Some(entry) = self.repos.get_mut(record.key.repo().as_str()) {
            entry.add(record);
        }
    }

    pub fn finish(mut self) -> Index {
        for entry in self.repos.values_mut() {
            entry.finish();
        }
        Index { repos: self.repos, haystack: Default::default() }
    }
}

impl Index {
    /// Build from the catalog and a listing of records.
    pub fn build(catalog: impl IntoIterator<Item = RepoName>, records: impl IntoIterator<Item = Record>) -> Index {
        let mut builder = IndexBuilder::new(catalog);
        for record in records {
            builder.add(&record);
        }
        builder.finish()
    }

    pub fn len(&self) -> usize {
        self.repos.len()
    }

    pub fn is_empty(&self) -> bool {
        self.repos.is_empty()
    }

    pub fn tag_count(&self) -> usize {
        self.repos.values().map(|r| r.tags.len()).sum()
    }

    pub fn get(&self, repo: &str) -> Option<&RepoEntry> {
        self.repos.get(repo)
    }

    /// Put a repository's entry, or remove it (`None`).
    pub fn set(&mut self, repo: &str, entry: Option<RepoEntry>) {
        if entry.is_none() || !self.repos.contains_key(repo) {
            self.haystack = Default::default();
        }
        match entry {
            Some(e) => {
                self.repos.insert(repo.into(), e);
            }
            None => {
                self.repos.remove(repo);
            }
        }
    }

    pub fn repos(&self) -> impl Iterator<Item = (&str, &RepoEntry)> {
        self.repos.iter().map(|(k, v)| (&**k, v))
    }

    /// Repositories matching `q` that `visible` admits, best first, after
    /// `last` (a name of an earlier page), at most `n`. The total counts
    /// visible matches only, so nothing hidden shows through it.
    pub fn search(&self, q: &str, visible: &dyn Fn(&str) -> bool, last: Option<&str>, n: usize) -> RepoPage {
        let terms = terms(q);
        let hits: Vec<(u32, usize, &str)> = match terms.iter().max_by_key(|t| t.len()) {
            None => self.repos.keys().map(|name| (0, 0, &**name)).filter(|(_, _, name)| visible(name)).collect(),
            Some(longest) => {
                // One pass over every name for the longest term; the
                // names it finds are ranked on all terms.
                let haystack = self.haystack.get_or_init(|| Haystack::build(&self.repos));
                let mut hits = Vec::new();
                let mut next_name = 0;
                for (at, _) in haystack.text.match_indices(longest.as_str()) {
                    if at < next_name {
                        continue;
                    }
                    let (name, end) = haystack.name_at(at);
                    next_name = end;
                    if let Some(key) = sort_key(name, &terms) {
                        if visible(name) {
                            hits.push(key);
                        }
                    }
                }
                hits.sort_unstable();
                hits
            }
        };
        let total = hits.len();
        // Where the previous page ended: its last name's key, whether or
        // not that name is still here (or was ever visible).
        let start = match last.and_then(|l| sort_key(l, &terms).map(|k| (k, l))) {
            Some((key, _)) => hits.partition_point(|k| *k <= key),
            None if last.is_some() => total,
            None => 0,
        };
        let page: Vec<RepoHit> = hits[start..]
            .iter()
            .take(n)
            .filter_map(|(_, _, name)| {
                let e = self.repos.get(*name)?;
                Some(RepoHit {
                    name: (*name).to_owned(),
                    tags: e.tags.len(),
                    manifests: e.manifests,
                    last_push: e.last_push,
                })
            })
            .collect();
        let next = (start + page.len() < total && !page.is_empty()).then(|| page[page.len() - 1].name.clone());
        RepoPage { items: page, total, next }
    }

    /// Tags of `repo` containing `filter` (case-insensitive), in `order`,
    /// after the cursor `last`, at most `n`. `None`: no such repository.
    pub fn tags(&self, repo: &str, filter: &str, order: TagOrder, last: Option<&str>, n: usize) -> Option<TagPage> {
        let entry = self.repos.get(repo)?;
        let filter = filter.trim().to_ascii_lowercase();
        let mut tags: Vec<&TagEntry> =
            entry.tags.iter().filter(|t| filter.is_empty() || t.name.to_ascii_lowercase().contains(&filter)).collect();
        // Newest first, then by name; compared by reference (no copy of a
        // name per comparison).
        fn key(t: &TagEntry) -> (std::cmp::Reverse<Millis>, &str) {
            (std::cmp::Reverse(t.pushed), &t.name)
        }
        if order == TagOrder::Pushed {
            tags.sort_by(|a, b| key(a).cmp(&key(b)));
        }
        let total = tags.len();
        let start = match (order, last) {
            (_, None) => 0,
            (TagOrder::Name, Some(l)) => tags.partition_point(|t| &*t.name <= l),
            (TagOrder::Pushed, Some(cursor)) => match parse_pushed_cursor(cursor) {
                Some((pushed, name)) => tags.partition_point(|t| key(t) <= (pushed, &*name)),
                None => total,
            },
        };
        let items: Vec<TagEntry> = tags[start..].iter().take(n).map(|t| (*t).clone()).collect();
        let next = match items.last() {
            Some(t) if start + items.len() < total => Some(match order {
                TagOrder::Name => t.name.to_string(),
                TagOrder::Pushed => format!("{}:{}", t.pushed, t.name),
            }),
            _ => None,
        };
        Some(TagPage { items, total, next })
    }
}

/// A newest-first cursor: `<pushed ms>:<tag>` (tags never hold `:`).
fn parse_pushed_cursor(cursor: &str) -> Option<(std::cmp::Reverse<Millis>, Box<str>)> {
    let (secs, tag) = cursor.split_once(':')?;
    Some((std::cmp::Reverse(secs.parse().ok()?), tag.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::{Digest, Tag};
    use std::time::Duration;

    fn at(ms: u64) -> Option<SystemTime> {
        Some(UNIX_EPOCH + Duration::from_millis(ms))
    }

    fn tag(repo: &str, t: &str, s: u64) -> Record {
        Record { key: RepoKey::Tag { repo: repo.parse().unwrap(), tag: t.parse::<Tag>().unwrap() }, modified: at(s) }
    }

    fn revision(repo: &str, n: u8, s: u64) -> Record {
        Record { key: RepoKey::Revision { repo: repo.parse().unwrap(), digest: Digest::sha256(&[n]) }, modified: at(s) }
    }

    fn index() -> Index {
        let names = [
            "library/nginx",
            "nginx",
            "team-a/nginx-proxy",
            "team-a/api",
            "team-b/api-gateway",
            "tools/mynginx",
            "team-b/web",
        ];
        let catalog = names.iter().map(|n| n.parse().unwrap());
        let mut records = vec![
            revision("team-a/api", 1, 100),
            tag("team-a/api", "v2", 300),
            tag("team-a/api", "v1", 200),
            tag("team-a/api", "latest", 300),
            revision("team-a/api", 2, 300),
            // Left over from a repository the catalog dropped: ignored.
            tag("gone/repo", "v1", 50),
        ];
        records.push(tag("nginx", "1.25", 10));
        Index::build(catalog, records)
    }

    fn names(page: &RepoPage) -> Vec<&str> {
        page.items.iter().map(|h| h.name.as_str()).collect()
    }

    #[test]
    fn exact_then_prefix_then_component_then_word_then_anywhere() {
        let idx = index();
        let page = idx.search("nginx", &|_| true, None, 10);
        assert_eq!(names(&page), ["nginx", "library/nginx", "team-a/nginx-proxy", "tools/mynginx"]);
        assert_eq!(page.total, 4);
        assert_eq!(page.next, None);
        // Case does not matter; every term must match.
        assert_eq!(names(&idx.search("API team-b", &|_| true, None, 10)), ["team-b/api-gateway"]);
        assert_eq!(names(&idx.search("gateway", &|_| true, None, 10)), ["team-b/api-gateway"]);
        assert!(idx.search("nothing-like-it", &|_| true, None, 10).items.is_empty());
    }

    #[test]
    fn an_empty_query_lists_every_repository_by_name() {
        let idx = index();
        let page = idx.search("  ", &|_| true, None, 3);
        assert_eq!(names(&page), ["library/nginx", "nginx", "team-a/api"]);
        assert_eq!(page.total, 7);
        assert_eq!(page.next.as_deref(), Some("team-a/api"));
        let rest = idx.search("", &|_| true, page.next.as_deref(), 10);
        assert_eq!(names(&rest), ["team-a/nginx-proxy", "team-b/api-gateway", "team-b/web", "tools/mynginx"]);
        assert_eq!(rest.next, None);
    }

    #[test]
    fn hidden_repositories_count_nowhere_and_pages_skip_them() {
        let idx = index();
        let visible = |n: &str| !n.starts_with("team-a/");
        let mut seen = Vec::new();
        let mut last: Option<String> = None;
        loop {
            let page = idx.search("n", &visible, last.as_deref(), 1);
            assert_eq!(page.total, 3, "{page:?}");
            seen.extend(page.items.iter().map(|h| h.name.clone()));
            match page.next {
                Some(n) => last = Some(n),
                None => break,
            }
        }
        assert_eq!(seen, ["nginx", "library/nginx", "tools/mynginx"]);
        // A hidden name as the cursor continues from where it would sort,
        // telling nothing about whether it exists.
        let after_hidden = idx.search("nginx", &visible, Some("team-a/nginx-proxy"), 10);
        assert_eq!(names(&after_hidden), ["tools/mynginx"]);
        let after_unknown = idx.search("nginx", &visible, Some("team-a/nginx-proxz"), 10);
        assert_eq!(names(&after_unknown), ["tools/mynginx"]);
        // A cursor that matches nothing ends the listing.
        assert!(idx.search("nginx", &visible, Some("zzz"), 10).items.is_empty());
    }

    #[test]
    fn tags_by_name_and_newest_first_with_cursors() {
        let idx = index();
        let entry = idx.get("team-a/api").unwrap();
        assert_eq!(entry.manifests, 2);
        assert_eq!(entry.last_push, 300);
        let page = idx.tags("team-a/api", "", TagOrder::Name, None, 2).unwrap();
        assert_eq!(page.items.iter().map(|t| &*t.name).collect::<Vec<_>>(), ["latest", "v1"]);
        assert_eq!(page.next.as_deref(), Some("v1"));
        let rest = idx.tags("team-a/api", "", TagOrder::Name, Some("v1"), 2).unwrap();
        assert_eq!(rest.items.iter().map(|t| &*t.name).collect::<Vec<_>>(), ["v2"]);
        assert_eq!(rest.next, None);

        let newest = idx.tags("team-a/api", "", TagOrder::Pushed, None, 2).unwrap();
        assert_eq!(newest.items.iter().map(|t| &*t.name).collect::<Vec<_>>(), ["latest", "v2"]);
        assert_eq!(newest.next.as_deref(), Some("300:v2"));
        let rest = idx.tags("team-a/api", "", TagOrder::Pushed, newest.next.as_deref(), 2).unwrap();
        assert_eq!(rest.items.iter().map(|t| &*t.name).collect::<Vec<_>>(), ["v1"]);
        assert!(idx.tags("team-a/api", "", TagOrder::Pushed, Some("garbage"), 2).unwrap().items.is_empty());

        let filtered = idx.tags("team-a/api", " V ", TagOrder::Name, None, 10).unwrap();
        assert_eq!(filtered.total, 2);
        assert!(idx.tags("no/such", "", TagOrder::Name, None, 10).is_none());
        assert!(idx.get("gone/repo").is_none());
    }

    #[test]
    fn set_replaces_and_removes_one_repository() {
        let mut idx = index();
        let mut e = RepoEntry::default();
        e.add(&tag("nginx", "b", 5));
        e.add(&tag("nginx", "a", 7));
        e.finish();
        idx.set("nginx", Some(e));
        assert_eq!(idx.get("nginx").unwrap().tags.iter().map(|t| &*t.name).collect::<Vec<_>>(), ["a", "b"]);
        idx.set("nginx", None);
        assert!(idx.get("nginx").is_none());
        assert_eq!(idx.len(), 6);
        // Queries see names added and removed after an earlier query.
        assert_eq!(
            names(&idx.search("nginx", &|_| true, None, 10)),
            ["library/nginx", "team-a/nginx-proxy", "tools/mynginx"]
        );
        idx.set("zeta/nginx", Some(RepoEntry::default()));
        assert_eq!(names(&idx.search("zeta", &|_| true, None, 10)), ["zeta/nginx"]);
        idx.set("zeta/nginx", None);
        assert!(idx.search("zeta", &|_| true, None, 10).items.is_empty());
    }
}
