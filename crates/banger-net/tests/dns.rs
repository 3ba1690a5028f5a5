//! The DNS server in-process on 127.0.0.1, asked by the real `dig`, with a
//! fake upstream of our own on 127.0.0.2. Traffic stays on loopback.

mod dns_upstream;

use std::collections::HashMap;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use banger_net::dns::{DnsConfig, DnsServer, Records};
use dns_upstream::{Mode, Upstream};
use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use tokio::net::{TcpListener, UdpSocket};

const UPSTREAM_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const TEST_TIMEOUT: Duration = Duration::from_secs(60);

/// The daemon's state as the server sees it: a map behind a lock.
#[derive(Default)]
struct Vms(RwLock<HashMap<String, Ipv4Addr>>);

impl Vms {
    fn set(&self, name: &str, addr: Option<Ipv4Addr>) {
        let mut map = self.0.write().unwrap();
        match addr {
            Some(addr) => map.insert(name.to_owned(), addr),
            None => map.remove(name),
        };
    }
}

impl Records for Vms {
    fn address(&self, name: &str) -> Option<Ipv4Addr> {
        self.0.read().unwrap().get(name).copied()
    }
    fn name_of(&self, addr: Ipv4Addr) -> Option<String> {
        let map = self.0.read().unwrap();
        map.iter().find(|(_, a)| **a == addr).map(|(n, _)| n.clone())
    }
}

/// `dig` is there, or the test should skip (outside CI) or fail (in CI).
fn have_dig() -> bool {
    let found = std::process::Command::new("dig").arg("-v").output().is_ok_and(|o| o.status.success());
    if !found {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "dig is missing (Debian package bind9-dnsutils)");
        eprintln!("skipping: dig is missing (apt-get install bind9-dnsutils)");
    }
    found
}

/// Runs `body` with a deadline, so a hung server fails the test.
async fn within<F: Future<Output = ()>>(body: F) {
    tokio::time::timeout(TEST_TIMEOUT, body).await.expect("test timed out");
}

struct Fixture {
    server: DnsServer,
    vms: Arc<Vms>,
    upstream: Upstream,
}

async fn start(upstream_mode: Mode) -> Fixture {
    let upstream = Upstream::start(UPSTREAM_IP, upstream_mode).await;
    start_with(upstream, None).await
}

async fn start_with(upstream: Upstream, upstreams: Option<Vec<SocketAddr>>) -> Fixture {
    let vms = Arc::new(Vms::default());
    vms.set("web", Some(Ipv4Addr::new(10, 213, 0, 5)));
    let server = DnsServer::start(DnsConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        domain: "vm".to_owned(),
        reverse_zone: Some("0.213.10.in-addr.arpa.".to_owned()),
        upstreams: upstreams.unwrap_or_else(|| vec![upstream.addr]),
        records: vms.clone(),
    })
    .await
    .unwrap();
    Fixture { server, vms, upstream }
}

/// What dig printed, cut into the parts the tests look at.
#[derive(Debug)]
struct Dig {
    status: String,
    answers: Vec<String>,
    authority: Vec<String>,
}

async fn dig(server: SocketAddr, args: &[&str]) -> Dig {
    let out = tokio::process::Command::new("dig")
        .arg(format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string(), "+tries=1", "+time=3"])
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .expect("dig runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = text
        .split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or_else(|| panic!("no status in dig's output:\n{text}"))
        .to_owned();
    Dig { status, answers: section(&text, "ANSWER"), authority: section(&text, "AUTHORITY") }
}

