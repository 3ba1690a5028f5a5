//! The test cache: `<target>/banger-test-cache/`, kept across test runs and
//! shared by every test binary, each entry guarded by a lock file (`flock`)
//! so parallel tests and binaries never see a half-made entry.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

/// The workspace's target directory (`CARGO_TARGET_DIR`, else `target/`).
pub fn target_dir() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let workspace = fs::canonicalize(&workspace).unwrap_or(workspace);
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace.join("target"))
}

/// `<target>/banger-test-cache/<name>`, created if need be.
pub fn dir(name: &str) -> PathBuf {
    let dir = target_dir().join("banger-test-cache").join(name);
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}

/// Holds `<dir>/.lock` exclusively until dropped; waits while another test
/// or test binary holds it. Blocks the thread: call it off the async runtime.
pub fn lock(dir: &Path) -> File {
    let path = dir.join(".lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    // flock locks belong to the open file, so two tests of one process
    // exclude each other as two processes do.
    rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
        .unwrap_or_else(|e| panic!("cannot lock {}: {e}", path.display()));
    file
}
