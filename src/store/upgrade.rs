//! The storage format of a sled database, checked at every open, and the upgrade of a
//! database written by an earlier release.
//!
//! The `meta` tree holds the format under [`FORMAT_KEY`], written when a database is
//! created or an upgrade completes. A database without it was written by a release
//! before format 2 (format 1: records with version byte 1, sessions under random ids
//! with one record per refresh token) — or it is new, or an upgrade was cut short. All
//! three take the same path: every step below is idempotent, skips what is already in
//! format 2, and the marker is written last, so an upgrade a crash interrupts is
//! finished at the next start.
//!
//! 1. Users, identities and retired signing keys are rewritten in format 2.
//! 2. Each session is rewritten under the id its current token derives (the first half
//!    of the token hash format 1 stored), with its user-index entry, and its old record
//!    removed. Its last rotation and older tokens are dropped: a format-1 token is found
//!    only by the session id it derives, so an older one is refused, revoking nothing.
//! 3. The per-token trees of format 1 are dropped.
//!
//! Access tokens issued before the upgrade name the old session ids and are refused;
//! clients renew them with their refresh tokens, which keep working. A database of a
//! format this build does not know (a later release's) is refused with a message that
//! says how to move it: export with the release that wrote it, import with this one.

use std::time::Instant;

use sled::{Db, Tree};

use super::StoreError;
use super::codec::{Record, index_key, v1};
use crate::model::{Identity, RetiredKey, Session, UserRecord};

/// Where `meta` keeps the storage format.
pub(super) const FORMAT_KEY: &str = "storage_format";
/// The storage format this build writes and reads.
pub(super) const FORMAT: u8 = 2;

/// Trees of format 1 that format 2 does without.
const FORMAT_1_TREES: [&str; 3] = ["tokenhash_refresh", "sid_tokenhash", "uid_sid"];

fn io(e: sled::Error) -> StoreError {
    StoreError::Io(e.to_string())
}

/// How to move a database between releases that cannot open each other's.
const MOVE_IT: &str = "with the liveuser release that wrote it, `liveuser export --sessions --out FILE`, \
     then `liveuser import FILE` into an empty database with this release";

/// Makes sure `db` is in this build's format: upgrades it from format 1 if need be
/// (resuming an upgrade a crash cut short), marks a new database, refuses a format it
/// does not know.
pub(super) fn to_current(db: &Db) -> Result<(), StoreError> {
    let meta = db.open_tree("meta").map_err(io)?;
    match meta.get(FORMAT_KEY).map_err(io)? {
        Some(v) if v.as_ref() == [FORMAT] => return Ok(()),
        Some(v) => {
            return Err(StoreError::Format(format!(
                "the database is in storage format {}, which this build of liveuser does not \
                 read (it reads format {FORMAT}); to move it, {MOVE_IT}",
                v.first().copied().unwrap_or(0)
            )));
        }
        None => {}
    }
    let started = Instant::now();
    let upgraded = upgrade(db, &meta).map_err(|e| {
        StoreError::Format(format!(
            "cannot upgrade the database from storage format 1 to {FORMAT}: {e}; to move it \
             instead, {MOVE_IT}"
        ))
    })?;
    meta.insert(FORMAT_KEY, &[FORMAT]).map_err(io)?;
    db.flush().map_err(io)?;
    if upgraded.any() {
        tracing::info!(
            users = upgraded.users,
            identities = upgraded.identities,
            sessions = upgraded.sessions,
            secs = started.elapsed().as_secs_f64(),
            "upgraded the database from storage format 1 to {FORMAT}; access tokens issued \
             before are refused and clients renew them"
        );
    }
    Ok(())
}

/// What an upgrade rewrote.
#[derive(Debug, Default)]
struct Upgraded {
    users: u64,
    identities: u64,
    sessions: u64,
    other: u64,
}

impl Upgraded {
    fn any(&self) -> bool {
        self.users + self.identities + self.sessions + self.other > 0
    }
}

/// Whether `value` is a format-1 record (everything else is this format's, written by
/// an earlier, interrupted run of the upgrade, and left as it is).
fn is_format_1(value: &[u8]) -> bool {
    value.first() == Some(&v1::VERSION)
}

/// Rewrites every format-1 record of `tree` with `convert`, in place, a page at a time.
fn rewrite_in_place<T: Record>(
    tree: &Tree,
    convert: impl Fn(&[u8]) -> Result<T, StoreError>,
) -> Result<u64, StoreError> {
    let mut count = 0;
    for item in tree.iter() {
        let (key, value) = item.map_err(io)?;
        if is_format_1(&value) {
            tree.insert(&key, convert(&value)?.encode()).map_err(io)?;
            count += 1;
        }
    }
    Ok(count)
}

