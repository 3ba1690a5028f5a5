//! A small upstream resolver on a loopback address for the DNS server's
//! tests: it knows a few names under example.org and records every
//! question it gets, with the transport.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinHandle;

/// One question the upstream saw: lowercase name, type, "udp" or "tcp".
pub type Seen = (String, RecordType, &'static str);

/// How the upstream behaves.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Answers what it knows.
    Answer,
    /// Reads questions and never answers (a resolver that is gone).
    Silent,
}

pub struct Upstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Upstream {
    /// Starts on `ip` (a loopback address) on a port free for UDP and TCP.
    pub async fn start(ip: Ipv4Addr, mode: Mode) -> Upstream {
        let (udp, tcp) = bind_pair(IpAddr::V4(ip)).await;
        let addr = udp.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let udp_task = tokio::spawn(serve_udp(udp, seen.clone(), mode));
        let tcp_task = tokio::spawn(serve_tcp(tcp, seen.clone(), mode));
        Upstream { addr, seen, tasks: vec![udp_task, tcp_task] }
    }

    /// The questions seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// A UDP socket and a TCP listener on the same free port of `ip`.
pub async fn bind_pair(ip: IpAddr) -> (UdpSocket, TcpListener) {
    for _ in 0..16 {
        let udp = UdpSocket::bind((ip, 0)).await.unwrap();
        let port = udp.local_addr().unwrap().port();
        if let Ok(tcp) = TcpListener::bind((ip, port)).await {
            return (udp, tcp);
        }
    }
    panic!("no port free for both UDP and TCP on {ip}");
}

fn answer(query: &[u8], transport: &'static str, seen: &Mutex<Vec<Seen>>) -> Option<Vec<u8>> {
    let request = Message::from_vec(query).ok()?;
    let q = request.queries.first()?;
    let name = q.name.to_lowercase().to_ascii();
    seen.lock().unwrap().push((name.clone(), q.query_type, transport));

    let mut reply = Message::response(request.metadata.id, request.metadata.op_code);
    reply.metadata.recursion_desired = request.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.add_queries(request.queries.iter().cloned());
    let a = |ip: [u8; 4]| Record::from_rdata(q.name.clone(), 300, RData::A(A(ip.into())));
    match (name.as_str(), q.query_type) {
        ("example.org.", RecordType::A) => {
            reply.add_answer(a([192, 0, 2, 7]));
        }
        // Too big for UDP: truncated there, whole over TCP.
        ("big.example.org.", RecordType::A) if transport == "udp" => {
            reply.metadata.truncation = true;
        }
        ("big.example.org.", RecordType::A) => {
            reply.add_answer(a([192, 0, 2, 8]));
        }
        ("nx.example.org.", _) => reply.metadata.response_code = ResponseCode::NXDomain,
        _ => reply.metadata.response_code = ResponseCode::Refused,
    }
    reply.to_vec().ok()
}

async fn serve_udp(socket: UdpSocket, seen: Arc<Mutex<Vec<Seen>>>, mode: Mode) {
    let mut buf = vec![0u8; 65535];
    while let Ok((len, peer)) = socket.recv_from(&mut buf).await {
        let reply = answer(&buf[..len], "udp", &seen);
        if let (Some(reply), Mode::Answer) = (reply, mode) {
            let _ = socket.send_to(&reply, peer).await;
        }
    }
}

async fn serve_tcp(listener: TcpListener, seen: Arc<Mutex<Vec<Seen>>>, mode: Mode) {
    while let Ok((mut stream, _)) = listener.accept().await {
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Ok(len) = stream.read_u16().await {
                let mut buf = vec![0u8; usize::from(len)];
                if stream.read_exact(&mut buf).await.is_err() {
                    return;
                }
                let reply = answer(&buf, "tcp", &seen);
                if let (Some(reply), Mode::Answer) = (reply, mode) {
                    let mut framed = (reply.len() as u16).to_be_bytes().to_vec();
                    framed.extend_from_slice(&reply);
                    if stream.write_all(&framed).await.is_err() {
                        return;
                    }
                }
            }
        });
    }
}
