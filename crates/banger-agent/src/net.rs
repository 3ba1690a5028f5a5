//! The guest's network, from `banger.net=ADDR/PREFIX,GATEWAY,DNS` on the
//! kernel command line: `lo` up, the first ethernet interface given the
//! address and brought up, a default route via the gateway, and
//! `/etc/resolv.conf` naming the DNS server. Done over rtnetlink
//! ([`crate::netlink`]), before the agent serves, so a guest whose agent
//! answers has its network. Nothing here is fatal: a failure is logged and
//! the agent serves all the same.

use std::fmt;
use std::io;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::log::log;
use crate::netlink::{Link, Netlink, Request};

/// How long to wait for the interface: virtio_net may probe after the
/// agent starts.
const INTERFACE_WAIT: Duration = Duration::from_secs(5);
/// The guest's resolver configuration.
const RESOLV_CONF: &str = "/etc/resolv.conf";
/// The kernel command-line parameter.
const PARAM: &str = "banger.net=";

/// What `banger.net=` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NetConfig {
    /// The guest's address.
    pub(crate) address: Ipv4Addr,
    /// Its prefix length, 1 to 32.
    pub(crate) prefix: u8,
    /// The default route's next hop, inside the prefix.
    pub(crate) gateway: Ipv4Addr,
    /// The DNS server for `/etc/resolv.conf`.
    pub(crate) dns: Ipv4Addr,
}

impl NetConfig {
    /// The `banger.net=` of a kernel command line (the last one wins):
    /// `Ok(None)` when there is none, `Err` with the reason when its value
    /// is malformed.
    pub(crate) fn from_cmdline(cmdline: &str) -> Result<Option<NetConfig>, String> {
        let Some(value) = cmdline.split_ascii_whitespace().rev().find_map(|w| w.strip_prefix(PARAM)) else {
            return Ok(None);
        };
        NetConfig::parse(value).map(Some).map_err(|why| format!("{PARAM}{value}: {why}"))
    }

    /// `ADDR/PREFIX,GATEWAY,DNS`.
    fn parse(value: &str) -> Result<NetConfig, String> {
        let fields: Vec<&str> = value.split(',').collect();
        let [cidr, gateway, dns] = fields[..] else {
            return Err("not ADDR/PREFIX,GATEWAY,DNS".into());
        };
        let ip =
            |s: &str, what: &str| s.parse::<Ipv4Addr>().map_err(|_| format!("{what} {s:?} is not an IPv4 address"));
        let (address, prefix) = cidr.split_once('/').ok_or("the address has no /PREFIX")?;
        let address = ip(address, "address")?;
        let prefix = prefix.parse::<u8>().ok().filter(|p| (1..=32).contains(p)).ok_or("the prefix is not 1 to 32")?;
        let config = NetConfig { address, prefix, gateway: ip(gateway, "gateway")?, dns: ip(dns, "DNS server")? };
        if config.gateway == address || !config.in_prefix(config.gateway) {
            return Err(format!("the gateway {} is not another address of {address}/{prefix}", config.gateway));
        }
        Ok(config)
    }

    fn in_prefix(&self, other: Ipv4Addr) -> bool {
        let mask = u32::MAX << (32 - u32::from(self.prefix));
        u32::from(self.address) & mask == u32::from(other) & mask
    }
}

impl fmt::Display for NetConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{} via {}, DNS {}", self.address, self.prefix, self.gateway, self.dns)
    }
}

/// `/etc/resolv.conf` for `dns`: the guests' names end in `.vm`.
pub(crate) fn resolv_conf(dns: Ipv4Addr) -> String {
    format!("nameserver {dns}\nsearch vm\n")
}

/// The interface to configure: the first ethernet one (loopback, tunnels
/// and the like are not ethernet), by index.
pub(crate) fn pick_interface(links: &[Link]) -> Option<&Link> {
    links.iter().filter(|l| l.kind == libc::ARPHRD_ETHER).min_by_key(|l| l.index)
}

/// A step of the set-up that failed.
#[derive(Debug)]
pub(crate) struct NetError {
    step: String,
    source: io::Error,
}

impl fmt::Display for NetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot {}: {}", self.step, self.source)
    }
}

fn step(what: impl Into<String>) -> impl FnOnce(io::Error) -> NetError {
    let step = what.into();
    move |source| NetError { step, source }
}

/// Configures the guest's network from `/proc/cmdline`, if it says to;
/// logs what it did or why not.
pub(crate) fn setup_from_cmdline() {
    let cmdline = match std::fs::read_to_string("/proc/cmdline") {
        Ok(cmdline) => cmdline,
        Err(e) => return log!("cannot read /proc/cmdline for {PARAM}: {e}"),
    };
    let config = match NetConfig::from_cmdline(&cmdline) {
        Ok(Some(config)) => config,
        Ok(None) => return,
        Err(why) => return log!("ignoring {why}"),
    };
    match configure(&config, Path::new(RESOLV_CONF), INTERFACE_WAIT) {
        Ok(name) => log!("network: {name} {config}"),
        Err(e) => log!("network {config}: {e}"),
    }
}

