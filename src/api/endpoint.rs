//! Parse first, then dispatch: one pure function turns a method and a raw
//! (still percent-encoded) path into an [`Endpoint`], a variant per API
//! operation. Repository names contain slashes, so the path is read from the
//! right, where the operation's fixed segments are. Nothing is
//! percent-decoded: no valid name, tag or digest contains `%`, so an encoded
//! slash or dot is simply invalid.

use http::Method;

use crate::oci::digest::DigestError;
use crate::oci::name::ReferenceError;
use crate::oci::{Digest, OciError, Reference, RepoName};

/// One operation of the Distribution API (ids from the spec's endpoint table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// end-1 `GET /v2/`
    Base,
    /// `GET /v2/_catalog`
    Catalog,
    /// end-2 `GET /v2/<name>/blobs/<digest>`
    BlobGet { name: RepoName, digest: Digest },
    /// end-2 `HEAD /v2/<name>/blobs/<digest>`
    BlobHead { name: RepoName, digest: Digest },
    /// end-10 `DELETE /v2/<name>/blobs/<digest>`
    BlobDelete { name: RepoName, digest: Digest },
    /// end-4a/4b/11 `POST /v2/<name>/blobs/uploads/`
    UploadStart { name: RepoName },
    /// end-13 `GET /v2/<name>/blobs/uploads/<id>`
    UploadStatus { name: RepoName, id: String },
    /// end-5 `PATCH /v2/<name>/blobs/uploads/<id>`
    UploadPatch { name: RepoName, id: String },
    /// end-6 `PUT /v2/<name>/blobs/uploads/<id>?digest=`
    UploadPut { name: RepoName, id: String },
    /// `DELETE /v2/<name>/blobs/uploads/<id>`
    UploadCancel { name: RepoName, id: String },
    /// end-3 `GET /v2/<name>/manifests/<reference>`
    ManifestGet { name: RepoName, reference: Reference },
    /// end-3 `HEAD /v2/<name>/manifests/<reference>`
    ManifestHead { name: RepoName, reference: Reference },
    /// end-7 `PUT /v2/<name>/manifests/<reference>`
    ManifestPut { name: RepoName, reference: Reference },
    /// end-9 `DELETE /v2/<name>/manifests/<reference>`
    ManifestDelete { name: RepoName, reference: Reference },
    /// end-8a/8b `GET /v2/<name>/tags/list`
    TagsList { name: RepoName },
    /// end-12a/12b `GET /v2/<name>/referrers/<digest>`
    Referrers { name: RepoName, digest: Digest },
    /// `GET /v2/_oci/ext/discover`: the extensions of this build.
    Discover,
    /// `GET /v2/<name>/_berth/scan/<reference>`: the scan report (the
    /// `scan` extension; builds without it answer 404).
    ScanReport { name: RepoName, reference: Reference },
    /// `GET /v2/_berth/search/repositories`: repositories by name (the
    /// `search` extension; builds without it answer 404).
    SearchRepositories,
    /// `GET /v2/_berth/search/tags/<name>`: a repository's tags.
    SearchTags { name: RepoName },
    /// `GET /v2/_berth/search/images/<name>/<reference>`: image details.
    SearchImage { name: RepoName, reference: Reference },
}

/// Why a request matched no operation.
#[derive(Debug)]
pub enum ParseError {
    /// Not an API path at all.
    NotFound,
    /// A known path with a method it does not take; carries the allowed methods.
    MethodNotAllowed(&'static str),
    /// A known path whose name, digest or reference is malformed.
    Invalid(OciError),
}

impl Endpoint {
    /// The repository the operation is about, if any.
    pub fn repo(&self) -> Option<&RepoName> {
        use Endpoint::*;
        match self {
            Base | Catalog | Discover | SearchRepositories => None,
            BlobGet { name, .. }
            | BlobHead { name, .. }
            | BlobDelete { name, .. }
            | UploadStart { name }
            | UploadStatus { name, .. }
            | UploadPatch { name, .. }
            | UploadPut { name, .. }
            | UploadCancel { name, .. }
            | ManifestGet { name, .. }
            | ManifestHead { name, .. }
            | ManifestPut { name, .. }
            | ManifestDelete { name, .. }
            | TagsList { name }
            | Referrers { name, .. }
            | ScanReport { name, .. }
            | SearchTags { name }
            | SearchImage { name, .. } => Some(name),
        }
    }

