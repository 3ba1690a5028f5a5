//! The guest's listening sockets for `ports`: TCP listeners and bound UDP
//! sockets from `/proc/net/{tcp,tcp6,udp,udp6}`, each with the process
//! that holds it, found by its socket inode among `/proc/*/fd`.

use std::collections::HashMap;
use std::fs;
use std::net::{Ipv4Addr, Ipv6Addr};

use banger_agent_proto::Listener;

/// `st` of a listening TCP socket.
const TCP_LISTEN: &str = "0A";
/// `st` of a UDP socket bound but not connected.
const UDP_UNCONNECTED: &str = "07";

/// A socket line of `/proc/net/*`.
#[derive(Debug, PartialEq, Eq)]
struct Socket {
    address: String,
    port: u16,
    inode: u64,
}

/// The listening sockets now, with their owners where visible.
pub(crate) fn listeners() -> Vec<Listener> {
    let tables = [
        ("tcp", "/proc/net/tcp", TCP_LISTEN),
        ("tcp", "/proc/net/tcp6", TCP_LISTEN),
        ("udp", "/proc/net/udp", UDP_UNCONNECTED),
        ("udp", "/proc/net/udp6", UDP_UNCONNECTED),
    ];
    let owners = socket_owners();
    let mut ports: Vec<Listener> = tables
        .iter()
        .flat_map(|(protocol, path, state)| {
            let sockets = parse_sockets(&fs::read_to_string(path).unwrap_or_default(), state);
            sockets.into_iter().map(|s| {
                let owner = owners.get(&s.inode);
                Listener {
                    protocol: protocol.to_string(),
                    address: s.address,
                    port: s.port,
                    pid: owner.map(|(pid, _)| *pid),
                    process: owner.map(|(_, name)| name.clone()),
                }
            })
        })
        .collect();
    ports.sort_by(|a, b| (&a.protocol, a.port, &a.address).cmp(&(&b.protocol, b.port, &b.address)));
    ports.dedup();
    ports
}

/// The sockets of one `/proc/net` table in `state`.
fn parse_sockets(table: &str, state: &str) -> Vec<Socket> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            if fields.len() < 10 || fields[3] != state {
                return None;
            }
            let (address, port) = fields[1].split_once(':')?;
            Some(Socket {
                address: parse_address(address)?,
                port: u16::from_str_radix(port, 16).ok()?,
                inode: fields[9].parse().ok()?,
            })
        })
        .collect()
}

/// The kernel prints an address as 32-bit words in host byte order.
fn parse_address(hex: &str) -> Option<String> {
    let word = |i: usize| u32::from_str_radix(hex.get(i * 8..i * 8 + 8)?, 16).ok().map(u32::to_ne_bytes);
    match hex.len() {
        8 => Some(Ipv4Addr::from(word(0)?).to_string()),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            Some(Ipv6Addr::from(bytes).to_string())
        }
        _ => None,
    }
}

/// The inode of a socket fd's link target (`socket:[12345]`).
fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// Socket inode → (pid, process name), from every process's open fds.
fn socket_owners() -> HashMap<u64, (u32, String)> {
    let mut owners = HashMap::new();
    let Ok(procs) = fs::read_dir("/proc") else { return owners };
    for entry in procs.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(fds) = fs::read_dir(entry.path().join("fd")) else { continue };
        let mut name = None;
        for fd in fds.flatten() {
            let Some(inode) = fs::read_link(fd.path()).ok().and_then(|l| l.to_str().and_then(socket_inode)) else {
                continue;
            };
            let name = name.get_or_insert_with(|| {
                fs::read_to_string(entry.path().join("comm")).map(|c| c.trim_end().to_string()).unwrap_or_default()
            });
            owners.entry(inode).or_insert_with(|| (pid, name.clone()));
        }
    }
    owners
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   \
        0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 23456 1 0000 100 0 0 10 0\n   \
        1: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 34567 1 0000 100 0 0 10 0\n   \
        2: 0F02000A:0016 0202000A:D431 01 00000000:00000000 02:0009B1E8 00000000     0        0 45678 4 0000 20 4 30 10 -1\n";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   \
        0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 56789 1 0000 100 0 0 10 0\n   \
        1: 00000000000000000000000001000000:0CEA 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 67890 1 0000 100 0 0 10 0\n";
    const UDP: &str = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n  \
        100: 3500007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000   101        0 11111 2 0000000000000000 0\n  \
        101: 0F02000A:9C40 0100000A:0035 01 00000000:00000000 00:00000000 00000000     0        0 22222 2 0000000000000000 0\n";

    #[test]
    fn tcp_listeners_are_parsed_in_both_families() {
        let v4 = parse_sockets(TCP, TCP_LISTEN);
        assert_eq!(
            v4,
            [
                Socket { address: "127.0.0.1".into(), port: 8080, inode: 23456 },
                Socket { address: "0.0.0.0".into(), port: 22, inode: 34567 },
            ]
        );
        let v6 = parse_sockets(TCP6, TCP_LISTEN);
        assert_eq!(
            v6,
            [
                Socket { address: "::".into(), port: 8080, inode: 56789 },
                Socket { address: "::1".into(), port: 3306, inode: 67890 },
            ]
        );
    }

    #[test]
    fn only_unconnected_udp_sockets_count() {
        assert_eq!(
            parse_sockets(UDP, UDP_UNCONNECTED),
            [Socket { address: "127.0.0.53".into(), port: 53, inode: 11111 }]
        );
    }

    #[test]
    fn socket_links_name_their_inode() {
        assert_eq!(socket_inode("socket:[23456]"), Some(23456));
        assert_eq!(socket_inode("pipe:[23456]"), None);
        assert_eq!(socket_inode("/dev/null"), None);
    }

    #[test]
    fn a_listener_of_ours_is_found_with_its_owner() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let found = listeners();
        let ours = found.iter().find(|l| l.protocol == "tcp" && l.port == port).expect("our listener");
        assert_eq!(ours.address, "127.0.0.1");
        assert_eq!(ours.pid, Some(std::process::id()));
    }
}
