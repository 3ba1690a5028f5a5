//! Firecracker's REST API as typed requests, and the pure step that turns a
//! [`VmSpec`] into the requests that configure and boot it. Field names are
//! the ones of Firecracker's API description (`firecracker-v1.16.1.yaml`);
//! a test validates every request built here against it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{VmSpec, VmmError};

/// Kernel parameters the driver owns, each added unless the spec's command
/// line sets that parameter already: the serial console is Firecracker's
/// stdout, and a guest reboot or panic makes Firecracker exit instead of
/// hanging (`panic=` only as a default: the daemon chooses its own).
pub const DRIVER_BOOT_ARGS: [&str; 3] = ["console=ttyS0", "reboot=k", "panic=1"];

/// The vsock context id of the guest (0-2 are reserved).
pub const GUEST_CID: u32 = 3;

/// `PUT /metrics`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    /// File Firecracker flushes its JSON metrics to; must exist.
    pub metrics_path: String,
}

/// `PUT /machine-config`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfiguration {
    /// vCPUs, 1 to 32.
    pub vcpu_count: u32,
    /// Guest memory in MiB.
    pub mem_size_mib: u32,
    /// Simultaneous multithreading.
    pub smt: bool,
}

/// `PUT /boot-source`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSource {
    /// ELF vmlinux on the host.
    pub kernel_image_path: String,
    /// Initramfs on the host.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub initrd_path: Option<String>,
    /// Kernel command line.
    pub boot_args: String,
}

/// `PUT /drives/{drive_id}` (a virtio-block drive).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drive {
    /// The drive's id, also in the path.
    pub drive_id: String,
    /// Disk image on the host.
    pub path_on_host: String,
    /// Whether Firecracker adds `root=<this drive> rw|ro` to the command
    /// line; only when the spec's command line names no root itself.
    pub is_root_device: bool,
    /// Attach read-only.
    pub is_read_only: bool,
}

/// `PUT /network-interfaces/{iface_id}` (a virtio-net device backed by a
/// host tap).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterface {
    /// The interface's id, also in the path.
    pub iface_id: String,
    /// The host tap device's name.
    pub host_dev_name: String,
    /// The guest's MAC, `02:00:00:00:00:01`.
    pub guest_mac: String,
}

/// `PUT /vsock`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vsock {
    /// Guest context id, at least 3.
    pub guest_cid: u32,
    /// Host-side unix socket Firecracker listens on.
    pub uds_path: String,
}

/// `PUT /actions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceActionInfo {
    /// The action.
    pub action_type: ActionType,
}

/// What `PUT /actions` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActionType {
    /// Boot the configured guest.
    InstanceStart,
    /// Press Ctrl+Alt+Del in the guest (a graceful reboot, which with
    /// `reboot=k` makes Firecracker exit).
    SendCtrlAltDel,
    /// Write the metrics now.
    FlushMetrics,
}

/// One request to Firecracker's API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiRequest {
    /// `PUT /metrics`.
    Metrics(Metrics),
    /// `PUT /machine-config`.
    MachineConfig(MachineConfiguration),
    /// `PUT /boot-source`.
    BootSource(BootSource),
    /// `PUT /drives/{drive_id}`.
    Drive(Drive),
    /// `PUT /network-interfaces/{iface_id}`.
    NetworkInterface(NetworkInterface),
    /// `PUT /vsock`.
    Vsock(Vsock),
    /// `PUT /actions`.
    Action(InstanceActionInfo),
}

impl ApiRequest {
    /// `PUT /actions` with this action.
    pub fn action(action_type: ActionType) -> Self {
        ApiRequest::Action(InstanceActionInfo { action_type })
    }

