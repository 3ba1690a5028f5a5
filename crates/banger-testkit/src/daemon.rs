//! A whole daemon in-process, on a temporary socket and state root.

use std::path::{Path, PathBuf};
use std::time::Duration;

use banger_api::{CatalogEntry, KernelCatalog};
use banger_client::Client;
use bangerd::Config;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::shared_kernel::SharedKernel;

/// A running daemon; dropping it stops it and removes its root.
pub struct TestDaemon {
    /// Root of everything it owns: `state/`, `bangerd.sock`, `catalog.json`.
    pub root: tempfile::TempDir,
    /// Its configuration.
    pub config: Config,
    /// A client for it.
    pub client: Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestDaemon {
    /// Starts a daemon whose only extra catalog is `<root>/catalog.json`
    /// (initially empty; see [`TestDaemon::set_catalog`]).
    pub async fn start() -> TestDaemon {
        Self::start_with(|_| {}).await
    }

    /// Starts a daemon after `adjust` has changed its configuration.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> TestDaemon {
        Self::start_prepared(adjust, |_| {}).await
    }

    /// Starts a daemon that has the shared Debian kernel as
    /// [`shared_kernel::NAME`](crate::shared_kernel::NAME), adopted from its
    /// state root at start rather than imported again.
    pub async fn start_with_kernel(kernel: &SharedKernel, adjust: impl FnOnce(&mut Config)) -> TestDaemon {
        Self::start_prepared(adjust, |config| kernel.install(&config.state_dir)).await
    }

    /// Starts a daemon after `adjust` has changed its configuration and
    /// `prepare` has put files under its state root.
    async fn start_prepared(adjust: impl FnOnce(&mut Config), prepare: impl FnOnce(&Config)) -> TestDaemon {
        let root = tempfile::tempdir().expect("temp dir");
        let mut config = Config::new(root.path().join("state"), root.path().join("bangerd.sock"));
        config.run_dir = root.path().join("run");
        // Tests run in the machine's own network namespace, which must
        // never get a bridge, routes or NAT: networking only where a test
        // turns it on inside a namespace of its own.
        config.network.enabled = false;
        let catalog = root.path().join("catalog.json");
        config.catalogs.push(catalog.display().to_string());
        adjust(&mut config);
        prepare(&config);
        let mut daemon = TestDaemon { client: Client::new(&config.socket), root, config, stop: None, task: None };
        daemon.set_catalog(Vec::new());
        daemon.launch().await;
        daemon
    }

    /// Starts a second daemon on the same root (after `stop`).
    pub async fn restart(&mut self) {
        assert!(self.task.is_none(), "stop the daemon first");
        self.launch().await;
    }

    async fn launch(&mut self) {
        let prepared = bangerd::prepare(self.config.clone()).await.expect("daemon starts");
        let (stop, stopped) = oneshot::channel::<()>();
        self.task = Some(tokio::spawn(prepared.serve(async move {
            let _ = stopped.await;
        })));
        self.stop = Some(stop);
    }

    /// Stops the daemon gracefully and waits for it.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("daemon stops within 30 s")
                .expect("daemon task")
                .expect("daemon serves without error");
        }
    }

    /// Replaces the test catalog's entries.
    pub fn set_catalog(&self, entries: Vec<CatalogEntry>) {
        let catalog = KernelCatalog { version: 1, entries };
        std::fs::write(self.catalog_path(), serde_json::to_vec_pretty(&catalog).unwrap()).unwrap();
    }

    /// The test catalog file.
    pub fn catalog_path(&self) -> PathBuf {
        self.root.path().join("catalog.json")
    }

    /// The state root.
    pub fn state_dir(&self) -> &Path {
        &self.config.state_dir
    }

    /// Names of everything in `<state>/kernels`, hidden entries included,
    /// sorted: what a failed pull must leave untouched.
    pub fn kernel_dir_entries(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.state_dir().join("kernels"))
            .map(|dir| dir.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        names.sort();
        names
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // VMs outlive their daemon by design; a test that failed before
        // removing its VMs must not leave their VMMs running.
        kill_processes_naming(self.root.path());
        if self.config.run_dir.starts_with(self.root.path()) {
            return;
        }
        kill_processes_naming(&self.config.run_dir);
    }
}

/// SIGKILLs every process whose command line names `dir` (a test's own
/// temporary directory, so nothing outside the test is touched).
pub fn kill_processes_naming(dir: &Path) {
    let needle = dir.as_os_str().as_encoded_bytes();
    let Ok(entries) = std::fs::read_dir("/proc") else { return };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        if pid == std::process::id() as i32 {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        if cmdline.windows(needle.len()).any(|w| w == needle) {
            if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }
}
