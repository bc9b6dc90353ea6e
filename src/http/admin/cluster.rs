//! `GET /admin/cluster`: every replica of the cluster, what each serves, whether it converged.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;

use crate::cluster::ClusterView;
use crate::error::{Error, ErrorKind};
use crate::http::openapi::{Denied, NotFound, Unavailable};
use crate::inference::Gateway;

/// The cluster as its store has it: each model's revision, and each replica's heartbeat (its
/// address, the revision of each model it serves, whether that is the store's).
#[utoipa::path(get, path = "/admin/cluster", tag = "admin", security(("bearer" = ["read"])),
    responses((status = 200, body = ClusterView), NotFound, Denied, Unavailable))]
pub async fn show(State(gateway): State<Arc<Gateway>>) -> Result<Json<ClusterView>, Error> {
    if gateway.cluster().is_none() {
        return Err(Error::not_found(
            "this gateway is one node, with its deployments in files: set [cluster] database_url to run replicas",
        ));
    }
    // A read from the store: off the async workers.
    let status = tokio::task::spawn_blocking(move || gateway.cluster().map(|c| c.status()))
        .await
        .map_err(|_| Error::new(ErrorKind::Internal, "reading the cluster store panicked"))?;
    match status {
        Some(Ok(view)) => Ok(Json(view)),
        Some(Err(error)) => Err(Error::new(ErrorKind::Unavailable, error.to_string())),
        None => Err(Error::not_found("this gateway is one node")),
    }
}
