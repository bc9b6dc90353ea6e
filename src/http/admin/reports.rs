//! `GET /admin/models/{name}/comparison` and `…/drift`: the live figures.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};

use crate::Gateway;
use crate::compare::Report;
use crate::drift::DriftReport;
use crate::error::{Error, ErrorKind};
use crate::http::openapi::{AdminDenied, ModelPath, NotFound, Unavailable};
use crate::inference::served;

/// The live champion–challenger comparison.
#[utoipa::path(get, path = "/admin/models/{name}/comparison", tag = "admin", params(ModelPath),
    responses((status = 200, body = Report), NotFound, AdminDenied, Unavailable))]
pub async fn comparison(State(gateway): State<Arc<Gateway>>, Path(name): Path<String>) -> Result<Json<Report>, Error> {
    served(&gateway, &name)?;
    if gateway.cluster().is_some() {
        // The cluster's figures: the analyst's latest snapshot, from the store.
        let model = name.clone();
        let read = tokio::task::spawn_blocking(move || gateway.cluster().map(|c| c.report(&model)))
            .await
            .map_err(|_| Error::new(ErrorKind::Internal, "reading the cluster's report panicked"))?;
        return match read {
            Some(Ok(Some(report))) => Ok(Json(report)),
            Some(Ok(None)) | None => {
                Err(Error::not_found(format!("model '{name}' has no comparison in the cluster store yet")))
            }
            Some(Err(error)) => Err(Error::new(ErrorKind::Unavailable, error.to_string())),
        };
    }
    match gateway.join().report(&name).await {
        Ok(Some(report)) => Ok(Json(report)),
        Ok(None) => Err(Error::not_found(format!("model '{name}' has no comparison"))),
        Err(_) => Err(Error::new(ErrorKind::Overloaded, "the comparison is busy; retry shortly")),
    }
}

/// Drift of the deployment's traffic from its champion's training profile, as last evaluated.
#[utoipa::path(get, path = "/admin/models/{name}/drift", tag = "admin", params(ModelPath),
    responses((status = 200, body = DriftReport), NotFound, AdminDenied, Unavailable))]
pub async fn drift(State(gateway): State<Arc<Gateway>>, Path(name): Path<String>) -> Result<Json<DriftReport>, Error> {
    let model = served(&gateway, &name)?;
    let local = gateway.drift().report(model.deployment().champion());
    if gateway.cluster().is_none() {
        return Ok(Json(local));
    }
    // The cluster's alert state: the analyst's report, from the store (this replica's own until
    // the analyst has written one).
    let model = name.clone();
    let worker = Arc::clone(&gateway);
    let read = tokio::task::spawn_blocking(move || worker.cluster().map(|c| c.drift(&model)))
        .await
        .map_err(|_| Error::new(ErrorKind::Internal, "reading the cluster's drift panicked"))?;
    match read {
        Some(Ok(Some((value, snapshot)))) => {
            let mut report: DriftReport = serde_json::from_value(value).map_err(|e| {
                Error::new(ErrorKind::Unavailable, format!("the store's drift report is unreadable: {e}"))
            })?;
            report.snapshot = Some(snapshot);
            Ok(Json(report))
        }
        Some(Ok(None)) | None => Ok(Json(local)),
        Some(Err(error)) => Err(Error::new(ErrorKind::Unavailable, error.to_string())),
    }
}
