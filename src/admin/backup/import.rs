//! Reading an export back into a database.
//!
//! Import reads the file twice: first it validates every line (format, limits, order,
//! duplicates, references, the counts) and stops at the first bad one with its line
//! number, having written nothing; then it writes in batches. Records replace records
//! with the same key, except sessions that the database holds revoked, under another
//! user, or further along than the file (see [`Store::restore`]). Into a database that
//! already holds users it imports only when asked to merge, since a restore is meant for
//! an empty one.
//!
//! Format 1 sessions are converted as a database upgrade converts them: the session id
//! becomes the first 16 bytes of the current token's hash (what a format-1 token's
//! session id is, see [`crate::token`]), the generation 0, and the last rotation and the
//! older tokens' hashes are dropped (a format-1 token older than the current one is then
//! refused without revoking anything). Access tokens issued before name the old session
//! id and are refused; clients renew.

use std::collections::HashSet;
use std::io::BufRead;

use super::{
    Counts, FORMAT, Line, OLDEST_VERSION, PAGE, PreviousLine, RetiredKeyLine, SessionLine,
    TokenLine, VERSION,
};
use crate::admin::AdminError;
use crate::http::ErrorCode;
use crate::keys::RefreshKeyMaterial;
use crate::model::{
    Identity, RetiredKey, Rotation, Session, SessionState, Sid, TokenHash, Uid, UserPatch,
    UserRecord, check_text,
};
use crate::primitives::unhex;
use crate::secret::Secret;
use crate::store::{Restore, Store};
use crate::token::MAX_RETIRED_REFRESH_KEYS;

/// Longest openid accepted (WeChat's are 28 characters).
const OPENID_MAX: usize = 128;

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
    Session(Session),
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
    /// The header's format version.
    version: u32,
    users: HashSet<Uid>,
    openids: HashSet<String>,
    sids: HashSet<Sid>,
    counts: Counts,
    /// Whether the header says the file has sessions.
    sessions: bool,
    /// The header's refresh keys, if it has them.
    refresh_keys: Option<RefreshKeyMaterial>,
}

fn bad(line: u64, reason: impl std::fmt::Display) -> AdminError {
    AdminError::invalid(format!("line {line}: {reason}"))
}

fn hash_of(s: &str) -> Option<TokenHash> {
    unhex(s)
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .map(TokenHash)
}

fn parse_hash(s: &str, what: &str) -> Result<TokenHash, String> {
    hash_of(s).ok_or_else(|| format!("{what} must be 64 hexadecimal digits"))
}

impl Checker {
    fn new() -> Self {
        Checker {
            section: Section::Start,
            version: VERSION,
            users: HashSet::new(),
            openids: HashSet::new(),
            sids: HashSet::new(),
            counts: Counts::default(),
            sessions: false,
            refresh_keys: None,
        }
    }

    /// Checks one line; returns its record (none for the header and end lines).
    fn check(&mut self, n: u64, text: &str) -> Result<Option<Record>, AdminError> {
        let line: Line = serde_json::from_str(text)
            .map_err(|e| bad(n, format!("not a valid export line: {e}")))?;
        self.enter(n, &line).map_err(|e| bad(n, e))?;
        let record = match line {
            Line::Header {
                format,
                version,
                sessions,
                refresh_key,
                retired_refresh_keys,
                ..
            } => self
                .header(
                    &format,
                    version,
                    sessions,
                    refresh_key,
                    retired_refresh_keys,
                )
                .map(|()| None),
            Line::User {
                uid,
                name,
                agent,
                avatar,
                update_at,
            } => {
                let patch = UserPatch {
                    name: Some(name),
                    agent: Some(agent),
                    avatar: Some(avatar),
                };
                self.user(&uid, &patch, update_at).map(Some)
            }
            Line::Identity {
                openid,
                uid,
                unionid,
            } => self.identity(openid, &uid, unionid).map(Some),
            Line::Session(line) => self.session(line).map(Some),
            Line::End {
                users,
                identities,
                sessions,
            } => self
                .end(Counts {
                    users,
                    identities,
                    sessions,
                })
                .map(|()| None),
        };
        record.map_err(|e| bad(n, e))
    }

