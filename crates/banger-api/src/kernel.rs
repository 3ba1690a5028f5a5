//! Kernels, catalogs, and the requests that pull and import them.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A kernel in the local store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Kernel {
    /// Its name in the store.
    pub name: String,
    /// The kernel release (`6.1.0-28-cloud-amd64`), when known.
    pub kernel_version: Option<String>,
    /// SHA-256 of the ELF `vmlinux`, computed on disk.
    pub vmlinux_sha256: String,
    /// Where it came from: `pull:<url>` or `import:<path>`.
    pub source: String,
    /// Bytes on disk, all files together.
    pub size_bytes: u64,
    /// Whether it has an initramfs (`initrd.img`).
    pub has_initrd: bool,
    /// Path of the `vmlinux` file.
    pub vmlinux_path: String,
    /// Path of the initramfs, when it has one.
    pub initrd_path: Option<String>,
    /// When it was stored (RFC 3339).
    pub created_at: String,
}

/// A kernel catalog, as `catalog.json` holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KernelCatalog {
    /// Format version; 1 today.
    pub version: u32,
    /// The kernels it offers.
    pub entries: Vec<CatalogEntry>,
}

/// One kernel a catalog offers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CatalogEntry {
    /// Name to pull it by.
    pub name: String,
    /// The distribution it comes from.
    pub distro: String,
    /// CPU architecture (`x86_64`).
    pub arch: String,
    /// Kernel release.
    pub kernel_version: String,
    /// Where the `.tar.zst` bundle is (http, https, file URL, or a path).
    pub tarball_url: String,
    /// SHA-256 of the bundle, hex.
    pub tarball_sha256: String,
    /// Size of the bundle in bytes.
    pub size_bytes: u64,
    /// One line for people.
    pub description: String,
}

/// Whether a catalog entry is in the local store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CatalogEntryState {
    /// A kernel of that name is in the store.
    Pulled,
    /// Not in the store yet.
    Available,
}

/// A catalog entry with its local state, as `GET /v1/kernels/catalog` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CatalogListing {
    /// The entry.
    pub entry: CatalogEntry,
    /// Pulled or available.
    pub state: CatalogEntryState,
}

/// Body of `POST /v1/kernels/pull`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KernelPullRequest {
    /// Catalog entry to pull.
    pub name: String,
    /// Replace a kernel of that name already in the store.
    #[serde(default)]
    pub force: bool,
}

/// What kind of file a kernel import starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum KernelImportKind {
    /// An ELF `vmlinux`.
    Vmlinux,
    /// A compressed x86 `bzImage` (`/boot/vmlinuz-*`).
    Bzimage,
    /// A Debian kernel package (`linux-image-*.deb`).
    Deb,
}

/// Body of `POST /v1/kernels/import`. Paths are on the daemon's host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KernelImportRequest {
    /// Name to store it under.
    pub name: String,
    /// The file to import (absolute path).
    pub path: String,
    /// What the file is; detected from its contents when absent.
    #[serde(default)]
    pub kind: Option<KernelImportKind>,
    /// A directory of modules (`/lib/modules/<release>`) to take modules from.
    #[serde(default)]
    pub modules_dir: Option<String>,
    /// Replace a kernel of that name already in the store.
    #[serde(default)]
    pub force: bool,
}

/// What `kernel bundle` reports about the bundle it wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BundleInfo {
    /// The catalog entry for the bundle.
    pub entry: CatalogEntry,
}
