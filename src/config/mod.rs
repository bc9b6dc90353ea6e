//! Typed configuration, layered: the TOML file, then `GAUNTLET_*` environment variables, then flags.
//!
//! Every key can be set at every layer: `max_request_bytes` in the file, `GAUNTLET_MAX_REQUEST_BYTES`
//! in the environment, `--set max_request_bytes=...` on the command line (the common keys also have
//! their own flags). Nested keys join with `__` in the environment and `.` in `--set`:
//! `GAUNTLET_MODELS__BREAST_CANCER__CHAMPION=2`, `--set models.breast-cancer.champion=2`.
//! Invalid configuration fails at start with the path of the key at fault.

mod defaults;
mod models;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::auth::AuthSettings;
use crate::cluster::ClusterSettings;
use crate::compare::CompareSettings;
use crate::compare::policy::PolicySettings;
use crate::drift::{DriftSettings, Thresholds};
use crate::join::JoinSettings;
use crate::model::BackendChoice;
use crate::outcomes::{LogInputs, WriterSettings};
use crate::registry::{BatchSettings, DeploymentSpec, InitialDeployments, LoadSettings};
pub use crate::secret::Secret;
use crate::tls::TlsSettings;

pub use self::models::{BatchingConfig, CanaryConfig, ModelConfig};
use crate::traffic::{Canary, TrafficPlan};

const ENV_PREFIX: &str = "GAUNTLET_";
/// Variables with the prefix that are not configuration keys: `GAUNTLET_TOKEN…` holds tokens (the
/// load test's, and `[[auth.tokens]] token_env` by convention), never a key.
const ENV_NOT_KEYS: [&str; 3] = ["GAUNTLET_CONFIG", "GAUNTLET_BUILD_", "GAUNTLET_TOKEN"];

