//! Session routes: a VM's guest sessions as JSON (start, list, show, stop,
//! wait, remove) and raw input to type into one. Attaching and following a
//! session's output are WebSocket routes of their own.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use banger_api::{ApiError, Session, SessionExit, SessionStartRequest, SessionStopRequest};
use futures::StreamExt;

use super::extract::{Json, Path};
use crate::error::{Error, Result};
use crate::guest::sessions::{self, MAX_SEND_BYTES};
use crate::Daemon;

/// Starts a session in a running VM: a command under a terminal that runs
/// on whoever is attached (nobody, at first).
#[utoipa::path(post, path = "/v1/vms/{name}/sessions", tag = "sessions", params(("name" = String, Path, description = "VM name")),
    request_body = SessionStartRequest,
    responses((status = 201, body = Session), (status = 400, body = ApiError), (status = 403, body = ApiError),
        (status = 409, body = ApiError), (status = 501, body = ApiError)))]
pub async fn start(
    State(daemon): State<Arc<Daemon>>,
    Path(name): Path<String>,
    Json(request): Json<SessionStartRequest>,
) -> Result<(StatusCode, Json<Session>)> {
    Ok((StatusCode::CREATED, Json(sessions::start(&daemon, &name, request).await?)))
}

/// A running VM's sessions, oldest first; ended ones stay until removed.
#[utoipa::path(get, path = "/v1/vms/{name}/sessions", tag = "sessions", params(("name" = String, Path, description = "VM name")),
    responses((status = 200, body = Vec<Session>), (status = 409, body = ApiError), (status = 501, body = ApiError)))]
pub async fn list(State(daemon): State<Arc<Daemon>>, Path(name): Path<String>) -> Result<Json<Vec<Session>>> {
    Ok(Json(sessions::list(&daemon, &name).await?))
}

/// One session.
#[utoipa::path(get, path = "/v1/vms/{name}/sessions/{session}", tag = "sessions",
    params(("name" = String, Path, description = "VM name"), ("session" = String, Path, description = "Session name")),
    responses((status = 200, body = Session), (status = 409, body = ApiError), (status = 501, body = ApiError)))]
pub async fn show(
    State(daemon): State<Arc<Daemon>>,
    Path((name, session)): Path<(String, String)>,
) -> Result<Json<Session>> {
    Ok(Json(sessions::get(&daemon, &name, &session).await?))
}

/// Removes an ended session and its output; a running one is refused (409).
#[utoipa::path(delete, path = "/v1/vms/{name}/sessions/{session}", tag = "sessions",
    params(("name" = String, Path, description = "VM name"), ("session" = String, Path, description = "Session name")),
    responses((status = 204, description = "Removed"), (status = 409, body = ApiError), (status = 501, body = ApiError)))]
pub async fn remove(
    State(daemon): State<Arc<Daemon>>,
    Path((name, session)): Path<(String, String)>,
) -> Result<StatusCode> {
    sessions::remove(&daemon, &name, &session).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Types the body into the session, byte for byte (no newline is added),
/// as it arrives: a guest that reads slowly slows the upload. At most 16 MiB.
#[utoipa::path(post, path = "/v1/vms/{name}/sessions/{session}/send", tag = "sessions",
    params(("name" = String, Path, description = "VM name"), ("session" = String, Path, description = "Session name")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The bytes to type"),
    responses((status = 204, description = "Typed"), (status = 409, body = ApiError), (status = 413, body = ApiError),
        (status = 415, body = ApiError), (status = 501, body = ApiError)))]
pub async fn send(
    State(daemon): State<Arc<Daemon>>,
    Path((name, session)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    if !content_type.starts_with("application/octet-stream") {
        return Err(Error::UnsupportedMediaType(
            "send the input as the body, with `Content-Type: application/octet-stream`".into(),
        ));
    }
    let length = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let mut input = Box::pin(body.into_data_stream().map(|chunk| chunk.map_err(|e| e.to_string())));
    if length.is_some_and(|n| n > MAX_SEND_BYTES) {
        drain(&mut input).await;
        return Err(sessions::too_large());
    }
    let sent = sessions::send(&daemon, &name, &session, &mut input).await;
    if sent.is_err() {
        drain(&mut input).await;
    }
    sent?;
    Ok(StatusCode::NO_CONTENT)
}

/// Reads what is left of a refused body (at most twice the limit, for at
/// most 5 s), so a client that is still sending gets the answer rather than
/// a connection reset under it by the unread bytes.
async fn drain<S>(input: &mut S)
where
    S: futures::Stream<Item = std::result::Result<bytes::Bytes, String>> + Unpin,
{
    let drain = async {
        let mut read = 0;
        while let Some(Ok(chunk)) = input.next().await {
            read += chunk.len() as u64;
            if read > 2 * MAX_SEND_BYTES {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), drain).await;
}

/// Signals the session's process group (`TERM` unless the body names another).
#[utoipa::path(post, path = "/v1/vms/{name}/sessions/{session}/stop", tag = "sessions",
    params(("name" = String, Path, description = "VM name"), ("session" = String, Path, description = "Session name")),
    request_body = SessionStopRequest,
    responses((status = 204, description = "Signalled"), (status = 409, body = ApiError), (status = 501, body = ApiError)))]
pub async fn stop(
    State(daemon): State<Arc<Daemon>>,
    Path((name, session)): Path<(String, String)>,
    Json(request): Json<SessionStopRequest>,
) -> Result<StatusCode> {
    sessions::stop(&daemon, &name, &session, request.signal).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Waits until the session's process ends, however long that takes (at
/// once if it has), and says how it ended. The connection is not timed
/// out while it waits; the VM stopping or the daemon shutting down ends
/// the wait with 409.
#[utoipa::path(post, path = "/v1/vms/{name}/sessions/{session}/wait", tag = "sessions",
    params(("name" = String, Path, description = "VM name"), ("session" = String, Path, description = "Session name")),
    responses((status = 200, body = SessionExit), (status = 409, body = ApiError), (status = 501, body = ApiError)))]
pub async fn wait(
    State(daemon): State<Arc<Daemon>>,
    Path((name, session)): Path<(String, String)>,
) -> Result<Json<SessionExit>> {
    Ok(Json(sessions::wait(&daemon, &name, &session).await?))
}
