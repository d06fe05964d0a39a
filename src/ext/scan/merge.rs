//! An image's inventory: its layers' facts applied bottom to top, the way
//! a container runtime stacks them. A later layer's file replaces an
//! earlier one at the same path, a whiteout deletes a path and everything
//! under it, an opaque directory hides what lower layers put in it.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

use super::inventory::{FileFacts, LayerInventory, OsRelease, Package};

/// A package as the image has it: where it was found and which layer
/// brought it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Located {
    #[serde(flatten)]
    pub package: Package,
    pub path: String,
    pub layer: String,
    pub analyzer: String,
}

/// The merged view of an image (one platform).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInventory {
    pub os: Option<OsRelease>,
    pub packages: Vec<Located>,
    /// Problems by layer digest (errors end a layer's analysis early).
    pub errors: Vec<(String, String)>,
    pub warnings: Vec<(String, String)>,
}

/// The most symbolic links followed to resolve one path.
const MAX_HOPS: usize = 40;

/// Join a link's directory and its target, `..` stopping at the root (as
/// in the container's own filesystem).
fn resolve_target(link: &str, target: &str) -> String {
    let base = if target.starts_with('/') {
        String::new()
    } else {
        link.rsplit_once('/').map(|(d, _)| d.to_owned()).unwrap_or_default()
    };
    let mut parts: Vec<&str> = base.split('/').filter(|p| !p.is_empty()).collect();
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    parts.join("/")
}

pub fn merge(layers: &[LayerInventory]) -> ImageInventory {
    let mut files: BTreeMap<String, (usize, FileFacts)> = BTreeMap::new();
    let mut os: BTreeMap<String, OsRelease> = BTreeMap::new();
    let mut links: BTreeMap<String, String> = BTreeMap::new();
    let mut out = ImageInventory::default();
    for (i, layer) in layers.iter().enumerate() {
        // A path is hidden when it, or a directory above it, is whited out
        // or opaque: a lookup per ancestor, whatever the number of
        // whiteouts.
        let whiteouts: HashSet<&str> = layer.whiteouts.iter().map(String::as_str).collect();
        let opaque: HashSet<&str> = layer.opaque_dirs.iter().map(String::as_str).collect();
        let root_opaque = opaque.contains("");
        let hidden = |p: &str| {
            if root_opaque || whiteouts.contains(p) {
                return true;
            }
            let mut at = p;
            while let Some((dir, _)) = at.rsplit_once('/') {
                if whiteouts.contains(dir) || opaque.contains(dir) {
                    return true;
                }
                at = dir;
            }
            false
        };
        files.retain(|p, _| !hidden(p));
        // An executable at a path replaces what lower layers analyzed there.
        for e in &layer.executables {
            files.remove(e);
        }
        os.retain(|p, _| !hidden(p));
        links.retain(|p, _| !hidden(p));
        for f in &layer.files {
            files.insert(f.path.clone(), (i, f.clone()));
        }
        for (p, o) in &layer.os_release {
            links.remove(p);
            os.insert(p.clone(), o.clone());
        }
        for (p, t) in &layer.links {
            os.remove(p);
            files.remove(p);
            links.insert(p.clone(), t.clone());
        }
        out.errors.extend(layer.errors.iter().map(|e| (layer.digest.clone(), e.clone())));
        out.warnings.extend(layer.warnings.iter().map(|w| (layer.digest.clone(), w.clone())));
    }
    for start in super::analyzers::os::PATHS {
        let mut path = start.to_owned();
        let mut hops = 0;
        while let Some(target) = links.get(&path) {
            hops += 1;
            if hops > MAX_HOPS {
                out.warnings
                    .push((String::new(), format!("{start}: a symbolic link loop (more than {MAX_HOPS} links)")));
                break;
            }
            path = resolve_target(&path, target);
        }
        if let Some(o) = os.get(&path) {
            // An os-release without an ID still hides lower layers' files.
            out.os = (!o.id.is_empty()).then(|| o.clone());
            break;
        }
    }
    for (path, (i, f)) in files {
        for p in f.packages {
            out.packages.push(Located {
                package: p,
                path: path.clone(),
                layer: layers[i].digest.clone(),
                analyzer: f.analyzer.clone(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ext::scan::inventory::PackageType;

    fn layer(digest: &str) -> LayerInventory {
        LayerInventory { digest: digest.into(), ..Default::default() }
    }

    fn file(path: &str, names: &[&str]) -> FileFacts {
        FileFacts {
            path: path.into(),
            analyzer: "dpkg".into(),
            packages: names.iter().map(|n| Package::new(PackageType::Deb, *n, "1.0")).collect(),
        }
    }

    #[test]
    fn whiteouts_opaque_dirs_and_replacements() {
        let mut base = layer("l1");
        base.files = vec![
            file("var/lib/dpkg/status", &["a", "b"]),
            file("var/lib/dpkg/status.d/c", &["c"]),
            file("opt/app/node_modules/x/package.json", &["x"]),
            file("srv/y/METADATA", &["y"]),
        ];
        base.os_release.insert("usr/lib/os-release".into(), OsRelease { id: "debian".into(), ..Default::default() });
        base.links.insert("etc/os-release".into(), "../usr/lib/os-release".into());
        let mut top = layer("l2");
        top.files = vec![file("var/lib/dpkg/status", &["a"])];
        top.whiteouts = vec!["var/lib/dpkg/status.d/c".into(), "srv".into()];
        top.opaque_dirs = vec!["opt/app".into()];
        let merged = merge(&[base.clone(), top]);
        let got: Vec<(&str, &str)> =
            merged.packages.iter().map(|p| (p.package.name.as_str(), p.layer.as_str())).collect();
        assert_eq!(got, [("a", "l2")]);
        assert_eq!(merged.os.as_ref().map(|o| o.id.as_str()), Some("debian"));
        // Without the top layer everything is there.
        assert_eq!(merge(std::slice::from_ref(&base)).packages.len(), 5);
    }

    #[test]
    fn an_executable_replaces_a_lower_binary() {
        let mut l1 = layer("l1");
        l1.files = vec![FileFacts {
            path: "app/server".into(),
            analyzer: "gobinary".into(),
            packages: vec![Package::new(PackageType::Golang, "stdlib", "1.21.0")],
        }];
        let mut l2 = layer("l2");
        l2.executables = vec!["app/server".into()];
        assert_eq!(merge(&[l1.clone()]).packages.len(), 1);
        assert!(merge(&[l1, l2]).packages.is_empty());
        // An os-release without an ID hides the lower one.
        let mut low = layer("a");
        low.os_release.insert("etc/os-release".into(), OsRelease { id: "debian".into(), ..Default::default() });
        let mut high = layer("b");
        high.os_release.insert("etc/os-release".into(), OsRelease::default());
        assert!(merge(&[low, high]).os.is_none());
    }

    #[test]
    fn link_loops_end() {
        let mut l = layer("l1");
        l.links.insert("etc/os-release".into(), "os-release".into());
        l.links.insert("usr/lib/os-release".into(), "../../usr/lib/os-release".into());
        let merged = merge(&[l]);
        assert!(merged.os.is_none());
        assert!(merged.warnings.iter().any(|(_, w)| w.contains("loop")), "{:?}", merged.warnings);
        assert_eq!(resolve_target("etc/os-release", "../../../usr/lib/os-release"), "usr/lib/os-release");
        assert_eq!(resolve_target("etc/os-release", "/usr/lib/os-release"), "usr/lib/os-release");
    }
}
