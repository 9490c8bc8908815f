//! The command line: `liveuser [--config PATH] <command>`.

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::clock::SystemClock;
use crate::config::{Config, ConfigSource, default_path};

/// liveuser — user and login-state service for WeChat mini-programs.
#[derive(Debug, Parser)]
#[command(name = "liveuser", version, about, long_about = None)]
pub struct Cli {
    /// Configuration file [default: ./liveuser.toml; built-in defaults if it is absent]
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (public API on server.listen).
    Serve,
}

/// A failed command: one line for stderr.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The configuration was refused.
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    /// The server could not start.
    #[error("{0}")]
    Start(#[from] crate::app::StartError),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

impl Cli {
    /// Where the configuration comes from.
    pub fn config_source(&self) -> ConfigSource {
        match &self.config {
            Some(path) => ConfigSource {
                path: path.clone(),
                explicit: true,
            },
            None => ConfigSource {
                path: default_path().to_path_buf(),
                explicit: false,
            },
        }
    }
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<(), CliError> {
    let loaded = Config::load(&cli.config_source())?;
    crate::logging::init(&loaded.config.log);
    for warning in &loaded.warnings {
        tracing::warn!("{warning}");
    }
    match cli.command {
        Command::Serve => serve(loaded.config),
    }
}

fn serve(config: Config) -> Result<(), CliError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Other(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(async {
        let running = crate::app::start(&config, Arc::new(SystemClock)).await?;
        let stop = running.stopper();
        tokio::spawn(async move {
            crate::app::termination_signal().await;
            let _ = stop.send(true);
        });
        running.wait().await;
        Ok(())
    })
}
