//! The MLflow Model Registry as a repository (`mlflow+http(s)://host:port`), through its REST API
//! 2.0: a registered model is a gateway model, a model version (status READY) a version. A
//! version's files are found through `model-versions/get-download-uri` (in MLflow 3 a version's
//! `source` is a `models:/m-…` URI, not a path) and read through the server's artifact proxy
//! (`mlflow-artifacts:`, `mlflow server --serve-artifacts`), a plain `http(s)://` URI, or a local
//! path. The version's artifacts hold the ONNX file and our `manifest.json` beside it
//! (`models/mlflow_register.py` logs both).
//!
//! Invariants:
//! - The registry numbers the versions: a manifest must name its registered model, and the
//!   version it says is replaced by the registry's.
//! - Fetched and verified as for object storage: the same cache, keyed by sha256, the same check.
//! - Credentials come from `MLFLOW_TRACKING_TOKEN` (or `MLFLOW_TRACKING_USERNAME` and
//!   `MLFLOW_TRACKING_PASSWORD`) and are never logged nor put in a message.
//! - Called from blocking contexts only, on a runtime of its own; the champion alias is written
//!   back without making anyone wait for it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use serde_json::Value;

use super::remote::{Cache, Worker};
use super::{Catalog, Described, FetchSettings, MANIFEST_FILE, Manifest, RepositoryError, VersionId, check_datatypes};

/// `[models.<name>.mlflow]`: registry aliases that drive the deployment.
#[derive(Clone, Debug, Default, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MlflowAliases {
    /// A version given this alias becomes a challenger (found by the repository poller); the
    /// poller then adopts no other new version of this model.
    pub challenger_alias: Option<String>,
    /// Set by the gateway on the champion after every promotion or rollback it makes.
    pub champion_alias: Option<String>,
}

#[derive(Clone)]
enum Credentials {
    None,
    Token(String),
    Basic(String, String),
}

impl Credentials {
    fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        match (var("MLFLOW_TRACKING_TOKEN"), var("MLFLOW_TRACKING_USERNAME"), var("MLFLOW_TRACKING_PASSWORD")) {
            (Some(token), _, _) => Self::Token(token),
            (None, Some(user), password) => Self::Basic(user, password.unwrap_or_default()),
            _ => Self::None,
        }
    }

    fn apply(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self {
            Self::None => request,
            Self::Token(token) => request.bearer_auth(token),
            Self::Basic(user, password) => request.basic_auth(user, Some(password)),
        }
    }

    fn named(&self) -> &'static str {
        match self {
            Self::None => "no credentials (MLFLOW_TRACKING_TOKEN is unset)",
            Self::Token(_) => "MLFLOW_TRACKING_TOKEN",
            Self::Basic(..) => "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD",
        }
    }
}

/// What the registry says of one version (READY ones only).
#[derive(Clone, Debug, Default)]
struct VersionMeta {
    created: Option<SystemTime>,
    run_id: Option<String>,
    source: Option<String>,
    tags: BTreeMap<String, String>,
    aliases: Vec<String>,
    description: Option<String>,
}

pub(super) struct Mlflow {
    /// As configured, without a trailing `/`: what messages name.
    url: String,
    /// The tracking server's own URL (`http(s)://host:port[/prefix]`).
    base: String,
    client: reqwest::Client,
    credentials: Credentials,
    retries: usize,
    worker: Worker,
    cache: Cache,
    aliases: BTreeMap<String, MlflowAliases>,
}

impl std::fmt::Debug for Mlflow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mlflow").field("url", &self.url).field("cache", &self.cache.dir).finish()
    }
}

/// One failed call: the server's answer, or no answer.
enum Failure {
    /// 404 / RESOURCE_DOES_NOT_EXIST.
    NotFound,
    /// 401 / 403.
    Refused(String),
    /// Another 4xx: the server's message.
    Invalid(String),
    /// Unreachable, timed out, 5xx, or an answer that is not what the API says.
    Other(String),
}

