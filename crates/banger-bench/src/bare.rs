//! The bare side of `banger-bench vm`: QEMU started by hand with the
//! arguments banger's QEMU driver would use, then the agent handshake and
//! one exec done directly on the agent's socket, with no daemon between.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use banger_agent_proto::{self as proto, ExecRequest, Frame, FrameKind, Hello, Reply, Request, PROTOCOL_VERSION};
use banger_vmm::qemu::Qemu;
use banger_vmm::{DiskSpec, VmSpec};
use serde::Serialize;
use tokio::io::AsyncRead;
use tokio::net::UnixStream;

/// How long a bare boot may take until the exec has run.
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
/// How often to try the agent socket until QEMU has made it.
const CONNECT_RETRY: Duration = Duration::from_millis(10);
/// The exec's stream; stream 0 is the handshake's.
const EXEC_STREAM: u32 = 1;

/// What to boot: the kernel and rootfs banger uses, with banger's settings.
pub struct BareGuest {
    pub qemu: PathBuf,
    pub vmlinux: PathBuf,
    pub initrd: Option<PathBuf>,
    /// The image's rootfs; each boot gets a copy.
    pub rootfs: PathBuf,
    /// The image's init, as banger puts it on the command line.
    pub init: String,
    pub memory_mib: u32,
    pub cpus: u32,
    /// Resend the hello this often until answered (bangerd: every 250 ms; a
    /// hello written before the guest opens its port is lost).
    pub hello_retry: Duration,
}

/// Seconds from spawning QEMU to each step.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct BareTiming {
    /// QEMU's `-daemonize` parent exited (QEMU initialised).
    pub vmm_started_s: f64,
    /// The agent's hello arrived.
    pub agent_hello_s: f64,
    /// The exec of `true` reported its exit.
    pub exited_s: f64,
}

impl BareGuest {
    /// Boots one guest in `run_dir` (created here, its QEMU killed before
    /// returning) and times it.
    pub fn boot(&self, run_dir: &Path) -> anyhow::Result<BareTiming> {
        std::fs::create_dir_all(run_dir).with_context(|| format!("cannot create {}", run_dir.display()))?;
        let root = run_dir.join("root.ext4");
        std::fs::copy(&self.rootfs, &root).with_context(|| format!("cannot copy {}", self.rootfs.display()))?;
        let spec = VmSpec {
            name: "bare".into(),
            run_dir: run_dir.to_owned(),
            kernel: self.vmlinux.clone(),
            initrd: self.initrd.clone(),
            cmdline: format!("root=/dev/vda rw init={} banger.hostname=bare panic=-1 quiet", self.init),
            cpus: self.cpus,
            memory_mib: self.memory_mib,
            disks: vec![DiskSpec { path: root, read_only: false }],
            nics: Vec::new(),
        };
        let args = Qemu { binary: self.qemu.clone(), kvm: false, vsock_cid: None }.args(&spec);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        crate::tools::settle()?;
        let result = runtime.block_on(time_boot(&self.qemu, &args, run_dir, self.hello_retry));
        kill_vmm(run_dir);
        result
    }
}

async fn time_boot(qemu: &Path, args: &[String], run_dir: &Path, hello_retry: Duration) -> anyhow::Result<BareTiming> {
    let log = std::fs::File::create(run_dir.join("vmm.log"))?;
    let started = Instant::now();
    let status = Command::new(qemu)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .status()
        .with_context(|| format!("cannot run {}", qemu.display()))?;
    let vmm_started_s = started.elapsed().as_secs_f64();
    ensure!(status.success(), "QEMU failed ({status}): {}", std::fs::read_to_string(run_dir.join("vmm.log"))?);
    let remaining = BOOT_TIMEOUT.saturating_sub(started.elapsed());
    let (agent_hello_s, exited_s) =
        tokio::time::timeout(remaining, talk(&run_dir.join("agent.sock"), started, hello_retry))
            .await
            .map_err(|_| anyhow::anyhow!("the agent did not run `true` within {BOOT_TIMEOUT:?} of starting QEMU"))??;
    Ok(BareTiming { vmm_started_s, agent_hello_s, exited_s })
}

/// Handshakes with the agent and runs `true`: seconds since `started` to
/// the hello and to the exit.
async fn talk(socket: &Path, started: Instant, hello_retry: Duration) -> anyhow::Result<(f64, f64)> {
    let (mut reader, mut writer) = connect(socket).await.into_split();
    let hello = Frame::control(proto::CONTROL_STREAM, &Request::Hello(Hello::ours()));
    loop {
        proto::write_frame(&mut writer, &hello).await?;
        if let Ok(answer) = tokio::time::timeout(hello_retry, read_hello(&mut reader)).await {
            break answer?;
        }
    }
    let agent_hello_s = started.elapsed().as_secs_f64();

    let exec = ExecRequest { argv: vec!["true".into()], ..Default::default() };
    proto::write_frame(&mut writer, &Frame::control(EXEC_STREAM, &Request::Exec(exec))).await?;
    proto::write_frame(&mut writer, &Frame::empty(EXEC_STREAM, FrameKind::Stdin).fin()).await?;
    read_exit(&mut reader).await?;
    Ok((agent_hello_s, started.elapsed().as_secs_f64()))
}

async fn connect(socket: &Path) -> UnixStream {
    loop {
        if let Ok(stream) = UnixStream::connect(socket).await {
            return stream;
        }
        tokio::time::sleep(CONNECT_RETRY).await;
    }
}

async fn read_hello<R: AsyncRead + Unpin>(reader: &mut R) -> anyhow::Result<()> {
    loop {
        let frame = proto::read_frame(reader).await?.context("the agent closed the connection")?;
        if frame.stream != proto::CONTROL_STREAM {
            continue;
        }
        if let Ok(Reply::Hello(Hello { protocol, .. })) = frame.message::<Reply>() {
            ensure!(protocol == PROTOCOL_VERSION, "the agent speaks protocol {protocol}");
            return Ok(());
        }
    }
}

async fn read_exit<R: AsyncRead + Unpin>(reader: &mut R) -> anyhow::Result<()> {
    loop {
        let frame = proto::read_frame(reader).await?.context("the agent closed the connection")?;
        if frame.stream != EXEC_STREAM || frame.kind != FrameKind::Control {
            continue;
        }
        match frame.message::<Reply>()? {
            Reply::Exited { code: Some(0), .. } => return Ok(()),
            Reply::Exited { code, signal } => bail!("`true` ended with code {code:?}, signal {signal:?}"),
            Reply::Error { message, .. } => bail!("the agent could not run `true`: {message}"),
            _ => continue,
        }
    }
}

/// SIGKILLs the QEMU whose pid file is in `run_dir` (it daemonised, so it
/// is not our child), if any, and waits until it is gone.
pub fn kill_vmm(run_dir: &Path) {
    let Some(process) = banger_vmm::VmmProcess::recorded_in(run_dir) else { return };
    // Signalled through a pidfd, checked against its start time.
    let _ = process.signal(9);
    let deadline = Instant::now() + Duration::from_secs(10);
    while process.is_running() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}
