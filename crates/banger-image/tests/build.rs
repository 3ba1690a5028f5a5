//! Builds real images with mkfs.ext4 and reads them back with debugfs,
//! without mounting anything. Needs root (a SKIP otherwise; under CI a failure).

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::{chown, symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use banger_image::{build, ensure_seed, BuildOptions, ImageError, Recipe, AGENT_PATH, ROOTFS_FILE};

/// Writes past the test harness's output capture, so that a timing is seen.
fn loud(message: &str) {
    let _ = writeln!(std::io::stderr(), "\n*** {message} ***\n");
}

const BUSYBOX: &str = "/bin/busybox";

/// Whether the test may go on: building images needs root (a SKIP
/// without; under CI a failure).
fn root_or_skip(test: &str) -> bool {
    banger_testkit::require(&format!("root, for {test}: building images needs it"), banger_testkit::is_root())
}

/// Options whose agent is a stand-in static ELF (busybox itself).
fn opts() -> BuildOptions {
    BuildOptions::new(BUSYBOX)
}

fn debugfs(image: &Path, request: &str) -> String {
    let out = Command::new("debugfs").arg("-R").arg(request).arg(image).output().unwrap();
    assert!(out.status.success(), "debugfs {request}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `Mode:` field of `debugfs stat`, such as `0755`.
fn mode_of(image: &Path, path: &str) -> String {
    let stat = debugfs(image, &format!("stat {path}"));
    stat.split("Mode:").nth(1).and_then(|s| s.split_whitespace().next()).unwrap_or_else(|| panic!("{stat}")).to_owned()
}

/// The `User:` and `Group:` fields of `debugfs stat`.
fn owner_of(image: &Path, path: &str) -> (u32, u32) {
    let stat = debugfs(image, &format!("stat {path}"));
    let field =
        |name: &str| stat.split(name).nth(1).and_then(|s| s.split_whitespace().next()).unwrap().parse().unwrap();
    (field("User:"), field("Group:"))
}

fn link_target(image: &Path, path: &str) -> String {
    let stat = debugfs(image, &format!("stat {path}"));
    stat.split("Fast link dest: \"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap_or_else(|| panic!("{stat}"))
        .to_owned()
}

fn fsck_clean(image: &Path) {
    let out = Command::new("e2fsck").args(["-f", "-n"]).arg(image).output().unwrap();
    assert!(out.status.success(), "e2fsck: {}", String::from_utf8_lossy(&out.stdout));
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    names
}

fn build_into(
    recipe: Recipe,
    opts: &BuildOptions,
) -> (tempfile::TempDir, Result<banger_image::BuiltImage, ImageError>, Vec<String>) {
    let dest = tempfile::tempdir().unwrap();
    let mut steps = Vec::new();
    let result = build(recipe, opts, dest.path(), &mut |s: &str| steps.push(s.to_owned()));
    (dest, result, steps)
}

#[test]
fn tiny_image_boots_the_agent_from_a_busybox_root() {
    if !root_or_skip("tiny_image_boots_the_agent_from_a_busybox_root") {
        return;
    }
    let started = Instant::now();
    let (dest, built, steps) = build_into(Recipe::Tiny, &opts());
    let elapsed = started.elapsed();
    let built = built.unwrap();
    loud(&format!("tiny image built in {elapsed:?}"));
    assert!(elapsed.as_secs() < 5, "tiny build took {elapsed:?}");
    assert_eq!(built.init, "/sbin/init");
    assert_eq!(built.size_bytes, 64 << 20);
    assert!(!steps.is_empty());
    assert_eq!(entries(dest.path()), [ROOTFS_FILE], "scratch space is removed");

    let image = dest.path().join(ROOTFS_FILE);
    assert_eq!(fs::metadata(&image).unwrap().len(), 64 << 20);
    fsck_clean(&image);
    assert_eq!(mode_of(&image, "/usr/bin/banger-agent"), "0755");
    assert_eq!(owner_of(&image, "/usr/bin/banger-agent"), (0, 0));
    assert_eq!(mode_of(&image, "/bin/busybox"), "0755");
    assert_eq!(link_target(&image, "/sbin/init"), "/usr/bin/banger-agent");
    assert_eq!(link_target(&image, "/bin/sh"), "busybox");
    assert_eq!(link_target(&image, "/sbin/poweroff"), "../bin/busybox");
    assert_eq!(link_target(&image, "/bin/poweroff"), "busybox");
    let sbin = debugfs(&image, "ls -l /sbin");
    for name in ["init", "poweroff", "reboot", "ifconfig"] {
        assert!(sbin.split_whitespace().any(|w| w == name), "/sbin lacks {name}:\n{sbin}");
    }
    assert_eq!(mode_of(&image, "/tmp"), "01777");
    assert_eq!(mode_of(&image, "/root"), "0700");
    for dir in ["/proc", "/sys", "/dev", "/run", "/work", "/var"] {
        assert!(debugfs(&image, &format!("stat {dir}")).contains("Type: directory"), "{dir}");
    }
    assert_eq!(debugfs(&image, "cat /etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n");
    assert!(debugfs(&image, "cat /etc/profile").contains("PATH="));
    assert!(debugfs(&image, "cat /etc/hostname").starts_with("banger"));
    let label = Command::new("e2label").arg(&image).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&label.stdout).trim(), "rootfs");
}

#[test]
fn from_dir_copies_the_tree_and_adds_the_agent() {
    if !root_or_skip("from_dir_copies_the_tree_and_adds_the_agent") {
        return;
    }
    let src = tempfile::tempdir().unwrap();
    let s = src.path();
    fs::create_dir_all(s.join("sbin")).unwrap();
    fs::create_dir_all(s.join("etc")).unwrap();
    fs::write(s.join("sbin/myinit"), "#!/bin/sh\n").unwrap();
    fs::set_permissions(s.join("sbin/myinit"), fs::Permissions::from_mode(0o755)).unwrap();
    symlink("myinit", s.join("sbin/init")).unwrap();
    fs::write(s.join("etc/secret"), "s").unwrap();
    // chown clears set-user-ID, so it comes first.
    chown(s.join("etc/secret"), Some(1234), Some(5678)).unwrap();
    fs::set_permissions(s.join("etc/secret"), fs::Permissions::from_mode(0o4750)).unwrap();

    let (dest, built, _) = build_into(Recipe::FromDir(s.to_owned()), &opts());
    let built = built.unwrap();
    assert_eq!(built.init, "/sbin/init");
    assert_eq!(entries(dest.path()), [ROOTFS_FILE]);
    let image = dest.path().join(ROOTFS_FILE);
    fsck_clean(&image);
    assert_eq!(mode_of(&image, "/etc/secret"), "04750");
    assert_eq!(owner_of(&image, "/etc/secret"), (1234, 5678));
    assert_eq!(mode_of(&image, AGENT_PATH), "0755");
    assert_eq!(link_target(&image, "/sbin/init"), "myinit");
    assert!(!s.join("usr").exists(), "the source directory is not modified");
}

#[test]
fn from_dir_without_init_boots_the_agent() {
    if !root_or_skip("from_dir_without_init_boots_the_agent") {
        return;
    }
    let src = tempfile::tempdir().unwrap();
    fs::create_dir_all(src.path().join("etc")).unwrap();
    // An absolute link that would name the host's /sbin/init if followed outside the root.
    symlink("/usr/sbin", src.path().join("sbin")).unwrap();
    let (_dest, built, _) = build_into(Recipe::FromDir(src.path().to_owned()), &opts());
    assert_eq!(built.unwrap().init, AGENT_PATH);
}

/// A root tarball: directories, a file with an owner, an absolute symlink
/// (resolved inside the root), a hard link and a device node.
fn root_tar() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |path: &str, kind: tar::EntryType, mode: u32, owner: u64, link: Option<&str>, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(owner);
        h.set_gid(owner);
        h.set_size(data.len() as u64);
        h.set_mtime(1_700_000_000);
        if let Some(link) = link {
            h.set_link_name(link).unwrap();
        }
        b.append_data(&mut h, path, data).unwrap();
    };
    add("./", tar::EntryType::Directory, 0o755, 0, None, b"");
    add("./etc/", tar::EntryType::Directory, 0o755, 0, None, b"");
    add("./etc/motd", tar::EntryType::Regular, 0o640, 1000, None, b"hello\n");
    add("./etc/motd.hard", tar::EntryType::Link, 0o640, 1000, Some("./etc/motd"), b"");
    add("./sbin/", tar::EntryType::Directory, 0o700, 0, None, b"");
    add("./bin/busybox", tar::EntryType::Regular, 0o755, 0, None, b"stand-in");
    add("./sbin/init", tar::EntryType::Symlink, 0o777, 0, Some("/bin/busybox"), b"");
    add("./dev/console", tar::EntryType::Char, 0o600, 0, None, b"");
    b.into_inner().unwrap()
}

#[test]
fn from_tar_unpacks_plain_gzip_and_zstd() {
    if !root_or_skip("from_tar_unpacks_plain_gzip_and_zstd") {
        return;
    }
    let plain = root_tar();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&plain).unwrap();
    let gz = gz.finish().unwrap();
    let zst = zstd::encode_all(&plain[..], 3).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in [("root.tar", &plain), ("root.tgz", &gz), ("root.tar.zst", &zst)] {
        let tar = dir.path().join(name);
        fs::write(&tar, bytes).unwrap();
        let (dest, built, steps) = build_into(Recipe::FromTar(tar), &opts());
        let built = built.unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert_eq!(built.init, "/sbin/init", "{name}");
        assert!(steps.iter().any(|s| s.contains("device nodes")), "{steps:?}");
        let image = dest.path().join(ROOTFS_FILE);
        fsck_clean(&image);
        assert_eq!(debugfs(&image, "cat /etc/motd"), "hello\n");
        assert_eq!(mode_of(&image, "/etc/motd"), "0640");
        assert_eq!(owner_of(&image, "/etc/motd"), (1000, 1000));
        assert_eq!(mode_of(&image, "/sbin"), "0700");
        assert_eq!(link_target(&image, "/sbin/init"), "/bin/busybox");
        assert!(debugfs(&image, "stat /etc/motd").contains("Links: 2"), "hard link kept");
        assert_eq!(mode_of(&image, AGENT_PATH), "0755");
        assert!(!debugfs(&image, "ls /dev").contains("console"));
    }
}

