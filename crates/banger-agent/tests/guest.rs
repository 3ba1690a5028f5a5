//! The agent as init of a real guest: Debian's cloud kernel and the banger
//! initramfs under QEMU (TCG), a busybox root with the static agent as
//! `/sbin/init`, and the host speaking to it over a virtio-serial port.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use banger_agent_proto::{Frame, FrameKind, Hello, Reply, Request, SessionInfo, SessionStart, SessionState};
use bytes::Bytes;
use common::{exec, next_reply, outcome, Client};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

/// The whole test: the agent's build and the shared kernel's import (when
/// this test is the first of the run to need them), the boot, the talk.
const TEST_TIMEOUT: Duration = Duration::from_secs(600);
const BUSYBOX_APPLETS: &[&str] =
    &["sh", "cat", "echo", "uname", "ls", "sleep", "hostname", "mount", "head", "wc", "tty", "stty", "true"];

/// A root filesystem image: busybox, its applets, the agent as init.
fn make_root(dir: &Path, agent: &Path) -> PathBuf {
    let root = dir.join("root");
    for sub in ["bin", "sbin", "proc", "sys", "dev", "run", "tmp", "work", "etc"] {
        fs::create_dir_all(root.join(sub)).unwrap();
    }
    fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for applet in BUSYBOX_APPLETS {
        symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    fs::copy(agent, root.join("sbin/init")).unwrap();
    let image = dir.join("root.ext4");
    fs::File::create(&image).unwrap().set_len(64 << 20).unwrap();
    let status = Command::new("mkfs.ext4")
        .args(["-q", "-d"])
        .arg(&root)
        .arg(&image)
        .status()
        .expect("cannot run mkfs.ext4 (e2fsprogs)");
    assert!(status.success(), "mkfs.ext4 failed");
    image
}

/// QEMU, killed on drop; prints the guest console when the test fails.
struct Guest {
    qemu: Child,
    console: PathBuf,
}

impl Guest {
    fn boot(dir: &Path, kernel: &Path, root: &Path) -> Guest {
        let console = dir.join("console.log");
        let socket = dir.join("agent.sock");
        let qemu = Command::new("qemu-system-x86_64")
            .args(["-M", "pc", "-nodefaults", "-accel", "tcg", "-cpu", "max", "-m", "512", "-smp", "1"])
            .arg("-kernel")
            .arg(kernel.join("vmlinux"))
            .arg("-initrd")
            .arg(kernel.join("initrd.img"))
            .args(["-append", "console=ttyS0 root=/dev/vda rw panic=-1 banger.hostname=agent-test"])
            .arg("-drive")
            .arg(format!("file={},if=none,id=root,format=raw", root.display()))
            .args(["-device", "virtio-blk-pci,drive=root", "-device", "virtio-serial-pci"])
            .arg("-chardev")
            .arg(format!("socket,id=agent,path={},server=on,wait=off", socket.display()))
            .args(["-device", "virtserialport,chardev=agent,name=banger.agent"])
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", dir.join("qmp.sock").display()))
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .args(["-display", "none", "-no-reboot"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start qemu-system-x86_64 ({e}): install Debian's qemu-system-x86 (see scripts/setup-host)"
                )
            });
        Guest { qemu, console }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
        if std::thread::panicking() {
            let log = fs::read_to_string(&self.console).unwrap_or_default();
            eprintln!("---- guest console ----\n{log}\n---- end of console ----");
        }
    }
}

