//! `vm cp`'s host side: which argument names the guest, where a copy lands
//! (as `docker cp` decides it), and the tar streams the CLI itself writes
//! from and reads into the host's files, so the daemon never touches them.

pub mod bridge;
pub mod pack;
pub mod unpack;

use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context as _};

/// What a copy moved, for the caller's message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Counted {
    /// Entries (files, directories, links).
    pub entries: u64,
    /// Bytes of file data.
    pub bytes: u64,
}

/// One side of a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A path on this machine.
    Host(PathBuf),
    /// `VM:/path`: an absolute path in a VM.
    Guest {
        /// The VM.
        vm: String,
        /// The absolute guest path.
        path: String,
    },
}

/// Reads `VM:/path` as a guest location and anything else as a host path.
/// A host path with a colon in it reads as one when the part before the
/// colon cannot be a VM name (it has a `/`, say): write `./a:b`.
pub fn parse_location(arg: &str) -> anyhow::Result<Location> {
    let Some((vm, path)) = arg.split_once(':') else {
        return Ok(Location::Host(arg.into()));
    };
    if !is_vm_name(vm) {
        return Ok(Location::Host(arg.into()));
    }
    if !path.starts_with('/') {
        bail!("the guest path in {arg:?} must be absolute (VM:/path)");
    }
    if path.contains('\0') {
        bail!("the guest path in {arg:?} contains a NUL byte");
    }
    Ok(Location::Guest { vm: vm.to_owned(), path: path.to_owned() })
}

/// A DNS label, as VM names are.
fn is_vm_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

/// What `vm cp SRC DST` does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Copy {
    /// Host to guest: `src` (and what is below it) is sent as one entry
    /// named `name`; the guest agent puts it at `dest` (inside it when it
    /// is a directory).
    In {
        /// The host path.
        src: PathBuf,
        /// The entry's name: `src`'s last component.
        name: String,
        /// The VM.
        vm: String,
        /// The guest path.
        dest: String,
    },
    /// Guest to host: the agent sends `path` as one entry, which lands at `target`.
    Out {
        /// The VM.
        vm: String,
        /// The guest path.
        path: String,
        /// Where it lands on the host.
        target: HostTarget,
    },
}

/// Reads the two arguments: exactly one must name the guest.
pub fn plan(src: &str, dst: &str) -> anyhow::Result<Copy> {
    match (parse_location(src)?, parse_location(dst)?) {
        (Location::Host(src), Location::Guest { vm, path: dest }) => {
            std::fs::symlink_metadata(&src).with_context(|| format!("cannot copy {}", src.display()))?;
            let name = entry_name(&src)?;
            Ok(Copy::In { src, name, vm, dest })
        }
        (Location::Guest { vm, path }, Location::Host(dst)) => {
            let name = guest_name(&path)?;
            let target = host_target(&dst, &name, DestFacts::of(&dst))?;
            Ok(Copy::Out { vm, path, target })
        }
        (Location::Guest { .. }, Location::Guest { .. }) => {
            bail!("both paths name a guest; copy between VMs through the host")
        }
        (Location::Host(_), Location::Host(_)) => {
            bail!("neither path names a guest: write the guest side as VM:/path")
        }
    }
}

/// The name a host path is sent as: its last component once `.` and `..`
/// are resolved (`./` sends the current directory under its own name).
fn entry_name(path: &Path) -> anyhow::Result<String> {
    let resolved = std::path::absolute(path).with_context(|| format!("cannot resolve {}", path.display()))?;
    let mut parts: Vec<&std::ffi::OsStr> = Vec::new();
    for component in resolved.components() {
        match component {
            Component::Normal(part) => parts.push(part),
            Component::ParentDir => {
                parts.pop();
            }
            _ => {}
        }
    }
    let Some(last) = parts.last() else { bail!("cannot copy / itself: copy what is in it") };
    last.to_str().map(str::to_owned).with_context(|| format!("{} is not UTF-8", path.display()))
}

/// The name the agent gives a guest path's entry: its last component.
fn guest_name(path: &str) -> anyhow::Result<String> {
    match path.split('/').rev().find(|p| !p.is_empty() && *p != ".") {
        Some("..") => bail!("the guest path {path:?} must not end in .."),
        Some(name) => Ok(name.to_owned()),
        None => bail!("cannot copy the guest's / itself: copy what is in it"),
    }
}

/// Where a copy out of the guest lands: `parent/name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostTarget {
    /// An existing directory.
    pub parent: PathBuf,
    /// The entry's name there.
    pub name: String,
}

impl HostTarget {
    /// The landing path.
    pub fn path(&self) -> PathBuf {
        self.parent.join(&self.name)
    }
}

/// What a destination is now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DestFacts {
    /// A directory (or a link to one): the copy goes inside it.
    Dir,
    /// Something else: the copy replaces it (if it is not a directory).
    Other,
    /// Nothing; `parent_is_dir` says whether its parent is a directory.
    Missing {
        /// Whether the parent exists as a directory.
        parent_is_dir: bool,
    },
}

