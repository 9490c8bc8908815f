//! The service logic: the four API methods as plain Rust over a [`Store`], no HTTP.
//!
//! Where things are decided:
//! - login, first-login user creation, idempotent codes: [`Service::login`]
//! - rotation, the grace retry, reuse detection and family revocation: [`Service::renew`]
//! - the per-request access check (signature, claims, live session): [`Service::authenticate`]
//! - who may write which record: [`Service::add_user`]

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use tokio::sync::OnceCell;

use crate::clock::SharedClock;
use crate::config::{Config, TokenConfig};
use crate::keys::{KeyError, KeyRotation, SigningKeyRotation};
use crate::metrics::Metrics;
use crate::model::{Identity, Session, SessionState, Sid, Uid, UserPatch, UserRecord, check_text};
use crate::primitives::sha256;
use crate::store::{RotateOutcome, Store, StoreError};
use crate::token::{AccessTokens, RefreshKeys, RefreshToken};
use crate::wechat::{WxClient, WxError};

/// How long a login code stays idempotent: WeChat codes live five minutes.
pub const CODE_LIFETIME_SECS: u64 = 300;
/// Longest accepted login code.
pub const CODE_MAX: usize = 256;

/// The one answer to every refused access token, so the reply is no oracle.
pub const ACCESS_REFUSED: &str = "a valid access token is required";
/// The one answer to every refused refresh token (unknown, expired, revoked, reused).
pub const REFRESH_REFUSED: &str = "the refresh token is invalid, expired or revoked";

/// Why a call failed, in the vocabulary of the API's error codes.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ServiceError {
    /// A field is missing, of the wrong form, or over a limit; the message names it.
    #[error("{0}")]
    InvalidArgument(String),
    /// A token or code was refused.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller may not do this.
    #[error("{0}")]
    PermissionDenied(String),
    /// A rate limit was hit.
    #[error("{0}")]
    ResourceExhausted(String),
    /// An upstream (WeChat) is unavailable or not configured.
    #[error("{0}")]
    Unavailable(String),
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] StoreError),
}

impl From<WxError> for ServiceError {
    fn from(e: WxError) -> Self {
        let msg = e.to_string();
        match e {
            WxError::InvalidCode(_) => ServiceError::Unauthenticated(msg),
            WxError::RateLimited => ServiceError::ResourceExhausted(msg),
            WxError::HighRisk => ServiceError::PermissionDenied(msg),
            WxError::Unavailable(_) | WxError::NotConfigured => ServiceError::Unavailable(msg),
        }
    }
}

type Result<T> = std::result::Result<T, ServiceError>;

/// What Login and RenewToken hand the client.
#[derive(Debug, Clone)]
pub struct Grant {
    /// JWT access token.
    pub access_token: String,
    /// Refresh token (new after a rotation).
    pub refresh_token: String,
    /// The access token's `exp`.
    pub expiry: u64,
    /// The user.
    pub uid: Uid,
    /// The session the tokens belong to.
    pub sid: Sid,
}

/// The authenticated caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Whose token it is.
    pub uid: Uid,
    /// Which session it belongs to.
    pub sid: Sid,
    /// When the token expires (its `exp`).
    pub exp: u64,
}

/// Session policy, from `[token]`.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Absolute session lifetime.
    pub refresh_ttl_secs: u64,
    /// Idle session lifetime.
    pub refresh_idle_secs: u64,
    /// Live sessions per user.
    pub max_sessions_per_user: usize,
    /// Rotate refresh tokens on renewal.
    pub rotation: bool,
    /// Grace period of a just-rotated token.
    pub reuse_grace_secs: u64,
    /// Most uids per QueryUser.
    pub max_query_uids: usize,
}

impl Policy {
    /// The policy of a `[token]` section and `server.max_query_uids`.
    pub fn new(token: &TokenConfig, max_query_uids: usize) -> Self {
        Policy {
            refresh_ttl_secs: token.refresh_ttl_secs,
            refresh_idle_secs: token.refresh_idle_secs,
            max_sessions_per_user: token.max_sessions_per_user,
            rotation: token.rotation,
            reuse_grace_secs: token.reuse_grace_secs,
            max_query_uids,
        }
    }
}

