//! Cache invalidation across instances: LISTEN/NOTIFY on one dedicated connection.
//!
//! PostgreSQL serialises the commits of transactions that notify (a database-wide lock
//! held through the commit's WAL flush), so a notification in every renewal would turn
//! group commit off and cap renewals at one disk flush each. Notifications are therefore
//! sent only where they are needed, in the way each change needs:
//!
//! | payload             | sent by                                        | how                        |
//! |---------------------|------------------------------------------------|----------------------------|
//! | `s<sid hex>`        | a session revoked, cut short, moved or deleted, by any means: reuse, eviction at login, operator, sweep, an import, SQL in psql | by triggers on `sessions` (migration 2), in the changing statement: delivered exactly at its commit |
//! | `U<uid>,<uid>,…`    | profile writes (AddUser, `user put`)           | batched by the writing instance, at most every [`BATCH_WINDOW`] after the commit |
//! | `k`                 | signing-key rotation                           | in its transaction         |
//! | `*`                 | import, `TRUNCATE sessions`                    | in its transaction         |
//! | `p`                 | an instance starting, to check it may notify   | once; changes nothing      |
//!
//! The channel is a random name kept in `secret_channel` (migration 2), because any role
//! of the server may LISTEN or NOTIFY on any channel it can name, grants or not: the name
//! is what keeps a role that may not read that table from hearing revoked sessions or
//! making every instance drop its caches. A payload is still parsed as input from
//! outside ([`Shared::notified`]): nothing in it can panic the listener, and whatever is
//! not understood empties the caches.
//!
//! Renewals notify nothing — the trigger on updates names only columns a renewal never
//! sets, so it is not even considered: a renewal only moves a session's idle expiry later
//! (and changes its token hashes, which no cached read uses), so a cached copy elsewhere can
//! only look *more* expired than the session is; such a copy is re-read from the
//! database before it is believed ([`Shared::stale`]). A session becomes unusable
//! earlier only by revocation, deletion or a shortened expiry, which the triggers notify
//! transactionally.
//!
//! The caches are only as good as this connection. While it is down — and from the
//! moment it is lost until it is listening again — the caches are emptied and bypassed:
//! every read goes to the database. Losing it is noticed by the connection failing or by
//! a heartbeat query every [`HEARTBEAT`] that must answer within [`HEARTBEAT_TIMEOUT`],
//! so a silently dead connection is given up in about a second. On reconnect the caches
//! are emptied again (notifications may have been missed) and the keys reloaded.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::future::poll_fn;
use tokio::sync::{oneshot, watch};
use tokio_postgres::AsyncMessage;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::model::Session;
use crate::model::{Sid, Uid, UserRecord};
use crate::store::cache::Cache;
use crate::store::{StoreError, StoreResult};

/// How often the listening connection is checked.
const HEARTBEAT: Duration = Duration::from_millis(300);
/// How long a heartbeat may take before the connection is given up.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_millis(700);
/// Pause between reconnection attempts.
const RETRY: Duration = Duration::from_millis(250);
/// How long profile invalidations are gathered before one notification carries them.
pub(super) const BATCH_WINDOW: Duration = Duration::from_millis(5);
/// Longest notification payload sent (PostgreSQL's limit is 8000 bytes).
const PAYLOAD_MAX: usize = 7000;
/// The payload an instance sends once at start, to find out that it may notify; it
/// changes nothing.
pub(super) const PROBE: &str = "p";

/// What the listener and the store share: the caches and whether they can be trusted.
pub(super) struct Shared {
    pub(super) users: Cache<Uid, Arc<UserRecord>>,
    pub(super) sessions: Cache<Sid, Session>,
    listening: AtomicBool,
    keys: watch::Sender<u64>,
}

impl Shared {
    pub(super) fn new(user_entries: usize, session_entries: usize) -> Self {
        Shared {
            users: Cache::new(user_entries),
            sessions: Cache::new(session_entries),
            listening: AtomicBool::new(false),
            keys: watch::Sender::new(0),
        }
    }

    /// Whether invalidations are being received, so the caches may be used.
    pub(super) fn listening(&self) -> bool {
        self.listening.load(Ordering::SeqCst)
    }

