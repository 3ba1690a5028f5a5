//! The agent binary on the host, serving a unix socket: the protocol as the
//! host speaks it, with real processes behind it.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use banger_agent_proto::{read_frame, write_frame, ExecRequest, Frame, FrameKind, Reply, Request, PROTOCOL_VERSION};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::process::{Child, Command};

const TIMEOUT: Duration = Duration::from_secs(20);

struct Agent {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    child: Child,
}

impl Agent {
    async fn start() -> Agent {
        Agent::start_with(&[]).await
    }

    /// Starts the agent with `extra` arguments after its own.
    async fn start_with(extra: &[&OsStr]) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let child = Command::new(env!("CARGO_BIN_EXE_banger-agent"))
            .arg("--listen-unix")
            .arg(&socket)
            .args(extra)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        // The socket file appears at bind(), before listen(): wait until
        // a connection is accepted, not merely until the file exists.
        for _ in 0..400 {
            if UnixStream::connect(&socket).await.is_ok() {
                return Agent { _dir: dir, socket, child };
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the agent never listened on {}", socket.display());
    }

    async fn connect(&self) -> Host {
        Host::connect(&self.socket).await
    }
}

/// The host end of one connection.
struct Host {
    reader: OwnedReadHalf,
    writer: OwnedWriteHalf,
}

/// What one exec produced.
#[derive(Debug, Default)]
struct Outcome {
    pid: Option<u32>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    exited: Option<(Option<i32>, Option<i32>)>,
    error: Option<String>,
}

impl Host {
    async fn connect(socket: &Path) -> Host {
        let (reader, writer) = UnixStream::connect(socket).await.unwrap().into_split();
        let mut host = Host { reader, writer };
        host.send(Frame::control(0, &Request::Hello { protocol: PROTOCOL_VERSION })).await;
        let hello = host.recv().await;
        assert_eq!(hello.stream, 0);
        assert_eq!(
            hello.message::<Reply>().unwrap(),
            Reply::Hello { protocol: PROTOCOL_VERSION, agent_version: env!("CARGO_PKG_VERSION").into() }
        );
        host
    }

    async fn send(&mut self, frame: Frame) {
        write_frame(&mut self.writer, &frame).await.unwrap();
    }

    async fn recv(&mut self) -> Frame {
        tokio::time::timeout(TIMEOUT, read_frame(&mut self.reader))
            .await
            .expect("the agent went quiet")
            .unwrap()
            .expect("the agent closed the connection")
    }

    async fn exec(&mut self, stream: u32, argv: &[&str]) {
        let req = ExecRequest { argv: argv.iter().map(|s| s.to_string()).collect(), env: vec![], cwd: None };
        self.send(Frame::control(stream, &Request::Exec(req))).await;
    }

    async fn stdin(&mut self, stream: u32, bytes: &[u8]) {
        self.send(Frame::data(stream, FrameKind::Stdin, bytes.to_vec())).await;
    }

    /// Reads frames until every stream in `streams` has ended.
    async fn outcomes(&mut self, streams: &[u32]) -> Vec<Outcome> {
        let mut outcomes: Vec<Outcome> = streams.iter().map(|_| Outcome::default()).collect();
        let done = |o: &Outcome| o.exited.is_some() || o.error.is_some();
        while !outcomes.iter().all(done) {
            let frame = self.recv().await;
            let i = streams.iter().position(|s| *s == frame.stream).expect("a frame on an unknown stream");
            let outcome = &mut outcomes[i];
            match frame.kind {
                FrameKind::Stdout => outcome.stdout.extend(&frame.payload),
                FrameKind::Stderr => outcome.stderr.extend(&frame.payload),
                FrameKind::Control => match frame.message::<Reply>().unwrap() {
                    Reply::Started { pid } => outcome.pid = Some(pid),
                    Reply::Exited { code, signal } => outcome.exited = Some((code, signal)),
                    Reply::Error { message } => outcome.error = Some(message),
                    other => panic!("unexpected {other:?}"),
                },
                FrameKind::Stdin => panic!("the agent sent stdin"),
            }
        }
        outcomes
    }

