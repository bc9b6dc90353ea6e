//! The live models. Per served name, one `Deployment` behind an `ArcSwap`: its champion and every
//! loaded version, swapped whole so a request sees one consistent set.
//!
//! Every version reaches service through one path, `load_version`: read and verify from the
//! repository → load with its backend (signature checked) → validate on the manifest's reference
//! rows → warm up (and time, to decide where it runs). A failed step leaves what serves unchanged
//! and names the step. Startup assembles each deployment from what it loaded; every later change
//! (`change`) goes through the same loading path, is saved (`state`) and swapped in whole.

mod change;
pub mod state;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use parking_lot::Mutex;

pub use self::change::{Change, ChangeError, Origin};
pub use self::state::{DeploymentState, StateStore};

use crate::config::Config;
use crate::metrics::VersionMetrics;
use crate::model::{Backend, BackendChoice, DataType, Loader, Model, ModelError, Tensor, TensorData};
use crate::outcomes::Role;
use crate::repository::{Manifest, Repository, RepositoryError, Tolerance, VersionId};
use crate::traffic::{Canary, TrafficPlan};

/// All served models, by name, and what it takes to change them.
pub struct Registry {
    models: BTreeMap<String, ServedModel>,
    repository: Repository,
    loader: Loader,
    hook: Option<ModelHook>,
    state: StateStore,
    /// Held while a change is worked out and applied: changes never interleave.
    changes: Mutex<()>,
}

/// One served model name and its current deployment.
pub struct ServedModel {
    name: String,
    deployment: ArcSwap<Deployment>,
    settings: LoadSettings,
}

/// The versions of one model that serve together: the champion answers, the challengers shadow it,
/// every loaded version can be called directly.
pub struct Deployment {
    champion: Arc<ModelVersion>,
    challengers: Vec<Arc<ModelVersion>>,
    versions: BTreeMap<VersionId, Arc<ModelVersion>>,
    /// Versions on disk that were refused, and why: shown in metadata, never served.
    refused: BTreeMap<VersionId, String>,
    plan: TrafficPlan,
    /// The challenger that answers the plan's canary share, resolved once here.
    canary: Option<Arc<ModelVersion>>,
    /// Header whose value picks the canary (lower case), if configured.
    canary_key_header: Option<String>,
    /// Earlier champions, most recent last.
    previous: Vec<VersionId>,
}

/// What a deployment is made of, from configuration.
#[derive(Clone, Debug)]
pub struct DeploymentSpec {
    pub name: String,
    pub champion: VersionId,
    pub challengers: Vec<VersionId>,
    /// Versions to load; `None`: every version in the repository.
    pub versions: Option<Vec<VersionId>>,
    pub settings: LoadSettings,
    pub plan: TrafficPlan,
    pub canary_key_header: Option<String>,
    pub previous: Vec<VersionId>,
}

/// Wraps each model after it passed validation: how tests inject faults (errors, panics, slowness)
/// into a real model. Not reachable from configuration.
pub type ModelHook = Arc<dyn Fn(&str, &VersionId, Box<dyn Model>) -> Box<dyn Model> + Send + Sync>;

/// How a version is loaded: its backend, and the warm-up that times it.
#[derive(Clone, Copy, Debug)]
pub struct LoadSettings {
    pub backend: BackendChoice,
    pub warmup_runs: usize,
    pub inline_max: Duration,
}

/// Where a request's inference runs (see `executor`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    Inline,
    Pool,
}

/// One loaded, validated, warmed-up model version.
pub struct ModelVersion {
    name: String,
    version: VersionId,
    manifest: Manifest,
    model: Box<dyn Model>,
    /// Median one-row time at warm-up.
    one_row: Duration,
    inline_max: Duration,
    metrics: VersionMetrics,
}

// === impl Registry ===

