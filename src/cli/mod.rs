//! The command line: `liveuser [--config PATH] <command>`.
//!
//! `serve` runs the server. Every other command is an admin operation: with the server
//! stopped it opens the database itself, with the server running it goes through the
//! server's admin API (see the `admin` module); the output is the same either way, and `-v`
//! says which path was taken. Tables for people, `--json` for scripts; on failure one
//! line `liveuser: <reason>` on stderr and exit code 1.
//!
//! `args` is the shape of the command line (clap), this file dispatches a parsed one to
//! its command, and `files` moves the bytes of an export or an import between the admin
//! backend and the operator's files.

mod args;
mod files;

use std::io::Write;
use std::sync::Arc;

use crate::admin::ops::{
    KeyRotate, RefreshKeyRotate, SessionList, SessionRevoke, TokenMint, UserGet, UserList, UserPut,
};
use crate::admin::{AdminError, Backend, print};
use crate::clock::SystemClock;
use crate::config::{Config, LogConfig};

pub use self::args::{
    Cli, Command, ExportArgs, ImportArgs, RevokeArgs, SessionCommand, TokenCommand, UserCommand,
    parse,
};

/// A failed command: one line for stderr.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The configuration was refused.
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    /// The server could not start.
    #[error("{0}")]
    Start(#[from] crate::app::StartError),
    /// An admin operation failed.
    #[error("{0}")]
    Admin(#[from] AdminError),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<(), CliError> {
    let loaded = Config::load(&cli.config_source())?;
    if matches!(cli.command, Command::Serve) {
        crate::logging::init(&loaded.config.log);
    } else {
        // Admin commands print their own answers; only warnings go to the log.
        crate::logging::init(&LogConfig {
            level: "warn".into(),
            ..loaded.config.log.clone()
        });
    }
    for warning in &loaded.warnings {
        tracing::warn!("{warning}");
    }
    let config = loaded.config;
    let out = Output {
        json: cli.json,
        verbose: cli.verbose,
    };
    match cli.command {
        Command::Serve => serve(config),
        Command::User(c) => user(&config, out, c),
        Command::Session(c) => session(&config, out, c),
        Command::Token(TokenCommand::Mint { uid, ttl }) => {
            let backend = connect(&config, out, false)?;
            let minted = backend.run(TokenMint { uid, ttl_secs: ttl })?;
            if out.json {
                emit(&print::json(&minted))?;
            } else {
                emit(&print::minted(&minted))?;
                eprintln!("{}", print::minted_note(&minted));
            }
            Ok(backend.close()?)
        }
        Command::Token(TokenCommand::RotateKey { now }) => {
            let backend = connect(&config, out, false)?;
            let rotated = backend.run(KeyRotate { now })?;
            if out.json {
                emit(&print::json(&rotated))?;
            } else {
                emit(&print::key_rotated(&rotated))?;
            }
            Ok(backend.close()?)
        }
        Command::Token(TokenCommand::RotateRefreshKey) => {
            let backend = connect(&config, out, false)?;
            let rotated = backend.run(RefreshKeyRotate {})?;
            if out.json {
                emit(&print::json(&rotated))?;
            } else {
                emit(&print::refresh_key_rotated(&rotated))?;
            }
            Ok(backend.close()?)
        }
        Command::Export(args) => files::export(&config, out, &args),
        Command::Migrate => migrate(&config, out),
        Command::Import(args) => files::import(&config, out, &args),
    }
}

/// How answers are printed.
#[derive(Debug, Clone, Copy)]
struct Output {
    json: bool,
    verbose: bool,
}

fn connect(config: &Config, out: Output, create: bool) -> Result<Backend, CliError> {
    let backend = Backend::connect(config, create)?;
    if out.verbose {
        eprintln!("liveuser: {}", backend.describe(config));
    }
    Ok(backend)
}

fn migrate(config: &Config, out: Output) -> Result<(), CliError> {
    use crate::config::StorageBackend;
    use crate::store::postgres::{self, ConnectOptions};
    if config.storage.backend == StorageBackend::Sled {
        return emit("nothing to migrate: storage.backend is \"sled\"\n");
    }
    let options = ConnectOptions::parse(config.storage.postgres_url.expose())
        .map_err(|e| CliError::Other(format!("storage.postgres_url {e}")))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Other(format!("cannot start a runtime: {e}")))?;
    let migrated = runtime
        .block_on(postgres::migrate_only(&options))
        .map_err(AdminError::from)?;
    if out.json {
        return emit(&print::json(&serde_json::json!({
            "database": options.describe(),
            "from": migrated.from,
            "to": migrated.to,
            "applied": migrated.applied,
        })));
    }
    let mut text = String::new();
    for applied in &migrated.applied {
        text.push_str(&format!("applied {applied}\n"));
    }
    text.push_str(&format!(
        "{}: schema version {} (was {})\n",
        options.describe(),
        migrated.to,
        migrated.from
    ));
    emit(&text)
}

