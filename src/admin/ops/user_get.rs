//! `user get UID...` (`/admin/v1/user-get`).

use serde::{Deserialize, Serialize};

use super::{Admin, AdminError, Operation, UserView, parse_uid};
use crate::model::UserRecord;
use crate::store::Store;

/// `user get UID...`: the records that exist, in the order asked, and the uids that
/// do not.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct UserGet {
    pub uids: Vec<String>,
}

/// Answer of [`UserGet`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct UserGetOutput {
    pub users: Vec<UserView>,
    /// Uids with no record.
    pub missing: Vec<String>,
}

impl Operation for UserGet {
    type Output = UserGetOutput;
    const PATH: &'static str = "user-get";
    async fn run<S: Store>(self, admin: &Admin<S>) -> Result<UserGetOutput, AdminError> {
        let uids = self
            .uids
            .iter()
            .map(|u| parse_uid(u))
            .collect::<Result<Vec<_>, _>>()?;
        let found = admin.store().users(&uids).await?;
        let missing = uids
            .iter()
            .filter(|u| !found.iter().any(|f| &f.uid == *u))
            .map(ToString::to_string)
            .collect();
        Ok(UserGetOutput {
            users: found
                .into_iter()
                .map(|u| UserView::from(UserRecord::clone(&u)))
                .collect(),
            missing,
        })
    }
}
