//! Sessions through the agent binary on a unix socket: start, list,
//! attach (the screen restored), logs, send, stop, wait and remove, and
//! sessions outliving their clients, their connection and the agent.

mod common;

use std::time::{Duration, Instant};

use banger_agent_proto::mux::{Event, Stream};
use banger_agent_proto::{
    ErrorKind, ExecRequest, FrameKind, Reply, Request, SessionInfo, SessionStart, SessionState, TtySize,
};
use common::*;

fn start_request(name: &str, argv: &[&str]) -> Request {
    Request::SessionStart(SessionStart { name: name.into(), exec: exec(argv) })
}

async fn start(client: &Client, name: &str, argv: &[&str]) -> SessionInfo {
    match client.request(&start_request(name, argv)).await {
        Reply::Session(info) => info,
        other => panic!("session {name} did not start: {other:?}"),
    }
}

async fn list(client: &Client) -> Vec<SessionInfo> {
    match client.request(&Request::SessionList).await {
        Reply::Sessions { sessions } => sessions,
        other => panic!("{other:?}"),
    }
}

async fn session_info(client: &Client, name: &str) -> SessionInfo {
    list(client).await.into_iter().find(|s| s.name == name).unwrap_or_else(|| panic!("no session {name}"))
}

/// Attaches; returns the stream after the `session` reply.
async fn attach(client: &Client, name: &str, size: Option<TtySize>) -> (Stream, SessionInfo) {
    let mut stream = client.open(&Request::SessionAttach { name: name.into(), size, read_only: false }).await;
    match next_reply(&mut stream).await {
        Reply::Session(info) => (stream, info),
        other => panic!("attach to {name}: {other:?}"),
    }
}

/// All of a non-following `session_logs`.
async fn logs(client: &Client, name: &str, tail: Option<u64>) -> String {
    let mut stream = client.open(&Request::SessionLogs { name: name.into(), follow: false, tail }).await;
    let mut out = Vec::new();
    loop {
        match event(&mut stream).await.expect("logs ended without done") {
            Event::Data { bytes, .. } => out.extend(&bytes),
            event => match event.message::<Reply>() {
                Some(Reply::Done) => return String::from_utf8_lossy(&out).into_owned(),
                other => panic!("{other:?}"),
            },
        }
    }
}

async fn send(client: &Client, name: &str, text: &str) -> Reply {
    let mut stream = client.open(&Request::SessionSend { name: name.into() }).await;
    type_in(&stream, text).await;
    stream.finish(FrameKind::Stdin).await.unwrap();
    next_reply(&mut stream).await
}

async fn wait(client: &Client, name: &str) -> Reply {
    client.request(&Request::SessionWait { name: name.into() }).await
}