    async fn run(&mut self, stream: u32, argv: &[&str]) -> Outcome {
        self.exec(stream, argv).await;
        self.outcomes(&[stream]).await.pop().unwrap()
    }
}

#[tokio::test]
async fn hello_and_echo() {
    let agent = Agent::start().await;
    let mut host = agent.connect().await;
    let out = host.run(1, &["echo", "hi"]).await;
    assert!(out.pid.is_some());
    assert_eq!(out.stdout, b"hi\n");
    assert_eq!(out.exited, Some((Some(0), None)));
}

#[tokio::test]
async fn stdout_stderr_and_exit_code_are_apart() {
    let agent = Agent::start().await;
    let mut host = agent.connect().await;
    let out = host.run(5, &["sh", "-c", "echo out; echo err >&2; exit 3"]).await;
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");
    assert_eq!(out.exited, Some((Some(3), None)));
}

#[tokio::test]
async fn env_and_cwd_are_applied() {
    let agent = Agent::start().await;
    let mut host = agent.connect().await;
    let req = ExecRequest {
        argv: vec!["sh".into(), "-c".into(), "echo $GREETING; pwd".into()],
        env: vec![("GREETING".into(), "hello there".into())],
        cwd: Some("/tmp".into()),
    };
    host.send(Frame::control(1, &Request::Exec(req))).await;
    let out = host.outcomes(&[1]).await.pop().unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "hello there\n/tmp\n");
    let out = host.run(2, &["pwd"]).await;
    assert_eq!(out.stdout, b"/\n", "the default working directory is /");
}

#[tokio::test]
async fn stdin_reaches_the_process_until_eof() {
    let agent = Agent::start().await;
    let mut host = agent.connect().await;
    host.exec(1, &["cat"]).await;
    let started = host.recv().await;
    assert!(matches!(started.message::<Reply>().unwrap(), Reply::Started { .. }));
    host.stdin(1, b"first line\n").await;
    let echoed = host.recv().await;
    assert_eq!((echoed.kind, echoed.payload.as_slice()), (FrameKind::Stdout, &b"first line\n"[..]));
    host.stdin(1, b"second").await;
    host.stdin(1, b"").await;
    let out = host.outcomes(&[1]).await.pop().unwrap();
    assert_eq!(out.stdout, b"second");
    assert_eq!(out.exited, Some((Some(0), None)));
}

#[tokio::test]
async fn a_signal_ends_the_process() {
    let agent = Agent::start().await;
    let mut host = agent.connect().await;
    host.exec(3, &["sleep", "30"]).await;
    let started = host.recv().await;
    assert!(matches!(started.message::<Reply>().unwrap(), Reply::Started { .. }));
    host.send(Frame::control(3, &Request::Signal { signal: 15 })).await;
    let out = host.outcomes(&[3]).await.pop().unwrap();
    assert_eq!(out.exited, Some((None, Some(15))));
}

#[tokio::test]
async fn a_missing_program_is_an_error_naming_it() {
    let agent = Agent::start().await;
    let mut host = agent.connect().await;
    let out = host.run(1, &["no-such-program-here", "x"]).await;
    let message = out.error.expect("an error");
    assert!(message.contains("no-such-program-here"), "{message}");
    assert_eq!(out.pid, None);
    // The agent goes on serving.
    assert_eq!(host.run(2, &["echo", "still here"]).await.stdout, b"still here\n");
}

#[tokio::test]
async fn a_busy_stream_is_refused() {
    let agent = Agent::start().await;
    let mut host = agent.connect().await;
    host.exec(1, &["sleep", "30"]).await;
    host.recv().await; // Started
    host.exec(1, &["echo", "no"]).await;
    let refused = host.recv().await;
    assert_eq!(refused.stream, 1);
    assert!(matches!(refused.message::<Reply>().unwrap(), Reply::Error { .. }), "{refused:?}");
    host.send(Frame::control(1, &Request::Signal { signal: 9 })).await;
    assert_eq!(host.outcomes(&[1]).await[0].exited, Some((None, Some(9))));
}

