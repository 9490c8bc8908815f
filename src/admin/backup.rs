//! Export and import: the database as JSON lines, for backups and moves.
//!
//! An export is, line by line:
//!
//! ```text
//! {"kind":"header","format":"liveuser-export","version":1,"exported_at":…,"sessions":true}
//! {"kind":"user","uid":"…","name":"…","agent":"…","avatar":"…","update_at":…}      (every user)
//! {"kind":"identity","openid":"…","uid":"…","unionid":null}                         (every identity)
//! {"kind":"session","sid":"…","uid":"…",…,"current":"<hash>","tokens":[…]}          (with --sessions)
//! {"kind":"end","users":N,"identities":N,"sessions":N}
//! ```
//!
//! - Identities (openid → uid) are exported because without them a restored user would
//!   get a new uid at the next login. WeChat's session_key is not: it is renewed at the
//!   user's next login, and a backup file should hold as few secrets as possible.
//! - Sessions (only those live at export time) come with the SHA-256 hashes of their
//!   refresh tokens — the stored form, never a token itself — so restored clients can
//!   renew. A hash is what the database needs to accept a token, so an export with
//!   sessions is as sensitive as the database: it is written with mode 0600.
//! - The signing keys are not exported: access tokens issued before a restore into a
//!   fresh database are refused, and clients renew with their (restored) refresh token.
//! - Consistency while the server runs: users are read first, then only identities and
//!   sessions of exported users are written, and each session is read together with its
//!   tokens ([`Store::family`]), so a file never refers to a record it lacks.
//! - The end line carries the counts, so a truncated file is recognised.
//!
//! Import reads the file twice: first it validates every line (format, limits, order,
//! duplicates, references, the counts) and stops at the first bad one with its line
//! number, having written nothing; then it writes in batches. Records replace records
//! with the same key. Into a database that already holds users it imports only when
//! asked to merge, since a restore is meant for an empty one.

use std::collections::HashSet;
use std::io::BufRead;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::ops::AdminError;
use crate::http::ErrorCode;
use crate::model::{
    Identity, RefreshRecord, Rotation, Session, SessionState, Sid, TokenHash, Uid, UserPatch,
    UserRecord, check_text,
};
use crate::primitives::{hex, unhex};
use crate::secret::Secret;
use crate::store::{Restore, Store, StoreError};

/// The `format` of the header line.
pub(crate) const FORMAT: &str = "liveuser-export";
/// The format version this build writes and reads.
pub(crate) const VERSION: u32 = 1;
/// Records read per page while exporting, and written per transaction while importing.
const PAGE: usize = 1000;
/// Longest openid accepted (WeChat's are 28 characters).
const OPENID_MAX: usize = 128;

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
    },
    /// A user record.
    User {
        /// User id.
        uid: String,
        /// Display name.
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
        /// The openid.
        openid: String,
        /// The uid it maps to.
        uid: String,
        /// The unionid, if WeChat gave one.
        unionid: Option<String>,
    },
    /// A live session and its refresh-token records (hashes only).
    Session {
        /// Session id, 32 hex digits.
        sid: String,
        /// Owner.
        uid: String,
        /// Login time.
        created_at: u64,
        /// Last use.
        last_used_at: u64,
        /// Absolute expiry.
        expires_at: u64,
        /// Idle expiry.
        idle_expires_at: u64,
        /// Hash of the current refresh token, 64 hex digits.
        current: String,
        /// The last rotation: the token it retired and when (absent before the first).
        previous: Option<PreviousLine>,
        /// Every refresh-token record of the family.
        tokens: Vec<TokenLine>,
    },
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

/// One refresh-token record of a session line.
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
    /// When it was rotated.
    pub rotated_at: u64,
}

/// What an import wrote (or an export holds).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Counts {
    /// Users.
    pub users: u64,
    /// Identities.
    pub identities: u64,
    /// Sessions.
    pub sessions: u64,
}

// ----- export -----

enum Stage {
    Header,
    Users(Option<Uid>),
    Identities(Option<String>),
    Sessions(Option<Sid>),
    End,
    Done,
}

/// Produces an export a chunk of lines at a time, so it can go to a file or stream over
/// HTTP without holding the database in memory.
pub(crate) struct Exporter<S> {
    store: Arc<S>,
    now: u64,
    sessions: bool,
    stage: Stage,
    counts: Counts,
    uids: HashSet<Uid>,
}

