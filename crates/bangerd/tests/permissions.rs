//! Least privilege: the state root is readable by root alone, whatever made
//! it, and what a caller names on the host is read with the caller's rights.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use banger_api::{ImageRegisterRequest, KernelImportKind, KernelImportRequest, VmCreateRequest};
use banger_testkit::requests::{succeed, tiny_image, vm};
use banger_testkit::TestDaemon;
use banger_vmm::local::{Local, LocalFaults};

/// Every test here ends within this (the first may fetch Debian's kernel
/// package and build the static agent).
const TEST_TIMEOUT: Duration = Duration::from_secs(600);

/// Every file and directory under `root` (not following links) that group
/// or others may read, write or search, with its mode; sockets apart.
fn open_to_others(root: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        if meta.file_type().is_socket() || meta.file_type().is_symlink() {
            continue;
        }
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            found.push(format!("{:o} {}", mode, path.strip_prefix(root).unwrap().display()));
        }
        if meta.is_dir() {
            stack.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        }
    }
    found.sort();
    found
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A daemon on the test driver (VMs are the agent as a host process).
async fn daemon(agent: &Path) -> TestDaemon {
    let agent = agent.to_owned();
    TestDaemon::start_with(|c| {
        c.agent_binary = Some(agent.clone());
        c.test_driver = Some(Local { agent, faults: LocalFaults::default() });
        c.boot_timeout = Duration::from_secs(10);
    })
    .await
}

fn import(name: &str, path: &Path, kind: Option<KernelImportKind>, modules: Option<&Path>) -> KernelImportRequest {
    KernelImportRequest {
        name: name.into(),
        path: path.display().to_string(),
        kind,
        modules_dir: modules.map(|m| m.display().to_string()),
        force: false,
    }
}

#[tokio::test]
async fn the_state_root_is_readable_by_root_only() {
    if !banger_testkit::require("root, to build images", banger_testkit::is_root()) {
        return;
    }
    banger_testkit::with_timeout(TEST_TIMEOUT, async {
        let Some(deb) = tokio::task::spawn_blocking(banger_testkit::debian::cloud_kernel_deb).await.unwrap() else {
            return;
        };
        let agent = tokio::task::spawn_blocking(banger_testkit::guest::agent_binary).await.unwrap();
        let mut daemon = daemon(&agent).await;
        let client = daemon.client.clone();
        let state = daemon.state_dir().to_path_buf();

        succeed(&client, client.import_kernel(&import("k", &deb, None, None)).await.unwrap()).await;
        // A vmlinux and a modules tree given separately, both readable by
        // anyone where they are.
        let sources = tempfile::tempdir().unwrap();
        let vmlinux = sources.path().join("vmlinux");
        std::fs::copy(state.join("kernels/k/vmlinux"), &vmlinux).unwrap();
        chmod(&vmlinux, 0o644);
        let release = client.kernel("k").await.unwrap().kernel_version.expect("the package names its release");
        let modules = sources.path().join(release);
        copy_tree(&state.join("kernels/k/modules"), &modules, 0o644);
        let request = import("k2", &vmlinux, Some(KernelImportKind::Vmlinux), Some(&modules));
        succeed(&client, client.import_kernel(&request).await.unwrap()).await;

        succeed(&client, client.build_image(&tiny_image("tiny", "k")).await.unwrap()).await;
        let rootfs = sources.path().join("rootfs.ext4");
        std::fs::copy(state.join("images/tiny/rootfs.ext4"), &rootfs).unwrap();
        chmod(&rootfs, 0o600);
        let register =
            ImageRegisterRequest { name: "reg".into(), rootfs: rootfs.display().to_string(), ..register_defaults() };
        succeed(&client, client.register_image(&register).await.unwrap()).await;

        let vm = VmCreateRequest { work_disk_bytes: Some(1 << 20), no_start: true, ..vm("v1", "reg") };
        succeed(&client, client.create_vm(&vm).await.unwrap()).await;
        assert!(state.join("vms/v1").is_dir());

        assert_eq!(open_to_others(&state), Vec::<String>::new(), "after import, build, register and create");
        let socket = std::fs::metadata(&daemon.config.socket).unwrap().permissions().mode() & 0o777;
        assert_eq!(socket, 0o660, "the socket keeps its documented mode");

        // What an older banger left: everything 0644 in 0755 directories.
        daemon.stop().await;
        for path in walk(&state) {
            chmod(&path, if path.is_dir() { 0o755 } else { 0o644 });
        }
        assert!(!open_to_others(&state).is_empty());
        daemon.restart().await;
        assert_eq!(open_to_others(&state), Vec::<String>::new(), "a restarted daemon tightens an older state root");
        client.health().await.unwrap();
    })
    .await;
}

fn register_defaults() -> ImageRegisterRequest {
    ImageRegisterRequest { name: String::new(), rootfs: String::new(), kernel: "k".into(), init: None, force: false }
}

/// Every file and directory under `root`, links left out.
fn walk(root: &Path) -> Vec<PathBuf> {
    let mut all = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        if meta.is_dir() {
            stack.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        }
        if meta.is_dir() || meta.is_file() {
            all.push(path);
        }
    }
    all
}

/// Copies a tree of files and directories, files with `mode`, directories 0755.
fn copy_tree(from: &Path, to: &Path, mode: u32) {
    std::fs::create_dir_all(to).unwrap();
    chmod(to, 0o755);
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            copy_tree(&entry.path(), &dest, mode);
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(entry.path()).unwrap(), &dest).unwrap();
        } else {
            std::fs::copy(entry.path(), &dest).unwrap();
            chmod(&dest, mode);
        }
    }
}
