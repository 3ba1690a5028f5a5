//! banger-net against the real kernel: netlink, /dev/net/tun and nft, each
//! test inside network namespaces of its own (never the machine's), removed
//! at the end, panics included.
//!
//! Run as root: `cargo test -p banger-net --test netns`. Needs `ip`
//! (iproute2) and `nft` (nftables). Without them, or without root, the tests
//! print why and pass, except under `CI=true`, where they fail.

use std::collections::HashSet;
use std::future::Future;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use banger_net::link::{LinkError, Netlink};
use banger_net::nft::{self, Proto, Ruleset};
use banger_net::subnet::Subnet;
use banger_net::tap::{create_tap, NetlinkTaps, TapOwner, TAP_PREFIX};
use banger_net::tap_pool::TapPool;
use banger_netns::{require, Netns};

const BRIDGE: &str = "bgbr0";
/// Long enough for a veth round trip many times over, short enough that the
/// checks that must fail do not drag.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(400);

/// Runs `f`'s future to completion on a runtime inside `ns`, within 30s.
fn within<T: Send, F: Future<Output = T>>(ns: &Netns, f: impl FnOnce() -> F + Send) -> T {
    ns.run(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(30), f()).await.expect("test step timed out") })
    })
}

fn host_addr() -> Ipv4Addr {
    Subnet::DEFAULT.host_address()
}

#[test]
fn bridge_ensure_is_idempotent_and_delete_works() {
    if !require("bridge", &["ip"]) {
        return;
    }
    let ns = Netns::new("bridge").unwrap();
    within(&ns, || async {
        let nl = Netlink::new().unwrap();
        nl.ensure_bridge(BRIDGE, host_addr(), 24).await.unwrap();
        let first = ns.ip(&["addr", "show", "dev", BRIDGE]).unwrap();
        assert!(first.contains("inet 10.213.0.1/24"), "{first}");
        assert!(first.contains(",UP"), "bridge is up: {first}");

        nl.ensure_bridge(BRIDGE, host_addr(), 24).await.unwrap();
        let second = ns.ip(&["addr", "show", "dev", BRIDGE]).unwrap();
        assert_eq!(first, second, "a second ensure changes nothing");

        // A stray address (someone's manual edit) is removed, ours kept.
        ns.addr(BRIDGE, "10.9.9.9/24").unwrap();
        nl.ensure_bridge(BRIDGE, host_addr(), 24).await.unwrap();
        let third = ns.ip(&["-4", "addr", "show", "dev", BRIDGE]).unwrap();
        assert!(!third.contains("10.9.9.9"), "{third}");
        assert!(third.contains("inet 10.213.0.1/24"), "{third}");

        // A name taken by another kind of link is refused, not converted.
        ns.ip(&["link", "add", "notbr", "type", "veth", "peer", "name", "notbr1"]).unwrap();
        let err = nl.ensure_bridge("notbr", host_addr(), 24).await.unwrap_err();
        assert!(matches!(err, LinkError::NotABridge { .. }), "{err}");
        assert_eq!(err.to_string(), "link notbr exists but is not a bridge (kind veth)");

        assert!(nl.exists(BRIDGE).await.unwrap());
        nl.delete(BRIDGE).await.unwrap();
        assert!(!nl.exists(BRIDGE).await.unwrap());
        nl.delete(BRIDGE).await.unwrap();
    });
}

