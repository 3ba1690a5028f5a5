//! What goes into a root, as data: the entries of a tiny busybox root, the
//! files banger adds to other roots, the systemd units, the image size
//! policy and the argument lists of the host tools. No I/O here.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::AGENT_PATH;

const MIB: u64 = 1024 * 1024;
/// The smallest image made when no size is given.
pub(crate) const MIN_IMAGE_BYTES: u64 = 64 * MIB;
/// Where the agent lives in a tiny root (and `/sbin/init` points).
pub(crate) const TINY_AGENT_PATH: &str = "/usr/bin/banger-agent";
/// The guest's host name until the daemon sets one.
const HOSTNAME: &str = "banger\n";
const HOSTS: &str = "127.0.0.1\tlocalhost\n127.0.1.1\tbanger\n::1\t\tlocalhost ip6-localhost ip6-loopback\n";
const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n";
const GROUP: &str = "root:x:0:\n";
const PROFILE: &str = "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n\
export HOME=\"${HOME:-/root}\"\nexport PS1='\\h:\\w\\$ '\n";
/// Packages debootstrap adds to minbase; `systemd-sysv` because minbase has no init.
pub(crate) const DEBIAN_PACKAGES: &str = "systemd-sysv,openssh-server,ca-certificates,iproute2,procps";
/// The unit that keeps the agent running in systemd images.
const AGENT_UNIT: &str = "[Unit]
Description=banger guest agent
After=local-fs.target

[Service]
Type=simple
ExecStart=/usr/local/bin/banger-agent
Restart=always
RestartSec=1

[Install]
WantedBy=multi-user.target
";
/// SSH host keys are removed from the image so that clones do not share
/// them; this unit makes a VM's own keys on its first boot.
const SSH_KEYGEN_UNIT: &str = "[Unit]
Description=Generate SSH host keys for this VM
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=multi-user.target
";

/// One thing to put in a root; paths are relative to the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Entry {
    /// A directory with this mode, created only when missing.
    Dir { path: PathBuf, mode: u32 },
    /// A file with these contents, replacing whatever is there.
    File { path: PathBuf, contents: &'static str, mode: u32 },
    /// A copy of a host file, replacing whatever is there.
    Copy { from: PathBuf, path: PathBuf, mode: u32 },
    /// A symbolic link, replacing whatever is there.
    Symlink { path: PathBuf, target: PathBuf },
    /// Paths to delete if present (files or whole trees).
    Remove { path: PathBuf },
}

/// A busybox applet and whether busybox installs it in an `sbin` directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Applet {
    pub name: String,
    pub sbin: bool,
}

/// Parses `busybox --list-full` (lines such as `usr/sbin/chroot`), leaving
/// out `init` and `linuxrc` (the agent is PID 1) and any name that is not a
/// plain file name.
pub(crate) fn parse_applets(list_full: &str) -> Vec<Applet> {
    let mut applets: Vec<Applet> = list_full
        .lines()
        .filter_map(|line| {
            let line = line.trim();
            let (dir, name) = line.rsplit_once('/').unwrap_or(("bin", line));
            let plain = !name.is_empty() && name != "." && name != ".." && !name.contains(['\0', ' ']);
            let wanted = !matches!(name, "init" | "linuxrc" | "busybox");
            (plain && wanted).then(|| Applet { name: name.to_owned(), sbin: dir.ends_with("sbin") })
        })
        .collect();
    applets.sort_by(|a, b| a.name.cmp(&b.name));
    applets.dedup_by(|a, b| a.name == b.name);
    applets
}

fn dir(path: &str, mode: u32) -> Entry {
    Entry::Dir { path: path.into(), mode }
}

fn file(path: &str, contents: &'static str, mode: u32) -> Entry {
    Entry::File { path: path.into(), contents, mode }
}

fn link(path: impl Into<PathBuf>, target: impl Into<PathBuf>) -> Entry {
    Entry::Symlink { path: path.into(), target: target.into() }
}