impl<S: Store> Exporter<S> {
    /// An export of `store` as of `now`, with live sessions when `sessions`.
    pub(crate) fn new(store: Arc<S>, now: u64, sessions: bool) -> Self {
        Exporter {
            store,
            now,
            sessions,
            stage: Stage::Header,
            counts: Counts::default(),
            uids: HashSet::new(),
        }
    }

    /// The next lines (each ending in `\n`), or `None` after the end line.
    pub(crate) async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, StoreError> {
        let mut out = Vec::with_capacity(64 * 1024);
        match std::mem::replace(&mut self.stage, Stage::Done) {
            Stage::Header => {
                push(
                    &mut out,
                    &Line::Header {
                        format: FORMAT.into(),
                        version: VERSION,
                        exported_at: self.now,
                        sessions: self.sessions,
                    },
                );
                self.stage = Stage::Users(None);
            }
            Stage::Users(after) => {
                let page = self.store.list_users(after.as_ref(), PAGE).await?;
                self.stage = match page.last() {
                    Some(last) => Stage::Users(Some(last.uid.clone())),
                    None => Stage::Identities(None),
                };
                for user in page {
                    push(
                        &mut out,
                        &Line::User {
                            uid: user.uid.to_string(),
                            name: user.name,
                            agent: user.agent,
                            avatar: user.avatar,
                            update_at: user.update_at,
                        },
                    );
                    self.uids.insert(user.uid);
                    self.counts.users += 1;
                }
            }
            Stage::Identities(after) => {
                let page = self.store.list_identities(after.as_deref(), PAGE).await?;
                self.stage = match page.last() {
                    Some((last, _)) => Stage::Identities(Some(last.clone())),
                    None if self.sessions => Stage::Sessions(None),
                    None => Stage::End,
                };
                for (openid, identity) in page {
                    // Created after the users were read: belongs to a later export.
                    if !self.uids.contains(&identity.uid) {
                        continue;
                    }
                    push(
                        &mut out,
                        &Line::Identity {
                            openid,
                            uid: identity.uid.to_string(),
                            unionid: identity.unionid,
                        },
                    );
                    self.counts.identities += 1;
                }
            }
            Stage::Sessions(after) => {
                let page = self.store.list_sessions(after, PAGE).await?;
                self.stage = match page.last() {
                    Some(last) => Stage::Sessions(Some(last.sid)),
                    None => Stage::End,
                };
                for listed in page {
                    if !listed.is_live(self.now) || !self.uids.contains(&listed.uid) {
                        continue;
                    }
                    let Some((session, records)) = self.store.family(listed.sid).await? else {
                        continue;
                    };
                    if !session.is_live(self.now) {
                        continue;
                    }
                    push(&mut out, &session_line(&session, &records));
                    self.counts.sessions += 1;
                }
            }
            Stage::End => {
                push(
                    &mut out,
                    &Line::End {
                        users: self.counts.users,
                        identities: self.counts.identities,
                        sessions: self.counts.sessions,
                    },
                );
                self.stage = Stage::Done;
            }
            Stage::Done => return Ok(None),
        }
        Ok(Some(out))
    }
}

fn push(out: &mut Vec<u8>, line: &Line) {
    serde_json::to_writer(&mut *out, line).expect("export lines always serialize");
    out.push(b'\n');
}

fn session_line(session: &Session, records: &[(TokenHash, RefreshRecord)]) -> Line {
    Line::Session {
        sid: session.sid.to_string(),
        uid: session.uid.to_string(),
        created_at: session.created_at,
        last_used_at: session.last_used_at,
        expires_at: session.expires_at,
        idle_expires_at: session.idle_expires_at,
        current: hex(&session.current.0),
        previous: session.previous.map(|p| PreviousLine {
            hash: hex(&p.token.0),
            rotated_at: p.at,
        }),
        tokens: records
            .iter()
            .map(|(hash, record)| TokenLine {
                hash: hex(&hash.0),
                issued_at: record.issued_at,
            })
            .collect(),
    }
}

// ----- import -----

/// Which pass an import is in, for progress display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Reading every line and checking it; nothing is written.
    Validating,
    /// Writing the records.
    Writing,
}

/// Told the phase and the number of lines done so far.
pub(crate) type Progress<'a> = &'a (dyn Fn(Phase, u64) + Sync);

/// A record read from a valid line.
enum Record {
    User(UserRecord),
    Identity(String, Identity),
    Session(Session, Vec<(TokenHash, RefreshRecord)>),
}

/// Where in the file the reader is: sections must come in the export's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Section {
    Start,
    Users,
    Identities,
    Sessions,
    Ended,
}

/// The checks of the first pass.
struct Checker {
    section: Section,
    users: HashSet<Uid>,
    openids: HashSet<String>,
    sids: HashSet<Sid>,
    counts: Counts,
}