#[test]
fn taps_attach_detach_and_the_pool_reclaims_them() {
    if !require("taps", &["ip"]) {
        return;
    }
    let ns = Netns::new("tap").unwrap();
    within(&ns, || async {
        let nl = Netlink::new().unwrap();
        nl.ensure_bridge(BRIDGE, host_addr(), 24).await.unwrap();

        let owner = TapOwner { uid: 4321, gid: 4322 };
        create_tap("bgtap5", Some(owner)).unwrap();
        let details = ns.ip(&["-d", "link", "show", "bgtap5"]).unwrap();
        assert!(details.contains("tun type tap pi off vnet_hdr on persist on"), "{details}");
        assert!(details.contains("user 4321 group 4322"), "{details}");
        create_tap("bgtap5", Some(owner)).unwrap(); // again: fine, still one

        nl.attach("bgtap5", BRIDGE).await.unwrap();
        let shown = ns.ip(&["link", "show", "bgtap5"]).unwrap();
        assert!(shown.contains("master bgbr0"), "{shown}");
        nl.detach("bgtap5").await.unwrap();
        let shown = ns.ip(&["link", "show", "bgtap5"]).unwrap();
        assert!(!shown.contains("master"), "{shown}");
        assert!(!shown.contains(",UP"), "detached tap is down: {shown}");
        let err = nl.attach("bgtap404", BRIDGE).await.unwrap_err();
        assert_eq!(err.to_string(), "link bgtap404 does not exist");

        // A crash left bgtap5 and bgtap6 behind; bgtap6 is still a VM's.
        create_tap("bgtap6", None).unwrap();
        let pool = TapPool::new(NetlinkTaps::new(nl.clone(), None), 2);
        let deleted = pool.reclaim(&HashSet::from(["bgtap6".to_string()])).await.unwrap();
        assert_eq!(deleted, ["bgtap5"]);
        assert_eq!(nl.links_with_prefix(TAP_PREFIX).await.unwrap(), ["bgtap6"]);
        nl.delete("bgtap6").await.unwrap();
        pool.reclaim(&HashSet::new()).await.unwrap();
        assert!(nl.links_with_prefix(TAP_PREFIX).await.unwrap().is_empty());

        pool.fill().await.unwrap();
        assert_eq!(pool.ready_count(), 2);
        let ready = nl.links_with_prefix(TAP_PREFIX).await.unwrap();
        assert_eq!(ready, ["bgtap0", "bgtap1"]);
        for tap in &ready {
            let shown = ns.ip(&["link", "show", tap]).unwrap();
            assert!(!shown.contains("master") && !shown.contains(",UP"), "{shown}");
        }

        let started = Instant::now();
        let tap = pool.take(BRIDGE).await.unwrap();
        let took = started.elapsed();
        assert!(took < Duration::from_millis(200), "take took {took:?}");
        let shown = ns.ip(&["link", "show", &tap]).unwrap();
        assert!(shown.contains("master bgbr0") && shown.contains(",UP"), "{shown}");
        eprintln!("take of a ready tap: {took:?}");

        pool.give_back(&tap).await.unwrap();
        pool.fill().await.unwrap();
        assert_eq!(nl.links_with_prefix(TAP_PREFIX).await.unwrap().len(), 2);
        pool.drain().await.unwrap();
        pool.reclaim(&HashSet::new()).await.unwrap();
        assert!(nl.links_with_prefix(TAP_PREFIX).await.unwrap().is_empty());
    });
}

#[test]
fn conflicting_route_finds_foreign_routes_only() {
    if !require("routes", &["ip"]) {
        return;
    }
    let ns = Netns::new("route").unwrap();
    within(&ns, || async {
        let nl = Netlink::new().unwrap();
        let subnet = Subnet::DEFAULT;
        assert_eq!(nl.conflicting_route(&subnet, BRIDGE).await.unwrap(), None);

        // The bridge's own connected route is not a conflict.
        nl.ensure_bridge(BRIDGE, host_addr(), 24).await.unwrap();
        assert_eq!(nl.conflicting_route(&subnet, BRIDGE).await.unwrap(), None);

        ns.ip(&["link", "add", "lan0", "type", "veth", "peer", "name", "lan1"]).unwrap();
        ns.addr("lan0", "192.168.50.2/24").unwrap();
        ns.up("lan1").unwrap();
        ns.up("lan0").unwrap();
        ns.default_route("192.168.50.1").unwrap();
        ns.ip(&["route", "add", "10.214.0.0/16", "via", "192.168.50.1"]).unwrap();
        assert_eq!(
            nl.conflicting_route(&subnet, BRIDGE).await.unwrap(),
            None,
            "the default route and a disjoint route do not conflict"
        );

        ns.ip(&["route", "add", "10.213.0.0/16", "via", "192.168.50.1"]).unwrap();
        assert_eq!(
            nl.conflicting_route(&subnet, BRIDGE).await.unwrap().as_deref(),
            Some("10.213.0.0/16 via 192.168.50.1 dev lan0")
        );
        // Before the bridge exists, its would-be route on another link counts.
        assert!(nl.conflicting_route(&subnet, "nosuchbr").await.unwrap().is_some());
    });
}

fn ruleset(guest_to_guest: bool) -> Ruleset {
    Ruleset {
        table: "banger".into(),
        bridge: BRIDGE.into(),
        subnet: Subnet::DEFAULT,
        allowed_host_ports: vec![(Proto::Tcp, 2223)],
        dns_port: 5353,
        guest_to_guest,
    }
}

