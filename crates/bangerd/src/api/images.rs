//! Image routes: list, show, build and register (operations), remove.

use std::sync::Arc;

use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use banger_api::{
    ApiError, Image, ImageBuildRequest, ImagePruneReport, ImageRegisterRequest, ObjectKind, Operation, OperationKind,
};
use serde::Deserialize;
use utoipa::IntoParams;

use super::extract::{Json, Path, Query};
use super::{spawn, AtShutdown};
use crate::caller::Caller;
use crate::error::{Error, Result};
use crate::vm::ledger::blocking;
use crate::{image, Daemon};

/// Images in the store.
#[utoipa::path(get, path = "/v1/images", tag = "images",
    responses((status = 200, body = Vec<Image>), (status = 500, body = ApiError)))]
pub async fn list(State(daemon): State<Arc<Daemon>>) -> Result<Json<Vec<Image>>> {
    Ok(Json(daemon.images.list()?))
}

/// One image.
#[utoipa::path(get, path = "/v1/images/{name}", tag = "images",
    params(("name" = String, Path, description = "Image name")),
    responses((status = 200, body = Image), (status = 404, body = ApiError)))]
pub async fn show(State(daemon): State<Arc<Daemon>>, Path(name): Path<String>) -> Result<Json<Image>> {
    Ok(Json(daemon.images.get(&name)?))
}

/// Starts building an image from a recipe, a directory or a tarball.
#[utoipa::path(post, path = "/v1/images/build", tag = "images", request_body = ImageBuildRequest,
    responses((status = 202, body = Operation), (status = 400, body = ApiError), (status = 403, body = ApiError), (status = 404, body = ApiError),
        (status = 409, body = ApiError), (status = 501, body = ApiError)))]
pub async fn build(
    State(daemon): State<Arc<Daemon>>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    Json(mut request): Json<ImageBuildRequest>,
) -> Result<(StatusCode, Json<Operation>)> {
    image::validate_build(&mut request)?;
    crate::kernel::resolve::check_known(&daemon, &request.kernel).await?;
    let (input, request) =
        blocking(move || image::open_build_input(&caller, &request).map(|input| (input, request))).await?;
    image::agent_binary(&daemon)?;
    let lock = daemon.images.claim(&request.name, request.force)?;
    let op = daemon.ops.start(OperationKind::ImageBuild, &request.name, 4, "resolve kernel")?;
    let created = Some((ObjectKind::Image, request.name.clone()));
    Ok(spawn(daemon, op, created, AtShutdown::Cut, move |daemon, op| {
        Box::pin(image::build(daemon, op, request, input, lock))
    }))
}

/// Starts registering an existing ext4 root filesystem.
#[utoipa::path(post, path = "/v1/images/register", tag = "images", request_body = ImageRegisterRequest,
    responses((status = 202, body = Operation), (status = 400, body = ApiError), (status = 403, body = ApiError), (status = 404, body = ApiError),
        (status = 409, body = ApiError)))]
pub async fn register(
    State(daemon): State<Arc<Daemon>>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    Json(request): Json<ImageRegisterRequest>,
) -> Result<(StatusCode, Json<Operation>)> {
    crate::kernel::resolve::check_known(&daemon, &request.kernel).await?;
    let (rootfs, request) =
        blocking(move || image::open_register_input(&caller, &request).map(|rootfs| (rootfs, request))).await?;
    let lock = daemon.images.claim(&request.name, request.force)?;
    let op = daemon.ops.start(OperationKind::ImageRegister, &request.name, 3, "resolve kernel")?;
    let created = Some((ObjectKind::Image, request.name.clone()));
    Ok(spawn(daemon, op, created, AtShutdown::Cut, move |daemon, op| {
        Box::pin(image::register(daemon, op, request, rootfs, lock))
    }))
}

/// Query of `DELETE /v1/images/{name}`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct RemoveQuery {
    /// Remove even if VMs were made from it (they keep their own disks).
    #[serde(default)]
    pub force: bool,
}

/// Removes an image; refused while VMs use it, unless forced.
#[utoipa::path(delete, path = "/v1/images/{name}", tag = "images",
    params(("name" = String, Path, description = "Image name"), RemoveQuery),
    responses((status = 204, description = "Removed"), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub async fn remove(
    State(daemon): State<Arc<Daemon>>,
    Path(name): Path<String>,
    Query(query): Query<RemoveQuery>,
) -> Result<StatusCode> {
    daemon.images.get(&name)?;
    let users: Vec<String> = daemon.vm_records()?.into_iter().filter(|r| r.image == name).map(|r| r.name).collect();
    if !users.is_empty() && !query.force {
        return Err(Error::Conflict(format!(
            "image {name:?} is used by VM(s) {}; --force removes it anyway (the VMs keep their own disks but cannot be recreated from it)",
            users.join(", ")
        )));
    }
    let d = Arc::clone(&daemon);
    let n = name.clone();
    tokio::task::spawn_blocking(move || d.images.remove(&n)).await.map_err(|e| Error::Internal(e.to_string()))??;
    daemon.events.publish(banger_api::Event::Deleted { kind: ObjectKind::Image, name });
    Ok(StatusCode::NO_CONTENT)
}

/// Removes what the image store keeps only as a cache and no VM needs: the
/// work-disk seeds of sizes no VM has (they also go by themselves when
/// their last VM is removed).
#[utoipa::path(post, path = "/v1/images/prune", tag = "images",
    responses((status = 200, body = ImagePruneReport), (status = 500, body = ApiError)))]
pub async fn prune(State(daemon): State<Arc<Daemon>>) -> Result<Json<ImagePruneReport>> {
    Ok(Json(image::prune_seeds(&daemon).await?))
}
