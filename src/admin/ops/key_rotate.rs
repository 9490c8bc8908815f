//! `token rotate-key` (`/admin/v1/token-rotate-key`).

use serde::{Deserialize, Serialize};

use super::{Admin, AdminError, Operation, key_error, signs_like_the_server};
use crate::store::Store;

/// `token rotate-key`: replace the generated signing key. New access tokens carry the new
/// key's kid; tokens signed by the old key keep verifying until they expire. Refused
/// when `token.secret` is configured (that key is rotated in the configuration).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct KeyRotate {}

/// Answer of [`KeyRotate`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct KeyRotated {
    /// The kid of the new signing key.
    pub kid: String,
    /// The kid of the key it replaced.
    pub previous_kid: Option<String>,
    /// When the replaced key stops verifying, Unix seconds.
    pub retire_at: u64,
}

impl Operation for KeyRotate {
    type Output = KeyRotated;
    const PATH: &'static str = "token-rotate-key";
    async fn run<S: Store>(self, admin: &Admin<S>) -> Result<KeyRotated, AdminError> {
        signs_like_the_server(admin).await?;
        let rotation = admin
            .service
            .rotate_signing_key(&admin.token)
            .await
            .map_err(key_error)?;
        Ok(KeyRotated {
            kid: rotation.kid,
            previous_kid: rotation.previous_kid,
            retire_at: rotation.retire_at,
        })
    }
}
