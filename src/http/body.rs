//! Reading requests: the one capped body reader, a header's raw value, and the method
//! check, shared by the public routes and the admin API.

use std::convert::Infallible;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use warp::http::{HeaderValue, Method};
use warp::{Filter, Rejection};

use super::error::ApiError;

/// Why a body was not read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BodyError {
    /// `Content-Length` is not a number.
    BadLength,
    /// The body is (or says it is) larger than the limit.
    TooLarge,
    /// The connection failed or the body did not arrive in time.
    Unreadable(String),
}

/// A request body as chunks of at most `limit` bytes in all: a `Content-Length` over the
/// limit is refused before anything is read, a chunked body as soon as it passes it.
pub(crate) fn capped_stream<B: Buf>(
    length: Option<&HeaderValue>,
    stream: impl Stream<Item = Result<B, warp::Error>>,
    limit: u64,
) -> Result<impl Stream<Item = Result<Bytes, BodyError>>, BodyError> {
    let declared = match length {
        Some(l) => Some(
            l.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or(BodyError::BadLength)?,
        ),
        None => None,
    };
    if declared.is_some_and(|n| n > limit) {
        return Err(BodyError::TooLarge);
    }
    let mut seen = 0u64;
    Ok(stream.map(move |chunk| {
        let mut chunk = chunk.map_err(|e| BodyError::Unreadable(e.to_string()))?;
        seen += chunk.remaining() as u64;
        if seen > limit {
            return Err(BodyError::TooLarge);
        }
        Ok(chunk.copy_to_bytes(chunk.remaining()))
    }))
}

/// A whole body of at most `limit` bytes, in memory (see [`capped_stream`]).
pub(crate) async fn read_capped<B: Buf>(
    length: Option<&HeaderValue>,
    stream: impl Stream<Item = Result<B, warp::Error>>,
    limit: u64,
) -> Result<Bytes, BodyError> {
    let mut stream = std::pin::pin!(capped_stream(length, stream, limit)?);
    let mut buf = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        buf.extend_from_slice(&chunk?);
    }
    Ok(buf.freeze())
}

/// The body as [`read_capped`] reads it, for a route.
pub(crate) fn capped(
    limit: u64,
) -> impl Filter<Extract = (Result<Bytes, BodyError>,), Error = Rejection> + Clone {
    header_value("content-length")
        .and(warp::body::stream())
        .then(move |length: Option<HeaderValue>, stream| async move {
            read_capped(length.as_ref(), stream, limit).await
        })
}

/// A header's raw value, if present (a repeated header was folded into one line by the
/// server loop). Unlike `warp::header::optional`, a value that is not visible ASCII is
/// handed over as is (and judged by the caller) instead of becoming a rejection without
/// a JSON body.
pub(crate) fn header_value(
    name: &'static str,
) -> impl Filter<Extract = (Option<HeaderValue>,), Error = Infallible> + Clone {
    warp::header::value(name)
        .map(Some)
        .or(warp::any().map(|| None))
        .unify()
}

/// Only `expected`; any other method is 405 `bad_route` with an `Allow` header.
pub(crate) fn method(expected: Method) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::method()
        .and_then(move |m: Method| {
            let expected = expected.clone();
            async move {
                if m == expected {
                    Ok(())
                } else {
                    Err(warp::reject::custom(ApiError::method_not_allowed(
                        m.as_str(),
                        expected.as_str(),
                    )))
                }
            }
        })
        .untuple_one()
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

    #[tokio::test]
    async fn a_body_is_read_up_to_the_limit_and_refused_past_it() {
        let read = read_capped(None, chunks(&[400, 600]), 1000).await.unwrap();
        assert_eq!(read.len(), 1000);
        let err = read_capped(None, chunks(&[400, 600, 1]), 1000).await;
        assert_eq!(err.unwrap_err(), BodyError::TooLarge);
    }

    #[tokio::test]
    async fn a_declared_length_is_judged_before_reading() {
        let never = || futures_util::stream::pending::<Result<Bytes, warp::Error>>();
        let over = HeaderValue::from_static("1001");
        assert_eq!(
            read_capped(Some(&over), never(), 1000).await.unwrap_err(),
            BodyError::TooLarge
        );
        let junk = HeaderValue::from_static("12a");
        assert_eq!(
            read_capped(Some(&junk), never(), 1000).await.unwrap_err(),
            BodyError::BadLength
        );
    }
}
