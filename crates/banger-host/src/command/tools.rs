//! The one tool lookup: `$PATH` first, then the usual system directories,
//! because the daemon may run with a `PATH` that lacks the sbin ones
//! (`mkfs.ext4`, `losetup` and `nft` live there).

use std::env;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Searched after `$PATH`, in this order.
pub const TOOL_DIRS: &[&str] = &["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"];

/// The executable file called `tool` on `$PATH` or in [`TOOL_DIRS`].
pub fn find_tool(tool: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = env::var_os("PATH").map(|p| env::split_paths(&p).collect()).unwrap_or_default();
    dirs.extend(TOOL_DIRS.iter().map(PathBuf::from));
    find_tool_in(tool, &dirs)
}

/// The first executable regular file called `tool` in `dirs`; relative
/// directories are ignored (a tool must not depend on the daemon's cwd).
pub fn find_tool_in(tool: &str, dirs: &[PathBuf]) -> Option<PathBuf> {
    if tool.is_empty() || tool.contains('/') {
        return None;
    }
    let absolute: Vec<&Path> = dirs.iter().map(PathBuf::as_path).filter(|d| d.is_absolute()).collect();
    let search: OsString = env::join_paths(absolute).ok()?;
    which::which_in_global(tool, Some(search)).ok()?.next()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn finds_only_executable_files_in_order() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let dirs = [PathBuf::from("relative"), a.path().to_owned(), b.path().to_owned()];
        fs::write(a.path().join("nft"), "").unwrap();
        fs::create_dir(b.path().join("dir-not-file")).unwrap();
        assert_eq!(find_tool_in("nft", &dirs), None, "not executable");
        fs::write(b.path().join("nft"), "").unwrap();
        fs::set_permissions(b.path().join("nft"), fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(find_tool_in("nft", &dirs), Some(b.path().join("nft")));
        fs::set_permissions(a.path().join("nft"), fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(find_tool_in("nft", &dirs), Some(a.path().join("nft")));
        assert_eq!(find_tool_in("dir-not-file", &dirs), None);
        assert_eq!(find_tool_in("../nft", &dirs), None);
    }

    #[test]
    fn system_directories_are_searched_without_path() {
        // `sh` is in /bin or /usr/bin on every Linux system.
        let sh = find_tool_in("sh", &TOOL_DIRS.iter().map(PathBuf::from).collect::<Vec<_>>()).unwrap();
        assert!(sh.ends_with("sh"));
        assert!(find_tool("sh").is_some());
        assert_eq!(find_tool("banger-no-such-tool"), None);
    }
}
