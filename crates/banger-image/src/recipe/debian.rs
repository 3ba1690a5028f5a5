//! The Debian recipe: a minbase debootstrap with SSH and systemd, the agent
//! as a service, and no caches or per-machine identity left behind.

use std::fs;
use std::path::Path;

use banger_host::HostCommands;

use crate::error::io_at;
use crate::{host, layout, tree, BuildOptions, BuiltImage, ImageError};

/// Debootstraps `suite` in `scratch` and writes it to `output`.
pub(crate) fn build(
    cmds: &dyn HostCommands,
    suite: &str,
    opts: &BuildOptions,
    scratch: &Path,
    output: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<BuiltImage, ImageError> {
    if !layout::valid_suite(suite) {
        return Err(ImageError::BadSource { path: suite.into(), expected: "a Debian suite name" });
    }
    host::require_tool(cmds, "debootstrap", "debootstrap")?;
    host::require_tool(cmds, "mkfs.ext4", "e2fsprogs")?;
    let root = scratch.join("root");
    fs::create_dir(&root).map_err(io_at(&root))?;
    progress(&format!("debootstrapping Debian {suite}"));
    let bootstrapped = host::debootstrap(cmds, suite, &root, progress);
    // mkfs must not copy a /proc that an interrupted debootstrap left mounted.
    host::unmount_under(cmds, &root)?;
    bootstrapped?;
    progress("installing banger-agent and its service");
    tree::materialize(&root, &layout::debian_finish(&opts.agent))?;
    tree::prune_dir(&root, "etc/ssh", layout::is_ssh_host_key)?;
    for dir in layout::DEBIAN_EMPTIED {
        tree::prune_dir(&root, dir, |name| layout::is_cache_file(dir, name))?;
    }
    let size_bytes = super::make_ext4(cmds, &root, opts, output, progress)?;
    Ok(BuiltImage { size_bytes, init: "/lib/systemd/systemd".to_owned() })
}
