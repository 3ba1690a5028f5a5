//! The QEMU driver against real QEMU guests under TCG: Debian's cloud
//! kernel imported with banger's initramfs, and a busybox root disk whose
//! init prints a marker. Each test has its own run directory, a timeout,
//! and a guard that kills its QEMU whatever happens.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use banger_vmm::qemu::Qemu;
use banger_vmm::{AgentEndpoint, DiskSpec, VmSpec, Vmm, VmmError, VmmProcess};

const MARKER: &str = "BANGER-GUEST-UP";
/// The whole of a test, the shared kernel's import included when it is the first.
const TEST_TIMEOUT: Duration = Duration::from_secs(300);
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);

/// The QEMU binary on PATH, or `None` where it is not installed (a SKIP;
/// under CI a failure).
fn qemu_binary() -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .and_then(|path| std::env::split_paths(&path).map(|d| d.join("qemu-system-x86_64")).find(|p| p.is_file()));
    banger_testkit::require("qemu-system-x86_64 (Debian's qemu-system-x86; scripts/setup-host)", found.is_some())
        .then(|| found.expect("checked"))
}

/// Debian's cloud kernel imported with banger's initramfs, once per test
/// run for every test binary: `(vmlinux, initrd.img)`.
async fn kernel() -> Option<(PathBuf, PathBuf)> {
    let kernel = banger_testkit::debian_kernel().await?;
    Some((kernel.vmlinux(), kernel.initrd()))
}

/// A busybox root disk whose `/sbin/init` prints the marker, then runs `then`.
fn root_disk(dir: &Path, then: &str) -> PathBuf {
    let tree = dir.join("rootfs");
    for sub in ["bin", "sbin", "dev", "proc", "sys", "tmp"] {
        std::fs::create_dir_all(tree.join(sub)).unwrap();
    }
    std::fs::copy("/bin/busybox", tree.join("bin/busybox")).expect("copy /bin/busybox (busybox-static)");
    let init = tree.join("sbin/init");
    std::fs::write(&init, format!("#!/bin/busybox sh\n/bin/busybox echo {MARKER}\n{then}\n")).unwrap();
    std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755)).unwrap();
    let disk = dir.join("root.ext4");
    let status = Command::new("mkfs.ext4")
        .arg("-q")
        .arg("-d")
        .arg(&tree)
        .arg(&disk)
        .arg("64M")
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "mkfs.ext4 failed");
    disk
}

/// A VM's temporary directory, run directory and spec; kills its QEMU on drop.
struct TestVm {
    _dir: tempfile::TempDir,
    spec: VmSpec,
    vmm: Vmm,
}

impl TestVm {
    /// A guest whose init runs `then` after printing the marker; `None` when
    /// QEMU or the kernel is unavailable here.
    async fn new(name: &str, then: &str) -> Option<Self> {
        let binary = qemu_binary()?;
        let (vmlinux, initrd) = kernel().await?;
        let dir = tempfile::Builder::new().prefix("qemu-test").tempdir().unwrap();
        let run_dir = dir.path().join("run");
        std::fs::create_dir(&run_dir).unwrap();
        let root = root_disk(dir.path(), then);
        let spec = VmSpec {
            name: name.into(),
            run_dir,
            kernel: vmlinux,
            initrd: Some(initrd),
            cmdline: "root=/dev/vda rw panic=-1".into(),
            cpus: 1,
            memory_mib: 512,
            disks: vec![DiskSpec { path: root, read_only: false }],
            nics: Vec::new(),
        };
        Some(Self { _dir: dir, spec, vmm: Vmm::Qemu(Qemu { binary, kvm: false, vsock_cid: None }) })
    }

    fn run_dir(&self) -> &Path {
        &self.spec.run_dir
    }

