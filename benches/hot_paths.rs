//! Micro-benchmarks of the hot paths: digest hashing (the resumable hasher
//! against `sha2`'s own, which the machine's `openssl speed sha256` bounds),
//! and the parsers every request goes through.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use sha2::Digest as _;

use berth::oci::{Algorithm, ResumableHasher};

fn hashing(c: &mut Criterion) {
    let data = vec![0x5au8; 8 * 1024 * 1024];
    let mut g = c.benchmark_group("sha256_8MiB");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("sha2_crate", |b| b.iter(|| sha2::Sha256::digest(black_box(&data))));
    g.bench_function("resumable_256KiB_frames", |b| {
        b.iter(|| {
            let mut h = ResumableHasher::new(Algorithm::Sha256);
            for frame in data.chunks(256 * 1024) {
                h.update(black_box(frame));
            }
            h.finish()
        })
    });
    g.bench_function("resumable_16KiB_frames_odd_split", |b| {
        b.iter(|| {
            let mut h = ResumableHasher::new(Algorithm::Sha256);
            for frame in data.chunks(16 * 1024 + 7) {
                h.update(black_box(frame));
            }
            h.finish()
        })
    });
    g.finish();
    let mut g = c.benchmark_group("sha512_8MiB");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("sha2_crate", |b| b.iter(|| sha2::Sha512::digest(black_box(&data))));
    g.bench_function("resumable_256KiB_frames", |b| {
        b.iter(|| {
            let mut h = ResumableHasher::new(Algorithm::Sha512);
            for frame in data.chunks(256 * 1024) {
                h.update(black_box(frame));
            }
            h.finish()
        })
    });
    g.finish();
}

fn parsing(c: &mut Criterion) {
    let path = "/v2/library/team/app/manifests/v1.2.3";
    c.bench_function("endpoint_parse_manifest_by_tag", |b| {
        b.iter(|| berth::api::endpoint::parse(&http::Method::GET, black_box(path)).is_ok())
    });
    let d = format!("/v2/library/app/blobs/sha256:{}", "ab".repeat(32));
    c.bench_function("endpoint_parse_blob_by_digest", |b| {
        b.iter(|| berth::api::endpoint::parse(&http::Method::GET, black_box(&d)).is_ok())
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(3));
    targets = hashing, parsing
}
criterion_main!(benches);
