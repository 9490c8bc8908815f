//! `session list` (`/admin/v1/session-list`).

use serde::{Deserialize, Serialize};

use super::{Admin, AdminError, Operation, SessionView, check_limit, page, parse_sid, parse_uid};
use crate::store::Store;

/// `session list`: sessions in sid order, a page at a time, all or one user's.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SessionList {
    /// Only this user's sessions.
    pub uid: Option<String>,
    /// Start after this sid.
    pub after: Option<String>,
    /// Page size.
    pub limit: usize,
}

/// Answer of [`SessionList`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SessionPage {
    pub sessions: Vec<SessionView>,
    /// Pass as `--after` for the next page; absent on the last page.
    pub next: Option<String>,
}

impl Operation for SessionList {
    type Output = SessionPage;
    const PATH: &'static str = "session-list";
    async fn run<S: Store>(self, admin: &Admin<S>) -> Result<SessionPage, AdminError> {
        let limit = check_limit(self.limit)?;
        let after = self.after.as_deref().map(parse_sid).transpose()?;
        let fetched = match self.uid.as_deref().map(parse_uid).transpose()? {
            Some(uid) => {
                let mut all = admin.store().sessions_of(&uid).await?;
                all.sort_by_key(|s| s.sid);
                all.retain(|s| after.is_none_or(|a| s.sid > a));
                all.truncate(limit + 1);
                all
            }
            None => admin.store().list_sessions(after, limit + 1).await?,
        };
        let (sessions, next) = page(fetched, limit, |s| s.sid.to_string());
        let now = admin.service.now();
        Ok(SessionPage {
            sessions: sessions.iter().map(|s| SessionView::new(s, now)).collect(),
            next,
        })
    }
}
