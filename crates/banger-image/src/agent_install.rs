//! Putting a guest agent into an existing ext4 disk without mounting it:
//! `debugfs -w` replaces the file (rm, write, mode 0755, owner root) and
//! reads it back, in one run. A disk whose journal needs replaying (its
//! guest was killed) is replayed first with `e2fsck -E journal_only`, so
//! the kernel's replay at the next mount cannot undo the write. The debugfs
//! script and the reading of its output are pure functions, tested here;
//! debugfs exits 0 whatever its commands did, so its output is the verdict.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use banger_host::{HostCommand, HostCommands, SystemCommands};

use crate::{Recipe, AGENT_PATH};

/// The agent's mode inside a guest: a regular file, 0755.
const AGENT_MODE: u32 = 0o100_755;

/// Where the ext2/3/4 superblock starts, and the part of it read here.
const SUPERBLOCK_OFFSET: u64 = 1024;
const SUPERBLOCK_READ: usize = 0x68;
/// `s_magic`, `s_feature_incompat` and its "journal needs recovery" bit.
const MAGIC_AT: usize = 0x38;
const INCOMPAT_AT: usize = 0x60;
const INCOMPAT_RECOVER: u32 = 0x4;

impl Recipe {
    /// Where images built from this recipe carry the agent: a tiny root in
    /// `/usr/bin` (its `/sbin/init` points there), every other at [`AGENT_PATH`].
    pub fn agent_path(&self) -> &'static str {
        match self {
            Recipe::Tiny => crate::layout::TINY_AGENT_PATH,
            Recipe::Debian { .. } | Recipe::FromDir(_) | Recipe::FromTar(_) => AGENT_PATH,
        }
    }
}

/// Why the agent could not be put into a disk.
#[derive(Debug, thiserror::Error)]
pub enum AgentInstallError {
    /// A host tool is not installed.
    #[error("{tool} not found; install Debian's e2fsprogs package")]
    MissingTool {
        /// The program looked for.
        tool: &'static str,
    },
    /// The disk holds no ext2/3/4 filesystem.
    #[error("{0} is not an ext4 filesystem")]
    NotExt4(PathBuf),
    /// A path debugfs could not be given safely: one with quotes,
    /// backslashes or control characters, or inside the disk one that is
    /// relative or has `..`.
    #[error("debugfs cannot be given the path {0:?}")]
    BadPath(String),
    /// None of the places an agent may live has one.
    #[error("{disk} carries no banger-agent at {}", .looked_at.join(" or "))]
    NoAgent {
        /// The disk.
        disk: PathBuf,
        /// The paths looked at, inside the disk.
        looked_at: Vec<String>,
    },
    /// debugfs reported a failure, or the file it left is not the agent.
    #[error("debugfs could not write the agent to {path} in {disk}: {detail}")]
    Write {
        /// The disk.
        disk: PathBuf,
        /// The path inside the disk.
        path: String,
        /// What debugfs said, or how the file it left differs.
        detail: String,
    },
    /// A host command could not be run or failed.
    #[error(transparent)]
    Command(#[from] banger_host::CommandError),
    /// The disk or the agent could not be read.
    #[error("cannot read {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
}

/// What the start of an ext2/3/4 superblock says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Superblock {
    /// The journal has transactions the kernel would replay at mount.
    pub needs_recovery: bool,
}

/// Reads the superblock bytes that begin at byte 1024 of a disk; `None`
/// when they are not ext2/3/4's.
pub(crate) fn parse_superblock(bytes: &[u8]) -> Option<Superblock> {
    let magic = u16::from_le_bytes(bytes.get(MAGIC_AT..MAGIC_AT + 2)?.try_into().ok()?);
    let incompat = u32::from_le_bytes(bytes.get(INCOMPAT_AT..INCOMPAT_AT + 4)?.try_into().ok()?);
    (magic == 0xEF53).then_some(Superblock { needs_recovery: incompat & INCOMPAT_RECOVER != 0 })
}

/// Whether debugfs can be handed `path` inside a double-quoted word: no
/// quotes, backslashes or control characters (a newline would end the command).
pub(crate) fn quotable(path: &str) -> bool {
    !path.chars().any(|c| c == '"' || c == '\\' || c.is_control())
}

/// A guest path the agent may be written to: absolute, quotable, no `..`.
pub(crate) fn valid_guest_path(path: &str) -> bool {
    path.starts_with('/') && path.len() > 1 && quotable(path) && !path.split('/').any(|part| part == "..")
}