/// liveuser's logic over a store.
pub struct Service<S> {
    store: Arc<S>,
    clock: SharedClock,
    access: AccessTokens,
    /// Replaced when the refresh key rotates or an import adopts the keys of the
    /// database it came from.
    refresh_keys: RwLock<Arc<RefreshKeys>>,
    wx: WxClient,
    codes: LoginCodes,
    policy: Policy,
    metrics: Arc<Metrics>,
}

impl<S> std::fmt::Debug for Service<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl<S: Store> Service<S> {
    /// Assembles the service.
    pub fn new(
        store: Arc<S>,
        clock: SharedClock,
        access: AccessTokens,
        refresh_keys: RefreshKeys,
        wx: WxClient,
        policy: Policy,
    ) -> Self {
        Service {
            store,
            clock,
            access,
            refresh_keys: RwLock::new(Arc::new(refresh_keys)),
            wx,
            codes: LoginCodes::default(),
            policy,
            metrics: Arc::new(Metrics::new()),
        }
    }

    /// The service `config` describes over an open store: the signing keys (configured,
    /// or generated and kept in the store), the key that derives rotated refresh tokens,
    /// the WeChat client and the session policy. The server and the admin commands that
    /// open the database themselves build it here, alike.
    pub async fn from_config(
        config: &Config,
        store: Arc<S>,
        clock: SharedClock,
    ) -> std::result::Result<Self, StoreError> {
        let signing = crate::keys::load(store.as_ref(), &config.token, clock.now()).await?;
        let refresh = crate::keys::refresh_keys(store.as_ref(), clock.now()).await?;
        let t = &config.token;
        Ok(Service::new(
            store,
            clock,
            AccessTokens::with_keys(signing, &t.issuer, &t.audience, t.access_ttl_secs),
            refresh,
            WxClient::from_config(&config.wx),
            Policy::new(t, config.server.max_query_uids),
        ))
    }

