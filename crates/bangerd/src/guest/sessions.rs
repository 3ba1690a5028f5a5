//! Guest sessions through the JSON API: start (with a default name), list,
//! send input (streamed, the agent's window pacing the client), signal,
//! wait for the end, remove. The agent owns the sessions; the daemon keeps
//! nothing of them, so they outlive a daemon restart.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use banger_agent_proto::features::SESSIONS;
use banger_agent_proto::{ErrorKind, ExecRequest, Reply, Request, SessionInfo, SessionStart};
use banger_api::{Session, SessionExit, SessionStartRequest, SessionState, Signal, Timestamp};
use bytes::Bytes;
use futures::Stream;

use super::{agent, unexpected, upload};
use crate::agent::{AgentConn, AgentError};
use crate::error::{Error, Result};
use crate::Daemon;

/// The most input one `send` takes, in bytes.
pub const MAX_SEND_BYTES: u64 = 16 << 20;

/// How many names a start tries when another start takes the one it chose.
const NAME_TRIES: usize = 3;

/// How many times a wait follows the agent onto a new connection (the old
/// one ended: the agent went silent for a while, or restarted).
const WAIT_RECONNECTS: usize = 5;

/// Starts a session; without a name it gets the smallest number free.
pub async fn start(daemon: &Arc<Daemon>, vm: &str, request: SessionStartRequest) -> Result<Session> {
    validate(&request)?;
    let agent = agent(daemon, vm, "session start", SESSIONS).await?;
    let SessionStartRequest { name, argv, env, cwd, user } = request;
    let exec = ExecRequest { argv, env: env.into_iter().collect(), cwd, user, ..Default::default() };
    for _ in 0..NAME_TRIES {
        let chosen = match &name {
            Some(name) => name.clone(),
            None => free_name(&list_on(&agent).await?),
        };
        let start = Request::SessionStart(SessionStart { name: chosen, exec: exec.clone() });
        match agent.request(&start).await {
            Ok((Reply::Session(info), _)) => return Ok(view(info)),
            Ok((reply, _)) => return Err(unexpected(&reply)),
            // Another start took the name first: choose again.
            Err(AgentError::Refused { kind: ErrorKind::AlreadyExists, .. }) if name.is_none() => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::Conflict("other sessions keep taking the names chosen; give the session a name".into()))
}

/// Every session of the VM, oldest first.
pub async fn list(daemon: &Arc<Daemon>, vm: &str) -> Result<Vec<Session>> {
    let agent = agent(daemon, vm, "session list", SESSIONS).await?;
    Ok(list_on(&agent).await?.into_iter().map(view).collect())
}

/// One session.
pub async fn get(daemon: &Arc<Daemon>, vm: &str, session: &str) -> Result<Session> {
    let agent = agent(daemon, vm, "session show", SESSIONS).await?;
    find(&agent, session).await.map(view)
}

/// Types `input` into the session as it arrives, at the pace the agent
/// takes it; at most [`MAX_SEND_BYTES`].
pub async fn send<S, E>(daemon: &Arc<Daemon>, vm: &str, session: &str, input: S) -> Result<()>
where
    S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let agent = agent(daemon, vm, "session send", SESSIONS).await?;
    let request = Request::SessionSend { name: session.to_owned() };
    upload(&agent, &request, input, MAX_SEND_BYTES, too_large).await.map(drop)
}

/// The error for input over [`MAX_SEND_BYTES`].
pub fn too_large() -> Error {
    Error::BodyTooLarge(format!("a session takes at most {} MiB of input at a time", MAX_SEND_BYTES >> 20))
}

/// Signals the session's process group (SIGTERM unless told otherwise).
pub async fn stop(daemon: &Arc<Daemon>, vm: &str, session: &str, signal: Option<Signal>) -> Result<()> {
    let agent = agent(daemon, vm, "session stop", SESSIONS).await?;
    let signal = signal.unwrap_or(Signal::TERM).number();
    done(&agent, Request::SessionStop { name: session.to_owned(), signal: Some(signal) }).await
}

