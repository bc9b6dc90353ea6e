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

use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::Router;
use axum::extract::{ConnectInfo, Request};
use axum::http::Method;
use axum::response::Response;
use axum::serve::{IncomingStream, Listener};
use tower::{Service, ServiceExt};
use tracing::Instrument;

use super::{router, v2};
use crate::Gateway;

/// Makes one [`Connection`] service per accepted connection (`axum::serve` takes it).
#[derive(Clone)]
pub struct Front {
    gateway: Arc<Gateway>,
    router: Router,
}

/// The whole HTTP API over one gateway, with inference's direct path.
pub fn front(gateway: Arc<Gateway>) -> Front {
    Front { router: router(Arc::clone(&gateway)), gateway }
}

impl<L: Listener<Addr = SocketAddr>> Service<IncomingStream<'_, L>> for Front {
    type Response = Connection;
    type Error = Infallible;
    type Future = Ready<Result<Connection, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, stream: IncomingStream<'_, L>) -> Self::Future {
        ready(Ok(Connection { front: self.clone(), peer: *stream.remote_addr() }))
    }
}

/// One connection's requests.
#[derive(Clone)]
pub struct Connection {
    front: Front,
    /// Given to the router's handlers as `ConnectInfo` (the admin API tells loopback clients apart).
    peer: SocketAddr,
}

impl Service<Request> for Connection {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
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
