//! The PostgreSQL backend: the same [`Store`] on a database that N instances share.
//!
//! Tables are in `migrations/0001_initial.sql` (typed columns, constraints, and the
//! `secret_` tables that hold what must not be selected by accident). Each step of the
//! store is one SQL statement — data-modifying CTEs where a step touches several rows —
//! committed on its own (autocommit), so it is atomic, and durable on return with the
//! server's default `synchronous_commit = on`. Statements are prepared once per pooled
//! connection (deadpool-postgres' statement cache), so a call costs one round trip.
//!
//! Rotation times, and the moment the retry grace after one is judged, come from the
//! database's clock ([`ROTATE`]): instances whose clocks disagree then agree on the
//! grace. (Expiry is judged by each instance's clock, as at login.)
//!
//! Rotation is a compare-and-swap in SQL: `UPDATE sessions … WHERE sid = $1 AND
//! current_hash = $2 AND <live>`. Concurrent renewals of one token, on any instances,
//! queue on the row lock; the first one rotates, and under READ COMMITTED the others
//! re-check the WHERE against the committed row, find another current token and update
//! nothing. The same statement then reads the row `FOR SHARE`, which returns the latest
//! committed version (not the statement's older snapshot), so a loser decides on the
//! session as the winner left it.
//!
//! The read caches (users, sessions) are those of the sled backend, kept right across
//! instances by LISTEN/NOTIFY ([`listen`], which says what is notified how, and why a
//! renewal notifies nothing): they are bypassed whenever the listening connection is down. The database being unreachable is an [`StoreError::Io`] (HTTP
//! 503), after at most [`CALL_TIMEOUT`]; the pool reconnects by itself when it is back.

mod connect;
mod listen;
mod migrate;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use tokio::sync::watch;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use self::listen::Shared;
use super::{Census, Page, Restore, RotateOutcome, Store, StoreError, StoreResult};
use crate::model::{
    Identity, KeyAlgorithm, RetiredKey, Rotation, Session, SessionState, Sid, SigningKeyRecord,
    TokenHash, Uid, UserPatch, UserRecord,
};
use crate::secret::Secret;

pub(crate) use self::connect::ConnectOptions;
pub(crate) use self::migrate::Migrated;

/// The advisory lock (with the schema's hash as second key) held while migrating.
const MIGRATE_LOCK: i32 = 0x6c75_6d67; // "lumg"

/// Longest a store call waits for the database before answering `unavailable`.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Sessions removed per statement by the sweep.
const SWEEP_BATCH: i64 = 1000;

/// The columns of a session row, in the order [`session_from`] reads them.
macro_rules! session_cols {
    () => {
        "sid, uid, created_at, last_used_at, expires_at, idle_expires_at, revoked, \
         generation, current_hash, previous_hash, rotated_at_ms"
    };
}

/// The database's clock, in Unix milliseconds, at the moment the expression is evaluated
/// (`clock_timestamp()`, not the transaction's start).
macro_rules! db_now_ms {
    () => {
        "floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint"
    };
}

/// A PostgreSQL database holding liveuser's tables.
pub struct PgStore {
    pool: Pool,
    shared: Arc<Shared>,
    /// The NOTIFY channel: a random name kept in `secret_channel` (migration 2 says why),
    /// one per schema, so schemas sharing a database do not see each other's
    /// invalidations either.
    channel: String,
    described: String,
    listener: tokio::task::JoinHandle<()>,
    /// Profiles written here, for the other instances to forget (see [`listen`]).
    changed_users: tokio::sync::mpsc::UnboundedSender<Uid>,
    notifier: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("database", &self.described)
            .finish_non_exhaustive()
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.listener.abort();
        self.notifier.abort();
        self.pool.close();
    }
}

/// A tokio-postgres error as one line, without what a DETAIL may quote (key values).
fn describe_error(e: &tokio_postgres::Error) -> String {
    if let Some(d) = e.as_db_error() {
        return format!("{}: {} ({})", d.severity(), d.message(), d.code().code());
    }
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

/// Why the pool gave no connection, with the database's own reason when there is one
/// ("connection refused", "password authentication failed", …): the pool's error alone
/// says only "error connecting to server".
fn pool_error(e: &deadpool_postgres::PoolError) -> String {
    match e {
        deadpool_postgres::PoolError::Backend(e) => describe_error(e),
        e => e.to_string(),
    }
}

/// A failed statement as a [`StoreError`]: a broken constraint or bad data is
/// [`StoreError::Corrupt`] (a bug, or a hand-edited database), the rest is the
/// database being unreachable or failing ([`StoreError::Io`], 503).
fn db(e: tokio_postgres::Error) -> StoreError {
    let text = describe_error(&e);
    match e.code().map(|c| &c.code()[..2]) {
        Some("22" | "23") => StoreError::Corrupt(text),
        _ => StoreError::Io(format!("database: {text}")),
    }
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!("the database holds {what}"))
}

