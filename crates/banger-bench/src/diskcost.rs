//! What a new VM costs on disk before its guest writes anything: the
//! allocated bytes of its root disk right after `vm create --no-start`, and
//! how much free space the filesystem lost, on the default state root and on
//! a loop-mounted XFS where the clone is a reflink.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{ensure, Context};
use serde::Serialize;

use crate::stack::{Stack, IMAGE};

/// The XFS file's size.
const XFS_SIZE: u64 = 2 << 30;

/// One VM's disk cost on one filesystem.
#[derive(Debug, Serialize)]
pub struct DiskCost {
    /// Where the state root was.
    pub setting: String,
    /// The filesystem type (`stat -f`).
    pub filesystem: String,
    /// How banger cloned the disk.
    pub strategy: String,
    /// The image's rootfs: apparent size.
    pub image_bytes: u64,
    /// The image's rootfs: allocated bytes.
    pub image_allocated_bytes: u64,
    /// The VM's root disk: allocated bytes (st_blocks * 512).
    pub vm_allocated_bytes: u64,
    /// Free bytes of the filesystem before the create minus after.
    pub free_delta_bytes: i64,
}

/// Creates VM `name` without starting it and measures its disk, then removes it.
pub fn measure(stack: &Stack, setting: &str, name: &str) -> anyhow::Result<DiskCost> {
    let image = stack.image()?;
    let rootfs = PathBuf::from(&image.rootfs_path);
    crate::tools::settle()?;
    let free_before = free_bytes(&stack.state_dir)?;
    stack.run(&["vm", "create", name, "--image", IMAGE, "--no-start"])?;
    crate::tools::settle()?;
    let free_after = free_bytes(&stack.state_dir)?;
    let vm = stack.vm(name)?;
    let disk = stack.state_dir.join("vms").join(name).join("root.ext4");
    let cost = DiskCost {
        setting: setting.to_owned(),
        filesystem: filesystem(&stack.state_dir)?,
        strategy: vm.disk_strategy.to_string(),
        image_bytes: image.size_bytes,
        image_allocated_bytes: allocated(&rootfs)?,
        vm_allocated_bytes: allocated(&disk)?,
        free_delta_bytes: free_before as i64 - free_after as i64,
    };
    stack.run(&["vm", "rm", name])?;
    Ok(cost)
}

/// Whether an XFS state root can be set up here.
pub fn xfs_possible() -> Result<(), &'static str> {
    if !is_root() {
        return Err("not root, so no loop mount");
    }
    if !crate::tools::on_path("mkfs.xfs") {
        return Err("mkfs.xfs is not installed (apt-get install xfsprogs)");
    }
    Ok(())
}

/// A 2 GiB XFS (reflink on) in a file, loop-mounted; unmounted on drop,
/// whatever happened meanwhile.
pub struct LoopXfs {
    mount: PathBuf,
}

impl LoopXfs {
    /// Makes `dir/xfs.img` and mounts it on `dir/xfs`.
    pub fn mount(dir: &Path) -> anyhow::Result<LoopXfs> {
        let image = dir.join("xfs.img");
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(XFS_SIZE))
            .with_context(|| format!("cannot make {}", image.display()))?;
        run("mkfs.xfs", &["-q".as_ref(), "-m".as_ref(), "reflink=1".as_ref(), image.as_os_str()])?;
        let mount = dir.join("xfs");
        std::fs::create_dir(&mount).with_context(|| format!("cannot create {}", mount.display()))?;
        run("mount", &["-o".as_ref(), "loop".as_ref(), image.as_os_str(), mount.as_os_str()])?;
        Ok(LoopXfs { mount })
    }

    pub fn path(&self) -> &Path {
        &self.mount
    }
}

impl Drop for LoopXfs {
    fn drop(&mut self) {
        if run("umount", &[self.mount.as_os_str()]).is_err() {
            eprintln!("umount {} failed; detaching it lazily", self.mount.display());
            let _ = run("umount", &["-l".as_ref(), self.mount.as_os_str()]);
        }
    }
}

fn allocated(path: &Path) -> anyhow::Result<u64> {
    let meta = std::fs::metadata(path).with_context(|| format!("cannot stat {}", path.display()))?;
    Ok(meta.blocks() * 512)
}

fn free_bytes(path: &Path) -> anyhow::Result<u64> {
    let out = Command::new("df").args(["-B1", "--output=avail"]).arg(path).output().context("cannot run df")?;
    ensure!(out.status.success(), "df {} failed", path.display());
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().nth(1).and_then(|l| l.trim().parse().ok()).with_context(|| format!("unexpected df output: {text}"))
}

fn filesystem(path: &Path) -> anyhow::Result<String> {
    let out = Command::new("stat").args(["-f", "-c", "%T"]).arg(path).output().context("cannot run stat")?;
    ensure!(out.status.success(), "stat -f {} failed", path.display());
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn run(program: &str, args: &[&std::ffi::OsStr]) -> anyhow::Result<()> {
    let status = Command::new(program).args(args).status().with_context(|| format!("cannot run {program}"))?;
    ensure!(status.success(), "{program} failed ({status})");
    Ok(())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}