fn emit(text: &str) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|e| CliError::Other(format!("cannot write the output: {e}")))
}

fn user(config: &Config, out: Output, command: UserCommand) -> Result<(), CliError> {
    let backend = connect(config, out, false)?;
    match command {
        UserCommand::Get { uids } => {
            let got = backend.run(UserGet { uids })?;
            if out.json {
                emit(&print::json(&got))?;
            } else if !got.users.is_empty() {
                emit(&print::users(&got.users))?;
            }
            if !got.missing.is_empty() {
                return Err(
                    AdminError::not_found(format!("no user {}", got.missing.join(", "))).into(),
                );
            }
        }
        UserCommand::List { limit, after } => {
            let page = backend.run(UserList { after, limit })?;
            if out.json {
                emit(&print::json(&page))?;
            } else {
                emit(&print::users(&page.users))?;
                emit(&print::next_page(page.next.as_deref()))?;
            }
        }
        UserCommand::Put {
            uid,
            name,
            avatar,
            agent,
        } => {
            let user = backend.run(UserPut {
                uid,
                name,
                agent,
                avatar,
            })?;
            if out.json {
                emit(&print::json(&user))?;
            } else {
                emit(&print::users(std::slice::from_ref(&user)))?;
            }
        }
    }
    Ok(backend.close()?)
}

fn session(config: &Config, out: Output, command: SessionCommand) -> Result<(), CliError> {
    let backend = connect(config, out, false)?;
    match command {
        SessionCommand::List { uid, limit, after } => {
            let page = backend.run(SessionList { uid, after, limit })?;
            if out.json {
                emit(&print::json(&page))?;
            } else {
                emit(&print::sessions(&page.sessions))?;
                emit(&print::next_page(page.next.as_deref()))?;
            }
        }
        SessionCommand::Revoke(RevokeArgs { sids, uid, all }) => {
            let done = backend.run(SessionRevoke { sids, uid, all })?;
            if out.json {
                emit(&print::json(&done))?;
            } else {
                emit(&print::revoked(&done))?;
            }
        }
    }
    Ok(backend.close()?)
}

/// The one line `serve` writes on stdout, when the listeners are bound and served:
/// `listening public=<scheme>://<addr> admin=http://<addr>`, with the addresses bound
/// (so with port 0, the ports picked), and no `admin=` on PostgreSQL, which serves no
/// admin API. The log says the same at `info`, but the log's level and format are the
/// operator's; this line is for a supervisor or a test to read.
fn ready_line(running: &crate::app::Running, tls: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    let mut line = format!("listening public={scheme}://{}", running.addr);
    if let Some(admin) = running.admin_addr {
        line.push_str(&format!(" admin=http://{admin}"));
    }
    line
}

/// `serve`: runs the server (public API and admin API) until SIGTERM or SIGINT, then
/// finishes in-flight requests, flushes storage and returns. Once it serves, it says so
/// on stdout ([`ready_line`]).
///
/// The signals are caught from the first moment, so they must also end a start that is
/// still waiting — for the database, for the migration lock — or the process would
/// ignore them until the start gave up. A start stopped that way exits cleanly, having
/// served nothing.
fn serve(config: Config) -> Result<(), CliError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Other(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(async {
        let mut signal = Box::pin(crate::app::termination_signal());
        let running = tokio::select! {
            started = crate::app::start(&config, Arc::new(SystemClock)) => started?,
            () = &mut signal => {
                tracing::info!("stopped before the server was ready");
                return Ok(());
            }
        };
        let tls = !config.server.tls_cert.as_os_str().is_empty();
        // A reader that went away (a supervisor that does not keep stdout) is no reason
        // to stop serving.
        let _ = writeln!(std::io::stdout(), "{}", ready_line(&running, tls))
            .and_then(|()| std::io::stdout().flush());
        let stop = running.stopper();
        tokio::spawn(async move {
            signal.await;
            let _ = stop.send(true);
        });
        running.wait().await;
        Ok(())
    })
}
