//! Root filesystem images and the requests that make them.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A root filesystem image in the local store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Image {
    /// Its name.
    pub name: String,
    /// The kernel VMs made from it boot by default.
    pub kernel: String,
    /// How it was made: `recipe:tiny`, `recipe:debian`, `dir:<path>`, `tar:<path>`, `register:<path>`.
    pub source: String,
    /// The `init=` the kernel runs.
    pub init: String,
    /// Size of the ext4 file in bytes.
    pub size_bytes: u64,
    /// Path of the ext4 file.
    pub rootfs_path: String,
    /// When it was made (RFC 3339).
    pub created_at: String,
}

/// A recipe `image build` can follow.
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
    /// Name of the new image.
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
    /// Size of the ext4 file in bytes (default: what the content needs, plus headroom).
    #[serde(default)]
    pub size_bytes: Option<u64>,
    /// Replace an image of that name.
    #[serde(default)]
    pub force: bool,
}

/// Body of `POST /v1/images/register`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageRegisterRequest {
    /// Name of the image.
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