/// Flags of `gauntlet serve`.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct ServeArgs {
    /// TOML configuration file.
    #[arg(long, short, env = "GAUNTLET_CONFIG")]
    pub config: Option<PathBuf>,
    /// Model repository directory (key `models_dir`).
    #[arg(long)]
    pub models: Option<PathBuf>,
    /// Model repository URL: file://, s3://, gs://, az:// (key `repository`).
    #[arg(long)]
    pub repository: Option<String>,
    /// Address to listen on, e.g. 127.0.0.1:8000 (key `listen`).
    #[arg(long)]
    pub listen: Option<String>,
    /// Address for gRPC, e.g. 127.0.0.1:8001; empty: no gRPC (key `grpc_listen`).
    #[arg(long)]
    pub grpc_listen: Option<String>,
    /// Backend for every model without its own: auto, ort or tract (key `backend`).
    #[arg(long)]
    pub backend: Option<String>,
    /// Log format: text or json (key `log_format`).
    #[arg(long)]
    pub log_format: Option<String>,
    /// Any key, as KEY=VALUE with dotted keys (`models.diabetes.champion=2`); repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP server binds.
    #[serde(default = "defaults::listen")]
    pub listen: SocketAddr,
    /// Address the gRPC server binds: the Open Inference Protocol's `inference.GRPCInferenceService`,
    /// `grpc.health.v1` and server reflection. Empty: no gRPC. The default pairs with `listen` as
    /// Triton's and KServe's ports do.
    #[serde(default = "defaults::grpc_listen", deserialize_with = "optional_address")]
    pub grpc_listen: Option<SocketAddr>,
    /// The model repository: `<models_dir>/<model>/<version>/{model.onnx,manifest.json}`.
    #[serde(default = "defaults::models_dir")]
    pub models_dir: PathBuf,
    /// The model repository by URL instead (`file://`, `s3://`, `gs://`, `az://`); never with `models_dir`.
    #[serde(default)]
    pub repository: Option<String>,
    /// The object store client's keys beyond its standard environment variables.
    #[serde(default)]
    pub repository_options: BTreeMap<String, String>,
    /// Fetching from object storage: the cache, timeouts, retries.
    #[serde(default)]
    pub repository_fetch: crate::repository::FetchSettings,
    /// Backend for models that do not name their own.
    #[serde(default)]
    pub backend: BackendChoice,
    /// ONNX Runtime shared library; unset: `ORT_DYLIB_PATH`, then the copy fetched at build time.
    #[serde(default)]
    pub onnxruntime_library: Option<PathBuf>,
    /// Largest request body accepted; larger ones get 413.
    #[serde(default = "defaults::max_request_bytes")]
    pub max_request_bytes: usize,
    /// A request still unanswered after this gets 503.
    #[serde(default = "defaults::request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Inference requests in flight at once; the next one gets 503 with Retry-After at once.
    #[serde(default = "defaults::max_concurrent_requests")]
    pub max_concurrent_requests: usize,
    /// Threads of the inference pool that runs models too slow to run inline. 0: one per core.
    #[serde(default)]
    pub inference_threads: usize,
    /// Jobs waiting for the inference pool; beyond that, 503.
    #[serde(default = "defaults::inference_queue")]
    pub inference_queue: usize,
    /// A model whose median one-row time at warm-up is at most this runs inline on the async worker (no thread hop);
    /// slower ones run on the inference pool. 0 sends every model to the pool.
    #[serde(default = "defaults::inline_max_us")]
    pub inline_max_us: u64,
    /// Warm-up runs on the reference rows after validation, before a version serves.
    #[serde(default = "defaults::warmup_runs")]
    pub warmup_runs: usize,
    /// A connection that has not sent a whole request head this long after it opened, or after its
    /// last response, is closed: neither a slow sender nor an idle keep-alive client holds a
    /// connection forever. 0: never.
    #[serde(default = "defaults::header_read_timeout_ms")]
    pub header_read_timeout_ms: u64,
    /// How long graceful shutdown waits for in-flight requests.
    #[serde(default = "defaults::shutdown_grace_ms")]
    pub shutdown_grace_ms: u64,
    #[serde(default)]
    pub log_format: LogFormat,
    /// tracing-subscriber filter, e.g. `info` or `gauntlet=debug,info`. `RUST_LOG` wins when set.
    #[serde(default = "defaults::log_level")]
    pub log_level: String,
    /// Threads that run shadow (challenger) inference, at background OS priority.
    #[serde(default = "defaults::shadow_threads")]
    pub shadow_threads: usize,
    /// Shadow jobs waiting for those threads; beyond this they are shed (and counted). 8192 is an
    /// eighth of a second at 32k req/s with two challengers: room for the gaps a background-priority
    /// thread gets on busy cores. While `shadow_cpu_budget` binds, 1024 at most are kept.
    #[serde(default = "defaults::shadow_queue")]
    pub shadow_queue: usize,
    /// Bytes of request tensors (inputs and answer) that records waiting for their challengers may
    /// hold together; a request beyond it is shed (and counted). It bounds the queue's memory
    /// whatever the models' input size.
    #[serde(default = "defaults::shadow_queue_bytes")]
    pub shadow_queue_bytes: u64,
    /// A challenger not finished this long after its request was answered is recorded as `timeout`.
    /// It also caps how long a job waits to be batched (`shadow_max_wait_ms`): at 1 s (the default)
    /// a gateway at 30 req/s scores its challengers 22 rows a run, at 250 ms 6, and ONNX Runtime's
    /// fixed cost per run was then a sixth of a complete record's (benches/README.md, issue 33).
    #[serde(default = "defaults::shadow_deadline_ms")]
    pub shadow_deadline_ms: u64,
    /// How long a challenger's job may wait for others of its version, to be scored with them in
    /// one run (fewer, larger runs: each costs a model's fixed overhead once). Default: three
    /// quarters of `shadow_deadline_ms`; 0 scores each job as soon as a shadow thread takes it.
    #[serde(default)]
    pub shadow_max_wait_ms: Option<u64>,
    /// Cores the shadow threads may use together (e.g. 0.25: a quarter of one); they pace
    /// themselves on their own CPU time, and what they cannot get to is shed or times out.
    #[serde(default = "defaults::shadow_cpu_budget")]
    pub shadow_cpu_budget: f64,
    #[serde(default)]
    pub outcomes: OutcomesConfig,
    /// Where the deployments' current state (`deployments.json`) and the audit log of every change
    /// (`audit.jsonl`) are kept. The saved state takes precedence over this file's champion,
    /// challengers and sampling for the models it names: delete it to start from the configuration.
    #[serde(default = "defaults::state_dir")]
    pub state_dir: PathBuf,
    /// Every this many seconds, look for version folders that appeared in the repository and load
    /// each as a challenger of its model (through the same path as `load`). 0: never.
    #[serde(default)]
    pub repository_poll_s: u64,
    /// One token with the `read` and `change` scopes, named `admin` (set it from the environment:
    /// GAUNTLET_ADMIN_TOKEN); kept from before `[[auth.tokens]]`.
    #[serde(default)]
    pub admin_token: Option<Secret>,
    /// Named tokens and their scopes (`crate::auth`).
    #[serde(default)]
    pub auth: AuthSettings,
    /// TLS on both listeners (`crate::tls`).
    #[serde(default)]
    pub tls: TlsSettings,
    /// Bounds of the join of ground-truth labels with paired records.
    #[serde(default)]
    pub feedback: JoinSettings,
    /// Significance, power and tolerances of the champion–challenger comparison.
    #[serde(default)]
    pub comparison: CompareSettings,
    /// Drift monitoring against each champion's training profile, and its alert webhook.
    #[serde(default)]
    pub drift: DriftSettings,
    /// Several replicas sharing one deployment through PostgreSQL; without `database_url`, one
    /// node with its state in `state_dir`.
    #[serde(default)]
    pub cluster: ClusterSettings,
    /// Served models by name. Empty: every model in the repository, its highest version champion.
    #[serde(default)]
    pub models: BTreeMap<String, ModelConfig>,
}

