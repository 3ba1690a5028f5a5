//! `vm exec` and `session attach|logs` through the built CLI, in a real
//! guest under QEMU with a real `bangerd` process: exit statuses (128+N for
//! a signal), 200 MB each way checked by sha256, and the interactive
//! terminal driven through a real one (tmux): echo, Ctrl-C reaching the
//! guest, a resize, the terminal put back; a session attached to, detached
//! from with the detach keys, reattached to with its screen restored, and
//! ended with its status.

mod support;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use support::{eventually, guest, text, Guest, TEST_TIMEOUT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Bytes streamed each way.
const BIG: usize = 200 << 20;

#[tokio::test(flavor = "multi_thread")]
async fn exec_and_attach_through_the_cli_in_a_real_guest() {
    banger_testkit::with_timeout(TEST_TIMEOUT, body()).await;
}

async fn body() {
    if !banger_testkit::require("tmux, to drive a terminal", Path::new("/usr/bin/tmux").is_file()) {
        return;
    }
    let Some(g) = guest("x", 256, None).await else { return };
    exit_statuses(&g).await;
    signals_forwarded(&g).await;
    output_stream(&g).await;
    input_stream(&g).await;
    let tmux = Tmux::new();
    interactive_exec(&g, &tmux).await;
    attach_detach_and_reattach(&g, &tmux).await;
    g.remove().await;
}

async fn exit_statuses(g: &Guest) {
    let code = |out: &std::process::Output| out.status.code();
    assert_eq!(code(&g.banger(&["vm", "exec", "x", "--", "sh", "-c", "exit 3"]).await), Some(3));
    assert_eq!(code(&g.banger(&["vm", "exec", "x", "--", "sh", "-c", "kill -TERM $$"]).await), Some(128 + 15));
    assert_eq!(code(&g.banger(&["vm", "exec", "x", "--", "sh", "-c", "kill -KILL $$"]).await), Some(128 + 9));
    let env = g
        .banger(&["vm", "exec", "x", "-e", "GREETING=hi there", "-w", "/tmp", "--", "sh", "-c", "echo $GREETING; pwd"])
        .await;
    assert_eq!(text(&env.stdout), "hi there\n/tmp\n", "{}", text(&env.stderr));
    // Without -i the command reads end of file at once, whatever stdin holds.
    let no_input = g.banger_with_stdin(&["vm", "exec", "x", "--", "wc", "-c"], Some(b"ignored")).await;
    assert_eq!(text(&no_input.stdout).trim(), "0");
    let missing = g.banger(&["vm", "exec", "x", "--", "no-such-program"]).await;
    assert_eq!(code(&missing), Some(127), "{}", text(&missing.stderr));
    let gone = g.banger(&["vm", "exec", "nope", "--", "true"]).await;
    assert_eq!(code(&gone), Some(255), "{}", text(&gone.stderr));
    assert!(text(&gone.stderr).contains("nope"), "{}", text(&gone.stderr));
}

/// Without `-t`, SIGINT and SIGTERM sent to banger reach the command.
async fn signals_forwarded(g: &Guest) {
    for (signal, name) in [(libc::SIGINT, "INT"), (libc::SIGTERM, "TERM")] {
        let script = format!("trap 'echo got-{name}; exit 5' {name}; echo ready; while :; do sleep 1; done");
        let mut child =
            g.command(&["vm", "exec", "x", "--", "sh", "-c", &script]).stdout(Stdio::piped()).spawn().unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 256];
        while !text(&seen).contains("ready") {
            let n = stdout.read(&mut buf).await.unwrap();
            assert!(n > 0, "the command ended before it was ready: {}", text(&seen));
            seen.extend_from_slice(&buf[..n]);
        }
        let pid = rustix::process::Pid::from_raw(child.id().unwrap() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::from_named_raw(signal).unwrap()).unwrap();
        stdout.read_to_end(&mut seen).await.unwrap();
        let status = child.wait().await.unwrap();
        assert_eq!(text(&seen), format!("ready\ngot-{name}\n"));
        assert_eq!(status.code(), Some(5), "SIG{name}: the command's trap ran and its exit code is banger's");
    }
}

