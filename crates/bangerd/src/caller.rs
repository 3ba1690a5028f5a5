//! Who is calling: the peer credentials (`SO_PEERCRED`) of the unix socket
//! connection a request came in on, attached to every request as
//! `axum::extract::ConnectInfo<Caller>` by [`crate::server`].

use tokio::net::UnixStream;

/// The process at the other end of an API connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// Its user id.
    pub uid: u32,
    /// Its primary group id.
    pub gid: u32,
    /// Its process id, when the kernel reports one.
    pub pid: Option<i32>,
}

impl Caller {
    /// The daemon itself, for work no client asked for.
    pub const DAEMON: Caller = Caller { uid: 0, gid: 0, pid: None };

    /// Whom a peer counts as when the kernel cannot tell: the overflow
    /// user, who owns nothing.
    pub const NOBODY: Caller = Caller { uid: 65534, gid: 65534, pid: None };

    /// The credentials of `stream`'s peer; [`Caller::NOBODY`] when the
    /// kernel cannot tell, so an unknown peer is never trusted.
    pub fn of(stream: &UnixStream) -> Caller {
        match stream.peer_cred() {
            Ok(cred) => Caller { uid: cred.uid(), gid: cred.gid(), pid: cred.pid() },
            Err(e) => {
                tracing::warn!(error = %e, "cannot read a connection's peer credentials; treating it as nobody");
                Caller::NOBODY
            }
        }
    }

    /// Whether the caller is root.
    pub fn is_root(&self) -> bool {
        self.uid == 0
    }
}
