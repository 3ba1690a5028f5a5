//! A filesystem in a file, loop-mounted for one test: XFS for reflink
//! clones, a tiny ext4 for a full disk. Unmounted and removed on drop,
//! even when the test fails.

use std::path::PathBuf;
use std::process::Command;

/// A mounted loop filesystem.
pub struct LoopFs {
    dir: tempfile::TempDir,
}

impl LoopFs {
    /// Makes a `size_mib` filesystem of type `fs` ("xfs" or "ext4") and
    /// mounts it; `None` when not running as root (a SKIP, or a failure
    /// under CI: [`crate::require`]).
    pub fn mount(fs: &str, size_mib: u64) -> Option<LoopFs> {
        if !crate::require(&format!("root, to mount a loop {fs} filesystem"), crate::is_root()) {
            return None;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let image = dir.path().join("fs.img");
        std::fs::File::create(&image).unwrap().set_len(size_mib << 20).unwrap();
        let mkfs = match fs {
            "xfs" => run("mkfs.xfs", &["-q", "-m", "reflink=1", image.to_str().unwrap()]),
            _ => run("mkfs.ext4", &["-q", "-F", image.to_str().unwrap()]),
        };
        assert!(mkfs, "mkfs.{fs} failed (is it installed? scripts/setup-host)");
        let mount = dir.path().join("mnt");
        std::fs::create_dir(&mount).unwrap();
        assert!(run("mount", &["-o", "loop", image.to_str().unwrap(), mount.to_str().unwrap()]), "loop mount failed");
        Some(LoopFs { dir })
    }

    /// Where it is mounted.
    pub fn path(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    /// Fills it: writes `name` (under the mount) until no byte more fits,
    /// even for root, and returns its path; remove it to free the space.
    pub fn fill(&self, name: &str) -> PathBuf {
        use std::io::Write;
        let path = self.path().join(name);
        let mut file = std::fs::File::options().create(true).append(true).open(&path).expect("open the filler");
        for chunk in [1 << 20, 64 << 10, 4 << 10, 1 << 10, 1] {
            let bytes = vec![0xa5u8; chunk];
            while file.write_all(&bytes).and_then(|()| file.sync_data()).is_ok() {}
        }
        path
    }

    /// Bytes free on it.
    pub fn free_bytes(&self) -> u64 {
        let out = Command::new("df").args(["-B1", "--output=avail"]).arg(self.path()).output().unwrap();
        String::from_utf8_lossy(&out.stdout).lines().nth(1).unwrap().trim().parse().unwrap()
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let mount = self.path();
        if !run("umount", &[mount.to_str().unwrap()]) {
            run("umount", &["-l", mount.to_str().unwrap()]);
        }
    }
}

fn run(program: &str, args: &[&str]) -> bool {
    Command::new(program).args(args).status().is_ok_and(|s| s.success())
}
