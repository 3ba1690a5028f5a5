//! Host networking for VMs, with no daemon state: the bridge and the taps
//! (netlink), the nftables ruleset banger owns (computed by pure code,
//! applied in one transaction), the DNS server that answers `NAME.vm`, and
//! the systemd-resolved routing of `~vm` to it. The daemon decides what
//! exists; this crate makes the host match.

pub mod dns;
pub mod link;
pub mod nft;
pub mod resolved;
pub mod subnet;
pub mod tap;
pub mod tap_pool;