fn nft_list(ns: &Netns) -> String {
    let out = ns.command("nft").args(["list", "ruleset"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn nft_apply_is_idempotent_and_remove_works() {
    if !require("nft", &["ip", "nft"]) {
        return;
    }
    let ns = Netns::new("nft").unwrap();
    let golden = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/ruleset.nft");
    let checked = ns.command("nft").args(["-c", "-f", golden]).output().unwrap();
    assert!(checked.status.success(), "golden file: {}", String::from_utf8_lossy(&checked.stderr));

    within(&ns, || async {
        let rules = ruleset(false);
        nft::check(&rules).await.unwrap();
        assert!(!nft::table_exists("banger").await.unwrap());
        nft::apply(&rules).await.unwrap();
        let once = nft_list(&ns);
        nft::apply(&rules).await.unwrap();
        assert_eq!(once, nft_list(&ns), "applying twice changes nothing");
        assert!(once.contains("table bridge banger"), "{once}");
        assert!(nft::table_exists("banger").await.unwrap());

        nft::apply(&ruleset(true)).await.unwrap();
        assert!(nft_list(&ns).contains("oifname \"bgbr0\" accept"));

        nft::remove("banger").await.unwrap();
        assert!(!nft::table_exists("banger").await.unwrap());
        assert_eq!(nft_list(&ns).trim(), "");
        nft::remove("banger").await.unwrap();
    });
}

/// A TCP server in a namespace that answers each connection with the peer
/// address it saw, until dropped.
struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(ns: &Netns, addr: &str) -> Server {
        let addr: SocketAddr = addr.parse().unwrap();
        let listener = ns.run(|| TcpListener::bind(addr)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, peer)) => {
                        conn.set_nonblocking(false).unwrap();
                        let _ = conn.write_all(peer.ip().to_string().as_bytes());
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => panic!("accept on {addr}: {e}"),
                }
            }
        });
        Server { stop, thread: Some(thread) }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Connects from `ns` to `addr`: the source address the server saw, or None
/// when the connection could not be made.
fn connect(ns: &Netns, addr: &str) -> Option<String> {
    let addr: SocketAddr = addr.parse().unwrap();
    ns.run(|| {
        let mut conn = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).ok()?;
        conn.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut seen = String::new();
        conn.read_to_string(&mut seen).ok()?;
        Some(seen)
    })
}

/// Sends one datagram from `ns` to the socket `to` and says whether it came.
fn udp_arrives(ns: &Netns, to: &UdpSocket) -> bool {
    let addr = to.local_addr().unwrap();
    ns.run(|| {
        let from = UdpSocket::bind("0.0.0.0:0").unwrap();
        from.send_to(b"?", addr).unwrap();
    });
    to.set_read_timeout(Some(CONNECT_TIMEOUT)).unwrap();
    to.recv_from(&mut [0; 16]).is_ok()
}

/// Writes a sysctl of `ns` from a thread inside it.
fn sysctl(ns: &Netns, path: &str, value: &str) {
    ns.run(|| std::fs::write(path, value)).unwrap();
    let read = ns.command("cat").arg(path).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&read.stdout).trim(), value, "{path} in {}", ns.name());
}