fn bad(line: u64, reason: impl std::fmt::Display) -> AdminError {
    AdminError::invalid(format!("line {line}: {reason}"))
}

fn parse_hash(s: &str, what: &str) -> Result<TokenHash, String> {
    unhex(s)
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .map(TokenHash)
        .ok_or_else(|| format!("{what} must be 64 hexadecimal digits"))
}

impl Checker {
    fn new() -> Self {
        Checker {
            section: Section::Start,
            users: HashSet::new(),
            openids: HashSet::new(),
            sids: HashSet::new(),
            counts: Counts::default(),
        }
    }

    /// Checks one line; returns its record (none for the header and end lines).
    fn check(&mut self, n: u64, text: &str) -> Result<Option<Record>, AdminError> {
        let line: Line = serde_json::from_str(text)
            .map_err(|e| bad(n, format!("not a valid export line: {e}")))?;
        let section = match &line {
            Line::Header { .. } => Section::Start,
            Line::User { .. } => Section::Users,
            Line::Identity { .. } => Section::Identities,
            Line::Session { .. } => Section::Sessions,
            Line::End { .. } => Section::Ended,
        };
        if self.section == Section::Start && !matches!(line, Line::Header { .. }) {
            return Err(bad(
                n,
                format!("the first line must be the {FORMAT} header"),
            ));
        }
        if self.section == Section::Ended {
            return Err(bad(n, "nothing may follow the end line"));
        }
        if section < self.section || (section == Section::Start && n > 1) {
            return Err(bad(
                n,
                "out of order: a file lists the header, users, identities, sessions, then the end line",
            ));
        }
        self.section = section.max(Section::Users);
        match line {
            Line::Header {
                format, version, ..
            } => {
                if format != FORMAT {
                    return Err(bad(n, format!("format must be {FORMAT:?}")));
                }
                if version != VERSION {
                    return Err(bad(
                        n,
                        format!(
                            "format version {version} is not supported (this build reads {VERSION})"
                        ),
                    ));
                }
                Ok(None)
            }
            Line::User {
                uid,
                name,
                agent,
                avatar,
                update_at,
            } => {
                let uid = Uid::parse(&uid).map_err(|e| bad(n, format!("uid {e}")))?;
                let patch = UserPatch {
                    name: Some(name),
                    agent: Some(agent),
                    avatar: Some(avatar),
                };
                patch
                    .validate()
                    .map_err(|(field, e)| bad(n, format!("{field} {e}")))?;
                if !self.users.insert(uid.clone()) {
                    return Err(bad(n, format!("user {uid} appears twice")));
                }
                self.counts.users += 1;
                let mut user = UserRecord::new(uid, update_at);
                user.apply(&patch, update_at);
                Ok(Some(Record::User(user)))
            }
            Line::Identity {
                openid,
                uid,
                unionid,
            } => {
                if openid.is_empty() {
                    return Err(bad(n, "openid must not be empty"));
                }
                check_text(&openid, OPENID_MAX).map_err(|e| bad(n, format!("openid {e}")))?;
                if let Some(u) = &unionid {
                    check_text(u, OPENID_MAX).map_err(|e| bad(n, format!("unionid {e}")))?;
                }
                let uid = Uid::parse(&uid).map_err(|e| bad(n, format!("uid {e}")))?;
                if !self.users.contains(&uid) {
                    return Err(bad(
                        n,
                        format!("identity of user {uid}, who has no user line"),
                    ));
                }
                if !self.openids.insert(openid.clone()) {
                    return Err(bad(n, "this openid appears twice"));
                }
                self.counts.identities += 1;
                Ok(Some(Record::Identity(
                    openid,
                    Identity {
                        uid,
                        unionid,
                        session_key: Secret::new(String::new()),
                    },
                )))
            }
            Line::Session {
                sid,
                uid,
                created_at,
                last_used_at,
                expires_at,
                idle_expires_at,
                current,
                previous,
                tokens,
            } => {
                let sid =
                    Sid::parse(&sid).ok_or_else(|| bad(n, "sid must be 32 hexadecimal digits"))?;
                let uid = Uid::parse(&uid).map_err(|e| bad(n, format!("uid {e}")))?;
                if !self.users.contains(&uid) {
                    return Err(bad(
                        n,
                        format!("session of user {uid}, who has no user line"),
                    ));
                }
                if !self.sids.insert(sid) {
                    return Err(bad(n, format!("session {sid} appears twice")));
                }
                if created_at > last_used_at
                    || last_used_at > expires_at
                    || idle_expires_at > expires_at
                {
                    return Err(bad(
                        n,
                        "times must satisfy created_at ≤ last_used_at ≤ expires_at and idle_expires_at ≤ expires_at",
                    ));
                }
                let current = parse_hash(&current, "current").map_err(|e| bad(n, e))?;
                let previous = match previous {
                    Some(p) => Some(Rotation {
                        token: parse_hash(&p.hash, "previous.hash").map_err(|e| bad(n, e))?,
                        at: p.rotated_at,
                    }),
                    None => None,
                };
                let mut records = Vec::with_capacity(tokens.len());
                for (i, token) in tokens.iter().enumerate() {
                    let hash = parse_hash(&token.hash, &format!("tokens[{i}].hash"))
                        .map_err(|e| bad(n, e))?;
                    if records.iter().any(|(h, _)| *h == hash) {
                        return Err(bad(n, format!("tokens[{i}] appears twice")));
                    }
                    records.push((
                        hash,
                        RefreshRecord {
                            sid,
                            issued_at: token.issued_at,
                        },
                    ));
                }
                if !records.iter().any(|(h, _)| *h == current) {
                    return Err(bad(n, "current must be one of the tokens"));
                }
                if let Some(p) = previous
                    && (p.token == current || !records.iter().any(|(h, _)| *h == p.token))
                {
                    return Err(bad(
                        n,
                        "previous.hash must be one of the tokens, other than current",
                    ));
                }
                self.counts.sessions += 1;
                Ok(Some(Record::Session(
                    Session {
                        sid,
                        uid,
                        created_at,
                        last_used_at,
                        expires_at,
                        idle_expires_at,
                        state: SessionState::Active,
                        current,
                        previous,
                    },
                    records,
                )))
            }
            Line::End {
                users,
                identities,
                sessions,
            } => {
                let declared = Counts {
                    users,
                    identities,
                    sessions,
                };
                if declared != self.counts {
                    return Err(bad(
                        n,
                        format!(
                            "the end line declares {users} users, {identities} identities and {sessions} sessions, \
                             but the file holds {}, {} and {}",
                            self.counts.users, self.counts.identities, self.counts.sessions
                        ),
                    ));
                }
                self.section = Section::Ended;
                Ok(None)
            }
        }
    }
}