impl Registry {
    /// Loads every configured model (or, with none configured, every model in the repository with
    /// its highest version as champion), with the saved state, when there is one, taking precedence
    /// over configuration for the models it names. A version that fails is refused and logged; a
    /// champion that fails stops startup.
    pub fn load(
        config: &Config,
        repository: Repository,
        loader: Loader,
        hook: Option<ModelHook>,
        state: StateStore,
    ) -> Result<Self, RegistryError> {
        let saved = state.load().map_err(RegistryError::State)?;
        let mut registry = Self { models: BTreeMap::new(), repository, loader, hook, state, changes: Mutex::new(()) };
        for mut spec in specs(config, &registry.repository)? {
            if let Some(saved) = saved.get(&spec.name) {
                tracing::info!(model = %spec.name, champion = %saved.champion, "deployment restored from the saved state");
                spec.restore(saved);
            }
            let deployment =
                Deployment::load(&registry, &spec).map_err(|error| match (error, registry.state.state_path()) {
                    (RegistryError::Champion(e), Some(path)) if saved.contains_key(&spec.name) => {
                        RegistryError::SavedChampion(e, path)
                    }
                    (error, _) => error,
                })?;
            deployment.publish_roles(None);
            let name = spec.name;
            let served = ServedModel {
                name: name.clone(),
                deployment: ArcSwap::from_pointee(deployment),
                settings: spec.settings,
            };
            registry.models.insert(name, served);
        }
        Ok(registry)
    }

    /// Loads one version through the one path, with the test hook if one is set.
    fn load_one(&self, name: &str, version: &VersionId, settings: LoadSettings) -> Result<ModelVersion, LoadError> {
        let mut loaded = load_version(&self.repository, &self.loader, name, version, settings)?;
        if let Some(hook) = &self.hook {
            loaded.model = hook(name, version, loaded.model);
        }
        tracing::info!(
            model = name, version = %version, backend = %loaded.backend(), placement = ?loaded.placement(1),
            one_row_us = %format!("{:.1}", loaded.one_row.as_secs_f64() * 1e6), "version loaded"
        );
        Ok(loaded)
    }

    pub fn repository(&self) -> &Repository {
        &self.repository
    }

    pub fn model(&self, name: &str) -> Option<&ServedModel> {
        self.models.get(name)
    }

    pub fn models(&self) -> impl Iterator<Item = &ServedModel> {
        self.models.values()
    }
}

/// The deployments configuration asks for; with none configured, every model in the repository
/// with its highest version as champion and no challengers.
fn specs(config: &Config, repository: &Repository) -> Result<Vec<DeploymentSpec>, RegistryError> {
    let settings = |backend: Option<BackendChoice>| LoadSettings {
        backend: backend.unwrap_or(config.backend),
        warmup_runs: config.warmup_runs,
        inline_max: config.inline_max(),
    };
    if config.models.is_empty() {
        let mut all = Vec::new();
        for name in repository.models()? {
            let champion =
                repository.versions(&name)?.last().cloned().ok_or_else(|| RepositoryError::NoModel(name.clone()))?;
            all.push(DeploymentSpec {
                name,
                champion,
                challengers: Vec::new(),
                versions: None,
                settings: settings(None),
                plan: TrafficPlan::default(),
                canary_key_header: None,
                previous: Vec::new(),
            });
        }
        return Ok(all);
    }
    Ok(config
        .models
        .iter()
        .map(|(name, m)| DeploymentSpec {
            name: name.clone(),
            champion: m.champion.clone(),
            challengers: m.challengers.clone(),
            versions: m.versions.clone(),
            settings: settings(m.backend),
            plan: TrafficPlan {
                shadow_sample_rate: m.shadow_sample_rate,
                canary: m.canary.as_ref().map(|c| Canary { version: c.version.clone(), share: c.share }),
            },
            canary_key_header: m.canary.as_ref().and_then(|c| c.key_header.as_ref()).map(|h| h.to_ascii_lowercase()),
            previous: Vec::new(),
        })
        .collect())
}

impl DeploymentSpec {
    /// Takes champion, challengers, sampling, versions and history from the saved state.
    fn restore(&mut self, saved: &DeploymentState) {
        self.champion = saved.champion.clone();
        self.challengers = saved.challengers.clone();
        self.plan.shadow_sample_rate = saved.shadow_sample_rate;
        self.versions = Some(saved.versions.clone());
        self.previous = saved.previous.clone();
    }
}

// === impl ServedModel ===

impl ServedModel {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The current deployment: one atomic load, cheap enough for every request.
    pub fn deployment(&self) -> Arc<Deployment> {
        self.deployment.load_full()
    }
}

// === impl Deployment ===