    /// Records into `metrics` instead of a private, unserved set, WeChat calls included.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        let calls = metrics.clone();
        self.wx.observe(Box::new(move |outcome, errcode, elapsed| {
            calls.wechat_call(outcome, errcode, elapsed);
        }));
        self.metrics = metrics;
        self
    }

    /// The metrics this service records into.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The store underneath.
    pub fn store(&self) -> &Arc<S> {
        &self.store
    }

    /// Now, by the service's clock.
    pub fn now(&self) -> u64 {
        self.clock.now()
    }

    /// `Wx.Login`: exchanges a code and opens a new session.
    ///
    /// Concurrent requests with one code share one exchange, and a repeat within
    /// [`CODE_LIFETIME_SECS`] opens a new session for the same user without asking
    /// WeChat again (which would answer 40163). Only a hash of the code is kept.
    pub async fn login(&self, code: &str) -> Result<Grant> {
        if code.is_empty() {
            return Err(ServiceError::InvalidArgument(
                "code must not be empty".into(),
            ));
        }
        check_text(code, CODE_MAX)
            .map_err(|e| ServiceError::InvalidArgument(format!("code {e}")))?;
        let now = self.now();
        let uid = self
            .codes
            .resolve(code, now, || async {
                let identity = self.wx.exchange(code).await?;
                let candidate = Identity {
                    uid: Uid::generate(),
                    unionid: identity.unionid,
                    session_key: identity.session_key,
                };
                let fresh = candidate.uid.clone();
                let uid = self
                    .store
                    .upsert_identity(&identity.openid, candidate, now)
                    .await?;
                if uid == fresh {
                    self.metrics.user_created();
                }
                Ok(uid)
            })
            .await?;
        self.open_session(&uid, now).await
    }

    /// Opens a session for `uid`, evicting its oldest live sessions beyond the cap.
    ///
    /// Two logins of one user at the same instant may leave it one over the cap; the next
    /// login brings it back.
    pub async fn open_session(&self, uid: &Uid, now: u64) -> Result<Grant> {
        self.open_session_lasting(uid, now, self.policy.refresh_ttl_secs, true)
            .await
    }

    /// [`Service::open_session`] for a session that ends `lifetime_secs` after `now`
    /// (operator-minted tokens live exactly as long as their session). With `evict`
    /// false, no other session is revoked to make room: an operator's token never logs a
    /// user's device out.
    pub async fn open_session_lasting(
        &self,
        uid: &Uid,
        now: u64,
        lifetime_secs: u64,
        evict: bool,
    ) -> Result<Grant> {
        let token = RefreshToken::issue(self.refresh_keys().current());
        let expires_at = now.saturating_add(lifetime_secs);
        let session = Session {
            sid: token.sid(),
            uid: uid.clone(),
            created_at: now,
            last_used_at: now,
            expires_at,
            idle_expires_at: now
                .saturating_add(self.policy.refresh_idle_secs)
                .min(expires_at),
            state: SessionState::Active,
            generation: 0,
            current: token.hash(),
            previous: None,
        };
        let cap = evict.then_some(self.policy.max_sessions_per_user);
        let evicted = self.store.create_session(&session, cap).await?;
        self.metrics.sessions_changed(1 - evicted as i64);
        Ok(self.grant(&session, token.encode(), now))
    }

    /// `Wx.RenewToken`: a new access token, and with rotation a new refresh token.
    ///
    /// With rotation, the presented token must be its session's current one; it is then
    /// retired and its successor returned, in one store call. Otherwise, on the session
    /// as stored:
    /// - the token the last rotation retired, presented within the grace period while
    ///   its successor is unused, is a retry (or a request that lost a race to renew it)
    ///   and gets the same successor (under whichever refresh key in force made it);
    /// - that token after the grace period, or an authentic token of the session older
    ///   than that, is reuse: the session is revoked;
    /// - an authentic token at or past the session's generation that is not its current
    ///   token was made with the refresh key, not by a rotation: the session is revoked
    ///   and the leak logged and counted;
    /// - anything else (a corrupted or invented token, a format-1 token older than the
    ///   last rotation, a token of a dead or unknown session) is refused and revokes
    ///   nothing.
    ///
    /// Every refusal is the same `unauthenticated`.
    pub async fn renew(&self, presented: &str, client: Option<IpAddr>) -> Result<Grant> {
        let refused = || ServiceError::Unauthenticated(REFRESH_REFUSED.into());
        let token = RefreshToken::parse(presented).ok_or_else(refused)?;
        let (sid, hash) = (token.sid(), token.hash());
        let now_ms = self.clock.now_ms();
        let now = now_ms / 1000;
        let idle = self.policy.refresh_idle_secs;
        if !self.policy.rotation {
            // Only the current token renews; tokens left over from a time with rotation
            // are refused without judging them.
            let session = self
                .store
                .touch(sid, hash, now_ms, idle)
                .await?
                .ok_or_else(refused)?;
            return Ok(self.grant(&session, token.encode(), now));
        }
        let keys = self.refresh_keys();
        let successor = token.successor(keys.current()).ok_or_else(refused)?;
        let successor_hash = successor.hash();
        let (session, judged_at_ms) = match self
            .store
            .rotate(sid, hash, successor_hash, now_ms, idle)
            .await?
        {
            RotateOutcome::Rotated(session) => {
                self.metrics.rotated();
                return Ok(self.grant(&session, successor.encode(), now));
            }
            RotateOutcome::NotCurrent { stored, at_ms } => (stored.ok_or_else(refused)?, at_ms),
        };
        if !session.is_live(now) {
            return Err(refused());
        }
        if let Some(previous) = session.previous
            && previous.token == hash
        {
            // By the clock that timed the rotation (the store's), not this instance's.
            let in_grace = within_grace(
                previous.rotated_at_ms,
                judged_at_ms,
                self.policy.reuse_grace_secs,
            );
            if in_grace && let Some(successor) = given_successor(&token, &session, &keys, now) {
                // The rotation was written by another request, perhaps not yet
                // flushed: answer only once it is durable.
                self.store.sync().await?;
                return Ok(self.grant(&session, successor.encode(), now));
            }
            return Err(self.reuse(&session, client).await);
        }
        if session.current != hash
            && let Some(key) = token.tagged_by(&keys, now)
        {
            if token.generation() < session.generation {
                return Err(self.reuse(&session, client).await);
            }
            return Err(self.made_with_the_key(&session, key.id(), client).await);
        }
        Err(refused())
    }

    /// An authentic token that no rotation handed out — at or past its session's
    /// generation, and not its current token: whoever holds the refresh key made it
    /// (from an export, a copy of the database) with the seed of a token of the session,
    /// trying generations ahead to find the current one. Revoke the family, so that a
    /// wrong guess costs the session instead of going unseen; log it; refuse.
    async fn made_with_the_key(
        &self,
        session: &Session,
        key_id: &str,
        client: Option<IpAddr>,
    ) -> ServiceError {
        match self.store.revoke_sessions(&[session.sid]).await {
            Ok(revoked) => self.metrics.sessions_changed(-(revoked as i64)),
            Err(e) => return e.into(),
        }
        self.metrics.refresh_key_leak_detected();
        tracing::warn!(
            uid = %session.uid,
            family = %session.sid,
            client = %client.map_or_else(|| "unknown".to_string(), |c| c.to_string()),
            refresh_key = %key_id,
            "a refresh token no rotation issued carries a valid tag: the refresh key is \
             known outside liveuser (rotate it: liveuser token rotate-refresh-key); the \
             session family is revoked"
        );
        ServiceError::Unauthenticated(REFRESH_REFUSED.into())
    }

    /// Reuse of a retired refresh token: revoke the family, log it, refuse.
    async fn reuse(&self, session: &Session, client: Option<IpAddr>) -> ServiceError {
        match self.store.revoke_sessions(&[session.sid]).await {
            Ok(revoked) => self.metrics.sessions_changed(-(revoked as i64)),
            Err(e) => return e.into(),
        }
        self.metrics.reuse_detected();
        tracing::warn!(
            uid = %session.uid,
            family = %session.sid,
            client = %client.map_or_else(|| "unknown".to_string(), |c| c.to_string()),
            "refresh token reuse detected; the session family is revoked"
        );
        ServiceError::Unauthenticated(REFRESH_REFUSED.into())
    }

    /// Checks a bearer access token: signature, claims, and that its session is live.
    pub async fn authenticate(&self, token: &str) -> Result<Caller> {
        let refused = || ServiceError::Unauthenticated(ACCESS_REFUSED.into());
        let now = self.now();
        let claims = self.access.verify(token, now).map_err(|e| {
            tracing::debug!(reason = ?e, "access token refused");
            refused()
        })?;
        let sid = Sid::parse(&claims.sid).ok_or_else(refused)?;
        let session = self.store.session(sid).await?.ok_or_else(refused)?;
        if !session.is_live(now) || session.uid.as_str() != claims.sub {
            return Err(refused());
        }
        crate::context::note_uid(&session.uid);
        Ok(Caller {
            uid: session.uid,
            sid,
            exp: claims.exp,
        })
    }

    /// `User.AddUser`: writes the caller's own record (`uid` empty or the caller's).
    pub async fn add_user(
        &self,
        caller: &Caller,
        uid: Option<Uid>,
        patch: &UserPatch,
    ) -> Result<()> {
        let target = uid.unwrap_or_else(|| caller.uid.clone());
        if target != caller.uid {
            return Err(ServiceError::PermissionDenied(
                "a user may write only its own record".into(),
            ));
        }
        self.store.update_user(&target, patch, self.now()).await?;
        Ok(())
    }

    /// `User.QueryUser`: the records that exist, in the order asked, each uid once.
    pub async fn query_users(
        &self,
        _caller: &Caller,
        uids: &[Uid],
    ) -> Result<Vec<Arc<UserRecord>>> {
        if uids.len() > self.policy.max_query_uids {
            return Err(ServiceError::InvalidArgument(format!(
                "uids has {} entries; at most {} are allowed",
                uids.len(),
                self.policy.max_query_uids
            )));
        }
        Ok(self.store.users(&first_occurrences(uids)).await?)
    }

    /// Adds a generated signing key and puts the new keys in force at once: the new key
    /// is in the JWKS from now on and signs from `token.key_publish_secs` later (at once
    /// when `immediately`); tokens under the old key verify until it retires. Refused
    /// when `token.secret` is configured.
    pub async fn rotate_signing_key(
        &self,
        token: &TokenConfig,
        immediately: bool,
    ) -> std::result::Result<SigningKeyRotation, KeyError> {
        let now = self.now();
        let rotation =
            crate::keys::rotate_signing_key(self.store.as_ref(), token, now, immediately).await?;
        self.reload_signing_keys(token).await?;
        Ok(rotation)
    }

    /// The JWKS document of the keys in force now.
    pub fn jwks(&self) -> bytes::Bytes {
        self.access.jwks(self.now())
    }

    /// Reloads the signing keys from `token` and the store (after a rotation).
    pub async fn reload_signing_keys(
        &self,
        token: &TokenConfig,
    ) -> std::result::Result<(), StoreError> {
        let keys = crate::keys::load(self.store.as_ref(), token, self.now()).await?;
        self.access.set_keys(keys);
        Ok(())
    }

    /// Rotates the key that tags refresh tokens and puts the new keys in force at once:
    /// new sessions and successors are tagged with the new key, and the replaced one
    /// verifies for `token.refresh_ttl_secs`.
    pub async fn rotate_refresh_key(
        &self,
        token: &TokenConfig,
    ) -> std::result::Result<KeyRotation, StoreError> {
        let rotation =
            crate::keys::rotate_refresh_key(self.store.as_ref(), token, self.now()).await?;
        self.reload_refresh_key().await?;
        Ok(rotation)
    }

    /// Reloads the keys that tag refresh tokens from the store (after a rotation, or an
    /// import that adopted the keys of the database it came from).
    pub async fn reload_refresh_key(&self) -> std::result::Result<(), StoreError> {
        let keys = crate::keys::refresh_keys(self.store.as_ref(), self.now()).await?;
        *self
            .refresh_keys
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(keys);
        Ok(())
    }

    fn refresh_keys(&self) -> Arc<RefreshKeys> {
        self.refresh_keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Removes dead sessions and forgotten login codes; returns the sessions removed.
    pub async fn sweep(&self) -> Result<usize> {
        let now = self.now();
        self.codes.prune(now);
        Ok(self.store.sweep(now).await?)
    }

    fn grant(&self, session: &Session, refresh_token: String, now: u64) -> Grant {
        crate::context::note_uid(&session.uid);
        let (access_token, expiry) =
            self.access
                .issue(&session.uid, session.sid, now, session.expires_at);
        Grant {
            access_token,
            refresh_token,
            expiry,
            uid: session.uid.clone(),
            sid: session.sid,
        }
    }
}

