//! The guest agent dying inside a real guest (QEMU/TCG): the daemon reports
//! it, and the VM recovers by itself when the agent comes back, as it does
//! under systemd's `Restart=always` in the debian image. Here an image's
//! own init restarts the agent, so the test needs no debootstrap.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use banger_api::{AgentStatus, ImageBuildRequest, Vm, VmState, VmmChoice};
use banger_testkit::requests::{succeed, vm};
use banger_testkit::TestDaemon;

const TEST_TIMEOUT: Duration = Duration::from_secs(600);

/// An init that mounts what the agent needs and runs it for ever,
/// starting it again whenever it ends.
const INIT: &str = "#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
/bin/busybox mount -t devtmpfs dev /dev
/bin/busybox mount -t tmpfs run /run
while :; do
  /usr/local/bin/banger-agent
  echo \"restarting init: the agent ended ($?)\"
  /bin/busybox sleep 1
done
";

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_killed_in_the_guest_is_reported_and_the_vm_recovers_when_it_returns() {
    banger_testkit::with_timeout(TEST_TIMEOUT, killed_agent_body()).await;
}

async fn killed_agent_body() {
    if !banger_testkit::require("root, to build images", banger_testkit::is_root()) {
        return;
    }
    let Some(kernel) = banger_testkit::debian_kernel().await else { return };
    let agent = tokio::task::spawn_blocking(banger_testkit::guest::agent_binary).await.unwrap();
    let daemon = TestDaemon::start_with_kernel(&kernel, |c| {
        c.agent_binary = Some(agent);
        c.vmm = Some(VmmChoice::Qemu);
        c.boot_timeout = Duration::from_secs(120);
    })
    .await;
    let client = daemon.client.clone();
    let tree = daemon.root.path().join("restarting");
    for dir in ["bin", "sbin", "proc", "sys", "dev", "run", "tmp"] {
        std::fs::create_dir_all(tree.join(dir)).unwrap();
    }
    std::fs::copy("/bin/busybox", tree.join("bin/busybox")).unwrap();
    for applet in ["sh", "sleep", "kill", "pidof", "echo"] {
        std::os::unix::fs::symlink("busybox", tree.join("bin").join(applet)).unwrap();
    }
    std::fs::write(tree.join("sbin/init"), INIT).unwrap();
    std::fs::set_permissions(tree.join("sbin/init"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let build = ImageBuildRequest {
        name: "restarting".into(),
        recipe: None,
        from_dir: Some(tree.display().to_string()),
        from_tar: None,
        kernel: "debian".into(),
        size_bytes: None,
        force: false,
    };
    succeed(&client, client.build_image(&build).await.unwrap()).await;
    succeed(&client, client.create_vm(&vm("r", "restarting")).await.unwrap()).await;

    let pid = client.exec("r", &["pidof", "banger-agent"], b"").await.unwrap();
    let pid = String::from_utf8(pid.stdout).unwrap().trim().to_owned();
    assert!(!pid.is_empty() && pid != "1", "the agent runs under the image's init: {pid:?}");
    let killed_at = std::time::Instant::now();
    // The exec that kills the agent dies with it: it ends once the daemon
    // gives up on the silent connection. Its answer does not matter.
    let _ = client.exec("r", &["kill", "-9", &pid], b"").await;
    let exec_ended_after = killed_at.elapsed();

    let silent = |v: &Vm| v.agent == Some(AgentStatus::NotAnswering);
    banger_testkit::wait_vm(&client, "r", Duration::from_secs(60), "reported its agent silent", silent).await;
    let reported_after = killed_at.elapsed();
    let back = |v: &Vm| v.agent == Some(AgentStatus::Answering) && v.state == VmState::Running;
    banger_testkit::wait_vm(&client, "r", Duration::from_secs(120), "answered again", back).await;
    let recovered_after = killed_at.elapsed();

    let out = client.exec("r", &["pidof", "banger-agent"], b"").await.unwrap();
    assert_eq!(out.code, Some(0));
    let new_pid = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_ne!(new_pid, pid, "a new agent answers");
    let console = std::fs::read_to_string(daemon.config.run_dir.join("vms/r/console.log")).unwrap();
    assert!(console.contains("restarting init: the agent ended"), "the guest's init restarted it");
    eprintln!(
        "agent killed: its exec ended after {exec_ended_after:?}, reported silent after {reported_after:?}, answering again after {recovered_after:?}"
    );
    succeed(&client, client.remove_vm("r", true).await.unwrap()).await;
}
