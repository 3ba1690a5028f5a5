//! Small host helpers the benchmarks share.

use std::process::Command;

use anyhow::{ensure, Context};

/// Flushes the previous run's dirty pages so no side pays for another's
/// writeback.
pub fn settle() -> anyhow::Result<()> {
    let status = Command::new("sync").status().context("cannot run sync")?;
    ensure!(status.success(), "sync failed ({status})");
    Ok(())
}

/// Whether `tool` is an executable name found on `PATH`.
pub fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
}
