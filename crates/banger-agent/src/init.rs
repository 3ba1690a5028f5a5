//! What the agent does as the guest's init (PID 1): mount the filesystems a
//! Linux userland expects, name the host, mount the work disk, and power the
//! machine off on request. Boot parameters come from the kernel command line.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use rustix::mount::MountFlags;
use rustix::system::RebootCommand;

use crate::log::log;
use crate::sys;

/// `PATH` for every process the agent starts as init (the initramfs leaves `/bin` only).
pub(crate) const GUEST_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How long `banger.work=` waits for its block device to appear.
const WORK_DEVICE_WAIT: Duration = Duration::from_secs(5);

/// How long processes get between SIGTERM and SIGKILL at power-off.
const TERM_GRACE: Duration = Duration::from_millis(500);

const NOSUID: MountFlags = MountFlags::NOSUID;
const NODEV: MountFlags = MountFlags::NODEV;
const NOEXEC: MountFlags = MountFlags::NOEXEC;

struct Mount {
    fstype: &'static str,
    target: &'static str,
    flags: MountFlags,
    data: &'static str,
}

/// In order: `/dev/pts` lives inside `/dev`.
const MOUNTS: &[Mount] = &[
    Mount { fstype: "proc", target: "/proc", flags: NOSUID.union(NODEV).union(NOEXEC), data: "" },
    Mount { fstype: "sysfs", target: "/sys", flags: NOSUID.union(NODEV).union(NOEXEC), data: "" },
    Mount { fstype: "devtmpfs", target: "/dev", flags: NOSUID, data: "mode=0755" },
    Mount { fstype: "devpts", target: "/dev/pts", flags: NOSUID.union(NOEXEC), data: "gid=5,mode=620,ptmxmode=666" },
    Mount { fstype: "tmpfs", target: "/run", flags: NOSUID.union(NODEV), data: "mode=0755" },
    Mount { fstype: "tmpfs", target: "/tmp", flags: NOSUID.union(NODEV), data: "mode=1777" },
];

/// What banger passes on the kernel command line.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct BootParams {
    /// `banger.hostname=NAME`.
    pub(crate) hostname: Option<String>,
    /// `banger.work=/dev/vdX`: an ext4 disk to mount on `/work`.
    pub(crate) work_device: Option<String>,
}

impl BootParams {
    /// Reads the `banger.*` parameters from a kernel command line; the last one wins.
    pub(crate) fn parse(cmdline: &str) -> BootParams {
        let mut params = BootParams::default();
        for word in cmdline.split_ascii_whitespace() {
            if let Some(name) = word.strip_prefix("banger.hostname=") {
                params.hostname = Some(name.to_string()).filter(|n| !n.is_empty());
            } else if let Some(device) = word.strip_prefix("banger.work=") {
                params.work_device = Some(device.to_string()).filter(|d| !d.is_empty());
            }
        }
        params
    }
}

/// Prepares the guest as its init. Each failure is logged and the rest goes on:
/// a half-prepared guest that answers is better than a kernel panic.
pub(crate) fn setup() {
    for m in MOUNTS {
        if let Err(e) = mount_once(m.fstype, Path::new(m.target), m.flags, m.data) {
            log!("cannot mount {} on {}: {e}", m.fstype, m.target);
        }
    }
    std::env::set_var("PATH", GUEST_PATH);
    // Ctrl-Alt-Del (Firecracker's SendCtrlAltDel) then sends SIGINT to init instead of rebooting.
    if let Err(e) = fs::write("/proc/sys/kernel/ctrl-alt-del", "0") {
        log!("cannot hand ctrl-alt-del to init: {e}");
    }
    let cmdline = fs::read_to_string("/proc/cmdline").unwrap_or_else(|e| {
        log!("cannot read /proc/cmdline: {e}");
        String::new()
    });
    let params = BootParams::parse(&cmdline);
    if let Some(name) = &params.hostname {
        if let Err(e) = sys::sethostname(name) {
            log!("cannot set the hostname to {name}: {e}");
        }
    }
    if let Some(device) = &params.work_device {
        if let Err(e) = mount_work(Path::new(device)) {
            log!("cannot mount the work disk {device} on /work: {e}");
        }
    }
}

/// Mounts `fstype` on `target` unless something is mounted there already
/// (the initramfs moves its `/dev`, `/proc` and `/sys` into the new root).
fn mount_once(fstype: &str, target: &Path, flags: MountFlags, data: &str) -> io::Result<()> {
    fs::create_dir_all(target)?;
    if is_mount_point(target)? {
        return Ok(());
    }
    sys::mount(fstype, target, fstype, flags, data)
}

/// A mount point sits on another device than its parent directory.
fn is_mount_point(path: &Path) -> io::Result<bool> {
    let parent = path.parent().unwrap_or(Path::new("/"));
    Ok(fs::metadata(path)?.dev() != fs::metadata(parent)?.dev())
}

fn mount_work(device: &Path) -> io::Result<()> {
    let deadline = std::time::Instant::now() + WORK_DEVICE_WAIT;
    while !device.exists() {
        if std::time::Instant::now() > deadline {
            return Err(io::Error::new(io::ErrorKind::NotFound, "the device did not appear"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let target = Path::new("/work");
    fs::create_dir_all(target)?;
    if is_mount_point(target)? {
        return Ok(());
    }
    sys::mount(&device.to_string_lossy(), target, "ext4", MountFlags::empty(), "")
}

/// Stops every process, flushes the disks and powers the machine off. Returns
/// only if the kernel refused both power-off and reboot.
pub(crate) fn power_off() -> io::Error {
    log!("powering off");
    // kill(-1) also "succeeds" on kernel threads, so /proc tells when everyone is
    // gone. The reaper keeps running meanwhile (this runs off the runtime's thread).
    let _ = sys::kill_all(libc::SIGTERM);
    let deadline = std::time::Instant::now() + TERM_GRACE;
    while user_processes_remain() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = sys::kill_all(libc::SIGKILL);
    sys::sync();
    let err = sys::reboot(RebootCommand::PowerOff);
    log!("power-off failed ({err}); rebooting instead");
    // QEMU runs with -no-reboot and Firecracker exits on reboot: either ends the VM.
    sys::reboot(RebootCommand::Restart)
}

/// Whether a process other than this one still runs: kernel threads and
/// zombies have an empty command line.
fn user_processes_remain() -> bool {
    let me = std::process::id().to_string();
    let Ok(entries) = fs::read_dir("/proc") else {
        return false;
    };
    entries.flatten().any(|entry| {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        name.bytes().all(|b| b.is_ascii_digit())
            && name != me
            && fs::read(entry.path().join("cmdline")).is_ok_and(|cmdline| !cmdline.is_empty())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_params_come_from_the_command_line() {
        let params = BootParams::parse("console=ttyS0 root=/dev/vda rw banger.hostname=dev banger.work=/dev/vdb\n");
        assert_eq!(params, BootParams { hostname: Some("dev".into()), work_device: Some("/dev/vdb".into()) });
        assert_eq!(BootParams::parse("quiet banger.hostname= panic=-1"), BootParams::default());
        assert_eq!(BootParams::parse("banger.hostnamex=a").hostname, None);
    }

    #[test]
    fn the_root_is_not_a_mount_point_of_its_own_parent() {
        // "/" is its own parent, so it never counts; /proc is a mount on any Linux host.
        assert!(!is_mount_point(Path::new("/")).unwrap());
        assert!(is_mount_point(Path::new("/proc")).unwrap());
    }
}
