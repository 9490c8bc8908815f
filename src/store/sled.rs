//! The sled backend: one database, one tree per mapping, group-committed writes.
//!
//! Trees, named "key_value" after what maps to what:
//!
//! | tree                | key                                        | value                      |
//! |---------------------|--------------------------------------------|----------------------------|
//! | `uid_user`          | uid                                        | [`UserRecord`]             |
//! | `openid_identity`   | openid                                     | [`Identity`]               |
//! | `sid_session`       | sid (16 bytes)                             | [`Session`]                |
//! | `uid_created_sid`   | uid ‖ 0x00 ‖ created_at (8 bytes, BE) ‖ sid | login order (8 bytes, BE)  |
//! | `meta`              | key name                                   | raw bytes (generated keys) |
//! | `meta`              | key name ‖ `.retired`                      | `Vec<`[`RetiredKey`]`>`    |
//! | `meta`              | `signing_keys`                             | `Vec<`[`SigningKeyRecord`]`>` |
//!
//! Uids never contain 0x00, so `uid ‖ 0x00` is an exact prefix for one user's sessions,
//! and the big-endian login time after it keeps them in creation order: the cap on live
//! sessions finds the oldest without reading the others. Logins within one second are
//! ordered by the entry's value, a counter that starts each process at the wall clock in
//! microseconds and counts up, so it rises from login to login across restarts (an entry
//! without one, from an upgraded database, counts as the oldest of its second). Refresh tokens have no records
//! of their own: a session is found by the id its tokens derive
//! ([`RefreshToken::sid`](crate::token::RefreshToken::sid)) and holds the hashes it
//! needs, so a renewal rewrites one record and the database does not grow with
//! renewals. Values go through [`codec`](super::codec).
//!
//! No sled transactions: a sled transaction takes a process-wide write lock that stops
//! every other read and write of the database, and measured here it cut durable write
//! throughput several times over. Every change is instead one compare-and-swap on one
//! mutable record (a user, an identity, a session), preceded by the index entries that
//! will point to it. Write order, for a crash at any point:
//!
//! - login: the user-index entry, then the session (a crash between leaves an entry that
//!   points at nothing; it is skipped, and removed by the next login of that user);
//! - first login: identity, then user record (a crash between leaves an identity whose
//!   user record is created at the next login);
//! - rotation, renewal, revocation: one compare-and-swap of the session;
//! - sweep: a dead session's index entry, then the session itself.

use std::path::Path;
use std::sync::Arc;

use sled::Tree;

use super::cache::Cache;
use super::codec::{Record, index_key, index_prefix, sid_of_index_key};
use super::flush::{self, GroupCommit};
use super::{Census, Page, Restore, RotateOutcome, Store, StoreError, StoreResult};
use crate::config::StorageConfig;
use crate::model::{
    Identity, RetiredKey, Rotation, Session, SessionState, Sid, SigningKeyRecord, TokenHash, Uid,
    UserPatch, UserRecord,
};

