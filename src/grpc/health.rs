//! `grpc.health.v1.Health`, answered from the gateway's own readiness: SERVING exactly when
//! `/v2/health/ready` answers 200 (models loaded, not draining, in a cluster the store read), so
//! Kubernetes' gRPC probes and REST probes agree. Liveness is the gRPC server answering at all.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use crate::inference::Gateway;

/// How often a Watch looks at readiness again; it sends only changes.
const WATCH_EVERY: Duration = Duration::from_millis(500);

/// The services health is asked about: the server as a whole ("") and the inference service.
const SERVICES: [&str; 2] = ["", "inference.GRPCInferenceService"];

pub(super) fn server(gateway: Arc<Gateway>) -> HealthServer<Checks> {
    HealthServer::new(Checks { gateway })
}

pub(super) struct Checks {
    gateway: Arc<Gateway>,
}

fn serving(gateway: &Gateway) -> ServingStatus {
    if gateway.is_ready() { ServingStatus::Serving } else { ServingStatus::NotServing }
}

fn known(service: &str) -> Result<(), Status> {
    if SERVICES.contains(&service) {
        Ok(())
    } else {
        Err(Status::not_found(format!("unknown service '{service}'; known: {SERVICES:?}")))
    }
}

type Watching = Pin<Box<dyn tokio_stream::Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Health for Checks {
    async fn check(&self, request: Request<HealthCheckRequest>) -> Result<Response<HealthCheckResponse>, Status> {
        known(&request.get_ref().service)?;
        Ok(Response::new(HealthCheckResponse { status: serving(&self.gateway).into() }))
    }

    type WatchStream = Watching;

    async fn watch(&self, request: Request<HealthCheckRequest>) -> Result<Response<Self::WatchStream>, Status> {
        known(&request.get_ref().service)?;
        let gateway = Arc::clone(&self.gateway);
        // The current status at once, then each change.
        let stream = futures_util::stream::unfold(None, move |last: Option<ServingStatus>| {
            let gateway = Arc::clone(&gateway);
            async move {
                loop {
                    let now = serving(&gateway);
                    if last != Some(now) {
                        return Some((Ok(HealthCheckResponse { status: now.into() }), Some(now)));
                    }
                    tokio::time::sleep(WATCH_EVERY).await;
                }
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
