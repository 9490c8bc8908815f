//! Around every request: a request id, one access-log line, and the request metrics.
//!
//! The log line holds the method, the path (without its query string), status, latency,
//! the caller's uid when the request got that far, and the request id — never a header
//! or a body, so no token, code or secret. The request id is the client's
//! `X-Request-Id` when it is a short plain token (a proxy's id keeps one trail across
//! hops), otherwise a fresh random one; either way it is echoed in the answer.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use warp::http::{HeaderValue, Request};
use warp::reply::Response;

use super::error::ErrorCode;
use crate::metrics::Metrics;
use crate::primitives::{hex, random_bytes};

/// The request-id header, read and echoed.
pub(crate) const REQUEST_ID: &str = "x-request-id";

/// Longest accepted client request id.
const REQUEST_ID_MAX: usize = 64;

/// Longest path written to the log.
const PATH_MAX: usize = 128;
/// The longest path segment the access log shows (longer ones may be tokens).
const SEGMENT_MAX: usize = 24;

/// What one listener logs and counts.
#[derive(Debug)]
pub(crate) struct Observer {
    listener: &'static str,
    metrics: Option<Arc<Metrics>>,
}

impl Observer {
    /// An observer for the listener called `listener` (`public`, `admin`), recording
    /// request metrics into `metrics` when given.
    pub(crate) fn new(listener: &'static str, metrics: Option<Arc<Metrics>>) -> Self {
        Observer { listener, metrics }
    }
}

/// Calls `service` with `request`, then logs and counts the answer.
pub(crate) async fn call<S, B>(
    service: S,
    observer: Arc<Observer>,
    request: Request<B>,
) -> Result<Response, Infallible>
where
    S: hyper::service::Service<Request<B>, Response = Response, Error = Infallible>,
{
    let started = Instant::now();
    let method = request.method().clone();
    let path = loggable_path(request.uri().path());
    let request_id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|id| is_plain_id(id))
        .map_or_else(fresh_request_id, str::to_string);

    let (answer, uid) = crate::context::scope(service.call(request)).await;
    let Ok(mut response) = answer;

    let status = response.status().as_u16();
    let code = match response.extensions().get::<ErrorCode>() {
        Some(code) => code.name(),
        None if response.status().is_success() => "ok",
        None => "other",
    };
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    let elapsed = started.elapsed();
    if let Some(metrics) = &observer.metrics {
        metrics.request(api_method(&path), code, status, elapsed);
    }
    let uid = uid.as_ref().map_or("-", |u| u.as_str());
    tracing::info!(
        target: "liveuser::access",
        listener = observer.listener,
        method = %method,
        path = %path,
        status,
        code,
        latency_ms = (elapsed.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0,
        uid,
        request_id = %request_id,
        "request"
    );
    Ok(response)
}

/// The metrics label of a path: the API method's name, or `other` (so a scan of random
/// paths cannot grow the label set).
pub(crate) fn api_method(path: &str) -> &'static str {
    match path {
        "/liveuser/Wx/Login" => "Login",
        "/liveuser/Wx/RenewToken" => "RenewToken",
        "/liveuser/User/AddUser" => "AddUser",
        "/liveuser/User/QueryUser" => "QueryUser",
        "/liveuser/Auth/Check" => "AuthCheck",
        "/.well-known/jwks.json" => "jwks",
        "/healthz" => "healthz",
        "/metrics" => "metrics",
        "/liveuser/openapi.json" => "openapi",
        _ => "other",
    }
}

/// A new request id: 16 hex digits, a random per-process prefix and a counter, so ids
/// never repeat within a run and rarely across runs, without a system call per request.
fn fresh_request_id() -> String {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU32, Ordering};
    static PREFIX: OnceLock<String> = OnceLock::new();
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let prefix = PREFIX.get_or_init(|| hex(&random_bytes::<4>()));
    format!("{prefix}{:08x}", COUNTER.fetch_add(1, Ordering::Relaxed))
}

fn is_plain_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= REQUEST_ID_MAX
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The path as the access log shows it: at most [`PATH_MAX`] characters, and every
/// segment longer than [`SEGMENT_MAX`] shown as `…`. liveuser's own paths have short
/// segments; a long one is what a client put there by mistake, and may be a token.
fn loggable_path(path: &str) -> String {
    let too_long = |segment: &str| segment.chars().nth(SEGMENT_MAX).is_some();
    // Every request passes here: rebuild the path only when it has a long segment.
    let path: std::borrow::Cow<'_, str> = if path.split('/').any(too_long) {
        let segments: Vec<&str> = path
            .split('/')
            .map(|s| if too_long(s) { "…" } else { s })
            .collect();
        segments.join("/").into()
    } else {
        path.into()
    };
    match path.char_indices().nth(PATH_MAX) {
        Some((cut, _)) => format!("{}…", &path[..cut]),
        None => path.into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_request_ids_are_plain_and_distinct() {
        let a = fresh_request_id();
        let b = fresh_request_id();
        assert_ne!(a, b);
        assert!(is_plain_id(&a) && a.len() == 16, "{a}");
    }

    #[test]
    fn only_short_plain_request_ids_are_taken_from_the_client() {
        assert!(is_plain_id("abc-123_x.y"));
        assert!(!is_plain_id(""));
        assert!(!is_plain_id("has space"));
        assert!(!is_plain_id("quote\"d"));
        assert!(!is_plain_id(&"x".repeat(65)));
    }

    #[test]
    fn unknown_paths_share_one_metrics_label() {
        assert_eq!(api_method("/liveuser/Wx/Login"), "Login");
        assert_eq!(api_method("/wp-admin"), "other");
    }

    #[test]
    fn a_token_in_the_path_is_not_logged() {
        let refresh = format!("lvrt_{}", "A".repeat(70));
        let logged = loggable_path(&format!("/liveuser/{refresh}/x"));
        assert_eq!(logged, "/liveuser/…/x");
        assert_eq!(
            loggable_path("/liveuser/User/QueryUser"),
            "/liveuser/User/QueryUser"
        );
    }

    #[test]
    fn long_paths_are_cut_for_the_log() {
        assert_eq!(loggable_path("/a"), "/a");
        assert_eq!(
            loggable_path(&"/".repeat(500)).chars().count(),
            PATH_MAX + 1
        );
    }
}
