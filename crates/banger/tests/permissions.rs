//! A caller who is not root gets no more than its own rights: the real
//! `banger` CLI run as nobody (uid 65534) against a daemon running as root
//! names host paths only nobody's rights can read.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use banger_testkit::TestDaemon;

/// The whole of each test (the first may fetch and import Debian's kernel
/// and build the static agent).
const TEST_TIMEOUT: Duration = Duration::from_secs(600);

const NOBODY: u32 = 65534;

/// Runs the CLI as `uid` (its own group, no others).
async fn banger_as(uid: u32, socket: &Path, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_banger"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env_remove("BANGER_SOCKET")
        .current_dir("/")
        .uid(uid)
        .gid(uid)
        .output()
        .await
        .expect("run banger")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A daemon with the shared Debian kernel as `debian` whose socket nobody
/// may use (as a member of group `banger` would).
async fn daemon() -> Option<TestDaemon> {
    if !banger_testkit::require("root, to run as nobody and build images", banger_testkit::is_root()) {
        return None;
    }
    let kernel = banger_testkit::debian_kernel().await?;
    let agent = tokio::task::spawn_blocking(banger_testkit::guest::agent_binary).await.unwrap();
    let daemon = TestDaemon::start_with_kernel(&kernel, |c| {
        c.agent_binary = Some(agent);
        chmod(c.socket.parent().unwrap(), 0o755);
    })
    .await;
    chmod(&daemon.config.socket, 0o666);
    Some(daemon)
}

/// Names under `<state>/<dir>`, hidden ones included.
fn entries(daemon: &TestDaemon, dir: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(daemon.state_dir().join(dir))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A directory anyone may search, holding what the test makes.
fn open_tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    chmod(dir.path(), 0o755);
    dir
}

/// A small root tree anyone may read: a file, a directory and a link.
fn readable_tree(at: &Path) -> PathBuf {
    let tree = at.join("tree");
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::write(tree.join("etc/hostname"), "built-by-nobody\n").unwrap();
    std::os::unix::fs::symlink("hostname", tree.join("etc/name")).unwrap();
    for dir in [&tree, &tree.join("etc")] {
        chmod(dir, 0o755);
    }
    chmod(&tree.join("etc/hostname"), 0o644);
    tree
}

fn assert_refused(out: &Output, path: &Path) {
    let err = stderr(out);
    assert!(!out.status.success(), "nobody was let through: {err}");
    assert!(
        err.contains(&format!("{} is not readable with the caller's own rights", path.display())),
        "not the permission error: {err}"
    );
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn nobody_cannot_build_or_register_from_what_only_root_can_read() {
    banger_testkit::with_timeout(TEST_TIMEOUT, async {
        let Some(daemon) = daemon().await else { return };
        let socket = daemon.config.socket.clone();
        let dir = open_tempdir();

        // A root-only directory: refused before any operation starts.
        let secret_dir = dir.path().join("root-only");
        std::fs::create_dir(&secret_dir).unwrap();
        std::fs::write(secret_dir.join("shadow"), "root:secret\n").unwrap();
        chmod(&secret_dir, 0o700);
        let out = banger_as(
            NOBODY,
            &socket,
            &["image", "build", "x", "--from-dir", s(&secret_dir), "--kernel-ref", "debian"],
        )
        .await;
        assert_refused(&out, &secret_dir);

        // A readable directory with a root-only file in it (as /etc has
        // /etc/shadow): the walk stops at that file and nothing is built.
        let etc = readable_tree(dir.path());
        std::fs::write(etc.join("etc/shadow"), "root:secret\n").unwrap();
        chmod(&etc.join("etc/shadow"), 0o600);
        let out =
            banger_as(NOBODY, &socket, &["image", "build", "x", "--from-dir", s(&etc), "--kernel-ref", "debian"]).await;
        assert_refused(&out, &etc.join("etc/shadow"));

        // A root-only tarball and ext4 file.
        let tarball = dir.path().join("root.tar");
        std::fs::write(&tarball, [0u8; 1024]).unwrap();
        chmod(&tarball, 0o600);
        let out =
            banger_as(NOBODY, &socket, &["image", "build", "x", "--from-tar", s(&tarball), "--kernel-ref", "debian"])
                .await;
        assert_refused(&out, &tarball);
        let rootfs = dir.path().join("root.ext4");
        std::fs::copy(daemon.state_dir().join("kernels/debian/initrd.img"), &rootfs).unwrap();
        chmod(&rootfs, 0o600);
        let out =
            banger_as(NOBODY, &socket, &["image", "register", "x", "--rootfs", s(&rootfs), "--kernel-ref", "debian"])
                .await;
        assert_refused(&out, &rootfs);

        // Nothing is left: no image, no staging directory.
        assert_eq!(entries(&daemon, "images"), Vec::<String>::new());
        assert!(daemon.client.images().await.unwrap().is_empty());

        // Root may, as before.
        let out =
            banger_as(0, &socket, &["image", "build", "as-root", "--from-dir", s(&etc), "--kernel-ref", "debian"])
                .await;
        assert!(out.status.success(), "root builds from a tree with a root-only file: {}", stderr(&out));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nobody_builds_from_a_tree_it_can_read() {
    banger_testkit::with_timeout(TEST_TIMEOUT, async {
        let Some(daemon) = daemon().await else { return };
        let socket = daemon.config.socket.clone();
        let dir = open_tempdir();
        let tree = readable_tree(dir.path());
        let out =
            banger_as(NOBODY, &socket, &["image", "build", "mine", "--from-dir", s(&tree), "--kernel-ref", "debian"])
                .await;
        assert!(out.status.success(), "nobody builds from its own tree: {}", stderr(&out));

        // The image holds the tree, its link a link.
        let rootfs = daemon.state_dir().join("images/mine/rootfs.ext4");
        let cat =
            std::process::Command::new("debugfs").args(["-R", "cat /etc/hostname"]).arg(&rootfs).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&cat.stdout), "built-by-nobody\n");
        let stat = std::process::Command::new("debugfs").args(["-R", "stat /etc/name"]).arg(&rootfs).output().unwrap();
        assert!(
            String::from_utf8_lossy(&stat.stdout).contains("Type: symlink"),
            "{}",
            String::from_utf8_lossy(&stat.stdout)
        );
        assert_eq!(entries(&daemon, "images"), ["mine"]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nobody_cannot_import_a_kernel_only_root_can_read() {
    banger_testkit::with_timeout(TEST_TIMEOUT, async {
        let Some(daemon) = daemon().await else { return };
        let socket = daemon.config.socket.clone();
        let dir = open_tempdir();
        let vmlinux = dir.path().join("vmlinux");
        std::fs::copy(daemon.state_dir().join("kernels/debian/vmlinux"), &vmlinux).unwrap();
        chmod(&vmlinux, 0o600);
        let before = entries(&daemon, "kernels");

        let out = banger_as(NOBODY, &socket, &["kernel", "import", "k", "--vmlinux", s(&vmlinux)]).await;
        assert_refused(&out, &vmlinux);
        // A readable kernel with a root-only modules directory.
        let modules = dir.path().join("modules");
        std::fs::create_dir(&modules).unwrap();
        chmod(&modules, 0o700);
        let readable = dir.path().join("vmlinux-readable");
        std::fs::copy(&vmlinux, &readable).unwrap();
        chmod(&readable, 0o644);
        let out =
            banger_as(NOBODY, &socket, &["kernel", "import", "k", "--vmlinux", s(&readable), "--modules", s(&modules)])
                .await;
        assert_refused(&out, &modules);
        assert_eq!(entries(&daemon, "kernels"), before, "nothing is left");

        let out = banger_as(0, &socket, &["kernel", "import", "k", "--vmlinux", s(&vmlinux)]).await;
        assert!(out.status.success(), "root imports a root-only kernel: {}", stderr(&out));
        let out = banger_as(NOBODY, &socket, &["kernel", "import", "k2", "--vmlinux", s(&readable)]).await;
        assert!(out.status.success(), "nobody imports a kernel it can read: {}", stderr(&out));
    })
    .await;
}
