//! `banger vm cp` through the built CLI against the real `bangerd` binary
//! and a real guest under QEMU: a tree with modes, owners, times, long
//! names and symlinks there and back, `docker cp`'s target rules, bad
//! paths refused with nothing left on either side, a copy in killed
//! midway leaving nothing in the guest and one out interrupted leaving
//! nothing on the host, and a gigabyte of random data both ways with the
//! daemon's peak memory measured.

mod support;

use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::{eventually, guest, text, Guest, TEST_TIMEOUT};

/// The daemon's peak resident memory may not pass this during the copies.
const PEAK_RSS_LIMIT_MIB: u64 = 200;

#[tokio::test(flavor = "multi_thread")]
async fn cp_round_trips_trees_and_a_gigabyte() {
    banger_testkit::with_timeout(TEST_TIMEOUT, body()).await;
}

async fn body() {
    let Some(g) = guest("c", 256, Some(3 << 30)).await else { return };
    let host = tempfile::tempdir().unwrap();
    tree_round_trip(&g, host.path()).await;
    targets_and_refusals(&g, host.path()).await;
    a_gigabyte(&g, host.path()).await;
    g.remove().await;
}

/// A tree of files with odd modes and owners, a read-only directory, an
/// empty directory, a long name, and relative, absolute and dangling links.
fn make_tree(root: &Path) {
    fs::create_dir_all(root.join("sub/empty")).unwrap();
    fs::create_dir_all(root.join("ro")).unwrap();
    let file = |path: &str, data: &[u8], mode: u32| {
        fs::write(root.join(path), data).unwrap();
        fs::set_permissions(root.join(path), fs::Permissions::from_mode(mode)).unwrap();
    };
    file("a.txt", b"alpha\n", 0o640);
    file("sub/run.sh", b"#!/bin/sh\necho run\n", 0o755);
    file("sub/secret", b"s", 0o600);
    file("setuid", b"", 0o4755);
    file("with space", b"spaced", 0o644);
    file(&"n".repeat(150), b"long", 0o644);
    file("ro/inside", b"inside", 0o444);
    fs::set_permissions(root.join("ro"), fs::Permissions::from_mode(0o555)).unwrap();
    std::os::unix::fs::chown(root.join("sub/secret"), Some(1234), Some(2345)).unwrap();
    std::os::unix::fs::lchown(root.join("sub"), Some(1000), Some(1000)).unwrap();
    std::os::unix::fs::symlink("../a.txt", root.join("sub/rel-link")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", root.join("abs-link")).unwrap();
    std::os::unix::fs::symlink("nowhere", root.join("dangling")).unwrap();
    std::os::unix::fs::lchown(root.join("dangling"), Some(77), Some(88)).unwrap();
    let old = fs::File::options().write(true).open(root.join("a.txt")).unwrap();
    old.set_modified(std::time::UNIX_EPOCH + Duration::from_secs(1_000_000_000)).unwrap();
}

/// Every entry below `root` with what must survive a copy: type, mode,
/// owner, mtime (not for directories, whose times the copy's own writes
/// may not move but a reader's clock might), link target and contents.
fn describe(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(relative) = stack.pop() {
        let path = root.join(&relative);
        let meta = fs::symlink_metadata(&path).unwrap();
        let kind = meta.file_type();
        let mut line = format!("{} {:o} {}:{}", relative.display(), meta.mode() & 0o7777, meta.uid(), meta.gid());
        if kind.is_symlink() {
            line += &format!(" -> {}", fs::read_link(&path).unwrap().display());
        } else if kind.is_file() {
            line += &format!(" {} {:?}", meta.mtime(), fs::read(&path).unwrap());
        } else if kind.is_dir() {
            line += " dir";
            let mut names: Vec<_> = fs::read_dir(&path).unwrap().map(|e| e.unwrap().file_name()).collect();
            names.sort();
            stack.extend(names.into_iter().map(|n| relative.join(n)));
        }
        out.push(line);
    }
    out.sort();
    out
}

async fn tree_round_trip(g: &Guest, host: &Path) {
    let tree = host.join("tree");
    make_tree(&tree);
    let copied = g.ok(&["vm", "cp", tree.to_str().unwrap(), "c:/work"]).await;
    assert!(copied.starts_with("copied 14 entries"), "{copied}");
    assert!(copied.trim_end().ends_with("to c:/work"), "{copied}");
    // In the guest as on the host: owners, modes, times and links.
    let stat = g
        .exec(&[
            "stat",
            "-c",
            "%n %a %u:%g %Y %N",
            "/work/tree/sub/secret",
            "/work/tree/a.txt",
            "/work/tree/setuid",
            "/work/tree/sub/rel-link",
        ])
        .await;
    let lines: Vec<&str> = stat.lines().collect();
    assert!(lines[0].starts_with("/work/tree/sub/secret 600 1234:2345 "), "{stat}");
    assert!(lines[1].starts_with("/work/tree/a.txt 640 0:0 1000000000 "), "{stat}");
    assert!(lines[2].starts_with("/work/tree/setuid 4755 "), "{stat}");
    assert!(lines[3].ends_with("-> '../a.txt'"), "{stat}");
    assert_eq!(g.exec(&["cat", "/work/tree/ro/inside"]).await, "inside");

    let back = host.join("back");
    fs::create_dir(&back).unwrap();
    g.ok(&["vm", "cp", "c:/work/tree", back.to_str().unwrap()]).await;
    assert_eq!(describe(&back.join("tree")), describe(&tree), "the tree came back as it went");
    // Into an existing directory the entry keeps its name; otherwise the
    // destination is its new name, in the guest as on the host.
    g.ok(&["vm", "cp", tree.join("a.txt").to_str().unwrap(), "c:/work/renamed.txt"]).await;
    assert_eq!(g.exec(&["cat", "/work/renamed.txt"]).await, "alpha\n");
    let renamed = back.join("again.txt");
    g.ok(&["vm", "cp", "c:/work/renamed.txt", renamed.to_str().unwrap()]).await;
    assert_eq!(fs::read(&renamed).unwrap(), b"alpha\n");
    g.ok(&["vm", "cp", "c:/work/tree/sub/rel-link", back.to_str().unwrap()]).await;
    assert_eq!(fs::read_link(back.join("rel-link")).unwrap(), Path::new("../a.txt"), "a link is copied as a link");
    // Read-only directories cannot stop the temporary directory's removal.
    for dir in [tree.join("ro"), back.join("tree/ro")] {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
    }
}

/// Bad paths are refused before anything moves, or undone: nothing is
/// left on either side.
async fn targets_and_refusals(g: &Guest, host: &Path) {
    let before_guest = g.exec(&["ls", "-a", "/work"]).await;
    let out = host.join("refusals");
    fs::create_dir(&out).unwrap();
    let a_txt = host.join("tree/a.txt");
    let cases: &[(&[&str], Option<i32>, &str)] = &[
        (&["vm", "cp", "/no/such/source", "c:/work"], Some(1), "/no/such/source"),
        (&["vm", "cp", "c:/work/renamed.txt", "/no/such/dir/x"], Some(1), "/no/such/dir does not exist"),
        (&["vm", "cp", "c:work/renamed.txt", "/tmp"], Some(1), "must be absolute"),
        (&["vm", "cp", "c:/no/such/file", out.to_str().unwrap()], Some(3), "/no/such/file"),
        (&["vm", "cp", a_txt.to_str().unwrap(), "c:/no/such/dir/x"], Some(3), "/no/such/dir"),
        (&["vm", "cp", "c:/a", "d:/b"], Some(1), "both paths name a guest"),
        (&["vm", "cp", "nope:/x", out.to_str().unwrap()], Some(3), "nope"),
    ];
    for (args, code, says) in cases {
        let refused = g.banger(args).await;
        assert_eq!(refused.status.code(), *code, "{args:?}: {}", text(&refused.stderr));
        assert!(text(&refused.stderr).contains(says), "{args:?}: {}", text(&refused.stderr));
    }
    assert_eq!(fs::read_dir(&out).unwrap().count(), 0, "nothing is left on the host");
    assert_eq!(g.exec(&["ls", "-a", "/work"]).await, before_guest, "nothing is left in the guest");
}

fn sha256(path: &Path) -> String {
    use sha2::Digest;
    let mut file = fs::File::open(path).unwrap();
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// 1 GiB of random data in and out, whole, with the daemon's peak RSS
/// bounded; and a copy killed midway leaves nothing in the guest.
async fn a_gigabyte(g: &Guest, host: &Path) {
    let big = host.join("big");
    let written = std::process::Command::new("dd")
        .args(["if=/dev/urandom", &format!("of={}", big.display()), "bs=1M", "count=1024", "status=none"])
        .status()
        .unwrap();
    assert!(written.success());
    assert_eq!(fs::metadata(&big).unwrap().blocks() * 512, 1 << 30, "real data, not a sparse file");
    let digest = sha256(&big);
    let pid = g.daemon.pid();
    // The peak from here on: the image build and the boot do not count.
    fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("reset the daemon's peak RSS");
    let baseline = g.daemon.peak_rss_kib();

    let before = g.exec(&["ls", "-a", "/work"]).await;
    let mut killed = tokio::process::Command::new(env!("CARGO_BIN_EXE_banger"))
        .arg("--socket")
        .arg(&g.socket)
        .args(["vm", "cp", big.to_str().unwrap(), "c:/work/killed"])
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Midway: once the guest has begun writing it.
    eventually(Duration::from_secs(60), "the guest writing the copy", || async {
        (g.exec(&["ls", "-a", "/work"]).await != before).then_some(())
    })
    .await;
    killed.kill().await.unwrap();
    eventually(Duration::from_secs(30), "the killed copy undone in the guest", || async {
        (g.exec(&["ls", "-a", "/work"]).await == before).then_some(())
    })
    .await;

    let started = Instant::now();
    g.ok(&["vm", "cp", big.to_str().unwrap(), "c:/work/big"]).await;
    let copy_in = started.elapsed();
    let in_peak = g.daemon.peak_rss_kib();
    let size = g.exec(&["stat", "-c", "%s", "/work/big"]).await;
    assert_eq!(size.trim(), (1u64 << 30).to_string());

    let out = host.join("out");
    fs::create_dir(&out).unwrap();
    let started = Instant::now();
    g.ok(&["vm", "cp", "c:/work/big", out.to_str().unwrap()]).await;
    let copy_out = started.elapsed();
    let peak = g.daemon.peak_rss_kib();
    assert_eq!(sha256(&out.join("big")), digest, "the gigabyte came back whole");

    // Ctrl-C midway through a copy out leaves nothing on the host.
    let interrupted = host.join("interrupted");
    fs::create_dir(&interrupted).unwrap();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_banger"))
        .arg("--socket")
        .arg(&g.socket)
        .args(["vm", "cp", "c:/work/big", interrupted.to_str().unwrap()])
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    eventually(Duration::from_secs(60), "the copy out staged on the host", || async {
        fs::read_dir(&interrupted).unwrap().next().is_some().then_some(())
    })
    .await;
    let pid = rustix::process::Pid::from_raw(child.id().unwrap() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    let output = child.wait_with_output().await.unwrap();
    assert_eq!(output.status.code(), Some(130), "{}", text(&output.stderr));
    assert_eq!(fs::read_dir(&interrupted).unwrap().count(), 0, "nothing is left of the interrupted copy");
    let rate = |d: Duration| 1024.0 / d.as_secs_f64();
    eprintln!(
        "cp 1 GiB: in {copy_in:.1?} ({:.1} MiB/s), out {copy_out:.1?} ({:.1} MiB/s); bangerd peak RSS {} MiB before, {} MiB after the copy in, {} MiB after the copy out",
        rate(copy_in),
        rate(copy_out),
        baseline >> 10,
        in_peak >> 10,
        peak >> 10
    );
    assert!(peak >> 10 < PEAK_RSS_LIMIT_MIB, "bangerd's peak RSS {} MiB passed {PEAK_RSS_LIMIT_MIB} MiB", peak >> 10);
}
