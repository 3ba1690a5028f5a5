//! `banger-agent`: the guest agent inside every banger image. It serves the
//! host over a virtio-serial port or vsock (no guest networking needed):
//! commands, terminal sessions that outlive every connection, file copies,
//! stats and listening ports; as the guest's init it also prepares the
//! guest and reaps orphans. In a guest (as init or under systemd) it first
//! configures the network the kernel command line gives (`banger.net=`).
//!
//! Usage: `banger-agent [--port DEVICE | --listen-unix PATH] [--sessions-dir DIR] [--protocol N]`.
//! Without a channel flag the channel is found in the guest; the flags are
//! for testing, and for a host process standing in for a guest.

mod channel;
mod connect;
mod copy;
mod decoder;
mod exec;
mod init;
mod log;
mod net;
mod netlink;
mod output;
mod ports;
mod pty;
mod reaper;
mod requests;
mod serve;
mod session;
mod spawn;
mod stats;
mod sys;
mod user;

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};

use crate::channel::Channel;
use crate::log::log;
use crate::reaper::Reaper;
use crate::serve::Agent;
use crate::session::Sessions;

const USAGE: &str = "usage: banger-agent [--port DEVICE | --listen-unix PATH] [--sessions-dir DIR] [--protocol N]";

/// Where sessions keep their state and logs in a guest.
const GUEST_SESSIONS_DIR: &str = "/run/banger/sessions";

/// Where to serve the host.
#[derive(Debug, PartialEq, Eq)]
enum Mode {
    /// Find the guest's port or vsock, retrying for ever.
    Discover,
    /// A given virtio-serial port device.
    Port(PathBuf),
    /// Each connection to a unix socket (on a host, for tests).
    ListenUnix(PathBuf),
}

/// What the command line says.
#[derive(Debug, PartialEq, Eq)]
struct Options {
    mode: Mode,
    sessions_dir: Option<PathBuf>,
    /// Speak this protocol version only (tests of version negotiation
    /// stand in for an agent of another banger with it).
    protocol: Option<u32>,
}

impl Options {
    /// Sessions live under `/run/banger/sessions` in a guest. An agent on a
    /// unix socket is a host process standing in for a guest: its sessions
    /// go next to its socket, never into the host's own `/run/banger`.
    fn sessions_dir(&self) -> PathBuf {
        match (&self.sessions_dir, &self.mode) {
            (Some(dir), _) => dir.clone(),
            (None, Mode::ListenUnix(socket)) => {
                let mut dir = socket.clone().into_os_string();
                dir.push(".sessions");
                PathBuf::from(dir)
            }
            (None, _) => PathBuf::from(GUEST_SESSIONS_DIR),
        }
    }
}

/// Init gets the kernel command line's leftover words, which need not be
/// UTF-8: such a word is no flag of ours, so it is ignored. Paths may be anything.
fn parse_args(mut args: impl Iterator<Item = OsString>) -> Result<Options, String> {
    let mut options = Options { mode: Mode::Discover, sessions_dir: None, protocol: None };
    while let Some(arg) = args.next() {
        let Some(arg) = arg.to_str() else {
            log!("ignoring an argument that is not UTF-8: {arg:?}");
            continue;
        };
        let mut value = || args.next().map(PathBuf::from).ok_or(format!("{arg} needs a path"));
        match arg {
            "--port" => options.mode = Mode::Port(value()?),
            "--listen-unix" => options.mode = Mode::ListenUnix(value()?),
            "--sessions-dir" => options.sessions_dir = Some(value()?),
            "--protocol" => {
                let version = args.next().and_then(|v| v.to_str()?.parse().ok());
                options.protocol = Some(version.ok_or("--protocol needs a version number")?);
            }
            _ => return Err(format!("unknown argument {arg:?}")),
        }
    }
    Ok(options)
}