/// Reads an export line by line, checking each line as it goes.
struct Reader<R> {
    lines: std::io::Lines<R>,
    checker: Checker,
    n: u64,
    phase: Phase,
}

impl<R: BufRead> Reader<R> {
    fn new(reader: R, phase: Phase) -> Self {
        Reader {
            lines: reader.lines(),
            checker: Checker::new(),
            n: 0,
            phase,
        }
    }

    /// The next record; `None` at the end of a complete file. Blank lines are skipped.
    fn next_record(&mut self, progress: Progress<'_>) -> Result<Option<Record>, AdminError> {
        for text in self.lines.by_ref() {
            self.n += 1;
            let n = self.n;
            let text = text.map_err(|e| {
                if e.kind() == std::io::ErrorKind::InvalidData {
                    bad(n, "not UTF-8 text")
                } else {
                    bad(n, format!("cannot be read: {e}"))
                }
            })?;
            if n.is_multiple_of(4096) {
                progress(self.phase, n);
            }
            if text.trim().is_empty() {
                if self.checker.section == Section::Start {
                    return Err(bad(
                        n,
                        format!("a blank line; an export starts with its {FORMAT} header line"),
                    ));
                }
                continue;
            }
            if let Some(record) = self.checker.check(n, &text)? {
                return Ok(Some(record));
            }
        }
        progress(self.phase, self.n);
        if self.checker.section != Section::Ended {
            return Err(bad(
                self.n + 1,
                "the file ends before its end line: it is truncated or not an export",
            ));
        }
        Ok(None)
    }
}

/// Checks a whole file without writing anything.
pub(crate) fn validate(reader: impl BufRead, progress: Progress<'_>) -> Result<Counts, AdminError> {
    let mut reader = Reader::new(reader, Phase::Validating);
    while reader.next_record(progress)?.is_some() {}
    Ok(reader.checker.counts)
}

