//! The probes that read the host: device nodes, sysfs, procfs, and the
//! external programs banger runs. Each takes its root (or search path) as a
//! parameter where tests need to fake it.

use std::fs::{self, OpenOptions};
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::command::find_tool;
use crate::{sys, DiskSpace, Kvm, Tool};

/// How long a `--version` may take before the tool is reported as `unknown`.
const VERSION_TIMEOUT: Duration = Duration::from_secs(5);

/// KVM as seen under `root` (`/` on a real host): `dev/kvm` and `sys/module`.
pub(crate) fn kvm_at(root: &Path) -> Kvm {
    let dev = root.join("dev/kvm");
    if !dev.exists() {
        return Kvm::Absent;
    }
    // Checked before access: granting access would not make a PVM-only KVM
    // run ordinary kernels, so this is the verdict that matters.
    if pvm_only(&root.join("sys/module")) {
        return Kvm::PvmOnly;
    }
    match OpenOptions::new().read(true).write(true).open(&dev) {
        Ok(_) => Kvm::Usable,
        Err(e) => Kvm::NoAccess { reason: e.to_string() },
    }
}

/// `kvm_pvm` loaded without a hardware backend (`kvm_intel`, `kvm_amd`).
fn pvm_only(sys_module: &Path) -> bool {
    sys_module.join("kvm_pvm").exists()
        && !sys_module.join("kvm_intel").exists()
        && !sys_module.join("kvm_amd").exists()
}

/// Finds `name` with [`find_tool`] and asks it for its version.
pub(crate) fn tool(name: &str) -> Option<Tool> {
    let path = find_tool(name)?;
    let version = first_line_of(&path, "--version")
        .map(|line| parse_version(name, &line))
        .unwrap_or_else(|| "unknown".to_string());
    Some(Tool { path, version })
}

/// Runs `path arg` and returns the first non-empty line of its output, or
/// `None` if it fails, says nothing, or takes longer than [`VERSION_TIMEOUT`].
fn first_line_of(path: &Path, arg: &str) -> Option<String> {
    let mut child =
        Command::new(path).arg(arg).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().ok()?;
    let deadline = Instant::now() + VERSION_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    };
    if !status.success() {
        return None;
    }
    let mut out = String::new();
    child.stdout.take()?.read_to_string(&mut out).ok()?;
    out.lines().map(str::trim).find(|l| !l.is_empty()).map(str::to_string)
}

/// The version to show for a tool, from the first line of `--version`:
/// QEMU's number alone (`QEMU emulator version 7.2.22 (Debian ...)` →
/// `7.2.22`), other tools' line as is (`Firecracker v1.16.1`).
fn parse_version(name: &str, first_line: &str) -> String {
    if name.starts_with("qemu") {
        if let Some(rest) = first_line.split_once("version ").map(|(_, rest)| rest) {
            if let Some(number) = rest.split_whitespace().next() {
                return number.to_string();
            }
        }
    }
    first_line.to_string()
}

/// Whether the kernel under `root` has device-mapper.
pub(crate) fn device_mapper_at(root: &Path) -> bool {
    root.join("sys/class/misc/device-mapper").exists()
        || root.join("dev/mapper/control").exists()
        || fs::read_to_string(root.join("proc/misc"))
            .is_ok_and(|misc| misc.lines().any(|l| l.split_whitespace().nth(1) == Some("device-mapper")))
}

/// Whether the kernel under `root` offers vhost-vsock to QEMU: `dev/vhost-vsock`
/// exists. Whether the daemon may open it is QEMU's to find out at start.
pub(crate) fn vhost_vsock_at(root: &Path) -> bool {
    root.join("dev/vhost-vsock").exists()
}

/// Whether systemd-resolved is running under `root`: its varlink socket exists.
pub(crate) fn resolved_at(root: &Path) -> bool {
    root.join("run/systemd/resolve/io.systemd.Resolve").exists()
}

