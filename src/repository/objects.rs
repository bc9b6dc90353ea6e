//! A model repository in object storage (`s3://`, `gs://`, `az://`) through `object_store`, with
//! the folder layout inside: `<prefix>/<model>/<version>/manifest.json` beside its model file.
//!
//! Invariants:
//! - A version is fetched once into the local cache, keyed by its sha256, and verified against the
//!   manifest *before* it is cached or loaded; what the cache holds is re-verified when read.
//! - A version's manifest is written last by whoever uploads it: a version without one is not there
//!   yet (not an error), so a half-uploaded version is never seen.
//! - The cache is bounded in bytes: the least recently used files go first, never one a loaded
//!   version came from (`Objects::in_use`). Its manifests let a restart serve with the store down.
//! - The store is only called from blocking contexts (loading, the poller, admin changes run off
//!   the async workers), through a runtime of its own: never from the request path.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{BackoffConfig, ObjectStore, ObjectStoreExt, RetryConfig};
use serde::Deserialize;

use super::remote::{Cache, Worker};
use super::{Described, MANIFEST_FILE, Manifest, RepositoryError, VersionId, checked_manifest};

/// Fetching versions from object storage (`[repository_fetch]`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FetchSettings {
    /// Where fetched versions are kept, by sha256; unset: `<state_dir>/repository-cache`.
    pub cache_dir: Option<PathBuf>,
    /// The cache's bound in bytes (the files of loaded versions are kept whatever it says).
    pub cache_bytes: u64,
    /// One request's limit, connecting and whole.
    pub timeout_ms: u64,
    /// Retries of a failed request, with exponential backoff (0.1 s doubling, at most 5 s).
    pub retries: usize,
}

impl Default for FetchSettings {
    fn default() -> Self {
        Self { cache_dir: None, cache_bytes: 10 << 30, timeout_ms: 30_000, retries: 3 }
    }
}

pub(super) struct Objects {
    /// The repository's URL as configured, without a trailing `/`: what messages name.
    url: String,
    /// `scheme://bucket`, before an object's path in messages.
    root: String,
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    /// The store's client runs here, whoever calls.
    worker: Worker,
    cache: Cache,
}

impl std::fmt::Debug for Objects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Objects").field("url", &self.url).field("cache", &self.cache.dir).finish()
    }
}

/// `scheme://bucket/prefix` split, with the scheme known.
fn split(url: &str) -> Result<(&str, &str, &str), RepositoryError> {
    let bad = |message: &str| RepositoryError::Url { url: url.to_owned(), message: message.to_owned() };
    let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("expected scheme://bucket/prefix"))?;
    if !matches!(scheme, "s3" | "gs" | "az") {
        return Err(bad("the scheme must be file, s3, gs or az"));
    }
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(bad("the bucket (or container) is missing"));
    }
    Ok((scheme, bucket, prefix.trim_matches('/')))
}

