//! The release binary is hardened, and runs the way the container image runs
//! it: as uid/gid 65532, from a directory tree it cannot write, with one
//! writable data directory.
//!
//! The binary under test is `BERTH_RELEASE_BIN`; `scripts/test` builds it
//! first with `cargo auditable build --release`.

#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{basic, client, sha256, user_hash, Berth};
use object::elf;
use object::read::elf::{Dyn as _, ElfFile64, FileHeader as _, ProgramHeader as _};
use object::{Endianness, Object as _, ObjectSection as _};

/// What the checks found in one ELF file.
#[derive(Debug, Default)]
struct Findings {
    pie: bool,
    relro: bool,
    bind_now: bool,
    nx_stack: bool,
    rpath: Vec<String>,
    symtab: bool,
    dependency_list: bool,
}

fn inspect(path: &Path) -> Findings {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let file =
        ElfFile64::<Endianness>::parse(&*data).unwrap_or_else(|e| panic!("{} is not ELF64: {e}", path.display()));
    let endian = file.endian();
    let mut f = Findings::default();
    let mut interpreter = false;
    let mut flags_1_pie = false;
    let mut gnu_stack = None;
    for ph in file.elf_program_headers() {
        match ph.p_type(endian) {
            elf::PT_INTERP => interpreter = true,
            elf::PT_GNU_RELRO => f.relro = true,
            elf::PT_GNU_STACK => gnu_stack = Some(ph.p_flags(endian)),
            elf::PT_DYNAMIC => {
                let dynamic = ph.dynamic(endian, &*data).unwrap().unwrap_or_default();
                let dynstr = file.section_by_name(".dynstr").and_then(|s| s.data().ok()).unwrap_or_default();
                for d in dynamic {
                    let (Some(tag), value) = (d.tag32(endian), d.d_val(endian)) else { continue };
                    match tag {
                        elf::DT_FLAGS if value & u64::from(elf::DF_BIND_NOW) != 0 => f.bind_now = true,
                        elf::DT_FLAGS_1 => {
                            if value & u64::from(elf::DF_1_NOW) != 0 {
                                f.bind_now = true;
                            }
                            if value & u64::from(elf::DF_1_PIE) != 0 {
                                flags_1_pie = true;
                            }
                        }
                        elf::DT_BIND_NOW => f.bind_now = true,
                        elf::DT_RPATH | elf::DT_RUNPATH => {
                            let name = usize::try_from(value)
                                .ok()
                                .and_then(|start| dynstr.get(start..))
                                .and_then(|rest| rest.split(|b| *b == 0).next())
                                .map(|b| String::from_utf8_lossy(b).into_owned())
                                .unwrap_or_else(|| "<unreadable>".into());
                            f.rpath.push(name);
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    // A position-independent executable is an ET_DYN object with an
    // interpreter (a shared library has none), and says so in DT_FLAGS_1.
    f.pie = file.elf_header().e_type(endian) == elf::ET_DYN && (interpreter || flags_1_pie);
    // No PT_GNU_STACK means an executable stack on most loaders.
    f.nx_stack = gnu_stack.is_some_and(|flags| flags & elf::PF_X == 0);
    f.symtab = file.section_by_name(".symtab").is_some();
    f.dependency_list = file.section_by_name(".dep-v0").is_some();
    f
}

/// Everything wrong with a binary meant for release.
fn problems(f: &Findings) -> Vec<String> {
    let mut out = Vec::new();
    if !f.pie {
        out.push("not position-independent (PIE)".to_owned());
    }
    if !f.relro {
        out.push("no GNU_RELRO segment".to_owned());
    }
    if !f.bind_now {
        out.push("no BIND_NOW: RELRO is only partial".to_owned());
    }
    if !f.nx_stack {
        out.push("executable stack".to_owned());
    }
    if !f.rpath.is_empty() {
        out.push(format!("RPATH/RUNPATH set: {:?}", f.rpath));
    }
    if f.symtab {
        out.push("symbol table not stripped".to_owned());
    }
    if !f.dependency_list {
        out.push("no embedded dependency list (.dep-v0): build with `cargo auditable build --release`".to_owned());
    }
    out
}

#[test]
fn the_release_binary_is_pie_with_full_relro_nx_no_rpath_stripped_and_auditable() {
    let bin = common::release_bin();
    let findings = inspect(&bin);
    let wrong = problems(&findings);
    assert!(wrong.is_empty(), "{}: {wrong:#?}\n{findings:#?}", bin.display());

    // A second opinion from Debian's checksec, which scripts/test installs.
    let out = Command::new("checksec")
        .arg("--output=json")
        .arg(format!("--file={}", bin.display()))
        .output()
        .expect("checksec is missing: apt-get install checksec (scripts/install-test-deps does)");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("checksec output is not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
    let entry = report.as_object().and_then(|o| o.values().next()).expect("one file in the report");
    for (key, want) in [("relro", "full"), ("pie", "yes"), ("nx", "yes"), ("rpath", "no"), ("runpath", "no")] {
        assert_eq!(entry[key], want, "checksec {key}: {entry}");
    }
}

/// The checks are not vacuous: a binary linked without each protection is
/// caught on each count, and one linked with them all passes them.
#[test]
fn the_checks_catch_a_binary_built_without_protections() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("main.c");
    std::fs::write(&src, "int main(void) { return 0; }\n").unwrap();
    let cc = |out: &str, flags: &[&str]| {
        let path = dir.path().join(out);
        let status = Command::new("gcc")
            .args(flags)
            .arg("-o")
            .arg(&path)
            .arg(&src)
            .status()
            .expect("gcc is missing: apt-get install gcc");
        assert!(status.success(), "gcc {flags:?}");
        path
    };
    let weak =
        cc("weak", &["-no-pie", "-Wl,-z,norelro", "-Wl,-z,lazy", "-Wl,-z,execstack", "-Wl,-rpath,/opt/untrusted/lib"]);
    let f = inspect(&weak);
    assert!(!f.pie && !f.relro && !f.bind_now && !f.nx_stack && f.symtab && !f.dependency_list, "{f:#?}");
    assert_eq!(f.rpath, vec!["/opt/untrusted/lib".to_owned()]);
    assert_eq!(problems(&f).len(), 7, "{:#?}", problems(&f));

    let strong = cc("strong", &["-fPIE", "-pie", "-Wl,-z,relro,-z,now", "-Wl,-z,noexecstack", "-s"]);
    let f = inspect(&strong);
    assert!(f.pie && f.relro && f.bind_now && f.nx_stack && f.rpath.is_empty() && !f.symtab, "{f:#?}");
    // gcc embeds no Rust dependency list: the only finding left.
    assert_eq!(problems(&f).len(), 1, "{:#?}", problems(&f));
}

const UID: u32 = 65532;
const USER: &str = "ci";
const PASSWORD: &str = "a long test password";

/// A root filesystem laid out like the image's, owned by root and
/// read-only to everyone else, with `/var/lib/berth` and `/tmp` given to the
/// service account (volumes, in a deployment).
struct ImageTree {
    dir: tempfile::TempDir,
}

impl ImageTree {
    fn new(bin: &Path, data_owner: u32) -> ImageTree {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        for d in ["usr/local/bin", "etc/berth", "var/lib/berth", "tmp"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::copy(bin, root.join("usr/local/bin/berth")).unwrap();
        // The image's own configuration, its absolute paths moved into the
        // tree and its listener onto an ephemeral loopback port.
        let image_config =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/container.toml")).unwrap();
        let moved = image_config
            .replace("0.0.0.0:5000", "127.0.0.1:0")
            .replace("/var/lib/berth", &root.join("var/lib/berth").display().to_string())
            .replace("/etc/berth/htpasswd", &root.join("etc/berth/htpasswd").display().to_string());
        assert_ne!(moved, image_config);
        std::fs::write(root.join("etc/berth/berth.toml"), moved).unwrap();
        std::fs::write(root.join("etc/berth/htpasswd"), format!("{}\n", user_hash(USER, PASSWORD))).unwrap();
        // Everything read-only: directories 0555, files 0444, the binary 0555.
        for entry in walk(&root) {
            let mode = if entry.is_dir() || entry.ends_with("usr/local/bin/berth") { 0o555 } else { 0o444 };
            std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o555)).unwrap();
        // The tree's parent must be traversable by the service account.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        chown(&root.join("var/lib/berth"), data_owner);
        std::fs::set_permissions(root.join("var/lib/berth"), std::fs::Permissions::from_mode(0o700)).unwrap();
        chown(&root.join("tmp"), UID);
        std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
        ImageTree { dir }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// `berth serve` as 65532:65532 with no supplementary groups, no
    /// capabilities and no_new_privs, from inside the tree.
    fn command(&self) -> Command {
        let root = self.root();
        let mut cmd = Command::new("setpriv");
        cmd.args([
            "--reuid=65532",
            "--regid=65532",
            "--clear-groups",
            "--no-new-privs",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--",
        ]);
        cmd.arg(root.join("usr/local/bin/berth"))
            .args(["serve", "--config"])
            .arg(root.join("etc/berth/berth.toml"))
            .current_dir(&root)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("TMPDIR", root.join("tmp"));
        cmd
    }
}

impl Drop for ImageTree {
    fn drop(&mut self) {
        // Give the tree back so the temporary directory can be removed.
        let _ = Command::new("chmod").arg("-R").arg("u+w").arg(self.dir.path()).status();
    }
}

/// These tests switch to uid 65532 and must be able to kill what they
/// start: they run as root (CI on GitHub runs them with sudo).
fn require_root() {
    assert!(
        is_root(),
        "this test switches to uid 65532 and must run as root (e.g. `sudo -E cargo test --test hardening`)"
    );
}

/// A child process killed when dropped, also when the test fails.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

fn chown(path: &Path, uid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(uid)).unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        }
        out.push(path);
    }
    out
}

/// Every path in the tree with its size and modification time, except the
/// writable directories.
fn snapshot(root: &Path) -> Vec<(PathBuf, u64, i64)> {
    let mut all: Vec<_> = walk(root)
        .into_iter()
        .filter(|p| !p.starts_with(root.join("var/lib/berth")) && !p.starts_with(root.join("tmp")))
        .map(|p| {
            let m = std::fs::symlink_metadata(&p).unwrap();
            (p, m.len(), m.mtime())
        })
        .collect();
    all.sort();
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_as_an_unprivileged_user_from_a_read_only_tree() {
    require_root();
    let tree = ImageTree::new(&common::release_bin(), UID);
    let before = snapshot(&tree.root());
    let log_dir = tempfile::tempdir().unwrap();
    let stderr_path = log_dir.path().join("stderr.log");
    let b = Berth::launch(tree.command(), log_dir, stderr_path);

    // It runs as 65532 for real, with no capabilities.
    let status = std::fs::read_to_string(format!("/proc/{}/status", b.pid())).unwrap();
    let field = |name: &str| {
        status.lines().find(|l| l.starts_with(name)).unwrap().split_whitespace().skip(1).collect::<Vec<_>>()
    };
    assert_eq!(field("Uid:"), vec!["65532"; 4], "{status}");
    assert_eq!(field("Gid:"), vec!["65532"; 4], "{status}");
    assert_eq!(field("CapEff:"), vec!["0000000000000000"], "{status}");
    assert_eq!(field("NoNewPrivs:"), vec!["1"], "{status}");

    // A push and a pull work; the bytes land in the data directory only.
    let http = client();
    assert_eq!(http.get(b.url("/readyz")).send().await.unwrap().status(), 200);
    // The image's configuration requires credentials.
    assert_eq!(http.get(b.url("/v2/")).send().await.unwrap().status(), 401);
    let auth = basic(USER, PASSWORD);
    let layer = b"a layer written by an unprivileged registry".to_vec();
    let digest = sha256(&layer);
    let resp = http
        .post(b.url(&format!("/v2/ro/test/blobs/uploads/?digest={digest}")))
        .header("authorization", &auth)
        .header("content-type", "application/octet-stream")
        .body(layer.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap_or_default());
    let config = b"{}".to_vec();
    let config_digest = sha256(&config);
    let resp = http
        .post(b.url(&format!("/v2/ro/test/blobs/uploads/?digest={config_digest}")))
        .header("authorization", &auth)
        .body(config.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest, "size": layer.len()}],
    });
    let resp = http
        .put(b.url("/v2/ro/test/manifests/v1"))
        .header("authorization", &auth)
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(serde_json::to_vec(&manifest).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap_or_default());
    let pulled =
        http.get(b.url(&format!("/v2/ro/test/blobs/{digest}"))).header("authorization", &auth).send().await.unwrap();
    assert_eq!(pulled.status(), 200);
    assert_eq!(pulled.bytes().await.unwrap().as_ref(), layer.as_slice());
    let data = tree.root().join("var/lib/berth");
    assert!(walk(&data).iter().any(|p| p.is_file()), "nothing was written under {}", data.display());
    for p in walk(&data) {
        assert_eq!(std::fs::metadata(&p).unwrap().uid(), UID, "{} not owned by the service account", p.display());
    }
    assert_eq!(snapshot(&tree.root()), before, "the read-only part of the tree changed");
    let stderr = b.stderr();
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("Permission denied"), "{stderr}");
}

/// A data directory the service account cannot write is refused at start
/// with a message naming it: no panic, no half-started server.
#[test]
fn an_unwritable_data_directory_is_a_clear_start_up_error() {
    require_root();
    let tree = ImageTree::new(&common::release_bin(), 0);
    let logs = tempfile::tempdir().unwrap();
    let (out_path, err_path) = (logs.path().join("stdout"), logs.path().join("stderr"));
    let mut child = Killed(
        tree.command()
            .stdout(std::fs::File::create(&out_path).unwrap())
            .stderr(std::fs::File::create(&err_path).unwrap())
            .spawn()
            .unwrap(),
    );
    // Bounded: a regression that starts anyway is killed, not waited on.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "still running after 30 s with an unwritable data directory");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let stderr = std::fs::read_to_string(&err_path).unwrap();
    assert!(!status.success(), "started with an unwritable data directory: {stderr}");
    assert!(stderr.contains("var/lib/berth"), "the message does not name the directory: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(std::fs::read_to_string(&out_path).unwrap().is_empty(), "it reported a listening address");
}
