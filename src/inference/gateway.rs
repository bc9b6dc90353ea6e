//! The gateway a request reaches: the live models, where inference runs, the shadow, the join, the
//! limits and who may do what. Built once by [`Gateway::load`], shared by every handler behind an
//! `Arc`, and closed once by [`Gateway::close`] after the listeners stopped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;

use crate::analyst::Analyst;
use crate::auth::Access;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::drift::Drift;
use crate::executor::{Executor, InferencePool};
use crate::join::{Durability, LabelJoin, Listener};
use crate::model::{Loader, OnnxRuntime};
use crate::outcomes::{OutcomeWriter, RecordSink};
use crate::promotion::Promotion;
use crate::registry::{DeploymentStore, ModelHook, Registry, StateFiles};
use crate::shadow::Shadow;

/// Everything a request needs: the live models, where inference runs, the shadow, and the limits.
pub struct Gateway {
    config: Config,
    registry: Arc<Registry>,
    executor: Executor,
    shadow: Arc<Shadow>,
    /// The one door of records and labels: it joins them and hands their lines to the outcome log,
    /// which it owns and closes.
    join: Arc<LabelJoin>,
    drift: Arc<Drift>,
    /// Inference requests in flight, at most `max_concurrent_requests`; one more is refused, not queued.
    in_flight: tokio::sync::Semaphore,
    ready: AtomicBool,
    /// The replicas this one shares its deployments with (`[cluster] database_url`); `None`: one node.
    cluster: Option<Cluster>,
    /// In a cluster: the promotion policy, until the analyst takes it (`join_cluster`). One node
    /// gives it to the join at load.
    policy: Option<Promotion>,
    /// In a cluster: this replica's bid to be the analyst, started once the listener is bound.
    analyst: Option<Analyst>,
    /// True while this replica is the analyst (shared with the drift monitor).
    analyst_holds: Option<Arc<AtomicBool>>,
    /// Who may do what: the configured tokens and their scopes.
    access: Access,
    /// Each model's slicer, when `[models.<name>.slices]` names a source; built once.
    slicers: std::collections::HashMap<String, crate::traffic::Slicer>,
}

/// What a program embedding the gateway (or a test) can add to its configuration.
#[derive(Clone, Default)]
pub struct ServerOptions {
    /// Wraps every model after validation (see `registry::ModelHook`).
    pub model_hook: Option<ModelHook>,
}

impl Gateway {
    /// Loads ONNX Runtime (if present), then every configured model version (load → validate →
    /// warm up). Blocking: call it off the async workers.
    pub fn load(config: Config, options: ServerOptions) -> anyhow::Result<Self> {
        // First: handles registered before the recorder exists are no-ops for good.
        crate::metrics::handle();
        let onnxruntime = OnnxRuntime::init(config.onnxruntime_library.as_deref());
        match &onnxruntime {
            Ok(runtime) => tracing::info!(library = %runtime.library().display(), "ONNX Runtime loaded"),
            Err(reason) => {
                tracing::warn!(%reason, "ONNX Runtime unavailable; `auto` models use tract. {}", OnnxRuntime::HOW_TO_GET)
            }
        }
        let threads = config.inference_threads();
        // One ONNX Runtime session per thread that can run a model at once: the pool's threads and
        // the async workers (inline placement).
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
        let loader = Loader::new(onnxruntime, threads + workers);
        let repository =
            config.open_repository().context("opening the model repository (`models_dir`, `repository`)")?;
        let (cluster, store): (Option<Cluster>, Box<dyn DeploymentStore>) = match &config.cluster.database_url {
            Some(_) => {
                let (cluster, store) = Cluster::open(&config.cluster)?;
                (Some(cluster), Box::new(store))
            }
            None => {
                let files = StateFiles::open(Some(&config.state_dir))
                    .with_context(|| format!("opening the state directory {}", config.state_dir.display()))?;
                (None, Box::new(files))
            }
        };
        let registry =
            Arc::new(Registry::load(config.initial_deployments(), repository, loader, options.model_hook, store)?);
        let pool =
            InferencePool::new("inference", threads, config.inference_queue).context("starting the inference pool")?;
        let records: Arc<dyn RecordSink> = Arc::new(
            OutcomeWriter::start(config.outcomes.writer_settings())
                .with_context(|| format!("starting the outcome log in {}", config.outcomes.dir.display()))?,
        );
        // One node keeps its comparison and drift windows across restarts; in a cluster the analyst's
        // checkpoints keep the cluster's comparison.
        let checkpoint_dir = cluster.is_none().then(|| config.state_dir.clone());
        let thresholds = config.models.iter().filter_map(|(name, m)| Some((name.clone(), m.drift?))).collect();
        // In a cluster only the analyst sends drift alerts: each transition once, not once a replica.
        let analyst_holds = cluster.as_ref().map(|_| Arc::new(AtomicBool::new(false)));
        let drift = Arc::new(
            Drift::start(
                config.drift.clone(),
                thresholds,
                Arc::clone(&registry),
                analyst_holds.clone(),
                checkpoint_dir.clone(),
            )
            .context("starting the drift monitor")?,
        );
        let mut listeners: Vec<Box<dyn Listener>> = vec![Box::new(Arc::clone(&drift))];
        // One policy: one node's acts on its own join; a cluster's on the cluster's comparison, on
        // the analyst only.
        let mut policy = Some(Promotion::new(Arc::clone(&registry), config.policies()));
        if cluster.is_none()
            && let Some(policy) = policy.take()
        {
            listeners.push(Box::new(policy));
        }
        // One node keeps the comparison's history in files; a cluster's analyst, in the store.
        if cluster.is_none() {
            listeners.push(Box::new(crate::history::HistoryFiles::new(&config.state_dir, &config.comparison)));
        }
        let models =
            registry.models().map(|m| (m.name().to_owned(), m.deployment().champion().manifest().task.clone()));
        let durability = Durability { sink: records, checkpoint_dir, log_dir: config.outcomes.dir.clone() };
        let join = Arc::new(
            LabelJoin::start(models.collect(), config.comparison, config.feedback, listeners, durability)
                .context("starting the feedback join")?,
        );
        let models: Vec<&str> = registry.models().map(|m| m.name()).collect();
        let shadow = Arc::new(
            Shadow::new(config.shadow_settings(), config.outcomes.log_inputs, Arc::clone(&join), &models)
                .context("starting the shadow threads")?,
        );
        let access = Access::new(&config.auth, config.admin_token.as_ref()).context("reading [auth]")?;
        let mut slicers = std::collections::HashMap::new();
        for (name, settings) in &config.models {
            let Some(model) = registry.model(name) else { continue };
            let deployment = model.deployment();
            if let Some(slicer) = crate::traffic::Slicer::new(&settings.slices, deployment.champion().manifest())
                .map_err(|message| anyhow::anyhow!("models.{name}.slices: {message}"))?
            {
                slicers.insert(name.clone(), slicer);
            }
        }
        Ok(Self {
            access,
            slicers,
            in_flight: tokio::sync::Semaphore::new(config.max_concurrent_requests),
            config,
            registry,
            executor: Executor::new(pool),
            shadow,
            join,
            drift,
            ready: AtomicBool::new(true),
            cluster,
            policy,
            analyst: None,
            analyst_holds,
        })
    }

