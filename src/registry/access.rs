//! Typed access: a service method that reads or changes a repository takes an
//! `Access<A>` for it, and only the auth layer can mint one. A handler that
//! forgot the access check therefore does not compile.

use std::fmt;
use std::marker::PhantomData;

use crate::oci::RepoName;

/// An action on a repository.
pub trait Action: 'static {
    const NAME: &'static str;
}

/// Read manifests, blobs, tags and referrers.
#[derive(Debug)]
pub enum Pull {}
/// Upload blobs, push manifests and tags.
#[derive(Debug)]
pub enum Push {}
/// Delete manifests, tags and blob links.
#[derive(Debug)]
pub enum Delete {}
/// Move an existing tag to another manifest.
#[derive(Debug)]
pub enum Update {}

impl Action for Pull {
    const NAME: &'static str = "pull";
}
impl Action for Push {
    const NAME: &'static str = "push";
}
impl Action for Delete {
    const NAME: &'static str = "delete";
}
impl Action for Update {
    const NAME: &'static str = "update";
}

/// Proof that the caller may perform `A` on one repository.
pub struct Access<A: Action> {
    repo: RepoName,
    subject: Option<String>,
    _action: PhantomData<fn() -> A>,
}

impl<A: Action> Access<A> {
    /// Only the auth layer grants access.
    pub(crate) fn grant(repo: RepoName, subject: Option<String>) -> Access<A> {
        Access { repo, subject, _action: PhantomData }
    }

    pub fn repo(&self) -> &RepoName {
        &self.repo
    }

    /// Who was granted the access (`None` for anonymous callers). Upload
    /// sessions belong to the subject that opened them.
    pub fn subject(&self) -> Option<&str> {
        self.subject.as_deref()
    }
}

impl<A: Action> fmt::Debug for Access<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Access<{}>({}, {:?})", A::NAME, self.repo, self.subject)
    }
}