fn upgrade(db: &Db, meta: &Tree) -> Result<Upgraded, StoreError> {
    let mut done = Upgraded {
        users: rewrite_in_place::<UserRecord>(&db.open_tree("uid_user").map_err(io)?, v1::user)?,
        identities: rewrite_in_place::<Identity>(
            &db.open_tree("openid_identity").map_err(io)?,
            v1::identity,
        )?,
        ..Upgraded::default()
    };
    for item in meta.iter() {
        let (key, value) = item.map_err(io)?;
        if key.ends_with(b".retired") && is_format_1(&value) {
            let keys: Vec<RetiredKey> = v1::retired(&value)?;
            meta.insert(&key, keys.encode()).map_err(io)?;
            done.other += 1;
        }
    }
    let sessions = db.open_tree("sid_session").map_err(io)?;
    let index = db.open_tree("uid_created_sid").map_err(io)?;
    // One pass: sessions rewritten under their new ids may land ahead of the cursor and
    // are met again, as format 2, and skipped.
    for item in sessions.iter() {
        let (key, value) = item.map_err(io)?;
        if !is_format_1(&value) {
            continue;
        }
        let session: Session = v1::session(&value)?;
        index.insert(index_key(&session), &[]).map_err(io)?;
        sessions
            .insert(session.sid.0, session.encode())
            .map_err(io)?;
        if key.as_ref() != session.sid.0 {
            sessions.remove(&key).map_err(io)?;
        }
        done.sessions += 1;
    }
    for name in FORMAT_1_TREES {
        if db.drop_tree(name).map_err(io)? {
            done.other += 1;
        }
    }
    // The rewritten records are durable before the marker says they are there.
    db.flush().map_err(io)?;
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &std::path::Path) -> Db {
        sled::Config::new().path(dir.join("db")).open().unwrap()
    }

    /// A copy of the format-1 database of `tests/fixtures/format1`, opened.
    fn format_1() -> (tempfile::TempDir, Db) {
        let from =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format1/db");
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("db")).unwrap();
        for file in ["conf", "db"] {
            std::fs::copy(from.join(file), dir.path().join("db").join(file)).unwrap();
        }
        let db = open(dir.path());
        (dir, db)
    }

    /// Every record's version byte, tree by tree (meta: the encoded lists only).
    fn versions(db: &Db) -> Vec<u8> {
        let mut out = Vec::new();
        for name in ["uid_user", "openid_identity", "sid_session"] {
            for item in db.open_tree(name).unwrap().iter() {
                out.push(item.unwrap().1[0]);
            }
        }
        for item in db.open_tree("meta").unwrap().iter() {
            let (key, value) = item.unwrap();
            if key.ends_with(b".retired") {
                out.push(value[0]);
            }
        }
        out
    }

    #[test]
    fn an_upgrade_cut_short_is_finished_at_the_next_start() {
        let (_dir, db) = format_1();
        assert!(versions(&db).contains(&v1::VERSION));
        // What a crash in the middle leaves: the users done, one session written under
        // its new id with its index entry but its old record not yet removed, no marker.
        rewrite_in_place::<UserRecord>(&db.open_tree("uid_user").unwrap(), v1::user).unwrap();
        let sessions = db.open_tree("sid_session").unwrap();
        let (_, value) = sessions.iter().next().unwrap().unwrap();
        let first = v1::session(&value).unwrap();
        db.open_tree("uid_created_sid")
            .unwrap()
            .insert(index_key(&first), &[])
            .unwrap();
        sessions.insert(first.sid.0, first.encode()).unwrap();
        assert_eq!(sessions.len(), 5);

        to_current(&db).unwrap();
        assert!(
            versions(&db)
                .iter()
                .all(|&v| v == super::super::codec::VERSION)
        );
        assert_eq!(
            sessions.len(),
            4,
            "each session once: alice, bob twice, carol"
        );
        assert_eq!(db.open_tree("uid_created_sid").unwrap().len(), 4);
        for item in sessions.iter() {
            let (key, value) = item.unwrap();
            let session = Session::decode(&key, &value).unwrap();
            assert_eq!(
                session.sid.0[..],
                session.current.0[..16],
                "keyed by its token"
            );
        }
        let names: Vec<Vec<u8>> = db.tree_names().iter().map(|n| n.to_vec()).collect();
        for old in FORMAT_1_TREES {
            assert!(!names.contains(&old.as_bytes().to_vec()), "{old} dropped");
        }
        let meta = db.open_tree("meta").unwrap();
        assert_eq!(meta.get(FORMAT_KEY).unwrap().unwrap().as_ref(), [FORMAT]);
        // And once marked, nothing is read again.
        let checksum = db.checksum().unwrap();
        to_current(&db).unwrap();
        assert_eq!(db.checksum().unwrap(), checksum);
    }

    #[test]
    fn a_new_database_is_marked_with_this_format() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path());
        to_current(&db).unwrap();
        let meta = db.open_tree("meta").unwrap();
        assert_eq!(meta.get(FORMAT_KEY).unwrap().unwrap().as_ref(), [FORMAT]);
        to_current(&db).unwrap();
    }

    #[test]
    fn a_later_format_is_refused_with_a_way_to_move_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path());
        db.open_tree("meta")
            .unwrap()
            .insert(FORMAT_KEY, &[FORMAT + 1])
            .unwrap();
        let err = to_current(&db).unwrap_err().to_string();
        assert!(err.contains("storage format 3"), "{err}");
        assert!(err.contains("export") && err.contains("import"), "{err}");
    }

    #[test]
    fn a_record_that_is_neither_format_stops_the_upgrade_and_names_export_and_import() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path());
        db.open_tree("uid_user")
            .unwrap()
            .insert("u", &[1, 0xff, 0xff])
            .unwrap();
        let err = to_current(&db).unwrap_err().to_string();
        assert!(err.contains("cannot upgrade"), "{err}");
        assert!(err.contains("export") && err.contains("import"), "{err}");
        let meta = db.open_tree("meta").unwrap();
        assert!(meta.get(FORMAT_KEY).unwrap().is_none(), "not marked");
    }
}
