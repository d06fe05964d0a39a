//! The `berth` command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use berth::config::{self, Config};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "berth", version, about = "An OCI Distribution Specification v1.1 container registry")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the registry.
    Serve {
        /// TOML configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Listen address (overrides server.listen).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Storage directory for the filesystem backend (overrides storage.fs.root).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// User tools.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Token tools.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Run one garbage-collection pass on the registry (or fleet) the
    /// configuration names, while it keeps serving, and print what was
    /// deleted. Exit status 75 when another replica's pass holds the lease.
    Gc {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Only list what would be deleted, and the rule that decided each.
        #[arg(long)]
        dry_run: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Re-hash every stored blob and report what is corrupt, missing,
    /// orphaned or dangling. Exit status 4 when something is corrupt,
    /// missing or (left) dangling.
    Scrub {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Remove dangling records (never data).
        #[arg(long)]
        repair: bool,
        /// Check the records only; read no blob.
        #[arg(long)]
        no_verify: bool,
        /// Hashing budget per second, e.g. 64MiB (0: unlimited).
        #[arg(long, default_value = "64MiB")]
        rate: String,
        #[arg(long)]
        json: bool,
    },
    /// Print the vulnerability report of an image (NAME:TAG or NAME@DIGEST),
    /// inventorying its layers now if no replica has yet. Exit status 3
    /// with --fail-on when a finding reaches that severity.
    #[cfg(feature = "scan")]
    Scan {
        #[arg(long)]
        config: Option<PathBuf>,
        target: String,
        /// table, json, cyclonedx or sarif.
        #[arg(long, default_value = "table", value_parser = ["table", "json", "cyclonedx", "sarif"])]
        format: String,
        /// low, medium, high or critical.
        #[arg(long)]
        fail_on: Option<String>,
    },
    /// The offline vulnerability database.
    #[cfg(feature = "scan")]
    Vulndb {
        #[command(subcommand)]
        command: VulndbCommand,
    },
    /// Mirror tools.
    #[cfg(feature = "mirror")]
    Mirror {
        #[command(subcommand)]
        command: MirrorCommand,
    },
    /// Search index tools.
    #[cfg(feature = "search")]
    Search {
        #[command(subcommand)]
        command: SearchCommand,
    },
    /// Storage used per repository: from the last collection pass, or with
    /// --fresh from a scan now.
    Usage {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Only repositories matching this glob (`*`, `**`).
        repositories: Option<String>,
        #[arg(long)]
        fresh: bool,
        #[arg(long)]
        json: bool,
    },
}

#[cfg(feature = "mirror")]
#[derive(Debug, Subcommand)]
enum MirrorCommand {
    /// Copy the repositories and tags each upstream's `sync` section selects
    /// (one run per upstream at a time in the fleet), printing a line per
    /// tag. Exit status 1 when a tag failed, 75 when another run holds an
    /// upstream's lease.
    Sync {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Only this upstream (its `name`).
        #[arg(long)]
        upstream: Option<String>,
        /// Print the reports as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[cfg(feature = "search")]
#[derive(Debug, Subcommand)]
enum SearchCommand {
    /// Build the search index from a listing of every record, write it as
    /// the fleet's snapshot and tell every running replica to load it.
    Reindex {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print the figures as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[cfg(feature = "scan")]
#[derive(Debug, Subcommand)]
enum VulndbCommand {
    /// Import advisories (OSV directories, zip exports or files; RustSec
    /// advisory-db directories) as a new database version, switched to
    /// atomically for every replica.
    Import {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// The current version: sources, counts, age.
    Status {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Revoke one token (--jti) or every token of a subject issued before a
    /// time (--subject), on every replica of the fleet the configuration
    /// names: the record goes to its object store and the announcement to
    /// its shared state.
    Revoke {
        /// The configuration of the registry (or fleet) to act on.
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long, conflicts_with = "subject", required_unless_present = "subject")]
        jti: Option<String>,
        /// Unix time after which the jti record may be dropped (default: a week).
        #[arg(long, requires = "jti")]
        exp: Option<u64>,
        #[arg(long)]
        subject: Option<String>,
        /// Unix time: tokens issued before it are revoked (default: now).
        #[arg(long, requires = "subject")]
        before: Option<u64>,
    },
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Read a password from stdin (one line) and print an htpasswd line
    /// `NAME:<argon2id hash>`.
    Hash { name: String },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate a configuration file and print the effective configuration,
    /// secrets redacted.
    Check { file: PathBuf },
}

fn load(file: Option<&std::path::Path>) -> Result<Config, config::ConfigError> {
    let config = config::load(file, std::env::vars())?;
    Ok(config)
}

fn main() -> ExitCode {
    // `--version` names the flavor and the extensions compiled in.
    let version: &'static str = Box::leak(berth::flavor::version_line().into_boxed_str());
    let cli = match Cli::from_arg_matches(&Cli::command().version(version).get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    match cli.command {
        Command::User { command: UserCommand::Hash { name } } => user_hash(&name),
        Command::Token { command: TokenCommand::Revoke { config, jti, exp, subject, before } } => {
            let cfg = match load(config.as_deref()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("berth: invalid configuration: {e}");
                    return ExitCode::from(2);
                }
            };
            let now = berth::auth::token::now();
            let revocation = match (jti, subject) {
                (Some(jti), _) => {
                    berth::registry::revocations::Revocation::Token { jti, exp: exp.unwrap_or(now + 7 * 24 * 3600) }
                }
                (None, Some(subject)) => {
                    berth::registry::revocations::Revocation::Subject { subject, before: before.unwrap_or(now + 1) }
                }
                (None, None) => return ExitCode::from(2),
            };
            revoke(&cfg, revocation)
        }
        Command::Gc { config, dry_run, json } => {
            let cfg = match load_valid(config.as_deref()) {
                Ok(c) => c,
                Err(code) => return code,
            };
            gc(&cfg, dry_run, json)
        }
        Command::Scrub { config, repair, no_verify, rate, json } => {
            let cfg = match load_valid(config.as_deref()) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let rate = match berth::config::ByteSize::parse(&rate) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("berth: --rate: {e}");
                    return ExitCode::from(2);
                }
            };
            let options = berth::registry::gc::scrub::ScrubOptions {
                repair,
                verify: !no_verify,
                max_bytes_per_sec: (rate > 0).then_some(rate),
                ..Default::default()
            };
            scrub(&cfg, &options, json)
        }
        #[cfg(feature = "scan")]
        Command::Scan { config, target, format, fail_on } => {
            let cfg = match load_valid(config.as_deref()) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let scan = cfg.scan.clone();
            with_registry(&cfg, |registry| async move {
                ExitCode::from(berth::ext::scan::cli::scan(registry, scan, &target, &format, fail_on.as_deref()).await)
            })
        }
        #[cfg(feature = "scan")]
        Command::Vulndb { command } => {
            let (config, json) = match &command {
                VulndbCommand::Import { config, json, .. } | VulndbCommand::Status { config, json } => {
                    (config.clone(), *json)
                }
            };
            let cfg = match load_valid(config.as_deref()) {
                Ok(c) => c,
                Err(code) => return code,
            };
            // Logs and the audit trail (the import's audit line), without
            // trace export.
            let _logs = berth::telemetry::init(&cfg.log, &Default::default());
            with_registry(&cfg, |registry| async move {
                ExitCode::from(match command {
                    VulndbCommand::Import { paths, .. } => {
                        berth::ext::scan::cli::vulndb_import(registry, &paths, json).await
                    }
                    VulndbCommand::Status { .. } => berth::ext::scan::cli::vulndb_status(registry, json).await,
                })
            })
        }
        #[cfg(feature = "mirror")]
        Command::Mirror { command: MirrorCommand::Sync { config, upstream, json } } => {
            let cfg = match load_valid(config.as_deref()) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let _logs = berth::telemetry::init(&cfg.log, &Default::default());
            mirror_sync(&cfg, upstream, json)
        }
        #[cfg(feature = "search")]
        Command::Search { command: SearchCommand::Reindex { config, json } } => {
            let cfg = match load_valid(config.as_deref()) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let _logs = berth::telemetry::init(&cfg.log, &Default::default());
            with_registry(&cfg, |registry| async move {
                match berth::ext::search::reindex(&registry).await {
                    Ok(stats) if json => print_json(&stats),
                    Ok(stats) => {
                        println!(
                            "search index rebuilt: {} repositories, {} tags ({} records listed) in {:.1} s; \
                             running replicas load it now",
                            stats.repositories, stats.tags, stats.records_listed, stats.seconds
                        );
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("berth: cannot rebuild the search index: {e}");
                        ExitCode::FAILURE
                    }
                }
            })
        }
        Command::Usage { config, repositories, fresh, json } => {
            let cfg = match load_valid(config.as_deref()) {
                Ok(c) => c,
                Err(code) => return code,
            };
            usage(&cfg, repositories.as_deref(), fresh, json)
        }
        Command::Config { command: ConfigCommand::Check { file } } => {
            // The same checks and the same builders as `serve`, short of
            // opening the backends and the listener.
            let checked = load(Some(&file))
                .and_then(|c| c.validate().map(|()| c))
                .and_then(|c| berth::server::Components::load(&c).map(|_| c));
            match checked {
                Ok(c) => {
                    print!("{}", c.to_redacted_toml());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("berth: invalid configuration: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Serve { config, listen, data_dir } => {
            let mut cfg = match load(config.as_deref()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("berth: invalid configuration: {e}");
                    return ExitCode::from(2);
                }
            };
            if let Some(addr) = listen {
                cfg.server.listen = addr;
            }
            if let Some(dir) = data_dir {
                cfg.storage.fs.root = dir;
            }
            let components = match cfg.validate().and_then(|()| berth::server::Components::load(&cfg)) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("berth: refusing to start: {e}");
                    return ExitCode::from(2);
                }
            };
            let telemetry = match berth::telemetry::init(&cfg.log, &cfg.telemetry) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("berth: cannot start telemetry: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("berth: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let result = runtime.block_on(serve(cfg, components, config));
            // Connections the grace period left open end (and close their
            // spans) with the runtime; then queued spans are exported.
            runtime.shutdown_timeout(std::time::Duration::from_secs(1));
            telemetry.shutdown();
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("berth: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

async fn serve(cfg: Config, components: berth::server::Components, config_file: Option<PathBuf>) -> anyhow::Result<()> {
    let mut server = berth::server::Server::bind(&cfg, components).await?;
    if let Some(path) = config_file {
        // Access policies follow the file (and SIGHUP) without a restart.
        server = server.watch_config(path);
    }
    // Tests and scripts read the bound address (useful with port 0) from here.
    println!("listening on {}", server.local_addr()?);
    if let Some((addr, advertise)) = server.mesh_addr() {
        println!("mesh on {addr} as {advertise}");
    }
    server.run(berth::server::shutdown_signal()).await
}

fn user_hash(name: &str) -> ExitCode {
    if name.is_empty() || name.contains(':') || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        eprintln!("berth: a user name cannot be empty or contain ':', spaces or control characters");
        return ExitCode::from(2);
    }
    let mut line = String::new();
    if let Err(e) = std::io::stdin().read_line(&mut line) {
        eprintln!("berth: cannot read the password from stdin: {e}");
        return ExitCode::from(2);
    }
    let password = line.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        eprintln!("berth: the password is empty");
        return ExitCode::from(2);
    }
    match berth::auth::htpasswd::hash_password(password) {
        Ok(hash) => {
            println!("{name}:{hash}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("berth: cannot hash the password: {e}");
            ExitCode::FAILURE
        }
    }
}

fn revoke(cfg: &Config, revocation: berth::registry::revocations::Revocation) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("berth: cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let registry = match berth::server::open_registry(cfg).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("berth: {e:#}");
                return ExitCode::FAILURE;
            }
        };
        let list = berth::registry::revocations::RevocationList::default();
        match registry.revoke(revocation.clone(), &list).await {
            Ok(()) => {
                println!("{}", serde_json::to_string(&revocation).unwrap_or_default());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("berth: cannot revoke: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// A configuration loaded and validated, or the exit status to stop with.
fn load_valid(file: Option<&std::path::Path>) -> Result<Config, ExitCode> {
    load(file).and_then(|c| c.validate().map(|()| c)).map_err(|e| {
        eprintln!("berth: invalid configuration: {e}");
        ExitCode::from(2)
    })
}

/// Run a one-shot command against the registry the configuration names.
fn with_registry<F, Fut>(cfg: &Config, run: F) -> ExitCode
where
    F: FnOnce(berth::registry::Registry) -> Fut,
    Fut: std::future::Future<Output = ExitCode>,
{
    let Some(runtime) = cli_runtime() else { return ExitCode::FAILURE };
    runtime.block_on(async {
        match berth::server::open_registry(cfg).await {
            Ok(registry) => run(registry).await,
            Err(e) => {
                eprintln!("berth: {e:#}");
                ExitCode::FAILURE
            }
        }
    })
}

/// A report as pretty JSON on stdout.
fn print_json(value: &impl serde::Serialize) -> ExitCode {
    match serde_json::to_string_pretty(value) {
        Ok(s) => {
            println!("{s}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("berth: cannot encode the report: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A runtime for one-shot commands.
fn cli_runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(r) => Some(r),
        Err(e) => {
            eprintln!("berth: cannot start a runtime: {e}");
            None
        }
    }
}

/// Progress on stderr: one rewritten line on a terminal, plain lines
/// (at most one per phase step) otherwise.
fn progress_printer() -> impl Fn(berth::registry::gc::Progress) + Send + Sync {
    use std::io::IsTerminal as _;
    let tty = std::io::stderr().is_terminal();
    let last = std::sync::Mutex::new((String::new(), std::time::Instant::now()));
    move |p: berth::registry::gc::Progress| {
        let line = match p.total {
            Some(total) if total > 0 => {
                let width = 30usize;
                let filled = ((p.done.min(total) as f64 / total as f64) * width as f64) as usize;
                format!("{:<18} [{}{}] {}/{}", p.phase, "#".repeat(filled), " ".repeat(width - filled), p.done, total)
            }
            _ => format!("{:<18} {}", p.phase, p.done),
        };
        let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
        if tty {
            eprint!("\r\x1b[2K{line}");
            if p.total.is_some_and(|t| p.done >= t) {
                eprintln!();
            }
        } else if last.0 != p.phase || last.1.elapsed() >= std::time::Duration::from_secs(5) || p.total == Some(p.done)
        {
            eprintln!("{line}");
            *last = (p.phase.to_owned(), std::time::Instant::now());
        }
    }
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(feature = "mirror")]
fn mirror_sync(cfg: &Config, only: Option<String>, json: bool) -> ExitCode {
    let mirror_config = cfg.mirror.clone();
    #[cfg(feature = "scan")]
    let scan_config = cfg.scan.clone();
    with_registry(cfg, |registry| async move {
        #[cfg(feature = "scan")]
        let scanner =
            scan_config.enabled.then(|| berth::ext::scan::Scanner::new(registry.clone(), scan_config.clone()));
        let stored: std::sync::Arc<std::sync::Mutex<Vec<(berth::oci::RepoName, berth::oci::Digest)>>> =
            Default::default();
        let mirror = match berth::ext::mirror::Mirror::new(&mirror_config, registry) {
            Ok(Some(mut m)) => {
                let stored = stored.clone();
                m.set_on_stored(std::sync::Arc::new(move |repo, digest| {
                    stored.lock().unwrap_or_else(|p| p.into_inner()).push((repo.clone(), digest.clone()));
                }));
                m
            }
            Ok(None) => {
                eprintln!("berth: the configuration has no [[mirror.upstreams]]");
                return ExitCode::from(2);
            }
            Err(e) => {
                eprintln!("berth: {e}");
                return ExitCode::FAILURE;
            }
        };
        let names = match only {
            Some(name) => vec![name],
            None => mirror.sync_upstreams(),
        };
        if names.is_empty() {
            eprintln!("berth: no upstream has a [mirror.upstreams.sync] section");
            return ExitCode::from(2);
        }
        let print = |p: berth::ext::mirror::sync::SyncProgress<'_>| {
            if !json {
                println!("{} {}:{} {} ({}/{})", p.upstream, p.repository, p.tag, p.outcome, p.done, p.total);
            }
        };
        let (mut reports, mut code) = (Vec::new(), ExitCode::SUCCESS);
        for name in names {
            match mirror.sync(&name, &print).await {
                Ok(r) => {
                    if r.busy {
                        eprintln!("berth: another run is syncing {name} now (it holds the lease); nothing done");
                        code = ExitCode::from(75);
                    } else if r.tags_failed > 0 || !r.errors.is_empty() {
                        code = ExitCode::FAILURE;
                    }
                    if !json {
                        println!(
                            "{name}: {} repositories, {} tags selected: {} copied, {} current, {} failed; \
                             {} manifests and {} blobs ({}) fetched",
                            r.repositories,
                            r.tags_selected,
                            r.tags_copied,
                            r.tags_current,
                            r.tags_failed,
                            r.manifests_fetched,
                            r.blobs_fetched,
                            human_bytes(r.bytes_fetched)
                        );
                        for e in &r.errors {
                            eprintln!("berth: {name}: {e}");
                        }
                    }
                    reports.push(r);
                }
                Err(e) => {
                    eprintln!("berth: {name}: {e}");
                    return ExitCode::from(2);
                }
            }
        }
        // What was copied is queued for the fleet's scanners, as a push is.
        #[cfg(feature = "scan")]
        if let Some(scanner) = &scanner {
            let copied = std::mem::take(&mut *stored.lock().unwrap_or_else(|p| p.into_inner()));
            for (repo, digest) in copied {
                if let Err(e) = scanner.enqueue(&repo, &digest).await {
                    eprintln!("berth: cannot queue {repo}@{digest} for scanning: {e}");
                }
            }
        }
        #[cfg(not(feature = "scan"))]
        drop(stored);
        if json {
            let printed = print_json(&reports);
            if printed != ExitCode::SUCCESS {
                return printed;
            }
        }
        code
    })
}

fn gc(cfg: &Config, dry_run: bool, json: bool) -> ExitCode {
    with_registry(cfg, |registry| async move {
        let progress = progress_printer();
        let report = match registry.gc_pass(dry_run, &progress).await {
            Ok(Some(r)) => r,
            Ok(None) => {
                eprintln!("berth: another replica is collecting now (it holds the gc lease); nothing done");
                return ExitCode::from(75);
            }
            Err(e) => {
                eprintln!("berth: garbage collection failed: {e}");
                return ExitCode::FAILURE;
            }
        };
        if json {
            return print_json(&report);
        }
        let verb = if dry_run { "would delete" } else { "deleted" };
        for d in &report.items {
            let size = if d.kind == berth::registry::gc::Kind::Blob { human_bytes(d.bytes) } else { String::new() };
            println!(
                "{verb} {:<10} {:<30} {} {size}  ({})",
                d.kind.as_str(),
                d.repository.as_deref().unwrap_or("-"),
                d.target,
                d.reason
            );
        }
        let c = &report.deleted;
        println!(
            "pass {}: {verb} {} manifests, {} tags, {} referrer records, {} links, {} repositories, {} blobs ({}); \
             scanned {} repositories, {} manifests, {} blobs ({}); {} kept on rescan; {} ms",
            report.pass,
            c.manifests,
            c.tags,
            c.referrers,
            c.links,
            c.repositories,
            c.blobs,
            human_bytes(c.blob_bytes),
            report.scanned.repositories,
            report.scanned.manifests,
            report.scanned.blobs,
            human_bytes(report.scanned.blob_bytes),
            report.kept_on_rescan,
            report.duration_ms,
        );
        ExitCode::SUCCESS
    })
}

fn scrub(cfg: &Config, options: &berth::registry::gc::scrub::ScrubOptions, json: bool) -> ExitCode {
    with_registry(cfg, |registry| async move {
        let progress = progress_printer();
        let report = match registry.scrub(options, &progress).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("berth: scrub failed: {e}");
                return ExitCode::FAILURE;
            }
        };
        let repaired = report.repaired.as_ref().map(|r| r.deleted.objects()).unwrap_or(0);
        if json {
            if print_json(&report) != ExitCode::SUCCESS {
                return ExitCode::FAILURE;
            }
        } else {
            for (class, list) in [
                ("corrupt", &report.corrupt),
                ("missing", &report.missing),
                ("dangling", &report.dangling),
                ("orphaned", &report.orphaned),
            ] {
                for f in list {
                    println!(
                        "{class:<9} {:<11} {:<30} {}  ({})",
                        f.kind,
                        f.repository.as_deref().unwrap_or("-"),
                        f.target,
                        f.detail
                    );
                }
            }
            println!(
                "scrub: {} blobs hashed ({}), {} corrupt, {} missing, {} dangling ({} repaired), {} orphaned; {} ms",
                report.blobs_hashed,
                human_bytes(report.bytes_hashed),
                report.corrupt.len(),
                report.missing.len(),
                report.dangling.len(),
                repaired,
                report.orphaned.len(),
                report.duration_ms
            );
            if report.not_fetched > 0 {
                println!(
                    "scrub: {} objects of mirrored repositories not fetched yet (not a fault)",
                    report.not_fetched
                );
            }
        }
        let unrepaired = report.dangling.len() as u64 > repaired;
        if !report.corrupt.is_empty() || !report.missing.is_empty() || unrepaired {
            ExitCode::from(4)
        } else {
            ExitCode::SUCCESS
        }
    })
}

fn usage(cfg: &Config, repositories: Option<&str>, fresh: bool, json: bool) -> ExitCode {
    with_registry(cfg, |registry| async move {
        let report = match registry.usage(repositories, fresh).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("berth: cannot read usage: {e}");
                return ExitCode::FAILURE;
            }
        };
        if json {
            return print_json(&report);
        }
        println!(
            "{:<40} {:>12} {:>12} {:>12} {:>14} {:>12} {:>9} {:>6}",
            "REPOSITORY", "BYTES", "UNIQUE", "SHARED", "UNREFERENCED", "SINCE PASS", "MANIFESTS", "TAGS"
        );
        for u in &report.repositories {
            println!(
                "{:<40} {:>12} {:>12} {:>12} {:>14} {:>12} {:>9} {:>6}",
                u.repository,
                human_bytes(u.bytes),
                human_bytes(u.unique_bytes),
                human_bytes(u.shared_bytes),
                human_bytes(u.unreferenced_bytes),
                format!("+{}", human_bytes(u.pushed_since_pass)),
                u.manifests,
                u.tags
            );
        }
        let age = berth::auth::token::now().saturating_sub(report.computed);
        println!("stored: {} in all; computed by {} {}s ago", human_bytes(report.stored_bytes), report.source, age);
        ExitCode::SUCCESS
    })
}
