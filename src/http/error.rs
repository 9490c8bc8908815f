//! The API's error body and the one mapping from every failure to `{code, msg}` + status.

use std::convert::Infallible;

use serde::Serialize;
use warp::http::{HeaderValue, StatusCode, header};
use warp::reply::Response;

use crate::service::ServiceError;
use crate::store::StoreError;

/// An error answer: a fixed code, its status, and a human sentence.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// One of the fixed codes of the error table.
    pub code: &'static str,
    /// What went wrong, for a human; never internals, tokens or secrets.
    pub msg: String,
    /// Seconds to wait, for `resource_exhausted`.
    pub retry_after: Option<u64>,
    /// The method the route takes, for the `Allow` header of a 405.
    pub allow: Option<HeaderValue>,
}

impl warp::reject::Reject for ApiError {}

/// The error code of an error answer, on the response's extensions for the access log
/// and the metrics.
#[derive(Debug, Clone, Copy)]
pub struct ErrorCode(pub &'static str);

#[derive(Serialize)]
struct Body<'a> {
    code: &'a str,
    msg: &'a str,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, msg: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            msg: msg.into(),
            retry_after: None,
            allow: None,
        }
    }

    /// 400 `invalid_argument`.
    pub fn invalid_argument(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_argument", msg)
    }

    /// 400 `malformed`.
    pub fn malformed(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "malformed", msg)
    }

    /// 401 `unauthenticated`.
    pub fn unauthenticated(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthenticated", msg)
    }

    /// 404 `bad_route`.
    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "bad_route", "no such method")
    }

    /// 405 `bad_route`; the answer's `Allow` header names `allowed`.
    pub fn method_not_allowed(method: &str, allowed: &str) -> Self {
        ApiError {
            allow: HeaderValue::from_str(allowed).ok(),
            ..Self::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "bad_route",
                format!("method {method} is not allowed here; use {allowed}"),
            )
        }
    }

    /// 415 `bad_route`.
    pub fn unsupported_media_type() -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "bad_route",
            "the request must have Content-Type: application/json",
        )
    }

    /// 413 `too_large`.
    pub fn too_large(limit: u64) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the request body is larger than {limit} bytes"),
        )
    }

    /// 429 `resource_exhausted`, with a `Retry-After`.
    pub fn resource_exhausted(msg: impl Into<String>, retry_after: Option<u64>) -> Self {
        ApiError {
            retry_after,
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, "resource_exhausted", msg)
        }
    }

    /// 500 `internal`: the message is fixed; the cause goes to the log only.
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )
    }

    /// The HTTP response.
    pub fn to_response(&self) -> Response {
        let body = serde_json::to_vec(&Body {
            code: self.code,
            msg: &self.msg,
        })
        .unwrap_or_else(|_| br#"{"code":"internal","msg":"internal error"}"#.to_vec());
        let mut response = Response::new(body.into());
        *response.status_mut() = self.status;
        response.extensions_mut().insert(ErrorCode(self.code));
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(allow) = &self.allow {
            headers.insert(header::ALLOW, allow.clone());
        }
        response
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::InvalidArgument(m) => ApiError::invalid_argument(m),
            ServiceError::Unauthenticated(m) => ApiError::unauthenticated(m),
            ServiceError::PermissionDenied(m) => {
                ApiError::new(StatusCode::FORBIDDEN, "permission_denied", m)
            }
            ServiceError::ResourceExhausted(m) => ApiError::resource_exhausted(m, None),
            ServiceError::Unavailable(m) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", m)
            }
            ServiceError::Storage(StoreError::Corrupt(cause)) => {
                tracing::error!(%cause, "storage holds a corrupt record");
                ApiError::internal()
            }
            ServiceError::Storage(cause) => {
                tracing::error!(%cause, "storage failed");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "storage is unavailable; try again later",
                )
            }
        }
    }
}

/// Turns every rejection into the JSON error body; nothing reaches the client as warp's
/// own plain-text errors.
///
/// The routes check the method and the body size themselves and reject with an
/// [`ApiError`] that names the allowed method and the limit. warp's own
/// `MethodNotAllowed` and `PayloadTooLarge` (from its stock filters, which the routes do
/// not use) are still answered as 405 and 413 should one ever arise, but without an
/// `Allow` method or a limit that this function cannot know.
pub async fn recover(rejection: warp::Rejection) -> Result<Response, Infallible> {
    let error = if let Some(e) = rejection.find::<ApiError>() {
        e.clone()
    } else if rejection.is_not_found() {
        ApiError::not_found()
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "bad_route",
            "this method is not allowed here",
        )
    } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            "the request body is too large",
        )
    } else if rejection
        .find::<warp::reject::UnsupportedMediaType>()
        .is_some()
    {
        ApiError::unsupported_media_type()
    } else {
        tracing::error!(?rejection, "unhandled rejection");
        ApiError::internal()
    };
    Ok(error.to_response())
}
