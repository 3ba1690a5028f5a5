//! rtnetlink over a `NETLINK_ROUTE` socket: just what the guest's network
//! set-up needs (list the links, bring one up, give it an IPv4 address, add
//! a default route), so the agent needs no `ip` in the guest. Building and
//! reading messages is pure ([`Request`], [`parse`]); [`Netlink`] only
//! sends them and waits for the kernel's answer, with a timeout.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::time::Duration;

use rustix::net::netlink::SocketAddrNetlink;
use rustix::net::sockopt::{set_socket_timeout, Timeout};
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};

/// How long the kernel may take to answer one request.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);
/// `struct nlmsghdr`.
const HEADER_LEN: usize = 16;
/// `struct ifinfomsg`.
const IFINFO_LEN: usize = 16;

/// A network interface, as `RTM_NEWLINK` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Link {
    /// The interface index.
    pub(crate) index: u32,
    /// Its name (`eth0`, `ens3`).
    pub(crate) name: String,
    /// Its hardware type (`ARPHRD_ETHER`, `ARPHRD_LOOPBACK`...).
    pub(crate) kind: u16,
}

/// One rtnetlink request, before its sequence number is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Request {
    /// Every link (`RTM_GETLINK`, a dump).
    Links,
    /// Sets `IFF_UP` on the link.
    Up { index: u32 },
    /// Adds (or replaces) an IPv4 address, its prefix route with it.
    Address { index: u32, address: Ipv4Addr, prefix: u8 },
    /// Adds (or replaces) the main table's default route.
    DefaultRoute { index: u32, gateway: Ipv4Addr },
}

impl Request {
    /// The message, ready to send.
    pub(crate) fn encode(&self, seq: u32) -> Vec<u8> {
        let request = (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;
        // CREATE | REPLACE: the same set-up run twice (a restarted agent)
        // changes nothing instead of failing with EEXIST.
        let create = (libc::NLM_F_CREATE | libc::NLM_F_REPLACE) as u16;
        match *self {
            Request::Links => {
                let body = ifinfomsg(0, 0, 0);
                message(libc::RTM_GETLINK, libc::NLM_F_REQUEST as u16 | libc::NLM_F_DUMP as u16, seq, &body, &[])
            }
            Request::Up { index } => {
                let up = libc::IFF_UP as u32;
                message(libc::RTM_NEWLINK, request, seq, &ifinfomsg(index, up, up), &[])
            }
            Request::Address { index, address, prefix } => {
                // struct ifaddrmsg: family, prefixlen, flags, scope, index.
                let mut body = vec![libc::AF_INET as u8, prefix, 0, libc::RT_SCOPE_UNIVERSE];
                body.extend_from_slice(&index.to_ne_bytes());
                let octets = address.octets();
                let attrs = [(libc::IFA_LOCAL, &octets[..]), (libc::IFA_ADDRESS, &octets[..])];
                message(libc::RTM_NEWADDR, request | create, seq, &body, &attrs)
            }
            Request::DefaultRoute { index, gateway } => {
                // struct rtmsg: family, dst_len, src_len, tos, table,
                // protocol, scope, type, flags (u32).
                let mut body = vec![
                    libc::AF_INET as u8,
                    0,
                    0,
                    0,
                    libc::RT_TABLE_MAIN,
                    libc::RTPROT_BOOT,
                    libc::RT_SCOPE_UNIVERSE,
                    libc::RTN_UNICAST,
                ];
                body.extend_from_slice(&0u32.to_ne_bytes());
                let octets = gateway.octets();
                let oif = index.to_ne_bytes();
                let attrs = [(libc::RTA_GATEWAY, &octets[..]), (libc::RTA_OIF, &oif[..])];
                message(libc::RTM_NEWROUTE, request | create, seq, &body, &attrs)
            }
        }
    }
}

/// `struct ifinfomsg`: family, pad, type, index, flags, change.
fn ifinfomsg(index: u32, flags: u32, change: u32) -> Vec<u8> {
    let mut body = vec![libc::AF_UNSPEC as u8, 0, 0, 0];
    body.extend_from_slice(&index.to_ne_bytes());
    body.extend_from_slice(&flags.to_ne_bytes());
    body.extend_from_slice(&change.to_ne_bytes());
    body
}

/// A netlink message: the header, a fixed body, then attributes, each
/// padded to 4 bytes.
fn message(kind: u16, flags: u16, seq: u32, body: &[u8], attrs: &[(u16, &[u8])]) -> Vec<u8> {
    let mut out = vec![0; HEADER_LEN];
    out.extend_from_slice(body);
    for (kind, data) in attrs {
        pad(&mut out);
        out.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(data);
    }
    pad(&mut out);
    let len = out.len() as u32;
    out[0..4].copy_from_slice(&len.to_ne_bytes());
    out[4..6].copy_from_slice(&kind.to_ne_bytes());
    out[6..8].copy_from_slice(&flags.to_ne_bytes());
    out[8..12].copy_from_slice(&seq.to_ne_bytes());
    // nlmsg_pid 0: the kernel fills in this socket's.
    out
}

fn pad(out: &mut Vec<u8>) {
    out.resize(out.len().next_multiple_of(4), 0);
}

/// What one message from the kernel says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reply {
    /// `NLMSG_ERROR`: 0 for an acknowledgement, else an errno.
    Ack { seq: u32, errno: i32 },
    /// `NLMSG_DONE`: the end of a dump.
    Done { seq: u32 },
    /// A link of a dump.
    Link { seq: u32, link: Link },
    /// Anything else.
    Other,
}

