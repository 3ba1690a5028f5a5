//! Pure verdicts over [`Capabilities`]: the `banger doctor` checks and the
//! choice of VMM. Nothing here touches the host.

use std::fmt;

use banger_api::{Check, CheckStatus, VmmChoice};

use crate::{Capabilities, DiskSpace, Kvm, Reflink, Tool};

const GIB: u64 = 1 << 30;
/// Below this much free space the disk check warns.
const DISK_WARN_BYTES: u64 = 10 * GIB;
/// Below this much free space the disk check fails.
const DISK_FAIL_BYTES: u64 = GIB;
/// Below this share of the filesystem free (in percent), the disk check
/// warns, however large the filesystem.
const DISK_WARN_PERCENT: u64 = 5;

/// The virtual machine monitor banger runs guests with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vmm {
    /// Firecracker, on KVM.
    Firecracker,
    /// QEMU, with KVM acceleration or with TCG emulation.
    Qemu {
        /// Whether QEMU runs with `-accel kvm` (else `-accel tcg`).
        kvm: bool,
    },
}

impl fmt::Display for Vmm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Vmm::Firecracker => "Firecracker",
            Vmm::Qemu { kvm: true } => "QEMU with KVM",
            Vmm::Qemu { kvm: false } => "QEMU with TCG emulation",
        })
    }
}

/// The VMM to use on this host, and a one-line reason: Firecracker when it is
/// installed and KVM runs ordinary kernels, else QEMU, with KVM when usable.
pub fn preferred_vmm(c: &Capabilities) -> (Vmm, String) {
    match (&c.firecracker, &c.kvm) {
        (Some(_), Kvm::Usable) => (Vmm::Firecracker, "firecracker is installed and KVM is usable".into()),
        (None, Kvm::Usable) => (Vmm::Qemu { kvm: true }, "KVM is usable but firecracker is not installed".into()),
        (_, kvm) => (Vmm::Qemu { kvm: false }, kvm_summary(kvm).into()),
    }
}

/// The VMM new VMs get, and why: the one the config forces (`[vms] vmm`),
/// else [`preferred_vmm`]. A forced QEMU still uses KVM when it is usable.
pub fn chosen_vmm(c: &Capabilities, forced: Option<VmmChoice>) -> (Vmm, String) {
    match forced {
        // The config refuses a VMM it does not know, so `Unknown` is never forced.
        None | Some(VmmChoice::Unknown) => preferred_vmm(c),
        Some(VmmChoice::Firecracker) => (Vmm::Firecracker, FORCED_FIRECRACKER.into()),
        Some(VmmChoice::Qemu) => (Vmm::Qemu { kvm: c.kvm.is_usable() }, FORCED_QEMU.into()),
    }
}

const FORCED_FIRECRACKER: &str = "the config forces it (vmm = \"firecracker\")";
const FORCED_QEMU: &str = "the config forces it (vmm = \"qemu\")";

fn kvm_summary(kvm: &Kvm) -> &'static str {
    match kvm {
        Kvm::Absent => "/dev/kvm is missing",
        Kvm::NoAccess { .. } => "/dev/kvm cannot be opened read-write",
        Kvm::PvmOnly => "KVM here accepts only paravirtualised (PVM) guests",
        Kvm::Usable => "KVM is usable",
    }
}

/// Every `banger doctor` check, in a stable order: kvm, firecracker, jailer,
/// qemu, vsock, vmm, device_mapper, reflink, nftables, resolved, disk.
/// `forced` is the VMM the config forces, if it does.
pub fn checks(c: &Capabilities, forced: Option<VmmChoice>) -> Vec<Check> {
    let chosen = chosen_vmm(c, forced).0;
    vec![
        kvm_check(&c.kvm, chosen),
        firecracker_check(c, chosen),
        jailer_check(c.jailer.as_ref()),
        qemu_check(c, chosen),
        vsock_check(c.vhost_vsock),
        vmm_check(c, forced),
        device_mapper_check(c.device_mapper),
        reflink_check(&c.reflink, c),
        nftables_check(c.nftables.as_ref()),
        resolved_check(c.resolved),
        disk_check(c.disk, c),
    ]
}

