//! gRPC connections, served by hyper's HTTP/2 directly: each connection's calls run on the
//! connection's own task, and ModelInfer goes straight to its service.
//!
//! Why: tonic's server hands every call (every HTTP/2 stream) to a task of its own. A call then
//! costs a spawn and two wake-ups across threads, and each answer is written as soon as its own
//! task queues it, so a connection with several calls under way wrote once per call. Here the
//! executor hyper is given keeps a connection's calls beside the connection: the frames one read
//! brings are decoded, their calls run, and their answers go out together in one write. Past
//! [`INLINE_CALLS`] calls under way on one connection, further calls get tasks of their own, so one
//! busy connection still uses every core.
//!
//! Measured by callgrind on the request threads (h2load, one row, 4 connections × 4 streams) and
//! by h2load against `wrk` on REST: the figures are in `benches/README.md` (issue 35).

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use axum::http::{self, HeaderValue, Request, Response};
use futures_util::stream::{FuturesUnordered, Stream, StreamExt};
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper_util::rt::{TokioIo, TokioTimer};
use tonic::body::Body;
use tonic::service::Routes;
use tonic::transport::server::Connected;
use tower::Service;

use super::pb::grpc_inference_service_server::GrpcInferenceServiceServer;
use super::service;

/// Calls under way on one connection that run on its task; more get tasks of their own.
const INLINE_CALLS: usize = 4;

/// The client's deadline (the protocol's header), named once rather than parsed from a string per call.
const GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");

/// The path of the one call nearly all traffic makes.
const MODEL_INFER: &str = "/inference.GRPCInferenceService/ModelInfer";

/// A call's future, as the executor keeps it.
type Call = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The services every connection serves.
#[derive(Clone)]
pub(super) struct Services {
    pub inference: GrpcInferenceServiceServer<service::Service>,
    /// Everything else: the inference service's other methods, health, reflection.
    pub routes: Routes,
}

/// Serves the connections `incoming` yields until `shutdown` completes; then stops accepting, asks
/// each connection to finish (HTTP/2 GOAWAY: calls under way complete, new ones go elsewhere), and
/// returns when every connection has closed.
pub(super) async fn serve<IO>(
    incoming: impl Stream<Item = std::io::Result<IO>>,
    services: Services,
    shutdown: impl Future<Output = ()>,
) where
    IO: Connected + tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    IO::ConnectInfo: Clone + Send + Sync + 'static,
{
    let (stop, stopping) = tokio::sync::watch::channel(());
    // Boxed so that it can be dropped when accepting stops: a listener closes then, and a new
    // client is refused at once instead of waiting for an accept that never comes.
    let mut incoming = Box::pin(incoming);
    let mut shutdown = pin!(shutdown);
    loop {
        let io = tokio::select! {
            io = incoming.next() => match io {
                Some(Ok(io)) => io,
                Some(Err(error)) => {
                    accept_failed(error).await;
                    continue;
                }
                None => break,
            },
            () = &mut shutdown => break,
        };
        let calls = Calls { services: services.clone(), info: io.connect_info() };
        tokio::spawn(connection(io, calls, stopping.clone()));
    }
    drop(incoming);
    drop(stopping);
    let _ = stop.send(());
    stop.closed().await;
}

/// A connection that failed before it was accepted is the client's business; anything else (out
/// of file descriptors) is logged and accepting pauses for a second.
async fn accept_failed(error: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(error.kind(), ConnectionRefused | ConnectionAborted | ConnectionReset) {
        return;
    }
    tracing::error!(%error, "accepting a gRPC connection failed; retrying in a second");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// One connection, its inline calls polled on its own task, until it closes.
async fn connection<IO, I>(io: IO, calls: Calls<I>, mut stopping: tokio::sync::watch::Receiver<()>)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    I: Clone + Send + Sync + 'static,
{
    let executor = Inline::default();
    let mut builder = http2::Builder::new(executor.clone());
    // A peer that vanished without closing (a killed pod, a dropped NAT entry) is found and its
    // connection closed: HTTP/2 pings every minute, answered within 20 s.
    // No `date` header: gRPC's clients do not read it (Triton's server sends none), and each answer
    // paid for it twice, in the header map and in HPACK.
    builder
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(60))
        .keep_alive_timeout(Duration::from_secs(20))
        .auto_date_header(false);
    let mut conn = pin!(builder.serve_connection(TokioIo::new(io), calls));
    let mut stop = pin!(async move {
        let _ = stopping.changed().await;
    });
    let mut running: FuturesUnordered<Call> = FuturesUnordered::new();
    let (mut closed, mut draining) = (false, false);
    std::future::poll_fn(|cx| {
        if !draining && stop.as_mut().poll(cx).is_ready() {
            draining = true;
            conn.as_mut().graceful_shutdown();
        }
        loop {
            if !closed && let Poll::Ready(result) = conn.as_mut().poll(cx) {
                closed = true;
                if let Err(error) = result {
                    tracing::trace!(%error, "gRPC connection closed with an error");
                }
            }
            let fresh = executor.take_into(&mut running);
            let mut finished = false;
            while let Poll::Ready(Some(())) = running.poll_next_unpin(cx) {
                executor.running.fetch_sub(1, Ordering::Relaxed);
                finished = true;
            }
            if closed && running.is_empty() {
                return Poll::Ready(());
            }
            // Calls that finished queued their answers: poll the connection again, so it writes
            // them now, together.
            if !(fresh || finished) || closed {
                return Poll::Pending;
            }
        }
    })
    .await;
}