#[test]
fn ruleset_governs_real_traffic() {
    if !require("traffic", &["ip", "nft"]) {
        return;
    }
    let started = Instant::now();
    let host = Netns::new("host").unwrap();
    let upstream = Netns::new("up").unwrap();
    let guest_a = Netns::new("ga").unwrap();
    let guest_b = Netns::new("gb").unwrap();
    let names: Vec<String> = [&host, &upstream, &guest_a, &guest_b].iter().map(|ns| ns.name().to_string()).collect();

    // The host: the bridge, a veth to "the internet", forwarding on.
    within(&host, || async { Netlink::new().unwrap().ensure_bridge(BRIDGE, host_addr(), 24).await.unwrap() });
    host.veth(&upstream, "up0", "eth0").unwrap();
    host.addr("up0", "10.99.0.1/24").unwrap();
    host.up("up0").unwrap();
    upstream.addr("eth0", "10.99.0.2/24").unwrap();
    upstream.up("eth0").unwrap();
    // Upstream can route to the guests: only the ruleset stops it.
    upstream.ip(&["route", "add", "10.213.0.0/24", "via", "10.99.0.1"]).unwrap();
    sysctl(&host, "/proc/sys/net/ipv4/ip_forward", "1");

    // Two guests on the bridge, through veths named like taps.
    for (guest, tap, addr) in [(&guest_a, "bgtap0", "10.213.0.2/24"), (&guest_b, "bgtap1", "10.213.0.3/24")] {
        guest.veth(&host, "eth0", tap).unwrap();
        guest.addr("eth0", addr).unwrap();
        guest.up("eth0").unwrap();
        guest.default_route("10.213.0.1").unwrap();
        within(&host, || async { Netlink::new().unwrap().attach(tap, BRIDGE).await.unwrap() });
    }

    let _internet = Server::start(&upstream, "10.99.0.2:8080");
    let _guest_a_port = Server::start(&guest_a, "10.213.0.2:7000");
    let _guest_b_port = Server::start(&guest_b, "10.213.0.3:9000");
    let _closed = Server::start(&host, "10.213.0.1:2222");
    let _allowed = Server::start(&host, "10.213.0.1:2223");
    let dns = host.run(|| UdpSocket::bind("10.213.0.1:5353")).unwrap();
    let other_udp = host.run(|| UdpSocket::bind("10.213.0.1:5354")).unwrap();

    // Without the ruleset everything gets through, unmasqueraded: the
    // checks below that fail do so because of the rules.
    assert_eq!(connect(&guest_a, "10.99.0.2:8080").as_deref(), Some("10.213.0.2"));
    assert!(connect(&upstream, "10.213.0.2:7000").is_some());
    assert!(connect(&guest_a, "10.213.0.1:2222").is_some());
    assert!(connect(&guest_a, "10.213.0.3:9000").is_some());
    assert!(udp_arrives(&guest_a, &other_udp));

    within(&host, || async { nft::apply(&ruleset(false)).await.unwrap() });
    assert_eq!(
        connect(&guest_a, "10.99.0.2:8080").as_deref(),
        Some("10.99.0.1"),
        "upstream sees the host's address, not the guest's"
    );
    assert_eq!(connect(&guest_b, "10.99.0.2:8080").as_deref(), Some("10.99.0.1"));
    assert_eq!(connect(&upstream, "10.213.0.2:7000"), None, "upstream cannot open a guest");
    assert_eq!(connect(&guest_a, "10.213.0.1:2222"), None, "a host port not allowed");
    assert!(connect(&guest_a, "10.213.0.1:2223").is_some(), "an allowed host port");
    assert!(udp_arrives(&guest_a, &dns), "DNS on the bridge address");
    assert!(!udp_arrives(&guest_a, &other_udp), "another UDP port");

    // Guest to guest, switched by the bridge: blocked whether or not the
    // host also passes bridged traffic through the inet hooks.
    let br_nf = "/proc/sys/net/bridge/bridge-nf-call-iptables";
    let br_nf_modes: &[&str] = if host.run(|| std::path::Path::new(br_nf).exists()) { &["0", "1"] } else { &[] };
    assert_eq!(connect(&guest_a, "10.213.0.3:9000"), None, "guest_to_guest=false");
    for mode in br_nf_modes {
        sysctl(&host, br_nf, mode);
        assert_eq!(connect(&guest_a, "10.213.0.3:9000"), None, "bridge-nf-call-iptables={mode}");
    }
    within(&host, || async { nft::apply(&ruleset(true)).await.unwrap() });
    for mode in br_nf_modes {
        sysctl(&host, br_nf, mode);
        assert_eq!(
            connect(&guest_a, "10.213.0.3:9000").as_deref(),
            Some("10.213.0.2"),
            "guest_to_guest=true, bridge-nf-call-iptables={mode}"
        );
    }
    assert!(connect(&guest_b, "10.213.0.2:7000").is_some());
    assert_eq!(connect(&upstream, "10.213.0.2:7000"), None);

    within(&host, || async { nft::remove("banger").await.unwrap() });
    assert!(connect(&upstream, "10.213.0.2:7000").is_some(), "removed: open again");

    drop((_internet, _guest_a_port, _guest_b_port, _closed, _allowed, dns, other_udp));
    drop((host, upstream, guest_a, guest_b));
    for name in names {
        assert!(!std::path::Path::new("/run/netns").join(&name).exists(), "namespace {name} still exists");
    }
    eprintln!("traffic test: {:?}", started.elapsed());
}
