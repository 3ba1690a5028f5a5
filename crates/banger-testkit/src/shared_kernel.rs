//! Debian's cloud kernel, imported once per test run and shared: the first
//! test that needs it imports the `.deb` through a real daemon (so the
//! directory and its `manifest.json` are exactly what `kernel import`
//! makes) into `<target>/banger-test-cache/kernels/<key>/`; every test
//! daemon then gets a hard-linked copy under its own state root, which the
//! daemon's kernel store adopts at start. The key covers the package's
//! sha256 and the importer's source, so a changed importer re-imports.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use banger_api::{KernelImportRequest, OperationState};
use sha2::Digest;

use crate::TestDaemon;

/// What every test daemon calls the shared kernel.
pub const NAME: &str = "debian";

/// Sources whose change changes what an import produces or how it is recorded.
const IMPORTER_SOURCES: &[&str] =
    &["crates/banger-kernel/src", "crates/bangerd/src/kernel", "crates/bangerd/src/db.rs"];

/// The imported kernel in the cache: `vmlinux`, `initrd.img`, `modules/`,
/// `manifest.json`. Read-only by convention: tests get copies.
#[derive(Debug, Clone)]
pub struct SharedKernel {
    dir: PathBuf,
    release: String,
}

impl SharedKernel {
    /// The cache directory holding the kernel.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The ELF kernel.
    pub fn vmlinux(&self) -> PathBuf {
        self.dir.join("vmlinux")
    }

    /// banger's initramfs for it.
    pub fn initrd(&self) -> PathBuf {
        self.dir.join("initrd.img")
    }

    /// The kernel release (`uname -r` in a guest).
    pub fn release(&self) -> &str {
        &self.release
    }

    /// Puts the kernel into `<state_dir>/kernels/debian` (hard links where
    /// the state root shares the cache's filesystem, else copies) for a
    /// daemon that has not started yet; the daemon adopts it at start.
    pub fn install(&self, state_dir: &Path) {
        let dest = state_dir.join("kernels").join(NAME);
        assert!(!dest.exists(), "{} exists already", dest.display());
        fs::create_dir_all(dest.parent().unwrap()).unwrap();
        link_tree(&self.dir, &dest);
    }
}

/// The shared kernel, imported now if this run has not done it yet; `None`
/// (a SKIP, or a failure under CI) without apt.
pub async fn debian_kernel() -> Option<SharedKernel> {
    let deb = tokio::task::spawn_blocking(crate::debian::cloud_kernel_deb).await.unwrap()?;
    static KEY: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);
    let key = {
        let deb = deb.clone();
        tokio::task::spawn_blocking(move || {
            let mut key = KEY.lock().unwrap_or_else(|e| e.into_inner());
            key.get_or_insert_with(|| cache_key(&deb)).clone()
        })
        .await
        .unwrap()
    };
    let cache = crate::cache::dir("kernels");
    let lock = {
        let cache = cache.clone();
        tokio::task::spawn_blocking(move || crate::cache::lock(&cache)).await.unwrap()
    };
    let dir = cache.join(&key);
    if !dir.join("manifest.json").is_file() {
        import_into(&deb, &cache, &dir).await;
    }
    drop(lock);
    let manifest: serde_json::Value = serde_json::from_slice(&fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    let release = manifest["kernel_version"].as_str().expect("the manifest names the kernel release").to_owned();
    Some(SharedKernel { dir, release })
}

/// Imports `deb` with a throwaway daemon whose state root is beside the
/// cache (one filesystem, so the finished kernel moves in with a rename).
async fn import_into(deb: &Path, cache: &Path, dest: &Path) {
    let scratch = tempfile::tempdir_in(cache).unwrap();
    let state = scratch.path().join("state");
    let mut daemon = TestDaemon::start_with(|c| c.state_dir = state.clone()).await;
    let request = KernelImportRequest {
        name: NAME.into(),
        path: deb.display().to_string(),
        kind: None,
        modules_dir: None,
        force: false,
    };
    let op = daemon.client.import_kernel(&request).await.expect("the import starts");
    let done = tokio::time::timeout(Duration::from_secs(300), daemon.client.wait(&op.id, |_| {}))
        .await
        .expect("the shared kernel's import finishes within 300 s")
        .expect("the import can be followed");
    assert_eq!(done.state, OperationState::Succeeded, "importing {} failed: {:?}", deb.display(), done.error);
    daemon.stop().await;
    let _ = fs::remove_dir_all(dest);
    fs::rename(state.join("kernels").join(NAME), dest).unwrap();
}

/// Hex sha256 over the package and every importer source file, in path order.
fn cache_key(deb: &Path) -> String {
    let mut hasher = sha2::Sha256::new();
    hasher.update(fs::read(deb).unwrap());
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut files = Vec::new();
    for source in IMPORTER_SOURCES {
        collect_files(&workspace.join(source), &mut files);
    }
    files.sort();
    for file in files {
        hasher.update(file.strip_prefix(&workspace).unwrap().to_string_lossy().as_bytes());
        hasher.update(fs::read(&file).unwrap());
    }
    let digest = hasher.finalize();
    format!("{}-{}", env!("CARGO_PKG_VERSION"), digest.iter().take(16).map(|b| format!("{b:02x}")).collect::<String>())
}

fn collect_files(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_dir() {
        for entry in fs::read_dir(path).unwrap() {
            collect_files(&entry.unwrap().path(), out);
        }
    } else if path.is_file() {
        out.push(path.to_owned());
    }
}

/// Recreates the tree at `from` as `to`: directories made, files hard-linked
/// (copied across filesystems), symlinks recreated.
fn link_tree(from: &Path, to: &Path) {
    fs::create_dir(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let (source, dest) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            link_tree(&source, &dest);
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&source).unwrap(), &dest).unwrap();
        } else if fs::hard_link(&source, &dest).is_err() {
            fs::copy(&source, &dest).unwrap_or_else(|e| panic!("cannot copy {}: {e}", source.display()));
        }
    }
}
