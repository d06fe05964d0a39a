//! `berth-bench`: drive a Distribution-spec registry and report throughput,
//! latency percentiles, errors and server memory; with `--compare`, run the
//! same scenario against a second registry in alternating rounds and print
//! both side by side with their ratio.

use std::process::ExitCode;
use std::time::Duration;

use berth_bench::{data, Auth, Options, Registry, Scenario, Target};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "berth-bench", version, about)]
struct Cli {
    /// Registry under test (A), e.g. http://127.0.0.1:5000
    #[arg(long)]
    url: String,
    /// Second registry (B) to run the same scenarios against, alternating.
    #[arg(long)]
    compare: Option<String>,
    /// Scenarios to run, comma-separated.
    #[arg(short, long, value_enum, value_delimiter = ',', default_value = "manifest-get-tag")]
    scenario: Vec<Scenario>,
    /// Concurrent clients.
    #[arg(short, long, default_value_t = 32)]
    concurrency: usize,
    /// Requests per target (split over rounds).
    #[arg(short = 'n', long, conflicts_with = "duration")]
    requests: Option<u64>,
    /// Run time per target, e.g. 10s, 2m (split over rounds).
    #[arg(short, long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Blob size for push and pull scenarios, e.g. 1MiB, 1GiB.
    #[arg(long, default_value = "1MiB", value_parser = data::parse_size)]
    size: u64,
    /// Chunk size for push-chunked.
    #[arg(long, default_value = "5MiB", value_parser = data::parse_size)]
    chunk_size: u64,
    /// Repository the scenarios use.
    #[arg(long, default_value = "bench/app")]
    repo: String,
    /// Alternating rounds when comparing (A, B, A, B, ...).
    #[arg(long, default_value_t = 4)]
    rounds: u32,
    /// Server process of A whose resident memory to sample.
    #[arg(long)]
    pid: Option<u32>,
    /// Server process of B whose resident memory to sample.
    #[arg(long)]
    compare_pid: Option<u32>,
    /// Basic-auth user (password from --password or BERTH_BENCH_PASSWORD).
    #[arg(long)]
    user: Option<String>,
    #[arg(long, env = "BERTH_BENCH_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// Basic-auth user of target B (default: --user), with the same password.
    #[arg(long, requires = "user")]
    compare_user: Option<String>,
    /// Bearer token (or BERTH_BENCH_TOKEN).
    #[arg(long, env = "BERTH_BENCH_TOKEN", hide_env_values = true, conflicts_with = "user")]
    token: Option<String>,
    /// Accept any TLS certificate (test setups with self-signed certificates).
    #[arg(long)]
    insecure: bool,
    /// Seed for generated blobs (vary it to push new content on each run).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
    /// Instead of a load scenario: start this server command (it must serve
    /// --url), time until /v2/ answers 200 and sample its idle memory.
    #[arg(long)]
    startup: Option<String>,
    /// Starts to measure with --startup.
    #[arg(long, default_value_t = 10)]
    startup_runs: usize,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| format!("invalid duration {s:?}"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("invalid duration unit in {s:?} (ms, s, m)")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("berth-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("berth-bench: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs and prints; `Ok(false)` when any request failed.
async fn run(cli: Cli) -> anyhow::Result<bool> {
    if let Some(command) = &cli.startup {
        let report = berth_bench::startup::measure(
            command,
            &cli.url,
            cli.startup_runs,
            Duration::from_secs(30),
            Duration::from_millis(500),
        )
        .await?;
        if cli.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print!("{}", report.to_table());
        }
        return Ok(true);
    }
    let auth = match (&cli.user, &cli.password, &cli.token) {
        (Some(user), password, _) => Auth::Basic { user: user.clone(), password: password.clone().unwrap_or_default() },
        (None, _, Some(token)) => Auth::Bearer(token.clone()),
        _ => Auth::None,
    };
    let mut targets = vec![Target {
        label: "A".into(),
        registry: Registry::new(&cli.url, auth.clone(), cli.insecure, cli.concurrency)?,
        pid: cli.pid,
    }];
    if let Some(b) = &cli.compare {
        let auth_b = match (&cli.compare_user, auth) {
            (Some(user), Auth::Basic { password, .. }) => Auth::Basic { user: user.clone(), password },
            (_, auth) => auth,
        };
        targets.push(Target {
            label: "B".into(),
            registry: Registry::new(b, auth_b, cli.insecure, cli.concurrency)?,
            pid: cli.compare_pid,
        });
    }
    let requests = if cli.requests.is_none() && cli.duration.is_none() { Some(1000) } else { cli.requests };
    let opts = Options {
        concurrency: cli.concurrency,
        requests,
        duration: cli.duration,
        size: cli.size,
        chunk: cli.chunk_size.max(1),
        repo: cli.repo.clone(),
        rounds: if targets.len() > 1 { cli.rounds.max(1) } else { 1 },
        seed: cli.seed,
    };
    let reports = berth_bench::run_all(&cli.scenario, &targets, &opts).await?;
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        for r in &reports {
            println!("{}", r.to_table());
        }
    }
    Ok(reports.iter().all(|r| r.targets.iter().all(|t| t.summary.errors == 0)))
}
