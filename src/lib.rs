//! gauntlet: a champion-challenger model-serving gateway for ONNX models.
//!
//! `run(config, shutdown)` is the whole server; `main.rs` only parses arguments and calls it.
//! ARCHITECTURE.md maps the modules and their invariants.

#![forbid(unsafe_code)]

pub mod analyst;
pub mod auth;
pub mod background;
pub mod cli;
pub mod cluster;
pub mod compare;
pub mod config;
pub mod drift;
pub mod error;
pub mod executor;
pub mod grpc;
pub mod http;
pub mod inference;
pub mod join;
mod json;
pub mod metrics;
pub mod model;
pub mod outcomes;
pub mod promotion;
pub mod registry;
pub mod repository;
pub mod secret;
pub mod shadow;
pub mod tls;
pub mod traffic;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use tokio::net::TcpListener;

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
use crate::repository::Repository;
use crate::shadow::Shadow;

/// Everything a request needs: the live models, where inference runs, the shadow, and the limits.
pub struct Gateway {
    config: Config,
    registry: Arc<Registry>,
    executor: Executor,
    shadow: Arc<Shadow>,
    /// Where records and labels go: the outcome log (`OutcomeWriter`).
    records: Arc<dyn RecordSink>,
    join: Arc<LabelJoin>,
    drift: Arc<Drift>,
    /// Inference requests in flight, at most `max_concurrent_requests`; one more is refused, not queued.
    in_flight: tokio::sync::Semaphore,
    ready: AtomicBool,
    /// The replicas this one shares its deployments with (`[cluster] database_url`); `None`: one node.
    cluster: Option<Cluster>,
    /// In a cluster: this replica's bid to be the analyst, started once the listener is bound.
    analyst: Option<Analyst>,
    /// True while this replica is the analyst (shared with the drift monitor).
    analyst_holds: Option<Arc<AtomicBool>>,
    /// Who may do what: the configured tokens and their scopes.
    access: Access,
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
        let repository = Repository::open(&config.models_dir)?;
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
        // In a cluster the policy acts on the cluster's comparison, on the analyst only.
        if cluster.is_none() {
            listeners.push(Box::new(Promotion::new(Arc::clone(&registry), config.policies())));
        }
        let models =
            registry.models().map(|m| (m.name().to_owned(), m.deployment().champion().manifest().task.clone()));
        let durability =
            Durability { sink: Arc::clone(&records), checkpoint_dir, log_dir: config.outcomes.dir.clone() };
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
        Ok(Self {
            access,
            in_flight: tokio::sync::Semaphore::new(config.max_concurrent_requests),
            config,
            registry,
            executor: Executor::new(pool),
            shadow,
            records,
            join,
            drift,
            ready: AtomicBool::new(true),
            cluster,
            analyst: None,
            analyst_holds,
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn access(&self) -> &Access {
        &self.access
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn executor(&self) -> &Executor {
        &self.executor
    }

    pub fn shadow(&self) -> &Shadow {
        &self.shadow
    }

    /// Where records and labels go (the outcome log).
    pub fn records(&self) -> &dyn RecordSink {
        &*self.records
    }

    /// The live join of labels with records, and the comparison.
    pub fn join(&self) -> &LabelJoin {
        &self.join
    }

    /// Drift of each deployment's traffic from its champion's training profile.
    pub fn drift(&self) -> &Drift {
        &self.drift
    }

    pub(crate) fn in_flight(&self) -> &tokio::sync::Semaphore {
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
}

/// A gateway bound to its listening socket, not yet serving.
pub struct Server {
    listener: TcpListener,
    /// gRPC's listener (`grpc_listen`), if it is on.
    grpc: Option<TcpListener>,
    /// TLS for REST and for gRPC (`[tls]`), each with its own ALPN.
    tls: Option<(Arc<tls::Certificates>, Arc<tls::Certificates>)>,
    gateway: Arc<Gateway>,
    /// What the repository held when the gateway loaded: not new to the repository poller.
    on_disk_at_start: std::collections::BTreeSet<(String, repository::VersionId)>,
}

impl Server {
    /// Loads the models and binds `config.listen` (port 0 picks a free port: see `local_addr`).
    pub async fn bind(config: Config) -> anyhow::Result<Self> {
        Self::bind_with(config, ServerOptions::default()).await
    }

    pub async fn bind_with(config: Config, options: ServerOptions) -> anyhow::Result<Self> {
        let listen = config.listen;
        let (gateway, on_disk_at_start) = tokio::task::spawn_blocking(move || {
            let gateway = Gateway::load(config, options)?;
            // Taken here, not when serving starts: a version added once `bind` returned is new.
            let on_disk = gateway.registry.versions_on_disk();
            anyhow::Ok((gateway, on_disk))
        })
        .await??;
        let listener = TcpListener::bind(listen).await.with_context(|| format!("binding {listen} (`listen`)"))?;
        let grpc = match gateway.config.grpc_listen {
            Some(address) => {
                Some(TcpListener::bind(address).await.with_context(|| format!("binding {address} (`grpc_listen`)"))?)
            }
            None => None,
        };
        let mut gateway = gateway;
        // On an address other clients can reach, a scope that answers without a token is said once.
        let exposed = [Some(listen), gateway.config.grpc_listen].into_iter().flatten().any(|a| !a.ip().is_loopback());
        let open = gateway.access.open_scopes();
        if exposed && !open.is_empty() {
            let open: Vec<&str> = open.iter().map(|s| s.name()).collect();
            tracing::warn!(
                scopes = %open.join(","),
                "listening beyond loopback with scopes no [[auth.tokens]] entry holds: infer answers every \
                 client without a token, the others loopback clients (auth.trust_loopback = false: no one)"
            );
        }
        if let Some(cluster) = &gateway.cluster {
            cluster.start(Arc::clone(&gateway.registry), listener.local_addr()?, gateway.config.outcomes.dir.clone());
            let policy = Promotion::new(Arc::clone(&gateway.registry), gateway.config.policies());
            let holds = gateway.analyst_holds.clone().unwrap_or_default();
            // The analyst's join is bounded as each replica's is (per model there; over all here).
            let comparing = (
                gateway.config.comparison,
                gateway.config.feedback.index_capacity * gateway.registry.models().count().max(1),
            );
            let (drift, registry) = (Arc::clone(&gateway.drift), Arc::clone(&gateway.registry));
            let reports = Box::new(move || {
                let reports = registry.models().map(|m| (m.name().to_owned(), drift.report(m.deployment().champion())));
                reports.filter_map(|(name, report)| Some((name, serde_json::to_value(report).ok()?))).collect()
            });
            let analyst = Analyst::start(cluster.connector(), comparing, vec![Box::new(policy)], holds, reports)
                .context("starting the analyst")?;
            gateway.analyst = Some(analyst);
        }
        let tls = if gateway.config.tls.enabled() {
            let settings = &gateway.config.tls;
            let rest = tls::Certificates::load(settings, &[b"http/1.1"]).context("loading [tls]")?;
            let grpc = tls::Certificates::load(settings, &[b"h2"]).context("loading [tls]")?;
            Some((rest, grpc))
        } else {
            None
        };
        Ok(Self { listener, grpc, tls, gateway: Arc::new(gateway), on_disk_at_start })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The gRPC listener's address; `None` when `grpc_listen` is empty.
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc.as_ref().and_then(|listener| listener.local_addr().ok())
    }

    /// Serves until `shutdown` completes, then stops accepting, lets in-flight requests finish (at
    /// most `shutdown_grace_ms`) and returns.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let Self { listener, grpc, tls, gateway, on_disk_at_start } = self;
        crate::metrics::handle();
        let upkeep = tokio::spawn(async {
            let mut tick = tokio::time::interval(http::METRICS_UPKEEP);
            loop {
                tick.tick().await;
                crate::metrics::handle().run_upkeep();
            }
        });
        let poller = (gateway.config.repository_poll_s > 0).then(|| {
            let gateway = Arc::clone(&gateway);
            let every = std::time::Duration::from_secs(gateway.config.repository_poll_s);
            tokio::spawn(async move {
                // What is on disk at start is the configuration's business, not new.
                let mut tried = on_disk_at_start;
                let mut tick = tokio::time::interval(every);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let registry = Arc::clone(&gateway.registry);
                    // Loading reads files and runs models: off the async workers.
                    tried = tokio::task::spawn_blocking(move || {
                        for (model, version) in registry.adopt_new_versions(&mut tried) {
                            tracing::info!(model, version = %version, "a new version in the repository now shadows");
                        }
                        tried
                    })
                    .await
                    .unwrap_or_default();
                }
            })
        });
        let grace = gateway.config.shutdown_grace();
        // Both listeners stop accepting at once, then drain within the one grace period.
        let (draining_tx, draining_rx) = tokio::sync::watch::channel(false);
        let draining = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|draining| *draining).await;
        };
        let signal = {
            let gateway = Arc::clone(&gateway);
            async move {
                shutdown.await;
                gateway.ready.store(false, Ordering::Relaxed);
                tracing::info!("shutting down: no new connections, finishing in-flight requests");
                let _ = draining_tx.send(true);
            }
        };
        tokio::spawn(signal);
        let app = http::front(Arc::clone(&gateway));
        let (rest_tls, grpc_tls) = tls.unzip();
        let rest = tokio::spawn(http::serve(listener, app, rest_tls, draining(draining_rx.clone())));
        let grpc = grpc.map(|listener| {
            let shutdown = draining(draining_rx.clone());
            tokio::spawn(grpc::serve(listener, Arc::clone(&gateway), grpc_tls, shutdown))
        });
        let aborts: Vec<_> =
            std::iter::once(rest.abort_handle()).chain(grpc.as_ref().map(|g| g.abort_handle())).collect();
        let mut servers = std::pin::pin!(async move {
            rest.await.context("the HTTP server task failed")?;
            if let Some(grpc) = grpc {
                grpc.await.context("the gRPC server task failed")?.context("the gRPC server failed")?;
            }
            anyhow::Ok(())
        });
        let result = tokio::select! {
            finished = &mut servers => finished,
            () = draining(draining_rx) => match tokio::time::timeout(grace, &mut servers).await {
                Ok(finished) => finished,
                Err(_) => {
                    tracing::warn!(grace_ms = grace.as_millis() as u64, "in-flight requests outlived the shutdown grace; closing");
                    aborts.iter().for_each(tokio::task::AbortHandle::abort);
                    Ok(())
                }
            },
        };
        upkeep.abort();
        if let Some(poller) = poller {
            poller.abort();
        }
        // No request can start shadow work any more: let what started finish and reach the join,
        // the join take it all and hand its lines to the log, and the log write them.
        gateway.shadow.close().await;
        let closing = Arc::clone(&gateway);
        let _ = tokio::task::spawn_blocking(move || {
            closing.join.close();
            closing.records.close();
        })
        .await;
        let drift = Arc::clone(&gateway.drift);
        let _ = tokio::task::spawn_blocking(move || drift.close()).await;
        let leaving = Arc::clone(&gateway);
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(analyst) = &leaving.analyst {
                analyst.close();
            }
            if let Some(cluster) = leaving.cluster() {
                cluster.close();
            }
        })
        .await;
        result?;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Loads, binds and serves until `shutdown`.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let server = Server::bind(config).await?;
    match server.grpc_addr() {
        Some(grpc) => tracing::info!(address = %server.local_addr()?, %grpc, "serving the Open Inference Protocol"),
        None => tracing::info!(address = %server.local_addr()?, "serving the Open Inference Protocol"),
    }
    server.serve(shutdown).await
}

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = interrupt => {},
            _ = terminate.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}

/// Installs the tracing subscriber: `RUST_LOG` if set, else the configured level.
pub fn init_tracing(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log_level));
    // Colour only on a terminal: a log redirected to a file or collected by a container runtime
    // gets no escape codes.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    let _ = match config.log_format {
        config::LogFormat::Json => builder.json().try_init(),
        config::LogFormat::Text => builder.try_init(),
    };
}
