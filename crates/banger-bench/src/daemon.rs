//! A release-built `bangerd` run as a child process under a temporary
//! state root, stopped with SIGTERM when dropped.

use std::fs::File;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

const START_TIMEOUT: Duration = Duration::from_secs(15);
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// A running `bangerd`.
pub struct DaemonProcess {
    child: Child,
    log: PathBuf,
}

impl DaemonProcess {
    /// Starts `bangerd` with `socket`, `state_dir` and `catalog`, its output
    /// going to `log`; returns once the socket accepts connections.
    pub fn start(
        bangerd: &Path,
        socket: &Path,
        state_dir: &Path,
        catalog: &Path,
        log: &Path,
        no_config: &Path,
    ) -> anyhow::Result<DaemonProcess> {
        let out = File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
        let err = out.try_clone().context("cannot share the log file")?;
        let mut command = Command::new(bangerd);
        command
            .arg("--socket")
            .arg(socket)
            .arg("--state-dir")
            .arg(state_dir)
            .arg("--catalog")
            .arg(catalog)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        isolate(&mut command, no_config);
        let child = command.spawn().with_context(|| format!("cannot start {}", bangerd.display()))?;
        let mut daemon = DaemonProcess { child, log: log.to_owned() };
        daemon.wait_for_socket(socket)?;
        Ok(daemon)
    }

    fn wait_for_socket(&mut self, socket: &Path) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if UnixStream::connect(socket).is_ok() {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait().context("cannot check on bangerd")? {
                bail!("bangerd exited ({status}) before listening; its log:\n{}", self.log_tail());
            }
            if Instant::now() > deadline {
                bail!(
                    "bangerd did not listen on {} within {START_TIMEOUT:?}; its log:\n{}",
                    socket.display(),
                    self.log_tail()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The last lines bangerd wrote, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for DaemonProcess {
    /// SIGTERM, then wait for a clean exit; SIGKILL only if it hangs.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        eprintln!("bangerd ignored SIGTERM for {STOP_TIMEOUT:?}; killing it");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Keeps the host's banger configuration out of a benchmark process:
/// `no_config` is a config path that does not exist.
pub fn isolate(command: &mut Command, no_config: &Path) {
    command.env("BANGER_CONFIG", no_config).env_remove("BANGER_SOCKET").env_remove("BANGER_STATE_DIR");
}
