//! The real jailer (as root, like bangerd): Firecracker runs as the
//! unprivileged uid/gid it is given, the run directory may be a tmpfs
//! apart from the disks, and long VM names under a long state root work.
//! Each test checks that no process, socket, jail, cgroup or extra disk
//! link is left.

use std::os::unix::fs::MetadataExt;

use banger_vmm::firecracker::{command, JailIdentity, Jailer, DEFAULT_JAIL_IDENTITY};

use super::*;

/// The jailer and Firecracker, when the test can run them: they need root.
fn jailed(jail_dir: &Path, identity: JailIdentity) -> Option<Firecracker> {
    let (firecracker, jailer) = (binary("firecracker")?, binary("jailer")?);
    if !banger_testkit::require("root, for the jailer", banger_testkit::is_root()) {
        return None;
    }
    Some(Firecracker {
        binary: firecracker,
        jailer: Some(Jailer { binary: jailer, identity }),
        jail_dir: Some(jail_dir.to_path_buf()),
    })
}

/// The jail beside the VM's disks, as the daemon puts it.
fn jail_dir(spec: &VmSpec) -> PathBuf {
    spec.disks[0].path.parent().unwrap().join("jail")
}

/// `Uid:` and `Gid:` of a process: real, effective, saved, filesystem.
fn credentials(pid: u32) -> (Vec<u32>, Vec<u32>) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let ids = |key: &str| -> Vec<u32> {
        let line = status.lines().find(|l| l.starts_with(key)).unwrap();
        line[key.len()..].split_whitespace().map(|n| n.parse().unwrap()).collect()
    };
    (ids("Uid:"), ids("Gid:"))
}

/// Cgroup directories the jailer could have made for instance `id`
/// (`<hierarchy>/firecracker/<id>`, v1 or v2).
fn cgroups_of(id: &str) -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let hierarchies = std::fs::read_dir(root).into_iter().flatten().flatten().map(|e| e.path());
    std::iter::once(root.to_path_buf())
        .chain(hierarchies)
        .map(|h| h.join("firecracker").join(id))
        .filter(|dir| dir.exists())
        .collect()
}

fn owner(path: &Path) -> (u32, u32) {
    let meta = std::fs::metadata(path).unwrap();
    (meta.uid(), meta.gid())
}

/// After a stop or kill: the log is still there for the failure report
/// (through its link into the jail); then release leaves nothing but the
/// console, and the disk is the daemon's again.
fn assert_jail_gone(driver: &Firecracker, spec: &VmSpec, pid: u32) {
    let text = std::fs::read_to_string(spec.run_dir.join("firecracker.log")).unwrap();
    assert!(text.contains("Running Firecracker v1.16.1"), "{text}");
    assert!(driver.failure_report(&spec.run_dir).contains(GUEST_LINE));
    driver.release(&spec.run_dir).unwrap();
    assert_nothing_left(spec, Some(pid), Some(&jail_dir(spec)));
    assert_eq!(cgroups_of(&command::instance_id(&spec.name)), Vec::<PathBuf>::new(), "a cgroup is left");
    assert_eq!(owner(&spec.disks[0].path), (0, 0), "the disk is given back to the daemon's uid");
    assert!(spec.run_dir.join("console.log").is_file(), "the console stays for vm logs");
}

#[tokio::test]
async fn real_jailer_runs_firecracker_as_its_unprivileged_uid() {
    let dir = tempfile::tempdir().unwrap();
    let spec = vm(dir.path(), "real-jailed", GuestEnd::Hangs);
    let Some(driver) = jailed(&jail_dir(&spec), DEFAULT_JAIL_IDENTITY) else { return };
    let _guard = KillOnDrop(spec.run_dir.clone());
    with_timeout(async {
        let started = Instant::now();
        let process = driver.start(&spec).await.unwrap();
        let pid = process.pid;
        eprintln!("real jailer: spawn to InstanceStart answered in {:?}", started.elapsed());
        let JailIdentity { uid, gid } = DEFAULT_JAIL_IDENTITY;
        assert_eq!(credentials(pid), (vec![uid; 4], vec![gid; 4]), "firecracker must not run as root");
        let log = std::fs::read_to_string(spec.run_dir.join("firecracker.log")).unwrap();
        assert_eq!(answered_requests(&log).last().map(String::as_str), Some("/actions"), "{log}");
        let console = wait_for_text(&spec.run_dir.join("console.log"), GUEST_LINE, Duration::from_secs(10)).await;
        assert_eq!(console, format!("{GUEST_LINE}\n"));
        assert_eq!(owner(&spec.disks[0].path), (uid, gid), "the writable disk is the jailed uid's while it runs");
        assert_eq!(owner(&spec.disks[1].path), (0, 0), "a read-only disk is not handed over");
        assert_eq!(owner(&spec.kernel), (0, 0), "the kernel is not handed over");

        driver.stop(&spec.run_dir, process, Duration::from_millis(500)).await.unwrap();
        assert_jail_gone(&driver, &spec, pid);
    })
    .await;
}

