//! The image store: `<state>/images/<name>/{rootfs.ext4,manifest.json}`, a
//! row per image, and the build and register operations that fill it.

pub mod agent_binary;
pub mod seeds;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use banger_api::{Image, ImageBuildRequest, ImageRecipe, ImageRegisterRequest, ImageSource, Timestamp};
use banger_image::{BuildOptions, Recipe, ROOTFS_FILE};

use crate::caller::{files, Caller};
use crate::db::{Db, ObjectTable};
use crate::error::{Error, Result};
use crate::operations::OperationHandle;
use crate::staging::{NameLock, NameLocks, Staging};
use crate::Daemon;

/// The image store.
pub struct ImageStore {
    root: PathBuf,
    db: Arc<Db>,
    locks: NameLocks,
    /// The work-disk seeds.
    pub seeds: seeds::Seeds,
}

impl ImageStore {
    /// Opens the store, removing half-built images a crash left behind.
    pub fn open(state_dir: &Path, db: Arc<Db>) -> Result<ImageStore> {
        let root = state_dir.join("images");
        std::fs::create_dir_all(&root).map_err(Error::io("cannot create", &root))?;
        crate::staging::sweep(&root)?;
        for image in db.objects::<Image>(ObjectTable::Images)? {
            if !Path::new(&image.rootfs_path).is_file() {
                tracing::warn!(image = %image.name, "image file is gone; forgetting it");
                db.delete_object(ObjectTable::Images, &image.name)?;
            }
        }
        let seeds = seeds::Seeds::new(root.join(".seeds"));
        Ok(ImageStore { root, db, locks: NameLocks::new("image"), seeds })
    }

    /// Every image.
    pub fn list(&self) -> Result<Vec<Image>> {
        self.db.objects(ObjectTable::Images)
    }

    /// One image.
    pub fn get(&self, name: &str) -> Result<Image> {
        self.db
            .object(ObjectTable::Images, name)?
            .ok_or_else(|| Error::NotFound { kind: "image", name: name.to_owned() })
    }

    /// Takes the name for a build or register, refusing to replace an image unless `force`.
    pub fn claim(&self, name: &str, force: bool) -> Result<NameLock> {
        crate::vm::validate_name(name)?;
        let lock = self.locks.try_lock(name)?;
        if !force && self.db.object::<Image>(ObjectTable::Images, name)?.is_some() {
            return Err(Error::AlreadyExists {
                kind: "image",
                name: name.to_owned(),
                hint: "; use --force to replace it",
            });
        }
        Ok(lock)
    }

    /// Removes an image. VMs keep their own cloned disks.
    pub fn remove(&self, name: &str) -> Result<()> {
        let _lock = self.locks.try_lock(name)?;
        self.get(name)?;
        crate::staging::remove_dir(&self.root.join(name), || self.db.delete_object(ObjectTable::Images, name).map(drop))
    }

    fn install(&self, _lock: &NameLock, staging: Staging, image: &Image) -> Result<()> {
        let manifest = staging.path().join("manifest.json");
        let text = serde_json::to_string_pretty(image).map_err(|e| Error::Internal(e.to_string()))?;
        std::fs::write(&manifest, text + "\n").map_err(Error::io("cannot write", &manifest))?;
        staging.install(&self.root.join(&image.name), || self.db.put_object(ObjectTable::Images, &image.name, image))
    }
}

/// Removes the work-disk seeds no VM's work disk has the size of.
pub async fn prune_seeds(daemon: &Arc<Daemon>) -> Result<banger_api::ImagePruneReport> {
    let daemon = Arc::clone(daemon);
    crate::vm::ledger::blocking(move || {
        // A create saves its record (with its work disk's size) before it
        // asks for the seed, so a seed about to be cloned is in use here.
        let in_use = daemon.vm_records()?.iter().filter_map(|r| r.work_disk_bytes).collect();
        let pruned = daemon.images.seeds.prune(&in_use)?;
        Ok(banger_api::ImagePruneReport { removed: pruned.files, freed_bytes: pruned.freed_bytes })
    })
    .await
}

