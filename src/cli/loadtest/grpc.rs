//! `--protocol grpc`: ModelInfer over HTTP/2 connections, one per `--connections`.
//!
//! A call sends the request's bytes as they were encoded and framed before the run, and reads the
//! answer without decoding it (only its status): the generator measures the server, not prost.
//! Over plain HTTP/2 the calls go straight to h2's client: tonic's channel handed each call to a
//! buffer task and the connection to a task of its own, and measured against h2load on the same
//! gateway it reached 0.62 of h2load's throughput (`benches/grpc.sh`). Over TLS, tonic's channel
//! (with its TLS) is kept.

use std::time::Duration;

use anyhow::{Context, ensure};
use axum::http::{self, HeaderValue, Uri};
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
    /// For ModelMetadata before the run.
    metadata: GrpcInferenceServiceClient<Channel>,
    calls: Calls,
    /// `Bearer <token>`, sent as `authorization` metadata with every call.
    authorization: Option<MetadataValue<Ascii>>,
}

enum Calls {
    /// Plain HTTP/2: h2's client, and what every call sends: the URI, `grpc-timeout` and the
    /// `authorization` header.
    Direct {
        senders: Vec<h2::client::SendRequest<Bytes>>,
        uri: Uri,
        grpc_timeout: HeaderValue,
        bearer: Option<HeaderValue>,
    },
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
            let uri: Uri = format!("{}{MODEL_INFER}", url.trim_end_matches('/')).parse().context("--grpc-url")?;
            // The protocol's timeout: at most 8 digits, here in milliseconds.
            let grpc_timeout = HeaderValue::try_from(format!("{}m", timeout.as_millis().min(99_999_999)))?;
            let bearer = authorization.as_ref().map(|v| HeaderValue::from_bytes(v.as_encoded_bytes())).transpose()?;
            Calls::Direct { senders: direct(&uri, connections).await?, uri, grpc_timeout, bearer }
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
            Calls::Direct { senders, uri, grpc_timeout, bearer } => {
                let sender = &senders[(i % senders.len() as u64) as usize];
                tokio::time::timeout(timeout, direct_call(sender, uri, grpc_timeout, bearer.as_ref(), payload)).await
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
        answer.map(|_| ()).map_err(|status| outcome(status.code()).unwrap_err())
    }
}

/// A call on h2's client: the request's headers and its one frame, then the answer's status (in
/// its headers when it has no body, else in its trailers), its data read and let go of.
async fn direct_call(
    sender: &h2::client::SendRequest<Bytes>,
    uri: &Uri,
    grpc_timeout: &HeaderValue,
    bearer: Option<&HeaderValue>,
    payload: Bytes,
) -> Result<(), String> {
    let mut sender = sender.clone().ready().await.map_err(|_| "connect".to_owned())?;
    let mut request = http::Request::new(());
    *request.method_mut() = http::Method::POST;
    *request.uri_mut() = uri.clone();
    let headers = request.headers_mut();
    headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
    headers.insert("grpc-timeout", grpc_timeout.clone());
    if let Some(value) = bearer {
        headers.insert(http::header::AUTHORIZATION, value.clone());
    }
    let read = |_| "read".to_owned();
    let (answer, mut stream) = sender.send_request(request, false).map_err(read)?;
    stream.send_data(payload, true).map_err(read)?;
    let answer = answer.await.map_err(read)?;
    if answer.status() != http::StatusCode::OK {
        return Err(answer.status().as_str().to_owned());
    }
    if let Some(code) = answer.headers().get("grpc-status") {
        return outcome(tonic::Code::from_bytes(code.as_bytes()));
    }
    let mut body = answer.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(read)?;
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = body.trailers().await.map_err(read)?;
    match trailers.as_ref().and_then(|t| t.get("grpc-status")) {
        Some(code) => outcome(tonic::Code::from_bytes(code.as_bytes())),
        None => Err("grpc no status".to_owned()),
    }
}

/// A call's outcome as the report counts it.
fn outcome(code: tonic::Code) -> Result<(), String> {
    match code {
        tonic::Code::Ok => Ok(()),
        tonic::Code::DeadlineExceeded => Err("timeout".to_owned()),
        code => Err(format!("grpc {code:?}")),
    }
}

/// `connections` HTTP/2 connections to `uri`'s authority, each driven by a task of its own.
async fn direct(uri: &Uri, connections: usize) -> anyhow::Result<Vec<h2::client::SendRequest<Bytes>>> {
    let authority = uri.authority().context("--grpc-url names no host")?;
    let address = format!("{}:{}", authority.host(), authority.port_u16().unwrap_or(80));
    let mut senders = Vec::with_capacity(connections);
    for _ in 0..connections {
        let tcp = tokio::net::TcpStream::connect(&address).await.with_context(|| format!("connecting to {address}"))?;
        tcp.set_nodelay(true)?;
        let (sender, connection) =
            h2::client::handshake(tcp).await.with_context(|| format!("HTTP/2 handshake with {address}"))?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "a loadtest gRPC connection closed");
            }
        });
        senders.push(sender);
    }
    Ok(senders)
}
