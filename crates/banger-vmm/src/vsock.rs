//! The host end of an AF_VSOCK stream: how the daemon reaches the agent of a
//! QEMU guest that has a vhost-vsock device. The socket itself is
//! tokio-vsock's; this module only names the guest's address.

use std::io;

use tokio_vsock::{VsockAddr, VsockStream};

/// Connects to `port` of the guest whose context id is `cid`. Unbounded in
/// itself: [`crate::AgentEndpoint::connect`] bounds each attempt.
pub(crate) async fn connect(cid: u32, port: u32) -> io::Result<VsockStream> {
    VsockStream::connect(VsockAddr::new(cid, port)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AgentEndpoint;

    /// This host has no vhost-vsock, so no guest can be reached: the
    /// attempt must fail, and soon, never hang.
    #[tokio::test]
    async fn a_guest_that_is_not_there_is_an_error_not_a_hang() {
        let started = std::time::Instant::now();
        let endpoint = AgentEndpoint::Vsock { cid: 4_000_000, port: banger_agent_proto::VSOCK_PORT };
        let err = endpoint.connect().await.unwrap_err();
        assert!(started.elapsed() < crate::CONNECT_ATTEMPT_TIMEOUT * 2, "{:?}: {err}", started.elapsed());
        assert_ne!(err.kind(), io::ErrorKind::Other, "{err}");
    }
}
