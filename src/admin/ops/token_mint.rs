//! `token mint UID` (`/admin/v1/token-mint`).

use serde::{Deserialize, Serialize};

use super::{Admin, AdminError, Operation, parse_uid, signs_like_the_server};
use crate::store::Store;

/// Shortest lifetime of a minted token.
const MINT_MIN_TTL: u64 = 60;

/// `token mint UID`: a new session for an existing user, lasting `ttl_secs` (default
/// and at most `token.access_ttl_secs`), and an access token that ends with it. No
/// refresh token: the credential cannot outlive its lifetime, and `session revoke SID`
/// ends it early.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct TokenMint {
    pub uid: String,
    pub ttl_secs: Option<u64>,
}

/// Answer of [`TokenMint`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Minted {
    pub uid: String,
    /// The new session (revoke it to end the token early).
    pub sid: String,
    /// The access token (a Bearer token for AddUser and QueryUser).
    pub access_token: String,
    /// Its expiry, Unix seconds.
    pub expiry: u64,
}

impl Operation for TokenMint {
    type Output = Minted;
    const PATH: &'static str = "token-mint";
    async fn run<S: Store>(self, admin: &Admin<S>) -> Result<Minted, AdminError> {
        let uid = parse_uid(&self.uid)?;
        let max = admin.token.access_ttl_secs;
        let ttl = self.ttl_secs.unwrap_or(max);
        if !(MINT_MIN_TTL..=max).contains(&ttl) {
            return Err(AdminError::invalid(format!(
                "ttl must be between {MINT_MIN_TTL} and {max} seconds (token.access_ttl_secs)"
            )));
        }
        signs_like_the_server(admin).await?;
        if admin
            .store()
            .users(std::slice::from_ref(&uid))
            .await?
            .is_empty()
        {
            return Err(AdminError::not_found(format!("no user {uid}")));
        }
        let now = admin.service.now();
        let grant = admin
            .service
            .open_session_lasting(&uid, now, ttl, false)
            .await?;
        Ok(Minted {
            uid: grant.uid.to_string(),
            sid: grant.sid.to_string(),
            access_token: grant.access_token,
            expiry: grant.expiry,
        })
    }
}
