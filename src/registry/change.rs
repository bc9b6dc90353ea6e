//! Changes to a running deployment: promote, roll back, set challengers, load, unload.
//!
//! One path for all of them: work out the target set of versions → load (repository → backend →
//! validation → warm-up) those not loaded, or loaded anew → check every member's signature against
//! the champion's → save the state → swap the deployment in one atomic store → write the audit log.
//! Changes are serialised; requests never wait for them: they keep the deployment they loaded,
//! and a version is dropped when the last request holding it ends. A refused change leaves what
//! serves as it was and says which step refused it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use super::deployment::Deployment;
use super::load::{LoadError, LoadStep, compatible};
use super::store::{AuditEntry, DeploymentState, StoreError};
use super::version::ModelVersion;
use super::{Registry, ServedModel};
use crate::repository::VersionId;

/// Rollback history kept per model.
const HISTORY: usize = 16;

#[derive(Clone, Debug)]
pub enum Change {
    /// `version` becomes champion; the old champion becomes a challenger when `keep_previous`.
    Promote {
        version: VersionId,
        keep_previous: bool,
    },
    /// Back to the previous champion; the current one stays as a challenger.
    Rollback,
    SetChallengers {
        versions: Vec<VersionId>,
        shadow_sample_rate: Option<f64>,
    },
    /// Load a version from the repository (anew if it is loaded: a hot reload).
    Load {
        version: VersionId,
    },
    /// Drop a version that is not the champion.
    Unload {
        version: VersionId,
    },
}

impl Change {
    pub fn action(&self) -> &'static str {
        match self {
            Self::Promote { .. } => "promote",
            Self::Rollback => "rollback",
            Self::SetChallengers { .. } => "set_challengers",
            Self::Load { .. } => "load",
            Self::Unload { .. } => "unload",
        }
    }

    fn version(&self) -> Option<&VersionId> {
        match self {
            Self::Promote { version, .. } | Self::Load { version } | Self::Unload { version } => Some(version),
            Self::Rollback | Self::SetChallengers { .. } => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error("model '{0}' is not served")]
    NoModel(String),
    /// A version that is neither loaded nor in the repository.
    #[error("{0}")]
    NotFound(String),
    /// The change contradicts the deployment (unload the champion, nothing to roll back to, ...).
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("saving the deployment state failed, so nothing changed: {0}")]
    Persist(StoreError),
}

/// Who asks for a change, why, and (for the policy) on what evidence.
#[derive(Clone, Copy, Debug, Default)]
pub struct Origin<'a> {
    pub actor: &'a str,
    pub reason: Option<&'a str>,
    pub evidence: Option<&'a serde_json::Value>,
}

/// The deployment a change aims at, by version id.
struct Target {
    champion: VersionId,
    challengers: Vec<VersionId>,
    shadow_sample_rate: f64,
    versions: BTreeSet<VersionId>,
    previous: Vec<VersionId>,
    /// Loaded anew even if loaded now.
    fresh: Option<VersionId>,
}

impl Registry {
    /// Applies one change to model `name` and returns the deployment now serving.
    pub fn apply(&self, name: &str, change: &Change, origin: Origin<'_>) -> Result<Arc<Deployment>, ChangeError> {
        let model = self.models.get(name).ok_or_else(|| ChangeError::NoModel(name.to_owned()))?;
        let _serialised = self.changes.lock();
        let current = model.deployment();
        let result = target(&current, change).and_then(|target| self.build(model, &current, target)).and_then(|next| {
            let revision = self.save_with(model, next.state())?;
            Ok((Arc::new(next), revision))
        });
        // Audited before anyone can see it: whoever sees the new deployment finds its audit line.
        let (from, to) = (current.state(), result.as_ref().ok().map(|(d, _)| d.state()));
        self.store.audit(&AuditEntry {
            timestamp: SystemTime::now(),
            model: name,
            action: change.action(),
            actor: origin.actor,
            version: change.version().map(VersionId::as_str),
            from: &from,
            to: to.as_ref(),
            reason: origin.reason,
            result: if result.is_ok() { "ok" } else { "refused" },
            error: result.as_ref().err().map(ToString::to_string),
            evidence: origin.evidence,
        });
        let result = result.map(|(next, revision)| {
            model.deployment.store(Arc::clone(&next));
            model.applied.store(revision, Ordering::Release);
            next.publish_roles(Some(&current));
            self.keep_in_cache();
            // Only the replica that made the change tells the source (an MLflow champion alias).
            if next.champion().version() != current.champion().version() {
                self.repository.champion_is(name, next.champion().version());
            }
            next
        });
        match &result {
            Ok(_) => {
                tracing::info!(model = name, action = change.action(), ?to, actor = origin.actor, "deployment changed")
            }
            Err(error) => tracing::warn!(model = name, action = change.action(), %error, "change refused"),
        }
        result
    }

