//! The QEMU driver: builds QEMU's command line from a [`VmSpec`], starts it
//! with `-daemonize` (QEMU forks into its own session once initialised, so
//! the VM outlives the daemon), and stops it through QMP with a kill as the
//! last resort. Under KVM it uses `microvm` with virtio-mmio devices; under
//! TCG `pc` with virtio-pci, because `microvm` hangs in timer set-up there.
//! The agent is reached over vsock when the VM has a context id (the host
//! has vhost-vsock), else over a virtio-serial port. Each NIC is a tap
//! netdev (the daemon's tap, opened by name) behind a virtio-net device.

mod qmp;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::process::{read_pid_file, remove_if_present, write_pid_file, VmmProcess, KILL_TIMEOUT};
use crate::{report, AgentEndpoint, GuestRun, VmSpec, VmmError, CONSOLE_LOG, PID_FILE};
use qmp::Qmp;

/// How long QEMU may take to initialise before its parent process exits.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long QEMU may take to exit after QMP `quit`.
const QUIT_GRACE: Duration = Duration::from_secs(5);
/// The name of the guest's virtio-serial port for the agent.
pub const AGENT_PORT_NAME: &str = "banger.agent";
/// QEMU's own pid file (`-pidfile`) in a run directory.
pub(crate) const QEMU_PID_FILE: &str = "qemu.pid";
/// `sun_path` holds 108 bytes, including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

/// QEMU, with KVM or TCG.
#[derive(Debug, Clone)]
pub struct Qemu {
    /// The qemu-system-x86_64 binary.
    pub binary: PathBuf,
    /// Use KVM (else TCG emulation).
    pub kvm: bool,
    /// The guest's vsock context id, when the host has vhost-vsock: the
    /// guest then gets a vsock device for its agent instead of a
    /// virtio-serial port.
    pub vsock_cid: Option<u32>,
}

/// The files QEMU keeps in a VM's run directory.
struct RunFiles {
    /// banger's pid file, `PID STARTTIME`, written once QEMU has started.
    pid: PathBuf,
    /// QEMU's own pid file (`-pidfile`, a bare pid), how the daemonised
    /// QEMU's pid is learnt; QEMU removes it when it exits.
    qemu_pid: PathBuf,
    /// QEMU's stdout and stderr.
    log: PathBuf,
    console: PathBuf,
    qmp: PathBuf,
    agent: PathBuf,
}

impl RunFiles {
    fn new(run_dir: &Path) -> Self {
        Self {
            pid: run_dir.join(PID_FILE),
            qemu_pid: run_dir.join(QEMU_PID_FILE),
            log: run_dir.join("vmm.log"),
            console: run_dir.join(CONSOLE_LOG),
            qmp: run_dir.join("qmp.sock"),
            agent: run_dir.join("agent.sock"),
        }
    }

    /// Removes everything but the console log: the sockets, both pid files
    /// (which would otherwise name a pid that may be reused) and the log.
    fn remove_runtime_files(&self) -> std::io::Result<()> {
        let partial = self.pid.with_extension("pid.partial");
        for path in [&self.qmp, &self.agent, &self.pid, &partial, &self.qemu_pid, &self.log] {
            remove_if_present(path)?;
        }
        Ok(())
    }

    /// The process named by banger's pid file, else by QEMU's (the daemon
    /// may have stopped between QEMU's start and the writing of its own).
    fn recorded_process(&self) -> Option<VmmProcess> {
        read_pid_file(&self.pid).or_else(|| read_pid_file(&self.qemu_pid))
    }
}

