//! htpasswd files: `user:hash` per line, with bcrypt (`$2y$`, `$2b$`,
//! `$2a$`), argon2id (`$argon2id$`) or SHA-crypt (`$5$`, `$6$`) hashes.
//! Weaker formats (plain text, DES crypt, MD5 / apr1, `{SHA}`) are refused
//! with the line that holds them. The file is re-read when it changes; a
//! broken edit keeps the previous contents in force and is logged.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

/// The hash schemes Berth accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Bcrypt,
    Argon2id,
    Sha256Crypt,
    Sha512Crypt,
}

fn scheme_of(hash: &str) -> Result<Scheme, &'static str> {
    if hash.starts_with("$2y$") || hash.starts_with("$2b$") || hash.starts_with("$2a$") {
        Ok(Scheme::Bcrypt)
    } else if hash.starts_with("$argon2id$") {
        Ok(Scheme::Argon2id)
    } else if hash.starts_with("$5$") {
        Ok(Scheme::Sha256Crypt)
    } else if hash.starts_with("$6$") {
        Ok(Scheme::Sha512Crypt)
    } else if hash.starts_with("$apr1$") || hash.starts_with("$1$") {
        Err("MD5 (apr1) hashes are too weak; use bcrypt or argon2id (`berth user hash`)")
    } else if hash.starts_with("{SHA}") {
        Err("unsalted SHA-1 hashes are too weak; use bcrypt or argon2id (`berth user hash`)")
    } else if hash.starts_with("$argon2i$") || hash.starts_with("$argon2d$") {
        Err("only the argon2id variant is accepted")
    } else if hash.len() == 13 && !hash.starts_with('$') {
        Err("DES crypt hashes are too weak; use bcrypt or argon2id (`berth user hash`)")
    } else {
        Err("not a recognised hash (plain-text passwords are refused); use bcrypt or argon2id (`berth user hash`)")
    }
}

/// Why an htpasswd file was refused.
#[derive(Debug, thiserror::Error)]
pub enum HtpasswdError {
    #[error("cannot read htpasswd file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}:{line}: {message}")]
    Line { path: PathBuf, line: usize, message: String },
    #[error("htpasswd file {path} is empty (being written?); to remove every user, leave a comment line in it")]
    Empty { path: PathBuf },
}

#[derive(Debug, Clone)]
struct Entry {
    hash: String,
    scheme: Scheme,
}

/// Parse htpasswd text; `path` only names the file in errors.
fn parse(text: &str, path: &Path) -> Result<HashMap<String, Entry>, HtpasswdError> {
    let mut users = HashMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let err = |message: String| HtpasswdError::Line { path: path.to_owned(), line: i + 1, message };
        let (user, hash) = line.split_once(':').ok_or_else(|| err("expected user:hash".into()))?;
        if user.is_empty() || user.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(err("the user name is empty or contains spaces or control characters".into()));
        }
        let scheme = scheme_of(hash).map_err(|m| err(format!("user {user:?}: {m}")))?;
        if scheme == Scheme::Argon2id {
            let parsed = argon2::PasswordHash::new(hash)
                .map_err(|_| err(format!("user {user:?}: not a well-formed argon2id hash")))?;
            let params =
                argon2_params(&parsed).ok_or_else(|| err(format!("user {user:?}: unusable argon2id parameters")))?;
            if params.m_cost() > MAX_ARGON2_MEMORY_KIB {
                return Err(err(format!(
                    "user {user:?}: an argon2id memory cost over {MAX_ARGON2_MEMORY_KIB} KiB is refused"
                )));
            }
        }
        if users.insert(user.to_owned(), Entry { hash: hash.to_owned(), scheme }).is_some() {
            return Err(err(format!("user {user:?} appears twice")));
        }
    }
    Ok(users)
}