fn secs(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn unsigned(v: i64, what: &str) -> StoreResult<u64> {
    u64::try_from(v).map_err(|_| corrupt(what))
}

fn sid_of(bytes: &[u8]) -> StoreResult<Sid> {
    Ok(Sid(bytes.try_into().map_err(|_| corrupt("a bad sid"))?))
}

fn hash_of(bytes: &[u8]) -> StoreResult<TokenHash> {
    Ok(TokenHash(
        bytes.try_into().map_err(|_| corrupt("a bad token hash"))?,
    ))
}

fn uid_of(text: &str) -> StoreResult<Uid> {
    Uid::parse(text).map_err(|_| corrupt("a bad uid"))
}

/// A session from the [`session_cols!`] starting at column `at`.
fn session_from(row: &Row, at: usize) -> StoreResult<Session> {
    let get_err = |_| corrupt("a session row of the wrong shape");
    let previous_hash: Option<&[u8]> = row.try_get(at + 9).map_err(get_err)?;
    let rotated_at_ms: Option<i64> = row.try_get(at + 10).map_err(get_err)?;
    let previous = match (previous_hash, rotated_at_ms) {
        (Some(hash), Some(ms)) => Some(Rotation {
            token: hash_of(hash)?,
            rotated_at_ms: unsigned(ms, "a bad rotation time")?,
        }),
        _ => None,
    };
    let generation: i64 = row.try_get(at + 7).map_err(get_err)?;
    let revoked: bool = row.try_get(at + 6).map_err(get_err)?;
    let time = |i: usize| -> StoreResult<u64> {
        unsigned(row.try_get(at + i).map_err(get_err)?, "a bad session time")
    };
    Ok(Session {
        sid: sid_of(row.try_get(at).map_err(get_err)?)?,
        uid: uid_of(row.try_get(at + 1).map_err(get_err)?)?,
        created_at: time(2)?,
        last_used_at: time(3)?,
        expires_at: time(4)?,
        idle_expires_at: time(5)?,
        state: if revoked {
            SessionState::Revoked
        } else {
            SessionState::Active
        },
        generation: u32::try_from(generation).map_err(|_| corrupt("a bad generation"))?,
        current: hash_of(row.try_get(at + 8).map_err(get_err)?)?,
        previous,
    })
}

fn user_from(row: &Row) -> StoreResult<UserRecord> {
    let get_err = |_| corrupt("a user row of the wrong shape");
    Ok(UserRecord {
        uid: uid_of(row.try_get(0).map_err(get_err)?)?,
        name: row.try_get(1).map_err(get_err)?,
        agent: row.try_get(2).map_err(get_err)?,
        avatar: row.try_get(3).map_err(get_err)?,
        update_at: unsigned(row.try_get(4).map_err(get_err)?, "a bad update_at")?,
    })
}

// ----- statements -----

const USERS_GET: &str =
    "SELECT uid, name, agent, avatar, update_at FROM users WHERE uid = ANY($1::text[])";

const USER_UPDATE: &str = "\
INSERT INTO users AS u (uid, name, agent, avatar, update_at)
VALUES ($1, coalesce($2, ''), coalesce($3, ''), coalesce($4, ''), $5)
ON CONFLICT (uid) DO UPDATE SET
    name = coalesce($2, u.name), agent = coalesce($3, u.agent),
    avatar = coalesce($4, u.avatar), update_at = $5
RETURNING uid, name, agent, avatar, update_at";

const USER_PUT: &str = "\
INSERT INTO users (uid, name, agent, avatar, update_at) VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (uid) DO UPDATE SET name = EXCLUDED.name, agent = EXCLUDED.agent,
    avatar = EXCLUDED.avatar, update_at = EXCLUDED.update_at";

const USERS_LIST: &str = "\
SELECT uid, name, agent, avatar, update_at FROM users
WHERE $1::text IS NULL OR uid > $1 ORDER BY uid LIMIT $2";

/// The identity is written only if its unionid changes, its session_key only if that
/// changes, and the user record only if absent: a returning user's login usually
/// writes nothing here. A concurrent first login of the same openid can leave `found`
/// empty (its row is newer than this statement's snapshot); the caller runs it again.
const IDENTITY_UPSERT: &str = "\
WITH ident AS (
    INSERT INTO identities AS i (openid, uid, unionid) VALUES ($1, $2, $3)
    ON CONFLICT (openid) DO UPDATE SET unionid = EXCLUDED.unionid
        WHERE EXCLUDED.unionid IS NOT NULL AND i.unionid IS DISTINCT FROM EXCLUDED.unionid
    RETURNING uid
), found AS (
    SELECT uid FROM ident
    UNION ALL
    SELECT uid FROM identities WHERE openid = $1 AND NOT EXISTS (SELECT 1 FROM ident)
), created AS (
    INSERT INTO users (uid, update_at) SELECT uid, $5 FROM found
    ON CONFLICT (uid) DO NOTHING
    RETURNING uid
), session_key AS (
    INSERT INTO secret_wechat_session_keys AS k (openid, session_key)
    SELECT $1, $4 FROM found
    ON CONFLICT (openid) DO UPDATE SET session_key = EXCLUDED.session_key
        WHERE k.session_key IS DISTINCT FROM EXCLUDED.session_key
)
SELECT uid FROM found";

