//! Small files a VM's guest gets at every boot beside its agent (its SSH
//! host key, the keys it lets in, an sshd drop-in), written into its ext4
//! root disk with debugfs in one run, as the agent is, and each read back.

use std::path::{Path, PathBuf};

use banger_host::{HostCommands, SystemCommands};

use crate::agent_install::{
    complaints, debugfs, open_for_writing, parse_stat, quotable, require_tool, sections, valid_guest_path, InodeStat,
};
use crate::AgentInstallError;

/// A host file to put at a guest path, root's, with these permission bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestFile {
    /// The host file.
    pub host: PathBuf,
    /// Where it goes in the guest: absolute, in a directory that exists.
    pub guest: String,
    /// Its permission bits (0o600, 0o644).
    pub mode: u32,
}

/// Whether `path` is a directory in the ext4 disk `disk`.
pub fn guest_directory_exists(disk: &Path, path: &str) -> Result<bool, AgentInstallError> {
    if !valid_guest_path(path) {
        return Err(AgentInstallError::BadPath(path.to_owned()));
    }
    let cmds = SystemCommands;
    require_tool(&cmds, "debugfs")?;
    let out = cmds.run(&debugfs(disk, false).stdin(format!("stat \"{path}\"\n")))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    Ok(sections(&stdout).iter().any(|(_, text)| parse_stat(text).is_some_and(|s| s.kind == "directory")))
}

/// Replaces each of `files` in `disk` (which must not be in use).
pub fn install_files(disk: &Path, files: &[GuestFile]) -> Result<(), AgentInstallError> {
    install_files_with(&SystemCommands, disk, files)
}

/// The debugfs script that replaces each file, makes it root's with its
/// mode, and shows it.
pub(crate) fn files_script(files: &[(&str, &GuestFile)]) -> String {
    let mut script = String::new();
    for (host, file) in files {
        let (g, mode) = (&file.guest, 0o100_000 | file.mode);
        script.push_str(&format!(
            "rm \"{g}\"\nwrite \"{host}\" \"{g}\"\nsif \"{g}\" mode 0{mode:o}\nsif \"{g}\" uid 0\nsif \"{g}\" gid 0\nstat \"{g}\"\n"
        ));
    }
    script
}

/// Judges a run of [`files_script`]: clean stderr, and each file shown as
/// a root-owned regular file of its mode and size.
pub(crate) fn judge_files(stdout: &str, stderr: &str, wanted: &[(&str, InodeStat)]) -> Result<(), String> {
    let mut complaints = complaints(stderr);
    if !complaints.is_empty() {
        complaints.dedup();
        complaints.truncate(2);
        return Err(complaints.join("; "));
    }
    let shown = sections(stdout);
    for (guest, wanted) in wanted {
        let command = format!("stat \"{guest}\"");
        let stat = shown.iter().rev().find(|(cmd, _)| *cmd == command).and_then(|(_, text)| parse_stat(text));
        match stat {
            Some(stat) if stat == *wanted => {}
            Some(stat) => return Err(format!("{guest}: it left {stat:?}, not {wanted:?}")),
            None => return Err(format!("{guest}: it showed no file afterwards")),
        }
    }
    Ok(())
}

pub(crate) fn install_files_with(
    cmds: &dyn HostCommands,
    disk: &Path,
    files: &[GuestFile],
) -> Result<(), AgentInstallError> {
    let mut named = Vec::new();
    let mut wanted = Vec::new();
    for file in files {
        if !valid_guest_path(&file.guest) {
            return Err(AgentInstallError::BadPath(file.guest.clone()));
        }
        let host = file
            .host
            .to_str()
            .filter(|p| quotable(p))
            .ok_or_else(|| AgentInstallError::BadPath(file.host.display().to_string()))?;
        let size = std::fs::metadata(&file.host)
            .map_err(|source| AgentInstallError::Io { path: file.host.clone(), source })?
            .len();
        named.push((host, file));
        wanted.push((file.guest.as_str(), InodeStat { kind: "regular".into(), mode: file.mode, uid: 0, gid: 0, size }));
    }
    if files.is_empty() {
        return Ok(());
    }
    let debugfs = open_for_writing(cmds, disk)?;
    let out = cmds.run(&debugfs.stdin(files_script(&named)))?;
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    judge_files(&stdout, &stderr, &wanted).map_err(|detail| AgentInstallError::Write {
        disk: disk.to_owned(),
        path: files.iter().map(|f| f.guest.as_str()).collect::<Vec<_>>().join(", "),
        detail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(guest: &str, mode: u32) -> GuestFile {
        GuestFile { host: "/h/key".into(), guest: guest.into(), mode }
    }

    #[test]
    fn each_file_is_replaced_made_roots_and_shown() {
        let key = file("/etc/ssh/k", 0o600);
        let script = files_script(&[("/h/key", &key)]);
        let g = "\"/etc/ssh/k\"";
        assert_eq!(
            script.lines().collect::<Vec<_>>(),
            [
                format!("rm {g}"),
                format!("write \"/h/key\" {g}"),
                format!("sif {g} mode 0100600"),
                format!("sif {g} uid 0"),
                format!("sif {g} gid 0"),
                format!("stat {g}"),
            ]
        );
    }

    #[test]
    fn a_run_passes_only_when_every_file_is_as_wanted() {
        let stat = |mode: &str, size| {
            format!("Inode: 16   Type: regular    Mode:  {mode}   Flags: 0x80000\nUser:     0   Group:     0   Size: {size}\n")
        };
        let stdout = format!("debugfs: stat \"/a\"\n{}debugfs: stat \"/b\"\n{}", stat("0600", 10), stat("0644", 20));
        let want = |mode, size| InodeStat { kind: "regular".into(), mode, uid: 0, gid: 0, size };
        assert_eq!(judge_files(&stdout, "", &[("/a", want(0o600, 10)), ("/b", want(0o644, 20))]), Ok(()));
        assert!(judge_files(&stdout, "", &[("/a", want(0o644, 10))]).is_err(), "a wrong mode");
        assert!(judge_files(&stdout, "", &[("/c", want(0o644, 10))]).is_err(), "a file not shown");
        let stderr = "write: Could not allocate block in ext2 filesystem while writing file \"k\"\n";
        assert!(judge_files(&stdout, stderr, &[("/a", want(0o600, 10))]).is_err(), "a complaint");
    }

    #[test]
    fn bad_paths_are_refused_before_anything_runs() {
        let cmds = banger_host::RecordingCommands::default();
        let refused = install_files_with(&cmds, Path::new("/d.ext4"), &[file("etc/relative", 0o644)]);
        assert!(matches!(refused, Err(AgentInstallError::BadPath(_))));
        assert!(cmds.commands().is_empty());
    }
}
