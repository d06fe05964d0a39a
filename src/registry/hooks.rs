//! Pause points for tests: a writer or the collector stops at a named point
//! until the test lets it go on, so tests can interleave them in every
//! order that matters instead of hoping a race happens. Without a hook
//! installed (every build but tests), a pause point is one branch.

use std::fmt;
use std::sync::Arc;

use futures::future::BoxFuture;

/// Where a service may pause.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Point {
    /// Manifest PUT: references checked, nothing written yet.
    PutChecked,
    /// Manifest PUT: revision (and referrer record) written, not yet guarded.
    PutWritten,
    /// Manifest PUT: guarded, tag not yet written.
    PutGuarded,
    /// Upload completion: blob and link written, not yet guarded.
    UploadLinked,
    /// Mount: link written, not yet guarded.
    MountLinked,
    /// Collector: first scan done, nothing marked.
    GcScanned,
    /// Collector: candidates marked, second scan not started.
    GcMarked,
    /// Collector: second scan done, nothing deleted.
    GcRescanned,
    /// Collector: deletions done, marks not yet cleared.
    GcDeleted,
}

/// A test's hook: called at every point, it returns when the service may go on.
#[derive(Clone)]
pub struct Hook(pub Arc<dyn Fn(Point) -> BoxFuture<'static, ()> + Send + Sync>);

impl fmt::Debug for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Hook")
    }
}