impl Mlflow {
    /// The registry's client for `url`, checked with one call: refused credentials stop start-up
    /// here; a server out of reach does not (a restart serves what the cache holds).
    pub(super) fn connect(
        url: &str,
        settings: &FetchSettings,
        state_dir: &Path,
        aliases: BTreeMap<String, MlflowAliases>,
    ) -> Result<Self, RepositoryError> {
        let url = url.trim_end_matches('/').to_owned();
        let base = url.strip_prefix("mlflow+").unwrap_or_default().to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://"))
            || base.split_once("://").is_none_or(|(_, h)| h.is_empty())
        {
            return Err(RepositoryError::Url {
                url,
                message: "expected mlflow+http://host:port or mlflow+https://host:port".into(),
            });
        }
        let timeout = Duration::from_millis(settings.timeout_ms.max(1));
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .map_err(|e| RepositoryError::Url { url: url.clone(), message: e.to_string() })?;
        let cache_dir = settings.cache_dir.clone().unwrap_or_else(|| state_dir.join("repository-cache"));
        let mlflow = Self {
            cache: Cache::open(&cache_dir, settings.cache_bytes)?,
            worker: Worker::new("repository")?,
            url,
            base,
            client,
            credentials: Credentials::from_env(),
            retries: settings.retries,
            aliases,
        };
        match mlflow.call("registered-models/search", &[("max_results", "1")]) {
            Ok(_) => {}
            Err(Failure::Refused(message)) => {
                return Err(mlflow.failed("checking the credentials", Failure::Refused(message)));
            }
            Err(Failure::NotFound) => {
                return Err(RepositoryError::Url {
                    url: mlflow.url.clone(),
                    message: "this server has no Model Registry API (api/2.0/mlflow/registered-models)".into(),
                });
            }
            Err(Failure::Other(message) | Failure::Invalid(message)) => {
                tracing::warn!(repository = %mlflow.url, %message, "the MLflow registry is out of reach: serving what the cache holds until it returns");
            }
        }
        Ok(mlflow)
    }

    pub(super) fn url(&self) -> &str {
        &self.url
    }

    pub(super) fn set_in_use(&self, sha256s: std::collections::BTreeSet<String>) {
        *self.cache.pinned.lock() = sha256s;
    }

    fn failed(&self, what: &str, failure: Failure) -> RepositoryError {
        let message = match failure {
            Failure::NotFound => format!("{what}: not found"),
            Failure::Refused(status) => {
                format!("{what}: the registry refused the credentials ({status}; sent {})", self.credentials.named())
            }
            Failure::Other(message) | Failure::Invalid(message) => format!("{what}: {message}"),
        };
        RepositoryError::Store { url: format!("the MLflow registry {}", self.url), message }
    }

    /// GET `api/2.0/mlflow/<path>` with `query`, retried with backoff on what may pass.
    fn call(&self, path: &str, query: &[(&str, &str)]) -> Result<Value, Failure> {
        let url = format!("{}/api/2.0/mlflow/{path}", self.base);
        let request = self.credentials.apply(self.client.get(url).query(query));
        let bytes = self.send(request)?;
        serde_json::from_slice(&bytes).map_err(|e| Failure::Other(format!("the answer is not JSON: {e}")))
    }

