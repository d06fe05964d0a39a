//! Content digests (`algorithm:hex`) and a resumable hasher whose state can be
//! serialized into an upload session, so that any replica can continue an
//! upload and completing it never re-reads the blob.

use std::fmt;
use std::str::FromStr;

use sha2::digest::generic_array::GenericArray;
use sha2::{Digest as _, Sha256, Sha512};

/// Supported digest algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    /// Length of the hex encoding of this algorithm's output.
    pub fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }
}

/// Why a digest string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("digest is not of the form algorithm:hex")]
    Malformed,
    #[error("digest algorithm {0:?} is not supported (sha256, sha512)")]
    UnsupportedAlgorithm(String),
    #[error("digest hex part must be {0} lowercase hex characters")]
    BadHex(usize),
}

/// A validated digest: a supported algorithm and lowercase hex of the right
/// length. Its string form is canonical, so equal digests compare equal.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: Algorithm,
    hex: String,
}

impl Digest {
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// Digest of `data` with `algorithm`.
    pub fn of(algorithm: Algorithm, data: &[u8]) -> Digest {
        let hex = match algorithm {
            Algorithm::Sha256 => hex::encode(Sha256::digest(data)),
            Algorithm::Sha512 => hex::encode(Sha512::digest(data)),
        };
        Digest { algorithm, hex }
    }

    /// sha256 digest of `data`.
    pub fn sha256(data: &[u8]) -> Digest {
        Digest::of(Algorithm::Sha256, data)
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Digest, DigestError> {
        let (alg, hex) = s.split_once(':').ok_or(DigestError::Malformed)?;
        // Grammar from the image spec: algorithm-component [+._-] separated.
        let alg_ok = !alg.is_empty()
            && alg
                .split(['+', '.', '_', '-'])
                .all(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
        if !alg_ok || hex.is_empty() {
            return Err(DigestError::Malformed);
        }
        let algorithm = match alg {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            other => return Err(DigestError::UnsupportedAlgorithm(other.to_owned())),
        };
        if hex.len() != algorithm.hex_len() || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(DigestError::BadHex(algorithm.hex_len()));
        }
        Ok(Digest { algorithm, hex: hex.to_owned() })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.as_str(), self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Digest, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Why a serialized hasher state was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("corrupt hasher state")]
pub struct HasherStateError;

/// Incremental SHA-256/SHA-512 whose full state is a small byte string.
///
/// It keeps the chaining words, the unprocessed tail of the current block and
/// the byte count, and feeds whole blocks to `sha2`'s accelerated compression
/// functions, so it runs at the crate's own speed.
#[derive(Clone)]
pub enum ResumableHasher {
    Sha256 { state: [u32; 8], buf: Vec<u8>, len: u64 },
    Sha512 { state: [u64; 8], buf: Vec<u8>, len: u128 },
}

impl fmt::Debug for ResumableHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ResumableHasher({}, {} bytes)", self.algorithm().as_str(), self.bytes_hashed())
    }
}

const SHA256_IV: [u32; 8] =
    [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];
const SHA512_IV: [u64; 8] = [
    0x6a09e667f3bcc908,
    0xbb67ae8584caa73b,
    0x3c6ef372fe94f82b,
    0xa54ff53a5f1d36f1,
    0x510e527fade682d1,
    0x9b05688c2b3e6c1f,
    0x1f83d9abfb41bd6b,
    0x5be0cd19137e2179,
];
const STATE_VERSION: u8 = 1;

impl ResumableHasher {
    pub fn new(algorithm: Algorithm) -> ResumableHasher {
        match algorithm {
            Algorithm::Sha256 => ResumableHasher::Sha256 { state: SHA256_IV, buf: Vec::with_capacity(64), len: 0 },
            Algorithm::Sha512 => ResumableHasher::Sha512 { state: SHA512_IV, buf: Vec::with_capacity(128), len: 0 },
        }
    }

    pub fn algorithm(&self) -> Algorithm {
        match self {
            ResumableHasher::Sha256 { .. } => Algorithm::Sha256,
            ResumableHasher::Sha512 { .. } => Algorithm::Sha512,
        }
    }

    /// Number of bytes fed so far.
    pub fn bytes_hashed(&self) -> u64 {
        match self {
            ResumableHasher::Sha256 { len, .. } => *len,
            ResumableHasher::Sha512 { len, .. } => *len as u64,
        }
    }