    /// Checks that line `n` may come where it does (the sections in the export's
    /// order), and moves on to its section.
    fn enter(&mut self, n: u64, line: &Line) -> Result<(), String> {
        let section = match line {
            Line::Header { .. } => Section::Start,
            Line::User { .. } => Section::Users,
            Line::Identity { .. } => Section::Identities,
            Line::Session(_) => Section::Sessions,
            Line::End { .. } => Section::Ended,
        };
        if self.section == Section::Start && !matches!(line, Line::Header { .. }) {
            return Err(format!("the first line must be the {FORMAT} header"));
        }
        if self.section == Section::Ended {
            return Err("nothing may follow the end line".into());
        }
        if section < self.section || (section == Section::Start && n > 1) {
            return Err(
                "out of order: a file lists the header, users, identities, sessions, then the end line"
                    .into(),
            );
        }
        self.section = section.max(Section::Users);
        Ok(())
    }

    fn header(
        &mut self,
        format: &str,
        version: u32,
        sessions: bool,
        refresh_key: Option<String>,
        retired_refresh_keys: Option<Vec<RetiredKeyLine>>,
    ) -> Result<(), String> {
        if format != FORMAT {
            return Err(format!("format must be {FORMAT:?}"));
        }
        if !(OLDEST_VERSION..=VERSION).contains(&version) {
            return Err(format!(
                "format version {version} is not supported (this build reads {OLDEST_VERSION} to {VERSION})"
            ));
        }
        self.version = version;
        self.sessions = sessions;
        self.refresh_keys = check_refresh_keys(sessions, refresh_key, retired_refresh_keys)?;
        Ok(())
    }

    fn user(&mut self, uid: &str, patch: &UserPatch, update_at: u64) -> Result<Record, String> {
        let uid = Uid::parse(uid).map_err(|e| format!("uid {e}"))?;
        patch
            .validate()
            .map_err(|(field, e)| format!("{field} {e}"))?;
        if !self.users.insert(uid.clone()) {
            return Err(format!("user {uid} appears twice"));
        }
        self.counts.users += 1;
        let mut user = UserRecord::new(uid, update_at);
        user.apply(patch, update_at);
        Ok(Record::User(user))
    }

    fn identity(
        &mut self,
        openid: String,
        uid: &str,
        unionid: Option<String>,
    ) -> Result<Record, String> {
        if openid.is_empty() {
            return Err("openid must not be empty".into());
        }
        check_text(&openid, OPENID_MAX).map_err(|e| format!("openid {e}"))?;
        if let Some(u) = &unionid {
            check_text(u, OPENID_MAX).map_err(|e| format!("unionid {e}"))?;
        }
        let uid = self.known_user(uid, "identity")?;
        if !self.openids.insert(openid.clone()) {
            return Err("this openid appears twice".into());
        }
        self.counts.identities += 1;
        Ok(Record::Identity(
            openid,
            Identity {
                uid,
                unionid,
                session_key: Secret::new(String::new()),
            },
        ))
    }

    /// The uid of an `owned` line (an identity, a session), which must be a user's
    /// listed before it.
    fn known_user(&self, uid: &str, owned: &str) -> Result<Uid, String> {
        let uid = Uid::parse(uid).map_err(|e| format!("uid {e}"))?;
        if !self.users.contains(&uid) {
            return Err(format!("{owned} of user {uid}, who has no user line"));
        }
        Ok(uid)
    }

    fn session(&mut self, line: SessionLine) -> Result<Record, String> {
        if !self.sessions {
            return Err("a session line in a file whose header says \"sessions\": false".into());
        }
        let sid = Sid::parse(&line.sid).ok_or("sid must be 32 hexadecimal digits")?;
        let uid = self.known_user(&line.uid, "session")?;
        if line.created_at > line.last_used_at
            || line.last_used_at > line.expires_at
            || line.idle_expires_at > line.expires_at
        {
            return Err(
                "times must satisfy created_at ≤ last_used_at ≤ expires_at and idle_expires_at ≤ expires_at"
                    .into(),
            );
        }
        let current = parse_hash(&line.current, "current")?;
        let mut session = Session {
            sid,
            uid,
            created_at: line.created_at,
            last_used_at: line.last_used_at,
            expires_at: line.expires_at,
            idle_expires_at: line.idle_expires_at,
            state: SessionState::Active,
            generation: 0,
            current,
            previous: None,
        };
        if self.version == 1 {
            check_format_1_session(&session, line.previous, line.generation, line.tokens)?;
            // As a database upgrade converts it: the id a format-1 token derives.
            session.sid = Sid(current.0[..16].try_into().expect("16 of 32 bytes"));
        } else {
            if line.tokens.is_some() {
                return Err("tokens is a format 1 field".into());
            }
            session.generation = line.generation.ok_or("generation is missing")?;
            session.previous = line
                .previous
                .map(|p| format_2_rotation(&session, &p))
                .transpose()?;
        }
        if !self.sids.insert(session.sid) {
            return Err(format!("session {} appears twice", session.sid));
        }
        self.counts.sessions += 1;
        Ok(Record::Session(session))
    }

