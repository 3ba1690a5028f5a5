//! Sessions, ports and stats through the built CLI, in a real guest under
//! QEMU with a real `bangerd` process: a shell session typed into line by
//! line, signals and exit statuses, a wait far longer than the daemon's
//! timeouts, the agent's refusals as exit codes, a
//! session that outlives a `kill -9` of the daemon, a listener started in
//! a session in `vm ports`, and `vm stats` seeing the guest burn CPU.

mod support;

use std::time::{Duration, Instant};

use support::{eventually, guest_with_config, json, text, Guest, TEST_TIMEOUT};

#[tokio::test(flavor = "multi_thread")]
async fn sessions_ports_and_stats_in_a_real_guest() {
    banger_testkit::with_timeout(TEST_TIMEOUT, body()).await;
}

async fn body() {
    // Timeouts far shorter than a wait: they apply between requests, not to one in hand.
    let timeouts = "[api]\nheader_timeout_secs = 2\nbody_timeout_secs = 2\nidle_timeout_secs = 2\n";
    let Some(mut g) = guest_with_config("s", 256, None, timeouts).await else { return };
    typing_into_a_shell(&g).await;
    a_wait_outlives_the_timeouts(&g).await;
    large_input(&g).await;
    signals_and_refusals(&g).await;
    ports(&g).await;
    stats(&g).await;
    surviving_a_daemon_kill(&mut g).await;
    g.remove().await;
}

/// A shell reading lines: what `send` types arrives as typed, and its exit
/// status is `wait`'s exit code.
async fn typing_into_a_shell(g: &Guest) {
    let script = r#"while read -r line; do case "$line" in quit) exit 3;; esac; echo "$line" >> /tmp/lines; done"#;
    let name = g.ok(&["session", "start", "s", "--name", "reader", "--", "sh", "-c", script]).await;
    assert_eq!(name.trim(), "reader");
    g.ok(&["session", "send", "s", "reader", "one\n"]).await;
    g.ok(&["session", "send", "s", "reader", "two", "--enter"]).await;
    let piped = g.banger_with_stdin(&["session", "send", "s", "reader", "--stdin"], Some(b"three\nfour\n")).await;
    assert!(piped.status.success(), "{}", text(&piped.stderr));
    let listed = g.ok(&["session", "list", "s"]).await;
    let header = listed.lines().next().unwrap();
    for column in ["VM", "SESSION", "STATE", "COMMAND", "STARTED", "EXIT CODE"] {
        assert!(header.contains(column), "{listed}");
    }
    let row = listed.lines().find(|l| l.contains("reader")).expect("the session is listed");
    assert!(row.starts_with("s ") && row.contains("running") && row.contains("sh -c"), "{listed}");

    g.ok(&["session", "send", "s", "reader", "quit", "--enter"]).await;
    let waited = g.banger(&["session", "wait", "s", "reader"]).await;
    assert_eq!(waited.status.code(), Some(3), "wait exits with the session's status: {}", text(&waited.stderr));
    // The shell read its lines in order, so all were written before it quit.
    assert_eq!(g.exec(&["cat", "/tmp/lines"]).await, "one\ntwo\nthree\nfour\n");

    let shown = json(&g.ok(&["session", "show", "s", "reader", "--json"]).await);
    assert_eq!((shown["vm"].as_str(), shown["state"].as_str()), (Some("s"), Some("exited")));
    assert_eq!((shown["exit_code"].as_i64(), shown["exit_status"].as_i64()), (Some(3), Some(3)));
    assert!(shown["ended_at"].is_string(), "{shown}");
    let all = json(&g.ok(&["session", "list", "--json"]).await);
    assert!(all.as_array().unwrap().iter().any(|s| s["vm"] == "s" && s["name"] == "reader"), "{all}");
    g.ok(&["session", "rm", "s", "reader"]).await;
    assert!(!g.ok(&["session", "list", "s"]).await.contains("reader"));
}

/// `wait` returns when the session ends, however long after the
/// daemon's (2 s) header, body and idle timeouts.
async fn a_wait_outlives_the_timeouts(g: &Guest) {
    g.ok(&["session", "start", "s", "--name", "slow", "--", "sleep", "7"]).await;
    let started = Instant::now();
    let waited = g.banger(&["session", "wait", "s", "slow"]).await;
    assert_eq!(waited.status.code(), Some(0), "{}", text(&waited.stderr));
    assert!(started.elapsed() > Duration::from_secs(5), "waited only {:?}", started.elapsed());
    g.ok(&["session", "rm", "s", "slow"]).await;
}

