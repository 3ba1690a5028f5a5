//! One stream the host opened: its first message says what it is for. This
//! routes it to the module that serves it, answers what needs nothing
//! more, and holds the rules every stream follows: a request that fails is
//! answered with an `error`, and a stream ends when both sides closed it.

use std::sync::Arc;

use banger_agent_proto::mux::{Event, MuxError, Stream};
use banger_agent_proto::{ErrorKind, Reply, Request};

use crate::log::log;
use crate::serve::Agent;
use crate::{connect, copy, exec, init, ports, session, stats};

/// Why a request failed, as the host is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) kind: ErrorKind,
    pub(crate) message: String,
}

impl Refusal {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Refusal {
        Refusal { kind, message: message.into() }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Refusal {
        Refusal::new(ErrorKind::InvalidArgument, message)
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Refusal {
        Refusal::new(ErrorKind::NotFound, message)
    }

    /// The kind that matches an I/O error (a missing file, a refused one, or a failure).
    pub(crate) fn of_io(error: &std::io::Error, message: impl Into<String>) -> Refusal {
        let kind = match error.kind() {
            std::io::ErrorKind::NotFound => ErrorKind::NotFound,
            std::io::ErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
            std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData => ErrorKind::InvalidArgument,
            _ => ErrorKind::Internal,
        };
        Refusal::new(kind, message)
    }

    pub(crate) fn reply(self) -> Reply {
        Reply::Error { message: self.message, kind: self.kind }
    }
}

/// Serves one new stream; `first` is its first event if it was taken
/// already (see `serve`).
pub(crate) async fn serve(mut stream: Stream, first: Option<Result<Option<Event>, MuxError>>, agent: Arc<Agent>) {
    let first = match first {
        Some(first) => first,
        None => stream.recv().await,
    };
    let Ok(Some(Event::Control(json))) = first else {
        return; // Reset before anything could be read: nothing to answer.
    };
    let request = match serde_json::from_slice::<Request>(&json) {
        Ok(request) => request,
        Err(e) => return answer(stream, Refusal::invalid(format!("bad request: {e}")).reply()).await,
    };
    match request {
        Request::Exec(exec) => exec::run(stream, exec, &agent).await,
        Request::SessionStart(start) => session::serve::start(stream, start, &agent.sessions).await,
        Request::SessionList => answer(stream, Reply::Sessions { sessions: agent.sessions.list() }).await,
        Request::SessionAttach { name, size, read_only } => {
            session::serve::attach(stream, &name, size, read_only, &agent.sessions).await
        }
        Request::SessionLogs { name, follow, tail } => {
            session::serve::logs(stream, &name, follow, tail, &agent.sessions).await
        }
        Request::SessionSend { name } => session::serve::send(stream, &name, &agent.sessions).await,
        Request::SessionStop { name, signal } => {
            let reply = agent.sessions.stop(&name, signal.unwrap_or(libc::SIGTERM)).map(|()| Reply::Done);
            answer(stream, reply.unwrap_or_else(Refusal::reply)).await
        }
        Request::SessionWait { name } => session::serve::wait(stream, &name, &agent.sessions).await,
        Request::SessionRemove { name } => {
            let reply = agent.sessions.remove(&name).map(|()| Reply::Done);
            answer(stream, reply.unwrap_or_else(Refusal::reply)).await
        }
        Request::CopyIn { dest } => copy::copy_in(stream, &dest).await,
        Request::CopyOut { path } => copy::copy_out(stream, &path).await,
        Request::Stats => {
            let reply = match tokio::task::spawn_blocking(stats::collect).await {
                Ok(stats) => Reply::Stats(stats),
                Err(e) => Refusal::new(ErrorKind::Internal, format!("cannot read the guest's counters: {e}")).reply(),
            };
            answer(stream, reply).await
        }
        Request::Ports => {
            let reply = match tokio::task::spawn_blocking(ports::listeners).await {
                Ok(ports) => Reply::Ports { ports },
                Err(e) => Refusal::new(ErrorKind::Internal, format!("cannot list the guest's sockets: {e}")).reply(),
            };
            answer(stream, reply).await
        }
        Request::Connect { port } => connect::connect(stream, port).await,
        Request::Ping => answer(stream, Reply::Pong).await,
        Request::Poweroff => power_off(stream, &agent).await,
        Request::Hello(_) => answer(stream, Refusal::invalid("a hello belongs on stream 0").reply()).await,
        Request::Signal { .. } | Request::Resize(_) => {
            let message = "nothing runs on this stream: a signal or a resize goes on the stream of its exec or attach";
            answer(stream, Refusal::invalid(message).reply()).await
        }
        Request::Unknown => {
            let message = format!("this agent (banger-agent {}) does not know that request", env!("CARGO_PKG_VERSION"));
            answer(stream, Refusal::new(ErrorKind::Unsupported, message).reply()).await
        }
    }
}

/// Sends a stream's last reply and ends it.
pub(crate) async fn answer(stream: Stream, reply: Reply) {
    let _ = stream.send(&reply).await;
    close(stream).await;
}

/// Closes this side and waits for the host's close (or reset): dropping a
/// stream before that would reset it, and a reset may overtake what was
/// sent last. What the host still sends meanwhile is dropped.
pub(crate) async fn close(mut stream: Stream) {
    if stream.close().await.is_err() {
        return;
    }
    while let Ok(Some(_)) = stream.recv().await {}
}

async fn power_off(stream: Stream, agent: &Agent) {
    if !agent.is_init {
        // Not init (a host process standing for a guest, in tests): the
        // machine's power-off ends the agent and what it runs, as a
        // guest's power-off ends its VMM. No reply, as from a guest.
        log!("power-off requested: not the guest's init, so the agent ends its commands and exits");
        agent.reaper.signal_all_groups(libc::SIGKILL);
        std::process::exit(0);
    }
    let message = match tokio::task::spawn_blocking(init::power_off).await {
        Ok(e) => format!("cannot power off: {e}"),
        Err(e) => format!("cannot power off: {e}"),
    };
    log!("{message}");
    answer(stream, Refusal::new(ErrorKind::Internal, message).reply()).await;
}