impl Qemu {
    /// QEMU's arguments for `spec`. Pure, so the KVM path, which cannot be
    /// exercised on every machine, is checked by unit tests.
    pub fn args(&self, spec: &VmSpec) -> Vec<String> {
        let files = RunFiles::new(&spec.run_dir);
        let (machine, bus) = if self.kvm {
            (["-M", "microvm,acpi=on", "-accel", "kvm", "-cpu", "host"], "device")
        } else {
            (["-M", "pc", "-accel", "tcg", "-cpu", "max"], "pci")
        };
        let mut args: Vec<String> = Vec::new();
        let mut push = |items: &[&str]| args.extend(items.iter().map(|s| s.to_string()));

        push(&["-name", &escape(&spec.name)]);
        push(&["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot", "-daemonize"]);
        push(&["-pidfile", &files.qemu_pid.display().to_string()]);
        push(&machine);
        push(&["-smp", &spec.cpus.to_string(), "-m", &spec.memory_mib.to_string()]);

        push(&["-kernel", &spec.kernel.display().to_string()]);
        if let Some(initrd) = &spec.initrd {
            push(&["-initrd", &initrd.display().to_string()]);
        }
        let cmdline = format!("{} console=ttyS0", spec.cmdline.trim());
        push(&["-append", cmdline.trim_start()]);

        for (i, disk) in spec.disks.iter().enumerate() {
            let readonly = if disk.read_only { ",readonly=on" } else { "" };
            let drive = format!("file={},if=none,id=disk{i},format=raw{readonly}", escape_path(&disk.path));
            push(&["-drive", &drive, "-device", &format!("virtio-blk-{bus},drive=disk{i}")]);
        }

        // No `vhost=on`: the host may have no vhost-net, and QEMU's
        // default (vhost off) moves packets in its own thread.
        for (i, nic) in spec.nics.iter().enumerate() {
            let netdev = format!("tap,id=net{i},ifname={},script=no,downscript=no", escape(&nic.tap));
            let device = format!("virtio-net-{bus},netdev=net{i},mac={}", nic.mac_address());
            push(&["-netdev", &netdev, "-device", &device]);
        }

        match self.vsock_cid {
            // The agent listens on vsock when it finds no port named
            // AGENT_PORT_NAME, so the guest needs no other hint.
            Some(cid) => push(&["-device", &format!("vhost-vsock-{bus},guest-cid={cid}")]),
            None => {
                push(&["-device", &format!("virtio-serial-{bus}")]);
                let agent = format!("socket,id=agent,path={},server=on,wait=off", escape_path(&files.agent));
                push(&["-chardev", &agent]);
                push(&["-device", &format!("virtserialport,chardev=agent,name={AGENT_PORT_NAME}")]);
            }
        }

        push(&["-chardev", &format!("file,id=console,path={}", escape_path(&files.console))]);
        push(&["-serial", "chardev:console"]);

        // `-chardev` + `-mon` rather than `-qmp unix:...`: the same thing,
        // but a path with a comma can be escaped.
        push(&["-chardev", &format!("socket,id=qmp,path={},server=on,wait=off", escape_path(&files.qmp))]);
        push(&["-mon", "chardev=qmp,mode=control"]);
        args
    }

    /// Starts QEMU detached and returns its process once QEMU has
    /// initialised (the guest is then booting). On error nothing runs and
    /// QEMU's runtime files are gone.
    pub async fn start(&self, spec: &VmSpec) -> Result<VmmProcess, VmmError> {
        check_spec(spec)?;
        check_cid(self.vsock_cid)?;
        let files = RunFiles::new(&spec.run_dir);
        if let Some(running) = files.recorded_process().filter(VmmProcess::is_running) {
            return Err(VmmError::InvalidSpec(format!(
                "a VMM already runs in {} (pid {})",
                spec.run_dir.display(),
                running.pid
            )));
        }
        release_files(&files)?;
        let started = self.launch(spec, &files).await;
        match started {
            Ok(process) => {
                tracing::info!(vm = %spec.name, pid = process.pid, kvm = self.kvm, "QEMU started");
                Ok(process)
            }
            Err(e) => {
                // The daemonised QEMU may still run (after a timeout) or
                // have left its files behind.
                if let Some(process) = files.recorded_process() {
                    if let Err(kill_err) = process.kill_and_wait(KILL_TIMEOUT).await {
                        tracing::warn!(vm = %spec.name, error = %kill_err, "cannot kill QEMU after a failed start");
                    }
                }
                if let Err(e) = files.remove_runtime_files() {
                    tracing::warn!(vm = %spec.name, error = %e, "cannot remove QEMU's files after a failed start");
                }
                Err(e)
            }
        }
    }

