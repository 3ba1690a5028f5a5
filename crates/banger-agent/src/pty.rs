//! Pseudo-terminals, and what a child needs done between fork and exec:
//! a session of its own with the terminal as its controlling terminal,
//! and a change of user. The unsafe code is `pre_exec`, whose closures
//! only make async-signal-safe system calls on memory allocated before
//! the fork.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

use banger_agent_proto::TtySize;
use rustix::fs::{Mode, OFlags};
use rustix::pty::OpenptFlags;
use rustix::termios::{SpecialCodeIndex, Winsize};
use tokio::io::unix::AsyncFd;

use crate::user::Account;

/// The control character that ends a terminal's input when none is set.
const DEFAULT_EOF: u8 = 0x04;

/// A new terminal pair: the agent keeps the master, the child gets the slave.
pub(crate) struct Pty {
    pub(crate) master: OwnedFd,
    pub(crate) slave: OwnedFd,
}

/// Opens a terminal pair of `size`.
pub(crate) fn open(size: TtySize) -> io::Result<Pty> {
    let master = rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
    rustix::pty::grantpt(&master)?;
    rustix::pty::unlockpt(&master)?;
    let name = rustix::pty::ptsname(&master, Vec::new())?;
    let slave = rustix::fs::open(name.as_c_str(), OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC, Mode::empty())?;
    set_size(&master, size)?;
    Ok(Pty { master, slave })
}

fn set_size(fd: impl AsFd, size: TtySize) -> io::Result<()> {
    let winsize = Winsize { ws_row: size.rows.max(1), ws_col: size.cols.max(1), ws_xpixel: 0, ws_ypixel: 0 };
    Ok(rustix::termios::tcsetwinsize(fd, winsize)?)
}

/// The agent's end of a terminal, read and written without blocking the runtime.
pub(crate) struct PtyMaster {
    fd: AsyncFd<OwnedFd>,
}

impl PtyMaster {
    pub(crate) fn new(master: OwnedFd) -> io::Result<PtyMaster> {
        rustix::io::ioctl_fionbio(&master, true)?;
        Ok(PtyMaster { fd: crate::sys::async_fd(master)? })
    }

    /// Reads what the terminal's programs wrote; 0 once no process has the
    /// terminal open any more (the kernel's EIO).
    pub(crate) async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut ready = self.fd.readable().await?;
            match ready.try_io(|fd| Ok(rustix::io::read(fd.get_ref(), &mut *buf)?)) {
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    /// Writes some of `buf` as typed input; cancel-safe (nothing is
    /// written unless it returns).
    pub(crate) async fn write(&self, buf: &[u8]) -> io::Result<usize> {
        loop {
            let mut ready = self.fd.writable().await?;
            match ready.try_io(|fd| Ok(rustix::io::write(fd.get_ref(), buf)?)) {
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    pub(crate) async fn write_all(&self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            match self.write(buf).await? {
                0 => return Err(io::ErrorKind::WriteZero.into()),
                n => buf = &buf[n..],
            }
        }
        Ok(())
    }

    /// Sets the terminal's size; the kernel tells its foreground programs (SIGWINCH).
    pub(crate) fn resize(&self, size: TtySize) -> io::Result<()> {
        set_size(self.fd.get_ref(), size)
    }

    /// The character that ends the terminal's input (^D unless changed).
    pub(crate) fn eof_char(&self) -> u8 {
        match rustix::termios::tcgetattr(self.fd.get_ref()) {
            Ok(termios) => match termios.special_codes[SpecialCodeIndex::VEOF] {
                0 => DEFAULT_EOF,
                c => c,
            },
            Err(_) => DEFAULT_EOF,
        }
    }
}

/// Makes the child a session leader whose controlling terminal is its
/// stdin (the terminal's slave, set up by `Command`'s stdio).
pub(crate) fn control_terminal(command: &mut Command) {
    // SAFETY: runs in the child between fork and exec; setsid and ioctl
    // are async-signal-safe system calls and touch no memory of ours, and
    // fd 0 is open (Command set it up as the terminal before this runs).
    unsafe {
        command.pre_exec(|| {
            rustix::process::setsid()?;
            rustix::process::ioctl_tiocsctty(BorrowedFd::borrow_raw(0))?;
            Ok(())
        });
    }
}

/// Makes the child run as `account`: its groups, group and user, in the
/// order that keeps the right to change them until the last step.
pub(crate) fn run_as(command: &mut Command, account: &Account) {
    let groups: Vec<libc::gid_t> = account.groups.clone();
    let (uid, gid) = (account.uid, account.gid);
    // SAFETY: runs in the child between fork and exec; setgroups, setgid and
    // setuid are async-signal-safe, and `groups` was allocated before the
    // fork and is only read.
    unsafe {
        command.pre_exec(move || {
            if libc::setgroups(groups.len(), groups.as_ptr()) != 0 || libc::setgid(gid) != 0 || libc::setuid(uid) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
