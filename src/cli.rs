//! The command line: `liveuser [--config PATH] <command>`.
//!
//! `serve` runs the server. Every other command is an admin operation: with the server
//! stopped it opens the database itself, with the server running it goes through the
//! server's admin API (see [`crate::admin`]); the output is the same either way, and `-v`
//! says which path was taken. Tables for people, `--json` for scripts; on failure one
//! line `liveuser: <reason>` on stderr and exit code 1.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::admin::backup::Phase;
use crate::admin::ops::{
    DEFAULT_LIMIT, ExportRequest, KeyRotate, SessionList, SessionRevoke, TokenMint, UserGet,
    UserList, UserPut,
};
use crate::admin::{AdminError, Backend, ImportProgress, print};
use crate::clock::SystemClock;
use crate::config::{Config, ConfigSource, LogConfig, default_path};

/// liveuser — user and login-state service for WeChat mini-programs.
///
/// Admin commands work with the server stopped (they open the database) or running
/// (they use its admin API on server.admin_listen); the output is the same.
#[derive(Debug, Parser)]
#[command(name = "liveuser", version, about, long_about)]
pub struct Cli {
    /// Configuration file [default: ./liveuser.toml; built-in defaults if it is absent]
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Say which way an admin command reached the database.
    #[arg(short, long, global = true)]
    pub verbose: bool,

    /// Print admin answers as JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (public API on server.listen, admin API on server.admin_listen).
    Serve,
    /// Read and write user records.
    #[command(subcommand)]
    User(UserCommand),
    /// List and revoke sessions (logins).
    #[command(subcommand)]
    Session(SessionCommand),
    /// Issue access tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Write the database as JSON lines (a backup).
    ///
    /// Users and their WeChat identities, and with --sessions the live sessions with
    /// the hashes of their refresh tokens. The file is written with mode 0600: with
    /// sessions it can restore logins, so keep it like the database itself.
    Export(ExportArgs),
    /// Restore a file written by `export`.
    ///
    /// Every line is checked before anything is written; the first bad line is
    /// reported by number. Restores into an empty database unless --merge.
    Import(ImportArgs),
}

/// `user …`
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Show users by uid (exit 1 if one is missing, after showing the others).
    Get {
        /// User ids.
        #[arg(required = true, value_name = "UID")]
        uids: Vec<String>,
    },
    /// List users in uid order, a page at a time.
    List {
        /// Users per page (1–10000).
        #[arg(long, default_value_t = DEFAULT_LIMIT)]
        limit: usize,
        /// Start after this uid (the last one of the previous page).
        #[arg(long, value_name = "UID")]
        after: Option<String>,
    },
    /// Create or update a user; options left out keep their value.
    Put {
        /// User id.
        uid: String,
        /// Display name (at most 64 characters).
        #[arg(long)]
        name: Option<String>,
        /// Avatar URL (http:// or https://, or "" to clear).
        #[arg(long)]
        avatar: Option<String>,
        /// Client description (at most 64 characters).
        #[arg(long)]
        agent: Option<String>,
    },
}

/// `session …`
#[derive(Debug, Subcommand)]
pub enum SessionCommand {
    /// List sessions in sid order: sid, uid, created, last used, expiry, state.
    List {
        /// Only this user's sessions.
        #[arg(long, value_name = "UID")]
        uid: Option<String>,
        /// Sessions per page (1–10000).
        #[arg(long, default_value_t = DEFAULT_LIMIT)]
        limit: usize,
        /// Start after this sid (the last one of the previous page).
        #[arg(long, value_name = "SID")]
        after: Option<String>,
    },
    /// End sessions at once, their access tokens included.
    Revoke(RevokeArgs),
}

/// What `session revoke` ends.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct RevokeArgs {
    /// Session ids (all must exist, or none is revoked).
    #[arg(value_name = "SID")]
    sids: Vec<String>,
    /// Every session of this user.
    #[arg(long, value_name = "UID")]
    uid: Option<String>,
    /// Every session of every user.
    #[arg(long)]
    all: bool,
}

