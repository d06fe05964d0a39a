//! The search index at scale: 100,000 repositories and 1,000,000 tags
//! (`BERTH_SEARCH_BENCH_REPOS`, 10 tags each). Measures the time to build
//! the index from a listing's records and to load it from the fleet's
//! snapshot, the snapshot's size, the resident memory the index holds, and
//! the latency (p50, p99) of queries over it: for a caller who sees every
//! repository and for one whose access rules (globs, as policies are) admit
//! a few teams. Listing the records from the object store is not included
//! (it is one LIST per 1,000 keys). Run by scripts/bench-search; prints a
//! table for docs/performance.md.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant, SystemTime};

use berth::ext::search::{decode_snapshot, encode_snapshot, Index, TagOrder};
use berth::glob::Glob;
use berth::oci::{Digest, RepoName, Tag};
use berth::registry::keys::RepoKey;
use berth::registry::records::Record;

const WORDS: [&str; 16] = [
    "api",
    "web",
    "worker",
    "gateway",
    "auth",
    "billing",
    "search",
    "cache",
    "proxy",
    "ingest",
    "report",
    "mailer",
    "frontend",
    "backend",
    "scheduler",
    "metrics",
];

fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

fn name(i: usize) -> String {
    format!("team-{}/{}-{}-{i}", i % 500, WORDS[i % 16], WORDS[(i / 16) % 16])
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// In a process of its own (so no memory of the bench's other data is
/// reused): load a snapshot file and print the resident memory it added.
fn load_alone(path: &str) {
    let before = rss();
    let bytes = std::fs::read(path).unwrap();
    let (index, _) = decode_snapshot(&bytes).unwrap();
    drop(bytes);
    // The query structures are built at the first query.
    let _ = index.search("x", &|_| true, None, 1);
    println!("{}", rss().saturating_sub(before));
    drop(index);
}

fn main() {
    if let Ok(path) = std::env::var("BERTH_SEARCH_BENCH_LOAD") {
        return load_alone(&path);
    }
    let repos: usize = std::env::var("BERTH_SEARCH_BENCH_REPOS").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let tags_per_repo = 10;

    // The records a listing would give.
    let started = Instant::now();
    let epoch = SystemTime::UNIX_EPOCH + Duration::from_secs(1_780_000_000);
    let mut catalog = Vec::with_capacity(repos);
    let mut records = Vec::with_capacity(repos * (tags_per_repo + 1));
    for i in 0..repos {
        let repo: RepoName = name(i).parse().unwrap();
        for t in 0..tags_per_repo {
            let tag: Tag = if t == 0 { "latest".parse().unwrap() } else { format!("1.{}.{t}", i % 7).parse().unwrap() };
            let at = epoch + Duration::from_millis((i * tags_per_repo + t) as u64);
            records.push(Record { key: RepoKey::Tag { repo: repo.clone(), tag }, modified: Some(at) });
        }
        records.push(Record {
            key: RepoKey::Revision { repo: repo.clone(), digest: Digest::sha256(name(i).as_bytes()) },
            modified: Some(epoch),
        });
        catalog.push(repo);
    }
    let generated = started.elapsed();

    let started = Instant::now();
    let index = Index::build(catalog, records);
    let build = started.elapsed();
    assert_eq!(index.len(), repos);
    assert_eq!(index.tag_count(), repos * tags_per_repo);

    let started = Instant::now();
    let snapshot = encode_snapshot(&index, 1_780_000_000_000);
    let encode = started.elapsed();
    let snapshot_bytes = snapshot.len();
    drop(index);

    let started = Instant::now();
    let (index, _) = decode_snapshot(&snapshot).unwrap();
    let load = started.elapsed();
    // The index as a replica holds it after loading the snapshot, measured
    // in a fresh process.
    let file = std::env::temp_dir().join(format!("berth-search-bench-{}.snapshot", std::process::id()));
    std::fs::write(&file, &snapshot).unwrap();
    drop(snapshot);
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .env("BERTH_SEARCH_BENCH_LOAD", &file)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&file);
    let held: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();

    // Queries: (label, query, page size).
    let queries: [(&str, &str, usize); 7] = [
        ("everything, first page", "", 50),
        ("exact name", "team-7/cache-api-7", 50),
        ("prefix", "team-42/", 50),
        ("one word", "gateway", 50),
        ("two words", "billing team-3", 50),
        ("substring", "ker-sched", 50),
        ("no match", "nothing-like-this", 50),
    ];
    let everyone = |_: &str| true;
    let rules: Vec<Glob> = ["team-1/**", "team-2*/**", "team-499/*"].iter().map(|p| Glob::new(p)).collect();
    let few_teams = |repo: &str| rules.iter().any(|g| g.matches(repo));
    let rounds = 200;
    let mut rows = Vec::new();
    for (visibility, visible) in
        [("every repository", &everyone as &dyn Fn(&str) -> bool), ("a few teams (globs)", &few_teams)]
    {
        for (label, q, n) in queries {
            let mut times = Vec::with_capacity(rounds);
            let mut total = 0;
            for _ in 0..rounds {
                let started = Instant::now();
                let page = index.search(q, visible, None, n);
                times.push(started.elapsed());
                total = page.total;
            }
            times.sort();
            rows.push(format!(
                "| {visibility} | {label} (`{q}`) | {total} | {:.2} | {:.2} |",
                percentile(&times, 0.5).as_secs_f64() * 1e3,
                percentile(&times, 0.99).as_secs_f64() * 1e3
            ));
        }
    }
    // A repository's tags, newest first.
    let mut times = Vec::with_capacity(rounds);
    for i in 0..rounds {
        let started = Instant::now();
        let page = index.tags(&name(i * 97 % repos), "", TagOrder::Pushed, None, 50).unwrap();
        times.push(started.elapsed());
        assert_eq!(page.total, tags_per_repo);
    }
    times.sort();
    rows.push(format!(
        "| one repository | its tags, newest first | {tags_per_repo} | {:.3} | {:.3} |",
        percentile(&times, 0.5).as_secs_f64() * 1e3,
        percentile(&times, 0.99).as_secs_f64() * 1e3
    ));

    let base = rss();
    println!("search index: {repos} repositories, {} tags", index.tag_count());
    println!("records generated in {:.2} s (not part of any figure below)", generated.as_secs_f64());
    println!();
    println!("| figure | value |");
    println!("|---|---|");
    println!("| build from the listing's records | {:.2} s |", build.as_secs_f64());
    println!(
        "| snapshot written (encoded) | {:.2} s, {:.1} MiB |",
        encode.as_secs_f64(),
        snapshot_bytes as f64 / 1048576.0
    );
    println!("| snapshot loaded (decoded) | {:.2} s |", load.as_secs_f64());
    println!(
        "| resident memory of the loaded index | {:.0} MiB (a fresh process; {:.0} MiB in all here) |",
        held as f64 / 1048576.0,
        base as f64 / 1048576.0
    );
    println!();
    println!("Query latency over {rounds} runs each (in process, no HTTP):");
    println!();
    println!("| caller sees | query | matches | p50 ms | p99 ms |");
    println!("|---|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
}
