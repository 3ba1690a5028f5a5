//! VM networking end to end, inside network namespaces this test makes (the
//! machine's own is never touched): a real `bangerd` process runs in a
//! "host" namespace joined by a veth pair to an "upstream" one that stands
//! for the internet, and boots real tiny guests under QEMU there. Checked:
//! a guest gets its address and reaches upstream through masquerade; two
//! guests reach each other by name; a guest reaches an allowed host port
//! and not another; the host resolves NAME.vm with dig; and after `vm rm`,
//! or a `kill -9` of the daemon and a restart, nothing banger made is left.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

use banger_netns::Netns;
use banger_testkit::requests::{succeed, tiny_image, vm};
use banger_testkit::DaemonProcess;

const TEST_TIMEOUT: Duration = Duration::from_secs(900);

/// The veth between the daemon's namespace and upstream.
const HOST_SIDE: &str = "10.99.0.1";
const UPSTREAM: &str = "10.99.0.2";

#[tokio::test(flavor = "multi_thread")]
async fn guests_reach_upstream_and_each_other_and_nothing_is_left() {
    banger_testkit::with_timeout(TEST_TIMEOUT, body()).await;
}

/// A TCP server inside `ns` at `addr` answering each connection with the
/// address it came from; it lives as long as the returned thread runs.
fn who_is_asking(ns: &Netns, addr: &str) {
    let listener = ns.run(|| TcpListener::bind(addr)).expect("bind inside the namespace");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let peer = stream.peer_addr().map(|p| p.ip().to_string()).unwrap_or_default();
            let mut request = [0u8; 1024];
            let _ = stream.read(&mut request);
            let body = format!("{peer}\n");
            let _ = write!(stream, "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        }
    });
}

/// A shell line that sends an HTTP request to `host` (an address) and
/// `port` with busybox's nc and prints the answer's body. (The static
/// busybox's wget crashes in a root without glibc's NSS modules, and its nc
/// only takes addresses; names are looked up with its nslookup.)
fn http_get(host: &str, port: u16) -> String {
    format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | busybox nc -w 5 {host} {port} | busybox sed '1,/^\\r*$/d'")
}

/// The daemon's binary, run inside `ns` (a script `ip netns exec`s it:
/// the process keeps the script's pid, so signals reach the daemon).
fn daemon_in(ns: &Netns, dir: &Path) -> std::path::PathBuf {
    let bangerd = banger_testkit::process::bangerd_binary();
    let wrapper = dir.join("bangerd-in-netns");
    std::fs::write(&wrapper, format!("#!/bin/sh\nexec ip netns exec {} {} \"$@\"\n", ns.name(), bangerd.display()))
        .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    wrapper
}

