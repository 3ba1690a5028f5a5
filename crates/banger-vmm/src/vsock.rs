//! The host end of an AF_VSOCK stream: how the daemon reaches the agent of a
//! QEMU guest that has a vhost-vsock device. A non-blocking socket under
//! tokio's reactor, read and written with `recv`/`send`; the crate's only
//! unsafe code, each call with its reason.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A connected vsock stream.
#[derive(Debug)]
pub struct VsockStream {
    fd: AsyncFd<OwnedFd>,
}

impl VsockStream {
    /// Connects to `port` of the guest whose context id is `cid`.
    pub async fn connect(cid: u32, port: u32) -> io::Result<Self> {
        let socket = stream_socket(libc::AF_VSOCK)?;
        let started = start_connect(&socket, &vsock_addr(cid, port));
        finish_connect(socket, started).await
    }
}

/// The address of `port` on the guest with context id `cid`.
fn vsock_addr(cid: u32, port: u32) -> libc::sockaddr_vm {
    // SAFETY: sockaddr_vm is plain old data and all zeroes is a valid value;
    // the kernel wants its reserved and padding bytes zero.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_cid = cid;
    addr.svm_port = port;
    addr
}

/// A new non-blocking, close-on-exec stream socket of `domain`.
fn stream_socket(domain: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: socket takes plain integers.
    let fd = cvt(unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK, 0) })?;
    // SAFETY: `fd` was just returned by socket and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A C socket address that connect(2) takes as it is.
///
/// # Safety
/// Implementors are `sockaddr_*` structs whose whole size is the address
/// length the kernel expects.
unsafe trait SockAddr: Sized {}

// SAFETY: the kernel's `struct sockaddr_vm`, 16 bytes.
unsafe impl SockAddr for libc::sockaddr_vm {}

// SAFETY: the kernel's `struct sockaddr_in`, 16 bytes (tests connect over loopback TCP).
#[cfg(test)]
unsafe impl SockAddr for libc::sockaddr_in {}

/// Starts connecting `socket` to `addr`: `Err(EINPROGRESS)` means it goes on
/// in the background.
fn start_connect<A: SockAddr>(socket: &OwnedFd, addr: &A) -> io::Result<()> {
    let len = std::mem::size_of::<A>() as libc::socklen_t;
    // SAFETY: `addr` is a valid address of `len` bytes (SockAddr's contract)
    // that outlives the call, and `socket` is an open socket.
    cvt(unsafe { libc::connect(socket.as_raw_fd(), (addr as *const A).cast(), len) }).map(drop)
}

/// Waits for a connect started by [`start_connect`] to be made or refused.
async fn finish_connect(socket: OwnedFd, started: io::Result<()>) -> io::Result<VsockStream> {
    // SAFETY: the AsyncFd owns the OwnedFd, so nothing can close or replace
    // the fd while it is registered.
    let fd = unsafe { AsyncFd::register(socket) }?;
    match started {
        Ok(()) => {}
        // EINTR: the connection still goes on, as with EINPROGRESS.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINPROGRESS | libc::EINTR)) => {
            // The socket turns writable once the connect is done, whichever
            // way it went; SO_ERROR says which.
            let _ready = fd.writable().await?;
            if let Some(e) = socket_error(&fd)? {
                return Err(e);
            }
        }
        Err(e) => return Err(e),
    }
    Ok(VsockStream { fd })
}

/// The socket's pending error (`SO_ERROR`), if any.
fn socket_error(socket: &impl AsRawFd) -> io::Result<Option<io::Error>> {
    let mut error: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `error` and `len` are valid for writes and describe a c_int,
    // which is what SO_ERROR stores.
    cvt(unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut error as *mut libc::c_int).cast(),
            &mut len,
        )
    })?;
    Ok((error != 0).then(|| io::Error::from_raw_os_error(error)))
}

fn cvt<T: Default + PartialOrd>(rc: T) -> io::Result<T> {
    if rc < T::default() {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

impl AsyncRead for VsockStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            // SAFETY: the pointer and length describe `unfilled`, writable
            // for the call; the fd is the open socket the guard borrows.
            let read = guard.try_io(|fd| {
                cvt(unsafe { libc::recv(fd.as_raw_fd(), unfilled.as_mut_ptr().cast(), unfilled.len(), 0) })
            });
            match read {
                Ok(Ok(n)) => {
                    buf.advance(n as usize);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => {}
            }
        }
    }
}

impl AsyncWrite for VsockStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            // SAFETY: the pointer and length describe `data`, readable for
            // the call. MSG_NOSIGNAL: a closed peer is an error, not SIGPIPE.
            let written = guard.try_io(|fd| {
                cvt(unsafe { libc::send(fd.as_raw_fd(), data.as_ptr().cast(), data.len(), libc::MSG_NOSIGNAL) })
            });
            match written {
                Ok(Ok(n)) => return Poll::Ready(Ok(n as usize)),
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => {}
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // SAFETY: shutdown takes an open socket and an integer.
        Poll::Ready(cvt(unsafe { libc::shutdown(self.fd.as_raw_fd(), libc::SHUT_WR) }).map(drop))
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[test]
    fn the_address_names_the_guest_and_port() {
        let addr = vsock_addr(7, banger_agent_proto::VSOCK_PORT);
        assert_eq!(addr.svm_family, libc::AF_VSOCK as libc::sa_family_t);
        assert_eq!((addr.svm_cid, addr.svm_port), (7, 1024));
        assert_eq!((addr.svm_reserved1, addr.svm_zero), (0, [0; 4]));
        assert_eq!(std::mem::size_of::<libc::sockaddr_vm>(), 16);
    }

    fn loopback(port: u16) -> libc::sockaddr_in {
        // SAFETY: sockaddr_in is plain old data; all zeroes is a valid value.
        let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        addr.sin_family = libc::AF_INET as libc::sa_family_t;
        addr.sin_port = port.to_be();
        addr.sin_addr.s_addr = u32::from(Ipv4Addr::LOCALHOST).to_be();
        addr
    }

    /// The connect and stream code is the same for any stream socket: run
    /// it over loopback TCP, since this host has no vsock peer to talk to.
    async fn connect_tcp(port: u16) -> io::Result<VsockStream> {
        let socket = stream_socket(libc::AF_INET)?;
        let started = start_connect(&socket, &loopback(port));
        finish_connect(socket, started).await
    }

    #[tokio::test]
    async fn connects_and_carries_bytes_both_ways() {
        let listener = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let peer = std::thread::spawn(move || {
            use std::io::{Read, Write};
            let (mut conn, _) = listener.accept().unwrap();
            let mut got = Vec::new();
            conn.read_to_end(&mut got).unwrap();
            conn.write_all(&got.iter().rev().copied().collect::<Vec<_>>()).unwrap();
        });
        let mut stream = connect_tcp(port).await.unwrap();
        let sent: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        stream.write_all(&sent).await.unwrap();
        stream.shutdown().await.unwrap();
        let mut back = Vec::new();
        stream.read_to_end(&mut back).await.unwrap();
        peer.join().unwrap();
        assert_eq!(back.len(), sent.len());
        assert!(back.iter().eq(sent.iter().rev()));
    }

    #[tokio::test]
    async fn a_refused_connect_is_an_error() {
        let port = {
            let listener = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)).unwrap();
            listener.local_addr().unwrap().port()
        };
        let err = connect_tcp(port).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
    }
}