/// Verify `password` against one stored hash, comparing in constant time.
fn verify(entry: &Entry, password: &str) -> bool {
    match entry.scheme {
        Scheme::Bcrypt => bcrypt::verify(password, &entry.hash).unwrap_or(false),
        Scheme::Argon2id => verify_argon2id(&entry.hash, password),
        Scheme::Sha256Crypt => sha_crypt::sha256_check(password, &entry.hash).is_ok(),
        Scheme::Sha512Crypt => sha_crypt::sha512_check(password, &entry.hash).is_ok(),
    }
}

/// Largest argon2id memory cost accepted in the file (KiB): 256 MiB, over
/// ten times the default. Each hashing thread holds this much at most.
const MAX_ARGON2_MEMORY_KIB: u32 = 256 * 1024;

thread_local! {
    /// The argon2 working memory of this thread, reused by every check on
    /// it. Allocating it per check (as `verify_password` does) leaves the
    /// allocator unable to reuse the freed 64-byte-aligned blocks: each
    /// check would grow the process by ~19 MiB until the arena happens to
    /// coalesce. The hashing pool's few threads each keep one buffer.
    static ARGON2_MEMORY: std::cell::RefCell<Vec<argon2::Block>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The parameters of an argon2id PHC string, if it is one.
fn argon2_params(hash: &argon2::PasswordHash<'_>) -> Option<argon2::Params> {
    argon2::Params::try_from(hash).ok()
}

fn verify_argon2id(hash: &str, password: &str) -> bool {
    let Ok(parsed) = argon2::PasswordHash::new(hash) else { return false };
    let Some(params) = argon2_params(&parsed) else { return false };
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else { return false };
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else { return false };
    let version = parsed.version.and_then(|v| argon2::Version::try_from(v).ok()).unwrap_or_default();
    let need = params.block_count();
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, version, params);
    let expected = expected.as_bytes();
    let mut out = vec![0u8; expected.len()];
    let hashed = ARGON2_MEMORY.with(|memory| {
        let mut blocks = memory.borrow_mut();
        if blocks.len() < need {
            blocks.resize(need, argon2::Block::new());
        }
        argon.hash_password_into_with_memory(password.as_bytes(), salt, &mut out, &mut blocks[..need]).is_ok()
    });
    // Constant time: every byte is compared whatever the first difference.
    hashed && out.len() == expected.len() && out.iter().zip(expected).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// Hash a password as an argon2id PHC string with a random salt.
pub fn hash_password(password: &str) -> Result<String, String> {
    use argon2::password_hash::{rand_core::OsRng, PasswordHasher as _, SaltString};
    let salt = SaltString::generate(&mut OsRng);
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// The part of a hash that fixes its cost: the scheme and its parameters,
/// without salt and digest (`$2b$12$`, `$argon2id$v=19$m=19456,t=2,p=1$`,
/// `$6$rounds=5000$`).
fn cost_of(entry: &Entry) -> &str {
    let fields = match entry.scheme {
        Scheme::Bcrypt => 2,
        Scheme::Argon2id => 3,
        Scheme::Sha256Crypt | Scheme::Sha512Crypt if entry.hash.get(3..).is_some_and(|r| r.starts_with("rounds=")) => 2,
        Scheme::Sha256Crypt | Scheme::Sha512Crypt => 1,
    };
    let end = entry.hash.match_indices('$').nth(fields).map(|(i, _)| i + 1).unwrap_or(entry.hash.len());
    &entry.hash[..end]
}

/// What an unknown user's password is checked against: an entry of the
/// file with its most common scheme and cost, so that a name that does not
/// exist costs what one that does costs. (The result is thrown away.) An
/// empty file gets an argon2id hash at the default cost.
fn decoy_for(users: &HashMap<String, Entry>) -> Entry {
    let mut costs: HashMap<&str, (usize, &Entry)> = HashMap::new();
    for entry in users.values() {
        costs.entry(cost_of(entry)).or_insert((0, entry)).0 += 1;
    }
    // Ties go to the lexically first cost, so the choice does not depend
    // on the map's order.
    let common = costs.into_iter().max_by(|a, b| a.1 .0.cmp(&b.1 .0).then_with(|| b.0.cmp(a.0)));
    match common {
        Some((_, (_, entry))) => entry.clone(),
        None => Entry { hash: hash_password("berth-decoy-password").unwrap_or_default(), scheme: Scheme::Argon2id },
    }
}

#[derive(Debug)]
struct Loaded {
    users: HashMap<String, Entry>,
    /// Verified against when the user is unknown.
    decoy: Entry,
    modified: Option<SystemTime>,
    len: u64,
}

/// An htpasswd file, re-read when it changes.
#[derive(Debug, Clone)]
pub struct Htpasswd {
    path: PathBuf,
    loaded: Arc<RwLock<Loaded>>,
    /// The file's modification time and length at the last check.
    seen: Arc<std::sync::Mutex<Option<FileStamp>>>,
}

/// A file's modification time and length.
type FileStamp = (Option<SystemTime>, u64);

impl Htpasswd {
    /// Load the file, refusing it if any line is malformed or weak.
    pub fn load(path: &Path) -> Result<Htpasswd, HtpasswdError> {
        let (users, modified, len) = read(path)?;
        let decoy = decoy_for(&users);
        Ok(Htpasswd {
            path: path.to_owned(),
            loaded: Arc::new(RwLock::new(Loaded { users, decoy, modified, len })),
            seen: Arc::default(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Re-read the file if it changed on disk and has stayed the same since
    /// the previous call: a file caught half-written (an editor that
    /// truncates, then writes) is never loaded, since it changes again
    /// before the next call. Returns whether new contents took effect; a
    /// broken file is reported and the old contents stay.
    pub fn reload_if_changed(&self, on_change: impl FnOnce()) -> Result<bool, HtpasswdError> {
        let meta =
            std::fs::metadata(&self.path).map_err(|source| HtpasswdError::Read { path: self.path.clone(), source })?;
        let stamp = (meta.modified().ok(), meta.len());
        {
            let current = self.loaded.read().unwrap_or_else(|p| p.into_inner());
            if (current.modified, current.len) == stamp {
                return Ok(false);
            }
        }
        let settled = {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            let settled = *seen == Some(stamp);
            *seen = Some(stamp);
            settled
        };
        if !settled {
            return Ok(false);
        }
        if stamp.1 == 0 {
            // An editor's truncate before its write, or a mistake: a file
            // that shuts everyone out is not taken from an empty read.
            return Err(HtpasswdError::Empty { path: self.path.clone() });
        }
        let (users, modified, len) = read(&self.path)?;
        if (modified, len) != stamp {
            // Written to again since it looked settled: wait for the next call.
            return Ok(false);
        }
        let decoy = decoy_for(&users);
        let mut loaded = self.loaded.write().unwrap_or_else(|p| p.into_inner());
        *loaded = Loaded { users, decoy, modified, len };
        on_change();
        Ok(true)
    }

    /// A fingerprint of `user`'s entry (SHA-256 of its hash, 128 bits in
    /// hex), `None` if there is no such user: it changes when the user is
    /// given a new password. It reveals nothing about the password.
    pub fn fingerprint(&self, user: &str) -> Option<String> {
        use sha2::Digest as _;
        let loaded = self.loaded.read().unwrap_or_else(|p| p.into_inner());
        let entry = loaded.users.get(user)?;
        Some(hex::encode(&sha2::Sha256::digest(entry.hash.as_bytes())[..16]))
    }

    /// Check a user's password. Takes the same path and about the same
    /// time whether or not the user exists. Blocking (hashes are slow on
    /// purpose): call it on the hashing pool.
    pub fn check(&self, user: &str, password: &str) -> bool {
        let (entry, known) = {
            let loaded = self.loaded.read().unwrap_or_else(|p| p.into_inner());
            match loaded.users.get(user) {
                Some(entry) => (entry.clone(), true),
                None => (loaded.decoy.clone(), false),
            }
        };
        let matched = verify(&entry, password);
        known && matched
    }
}

/// Users, and the modification time and length the file had when read.
type ReadFile = (HashMap<String, Entry>, Option<SystemTime>, u64);

fn read(path: &Path) -> Result<ReadFile, HtpasswdError> {
    let text = std::fs::read_to_string(path).map_err(|source| HtpasswdError::Read { path: path.to_owned(), source })?;
    // Taken after the read: compared with the stamp seen before it, a
    // write during the read shows (see `reload_if_changed`).
    let meta = std::fs::metadata(path).map_err(|source| HtpasswdError::Read { path: path.to_owned(), source })?;
    Ok((parse(&text, path)?, meta.modified().ok(), meta.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> &'static Path {
        Path::new("users.htpasswd")
    }

    #[test]
    fn accepted_schemes_verify() {
        let bcrypt = bcrypt::hash("pw-b", 4).unwrap();
        let argon = hash_password("pw-a").unwrap();
        // SHA-crypt hashes as `openssl passwd -5/-6 -salt saltstring` prints them.
        let sha256 = "$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5";
        let sha512 =
            "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1";
        let text = format!("# comment\n\nb:{bcrypt}\na:{argon}\ns5:{sha256}\ns6:{sha512}\n");
        let users = parse(&text, p()).unwrap();
        assert!(verify(&users["b"], "pw-b") && !verify(&users["b"], "pw-x"));
        assert!(verify(&users["a"], "pw-a") && !verify(&users["a"], "pw-x"));
        assert!(verify(&users["s5"], "Hello world!") && !verify(&users["s5"], "hello world!"));
        assert!(verify(&users["s6"], "Hello world!") && !verify(&users["s6"], "Hello world"));
    }

    #[test]
    fn argon2id_checks_agree_with_the_crate_and_reuse_their_memory() {
        use argon2::password_hash::{rand_core::OsRng, PasswordHasher as _, PasswordVerifier as _, SaltString};
        // Parameters other than the default, and another version, too.
        let custom = argon2::Argon2::new(
            argon2::Algorithm::Argon2id,
            argon2::Version::V0x10,
            argon2::Params::new(8 * 1024, 3, 2, Some(24)).unwrap(),
        );
        for hash in [
            hash_password("secret-1").unwrap(),
            custom.hash_password(b"secret-1", &SaltString::generate(&mut OsRng)).unwrap().to_string(),
        ] {
            let parsed = argon2::PasswordHash::new(&hash).unwrap();
            for (pw, want) in [("secret-1", true), ("secret-2", false), ("", false)] {
                let reference = argon2::Argon2::default().verify_password(pw.as_bytes(), &parsed).is_ok();
                assert_eq!(reference, want);
                assert_eq!(verify_argon2id(&hash, pw), want, "{hash} {pw}");
            }
        }
        // The thread's working memory is the largest a check needed, kept.
        let held = ARGON2_MEMORY.with(|m| m.borrow().len());
        assert_eq!(held, argon2::Params::default().block_count());
        assert!(!verify_argon2id("$argon2id$v=19$m=16,t=2,p=1$c2FsdHNhbHQ$", "x"));
        // An absurd memory cost is refused when the file is read.
        let greedy = "u:$argon2id$v=19$m=4194304,t=1,p=1$c2FsdHNhbHQ$YWJjZGVmZ2hpamtsbW5vcA";
        let err = parse(greedy, p()).unwrap_err().to_string();
        assert!(err.contains("memory cost"), "{err}");
    }

    #[test]
    fn weak_and_malformed_lines_are_refused_with_their_line() {
        for (line, needle) in [
            ("u:$apr1$abc$defghijklmnopqrstuv", "MD5"),
            ("u:$1$abc$defghijklmnopqrstuv", "MD5"),
            ("u:{SHA}qvTGHdzF6KLavt4PO0gs2a6pQ00=", "SHA-1"),
            ("u:abJnggxhB/yWI", "DES"),
            ("u:plaintext-password", "plain-text"),
            ("u:$argon2i$v=19$m=16,t=2,p=1$c2FsdA$abc", "argon2id"),
            ("no-colon-here", "user:hash"),
            (":$2y$05$abc", "empty"),
        ] {
            let text = format!("ok:{}\n{line}\n", hash_password("x").unwrap());
            let err = parse(&text, p()).unwrap_err().to_string();
            assert!(err.contains("users.htpasswd:2:") && err.contains(needle), "{line}: {err}");
            // The hash itself is never echoed back.
            if let Some((_, hash)) = line.split_once(':') {
                if hash.len() > 4 {
                    assert!(!err.contains(hash), "{err}");
                }
            }
        }
        let twice = format!("u:{h}\nu:{h}\n", h = hash_password("x").unwrap());
        assert!(parse(&twice, p()).unwrap_err().to_string().contains("twice"));
    }

    #[test]
    fn the_decoy_has_the_files_most_common_scheme_and_cost() {
        let b5 = |pw: &str| bcrypt::hash(pw, 5).unwrap();
        let text = format!("a:{}\nb:{}\nc:{}\n", b5("x"), b5("y"), hash_password("z").unwrap());
        let users = parse(&text, p()).unwrap();
        let decoy = decoy_for(&users);
        assert_eq!(decoy.scheme, Scheme::Bcrypt);
        assert!(decoy.hash.starts_with("$2b$05$"), "{}", decoy.hash);
        assert_eq!(cost_of(&users["c"]), "$argon2id$v=19$m=19456,t=2,p=1$");
        let sha = Entry { hash: "$6$rounds=9000$salt$abc".into(), scheme: Scheme::Sha512Crypt };
        assert_eq!(cost_of(&sha), "$6$rounds=9000$");
        let sha = Entry { hash: "$5$salt$abc".into(), scheme: Scheme::Sha256Crypt };
        assert_eq!(cost_of(&sha), "$5$");
        assert_eq!(decoy_for(&HashMap::new()).scheme, Scheme::Argon2id);
        // A user whose password happens to be the decoy's is still unknown.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h");
        std::fs::write(&path, format!("a:{}\n", b5("x"))).unwrap();
        let h = Htpasswd::load(&path).unwrap();
        assert!(h.check("a", "x") && !h.check("nobody", "x"));
    }

    #[test]
    fn unknown_users_fail_and_reload_picks_up_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h");
        std::fs::write(&path, format!("alice:{}\n", hash_password("one").unwrap())).unwrap();
        let h = Htpasswd::load(&path).unwrap();
        assert!(h.check("alice", "one"));
        assert!(!h.check("alice", "two"));
        assert!(!h.check("bob", "one"));
        assert!(!h.reload_if_changed(|| ()).unwrap());
        // Caught half-written (truncated, nothing yet): not loaded, and the
        // finished file is loaded once it stayed the same between checks.
        std::fs::write(&path, "").unwrap();
        assert!(!h.reload_if_changed(|| ()).unwrap());
        // Left empty (settled): refused, never read as "no users".
        assert!(matches!(h.reload_if_changed(|| panic!("not loaded")), Err(HtpasswdError::Empty { .. })));
        assert!(h.check("alice", "one"));
        std::fs::write(
            &path,
            format!("alice:{}\nbob:{}\n", hash_password("two").unwrap(), hash_password("b").unwrap()),
        )
        .unwrap();
        assert!(!h.reload_if_changed(|| ()).unwrap(), "changed since the last check: not settled yet");
        assert!(h.check("alice", "one"), "the old contents stay until then");
        let mut told = false;
        assert!(h.reload_if_changed(|| told = true).unwrap());
        assert!(told, "the caller hears of the new contents while they are installed");
        assert!(h.check("alice", "two") && h.check("bob", "b") && !h.check("alice", "one"));
        // A broken edit keeps the last good contents.
        std::fs::write(&path, "alice:plaintext\n").unwrap();
        assert!(!h.reload_if_changed(|| ()).unwrap());
        assert!(h.reload_if_changed(|| ()).is_err());
        assert!(h.check("alice", "two"));
    }
}