impl DestFacts {
    /// Looks at `dst` (following a link, as `cp` does).
    pub fn of(dst: &Path) -> DestFacts {
        match std::fs::metadata(dst) {
            Ok(meta) if meta.is_dir() => DestFacts::Dir,
            Ok(_) => DestFacts::Other,
            Err(_) if std::fs::symlink_metadata(dst).is_ok() => DestFacts::Other,
            Err(_) => DestFacts::Missing { parent_is_dir: parent_of(dst).is_dir() },
        }
    }
}

fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// The rule of `docker cp`: into an existing directory the entry keeps its
/// name; otherwise `dst` is its new name, and its parent must exist. A
/// `dst` ending in `/` must be an existing directory.
pub fn host_target(dst: &Path, name: &str, facts: DestFacts) -> anyhow::Result<HostTarget> {
    let wants_dir = dst.as_os_str().as_encoded_bytes().ends_with(b"/");
    match facts {
        DestFacts::Dir => Ok(HostTarget { parent: dst.to_owned(), name: name.to_owned() }),
        DestFacts::Other if wants_dir => bail!("{} is not a directory", dst.display()),
        DestFacts::Missing { .. } if wants_dir => bail!("the directory {} does not exist", dst.display()),
        DestFacts::Missing { parent_is_dir: false } => {
            bail!("cannot copy to {}: its parent directory {} does not exist", dst.display(), parent_of(dst).display())
        }
        DestFacts::Other | DestFacts::Missing { parent_is_dir: true } => {
            let Some(file_name) = dst.file_name().and_then(|n| n.to_str()) else {
                bail!("cannot copy to {}: name the new file or an existing directory", dst.display())
            };
            Ok(HostTarget { parent: parent_of(dst), name: file_name.to_owned() })
        }
    }
}

/// Whether this process runs as root (and so may give files any owner).
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vm_name_and_a_colon_make_a_guest_path() {
        let guest = |vm: &str, path: &str| Location::Guest { vm: vm.into(), path: path.into() };
        assert_eq!(parse_location("dev:/etc/hosts").unwrap(), guest("dev", "/etc/hosts"));
        assert_eq!(parse_location("my-vm2:/").unwrap(), guest("my-vm2", "/"));
        assert_eq!(parse_location("./dev:/x").unwrap(), Location::Host("./dev:/x".into()));
        assert_eq!(parse_location("/tmp/a:b").unwrap(), Location::Host("/tmp/a:b".into()));
        assert_eq!(parse_location("Dev:/x").unwrap(), Location::Host("Dev:/x".into()));
        assert_eq!(parse_location("plain").unwrap(), Location::Host("plain".into()));
        let relative = parse_location("dev:etc/hosts").unwrap_err().to_string();
        assert!(relative.contains("must be absolute"), "{relative}");
        assert!(parse_location("dev:").is_err());
    }

    #[test]
    fn exactly_one_side_is_the_guest() {
        assert!(plan("a:/x", "b:/y").unwrap_err().to_string().contains("both paths name a guest"));
        assert!(plan("./x", "./y").unwrap_err().to_string().contains("neither path names a guest"));
        let missing = plan("/no/such/file", "dev:/tmp").unwrap_err();
        assert!(format!("{missing:#}").contains("cannot copy /no/such/file"), "{missing:#}");
    }

    #[test]
    fn entries_are_named_after_the_last_component() {
        assert_eq!(entry_name(Path::new("/a/b/c")).unwrap(), "c");
        assert_eq!(entry_name(Path::new("/a/b/c/")).unwrap(), "c");
        assert_eq!(entry_name(Path::new("/a/b/..")).unwrap(), "a");
        assert!(entry_name(Path::new("/")).is_err());
        assert_eq!(guest_name("/var/log/").unwrap(), "log");
        assert_eq!(guest_name("/var/./").unwrap(), "var");
        assert!(guest_name("/").is_err());
        assert!(guest_name("/a/..").is_err());
    }

    #[test]
    fn targets_follow_docker_cp() {
        let target = |dst: &str, facts| host_target(Path::new(dst), "log", facts);
        let at = |parent: &str, name: &str| HostTarget { parent: parent.into(), name: name.into() };
        // Into an existing directory, with or without a slash.
        assert_eq!(target("/tmp/out", DestFacts::Dir).unwrap(), at("/tmp/out", "log"));
        assert_eq!(target("/tmp/out/", DestFacts::Dir).unwrap(), at("/tmp/out/", "log"));
        // A new name in an existing directory; a file is replaced.
        assert_eq!(target("/tmp/new", DestFacts::Missing { parent_is_dir: true }).unwrap(), at("/tmp", "new"));
        assert_eq!(target("new", DestFacts::Missing { parent_is_dir: true }).unwrap(), at(".", "new"));
        assert_eq!(target("/tmp/file", DestFacts::Other).unwrap(), at("/tmp", "file"));
        // Refused: no parent, or a slash on what is not a directory.
        let no_parent = target("/no/dir/new", DestFacts::Missing { parent_is_dir: false }).unwrap_err();
        assert!(no_parent.to_string().contains("parent directory /no/dir does not exist"), "{no_parent}");
        assert!(target("/tmp/new/", DestFacts::Missing { parent_is_dir: true }).is_err());
        assert!(target("/tmp/file/", DestFacts::Other).is_err());
    }
}
