//! `user list` (`/admin/v1/user-list`).

use serde::{Deserialize, Serialize};

use super::{Admin, AdminError, Operation, UserView, check_limit, page, parse_uid};
use crate::store::Store;

/// `user list`: users in uid order, a page at a time.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct UserList {
    /// Start after this uid.
    pub after: Option<String>,
    /// Page size.
    pub limit: usize,
}

/// Answer of [`UserList`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct UserPage {
    pub users: Vec<UserView>,
    /// Pass as `--after` for the next page; absent on the last page.
    pub next: Option<String>,
}

impl Operation for UserList {
    type Output = UserPage;
    const PATH: &'static str = "user-list";
    async fn run<S: Store>(self, admin: &Admin<S>) -> Result<UserPage, AdminError> {
        let limit = check_limit(self.limit)?;
        let after = self.after.as_deref().map(parse_uid).transpose()?;
        let fetched = admin.store().list_users(after.as_ref(), limit + 1).await?;
        let (users, next) = page(fetched, limit, |u| u.uid.to_string());
        Ok(UserPage {
            users: users.into_iter().map(UserView::from).collect(),
            next,
        })
    }
}
