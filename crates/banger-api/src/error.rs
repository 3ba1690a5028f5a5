//! The error body and its stable codes.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A stable error code. Clients match on this, never on the message.
///
/// The set grows: a later daemon may send a code this crate does not know,
/// and it decodes as [`ErrorCode::Unknown`]. A client treats that as a
/// generic failure and shows the message, which is always there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request was malformed or named something invalid.
    InvalidArgument,
    /// The named object does not exist.
    NotFound,
    /// An object with that name already exists.
    AlreadyExists,
    /// The object is busy with another operation.
    Conflict,
    /// A download did not match its expected SHA-256.
    ChecksumMismatch,
    /// A download failed (HTTP error, connection reset, truncated body).
    DownloadFailed,
    /// An archive or file was malformed or unsafe to extract.
    BadArchive,
    /// Something exceeded a configured size limit.
    TooLarge,
    /// The host cannot do what was asked.
    Unsupported,
    /// The guest did not come up: its VMM exited, or its agent never answered.
    BootFailed,
    /// An operation was cut short by another (a boot by `vm kill`, say).
    Cancelled,
    /// A bug or an unexpected host failure.
    Internal,
    /// A code this crate does not know (from a newer daemon). The daemon never sends it.
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::NotFound => "not_found",
            ErrorCode::AlreadyExists => "already_exists",
            ErrorCode::Conflict => "conflict",
            ErrorCode::ChecksumMismatch => "checksum_mismatch",
            ErrorCode::DownloadFailed => "download_failed",
            ErrorCode::BadArchive => "bad_archive",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Unsupported => "unsupported",
            ErrorCode::BootFailed => "boot_failed",
            ErrorCode::Cancelled => "cancelled",
            ErrorCode::Internal => "internal",
            ErrorCode::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
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
