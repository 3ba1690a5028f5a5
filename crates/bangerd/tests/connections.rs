//! Clients that stall or flood the API socket cannot lock others out: the
//! real bangerd binary caps its connections, closes those that send no
//! header or go idle, answers a stalled body with a 408, and logs it, while
//! streaming responses run as long as they need. And the socket path: a
//! file that is not a socket is refused and kept, a stale socket replaced.

use std::time::{Duration, Instant};

use banger_api::{Event, KernelPullRequest};
use banger_testkit::bundles::{entry, good_bundle};
use banger_testkit::{Canned, DaemonProcess, HttpServer, TestDaemon};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Every test here ends within this, whatever the daemon does.
const TEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Connections the flood opens.
const FLOOD: usize = 5000;

/// A request header cut short: the client never sends its blank line.
const PARTIAL_HEADER: &[u8] = b"GET /v1/health HTTP/1.1\r\nHost: banger\r\n";

async fn daemon(config: &str) -> DaemonProcess {
    DaemonProcess::start(env!("CARGO_BIN_EXE_bangerd").as_ref(), config).await
}

async fn connect(daemon: &DaemonProcess) -> UnixStream {
    UnixStream::connect(daemon.client.socket()).await.expect("connect to the daemon")
}

/// Whether the daemon has closed `stream`: a read sees the end (or a
/// reset) rather than nothing to read yet. Asks the socket itself, not
/// the runtime's view of it.
fn closed(stream: &impl std::os::fd::AsFd) -> bool {
    let mut buf = [0u8; 256];
    loop {
        match rustix::net::recv(stream, &mut buf, rustix::net::RecvFlags::DONTWAIT) {
            Ok((0, _)) => return true,
            Ok(_) => continue,
            Err(rustix::io::Errno::AGAIN) => return false,
            Err(_) => return true,
        }
    }
}

/// Reads one response (head and a `content-length` body) off `stream`.
async fn read_response(stream: &mut UnixStream) -> (String, String) {
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
            let length: usize = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ").map(str::to_owned))
                .map_or(0, |v| v.trim().parse().expect("a numeric content-length"));
            if bytes.len() >= end + 4 + length {
                let body = String::from_utf8_lossy(&bytes[end + 4..end + 4 + length]).into_owned();
                return (head, body);
            }
        }
        let n = stream.read(&mut chunk).await.expect("read a response");
        assert!(n > 0, "the connection closed before a whole response: {:?}", String::from_utf8_lossy(&bytes));
        bytes.extend_from_slice(&chunk[..n]);
    }
}

