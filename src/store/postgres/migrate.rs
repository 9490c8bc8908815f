//! Schema migrations, shipped inside the binary and applied under an advisory lock.
//!
//! Each migration is a SQL file in `migrations/`, numbered from 1, applied in its own
//! transaction together with the row that records it in `liveuser_schema_migrations`.
//! A start first reads the schema's version without any lock: a schema that is up to date
//! needs nothing more, so nothing that holds the lock can stop it. Only when a migration
//! is due does it take a session-level advisory lock (per schema), so N instances starting
//! at once apply each migration exactly once: the first applies, the others wait and then
//! find nothing to do. Any role of the server may take any advisory lock, so the wait is
//! bounded (the connection's `lock_timeout`, else 30 s) and says which session holds the
//! lock. A database whose schema is newer than this binary knows is refused: an old
//! binary must not write into a layout it does not understand (roll the upgrade forward,
//! or point it at another database).

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use super::{MIGRATE_LOCK, db};
use crate::store::{StoreError, StoreResult};

/// One migration: its number, a description for operators, and its SQL.
struct Migration {
    version: i32,
    description: &'static str,
    sql: &'static str,
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "users, identities, sessions, refresh tokens, keys",
        sql: include_str!("migrations/0001_initial.sql"),
    },
    Migration {
        version: 2,
        description: "a private notification channel; every revocation notified",
        sql: include_str!("migrations/0002_notifications.sql"),
    },
    Migration {
        version: 3,
        description: "signing keys with an algorithm and a schedule",
        sql: include_str!("migrations/0003_signing_keys.sql"),
    },
];

/// The schema version this binary writes.
pub(crate) const LATEST: i32 = 3;

/// What [`apply`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migrated {
    /// The schema version before.
    pub from: i32,
    /// The schema version now ([`LATEST`]).
    pub to: i32,
    /// The migrations applied now, as `N: description`.
    pub applied: Vec<String>,
}

/// How long a start waits for the migration lock when the connection sets no
/// `lock_timeout` (one in the URL's `options` replaces it).
const LOCK_WAIT: Duration = Duration::from_secs(30);
/// Pause between two tries of the lock.
const LOCK_RETRY: Duration = Duration::from_millis(200);
/// How often a start waiting for the lock says whom it waits for.
const LOCK_REPORT_EVERY: Duration = Duration::from_secs(5);

/// Brings the schema of `client`'s `search_path` to [`LATEST`]. A schema already there
/// is only read; the migration lock is taken only when there is something to apply.
pub(super) async fn apply(client: &mut Client) -> StoreResult<Migrated> {
    let from = version(client).await?;
    if from == LATEST {
        return Ok(Migrated {
            from,
            to: LATEST,
            applied: Vec::new(),
        });
    }
    lock(client).await?;
    let result = apply_locked(client).await;
    // Released also if the connection drops: the lock is the session's.
    let unlocked = client
        .execute(
            "SELECT pg_advisory_unlock($1, hashtext(current_schema()))",
            &[&MIGRATE_LOCK],
        )
        .await
        .map_err(db);
    let migrated = result?;
    unlocked?;
    Ok(migrated)
}

/// The schema's version (0: no liveuser tables yet), refused when it is newer than this
/// binary knows or there is no schema to create the tables in.
async fn version(client: &Client) -> StoreResult<i32> {
    let row = client
        .query_one(
            "SELECT current_schema() IS NOT NULL, \
                    to_regclass('liveuser_schema_migrations') IS NOT NULL",
            &[],
        )
        .await
        .map_err(db)?;
    let shape = |_| StoreError::Corrupt("an answer of the wrong shape".into());
    if !row.try_get::<_, bool>(0).map_err(shape)? {
        return Err(StoreError::Io(
            "no schema to create liveuser's tables in: the search_path names no existing \
             schema (create it, or fix options=-csearch_path=… in storage.postgres_url)"
                .into(),
        ));
    }
    if !row.try_get::<_, bool>(1).map_err(shape)? {
        return Ok(0);
    }
    let from: i32 = client
        .query_one(
            "SELECT coalesce(max(version), 0) FROM liveuser_schema_migrations",
            &[],
        )
        .await
        .map_err(db)?
        .try_get(0)
        .map_err(shape)?;
    if from > LATEST {
        return Err(StoreError::Io(format!(
            "the database's schema is version {from}, newer than this liveuser knows \
             (version {LATEST}); run a liveuser at least as new as the one that migrated it"
        )));
    }
    Ok(from)
}

