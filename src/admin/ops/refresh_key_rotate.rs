//! `token rotate-refresh-key` (`/admin/v1/token-rotate-refresh-key`).

use serde::{Deserialize, Serialize};

use super::{Admin, AdminError, Operation};
use crate::store::Store;

/// `token rotate-refresh-key`: replace the key that tags refresh tokens. New sessions
/// and every renewal's successor are tagged with the new key at once; the replaced key
/// keeps verifying for `token.refresh_ttl_secs`, so no session is logged out and the
/// older tokens of today's sessions are still recognised as reuse.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RefreshKeyRotate {}

/// Answer of [`RefreshKeyRotate`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RefreshKeyRotated {
    /// The id of the new refresh key.
    pub id: String,
    /// The id of the key it replaced.
    pub previous_id: Option<String>,
    /// When the replaced key stops verifying, Unix seconds.
    pub retire_at: u64,
}

impl Operation for RefreshKeyRotate {
    type Output = RefreshKeyRotated;
    const PATH: &'static str = "token-rotate-refresh-key";
    async fn run<S: Store>(self, admin: &Admin<S>) -> Result<RefreshKeyRotated, AdminError> {
        let rotation = admin.service.rotate_refresh_key(&admin.token).await?;
        Ok(RefreshKeyRotated {
            id: rotation.kid,
            previous_id: rotation.previous_kid,
            retire_at: rotation.retire_at,
        })
    }
}
