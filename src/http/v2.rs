//! Handlers of the Open Inference Protocol's REST endpoints.

use std::sync::Arc;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use serde_json::json;
use sync_wrapper::SyncWrapper;

use super::codec::{self, ResponseHead};
use super::openapi::{
    BadRequest, Denied, InferRequest, InferResponse, Live, ModelFailed, ModelMetadata, ModelPath, ModelReady, NotFound,
    PayloadTooLarge, Ready, ServerMetadata, Unavailable, UnsupportedMediaType, VersionPath,
};
use crate::error::{Error, ErrorKind};
use crate::inference::{self, Codec, Decoded, Gateway, Protocol, served, version_of};
use crate::model::Tensor;
use crate::registry::ModelVersion;
use crate::repository::Manifest;

const INFERENCE_HEADER_CONTENT_LENGTH: HeaderName = HeaderName::from_static("inference-header-content-length");
const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Infer with the champion (or the canary share); challengers shadow it off the critical path.
#[utoipa::path(post, path = "/v2/models/{name}/infer", tag = "inference", security((), ("bearer" = ["infer"])), params(ModelPath),
    request_body(content = InferRequest, description = "JSON, or the binary tensor extension (application/octet-stream with Inference-Header-Content-Length)"),
    responses(
        (status = 200, description = "The answer; X-Request-Id carries the request id",
            content((InferResponse = "application/json"), (Vec<u8> = "application/octet-stream"))),
        BadRequest, NotFound, PayloadTooLarge, UnsupportedMediaType, Denied, ModelFailed, Unavailable))]
pub async fn infer(State(gateway): State<Arc<Gateway>>, Path(name): Path<String>, request: Request) -> Response {
    serve_infer(&gateway, &name, None, request).await
}

/// Infer with one version directly (not shadowed, no canary).
#[utoipa::path(post, path = "/v2/models/{name}/versions/{version}/infer", tag = "inference", security((), ("bearer" = ["infer"])), params(VersionPath),
    request_body(content = InferRequest, description = "JSON, or the binary tensor extension"),
    responses(
        (status = 200, description = "The answer",
            content((InferResponse = "application/json"), (Vec<u8> = "application/octet-stream"))),
        BadRequest, NotFound, PayloadTooLarge, UnsupportedMediaType, Denied, ModelFailed, Unavailable))]
pub async fn infer_version(
    State(gateway): State<Arc<Gateway>>,
    Path((name, version)): Path<(String, String)>,
    request: Request,
) -> Response {
    serve_infer(&gateway, &name, Some(&version), request).await
}

/// One inference request through the shared path (`inference::serve`): over
/// `max_concurrent_requests` in flight it is refused at once (503, never queued); past
/// `request_timeout_ms` it answers 503 and gives its slot back; a body over `max_request_bytes` is a
/// 413; a panic is a 500. Both the router and the front's direct path (`super::front`) come here.
pub(super) async fn serve_infer<B>(
    gateway: &Gateway,
    name: &str,
    version: Option<&str>,
    request: Request<B>,
) -> Response
where
    B: hyper::body::Body<Data = Bytes> + Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (parts, body) = request.into_parts();
    let authorization = parts.headers.get(header::AUTHORIZATION).map(HeaderValue::as_bytes);
    if let Err(denied) = gateway.access().allows_inference(authorization) {
        return Error::from(denied).into_response();
    }
    let limit = gateway.config().max_request_bytes;
    // The headers are borrowed, not moved into the request: each move of a future would copy them
    // (measured: 150 request-thread instructions a request).
    let incoming = Some(SyncWrapper::new((body, limit)));
    let request = Rest { name, version, headers: &parts.headers, incoming, body: Ok(Bytes::new()) };
    inference::serve(gateway, request).await
}

/// A REST inference request: its path's model and version, its headers and its body (or why it
/// could not be read: told once the model is known, so an unknown model is a 404 first).
struct Rest<'a, B> {
    name: &'a str,
    version: Option<&'a str>,
    headers: &'a HeaderMap,
    /// The body still to read, with the limit on its size.
    incoming: Option<SyncWrapper<(B, usize)>>,
    body: Result<Bytes, Error>,
}

impl<B> Codec for Rest<'_, B>
where
    B: hyper::body::Body<Data = Bytes> + Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Selection = codec::OutputSelection;
    type Answer = Response;
    const PROTOCOL: Protocol = Protocol::Rest;

    async fn receive(&mut self) {
        if let Some((incoming, limit)) = self.incoming.take().map(SyncWrapper::into_inner) {
            self.body = read_body(incoming, limit).await;
        }
    }

    fn target(&self) -> (&str, Option<&str>) {
        (self.name, self.version)
    }

    fn id_header(&self) -> Option<&str> {
        self.headers.get(REQUEST_ID).and_then(|v| v.to_str().ok())
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn decode(&mut self, manifest: &Manifest) -> Result<Decoded<Self::Selection>, Error> {
        let body = std::mem::replace(&mut self.body, Ok(Bytes::new()))?;
        check_encoding(self.headers)?;
        let request = codec::decode_request(&body, header_length(self.headers)?, manifest)?;
        Ok(Decoded { id: request.id, inputs: request.inputs, selection: request.outputs })
    }

    fn encode(&self, version: &ModelVersion, id: String, outputs: &[Tensor], selection: &Self::Selection) -> Response {
        let response = respond(version, &id, outputs, selection);
        with_request_id(response, Some(id))
    }

    fn refuse(error: Error, id: Option<String>) -> Response {
        with_request_id(error.into_response(), id)
    }
}

fn respond(version: &ModelVersion, id: &str, outputs: &[Tensor], selection: &codec::OutputSelection) -> Response {
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
#[utoipa::path(get, path = "/v2/models/{name}", tag = "inference", security((), ("bearer" = ["infer"])), params(ModelPath),
    responses((status = 200, body = ModelMetadata), NotFound, Denied))]
pub async fn model_metadata(
    State(gateway): State<Arc<Gateway>>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, Error> {
    let deployment = served(&gateway, &name)?.deployment();
    let versions: Vec<&str> = deployment.versions().map(|v| v.version().as_str()).collect();
    Ok(Json(metadata(deployment.champion(), &versions)))
}

/// One version's metadata.
#[utoipa::path(get, path = "/v2/models/{name}/versions/{version}", tag = "inference", security((), ("bearer" = ["infer"])), params(VersionPath),
    responses((status = 200, body = ModelMetadata), NotFound, Denied))]
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
#[utoipa::path(get, path = "/v2/models/{name}/ready", tag = "health", security((), ("bearer" = ["infer"])), params(ModelPath),
    responses((status = 200, body = ModelReady), NotFound, Denied))]
pub async fn model_ready(
    State(gateway): State<Arc<Gateway>>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, Error> {
    served(&gateway, &name)?;
    Ok(Json(json!({ "name": name, "ready": true })))
}

/// Whether a version serves.
#[utoipa::path(get, path = "/v2/models/{name}/versions/{version}/ready", tag = "health", security((), ("bearer" = ["infer"])), params(VersionPath),
    responses((status = 200, body = ModelReady), NotFound, Denied))]
pub async fn version_ready(
    State(gateway): State<Arc<Gateway>>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, Error> {
    let deployment = served(&gateway, &name)?.deployment();
    version_of(&deployment, &name, &version)?;
    Ok(Json(json!({ "name": name, "version": version, "ready": true })))
}