impl Objects {
    /// The store's client for `url`; nothing is fetched yet (a store out of reach is told on the
    /// first read). A bad URL or option key is refused here, named.
    pub(super) fn connect(
        url: &str,
        options: &BTreeMap<String, String>,
        settings: &FetchSettings,
        state_dir: &Path,
    ) -> Result<Self, RepositoryError> {
        let url = url.trim_end_matches('/').to_owned();
        let (scheme, bucket, prefix) = split(&url)?;
        let timeout = Duration::from_millis(settings.timeout_ms.max(1));
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(5),
                base: 2.0,
            },
            max_retries: settings.retries,
            retry_timeout: timeout * (settings.retries as u32 + 1),
        };
        let limit = format!("{}ms", timeout.as_millis());
        // Ours first, so `[repository_options]` can still say otherwise.
        let mut pairs = vec![("timeout".to_owned(), limit.clone()), ("connect_timeout".to_owned(), limit)];
        pairs.extend(options.iter().map(|(k, v)| (k.clone(), v.clone())));
        let options = pairs;
        let bad_key = |key: &str| RepositoryError::Url {
            url: url.clone(),
            message: format!("repository_options.{key} is not an option of a {scheme}:// store"),
        };
        let failed = |e: object_store::Error| RepositoryError::Url { url: url.clone(), message: e.to_string() };
        // The three builders share no trait, only these method names: one body for all of them.
        macro_rules! configured {
            ($builder:expr) => {{
                let mut builder = $builder;
                for (key, value) in options {
                    builder = builder.with_config(key.parse().map_err(|_| bad_key(&key))?, value);
                }
                Arc::new(builder.with_retry(retry).build().map_err(failed)?)
            }};
        }
        let store: Arc<dyn ObjectStore> = match scheme {
            "s3" => configured!(object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket)),
            "gs" => configured!(object_store::gcp::GoogleCloudStorageBuilder::from_env().with_bucket_name(bucket)),
            _ => configured!(object_store::azure::MicrosoftAzureBuilder::from_env().with_container_name(bucket)),
        };
        let worker = Worker::new("repository")?;
        let cache_dir = settings.cache_dir.clone().unwrap_or_else(|| state_dir.join("repository-cache"));
        let cache = Cache::open(&cache_dir, settings.cache_bytes)?;
        let root = format!("{scheme}://{bucket}");
        Ok(Self { prefix: ObjectPath::from(prefix), root, url, store, worker, cache })
    }

    pub(super) fn url(&self) -> &str {
        &self.url
    }

    /// Runs one call to the store on the repository's own runtime and waits for it (from any
    /// thread). A call that panicked inside the client is the store's failure, not the caller's panic.
    fn block<T: Send + 'static>(&self, work: impl Future<Output = T> + Send + 'static) -> Result<T, RepositoryError> {
        self.worker.block(work).ok_or_else(|| RepositoryError::Store {
            url: self.url.clone(),
            message: "the store's client stopped without an answer".to_owned(),
        })
    }

    fn path(&self, parts: &[&str]) -> ObjectPath {
        parts.iter().fold(self.prefix.clone(), |path, part| path.join(*part))
    }

    fn store_failed(&self, what: &str, error: object_store::Error) -> RepositoryError {
        RepositoryError::Store { url: self.url.clone(), message: format!("{what}: {error}") }
    }

    /// Model names: the prefixes under the repository's that hold at least one version.
    pub(super) fn models(&self) -> Result<Vec<String>, RepositoryError> {
        let (store, prefix) = (Arc::clone(&self.store), self.prefix.clone());
        let listed = self.block(async move { store.list_with_delimiter(Some(&prefix)).await })?;
        let names: Vec<String> = match listed {
            Ok(listed) => listed.common_prefixes.iter().filter_map(|p| p.filename().map(str::to_owned)).collect(),
            Err(error) => {
                let cached = self.cache.models();
                if cached.is_empty() {
                    return Err(self.store_failed("listing the models", error));
                }
                tracing::warn!(repository = %self.url, %error, "the store is out of reach: listing the cached models");
                cached
            }
        };
        super::remote::with_versions(names, |name| self.versions(name))
    }

    /// A model's versions: those whose manifest is there (it is uploaded last), in version order.
    pub(super) fn versions(&self, model: &str) -> Result<Vec<VersionId>, RepositoryError> {
        let (store, prefix) = (Arc::clone(&self.store), self.path(&[model]));
        let depth = prefix.parts().count();
        let listed = self.block(async move {
            let mut found = Vec::new();
            let mut listing = store.list(Some(&prefix));
            while let Some(meta) = listing.next().await {
                let parts: Vec<String> = meta?.location.parts().map(|p| p.as_ref().to_owned()).collect();
                if parts.len() == depth + 2 && parts[depth + 1] == MANIFEST_FILE {
                    found.push(VersionId::new(parts[depth].clone()));
                }
            }
            Ok::<_, object_store::Error>(found)
        })?;
        let mut versions = match listed {
            Ok(found) => found,
            Err(error) => match self.cache.versions(model) {
                cached if !cached.is_empty() => {
                    tracing::warn!(repository = %self.url, model, %error, "the store is out of reach: the cached versions");
                    cached
                }
                _ => return Err(self.store_failed(&format!("listing the versions of '{model}'"), error)),
            },
        };
        // Object stores have no folders: a model with nothing under its prefix is not there.
        if versions.is_empty() {
            return Err(RepositoryError::NoModel(model.to_owned()));
        }
        versions.sort();
        Ok(versions)
    }

    /// One version: its manifest read and checked, its model file fetched once into the cache and
    /// verified. With the store out of reach, what the cache holds of it.
    pub(super) fn version(&self, model: &str, version: &VersionId) -> Result<(Manifest, PathBuf), RepositoryError> {
        let manifest_path = self.path(&[model, version.as_str(), MANIFEST_FILE]);
        let shown = PathBuf::from(format!("{}/{manifest_path}", self.root));
        let store = Arc::clone(&self.store);
        let location = manifest_path.clone();
        let fetched = self.block(async move { store.get(&location).await?.bytes().await })?;
        let text = match fetched {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(object_store::Error::NotFound { .. }) => {
                return Err(RepositoryError::NoVersion { model: model.to_owned(), version: version.clone() });
            }
            Err(error) => match self.cache.manifest(model, version) {
                Some(text) => {
                    tracing::warn!(repository = %self.url, model, version = %version, %error, "the store is out of reach: the cached version");
                    text
                }
                None => return Err(self.store_failed(&format!("reading {manifest_path}"), error)),
            },
        };
        let manifest = checked_manifest(&text, model, version, &shown)?;
        let file = match self.cache.model(&manifest.sha256) {
            Some(file) => file,
            None => {
                let location = self.path(&[model, version.as_str(), &manifest.model_file]);
                let shown = PathBuf::from(format!("{}/{location}", self.root));
                let store = Arc::clone(&self.store);
                let what = format!("fetching {location}");
                let bytes = self
                    .block(async move { store.get(&location).await?.bytes().await })?
                    .map_err(|error| self.store_failed(&what, error))?;
                super::verify(&bytes, &manifest, &shown)?;
                crate::metrics::repository_fetched(bytes.len() as u64);
                self.cache.put(&manifest.sha256, &bytes)?
            }
        };
        self.cache.put_manifest(model, version, &text)?;
        Ok((manifest, file))
    }

    /// One version's manifest as written, and when it was uploaded: what a search reads. The
    /// cached manifest when the store is out of reach.
    pub(super) fn describe(&self, model: &str, version: &VersionId) -> Result<Described, RepositoryError> {
        let location = self.path(&[model, version.as_str(), MANIFEST_FILE]);
        let store = Arc::clone(&self.store);
        let path = location.clone();
        let fetched = self.block(async move {
            let got = store.get(&path).await?;
            let modified = got.meta.last_modified;
            Ok::<_, object_store::Error>((got.bytes().await?, modified))
        })?;
        let (text, created) = match fetched {
            Ok((bytes, modified)) => (String::from_utf8_lossy(&bytes).into_owned(), Some(SystemTime::from(modified))),
            Err(object_store::Error::NotFound { .. }) => {
                return Err(RepositoryError::NoVersion { model: model.to_owned(), version: version.clone() });
            }
            Err(error) => match self.cache.manifest(model, version) {
                Some(text) => (text, None),
                None => return Err(self.store_failed(&format!("reading {location}"), error)),
            },
        };
        let shown = PathBuf::from(format!("{}/{location}", self.root));
        Described::from_text(&text, &shown, created)
    }

    /// The sha256 of every version loaded now: the cache keeps their files whatever its bound.
    pub(super) fn in_use(&self, sha256s: BTreeSet<String>) {
        *self.cache.pinned.lock() = sha256s;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_their_scheme_bucket_and_prefix() {
        assert_eq!(split("s3://models/team/a").unwrap(), ("s3", "models", "team/a"));
        assert_eq!(split("gs://models").unwrap(), ("gs", "models", ""));
        assert_eq!(split("az://container/x/").unwrap(), ("az", "container", "x"));
        for bad in ["ftp://x/y", "s3:/x", "s3:///prefix"] {
            let message = split(bad).unwrap_err().to_string();
            assert!(message.contains(bad), "{message}");
        }
    }
}
