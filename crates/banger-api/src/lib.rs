//! Wire types shared by `bangerd` and its clients: request and response
//! bodies, operations and events, and the stable error codes. Serde and
//! OpenAPI schema derives only; no behaviour lives here.

mod error;
mod event;
mod host;
mod image;
mod kernel;
mod operation;
mod vm;

pub use error::{ApiError, ErrorCode};
pub use event::{Event, ObjectKind};
pub use host::{Check, CheckStatus, DoctorReport};
pub use image::{Image, ImageBuildRequest, ImageRecipe, ImageRegisterRequest};
pub use kernel::{
    BundleInfo, CatalogEntry, CatalogEntryState, CatalogListing, Kernel, KernelCatalog, KernelImportKind,
    KernelImportRequest, KernelPullRequest,
};
pub use operation::{Operation, OperationKind, OperationState, Progress};
pub use vm::{AgentStatus, DiskResizeRequest, Vm, VmCreateRequest, VmSetRequest, VmState, VmmChoice, EXEC_UPGRADE};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Version of the HTTP API; it is also the first path segment (`/v1`).
pub const API_VERSION: &str = "v1";

/// Default path of the daemon's unix socket.
pub const DEFAULT_SOCKET: &str = "/run/banger/bangerd.sock";

/// Default state root.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/banger";

/// Default configuration file, read by the daemon and the CLI.
pub const DEFAULT_CONFIG: &str = "/etc/banger/config.toml";

/// What `GET /v1/health` answers.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Health {
    /// The daemon's version.
    pub version: String,
    /// The API version it speaks.
    pub api: String,
    /// The state root the daemon uses.
    pub state_dir: String,
}