const SESSION_GET: &str = concat!("SELECT ", session_cols!(), " FROM sessions WHERE sid = $1");

const SESSIONS_OF: &str = concat!(
    "SELECT ",
    session_cols!(),
    " FROM sessions WHERE uid = $1 ORDER BY created_at, login_seq"
);

const SESSIONS_LIST: &str = concat!(
    "SELECT ",
    session_cols!(),
    " FROM sessions WHERE $1::bytea IS NULL OR sid > $1 ORDER BY sid LIMIT $2"
);

/// A login, and the session cap: of the user's other sessions live at the login, all but
/// the newest `max_live - 1` are revoked (read through the `(uid, created_at)` index, so
/// only the user's own rows; the `sessions_changed` trigger notifies each). Sessions
/// written at the same instant by another login are not seen: two concurrent logins may
/// leave the user one over, until the next login.
const SESSION_CREATE: &str = "\
WITH evicted AS (
    UPDATE sessions SET revoked = true
    WHERE $9::bigint IS NOT NULL AND NOT revoked AND sid IN (
        SELECT sid FROM sessions
        WHERE uid = $2 AND NOT revoked AND $3 < expires_at AND $3 < idle_expires_at
        ORDER BY created_at DESC, login_seq DESC
        OFFSET greatest($9::bigint - 1, 0))
    RETURNING sid
), created AS (
    INSERT INTO sessions (sid, uid, created_at, last_used_at, expires_at, idle_expires_at,
                          generation, current_hash)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
)
SELECT sid FROM evicted";

/// A renewal with rotation: one statement, one round trip (see the module documentation
/// for how concurrent renewals of one token resolve).
///
/// The rotation is timed by the database's clock, and so is the moment a request that
/// did not rotate looked at the row (the second column): every instance then measures
/// the retry grace on the one clock, whatever its own says. That moment is taken when the
/// row is projected, after its lock was waited for, so a request that lost a race to the
/// rotating one always sees a time after that rotation's.
const ROTATE: &str = concat!(
    "WITH rotated AS (
    UPDATE sessions SET previous_hash = current_hash, rotated_at_ms = ",
    db_now_ms!(),
    ",
        current_hash = $3, generation = least(generation + 1, 4294967295),
        last_used_at = $4::bigint / 1000,
        idle_expires_at = least($4::bigint / 1000 + $5::bigint, expires_at)
    WHERE sid = $1 AND current_hash = $2 AND NOT revoked
        AND $4::bigint / 1000 < expires_at AND $4::bigint / 1000 < idle_expires_at
    RETURNING ",
    session_cols!(),
    "
), stored AS (
    SELECT ",
    session_cols!(),
    " FROM sessions WHERE sid = $1 AND NOT EXISTS (SELECT 1 FROM rotated) FOR SHARE
)
SELECT true, 0::bigint, ",
    session_cols!(),
    " FROM rotated
UNION ALL
SELECT false, ",
    db_now_ms!(),
    ", ",
    session_cols!(),
    " FROM stored"
);

const TOUCH: &str = concat!(
    "UPDATE sessions SET last_used_at = $3::bigint / 1000,
    idle_expires_at = least($3::bigint / 1000 + $4::bigint, expires_at)
WHERE sid = $1 AND current_hash = $2 AND NOT revoked
    AND $3::bigint / 1000 < expires_at AND $3::bigint / 1000 < idle_expires_at
RETURNING ",
    session_cols!()
);

/// The `sessions_changed` trigger (migration 2) notifies each revoked session.
const REVOKE: &str = "\
UPDATE sessions SET revoked = true WHERE sid = ANY($1::bytea[]) AND NOT revoked
RETURNING sid";

/// One batch of the sweep. `SKIP LOCKED`: instances sweeping at once take different
/// rows, and a session being renewed right now is left for the next sweep.
const SWEEP: &str = "\
WITH dead AS (
    DELETE FROM sessions WHERE sid IN (
        SELECT sid FROM sessions
        WHERE revoked OR $1 >= expires_at OR $1 >= idle_expires_at
        LIMIT $2 FOR UPDATE SKIP LOCKED)
    RETURNING sid
)
SELECT sid FROM dead";

const IDENTITIES_LIST: &str = "\
SELECT i.openid, i.uid, i.unionid, k.session_key
FROM identities i LEFT JOIN secret_wechat_session_keys k ON k.openid = i.openid
WHERE $1::text IS NULL OR i.openid > $1 ORDER BY i.openid LIMIT $2";

const IS_EMPTY: &str =
    "SELECT NOT EXISTS (SELECT 1 FROM users) AND NOT EXISTS (SELECT 1 FROM identities)";

