//! End-to-end with real clients: skopeo copies multi-layer OCI and Docker
//! schema 2 images in and out (digests compared), and oras-py pushes an
//! artifact with a subject and reads it back through the referrers API.
//! The clients come from `scripts/install-test-deps`; a missing client fails
//! the test with the command that installs it.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::Berth;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn require(program: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(found, "{program} is not installed: run scripts/install-test-deps (or apt-get install {program})");
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{what} failed ({:?})\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);
    println!("{stdout}");
}

fn assert_clean_log(b: &Berth) {
    let log = b.stderr();
    assert!(!log.contains("status=500") && !log.contains("panicked"), "server errors:\n{log}");
}

#[test]
fn skopeo_roundtrip_oci_and_docker_images() {
    require("skopeo");
    require("umoci");
    let b = Berth::start("");
    let work = tempfile::tempdir().unwrap();
    let script = repo_root().join("tests/clients/skopeo-roundtrip.sh");
    run(Command::new("bash").arg(&script).arg(&b.addr).arg(work.path()), "skopeo-roundtrip.sh");
    assert_clean_log(&b);
    // The two images share layers: each blob is stored once.
    let blobs = common::files_under(&b.data_dir().join("blobs"));
    let mut names: Vec<_> = blobs.iter().filter_map(|p| p.file_name().map(|n| n.to_owned())).collect();
    let total = names.len();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), total);
    assert_files_inside(&b.data_dir(), &blobs);
}

#[test]
fn oras_artifact_with_subject_and_referrers() {
    let python = common::venv_python();
    let b = Berth::start("");
    let script = repo_root().join("tests/clients/oras_referrers.py");
    run(Command::new(python).arg(&script).arg(&b.addr), "oras_referrers.py");
    assert_clean_log(&b);
}

fn assert_files_inside(root: &Path, files: &[PathBuf]) {
    for f in files {
        assert!(f.starts_with(root), "{f:?} outside {root:?}");
    }
}
