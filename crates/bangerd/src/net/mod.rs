//! The host's side of VM networking: one bridge with the host's address on
//! the subnet, a pool of ready taps, banger's nftables tables (NAT out,
//! isolation in) and the `.vm` DNS server on the bridge's address, routed
//! from systemd-resolved where it runs. The host is changed only while a
//! VM with networking runs: the first one's boot brings it all up, the last
//! one's stop takes it down again, so a daemon that only builds images or
//! runs VMs without a NIC leaves the host's network as it found it.

pub mod names;
pub mod settings;

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use banger_net::dns::{DnsConfig, DnsServer};
use banger_net::link::Netlink;
use banger_net::nft::{self, Ruleset};
use banger_net::resolved::ResolvedRouting;
use banger_net::tap::TAP_PREFIX;
use banger_net::tap::{NetlinkTaps, TapOwner};
use banger_net::tap_pool::TapPool;

pub use names::VmNames;
pub use settings::Settings;

use crate::error::{Error, Result};
use crate::vm::record::RecordNetwork;

/// The name of banger's nftables tables.
pub const NFT_TABLE: &str = "banger";

/// The IPv4 forwarding switch of the daemon's network namespace.
const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// The host's network as banger keeps it.
pub struct HostNetwork {
    /// What the configuration asks for.
    pub settings: Settings,
    /// The VMs' names and addresses, which the DNS server answers from.
    pub names: Arc<VmNames>,
    /// Where what must survive a crash is noted (the forwarding switch's value before banger).
    run_dir: PathBuf,
    /// Who may open the taps besides root: the jailed Firecracker's uid.
    tap_owner: Option<TapOwner>,
    state: tokio::sync::Mutex<State>,
    /// Held from choosing a new VM's address to saving its record.
    allocating: std::sync::Mutex<()>,
}

#[derive(Default)]
struct State {
    up: Option<Up>,
}

/// What is made while networked VMs run.
struct Up {
    netlink: Netlink,
    pool: Arc<TapPool<NetlinkTaps>>,
    dns: Option<DnsServer>,
    resolved: bool,
}

fn failed(what: &str) -> impl FnOnce(String) -> Error + '_ {
    move |e| Error::Internal(format!("{what}: {e}"))
}

impl HostNetwork {
    /// The host network for `settings`; nothing is changed yet. Taps get
    /// `tap_owner` (a jailed Firecracker's uid and gid) when given.
    pub fn new(settings: Settings, run_dir: PathBuf, tap_owner: Option<TapOwner>) -> HostNetwork {
        HostNetwork {
            settings,
            names: Arc::new(VmNames::default()),
            run_dir,
            tap_owner,
            state: Default::default(),
            allocating: std::sync::Mutex::new(()),
        }
    }

    /// Gives a new VM an address: the lowest free one, given the addresses
    /// other VMs hold (`taken`). Hold [`HostNetwork::lock_allocation`]
    /// until the record is saved.
    pub fn allocate(&self, taken: &HashSet<Ipv4Addr>) -> Result<RecordNetwork> {
        let subnet = self.settings.subnet;
        let address = subnet
            .allocate(taken)
            .ok_or_else(|| Error::Conflict(format!("every address of the subnet {subnet} is taken")))?;
        Ok(RecordNetwork { address, prefix: subnet.prefix(), gateway: subnet.host_address() })
    }

    /// Serializes address allocation.
    pub fn lock_allocation(&self) -> std::sync::MutexGuard<'_, ()> {
        self.allocating.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes the host ready for a networked VM (idempotent): the subnet is
    /// checked against the host's routes, then the bridge, forwarding, the
    /// ruleset, the DNS server, resolved's routing and the tap pool are made.
    /// A failure undoes what this call made. `in_use` are the taps VMs'
    /// ledgers hold: the pool never hands them out, and deletes every other
    /// banger tap it finds.
    pub async fn ensure_up(&self, in_use: &HashSet<String>) -> Result<()> {
        let mut state = self.state.lock().await;
        if state.up.is_some() {
            return Ok(());
        }
        let made = self.bring_up(in_use).await;
        match made {
            Ok(up) => {
                state.up = Some(up);
                Ok(())
            }
            Err(e) => {
                self.tear_down(None, true).await;
                Err(e)
            }
        }
    }