fn main() {
    let is_init = std::process::id() == 1;
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    if args.iter().any(|a| a == "--version") {
        println!("banger-agent {}", env!("CARGO_PKG_VERSION"));
        return;
    }
    let options = match parse_args(args.into_iter()) {
        Ok(options) => options,
        // The kernel hands init any command-line word it does not know: never die of it.
        Err(message) if is_init => {
            log!("{message}; ignored");
            Options { mode: Mode::Discover, sessions_dir: None, protocol: None }
        }
        Err(message) => {
            eprintln!("{message}\n{USAGE}");
            std::process::exit(2);
        }
    };
    if is_init {
        init::setup();
    }
    // Only in a guest: an agent on a unix socket is a host process (the
    // test driver), whose network is the host's.
    if is_init || !matches!(options.mode, Mode::ListenUnix(_)) {
        net::setup_from_cmdline();
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            log!("cannot start the runtime: {e}");
            return keep_init_alive(is_init);
        }
    };
    if let Err(e) = runtime.block_on(run(options, is_init)) {
        log!("{e}");
    }
    if is_init {
        // Init must not exit (the kernel would panic); keep reaping.
        runtime.block_on(std::future::pending::<()>());
    }
    std::process::exit(1);
}

fn keep_init_alive(is_init: bool) {
    if !is_init {
        std::process::exit(1);
    }
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

async fn run(options: Options, is_init: bool) -> std::io::Result<()> {
    let reaper = Reaper::start()?;
    let sessions = Sessions::load(&options.sessions_dir(), reaper.clone());
    let agent = Arc::new(Agent { reaper, is_init, sessions, protocol: options.protocol });
    if is_init {
        tokio::spawn(power_off_on_signal());
    }
    match options.mode {
        Mode::ListenUnix(path) => channel::serve_unix(&path, agent).await,
        Mode::Port(path) => channel::serve_port(&path, agent).await,
        Mode::Discover => loop {
            let served = match channel::discover().await {
                Channel::Port(path) => channel::serve_port(&path, agent.clone()).await,
                Channel::Vsock => channel::serve_vsock(agent.clone()).await,
            };
            if let Err(e) = served {
                log!("the channel to the host failed: {e}; trying again");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        },
    }
}

/// Firecracker's SendCtrlAltDel reaches init as SIGINT (ctrl-alt-del is set
/// to 0); an ordinary `kill` as SIGTERM. Either powers the guest off.
async fn power_off_on_signal() {
    let (mut term, mut int) = match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(term), Ok(int)) => (term, int),
        (Err(e), _) | (_, Err(e)) => return log!("cannot watch for shutdown signals: {e}"),
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    match tokio::task::spawn_blocking(init::power_off).await {
        Ok(e) => log!("cannot power off: {e}"),
        Err(e) => log!("cannot power off: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn parse(args: &[&str]) -> Result<Mode, String> {
        parse_args(args.iter().map(OsString::from)).map(|o| o.mode)
    }

    #[test]
    fn arguments_choose_the_channel() {
        assert_eq!(parse(&[]), Ok(Mode::Discover));
        assert_eq!(parse(&["--port", "/dev/vport1p1"]), Ok(Mode::Port("/dev/vport1p1".into())));
        assert_eq!(parse(&["--listen-unix", "/tmp/a.sock"]), Ok(Mode::ListenUnix("/tmp/a.sock".into())));
        assert!(parse(&["--port"]).is_err());
        assert!(parse(&["single"]).is_err());
    }

    #[test]
    fn arguments_that_are_not_utf8_are_skipped() {
        use std::os::unix::ffi::OsStringExt;
        let bad = || OsString::from_vec(b"x=\xff".to_vec());
        let args = [bad(), "--port".into(), OsString::from_vec(b"/dev/\xff".to_vec()), bad()];
        assert_eq!(
            parse_args(args.into_iter()).map(|o| o.mode),
            Ok(Mode::Port(PathBuf::from(OsString::from_vec(b"/dev/\xff".to_vec()))))
        );
    }

    #[test]
    fn sessions_live_in_run_in_a_guest_and_beside_a_test_socket() {
        let options = |args: &[&str]| parse_args(args.iter().map(OsString::from)).unwrap();
        assert_eq!(options(&[]).sessions_dir(), Path::new("/run/banger/sessions"));
        assert_eq!(options(&["--listen-unix", "/tmp/a.sock"]).sessions_dir(), Path::new("/tmp/a.sock.sessions"));
        assert_eq!(
            options(&["--listen-unix", "/tmp/a.sock", "--sessions-dir", "/tmp/s"]).sessions_dir(),
            Path::new("/tmp/s")
        );
    }
}
