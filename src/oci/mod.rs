//! Pure types of the OCI specs: digests, names, references, manifests and
//! the error vocabulary. No I/O, no HTTP.

pub mod digest;
pub mod error;
pub mod image;
pub mod manifest;
pub mod name;

pub use digest::{Algorithm, Digest, ResumableHasher};
pub use error::OciError;
pub use manifest::{Descriptor, Manifest, ManifestKind};
pub use name::{Reference, RepoName, Tag};