    /// Waits for the marker on the console; returns how long it took.
    async fn wait_for_marker(&self, started: Instant) -> Duration {
        let console = self.vmm.console_log(self.run_dir());
        while started.elapsed() < BOOT_TIMEOUT {
            if std::fs::read_to_string(&console).unwrap_or_default().contains(MARKER) {
                return started.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let text = std::fs::read_to_string(&console).unwrap_or_default();
        panic!("no {MARKER} within {BOOT_TIMEOUT:?}; console:\n{text}");
    }
}

impl Drop for TestVm {
    fn drop(&mut self) {
        if let Some(process) = self.vmm.process(self.run_dir()) {
            let _ = process.signal(9);
        }
    }
}

/// The session id of a process, from `/proc/<pid>/stat`.
fn session_of(pid: &str) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    // After the command: state, ppid, pgrp, session.
    fields[3].parse().unwrap()
}

async fn with_timeout<F: std::future::Future<Output = ()>>(test: F) {
    banger_testkit::with_timeout(TEST_TIMEOUT, test).await;
}

#[tokio::test]
async fn boots_detached_then_stop_falls_back_to_quit_and_cleans_up() {
    with_timeout(async {
        let Some(vm) = TestVm::new("stop-test", "exec /bin/busybox sleep 3600").await else {
            return;
        };
        let started = Instant::now();
        let process = vm.vmm.start(&vm.spec).await.expect("start");
        eprintln!("start returned after {:?}", started.elapsed());

        assert!(process.is_running());
        assert_eq!(vm.vmm.process(vm.run_dir()), Some(process));
        assert_eq!(VmmProcess::recorded_in(vm.run_dir()), Some(process));
        assert_ne!(session_of(&process.pid.to_string()), session_of("self"), "QEMU shares the test's session");
        let qmp = vm.run_dir().join("qmp.sock");
        let AgentEndpoint::Unix(agent) = vm.vmm.agent_endpoint(vm.run_dir()) else { panic!("not a unix endpoint") };
        assert!(qmp.exists() && agent.exists());
        vm.vmm.agent_endpoint(vm.run_dir()).connect().await.expect("connect to the agent channel");

        let booted = vm.wait_for_marker(started).await;
        eprintln!("guest printed its marker {booted:?} after start");
        assert_eq!(vm.vmm.process(vm.run_dir()), Some(process));

        // No acpid in this guest: the power button does nothing, so stop
        // must fall back to QMP quit.
        let stopping = Instant::now();
        vm.vmm.stop(vm.run_dir(), process, Duration::from_secs(2)).await.expect("stop");
        let took = stopping.elapsed();
        eprintln!("stop took {took:?}");
        assert!(took < Duration::from_secs(8), "stop took {took:?}");
        assert!(!process.is_running());
        assert_eq!(vm.vmm.process(vm.run_dir()), None);
        vm.vmm.release(vm.run_dir()).expect("release");
        assert!(!qmp.exists() && !agent.exists(), "sockets left behind");
        assert_only_console_left(vm.run_dir());

        // Stopping a stopped VM is not an error.
        vm.vmm.stop(vm.run_dir(), process, Duration::from_secs(2)).await.expect("second stop");
    })
    .await;
}

#[tokio::test]
async fn a_guest_that_powers_off_ends_qemu_by_itself() {
    with_timeout(async {
        let Some(vm) = TestVm::new("poweroff-test", "/bin/busybox poweroff -f").await else {
            return;
        };
        let started = Instant::now();
        let process = vm.vmm.start(&vm.spec).await.expect("start");
        vm.wait_for_marker(started).await;
        tokio::time::timeout(Duration::from_secs(30), process.exited())
            .await
            .expect("QEMU still runs after the guest powered off");
        eprintln!("guest powered off {:?} after start", started.elapsed());
        assert!(!process.is_running());
        assert_eq!(vm.vmm.process(vm.run_dir()), None);
        vm.vmm.stop(vm.run_dir(), process, Duration::from_secs(2)).await.expect("stop after exit");
        vm.vmm.release(vm.run_dir()).expect("release");
        assert_only_console_left(vm.run_dir());
    })
    .await;
}

#[tokio::test]
async fn kill_ends_a_running_vm_at_once() {
    with_timeout(async {
        let Some(vm) = TestVm::new("kill-test", "exec /bin/busybox sleep 3600").await else {
            return;
        };
        let process = vm.vmm.start(&vm.spec).await.expect("start");
        assert!(process.is_running());
        let killing = Instant::now();
        vm.vmm.kill(vm.run_dir(), process).await.expect("kill");
        eprintln!("kill took {:?}", killing.elapsed());
        assert!(!process.is_running());
        assert_eq!(vm.vmm.process(vm.run_dir()), None);
        vm.vmm.release(vm.run_dir()).expect("release");
        assert_nothing_left(vm.run_dir());
        assert_only_console_left(vm.run_dir());
    })
    .await;
}

/// A spec for a QEMU that must not get as far as booting.
fn unbootable(dir: &Path, kernel: PathBuf) -> VmSpec {
    let run_dir = dir.join("run");
    std::fs::create_dir_all(&run_dir).unwrap();
    VmSpec {
        name: "bad".into(),
        run_dir,
        kernel,
        initrd: None,
        cmdline: String::new(),
        cpus: 1,
        memory_mib: 128,
        disks: Vec::new(),
        nics: Vec::new(),
    }
}

fn assert_only_console_left(run_dir: &Path) {
    let left: Vec<String> =
        std::fs::read_dir(run_dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(left, ["console.log"], "runtime files left behind");
}

fn assert_nothing_left(run_dir: &Path) {
    assert!(!run_dir.join("vmm.pid").exists() && !run_dir.join("qemu.pid").exists(), "pid file left behind");
    assert!(!run_dir.join("qmp.sock").exists() && !run_dir.join("agent.sock").exists(), "sockets left behind");
}

#[tokio::test]
async fn a_missing_kernel_is_rejected_before_qemu_runs() {
    let Some(binary) = qemu_binary() else { return };
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-vmlinux");
    let spec = unbootable(dir.path(), missing.clone());
    let err = Qemu { binary, kvm: false, vsock_cid: None }.start(&spec).await.unwrap_err();
    assert!(matches!(err, VmmError::InvalidSpec(_)), "{err:?}");
    assert_eq!(err.to_string(), format!("invalid VM spec: kernel {} does not exist", missing.display()));
    assert_nothing_left(&spec.run_dir);
    assert!(!spec.run_dir.join("vmm.log").exists(), "QEMU was spawned");
}

#[tokio::test]
async fn a_kernel_qemu_cannot_load_fails_with_its_log() {
    with_timeout(a_kernel_qemu_cannot_load_fails_with_its_log_body()).await;
}

async fn a_kernel_qemu_cannot_load_fails_with_its_log_body() {
    let Some(binary) = qemu_binary() else { return };
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("vmlinux");
    std::fs::write(&empty, b"").unwrap();
    let spec = unbootable(dir.path(), empty);
    let err = Qemu { binary, kvm: false, vsock_cid: None }.start(&spec).await.unwrap_err();
    let VmmError::ExitedEarly { log_tail } = &err else { panic!("not ExitedEarly: {err:?}") };
    assert!(log_tail.contains("could not load kernel"), "{log_tail}");
    assert_nothing_left(&spec.run_dir);
}

#[tokio::test]
async fn a_missing_binary_is_reported_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("vmlinux");
    std::fs::write(&kernel, b"").unwrap();
    let spec = unbootable(dir.path(), kernel);
    let binary = dir.path().join("qemu-system-x86_64");
    let err = Qemu { binary: binary.clone(), kvm: false, vsock_cid: None }.start(&spec).await.unwrap_err();
    assert!(matches!(err, VmmError::MissingBinary { .. }), "{err:?}");
    assert_eq!(err.to_string(), format!("{} is not installed", binary.display()));
}