/// A tarball whose second member is named `name`, written raw so that the
/// tar crate's own path checks do not stop it.
fn evil_tar(name: &[u8]) -> Vec<u8> {
    let header = |size| {
        let mut h = tar::Header::new_gnu();
        h.set_size(size);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        h
    };
    let mut b = tar::Builder::new(Vec::new());
    b.append_data(&mut header(2), "fine", &b"ok"[..]).unwrap();
    let mut h = header(5);
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.set_cksum();
    b.append(&h, &b"evil\n"[..]).unwrap();
    b.into_inner().unwrap()
}

#[test]
fn from_tar_refuses_members_outside_the_root() {
    if !root_or_skip("from_tar_refuses_members_outside_the_root") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let marker = format!("banger-evil-{}", std::process::id());
    for name in [format!("../{marker}"), format!("/tmp/{marker}"), format!("etc/../../{marker}")] {
        let tar = dir.path().join("evil.tar");
        fs::write(&tar, evil_tar(name.as_bytes())).unwrap();
        let parent = tempfile::tempdir().unwrap();
        let dest = parent.path().join("image");
        fs::create_dir(&dest).unwrap();
        let err = build(Recipe::FromTar(tar), &opts(), &dest, &mut |_| {}).unwrap_err();
        assert!(matches!(err, ImageError::UnsafeTarMember { .. }), "{name}: {err:?}");
        assert!(err.to_string().contains(&marker), "{err}");
        assert!(entries(&dest).is_empty(), "{name}: dest is left empty");
        assert_eq!(entries(parent.path()), ["image"], "{name}: nothing lands beside dest");
        assert!(!Path::new("/tmp").join(&marker).exists());
    }
}