    fn end(&mut self, declared: Counts) -> Result<(), String> {
        if declared != self.counts {
            return Err(format!(
                "the end line declares {} users, {} identities and {} sessions, \
                 but the file holds {}, {} and {}",
                declared.users,
                declared.identities,
                declared.sessions,
                self.counts.users,
                self.counts.identities,
                self.counts.sessions
            ));
        }
        self.section = Section::Ended;
        Ok(())
    }
}

/// The last rotation of a format-2 session line, checked against the session (its
/// current token and generation).
fn format_2_rotation(session: &Session, previous: &PreviousLine) -> Result<Rotation, String> {
    let token = parse_hash(&previous.hash, "previous.hash")?;
    let rotated_at_ms = match (previous.rotated_at_ms, previous.rotated_at) {
        (Some(ms), None) => ms,
        _ => return Err("previous needs rotated_at_ms".into()),
    };
    if token == session.current {
        return Err("previous.hash must differ from current".into());
    }
    if session.generation == 0 {
        return Err("a session of generation 0 has no previous token".into());
    }
    Ok(Rotation {
        token,
        rotated_at_ms,
    })
}

/// Reads the header's refresh keys: 32 bytes each, only in a file with sessions (the
/// keys are there for the sessions they tagged), retired ones only beside a current one
/// and no more than the service keeps in force.
fn check_refresh_keys(
    sessions: bool,
    current: Option<String>,
    retired: Option<Vec<RetiredKeyLine>>,
) -> Result<Option<RefreshKeyMaterial>, String> {
    let key = |hex: &str, what: &str| {
        unhex(hex)
            .filter(|k| k.len() == 32)
            .map(Secret::new)
            .ok_or_else(|| format!("{what} must be 64 hexadecimal digits"))
    };
    let Some(current) = current else {
        return match retired {
            None => Ok(None),
            Some(_) => Err("retired_refresh_keys needs a refresh_key".into()),
        };
    };
    if !sessions {
        return Err(
            "refresh_key comes only with sessions (\"sessions\": true); an export without \
             them carries no key"
                .into(),
        );
    }
    let retired = retired.unwrap_or_default();
    if retired.len() > MAX_RETIRED_REFRESH_KEYS {
        return Err(format!(
            "retired_refresh_keys holds {} keys; at most {MAX_RETIRED_REFRESH_KEYS} are in force",
            retired.len()
        ));
    }
    Ok(Some(RefreshKeyMaterial {
        current: key(&current, "refresh_key")?,
        retired: retired
            .iter()
            .enumerate()
            .map(|(i, k)| {
                Ok(RetiredKey {
                    key: key(&k.key, &format!("retired_refresh_keys[{i}].key"))?,
                    retire_at: k.retire_at,
                })
            })
            .collect::<Result<_, String>>()?,
    }))
}

