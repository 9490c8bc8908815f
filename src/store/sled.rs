//! The sled backend: one database, one tree per mapping, group-committed writes.
//!
//! Trees, named "key_value" after what maps to what:
//!
//! | tree                | key                                  | value                   |
//! |---------------------|--------------------------------------|-------------------------|
//! | `uid_user`          | uid                                  | [`UserRecord`]          |
//! | `openid_identity`   | openid                               | [`Identity`]            |
//! | `sid_session`       | sid (16 bytes)                       | [`Session`]             |
//! | `tokenhash_refresh` | SHA-256 of a refresh token (32 bytes)| [`RefreshRecord`]       |
//! | `uid_sid`           | uid ‖ 0x00 ‖ sid                     | empty (index)           |
//! | `sid_tokenhash`     | sid ‖ token hash                     | empty (index)           |
//! | `meta`              | key name                             | raw bytes (generated keys) |
//! | `meta`              | key name ‖ `.retired`                | `Vec<`[`RetiredKey`]`>` |
//!
//! Uids never contain 0x00, so `uid ‖ 0x00` is an exact prefix for one user's sessions.
//! Values go through [`codec`](super::codec). Multi-tree changes are one sled transaction.

use std::path::Path;
use std::sync::Arc;

use sled::Tree;
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};

use super::cache::Cache;
use super::codec::{decode, encode};
use super::flush::{self, GroupCommit};
use super::{Census, Family, Page, Restore, RotateOutcome, Store, StoreError, StoreResult};
use crate::model::{
    Identity, RefreshRecord, RefreshState, RetiredKey, Session, SessionState, Sid, TokenHash, Uid,
    UserPatch, UserRecord,
};

/// A sled database holding liveuser's trees.
pub struct SledStore {
    db: sled::Db,
    users: Tree,
    identities: Tree,
    sessions: Tree,
    refresh: Tree,
    uid_sessions: Tree,
    session_tokens: Tree,
    meta: Tree,
    commit: GroupCommit,
    user_cache: Cache<Uid, Arc<UserRecord>>,
    session_cache: Cache<Sid, Session>,
}

/// Default entries of each read cache (users, sessions); see [`SledStore::with_caches`].
pub const DEFAULT_CACHE_ENTRIES: usize = 100_000;

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore").finish_non_exhaustive()
    }
}

type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

fn io(e: sled::Error) -> StoreError {
    StoreError::Io(e.to_string())
}

fn tx_error(e: TransactionError<StoreError>) -> StoreError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => io(e),
    }
}

/// Decodes inside a transaction, aborting it on a corrupt record.
fn tx_decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> TxResult<T> {
    decode(bytes).map_err(ConflictableTransactionError::Abort)
}

fn uid_sid_key(uid: &Uid, sid: Sid) -> Vec<u8> {
    let mut key = uid_prefix(uid);
    key.extend_from_slice(&sid.0);
    key
}

fn uid_prefix(uid: &Uid) -> Vec<u8> {
    let mut key = Vec::with_capacity(uid.as_str().len() + 17);
    key.extend_from_slice(uid.as_str().as_bytes());
    key.push(0);
    key
}

fn sid_token_key(sid: Sid, hash: TokenHash) -> [u8; 48] {
    let mut key = [0u8; 48];
    key[..16].copy_from_slice(&sid.0);
    key[16..].copy_from_slice(&hash.0);
    key
}

