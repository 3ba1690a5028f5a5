//! One `bangerd` for `banger-bench vm`, under its own state root, with the
//! Debian kernel imported and the `tiny` image built, driven through the
//! release-built `banger` CLI as a user would.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Instant, SystemTime};

use anyhow::{ensure, Context};
use banger_api::{Image, Kernel, Vm};
use serde::de::DeserializeOwned;

use crate::daemon::{self, DaemonCommand, DaemonProcess};

/// The kernel and image names the benchmark creates.
pub const KERNEL: &str = "debian";
pub const IMAGE: &str = "tiny";

/// The binaries and inputs every stack shares.
pub struct Inputs {
    pub bangerd: PathBuf,
    pub banger: PathBuf,
    pub agent: PathBuf,
    pub deb: PathBuf,
}

/// A running bangerd with the kernel and image in its store.
pub struct Stack {
    daemon: DaemonProcess,
    banger: PathBuf,
    socket: PathBuf,
    no_config: PathBuf,
    /// Its state root.
    pub state_dir: PathBuf,
    /// Its run directory (one sub-directory per running VM).
    pub run_dir: PathBuf,
    /// bangerd's log (stdout and stderr).
    pub log: PathBuf,
}

/// One timed CLI run, by the benchmark's clock and by the wall clock (to
/// line up with bangerd's log).
pub struct Timed {
    pub seconds: f64,
    pub started_at: SystemTime,
    pub ended_at: SystemTime,
}

impl Stack {
    /// Starts bangerd with its files under `dir` and its state root at
    /// `state_dir`, then imports the kernel and builds the image.
    pub fn start(inputs: &Inputs, dir: &Path, state_dir: &Path) -> anyhow::Result<Stack> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        std::fs::create_dir_all(state_dir).with_context(|| format!("cannot create {}", state_dir.display()))?;
        let run_dir = dir.join("run");
        let config = dir.join("bangerd.toml");
        let text = format!(
            // The bare side has no NIC either.
            "run_dir = {}\n\n[vms]\nvmm = \"qemu\"\nagent_binary = {}\n\n[network]\nenabled = false\n",
            toml_string(&run_dir),
            toml_string(&inputs.agent)
        );
        std::fs::write(&config, text).with_context(|| format!("cannot write {}", config.display()))?;
        let socket = dir.join("bangerd.sock");
        let log = dir.join("bangerd.log");
        let daemon = DaemonProcess::start(&DaemonCommand {
            bangerd: inputs.bangerd.clone(),
            socket: socket.clone(),
            state_dir: state_dir.to_owned(),
            config,
            log: log.clone(),
            args: Vec::new(),
            // "starting QEMU" (debug) marks the moment QEMU is spawned.
            env: vec![("RUST_LOG".into(), "info,banger_vmm=debug".into())],
        })?;
        let stack = Stack {
            daemon,
            banger: inputs.banger.clone(),
            socket,
            no_config: dir.join("no-config.toml"),
            state_dir: state_dir.to_owned(),
            run_dir,
            log,
        };
        eprintln!("  importing the kernel from {}...", inputs.deb.display());
        stack.run(&["kernel", "import", KERNEL, "--deb", &inputs.deb.display().to_string(), "--force"])?;
        eprintln!("  building the {IMAGE} image...");
        stack.run(&["image", "build", IMAGE, "--recipe", "tiny", "--kernel-ref", KERNEL, "--force"])?;
        Ok(stack)
    }

    /// Runs `banger ARGS` and fails unless it succeeds.
    pub fn run(&self, args: &[&str]) -> anyhow::Result<Output> {
        let output = self.command(args).output().context("cannot run banger")?;
        ensure!(
            output.status.success(),
            "banger {} failed ({}): {}\nbangerd log:\n{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim(),
            self.daemon.log_tail()
        );
        Ok(output)
    }

    /// Runs `banger ARGS` and times it.
    pub fn timed(&self, args: &[&str]) -> anyhow::Result<Timed> {
        let mut command = self.command(args);
        let started_at = SystemTime::now();
        let started = Instant::now();
        let output = command.output().context("cannot run banger")?;
        let seconds = started.elapsed().as_secs_f64();
        let ended_at = SystemTime::now();
        ensure!(
            output.status.success(),
            "banger {} failed ({}): {}\nbangerd log:\n{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim(),
            self.daemon.log_tail()
        );
        Ok(Timed { seconds, started_at, ended_at })
    }

    /// `banger --json ARGS`, parsed.
    pub fn json<T: DeserializeOwned>(&self, args: &[&str]) -> anyhow::Result<T> {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let output = self.run(&all)?;
        serde_json::from_slice(&output.stdout).with_context(|| format!("banger {} printed no JSON", args.join(" ")))
    }

    /// bangerd's process id.
    pub fn daemon_pid(&self) -> u32 {
        self.daemon.pid()
    }

    pub fn kernel(&self) -> anyhow::Result<Kernel> {
        self.json(&["kernel", "show", KERNEL])
    }

    pub fn image(&self) -> anyhow::Result<Image> {
        self.json(&["image", "show", IMAGE])
    }

    pub fn vm(&self, name: &str) -> anyhow::Result<Vm> {
        self.json(&["vm", "show", name])
    }

    /// `banger ARGS` against this stack's daemon, not started yet.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.banger);
        command.arg("--socket").arg(&self.socket).args(args).stdin(Stdio::null());
        daemon::isolate(&mut command, &self.no_config);
        command
    }
}

impl Drop for Stack {
    /// VMs outlive their daemon, so kill any this run left (after a failure).
    fn drop(&mut self) {
        for entry in std::fs::read_dir(&self.run_dir).into_iter().flatten().flatten() {
            crate::bare::kill_vmm(&entry.path());
        }
    }
}

/// A path as a TOML basic string.
fn toml_string(path: &Path) -> String {
    serde_json::to_string(&path.display().to_string()).expect("a string serializes")
}