/// The debugfs script that replaces `guest` with the host file `agent`,
/// makes it root's and 0755, and shows what it left.
pub(crate) fn install_script(agent: &str, guest: &str) -> String {
    format!(
        "rm \"{guest}\"\nwrite \"{agent}\" \"{guest}\"\nsif \"{guest}\" mode 0{AGENT_MODE:o}\n\
         sif \"{guest}\" uid 0\nsif \"{guest}\" gid 0\nstat \"{guest}\"\n"
    )
}

/// The debugfs script that shows each of `paths`.
pub(crate) fn stat_script(paths: &[String]) -> String {
    paths.iter().map(|p| format!("stat \"{p}\"\n")).collect()
}

/// What debugfs' `stat` shows of an inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InodeStat {
    /// `regular`, `directory`, `symlink`, ...
    pub kind: String,
    /// Permission bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
}

/// Reads debugfs' `stat` output (`Inode: 12   Type: regular    Mode:  0755 ...`).
pub(crate) fn parse_stat(text: &str) -> Option<InodeStat> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let after = |key: &str| words.iter().position(|w| *w == key).and_then(|i| words.get(i + 1)).copied();
    Some(InodeStat {
        kind: after("Type:")?.to_owned(),
        mode: u32::from_str_radix(after("Mode:")?, 8).ok()?,
        uid: after("User:")?.parse().ok()?,
        gid: after("Group:")?.parse().ok()?,
        size: after("Size:")?.parse().ok()?,
    })
}

/// What each command of a `debugfs -f -` run printed on stdout, in order:
/// debugfs echoes each command as `debugfs: CMD` before running it.
pub(crate) fn sections(stdout: &str) -> Vec<(&str, String)> {
    let mut found: Vec<(&str, String)> = Vec::new();
    for line in stdout.lines() {
        match line.strip_prefix("debugfs: ") {
            Some(command) => found.push((command, String::new())),
            None => {
                if let Some((_, text)) = found.last_mut() {
                    text.push_str(line);
                    text.push('\n');
                }
            }
        }
    }
    found
}

/// The complaints in debugfs' stderr: all but its banner and an `rm` of a
/// file that is not there (an agent written for the first time).
pub(crate) fn complaints(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .filter(|l| !(l.starts_with("debugfs ") && l.ends_with(')')))
        .filter(|l| !l.starts_with("rm: File not found by ext2_lookup"))
        .collect()
}

/// Judges an install run: clean stderr, and a final `stat` showing a
/// root-owned 0755 regular file of the agent's size.
pub(crate) fn judge_install(stdout: &str, stderr: &str, agent_size: u64) -> Result<(), String> {
    let mut complaints = complaints(stderr);
    if !complaints.is_empty() {
        // The first complaints say why; those after are their consequences.
        complaints.dedup();
        complaints.truncate(2);
        return Err(complaints.join("; "));
    }
    let shown = sections(stdout).into_iter().rev().find(|(cmd, _)| cmd.starts_with("stat ")).map(|(_, text)| text);
    let Some(stat) = shown.as_deref().and_then(parse_stat) else {
        return Err("it showed no file afterwards".to_owned());
    };
    let wanted = InodeStat { kind: "regular".into(), mode: AGENT_MODE & 0o7777, uid: 0, gid: 0, size: agent_size };
    if stat != wanted {
        return Err(format!("it left {stat:?}, not {wanted:?}"));
    }
    Ok(())
}

/// Where a disk may carry its agent, most likely first: `init` itself when
/// it is the agent, then where banger's recipes put it.
pub fn agent_candidates(init: &str) -> Vec<String> {
    let mut candidates = Vec::new();
    if Path::new(init).file_name().is_some_and(|name| name == "banger-agent") && valid_guest_path(init) {
        candidates.push(init.to_owned());
    }
    for path in [AGENT_PATH, Recipe::Tiny.agent_path()] {
        if !candidates.iter().any(|c| c == path) {
            candidates.push(path.to_owned());
        }
    }
    candidates
}

/// Replaces the file at `guest_path` inside the ext4 disk `disk` with the
/// host file `agent`, root's and 0755. The disk must not be in use.
pub fn install_agent(disk: &Path, agent: &Path, guest_path: &str) -> Result<(), AgentInstallError> {
    install_agent_with(&SystemCommands, disk, agent, guest_path)
}

