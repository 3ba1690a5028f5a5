//! The state database: one SQLite file under the state root, written only
//! by this daemon. Schema changes are numbered migrations tracked in
//! SQLite's `user_version`. It keeps a rollback journal, never WAL: WAL's
//! shared-memory file is mapped, and a page of it that a full filesystem
//! cannot back kills the process with SIGBUS. A write that finds the
//! filesystem full gives up the space reserve (see [`crate::space`]) and
//! is tried once more.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use banger_api::Operation;
use rusqlite::{params, Connection, OptionalExtension};

use crate::error::{Error, Result};
use crate::space::SpaceReserve;
use crate::vm::ledger::{EntryId, Resource};

/// Migrations in order; entry `i` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE kernels (
        name TEXT PRIMARY KEY,
        kernel_version TEXT,
        vmlinux_sha256 TEXT NOT NULL,
        source TEXT NOT NULL,
        size_bytes INTEGER NOT NULL,
        has_initrd INTEGER NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE TABLE operations (
        id TEXT PRIMARY KEY,
        body TEXT NOT NULL,
        created_at TEXT NOT NULL
    );",
    "CREATE TABLE images (
        name TEXT PRIMARY KEY,
        body TEXT NOT NULL
    );
    CREATE TABLE vms (
        name TEXT PRIMARY KEY,
        body TEXT NOT NULL
    );",
    // What each VM holds (see vm::ledger), in the order it was entered;
    // and VM rows in their own flat form.
    "CREATE TABLE vm_resources (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        vm TEXT NOT NULL,
        body TEXT NOT NULL
    );
    CREATE INDEX vm_resources_by_vm ON vm_resources (vm, id);",
    crate::vm::record::FLATTEN_LEGACY_ROWS,
];

/// How many operations the history keeps.
const OPERATIONS_KEPT: u32 = 1000;

/// The largest the persisted rollback journal is kept between writes.
const JOURNAL_SIZE_LIMIT: i64 = 1 << 20;

/// The open database.
pub struct Db {
    conn: Mutex<Connection>,
    path: PathBuf,
    reserve: Arc<SpaceReserve>,
}

/// A kernel's row, without the paths the store derives. It is also the
/// kernel's `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelRow {
    /// Name.
    pub name: String,
    /// Kernel release.
    pub kernel_version: Option<String>,
    /// SHA-256 of vmlinux.
    pub vmlinux_sha256: String,
    /// `pull:<url>` or `import:<path>`.
    pub source: String,
    /// Bytes on disk.
    pub size_bytes: u64,
    /// Whether it has an initramfs.
    pub has_initrd: bool,
    /// RFC 3339.
    pub created_at: String,
}

