//! The scope each route needs, checked before its handler runs (`crate::auth` has the rule). The
//! caller's `Actor` goes into the request's extensions, for the handlers that record who changed what.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;

use crate::auth::Scope;
use crate::error::Error;
use crate::inference::Gateway;

/// Middleware: lets the call through if it may use `scope`.
pub async fn require(
    State((gateway, scope)): State<(Arc<Gateway>, Scope)>,
    mut request: Request,
    next: Next,
) -> Result<Response, Error> {
    let loopback = request.extensions().get::<ConnectInfo<SocketAddr>>().is_some_and(|c| c.0.ip().is_loopback());
    let authorization = request.headers().get(header::AUTHORIZATION).map(|v| v.as_bytes());
    let actor = gateway.access().check(authorization, loopback, scope)?;
    request.extensions_mut().insert(actor);
    Ok(next.run(request).await)
}