/// Checks a build request before its operation starts.
pub fn validate_build(request: &mut ImageBuildRequest) -> Result<()> {
    let sources = [request.recipe.is_some(), request.from_dir.is_some(), request.from_tar.is_some()];
    if sources.iter().filter(|s| **s).count() != 1 {
        return Err(Error::InvalidArgument("give exactly one of a recipe, --from-dir or --from-tar".into()));
    }
    for path in request.from_dir.iter().chain(&request.from_tar) {
        if !Path::new(path).is_absolute() {
            return Err(Error::InvalidArgument(format!("{path} must be an absolute path")));
        }
    }
    request.size_bytes = request.size_bytes.map(|size| crate::limits::disk_size("size_bytes", size, 0)).transpose()?;
    Ok(())
}

/// What a build makes its root from, opened before its operation starts.
pub enum BuildInput {
    /// One of banger's recipes, or a directory a root caller named (copied as root).
    Recipe(Recipe),
    /// A directory a caller other than root named: walked with its rights.
    Tree {
        /// The directory, opened as the caller.
        dir: std::fs::File,
        /// Its path, for messages.
        path: PathBuf,
        /// Who named it.
        caller: Caller,
    },
    /// A root tarball, opened with the caller's rights.
    Tar {
        /// The tarball.
        file: std::fs::File,
        /// Its path, for messages.
        path: PathBuf,
    },
}

/// Opens what a checked build request names with the caller's rights,
/// before its operation starts.
pub fn open_build_input(caller: &Caller, request: &ImageBuildRequest) -> Result<BuildInput> {
    Ok(match (&request.recipe, &request.from_dir, &request.from_tar) {
        (Some(ImageRecipe::Tiny), ..) => BuildInput::Recipe(Recipe::Tiny),
        (Some(ImageRecipe::Debian), ..) => BuildInput::Recipe(Recipe::debian()),
        (_, Some(dir), _) if caller.is_root() => {
            if !Path::new(dir).is_dir() {
                return Err(Error::InvalidArgument(format!("{dir} must be an absolute path to a directory")));
            }
            BuildInput::Recipe(Recipe::FromDir(dir.into()))
        }
        (_, Some(dir), _) => {
            let path = PathBuf::from(dir);
            BuildInput::Tree { dir: files::open_dir(caller, &path)?, path, caller: caller.clone() }
        }
        (_, _, Some(tar)) => {
            let path = PathBuf::from(tar);
            BuildInput::Tar { file: files::open_file(caller, &path)?, path }
        }
        _ => return Err(Error::InvalidArgument("no image source".into())),
    })
}