/// Brings `lo` up and configures the first ethernet interface (waiting
/// up to `wait` for it) in the calling thread's network namespace, then
/// writes `resolv` unless it is a symlink. Returns the interface's name.
/// Each step replaces what a previous run made, so running twice (an
/// agent restarted by systemd) is harmless.
pub(crate) fn configure(config: &NetConfig, resolv: &Path, wait: Duration) -> Result<String, NetError> {
    let mut netlink = Netlink::open().map_err(step("open a netlink socket"))?;
    let deadline = Instant::now() + wait;
    let (lo, link) = loop {
        let links = netlink.links().map_err(step("list the network interfaces"))?;
        let lo = links.iter().find(|l| l.kind == libc::ARPHRD_LOOPBACK).map(|l| l.index);
        if let Some(link) = pick_interface(&links) {
            break (lo, link.clone());
        }
        if Instant::now() >= deadline {
            let missing = io::Error::new(io::ErrorKind::NotFound, format!("none appeared within {wait:?}"));
            return Err(step("find an ethernet interface")(missing));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    match lo {
        Some(index) => netlink.apply(&Request::Up { index }).map_err(step("bring lo up"))?,
        None => log!("network: no loopback interface"),
    }
    let index = link.index;
    let name = &link.name;
    let address = Request::Address { index, address: config.address, prefix: config.prefix };
    netlink.apply(&address).map_err(step(format!("give {name} {}/{}", config.address, config.prefix)))?;
    netlink.apply(&Request::Up { index }).map_err(step(format!("bring {name} up")))?;
    let route = Request::DefaultRoute { index, gateway: config.gateway };
    netlink.apply(&route).map_err(step(format!("add the default route via {}", config.gateway)))?;
    write_resolv_conf(resolv, config.dns).map_err(step(format!("write {}", resolv.display())))?;
    Ok(link.name)
}

/// Replaces `path` with [`resolv_conf`] unless it is a symlink (then
/// something else, e.g. systemd-resolved, owns it: left as it is).
fn write_resolv_conf(path: &Path, dns: Ipv4Addr) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            let target = std::fs::read_link(path).unwrap_or_default();
            log!("network: {} is a symlink to {}; left as it is", path.display(), target.display());
            return Ok(());
        }
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
        }
        Err(e) => return Err(e),
    }
    // Through a rename, so a reader never sees half a file.
    let mut partial = path.as_os_str().to_owned();
    partial.push(".banger-partial");
    std::fs::write(&partial, resolv_conf(dns))?;
    std::fs::rename(&partial, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(address: [u8; 4], prefix: u8, gateway: [u8; 4], dns: [u8; 4]) -> NetConfig {
        NetConfig { address: address.into(), prefix, gateway: gateway.into(), dns: dns.into() }
    }

    #[test]
    fn banger_net_comes_from_the_command_line() {
        let cmdline = "root=/dev/vda rw banger.hostname=web banger.net=10.213.0.5/24,10.213.0.1,10.213.0.1 quiet\n";
        assert_eq!(
            NetConfig::from_cmdline(cmdline),
            Ok(Some(config([10, 213, 0, 5], 24, [10, 213, 0, 1], [10, 213, 0, 1])))
        );
        assert_eq!(NetConfig::from_cmdline("root=/dev/vda banger.network=x"), Ok(None));
        assert_eq!(NetConfig::from_cmdline(""), Ok(None));
        let twice = "banger.net=bad banger.net=192.168.7.9/30,192.168.7.10,1.1.1.1";
        assert_eq!(
            NetConfig::from_cmdline(twice),
            Ok(Some(config([192, 168, 7, 9], 30, [192, 168, 7, 10], [1, 1, 1, 1])))
        );
    }

    #[test]
    fn malformed_values_are_refused_with_a_reason() {
        for (value, says) in [
            ("", "not ADDR/PREFIX,GATEWAY,DNS"),
            ("10.0.0.2/24,10.0.0.1", "not ADDR/PREFIX,GATEWAY,DNS"),
            ("10.0.0.2/24,10.0.0.1,10.0.0.1,x", "not ADDR/PREFIX,GATEWAY,DNS"),
            ("10.0.0.2,10.0.0.1,10.0.0.1", "no /PREFIX"),
            ("10.0.0.2/0,10.0.0.1,10.0.0.1", "prefix is not 1 to 32"),
            ("10.0.0.2/33,10.0.0.1,10.0.0.1", "prefix is not 1 to 32"),
            ("10.0.0.2/x,10.0.0.1,10.0.0.1", "prefix is not 1 to 32"),
            ("10.0.0.256/24,10.0.0.1,10.0.0.1", "address \"10.0.0.256\" is not an IPv4 address"),
            ("fd00::2/64,fd00::1,fd00::1", "address \"fd00::2\" is not an IPv4 address"),
            ("10.0.0.2/24,gw,10.0.0.1", "gateway \"gw\""),
            ("10.0.0.2/24,10.0.0.1,", "DNS server \"\""),
            ("10.0.0.2/24,10.0.1.1,10.0.0.1", "gateway 10.0.1.1 is not another address of 10.0.0.2/24"),
            ("10.0.0.2/24,10.0.0.2,10.0.0.1", "is not another address"),
            ("10.0.0.2/32,10.0.0.1,10.0.0.1", "is not another address"),
        ] {
            let err = NetConfig::from_cmdline(&format!("quiet banger.net={value} rw")).unwrap_err();
            assert!(err.starts_with(&format!("banger.net={value}: ")) && err.contains(says), "{value}: {err}");
        }
    }

    #[test]
    fn resolv_conf_names_the_server_and_the_vm_domain() {
        assert_eq!(resolv_conf(Ipv4Addr::new(10, 213, 0, 1)), "nameserver 10.213.0.1\nsearch vm\n");
    }

    #[test]
    fn the_first_ethernet_interface_is_chosen() {
        let link = |index, name: &str, kind| Link { index, name: name.into(), kind };
        let links = [
            link(1, "lo", libc::ARPHRD_LOOPBACK),
            link(4, "eth1", libc::ARPHRD_ETHER),
            link(2, "sit0", libc::ARPHRD_SIT),
            link(3, "ens3", libc::ARPHRD_ETHER),
        ];
        assert_eq!(pick_interface(&links).map(|l| l.name.as_str()), Some("ens3"));
        assert_eq!(pick_interface(&links[..1]), None);
    }

    /// Real rtnetlink in a namespace of the test's own: its end of a veth
    /// pair is the only ethernet interface there; the other end, in a
    /// second namespace, stands for the host's tap.
    #[test]
    fn configure_sets_up_the_interface_in_a_real_namespace() {
        if !banger_netns::require("configure_sets_up_the_interface_in_a_real_namespace", &["ip", "busybox"]) {
            return;
        }
        let guest = banger_netns::Netns::new("agent-guest").unwrap();
        let host = banger_netns::Netns::new("agent-host").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let resolv = dir.path().join("resolv.conf");
        let config = config([10, 213, 0, 2], 24, [10, 213, 0, 1], [10, 213, 0, 1]);

        // No ethernet interface: the wait ends, with the reason.
        let started = Instant::now();
        let err = guest.run(|| configure(&config, &resolv, Duration::from_millis(300))).unwrap_err();
        assert!(err.to_string().starts_with("cannot find an ethernet interface"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(3));

        // One that appears while the set-up waits is taken.
        let named = std::thread::scope(|scope| {
            scope.spawn(|| {
                std::thread::sleep(Duration::from_millis(300));
                guest.veth(&host, "vguest", "vhost").unwrap();
            });
            guest.run(|| configure(&config, &resolv, Duration::from_secs(5)))
        });
        assert_eq!(named.unwrap(), "vguest");
        let addr = guest.ip(&["-4", "addr", "show", "dev", "vguest"]).unwrap();
        assert!(addr.contains("inet 10.213.0.2/24") && addr.contains("UP"), "{addr}");
        let routes = guest.ip(&["-4", "route", "show", "default"]).unwrap();
        assert!(routes.contains("default via 10.213.0.1 dev vguest"), "{routes}");
        assert!(guest.ip(&["link", "show", "lo"]).unwrap().contains("UP"));
        assert_eq!(std::fs::read_to_string(&resolv).unwrap(), resolv_conf(config.dns));

        // Again, as a restarted agent would: nothing fails, nothing doubles.
        assert_eq!(guest.run(|| configure(&config, &resolv, Duration::from_secs(1))).unwrap(), "vguest");
        let addr = guest.ip(&["-4", "addr", "show", "dev", "vguest"]).unwrap();
        assert_eq!(addr.matches("inet ").count(), 1, "{addr}");
        assert_eq!(guest.ip(&["-4", "route", "show", "default"]).unwrap().lines().count(), 1);

        // The other end reaches the configured address.
        host.addr("vhost", "10.213.0.1/24").unwrap();
        host.up("vhost").unwrap();
        let ping = host.command("busybox").args(["ping", "-c", "1", "-W", "5", "10.213.0.2"]).output().unwrap();
        assert!(ping.status.success(), "{}", String::from_utf8_lossy(&ping.stdout));
    }

    #[test]
    fn resolv_conf_is_written_unless_it_is_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let dns = Ipv4Addr::new(10, 213, 0, 1);
        let path = dir.path().join("etc/resolv.conf");
        write_resolv_conf(&path, dns).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), resolv_conf(dns));
        std::fs::write(&path, "nameserver 9.9.9.9\n").unwrap();
        write_resolv_conf(&path, dns).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), resolv_conf(dns));
        assert_eq!(std::fs::read_dir(path.parent().unwrap()).unwrap().count(), 1, "a partial file is left");

        let managed = dir.path().join("stub-resolv.conf");
        std::fs::write(&managed, "nameserver 127.0.0.53\n").unwrap();
        let link = dir.path().join("resolv.conf");
        std::os::unix::fs::symlink(&managed, &link).unwrap();
        write_resolv_conf(&link, dns).unwrap();
        assert_eq!(std::fs::read_to_string(&managed).unwrap(), "nameserver 127.0.0.53\n");
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    }
}