/// Connects to the guest's port (QEMU's chardev socket) and says hello,
/// again every 250 ms as bangerd does, until the agent answers.
async fn connect(socket: &Path) -> Client {
    let conn = loop {
        match UnixStream::connect(socket).await {
            Ok(conn) => break conn,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    Client::over(conn, Some(Duration::from_millis(250))).await.expect("the agent refused our hello")
}

/// Runs a command, feeding it `stdin` (then its end); returns (stdout, stderr, exit code).
async fn run(client: &Client, argv: &[&str], stdin: Option<&[u8]>) -> (String, String, Option<i32>) {
    let mut stream = client.exec(exec(argv)).await;
    if let Some(input) = stdin {
        stream.write(FrameKind::Stdin, Bytes::copy_from_slice(input)).await.unwrap();
        stream.finish(FrameKind::Stdin).await.unwrap();
    }
    let out = outcome(&mut stream).await;
    assert!(out.error.is_none(), "{argv:?}: {out:?}");
    let code = out.exited.and_then(|(code, _)| code);
    (out.stdout(), String::from_utf8(out.stderr).unwrap(), code)
}

/// A guest ready to boot: its kernel, its root image, where its sockets go.
struct Prepared {
    dir: tempfile::TempDir,
    kernel: banger_testkit::SharedKernel,
    root: PathBuf,
}

impl Prepared {
    /// `None` where the machine has no apt for the kernel (a SKIP; under CI a failure).
    async fn new() -> Option<Prepared> {
        let kernel = banger_testkit::debian_kernel().await?;
        let agent = tokio::task::spawn_blocking(banger_testkit::guest::agent_binary).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let root = make_root(dir.path(), &agent);
        Some(Prepared { dir, kernel, root })
    }

    fn boot(&self) -> Guest {
        Guest::boot(self.dir.path(), self.kernel.dir(), &self.root)
    }

    fn socket(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// Runs `test` on a fresh runtime, failing after [`TEST_TIMEOUT`].
fn with_timeout(test: impl std::future::Future<Output = ()>) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(banger_testkit::with_timeout(TEST_TIMEOUT, test));
}

/// Waits for QEMU to exit by itself; returns how long that took.
async fn wait_for_exit(guest: &mut Guest) -> Duration {
    let since = Instant::now();
    loop {
        if let Some(status) = guest.qemu.try_wait().unwrap() {
            assert!(status.success(), "QEMU exited with {status}");
            return since.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The agent's lines on the guest console.
fn agent_log(guest: &Guest) -> String {
    let console = fs::read_to_string(&guest.console).unwrap_or_default();
    assert!(!console.contains("Kernel panic"), "the guest panicked:\n{console}");
    console.lines().filter(|l| l.contains("banger-agent")).collect::<Vec<_>>().join("\n")
}

/// Presses Ctrl-Alt-Del on the guest's keyboard through QMP, as Firecracker's
/// SendCtrlAltDel does.
async fn ctrl_alt_del(qmp: &Path) {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let (reader, mut writer) = UnixStream::connect(qmp).await.unwrap().into_split();
    let mut lines = BufReader::new(reader).lines();
    lines.next_line().await.unwrap().expect("the QMP greeting");
    let keys = r#"[{"type":"qcode","data":"ctrl"},{"type":"qcode","data":"alt"},{"type":"qcode","data":"delete"}]"#;
    for command in [
        r#"{"execute":"qmp_capabilities"}"#.to_string(),
        format!(r#"{{"execute":"send-key","arguments":{{"keys":{keys}}}}}"#),
    ] {
        writer.write_all(format!("{command}\n").as_bytes()).await.unwrap();
        loop {
            let line = lines.next_line().await.unwrap().expect("a QMP answer");
            assert!(!line.contains("\"error\""), "QMP refused {command}: {line}");
            if line.contains("\"return\"") {
                break;
            }
        }
    }
}

#[test]
fn agent_runs_commands_as_init_of_a_real_guest() {
    with_timeout(async {
        let Some(prepared) = Prepared::new().await else {
            return;
        };
        let started = Instant::now();
        let mut guest = prepared.boot();
        let socket = prepared.socket("agent.sock");
        let release = prepared.kernel.release().to_owned();
        let client = connect(&socket).await;
        assert_eq!(client.hello.agent_version.as_deref(), Some(env!("CARGO_PKG_VERSION")));
        eprintln!("agent answered {:.1} s after QEMU started", started.elapsed().as_secs_f64());

        let (out, _, code) = run(&client, &["uname", "-r"], None).await;
        assert_eq!((out.trim(), code), (release.as_str(), Some(0)));
        let (out, _, _) = run(&client, &["hostname"], None).await;
        assert_eq!(out.trim(), "agent-test");
        let (out, err, code) = run(&client, &["sh", "-c", "echo out; echo err >&2; exit 7"], None).await;
        assert_eq!((out.as_str(), err.as_str(), code), ("out\n", "err\n", Some(7)));
        let (out, _, code) = run(&client, &["cat"], Some(b"through the port\n")).await;
        assert_eq!((out.as_str(), code), ("through the port\n", Some(0)));
        let (out, _, _) = run(&client, &["cat", "/proc/mounts"], None).await;
        for mount in [" /proc proc ", " /sys sysfs ", " /dev devtmpfs ", " /dev/pts devpts ", " /run tmpfs "] {
            assert!(out.contains(mount), "{mount:?} is not mounted:\n{out}");
        }
        let (out, _, _) = run(&client, &["sh", "-c", "echo $PATH"], None).await;
        assert_eq!(out.trim(), "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
        let mut tty = client.exec(common::tty(&["sh", "-c", "tty; stty size"], 33, 101)).await;
        let out = outcome(&mut tty).await;
        assert!(out.stdout().starts_with("/dev/pts/") && out.stdout().contains("33 101"), "{out:?}");
        let Reply::Stats(stats) = client.request(&Request::Stats).await else { panic!("no stats") };
        assert!(stats.cpus == 1 && stats.memory.total > 0, "{stats:?}");
        assert!(stats.disks.iter().any(|d| d.mount == "/" && d.device == "/dev/vda" && d.total > 0), "{stats:?}");

        // Files in and out as tar streams.
        let mut tar = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(14);
        header.set_mode(0o640);
        header.set_mtime(1_500_000_000);
        header.set_cksum();
        tar.append_data(&mut header, "sent", &b"into the guest"[..]).unwrap();
        let mut copy = client.open(&Request::CopyIn { dest: "/tmp/received".into() }).await;
        copy.write(FrameKind::Stdin, Bytes::from(tar.into_inner().unwrap())).await.unwrap();
        copy.finish(FrameKind::Stdin).await.unwrap();
        assert_eq!(next_reply(&mut copy).await, Reply::Done);
        let (out, _, _) = run(&client, &["sh", "-c", "cat /tmp/received; ls -l /tmp/received"], None).await;
        assert!(out.starts_with("into the guest-rw-r-----"), "{out}");
        let mut copy = client.open(&Request::CopyOut { path: "/tmp/received".into() }).await;
        let mut tar = Vec::new();
        while let Some(banger_agent_proto::mux::Event::Data { bytes, .. }) = common::event(&mut copy).await {
            tar.extend(&bytes);
        }
        let mut archive = tar::Archive::new(&tar[..]);
        let mut entry = archive.entries().unwrap().next().unwrap().unwrap();
        assert_eq!(entry.path().unwrap().to_str(), Some("received"));
        let mut content = String::new();
        std::io::Read::read_to_string(&mut entry, &mut content).unwrap();
        assert_eq!(content, "into the guest");

        // A session lives under /run/banger/sessions and outlives the connection below.
        let start = Request::SessionStart(SessionStart {
            name: "s".into(),
            exec: exec(&["sh", "-c", "echo in-guest; exec cat"]),
        });
        assert!(matches!(client.request(&start).await, Reply::Session(_)));

        // A command running when the host goes away is hung up: the port
        // outlives the connection, and a new host starts with a hello.
        let mut sleeper = client.exec(exec(&["sleep", "1000"])).await;
        let Reply::Started { pid } = next_reply(&mut sleeper).await else { panic!("not started") };
        drop(client);
        // A host that died mid-frame leaves half a frame: the agent resynchronises.
        let mut raw = UnixStream::connect(&socket).await.unwrap();
        let partial = Frame::control(0, &Request::Hello(Hello::ours())).encode();
        raw.write_all(&partial[..5]).await.unwrap();
        drop(raw);
        let client = connect(&socket).await;
        let (_, _, code) = run(&client, &["true"], None).await;
        assert_eq!(code, Some(0));
        let gone_by = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, _, code) = run(&client, &["sh", "-c", &format!("kill -0 {pid} 2>/dev/null")], None).await;
            if code != Some(0) {
                break;
            }
            assert!(Instant::now() < gone_by, "sleep {pid} outlived the host that started it");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        let attach = Request::SessionAttach { name: "s".into(), size: None, read_only: false };
        let mut view = client.open(&attach).await;
        assert!(matches!(
            next_reply(&mut view).await,
            Reply::Session(SessionInfo { state: SessionState::Running, .. })
        ));
        common::stdout_until(&mut view, "in-guest").await;
        common::type_in(&view, "typed in the guest\n").await;
        common::stdout_until(&mut view, "typed in the guest").await;
        drop(view);
        let (_, _, code) = run(&client, &["cat", "/run/banger/sessions/s/state.json"], None).await;
        assert_eq!(code, Some(0), "the session's state is kept in /run/banger/sessions");

        // Power off: QEMU (with -no-reboot) exits by itself.
        let off = client.mux.open().unwrap();
        off.send(&Request::Poweroff).await.unwrap();
        drop(off);
        eprintln!("QEMU exited {:.1} s after the power-off request", wait_for_exit(&mut guest).await.as_secs_f64());
        let log = agent_log(&guest);
        eprintln!("---- the agent on the guest console ----\n{log}");
        assert!(log.contains("powering off"));
    });
}

#[test]
fn ctrl_alt_del_powers_the_guest_off() {
    with_timeout(async {
        let Some(prepared) = Prepared::new().await else {
            return;
        };
        let mut guest = prepared.boot();
        let client = connect(&prepared.socket("agent.sock")).await;
        // A process that would run for ever: power-off must not wait for it.
        let mut forever = client.exec(exec(&["sleep", "1000"])).await;
        assert!(matches!(next_reply(&mut forever).await, Reply::Started { .. }));
        ctrl_alt_del(&prepared.socket("qmp.sock")).await;
        let took = wait_for_exit(&mut guest).await;
        eprintln!("QEMU exited {:.1} s after Ctrl-Alt-Del", took.as_secs_f64());
        assert!(agent_log(&guest).contains("powering off"));
    });
}
