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

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
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

/// Largest export file the running server imports (1 GiB). The file is held in memory
/// while it is checked and written, so the bound keeps a mistaken or hostile upload from
/// exhausting the server's memory; a larger file is imported with the server stopped,
/// where the CLI reads it from disk.
pub const IMPORT_BODY_LIMIT: u64 = 1024 * 1024 * 1024;

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

/// An operation's request body, at most [`OP_BODY_LIMIT`] bytes, with a
/// `Content-Length` or chunked (warp's `content_length_limit` refuses a body without a
/// length with a rejection that ended as a 500).
fn op_body() -> impl Filter<Extract = (Bytes,), Error = Rejection> + Clone {
    header_value("content-length")
        .and(warp::body::stream())
        .and_then(|length: Option<HeaderValue>, stream| async move {
            let too_large = |limit| {
                AdminError::invalid(format!(
                    "the request body is too large (at most {limit} bytes)"
                ))
            };
            read_body(length.as_ref(), stream, OP_BODY_LIMIT, too_large)
                .await
                .map_err(|e| warp::reject::custom(Refused(e)))
        })
}

fn op<O: Operation, S: Store>(
    admin: Arc<Admin<S>>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    path(O::PATH).and(op_body()).then(move |body: Bytes| {
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
    path("export").and(op_body()).map(move |body: Bytes| {
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
        let mut exporter = Exporter::new(service.store().clone(), service.now(), request.sessions);
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
        .and(header_value("content-length"))
        .and(warp::body::stream())
        .then(
            move |query: ImportQuery, length: Option<HeaderValue>, stream| {
                let admin = admin.clone();
                async move {
                    let too_large = |limit| {
                        AdminError::invalid(format!(
                            "the file is larger than {limit} bytes, the most the running \
                             server imports; stop the server and import it directly"
                        ))
                    };
                    let body = match read_body(
                        length.as_ref(),
                        stream,
                        IMPORT_BODY_LIMIT,
                        too_large,
                    )
                    .await
                    {
                        Ok(body) => body,
                        Err(e) => return error(&e),
                    };
                    // Checking every line and writing in batches is long CPU and disk
                    // work: it runs on a blocking thread, not on the async workers that
                    // also serve the public API.
                    let runtime = tokio::runtime::Handle::current();
                    let worker = admin.clone();
                    let result = tokio::task::spawn_blocking(move || {
                        let store = worker.service().store();
                        runtime.block_on(backup::import(
                            store.as_ref(),
                            || Ok(&body[..]),
                            query.merge,
                            &|_, _| {},
                        ))
                    })
                    .await
                    .unwrap_or_else(|e| {
                        tracing::error!(error = %e, "the import task failed");
                        Err(AdminError::internal("the import failed"))
                    });
                    if result.is_ok() {
                        admin.service().metrics().census_stale();
                    }
                    answer::<Counts>(result)
                }
            },
        )
}

/// A request body, at most `limit` bytes: refused at once by its `Content-Length`, or
/// as soon as a chunked body passes the limit, with `too_large(limit)`.
async fn read_body<B: Buf>(
    length: Option<&HeaderValue>,
    stream: impl Stream<Item = Result<B, warp::Error>>,
    limit: u64,
    too_large: impl Fn(u64) -> AdminError,
) -> Result<Bytes, AdminError> {
    let too_large = || too_large(limit);
    let declared = length
        .and_then(|l| l.to_str().ok())
        .and_then(|l| l.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let mut stream = std::pin::pin!(stream);
    // The declared length is a hint, not a promise: reserve at most 64 MiB up front.
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(0).min(64 << 20) as usize);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk
            .map_err(|e| AdminError::invalid(format!("the request body could not be read: {e}")))?;
        if (buf.len() + chunk.remaining()) as u64 > limit {
            return Err(too_large());
        }
        buf.put(chunk);
    }
    Ok(buf.freeze())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(sizes: &[usize]) -> impl Stream<Item = Result<Bytes, warp::Error>> {
        let chunks: Vec<Result<Bytes, warp::Error>> = sizes
            .iter()
            .map(|&n| Ok(Bytes::from(vec![b'x'; n])))
            .collect();
        futures_util::stream::iter(chunks)
    }

    fn block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    fn too_large(limit: u64) -> AdminError {
        AdminError::invalid(format!("larger than {limit} bytes"))
    }

    #[test]
    fn a_body_is_read_up_to_the_limit_and_refused_past_it() {
        let read = block_on(read_body(None, chunks(&[400, 600]), 1000, too_large)).unwrap();
        assert_eq!(read.len(), 1000);
        let err = block_on(read_body(None, chunks(&[400, 600, 1]), 1000, too_large)).unwrap_err();
        assert_eq!(err.code, ErrorKind::InvalidArgument);
        assert!(err.msg.contains("larger than 1000 bytes"), "{err}");
    }

    #[test]
    fn a_declared_length_over_the_limit_is_refused_before_reading() {
        let declared = HeaderValue::from_static("1001");
        let never = futures_util::stream::pending::<Result<Bytes, warp::Error>>();
        let err = block_on(read_body(Some(&declared), never, 1000, too_large)).unwrap_err();
        assert!(err.msg.contains("larger than 1000 bytes"), "{err}");
    }
}
