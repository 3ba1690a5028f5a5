//! `/v1/ssh`: what a client writes so that its ssh reaches every VM
//! through banger with no prompt, and users' own keys to let in.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use banger_api::{ApiError, SshInfo, SshKeyRequest};

use super::extract::Json;
use crate::error::Result;
use crate::vm::ledger::blocking;
use crate::Daemon;

/// banger's key pair (made at first need) and a known_hosts line per VM.
#[utoipa::path(get, path = "/v1/ssh", tag = "system", responses((status = 200, body = SshInfo)))]
pub async fn info(State(daemon): State<Arc<Daemon>>) -> Result<Json<SshInfo>> {
    Ok(Json(blocking(move || crate::ssh::info(&daemon)).await?))
}

/// Lets a user's own public key into every VM from its next boot.
#[utoipa::path(post, path = "/v1/ssh/authorized-keys", tag = "system", request_body = SshKeyRequest,
    responses((status = 204, description = "Registered (or known already)"), (status = 400, body = ApiError)))]
pub async fn register(State(daemon): State<Arc<Daemon>>, Json(request): Json<SshKeyRequest>) -> Result<StatusCode> {
    blocking(move || daemon.ssh.register(&request.public_key)).await?;
    Ok(StatusCode::NO_CONTENT)
}
