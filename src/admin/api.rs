//! The admin HTTP API, on its own listener (`server.admin_listen`, loopback by default)
//! and never on the public one.
//!
//! Every route is `POST /admin/v1/<operation>` with `Authorization: Bearer <admin
//! token>`; the body is the operation's request struct as JSON and the answer its
//! output struct, or `{"code", "msg"}` with the status of [`ErrorKind`]. The token is
//! checked before routing, so without it every path answers the same 401.
//!
//! | path | request | answer |
//! |---|---|---|
//! | `user-get` | [`UserGet`] | [`UserGetOutput`](super::ops::UserGetOutput) |
//! | `user-list` | [`UserList`] | [`UserPage`](super::ops::UserPage) |
//! | `user-put` | [`UserPut`] | [`UserView`](super::ops::UserView) |
//! | `session-list` | [`SessionList`] | [`SessionPage`](super::ops::SessionPage) |
//! | `session-revoke` | [`SessionRevoke`] | [`RevokeOutput`](super::ops::RevokeOutput) |
//! | `token-mint` | [`TokenMint`] | [`Minted`](super::ops::Minted) |
//! | `token-rotate-key` | [`KeyRotate`] | [`KeyRotated`](super::ops::KeyRotated) |
//! | `export` | [`ExportRequest`] | the export, streamed as JSON lines |
//! | `import?merge=BOOL` | an export file | [`Counts`] |

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use warp::http::{HeaderValue, StatusCode, header};
use warp::reply::Response;
use warp::{Filter, Rejection};

use super::backup::{self, Counts, Exporter};
use super::endpoint::Endpoint;
use super::ops::{
    Admin, AdminError, ErrorKind, KeyRotate, Operation, SessionList, SessionRevoke, TokenMint,
    UserGet, UserList, UserPut,
};
use crate::http::routes::header_value;
use crate::store::Store;

/// Largest body of an operation request.
const OP_BODY_LIMIT: u64 = 1024 * 1024;

/// `export`'s request.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct ExportRequest {
    /// Include live sessions and their refresh-token hashes.
    pub sessions: bool,
}

/// `import`'s query.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct ImportQuery {
    /// Write into a database that already holds users.
    #[serde(default)]
    pub merge: bool,
}

#[derive(Debug)]
struct Refused(AdminError);

impl warp::reject::Reject for Refused {}

/// Every admin route behind the token check, errors rendered as JSON.
pub fn routes<S: Store>(
    admin: Arc<Admin<S>>,
    endpoint: Arc<Endpoint>,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    let ops = op::<UserGet, S>(admin.clone())
        .or(op::<UserList, S>(admin.clone()))
        .unify()
        .or(op::<UserPut, S>(admin.clone()))
        .unify()
        .or(op::<SessionList, S>(admin.clone()))
        .unify()
        .or(op::<SessionRevoke, S>(admin.clone()))
        .unify()
        .or(op::<TokenMint, S>(admin.clone()))
        .unify()
        .or(op::<KeyRotate, S>(admin.clone()))
        .unify()
        .or(export(admin.clone()))
        .unify()
        .or(import(admin))
        .unify();
    authorized(endpoint).and(ops).recover(recover).unify()
}

/// `Authorization: Bearer <admin token>`. A value that is not visible ASCII is refused
/// like a wrong token (`warp::header::optional` would turn it into a rejection that
/// ends as a 500).
fn authorized(endpoint: Arc<Endpoint>) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    header_value("authorization")
        .and_then(move |value: Option<HeaderValue>| {
            let endpoint = endpoint.clone();
            async move {
                let token = value
                    .as_ref()
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "));
                match token {
                    Some(token) if endpoint.accepts(token) => Ok(()),
                    _ => Err(warp::reject::custom(Refused(AdminError::new(
                        ErrorKind::Unauthenticated,
                        "a valid admin token is required",
                    )))),
                }
            }
        })
        .untuple_one()
}

fn path(name: &'static str) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::path("admin")
        .and(warp::path("v1"))
        .and(warp::path(name))
        .and(warp::path::end())
        .and(warp::post())
}

