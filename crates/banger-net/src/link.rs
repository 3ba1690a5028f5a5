//! Links over rtnetlink: banger's bridge (made, addressed, brought up,
//! idempotently), attaching taps to it, finding and deleting links by name,
//! and spotting host routes that would clash with the guests' subnet.
//!
//! A [`Netlink`] talks to the network namespace of the thread that opened it.

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, LinkBridge, LinkUnspec, RouteMessageBuilder};

use crate::subnet::Subnet;

/// What went wrong talking netlink.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The netlink socket could not be opened.
    #[error("cannot open a netlink socket")]
    Socket(#[source] std::io::Error),
    /// The kernel refused a request about a link.
    #[error("cannot {action} {link}")]
    Request {
        /// What was asked, such as "create bridge".
        action: &'static str,
        /// The link it was about.
        link: String,
        /// What the kernel said.
        #[source]
        source: rtnetlink::Error,
    },
    /// A link that must exist does not.
    #[error("link {0} does not exist")]
    NotFound(String),
    /// The bridge's name is taken by a link of another kind.
    #[error("link {link} exists but is not a bridge (kind {kind})")]
    NotABridge {
        /// The link.
        link: String,
        /// Its kind, as netlink names it.
        kind: String,
    },
}

/// A handle on the namespace's links and routes.
#[derive(Debug, Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens a netlink socket in the calling thread's network namespace; its
    /// connection runs as a task on the current tokio runtime.
    pub fn new() -> Result<Netlink, LinkError> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(LinkError::Socket)?;
        tokio::spawn(connection);
        Ok(Netlink { handle })
    }

    /// Makes bridge `name` exist, with exactly `host_addr/prefix` as its IPv4
    /// address, and up. Changes nothing when that already holds; other IPv4
    /// addresses on it are removed (IPv6 ones are left alone).
    ///
    /// Its MAC is set to [`mac_for`](crate::subnet::mac_for)`(host_addr)`:
    /// left alone, a bridge takes the lowest MAC of its ports, so it would
    /// change as taps come and go (and after a daemon restart), and guests
    /// would keep sending to the gateway's old MAC from their ARP caches.
    pub async fn ensure_bridge(&self, name: &str, host_addr: Ipv4Addr, prefix: u8) -> Result<(), LinkError> {
        let link = match self.get(name).await? {
            Some(link) => link,
            None => {
                tracing::info!(bridge = %name, "creating bridge");
                self.handle
                    .link()
                    .add(LinkBridge::new(name).build())
                    .execute()
                    .await
                    .map_err(request("create bridge", name))?;
                self.get(name).await?.ok_or_else(|| LinkError::NotFound(name.into()))?
            }
        };
        if let Some(kind) = kind_of(&link).filter(|kind| *kind != InfoKind::Bridge) {
            return Err(LinkError::NotABridge { link: name.into(), kind: kind.to_string() });
        }
        let index = link.header.index;
        let mut have_ours = false;
        for addr in self.ipv4_addresses(index, name).await? {
            if ipv4_of(&addr) == Some(host_addr) && addr.header.prefix_len == prefix {
                have_ours = true;
                continue;
            }
            tracing::info!(bridge = %name, addr = ?ipv4_of(&addr), "removing stray address");
            self.handle.address().del(addr).execute().await.map_err(request("remove an address from", name))?;
        }
        if !have_ours {
            self.handle
                .address()
                .add(index, IpAddr::V4(host_addr), prefix)
                .execute()
                .await
                .map_err(request("set the address of", name))?;
        }
        let mac = crate::subnet::mac_for(host_addr).to_vec();
        let has_mac = link.attributes.iter().any(|a| matches!(a, LinkAttribute::Address(m) if *m == mac));
        if !has_mac {
            self.set(LinkUnspec::new_with_index(index).address(mac).build(), "set the MAC of", name).await?;
        }
        if !link.header.flags.contains(LinkFlags::Up) {
            self.set(LinkUnspec::new_with_index(index).up().build(), "bring up", name).await?;
        }
        Ok(())
    }

    /// Deletes link `name`; absent is fine.
    pub async fn delete(&self, name: &str) -> Result<(), LinkError> {
        let Some(link) = self.get(name).await? else {
            return Ok(());
        };
        match self.handle.link().del(link.header.index).execute().await {
            // Gone between the lookup and the delete: just as good.
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(()),
            other => other.map_err(request("delete", name)),
        }
    }

    /// Attaches `tap` to `bridge` and brings it up.
    pub async fn attach(&self, tap: &str, bridge: &str) -> Result<(), LinkError> {
        let bridge_index = self.index(bridge).await?;
        let index = self.index(tap).await?;
        let msg = LinkUnspec::new_with_index(index).controller(bridge_index).up().build();
        self.set(msg, "attach to the bridge", tap).await
    }

    /// Takes `tap` off its bridge and brings it down.
    pub async fn detach(&self, tap: &str) -> Result<(), LinkError> {
        let index = self.index(tap).await?;
        let msg = LinkUnspec::new_with_index(index).nocontroller().down().build();
        self.set(msg, "detach from its bridge", tap).await
    }

    /// Names of the links whose name starts with `prefix`, sorted.
    pub async fn links_with_prefix(&self, prefix: &str) -> Result<Vec<String>, LinkError> {
        let mut names: Vec<String> = self
            .all_links()
            .await?
            .iter()
            .filter_map(name_of)
            .filter(|name| name.starts_with(prefix))
            .map(str::to_string)
            .collect();
        names.sort();
        Ok(names)
    }

    /// Whether link `name` exists.
    pub async fn exists(&self, name: &str) -> Result<bool, LinkError> {
        Ok(self.get(name).await?.is_some())
    }

    /// The first IPv4 route of the main table that overlaps `subnet` and does
    /// not go out of `own_bridge`, described the way `ip route` would, so the
    /// daemon can refuse to set up networking with a clear message.
    ///
    /// The default route overlaps every subnet and is not a conflict (the
    /// bridge's more specific route wins only for the subnet), so routes of
    /// prefix length 0 are skipped.
    pub async fn conflicting_route(&self, subnet: &Subnet, own_bridge: &str) -> Result<Option<String>, LinkError> {
        let own = self.get(own_bridge).await?.map(|link| link.header.index);
        let query = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let routes: Vec<RouteMessage> = self
            .handle
            .route()
            .get(query)
            .execute()
            .try_collect()
            .await
            .map_err(request("list the routes of", "the namespace"))?;
        for route in routes.iter().filter(|r| table_of(r) == u32::from(RouteHeader::RT_TABLE_MAIN)) {
            let prefix = route.header.destination_prefix_length;
            let dest = route_dest(route);
            let oif = route.attributes.iter().find_map(|a| match a {
                RouteAttribute::Oif(i) => Some(*i),
                _ => None,
            });
            if prefix == 0 || !subnet.overlaps_route(dest, prefix) || (own.is_some() && oif == own) {
                continue;
            }
            return Ok(Some(self.describe(route, dest, oif).await?));
        }
        Ok(None)
    }

    async fn describe(&self, route: &RouteMessage, dest: Ipv4Addr, oif: Option<u32>) -> Result<String, LinkError> {
        let mut text = format!("{dest}/{}", route.header.destination_prefix_length);
        for attr in &route.attributes {
            if let RouteAttribute::Gateway(RouteAddress::Inet(gw)) = attr {
                text.push_str(&format!(" via {gw}"));
            }
        }
        if let Some(index) = oif {
            let name = self.name_of_index(index).await?;
            text.push_str(&format!(" dev {}", name.unwrap_or_else(|| format!("#{index}"))));
        }
        Ok(text)
    }

    async fn set(&self, msg: LinkMessage, action: &'static str, link: &str) -> Result<(), LinkError> {
        self.handle.link().set(msg).execute().await.map_err(request(action, link))
    }

    async fn index(&self, name: &str) -> Result<u32, LinkError> {
        match self.get(name).await? {
            Some(link) => Ok(link.header.index),
            None => Err(LinkError::NotFound(name.into())),
        }
    }

    async fn get(&self, name: &str) -> Result<Option<LinkMessage>, LinkError> {
        let mut links = self.handle.link().get().match_name(name).execute();
        match links.try_next().await {
            Ok(link) => Ok(link),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(request("look up", name)(e)),
        }
    }

    async fn name_of_index(&self, index: u32) -> Result<Option<String>, LinkError> {
        let mut links = self.handle.link().get().match_index(index).execute();
        match links.try_next().await {
            Ok(link) => Ok(link.as_ref().and_then(name_of).map(str::to_string)),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(request("look up", &format!("link #{index}"))(e)),
        }
    }

    async fn all_links(&self) -> Result<Vec<LinkMessage>, LinkError> {
        self.handle.link().get().execute().try_collect().await.map_err(request("list", "the links"))
    }

    async fn ipv4_addresses(&self, index: u32, name: &str) -> Result<Vec<AddressMessage>, LinkError> {
        let addrs: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(request("list the addresses of", name))?;
        Ok(addrs.into_iter().filter(|a| a.header.family == AddressFamily::Inet).collect())
    }
}

fn request(action: &'static str, link: &str) -> impl FnOnce(rtnetlink::Error) -> LinkError {
    let link = link.to_string();
    move |source| LinkError::Request { action, link, source }
}

/// The positive errno of a netlink error reply, if it is one.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(msg) => msg.code.map(|code| -code.get()),
        _ => None,
    }
}

fn name_of(link: &LinkMessage) -> Option<&str> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(name) => Some(name.as_str()),
        _ => None,
    })
}

fn kind_of(link: &LinkMessage) -> Option<InfoKind> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|info| match info {
            LinkInfo::Kind(kind) => Some(kind.clone()),
            _ => None,
        }),
        _ => None,
    })
}

fn ipv4_of(addr: &AddressMessage) -> Option<Ipv4Addr> {
    // On a bridge Local and Address agree; Local is the interface's own.
    addr.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
        _ => None,
    })
}

fn table_of(route: &RouteMessage) -> u32 {
    // The header holds only 8 bits; the attribute, when present, is the truth.
    route
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(route.header.table))
}

fn route_dest(route: &RouteMessage) -> Ipv4Addr {
    route
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(*ip),
            _ => None,
        })
        .unwrap_or(Ipv4Addr::UNSPECIFIED)
}
