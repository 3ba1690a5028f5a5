//! VM routes: create and start (operations), the lifecycle and logs
//! (exec is in `streams`).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use banger_api::{
    ApiError, DiskResizeRequest, ObjectKind, Operation, OperationKind, Vm, VmCreateRequest, VmSetRequest, VmState,
};
use serde::Deserialize;
use utoipa::IntoParams;

use super::extract::{Json, Path, Query};
use super::{spawn, AtShutdown};
use crate::error::Result;
use crate::vm::state::Admitted;
use crate::vm::{create, lifecycle, VmAction};
use crate::Daemon;

/// Every VM.
#[utoipa::path(get, path = "/v1/vms", tag = "vms", responses((status = 200, body = Vec<Vm>), (status = 500, body = ApiError)))]
pub async fn list(State(daemon): State<Arc<Daemon>>) -> Result<Json<Vec<Vm>>> {
    let records = daemon.vm_records()?;
    Ok(Json(records.iter().map(|r| daemon.vm_view(r)).collect::<Result<_>>()?))
}

/// One VM.
#[utoipa::path(get, path = "/v1/vms/{name}", tag = "vms", params(("name" = String, Path, description = "VM name")),
    responses((status = 200, body = Vm), (status = 404, body = ApiError)))]
pub async fn show(State(daemon): State<Arc<Daemon>>, Path(name): Path<String>) -> Result<Json<Vm>> {
    Ok(Json(daemon.vm_view(&daemon.vm_record(&name)?)?))
}

/// Starts creating (and booting) a VM.
#[utoipa::path(post, path = "/v1/vms", tag = "vms", request_body = VmCreateRequest,
    responses((status = 202, body = Operation), (status = 400, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError),
        (status = 501, body = ApiError)))]
pub async fn create(
    State(daemon): State<Arc<Daemon>>,
    Json(mut request): Json<VmCreateRequest>,
) -> Result<(StatusCode, Json<Operation>)> {
    crate::vm::validate_name(&request.name)?;
    let guard = daemon.vms.try_lock(&request.name)?;
    create::validate(&daemon, &mut request)?;
    if let Some(kernel) = &request.kernel {
        crate::kernel::resolve::check_known(&daemon, kernel).await?;
    }
    let steps = if request.no_start { 3 } else { 5 };
    let op = daemon.ops.start(OperationKind::VmCreate, &request.name, steps, "resolve image and kernel")?;
    let created = Some((ObjectKind::Vm, request.name.clone()));
    Ok(spawn(daemon, op, created, AtShutdown::Finish, move |daemon, op| {
        Box::pin(create::create(daemon, op, request, guard))
    }))
}

/// Admits `action` on VM `name` and, when the state machine says it
/// preempts, asks the operation in progress to give way at once; the
/// operation's work then takes the VM's lock.
fn admit(daemon: &Daemon, name: &str, action: VmAction) -> Result<Admitted> {
    let (_, admitted) = daemon.admit(name, action)?;
    if admitted == Admitted::Preempt {
        daemon.vms.preempt(name, action);
    }
    Ok(admitted)
}