/// Space on the filesystem that holds `state_dir`, or would hold it: the
/// nearest existing ancestor is measured when it does not exist yet.
pub(crate) fn disk_space(state_dir: &Path) -> Option<DiskSpace> {
    let existing = state_dir.ancestors().find(|p| p.exists())?;
    sys::disk_space(existing).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::find_tool_in;
    use std::path::PathBuf;

    /// A fake host root with the given entries under it (directories, or
    /// files when the name is `dev/kvm`).
    fn fake_root(entries: &[&str]) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        for entry in entries {
            let path = root.path().join(entry);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            if *entry == "dev/kvm" {
                fs::write(&path, b"").unwrap();
            } else {
                fs::create_dir(&path).unwrap();
            }
        }
        root
    }

    #[test]
    fn kvm_absent_without_dev_kvm() {
        let root = fake_root(&["sys/module/kvm", "sys/module/kvm_intel"]);
        assert_eq!(kvm_at(root.path()), Kvm::Absent);
    }

    #[test]
    fn kvm_pvm_only_when_no_hardware_module() {
        let root = fake_root(&["dev/kvm", "sys/module/kvm", "sys/module/kvm_pvm"]);
        assert_eq!(kvm_at(root.path()), Kvm::PvmOnly);
    }

    #[test]
    fn kvm_usable_with_a_hardware_module() {
        for hw in ["sys/module/kvm_intel", "sys/module/kvm_amd"] {
            let root = fake_root(&["dev/kvm", "sys/module/kvm", "sys/module/kvm_pvm", hw]);
            assert_eq!(kvm_at(root.path()), Kvm::Usable, "{hw}");
        }
        let root = fake_root(&["dev/kvm", "sys/module/kvm", "sys/module/kvm_intel"]);
        assert_eq!(kvm_at(root.path()), Kvm::Usable);
    }

    #[test]
    fn kvm_no_access_carries_the_error() {
        // A directory cannot be opened for writing, whoever runs the test.
        let root = fake_root(&["dev/kvm/", "sys/module/kvm_intel"]);
        match kvm_at(root.path()) {
            Kvm::NoAccess { reason } => assert!(reason.contains("os error"), "{reason}"),
            other => panic!("expected NoAccess, got {other:?}"),
        }
    }

    #[test]
    fn parses_versions() {
        let qemu = "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)";
        assert_eq!(parse_version("qemu-system-x86_64", qemu), "7.2.22");
        assert_eq!(parse_version("qemu-system-x86_64", "QEMU emulator version 10.0.2"), "10.0.2");
        assert_eq!(parse_version("qemu-system-x86_64", "odd"), "odd");
        assert_eq!(parse_version("firecracker", "Firecracker v1.16.1"), "Firecracker v1.16.1");
    }

    #[test]
    fn version_of_a_real_program() {
        let sh = find_tool_in("sh", &[PathBuf::from("/bin"), PathBuf::from("/usr/bin")]).unwrap();
        assert_eq!(first_line_of(&sh, "-c").as_deref(), None, "sh -c without a command fails");
        let echo = find_tool_in("echo", &[PathBuf::from("/bin"), PathBuf::from("/usr/bin")]).unwrap();
        assert_eq!(first_line_of(&echo, "v1.2").as_deref(), Some("v1.2"));
    }

    #[test]
    fn device_mapper_from_any_sign() {
        assert!(!device_mapper_at(fake_root(&[]).path()));
        assert!(device_mapper_at(fake_root(&["sys/class/misc/device-mapper"]).path()));
        assert!(device_mapper_at(fake_root(&["dev/mapper/control"]).path()));
        let root = fake_root(&["proc"]);
        fs::write(root.path().join("proc/misc"), "232 kvm\n236 device-mapper\n").unwrap();
        assert!(device_mapper_at(root.path()));
        fs::write(root.path().join("proc/misc"), "232 kvm\n237 loop-control\n").unwrap();
        assert!(!device_mapper_at(root.path()));
    }

    #[test]
    fn vhost_vsock_from_its_device_node() {
        assert!(!vhost_vsock_at(fake_root(&["dev/vsock"]).path()));
        assert!(vhost_vsock_at(fake_root(&["dev/vhost-vsock"]).path()));
    }

    #[test]
    fn resolved_from_its_socket() {
        assert!(!resolved_at(fake_root(&[]).path()));
        assert!(resolved_at(fake_root(&["run/systemd/resolve/io.systemd.Resolve"]).path()));
    }

    #[test]
    fn disk_space_of_a_missing_dir_uses_its_ancestor() {
        let dir = tempfile::tempdir().unwrap();
        let space = disk_space(&dir.path().join("not/yet")).unwrap();
        assert!(space.total_bytes > 0 && space.free_bytes <= space.total_bytes, "{space:?}");
    }
}