const CENSUS: &str = "\
SELECT (SELECT count(*) FROM users),
       (SELECT count(*) FROM sessions
        WHERE NOT revoked AND $1 < expires_at AND $1 < idle_expires_at)";

const KEY_INIT: &str = "\
WITH ins AS (
    INSERT INTO secret_keys (name, key) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING
    RETURNING key
)
SELECT key FROM ins
UNION ALL
SELECT key FROM secret_keys WHERE name = $1 AND NOT EXISTS (SELECT 1 FROM ins)";

const KEY_GET: &str = "SELECT key FROM secret_keys WHERE name = $1";

const RETIRED_GET: &str =
    "SELECT key, retire_at FROM secret_retired_keys WHERE name = $1 ORDER BY retire_at, key";

impl PgStore {
    /// Connects to the database of `options`, brings its schema up to date (taking the
    /// migration lock only if a migration is due, as `migrate.rs` says), checks that it may
    /// notify, and starts listening for invalidations. Caches hold about `user_entries`
    /// users and `session_entries` sessions (0 turns one off).
    pub async fn open(
        options: &ConnectOptions,
        pool_size: usize,
        user_entries: usize,
        session_entries: usize,
    ) -> StoreResult<(PgStore, Migrated)> {
        let described = options.describe();
        let unreachable =
            |e: String| StoreError::Io(format!("cannot reach the database {described}: {e}"));
        let tls = options.tls().map_err(StoreError::Io)?;
        let manager = Manager::from_config(
            options.pg.clone(),
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(CALL_TIMEOUT))
            .create_timeout(Some(CALL_TIMEOUT))
            .recycle_timeout(Some(CALL_TIMEOUT))
            .build()
            .map_err(|e| StoreError::Io(format!("cannot set up the connection pool: {e}")))?;
        let mut client = pool.get().await.map_err(|e| unreachable(pool_error(&e)))?;
        let migrated = migrate::apply(&mut client).await?;
        let channel = listen::channel(&client, &described).await?;
        drop(client);
        let shared = Arc::new(Shared::new(user_entries, session_entries));
        let listener = tokio::spawn(listen::run(
            options.pg.clone(),
            tls,
            channel.clone(),
            shared.clone(),
        ));
        // Start with the caches on where possible; without the listener they are simply
        // bypassed until it connects.
        for _ in 0..40 {
            if shared.listening() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let (changed_users, changed) = tokio::sync::mpsc::unbounded_channel();
        let notifier = tokio::spawn(listen::notify_users(pool.clone(), channel.clone(), changed));
        Ok((
            PgStore {
                pool,
                shared,
                channel,
                described,
                listener,
                changed_users,
                notifier,
            },
            migrated,
        ))
    }

    /// The hosts and database (never the password), for logs.
    pub fn describe(&self) -> &str {
        &self.described
    }

    /// Told of every change of the signing keys made through any instance or the CLI
    /// (and of every reconnection of the listener, after which one may have been missed).
    pub fn key_changes(&self) -> watch::Receiver<u64> {
        self.shared.key_changes()
    }

    /// Whether the database can be reached (the listening connection is up and
    /// answering its heartbeat).
    pub fn is_up(&self) -> bool {
        self.shared.listening()
    }

    async fn client(&self) -> StoreResult<Object> {
        self.pool.get().await.map_err(|e| {
            StoreError::Io(format!(
                "cannot reach the database {}: {}",
                self.described,
                pool_error(&e)
            ))
        })
    }

    /// Runs `work` on a pooled connection, giving up after [`CALL_TIMEOUT`] (the write
    /// is then unacknowledged: it may or may not have committed).
    async fn run<T, F, Fut>(&self, work: F) -> StoreResult<T>
    where
        F: FnOnce(Object) -> Fut,
        Fut: Future<Output = StoreResult<T>>,
    {
        let attempt = async {
            let client = self.client().await?;
            work(client).await
        };
        tokio::time::timeout(CALL_TIMEOUT, attempt)
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::Io(format!(
                    "the database {} did not answer within {} s",
                    self.described,
                    CALL_TIMEOUT.as_secs()
                )))
            })
    }

    /// One prepared statement, all its rows.
    async fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> StoreResult<Vec<Row>> {
        self.run(|client| async move {
            let statement = client.prepare_cached(sql).await.map_err(db)?;
            client.query(&statement, params).await.map_err(db)
        })
        .await
    }

    async fn load_session(&self, sid: Sid) -> StoreResult<Option<Session>> {
        let rows = self.query(SESSION_GET, &[&&sid.0[..]]).await?;
        rows.first().map(|r| session_from(r, 0)).transpose()
    }
}

