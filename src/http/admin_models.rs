//! `/admin/models…`: what is deployed, and changes to it (promote, rollback, challengers, load,
//! unload). Every change runs through `Registry::apply` off the async workers and answers with the
//! model as it now stands.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use serde::{Deserialize, Serialize};

use crate::Gateway;
use crate::error::{Error, ErrorKind};
use crate::registry::{Change, ChangeError, Deployment, Origin, ServedModel};
use crate::repository::VersionId;

/// One served model: its deployment and every version on disk.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ModelView {
    pub name: String,
    pub champion: String,
    pub challengers: Vec<String>,
    pub shadow_sample_rate: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryView>,
    /// Earlier champions, most recent last: `rollback` returns to the last.
    pub previous: Vec<String>,
    pub versions: Vec<VersionView>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CanaryView {
    pub version: String,
    pub share: f64,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VersionView {
    pub version: String,
    /// champion, challenger, loaded (callable directly, not shadowing), refused, or on_disk (not loaded).
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Median one-row model time at warm-up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_row_us: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn view(gateway: &Gateway, model: &ServedModel) -> ModelView {
    let deployment = model.deployment();
    let mut versions: Vec<VersionView> = deployment
        .versions()
        .map(|v| {
            let state = if Arc::ptr_eq(v, deployment.champion()) {
                "champion"
            } else if deployment.challengers().iter().any(|c| Arc::ptr_eq(c, v)) {
                "challenger"
            } else {
                "loaded"
            };
            VersionView {
                version: v.version().to_string(),
                state: state.into(),
                backend: Some(v.backend().to_string()),
                sha256: Some(v.manifest().sha256.clone()),
                description: Some(v.manifest().description.clone()).filter(|d| !d.is_empty()),
                one_row_us: Some((v.one_row().as_secs_f64() * 1e7).round() / 10.0),
                error: None,
            }
        })
        .collect();
    for (version, reason) in deployment.refused() {
        if deployment.version(version.as_str()).is_none() {
            versions.push(VersionView {
                version: version.to_string(),
                state: "refused".into(),
                backend: None,
                sha256: None,
                description: None,
                one_row_us: None,
                error: Some(reason.clone()),
            });
        }
    }
    for version in gateway.registry().repository().versions(model.name()).unwrap_or_default() {
        if !versions.iter().any(|v| v.version == version.as_str()) {
            versions.push(VersionView {
                version: version.to_string(),
                state: "on_disk".into(),
                backend: None,
                sha256: None,
                description: None,
                one_row_us: None,
                error: None,
            });
        }
    }
    versions.sort_by(|a, b| VersionId::new(a.version.as_str()).cmp(&VersionId::new(b.version.as_str())));
    summary(model.name(), &deployment, versions)
}

fn summary(name: &str, deployment: &Deployment, versions: Vec<VersionView>) -> ModelView {
    let plan = deployment.plan();
    ModelView {
        name: name.to_owned(),
        champion: deployment.champion().version().to_string(),
        challengers: deployment.challengers().iter().map(|c| c.version().to_string()).collect(),
        shadow_sample_rate: plan.shadow_sample_rate,
        canary: plan.canary.as_ref().map(|c| CanaryView { version: c.version.to_string(), share: c.share }),
        previous: deployment.previous().iter().map(ToString::to_string).collect(),
        versions,
    }
}

/// Every served model's deployment.
#[utoipa::path(get, path = "/admin/models", tag = "admin", responses((status = 200, body = Vec<ModelView>), (status = 401, description = "Token missing or wrong", body = crate::http::openapi::ErrorBody), (status = 403, description = "Not on loopback and no token configured", body = crate::http::openapi::ErrorBody)))]
pub async fn list(State(gateway): State<Arc<Gateway>>) -> Json<Vec<ModelView>> {
    Json(gateway.registry().models().map(|m| view(&gateway, m)).collect())
}

/// One model's deployment and every version on disk.
#[utoipa::path(get, path = "/admin/models/{name}", tag = "admin", params(("name" = String, Path, description = "A served model", example = "breast-cancer")),
    responses((status = 200, body = ModelView), (status = 404, description = "No such model", body = crate::http::openapi::ErrorBody), (status = 401, description = "Token missing or wrong", body = crate::http::openapi::ErrorBody), (status = 403, description = "Not on loopback and no token configured", body = crate::http::openapi::ErrorBody)))]
