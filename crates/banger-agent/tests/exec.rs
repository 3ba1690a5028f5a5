//! The agent binary on the host, serving a unix socket: the handshake and
//! exec as bangerd speaks them (protocol v2 through the multiplexer), with
//! real processes behind them.

mod common;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, Instant};

use banger_agent_proto::mux::Event;
use banger_agent_proto::{
    read_frame, write_frame, ErrorKind, ExecRequest, Frame, FrameKind, Hello, Reply, Request, TtySize, CONTROL_STREAM,
    PROTOCOL_VERSION,
};
use bytes::Bytes;
use common::*;
use sha2::{Digest, Sha256};
use tokio::net::UnixStream;

#[tokio::test]
async fn hello_and_echo() {
    let agent = Agent::start().await;
    let client = agent.connect().await;
    assert_eq!(client.hello.protocol, PROTOCOL_VERSION);
    assert_eq!(client.hello.agent_version.as_deref(), Some(env!("CARGO_PKG_VERSION")));
    for feature in ["tty", "sessions", "copy", "stats"] {
        assert!(client.hello.has(feature), "{feature} missing from {:?}", client.hello.features);
    }
    let out = client.run(&["echo", "hi"]).await;
    assert!(out.pid.is_some());
    assert_eq!(out.stdout, b"hi\n");
    assert_eq!(out.exited, Some((Some(0), None)));
}

/// A version-1 host (its hello names one version and no range) is told
/// both ranges, and the connection stays usable for a hello that fits.
#[tokio::test]
async fn a_version_1_host_is_refused_clearly() {
    let agent = Agent::start().await;
    let mut conn = UnixStream::connect(&agent.socket).await.unwrap();
    let v1 = Frame {
        stream: 0,
        kind: FrameKind::Control,
        flags: 0,
        payload: br#"{"type":"hello","protocol":1}"#[..].into(),
    };
    write_frame(&mut conn, &v1).await.unwrap();
    let answer = tokio::time::timeout(TIMEOUT, read_frame(&mut conn)).await.unwrap().unwrap().unwrap();
    assert_eq!(answer.stream, CONTROL_STREAM);
    let Reply::Error { message, kind } = answer.message::<Reply>().unwrap() else { panic!("{answer:?}") };
    assert_eq!(kind, ErrorKind::Unsupported);
    assert!(message.contains("protocol 1,") && message.contains(&format!("speaks {PROTOCOL_VERSION}")), "{message}");
    let client = Client::over(conn, None).await.expect("a v2 hello after the refusal");
    assert_eq!(client.run(&["echo", "still here"]).await.stdout, b"still here\n");
}

#[tokio::test]
async fn stdout_stderr_exit_codes_and_signals() {
    let agent = Agent::start().await;
    let client = agent.connect().await;
    let out = client.run(&["sh", "-c", "echo out; echo err >&2; exit 3"]).await;
    assert_eq!((out.stdout(), String::from_utf8_lossy(&out.stderr).as_ref()), ("out\n".into(), "err\n"));
    assert_eq!(out.exited, Some((Some(3), None)));
    let out = client.run(&["sh", "-c", "kill -KILL $$"]).await;
    assert_eq!(out.exited, Some((None, Some(libc::SIGKILL))));
}

#[tokio::test]
async fn env_cwd_and_the_default_home() {
    let agent = Agent::start().await;
    let client = agent.connect().await;
    let req = ExecRequest {
        env: vec![("GREETING".into(), "hello there".into())],
        cwd: Some("/tmp".into()),
        ..exec(&["sh", "-c", "echo $GREETING; pwd"])
    };
    let out = outcome(&mut client.exec(req).await).await;
    assert_eq!(out.stdout(), "hello there\n/tmp\n");
    // Without a cwd a command starts in its user's home.
    let out = client.run(&["sh", "-c", "pwd; echo $HOME; echo $USER"]).await;
    let lines: Vec<String> = out.stdout().lines().map(str::to_owned).collect();
    let home = &lines[1];
    let expected = if std::path::Path::new(home).is_dir() { home.as_str() } else { "/" };
    assert_eq!(lines[0], expected, "{lines:?}");
    assert!(!lines[2].is_empty(), "USER is set: {lines:?}");
    let req = ExecRequest { cwd: Some("/no/such/dir".into()), ..exec(&["pwd"]) };
    let (kind, message) = outcome(&mut client.exec(req).await).await.error.expect("refused");
    assert_eq!(kind, ErrorKind::NotFound);
    assert!(message.contains("/no/such/dir"), "{message}");
}

