//! The model repository, laid out as Triton lays it out: `<root>/<model>/<version>/model.onnx` with
//! our `manifest.json` beside it, in a folder (`models_dir`, `file://`), in object storage
//! (`s3://`, `gs://`, `az://`: `objects`), or registered in an MLflow Model Registry
//! (`mlflow+http(s)://`: `mlflow`).
//!
//! Invariant: a read-only view of where versions live, and the seam the registry reads through.
//! It never holds live models; it hands the registry a verified `VersionEntry` (manifest parsed
//! and consistent, model file's sha256 checked, a local file to load) and nothing else, and a
//! search a `Described` per version. Writing the MLflow champion alias is its one write, and it
//! never waits for it. Its calls block: never on the request path.

pub mod holdout;
mod mlflow;
mod objects;
pub mod profile;
mod remote;
pub mod search;

pub use self::mlflow::MlflowAliases;
pub use self::objects::FetchSettings;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::model::{Signature, Tensor, TensorError, TensorSpec};

pub const MANIFEST_FILE: &str = "manifest.json";

/// A version id as the repository names its folders ("1", "2", ...). Sorted numerically when both
/// sides are numbers, so "10" comes after "9".
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct VersionId(String);

/// Accepts `"2"` and `2`: configuration written by hand or set from the environment uses both.
impl<'de> Deserialize<'de> for VersionId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = VersionId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a version such as \"1\" or 1")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<VersionId, E> {
                if v.is_empty() || v.contains(['/', '\\']) || v.starts_with('.') {
                    return Err(E::custom(format!("invalid version '{v}'")));
                }
                Ok(VersionId::new(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<VersionId, E> {
                Ok(VersionId::new(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<VersionId, E> {
                u64::try_from(v)
                    .map(|v| VersionId::new(v.to_string()))
                    .map_err(|_| E::custom("a version cannot be negative"))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

impl VersionId {
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Ord for VersionId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        match (self.0.parse::<u64>(), other.0.parse::<u64>()) {
            (Ok(a), Ok(b)) => a.cmp(&b),
            _ => self.0.cmp(&other.0),
        }
    }
}

impl PartialOrd for VersionId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for VersionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What the training script wrote about one model version.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Manifest {
    pub name: String,
    pub version: VersionId,
    #[serde(default)]
    pub description: String,
    pub task: Task,
    #[serde(default = "default_model_file")]
    pub model_file: String,
    pub sha256: String,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    /// Names of inputs that may carry NaN or infinity; every other float input refuses them.
    #[serde(default)]
    pub allow_non_finite: Vec<String>,
    /// Data fingerprint, split and framework versions: kept as written, shown to operators.
    #[serde(default)]
    pub training: serde_json::Value,
    #[serde(default)]
    pub holdout_metrics: BTreeMap<String, f64>,
    pub reference: Reference,
    /// The training data's distribution, which drift is measured against; absent: no drift.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<profile::Profile>,
}

fn default_model_file() -> String {
    "model.onnx".to_owned()
}

impl Manifest {
    pub fn signature(&self) -> Signature {
        Signature { inputs: self.inputs.clone(), outputs: self.outputs.clone() }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Task {
    Classification {
        classes: Vec<i64>,
        #[serde(default)]
        class_names: Vec<String>,
        label_output: String,
        #[serde(default)]
        probabilities_output: Option<String>,
    },
    Regression {
        prediction_output: String,
    },
}

/// Reference rows and the outputs the model must give for them (within tolerance) before it serves.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Reference {
    pub tolerance: Tolerance,
    /// Input name → nested arrays (rows × features).
    pub inputs: BTreeMap<String, serde_json::Value>,
    /// Output name → nested arrays.
    pub outputs: BTreeMap<String, serde_json::Value>,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize)]
pub struct Tolerance {
    pub absolute: f64,
    pub relative: f64,
}

impl Tolerance {
    pub fn accepts(&self, expected: f64, actual: f64) -> bool {
        (expected - actual).abs() <= self.absolute + self.relative * expected.abs()
    }
}

impl Reference {
    /// The reference inputs as tensors in signature order.
    pub fn input_tensors(&self, specs: &[TensorSpec]) -> Result<Vec<Tensor>, RepositoryError> {
        specs.iter().map(|spec| self.tensor(&self.inputs, spec, "input")).collect()
    }

    /// The expected outputs as tensors in signature order.
    pub fn output_tensors(&self, specs: &[TensorSpec]) -> Result<Vec<Tensor>, RepositoryError> {
        specs.iter().map(|spec| self.tensor(&self.outputs, spec, "output")).collect()
    }

    fn tensor(
        &self,
        values: &BTreeMap<String, serde_json::Value>,
        spec: &TensorSpec,
        kind: &str,
    ) -> Result<Tensor, RepositoryError> {
        let value = values
            .get(&spec.name)
            .ok_or_else(|| RepositoryError::Reference(format!("no reference {kind} '{}'", spec.name)))?;
        Tensor::from_nested_json(value, spec.datatype)
            .map_err(|e: TensorError| RepositoryError::Reference(format!("reference {kind} '{}': {e}", spec.name)))
    }
}

/// A verified version on disk: its manifest parsed, its model file's sha256 checked.
#[derive(Clone, Debug)]
pub struct VersionEntry {
    pub manifest: Manifest,
    pub model_path: PathBuf,
}

/// One version as a search sees it: its manifest as written (without the reference rows and the
/// training profile) and what its source knows of it.
#[derive(Clone, Debug)]
pub struct Described {
    /// The manifest's keys, as written.
    pub document: serde_json::Value,
    /// When the version was registered (MLflow) or its manifest written or uploaded.
    pub created: Option<SystemTime>,
    /// MLflow: the run that logged it, its source URI, its tags and aliases.
    pub run_id: Option<String>,
    pub source: Option<String>,
    pub tags: BTreeMap<String, String>,
    pub aliases: Vec<String>,
}

impl Described {
    fn from_text(text: &str, path: &Path, created: Option<SystemTime>) -> Result<Self, RepositoryError> {
        let mut document: serde_json::Value =
            serde_json::from_str(text).map_err(|e| RepositoryError::Manifest { path: path.to_owned(), source: e })?;
        let Some(object) = document.as_object_mut() else {
            return Err(RepositoryError::Inconsistent(format!("{} is not a JSON object", path.display())));
        };
        // Kept out of answers: hundreds of numbers no one searches.
        object.remove("reference");
        object.remove("profile");
        Ok(Self { document, created, run_id: None, source: None, tags: BTreeMap::new(), aliases: Vec::new() })
    }
}

/// A model's versions as a search sees them, each described or with why it cannot be.
pub type Catalog = Vec<(VersionId, Result<Described, RepositoryError>)>;

/// Where versions live: a folder, object storage or an MLflow registry (fetched into a local cache).
#[derive(Clone, Debug)]
pub struct Repository {
    source: Source,
}

#[derive(Clone, Debug)]
enum Source {
    Files(PathBuf),
    Objects(Arc<objects::Objects>),
    Mlflow(Arc<mlflow::Mlflow>),
}

impl Repository {
    /// A repository in a folder (`models_dir`).
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, RepositoryError> {
        let root = root.into();
        if !root.is_dir() {
            return Err(RepositoryError::NoRoot(root));
        }
        Ok(Self { source: Source::Files(root) })
    }

    /// A repository by URL (`repository`): `file:///path`, `s3://bucket/prefix`, `gs://…`, `az://…`,
    /// `mlflow+http(s)://host:port`. Nothing is fetched yet; a bad URL or option (or credentials
    /// an MLflow registry refuses) is refused here.
    /// `options`: the store client's keys (`[repository_options]`); the cache is under `state_dir`
    /// unless `fetch` names one; `aliases`: `[models.<name>.mlflow]`, for an MLflow registry.
    pub fn connect(
        url: &str,
        options: &BTreeMap<String, String>,
        fetch: &FetchSettings,
        state_dir: &Path,
        aliases: BTreeMap<String, MlflowAliases>,
    ) -> Result<Self, RepositoryError> {
        if let Some(path) = url.strip_prefix("file://") {
            return Self::open(path);
        }
        if url.starts_with("mlflow+") {
            if let Some(key) = options.keys().next() {
                return Err(RepositoryError::Url {
                    url: url.to_owned(),
                    message: format!("repository_options.{key}: an MLflow registry takes no store options"),
                });
            }
            let registry = mlflow::Mlflow::connect(url, fetch, state_dir, aliases)?;
            return Ok(Self { source: Source::Mlflow(Arc::new(registry)) });
        }
        let objects = objects::Objects::connect(url, options, fetch, state_dir)?;
        Ok(Self { source: Source::Objects(Arc::new(objects)) })
    }

    /// What kind of source: `folder`, `s3`, `gs`, `az` or `mlflow`.
    pub fn kind(&self) -> &'static str {
        match &self.source {
            Source::Files(_) => "folder",
            Source::Objects(objects) if objects.url().starts_with("s3") => "s3",
            Source::Objects(objects) if objects.url().starts_with("gs") => "gs",
            Source::Objects(_) => "az",
            Source::Mlflow(_) => "mlflow",
        }
    }

    /// The folder, for a repository on disk.
    pub fn root(&self) -> Option<&Path> {
        match &self.source {
            Source::Files(root) => Some(root),
            Source::Objects(_) | Source::Mlflow(_) => None,
        }
    }

    /// Where it is, as configured: a folder or a URL.
    pub fn location(&self) -> String {
        match &self.source {
            Source::Files(root) => root.display().to_string(),
            Source::Objects(objects) => objects.url().to_owned(),
            Source::Mlflow(registry) => registry.url().to_owned(),
        }
    }

    /// The sha256 of every loaded version: a cache keeps their files (object storage, MLflow).
    pub fn in_use(&self, sha256s: BTreeSet<String>) {
        match &self.source {
            Source::Files(_) => {}
            Source::Objects(objects) => objects.in_use(sha256s),
            Source::Mlflow(registry) => registry.set_in_use(sha256s),
        }
    }

    /// For a model whose new versions are chosen by an MLflow alias (`challenger_alias`): the
    /// version the alias names now. `None`: every new version is a candidate.
    pub fn challenger_alias(&self, model: &str) -> Option<Result<Option<VersionId>, RepositoryError>> {
        match &self.source {
            Source::Mlflow(registry) => registry.challenger(model),
            _ => None,
        }
    }

    /// Tells the source which version is now `model`'s champion (MLflow: `champion_alias`, when
    /// configured, written back without waiting).
    pub fn champion_is(&self, model: &str, version: &VersionId) {
        if let Source::Mlflow(registry) = &self.source {
            registry.champion_is(model, version);
        }
    }

    /// Every version of `model` as a search sees it; a version whose manifest cannot be read is
    /// there with its error.
    pub fn describe_all(&self, model: &str) -> Result<Catalog, RepositoryError> {
        if let Source::Mlflow(registry) = &self.source {
            return registry.describe_all(model);
        }
        let versions = self.versions(model)?;
        Ok(versions
            .into_iter()
            .map(|version| {
                let described = match &self.source {
                    Source::Objects(objects) => objects.describe(model, &version),
                    _ => self.describe_file(model, &version),
                };
                (version, described)
            })
            .collect())
    }

    fn describe_file(&self, model: &str, version: &VersionId) -> Result<Described, RepositoryError> {
        let root = self.root().unwrap_or(Path::new(""));
        let path = root.join(model).join(version.as_str()).join(MANIFEST_FILE);
        let io = |e| RepositoryError::Io { path: path.clone(), source: e };
        let text = fs::read_to_string(&path).map_err(io)?;
        let created = fs::metadata(&path).and_then(|m| m.modified()).ok();
        Described::from_text(&text, &path, created)
    }

    /// Model names: the folders (prefixes) under the root that hold at least one version.
    pub fn models(&self) -> Result<Vec<String>, RepositoryError> {
        let root = match &self.source {
            Source::Files(root) => root,
            Source::Objects(objects) => return objects.models(),
            Source::Mlflow(registry) => return registry.models(),
        };
        let mut names = Vec::new();
        for entry in read_dir(root)? {
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else { continue };
            if entry.path().is_dir() && !name.starts_with('.') && !self.versions(&name)?.is_empty() {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    /// Version folders of a model (those with a manifest), in version order.
    pub fn versions(&self, model: &str) -> Result<Vec<VersionId>, RepositoryError> {
        let root = match &self.source {
            Source::Files(root) => root,
            Source::Objects(objects) => return objects.versions(model),
            Source::Mlflow(registry) => return registry.versions(model),
        };
        let dir = root.join(model);
        if !dir.is_dir() {
            return Err(RepositoryError::NoModel(model.to_owned()));
        }
        let mut versions: Vec<VersionId> = read_dir(&dir)?
            .filter(|entry| entry.path().join(MANIFEST_FILE).is_file())
            .filter_map(|entry| entry.file_name().to_str().map(VersionId::new))
            .collect();
        versions.sort();
        Ok(versions)
    }

    /// Reads and verifies one version: the manifest parses and names this model and version, and the
    /// model file's sha256 is the manifest's.
    pub fn version(&self, model: &str, version: &VersionId) -> Result<VersionEntry, RepositoryError> {
        let root = match &self.source {
            Source::Files(root) => root,
            Source::Objects(objects) => {
                let (manifest, model_path) = objects.version(model, version)?;
                return Ok(VersionEntry { manifest, model_path });
            }
            Source::Mlflow(registry) => {
                let (manifest, model_path) = registry.version(model, version)?;
                return Ok(VersionEntry { manifest, model_path });
            }
        };
        let dir = root.join(model).join(version.as_str());
        let manifest_path = dir.join(MANIFEST_FILE);
        let text = fs::read_to_string(&manifest_path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound if dir.is_dir() => {
                RepositoryError::Inconsistent(format!("{} has no {MANIFEST_FILE}", dir.display()))
            }
            io::ErrorKind::NotFound => RepositoryError::NoVersion { model: model.to_owned(), version: version.clone() },
            _ => RepositoryError::Io { path: manifest_path.clone(), source: e },
        })?;
        let manifest = checked_manifest(&text, model, version, &manifest_path)?;
        let model_path = dir.join(&manifest.model_file);
        let bytes = fs::read(&model_path).map_err(|e| RepositoryError::Io { path: model_path.clone(), source: e })?;
        verify(&bytes, &manifest, &model_path)?;
        Ok(VersionEntry { manifest, model_path })
    }
}

/// A manifest parsed and checked: it names this model and version, and its shapes are valid.
fn checked_manifest(text: &str, model: &str, version: &VersionId, path: &Path) -> Result<Manifest, RepositoryError> {
    let manifest: Manifest =
        serde_json::from_str(text).map_err(|e| RepositoryError::Manifest { path: path.to_owned(), source: e })?;
    if manifest.name != model || manifest.version != *version {
        return Err(RepositoryError::Inconsistent(format!(
            "{} says it is {}/{} but lives in {model}/{version}",
            path.display(),
            manifest.name,
            manifest.version
        )));
    }
    check_datatypes(&manifest)?;
    Ok(manifest)
}

/// The model file's bytes hash to the manifest's sha256.
fn verify(bytes: &[u8], manifest: &Manifest, path: &Path) -> Result<(), RepositoryError> {
    let actual = hex::encode(Sha256::digest(bytes));
    if !actual.eq_ignore_ascii_case(&manifest.sha256) {
        return Err(RepositoryError::Checksum { path: path.to_owned(), expected: manifest.sha256.clone(), actual });
    }
    Ok(())
}

fn check_datatypes(manifest: &Manifest) -> Result<(), RepositoryError> {
    for spec in manifest.inputs.iter().chain(&manifest.outputs) {
        if spec.shape.iter().any(|&d| d < -1) {
            return Err(RepositoryError::Inconsistent(format!(
                "'{}' has an invalid shape {:?}",
                spec.name, spec.shape
            )));
        }
    }
    Ok(())
}

fn read_dir(dir: &Path) -> Result<impl Iterator<Item = fs::DirEntry>, RepositoryError> {
    Ok(fs::read_dir(dir).map_err(|e| RepositoryError::Io { path: dir.to_owned(), source: e })?.filter_map(Result::ok))
}

#[derive(Debug, thiserror::Error)]
pub enum RepositoryError {
    #[error("model repository {} is not a directory", .0.display())]
    NoRoot(PathBuf),
    #[error("model '{0}' is not in the repository")]
    NoModel(String),
    #[error("version '{version}' of model '{model}' is not in the repository")]
    NoVersion { model: String, version: VersionId },
    #[error("reading {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("manifest {} is invalid: {source}", path.display())]
    Manifest {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{} is corrupt: sha256 {actual}, manifest says {expected}", path.display())]
    Checksum { path: PathBuf, expected: String, actual: String },
    #[error("{0}")]
    Inconsistent(String),
    #[error("repository {url}: {message}")]
    Url { url: String, message: String },
    #[error("the model store {url} failed: {message}")]
    Store { url: String, message: String },
    #[error("{0}")]
    Reference(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_sort_numerically() {
        let mut v: Vec<VersionId> = ["10", "2", "1", "b", "a"].into_iter().map(VersionId::new).collect();
        v.sort();
        let sorted: Vec<&str> = v.iter().map(VersionId::as_str).collect();
        assert_eq!(sorted, ["1", "2", "10", "a", "b"]);
    }

    #[test]
    fn tolerance_is_absolute_plus_relative() {
        let t = Tolerance { absolute: 1e-4, relative: 1e-3 };
        assert!(t.accepts(100.0, 100.09));
        assert!(!t.accepts(100.0, 100.2));
        assert!(t.accepts(0.0, 0.00009));
        assert!(!t.accepts(0.0, 0.0002));
    }

    fn demo() -> Repository {
        Repository::open(concat!(env!("CARGO_MANIFEST_DIR"), "/models")).unwrap()
    }

    #[test]
    fn demo_repository_lists_models_and_versions() {
        let repo = demo();
        assert_eq!(repo.models().unwrap(), ["breast-cancer", "diabetes"]);
        let versions: Vec<String> = repo.versions("breast-cancer").unwrap().iter().map(|v| v.to_string()).collect();
        assert_eq!(versions, ["1", "2", "3", "4"]);
    }

    #[test]
    fn demo_manifest_parses_and_checksum_matches() {
        let entry = demo().version("breast-cancer", &VersionId::new("1")).unwrap();
        let m = &entry.manifest;
        assert_eq!(m.inputs[0].shape, [-1, 30]);
        assert!(matches!(m.task, Task::Classification { .. }));
        let inputs = m.reference.input_tensors(&m.inputs).unwrap();
        assert_eq!(inputs[0].shape()[1], 30);
        assert!(m.holdout_metrics["accuracy"] > 0.9);
    }

    #[test]
    fn corrupt_file_is_refused_by_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let src = demo().root().unwrap().join("diabetes/1");
        let dst = dir.path().join("diabetes/1");
        fs::create_dir_all(&dst).unwrap();
        fs::copy(src.join(MANIFEST_FILE), dst.join(MANIFEST_FILE)).unwrap();
        let mut bytes = fs::read(src.join("model.onnx")).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(dst.join("model.onnx"), bytes).unwrap();
        let err = Repository::open(dir.path()).unwrap().version("diabetes", &VersionId::new("1")).unwrap_err();
        assert!(matches!(err, RepositoryError::Checksum { .. }), "{err}");
    }
}