/// The executor hyper gets for a connection's calls: they run on the connection's task (see the
/// module comment), up to [`INLINE_CALLS`] at a time.
#[derive(Clone, Default)]
struct Inline {
    fresh: Arc<Mutex<Vec<Call>>>,
    running: Arc<AtomicUsize>,
}

impl Inline {
    /// Moves the calls hyper handed over since the last look into `running`; whether there were any.
    fn take_into(&self, running: &mut FuturesUnordered<Call>) -> bool {
        let mut fresh = self.fresh.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let any = !fresh.is_empty();
        running.extend(fresh.drain(..));
        any
    }
}

impl<F> hyper::rt::Executor<F> for Inline
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, call: F) {
        if self.running.fetch_add(1, Ordering::Relaxed) >= INLINE_CALLS {
            self.running.fetch_sub(1, Ordering::Relaxed);
            tokio::spawn(call);
            return;
        }
        self.fresh.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(Box::pin(call));
    }
}

/// One connection's calls: ModelInfer straight to the inference service, the rest through tonic's
/// routes with the connection's peer (as tonic's server gives it: `Request::remote_addr`).
#[derive(Clone)]
struct Calls<I> {
    services: Services,
    info: I,
}

type Answer = Response<Body>;

impl<I: Clone + Send + Sync + 'static> hyper::service::Service<Request<Incoming>> for Calls<I> {
    type Response = Answer;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Answer, Self::Error>> + Send>>;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        let deadline = deadline(request.headers());
        let answer: Self::Future = if request.uri().path() == MODEL_INFER {
            // ModelInfer does not ask for the peer (its token check has no loopback rule), so it is
            // spared the extension map the peer would need.
            let mut inference = self.services.inference.clone();
            Box::pin(async move { Ok(super::recode(inference.call(request).await?)) })
        } else {
            request.extensions_mut().insert(self.info.clone());
            let mut routes = self.services.routes.clone();
            Box::pin(async move { Ok(super::recode(routes.call(request).await?)) })
        };
        match deadline {
            None => answer,
            Some(deadline) => Box::pin(async move {
                tokio::time::timeout(deadline, answer).await.unwrap_or_else(|_| Ok(deadline_exceeded()))
            }),
        }
    }
}

/// The client's deadline, from `grpc-timeout` (the protocol's `1*8DIGIT unit`), as tonic's server
/// read it; a value that is not one is ignored, as there.
fn deadline(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get(GRPC_TIMEOUT)?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// A trailers-only answer: the call outlived the client's deadline.
fn deadline_exceeded() -> Answer {
    let mut response = Response::new(Body::empty());
    let headers = response.headers_mut();
    headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    let status = tonic::Status::deadline_exceeded("the call outlived its grpc-timeout");
    if status.add_header(headers).is_err() {
        tracing::debug!("could not write a gRPC status header");
    }
    response
}

#[cfg(test)]
mod tests {
    use super::deadline;
    use std::time::Duration;

    #[test]
    fn reads_grpc_timeout_as_the_protocol_writes_it() {
        let of = |v: &str| {
            let mut headers = axum::http::HeaderMap::new();
            headers.insert("grpc-timeout", v.parse().unwrap());
            deadline(&headers)
        };
        assert_eq!(of("250m"), Some(Duration::from_millis(250)));
        assert_eq!(of("2S"), Some(Duration::from_secs(2)));
        assert_eq!(of("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(of("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for wrong in ["", "m", "123456789m", "10x", "-1S", "1.5S"] {
            assert_eq!(of(wrong), None, "{wrong}");
        }
    }
}