impl Store for PgStore {
    async fn users(&self, uids: &[Uid]) -> StoreResult<Vec<Arc<UserRecord>>> {
        let caching = self.shared.listening();
        let cache = &self.shared.users;
        let mut found: Vec<Option<Arc<UserRecord>>> = vec![None; uids.len()];
        let mut missing = Vec::new();
        for (i, uid) in uids.iter().enumerate() {
            match caching.then(|| cache.get(uid)).flatten() {
                Some(hit) => found[i] = hit,
                None => missing.push((i, cache.stamp(uid))),
            }
        }
        if !missing.is_empty() {
            let names: Vec<&str> = missing.iter().map(|&(i, _)| uids[i].as_str()).collect();
            let rows = self.query(USERS_GET, &[&names]).await?;
            let mut loaded = std::collections::HashMap::with_capacity(rows.len());
            for row in &rows {
                let user = user_from(row)?;
                loaded.insert(user.uid.clone(), Arc::new(user));
            }
            let caching = caching && self.shared.listening();
            for (i, stamp) in missing {
                let user = loaded.get(&uids[i]).cloned();
                if caching {
                    cache.fill(&uids[i], user.clone(), stamp);
                }
                found[i] = user;
            }
        }
        Ok(found.into_iter().flatten().collect())
    }

    async fn update_user(&self, uid: &Uid, patch: &UserPatch, now: u64) -> StoreResult<UserRecord> {
        let stamp = self.shared.users.stamp(uid);
        let rows = self
            .query(
                USER_UPDATE,
                &[
                    &uid.as_str(),
                    &patch.name.as_deref(),
                    &patch.agent.as_deref(),
                    &patch.avatar.as_deref(),
                    &secs(now),
                ],
            )
            .await?;
        let user = rows
            .first()
            .map(user_from)
            .ok_or_else(|| corrupt("no row after an upsert"))??;
        self.shared
            .users
            .replace(uid, Some(Arc::new(user.clone())), stamp);
        let _ = self.changed_users.send(uid.clone());
        Ok(user)
    }

    async fn list_users(&self, after: Option<&Uid>, limit: usize) -> StoreResult<Page<UserRecord>> {
        let rows = self
            .query(
                USERS_LIST,
                &[
                    &after.map(Uid::as_str),
                    &(limit.min(i64::MAX as usize) as i64),
                ],
            )
            .await?;
        rows.iter().map(user_from).collect()
    }

    async fn upsert_identity(
        &self,
        openid: &str,
        candidate: Identity,
        now: u64,
    ) -> StoreResult<Uid> {
        // A second run finds the row a concurrent first login committed (see
        // IDENTITY_UPSERT); a third is never needed, but is allowed for.
        for _ in 0..3 {
            let rows = self
                .query(
                    IDENTITY_UPSERT,
                    &[
                        &openid,
                        &candidate.uid.as_str(),
                        &candidate.unionid.as_deref(),
                        &candidate.session_key.expose().as_str(),
                        &secs(now),
                    ],
                )
                .await?;
            if let Some(row) = rows.first() {
                let uid = uid_of(row.get(0))?;
                self.shared.users.invalidate(&uid);
                return Ok(uid);
            }
        }
        Err(StoreError::Io(
            "the identity kept changing while it was written".into(),
        ))
    }

    async fn session(&self, sid: Sid) -> StoreResult<Option<Session>> {
        let cache = &self.shared.sessions;
        if !self.shared.listening() {
            return self.load_session(sid).await;
        }
        match cache.get(&sid) {
            Some(Some(session)) if Shared::stale(&session) => {}
            Some(hit) => return Ok(hit),
            None => {}
        }
        let stamp = cache.stamp(&sid);
        let loaded = self.load_session(sid).await?;
        if self.shared.listening() {
            cache.fill(&sid, loaded.clone(), stamp);
        }
        Ok(loaded)
    }

    async fn sessions_of(&self, uid: &Uid) -> StoreResult<Vec<Session>> {
        let rows = self.query(SESSIONS_OF, &[&uid.as_str()]).await?;
        rows.iter().map(|r| session_from(r, 0)).collect()
    }

    async fn list_sessions(&self, after: Option<Sid>, limit: usize) -> StoreResult<Page<Session>> {
        let after = after.map(|s| s.0.to_vec());
        let rows = self
            .query(
                SESSIONS_LIST,
                &[&after, &(limit.min(i64::MAX as usize) as i64)],
            )
            .await?;
        rows.iter().map(|r| session_from(r, 0)).collect()
    }

    async fn create_session(
        &self,
        session: &Session,
        max_live: Option<usize>,
    ) -> StoreResult<usize> {
        let max_live = max_live.map(|n| n.min(i64::MAX as usize) as i64);
        let rows = self
            .query(
                SESSION_CREATE,
                &[
                    &&session.sid.0[..],
                    &session.uid.as_str(),
                    &secs(session.created_at),
                    &secs(session.last_used_at),
                    &secs(session.expires_at),
                    &secs(session.idle_expires_at),
                    &i64::from(session.generation),
                    &&session.current.0[..],
                    &max_live,
                ],
            )
            .await?;
        for row in &rows {
            self.shared.sessions.invalidate(&sid_of(row.get(0))?);
        }
        self.shared.sessions.invalidate(&session.sid);
        Ok(rows.len())
    }