fn pass(name: &str, detail: impl Into<String>) -> Check {
    Check { name: name.into(), status: CheckStatus::Pass, detail: detail.into(), fix: None }
}

fn warn(name: &str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
    Check { name: name.into(), status: CheckStatus::Warn, detail: detail.into(), fix: Some(fix.into()) }
}

fn fail(name: &str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
    Check { name: name.into(), status: CheckStatus::Fail, detail: detail.into(), fix: Some(fix.into()) }
}

fn found(tool: &Tool) -> String {
    format!("{} at {}", tool.version, tool.path.display())
}

fn kvm_check(kvm: &Kvm, chosen: Vmm) -> Check {
    const NAME: &str = "kvm";
    if chosen == Vmm::Firecracker && !kvm.is_usable() {
        return warn(
            NAME,
            format!("{}; Firecracker, which the config forces, needs it for its guests", kvm_summary(kvm)),
            "use a host with kvm_intel or kvm_amd, or set vmm = \"qemu\" in the config",
        );
    }
    match kvm {
        Kvm::Usable => pass(NAME, "/dev/kvm is usable"),
        Kvm::Absent => warn(
            NAME,
            "/dev/kvm is missing; banger will use QEMU with TCG emulation (slow)",
            "enable virtualisation in the firmware and load kvm_intel or kvm_amd",
        ),
        Kvm::NoAccess { reason } => warn(
            NAME,
            format!("/dev/kvm cannot be opened read-write ({reason}); banger will use QEMU with TCG emulation"),
            "add the user to group kvm (usermod -aG kvm $USER) or run bangerd as root",
        ),
        Kvm::PvmOnly => warn(
            NAME,
            "KVM here accepts only paravirtualised (PVM) guests: ordinary guest kernels will not boot under KVM, \
             so banger will use QEMU with TCG emulation",
            "use a host with kvm_intel or kvm_amd for fast KVM guests",
        ),
    }
}

fn firecracker_check(c: &Capabilities, chosen: Vmm) -> Check {
    const NAME: &str = "firecracker";
    const FIX: &str = "install the release binary from https://github.com/firecracker-microvm/firecracker/releases into /usr/local/bin";
    match &c.firecracker {
        Some(tool) if c.kvm.is_usable() || chosen == Vmm::Firecracker => pass(NAME, found(tool)),
        Some(tool) => pass(NAME, format!("{}; unused because KVM is not usable", found(tool))),
        None if chosen == Vmm::Firecracker => {
            fail(NAME, "Firecracker is not installed, and the config forces it (vmm = \"firecracker\")", FIX)
        }
        None => warn(NAME, "Firecracker is not installed; QEMU will be used", FIX),
    }
}

fn jailer_check(jailer: Option<&Tool>) -> Check {
    const NAME: &str = "jailer";
    match jailer {
        Some(tool) => pass(NAME, found(tool)),
        None => warn(
            NAME,
            "Jailer is not installed; Firecracker will run without it",
            "install jailer from the same Firecracker release into /usr/local/bin",
        ),
    }
}

fn qemu_check(c: &Capabilities, chosen: Vmm) -> Check {
    const NAME: &str = "qemu";
    const FIX: &str = "apt-get install qemu-system-x86";
    match &c.qemu {
        Some(tool) => pass(NAME, format!("QEMU {}", found(tool))),
        None if chosen == Vmm::Firecracker => {
            warn(NAME, "qemu-system-x86_64 is not installed; there is no fallback if Firecracker fails", FIX)
        }
        None => fail(NAME, "qemu-system-x86_64 is not installed and Firecracker cannot run here", FIX),
    }
}

fn vsock_check(vhost_vsock: bool) -> Check {
    const NAME: &str = "vsock";
    if vhost_vsock {
        pass(NAME, "vhost-vsock is available: QEMU guests use vsock for the agent")
    } else {
        warn(NAME, "no vhost-vsock: QEMU guests reach their agent over virtio-serial", "modprobe vhost_vsock")
    }
}

