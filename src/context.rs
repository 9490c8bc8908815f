//! What is known about the request being served, for its access-log line.
//!
//! The HTTP layer runs each request inside [`scope`]; the service notes the caller's uid
//! there once it knows it ([`note_uid`]), so the log line can name the user without the
//! service knowing about HTTP or logs. Outside a scope (the CLI, unit tests) noting is a
//! no-op.

use std::cell::RefCell;
use std::future::Future;

use crate::model::Uid;

tokio::task_local! {
    static UID: RefCell<Option<Uid>>;
}

/// Runs `work` with a fresh context; returns its output and the uid noted during it.
pub(crate) async fn scope<F: Future>(work: F) -> (F::Output, Option<Uid>) {
    UID.scope(RefCell::new(None), async move {
        let out = work.await;
        let uid = UID.with(|u| u.borrow_mut().take());
        (out, uid)
    })
    .await
}

/// Notes the uid of the request being served.
pub(crate) fn note_uid(uid: &Uid) {
    let _ = UID.try_with(|u| *u.borrow_mut() = Some(uid.clone()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_noted_uid_comes_back_from_its_scope_only() {
        let uid = Uid::parse("u1").unwrap();
        let ((), noted) = scope(async { note_uid(&uid) }).await;
        assert_eq!(noted, Some(uid.clone()));
        let ((), noted) = scope(async {}).await;
        assert_eq!(noted, None);
        note_uid(&uid); // outside any scope: nothing happens, no panic
    }
}
