//! The agent written into real ext4 files with the real debugfs, as each
//! boot does: a file replaced (owner, mode, bytes, a clean e2fsck after), a
//! journal a killed guest left replayed first, the agent found where each
//! layout keeps it, and disks it cannot go into refused with what went
//! wrong. Made with `mkfs.ext4 -d` as the image builds make them; no root,
//! no mount.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use banger_image::{install_agent, locate_agent, AgentInstallError, AGENT_PATH};

const TINY_AGENT: &str = "/usr/bin/banger-agent";

/// Writes past the test harness's output capture, so that a timing is seen.
fn loud(message: &str) {
    let _ = writeln!(std::io::stderr(), "\n*** {message} ***\n");
}

fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().expect("run an e2fsprogs tool (scripts/setup-host installs e2fsprogs)");
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

fn debugfs(disk: &Path, request: &str) -> Vec<u8> {
    run(Command::new("debugfs").arg("-R").arg(request).arg(disk)).stdout
}

fn stat(disk: &Path, path: &str) -> String {
    String::from_utf8_lossy(&debugfs(disk, &format!("stat {path}"))).into_owned()
}

/// Bytes that differ from run to run of `seed`, a stand-in agent.
fn bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| ((i * 31 + seed as usize) % 251) as u8).collect()
}

/// A disk of `mib` MiB made from a root with `files` (path, bytes, mode)
/// and a tiny image's `/sbin/init` link.
fn disk(dir: &Path, mib: u64, files: &[(&str, &[u8], u32)]) -> PathBuf {
    let root = dir.join("root");
    fs::create_dir_all(root.join("sbin")).unwrap();
    for dir in ["usr/bin", "usr/local/bin"] {
        fs::create_dir_all(root.join(dir)).unwrap();
    }
    for (path, contents, mode) in files {
        let path = root.join(path.trim_start_matches('/'));
        fs::write(&path, contents).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(*mode)).unwrap();
    }
    symlink(TINY_AGENT, root.join("sbin/init")).unwrap();
    let disk = dir.join("root.ext4");
    fs::File::create(&disk).unwrap().set_len(mib << 20).unwrap();
    run(Command::new("mkfs.ext4").args(["-q", "-F", "-b", "4096", "-I", "256", "-d"]).arg(&root).arg(&disk));
    disk
}

fn agent(dir: &Path, contents: &[u8]) -> PathBuf {
    let path = dir.join("new agent");
    fs::write(&path, contents).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o700)).unwrap();
    path
}

fn assert_fsck_clean(disk: &Path) {
    run(Command::new("e2fsck").args(["-f", "-n"]).arg(disk));
}

#[test]
fn the_agent_is_replaced_root_owned_and_0755_and_the_filesystem_stays_clean() {
    let dir = tempfile::tempdir().unwrap();
    let disk = disk(dir.path(), 64, &[(TINY_AGENT, b"the old agent", 0o700)]);
    let new = bytes(3 << 20, 1);
    let agent = agent(dir.path(), &new);
    install_agent(&disk, &agent, TINY_AGENT).unwrap();
    assert_eq!(debugfs(&disk, &format!("cat {TINY_AGENT}")), new);
    let shown = stat(&disk, TINY_AGENT);
    assert!(shown.contains("Type: regular    Mode:  0755"), "{shown}");
    assert!(shown.contains("User:     0   Group:     0"), "{shown}");
    assert!(stat(&disk, "/sbin/init").contains(&format!("Fast link dest: \"{TINY_AGENT}\"")));
    assert_fsck_clean(&disk);

    // Again, over the agent the first run wrote: blocks are reused, not leaked.
    let newer = bytes(3 << 20, 2);
    fs::write(&agent, &newer).unwrap();
    install_agent(&disk, &agent, TINY_AGENT).unwrap();
    assert_eq!(debugfs(&disk, &format!("cat {TINY_AGENT}")), newer);
    assert_fsck_clean(&disk);
}

#[test]
fn an_agent_the_disk_lacks_is_written_where_its_directory_exists() {
    let dir = tempfile::tempdir().unwrap();
    let disk = disk(dir.path(), 64, &[]);
    let agent = agent(dir.path(), b"agent");
    install_agent(&disk, &agent, AGENT_PATH).unwrap();
    assert_eq!(debugfs(&disk, &format!("cat {AGENT_PATH}")), b"agent");
    assert_fsck_clean(&disk);
}

