//! `--protocol grpc`: ModelInfer over HTTP/2 connections of tonic's client.
//!
//! A call sends the request's bytes as they were encoded before the run (`RawCodec`), and reads the
//! answer's frame without decoding it: the generator measures the server, not prost. Measured side
//! by side against h2load: `benches/grpc.sh`.

use std::time::Duration;

use anyhow::{Context, ensure};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use super::data::InputSpec;
use crate::grpc::GrpcInferenceServiceClient;
use crate::grpc::pb::ModelMetadataRequest;

const MODEL_INFER: &str = "/inference.GRPCInferenceService/ModelInfer";
/// `ModelInferRequest.id`: field 3, length-delimited.
const ID_TAG: u8 = (3 << 3) | 2;

/// Writes bytes already encoded; reads an answer by skipping it (its status is in the trailers).
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = ();
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        *self
    }

    fn decoder(&mut self) -> Self::Decoder {
        *self
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = ();
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<()>, Status> {
        let n = src.remaining();
        src.advance(n);
        Ok(Some(()))
    }
}

/// gRPC clients, one HTTP/2 connection each; request `i` goes over connection `i % n`.
pub(super) struct GrpcClients {
    clients: Vec<GrpcInferenceServiceClient<Channel>>,
    channels: Vec<Channel>,
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
        let (mut clients, mut channels) = (Vec::with_capacity(connections), Vec::with_capacity(connections));
        for _ in 0..connections {
            let channel =
                endpoint.clone().tcp_nodelay(true).connect().await.with_context(|| format!("connecting to {url}"))?;
            // The gateway's own limit (`max_request_bytes`) decides; the client does not cut first.
            clients.push(GrpcInferenceServiceClient::new(channel.clone()).max_decoding_message_size(usize::MAX));
            channels.push(channel);
        }
        Ok(Self { clients, channels, authorization })
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

    /// One ModelInfer call of `message` (encoded), with `id` appended as its request id if given.
    pub(super) async fn infer(
        &self,
        i: u64,
        message: &Bytes,
        id: Option<&str>,
        timeout: Duration,
    ) -> Result<(), String> {
        let channel = self.channels[(i % self.channels.len() as u64) as usize].clone();
        let payload = match id {
            None => message.clone(),
            // A field appended after the others is read as if it were among them (protobuf's
            // encoding), so the prebuilt bytes need no re-encoding.
            Some(id) => {
                let mut out = BytesMut::with_capacity(message.len() + id.len() + 6);
                out.put_slice(message);
                out.put_u8(ID_TAG);
                prost::encoding::encode_varint(id.len() as u64, &mut out);
                out.put_slice(id.as_bytes());
                out.freeze()
            }
        };
        let mut request = self.request(payload);
        request.set_timeout(timeout);
        let call = async move {
            let mut grpc = tonic::client::Grpc::new(channel).max_decoding_message_size(usize::MAX);
            grpc.ready().await.map_err(|e| Status::unavailable(e.to_string()))?;
            grpc.unary(request, tonic::codegen::http::uri::PathAndQuery::from_static(MODEL_INFER), RawCodec).await
        };
        match tokio::time::timeout(timeout, call).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(status)) if status.code() == tonic::Code::DeadlineExceeded => Err("timeout".to_owned()),
            Ok(Err(status)) => Err(format!("grpc {:?}", status.code())),
            Err(_) => Err("timeout".to_owned()),
        }
    }
}
