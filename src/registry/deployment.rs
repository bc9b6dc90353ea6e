//! The versions of one model that serve together, swapped whole: what a request sees.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::Registry;
use super::RegistryError;
use super::Role;
use super::load::{LoadError, LoadStep, compatible};
use super::store::DeploymentState;
use super::version::{LoadSettings, ModelVersion};
use crate::repository::VersionId;
use crate::traffic::TrafficPlan;

/// The versions of one model that serve together: the champion answers, the challengers shadow it,
/// every loaded version can be called directly.
pub struct Deployment {
    pub(super) champion: Arc<ModelVersion>,
    pub(super) challengers: Vec<Arc<ModelVersion>>,
    pub(super) versions: BTreeMap<VersionId, Arc<ModelVersion>>,
    /// Versions on disk that were refused, and why: shown in metadata, never served.
    pub(super) refused: BTreeMap<VersionId, String>,
    pub(super) plan: TrafficPlan,
    /// The challenger that answers the plan's canary share, resolved once here.
    pub(super) canary: Option<Arc<ModelVersion>>,
    /// Header whose value picks the canary (lower case), if configured.
    pub(super) canary_key_header: Option<String>,
    /// Earlier champions, most recent last.
    pub(super) previous: Vec<VersionId>,
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

impl DeploymentSpec {
    /// Takes champion, challengers, sampling, versions and history from the saved state.
    pub(super) fn restore(&mut self, saved: &DeploymentState) {
        self.champion = saved.champion.clone();
        self.challengers = saved.challengers.clone();
        self.plan.shadow_sample_rate = saved.shadow_sample_rate;
        self.versions = Some(saved.versions.clone());
        self.previous = saved.previous.clone();
    }
}

// === impl Deployment ===

impl Deployment {
    /// The deployment at startup: every version through `Registry::load_one`, then assembled.
    pub(super) fn load(registry: &Registry, spec: &DeploymentSpec) -> Result<Self, RegistryError> {
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
    pub(super) fn publish_roles(&self, before: Option<&Deployment>) {
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
