//! The admin HTTP API, on its own listener (`server.admin_listen`, loopback by default)
//! and never on the public one.
//!
//! Every route is `POST /admin/v1/<operation>` with `Authorization: Bearer <admin
//! token>`; the body is the operation's request struct as JSON and the answer its
//! output struct, or `{"code", "msg"}` with the status of its [`ErrorCode`]. The token is
//! checked before routing, so without it every path answers the same 401, and that
//! answer closes the connection (`Connection: close`): any local user can connect to a
//! loopback port, and connections that fail to authenticate must not hold the places
//! that one address may have.
//!
//! The same routes are served on the admin socket beside the database (see
//! [`endpoint`](super::endpoint)), the CLI's way in.
//!
//! | path | request | answer |
//! |---|---|---|
//! | `user-get` | [`UserGet`] | `UserGetOutput` |
//! | `user-list` | [`UserList`] | `UserPage` |
//! | `user-put` | [`UserPut`] | [`UserView`](super::ops::UserView) |
//! | `session-list` | [`SessionList`] | `SessionPage` |
//! | `session-revoke` | [`SessionRevoke`] | [`RevokeOutput`](super::ops::RevokeOutput) |
//! | `token-mint` | [`TokenMint`] | [`Minted`](super::ops::Minted) |
//! | `token-rotate-key` | [`KeyRotate`] | [`KeyRotated`](super::ops::KeyRotated) |
//! | `token-rotate-refresh-key` | [`RefreshKeyRotate`] | [`RefreshKeyRotated`](super::ops::RefreshKeyRotated) |
//! | `export` | [`ExportRequest`] | the export, streamed as JSON lines |
//! | `import?merge=BOOL` | an export file | [`Counts`] |

use std::convert::Infallible;
use std::sync::Arc;

use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::{Buf, Bytes};
use futures_util::{Stream, StreamExt};
use serde::Serialize;
use warp::http::{HeaderValue, header};
use warp::reply::Response;
use warp::{Filter, Rejection};

use super::backup::Counts;
use super::endpoint::Endpoint;
use super::ops::{
    Admin, AdminError, ExportRequest, KeyRotate, Operation, RefreshKeyRotate, SessionList,
    SessionRevoke, TokenMint, UserGet, UserList, UserPut,
};
use crate::http::{BodyError, ErrorCode, capped, capped_stream, error_response, header_value};
use crate::primitives::{hex, random_bytes};
use crate::store::Store;
use crate::store::private::create_new;

/// Largest body of an operation request.
const OP_BODY_LIMIT: u64 = 1024 * 1024;

/// Largest export file the running server imports (1 GiB). The upload is spooled to
/// disk beside the database, so the bound keeps a mistaken or hostile upload from filling
/// that disk; a larger file is imported with the server stopped, where the CLI reads it
/// from where it lies.
pub(crate) const IMPORT_BODY_LIMIT: u64 = 1024 * 1024 * 1024;

/// `import`'s query, `merge=BOOL` (write into a database that already holds users;
/// false when absent). Read from its pairs rather than by `warp::query` into a struct,
/// whose rejection says only "Invalid query string": a value that is not a bool, or
/// `merge` given twice (refused like every repeated field), is named in the answer.
fn import_merge(pairs: &[(String, String)]) -> Result<bool, AdminError> {
    let mut merge = None;
    for (key, value) in pairs {
        if key != "merge" {
            continue;
        }
        if merge.is_some() {
            return Err(AdminError::invalid(
                "bad query: merge must appear only once",
            ));
        }
        merge = Some(match value.as_str() {
            "true" => true,
            "false" => false,
            _ => {
                return Err(AdminError::invalid(
                    "bad query: merge must be true or false",
                ));
            }
        });
    }
    Ok(merge.unwrap_or(false))
}

#[derive(Debug)]
struct Refused(AdminError);

impl warp::reject::Reject for Refused {}

