//! LDAP authentication against a real OpenLDAP `slapd` the test starts on
//! loopback (users and groups loaded with `ldapadd`): good and bad
//! passwords, unknown users, LDAP-injection attempts in the user name, an
//! empty password (an "unauthenticated bind" must not log anyone in), LDAPS
//! with a private CA, skopeo with directory credentials, and the directory
//! stopped mid-run (503, never anonymous access) and started again.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{client, Berth};

const SUFFIX: &str = "dc=berth,dc=test";
const ADMIN_PW: &str = "slapd-admin-pw";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn require(program: &str) {
    let found =
        Command::new("sh").arg("-c").arg(format!("command -v {program} || test -x /usr/sbin/{program}")).output();
    assert!(
        found.map(|o| o.status.success()).unwrap_or(false),
        "{program} is not installed: run scripts/install-test-deps (apt-get install slapd ldap-utils)"
    );
}

/// A slapd on two loopback ports (ldap:// and ldaps://); killed on drop.
struct Slapd {
    child: Option<Child>,
    dir: PathBuf,
    ldap_port: u16,
    ldaps_port: u16,
}

impl Slapd {
    fn start(dir: &Path) -> Slapd {
        require("slapd");
        require("ldapadd");
        std::fs::create_dir_all(dir.join("db")).unwrap();
        let sh = |cmd: &str| {
            let out = Command::new("sh").arg("-c").arg(cmd).current_dir(dir).output().unwrap();
            assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
        };
        sh("openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=ldap-test-ca -keyout ca.key -out ca.pem 2>/dev/null");
        sh("openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout srv.key -out srv.csr 2>/dev/null");
        sh("printf 'subjectAltName=DNS:localhost,IP:127.0.0.1' > ext.cnf && openssl x509 -req -in srv.csr -CA ca.pem \
            -CAkey ca.key -CAcreateserial -days 2 -extfile ext.cnf -out srv.pem 2>/dev/null");
        let d = dir.display();
        let conf = format!(
            "include /etc/ldap/schema/core.schema\ninclude /etc/ldap/schema/cosine.schema\n\
             include /etc/ldap/schema/inetorgperson.schema\ninclude /etc/ldap/schema/nis.schema\n\
             modulepath /usr/lib/ldap\nmoduleload back_mdb\npidfile {d}/slapd.pid\n\
             TLSCertificateFile {d}/srv.pem\nTLSCertificateKeyFile {d}/srv.key\n\
             database mdb\nmaxsize 10485760\nsuffix \"{SUFFIX}\"\nrootdn \"cn=admin,{SUFFIX}\"\nrootpw {ADMIN_PW}\n\
             directory {d}/db\n\
             access to attrs=userPassword by self write by anonymous auth by * none\naccess to * by * read\n"
        );
        std::fs::write(dir.join("slapd.conf"), conf).unwrap();
        let mut slapd = Slapd { child: None, dir: dir.to_owned(), ldap_port: free_port(), ldaps_port: free_port() };
        slapd.run();
        let ldif = format!(
            "dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\no: berth\ndc: berth\n\n\
             dn: ou=people,{SUFFIX}\nobjectClass: organizationalUnit\nou: people\n\n\
             dn: ou=groups,{SUFFIX}\nobjectClass: organizationalUnit\nou: groups\n\n\
             dn: uid=alice,ou=people,{SUFFIX}\nobjectClass: inetOrgPerson\nuid: alice\ncn: Alice\nsn: A\nuserPassword: alice-ldap-pw\n\n\
             dn: uid=bob,ou=people,{SUFFIX}\nobjectClass: inetOrgPerson\nuid: bob\ncn: Bob\nsn: B\nuserPassword: bob-ldap-pw\n\n\
             dn: uid=carol,ou=people,{SUFFIX}\nobjectClass: inetOrgPerson\nuid: carol\ncn: Carol\nsn: C\nuserPassword: carol-ldap-pw\n\n\
             dn: cn=builders,ou=groups,{SUFFIX}\nobjectClass: groupOfNames\ncn: builders\nmember: uid=alice,ou=people,{SUFFIX}\n"
        );
        std::fs::write(dir.join("data.ldif"), ldif).unwrap();
        let out = Command::new("ldapadd")
            .args(["-x", "-H", &format!("ldap://127.0.0.1:{}", slapd.ldap_port), "-D", &format!("cn=admin,{SUFFIX}")])
            .args(["-w", ADMIN_PW, "-f"])
            .arg(dir.join("data.ldif"))
            .output()
            .unwrap();
        assert!(out.status.success(), "ldapadd: {}", String::from_utf8_lossy(&out.stderr));
        slapd
    }

