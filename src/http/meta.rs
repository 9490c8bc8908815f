//! Routes about the service itself: `GET /metrics` and `GET /liveuser/openapi.json`.

use std::sync::Arc;
use std::time::Instant;

use warp::http::{HeaderValue, Method, header};
use warp::reply::Response;
use warp::{Filter, Rejection};

use super::body::method;
use super::error::ApiError;
use crate::service::Service;
use crate::store::Store;

/// `GET /metrics`: Prometheus text format (404 with `server.metrics = false`).
pub(crate) fn metrics<S: Store>(
    service: Arc<Service<S>>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("metrics")
        .and(method(Method::GET))
        .map(move || {
            let metrics = service.metrics();
            if !metrics.enabled() {
                return ApiError::not_found().to_response();
            }
            census_if_due(&service);
            let mut response = Response::new(metrics.render().into());
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
            );
            response
        })
}

/// `GET /liveuser/openapi.json`: the OpenAPI 3.1 document of the public API.
pub(crate) fn openapi(
    max_query_uids: usize,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let document = super::openapi::document(max_query_uids).to_string();
    warp::path!("liveuser" / "openapi.json")
        .and(method(Method::GET))
        .map(move || {
            let mut response = Response::new(document.clone().into());
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
        })
}

/// Recounts users and live sessions in the background when a count is due; the
/// scrape that triggers it answers with the previous figures.
pub(crate) fn census_if_due<S: Store>(service: &Arc<Service<S>>) {
    if !service.metrics().claim_census(Instant::now()) {
        return;
    }
    let service = service.clone();
    let runtime = tokio::runtime::Handle::current();
    // A census scans two trees: keep it off the async workers.
    tokio::task::spawn_blocking(move || {
        let counted = runtime.block_on(service.store().census(service.now()));
        match counted {
            Ok(c) => service.metrics().set_census(c.users, c.sessions_live),
            Err(e) => tracing::warn!(error = %e, "counting users and sessions failed"),
        }
        service.metrics().census_done(Instant::now());
    });
}