pub async fn show(State(gateway): State<Arc<Gateway>>, Path(name): Path<String>) -> Result<Json<ModelView>, Error> {
    Ok(Json(view(&gateway, super::v2::served(&gateway, &name)?)))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PromoteRequest {
    #[schema(value_type = String)]
    pub version: VersionId,
    /// The old champion keeps shadowing as a challenger (so the comparison goes on). Default true.
    #[serde(default = "yes")]
    pub keep_previous_as_challenger: bool,
    #[serde(default)]
    pub reason: Option<String>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReasonRequest {
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChallengersRequest {
    #[schema(value_type = Vec<String>)]
    pub versions: Vec<VersionId>,
    #[serde(default)]
    pub shadow_sample_rate: Option<f64>,
    #[serde(default)]
    pub reason: Option<String>,
}

/// A JSON body; errors in the API's shape.
fn body<T: serde::de::DeserializeOwned>(bytes: &Bytes) -> Result<T, Error> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::invalid_input("this call needs a JSON body"));
    }
    serde_json::from_slice(bytes).map_err(|e| Error::invalid_input(format!("invalid request body: {e}")))
}

/// A JSON body, or the default for an empty one.
fn optional_body<T: serde::de::DeserializeOwned + Default>(bytes: &Bytes) -> Result<T, Error> {
    if bytes.iter().all(u8::is_ascii_whitespace) { Ok(T::default()) } else { body(bytes) }
}

/// Make a version champion (loaded first if needed).
#[utoipa::path(post, path = "/admin/models/{name}/promote", tag = "admin", params(("name" = String, Path, description = "A served model", example = "breast-cancer")), request_body = PromoteRequest,
    responses((status = 200, description = "The model as it now stands", body = ModelView), (status = 400, description = "Malformed body", body = crate::http::openapi::ErrorBody), (status = 404, description = "No such model or version", body = crate::http::openapi::ErrorBody), (status = 409, description = "Contradicts the deployment", body = crate::http::openapi::ErrorBody), (status = 422, description = "A load step refused the version", body = crate::http::openapi::ErrorBody), (status = 401, description = "Token missing or wrong", body = crate::http::openapi::ErrorBody), (status = 403, description = "Not on loopback and no token configured", body = crate::http::openapi::ErrorBody), (status = 503, description = "Overloaded, timed out or shutting down (with Retry-After)", body = crate::http::openapi::ErrorBody)))]
pub async fn promote(
    State(gateway): State<Arc<Gateway>>,
    Path(name): Path<String>,
    bytes: Bytes,
) -> Result<Json<ModelView>, Error> {
    let request: PromoteRequest = body(&bytes)?;
    let change = Change::Promote { version: request.version, keep_previous: request.keep_previous_as_challenger };
    apply(gateway, name, change, request.reason).await
}

/// Back to the previous champion.
#[utoipa::path(post, path = "/admin/models/{name}/rollback", tag = "admin", params(("name" = String, Path, description = "A served model", example = "breast-cancer")), request_body = Option<ReasonRequest>,
    responses((status = 200, description = "The model as it now stands", body = ModelView), (status = 400, description = "Malformed body", body = crate::http::openapi::ErrorBody), (status = 404, description = "No such model or version", body = crate::http::openapi::ErrorBody), (status = 409, description = "Contradicts the deployment", body = crate::http::openapi::ErrorBody), (status = 422, description = "A load step refused the version", body = crate::http::openapi::ErrorBody), (status = 401, description = "Token missing or wrong", body = crate::http::openapi::ErrorBody), (status = 403, description = "Not on loopback and no token configured", body = crate::http::openapi::ErrorBody), (status = 503, description = "Overloaded, timed out or shutting down (with Retry-After)", body = crate::http::openapi::ErrorBody)))]
pub async fn rollback(
    State(gateway): State<Arc<Gateway>>,
    Path(name): Path<String>,
    bytes: Bytes,
) -> Result<Json<ModelView>, Error> {
    let request: ReasonRequest = optional_body(&bytes)?;
    apply(gateway, name, Change::Rollback, request.reason).await
}

/// Set the challengers and the sampling rate.
#[utoipa::path(put, path = "/admin/models/{name}/challengers", tag = "admin", params(("name" = String, Path, description = "A served model", example = "breast-cancer")), request_body = ChallengersRequest,
    responses((status = 200, description = "The model as it now stands", body = ModelView), (status = 400, description = "Malformed body", body = crate::http::openapi::ErrorBody), (status = 404, description = "No such model or version", body = crate::http::openapi::ErrorBody), (status = 409, description = "Contradicts the deployment", body = crate::http::openapi::ErrorBody), (status = 422, description = "A load step refused the version", body = crate::http::openapi::ErrorBody), (status = 401, description = "Token missing or wrong", body = crate::http::openapi::ErrorBody), (status = 403, description = "Not on loopback and no token configured", body = crate::http::openapi::ErrorBody), (status = 503, description = "Overloaded, timed out or shutting down (with Retry-After)", body = crate::http::openapi::ErrorBody)))]