/// Off init, a power-off ends the agent and the commands it runs, as a
/// guest's power-off ends its VMM.
#[tokio::test]
async fn power_off_off_init_ends_the_agent_and_its_commands() {
    let mut agent = Agent::start().await;
    let mut host = agent.connect().await;
    host.exec(1, &["sleep", "30"]).await;
    let Reply::Started { pid } = host.recv().await.message::<Reply>().unwrap() else { panic!("not started") };
    host.send(Frame::control(2, &Request::Poweroff)).await;
    let status = tokio::time::timeout(TIMEOUT, agent.child.wait()).await.expect("the agent still runs").unwrap();
    assert!(status.success(), "{status}");
    // Its command is gone too (a zombie at most, until its new parent reaps it).
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().and_then(|stat| {
            stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next().map(str::to_owned))
        });
        if state.as_deref().is_none_or(|s| s == "Z") {
            break;
        }
        assert!(Instant::now() < deadline, "the command {pid} outlived the power-off");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(tokio::time::timeout(TIMEOUT, read_frame(&mut host.reader)).await.unwrap().unwrap().is_none());
}

#[tokio::test]
async fn concurrent_execs_interleave() {
    let agent = Agent::start().await;
    let mut host = agent.connect().await;
    let script = |tag: &str| format!("for i in 1 2 3 4 5; do echo {tag}$i; sleep 0.05; done; echo {tag} >&2");
    let streams = [10, 11, 12];
    for (stream, tag) in streams.iter().zip(["a", "b", "c"]) {
        host.exec(*stream, &["sh", "-c", &script(tag)]).await;
    }
    // Order of arrival across streams, to show they ran side by side.
    let mut order = Vec::new();
    let mut outcomes: Vec<Outcome> = streams.iter().map(|_| Outcome::default()).collect();
    while outcomes.iter().any(|o| o.exited.is_none()) {
        let frame = host.recv().await;
        let i = streams.iter().position(|s| *s == frame.stream).unwrap();
        match frame.kind {
            FrameKind::Stdout => {
                order.push(frame.stream);
                outcomes[i].stdout.extend(&frame.payload);
            }
            FrameKind::Stderr => outcomes[i].stderr.extend(&frame.payload),
            _ => match frame.message::<Reply>().unwrap() {
                Reply::Exited { code, signal } => outcomes[i].exited = Some((code, signal)),
                Reply::Started { .. } => {}
                other => panic!("unexpected {other:?}"),
            },
        }
    }
    for (outcome, tag) in outcomes.iter().zip(["a", "b", "c"]) {
        let expected: String = (1..=5).map(|i| format!("{tag}{i}\n")).collect();
        assert_eq!(String::from_utf8_lossy(&outcome.stdout), expected);
        assert_eq!(outcome.stderr, format!("{tag}\n").as_bytes());
        assert_eq!(outcome.exited, Some((Some(0), None)));
    }
    let switches = order.windows(2).filter(|w| w[0] != w[1]).count();
    assert!(switches >= 4, "the outputs did not interleave: {order:?}");
}

#[tokio::test]
async fn large_output_arrives_whole() {
    let agent = Agent::start().await;
    let mut host = agent.connect().await;
    // 1 MiB: many frames, and more than a pipe holds, so the pump must keep up.
    let out = host.run(1, &["sh", "-c", "head -c 1048576 /dev/zero | tr '\\0' x"]).await;
    assert_eq!(out.stdout.len(), 1 << 20);
    assert!(out.stdout.iter().all(|b| *b == b'x'));
    assert_eq!(out.exited, Some((Some(0), None)));
}

#[tokio::test]
async fn a_new_connection_after_a_disconnect_works() {
    let agent = Agent::start().await;
    let mut host = agent.connect().await;
    host.exec(1, &["sleep", "30"]).await;
    host.recv().await; // Started
                       // Half a frame, then the host goes away.
    let partial = Frame::control(2, &Request::Hello { protocol: PROTOCOL_VERSION }).encode();
    tokio::io::AsyncWriteExt::write_all(&mut host.writer, &partial[..7]).await.unwrap();
    drop(host);
    let mut host = agent.connect().await;
    assert_eq!(host.run(1, &["echo", "again"]).await.stdout, b"again\n");
}

