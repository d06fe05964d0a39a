//! The writers' half of the collection protocol.
//!
//! A writer (manifest PUT, upload completion, mount) first writes its own
//! records, then calls [`Registry::gc_guard`] with the keys its success
//! depends on, and reports success only if the guard passes. The guard
//! lists the passes that may delete (`_gc/active/`), looks for their marks
//! on those keys, then checks that the keys still exist. The collector does
//! the mirror image: it writes its active record, then its marks, then
//! scans again, and deletes only what the second scan still finds
//! unreferenced. Both sides write before they read, so for every key at
//! least one of them sees the other:
//!
//! - the pass became active after the writer listed: its marks, and so its
//!   second scan, come after the writer's records, which the scan sees;
//! - the pass was active: the writer sees a mark written before its read,
//!   or the mark came later and the second scan sees the writer's records;
//! - the pass had ended: whatever it deleted is gone before the writer's
//!   existence check, which fails.
//!
//! No clock is involved. See docs/architecture.md, "Content lifecycle".

use berth_storage::ObjectStoreExt;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt};

use super::super::{keys, Registry, Result};

/// HEADs one guard keeps in flight.
const PARALLEL: usize = 16;

impl Registry {
    /// The passes that may currently delete (their active records).
    pub(crate) async fn active_passes(&self) -> Result<Vec<String>> {
        let mut passes = Vec::new();
        self.list_all(keys::GC_ACTIVE_PREFIX, |o| passes.push(o.key[keys::GC_ACTIVE_PREFIX.len()..].to_owned()))
            .await?;
        Ok(passes)
    }

    /// Check, after writing, that no collection pass may delete one of
    /// `deps` and that each still exists. `Ok(None)`: the writer may report
    /// success. `Ok(Some(i))`: it must not, because of `deps[i]`.
    pub(crate) async fn gc_guard(&self, deps: &[String]) -> Result<Option<usize>> {
        let passes = self.active_passes().await?;
        // First any active pass's mark, then the keys themselves (the
        // order matters: see the module docs).
        let marks =
            passes.iter().flat_map(|p| deps.iter().enumerate().map(move |(i, k)| (i, keys::gc_mark(p, k), true)));
        let mut refused = self.first_key(marks.collect()).await?;
        if refused.is_none() {
            refused = self.first_key(deps.iter().enumerate().map(|(i, k)| (i, k.clone(), false)).collect()).await?;
        }
        if refused.is_some() {
            crate::metrics::inc(&crate::metrics::get().gc_writer_refusals);
        }
        Ok(refused)
    }

    /// The lowest index `i` of `(i, key, present)` whose key exists when
    /// `present`, or is missing when not; the HEADs run in parallel.
    async fn first_key(&self, checks: Vec<(usize, String, bool)>) -> Result<Option<usize>> {
        let heads: Vec<BoxFuture<'_, Result<Option<usize>>>> = checks
            .into_iter()
            .map(|(i, key, present)| {
                async move { Ok((self.store.exists(&key).await? == present).then_some(i)) }.boxed()
            })
            .collect();
        let hits: Vec<usize> = futures::stream::iter(heads)
            .buffer_unordered(PARALLEL)
            .try_filter_map(|hit| async move { Ok(hit) })
            .try_collect()
            .await?;
        Ok(hits.into_iter().min())
    }

    /// Wait at a test's pause point (see [`super::super::hooks`]).
    pub(crate) async fn pause(&self, point: super::super::hooks::Point) {
        if let Some(hook) = &self.hook {
            (hook.0)(point).await;
        }
    }
}
