//! Storage behind a narrow interface: users, identities, sessions.
//!
//! The service logic talks only to the [`Store`] trait. Every write method returns once
//! the write is durable. Decisions (who may rotate, when a token is reused, which
//! sessions to evict) belong to the service; a store offers the atomic steps those
//! decisions need — notably [`Store::rotate`], a compare-and-swap on the session's
//! current token — so another backend (PostgreSQL for several instances) implements the
//! same steps with its own transactions and the service does not change.
//!
//! The data is shaped so that every step changes one mutable record: a session holds
//! its family's state (current token, the last rotation), and refresh-token records are
//! written once, before the session points at them, and never changed. A step is then
//! atomic as a single compare-and-swap, and the records written before it are harmless
//! if a crash stops it half way (they belong to no session yet, or to a dead one, and are
//! swept).

mod cache;
mod codec;
mod flush;
pub mod private;
mod sled;

use std::future::Future;
use std::sync::Arc;

use crate::model::{
    Identity, RefreshRecord, RetiredKey, Session, Sid, TokenHash, Uid, UserPatch, UserRecord,
};

pub use self::flush::FlushObserver;
pub use self::sled::SledStore;

use crate::config::StorageConfig;

/// Opens the database `[storage]` describes, with its page cache and read caches: the one
/// way the server and the admin commands open storage.
pub fn open(storage: &StorageConfig) -> StoreResult<SledStore> {
    SledStore::open(&storage.path, storage.cache_capacity_bytes)
        .map(|store| store.with_caches(storage.user_cache_entries, storage.session_cache_entries))
}

/// A storage failure. The message never holds a token or a secret.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The disk or the database engine failed (full disk, read-only directory …).
    #[error("storage I/O failed: {0}")]
    Io(String),
    /// A stored record could not be decoded.
    #[error("a stored record is corrupt: {0}")]
    Corrupt(String),
    /// Another process holds the database open (the server is running).
    #[error("the database is in use by another process")]
    Locked,
    /// The database directory, or something in it, is open to other users (see
    /// [`private`]); nothing was opened.
    #[error(
        "{path} is open to other users (mode {mode:04o}); liveuser opens only a database \
         private to its user: run `chmod -R go-rwx {root}`"
    )]
    Exposed {
        /// The file or directory with a group or other permission bit.
        path: String,
        /// Its permission bits.
        mode: u32,
        /// The database directory, for the fix.
        root: String,
    },
}

/// What [`Store::rotate`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RotateOutcome {
    /// The presented token was current; it is now retired and the successor is current.
    Rotated,
    /// The presented token was no longer current or its session no longer active
    /// (another request rotated or revoked it first); nothing was written. Carries the
    /// session as the database holds it, which a cached read may not show yet.
    NotCurrent(Option<Session>),
}

/// A page of records and the key to continue after.
pub type Page<T> = Vec<T>;

/// A session with every refresh-token record of its family, read consistently.
pub type Family = (Session, Vec<(TokenHash, RefreshRecord)>);

/// Records to write as they are (import): each replaces a record with the same key.
#[derive(Debug, Clone, Default)]
pub struct Restore {
    /// User records.
    pub users: Vec<UserRecord>,
    /// Identities under their openid.
    pub identities: Vec<(String, Identity)>,
    /// Sessions with their refresh-token records.
    pub sessions: Vec<Family>,
}

impl Restore {
    /// How many records the batch holds.
    pub fn len(&self) -> usize {
        self.users.len() + self.identities.len() + self.sessions.len()
    }

    /// Whether the batch holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Counts for the metrics: stored users and sessions live at the time of counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Census {
    /// Stored user records.
    pub users: u64,
    /// Sessions usable at the time of counting.
    pub sessions_live: u64,
}

/// Result of a storage call.
pub type StoreResult<T> = Result<T, StoreError>;