impl Deployment {
    /// The deployment at startup: every version through `Registry::load_one`, then assembled.
    fn load(registry: &Registry, spec: &DeploymentSpec) -> Result<Self, RegistryError> {
        let (name, champion) = (spec.name.as_str(), &spec.champion);
        let versions = match &spec.versions {
            Some(v) => v.clone(),
            None => registry.repository.versions(name)?,
        };
        let mut loaded = BTreeMap::new();
        let mut refused = BTreeMap::new();
        for version in &versions {
            match registry.load_one(name, version, spec.settings) {
                Ok(v) => {
                    loaded.insert(version.clone(), Arc::new(v));
                }
                Err(error) if version == champion => return Err(RegistryError::Champion(error)),
                Err(error) => {
                    tracing::warn!(model = name, version = %version, %error, "version refused");
                    refused.insert(version.clone(), error.to_string());
                }
            }
        }
        let champion = loaded.get(champion).cloned().ok_or_else(|| {
            RegistryError::Champion(LoadError {
                model: name.to_owned(),
                version: champion.clone(),
                step: LoadStep::Repository,
                message: "the champion is not among the versions to load".to_owned(),
            })
        })?;
        let mut challengers = Vec::new();
        for id in &spec.challengers {
            let Some(version) = loaded.get(id) else {
                tracing::warn!(model = name, version = %id, "challenger not loaded; the deployment goes on without it");
                continue;
            };
            match compatible(champion.manifest(), version.manifest()) {
                Ok(()) => challengers.push(Arc::clone(version)),
                Err(reason) => {
                    tracing::warn!(model = name, version = %id, %reason, "challenger refused");
                    loaded.remove(id);
                    refused.insert(id.clone(), format!("{name}/{id} cannot challenge {}: {reason}", champion.version));
                }
            }
        }
        let mut plan = spec.plan.clone();
        let canary = plan.canary.as_ref().and_then(|c| challengers.iter().find(|v| v.version == c.version).cloned());
        if let Some(wanted) = &plan.canary
            && canary.is_none()
        {
            tracing::warn!(model = name, version = %wanted.version, "canary version is not a serving challenger; no canary");
            plan.canary = None;
        }
        Ok(Self {
            champion,
            challengers,
            versions: loaded,
            refused,
            plan,
            canary,
            canary_key_header: spec.canary_key_header.clone(),
            previous: spec.previous.clone(),
        })
    }

    /// Sets each version's role gauge, and clears those of versions `before` had and this has not.
    fn publish_roles(&self, before: Option<&Deployment>) {
        for version in self.versions.values() {
            let role = match self.member_index(version) {
                usize::MAX => "available",
                _ => self.role_of(version).label(),
            };
            version.metrics.loaded(version.backend().as_str(), Some(role));
        }
        for gone in before.into_iter().flat_map(|b| b.versions.values()) {
            if !self.versions.contains_key(&gone.version) {
                gone.metrics.loaded(gone.backend().as_str(), None);
            }
        }
    }

    /// What is saved for a restart.
    pub fn state(&self) -> DeploymentState {
        DeploymentState {
            champion: self.champion.version.clone(),
            challengers: self.challengers.iter().map(|c| c.version.clone()).collect(),
            shadow_sample_rate: self.plan.shadow_sample_rate,
            versions: self.versions.keys().cloned().collect(),
            previous: self.previous.clone(),
        }
    }

    pub fn challengers(&self) -> &[Arc<ModelVersion>] {
        &self.challengers
    }

    /// Earlier champions, most recent last.
    pub fn previous(&self) -> &[VersionId] {
        &self.previous
    }

    /// The champion, then the challengers in configured order.
    pub fn members(&self) -> impl Iterator<Item = (&Arc<ModelVersion>, Role)> {
        std::iter::once((&self.champion, Role::Champion)).chain(self.challengers.iter().map(|c| (c, Role::Challenger)))
    }

    pub fn role_of(&self, version: &Arc<ModelVersion>) -> Role {
        if Arc::ptr_eq(version, &self.champion) { Role::Champion } else { Role::Challenger }
    }

    /// Position among `members()`; versions outside the deployment sort last.
    pub fn member_index(&self, version: &Arc<ModelVersion>) -> usize {
        self.members().position(|(v, _)| Arc::ptr_eq(v, version)).unwrap_or(usize::MAX)
    }

    pub fn plan(&self) -> &TrafficPlan {
        &self.plan
    }

