//! The admin operations, each implemented once: a request struct in, a data struct out.
//!
//! One file per operation (its request, its answer, and how it runs), as mini-redis keeps
//! one file per command; `export` and `import`, which stream a file instead of
//! answering one struct, are methods of [`Admin`] in files of their own. This file holds
//! what they share: the [`Operation`] trait, the
//! [`Admin`] they run over, [`AdminError`], the views of users and sessions, parsing of
//! identifiers, and paging.
//!
//! Requests carry identifiers as the operator typed them and are parsed here, so a bad
//! uid is reported with the same words whether the CLI runs the operation itself or the
//! server does. No answer ever holds a refresh token or a refresh-token hash.

mod export;
mod import;
mod key_rotate;
mod refresh_key_rotate;
mod session_list;
mod session_revoke;
mod token_mint;
mod user_get;
mod user_list;
mod user_put;

use std::future::Future;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::config::TokenConfig;
use crate::http::ErrorCode;
use crate::keys::KeyError;
use crate::model::{Session, Sid, Uid, UserRecord};
use crate::service::{Service, ServiceError};
use crate::store::{Store, StoreError};

pub(crate) use self::export::ExportRequest;
pub(crate) use self::key_rotate::{KeyRotate, KeyRotated};
pub(crate) use self::refresh_key_rotate::{RefreshKeyRotate, RefreshKeyRotated};
pub(crate) use self::session_list::SessionList;
pub(crate) use self::session_revoke::{RevokeOutput, SessionRevoke};
pub(crate) use self::token_mint::{Minted, TokenMint};
pub(crate) use self::user_get::UserGet;
pub(crate) use self::user_list::UserList;
pub(crate) use self::user_put::UserPut;

/// Largest page of a listing.
pub(crate) const MAX_LIMIT: usize = 10_000;
/// Page size when `--limit` is not given.
pub(crate) const DEFAULT_LIMIT: usize = 100;

/// A failed admin operation: the CLI prints `liveuser: <msg>` and exits 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{msg}")]
pub struct AdminError {
    /// What kind of failure (the admin API answers with its status).
    pub code: ErrorCode,
    /// One sentence for the operator.
    pub msg: String,
}

impl AdminError {
    pub fn new(code: ErrorCode, msg: impl Into<String>) -> Self {
        AdminError {
            code,
            msg: msg.into(),
        }
    }
    /// [`ErrorCode::InvalidArgument`].
    pub fn invalid(msg: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, msg)
    }
    /// [`ErrorCode::NotFound`].
    pub fn not_found(msg: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, msg)
    }
    /// [`ErrorCode::Unavailable`].
    pub fn unavailable(msg: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, msg)
    }
    /// [`ErrorCode::Internal`].
    pub fn internal(msg: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, msg)
    }
}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Corrupt(_) => AdminError::internal(e.to_string()),
            StoreError::Format(_) => AdminError::new(ErrorCode::FailedPrecondition, e.to_string()),
            StoreError::Io(_) | StoreError::Locked => AdminError::unavailable(e.to_string()),
            StoreError::Exposed { .. } => {
                AdminError::new(ErrorCode::FailedPrecondition, e.to_string())
            }
        }
    }
}

impl From<ServiceError> for AdminError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Storage(e) => e.into(),
            ServiceError::InvalidArgument(m) => AdminError::invalid(m),
            other => AdminError::internal(other.to_string()),
        }
    }
}

/// The admin operations over a service.
pub(crate) struct Admin<S> {
    service: Arc<Service<S>>,
    token: TokenConfig,
}

impl<S> std::fmt::Debug for Admin<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin").finish_non_exhaustive()
    }
}

impl<S: Store> Admin<S> {
    /// Operations over `service` configured by `token` (minted tokens live at most
    /// `token.access_ttl_secs`; key rotation follows its secrets).
    pub(crate) fn new(service: Arc<Service<S>>, token: TokenConfig) -> Self {
        Admin { service, token }
    }

    pub(crate) fn service(&self) -> &Arc<Service<S>> {
        &self.service
    }

