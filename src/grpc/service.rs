//! `inference.GRPCInferenceService`: health and metadata as REST answers them, and ModelInfer
//! through the shared request path.

use std::sync::Arc;

use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Request, Response, Status};

use super::pb::grpc_inference_service_server::GrpcInferenceService;
use super::pb::model_metadata_response::TensorMetadata;
use super::pb::{
    ModelInferRequest, ModelInferResponse, ModelMetadataRequest, ModelMetadataResponse, ModelReadyRequest,
    ModelReadyResponse, ServerLiveRequest, ServerLiveResponse, ServerMetadataRequest, ServerMetadataResponse,
    ServerReadyRequest, ServerReadyResponse,
};
use super::{status, tensors};
use crate::Gateway;
use crate::auth::Scope;
use crate::error::Error;
use crate::inference::{self, Inference, Protocol, served, version_of};
use crate::model::TensorSpec;
use crate::registry::ModelVersion;

const REQUEST_ID: &str = "x-request-id";
const AUTHORIZATION: &str = "authorization";

pub(super) struct Service {
    gateway: Arc<Gateway>,
}

impl Service {
    pub(super) fn new(gateway: Arc<Gateway>) -> Self {
        Self { gateway }
    }

    /// Whether the call may use `scope` (`crate::auth`): its `authorization` metadata and its peer.
    fn allowed<T>(&self, request: &Request<T>, scope: Scope) -> Result<(), Status> {
        let authorization = request.metadata().get(AUTHORIZATION).map(|v| v.as_bytes());
        let loopback = request.remote_addr().is_some_and(|a| a.ip().is_loopback());
        self.gateway.access().allows(authorization, loopback, scope).map_err(|denied| status(&Error::from(denied)))
    }
}

#[tonic::async_trait]
impl GrpcInferenceService for Service {
    async fn server_live(&self, _: Request<ServerLiveRequest>) -> Result<Response<ServerLiveResponse>, Status> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(&self, _: Request<ServerReadyRequest>) -> Result<Response<ServerReadyResponse>, Status> {
        Ok(Response::new(ServerReadyResponse { ready: self.gateway.is_ready() }))
    }

    /// Ready is false, not an error, for a model or version that is not served (as Triton answers).
    async fn model_ready(&self, request: Request<ModelReadyRequest>) -> Result<Response<ModelReadyResponse>, Status> {
        self.allowed(&request, Scope::Infer)?;
        let request = request.into_inner();
        let ready = served(&self.gateway, &request.name).is_ok_and(|model| {
            request.version.is_empty() || version_of(&model.deployment(), &request.name, &request.version).is_ok()
        });
        Ok(Response::new(ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        Ok(Response::new(ServerMetadataResponse {
            name: "gauntlet".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            extensions: Vec::new(),
        }))
    }

    /// The champion's signature and the served versions, or one version's (as REST's metadata).
    async fn model_metadata(
        &self,
        request: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        self.allowed(&request, Scope::Infer)?;
        let request = request.into_inner();
        let deployment = served(&self.gateway, &request.name).map_err(|e| status(&e))?.deployment();
        let (version, versions) = if request.version.is_empty() {
            (deployment.champion(), deployment.versions().map(|v| v.version().as_str().to_owned()).collect())
        } else {
            let version = version_of(&deployment, &request.name, &request.version).map_err(|e| status(&e))?;
            (version, vec![version.version().as_str().to_owned()])
        };
        Ok(Response::new(metadata(version, versions)))
    }

    async fn model_infer(&self, request: Request<ModelInferRequest>) -> Result<Response<ModelInferResponse>, Status> {
        let authorization = request.metadata().get(AUTHORIZATION).map(|v| v.as_bytes());
        if let Err(denied) = self.gateway.access().allows_inference(authorization) {
            return Err(status(&Error::from(denied)));
        }
        let (metadata, _, message) = request.into_parts();
        let gateway = &*self.gateway;
        match inference::guarded(gateway, infer(gateway, &metadata, message)).await {
            Ok(answer) => answer,
            Err(error) => Err(status(&error)),
        }
    }
}

async fn infer(
    gateway: &Gateway,
    metadata: &MetadataMap,
    mut message: ModelInferRequest,
) -> Result<Response<ModelInferResponse>, Status> {
    let version = (!message.model_version.is_empty()).then_some(message.model_version.as_str());
    let mut call = Inference::begin(gateway, &message.model_name, version, Protocol::Grpc).map_err(|e| status(&e))?;
    let given = Some(std::mem::take(&mut message.id)).filter(|id| !id.is_empty()).or_else(|| {
        let header = metadata.get(REQUEST_ID).and_then(|v| v.to_str().ok());
        header.filter(|id| !id.is_empty() && id.len() <= 256).map(str::to_owned)
    });
    let result = async {
        let decoded = tensors::decode(&mut message, call.manifest())?;
        drop(message);
        let id = inference::request_id(given);
        let key = |name: &str| metadata.get(name).and_then(|v| v.to_str().ok());
        let ran = call.run(&id, key, decoded.inputs).await?;
        Ok::<_, Error>(tensors::respond(call.answering(), id, &ran.outputs, &decoded.outputs))
    }
    .await;
    match result {
        Ok(answer) => {
            call.finish(Ok(()));
            let id = MetadataValue::try_from(answer.id.as_str()).ok();
            let mut response = Response::new(answer);
            if let Some(id) = id {
                response.metadata_mut().insert(REQUEST_ID, id);
            }
            Ok(response)
        }
        Err(error) => {
            call.finish(Err(error.kind()));
            Err(status(&error))
        }
    }
}

fn metadata(version: &ModelVersion, versions: Vec<String>) -> ModelMetadataResponse {
    let manifest = version.manifest();
    let tensors = |specs: &[TensorSpec]| {
        specs
            .iter()
            .map(|s| TensorMetadata {
                name: s.name.clone(),
                datatype: s.datatype.as_str().to_owned(),
                shape: s.shape.clone(),
            })
            .collect()
    };
    ModelMetadataResponse {
        name: version.name().to_owned(),
        versions,
        platform: version.backend().platform().to_owned(),
        inputs: tensors(&manifest.inputs),
        outputs: tensors(&manifest.outputs),
        properties: Default::default(),
    }
}
