//! The kernel store: `<state>/kernels/<name>/{vmlinux,initrd.img,modules/,manifest.json}`
//! on disk, a row per kernel in the database, per-name locks, and the
//! staging directories new kernels are built in before an atomic rename.

use std::collections::HashSet;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use banger_api::{Kernel, KernelSource};
use sha2::{Digest, Sha256};

use crate::db::{Db, KernelRow};
use crate::error::{Error, Result};
use crate::staging::{NameLock, NameLocks, Staging};

/// Holds a kernel name against concurrent pulls, imports and removals.
pub type KernelLock = NameLock;

/// The kernel store.
pub struct KernelStore {
    root: PathBuf,
    db: Arc<Db>,
    locks: NameLocks,
}

impl KernelStore {
    /// Opens the store under `<state>/kernels`, removing what crashed work
    /// left behind and reconciling disk with the database.
    pub fn open(state_dir: &Path, db: Arc<Db>) -> Result<KernelStore> {
        let root = state_dir.join("kernels");
        fs::create_dir_all(&root).map_err(Error::io("cannot create", &root))?;
        let store = KernelStore { root, db, locks: NameLocks::new("kernel") };
        store.reconcile()?;
        Ok(store)
    }

    /// The directory a kernel lives in.
    pub fn dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Takes the per-name lock, or says the kernel is busy.
    pub fn lock(&self, name: &str) -> Result<KernelLock> {
        self.locks.try_lock(name)
    }

    /// Takes the per-name lock, waiting while another operation holds it.
    pub async fn lock_wait(&self, name: &str) -> KernelLock {
        self.locks.lock(name).await
    }

    /// Refuses to go on if `name` is stored and `force` is not set.
    pub fn check_replace(&self, name: &str, force: bool) -> Result<()> {
        if !force && self.db.kernel(name)?.is_some() {
            return Err(Error::AlreadyExists {
                kind: "kernel",
                name: name.to_owned(),
                hint: "; use --force to replace it",
            });
        }
        Ok(())
    }

    /// A fresh, empty staging directory for building kernel `name`.
    pub fn staging(&self, name: &str, op_id: &str) -> Result<Staging> {
        Staging::create(&self.root, name, op_id)
    }

    /// Moves a finished staging directory into place as kernel `name`,
    /// replacing any kernel of that name, and records it. `vmlinux_sha256`
    /// is the digest when whoever wrote the vmlinux computed it; otherwise
    /// the file is read for it. `_lock` proves the caller holds the name.
    pub fn install(
        &self,
        _lock: &KernelLock,
        name: &str,
        staging: Staging,
        kernel_version: Option<String>,
        vmlinux_sha256: Option<String>,
        source: KernelSource,
    ) -> Result<Kernel> {
        let vmlinux = staging.path().join("vmlinux");
        let vmlinux_sha256 = match vmlinux_sha256 {
            Some(digest) => digest,
            None => sha256_file(&vmlinux)?,
        };
        let row = KernelRow {
            name: name.to_owned(),
            kernel_version,
            vmlinux_sha256,
            source: source.to_string(),
            size_bytes: dir_size(staging.path())?,
            has_initrd: staging.path().join("initrd.img").is_file(),
            created_at: crate::operations::now_rfc3339(),
        };
        write_manifest(staging.path(), &row)?;
        staging.install(&self.dir(name), || self.db.put_kernel(&row))?;
        self.to_api(row)
    }

    /// Every stored kernel.
    pub fn list(&self) -> Result<Vec<Kernel>> {
        self.db.kernels()?.into_iter().map(|row| self.to_api(row)).collect()
    }

    /// One stored kernel.
    pub fn get(&self, name: &str) -> Result<Kernel> {
        self.db
            .kernel(name)?
            .map(|row| self.to_api(row))
            .transpose()?
            .ok_or_else(|| Error::NotFound { kind: "kernel", name: name.to_owned() })
    }

    /// Removes a kernel, files and row.
    pub fn remove(&self, name: &str) -> Result<()> {
        let _lock = self.lock(name)?;
        self.get(name)?;
        let dir = self.dir(name);
        crate::staging::remove_dir(&dir, || self.db.delete_kernel(name).map(drop))
    }

    fn to_api(&self, row: KernelRow) -> Result<Kernel> {
        let dir = self.dir(&row.name);
        let created_at = row
            .created_at
            .parse()
            .map_err(|e| Error::Internal(format!("kernel {}: corrupt created_at: {e}", row.name)))?;
        Ok(Kernel {
            vmlinux_path: dir.join("vmlinux").display().to_string(),
            initrd_path: row.has_initrd.then(|| dir.join("initrd.img").display().to_string()),
            name: row.name,
            kernel_version: row.kernel_version,
            vmlinux_sha256: row.vmlinux_sha256,
            source: KernelSource::from(row.source.as_str()),
            size_bytes: row.size_bytes,
            has_initrd: row.has_initrd,
            created_at,
        })
    }

    /// Brings disk and database into agreement after a crash or a hand edit:
    /// staging leftovers go, rows without files go, and kernel directories
    /// with a manifest but no row are adopted.
    fn reconcile(&self) -> Result<()> {
        let entries = fs::read_dir(&self.root).map_err(Error::io("cannot read", &self.root))?;
        let mut on_disk = HashSet::new();
        for entry in entries {
            let entry = entry.map_err(Error::io("cannot read", &self.root))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if name.starts_with(crate::staging::TEMP_PREFIX) {
                tracing::info!(path = %path.display(), "removing leftover staging directory");
                fs::remove_dir_all(&path).map_err(Error::io("cannot remove", &path))?;
            } else if banger_kernel::bundle::is_elf(&path.join("vmlinux")) {
                on_disk.insert(name);
            }
        }
        for row in self.db.kernels()? {
            if !on_disk.remove(&row.name) {
                tracing::warn!(kernel = %row.name, "kernel files are gone; forgetting it");
                self.db.delete_kernel(&row.name)?;
            }
        }
        for name in on_disk {
            match read_manifest(&self.dir(&name)) {
                Some(row) if row.name == name => {
                    tracing::info!(kernel = %name, "adopting kernel found on disk");
                    self.db.put_kernel(&row)?;
                }
                _ => {
                    tracing::warn!(kernel = %name, "kernel directory without a valid manifest; leaving it alone")
                }
            }
        }
        Ok(())
    }
}

fn write_manifest(dir: &Path, row: &KernelRow) -> Result<()> {
    let path = dir.join("manifest.json");
    let text = serde_json::to_string_pretty(row).map_err(|e| Error::Internal(e.to_string()))?;
    fs::write(&path, text + "\n").map_err(Error::io("cannot write", &path))
}

fn read_manifest(dir: &Path) -> Option<KernelRow> {
    serde_json::from_slice(&fs::read(dir.join("manifest.json")).ok()?).ok()
}

/// SHA-256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = fs::File::open(path).map_err(Error::io("cannot open", path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(Error::io("cannot read", path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes of every regular file under `dir`, not following symlinks.
fn dir_size(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in fs::read_dir(dir).map_err(Error::io("cannot read", dir))? {
        let entry = entry.map_err(Error::io("cannot read", dir))?;
        let meta = entry.metadata().map_err(Error::io("cannot stat", entry.path()))?;
        if meta.is_dir() {
            total += dir_size(&entry.path())?;
        } else if meta.is_file() {
            total += meta.len();
        }
    }
    Ok(total)
}
