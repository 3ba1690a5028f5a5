//! What real-guest tests need: the static guest agent, built once per
//! test run with the same command `scripts/build-agent` uses.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// The target the agent is built for (static, via `+crt-static`).
pub const AGENT_TARGET: &str = "x86_64-unknown-linux-gnu";

/// Builds (or finds up to date) the static `banger-agent` and returns its path.
pub fn agent_binary() -> PathBuf {
    static BUILD: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut built = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(path) = built.as_ref() {
        return path.clone();
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let target_dir = crate::cache::target_dir();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "-p", "banger-agent", "--target", AGENT_TARGET])
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env("CARGO_TARGET_DIR", &target_dir)
        .current_dir(&workspace)
        .status()
        .expect("run cargo to build the guest agent");
    assert!(status.success(), "building the static guest agent failed");
    let path = target_dir.join(AGENT_TARGET).join("release/banger-agent");
    assert!(path.is_file(), "no agent at {}", path.display());
    let linkage = banger_image::file_linkage(&path).expect("read the agent");
    assert_eq!(linkage, banger_image::Linkage::Static, "{} is not a static ELF", path.display());
    *built = Some(path.clone());
    path
}