/// Waits until the session's history contains `needle`.
async fn logs_until(client: &Client, name: &str, needle: &str) -> String {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let seen = logs(client, name, None).await;
        if seen.contains(needle) {
            return seen;
        }
        assert!(Instant::now() < deadline, "{needle:?} never appeared in session {name}: {seen:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const SCREEN: &str = r#"printf '\033[2J\033[Hfirst line\nsecond line\n'; exec cat"#;

#[tokio::test]
async fn a_session_is_started_attached_typed_into_and_stopped() {
    let agent = Agent::start().await;
    let client = agent.connect().await;
    let started = start(&client, "work", &["sh", "-c", SCREEN]).await;
    assert_eq!((started.name.as_str(), started.state), ("work", SessionState::Running));
    assert!(started.pid.is_some());
    assert_eq!(started.size, TtySize { rows: 24, cols: 80 });
    logs_until(&client, "work", "second line").await;

    // The screen comes first: redrawn from the terminal emulator, not replayed.
    let (mut view, info) = attach(&client, "work", Some(TtySize { rows: 30, cols: 100 })).await;
    assert_eq!((info.attached, info.size), (1, TtySize { rows: 30, cols: 100 }));
    let screen = stdout_until(&mut view, "second line").await;
    assert!(screen.starts_with("\x1b[?25h") || screen.contains("\x1b[H"), "not a redraw: {screen:?}");
    assert!(screen.contains("first line"), "{screen:?}");
    type_in(&view, "typed by the client\n").await;
    stdout_until(&mut view, "typed by the client").await;
    // A detach: the client closes its side, the session runs on.
    view.close().await.unwrap();
    while let Some(event) = event(&mut view).await {
        assert!(matches!(event, Event::Data { .. }), "{event:?}");
    }
    let now = info_after_detach(&client, "work").await;
    assert_eq!((now.state, now.attached), (SessionState::Running, 0));

    // Input without attaching, then the logs.
    assert_eq!(send(&client, "work", "sent without attaching\n").await, Reply::Done);
    // The terminal's echo, and cat's copy (the last line).
    let deadline = Instant::now() + TIMEOUT;
    while logs(&client, "work", None).await.matches("sent without attaching\r\n").count() < 2 {
        assert!(Instant::now() < deadline, "cat never copied the line sent");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(logs(&client, "work", None).await.contains("typed by the client"));
    assert_eq!(logs(&client, "work", Some(1)).await, "sent without attaching\r\n");
    let last_two = logs(&client, "work", Some(2)).await;
    assert_eq!(last_two.lines().count(), 2, "{last_two:?}");

    // Stop, wait, remove.
    let waiting = {
        let client = &client;
        async move { wait(client, "work").await }
    };
    let stop_request = Request::SessionStop { name: "work".into(), signal: None };
    let stop = client.request(&stop_request);
    let (waited, stopped) = tokio::join!(waiting, stop);
    assert_eq!(stopped, Reply::Done);
    assert_eq!(waited, Reply::Exited { code: None, signal: Some(libc::SIGTERM) });
    assert_eq!(
        wait(&client, "work").await,
        Reply::Exited { code: None, signal: Some(libc::SIGTERM) },
        "at once when ended"
    );
    let ended = session_info(&client, "work").await;
    assert_eq!((ended.state, ended.pid, ended.signal), (SessionState::Exited, None, Some(libc::SIGTERM)));
    assert!(ended.ended_at.is_some());
    assert!(agent.sessions.join("work/state.json").exists());
    assert_eq!(client.request(&Request::SessionRemove { name: "work".into() }).await, Reply::Done);
    assert!(list(&client).await.is_empty());
    assert!(!agent.sessions.join("work").exists());
}

/// `attached` is counted down once the agent saw the detach.
async fn info_after_detach(client: &Client, name: &str) -> SessionInfo {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let info = session_info(client, name).await;
        if info.attached == 0 || Instant::now() > deadline {
            return info;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn names_are_checked_and_running_ones_are_unique() {
    let agent = Agent::start().await;
    let client = agent.connect().await;
    for bad in ["", "a/b", "..", &"n".repeat(65)] {
        let Reply::Error { kind, message } = client.request(&start_request(bad, &["true"])).await else {
            panic!("{bad:?} accepted");
        };
        assert_eq!(kind, ErrorKind::InvalidArgument, "{bad:?}: {message}");
    }
    start(&client, "one", &["sleep", "30"]).await;
    let Reply::Error { kind, .. } = client.request(&start_request("one", &["true"])).await else { panic!() };
    assert_eq!(kind, ErrorKind::AlreadyExists);
    for request in [
        Request::SessionAttach { name: "none".into(), size: None, read_only: false },
        Request::SessionLogs { name: "none".into(), follow: false, tail: None },
        Request::SessionWait { name: "none".into() },
        Request::SessionStop { name: "none".into(), signal: None },
        Request::SessionRemove { name: "none".into() },
    ] {
        let reply = client.request(&request).await;
        assert!(matches!(reply, Reply::Error { kind: ErrorKind::NotFound, .. }), "{request:?}: {reply:?}");
    }
    let Reply::Error { kind, .. } = client.request(&Request::SessionRemove { name: "one".into() }).await else {
        panic!()
    };
    assert_eq!(kind, ErrorKind::InvalidArgument, "a running session is not removed");
    // An ended session's name may be used again.
    client.request(&Request::SessionStop { name: "one".into(), signal: Some(libc::SIGKILL) }).await;
    wait(&client, "one").await;
    let again = start(&client, "one", &["true"]).await;
    assert_eq!(again.state, SessionState::Running);
    let bad = Request::SessionStart(SessionStart { name: "nothing".into(), exec: ExecRequest::default() });
    assert!(matches!(client.request(&bad).await, Reply::Error { kind: ErrorKind::InvalidArgument, .. }));
}

#[tokio::test]
async fn a_session_outlives_its_clients_connection() {
    let agent = Agent::start().await;
    let client = agent.connect().await;
    start(&client, "long", &["sh", "-c", "echo before; exec cat"]).await;
    let (mut view, _) = attach(&client, "long", None).await;
    stdout_until(&mut view, "before").await;
    drop(view);
    drop(client);
    let client = agent.connect().await;
    let (mut view, info) = attach(&client, "long", None).await;
    assert_eq!(info.state, SessionState::Running);
    stdout_until(&mut view, "before").await;
    type_in(&view, "after reconnecting\n").await;
    stdout_until(&mut view, "after reconnecting").await;
    // The process ends: the attach ends with its exit.
    client.request(&Request::SessionStop { name: "long".into(), signal: Some(libc::SIGINT) }).await;
    loop {
        match event(&mut view).await.expect("the attach ended without exited") {
            Event::Data { .. } => continue,
            event => {
                assert_eq!(event.message::<Reply>(), Some(Reply::Exited { code: None, signal: Some(libc::SIGINT) }));
                break;
            }
        }
    }
    assert_eq!(event(&mut view).await, None, "closed after exited");
}

#[tokio::test]
async fn clients_attached_together_share_the_session() {
    let agent = Agent::start().await;
    let client = agent.connect().await;
    start(&client, "shared", &["sh", "-c", "while read line; do echo \"got $line\"; stty size; done"]).await;
    let (mut a, _) = attach(&client, "shared", Some(TtySize { rows: 24, cols: 80 })).await;
    let (mut b, info) = attach(&client, "shared", Some(TtySize { rows: 40, cols: 120 })).await;
    assert_eq!((info.attached, info.size), (2, TtySize { rows: 40, cols: 120 }), "the latest size wins");
    type_in(&a, "from-a\n").await;
    stdout_until(&mut a, "40 120").await;
    stdout_until(&mut b, "40 120").await;
    b.send(&Request::Resize(TtySize { rows: 50, cols: 132 })).await.unwrap();
    type_in(&b, "from-b\n").await;
    let seen_by_a = stdout_until(&mut a, "50 132").await;
    assert!(seen_by_a.contains("got from-b"), "{seen_by_a:?}");
    stdout_until(&mut b, "50 132").await;
    assert_eq!(session_info(&client, "shared").await.size, TtySize { rows: 50, cols: 132 });
}

/// A client that stops reading never holds the session up: the session
/// writes far more than any window and ends; the client then catches up
/// with the screen as it is and the exit.
#[tokio::test]
async fn a_client_that_stops_reading_does_not_block_the_session() {
    let agent = Agent::start().await;
    let client = agent.connect().await;
    let script = "read go; head -c 8000000 /dev/zero | tr '\\0' x; echo; echo all-written";
    start(&client, "flood", &["sh", "-c", script]).await;
    let (mut stalled, _) = attach(&client, "flood", None).await;
    assert_eq!(send(&client, "flood", "go\n").await, Reply::Done);
    let waited = tokio::time::timeout(Duration::from_secs(60), wait(&client, "flood")).await;
    assert_eq!(
        waited.expect("the session waited for its stalled client"),
        Reply::Exited { code: Some(0), signal: None }
    );
    let mut seen = Vec::new();
    loop {
        match event(&mut stalled).await.expect("the attach ended without exited") {
            Event::Data { bytes, .. } => seen.extend(&bytes),
            event => {
                assert_eq!(event.message::<Reply>(), Some(Reply::Exited { code: Some(0), signal: None }));
                break;
            }
        }
    }
    assert!(seen.len() < 8_000_000, "the stalled client was sent everything ({} bytes)", seen.len());
    assert!(String::from_utf8_lossy(&seen).contains("all-written"), "the client caught up with the end");
    let history = logs(&client, "flood", Some(2)).await;
    assert!(history.ends_with("all-written\r\n"), "{:?}", &history[history.len().saturating_sub(40)..]);
}

#[tokio::test]
async fn followed_logs_stream_until_the_end() {
    let agent = Agent::start().await;
    let client = agent.connect().await;
    start(&client, "f", &["sh", "-c", "echo early; read x; echo \"late $x\"; exit 3"]).await;
    logs_until(&client, "f", "early").await;
    let mut follow = client.open(&Request::SessionLogs { name: "f".into(), follow: true, tail: Some(1) }).await;
    assert_eq!(stdout_until(&mut follow, "early").await, "early\r\n", "the tail first");
    assert_eq!(send(&client, "f", "bird\n").await, Reply::Done);
    stdout_until(&mut follow, "late bird").await;
    loop {
        match event(&mut follow).await.expect("no exited") {
            Event::Data { .. } => continue,
            event => {
                assert_eq!(event.message::<Reply>(), Some(Reply::Exited { code: Some(3), signal: None }));
                break;
            }
        }
    }
    // Attaching to an ended session shows its last screen and its end.
    let (mut view, info) = attach(&client, "f", None).await;
    assert_eq!((info.state, info.code), (SessionState::Exited, Some(3)));
    stdout_until(&mut view, "late bird").await;
    assert_eq!(next_reply(&mut view).await, Reply::Exited { code: Some(3), signal: None });
}

/// Logs and the end of a session outlive the agent itself; a session
/// whose end the agent never saw is lost.
#[tokio::test]
async fn sessions_are_found_again_after_the_agent_restarts() {
    let agent = Agent::start().await;
    let client = agent.connect().await;
    start(&client, "done", &["sh", "-c", "echo finished-before; exit 4"]).await;
    assert_eq!(wait(&client, "done").await, Reply::Exited { code: Some(4), signal: None });
    start(&client, "running", &["sh", "-c", "echo still-going; exec sleep 30"]).await;
    logs_until(&client, "running", "still-going").await;
    let pid = session_info(&client, "running").await.pid.unwrap();
    drop(client);
    let (dir, sessions) = agent.stop().await;
    // Our own child's leftovers: the agent was killed, its session not (it had its own session).
    let _ = rustix_kill(pid);
    let agent = Agent::start_in(dir, sessions, &[]).await;
    let client = agent.connect().await;
    let all = list(&client).await;
    let states: Vec<(&str, SessionState)> = all.iter().map(|s| (s.name.as_str(), s.state)).collect();
    assert_eq!(states, [("done", SessionState::Exited), ("running", SessionState::Lost)]);
    assert_eq!(all[0].code, Some(4));
    assert!(logs(&client, "done", None).await.contains("finished-before"));
    assert!(logs(&client, "running", None).await.contains("still-going"));
    assert_eq!(wait(&client, "running").await, Reply::Exited { code: None, signal: None });
    let (mut view, _) = attach(&client, "done", None).await;
    stdout_until(&mut view, "finished-before").await;
    assert_eq!(client.request(&Request::SessionRemove { name: "running".into() }).await, Reply::Done);
    let again = start(&client, "done", &["true"]).await;
    assert_eq!(again.state, SessionState::Running, "an ended session's name is free");
}

fn rustix_kill(pid: u32) -> std::io::Result<()> {
    let status = std::process::Command::new("kill").arg("-KILL").arg(pid.to_string()).status()?;
    status.success().then_some(()).ok_or_else(|| std::io::Error::other("kill failed"))
}
