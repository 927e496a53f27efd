//! The `ebb` binary: the server (`ebb serve`) and a CLI.

use anyhow::Context;
use clap::{Parser, Subcommand};
use ebb_host::config::{Config, ConnectorConfig, RuntimeConfig};
use ebb_host::runtime::{Digest, Runtime};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "ebb",
    version,
    about = "Just-in-time access that proves it is gone"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the host: loads the configured connectors and serves.
    Serve {
        /// The configuration file.
        #[arg(long, short, env = "EBB_CONFIG", default_value = "ebb.toml")]
        config: PathBuf,
    },
    /// Works with connector components locally.
    Connector {
        #[command(subcommand)]
        command: ConnectorCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ConnectorCommand {
    /// Loads a component with nothing lent and prints what `describe` answers.
    Describe {
        component: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Prints a component's sha256, the value to pin in the configuration.
    Digest { component: PathBuf },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("EBB_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config } => serve(config).await,
        Command::Connector { command } => match command {
            ConnectorCommand::Describe { component, json } => {
                let runtime = Runtime::new(&RuntimeConfig::default())?;
                let connector = runtime
                    .load("describe", &ConnectorConfig::new(&component))
                    .await?;
                let info = connector.info();
                if json {
                    println!("{}", serde_json::to_string_pretty(info)?);
                } else {
                    println!("{} {} — {}", info.name, info.version, info.system);
                    println!("{}", info.description);
                    println!("sha256: {}", connector.digest());
                    println!("capabilities: {:?}", info.capabilities);
                    for action in &info.actions {
                        println!(
                            "  {:<10} {} ({})",
                            action.name, action.description, action.resource_syntax
                        );
                    }
                }
                Ok(())
            }
            ConnectorCommand::Digest { component } => {
                let bytes = std::fs::read(&component)
                    .with_context(|| format!("reading {}", component.display()))?;
                println!("{}", Digest::of(&bytes));
                Ok(())
            }
        },
    }
}

async fn serve(config_path: PathBuf) -> anyhow::Result<()> {
    let config = Config::load(&config_path)?;
    let runtime = Runtime::new(&config.runtime)?;
    for (name, connector) in &config.connectors {
        let loaded = runtime
            .load(name, connector)
            .await
            .with_context(|| format!("loading connector `{name}`"))?;
        tracing::info!(
            connector = name,
            sha256 = %loaded.digest(),
            version = %loaded.info().version,
            "connector loaded"
        );
    }
    tracing::info!("ebb is running; press Ctrl-C to stop");
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    Ok(())
}
