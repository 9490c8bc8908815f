//! The store chosen at run time by `storage.backend`, behind one type.
//!
//! The service, the HTTP layer and the admin operations are generic over [`Store`]; the
//! server and the CLI pick the backend from the configuration, so they hold an
//! [`AnyStore`] and every call dispatches with one `match` — no boxing, and nothing above
//! the store knows which database it has.

use std::sync::Arc;

use tokio::sync::watch;

use super::postgres::PgStore;
use super::sled::SledStore;
use super::{Census, FlushObserver, Page, Restore, RotateOutcome, Store, StoreResult};
use crate::model::{
    Identity, RetiredKey, Session, Sid, SigningKeyRecord, TokenHash, Uid, UserPatch, UserRecord,
};

/// Either backend.
#[derive(Debug)]
pub enum AnyStore {
    /// The embedded sled database.
    Sled(SledStore),
    /// A PostgreSQL database shared with other instances.
    Postgres(PgStore),
}

macro_rules! dispatch {
    ($self:ident, $store:ident => $call:expr) => {
        match $self {
            AnyStore::Sled($store) => $call,
            AnyStore::Postgres($store) => $call,
        }
    };
}

impl AnyStore {
    /// Makes everything written so far durable now (sled: a flush; PostgreSQL: nothing
    /// to do, every call commits).
    pub fn flush(&self) -> StoreResult<()> {
        match self {
            AnyStore::Sled(s) => s.flush(),
            AnyStore::Postgres(_) => Ok(()),
        }
    }

    /// Reports the duration of every group-commit flush (sled only).
    pub fn observe_flushes(&self, observer: FlushObserver) {
        if let AnyStore::Sled(s) = self {
            s.observe_flushes(observer);
        }
    }

    /// Told whenever another instance or the CLI may have changed the signing keys;
    /// `None` when no other process can (sled).
    pub fn key_changes(&self) -> Option<watch::Receiver<u64>> {
        match self {
            AnyStore::Sled(_) => None,
            AnyStore::Postgres(s) => Some(s.key_changes()),
        }
    }

    /// Whether this is the PostgreSQL backend (several instances may share it).
    pub fn is_shared(&self) -> bool {
        matches!(self, AnyStore::Postgres(_))
    }
}

impl Store for AnyStore {
    async fn users(&self, uids: &[Uid]) -> StoreResult<Vec<Arc<UserRecord>>> {
        dispatch!(self, s => s.users(uids).await)
    }

    async fn update_user(&self, uid: &Uid, patch: &UserPatch, now: u64) -> StoreResult<UserRecord> {
        dispatch!(self, s => s.update_user(uid, patch, now).await)
    }

    async fn list_users(&self, after: Option<&Uid>, limit: usize) -> StoreResult<Page<UserRecord>> {
        dispatch!(self, s => s.list_users(after, limit).await)
    }

    async fn upsert_identity(
        &self,
        openid: &str,
        candidate: Identity,
        now: u64,
    ) -> StoreResult<Uid> {
        dispatch!(self, s => s.upsert_identity(openid, candidate, now).await)
    }

    async fn session(&self, sid: Sid) -> StoreResult<Option<Session>> {
        dispatch!(self, s => s.session(sid).await)
    }

    async fn sessions_of(&self, uid: &Uid) -> StoreResult<Vec<Session>> {
        dispatch!(self, s => s.sessions_of(uid).await)
    }

    async fn list_sessions(&self, after: Option<Sid>, limit: usize) -> StoreResult<Page<Session>> {
        dispatch!(self, s => s.list_sessions(after, limit).await)
    }

    async fn create_session(
        &self,
        session: &Session,
        max_live: Option<usize>,
    ) -> StoreResult<usize> {
        dispatch!(self, s => s.create_session(session, max_live).await)
    }

    async fn rotate(
        &self,
        sid: Sid,
        presented: TokenHash,
        successor: TokenHash,
        now_ms: u64,
        idle_secs: u64,
    ) -> StoreResult<RotateOutcome> {
        dispatch!(self, s => s.rotate(sid, presented, successor, now_ms, idle_secs).await)
    }

    async fn touch(
        &self,
        sid: Sid,
        presented: TokenHash,
        now_ms: u64,
        idle_secs: u64,
    ) -> StoreResult<Option<Session>> {
        dispatch!(self, s => s.touch(sid, presented, now_ms, idle_secs).await)
    }

    async fn revoke_sessions(&self, sids: &[Sid]) -> StoreResult<usize> {
        dispatch!(self, s => s.revoke_sessions(sids).await)
    }

    async fn sweep(&self, now: u64) -> StoreResult<usize> {
        dispatch!(self, s => s.sweep(now).await)
    }

    async fn sync(&self) -> StoreResult<()> {
        dispatch!(self, s => s.sync().await)
    }

    async fn list_identities(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Page<(String, Identity)>> {
        dispatch!(self, s => s.list_identities(after, limit).await)
    }

    async fn restore(&self, batch: &Restore) -> StoreResult<()> {
        dispatch!(self, s => s.restore(batch).await)
    }

    async fn is_empty(&self) -> StoreResult<bool> {
        dispatch!(self, s => s.is_empty().await)
    }

    async fn census(&self, now: u64) -> StoreResult<Census> {
        dispatch!(self, s => s.census(now).await)
    }

    async fn key_or_init(
        &self,
        name: &str,
        generate: impl FnOnce() -> Vec<u8> + Send,
    ) -> StoreResult<Vec<u8>> {
        dispatch!(self, s => s.key_or_init(name, generate).await)
    }

    async fn meta(&self, name: &str) -> StoreResult<Option<Vec<u8>>> {
        dispatch!(self, s => s.meta(name).await)
    }

    async fn put_meta(&self, name: &str, value: Vec<u8>) -> StoreResult<()> {
        dispatch!(self, s => s.put_meta(name, value).await)
    }

    async fn retired_keys(&self, name: &str) -> StoreResult<Vec<RetiredKey>> {
        dispatch!(self, s => s.retired_keys(name).await)
    }

    async fn rotate_key(
        &self,
        name: &str,
        fresh: Vec<u8>,
        retire_at: u64,
        now: u64,
    ) -> StoreResult<Option<Vec<u8>>> {
        dispatch!(self, s => s.rotate_key(name, fresh, retire_at, now).await)
    }

    async fn key(&self, name: &str) -> StoreResult<Option<Vec<u8>>> {
        dispatch!(self, s => s.key(name).await)
    }

    async fn signing_keys(&self) -> StoreResult<Vec<SigningKeyRecord>> {
        dispatch!(self, s => s.signing_keys().await)
    }

    async fn swap_signing_keys(
        &self,
        expected: &[SigningKeyRecord],
        keys: &[SigningKeyRecord],
    ) -> StoreResult<bool> {
        dispatch!(self, s => s.swap_signing_keys(expected, keys).await)
    }

    fn database_up(&self) -> Option<bool> {
        dispatch!(self, s => s.database_up())
    }
}
