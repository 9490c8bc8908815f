//! `session revoke` (`/admin/v1/session-revoke`).

use serde::{Deserialize, Serialize};

use super::{Admin, AdminError, Operation, parse_sid, parse_uid};
use crate::model::Sid;
use crate::store::Store;

/// `session revoke`: ends sessions at once, their access tokens included. Exactly one
/// of `sids`, `uid`, `all`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct SessionRevoke {
    pub sids: Vec<String>,
    /// Every session of this user.
    pub uid: Option<String>,
    pub all: bool,
}

/// Answer of [`SessionRevoke`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RevokeOutput {
    /// Sessions that were active and are now revoked.
    pub revoked: usize,
    /// Sessions that matched but had already ended.
    pub already_ended: usize,
}

/// Sessions revoked per transaction by `--all`.
const REVOKE_PAGE: usize = 1000;

impl Operation for SessionRevoke {
    type Output = RevokeOutput;
    const PATH: &'static str = "session-revoke";
    async fn run<S: Store>(self, admin: &Admin<S>) -> Result<RevokeOutput, AdminError> {
        let chosen = usize::from(!self.sids.is_empty())
            + usize::from(self.uid.is_some())
            + usize::from(self.all);
        if chosen != 1 {
            return Err(AdminError::invalid(
                "name the sessions to revoke: session ids, a uid, or all",
            ));
        }
        let store = admin.store();
        let now = admin.service.now();
        let mut matched = 0;
        let mut revoked = 0;
        if !self.sids.is_empty() {
            let sids = self
                .sids
                .iter()
                .map(|s| parse_sid(s))
                .collect::<Result<Vec<_>, _>>()?;
            // All or nothing: a mistyped id must not leave the others half done.
            for sid in &sids {
                if store.session(*sid).await?.is_none() {
                    return Err(AdminError::not_found(format!("no session {sid}")));
                }
            }
            matched = sids.len();
            revoked = store.revoke_sessions(&sids).await?;
        } else if let Some(uid) = &self.uid {
            let uid = parse_uid(uid)?;
            let sids: Vec<Sid> = store
                .sessions_of(&uid)
                .await?
                .iter()
                .map(|s| s.sid)
                .collect();
            matched = sids.len();
            if !sids.is_empty() {
                revoked = store.revoke_sessions(&sids).await?;
            }
        } else {
            let mut after = None;
            loop {
                let page = store.list_sessions(after, REVOKE_PAGE).await?;
                let Some(last) = page.last() else { break };
                after = Some(last.sid);
                matched += page.len();
                let live: Vec<Sid> = page
                    .iter()
                    .filter(|s| s.is_live(now))
                    .map(|s| s.sid)
                    .collect();
                if !live.is_empty() {
                    revoked += store.revoke_sessions(&live).await?;
                }
            }
        }
        admin.service.metrics().sessions_changed(-(revoked as i64));
        Ok(RevokeOutput {
            revoked,
            already_ended: matched - revoked,
        })
    }
}
