//! HTTP: the Open Inference Protocol (KServe V2) REST API, health, metrics, and the tower stack.
//!
//! Invariant: the only module that sees hyper/axum/tower types and status codes.

pub mod admin;
mod auth;
pub mod codec;
mod console;
mod error;
mod feedback;
mod front;
pub mod openapi;
mod v2;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::{Method, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Router};
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::{DefaultMakeSpan, TraceLayer};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Scope;
use crate::error::{Error, ErrorKind};
use crate::inference::Gateway;

pub use self::error::status;
pub use self::front::{Front, front, serve};

/// The whole HTTP API over one gateway. The routes are also the OpenAPI document: each one registers
/// its handler's `#[utoipa::path]` as it is routed.
pub fn router(gateway: Arc<Gateway>) -> Router {
    let config = gateway.config();
    // The handlers guard themselves (in-flight limit, timeout, body limit: `v2::serve_infer`), so
    // that `front` can also reach them without the router.
    // Each group's scope (`crate::auth`) is checked before its handlers run; inference checks its
    // own in `v2::serve_infer`, which `front` reaches without the router.
    let scope = |scope: Scope| axum::middleware::from_fn_with_state((Arc::clone(&gateway), scope), auth::require);
    let inference = OpenApiRouter::new().routes(routes!(v2::infer)).routes(routes!(v2::infer_version));

    // Health, metadata and metrics are outside the in-flight limit: probes must answer under load.
    // The server's probes, metadata and metrics answer everyone (Kubernetes, Prometheus); a model's
    // metadata and readiness need what inference needs.
    let control = OpenApiRouter::new()
        .routes(routes!(v2::server_metadata))
        .routes(routes!(v2::live))
        .routes(routes!(v2::ready))
        .routes(routes!(prometheus));
    let model_control = OpenApiRouter::new()
        .routes(routes!(v2::model_metadata))
        .routes(routes!(v2::version_metadata))
        .routes(routes!(v2::model_ready))
        .routes(routes!(v2::version_ready))
        .route_layer(scope(Scope::Infer));

    // The document, filled in below once every route has added itself.
    let document = Arc::new(OnceLock::new());
    let own = OpenApiRouter::new().routes(routes!(openapi::document)).layer(Extension(Arc::clone(&document)));

    // Labels are small but come in batches: the same body limit as inference, no concurrency limit.
    let labels = OpenApiRouter::new()
        .routes(routes!(feedback::feedback))
        .route_layer(scope(Scope::Labels))
        .layer(DefaultBodyLimit::max(config.max_request_bytes));

    let admin_read = OpenApiRouter::new()
        .routes(routes!(admin::models::list))
        .routes(routes!(admin::models::show))
        .routes(routes!(admin::repository::search))
        .routes(routes!(admin::reports::comparison))
        .routes(routes!(admin::reports::drift))
        .routes(routes!(admin::reports::audit))
        .routes(routes!(admin::reports::history))
        .routes(routes!(admin::cluster::show))
        .route_layer(scope(Scope::Read));
    let admin_change = OpenApiRouter::new()
        .routes(routes!(admin::changes::promote))
        .routes(routes!(admin::changes::rollback))
        .routes(routes!(admin::changes::challengers))
        .routes(routes!(admin::changes::load))
        .routes(routes!(admin::changes::unload))
        .route_layer(scope(Scope::Change));

    let (routes, api) = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .merge(inference)
        .merge(control)
        .merge(model_control)
        .merge(own)
        .merge(labels)
        .merge(admin_read)
        .merge(admin_change)
        .split_for_parts();
    let _ = document.set(api);
    // The console's static files: not part of the API document.
    let console = Router::new()
        .route("/ui", axum::routing::get(console::root))
        .route("/ui/", axum::routing::get(console::index))
        .route("/ui/console.js", axum::routing::get(console::script))
        .route("/ui/console.css", axum::routing::get(console::style));
    routes
        .merge(console)
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

/// A handler that panicked: a 500 in the error shape (the router's `CatchPanicLayer` and
/// `v2::serve_infer` both answer with it).
fn panicked() -> Response {
    tracing::error!("a request handler panicked");
    Error::new(ErrorKind::Internal, "handler panicked").into_response()
}

async fn no_route(method: Method, uri: Uri) -> Error {
    Error::not_found(format!("no route for {method} {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: Uri) -> Error {
    Error::new(ErrorKind::MethodNotAllowed, format!("{method} is not allowed on {}", uri.path()))
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Metrics", content_type = "text/plain", body = String)))]
async fn prometheus() -> Response {
    let body = crate::metrics::handle().render();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}

/// How often the Prometheus recorder drains its histograms' buffers when nobody scrapes.
pub const METRICS_UPKEEP: Duration = Duration::from_secs(5);
