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
//! its whole refresh-token family's state (the current token's hash, the one the last
//! rotation retired, the generation), and there are no per-token records. A renewal is
//! then one compare-and-swap of one record ([`Store::rotate`]), and the database does not
//! grow as tokens rotate. Index entries written ahead of a record a crash then stops
//! point at nothing and are skipped (and cleaned up).

mod any;
mod cache;
mod codec;
mod flush;
pub(crate) mod postgres;
pub mod private;
mod sled;
mod upgrade;

use std::future::Future;
use std::sync::Arc;

use crate::model::{
    self, Identity, RetiredKey, Session, Sid, SigningKeyRecord, TokenHash, Uid, UserPatch,
    UserRecord,
};

pub use self::any::AnyStore;
pub use self::flush::FlushObserver;
pub use self::postgres::PgStore;
pub use self::sled::SledStore;

use self::postgres::ConnectOptions;
use crate::config::{StorageBackend, StorageConfig};

/// Opens the database `[storage]` describes, with its read caches: the one way the
/// server and the admin commands open storage. sled: the directory with its page cache;
/// PostgreSQL: a pool of connections, the schema migrated to this binary's version.
pub async fn open(storage: &StorageConfig) -> StoreResult<AnyStore> {
    match storage.backend {
        StorageBackend::Sled => {
            SledStore::open(&storage.path, storage.cache_capacity_bytes).map(|store| {
                AnyStore::Sled(
                    store.with_caches(storage.user_cache_entries, storage.session_cache_entries),
                )
            })
        }
        StorageBackend::Postgres => {
            let options = ConnectOptions::parse(storage.postgres_url.expose())
                .map_err(|e| StoreError::Io(format!("storage.postgres_url {e}")))?;
            let (store, migrated) = PgStore::open(
                &options,
                storage.postgres_pool_size,
                storage.user_cache_entries,
                storage.session_cache_entries,
            )
            .await?;
            tracing::info!(
                database = %options.describe(),
                tls = ?options.tls,
                schema_version = migrated.to,
                migrated_from = migrated.from,
                "storage: PostgreSQL"
            );
            Ok(AnyStore::Postgres(store))
        }
    }
}

/// Where `[storage]` keeps the data, for messages: the sled directory, or the PostgreSQL
/// hosts and database (never the URL, which may hold a password).
pub fn location(storage: &StorageConfig) -> String {
    match storage.backend {
        StorageBackend::Sled => storage.path.display().to_string(),
        StorageBackend::Postgres => match ConnectOptions::parse(storage.postgres_url.expose()) {
            Ok(options) => format!("postgres {}", options.describe()),
            Err(_) => "postgres (storage.postgres_url is not valid)".into(),
        },
    }
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
    /// The database is in a storage format this build does not read, or could not be
    /// upgraded from an earlier one; the message says how to move it (export, import).
    #[error("{0}")]
    Format(String),
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
    /// The presented token was current and its session live; the successor is now
    /// current. Carries the session as written.
    Rotated(Session),
    /// The session does not exist, is not live, or the presented token is not its
    /// current one (another request may have rotated or revoked it first); nothing was
    /// written.
    NotCurrent {
        /// The session as the database holds it now, which a cached read may not show yet.
        stored: Option<Session>,
        /// When the store looked, in Unix milliseconds, by the clock that timed the
        /// session's rotations: the one to measure the retry grace with.
        at_ms: u64,
    },
}

/// A page of records and the key to continue after.
pub type Page<T> = Vec<T>;