/// 200 MB of random bytes out of the guest: what banger writes to its
/// stdout is what the guest hashed, byte for byte.
async fn output_stream(g: &Guest) {
    let script = format!(
        "mkfifo /tmp/out && (sha256sum < /tmp/out >&2 &) && head -c {BIG} /dev/urandom | tee /tmp/out; wait; rm /tmp/out"
    );
    let started = Instant::now();
    let mut child = g.command(&["vm", "exec", "x", "--", "sh", "-c", &script]).stdout(Stdio::piped()).spawn().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut hash = Sha256::new();
    let mut seen = 0usize;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = stdout.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        seen += n;
    }
    let out = child.wait_with_output().await.unwrap();
    let elapsed = started.elapsed();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(seen, BIG);
    let guest_hash = text(&out.stderr).split_whitespace().next().unwrap_or_default().to_owned();
    assert_eq!(hex(&hash.finalize()), guest_hash);
    eprintln!("200 MB out of the guest in {elapsed:.1?} ({:.1} MB/s)", BIG as f64 / 1e6 / elapsed.as_secs_f64());
}

/// 200 MB into the guest through `-i`: sha256sum there sees what was sent.
async fn input_stream(g: &Guest) {
    let started = Instant::now();
    let mut child = g
        .command(&["vm", "exec", "-i", "x", "--", "sha256sum"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let feed = tokio::spawn(async move {
        let mut hash = Sha256::new();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut chunk = vec![0u8; 1 << 20];
        for _ in 0..BIG >> 20 {
            for word in chunk.chunks_mut(8) {
                // xorshift: bytes no compressor or shortcut makes easy.
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                word.copy_from_slice(&state.to_le_bytes());
            }
            hash.update(&chunk);
            stdin.write_all(&chunk).await.unwrap();
        }
        drop(stdin);
        hex(&hash.finalize())
    });
    let out = child.wait_with_output().await.unwrap();
    let sent = feed.await.unwrap();
    let elapsed = started.elapsed();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).split_whitespace().next(), Some(sent.as_str()));
    eprintln!("200 MB into the guest in {elapsed:.1?} ({:.1} MB/s)", BIG as f64 / 1e6 / elapsed.as_secs_f64());
}

/// `vm exec -i -t` in a real terminal: what is typed is echoed by the
/// guest's terminal, Ctrl-C interrupts the guest's `sleep` (the shell's
/// prompt comes back), a resize reaches `stty size`, `exit 4` is banger's
/// status, and the terminal is put back as it was.
async fn interactive_exec(g: &Guest, tmux: &Tmux) {
    let status = tmux.dir.path().join("exec-status");
    let stty = tmux.dir.path().join("exec-stty");
    tmux.run(
        "exec",
        &format!(
            "{} vm exec -i -t x -- sh; echo \"exit=$?\" > {}; stty -a > {}; sleep 600",
            g.cli(),
            status.display(),
            stty.display()
        ),
    );
    tmux.keys("exec", &["echo typed-$((40+2))", "Enter"]);
    tmux.wait_for("exec", "typed-42").await;
    // What the guest prints once it runs the line (the typed line shows
    // no product), then the sleep; Ctrl-C ends it and the prompt returns
    // long before the sleep would have.
    tmux.keys("exec", &["echo sleep-$((5*5)); sleep 100", "Enter"]);
    tmux.wait_for("exec", "sleep-25").await;
    let interrupted = Instant::now();
    tmux.keys("exec", &["C-c"]);
    tmux.keys("exec", &["echo back-$((1+1))", "Enter"]);
    tmux.wait_for("exec", "back-2").await;
    assert!(interrupted.elapsed() < Duration::from_secs(60), "Ctrl-C did not end the sleep");
    tmux.resize("exec", 100, 30);
    tmux.keys("exec", &["stty size", "Enter"]);
    tmux.wait_for("exec", "30 100").await;
    tmux.keys("exec", &["exit 4", "Enter"]);
    let written = eventually(Duration::from_secs(30), "banger to exit", || async {
        std::fs::read_to_string(&stty).ok().filter(|s| !s.is_empty())
    })
    .await;
    assert_eq!(std::fs::read_to_string(&status).unwrap().trim(), "exit=4");
    let flags: Vec<&str> = written.split_whitespace().collect();
    for flag in ["echo", "icanon", "isig", "icrnl", "opost"] {
        assert!(flags.contains(&flag), "the terminal was not put back ({flag} is off): {written}");
    }
}

