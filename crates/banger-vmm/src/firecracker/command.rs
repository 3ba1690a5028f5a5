//! The command lines that start Firecracker, directly or under its jailer,
//! and the checks on a spec that Firecracker would otherwise fail late on.
//! Pure functions; spawning happens in the driver.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// A program and its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandLine {
    /// The executable.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
}

/// The log level Firecracker starts with.
pub const LOG_LEVEL: &str = "Info";

/// The arguments both ways of starting Firecracker give it: the API socket,
/// and its log, configured at start so that none of its lines go to its
/// stdout, which is the guest's serial console. `--show-level` marks the
/// errors that say why it exited.
fn firecracker_args(api_sock: &Path, log: &Path) -> Vec<OsString> {
    vec![
        "--api-sock".into(),
        api_sock.into(),
        "--log-path".into(),
        log.into(),
        "--level".into(),
        LOG_LEVEL.into(),
        "--show-level".into(),
    ]
}

/// `firecracker --api-sock <sock> --log-path <log> --level Info
/// --show-level --id <id>`.
pub fn firecracker(binary: &Path, api_sock: &Path, log: &Path, id: &str) -> CommandLine {
    let mut args = firecracker_args(api_sock, log);
    args.extend(["--id".into(), id.into()]);
    CommandLine { program: binary.to_path_buf(), args }
}

/// Who the jailer runs Firecracker as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JailIdentity {
    /// The uid Firecracker runs with.
    pub uid: u32,
    /// The gid Firecracker runs with.
    pub gid: u32,
}

/// `jailer --id <id> --exec-file <firecracker> --uid <uid> --gid <gid>
/// --chroot-base-dir <base> -- <firecracker's arguments>`. The jailer
/// passes `--id` to Firecracker itself; `api_sock` and `log` are paths in
/// the chroot (see [`jail_root`]), and so must be every path sent over the
/// API.
pub fn jailer(
    jailer: &Path,
    firecracker: &Path,
    id: &str,
    identity: JailIdentity,
    chroot_base: &Path,
    (api_sock, log): (&Path, &Path),
) -> CommandLine {
    let mut args: Vec<OsString> = vec![
        "--id".into(),
        id.into(),
        "--exec-file".into(),
        firecracker.into(),
        "--uid".into(),
        identity.uid.to_string().into(),
        "--gid".into(),
        identity.gid.to_string().into(),
        "--chroot-base-dir".into(),
        chroot_base.into(),
        "--".into(),
    ];
    args.extend(firecracker_args(api_sock, log));
    CommandLine { program: jailer.to_path_buf(), args }
}

/// The directory the jailer chroots into:
/// `<chroot_base>/<exec file name>/<id>/root`.
pub fn jail_root(chroot_base: &Path, firecracker: &Path, id: &str) -> PathBuf {
    let exec_name = firecracker.file_name().unwrap_or(firecracker.as_os_str());
    chroot_base.join(exec_name).join(id).join("root")
}

/// Firecracker's instance id for a VM name: 1 to 64 ASCII letters, digits
/// and hyphens (the jailer refuses anything else); other characters become
/// hyphens.
pub fn instance_id(name: &str) -> String {
    let id: String =
        name.chars().take(64).map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '-' }).collect();
    if id.is_empty() {
        "banger-vm".into()
    } else {
        id
    }
}

/// What a kernel file's first bytes say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// An ELF image (vmlinux), the only kind Firecracker boots on x86_64.
    Elf,
    /// A compressed bzImage (`HdrS` boot protocol header).
    BzImage,
    /// Neither.
    Unknown,
}

/// Bytes of a kernel file [`kernel_format`] needs.
pub const KERNEL_HEADER_LEN: usize = 0x206;

/// Identifies a kernel from its first [`KERNEL_HEADER_LEN`] bytes (fewer
/// if the file is shorter).
pub fn kernel_format(header: &[u8]) -> KernelFormat {
    if header.starts_with(b"\x7fELF") {
        KernelFormat::Elf
    } else if header.get(0x202..0x206) == Some(b"HdrS") {
        KernelFormat::BzImage
    } else {
        KernelFormat::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_command_line() {
        let cmd = firecracker(
            Path::new("/usr/bin/firecracker"),
            Path::new("/run/vm/firecracker.sock"),
            Path::new("/run/vm/firecracker.log"),
            "web-1",
        );
        assert_eq!(cmd.program, Path::new("/usr/bin/firecracker"));
        assert_eq!(
            cmd.args,
            [
                "--api-sock",
                "/run/vm/firecracker.sock",
                "--log-path",
                "/run/vm/firecracker.log",
                "--level",
                "Info",
                "--show-level",
                "--id",
                "web-1"
            ]
        );
    }

    #[test]
    fn jailer_command_line_separates_firecracker_arguments() {
        let cmd = jailer(
            Path::new("/usr/bin/jailer"),
            Path::new("/usr/bin/firecracker"),
            "web-1",
            JailIdentity { uid: 64000, gid: 64001 },
            Path::new("/run/vm/jail"),
            (Path::new("/run/firecracker.sock"), Path::new("/firecracker.log")),
        );
        assert_eq!(cmd.program, Path::new("/usr/bin/jailer"));
        assert_eq!(
            cmd.args,
            [
                "--id",
                "web-1",
                "--exec-file",
                "/usr/bin/firecracker",
                "--uid",
                "64000",
                "--gid",
                "64001",
                "--chroot-base-dir",
                "/run/vm/jail",
                "--",
                "--api-sock",
                "/run/firecracker.sock",
                "--log-path",
                "/firecracker.log",
                "--level",
                "Info",
                "--show-level"
            ]
        );
        assert_eq!(
            jail_root(Path::new("/run/vm/jail"), Path::new("/usr/bin/firecracker"), "web-1"),
            Path::new("/run/vm/jail/firecracker/web-1/root")
        );
    }

    #[test]
    fn instance_ids_are_what_firecracker_accepts() {
        assert_eq!(instance_id("web-1"), "web-1");
        assert_eq!(instance_id("my_vm.test"), "my-vm-test");
        assert_eq!(instance_id(""), "banger-vm");
        assert_eq!(instance_id(&"x".repeat(100)).len(), 64);
        assert_eq!(instance_id("vé"), "v-");
    }

    #[test]
    fn kernel_formats() {
        assert_eq!(kernel_format(b"\x7fELF\x02\x01\x01"), KernelFormat::Elf);
        let mut bz = vec![0u8; KERNEL_HEADER_LEN];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(kernel_format(&bz), KernelFormat::BzImage);
        assert_eq!(kernel_format(b"MZ"), KernelFormat::Unknown);
        assert_eq!(kernel_format(b""), KernelFormat::Unknown);
    }
}