/// Every admin route behind the token check, errors rendered as JSON.
///
/// An import is spooled to a temporary file named after `spool_prefix` (the database
/// path) while it uploads.
pub(crate) fn routes<S: Store>(
    admin: Arc<Admin<S>>,
    endpoint: Arc<Endpoint>,
    spool_prefix: PathBuf,
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
        .or(op::<RefreshKeyRotate, S>(admin.clone()))
        .unify()
        .or(export(admin.clone()))
        .unify()
        .or(import(admin, Arc::new(spool_prefix)))
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
                        ErrorCode::Unauthenticated,
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

/// An operation's request body, at most [`OP_BODY_LIMIT`] bytes.
fn request_body() -> impl Filter<Extract = (Result<Bytes, AdminError>,), Error = Rejection> + Clone
{
    capped(OP_BODY_LIMIT).map(|body: Result<Bytes, BodyError>| {
        body.map_err(|e| match e {
            BodyError::TooLarge => AdminError::invalid("the request body is too large"),
            BodyError::BadLength => {
                AdminError::invalid("the Content-Length header is not a number")
            }
            BodyError::Unreadable(e) => {
                AdminError::invalid(format!("the request body could not be read: {e}"))
            }
        })
    })
}

fn op<O: Operation, S: Store>(
    admin: Arc<Admin<S>>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    path(O::PATH)
        .and(request_body())
        .then(move |body: Result<Bytes, AdminError>| {
            let admin = admin.clone();
            async move {
                let result = match body.and_then(|body| {
                    serde_json::from_slice::<O>(&body)
                        .map_err(|e| AdminError::invalid(format!("bad request body: {e}")))
                }) {
                    Ok(op) => op.run(&admin).await,
                    Err(e) => Err(e),
                };
                answer(result)
            }
        })
}

fn export<S: Store>(
    admin: Arc<Admin<S>>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    path("export")
        .and(request_body())
        .map(move |body: Result<Bytes, AdminError>| {
            let request = match body.and_then(|body| {
                if body.is_empty() {
                    return Ok(ExportRequest::default());
                }
                serde_json::from_slice::<ExportRequest>(&body)
                    .map_err(|e| AdminError::invalid(format!("bad request body: {e}")))
            }) {
                Ok(r) => r,
                Err(e) => return error(&e),
            };
            let mut exporter = admin.exporter(request);
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

/// `import`: the upload is written to a temporary file beside the database as it
/// arrives (mode 0600: it may hold refresh-token hashes), so memory stays bounded
/// whatever the file's size; the import then checks and writes it from there, on a
/// blocking thread, and the file is removed.
fn import<S: Store>(
    admin: Arc<Admin<S>>,
    spool_prefix: Arc<PathBuf>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    path("import")
        .and(warp::query::<Vec<(String, String)>>())
        .and(header_value("content-length"))
        .and(warp::body::stream())
        .then(
            move |query: Vec<(String, String)>, length: Option<HeaderValue>, stream| {
                let admin = admin.clone();
                let spool = spool_path(&spool_prefix);
                async move {
                    let merge = match import_merge(&query) {
                        Ok(merge) => merge,
                        Err(e) => return error(&e),
                    };
                    let result =
                        spool_and_import(&admin, &spool, length.as_ref(), stream, merge).await;
                    let _ = std::fs::remove_file(&spool);
                    answer::<Counts>(result)
                }
            },
        )
}

/// A fresh temporary file name for one upload: `<storage.path>.import-<random>`.
fn spool_path(prefix: &Path) -> PathBuf {
    let mut name = prefix.as_os_str().to_owned();
    name.push(format!(".import-{}", hex(&random_bytes::<8>())));
    PathBuf::from(name)
}

async fn spool_and_import<S: Store, B: Buf>(
    admin: &Arc<Admin<S>>,
    spool: &Path,
    length: Option<&HeaderValue>,
    stream: impl Stream<Item = Result<B, warp::Error>>,
    merge: bool,
) -> Result<Counts, AdminError> {
    let too_large = || {
        AdminError::invalid(format!(
            "the file is larger than {IMPORT_BODY_LIMIT} bytes, the most the running server \
             imports; stop the server and import it directly"
        ))
    };
    let body_error = |e: BodyError| match e {
        BodyError::TooLarge => too_large(),
        BodyError::BadLength => AdminError::invalid("the Content-Length header is not a number"),
        BodyError::Unreadable(e) => AdminError::invalid(format!("the file could not be read: {e}")),
    };
    let chunks = capped_stream(length, stream, IMPORT_BODY_LIMIT).map_err(body_error)?;
    let mut chunks = std::pin::pin!(chunks);
    let cannot_spool =
        |e: std::io::Error| AdminError::unavailable(format!("cannot store the upload: {e}"));
    let mut file = std::io::BufWriter::new(create_new(spool).map_err(cannot_spool)?);
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(body_error)?;
        // A write of one chunk to the page cache: short enough for an async worker.
        file.write_all(&chunk).map_err(cannot_spool)?;
    }
    file.flush().map_err(cannot_spool)?;
    drop(file);
    // Checking every line and writing in batches is long CPU and disk work: it runs on a
    // blocking thread, not on the async workers that also serve the public API.
    let runtime = tokio::runtime::Handle::current();
    let worker = admin.clone();
    let spool = spool.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let open = || std::fs::File::open(&spool).map(std::io::BufReader::new);
        runtime.block_on(worker.import(open, merge, &|_, _| {}))
    })
    .await
    .unwrap_or_else(|e| {
        tracing::error!(error = %e, "the import task failed");
        Err(AdminError::internal("the import failed"))
    })
}

fn answer<T: Serialize>(result: Result<T, AdminError>) -> Response {
    match result {
        Ok(value) => {
            let mut response = Response::new(
                serde_json::to_vec(&value)
                    .expect("admin answers serialize")
                    .into(),
            );
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
        }
        Err(e) => error(&e),
    }
}

fn error(e: &AdminError) -> Response {
    error_response(
        e.code,
        serde_json::to_vec(e).expect("admin errors serialize"),
    )
}

async fn recover(rejection: Rejection) -> Result<Response, Infallible> {
    let e = if let Some(Refused(e)) = rejection.find::<Refused>() {
        let mut response = error(e);
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return Ok(response);
    } else if rejection.is_not_found() {
        AdminError::not_found("no such admin operation")
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        AdminError::invalid("admin operations are POST requests")
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

    #[test]
    fn the_import_query_reads_merge_once_as_a_bool() {
        let pairs = |q: &[(&str, &str)]| -> Vec<(String, String)> {
            q.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(import_merge(&pairs(&[])), Ok(false));
        assert_eq!(import_merge(&pairs(&[("merge", "true")])), Ok(true));
        assert_eq!(import_merge(&pairs(&[("merge", "false")])), Ok(false));
        assert_eq!(import_merge(&pairs(&[("other", "1")])), Ok(false));
        let refused = |q: &[(&str, &str)]| import_merge(&pairs(q)).unwrap_err().msg;
        assert_eq!(
            refused(&[("merge", "true"), ("merge", "false")]),
            "bad query: merge must appear only once"
        );
        assert_eq!(
            refused(&[("merge", "true"), ("merge", "true")]),
            "bad query: merge must appear only once"
        );
        assert_eq!(
            refused(&[("merge", "yes")]),
            "bad query: merge must be true or false"
        );
    }
}
