//! Health, host checks and the OpenAPI document.

use std::sync::Arc;

use axum::extract::State;
use banger_api::{ApiError, DoctorReport, Health};

use super::extract::Json;
use crate::error::{Error, Result};
use crate::Daemon;

/// Whether the daemon answers, and what it is.
#[utoipa::path(get, path = "/v1/health", tag = "system",
    responses((status = 200, body = Health)))]
pub async fn health(State(daemon): State<Arc<Daemon>>) -> Json<Health> {
    Json(Health {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        api: banger_api::API_VERSION.to_owned(),
        state_dir: daemon.config.state_dir.display().to_string(),
    })
}

/// Host checks: what this machine can run, and how to fix what it cannot.
#[utoipa::path(get, path = "/v1/doctor", tag = "system",
    responses((status = 200, body = DoctorReport), (status = 500, body = ApiError)))]
pub async fn doctor(State(daemon): State<Arc<Daemon>>) -> Result<Json<DoctorReport>> {
    let config = daemon.config.clone();
    let checks = tokio::task::spawn_blocking(move || {
        let capabilities = banger_host::Capabilities::probe(&config.state_dir);
        let mut checks = banger_host::checks(&capabilities, config.vmm);
        checks.push(crate::image::agent_binary::search(&config).check());
        checks.push(crate::net::doctor_check(&config.network));
        checks
    })
    .await
    .map_err(|e| Error::Internal(format!("doctor task: {e}")))?;
    let mut checks = checks;
    checks.push(crate::space::reserve_check(&daemon.reserve));
    Ok(Json(DoctorReport { checks }))
}

/// This document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "system",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json")))]
pub async fn openapi_json() -> Json<&'static utoipa::openapi::OpenApi> {
    Json(super::openapi())
}
