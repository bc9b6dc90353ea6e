//! The OpenAPI 3.1 document of the whole HTTP API, served at `GET /openapi.json`. The router builds
//! it (utoipa-axum's `OpenApiRouter`): each handler's `#[utoipa::path]` adds its own path when it is
//! routed, so the document is the route table itself. This file holds what the handlers' attributes
//! share: the error responses (each declared once), the path parameters, and the types that describe
//! the Open Inference Protocol's JSON, which the handlers read and write by hand.

use std::sync::{Arc, OnceLock};

use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Serialize;
use utoipa::{IntoParams, IntoResponses, OpenApi, ToSchema};

use crate::error::{Error, ErrorKind};

/// What the routes do not say: the title, the tags, and the error body every error response shares.
#[derive(OpenApi)]
#[openapi(
    info(title = "gauntlet", description = "Champion-challenger model-serving gateway: the Open Inference Protocol (KServe V2) REST API with shadow scoring, feedback, comparison and promotion."),
    components(schemas(ErrorBody)),
    modifiers(&BearerScheme),
    tags(
        (name = "inference", description = "Open Inference Protocol"),
        (name = "feedback", description = "Ground-truth labels by request id"),
        (name = "admin", description = "Deployments, changes, the comparison and drift: the read or change scope"),
        (name = "health", description = "Probes, server metadata and metrics"),
    )
)]
pub struct ApiDoc;

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "health",
    responses((status = 200, description = "The OpenAPI document", body = Object)))]
pub async fn document(Extension(document): Extension<Arc<OnceLock<utoipa::openapi::OpenApi>>>) -> Response {
    match document.get() {
        Some(document) => Json(document).into_response(),
        None => Error::new(ErrorKind::Unavailable, "the OpenAPI document is not built yet").into_response(),
    }
}

/// Every error: 4xx for what the caller can fix, 5xx otherwise.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: String,
}

// === error responses, one type each, listed by the handlers that can give them ===

/// Malformed, or not fitting the model's signature
#[derive(IntoResponses)]
#[response(status = 400)]
pub struct BadRequest(pub ErrorBody);

/// No such model or version
#[derive(IntoResponses)]
#[response(status = 404)]
pub struct NotFound(pub ErrorBody);

/// Contradicts what is there: the deployment, or a label the request already has
#[derive(IntoResponses)]
#[response(status = 409)]
pub struct Conflict(pub ErrorBody);

/// The record is older than the join keeps
#[derive(IntoResponses)]
#[response(status = 410)]
pub struct Gone(pub ErrorBody);

/// Body over the limit
#[derive(IntoResponses)]
#[response(status = 413)]
pub struct PayloadTooLarge(pub ErrorBody);

/// Unsupported Content-Encoding
#[derive(IntoResponses)]
#[response(status = 415)]
pub struct UnsupportedMediaType(pub ErrorBody);

/// A load step refused the version
#[derive(IntoResponses)]
#[response(status = 422)]
pub struct Unprocessable(pub ErrorBody);

/// The model failed
#[derive(IntoResponses)]
#[response(status = 500)]
pub struct ModelFailed(pub ErrorBody);

/// Overloaded, timed out or shutting down (with Retry-After)
#[derive(IntoResponses)]
#[response(status = 503)]
pub struct Unavailable(pub ErrorBody);

/// Refusals by scope (`crate::auth`).
#[derive(IntoResponses)]
pub enum Denied {
    /// No bearer token where the scope needs one, or one that matches no configured token
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// A token without the scope, or a scope no token holds called from beyond loopback
    #[response(status = 403)]
    Forbidden(ErrorBody),
}

/// The bearer scheme every scoped route names with its scope (`security(("bearer" = [scope]))`).
struct BearerScheme;

impl utoipa::Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        let mut scheme = Http::new(HttpAuthScheme::Bearer);
        scheme.description = Some(
            "A token configured in [[auth.tokens]] with the route's scope (infer, labels, read, change)".to_owned(),
        );
        components.add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

// === path parameters ===