    async fn bring_up(&self, in_use: &HashSet<String>) -> Result<Up> {
        let s = &self.settings;
        let netlink = Netlink::new().map_err(|e| failed("netlink")(e.to_string()))?;
        let route =
            netlink.conflicting_route(&s.subnet, &s.bridge).await.map_err(|e| failed("routes")(e.to_string()))?;
        if let Some(route) = route {
            return Err(Error::Conflict(format!(
                "banger's subnet {} overlaps the host's route {route}: set another `[network] subnet`",
                s.subnet
            )));
        }
        let host = s.subnet.host_address();
        netlink.ensure_bridge(&s.bridge, host, s.subnet.prefix()).await.map_err(|e| failed("bridge")(e.to_string()))?;
        self.enable_forwarding()?;
        nft::apply(&self.ruleset()).await.map_err(|e| failed("nftables")(e.to_string()))?;
        let dns = if s.dns {
            let upstreams = banger_net::dns::host_upstreams().unwrap_or_default();
            let config = DnsConfig {
                bind: SocketAddr::from((host, 53)),
                domain: "vm".into(),
                reverse_zone: Some(s.subnet.reverse_zone()),
                upstreams,
                records: Arc::clone(&self.names) as Arc<dyn banger_net::dns::Records>,
            };
            Some(DnsServer::start(config).await.map_err(|e| failed("the DNS server")(e.to_string()))?)
        } else {
            None
        };
        let resolved = s.dns && self.route_resolved().await;
        let pool = TapPool::new(NetlinkTaps::new(netlink.clone(), self.tap_owner), s.tap_pool);
        let reclaimed = pool.reclaim(in_use).await.map_err(|e| failed("taps")(e.to_string()))?;
        if !reclaimed.is_empty() {
            tracing::info!(?reclaimed, "taps no VM holds were deleted");
        }
        pool.fill().await.map_err(|e| failed("taps")(e.to_string()))?;
        tracing::info!(bridge = %s.bridge, subnet = %s.subnet, resolved, "host network up");
        Ok(Up { netlink, pool: Arc::new(pool), dns, resolved })
    }

    /// The ruleset the settings ask for.
    pub fn ruleset(&self) -> Ruleset {
        let s = &self.settings;
        Ruleset {
            table: NFT_TABLE.into(),
            bridge: s.bridge.clone(),
            subnet: s.subnet,
            allowed_host_ports: s.allow_host_ports.clone(),
            dns_port: 53,
            guest_to_guest: s.guest_to_guest,
        }
    }

