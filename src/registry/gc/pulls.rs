//! Pull times for retention (`keep_pulled_within`), without a write per
//! pull: a manifest GET records a pull of (repository, digest) at most once
//! per `pull_record_every` in this process (a bounded in-memory map), at most
//! once per that interval in the fleet (a lease in shared state, left to
//! expire), as one empty object whose modification time is the pull time.
//! Losing shared state costs an extra write, never a lost pull record.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use berth_storage::PutMode;
use bytes::Bytes;

use super::super::{keys, Access, Pull, Registry};
use crate::oci::Digest;

/// Entries the in-process map holds before it starts over.
const MAX_NOTED: usize = 100_000;

/// Pulls this process recorded recently.
#[derive(Debug, Default)]
pub struct PullNotes {
    noted: Mutex<HashMap<(String, Digest), Instant>>,
}

impl Registry {
    /// Note a manifest pull; the record is written in the background.
    pub fn note_pull(&self, access: &Access<Pull>, digest: &Digest) {
        let every = self.options.pull_record_every;
        let repo = access.repo().clone();
        {
            let mut noted = self.pulls.noted.lock().unwrap_or_else(|p| p.into_inner());
            let key = (repo.to_string(), digest.clone());
            if noted.get(&key).is_some_and(|at| at.elapsed() < every) {
                return;
            }
            if noted.len() >= MAX_NOTED {
                noted.clear();
            }
            noted.insert(key, Instant::now());
        }
        let registry = self.clone();
        let digest = digest.clone();
        tokio::spawn(async move {
            let lock = format!("pull:{repo}@{digest}");
            // Held until it expires: the fleet writes once per interval.
            // (Shared state down: write anyway; an extra write is harmless.)
            if let Ok(None) = registry.state.try_lock(&lock, every).await {
                return;
            }
            if let Err(e) =
                registry.store.put(&keys::pull_record(&repo, &digest), Bytes::new(), PutMode::Overwrite).await
            {
                tracing::debug!(error = %e, "cannot record a pull");
            }
        });
    }
}