/// Waits until the daemon closes `stream`; how long that took.
async fn wait_closed(stream: &mut UnixStream, within: Duration) -> Duration {
    let started = Instant::now();
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout(within.saturating_sub(started.elapsed()), stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => continue,
            Err(_) => panic!("the daemon kept the connection open for {within:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_stalled_headers_locks_out_no_one_and_is_closed() {
    tokio::time::timeout(TEST_TIMEOUT, flood()).await.expect("the test ends in time");
}

async fn flood() {
    // The flood and the daemon's side of it must fit in this process's files.
    bangerd::server::limits::raise_open_files_limit();
    let mut daemon = daemon("[api]\nmax_connections = 1000\nheader_timeout_secs = 4\n").await;
    let baseline = daemon.open_fds();
    let socket = daemon.client.socket().to_owned();
    let started = Instant::now();
    // On a thread of its own, so the probes below wait on the daemon only.
    let flood = std::thread::spawn(move || {
        let mut stalled = Vec::with_capacity(FLOOD);
        for _ in 0..FLOOD {
            let mut stream = std::os::unix::net::UnixStream::connect(&socket).expect("connect");
            // A write to a connection already shed may fail; that is the point.
            let _ = std::io::Write::write_all(&mut stream, PARTIAL_HEADER);
            stalled.push(stream);
        }
        stalled
    });
    // Health and the VM list answer promptly all through the flood.
    let mut slowest = Duration::ZERO;
    let mut probes = 0;
    let mut during = 0;
    let mut peak_fds = baseline;
    while !flood.is_finished() || probes < 20 {
        let probe = Instant::now();
        daemon.client.health().await.expect("health answers during the flood");
        daemon.client.vms().await.expect("the VM list answers during the flood");
        slowest = slowest.max(probe.elapsed());
        probes += 1;
        during += usize::from(!flood.is_finished());
        peak_fds = peak_fds.max(daemon.open_fds());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stalled = flood.join().expect("the flood");
    let flood_time = started.elapsed();
    let shed = stalled.iter().filter(|s| closed(*s)).count();
    eprintln!(
        "flood of {FLOOD} stalled headers in {flood_time:.2?}: {probes} health+list probes ({during} during it), \
         slowest {slowest:.2?}; \
         daemon fds {baseline} before, peak {peak_fds}; {shed} already closed when it ended"
    );
    assert!(slowest < Duration::from_secs(2), "a probe took {slowest:?} during the flood");
    assert!(peak_fds < baseline + 1000 + 100, "the daemon held {peak_fds} files (cap 1000, {baseline} before)");
    assert!(shed >= FLOOD - 1000, "only {shed} of {FLOOD} stalled connections were shed at the cap");

    // After the header timeout every stalled connection is closed.
    let deadline = Instant::now() + Duration::from_secs(4 + 5);
    let mut open = stalled.iter().filter(|s| !closed(s)).count();
    while open > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        open = stalled.iter().filter(|s| !closed(s)).count();
    }
    let after = daemon.open_fds();
    eprintln!("after the header timeout: {open} stalled connections still open, daemon fds {after}");
    assert_eq!(open, 0, "stalled connections outlived the header timeout");
    assert!(after <= baseline + 5, "the daemon holds {after} files, {baseline} before the flood");
    daemon.client.health().await.expect("health answers after the flood");
    drop(stalled);

    assert!(daemon.terminate().success());
    let log = daemon.log();
    assert!(log.contains("connection limit reached"), "no line about the limit in the log:\n{log}");
    assert!(log.contains("max_connections=1000"), "the limit line names the limit:\n{log}");
    assert!(log.contains("no whole request header in time"), "no line about the header timeout:\n{log}");
    let lines = log.lines().filter(|l| l.contains("connection limit reached")).count();
    assert!(lines < 10, "{lines} limit lines for one flood: not rate-limited\n{log}");
}

#[tokio::test]
async fn at_the_cap_with_every_connection_busy_a_new_one_gets_a_503() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let mut daemon = daemon("[api]\nmax_connections = 2\n").await;
        // Event streams hold their connections with a request in hand.
        let first = daemon.client.events(None).await.unwrap();
        let second = daemon.client.events(None).await.unwrap();
        let mut third = connect(&daemon).await;
        let (head, body) = read_response(&mut third).await;
        assert!(head.starts_with("HTTP/1.1 503"), "{head}");
        let error: banger_api::ApiError = serde_json::from_str(&body).expect("a {code, message} body");
        assert_eq!(error.code, banger_api::ErrorCode::Unavailable);
        wait_closed(&mut third, Duration::from_secs(2)).await;
        // A stream ending makes room again.
        drop(first);
        let deadline = Instant::now() + Duration::from_secs(5);
        while daemon.client.health().await.is_err() {
            assert!(Instant::now() < deadline, "no room after a stream ended");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        drop(second);
        assert!(daemon.terminate().success());
        assert!(daemon.log().contains("refused new connections"), "{}", daemon.log());
    })
    .await
    .expect("the test ends in time");
}

#[tokio::test]
async fn a_stalled_body_gets_a_408_json_error() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let mut daemon = daemon("[api]\nbody_timeout_secs = 1\n").await;
        let mut stream = connect(&daemon).await;
        let head =
            "POST /v1/vms HTTP/1.1\r\nHost: banger\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n";
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(b"{\"name\": \"half").await.unwrap();
        let started = Instant::now();
        let (head, body) = tokio::time::timeout(Duration::from_secs(10), read_response(&mut stream))
            .await
            .expect("an answer within 10 s of the body stalling");
        let took = started.elapsed();
        eprintln!("a body stalled after 14 of 100 bytes: {:?} after {took:.2?}: {body}", head.lines().next());
        assert!(head.starts_with("HTTP/1.1 408"), "{head}");
        assert!(head.to_ascii_lowercase().contains("content-type: application/json"), "{head}");
        let error: banger_api::ApiError = serde_json::from_str(&body).expect("a {code, message} body");
        assert_eq!(error.code, banger_api::ErrorCode::Timeout);
        assert!(error.message.contains("request body"), "{}", error.message);
        assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(3), "answered after {took:?}");
        wait_closed(&mut stream, Duration::from_secs(2)).await;
        assert!(daemon.client.vms().await.unwrap().is_empty(), "nothing was created");
        assert!(daemon.terminate().success());
        assert!(daemon.log().contains("answered 408 to requests whose body stalled"), "{}", daemon.log());
    })
    .await
    .expect("the test ends in time");
}

