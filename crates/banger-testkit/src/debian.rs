//! Debian's real cloud kernel package, for import tests: found with
//! `apt-cache depends`, fetched with `apt-get download` from the host's own
//! apt sources, and cached under the target directory. Without apt the
//! tests that need it skip, or fail under CI ([`crate::require`]).

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

const METAPACKAGE: &str = "linux-image-cloud-amd64";

/// The versioned package the metapackage depends on, from `apt-cache depends`;
/// `None` when apt-cache cannot run here.
fn versioned_package() -> Option<String> {
    let out = Command::new("apt-cache").args(["depends", METAPACKAGE]).output().ok()?;
    assert!(out.status.success(), "apt-cache depends {METAPACKAGE} failed");
    let text = String::from_utf8(out.stdout).unwrap();
    let package = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(str::trim)
        .find(|p| p.starts_with("linux-image-") && p.ends_with("-cloud-amd64"))
        .unwrap_or_else(|| panic!("no linux-image-*-cloud-amd64 in:\n{text} (run apt-get update)"));
    Some(package.to_string())
}

/// The cached or freshly downloaded `.deb`; `None` (a SKIP, or a failure
/// under CI) without apt. Tests and test binaries run in parallel: one
/// downloads, the others wait on the cache's lock.
pub fn cloud_kernel_deb() -> Option<PathBuf> {
    static FOUND: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut found = FOUND.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(deb) = found.as_ref() {
        return Some(deb.clone());
    }
    let package = versioned_package();
    if !crate::require("apt (apt-cache and apt-get), to fetch Debian's cloud kernel package", package.is_some()) {
        return None;
    }
    let package = package.expect("checked above");
    let cache = crate::cache::dir("debian-kernel");
    let _lock = crate::cache::lock(&cache);
    let find = || {
        fs::read_dir(&cache).unwrap().map(|e| e.unwrap().path()).find(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.starts_with(&format!("{package}_")) && name.ends_with(".deb")
        })
    };
    if find().is_none() {
        // Download into a scratch directory so a half-written file is never cached.
        let scratch = tempfile::tempdir_in(&cache).unwrap();
        let status = Command::new("apt-get")
            .arg("download")
            .arg(&package)
            .current_dir(scratch.path())
            .status()
            .expect("run apt-get (apt-cache ran)");
        assert!(status.success(), "apt-get download {package} failed");
        for entry in fs::read_dir(scratch.path()).unwrap() {
            let path = entry.unwrap().path();
            fs::rename(&path, cache.join(path.file_name().unwrap())).unwrap();
        }
    }
    let deb = find().expect("apt-get download produced no .deb");
    *found = Some(deb.clone());
    Some(deb)
}
