//! Handlers of the Open Inference Protocol's REST endpoints.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt;
use http_body_util::BodyExt;
use serde_json::json;

use super::codec::{self, ResponseHead};
use super::openapi::{
    BadRequest, InferRequest, InferResponse, Live, ModelFailed, ModelMetadata, ModelPath, ModelReady, NotFound,
    PayloadTooLarge, Ready, ServerMetadata, Unavailable, UnsupportedMediaType, VersionPath,
};
use crate::Gateway;
use crate::error::{Error, ErrorKind};
use crate::registry::{Deployment, ModelVersion, ServedModel};
use crate::shadow::ShadowRequest;

const INFERENCE_HEADER_CONTENT_LENGTH: HeaderName = HeaderName::from_static("inference-header-content-length");
const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Infer with the champion (or the canary share); challengers shadow it off the critical path.
#[utoipa::path(post, path = "/v2/models/{name}/infer", tag = "inference", params(ModelPath),
    request_body(content = InferRequest, description = "JSON, or the binary tensor extension (application/octet-stream with Inference-Header-Content-Length)"),
    responses(
        (status = 200, description = "The answer; X-Request-Id carries the request id",
            content((InferResponse = "application/json"), (Vec<u8> = "application/octet-stream"))),
        BadRequest, NotFound, PayloadTooLarge, UnsupportedMediaType, ModelFailed, Unavailable))]
pub async fn infer(State(gateway): State<Arc<Gateway>>, Path(name): Path<String>, request: Request) -> Response {
    serve_infer(&gateway, &name, None, request).await
}

/// Infer with one version directly (not shadowed, no canary).
#[utoipa::path(post, path = "/v2/models/{name}/versions/{version}/infer", tag = "inference", params(VersionPath),
    request_body(content = InferRequest, description = "JSON, or the binary tensor extension"),
    responses(
        (status = 200, description = "The answer",
            content((InferResponse = "application/json"), (Vec<u8> = "application/octet-stream"))),
        BadRequest, NotFound, PayloadTooLarge, UnsupportedMediaType, ModelFailed, Unavailable))]
pub async fn infer_version(
    State(gateway): State<Arc<Gateway>>,
    Path((name, version)): Path<(String, String)>,
    request: Request,
) -> Response {
    serve_infer(&gateway, &name, Some(&version), request).await
}

/// One inference request, guarded: over `max_concurrent_requests` in flight it is refused at once
/// (503, never queued); past `request_timeout_ms` it answers 503 and gives its slot back; a body over
/// `max_request_bytes` is a 413; a panic is a 500. Both the router and the front's direct path
/// (`super::front`) come here, so the guards and the limit are one for all inference.
pub(super) async fn serve_infer<B>(
    gateway: &Gateway,
    name: &str,
    version: Option<&str>,
    request: Request<B>,
) -> Response
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let Ok(_permit) = gateway.in_flight().try_acquire() else {
        return super::overloaded().into_response();
    };
    let (parts, body) = request.into_parts();
    let limit = gateway.config().max_request_bytes;
    let work = async {
        let body = read_body(body, limit).await;
        infer_on(gateway, name, version, &parts.headers, body).await
    };
    let guarded = AssertUnwindSafe(tokio::time::timeout(gateway.config().request_timeout(), work)).catch_unwind();
    match guarded.await {
        Ok(Ok(response)) => response,
        Ok(Err(_elapsed)) => super::timed_out().into_response(),
        Err(_panic) => super::panicked(),
    }
}

