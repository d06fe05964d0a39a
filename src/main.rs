//! The `berth` command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use berth::config::{self, Config};
use clap::{Parser, Subcommand};

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
    let cli = Cli::parse();
    match cli.command {
        Command::Config { command: ConfigCommand::Check { file } } => {
            match load(Some(&file)).and_then(|c| c.validate().map(|()| c)) {
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
            if let Err(e) = cfg.validate() {
                eprintln!("berth: refusing to start: {e}");
                return ExitCode::from(2);
            }
            berth::telemetry::init(&cfg.log);
            let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("berth: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(serve(cfg)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("berth: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

async fn serve(cfg: Config) -> anyhow::Result<()> {
    let server = berth::server::Server::bind(&cfg).await?;
    // Tests and scripts read the bound address (useful with port 0) from here.
    println!("listening on {}", server.local_addr()?);
    server.run(berth::server::shutdown_signal()).await
}
