//! The public API as warp filters: one function per route, each only decoding, calling
//! the service, and encoding. Besides the four methods: `/liveuser/Auth/Check`, the
//! access check proxies and other backends call, and `GET /.well-known/jwks.json`, the
//! public keys that verify access tokens.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use warp::http::{HeaderValue, Method, header};
use warp::reply::Response;
use warp::{Filter, Rejection};

use super::body::{BodyError, capped, header_value, method};
use super::error::{ApiError, recover};
use super::wire;
use crate::limits::{Limits, RateLimiter};
use crate::service::{Caller, Service};
use crate::store::Store;

/// The address of the TCP peer, put on each request by the server loop.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PeerAddr(pub SocketAddr);

/// Every public route, with errors rendered as the JSON error body. `max_query_uids` is
/// stated in the OpenAPI document (the service enforces it).
pub(crate) fn api<S: Store>(
    service: Arc<Service<S>>,
    body_limit: u64,
    limits: Arc<Limits>,
    max_query_uids: usize,
    jwks_max_age_secs: u64,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    let routes = healthz(service.clone())
        .or(auth_check(service.clone()))
        .unify()
        .or(jwks(service.clone(), jwks_max_age_secs))
        .unify()
        .or(login(service.clone(), body_limit, limits.clone()))
        .unify()
        .or(renew_token(service.clone(), body_limit, limits))
        .unify()
        .or(add_user(service.clone(), body_limit))
        .unify()
        .or(query_user(service.clone(), body_limit))
        .unify()
        .or(super::meta::metrics(service))
        .unify()
        .or(super::meta::openapi(max_query_uids))
        .unify();
    exact_path().and(routes).recover(recover).unify()
}

/// Paths match exactly: warp's path matching also takes a trailing `/`, and no path of
/// liveuser's has one, so `/liveuser/Wx/Login/` is an unknown path like any other.
fn exact_path() -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::path::full()
        .and_then(|path: warp::path::FullPath| async move {
            if path.as_str().len() > 1 && path.as_str().ends_with('/') {
                Err(warp::reject::not_found())
            } else {
                Ok(())
            }
        })
        .untuple_one()
}

