//! Writing an export, a chunk of lines at a time.
//!
//! Consistency while the server runs: users are read first, then only identities and
//! sessions of exported users are written, so a file never refers to a record it lacks.
//! A session is one record, so it is never read half rotated.

use std::collections::HashSet;
use std::sync::Arc;

use super::{Counts, FORMAT, Line, PAGE, PreviousLine, RetiredKeyLine, SessionLine, VERSION};
use crate::model::{Session, Sid, Uid};
use crate::primitives::hex;
use crate::store::{Store, StoreError};

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
                let (refresh_key, retired_refresh_keys) = if self.sessions {
                    let keys =
                        crate::keys::refresh_key_material(self.store.as_ref(), self.now).await?;
                    let retired: Vec<RetiredKeyLine> = keys
                        .retired
                        .iter()
                        .map(|k| RetiredKeyLine {
                            key: hex(k.key.expose()),
                            retire_at: k.retire_at,
                        })
                        .collect();
                    (
                        Some(hex(keys.current.expose())),
                        (!retired.is_empty()).then_some(retired),
                    )
                } else {
                    (None, None)
                };
                push(
                    &mut out,
                    &Line::Header {
                        format: FORMAT.into(),
                        version: VERSION,
                        exported_at: self.now,
                        sessions: self.sessions,
                        refresh_key,
                        retired_refresh_keys,
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
                for session in page {
                    if !session.is_live(self.now) || !self.uids.contains(&session.uid) {
                        continue;
                    }
                    push(&mut out, &session_line(&session));
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

pub(super) fn session_line(session: &Session) -> Line {
    Line::Session(SessionLine {
        sid: session.sid.to_string(),
        uid: session.uid.to_string(),
        created_at: session.created_at,
        last_used_at: session.last_used_at,
        expires_at: session.expires_at,
        idle_expires_at: session.idle_expires_at,
        generation: Some(session.generation),
        current: hex(&session.current.0),
        previous: session.previous.map(|p| PreviousLine {
            hash: hex(&p.token.0),
            rotated_at_ms: Some(p.rotated_at_ms),
            rotated_at: None,
        }),
        tokens: None,
    })
}
