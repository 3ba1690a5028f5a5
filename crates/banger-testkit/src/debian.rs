//! Debian's real cloud kernel package, for import tests: found with
//! `apt-cache depends`, fetched with `apt-get download`, cached, and
//! skipped loudly only where the machine has no apt.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

const METAPACKAGE: &str = "linux-image-cloud-amd64";

fn skip(why: &str) {
    eprintln!("\n*** SKIP: {why} ***\n");
}

/// The versioned package the metapackage depends on, from `apt-cache depends`.
fn versioned_package() -> Option<String> {
    let out = Command::new("apt-cache").args(["depends", METAPACKAGE]).output().ok()?;
    assert!(out.status.success(), "apt-cache depends {METAPACKAGE} failed");
    let text = String::from_utf8(out.stdout).unwrap();
    let package = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(str::trim)
        .find(|p| p.starts_with("linux-image-") && p.ends_with("-cloud-amd64"))
        .unwrap_or_else(|| panic!("no linux-image-*-cloud-amd64 in:\n{text}"));
    Some(package.to_string())
}

/// The cached (under `cache_root`) or freshly downloaded `.deb`, or `None`
/// without apt. Tests run in parallel; one downloads, the others wait.
pub fn cloud_kernel_deb(cache_root: &Path) -> Option<PathBuf> {
    static DOWNLOAD: Mutex<()> = Mutex::new(());
    let _guard = DOWNLOAD.lock().unwrap_or_else(|e| e.into_inner());
    let Some(package) = versioned_package() else {
        skip("apt-cache is not available; the real Debian kernel import is NOT tested");
        return None;
    };
    let cache = cache_root.join("debian-kernel");
    fs::create_dir_all(&cache).unwrap();
    let find = || {
        fs::read_dir(&cache).unwrap().map(|e| e.unwrap().path()).find(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.starts_with(&format!("{package}_")) && name.ends_with(".deb")
        })
    };
    if let Some(deb) = find() {
        return Some(deb);
    }
    // Download into a scratch directory so a half-written file is never cached.
    let scratch = tempfile::tempdir_in(&cache).unwrap();
    let status = match Command::new("apt-get").arg("download").arg(&package).current_dir(scratch.path()).status() {
        Ok(status) => status,
        Err(_) => {
            skip("apt-get is not available; the real Debian kernel import is NOT tested");
            return None;
        }
    };
    assert!(status.success(), "apt-get download {package} failed");
    for entry in fs::read_dir(scratch.path()).unwrap() {
        let path = entry.unwrap().path();
        fs::rename(&path, cache.join(path.file_name().unwrap())).unwrap();
    }
    Some(find().expect("apt-get download produced no .deb"))
}