    /// Sends `request` on the worker, retrying connection failures and 5xx answers.
    fn send(&self, request: reqwest::RequestBuilder) -> Result<Vec<u8>, Failure> {
        let retries = self.retries;
        let work = async move {
            let mut wait = Duration::from_millis(100);
            let mut attempt = 0;
            loop {
                let Some(request) = request.try_clone() else {
                    return Err(Failure::Other("an unrepeatable request".into()));
                };
                let outcome = match request.send().await {
                    Ok(answer) if answer.status().is_success() => match answer.bytes().await {
                        Ok(bytes) => return Ok(bytes.to_vec()),
                        Err(e) => Failure::Other(without_url(&e)),
                    },
                    Ok(answer) => {
                        let status = answer.status();
                        let body = answer.text().await.unwrap_or_default();
                        match status.as_u16() {
                            404 => return Err(Failure::NotFound),
                            401 | 403 => return Err(Failure::Refused(status.to_string())),
                            400..=499 if body.contains("RESOURCE_DOES_NOT_EXIST") => return Err(Failure::NotFound),
                            400..=499 => {
                                return Err(Failure::Invalid(format!(
                                    "{status}: {}",
                                    body.chars().take(300).collect::<String>()
                                )));
                            }
                            _ => Failure::Other(format!("{status}: {}", body.chars().take(300).collect::<String>())),
                        }
                    }
                    Err(e) => Failure::Other(without_url(&e)),
                };
                if attempt >= retries {
                    return Err(outcome);
                }
                attempt += 1;
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        };
        self.worker.block(work).unwrap_or_else(|| Err(Failure::Other("the client stopped without an answer".into())))
    }

    /// Registered model names, those with at least one READY version.
    pub(super) fn models(&self) -> Result<Vec<String>, RepositoryError> {
        let mut names = Vec::new();
        let mut token = String::new();
        loop {
            let mut query = vec![("max_results", "1000")];
            if !token.is_empty() {
                query.push(("page_token", token.as_str()));
            }
            let page = match self.call("registered-models/search", &query) {
                Ok(page) => page,
                Err(failure) => {
                    let cached = self.cache.models();
                    if cached.is_empty() {
                        return Err(self.failed("listing the registered models", failure));
                    }
                    tracing::warn!(repository = %self.url, "the MLflow registry is out of reach: listing the cached models");
                    names = cached;
                    break;
                }
            };
            let listed = page["registered_models"].as_array().into_iter().flatten();
            names.extend(listed.filter_map(|m| m["name"].as_str().map(str::to_owned)));
            match page["next_page_token"].as_str() {
                Some(next) if !next.is_empty() => token = next.to_owned(),
                _ => break,
            }
        }
        super::remote::with_versions(names, |name| self.versions(name))
    }

    /// Every READY version of `model` with what the registry says of it.
    fn listing(&self, model: &str) -> Result<BTreeMap<VersionId, VersionMeta>, Failure> {
        let filter = format!("name='{}'", model.replace('\'', "\\'"));
        let mut found = BTreeMap::new();
        let mut token = String::new();
        loop {
            let mut query = vec![("filter", filter.as_str()), ("max_results", "10000")];
            if !token.is_empty() {
                query.push(("page_token", token.as_str()));
            }
            let page = self.call("model-versions/search", &query)?;
            for version in page["model_versions"].as_array().into_iter().flatten() {
                // Search may match by pattern on some servers: only this model's, only READY ones.
                if version["name"].as_str() != Some(model) || version["status"].as_str().is_some_and(|s| s != "READY") {
                    continue;
                }
                let Some(id) = text(&version["version"]) else { continue };
                let tags = version["tags"].as_array().into_iter().flatten();
                let meta = VersionMeta {
                    created: number(&version["creation_timestamp"])
                        .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)),
                    run_id: text(&version["run_id"]).filter(|r| !r.is_empty()),
                    source: text(&version["source"]),
                    tags: tags
                        .filter_map(|t| Some((text(&t["key"])?, text(&t["value"]).unwrap_or_default())))
                        .collect(),
                    aliases: version["aliases"].as_array().into_iter().flatten().filter_map(text).collect(),
                    description: text(&version["description"]).filter(|d| !d.is_empty()),
                };
                found.insert(VersionId::new(id), meta);
            }
            match page["next_page_token"].as_str() {
                Some(next) if !next.is_empty() => token = next.to_owned(),
                _ => break,
            }
        }
        Ok(found)
    }

    pub(super) fn versions(&self, model: &str) -> Result<Vec<VersionId>, RepositoryError> {
        let versions: Vec<VersionId> = match self.listing(model) {
            Ok(found) => found.into_keys().collect(),
            Err(failure) => match self.cache.versions(model) {
                cached if !cached.is_empty() => {
                    tracing::warn!(repository = %self.url, model, "the MLflow registry is out of reach: the cached versions");
                    cached
                }
                _ => return Err(self.failed(&format!("listing the versions of '{model}'"), failure)),
            },
        };
        if versions.is_empty() {
            return Err(RepositoryError::NoModel(model.to_owned()));
        }
        let mut versions = versions;
        versions.sort();
        Ok(versions)
    }

    /// Where a version's files are: the registry's download URI for it.
    fn artifacts(&self, model: &str, version: &VersionId) -> Result<String, Failure> {
        let answer = self.call("model-versions/get-download-uri", &[("name", model), ("version", version.as_str())])?;
        text(&answer["artifact_uri"]).ok_or_else(|| Failure::Other("get-download-uri gave no artifact_uri".into()))
    }

    /// One file of a version's artifacts.
    fn artifact(&self, uri: &str, file: &str) -> Result<Vec<u8>, Failure> {
        let uri = uri.trim_end_matches('/');
        if let Some(path) = uri.strip_prefix("mlflow-artifacts:") {
            // `mlflow-artifacts:/path` or `mlflow-artifacts://host:port/path`: this server's proxy.
            let path = match path.strip_prefix("//") {
                Some(rest) => rest.split_once('/').map_or("", |(_, p)| p),
                None => path.trim_start_matches('/'),
            };
            let url = format!("{}/api/2.0/mlflow-artifacts/artifacts/{path}/{file}", self.base);
            return self.send(self.credentials.apply(self.client.get(url)));
        }
        if uri.starts_with("http://") || uri.starts_with("https://") {
            return self.send(self.credentials.apply(self.client.get(format!("{uri}/{file}"))));
        }
        let local = uri.strip_prefix("file://").unwrap_or(uri);
        if local.starts_with('/') {
            return std::fs::read(Path::new(local).join(file)).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Failure::NotFound,
                _ => Failure::Other(format!("{local}/{file}: {e}")),
            });
        }
        Err(Failure::Other(format!(
            "artifacts at {uri} are not reachable from the gateway: run the tracking server with --serve-artifacts"
        )))
    }

    /// The manifest's text: the registry's, or the cached one when it is out of reach.
    fn manifest_text(&self, model: &str, version: &VersionId) -> Result<(String, Option<String>), RepositoryError> {
        let fetched = self.artifacts(model, version).and_then(|uri| Ok((self.artifact(&uri, MANIFEST_FILE)?, uri)));
        match fetched {
            Ok((bytes, uri)) => Ok((String::from_utf8_lossy(&bytes).into_owned(), Some(uri))),
            Err(Failure::NotFound) => Err(RepositoryError::Inconsistent(format!(
                "version {version} of '{model}' in the MLflow registry {} has no {MANIFEST_FILE} beside its model \
                 (log it with models/mlflow_register.py)",
                self.url
            ))),
            Err(failure) => match self.cache.manifest(model, version) {
                Some(text) => {
                    tracing::warn!(repository = %self.url, model, version = %version, "the MLflow registry is out of reach: the cached version");
                    Ok((text, None))
                }
                None => Err(self.failed(&format!("reading version {version} of '{model}'"), failure)),
            },
        }
    }

    fn shown(&self, model: &str, version: &VersionId) -> PathBuf {
        PathBuf::from(format!("{}/{model}/{version}/{MANIFEST_FILE}", self.url))
    }

    /// One version: its manifest read and checked, its model file fetched once into the cache and
    /// verified.
    pub(super) fn version(&self, model: &str, version: &VersionId) -> Result<(Manifest, PathBuf), RepositoryError> {
        let (text, uri) = self.manifest_text(model, version)?;
        let shown = self.shown(model, version);
        let manifest = registry_manifest(&text, model, version, &shown)?;
        let file = match self.cache.model(&manifest.sha256) {
            Some(file) => file,
            None => {
                let uri = match uri {
                    Some(uri) => uri,
                    None => self.artifacts(model, version).map_err(|f| self.failed("finding the model file", f))?,
                };
                let what = format!("fetching {} of version {version} of '{model}'", manifest.model_file);
                let bytes = self.artifact(&uri, &manifest.model_file).map_err(|f| self.failed(&what, f))?;
                let path = PathBuf::from(format!("{}/{model}/{version}/{}", self.url, manifest.model_file));
                super::verify(&bytes, &manifest, &path)?;
                crate::metrics::repository_fetched(bytes.len() as u64);
                self.cache.put(&manifest.sha256, &bytes)?
            }
        };
        self.cache.put_manifest(model, version, &text)?;
        Ok((manifest, file))
    }

    /// Every version of `model` with its manifest (cached ones are not read again: a registered
    /// version's artifacts do not change) and what the registry says of it; the registry out of
    /// reach is an error.
    pub(super) fn describe_all(&self, model: &str) -> Result<Catalog, RepositoryError> {
        // A search answers what the registry says, or that it cannot: never a partial list that
        // looks whole (the cache holds only the versions this replica loaded).
        let listing = self.listing(model).map_err(|f| self.failed(&format!("listing the versions of '{model}'"), f))?;
        if listing.is_empty() {
            return Err(RepositoryError::NoModel(model.to_owned()));
        }
        // Searching versions does not give their aliases; the registered model does.
        let mut aliases: BTreeMap<String, Vec<String>> = BTreeMap::new();
        if let Ok(registered) = self.call("registered-models/get", &[("name", model)]) {
            for entry in registered["registered_model"]["aliases"].as_array().into_iter().flatten() {
                if let (Some(alias), Some(version)) = (text(&entry["alias"]), text(&entry["version"])) {
                    aliases.entry(version).or_default().push(alias);
                }
            }
        }
        let mut out = Vec::new();
        for (version, mut meta) in listing {
            meta.aliases = aliases.remove(version.as_str()).unwrap_or(meta.aliases);
            let described = self
                .cache
                .manifest(model, &version)
                .map_or_else(|| self.manifest_text(model, &version).map(|(text, _)| text), Ok)
                .and_then(|text| {
                    let shown = self.shown(model, &version);
                    let mut described = Described::from_text(&text, &shown, meta.created)?;
                    described.document["version"] = Value::String(version.to_string());
                    if let Some(description) = meta
                        .description
                        .filter(|_| described.document["description"].as_str().is_none_or(str::is_empty))
                    {
                        described.document["description"] = Value::String(description);
                    }
                    described.run_id = meta.run_id.clone();
                    described.source = meta.source.clone();
                    described.tags = meta.tags.clone();
                    described.aliases = meta.aliases.clone();
                    Ok(described)
                });
            out.push((version, described));
        }
        Ok(out)
    }

    /// The version `alias` names, `None` when the alias is set on no version.
    fn alias(&self, model: &str, alias: &str) -> Result<Option<VersionId>, RepositoryError> {
        match self.call("registered-models/alias", &[("name", model), ("alias", alias)]) {
            Ok(answer) => Ok(text(&answer["model_version"]["version"]).map(VersionId::new)),
            // MLflow answers 400 "alias … not found" for an alias set on no version.
            Err(Failure::NotFound) => Ok(None),
            Err(Failure::Invalid(message)) if message.contains("not found") => Ok(None),
            Err(failure) => Err(self.failed(&format!("reading the alias '{alias}' of '{model}'"), failure)),
        }
    }

    /// The version `[models.<model>.mlflow] challenger_alias` names: `None` when none is configured.
    pub(super) fn challenger(&self, model: &str) -> Option<Result<Option<VersionId>, RepositoryError>> {
        let alias = self.aliases.get(model)?.challenger_alias.as_deref()?;
        Some(self.alias(model, alias))
    }

    /// Sets `champion_alias` on `version`, if one is configured, without waiting: a registry out
    /// of reach is logged and counted, and the next change writes it again.
    pub(super) fn champion_is(&self, model: &str, version: &VersionId) {
        let Some(alias) = self.aliases.get(model).and_then(|a| a.champion_alias.clone()) else { return };
        let url = format!("{}/api/2.0/mlflow/registered-models/alias", self.base);
        let body = serde_json::json!({ "name": model, "alias": alias, "version": version.as_str() });
        let request = self.credentials.apply(self.client.post(url).json(&body));
        let (repository, model, version) = (self.url.clone(), model.to_owned(), version.clone());
        self.worker.spawn(async move {
            let result = match request.send().await {
                Ok(answer) if answer.status().is_success() => Ok(()),
                Ok(answer) => Err(answer.status().to_string()),
                Err(e) => Err(without_url(&e)),
            };
            match result {
                Ok(()) => {
                    crate::metrics::repository_alias_written(true);
                    tracing::info!(%repository, model, version = %version, alias, "the registry's champion alias follows the deployment");
                }
                Err(error) => {
                    crate::metrics::repository_alias_written(false);
                    tracing::warn!(%repository, model, version = %version, alias, %error, "writing the champion alias failed: the next change writes it again");
                }
            }
        });
    }
}