    /// Start slapd (again) on its ports and wait until it answers.
    fn run(&mut self) {
        let urls = format!("ldap://127.0.0.1:{}/ ldaps://127.0.0.1:{}/", self.ldap_port, self.ldaps_port);
        let slapd = if Path::new("/usr/sbin/slapd").exists() { "/usr/sbin/slapd" } else { "slapd" };
        let child = Command::new(slapd)
            .args(["-d", "0", "-f"])
            .arg(self.dir.join("slapd.conf"))
            .args(["-h", &urls])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let ok = Command::new("ldapsearch")
                .args(["-x", "-H", &format!("ldap://127.0.0.1:{}", self.ldap_port), "-b", "", "-s", "base"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "slapd never answered");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn status(b: &Berth, user: &str, pw: &str) -> u16 {
    client().get(b.url("/v2/")).header("authorization", common::basic(user, pw)).send().await.unwrap().status().as_u16()
}

fn berth_for(dir: &Path, url: &str, extra: &str) -> Berth {
    std::fs::write(dir.join("bind-pw"), format!("{ADMIN_PW}\n")).unwrap();
    let toml = format!(
        "[auth.throttle]\nuser_lockout = 1000\ndelay_after = 1000\n\
         [auth.ldap]\nurl = \"{url}\"\nbind_dn = \"cn=admin,{SUFFIX}\"\nbind_password = {{ file = {:?} }}\n\
         user_base = \"ou=people,{SUFFIX}\"\ngroup_base = \"ou=groups,{SUFFIX}\"\n\
         connect_timeout = \"1s\"\noperation_timeout = \"2s\"\n{extra}",
        dir.join("bind-pw").display().to_string()
    );
    Berth::start(&toml)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ldap_logins_injection_and_outage() {
    let dir = tempfile::tempdir().unwrap();
    let mut slapd = Slapd::start(dir.path());
    let b = berth_for(dir.path(), &format!("ldap://127.0.0.1:{}", slapd.ldap_port), "insecure = true\n");

    assert_eq!(status(&b, "alice", "alice-ldap-pw").await, 200);
    assert_eq!(status(&b, "alice", "wrong").await, 401);
    assert_eq!(status(&b, "mallory", "alice-ldap-pw").await, 401);
    // An empty password would be an unauthenticated bind, which LDAP accepts.
    assert_eq!(status(&b, "bob", "").await, 401);
    // Filter injection: the name is escaped, so these match nobody.
    for hostile in ["*", "alice)(uid=*", "*)(|(uid=*", "al*", "alice\\2a", "(uid=alice)", "alice\u{0}"] {
        assert_eq!(status(&b, hostile, "alice-ldap-pw").await, 401, "{hostile:?}");
    }

    // The UI's sign-in goes through the same directory.
    #[cfg(feature = "ui")]
    {
        use common::ui::{fetch, sign_in_with, try_sign_in};
        let session = sign_in_with(&b, &[("username", "alice"), ("password", "alice-ldap-pw")]).await;
        let home = fetch(&b, "/ui/", Some(&session)).await;
        assert!(home.body.contains("Signed in as"), "{}", home.body);
        assert!(home.body.contains("alice"), "{}", home.body);
        let wrong = try_sign_in(&b, &[("username", "alice"), ("password", "wrong")]).await;
        assert_eq!(wrong.status, 401, "{}", wrong.body);
        let hostile = try_sign_in(&b, &[("username", "*"), ("password", "alice-ldap-pw")]).await;
        assert_eq!(hostile.status, 401, "{}", hostile.body);
    }

    // The directory goes away: unknown credentials get 503, never access.
    slapd.stop();
    let resp =
        client().get(b.url("/v2/")).header("authorization", common::basic("bob", "bob-ldap-pw")).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    assert_eq!(status(&b, "carol", "nope").await, 503);
    // The UI says so too, and signs nobody in.
    #[cfg(feature = "ui")]
    {
        let down = common::ui::try_sign_in(&b, &[("username", "bob"), ("password", "bob-ldap-pw")]).await;
        assert_eq!(down.status, 503, "{}", down.body);
        assert!(common::ui::cookie_value(&down, "__Host-berth_session").is_none());
    }
    // Back again: logins work once the pool reconnects.
    slapd.run();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while status(&b, "bob", "bob-ldap-pw").await != 200 {
        assert!(tokio::time::Instant::now() < deadline, "LDAP logins did not recover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status(&b, "bob", "wrong").await, 401);

    let log = b.stderr();
    for secret in ["alice-ldap-pw", "bob-ldap-pw", ADMIN_PW] {
        assert!(!log.contains(secret), "a password reached the log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ldaps_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let slapd = Slapd::start(dir.path());
    let url = format!("ldaps://127.0.0.1:{}", slapd.ldaps_port);
    let ca = dir.path().join("ca.pem").display().to_string();
    let b = berth_for(dir.path(), &url, &format!("ca_file = {ca:?}\n"));
    assert_eq!(status(&b, "alice", "alice-ldap-pw").await, 200);
    assert_eq!(status(&b, "alice", "nope").await, 401);
    drop(b);
    // Without the CA the directory cannot be trusted: 503, not a login.
    let untrusting = berth_for(dir.path(), &url, "");
    assert_eq!(status(&untrusting, "alice", "alice-ldap-pw").await, 503);
    // StartTLS on the plain port, with the CA.
    let starttls = berth_for(
        dir.path(),
        &format!("ldap://127.0.0.1:{}", slapd.ldap_port),
        &format!("starttls = true\nca_file = {ca:?}\n"),
    );
    assert_eq!(status(&starttls, "bob", "bob-ldap-pw").await, 200);
}

#[test]
fn plain_ldap_must_be_asked_for_and_skopeo_and_oras_log_in() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("c.toml"),
        "[auth.ldap]\nurl = \"ldap://127.0.0.1:1\"\nbind_dn = \"cn=x\"\nuser_base = \"dc=x\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["config", "check"])
        .arg(dir.path().join("c.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("clear text"));

    let slapd = Slapd::start(&dir.path().join("ldap"));
    let b = berth_for(dir.path(), &format!("ldap://127.0.0.1:{}", slapd.ldap_port), "insecure = true\n");
    let work = tempfile::tempdir().unwrap();
    let build = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/build-images.sh");
    assert!(Command::new("bash").arg(build).arg(work.path()).status().unwrap().success());
    let src = format!("oci:{}/oci:multi", work.path().display());
    let dest = format!("docker://{}/team/ldap:v1", b.addr);
    let out = Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-tls-verify=false", "--dest-creds", "carol:carol-ldap-pw", &src, &dest])
        .output()
        .unwrap();
    assert!(out.status.success(), "skopeo with LDAP credentials: {}", String::from_utf8_lossy(&out.stderr));
    let out = Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-tls-verify=false", "--dest-creds", "carol:wrong", &src, &dest])
        .output()
        .unwrap();
    assert!(!out.status.success(), "a wrong LDAP password pushed");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/oras_referrers.py");
    let out = Command::new(common::venv_python())
        .arg(&script)
        .arg(&b.addr)
        .env("ORAS_USERNAME", "carol")
        .env("ORAS_PASSWORD", "carol-ldap-pw")
        .env("ORAS_AUTH_BACKEND", "basic")
        .output()
        .unwrap();
    assert!(out.status.success(), "oras with LDAP credentials: {}", String::from_utf8_lossy(&out.stderr));
    assert!(!b.stderr().contains("carol-ldap-pw"));
}

/// A token-service key (P-256, PKCS#8 PEM) in `dir`.
fn token_key(dir: &Path) -> PathBuf {
    common::token_key(&dir.join("token.pem"), common::KeyKind::P256)
}

/// `podman` with storage of its own under `dir` (vfs: no kernel overlay).
fn podman(dir: &Path) -> Command {
    let mut cmd = Command::new("podman");
    cmd.arg("--root")
        .arg(dir.join("storage"))
        .arg("--runroot")
        .arg(dir.join("run"))
        .args(["--storage-driver", "vfs", "--events-backend", "file", "--cgroup-manager", "cgroupfs"])
        .env("XDG_RUNTIME_DIR", dir.join("xdg"))
        .env("REGISTRY_AUTH_FILE", dir.join("auth.json"))
        .env("CONTAINERS_REGISTRIES_CONF", dir.join("registries.conf"));
    cmd
}

/// Groups come from the directory at login and travel in the registry's
/// tokens: a rule granting a group push works for podman and skopeo, which
/// use the token flow, as it does for Basic; a user outside the group is
/// refused either way.
#[test]
fn group_rules_hold_through_the_token_flow_for_podman_and_skopeo() {
    for program in ["skopeo", "podman", "umoci"] {
        let found = Command::new("sh").arg("-c").arg(format!("command -v {program}")).output().unwrap();
        assert!(found.status.success(), "{program} is not installed: run scripts/install-test-deps");
    }
    let dir = tempfile::tempdir().unwrap();
    let slapd = Slapd::start(&dir.path().join("ldap"));
    let key = token_key(dir.path());
    let policy = format!(
        "[auth.token]\nkey_file = {:?}\n\
         [access]\ndefault_policy = []\n\
         [[access.repositories]]\npattern = \"team/**\"\n\
         policies = [{{ groups = [\"builders\"], actions = [\"read\", \"create\", \"update\"] }}]\n",
        key.display().to_string()
    );
    // The [access] tables follow the [auth.ldap] keys berth_for writes.
    let b =
        berth_for(dir.path(), &format!("ldap://127.0.0.1:{}", slapd.ldap_port), &format!("insecure = true\n{policy}"));
    let work = tempfile::tempdir().unwrap();
    let build = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/build-images.sh");
    assert!(Command::new("bash").arg(build).arg(work.path()).status().unwrap().success());
    let src = format!("oci:{}/oci:multi", work.path().display());

    // skopeo: alice (in builders) pushes and pulls through tokens.
    let dest = format!("docker://{}/team/skopeo:v1", b.addr);
    let skopeo = |creds: &str, from: &str, to: &str, tls: &str| {
        Command::new("skopeo").args(["copy", "--quiet", tls, "--src-creds", creds, from, to]).output().unwrap()
    };
    let out = Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-tls-verify=false", "--dest-creds", "alice:alice-ldap-pw", &src, &dest])
        .output()
        .unwrap();
    assert!(out.status.success(), "skopeo push by a group member: {}", String::from_utf8_lossy(&out.stderr));
    let back = format!("oci:{}/back:v1", work.path().display());
    let out = skopeo("alice:alice-ldap-pw", &dest, &back, "--src-tls-verify=false");
    assert!(out.status.success(), "skopeo pull by a group member: {}", String::from_utf8_lossy(&out.stderr));
    // bob is not in builders: refused.
    let out = Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-tls-verify=false", "--dest-creds", "bob:bob-ldap-pw", &src])
        .arg(format!("docker://{}/team/skopeo:bob", b.addr))
        .output()
        .unwrap();
    assert!(!out.status.success(), "a non-member pushed");

    // podman, with storage of its own: load the image, push it, pull it back.
    // podman names an image pulled from an OCI layout after its path, which
    // must then be a valid (lowercase) repository name.
    let pod = LowercaseDir::new("berth-podman");
    for d in ["xdg", "storage", "run"] {
        std::fs::create_dir_all(pod.path().join(d)).unwrap();
    }
    let layout = pod.path().join("layout");
    copy_dir(&work.path().join("oci"), &layout);
    let src = format!("oci:{}:multi", layout.display());
    std::fs::write(pod.path().join("registries.conf"), "unqualified-search-registries = []\n").unwrap();
    std::fs::write(pod.path().join("auth.json"), "{\"auths\": {}}\n").unwrap();
    let run = |cmd: &mut Command, what: &str| {
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{what}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let out = podman(pod.path()).args(["pull", "-q", &src]).output().unwrap();
    assert!(out.status.success(), "podman pull from the OCI layout: {}", String::from_utf8_lossy(&out.stderr));
    let id = String::from_utf8_lossy(&out.stdout).trim().lines().last().unwrap_or_default().to_owned();
    assert!(!id.is_empty(), "podman printed no image id");
    let image = format!("{}/team/podman:v1", b.addr);
    run(
        podman(pod.path())
            .args(["push", "--tls-verify=false", "--creds", "alice:alice-ldap-pw", &id])
            .arg(format!("docker://{image}")),
        "podman push by a group member",
    );
    run(
        podman(pod.path()).args(["pull", "-q", "--tls-verify=false", "--creds", "alice:alice-ldap-pw", &image]),
        "podman pull by a group member",
    );
    let out = podman(pod.path())
        .args(["push", "--tls-verify=false", "--creds", "bob:bob-ldap-pw", &id])
        .arg(format!("docker://{}/team/podman:bob", b.addr))
        .output()
        .unwrap();
    assert!(!out.status.success(), "a non-member pushed with podman");
    let log = b.stderr();
    assert!(log.contains("/v2/token"), "the clients used the token flow");
}

/// A scratch directory whose path is lowercase letters, digits and dashes;
/// removed on drop.
struct LowercaseDir(PathBuf);

impl LowercaseDir {
    fn new(prefix: &str) -> LowercaseDir {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let dir = PathBuf::from("/tmp").join(format!("{prefix}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        LowercaseDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for LowercaseDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
