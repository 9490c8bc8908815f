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
//! Values go through [`codec`](super::codec).
//!
//! No sled transactions: a sled transaction takes a process-wide write lock that stops
//! every other read and write of the database, and measured here it cut durable write
//! throughput several times over. Every change is instead one compare-and-swap on one
//! mutable record (a user, an identity, a session), preceded by the immutable records it
//! will point to and followed by nothing that matters for correctness (see the module
//! documentation of [`store`](super)). Write order, for a crash at any point:
//!
//! - login: refresh record and indexes, then the session (a crash before leaves records
//!   that belong to no session);
//! - first login: identity, then user record (a crash between leaves an identity whose
//!   user record is created at the next login);
//! - rotation: successor record and index, then the session's compare-and-swap;
//! - sweep: a dead session's tokens and indexes, then the session itself.

use std::path::Path;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use sled::Tree;

use super::cache::Cache;
use super::codec::{decode, encode};
use super::flush::{self, GroupCommit};
use super::{Census, Family, Page, Restore, RotateOutcome, Store, StoreError, StoreResult};
use crate::config::StorageConfig;
use crate::model::{
    Identity, RefreshRecord, RetiredKey, Rotation, Session, SessionState, Sid, TokenHash, Uid,
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

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore").finish_non_exhaustive()
    }
}

fn io(e: sled::Error) -> StoreError {
    StoreError::Io(e.to_string())
}

/// What a read-modify-write does with the record it read.
enum Edit<T> {
    /// Replace it (or create it).
    Put(T),
    /// Leave it as it is; nothing is written.
    Leave,
}

/// Read-modify-write of one record, atomic against concurrent writers: `change` sees the
/// stored value (`None` if absent) and says what to write; if another writer changed
/// the record in between, it runs again on the new value.
fn edit<T, R>(
    tree: &Tree,
    key: &[u8],
    mut change: impl FnMut(Option<T>) -> StoreResult<(Edit<T>, R)>,
) -> StoreResult<R>
where
    T: Serialize + DeserializeOwned,
{
    loop {
        let old = tree.get(key).map_err(io)?;
        let value = old.as_deref().map(decode).transpose()?;
        let (edit, result) = change(value)?;
        let Edit::Put(new) = edit else {
            return Ok(result);
        };
        if tree
            .compare_and_swap(key, old, Some(encode(&new)))
            .map_err(io)?
            .is_ok()
        {
            return Ok(result);
        }
    }
}