/// A manifest from the registry: it names the registered model; the registry numbers the version.
fn registry_manifest(text: &str, model: &str, version: &VersionId, path: &Path) -> Result<Manifest, RepositoryError> {
    let mut manifest: Manifest =
        serde_json::from_str(text).map_err(|e| RepositoryError::Manifest { path: path.to_owned(), source: e })?;
    if manifest.name != model {
        return Err(RepositoryError::Inconsistent(format!(
            "{} says it is model '{}' but is registered as '{model}'",
            path.display(),
            manifest.name
        )));
    }
    manifest.version = version.clone();
    check_datatypes(&manifest)?;
    Ok(manifest)
}

/// reqwest's message without the URL it names (a URL can carry a query string worth keeping out
/// of logs).
fn without_url(error: &reqwest::Error) -> String {
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(error);
    let mut deepest = None;
    while let Some(e) = source {
        deepest = Some(e.to_string());
        source = e.source();
    }
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "cannot connect"
    } else {
        "failed"
    };
    deepest.map_or_else(|| kind.to_owned(), |d| format!("{kind}: {d}"))
}

/// MLflow writes int64 fields as numbers or as strings.
fn number(value: &Value) -> Option<i64> {
    value.as_i64().or_else(|| value.as_str()?.parse().ok())
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_name_an_http_server() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["mlflow+ftp://x", "mlflow+http://", "mlflow:http://x"] {
            let error = Mlflow::connect(bad, &FetchSettings::default(), dir.path(), BTreeMap::new()).unwrap_err();
            assert!(error.to_string().contains("expected mlflow+http://host:port"), "{bad}: {error}");
        }
    }

    #[test]
    fn a_manifest_takes_the_registry_version_and_must_name_its_model() {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/models/diabetes/2/manifest.json")).unwrap();
        let path = Path::new("x");
        let manifest = registry_manifest(&text, "diabetes", &VersionId::new("7"), path).unwrap();
        assert_eq!(manifest.version.as_str(), "7");
        let error = registry_manifest(&text, "breast-cancer", &VersionId::new("7"), path).unwrap_err();
        assert!(error.to_string().contains("registered as 'breast-cancer'"), "{error}");
    }
}