fn vmm_check(c: &Capabilities, forced: Option<VmmChoice>) -> Check {
    const NAME: &str = "vmm";
    let (vmm, why) = chosen_vmm(c, forced);
    let installed = match vmm {
        Vmm::Firecracker => c.firecracker.is_some(),
        Vmm::Qemu { .. } => c.qemu.is_some(),
    };
    let unforce = "remove vmm from [vms] in /etc/banger/config.toml to let banger choose";
    match (vmm, installed) {
        (Vmm::Firecracker, true) if !c.kvm.is_usable() => fail(
            NAME,
            format!("Firecracker will be used because {why}, but its guests cannot boot here: {}", kvm_summary(&c.kvm)),
            unforce,
        ),
        (_, true) => pass(NAME, format!("{vmm} will be used: {why}")),
        (Vmm::Firecracker, false) => {
            fail(NAME, format!("Firecracker would be used ({why}), but it is not installed"), unforce)
        }
        (Vmm::Qemu { .. }, false) => fail(
            NAME,
            format!("{vmm} would be used ({why}), but it is not installed"),
            "apt-get install qemu-system-x86",
        ),
    }
}

fn device_mapper_check(present: bool) -> Check {
    const NAME: &str = "device_mapper";
    if present {
        pass(NAME, "Device-mapper is available")
    } else {
        warn(
            NAME,
            "Device-mapper is missing; copy-on-write disks will use reflink or sparse copies",
            "modprobe dm_snapshot",
        )
    }
}

fn reflink_check(reflink: &Reflink, c: &Capabilities) -> Check {
    const NAME: &str = "reflink";
    const FIX: &str = "put the state root on XFS (mkfs.xfs -m reflink=1) or btrfs";
    let fallback = if c.device_mapper { "dm-snapshot" } else { "sparse copies" };
    match reflink {
        Reflink::Supported { fs } => pass(NAME, format!("The state root ({fs}) supports reflink copies")),
        Reflink::Unsupported { fs } => warn(
            NAME,
            format!("The state root is on {fs}, which cannot make reflink copies; VM disks will use {fallback}"),
            FIX,
        ),
        Reflink::Unknown { reason } => warn(
            NAME,
            format!("Reflink support could not be tested ({reason}); VM disks will use {fallback}"),
            format!("make sure {} can be created and written", c.state_dir.display()),
        ),
    }
}

fn nftables_check(nft: Option<&Tool>) -> Check {
    const NAME: &str = "nftables";
    match nft {
        Some(tool) => pass(NAME, found(tool)),
        None => fail(NAME, "nft is not installed; VM networking needs nftables", "apt-get install nftables"),
    }
}

fn resolved_check(running: bool) -> Check {
    const NAME: &str = "resolved";
    if running {
        pass(NAME, "systemd-resolved is running")
    } else {
        warn(
            NAME,
            "systemd-resolved is not running; .vm names resolve only through banger's DNS server directly or \
             the SSH config (installing it can replace /etc/resolv.conf)",
            "systemctl enable --now systemd-resolved",
        )
    }
}