/// Boots a stopped VM (an operation).
#[utoipa::path(post, path = "/v1/vms/{name}/start", tag = "vms", params(("name" = String, Path, description = "VM name")),
    responses((status = 202, body = Operation), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub async fn start(
    State(daemon): State<Arc<Daemon>>,
    Path(name): Path<String>,
) -> Result<(StatusCode, Json<Operation>)> {
    admit(&daemon, &name, VmAction::Start)?;
    let op = daemon.ops.start(OperationKind::VmStart, &name, 2, "boot")?;
    Ok(spawn(daemon, op, None, AtShutdown::Finish, move |daemon, op| Box::pin(lifecycle::start(daemon, op, name))))
}

/// Restarts a VM: stop (if running), then start (an operation).
#[utoipa::path(post, path = "/v1/vms/{name}/restart", tag = "vms", params(("name" = String, Path, description = "VM name")),
    responses((status = 202, body = Operation), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub async fn restart(
    State(daemon): State<Arc<Daemon>>,
    Path(name): Path<String>,
) -> Result<(StatusCode, Json<Operation>)> {
    let admitted = admit(&daemon, &name, VmAction::Restart)?;
    let op = daemon.ops.start(OperationKind::VmRestart, &name, 3, "stop")?;
    Ok(spawn(daemon, op, None, AtShutdown::Finish, move |daemon, op| {
        Box::pin(lifecycle::restart(daemon, op, name, admitted))
    }))
}

/// Stops a VM (an operation): the guest is asked to power off, then the
/// VMM is stopped, then killed. A boot in progress is cancelled.
#[utoipa::path(post, path = "/v1/vms/{name}/stop", tag = "vms", params(("name" = String, Path, description = "VM name")),
    responses((status = 202, body = Operation), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub async fn stop(
    State(daemon): State<Arc<Daemon>>,
    Path(name): Path<String>,
) -> Result<(StatusCode, Json<Operation>)> {
    let admitted = admit(&daemon, &name, VmAction::Stop)?;
    let op = daemon.ops.start(OperationKind::VmStop, &name, 1, "stop")?;
    Ok(spawn(daemon, op, None, AtShutdown::Finish, move |daemon, _| Box::pin(lifecycle::stop(daemon, name, admitted))))
}

/// Kills a VM's VMM at once (an operation), cancelling a boot or a stop in progress.
#[utoipa::path(post, path = "/v1/vms/{name}/kill", tag = "vms", params(("name" = String, Path, description = "VM name")),
    responses((status = 202, body = Operation), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub async fn kill(
    State(daemon): State<Arc<Daemon>>,
    Path(name): Path<String>,
) -> Result<(StatusCode, Json<Operation>)> {
    let admitted = admit(&daemon, &name, VmAction::Kill)?;
    let op = daemon.ops.start(OperationKind::VmKill, &name, 1, "kill")?;
    Ok(spawn(daemon, op, None, AtShutdown::Finish, move |daemon, _| Box::pin(lifecycle::kill(daemon, name, admitted))))
}

/// Query of `DELETE /v1/vms/{name}`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct RemoveQuery {
    /// Kill a VM that is not stopped (cancelling its boot or stop) instead of refusing.
    #[serde(default)]
    pub force: bool,
}

/// Removes a VM and everything it holds (an operation).
#[utoipa::path(delete, path = "/v1/vms/{name}", tag = "vms", params(("name" = String, Path, description = "VM name"), RemoveQuery),
    responses((status = 202, body = Operation), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub async fn remove(
    State(daemon): State<Arc<Daemon>>,
    Path(name): Path<String>,
    Query(query): Query<RemoveQuery>,
) -> Result<(StatusCode, Json<Operation>)> {
    let admitted = admit(&daemon, &name, VmAction::Remove { force: query.force })?;
    let op = daemon.ops.start(OperationKind::VmRemove, &name, 1, "remove")?;
    Ok(spawn(daemon, op, None, AtShutdown::Finish, move |daemon, _| {
        Box::pin(lifecycle::remove(daemon, name, query.force, admitted))
    }))
}

/// Changes a stopped VM's vCPUs or memory.
#[utoipa::path(patch, path = "/v1/vms/{name}", tag = "vms", params(("name" = String, Path, description = "VM name")),
    request_body = VmSetRequest, responses((status = 200, body = Vm), (status = 409, body = ApiError)))]
pub async fn set(
    State(daemon): State<Arc<Daemon>>,
    Path(name): Path<String>,
    Json(request): Json<VmSetRequest>,
) -> Result<Json<Vm>> {
    Ok(Json(lifecycle::set(&daemon, &name, request).await?))
}

/// Grows a stopped VM's root disk.
#[utoipa::path(post, path = "/v1/vms/{name}/disk/resize", tag = "vms", params(("name" = String, Path, description = "VM name")),
    request_body = DiskResizeRequest, responses((status = 200, body = Vm), (status = 400, body = ApiError), (status = 409, body = ApiError),
        (status = 501, body = ApiError)))]
pub async fn resize_disk(
    State(daemon): State<Arc<Daemon>>,
    Path(name): Path<String>,
    Json(request): Json<DiskResizeRequest>,
) -> Result<Json<Vm>> {
    Ok(Json(lifecycle::resize_disk(&daemon, &name, request.size_bytes).await?))
}

/// Query of `GET /v1/vms/{name}/logs`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct LogsQuery {
    /// Keep streaming as the console writes, until the VM stops.
    #[serde(default)]
    pub follow: bool,
}

/// The VM's console output.
#[utoipa::path(get, path = "/v1/vms/{name}/logs", tag = "vms", params(("name" = String, Path, description = "VM name"), LogsQuery),
    responses((status = 200, description = "Console output", content_type = "text/plain"), (status = 404, body = ApiError),
        (status = 501, body = ApiError)))]
pub async fn logs(
    State(daemon): State<Arc<Daemon>>,
    Path(name): Path<String>,
    Query(query): Query<LogsQuery>,
) -> Result<Response> {
    let record = daemon.vm_record(&name)?;
    let path = daemon.driver(&record)?.console_log(&daemon.vm_run_dir(&name));
    let stream = async_stream(daemon, name, path, query.follow);
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], Body::from_stream(stream)).into_response())
}

/// The console file from the start, then (when following) what is appended
/// to it, until the VM stops or the daemon shuts down.
fn async_stream(
    daemon: Arc<Daemon>,
    name: String,
    path: std::path::PathBuf,
    follow: bool,
) -> impl futures::Stream<Item = std::io::Result<bytes::Bytes>> {
    futures::stream::unfold((0u64, false), move |(mut offset, done)| {
        let (daemon, name, path) = (Arc::clone(&daemon), name.clone(), path.clone());
        async move {
            if done {
                return None;
            }
            loop {
                // The console starts over when the VM is started again.
                if tokio::fs::metadata(&path).await.is_ok_and(|m| m.len() < offset) {
                    offset = 0;
                }
                let chunk = read_from(&path, offset).await;
                if !chunk.is_empty() {
                    let next = offset + chunk.len() as u64;
                    return Some((Ok(bytes::Bytes::from(chunk)), (next, false)));
                }
                let running = daemon.vm_record(&name).is_ok_and(|r| {
                    matches!(r.state, VmState::Starting | VmState::Running | VmState::Paused | VmState::Stopping)
                });
                if !follow || !running {
                    return None;
                }
                tokio::select! {
                    _ = daemon.shutting_down() => return None,
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
        }
    })
}

async fn read_from(path: &std::path::Path, offset: u64) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let Ok(mut file) = tokio::fs::File::open(path).await else {
        return Vec::new();
    };
    if file.seek(std::io::SeekFrom::Start(offset)).await.is_err() {
        return Vec::new();
    }
    let mut buf = Vec::new();
    let _ = (&mut file).take(1 << 20).read_to_end(&mut buf).await;
    buf
}