async fn infer_on(
    gateway: &Gateway,
    name: &str,
    version: Option<&str>,
    headers: &HeaderMap,
    body: Result<Bytes, Error>,
) -> Response {
    let start = Instant::now();
    let header_id =
        headers.get(REQUEST_ID).and_then(|v| v.to_str().ok()).filter(|id| !id.is_empty() && id.len() <= 256);
    // One snapshot for the whole request: the champion, challengers and plan it sees stay together.
    let target = served(gateway, name).and_then(|model| {
        let deployment = model.deployment();
        let direct = version.map(|v| version_of(&deployment, name, v).cloned()).transpose()?;
        Ok((deployment, direct))
    });
    let (deployment, direct) = match target {
        Ok(target) => target,
        Err(error) => {
            crate::metrics::rejected(error.kind().label());
            return with_request_id(error.into_response(), header_id.map(str::to_owned));
        }
    };
    let is_direct = direct.is_some();
    let mut answering = direct.unwrap_or_else(|| Arc::clone(deployment.champion()));
    let result = async {
        let body = body?;
        check_encoding(headers)?;
        // Challengers and a canary share the champion's signature (checked at load), so one decode serves all.
        let mut request = codec::decode_request(&body, header_length(headers)?, answering.manifest())?;
        drop(body);
        let id = request.id.take().or_else(|| header_id.map(str::to_owned)).unwrap_or_else(|| {
            uuid::Uuid::new_v4().hyphenated().encode_lower(&mut uuid::Uuid::encode_buffer()).to_owned()
        });
        // Direct calls to a version are neither shadowed nor redirected to a canary, and with neither
        // challengers nor a canary there is nothing to decide.
        let plays = !deployment.challengers().is_empty() || deployment.canary().is_some();
        let decision = (!is_direct && plays).then(|| {
            let key = deployment.canary_key_header().and_then(|h| headers.get(h)).and_then(|v| v.to_str().ok());
            deployment.plan().decide(&id, key)
        });
        if decision.is_some_and(|d| d.canary)
            && let Some(canary) = deployment.canary()
        {
            answering = Arc::clone(canary);
        }
        let inputs = Arc::new(request.inputs);
        let model_start = Instant::now();
        let outputs = gateway
            .executor()
            .infer(&answering, &inputs)
            .await
            .map_err(|error| Failure { error, id: Some(id.clone()) })?;
        let latency = model_start.elapsed();
        let response = respond(&answering, &id, &outputs, &request.outputs);
        // Shared, not copied, by the drift monitor and the shadow.
        let outputs = Arc::new(outputs);
        // Drift is measured against the champion's profile: what a canary or a direct call answered
        // is not the champion's traffic.
        if !is_direct && Arc::ptr_eq(&answering, deployment.champion()) {
            gateway.drift().observe(&id, &answering, &inputs, &outputs);
        }
        // Nothing to pair with when no challenger is deployed; nothing to assemble when the shadow
        // queue is full (then it is counted as shed).
        if decision.is_some_and(|d| d.shadow)
            && !deployment.challengers().is_empty()
            && !gateway.shadow().shed_if_full(&deployment, &answering)
        {
            gateway.shadow().submit(ShadowRequest {
                deployment: Arc::clone(&deployment),
                request_id: id.clone(),
                timestamp: SystemTime::now(),
                inputs,
                answered: Arc::clone(&answering),
                outputs,
                latency,
            });
        }
        Ok::<_, Failure>((response, id))
    }
    .await;
    let elapsed = start.elapsed();
    match result {
        Ok((response, id)) => {
            answering.metrics().request_ok(elapsed);
            with_request_id(response, Some(id))
        }
        Err(Failure { error, id }) => {
            answering.metrics().request_failed(error.kind().label(), elapsed);
            with_request_id(error.into_response(), id.or_else(|| header_id.map(str::to_owned)))
        }
    }
}

/// A failed request, with its id once the body has given one.
struct Failure {
    error: Error,
    id: Option<String>,
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        Self { error, id: None }
    }
}

fn respond(
    version: &ModelVersion,
    id: &str,
    outputs: &[crate::model::Tensor],
    selection: &codec::OutputSelection,
) -> Response {
    let head = ResponseHead { model_name: version.name(), model_version: version.version().as_str(), id: Some(id) };
    let encoded = codec::encode_response(head, &version.manifest().outputs, outputs, selection);
    let mut response = Response::new(Body::from(encoded.body));
    let headers = response.headers_mut();
    match encoded.header_length {
        Some(length) => {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
            headers.insert(INFERENCE_HEADER_CONTENT_LENGTH, HeaderValue::from(length));
        }
        None => {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
    }
    response
}

fn with_request_id(mut response: Response, id: Option<String>) -> Response {
    if let Some(value) = id.and_then(|id| HeaderValue::try_from(id).ok()) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}

/// The whole body, at most `limit` bytes (a declared length over it is refused before reading).
/// One frame, the usual case, is kept as it came, without a copy.
async fn read_body<B>(body: B, limit: usize) -> Result<Bytes, Error>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if body.size_hint().lower() > limit as u64 {
        return Err(body_too_large(limit));
    }
    let mut body = std::pin::pin!(body);
    let mut first = Bytes::new();
    let mut joined: Option<Vec<u8>> = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Error::invalid_input(format!("cannot read the request body: {}", e.into())))?;
        let Ok(data) = frame.into_data() else { continue }; // trailers: not part of the body
        if first.len() + joined.as_ref().map_or(0, Vec::len) + data.len() > limit {
            return Err(body_too_large(limit));
        }
        match &mut joined {
            Some(joined) => joined.extend_from_slice(&data),
            None if first.is_empty() => first = data,
            None => joined = Some([std::mem::take(&mut first), data].concat()),
        }
    }
    Ok(joined.map_or(first, Bytes::from))
}

fn body_too_large(limit: usize) -> Error {
    Error::new(ErrorKind::PayloadTooLarge, format!("the request body is larger than the limit of {limit} bytes"))
}

pub(super) fn body_error(rejection: &BytesRejection, limit: usize) -> Error {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        body_too_large(limit)
    } else {
        Error::invalid_input(format!("cannot read the request body: {}", rejection.body_text()))
    }
}