/// The records of one section, each as "NAME TTL CLASS TYPE DATA" with
/// single spaces.
fn section(text: &str, name: &str) -> Vec<String> {
    let header = format!(";; {name} SECTION:");
    text.lines()
        .skip_while(|l| *l != header)
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

#[tokio::test]
async fn a_for_vms_any_case_nxdomain_and_nodata() {
    if !have_dig() {
        return;
    }
    within(async {
        let f = start(Mode::Answer).await;
        let addr = f.server.local_addr();

        let r = dig(addr, &["web.vm", "A"]).await;
        assert_eq!(r.status, "NOERROR");
        assert_eq!(r.answers, ["web.vm. 5 IN A 10.213.0.5"]);

        let r = dig(addr, &["WEB.VM", "A"]).await;
        assert_eq!(r.status, "NOERROR");
        assert_eq!(r.answers, ["WEB.VM. 5 IN A 10.213.0.5"]);

        let r = dig(addr, &["nope.vm", "A"]).await;
        assert_eq!(r.status, "NXDOMAIN");
        assert!(r.answers.is_empty());
        assert_eq!(r.authority.len(), 1, "{r:?}");
        assert!(r.authority[0].starts_with("vm. 5 IN SOA vm. hostmaster.vm. 1 "), "{r:?}");

        let r = dig(addr, &["web.vm", "AAAA"]).await;
        assert_eq!(r.status, "NOERROR");
        assert!(r.answers.is_empty(), "{r:?}");
        assert!(r.authority[0].contains(" SOA "), "{r:?}");

        let r = dig(addr, &["-x", "10.213.0.5"]).await;
        assert_eq!(r.status, "NOERROR");
        assert_eq!(r.answers, ["5.0.213.10.in-addr.arpa. 5 IN PTR web.vm."]);

        let r = dig(addr, &["-x", "10.213.0.9"]).await;
        assert_eq!(r.status, "NXDOMAIN");

        assert!(f.upstream.seen().is_empty(), "nothing of ours goes upstream");
        f.server.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn forwards_over_udp_and_tcp_and_relays_rcodes() {
    if !have_dig() {
        return;
    }
    within(async {
        let f = start(Mode::Answer).await;
        let addr = f.server.local_addr();

        let r = dig(addr, &["example.org", "A"]).await;
        assert_eq!(r.status, "NOERROR");
        assert_eq!(r.answers, ["example.org. 300 IN A 192.0.2.7"]);

        let r = dig(addr, &["+tcp", "example.org", "A"]).await;
        assert_eq!(r.status, "NOERROR");
        assert_eq!(r.answers, ["example.org. 300 IN A 192.0.2.7"]);

        let r = dig(addr, &["nx.example.org", "A"]).await;
        assert_eq!(r.status, "NXDOMAIN");

        // Truncated over UDP upstream: the server asks again over TCP.
        let r = dig(addr, &["big.example.org", "A"]).await;
        assert_eq!(r.status, "NOERROR");
        assert_eq!(r.answers, ["big.example.org. 300 IN A 192.0.2.8"]);

        let seen = f.upstream.seen();
        let big: Vec<_> = seen.iter().filter(|s| s.0 == "big.example.org.").map(|s| s.2).collect();
        assert_eq!(big, ["udp", "tcp"]);
        assert_eq!(seen.iter().filter(|s| s.0 == "example.org.").count(), 2);
        f.server.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn servfail_when_no_upstream_answers_then_the_next_one_does() {
    if !have_dig() {
        return;
    }
    within(async {
        // A closed port: the datagram is refused at once.
        let closed = UdpSocket::bind((UPSTREAM_IP, 0)).await.unwrap().local_addr().unwrap();
        let f = start_with(Upstream::start(UPSTREAM_IP, Mode::Answer).await, Some(vec![closed])).await;
        let r = dig(f.server.local_addr(), &["example.org", "A"]).await;
        assert_eq!(r.status, "SERVFAIL");
        f.server.shutdown().await;

        // A dead upstream first, a working one second.
        let upstream = Upstream::start(UPSTREAM_IP, Mode::Answer).await;
        let ups = vec![closed, upstream.addr];
        let f = start_with(upstream, Some(ups)).await;
        let r = dig(f.server.local_addr(), &["example.org", "A"]).await;
        assert_eq!(r.status, "NOERROR");
        assert_eq!(r.answers, ["example.org. 300 IN A 192.0.2.7"]);
        f.server.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn records_changed_at_run_time_show_on_the_next_query() {
    if !have_dig() {
        return;
    }
    within(async {
        let f = start(Mode::Answer).await;
        let addr = f.server.local_addr();
        assert_eq!(dig(addr, &["db.vm"]).await.status, "NXDOMAIN");

        f.vms.set("db", Some(Ipv4Addr::new(10, 213, 0, 6)));
        let r = dig(addr, &["db.vm"]).await;
        assert_eq!(r.answers, ["db.vm. 5 IN A 10.213.0.6"]);
        let r = dig(addr, &["-x", "10.213.0.6"]).await;
        assert_eq!(r.answers, ["6.0.213.10.in-addr.arpa. 5 IN PTR db.vm."]);

        f.vms.set("db", None);
        assert_eq!(dig(addr, &["db.vm"]).await.status, "NXDOMAIN");
        f.server.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn shutdown_frees_the_port_even_with_work_in_flight() {
    within(async {
        let f = start(Mode::Silent).await;
        let addr = f.server.local_addr();
        // A forwarded question waiting on a silent upstream, and an open
        // TCP client: shutdown must not wait for either.
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.send_to(&query(1, "example.org."), addr).await.unwrap();
        let _tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;

        let started = Instant::now();
        f.server.shutdown().await;
        assert!(started.elapsed() < Duration::from_secs(1), "shutdown waited");
        UdpSocket::bind(addr).await.expect("UDP port free");
        TcpListener::bind(addr).await.expect("TCP port free");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_forwarded_questions_is_capped() {
    within(async {
        let f = start(Mode::Silent).await;
        let addr = f.server.local_addr();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let cap = banger_net::dns::MAX_IN_FLIGHT;
        let total = cap + 40;
        let started = Instant::now();
        for id in 0..total {
            client.send_to(&query(id as u16, "example.org."), addr).await.unwrap();
            // Let the server read as we go, so no datagram is dropped for
            // a full socket buffer.
            if id % 16 == 15 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        // The first `cap` wait for the silent upstream's timeout (2 s);
        // those past the cap are answered SERVFAIL at once.
        let mut refused = Vec::new();
        let mut buf = [0u8; 512];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while let Ok(Ok(len)) = tokio::time::timeout_at(deadline, client.recv(&mut buf)).await {
            let reply = Message::from_vec(&buf[..len]).unwrap();
            assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
            let id = usize::from(reply.metadata.id);
            // Under heavy load the sends may outlast the upstream timeout,
            // and an early question may time out within the window.
            if id < cap && started.elapsed() >= Duration::from_secs(2) {
                continue;
            }
            refused.push(id);
        }
        refused.sort_unstable();
        assert_eq!(refused, (cap..total).collect::<Vec<_>>(), "questions past the cap");
        // The upstream saw no more than the cap.
        assert!(f.upstream.seen().len() <= banger_net::dns::MAX_IN_FLIGHT);
        f.server.shutdown().await;
    })
    .await;
}

fn query(id: u16, name: &str) -> Vec<u8> {
    let mut msg = Message::query();
    msg.metadata.id = id;
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    msg.to_vec().unwrap()
}