/// Takes the migration lock of the schema, waiting for it at most `lock_timeout` (or
/// [`LOCK_WAIT`]). Any role of the server can take any advisory lock, so a holder is not
/// necessarily another liveuser: the wait is bounded, logged every
/// [`LOCK_REPORT_EVERY`] with the session that holds the lock, and given up with the
/// same.
async fn lock(client: &Client) -> StoreResult<()> {
    let wait = lock_wait(client).await?;
    let started = Instant::now();
    let mut reported: Option<Instant> = None;
    loop {
        let taken: bool = client
            .query_one(
                "SELECT pg_try_advisory_lock($1, hashtext(current_schema()))",
                &[&MIGRATE_LOCK],
            )
            .await
            .map_err(db)?
            .try_get(0)
            .map_err(|_| StoreError::Corrupt("an answer of the wrong shape".into()))?;
        if taken {
            return Ok(());
        }
        let (pid, holder) = holder(client).await;
        if started.elapsed() >= wait {
            let pid = pid.map_or_else(|| "<pid>".into(), |p| p.to_string());
            return Err(StoreError::Io(format!(
                "gave up after {} s waiting for the schema's migration lock, held by {holder}; \
                 if that is no liveuser migrating, end it (SELECT pg_terminate_backend({pid})) \
                 or set a longer lock_timeout in the URL's options",
                wait.as_secs_f64()
            )));
        }
        if reported.is_none_or(|at| at.elapsed() >= LOCK_REPORT_EVERY) {
            tracing::warn!(
                holder = %holder,
                waited_secs = started.elapsed().as_secs(),
                limit_secs = wait.as_secs_f64(),
                "waiting for the schema's migration lock before migrating"
            );
            reported = Some(Instant::now());
        }
        tokio::time::sleep(LOCK_RETRY).await;
    }
}

/// The connection's `lock_timeout`, or [`LOCK_WAIT`] when it has none.
async fn lock_wait(client: &Client) -> StoreResult<Duration> {
    let ms: i64 = client
        .query_one(
            "SELECT setting::bigint FROM pg_settings WHERE name = 'lock_timeout'",
            &[],
        )
        .await
        .map_err(db)?
        .try_get(0)
        .map_err(|_| StoreError::Corrupt("an answer of the wrong shape".into()))?;
    Ok(match u64::try_from(ms) {
        Ok(ms) if ms > 0 => Duration::from_millis(ms),
        _ => LOCK_WAIT,
    })
}

/// Who holds the schema's migration lock, as far as this role may see: the pid, and the
/// role, application and client address when `pg_stat_activity` shows them.
async fn holder(client: &Client) -> (Option<i32>, String) {
    let found = client
        .query_opt(
            "SELECT l.pid, a.usename::text, a.application_name, host(a.client_addr)
             FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
             WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
               AND l.classid = $1::int4::oid AND l.objid = hashtext(current_schema())::oid
             LIMIT 1",
            &[&MIGRATE_LOCK],
        )
        .await;
    let unknown = (None, "another session".to_string());
    let Ok(Some(row)) = found else {
        return unknown;
    };
    let Ok(pid) = row.try_get::<_, i32>(0) else {
        return unknown;
    };
    let mut said = format!("pid {pid}");
    let parts = [("role", 1), ("application", 2), ("from", 3)];
    for (label, at) in parts {
        if let Ok(Some(value)) = row.try_get::<_, Option<String>>(at)
            && !value.is_empty()
        {
            said.push_str(&format!(", {label} {value}"));
        }
    }
    (Some(pid), said)
}

/// Applies what is missing, under the lock (another instance may have applied it while
/// this one waited).
async fn apply_locked(client: &mut Client) -> StoreResult<Migrated> {
    let from = version(client).await?;
    if from == 0 {
        client
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS liveuser_schema_migrations (
                     version     integer PRIMARY KEY,
                     description text NOT NULL,
                     applied_at  timestamptz NOT NULL DEFAULT now()
                 )",
            )
            .await
            .map_err(db)?;
    }
    let mut applied = Vec::new();
    for migration in MIGRATIONS.iter().filter(|m| m.version > from) {
        let tx = client.transaction().await.map_err(db)?;
        tx.batch_execute(migration.sql).await.map_err(db)?;
        tx.execute(
            "INSERT INTO liveuser_schema_migrations (version, description) VALUES ($1, $2)",
            &[&migration.version, &migration.description],
        )
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        tracing::info!(
            version = migration.version,
            description = migration.description,
            "database schema migrated"
        );
        applied.push(format!("{}: {}", migration.version, migration.description));
    }
    Ok(Migrated {
        from,
        to: LATEST,
        applied,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_from_one_without_gaps() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i32 + 1);
        }
        assert_eq!(MIGRATIONS.last().map(|m| m.version), Some(LATEST));
    }
}