/// Checks the format-1 parts of a session line: no generation, every token hash
/// well-formed and listed once, current and previous among them.
fn check_format_1_session(
    session: &Session,
    previous: Option<PreviousLine>,
    generation: Option<u32>,
    tokens: Option<Vec<TokenLine>>,
) -> Result<(), String> {
    if generation.is_some() {
        return Err("generation is a format 2 field".into());
    }
    let tokens = tokens.ok_or("tokens is missing")?;
    // A set, not a list: one line may hold any number of tokens (an upload is up to a
    // GiB), and looking each one up in a list of those before it was quadratic.
    let mut hashes: HashSet<TokenHash> = HashSet::with_capacity(tokens.len());
    for (i, token) in tokens.iter().enumerate() {
        let hash = hash_of(&token.hash)
            .ok_or_else(|| format!("tokens[{i}].hash must be 64 hexadecimal digits"))?;
        if !hashes.insert(hash) {
            return Err(format!("tokens[{i}] appears twice"));
        }
    }
    if !hashes.contains(&session.current) {
        return Err("current must be one of the tokens".into());
    }
    if let Some(p) = previous {
        if p.rotated_at.is_none() || p.rotated_at_ms.is_some() {
            return Err("previous needs rotated_at".into());
        }
        let token = parse_hash(&p.hash, "previous.hash")?;
        if token == session.current || !hashes.contains(&token) {
            return Err("previous.hash must be one of the tokens, other than current".into());
        }
    }
    Ok(())
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

    /// The next record; `None` at the end of a complete file.
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
                // An export writes none: a blank line means the file was edited or is not
                // an export, and skipping it would hide that.
                return Err(bad(
                    n,
                    if self.checker.section == Section::Start {
                        format!("a blank line; an export starts with its {FORMAT} header line")
                    } else {
                        "a blank line; an export has no blank lines".to_string()
                    },
                ));
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
fn validate(reader: impl BufRead, progress: Progress<'_>) -> Result<Checker, AdminError> {
    let mut reader = Reader::new(reader, Phase::Validating);
    while reader.next_record(progress)?.is_some() {}
    Ok(reader.checker)
}

/// Imports a file: `open` is called twice, once to validate every line and once to
/// write. Refuses a database that holds users unless `merge`. `now`: Unix seconds.
pub(crate) async fn import<S: Store, R: BufRead + Send>(
    store: &S,
    open: impl Fn() -> std::io::Result<R> + Send,
    merge: bool,
    progress: Progress<'_>,
    now: u64,
) -> Result<Counts, AdminError> {
    let cannot_read = |e: std::io::Error| AdminError::invalid(format!("cannot read the file: {e}"));
    let checked = validate(open().map_err(cannot_read)?, progress)?;
    let counts = checked.counts;
    let empty = store.is_empty().await?;
    if !merge && !empty {
        return Err(AdminError::new(
            ErrorCode::FailedPrecondition,
            "the database already holds users; import restores into an empty database \
             (add --merge to write into this one, replacing records with the same keys)",
        ));
    }
    // Into an empty database, the sessions come with the keys that tagged their tokens
    // (see the module documentation of `backup`); without sessions there is nothing for
    // a key to tag, so none is adopted.
    if empty
        && counts.sessions > 0
        && let Some(keys) = checked.refresh_keys
    {
        crate::keys::adopt_refresh_keys(store, keys, now).await?;
    }
    let mut reader = Reader::new(open().map_err(cannot_read)?, Phase::Writing);
    let mut batch = Restore::default();
    loop {
        let record = reader.next_record(progress)?;
        let done = record.is_none();
        match record {
            Some(Record::User(u)) => batch.users.push(u),
            Some(Record::Identity(o, i)) => batch.identities.push((o, i)),
            Some(Record::Session(s)) => batch.sessions.push(s),
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
    use super::super::export::session_line;
    use super::*;

    fn check_all(text: &str) -> Result<Counts, AdminError> {
        validate(text.as_bytes(), &|_, _| {}).map(|checked| checked.counts)
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

    const HEADER_2: &str = r#"{"kind":"header","format":"liveuser-export","version":2,"exported_at":1,"sessions":true}"#;
    const END_1: &str = r#"{"kind":"end","users":1,"identities":0,"sessions":1}"#;

    fn session_2(generation: &str, previous: &str) -> String {
        format!(
            r#"{{"kind":"session","sid":"{}","uid":"u1","created_at":1,"last_used_at":2,"expires_at":9,"idle_expires_at":8,"generation":{generation},"current":"{}","previous":{previous}}}"#,
            "ab".repeat(16),
            "11".repeat(32)
        )
    }

    fn sessions_of(text: &str) -> Vec<Session> {
        let mut reader = Reader::new(text.as_bytes(), Phase::Validating);
        let mut out = Vec::new();
        while let Some(record) = reader.next_record(&|_, _| {}).unwrap() {
            if let Record::Session(s) = record {
                out.push(s);
            }
        }
        out
    }

    #[test]
    fn a_format_2_session_line_is_read_as_written() {
        let previous = format!(r#"{{"hash":"{}","rotated_at_ms":1500}}"#, "22".repeat(32));
        let text = format!(
            "{HEADER_2}\n{USER}\n{}\n{END_1}\n",
            session_2("3", &previous)
        );
        let sessions = sessions_of(&text);
        assert_eq!(sessions.len(), 1);
        let s = &sessions[0];
        assert_eq!(s.sid, Sid([0xab; 16]));
        assert_eq!(s.generation, 3);
        assert_eq!(s.current, TokenHash([0x11; 32]));
        assert_eq!(
            s.previous,
            Some(Rotation {
                token: TokenHash([0x22; 32]),
                rotated_at_ms: 1500
            })
        );
        // And written back exactly so.
        let line = serde_json::to_string(&session_line(s)).unwrap();
        assert_eq!(line, session_2("3", &previous));
    }

    #[test]
    fn a_format_1_session_is_known_by_the_id_its_current_token_derives() {
        let a = "11".repeat(32);
        let b = "22".repeat(32);
        let tokens = format!(r#"[{{"hash":"{a}","issued_at":1}},{{"hash":"{b}","issued_at":2}}]"#);
        let line = session(&b, &tokens).replace(
            r#""previous":null"#,
            &format!(r#""previous":{{"hash":"{a}","rotated_at":2}}"#),
        );
        let text = format!("{HEADER}\n{USER}\n{line}\n{END_1}\n");
        let sessions = sessions_of(&text);
        assert_eq!(
            sessions[0].sid,
            Sid([0x22; 16]),
            "the first half of its hash"
        );
        assert_eq!(sessions[0].generation, 0);
        assert_eq!(sessions[0].current, TokenHash([0x22; 32]));
        assert_eq!(sessions[0].previous, None, "a format-1 rotation is dropped");
    }

    #[test]
    fn format_2_session_lines_are_checked() {
        let prev = |hash: &str, when: &str| format!(r#"{{"hash":"{hash}",{when}}}"#);
        let other = "22".repeat(32);
        let cases = [
            (session_2("null", "null"), "generation is missing"),
            (
                session_2("1", &prev(&other, r#""rotated_at":1"#)),
                "rotated_at_ms",
            ),
            (
                session_2("0", &prev(&other, r#""rotated_at_ms":1"#)),
                "generation 0",
            ),
            (
                session_2("1", &prev(&"11".repeat(32), r#""rotated_at_ms":1"#)),
                "differ from current",
            ),
            (
                session_2("1", "null")
                    .replace(r#""previous":null"#, r#""previous":null,"tokens":[]"#),
                "format 1 field",
            ),
        ];
        for (line, needle) in cases {
            let text = format!("{HEADER_2}\n{USER}\n{line}\n{END_1}\n");
            let err = check_all(&text).unwrap_err();
            assert!(
                err.msg.starts_with("line 3: ") && err.msg.contains(needle),
                "{line} gave {}",
                err.msg
            );
        }
        let future = HEADER_2.replace(r#""version":2"#, r#""version":3"#);
        let err = check_all(&format!("{future}\n")).unwrap_err();
        assert!(err.msg.contains("not supported"), "{}", err.msg);
    }

    /// A header of format 2 with `sessions` and the fields `extra` (each starting with a
    /// comma).
    fn header_2(sessions: bool, extra: &str) -> String {
        format!(
            r#"{{"kind":"header","format":"liveuser-export","version":2,"exported_at":1,"sessions":{sessions}{extra}}}"#
        )
    }

    /// A `"sessions": false` file with a key replaced the key of the empty database it
    /// was imported into, though it had no session the key could have tagged.
    #[test]
    fn refresh_keys_come_only_with_sessions_and_no_more_than_are_kept_in_force() {
        let key = "ab".repeat(32);
        let retired = |n: usize| {
            let list: Vec<String> = (0..n)
                .map(|i| format!(r#"{{"key":"{:064x}","retire_at":{}}}"#, i + 1, 100 + i))
                .collect();
            format!(r#","retired_refresh_keys":[{}]"#, list.join(","))
        };
        let with_key = |more: &str| format!(r#","refresh_key":"{key}"{more}"#);
        let end = r#"{"kind":"end","users":1,"identities":0,"sessions":0}"#;
        let cases = [
            (header_2(false, &with_key("")), "comes only with sessions"),
            (header_2(true, &retired(1)), "needs a refresh_key"),
            (
                header_2(true, &format!(r#","refresh_key":"{}""#, "ab".repeat(31))),
                "refresh_key must be 64 hexadecimal digits",
            ),
            (
                header_2(
                    true,
                    &with_key(r#","retired_refresh_keys":[{"key":"zz","retire_at":5}]"#),
                ),
                "retired_refresh_keys[0].key must be 64 hexadecimal digits",
            ),
            (
                header_2(true, &with_key(&retired(MAX_RETIRED_REFRESH_KEYS + 1))),
                "at most 4 are in force",
            ),
        ];
        for (header, needle) in cases {
            let err = check_all(&format!("{header}\n{USER}\n{end}\n")).unwrap_err();
            assert!(
                err.msg.starts_with("line 1: ") && err.msg.contains(needle),
                "{header} gave {}",
                err.msg
            );
        }
        // A session line under a header that says there are none.
        let text = format!(
            "{}\n{USER}\n{}\n{END_1}\n",
            header_2(false, ""),
            session_2("0", "null")
        );
        let err = check_all(&text).unwrap_err();
        assert!(
            err.msg.starts_with("line 3: ") && err.msg.contains(r#""sessions": false"#),
            "{}",
            err.msg
        );

        let text = format!(
            "{}\n{USER}\n{end}\n",
            header_2(true, &with_key(&retired(MAX_RETIRED_REFRESH_KEYS)))
        );
        let keys = validate(text.as_bytes(), &|_, _| {})
            .unwrap()
            .refresh_keys
            .unwrap();
        assert_eq!(keys.current.expose(), &vec![0xab; 32]);
        assert_eq!(keys.retired.len(), MAX_RETIRED_REFRESH_KEYS);
        assert_eq!(keys.retired[1].retire_at, 101);
    }

    /// A format-1 file with one session of `tokens` token records, and how long checking
    /// it takes at best of three (the least disturbed by other work on the machine).
    fn time_to_check_a_session_of(tokens: usize) -> std::time::Duration {
        let list: Vec<String> = (0..tokens)
            .map(|i| format!(r#"{{"hash":"{:064x}","issued_at":1}}"#, i))
            .collect();
        let current = format!("{:064x}", tokens - 1);
        let text = format!(
            "{HEADER}\n{USER}\n{}\n{END_1}\n",
            session(&current, &format!("[{}]", list.join(",")))
        );
        (0..3)
            .map(|_| {
                let started = std::time::Instant::now();
                assert_eq!(check_all(&text).unwrap().sessions, 1);
                started.elapsed()
            })
            .min()
            .unwrap()
    }

    /// Checking a format-1 session compared each token hash with every one before it: 10k,
    /// 20k and 40k tokens took 0.20, 0.43 and 1.69 s, and the admin API takes uploads of
    /// 1 GiB. Four times the tokens must take about four times as long, not sixteen.
    #[test]
    fn checking_a_format_1_session_grows_linearly_with_its_tokens() {
        let small = time_to_check_a_session_of(10_000);
        let large = time_to_check_a_session_of(40_000);
        let ratio = large.as_secs_f64() / small.as_secs_f64();
        assert!(
            ratio < 10.0,
            "4x the tokens took {ratio:.1}x as long ({small:?}, then {large:?})"
        );
    }

    /// A blank first line was once reported as "out of order", and blank lines further
    /// on were skipped although an export never writes one.
    #[test]
    fn a_blank_line_is_reported_as_blank_by_number_wherever_it_stands() {
        let end = r#"{"kind":"end","users":1,"identities":0,"sessions":0}"#;
        let cases = [
            (format!("\n{HEADER}\n{USER}\n{end}\n"), 1, "starts with its"),
            (
                format!("  \t\n{HEADER}\n{USER}\n{end}\n"),
                1,
                "starts with its",
            ),
            (
                format!("{HEADER}\n\n{USER}\n{end}\n"),
                2,
                "has no blank lines",
            ),
            (
                format!("{HEADER}\n{USER}\n \n{end}\n"),
                3,
                "has no blank lines",
            ),
            (
                format!("{HEADER}\n{USER}\n{end}\n\n"),
                4,
                "has no blank lines",
            ),
        ];
        for (text, line, needle) in cases {
            let err = check_all(&text).unwrap_err();
            assert!(
                err.msg.starts_with(&format!("line {line}: a blank line; "))
                    && err.msg.contains(needle),
                "{text:?} gave {}",
                err.msg
            );
        }
    }

    #[test]
    fn the_first_bad_line_is_reported_by_number() {
        let end = r#"{"kind":"end","users":1,"identities":0,"sessions":0}"#;
        let cases = [
            (format!("{USER}\n"), 1, "header"),
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
                    session(&"11".repeat(32), "[]").replace(r#""uid""#, r#""extra":1,"uid""#)
                ),
                3,
                "unknown field `extra`",
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
