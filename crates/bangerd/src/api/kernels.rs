//! Kernel routes: the store, the catalogs, pulls and imports (both
//! operations), and bundles streamed back to the client.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use banger_api::{
    ApiError, CatalogListing, Event, Kernel, KernelImportRequest, KernelPullRequest, ObjectKind, Operation,
    OperationKind,
};
use banger_kernel::catalog;

use super::extract::{Json, Path, Query};
use super::{spawn, AtShutdown};
use crate::caller::Caller;
use crate::error::{Error, Result};
use crate::kernel;
use crate::Daemon;

/// Kernels in the local store.
#[utoipa::path(get, path = "/v1/kernels", tag = "kernels",
    responses((status = 200, body = Vec<Kernel>), (status = 500, body = ApiError)))]
pub async fn list(State(daemon): State<Arc<Daemon>>) -> Result<Json<Vec<Kernel>>> {
    Ok(Json(daemon.kernels.list()?))
}

/// Every catalog entry, marked pulled or available.
#[utoipa::path(get, path = "/v1/kernels/catalog", tag = "kernels",
    responses((status = 200, body = Vec<CatalogListing>), (status = 400, body = ApiError), (status = 502, body = ApiError)))]
pub async fn catalog(State(daemon): State<Arc<Daemon>>) -> Result<Json<Vec<CatalogListing>>> {
    let entries = kernel::catalog::load(&daemon.http, &daemon.config.catalogs).await?;
    let local: BTreeSet<String> = daemon.kernels.list()?.into_iter().map(|k| k.name).collect();
    Ok(Json(catalog::annotate(&entries, &local)))
}

/// One stored kernel.
#[utoipa::path(get, path = "/v1/kernels/{name}", tag = "kernels",
    params(("name" = String, Path, description = "Kernel name")),
    responses((status = 200, body = Kernel), (status = 404, body = ApiError)))]
pub async fn show(State(daemon): State<Arc<Daemon>>, Path(name): Path<String>) -> Result<Json<Kernel>> {
    Ok(Json(daemon.kernels.get(&name)?))
}

/// Query of `DELETE /v1/kernels/{name}`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct RemoveQuery {
    /// Remove it even if images or VMs boot it.
    #[serde(default)]
    pub force: bool,
}

/// Removes a stored kernel; refused while images or VMs boot it, unless forced.
#[utoipa::path(delete, path = "/v1/kernels/{name}", tag = "kernels",
    params(("name" = String, Path, description = "Kernel name"), RemoveQuery),
    responses((status = 204, description = "Removed"), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub async fn remove(
    State(daemon): State<Arc<Daemon>>,
    Path(name): Path<String>,
    Query(query): Query<RemoveQuery>,
) -> Result<StatusCode> {
    daemon.kernels.get(&name)?;
    let mut users: Vec<String> =
        daemon.images.list()?.into_iter().filter(|i| i.kernel == name).map(|i| format!("image {}", i.name)).collect();
    users.extend(daemon.vm_records()?.into_iter().filter(|r| r.kernel == name).map(|r| format!("VM {}", r.name)));
    if !users.is_empty() && !query.force {
        return Err(Error::Conflict(format!(
            "kernel {name:?} is used by {}; --force removes it anyway (they will not boot until it is back)",
            users.join(", ")
        )));
    }
    let d = Arc::clone(&daemon);
    let n = name.clone();
    tokio::task::spawn_blocking(move || d.kernels.remove(&n))
        .await
        .map_err(|e| Error::Internal(format!("remove task: {e}")))??;
    tracing::info!(kernel = %name, "kernel removed");
    daemon.events.publish(Event::Deleted { kind: ObjectKind::Kernel, name });
    Ok(StatusCode::NO_CONTENT)
}

/// Starts pulling a catalog kernel; answers with the operation at once.
#[utoipa::path(post, path = "/v1/kernels/pull", tag = "kernels", request_body = KernelPullRequest,
    responses((status = 202, body = Operation), (status = 404, body = ApiError), (status = 409, body = ApiError), (status = 502, body = ApiError)))]
