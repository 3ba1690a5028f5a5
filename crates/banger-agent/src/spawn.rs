//! Starting a process the host asked for: the program looked up on `PATH`,
//! its environment, working directory and user, and its standard streams
//! on pipes or on a new terminal. Every process leads a process group of
//! its own (with a terminal, a session of its own), which signals go to.

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;

use banger_agent_proto::{ErrorKind, ExecRequest, TtySize};
use tokio::net::unix::pipe;
use tokio::sync::oneshot;

use crate::pty::{self, PtyMaster};
use crate::reaper::Reaper;
use crate::requests::Refusal;
use crate::user::Account;

/// `TERM` for a terminal when the host names none.
pub(crate) const DEFAULT_TERM: &str = "xterm-256color";

/// A started process.
pub(crate) struct Child {
    /// Its pid, which is also its process group's id.
    pub(crate) pid: u32,
    pub(crate) io: ChildIo,
    /// Its exit status, once reaped.
    pub(crate) exit: oneshot::Receiver<ExitStatus>,
}

/// The agent's ends of a process's standard streams.
pub(crate) enum ChildIo {
    Pipes {
        stdin: pipe::Sender,
        stdout: pipe::Receiver,
        stderr: pipe::Receiver,
    },
    /// A terminal: input and all output go through its master.
    Pty(Arc<PtyMaster>),
}

/// Starts `req` (under a terminal of `req.tty`'s size when it asks for one).
pub(crate) fn spawn(req: &ExecRequest, reaper: &Reaper) -> Result<Child, Refusal> {
    let Some(program) = req.argv.first() else {
        return Err(Refusal::invalid("nothing to run: argv is empty"));
    };
    let account =
        Account::resolve(req.user.as_deref()).map_err(|e| Refusal::invalid(format!("cannot run {program}: {e}")))?;
    let cwd = match &req.cwd {
        Some(cwd) if !Path::new(cwd).is_dir() => {
            return Err(Refusal::not_found(format!("cannot run {program}: there is no directory {cwd}")));
        }
        Some(cwd) => cwd.as_str(),
        None if Path::new(&account.home).is_dir() => account.home.as_str(),
        None => "/",
    };
    let mut command = Command::new(program);
    command
        .args(&req.argv[1..])
        .env("HOME", &account.home)
        .env("USER", &account.name)
        .env("LOGNAME", &account.name)
        .env("SHELL", &account.shell);
    if req.tty.is_some() {
        command.env("TERM", req.term.as_deref().unwrap_or(DEFAULT_TERM));
    }
    command.envs(req.env.iter().map(|(k, v)| (k, v))).current_dir(cwd);
    let cannot =
        |what: &str, e: io::Error| Refusal::new(ErrorKind::Internal, format!("cannot run {program}: {what}: {e}"));
    let master = match req.tty {
        Some(size) => Some(with_terminal(&mut command, size).map_err(|e| cannot("cannot open a terminal", e))?),
        None => {
            // Its own group, so a signal from the host reaches its children too.
            command.process_group(0).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
            None
        }
    };
    // After the terminal's set-up: the session is made as root.
    if account.differs_from_ours() {
        pty::run_as(&mut command, &account);
    }
    let (mut child, exit) = reaper.spawn(&mut command).map_err(|e| spawn_refusal(program, &account, e))?;
    // The terminal's slave must be open in the child only, or its master never sees the end.
    drop(command);
    let pid = child.id();
    let io = match master {
        Some(master) => PtyMaster::new(master).map(|m| ChildIo::Pty(Arc::new(m))),
        None => (|| -> io::Result<_> {
            let taken = |fd: Option<OwnedFd>| fd.ok_or_else(|| io::Error::other("pipe missing"));
            Ok(ChildIo::Pipes {
                stdin: pipe::Sender::from_owned_fd(taken(child.stdin.take().map(Into::into))?)?,
                stdout: pipe::Receiver::from_owned_fd(taken(child.stdout.take().map(Into::into))?)?,
                stderr: pipe::Receiver::from_owned_fd(taken(child.stderr.take().map(Into::into))?)?,
            })
        })(),
    };
    match io {
        Ok(io) => Ok(Child { pid, io, exit }),
        Err(e) => {
            let _ = reaper.signal(pid, libc::SIGKILL);
            Err(cannot("cannot set up its standard streams", e))
        }
    }
}

/// Puts the command on a new terminal of `size`; returns the master.
fn with_terminal(command: &mut Command, size: TtySize) -> io::Result<OwnedFd> {
    let pty = pty::open(size)?;
    command
        .stdin(Stdio::from(pty.slave.try_clone()?))
        .stdout(Stdio::from(pty.slave.try_clone()?))
        .stderr(Stdio::from(pty.slave));
    pty::control_terminal(command);
    Ok(pty.master)
}

fn spawn_refusal(program: &str, account: &Account, e: io::Error) -> Refusal {
    match e.kind() {
        io::ErrorKind::NotFound => Refusal::invalid(format!("cannot run {program}: no such program")),
        io::ErrorKind::PermissionDenied => Refusal::new(
            ErrorKind::PermissionDenied,
            format!("cannot run {program} as {} (uid {}): {e}", account.name, account.uid),
        ),
        _ => Refusal::new(ErrorKind::Internal, format!("cannot run {program}: {e}")),
    }
}