/// Whether a token rotated at `rotated_at_ms` may still be retried at `now_ms`: within
/// `grace_secs` of the rotation, to the millisecond, inclusive. A grace of 0 allows no
/// retry at all, and neither does a rotation that lies in the future: the clock that
/// timed it has been stepped back since, or it is another clock than the one judging,
/// and either way nothing says that the grace is still running.
fn within_grace(rotated_at_ms: u64, now_ms: u64, grace_secs: u64) -> bool {
    grace_secs > 0
        && now_ms
            .checked_sub(rotated_at_ms)
            .is_some_and(|elapsed| elapsed <= grace_secs.saturating_mul(1000))
}

/// The successor a rotation gave `token`, if it is `session`'s current token: tagged with
/// the current refresh key, or with a retired one still in force (the rotation came
/// before a refresh-key rotation, and this is its retry).
fn given_successor(
    token: &RefreshToken,
    session: &Session,
    keys: &RefreshKeys,
    now: u64,
) -> Option<RefreshToken> {
    keys.in_force(now)
        .filter_map(|key| token.successor(key))
        .find(|successor| successor.hash() == session.current)
}

/// `uids` with repeats removed, first occurrence kept, order kept.
fn first_occurrences(uids: &[Uid]) -> Vec<Uid> {
    let mut seen = HashSet::with_capacity(uids.len());
    uids.iter().filter(|u| seen.insert(*u)).cloned().collect()
}

