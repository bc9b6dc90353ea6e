//! `GET /admin/models…`: what is deployed, and every version on disk.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind};
use crate::http::openapi::{Denied, ModelPath, NotFound};
use crate::inference::Gateway;
use crate::inference::served;
use crate::registry::{Deployment, ServedModel};
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
#[utoipa::path(get, path = "/admin/models", tag = "admin", security(("bearer" = ["read"])), responses((status = 200, body = Vec<ModelView>), Denied))]
pub async fn list(State(gateway): State<Arc<Gateway>>) -> Json<Vec<ModelView>> {
    // Listing the repository may call an object store: off the async workers.
    let views = tokio::task::spawn_blocking(move || gateway.registry().models().map(|m| view(&gateway, m)).collect());
    Json(views.await.unwrap_or_default())
}

/// One model's deployment and every version on disk.
#[utoipa::path(get, path = "/admin/models/{name}", tag = "admin", security(("bearer" = ["read"])), params(ModelPath),
    responses((status = 200, body = ModelView), NotFound, Denied))]
pub async fn show(State(gateway): State<Arc<Gateway>>, Path(name): Path<String>) -> Result<Json<ModelView>, Error> {
    let view = tokio::task::spawn_blocking(move || served(&gateway, &name).map(|model| view(&gateway, model)));
    let view = view.await.map_err(|_| Error::new(ErrorKind::Internal, "listing the repository failed"))??;
    Ok(Json(view))
}