/// Input past the JSON routes' 2 MiB body limit is streamed whole; past
/// the 16 MiB of a send it is refused before anything is typed.
async fn large_input(g: &Guest) {
    let script = "stty raw -echo; touch /tmp/ready; exec cat > /tmp/in";
    g.ok(&["session", "start", "s", "--name", "raw", "--", "sh", "-c", script]).await;
    eventually(Duration::from_secs(30), "the raw terminal set", || async {
        g.daemon.client.exec("s", &["test", "-e", "/tmp/ready"], b"").await.unwrap().code.filter(|c| *c == 0)
    })
    .await;
    let line: Vec<u8> = b"0123456789abcdef".repeat(4).into_iter().chain([b'\n']).collect();
    let input: Vec<u8> = line.iter().copied().cycle().take(3 << 20).collect();
    let sent = g.banger_with_stdin(&["session", "send", "s", "raw", "--stdin"], Some(&input)).await;
    assert!(sent.status.success(), "{}", text(&sent.stderr));
    let size = || async { g.exec(&["stat", "-c", "%s", "/tmp/in"]).await.trim().parse::<usize>().unwrap() };
    eventually(Duration::from_secs(60), "3 MiB typed into the session", || async {
        (size().await == input.len()).then_some(())
    })
    .await;
    let too_much = vec![b'x'; (16 << 20) + 1];
    let refused = g.daemon.client.send_to_session("s", "raw", too_much).await.unwrap_err();
    let error = refused.api().expect("an API error");
    assert_eq!(error.code, banger_api::ErrorCode::TooLarge, "{error:?}");
    assert!(error.message.contains("16 MiB"), "{error:?}");
    assert_eq!(size().await, input.len(), "nothing of the refused input was typed");
    g.ok(&["session", "stop", "s", "raw"]).await;
    g.banger(&["session", "wait", "s", "raw"]).await;
    g.ok(&["session", "rm", "s", "raw"]).await;
}

/// Stops by signal name, the 128+N convention, default names, and the
/// agent's refusals with their exit codes.
async fn signals_and_refusals(g: &Guest) {
    let first = g.ok(&["session", "start", "s", "--", "sleep", "100000"]).await;
    let second = g.ok(&["session", "start", "s", "--", "sleep", "100000"]).await;
    assert_eq!((first.trim(), second.trim()), ("0", "1"), "default names are the smallest free numbers");

    let busy = g.banger(&["session", "rm", "s", "0"]).await;
    assert_eq!(busy.status.code(), Some(4), "a running session cannot be removed: {}", text(&busy.stderr));
    assert!(text(&busy.stderr).contains("is running"), "{}", text(&busy.stderr));

    g.ok(&["session", "stop", "s", "0", "--signal", "KILL"]).await;
    assert_eq!(g.banger(&["session", "wait", "s", "0"]).await.status.code(), Some(137));
    g.ok(&["session", "stop", "s", "1"]).await;
    assert_eq!(g.banger(&["session", "wait", "s", "1"]).await.status.code(), Some(143), "TERM by default");
    let table = g.ok(&["session", "list", "s"]).await;
    assert!(table.lines().any(|l| l.contains("137 (SIGKILL)")), "{table}");
    g.ok(&["session", "rm", "s", "0"]).await;
    g.ok(&["session", "rm", "s", "1"]).await;

    let missing = g.banger(&["session", "stop", "s", "nope"]).await;
    assert_eq!(missing.status.code(), Some(3), "not found exits 3: {}", text(&missing.stderr));
    assert!(text(&missing.stderr).contains("nope"), "{}", text(&missing.stderr));
    let taken = g.ok(&["session", "start", "s", "--name", "dup", "--", "sleep", "100000"]).await;
    assert_eq!(taken.trim(), "dup");
    let again = g.banger(&["session", "start", "s", "--name", "dup", "--", "true"]).await;
    assert_eq!(again.status.code(), Some(4), "the agent's already_exists exits 4: {}", text(&again.stderr));
    g.ok(&["session", "stop", "s", "dup", "--signal", "9"]).await;
    let bad = g.banger(&["session", "start", "s", "--name", "a b", "--", "true"]).await;
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad.stderr));
    let waited = g.banger(&["session", "wait", "s", "nope"]).await;
    assert_eq!(waited.status.code(), Some(255), "banger's own failures exit 255 from wait");
}

