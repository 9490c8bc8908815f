//! The WeChat code exchange (`auth.code2Session`), real or mocked.
//!
//! The real client calls `GET {api_base}/sns/jscode2session` through ureq on a blocking
//! thread (never on the async workers), with `wx.timeout_ms`, and retries once when
//! WeChat answers -1 ("system busy"). At most `wx.max_concurrent` exchanges run at once:
//! while WeChat hangs, each one holds a blocking thread, and without a bound a login
//! flood would take every thread tokio has (512), starving storage work. A Login that
//! finds every slot taken waits up to `wx.timeout_ms` for one, then is `unavailable`. The app secret travels only in that request's
//! query string: no error built here contains the URL or the underlying ureq error text,
//! because those could carry it.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::Semaphore;

use crate::config::{WxConfig, WxMode};
use crate::primitives::{hex, random_bytes, sha256};
use crate::secret::Secret;

/// What a successful exchange yields.
#[derive(Debug, Clone)]
pub struct WxIdentity {
    /// The user's openid for this mini-program.
    pub openid: String,
    /// The unionid, when the mini-program is bound to an open platform account.
    pub unionid: Option<String>,
    /// The session key (for decrypting user data later); never returned to clients.
    pub session_key: Secret<String>,
}

/// Why an exchange failed. Messages are safe to show: they hold at most an errcode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WxError {
    /// 40029 (invalid code) or 40163 (code already used).
    #[error("WeChat rejected the login code (errcode {0})")]
    InvalidCode(i64),
    /// 45011: WeChat's per-user rate limit.
    #[error("WeChat rate limit reached (errcode 45011)")]
    RateLimited,
    /// 40226: WeChat flags the user as high-risk.
    #[error("WeChat flagged this user as high-risk (errcode 40226)")]
    HighRisk,
    /// Unreachable, timed out, garbage, HTTP error, -1 twice, or an unknown errcode.
    #[error("WeChat is unavailable: {0}")]
    Unavailable(Unavailable),
    /// Real mode without appid or secret.
    #[error("WeChat is not configured (wx.appid and wx.secret must be set)")]
    NotConfigured,
}

/// Why WeChat is unavailable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unavailable {
    /// An errcode liveuser does not act on.
    #[error("errcode {0}")]
    Errcode(i64),
    /// -1 ("system busy") on the call and on its one retry.
    #[error("WeChat answered errcode -1 (system busy) twice")]
    Busy,
    /// An HTTP status other than 200.
    #[error("HTTP status {0}")]
    Status(u16),
    /// A 200 answer that is not JSON.
    #[error("the answer is not JSON")]
    NotJson,
    /// A JSON answer without an errcode and without an openid.
    #[error("the answer has no openid")]
    NoOpenid,
    /// The request failed on the way (a category, never the client's own error text,
    /// which can quote the URL and with it the secret).
    #[error("{0}")]
    Transport(&'static str),
    /// Every exchange slot stayed taken for `wx.timeout_ms`.
    #[error("too many exchanges with WeChat are in progress")]
    NoSlot,
    /// The blocking task of the exchange ended without an answer.
    #[error("the exchange was aborted")]
    Aborted,
}

impl WxError {
    /// WeChat's errcode behind this failure, when WeChat gave one (for metrics).
    pub fn errcode(&self) -> Option<i64> {
        match self {
            WxError::InvalidCode(code) => Some(*code),
            WxError::RateLimited => Some(45011),
            WxError::HighRisk => Some(40226),
            WxError::Unavailable(Unavailable::Errcode(code)) => Some(*code),
            WxError::Unavailable(Unavailable::Busy) => Some(-1),
            WxError::Unavailable(_) | WxError::NotConfigured => None,
        }
    }

    /// The outcome label of the metrics.
    pub fn outcome(&self) -> &'static str {
        match self {
            WxError::InvalidCode(_) => "invalid_code",
            WxError::RateLimited => "rate_limited",
            WxError::HighRisk => "high_risk",
            WxError::Unavailable(_) => "unavailable",
            WxError::NotConfigured => "not_configured",
        }
    }
}

/// Told how each exchange with the real WeChat ended (`"ok"` or [`WxError::outcome`]),
/// WeChat's errcode (0 on success) and how long it took: the metrics.
pub type CallObserver = Box<dyn Fn(&'static str, Option<i64>, Duration) + Send + Sync>;

/// How a single call ended, before the retry policy.
enum Attempt {
    Done(Result<WxIdentity, WxError>),
    Busy,
}

/// The exchange client.
#[derive(Clone, Debug)]
pub enum WxClient {
    /// Development: the code names the user; no network.
    Mock,
    /// Calls WeChat.
    Real(Arc<RealClient>),
}

/// The real client's settings.
pub struct RealClient {
    agent: ureq::Agent,
    url: String,
    appid: String,
    secret: Secret<String>,
    /// One permit per exchange in progress (`wx.max_concurrent`).
    slots: Arc<Semaphore>,
    /// How long a Login waits for a slot (`wx.timeout_ms`).
    slot_wait: Duration,
    observer: OnceLock<CallObserver>,
}

impl std::fmt::Debug for RealClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RealClient")
            .field("url", &self.url)
            .field("appid", &self.appid)
            .finish_non_exhaustive()
    }
}

