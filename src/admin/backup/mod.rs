//! Export and import: the database as JSON lines, for backups and moves. This module is
//! the file format (the line types, the header and end lines, the versions, the counts);
//! [`export`](mod@export) writes it and [`import`](mod@import) reads it.
//!
//! An export is, line by line:
//!
//! ```text
//! {"kind":"header","format":"liveuser-export","version":2,"exported_at":…,"sessions":true,"refresh_key":"…","retired_refresh_keys":[…]}
//! {"kind":"user","uid":"…","name":"…","agent":"…","avatar":"…","update_at":…}      (every user)
//! {"kind":"identity","openid":"…","uid":"…","unionid":null}                         (every identity)
//! {"kind":"session","sid":"…","uid":"…",…,"generation":N,"current":"<hash>","previous":…}  (with --sessions)
//! {"kind":"end","users":N,"identities":N,"sessions":N}
//! ```
//!
//! - Identities (openid → uid) are exported because without them a restored user would
//!   get a new uid at the next login. WeChat's session_key is not: it is renewed at the
//!   user's next login, and a backup file should hold as few secrets as possible.
//! - Sessions (only those live at export time) come with the SHA-256 hash of their
//!   current refresh token and of the one their last rotation retired (with its time in
//!   milliseconds) — the stored form, never a token itself — so restored clients can
//!   renew. A hash is what the database needs to accept a token, so an export with
//!   sessions is as sensitive as the database: it is written with mode 0600.
//! - With sessions, the header carries the key that tags refresh tokens (hex), and the
//!   keys a refresh-key rotation replaced that still verify, with their retire times
//!   (`retired_refresh_keys`, left out when there are none). An import into an empty
//!   database adopts them when the file holds sessions (the sessions they tagged), so
//!   that a token of an imported session two or more rotations old is still recognised
//!   as its family's (and revokes it), while a corrupted one is not. The keys only
//!   authenticate tokens: making one for a session also takes the session's seed, which
//!   is stored nowhere. A file without sessions carries no key, and one whose header
//!   says `"sessions": false` but has a key or a session line is refused. An import with
//!   `--merge` into a database that has sessions of its own keeps that database's keys;
//!   the imported sessions' tokens then renew as before, but their older tokens are
//!   refused without revoking.
//! - The signing keys are not exported: access tokens issued before a restore into a
//!   fresh database are refused, and clients renew with their (restored) refresh token.
//! - The end line carries the counts, so a truncated file is recognised.
//!
//! Format 1 files (written before refresh tokens carried their session) still import;
//! [`import`](mod@import) says how their sessions are converted.

mod export;
mod import;

pub(crate) use self::export::Exporter;
pub(crate) use self::import::{Phase, Progress, import};

use serde::{Deserialize, Serialize};

/// The `format` of the header line.
const FORMAT: &str = "liveuser-export";
/// The format version this build writes. It reads this one and format 1.
const VERSION: u32 = 2;
/// The oldest format version this build reads.
const OLDEST_VERSION: u32 = 1;
/// Records read per page while exporting, and written per transaction while importing.
const PAGE: usize = 1000;

/// One line of an export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum Line {
    /// First line.
    Header {
        /// Always [`FORMAT`].
        format: String,
        /// [`VERSION`].
        version: u32,
        /// When the export was taken, Unix seconds.
        exported_at: u64,
        /// Whether sessions are included.
        sessions: bool,
        /// With sessions: the key that tags the database's refresh tokens, in hex (see
        /// the module documentation).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        refresh_key: Option<String>,
        /// With sessions: the replaced refresh keys that still verify.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retired_refresh_keys: Option<Vec<RetiredKeyLine>>,
    },
    User {
        uid: String,
        name: String,
        /// Client description.
        agent: String,
        /// Avatar URL.
        avatar: String,
        /// Last write, Unix seconds.
        update_at: u64,
    },
    /// A WeChat identity.
    Identity {
        openid: String,
        /// The uid it maps to.
        uid: String,
        /// The unionid, if WeChat gave one.
        unionid: Option<String>,
    },
    /// A live session.
    Session(SessionLine),
    /// Last line: what the file holds.
    End {
        /// User lines.
        users: u64,
        /// Identity lines.
        identities: u64,
        /// Session lines.
        sessions: u64,
    },
}

/// A session line: a live session, with its refresh tokens as hashes only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SessionLine {
    /// Session id, 32 hex digits.
    pub sid: String,
    pub uid: String,
    /// Login time, Unix seconds.
    pub created_at: u64,
    /// Last use, Unix seconds.
    pub last_used_at: u64,
    /// Absolute expiry, Unix seconds.
    pub expires_at: u64,
    /// Idle expiry, Unix seconds.
    pub idle_expires_at: u64,
    /// Rotations so far (format 2; absent in format 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u32>,
    /// Hash of the current refresh token, 64 hex digits.
    pub current: String,
    /// The last rotation: the token it retired and when (null before the first).
    pub previous: Option<PreviousLine>,
    /// Format 1 only: every refresh-token record of the family.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<Vec<TokenLine>>,
}

/// A replaced refresh key of the header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RetiredKeyLine {
    /// The key, 64 hex digits.
    pub key: String,
    /// When it stops verifying, Unix seconds.
    pub retire_at: u64,
}

/// One refresh-token record of a format-1 session line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TokenLine {
    /// SHA-256 of the token, 64 hex digits.
    pub hash: String,
    /// When it was issued.
    pub issued_at: u64,
}

/// The last rotation of a session line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PreviousLine {
    /// SHA-256 of the token the rotation retired, 64 hex digits.
    pub hash: String,
    /// When it was rotated, Unix milliseconds (format 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotated_at_ms: Option<u64>,
    /// When it was rotated, Unix seconds (format 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotated_at: Option<u64>,
}

/// What an import wrote (or an export holds).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Counts {
    pub users: u64,
    pub identities: u64,
    pub sessions: u64,
}