fn op<O: Operation, S: Store>(
    admin: Arc<Admin<S>>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    path(O::PATH)
        .and(warp::body::content_length_limit(OP_BODY_LIMIT))
        .and(warp::body::bytes())
        .then(move |body: Bytes| {
            let admin = admin.clone();
            async move {
                let result = match serde_json::from_slice::<O>(&body) {
                    Ok(op) => op.run(&admin).await,
                    Err(e) => Err(AdminError::invalid(format!("bad request body: {e}"))),
                };
                answer(result)
            }
        })
}

fn export<S: Store>(
    admin: Arc<Admin<S>>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    path("export")
        .and(warp::body::content_length_limit(OP_BODY_LIMIT))
        .and(warp::body::bytes())
        .map(move |body: Bytes| {
            let request = if body.is_empty() {
                ExportRequest::default()
            } else {
                match serde_json::from_slice::<ExportRequest>(&body) {
                    Ok(r) => r,
                    Err(e) => {
                        return error(&AdminError::invalid(format!("bad request body: {e}")));
                    }
                }
            };
            let service = admin.service().clone();
            let mut exporter =
                Exporter::new(service.store().clone(), service.now(), request.sessions);
            // The export runs in its own task, a chunk ahead of the client; a client that
            // goes away closes the channel and ends the task.
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
            tokio::spawn(async move {
                loop {
                    let chunk = match exporter.next_chunk().await {
                        Ok(Some(chunk)) => Ok(chunk),
                        Ok(None) => break,
                        Err(e) => {
                            tracing::error!(error = %e, "export failed");
                            Err(std::io::Error::other("export failed"))
                        }
                    };
                    let failed = chunk.is_err();
                    if tx.send(chunk).await.is_err() || failed {
                        break;
                    }
                }
            });
            let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|item| (item, rx))
            });
            let mut response = warp::reply::Reply::into_response(warp::reply::stream(stream));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-ndjson"),
            );
            response
        })
}

fn import<S: Store>(
    admin: Arc<Admin<S>>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    path("import")
        .and(warp::query::<ImportQuery>())
        // No size limit: the caller holds the admin token, and a file is sent chunked.
        .and(warp::body::bytes())
        .then(move |query: ImportQuery, body: Bytes| {
            let admin = admin.clone();
            async move {
                let service = admin.service();
                let result = backup::import(
                    service.store().as_ref(),
                    || Ok(&body[..]),
                    query.merge,
                    &|_, _| {},
                )
                .await;
                if result.is_ok() {
                    service.metrics().census_stale();
                }
                answer::<Counts>(result)
            }
        })
}

fn answer<T: Serialize>(result: Result<T, AdminError>) -> Response {
    match result {
        Ok(value) => json(
            StatusCode::OK,
            serde_json::to_vec(&value).expect("admin answers serialize"),
        ),
        Err(e) => error(&e),
    }
}

fn error(e: &AdminError) -> Response {
    let status = StatusCode::from_u16(e.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = json(
        status,
        serde_json::to_vec(e).expect("admin errors serialize"),
    );
    response
        .extensions_mut()
        .insert(crate::http::error::ErrorCode(code_name(e.code)));
    response
}

fn code_name(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::InvalidArgument => "invalid_argument",
        ErrorKind::NotFound => "not_found",
        ErrorKind::FailedPrecondition => "failed_precondition",
        ErrorKind::Unauthenticated => "unauthenticated",
        ErrorKind::Unavailable => "unavailable",
        ErrorKind::Internal => "internal",
    }
}

fn json(status: StatusCode, body: Vec<u8>) -> Response {
    let mut response = Response::new(body.into());
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

async fn recover(rejection: Rejection) -> Result<Response, Infallible> {
    let e = if let Some(Refused(e)) = rejection.find::<Refused>() {
        e.clone()
    } else if rejection.is_not_found() {
        AdminError::not_found("no such admin operation")
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        AdminError::invalid("admin operations are POST requests")
    } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
        AdminError::invalid("the request body is too large")
    } else if let Some(e) = rejection.find::<warp::reject::InvalidQuery>() {
        AdminError::invalid(format!("bad query: {e}"))
    } else {
        tracing::error!(?rejection, "unhandled admin rejection");
        AdminError::internal("internal error")
    };
    Ok(error(&e))
}
