//! The admin API under `/admin`: what data scientists and operators ask of a running gateway.
//!
//! Access: with `admin_token` configured, every call needs `Authorization: Bearer <token>`
//! (compared in constant time); without one, only clients on loopback are answered.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest, Sha256};

use crate::Gateway;
use crate::compare::Report;
use crate::drift::DriftReport;
use crate::error::{Error, ErrorKind};

/// Lets the call through when it carries the token, or, with no token configured, comes from loopback.
pub async fn authorize(State(gateway): State<Arc<Gateway>>, request: Request, next: Next) -> Result<Response, Error> {
    match gateway.config().admin_token.as_ref().map(|t| t.expose()) {
        Some(token) => {
            let presented = request
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .ok_or_else(|| {
                    Error::new(ErrorKind::Unauthorized, "the admin API needs Authorization: Bearer <token>")
                })?;
            if !same_secret(presented, token) {
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

/// Compares digests byte by byte without an early exit: the time taken says nothing of the token.
fn same_secret(presented: &str, expected: &str) -> bool {
    let (a, b) = (Sha256::digest(presented.as_bytes()), Sha256::digest(expected.as_bytes()));
    a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The live champion–challenger comparison.
#[utoipa::path(get, path = "/admin/models/{name}/comparison", tag = "admin", params(("name" = String, Path, description = "A served model", example = "breast-cancer")),
    responses((status = 200, body = crate::compare::Report), (status = 404, description = "No such model", body = crate::http::openapi::ErrorBody), (status = 401, description = "Token missing or wrong", body = crate::http::openapi::ErrorBody), (status = 403, description = "Not on loopback and no token configured", body = crate::http::openapi::ErrorBody), (status = 503, description = "Overloaded, timed out or shutting down (with Retry-After)", body = crate::http::openapi::ErrorBody)))]
pub async fn comparison(State(gateway): State<Arc<Gateway>>, Path(name): Path<String>) -> Result<Json<Report>, Error> {
    super::v2::served(&gateway, &name)?;
    match gateway.feedback().report(&name).await {
        Ok(Some(report)) => Ok(Json(report)),
        Ok(None) => Err(Error::not_found(format!("model '{name}' has no comparison"))),
        Err(_) => Err(Error::new(ErrorKind::Overloaded, "the comparison is busy; retry shortly")),
    }
}

/// Drift of the deployment's traffic from its champion's training profile, as last evaluated.
#[utoipa::path(get, path = "/admin/models/{name}/drift", tag = "admin", params(("name" = String, Path, description = "A served model", example = "breast-cancer")),
    responses((status = 200, body = crate::drift::DriftReport), (status = 404, description = "No such model", body = crate::http::openapi::ErrorBody), (status = 401, description = "Token missing or wrong", body = crate::http::openapi::ErrorBody), (status = 403, description = "Not on loopback and no token configured", body = crate::http::openapi::ErrorBody), (status = 503, description = "Overloaded, timed out or shutting down (with Retry-After)", body = crate::http::openapi::ErrorBody)))]
pub async fn drift(State(gateway): State<Arc<Gateway>>, Path(name): Path<String>) -> Result<Json<DriftReport>, Error> {
    let model = super::v2::served(&gateway, &name)?;
    Ok(Json(gateway.drift().report(model.deployment().champion())))
}

#[cfg(test)]
mod tests {
    #[test]
    fn secrets_compare_by_content() {
        assert!(super::same_secret("s3cret", "s3cret"));
        assert!(!super::same_secret("s3cret", "s3cres"));
        assert!(!super::same_secret("", "s3cret"));
    }
}