    /// Short operation name for logs and metrics.
    pub fn operation(&self) -> &'static str {
        use Endpoint::*;
        match self {
            Base => "base",
            Catalog => "catalog",
            BlobGet { .. } => "blob_get",
            BlobHead { .. } => "blob_head",
            BlobDelete { .. } => "blob_delete",
            UploadStart { .. } => "upload_start",
            UploadStatus { .. } => "upload_status",
            UploadPatch { .. } => "upload_patch",
            UploadPut { .. } => "upload_put",
            UploadCancel { .. } => "upload_cancel",
            ManifestGet { .. } => "manifest_get",
            ManifestHead { .. } => "manifest_head",
            ManifestPut { .. } => "manifest_put",
            ManifestDelete { .. } => "manifest_delete",
            TagsList { .. } => "tags_list",
            Referrers { .. } => "referrers",
            Discover => "discover",
            ScanReport { .. } => "scan_report",
            SearchRepositories => "search_repositories",
            SearchTags { .. } => "search_tags",
            SearchImage { .. } => "search_image",
        }
    }
}

fn name(s: &str) -> Result<RepoName, ParseError> {
    s.parse().map_err(|e: crate::oci::name::NameError| ParseError::Invalid(OciError::NameInvalid(e.to_string())))
}

fn digest(s: &str) -> Result<Digest, ParseError> {
    s.parse().map_err(|e: DigestError| ParseError::Invalid(OciError::DigestInvalid(e.to_string())))
}

fn reference(s: &str) -> Result<Reference, ParseError> {
    s.parse().map_err(|e| {
        ParseError::Invalid(match e {
            ReferenceError::Digest(e) => OciError::DigestInvalid(e.to_string()),
            ReferenceError::Tag(e) => OciError::ManifestInvalid(format!("invalid reference: {e}")),
        })
    })
}