    pub fn update(&mut self, mut data: &[u8]) {
        match self {
            ResumableHasher::Sha256 { state, buf, len } => {
                *len += data.len() as u64;
                feed(buf, &mut data, 64, |blocks| {
                    for block in blocks.chunks_exact(64) {
                        sha2::compress256(state, std::slice::from_ref(GenericArray::from_slice(block)));
                    }
                });
            }
            ResumableHasher::Sha512 { state, buf, len } => {
                *len += data.len() as u128;
                feed(buf, &mut data, 128, |blocks| {
                    for block in blocks.chunks_exact(128) {
                        sha2::compress512(state, std::slice::from_ref(GenericArray::from_slice(block)));
                    }
                });
            }
        }
    }

    /// Finish and return the digest; the hasher itself is left untouched.
    pub fn finish(&self) -> Digest {
        match self {
            ResumableHasher::Sha256 { state, buf, len } => {
                let mut state = *state;
                let mut tail = buf.clone();
                pad(&mut tail, 64, &((*len as u128) * 8).to_be_bytes()[8..]);
                for block in tail.chunks_exact(64) {
                    sha2::compress256(&mut state, std::slice::from_ref(GenericArray::from_slice(block)));
                }
                let out: Vec<u8> = state.iter().flat_map(|w| w.to_be_bytes()).collect();
                Digest { algorithm: Algorithm::Sha256, hex: hex::encode(out) }
            }
            ResumableHasher::Sha512 { state, buf, len } => {
                let mut state = *state;
                let mut tail = buf.clone();
                pad(&mut tail, 128, &(len * 8).to_be_bytes());
                for block in tail.chunks_exact(128) {
                    sha2::compress512(&mut state, std::slice::from_ref(GenericArray::from_slice(block)));
                }
                let out: Vec<u8> = state.iter().flat_map(|w| w.to_be_bytes()).collect();
                Digest { algorithm: Algorithm::Sha512, hex: hex::encode(out) }
            }
        }
    }

    /// Serialize the full state: version, algorithm, length, words, tail.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![STATE_VERSION];
        match self {
            ResumableHasher::Sha256 { state, buf, len } => {
                out.push(1);
                out.extend_from_slice(&(*len as u128).to_be_bytes());
                state.iter().for_each(|w| out.extend_from_slice(&w.to_be_bytes()));
                out.extend_from_slice(buf);
            }
            ResumableHasher::Sha512 { state, buf, len } => {
                out.push(2);
                out.extend_from_slice(&len.to_be_bytes());
                state.iter().for_each(|w| out.extend_from_slice(&w.to_be_bytes()));
                out.extend_from_slice(buf);
            }
        }
        out
    }

    /// Inverse of [`ResumableHasher::to_bytes`]; refuses anything inconsistent.
    pub fn from_bytes(bytes: &[u8]) -> Result<ResumableHasher, HasherStateError> {
        let [version, alg, rest @ ..] = bytes else {
            return Err(HasherStateError);
        };
        if *version != STATE_VERSION || rest.len() < 16 {
            return Err(HasherStateError);
        }
        let (len_bytes, rest) = rest.split_at(16);
        let len = u128::from_be_bytes(len_bytes.try_into().map_err(|_| HasherStateError)?);
        match alg {
            1 if rest.len() >= 32 => {
                let (words, buf) = rest.split_at(32);
                let mut state = [0u32; 8];
                for (w, chunk) in state.iter_mut().zip(words.chunks_exact(4)) {
                    *w = u32::from_be_bytes(chunk.try_into().map_err(|_| HasherStateError)?);
                }
                if buf.len() >= 64 || len > u64::MAX as u128 || (len % 64) as usize != buf.len() {
                    return Err(HasherStateError);
                }
                Ok(ResumableHasher::Sha256 { state, buf: buf.to_vec(), len: len as u64 })
            }
            2 if rest.len() >= 64 => {
                let (words, buf) = rest.split_at(64);
                let mut state = [0u64; 8];
                for (w, chunk) in state.iter_mut().zip(words.chunks_exact(8)) {
                    *w = u64::from_be_bytes(chunk.try_into().map_err(|_| HasherStateError)?);
                }
                if buf.len() >= 128 || (len % 128) as usize != buf.len() {
                    return Err(HasherStateError);
                }
                Ok(ResumableHasher::Sha512 { state, buf: buf.to_vec(), len })
            }
            _ => Err(HasherStateError),
        }
    }
}