    fn store(&self) -> &S {
        self.service.store()
    }
}

/// One admin operation: its request (this type), its answer, and its API path.
pub(crate) trait Operation: Serialize + DeserializeOwned + Send + 'static {
    type Output: Serialize + DeserializeOwned + Send + 'static;
    /// The last segment of its admin API path, `/admin/v1/<PATH>`.
    const PATH: &'static str;
    fn run<S: Store>(
        self,
        admin: &Admin<S>,
    ) -> impl Future<Output = Result<Self::Output, AdminError>> + Send;
}

/// A user record as the admin surface shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct UserView {
    pub uid: String,
    pub name: String,
    /// Client description.
    pub agent: String,
    /// Avatar URL.
    pub avatar: String,
    /// Last write, Unix seconds.
    pub update_at: u64,
}

impl From<UserRecord> for UserView {
    fn from(u: UserRecord) -> Self {
        UserView {
            uid: u.uid.to_string(),
            name: u.name,
            agent: u.agent,
            avatar: u.avatar,
            update_at: u.update_at,
        }
    }
}

/// A session as the admin surface shows it: never its tokens or their hashes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SessionView {
    pub sid: String,
    pub uid: String,
    /// Login time, Unix seconds.
    pub created_at: u64,
    /// Last login or renewal, Unix seconds.
    pub last_used_at: u64,
    /// When it ends at the latest (absolute expiry), Unix seconds.
    pub expires_at: u64,
    /// When it ends unless renewed before (idle expiry), Unix seconds.
    pub idle_expires_at: u64,
    /// `active`, `revoked`, `expired` or `idle-expired`.
    pub state: String,
}

impl SessionView {
    fn new(s: &Session, now: u64) -> Self {
        SessionView {
            sid: s.sid.to_string(),
            uid: s.uid.to_string(),
            created_at: s.created_at,
            last_used_at: s.last_used_at,
            expires_at: s.expires_at,
            idle_expires_at: s.idle_expires_at,
            state: s.describe_state(now).to_string(),
        }
    }
}

fn parse_uid(s: &str) -> Result<Uid, AdminError> {
    Uid::parse(s).map_err(|e| AdminError::invalid(format!("uid {s:?} {e}")))
}

fn parse_sid(s: &str) -> Result<Sid, AdminError> {
    Sid::parse(s).ok_or_else(|| {
        AdminError::invalid(format!("session id {s:?} must be 32 hexadecimal digits"))
    })
}

/// One page out of `fetched`, which was asked for `limit + 1` items in key order: the
/// first `limit`, and the key to continue after if there were more. Every listing pages
/// this way.
fn page<T, K>(mut fetched: Vec<T>, limit: usize, key: impl Fn(&T) -> K) -> (Vec<T>, Option<K>) {
    let more = fetched.len() > limit;
    fetched.truncate(limit);
    let next = if more { fetched.last().map(key) } else { None };
    (fetched, next)
}

fn check_limit(limit: usize) -> Result<usize, AdminError> {
    if (1..=MAX_LIMIT).contains(&limit) {
        Ok(limit)
    } else {
        Err(AdminError::invalid(format!(
            "limit must be between 1 and {MAX_LIMIT}"
        )))
    }
}

/// Refuses to mint or rotate when this process would sign differently from the server
/// that uses the database (see [`crate::keys::check_key_source`]). Through the admin API
/// the server checks its own configuration, which always agrees.
async fn signs_like_the_server<S: Store>(admin: &Admin<S>) -> Result<(), AdminError> {
    crate::keys::check_key_source(admin.store(), &admin.token)
        .await
        .map_err(key_error)
}

fn key_error(e: KeyError) -> AdminError {
    match e {
        KeyError::Configured => AdminError::invalid(e.to_string()),
        KeyError::NotTheServersKey(_) => {
            AdminError::new(ErrorCode::FailedPrecondition, e.to_string())
        }
        KeyError::Storage(e) => e.into(),
    }
}