fn disk_check(disk: Option<DiskSpace>, c: &Capabilities) -> Check {
    const NAME: &str = "disk";
    let dir = c.state_dir.display();
    let fix = format!("free space on the filesystem holding {dir}, or move the state root");
    let Some(d) = disk else {
        return warn(NAME, format!("Free space at {dir} could not be read"), fix);
    };
    let detail = format!("{} free of {} at {dir}", gib(d.free_bytes), gib(d.total_bytes));
    if d.free_bytes < DISK_FAIL_BYTES {
        fail(NAME, detail, fix)
    } else if d.free_bytes < DISK_WARN_BYTES || d.free_bytes.saturating_mul(100) < d.total_bytes * DISK_WARN_PERCENT {
        warn(NAME, detail, fix)
    } else {
        pass(NAME, detail)
    }
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / GIB as f64)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn tool(name: &str, version: &str) -> Option<Tool> {
        Some(Tool { path: PathBuf::from(format!("/usr/bin/{name}")), version: version.into() })
    }

    /// A host where everything works.
    fn all_good() -> Capabilities {
        Capabilities {
            kvm: Kvm::Usable,
            firecracker: tool("firecracker", "Firecracker v1.16.1"),
            jailer: tool("jailer", "Jailer v1.16.1"),
            qemu: tool("qemu-system-x86_64", "10.0.2"),
            vhost_vsock: true,
            device_mapper: true,
            reflink: Reflink::Supported { fs: "xfs".into() },
            nftables: tool("nft", "nftables v1.0.6"),
            resolved: true,
            disk: Some(DiskSpace { free_bytes: 100 * GIB, total_bytes: 200 * GIB }),
            state_dir: PathBuf::from("/var/lib/banger"),
        }
    }

    fn check<'a>(checks: &'a [Check], name: &str) -> &'a Check {
        checks.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no {name} check"))
    }

    #[test]
    fn checks_come_in_a_stable_order() {
        let names: Vec<_> = checks(&all_good(), None).into_iter().map(|c| c.name).collect();
        let want = [
            "kvm",
            "firecracker",
            "jailer",
            "qemu",
            "vsock",
            "vmm",
            "device_mapper",
            "reflink",
            "nftables",
            "resolved",
            "disk",
        ];
        assert_eq!(names, want);
    }

    #[test]
    fn all_good_passes_everything_and_picks_firecracker() {
        let c = all_good();
        assert_eq!(preferred_vmm(&c).0, Vmm::Firecracker);
        for check in checks(&c, None) {
            assert_eq!(check.status, CheckStatus::Pass, "{check:?}");
            assert_eq!(check.fix, None, "{check:?}");
        }
        assert!(check(&checks(&c, None), "vmm").detail.starts_with("Firecracker"));
    }

    #[test]
    fn pvm_only_warns_that_ordinary_kernels_will_not_boot() {
        let c = Capabilities { kvm: Kvm::PvmOnly, ..all_good() };
        let checks = checks(&c, None);
        let kvm = check(&checks, "kvm");
        assert_eq!(kvm.status, CheckStatus::Warn);
        assert!(kvm.detail.contains("ordinary guest kernels will not boot"), "{}", kvm.detail);
        assert!(kvm.detail.contains("QEMU with TCG"), "{}", kvm.detail);
        assert!(kvm.fix.is_some());
    }

    #[test]
    fn firecracker_with_pvm_only_chooses_qemu_tcg() {
        let c = Capabilities { kvm: Kvm::PvmOnly, ..all_good() };
        let (vmm, why) = preferred_vmm(&c);
        assert_eq!(vmm, Vmm::Qemu { kvm: false });
        assert!(why.contains("PVM"), "{why}");
        let checks = checks(&c, None);
        let vmm = check(&checks, "vmm");
        assert_eq!(vmm.status, CheckStatus::Pass);
        assert!(vmm.detail.starts_with("QEMU with TCG emulation"), "{}", vmm.detail);
        assert!(check(&checks, "firecracker").detail.contains("unused"));
    }

    #[test]
    fn usable_kvm_without_firecracker_chooses_qemu_kvm() {
        let c = Capabilities { firecracker: None, jailer: None, ..all_good() };
        assert_eq!(preferred_vmm(&c).0, Vmm::Qemu { kvm: true });
        let checks = checks(&c, None);
        let fc = check(&checks, "firecracker");
        assert_eq!(fc.status, CheckStatus::Warn);
        assert!(fc.fix.as_deref().unwrap().contains("github.com/firecracker-microvm/firecracker/releases"));
        assert_eq!(check(&checks, "qemu").status, CheckStatus::Pass);
    }

    #[test]
    fn no_qemu_and_no_firecracker_fails_qemu_and_vmm() {
        let c = Capabilities { firecracker: None, qemu: None, ..all_good() };
        let checks = checks(&c, None);
        let qemu = check(&checks, "qemu");
        assert_eq!(qemu.status, CheckStatus::Fail);
        assert_eq!(qemu.fix.as_deref(), Some("apt-get install qemu-system-x86"));
        assert_eq!(check(&checks, "vmm").status, CheckStatus::Fail);
    }

    #[test]
    fn no_qemu_with_pvm_only_firecracker_fails_qemu() {
        let c = Capabilities { kvm: Kvm::PvmOnly, qemu: None, ..all_good() };
        assert_eq!(check(&checks(&c, None), "qemu").status, CheckStatus::Fail);
    }

    #[test]
    fn no_qemu_with_working_firecracker_only_warns() {
        let c = Capabilities { qemu: None, ..all_good() };
        let checks = checks(&c, None);
        assert_eq!(check(&checks, "qemu").status, CheckStatus::Warn);
        assert_eq!(check(&checks, "vmm").status, CheckStatus::Pass);
    }

    #[test]
    fn kvm_without_access_says_why_and_how() {
        let c = Capabilities { kvm: Kvm::NoAccess { reason: "Permission denied (os error 13)".into() }, ..all_good() };
        assert_eq!(preferred_vmm(&c).0, Vmm::Qemu { kvm: false });
        let checks = checks(&c, None);
        let kvm = check(&checks, "kvm");
        assert_eq!(kvm.status, CheckStatus::Warn);
        assert!(kvm.detail.contains("os error 13"));
        assert!(kvm.fix.as_deref().unwrap().contains("group kvm"));
    }

    #[test]
    fn missing_pieces_warn_or_fail_with_a_fix() {
        let c = Capabilities {
            device_mapper: false,
            reflink: Reflink::Unsupported { fs: "ext4".into() },
            nftables: None,
            resolved: false,
            ..all_good()
        };
        let checks = checks(&c, None);
        let want = [
            ("device_mapper", CheckStatus::Warn, "modprobe dm_snapshot"),
            ("reflink", CheckStatus::Warn, "mkfs.xfs -m reflink=1"),
            ("nftables", CheckStatus::Fail, "apt-get install nftables"),
            ("resolved", CheckStatus::Warn, "systemctl enable --now systemd-resolved"),
        ];
        for (name, status, fix) in want {
            let got = check(&checks, name);
            assert_eq!(got.status, status, "{got:?}");
            assert!(got.fix.as_deref().unwrap().contains(fix), "{got:?}");
        }
        assert!(check(&checks, "reflink").detail.contains("ext4"));
        assert!(check(&checks, "resolved").detail.contains("/etc/resolv.conf"));
    }

    #[test]
    fn vsock_check_says_which_agent_channel_qemu_guests_get() {
        let checks_with = |vhost_vsock| checks(&Capabilities { vhost_vsock, ..all_good() }, None);
        let with = checks_with(true);
        let vsock = check(&with, "vsock");
        assert_eq!((vsock.status, vsock.fix.as_deref()), (CheckStatus::Pass, None));
        assert!(vsock.detail.contains("use vsock"), "{}", vsock.detail);
        let without = checks_with(false);
        let vsock = check(&without, "vsock");
        assert_eq!((vsock.status, vsock.fix.as_deref()), (CheckStatus::Warn, Some("modprobe vhost_vsock")));
        assert!(vsock.detail.contains("virtio-serial"), "{}", vsock.detail);
    }

    #[test]
    fn disk_thresholds() {
        let at = |free_bytes| {
            let c = Capabilities { disk: Some(DiskSpace { free_bytes, total_bytes: 100 * GIB }), ..all_good() };
            check(&checks(&c, None), "disk").status
        };
        assert_eq!(at(GIB / 2), CheckStatus::Fail);
        assert_eq!(at(5 * GIB), CheckStatus::Warn);
        assert_eq!(at(10 * GIB), CheckStatus::Pass);
        let share = |free_bytes, total_bytes| {
            let c = Capabilities { disk: Some(DiskSpace { free_bytes, total_bytes }), ..all_good() };
            check(&checks(&c, None), "disk").status
        };
        assert_eq!(share(40 * GIB, 1000 * GIB), CheckStatus::Warn, "4% free of a big filesystem");
        assert_eq!(share(60 * GIB, 1000 * GIB), CheckStatus::Pass);
        let c = Capabilities { disk: None, ..all_good() };
        assert_eq!(check(&checks(&c, None), "disk").status, CheckStatus::Warn);
    }

    /// `vmm = "firecracker"` on this kind of host (PVM-only KVM): doctor
    /// says Firecracker will be used, because of the config, and that its
    /// guests cannot boot here.
    #[test]
    fn a_forced_firecracker_is_reported_with_whether_it_can_work() {
        let pvm = Capabilities { kvm: Kvm::PvmOnly, ..all_good() };
        let checks = checks(&pvm, Some(VmmChoice::Firecracker));
        let vmm = check(&checks, "vmm");
        assert_eq!(vmm.status, CheckStatus::Fail, "{vmm:?}");
        assert!(vmm.detail.starts_with("Firecracker will be used because the config forces it"), "{}", vmm.detail);
        assert!(vmm.detail.contains("cannot boot here") && vmm.detail.contains("PVM"), "{}", vmm.detail);
        assert!(vmm.fix.as_deref().unwrap().contains("config.toml"));
        assert!(!check(&checks, "firecracker").detail.contains("unused"));
        assert!(!check(&checks, "kvm").detail.contains("will use QEMU"), "{:?}", check(&checks, "kvm"));
        assert_eq!(check(&checks, "qemu").status, CheckStatus::Pass);

        let checks = super::checks(&all_good(), Some(VmmChoice::Firecracker));
        let vmm = check(&checks, "vmm");
        assert_eq!(vmm.status, CheckStatus::Pass);
        assert_eq!(vmm.detail, "Firecracker will be used: the config forces it (vmm = \"firecracker\")");

        let missing = Capabilities { firecracker: None, ..all_good() };
        let checks = super::checks(&missing, Some(VmmChoice::Firecracker));
        assert_eq!(check(&checks, "firecracker").status, CheckStatus::Fail);
        assert_eq!(check(&checks, "vmm").status, CheckStatus::Fail);
        assert!(check(&checks, "vmm").detail.contains("not installed"));
    }

    #[test]
    fn a_forced_qemu_keeps_kvm_when_usable() {
        assert_eq!(chosen_vmm(&all_good(), Some(VmmChoice::Qemu)).0, Vmm::Qemu { kvm: true });
        let checks = checks(&all_good(), Some(VmmChoice::Qemu));
        assert_eq!(check(&checks, "vmm").detail, "QEMU with KVM will be used: the config forces it (vmm = \"qemu\")");
        let pvm = Capabilities { kvm: Kvm::PvmOnly, ..all_good() };
        assert_eq!(chosen_vmm(&pvm, Some(VmmChoice::Qemu)).0, Vmm::Qemu { kvm: false });
        assert_eq!(chosen_vmm(&pvm, None), preferred_vmm(&pvm));
    }

    #[test]
    fn fixes_are_one_line() {
        let worst = Capabilities {
            kvm: Kvm::PvmOnly,
            firecracker: None,
            jailer: None,
            qemu: None,
            vhost_vsock: false,
            device_mapper: false,
            reflink: Reflink::Unknown { reason: "cannot create".into() },
            nftables: None,
            resolved: false,
            disk: None,
            state_dir: PathBuf::from("/var/lib/banger"),
        };
        for check in checks(&worst, None) {
            assert_ne!(check.status, CheckStatus::Pass, "{check:?}");
            let fix = check.fix.as_deref().unwrap_or_else(|| panic!("{} has no fix", check.name));
            assert!(!fix.contains('\n') && !check.detail.contains('\n'), "{check:?}");
        }
    }
}
