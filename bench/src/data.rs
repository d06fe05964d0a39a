//! Blob contents generated on the fly: deterministic pseudo-random bytes
//! from a seed, produced chunk by chunk so a multi-GB blob is never held in
//! memory. The same seed always gives the same bytes, so a blob's digest can
//! be computed before the timed run and the bytes generated again to send.

use bytes::Bytes;
use futures::stream::{self, Stream};
use sha2::{Digest as _, Sha256};

/// Size of each generated chunk.
pub const CHUNK: usize = 256 * 1024;

/// A deterministic byte source (xorshift64*), fast enough not to be the
/// bottleneck of a push.
#[derive(Debug, Clone)]
pub struct Generator {
    state: u64,
}

impl Generator {
    pub fn new(seed: u64) -> Generator {
        Generator { state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1 }
    }

    /// Fill `buf` with the next bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut words = buf.chunks_exact_mut(8);
        for w in &mut words {
            w.copy_from_slice(&self.next_word().to_le_bytes());
        }
        let rest = words.into_remainder();
        if !rest.is_empty() {
            let last = self.next_word().to_le_bytes();
            rest.copy_from_slice(&last[..rest.len()]);
        }
    }

    fn next_word(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// Chunk `index` of blob `seed`. Each chunk has its own generator, so any
/// range of a blob is produced without generating what precedes it.
fn chunk(seed: u64, index: u64, buf: &mut [u8]) {
    Generator::new(seed ^ index.wrapping_mul(0xD6E8_FEB8_6659_FD93).rotate_left(17)).fill(buf);
}

/// Bytes `[offset, offset + len)` of blob `seed`, as a stream of chunks.
pub fn range_stream(seed: u64, size: u64, offset: u64, len: u64) -> impl Stream<Item = Result<Bytes, std::io::Error>> {
    let end = (offset + len).min(size);
    stream::unfold(offset, move |pos| async move {
        if pos >= end {
            return None;
        }
        let index = pos / CHUNK as u64;
        let chunk_start = index * CHUNK as u64;
        let mut buf = vec![0u8; CHUNK];
        chunk(seed, index, &mut buf);
        let from = (pos - chunk_start) as usize;
        let to = ((end - chunk_start) as usize).min(CHUNK);
        Some((Ok(Bytes::from(buf).slice(from..to)), chunk_start + to as u64))
    })
}

/// The sha256 digest of blob `seed` of `size` bytes.
pub fn digest(seed: u64, size: u64) -> String {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut left = size;
    let mut index = 0;
    while left > 0 {
        chunk(seed, index, &mut buf);
        let take = left.min(CHUNK as u64) as usize;
        hasher.update(&buf[..take]);
        left -= take as u64;
        index += 1;
    }
    format!("sha256:{}", hex::encode(hasher.finalize()))
}

/// Whole blob in memory, for small fixtures.
pub fn small_blob(seed: u64, size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size);
    let mut buf = vec![0u8; CHUNK];
    let mut index = 0;
    while out.len() < size {
        chunk(seed, index, &mut buf);
        let take = (size - out.len()).min(CHUNK);
        out.extend_from_slice(&buf[..take]);
        index += 1;
    }
    out
}

/// Parse sizes like `512`, `64KiB`, `5MiB`, `1GiB`, `1.5GiB`, `10MB`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("invalid size {s:?}"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "kb" => 1e3,
        "m" | "mib" => 1024.0 * 1024.0,
        "mb" => 1e6,
        "g" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "gb" => 1e9,
        _ => return Err(format!("invalid size unit in {s:?} (use B, KiB, MiB, GiB, KB, MB, GB)")),
    };
    let v = n * mult;
    if !v.is_finite() || !(0.0..=1e15).contains(&v) {
        return Err(format!("size {s:?} out of range"));
    }
    Ok(v.round() as u64)
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    async fn collect(seed: u64, size: u64, offset: u64, len: u64) -> Vec<u8> {
        let mut out = Vec::new();
        let mut s = Box::pin(range_stream(seed, size, offset, len));
        while let Some(c) = s.next().await {
            out.extend_from_slice(&c.unwrap());
        }
        out
    }

    #[tokio::test]
    async fn streams_match_the_whole_blob_and_its_digest() {
        let size = 3 * CHUNK as u64 + 1234;
        let whole = small_blob(7, size as usize);
        assert_eq!(collect(7, size, 0, size).await, whole);
        assert_eq!(digest(7, size), format!("sha256:{}", hex::encode(Sha256::digest(&whole))));
        // Arbitrary ranges, including ones crossing chunk boundaries.
        for (off, len) in
            [(0, 10), (CHUNK as u64 - 5, 10), (CHUNK as u64 * 2, CHUNK as u64), (size - 1, 1), (100, size)]
        {
            let got = collect(7, size, off, len).await;
            let end = (off + len).min(size) as usize;
            assert_eq!(got, whole[off as usize..end].to_vec(), "range {off}+{len}");
        }
        // Different seeds differ.
        assert_ne!(small_blob(8, 64), small_blob(7, 64));
        assert!(collect(7, size, size, 10).await.is_empty());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("5MiB"), Ok(5 * 1024 * 1024));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("1.5KiB"), Ok(1536));
        assert_eq!(parse_size("10MB"), Ok(10_000_000));
        for bad in ["", "x", "5XB", "-1", "1e99GiB"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}
