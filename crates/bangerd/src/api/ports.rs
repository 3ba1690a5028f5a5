//! Reaching a guest's TCP ports from the host without a guest network:
//! `connect` (one connection as a WebSocket, what the ssh ProxyCommand
//! uses) and port forwards (a listener on the host's loopback per forward).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use banger_api::{ApiError, Forward, ForwardRequest};
use serde::Deserialize;
use utoipa::IntoParams;

use super::extract::{Json, Path, Query};
use super::ws::{self, Input, Upgrade};
use crate::error::Result;
use crate::guest::{connect, forward};
use crate::Daemon;

/// Query of `GET /v1/vms/{name}/connect`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ConnectQuery {
    /// The guest port, on the guest's loopback.
    #[param(minimum = 1)]
    pub port: u16,
}

/// A TCP connection to a port on the guest's loopback, over a WebSocket:
/// the client's bytes go as binary messages on channel 0 (`stdin_eof`
/// shuts the connection's writing side), the guest's come on channel 1
/// (`stdout_eof` when it shut its own); the daemon closes (1000) once both
/// are shut. Refused before the upgrade, as JSON: a VM not running, or
/// nothing listening on the port (404).
#[utoipa::path(get, path = "/v1/vms/{name}/connect", tag = "vms", params(("name" = String, Path, description = "VM name"), ConnectQuery),
    responses((status = 101, description = "Switching to a WebSocket carrying the connection as banger_api::stream messages"),
        (status = 400, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError),
        (status = 501, body = ApiError)))]
pub async fn connect(
    State(daemon): State<Arc<Daemon>>,
    Path(name): Path<String>,
    Query(query): Query<ConnectQuery>,
    Upgrade(upgrade): Upgrade,
) -> Result<Response> {
    let stream = connect::open(&daemon, &name, query.port).await?;
    Ok(upgrade.on_upgrade(move |socket| {
        daemon.tasks.clone().track_future(async move {
            let ended = ws::relay(ws::Client::new(socket), stream, Input::Tunnel, daemon.shutting_down()).await;
            tracing::debug!(vm = %name, port = query.port, ?ended, "connection ended");
        })
    }))
}

/// The VM's port forwards.
#[utoipa::path(get, path = "/v1/vms/{name}/forwards", tag = "vms", params(("name" = String, Path, description = "VM name")),
    responses((status = 200, body = Vec<Forward>), (status = 404, body = ApiError)))]
pub async fn list(State(daemon): State<Arc<Daemon>>, Path(name): Path<String>) -> Result<Json<Vec<Forward>>> {
    Ok(Json(forward::list(&daemon, &name)?))
}

/// Forwards a port of the host's loopback (default: the guest port's
/// number) to a port on the guest's loopback. The forward lasts until it
/// is removed or the VM is; while the VM is stopped its connections are
/// closed at once.
#[utoipa::path(post, path = "/v1/vms/{name}/forwards", tag = "vms", params(("name" = String, Path, description = "VM name")),
    request_body = ForwardRequest,
    responses((status = 201, body = Forward), (status = 400, body = ApiError), (status = 404, body = ApiError),
        (status = 409, body = ApiError)))]
pub async fn add(
    State(daemon): State<Arc<Daemon>>,
    Path(name): Path<String>,
    Json(request): Json<ForwardRequest>,
) -> Result<(StatusCode, Json<Forward>)> {
    let forward = forward::add(&daemon, &name, request.guest_port, request.host_port).await?;
    Ok((StatusCode::CREATED, Json(forward)))
}

/// Removes the forward of a host port.
#[utoipa::path(delete, path = "/v1/vms/{name}/forwards/{host_port}", tag = "vms",
    params(("name" = String, Path, description = "VM name"), ("host_port" = u16, Path, description = "The forward's host port")),
    responses((status = 204, description = "Removed"), (status = 400, body = ApiError), (status = 404, body = ApiError)))]
pub async fn remove(
    State(daemon): State<Arc<Daemon>>,
    Path((name, host_port)): Path<(String, u16)>,
) -> Result<StatusCode> {
    forward::remove(&daemon, &name, host_port).await?;
    Ok(StatusCode::NO_CONTENT)
}