    /// The HTTP method.
    pub fn method(&self) -> &'static str {
        "PUT"
    }

    /// The request path.
    pub fn path(&self) -> String {
        match self {
            ApiRequest::Metrics(_) => "/metrics".into(),
            ApiRequest::MachineConfig(_) => "/machine-config".into(),
            ApiRequest::BootSource(_) => "/boot-source".into(),
            ApiRequest::Drive(drive) => format!("/drives/{}", drive.drive_id),
            ApiRequest::NetworkInterface(nic) => format!("/network-interfaces/{}", nic.iface_id),
            ApiRequest::Vsock(_) => "/vsock".into(),
            ApiRequest::Action(_) => "/actions".into(),
        }
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        let body = match self {
            ApiRequest::Metrics(b) => serde_json::to_value(b),
            ApiRequest::MachineConfig(b) => serde_json::to_value(b),
            ApiRequest::BootSource(b) => serde_json::to_value(b),
            ApiRequest::Drive(b) => serde_json::to_value(b),
            ApiRequest::NetworkInterface(b) => serde_json::to_value(b),
            ApiRequest::Vsock(b) => serde_json::to_value(b),
            ApiRequest::Action(b) => serde_json::to_value(b),
        };
        // Plain structs of strings, integers and booleans always serialize.
        body.expect("API request bodies serialize")
    }

    /// `METHOD /path`, for errors and logs.
    pub fn describe(&self) -> String {
        format!("{} {}", self.method(), self.path())
    }
}

/// The files of a VM's run directory that Firecracker uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunFiles {
    /// The API socket.
    pub api_sock: PathBuf,
    /// The host side of the guest's vsock.
    pub vsock: PathBuf,
    /// Firecracker's own log (`PUT /logger`).
    pub log: PathBuf,
    /// Firecracker's metrics (`PUT /metrics`).
    pub metrics: PathBuf,
    /// The serial console (Firecracker's stdout).
    pub console: PathBuf,
    /// Firecracker's stderr.
    pub vmm_log: PathBuf,
    /// The pid file.
    pub pid: PathBuf,
    /// The jailer's chroot base (`--chroot-base-dir`), when Firecracker
    /// runs under the jailer.
    pub chroot_base: PathBuf,
}

impl RunFiles {
    /// The files in `run_dir`.
    pub fn new(run_dir: &Path) -> Self {
        RunFiles {
            api_sock: run_dir.join("firecracker.sock"),
            vsock: run_dir.join("vsock.sock"),
            log: run_dir.join("firecracker.log"),
            metrics: run_dir.join("metrics.json"),
            console: run_dir.join("console.log"),
            vmm_log: run_dir.join("vmm.log"),
            pid: run_dir.join("vmm.pid"),
            chroot_base: run_dir.join("jail"),
        }
    }
}

/// The paths Firecracker is given over the API: the host's own when it
/// runs directly, the ones inside its chroot under the jailer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiPaths {
    /// `kernel_image_path`.
    pub kernel: PathBuf,
    /// `initrd_path`.
    pub initrd: Option<PathBuf>,
    /// `path_on_host` of each drive, in the spec's order.
    pub disks: Vec<PathBuf>,
    /// `log_path`.
    pub log: PathBuf,
    /// `metrics_path`.
    pub metrics: PathBuf,
    /// The vsock's `uds_path`.
    pub vsock: PathBuf,
}

impl ApiPaths {
    /// The spec's files and those of its run directory, as they are on the
    /// host.
    pub fn on_host(spec: &VmSpec) -> Self {
        let files = RunFiles::new(&spec.run_dir);
        ApiPaths {
            kernel: spec.kernel.clone(),
            initrd: spec.initrd.clone(),
            disks: spec.disks.iter().map(|d| d.path.clone()).collect(),
            log: files.log,
            metrics: files.metrics,
            vsock: files.vsock,
        }
    }
}

/// The requests that configure and boot `spec`, in the order they must be
/// sent: metrics first, `InstanceStart` last (the logger is configured on
/// Firecracker's command line, so that none of its own lines reach the
/// console). Paths are the host's.
pub fn requests(spec: &VmSpec) -> Result<Vec<ApiRequest>, VmmError> {
    requests_with_paths(spec, &ApiPaths::on_host(spec))
}