pub async fn pull(
    State(daemon): State<Arc<Daemon>>,
    Json(request): Json<KernelPullRequest>,
) -> Result<(StatusCode, Json<Operation>)> {
    catalog::validate_name(&request.name).map_err(Error::InvalidArgument)?;
    let entries = kernel::catalog::load(&daemon.http, &daemon.config.catalogs).await?;
    let entry = catalog::lookup(&entries, &request.name)?.clone();
    let lock = daemon.kernels.lock(&request.name)?;
    daemon.kernels.check_replace(&request.name, request.force)?;
    let op = daemon.ops.start(OperationKind::KernelPull, &request.name, 2, "download")?;
    let created = Some((ObjectKind::Kernel, request.name.clone()));
    Ok(spawn(daemon, op, created, AtShutdown::Cut, move |daemon, op| {
        Box::pin(kernel::fetch::pull(daemon, op, entry, lock))
    }))
}

/// Starts importing a kernel from files on the daemon's host.
#[utoipa::path(post, path = "/v1/kernels/import", tag = "kernels", request_body = KernelImportRequest,
    responses((status = 202, body = Operation), (status = 400, body = ApiError), (status = 403, body = ApiError),
        (status = 409, body = ApiError), (status = 413, body = ApiError)))]
pub async fn import(
    State(daemon): State<Arc<Daemon>>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    Json(request): Json<KernelImportRequest>,
) -> Result<(StatusCode, Json<Operation>)> {
    catalog::validate_name(&request.name).map_err(Error::InvalidArgument)?;
    let lock = daemon.kernels.lock(&request.name)?;
    daemon.kernels.check_replace(&request.name, request.force)?;
    let (sources, request) = crate::vm::ledger::blocking(move || {
        kernel::import::open_sources(&caller, &request).map(|sources| (sources, request))
    })
    .await?;
    let op = daemon.ops.start(OperationKind::KernelImport, &request.name, 4, "extract")?;
    let created = Some((ObjectKind::Kernel, request.name.clone()));
    Ok(spawn(daemon, op, created, AtShutdown::Cut, move |daemon, op| {
        Box::pin(kernel::import::import(daemon, op, request, sources, lock))
    }))
}

/// Streams a stored kernel as a `.tar.zst` bundle; `kernel bundle` writes
/// it to a file and prints the catalog entry.
#[utoipa::path(get, path = "/v1/kernels/{name}/bundle", tag = "kernels",
    params(("name" = String, Path, description = "Kernel name")),
    responses((status = 200, description = "The bundle", content_type = "application/zstd"), (status = 404, body = ApiError),
        (status = 409, body = ApiError)))]
pub async fn bundle(State(daemon): State<Arc<Daemon>>, Path(name): Path<String>) -> Result<Response> {
    daemon.kernels.get(&name)?;
    let lock = daemon.kernels.lock(&name)?;
    let dir = daemon.kernels.dir(&name);
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(16);
    tokio::task::spawn_blocking(move || {
        let _lock = lock;
        let writer = std::io::BufWriter::with_capacity(256 * 1024, ChannelWriter(tx.clone()));
        if let Err(e) = banger_kernel::bundle::create(&dir, writer, 3) {
            tracing::error!(kernel = %name, error = %e, "bundle failed");
            // An error item aborts the response, so the client sees a
            // broken transfer rather than a short, valid-looking file.
            let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
        }
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    Ok(([(header::CONTENT_TYPE, "application/zstd")], body).into_response())
}

/// A blocking writer that hands its bytes to the response body.
struct ChannelWriter(tokio::sync::mpsc::Sender<std::io::Result<bytes::Bytes>>);

impl std::io::Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .blocking_send(Ok(bytes::Bytes::copy_from_slice(buf)))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