    /// A receiver told of every change of the signing keys (and of every reconnection,
    /// after which a change may have been missed).
    pub(super) fn key_changes(&self) -> watch::Receiver<u64> {
        self.keys.subscribe()
    }

    /// Whether a cached session must be re-read before it is believed: it looks expired
    /// by the wall clock but is not revoked (a renewal on another instance may have moved
    /// its idle expiry later without telling this one).
    pub(super) fn stale(session: &Session) -> bool {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        session.state == crate::model::SessionState::Active && !session.is_live(now)
    }

    pub(super) fn clear(&self) {
        self.users.clear();
        self.sessions.clear();
    }

    fn up(&self) {
        // Emptied before they are trusted again: invalidations sent while nobody listened
        // are lost.
        self.clear();
        self.listening.store(true, Ordering::SeqCst);
        self.keys.send_modify(|n| *n += 1);
    }

    fn down(&self) {
        self.listening.store(false, Ordering::SeqCst);
        self.clear();
    }

    /// Acts on one payload. A payload is input from whoever can notify on the channel, so
    /// it is parsed without anything that can panic (it may be any UTF-8 at all), and one
    /// that is not understood is taken as "anything may have changed": the caches are
    /// emptied, which costs reads and never serves a stale record.
    fn notified(&self, payload: &str) {
        match payload.split_at_checked(1) {
            Some(("s", sid)) => match Sid::parse(sid) {
                Some(sid) => self.sessions.invalidate(&sid),
                None => self.clear(),
            },
            Some(("U", uids)) => {
                for uid in uids.split(',') {
                    match Uid::parse(uid) {
                        Ok(uid) => self.users.invalidate(&uid),
                        Err(_) => return self.clear(),
                    }
                }
            }
            Some(("k", "")) => self.keys.send_modify(|n| *n += 1),
            Some((PROBE, "")) => {}
            _ => self.clear(),
        }
    }
}

/// The schema's notification channel, once it is known that this role may notify on it:
/// a start is refused rather than run with caches that other instances cannot correct
/// (a role without `EXECUTE` on `pg_notify`, a read-only standby …).
pub(super) async fn channel(
    client: &tokio_postgres::Client,
    database: &str,
) -> StoreResult<String> {
    let row = client
        .query_one("SELECT name FROM secret_channel", &[])
        .await
        .map_err(super::db)?;
    let channel: String = row
        .try_get(0)
        .map_err(|_| StoreError::Corrupt("secret_channel holds no channel name".into()))?;
    client
        .execute("SELECT pg_notify($1, $2)", &[&channel, &PROBE])
        .await
        .map_err(|e| {
            StoreError::Io(format!(
                "cannot send notifications on the database {database}: {}; liveuser needs \
                 NOTIFY to keep the caches of every instance right",
                super::describe_error(&e)
            ))
        })?;
    Ok(channel)
}

