//! The live models. Per served name, one `Deployment` behind an `ArcSwap`: its champion and every
//! loaded version, swapped whole so a request sees one consistent set.
//!
//! Every version reaches service through one path, `load_version`: read and verify from the
//! repository → load with its backend (signature checked) → validate on the manifest's reference
//! rows → warm up (and time, to decide where it runs). A failed step leaves what serves unchanged
//! and names the step. Startup assembles each deployment from what it loaded; every later change
//! (`change`) goes through the same loading path, is saved (`store`: a
//! `DeploymentStore`, files by default) and swapped in whole. In a cluster, a change saved by
//! another replica arrives through `follow`: the same loading path and swap, without saving again.

mod batch;
mod change;
mod deployment;
mod load;
mod member;
mod store;
mod version;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use parking_lot::Mutex;

pub use self::batch::{BatchCost, BatchSettings, Batcher, Unrun};
pub use self::change::{Change, ChangeError, Origin};
pub use self::deployment::{Deployment, DeploymentSpec};
pub use self::load::{LoadError, LoadStep, load_version, validate};
pub use self::member::{Role, Status};
pub use self::store::{AuditEntry, DeploymentState, DeploymentStore, Saved, StateFiles, StoreError};
pub use self::version::{LoadSettings, ModelHook, ModelVersion, Placement};

use crate::model::Loader;
use crate::repository::{Repository, RepositoryError, VersionId};
use crate::traffic::TrafficPlan;

/// All served models, by name, and what it takes to change them.
pub struct Registry {
    models: BTreeMap<String, ServedModel>,
    repository: Repository,
    loader: Loader,
    hook: Option<ModelHook>,
    /// Where deployments are saved and changes audited (`StateFiles` in one node).
    store: Box<dyn DeploymentStore>,
    /// Held while a change is worked out and applied: changes never interleave.
    changes: Mutex<()>,
}

/// One served model name and its current deployment.
pub struct ServedModel {
    name: String,
    deployment: ArcSwap<Deployment>,
    settings: LoadSettings,
    /// The store's revision this deployment is (0: none yet, as when the store was unreachable at
    /// start). Written under the change lock.
    applied: AtomicU64,
}

// === impl Registry ===

impl Registry {
    /// Loads every configured model (or, with none configured, every model in the repository with
    /// its highest version as champion), with the saved state, when there is one, taking precedence
    /// over configuration for the models it names. A version that fails is refused and logged; a
    /// champion that fails stops startup, except that a shared store's champion this replica
    /// cannot load (or a shared store out of reach) leaves the model at the configuration's
    /// deployment and revision 0, for the cluster's follower to bring up to date.
    pub fn load(
        initial: InitialDeployments,
        repository: Repository,
        loader: Loader,
        hook: Option<ModelHook>,
        store: Box<dyn DeploymentStore>,
    ) -> Result<Self, RegistryError> {
        let saved = match store.load() {
            Ok(saved) => saved,
            Err(StoreError::Unavailable(reason)) if store.is_shared() => {
                tracing::warn!(%reason, "the deployment store is out of reach: starting from the configuration, not ready until it is read");
                BTreeMap::new()
            }
            Err(error) => return Err(RegistryError::State(error)),
        };
        let specs = initial.specs(&repository)?;
        let mut registry = Self { models: BTreeMap::new(), repository, loader, hook, store, changes: Mutex::new(()) };
        for mut spec in specs {
            let configured = spec.clone();
            let mut revision = 0;
            if let Some(saved) = saved.get(&spec.name) {
                tracing::info!(model = %spec.name, champion = %saved.state.champion, revision = saved.revision, "deployment restored from the saved state");
                spec.restore(&saved.state);
                revision = saved.revision;
            }
            let deployment = match Deployment::load(&registry, &spec) {
                Ok(deployment) => deployment,
                Err(RegistryError::Champion(error)) if revision > 0 && registry.store.is_shared() => {
                    tracing::error!(model = %spec.name, %error, "the store's champion cannot serve here: starting from the configuration, not converged");
                    revision = 0;
                    spec = configured;
                    Deployment::load(&registry, &spec)?
                }
                Err(RegistryError::Champion(e)) if revision > 0 => {
                    let location = registry.store.location().unwrap_or_default();
                    return Err(RegistryError::SavedChampion(e, location));
                }
                Err(error) => return Err(error),
            };
            deployment.publish_roles(None);
            let name = spec.name;
            let served = ServedModel {
                name: name.clone(),
                deployment: ArcSwap::from_pointee(deployment),
                settings: spec.settings,
                applied: AtomicU64::new(revision),
            };
            registry.models.insert(name, served);
        }
        registry.keep_in_cache();
        Ok(registry)
    }

    /// Tells the repository which model files the loaded versions came from: a cache of fetched
    /// versions keeps them whatever its bound. Called after every swap.
    pub(super) fn keep_in_cache(&self) {
        let loaded = self.models.values().flat_map(|m| {
            let deployment = m.deployment();
            deployment.versions().map(|v| v.manifest().sha256.clone()).collect::<Vec<_>>()
        });
        self.repository.in_use(loaded.collect());
    }

    /// Loads one version through the one path, with the test hook if one is set.
    pub(super) fn load_one(
        &self,
        name: &str,
        version: &VersionId,
        settings: LoadSettings,
    ) -> Result<ModelVersion, LoadError> {
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

/// The deployments to start with, from configuration.
#[derive(Clone, Debug)]
pub enum InitialDeployments {
    /// These, as configured.
    Configured(Vec<DeploymentSpec>),
    /// None configured: every model in the repository, its highest version champion, no challengers.
    WholeRepository(LoadSettings),
}

impl InitialDeployments {
    fn specs(self, repository: &Repository) -> Result<Vec<DeploymentSpec>, RegistryError> {
        let settings = match self {
            Self::Configured(specs) => return Ok(specs),
            Self::WholeRepository(settings) => settings,
        };
        let mut all = Vec::new();
        for name in repository.models()? {
            let champion =
                repository.versions(&name)?.last().cloned().ok_or_else(|| RepositoryError::NoModel(name.clone()))?;
            all.push(DeploymentSpec {
                name,
                champion,
                challengers: Vec::new(),
                versions: None,
                settings,
                plan: TrafficPlan::default(),
                canary_key_header: None,
                previous: Vec::new(),
            });
        }
        Ok(all)
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

    /// The store's revision the current deployment is; 0 before it has one.
    pub fn revision(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("a champion cannot serve: {0}")]
    Champion(#[source] LoadError),
    #[error("the champion saved in {1} cannot serve (remove that file to start from the configuration): {0}")]
    SavedChampion(#[source] LoadError, String),
    #[error(transparent)]
    Repository(#[from] RepositoryError),
    #[error("reading the saved deployment state: {0}")]
    State(StoreError),
}
