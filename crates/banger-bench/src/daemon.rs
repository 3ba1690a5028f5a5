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

/// How to run one `bangerd`.
pub struct DaemonCommand {
    /// The release-built `bangerd`.
    pub bangerd: PathBuf,
    /// Its API socket.
    pub socket: PathBuf,
    /// Its state root.
    pub state_dir: PathBuf,
    /// Its config file (`BANGER_CONFIG`); a path that does not exist means none.
    pub config: PathBuf,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
    /// Further arguments.
    pub args: Vec<std::ffi::OsString>,
    /// Further environment variables.
    pub env: Vec<(String, String)>,
}

/// A running `bangerd`.
pub struct DaemonProcess {
    child: Child,
    log: PathBuf,
}

impl DaemonProcess {
    /// Starts `bangerd` as `command` describes; returns once the socket
    /// accepts connections.
    pub fn start(command: &DaemonCommand) -> anyhow::Result<DaemonProcess> {
        let log = &command.log;
        let out = File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
        let err = out.try_clone().context("cannot share the log file")?;
        let mut process = Command::new(&command.bangerd);
        process
            .arg("--socket")
            .arg(&command.socket)
            .arg("--state-dir")
            .arg(&command.state_dir)
            .args(&command.args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        isolate(&mut process, &command.config);
        // Plain log lines (no colour codes), so timestamps can be parsed.
        process.env("NO_COLOR", "1");
        for (key, value) in &command.env {
            process.env(key, value);
        }
        let child = process.spawn().with_context(|| format!("cannot start {}", command.bangerd.display()))?;
        let mut daemon = DaemonProcess { child, log: log.to_owned() };
        daemon.wait_for_socket(&command.socket)?;
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

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
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
/// `config` is the benchmark's own config file, or a path that does not exist.
pub fn isolate(command: &mut Command, config: &Path) {
    command.env("BANGER_CONFIG", config).env_remove("BANGER_SOCKET").env_remove("BANGER_STATE_DIR");
}