    /// Spawns QEMU, waits for its parent to exit (once the daemonised QEMU
    /// has initialised, with status 0 only if that succeeded) and records
    /// the daemonised process in banger's pid file.
    async fn launch(&self, spec: &VmSpec, files: &RunFiles) -> Result<VmmProcess, VmmError> {
        let args = self.args(spec);
        tracing::debug!(vm = %spec.name, binary = %self.binary.display(), ?args, "starting QEMU");
        let log = std::fs::File::create(&files.log).map_err(|source| VmmError::Process { action: "log", source })?;
        let stdout = log.try_clone().map_err(|source| VmmError::Process { action: "log", source })?;
        let mut child = tokio::process::Command::new(&self.binary)
            .args(&args)
            .stdin(std::process::Stdio::null())
            .stdout(stdout)
            .stderr(log)
            .spawn()
            .map_err(|source| match source.kind() {
                std::io::ErrorKind::NotFound => VmmError::MissingBinary { binary: self.binary.display().to_string() },
                _ => VmmError::Process { action: "spawn", source },
            })?;
        let status = match tokio::time::timeout(START_TIMEOUT, child.wait()).await {
            Ok(status) => status.map_err(|source| VmmError::Process { action: "wait for", source })?,
            Err(_) => {
                let _ = child.kill().await;
                return Err(VmmError::Timeout(START_TIMEOUT, "QEMU to initialise"));
            }
        };
        let exited_early = |what: String| VmmError::ExitedEarly {
            log_tail: format!("{what}; {}", report::failure_report(&[("QEMU log", &files.log)])),
        };
        if !status.success() {
            return Err(exited_early(format!("QEMU {status}")));
        }
        let process = read_pid_file(&files.qemu_pid)
            .filter(VmmProcess::is_running)
            .ok_or_else(|| exited_early("QEMU exited after starting".into()))?;
        write_pid_file(&files.pid, process)
            .map_err(|source| VmmError::Process { action: "record the pid of", source })?;
        Ok(process)
    }

    /// Presses the ACPI power button, waits up to `timeout` for QEMU to
    /// exit, then asks QEMU to quit, then kills it.
    pub async fn stop(&self, run_dir: &Path, process: VmmProcess, timeout: Duration) -> Result<(), VmmError> {
        shut_down(process, &RunFiles::new(run_dir), timeout).await
    }

    /// QEMU's run state (QMP `query-status`): running, or paused and why
    /// (`io-error` when a disk write failed, with the default
    /// `werror=enospc` a full filesystem under the disk). `None` if QMP
    /// does not answer or QEMU is in a passing state.
    pub async fn guest_run(&self, run_dir: &Path) -> Option<GuestRun> {
        let mut qmp = Qmp::connect(&RunFiles::new(run_dir).qmp).await.ok()?;
        run_state(&qmp.execute("query-status").await.ok()?)
    }

    /// The process QEMU's pid files name, whether or not it runs.
    pub(crate) fn recorded_process(&self, run_dir: &Path) -> Option<VmmProcess> {
        RunFiles::new(run_dir).recorded_process()
    }

    /// Removes QEMU's sockets, pid files and log; the console log stays.
    pub fn release(&self, run_dir: &Path) -> std::io::Result<()> {
        RunFiles::new(run_dir).remove_runtime_files()
    }

    /// The tails of the guest console and of QEMU's own output.
    pub fn failure_report(&self, run_dir: &Path) -> String {
        let files = RunFiles::new(run_dir);
        report::failure_report(&[("console", &files.console), ("QEMU log", &files.log)])
    }

    /// Where the guest agent is reached: its vsock port when the guest has
    /// a context id, else the chardev socket behind its virtio-serial port.
    pub fn agent_endpoint(&self, run_dir: &Path) -> AgentEndpoint {
        match self.vsock_cid {
            Some(cid) => AgentEndpoint::Vsock { cid, port: banger_agent_proto::VSOCK_PORT },
            None => AgentEndpoint::Unix(RunFiles::new(run_dir).agent),
        }
    }
}

/// Removes QEMU's runtime files, with the path in the error.
fn release_files(files: &RunFiles) -> Result<(), VmmError> {
    files.remove_runtime_files().map_err(|source| VmmError::Process { action: "remove the runtime files of", source })
}

