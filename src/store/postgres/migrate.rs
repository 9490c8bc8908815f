//! Schema migrations, shipped inside the binary and applied under an advisory lock.
//!
//! Each migration is a SQL file in `migrations/`, numbered from 1, applied in its own
//! transaction together with the row that records it in `liveuser_schema_migrations`.
//! Before looking, an instance takes a session-level advisory lock (per schema), so N
//! instances starting at once apply each migration exactly once: the first applies, the
//! others wait and then find nothing to do. A database whose schema is newer than this
//! binary knows is refused: an old binary must not write into a layout it does not
//! understand (roll the upgrade forward, or point it at another database).

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
];

/// The schema version this binary writes.
pub(crate) const LATEST: i32 = 2;

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

/// Brings the schema of `client`'s `search_path` to [`LATEST`], under the migration lock.
pub(super) async fn apply(client: &mut Client) -> StoreResult<Migrated> {
    client
        .execute(
            "SELECT pg_advisory_lock($1, hashtext(current_schema()))",
            &[&MIGRATE_LOCK],
        )
        .await
        .map_err(db)?;
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

async fn apply_locked(client: &mut Client) -> StoreResult<Migrated> {
    let schema: Option<String> = client
        .query_one("SELECT current_schema()", &[])
        .await
        .map_err(db)?
        .get(0);
    if schema.is_none() {
        return Err(StoreError::Io(
            "no schema to create liveuser's tables in: the search_path names no existing \
             schema (create it, or fix options=-csearch_path=… in storage.postgres_url)"
                .into(),
        ));
    }
    let fresh: bool = client
        .query_one(
            "SELECT to_regclass('liveuser_schema_migrations') IS NULL",
            &[],
        )
        .await
        .map_err(db)?
        .get(0);
    if fresh {
        client
            .batch_execute(
                "CREATE TABLE liveuser_schema_migrations (
                     version     integer PRIMARY KEY,
                     description text NOT NULL,
                     applied_at  timestamptz NOT NULL DEFAULT now()
                 )",
            )
            .await
            .map_err(db)?;
    }
    let from: i32 = client
        .query_one(
            "SELECT coalesce(max(version), 0) FROM liveuser_schema_migrations",
            &[],
        )
        .await
        .map_err(db)?
        .get(0);
    if from > LATEST {
        return Err(StoreError::Io(format!(
            "the database's schema is version {from}, newer than this liveuser knows \
             (version {LATEST}); run a liveuser at least as new as the one that migrated it"
        )));
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
