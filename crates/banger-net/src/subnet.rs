//! The IPv4 subnet VMs live in: parsing it, the bridge's address, handing out
//! guest addresses, each guest's stable MAC, and the reverse DNS zone. Pure
//! arithmetic, no host effects.

use std::collections::HashSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// Why a subnet string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubnetError {
    /// Not of the form `A.B.C.D/N`.
    #[error("subnet {0:?} is not of the form A.B.C.D/N")]
    Syntax(String),
    /// The prefix is outside the supported range.
    #[error("subnet prefix /{0} is outside /16 to /29")]
    Prefix(u8),
    /// The address has bits set beyond the prefix.
    #[error("subnet {given} has host bits set (the network is {network})")]
    HostBits {
        /// What was written.
        given: String,
        /// The network the prefix implies.
        network: Subnet,
    },
}

/// An IPv4 network with its prefix length, from /16 to /29.
///
/// The first usable address belongs to the host's bridge, the rest to guests.
/// Non-private networks are accepted (someone may own a public block and want
/// it), but the daemon should prefer [`Subnet::is_private`] ones and warn
/// otherwise: guests in a public range shadow those addresses on the internet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Subnet {
    network: Ipv4Addr,
    prefix: u8,
}

impl Subnet {
    /// The default: an RFC 1918 /24 chosen to be unlikely to collide with home
    /// routers (`192.168.*`), Docker (`172.17+`) or common VPN ranges.
    pub const DEFAULT: Subnet = Subnet { network: Ipv4Addr::new(10, 213, 0, 0), prefix: 24 };

    /// Prefixes accepted: /16 keeps allocation tables small, /29 leaves room
    /// for five guests.
    pub const PREFIXES: std::ops::RangeInclusive<u8> = 16..=29;

    /// Builds a subnet from its parts, with the same checks as parsing.
    pub fn new(network: Ipv4Addr, prefix: u8) -> Result<Subnet, SubnetError> {
        if !Self::PREFIXES.contains(&prefix) {
            return Err(SubnetError::Prefix(prefix));
        }
        let subnet = Subnet { network: Ipv4Addr::from(u32::from(network) & mask(prefix)), prefix };
        if subnet.network != network {
            return Err(SubnetError::HostBits { given: format!("{network}/{prefix}"), network: subnet });
        }
        Ok(subnet)
    }

    /// The network address (all host bits zero).
    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The netmask, such as 255.255.255.0 for a /24.
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(mask(self.prefix))
    }

    /// The broadcast address (all host bits one).
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !mask(self.prefix))
    }

    /// The first usable address: the bridge's, the guests' gateway and DNS.
    pub fn host_address(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    /// Whether the network is in a private range (RFC 1918).
    pub fn is_private(&self) -> bool {
        self.network.is_private() && self.broadcast().is_private()
    }

    /// Whether `addr` is inside the network (network and broadcast included).
    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & mask(self.prefix) == u32::from(self.network)
    }

    /// Whether the two networks share any address. Networks nest or are
    /// disjoint, so this is whether the wider one contains the other.
    pub fn overlaps(&self, other: &Subnet) -> bool {
        let wider = self.prefix.min(other.prefix);
        (u32::from(self.network) ^ u32::from(other.network)) & mask(wider) == 0
    }

    /// Whether the network overlaps `addr/prefix`, for a prefix of any length
    /// (routes are not limited to /16 to /29).
    pub fn overlaps_route(&self, addr: Ipv4Addr, prefix: u8) -> bool {
        let wider = self.prefix.min(prefix.min(32));
        (u32::from(self.network) ^ u32::from(addr)) & mask(wider) == 0
    }

    /// The lowest guest address not in `used`: never the network, the host
    /// (bridge) or the broadcast address. None when the subnet is full.
    pub fn allocate(&self, used: &HashSet<Ipv4Addr>) -> Option<Ipv4Addr> {
        let first = u32::from(self.host_address()) + 1;
        let last = u32::from(self.broadcast()) - 1;
        (first..=last).map(Ipv4Addr::from).find(|addr| !used.contains(addr))
    }

    /// The zone that answers reverse lookups (PTR) for this subnet, with the
    /// trailing dot: `0.213.10.in-addr.arpa.` for 10.213.0.0/24.
    ///
    /// in-addr.arpa delegates on octet boundaries, so for a prefix that is
    /// not a multiple of 8 this is the smallest octet-aligned zone that holds
    /// the subnet (a /26 gets its /24's zone, a /20 its /16's). The zone is
    /// then wider than the subnet: a server for it should answer only for
    /// addresses [`Subnet::contains`] and say NXDOMAIN for the rest.
    pub fn reverse_zone(&self) -> String {
        let octets = self.network.octets();
        let kept = usize::from(self.prefix / 8);
        let mut zone = String::new();
        for octet in octets[..kept].iter().rev() {
            zone.push_str(&format!("{octet}."));
        }
        zone.push_str("in-addr.arpa.");
        zone
    }
}

impl Default for Subnet {
    fn default() -> Self {
        Subnet::DEFAULT
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl FromStr for Subnet {
    type Err = SubnetError;

    fn from_str(s: &str) -> Result<Subnet, SubnetError> {
        let syntax = || SubnetError::Syntax(s.to_string());
        let (addr, prefix) = s.trim().split_once('/').ok_or_else(syntax)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| syntax())?;
        // Digits only: u8's parser would also take "+24".
        if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return Err(syntax());
        }
        let prefix: u8 = prefix.parse().map_err(|_| syntax())?;
        Subnet::new(addr, prefix)
    }
}

