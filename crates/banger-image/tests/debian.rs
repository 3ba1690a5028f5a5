//! Builds a real Debian image with debootstrap (downloads from
//! debootstrap's default mirror, a few minutes). Needs root and debootstrap
//! (scripts/setup-host installs it): a SKIP without, a failure under CI.

use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::{Duration, Instant};

use banger_image::{build, BuildOptions, Recipe, AGENT_PATH, ROOTFS_FILE};

/// The whole test: debootstrap downloads and unpacks a base system, then
/// mkfs copies it (about 3 minutes here, on a quiet machine).
const TEST_TIMEOUT: Duration = Duration::from_secs(1200);

/// Writes past the test harness's output capture, so that a timing is seen.
fn loud(message: &str) {
    let _ = writeln!(std::io::stderr(), "\n*** {message} ***\n");
}

fn debugfs(image: &std::path::Path, request: &str) -> String {
    let out = Command::new("debugfs").arg("-R").arg(request).arg(image).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn debian_image_runs_the_agent_under_systemd() {
    if !banger_testkit::require("root, to debootstrap and build images", banger_testkit::is_root()) {
        return;
    }
    let debootstrap = Command::new("debootstrap").arg("--version").output().is_ok();
    if !banger_testkit::require("debootstrap (scripts/setup-host)", debootstrap) {
        return;
    }
    banger_testkit::with_timeout_blocking(TEST_TIMEOUT, build_and_check);
}

fn build_and_check() {
    let dest = tempfile::tempdir().unwrap();
    assert_eq!(fs::metadata(dest.path()).unwrap().uid(), 0, "needs root");
    let started = Instant::now();
    let mut steps = Vec::new();
    let built = build(Recipe::debian(), &BuildOptions::new("/bin/busybox"), dest.path(), &mut |s: &str| {
        steps.push(s.to_owned())
    })
    .unwrap();
    loud(&format!("debian image built in {:?}, {} MiB", started.elapsed(), built.size_bytes >> 20));
    assert_eq!(built.init, "/lib/systemd/systemd");
    assert!(steps.iter().any(|s| s.starts_with("debootstrap: ")), "debootstrap progress is passed on");
    let image = dest.path().join(ROOTFS_FILE);
    let fsck = Command::new("e2fsck").args(["-f", "-n"]).arg(&image).output().unwrap();
    assert!(fsck.status.success());
    assert!(debugfs(&image, &format!("stat {AGENT_PATH}")).contains("Mode:  0755"));
    let unit = debugfs(&image, "cat /etc/systemd/system/banger-agent.service");
    assert!(unit.contains("Restart=always"), "{unit}");
    let wants = debugfs(&image, "stat /etc/systemd/system/multi-user.target.wants/banger-agent.service");
    assert!(wants.contains("/etc/systemd/system/banger-agent.service"), "{wants}");
    assert!(
        debugfs(&image, "stat /lib/systemd/systemd").contains("Type: regular")
            || debugfs(&image, "stat /usr/lib/systemd/systemd").contains("Type: regular")
    );
    assert!(debugfs(&image, "stat /usr/sbin/sshd").contains("Type: regular"));
    let archives = debugfs(&image, "ls /var/cache/apt/archives");
    assert!(!archives.contains(".deb"), "{archives}");
    let ssh = debugfs(&image, "ls /etc/ssh");
    assert!(!ssh.contains("ssh_host_"), "{ssh}");
    assert_eq!(debugfs(&image, "cat /etc/hostname").trim(), "banger");
    assert!(debugfs(&image, "stat /etc/machine-id").contains("Size: 0"), "clones get their own machine-id");
}