/// Records to write as they are (import): each replaces a record with the same key,
/// except a session that [`restores_over`] says must stay as stored.
#[derive(Debug, Clone, Default)]
pub struct Restore {
    /// User records.
    pub users: Vec<UserRecord>,
    /// Identities under their openid.
    pub identities: Vec<(String, Identity)>,
    /// Sessions.
    pub sessions: Vec<Session>,
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

/// Whether an imported copy of a session may replace `stored`, the database's own copy
/// of it. Not over a revoked session (a merge must not bring back a family revoked since
/// the export, for reuse perhaps), nor over one further along than the copy — rotated
/// more often or used later (its current token would be rolled back to one the client
/// has already spent) — nor over one of another user (a session never changes owner).
///
/// The PostgreSQL backend says the same in the `WHERE` of its `ON CONFLICT` clause.
pub fn restores_over(imported: &Session, stored: &Session) -> bool {
    stored.state != model::SessionState::Revoked
        && stored.uid == imported.uid
        && stored.generation <= imported.generation
        && stored.last_used_at <= imported.last_used_at
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
    /// session_key are updated — the identity is rewritten only if one of them changed —
    /// and its existing uid returned. If not, `candidate` is stored. Either way an empty
    /// user record is created for the uid if it has none (which also completes a first
    /// login that a crash cut between the two writes).
    ///
    /// The one write method that may return before its writes are durable: a login
    /// writes its session next, with [`Store::create_session`], whose durability covers
    /// these writes too, so a login waits for one flush, not two. A caller that writes
    /// nothing after it calls [`Store::sync`].
    fn upsert_identity(
        &self,
        openid: &str,
        candidate: Identity,
        now: u64,
    ) -> impl Future<Output = StoreResult<Uid>> + Send;

    // ----- sessions -----

    /// The session `sid`, live or not (served from a cache kept exact by the writers).
    fn session(&self, sid: Sid) -> impl Future<Output = StoreResult<Option<Session>>> + Send;

    /// Every stored session of `uid`, oldest first (for operators).
    fn sessions_of(&self, uid: &Uid) -> impl Future<Output = StoreResult<Vec<Session>>> + Send;

    /// Up to `limit` stored sessions with sid greater than `after`, in sid order.
    fn list_sessions(
        &self,
        after: Option<Sid>,
        limit: usize,
    ) -> impl Future<Output = StoreResult<Page<Session>>> + Send;

    /// Writes `session` (a new login) and, when `max_live` is `Some(n)`, revokes the
    /// user's oldest sessions live at `session.created_at` so that at most `n` are live
    /// with the new one. Returns how many live sessions it revoked.
    ///
    /// A returning user's login must not read every session of the user: a backend keeps
    /// the user's sessions in creation order (sled: an index; PostgreSQL: an index on
    /// `(uid, created_at)`) and reads sessions only when the count says the cap is
    /// reached. Two logins of one user at the same instant may leave it one over; the
    /// next login brings it back.
    fn create_session(
        &self,
        session: &Session,
        max_live: Option<usize>,
    ) -> impl Future<Output = StoreResult<usize>> + Send;

    /// A renewal with rotation, the single store call of its happy path: if session
    /// `sid` exists, is live at `now_ms`, and its current token is `presented`, then
    /// `previous = {presented, rotated_at}`, `current = successor`, `generation += 1`,
    /// `last_used_at = now_ms / 1000`, `idle_expires_at = min(now + idle_secs,
    /// expires_at)` — one atomic change, durable on return — and the new session is
    /// returned. Otherwise nothing is written and the session is returned as stored.
    ///
    /// `rotated_at`, and the `at_ms` of [`RotateOutcome::NotCurrent`], come from one
    /// clock for every caller: a store used by one process takes `now_ms`; one that
    /// several machines share (PostgreSQL) takes its own (the database's), so that the
    /// retry grace never depends on which instance's clock rotated and which judges.
    fn rotate(
        &self,
        sid: Sid,
        presented: TokenHash,
        successor: TokenHash,
        now_ms: u64,
        idle_secs: u64,
    ) -> impl Future<Output = StoreResult<RotateOutcome>> + Send;

    /// A renewal without rotation: if session `sid` exists, is live at `now_ms`, and its
    /// current token is `presented`, sets the last use and idle expiry as
    /// [`Store::rotate`] does and returns the session; otherwise `None`, nothing written.
    fn touch(
        &self,
        sid: Sid,
        presented: TokenHash,
        now_ms: u64,
        idle_secs: u64,
    ) -> impl Future<Output = StoreResult<Option<Session>>> + Send;

    /// Revokes the given sessions (their whole token families); returns how many were
    /// active before.
    fn revoke_sessions(&self, sids: &[Sid]) -> impl Future<Output = StoreResult<usize>> + Send;

    /// Deletes sessions that are revoked or expired at `now` (Unix seconds); returns how
    /// many were removed.
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

    /// Writes `batch` as it is: users, identities, then sessions; each replaces a record
    /// with the same key, but a session only where [`restores_over`] allows (checked
    /// atomically against concurrent renewals and revocations).
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

    /// The stored key `name`, if set (never generating one).
    fn key(&self, name: &str) -> impl Future<Output = StoreResult<Option<Vec<u8>>>> + Send;

    /// The generated signing keys with their schedules (empty before the first is made).
    fn signing_keys(&self) -> impl Future<Output = StoreResult<Vec<SigningKeyRecord>>> + Send;

    /// Replaces the generated signing keys with `keys` if they are still `expected`: one
    /// atomic compare-and-swap of the whole set, durable on return, and announced to
    /// every instance sharing the store ([`AnyStore::key_changes`]). Returns whether it
    /// was made (`false`: another process changed them first; read and decide again).
    fn swap_signing_keys(
        &self,
        expected: &[SigningKeyRecord],
        keys: &[SigningKeyRecord],
    ) -> impl Future<Output = StoreResult<bool>> + Send;

    // ----- health -----

    /// Whether a database server behind the store can be reached (`None`: the store is
    /// embedded, so it is there as long as the process is). Cheap: no round trip.
    fn database_up(&self) -> Option<bool> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{SessionState, TokenHash};

    fn session(uid: &str, generation: u32, last_used_at: u64) -> Session {
        Session {
            sid: Sid([1; 16]),
            uid: Uid::parse(uid).unwrap(),
            created_at: 100,
            last_used_at,
            expires_at: 1000,
            idle_expires_at: 900,
            state: SessionState::Active,
            generation,
            current: TokenHash([generation as u8; 32]),
            previous: None,
        }
    }

    #[test]
    fn an_imported_session_replaces_only_a_live_copy_of_its_own_that_is_not_further_along() {
        let stored = session("u", 2, 200);
        assert!(restores_over(&session("u", 2, 200), &stored), "the same");
        assert!(restores_over(&session("u", 3, 250), &stored), "newer");
        assert!(
            !restores_over(&session("u", 1, 250), &stored),
            "fewer rotations"
        );
        assert!(
            !restores_over(&session("u", 3, 199), &stored),
            "used earlier"
        );
        assert!(
            !restores_over(&session("v", 3, 250), &stored),
            "another owner"
        );
        let revoked = Session {
            state: SessionState::Revoked,
            ..stored
        };
        assert!(!restores_over(&session("u", 9, 999), &revoked), "revoked");
    }
}