/// Imports a file: `open` is called twice, once to validate every line and once to
/// write. Refuses a database that holds users unless `merge`.
pub(crate) async fn import<S: Store, R: BufRead + Send>(
    store: &S,
    open: impl Fn() -> std::io::Result<R> + Send,
    merge: bool,
    progress: Progress<'_>,
) -> Result<Counts, AdminError> {
    let cannot_read = |e: std::io::Error| AdminError::invalid(format!("cannot read the file: {e}"));
    let counts = validate(open().map_err(cannot_read)?, progress)?;
    if !merge && !store.is_empty().await? {
        return Err(AdminError::new(
            ErrorCode::FailedPrecondition,
            "the database already holds users; import restores into an empty database \
             (add --merge to write into this one, replacing records with the same keys)",
        ));
    }
    let mut reader = Reader::new(open().map_err(cannot_read)?, Phase::Writing);
    let mut batch = Restore::default();
    loop {
        let record = reader.next_record(progress)?;
        let done = record.is_none();
        match record {
            Some(Record::User(u)) => batch.users.push(u),
            Some(Record::Identity(o, i)) => batch.identities.push((o, i)),
            Some(Record::Session(s, t)) => batch.sessions.push((s, t)),
            None => {}
        }
        if batch.len() >= PAGE || (done && !batch.is_empty()) {
            store.restore(&batch).await?;
            batch = Restore::default();
        }
        if done {
            break;
        }
    }
    if reader.checker.counts != counts {
        return Err(AdminError::invalid(
            "the file changed between validating and writing it",
        ));
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_all(text: &str) -> Result<Counts, AdminError> {
        validate(text.as_bytes(), &|_, _| {})
    }

    const HEADER: &str = r#"{"kind":"header","format":"liveuser-export","version":1,"exported_at":1,"sessions":true}"#;
    const USER: &str =
        r#"{"kind":"user","uid":"u1","name":"n","agent":"","avatar":"","update_at":5}"#;

    fn session(current: &str, tokens: &str) -> String {
        format!(
            r#"{{"kind":"session","sid":"{}","uid":"u1","created_at":1,"last_used_at":2,"expires_at":9,"idle_expires_at":8,"current":"{current}","previous":null,"tokens":{tokens}}}"#,
            "ab".repeat(16)
        )
    }

    #[test]
    fn a_well_formed_file_is_counted() {
        let a = "11".repeat(32);
        let b = "22".repeat(32);
        let tokens = format!(r#"[{{"hash":"{a}","issued_at":1}},{{"hash":"{b}","issued_at":2}}]"#);
        let text = format!(
            "{HEADER}\n{USER}\n{}\n{}\n{}\n",
            r#"{"kind":"identity","openid":"o1","uid":"u1","unionid":null}"#,
            session(&b, &tokens),
            r#"{"kind":"end","users":1,"identities":1,"sessions":1}"#
        );
        assert_eq!(
            check_all(&text).unwrap(),
            Counts {
                users: 1,
                identities: 1,
                sessions: 1
            }
        );
    }

    #[test]
    fn the_first_bad_line_is_reported_by_number() {
        let end = r#"{"kind":"end","users":1,"identities":0,"sessions":0}"#;
        let cases = [
            (format!("{USER}\n"), 1, "header"),
            (
                format!("\n{HEADER}\n{USER}\n"),
                1,
                "a blank line; an export starts with",
            ),
            (format!("{HEADER}\n{USER}\n{USER}\n{end}\n"), 3, "twice"),
            (
                format!("{HEADER}\n{USER}\nnot json\n"),
                3,
                "not a valid export line",
            ),
            (
                format!("{HEADER}\n{}\n", USER.replace("\"u1\"", "\"bad uid\"")),
                2,
                "uid",
            ),
            (
                format!("{HEADER}\n{}\n", USER.replace("\"n\"", "\"x\",\"extra\":1")),
                2,
                "unknown field",
            ),
            (format!("{HEADER}\n{USER}\n"), 3, "truncated"),
            (
                format!("{HEADER}\n{USER}\n{end}\n{USER}\n"),
                4,
                "follow the end",
            ),
            (
                format!(
                    "{HEADER}\n{}\n",
                    r#"{"kind":"identity","openid":"o","uid":"nobody","unionid":null}"#
                ),
                2,
                "no user line",
            ),
            (
                format!("{HEADER}\n{USER}\n{}\n", session(&"11".repeat(32), "[]")),
                3,
                "current must be one of the tokens",
            ),
            (
                format!(
                    "{HEADER}\n{USER}\n{}\n",
                    r#"{"kind":"end","users":2,"identities":0,"sessions":0}"#
                ),
                3,
                "declares 2 users",
            ),
        ];
        for (text, line, needle) in cases {
            let err = check_all(&text).unwrap_err();
            assert!(
                err.msg.starts_with(&format!("line {line}: ")) && err.msg.contains(needle),
                "{text:?} gave {}",
                err.msg
            );
        }
    }
}
