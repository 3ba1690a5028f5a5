//! One module per recipe; each fills a root in scratch space and hands it to
//! [`make_ext4`].

pub(crate) mod debian;
pub(crate) mod rootfs;
pub(crate) mod tiny;

use std::path::Path;

use banger_host::HostCommands;

use crate::{host, layout, tree, BuildOptions, ImageError};

/// Measures `root`, picks the image size and writes it as ext4 to `output`.
pub(crate) fn make_ext4(
    cmds: &dyn HostCommands,
    root: &Path,
    opts: &BuildOptions,
    output: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<u64, ImageError> {
    let needed = tree::content_bytes(root)?;
    let size = match opts.size_bytes {
        Some(size) if size < needed => return Err(ImageError::TooSmall { size, needed }),
        Some(size) => size,
        None => layout::default_size(needed),
    };
    progress(&format!("making a {} MiB ext4 filesystem", size.div_ceil(1 << 20)));
    host::mkfs_ext4(cmds, "rootfs", Some(root), output, size)?;
    Ok(size)
}

#[cfg(test)]
mod tests {
    //! The command sequences of each recipe, run against the recording fake:
    //! no tool runs, but the files a recipe writes itself are real.

    use std::fs;
    use std::path::PathBuf;

    use banger_host::{FakeReply, HostCommand, RecordingCommands};

    use super::*;
    use crate::{elf, seed, AGENT_PATH};

    struct Scene {
        _dir: tempfile::TempDir,
        scratch: PathBuf,
        output: PathBuf,
        opts: BuildOptions,
    }

    fn scene() -> Scene {
        let dir = tempfile::tempdir().unwrap();
        let scratch = dir.path().join("scratch");
        fs::create_dir(&scratch).unwrap();
        let agent = dir.path().join("banger-agent");
        fs::write(&agent, elf::tests::static_elf()).unwrap();
        let mut opts = BuildOptions::new(&agent);
        opts.busybox = dir.path().join("busybox");
        fs::write(&opts.busybox, elf::tests::static_elf()).unwrap();
        Scene { output: dir.path().join("rootfs.ext4"), scratch, opts, _dir: dir }
    }

    fn mkfs_line(label: &str, root: Option<&Path>, file: &Path) -> String {
        HostCommand::new("mkfs.ext4").args(layout::mkfs_args(label, root, file)).render()
    }

    #[test]
    fn tiny_lists_applets_then_makes_the_filesystem_from_the_root() {
        let s = scene();
        let list = "/bin/sh\n/bin/ls\n/sbin/init\n/usr/bin/env\n";
        let fake = RecordingCommands::new().reply_always(s.opts.busybox.display().to_string(), FakeReply::ok(list));
        let mut steps = Vec::new();
        let built = tiny::build(&fake, &s.opts, &s.scratch, &s.output, &mut |m| steps.push(m.to_owned())).unwrap();
        let root = s.scratch.join("root");
        assert_eq!(
            fake.lines(),
            [format!("{} --list-full", s.opts.busybox.display()), mkfs_line("rootfs", Some(&root), &s.output)]
        );
        assert_eq!(built.init, "/sbin/init");
        assert!(root.join(crate::Recipe::Tiny.agent_path().trim_start_matches('/')).is_file(), "where boots write it");
        assert_eq!(fs::metadata(&s.output).unwrap().len(), built.size_bytes, "the file is sized before mkfs");
        assert!(root.join("bin/ls").is_symlink());
        assert!(steps[0].contains("3 applets"), "{steps:?}");
    }

    #[test]
    fn tiny_refuses_a_busybox_without_applets() {
        let s = scene();
        let fake = RecordingCommands::new();
        let err = tiny::build(&fake, &s.opts, &s.scratch, &s.output, &mut |_| {}).unwrap_err();
        assert!(matches!(err, ImageError::NoApplets(_)), "{err}");
        assert_eq!(fake.lines().len(), 1, "no mkfs after a failed step");
    }

    #[test]
    fn debian_bootstraps_finishes_the_tree_then_makes_the_filesystem() {
        let s = scene();
        let fake = RecordingCommands::new()
            .with_effect("debootstrap", |cmd| {
                let root = PathBuf::from(cmd.args.last().unwrap());
                for dir in ["etc/ssh", "etc/systemd/system", "var/cache/apt/archives", "var/lib/apt/lists", "sbin"] {
                    fs::create_dir_all(root.join(dir)).unwrap();
                }
                fs::write(root.join("etc/ssh/ssh_host_ed25519_key"), "secret").unwrap();
                fs::write(root.join("var/cache/apt/archives/bash.deb"), "deb").unwrap();
            })
            .reply_always(
                "debootstrap",
                FakeReply::ok("I: Retrieving InRelease\nW: noise\nI: Base system installed successfully.\n"),
            );
        let mut steps = Vec::new();
        let built = debian::build(&fake, "bookworm", &s.opts, &s.scratch, &s.output, &mut |m| steps.push(m.to_owned()))
            .unwrap();
        let root = s.scratch.join("root");
        let lines = fake.lines();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].starts_with("debootstrap --variant=minbase --include="), "{}", lines[0]);
        assert!(lines[0].ends_with(&format!(" bookworm {}", root.display())), "{}", lines[0]);
        assert_eq!(lines[1], mkfs_line("rootfs", Some(&root), &s.output));
        assert!(steps.contains(&"debootstrap: Base system installed successfully.".to_owned()), "{steps:?}");
        assert!(!steps.iter().any(|m| m.contains("noise")));
        assert!(!root.join("etc/ssh/ssh_host_ed25519_key").exists(), "host keys are removed");
        assert!(!root.join("var/cache/apt/archives/bash.deb").exists(), "caches are emptied");
        assert!(root.join(AGENT_PATH.trim_start_matches('/')).is_file());
        assert_eq!(built.init, "/lib/systemd/systemd");
    }

    #[test]
    fn a_failed_debootstrap_reports_its_output_and_makes_nothing() {
        let s = scene();
        let fake = RecordingCommands::new().reply_always(
            "debootstrap",
            FakeReply {
                code: 1,
                stdout: b"I: Retrieving\nE: Couldn't download release file\n".to_vec(),
                stderr: vec![],
            },
        );
        let err = debian::build(&fake, "bookworm", &s.opts, &s.scratch, &s.output, &mut |_| {}).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("debootstrap --variant=minbase") && msg.contains("E: Couldn't download release file"),
            "{msg}"
        );
        assert!(!msg.contains('\n'), "{msg}");
        assert_eq!(fake.lines().len(), 1, "no mkfs after a failed debootstrap");
        assert!(!s.output.exists());
    }

    #[test]
    fn a_missing_tool_is_named_before_anything_runs() {
        let s = scene();
        let fake = RecordingCommands::new().without_tool("debootstrap");
        let err = debian::build(&fake, "bookworm", &s.opts, &s.scratch, &s.output, &mut |_| {}).unwrap_err();
        assert!(matches!(err, ImageError::MissingTool { tool: "debootstrap", package: "debootstrap" }), "{err}");
        assert!(fake.lines().is_empty());
    }

    #[test]
    fn a_directory_without_the_agent_is_copied_then_made_into_ext4() {
        let s = scene();
        let src = s.scratch.parent().unwrap().join("src");
        fs::create_dir(&src).unwrap();
        let fake = RecordingCommands::new();
        let built = rootfs::from_dir(&fake, &src, &s.opts, &s.scratch, &s.output, &mut |_| {}).unwrap();
        let root = s.scratch.join("root");
        assert_eq!(
            fake.lines(),
            [
                format!("cp -a --reflink=auto {}/. {}", src.display(), root.display()),
                mkfs_line("rootfs", Some(&root), &s.output)
            ]
        );
        assert_eq!(built.init, AGENT_PATH);
    }

    #[test]
    fn a_failing_mkfs_is_one_line_naming_the_command() {
        let s = scene();
        let fake = RecordingCommands::new().reply_always("mkfs.ext4", FakeReply::exit(1, "mkfs.ext4: No space\n"));
        let err = seed::ensure_seed_with(&fake, &s.scratch, 1 << 20).unwrap_err();
        assert!(matches!(err, ImageError::Command(_)), "{err}");
        let msg = err.to_string();
        assert!(msg.starts_with("mkfs.ext4 -q -F -L work -b 4096 -I 256 "), "{msg}");
        assert!(msg.ends_with("failed (exit status: 1): mkfs.ext4: No space"), "{msg}");
        assert!(!fake.lines()[0].contains(" -d "), "a seed is empty");
        assert!(!seed::seed_path(&s.scratch, 1 << 20).exists(), "no half-made seed");
    }
}