#[tokio::test]
async fn a_background_child_does_not_hold_the_exec_open() {
    let agent = Agent::start().await;
    let mut host = agent.connect().await;
    let started = Instant::now();
    // The background sleep inherits stdout and stderr and keeps them open for 30 s.
    let out = host.run(1, &["sh", "-c", "sleep 30 & echo hi"]).await;
    assert_eq!(out.stdout, b"hi\n");
    assert_eq!(out.exited, Some((Some(0), None)));
    assert!(started.elapsed() < Duration::from_secs(5), "exited only after {:?}", started.elapsed());
}

#[tokio::test]
async fn a_signal_reaches_the_whole_process_group() {
    let agent = Agent::start().await;
    let mut host = agent.connect().await;
    host.exec(1, &["sh", "-c", "sleep 30; echo after"]).await;
    host.recv().await; // Started
    tokio::time::sleep(Duration::from_millis(200)).await; // let sh start sleep
    let started = Instant::now();
    host.send(Frame::control(1, &Request::Signal { signal: libc::SIGINT })).await;
    let out = host.outcomes(&[1]).await.pop().unwrap();
    assert!(started.elapsed() < Duration::from_secs(5), "ended only after {:?}", started.elapsed());
    assert!(out.exited.is_some(), "{out:?}");
    assert_eq!(out.stdout, b"", "sleep survived the signal");
}

#[tokio::test]
async fn stdin_the_command_does_not_read_is_capped_and_closed() {
    let agent = Agent::start().await;
    let mut host = agent.connect().await;
    host.exec(1, &["sleep", "30"]).await;
    host.recv().await; // Started
                       // 4 MiB in 256 KiB frames: a pipe's worth is absorbed, then the queue fills.
    for _ in 0..16 {
        host.stdin(1, &[b'x'; 256 * 1024]).await;
    }
    let error = tokio::time::timeout(Duration::from_secs(5), host.recv()).await.expect("no overflow error");
    assert_eq!(error.stream, 1);
    assert_eq!(
        error.message::<Reply>().unwrap(),
        Reply::Error { message: "stdin overflow: the command did not read its input fast enough; input closed".into() }
    );
    // The command keeps running and frames are still read: a signal ends it.
    host.stdin(1, b"more").await;
    host.send(Frame::control(1, &Request::Signal { signal: 9 })).await;
    let out = host.outcomes(&[1]).await.pop().unwrap();
    assert_eq!(out.error, None);
    assert_eq!(out.exited, Some((None, Some(9))));
}

#[tokio::test]
async fn a_hello_off_stream_0_is_ignored() {
    let agent = Agent::start().await;
    let mut host = agent.connect().await;
    host.exec(1, &["cat"]).await;
    host.recv().await; // Started
    host.send(Frame::control(7, &Request::Hello { protocol: PROTOCOL_VERSION })).await;
    host.stdin(1, b"still mine\n").await;
    let echoed = host.recv().await;
    assert_eq!((echoed.stream, echoed.kind), (1, FrameKind::Stdout), "{echoed:?}");
    assert_eq!(echoed.payload, b"still mine\n");
    host.stdin(1, b"").await;
    assert_eq!(host.outcomes(&[1]).await[0].exited, Some((Some(0), None)));
}

#[tokio::test]
async fn arguments_that_are_not_utf8_are_ignored() {
    let agent = Agent::start_with(&[OsStr::from_bytes(b"BOOT_IMAGE=\xff\xfe")]).await;
    let mut host = agent.connect().await;
    assert_eq!(host.run(1, &["echo", "hi"]).await.stdout, b"hi\n");
}

#[tokio::test]
async fn a_disconnect_closes_the_stdin_of_running_commands() {
    let agent = Agent::start().await;
    let mut host = agent.connect().await;
    let marker = agent._dir.path().join("saw-eof");
    // Writing the marker after EOF also shows the command was not killed.
    host.exec(1, &["sh", "-c", &format!("cat >/dev/null; sleep 0.2; echo eof > {}", marker.display())]).await;
    host.recv().await; // Started
    host.stdin(1, b"some input\n").await;
    drop(host);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !marker.exists() {
        assert!(Instant::now() < deadline, "the command never saw the end of its input");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
