//! `inference.GRPCInferenceService`: health and metadata as REST answers them, and ModelInfer
//! through the shared request path (`inference::serve`, with [`Grpc`] as its codec).

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
use crate::auth::Scope;
use crate::error::Error;
use crate::inference::{self, Codec, Decoded, Gateway, Protocol, served, version_of};
use crate::model::{Tensor, TensorSpec};
use crate::registry::ModelVersion;
use crate::repository::Manifest;

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
        inference::serve(&self.gateway, Grpc { metadata: &metadata, message }).await
    }
}

/// A ModelInfer call: its metadata (borrowed: each move of a future would copy it) and its message
/// (whose tensors `decode` takes).
struct Grpc<'a> {
    metadata: &'a MetadataMap,
    message: ModelInferRequest,
}

impl Codec for Grpc<'_> {
    /// The requested outputs, by index into the signature's outputs; empty: all of them.
    type Selection = Vec<usize>;
    type Answer = Result<Response<ModelInferResponse>, Status>;
    const PROTOCOL: Protocol = Protocol::Grpc;

    fn target(&self) -> (&str, Option<&str>) {
        let version = &self.message.model_version;
        (&self.message.model_name, (!version.is_empty()).then_some(version.as_str()))
    }

    fn id_header(&self) -> Option<&str> {
        self.metadata.get(REQUEST_ID).and_then(|v| v.to_str().ok())
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.metadata.get(name).and_then(|v| v.to_str().ok())
    }

    fn decode(&mut self, manifest: &Manifest) -> Result<Decoded<Vec<usize>>, Error> {
        // proto3 has no absent string: an empty id is none.
        let id = Some(std::mem::take(&mut self.message.id)).filter(|id| !id.is_empty());
        let decoded = tensors::decode(&mut self.message, manifest)?;
        // The rest of the message (the raw tensors were taken) is not needed again.
        self.message.inputs = Vec::new();
        Ok(Decoded { id, inputs: decoded.inputs, selection: decoded.outputs })
    }

    fn encode(&self, version: &ModelVersion, id: String, outputs: &[Tensor], selection: &Vec<usize>) -> Self::Answer {
        let answer = tensors::respond(version, id, outputs, selection);
        let id = MetadataValue::try_from(answer.id.as_str()).ok();
        let mut response = Response::new(answer);
        if let Some(mut id) = id {
            // Each id is new: HPACK's table would only churn with them (an insert, an eviction and
            // a search through the ids before it, per call). Sensitive values are sent literally.
            id.set_sensitive(true);
            response.metadata_mut().insert(REQUEST_ID, id);
        }
        Ok(response)
    }

    fn refuse(error: Error, _id: Option<String>) -> Self::Answer {
        Err(status(&error))
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