/// The outcome log: one JSON line per shadowed request.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutcomesConfig {
    #[serde(default = "defaults::outcomes_dir")]
    pub dir: PathBuf,
    /// `none`, `hash` (sha256 of the input bytes) or `full` (the tensors, so the log can be replayed).
    #[serde(default)]
    pub log_inputs: LogInputs,
    /// Records waiting for the writer; beyond this they are dropped (and counted).
    #[serde(default = "defaults::outcomes_queue")]
    pub queue: usize,
    #[serde(default = "defaults::flush_interval_ms")]
    pub flush_interval_ms: u64,
    #[serde(default = "defaults::rotate_bytes")]
    pub rotate_bytes: u64,
    #[serde(default = "defaults::rotate_age_s")]
    pub rotate_age_s: u64,
}

impl Default for OutcomesConfig {
    fn default() -> Self {
        toml::Value::Table(toml::Table::new()).try_into().expect("the defaults are valid")
    }
}

impl OutcomesConfig {
    pub fn writer_settings(&self) -> WriterSettings {
        WriterSettings {
            dir: self.dir.clone(),
            capacity: self.queue,
            flush_interval: Duration::from_millis(self.flush_interval_ms),
            rotate_bytes: self.rotate_bytes,
            rotate_age: Duration::from_secs(self.rotate_age_s),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// An address, or the empty string for none.
fn optional_address<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<SocketAddr>, D::Error> {
    let text = String::deserialize(deserializer)?;
    if text.trim().is_empty() {
        return Ok(None);
    }
    text.trim().parse().map(Some).map_err(|_| {
        serde::de::Error::custom(format!("'{text}' is not an address such as 127.0.0.1:8001 (empty: none)"))
    })
}

impl Default for Config {
    fn default() -> Self {
        Self::from_table(toml::Table::new()).expect("the defaults are a valid config")
    }
}

impl Config {
    /// File, then environment, then flags.
    pub fn load(args: &ServeArgs) -> Result<Self, ConfigError> {
        let vars: Vec<(String, String)> = std::env::vars().collect();
        Self::load_from(args, &vars)
    }

    /// As `load`, with the environment given (tests pass their own).
    pub fn load_from(args: &ServeArgs, env: &[(String, String)]) -> Result<Self, ConfigError> {
        let mut table = match &args.config {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|e| ConfigError::Read { path: path.clone(), source: e })?;
                toml::from_str::<toml::Table>(&text)
                    .map_err(|e| ConfigError::Parse { path: path.clone(), message: e.to_string() })?
            }
            None => toml::Table::new(),
        };
        for (name, raw) in env {
            let Some(key) = name.strip_prefix(ENV_PREFIX) else { continue };
            if ENV_NOT_KEYS.iter().any(|skip| name.starts_with(skip)) || key.is_empty() {
                continue;
            }
            let path: Vec<String> = key.split("__").map(str::to_lowercase).collect();
            set_path(&mut table, &path, raw, name)?;
        }
        let flags = [
            ("models_dir", args.models.as_ref().map(|p| p.display().to_string())),
            ("repository", args.repository.clone()),
            ("listen", args.listen.clone()),
            ("grpc_listen", args.grpc_listen.clone()),
            ("backend", args.backend.clone()),
            ("log_format", args.log_format.clone()),
        ];
        for (key, value) in flags {
            if let Some(value) = value {
                table.insert(key.to_owned(), toml::Value::String(value));
            }
        }
        for assignment in &args.set {
            let (key, raw) = assignment.split_once('=').ok_or_else(|| ConfigError::Invalid {
                key: assignment.clone(),
                message: "--set takes KEY=VALUE".into(),
            })?;
            let path: Vec<String> = key.split('.').map(str::to_owned).collect();
            set_path(&mut table, &path, raw, key)?;
        }
        Self::from_table(table)
    }

    fn from_table(table: toml::Table) -> Result<Self, ConfigError> {
        if table.contains_key("models_dir") && table.contains_key("repository") {
            let message = "set `models_dir` (a folder) or `repository` (a URL), not both".into();
            return Err(ConfigError::Invalid { key: "repository".into(), message });
        }
        let config: Config = serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            let key = e.path().to_string();
            ConfigError::Invalid { key, message: e.into_inner().to_string() }
        })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("max_request_bytes", self.max_request_bytes as u64),
            ("request_timeout_ms", self.request_timeout_ms),
            ("max_concurrent_requests", self.max_concurrent_requests as u64),
            ("inference_queue", self.inference_queue as u64),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(ConfigError::Invalid { key: key.into(), message: "must be greater than 0".into() });
            }
        }
        for (key, value) in [
            ("shadow_queue", self.shadow_queue as u64),
            ("shadow_queue_bytes", self.shadow_queue_bytes),
            ("outcomes.queue", self.outcomes.queue as u64),
            ("outcomes.rotate_bytes", self.outcomes.rotate_bytes),
        ] {
            if value == 0 {
                return Err(ConfigError::Invalid { key: key.into(), message: "must be greater than 0".into() });
            }
        }
        for (name, model) in &self.models {
            let key = format!("models.{name}.slices");
            if let Some(header) = &model.slices.header
                && axum::http::HeaderName::from_bytes(header.as_bytes()).is_err()
            {
                return Err(ConfigError::Invalid {
                    key: format!("{key}.header"),
                    message: format!("'{header}' is not a header name"),
                });
            }
            if model.batching.max_batch == 0 {
                return Err(ConfigError::Invalid {
                    key: format!("models.{name}.batching.max_batch"),
                    message: "must be at least 1 (1 turns batching off)".into(),
                });
            }
            if model.batching.max_queue_delay_us >= self.request_timeout_ms.saturating_mul(1000) {
                return Err(ConfigError::Invalid {
                    key: format!("models.{name}.batching.max_queue_delay_us"),
                    message: "must be shorter than request_timeout_ms".into(),
                });
            }
            if model.slices.max_slices == 0 {
                return Err(ConfigError::Invalid {
                    key: format!("{key}.max_slices"),
                    message: "must be at least 1".into(),
                });
            }
        }
        let from_mlflow = self.repository.as_deref().is_some_and(|url| url.starts_with("mlflow+"));
        for (name, model) in &self.models {
            let Some(aliases) = &model.mlflow else { continue };
            let key = format!("models.{name}.mlflow");
            if !from_mlflow {
                let message = "aliases need an MLflow registry: repository = \"mlflow+http://host:port\"".into();
                return Err(ConfigError::Invalid { key, message });
            }
            if [&aliases.challenger_alias, &aliases.champion_alias].into_iter().flatten().any(|a| a.trim().is_empty()) {
                return Err(ConfigError::Invalid { key, message: "an alias cannot be empty".into() });
            }
        }
        if !(self.shadow_cpu_budget > 0.0 && self.shadow_cpu_budget.is_finite()) {
            return Err(ConfigError::Invalid {
                key: "shadow_cpu_budget".into(),
                message: "must be a number of cores greater than 0".into(),
            });
        }
        if self.shadow_max_wait_ms.is_some_and(|wait| wait >= self.shadow_deadline_ms) {
            return Err(ConfigError::Invalid {
                key: "shadow_max_wait_ms".into(),
                message: "must be shorter than shadow_deadline_ms (the rest of the deadline is the time to run)".into(),
            });
        }
        if let Some((key, message)) = self.auth.invalid() {
            return Err(ConfigError::Invalid { key: format!("auth.{key}"), message });
        }
        if let Some((key, message)) = self.tls.invalid() {
            return Err(ConfigError::Invalid { key: format!("tls.{key}"), message });
        }
        if let Some((key, message)) = self.drift.invalid() {
            return Err(ConfigError::Invalid { key: format!("drift.{key}"), message });
        }
        if let Some((key, message)) = self.cluster.invalid() {
            return Err(ConfigError::Invalid { key: format!("cluster.{key}"), message });
        }
        for (name, model) in &self.models {
            let invalid =
                |key: &str, message: String| Err(ConfigError::Invalid { key: format!("models.{name}.{key}"), message });
            if let Some(versions) = &model.versions {
                if !versions.contains(&model.champion) {
                    return invalid(
                        "champion",
                        format!("champion {} is not among versions {versions:?}", model.champion),
                    );
                }
                if let Some(c) = model.challengers.iter().find(|c| !versions.contains(c)) {
                    return invalid("challengers", format!("challenger {c} is not among versions {versions:?}"));
                }
            }
            if model.challengers.contains(&model.champion) {
                return invalid(
                    "challengers",
                    format!("{} is the champion; it cannot also be a challenger", model.champion),
                );
            }
            if let Some(message) = model.drift.as_ref().and_then(Thresholds::invalid) {
                return invalid("drift", message);
            }
            if !(0.0..=1.0).contains(&model.shadow_sample_rate) {
                return invalid("shadow_sample_rate", "must be between 0 and 1".into());
            }
            if let Some(canary) = &model.canary {
                if !model.challengers.contains(&canary.version) {
                    return invalid(
                        "canary.version",
                        format!("canary {} must be one of the challengers {:?}", canary.version, model.challengers),
                    );
                }
                if !(0.0..=1.0).contains(&canary.share) {
                    return invalid("canary.share", "must be between 0 and 1".into());
                }
            }
        }
        Ok(())
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    pub fn header_read_timeout(&self) -> Option<Duration> {
        (self.header_read_timeout_ms > 0).then(|| Duration::from_millis(self.header_read_timeout_ms))
    }

    /// A TLS handshake's deadline: the header read timeout, or 30 s with that one off (a handshake
    /// never waits without end).
    pub fn tls_handshake_timeout(&self) -> Duration {
        self.header_read_timeout().unwrap_or(Duration::from_secs(30))
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }

    pub fn inline_max(&self) -> Duration {
        Duration::from_micros(self.inline_max_us)
    }

    /// The deployments to start with: the configured models, or with none configured every model
    /// in the repository.
    pub fn initial_deployments(&self) -> InitialDeployments {
        let settings = |backend: Option<BackendChoice>, batching: BatchingConfig| LoadSettings {
            backend: backend.unwrap_or(self.backend),
            warmup_runs: self.warmup_runs,
            inline_max: self.inline_max(),
            batching: BatchSettings {
                max_batch: batching.max_batch,
                max_queue_delay: Duration::from_micros(batching.max_queue_delay_us),
                queue: self.inference_queue,
            },
        };
        if self.models.is_empty() {
            return InitialDeployments::WholeRepository(settings(None, BatchingConfig::default()));
        }
        let specs = self.models.iter().map(|(name, m)| DeploymentSpec {
            name: name.clone(),
            champion: m.champion.clone(),
            challengers: m.challengers.clone(),
            versions: m.versions.clone(),
            settings: settings(m.backend, m.batching),
            plan: TrafficPlan {
                shadow_sample_rate: m.shadow_sample_rate,
                canary: m.canary.as_ref().map(|c| Canary { version: c.version.clone(), share: c.share }),
            },
            canary_key_header: m.canary.as_ref().and_then(|c| c.key_header.as_ref()).map(|h| h.to_ascii_lowercase()),
            previous: Vec::new(),
        });
        InitialDeployments::Configured(specs.collect())
    }

    /// Each model's promotion policy.
    pub fn policies(&self) -> BTreeMap<String, PolicySettings> {
        self.models.iter().map(|(name, m)| (name.clone(), m.policy.clone())).collect()
    }

    /// Where the versions live: `repository`'s URL, else `models_dir`.
    pub fn open_repository(&self) -> Result<crate::repository::Repository, crate::repository::RepositoryError> {
        use crate::repository::Repository;
        match &self.repository {
            None => Repository::open(&self.models_dir),
            Some(url) => {
                let aliases =
                    self.models.iter().filter_map(|(name, m)| Some((name.clone(), m.mlflow.clone()?))).collect();
                Repository::connect(url, &self.repository_options, &self.repository_fetch, &self.state_dir, aliases)
            }
        }
    }

    pub fn shadow_settings(&self) -> crate::shadow::ShadowSettings {
        crate::shadow::ShadowSettings {
            threads: self.shadow_threads,
            queue: self.shadow_queue,
            queue_bytes: usize::try_from(self.shadow_queue_bytes).unwrap_or(usize::MAX),
            deadline: Duration::from_millis(self.shadow_deadline_ms),
            max_wait: self
                .shadow_max_wait_ms
                .map_or(Duration::from_millis(self.shadow_deadline_ms) * 3 / 4, Duration::from_millis),
            cpu_budget: self.shadow_cpu_budget,
        }
    }

    pub fn inference_threads(&self) -> usize {
        match self.inference_threads {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        }
    }
}

