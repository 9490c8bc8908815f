//! `token rotate-key [--now]` (`/admin/v1/token-rotate-key`).

use serde::{Deserialize, Serialize};

use super::{Admin, AdminError, Operation, key_error, signs_like_the_server};
use crate::store::Store;

/// `token rotate-key`: add a generated signing key of `token.algorithm`. It is published
/// in the JWKS at once and signs from `token.key_publish_secs` later (`now`: at once);
/// tokens signed by the old key keep verifying until they expire. Refused when
/// `token.secret` is configured (that key is rotated in the configuration).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct KeyRotate {
    /// Sign with the new key at once, skipping the publication wait (a leaked key).
    #[serde(default)]
    pub now: bool,
}

/// Answer of [`KeyRotate`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct KeyRotated {
    /// The kid of the new signing key.
    pub kid: String,
    /// Its algorithm.
    pub algorithm: String,
    /// When it begins to sign, Unix seconds.
    pub signs_at: u64,
    /// The kid of the key it replaces.
    pub previous_kid: Option<String>,
    /// When the replaced key stops verifying, Unix seconds.
    pub retire_at: u64,
    /// A standby key of an earlier rotation, dropped before it signed.
    #[serde(default)]
    pub dropped_standby: Option<String>,
    /// Whether the wait was skipped.
    #[serde(default)]
    pub now: bool,
    /// `token.jwks_max_age_secs`: how long verifiers may keep a JWKS without the new key.
    #[serde(default)]
    pub jwks_max_age_secs: u64,
}

impl Operation for KeyRotate {
    type Output = KeyRotated;
    const PATH: &'static str = "token-rotate-key";
    async fn run<S: Store>(self, admin: &Admin<S>) -> Result<KeyRotated, AdminError> {
        signs_like_the_server(admin).await?;
        let rotation = admin
            .service
            .rotate_signing_key(&admin.token, self.now)
            .await
            .map_err(key_error)?;
        Ok(KeyRotated {
            kid: rotation.kid,
            algorithm: rotation.algorithm.name().to_string(),
            signs_at: rotation.signs_at,
            previous_kid: rotation.previous_kid,
            retire_at: rotation.retires_at,
            dropped_standby: rotation.dropped_standby,
            now: self.now,
            jwks_max_age_secs: admin.token.jwks_max_age_secs,
        })
    }
}