/// Login codes seen in the last five minutes, by SHA-256, with their outcome.
///
/// Memory is bounded: expired entries are pruned at most every
/// [`CODE_PRUNE_EVERY_SECS`] (a full scan, so not on every insert), and beyond
/// [`CODE_CAPACITY`] live entries a new code is exchanged without being remembered — under
/// such a flood a client retry may then meet WeChat's 40163 instead of its first answer.
#[derive(Default)]
struct LoginCodes {
    inner: Mutex<CodeMap>,
}

#[derive(Default)]
struct CodeMap {
    entries: HashMap<[u8; 32], Arc<CodeEntry>>,
    next_prune: u64,
}

struct CodeEntry {
    first_seen: u64,
    uid: OnceCell<Result<Uid>>,
}

/// Most login codes remembered at once.
const CODE_CAPACITY: usize = 200_000;
/// Least time between two scans for expired codes.
const CODE_PRUNE_EVERY_SECS: u64 = 10;

impl CodeMap {
    fn prune(&mut self, now: u64) {
        self.entries
            .retain(|_, e| now < e.first_seen + CODE_LIFETIME_SECS);
        self.next_prune = now + CODE_PRUNE_EVERY_SECS;
    }
}

impl LoginCodes {
    /// The uid for `code`: from a live entry, by joining an exchange in flight, or by
    /// running `exchange`. Failures are shared with requests waiting at that moment but
    /// not remembered, so a later retry asks again.
    async fn resolve<F, Fut>(&self, code: &str, now: u64, exchange: F) -> Result<Uid>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Uid>>,
    {
        let key = sha256(code.as_bytes());
        let entry = {
            let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            if now >= map.next_prune {
                map.prune(now);
            }
            let reusable = map.entries.get(&key).filter(|e| {
                now < e.first_seen + CODE_LIFETIME_SECS && !matches!(e.uid.get(), Some(Err(_)))
            });
            match reusable {
                Some(entry) => Some(entry.clone()),
                None if map.entries.len() < CODE_CAPACITY => {
                    let entry = Arc::new(CodeEntry {
                        first_seen: now,
                        uid: OnceCell::new(),
                    });
                    map.entries.insert(key, entry.clone());
                    Some(entry)
                }
                None => None,
            }
        };
        match entry {
            Some(entry) => entry.uid.get_or_init(exchange).await.clone(),
            None => exchange().await,
        }
    }

