//! Changes to a deployment: promote, roll back, set challengers, load, unload. Every change runs
//! through `Registry::apply` off the async workers and answers with the model as it now stands.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::{Extension, Json};
use serde::Deserialize;

use super::models::{ModelView, show};
use crate::auth::Actor;
use crate::error::{Error, ErrorKind};
use crate::http::openapi::{
    BadRequest, Conflict, Denied, ModelPath, NotFound, Unavailable, Unprocessable, VersionPath,
};
use crate::inference::Gateway;
use crate::inference::served;
use crate::registry::{Change, ChangeError, LoadError, LoadStep, Origin, StoreError};
use crate::repository::VersionId;

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
#[utoipa::path(post, path = "/admin/models/{name}/promote", tag = "admin", security(("bearer" = ["change"])), params(ModelPath), request_body = PromoteRequest,
    responses((status = 200, description = "The model as it now stands", body = ModelView),
        BadRequest, NotFound, Conflict, Unprocessable, Denied, Unavailable))]
pub async fn promote(
    State(gateway): State<Arc<Gateway>>,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
    bytes: Bytes,
) -> Result<Json<ModelView>, Error> {
    let request: PromoteRequest = body(&bytes)?;
    let change = Change::Promote { version: request.version, keep_previous: request.keep_previous_as_challenger };
    apply(gateway, actor, name, change, request.reason).await
}

/// Back to the previous champion.
#[utoipa::path(post, path = "/admin/models/{name}/rollback", tag = "admin", security(("bearer" = ["change"])), params(ModelPath), request_body = Option<ReasonRequest>,
    responses((status = 200, description = "The model as it now stands", body = ModelView),
        BadRequest, NotFound, Conflict, Unprocessable, Denied, Unavailable))]
pub async fn rollback(
    State(gateway): State<Arc<Gateway>>,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
    bytes: Bytes,
) -> Result<Json<ModelView>, Error> {
    let request: ReasonRequest = optional_body(&bytes)?;
    apply(gateway, actor, name, Change::Rollback, request.reason).await
}

/// Set the challengers and the sampling rate.
#[utoipa::path(put, path = "/admin/models/{name}/challengers", tag = "admin", security(("bearer" = ["change"])), params(ModelPath), request_body = ChallengersRequest,
    responses((status = 200, description = "The model as it now stands", body = ModelView),
        BadRequest, NotFound, Conflict, Unprocessable, Denied, Unavailable))]
pub async fn challengers(
    State(gateway): State<Arc<Gateway>>,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
    bytes: Bytes,
) -> Result<Json<ModelView>, Error> {
    let request: ChallengersRequest = body(&bytes)?;
    let change = Change::SetChallengers { versions: request.versions, shadow_sample_rate: request.shadow_sample_rate };
    apply(gateway, actor, name, change, request.reason).await
}

/// Load a version from the repository (anew if loaded).
#[utoipa::path(post, path = "/admin/models/{name}/versions/{version}/load", tag = "admin", security(("bearer" = ["change"])), params(VersionPath), request_body = Option<ReasonRequest>,
    responses((status = 200, description = "The model as it now stands", body = ModelView),
        BadRequest, NotFound, Conflict, Unprocessable, Denied, Unavailable))]
pub async fn load(
    State(gateway): State<Arc<Gateway>>,
    Extension(actor): Extension<Actor>,
    Path((name, version)): Path<(String, String)>,
    bytes: Bytes,
) -> Result<Json<ModelView>, Error> {
    let request: ReasonRequest = optional_body(&bytes)?;
    apply(gateway, actor, name, Change::Load { version: version_id(&version)? }, request.reason).await
}

/// Unload a version that is not the champion.
#[utoipa::path(delete, path = "/admin/models/{name}/versions/{version}", tag = "admin", security(("bearer" = ["change"])), params(VersionPath), request_body = Option<ReasonRequest>,
    responses((status = 200, description = "The model as it now stands", body = ModelView),
        BadRequest, NotFound, Conflict, Unprocessable, Denied, Unavailable))]
pub async fn unload(
    State(gateway): State<Arc<Gateway>>,
    Extension(actor): Extension<Actor>,
    Path((name, version)): Path<(String, String)>,
    bytes: Bytes,
) -> Result<Json<ModelView>, Error> {
    let request: ReasonRequest = optional_body(&bytes)?;
    apply(gateway, actor, name, Change::Unload { version: version_id(&version)? }, request.reason).await
}

fn version_id(raw: &str) -> Result<VersionId, Error> {
    serde_json::from_value(serde_json::Value::String(raw.to_owned()))
        .map_err(|e| Error::invalid_input(format!("invalid version: {e}")))
}

async fn apply(
    gateway: Arc<Gateway>,
    actor: Actor,
    name: String,
    change: Change,
    reason: Option<String>,
) -> Result<Json<ModelView>, Error> {
    served(&gateway, &name)?;
    let worker = Arc::clone(&gateway);
    let model = name.clone();
    // Loading a version takes milliseconds to seconds, and the state is synced to disk: off the workers.
    let applied = tokio::task::spawn_blocking(move || {
        let origin = Origin { actor: actor.name(), reason: reason.as_deref(), evidence: None };
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
        // The store of versions is out of reach: the version itself may be fine.
        ChangeError::Load(LoadError { step: LoadStep::Fetch, .. }) => ErrorKind::Unavailable,
        ChangeError::Load(_) => ErrorKind::Unprocessable,
        // Another replica's change was saved first (a cluster's compare-and-set).
        ChangeError::Persist(StoreError::Conflict { .. }) => ErrorKind::Conflict,
        ChangeError::Persist(_) => ErrorKind::Unavailable,
    };
    Error::new(kind, error.to_string())
}
