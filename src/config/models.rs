//! One model's keys (`[models.<name>]`): its deployment, traffic, policy, slices, aliases and
//! batching.

use serde::Deserialize;

use super::defaults;
use crate::compare::policy::PolicySettings;
use crate::drift::Thresholds;
use crate::model::BackendChoice;
use crate::repository::VersionId;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The version that answers unversioned requests.
    pub champion: VersionId,
    /// Versions to load (champion included); unset: every version in the repository.
    #[serde(default)]
    pub versions: Option<Vec<VersionId>>,
    /// This model's backend; unset: the top-level `backend`.
    #[serde(default)]
    pub backend: Option<BackendChoice>,
    /// Versions that shadow the champion on sampled requests.
    #[serde(default)]
    pub challengers: Vec<VersionId>,
    /// Share of requests, in [0, 1], the challengers shadow (decided by a hash of the request id).
    #[serde(default = "defaults::shadow_sample_rate")]
    pub shadow_sample_rate: f64,
    /// A challenger that answers a share of requests itself.
    #[serde(default)]
    pub canary: Option<CanaryConfig>,
    /// Automatic promotion and rollback on the comparison's sequential test; off by default.
    #[serde(default)]
    pub policy: PolicySettings,
    /// This deployment's drift thresholds; unset: those of `[drift]`.
    #[serde(default)]
    pub drift: Option<Thresholds>,
    /// The segments the comparison is broken down by (`[models.<name>.slices]`); none by default.
    #[serde(default)]
    pub slices: crate::traffic::SliceSettings,
    /// MLflow registry aliases that drive this deployment (`repository = "mlflow+http://…"` only).
    #[serde(default)]
    pub mlflow: Option<crate::repository::MlflowAliases>,
    /// How this model's requests on the inference pool run together (`[models.<name>.batching]`).
    #[serde(default)]
    pub batching: BatchingConfig,
}

/// Dynamic batching of requests to versions slow enough for the inference pool (`inline_max_us`);
/// versions that run inline, and models without a batch dimension, are never batched.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchingConfig {
    /// The most rows one model call runs; 1 turns batching off.
    #[serde(default = "defaults::max_batch")]
    pub max_batch: usize,
    /// How long a batch may wait for more requests, in µs; 0 (the default): only requests already
    /// queued while every pool thread was busy join, and none waits for another.
    #[serde(default)]
    pub max_queue_delay_us: u64,
}

impl Default for BatchingConfig {
    fn default() -> Self {
        Self { max_batch: defaults::max_batch(), max_queue_delay_us: 0 }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryConfig {
    /// One of the challengers.
    pub version: VersionId,
    /// Share of requests, in [0, 1], it answers.
    pub share: f64,
    /// A request header (e.g. `x-user-id`) whose value decides, so a client stays on one version;
    /// unset or absent: the request id decides.
    #[serde(default)]
    pub key_header: Option<String>,
}