#[test]
fn seeds_are_made_once_and_reused() {
    let seeds = tempfile::tempdir().unwrap();
    let dir = seeds.path().join("seeds");
    let first = ensure_seed(&dir, 32 << 20).unwrap();
    assert_eq!(first, dir.join("work-33554432.ext4"));
    let meta = fs::metadata(&first).unwrap();
    assert_eq!(meta.len(), 32 << 20);
    let again = ensure_seed(&dir, 32 << 20).unwrap();
    let meta2 = fs::metadata(&again).unwrap();
    assert_eq!(first, again);
    assert_eq!((meta.ino(), meta.mtime(), meta.mtime_nsec()), (meta2.ino(), meta2.mtime(), meta2.mtime_nsec()));
    assert_eq!(entries(&dir), ["work-33554432.ext4"], "no temporary files left");
    fsck_clean(&first);
    let label = Command::new("e2label").arg(&first).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&label.stdout).trim(), "work");
    assert!(matches!(ensure_seed(&dir, 1000), Err(ImageError::InvalidSeedSize { size: 1000 })));
}

fn expect_error(opts: BuildOptions, check: impl Fn(&ImageError) -> bool, words: &[&str]) {
    let (dest, built, _) = build_into(Recipe::Tiny, &opts);
    let err = built.unwrap_err();
    assert!(check(&err), "{err:?}");
    for word in words {
        assert!(err.to_string().contains(word), "{err} lacks {word}");
    }
    assert!(entries(dest.path()).is_empty(), "scratch space is removed after {err}");
}

#[test]
fn clear_errors_for_bad_inputs() {
    if !root_or_skip("clear_errors_for_bad_inputs") {
        return;
    }
    let missing = PathBuf::from("/nonexistent/busybox");
    expect_error(
        BuildOptions { busybox: missing, ..opts() },
        |e| matches!(e, ImageError::BusyboxMissing(_)),
        &["/nonexistent/busybox", "busybox-static"],
    );
    expect_error(
        BuildOptions { busybox: "/bin/ls".into(), ..opts() },
        |e| matches!(e, ImageError::BusyboxNotStatic(_)),
        &["/bin/ls", "statically linked", "busybox-static"],
    );
    expect_error(BuildOptions::new("/bin/ls"), |e| matches!(e, ImageError::AgentNotStatic(_)), &["/bin/ls"]);
    expect_error(
        BuildOptions { size_bytes: Some(1 << 20), ..opts() },
        |e| matches!(e, ImageError::TooSmall { .. }),
        &["too small"],
    );
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("not-a-dir");
    File::create(&file).unwrap();
    let dest = tempfile::tempdir().unwrap();
    let err = build(Recipe::FromDir(file), &opts(), dest.path(), &mut |_| {}).unwrap_err();
    assert!(matches!(err, ImageError::BadSource { .. }), "{err:?}");
}
