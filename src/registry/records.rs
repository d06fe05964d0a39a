//! The durable records listed with their modification times, for derived
//! indexes (the search extension) that must be rebuildable from the records
//! alone, and the change notices that keep such indexes current on every
//! replica.
//!
//! A change notice travels on the cache invalidation channel: besides the
//! cache's own `tag` and `manifest` messages (which also name a repository
//! that changed), `repo\n<name>\n` says "something of <name> changed" for
//! writes the caches do not care about (a push by digest, a referrer, the
//! collector deleting tags or a whole repository).

use std::time::SystemTime;

use berth_storage::ObjectStoreExt;

use super::access::{Access, Pull};
use super::cache::INVALIDATION_CHANNEL;
use super::keys::{self, RepoKey};
use super::{Registry, Result};
use crate::oci::{Digest, OciError, RepoName, Tag};

/// A record as a listing shows it: what it is and when it was last written
/// (`None` where the backend does not say).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub key: RepoKey,
    pub modified: Option<SystemTime>,
}

/// When a manifest was pushed (its revision record written) and when a
/// pull of it was last recorded (at most once per `pull_record_every`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ManifestTimes {
    pub pushed: Option<SystemTime>,
    pub pulled: Option<SystemTime>,
}

/// The repository a message on the invalidation channel is about, if any.
pub fn changed_repository(message: &[u8]) -> Option<RepoName> {
    let text = std::str::from_utf8(message).ok()?;
    let mut parts = text.splitn(3, '\n');
    match (parts.next()?, parts.next()?) {
        ("tag" | "manifest" | "repo", repo) => repo.parse().ok(),
        _ => None,
    }
}

impl Registry {
    /// Every repository the catalog records, in lexical order.
    pub async fn catalog_names(&self, mut each: impl FnMut(RepoName)) -> Result<u64> {
        self.list_all(keys::CATALOG_PREFIX, |o| {
            if let Ok(name) = o.key[keys::CATALOG_PREFIX.len()..].parse::<RepoName>() {
                each(name);
            }
        })
        .await
    }

    /// Every tag, manifest revision, referrer and pull record of every
    /// repository, in key order (blob links are skipped): one listing of
    /// the store, so its cost grows with the number of records.
    pub async fn all_records(&self, mut each: impl FnMut(Record)) -> Result<u64> {
        self.list_all(keys::REPOSITORIES_PREFIX, |o| match keys::parse_repo_key(&o.key) {
            None | Some(RepoKey::Link { .. }) => {}
            Some(key) => each(Record { key, modified: o.last_modified }),
        })
        .await
    }

    /// The tags and manifest revisions of one repository (not of the
    /// repositories nested under its name), and whether the catalog still
    /// records it.
    pub async fn repository_records(&self, repo: &RepoName, mut each: impl FnMut(Record)) -> Result<bool> {
        let exists = self.store.exists(&keys::catalog_entry(repo)).await?;
        if !exists {
            return Ok(false);
        }
        let prefix = format!("{}{repo}/_manifests/", keys::REPOSITORIES_PREFIX);
        self.list_all(&prefix, |o| {
            if let Some(key @ (RepoKey::Tag { .. } | RepoKey::Revision { .. })) = keys::parse_repo_key(&o.key) {
                each(Record { key, modified: o.last_modified });
            }
        })
        .await?;
        Ok(true)
    }

    /// The digest a tag points to (through the tag cache).
    pub async fn tag_digest(&self, access: &Access<Pull>, tag: &Tag) -> Result<Digest> {
        let repo = access.repo();
        let generation = self.caches.generation();
        if let Some(d) = self.caches.tag(repo.as_str(), tag.as_str()) {
            return Ok(d);
        }
        let d = self.resolve_tag(repo, tag).await?;
        self.caches.put_tag(repo.as_str(), tag.as_str(), d.clone(), generation);
        Ok(d)
    }

    /// When `digest` was pushed to the repository and last recorded pulled.
    pub async fn manifest_times(&self, access: &Access<Pull>, digest: &Digest) -> Result<ManifestTimes> {
        let repo = access.repo();
        let time_of = |key: String| async move {
            match self.store.head(&key).await {
                Ok(meta) => Ok(meta.last_modified),
                Err(e) if e.is_not_found() => Ok(None),
                Err(e) => Err(OciError::from(e)),
            }
        };
        let (pushed, pulled) =
            futures::try_join!(time_of(keys::revision(repo, digest)), time_of(keys::pull_record(repo, digest)))?;
        Ok(ManifestTimes { pushed, pulled })
    }

    /// Tell every replica (this one included) that something of `repo`
    /// changed. Best effort: listeners also re-list on a period.
    pub async fn announce_change(&self, repo: &RepoName) {
        let message = bytes::Bytes::from(format!("repo\n{repo}\n"));
        if let Err(e) = self.state.publish(INVALIDATION_CHANNEL, message).await {
            tracing::debug!(error = %e, "cannot publish a repository change");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_message_names_its_repository() {
        let r = |m: &str| changed_repository(m.as_bytes()).map(|n| n.to_string());
        assert_eq!(r("tag\nteam/app\nv1").as_deref(), Some("team/app"));
        assert_eq!(r("manifest\nteam/app\nsha256:00").as_deref(), Some("team/app"));
        assert_eq!(r("repo\nteam/app\n").as_deref(), Some("team/app"));
        assert_eq!(r("repo\nTeam/App\n"), None, "not a repository name");
        assert_eq!(r("other\nteam/app\n"), None);
        assert_eq!(r("repo"), None);
        assert_eq!(changed_repository(&[0xff, 0xfe]), None);
    }
}