#[tokio::test]
async fn stdin_reaches_the_process_until_fin() {
    let agent = Agent::start().await;
    let client = agent.connect().await;
    let mut cat = client.exec(exec(&["cat"])).await;
    assert!(matches!(next_reply(&mut cat).await, Reply::Started { .. }));
    type_in(&cat, "first line\n").await;
    assert_eq!(stdout_until(&mut cat, "\n").await, "first line\n");
    type_in(&cat, "second").await;
    cat.finish(FrameKind::Stdin).await.unwrap();
    let out = outcome(&mut cat).await;
    assert_eq!(out.stdout, b"second");
    assert_eq!(out.exited, Some((Some(0), None)));
}

const BIG: usize = 50 << 20;

/// Deterministic bytes a shell can also make: `yes` lines.
fn big_text() -> Vec<u8> {
    b"0123456789abcdef\n".iter().copied().cycle().take(BIG).collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn fifty_megabytes_of_stdout_arrive_whole() {
    let agent = Agent::start().await;
    let client = agent.connect().await;
    let started = Instant::now();
    let mut stream = client.exec(exec(&["sh", "-c", &format!("yes 0123456789abcdef | head -c {BIG}")])).await;
    let mut hasher = Sha256::new();
    let mut got = 0;
    let mut exited = None;
    while exited.is_none() {
        match event(&mut stream).await.expect("the stream ended early") {
            Event::Data { kind: FrameKind::Stdout, bytes, .. } => {
                got += bytes.len();
                hasher.update(&bytes);
            }
            event => match event.message::<Reply>() {
                Some(Reply::Exited { code, signal }) => exited = Some((code, signal)),
                Some(Reply::Started { .. }) => {}
                other => panic!("{other:?}"),
            },
        }
    }
    let took = started.elapsed();
    eprintln!("50 MiB of stdout in {:.2} s ({:.0} MiB/s)", took.as_secs_f64(), 50.0 / took.as_secs_f64());
    assert_eq!(exited, Some((Some(0), None)));
    assert_eq!(got, BIG);
    let hash: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hash, sha256_hex(&big_text()));
}

#[tokio::test]
async fn fifty_megabytes_of_stdin_arrive_whole() {
    let agent = Agent::start().await;
    let client = agent.connect().await;
    let mut stream = client.exec(exec(&["sha256sum"])).await;
    let sender = stream.sender();
    let data = Bytes::from(big_text());
    let expected = sha256_hex(&data);
    let started = Instant::now();
    let writer = tokio::spawn(async move {
        // In pieces, as a client would send them; each waits for credit.
        for piece in data.chunks(1 << 20) {
            sender.write(FrameKind::Stdin, Bytes::copy_from_slice(piece)).await.unwrap();
        }
        sender.finish(FrameKind::Stdin).await.unwrap();
    });
    let out = outcome(&mut stream).await;
    writer.await.unwrap();
    eprintln!("50 MiB of stdin in {:.2} s", started.elapsed().as_secs_f64());
    assert_eq!(out.exited, Some((Some(0), None)), "{out:?}");
    assert_eq!(out.stdout().split_whitespace().next(), Some(expected.as_str()));
}