impl Db {
    /// Opens (creating if needed) the database and brings its schema up
    /// to date; `reserve` is given up when a write finds the disk full.
    pub fn open(path: &Path, reserve: Arc<SpaceReserve>) -> Result<Db> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let db = Db { conn: Mutex::new(conn), path: path.to_owned(), reserve };
        db.write(leave_wal)?;
        db.write(migrate)?;
        Ok(db)
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (every
        // write is one statement or a transaction), so the poison is moot.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs a write; if the disk is full, gives up the space reserve and
    /// runs it once more. SQLite has rolled back the failed attempt, and
    /// every write here is idempotent, so a second run is safe.
    fn write<T>(&self, work: impl Fn(&Connection) -> rusqlite::Result<T>) -> Result<T> {
        let conn = self.conn();
        match work(&conn) {
            Err(e) if crate::space::is_db_full(&e) && self.reserve.release() => work(&conn),
            done => done,
        }
        .map_err(|e| self.error(e))
    }

    fn error(&self, e: rusqlite::Error) -> Error {
        if crate::space::is_db_full(&e) {
            Error::no_space(self.path.clone(), e)
        } else {
            Error::Db(e)
        }
    }

    /// Inserts or replaces a kernel.
    pub fn put_kernel(&self, k: &KernelRow) -> Result<()> {
        self.write(|conn| {
            conn.execute(
                "INSERT OR REPLACE INTO kernels
                 (name, kernel_version, vmlinux_sha256, source, size_bytes, has_initrd, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![k.name, k.kernel_version, k.vmlinux_sha256, k.source, k.size_bytes, k.has_initrd, k.created_at],
            )
        })?;
        Ok(())
    }

    /// Every kernel, by name.
    pub fn kernels(&self) -> Result<Vec<KernelRow>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT name, kernel_version, vmlinux_sha256, source, size_bytes, has_initrd, created_at
             FROM kernels ORDER BY name",
        )?;
        let rows = stmt.query_map([], kernel_row)?.collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// One kernel.
    pub fn kernel(&self, name: &str) -> Result<Option<KernelRow>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT name, kernel_version, vmlinux_sha256, source, size_bytes, has_initrd, created_at
                 FROM kernels WHERE name = ?1",
                [name],
                kernel_row,
            )
            .optional()?)
    }

    /// Deletes a kernel's row; true if there was one.
    pub fn delete_kernel(&self, name: &str) -> Result<bool> {
        Ok(self.write(|conn| conn.execute("DELETE FROM kernels WHERE name = ?1", [name]))? > 0)
    }

    /// Records an operation's latest state.
    pub fn put_operation(&self, op: &Operation) -> Result<()> {
        let body = serde_json::to_string(op).map_err(|e| crate::error::Error::Internal(e.to_string()))?;
        self.write(|conn| {
            conn.execute(
                "INSERT OR REPLACE INTO operations (id, body, created_at) VALUES (?1, ?2, ?3)",
                params![op.id, body, op.created_at.to_string()],
            )?;
            // History is for people looking back, not an archive: keep the newest.
            conn.execute(
                "DELETE FROM operations WHERE rowid NOT IN
                 (SELECT rowid FROM operations ORDER BY created_at DESC, rowid DESC LIMIT ?1)",
                [OPERATIONS_KEPT],
            )
        })?;
        Ok(())
    }

    /// Inserts or replaces a JSON-bodied row (images, VMs) keyed by name.
    pub fn put_object<T: serde::Serialize>(&self, table: ObjectTable, name: &str, value: &T) -> Result<()> {
        let body = serde_json::to_string(value).map_err(|e| crate::error::Error::Internal(e.to_string()))?;
        let sql = format!("INSERT OR REPLACE INTO {} (name, body) VALUES (?1, ?2)", table.name());
        self.write(|conn| conn.execute(&sql, params![name, body]))?;
        Ok(())
    }

    /// One JSON-bodied row.
    pub fn object<T: serde::de::DeserializeOwned>(&self, table: ObjectTable, name: &str) -> Result<Option<T>> {
        let sql = format!("SELECT body FROM {} WHERE name = ?1", table.name());
        let body: Option<String> = self.conn().query_row(&sql, [name], |row| row.get(0)).optional()?;
        body.map(|b| {
            serde_json::from_str(&b)
                .map_err(|e| crate::error::Error::Internal(format!("corrupt {} row {name}: {e}", table.name())))
        })
        .transpose()
    }

    /// Every JSON-bodied row of a table, by name.
    pub fn objects<T: serde::de::DeserializeOwned>(&self, table: ObjectTable) -> Result<Vec<T>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!("SELECT body FROM {} ORDER BY name", table.name()))?;
        let bodies = stmt.query_map([], |row| row.get::<_, String>(0))?.collect::<Result<Vec<_>, _>>()?;
        bodies
            .iter()
            .map(|b| {
                serde_json::from_str(b)
                    .map_err(|e| crate::error::Error::Internal(format!("corrupt {} row: {e}", table.name())))
            })
            .collect()
    }

    /// Deletes a JSON-bodied row; true if there was one.
    pub fn delete_object(&self, table: ObjectTable, name: &str) -> Result<bool> {
        let sql = format!("DELETE FROM {} WHERE name = ?1", table.name());
        Ok(self.write(|conn| conn.execute(&sql, [name]))? > 0)
    }

    /// One recorded operation.
    pub fn operation(&self, id: &str) -> Result<Option<Operation>> {
        let body: Option<String> =
            self.conn().query_row("SELECT body FROM operations WHERE id = ?1", [id], |row| row.get(0)).optional()?;
        Ok(body.and_then(|b| serde_json::from_str(&b).ok()))
    }

    /// Recorded operations, newest first, at most `limit`.
    pub fn operations(&self, limit: u32) -> Result<Vec<Operation>> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT body FROM operations ORDER BY created_at DESC, rowid DESC LIMIT ?1")?;
        let bodies = stmt.query_map([limit], |row| row.get::<_, String>(0))?.collect::<Result<Vec<_>, _>>()?;
        Ok(bodies.iter().filter_map(|b| serde_json::from_str(b).ok()).collect())
    }
}