pub async fn challengers(
    State(gateway): State<Arc<Gateway>>,
    Path(name): Path<String>,
    bytes: Bytes,
) -> Result<Json<ModelView>, Error> {
    let request: ChallengersRequest = body(&bytes)?;
    let change = Change::SetChallengers { versions: request.versions, shadow_sample_rate: request.shadow_sample_rate };
    apply(gateway, name, change, request.reason).await
}

/// Load a version from the repository (anew if loaded).
#[utoipa::path(post, path = "/admin/models/{name}/versions/{version}/load", tag = "admin", params(("name" = String, Path, description = "A served model", example = "breast-cancer"), ("version" = String, Path, description = "One of its versions", example = "1")), request_body = Option<ReasonRequest>,
    responses((status = 200, description = "The model as it now stands", body = ModelView), (status = 400, description = "Malformed body", body = crate::http::openapi::ErrorBody), (status = 404, description = "No such model or version", body = crate::http::openapi::ErrorBody), (status = 409, description = "Contradicts the deployment", body = crate::http::openapi::ErrorBody), (status = 422, description = "A load step refused the version", body = crate::http::openapi::ErrorBody), (status = 401, description = "Token missing or wrong", body = crate::http::openapi::ErrorBody), (status = 403, description = "Not on loopback and no token configured", body = crate::http::openapi::ErrorBody), (status = 503, description = "Overloaded, timed out or shutting down (with Retry-After)", body = crate::http::openapi::ErrorBody)))]
pub async fn load(
    State(gateway): State<Arc<Gateway>>,
    Path((name, version)): Path<(String, String)>,
    bytes: Bytes,
) -> Result<Json<ModelView>, Error> {
    let request: ReasonRequest = optional_body(&bytes)?;
    apply(gateway, name, Change::Load { version: version_id(&version)? }, request.reason).await
}

/// Unload a version that is not the champion.
#[utoipa::path(delete, path = "/admin/models/{name}/versions/{version}", tag = "admin", params(("name" = String, Path, description = "A served model", example = "breast-cancer"), ("version" = String, Path, description = "One of its versions", example = "1")), request_body = Option<ReasonRequest>,
    responses((status = 200, description = "The model as it now stands", body = ModelView), (status = 400, description = "Malformed body", body = crate::http::openapi::ErrorBody), (status = 404, description = "No such model or version", body = crate::http::openapi::ErrorBody), (status = 409, description = "Contradicts the deployment", body = crate::http::openapi::ErrorBody), (status = 422, description = "A load step refused the version", body = crate::http::openapi::ErrorBody), (status = 401, description = "Token missing or wrong", body = crate::http::openapi::ErrorBody), (status = 403, description = "Not on loopback and no token configured", body = crate::http::openapi::ErrorBody), (status = 503, description = "Overloaded, timed out or shutting down (with Retry-After)", body = crate::http::openapi::ErrorBody)))]
pub async fn unload(
    State(gateway): State<Arc<Gateway>>,
    Path((name, version)): Path<(String, String)>,
    bytes: Bytes,
) -> Result<Json<ModelView>, Error> {
    let request: ReasonRequest = optional_body(&bytes)?;
    apply(gateway, name, Change::Unload { version: version_id(&version)? }, request.reason).await
}

fn version_id(raw: &str) -> Result<VersionId, Error> {
    serde_json::from_value(serde_json::Value::String(raw.to_owned()))
        .map_err(|e| Error::invalid_input(format!("invalid version: {e}")))
}

async fn apply(
    gateway: Arc<Gateway>,
    name: String,
    change: Change,
    reason: Option<String>,
) -> Result<Json<ModelView>, Error> {
    super::v2::served(&gateway, &name)?;
    let worker = Arc::clone(&gateway);
    let model = name.clone();
    // Loading a version takes milliseconds to seconds, and the state is synced to disk: off the workers.
    let applied = tokio::task::spawn_blocking(move || {
        let origin = Origin { actor: "admin", reason: reason.as_deref(), evidence: None };
        worker.registry().apply(&model, &change, origin).map(|_| ())
    })
    .await
    .map_err(|_| Error::new(ErrorKind::Internal, "the change panicked"))?;
    applied.map_err(change_error)?;
    show(State(gateway), Path(name)).await
}

fn change_error(error: ChangeError) -> Error {
    let kind = match &error {
        ChangeError::NoModel(_) | ChangeError::NotFound(_) => ErrorKind::NotFound,
        ChangeError::Conflict(_) => ErrorKind::Conflict,
        ChangeError::Invalid(_) => ErrorKind::InvalidInput,
        ChangeError::Load(_) => ErrorKind::Unprocessable,
        ChangeError::Persist(_) => ErrorKind::Unavailable,
    };
    Error::new(kind, error.to_string())
}