/// Waits for the session's process to end, however long it runs; cut
/// short by the daemon's shutdown or the VM's stop.
pub async fn wait(daemon: &Arc<Daemon>, vm: &str, session: &str) -> Result<SessionExit> {
    let waited = async {
        let mut reconnects = 0;
        loop {
            let agent = agent(daemon, vm, "session wait", SESSIONS).await?;
            match agent.request(&Request::SessionWait { name: session.to_owned() }).await {
                Ok((Reply::Exited { code, signal }, _)) => return Ok(exit(code, signal)),
                Ok((reply, _)) => return Err(unexpected(&reply)),
                // The connection ended (the agent went silent, or the VM
                // stopped): wait on a new one, or say why there is none.
                Err(AgentError::Closed | AgentError::Stream(_))
                    if agent.is_closed() && reconnects < WAIT_RECONNECTS =>
                {
                    reconnects += 1;
                }
                Err(e) => return Err(e.into()),
            }
        }
    };
    tokio::select! {
        result = waited => result,
        () = daemon.shutting_down() => Err(Error::ShuttingDown { name: vm.to_owned(), what: "session wait" }),
    }
}

/// Forgets an ended session and its output; a running one is refused.
pub async fn remove(daemon: &Arc<Daemon>, vm: &str, session: &str) -> Result<()> {
    let agent = agent(daemon, vm, "session rm", SESSIONS).await?;
    let info = find(&agent, session).await?;
    if info.state == banger_agent_proto::SessionState::Running {
        return Err(Error::Conflict(format!(
            "session {session:?} of VM {vm:?} is running; stop it first (`banger session stop {vm} {session}`)"
        )));
    }
    done(&agent, Request::SessionRemove { name: session.to_owned() }).await
}

async fn list_on(agent: &AgentConn) -> Result<Vec<SessionInfo>> {
    match agent.request(&Request::SessionList).await? {
        (Reply::Sessions { sessions }, _) => Ok(sessions),
        (reply, _) => Err(unexpected(&reply)),
    }
}

async fn find(agent: &AgentConn, session: &str) -> Result<SessionInfo> {
    list_on(agent)
        .await?
        .into_iter()
        .find(|s| s.name == session)
        .ok_or_else(|| Error::NotFound { kind: "session", name: session.to_owned() })
}

async fn done(agent: &AgentConn, request: Request) -> Result<()> {
    match agent.request(&request).await? {
        (Reply::Done, _) => Ok(()),
        (reply, _) => Err(unexpected(&reply)),
    }
}

/// Refuses what no guest could run, before the agent is asked.
fn validate(request: &SessionStartRequest) -> Result<()> {
    let bad = |what: &str| Err(Error::InvalidArgument(what.to_owned()));
    if let Some(name) = &request.name {
        if !valid_name(name) {
            return bad(&format!(
                "invalid session name {name:?}: use 1 to 63 letters, digits, '.', '_' and '-', starting with a letter or digit"
            ));
        }
    }
    if request.argv.is_empty() || request.argv[0].is_empty() {
        return bad("a session needs a command (argv must name a program)");
    }
    let texts = request.argv.iter().chain(request.env.values()).chain(&request.cwd).chain(&request.user);
    if request.env.keys().chain(texts).any(|t| t.contains('\0')) {
        return bad("the command, its environment, directory and user cannot contain NUL bytes");
    }
    if let Some(key) = request.env.keys().find(|k| k.is_empty() || k.contains('=')) {
        return bad(&format!("invalid environment variable name {key:?}: it must be non-empty and without '='"));
    }
    if request.cwd.as_deref().is_some_and(|cwd| !cwd.starts_with('/')) {
        return bad("the working directory must be an absolute guest path");
    }
    Ok(())
}

/// A session name: 1 to 63 of `[A-Za-z0-9._-]`, starting with a letter or digit.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.len() <= 63
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// The smallest number that no session is named.
fn free_name(sessions: &[SessionInfo]) -> String {
    (0u64..).map(|n| n.to_string()).find(|n| sessions.iter().all(|s| &s.name != n)).expect("a free number")
}

