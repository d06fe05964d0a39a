//! berth-bench: load for any OCI Distribution registry, and side-by-side
//! comparison of two. Used as a library by Berth's end-to-end test, and as
//! the `berth-bench` binary.

pub mod client;
pub mod data;
pub mod report;
pub mod rss;
pub mod scenario;
pub mod startup;
pub mod stats;

pub use client::{Auth, Registry};
pub use report::{ScenarioReport, TargetReport};
pub use scenario::{Options, Scenario, Target};

/// Run `scenarios` against `targets` and report each.
pub async fn run_all(
    scenarios: &[Scenario],
    targets: &[Target],
    opts: &Options,
) -> anyhow::Result<Vec<ScenarioReport>> {
    let mut reports = Vec::new();
    for &scenario in scenarios {
        let samples = scenario::run(scenario, targets, opts).await?;
        let targets = targets
            .iter()
            .zip(samples)
            .map(|(t, s)| TargetReport {
                label: t.label.clone(),
                url: t.registry.base().to_owned(),
                summary: s.summary(),
            })
            .collect();
        reports.push(ScenarioReport {
            scenario: scenario.name(),
            concurrency: opts.concurrency,
            size_bytes: opts.size,
            chunk_bytes: opts.chunk,
            rounds: opts.rounds,
            targets,
        });
    }
    Ok(reports)
}
