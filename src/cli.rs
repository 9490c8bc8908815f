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
    /// Access-token signing keys.
    Token {
        /// What to do.
        #[command(subcommand)]
        command: TokenCommand,
    },
}

/// `liveuser token …`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Replace the generated signing key (server stopped); tokens signed by the old key
    /// keep verifying until they expire.
    RotateKey,
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
        Command::Token {
            command: TokenCommand::RotateKey,
        } => rotate_key(&loaded.config),
    }
}

/// `token rotate-key` on the database directly; refused while the server holds it.
fn rotate_key(config: &Config) -> Result<(), CliError> {
    let store = crate::app::open_store(config).map_err(|e| match e {
        crate::app::StartError::Store {
            source: crate::store::StoreError::Locked,
            ..
        } => CliError::Other(
            "the database is in use: the server is running; rotate the key through its admin API"
                .into(),
        ),
        other => CliError::Start(other),
    })?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Other(format!("cannot start the async runtime: {e}")))?;
    let now = crate::clock::Clock::now(&SystemClock);
    let rotation = runtime
        .block_on(crate::keys::rotate_signing_key(&store, &config.token, now))
        .map_err(|e| CliError::Other(e.to_string()))?;
    println!(
        "signing key rotated: new kid {}; kid {} verifies tokens it signed until {} (Unix time)",
        rotation.kid,
        rotation.previous_kid.as_deref().unwrap_or("(none)"),
        rotation.retire_at
    );
    Ok(())
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