/// Splits `data` into whole blocks for `compress` and keeps the rest in `buf`.
fn feed(buf: &mut Vec<u8>, data: &mut &[u8], block: usize, mut compress: impl FnMut(&[u8])) {
    if !buf.is_empty() {
        let need = block - buf.len();
        let take = need.min(data.len());
        buf.extend_from_slice(&data[..take]);
        *data = &data[take..];
        if buf.len() < block {
            return;
        }
        compress(buf);
        buf.clear();
    }
    let whole = data.len() - data.len() % block;
    if whole > 0 {
        compress(&data[..whole]);
    }
    buf.extend_from_slice(&data[whole..]);
}

/// Merkle–Damgård padding: 0x80, zeros, then the big-endian bit length.
fn pad(tail: &mut Vec<u8>, block: usize, bit_len: &[u8]) {
    tail.push(0x80);
    while !(tail.len() + bit_len.len()).is_multiple_of(block) {
        tail.push(0);
    }
    tail.extend_from_slice(bit_len);
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn parses_and_prints() {
        let d: Digest = "sha256:6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b".parse().unwrap();
        assert_eq!(d.algorithm(), Algorithm::Sha256);
        assert_eq!(d.to_string(), "sha256:6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b");
        let long = format!("sha512:{}", "a".repeat(128));
        assert_eq!(long.parse::<Digest>().unwrap().to_string(), long);
    }

    #[test]
    fn refuses_bad_digests() {
        let cases: &[(&str, DigestError)] = &[
            ("", DigestError::Malformed),
            ("sha256", DigestError::Malformed),
            ("sha256:", DigestError::Malformed),
            (":abc", DigestError::Malformed),
            ("SHA256:abc", DigestError::Malformed),
            ("sha256:abc", DigestError::BadHex(64)),
            (&format!("sha256:{}", "A".repeat(64)), DigestError::BadHex(64)),
            (&format!("sha256:{}", "g".repeat(64)), DigestError::BadHex(64)),
            (&format!("sha256:{}", "a".repeat(65)), DigestError::BadHex(64)),
            (&format!("sha512:{}", "a".repeat(64)), DigestError::BadHex(128)),
            ("md5:d41d8cd98f00b204e9800998ecf8427e", DigestError::UnsupportedAlgorithm("md5".into())),
            ("sha256:../../etc/passwd", DigestError::BadHex(64)),
        ];
        for (input, expected) in cases {
            assert_eq!(input.parse::<Digest>().unwrap_err(), *expected, "{input:?}");
        }
    }

    #[test]
    fn known_vectors() {
        assert_eq!(
            Digest::sha256(b"").to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let mut h = ResumableHasher::new(Algorithm::Sha256);
        h.update(b"abc");
        assert_eq!(h.finish().hex(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        let mut h = ResumableHasher::new(Algorithm::Sha512);
        h.update(b"abc");
        assert_eq!(
            h.finish().hex(),
            "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f"
        );
    }

    #[test]
    fn corrupt_states_are_refused() {
        for bad in [&[][..], &[1], &[2, 1], &[1, 9, 0, 0], &[1, 1, 0]] {
            assert!(ResumableHasher::from_bytes(bad).is_err());
        }
        let mut h = ResumableHasher::new(Algorithm::Sha256);
        h.update(b"hello");
        let mut bytes = h.to_bytes();
        bytes.push(0); // tail no longer matches the length
        assert!(ResumableHasher::from_bytes(&bytes).is_err());
    }

    proptest! {
        #[test]
        fn digest_parse_never_panics(s in "\\PC{0,200}") {
            let _ = s.parse::<Digest>();
        }

        #[test]
        fn digest_roundtrips(alg in prop_oneof![Just(Algorithm::Sha256), Just(Algorithm::Sha512)], data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let d = Digest::of(alg, &data);
            prop_assert_eq!(d.to_string().parse::<Digest>().unwrap(), d);
        }

        /// Hashing in arbitrary pieces, with the state serialized and restored
        /// between pieces, equals hashing in one go.
        #[test]
        fn resumable_matches_sha2(alg in prop_oneof![Just(Algorithm::Sha256), Just(Algorithm::Sha512)],
                                  data in proptest::collection::vec(any::<u8>(), 0..1000),
                                  cuts in proptest::collection::vec(0usize..1000, 0..8)) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(data.len())).collect();
            cuts.sort();
            let mut h = ResumableHasher::new(alg);
            let mut at = 0;
            for c in cuts.into_iter().chain([data.len()]) {
                h.update(&data[at..c]);
                at = c;
                h = ResumableHasher::from_bytes(&h.to_bytes()).unwrap();
            }
            prop_assert_eq!(h.bytes_hashed(), data.len() as u64);
            prop_assert_eq!(h.finish(), Digest::of(alg, &data));
        }
    }
}