/// A shell session: attached, typed into, detached with Ctrl-] (banger
/// says how to reattach and exits 0), its logs read, reattached with its
/// screen restored, then ended with `exit 7`, attach's status.
async fn attach_detach_and_reattach(g: &Guest, tmux: &Tmux) {
    // No such session: the guest's refusal, as the JSON routes give it (exit 3, not found).
    for args in [&["session", "attach", "x", "nope"][..], &["session", "logs", "x", "nope"]] {
        let out = g.banger(args).await;
        assert_eq!(out.status.code(), Some(3), "{args:?}: {}", text(&out.stderr));
        assert!(text(&out.stderr).contains("nope"), "{}", text(&out.stderr));
    }
    g.ok(&["session", "start", "x", "--name", "sh", "--", "sh"]).await;
    let status = tmux.dir.path().join("attach-status");
    let attach = |name: &str| {
        tmux.run(name, &format!("{} session attach x sh; echo \"exit=$?\" > {}; sleep 600", g.cli(), status.display()));
    };
    attach("attach1");
    tmux.keys("attach1", &["echo in-$((3*3))-session", "Enter"]);
    tmux.wait_for("attach1", "in-9-session").await;
    tmux.keys("attach1", &["C-]"]);
    tmux.wait_for("attach1", "reattach with `banger session attach x sh`").await;
    assert_eq!(std::fs::read_to_string(&status).unwrap().trim(), "exit=0");
    std::fs::remove_file(&status).unwrap();

    let logs = g.ok(&["session", "logs", "x", "sh"]).await;
    assert!(logs.contains("in-9-session"), "{logs}");
    let tail = g.ok(&["session", "logs", "x", "sh", "--tail", "1"]).await;
    assert!(!tail.contains("echo in-"), "--tail 1 keeps the last line only: {tail:?}");

    attach("attach2");
    // The agent redraws the screen as it was: the earlier output is there.
    tmux.wait_for("attach2", "in-9-session").await;
    tmux.keys("attach2", &["exit 7", "Enter"]);
    eventually(Duration::from_secs(30), "attach to end with the session", || async {
        std::fs::read_to_string(&status).ok().filter(|s| s.contains("exit="))
    })
    .await;
    assert_eq!(std::fs::read_to_string(&status).unwrap().trim(), "exit=7");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A tmux server of the test's own (its own socket), each window a terminal.
struct Tmux {
    dir: tempfile::TempDir,
}

impl Tmux {
    fn new() -> Tmux {
        Tmux { dir: tempfile::tempdir().unwrap() }
    }

    fn tmux(&self, args: &[&str]) -> std::process::Output {
        let out = std::process::Command::new("tmux")
            .arg("-S")
            .arg(self.dir.path().join("tmux.sock"))
            .args(args)
            .output()
            .expect("run tmux");
        assert!(out.status.success(), "tmux {args:?}: {}", text(&out.stderr));
        out
    }

    /// A new 80x24 terminal `name` running `command` under sh.
    fn run(&self, name: &str, command: &str) {
        self.tmux(&["new-session", "-d", "-s", name, "-x", "80", "-y", "24", command]);
    }

    fn keys(&self, name: &str, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", name];
        args.extend(keys);
        self.tmux(&args);
    }

    fn resize(&self, name: &str, cols: u16, rows: u16) {
        self.tmux(&["resize-window", "-t", name, "-x", &cols.to_string(), "-y", &rows.to_string()]);
    }

    fn screen(&self, name: &str) -> String {
        text(&self.tmux(&["capture-pane", "-p", "-t", name]).stdout)
    }

    /// Waits until the terminal shows `what` (the guest answers under TCG).
    async fn wait_for(&self, name: &str, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let screen = self.screen(name);
            if screen.contains(what) {
                return;
            }
            assert!(Instant::now() < deadline, "{what:?} not on terminal {name} within 60 s; it shows:\n{screen}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = std::process::Command::new("tmux")
            .arg("-S")
            .arg(self.dir.path().join("tmux.sock"))
            .arg("kill-server")
            .output();
    }
}