/// Finds which of [`agent_candidates`]`(init)` is a regular file in `disk`.
pub fn locate_agent(disk: &Path, init: &str) -> Result<String, AgentInstallError> {
    locate_agent_with(&SystemCommands, disk, init)
}

/// [`install_agent`], running host tools through `cmds`.
pub(crate) fn install_agent_with(
    cmds: &dyn HostCommands,
    disk: &Path,
    agent: &Path,
    guest_path: &str,
) -> Result<(), AgentInstallError> {
    if !valid_guest_path(guest_path) {
        return Err(AgentInstallError::BadPath(guest_path.to_owned()));
    }
    let host_path = agent
        .to_str()
        .filter(|p| quotable(p))
        .ok_or_else(|| AgentInstallError::BadPath(agent.display().to_string()))?;
    let agent_size =
        std::fs::metadata(agent).map_err(|source| AgentInstallError::Io { path: agent.to_owned(), source })?.len();
    let debugfs = open_for_writing(cmds, disk)?;
    let out = cmds.run(&debugfs.stdin(install_script(host_path, guest_path)))?;
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    judge_install(&stdout, &stderr, agent_size).map_err(|detail| AgentInstallError::Write {
        disk: disk.to_owned(),
        path: guest_path.to_owned(),
        detail,
    })
}

/// [`locate_agent`], running host tools through `cmds`.
pub(crate) fn locate_agent_with(cmds: &dyn HostCommands, disk: &Path, init: &str) -> Result<String, AgentInstallError> {
    require_tool(cmds, "debugfs")?;
    if read_superblock(disk)?.is_none() {
        return Err(AgentInstallError::NotExt4(disk.to_owned()));
    }
    let candidates = agent_candidates(init);
    let cmd = debugfs(disk, false).stdin(stat_script(&candidates));
    let out = cmds.run(&cmd)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let shown = sections(&stdout);
    let regular = |path: &String| {
        let command = format!("stat \"{path}\"");
        shown.iter().any(|(cmd, text)| *cmd == command && parse_stat(text).is_some_and(|s| s.kind == "regular"))
    };
    candidates
        .iter()
        .find(|path| regular(path))
        .cloned()
        .ok_or(AgentInstallError::NoAgent { disk: disk.to_owned(), looked_at: candidates })
}

/// Checks the disk is ext2/3/4, replays its journal if the kernel would,
/// and returns the debugfs command that writes to it.
pub(crate) fn open_for_writing(cmds: &dyn HostCommands, disk: &Path) -> Result<HostCommand, AgentInstallError> {
    require_tool(cmds, "debugfs")?;
    let superblock = read_superblock(disk)?.ok_or_else(|| AgentInstallError::NotExt4(disk.to_owned()))?;
    if superblock.needs_recovery {
        require_tool(cmds, "e2fsck")?;
        // Exit 1 means e2fsck changed something: here, that it replayed.
        cmds.run(&HostCommand::new("e2fsck").args(["-E", "journal_only", "-y"]).arg(disk).ok_exit_code(1))?;
    }
    Ok(debugfs(disk, true))
}

/// `debugfs [-w] -f - DISK`, with no pager for `stat`.
pub(crate) fn debugfs(disk: &Path, write: bool) -> HostCommand {
    let cmd = HostCommand::new("debugfs");
    let cmd = if write { cmd.arg("-w") } else { cmd };
    cmd.args(["-f", "-"]).arg(disk).env("DEBUGFS_PAGER", "__none__")
}

pub(crate) fn require_tool(cmds: &dyn HostCommands, tool: &'static str) -> Result<(), AgentInstallError> {
    cmds.find_tool(tool).map(drop).ok_or(AgentInstallError::MissingTool { tool })
}

