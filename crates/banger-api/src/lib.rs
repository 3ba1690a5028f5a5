//! Wire types shared by `bangerd` and its clients: request and response
//! bodies, operations and events, and the stable error codes. Serde and
//! OpenAPI schema derives only; no behaviour lives here.
//!
//! # How the contract grows without breaking
//!
//! Firecracker's rule: `deny_unknown_fields` on what the daemon accepts,
//! never on what it returns.
//!
//! - **Requests** (`*Request` bodies), like the config file, refuse fields
//!   and values they do not know: a misspelt option fails loudly instead
//!   of being ignored.
//! - **Responses and events** (`Vm`, `Kernel`, `Image`, `Operation`,
//!   `ApiError`, `Event`, the doctor report, ...) accept fields they do not
//!   know and drop them, so a client built today keeps working when a
//!   later daemon adds a field (a VM's address, say).
//! - **Enums in responses whose set grows** ([`ErrorCode`],
//!   [`OperationKind`], [`ObjectKind`], [`VmState`], [`VmmChoice`],
//!   [`DiskStrategy`], [`AgentStatus`], [`SessionState`]) are open: a value this crate does not know decodes
//!   as `Unknown`, which the daemon never sends, and the OpenAPI document
//!   describes them as "one of these, or another string". An [`Event`] of
//!   a type this crate does not know decodes as `Event::Unknown`, and the
//!   client's event stream skips it. Closed sets ([`OperationState`],
//!   [`CheckStatus`], [`CatalogEntryState`]) say on their type why they are.
//! - **Typed values that travel as text** ([`Timestamp`], [`KernelSource`],
//!   [`ImageSource`], [`Signal`] as a name) keep the wire form they always had; sources a crate
//!   does not know are kept as sent ([`KernelSource::Other`]).
//!
//! A change that an old client cannot read this way (a field's type, a
//! field removed) is a new API version.

mod error;
mod event;
mod forward;
mod host;
mod image;
mod kernel;
mod open_enum;
mod operation;
mod session;
mod signal;
mod ssh;
mod stats;
pub mod stream;
mod text_form;
mod time;
mod vm;

pub use error::{ApiError, ErrorCode};
pub use event::{Event, ObjectKind};
pub use forward::{Forward, ForwardRequest};
pub use host::{Check, CheckStatus, DoctorReport};
pub use image::{Image, ImageBuildRequest, ImagePruneReport, ImageRecipe, ImageRegisterRequest, ImageSource};
pub use kernel::{
    BundleInfo, CatalogEntry, CatalogEntryState, CatalogListing, Kernel, KernelCatalog, KernelImportKind,
    KernelImportRequest, KernelPullRequest, KernelSource,
};
pub use operation::{Operation, OperationKind, OperationResult, OperationState, Progress};
pub use session::{Session, SessionExit, SessionStartRequest, SessionState, SessionStopRequest};
pub use signal::{Signal, SignalError, MAX_SIGNAL};
pub use ssh::{SshInfo, SshKeyRequest, SshKnownHost};
pub use stats::{GuestDisk, GuestMemory, GuestNet, GuestPort, GuestStats, VmStats, VmmStats};
pub use time::{Timestamp, TimestampError};
pub use vm::{
    AgentStatus, DiskResizeRequest, DiskStrategy, NetworkMode, Vm, VmCreateRequest, VmNetwork, VmSetRequest, VmState,
    VmmChoice,
};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Version of the HTTP API; it is also the first path segment (`/v1`).
pub const API_VERSION: &str = "v1";

/// The largest disk a request may ask for (root, work, resize, image), in
/// bytes: the last whole MiB under 16 TiB. Sizes are rounded up to whole MiB.
/// The document's `maximum` for those fields.
pub const MAX_DISK_BYTES: u64 = (16 << 40) - (1 << 20);

/// The least memory a VM may have, MiB (the most is the host's memory).
pub const MIN_MEMORY_MIB: u32 = 64;

/// Default path of the daemon's unix socket.
pub const DEFAULT_SOCKET: &str = "/run/banger/bangerd.sock";

/// Default state root.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/banger";

/// Default configuration file, read by the daemon and the CLI.
pub const DEFAULT_CONFIG: &str = "/etc/banger/config.toml";

/// What `GET /v1/health` answers.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// The daemon's version.
    pub version: String,
    /// The API version it speaks.
    pub api: String,
    /// The state root the daemon uses.
    pub state_dir: String,
}