#[tokio::test]
async fn an_idle_connection_is_closed_after_the_idle_timeout_not_the_header_timeout() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let daemon = daemon("[api]\nheader_timeout_secs = 1\nidle_timeout_secs = 3\n").await;
        let mut stream = connect(&daemon).await;
        let request = b"GET /v1/health HTTP/1.1\r\nHost: banger\r\n\r\n";
        stream.write_all(request).await.unwrap();
        let (head, _) = read_response(&mut stream).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        // Idle past the header timeout: still open, and it serves again.
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(!closed(&stream), "closed after 2 s idle with a 3 s idle timeout");
        stream.write_all(request).await.unwrap();
        let (head, _) = read_response(&mut stream).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let idle = wait_closed(&mut stream, Duration::from_secs(6)).await;
        eprintln!("an idle keep-alive connection was closed after {idle:.2?}");
        assert!(idle >= Duration::from_millis(2900) && idle < Duration::from_secs(5), "closed after {idle:?}");
    })
    .await
    .expect("the test ends in time");
}

#[tokio::test]
async fn the_event_stream_outlives_every_timeout() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let server = HttpServer::start().await;
        let second = Duration::from_secs(1);
        let daemon = TestDaemon::start_with(|config| {
            config.api.header_timeout = second;
            config.api.body_timeout = second;
            config.api.idle_timeout = second;
        })
        .await;
        let bundle = good_bundle("events");
        daemon.set_catalog(vec![entry("ev", &server.route("/ev.tar.zst", Canned::ok(bundle.clone())), &bundle)]);
        let mut events = daemon.client.events(None).await.unwrap();
        tokio::time::sleep(Duration::from_secs(4)).await;
        // Four times every timeout later, the stream still carries events.
        let op = daemon.client.pull_kernel(&KernelPullRequest { name: "ev".into(), force: false }).await.unwrap();
        let event = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .expect("an event within 10 s")
            .expect("the stream is still open")
            .expect("an event, not the end");
        match event {
            Event::Operation { operation } => assert_eq!(operation.id, op.id),
            other => panic!("expected the pull's operation, got {other:?}"),
        }
    })
    .await
    .expect("the test ends in time");
}

#[tokio::test]
async fn shutdown_waits_for_no_stalled_client() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let mut daemon = daemon("").await;
        let mut stalled = connect(&daemon).await;
        stalled.write_all(PARTIAL_HEADER).await.unwrap();
        let mut idle = connect(&daemon).await;
        idle.write_all(b"GET /v1/health HTTP/1.1\r\nHost: banger\r\n\r\n").await.unwrap();
        read_response(&mut idle).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let asked = Instant::now();
        assert!(daemon.terminate().success());
        let took = asked.elapsed();
        eprintln!("SIGTERM with a half-sent header and an idle connection open: exited after {took:.2?}");
        assert!(took < Duration::from_secs(3), "shutdown waited {took:?} for a stalled client");
    })
    .await
    .expect("the test ends in time");
}

#[tokio::test]
async fn a_file_at_the_socket_path_is_refused_and_kept() {
    let root = tempfile::tempdir().unwrap();
    let socket = root.path().join("bangerd.sock");
    let target = root.path().join("precious");
    std::fs::write(&target, "keep me").unwrap();
    let config = |name: &str| {
        let mut config = bangerd::Config::new(root.path().join(format!("state-{name}")), &socket);
        config.run_dir = root.path().join(format!("run-{name}"));
        config
    };
    type Make = fn(&std::path::Path, &std::path::Path);
    let cases: [(&str, &str, Make); 3] = [
        ("file", "a regular file", |socket, _| std::fs::write(socket, "not a socket").unwrap()),
        ("dir", "a directory", |socket, _| std::fs::create_dir(socket).unwrap()),
        ("link", "a symbolic link", |socket, target| std::os::unix::fs::symlink(target, socket).unwrap()),
    ];
    for (name, found, make) in cases {
        make(&socket, &target);
        match bangerd::prepare(config(name)).await {
            Err(error @ bangerd::StartError::NotASocket { .. }) => {
                let message = error.to_string();
                assert!(message.contains(found) && message.contains("not a socket"), "{message}");
            }
            Err(other) => panic!("{name}: expected NotASocket, got {other}"),
            Ok(_) => panic!("{name}: the daemon started over it"),
        }
        let meta = std::fs::symlink_metadata(&socket).expect("it is still there");
        match name {
            "file" => assert_eq!(std::fs::read_to_string(&socket).unwrap(), "not a socket"),
            "dir" => assert!(meta.is_dir()),
            _ => assert_eq!(std::fs::read_link(&socket).unwrap(), target),
        }
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me");
        if meta.is_dir() {
            std::fs::remove_dir(&socket).unwrap();
        } else {
            std::fs::remove_file(&socket).unwrap();
        }
    }
}

#[tokio::test]
async fn a_stale_socket_is_replaced() {
    let daemon = TestDaemon::start_with(|config| {
        // Left by a daemon that died: a socket nobody listens on.
        drop(std::os::unix::net::UnixListener::bind(&config.socket).unwrap());
        assert!(config.socket.exists());
    })
    .await;
    daemon.client.health().await.expect("the new daemon answers on the replaced socket");
}
