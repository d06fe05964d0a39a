//! Opaque listing cursors. A filtered listing (the catalog, filtered by
//! what the caller may read) does bounded work per page: when its budget of
//! scanned names runs out on a name the caller may not see, the page ends
//! there, and the next one must start after that name without the caller
//! learning it. The cursor is the name sealed with AES-256-GCM under a key
//! every replica shares, kept in the object store (`_keys/listing-cursor`,
//! created once by whichever replica needs it first). A sealed cursor
//! starts with `~`, which no repository name or tag can.

use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom as _, SystemRandom};

/// The first character of every sealed cursor.
pub const SEALED: char = '~';

/// The key cursors are sealed with.
pub struct CursorKey(LessSafeKey);

impl std::fmt::Debug for CursorKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CursorKey(***)")
    }
}

impl CursorKey {
    /// 32 random bytes for a new key.
    pub fn generate() -> Option<[u8; 32]> {
        let mut bytes = [0u8; 32];
        SystemRandom::new().fill(&mut bytes).ok()?;
        Some(bytes)
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<CursorKey> {
        UnboundKey::new(&AES_256_GCM, bytes).ok().map(|k| CursorKey(LessSafeKey::new(k)))
    }

    /// `~` + base64url(nonce || ciphertext || tag).
    pub fn seal(&self, name: &str) -> Option<String> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).ok()?;
        let mut data = name.as_bytes().to_vec();
        self.0.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut data).ok()?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        Some(format!("{SEALED}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(out)))
    }

    /// The name a cursor of this key stands for; `None` for anything else.
    pub fn open(&self, cursor: &str) -> Option<String> {
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(cursor.strip_prefix(SEALED)?).ok()?;
        if raw.len() < NONCE_LEN || raw.len() > 4096 {
            return None;
        }
        let (nonce, sealed) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut data = sealed.to_vec();
        let plain = self.0.open_in_place(nonce, Aad::empty(), &mut data).ok()?;
        String::from_utf8(plain.to_vec()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_cursors_hide_the_name_and_open_only_with_their_key() {
        let key = CursorKey::from_bytes(&CursorKey::generate().unwrap()).unwrap();
        let cursor = key.seal("secret/project").unwrap();
        assert!(cursor.starts_with(SEALED) && !cursor.contains("secret"));
        assert_ne!(cursor, key.seal("secret/project").unwrap(), "a fresh nonce every time");
        assert_eq!(key.open(&cursor).as_deref(), Some("secret/project"));
        let other = CursorKey::from_bytes(&CursorKey::generate().unwrap()).unwrap();
        assert_eq!(other.open(&cursor), None);
        let mut tampered = cursor.clone().into_bytes();
        let last = tampered.len() - 2;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        assert_eq!(key.open(std::str::from_utf8(&tampered).unwrap()), None);
        for junk in ["", "~", "~!!!", "plain-name", "~AAAA"] {
            assert_eq!(key.open(junk), None, "{junk}");
        }
    }
}
