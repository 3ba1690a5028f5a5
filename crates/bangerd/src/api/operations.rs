//! Operations and the event stream.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::State;
use axum::response::sse::{self, KeepAlive, Sse};
use banger_api::{ApiError, Event, Operation};
use futures::{Stream, StreamExt};
use serde::Deserialize;
use tokio_stream::wrappers::BroadcastStream;
use utoipa::IntoParams;

use super::extract::{Json, Path, Query};
use crate::error::{Error, Result};
use crate::Daemon;

/// How many recorded operations `GET /v1/operations` returns.
const LIST_LIMIT: u32 = 100;

/// Recent operations, newest first.
#[utoipa::path(get, path = "/v1/operations", tag = "operations",
    responses((status = 200, body = Vec<Operation>), (status = 500, body = ApiError)))]
pub async fn list(State(daemon): State<Arc<Daemon>>) -> Result<Json<Vec<Operation>>> {
    Ok(Json(daemon.ops.list(LIST_LIMIT)?))
}

/// One operation, with its progress or outcome.
#[utoipa::path(get, path = "/v1/operations/{id}", tag = "operations",
    params(("id" = String, Path, description = "Operation id")),
    responses((status = 200, body = Operation), (status = 404, body = ApiError)))]
pub async fn get(State(daemon): State<Arc<Daemon>>, Path(id): Path<String>) -> Result<Json<Operation>> {
    daemon.ops.get(&id)?.map(Json).ok_or(Error::NotFound { kind: "operation", name: id })
}

/// Which events to stream.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Only events about this operation.
    pub operation: Option<String>,
}

/// A Server-Sent Events stream: each `data:` line is one JSON `Event`.
/// Subscribing happens before the response starts, so a client that then
/// reads an operation's state misses nothing.
#[utoipa::path(get, path = "/v1/events", tag = "operations", params(EventsQuery),
    responses((status = 200, description = "Server-Sent Events; each data line is a JSON Event",
        content_type = "text/event-stream", body = Event)))]
pub async fn events(
    State(daemon): State<Arc<Daemon>>,
    Query(query): Query<EventsQuery>,
) -> Sse<impl Stream<Item = Result<sse::Event, Infallible>>> {
    let stream = BroadcastStream::new(daemon.events.subscribe())
        .filter_map(move |event| {
            let wanted = match (&event, &query.operation) {
                (Err(_), _) => false,
                (Ok(_), None) => true,
                (Ok(Event::Operation { operation }), Some(id)) => &operation.id == id,
                (Ok(_), Some(_)) => false,
            };
            std::future::ready(event.ok().filter(|_| wanted))
        })
        .map(|event| Ok(sse::Event::default().json_data(&event).unwrap_or_default()))
        .take_until(async move { daemon.shutting_down().await });
    Sse::new(stream).keep_alive(KeepAlive::default())
}