/// As a shell reports it: the code, or 128 + the signal; 255 with neither.
pub fn exit_status(code: Option<i32>, signal: Option<i32>) -> i32 {
    match (code, signal) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => 255,
    }
}

fn exit(code: Option<i32>, signal: Option<i32>) -> SessionExit {
    SessionExit { exit_code: code, signal, exit_status: exit_status(code, signal) }
}

fn timestamp(secs: u64) -> Timestamp {
    (UNIX_EPOCH + Duration::from_secs(secs)).into()
}

/// The API's view of a session the agent reports.
fn view(info: SessionInfo) -> Session {
    use banger_agent_proto::SessionState as S;
    let state = match info.state {
        S::Running => SessionState::Running,
        S::Exited => SessionState::Exited,
        S::Lost => SessionState::Lost,
        S::Unknown => SessionState::Unknown,
    };
    let ended = !matches!(state, SessionState::Running);
    Session {
        name: info.name,
        command: info.argv,
        state,
        pid: info.pid.filter(|_| !ended),
        started_at: timestamp(info.started_at),
        ended_at: info.ended_at.map(timestamp),
        exit_code: info.code,
        signal: info.signal,
        exit_status: ended.then(|| exit_status(info.code, info.signal)),
        attached: info.attached,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, state: banger_agent_proto::SessionState) -> SessionInfo {
        SessionInfo {
            name: name.into(),
            argv: vec!["sh".into()],
            state,
            pid: Some(7),
            started_at: 1_767_225_600,
            ended_at: None,
            code: None,
            signal: None,
            size: banger_agent_proto::TtySize { rows: 24, cols: 80 },
            attached: 1,
        }
    }

    #[test]
    fn names_default_to_the_smallest_free_number() {
        use banger_agent_proto::SessionState::Running;
        assert_eq!(free_name(&[]), "0");
        assert_eq!(free_name(&[info("0", Running), info("web", Running), info("2", Running)]), "1");
        assert!(valid_name("build-1.x_y") && valid_name("0") && valid_name(&"a".repeat(63)));
        for bad in ["", "-x", ".x", "a b", "a/b", &"a".repeat(64), "é"] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn views_carry_the_exit_status_once_ended() {
        use banger_agent_proto::SessionState as S;
        let running = view(info("s", S::Running));
        assert_eq!((running.pid, running.exit_status), (Some(7), None));
        assert_eq!(running.started_at.to_string(), "2026-01-01T00:00:00Z");
        let killed = view(SessionInfo { signal: Some(9), ended_at: Some(1_767_225_601), ..info("s", S::Exited) });
        assert_eq!((killed.state, killed.pid, killed.exit_status), (SessionState::Exited, None, Some(137)));
        let exited = view(SessionInfo { code: Some(3), ..info("s", S::Exited) });
        assert_eq!(exited.exit_status, Some(3));
        assert_eq!(view(info("s", S::Lost)).exit_status, Some(255));
    }

    #[test]
    fn requests_no_guest_could_run_are_refused() {
        let ok = SessionStartRequest { argv: vec!["sh".into()], ..Default::default() };
        assert!(validate(&ok).is_ok());
        let refused = [
            SessionStartRequest { argv: vec![], ..ok.clone() },
            SessionStartRequest { argv: vec!["".into()], ..ok.clone() },
            SessionStartRequest { name: Some("a b".into()), ..ok.clone() },
            SessionStartRequest { argv: vec!["sh\0".into()], ..ok.clone() },
            SessionStartRequest { env: [("A=B".into(), "1".into())].into(), ..ok.clone() },
            SessionStartRequest { env: [(String::new(), "1".into())].into(), ..ok.clone() },
            SessionStartRequest { cwd: Some("relative".into()), ..ok.clone() },
        ];
        for request in refused {
            assert!(matches!(validate(&request), Err(Error::InvalidArgument(_))), "{request:?}");
        }
    }
}