    async fn rotate(
        &self,
        sid: Sid,
        presented: TokenHash,
        successor: TokenHash,
        now_ms: u64,
        idle_secs: u64,
    ) -> StoreResult<RotateOutcome> {
        let stamp = self.shared.sessions.stamp(&sid);
        let rows = self
            .query(
                ROTATE,
                &[
                    &&sid.0[..],
                    &&presented.0[..],
                    &&successor.0[..],
                    &secs(now_ms),
                    &secs(idle_secs),
                ],
            )
            .await?;
        let Some(row) = rows.first() else {
            return Ok(RotateOutcome::NotCurrent {
                stored: None,
                at_ms: now_ms,
            });
        };
        let shape = |_| corrupt("a rotation answer of the wrong shape");
        let rotated: bool = row.try_get(0).map_err(shape)?;
        let session = session_from(row, 2)?;
        if rotated {
            self.shared
                .sessions
                .replace(&sid, Some(session.clone()), stamp);
            Ok(RotateOutcome::Rotated(session))
        } else {
            let at_ms = row.try_get(1).map_err(shape)?;
            Ok(RotateOutcome::NotCurrent {
                stored: Some(session),
                at_ms: unsigned(at_ms, "a time before 1970")?,
            })
        }
    }

    async fn touch(
        &self,
        sid: Sid,
        presented: TokenHash,
        now_ms: u64,
        idle_secs: u64,
    ) -> StoreResult<Option<Session>> {
        let stamp = self.shared.sessions.stamp(&sid);
        let rows = self
            .query(
                TOUCH,
                &[
                    &&sid.0[..],
                    &&presented.0[..],
                    &secs(now_ms),
                    &secs(idle_secs),
                ],
            )
            .await?;
        let touched = rows.first().map(|r| session_from(r, 0)).transpose()?;
        if touched.is_some() {
            self.shared.sessions.replace(&sid, touched.clone(), stamp);
        }
        Ok(touched)
    }

    async fn revoke_sessions(&self, sids: &[Sid]) -> StoreResult<usize> {
        let list: Vec<&[u8]> = sids.iter().map(|s| &s.0[..]).collect();
        let rows = self.query(REVOKE, &[&list]).await?;
        for sid in sids {
            self.shared.sessions.invalidate(sid);
        }
        Ok(rows.len())
    }

    async fn sweep(&self, now: u64) -> StoreResult<usize> {
        let mut removed = 0;
        loop {
            let rows = self.query(SWEEP, &[&secs(now), &SWEEP_BATCH]).await?;
            // Dead sessions are dead in every cache already; this only frees the memory.
            for row in &rows {
                self.shared.sessions.invalidate(&sid_of(row.get(0))?);
            }
            removed += rows.len();
            if (rows.len() as i64) < SWEEP_BATCH {
                return Ok(removed);
            }
        }
    }

    async fn sync(&self) -> StoreResult<()> {
        // A transaction becomes visible to others only after its commit record is
        // flushed (synchronous_commit = on): whatever this instance has read is durable.
        Ok(())
    }