/// Splits what one `recv` returned into messages. Truncated or malformed
/// input is an error (the socket then is of no more use).
pub(crate) fn parse(mut data: &[u8]) -> io::Result<Vec<Reply>> {
    let malformed = || io::Error::new(io::ErrorKind::InvalidData, "malformed netlink message");
    let mut replies = Vec::new();
    while !data.is_empty() {
        if data.len() < HEADER_LEN {
            return Err(malformed());
        }
        let len = u32_at(data, 0) as usize;
        if len < HEADER_LEN || len > data.len() {
            return Err(malformed());
        }
        let kind = u16::from_ne_bytes([data[4], data[5]]);
        let seq = u32_at(data, 8);
        let payload = &data[HEADER_LEN..len];
        replies.push(match kind {
            k if k == libc::NLMSG_ERROR as u16 => {
                let error = payload.get(..4).ok_or_else(malformed)?;
                Reply::Ack { seq, errno: -i32::from_ne_bytes(error.try_into().expect("4 bytes")) }
            }
            k if k == libc::NLMSG_DONE as u16 => Reply::Done { seq },
            libc::RTM_NEWLINK => Reply::Link { seq, link: parse_link(payload).ok_or_else(malformed)? },
            _ => Reply::Other,
        });
        data = data.get(len.next_multiple_of(4)..).unwrap_or_default();
    }
    Ok(replies)
}

/// An `ifinfomsg` and its attributes: the type, the index and `IFLA_IFNAME`.
fn parse_link(payload: &[u8]) -> Option<Link> {
    let header = payload.get(..IFINFO_LEN)?;
    let kind = u16::from_ne_bytes([header[2], header[3]]);
    let index = u32_at(header, 4);
    let mut attrs = &payload[IFINFO_LEN..];
    let mut name = None;
    while attrs.len() >= 4 {
        let len = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
        let attr = u16::from_ne_bytes([attrs[2], attrs[3]]);
        let data = attrs.get(4..len).filter(|_| len >= 4)?;
        if attr == libc::IFLA_IFNAME {
            let text = data.split(|&b| b == 0).next().unwrap_or_default();
            name = Some(String::from_utf8_lossy(text).into_owned());
        }
        attrs = attrs.get(len.next_multiple_of(4)..).unwrap_or_default();
    }
    Some(Link { index, name: name?, kind })
}

