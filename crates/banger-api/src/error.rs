//! The error body and its stable codes.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

crate::open_enum::open_enum! {
    /// A stable error code. Clients match on this, never on the message.
    ///
    /// The set grows: a code this crate does not know decodes as `Unknown`,
    /// which a client treats as a generic failure, showing the message.
    pub enum ErrorCode {
        /// The request was malformed or named something invalid.
        InvalidArgument = "invalid_argument",
        /// The caller may not read a host path it named (the daemon reads
        /// them with the caller's own rights).
        PermissionDenied = "permission_denied",
        /// The named object does not exist.
        NotFound = "not_found",
        /// An object with that name already exists.
        AlreadyExists = "already_exists",
        /// The object is busy with another operation.
        Conflict = "conflict",
        /// A download did not match its expected SHA-256.
        ChecksumMismatch = "checksum_mismatch",
        /// A download failed (HTTP error, connection reset, truncated body).
        DownloadFailed = "download_failed",
        /// An archive or file was malformed or unsafe to extract.
        BadArchive = "bad_archive",
        /// Something exceeded a configured size limit (a request body too).
        TooLarge = "too_large",
        /// The request body is not of a type the route reads (JSON, mostly).
        UnsupportedMediaType = "unsupported_media_type",
        /// The route exists but not with this method.
        MethodNotAllowed = "method_not_allowed",
        /// The host cannot do what was asked.
        Unsupported = "unsupported",
        /// The guest did not come up: its VMM exited, or its agent never answered.
        BootFailed = "boot_failed",
        /// An operation was cut short by another (a boot by `vm kill`, say).
        Cancelled = "cancelled",
        /// A filesystem banger writes to (its state root, say) is full.
        NoSpace = "no_space",
        /// The client was too slow: a request body stopped arriving.
        Timeout = "timeout",
        /// The daemon is too busy to take the request (every connection is in use).
        Unavailable = "unavailable",
        /// A bug or an unexpected host failure.
        Internal = "internal",
    }
}

/// The body of every error response, and the error of a failed operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ApiError {
    /// Stable, machine-readable code.
    pub code: ErrorCode,
    /// Human-readable message, the whole cause chain.
    pub message: String,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiError {}
