//! Handlers of the Open Inference Protocol's REST endpoints.

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::codec::{self, ResponseHead};
use crate::Gateway;
use crate::error::{Error, ErrorKind};
use crate::registry::{Deployment, ModelVersion, ServedModel};

const INFERENCE_HEADER_CONTENT_LENGTH: HeaderName = HeaderName::from_static("inference-header-content-length");
const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

pub async fn infer(
    State(gateway): State<Arc<Gateway>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    infer_on(&gateway, &name, None, &headers, body).await
}

pub async fn infer_version(
    State(gateway): State<Arc<Gateway>>,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    infer_on(&gateway, &name, Some(&version), &headers, body).await
}

async fn infer_on(
    gateway: &Gateway,
    name: &str,
    version: Option<&str>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let start = Instant::now();
    let header_id =
        headers.get(REQUEST_ID).and_then(|v| v.to_str().ok()).filter(|id| !id.is_empty() && id.len() <= 256);
    let answering = served(gateway, name).and_then(|model| {
        let deployment = model.deployment();
        match version {
            None => Ok(Arc::clone(deployment.champion())),
            Some(v) => version_of(&deployment, name, v).cloned(),
        }
    });
    let answering = match answering {
        Ok(v) => v,
        Err(error) => {
            crate::metrics::rejected(error.kind().label());
            return with_request_id(error.into_response(), header_id.map(str::to_owned));
        }
    };
    let (result, id) = run(gateway, &answering, headers, header_id, body).await;
    let elapsed = start.elapsed();
    let response = match result {
        Ok(response) => {
            answering.metrics().request_ok(elapsed);
            response
        }
        Err(error) => {
            answering.metrics().request_failed(error.kind().label(), elapsed);
            error.into_response()
        }
    };
    with_request_id(response, id)
}

/// Decode → infer → encode for one version. Returns the request id it settled on (the body's `id`,
/// else `X-Request-Id`, else a new one) for the response header.
async fn run(
    gateway: &Gateway,
    version: &Arc<ModelVersion>,
    headers: &HeaderMap,
    header_id: Option<&str>,
    body: Result<Bytes, BytesRejection>,
) -> (Result<Response, Error>, Option<String>) {
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            return (Err(body_error(&rejection, gateway.config().max_request_bytes)), header_id.map(str::to_owned));
        }
    };
    let decoded = check_encoding(headers)
        .and_then(|()| header_length(headers))
        .and_then(|length| codec::decode_request(&body, length, version.manifest()));
    let request = match decoded {
        Ok(request) => request,
        Err(error) => return (Err(error), header_id.map(str::to_owned)),
    };
    drop(body);
    let id =
        request.id.clone().or_else(|| header_id.map(str::to_owned)).unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let outputs = match gateway.executor().infer(version, request.inputs).await {
        Ok(outputs) => outputs,
        Err(error) => return (Err(error), Some(id)),
    };
    let manifest = version.manifest();
    let head = ResponseHead { model_name: version.name(), model_version: version.version().as_str(), id: Some(&id) };
    let encoded = codec::encode_response(head, &manifest.outputs, &outputs, &request.outputs);
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
    (Ok(response), Some(id))
}

fn with_request_id(mut response: Response, id: Option<String>) -> Response {
    if let Some(value) = id.and_then(|id| HeaderValue::try_from(id).ok()) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}

fn body_error(rejection: &BytesRejection, limit: usize) -> Error {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        Error::new(ErrorKind::PayloadTooLarge, format!("the request body is larger than the limit of {limit} bytes"))
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

fn served<'g>(gateway: &'g Gateway, name: &str) -> Result<&'g ServedModel, Error> {
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

pub async fn server_metadata() -> Json<serde_json::Value> {
    Json(json!({
        "name": "gauntlet",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["binary_tensor_data"],
    }))
}

pub async fn live() -> Json<serde_json::Value> {
    Json(json!({ "live": true }))
}

pub async fn ready(State(gateway): State<Arc<Gateway>>) -> Result<Json<serde_json::Value>, Error> {
    if gateway.is_ready() {
        Ok(Json(json!({ "ready": true })))
    } else {
        Err(Error::new(ErrorKind::Unavailable, "the gateway is shutting down"))
    }
}

pub async fn model_metadata(
    State(gateway): State<Arc<Gateway>>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, Error> {
    let deployment = served(&gateway, &name)?.deployment();
    let versions: Vec<&str> = deployment.versions().map(|v| v.version().as_str()).collect();
    Ok(Json(metadata(deployment.champion(), &versions)))
}

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

pub async fn model_ready(
    State(gateway): State<Arc<Gateway>>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, Error> {
    served(&gateway, &name)?;
    Ok(Json(json!({ "name": name, "ready": true })))
}

pub async fn version_ready(
    State(gateway): State<Arc<Gateway>>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, Error> {
    let deployment = served(&gateway, &name)?.deployment();
    version_of(&deployment, &name, &version)?;
    Ok(Json(json!({ "name": name, "version": version, "ready": true })))
}