    fn prune(&self, now: u64) {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .prune(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grace_is_measured_in_milliseconds_from_the_rotation() {
        // Rotated 50 ms into a second, with a 2 s grace.
        let rotated = 1_700_000_000_050;
        assert!(within_grace(rotated, rotated, 2));
        assert!(
            within_grace(rotated, rotated + 1_500, 2),
            "1.5 s later: a retry"
        );
        assert!(
            within_grace(rotated, rotated + 2_000, 2),
            "the bound is inclusive"
        );
        assert!(
            !within_grace(rotated, rotated + 2_001, 2),
            "1 ms past the grace"
        );
        assert!(
            !within_grace(rotated, rotated + 2_300, 2),
            "2.3 s later: reuse"
        );
        // Rotated 950 ms into a second: the same window, whatever the fraction.
        let late = 1_700_000_000_950;
        assert!(within_grace(late, late + 1_500, 2));
        assert!(!within_grace(late, late + 2_300, 2));
    }

    #[test]
    fn a_grace_of_zero_allows_no_retry_even_at_the_same_millisecond() {
        let rotated = 1_700_000_000_000;
        assert!(!within_grace(rotated, rotated, 0));
        assert!(!within_grace(rotated, rotated + 1, 0));
    }

    #[test]
    fn a_rotation_in_the_future_is_never_a_retry() {
        let rotated = 1_700_000_010_000;
        assert!(
            !within_grace(rotated, rotated - 5_000, 2),
            "a clock stepped back"
        );
        assert!(!within_grace(rotated, rotated - 1, 300), "by a millisecond");
        assert!(!within_grace(rotated, 0, u64::MAX));
        assert!(!within_grace(u64::MAX - 10, 0, 0));
        assert!(
            within_grace(u64::MAX - 10, u64::MAX, 2),
            "no overflow near the end of time"
        );
        assert!(
            within_grace(0, u64::MAX, u64::MAX),
            "nor with the longest grace"
        );
    }

    #[test]
    fn repeats_are_dropped_keeping_first_occurrences_in_order() {
        let uid = |s: &str| Uid::parse(s).unwrap();
        let short: Vec<Uid> = ["c", "a", "c", "b", "a"].iter().map(|s| uid(s)).collect();
        assert_eq!(
            first_occurrences(&short),
            vec![uid("c"), uid("a"), uid("b")]
        );
        let long: Vec<Uid> = (0..100).map(|i| uid(&format!("u{}", i % 40))).collect();
        let expected: Vec<Uid> = (0..40).map(|i| uid(&format!("u{i}"))).collect();
        assert_eq!(first_occurrences(&long), expected);
    }
}
