//! `--protocol grpc`: ModelInfer over HTTP/2 connections of tonic's client.

use std::time::Duration;

use anyhow::{Context, ensure};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use super::data::InputSpec;
use crate::grpc::GrpcInferenceServiceClient;
use crate::grpc::pb::{ModelInferRequest, ModelMetadataRequest};

/// gRPC clients, one HTTP/2 connection each; request `i` goes over connection `i % n`.
pub(super) struct GrpcClients {
    clients: Vec<GrpcInferenceServiceClient<Channel>>,
    /// `Bearer <token>`, sent as `authorization` metadata with every call.
    authorization: Option<MetadataValue<Ascii>>,
}

impl GrpcClients {
    pub(super) async fn connect(
        url: &str,
        connections: usize,
        token: Option<&str>,
        cacert: Option<&std::path::Path>,
    ) -> anyhow::Result<Self> {
        let authorization = token
            .map(|token| MetadataValue::try_from(format!("Bearer {token}")))
            .transpose()
            .context("the token is not a valid metadata value")?;
        let mut endpoint = Endpoint::from_shared(url.to_owned()).with_context(|| format!("--grpc-url {url}"))?;
        if url.starts_with("https://") {
            let mut tls = ClientTlsConfig::new().with_webpki_roots();
            if let Some(path) = cacert {
                let pem = std::fs::read(path).with_context(|| format!("reading --cacert {}", path.display()))?;
                tls = tls.ca_certificate(Certificate::from_pem(pem));
            }
            endpoint = endpoint.tls_config(tls).context("TLS for --grpc-url")?;
        }
        let mut clients = Vec::with_capacity(connections);
        for _ in 0..connections {
            let channel =
                endpoint.clone().tcp_nodelay(true).connect().await.with_context(|| format!("connecting to {url}"))?;
            // The gateway's own limit (`max_request_bytes`) decides; the client does not cut first.
            clients.push(GrpcInferenceServiceClient::new(channel).max_decoding_message_size(usize::MAX));
        }
        Ok(Self { clients, authorization })
    }

    /// The model's single input, from its gRPC metadata.
    pub(super) async fn input_of(&self, model: &str, version: Option<&str>) -> anyhow::Result<InputSpec> {
        let request = self
            .request(ModelMetadataRequest { name: model.to_owned(), version: version.unwrap_or_default().to_owned() });
        let metadata = self.clients[0]
            .clone()
            .model_metadata(request)
            .await
            .map_err(|status| anyhow::anyhow!("ModelMetadata {model}: {:?}: {}", status.code(), status.message()))?
            .into_inner();
        ensure!(
            metadata.inputs.len() == 1,
            "loadtest sends models with one input; {model} has {}",
            metadata.inputs.len()
        );
        let input = &metadata.inputs[0];
        ensure!(input.shape.len() == 2, "loadtest sends [rows, features] inputs; {model}'s is {:?}", input.shape);
        let features = usize::try_from(input.shape[1]).context("feature count is not fixed")?;
        Ok(InputSpec { name: input.name.clone(), datatype: input.datatype.clone(), features })
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(value) = &self.authorization {
            request.metadata_mut().insert("authorization", value.clone());
        }
        request
    }

    pub(super) async fn infer(&self, i: u64, message: ModelInferRequest, timeout: Duration) -> Result<(), String> {
        let mut client = self.clients[(i % self.clients.len() as u64) as usize].clone();
        let mut request = self.request(message);
        request.set_timeout(timeout);
        match tokio::time::timeout(timeout, client.model_infer(request)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(status)) if status.code() == tonic::Code::DeadlineExceeded => Err("timeout".to_owned()),
            Ok(Err(status)) => Err(format!("grpc {:?}", status.code())),
            Err(_) => Err("timeout".to_owned()),
        }
    }
}