/// Parse `method` + raw `path` into an endpoint.
pub fn parse(method: &Method, path: &str) -> Result<Endpoint, ParseError> {
    let rest = match path.strip_prefix("/v2") {
        Some("") | Some("/") => {
            return match *method {
                Method::GET | Method::HEAD => Ok(Endpoint::Base),
                _ => Err(ParseError::MethodNotAllowed("GET, HEAD")),
            }
        }
        Some(r) => r.strip_prefix('/').ok_or(ParseError::NotFound)?,
        None => return Err(ParseError::NotFound),
    };
    if rest == "_oci/ext/discover" {
        return match *method {
            Method::GET => Ok(Endpoint::Discover),
            _ => Err(ParseError::MethodNotAllowed("GET")),
        };
    }
    if rest == "_catalog" {
        return match *method {
            Method::GET => Ok(Endpoint::Catalog),
            _ => Err(ParseError::MethodNotAllowed("GET")),
        };
    }
    // Bound the work done on hostile paths before splitting.
    if rest.len() > 2048 {
        return Err(ParseError::Invalid(OciError::NameInvalid("path too long".into())));
    }
    // _berth/search/...: `_berth` cannot be a name component.
    if let Some(search) = rest.strip_prefix("_berth/search/") {
        return parse_search(method, search);
    }
    let segs: Vec<&str> = rest.split('/').collect();
    let n = segs.len();
    let at = |i: usize| -> &str { segs[n - i] }; // at(1) is the last segment
    let joined = |drop: usize| segs[..n - drop].join("/");

    // <name>/blobs/uploads/ and <name>/blobs/uploads
    if n >= 3 && at(3) == "blobs" && at(2) == "uploads" && at(1).is_empty()
        || n >= 2 && at(2) == "blobs" && at(1) == "uploads"
    {
        let drop = if at(1).is_empty() { 3 } else { 2 };
        let name = name(&joined(drop))?;
        return match *method {
            Method::POST => Ok(Endpoint::UploadStart { name }),
            _ => Err(ParseError::MethodNotAllowed("POST")),
        };
    }
    if n >= 4 && at(3) == "blobs" && at(2) == "uploads" {
        let name = name(&joined(3))?;
        let id = at(1).to_owned();
        return match *method {
            Method::GET => Ok(Endpoint::UploadStatus { name, id }),
            Method::PATCH => Ok(Endpoint::UploadPatch { name, id }),
            Method::PUT => Ok(Endpoint::UploadPut { name, id }),
            Method::DELETE => Ok(Endpoint::UploadCancel { name, id }),
            _ => Err(ParseError::MethodNotAllowed("GET, PATCH, PUT, DELETE")),
        };
    }
    if n >= 3 && at(2) == "tags" && at(1) == "list" {
        let name = name(&joined(2))?;
        return match *method {
            Method::GET => Ok(Endpoint::TagsList { name }),
            _ => Err(ParseError::MethodNotAllowed("GET")),
        };
    }
    if n >= 3 && at(2) == "blobs" {
        let allowed = "GET, HEAD, DELETE";
        if !matches!(*method, Method::GET | Method::HEAD | Method::DELETE) {
            return Err(ParseError::MethodNotAllowed(allowed));
        }
        let name = name(&joined(2))?;
        let digest = digest(at(1))?;
        return Ok(match *method {
            Method::GET => Endpoint::BlobGet { name, digest },
            Method::HEAD => Endpoint::BlobHead { name, digest },
            _ => Endpoint::BlobDelete { name, digest },
        });
    }
    if n >= 3 && at(2) == "manifests" {
        if !matches!(*method, Method::GET | Method::HEAD | Method::PUT | Method::DELETE) {
            return Err(ParseError::MethodNotAllowed("GET, HEAD, PUT, DELETE"));
        }
        let name = name(&joined(2))?;
        let reference = match reference(at(1)) {
            // Reading or deleting something that cannot exist is a 404 (the
            // spec's end-3 and end-9 fail only that way); pushing it is a 400.
            Err(ParseError::Invalid(OciError::ManifestInvalid(m))) if *method != Method::PUT => {
                return Err(ParseError::Invalid(OciError::ManifestUnknown(m)))
            }
            r => r?,
        };
        return Ok(match *method {
            Method::GET => Endpoint::ManifestGet { name, reference },
            Method::HEAD => Endpoint::ManifestHead { name, reference },
            Method::PUT => Endpoint::ManifestPut { name, reference },
            _ => Endpoint::ManifestDelete { name, reference },
        });
    }
    // <name>/_berth/scan/<reference>: `_berth` cannot be a name component.
    if n >= 4 && at(3) == "_berth" && at(2) == "scan" {
        if *method != Method::GET {
            return Err(ParseError::MethodNotAllowed("GET"));
        }
        let name = name(&joined(3))?;
        let reference = match reference(at(1)) {
            Err(ParseError::Invalid(OciError::ManifestInvalid(m))) => {
                return Err(ParseError::Invalid(OciError::ManifestUnknown(m)))
            }
            r => r?,
        };
        return Ok(Endpoint::ScanReport { name, reference });
    }
    if n >= 3 && at(2) == "referrers" {
        if *method != Method::GET {
            return Err(ParseError::MethodNotAllowed("GET"));
        }
        let name = name(&joined(2))?;
        let digest = digest(at(1))?;
        return Ok(Endpoint::Referrers { name, digest });
    }
    Err(ParseError::NotFound)
}

