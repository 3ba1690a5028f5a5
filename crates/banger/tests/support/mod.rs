//! What the real-guest CLI tests share: a real `bangerd` process (so its
//! memory is its own and it can be killed), a real guest under QEMU, and
//! the built CLI run against them.

#![allow(dead_code, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use banger_testkit::requests::{succeed, tiny_image, vm};
use banger_testkit::DaemonProcess;
use tokio::io::AsyncWriteExt;

/// The whole of a test, preparation included (the first test of a run may
/// build the static agent and bangerd and import the kernel).
pub const TEST_TIMEOUT: Duration = Duration::from_secs(900);

/// A daemon process with the tiny image and a running VM `name`.
pub struct Guest {
    /// The daemon.
    pub daemon: DaemonProcess,
    /// Its socket.
    pub socket: PathBuf,
    /// The VM.
    pub name: String,
    /// The state root (outside the daemon's own root, to hold the kernel).
    pub state: tempfile::TempDir,
}

/// Boots VM `name` (`memory_mib` of memory, a work disk of `work_disk`
/// bytes if any) under a new daemon process; `None` where the host cannot
/// (a SKIP, a failure under CI).
pub async fn guest(name: &str, memory_mib: u32, work_disk: Option<u64>) -> Option<Guest> {
    guest_with_config(name, memory_mib, work_disk, "").await
}

/// [`guest`] with `extra` (TOML) appended to the daemon's config.
pub async fn guest_with_config(name: &str, memory_mib: u32, work_disk: Option<u64>, extra: &str) -> Option<Guest> {
    if !banger_testkit::require("root, to build images", banger_testkit::is_root())
        || !banger_testkit::require("qemu-system-x86_64, to boot a guest", banger_host_has("qemu-system-x86_64"))
    {
        return None;
    }
    let kernel = banger_testkit::debian_kernel().await?;
    let agent = tokio::task::spawn_blocking(banger_testkit::guest::agent_binary).await.unwrap();
    let bangerd = tokio::task::spawn_blocking(banger_testkit::process::bangerd_binary).await.unwrap();
    let state = tempfile::tempdir().unwrap();
    kernel.install(state.path());
    let agent = agent.display().to_string();
    let config = format!("[vms]\nagent_binary = {agent:?}\nvmm = \"qemu\"\nboot_timeout_secs = 300\n{extra}");
    let daemon = DaemonProcess::start_with_state(&bangerd, Some(state.path()), &config).await;
    let client = daemon.client.clone();
    let kernel_name = banger_testkit::shared_kernel::NAME;
    succeed(&client, client.build_image(&tiny_image("tiny", kernel_name)).await.unwrap()).await;
    let request =
        banger_api::VmCreateRequest { memory_mib: Some(memory_mib), work_disk_bytes: work_disk, ..vm(name, "tiny") };
    succeed(&client, client.create_vm(&request).await.unwrap()).await;
    let socket = daemon.root.path().join("bangerd.sock");
    Some(Guest { daemon, socket, name: name.into(), state })
}

fn banger_host_has(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
}

impl Guest {
    /// Runs the CLI with `args`.
    pub async fn banger(&self, args: &[&str]) -> Output {
        self.banger_with_stdin(args, None).await
    }

    /// Runs the CLI with `args` and `input` as its stdin.
    pub async fn banger_with_stdin(&self, args: &[&str], input: Option<&[u8]>) -> Output {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_banger"))
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .env_remove("BANGER_SOCKET")
            .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("run banger");
        if let Some(input) = input {
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(input).await.unwrap();
        }
        child.wait_with_output().await.expect("banger runs")
    }

    /// The CLI with `args`, to spawn (stderr piped, killed when dropped).
    pub fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_banger"));
        command
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .env_remove("BANGER_SOCKET")
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    }

    /// The CLI as a shell command line (`banger --socket ...`), for a terminal to run.
    pub fn cli(&self) -> String {
        format!("'{}' --socket '{}'", env!("CARGO_BIN_EXE_banger"), self.socket.display())
    }

    /// Runs the CLI and asserts it succeeded; returns its stdout.
    pub async fn ok(&self, args: &[&str]) -> String {
        let out = self.banger(args).await;
        assert!(out.status.success(), "banger {args:?} failed ({}): {}", out.status, text(&out.stderr));
        text(&out.stdout)
    }

    /// A command's stdout in the guest (through the client: exec is not
    /// what these tests are about).
    pub async fn exec(&self, argv: &[&str]) -> String {
        let out = self.daemon.client.exec(&self.name, argv, b"").await.expect("exec runs");
        assert_eq!(out.code, Some(0), "{argv:?}: {}", text(&out.stderr));
        text(&out.stdout)
    }

    /// Removes the VM (the daemon process goes with `self`).
    pub async fn remove(self) {
        let client = self.daemon.client.clone();
        succeed(&client, client.remove_vm(&self.name, true).await.unwrap()).await;
    }
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Waits, looking every 100 ms, until `check` gives something; there is
/// no event for what a guest does by itself (a port it opens, the CPU it burns).
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(Instant::now() < deadline, "{what} did not happen within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The JSON a `--json` command printed.
pub fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// A path's parent, as a string.
pub fn display(path: &Path) -> String {
    path.display().to_string()
}