/// The records of `tree` with keys after `after` (all of them without), in key order:
/// how every listing pages through a tree.
fn after(tree: &Tree, after: Option<&[u8]>) -> sled::Iter {
    match after {
        Some(key) => {
            tree.range::<&[u8], _>((std::ops::Bound::Excluded(key), std::ops::Bound::Unbounded))
        }
        None => tree.iter(),
    }
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
    /// The directory is created private and refused if it is not (see
    /// [`private`](super::private)).
    pub fn open(path: &Path, cache_bytes: u64) -> StoreResult<Self> {
        super::private::prepare(path)?;
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
            // The cache sizes of `[storage]`'s defaults, until `with_caches` says otherwise.
            user_cache: Cache::new(StorageConfig::default().user_cache_entries),
            session_cache: Cache::new(StorageConfig::default().session_cache_entries),
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

    /// Removes one dead session: its tokens and index entries first, the session record
    /// last and only if it is still the `stored` bytes (a crash half way leaves a dead
    /// session that the next sweep finishes).
    fn remove_session(&self, session: &Session, stored: &[u8]) -> StoreResult<bool> {
        for item in self.session_tokens.scan_prefix(session.sid.0) {
            let (key, _) = item.map_err(io)?;
            self.refresh.remove(&key[16..]).map_err(io)?;
            self.session_tokens.remove(&key).map_err(io)?;
        }
        self.uid_sessions
            .remove(uid_sid_key(&session.uid, session.sid))
            .map_err(io)?;
        let removed = self
            .sessions
            .compare_and_swap(session.sid.0, Some(stored), None::<&[u8]>)
            .map_err(io)?
            .is_ok();
        self.session_cache.invalidate(&session.sid);
        Ok(removed)
    }

    /// Writes a refresh-token record and its family index entry (both immutable).
    fn put_token(&self, sid: Sid, hash: TokenHash, issued_at: u64) -> StoreResult<()> {
        self.refresh
            .insert(hash.0, encode(&RefreshRecord { sid, issued_at }))
            .map_err(io)?;
        self.session_tokens
            .insert(&sid_token_key(sid, hash)[..], &[])
            .map_err(io)?;
        Ok(())
    }

    /// Writes a session, after its user index entry (the session is what makes its
    /// tokens count, so it goes last), and drops any cached copy.
    fn put_session(&self, session: &Session) -> StoreResult<()> {
        self.uid_sessions
            .insert(uid_sid_key(&session.uid, session.sid), &[])
            .map_err(io)?;
        self.sessions
            .insert(session.sid.0, encode(session))
            .map_err(io)?;
        self.session_cache.invalidate(&session.sid);
        Ok(())
    }

    /// Revokes `sid` if it is active; whether it was.
    fn revoke_one(&self, sid: Sid) -> StoreResult<bool> {
        let revoked = edit(&self.sessions, &sid.0, |stored: Option<Session>| {
            Ok(match stored {
                Some(mut session) if session.state == SessionState::Active => {
                    session.state = SessionState::Revoked;
                    (Edit::Put(session), true)
                }
                _ => (Edit::Leave, false),
            })
        })?;
        self.session_cache.invalidate(&sid);
        Ok(revoked)
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
        let user = edit(&self.users, uid.as_str().as_bytes(), |stored| {
            let mut user = stored.unwrap_or_else(|| UserRecord::new(uid.clone(), now));
            user.apply(patch, now);
            Ok((Edit::Put(user.clone()), user))
        })?;
        self.user_cache.invalidate(uid);
        self.commit.durable().await?;
        Ok(user)
    }

    async fn list_users(&self, after: Option<&Uid>, limit: usize) -> StoreResult<Page<UserRecord>> {
        let mut out = Vec::new();
        for item in self::after(&self.users, after.map(|a| a.as_str().as_bytes())).take(limit) {
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
        let uid = edit(
            &self.identities,
            openid.as_bytes(),
            |stored: Option<Identity>| {
                Ok(match stored {
                    Some(mut known) => {
                        if candidate.unionid.is_some() {
                            known.unionid.clone_from(&candidate.unionid);
                        }
                        known.session_key = candidate.session_key.clone();
                        let uid = known.uid.clone();
                        (Edit::Put(known), uid)
                    }
                    None => (Edit::Put(candidate.clone()), candidate.uid.clone()),
                })
            },
        )?;
        // The user record follows its identity; creating it when absent also completes a
        // first login that a crash cut between the two writes.
        edit(
            &self.users,
            uid.as_str().as_bytes(),
            |stored: Option<UserRecord>| {
                Ok(match stored {
                    Some(_) => (Edit::Leave, ()),
                    None => (Edit::Put(UserRecord::new(uid.clone(), now)), ()),
                })
            },
        )?;
        self.user_cache.invalidate(&uid);
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
        let mut out = Vec::new();
        for item in self::after(&self.sessions, after.as_ref().map(|a| &a.0[..])).take(limit) {
            let (_, bytes) = item.map_err(io)?;
            out.push(decode(&bytes)?);
        }
        Ok(out)
    }

    async fn refresh_record(&self, hash: TokenHash) -> StoreResult<Option<RefreshRecord>> {
        Self::get(&self.refresh, &hash.0)
    }

    async fn create_session(&self, session: &Session, evict: &[Sid]) -> StoreResult<()> {
        for &sid in evict {
            self.revoke_one(sid)?;
        }
        self.put_token(session.sid, session.current, session.created_at)?;
        self.put_session(session)?;
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
        // The successor is derived from the parent, so every contender writes the same
        // record here; only the session's compare-and-swap decides who rotated.
        self.put_token(sid, successor, now)?;
        let outcome = edit(&self.sessions, &sid.0, |stored: Option<Session>| {
            Ok(match stored {
                Some(mut session) if session.is_live(now) && session.current == parent => {
                    session.previous = Some(Rotation {
                        token: parent,
                        at: now,
                    });
                    session.current = successor;
                    session.last_used_at = now;
                    session.idle_expires_at = idle_expires_at;
                    (Edit::Put(session), RotateOutcome::Rotated)
                }
                stored => (Edit::Leave, RotateOutcome::NotCurrent(stored)),
            })
        })?;
        if outcome == RotateOutcome::Rotated {
            self.session_cache.invalidate(&sid);
            self.commit.durable().await?;
        }
        Ok(outcome)
    }

    async fn touch_session(&self, sid: Sid, now: u64, idle_expires_at: u64) -> StoreResult<bool> {
        let touched = edit(&self.sessions, &sid.0, |stored: Option<Session>| {
            Ok(match stored {
                Some(mut session) if session.is_live(now) => {
                    session.last_used_at = now;
                    session.idle_expires_at = idle_expires_at;
                    (Edit::Put(session), true)
                }
                _ => (Edit::Leave, false),
            })
        })?;
        if touched {
            self.session_cache.invalidate(&sid);
            self.commit.durable().await?;
        }
        Ok(touched)
    }

    async fn revoke_sessions(&self, sids: &[Sid]) -> StoreResult<usize> {
        let mut revoked = 0;
        for &sid in sids {
            if self.revoke_one(sid)? {
                revoked += 1;
            }
        }
        self.commit.durable().await?;
        Ok(revoked)
    }

    async fn sweep(&self, now: u64) -> StoreResult<usize> {
        // In pages, yielding between them, so a sweep of a large database never holds an
        // async worker for long.
        const PAGE: usize = 1024;
        let mut after: Option<Vec<u8>> = None;
        let mut removed = 0;
        loop {
            let mut dead = Vec::new();
            let mut last = None;
            {
                for item in self::after(&self.sessions, after.as_deref()).take(PAGE) {
                    let (key, bytes) = item.map_err(io)?;
                    let session: Session = decode(&bytes)?;
                    if !session.is_live(now) {
                        dead.push((session, bytes));
                    }
                    last = Some(key.to_vec());
                }
            }
            for (session, bytes) in &dead {
                if self.remove_session(session, bytes)? {
                    removed += 1;
                }
            }
            match last {
                Some(key) => after = Some(key),
                None => break,
            }
            tokio::task::yield_now().await;
        }
        if removed > 0 {
            self.commit.durable().await?;
        }
        Ok(removed)
    }

    async fn sync(&self) -> StoreResult<()> {
        self.commit.durable().await
    }

    async fn list_identities(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Page<(String, Identity)>> {
        let mut out = Vec::new();
        for item in self::after(&self.identities, after.map(str::as_bytes)).take(limit) {
            let (key, bytes) = item.map_err(io)?;
            let openid = String::from_utf8(key.to_vec())
                .map_err(|_| StoreError::Corrupt("an openid key is not UTF-8".into()))?;
            out.push((openid, decode(&bytes)?));
        }
        Ok(out)
    }

    async fn family(&self, sid: Sid) -> StoreResult<Option<Family>> {
        // Token records never change and are written before the session points at them:
        // read the index, then the session, then the records; if a rotation slipped in
        // between (the session's current token is not among those read), read again.
        for _ in 0..8 {
            let mut hashes = Vec::new();
            for item in self.session_tokens.scan_prefix(sid.0) {
                let (key, _) = item.map_err(io)?;
                let hash: [u8; 32] = key[16..]
                    .try_into()
                    .map_err(|_| StoreError::Corrupt("bad sid_tokenhash key".into()))?;
                hashes.push(TokenHash(hash));
            }
            let Some(session) = Self::get::<Session>(&self.sessions, &sid.0)? else {
                return Ok(None);
            };
            if !hashes.contains(&session.current) {
                continue;
            }
            let mut records = Vec::with_capacity(hashes.len());
            for hash in hashes {
                if let Some(record) = Self::get::<RefreshRecord>(&self.refresh, &hash.0)? {
                    records.push((hash, record));
                }
            }
            return Ok(Some((session, records)));
        }
        Err(StoreError::Io(format!(
            "session {sid} kept changing while it was read"
        )))
    }

    async fn restore(&self, batch: &Restore) -> StoreResult<()> {
        for user in &batch.users {
            self.users
                .insert(user.uid.as_str(), encode(user))
                .map_err(io)?;
            self.user_cache.invalidate(&user.uid);
        }
        for (openid, identity) in &batch.identities {
            self.identities
                .insert(openid.as_str(), encode(identity))
                .map_err(io)?;
        }
        for (session, records) in &batch.sessions {
            for (hash, record) in records {
                self.put_token(session.sid, *hash, record.issued_at)?;
            }
            self.put_session(session)?;
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

    async fn meta(&self, name: &str) -> StoreResult<Option<Vec<u8>>> {
        Ok(self.meta.get(name).map_err(io)?.map(|v| v.to_vec()))
    }

    async fn put_meta(&self, name: &str, value: Vec<u8>) -> StoreResult<()> {
        self.meta.insert(name, value).map_err(io)?;
        self.commit.durable().await
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
        loop {
            let replaced = self.meta.get(name).map_err(io)?;
            // First the retired list, holding the key about to be replaced (so tokens it
            // signed keep verifying whatever happens next), then the swap of the key.
            edit(
                &self.meta,
                retired_name.as_bytes(),
                |stored: Option<Vec<RetiredKey>>| {
                    let mut retired = stored.unwrap_or_default();
                    retired.retain(|k| k.retire_at > now);
                    if let Some(old) = &replaced
                        && !retired.iter().any(|k| k.key.expose() == &old[..])
                    {
                        retired.push(RetiredKey {
                            key: crate::secret::Secret::new(old.to_vec()),
                            retire_at,
                        });
                    }
                    Ok((Edit::Put(retired), ()))
                },
            )?;
            if self
                .meta
                .compare_and_swap(name, replaced.clone(), Some(fresh.as_slice()))
                .map_err(io)?
                .is_ok()
            {
                self.commit.durable().await?;
                return Ok(replaced.map(|v| v.to_vec()));
            }
        }
    }
}

/// Where the keys retired from `name` are kept.
fn retired_name(name: &str) -> String {
    format!("{name}.retired")
}
