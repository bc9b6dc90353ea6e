//! `GET /admin/repository?q=…&model=…`: every version of every model in the repository (folder,
//! object storage or MLflow), each with its manifest's keys, its lineage and its state in the
//! deployment, filtered (`crate::repository::search`).

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, ErrorKind};
use crate::http::openapi::{BadRequest, Denied, NotFound, Unavailable};
use crate::inference::Gateway;
use crate::repository::search::{Filter, field};
use crate::repository::{Described, RepositoryError, VersionId};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchQuery {
    /// A filter: `field op value`, joined by `and`; fields are the manifest's keys, dotted
    /// (`holdout_metrics.accuracy > 0.96`), and model, version, state, created, run_id, tags.<key>,
    /// aliases.
    #[serde(default)]
    pub q: String,
    /// One model; every model in the repository when left out.
    #[serde(default)]
    pub model: Option<String>,
}

/// The versions that match, in model and version order.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SearchView {
    /// Where the repository is, and its kind (folder, s3, gs, az, mlflow).
    pub repository: String,
    pub kind: String,
    pub filter: String,
    /// How many versions were searched.
    pub searched: usize,
    /// Each: the manifest's keys (without its reference rows and training profile), `model`,
    /// `version`, `state` (champion, challenger, loaded, available, refused) with `error` when
    /// refused, `created`, and from MLflow `run_id`, `source`, `tags`, `aliases`.
    #[schema(value_type = Vec<Object>)]
    pub versions: Vec<Value>,
}

/// Searches every version of the repository.
#[utoipa::path(get, path = "/admin/repository", tag = "admin", security(("bearer" = ["read"])), params(SearchQuery),
    responses((status = 200, body = SearchView), BadRequest, NotFound, Unavailable, Denied))]
pub async fn search(
    State(gateway): State<Arc<Gateway>>,
    Query(query): Query<SearchQuery>,
) -> Result<Json<SearchView>, Error> {
    let filter = Filter::parse(&query.q).map_err(|e| Error::new(ErrorKind::InvalidInput, e.to_string()))?;
    // The repository may be object storage or a registry: off the async workers.
    let view = tokio::task::spawn_blocking(move || search_blocking(&gateway, query, &filter));
    view.await.map_err(|_| Error::new(ErrorKind::Internal, "searching the repository failed"))?.map(Json)
}

fn search_blocking(gateway: &Gateway, query: SearchQuery, filter: &Filter) -> Result<SearchView, Error> {
    let repository = gateway.registry().repository();
    let unavailable = |e: RepositoryError| Error::new(ErrorKind::Unavailable, e.to_string());
    let models = match &query.model {
        Some(model) => vec![model.clone()],
        None => repository.models().map_err(unavailable)?,
    };
    let mut documents = Vec::new();
    for model in &models {
        let described = match repository.describe_all(model) {
            Ok(described) => described,
            Err(RepositoryError::NoModel(_)) => {
                return Err(Error::new(ErrorKind::NotFound, format!("model '{model}' is not in the repository")));
            }
            Err(error) => return Err(unavailable(error)),
        };
        for (version, described) in described {
            documents.push(document(gateway, model, &version, described));
        }
    }
    // A field no version has is a typo more often than a question with no answer: say so.
    if !documents.is_empty() {
        for name in filter.fields() {
            if !documents.iter().any(|d| field(d, name).is_some()) {
                let mut known = BTreeSet::new();
                documents.iter().for_each(|d| paths(d, "", &mut known));
                let known: Vec<&str> = known.iter().map(String::as_str).collect();
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    format!("filter: no version has a field '{name}'; fields: {}", known.join(", ")),
                ));
            }
        }
    }
    let searched = documents.len();
    let versions = documents.into_iter().filter(|d| filter.matches(d)).collect();
    Ok(SearchView {
        repository: repository.location(),
        kind: repository.kind().to_owned(),
        filter: query.q,
        searched,
        versions,
    })
}

/// One version's document: its manifest's keys, then what the source and the deployment know.
fn document(
    gateway: &Gateway,
    model: &str,
    version: &VersionId,
    described: Result<Described, RepositoryError>,
) -> Value {
    let (state, refusal) = state(gateway, model, version);
    let mut out = Map::new();
    let error = match described {
        Ok(described) => {
            if let Value::Object(manifest) = described.document {
                out.extend(manifest);
            }
            if let Some(created) = described.created {
                out.insert("created".into(), humantime::format_rfc3339_seconds(created).to_string().into());
            }
            let lineage = [("run_id", described.run_id), ("source", described.source)];
            for (key, value) in lineage {
                if let Some(value) = value {
                    out.insert(key.into(), value.into());
                }
            }
            if !described.tags.is_empty() {
                out.insert("tags".into(), serde_json::to_value(described.tags).unwrap_or_default());
            }
            if !described.aliases.is_empty() {
                out.insert("aliases".into(), described.aliases.into());
            }
            refusal
        }
        Err(error) => Some(refusal.unwrap_or_else(|| error.to_string())),
    };
    out.insert("model".into(), model.into());
    out.insert("version".into(), version.as_str().into());
    let state = if error.is_some() && state == "available" { "refused" } else { state };
    out.insert("state".into(), state.into());
    if let Some(error) = error {
        out.insert("error".into(), error.into());
    }
    Value::Object(out)
}

/// A version's part in the deployment, and why it was refused if it was.
fn state(gateway: &Gateway, model: &str, version: &VersionId) -> (&'static str, Option<String>) {
    let Some(served) = gateway.registry().model(model) else { return ("available", None) };
    let deployment = served.deployment();
    if deployment.champion().version() == version {
        return ("champion", None);
    }
    if deployment.challengers().iter().any(|c| c.version() == version) {
        return ("challenger", None);
    }
    if deployment.version(version.as_str()).is_some() {
        return ("loaded", None);
    }
    match deployment.refused().get(version) {
        Some(reason) => ("refused", Some(reason.clone())),
        None => ("available", None),
    }
}

/// Every dotted path in `value` (objects only), for the message naming the fields there are.
fn paths(value: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    if let Value::Object(map) = value {
        for (key, value) in map {
            let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
            paths(value, &path, out);
            out.insert(path);
        }
    }
}
