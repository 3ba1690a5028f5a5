//! The names the DNS server answers: each networked VM's name and address,
//! kept in memory (the server asks on every question) and changed as VMs
//! are made and removed.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::RwLock;

/// VM names and their addresses.
#[derive(Debug, Default)]
pub struct VmNames {
    by_name: RwLock<HashMap<String, Ipv4Addr>>,
}

impl VmNames {
    /// Records that VM `name` has `address`.
    pub fn set(&self, name: &str, address: Ipv4Addr) {
        self.by_name.write().unwrap_or_else(|e| e.into_inner()).insert(name.to_owned(), address);
    }

    /// Forgets VM `name`.
    pub fn remove(&self, name: &str) {
        self.by_name.write().unwrap_or_else(|e| e.into_inner()).remove(name);
    }
}

impl banger_net::dns::Records for VmNames {
    fn address(&self, name: &str) -> Option<Ipv4Addr> {
        self.by_name.read().unwrap_or_else(|e| e.into_inner()).get(name).copied()
    }

    fn name_of(&self, addr: Ipv4Addr) -> Option<String> {
        let names = self.by_name.read().unwrap_or_else(|e| e.into_inner());
        names.iter().find(|(_, a)| **a == addr).map(|(n, _)| n.clone())
    }
}
