//! The service each connection gets: inference requests go straight to their handler, everything
//! else through the router.
//!
//! Why: inference is nearly all of the traffic, and the router's generic path (route matching,
//! extensions for path parameters and the peer address, the header map cloned for extraction, a
//! boxed service per layer) cost about as many instructions per request as hyper itself.
//! `POST /v2/models/{name}/infer` and `.../versions/{version}/infer` are matched here by hand and
//! call `v2::serve_infer`, the same guarded handler the router's routes call, so the in-flight
//! limit, timeout, body limit and panic guard are the same either way. A path this does not
//! recognise (including any percent-encoded one) goes to the router, which decides as before.
//!
//! Connections are served by hyper's HTTP/1 connection directly (`serve`), as `axum::serve` would
//! but without its protocol-sniffing wrapper, which re-read every buffer through a `Rewind` layer;
//! and the direct path hands hyper's body to the handler without boxing it.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Method, Request};
use axum::response::Response;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tower::ServiceExt;
use tracing::Instrument;

use super::{router, v2};
use crate::inference::Gateway;
use crate::tls::Certificates;

/// The whole HTTP API over one gateway; each accepted connection gets a [`Connection`].
#[derive(Clone)]
pub struct Front {
    gateway: Arc<Gateway>,
    router: Router,
}

/// The whole HTTP API over one gateway, with inference's direct path.
pub fn front(gateway: Arc<Gateway>) -> Front {
    Front { router: router(Arc::clone(&gateway)), gateway }
}

/// Accepts connections until `shutdown` completes, then stops accepting and waits for the open
/// connections to finish the requests they have begun (idle keep-alive connections close at once).
pub async fn serve(
    listener: TcpListener,
    front: Front,
    tls: Option<Arc<Certificates>>,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    // hyper's own default header timeout (30 s) does nothing without a timer: give it one.
    let header_timeout = front.gateway.config().header_read_timeout();
    builder.timer(TokioTimer::new()).header_read_timeout(header_timeout);
    let handshake_timeout = front.gateway.config().tls_handshake_timeout();
    let mut shutdown = pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    accept_failed(error).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Responses are small and written whole: do not let Nagle hold them back.
        let _ = tcp.set_nodelay(true);
        if let Some(tls) = &tls {
            // The handshake in the connection's own task, within the header timeout: a client that
            // stalls it holds only itself up.
            let (acceptor, builder, watcher) = (tls.acceptor(), builder.clone(), graceful.watcher());
            let service = Connection { front: front.clone(), peer };
            tokio::spawn(async move {
                let stream = match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(error)) => return tracing::debug!(%error, %peer, "TLS handshake failed"),
                    Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
                };
                if let Err(error) = watcher.watch(builder.serve_connection(TokioIo::new(stream), service)).await {
                    tracing::trace!(%error, "connection closed with an error");
                }
            });
            continue;
        }
        let connection = builder.serve_connection(TokioIo::new(tcp), Connection { front: front.clone(), peer });
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::trace!(%error, "connection closed with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// As `axum::serve` does: a connection that failed before it was accepted is the client's business;
/// anything else (out of file descriptors) is logged and accepting pauses for a second.
async fn accept_failed(error: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(error.kind(), ConnectionRefused | ConnectionAborted | ConnectionReset) {
        return;
    }
    tracing::error!(%error, "accepting a connection failed; retrying in a second");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// One connection's requests.
struct Connection {
    front: Front,
    /// Given to the router's handlers as `ConnectInfo` (the admin API tells loopback clients apart).
    peer: SocketAddr,
}

impl hyper::service::Service<Request<Incoming>> for Connection {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        if request.method() == Method::POST
            && let Some((name, version)) = infer_route(request.uri().path())
        {
            let (name, version) = (name.to_owned(), version.map(str::to_owned));
            let gateway = Arc::clone(&self.front.gateway);
            // The router's TraceLayer span, for the same debug output.
            let span = tracing::debug_span!("request", method = %request.method(), uri = %request.uri(), version = ?request.version());
            return Box::pin(
                async move { Ok(v2::serve_infer(&gateway, &name, version.as_deref(), request).await) }.instrument(span),
            );
        }
        let mut request = request.map(Body::new);
        request.extensions_mut().insert(ConnectInfo(self.peer));
        Box::pin(self.front.router.clone().oneshot(request))
    }
}

/// The model and version of an inference path, when it is one and needs no decoding.
fn infer_route(path: &str) -> Option<(&str, Option<&str>)> {
    let rest = path.strip_prefix("/v2/models/")?.strip_suffix("/infer")?;
    if rest.contains('%') {
        return None;
    }
    let mut segments = rest.split('/');
    let plain = |s: &str| !s.is_empty();
    match (segments.next(), segments.next(), segments.next(), segments.next()) {
        (Some(name), None, None, None) if plain(name) => Some((name, None)),
        (Some(name), Some("versions"), Some(version), None) if plain(name) && plain(version) => {
            Some((name, Some(version)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::infer_route;

    #[test]
    fn recognises_exactly_the_two_inference_paths() {
        assert_eq!(infer_route("/v2/models/breast-cancer/infer"), Some(("breast-cancer", None)));
        assert_eq!(infer_route("/v2/models/m/versions/2/infer"), Some(("m", Some("2"))));
        assert_eq!(infer_route("/v2/models/versions/infer"), Some(("versions", None)));
        for other in [
            "/v2/models/m/infer/",
            "/v2/models//infer",
            "/v2/models/infer",
            "/v2/models/m/versions//infer",
            "/v2/models/m/x/2/infer",
            "/v2/models/m/versions/2/3/infer",
            "/v2/models/m%2Fx/infer",
            "/v2/models/m/ready",
            "/v2/models/m/feedback",
        ] {
            assert_eq!(infer_route(other), None, "{other}");
        }
    }
}
