//! `--protocol grpc`: ModelInfer over HTTP/2 connections, one per `--connections`.
//!
//! A call sends the request's bytes as they were encoded and framed before the run, and reads the
//! answer without decoding it (only its status): the generator measures the server, not prost.
//! Over plain HTTP/2 the calls go over the generator's own minimal client (`h2c`): tonic's
//! channel handed each call to a buffer task and reached 0.62 of h2load's throughput against the
//! same gateway, h2's client 0.80 (`benches/grpc.sh`). Over TLS, tonic's channel (with its TLS) is
//! kept.

use std::time::Duration;

use anyhow::{Context, ensure};
use axum::http::{self, Uri};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use super::data::InputSpec;
use super::h2c;
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
    /// For ModelMetadata before the run.
    metadata: GrpcInferenceServiceClient<Channel>,
    calls: Calls,
    /// `Bearer <token>`, sent as `authorization` metadata with every call.
    authorization: Option<MetadataValue<Ascii>>,
}

enum Calls {
    /// Plain HTTP/2: the generator's own connections.
    Direct(Vec<h2c::Connection>),
    /// TLS: tonic's channels.
    Tonic(Vec<Channel>),
}

impl GrpcClients {
    pub(super) async fn connect(
        url: &str,
        connections: usize,
        token: Option<&str>,
        cacert: Option<&std::path::Path>,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let authorization = token
            .map(|token| MetadataValue::try_from(format!("Bearer {token}")))
            .transpose()
            .context("the token is not a valid metadata value")?;
        let mut endpoint = Endpoint::from_shared(url.to_owned()).with_context(|| format!("--grpc-url {url}"))?;
        let tls = url.starts_with("https://");
        if tls {
            let mut tls = ClientTlsConfig::new().with_webpki_roots();
            if let Some(path) = cacert {
                let pem = std::fs::read(path).with_context(|| format!("reading --cacert {}", path.display()))?;
                tls = tls.ca_certificate(Certificate::from_pem(pem));
            }
            endpoint = endpoint.tls_config(tls).context("TLS for --grpc-url")?;
        }
        let connect = || async {
            endpoint.clone().tcp_nodelay(true).connect().await.with_context(|| format!("connecting to {url}"))
        };
        let first = connect().await?;
        // The gateway's own limit (`max_request_bytes`) decides; the client does not cut first.
        let metadata = GrpcInferenceServiceClient::new(first.clone()).max_decoding_message_size(usize::MAX);
        let calls = if tls {
            let mut channels = vec![first];
            for _ in 1..connections {
                channels.push(connect().await?);
            }
            Calls::Tonic(channels)
        } else {
            let uri: Uri = url.parse().context("--grpc-url")?;
            let authority = uri.authority().context("--grpc-url names no host")?;
            let address = format!("{}:{}", authority.host(), authority.port_u16().unwrap_or(80));
            // Under the URL's own path, if it has one (a gateway behind a prefix).
            let path = format!("{}{MODEL_INFER}", uri.path().trim_end_matches('/'));
            // The protocol's timeout: at most 8 digits, here in milliseconds.
            let grpc_timeout = format!("{}m", timeout.as_millis().min(99_999_999));
            let bearer = authorization.as_ref().map(MetadataValue::as_encoded_bytes);
            let mut direct = Vec::with_capacity(connections);
            for _ in 0..connections {
                let connection =
                    h2c::Connection::connect(&address, authority.as_str(), &path, &grpc_timeout, bearer).await;
                direct.push(connection?);
            }
            Calls::Direct(direct)
        };
        Ok(Self { metadata, calls, authorization })
    }

    /// The model's single input, from its gRPC metadata.
    pub(super) async fn input_of(&self, model: &str, version: Option<&str>) -> anyhow::Result<InputSpec> {
        let request = self
            .request(ModelMetadataRequest { name: model.to_owned(), version: version.unwrap_or_default().to_owned() });
        let metadata = self
            .metadata
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

    /// One ModelInfer call of `framed` (encoded and framed), with `id` appended as its request id
    /// if given.
    pub(super) async fn infer(
        &self,
        i: u64,
        framed: &Bytes,
        id: Option<&str>,
        timeout: Duration,
    ) -> Result<(), String> {
        let payload = match id {
            None => framed.clone(),
            // A field appended after the others is read as if it were among them (protobuf's
            // encoding), so the prebuilt bytes need no re-encoding: only the frame's length changes.
            Some(id) => {
                let message = &framed[5..];
                let mut out = BytesMut::with_capacity(framed.len() + id.len() + 6);
                out.put_u8(0);
                out.put_u32(0);
                out.put_slice(message);
                out.put_u8(ID_TAG);
                prost::encoding::encode_varint(id.len() as u64, &mut out);
                out.put_slice(id.as_bytes());
                let length = (out.len() - 5) as u32;
                out[1..5].copy_from_slice(&length.to_be_bytes());
                out.freeze()
            }
        };
        let answer = match &self.calls {
            Calls::Direct(connections) => {
                let connection = &connections[(i % connections.len() as u64) as usize];
                tokio::time::timeout(timeout, connection.call(payload)).await
            }
            // Boxed: tonic's call is many times the size of the direct one, and every call's future
            // would otherwise carry (and move) room for it.
            Calls::Tonic(channels) => {
                let channel = channels[(i % channels.len() as u64) as usize].clone();
                tokio::time::timeout(timeout, Box::pin(self.tonic_call(channel, payload.slice(5..), timeout))).await
            }
        };
        answer.unwrap_or_else(|_| Err("timeout".to_owned()))
    }

    /// A call on tonic's channel (over TLS).
    async fn tonic_call(&self, channel: Channel, message: Bytes, timeout: Duration) -> Result<(), String> {
        let mut request = self.request(message);
        request.set_timeout(timeout);
        let mut grpc = tonic::client::Grpc::new(channel).max_decoding_message_size(usize::MAX);
        let answer = match grpc.ready().await {
            Ok(()) => grpc.unary(request, http::uri::PathAndQuery::from_static(MODEL_INFER), RawCodec).await,
            Err(e) => Err(Status::unavailable(e.to_string())),
        };
        answer.map(|_| ()).map_err(|status| h2c::outcome(status.code()).unwrap_err())
    }
}