/// WeChat's answer; every field optional because errors and successes share the shape.
#[derive(Deserialize)]
struct Answer {
    openid: Option<String>,
    unionid: Option<String>,
    session_key: Option<String>,
    errcode: Option<i64>,
}

impl WxClient {
    /// Builds the client `wx` describes.
    pub fn from_config(wx: &WxConfig) -> Self {
        match wx.mode {
            WxMode::Mock => WxClient::Mock,
            WxMode::Wechat => {
                let config = ureq::Agent::config_builder()
                    .timeout_global(Some(Duration::from_millis(wx.timeout_ms)))
                    .http_status_as_error(false)
                    .max_redirects(0)
                    .user_agent(concat!("liveuser/", env!("CARGO_PKG_VERSION")))
                    .build();
                WxClient::Real(Arc::new(RealClient {
                    agent: ureq::Agent::new_with_config(config),
                    url: format!("{}/sns/jscode2session", wx.api_base.trim_end_matches('/')),
                    appid: wx.appid.clone(),
                    secret: wx.secret.clone(),
                    slots: Arc::new(Semaphore::new(wx.max_concurrent)),
                    slot_wait: Duration::from_millis(wx.timeout_ms),
                    observer: OnceLock::new(),
                }))
            }
        }
    }

    /// Reports every exchange with the real WeChat to `observer` (the first observer set
    /// stays); mock mode calls no one and reports nothing.
    pub fn observe(&self, observer: CallObserver) {
        if let WxClient::Real(client) = self {
            let _ = client.observer.set(observer);
        }
    }

    /// Exchanges a login code for the user's identity.
    pub async fn exchange(&self, code: &str) -> Result<WxIdentity, WxError> {
        match self {
            WxClient::Mock => Ok(mock_identity(code)),
            WxClient::Real(client) => {
                let started = Instant::now();
                let result = client.exchange(code).await;
                if let Some(observe) = client.observer.get() {
                    match &result {
                        Ok(_) => observe("ok", Some(0), started.elapsed()),
                        Err(e) => observe(e.outcome(), e.errcode(), started.elapsed()),
                    }
                }
                result
            }
        }
    }
}

impl RealClient {
    async fn exchange(self: &Arc<Self>, code: &str) -> Result<WxIdentity, WxError> {
        if self.appid.is_empty() || self.secret.expose().is_empty() {
            return Err(WxError::NotConfigured);
        }
        let permit = tokio::time::timeout(self.slot_wait, self.slots.clone().acquire_owned()).await;
        let Ok(Ok(permit)) = permit else {
            return Err(WxError::Unavailable(Unavailable::NoSlot));
        };
        let client = self.clone();
        let code = code.to_string();
        // The permit lives on the blocking thread: if the Login is abandoned (the client
        // hangs up), the thread still waits for WeChat and still counts against the bound.
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            client.exchange_blocking(&code)
        })
        .await
        .unwrap_or(Err(WxError::Unavailable(Unavailable::Aborted)))
    }
}

/// Mock mode: the code names the user. `alice` and `alice#<anything>` are the same user,
/// so a client can send a fresh code at every login, as `wx.login()` gives, and still
/// come back as the same user.
fn mock_identity(code: &str) -> WxIdentity {
    let name = code.split_once('#').map_or(code, |(name, _)| name);
    let mut tagged = b"liveuser-mock:".to_vec();
    tagged.extend_from_slice(name.as_bytes());
    WxIdentity {
        openid: format!("mock-{}", hex(&sha256(&tagged)[..12])),
        unionid: None,
        // Like WeChat's: base64 of 16 random bytes, new at each login.
        session_key: Secret::new(base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            random_bytes::<16>(),
        )),
    }
}

impl RealClient {
    fn exchange_blocking(&self, code: &str) -> Result<WxIdentity, WxError> {
        match self.call_once(code) {
            Attempt::Done(result) => result,
            Attempt::Busy => match self.call_once(code) {
                Attempt::Done(result) => result,
                Attempt::Busy => Err(WxError::Unavailable(Unavailable::Busy)),
            },
        }
    }