    async fn list_identities(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Page<(String, Identity)>> {
        let rows = self
            .query(
                IDENTITIES_LIST,
                &[&after, &(limit.min(i64::MAX as usize) as i64)],
            )
            .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    row.get::<_, String>(0),
                    Identity {
                        uid: uid_of(row.get(1))?,
                        unionid: row.get(2),
                        session_key: Secret::new(
                            row.get::<_, Option<String>>(3).unwrap_or_default(),
                        ),
                    },
                ))
            })
            .collect()
    }

    async fn restore(&self, batch: &Restore) -> StoreResult<()> {
        self.run(|mut client| async move {
            let tx = client.transaction().await.map_err(db)?;
            let put_user = tx.prepare_cached(USER_PUT).await.map_err(db)?;
            for user in &batch.users {
                tx.execute(
                    &put_user,
                    &[
                        &user.uid.as_str(),
                        &user.name,
                        &user.agent,
                        &user.avatar,
                        &secs(user.update_at),
                    ],
                )
                .await
                .map_err(db)?;
            }
            let put_identity = tx
                .prepare_cached(
                    "INSERT INTO identities (openid, uid, unionid) VALUES ($1, $2, $3)
                     ON CONFLICT (openid) DO UPDATE SET uid = EXCLUDED.uid, unionid = EXCLUDED.unionid",
                )
                .await
                .map_err(db)?;
            for (openid, identity) in &batch.identities {
                tx.execute(
                    &put_identity,
                    &[openid, &identity.uid.as_str(), &identity.unionid],
                )
                .await
                .map_err(db)?;
            }
            let put_session = tx
                .prepare_cached(
                    "INSERT INTO sessions (sid, uid, created_at, last_used_at, expires_at,
                         idle_expires_at, revoked, generation, current_hash, previous_hash,
                         rotated_at_ms)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
                     ON CONFLICT (sid) DO UPDATE SET uid = EXCLUDED.uid,
                         created_at = EXCLUDED.created_at, last_used_at = EXCLUDED.last_used_at,
                         expires_at = EXCLUDED.expires_at, idle_expires_at = EXCLUDED.idle_expires_at,
                         revoked = EXCLUDED.revoked, generation = EXCLUDED.generation,
                         current_hash = EXCLUDED.current_hash,
                         previous_hash = EXCLUDED.previous_hash, rotated_at_ms = EXCLUDED.rotated_at_ms
                     -- store::restores_over: never over a revoked session, one further
                     -- along, or one of another user. The row is locked and this is
                     -- judged on its latest version, so a concurrent renewal is seen.
                     WHERE NOT sessions.revoked AND sessions.uid = EXCLUDED.uid
                         AND sessions.generation <= EXCLUDED.generation
                         AND sessions.last_used_at <= EXCLUDED.last_used_at",
                )
                .await
                .map_err(db)?;
            for session in &batch.sessions {
                let previous_hash = session.previous.map(|p| p.token.0.to_vec());
                let rotated_at_ms = session.previous.map(|p| secs(p.rotated_at_ms));
                tx.execute(
                    &put_session,
                    &[
                        &&session.sid.0[..],
                        &session.uid.as_str(),
                        &secs(session.created_at),
                        &secs(session.last_used_at),
                        &secs(session.expires_at),
                        &secs(session.idle_expires_at),
                        &(session.state == SessionState::Revoked),
                        &i64::from(session.generation),
                        &&session.current.0[..],
                        &previous_hash,
                        &rotated_at_ms,
                    ],
                )
                .await
                .map_err(db)?;
            }
            // Whatever any instance cached may have been replaced.
            tx.execute("SELECT pg_notify($1, '*')", &[&self.channel])
                .await
                .map_err(db)?;
            tx.commit().await.map_err(db)
        })
        .await?;
        self.shared.clear();
        Ok(())
    }

    async fn is_empty(&self) -> StoreResult<bool> {
        let rows = self.query(IS_EMPTY, &[]).await?;
        Ok(rows.first().is_some_and(|r| r.get(0)))
    }

    async fn census(&self, now: u64) -> StoreResult<Census> {
        let rows = self.query(CENSUS, &[&secs(now)]).await?;
        let row = rows.first().ok_or_else(|| corrupt("no census"))?;
        Ok(Census {
            users: unsigned(row.get(0), "a negative count")?,
            sessions_live: unsigned(row.get(1), "a negative count")?,
        })
    }

    async fn key_or_init(
        &self,
        name: &str,
        generate: impl FnOnce() -> Vec<u8> + Send,
    ) -> StoreResult<Vec<u8>> {
        if let Some(row) = self.query(KEY_GET, &[&name]).await?.first() {
            return Ok(row.get(0));
        }
        let fresh = generate();
        // Empty only if another instance stored the key after this statement's snapshot
        // was taken; the next run reads it.
        for _ in 0..3 {
            if let Some(row) = self.query(KEY_INIT, &[&name, &fresh]).await?.first() {
                return Ok(row.get(0));
            }
        }
        Err(StoreError::Io(format!(
            "the key {name} kept changing while it was read"
        )))
    }

    async fn meta(&self, name: &str) -> StoreResult<Option<Vec<u8>>> {
        let rows = self
            .query("SELECT value FROM meta WHERE name = $1", &[&name])
            .await?;
        Ok(rows.first().map(|r| r.get(0)))
    }

    async fn put_meta(&self, name: &str, value: Vec<u8>) -> StoreResult<()> {
        self.query(
            "INSERT INTO meta (name, value) VALUES ($1, $2)
             ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
            &[&name, &value],
        )
        .await?;
        Ok(())
    }

    async fn retired_keys(&self, name: &str) -> StoreResult<Vec<RetiredKey>> {
        let rows = self.query(RETIRED_GET, &[&name]).await?;
        rows.iter()
            .map(|row| {
                Ok(RetiredKey {
                    key: Secret::new(row.get(0)),
                    retire_at: unsigned(row.get(1), "a bad retire time")?,
                })
            })
            .collect()
    }

    async fn rotate_key(
        &self,
        name: &str,
        fresh: Vec<u8>,
        retire_at: u64,
        now: u64,
    ) -> StoreResult<Option<Vec<u8>>> {
        self.run(|mut client| async move {
            let tx = client.transaction().await.map_err(db)?;
            let replaced: Option<Vec<u8>> = tx
                .query_opt(
                    "SELECT key FROM secret_keys WHERE name = $1 FOR UPDATE",
                    &[&name],
                )
                .await
                .map_err(db)?
                .map(|row| row.get(0));
            tx.execute(
                "DELETE FROM secret_retired_keys WHERE name = $1 AND retire_at <= $2",
                &[&name, &secs(now)],
            )
            .await
            .map_err(db)?;
            if let Some(old) = &replaced {
                tx.execute(
                    "INSERT INTO secret_retired_keys (name, key, retire_at) VALUES ($1, $2, $3)
                     ON CONFLICT (name, key) DO NOTHING",
                    &[&name, old, &secs(retire_at)],
                )
                .await
                .map_err(db)?;
            }
            tx.execute(
                "INSERT INTO secret_keys (name, key) VALUES ($1, $2)
                 ON CONFLICT (name) DO UPDATE SET key = EXCLUDED.key",
                &[&name, &fresh],
            )
            .await
            .map_err(db)?;
            tx.execute("SELECT pg_notify($1, 'k')", &[&self.channel])
                .await
                .map_err(db)?;
            tx.commit().await.map_err(db)?;
            Ok(replaced)
        })
        .await
    }

    async fn key(&self, name: &str) -> StoreResult<Option<Vec<u8>>> {
        let rows = self.query(KEY_GET, &[&name]).await?;
        rows.first()
            .map(|r| r.try_get(0).map_err(|_| corrupt("a bad key")))
            .transpose()
    }

    async fn signing_keys(&self) -> StoreResult<Vec<SigningKeyRecord>> {
        self.query(SIGNING_KEYS_GET, &[])
            .await?
            .iter()
            .map(signing_key_from)
            .collect()
    }

    async fn swap_signing_keys(
        &self,
        expected: &[SigningKeyRecord],
        keys: &[SigningKeyRecord],
    ) -> StoreResult<bool> {
        self.run(|mut client| async move {
            let tx = client.transaction().await.map_err(db)?;
            // Rotations are rare: one at a time, while readers go on reading.
            tx.batch_execute("LOCK TABLE secret_signing_keys IN SHARE ROW EXCLUSIVE MODE")
                .await
                .map_err(db)?;
            let stored: Vec<SigningKeyRecord> = tx
                .query(SIGNING_KEYS_GET, &[])
                .await
                .map_err(db)?
                .iter()
                .map(signing_key_from)
                .collect::<StoreResult<_>>()?;
            if stored != expected {
                return Ok(false);
            }
            tx.execute("DELETE FROM secret_signing_keys", &[])
                .await
                .map_err(db)?;
            for key in keys {
                tx.execute(
                    "INSERT INTO secret_signing_keys
                         (kid, algorithm, private_key, created_at, signs_at, retires_at)
                     VALUES ($1, $2, $3, $4, $5, $6)",
                    &[
                        &key.kid,
                        &key.algorithm.name(),
                        key.private.expose(),
                        &secs(key.created_at),
                        &secs(key.signs_at),
                        &key.retires_at.map(secs),
                    ],
                )
                .await
                .map_err(db)?;
            }
            tx.execute("SELECT pg_notify($1, 'k')", &[&self.channel])
                .await
                .map_err(db)?;
            tx.commit().await.map_err(db)?;
            Ok(true)
        })
        .await
    }

    fn database_up(&self) -> Option<bool> {
        Some(self.is_up())
    }
}