    /// Makes model `name` the deployment `state`, saved by another replica at `revision`, through
    /// the same loading path and swap as `apply`, without saving it again (nor auditing: the
    /// replica that made the change did). Returns whether anything changed: a revision this
    /// replica already has (its own change, come back as a notification) is left alone. A version
    /// that cannot load here leaves what serves as it was.
    pub fn follow(&self, name: &str, state: &DeploymentState, revision: u64) -> Result<bool, ChangeError> {
        let model = self.models.get(name).ok_or_else(|| ChangeError::NoModel(name.to_owned()))?;
        let _serialised = self.changes.lock();
        if model.applied.load(Ordering::Acquire) >= revision {
            return Ok(false);
        }
        let current = model.deployment();
        if current.state() == *state {
            // Already so (a seed that lost its race to an identical one): only the revision moves.
            model.applied.store(revision, Ordering::Release);
            return Ok(true);
        }
        let target = Target {
            champion: state.champion.clone(),
            challengers: state.challengers.clone(),
            shadow_sample_rate: state.shadow_sample_rate,
            versions: state.versions.iter().chain([&state.champion]).chain(&state.challengers).cloned().collect(),
            previous: state.previous.clone(),
            fresh: None,
        };
        let next = Arc::new(self.build(model, &current, target)?);
        model.deployment.store(Arc::clone(&next));
        model.applied.store(revision, Ordering::Release);
        next.publish_roles(Some(&current));
        self.keep_in_cache();
        tracing::info!(model = name, revision, champion = %state.champion, "deployment follows the store");
        Ok(true)
    }

    /// Saves model `name`'s deployment as the store's first revision of it, when the store has
    /// none yet (the first replica seeds the cluster from its configuration). Returns the revision
    /// saved; `None` when the model already had one here. A `Conflict` means another replica
    /// seeded it first: follow the store's.
    pub fn seed(&self, name: &str) -> Result<Option<u64>, ChangeError> {
        let model = self.models.get(name).ok_or_else(|| ChangeError::NoModel(name.to_owned()))?;
        let _serialised = self.changes.lock();
        if model.applied.load(Ordering::Acquire) > 0 {
            return Ok(None);
        }
        let revision = self.save_with(model, model.deployment().state())?;
        model.applied.store(revision, Ordering::Release);
        tracing::info!(model = name, revision, "deployment seeded into the store from the configuration");
        Ok(Some(revision))
    }