async fn exec(daemon: &DaemonProcess, vm: &str, script: &str) -> (Option<i32>, String) {
    let out = daemon.client.exec(vm, &["sh", "-c", script], b"").await.expect("exec runs");
    (out.code, String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

fn in_ns(ns: &Netns, program: &str, args: &[&str]) -> String {
    let out = ns.command(program).args(args).output().expect("run inside the namespace");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What banger made in the daemon's namespace: its links and tables.
fn leftovers(host: &Netns) -> Vec<String> {
    let mut left = Vec::new();
    let links = in_ns(host, "ip", &["-o", "link", "show"]);
    left.extend(links.lines().filter(|l| l.contains("bgtap") || l.contains("banger0")).map(String::from));
    let tables = in_ns(host, "nft", &["list", "tables"]);
    left.extend(tables.lines().filter(|l| l.contains("banger")).map(String::from));
    let forward = in_ns(host, "cat", &["/proc/sys/net/ipv4/ip_forward"]);
    if forward.trim() != "0" {
        left.push(format!("ip_forward={}", forward.trim()));
    }
    left
}

async fn body() {
    if !banger_netns::require("the networking test", &["ip", "nft", "dig", "qemu-system-x86_64"]) {
        return;
    }
    let Some(kernel) = banger_testkit::debian_kernel().await else { return };
    let agent = tokio::task::spawn_blocking(banger_testkit::guest::agent_binary).await.unwrap();
    let host = Netns::new("host").unwrap();
    let upstream = Netns::new("up").unwrap();
    host.veth(&upstream, "up0", "down0").unwrap();
    host.addr("up0", &format!("{HOST_SIDE}/24")).unwrap();
    upstream.addr("down0", &format!("{UPSTREAM}/24")).unwrap();
    host.up("up0").unwrap();
    upstream.up("down0").unwrap();
    host.default_route(UPSTREAM).unwrap();
    who_is_asking(&upstream, &format!("{UPSTREAM}:8080"));

    let state = tempfile::tempdir().unwrap();
    kernel.install(state.path());
    let wrapper = daemon_in(&host, state.path());
    let config = format!(
        "[vms]\nagent_binary = {:?}\nvmm = \"qemu\"\nboot_timeout_secs = 300\n\n[network]\ntap_pool = 1\nallow_host_ports = [\"tcp/8081\"]\n",
        agent.display().to_string()
    );
    let mut daemon = DaemonProcess::start_with_state(&wrapper, Some(state.path()), &config).await;
    let client = daemon.client.clone();
    assert!(leftovers(&host).is_empty(), "a daemon with no networked VM changes nothing: {:?}", leftovers(&host));
    succeed(&client, client.build_image(&tiny_image("tiny", banger_testkit::shared_kernel::NAME)).await.unwrap()).await;
    succeed(&client, client.create_vm(&vm("a", "tiny")).await.unwrap()).await;
    succeed(&client, client.create_vm(&vm("b", "tiny")).await.unwrap()).await;
    let a = client.vm("a").await.unwrap().network.expect("a has a network");
    let b = client.vm("b").await.unwrap().network.expect("b has a network");
    assert_eq!(
        (a.address.as_str(), b.address.as_str(), a.gateway.as_str()),
        ("10.213.0.2", "10.213.0.3", "10.213.0.1")
    );
    assert_eq!(a.dns_name, "a.vm");

    // Out through masquerade: upstream sees the host's address, not the guest's.
    let (code, seen) = exec(&daemon, "a", &http_get(UPSTREAM, 8080)).await;
    assert_eq!((code, seen.trim()), (Some(0), HOST_SIDE), "{seen}");

    // Guest to guest by name, through the daemon's DNS.
    let (code, out) = exec(
        &daemon,
        "b",
        "mkdir -p /tmp/www && echo from-b > /tmp/www/index.html && busybox httpd -p 9000 -h /tmp/www",
    )
    .await;
    assert_eq!(code, Some(0), "{out}");
    let lookup = "busybox nslookup b.vm | busybox awk '/^Address: /{print $2}' | busybox tail -n1";
    let (code, address) = exec(&daemon, "a", lookup).await;
    assert_eq!((code, address.trim()), (Some(0), "10.213.0.3"), "b.vm from a, through the guest's resolv.conf");
    let (code, got) = exec(&daemon, "a", &http_get(address.trim(), 9000)).await;
    assert_eq!((code, got.trim()), (Some(0), "from-b"), "{got}");

    // A forward makes b's server answer on the host's loopback (in the daemon's namespace).
    let forward = banger_api::ForwardRequest { guest_port: 9000, host_port: Some(18080) };
    client.add_forward("b", &forward).await.unwrap();
    let through_forward = host.run(|| {
        let mut stream = TcpStream::connect("127.0.0.1:18080")?;
        stream.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        std::io::Result::Ok(answer)
    });
    assert!(through_forward.as_ref().is_ok_and(|a| a.ends_with("from-b\n")), "{through_forward:?}");

    // A VM without a NIC: no interface in the guest, exec as ever.
    let offline = banger_api::VmCreateRequest { network: Some(banger_api::NetworkMode::None), ..vm("c", "tiny") };
    succeed(&client, client.create_vm(&offline).await.unwrap()).await;
    assert_eq!(client.vm("c").await.unwrap().network, None);
    let (code, links) = exec(&daemon, "c", "busybox ip -o link").await;
    assert_eq!(code, Some(0));
    assert!(links.contains("lo:") && !links.contains("eth0"), "{links}");
    succeed(&client, client.remove_vm("c", true).await.unwrap()).await;

    // The host's own ports: only the allowed one.
    for port in [8081, 8082] {
        let listener = host.run(|| TcpListener::bind(("10.213.0.1", port))).unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut stream: TcpStream = stream;
                let _ = stream.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhost\n");
            }
        });
    }
    let (code, got) = exec(&daemon, "a", &http_get("10.213.0.1", 8081)).await;
    assert_eq!((code, got.trim()), (Some(0), "host"), "an allowed host port: {got}");
    let (_, got) = exec(&daemon, "a", &http_get("10.213.0.1", 8082)).await;
    assert!(got.contains("timed out") && !got.contains("host"), "a host port that is not allowed: {got}");

    // The host resolves NAME.vm with a real client.
    assert_eq!(in_ns(&host, "dig", &["@10.213.0.1", "+short", "+tries=1", "+time=3", "b.vm"]).trim(), "10.213.0.3");
    assert_eq!(
        in_ns(&host, "dig", &["@10.213.0.1", "+short", "+tries=1", "+time=3", "-x", "10.213.0.2"]).trim(),
        "a.vm."
    );

    // A kill -9 and a restart: the running VM is adopted and its network rebuilt.
    succeed(&client, client.remove_vm("b", true).await.unwrap()).await;
    assert!(host.run(|| TcpStream::connect("127.0.0.1:18080")).is_err(), "b's forward went with it");
    daemon.kill();
    daemon.restart().await;
    let client = daemon.client.clone();
    let (code, seen) = exec(&daemon, "a", &http_get(UPSTREAM, 8080)).await;
    assert_eq!((code, seen.trim()), (Some(0), HOST_SIDE), "after a restart: {seen}");
    assert!(in_ns(&host, "nft", &["list", "tables"]).contains("banger"), "the ruleset is rebuilt");

    // Gone with the last VM.
    succeed(&client, client.remove_vm("a", true).await.unwrap()).await;
    assert_eq!(leftovers(&host), Vec::<String>::new());
    let answer = in_ns(&host, "dig", &["@10.213.0.1", "+short", "+tries=1", "+time=1", "a.vm"]);
    assert!(!answer.contains("10.213.0.2"), "the DNS server is gone: {answer}");
    drop(daemon);
}
