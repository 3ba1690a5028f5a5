//! The daemon's error type, its stable code, and the one place that maps a
//! code to an HTTP status.

use std::path::PathBuf;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use banger_api::{ApiError, ErrorCode};
use banger_kernel::bundle::BundleError;
use banger_kernel::catalog::CatalogError;
use banger_kernel::import::ImportError;

/// Everything that can go wrong serving a request or running an operation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed.
    #[error("{0}")]
    InvalidArgument(String),
    /// No such object.
    #[error("no {kind} named {name:?}")]
    NotFound {
        /// What kind of object.
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// An object of that name exists.
    #[error("{kind} {name:?} already exists{hint}")]
    AlreadyExists {
        /// What kind of object.
        kind: &'static str,
        /// Its name.
        name: String,
        /// How to get past it, starting with "; ".
        hint: &'static str,
    },
    /// Another operation holds the object.
    #[error("{kind} {name:?} is busy: another operation on it is running")]
    Busy {
        /// What kind of object.
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// The request body is larger than the daemon reads.
    #[error("{0}")]
    BodyTooLarge(String),
    /// The request body is not of the type the route reads.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// No route has this path.
    #[error("no route {path}; the routes are listed in /v1/openapi.json")]
    NoRoute {
        /// The path asked for.
        path: String,
    },
    /// The route exists, but not with this method.
    #[error("{path} does not answer {method}")]
    MethodNotAllowed {
        /// The method asked for.
        method: String,
        /// The path asked for.
        path: String,
    },
    /// A catalog problem.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// A bundle could not be extracted.
    #[error("cannot extract kernel bundle")]
    Bundle(#[from] BundleError),
    /// A kernel could not be imported.
    #[error("cannot import kernel")]
    Import(#[from] ImportError),
    /// A download failed.
    #[error("download of {url} failed: {reason}")]
    Download {
        /// What was fetched.
        url: String,
        /// Why it failed.
        reason: String,
    },
    /// A download's SHA-256 was not the expected one.
    #[error("checksum mismatch for {url}: expected sha256 {expected}, got {actual}")]
    ChecksumMismatch {
        /// What was fetched.
        url: String,
        /// The catalog's digest.
        expected: String,
        /// The digest of what arrived.
        actual: String,
    },
    /// The state database failed.
    #[error("state database error")]
    Db(#[from] rusqlite::Error),
    /// A host file operation failed.
    #[error("{action} {path}")]
    Io {
        /// What was being done ("cannot create").
        action: &'static str,
        /// On what.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The caller named a host path it may not read itself.
    #[error("{path} is not readable with the caller's own rights")]
    PermissionDenied {
        /// The path.
        path: PathBuf,
        /// What the kernel said.
        #[source]
        source: std::io::Error,
    },
    /// The request conflicts with the state of things (an image in use, say).
    #[error("{0}")]
    Conflict(String),
    /// The host lacks something the request needs.
    #[error("{0}")]
    Unsupported(String),
    /// The VM is not in a state that admits the action.
    #[error("cannot {}: VM {name:?} is {state}; it must be {wanted}", action.verb())]
    InvalidState {
        /// The VM.
        name: String,
        /// Its state.
        state: banger_api::VmState,
        /// What was asked.
        action: crate::vm::VmAction,
        /// The state the action needs.
        wanted: &'static str,
    },
    /// A boot ran out of time without the guest's agent answering.
    #[error("the guest agent of VM {name:?} never answered within {}; {report}", humantime::format_duration(*after))]
    AgentNeverAnswered {
        /// The VM.
        name: String,
        /// The boot timeout.
        after: std::time::Duration,
        /// What the console (and the VMM's log) ended with.
        report: String,
    },
    /// The VMM exited before the guest's agent answered.
    #[error("the VMM of VM {name:?} exited during boot; {report}")]
    VmmExited {
        /// The VM.
        name: String,
        /// What the console (and the VMM's log) ended with.
        report: String,
    },
    /// Another action cut this one short.
    #[error("the {what} of VM {name:?} was cancelled by `{}`", by.verb())]
    Preempted {
        /// The VM.
        name: String,
        /// What was cut short ("boot").
        what: &'static str,
        /// The action that cut it short.
        by: crate::vm::VmAction,
    },
    /// The daemon began shutting down while this ran; what it made is undone.
    #[error("the {what} of VM {name:?} was cancelled: the daemon is shutting down")]
    ShuttingDown {
        /// The VM.
        name: String,
        /// What was cut short ("create", "boot").
        what: &'static str,
    },
    /// A running VM's agent has missed its keepalives.
    #[error("the guest agent of VM {name:?} has not answered for {}s (see `banger vm show {name}`)", silent.as_secs())]
    AgentNotAnswering {
        /// The VM.
        name: String,
        /// For how long.
        silent: std::time::Duration,
    },
    /// No static guest agent to put into images.
    #[error(transparent)]
    AgentBinary(#[from] crate::image::agent_binary::AgentBinaryError),
    /// The daemon's agent could not be written into a VM's root disk before its boot.
    #[error("cannot install the guest agent into the root disk of VM {name:?}")]
    AgentInstall {
        /// The VM.
        name: String,
        /// Why.
        #[source]
        source: banger_image::AgentInstallError,
    },
    /// An image could not be built.
    #[error("cannot build image")]
    Image(#[from] banger_image::ImageError),
    /// A disk could not be cloned or resized.
    #[error("disk operation failed")]
    Storage(#[from] banger_storage::StorageError),
    /// The VMM failed.
    #[error("VMM failed")]
    Vmm(#[from] banger_vmm::VmmError),
    /// The guest agent failed.
    #[error(transparent)]
    Agent(#[from] crate::agent::AgentError),
    /// A filesystem is full: a write to `path` found no space.
    #[error("no space left on the filesystem mounted at {} (writing {})", mount.display(), path.display())]
    NoSpace {
        /// What was being written.
        path: PathBuf,
        /// The mount point of its filesystem.
        mount: PathBuf,
        /// The write's failure.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A bug.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// A constructor for `Io` that reads well in `map_err`; a full
    /// filesystem becomes [`Error::NoSpace`].
    pub fn io(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| {
            if crate::space::is_no_space(&source) {
                Error::no_space(path, source)
            } else {
                Error::Io { action, path, source }
            }
        }
    }

    /// A write to `path` that found its filesystem full.
    pub fn no_space(path: PathBuf, source: impl std::error::Error + Send + Sync + 'static) -> Error {
        Error::NoSpace { mount: crate::space::mount_point(&path), path, source: Box::new(source) }
    }

    /// Whether this (or any cause under it) is a full filesystem.
    pub fn is_no_space(&self) -> bool {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(e) = cause {
            if matches!(e.downcast_ref::<Error>(), Some(Error::NoSpace { .. }))
                || e.downcast_ref::<std::io::Error>().is_some_and(crate::space::is_no_space)
                || e.downcast_ref::<rusqlite::Error>().is_some_and(crate::space::is_db_full)
            {
                return true;
            }
            cause = e.source();
        }
        false
    }

    /// The stable code clients see.
    pub fn code(&self) -> ErrorCode {
        // Whatever failed, a full filesystem is what the user must fix.
        if self.is_no_space() {
            return ErrorCode::NoSpace;
        }
        match self {
            Error::InvalidArgument(_) => ErrorCode::InvalidArgument,
            Error::NotFound { .. } | Error::NoRoute { .. } => ErrorCode::NotFound,
            Error::BodyTooLarge(_) => ErrorCode::TooLarge,
            Error::UnsupportedMediaType(_) => ErrorCode::UnsupportedMediaType,
            Error::MethodNotAllowed { .. } => ErrorCode::MethodNotAllowed,
            Error::AlreadyExists { .. } => ErrorCode::AlreadyExists,
            Error::Busy { .. } => ErrorCode::Conflict,
            Error::Catalog(CatalogError::NotFound { .. }) => ErrorCode::NotFound,
            // A broken configured catalog is the host's problem, not the request's.
            Error::Catalog(_) => ErrorCode::Internal,
            Error::Bundle(BundleError::TooLarge { .. }) => ErrorCode::TooLarge,
            Error::Bundle(BundleError::Io { .. }) => ErrorCode::Internal,
            Error::Bundle(_) => ErrorCode::BadArchive,
            Error::Import(ImportError::Io { .. }) => ErrorCode::Internal,
            Error::Import(ImportError::TooLarge { .. }) => ErrorCode::TooLarge,
            Error::Import(ImportError::NotRegularFile { .. } | ImportError::NotADirectory { .. }) => {
                ErrorCode::InvalidArgument
            }
            Error::Import(ImportError::Busybox { .. }) => ErrorCode::Unsupported,
            Error::Import(_) => ErrorCode::BadArchive,
            Error::Download { .. } => ErrorCode::DownloadFailed,
            Error::ChecksumMismatch { .. } => ErrorCode::ChecksumMismatch,
            Error::Unsupported(_) | Error::AgentBinary(_) => ErrorCode::Unsupported,
            Error::Conflict(_) => ErrorCode::Conflict,
            Error::PermissionDenied { .. } => ErrorCode::PermissionDenied,
            Error::InvalidState { .. } | Error::AgentNotAnswering { .. } => ErrorCode::Conflict,
            Error::AgentNeverAnswered { .. } | Error::VmmExited { .. } => ErrorCode::BootFailed,
            Error::AgentInstall { source: banger_image::AgentInstallError::MissingTool { .. }, .. } => {
                ErrorCode::Unsupported
            }
            Error::AgentInstall { .. } => ErrorCode::BootFailed,
            Error::Preempted { .. } | Error::ShuttingDown { .. } => ErrorCode::Cancelled,
            Error::Image(e) => image_code(e),
            Error::Storage(e) => storage_code(e),
            Error::Vmm(banger_vmm::VmmError::MissingBinary { .. }) => ErrorCode::Unsupported,
            Error::Vmm(banger_vmm::VmmError::InvalidSpec(_)) => ErrorCode::InvalidArgument,
            Error::Agent(
                crate::agent::AgentError::Version { .. } | crate::agent::AgentError::VersionRefused { .. },
            ) => ErrorCode::Unsupported,
            Error::Agent(crate::agent::AgentError::Refused { kind, .. }) => refusal_code(*kind),
            Error::Vmm(_) | Error::Agent(_) => ErrorCode::Internal,
            Error::NoSpace { .. } => ErrorCode::NoSpace,
            Error::Db(_) | Error::Io { .. } | Error::Internal(_) => ErrorCode::Internal,
        }
    }

    /// The wire form: the code and the whole cause chain as one message.
    pub fn to_api(&self) -> ApiError {
        let mut message = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        ApiError { code: self.code(), message }
    }
}

/// The code for a request the guest agent refused, by the kind it gave:
/// the agent's message is what the user reads.
pub fn refusal_code(kind: banger_agent_proto::ErrorKind) -> ErrorCode {
    use banger_agent_proto::ErrorKind as K;
    match kind {
        K::InvalidArgument => ErrorCode::InvalidArgument,
        K::NotFound => ErrorCode::NotFound,
        K::AlreadyExists => ErrorCode::AlreadyExists,
        K::PermissionDenied => ErrorCode::PermissionDenied,
        K::Unsupported => ErrorCode::Unsupported,
        K::Internal | K::Unknown => ErrorCode::Internal,
    }
}

fn image_code(e: &banger_image::ImageError) -> ErrorCode {
    use banger_image::ImageError as E;
    match e {
        E::BusyboxMissing(_)
        | E::BusyboxNotStatic(_)
        | E::AgentMissing(_)
        | E::AgentNotStatic(_)
        | E::BadSource { .. }
        | E::UnsafeTarMember { .. }
        | E::TooSmall { .. }
        | E::InvalidSeedSize { .. } => ErrorCode::InvalidArgument,
        E::MissingTool { .. } | E::NotRoot => ErrorCode::Unsupported,
        _ => ErrorCode::Internal,
    }
}

fn storage_code(e: &banger_storage::StorageError) -> ErrorCode {
    use banger_storage::StorageError as E;
    match e {
        E::ReflinkUnsupported { .. } | E::DeviceMapperUnavailable | E::MissingTool { .. } => ErrorCode::Unsupported,
        E::Shrink { .. } | E::CannotGrow { .. } => ErrorCode::InvalidArgument,
        _ => ErrorCode::Internal,
    }
}

/// The HTTP status for each error code; the only such mapping.
pub fn status_for(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::InvalidArgument | ErrorCode::BadArchive => StatusCode::BAD_REQUEST,
        ErrorCode::PermissionDenied => StatusCode::FORBIDDEN,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::AlreadyExists | ErrorCode::Conflict => StatusCode::CONFLICT,
        ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::ChecksumMismatch | ErrorCode::DownloadFailed => StatusCode::BAD_GATEWAY,
        ErrorCode::Unsupported => StatusCode::NOT_IMPLEMENTED,
        ErrorCode::BootFailed => StatusCode::GATEWAY_TIMEOUT,
        ErrorCode::Cancelled => StatusCode::CONFLICT,
        ErrorCode::NoSpace => StatusCode::INSUFFICIENT_STORAGE,
        ErrorCode::Timeout => StatusCode::REQUEST_TIMEOUT,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Internal | ErrorCode::Unknown => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let body = self.to_api();
        if matches!(body.code, ErrorCode::Internal | ErrorCode::NoSpace) {
            tracing::error!(error = %body.message, "request failed");
        }
        (status_for(body.code), axum::Json(body)).into_response()
    }
}

/// The daemon's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    fn enospc() -> std::io::Error {
        std::io::Error::from_raw_os_error(libc::ENOSPC)
    }

    #[test]
    fn agent_refusals_keep_their_kind_and_message() {
        use banger_agent_proto::ErrorKind as K;
        let cases = [
            (K::NotFound, ErrorCode::NotFound, StatusCode::NOT_FOUND),
            (K::AlreadyExists, ErrorCode::AlreadyExists, StatusCode::CONFLICT),
            (K::PermissionDenied, ErrorCode::PermissionDenied, StatusCode::FORBIDDEN),
            (K::InvalidArgument, ErrorCode::InvalidArgument, StatusCode::BAD_REQUEST),
            (K::Unsupported, ErrorCode::Unsupported, StatusCode::NOT_IMPLEMENTED),
            (K::Internal, ErrorCode::Internal, StatusCode::INTERNAL_SERVER_ERROR),
            (K::Unknown, ErrorCode::Internal, StatusCode::INTERNAL_SERVER_ERROR),
        ];
        for (kind, code, status) in cases {
            let message = "no session named \"s\"".to_owned();
            let error = Error::Agent(crate::agent::AgentError::Refused { kind, message: message.clone() });
            assert_eq!((error.code(), status_for(error.code())), (code, status), "{kind:?}");
            assert_eq!(error.to_api().message, message);
        }
    }

    #[test]
    fn a_full_filesystem_is_no_space_wherever_it_is_in_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let direct = Error::io("cannot write", dir.path().join("f"))(enospc());
        assert!(matches!(direct, Error::NoSpace { .. }), "{direct:?}");
        assert_eq!(direct.code(), ErrorCode::NoSpace);
        assert_eq!(status_for(direct.code()), StatusCode::INSUFFICIENT_STORAGE);
        let mount = crate::space::mount_point(dir.path());
        let message = direct.to_api().message;
        assert!(
            message.starts_with(&format!("no space left on the filesystem mounted at {}", mount.display())),
            "{message}"
        );

        let nested = Error::Storage(banger_storage::StorageError::Io { path: "/x".into(), source: enospc() });
        assert_eq!(nested.code(), ErrorCode::NoSpace);
        let other = Error::Storage(banger_storage::StorageError::Io {
            path: "/x".into(),
            source: std::io::Error::other("eio"),
        });
        assert_eq!(other.code(), ErrorCode::Internal);
    }
}
