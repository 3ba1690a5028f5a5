//! `GET /v1/vms/{name}/files`: a file copy as a tar stream over a
//! WebSocket (`banger_api::stream` messages), into the guest or out of it.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use serde::Deserialize;
use utoipa::IntoParams;

use super::extract::{Path, Query};
use super::ws::{self, Input, Upgrade};
use crate::error::Result;
use crate::guest::copy::{self, Direction};
use crate::Daemon;

/// Query of `GET /v1/vms/{name}/files`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct FilesQuery {
    /// The guest path, absolute: where the copy goes (`in`; inside it when
    /// it is a directory, else as that new name) or what is copied (`out`).
    pub path: String,
    /// `in` (host to guest) or `out` (guest to host).
    #[param(inline)]
    pub direction: Direction,
}

/// Copies files to or from the guest as a tar stream of one top entry,
/// over a WebSocket. `in`: the client sends the tar as binary messages on
/// channel 0, then `stdin_eof`; the daemon closes (1000) once the guest
/// wrote it all. `out`: the daemon sends the tar (named after the path's
/// last component) as binary messages on channel 1 and closes (1000) at
/// its end. A failure at any point is an `error` message, then a close; a
/// copy in that fails or whose client leaves leaves nothing in the guest.
#[utoipa::path(get, path = "/v1/vms/{name}/files", tag = "vms", params(("name" = String, Path, description = "VM name"), FilesQuery),
    responses((status = 101, description = "Switching to a WebSocket carrying the tar stream as banger_api::stream messages"),
        (status = 400, body = banger_api::ApiError), (status = 409, body = banger_api::ApiError),
        (status = 501, body = banger_api::ApiError)))]
pub async fn files(
    State(daemon): State<Arc<Daemon>>,
    Path(name): Path<String>,
    Query(query): Query<FilesQuery>,
    Upgrade(upgrade): Upgrade,
) -> Result<Response> {
    // Refused before the upgrade, as JSON: a bad path, a VM not running.
    let stream = copy::open(&daemon, &name, &query.path, query.direction).await?;
    let input = match query.direction {
        Direction::In => Input::Upload,
        Direction::Out => Input::None,
    };
    Ok(upgrade.on_upgrade(move |socket| {
        daemon.tasks.clone().track_future(async move {
            let ended = ws::relay(ws::Client::new(socket), stream, input, daemon.shutting_down()).await;
            tracing::debug!(vm = %name, path = %query.path, ?ended, "file copy ended");
        })
    }))
}
