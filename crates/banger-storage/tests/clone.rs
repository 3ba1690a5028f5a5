//! Clones real ext4 images: by reflink on a loop-mounted XFS, by sparse
//! copy anywhere, growing them with e2fsck and resize2fs. Tests that mount
//! need root: a SKIP without, a failure under CI.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use banger_storage::{clone_disk, device_mapper_available, disk_usage, grow_disk, probe_reflink, shared_bytes};
use banger_storage::{CowStrategy, StorageError};

const MIB: u64 = 1 << 20;

/// Whether the test may go on: mounting a loop XFS needs root (a SKIP
/// without; under CI a failure).
fn root_or_skip(test: &str) -> bool {
    banger_testkit::require(&format!("root, for {test}: mounting a loop XFS needs it"), banger_testkit::is_root())
}

fn sh(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A 512 MiB XFS with reflink, loop-mounted in a temporary directory; unmounted on drop.
struct XfsMount {
    dir: tempfile::TempDir,
    mounted: bool,
}

impl XfsMount {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut mount = XfsMount { dir, mounted: false };
        let image = mount.dir.path().join("xfs.img");
        File::create(&image).unwrap().set_len(512 * MIB).unwrap();
        sh("mkfs.xfs", &["-q", "-m", "reflink=1", image.to_str().unwrap()]);
        fs::create_dir(mount.path()).unwrap();
        sh("mount", &["-o", "loop", image.to_str().unwrap(), mount.path().to_str().unwrap()]);
        mount.mounted = true;
        mount
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    fn available(&self) -> u64 {
        let out = sh("df", &["-B1", "--output=avail", self.path().to_str().unwrap()]);
        out.lines().nth(1).unwrap().trim().parse().unwrap()
    }
}

impl Drop for XfsMount {
    fn drop(&mut self) {
        if self.mounted {
            let mnt = self.path();
            let ok = Command::new("umount").arg(&mnt).status().is_ok_and(|s| s.success());
            if !ok {
                let _ = Command::new("umount").arg("-l").arg(&mnt).status();
            }
        }
    }
}

/// A deterministic, incompressible byte stream.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A 64 MiB ext4 image holding 16 MiB of data, at `path`.
fn ext4_image(path: &Path) {
    let content = tempfile::tempdir().unwrap();
    fs::write(content.path().join("data"), noise(16 * MIB as usize, 7)).unwrap();
    File::create(path).unwrap().set_len(64 * MIB).unwrap();
    sh("mkfs.ext4", &["-q", "-F", "-d", content.path().to_str().unwrap(), path.to_str().unwrap()]);
}

fn block_count(image: &Path) -> u64 {
    let info = sh("tune2fs", &["-l", image.to_str().unwrap()]);
    let line = info.lines().find(|l| l.starts_with("Block count:")).unwrap();
    line.split(':').nth(1).unwrap().trim().parse().unwrap()
}

fn block_size(image: &Path) -> u64 {
    let info = sh("tune2fs", &["-l", image.to_str().unwrap()]);
    let line = info.lines().find(|l| l.starts_with("Block size:")).unwrap();
    line.split(':').nth(1).unwrap().trim().parse().unwrap()
}

fn fsck_clean(image: &Path) {
    let out = Command::new("e2fsck").args(["-f", "-n"]).arg(image).output().unwrap();
    assert!(out.status.success(), "e2fsck: {}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn reflink_clone_shares_extents_and_diverges_on_write() {
    if !root_or_skip("reflink_clone_shares_extents_and_diverges_on_write") {
        return;
    }
    let xfs = XfsMount::new();
    assert!(probe_reflink(&xfs.path()).unwrap());
    let base = xfs.path().join("base.ext4");
    ext4_image(&base);
    let original = fs::read(&base).unwrap();
    let before = xfs.available();

    let clone = xfs.path().join("vm.ext4");
    let info = clone_disk(CowStrategy::Reflink, &base, &clone, None).unwrap();
    assert_eq!(info.strategy, CowStrategy::Reflink);
    assert_eq!(info.disk, clone);
    assert_eq!(info.size_bytes, 64 * MIB);
    let after = xfs.available();
    assert!(before - after < 4 * MIB, "cloning used {} bytes of space", before - after);
    let shared = shared_bytes(&clone).unwrap();
    assert!(shared >= 16 * MIB, "only {shared} bytes are shared");
    assert!(sh("filefrag", &["-v", clone.to_str().unwrap()]).contains("shared"));
    fsck_clean(&clone);

    let file = OpenOptions::new().write(true).open(&clone).unwrap();
    file.write_all_at(&noise(MIB as usize, 99), 8 * MIB).unwrap();
    file.sync_all().unwrap();
    assert!(fs::read(&base).unwrap() == original, "writing the clone changed the base");
    assert!(fs::read(&clone).unwrap() != original);
}

#[test]
fn reflink_clone_grows_on_request() {
    if !root_or_skip("reflink_clone_grows_on_request") {
        return;
    }
    let xfs = XfsMount::new();
    let base = xfs.path().join("base.ext4");
    ext4_image(&base);
    let blocks = block_count(&base);
    let clone = xfs.path().join("vm.ext4");
    let info = clone_disk(CowStrategy::Reflink, &base, &clone, Some(128 * MIB)).unwrap();
    assert_eq!(info.size_bytes, 128 * MIB);
    assert_eq!(fs::metadata(&clone).unwrap().len(), 128 * MIB);
    assert_eq!(block_count(&clone), blocks * 2);
    assert_eq!(block_count(&base), blocks, "the base is untouched");
    fsck_clean(&clone);
    fsck_clean(&base);
}

#[test]
fn sparse_copy_keeps_holes() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("sparse.img");
    let file = File::create(&src).unwrap();
    file.set_len(100 * MIB).unwrap();
    let data = noise(MIB as usize, 3);
    file.write_all_at(&data, 50 * MIB).unwrap();
    // A block of zeros written as data must not become data in the copy either.
    file.write_all_at(&vec![0; MIB as usize], 10 * MIB).unwrap();
    file.sync_all().unwrap();
    assert!(disk_usage(&src).unwrap() >= 2 * MIB);

    let dest = dir.path().join("copy.img");
    let info = clone_disk(CowStrategy::SparseCopy, &src, &dest, None).unwrap();
    assert_eq!(info.size_bytes, 100 * MIB);
    assert_eq!(fs::metadata(&dest).unwrap().len(), 100 * MIB);
    let used = disk_usage(&dest).unwrap();
    assert!((MIB..=MIB + MIB / 4).contains(&used), "copy allocates {used} bytes");
    assert!(fs::read(&src).unwrap() == fs::read(&dest).unwrap(), "contents differ");
    assert_eq!(shared_bytes(&dest).unwrap(), 0);
}

#[test]
fn sparse_copy_grows_the_filesystem() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.ext4");
    ext4_image(&base);
    let blocks = block_count(&base);
    let dest = dir.path().join("vm.ext4");
    clone_disk(CowStrategy::SparseCopy, &base, &dest, Some(96 * MIB)).unwrap();
    assert_eq!(block_count(&dest), 96 * MIB / block_size(&dest));
    assert!(block_count(&dest) > blocks);
    fsck_clean(&dest);
    assert!(disk_usage(&dest).unwrap() < 48 * MIB, "the copy stays sparse");
}