/// Stops QEMU, each step only if the previous one failed.
async fn shut_down(process: VmmProcess, files: &RunFiles, timeout: Duration) -> Result<(), VmmError> {
    let pid = process.pid;
    let mut qmp = match Qmp::connect(&files.qmp).await {
        Ok(qmp) => Some(qmp),
        Err(e) => {
            tracing::warn!(pid, error = %e, "QMP unavailable; killing QEMU");
            None
        }
    };
    if let Some(qmp) = &mut qmp {
        match qmp.execute("system_powerdown").await {
            Ok(_) if process.wait_gone(timeout).await => return Ok(()),
            Ok(_) => tracing::debug!(pid, ?timeout, "the guest ignored the power button; quitting QEMU"),
            Err(e) => tracing::warn!(pid, error = %e, "QMP system_powerdown failed"),
        }
        // QEMU may close the connection before its answer arrives: whether
        // it went is what counts.
        if let Err(e) = qmp.execute("quit").await {
            tracing::debug!(pid, error = %e, "QMP quit");
        }
        if process.wait_gone(QUIT_GRACE).await {
            return Ok(());
        }
        tracing::warn!(pid, "QEMU ignored QMP quit; killing it");
    }
    process.kill_and_wait(KILL_TIMEOUT).await
}

/// What a `query-status` answer says of the guest. QEMU's run states that
/// hold the guest until someone acts are a pause; the passing ones
/// (migration, start-up, shutdown) say nothing.
fn run_state(status: &serde_json::Value) -> Option<GuestRun> {
    match status.get("status")?.as_str()? {
        "running" => Some(GuestRun::Running),
        reason @ ("io-error" | "paused" | "internal-error" | "guest-panicked" | "watchdog" | "suspended" | "debug") => {
            Some(GuestRun::Paused { reason: reason.to_owned() })
        }
        _ => None,
    }
}

/// Rejects what QEMU would fail on less clearly, or not at all.
fn check_spec(spec: &VmSpec) -> Result<(), VmmError> {
    let invalid = |why: String| Err(VmmError::InvalidSpec(why));
    if !spec.run_dir.is_dir() {
        return invalid(format!("run directory {} does not exist", spec.run_dir.display()));
    }
    let socket = spec.run_dir.join("agent.sock");
    if socket.as_os_str().len() > MAX_SOCKET_PATH {
        return invalid(format!("run directory {} is too long for a unix socket path", spec.run_dir.display()));
    }
    if spec.cpus == 0 || spec.memory_mib == 0 {
        return invalid("a VM needs at least one vCPU and some memory".into());
    }
    let files = std::iter::once(("kernel", &spec.kernel))
        .chain(spec.initrd.iter().map(|p| ("initrd", p)))
        .chain(spec.disks.iter().map(|d| ("disk", &d.path)));
    for (what, path) in files {
        if path.to_str().is_none() {
            return invalid(format!("{what} path {} is not UTF-8", path.display()));
        }
        if !path.is_file() {
            return invalid(format!("{what} {} does not exist", path.display()));
        }
    }
    if spec.run_dir.to_str().is_none() {
        return invalid(format!("run directory {} is not UTF-8", spec.run_dir.display()));
    }
    crate::check_nics(spec)
}

/// Rejects context ids a guest cannot have: 0 to 2 are the hypervisor, the
/// local loopback and the host; `u32::MAX` means any.
fn check_cid(cid: Option<u32>) -> Result<(), VmmError> {
    match cid {
        Some(cid) if cid < 3 || cid == u32::MAX => {
            Err(VmmError::InvalidSpec(format!("{cid} is not a guest vsock context id")))
        }
        _ => Ok(()),
    }
}

/// Escapes a value inside a QEMU `key=value,...` option: commas double.
fn escape(value: &str) -> String {
    value.replace(',', ",,")
}

