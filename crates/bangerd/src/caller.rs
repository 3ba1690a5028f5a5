//! Who is calling: the peer credentials (`SO_PEERCRED`, `SO_PEERGROUPS`)
//! of the unix socket connection a request came in on, attached to every
//! request as `axum::extract::ConnectInfo<Caller>` by [`crate::server`].
//! [`files`] reads the host paths a request names with the caller's own
//! rights.

pub mod files;

use std::os::fd::AsRawFd;

use tokio::net::UnixStream;

/// The process at the other end of an API connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Its user id.
    pub uid: u32,
    /// Its primary group id.
    pub gid: u32,
    /// Its supplementary groups, as they were when it connected.
    pub groups: Vec<u32>,
    /// Its process id, when the kernel reports one.
    pub pid: Option<i32>,
}

impl Caller {
    /// The daemon itself, for work no client asked for.
    pub const DAEMON: Caller = Caller { uid: 0, gid: 0, groups: Vec::new(), pid: None };

    /// Whom a peer counts as when the kernel cannot tell: the overflow
    /// user, who owns nothing.
    pub const NOBODY: Caller = Caller { uid: 65534, gid: 65534, groups: Vec::new(), pid: None };

    /// The credentials of `stream`'s peer; [`Caller::NOBODY`] when the
    /// kernel cannot tell, so an unknown peer is never trusted.
    pub fn of(stream: &UnixStream) -> Caller {
        let cred = match stream.peer_cred() {
            Ok(cred) => cred,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read a connection's peer credentials; treating it as nobody");
                return Caller::NOBODY;
            }
        };
        // Without its groups a caller reads host files with fewer rights
        // than it has, never more.
        let groups = peer_groups(stream).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read a connection's peer groups; using none");
            Vec::new()
        });
        Caller { uid: cred.uid(), gid: cred.gid(), groups, pid: cred.pid() }
    }

    /// Whether the caller is root.
    pub fn is_root(&self) -> bool {
        self.uid == 0
    }
}

/// The supplementary groups of a unix socket's peer (`SO_PEERGROUPS`).
fn peer_groups(stream: &UnixStream) -> std::io::Result<Vec<u32>> {
    let mut groups = vec![0 as libc::gid_t; 64];
    loop {
        let mut len = (groups.len() * size_of::<libc::gid_t>()) as libc::socklen_t;
        #[allow(unsafe_code)]
        // SAFETY: the buffer is `len` bytes of gid_t the kernel may fill; it
        // writes at most `len` bytes and reports how many it wrote or needs.
        let rc = unsafe {
            libc::getsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let count = len as usize / size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(count);
            return Ok(groups);
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ERANGE) || count <= groups.len() {
            return Err(e);
        }
        groups.resize(count, 0);
    }
}
