//! Finding and opening the byte stream to the host: the virtio-serial port
//! named [`PORT_NAME`] (QEMU without vhost-vsock), else a vsock listener
//! (Firecracker), or a unix socket for running the agent on a host in tests.

use std::fs;
use std::future::Future;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use banger_agent_proto::{PORT_NAME, VSOCK_PORT};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixListener;

use crate::log::log;
use crate::serve::{serve, Agent, Transport};
use crate::sys;

/// How often the guest is searched for a channel while none is there.
const DISCOVERY_INTERVAL: Duration = Duration::from_millis(100);

/// How long to wait for a port or a virtio vsock device before trying vsock
/// anyway (a vsock transport may be something other than virtio).
const DISCOVERY_PATIENCE: Duration = Duration::from_secs(10);

/// The virtio device id of a vsock device, as sysfs shows it.
const VIRTIO_ID_VSOCK: &str = "0x0013";

/// The channel the guest offers.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Channel {
    /// A virtio-serial port device, e.g. `/dev/vport1p1`.
    Port(PathBuf),
    /// AF_VSOCK on [`VSOCK_PORT`].
    Vsock,
}

/// Waits until the guest has a channel to the host.
pub(crate) async fn discover() -> Channel {
    let started = Instant::now();
    let sys = Path::new("/sys");
    loop {
        if let Some(port) = find_port(sys, Path::new("/dev")) {
            return Channel::Port(port);
        }
        if has_virtio_vsock(sys) || started.elapsed() > DISCOVERY_PATIENCE {
            return Channel::Vsock;
        }
        tokio::time::sleep(DISCOVERY_INTERVAL).await;
    }
}

/// The device of the virtio-serial port named [`PORT_NAME`]: there is no
/// udev to make `/dev/virtio-ports/NAME`, so sysfs is read instead.
fn find_port(sys: &Path, dev: &Path) -> Option<PathBuf> {
    fs::read_dir(sys.join("class/virtio-ports"))
        .ok()?
        .flatten()
        .find(|entry| fs::read_to_string(entry.path().join("name")).is_ok_and(|name| name.trim() == PORT_NAME))
        .map(|entry| dev.join(entry.file_name()))
}

fn has_virtio_vsock(sys: &Path) -> bool {
    let Ok(devices) = fs::read_dir(sys.join("bus/virtio/devices")) else {
        return false;
    };
    devices.flatten().any(|d| fs::read_to_string(d.path().join("device")).is_ok_and(|id| id.trim() == VIRTIO_ID_VSOCK))
}

/// Serves a virtio-serial port for good: hosts come and go on it.
///
/// Blocking reads and writes (in tokio's blocking pool) match the driver:
/// a read returns 0 while no host is connected, a write waits for one. The
/// port can be opened once only, so reads and writes share duplicated fds.
pub(crate) async fn serve_port(path: &Path, agent: Arc<Agent>) -> io::Result<()> {
    let port = fs::OpenOptions::new().read(true).write(true).open(path)?;
    log!("serving on {}", path.display());
    restart_on_panic(|| {
        let reader = tokio::fs::File::from_std(port.try_clone()?);
        let writer = tokio::fs::File::from_std(port.try_clone()?);
        Ok(serve(reader, writer, Transport::Port, agent.clone()))
    })
    .await
}

/// Runs the future `start` makes in a task of its own, again each time it
/// panics: the agent is often init, and a bug in handling one frame must
/// not end it (nor leave the guest unreachable).
async fn restart_on_panic<F, S>(mut start: S) -> io::Result<()>
where
    S: FnMut() -> io::Result<F>,
    F: Future<Output = ()> + Send + 'static,
{
    loop {
        match tokio::spawn(start()?).await {
            Ok(()) => return Ok(()),
            Err(e) if e.is_panic() => log!("serving the host panicked; serving again"),
            Err(e) => return Err(io::Error::other(e)),
        }
    }
}

/// Serves each connection to a unix socket at `path` (host-side testing).
pub(crate) async fn serve_unix(path: &Path, agent: Arc<Agent>) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = UnixListener::bind(path)?;
    log!("serving on unix socket {}", path.display());
    loop {
        let (conn, _) = listener.accept().await?;
        let (reader, writer) = conn.into_split();
        tokio::spawn(serve(reader, writer, Transport::Connection, agent.clone()));
    }
}

/// Serves each vsock connection on [`VSOCK_PORT`].
pub(crate) async fn serve_vsock(agent: Arc<Agent>) -> io::Result<()> {
    let listener = sys::async_fd::<OwnedFd>(sys::vsock_listen(VSOCK_PORT)?)?;
    log!("serving on vsock port {VSOCK_PORT}");
    loop {
        let mut ready = listener.readable().await?;
        match ready.try_io(|l| sys::accept(l.get_ref().as_fd())) {
            Ok(Ok(conn)) => {
                let (reader, writer) = tokio::io::split(FdStream(sys::async_fd(conn)?));
                tokio::spawn(serve(reader, writer, Transport::Connection, agent.clone()));
            }
            Ok(Err(e)) => {
                log!("accepting a vsock connection failed: {e}");
                tokio::time::sleep(DISCOVERY_INTERVAL).await;
            }
            Err(_would_block) => {}
        }
    }
}

/// A non-blocking socket that tokio has no type for (vsock).
struct FdStream(AsyncFd<fs::File>);

impl AsyncRead for FdStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            let mut ready = ready!(self.0.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match ready.try_io(|fd| fd.get_ref().read(unfilled)) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for FdStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            let mut ready = ready!(self.0.poll_write_ready(cx))?;
            match ready.try_io(|fd| fd.get_ref().write(buf)) {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_while_serving_restarts_it() {
        let mut starts = 0;
        let served = restart_on_panic(|| {
            starts += 1;
            let first = starts == 1;
            Ok(async move { assert!(!first, "a bug in frame handling (expected in this test)") })
        })
        .await;
        assert!(served.is_ok());
        assert_eq!(starts, 2);
    }

    #[test]
    fn the_port_is_found_by_name_in_sysfs() {
        let sys = tempfile::tempdir().unwrap();
        let ports = sys.path().join("class/virtio-ports");
        assert_eq!(find_port(sys.path(), Path::new("/dev")), None);
        for (dir, name) in [("vport0p0", "org.qemu.guest_agent.0\n"), ("vport1p1", "banger.agent\n")] {
            fs::create_dir_all(ports.join(dir)).unwrap();
            fs::write(ports.join(dir).join("name"), name).unwrap();
        }
        fs::create_dir_all(ports.join("vport2p0")).unwrap(); // a port without a name
        assert_eq!(find_port(sys.path(), Path::new("/dev")), Some(PathBuf::from("/dev/vport1p1")));
    }

    #[test]
    fn a_virtio_vsock_device_is_recognised_by_its_id() {
        let sys = tempfile::tempdir().unwrap();
        let devices = sys.path().join("bus/virtio/devices");
        assert!(!has_virtio_vsock(sys.path()));
        for (dev, id) in [("virtio0", "0x0002\n"), ("virtio1", "0x0003\n")] {
            fs::create_dir_all(devices.join(dev)).unwrap();
            fs::write(devices.join(dev).join("device"), id).unwrap();
        }
        assert!(!has_virtio_vsock(sys.path()));
        fs::create_dir_all(devices.join("virtio2")).unwrap();
        fs::write(devices.join("virtio2/device"), "0x0013\n").unwrap();
        assert!(has_virtio_vsock(sys.path()));
    }
}
