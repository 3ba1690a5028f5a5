//! Kernels, where they came from, catalogs, and the requests that pull and import them.

use std::fmt;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::Timestamp;

/// A kernel in the local store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Kernel {
    /// Its name in the store.
    pub name: String,
    /// The kernel release (`6.1.0-28-cloud-amd64`), when known.
    pub kernel_version: Option<String>,
    /// SHA-256 of the ELF `vmlinux`, computed on disk.
    pub vmlinux_sha256: String,
    /// Where it came from.
    pub source: KernelSource,
    /// Bytes on disk, all files together.
    pub size_bytes: u64,
    /// Whether it has an initramfs (`initrd.img`).
    pub has_initrd: bool,
    /// Path of the `vmlinux` file.
    pub vmlinux_path: String,
    /// Path of the initramfs, when it has one.
    pub initrd_path: Option<String>,
    /// When it was stored.
    pub created_at: Timestamp,
}

/// Where a kernel came from. On the wire it is one string, `pull:<url>` or
/// `import:<path>`, the form kernel rows and manifests have always held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelSource {
    /// Pulled from a catalog entry's bundle at this URL (or path).
    Pull(String),
    /// Imported from this file on the daemon's host.
    Import(String),
    /// A source this crate does not know (a newer daemon's), as sent.
    Other(String),
}

impl fmt::Display for KernelSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KernelSource::Pull(url) => write!(f, "pull:{url}"),
            KernelSource::Import(path) => write!(f, "import:{path}"),
            KernelSource::Other(text) => f.write_str(text),
        }
    }
}

impl From<&str> for KernelSource {
    fn from(text: &str) -> KernelSource {
        match text.split_once(':') {
            Some(("pull", url)) => KernelSource::Pull(url.to_owned()),
            Some(("import", path)) => KernelSource::Import(path.to_owned()),
            _ => KernelSource::Other(text.to_owned()),
        }
    }
}

crate::text_form::string_form!(
    KernelSource,
    "Where a kernel came from: `pull:<url>` or `import:<path>`; clients keep a form they do not know as it is."
);

/// A kernel catalog, as `catalog.json` holds it. Only the daemon reads it,
/// as it reads its config file, so it refuses unknown fields; `version`
/// says when the format changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KernelCatalog {
    /// Format version; 1 today.
    pub version: u32,
    /// The kernels it offers.
    pub entries: Vec<CatalogEntry>,
}

/// One kernel a catalog offers. Responses carry it too (catalog listings,
/// bundle reports), so it accepts fields it does not know: every field is
/// required, so a misspelt one still fails as a missing one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
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

/// Whether a catalog entry is in the local store. Closed: the store has a
/// kernel of that name or it has not.
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
    #[schema(pattern = r"^[a-z0-9][a-z0-9._-]{0,62}$")]
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
    #[schema(pattern = r"^[a-z0-9][a-z0-9._-]{0,62}$")]
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
pub struct BundleInfo {
    /// The catalog entry for the bundle.
    pub entry: CatalogEntry,
}
