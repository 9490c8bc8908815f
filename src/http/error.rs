//! The error vocabulary of both APIs, and the one mapping from every failure to
//! `{code, msg}` + status.
//!
//! [`ErrorCode`] is the single list of codes: its status, its wire name, the OpenAPI
//! document's enum of codes ([`super::openapi`]), the metrics label and the admin API's
//! codes all come from it.

use std::convert::Infallible;

use serde::{Deserialize, Serialize};
use warp::http::{HeaderValue, StatusCode, header};
use warp::reply::Response;

use crate::service::ServiceError;
use crate::store::StoreError;

/// Every error liveuser answers with (the Twirp vocabulary). `bad_route` comes in three
/// statuses, so it is three variants with one wire name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// 400: a field is missing, of the wrong type, or over a limit.
    InvalidArgument,
    /// 400: the body is not JSON.
    Malformed,
    /// 401: a token or code was refused.
    Unauthenticated,
    /// 403: the caller may not do this.
    PermissionDenied,
    /// 404 `bad_route`: no such path.
    NoSuchRoute,
    /// 405 `bad_route`: the path takes another method.
    MethodNotAllowed,
    /// 415 `bad_route`: the body is not `application/json`.
    UnsupportedMediaType,
    /// 413: the body is over the limit.
    TooLarge,
    /// 429: a rate limit.
    ResourceExhausted,
    /// 503: WeChat or storage is unavailable.
    Unavailable,
    /// 500: a bug; the message is fixed.
    Internal,
    /// 404, admin API only: what the request names does not exist.
    NotFound,
    /// 412, admin API only: the state does not allow it.
    FailedPrecondition,
}

impl ErrorCode {
    /// Every code, the public API's first, in the order of the README's error table.
    pub(crate) const ALL: [ErrorCode; 13] = [
        ErrorCode::InvalidArgument,
        ErrorCode::Malformed,
        ErrorCode::Unauthenticated,
        ErrorCode::PermissionDenied,
        ErrorCode::NoSuchRoute,
        ErrorCode::MethodNotAllowed,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::TooLarge,
        ErrorCode::ResourceExhausted,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
        ErrorCode::NotFound,
        ErrorCode::FailedPrecondition,
    ];

    /// The `code` of the error body, and the metrics label.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::Malformed => "malformed",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::NoSuchRoute
            | ErrorCode::MethodNotAllowed
            | ErrorCode::UnsupportedMediaType => "bad_route",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::ResourceExhausted => "resource_exhausted",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::NotFound => "not_found",
            ErrorCode::FailedPrecondition => "failed_precondition",
        }
    }

    /// The HTTP status of an answer with this code.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::InvalidArgument | ErrorCode::Malformed => StatusCode::BAD_REQUEST,
            ErrorCode::Unauthenticated => StatusCode::UNAUTHORIZED,
            ErrorCode::PermissionDenied => StatusCode::FORBIDDEN,
            ErrorCode::NoSuchRoute | ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::FailedPrecondition => StatusCode::PRECONDITION_FAILED,
        }
    }

    /// Whether the public API answers with it (the admin-only codes are not).
    pub(crate) fn is_public(self) -> bool {
        !matches!(self, ErrorCode::NotFound | ErrorCode::FailedPrecondition)
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        ErrorCode::ALL
            .into_iter()
            .find(|c| c.name() == name)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown error code {name:?}")))
    }
}

/// An error answer: a fixed code, and a human sentence.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The code, which also gives the status.
    pub code: ErrorCode,
    /// What went wrong, for a human; never internals, tokens or secrets.
    pub msg: String,
    /// Seconds to wait, for `resource_exhausted`.
    retry_after: Option<u64>,
    /// The method the route takes, for the `Allow` header of a 405.
    allow: Option<HeaderValue>,
}

impl warp::reject::Reject for ApiError {}

#[derive(Serialize)]
struct Body<'a> {
    code: &'a str,
    msg: &'a str,
}

/// An error answer with `code` and `body` (the JSON error body), marked with its code for
/// the access log and the metrics.
pub(crate) fn error_response(code: ErrorCode, body: Vec<u8>) -> Response {
    let mut response = Response::new(body.into());
    *response.status_mut() = code.status();
    response.extensions_mut().insert(code);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

impl ApiError {
    pub(crate) fn new(code: ErrorCode, msg: impl Into<String>) -> Self {
        ApiError {
            code,
            msg: msg.into(),
            retry_after: None,
            allow: None,
        }
    }

    /// `invalid_argument`.
    pub(crate) fn invalid_argument(msg: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, msg)
    }

    pub(crate) fn malformed(msg: impl Into<String>) -> Self {
        Self::new(ErrorCode::Malformed, msg)
    }

    pub(crate) fn unauthenticated(msg: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthenticated, msg)
    }

    /// 404 `bad_route`.
    pub(crate) fn not_found() -> Self {
        Self::new(ErrorCode::NoSuchRoute, "no such method")
    }

    /// 405 `bad_route`; the answer's `Allow` header names `allowed`.
    pub(crate) fn method_not_allowed(method: &str, allowed: &str) -> Self {
        ApiError {
            allow: HeaderValue::from_str(allowed).ok(),
            ..Self::new(
                ErrorCode::MethodNotAllowed,
                format!("method {method} is not allowed here; use {allowed}"),
            )
        }
    }

    /// 415 `bad_route`.
    pub(crate) fn unsupported_media_type() -> Self {
        Self::new(
            ErrorCode::UnsupportedMediaType,
            "the request must have Content-Type: application/json",
        )
    }

    /// `too_large`.
    pub(crate) fn too_large(limit: u64) -> Self {
        Self::new(
            ErrorCode::TooLarge,
            format!("the request body is larger than {limit} bytes"),
        )
    }

    /// `resource_exhausted`, with a `Retry-After`.
    pub(crate) fn resource_exhausted(msg: impl Into<String>, retry_after: Option<u64>) -> Self {
        ApiError {
            retry_after,
            ..Self::new(ErrorCode::ResourceExhausted, msg)
        }
    }

    /// `internal`: the message is fixed; the cause goes to the log only.
    pub(crate) fn internal() -> Self {
        Self::new(ErrorCode::Internal, "internal error")
    }

    pub(crate) fn to_response(&self) -> Response {
        let body = serde_json::to_vec(&Body {
            code: self.code.name(),
            msg: &self.msg,
        })
        .unwrap_or_else(|_| br#"{"code":"internal","msg":"internal error"}"#.to_vec());
        let mut response = error_response(self.code, body);
        let headers = response.headers_mut();
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
            ServiceError::PermissionDenied(m) => ApiError::new(ErrorCode::PermissionDenied, m),
            ServiceError::ResourceExhausted(m) => ApiError::resource_exhausted(m, None),
            ServiceError::Unavailable(m) => ApiError::new(ErrorCode::Unavailable, m),
            ServiceError::Storage(StoreError::Corrupt(cause)) => {
                tracing::error!(%cause, "storage holds a corrupt record");
                ApiError::internal()
            }
            ServiceError::Storage(cause) => {
                tracing::error!(%cause, "storage failed");
                ApiError::new(
                    ErrorCode::Unavailable,
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
pub(crate) async fn recover(rejection: warp::Rejection) -> Result<Response, Infallible> {
    let error = if let Some(e) = rejection.find::<ApiError>() {
        e.clone()
    } else if rejection.is_not_found() {
        ApiError::not_found()
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        ApiError::new(
            ErrorCode::MethodNotAllowed,
            "this method is not allowed here",
        )
    } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
        ApiError::new(ErrorCode::TooLarge, "the request body is too large")
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
