//! `user put UID` (`/admin/v1/user-put`).

use serde::{Deserialize, Serialize};

use super::{Admin, AdminError, Operation, UserView, parse_uid};
use crate::model::UserPatch;
use crate::store::Store;

/// `user put UID`: creates or updates a record; fields left out keep their value.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct UserPut {
    pub uid: String,
    /// New name.
    pub name: Option<String>,
    /// New agent.
    pub agent: Option<String>,
    /// New avatar URL.
    pub avatar: Option<String>,
}

impl Operation for UserPut {
    type Output = UserView;
    const PATH: &'static str = "user-put";
    async fn run<S: Store>(self, admin: &Admin<S>) -> Result<UserView, AdminError> {
        let uid = parse_uid(&self.uid)?;
        let patch = UserPatch {
            name: self.name,
            agent: self.agent,
            avatar: self.avatar,
        };
        patch
            .validate()
            .map_err(|(field, e)| AdminError::invalid(format!("{field} {e}")))?;
        let now = admin.service.now();
        let user = admin.store().update_user(&uid, &patch, now).await?;
        Ok(user.into())
    }
}