    /// Loads, as challengers, the versions on disk that this registry has neither loaded nor tried
    /// before (`tried` remembers them, so a version refused by validation or its signature is not
    /// retried every poll; one whose files are incomplete is). Returns the versions added.
    /// A model with an MLflow `challenger_alias` adopts only the version the alias names, whenever
    /// it names one not loaded (on disk at start or not); `tried` keeps those as `<model>@<alias>`.
    pub fn adopt_new_versions(&self, tried: &mut BTreeSet<(String, VersionId)>) -> Vec<(String, VersionId)> {
        let mut added = Vec::new();
        for (name, model) in &self.models {
            let (candidates, key, reason, by_alias) = match self.repository.challenger_alias(name) {
                None => match self.repository.versions(name) {
                    Ok(on_disk) => (on_disk, name.clone(), "a new version folder appeared", false),
                    Err(_) => continue,
                },
                Some(Ok(aliased)) => {
                    let reason = "the registry's challenger alias names it";
                    (aliased.into_iter().collect(), format!("{name}@alias"), reason, true)
                }
                Some(Err(error)) => {
                    tracing::debug!(model = name, %error, "reading the challenger alias failed: next poll");
                    continue;
                }
            };
            for version in candidates {
                // Fresh each time: an adoption just before changed the deployment.
                let current = model.deployment();
                // By alias, a version loaded but not shadowing becomes a challenger too.
                let taken = if by_alias {
                    current.champion.version == version || current.challengers.iter().any(|c| c.version == version)
                } else {
                    current.versions.contains_key(&version)
                };
                if taken || current.refused.contains_key(&version) || !tried.insert((key.clone(), version.clone())) {
                    continue;
                }
                let mut challengers: Vec<VersionId> = current.challengers.iter().map(|c| c.version.clone()).collect();
                challengers.push(version.clone());
                let change = Change::SetChallengers { versions: challengers, shadow_sample_rate: None };
                let origin = Origin { actor: "repository", reason: Some(reason), evidence: None };
                match self.apply(name, &change, origin) {
                    Ok(_) => added.push((name.clone(), version)),
                    // Files still being copied in look corrupt or incomplete, and a store out of
                    // reach may come back: look again next time.
                    Err(ChangeError::Load(LoadError { step: LoadStep::Repository | LoadStep::Fetch, .. })) => {
                        tried.remove(&(key.clone(), version));
                    }
                    Err(_) => {}
                }
            }
        }
        added
    }

    /// Every (model, version) in the repository now: what the poller does not treat as new.
    pub fn versions_on_disk(&self) -> BTreeSet<(String, VersionId)> {
        self.models
            .keys()
            .flat_map(|name| {
                let versions = self.repository.versions(name).unwrap_or_default();
                versions.into_iter().map(move |v| (name.clone(), v))
            })
            .collect()
    }

    /// Model `name`'s audit entries, newest first, at most `limit`. Blocking: it reads the store.
    pub fn history(&self, name: &str, limit: usize) -> Result<Vec<serde_json::Value>, super::StoreError> {
        self.store.history(name, limit)
    }

    /// Records a change that was decided but not made in the audit log, with `result`: `dry_run`
    /// (a policy in dry run) or `refused` (a policy's guard held it).
    pub fn record_decision(&self, name: &str, action: &str, version: &VersionId, origin: Origin<'_>, result: &str) {
        let Some(model) = self.models.get(name) else { return };
        let from = model.deployment().state();
        self.store.audit(&AuditEntry {
            timestamp: SystemTime::now(),
            model: name,
            action,
            actor: origin.actor,
            version: Some(version.as_str()),
            from: &from,
            to: None,
            reason: origin.reason,
            result,
            error: None,
            evidence: origin.evidence,
        });
    }

    /// Loads what the target needs and assembles it; nothing serving is touched.
    fn build(&self, model: &ServedModel, current: &Deployment, target: Target) -> Result<Deployment, ChangeError> {
        let name = model.name();
        let mut versions: BTreeMap<VersionId, Arc<ModelVersion>> = BTreeMap::new();
        let mut refused = current.refused.clone();
        for id in &target.versions {
            let loaded = current.versions.get(id).filter(|_| target.fresh.as_ref() != Some(id));
            let version = match loaded {
                Some(version) => Arc::clone(version),
                None => {
                    let version = self.load_one(name, id, model.settings)?;
                    // Every version of a deployment takes the same input and gives the same outputs.
                    compatible(current.champion.manifest(), version.manifest()).map_err(|message| LoadError {
                        model: name.to_owned(),
                        version: id.clone(),
                        step: LoadStep::Signature,
                        message: format!("not compatible with the deployment's signature: {message}"),
                    })?;
                    refused.remove(id);
                    Arc::new(version)
                }
            };
            versions.insert(id.clone(), version);
        }
        let get = |id: &VersionId| versions.get(id).cloned().expect("the target's members are among its versions");
        let champion = get(&target.champion);
        let challengers: Vec<Arc<ModelVersion>> = target.challengers.iter().map(get).collect();
        for challenger in &challengers {
            compatible(champion.manifest(), challenger.manifest()).map_err(|message| LoadError {
                model: name.to_owned(),
                version: challenger.version.clone(),
                step: LoadStep::Signature,
                message: format!("cannot challenge {}: {message}", champion.version),
            })?;
        }
        let mut plan = current.plan.clone();
        plan.shadow_sample_rate = target.shadow_sample_rate;
        if plan.canary.as_ref().is_some_and(|c| !target.challengers.contains(&c.version)) {
            plan.canary = None;
        }
        let canary = plan.canary.as_ref().and_then(|c| challengers.iter().find(|v| v.version == c.version).cloned());
        Ok(Deployment {
            champion,
            challengers,
            versions,
            refused,
            plan,
            canary,
            canary_key_header: current.canary_key_header.clone(),
            previous: target.previous,
        })
    }