    /// The version that answers when the plan decides for the canary.
    pub fn canary(&self) -> Option<&Arc<ModelVersion>> {
        self.canary.as_ref()
    }

    pub fn canary_key_header(&self) -> Option<&str> {
        self.canary_key_header.as_deref()
    }

    pub fn champion(&self) -> &Arc<ModelVersion> {
        &self.champion
    }

    pub fn version(&self, id: &str) -> Option<&Arc<ModelVersion>> {
        self.versions.get(&VersionId::new(id))
    }

    pub fn versions(&self) -> impl Iterator<Item = &Arc<ModelVersion>> {
        self.versions.values()
    }

    pub fn refused(&self) -> &BTreeMap<VersionId, String> {
        &self.refused
    }
}

// === impl ModelVersion ===

impl ModelVersion {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn version(&self) -> &VersionId {
        &self.version
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn backend(&self) -> Backend {
        self.model.backend()
    }

    pub fn metrics(&self) -> &VersionMetrics {
        &self.metrics
    }

    /// Median one-row time measured at warm-up.
    pub fn one_row(&self) -> Duration {
        self.one_row
    }

    /// Inline when `rows` rows should take at most `inline_max` at the warm-up's one-row speed.
    pub fn placement(&self, rows: usize) -> Placement {
        if self.one_row.saturating_mul(rows.max(1) as u32) <= self.inline_max {
            Placement::Inline
        } else {
            Placement::Pool
        }
    }

