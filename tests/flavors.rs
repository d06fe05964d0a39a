//! Build flavors: the minimal build's dependency graph holds none of the
//! extensions' crates, each extension alone brings only its own, and the
//! binary names its flavor.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

fn cargo(args: &[&str]) -> String {
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo");
    assert!(out.status.success(), "cargo {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The crates in the berth package's normal (non-dev, non-build) graph.
fn tree(features: &[&str]) -> BTreeSet<String> {
    let mut args =
        vec!["tree", "--offline", "--locked", "-p", "berth", "-e", "normal", "--prefix", "none", "--format", "{p}"];
    args.extend_from_slice(features);
    cargo(&args)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "berth")
        .map(str::to_owned)
        .collect()
}

/// Extensions that are code only: they bring no crate of their own.
/// `search` indexes the records with the standard library's collections.
const CODE_ONLY: &[&str] = &["search"];

/// The berth package's `features` table, as `cargo metadata` reads it
/// (read once per test process).
fn features() -> &'static serde_json::Map<String, serde_json::Value> {
    static FEATURES: std::sync::OnceLock<serde_json::Map<String, serde_json::Value>> = std::sync::OnceLock::new();
    FEATURES.get_or_init(|| {
        let meta: serde_json::Value =
            serde_json::from_str(&cargo(&["metadata", "--offline", "--locked", "--no-deps", "--format-version", "1"]))
                .unwrap();
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
        let berth = meta["packages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "berth" && Path::new(p["manifest_path"].as_str().unwrap()) == manifest)
            .unwrap();
        berth["features"].as_object().unwrap().clone()
    })
}

/// The optional dependencies of the berth package, by the feature enabling
/// them (with the dependencies of the extensions it enables).
fn extension_dependencies() -> Vec<(String, Vec<String>)> {
    let features = features();
    let mut out = Vec::new();
    for (feature, enables) in features {
        // `test-helpers` is no extension: it compiles nothing but test
        // constructors.
        if feature == "default" || feature == "test-helpers" {
            continue;
        }
        let deps: Vec<String> = enables
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e.as_str()?.strip_prefix("dep:").map(str::to_owned))
            .collect();
        out.push((feature.clone(), deps));
    }
    out
}

/// The extensions `feature` enables besides itself (`ui` needs `search`).
fn implied(feature: &str) -> Vec<String> {
    features()[feature]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e.as_str())
        .filter(|e| !e.starts_with("dep:") && !e.contains('/'))
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_extension_is_a_feature_of_the_default_build_listed_by_the_binary() {
    let extensions = extension_dependencies();
    let names: Vec<&str> = extensions.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(names, berth::flavor::EXTENSIONS, "Cargo.toml features and berth::flavor::EXTENSIONS disagree");
    for (feature, deps) in &extensions {
        let code_only = CODE_ONLY.contains(&feature.as_str());
        assert_eq!(deps.is_empty(), code_only, "extension {feature}: crates {deps:?}, code only: {code_only}");
    }
    let default: Vec<&str> = features()["default"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(default, names, "the default build must have every extension");

    let out = Command::new(env!("CARGO_BIN_EXE_berth")).arg("--version").output().unwrap();
    let line = String::from_utf8(out.stdout).unwrap();
    assert!(line.starts_with(&format!("berth {}", env!("CARGO_PKG_VERSION"))), "{line}");
    assert!(line.contains(&format!("flavor: {}", berth::flavor::flavor())), "{line}");
    for f in berth::flavor::features() {
        assert!(line.contains(f), "{line}");
    }
}

#[test]
fn the_minimal_tree_has_none_of_the_extensions_crates() {
    let minimal = tree(&["--no-default-features"]);
    let full = tree(&["--all-features"]);
    let extensions = extension_dependencies();
    // The core the minimal flavor must keep.
    for core in ["axum", "tokio", "rustls", "aws-sdk-s3", "redis", "ldap3", "jsonwebtoken", "argon2", "sha2"] {
        assert!(minimal.contains(core), "{core} missing from the minimal build");
    }
    for (feature, deps) in &extensions {
        for dep in deps {
            assert!(full.contains(dep), "{dep} ({feature}) missing from the full build");
            assert!(!minimal.contains(dep), "{dep} ({feature}) is in the minimal build");
        }
    }
    // Everything only the full build has came with an extension: no crate
    // outside the extensions' own graphs changes between flavors.
    let extra: BTreeSet<&String> = full.difference(&minimal).collect();
    assert!(!extra.is_empty());
    let mut explained = BTreeSet::new();
    for (feature, deps) in &extensions {
        let alone = tree(&["--no-default-features", "--features", feature]);
        let implied = implied(feature);
        // An extension alone brings its own crates (and those of the
        // extensions it needs) and none of another's.
        for (other, other_deps) in &extensions {
            let expected = other == feature || implied.contains(other);
            for dep in other_deps {
                assert_eq!(alone.contains(dep), expected, "{dep} of {other} with only {feature}");
            }
        }
        assert!(deps.iter().all(|d| alone.contains(d)));
        explained.extend(alone.difference(&minimal).cloned());
    }
    let unexplained: Vec<_> = extra.iter().filter(|c| !explained.contains(c.as_str())).collect();
    assert!(unexplained.is_empty(), "in the full build but in no extension alone: {unexplained:?}");
}