#[test]
fn disks_never_shrink() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.ext4");
    ext4_image(&base);
    let dest = dir.path().join("vm.ext4");
    let err = clone_disk(CowStrategy::SparseCopy, &base, &dest, Some(32 * MIB)).unwrap_err();
    assert!(matches!(err, StorageError::Shrink { current, requested } if current == 64 * MIB && requested == 32 * MIB));
    assert!(err.to_string().contains("cannot shrink"), "{err}");
    assert!(!dest.exists());

    let err = grow_disk(&base, 63 * MIB).unwrap_err();
    assert!(matches!(err, StorageError::Shrink { .. }), "{err:?}");
    grow_disk(&base, 64 * MIB).unwrap();
    grow_disk(&base, 80 * MIB).unwrap();
    assert_eq!(block_count(&base), 80 * MIB / block_size(&base));
    fsck_clean(&base);
}

#[test]
fn failed_growth_removes_the_clone() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("not-ext4.img");
    fs::write(&src, noise(MIB as usize, 5)).unwrap();
    let dest = dir.path().join("vm.img");
    let err = clone_disk(CowStrategy::SparseCopy, &src, &dest, Some(2 * MIB)).unwrap_err();
    assert!(matches!(err, StorageError::Command(ref e) if e.line().starts_with("e2fsck -f -y")), "{err:?}");
    assert!(!err.to_string().contains('\n'), "one line: {err}");
    assert!(!dest.exists());
}

#[test]
fn existing_destinations_are_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("a.img");
    let dest = dir.path().join("b.img");
    fs::write(&src, b"source").unwrap();
    fs::write(&dest, b"precious").unwrap();
    let err = clone_disk(CowStrategy::SparseCopy, &src, &dest, None).unwrap_err();
    assert!(matches!(err, StorageError::DestExists(_)), "{err:?}");
    assert_eq!(fs::read(&dest).unwrap(), b"precious");
}

fn refuse_reflink_in(dir: &Path, fs_name: &str) {
    let src = dir.join("base.img");
    fs::write(&src, noise(MIB as usize, 1)).unwrap();
    assert!(!probe_reflink(dir).unwrap(), "{fs_name} claims reflink support");
    let dest = dir.join("vm.img");
    let err = clone_disk(CowStrategy::Reflink, &src, &dest, None).unwrap_err();
    assert!(matches!(err, StorageError::ReflinkUnsupported { .. }), "{fs_name}: {err:?}");
    assert!(err.to_string().contains("cannot make reflink copies"), "{err}");
    assert!(!dest.exists(), "{fs_name}: dest is removed");
}

#[test]
fn reflink_on_ext4_or_tmpfs_is_a_clear_error() {
    let on_root = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
    let fs_type = sh("stat", &["-f", "-c", "%T", on_root.path().to_str().unwrap()]);
    let ext4 = fs_type.trim().starts_with("ext2");
    let what = format!("an ext4 temporary directory ({} is {})", on_root.path().display(), fs_type.trim());
    if banger_testkit::require(&what, ext4) {
        refuse_reflink_in(on_root.path(), "ext4");
    }
    let shm = Path::new("/dev/shm");
    let tmpfs = shm.is_dir() && sh("stat", &["-f", "-c", "%T", "/dev/shm"]).trim() == "tmpfs";
    if banger_testkit::require("/dev/shm as a tmpfs", tmpfs) {
        let dir = tempfile::tempdir_in(shm).unwrap();
        refuse_reflink_in(dir.path(), "tmpfs");
    }
}

#[test]
fn dm_snapshot_refuses_without_device_mapper() {
    if !banger_testkit::require("a host without device-mapper", !device_mapper_available()) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("base.img");
    fs::write(&src, [0u8; 4096]).unwrap();
    let dest = dir.path().join("vm.cow");
    let err = clone_disk(CowStrategy::DmSnapshot, &src, &dest, None).unwrap_err();
    assert!(matches!(err, StorageError::DeviceMapperUnavailable), "{err:?}");
    assert!(err.to_string().contains("device-mapper is not available"), "{err}");
    assert!(!dest.exists());
}