/// The whole tiny root: busybox with its applets in `/bin` (and the `sbin`
/// ones in `/sbin` too), the agent as `/sbin/init`, and a minimal `/etc`.
pub(crate) fn tiny(applets: &[Applet], busybox: &Path, agent: &Path) -> Vec<Entry> {
    let mut entries = vec![
        dir("bin", 0o755),
        dir("sbin", 0o755),
        dir("usr", 0o755),
        dir("usr/bin", 0o755),
        dir("usr/sbin", 0o755),
        dir("etc", 0o755),
        dir("proc", 0o555),
        dir("sys", 0o555),
        dir("dev", 0o755),
        dir("run", 0o755),
        dir("tmp", 0o1777),
        dir("root", 0o700),
        dir("work", 0o755),
        dir("var", 0o755),
        dir("var/tmp", 0o1777),
        Entry::Copy { from: busybox.to_owned(), path: "bin/busybox".into(), mode: 0o755 },
        Entry::Copy { from: agent.to_owned(), path: TINY_AGENT_PATH.trim_start_matches('/').into(), mode: 0o755 },
        link("sbin/init", TINY_AGENT_PATH),
        file("etc/passwd", PASSWD, 0o644),
        file("etc/group", GROUP, 0o644),
        file("etc/hostname", HOSTNAME, 0o644),
        file("etc/hosts", HOSTS, 0o644),
        file("etc/profile", PROFILE, 0o644),
    ];
    for applet in applets {
        entries.push(link(format!("bin/{}", applet.name), "busybox"));
        if applet.sbin {
            entries.push(link(format!("sbin/{}", applet.name), "../bin/busybox"));
        }
    }
    entries
}

/// What banger adds to a root it did not make: the agent, when missing.
pub(crate) fn agent_only(agent: &Path) -> Vec<Entry> {
    vec![
        dir("usr", 0o755),
        dir("usr/local", 0o755),
        dir("usr/local/bin", 0o755),
        Entry::Copy { from: agent.to_owned(), path: AGENT_PATH.trim_start_matches('/').into(), mode: 0o755 },
    ]
}

/// What banger does to a fresh debootstrap: agent service, first-boot SSH
/// host keys, a neutral host name, and no caches or per-machine identity.
pub(crate) fn debian_finish(agent: &Path) -> Vec<Entry> {
    let mut entries = agent_only(agent);
    entries.extend([
        file("etc/systemd/system/banger-agent.service", AGENT_UNIT, 0o644),
        file("etc/systemd/system/banger-ssh-keygen.service", SSH_KEYGEN_UNIT, 0o644),
        dir("etc/systemd/system/multi-user.target.wants", 0o755),
        link(
            "etc/systemd/system/multi-user.target.wants/banger-agent.service",
            "/etc/systemd/system/banger-agent.service",
        ),
        link(
            "etc/systemd/system/multi-user.target.wants/banger-ssh-keygen.service",
            "/etc/systemd/system/banger-ssh-keygen.service",
        ),
        file("etc/hostname", HOSTNAME, 0o644),
        file("etc/hosts", HOSTS, 0o644),
        // Empty means "generate on first boot", so clones get their own.
        file("etc/machine-id", "", 0o444),
        Entry::Remove { path: "var/lib/dbus/machine-id".into() },
    ]);
    entries
}

/// Directories whose contents are emptied after debootstrap (kept themselves).
pub(crate) const DEBIAN_EMPTIED: &[&str] = &["var/cache/apt/archives", "var/lib/apt/lists"];

/// Whether a file under an emptied directory is one to delete: apt's
/// downloaded packages and lists, not its `partial/` and `lock` scaffolding.
pub(crate) fn is_cache_file(dir: &str, name: &str) -> bool {
    match dir {
        "var/cache/apt/archives" => name.ends_with(".deb"),
        "var/lib/apt/lists" => name != "partial" && name != "lock",
        _ => false,
    }
}

/// Whether a file in `etc/ssh` is a host key that clones must not share.
pub(crate) fn is_ssh_host_key(name: &str) -> bool {
    name.starts_with("ssh_host_") && (name.ends_with("_key") || name.ends_with("_key.pub"))
}

/// The image size for content of `content_bytes`: a quarter more plus
/// 32 MiB for ext4's own metadata and first-boot writes, at least
/// [`MIN_IMAGE_BYTES`], rounded up to a MiB.
pub(crate) fn default_size(content_bytes: u64) -> u64 {
    let wanted = content_bytes.saturating_add(content_bytes / 4).saturating_add(32 * MIB);
    wanted.max(MIN_IMAGE_BYTES).div_ceil(MIB).saturating_mul(MIB)
}

/// `mkfs.ext4` arguments: 4 KiB blocks and 256-byte inodes whatever the
/// size (mke2fs would pick 1 KiB blocks and 128-byte inodes below 512 MiB),
/// filled from `root` when given; the size is the file's length.
pub(crate) fn mkfs_args(label: &str, root: Option<&Path>, file: &Path) -> Vec<OsString> {
    let mut args: Vec<OsString> = ["-q", "-F", "-L", label, "-b", "4096", "-I", "256"].map(OsString::from).into();
    if let Some(root) = root {
        args.push("-d".into());
        args.push(root.into());
    }
    args.push(file.into());
    args
}

