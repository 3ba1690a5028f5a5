//! Root filesystem images, where they came from, and the requests that make them.

use std::fmt;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::Timestamp;

/// A root filesystem image in the local store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Image {
    /// Its name.
    pub name: String,
    /// The kernel VMs made from it boot by default.
    pub kernel: String,
    /// How it was made.
    pub source: ImageSource,
    /// The `init=` the kernel runs.
    pub init: String,
    /// Size of the ext4 file in bytes.
    pub size_bytes: u64,
    /// Path of the ext4 file.
    pub rootfs_path: String,
    /// When it was made.
    pub created_at: Timestamp,
}

/// What `POST /v1/images/prune` removed: cached work-disk seeds that no
/// VM's work disk has the size of.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
pub struct ImagePruneReport {
    /// The files removed, by name.
    pub removed: Vec<String>,
    /// The disk space they held, in bytes.
    pub freed_bytes: u64,
}

/// How an image was made. On the wire it is one string, `recipe:tiny`,
/// `recipe:debian`, `dir:<path>`, `tar:<path>` or `register:<path>`, the
/// form image rows and manifests have always held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// Built by a recipe.
    Recipe(ImageRecipe),
    /// Built from a root filesystem tree on the daemon's host.
    Dir(String),
    /// Built from a root filesystem tarball on the daemon's host.
    Tar(String),
    /// An ext4 file registered (copied into the store).
    Register(String),
    /// A source this crate does not know (a newer daemon's, a new recipe), as sent.
    Other(String),
}

impl fmt::Display for ImageSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageSource::Recipe(ImageRecipe::Tiny) => f.write_str("recipe:tiny"),
            ImageSource::Recipe(ImageRecipe::Debian) => f.write_str("recipe:debian"),
            ImageSource::Dir(path) => write!(f, "dir:{path}"),
            ImageSource::Tar(path) => write!(f, "tar:{path}"),
            ImageSource::Register(path) => write!(f, "register:{path}"),
            ImageSource::Other(text) => f.write_str(text),
        }
    }
}

impl From<&str> for ImageSource {
    fn from(text: &str) -> ImageSource {
        match text.split_once(':') {
            Some(("recipe", "tiny")) => ImageSource::Recipe(ImageRecipe::Tiny),
            Some(("recipe", "debian")) => ImageSource::Recipe(ImageRecipe::Debian),
            Some(("dir", path)) => ImageSource::Dir(path.to_owned()),
            Some(("tar", path)) => ImageSource::Tar(path.to_owned()),
            Some(("register", path)) => ImageSource::Register(path.to_owned()),
            _ => ImageSource::Other(text.to_owned()),
        }
    }
}

crate::text_form::string_form!(
    ImageSource,
    "How an image was made: `recipe:tiny`, `recipe:debian`, `dir:<path>`, `tar:<path>` or `register:<path>`; \
     clients keep a form they do not know as it is."
);

/// A recipe `image build` can follow. Closed: requests must name one the
/// daemon has; an image made by a recipe this crate does not know shows as
/// [`ImageSource::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ImageRecipe {
    /// Busybox and the banger agent, as PID 1. Built in seconds.
    Tiny,
    /// Debian (minbase) with openssh-server and the agent as a service.
    Debian,
}

/// Body of `POST /v1/images/build`. Exactly one of `recipe`, `from_dir`, `from_tar`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageBuildRequest {
    /// Name of the new image (a DNS label).
    #[schema(pattern = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")]
    pub name: String,
    /// A recipe.
    #[serde(default)]
    pub recipe: Option<ImageRecipe>,
    /// A root filesystem tree on the daemon's host (absolute path).
    #[serde(default)]
    pub from_dir: Option<String>,
    /// A root filesystem tarball on the daemon's host (absolute path; .tar, .tar.gz, .tar.zst).
    #[serde(default)]
    pub from_tar: Option<String>,
    /// Kernel VMs boot by default: a local kernel, or a catalog entry (pulled if needed).
    pub kernel: String,
    /// Size of the ext4 file in bytes (default: what the content needs, plus
    /// headroom), rounded up to whole MiB.
    #[serde(default)]
    #[schema(maximum = 17592184995840.0)]
    pub size_bytes: Option<u64>,
    /// Replace an image of that name.
    #[serde(default)]
    pub force: bool,
}

/// Body of `POST /v1/images/register`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageRegisterRequest {
    /// Name of the image (a DNS label).
    #[schema(pattern = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")]
    pub name: String,
    /// An ext4 root filesystem file on the daemon's host (absolute path); it is copied into the store.
    pub rootfs: String,
    /// Kernel VMs boot by default: a local kernel, or a catalog entry (pulled if needed).
    pub kernel: String,
    /// The `init=` to boot (default `/sbin/init`).
    #[serde(default)]
    pub init: Option<String>,
    /// Replace an image of that name.
    #[serde(default)]
    pub force: bool,
}