/// The operations the service needs, each atomic, each write durable on return.
pub trait Store: Send + Sync + 'static {
    // ----- users -----

    /// The records of `uids` that exist, in the order given (duplicates are the caller's
    /// business).
    fn users(&self, uids: &[Uid])
    -> impl Future<Output = StoreResult<Vec<Arc<UserRecord>>>> + Send;

    /// Applies `patch` to `uid`'s record (creating it if absent) with `update_at = now`,
    /// atomically against concurrent writers, and returns the stored record.
    fn update_user(
        &self,
        uid: &Uid,
        patch: &UserPatch,
        now: u64,
    ) -> impl Future<Output = StoreResult<UserRecord>> + Send;

    /// Up to `limit` users with uid greater than `after`, in uid order.
    fn list_users(
        &self,
        after: Option<&Uid>,
        limit: usize,
    ) -> impl Future<Output = StoreResult<Page<UserRecord>>> + Send;

    // ----- identities -----

    /// The uid for `openid`. If the openid is known, its unionid (when given) and
    /// session_key are updated and its existing uid returned. If not, `candidate` is stored
    /// and an empty user record for `candidate.uid` created, in one transaction.
    fn upsert_identity(
        &self,
        openid: &str,
        candidate: Identity,
        now: u64,
    ) -> impl Future<Output = StoreResult<Uid>> + Send;

    // ----- sessions -----

    /// The session `sid`, live or not.
    fn session(&self, sid: Sid) -> impl Future<Output = StoreResult<Option<Session>>> + Send;

    /// Every stored session of `uid`, oldest first.
    fn sessions_of(&self, uid: &Uid) -> impl Future<Output = StoreResult<Vec<Session>>> + Send;

    /// Up to `limit` stored sessions with sid greater than `after`, in sid order.
    fn list_sessions(
        &self,
        after: Option<Sid>,
        limit: usize,
    ) -> impl Future<Output = StoreResult<Page<Session>>> + Send;

    /// The refresh token stored under `hash`.
    fn refresh_record(
        &self,
        hash: TokenHash,
    ) -> impl Future<Output = StoreResult<Option<RefreshRecord>>> + Send;

    /// Revokes the sessions in `evict`, then creates `session` with its first refresh
    /// token (`session.current`).
    fn create_session(
        &self,
        session: &Session,
        evict: &[Sid],
    ) -> impl Future<Output = StoreResult<()>> + Send;

    /// Compare-and-swap rotation: if `parent` is still the current token of session `sid`
    /// and the session is live at `now`, make `successor` current, remember `parent` as
    /// the last rotation, and set the last use and idle expiry — one atomic change.
    fn rotate(
        &self,
        sid: Sid,
        parent: TokenHash,
        successor: TokenHash,
        now: u64,
        idle_expires_at: u64,
    ) -> impl Future<Output = StoreResult<RotateOutcome>> + Send;

    /// Records a use of session `sid` without rotation; `false` if it is gone or not
    /// live at `now`.
    fn touch_session(
        &self,
        sid: Sid,
        now: u64,
        idle_expires_at: u64,
    ) -> impl Future<Output = StoreResult<bool>> + Send;

    /// Revokes the given sessions (their whole token families); returns how many were
    /// active before.
    fn revoke_sessions(&self, sids: &[Sid]) -> impl Future<Output = StoreResult<usize>> + Send;

    /// Deletes sessions that are revoked or expired at `now`, with their tokens; returns
    /// how many sessions were removed.
    fn sweep(&self, now: u64) -> impl Future<Output = StoreResult<usize>> + Send;

    /// Returns once everything written so far, by anyone, is durable (a caller that
    /// answers with another request's write waits for it here).
    fn sync(&self) -> impl Future<Output = StoreResult<()>> + Send;

    // ----- operators: export, import, counts -----

    /// Up to `limit` identities with openid greater than `after`, in openid order.
    fn list_identities(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> impl Future<Output = StoreResult<Page<(String, Identity)>>> + Send;

    /// Session `sid` with all its refresh-token records, as of one moment (a rotation
    /// never shows half done), or `None` if it is gone.
    fn family(&self, sid: Sid) -> impl Future<Output = StoreResult<Option<Family>>> + Send;

    /// Writes `batch` as it is: users, identities, then each session after its tokens.
    fn restore(&self, batch: &Restore) -> impl Future<Output = StoreResult<()>> + Send;

    /// Whether no user and no identity is stored.
    fn is_empty(&self) -> impl Future<Output = StoreResult<bool>> + Send;

    /// Counts users and live sessions (a full scan: call rarely).
    fn census(&self, now: u64) -> impl Future<Output = StoreResult<Census>> + Send;

    // ----- keys and other metadata -----

    /// The metadata record `name`, if set.
    fn meta(&self, name: &str) -> impl Future<Output = StoreResult<Option<Vec<u8>>>> + Send;

    /// Sets the metadata record `name` to `value`, durably.
    fn put_meta(&self, name: &str, value: Vec<u8>) -> impl Future<Output = StoreResult<()>> + Send;

    /// The stored key `name`, generating and durably storing it first if absent.
    fn key_or_init(
        &self,
        name: &str,
        generate: impl FnOnce() -> Vec<u8> + Send,
    ) -> impl Future<Output = StoreResult<Vec<u8>>> + Send;

    /// The keys that [`Store::rotate_key`] retired from `name` (retired or not by now).
    fn retired_keys(&self, name: &str)
    -> impl Future<Output = StoreResult<Vec<RetiredKey>>> + Send;

    /// Makes `fresh` the key `name` and keeps the key it replaces among `name`'s retired
    /// keys until `retire_at`, dropping those already retired at `now`; one transaction,
    /// durable on return. Returns the replaced key (`None` if `name` was unset).
    fn rotate_key(
        &self,
        name: &str,
        fresh: Vec<u8>,
        retire_at: u64,
        now: u64,
    ) -> impl Future<Output = StoreResult<Option<Vec<u8>>>> + Send;
}
