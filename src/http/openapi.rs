//! The OpenAPI 3.1 document of the whole HTTP API, served at `GET /openapi.json`, generated from
//! the handlers' `#[utoipa::path]` attributes and the types they exchange, so it follows the code.
//!
//! The inference and metadata handlers read and write the Open Inference Protocol by hand (one
//! decode, binary extension); the types below describe that JSON for the document only.

use axum::Json;
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

use super::admin_models::{CanaryView, ChallengersRequest, ModelView, PromoteRequest, ReasonRequest, VersionView};
use crate::compare::{ModelReport, PairReport, Report, Verdict};
use crate::drift::Thresholds;
use crate::drift::profile::SeriesKind;
use crate::drift::report::{ConceptReport, DriftReport, Level, SeriesDrift, State, WindowReport};

#[derive(OpenApi)]
#[openapi(
    info(title = "gauntlet", description = "Champion-challenger model-serving gateway: the Open Inference Protocol (KServe V2) REST API with shadow scoring, feedback, comparison and promotion."),
    paths(
        super::v2::infer, super::v2::infer_version, super::v2::server_metadata, super::v2::live, super::v2::ready,
        super::v2::model_metadata, super::v2::version_metadata, super::v2::model_ready, super::v2::version_ready,
        super::prometheus, super::feedback::feedback, super::admin::comparison, super::admin::drift, super::admin_models::list,
        super::admin_models::show, super::admin_models::promote, super::admin_models::rollback,
        super::admin_models::challengers, super::admin_models::load, super::admin_models::unload, document,
    ),
    components(schemas(
        ErrorBody, InferRequest, RequestInput, RequestOutput, InferResponse, ResponseOutput, TensorMetadata,
        ServerMetadata, ModelMetadata, Live, Ready, ModelReady, FeedbackRequest, FeedbackItem, FeedbackResponse,
        FeedbackResult, ModelView, VersionView, CanaryView, PromoteRequest, ReasonRequest, ChallengersRequest,
        Report, ModelReport, PairReport, Verdict, DriftReport, State, Level, WindowReport, SeriesDrift,
        ConceptReport, SeriesKind, Thresholds,
    )),
    tags(
        (name = "inference", description = "Open Inference Protocol"),
        (name = "feedback", description = "Ground-truth labels by request id"),
        (name = "admin", description = "Deployments, changes, the comparison and drift: a bearer token, or loopback only"),
        (name = "health", description = "Probes, server metadata and metrics"),
    )
)]
pub struct ApiDoc;

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "health", responses((status = 200, description = "The OpenAPI document", body = Object)))]
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

/// Every error: 4xx for what the caller can fix, 5xx otherwise.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: String,
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_lists_every_route() {
        let document = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let paths: Vec<&str> = document["paths"].as_object().unwrap().keys().map(String::as_str).collect();
        for path in [
            "/v2/models/{name}/infer",
            "/v2/models/{name}/feedback",
            "/admin/models/{name}/promote",
            "/admin/models/{name}/drift",
            "/admin/models/{name}/versions/{version}",
            "/openapi.json",
            "/metrics",
        ] {
            assert!(paths.contains(&path), "{path} missing from {paths:?}");
        }
        assert_eq!(paths.len(), 21, "{paths:?}");
    }
}