/// [`requests`], naming files by `paths` (the ones Firecracker sees).
pub fn requests_with_paths(spec: &VmSpec, paths: &ApiPaths) -> Result<Vec<ApiRequest>, VmmError> {
    if !(1..=32).contains(&spec.cpus) {
        return Err(VmmError::InvalidSpec(format!("Firecracker runs 1 to 32 vCPUs, not {}", spec.cpus)));
    }
    if spec.memory_mib == 0 {
        return Err(VmmError::InvalidSpec("the VM needs some memory".into()));
    }
    crate::check_nics(spec)?;
    if paths.disks.len() != spec.disks.len() {
        return Err(VmmError::InvalidSpec(format!("{} disk paths for {} disks", paths.disks.len(), spec.disks.len())));
    }
    let mut requests = vec![
        ApiRequest::Metrics(Metrics { metrics_path: utf8(&paths.metrics)? }),
        ApiRequest::MachineConfig(MachineConfiguration {
            vcpu_count: spec.cpus,
            mem_size_mib: spec.memory_mib,
            smt: false,
        }),
        ApiRequest::BootSource(BootSource {
            kernel_image_path: utf8(&paths.kernel)?,
            initrd_path: paths.initrd.as_deref().map(utf8).transpose()?,
            boot_args: boot_args(&spec.cmdline),
        }),
    ];
    // The spec's own `root=` (the daemon's) wins; Firecracker would add a
    // second one for a root device.
    let names_root = has_param(&spec.cmdline, "root");
    for (index, (disk, path)) in spec.disks.iter().zip(&paths.disks).enumerate() {
        requests.push(ApiRequest::Drive(Drive {
            drive_id: drive_id(index),
            path_on_host: utf8(path)?,
            is_root_device: index == 0 && !names_root,
            is_read_only: disk.read_only,
        }));
    }
    // The tap is the host's name: a jailed Firecracker opens it through
    // /dev/net/tun, which the jailer makes inside the chroot.
    for (index, nic) in spec.nics.iter().enumerate() {
        requests.push(ApiRequest::NetworkInterface(NetworkInterface {
            iface_id: iface_id(index),
            host_dev_name: nic.tap.clone(),
            guest_mac: nic.mac_address(),
        }));
    }
    requests.push(ApiRequest::Vsock(Vsock { guest_cid: GUEST_CID, uds_path: utf8(&paths.vsock)? }));
    requests.push(ApiRequest::action(ActionType::InstanceStart));
    Ok(requests)
}

/// The command line Firecracker is given: the spec's, then each of
/// [`DRIVER_BOOT_ARGS`] whose parameter the spec does not set. Firecracker
/// itself adds only `pci=off` and its devices (and `root=` for a root
/// device, which [`requests`] asks for only when the spec names none).
pub fn boot_args(cmdline: &str) -> String {
    let mut args: Vec<&str> = cmdline.split_whitespace().collect();
    for arg in DRIVER_BOOT_ARGS {
        let name = arg.split_once('=').map_or(arg, |(name, _)| name);
        if !has_param(cmdline, name) {
            args.push(arg);
        }
    }
    args.join(" ")
}

/// Whether the command line sets the kernel parameter `name` (`name` or
/// `name=...`).
fn has_param(cmdline: &str, name: &str) -> bool {
    cmdline.split_whitespace().any(|arg| arg.split_once('=').map_or(arg, |(n, _)| n) == name)
}

/// `rootfs` for the first disk, `disk1`, `disk2`... for the others.
pub fn drive_id(index: usize) -> String {
    match index {
        0 => "rootfs".into(),
        n => format!("disk{n}"),
    }
}

/// `eth0`, `eth1`...: the id of the guest's `index`th interface (only
/// Firecracker's; the guest names its interfaces itself).
pub fn iface_id(index: usize) -> String {
    format!("eth{index}")
}