/// A stream whose reader stops holds up its own command (blocked on its
/// pipe once the window is used), while another stream of the same
/// connection keeps flowing.
#[tokio::test]
async fn a_stalled_reader_stops_only_its_own_stream() {
    let agent = Agent::start().await;
    let client = agent.connect().await;
    let marker = agent.dir.path().join("slow-done");
    let slow_size = 8 << 20;
    let script = format!("head -c {slow_size} /dev/zero; echo done > {}", marker.display());
    let mut slow = client.exec(exec(&["sh", "-c", &script])).await;
    let fast_size = 16 << 20;
    let stalled_since = Instant::now();
    let out = client.run(&["head", "-c", &fast_size.to_string(), "/dev/zero"]).await;
    assert_eq!(out.stdout.len(), fast_size);
    // Stall a few seconds in all: the slow command must still be waiting.
    let stall = Duration::from_secs(3);
    if let Some(rest) = stall.checked_sub(stalled_since.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    assert!(!marker.exists(), "the slow command finished though nobody read its output");
    let out = outcome(&mut slow).await;
    assert_eq!(out.stdout.len(), slow_size);
    assert_eq!(out.exited, Some((Some(0), None)));
    assert!(marker.exists());
}

/// A command that does not read its stdin leaves the host's input waiting
/// in the window, not in the agent; a signal sent after it still arrives.
#[tokio::test]
async fn a_signal_passes_stdin_the_command_does_not_read() {
    let agent = Agent::start().await;
    let client = agent.connect().await;
    let mut stream = client.exec(exec(&["sleep", "30"])).await;
    assert!(matches!(next_reply(&mut stream).await, Reply::Started { .. }));
    let sender = stream.sender();
    let writer = tokio::spawn(async move { sender.write(FrameKind::Stdin, Bytes::from(vec![b'x'; 4 << 20])).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!writer.is_finished(), "4 MiB of stdin went nowhere: the window does not hold");
    stream.send(&Request::Signal { signal: libc::SIGTERM }).await.unwrap();
    let out = outcome(&mut stream).await;
    assert_eq!(out.exited, Some((None, Some(libc::SIGTERM))));
    writer.abort();
}

#[tokio::test]
async fn a_signal_reaches_the_whole_process_group() {
    let agent = Agent::start().await;
    let client = agent.connect().await;
    let mut stream = client.exec(exec(&["sh", "-c", "sleep 30; echo after"])).await;
    let Reply::Started { pid } = next_reply(&mut stream).await else { panic!("not started") };
    // Wait for sh's child (in its group) to be sleep: before its exec the
    // child is still sh, which handles SIGINT as a shell does.
    wait_for_child(pid, "sleep").await;
    let started = Instant::now();
    stream.send(&Request::Signal { signal: libc::SIGINT }).await.unwrap();
    let out = outcome(&mut stream).await;
    assert!(started.elapsed() < Duration::from_secs(5), "ended only after {:?}", started.elapsed());
    assert!(out.exited.is_some(), "{out:?}");
    assert_eq!(out.stdout, b"", "sleep survived the signal");
}

#[tokio::test]
async fn a_missing_program_is_an_error_naming_it() {
    let agent = Agent::start().await;
    let client = agent.connect().await;
    let out = client.run(&["no-such-program-here", "x"]).await;
    let (kind, message) = out.error.expect("an error");
    assert!(message.contains("no-such-program-here"), "{message}");
    assert_eq!(kind, ErrorKind::InvalidArgument);
    assert_eq!(out.pid, None);
    assert_eq!(client.run(&["echo", "still here"]).await.stdout, b"still here\n");
}

#[tokio::test]
async fn unknown_and_misplaced_requests_are_errors_not_disconnects() {
    let agent = Agent::start().await;
    let client = agent.connect().await;
    let mut stream = client.mux.open().unwrap();
    stream.send(&serde_json::json!({"type": "teleport", "to": "mars"})).await.unwrap();
    let Reply::Error { kind, message } = next_reply(&mut stream).await else { panic!("not an error") };
    assert_eq!(kind, ErrorKind::Unsupported, "{message}");
    let Reply::Error { kind, .. } = client.request(&Request::Signal { signal: 15 }).await else { panic!() };
    assert_eq!(kind, ErrorKind::InvalidArgument);
    let mut stream = client.mux.open().unwrap();
    stream.send(&serde_json::json!({"type": "exec", "argv": "not a list"})).await.unwrap();
    assert!(matches!(next_reply(&mut stream).await, Reply::Error { kind: ErrorKind::InvalidArgument, .. }));
    assert_eq!(client.request(&Request::Ping).await, Reply::Pong);
    assert_eq!(client.run(&["echo", "fine"]).await.stdout, b"fine\n");
}

#[tokio::test]
async fn a_terminal_is_a_real_one() {
    let agent = Agent::start().await;
    let client = agent.connect().await;
    let out = outcome(&mut client.exec(tty(&["tty"], 24, 80)).await).await;
    assert!(out.stdout().trim().starts_with("/dev/pts/"), "{:?}", out.stdout());
    assert_eq!(out.exited, Some((Some(0), None)));
    let out = outcome(&mut client.exec(tty(&["sh", "-c", "echo $TERM; stty size; echo oops >&2"], 24, 80)).await).await;
    assert_eq!(out.stdout(), "xterm-256color\r\n24 80\r\noops\r\n", "all output comes as stdout");
    assert!(out.stderr.is_empty());
    let req = ExecRequest { term: Some("vt100".into()), ..tty(&["sh", "-c", "echo $TERM"], 24, 80) };
    assert_eq!(outcome(&mut client.exec(req).await).await.stdout(), "vt100\r\n");
}

#[tokio::test]
async fn a_resize_reaches_the_terminal_and_fin_is_its_eof() {
    let agent = Agent::start().await;
    let client = agent.connect().await;
    let mut stream =
        client.exec(tty(&["sh", "-c", "stty size; read line; stty size; cat; echo cat-ended"], 24, 80)).await;
    assert!(matches!(next_reply(&mut stream).await, Reply::Started { .. }));
    stdout_until(&mut stream, "24 80").await;
    stream.send(&Request::Resize(TtySize { rows: 30, cols: 100 })).await.unwrap();
    type_in(&stream, "go\n").await;
    stdout_until(&mut stream, "30 100").await;
    type_in(&stream, "typed\n").await;
    stream.finish(FrameKind::Stdin).await.unwrap();
    let out = outcome(&mut stream).await;
    assert!(out.stdout().contains("cat-ended"), "{:?}", out.stdout());
    assert_eq!(out.exited, Some((Some(0), None)));
}

#[tokio::test]
async fn commands_run_as_the_user_asked_for() {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let nobody = passwd.lines().find(|l| l.starts_with("nobody:"));
    if !banger_testkit::prereq::require("root, to switch users", banger_testkit::prereq::is_root())
        || !banger_testkit::prereq::require("a user nobody in /etc/passwd", nobody.is_some())
    {
        return;
    }
    let nobody = nobody.unwrap();
    let uid: u32 = nobody.split(':').nth(2).unwrap().parse().unwrap();
    let agent = Agent::start().await;
    let client = agent.connect().await;
    for user in ["nobody".to_string(), uid.to_string()] {
        let req = ExecRequest {
            user: Some(user),
            cwd: Some("/".into()),
            ..exec(&["sh", "-c", "id -u; id -g; echo $USER $LOGNAME"])
        };
        let out = outcome(&mut client.exec(req).await).await;
        let lines: Vec<&str> = out.stdout.split(|b| *b == b'\n').map(|l| std::str::from_utf8(l).unwrap()).collect();
        assert_eq!(lines[0], uid.to_string(), "{out:?}");
        assert_eq!(lines[2], "nobody nobody");
    }
    let req = ExecRequest { user: Some("no-such-user-here".into()), ..exec(&["true"]) };
    let (kind, message) = outcome(&mut client.exec(req).await).await.error.expect("refused");
    assert_eq!(kind, ErrorKind::InvalidArgument);
    assert!(message.contains("no-such-user-here"), "{message}");
}

/// A client that goes away while its command runs (its stream reset, or
/// the whole connection closed) hangs the command up.
#[tokio::test]
async fn a_departed_client_hangs_its_command_up() {
    let agent = Agent::start().await;
    let client = agent.connect().await;
    let mut stream = client.exec(exec(&["sleep", "30"])).await;
    let Reply::Started { pid } = next_reply(&mut stream).await else { panic!() };
    stream.reset("the client went away");
    assert!(wait_gone(pid, Duration::from_secs(5)).await, "sleep {pid} outlived its reset stream");
    // One that ignores SIGHUP is killed after the grace.
    let mut stream = client.exec(exec(&["sh", "-c", "trap '' HUP; sleep 30"])).await;
    let Reply::Started { pid } = next_reply(&mut stream).await else { panic!() };
    wait_for_child(pid, "sleep").await; // the trap is set by then
    drop(client);
    let since = Instant::now();
    assert!(wait_gone(pid, Duration::from_secs(10)).await, "sh {pid} outlived its connection");
    assert!(since.elapsed() >= Duration::from_millis(1500), "killed before the grace: {:?}", since.elapsed());
    // A finished command's stream may be dropped: nothing is hung up then.
    let client = agent.connect().await;
    let marker = agent.dir.path().join("background-lived");
    let script = format!(
        "(trap 'echo hup > {0}.hup' HUP; sleep 1; echo lived > {0}) </dev/null >/dev/null 2>&1 &",
        marker.display()
    );
    let out = client.run(&["sh", "-c", &script]).await;
    assert_eq!(out.exited, Some((Some(0), None)));
    drop(client);
    assert!(
        wait_for_file(&marker, Duration::from_secs(10)).await,
        "the background job of a finished command was hung up"
    );
}

#[tokio::test]
async fn a_background_child_does_not_hold_the_exec_open() {
    let agent = Agent::start().await;
    let client = agent.connect().await;
    let started = Instant::now();
    let out = client.run(&["sh", "-c", "sleep 30 & echo hi"]).await;
    assert_eq!(out.stdout, b"hi\n");
    assert_eq!(out.exited, Some((Some(0), None)));
    assert!(started.elapsed() < Duration::from_secs(5), "exited only after {:?}", started.elapsed());
}

#[tokio::test]
async fn concurrent_execs_interleave() {
    let agent = Agent::start().await;
    let client = agent.connect().await;
    let script = |tag: &str| format!("for i in 1 2 3 4 5; do echo {tag}$i; sleep 0.05; done; echo {tag} >&2");
    let runs = ["a", "b", "c"].map(|tag| {
        let req = exec(&["sh", "-c", &script(tag)]);
        let client = &client;
        async move { (tag, outcome(&mut client.exec(req).await).await) }
    });
    let started = Instant::now();
    let [a, b, c] = runs;
    let results = tokio::join!(a, b, c);
    assert!(started.elapsed() < Duration::from_secs(3), "they did not run side by side: {:?}", started.elapsed());
    for (tag, out) in [results.0, results.1, results.2] {
        let expected: String = (1..=5).map(|i| format!("{tag}{i}\n")).collect();
        assert_eq!(out.stdout(), expected);
        assert_eq!(out.stderr, format!("{tag}\n").as_bytes());
    }
}

#[tokio::test]
async fn a_new_connection_after_a_broken_one_works() {
    let agent = Agent::start().await;
    let mut conn = UnixStream::connect(&agent.socket).await.unwrap();
    // Half a frame, then the host goes away.
    let partial = Frame::control(0, &Request::Hello(Hello::ours())).encode();
    tokio::io::AsyncWriteExt::write_all(&mut conn, &partial[..7]).await.unwrap();
    drop(conn);
    let client = agent.connect().await;
    assert_eq!(client.run(&["echo", "again"]).await.stdout, b"again\n");
}

/// A second hello on a connection starts a new generation: the first
/// host's streams end, and its commands are hung up.
#[tokio::test]
async fn a_new_hello_ends_the_previous_hosts_streams() {
    let agent = Agent::start().await;
    let mut conn = UnixStream::connect(&agent.socket).await.unwrap();
    let hello = Frame::control(0, &Request::Hello(Hello::ours()));
    write_frame(&mut conn, &hello).await.unwrap();
    let answer = read_frame(&mut conn).await.unwrap().unwrap();
    assert!(matches!(answer.message::<Reply>(), Ok(Reply::Hello(_))), "{answer:?}");
    write_frame(&mut conn, &Frame::control(1, &Request::Exec(exec(&["sleep", "30"])))).await.unwrap();
    let started = read_frame(&mut conn).await.unwrap().unwrap();
    let Ok(Reply::Started { pid }) = started.message::<Reply>() else { panic!("{started:?}") };
    write_frame(&mut conn, &hello).await.unwrap();
    loop {
        let frame = tokio::time::timeout(TIMEOUT, read_frame(&mut conn)).await.unwrap().unwrap().unwrap();
        if frame.stream == 0 {
            assert!(matches!(frame.message::<Reply>(), Ok(Reply::Hello(_))), "{frame:?}");
            break;
        }
    }
    assert!(wait_gone(pid, Duration::from_secs(5)).await, "the first host's command outlived the second hello");
    // The new generation serves as the first did.
    write_frame(&mut conn, &Frame::control(1, &Request::Exec(exec(&["true"])))).await.unwrap();
    let started = tokio::time::timeout(TIMEOUT, read_frame(&mut conn)).await.unwrap().unwrap().unwrap();
    assert!(matches!(started.message::<Reply>(), Ok(Reply::Started { .. })), "{started:?}");
}

#[tokio::test]
async fn arguments_that_are_not_utf8_are_ignored() {
    let agent = Agent::start_with(&[OsStr::from_bytes(b"BOOT_IMAGE=\xff\xfe")]).await;
    let client = agent.connect().await;
    assert_eq!(client.run(&["echo", "hi"]).await.stdout, b"hi\n");
}

/// Off init, a power-off ends the agent and the commands it runs, as a
/// guest's power-off ends its VMM.
#[tokio::test]
async fn power_off_off_init_ends_the_agent_and_its_commands() {
    let mut agent = Agent::start().await;
    let client = agent.connect().await;
    let mut stream = client.exec(exec(&["sleep", "30"])).await;
    let Reply::Started { pid } = next_reply(&mut stream).await else { panic!("not started") };
    // Sent and abandoned at once, as bangerd does.
    let off = client.mux.open().unwrap();
    off.send(&Request::Poweroff).await.unwrap();
    drop(off);
    let status = tokio::time::timeout(TIMEOUT, agent.child.wait()).await.expect("the agent still runs").unwrap();
    assert!(status.success(), "{status}");
    assert!(wait_gone(pid, TIMEOUT).await, "the command {pid} outlived the power-off");
}
