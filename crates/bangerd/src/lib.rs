//! `bangerd`, the banger daemon, as a library: [`prepare`] takes the state
//! root and binds the API socket, [`Prepared::serve`] answers requests until
//! shutdown. The binary is a thin `main` around these; tests run the whole
//! daemon in-process under a temporary root.

pub mod agent;
pub mod api;
pub mod caller;
pub mod config;
pub mod db;
pub mod error;
pub mod guest;
pub mod image;
pub mod kernel;
pub mod limits;
pub mod net;
pub mod operations;
pub mod permissions;
pub mod server;
mod socket;
pub mod space;
pub mod ssh;
pub mod staging;
pub mod vm;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::UnixListener;
use tokio::sync::watch;

pub use config::Config;
use db::Db;
use kernel::store::KernelStore;
use operations::{Events, Operations};

/// The daemon's shared state; request handlers and operations hold an `Arc`.
pub struct Daemon {
    /// The configuration it started with.
    pub config: Config,
    /// The state database.
    pub db: Arc<Db>,
    /// The event bus.
    pub events: Events,
    /// Running and recorded operations.
    pub ops: Arc<Operations>,
    /// The kernel store.
    pub kernels: KernelStore,
    /// The image store.
    pub images: image::ImageStore,
    /// VM locks and live agent connections.
    pub vms: vm::VmManager,
    /// The listeners of port forwards.
    pub forwards: guest::forward::Forwards,
    /// banger's SSH keys.
    pub ssh: ssh::SshKeys,
    /// The host's side of VM networking.
    pub net: net::HostNetwork,
    /// What the host can do, probed at start.
    pub caps: banger_host::Capabilities,
    /// The space the database gives up when the state filesystem is full.
    pub reserve: Arc<space::SpaceReserve>,
    /// HTTP client for catalogs and pulls.
    pub http: reqwest::Client,
    /// Background work (operations, supervisors, exec relays), waited for
    /// at shutdown before the state root is let go.
    pub tasks: tokio_util::task::TaskTracker,
    shutdown: watch::Receiver<bool>,
    /// Held while serving; released at the end of `serve` so a new daemon
    /// may take the state root even while old tasks finish.
    state_lock: std::sync::Mutex<Option<(std::fs::File, std::fs::File)>>,
}

impl Daemon {
    /// How VM disks are cloned on this host.
    pub fn cow_strategy(&self) -> banger_storage::CowStrategy {
        // A dm-snapshot disk is a /dev/mapper device that must be set up
        // at every boot and torn down at every stop; until the VM
        // lifecycle does that, hosts with device-mapper get a sparse copy.
        let device_mapper_wired = false;
        banger_storage::choose(
            matches!(self.caps.reflink, banger_host::Reflink::Supported { .. }),
            self.caps.device_mapper && device_mapper_wired,
        )
    }