/// Builds a root filesystem into `dest` (blocking).
fn build_rootfs(
    input: BuildInput,
    options: &BuildOptions,
    dest: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<banger_image::BuiltImage> {
    match input {
        BuildInput::Recipe(recipe) => Ok(banger_image::build(recipe, options, dest, progress)?),
        BuildInput::Tar { mut file, path } => {
            Ok(banger_image::build_from_tar_stream(&mut file, &path, options, dest, progress)?)
        }
        BuildInput::Tree { dir, path, caller } => {
            let mut tree = files::stream_tree(&caller, dir, &path)?;
            let built = banger_image::build_from_tar_stream(&mut tree, &path, options, dest, progress);
            // A walk cut short by a file the caller cannot read ends the
            // stream early: its error comes first, and the build is void.
            tree.finish()?;
            Ok(built?)
        }
    }
}

/// The static guest agent images carry and boots install ([`agent_binary::find`]).
pub fn agent_binary(daemon: &Daemon) -> Result<PathBuf> {
    Ok(agent_binary::find(&daemon.config)?)
}

/// Builds an image (an operation's work).
pub async fn build(
    daemon: Arc<Daemon>,
    op: &OperationHandle,
    request: ImageBuildRequest,
    input: BuildInput,
    lock: NameLock,
) -> Result<Image> {
    let agent = agent_binary(&daemon)?;
    op.step("resolve kernel");
    let kernel = crate::kernel::resolve::resolve(&daemon, &request.kernel, op).await?;
    let source = match (&request.recipe, &request.from_dir, &request.from_tar) {
        (Some(recipe), ..) => ImageSource::Recipe(*recipe),
        (_, Some(dir), _) => ImageSource::Dir(dir.clone()),
        (_, _, Some(tar)) => ImageSource::Tar(tar.clone()),
        _ => return Err(Error::InvalidArgument("no image source".into())),
    };
    let staging = daemon.images.staging(&request.name, op.id())?;
    let options = BuildOptions { agent, busybox: daemon.config.busybox.clone(), size_bytes: request.size_bytes };
    let dest = staging.path().to_path_buf();
    let reporter = op.progress_reporter();
    op.step("build root filesystem");
    let built =
        tokio::task::spawn_blocking(move || build_rootfs(input, &options, &dest, &mut |s: &str| reporter.step(s)))
            .await
            .map_err(|e| Error::Internal(format!("build task: {e}")))??;
    let image = Image {
        name: request.name.clone(),
        kernel: kernel.name,
        source,
        init: built.init,
        size_bytes: built.size_bytes,
        rootfs_path: daemon.images.root.join(&request.name).join(ROOTFS_FILE).display().to_string(),
        created_at: Timestamp::now(),
    };
    op.step("install");
    install(daemon, lock, staging, image).await
}

/// Checks a register request and opens its root filesystem with the
/// caller's rights, before its operation starts.
pub fn open_register_input(caller: &Caller, request: &ImageRegisterRequest) -> Result<std::fs::File> {
    let path = Path::new(&request.rootfs);
    if !path.is_absolute() {
        return Err(Error::InvalidArgument(format!("{} must be an absolute path to an ext4 file", request.rootfs)));
    }
    let file = files::open_file(caller, path)?;
    if !is_ext_filesystem(&file) {
        return Err(Error::InvalidArgument(format!("{} is not an ext2/3/4 filesystem image", request.rootfs)));
    }
    Ok(file)
}

/// Whether the file carries the ext2/3/4 superblock magic (0xEF53 at byte 1080).
fn is_ext_filesystem(file: &std::fs::File) -> bool {
    use std::os::unix::fs::FileExt;
    let mut magic = [0u8; 2];
    file.read_exact_at(&mut magic, 1080).is_ok_and(|()| magic == [0x53, 0xEF])
}

/// Registers an existing ext4 root filesystem (an operation's work): it is
/// cloned into the store, copy-on-write where the filesystem allows.
pub async fn register(
    daemon: Arc<Daemon>,
    op: &OperationHandle,
    request: ImageRegisterRequest,
    rootfs: std::fs::File,
    lock: NameLock,
) -> Result<Image> {
    op.step("resolve kernel");
    let kernel = crate::kernel::resolve::resolve(&daemon, &request.kernel, op).await?;
    let staging = daemon.images.staging(&request.name, op.id())?;
    let dest = staging.path().join(ROOTFS_FILE);
    let source = PathBuf::from(&request.rootfs);
    let strategy = daemon.cow_strategy();
    op.step("copy root filesystem");
    let dest_copy = dest.clone();
    tokio::task::spawn_blocking(move || banger_storage::clone_open_disk(strategy, &rootfs, &source, &dest_copy, None))
        .await
        .map_err(|e| Error::Internal(format!("copy task: {e}")))??;
    let size_bytes = std::fs::metadata(&dest).map_err(Error::io("cannot stat", &dest))?.len();
    let image = Image {
        name: request.name.clone(),
        kernel: kernel.name,
        source: ImageSource::Register(request.rootfs.clone()),
        init: request.init.clone().unwrap_or_else(|| "/sbin/init".into()),
        size_bytes,
        rootfs_path: daemon.images.root.join(&request.name).join(ROOTFS_FILE).display().to_string(),
        created_at: Timestamp::now(),
    };
    op.step("install");
    install(daemon, lock, staging, image).await
}

/// Installs a built image off the async runtime (replacing one removes a
/// whole root filesystem).
async fn install(daemon: Arc<Daemon>, lock: NameLock, staging: Staging, image: Image) -> Result<Image> {
    tokio::task::spawn_blocking(move || daemon.images.install(&lock, staging, &image).map(|()| image))
        .await
        .map_err(|e| Error::Internal(format!("install task: {e}")))?
}

impl ImageStore {
    fn staging(&self, name: &str, op_id: &str) -> Result<Staging> {
        Staging::create(&self.root, name, op_id)
    }
}