/// Firecracker's API takes paths as JSON strings.
fn utf8(path: &Path) -> Result<String, VmmError> {
    path.to_str()
        .map(str::to_owned)
        .ok_or_else(|| VmmError::InvalidSpec(format!("path {} is not UTF-8", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DiskSpec;

    fn spec() -> VmSpec {
        VmSpec {
            name: "t".into(),
            run_dir: "/run/vm".into(),
            kernel: "/k/vmlinux".into(),
            initrd: None,
            cmdline: "  ".into(),
            cpus: 1,
            memory_mib: 256,
            disks: vec![DiskSpec { path: "/d/root.ext4".into(), read_only: false }],
            nics: Vec::new(),
        }
    }

    fn boot_source(requests: &[ApiRequest]) -> &BootSource {
        requests
            .iter()
            .find_map(|r| match r {
                ApiRequest::BootSource(b) => Some(b),
                _ => None,
            })
            .expect("a boot-source request")
    }

    fn root_devices(requests: &[ApiRequest]) -> Vec<bool> {
        requests
            .iter()
            .filter_map(|r| match r {
                ApiRequest::Drive(d) => Some(d.is_root_device),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn empty_cmdline_gets_only_the_drivers_settings() {
        let requests = requests(&spec()).unwrap();
        let boot = boot_source(&requests);
        assert_eq!(boot.boot_args, "console=ttyS0 reboot=k panic=1");
        assert_eq!(boot.initrd_path, None);
        assert!(!requests[2].body().as_object().unwrap().contains_key("initrd_path"));
        // No root= in the spec: Firecracker names the root device.
        assert_eq!(root_devices(&requests), [true]);
    }

    /// What the daemon passes (vm/lifecycle.rs) comes out once, with only
    /// the console and reboot settings added: no second `panic=`, and no
    /// second `root=` from Firecracker.
    #[test]
    fn the_daemons_cmdline_is_not_duplicated() {
        let cmdline = "root=/dev/vda rw init=/sbin/banger-agent banger.hostname=web systemd.hostname=web panic=-1 \
                       banger.work=/dev/vdb";
        let disks = vec![
            DiskSpec { path: "/d/root.ext4".into(), read_only: false },
            DiskSpec { path: "/d/work.ext4".into(), read_only: false },
        ];
        let requests = requests(&VmSpec { cmdline: cmdline.into(), disks, ..spec() }).unwrap();
        assert_eq!(
            boot_source(&requests).boot_args,
            "root=/dev/vda rw init=/sbin/banger-agent banger.hostname=web systemd.hostname=web panic=-1 \
             banger.work=/dev/vdb console=ttyS0 reboot=k"
        );
        assert_eq!(root_devices(&requests), [false, false]);
    }

    #[test]
    fn parameters_are_matched_by_name() {
        assert_eq!(boot_args("console=hvc0 quiet"), "console=hvc0 quiet reboot=k panic=1");
        assert_eq!(boot_args("panicky=1"), "panicky=1 console=ttyS0 reboot=k panic=1");
        assert!(has_param("a root=/dev/vdb b", "root"));
        assert!(!has_param("rootwait", "root"));
    }

    #[test]
    fn vcpu_count_outside_firecrackers_range_is_refused() {
        for cpus in [0, 33] {
            let err = requests(&VmSpec { cpus, ..spec() }).unwrap_err();
            assert!(matches!(err, VmmError::InvalidSpec(_)), "{err}");
        }
    }

    #[test]
    fn each_nic_is_a_network_interface_before_the_start() {
        let nics = vec![
            crate::NicSpec { tap: "tap-a".into(), mac: [0x02, 0, 0, 0, 0, 0x0a] },
            crate::NicSpec { tap: "tap-b".into(), mac: [0x02, 0, 0, 0, 0, 0xfb] },
        ];
        let requests = requests(&VmSpec { nics, ..spec() }).unwrap();
        let paths: Vec<String> = requests.iter().map(ApiRequest::path).collect();
        let eth0 = paths.iter().position(|p| p == "/network-interfaces/eth0").expect("eth0");
        assert_eq!(paths[eth0 + 1], "/network-interfaces/eth1");
        assert_eq!(paths.last().unwrap(), "/actions");
        assert_eq!(
            requests[eth0 + 1].body(),
            serde_json::json!({"iface_id": "eth1", "host_dev_name": "tap-b", "guest_mac": "02:00:00:00:00:fb"})
        );
        let none = super::requests(&spec()).unwrap();
        assert!(!none.iter().any(|r| matches!(r, ApiRequest::NetworkInterface(_))));
    }

    #[test]
    fn a_bad_nic_is_refused() {
        let nics = vec![crate::NicSpec { tap: "a name".into(), mac: [0x02, 0, 0, 0, 0, 1] }];
        assert!(matches!(requests(&VmSpec { nics, ..spec() }), Err(VmmError::InvalidSpec(_))));
    }

    #[test]
    fn drive_ids_name_the_root_disk() {
        assert_eq!([drive_id(0), drive_id(1), drive_id(2)], ["rootfs", "disk1", "disk2"]);
    }

    #[test]
    fn non_utf8_paths_are_refused() {
        use std::os::unix::ffi::OsStrExt;
        let kernel = std::ffi::OsStr::from_bytes(b"/k/\xff").into();
        assert!(matches!(requests(&VmSpec { kernel, ..spec() }), Err(VmmError::InvalidSpec(_))));
    }
}