/// A listener started in a session shows in `vm ports`.
async fn ports(g: &Guest) {
    g.ok(&["session", "start", "s", "--name", "web", "--", "httpd", "-f", "-p", "8080"]).await;
    let listener = eventually(Duration::from_secs(30), "httpd listening on 8080", || async {
        let ports = json(&g.ok(&["vm", "ports", "s", "--json"]).await);
        ports.as_array().unwrap().iter().find(|p| p["port"] == 8080).cloned()
    })
    .await;
    assert_eq!(listener["protocol"], "tcp", "{listener}");
    let table = g.ok(&["vm", "ports", "s"]).await;
    assert!(table.starts_with("PROTO"), "{table}");
    let row = table.lines().find(|l| l.contains("8080")).expect("a row for 8080");
    assert!(row.starts_with("tcp") && row.contains("httpd"), "{table}");
    g.ok(&["session", "stop", "s", "web"]).await;
    g.banger(&["session", "wait", "s", "web"]).await;
}

/// `vm stats` sees a busy loop's CPU, and the VMM's own figures.
async fn stats(g: &Guest) {
    let idle = json(&g.ok(&["vm", "stats", "s", "--json"]).await);
    let vm = json(&g.ok(&["vm", "show", "s", "--json"]).await);
    assert_eq!(idle["vmm"]["pid"], vm["pid"], "{idle}");
    assert!(idle["vmm"]["rss_bytes"].as_u64().unwrap() > 10 << 20, "{idle}");
    assert!(idle["guest"]["memory"]["total_bytes"].as_u64().unwrap() > 100 << 20, "{idle}");
    assert!(idle["guest"]["disks"].as_array().unwrap().iter().any(|d| d["mount"] == "/"), "{idle}");
    let idle_cpu = idle["guest"]["cpu_percent"].as_f64().unwrap();

    g.ok(&["session", "start", "s", "--name", "burn", "--", "sh", "-c", "while :; do :; done"]).await;
    let started = Instant::now();
    let busy = eventually(Duration::from_secs(30), "the guest's CPU figure rising", || async {
        let stats = json(&g.ok(&["vm", "stats", "s", "--json"]).await);
        (stats["guest"]["cpu_percent"].as_f64().unwrap() > 80.0).then_some(stats)
    })
    .await;
    eprintln!(
        "stats: guest cpu {idle_cpu:.1}% idle, {:.1}% burning ({:?} after the loop started); vmm cpu {:.1}%, rss {} MiB",
        busy["guest"]["cpu_percent"].as_f64().unwrap(),
        started.elapsed(),
        busy["vmm"]["cpu_percent"].as_f64().unwrap(),
        busy["vmm"]["rss_bytes"].as_u64().unwrap() >> 20
    );
    assert!(busy["vmm"]["cpu_percent"].as_f64().unwrap() > 50.0, "the VMM works to emulate the loop: {busy}");
    let human = g.ok(&["vm", "stats", "s"]).await;
    for line in ["VM s, up", "cpu ", "memory ", "disk ", "vmm "] {
        assert!(human.contains(line), "{human}");
    }
    watch(g).await;
    g.ok(&["session", "stop", "s", "burn", "--signal", "KILL"]).await;
    g.banger(&["session", "wait", "s", "burn"]).await;
    eventually(Duration::from_secs(30), "the guest's CPU figure falling", || async {
        let stats = json(&g.ok(&["vm", "stats", "s", "--json"]).await);
        (stats["guest"]["cpu_percent"].as_f64().unwrap() < 50.0).then_some(())
    })
    .await;
}

/// `--watch --json` prints a sample a line until Ctrl-C, then exits 0.
async fn watch(g: &Guest) {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_banger"))
        .arg("--socket")
        .arg(&g.socket)
        .args(["vm", "stats", "s", "--watch", "--json"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    for _ in 0..2 {
        let line = lines.next_line().await.unwrap().expect("a sample a line");
        assert!(json(&line)["guest"]["cpu_percent"].is_number(), "{line}");
    }
    let pid = rustix::process::Pid::from_raw(child.id().unwrap() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    let status = child.wait().await.unwrap();
    assert_eq!(status.code(), Some(0), "Ctrl-C ends --watch quietly");
}

/// A session runs on while the daemon is killed and restarted, and is
/// listed again (with the same process) by the new daemon.
async fn surviving_a_daemon_kill(g: &mut Guest) {
    g.ok(&["session", "start", "s", "--name", "keeper", "--", "sleep", "100000"]).await;
    let before = json(&g.ok(&["session", "show", "s", "keeper", "--json"]).await);
    let status = g.daemon.kill();
    assert!(!status.success());
    g.daemon.restart().await;
    let sessions = json(&g.ok(&["session", "list", "s", "--json"]).await);
    let keeper = sessions.as_array().unwrap().iter().find(|s| s["name"] == "keeper").expect("keeper is listed");
    assert_eq!((keeper["state"].as_str(), &keeper["pid"]), (Some("running"), &before["pid"]), "{sessions}");
    g.ok(&["session", "stop", "s", "keeper"]).await;
}