fn u32_at(data: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(data[at..at + 4].try_into().expect("4 bytes"))
}

/// An rtnetlink socket to the kernel.
pub(crate) struct Netlink {
    socket: OwnedFd,
    seq: u32,
}

impl Netlink {
    /// Opens the socket (in the calling thread's network namespace).
    pub(crate) fn open() -> io::Result<Netlink> {
        let socket = rustix::net::socket_with(AddressFamily::NETLINK, SocketType::RAW, SocketFlags::CLOEXEC, None)?;
        set_socket_timeout(&socket, Timeout::Recv, Some(ANSWER_TIMEOUT))?;
        Ok(Netlink { socket, seq: 0 })
    }

    /// Every link the kernel has.
    pub(crate) fn links(&mut self) -> io::Result<Vec<Link>> {
        let mut links = Vec::new();
        self.transact(&Request::Links, |reply| match reply {
            Reply::Link { link, .. } => {
                links.push(link);
                None
            }
            Reply::Done { .. } => Some(Ok(())),
            Reply::Ack { errno, .. } => Some(Err(io::Error::from_raw_os_error(errno))),
            Reply::Other => None,
        })?;
        Ok(links)
    }

    /// Sends `request` and waits for its acknowledgement.
    pub(crate) fn apply(&mut self, request: &Request) -> io::Result<()> {
        self.transact(request, |reply| match reply {
            Reply::Ack { errno: 0, .. } => Some(Ok(())),
            Reply::Ack { errno, .. } => Some(Err(io::Error::from_raw_os_error(errno))),
            _ => None,
        })
    }

