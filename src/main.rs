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
