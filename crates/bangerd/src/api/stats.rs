//! What a running VM uses and listens on: its stats (the guest's and its
//! VMM process's) and the guest's listening sockets.

use std::sync::Arc;

use axum::extract::State;
use banger_api::{ApiError, GuestPort, VmStats};

use super::extract::{Json, Path};
use crate::error::Result;
use crate::guest::stats;
use crate::Daemon;

/// The VM's figures: the guest's CPU (busy share over a quarter of a
/// second), memory, disks and network, and its VMM process's host CPU and
/// resident memory.
#[utoipa::path(get, path = "/v1/vms/{name}/stats", tag = "vms", params(("name" = String, Path, description = "VM name")),
    responses((status = 200, body = VmStats), (status = 409, body = ApiError), (status = 501, body = ApiError)))]
pub async fn show(State(daemon): State<Arc<Daemon>>, Path(name): Path<String>) -> Result<Json<VmStats>> {
    Ok(Json(stats::stats(&daemon, &name).await?))
}

/// The guest's TCP and UDP listeners.
#[utoipa::path(get, path = "/v1/vms/{name}/ports", tag = "vms", params(("name" = String, Path, description = "VM name")),
    responses((status = 200, body = Vec<GuestPort>), (status = 409, body = ApiError), (status = 501, body = ApiError)))]
pub async fn ports(State(daemon): State<Arc<Daemon>>, Path(name): Path<String>) -> Result<Json<Vec<GuestPort>>> {
    Ok(Json(stats::ports(&daemon, &name).await?))
}