/// The superblock of the disk, or `None` when it is not ext2/3/4.
fn read_superblock(disk: &Path) -> Result<Option<Superblock>, AgentInstallError> {
    let io = |source| AgentInstallError::Io { path: disk.to_owned(), source };
    let file = File::open(disk).map_err(io)?;
    let mut bytes = [0u8; SUPERBLOCK_READ];
    match file.read_exact_at(&mut bytes, SUPERBLOCK_OFFSET) {
        Ok(()) => Ok(parse_superblock(&bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(io(e)),
    }
}

#[cfg(test)]
mod tests {
    use banger_host::{FakeReply, RecordingCommands};

    use super::*;

    const BANNER: &str = "debugfs 1.47.0 (5-Feb-2023)\n";
    const STAT_OK: &str = "Inode: 16   Type: regular    Mode:  0755   Flags: 0x80000\n\
        Generation: 0    Version: 0x00000000:00000000\n\
        User:     0   Group:     0   Project:     0   Size: 1982256\n\
        File ACL: 0\nLinks: 1   Blockcount: 3872\n";

    fn superblock(magic: u16, incompat: u32) -> Vec<u8> {
        let mut bytes = vec![0u8; SUPERBLOCK_READ];
        bytes[MAGIC_AT..MAGIC_AT + 2].copy_from_slice(&magic.to_le_bytes());
        bytes[INCOMPAT_AT..INCOMPAT_AT + 4].copy_from_slice(&incompat.to_le_bytes());
        bytes
    }

    fn stdout_of_install(stat: &str) -> String {
        let g = "\"/usr/bin/banger-agent\"";
        format!(
            "debugfs: rm {g}\n\ndebugfs: write \"/a\" {g}\nAllocated inode: 16\ndebugfs: sif {g} mode 0100755\n\
             debugfs: sif {g} uid 0\ndebugfs: sif {g} gid 0\ndebugfs: stat {g}\n{stat}"
        )
    }

    #[test]
    fn each_recipe_says_where_its_agent_is() {
        assert_eq!(Recipe::Tiny.agent_path(), "/usr/bin/banger-agent");
        assert_eq!(Recipe::debian().agent_path(), AGENT_PATH);
        assert_eq!(Recipe::FromDir("/r".into()).agent_path(), AGENT_PATH);
        assert_eq!(Recipe::FromTar("/r.tar".into()).agent_path(), AGENT_PATH);
    }

    #[test]
    fn the_superblock_says_ext4_and_whether_its_journal_needs_replaying() {
        assert_eq!(parse_superblock(&superblock(0xEF53, 0x2C2)), Some(Superblock { needs_recovery: false }));
        assert_eq!(parse_superblock(&superblock(0xEF53, 0x2C6)), Some(Superblock { needs_recovery: true }));
        assert_eq!(parse_superblock(&superblock(0x1234, 0)), None);
        assert_eq!(parse_superblock(&[0u8; 10]), None, "too short is not ext4, not a panic");
    }

    #[test]
    fn the_script_replaces_the_file_then_shows_it() {
        let script = install_script("/host/my agent", "/usr/bin/banger-agent");
        let g = "\"/usr/bin/banger-agent\"";
        assert_eq!(
            script.lines().collect::<Vec<_>>(),
            [
                format!("rm {g}"),
                format!("write \"/host/my agent\" {g}"),
                format!("sif {g} mode 0100755"),
                format!("sif {g} uid 0"),
                format!("sif {g} gid 0"),
                format!("stat {g}"),
            ]
        );
    }

    #[test]
    fn only_plain_absolute_paths_are_written() {
        assert!(valid_guest_path("/usr/local/bin/banger-agent"));
        assert!(valid_guest_path("/opt/my agent/banger-agent"), "a space is quoted");
        for bad in ["usr/bin/a", "/", "/a\"b", "/a\nwrite /etc/shadow", "/a\\b", "/usr/../etc/x"] {
            assert!(!valid_guest_path(bad), "{bad:?}");
        }
    }

    #[test]
    fn the_init_comes_first_when_it_is_the_agent() {
        assert_eq!(agent_candidates("/sbin/init"), [AGENT_PATH, "/usr/bin/banger-agent"]);
        assert_eq!(agent_candidates("/sbin/banger-agent"), ["/sbin/banger-agent", AGENT_PATH, "/usr/bin/banger-agent"]);
        assert_eq!(agent_candidates(AGENT_PATH), [AGENT_PATH, "/usr/bin/banger-agent"]);
        assert_eq!(agent_candidates("/x\n/banger-agent"), [AGENT_PATH, "/usr/bin/banger-agent"]);
    }

    #[test]
    fn stat_output_is_read() {
        let stat = parse_stat(STAT_OK).unwrap();
        assert_eq!(stat, InodeStat { kind: "regular".into(), mode: 0o755, uid: 0, gid: 0, size: 1982256 });
        assert_eq!(parse_stat("Inode: 2 Type: directory"), None);
    }

    #[test]
    fn a_clean_run_that_left_the_agent_passes() {
        let stderr = format!("{BANNER}rm: File not found by ext2_lookup while trying to resolve filename\n");
        assert_eq!(judge_install(&stdout_of_install(STAT_OK), &stderr, 1982256), Ok(()));
    }

    #[test]
    fn any_complaint_or_a_wrong_file_fails_the_run() {
        let stderr = format!("{BANNER}/nodir: File not found by ext2_lookup while looking up \"/nodir\"\nwrite: File not found by ext2_lookup \n");
        let err = judge_install(&stdout_of_install(""), &stderr, 1).unwrap_err();
        assert_eq!(
            err,
            "/nodir: File not found by ext2_lookup while looking up \"/nodir\"; write: File not found by ext2_lookup"
        );
        let unopened = format!(
            "{BANNER}debugfs: Bad magic number in super-block while trying to open d\nrm: Filesystem not open\n"
        );
        assert!(judge_install("", &unopened, 1).unwrap_err().starts_with("debugfs: Bad magic number"));
        assert_eq!(judge_install(&stdout_of_install(""), BANNER, 1).unwrap_err(), "it showed no file afterwards");
        let short = judge_install(&stdout_of_install(STAT_OK), BANNER, 5).unwrap_err();
        assert!(short.contains("size: 1982256") && short.contains("size: 5"), "{short}");
        let loose = STAT_OK.replace("Mode:  0755", "Mode:  0644");
        assert!(judge_install(&stdout_of_install(&loose), BANNER, 1982256).is_err());
    }

    #[test]
    fn install_replays_a_journal_that_needs_it_then_runs_one_debugfs() {
        let dir = tempfile::tempdir().unwrap();
        let (disk, agent) = (dir.path().join("root.ext4"), dir.path().join("agent"));
        let mut bytes = vec![0u8; SUPERBLOCK_OFFSET as usize];
        bytes.extend(superblock(0xEF53, INCOMPAT_RECOVER));
        std::fs::write(&disk, &bytes).unwrap();
        std::fs::write(&agent, vec![7u8; 1982256]).unwrap();
        let fake = RecordingCommands::new().reply_always(
            "debugfs",
            FakeReply { code: 0, stdout: stdout_of_install(STAT_OK).into(), stderr: BANNER.into() },
        );
        install_agent_with(&fake, &disk, &agent, "/usr/bin/banger-agent").unwrap();
        let d = disk.display();
        assert_eq!(fake.lines(), [format!("e2fsck -E journal_only -y {d}"), format!("debugfs -w -f - {d}")]);
        let script = String::from_utf8(fake.commands()[1].stdin.clone().unwrap()).unwrap();
        assert_eq!(script, install_script(agent.to_str().unwrap(), "/usr/bin/banger-agent"));
    }

    #[test]
    fn a_disk_that_is_not_ext4_is_refused_before_debugfs_runs() {
        let dir = tempfile::tempdir().unwrap();
        let (disk, agent) = (dir.path().join("root.ext4"), dir.path().join("agent"));
        std::fs::write(&disk, vec![0u8; 4096]).unwrap();
        std::fs::write(&agent, b"agent").unwrap();
        let fake = RecordingCommands::new();
        let err = install_agent_with(&fake, &disk, &agent, AGENT_PATH).unwrap_err();
        assert!(matches!(err, AgentInstallError::NotExt4(ref p) if *p == disk), "{err}");
        let err = install_agent_with(&RecordingCommands::new().without_tool("debugfs"), &disk, &agent, AGENT_PATH);
        assert!(matches!(err, Err(AgentInstallError::MissingTool { tool: "debugfs" })));
        assert!(fake.lines().is_empty());
    }

    #[test]
    fn locating_takes_the_first_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("root.ext4");
        let mut bytes = vec![0u8; SUPERBLOCK_OFFSET as usize];
        bytes.extend(superblock(0xEF53, 0));
        std::fs::write(&disk, &bytes).unwrap();
        let stdout = format!("debugfs: stat \"{AGENT_PATH}\"\ndebugfs: stat \"/usr/bin/banger-agent\"\n{STAT_OK}");
        let fake = RecordingCommands::new()
            .reply_always("debugfs", FakeReply { code: 0, stdout: stdout.into(), stderr: vec![] });
        assert_eq!(locate_agent_with(&fake, &disk, "/sbin/init").unwrap(), "/usr/bin/banger-agent");
        assert_eq!(fake.lines(), [format!("debugfs -f - {}", disk.display())]);
        let none = RecordingCommands::new();
        let err = locate_agent_with(&none, &disk, "/sbin/init").unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{} carries no banger-agent at {AGENT_PATH} or /usr/bin/banger-agent", disk.display())
        );
    }
}