impl SledStore {
    /// Opens (or creates) the database at `path` with a page cache of `cache_bytes`.
    pub fn open(path: &Path, cache_bytes: u64) -> StoreResult<Self> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(cache_bytes)
            .open()
            .map_err(|e| match &e {
                // sled reports a held lock as ErrorKind::Other with this text.
                sled::Error::Io(io_err)
                    if io_err.kind() == std::io::ErrorKind::WouldBlock
                        || io_err.to_string().contains("could not acquire lock") =>
                {
                    StoreError::Locked
                }
                _ => StoreError::Io(format!("cannot open {}: {e}", path.display())),
            })?;
        let tree = |name: &str| db.open_tree(name).map_err(io);
        Ok(SledStore {
            users: tree("uid_user")?,
            identities: tree("openid_identity")?,
            sessions: tree("sid_session")?,
            refresh: tree("tokenhash_refresh")?,
            uid_sessions: tree("uid_sid")?,
            session_tokens: tree("sid_tokenhash")?,
            meta: tree("meta")?,
            commit: GroupCommit::start(db.clone()),
            db,
            user_cache: Cache::new(DEFAULT_CACHE_ENTRIES),
            session_cache: Cache::new(DEFAULT_CACHE_ENTRIES),
        })
    }

    /// Sizes the read caches in front of the user and session trees (0 turns one off).
    pub fn with_caches(mut self, users: usize, sessions: usize) -> Self {
        self.user_cache = Cache::new(users);
        self.session_cache = Cache::new(sessions);
        self
    }

    /// Flushes everything to disk now (shutdown, CLI).
    pub fn flush(&self) -> StoreResult<()> {
        flush::flush(&self.db)
    }

    /// Reports the duration of every group-commit flush to `observer`.
    pub fn observe_flushes(&self, observer: flush::FlushObserver) {
        self.commit.observe(observer);
    }

    fn get<T: serde::de::DeserializeOwned>(tree: &Tree, key: &[u8]) -> StoreResult<Option<T>> {
        match tree.get(key).map_err(io)? {
            Some(bytes) => decode(&bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Removes one dead session with its tokens and index entries, if it is still there.
    fn remove_session(&self, session: &Session) -> StoreResult<()> {
        let mut hashes = Vec::new();
        for item in self.session_tokens.scan_prefix(session.sid.0) {
            let (key, _) = item.map_err(io)?;
            hashes.push(key);
        }
        (
            &self.sessions,
            &self.refresh,
            &self.uid_sessions,
            &self.session_tokens,
        )
            .transaction(|(sessions, refresh, uid_sessions, session_tokens)| {
                sessions.remove(&session.sid.0)?;
                uid_sessions.remove(uid_sid_key(&session.uid, session.sid))?;
                for key in &hashes {
                    refresh.remove(&key[16..])?;
                    session_tokens.remove(key)?;
                }
                Ok(())
            })
            .map_err(tx_error)?;
        self.session_cache.invalidate(&session.sid);
        Ok(())
    }
}

impl Store for SledStore {
    async fn users(&self, uids: &[Uid]) -> StoreResult<Vec<Arc<UserRecord>>> {
        let mut out = Vec::with_capacity(uids.len());
        for uid in uids {
            let user = self.user_cache.get_or_load(uid, || {
                Ok::<_, StoreError>(Self::get(&self.users, uid.as_str().as_bytes())?.map(Arc::new))
            })?;
            out.extend(user);
        }
        Ok(out)
    }

    async fn update_user(&self, uid: &Uid, patch: &UserPatch, now: u64) -> StoreResult<UserRecord> {
        let user = self
            .users
            .transaction(|users| {
                let mut user = match users.get(uid.as_str())? {
                    Some(bytes) => tx_decode(&bytes)?,
                    None => UserRecord::new(uid.clone(), now),
                };
                user.apply(patch, now);
                users.insert(uid.as_str(), encode(&user))?;
                Ok(user)
            })
            .map_err(tx_error)?;
        self.user_cache.invalidate(uid);
        self.commit.durable().await?;
        Ok(user)
    }

    async fn put_user(&self, user: &UserRecord) -> StoreResult<()> {
        self.users
            .insert(user.uid.as_str(), encode(user))
            .map_err(io)?;
        self.user_cache.invalidate(&user.uid);
        self.commit.durable().await
    }

    async fn list_users(&self, after: Option<&Uid>, limit: usize) -> StoreResult<Page<UserRecord>> {
        let iter = match after {
            Some(after) => self.users.range::<&[u8], _>((
                std::ops::Bound::Excluded(after.as_str().as_bytes()),
                std::ops::Bound::Unbounded,
            )),
            None => self.users.iter(),
        };
        let mut out = Vec::new();
        for item in iter.take(limit) {
            let (_, bytes) = item.map_err(io)?;
            out.push(decode(&bytes)?);
        }
        Ok(out)
    }

    async fn upsert_identity(
        &self,
        openid: &str,
        candidate: Identity,
        now: u64,
    ) -> StoreResult<Uid> {
        let uid = (&self.identities, &self.users)
            .transaction(|(identities, users)| {
                if let Some(bytes) = identities.get(openid)? {
                    let mut known: Identity = tx_decode(&bytes)?;
                    if candidate.unionid.is_some() {
                        known.unionid.clone_from(&candidate.unionid);
                    }
                    known.session_key = candidate.session_key.clone();
                    identities.insert(openid, encode(&known))?;
                    return Ok(known.uid);
                }
                identities.insert(openid, encode(&candidate))?;
                let user = UserRecord::new(candidate.uid.clone(), now);
                users.insert(user.uid.as_str(), encode(&user))?;
                Ok(candidate.uid.clone())
            })
            .map_err(tx_error)?;
        self.user_cache.invalidate(&candidate.uid);
        self.commit.durable().await?;
        Ok(uid)
    }

    async fn session(&self, sid: Sid) -> StoreResult<Option<Session>> {
        self.session_cache
            .get_or_load(&sid, || Self::get(&self.sessions, &sid.0))
    }

    async fn sessions_of(&self, uid: &Uid) -> StoreResult<Vec<Session>> {
        let prefix = uid_prefix(uid);
        let mut out: Vec<Session> = Vec::new();
        for item in self.uid_sessions.scan_prefix(&prefix) {
            let (key, _) = item.map_err(io)?;
            let sid = Sid(key[prefix.len()..]
                .try_into()
                .map_err(|_| StoreError::Corrupt("bad uid_sid key".into()))?);
            if let Some(session) = Self::get(&self.sessions, &sid.0)? {
                out.push(session);
            }
        }
        out.sort_by_key(|s| (s.created_at, s.sid));
        Ok(out)
    }

    async fn list_sessions(&self, after: Option<Sid>, limit: usize) -> StoreResult<Page<Session>> {
        let iter = match after {
            Some(after) => self.sessions.range::<&[u8], _>((
                std::ops::Bound::Excluded(&after.0[..]),
                std::ops::Bound::Unbounded,
            )),
            None => self.sessions.iter(),
        };
        let mut out = Vec::new();
        for item in iter.take(limit) {
            let (_, bytes) = item.map_err(io)?;
            out.push(decode(&bytes)?);
        }
        Ok(out)
    }

    async fn refresh_record(&self, hash: TokenHash) -> StoreResult<Option<RefreshRecord>> {
        Self::get(&self.refresh, &hash.0)
    }

    async fn create_session(&self, session: &Session, evict: &[Sid]) -> StoreResult<()> {
        let first = RefreshRecord {
            sid: session.sid,
            issued_at: session.created_at,
            state: RefreshState::Current,
        };
        (
            &self.sessions,
            &self.refresh,
            &self.uid_sessions,
            &self.session_tokens,
        )
            .transaction(|(sessions, refresh, uid_sessions, session_tokens)| {
                for sid in evict {
                    if let Some(bytes) = sessions.get(sid.0)? {
                        let mut old: Session = tx_decode(&bytes)?;
                        old.state = SessionState::Revoked;
                        sessions.insert(&sid.0, encode(&old))?;
                    }
                }
                sessions.insert(&session.sid.0, encode(session))?;
                refresh.insert(&session.current.0, encode(&first))?;
                uid_sessions.insert(uid_sid_key(&session.uid, session.sid), &[])?;
                session_tokens.insert(&sid_token_key(session.sid, session.current)[..], &[])?;
                Ok(())
            })
            .map_err(tx_error)?;
        for sid in evict.iter().chain([&session.sid]) {
            self.session_cache.invalidate(sid);
        }
        self.commit.durable().await
    }

    async fn rotate(
        &self,
        sid: Sid,
        parent: TokenHash,
        successor: TokenHash,
        now: u64,
        idle_expires_at: u64,
    ) -> StoreResult<RotateOutcome> {
        let outcome = (&self.sessions, &self.refresh, &self.session_tokens)
            .transaction(|(sessions, refresh, session_tokens)| {
                let Some(bytes) = refresh.get(parent.0)? else {
                    return Ok(RotateOutcome::NotCurrent);
                };
                let mut record: RefreshRecord = tx_decode(&bytes)?;
                if record.sid != sid || record.state != RefreshState::Current {
                    return Ok(RotateOutcome::NotCurrent);
                }
                let Some(bytes) = sessions.get(sid.0)? else {
                    return Ok(RotateOutcome::NotCurrent);
                };
                let mut session: Session = tx_decode(&bytes)?;
                if session.state != SessionState::Active || session.current != parent {
                    return Ok(RotateOutcome::NotCurrent);
                }
                record.state = RefreshState::Rotated { successor, at: now };
                refresh.insert(&parent.0, encode(&record))?;
                let next = RefreshRecord {
                    sid,
                    issued_at: now,
                    state: RefreshState::Current,
                };
                refresh.insert(&successor.0, encode(&next))?;
                session.current = successor;
                session.last_used_at = now;
                session.idle_expires_at = idle_expires_at;
                sessions.insert(&sid.0, encode(&session))?;
                session_tokens.insert(&sid_token_key(sid, successor)[..], &[])?;
                Ok(RotateOutcome::Rotated)
            })
            .map_err(tx_error)?;
        if outcome == RotateOutcome::Rotated {
            self.session_cache.invalidate(&sid);
            self.commit.durable().await?;
        }
        Ok(outcome)
    }

    async fn touch_session(&self, sid: Sid, now: u64, idle_expires_at: u64) -> StoreResult<bool> {
        let touched = self
            .sessions
            .transaction(|sessions| {
                let Some(bytes) = sessions.get(sid.0)? else {
                    return Ok(false);
                };
                let mut session: Session = tx_decode(&bytes)?;
                if session.state != SessionState::Active {
                    return Ok(false);
                }
                session.last_used_at = now;
                session.idle_expires_at = idle_expires_at;
                sessions.insert(&sid.0, encode(&session))?;
                Ok(true)
            })
            .map_err(tx_error)?;
        if touched {
            self.session_cache.invalidate(&sid);
            self.commit.durable().await?;
        }
        Ok(touched)
    }

    async fn revoke_sessions(&self, sids: &[Sid]) -> StoreResult<usize> {
        let revoked = self
            .sessions
            .transaction(|sessions| {
                let mut revoked = 0;
                for sid in sids {
                    let Some(bytes) = sessions.get(sid.0)? else {
                        continue;
                    };
                    let mut session: Session = tx_decode(&bytes)?;
                    if session.state == SessionState::Active {
                        session.state = SessionState::Revoked;
                        sessions.insert(&sid.0, encode(&session))?;
                        revoked += 1;
                    }
                }
                Ok(revoked)
            })
            .map_err(tx_error)?;
        for sid in sids {
            self.session_cache.invalidate(sid);
        }
        self.commit.durable().await?;
        Ok(revoked)
    }

    async fn sweep(&self, now: u64) -> StoreResult<usize> {
        let mut dead = Vec::new();
        for item in self.sessions.iter() {
            let (_, bytes) = item.map_err(io)?;
            let session: Session = decode(&bytes)?;
            if !session.is_live(now) {
                dead.push(session);
            }
        }
        for session in &dead {
            self.remove_session(session)?;
        }
        if !dead.is_empty() {
            self.commit.durable().await?;
        }
        Ok(dead.len())
    }

    async fn list_identities(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Page<(String, Identity)>> {
        let iter = match after {
            Some(after) => self.identities.range::<&[u8], _>((
                std::ops::Bound::Excluded(after.as_bytes()),
                std::ops::Bound::Unbounded,
            )),
            None => self.identities.iter(),
        };
        let mut out = Vec::new();
        for item in iter.take(limit) {
            let (key, bytes) = item.map_err(io)?;
            let openid = String::from_utf8(key.to_vec())
                .map_err(|_| StoreError::Corrupt("an openid key is not UTF-8".into()))?;
            out.push((openid, decode(&bytes)?));
        }
        Ok(out)
    }

    async fn family(&self, sid: Sid) -> StoreResult<Option<Family>> {
        // The index is scanned outside the transaction (sled transactions cannot
        // iterate); a rotation in between shows as a current token missing from the
        // scan, and the read is done again.
        for _ in 0..8 {
            let mut hashes = Vec::new();
            for item in self.session_tokens.scan_prefix(sid.0) {
                let (key, _) = item.map_err(io)?;
                let hash: [u8; 32] = key[16..]
                    .try_into()
                    .map_err(|_| StoreError::Corrupt("bad sid_tokenhash key".into()))?;
                hashes.push(TokenHash(hash));
            }
            let read = (&self.sessions, &self.refresh)
                .transaction(|(sessions, refresh)| {
                    let Some(bytes) = sessions.get(sid.0)? else {
                        return Ok(None);
                    };
                    let session: Session = tx_decode(&bytes)?;
                    let mut records = Vec::with_capacity(hashes.len());
                    for hash in &hashes {
                        if let Some(bytes) = refresh.get(hash.0)? {
                            records.push((*hash, tx_decode::<RefreshRecord>(&bytes)?));
                        }
                    }
                    Ok(Some((session, records)))
                })
                .map_err(tx_error)?;
            match read {
                Some((session, records))
                    if !records.iter().any(|(hash, _)| *hash == session.current) =>
                {
                    continue;
                }
                other => return Ok(other),
            }
        }
        Err(StoreError::Io(format!(
            "session {sid} kept changing while it was read"
        )))
    }

    async fn restore(&self, batch: &Restore) -> StoreResult<()> {
        (
            &self.users,
            &self.identities,
            &self.sessions,
            &self.refresh,
            &self.uid_sessions,
            &self.session_tokens,
        )
            .transaction(
                |(users, identities, sessions, refresh, uid_sessions, session_tokens)| {
                    for user in &batch.users {
                        users.insert(user.uid.as_str(), encode(user))?;
                    }
                    for (openid, identity) in &batch.identities {
                        identities.insert(openid.as_str(), encode(identity))?;
                    }
                    for (session, records) in &batch.sessions {
                        sessions.insert(&session.sid.0, encode(session))?;
                        uid_sessions.insert(uid_sid_key(&session.uid, session.sid), &[])?;
                        for (hash, record) in records {
                            refresh.insert(&hash.0, encode(record))?;
                            session_tokens.insert(&sid_token_key(session.sid, *hash)[..], &[])?;
                        }
                    }
                    Ok(())
                },
            )
            .map_err(tx_error)?;
        for user in &batch.users {
            self.user_cache.invalidate(&user.uid);
        }
        for (session, _) in &batch.sessions {
            self.session_cache.invalidate(&session.sid);
        }
        self.commit.durable().await
    }

    async fn is_empty(&self) -> StoreResult<bool> {
        Ok(self.users.first().map_err(io)?.is_none()
            && self.identities.first().map_err(io)?.is_none())
    }

    async fn census(&self, now: u64) -> StoreResult<Census> {
        let mut users = 0;
        for item in self.users.iter().keys() {
            item.map_err(io)?;
            users += 1;
        }
        let mut sessions_live = 0;
        for item in self.sessions.iter().values() {
            let session: Session = decode(&item.map_err(io)?)?;
            if session.is_live(now) {
                sessions_live += 1;
            }
        }
        Ok(Census {
            users,
            sessions_live,
        })
    }

    async fn key_or_init(
        &self,
        name: &str,
        generate: impl FnOnce() -> Vec<u8> + Send,
    ) -> StoreResult<Vec<u8>> {
        if let Some(existing) = self.meta.get(name).map_err(io)? {
            return Ok(existing.to_vec());
        }
        let fresh = generate();
        let key = match self
            .meta
            .compare_and_swap(name, None::<&[u8]>, Some(fresh.as_slice()))
            .map_err(io)?
        {
            Ok(()) => fresh,
            Err(conflict) => conflict.current.map(|v| v.to_vec()).unwrap_or(fresh),
        };
        self.commit.durable().await?;
        Ok(key)
    }

    async fn retired_keys(&self, name: &str) -> StoreResult<Vec<RetiredKey>> {
        Ok(Self::get(&self.meta, retired_name(name).as_bytes())?.unwrap_or_default())
    }

    async fn rotate_key(
        &self,
        name: &str,
        fresh: Vec<u8>,
        retire_at: u64,
        now: u64,
    ) -> StoreResult<Option<Vec<u8>>> {
        let retired_name = retired_name(name);
        let replaced = self
            .meta
            .transaction(|meta| {
                let replaced = meta.get(name)?.map(|v| v.to_vec());
                let mut retired: Vec<RetiredKey> = match meta.get(retired_name.as_bytes())? {
                    Some(bytes) => tx_decode(&bytes)?,
                    None => Vec::new(),
                };
                retired.retain(|k| k.retire_at > now);
                if let Some(old) = &replaced {
                    retired.push(RetiredKey {
                        key: crate::secret::Secret::new(old.clone()),
                        retire_at,
                    });
                }
                meta.insert(retired_name.as_bytes(), encode(&retired))?;
                meta.insert(name, fresh.as_slice())?;
                Ok(replaced)
            })
            .map_err(tx_error)?;
        self.commit.durable().await?;
        Ok(replaced)
    }
}

/// Where the keys retired from `name` are kept.
fn retired_name(name: &str) -> String {
    format!("{name}.retired")
}