const SIGNING_KEYS_GET: &str = "\
SELECT kid, algorithm, private_key, created_at, signs_at, retires_at
FROM secret_signing_keys ORDER BY signs_at, created_at, kid";

/// A row of [`SIGNING_KEYS_GET`].
fn signing_key_from(row: &Row) -> StoreResult<SigningKeyRecord> {
    let bad = |_| corrupt("a bad signing key");
    let algorithm: String = row.try_get(1).map_err(bad)?;
    Ok(SigningKeyRecord {
        kid: row.try_get(0).map_err(bad)?,
        algorithm: KeyAlgorithm::parse(&algorithm)
            .ok_or_else(|| corrupt("a signing key of an unknown algorithm"))?,
        private: Secret::new(row.try_get(2).map_err(bad)?),
        created_at: unsigned(row.try_get(3).map_err(bad)?, "a bad key time")?,
        signs_at: unsigned(row.try_get(4).map_err(bad)?, "a bad key time")?,
        retires_at: row
            .try_get::<_, Option<i64>>(5)
            .map_err(bad)?
            .map(|t| unsigned(t, "a bad key time"))
            .transpose()?,
    })
}

/// Applies the migrations of `options`' database without serving (`liveuser migrate`).
pub(crate) async fn migrate_only(options: &ConnectOptions) -> StoreResult<Migrated> {
    let tls = options.tls().map_err(StoreError::Io)?;
    let (mut client, connection) = tokio::time::timeout(CALL_TIMEOUT, options.pg.connect(tls))
        .await
        .map_err(|_| {
            StoreError::Io(format!(
                "cannot reach the database {}: no answer",
                options.describe()
            ))
        })?
        .map_err(|e| {
            StoreError::Io(format!(
                "cannot reach the database {}: {}",
                options.describe(),
                describe_error(&e)
            ))
        })?;
    let driver = tokio::spawn(connection);
    let migrated = migrate::apply(&mut client).await;
    drop(client);
    let _ = driver.await;
    migrated
}