/// Keeps one connection listening on `channel` for as long as the task runs, reconnecting
/// when it is lost.
pub(super) async fn run(
    pg: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    channel: String,
    shared: Arc<Shared>,
) {
    let mut was_up = true;
    loop {
        let reason = listen_once(&pg, tls.clone(), &channel, &shared, &mut was_up).await;
        shared.down();
        if was_up {
            tracing::warn!(
                error = %reason,
                "lost the database's notification connection; caches are bypassed until it is back"
            );
            was_up = false;
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// One listening connection, until it fails; returns why.
async fn listen_once(
    pg: &tokio_postgres::Config,
    tls: MakeRustlsConnect,
    channel: &str,
    shared: &Arc<Shared>,
    was_up: &mut bool,
) -> String {
    let (client, mut connection) = match pg.connect(tls).await {
        Ok(pair) => pair,
        Err(e) => return super::describe_error(&e),
    };
    let (closed_tx, mut closed) = oneshot::channel::<String>();
    let receiver = shared.clone();
    let driver = tokio::spawn(async move {
        let reason = loop {
            match poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => receiver.notified(n.payload()),
                Some(Ok(_)) => {}
                Some(Err(e)) => break super::describe_error(&e),
                None => break "the connection closed".to_string(),
            }
        };
        let _ = closed_tx.send(reason);
    });
    let _driver = AbortOnDrop(driver);
    if let Err(e) = client
        .batch_execute(&format!("LISTEN {}", quote_ident(channel)))
        .await
    {
        return super::describe_error(&e);
    }
    shared.up();
    if !*was_up {
        tracing::info!("the database's notification connection is back; caches in use again");
    }
    *was_up = true;
    loop {
        tokio::select! {
            reason = &mut closed => return reason.unwrap_or_else(|_| "the connection closed".into()),
            () = tokio::time::sleep(HEARTBEAT) => {
                match tokio::time::timeout(HEARTBEAT_TIMEOUT, client.simple_query("")).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return super::describe_error(&e),
                    Err(_) => return "the database did not answer the heartbeat in time".into(),
                }
            }
        }
    }
}

/// Sends the invalidations of profiles this instance wrote, gathered for at most
/// [`BATCH_WINDOW`] into one notification, so profile writes never wait for the
/// notification lock. Best effort: if this instance dies between a write's commit and
/// the notification, other instances may serve the previous profile from their caches
/// until it is evicted or they reconnect.
pub(super) async fn notify_users(
    pool: deadpool_postgres::Pool,
    channel: String,
    mut changed: tokio::sync::mpsc::UnboundedReceiver<Uid>,
) {
    while let Some(first) = changed.recv().await {
        tokio::time::sleep(BATCH_WINDOW).await;
        let mut payload = format!("U{first}");
        while payload.len() < PAYLOAD_MAX {
            match changed.try_recv() {
                Ok(uid) => {
                    payload.push(',');
                    payload.push_str(uid.as_str());
                }
                Err(_) => break,
            }
        }
        let sent = match pool.get().await {
            Ok(client) => client
                .execute("SELECT pg_notify($1, $2)", &[&channel, &payload])
                .await
                .map(|_| ())
                .map_err(|e| super::describe_error(&e)),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = sent {
            tracing::warn!(error = %e, "could not tell the other instances of changed profiles");
        }
    }
}

/// `"name"`, with inner quotes doubled.
pub(super) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_invalidate_what_they_name_and_garbage_clears_everything() {
        let shared = Shared::new(10, 10);
        let sid = Sid([7; 16]);
        let uid = Uid::parse("u1").unwrap();
        shared
            .sessions
            .fill(&sid, None, shared.sessions.stamp(&sid));
        shared.users.fill(&uid, None, shared.users.stamp(&uid));
        shared.notified(&format!("s{sid}"));
        assert_eq!(shared.sessions.get(&sid), None);
        assert_eq!(shared.users.get(&uid), Some(None));
        shared.notified("Ux,u1");
        assert_eq!(shared.users.get(&uid), None);
        shared.users.fill(&uid, None, shared.users.stamp(&uid));
        shared.notified("s-not-hex");
        assert_eq!(
            shared.users.get(&uid),
            None,
            "an unreadable payload clears all"
        );
        let keys = shared.key_changes();
        shared.notified("k");
        assert!(keys.has_changed().unwrap());
        shared.users.fill(&uid, None, shared.users.stamp(&uid));
        shared.notified(PROBE);
        assert_eq!(
            shared.users.get(&uid),
            Some(None),
            "a probe changes nothing"
        );
    }

    #[test]
    fn any_payload_at_all_is_read_without_panicking_and_what_is_not_understood_clears() {
        let shared = Shared::new(10, 10);
        let uid = Uid::parse("u1").unwrap();
        let long = "é".repeat(3999);
        let sid_then_accent = format!("s{}é", "0".repeat(30));
        for payload in [
            "é",
            "sé",
            &sid_then_accent,
            "Ué",
            "U",
            "u",
            "",
            "kx",
            "k é",
            "pé",
            "*",
            "\u{1F600}",
            &long,
        ] {
            shared.users.fill(&uid, None, shared.users.stamp(&uid));
            shared.notified(payload);
            assert_eq!(
                shared.users.get(&uid),
                None,
                "{payload:?} clears the caches"
            );
        }
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("liveuser:public"), "\"liveuser:public\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
