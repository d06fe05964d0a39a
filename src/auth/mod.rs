//! Who is asking, and what they may do. The embedded core serves anonymous
//! clients only (the config refuses to expose that beyond loopback unless
//! told to); authentication methods and policies plug in here, and this is
//! the only place that mints [`Access`] values.

use http::request::Parts;

use crate::oci::{OciError, RepoName};
use crate::registry::access::{Access, Action};

/// How a request was authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    Anonymous,
}

/// The caller, as established by authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Stable subject name; `None` for anonymous callers.
    pub subject: Option<String>,
    pub groups: Vec<String>,
    pub method: AuthMethod,
}

impl Identity {
    pub fn anonymous() -> Identity {
        Identity { subject: None, groups: Vec::new(), method: AuthMethod::Anonymous }
    }
}

/// Authentication and authorization for every request.
#[derive(Debug, Clone, Default)]
pub struct Gate {}

impl Gate {
    /// A gate that lets anonymous callers do everything: the embedded default.
    pub fn anonymous() -> Gate {
        Gate {}
    }

    /// Establish the caller's identity from the request.
    pub fn authenticate(&self, _request: &Parts) -> Result<Identity, OciError> {
        Ok(Identity::anonymous())
    }

    /// Grant `A` on `repo` to `identity`, or refuse.
    pub fn authorize<A: Action>(&self, identity: &Identity, repo: &RepoName) -> Result<Access<A>, OciError> {
        Ok(Access::grant(repo.clone(), identity.subject.clone()))
    }

    /// Whether `identity` may see `repo` in the catalog.
    pub fn may_list(&self, _identity: &Identity, _repo: &str) -> bool {
        true
    }
}