/// The usual layout under systemd: the run directory on a tmpfs `/run`,
/// the disks and the jail on the state filesystem.
#[tokio::test]
async fn real_jailer_with_the_run_dir_on_a_tmpfs() {
    let dir = tempfile::tempdir().unwrap();
    let spec = vm(dir.path(), "real-tmpfs", GuestEnd::Hangs);
    let Some(driver) = jailed(&jail_dir(&spec), DEFAULT_JAIL_IDENTITY) else { return };
    let _mount = Tmpfs::mount(&spec.run_dir);
    assert_ne!(std::fs::metadata(&spec.run_dir).unwrap().dev(), std::fs::metadata(&spec.kernel).unwrap().dev());
    let _guard = KillOnDrop(spec.run_dir.clone());
    with_timeout(async {
        let process = driver.start(&spec).await.unwrap();
        let console = wait_for_text(&spec.run_dir.join("console.log"), GUEST_LINE, Duration::from_secs(10)).await;
        assert_eq!(console, format!("{GUEST_LINE}\n"));
        let log = std::fs::read_to_string(spec.run_dir.join("firecracker.log")).unwrap();
        assert_eq!(answered_requests(&log).last().map(String::as_str), Some("/actions"), "{log}");
        driver.kill(&spec.run_dir, process).await.unwrap();
        assert_jail_gone(&driver, &spec, process.pid);
    })
    .await;
}

/// A 63-character name under a long state root: the jail's sockets are
/// far past the 107 bytes of a socket address, and so is the run dir.
#[tokio::test]
async fn real_jailer_with_a_long_name_under_a_long_state_root() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("state-root-".repeat(6)).join("vms");
    let name = format!("vm-{}", "n".repeat(60));
    assert_eq!(name.len(), 63);
    let spec = vm(&root.join(&name), &name, GuestEnd::Hangs);
    let Some(driver) = jailed(&jail_dir(&spec), DEFAULT_JAIL_IDENTITY) else { return };
    let _guard = KillOnDrop(spec.run_dir.clone());
    with_timeout(async {
        let process = driver.start(&spec).await.unwrap();
        let in_jail = jail_dir(&spec).join("firecracker").join(&name).join("root/run/firecracker.socket");
        assert!(in_jail.as_os_str().len() > 200, "{}", in_jail.display());
        assert!(spec.run_dir.join("firecracker.sock").as_os_str().len() > 107);
        let console = wait_for_text(&spec.run_dir.join("console.log"), GUEST_LINE, Duration::from_secs(10)).await;
        assert_eq!(console, format!("{GUEST_LINE}\n"));

        // The agent's vsock is reached through the long run dir too: the
        // attempt waits for the guest (and times out), the path is fine.
        let endpoint = banger_vmm::firecracker::agent_endpoint(&spec.run_dir);
        let error = endpoint.connect().await.expect_err("no agent can answer");
        assert_eq!(error.kind(), std::io::ErrorKind::TimedOut, "{error}");

        // Stop talks to the API through the long path too.
        driver.stop(&spec.run_dir, process, Duration::from_millis(500)).await.unwrap();
        let log = std::fs::read_to_string(spec.run_dir.join("firecracker.log")).unwrap();
        assert!(log.contains(r#"{\"action_type\":\"SendCtrlAltDel\"}"#), "{log}");
        assert_jail_gone(&driver, &spec, process.pid);
    })
    .await;
}

/// A tmpfs mounted on a test's own directory, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path) -> Tmpfs {
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=16m,mode=0755", "banger-test"])
            .arg(dir)
            .status()
            .expect("run mount");
        assert!(status.success(), "cannot mount a tmpfs on {}", dir.display());
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("--lazy").arg(&self.0).status();
    }
}