impl Db {
    /// Enters a resource in a VM's ledger.
    pub fn record_resource(&self, vm: &str, resource: &Resource) -> Result<EntryId> {
        let body = to_json(resource)?;
        self.write(|conn| {
            conn.execute("INSERT INTO vm_resources (vm, body) VALUES (?1, ?2)", params![vm, body])?;
            Ok(EntryId(conn.last_insert_rowid()))
        })
    }

    /// Rewrites a ledger entry (a VMM's process, once known).
    pub fn update_resource(&self, id: EntryId, resource: &Resource) -> Result<()> {
        let body = to_json(resource)?;
        self.write(|conn| conn.execute("UPDATE vm_resources SET body = ?2 WHERE id = ?1", params![id.0, body]))?;
        Ok(())
    }

    /// A VM's ledger, oldest entry first.
    pub fn resources(&self, vm: &str) -> Result<Vec<(EntryId, Resource)>> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT id, body FROM vm_resources WHERE vm = ?1 ORDER BY id")?;
        let rows = stmt
            .query_map([vm], |row| Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter()
            .map(|(id, body)| {
                let resource = serde_json::from_str(&body)
                    .map_err(|e| crate::error::Error::Internal(format!("corrupt ledger entry {id} of {vm}: {e}")))?;
                Ok((EntryId(id), resource))
            })
            .collect()
    }

    /// Removes a ledger entry: what it named is gone.
    pub fn forget_resource(&self, id: EntryId) -> Result<()> {
        self.write(|conn| conn.execute("DELETE FROM vm_resources WHERE id = ?1", [id.0]))?;
        Ok(())
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| crate::error::Error::Internal(e.to_string()))
}

/// Tables whose rows are a name and a JSON body.
#[derive(Debug, Clone, Copy)]
pub enum ObjectTable {
    /// `images`.
    Images,
    /// `vms`.
    Vms,
}

impl ObjectTable {
    fn name(self) -> &'static str {
        match self {
            ObjectTable::Images => "images",
            ObjectTable::Vms => "vms",
        }
    }
}

fn kernel_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<KernelRow> {
    Ok(KernelRow {
        name: row.get(0)?,
        kernel_version: row.get(1)?,
        vmlinux_sha256: row.get(2)?,
        source: row.get(3)?,
        size_bytes: row.get(4)?,
        has_initrd: row.get(5)?,
        created_at: row.get(6)?,
    })
}

/// Puts the database in rollback-journal mode, leaving WAL if an older
/// daemon left it there. The first access is made in exclusive locking
/// mode so that leaving WAL keeps its index in memory and never maps the
/// `-shm` file; normal locking resumes after (so tests can look inside).
fn leave_wal(conn: &Connection) -> rusqlite::Result<()> {
    conn.pragma_update(None, "locking_mode", "EXCLUSIVE")?;
    // PERSIST keeps the journal's blocks between writes, so a small write
    // on a full filesystem often needs no new space.
    let _: String = conn.pragma_update_and_check(None, "journal_mode", "PERSIST", |row| row.get(0))?;
    conn.pragma_update(None, "journal_size_limit", JOURNAL_SIZE_LIMIT)?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "locking_mode", "NORMAL")?;
    // Normal locking takes effect at the next access, which lets go of the lock.
    conn.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(()))
}

fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let version: usize = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i + 1)?;
        tx.commit()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(path: &Path) -> Db {
        Db::open(path, Arc::new(SpaceReserve::new(path.parent().unwrap()))).unwrap()
    }

    fn row(name: &str) -> KernelRow {
        KernelRow {
            name: name.into(),
            kernel_version: Some("6.1".into()),
            vmlinux_sha256: "ab".into(),
            source: "import:/x".into(),
            size_bytes: 3,
            has_initrd: true,
            created_at: "2026-01-01T00:00:00Z".into(),
        }
    }

    #[test]
    fn migrates_once_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("banger.db");
        let db = open(&path);
        db.put_kernel(&row("b")).unwrap();
        db.put_kernel(&row("a")).unwrap();
        drop(db);
        let db = open(&path);
        let names: Vec<_> = db.kernels().unwrap().into_iter().map(|k| k.name).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(db.kernel("a").unwrap(), Some(row("a")));
        assert!(db.delete_kernel("a").unwrap());
        assert!(!db.delete_kernel("a").unwrap());
        assert_eq!(db.kernel("a").unwrap(), None);
    }

    /// Rows written while the API's timestamps, sources, disk strategy and
    /// operation results were plain strings and JSON still load, typed.
    #[test]
    fn rows_from_before_typed_fields_still_load() {
        use banger_api::{DiskStrategy, ImageRecipe, ImageSource, OperationResult};
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir.path().join("banger.db"));
        let vm = serde_json::json!({
            "name": "dev", "state": "stopped", "image": "tiny", "kernel": "k", "vmm": "qemu", "kvm": false,
            "cpus": 1, "memory_mib": 256, "disk_size_bytes": 4096, "work_disk_bytes": null,
            "disk_strategy": "dm_snapshot", "pid": null, "agent_version": null, "created_at": "2026-01-01T00:00:00Z"
        });
        let mut record = vm.clone();
        record["init"] = serde_json::json!("/init");
        record.as_object_mut().unwrap().remove("pid");
        db.put_object(ObjectTable::Vms, "dev", &record).unwrap();
        let record: crate::vm::VmRecord = db.object(ObjectTable::Vms, "dev").unwrap().unwrap();
        let api = record.to_api(crate::vm::record::Live::default());
        assert_eq!(api.disk_strategy, DiskStrategy::DmSnapshot);
        assert_eq!(api.created_at.to_string(), "2026-01-01T00:00:00Z");

        let image = serde_json::json!({
            "name": "tiny", "kernel": "k", "source": "recipe:tiny", "init": "/init", "size_bytes": 1,
            "rootfs_path": "/s/rootfs.ext4", "created_at": "2026-01-01T00:00:00Z"
        });
        db.put_object(ObjectTable::Images, "tiny", &image).unwrap();
        let loaded: banger_api::Image = db.object(ObjectTable::Images, "tiny").unwrap().unwrap();
        assert_eq!(loaded.source, ImageSource::Recipe(ImageRecipe::Tiny));

        let op = serde_json::json!({
            "id": "op-1", "kind": "vm_create", "target": "dev", "state": "succeeded",
            "progress": {"step": "done", "steps_done": 3, "steps_total": 3, "bytes_done": 0, "bytes_total": null},
            "error": null, "result": vm, "created_at": "2026-01-01T00:00:00Z", "finished_at": "2026-01-01T00:00:09Z"
        });
        db.conn()
            .execute(
                "INSERT INTO operations (id, body, created_at) VALUES ('op-1', ?1, '2026-01-01T00:00:00Z')",
                [op.to_string()],
            )
            .unwrap();
        let loaded = db.operation("op-1").unwrap().expect("the old operation row decodes");
        assert!(matches!(loaded.result, Some(OperationResult::Vm(ref v)) if v.name == "dev"), "{:?}", loaded.result);
        let mut expected = op;
        // The fields added since.
        expected["result"]["agent"] = serde_json::Value::Null;
        expected["result"]["pause_reason"] = serde_json::Value::Null;
        assert_eq!(serde_json::to_value(&loaded).unwrap(), expected, "and re-encodes to the same body");
    }
}
