//! The admin API under `/admin`: what data scientists and operators ask of a running gateway, by
//! resource: `models` (what is deployed), `changes` (promote, roll back, challengers, load, unload),
//! `reports` (the comparison and drift), `cluster` (the replicas sharing the deployments).
//!
//! Access: with `admin_token` configured, every call needs `Authorization: Bearer <token>`
//! (compared in constant time); without one, only clients on loopback are answered.

pub mod changes;
pub mod cluster;
pub mod models;
pub mod reports;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;

use crate::Gateway;
use crate::error::{Error, ErrorKind};

/// Lets the call through when it carries the token, or, with no token configured, comes from loopback.
pub async fn authorize(State(gateway): State<Arc<Gateway>>, request: Request, next: Next) -> Result<Response, Error> {
    match &gateway.config().admin_token {
        Some(token) => {
            let presented = request
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .ok_or_else(|| {
                    Error::new(ErrorKind::Unauthorized, "the admin API needs Authorization: Bearer <token>")
                })?;
            if !token.matches(presented) {
                return Err(Error::new(ErrorKind::Unauthorized, "the admin token is wrong"));
            }
        }
        None => {
            let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
            if !peer.is_some_and(|ip| ip.is_loopback()) {
                return Err(Error::new(
                    ErrorKind::Forbidden,
                    "with no admin_token configured, the admin API answers loopback clients only",
                ));
            }
        }
    }
    Ok(next.run(request).await)
}
