//! dm-snapshot disks: a read-only loop device over the shared base image,
//! a loop device over the VM's copy-on-write file, and a device-mapper
//! `snapshot` target joining them. The command sequences are data (see
//! [`dm_snapshot_plan`] and [`dm_snapshot_teardown_plan`]), run by a small
//! executor that rolls back completed steps when one fails.

use std::path::{Path, PathBuf};

use banger_host::HostCommands;

use crate::command::PlannedCommand;
use crate::StorageError;

/// Placeholder for the base image's loop device, bound by the first step.
pub const ORIGIN_LOOP: &str = "{origin_loop}";
/// Placeholder for the copy-on-write file's loop device, bound by the second step.
pub const COW_LOOP: &str = "{cow_loop}";
/// Snapshot chunk size, in 512-byte sectors (4 KiB).
const CHUNK_SECTORS: u32 = 8;

/// A dm-snapshot disk that exists on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmSnapshotDevice {
    /// The device-mapper name.
    pub name: String,
    /// The block device the VM opens (`/dev/mapper/<name>`).
    pub device: PathBuf,
    /// The read-only loop device over the base image.
    pub origin_loop: PathBuf,
    /// The loop device over the copy-on-write file.
    pub cow_loop: PathBuf,
}

/// The commands that make the snapshot device `name` of `size_sectors`
/// sectors over `origin` (the base image, attached read-only) and
/// `cow_file`. Loop devices are bound at run time to [`ORIGIN_LOOP`] and
/// [`COW_LOOP`]; each step carries its undo.
pub fn dm_snapshot_plan(name: &str, origin: &Path, cow_file: &Path, size_sectors: u64) -> Vec<PlannedCommand> {
    let attach = |read_only: bool, file: &Path, binds: &'static str| {
        let mut args = vec!["--find", "--show"];
        if read_only {
            args.push("--read-only");
        }
        let mut cmd = PlannedCommand::new("losetup", args);
        cmd.args.push(file.display().to_string());
        cmd.binds = Some(binds);
        cmd.undo = Some(Box::new(detach(binds)));
        cmd
    };
    let table = format!("0 {size_sectors} snapshot {ORIGIN_LOOP} {COW_LOOP} P {CHUNK_SECTORS}");
    let mut create = PlannedCommand::new("dmsetup", ["create", name, "--table", &table]);
    create.undo = Some(Box::new(remove(name)));
    vec![attach(true, origin, ORIGIN_LOOP), attach(false, cow_file, COW_LOOP), create]
}

/// The commands that take the snapshot device apart, in order.
pub fn dm_snapshot_teardown_plan(name: &str, origin_loop: &Path, cow_loop: &Path) -> Vec<PlannedCommand> {
    vec![remove(name), detach(&cow_loop.display().to_string()), detach(&origin_loop.display().to_string())]
}

fn remove(name: &str) -> PlannedCommand {
    PlannedCommand::new("dmsetup", ["remove", name])
}

fn detach(device: &str) -> PlannedCommand {
    PlannedCommand::new("losetup", ["-d", device])
}

/// A device-mapper name for the disk at `cow_file`: `banger-` with the
/// directory and file names, limited to characters dmsetup accepts.
pub fn dm_name(cow_file: &Path) -> String {
    let parent = cow_file.parent().and_then(Path::file_name).map(|n| n.to_string_lossy()).unwrap_or_default();
    let stem = cow_file.file_stem().map(|n| n.to_string_lossy()).unwrap_or_default();
    let clean = |s: &str| -> String {
        s.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' }).collect()
    };
    let mut name = format!("banger-{}-{}", clean(&parent), clean(&stem));
    name.truncate(120);
    name
}

