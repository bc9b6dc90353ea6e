//! The process: a gateway bound to its listeners, serving REST and gRPC until shutdown, then
//! draining and closing. `main.rs` calls [`run`]; tests and embedders use [`Server`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::config::{self, Config};
use crate::inference::{Gateway, ServerOptions};
use crate::{grpc, http, repository, tls};

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
            let on_disk = gateway.registry().versions_on_disk();
            anyhow::Ok((gateway, on_disk))
        })
        .await??;
        let listener = TcpListener::bind(listen).await.with_context(|| format!("binding {listen} (`listen`)"))?;
        let grpc = match gateway.config().grpc_listen {
            Some(address) => {
                Some(TcpListener::bind(address).await.with_context(|| format!("binding {address} (`grpc_listen`)"))?)
            }
            None => None,
        };
        let mut gateway = gateway;
        // On an address other clients can reach, a scope that answers without a token is said once.
        let exposed = [Some(listen), gateway.config().grpc_listen].into_iter().flatten().any(|a| !a.ip().is_loopback());
        let open = gateway.access().open_scopes();
        if exposed && !open.is_empty() {
            let open: Vec<&str> = open.iter().map(|s| s.name()).collect();
            tracing::warn!(
                scopes = %open.join(","),
                "listening beyond loopback with scopes no [[auth.tokens]] entry holds: infer answers every \
                 client without a token, the others loopback clients (auth.trust_loopback = false: no one)"
            );
        }
        gateway.join_cluster(listener.local_addr()?)?;
        let tls = if gateway.config().tls.enabled() {
            let settings = &gateway.config().tls;
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
        let poller = (gateway.config().repository_poll_s > 0).then(|| {
            let gateway = Arc::clone(&gateway);
            let every = std::time::Duration::from_secs(gateway.config().repository_poll_s);
            tokio::spawn(async move {
                // What is on disk at start is the configuration's business, not new.
                let mut tried = on_disk_at_start;
                let mut tick = tokio::time::interval(every);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let registry = Arc::clone(gateway.registry());
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
        let grace = gateway.config().shutdown_grace();
        // Both listeners stop accepting at once, then drain within the one grace period.
        let (draining_tx, draining_rx) = tokio::sync::watch::channel(false);
        let draining = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|draining| *draining).await;
        };
        let signal = {
            let gateway = Arc::clone(&gateway);
            async move {
                shutdown.await;
                gateway.stop_being_ready();
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
                grpc.await.context("the gRPC server task failed")?;
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
        // No request can start shadow work any more: let what started reach the join and the log.
        gateway.close().await;
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