    /// Resolves once the daemon begins shutting down.
    pub async fn shutting_down(&self) {
        let mut rx = self.shutdown.clone();
        let _ = rx.wait_for(|stopping| *stopping).await;
    }
}

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Another bangerd holds the state root.
    #[error("another bangerd is already using the state directory {0}")]
    AlreadyRunning(PathBuf),
    /// Another bangerd uses the run directory.
    #[error("another bangerd is already using the run directory {0} (give each daemon its own run_dir)")]
    RunDirInUse(PathBuf),
    /// Another process listens on the socket.
    #[error("another process is already listening on {0}")]
    SocketInUse(PathBuf),
    /// Something that is not a socket is at the socket path; it is left alone.
    #[error("{path} is {found}, not a socket; bangerd will not replace it (remove it or choose another socket path)")]
    NotASocket {
        /// The socket path.
        path: PathBuf,
        /// What is there.
        found: &'static str,
    },
    /// The state root could not be prepared.
    #[error("cannot open the state directory")]
    State(#[from] error::Error),
    /// The socket could not be bound.
    #[error("cannot listen on {path}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// A daemon with its state open and its socket bound, ready to serve.
pub struct Prepared {
    daemon: Arc<Daemon>,
    listener: UnixListener,
    stop: watch::Sender<bool>,
}

/// Takes the state root (a single-instance lock), opens the database,
/// reconciles the stores and VMs, and binds the socket.
pub async fn prepare(config: Config) -> Result<Prepared, StartError> {
    // Disks, images and kernels hold guests' and images' secrets: root only.
    permissions::restrict_umask();
    let state_dir = &config.state_dir;
    permissions::create_private_dir(state_dir)?;
    let lock_path = state_dir.join("bangerd.lock");
    let lock = std::fs::File::create(&lock_path).map_err(error::Error::io("cannot create", &lock_path))?;
    if lock.try_lock().is_err() {
        return Err(StartError::AlreadyRunning(state_dir.clone()));
    }
    // The run directory holds the VMs' pid files and sockets; a daemon
    // treats what it finds there as its own, so two must never share one.
    let run_dir = &config.run_dir;
    // By default the API socket lives here: group `banger` must reach it.
    permissions::create_dir_with_mode(run_dir, permissions::SOCKET_DIR_MODE)
        .map_err(error::Error::io("cannot create", run_dir))?;
    let run_lock_path = run_dir.join("bangerd.lock");
    let run_lock = std::fs::File::create(&run_lock_path).map_err(error::Error::io("cannot create", &run_lock_path))?;
    if run_lock.try_lock().is_err() {
        return Err(StartError::RunDirInUse(run_dir.clone()));
    }
    // A state root an older banger made has 0644 disks in 0755 directories.
    permissions::tighten(state_dir)?;
    let reserve = Arc::new(space::SpaceReserve::new(state_dir));
    let db = Arc::new(Db::open(&state_dir.join("banger.db"), Arc::clone(&reserve))?);
    let events = Events::new();
    let ops = Operations::open(Arc::clone(&db), events.clone())?;
    let kernels = KernelStore::open(state_dir, Arc::clone(&db))?;
    let images = image::ImageStore::open(state_dir, Arc::clone(&db))?;
    let vms_dir = state_dir.join("vms");
    std::fs::create_dir_all(&vms_dir).map_err(error::Error::io("cannot create", &vms_dir))?;
    let caps = banger_host::Capabilities::probe(state_dir);
    let listener = socket::bind(&config.socket)?;
    let http = reqwest::Client::builder()
        .user_agent(concat!("banger/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(std::time::Duration::from_secs(30))
        .read_timeout(std::time::Duration::from_secs(60))
        .build()
        .map_err(|e| error::Error::Internal(format!("http client: {e}")))?;
    let ssh = ssh::SshKeys::new(state_dir);
    // A jailed Firecracker opens its tap as the jail's uid.
    let tap_owner = config
        .jailer
        .as_ref()
        .map(|_| banger_net::tap::TapOwner { uid: config.jail_identity.uid, gid: config.jail_identity.gid });
    let net = net::HostNetwork::new(config.network.clone(), config.run_dir.clone(), tap_owner);
    let (stop, shutdown) = watch::channel(false);
    let daemon = Daemon {
        config,
        db,
        events,
        ops,
        kernels,
        images,
        vms: vm::VmManager::default(),
        forwards: guest::forward::Forwards::default(),
        ssh,
        net,
        caps,
        reserve,
        http,
        tasks: tokio_util::task::TaskTracker::new(),
        shutdown,
        state_lock: std::sync::Mutex::new(Some((lock, run_lock))),
    };
    tracing::info!(
        socket = %daemon.config.socket.display(),
        state_dir = %daemon.config.state_dir.display(),
        "bangerd ready"
    );
    let daemon = Arc::new(daemon);
    vm::supervise::adopt_all(&daemon).await?;
    space::keep_reserve(&daemon);
    // Seeds left by VMs removed before seeds were pruned, or half-made by a crash.
    if let Err(e) = image::prune_seeds(&daemon).await {
        tracing::warn!(error = %e, "cannot remove unused work-disk seeds");
    }
    Ok(Prepared { daemon, listener, stop })
}

impl Prepared {
    /// The daemon's state, for tests that look inside.
    pub fn daemon(&self) -> &Arc<Daemon> {
        &self.daemon
    }

    /// Serves the API until `shutdown` resolves, then ends event streams,
    /// lets requests in flight finish, and removes the socket.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        let Prepared { daemon, listener, stop } = self;
        let socket = daemon.config.socket.clone();
        let app = api::router(Arc::clone(&daemon));
        let stopping = {
            let daemon = Arc::clone(&daemon);
            async move {
                shutdown.await;
                tracing::info!("shutting down");
                let _ = stop.send(true);
                daemon.shutting_down().await;
            }
        };
        let result = server::serve(listener, app, daemon.config.api, stopping).await;
        let _ = std::fs::remove_file(&socket);
        // Operations, supervisors and relays end at shutdown (an operation
        // cut short is recorded as failed); only then is the root let go.
        daemon.tasks.close();
        daemon.tasks.wait().await;
        daemon.vms.drop_all_agents();
        if daemon.config.network.enabled {
            let vms_run = vm::lifecycle::networked_vm_runs(&daemon).unwrap_or(true);
            daemon.net.shutdown(vms_run).await;
        }
        daemon.state_lock.lock().unwrap_or_else(|e| e.into_inner()).take();
        result
    }
}

/// Prepares and serves in one call.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    prepare(config).await?.serve(shutdown).await?;
    Ok(())
}
