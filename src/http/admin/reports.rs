//! `GET /admin/models/{name}/comparison` and `…/drift`: the live figures.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};

use crate::Gateway;
use crate::compare::Report;
use crate::drift::DriftReport;
use crate::error::{Error, ErrorKind};
use crate::http::openapi::{AdminDenied, ModelPath, NotFound, Unavailable};
use crate::http::v2::served;

/// The live champion–challenger comparison.
#[utoipa::path(get, path = "/admin/models/{name}/comparison", tag = "admin", params(ModelPath),
    responses((status = 200, body = Report), NotFound, AdminDenied, Unavailable))]
pub async fn comparison(State(gateway): State<Arc<Gateway>>, Path(name): Path<String>) -> Result<Json<Report>, Error> {
    served(&gateway, &name)?;
    match gateway.join().report(&name).await {
        Ok(Some(report)) => Ok(Json(report)),
        Ok(None) => Err(Error::not_found(format!("model '{name}' has no comparison"))),
        Err(_) => Err(Error::new(ErrorKind::Overloaded, "the comparison is busy; retry shortly")),
    }
}

/// Drift of the deployment's traffic from its champion's training profile, as last evaluated.
#[utoipa::path(get, path = "/admin/models/{name}/drift", tag = "admin", params(ModelPath),
    responses((status = 200, body = DriftReport), NotFound, AdminDenied))]
pub async fn drift(State(gateway): State<Arc<Gateway>>, Path(name): Path<String>) -> Result<Json<DriftReport>, Error> {
    let model = served(&gateway, &name)?;
    Ok(Json(gateway.drift().report(model.deployment().champion())))
}
