//! gRPC: the Open Inference Protocol's `inference.GRPCInferenceService` beside REST, on its own
//! listener (`grpc_listen`), with `grpc.health.v1` and server reflection.
//!
//! Invariant: a ModelInfer request is decoded into the same tensors REST decodes (`tensors`), then
//! takes the same path (`crate::inference`): the same guards, champion, canary, shadow, record and
//! metrics. Error kinds become gRPC codes in one place ([`code`]).
//!
//! The code is generated at build time from `proto/open_inference_grpc.proto` (build.rs).

mod connection;
mod health;
mod service;
mod tensors;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::http;
use tokio::net::TcpListener;
use tonic::Code;
use tonic::transport::server::TcpIncoming;

use crate::error::ErrorKind;
use crate::inference::Gateway;
use crate::tls::Certificates;

/// The messages and the service, generated from the protocol's `.proto`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod pb {
    tonic::include_proto!("inference");

    /// The encoded descriptors of `inference.proto`, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/inference_descriptor.bin"));
}

pub use self::pb::grpc_inference_service_client::GrpcInferenceServiceClient;

/// The gRPC code of each error kind: the one place kinds become codes, as `http::status` is for REST.
pub fn code(kind: ErrorKind) -> Code {
    match kind {
        ErrorKind::InvalidInput | ErrorKind::UnsupportedMediaType => Code::InvalidArgument,
        ErrorKind::NotFound | ErrorKind::Gone => Code::NotFound,
        ErrorKind::PayloadTooLarge => Code::ResourceExhausted,
        ErrorKind::MethodNotAllowed => Code::Unimplemented,
        ErrorKind::Conflict => Code::Aborted,
        ErrorKind::Unprocessable => Code::FailedPrecondition,
        ErrorKind::Unauthorized => Code::Unauthenticated,
        ErrorKind::Forbidden => Code::PermissionDenied,
        ErrorKind::Overloaded | ErrorKind::Unavailable => Code::Unavailable,
        ErrorKind::Timeout => Code::DeadlineExceeded,
        ErrorKind::ModelFailed | ErrorKind::Internal => Code::Internal,
    }
}

/// An error as the status a gRPC client gets; internal details never leave the process.
pub fn status(error: &crate::error::Error) -> tonic::Status {
    let kind = error.kind();
    let message = if kind == ErrorKind::Internal { "internal error" } else { error.message() };
    tonic::Status::new(code(kind), message)
}

/// Serves gRPC on `listener` until `shutdown` completes, then lets the calls under way finish.
pub async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    tls: Option<Arc<Certificates>>,
    shutdown: impl Future<Output = ()> + Send,
) {
    let limit = gateway.config().max_request_bytes;
    let handshake_timeout = gateway.config().tls_handshake_timeout();
    let inference =
        pb::grpc_inference_service_server::GrpcInferenceServiceServer::new(service::Service::new(Arc::clone(&gateway)))
            .max_decoding_message_size(limit)
            .max_encoding_message_size(usize::MAX);
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1().expect("the built-in descriptors are valid");
    // grpcurl before 1.9 and many tools still ask v1alpha first.
    let reflection_v1alpha = reflection().build_v1alpha().expect("the built-in descriptors are valid");
    let routes = tonic::service::Routes::new(inference.clone())
        .add_service(health::server(gateway))
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .prepare();
    let services = connection::Services { inference, routes };
    match tls {
        None => {
            connection::serve(TcpIncoming::from(listener).with_nodelay(Some(true)), services, shutdown).await;
        }
        Some(tls) => connection::serve(tls_incoming(listener, tls, handshake_timeout), services, shutdown).await,
    }
}

/// The TLS connections of `listener`, each handshake in a task of its own (a client that stalls
/// it, or fails it, holds up no one) within `timeout`, with the certificate current at its accept.
fn tls_incoming(
    listener: TcpListener,
    tls: Arc<Certificates>,
    timeout: Duration,
) -> impl futures_util::Stream<Item = std::io::Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>> {
    // Handshaken connections wait here for the server to take them: a few, then accepting waits.
    let (ready, connections) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            // Until the server lets go of the connections (it stopped): then the listener closes.
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = ready.closed() => return,
            };
            let (tcp, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::error!(%error, "accepting a gRPC connection failed; retrying in a second");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, ready) = (tls.acceptor(), ready.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = ready.send(Ok(stream)).await;
                    }
                    Ok(Err(error)) => tracing::debug!(%error, %peer, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(connections)
}

/// Puts two of tonic's own answers in the codes the protocol's clients expect: a message over the
/// size limit is RESOURCE_EXHAUSTED (tonic says OUT_OF_RANGE; gRPC's own servers and Triton say
/// RESOURCE_EXHAUSTED), and bytes that are not a protobuf message are INVALID_ARGUMENT (tonic says
/// INTERNAL, which the caller cannot act on). Both come before any handler, as a trailers-only
/// response whose status is in the headers.
fn recode<R>(mut response: http::Response<R>) -> http::Response<R> {
    let Some(status) = tonic::Status::from_header_map(response.headers()) else { return response };
    let code = match status.code() {
        Code::OutOfRange if status.message().starts_with("Error, decoded message length too large") => {
            Code::ResourceExhausted
        }
        Code::Internal if status.message().starts_with("failed to decode Protobuf message") => Code::InvalidArgument,
        _ => return response,
    };
    let recoded = tonic::Status::new(code, status.message());
    let headers = response.headers_mut();
    if recoded.add_header(headers).is_err() {
        tracing::debug!("could not rewrite a gRPC status header");
    }
    response
}
