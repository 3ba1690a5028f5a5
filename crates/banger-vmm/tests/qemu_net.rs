//! A real guest's network through the QEMU driver: a tap in a network
//! namespace this test makes (QEMU started inside it, so the tap is its),
//! Debian's cloud kernel with banger's initramfs (virtio_net loaded there),
//! the static agent as init configuring itself from `banger.net=`, and
//! ping from the namespace to prove it did. Nothing is created outside the
//! namespace; the guest is killed before the namespace goes.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use banger_netns::Netns;
use banger_vmm::qemu::Qemu;
use banger_vmm::{DiskSpec, NicSpec, VmSpec, Vmm};

/// The agent's build and the kernel's import (when this test is the
/// first of the run to need them), then the boot.
const TEST_TIMEOUT: Duration = Duration::from_secs(600);
/// From QEMU's start to the guest answering ping.
const BOOT_TIMEOUT: Duration = Duration::from_secs(90);
const TAP: &str = "tapnic0";
const GUEST: &str = "10.213.0.2";
const MAC: [u8; 6] = [0x02, 0x42, 0x0a, 0xd5, 0x00, 0x02];

/// A busybox root with the agent as `/sbin/init`.
fn root_disk(dir: &Path, agent: &Path) -> PathBuf {
    let tree = dir.join("rootfs");
    for sub in ["bin", "sbin", "dev", "proc", "sys", "run", "tmp"] {
        std::fs::create_dir_all(tree.join(sub)).unwrap();
    }
    std::fs::copy("/bin/busybox", tree.join("bin/busybox")).expect("copy /bin/busybox (busybox-static)");
    symlink("busybox", tree.join("bin/sh")).unwrap();
    std::fs::copy(agent, tree.join("sbin/init")).unwrap();
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

/// The guest's VMM, killed on drop: declared after the namespace, so
/// dropped before it, and the namespace (with its tap) goes with QEMU.
struct Running {
    vmm: Vmm,
    run_dir: PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(process) = self.vmm.process(&self.run_dir) {
            let _ = process.signal(9);
            let deadline = Instant::now() + Duration::from_secs(5);
            while process.is_running() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn ping(ns: &Netns, args: &[&str]) -> bool {
    // busybox's ping: busybox-static is needed for the guest anyway.
    let mut ping = ns.command("busybox");
    ping.args(["ping", "-c", "1", "-W", "1"]).args(args).arg(GUEST);
    ping.output().is_ok_and(|out| out.status.success())
}

#[tokio::test]
async fn a_guest_configures_its_network_from_the_command_line() {
    banger_testkit::with_timeout(TEST_TIMEOUT, body()).await;
}

async fn body() {
    let test = "a_guest_configures_its_network_from_the_command_line";
    let have_qemu = Command::new("qemu-system-x86_64").arg("--version").output().is_ok();
    if !banger_testkit::require("qemu-system-x86_64 (Debian's qemu-system-x86)", have_qemu)
        || !banger_netns::require(test, &["ip", "busybox", "mkfs.ext4"])
    {
        return;
    }
    let Some(kernel) = banger_testkit::debian_kernel().await else { return };
    let agent = tokio::task::spawn_blocking(banger_testkit::guest::agent_binary).await.unwrap();
    let dir = tempfile::Builder::new().prefix("qemu-net").tempdir().unwrap();
    let run_dir = dir.path().join("run");
    std::fs::create_dir(&run_dir).unwrap();
    let spec = VmSpec {
        name: "net-test".into(),
        run_dir: run_dir.clone(),
        kernel: kernel.vmlinux(),
        initrd: Some(kernel.initrd()),
        cmdline: format!("root=/dev/vda rw panic=-1 init=/sbin/init banger.net={GUEST}/24,10.213.0.1,10.213.0.1"),
        cpus: 1,
        memory_mib: 512,
        disks: vec![DiskSpec { path: root_disk(dir.path(), &agent), read_only: false }],
        nics: vec![NicSpec { tap: TAP.into(), mac: MAC }],
    };

    let ns = Netns::new("qemu-net").unwrap();
    ns.ip(&["tuntap", "add", "dev", TAP, "mode", "tap"]).unwrap();
    ns.addr(TAP, "10.213.0.1/24").unwrap();
    // A second address on the tap, outside the guest's prefix: a reply to
    // it can only leave the guest by its default route.
    ns.addr(TAP, "10.99.0.1/24").unwrap();
    ns.up(TAP).unwrap();

    let vmm = Vmm::Qemu(Qemu { binary: "qemu-system-x86_64".into(), kvm: false, vsock_cid: None });
    let started = Instant::now();
    // QEMU is forked from a thread inside the namespace, so its tap is the
    // namespace's.
    let process = ns.run(|| {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(vmm.start(&spec))
    });
    let running = Running { vmm: vmm.clone(), run_dir: run_dir.clone() };
    let process = process.unwrap_or_else(|e| panic!("start: {e}"));

    let console = || std::fs::read_to_string(vmm.console_log(&run_dir)).unwrap_or_default();
    // Blocking waits, each bounded: nothing else runs on this runtime.
    let mut answered = false;
    while !answered && started.elapsed() < BOOT_TIMEOUT && process.is_running() {
        answered = ping(&ns, &[]);
        if !answered {
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    assert!(answered, "{GUEST} did not answer within {BOOT_TIMEOUT:?}; console:\n{}", console());
    eprintln!("the guest answered ping {:?} after QEMU's start", started.elapsed());

    // The reply to another subnet goes by the guest's default route.
    assert!(ping(&ns, &["-I", "10.99.0.1"]), "no reply by the default route; console:\n{}", console());
    // Logged once resolv.conf is written, the last step.
    let line = format!("banger-agent: network: eth0 {GUEST}/24 via 10.213.0.1, DNS 10.213.0.1");
    assert!(console().contains(&line), "no {line:?} on the console:\n{}", console());
    // The guest's MAC is the spec's.
    let neigh = ns.ip(&["neigh", "show", GUEST]).unwrap();
    assert!(neigh.contains("02:42:0a:d5:00:02"), "{neigh}");

    vmm.kill(&run_dir, process).await.expect("kill");
    drop(running);
    vmm.release(&run_dir).expect("release");
}