/// `debootstrap` arguments; the mirror is debootstrap's own default.
pub(crate) fn debootstrap_args(suite: &str, root: &Path) -> Vec<OsString> {
    vec!["--variant=minbase".into(), format!("--include={DEBIAN_PACKAGES}").into(), suite.into(), root.into()]
}

/// Whether a Debian suite name is safe to hand to debootstrap.
pub(crate) fn valid_suite(suite: &str) -> bool {
    !suite.is_empty()
        && !suite.starts_with('-')
        && suite.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIST: &str = "usr/bin/[\nbin/ls\nsbin/poweroff\nusr/sbin/chroot\nsbin/init\nlinuxrc\nbin/ls\n";

    #[test]
    fn applets_keep_sbin_and_drop_init() {
        let applets = parse_applets(LIST);
        let names: Vec<_> = applets.iter().map(|a| (a.name.as_str(), a.sbin)).collect();
        assert_eq!(names, [("[", false), ("chroot", true), ("ls", false), ("poweroff", true)]);
    }

    #[test]
    fn tiny_root_links_applets_and_boots_the_agent() {
        let entries = tiny(&parse_applets(LIST), Path::new("/host/busybox"), Path::new("/host/agent"));
        assert!(entries.contains(&link("bin/ls", "busybox")));
        assert!(entries.contains(&link("bin/poweroff", "busybox")));
        assert!(entries.contains(&link("sbin/poweroff", "../bin/busybox")));
        assert!(!entries.contains(&link("sbin/ls", "../bin/busybox")));
        assert!(entries.contains(&link("sbin/init", "/usr/bin/banger-agent")));
        assert!(entries.contains(&dir("tmp", 0o1777)));
        assert!(entries.contains(&file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n", 0o644)));
        let inits = entries.iter().filter(|e| matches!(e, Entry::Symlink { path, .. } if path.ends_with("init")));
        assert_eq!(inits.count(), 1, "busybox's init applet must not shadow the agent");
    }

    #[test]
    fn debian_enables_the_agent_unit() {
        let entries = debian_finish(Path::new("/a"));
        let unit = entries.iter().find_map(|e| match e {
            Entry::File { path, contents, .. } if path.ends_with("banger-agent.service") => Some(*contents),
            _ => None,
        });
        let unit = unit.expect("agent unit");
        for line in
            ["Type=simple", "Restart=always", "WantedBy=multi-user.target", "ExecStart=/usr/local/bin/banger-agent"]
        {
            assert!(unit.lines().any(|l| l == line), "missing {line}");
        }
        assert!(entries.contains(&link(
            "etc/systemd/system/multi-user.target.wants/banger-agent.service",
            "/etc/systemd/system/banger-agent.service"
        )));
    }

    #[test]
    fn cache_and_key_filters() {
        assert!(is_cache_file("var/cache/apt/archives", "bash_5.2_amd64.deb"));
        assert!(!is_cache_file("var/cache/apt/archives", "partial"));
        assert!(is_cache_file("var/lib/apt/lists", "deb.debian.org_debian_dists_bookworm_InRelease"));
        assert!(!is_cache_file("var/lib/apt/lists", "lock"));
        assert!(is_ssh_host_key("ssh_host_ed25519_key"));
        assert!(is_ssh_host_key("ssh_host_rsa_key.pub"));
        assert!(!is_ssh_host_key("sshd_config"));
    }

    #[test]
    fn size_policy() {
        assert_eq!(default_size(0), MIN_IMAGE_BYTES);
        assert_eq!(default_size(10 * MIB), MIN_IMAGE_BYTES);
        assert_eq!(default_size(400 * MIB), 532 * MIB);
        assert_eq!(default_size(400 * MIB + 1) % MIB, 0);
    }

    #[test]
    fn tool_arguments() {
        let args = mkfs_args("rootfs", Some(Path::new("/r")), Path::new("/d/rootfs.ext4"));
        assert_eq!(args.join(" ".as_ref()), "-q -F -L rootfs -b 4096 -I 256 -d /r /d/rootfs.ext4");
        let args = debootstrap_args("bookworm", Path::new("/t/root"));
        assert_eq!(args[0], "--variant=minbase");
        assert!(args[1].to_str().unwrap().contains("openssh-server,ca-certificates,iproute2,procps"));
        assert_eq!(&args[2..], ["bookworm", "/t/root"]);
        assert!(!args.iter().any(|a| a.to_str().unwrap().contains("://")), "no mirror is named");
    }

    #[test]
    fn suites() {
        assert!(valid_suite("bookworm"));
        assert!(valid_suite("trixie-backports"));
        assert!(!valid_suite("--foreign"));
        assert!(!valid_suite("a b"));
        assert!(!valid_suite(""));
    }
}