fn escape_path(path: &Path) -> String {
    escape(&path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DiskSpec, NicSpec};

    fn spec() -> VmSpec {
        VmSpec {
            name: "dev".into(),
            run_dir: PathBuf::from("/run/banger/vms/dev"),
            kernel: PathBuf::from("/k/vmlinux"),
            initrd: Some(PathBuf::from("/k/initrd.img")),
            cmdline: "root=/dev/vda rw panic=-1".into(),
            cpus: 2,
            memory_mib: 1024,
            disks: vec![
                DiskSpec { path: PathBuf::from("/d/root.ext4"), read_only: false },
                DiskSpec { path: PathBuf::from("/d/seed,1.ext4"), read_only: true },
            ],
            nics: Vec::new(),
        }
    }

    fn joined(qemu: &Qemu, spec: &VmSpec) -> String {
        qemu.args(spec).join(" ")
    }

    const COMMON: &[&str] = &[
        "-name dev -nodefaults -no-user-config -display none -no-reboot -daemonize -pidfile /run/banger/vms/dev/qemu.pid",
        "-smp 2 -m 1024 -kernel /k/vmlinux -initrd /k/initrd.img",
        "-chardev socket,id=agent,path=/run/banger/vms/dev/agent.sock,server=on,wait=off",
        "-device virtserialport,chardev=agent,name=banger.agent",
        "-chardev file,id=console,path=/run/banger/vms/dev/console.log -serial chardev:console",
        "-chardev socket,id=qmp,path=/run/banger/vms/dev/qmp.sock,server=on,wait=off -mon chardev=qmp,mode=control",
    ];

    #[test]
    fn tcg_uses_pc_with_virtio_pci() {
        let qemu = Qemu { binary: "qemu-system-x86_64".into(), kvm: false, vsock_cid: None };
        let line = joined(&qemu, &spec());
        for part in COMMON {
            assert!(line.contains(part), "missing {part:?} in {line}");
        }
        assert!(line.contains("-M pc -accel tcg -cpu max"), "{line}");
        assert!(line.contains(
            "-drive file=/d/root.ext4,if=none,id=disk0,format=raw -device virtio-blk-pci,drive=disk0 \
             -drive file=/d/seed,,1.ext4,if=none,id=disk1,format=raw,readonly=on -device virtio-blk-pci,drive=disk1"
        ));
        assert!(line.contains("-device virtio-serial-pci -chardev socket,id=agent"), "{line}");
        assert!(!line.contains("kvm") && !line.contains("microvm"), "{line}");
    }

    #[test]
    fn kvm_uses_microvm_with_virtio_mmio() {
        let qemu = Qemu { binary: "qemu-system-x86_64".into(), kvm: true, vsock_cid: None };
        let line = joined(&qemu, &spec());
        for part in COMMON {
            assert!(line.contains(part), "missing {part:?} in {line}");
        }
        assert!(line.contains("-M microvm,acpi=on -accel kvm -cpu host"), "{line}");
        assert!(line.contains(
            "-drive file=/d/root.ext4,if=none,id=disk0,format=raw -device virtio-blk-device,drive=disk0 \
             -drive file=/d/seed,,1.ext4,if=none,id=disk1,format=raw,readonly=on -device virtio-blk-device,drive=disk1"
        ));
        assert!(line.contains("-device virtio-serial-device -chardev socket,id=agent"), "{line}");
        assert!(!line.contains("-pci") && !line.contains("tcg"), "{line}");
    }

    fn with_nics() -> VmSpec {
        let nics = vec![
            NicSpec { tap: "tap-dev0".into(), mac: [0x02, 0, 0x0a, 0xd5, 0, 0x05] },
            NicSpec { tap: "tap,odd".into(), mac: [0x02, 0xff, 0, 0, 0, 0x10] },
        ];
        VmSpec { nics, ..spec() }
    }

    #[test]
    fn each_nic_is_a_tap_netdev_and_a_virtio_net_device() {
        for (kvm, device) in [(false, "virtio-net-pci"), (true, "virtio-net-device")] {
            let qemu = Qemu { binary: "qemu-system-x86_64".into(), kvm, vsock_cid: None };
            let line = joined(&qemu, &with_nics());
            assert!(
                line.contains(&format!(
                    "-netdev tap,id=net0,ifname=tap-dev0,script=no,downscript=no \
                     -device {device},netdev=net0,mac=02:00:0a:d5:00:05 \
                     -netdev tap,id=net1,ifname=tap,,odd,script=no,downscript=no \
                     -device {device},netdev=net1,mac=02:ff:00:00:00:10"
                )),
                "{line}"
            );
            // QEMU's default: packets go through QEMU, not the host's vhost-net.
            assert!(!line.contains("vhost=") && !line.contains("-nic"), "{line}");
            for part in COMMON {
                assert!(line.contains(part), "missing {part:?} in {line}");
            }
        }
    }

    #[test]
    fn no_nics_no_network_devices() {
        let qemu = Qemu { binary: "qemu-system-x86_64".into(), kvm: false, vsock_cid: None };
        let line = joined(&qemu, &spec());
        assert!(!line.contains("-netdev") && !line.contains("virtio-net"), "{line}");
    }

    #[test]
    fn bad_nics_are_refused_before_qemu_starts() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinux");
        std::fs::write(&kernel, "k").unwrap();
        let base = VmSpec { run_dir: dir.path().to_path_buf(), kernel, initrd: None, disks: Vec::new(), ..spec() };
        let nic = |tap: &str, mac: [u8; 6]| NicSpec { tap: tap.into(), mac };
        let good = nic("tap0", [2, 0, 0, 0, 0, 1]);
        assert!(check_spec(&VmSpec { nics: vec![good.clone()], ..base.clone() }).is_ok());
        for (nics, says) in [
            (vec![nic("", [2, 0, 0, 0, 0, 1])], "not a network interface name"),
            (vec![nic("a-name-too-long-x", [2, 0, 0, 0, 0, 1])], "not a network interface name"),
            (vec![nic("tap/0", [2, 0, 0, 0, 0, 1])], "not a network interface name"),
            (vec![nic("tap0", [3, 0, 0, 0, 0, 1])], "03:00:00:00:00:01 is a multicast MAC address"),
            (vec![good.clone(), nic("tap0", [2, 0, 0, 0, 0, 2])], "tap tap0 is given twice"),
        ] {
            let err = check_spec(&VmSpec { nics, ..base.clone() }).unwrap_err().to_string();
            assert!(err.contains(says), "{err}");
        }
    }

    #[test]
    fn the_command_line_is_one_argument_with_the_console_appended() {
        let qemu = Qemu { binary: "qemu-system-x86_64".into(), kvm: false, vsock_cid: None };
        let args = qemu.args(&spec());
        let at = args.iter().position(|a| a == "-append").unwrap();
        assert_eq!(args[at + 1], "root=/dev/vda rw panic=-1 console=ttyS0");

        let bare = VmSpec { cmdline: String::new(), initrd: None, ..spec() };
        let args = qemu.args(&bare);
        let at = args.iter().position(|a| a == "-append").unwrap();
        assert_eq!(args[at + 1], "console=ttyS0");
        assert!(!args.iter().any(|a| a == "-initrd"));
    }

    #[test]
    fn the_agent_socket_in_the_args_is_the_endpoint() {
        let qemu = Qemu { binary: "qemu-system-x86_64".into(), kvm: false, vsock_cid: None };
        let spec = spec();
        let AgentEndpoint::Unix(path) = qemu.agent_endpoint(&spec.run_dir) else { panic!("not a unix endpoint") };
        let chardev = format!("socket,id=agent,path={},server=on,wait=off", path.display());
        assert!(qemu.args(&spec).contains(&chardev));
    }

    #[test]
    fn a_vsock_cid_replaces_the_virtio_serial_port() {
        for (kvm, device) in [(false, "vhost-vsock-pci"), (true, "vhost-vsock-device")] {
            let qemu = Qemu { binary: "qemu-system-x86_64".into(), kvm, vsock_cid: Some(7) };
            let args = qemu.args(&spec());
            let line = args.join(" ");
            let at = args.iter().position(|a| a.starts_with("vhost-vsock")).expect(&line);
            assert_eq!((args[at - 1].as_str(), args[at].as_str()), ("-device", &*format!("{device},guest-cid=7")));
            assert_eq!(args.iter().filter(|a| a.contains("vsock")).count(), 1, "{line}");
            for gone in ["virtio-serial", "virtserialport", "id=agent", "agent.sock"] {
                assert!(!line.contains(gone), "{gone} in {line}");
            }
            // Everything else stays as it was.
            for part in COMMON.iter().filter(|p| !p.contains("agent")) {
                assert!(line.contains(part), "missing {part:?} in {line}");
            }
        }
    }

    #[test]
    fn the_endpoint_follows_the_agent_channel() {
        let run_dir = Path::new("/run/banger/vms/dev");
        let serial = Qemu { binary: "qemu-system-x86_64".into(), kvm: false, vsock_cid: None };
        assert_eq!(serial.agent_endpoint(run_dir), AgentEndpoint::Unix(run_dir.join("agent.sock")));
        let vsock = Qemu { vsock_cid: Some(3), ..serial };
        assert_eq!(vsock.agent_endpoint(run_dir), AgentEndpoint::Vsock { cid: 3, port: 1024 });
        assert_eq!(
            crate::Vmm::Qemu(vsock).agent_endpoint(run_dir),
            AgentEndpoint::Vsock { cid: 3, port: banger_agent_proto::VSOCK_PORT }
        );
    }

    #[test]
    fn query_status_answers_map_to_running_or_paused() {
        let status = |s: &str| run_state(&serde_json::json!({"status": s, "running": s == "running"}));
        assert_eq!(status("running"), Some(GuestRun::Running));
        assert_eq!(status("io-error"), Some(GuestRun::Paused { reason: "io-error".into() }));
        assert_eq!(status("guest-panicked"), Some(GuestRun::Paused { reason: "guest-panicked".into() }));
        assert_eq!(status("inmigrate"), None);
        assert_eq!(run_state(&serde_json::json!({})), None);
    }

    #[test]
    fn reserved_context_ids_are_refused() {
        for cid in [0, 1, 2, u32::MAX] {
            assert!(matches!(check_cid(Some(cid)), Err(VmmError::InvalidSpec(_))), "{cid}");
        }
        for cid in [None, Some(3), Some(u32::MAX - 1)] {
            assert!(check_cid(cid).is_ok(), "{cid:?}");
        }
    }

    #[test]
    fn spec_checks_name_the_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let spec = VmSpec { run_dir: dir.path().to_path_buf(), ..spec() };
        let err = check_spec(&spec).unwrap_err();
        assert_eq!(err.to_string(), "invalid VM spec: kernel /k/vmlinux does not exist");

        let long_dir = dir.path().join("x".repeat(100));
        std::fs::create_dir(&long_dir).unwrap();
        let long = VmSpec { run_dir: long_dir, ..spec.clone() };
        assert!(check_spec(&long).unwrap_err().to_string().contains("too long for a unix socket path"));

        let no_cpus = VmSpec { cpus: 0, ..spec };
        assert!(matches!(check_spec(&no_cpus), Err(VmmError::InvalidSpec(_))));
    }

    #[test]
    fn release_removes_every_runtime_file_but_the_console() {
        let dir = tempfile::tempdir().unwrap();
        let run_dir = dir.path();
        let qemu = Qemu { binary: "qemu-system-x86_64".into(), kvm: false, vsock_cid: None };
        let made = ["vmm.pid", "vmm.pid.partial", "qemu.pid", "vmm.log", "console.log", "qmp.sock", "agent.sock"];
        for file in made {
            std::fs::write(run_dir.join(file), "x").unwrap();
        }
        // A bare pid that is no process's now.
        std::fs::write(run_dir.join("qemu.pid"), format!("{}\n", u32::MAX)).unwrap();
        std::fs::write(run_dir.join("vmm.pid"), format!("{} 1\n", u32::MAX)).unwrap();
        crate::Vmm::Qemu(qemu.clone()).release(run_dir).unwrap();
        let left: Vec<String> =
            std::fs::read_dir(run_dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert_eq!(left, ["console.log"]);
        qemu.release(run_dir).expect("idempotent");
    }

    #[test]
    fn release_refuses_while_the_recorded_process_runs() {
        let dir = tempfile::tempdir().unwrap();
        let me = VmmProcess::of(std::process::id()).unwrap();
        write_pid_file(&dir.path().join("vmm.pid"), me).unwrap();
        let vmm = crate::Vmm::Qemu(Qemu { binary: "qemu-system-x86_64".into(), kvm: false, vsock_cid: None });
        assert_eq!(vmm.process(dir.path()), Some(me));
        let err = vmm.release(dir.path()).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ResourceBusy, "{err}");
        assert!(dir.path().join("vmm.pid").exists());
    }

    #[test]
    fn the_failure_report_quotes_console_and_qemu_log() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("console.log"), "Kernel panic - not syncing\n").unwrap();
        std::fs::write(dir.path().join("vmm.log"), "qemu-system-x86_64: warning\n").unwrap();
        let qemu = Qemu { binary: "qemu-system-x86_64".into(), kvm: false, vsock_cid: None };
        let report = qemu.failure_report(dir.path());
        assert!(report.contains("Kernel panic") && report.contains("qemu-system-x86_64: warning"), "{report}");
    }
}