/// The MAC address a guest with `addr` gets: locally administered unicast
/// (`02:`), then `62` (for "banger"), then the four octets of the address. The
/// same address always gives the same MAC, so a VM keeps its MAC across
/// restarts and guests' ARP caches stay right.
pub fn mac_for(addr: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = addr.octets();
    [0x02, 0x62, a, b, c, d]
}

/// Formats a MAC address as `02:62:0a:d5:00:02`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

fn mask(prefix: u8) -> u32 {
    match prefix {
        0 => 0,
        p => u32::MAX << (32 - u32::from(p.min(32))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(text: &str) -> Subnet {
        text.parse().unwrap()
    }

    #[test]
    fn parses_and_displays() {
        assert_eq!(s("10.213.0.0/24"), Subnet::DEFAULT);
        assert_eq!(Subnet::DEFAULT.to_string(), "10.213.0.0/24");
        assert_eq!(s(" 192.168.64.0/18 ").to_string(), "192.168.64.0/18");
    }

    #[test]
    fn refuses_bad_input_with_reasons() {
        for bad in ["", "10.0.0.0", "10.0.0/24", "10.0.0.0/", "10.0.0.0/+24", "x/24"] {
            assert!(matches!(bad.parse::<Subnet>(), Err(SubnetError::Syntax(_))), "{bad}");
        }
        assert_eq!("10.0.0.0/15".parse::<Subnet>(), Err(SubnetError::Prefix(15)));
        assert_eq!("10.0.0.0/30".parse::<Subnet>(), Err(SubnetError::Prefix(30)));
        let err = "10.213.0.1/24".parse::<Subnet>().unwrap_err();
        assert_eq!(err.to_string(), "subnet 10.213.0.1/24 has host bits set (the network is 10.213.0.0/24)");
        assert_eq!("10.0.0.0/8".parse::<Subnet>().unwrap_err().to_string(), "subnet prefix /8 is outside /16 to /29");
    }

    #[test]
    fn public_networks_are_allowed_but_flagged() {
        assert!(!s("203.0.113.0/24").is_private());
        assert!(Subnet::DEFAULT.is_private());
        assert!(s("172.16.0.0/16").is_private());
    }

    #[test]
    fn addresses() {
        let net = Subnet::DEFAULT;
        assert_eq!(net.host_address(), Ipv4Addr::new(10, 213, 0, 1));
        assert_eq!(net.broadcast(), Ipv4Addr::new(10, 213, 0, 255));
        assert_eq!(net.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert!(net.contains(Ipv4Addr::new(10, 213, 0, 77)));
        assert!(!net.contains(Ipv4Addr::new(10, 213, 1, 1)));
        let small = s("10.1.2.8/29");
        assert_eq!(small.host_address(), Ipv4Addr::new(10, 1, 2, 9));
        assert_eq!(small.broadcast(), Ipv4Addr::new(10, 1, 2, 15));
    }

    #[test]
    fn overlaps() {
        let net = Subnet::DEFAULT;
        assert!(net.overlaps(&s("10.213.0.0/16")));
        assert!(s("10.213.0.0/16").overlaps(&net));
        assert!(net.overlaps(&s("10.213.0.128/25")));
        assert!(!net.overlaps(&s("10.213.1.0/24")));
        assert!(net.overlaps_route(Ipv4Addr::new(10, 0, 0, 0), 8));
        assert!(net.overlaps_route(Ipv4Addr::new(10, 213, 0, 5), 32));
        assert!(!net.overlaps_route(Ipv4Addr::new(192, 168, 0, 0), 16));
        assert!(net.overlaps_route(Ipv4Addr::UNSPECIFIED, 0));
    }

    #[test]
    fn allocates_lowest_free_guest_address() {
        let net = s("10.1.2.8/29");
        let mut used = HashSet::new();
        let mut got = Vec::new();
        while let Some(addr) = net.allocate(&used) {
            used.insert(addr);
            got.push(addr.octets()[3]);
        }
        // .8 network, .9 host, .15 broadcast are never handed out.
        assert_eq!(got, [10, 11, 12, 13, 14]);
        used.remove(&Ipv4Addr::new(10, 1, 2, 12));
        assert_eq!(net.allocate(&used), Some(Ipv4Addr::new(10, 1, 2, 12)));
        // A used set holding foreign addresses does not matter.
        let foreign = HashSet::from([Ipv4Addr::new(192, 168, 0, 2)]);
        assert_eq!(Subnet::DEFAULT.allocate(&foreign), Some(Ipv4Addr::new(10, 213, 0, 2)));
    }

    #[test]
    fn macs_are_stable_local_unicast() {
        let mac = mac_for(Ipv4Addr::new(10, 213, 0, 2));
        assert_eq!(format_mac(&mac), "02:62:0a:d5:00:02");
        assert_eq!(mac[0] & 0b11, 0b10, "locally administered, unicast");
        assert_eq!(mac, mac_for(Ipv4Addr::new(10, 213, 0, 2)));
        assert_ne!(mac, mac_for(Ipv4Addr::new(10, 213, 0, 3)));
    }

    #[test]
    fn reverse_zones() {
        assert_eq!(Subnet::DEFAULT.reverse_zone(), "0.213.10.in-addr.arpa.");
        assert_eq!(s("10.213.0.0/16").reverse_zone(), "213.10.in-addr.arpa.");
        assert_eq!(s("10.213.0.64/26").reverse_zone(), "0.213.10.in-addr.arpa.");
        assert_eq!(s("10.213.16.0/20").reverse_zone(), "213.10.in-addr.arpa.");
    }
}