/// `repositories`, `tags/<name>`, `images/<name>/<reference>`: the name is
/// the rest of the path (a reference never holds `/`).
fn parse_search(method: &Method, path: &str) -> Result<Endpoint, ParseError> {
    let endpoint = if path == "repositories" {
        Endpoint::SearchRepositories
    } else if let Some(n) = path.strip_prefix("tags/") {
        Endpoint::SearchTags { name: name(n)? }
    } else if let Some((n, r)) = path.strip_prefix("images/").and_then(|p| p.rsplit_once('/')) {
        let name = name(n)?;
        let reference = match reference(r) {
            Err(ParseError::Invalid(OciError::ManifestInvalid(m))) => {
                return Err(ParseError::Invalid(OciError::ManifestUnknown(m)))
            }
            r => r?,
        };
        Endpoint::SearchImage { name, reference }
    } else {
        return Err(ParseError::NotFound);
    };
    match *method {
        Method::GET => Ok(endpoint),
        _ => Err(ParseError::MethodNotAllowed("GET")),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const D: &str = "sha256:6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b";
    const U: &str = "0f8fad5b-d9cb-469f-a165-70867728950e";

    fn n(s: &str) -> RepoName {
        s.parse().unwrap()
    }

    fn d() -> Digest {
        D.parse().unwrap()
    }

    /// One helper for the whole table: (method, path) -> expected outcome.
    fn check(method: &str, path: &str, expected: Result<Endpoint, &str>) {
        let method: Method = method.parse().unwrap();
        let got = parse(&method, path);
        match (got, expected) {
            (Ok(g), Ok(e)) => assert_eq!(g, e, "{method} {path}"),
            (Err(ParseError::NotFound), Err("404")) => {}
            (Err(ParseError::MethodNotAllowed(_)), Err("405")) => {}
            (Err(ParseError::Invalid(e)), Err(code)) if e.code() == code => {}
            (got, expected) => panic!("{method} {path}: got {got:?}, expected {expected:?}"),
        }
    }

    /// The spec's endpoint table (end-1 .. end-13), plus catalog.
    #[test]
    fn spec_endpoint_table() {
        check("GET", "/v2/", Ok(Endpoint::Base)); // end-1
        check("GET", "/v2", Ok(Endpoint::Base));
        check("GET", "/v2/_oci/ext/discover", Ok(Endpoint::Discover));
        check("POST", "/v2/_oci/ext/discover", Err("405"));
        check(
            "GET",
            "/v2/a/b/_berth/scan/latest",
            Ok(Endpoint::ScanReport { name: n("a/b"), reference: "latest".parse().unwrap() }),
        );
        check(
            "GET",
            &format!("/v2/a/_berth/scan/{D}"),
            Ok(Endpoint::ScanReport { name: n("a"), reference: D.parse().unwrap() }),
        );
        check("PUT", "/v2/a/_berth/scan/latest", Err("405"));
        check("GET", "/v2/_berth/scan/latest", Err("404"));
        check("GET", "/v2/A/_berth/scan/latest", Err("NAME_INVALID"));
        check("GET", "/v2/a/_berth/scan/-bad", Err("MANIFEST_UNKNOWN"));
        check("GET", "/v2/_berth/search/repositories", Ok(Endpoint::SearchRepositories));
        check("POST", "/v2/_berth/search/repositories", Err("405"));
        check("GET", "/v2/_berth/search/tags/a/images", Ok(Endpoint::SearchTags { name: n("a/images") }));
        check(
            "GET",
            "/v2/_berth/search/images/a/tags/list",
            Ok(Endpoint::SearchImage { name: n("a/tags"), reference: "list".parse().unwrap() }),
        );
        check(
            "GET",
            &format!("/v2/_berth/search/images/team/app/{D}"),
            Ok(Endpoint::SearchImage { name: n("team/app"), reference: D.parse().unwrap() }),
        );
        check("GET", "/v2/_berth/search/images/app", Err("404"));
        check("GET", "/v2/_berth/search/images/a/-bad", Err("MANIFEST_UNKNOWN"));
        check("GET", "/v2/_berth/search/tags/A", Err("NAME_INVALID"));
        check("GET", "/v2/_berth/search/tags/", Err("NAME_INVALID"));
        check("GET", "/v2/_berth/search/other", Err("404"));
        check("GET", "/v2/_berth/search/", Err("404"));
        check("GET", &format!("/v2/a/b/blobs/{D}"), Ok(Endpoint::BlobGet { name: n("a/b"), digest: d() })); // end-2
        check("HEAD", &format!("/v2/a/blobs/{D}"), Ok(Endpoint::BlobHead { name: n("a"), digest: d() }));
        check(
            "GET",
            "/v2/a/manifests/latest",
            Ok(Endpoint::ManifestGet { name: n("a"), reference: "latest".parse().unwrap() }),
        ); // end-3
        check(
            "HEAD",
            &format!("/v2/a/manifests/{D}"),
            Ok(Endpoint::ManifestHead { name: n("a"), reference: D.parse().unwrap() }),
        );
        check("POST", "/v2/a/blobs/uploads/", Ok(Endpoint::UploadStart { name: n("a") })); // end-4a, 4b, 11
        check("POST", "/v2/a/b/c/blobs/uploads", Ok(Endpoint::UploadStart { name: n("a/b/c") }));
        check("PATCH", &format!("/v2/a/blobs/uploads/{U}"), Ok(Endpoint::UploadPatch { name: n("a"), id: U.into() })); // end-5
        check("PUT", &format!("/v2/a/blobs/uploads/{U}"), Ok(Endpoint::UploadPut { name: n("a"), id: U.into() })); // end-6
        check(
            "PUT",
            "/v2/a/manifests/v1",
            Ok(Endpoint::ManifestPut { name: n("a"), reference: "v1".parse().unwrap() }),
        ); // end-7
        check("GET", "/v2/a/tags/list", Ok(Endpoint::TagsList { name: n("a") })); // end-8a, 8b
        check(
            "DELETE",
            "/v2/a/manifests/v1",
            Ok(Endpoint::ManifestDelete { name: n("a"), reference: "v1".parse().unwrap() }),
        ); // end-9
        check("DELETE", &format!("/v2/a/blobs/{D}"), Ok(Endpoint::BlobDelete { name: n("a"), digest: d() })); // end-10
        check("GET", &format!("/v2/a/referrers/{D}"), Ok(Endpoint::Referrers { name: n("a"), digest: d() })); // end-12
        check("GET", &format!("/v2/a/blobs/uploads/{U}"), Ok(Endpoint::UploadStatus { name: n("a"), id: U.into() })); // end-13
        check("DELETE", &format!("/v2/a/blobs/uploads/{U}"), Ok(Endpoint::UploadCancel { name: n("a"), id: U.into() }));
        check("GET", "/v2/_catalog", Ok(Endpoint::Catalog));
    }

    #[test]
    fn names_that_look_like_operations() {
        check(
            "GET",
            "/v2/a/manifests/b/manifests/latest",
            Ok(Endpoint::ManifestGet { name: n("a/manifests/b"), reference: "latest".parse().unwrap() }),
        );
        check("GET", "/v2/blobs/tags/list", Ok(Endpoint::TagsList { name: n("blobs") }));
        check("POST", "/v2/x/blobs/blobs/uploads/", Ok(Endpoint::UploadStart { name: n("x/blobs") }));
        check("GET", &format!("/v2/uploads/blobs/{D}"), Ok(Endpoint::BlobGet { name: n("uploads"), digest: d() }));
    }

    #[test]
    fn bad_paths() {
        check("GET", "/", Err("404"));
        check("GET", "/v3/", Err("404"));
        check("GET", "/v2x", Err("404"));
        check("GET", "/v2/a", Err("404"));
        check("GET", "/v2/a/b", Err("404"));
        check("GET", "/v2/a/unknown/x", Err("404"));
        check("POST", "/v2/", Err("405"));
        check("POST", "/v2/a/manifests/x", Err("405"));
        check("PUT", &format!("/v2/a/blobs/{D}"), Err("405"));
        check("GET", "/v2/a/blobs/uploads/", Err("405"));
        check("POST", "/v2/a/tags/list", Err("405"));
        check("GET", "/v2/A/manifests/x", Err("NAME_INVALID"));
        check("GET", "/v2/a/../b/manifests/x", Err("NAME_INVALID"));
        check("GET", "/v2/a%2Fb/manifests/x", Err("NAME_INVALID"));
        check("GET", "/v2/a%2e%2e/manifests/x", Err("NAME_INVALID"));
        check("GET", "/v2//a/manifests/x", Err("NAME_INVALID"));
        check("GET", "/v2/manifests/x", Err("404"));
        check("GET", &format!("/v2/{}/manifests/x", "a".repeat(256)), Err("NAME_INVALID"));
        check("GET", &format!("/v2/{}/manifests/x", "a/".repeat(1500)), Err("NAME_INVALID"));
        check("GET", "/v2/a/blobs/sha256:abc", Err("DIGEST_INVALID"));
        check("GET", "/v2/a/blobs/latest", Err("DIGEST_INVALID"));
        check("GET", "/v2/a/manifests/sha256:zz", Err("DIGEST_INVALID"));
        check("GET", "/v2/a/manifests/bad%20tag", Err("MANIFEST_UNKNOWN"));
        check("HEAD", "/v2/a/manifests/.INVALID_MANIFEST_NAME", Err("MANIFEST_UNKNOWN"));
        check("DELETE", "/v2/a/manifests/..", Err("MANIFEST_UNKNOWN"));
        check("PUT", "/v2/a/manifests/..", Err("MANIFEST_INVALID"));
        check("GET", "/v2/a/referrers/latest", Err("DIGEST_INVALID"));
    }

    proptest! {
        #[test]
        fn parse_never_panics(path in "/v2/[a-z0-9/._%:-]{0,80}", m in prop_oneof![Just("GET"), Just("PUT"), Just("POST"), Just("PATCH"), Just("DELETE"), Just("HEAD")]) {
            let _ = parse(&m.parse().unwrap(), &path);
        }

        #[test]
        fn parse_never_panics_any(path in "\\PC{0,120}") {
            let _ = parse(&Method::GET, &path);
        }
    }
}