    async fn route_resolved(&self) -> bool {
        let (bridge, host) = (self.settings.bridge.clone(), self.settings.subnet.host_address());
        tokio::task::spawn_blocking(move || {
            let routing = ResolvedRouting::new(banger_net::resolved::SystemResolvectl, "vm");
            if !routing.available() {
                return false;
            }
            match routing.route(&bridge, host) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot route .vm names on systemd-resolved");
                    false
                }
            }
        })
        .await
        .unwrap_or(false)
    }

    /// A tap attached to the bridge for a booting VM (the pool is topped up after).
    pub async fn take_tap(&self) -> Result<String> {
        let state = self.state.lock().await;
        let up = state.up.as_ref().ok_or_else(|| Error::Internal("the host network is not up".into()))?;
        let tap = up.pool.take(&self.settings.bridge).await.map_err(|e| failed("tap")(e.to_string()))?;
        // Topped up off the boot's path: the next boot finds a tap ready.
        let pool = Arc::clone(&up.pool);
        tokio::spawn(async move {
            if let Err(e) = pool.fill().await {
                tracing::warn!(error = %e, "cannot top up the tap pool");
            }
        });
        Ok(tap)
    }

    /// Gives back a stopped VM's tap (kept ready, or deleted). With the
    /// host network down, the tap is deleted if it still exists.
    pub async fn give_back(&self, tap: &str) -> Result<()> {
        let state = self.state.lock().await;
        match &state.up {
            Some(up) => up.pool.give_back(tap).await.map_err(|e| failed("tap")(e.to_string())),
            None => {
                let netlink = Netlink::new().map_err(|e| failed("netlink")(e.to_string()))?;
                netlink.delete(tap).await.map_err(|e| failed("tap")(e.to_string()))
            }
        }
    }

    /// Takes everything down once no VM with networking runs; `running`
    /// says whether one does.
    pub async fn settle(&self, running: bool) {
        if running {
            return;
        }
        let up = self.state.lock().await.up.take();
        if up.is_some() {
            self.tear_down(up, true).await;
        }
    }

    /// At daemon start: taps banger owns that no VM holds are deleted, a
    /// crash's leftovers (tables, bridge) go when no networked VM runs, and
    /// everything is rebuilt when one does.
    pub async fn reconcile(&self, in_use: &HashSet<String>, running: bool) -> Result<()> {
        if running {
            return self.ensure_up(in_use).await;
        }
        let netlink = Netlink::new().map_err(|e| failed("netlink")(e.to_string()))?;
        let reclaimed = TapPool::new(NetlinkTaps::new(netlink, None), 0)
            .reclaim(in_use)
            .await
            .map_err(|e| failed("taps")(e.to_string()))?;
        if !reclaimed.is_empty() {
            tracing::info!(?reclaimed, "taps no VM holds were deleted");
        }
        self.tear_down(None, true).await;
        Ok(())
    }

    /// At clean shutdown: the ruleset, the DNS server and resolved's routing
    /// go; the bridge and taps stay while VMs run (they outlive the daemon).
    pub async fn shutdown(&self, vms_run: bool) {
        let up = self.state.lock().await.up.take();
        if up.is_some() || !vms_run {
            self.tear_down(up, !vms_run).await;
        }
    }

    /// Undoes what [`HostNetwork::ensure_up`] makes; what is not there is fine.
    async fn tear_down(&self, up: Option<Up>, links_too: bool) {
        let s = &self.settings;
        let was_up = up.is_some();
        if let Some(Up { dns, resolved, pool, .. }) = up {
            if resolved {
                let bridge = s.bridge.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    ResolvedRouting::new(banger_net::resolved::SystemResolvectl, "vm").revert(&bridge)
                })
                .await;
            }
            if let Some(dns) = dns {
                dns.shutdown().await;
            }
            if links_too {
                if let Err(e) = pool.drain().await {
                    tracing::warn!(error = %e, "cannot delete the ready taps");
                }
            }
        }
        match nft::table_exists(NFT_TABLE).await {
            Ok(false) => {}
            _ => {
                if let Err(e) = nft::remove(NFT_TABLE).await {
                    tracing::warn!(error = %e, "cannot remove banger's nftables tables");
                }
            }
        }
        self.restore_forwarding();
        if links_too {
            match Netlink::new() {
                Ok(netlink) => {
                    let taps = netlink.links_with_prefix(TAP_PREFIX).await.unwrap_or_default();
                    if taps.is_empty() {
                        if let Err(e) = netlink.delete(&s.bridge).await {
                            tracing::warn!(bridge = %s.bridge, error = %e, "cannot delete the bridge");
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "netlink"),
            }
        }
        if was_up {
            tracing::info!(bridge = %s.bridge, "host network down");
        }
    }

    fn forward_note(&self) -> PathBuf {
        self.run_dir.join("ip_forward.before")
    }

    /// Turns IPv4 forwarding on, noting (in the run directory, so a crash
    /// does not lose it) that banger did.
    fn enable_forwarding(&self) -> Result<()> {
        let before = std::fs::read_to_string(IP_FORWARD).map_err(Error::io("cannot read", IP_FORWARD))?;
        if before.trim() == "1" {
            return Ok(());
        }
        let note = self.forward_note();
        std::fs::write(&note, before.trim()).map_err(Error::io("cannot write", &note))?;
        std::fs::write(IP_FORWARD, "1").map_err(Error::io("cannot write", IP_FORWARD))
    }

    /// Puts IPv4 forwarding back as it was, if banger turned it on.
    fn restore_forwarding(&self) {
        let note = self.forward_note();
        if let Ok(before) = std::fs::read_to_string(&note) {
            if let Err(e) = std::fs::write(IP_FORWARD, before.trim()) {
                tracing::warn!(error = %e, "cannot restore {IP_FORWARD}");
            }
            let _ = std::fs::remove_file(&note);
        }
    }

    /// Whether the host network is up now.
    pub async fn is_up(&self) -> bool {
        self.state.lock().await.up.is_some()
    }

    /// The DNS server's address, while it runs.
    pub async fn dns_address(&self) -> Option<SocketAddr> {
        self.state.lock().await.up.as_ref().and_then(|up| up.dns.as_ref().map(DnsServer::local_addr))
    }

    /// The bridge link's netlink handle, while up (tests and doctor).
    pub async fn netlink(&self) -> Option<Netlink> {
        self.state.lock().await.up.as_ref().map(|up| up.netlink.clone())
    }
}

/// The `banger doctor` check of VM networking: off, or on with how the
/// host resolves `NAME.vm` (through systemd-resolved, or what to set up).
pub fn doctor_check(settings: &Settings) -> banger_api::Check {
    use banger_api::{Check, CheckStatus};
    let name = "vm_network".to_owned();
    if !settings.enabled {
        let detail = "VM networking is off ([network] enabled = false): VMs get no NIC; exec, ssh and \
                      forwards still work through banger"
            .to_owned();
        return Check { name, status: CheckStatus::Pass, detail, fix: None };
    }
    let dns = settings.subnet.host_address();
    let detail = format!(
        "VMs get addresses in {} on bridge {}, NAT out through nftables, and NAME.vm names from the DNS \
         server at {dns} (made when the first VM with networking boots)",
        settings.subnet, settings.bridge
    );
    let resolved = ResolvedRouting::new(banger_net::resolved::SystemResolvectl, "vm");
    if !settings.dns || resolved.available() {
        return Check { name, status: CheckStatus::Pass, detail, fix: None };
    }
    let fix = format!(
        "{} (Guests resolve NAME.vm either way, and `ssh NAME.vm` goes through banger.)",
        banger_net::resolved::without_resolved_advice(dns).trim_end().replace('\n', " ")
    );
    Check { name, status: CheckStatus::Warn, detail, fix: Some(fix) }
}
