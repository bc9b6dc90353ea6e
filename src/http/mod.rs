//! HTTP: the Open Inference Protocol (KServe V2) REST API, health, metrics, and the tower stack.
//!
//! Invariant: the only module that sees hyper/axum/tower types and status codes.

mod admin;
pub mod admin_models;
pub mod codec;
mod error;
mod feedback;
mod front;
pub mod openapi;
mod v2;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{Method, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::{DefaultMakeSpan, TraceLayer};

use crate::Gateway;
use crate::error::{Error, ErrorKind};

pub use self::error::status;
pub use self::front::{Front, front, serve};

/// The whole HTTP API over one gateway.
pub fn router(gateway: Arc<Gateway>) -> Router {
    let config = gateway.config();
    // The handlers guard themselves (in-flight limit, timeout, body limit: `v2::serve_infer`), so
    // that `front` can also reach them without the router.
    let inference = Router::new()
        .route("/v2/models/{name}/infer", post(v2::infer))
        .route("/v2/models/{name}/versions/{version}/infer", post(v2::infer_version));

    // Health, metadata and metrics are outside the in-flight limit: probes must answer under load.
    let control = Router::new()
        .route("/v2", get(v2::server_metadata))
        .route("/v2/health/live", get(v2::live))
        .route("/v2/health/ready", get(v2::ready))
        .route("/v2/models/{name}", get(v2::model_metadata))
        .route("/v2/models/{name}/versions/{version}", get(v2::version_metadata))
        .route("/v2/models/{name}/ready", get(v2::model_ready))
        .route("/v2/models/{name}/versions/{version}/ready", get(v2::version_ready))
        .route("/metrics", get(prometheus))
        .route("/openapi.json", get(openapi::document));

    // Labels are small but come in batches: the same body limit as inference, no concurrency limit.
    let labels = Router::new()
        .route("/v2/models/{name}/feedback", post(feedback::feedback))
        .layer(DefaultBodyLimit::max(config.max_request_bytes));

    let admin = Router::new()
        .route("/admin/models", get(admin_models::list))
        .route("/admin/models/{name}", get(admin_models::show))
        .route("/admin/models/{name}/promote", post(admin_models::promote))
        .route("/admin/models/{name}/rollback", post(admin_models::rollback))
        .route("/admin/models/{name}/challengers", put(admin_models::challengers))
        .route("/admin/models/{name}/versions/{version}/load", post(admin_models::load))
        .route("/admin/models/{name}/versions/{version}", delete(admin_models::unload))
        .route("/admin/models/{name}/comparison", get(admin::comparison))
        .route("/admin/models/{name}/drift", get(admin::drift))
        .route_layer(axum::middleware::from_fn_with_state(Arc::clone(&gateway), admin::authorize));

    inference
        .merge(control)
        .merge(labels)
        .merge(admin)
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(
            ServiceBuilder::new()
                // Outermost: a panic anywhere below becomes a 500 in the error shape, not a dropped connection.
                .layer(CatchPanicLayer::custom(|_| panicked()))
                // One span per request at debug level: free unless enabled.
                .layer(TraceLayer::new_for_http().make_span_with(DefaultMakeSpan::new().level(tracing::Level::DEBUG))),
        )
        .with_state(gateway)
}

/// An inference request over the in-flight limit: 503 with Retry-After, counted.
fn overloaded() -> Error {
    crate::metrics::rejected(ErrorKind::Overloaded.label());
    Error::new(ErrorKind::Overloaded, "too many requests in flight; retry shortly")
}

/// An inference request past `request_timeout_ms`: 503 with Retry-After, counted.
fn timed_out() -> Error {
    crate::metrics::rejected(ErrorKind::Timeout.label());
    Error::new(ErrorKind::Timeout, "the request timed out")
}

/// A handler that panicked: a 500 in the error shape (the router's `CatchPanicLayer` and
/// `v2::serve_infer` both answer with it).
fn panicked() -> Response {
    tracing::error!("a request handler panicked");
    Error::new(ErrorKind::Internal, "handler panicked").into_response()
}

async fn no_route(method: Method, uri: Uri) -> Error {
    Error::not_found(format!("no route for {method} {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    let error = serde_json::json!({ "error": format!("{method} is not allowed on {}", uri.path()) });
    (axum::http::StatusCode::METHOD_NOT_ALLOWED, axum::Json(error)).into_response()
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(get, path = "/metrics", tag = "health", responses((status = 200, description = "Metrics", content_type = "text/plain", body = String)))]
async fn prometheus() -> Response {
    let body = crate::metrics::handle().render();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}

/// How often the Prometheus recorder drains its histograms' buffers when nobody scrapes.
pub const METRICS_UPKEEP: Duration = Duration::from_secs(5);
