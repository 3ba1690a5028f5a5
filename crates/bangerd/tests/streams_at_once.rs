//! Many streams of one real guest (QEMU/TCG) at once, through the daemon's
//! WebSocket routes: an exec whose reader stops for 10 s holds up only
//! itself while two other execs and a session attach keep flowing; and
//! `session logs -f` follows a session to its end.

use std::time::{Duration, Instant};

use banger_api::stream::ExecStart;
use banger_api::{SessionStartRequest, VmmChoice};
use banger_client::{StreamEvent, StreamEvents};
use banger_testkit::requests::{succeed, tiny_image, vm};
use banger_testkit::TestDaemon;

const TEST_TIMEOUT: Duration = Duration::from_secs(600);
const STALL: Duration = Duration::from_secs(10);
const STALLED_BYTES: u64 = 32 << 20;
const FLOWING_BYTES: u64 = 4 << 20;

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_reader_holds_up_only_its_own_stream() {
    banger_testkit::with_timeout(TEST_TIMEOUT, body()).await;
}

/// Reads a stream to its end: stdout bytes and the exit status.
async fn drain(mut events: StreamEvents) -> (u64, i32) {
    let mut bytes = 0;
    loop {
        match events.next().await.expect("the stream can be read") {
            Some(StreamEvent::Stdout(b)) => bytes += b.len() as u64,
            Some(StreamEvent::Exited { exit_status, .. }) => return (bytes, exit_status),
            Some(StreamEvent::Error { error, .. }) => panic!("the stream failed: {error}"),
            Some(_) => {}
            None => panic!("the stream ended before its command"),
        }
    }
}

fn zeros(bytes: u64) -> ExecStart {
    ExecStart { argv: vec!["head".into(), "-c".into(), bytes.to_string(), "/dev/zero".into()], ..Default::default() }
}

async fn body() {
    if !banger_testkit::require("root, to build images", banger_testkit::is_root()) {
        return;
    }
    let Some(kernel) = banger_testkit::debian_kernel().await else { return };
    let agent = tokio::task::spawn_blocking(banger_testkit::guest::agent_binary).await.unwrap();
    let daemon = TestDaemon::start_with_kernel(&kernel, |c| {
        c.agent_binary = Some(agent);
        c.vmm = Some(VmmChoice::Qemu);
        c.boot_timeout = Duration::from_secs(120);
    })
    .await;
    let client = daemon.client.clone();
    succeed(&client, client.build_image(&tiny_image("tiny", "debian")).await.unwrap()).await;
    succeed(&client, client.create_vm(&vm("m", "tiny")).await.unwrap()).await;
    let ticker = SessionStartRequest {
        name: Some("ticker".into()),
        argv: ["sh", "-c", "while :; do echo tick; sleep 0.2; done"].map(String::from).to_vec(),
        ..Default::default()
    };
    client.start_session("m", &ticker).await.unwrap();

    // The stalled exec: started, then not read for STALL.
    let (_stalled_tx, stalled) = client.exec_stream("m", zeros(STALLED_BYTES)).await.unwrap();
    let began = Instant::now();
    let (_attach_tx, mut attached) = client.attach("m", "ticker", None, true).await.unwrap();
    let flowing = |n| {
        let client = client.clone();
        tokio::spawn(async move { drain(client.exec_stream("m", zeros(n)).await.unwrap().1).await })
    };
    let (a, b) = (flowing(FLOWING_BYTES), flowing(FLOWING_BYTES));
    let ticks = tokio::spawn(async move {
        let mut seen = Vec::new();
        while seen.windows(4).filter(|w| w == b"tick").count() < 5 {
            match attached.next().await.unwrap() {
                Some(StreamEvent::Stdout(bytes)) => seen.extend_from_slice(&bytes),
                Some(_) => {}
                None => panic!("the attach ended"),
            }
        }
    });
    assert_eq!(a.await.unwrap(), (FLOWING_BYTES, 0));
    assert_eq!(b.await.unwrap(), (FLOWING_BYTES, 0));
    ticks.await.unwrap();
    let others_took = began.elapsed();
    assert!(others_took < STALL, "the other streams waited for the stalled one ({others_took:?})");
    tokio::time::sleep(STALL.saturating_sub(began.elapsed())).await;

    // Read at last, the stalled stream gives everything, nothing dropped.
    let (bytes, status) = drain(stalled).await;
    assert_eq!((bytes, status), (STALLED_BYTES, 0));
    let rss = daemon_rss_kib();
    eprintln!(
        "two execs of {} MiB and an attach finished in {others_took:?} beside a stalled exec; it then gave all {} MiB; test process RSS {rss} KiB",
        FLOWING_BYTES >> 20,
        STALLED_BYTES >> 20
    );

    // `session logs -f` follows a session to its end and gives its status.
    let counter = SessionStartRequest {
        name: Some("counter".into()),
        argv: ["sh", "-c", "for i in 1 2 3; do echo line$i; sleep 0.3; done; exit 5"].map(String::from).to_vec(),
        ..Default::default()
    };
    client.start_session("m", &counter).await.unwrap();
    let mut logs = client.session_logs("m", "counter", true, None).await.unwrap();
    let mut text = Vec::new();
    let status = loop {
        match logs.next().await.unwrap() {
            Some(StreamEvent::Stdout(bytes)) => text.extend_from_slice(&bytes),
            Some(StreamEvent::Exited { exit_status, .. }) => break exit_status,
            Some(_) => {}
            None => panic!("logs -f ended before the session"),
        }
    };
    let text = String::from_utf8_lossy(&text);
    assert!(text.contains("line1") && text.contains("line3"), "{text:?}");
    assert_eq!(status, 5);
    succeed(&client, client.remove_vm("m", true).await.unwrap()).await;
}

/// This process's resident set (the daemon runs in it), in KiB.
fn daemon_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