/// `GET /healthz`: `{"status":"ok"}` (storage is open before the listener starts).
/// On PostgreSQL it also says whether the database can be reached:
/// `{"status":"ok","database":"up"}`, or 503 `{"status":"unavailable","database":"down"}`
/// (no round trip: the state is the listening connection's, checked every 300 ms).
pub(crate) fn healthz<S: Store>(
    service: Arc<Service<S>>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("healthz")
        .and(method(Method::GET))
        .map(move || match service.store().database_up() {
            None => json(br#"{"status":"ok"}"#.to_vec()),
            Some(true) => json(br#"{"status":"ok","database":"up"}"#.to_vec()),
            Some(false) => {
                let mut response = json(br#"{"status":"unavailable","database":"down"}"#.to_vec());
                *response.status_mut() = warp::http::StatusCode::SERVICE_UNAVAILABLE;
                response
            }
        })
}

/// `POST /liveuser/Wx/Login` (rate-limited per client address)
pub(crate) fn login<S: Store>(
    service: Arc<Service<S>>,
    limit: u64,
    limits: Arc<Limits>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("liveuser" / "Wx" / "Login")
        .and(rpc(limit))
        .and(client(limits.clone()))
        .and(with(service))
        .and(with(limits))
        .then(
            |body: Bytes, client: Option<IpAddr>, service: Arc<Service<S>>, limits: Arc<Limits>| async move {
                respond(async {
                    rate_limit(&limits.login, client, "Login")?;
                    let code = wire::login(&body)?;
                    Ok(wire::grant(&service.login(&code).await?))
                })
                .await
            },
        )
}

/// `POST /liveuser/Wx/RenewToken` (rate-limited per client address)
pub(crate) fn renew_token<S: Store>(
    service: Arc<Service<S>>,
    limit: u64,
    limits: Arc<Limits>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("liveuser" / "Wx" / "RenewToken")
        .and(rpc(limit))
        .and(client(limits.clone()))
        .and(with(service))
        .and(with(limits))
        .then(
            |body: Bytes, client: Option<IpAddr>, service: Arc<Service<S>>, limits: Arc<Limits>| async move {
                respond(async {
                    rate_limit(&limits.renew, client, "RenewToken")?;
                    let token = wire::renew(&body)?;
                    Ok(wire::grant(&service.renew(&token, client).await?))
                })
                .await
            },
        )
}

/// Takes a call from `client`'s bucket, or answers `resource_exhausted` + `Retry-After`.
fn rate_limit(limiter: &RateLimiter, client: Option<IpAddr>, method: &str) -> Result<(), ApiError> {
    let Some(client) = client else {
        return Ok(());
    };
    limiter.check(client).map_err(|secs| {
        ApiError::resource_exhausted(
            format!("too many {method} calls from this address; retry in {secs} s"),
            Some(secs),
        )
    })
}

/// `POST /liveuser/User/AddUser` (Bearer)
pub(crate) fn add_user<S: Store>(
    service: Arc<Service<S>>,
    limit: u64,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("liveuser" / "User" / "AddUser")
        .and(rpc(limit))
        .and(header_value("authorization"))
        .and(with(service))
        .then(
            |body: Bytes, auth: Option<HeaderValue>, service: Arc<Service<S>>| async move {
                respond(async {
                    let caller = authenticate(&service, auth.as_ref()).await?;
                    let (uid, patch) = wire::add_user(&body)?;
                    service.add_user(&caller, uid, &patch).await?;
                    Ok(b"{}".to_vec())
                })
                .await
            },
        )
}

/// `POST /liveuser/User/QueryUser` (Bearer)
pub(crate) fn query_user<S: Store>(
    service: Arc<Service<S>>,
    limit: u64,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("liveuser" / "User" / "QueryUser")
        .and(rpc(limit))
        .and(header_value("authorization"))
        .and(with(service))
        .then(
            |body: Bytes, auth: Option<HeaderValue>, service: Arc<Service<S>>| async move {
                respond(async {
                    let caller = authenticate(&service, auth.as_ref()).await?;
                    let uids = wire::query_user(&body)?;
                    Ok(wire::users(&service.query_users(&caller, &uids).await?))
                })
                .await
            },
        )
}

/// `/liveuser/Auth/Check`, any method, body ignored (Bearer): 200 with `X-Liveuser-Uid`,
/// `X-Liveuser-Session` and `{"uid","sid","exp"}` for a token every authenticated method
/// would accept (its session live included), else 401 `unauthenticated` with the one
/// access-refusal message. HEAD gets the same headers and no body. What nginx
/// `auth_request`, Traefik `ForwardAuth` and Caddy `forward_auth` call on every request
/// of a backend, so neither rate-limited nor reading a body.
pub(crate) fn auth_check<S: Store>(
    service: Arc<Service<S>>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("liveuser" / "Auth" / "Check")
        .and(header_value("authorization"))
        .and(with(service))
        .then(
            |auth: Option<HeaderValue>, service: Arc<Service<S>>| async move {
                match authenticate(&service, auth.as_ref()).await {
                    Ok(caller) => checked(&caller),
                    Err(e) => e.to_response(),
                }
            },
        )
}

/// The answer of a successful access check.
fn checked(caller: &Caller) -> Response {
    let (uid, sid) = (caller.uid.to_string(), caller.sid.to_string());
    let body = serde_json::json!({"uid": uid, "sid": sid, "exp": caller.exp});
    let mut response = json(body.to_string().into_bytes());
    // A uid is `[A-Za-z0-9_.-]` and a sid hex: both are valid header values.
    for (name, value) in [("x-liveuser-uid", uid), ("x-liveuser-session", sid)] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

/// `GET /.well-known/jwks.json`: the public keys of the ES256 signing keys that sign,
/// will sign (standby) or still verify, as a JWK Set (RFC 7517); `{"keys":[]}` without
/// one. Every verifier fetches it, so it is served as rendered at the last key change.
pub(crate) fn jwks<S: Store>(
    service: Arc<Service<S>>,
    max_age_secs: u64,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let cache_control = HeaderValue::from_str(&format!("public, max-age={max_age_secs}"))
        .expect("a number is a valid header value");
    warp::path!(".well-known" / "jwks.json")
        .and(method(Method::GET))
        .map(move || {
            let mut response = Response::new(service.jwks().into());
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            headers.insert(header::CACHE_CONTROL, cache_control.clone());
            response
        })
}

/// Checks `Authorization: Bearer <token>` — exactly that scheme spelling and one space —
/// and the token behind it.
async fn authenticate<S: Store>(
    service: &Service<S>,
    authorization: Option<&HeaderValue>,
) -> Result<Caller, ApiError> {
    let refused = || ApiError::unauthenticated(crate::service::ACCESS_REFUSED);
    let value = authorization
        .and_then(|v| v.to_str().ok())
        .ok_or_else(refused)?;
    let token = value.strip_prefix("Bearer ").ok_or_else(refused)?;
    if token.is_empty() || token.bytes().any(|b| b.is_ascii_whitespace()) {
        return Err(refused());
    }
    Ok(service.authenticate(token).await?)
}

/// Runs a handler body and renders its outcome.
async fn respond(work: impl Future<Output = Result<Vec<u8>, ApiError>>) -> Response {
    match work.await {
        Ok(body) => json(body),
        Err(e) => e.to_response(),
    }
}

fn json(body: Vec<u8>) -> Response {
    let mut response = Response::new(body.into());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn with<T: Clone + Send>(value: T) -> impl Filter<Extract = (T,), Error = Infallible> + Clone {
    warp::any().map(move || value.clone())
}

/// The client address: the TCP peer, or what a trusted proxy says in `X-Forwarded-For`.
fn client(
    limits: Arc<Limits>,
) -> impl Filter<Extract = (Option<IpAddr>,), Error = Infallible> + Clone {
    warp::ext::optional::<PeerAddr>()
        .and(header_value("x-forwarded-for"))
        .map(
            move |peer: Option<PeerAddr>, forwarded: Option<HeaderValue>| {
                let forwarded = forwarded.as_ref().and_then(|v| v.to_str().ok());
                peer.map(|p| limits.client_addr(p.0.ip(), forwarded))
            },
        )
}

/// The common front of the four methods: POST, a JSON content type, a bounded body.
fn rpc(limit: u64) -> impl Filter<Extract = (Bytes,), Error = Rejection> + Clone {
    warp::path::end()
        .and(method(Method::POST))
        .and(json_content_type())
        .and(body(limit))
}

/// `application/json`, any case, with or without parameters such as `charset`.
fn json_content_type() -> impl Filter<Extract = (), Error = Rejection> + Clone {
    header_value("content-type")
        .and_then(|ct: Option<HeaderValue>| async move {
            let essence = ct
                .as_ref()
                .and_then(|ct| ct.to_str().ok())
                .and_then(|ct| ct.split(';').next())
                .map(str::trim);
            match essence {
                Some(e) if e.eq_ignore_ascii_case("application/json") => Ok(()),
                _ => Err(warp::reject::custom(ApiError::unsupported_media_type())),
            }
        })
        .untuple_one()
}

/// The body, at most `limit` bytes; a `Content-Length` that is not a number is
/// `malformed`, a body over the limit `too_large`.
fn body(limit: u64) -> impl Filter<Extract = (Bytes,), Error = Rejection> + Clone {
    capped(limit).and_then(move |body: Result<Bytes, BodyError>| async move {
        body.map_err(|e| {
            warp::reject::custom(match e {
                BodyError::BadLength => {
                    ApiError::malformed("the Content-Length header is not a number")
                }
                BodyError::TooLarge => ApiError::too_large(limit),
                BodyError::Unreadable(_) => {
                    ApiError::malformed("the request body could not be read")
                }
            })
        })
    })
}