/// Sets `path` in `table` to `raw`, read as a TOML value when it is one (`8`, `true`, `["1", "2"]`)
/// and as a string otherwise (`127.0.0.1:8000`). Keys match existing ones ignoring case and `-`/`_`,
/// so `BREAST_CANCER` finds `breast-cancer`.
fn set_path(table: &mut toml::Table, path: &[String], raw: &str, origin: &str) -> Result<(), ConfigError> {
    let normalize = |k: &str| k.to_lowercase().replace('-', "_");
    let (last, parents) =
        path.split_last().ok_or_else(|| ConfigError::Invalid { key: origin.into(), message: "empty key".into() })?;
    let mut current = table;
    for segment in parents {
        let key =
            current.keys().find(|k| normalize(k) == normalize(segment)).cloned().unwrap_or_else(|| segment.clone());
        current = current
            .entry(key.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| ConfigError::Invalid {
            key: origin.into(),
            message: format!("'{key}' is not a table"),
        })?;
    }
    let key = current.keys().find(|k| normalize(k) == normalize(last)).cloned().unwrap_or_else(|| last.clone());
    let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()));
    current.insert(key, value);
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {} is not valid TOML: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("invalid config key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repository::VersionId;

    fn load(file: &str, env: &[(&str, &str)], set: &[&str]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gauntlet.toml");
        std::fs::write(&path, file).unwrap();
        let args =
            ServeArgs { config: Some(path), set: set.iter().map(|s| s.to_string()).collect(), ..Default::default() };
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::load_from(&args, &env)
    }

    const FILE: &str = r#"
        listen = "127.0.0.1:9000"
        [models.breast-cancer]
        champion = "1"
    "#;

    #[test]
    fn layers_file_then_env_then_flags() {
        let c = load(FILE, &[], &[]).unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.models["breast-cancer"].champion, VersionId::new("1"));

        let c = load(
            FILE,
            &[("GAUNTLET_LISTEN", "127.0.0.1:9001"), ("GAUNTLET_MODELS__BREAST_CANCER__CHAMPION", "2")],
            &[],
        )
        .unwrap();
        assert_eq!(c.listen.port(), 9001);
        assert_eq!(c.models["breast-cancer"].champion, VersionId::new("2"));

        let c =
            load(FILE, &[("GAUNTLET_LISTEN", "127.0.0.1:9001")], &["listen=127.0.0.1:9002", "max_request_bytes=100"])
                .unwrap();
        assert_eq!(c.listen.port(), 9002);
        assert_eq!(c.max_request_bytes, 100);
    }

    #[test]
    fn errors_name_the_key() {
        let err = load(FILE, &[("GAUNTLET_MAX_REQUEST_BYTES", "lots")], &[]).unwrap_err().to_string();
        assert!(err.contains("`max_request_bytes`"), "{err}");
        let err = load("listen = \"nowhere\"", &[], &[]).unwrap_err().to_string();
        assert!(err.contains("`listen`"), "{err}");
        let err = load("grpc_listen = \"nowhere\"", &[], &[]).unwrap_err().to_string();
        assert!(err.contains("`grpc_listen`") && err.contains("127.0.0.1:8001"), "{err}");
        assert_eq!(load(FILE, &[], &[]).unwrap().grpc_listen, Some("127.0.0.1:8001".parse().unwrap()));
        assert_eq!(load(FILE, &[("GAUNTLET_GRPC_LISTEN", "")], &[]).unwrap().grpc_listen, None);
        let err = load("[models.x]\nchampion = \"1\"\nbakend = \"ort\"", &[], &[]).unwrap_err().to_string();
        assert!(err.contains("models.x") && err.contains("bakend"), "{err}");
        let err = load(FILE, &[], &["max_concurrent_requests=0"]).unwrap_err().to_string();
        assert!(err.contains("`max_concurrent_requests`"), "{err}");
        for budget in ["0", "-1", "nan", "inf"] {
            let err = load(FILE, &[], &[&format!("shadow_cpu_budget={budget}")]).unwrap_err().to_string();
            assert!(err.contains("`shadow_cpu_budget`"), "{budget}: {err}");
        }
        assert_eq!(load(FILE, &[], &["shadow_cpu_budget=1.5"]).unwrap().shadow_cpu_budget, 1.5);
        let err = load(FILE, &[], &["shadow_max_wait_ms=1000"]).unwrap_err().to_string();
        assert!(err.contains("`shadow_max_wait_ms`") && err.contains("shorter than shadow_deadline_ms"), "{err}");
        let wait = |set: &[&str]| load(FILE, &[], set).unwrap().shadow_settings().max_wait;
        assert_eq!(wait(&[]), Duration::from_millis(750), "three quarters of the 1 s deadline");
        assert_eq!(wait(&["shadow_deadline_ms=250"]), Duration::from_micros(187_500));
        assert_eq!(wait(&["shadow_max_wait_ms=0"]), Duration::ZERO);
        let err = load("[models.x]\nchampion = \"3\"\nversions = [\"1\"]", &[], &[]).unwrap_err().to_string();
        assert!(err.contains("`models.x.champion`"), "{err}");
        let err = load("[models.x]\nchampion = \"1\"\nchallengers = [\"2\"]\nshadow_sample_rate = 1.5", &[], &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("`models.x.shadow_sample_rate`"), "{err}");
        let err = load(
            "[models.x]\nchampion = \"1\"\nchallengers = [\"2\"]\ncanary = { version = \"3\", share = 0.1 }",
            &[],
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("`models.x.canary.version`"), "{err}");
        let err = load("[outcomes]\nlog_inputs = \"some\"", &[], &[]).unwrap_err().to_string();
        assert!(err.contains("`outcomes.log_inputs`"), "{err}");
        let batching =
            |table: &str| load(&format!("[models.x]\nchampion = \"1\"\n[models.x.batching]\n{table}"), &[], &[]);
        let err = batching("max_batch = 0").unwrap_err().to_string();
        assert!(err.contains("`models.x.batching.max_batch`") && err.contains("1 turns batching off"), "{err}");
        let err = batching("max_queue_delay_us = 10000000").unwrap_err().to_string();
        assert!(err.contains("`models.x.batching.max_queue_delay_us`"), "{err}");
        let err = batching("max_batch = 8\ndelay = 1").unwrap_err().to_string();
        assert!(err.contains("models.x.batching") && err.contains("delay"), "{err}");
        let ok = batching("max_batch = 8\nmax_queue_delay_us = 200").unwrap();
        assert_eq!((ok.models["x"].batching.max_batch, ok.models["x"].batching.max_queue_delay_us), (8, 200));
        assert_eq!(load("[models.x]\nchampion = \"1\"", &[], &[]).unwrap().models["x"].batching.max_batch, 32);
    }

    #[test]
    fn unrelated_environment_is_ignored() {
        let c = load(
            FILE,
            &[("HOME", "/root"), ("GAUNTLET_CONFIG", "x.toml"), ("GAUNTLET_BUILD_FETCH_ONNXRUNTIME", "0")],
            &[],
        );
        assert!(c.is_ok());
    }

    #[test]
    fn the_demo_config_is_valid() {
        let args = ServeArgs {
            config: Some(concat!(env!("CARGO_MANIFEST_DIR"), "/gauntlet.toml").into()),
            ..Default::default()
        };
        let c = Config::load_from(&args, &[]).unwrap();
        assert_eq!(c.models["breast-cancer"].champion, VersionId::new("1"));
    }
}