    /// In a cluster: starts following and forwarding to the store, and bids to be the analyst,
    /// which acts with the promotion policy. Call once, when the REST listener is bound (its
    /// address is this replica's in the store). One node: nothing to do.
    pub fn join_cluster(&mut self, address: SocketAddr) -> anyhow::Result<()> {
        let Some(cluster) = &self.cluster else { return Ok(()) };
        cluster.start(Arc::clone(&self.registry), address, self.config.outcomes.dir.clone());
        let policy = self.policy.take().context("the cluster is joined once")?;
        let holds = self.analyst_holds.clone().unwrap_or_default();
        // The analyst's join is bounded as each replica's is (per model there; over all here).
        let comparing =
            (self.config.comparison, self.config.feedback.index_capacity * self.registry.models().count().max(1));
        let (drift, registry) = (Arc::clone(&self.drift), Arc::clone(&self.registry));
        let reports = Box::new(move || {
            let reports = registry.models().map(|m| (m.name().to_owned(), drift.report(m.deployment().champion())));
            reports.filter_map(|(name, report)| Some((name, serde_json::to_value(report).ok()?))).collect()
        });
        let analyst = Analyst::start(cluster.connector(), comparing, vec![Box::new(policy)], holds, reports)
            .context("starting the analyst")?;
        self.analyst = Some(analyst);
        Ok(())
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn access(&self) -> &Access {
        &self.access
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    pub fn executor(&self) -> &Executor {
        &self.executor
    }

    pub fn shadow(&self) -> &Shadow {
        &self.shadow
    }

    /// The live join of labels with records, and the comparison.
    pub fn join(&self) -> &LabelJoin {
        &self.join
    }

    /// Drift of each deployment's traffic from its champion's training profile.
    pub fn drift(&self) -> &Drift {
        &self.drift
    }

    /// Model `name`'s slicer, if its records are sliced.
    pub fn slicer(&self, name: &str) -> Option<&crate::traffic::Slicer> {
        // No model sliced (the default): no hash of the name on the request path.
        if self.slicers.is_empty() { None } else { self.slicers.get(name) }
    }

    pub(super) fn in_flight(&self) -> &tokio::sync::Semaphore {
        &self.in_flight
    }

    /// The cluster this replica belongs to; `None` for one node.
    pub fn cluster(&self) -> Option<&Cluster> {
        self.cluster.as_ref()
    }

    /// False once shutdown has begun, and in a cluster until the store has been read: readiness
    /// probes then fail so traffic goes elsewhere.
    pub fn is_ready(&self) -> bool {
        self.not_ready().is_none()
    }

    /// Why the gateway is not ready, if it is not.
    pub fn not_ready(&self) -> Option<String> {
        if !self.ready.load(Ordering::Relaxed) {
            return Some("the gateway is shutting down".to_owned());
        }
        match &self.cluster {
            Some(cluster) if !cluster.is_ready() => Some(format!(
                "this replica has not read the cluster's deployments from {} yet, so it does not know the champion",
                cluster.location()
            )),
            _ => None,
        }
    }

    /// Readiness fails from now on: shutdown has begun.
    pub fn stop_being_ready(&self) {
        self.ready.store(false, Ordering::Relaxed);
    }

    /// Once no request can start any more: lets the shadow's started work finish and reach the
    /// join, the join take it all and its log write it, then stops the drift monitor, the analyst
    /// and the cluster's threads. Each blocking step runs off the async workers.
    pub async fn close(self: &Arc<Self>) {
        self.shadow.close().await;
        let closing = Arc::clone(self);
        let _ = tokio::task::spawn_blocking(move || {
            closing.join.close();
            closing.drift.close();
            if let Some(analyst) = &closing.analyst {
                analyst.close();
            }
            if let Some(cluster) = &closing.cluster {
                cluster.close();
            }
        })
        .await;
    }
}