/// A sled database holding liveuser's trees.
pub struct SledStore {
    db: sled::Db,
    users: Tree,
    identities: Tree,
    sessions: Tree,
    uid_sessions: Tree,
    meta: Tree,
    commit: GroupCommit,
    user_cache: Cache<Uid, Arc<UserRecord>>,
    session_cache: Cache<Sid, Session>,
    /// The next login's order among the logins of its second (see the module docs).
    login_order: std::sync::atomic::AtomicU64,
    /// Session records read from sled past the cache (tests check what a login reads).
    #[cfg(test)]
    session_reads: std::sync::atomic::AtomicUsize,
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
fn edit<T: Record, R>(
    tree: &Tree,
    key: &[u8],
    mut change: impl FnMut(Option<T>) -> StoreResult<(Edit<T>, R)>,
) -> StoreResult<R> {
    loop {
        let old = tree.get(key).map_err(io)?;
        let value = old.as_deref().map(|v| T::decode(key, v)).transpose()?;
        let (edit, result) = change(value)?;
        let Edit::Put(new) = edit else {
            return Ok(result);
        };
        if tree
            .compare_and_swap(key, old, Some(new.encode()))
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

/// The idle expiry after a use at `now`: `idle_secs` later, never past the absolute one.
fn idle_expiry(session: &Session, now: u64, idle_secs: u64) -> u64 {
    now.saturating_add(idle_secs).min(session.expires_at)
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
        super::upgrade::to_current(&db)?;
        let tree = |name: &str| db.open_tree(name).map_err(io);
        Ok(SledStore {
            users: tree("uid_user")?,
            identities: tree("openid_identity")?,
            sessions: tree("sid_session")?,
            uid_sessions: tree("uid_created_sid")?,
            meta: tree("meta")?,
            commit: GroupCommit::start(db.clone()),
            db,
            // The cache sizes of `[storage]`'s defaults, until `with_caches` says otherwise.
            user_cache: Cache::new(StorageConfig::default().user_cache_entries),
            session_cache: Cache::new(StorageConfig::default().session_cache_entries),
            login_order: std::sync::atomic::AtomicU64::new(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_micros() as u64),
            ),
            #[cfg(test)]
            session_reads: Default::default(),
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

    /// Reports the duration and batch size of every group-commit flush to `observer`.
    pub fn observe_flushes(&self, observer: flush::FlushObserver) {
        self.commit.observe(observer);
    }

    fn get<T: Record>(tree: &Tree, key: &[u8]) -> StoreResult<Option<T>> {
        match tree.get(key).map_err(io)? {
            Some(bytes) => T::decode(key, &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// The stored session `sid`, past the cache.
    fn read_session(&self, sid: Sid) -> StoreResult<Option<Session>> {
        #[cfg(test)]
        self.session_reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self::get(&self.sessions, &sid.0)
    }

    /// Removes one dead session: its index entry first, the session record last and only
    /// if it is still the `stored` bytes (a crash half way leaves a dead session that the
    /// next sweep finishes).
    fn remove_session(&self, session: &Session, stored: &[u8]) -> StoreResult<bool> {
        self.uid_sessions.remove(index_key(session)).map_err(io)?;
        let removed = self
            .sessions
            .compare_and_swap(session.sid.0, Some(stored), None::<&[u8]>)
            .map_err(io)?
            .is_ok();
        self.session_cache.invalidate(&session.sid);
        Ok(removed)
    }

    /// Writes a session, after its user-index entry (an entry without its session is
    /// skipped by readers), and drops any cached copy. A session replaced under another
    /// owner or login time (an import) loses its old entry.
    fn put_session(&self, session: &Session) -> StoreResult<()> {
        let order = self
            .login_order
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.uid_sessions
            .insert(index_key(session), &order.to_be_bytes())
            .map_err(io)?;
        let old = self
            .sessions
            .insert(session.sid.0, session.encode())
            .map_err(io)?;
        if let Some(old) = old {
            let old = Session::decode(&session.sid.0, &old)?;
            if index_key(&old) != index_key(session) {
                self.uid_sessions.remove(index_key(&old)).map_err(io)?;
            }
        }
        self.session_cache.invalidate(&session.sid);
        Ok(())
    }

    /// Writes an imported session unless the stored one must stay
    /// ([`restores_over`](super::restores_over)), with a compare-and-swap, so a renewal
    /// or a revocation that lands in between is judged, not overwritten. Its user-index
    /// entry is written first, as at a login, and only when the stored session has no
    /// entry under that key already.
    fn restore_session(&self, session: &Session) -> StoreResult<()> {
        let entry = index_key(session);
        let mut entry_written = false;
        loop {
            let old = self.sessions.get(session.sid.0).map_err(io)?;
            let stored = old
                .as_deref()
                .map(|v| Session::decode(&session.sid.0, v))
                .transpose()?;
            let stored_entry = stored.as_ref().map(index_key);
            if let Some(stored) = &stored
                && !super::restores_over(session, stored)
            {
                if entry_written && stored_entry.as_ref() != Some(&entry) {
                    self.uid_sessions.remove(&entry).map_err(io)?;
                }
                return Ok(());
            }
            if !entry_written && stored_entry.as_ref() != Some(&entry) {
                let order = self
                    .login_order
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.uid_sessions
                    .insert(&entry, &order.to_be_bytes())
                    .map_err(io)?;
                entry_written = true;
            }
            let swapped = self
                .sessions
                .compare_and_swap(session.sid.0, old, Some(session.encode()))
                .map_err(io)?
                .is_ok();
            if swapped {
                if let Some(stored_entry) = stored_entry
                    && stored_entry != entry
                {
                    self.uid_sessions.remove(stored_entry).map_err(io)?;
                }
                self.session_cache.invalidate(&session.sid);
                return Ok(());
            }
        }
    }

    /// Makes room for one more live session of `session.uid`: revokes the oldest of its
    /// sessions live at `session.created_at` so that at most `max_live - 1` remain live.
    ///
    /// The index is read as keys only. While it holds fewer entries than `max_live`, the
    /// cap cannot be reached and no session is read: a returning user's login costs one
    /// short key scan. Otherwise the sessions are read newest first: the newest
    /// `max_live - 1` live ones stay, every older live one is revoked. (Entries of dead
    /// sessions count until the sweep removes them; that only makes this read more.)
    /// Returns how many it revoked.
    fn evict_for(&self, session: &Session, max_live: usize) -> StoreResult<usize> {
        let entries = self.index_of(&session.uid)?;
        if entries.len() < max_live {
            return Ok(0);
        }
        let (mut kept, mut revoked) = (0, 0);
        for key in entries.iter().rev() {
            let sid = sid_of_index_key(key)?;
            match self.read_session(sid)? {
                // Left by a login a crash cut short: it points at nothing.
                None => {
                    self.uid_sessions.remove(key).map_err(io)?;
                }
                Some(old) if old.is_live(session.created_at) => {
                    if kept + 1 < max_live {
                        kept += 1;
                    } else if self.revoke_one(sid)? {
                        revoked += 1;
                    }
                }
                Some(_) => {}
            }
        }
        Ok(revoked)
    }

    /// The index entries of `uid`'s sessions in login order: by the second of the login
    /// (the key), then by the login order within it (the value).
    fn index_of(&self, uid: &Uid) -> StoreResult<Vec<sled::IVec>> {
        let prefix = index_prefix(uid);
        let mut entries = Vec::new();
        for item in self.uid_sessions.scan_prefix(&prefix) {
            let (key, value) = item.map_err(io)?;
            let order = <[u8; 8]>::try_from(value.as_ref()).map_or(0, u64::from_be_bytes);
            entries.push((key, order));
        }
        // The scan is in key order already; only logins within one second move.
        let second = prefix.len()..prefix.len() + 8;
        entries.sort_by(|(a, x), (b, y)| {
            a.get(second.clone())
                .cmp(&b.get(second.clone()))
                .then(x.cmp(y))
        });
        Ok(entries.into_iter().map(|(key, _)| key).collect())
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
            let (key, bytes) = item.map_err(io)?;
            out.push(UserRecord::decode(&key, &bytes)?);
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
                    // A returning user: rewritten only if WeChat told us something new.
                    Some(mut known) => {
                        let mut changed = false;
                        if candidate.unionid.is_some() && known.unionid != candidate.unionid {
                            known.unionid.clone_from(&candidate.unionid);
                            changed = true;
                        }
                        if known.session_key != candidate.session_key {
                            known.session_key = candidate.session_key.clone();
                            changed = true;
                        }
                        let uid = known.uid.clone();
                        (
                            if changed {
                                Edit::Put(known)
                            } else {
                                Edit::Leave
                            },
                            uid,
                        )
                    }
                    None => (Edit::Put(candidate.clone()), candidate.uid.clone()),
                })
            },
        )?;
        // The user record follows its identity; creating it when absent also completes a
        // first login that a crash cut between the two writes.
        let created = edit(
            &self.users,
            uid.as_str().as_bytes(),
            |stored: Option<UserRecord>| {
                Ok(match stored {
                    Some(_) => (Edit::Leave, false),
                    None => (Edit::Put(UserRecord::new(uid.clone(), now)), true),
                })
            },
        )?;
        if created {
            self.user_cache.invalidate(&uid);
        }
        // Not flushed here: the login's session follows at once, and its flush makes
        // these writes durable too (one flush per login instead of two).
        Ok(uid)
    }

    async fn session(&self, sid: Sid) -> StoreResult<Option<Session>> {
        self.session_cache
            .get_or_load(&sid, || self.read_session(sid))
    }

    async fn sessions_of(&self, uid: &Uid) -> StoreResult<Vec<Session>> {
        let mut out: Vec<Session> = Vec::new();
        for key in self.index_of(uid)? {
            let sid = sid_of_index_key(&key)?;
            if let Some(session) = self.read_session(sid)?
                && session.uid == *uid
            {
                out.push(session);
            }
        }
        Ok(out)
    }

    async fn list_sessions(&self, after: Option<Sid>, limit: usize) -> StoreResult<Page<Session>> {
        let mut out = Vec::new();
        for item in self::after(&self.sessions, after.as_ref().map(|a| &a.0[..])).take(limit) {
            let (key, bytes) = item.map_err(io)?;
            out.push(Session::decode(&key, &bytes)?);
        }
        Ok(out)
    }

    async fn create_session(
        &self,
        session: &Session,
        max_live: Option<usize>,
    ) -> StoreResult<usize> {
        let revoked = match max_live {
            Some(n) => self.evict_for(session, n)?,
            None => 0,
        };
        self.put_session(session)?;
        self.commit.durable().await?;
        Ok(revoked)
    }

    async fn rotate(
        &self,
        sid: Sid,
        presented: TokenHash,
        successor: TokenHash,
        now_ms: u64,
        idle_secs: u64,
    ) -> StoreResult<RotateOutcome> {
        let now = now_ms / 1000;
        let outcome = edit(&self.sessions, &sid.0, |stored: Option<Session>| {
            Ok(match stored {
                Some(mut session) if session.is_live(now) && session.current == presented => {
                    session.previous = Some(Rotation {
                        token: presented,
                        rotated_at_ms: now_ms,
                    });
                    session.current = successor;
                    session.generation = session.generation.saturating_add(1);
                    session.last_used_at = now;
                    session.idle_expires_at = idle_expiry(&session, now, idle_secs);
                    (Edit::Put(session.clone()), RotateOutcome::Rotated(session))
                }
                stored => (
                    Edit::Leave,
                    RotateOutcome::NotCurrent {
                        stored,
                        at_ms: now_ms,
                    },
                ),
            })
        })?;
        if let RotateOutcome::Rotated(_) = outcome {
            self.session_cache.invalidate(&sid);
            self.commit.durable().await?;
        }
        Ok(outcome)
    }

    async fn touch(
        &self,
        sid: Sid,
        presented: TokenHash,
        now_ms: u64,
        idle_secs: u64,
    ) -> StoreResult<Option<Session>> {
        let now = now_ms / 1000;
        let touched = edit(&self.sessions, &sid.0, |stored: Option<Session>| {
            Ok(match stored {
                Some(mut session) if session.is_live(now) && session.current == presented => {
                    session.last_used_at = now;
                    session.idle_expires_at = idle_expiry(&session, now, idle_secs);
                    (Edit::Put(session.clone()), Some(session))
                }
                _ => (Edit::Leave, None),
            })
        })?;
        if touched.is_some() {
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
                    let session = Session::decode(&key, &bytes)?;
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
            out.push((openid, Identity::decode(&key, &bytes)?));
        }
        Ok(out)
    }

    async fn restore(&self, batch: &Restore) -> StoreResult<()> {
        for user in &batch.users {
            self.users
                .insert(user.uid.as_str(), user.encode())
                .map_err(io)?;
            self.user_cache.invalidate(&user.uid);
        }
        for (openid, identity) in &batch.identities {
            self.identities
                .insert(openid.as_str(), identity.encode())
                .map_err(io)?;
        }
        for session in &batch.sessions {
            self.restore_session(session)?;
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
        for item in self.sessions.iter() {
            let (key, bytes) = item.map_err(io)?;
            let session = Session::decode(&key, &bytes)?;
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

    async fn key(&self, name: &str) -> StoreResult<Option<Vec<u8>>> {
        Ok(self.meta.get(name).map_err(io)?.map(|v| v.to_vec()))
    }

    async fn signing_keys(&self) -> StoreResult<Vec<SigningKeyRecord>> {
        Ok(Self::get(&self.meta, SIGNING_KEYS.as_bytes())?.unwrap_or_default())
    }

    async fn swap_signing_keys(
        &self,
        expected: &[SigningKeyRecord],
        keys: &[SigningKeyRecord],
    ) -> StoreResult<bool> {
        let stored = self.meta.get(SIGNING_KEYS).map_err(io)?;
        let current: Vec<SigningKeyRecord> = match &stored {
            Some(bytes) => Record::decode(SIGNING_KEYS.as_bytes(), bytes)?,
            None => Vec::new(),
        };
        if current != expected {
            return Ok(false);
        }
        let swapped = self
            .meta
            .compare_and_swap(SIGNING_KEYS, stored, Some(keys.to_vec().encode()))
            .map_err(io)?
            .is_ok();
        if swapped {
            self.commit.durable().await?;
        }
        Ok(swapped)
    }
}

/// Where the generated signing keys are kept, in the `meta` tree.
const SIGNING_KEYS: &str = "signing_keys";

/// Where the keys retired from `name` are kept.
fn retired_name(name: &str) -> String {
    format!("{name}.retired")
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;

    const T0: u64 = 1_700_000_000;

    fn store() -> (tempfile::TempDir, SledStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(&dir.path().join("db"), 1 << 20)
            .unwrap()
            .with_caches(0, 0);
        (dir, store)
    }

    fn session(uid: &str, n: u8, created_at: u64) -> Session {
        Session {
            sid: Sid([n; 16]),
            uid: Uid::parse(uid).unwrap(),
            created_at,
            last_used_at: created_at,
            expires_at: created_at + 1000,
            idle_expires_at: created_at + 500,
            state: SessionState::Active,
            generation: 0,
            current: TokenHash([n; 32]),
            previous: None,
        }
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn a_users_sessions_are_in_login_second_then_login_order() {
        let (_dir, store) = store();
        // Two logins in one second, the later one with the smaller id; and a login of an
        // earlier second whose counter is the largest (a wall clock stepped back between
        // two runs of the server): the second decides first, the counter within it.
        let (later, earlier, before) = (
            session("u", 1, T0),
            session("u", 2, T0),
            session("u", 3, T0 - 60),
        );
        for (s, order) in [(&later, 20u64), (&earlier, 10), (&before, 30)] {
            store
                .uid_sessions
                .insert(index_key(s), &order.to_be_bytes())
                .unwrap();
        }
        let sids: Vec<u8> = store
            .index_of(&Uid::parse("u").unwrap())
            .unwrap()
            .iter()
            .map(|key| sid_of_index_key(key).unwrap().0[0])
            .collect();
        assert_eq!(sids, [3, 2, 1]);
    }

    fn live(store: &SledStore, uid: &str, now: u64) -> Vec<u8> {
        block_on(store.sessions_of(&Uid::parse(uid).unwrap()))
            .unwrap()
            .iter()
            .filter(|s| s.is_live(now))
            .map(|s| s.sid.0[0])
            .collect()
    }

    #[test]
    fn a_login_under_the_cap_reads_no_session_of_the_user() {
        let (_dir, store) = store();
        for n in 1..=10 {
            block_on(store.create_session(&session("u", n, T0 + n as u64), Some(50))).unwrap();
        }
        assert_eq!(store.session_reads.load(Ordering::Relaxed), 0);
        assert_eq!(live(&store, "u", T0 + 20).len(), 10);
    }

    #[test]
    fn the_cap_revokes_the_oldest_live_sessions_reading_only_as_many() {
        let (_dir, store) = store();
        for n in 1..=3 {
            let revoked =
                block_on(store.create_session(&session("u", n, T0 + n as u64), Some(3))).unwrap();
            assert_eq!(revoked, 0);
        }
        block_on(store.create_session(&session("other", 9, T0), Some(3))).unwrap();
        let reads = store.session_reads.load(Ordering::Relaxed);
        let revoked = block_on(store.create_session(&session("u", 4, T0 + 4), Some(3))).unwrap();
        assert_eq!(revoked, 1);
        // At the cap, the user's sessions are read (three here), nobody else's.
        assert_eq!(store.session_reads.load(Ordering::Relaxed) - reads, 3);
        assert_eq!(live(&store, "u", T0 + 5), vec![2, 3, 4]);
        assert_eq!(
            live(&store, "other", T0 + 5),
            vec![9],
            "another user is untouched"
        );
        // A cap of one: each login leaves only itself.
        let revoked = block_on(store.create_session(&session("u", 5, T0 + 5), Some(1))).unwrap();
        assert_eq!(revoked, 3);
        assert_eq!(live(&store, "u", T0 + 6), vec![5]);
    }

    #[test]
    fn a_dead_session_newer_than_a_live_one_frees_its_slot_without_evicting_the_live_one() {
        let (_dir, store) = store();
        block_on(store.create_session(&session("u", 1, T0), None)).unwrap();
        block_on(store.create_session(&session("u", 2, T0 + 1), None)).unwrap();
        block_on(store.revoke_sessions(&[Sid([2; 16])])).unwrap();
        // Two entries, one live (the older): a cap of 2 leaves it live with the new one.
        let revoked = block_on(store.create_session(&session("u", 3, T0 + 2), Some(2))).unwrap();
        assert_eq!(revoked, 0);
        assert_eq!(live(&store, "u", T0 + 3), vec![1, 3]);
    }

    #[test]
    fn dead_sessions_count_toward_no_cap_and_are_not_revoked_again() {
        let (_dir, store) = store();
        block_on(store.create_session(&session("u", 1, T0), None)).unwrap();
        block_on(store.create_session(&session("u", 2, T0 + 1), None)).unwrap();
        block_on(store.revoke_sessions(&[Sid([2; 16])])).unwrap();
        // Session 1 has idled out by T0 + 600, session 2 is revoked: two slots free.
        let later = T0 + 600;
        let revoked = block_on(store.create_session(&session("u", 3, later), Some(2))).unwrap();
        assert_eq!(revoked, 0);
        let revoked = block_on(store.create_session(&session("u", 4, later + 1), Some(2))).unwrap();
        assert_eq!(revoked, 0, "two live with the new one");
        assert_eq!(live(&store, "u", later + 2), vec![3, 4]);
    }

    #[test]
    fn an_index_entry_left_by_a_cut_login_points_at_nothing_and_is_cleaned_up() {
        let (_dir, store) = store();
        let ghost = session("u", 1, T0);
        store.uid_sessions.insert(index_key(&ghost), &[]).unwrap();
        assert!(block_on(store.sessions_of(&ghost.uid)).unwrap().is_empty());
        let revoked = block_on(store.create_session(&session("u", 2, T0 + 1), Some(1))).unwrap();
        assert_eq!(revoked, 0);
        assert_eq!(store.uid_sessions.len(), 1, "the dangling entry is gone");
    }

    #[test]
    fn rotate_swaps_only_the_current_token_of_a_live_session() {
        let (_dir, store) = store();
        let s = session("u", 1, T0);
        block_on(store.create_session(&s, None)).unwrap();
        let now_ms = (T0 + 100) * 1000 + 250;
        let next = TokenHash([2; 32]);
        let RotateOutcome::Rotated(rotated) =
            block_on(store.rotate(s.sid, s.current, next, now_ms, 300)).unwrap()
        else {
            panic!("not rotated")
        };
        assert_eq!(rotated.current, next);
        assert_eq!(rotated.generation, 1);
        assert_eq!(
            rotated.previous,
            Some(Rotation {
                token: s.current,
                rotated_at_ms: now_ms
            })
        );
        assert_eq!(rotated.last_used_at, T0 + 100);
        assert_eq!(rotated.idle_expires_at, T0 + 400);
        assert_eq!(
            block_on(store.session(s.sid)).unwrap(),
            Some(rotated.clone())
        );
        // The idle expiry never passes the absolute one.
        let late = (T0 + 350) * 1000;
        let RotateOutcome::Rotated(capped) =
            block_on(store.rotate(s.sid, next, TokenHash([3; 32]), late, 10_000)).unwrap()
        else {
            panic!("not rotated")
        };
        assert_eq!(capped.idle_expires_at, s.expires_at);
        // The retired token no longer rotates; the answer is the session as stored.
        assert_eq!(
            block_on(store.rotate(s.sid, next, TokenHash([4; 32]), late, 300)).unwrap(),
            RotateOutcome::NotCurrent {
                stored: Some(capped.clone()),
                at_ms: late
            }
        );
        // Nor does the current one once the session is dead.
        let dead = s.expires_at * 1000;
        assert_eq!(
            block_on(store.rotate(s.sid, capped.current, TokenHash([4; 32]), dead, 300)).unwrap(),
            RotateOutcome::NotCurrent {
                stored: Some(capped),
                at_ms: dead
            }
        );
        assert_eq!(
            block_on(store.rotate(Sid([7; 16]), next, next, now_ms, 300)).unwrap(),
            RotateOutcome::NotCurrent {
                stored: None,
                at_ms: now_ms
            }
        );
    }

    #[test]
    fn touch_needs_the_current_token_and_a_live_session() {
        let (_dir, store) = store();
        let s = session("u", 1, T0);
        block_on(store.create_session(&s, None)).unwrap();
        let at = (T0 + 10) * 1000;
        assert_eq!(
            block_on(store.touch(s.sid, TokenHash([9; 32]), at, 300)).unwrap(),
            None
        );
        let touched = block_on(store.touch(s.sid, s.current, at, 300))
            .unwrap()
            .unwrap();
        assert_eq!(touched.last_used_at, T0 + 10);
        assert_eq!(touched.idle_expires_at, T0 + 310);
        assert_eq!(touched.generation, 0);
        block_on(store.revoke_sessions(&[s.sid])).unwrap();
        assert_eq!(
            block_on(store.touch(s.sid, s.current, at, 300)).unwrap(),
            None
        );
    }

    #[test]
    fn the_sweep_removes_dead_sessions_with_their_index_entries() {
        let (_dir, store) = store();
        block_on(store.create_session(&session("u", 1, T0), None)).unwrap();
        block_on(store.create_session(&session("u", 2, T0 + 400), None)).unwrap();
        assert_eq!(block_on(store.sweep(T0 + 600)).unwrap(), 1);
        assert_eq!(store.uid_sessions.len(), 1);
        assert_eq!(live(&store, "u", T0 + 600), vec![2]);
    }

    fn restore_one(store: &SledStore, session: Session) {
        block_on(store.restore(&Restore {
            sessions: vec![session],
            ..Restore::default()
        }))
        .unwrap();
    }

    #[test]
    fn a_restored_session_with_another_login_time_leaves_no_stale_index_entry() {
        let (_dir, store) = store();
        block_on(store.create_session(&session("u", 1, T0), None)).unwrap();
        restore_one(&store, session("u", 1, T0 + 5));
        assert_eq!(live(&store, "u", T0 + 6), vec![1]);
        assert_eq!(store.uid_sessions.len(), 1);
        let stored = store.read_session(Sid([1; 16])).unwrap().unwrap();
        assert_eq!(stored.created_at, T0 + 5);
    }

    #[test]
    fn a_restored_session_that_must_stay_as_stored_leaves_no_index_entry() {
        let (_dir, store) = store();
        let mine = session("u", 1, T0);
        block_on(store.create_session(&mine, None)).unwrap();
        // Another owner, and an older copy of the session: neither is written.
        restore_one(&store, session("v", 1, T0 + 5));
        let mut renewed = mine.clone();
        renewed.generation = 3;
        restore_one(&store, renewed.clone());
        let mut older = session("u", 1, T0 - 5);
        older.generation = 2;
        restore_one(&store, older);
        assert!(live(&store, "v", T0 + 6).is_empty());
        assert_eq!(live(&store, "u", T0 + 6), vec![1]);
        assert_eq!(store.uid_sessions.len(), 1);
        assert_eq!(store.read_session(Sid([1; 16])).unwrap(), Some(renewed));
    }

    #[test]
    fn a_returning_login_rewrites_an_identity_only_when_it_changed() {
        let (_dir, store) = store();
        let identity = |sk: &str, union: Option<&str>| Identity {
            uid: Uid::parse("u").unwrap(),
            unionid: union.map(str::to_string),
            session_key: crate::secret::Secret::new(sk.into()),
        };
        block_on(store.upsert_identity("o", identity("k1", None), T0)).unwrap();
        let stored = || store.identities.get("o").unwrap().unwrap();
        let first = stored();
        // Same session_key, no unionid given: nothing to write.
        block_on(store.upsert_identity("o", identity("k1", None), T0 + 1)).unwrap();
        assert_eq!(stored(), first);
        let checksum = store.db.checksum().unwrap();
        block_on(store.upsert_identity("o", identity("k1", None), T0 + 2)).unwrap();
        assert_eq!(store.db.checksum().unwrap(), checksum, "no write at all");
        // A new session_key or unionid is written; the uid never changes.
        let other = Identity {
            uid: Uid::parse("someone-else").unwrap(),
            ..identity("k2", Some("un"))
        };
        let uid = block_on(store.upsert_identity("o", other, T0 + 3)).unwrap();
        assert_eq!(uid.as_str(), "u");
        let now = Identity::decode(b"o", &stored()).unwrap();
        assert_eq!(now.unionid.as_deref(), Some("un"));
        assert_eq!(now.session_key.expose(), "k2");
    }
}