/// `token …`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Open a new session for an existing user and print an access token for it.
    ///
    /// The session lasts exactly as long as the token (--ttl, default and at most
    /// token.access_ttl_secs); there is no refresh token. The token alone goes to
    /// stdout, its session id and expiry to stderr. `session revoke SID` ends it early.
    /// Run it with the server's environment: with the server stopped, a command that
    /// would sign with another key than the server's is refused.
    Mint {
        /// User id.
        uid: String,
        /// Lifetime in seconds (60 to token.access_ttl_secs).
        #[arg(long, value_name = "SECS")]
        ttl: Option<u64>,
    },
    /// Replace the generated signing key; tokens it signed keep verifying until they
    /// expire.
    ///
    /// New access tokens carry the new key's kid at once (with the server running, it
    /// switches immediately). With token.secret configured, rotate in the configuration
    /// instead: move the old value to token.previous_secret and set a new token.secret.
    RotateKey,
}

/// `export …`
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Write to FILE (mode 0600) instead of stdout.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Include live sessions (refresh-token hashes), so clients stay logged in.
    #[arg(long)]
    sessions: bool,
}

/// `import …`
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// A file written by `liveuser export`.
    file: PathBuf,
    /// Write into a database that already holds users, replacing same-key records.
    #[arg(long)]
    merge: bool,
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
    /// An admin operation failed.
    #[error("{0}")]
    Admin(#[from] AdminError),
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

/// Parses the command line. `--help` and `--version` print and end with success; a
/// usage error prints one line (`liveuser: <reason> (try --help)`) and ends with 1.
pub fn parse<I, T>(args: I) -> Result<Cli, std::process::ExitCode>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    use clap::error::ErrorKind as Kind;
    match Cli::try_parse_from(args) {
        Ok(cli) => Ok(cli),
        Err(e) if matches!(e.kind(), Kind::DisplayHelp | Kind::DisplayVersion) => {
            let _ = e.print();
            Err(std::process::ExitCode::SUCCESS)
        }
        Err(e) if e.kind() == Kind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            Err(std::process::ExitCode::FAILURE)
        }
        Err(e) => {
            // clap's first paragraph is the reason (some reasons continue on the next
            // lines); the usage that follows is what --help is for.
            let rendered = e.render().to_string();
            let reason: Vec<&str> = rendered
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            let reason = reason.join(" ");
            let reason = reason.strip_prefix("error: ").unwrap_or(&reason);
            eprintln!("liveuser: {reason} (try --help)");
            Err(std::process::ExitCode::FAILURE)
        }
    }
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
        Command::Token(TokenCommand::RotateKey) => {
            let backend = connect(&config, out, false)?;
            let rotated = backend.run(KeyRotate {})?;
            if out.json {
                emit(&print::json(&rotated))?;
            } else {
                emit(&print::key_rotated(&rotated))?;
            }
            Ok(backend.close()?)
        }
        Command::Export(args) => export(&config, out, &args),
        Command::Import(args) => import(&config, out, &args),
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
        eprintln!("liveuser: {}", backend.describe(&config.storage.path));
    }
    Ok(backend)
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

/// A progress display on stderr when it is a terminal; hidden otherwise.
fn progress(template: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar
}

/// Where an export goes: stdout, or a 0600 file written under a temporary name and
/// renamed when complete, so a failed export never leaves a file that looks whole.
enum Sink {
    Stdout(std::io::StdoutLock<'static>),
    File {
        file: std::io::BufWriter<std::fs::File>,
        partial: PathBuf,
        path: PathBuf,
    },
}

impl Sink {
    fn open(out: Option<&Path>) -> Result<Sink, CliError> {
        let Some(path) = out else {
            return Ok(Sink::Stdout(std::io::stdout().lock()));
        };
        let mut name = path.as_os_str().to_owned();
        name.push(".partial");
        let partial = PathBuf::from(name);
        let file = create_private(&partial).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                CliError::Other(format!(
                    "{} already exists (left by an earlier export, or put there by someone \
                     else); check it and remove it, then export again",
                    partial.display()
                ))
            } else {
                CliError::Other(format!("cannot create {}: {e}", partial.display()))
            }
        })?;
        Ok(Sink::File {
            file: std::io::BufWriter::new(file),
            partial,
            path: path.to_path_buf(),
        })
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), CliError> {
        let result = match self {
            Sink::Stdout(out) => out.write_all(bytes),
            Sink::File { file, .. } => file.write_all(bytes),
        };
        result.map_err(|e| CliError::Other(format!("cannot write the export: {e}")))
    }

    fn finish(self, ok: bool) -> Result<(), CliError> {
        match self {
            Sink::Stdout(mut out) => out
                .flush()
                .map_err(|e| CliError::Other(format!("cannot write the export: {e}"))),
            Sink::File {
                file,
                partial,
                path,
            } => {
                if !ok {
                    let _ = std::fs::remove_file(&partial);
                    return Ok(());
                }
                let file = file
                    .into_inner()
                    .map_err(|e| CliError::Other(format!("cannot write the export: {e}")))?;
                file.sync_all()
                    .map_err(|e| CliError::Other(format!("cannot write the export: {e}")))?;
                std::fs::rename(&partial, &path).map_err(|e| {
                    CliError::Other(format!(
                        "cannot rename the export to {}: {e}",
                        path.display()
                    ))
                })
            }
        }
    }
}

