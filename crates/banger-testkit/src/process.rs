//! The real `bangerd` binary as a child process under a temporary root,
//! for tests that look at what a user would: its memory, its open files,
//! its log and its exit status.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use banger_client::Client;

/// A running `bangerd` child with its own state root, run dir and socket.
pub struct DaemonProcess {
    /// The child; its stderr (the log) goes to [`DaemonProcess::log_path`].
    pub child: Child,
    /// A client on its socket.
    pub client: Client,
    /// The temporary root holding state, run dir, socket and log.
    pub root: tempfile::TempDir,
    binary: PathBuf,
    state_dir: PathBuf,
}

/// Spawns `binary` on the config in `root`, its log appended to `root/bangerd.log`.
fn spawn(binary: &Path, root: &Path) -> Child {
    let log = std::fs::File::options().create(true).append(true).open(root.join("bangerd.log")).expect("log file");
    Command::new(binary)
        .arg("--config")
        .arg(root.join("config.toml"))
        .env_remove("BANGER_SOCKET")
        .env_remove("BANGER_STATE_DIR")
        .env_remove("BANGER_CONFIG")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn bangerd")
}

impl DaemonProcess {
    /// Starts `binary` (the test's `env!("CARGO_BIN_EXE_bangerd")`) with
    /// `config` (TOML lines) added to a config naming its own paths, and
    /// waits until it answers.
    pub async fn start(binary: &Path, config: &str) -> DaemonProcess {
        Self::start_with_state(binary, None, config).await
    }

    /// As [`DaemonProcess::start`], with the state root at `state_dir`
    /// when given (on a small loop filesystem, say) instead of in its root.
    pub async fn start_with_state(binary: &Path, state_dir: Option<&Path>, config: &str) -> DaemonProcess {
        let root = tempfile::tempdir().expect("temp root");
        let path = |name: &str| root.path().join(name).display().to_string();
        let state = state_dir.map_or_else(|| path("state"), |dir| dir.display().to_string());
        let file = root.path().join("config.toml");
        // Tests run in the machine's own network namespace, which must
        // never get a bridge, routes or NAT: networking is off unless the
        // test's config has a `[network]` table (inside its own namespace).
        let network = if config.contains("[network]") { "" } else { "[network]\nenabled = false\n" };
        let text = format!(
            "socket = {:?}\nstate_dir = {:?}\nrun_dir = {:?}\n{config}\n{network}",
            path("bangerd.sock"),
            state,
            path("run")
        );
        std::fs::write(&file, text).expect("write config");
        let child = spawn(binary, root.path());
        let client = Client::new(root.path().join("bangerd.sock"));
        let mut daemon = DaemonProcess { child, client, root, binary: binary.to_owned(), state_dir: state.into() };
        daemon.wait_ready().await;
        daemon
    }

    /// Starts the binary again on the same root and config, once the last
    /// one has exited, and waits until it answers; panics with its log if
    /// it exits instead.
    pub async fn restart(&mut self) {
        assert!(self.child.try_wait().expect("wait").is_some(), "the daemon still runs");
        self.child = spawn(&self.binary, self.root.path());
        self.wait_ready().await;
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.client.health().await.is_ok() {
                return;
            }
            if let Some(status) = self.child.try_wait().expect("wait") {
                panic!("bangerd exited early with {status}; its log:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("bangerd did not answer within 20 s; its log:\n{}", self.log());
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its state root.
    pub fn state_dir(&self) -> PathBuf {
        self.state_dir.clone()
    }

    /// Where its log goes.
    pub fn log_path(&self) -> PathBuf {
        self.root.path().join("bangerd.log")
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Its resident memory now, in KiB (`VmRSS`).
    pub fn rss_kib(&self) -> u64 {
        self.status_kib("VmRSS:")
    }

    /// The most resident memory it has had, in KiB (`VmHWM`).
    pub fn peak_rss_kib(&self) -> u64 {
        self.status_kib("VmHWM:")
    }

    fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("read its status");
        status
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in its status"))
    }

    /// How many files it has open.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid())).map(|d| d.count()).unwrap_or(0)
    }

    /// Sends SIGTERM and waits (at most 30 s) for it to exit.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal_and_wait(rustix::process::Signal::TERM)
    }

    /// Sends SIGKILL and waits for it to be gone.
    pub fn kill(&mut self) -> ExitStatus {
        self.signal_and_wait(rustix::process::Signal::KILL)
    }

    fn signal_and_wait(&mut self, signal: rustix::process::Signal) -> ExitStatus {
        let pid = rustix::process::Pid::from_raw(self.pid() as i32).expect("a child's pid is positive");
        rustix::process::kill_process(pid, signal).expect("signal bangerd");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "bangerd did not stop within 30 s of {signal:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // VMMs outlive their daemon by design; a test that failed before
        // removing its VMs must not leave them running.
        crate::daemon::kill_processes_naming(self.root.path());
        if !self.state_dir.starts_with(self.root.path()) {
            crate::daemon::kill_processes_naming(&self.state_dir);
        }
    }
}

/// The `bangerd` binary of this build, for tests outside the bangerd
/// package (which have no `CARGO_BIN_EXE_bangerd`): built now if need be,
/// with the profile the tests were built with.
pub fn bangerd_binary() -> PathBuf {
    static BUILT: std::sync::Mutex<Option<PathBuf>> = std::sync::Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(path) = built.as_ref() {
        return path.clone();
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let target_dir = crate::cache::target_dir();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let release = !cfg!(debug_assertions);
    let mut command = Command::new(cargo);
    command.args(["build", "-p", "bangerd", "--bin", "bangerd"]).env("CARGO_TARGET_DIR", &target_dir);
    if release {
        command.arg("--release");
    }
    let status = command.current_dir(&workspace).status().expect("run cargo to build bangerd");
    assert!(status.success(), "building bangerd failed");
    let path = target_dir.join(if release { "release" } else { "debug" }).join("bangerd");
    assert!(path.is_file(), "no bangerd at {}", path.display());
    *built = Some(path.clone());
    path
}
