//! The WebSocket routes that carry a process's bytes: exec, session
//! attach and session logs (messages: `banger_api::stream`). Each opens
//! one agent stream and relays it ([`super::ws`]). What stops a stream
//! before anything runs (no such VM, a VM not running, no such program or
//! session) reaches the client as an `error` message and a close, with
//! the codes the JSON routes use.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::Response;
use banger_agent_proto::{ExecRequest, FrameKind, Reply, Request, TtySize};
use banger_api::stream::{ClientMessage, ExecStart, ServerMessage};
use serde::Deserialize;
use utoipa::IntoParams;

use super::extract::{Path, Query};
use super::ws::{self, Input, Upgrade};
use crate::agent::AgentError;
use crate::error::Error;
use crate::vm::lifecycle;
use crate::Daemon;

/// How long a new exec stream may take to send its `start`.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// What the 101 answer of these routes says.
const SWITCHING: &str = "Switching to a WebSocket carrying banger_api::stream messages";

/// Runs a command in the VM, over a WebSocket. The client's first message
/// is `start` (argv, env, cwd, user, tty, term, stdin); the daemon answers
/// `started` and relays the command's output as binary messages (channel
/// 1 stdout, 2 stderr) and the client's stdin (channel 0), `resize`,
/// `signal` and `stdin_eof`, until `exited`. A client that leaves hangs
/// the command up.
#[utoipa::path(get, path = "/v1/vms/{name}/exec", tag = "vms", params(("name" = String, Path, description = "VM name")),
    responses((status = 101, description = SWITCHING), (status = 400, body = banger_api::ApiError)))]
pub async fn exec(State(daemon): State<Arc<Daemon>>, Path(name): Path<String>, Upgrade(upgrade): Upgrade) -> Response {
    upgrade.on_upgrade(move |socket| {
        let tracker = daemon.tasks.clone();
        tracker.track_future(async move {
            let mut client = ws::Client::new(socket);
            let start = match client.first_message(START_TIMEOUT).await {
                Ok(Some(ClientMessage::Start(start))) => start,
                Ok(None) => return,
                Ok(Some(_)) => {
                    let error = Error::InvalidArgument("the first message must be `start`".into());
                    return client.tx.refuse(error.to_api(), false).await;
                }
                Err(error) => return client.tx.refuse(error.to_api(), false).await,
            };
            let stdin = start.stdin;
            let stream = match open(&daemon, &name, exec_request(start)).await {
                Ok((reply, stream)) => {
                    let pid = match reply {
                        Reply::Started { pid } => Some(pid),
                        _ => None,
                    };
                    client.tx.send(&ServerMessage::Started { pid }).await;
                    stream
                }
                Err((error, guest)) => return client.tx.refuse(error.to_api(), guest).await,
            };
            if !stdin && stream.finish(FrameKind::Stdin).await.is_err() {
                tracing::debug!(vm = %name, "the exec stream ended before its input was closed");
            }
            let ended = ws::relay(client, stream, Input::Exec { stdin }, daemon.shutting_down()).await;
            tracing::debug!(vm = %name, ?ended, "exec stream ended");
        })
    })
}

fn exec_request(start: ExecStart) -> Request {
    Request::Exec(ExecRequest {
        argv: start.argv,
        env: start.env.into_iter().collect(),
        cwd: start.cwd,
        user: start.user,
        tty: start.tty.map(|t| TtySize { rows: t.rows, cols: t.cols }),
        term: start.term,
    })
}

/// Sends `request` to VM `name`'s agent on a new stream; a refusal says
/// whether the guest (true) or the daemon made it.
async fn open(
    daemon: &Arc<Daemon>,
    name: &str,
    request: Request,
) -> Result<(Reply, banger_agent_proto::mux::Stream), (Error, bool)> {
    if let Request::Exec(ExecRequest { argv, .. }) = &request {
        if argv.is_empty() || argv[0].is_empty() {
            return Err((Error::InvalidArgument("`argv` needs a program".into()), false));
        }
    }
    let agent = lifecycle::agent(daemon, name).await.map_err(|e| (e, false))?;
    match agent.request(&request).await {
        Ok(answer) => Ok(answer),
        Err(refused @ AgentError::Refused { .. }) => Err((Error::Agent(refused), true)),
        Err(other) => Err((Error::Agent(other), false)),
    }
}