/// Creates `path` for writing, mode 0600 from its first byte, failing with
/// `AlreadyExists` if anything is there. An export may be taken in a directory other
/// users can write (a shared backup directory): a file someone else created there would
/// stay theirs and readable by them, and a link would make liveuser write wherever it
/// points, so nothing found at the name is reused, opened through a link, or removed.
fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    // O_CREAT | O_EXCL: fails on any existing entry, a dangling link included.
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600).custom_flags(libc::O_NOFOLLOW);
    }
    options.open(path)
}

/// `export`: the backend's export, copied to stdout or to `--out`; the counts of its
/// end line go to stderr.
fn export(config: &Config, out: Output, args: &ExportArgs) -> Result<(), CliError> {
    let backend = connect(config, out, false)?;
    let mut sink = Sink::open(args.out.as_deref())?;
    let bar = progress("{spinner} exporting: {pos} lines [{elapsed}]");
    let mut stream = None;
    let result = (|| -> Result<(), CliError> {
        let stream = stream.insert(backend.export(ExportRequest {
            sessions: args.sessions,
        })?);
        while let Some(chunk) = stream.next_chunk()? {
            sink.write(&chunk)?;
            bar.set_position(stream.lines());
        }
        Ok(())
    })();
    bar.finish_and_clear();
    let counts = match (&result, stream.as_ref().and_then(|s| s.end())) {
        (Ok(()), Some(counts)) => counts,
        (Ok(()), None) => {
            sink.finish(false)?;
            return Err(CliError::Other(
                "the export was cut short (see the server's log); no file was written".into(),
            ));
        }
        (Err(_), _) => {
            sink.finish(false)?;
            return result;
        }
    };
    drop(stream);
    sink.finish(true)?;
    backend.close()?;
    if out.json {
        eprint!("{}", print::json(&counts));
    } else {
        eprint!("{}", print::counts("exported", &counts));
    }
    Ok(())
}

/// `import FILE`: the file is checked to be readable before the database is opened (an
/// import creates a missing database), then handed to the backend.
fn import(config: &Config, out: Output, args: &ImportArgs) -> Result<(), CliError> {
    std::fs::File::open(&args.file)
        .map_err(|e| CliError::Other(format!("cannot read {}: {e}", args.file.display())))?;
    let backend = connect(config, out, true)?;
    let bar = progress("{spinner} {msg}: {pos} lines [{elapsed}]");
    let sending =
        ProgressStyle::with_template("{spinner} sending: {bytes}/{total_bytes} [{elapsed}]");
    let report = |step: ImportProgress| match step {
        ImportProgress::Sent { bytes, total } => {
            if bar.length() != Some(total) {
                if let Ok(style) = &sending {
                    bar.set_style(style.clone());
                }
                bar.set_length(total);
            }
            bar.set_position(bytes);
        }
        ImportProgress::Lines(phase, lines) => {
            bar.set_message(match phase {
                Phase::Validating => "validating",
                Phase::Writing => "writing",
            });
            bar.set_position(lines);
        }
    };
    let result = backend.import(&args.file, args.merge, &report);
    bar.finish_and_clear();
    let counts = result?;
    backend.close()?;
    if out.json {
        emit(&print::json(&counts))
    } else {
        emit(&print::counts("imported", &counts))
    }
}

/// `serve`: runs the server (public API and admin API) until SIGTERM or SIGINT, then
/// finishes in-flight requests, flushes storage and returns.
fn serve(config: Config) -> Result<(), CliError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Other(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(async {
        let signal = crate::app::termination_signal();
        let running = crate::app::start(&config, Arc::new(SystemClock)).await?;
        let stop = running.stopper();
        tokio::spawn(async move {
            signal.await;
            let _ = stop.send(true);
        });
        running.wait().await;
        Ok(())
    })
}