    /// Runs the model (synchronously) and records its time.
    pub fn infer(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, ModelError> {
        let start = Instant::now();
        let result = self.model.infer(inputs);
        self.metrics.model_time(start.elapsed());
        result
    }
}

/// The one path from disk to a servable version.
pub fn load_version(
    repository: &Repository,
    loader: &Loader,
    name: &str,
    version: &VersionId,
    settings: LoadSettings,
) -> Result<ModelVersion, LoadError> {
    let fail = |step: LoadStep, message: String| {
        crate::metrics::load_failed(name, step.label());
        LoadError { model: name.to_owned(), version: version.clone(), step, message }
    };
    let entry = repository.version(name, version).map_err(|e| fail(LoadStep::Repository, e.to_string()))?;
    let manifest = entry.manifest;
    let model = loader
        .load(&entry.model_path, &manifest.signature(), settings.backend)
        .map_err(|e| fail(LoadStep::Backend, e.to_string()))?;
    let reference =
        manifest.reference.input_tensors(&manifest.inputs).map_err(|e| fail(LoadStep::Validation, e.to_string()))?;
    validate(model.as_ref(), &manifest, &reference).map_err(|message| fail(LoadStep::Validation, message))?;
    let one_row =
        warm_up(model.as_ref(), &reference, settings.warmup_runs).map_err(|e| fail(LoadStep::WarmUp, e.to_string()))?;
    let metrics = VersionMetrics::new(name, version.as_str(), model.backend().as_str());
    Ok(ModelVersion {
        name: name.to_owned(),
        version: version.clone(),
        manifest,
        model,
        one_row,
        inline_max: settings.inline_max,
        metrics,
    })
}

/// A challenger scores the champion's decoded input and its outputs are compared with the
/// champion's: both signatures must be the same.
fn compatible(champion: &Manifest, challenger: &Manifest) -> Result<(), String> {
    if champion.inputs != challenger.inputs {
        return Err(format!("inputs {:?} differ from the champion's {:?}", challenger.inputs, champion.inputs));
    }
    if champion.outputs != challenger.outputs {
        return Err(format!("outputs {:?} differ from the champion's {:?}", challenger.outputs, champion.outputs));
    }
    Ok(())
}

/// Runs the reference rows and compares every output with the manifest's: integer outputs (class
/// labels) exactly, floating ones within the manifest's tolerance.
pub fn validate(model: &dyn Model, manifest: &Manifest, reference: &[Tensor]) -> Result<(), String> {
    let expected = manifest.reference.output_tensors(&manifest.outputs).map_err(|e| e.to_string())?;
    let actual = model.infer(reference).map_err(|e| format!("the reference rows fail: {e}"))?;
    let tolerance = manifest.reference.tolerance;
    for ((spec, want), got) in manifest.outputs.iter().zip(&expected).zip(&actual) {
        compare_output(&spec.name, want, got, tolerance)?;
    }
    Ok(())
}

fn compare_output(name: &str, want: &Tensor, got: &Tensor, tolerance: Tolerance) -> Result<(), String> {
    // A [n] label vector and an [n, 1] column are the same values; compare element counts and rows.
    if want.data().len() != got.data().len() || want.shape().first() != got.shape().first() {
        return Err(format!("output '{name}' has shape {:?}, the manifest expects {:?}", got.shape(), want.shape()));
    }
    let exact = matches!(want.datatype(), DataType::Int64 | DataType::Int32 | DataType::Bool);
    let per_row = want.data().len() / want.shape().first().copied().unwrap_or(1).max(1);
    let (w, g) = (want.data().to_f64(), got.data().to_f64());
    let mismatches: Vec<usize> = (0..w.len())
        .filter(|&i| if exact { w[i] != g[i] } else { !tolerance.accepts(w[i], g[i]) || g[i].is_nan() })
        .collect();
    if let Some(&first) = mismatches.first() {
        return Err(format!(
            "output '{name}' differs from the manifest on {} of {} values; first at row {}: expected {}, got {}{}",
            mismatches.len(),
            w.len(),
            first / per_row.max(1),
            w[first],
            g[first],
            if exact { " (labels must match exactly)".to_owned() } else { format!(" (tolerance {tolerance:?})") }
        ));
    }
    if let TensorData::Fp32(_) | TensorData::Fp64(_) = got.data()
        && got.data().first_non_finite().is_some()
    {
        return Err(format!("output '{name}' contains NaN or infinity"));
    }
    Ok(())
}

/// Runs the first reference row `runs` times; returns the median time.
fn warm_up(model: &dyn Model, reference: &[Tensor], runs: usize) -> Result<Duration, ModelError> {
    let one_row: Vec<Tensor> = reference.iter().map(first_row).collect::<Result<_, _>>()?;
    let mut times = Vec::with_capacity(runs.max(1));
    for _ in 0..runs.max(1) {
        let start = Instant::now();
        model.infer(&one_row)?;
        times.push(start.elapsed());
    }
    times.sort();
    Ok(times[times.len() / 2])
}

fn first_row(tensor: &Tensor) -> Result<Tensor, ModelError> {
    let rows = tensor.shape().first().copied().unwrap_or(1).max(1);
    let per_row = tensor.data().len() / rows;
    let data = match tensor.data() {
        TensorData::Fp32(v) => TensorData::Fp32(v[..per_row].to_vec()),
        TensorData::Fp64(v) => TensorData::Fp64(v[..per_row].to_vec()),
        TensorData::Int64(v) => TensorData::Int64(v[..per_row].to_vec()),
        TensorData::Int32(v) => TensorData::Int32(v[..per_row].to_vec()),
        TensorData::Bool(v) => TensorData::Bool(v[..per_row].to_vec()),
    };
    let mut shape = tensor.shape().to_vec();
    if let Some(first) = shape.first_mut() {
        *first = 1;
    }
    Ok(Tensor::new(shape, data)?)
}

/// The step of `load_version` that refused a version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadStep {
    /// Manifest missing or invalid, model file missing or corrupt (sha256).
    Repository,
    /// The backend cannot load the file, or its signature is not the manifest's.
    Backend,
    /// Its inputs or outputs differ from the deployment's.
    Signature,
    /// The reference rows give other outputs than the manifest's.
    Validation,
    WarmUp,
}

impl LoadStep {
    pub fn label(self) -> &'static str {
        match self {
            Self::Repository => "repository",
            Self::Backend => "backend",
            Self::Signature => "signature",
            Self::Validation => "validation",
            Self::WarmUp => "warm_up",
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{model}/{version} refused at {}: {message}", step.label())]
pub struct LoadError {
    pub model: String,
    pub version: VersionId,
    pub step: LoadStep,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("a champion cannot serve: {0}")]
    Champion(#[source] LoadError),
    #[error("the champion saved in {1} cannot serve (remove that file to start from the configuration): {0}")]
    SavedChampion(#[source] LoadError, std::path::PathBuf),
    #[error(transparent)]
    Repository(#[from] RepositoryError),
    #[error("reading the saved deployment state: {0}")]
    State(std::io::Error),
}

impl fmt::Debug for ModelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModelVersion")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("backend", &self.backend())
            .field("one_row", &self.one_row)
            .finish()
    }
}