/// Query of `GET /v1/vms/{name}/sessions/{session}/attach`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AttachQuery {
    /// The client terminal's rows (with `cols`; default: the session's size).
    pub rows: Option<u16>,
    /// The client terminal's columns.
    pub cols: Option<u16>,
    /// Watch without typing.
    #[serde(default)]
    pub read_only: bool,
}

/// Attaches to a guest session, over a WebSocket: the daemon sends
/// `started`, the session's screen as it is and then its live output
/// (channel 1); the client's stdin (channel 0, unless read-only) is typed
/// into it and `resize` changes its size. Closing the WebSocket detaches;
/// when the session's process ends the daemon sends `exited` and closes.
#[utoipa::path(get, path = "/v1/vms/{name}/sessions/{session}/attach", tag = "vms",
    params(("name" = String, Path, description = "VM name"), ("session" = String, Path, description = "Session name"), AttachQuery),
    responses((status = 101, description = SWITCHING), (status = 400, body = banger_api::ApiError)))]
pub async fn attach(
    State(daemon): State<Arc<Daemon>>,
    Path((name, session)): Path<(String, String)>,
    Query(query): Query<AttachQuery>,
    Upgrade(upgrade): Upgrade,
) -> Response {
    let size = match (query.rows, query.cols) {
        (Some(rows), Some(cols)) if rows > 0 && cols > 0 => Some(TtySize { rows, cols }),
        _ => None,
    };
    let request = Request::SessionAttach { name: session, size, read_only: query.read_only };
    let input = Input::Attach { read_only: query.read_only };
    upgrade.on_upgrade(move |socket| {
        daemon.tasks.clone().track_future(session_stream(daemon, name, request, input, socket))
    })
}

/// Query of `GET /v1/vms/{name}/sessions/{session}/logs`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct SessionLogsQuery {
    /// Keep streaming the session's output until its process ends.
    #[serde(default)]
    pub follow: bool,
    /// Only the last this many lines of the history.
    pub tail: Option<u64>,
}

/// A guest session's output, over a WebSocket: its history (the last
/// `tail` lines) as channel 1, then with `follow` its live output until
/// its process ends (`exited`). The daemon closes the WebSocket at the end.
#[utoipa::path(get, path = "/v1/vms/{name}/sessions/{session}/logs", tag = "vms",
    params(("name" = String, Path, description = "VM name"), ("session" = String, Path, description = "Session name"), SessionLogsQuery),
    responses((status = 101, description = SWITCHING), (status = 400, body = banger_api::ApiError)))]
pub async fn session_logs(
    State(daemon): State<Arc<Daemon>>,
    Path((name, session)): Path<(String, String)>,
    Query(query): Query<SessionLogsQuery>,
    Upgrade(upgrade): Upgrade,
) -> Response {
    let request = Request::SessionLogs { name: session, follow: query.follow, tail: query.tail };
    upgrade.on_upgrade(move |socket| {
        daemon.tasks.clone().track_future(async move {
            let client = ws::Client::new(socket);
            // The history comes first, with no reply before it.
            let stream = match lifecycle::agent(&daemon, &name).await.and_then(|agent| Ok(agent.open()?)) {
                Ok(stream) => stream,
                Err(error) => return client.tx.refuse(error.to_api(), false).await,
            };
            if let Err(error) = stream.send(&request).await {
                return client.tx.refuse(Error::Agent(error.into()).to_api(), false).await;
            }
            let ended = ws::relay(client, stream, Input::None, daemon.shutting_down()).await;
            tracing::debug!(vm = %name, ?ended, "session logs stream ended");
        })
    })
}

/// Attaches to a session and relays the attachment.
async fn session_stream(
    daemon: Arc<Daemon>,
    name: String,
    request: Request,
    input: Input,
    socket: axum::extract::ws::WebSocket,
) {
    let client = ws::Client::new(socket);
    let stream = match open(&daemon, &name, request).await {
        Ok((Reply::Session(info), stream)) => {
            client.tx.send(&ServerMessage::Started { pid: info.pid }).await;
            stream
        }
        // A session that has ended: its end is all there is to show.
        Ok((Reply::Exited { code, signal }, _)) => {
            client.tx.send(&ServerMessage::exited(code, signal)).await;
            return client.tx.close(ws::CLOSE_NORMAL, "").await;
        }
        Ok((_, stream)) => stream,
        Err((error, guest)) => return client.tx.refuse(error.to_api(), guest).await,
    };
    let ended = ws::relay(client, stream, input, daemon.shutting_down()).await;
    tracing::debug!(vm = %name, ?ended, "session attach ended");
}
