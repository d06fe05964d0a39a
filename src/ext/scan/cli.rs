//! `berth scan` and `berth vulndb`: the operator's commands, run against
//! the registry (or fleet) a configuration names.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::service::{Outcome, Scanner};
use super::vulndb::{import, store};
use crate::auth::internal_access;
use crate::config::ScanConfig;
use crate::oci::{Reference, RepoName};
use crate::registry::access::Pull;
use crate::registry::Registry;

/// Exit statuses: 0 fine, 1 failure, 2 bad arguments, 3 (scan) findings at
/// or above `--fail-on`.
pub async fn scan(registry: Registry, config: ScanConfig, target: &str, format: &str, fail_on: Option<&str>) -> u8 {
    let (name, reference) = match split_target(target) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("berth scan: {e}");
            return 2;
        }
    };
    let fail_on: Option<super::vulndb::Severity> = match fail_on.map(str::parse).transpose() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("berth scan: --fail-on: {e}");
            return 2;
        }
    };
    let scanner = Scanner::new(registry, config);
    let access = internal_access::<Pull>(&name, "cli");
    let started = Instant::now();
    let report = loop {
        match scanner.report(&access, &reference).await {
            Ok(Outcome::Ready(r)) => break r,
            Ok(Outcome::Pending { .. }) => {
                // Inventory the missing layers here rather than waiting for
                // a server's worker (the layer leases keep it one scan per
                // layer across the fleet).
                let digest = match scanner.registry_manifest_digest(&access, &reference).await {
                    Ok(d) => d,
                    Err(e) => {
                        eprintln!("berth scan: {e}");
                        return 1;
                    }
                };
                match scanner.scan(&name, &digest).await {
                    Ok(()) => {}
                    Err(crate::oci::OciError::Unavailable { retry_after, cause })
                        if started.elapsed() < Duration::from_secs(600) =>
                    {
                        eprintln!("berth scan: {cause}; retrying");
                        tokio::time::sleep(retry_after).await;
                    }
                    Err(e) => {
                        eprintln!("berth scan: {e}");
                        return 1;
                    }
                }
            }
            Err(e) => {
                eprintln!("berth scan: {name}:{reference}: {e}");
                return 1;
            }
        }
    };
    let out = match format {
        "json" => serde_json::to_string_pretty(&*report).unwrap_or_default(),
        "cyclonedx" => serde_json::to_string_pretty(&report.cyclonedx()).unwrap_or_default(),
        "sarif" => serde_json::to_string_pretty(&report.sarif()).unwrap_or_default(),
        _ => report.table(),
    };
    println!("{out}");
    match fail_on {
        Some(s) if report.findings.iter().any(|f| f.severity >= s) => 3,
        _ => 0,
    }
}

/// `NAME:TAG` or `NAME@DIGEST`.
pub fn split_target(target: &str) -> Result<(RepoName, Reference), String> {
    let (name, reference) = if let Some((n, d)) = target.split_once('@') {
        (n, d)
    } else {
        match target.rsplit_once(':') {
            Some((n, t)) if !t.contains('/') => (n, t),
            _ => return Err(format!("{target:?}: expected NAME:TAG or NAME@DIGEST")),
        }
    };
    let name: RepoName = name.parse().map_err(|e| format!("{name:?}: {e}"))?;
    let reference: Reference = reference.parse().map_err(|e| format!("{reference:?}: {e:?}"))?;
    Ok((name, reference))
}

pub async fn vulndb_import(registry: Registry, paths: &[PathBuf], json: bool) -> u8 {
    let started = Instant::now();
    let mut entries = Vec::new();
    let mut sources = Vec::new();
    for p in paths {
        let p = p.clone();
        let mut batch = Vec::new();
        let read = tokio::task::spawn_blocking(move || import::read_source(&p, &mut batch).map(|i| (i, batch))).await;
        match read {
            Ok(Ok((info, batch))) => {
                eprintln!(
                    "{}: {} ({} files, {} entries, {} skipped, {} refused)",
                    info.path, info.kind, info.records, info.entries, info.skipped, info.refused
                );
                for problem in &info.problems {
                    eprintln!("  refused: {problem}");
                }
                entries.extend(batch);
                sources.push(info);
            }
            Ok(Err(e)) => {
                eprintln!("berth vulndb import: {e}");
                return 1;
            }
            Err(e) => {
                eprintln!("berth vulndb import: {e}");
                return 1;
            }
        }
    }
    let read_secs = started.elapsed().as_secs_f64();
    let derived = registry.derived("scan");
    match store::publish(&derived, sources, entries).await {
        Ok(m) => {
            tracing::info!(
                target: "berth::audit",
                subject = "berth:cli",
                operation = "vulndb_import",
                version = %m.version,
                advisories = m.advisories,
                entries = m.entries,
                "audit"
            );
            if json {
                println!("{}", serde_json::to_string_pretty(&m).unwrap_or_default());
            } else {
                println!(
                    "imported database {}: {} advisories, {} entries (read {:.1} s, total {:.1} s)",
                    m.version,
                    m.advisories,
                    m.entries,
                    read_secs,
                    started.elapsed().as_secs_f64()
                );
            }
            0
        }
        Err(e) => {
            eprintln!("berth vulndb import: {e}");
            1
        }
    }
}

pub async fn vulndb_status(registry: Registry, json: bool) -> u8 {
    let derived = registry.derived("scan");
    let handle = store::DbHandle::default();
    match handle.current(&derived).await {
        Ok(Some(db)) => {
            let m = &db.manifest;
            if json {
                println!("{}", serde_json::to_string_pretty(m).unwrap_or_default());
            } else {
                let age = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs()
                    .saturating_sub(m.created);
                println!("version: {}", m.version);
                println!("age: {}h{:02}m", age / 3600, age % 3600 / 60);
                println!("advisories: {}  entries: {}", m.advisories, m.entries);
                for (eco, n) in &m.ecosystems {
                    println!("  {eco}: {n}");
                }
                for s in &m.sources {
                    println!(
                        "source: {} ({}, {} files){}",
                        s.path,
                        s.kind,
                        s.records,
                        s.snapshot.as_ref().map(|x| format!(": {x}")).unwrap_or_default()
                    );
                }
            }
            0
        }
        Ok(None) => {
            eprintln!("no vulnerability database imported (berth vulndb import --config FILE PATH)");
            3
        }
        Err(e) => {
            eprintln!("berth vulndb status: {e}");
            1
        }
    }
}