    /// Sends `request`, then hands each reply to it until `on_reply` says
    /// the request is over; replies to earlier requests are skipped.
    fn transact(
        &mut self,
        request: &Request,
        mut on_reply: impl FnMut(Reply) -> Option<io::Result<()>>,
    ) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let kernel = SocketAddrNetlink::new(0, 0);
        rustix::net::sendto(&self.socket, &request.encode(seq), SendFlags::empty(), &kernel)?;
        // A dump of a few links fits many times over.
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let (got, _) = rustix::net::recv(&self.socket, &mut buf[..], RecvFlags::empty())?;
            for reply in parse(&buf[..got])? {
                let ours = match &reply {
                    Reply::Ack { seq: s, .. } | Reply::Done { seq: s } | Reply::Link { seq: s, .. } => *s == seq,
                    Reply::Other => true,
                };
                if let Some(done) = ours.then(|| on_reply(reply)).flatten() {
                    return done;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(msg: &[u8]) -> (u32, u16, u16, u32) {
        (u32_at(msg, 0), u16::from_ne_bytes([msg[4], msg[5]]), u16::from_ne_bytes([msg[6], msg[7]]), u32_at(msg, 8))
    }

    #[test]
    fn an_address_request_is_ifaddrmsg_with_local_and_address() {
        let msg = Request::Address { index: 2, address: Ipv4Addr::new(10, 213, 0, 5), prefix: 24 }.encode(7);
        let flags = (libc::NLM_F_REQUEST | libc::NLM_F_ACK | libc::NLM_F_CREATE | libc::NLM_F_REPLACE) as u16;
        assert_eq!(header(&msg), (40, libc::RTM_NEWADDR, flags, 7));
        assert_eq!(&msg[16..20], &[libc::AF_INET as u8, 24, 0, 0]);
        assert_eq!(u32_at(&msg, 20), 2);
        // Two attributes of 8 bytes: length 8, type, the address.
        assert_eq!(&msg[24..28], &[&8u16.to_ne_bytes()[..], &libc::IFA_LOCAL.to_ne_bytes()[..]].concat()[..]);
        assert_eq!(&msg[28..32], &[10, 213, 0, 5]);
        assert_eq!(&msg[32..36], &[&8u16.to_ne_bytes()[..], &libc::IFA_ADDRESS.to_ne_bytes()[..]].concat()[..]);
        assert_eq!(&msg[36..40], &[10, 213, 0, 5]);
    }

    #[test]
    fn a_default_route_is_a_main_table_route_with_gateway_and_device() {
        let msg = Request::DefaultRoute { index: 3, gateway: Ipv4Addr::new(10, 213, 0, 1) }.encode(1);
        assert_eq!(header(&msg).0 as usize, msg.len());
        assert_eq!(msg.len(), 16 + 12 + 8 + 8);
        assert_eq!(header(&msg).1, libc::RTM_NEWROUTE);
        // family, dst_len 0 (default), src_len, tos, table, protocol, scope, type.
        assert_eq!(&msg[16..24], &[2, 0, 0, 0, 254, libc::RTPROT_BOOT, 0, libc::RTN_UNICAST]);
        assert_eq!(&msg[32..36], &[10, 213, 0, 1]);
        assert_eq!(u32_at(&msg, 40), 3);
    }

    #[test]
    fn up_sets_and_changes_only_iff_up() {
        let msg = Request::Up { index: 4 }.encode(2);
        assert_eq!(header(&msg).0, 32);
        assert_eq!((u32_at(&msg, 20), u32_at(&msg, 24), u32_at(&msg, 28)), (4, 1, 1));
        let dump = Request::Links.encode(3);
        assert_eq!(header(&dump).2, (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16);
    }

    /// A reply as the kernel lays it out: a link, an ack, a dump's end.
    fn link_message(seq: u32, index: u32, name: &str, kind: u16) -> Vec<u8> {
        let mut body = vec![0, 0];
        body.extend_from_slice(&kind.to_ne_bytes());
        body.extend_from_slice(&index.to_ne_bytes());
        body.extend_from_slice(&[0; 8]);
        let name = [name.as_bytes(), &[0]].concat();
        let mtu = 1500u32.to_ne_bytes();
        message(libc::RTM_NEWLINK, 2, seq, &body, &[(4 /* IFLA_MTU */, &mtu), (libc::IFLA_IFNAME, &name)])
    }

    #[test]
    fn replies_parse_into_links_acks_and_the_end() {
        let mut data = link_message(5, 1, "lo", libc::ARPHRD_LOOPBACK);
        data.extend(link_message(5, 2, "ens3", libc::ARPHRD_ETHER));
        let mut ack = message(libc::NLMSG_ERROR as u16, 0, 6, &(-libc::EEXIST).to_ne_bytes(), &[]);
        ack.extend_from_slice(&[0; 16]);
        let len = ack.len() as u32;
        ack[0..4].copy_from_slice(&len.to_ne_bytes());
        data.extend(ack);
        data.extend(message(libc::NLMSG_DONE as u16, 2, 5, &0i32.to_ne_bytes(), &[]));
        assert_eq!(
            parse(&data).unwrap(),
            [
                Reply::Link { seq: 5, link: Link { index: 1, name: "lo".into(), kind: libc::ARPHRD_LOOPBACK } },
                Reply::Link { seq: 5, link: Link { index: 2, name: "ens3".into(), kind: libc::ARPHRD_ETHER } },
                Reply::Ack { seq: 6, errno: libc::EEXIST },
                Reply::Done { seq: 5 },
            ]
        );
    }

    #[test]
    fn truncated_replies_are_errors() {
        let whole = link_message(1, 2, "eth0", libc::ARPHRD_ETHER);
        for cut in [3, 15, 20, whole.len() - 1] {
            assert!(parse(&whole[..cut]).is_err(), "cut at {cut}");
        }
        for bad_len in [200u16, 0, 3] {
            let mut bad_attr = whole.clone();
            bad_attr[32..34].copy_from_slice(&bad_len.to_ne_bytes());
            assert!(parse(&bad_attr).is_err(), "attribute length {bad_len}");
        }
    }
}