#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ModelPath {
    /// A served model
    #[param(example = "breast-cancer")]
    pub name: String,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct VersionPath {
    /// A served model
    #[param(example = "breast-cancer")]
    pub name: String,
    /// One of its versions
    #[param(example = "1")]
    pub version: String,
}

// === the Open Inference Protocol's JSON, for the document ===

#[derive(Serialize, ToSchema)]
#[schema(example = json!({
    "id": "req-1",
    "inputs": [{ "name": "input", "shape": [1, 30], "datatype": "FP32", "data": [
        17.99, 10.38, 122.8, 1001.0, 0.1184, 0.2776, 0.3001, 0.1471, 0.2419, 0.07871,
        1.095, 0.9053, 8.589, 153.4, 0.006399, 0.04904, 0.05373, 0.01587, 0.03003, 0.006193,
        25.38, 17.33, 184.6, 2019.0, 0.1622, 0.6656, 0.7119, 0.2654, 0.4601, 0.1189] }]
}))]
pub struct InferRequest {
    /// Echoed in the response; also the key of sampling, canary and feedback. Assigned if absent.
    pub id: Option<String>,
    /// e.g. `{"binary_data_output": true}`.
    pub parameters: Option<serde_json::Map<String, serde_json::Value>>,
    pub inputs: Vec<RequestInput>,
    pub outputs: Option<Vec<RequestOutput>>,
}

#[derive(Serialize, ToSchema)]
pub struct RequestInput {
    pub name: String,
    pub shape: Vec<i64>,
    /// FP32, FP64, INT64, INT32 or BOOL, as the model's metadata says.
    pub datatype: String,
    pub parameters: Option<serde_json::Map<String, serde_json::Value>>,
    /// Row-major values, flat or nested by shape (absent with the binary extension).
    pub data: Option<serde_json::Value>,
}

#[derive(Serialize, ToSchema)]
pub struct RequestOutput {
    pub name: String,
    pub parameters: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Serialize, ToSchema)]
pub struct InferResponse {
    pub model_name: String,
    /// The version that answered.
    pub model_version: String,
    pub id: String,
    pub outputs: Vec<ResponseOutput>,
}

#[derive(Serialize, ToSchema)]
pub struct ResponseOutput {
    pub name: String,
    pub shape: Vec<i64>,
    pub datatype: String,
    pub parameters: Option<serde_json::Map<String, serde_json::Value>>,
    pub data: Option<Vec<serde_json::Value>>,
}

#[derive(Serialize, ToSchema)]
pub struct TensorMetadata {
    pub name: String,
    pub datatype: String,
    /// -1 for a variable dimension.
    pub shape: Vec<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct ServerMetadata {
    pub name: String,
    pub version: String,
    pub extensions: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ModelMetadata {
    pub name: String,
    pub versions: Vec<String>,
    pub platform: String,
    pub inputs: Vec<TensorMetadata>,
    pub outputs: Vec<TensorMetadata>,
}

#[derive(Serialize, ToSchema)]
pub struct Live {
    pub live: bool,
}

#[derive(Serialize, ToSchema)]
pub struct Ready {
    pub ready: bool,
}

#[derive(Serialize, ToSchema)]
pub struct ModelReady {
    pub name: String,
    pub version: Option<String>,
    pub ready: bool,
}

/// One label, or `{"feedback": [...]}`.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum FeedbackRequest {
    One(FeedbackItem),
    Batch { feedback: Vec<FeedbackItem> },
}

#[derive(Serialize, ToSchema)]
pub struct FeedbackItem {
    pub id: String,
    /// A class label or a number, or an array with one per row of the request.
    pub truth: serde_json::Value,
}

/// One label's fate, or a batch's counts and results.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum FeedbackResponse {
    One(FeedbackResult),
    Batch { joined: u64, held: u64, duplicate: u64, expired: u64, results: Vec<FeedbackResult> },
}

#[derive(Serialize, ToSchema)]
pub struct FeedbackResult {
    pub id: String,
    /// joined, held, duplicate or expired.
    pub status: String,
}
