//! The command line's shape: the clap types of every command and option, and parsing
//! with one-line usage errors.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::admin::ops::DEFAULT_LIMIT;
use crate::config::{ConfigSource, default_path};

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
    /// Bring the PostgreSQL schema up to this version of liveuser, without serving.
    ///
    /// Servers do the same at start (under an advisory lock, so instances starting at
    /// once migrate once); this runs it on its own, e.g. before a rolling upgrade. A
    /// schema newer than this binary is refused. With storage.backend = "sled" there is
    /// nothing to migrate.
    Migrate,
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
    pub(crate) sids: Vec<String>,
    /// Every session of this user.
    #[arg(long, value_name = "UID")]
    pub(crate) uid: Option<String>,
    /// Every session of every user.
    #[arg(long)]
    pub(crate) all: bool,
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
    /// Add a generated signing key of token.algorithm; tokens the old key signed keep
    /// verifying until they expire.
    ///
    /// The new key is in the JWKS at once and signs from token.key_publish_secs later, so
    /// every verifier that caches the JWKS has it before it sees a token it signed; the
    /// old key retires one access-token lifetime after that. Prints both kids and both
    /// times. With token.secret configured, rotate in the configuration instead: move
    /// the old value to token.previous_secret and set a new token.secret.
    RotateKey {
        /// Sign with the new key at once (a leaked key). Verifiers holding a cached JWKS
        /// refuse the new tokens until they fetch it again.
        #[arg(long)]
        now: bool,
    },
    /// Replace the key that tags refresh tokens; nobody is logged out.
    ///
    /// For a refresh key that may be known outside (an export with --sessions or a copy
    /// of the database in the wrong hands). New sessions and every renewal are tagged
    /// with the new key at once; the old key keeps verifying for token.refresh_ttl_secs,
    /// so older tokens of today's sessions are still recognised as reuse.
    RotateRefreshKey,
}

/// `export …`
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Write to FILE (mode 0600) instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub(crate) out: Option<PathBuf>,
    /// Include live sessions (refresh-token hashes), so clients stay logged in.
    #[arg(long)]
    pub(crate) sessions: bool,
}

/// `import …`
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// A file written by `liveuser export`.
    pub(crate) file: PathBuf,
    /// Write into a database that already holds users, replacing same-key records (but
    /// never a revoked session, nor one renewed or used since the file was written).
    #[arg(long)]
    pub(crate) merge: bool,
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
            // A group without its subcommand (`liveuser user`): one line that names the
            // group, like every other usage error. Its usage line says which it is.
            let rendered = e.render().to_string();
            let command: Vec<&str> = rendered
                .lines()
                .find_map(|l| l.trim().strip_prefix("Usage: "))
                .unwrap_or("liveuser")
                .split_whitespace()
                .take_while(|w| !w.starts_with(['[', '<']))
                .collect();
            let command = command.join(" ");
            eprintln!("liveuser: `{command}` needs a subcommand (try `{command} --help`)");
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
