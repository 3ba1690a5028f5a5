//! The DNS server the daemon runs on its bridge address: it answers
//! `NAME.vm` (and PTR in the bridge's reverse zone) from the daemon's state
//! through [`Records`], and forwards every other question to the host's
//! resolvers. It owns its two listeners (UDP and TCP on one address) and
//! every task they start; [`DnsServer::shutdown`] ends them all.

mod answer;
mod forward;
mod listen;
mod upstreams;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use upstreams::{host_upstreams, upstreams_from_resolv_conf, RESOLV_CONF};

use answer::Zones;
use forward::Forwarder;

/// TTL of every record the server makes up: VMs come and go, so caches
/// must forget them quickly (the `vm.` SOA minimum, hence the negative
/// caching time, is the same).
pub const TTL_SECS: u32 = 5;

/// How many forwarded questions may wait for an upstream at once; past it
/// the server answers SERVFAIL at once, so a flood cannot grow memory.
pub const MAX_IN_FLIGHT: usize = 256;

/// The daemon's view of which VMs exist, asked on every question.
///
/// Both methods are called from the server's receive loops: they must be
/// quick and must not block (a map behind a lock is the intended shape).
pub trait Records: Send + Sync + 'static {
    /// The address of the VM named `name` (lowercase, without the domain).
    fn address(&self, name: &str) -> Option<Ipv4Addr>;
    /// The name (lowercase, without the domain) of the VM at `addr`.
    fn name_of(&self, addr: Ipv4Addr) -> Option<String>;
}

/// What the server serves and where it forwards.
#[derive(Clone)]
pub struct DnsConfig {
    /// Where to listen, UDP and TCP (port 0: any free port, the same for both).
    pub bind: SocketAddr,
    /// The domain answered from [`Records`], without dots: `vm`.
    pub domain: String,
    /// The reverse zone answered from [`Records::name_of`], e.g.
    /// `0.213.10.in-addr.arpa.`; `None` forwards PTR questions too.
    pub reverse_zone: Option<String>,
    /// Resolvers asked, in order, for every other name.
    pub upstreams: Vec<SocketAddr>,
    /// The names and addresses of the VMs.
    pub records: Arc<dyn Records>,
}

impl std::fmt::Debug for DnsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsConfig")
            .field("bind", &self.bind)
            .field("domain", &self.domain)
            .field("reverse_zone", &self.reverse_zone)
            .field("upstreams", &self.upstreams)
            .finish_non_exhaustive()
    }
}

/// Errors of the DNS server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A listener could not be bound.
    #[error("cannot listen for DNS on {addr}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The domain or the reverse zone is not a valid DNS name.
    #[error("invalid zone name {name:?}")]
    ZoneName {
        /// The name given.
        name: String,
        /// Why.
        #[source]
        source: hickory_proto::ProtoError,
    },
    /// The host's resolver configuration could not be read.
    #[error("cannot read {path}")]
    ResolvConf {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A running DNS server. Dropping it stops its tasks too, but without
/// waiting for them: call [`DnsServer::shutdown`] to know the port is free.
#[derive(Debug)]
pub struct DnsServer {
    local_addr: SocketAddr,
    cancel: CancellationToken,
    udp: JoinHandle<()>,
    tcp: JoinHandle<()>,
}

/// How many times a port-0 bind looks for a port free for both UDP and TCP.
const BIND_ATTEMPTS: usize = 16;

impl DnsServer {
    /// Binds UDP and TCP on `config.bind` and starts serving.
    pub async fn start(config: DnsConfig) -> Result<DnsServer, Error> {
        let zones = Zones::new(&config.domain, config.reverse_zone.as_deref())?;
        let (udp, tcp) = bind_pair(config.bind).await?;
        let local_addr = udp.local_addr().map_err(|source| Error::Bind { addr: config.bind, source })?;
        let forwarder = Forwarder::new(&config.upstreams, local_addr, MAX_IN_FLIGHT);
        let shared = Arc::new(listen::Shared { zones, records: config.records, forwarder });
        let cancel = CancellationToken::new();
        let udp = tokio::spawn(listen::serve_udp(udp, shared.clone(), cancel.clone()));
        let tcp = tokio::spawn(listen::serve_tcp(tcp, shared, cancel.clone()));
        tracing::debug!(addr = %local_addr, "DNS server started");
        Ok(DnsServer { local_addr, cancel, udp, tcp })
    }

    /// The address both listeners are bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops both listeners and every task they started, and waits for
    /// them: when it returns the port is free.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        // A task that panicked is over all the same.
        let _ = (&mut self.udp).await;
        let _ = (&mut self.tcp).await;
        tracing::debug!(addr = %self.local_addr, "DNS server stopped");
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Binds UDP then TCP on the same address; with port 0, the port the kernel
/// picked for UDP may be taken for TCP, so it tries again with another.
async fn bind_pair(addr: SocketAddr) -> Result<(UdpSocket, TcpListener), Error> {
    let bind_err = |source| Error::Bind { addr, source };
    let mut attempt = 0;
    loop {
        attempt += 1;
        let udp = UdpSocket::bind(addr).await.map_err(bind_err)?;
        let bound = udp.local_addr().map_err(bind_err)?;
        match TcpListener::bind(bound).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if addr.port() == 0 && e.kind() == std::io::ErrorKind::AddrInUse && attempt < BIND_ATTEMPTS => {
                continue
            }
            Err(source) => return Err(Error::Bind { addr: bound, source }),
        }
    }
}