fn check_encoding(headers: &HeaderMap) -> Result<(), Error> {
    match headers.get(header::CONTENT_ENCODING).map(|v| v.to_str().unwrap_or("?")) {
        None | Some("identity") => Ok(()),
        Some(other) => Err(Error::new(
            ErrorKind::UnsupportedMediaType,
            format!("Content-Encoding '{other}' is not supported; send the body uncompressed"),
        )),
    }
}

fn header_length(headers: &HeaderMap) -> Result<Option<usize>, Error> {
    headers
        .get(INFERENCE_HEADER_CONTENT_LENGTH)
        .map(|value| {
            value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or_else(|| Error::invalid_input("Inference-Header-Content-Length must be a non-negative integer"))
        })
        .transpose()
}

pub(super) fn served<'g>(gateway: &'g Gateway, name: &str) -> Result<&'g ServedModel, Error> {
    gateway.registry().model(name).ok_or_else(|| {
        let names: Vec<&str> = gateway.registry().models().map(ServedModel::name).collect();
        Error::not_found(format!("model '{name}' is not served; served models: {names:?}"))
    })
}

fn version_of<'d>(deployment: &'d Deployment, name: &str, version: &str) -> Result<&'d Arc<ModelVersion>, Error> {
    deployment.version(version).ok_or_else(|| match deployment.refused().iter().find(|(v, _)| v.as_str() == version) {
        Some((_, reason)) => Error::not_found(format!("version '{version}' of model '{name}' is not served: {reason}")),
        None => {
            let versions: Vec<&str> = deployment.versions().map(|v| v.version().as_str()).collect();
            Error::not_found(format!("model '{name}' has no version '{version}'; served versions: {versions:?}"))
        }
    })
}

// === metadata and health ===

/// Server metadata.
#[utoipa::path(get, path = "/v2", tag = "health", responses((status = 200, body = ServerMetadata)))]
pub async fn server_metadata() -> Json<serde_json::Value> {
    Json(json!({
        "name": "gauntlet",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["binary_tensor_data"],
    }))
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/v2/health/live", tag = "health", responses((status = 200, body = Live)))]
pub async fn live() -> Json<serde_json::Value> {
    Json(json!({ "live": true }))
}

/// Readiness: every model loaded, not shutting down, and in a cluster the store read once.
#[utoipa::path(get, path = "/v2/health/ready", tag = "health", responses((status = 200, body = Ready), Unavailable))]
pub async fn ready(State(gateway): State<Arc<Gateway>>) -> Result<Json<serde_json::Value>, Error> {
    match gateway.not_ready() {
        None => Ok(Json(json!({ "ready": true }))),
        Some(reason) => Err(Error::new(ErrorKind::Unavailable, reason)),
    }
}

/// A model's metadata (its champion's signature and the served versions).
#[utoipa::path(get, path = "/v2/models/{name}", tag = "inference", params(ModelPath),
    responses((status = 200, body = ModelMetadata), NotFound))]
pub async fn model_metadata(
    State(gateway): State<Arc<Gateway>>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, Error> {
    let deployment = served(&gateway, &name)?.deployment();
    let versions: Vec<&str> = deployment.versions().map(|v| v.version().as_str()).collect();
    Ok(Json(metadata(deployment.champion(), &versions)))
}

/// One version's metadata.
#[utoipa::path(get, path = "/v2/models/{name}/versions/{version}", tag = "inference", params(VersionPath),
    responses((status = 200, body = ModelMetadata), NotFound))]
pub async fn version_metadata(
    State(gateway): State<Arc<Gateway>>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, Error> {
    let deployment = served(&gateway, &name)?.deployment();
    let v = version_of(&deployment, &name, &version)?;
    Ok(Json(metadata(v, &[v.version().as_str()])))
}

fn metadata(version: &ModelVersion, versions: &[&str]) -> serde_json::Value {
    let manifest = version.manifest();
    json!({
        "name": version.name(),
        "versions": versions,
        "platform": version.backend().platform(),
        "inputs": manifest.inputs,
        "outputs": manifest.outputs,
    })
}

/// Whether a model serves.
#[utoipa::path(get, path = "/v2/models/{name}/ready", tag = "health", params(ModelPath),
    responses((status = 200, body = ModelReady), NotFound))]
pub async fn model_ready(
    State(gateway): State<Arc<Gateway>>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, Error> {
    served(&gateway, &name)?;
    Ok(Json(json!({ "name": name, "ready": true })))
}

/// Whether a version serves.
#[utoipa::path(get, path = "/v2/models/{name}/versions/{version}/ready", tag = "health", params(VersionPath),
    responses((status = 200, body = ModelReady), NotFound))]
pub async fn version_ready(
    State(gateway): State<Arc<Gateway>>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, Error> {
    let deployment = served(&gateway, &name)?.deployment();
    version_of(&deployment, &name, &version)?;
    Ok(Json(json!({ "name": name, "version": version, "ready": true })))
}