    fn call_once(&self, code: &str) -> Attempt {
        let response = self
            .agent
            .get(&self.url)
            .query("appid", &self.appid)
            .query("secret", self.secret.expose())
            .query("js_code", code)
            .query("grant_type", "authorization_code")
            .call();
        let mut response = match response {
            Ok(r) => r,
            Err(e) => return Attempt::Done(Err(WxError::Unavailable(describe(&e)))),
        };
        let status = response.status().as_u16();
        if status != 200 {
            return Attempt::Done(Err(WxError::Unavailable(Unavailable::Status(status))));
        }
        let body = match response
            .body_mut()
            .with_config()
            .limit(64 * 1024)
            .read_to_vec()
        {
            Ok(body) => body,
            Err(e) => return Attempt::Done(Err(WxError::Unavailable(describe(&e)))),
        };
        let Ok(answer) = serde_json::from_slice::<Answer>(&body) else {
            return Attempt::Done(Err(WxError::Unavailable(Unavailable::NotJson)));
        };
        Attempt::Done(match answer.errcode {
            None | Some(0) => match answer.openid {
                Some(openid) if !openid.is_empty() && openid.len() <= 128 => Ok(WxIdentity {
                    openid,
                    unionid: answer.unionid.filter(|u| !u.is_empty() && u.len() <= 128),
                    session_key: Secret::new(answer.session_key.unwrap_or_default()),
                }),
                _ => Err(WxError::Unavailable(Unavailable::NoOpenid)),
            },
            Some(-1) => return Attempt::Busy,
            Some(code @ (40029 | 40163)) => Err(WxError::InvalidCode(code)),
            Some(45011) => Err(WxError::RateLimited),
            Some(40226) => Err(WxError::HighRisk),
            Some(other) => Err(WxError::Unavailable(Unavailable::Errcode(other))),
        })
    }
}

/// A safe description of a ureq failure: a category, never the error's own text (which
/// can quote the request URL and with it the secret).
fn describe(e: &ureq::Error) -> Unavailable {
    Unavailable::Transport(match e {
        ureq::Error::Timeout(_) => "the request timed out",
        ureq::Error::HostNotFound => "the host was not found",
        ureq::Error::ConnectionFailed => "the connection failed",
        ureq::Error::BodyExceedsLimit(_) => "the answer is too large",
        ureq::Error::Io(_) => "the connection broke",
        ureq::Error::Tls(_) | ureq::Error::Rustls(_) => "the TLS handshake failed",
        _ => "the request failed",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mock_mode_maps_a_code_to_a_stable_openid() {
        let a = mock_identity("alice");
        assert_eq!(a.openid, mock_identity("alice").openid);
        assert_ne!(a.openid, mock_identity("bob").openid);
        assert!(!a.openid.contains("alice"));
        assert_eq!(a.openid, mock_identity("alice#2").openid);
        assert_eq!(a.openid, mock_identity("alice#x#y").openid);
    }

    #[tokio::test]
    async fn with_every_slot_taken_an_exchange_waits_the_timeout_then_is_unavailable() {
        let wx = WxConfig {
            mode: WxMode::Wechat,
            appid: "appid".into(),
            secret: Secret::new("secret".into()),
            // Never reached: the only slot is taken.
            api_base: "http://127.0.0.1:9".into(),
            timeout_ms: 100,
            max_concurrent: 1,
        };
        let WxClient::Real(real) = WxClient::from_config(&wx) else {
            panic!("real mode");
        };
        let held = real.slots.clone().acquire_owned().await.unwrap();
        let client = WxClient::Real(real.clone());
        let err = client.exchange("code").await.unwrap_err();
        assert_eq!(err, WxError::Unavailable(Unavailable::NoSlot));
        assert_eq!(err.errcode(), None);
        drop(held);
        // A free slot lets the exchange run (and fail at the closed port instead).
        let err = client.exchange("code").await.unwrap_err();
        assert!(
            !err.to_string().contains("in progress"),
            "a free slot is used: {err}"
        );
        assert_eq!(real.slots.available_permits(), 1, "the slot is given back");
    }

    #[test]
    fn errcodes_are_kept_by_every_error_that_has_one() {
        assert_eq!(WxError::InvalidCode(40029).errcode(), Some(40029));
        assert_eq!(WxError::RateLimited.errcode(), Some(45011));
        let unavailable = |u| WxError::Unavailable(u);
        assert_eq!(
            unavailable(Unavailable::Errcode(40125)).errcode(),
            Some(40125)
        );
        assert_eq!(unavailable(Unavailable::Busy).errcode(), Some(-1));
        assert_eq!(unavailable(Unavailable::Status(500)).errcode(), None);
        assert_eq!(WxError::NotConfigured.errcode(), None);
        assert_eq!(
            unavailable(Unavailable::Errcode(40125)).to_string(),
            "WeChat is unavailable: errcode 40125"
        );
    }
}