/// Runs a setup plan; when a step fails, undoes the completed ones in
/// reverse and returns the first error. Returns the bound placeholders.
pub(crate) fn run_plan(
    plan: &[PlannedCommand],
    cmds: &dyn HostCommands,
) -> Result<Vec<(&'static str, String)>, StorageError> {
    let mut bindings: Vec<(&'static str, String)> = Vec::new();
    let mut done: Vec<PlannedCommand> = Vec::new();
    for step in plan {
        let cmd = step.substitute(&bindings);
        match cmd.run(cmds) {
            Ok(stdout) => {
                if let Some(key) = step.binds {
                    bindings.push((key, stdout));
                }
                if let Some(undo) = &step.undo {
                    done.push(undo.substitute(&bindings));
                }
            }
            Err(e) => {
                for undo in done.iter().rev() {
                    // The first error is the one worth reporting; a failing
                    // undo leaves a loop device that `losetup -D` clears.
                    let _ = undo.run(cmds);
                }
                return Err(e);
            }
        }
    }
    Ok(bindings)
}

/// Runs every step of a teardown plan, returning the first error.
pub(crate) fn run_all(plan: &[PlannedCommand], cmds: &dyn HostCommands) -> Result<(), StorageError> {
    let mut first = None;
    for cmd in plan {
        if let Err(e) = cmd.run(cmds) {
            first.get_or_insert(e);
        }
    }
    first.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use banger_host::{FakeReply, RecordingCommands};

    /// Answers `losetup --find --show` with successive loop devices from `first`.
    fn fake(first: u32) -> RecordingCommands {
        (first..first + 2).fold(RecordingCommands::new(), |fake, n| {
            fake.reply_once("losetup --find --show", FakeReply::ok(format!("/dev/loop{n}\n")))
        })
    }

    fn plan() -> Vec<PlannedCommand> {
        dm_snapshot_plan("banger-vm1-root", Path::new("/img/rootfs.ext4"), Path::new("/vms/vm1/root.cow"), 131072)
    }

    #[test]
    fn setup_plan_as_data() {
        let lines: Vec<String> = plan().iter().map(PlannedCommand::render).collect();
        assert_eq!(
            lines,
            [
                "losetup --find --show --read-only /img/rootfs.ext4",
                "losetup --find --show /vms/vm1/root.cow",
                "dmsetup create banger-vm1-root --table '0 131072 snapshot {origin_loop} {cow_loop} P 8'",
            ]
        );
        assert_eq!(plan()[0].binds, Some(ORIGIN_LOOP));
        assert_eq!(plan()[1].binds, Some(COW_LOOP));
    }

    #[test]
    fn teardown_plan_as_data() {
        let lines: Vec<String> =
            dm_snapshot_teardown_plan("banger-vm1-root", Path::new("/dev/loop3"), Path::new("/dev/loop4"))
                .iter()
                .map(PlannedCommand::render)
                .collect();
        assert_eq!(lines, ["dmsetup remove banger-vm1-root", "losetup -d /dev/loop4", "losetup -d /dev/loop3"]);
    }

    #[test]
    fn undos_mirror_the_teardown_plan() {
        let bindings = [(ORIGIN_LOOP, "/dev/loop3".to_owned()), (COW_LOOP, "/dev/loop4".to_owned())];
        let undos: Vec<PlannedCommand> =
            plan().iter().rev().map(|s| s.undo.as_ref().unwrap().substitute(&bindings)).collect();
        assert_eq!(
            undos,
            dm_snapshot_teardown_plan("banger-vm1-root", Path::new("/dev/loop3"), Path::new("/dev/loop4"))
        );
    }

    #[test]
    fn executor_binds_loop_devices() {
        let rec = fake(7);
        let bound = run_plan(&plan(), &rec).unwrap();
        assert_eq!(bound, [(ORIGIN_LOOP, "/dev/loop7".to_owned()), (COW_LOOP, "/dev/loop8".to_owned())]);
        assert_eq!(
            rec.lines(),
            [
                "losetup --find --show --read-only /img/rootfs.ext4",
                "losetup --find --show /vms/vm1/root.cow",
                "dmsetup create banger-vm1-root --table '0 131072 snapshot /dev/loop7 /dev/loop8 P 8'",
            ]
        );
    }

    #[test]
    fn executor_rolls_back_on_failure() {
        let rec = fake(1).reply_always("dmsetup create", FakeReply::exit(1, "device-mapper: reload ioctl failed"));
        let err = run_plan(&plan(), &rec).unwrap_err();
        assert!(matches!(err, StorageError::Command(_)));
        assert!(err.to_string().ends_with("failed (exit status: 1): device-mapper: reload ioctl failed"), "{err}");
        assert_eq!(rec.lines()[3..], ["losetup -d /dev/loop2", "losetup -d /dev/loop1"]);
    }

    #[test]
    fn teardown_runs_every_step() {
        let rec = RecordingCommands::new().reply_always("dmsetup remove", FakeReply::exit(1, "busy"));
        let plan = dm_snapshot_teardown_plan("n", Path::new("/dev/loop1"), Path::new("/dev/loop2"));
        assert!(run_all(&plan, &rec).is_err());
        assert_eq!(rec.lines(), ["dmsetup remove n", "losetup -d /dev/loop2", "losetup -d /dev/loop1"]);
    }

    #[test]
    fn names() {
        assert_eq!(dm_name(Path::new("/var/lib/banger/vms/web 1/root.cow")), "banger-web_1-root");
    }
}
