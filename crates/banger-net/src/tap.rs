//! TAP devices: creating a persistent one by name through /dev/net/tun (the
//! kernel offers no netlink way), banger's tap names, and [`TapHost`], the
//! narrow set of host effects the tap pool needs, with its real netlink
//! implementation [`NetlinkTaps`].

use std::fs::OpenOptions;
use std::future::Future;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

use crate::link::{LinkError, Netlink};

/// Every tap banger makes is named this plus a number, and nothing else is:
/// the ruleset and crash recovery rely on it.
pub const TAP_PREFIX: &str = "bgtap";

/// Linux's limit on interface names, without the terminating NUL.
const MAX_IFNAME: usize = libc::IFNAMSIZ - 1;

/// What went wrong making or handling a tap.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The name is not a valid interface name.
    #[error("{0:?} is not a valid interface name (1 to 15 bytes, no '/', ':' or space)")]
    Name(String),
    /// /dev/net/tun could not be opened.
    #[error("cannot open /dev/net/tun")]
    OpenTun(#[source] io::Error),
    /// An ioctl on the tap was refused.
    #[error("cannot {action} tap {tap}")]
    Ioctl {
        /// What was asked, such as "make persistent".
        action: &'static str,
        /// The tap.
        tap: String,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// A netlink operation on a tap failed; the error names the link.
    #[error(transparent)]
    Link(#[from] LinkError),
}

/// The user and group that may open a tap without privileges, such as the
/// uid a jailed Firecracker runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TapOwner {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// The name of banger's tap number `n`: `bgtap0` .. `bgtap4294967295`, at
/// most 15 bytes.
pub fn tap_name(n: u32) -> String {
    format!("{TAP_PREFIX}{n}")
}

/// The number of a banger tap name, or None for any other name.
pub fn tap_number(name: &str) -> Option<u32> {
    let digits = name.strip_prefix(TAP_PREFIX)?;
    let canonical = !digits.is_empty() && (digits == "0" || !digits.starts_with('0'));
    if canonical && digits.bytes().all(|b| b.is_ascii_digit()) {
        digits.parse().ok()
    } else {
        None
    }
}

/// Creates persistent tap `name` (TAP, no packet info, virtio-net header) in
/// the calling thread's network namespace, owned by `owner` when given. On an
/// existing tap of that name it only re-applies the owner, so it also serves
/// to hand a ready tap to another uid.
pub fn create_tap(name: &str, owner: Option<TapOwner>) -> Result<(), TapError> {
    let valid = !name.is_empty()
        && name.len() <= MAX_IFNAME
        && !name.bytes().any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0);
    if !valid {
        return Err(TapError::Name(name.to_string()));
    }
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(TapError::OpenTun)?;
    let fd = tun.as_raw_fd();
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    let ioctl_err = |action| {
        let tap = name.to_string();
        move |source| TapError::Ioctl { action, tap, source }
    };
    // SAFETY: `fd` is open for the whole block; TUNSETIFF reads and writes a
    // `struct ifreq`, which `IfReq` matches in layout and size (40 bytes) and
    // which lives across the call; the other three take their argument by
    // value, not as a pointer.
    #[allow(unsafe_code)]
    unsafe {
        check(libc::ioctl(fd, libc::TUNSETIFF, &mut req as *mut IfReq)).map_err(ioctl_err("create"))?;
        check(libc::ioctl(fd, libc::TUNSETPERSIST, 1 as libc::c_ulong)).map_err(ioctl_err("make persistent"))?;
        if let Some(owner) = owner {
            check(libc::ioctl(fd, libc::TUNSETOWNER, owner.uid as libc::c_ulong))
                .map_err(ioctl_err("set the owner of"))?;
            check(libc::ioctl(fd, libc::TUNSETGROUP, owner.gid as libc::c_ulong))
                .map_err(ioctl_err("set the group of"))?;
        }
    }
    // Closing the fd leaves the persistent device behind, down.
    Ok(())
}

/// `struct ifreq` as TUNSETIFF uses it: the name, the flags, and the rest of
/// the union.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

const _: () = assert!(std::mem::size_of::<IfReq>() == 40);

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The host effects the tap pool needs, so its logic can be tested against a
/// recording fake.
pub trait TapHost: Send + Sync {
    /// Creates tap `name`, down and unattached.
    fn create_tap(&self, name: &str) -> impl Future<Output = Result<(), TapError>> + Send;
    /// Deletes link `name`; absent is fine.
    fn delete(&self, name: &str) -> impl Future<Output = Result<(), TapError>> + Send;
    /// Attaches `tap` to `bridge` and brings it up.
    fn attach(&self, tap: &str, bridge: &str) -> impl Future<Output = Result<(), TapError>> + Send;
    /// Detaches `tap` from its bridge and brings it down.
    fn detach(&self, tap: &str) -> impl Future<Output = Result<(), TapError>> + Send;
    /// Names of the links starting with `prefix`.
    fn list(&self, prefix: &str) -> impl Future<Output = Result<Vec<String>, TapError>> + Send;
}

/// The real [`TapHost`]: taps through /dev/net/tun, the rest over netlink.
#[derive(Debug, Clone)]
pub struct NetlinkTaps {
    netlink: Netlink,
    owner: Option<TapOwner>,
}

impl NetlinkTaps {
    /// Taps made by this host get `owner` when given.
    pub fn new(netlink: Netlink, owner: Option<TapOwner>) -> NetlinkTaps {
        NetlinkTaps { netlink, owner }
    }
}

impl TapHost for NetlinkTaps {
    async fn create_tap(&self, name: &str) -> Result<(), TapError> {
        create_tap(name, self.owner)
    }

    async fn delete(&self, name: &str) -> Result<(), TapError> {
        Ok(self.netlink.delete(name).await?)
    }

    async fn attach(&self, tap: &str, bridge: &str) -> Result<(), TapError> {
        Ok(self.netlink.attach(tap, bridge).await?)
    }

    async fn detach(&self, tap: &str) -> Result<(), TapError> {
        Ok(self.netlink.detach(tap).await?)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, TapError> {
        Ok(self.netlink.links_with_prefix(prefix).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(tap_name(0), "bgtap0");
        assert!(tap_name(u32::MAX).len() <= MAX_IFNAME);
        assert_eq!(tap_number("bgtap17"), Some(17));
        assert_eq!(tap_number("bgtap0"), Some(0));
        for other in ["bgtap", "bgtap01", "bgtapx", "bgtap1x", "eth0", "bgtap99999999999"] {
            assert_eq!(tap_number(other), None, "{other}");
        }
    }

    #[test]
    fn refuses_bad_names_before_touching_the_host() {
        for bad in ["", "a/b", "sixteen-chars-xx", "a b"] {
            assert!(matches!(create_tap(bad, None), Err(TapError::Name(_))), "{bad:?}");
        }
    }
}
