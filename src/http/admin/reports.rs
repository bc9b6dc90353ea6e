//! `GET /admin/models/{name}/comparison` and `…/drift`: the live figures.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};

use crate::compare::Report;
use crate::compare::history::History;
use crate::drift::DriftReport;
use crate::error::{Error, ErrorKind};
use crate::http::openapi::{BadRequest, Denied, ModelPath, NotFound, Unavailable};
use crate::inference::Gateway;
use crate::inference::served;

/// The live champion–challenger comparison.
#[utoipa::path(get, path = "/admin/models/{name}/comparison", tag = "admin", security(("bearer" = ["read"])), params(ModelPath),
    responses((status = 200, body = Report), NotFound, Denied, Unavailable))]
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
#[utoipa::path(get, path = "/admin/models/{name}/drift", tag = "admin", security(("bearer" = ["read"])), params(ModelPath),
    responses((status = 200, body = DriftReport), NotFound, Denied, Unavailable))]
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

/// How many audit entries `GET …/audit` returns at most.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// At most this many, newest first (default 100, at most 1000).
    pub limit: Option<usize>,
}

/// The model's audit entries (promotions, rollbacks, loads, policy decisions), newest first.
#[derive(Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct AuditView {
    pub model: String,
    #[schema(value_type = Vec<Object>)]
    pub entries: Vec<serde_json::Value>,
}

/// The audit log of one model, newest first.
#[utoipa::path(get, path = "/admin/models/{name}/audit", tag = "admin", security(("bearer" = ["read"])), params(ModelPath, AuditQuery),
    responses((status = 200, body = AuditView), BadRequest, NotFound, Denied, Unavailable))]
pub async fn audit(
    State(gateway): State<Arc<Gateway>>,
    Path(name): Path<String>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Result<Json<AuditView>, Error> {
    served(&gateway, &name)?;
    let mut limit = 100;
    for (key, value) in query_pairs(query.as_deref())? {
        match key.as_str() {
            "limit" => {
                limit = value.parse::<usize>().map_err(|_| {
                    Error::invalid_input(format!("limit must be a whole number of entries, not '{value}'"))
                })?;
            }
            other => return Err(Error::invalid_input(format!("unknown query parameter '{other}'; this takes limit"))),
        }
    }
    let limit = limit.min(1000);
    let model = name.clone();
    // The store is a file or a database: off the async workers.
    let entries = tokio::task::spawn_blocking(move || gateway.registry().history(&model, limit))
        .await
        .map_err(|_| Error::new(ErrorKind::Internal, "reading the audit log panicked"))?
        .map_err(|error| Error::new(ErrorKind::Unavailable, format!("reading the audit log: {error}")))?;
    Ok(Json(AuditView { model: name, entries }))
}

/// Which points of the history `GET …/history` returns.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// RFC 3339: points taken at or after this time (default: all that are kept).
    pub since: Option<String>,
    /// At most this many, the newest (default and most: 100,000).
    pub limit: Option<usize>,
}

/// The comparison's history: a point every `comparison.history_interval_s` while labels join,
/// oldest first, kept in the state directory (one node) or the cluster's store.
#[utoipa::path(get, path = "/admin/models/{name}/history", tag = "admin", security(("bearer" = ["read"])), params(ModelPath, HistoryQuery),
    responses((status = 200, body = History), BadRequest, NotFound, Denied, Unavailable))]
pub async fn history(
    State(gateway): State<Arc<Gateway>>,
    Path(name): Path<String>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Result<Json<History>, Error> {
    served(&gateway, &name)?;
    let (mut since, mut limit) = (None, 100_000);
    for (key, value) in query_pairs(query.as_deref())? {
        match key.as_str() {
            "since" => {
                since = Some(humantime::parse_rfc3339_weak(&value).map_err(|_| {
                    Error::invalid_input(format!(
                        "since must be an RFC 3339 time such as 2026-12-01T00:00:00Z, not '{value}'"
                    ))
                })?);
            }
            "limit" => {
                limit = value.parse::<usize>().map_err(|_| {
                    Error::invalid_input(format!("limit must be a whole number of points, not '{value}'"))
                })?;
            }
            other => {
                return Err(Error::invalid_input(format!(
                    "unknown query parameter '{other}'; this takes since and limit"
                )));
            }
        }
    }
    let limit = limit.min(100_000);
    let interval_s = gateway.config().comparison.history_interval_s;
    let model = name.clone();
    // A file or a database: off the async workers.
    let points = tokio::task::spawn_blocking(move || match gateway.cluster() {
        Some(cluster) => cluster.history(&model, since, limit).map_err(|e| e.to_string()),
        None => crate::history::read(&gateway.config().state_dir, &model, since, limit).map_err(|e| e.to_string()),
    })
    .await
    .map_err(|_| Error::new(ErrorKind::Internal, "reading the history panicked"))?
    .map_err(|error| Error::new(ErrorKind::Unavailable, format!("reading the history: {error}")))?;
    Ok(Json(History { model: name, interval_s, points }))
}

/// A query string's pairs, decoded (a time's `%3A` as a browser sends it) by the url crate, through
/// reqwest. The handlers read their parameters from them by hand, so that a bad value is a 400 in
/// the API's error shape rather than the extractor's.
fn query_pairs(query: Option<&str>) -> Result<Vec<(String, String)>, Error> {
    let parsed = reqwest::Url::parse(&format!("http://gateway/?{}", query.unwrap_or("")))
        .map_err(|e| Error::invalid_input(format!("the query string does not parse: {e}")))?;
    Ok(parsed.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect())
}
