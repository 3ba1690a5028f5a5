//! `banger-agent`: the guest agent inside every banger image. It runs the
//! host's commands over a virtio-serial port or vsock (no guest networking
//! needed) and, as the guest's init, prepares the guest and reaps orphans.
//!
//! Usage: `banger-agent [--port DEVICE | --listen-unix PATH]`. Without a
//! flag the channel is found in the guest; the flags are for testing.

mod channel;
mod decoder;
mod exec;
mod init;
mod log;
mod outbox;
mod reaper;
mod serve;
mod sys;

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};

use crate::channel::Channel;
use crate::log::log;
use crate::reaper::Reaper;
use crate::serve::Agent;

const USAGE: &str = "usage: banger-agent [--port DEVICE | --listen-unix PATH]";

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

/// Init gets the kernel command line's leftover words, which need not be
/// UTF-8: such a word is no flag of ours, so it is ignored. Paths may be anything.
fn parse_args(mut args: impl Iterator<Item = OsString>) -> Result<Mode, String> {
    let mut mode = Mode::Discover;
    while let Some(arg) = args.next() {
        let Some(arg) = arg.to_str() else {
            log!("ignoring an argument that is not UTF-8: {arg:?}");
            continue;
        };
        let mut value = || args.next().map(PathBuf::from).ok_or(format!("{arg} needs a path"));
        mode = match arg {
            "--port" => Mode::Port(value()?),
            "--listen-unix" => Mode::ListenUnix(value()?),
            _ => return Err(format!("unknown argument {arg:?}")),
        };
    }
    Ok(mode)
}

fn main() {
    let is_init = std::process::id() == 1;
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    if args.iter().any(|a| a == "--version") {
        println!("banger-agent {}", env!("CARGO_PKG_VERSION"));
        return;
    }
    let mode = match parse_args(args.into_iter()) {
        Ok(mode) => mode,
        // The kernel hands init any command-line word it does not know: never die of it.
        Err(message) if is_init => {
            log!("{message}; ignored");
            Mode::Discover
        }
        Err(message) => {
            eprintln!("{message}\n{USAGE}");
            std::process::exit(2);
        }
    };
    if is_init {
        init::setup();
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            log!("cannot start the runtime: {e}");
            return keep_init_alive(is_init);
        }
    };
    if let Err(e) = runtime.block_on(run(mode, is_init)) {
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

async fn run(mode: Mode, is_init: bool) -> std::io::Result<()> {
    let agent = Arc::new(Agent { reaper: Reaper::start()?, is_init });
    if is_init {
        tokio::spawn(power_off_on_signal());
    }
    match mode {
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

    fn parse(args: &[&str]) -> Result<Mode, String> {
        parse_args(args.iter().map(OsString::from))
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
            parse_args(args.into_iter()),
            Ok(Mode::Port(PathBuf::from(OsString::from_vec(b"/dev/\xff".to_vec()))))
        );
    }
}