/// What a guest killed mid-write leaves: a journal with a transaction in
/// it, which the kernel replays at the next mount. It is replayed before
/// the write, so the replay cannot put back blocks the write changed.
#[test]
fn a_journal_left_to_replay_is_replayed_before_the_write() {
    let dir = tempfile::tempdir().unwrap();
    let disk = disk(dir.path(), 64, &[(TINY_AGENT, b"old", 0o755)]);
    let block = dir.path().join("block");
    fs::write(&block, bytes(4096, 3)).unwrap();
    let script = format!("jo\njw -b 9000 {}\njc\n", block.display());
    let mut child = Command::new("debugfs")
        .args(["-w", "-f", "-"])
        .arg(&disk)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success());
    let features = || String::from_utf8_lossy(&run(Command::new("dumpe2fs").arg("-h").arg(&disk)).stdout).into_owned();
    assert!(features().contains("needs_recovery"), "the journal has a transaction to replay");

    let agent = agent(dir.path(), b"new agent");
    install_agent(&disk, &agent, TINY_AGENT).unwrap();
    assert!(!features().contains("needs_recovery"));
    assert_eq!(debugfs(&disk, &format!("cat {TINY_AGENT}")), b"new agent");
    assert_fsck_clean(&disk);
}

#[test]
fn the_agent_is_found_where_each_layout_keeps_it() {
    let tiny = tempfile::tempdir().unwrap();
    let disk_tiny = disk(tiny.path(), 64, &[(TINY_AGENT, b"a", 0o755)]);
    assert_eq!(locate_agent(&disk_tiny, "/sbin/init").unwrap(), TINY_AGENT);

    let other = tempfile::tempdir().unwrap();
    let disk_other = disk(other.path(), 64, &[(AGENT_PATH, b"a", 0o755), ("/sbin/banger-agent", b"a", 0o755)]);
    assert_eq!(locate_agent(&disk_other, "/lib/systemd/systemd").unwrap(), AGENT_PATH);
    assert_eq!(
        locate_agent(&disk_other, "/sbin/banger-agent").unwrap(),
        "/sbin/banger-agent",
        "init, when it is the agent"
    );

    let none = tempfile::tempdir().unwrap();
    let disk_none = disk(none.path(), 64, &[]);
    let err = locate_agent(&disk_none, "/sbin/init").unwrap_err();
    assert!(matches!(err, AgentInstallError::NoAgent { .. }), "{err}");
    assert!(err.to_string().contains(&format!("no banger-agent at {AGENT_PATH} or {TINY_AGENT}")), "{err}");
}

#[test]
fn disks_the_agent_cannot_go_into_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let agent = agent(dir.path(), &bytes(12 << 20, 4));

    let plain = dir.path().join("zeros.img");
    fs::write(&plain, vec![0u8; 1 << 20]).unwrap();
    let err = install_agent(&plain, &agent, TINY_AGENT).unwrap_err();
    assert_eq!(err.to_string(), format!("{} is not an ext4 filesystem", plain.display()));

    let small_dir = tempfile::tempdir().unwrap();
    let small = disk(small_dir.path(), 8, &[(TINY_AGENT, b"old", 0o755)]);
    let err = install_agent(&small, &agent, TINY_AGENT).unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, AgentInstallError::Write { .. }), "{message}");
    assert!(
        message.starts_with(&format!("debugfs could not write the agent to {TINY_AGENT} in {}", small.display())),
        "{message}"
    );
    assert!(message.contains("Could not allocate block"), "{message}");

    let no_dir = tempfile::tempdir().unwrap();
    let disk = disk(no_dir.path(), 64, &[]);
    let err = install_agent(&disk, &agent, "/opt/banger/banger-agent").unwrap_err();
    assert!(err.to_string().ends_with(": /opt/banger: File not found by ext2_lookup while looking up \"/opt/banger\"; write: File not found by ext2_lookup"), "{err}");
    assert_fsck_clean(&disk);
}

/// What a boot pays: an agent-sized file (16 MiB) into a 1 GiB disk.
#[test]
fn writing_an_agent_sized_file_takes_milliseconds() {
    let dir = tempfile::tempdir().unwrap();
    let disk = disk(dir.path(), 1024, &[(TINY_AGENT, b"old", 0o755)]);
    let agent = agent(dir.path(), &bytes(16 << 20, 5));
    let mut times: Vec<Duration> = (0..5)
        .map(|_| {
            let started = Instant::now();
            install_agent(&disk, &agent, TINY_AGENT).unwrap();
            started.elapsed()
        })
        .collect();
    times.sort();
    loud(&format!("a 16 MiB agent written into a 1 GiB ext4 in {:?} (median of 5; min {:?})", times[2], times[0]));
    assert!(times[2] < Duration::from_secs(5), "a bound for a hung debugfs, not a speed check");
    assert_fsck_clean(&disk);
}
