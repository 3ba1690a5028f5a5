//! `[network]` in the config file: whether VMs get networking, the
//! bridge's name and subnet, the tap pool's size, what guests may reach.

use banger_net::nft::Proto;
use banger_net::subnet::Subnet;
use serde::Deserialize;

/// What the host network should look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Off: VMs get no NIC and the host's network is never changed.
    pub enabled: bool,
    /// The bridge's name.
    pub bridge: String,
    /// The guests' subnet; the bridge has its first address.
    pub subnet: Subnet,
    /// Taps kept ready.
    pub tap_pool: usize,
    /// Whether guests reach each other.
    pub guest_to_guest: bool,
    /// Host ports (on the bridge's address) guests may open, besides DNS.
    pub allow_host_ports: Vec<(Proto, u16)>,
    /// Run the `.vm` DNS server (and route resolved to it).
    pub dns: bool,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            enabled: true,
            bridge: "banger0".into(),
            subnet: Subnet::DEFAULT,
            tap_pool: 2,
            guest_to_guest: true,
            allow_host_ports: Vec::new(),
            dns: true,
        }
    }
}

/// The `[network]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSection {
    /// `false` turns networking off.
    pub enabled: Option<bool>,
    /// The bridge's name (at most 15 bytes).
    pub bridge: Option<String>,
    /// The subnet, e.g. "10.213.0.0/24".
    pub subnet: Option<String>,
    /// Taps kept ready.
    pub tap_pool: Option<usize>,
    /// Whether guests reach each other.
    pub guest_to_guest: Option<bool>,
    /// Host ports guests may open, as "tcp/8080" or "udp/5353".
    #[serde(default)]
    pub allow_host_ports: Vec<String>,
    /// Run the `.vm` DNS server.
    pub dns: Option<bool>,
}

impl Settings {
    /// Applies the file's `[network]` table; a bad value is an error naming it.
    pub fn apply(&mut self, section: NetworkSection) -> Result<(), String> {
        if let Some(enabled) = section.enabled {
            self.enabled = enabled;
        }
        if let Some(bridge) = section.bridge {
            let valid = !bridge.is_empty()
                && bridge.len() <= 15
                && bridge.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !valid {
                return Err(format!("[network] bridge {bridge:?}: 1 to 15 letters, digits, - or _"));
            }
            self.bridge = bridge;
        }
        if let Some(subnet) = section.subnet {
            self.subnet = subnet.parse().map_err(|e| format!("[network] subnet {subnet:?}: {e}"))?;
        }
        if let Some(pool) = section.tap_pool {
            self.tap_pool = pool;
        }
        if let Some(g2g) = section.guest_to_guest {
            self.guest_to_guest = g2g;
        }
        if let Some(dns) = section.dns {
            self.dns = dns;
        }
        for port in section.allow_host_ports {
            self.allow_host_ports.push(parse_port(&port)?);
        }
        Ok(())
    }
}

/// "tcp/8080" or "udp/5353".
fn parse_port(text: &str) -> Result<(Proto, u16), String> {
    let bad = || format!("[network] allow_host_ports {text:?}: write tcp/PORT or udp/PORT");
    let (proto, port) = text.split_once('/').ok_or_else(bad)?;
    let proto = match proto {
        "tcp" => Proto::Tcp,
        "udp" => Proto::Udp,
        _ => return Err(bad()),
    };
    match port.parse::<u16>() {
        Ok(port) if port > 0 => Ok((proto, port)),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_overrides_the_defaults_and_bad_values_are_named() {
        let mut settings = Settings::default();
        let section: NetworkSection = toml::from_str(
            "enabled = true\nbridge = \"br-test\"\nsubnet = \"10.99.0.0/24\"\ntap_pool = 0\nguest_to_guest = false\nallow_host_ports = [\"tcp/8080\", \"udp/5353\"]\n",
        )
        .unwrap();
        settings.apply(section).unwrap();
        assert_eq!(settings.bridge, "br-test");
        assert_eq!(settings.subnet.to_string(), "10.99.0.0/24");
        assert_eq!((settings.tap_pool, settings.guest_to_guest), (0, false));
        assert_eq!(settings.allow_host_ports, [(Proto::Tcp, 8080), (Proto::Udp, 5353)]);
        for bad in ["bridge = \"a-name-far-too-long\"", "subnet = \"10.99.0.1/24\"", "allow_host_ports = [\"sctp/1\"]"]
        {
            let section: NetworkSection = toml::from_str(bad).unwrap();
            assert!(Settings::default().apply(section).is_err(), "{bad}");
        }
    }
}
