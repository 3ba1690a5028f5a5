//! The agent a VM runs comes from the daemon that boots it. A real guest
//! under QEMU (TCG here) booted from an image whose agent an "older banger"
//! put there (the current agent with another `--version`) answers with
//! the daemon's agent (its PID 1 runs the daemon's binary), and the image
//! file keeps its own. Against the test
//! driver (no guest, milliseconds): every start rewrites the VM's own disk,
//! a registered image's agent is found where it is, and a disk the agent
//! cannot go into fails the create or start clearly, leaving nothing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use banger_api::{ErrorCode, ImageRegisterRequest, OperationState, VmCreateRequest, VmState, VmmChoice};
use banger_client::Client;
use banger_testkit::requests::{finished, succeed, tiny_image, vm};
use banger_testkit::TestDaemon;

/// A test that boots a real guest, preparation included (the first test
/// of a run may build the static agent and import the kernel).
const GUEST_TEST_TIMEOUT: Duration = Duration::from_secs(600);
/// A test on the test driver.
const LOCAL_TEST_TIMEOUT: Duration = Duration::from_secs(120);

const TINY_AGENT: &str = "/usr/bin/banger-agent";

fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?} (e2fsprogs, scripts/setup-host): {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// A file's bytes out of an ext4 disk, without mounting it.
fn debugfs_cat(disk: &Path, path: &str) -> Vec<u8> {
    run(Command::new("debugfs").arg("-R").arg(format!("cat {path}")).arg(disk))
}

/// Puts the host file `file` at `path` in the ext4 `disk` (mode 0755),
/// as an image build would have.
fn debugfs_put(disk: &Path, file: &Path, path: &str) {
    let script = format!("rm {path}\nwrite {} {path}\nsif {path} mode 0100755\n", file.display());
    let script_file = disk.with_extension("debugfs");
    std::fs::write(&script_file, script).unwrap();
    run(Command::new("debugfs").arg("-w").arg("-f").arg(&script_file).arg(disk));
    std::fs::remove_file(&script_file).unwrap();
    assert_eq!(debugfs_cat(disk, path), std::fs::read(file).unwrap(), "debugfs put {} at {path}", file.display());
}

/// What `agent --version` says its version is.
fn version_of(agent: &Path) -> String {
    let out = String::from_utf8(run(Command::new(agent).arg("--version"))).unwrap();
    out.trim().strip_prefix("banger-agent ").unwrap_or_else(|| panic!("odd --version: {out}")).to_owned()
}

/// The agent an older banger put into an image: `agent` with every copy
/// of its version string replaced by another of the same length, so it
/// runs the same but `--version` says another version. (The handshake's
/// version is not patched: the compiler writes so short a constant as
/// immediates in the code.)
fn older_agent(agent: &Path, dir: &Path) -> (PathBuf, String) {
    let current = version_of(agent);
    let mut older: String = current.chars().map(|c| if c.is_ascii_digit() { '9' } else { c }).collect();
    if older == current {
        older = current.replace('9', "8");
    }
    let mut bytes = std::fs::read(agent).unwrap();
    let (from, to) = (current.as_bytes(), older.as_bytes());
    let mut i = 0;
    let mut replaced = 0;
    while i + from.len() <= bytes.len() {
        if &bytes[i..i + from.len()] == from {
            bytes[i..i + from.len()].copy_from_slice(to);
            replaced += 1;
            i += from.len();
        } else {
            i += 1;
        }
    }
    assert!(replaced > 0, "the agent carries its version string");
    let path = dir.join("older-banger-agent");
    std::fs::write(&path, bytes).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    assert_eq!(version_of(&path), older, "the older agent says it is {older}");
    (path, older)
}

fn rootfs(daemon: &TestDaemon, image: &str) -> PathBuf {
    daemon.state_dir().join("images").join(image).join("rootfs.ext4")
}

fn vm_disk(daemon: &TestDaemon, name: &str) -> PathBuf {
    daemon.state_dir().join("vms").join(name).join("root.ext4")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guest_from_an_older_bangers_image_answers_with_this_daemons_agent() {
    banger_testkit::with_timeout(GUEST_TEST_TIMEOUT, older_image_body()).await;
}

async fn older_image_body() {
    if !banger_testkit::require("root, to build images", banger_testkit::is_root()) {
        return;
    }
    let Some(kernel) = banger_testkit::debian_kernel().await else { return };
    let agent = tokio::task::spawn_blocking(banger_testkit::guest::agent_binary).await.unwrap();
    let mut daemon = TestDaemon::start_with_kernel(&kernel, |c| {
        c.agent_binary = Some(agent.clone());
        c.vmm = Some(VmmChoice::Qemu);
        c.boot_timeout = Duration::from_secs(120);
    })
    .await;
    let client = daemon.client.clone();
    succeed(&client, client.build_image(&tiny_image("tiny", "debian")).await.unwrap()).await;
    let (older, older_version) = older_agent(&agent, daemon.root.path());
    debugfs_put(&rootfs(&daemon, "tiny"), &older, TINY_AGENT);

    let vm = succeed(&client, client.create_vm(&vm("old", "tiny")).await.unwrap()).await.and_then(|r| r.into_vm());
    let vm = vm.expect("the create makes a VM");
    assert_eq!(vm.state, VmState::Running);
    let current_version = version_of(&agent);
    assert_eq!(vm.agent_version.as_deref(), Some(current_version.as_str()));
    // PID 1 of a tiny guest is the agent that answers: the binary it runs
    // says the daemon's version, not the image's, and is the daemon's, byte for byte.
    let says = client.exec("old", &["/proc/1/exe", "--version"], b"").await.unwrap();
    let says = String::from_utf8_lossy(&says.stdout);
    assert_eq!(says.trim(), format!("banger-agent {current_version}"), "not the image's {older_version}");
    let running = client.exec("old", &["sha256sum", "/proc/1/exe"], b"").await.unwrap();
    assert_eq!(running.code, Some(0), "{running:?}");
    let running = String::from_utf8_lossy(&running.stdout);
    let daemons = banger_testkit::sha256_hex(&std::fs::read(&agent).unwrap());
    assert_eq!(running.split_whitespace().next(), Some(daemons.as_str()), "{running}");
    // The shared image is never written: it keeps the older agent.
    assert_eq!(debugfs_cat(&rootfs(&daemon, "tiny"), TINY_AGENT), std::fs::read(&older).unwrap());

    succeed(&client, client.remove_vm("old", true).await.unwrap()).await;
    daemon.stop().await;
}

async fn local_daemon(agent: &Path) -> Option<TestDaemon> {
    banger_testkit::local_daemon(agent, |_| {}).await
}

fn register(name: &str, rootfs: &Path, init: Option<&str>) -> ImageRegisterRequest {
    ImageRegisterRequest {
        name: name.into(),
        rootfs: rootfs.display().to_string(),
        kernel: "k".into(),
        init: init.map(Into::into),
        force: false,
    }
}

async fn start(client: &Client, name: &str) -> banger_api::Operation {
    finished(client, client.start_vm(name, false).await.unwrap()).await
}

#[tokio::test(flavor = "multi_thread")]
async fn every_start_writes_the_daemons_agent_into_the_vms_own_disk() {
    let agent = tokio::task::spawn_blocking(banger_testkit::guest::agent_binary).await.unwrap();
    banger_testkit::with_timeout(LOCAL_TEST_TIMEOUT, every_start_body(agent)).await;
}

async fn every_start_body(agent: PathBuf) {
    let Some(mut daemon) = local_daemon(&agent).await else { return };
    let client = daemon.client.clone();
    let current = std::fs::read(&agent).unwrap();
    let (older, _) = older_agent(&agent, daemon.root.path());
    debugfs_put(&rootfs(&daemon, "tiny"), &older, TINY_AGENT);

    succeed(&client, client.create_vm(&vm("a", "tiny")).await.unwrap()).await;
    assert!(debugfs_cat(&vm_disk(&daemon, "a"), TINY_AGENT) == current, "create writes the daemon's agent");
    assert!(debugfs_cat(&rootfs(&daemon, "tiny"), TINY_AGENT) == std::fs::read(&older).unwrap(), "not the image's");

    // A stopped VM's disk with another agent in it (as a daemon of another
    // version would have left it) gets this daemon's at its next start.
    succeed(&client, client.stop_vm("a", false).await.unwrap()).await;
    debugfs_put(&vm_disk(&daemon, "a"), &older, TINY_AGENT);
    assert_eq!(start(&client, "a").await.state, OperationState::Succeeded);
    assert!(debugfs_cat(&vm_disk(&daemon, "a"), TINY_AGENT) == current, "start writes the daemon's agent");

    // A registered image of an older layout: the agent at /sbin/banger-agent, as init.
    let legacy = daemon.root.path().join("legacy.ext4");
    std::fs::copy(rootfs(&daemon, "tiny"), &legacy).unwrap();
    run(Command::new("debugfs").args(["-w", "-R", "rm /usr/bin/banger-agent"]).arg(&legacy));
    debugfs_put(&legacy, &older, "/sbin/banger-agent");
    succeed(&client, client.register_image(&register("legacy", &legacy, Some("/sbin/banger-agent"))).await.unwrap())
        .await;
    succeed(&client, client.create_vm(&vm("l", "legacy")).await.unwrap()).await;
    assert!(debugfs_cat(&vm_disk(&daemon, "l"), "/sbin/banger-agent") == current, "found where the image has it");

    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_disk_the_agent_cannot_go_into_fails_the_boot_clearly_and_leaves_nothing() {
    let agent = tokio::task::spawn_blocking(banger_testkit::guest::agent_binary).await.unwrap();
    banger_testkit::with_timeout(LOCAL_TEST_TIMEOUT, cannot_go_into_body(agent)).await;
}

async fn cannot_go_into_body(agent: PathBuf) {
    let Some(mut daemon) = local_daemon(&agent).await else { return };
    let client = daemon.client.clone();
    let before = std::fs::read_dir(daemon.state_dir().join("vms")).unwrap().count();

    // An ext4 with a place for the agent but no room for it.
    let root = daemon.root.path().join("cramped-root");
    std::fs::create_dir_all(root.join("usr/local/bin")).unwrap();
    std::fs::write(root.join("usr/local/bin/banger-agent"), b"old").unwrap();
    let cramped = daemon.root.path().join("cramped.ext4");
    std::fs::File::create(&cramped).unwrap().set_len(2 << 20).unwrap();
    run(Command::new("mkfs.ext4").args(["-q", "-F", "-d"]).arg(&root).arg(&cramped));
    succeed(&client, client.register_image(&register("cramped", &cramped, None)).await.unwrap()).await;
    // One with no agent anywhere.
    let bare = daemon.root.path().join("bare.ext4");
    std::fs::File::create(&bare).unwrap().set_len(8 << 20).unwrap();
    run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&bare));
    succeed(&client, client.register_image(&register("bare", &bare, None)).await.unwrap()).await;

    for (name, image, says) in [
        ("cramped", "cramped", "Could not allocate block"),
        ("bare", "bare", "carries no banger-agent at /usr/local/bin/banger-agent or /usr/bin/banger-agent"),
    ] {
        let done = finished(&client, client.create_vm(&vm(name, image)).await.unwrap()).await;
        assert_eq!(done.state, OperationState::Failed, "{name}");
        let error = done.error.expect("a failed create says why");
        assert_eq!(error.code, ErrorCode::BootFailed, "{name}: {}", error.message);
        let message = &error.message;
        assert!(
            message.starts_with(&format!("cannot install the guest agent into the root disk of VM \"{name}\"")),
            "{message}"
        );
        assert!(message.contains(says), "{message}");
        assert_eq!(client.vm(name).await.unwrap_err().api().map(|e| e.code), Some(ErrorCode::NotFound), "{name}");
        assert!(!daemon.state_dir().join("vms").join(name).exists(), "{name}'s disk is gone");
        assert!(!daemon.config.run_dir.join("vms").join(name).exists(), "{name}'s run dir is gone");
    }
    assert_eq!(std::fs::read_dir(daemon.state_dir().join("vms")).unwrap().count(), before);

    // A stopped VM whose disk no longer holds ext4 stays stopped, its disk as it was.
    succeed(&client, client.create_vm(&VmCreateRequest { no_start: true, ..vm("s", "tiny") }).await.unwrap()).await;
    let disk = vm_disk(&daemon, "s");
    let zeros = vec![0u8; 4096];
    std::os::unix::fs::FileExt::write_all_at(&std::fs::OpenOptions::new().write(true).open(&disk).unwrap(), &zeros, 0)
        .unwrap();
    let done = start(&client, "s").await;
    assert_eq!(done.state, OperationState::Failed);
    let message = done.error.unwrap().message;
    assert!(message.ends_with(&format!("{} is not an ext4 filesystem", disk.display())), "{message}");
    let s = client.vm("s").await.unwrap();
    assert_eq!((s.state, s.pid), (VmState::Created, None), "the VM is as it was");
    assert!(disk.is_file());

    daemon.stop().await;
}
