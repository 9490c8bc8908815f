//! The admin operations, each implemented once: a request struct in, a data struct out.
//!
//! Requests carry identifiers as the operator typed them and are parsed here, so a bad
//! uid is reported with the same words whether the CLI runs the operation itself or the
//! server does. No answer ever holds a refresh token or a refresh-token hash.

use std::future::Future;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::config::TokenConfig;
use crate::http::ErrorCode;
use crate::keys::KeyError;
use crate::model::{Session, Sid, Uid, UserPatch, UserRecord};
use crate::service::{Service, ServiceError};
use crate::store::{Store, StoreError};

/// Largest page of a listing.
pub(crate) const MAX_LIMIT: usize = 10_000;
/// Page size when `--limit` is not given.
pub(crate) const DEFAULT_LIMIT: usize = 100;
/// Shortest lifetime of a minted token.
pub(crate) const MINT_MIN_TTL: u64 = 60;

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
    /// A failure of kind `code`.
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

    /// The service underneath.
    pub(crate) fn service(&self) -> &Arc<Service<S>> {
        &self.service
    }

    fn store(&self) -> &S {
        self.service.store()
    }
}

/// One admin operation: its request (this type), its answer, and its API path.
pub(crate) trait Operation: Serialize + DeserializeOwned + Send + 'static {
    /// The answer.
    type Output: Serialize + DeserializeOwned + Send + 'static;
    /// The last segment of its admin API path, `/admin/v1/<PATH>`.
    const PATH: &'static str;
    /// Runs it.
    fn run<S: Store>(
        self,
        admin: &Admin<S>,
    ) -> impl Future<Output = Result<Self::Output, AdminError>> + Send;
}

/// A user record as the admin surface shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct UserView {
    /// User id.
    pub uid: String,
    /// Display name.
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
    /// Session id.
    pub sid: String,
    /// Owner.
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

/// `user get UID...`: the records that exist, in the order asked, and the uids that
/// do not.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct UserGet {
    /// Uids to look up.
    pub uids: Vec<String>,
}

/// Answer of [`UserGet`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct UserGetOutput {
    /// Found records.
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
    /// This page.
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

/// `user put UID`: creates or updates a record; fields left out keep their value.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct UserPut {
    /// Whose record.
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
    /// This page.
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

/// `session revoke`: ends sessions at once, their access tokens included. Exactly one
/// of `sids`, `uid`, `all`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct SessionRevoke {
    /// These sessions.
    pub sids: Vec<String>,
    /// Every session of this user.
    pub uid: Option<String>,
    /// Every session.
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

/// `token mint UID`: a new session for an existing user, lasting `ttl_secs` (default
/// and at most `token.access_ttl_secs`), and an access token that ends with it. No
/// refresh token: the credential cannot outlive its lifetime, and `session revoke SID`
/// ends it early.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct TokenMint {
    /// The user.
    pub uid: String,
    /// Lifetime in seconds.
    pub ttl_secs: Option<u64>,
}

/// Answer of [`TokenMint`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Minted {
    /// The user.
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
