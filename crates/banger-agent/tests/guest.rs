//! The agent as init of a real guest: Debian's cloud kernel and the banger
//! initramfs under QEMU (TCG), a busybox root with the static agent as
//! `/sbin/init`, and the host speaking to it over a virtio-serial port.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use banger_agent_proto::{read_frame, write_frame, ExecRequest, Frame, FrameKind, Reply, Request, PROTOCOL_VERSION};
use tokio::io::AsyncWriteExt;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

/// The whole test: the agent's build and the shared kernel's import (when
/// this test is the first of the run to need them), the boot, the talk.
const TEST_TIMEOUT: Duration = Duration::from_secs(600);
const BUSYBOX_APPLETS: &[&str] = &["sh", "cat", "echo", "uname", "ls", "sleep", "hostname", "mount", "head", "wc"];

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

struct Host {
    reader: OwnedReadHalf,
    writer: OwnedWriteHalf,
}

impl Host {
    async fn connect(socket: &Path) -> Host {
        loop {
            match UnixStream::connect(socket).await {
                Ok(conn) => {
                    let (reader, writer) = conn.into_split();
                    return Host { reader, writer };
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    async fn send(&mut self, frame: Frame) {
        write_frame(&mut self.writer, &frame).await.unwrap();
    }

    async fn recv(&mut self) -> Frame {
        read_frame(&mut self.reader).await.unwrap().expect("the channel closed")
    }

    /// Says hello; returns the agent's version and the frames that came
    /// before its answer (output for an earlier host connection).
    async fn hello(&mut self) -> (String, Vec<Frame>) {
        self.send(Frame::control(0, &Request::Hello { protocol: PROTOCOL_VERSION })).await;
        let mut earlier = Vec::new();
        loop {
            let frame = self.recv().await;
            if let (0, Ok(Reply::Hello { protocol, agent_version })) = (frame.stream, frame.message::<Reply>()) {
                assert_eq!(protocol, PROTOCOL_VERSION);
                return (agent_version, earlier);
            }
            earlier.push(frame);
        }
    }

    /// Runs a command, feeding it `stdin` (then EOF); returns (stdout, stderr, exit code).
    async fn run(&mut self, stream: u32, argv: &[&str], stdin: Option<&[u8]>) -> (String, String, Option<i32>) {
        let req = ExecRequest { argv: argv.iter().map(|s| s.to_string()).collect(), env: vec![], cwd: None };
        self.send(Frame::control(stream, &Request::Exec(req))).await;
        if let Some(input) = stdin {
            self.send(Frame::data(stream, FrameKind::Stdin, input.to_vec())).await;
            self.send(Frame::data(stream, FrameKind::Stdin, Vec::new())).await;
        }
        let (mut out, mut err) = (Vec::new(), Vec::new());
        loop {
            let frame = self.recv().await;
            assert_eq!(frame.stream, stream, "a frame for another stream: {frame:?}");
            match frame.kind {
                FrameKind::Stdout => out.extend(frame.payload),
                FrameKind::Stderr => err.extend(frame.payload),
                _ => match frame.message::<Reply>().unwrap() {
                    Reply::Started { .. } => {}
                    Reply::Exited { code, .. } => {
                        return (String::from_utf8(out).unwrap(), String::from_utf8(err).unwrap(), code)
                    }
                    other => panic!("{argv:?}: {other:?}"),
                },
            }
        }
    }
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
        let mut host = Host::connect(&socket).await;
        assert_eq!(host.hello().await.0, env!("CARGO_PKG_VERSION"));
        eprintln!("agent answered {:.1} s after QEMU started", started.elapsed().as_secs_f64());

        let (out, _, code) = host.run(1, &["uname", "-r"], None).await;
        assert_eq!((out.trim(), code), (release.as_str(), Some(0)));
        let (out, _, _) = host.run(2, &["hostname"], None).await;
        assert_eq!(out.trim(), "agent-test");
        let (out, err, code) = host.run(3, &["sh", "-c", "echo out; echo err >&2; exit 7"], None).await;
        assert_eq!((out.as_str(), err.as_str(), code), ("out\n", "err\n", Some(7)));
        let (out, _, code) = host.run(4, &["cat"], Some(b"through the port\n")).await;
        assert_eq!((out.as_str(), code), ("through the port\n", Some(0)));
        let (out, _, _) = host.run(5, &["cat", "/proc/mounts"], None).await;
        for mount in [" /proc proc ", " /sys sysfs ", " /dev devtmpfs ", " /dev/pts devpts ", " /run tmpfs "] {
            assert!(out.contains(mount), "{mount:?} is not mounted:\n{out}");
        }
        let (out, _, _) = host.run(6, &["sh", "-c", "echo $PATH"], None).await;
        assert_eq!(out.trim(), "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");

        // The host goes away mid-frame and comes back (a daemon restart): the
        // port is the same byte stream, so the agent must resynchronise.
        let partial = Frame::control(7, &Request::Hello { protocol: PROTOCOL_VERSION }).encode();
        host.writer.write_all(&partial[..5]).await.unwrap();
        drop(host);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut host = Host::connect(&socket).await;
        host.hello().await;
        let (out, _, code) = host.run(1, &["echo", "after reconnect"], None).await;
        assert_eq!((out.as_str(), code), ("after reconnect\n", Some(0)));

        // Output made while no host is connected: whatever of it reaches the
        // next host comes before the answer to its hello, never after.
        let late =
            ExecRequest { argv: vec!["sh".into(), "-c".into(), "sleep 1; echo late".into()], env: vec![], cwd: None };
        host.send(Frame::control(8, &Request::Exec(late))).await;
        assert!(matches!(host.recv().await.message::<Reply>().unwrap(), Reply::Started { .. }));
        drop(host);
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let mut host = Host::connect(&socket).await;
        let (_, earlier) = host.hello().await;
        eprintln!("before the hello answer after a reconnect: {earlier:?}");
        assert!(earlier.iter().all(|f| f.stream == 8), "{earlier:?}");
        let (out, _, _) = host.run(2, &["echo", "fresh"], None).await;
        assert_eq!(out, "fresh\n");

        // Power off: QEMU (with -no-reboot) exits by itself.
        host.send(Frame::control(9, &Request::Poweroff)).await;
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
        let mut host = Host::connect(&prepared.socket("agent.sock")).await;
        host.hello().await;
        // A process that would run for ever: power-off must not wait for it.
        let forever = ExecRequest { argv: vec!["sleep".into(), "1000".into()], env: vec![], cwd: None };
        host.send(Frame::control(1, &Request::Exec(forever))).await;
        assert!(matches!(host.recv().await.message::<Reply>().unwrap(), Reply::Started { .. }));
        ctrl_alt_del(&prepared.socket("qmp.sock")).await;
        let took = wait_for_exit(&mut guest).await;
        eprintln!("QEMU exited {:.1} s after Ctrl-Alt-Del", took.as_secs_f64());
        assert!(agent_log(&guest).contains("powering off"));
    });
}