    /// Saves `model`'s new state over the revision it has, returning the store's new revision.
    fn save_with(&self, model: &ServedModel, state: DeploymentState) -> Result<u64, ChangeError> {
        let mut all: BTreeMap<String, DeploymentState> =
            self.models.iter().map(|(n, m)| (n.clone(), m.deployment().state())).collect();
        all.insert(model.name.clone(), state.clone());
        let base = model.applied.load(Ordering::Acquire);
        self.store.save(&model.name, &state, base, &all).map_err(ChangeError::Persist)
    }
}

/// What the deployment should become, by id; refuses changes that contradict it.
fn target(current: &Deployment, change: &Change) -> Result<Target, ChangeError> {
    let champion = current.champion.version.clone();
    let mut target = Target {
        champion: champion.clone(),
        challengers: current.challengers.iter().map(|c| c.version.clone()).collect(),
        shadow_sample_rate: current.plan.shadow_sample_rate,
        versions: current.versions.keys().cloned().collect(),
        previous: current.previous.clone(),
        fresh: None,
    };
    match change {
        Change::Promote { version, keep_previous } => {
            if *version == champion {
                return Err(ChangeError::Conflict(format!("version {version} is already the champion")));
            }
            target.challengers.retain(|c| c != version);
            if *keep_previous {
                target.challengers.insert(0, champion.clone());
            }
            target.previous.push(champion);
            target.champion = version.clone();
            target.versions.insert(version.clone());
        }
        Change::Rollback => {
            let back = target
                .previous
                .pop()
                .ok_or_else(|| ChangeError::Conflict("there is no previous champion to roll back to".into()))?;
            target.challengers.retain(|c| *c != back);
            // The champion rolled back from keeps being compared.
            target.challengers.insert(0, champion);
            target.champion = back.clone();
            target.versions.insert(back);
        }
        Change::SetChallengers { versions, shadow_sample_rate } => {
            if let Some(rate) = shadow_sample_rate {
                if !(0.0..=1.0).contains(rate) {
                    return Err(ChangeError::Invalid(format!("shadow_sample_rate must be in [0, 1], not {rate}")));
                }
                target.shadow_sample_rate = *rate;
            }
            if versions.contains(&champion) {
                return Err(ChangeError::Invalid(format!("version {champion} is the champion, not a challenger")));
            }
            let mut seen = BTreeSet::new();
            target.challengers = versions.iter().filter(|v| seen.insert((*v).clone())).cloned().collect();
            target.versions.extend(versions.iter().cloned());
        }
        Change::Load { version } => {
            target.versions.insert(version.clone());
            target.fresh = Some(version.clone());
        }
        Change::Unload { version } => {
            if *version == champion {
                return Err(ChangeError::Conflict(format!(
                    "version {version} is the champion; promote another version before unloading it"
                )));
            }
            if !target.versions.remove(version) {
                return Err(ChangeError::NotFound(format!("version {version} is not loaded")));
            }
            target.challengers.retain(|c| c != version);
        }
    }
    let excess = target.previous.len().saturating_sub(HISTORY);
    target.previous.drain(..excess);
    Ok(target)
}
